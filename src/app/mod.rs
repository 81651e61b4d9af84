//! The service's surfaces, on top of everything: the HTTP ingress ([`http`]), the command line
//! ([`cli`]) and start-up and shutdown ([`startup`]).

pub mod cli;
pub(crate) mod http;
pub mod startup;
