//! The ops org's machinery, below the three Uplink actors: what `ops.yaml` and runbooks say
//! ([`spec`]), what is persisted ([`records`]), how releases are put on a target ([`provider`]),
//! how health and checks are probed ([`probe`]), how signals become incidents ([`incident`]) and
//! how a deploy runs ([`deploy`]).
//!
//! Nothing here holds actor state: the actors own the decisions (queues, locks, dedup) and run
//! the functions here in spawned jobs.

pub mod billing;
pub mod deploy;
pub mod incident;
pub mod probe;
pub mod provider;

use crate::storage::store::StoreError;

/// Bytes of a command's stdout and of its stderr kept from an ops command.
pub const OUTPUT_BYTES_MAX: usize = 16 * 1024;
/// Bytes of command output copied into a record's detail.
pub const DETAIL_BYTES_MAX: usize = 2 * 1024;

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
    /// An Uplink persona could not be reached.
    #[error("{0}")]
    Unavailable(String),
    /// Durable state could not be read or written.
    #[error("{0}")]
    Store(String),
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
            Self::UnknownApp(_) => "UNKNOWN_APP",
            Self::UnknownCommit(_) => "UNKNOWN_COMMIT",
            Self::VerifyFailed(_) => "VERIFY_FAILED",
            Self::Denied { .. } => "COMMAND_DENIED",
            Self::Provider(_) => "PROVIDER_FAILED",
            Self::NoRelease(_) => "NO_RELEASE",
            Self::Unsupported(_) => "UNSUPPORTED",
            Self::Busy(_) => "APP_BUSY",
            Self::QueueFull(_) => "DEPLOY_QUEUE_FULL",
            Self::NotFound(_) => "NOT_FOUND",
            Self::InvalidState(_) => "INVALID_STATE",
            Self::Unavailable(_) => "PERSONA_UNAVAILABLE",
            Self::Store(_) => "STORE_FAILED",
            Self::Io(_) => "IO_FAILED",
            Self::InsufficientFunds(_) => "INSUFFICIENT_FUNDS",
            Self::UnknownAccount(_) => "ACCOUNT_NOT_FOUND",
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
        Self::Store(error.to_string())
    }
}

impl From<std::io::Error> for OpsError {
    fn from(error: std::io::Error) -> Self {
        Self::Io(error.to_string())
    }
}

/// The current incarnation of Uplink persona `name`, waiting (bounded) for one that restarts.
pub async fn current_persona<M: ractor::Message>(
    directory: &crate::runtime::directory::ActorDirectory,
    name: &str,
    wait: std::time::Duration,
) -> Result<ractor::ActorRef<M>, OpsError> {
    let cell = directory
        .wait_for(name, wait, None)
        .await
        .map_err(|e| OpsError::Unavailable(e.to_string()))?;
    Ok(cell.into())
}

/// Flattens a call to persona `name`: its answer, or `Unavailable` saying why there was none.
pub fn flatten_call<T, M>(
    name: &str,
    result: Result<ractor::rpc::CallResult<Result<T, OpsError>>, ractor::MessagingErr<M>>,
) -> Result<T, OpsError> {
    use ractor::rpc::CallResult;
    match result {
        Ok(CallResult::Success(outcome)) => outcome,
        Ok(CallResult::Timeout) => Err(OpsError::Unavailable(format!(
            "{name} did not answer in time"
        ))),
        Ok(CallResult::SenderError) | Err(_) => Err(OpsError::Unavailable(format!(
            "{name} stopped before answering"
        ))),
    }
}

/// Commands the Uplink personas never run, whatever their persona file says: they would read or
/// change secrets, or open a shell on a production machine.
pub const ALWAYS_DENIED: [&str; 4] = ["fly secrets", "fly ssh", "flyctl secrets", "flyctl ssh"];

/// Refuses a command line that contains a denied command (as whole words, in order).
pub fn check_allowed(command_line: &str, deny: &[String]) -> Result<(), OpsError> {
    let words: Vec<&str> = command_line
        .split(|c: char| c.is_whitespace() || matches!(c, ';' | '&' | '|' | '(' | ')' | '`'))
        .filter(|w| !w.is_empty())
        .map(|w| w.rsplit('/').next().unwrap_or(w))
        .collect();
    let rules = ALWAYS_DENIED
        .iter()
        .map(|rule| (*rule).to_owned())
        .chain(deny.iter().cloned());
    for rule in rules {
        let rule_words: Vec<&str> = rule.split_whitespace().collect();
        if !rule_words.is_empty() && words.windows(rule_words.len()).any(|w| w == rule_words) {
            return Err(OpsError::Denied {
                rule,
                command: command_line.to_owned(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fly_secrets_and_ssh_are_denied() {
        assert!(check_allowed("fly secrets list --app x", &[]).is_err());
        assert!(check_allowed("/usr/local/bin/fly ssh console", &[]).is_err());
        assert!(check_allowed("true && flyctl secrets set A=b", &[]).is_err());
        assert!(check_allowed("fly deploy --strategy rolling", &[]).is_ok());
        assert!(check_allowed("rm -rf /", &["rm -rf".into()]).is_err());
    }
}
