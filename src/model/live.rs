//! Live output: what a running engine or verify command has printed lately, as it reaches a
//! task's event stream. Not an event: chunks are never stored (they would flood the store); the
//! run record keeps the output's head and tail once the run ends.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::model::task::{Stage, TaskId};

/// Which pipe of the process a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One `run.output` message of a task's SSE stream: redacted, at most a few KiB, at most a few
/// per second per run, whole lines where the command printed lines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RunOutput {
    /// The task (streams filter on it; also in the payload for clients of several streams).
    pub task_id: TaskId,
    /// The engine run this output belongs to (its record appears when the run ends).
    #[schema(value_type = String)]
    pub run_id: Uuid,
    /// The persona running the command: `planner`, `patch`, `circuit`.
    pub persona: String,
    /// The stage it runs for.
    pub stage: Stage,
    /// The attempt.
    pub attempt: u32,
    /// `stdout` or `stderr`.
    pub stream: OutputStream,
    /// The output since the previous chunk of this stream, secrets redacted.
    pub text: String,
    /// Bytes the command printed since the previous chunk that this chunk does not carry (the
    /// rate and size limits, or a consumer that fell behind): the run record keeps the full tail.
    pub dropped_bytes: u64,
}
