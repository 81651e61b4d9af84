//! Failures the layers share by name: what the store answers when it cannot (busy, slow, shut
//! down, a record that does not decode). Plain data, so the task model, the ledger's errors and
//! the HTTP edge can all speak of it.

use std::time::Duration;

use crate::model::codes;
use crate::model::task::{TaskId, TaskStatus};

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled reported an I/O or corruption error.
    #[error("storage error: {0}")]
    Sled(String),
    /// A stored record does not decode (or a record does not encode).
    #[error("stored record is not valid: {0}")]
    Codec(#[from] serde_json::Error),
    /// A stored record carries a schema version newer than this build reads (a newer build
    /// wrote it): refused rather than misread.
    #[error("stored {record} record has schema version {version}; this build reads up to {known}")]
    Schema {
        /// Which kind of record (`task`).
        record: &'static str,
        /// The version the record carries.
        version: u64,
        /// The newest version this build reads.
        known: u64,
    },
    /// The task does not exist.
    #[error("task {0} not found")]
    TaskNotFound(TaskId),
    /// The task already ended; terminal records never change.
    #[error("task {0} has already finished")]
    TaskFinished(TaskId),
    /// The database's lock stayed held for the whole wait: another live process uses it.
    #[error(
        "database {path} is in use by another process (its lock stayed held for {waited_ms} ms)"
    )]
    Locked {
        /// The database directory.
        path: String,
        /// How long opening waited for the lock.
        waited_ms: u128,
    },
    /// The writer's queue (or the readers' pool) stayed full for the whole wait: nothing was
    /// done; try again shortly.
    #[error("storage is busy; nothing was written, try again shortly")]
    Busy,
    /// The request was queued but its answer did not come in time: it may or may not have been
    /// written (an idempotent retry finds out).
    #[error("storage did not answer within {0:?}; the write may or may not have happened")]
    AnswerTimeout(Duration),
    /// The group the write belonged to could not be committed: nothing of it was written.
    #[error("storage commit failed: {0}")]
    Commit(String),
    /// The writer or a reader went away (the service is stopping, or a job panicked).
    #[error("storage is shut down or dropped the request")]
    Closed,
    /// The disk holding the store is full (`ENOSPC`, `EDQUOT`), or intake is refused to keep the
    /// reserve for critical records: nothing of the write was kept; the writer recovers by itself
    /// once space returns.
    #[error("storage is full: {0}")]
    Full(String),
    /// The disk refused the write (`EIO`, `EROFS`): nothing of the write was kept; the writer
    /// probes and reopens the store by itself.
    #[error("storage failed: {0}")]
    Failed(String),
}

impl StoreError {
    /// Whether this is the store pushing back (busy or slow) rather than a fault: what the HTTP
    /// edge answers with 503 and `Retry-After`.
    pub fn is_overload(&self) -> bool {
        matches!(self, Self::Busy | Self::AnswerTimeout(_))
    }

    /// Whether this is a disk fault the writer recovers from by itself (full or failing disk):
    /// a state, answered `507`/`503` with `Retry-After`, never a reason to stop an actor.
    pub fn is_fault(&self) -> bool {
        matches!(self, Self::Full(_) | Self::Failed(_))
    }

    /// The same failure again, for a second caller (a group's commit failure is answered to
    /// every job of the group): faults keep their kind, anything else becomes `Commit`.
    pub fn replicate(&self) -> Self {
        match self {
            Self::Full(message) => Self::Full(message.clone()),
            Self::Failed(message) => Self::Failed(message.clone()),
            Self::Busy => Self::Busy,
            Self::Closed => Self::Closed,
            Self::AnswerTimeout(wait) => Self::AnswerTimeout(*wait),
            other => Self::Commit(other.to_string()),
        }
    }

    /// The stable code the HTTP edge answers: `STORE_BUSY` (503, nothing written, retry),
    /// `STORE_TIMEOUT` (503, outcome unknown: retry idempotently), `STORAGE_FULL` (507),
    /// `STORAGE_FAILED` (503) or `INTERNAL`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Busy => codes::STORE_BUSY,
            Self::AnswerTimeout(_) => codes::STORE_TIMEOUT,
            Self::Full(_) => codes::STORAGE_FULL,
            Self::Failed(_) => codes::STORAGE_FAILED,
            _ => codes::INTERNAL,
        }
    }
}

/// Why a client's action on a task was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TaskActionError {
    /// No such task.
    #[error("task {0} not found")]
    NotFound(TaskId),
    /// The task is not in a status the action applies to.
    #[error("task {id} is {status:?}; this needs a task that is {expected}")]
    WrongStatus {
        /// The task.
        id: TaskId,
        /// Its status.
        status: TaskStatus,
        /// What the action needs.
        expected: &'static str,
    },
    /// The task already ended.
    #[error("task {0} has already finished")]
    Finished(TaskId),
    /// The merge queue is moving the base to the task's change: too late to cancel.
    #[error("task {0} is landing: its change is being put on the base; too late to cancel")]
    Landing(TaskId),
    /// Durable state could not be read or written (or the store pushed back).
    #[error(transparent)]
    Store(StoreError),
}

impl TaskActionError {
    /// The stable code the ingress answers with.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            Self::NotFound(_) => codes::TASK_NOT_FOUND,
            Self::WrongStatus { .. } => codes::INVALID_TASK_STATUS,
            Self::Finished(_) => codes::TASK_FINISHED,
            Self::Landing(_) => codes::TASK_LANDING,
            Self::Store(inner) if inner.is_overload() || inner.is_fault() => inner.code(),
            Self::Store(_) => codes::STORE_FAILED,
        }
    }
}

impl From<StoreError> for TaskActionError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::TaskNotFound(id) => Self::NotFound(id),
            other => Self::Store(other),
        }
    }
}
