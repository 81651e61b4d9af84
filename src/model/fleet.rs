//! The fleet's wire vocabulary: what the control plane and its factories say to each other over
//! NATS JetStream. Plain types (serde JSON on the wire), so both sides and the tests agree on one
//! definition.
//!
//! - A **job** ([`FleetJob`]) is one engine or verify run: a command, the commit to run it on
//!   (published as the ref [`FleetJob::job_ref`] in the task's repository), its environment and
//!   files. It is published on `glitchlab.jobs.<class>` of the work-queue stream [`JOBS_STREAM`],
//!   where `<class>` names the capabilities it needs ([`class_of`]).
//! - A factory **claims** a delivery ([`JobClaim`]) before it runs it and answers with a
//!   **result** ([`JobResult`]); both go through the stream [`RESULTS_STREAM`]. The control plane
//!   accepts only the result of the delivery it heard claimed last: a late answer of a holder
//!   whose lease ran out is fenced off.
//! - Factories register in the key-value bucket [`FACTORIES_BUCKET`] (entries expire unless the
//!   heartbeat renews them); job classes are listed in [`CLASSES_BUCKET`]; the kill switch is the
//!   key [`PAUSED_KEY`] of [`CONTROL_BUCKET`].

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::task::{CapturedOutput, Stage, TaskId};

/// The work-queue stream of jobs.
pub const JOBS_STREAM: &str = "glitchlab_jobs";
/// Subjects of jobs: `glitchlab.jobs.<class>`.
pub const JOBS_SUBJECT_PREFIX: &str = "glitchlab.jobs.";
/// The stream of claims and results (limits retention; read by the control plane).
pub const RESULTS_STREAM: &str = "glitchlab_results";
/// Subject prefix of claims: `glitchlab.claims.<job id>`.
pub const CLAIMS_SUBJECT_PREFIX: &str = "glitchlab.claims.";
/// Subject prefix of results: `glitchlab.results.<job id>`.
pub const RESULTS_SUBJECT_PREFIX: &str = "glitchlab.results.";
/// Factories by name, with a heartbeat that expires.
pub const FACTORIES_BUCKET: &str = "glitchlab_factories";
/// Job classes by name: the capabilities each needs.
pub const CLASSES_BUCKET: &str = "glitchlab_classes";
/// Fleet-wide switches.
pub const CONTROL_BUCKET: &str = "glitchlab_control";
/// `"true"` while claiming is paused fleet-wide.
pub const PAUSED_KEY: &str = "paused";
/// The class of jobs that need no capability.
pub const ANY_CLASS: &str = "any";

/// One engine or verify run for a factory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetJob {
    /// Unique per dispatch (a retry of the stage is a new job).
    pub job_id: Uuid,
    /// The task it is for.
    pub task_id: TaskId,
    /// `patch`, `circuit`, ...: whose run it is.
    pub persona: String,
    /// The stage it runs for.
    pub stage: Stage,
    /// The attempt it runs for.
    pub attempt: u32,
    /// Where the factory fetches from: the repository's path or URL.
    pub repo: String,
    /// The commit to run on.
    pub commit: String,
    /// `sh -c` command line.
    pub command: String,
    /// The command's whole environment (the persona's governed variables, the task's).
    pub env: Vec<(String, String)>,
    /// Files to write before it runs; each variable named is set to the file's path.
    pub files: Vec<JobFile>,
    /// Killed (with all its processes) past this.
    pub timeout_ms: u64,
    /// Bytes kept of stdout and of stderr each.
    pub output_bytes_max: usize,
    /// Answer with the change the command made to the tree (a binary diff): an engine run.
    pub want_diff: bool,
    /// What a factory needs to serve it.
    pub capabilities: Vec<String>,
}

impl FleetJob {
    /// The ref the control plane publishes the job's commit under, for the factory to fetch.
    pub fn job_ref(&self) -> String {
        job_ref(self.job_id)
    }
}

/// The ref a job's commit is published under.
pub fn job_ref(job_id: Uuid) -> String {
    format!("refs/glitchlab/jobs/{job_id}")
}

/// A file a job's command reads, named by an environment variable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobFile {
    /// The variable set to the file's path on the factory.
    pub variable: String,
    /// The file's name on the factory (in the job's own directory).
    pub name: String,
    /// Its content.
    pub content: String,
}

/// A factory took a delivery of a job and is running it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobClaim {
    /// Which job.
    pub job_id: Uuid,
    /// JetStream's delivery count of the message: 1 first, more after each redelivery.
    pub delivery: u64,
    /// The factory's name.
    pub factory: String,
}

/// How a delivery of a job ended on a factory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobResult {
    /// Which job.
    pub job_id: Uuid,
    /// Which delivery ran (see [`JobClaim::delivery`]).
    pub delivery: u64,
    /// The factory's name.
    pub factory: String,
    /// Exit code; `None` when a signal ended it (or it never ran).
    pub exit_code: Option<i32>,
    /// The signal that ended it.
    pub signal: Option<i32>,
    /// Killed at its timeout.
    pub timed_out: bool,
    /// Standard output, bounded.
    pub stdout: CapturedOutput,
    /// Standard error, bounded.
    pub stderr: CapturedOutput,
    /// Wall time of the command.
    pub duration_ms: u64,
    /// Base64 of the binary diff the command made, when asked for.
    pub diff: Option<String>,
    /// The factory could not run the job at all (fetch failed, no `sh`): why.
    pub failure: Option<String>,
}

/// A job a factory is running.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RunningJob {
    /// Which job.
    pub job_id: Uuid,
    /// For which task.
    pub task_id: TaskId,
    /// Which delivery.
    pub delivery: u64,
    /// Since when.
    pub started_at: DateTime<Utc>,
}

/// A factory as it registers itself (`GET /v1/fleet` lists these).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FactoryRecord {
    /// Unique name.
    pub name: String,
    /// What it offers: `os:linux`, `arch:x86_64`, `has:python3`, `env:OPENAI_API_KEY`, and what
    /// its operator added.
    pub capabilities: Vec<String>,
    /// Jobs it runs at once.
    pub slots: usize,
    /// What it runs now.
    pub running: Vec<RunningJob>,
    /// Its last heartbeat (the entry expires without the next).
    pub heartbeat_at: DateTime<Utc>,
    /// Whether it is draining (stopping: it claims nothing more).
    pub draining: bool,
}

impl FactoryRecord {
    /// Whether it offers everything `needed` names.
    pub fn serves(&self, needed: &[String]) -> bool {
        needed.iter().all(|need| self.capabilities.contains(need))
    }
}

/// The class of jobs needing `capabilities`: [`ANY_CLASS`] for none, else a short digest of the
/// sorted set (a NATS subject token: no dots or wildcards, whatever the names hold).
pub fn class_of(capabilities: &[String]) -> String {
    use sha2::{Digest, Sha256};
    let mut sorted: Vec<&str> = capabilities.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.is_empty() {
        return ANY_CLASS.to_owned();
    }
    let digest = Sha256::digest(sorted.join("\n").as_bytes());
    format!("c{}", hex::encode(&digest[..8]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_class_names_a_set_of_capabilities_whatever_their_order() {
        let one = class_of(&["has:gpu".into(), "os:linux".into()]);
        let two = class_of(&["os:linux".into(), "has:gpu".into(), "has:gpu".into()]);
        assert_eq!(one, two);
        assert_eq!(class_of(&[]), ANY_CLASS);
        assert!(!one.contains('.') && !one.contains('*') && !one.contains('>'));
        assert_ne!(one, class_of(&["has:gpu".into()]));
    }
}
