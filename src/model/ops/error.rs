//! Why an ops request failed, with the stable code the ingress answers.

use crate::model::codes;
use crate::model::errors::StoreError;

/// Why an ops operation failed. Each variant has a stable code.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OpsError {
    /// No such app in `ops.yaml`.
    #[error("no app `{0}` in ops.yaml")]
    UnknownApp(String),
    /// The commit does not exist in the app's repository.
    #[error("{0}")]
    UnknownCommit(String),
    /// The app's verify did not pass on the commit.
    #[error("{0}")]
    VerifyFailed(String),
    /// A command is denied to the Uplink personas.
    #[error("command denied by rule `{rule}`: {command}")]
    Denied {
        /// The deny rule that matched.
        rule: String,
        /// The command.
        command: String,
    },
    /// A provider command failed or timed out.
    #[error("{0}")]
    Provider(String),
    /// The app's port is held by a process other than its running release.
    #[error("{0}")]
    PortInUse(String),
    /// The app has no release to go back to.
    #[error("{0}")]
    NoRelease(String),
    /// The operation does not apply to this provider.
    #[error("{0}")]
    Unsupported(String),
    /// Another deploy or action holds the app.
    #[error("app `{0}` is busy with another deploy or action")]
    Busy(String),
    /// Too many deploys wait for the app.
    #[error("app `{0}` has too many deploys waiting")]
    QueueFull(String),
    /// No such record.
    #[error("{0}")]
    NotFound(String),
    /// The record is not in a state that allows this.
    #[error("{0}")]
    InvalidState(String),
    /// An approval named a gated step other than the one the runbook has now.
    #[error("{0}")]
    StepChanged(String),
    /// As many silences as may be are active already.
    #[error("{0}")]
    SilencesFull(String),
    /// An Uplink persona could not be reached.
    #[error("{0}")]
    Unavailable(String),
    /// Durable state could not be read or written.
    #[error("{0}")]
    Store(String),
    /// The store's disk is full: writes are refused until space returns.
    #[error("{0}")]
    StorageFull(String),
    /// The store's disk failed (I/O error, read-only): writes are refused until it heals.
    #[error("{0}")]
    StorageFailed(String),
    /// The file system refused.
    #[error("{0}")]
    Io(String),
    /// The paying account cannot cover the price; nothing was created.
    #[error("{0}")]
    InsufficientFunds(String),
    /// The paying account does not exist.
    #[error("{0}")]
    UnknownAccount(String),
    /// The ledger refused for another reason.
    #[error("{message}")]
    Ledger {
        /// The ledger's code.
        code: &'static str,
        /// Its message.
        message: String,
    },
}

impl OpsError {
    /// The machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnknownApp(_) => codes::UNKNOWN_APP,
            Self::UnknownCommit(_) => codes::UNKNOWN_COMMIT,
            Self::VerifyFailed(_) => codes::VERIFY_FAILED,
            Self::Denied { .. } => codes::COMMAND_DENIED,
            Self::Provider(_) => codes::PROVIDER_FAILED,
            Self::PortInUse(_) => codes::PORT_IN_USE,
            Self::NoRelease(_) => codes::NO_RELEASE,
            Self::Unsupported(_) => codes::UNSUPPORTED,
            Self::Busy(_) => codes::APP_BUSY,
            Self::QueueFull(_) => codes::DEPLOY_QUEUE_FULL,
            Self::NotFound(_) => codes::NOT_FOUND,
            Self::InvalidState(_) => codes::INVALID_STATE,
            Self::StepChanged(_) => codes::STEP_CHANGED,
            Self::SilencesFull(_) => codes::TOO_MANY_SILENCES,
            Self::Unavailable(_) => codes::PERSONA_UNAVAILABLE,
            Self::Store(_) => codes::STORE_FAILED,
            Self::StorageFull(_) => codes::STORAGE_FULL,
            Self::StorageFailed(_) => codes::STORAGE_FAILED,
            Self::Io(_) => codes::IO_FAILED,
            Self::InsufficientFunds(_) => codes::INSUFFICIENT_FUNDS,
            Self::UnknownAccount(_) => codes::ACCOUNT_NOT_FOUND,
            Self::Ledger { code, .. } => code,
        }
    }

    /// The error as recorded on a deploy.
    pub fn to_info(&self) -> crate::model::task::ErrorInfo {
        crate::model::task::ErrorInfo::new(self.code(), self.to_string())
    }
}

impl From<StoreError> for OpsError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Full(message) => Self::StorageFull(message),
            StoreError::Failed(message) => Self::StorageFailed(message),
            other => Self::Store(other.to_string()),
        }
    }
}

impl From<std::io::Error> for OpsError {
    fn from(error: std::io::Error) -> Self {
        Self::Io(error.to_string())
    }
}
