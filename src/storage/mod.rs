//! Durable state: the store and its one writer ([`store`]), the token books ([`ledger`]) and ops'
//! records ([`ops`]). It answers what changed; it never calls an actor.

pub(crate) mod auth;
pub(crate) mod fleet_keys;
pub(crate) mod github_deliveries;
pub(crate) mod ledger;
pub(crate) mod ops;
pub mod store;
