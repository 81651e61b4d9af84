//! The supervision tree's actors, one per file; each file holds the actor's arguments, state and
//! restart story beside it (the messages of the actors others call live in [`crate::runtime`]).
//!
//! ```text
//! Compass (root)
//! ├── Ledger, Planner, Patch, Circuit, Uplink-Deploy, Uplink-Watch, Uplink-Respond
//! └── Pipeline(task) × N
//! ```

pub(crate) mod circuit;
pub(crate) mod compass;
pub mod ledger;
pub(crate) mod patch;
pub(crate) mod pipeline;
pub(crate) mod planner;
pub(crate) mod uplink_deploy;
pub(crate) mod uplink_respond;
pub(crate) mod uplink_watch;

/// Evaluates the `fail` crate's failpoint `name` where an actor starts handling a work message.
/// Compiles to nothing without the `failpoints` feature.
#[macro_export]
macro_rules! work_failpoint {
    ($name:literal) => {
        fail::fail_point!($name);
    };
}
