//! The supervision tree's actors, one per file; each file holds the actor's arguments, state and
//! where its restarts deviate from [`crate::runtime::supervision`]'s policy (the messages of the
//! actors others call live in [`crate::runtime`]).
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

/// Marks the persona as taking in `task`'s request, then evaluates the failpoint `name` for tasks
/// whose title contains `poison` (a poison task for tests: `FAILPOINTS=patch.poison=panic`). A
/// panic leaves the mark, which blames the task for the crash; [`handled!`] clears it.
#[macro_export]
macro_rules! handling {
    ($services:expr, $persona:expr, $task:expr, $name:literal) => {
        $services.directory.handling($persona, Some($task.id));
        #[cfg(feature = "failpoints")]
        if $task.spec.title.contains("poison") {
            fail::fail_point!($name);
        }
    };
}

/// Clears the mark [`handling!`] set: the request was taken in without a crash.
#[macro_export]
macro_rules! handled {
    ($services:expr, $persona:expr) => {
        $services.directory.handling($persona, None);
    };
}
