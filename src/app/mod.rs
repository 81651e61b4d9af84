//! The service's surfaces, on top of everything: the HTTP ingress ([`http`]), the command line
//! ([`cli`]), start-up and shutdown ([`startup`]), and the server under the router (`transport`:
//! TLS, timeouts, the connection cap).

pub mod cli;
pub mod factory;
pub(crate) mod http;
pub mod startup;
pub(crate) mod transport;
