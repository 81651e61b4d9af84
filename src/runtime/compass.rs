//! Compass's mailbox, as the rest of the service sees it: the ingress and intake hand it tasks
//! and task actions; [`crate::actors::compass`] implements it.

use ractor::RpcReplyPort;

use crate::model::errors::TaskActionError;
use crate::model::persona::Persona;
use crate::model::task::{Task, TaskId};
use crate::runtime::directory::PersonaMailbox;

/// Compass's messages.
pub(crate) enum CompassMsg {
    /// Time for the periodic clean-up sweep of finished tasks (`git.sweep_interval_secs`).
    Sweep,
    /// Answers at once: proof the mailbox is read (`/readyz`).
    Ping(RpcReplyPort<()>),
    /// A task was persisted by the ingress; queue it.
    TaskSubmitted(TaskId),
    /// A client acts on a task (cancel, approve, reject, retry); replies with the task after.
    Act {
        /// Which task.
        task_id: TaskId,
        /// What to do.
        action: TaskAction,
        /// The token that asked (for the task's events).
        by: Option<String>,
        /// The task after the action, or why it was refused.
        reply: RpcReplyPort<Result<Task, TaskActionError>>,
    },
    /// A persona's restart backoff elapsed.
    RestartPersona(Persona),
    /// A `failed` persona's cooldown (`supervision.revive_after_secs`) elapsed: try it again.
    RevivePersona(Persona),
    /// A pipeline's restart backoff elapsed.
    RestartPipeline(TaskId),
    /// A pipeline could not start; handled like a crash.
    PipelineStartFailed(TaskId, String),
    /// A pipeline's task entered (`true`) or left (`false`) its merge queue: while it waits in
    /// line it holds no slot of `compass.max_concurrent_tasks` (the queue's own turns bound the
    /// verify runs: one at a time per repository and base).
    Parked(TaskId, bool),
    /// A pipeline whose task left its merge queue with more work to do (sent back to implement,
    /// or on to deploy) asks for its slot back: Compass answers with `PipelineMsg::Advance` once
    /// one is free, before any queued task gets it, so leaving the line never puts the service
    /// over `compass.max_concurrent_tasks`.
    SlotWanted(TaskId),
}

/// What a client can do to a task through Compass.
#[derive(Debug, Clone)]
pub(crate) enum TaskAction {
    /// End it `cancelled` (killing whatever runs for it).
    Cancel,
    /// Pass its approval gate.
    Approve {
        /// The reviewer's note.
        comment: Option<String>,
    },
    /// Refuse its work at the gate (it ends `cancelled`).
    Reject {
        /// The reviewer's note.
        comment: Option<String>,
    },
    /// Re-queue a failed or dead-lettered task, with the budget reserved for its new round.
    Retry {
        /// The new reservation's transfer id, if one was made.
        reservation: Option<String>,
        /// Where to start again; `None`: where the failure says (see `transitions::retry`).
        from: Option<crate::model::task::RetryFrom>,
    },
}

impl PersonaMailbox for CompassMsg {
    const PERSONA: Persona = Persona::Compass;

    fn ping(reply: RpcReplyPort<()>) -> Self {
        CompassMsg::Ping(reply)
    }
}
