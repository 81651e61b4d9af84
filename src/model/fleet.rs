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
//!   heartbeat renews them); job classes are listed in [`CLASSES_BUCKET`]; the switches (pause,
//!   drain) are the signed key `switches` of [`CONTROL_BUCKET`] (`runtime::fleet::control`).
//! - While a job runs, its factory publishes what the command prints as [`OutputChunk`]s on the
//!   core-NATS subject `glitchlab.output.<job id>` ([`OUTPUT_SUBJECT_PREFIX`]): best effort, not
//!   stored, bounded in rate and size, so a chatty command never fills a stream.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::live::OutputStream;
use super::task::{CapturedOutput, Stage, TaskId};

pub mod trust;

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
/// The unsigned pause key of earlier versions: no longer read (anyone on NATS could write it);
/// the signed switches replaced it.
pub const PAUSED_KEY: &str = "paused";
/// The class of jobs that need no capability.
pub const ANY_CLASS: &str = "any";
/// Subject prefix of a running job's live output (core NATS, not stored):
/// `glitchlab.output.<job id>`.
pub const OUTPUT_SUBJECT_PREFIX: &str = "glitchlab.output.";
/// Repository caches a factory advertises as warm at most (the most recently used).
pub const WARM_MAX: usize = 32;
/// Capabilities one task or persona asks for at most.
pub const CAPABILITIES_MAX: usize = 16;
/// Characters of one capability name at most.
pub const CAPABILITY_CHARS_MAX: usize = 64;
/// Placement: the factory had the job's repository cached already.
pub const PLACED_WARM: &str = "warm clone";
/// Placement: no free factory had the repository cached; the first free one took the job.
pub const PLACED_FIRST_FREE: &str = "first free factory";
/// Placement: the factory holding an earlier delivery lost its lease; this one took it over.
pub const PLACED_LOST_LEASE: &str = "redelivery after a lost lease";

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
    /// Why this factory took it ([`PLACED_WARM`], [`PLACED_FIRST_FREE`]).
    #[serde(default)]
    pub placement: Option<String>,
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
    /// Why it ran there: [`PLACED_WARM`], [`PLACED_FIRST_FREE`] (said by the factory), or
    /// [`PLACED_LOST_LEASE`] (set by the control plane when it heard an earlier delivery claimed).
    #[serde(default)]
    pub placement: Option<String>,
}

/// Bytes of a running job's output, as its factory read them from the command's pipes (raw:
/// the control plane redacts and coalesces them as it does local output).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputChunk {
    /// The pipe.
    pub stream: OutputStream,
    /// Hex of the bytes (at most a few KiB).
    pub bytes: String,
    /// Bytes of this pipe printed before these and not sent (the factory's rate and size
    /// bounds): the reader must not join the pieces on both sides of the gap.
    pub missed_bytes: u64,
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
    /// The repositories it has cached ([`repo_digest`]s, the most recently used first, at most
    /// [`WARM_MAX`]): a job on one of them starts without a full fetch there.
    #[serde(default)]
    pub warm: Vec<String>,
    /// When it last asked the jobs stream for work: a factory with a free slot that has not
    /// pulled for a while is stalled (`GET /v1/fleet` says so).
    #[serde(default)]
    pub last_pull_at: Option<DateTime<Utc>>,
    /// Whether it holds its claims now (the fleet-wide pause or its own).
    #[serde(default)]
    pub paused: bool,
}

impl FactoryRecord {
    /// Whether it offers everything `needed` names.
    pub fn serves(&self, needed: &[String]) -> bool {
        needed.iter().all(|need| self.capabilities.contains(need))
    }
}

/// The short digest naming a repository's cache on a factory (and in [`FactoryRecord::warm`]):
/// the same for every job fetching from the same `repo`.
pub fn repo_digest(repo: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(repo.as_bytes());
    hex::encode(&digest[..8])
}

/// Checks capability names as a task or a persona gives them: at most [`CAPABILITIES_MAX`],
/// each 1 to [`CAPABILITY_CHARS_MAX`] characters of `a-z 0-9 : . _ -` (they name job classes and
/// appear in reasons). The error says which name is wrong.
pub fn check_capabilities(capabilities: &[String]) -> Result<(), String> {
    if capabilities.len() > CAPABILITIES_MAX {
        return Err(format!("at most {CAPABILITIES_MAX} capabilities"));
    }
    for capability in capabilities {
        let valid = (1..=CAPABILITY_CHARS_MAX).contains(&capability.len())
            && capability.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, ':' | '.' | '_' | '-')
            });
        if !valid {
            return Err(format!(
                "capability `{}` is not 1 to {CAPABILITY_CHARS_MAX} characters of a-z, 0-9, `:`, \
                 `.`, `_`, `-`",
                capability.escape_debug()
            ));
        }
    }
    Ok(())
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

    #[test]
    fn capability_names_are_checked() {
        assert!(check_capabilities(&["has:gpu".into(), "zone:eu-1_a.b".into()]).is_ok());
        assert!(check_capabilities(&["Has:GPU".into()]).is_err());
        assert!(check_capabilities(&[String::new()]).is_err());
        assert!(check_capabilities(&["x".repeat(65)]).is_err());
        let many: Vec<String> = (0..17).map(|n| format!("c{n}")).collect();
        assert!(check_capabilities(&many).is_err());
    }

    #[test]
    fn a_repository_has_one_digest() {
        assert_eq!(repo_digest("/srv/a/.git"), repo_digest("/srv/a/.git"));
        assert_ne!(repo_digest("/srv/a/.git"), repo_digest("/srv/b/.git"));
        assert_eq!(repo_digest("/srv/a/.git").len(), 16);
    }
}
