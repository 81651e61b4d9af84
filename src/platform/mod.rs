//! Helpers that talk to the machine and the outside, knowing nothing of actors or the store:
//! subprocesses ([`process`]) and their live output ([`live_output`]), confinement ([`sandbox`]), git ([`git`]), the governed executor's
//! rules ([`executor`]), the GitHub client ([`github`]), secret redaction ([`redact`]), the data dir's privacy ([`private`]), the model client ([`openai`]), prompts ([`prompt`]), logs
//! ([`telemetry`]) and Prometheus metrics ([`metrics`]).

pub(crate) mod beneath;
pub(crate) mod executor;
pub(crate) mod git;
pub(crate) mod github;
pub(crate) mod live_output;
pub(crate) mod metrics;
pub mod nats;
pub(crate) mod openai;
pub mod private;
pub mod process;
pub(crate) mod prompt;
pub mod redact;
pub mod sandbox;
pub mod telemetry;
