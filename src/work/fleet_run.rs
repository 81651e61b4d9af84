//! An engine or verify command run on a fleet factory instead of in-process: the control
//! plane's half of a job. The command runs on exactly the commit the worktree is at (published
//! as a ref for the factory to fetch), with the same environment; an engine's changes come back
//! as a binary diff and are applied to the worktree, so what Patch does next (protected paths,
//! the commit) is the same either way. Run records, metering and the stage's outcome are
//! [`super::engine::run_shell`]'s, once per job: the fleet accepts one result per job.
//!
//! While the job runs, what its command prints comes back live (core NATS, best effort) and
//! goes through the same [`live_output::forward`] as a local run's output — coalesced,
//! rate-limited, redacted — to the task's stream as `run.output` chunks of the run's record.

pub(crate) mod waiting;

use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::model::fleet::{job_ref, FleetJob, JobFile, OutputChunk};
use crate::model::live::{OutputStream, RunOutput};
use crate::model::persona::Persona;
use crate::model::task::{Stage, TaskId};
use crate::platform::git::Git;
use crate::platform::live_output;
use crate::platform::process::{self, CommandOutput, TapChunk};
use crate::runtime::fleet::{Fleet, FleetError};
use crate::runtime::jobs::StageError;
use crate::runtime::Services;
use crate::storage::store::NewEvent;

/// Bytes of one file shipped with a job (a prompt, a feedback file) at most.
const JOB_FILE_BYTES_MAX: u64 = 256 * 1024;
/// After the result, output still in flight is read this much longer (it was published before
/// the result, but travels another way).
const OUTPUT_TAIL_WAIT: Duration = Duration::from_millis(150);

/// Whose run it is (the engine's `RunIdentity`, restated so this module does not depend on the
/// engine that calls it).
pub(crate) struct Whose {
    /// The task.
    pub task_id: TaskId,
    /// The persona whose command it is.
    pub persona: Persona,
    /// The stage it runs for.
    pub stage: Stage,
    /// The attempt it runs for.
    pub attempt: u32,
    /// The run record the job's live output belongs to.
    pub run_id: Uuid,
}

/// What to run remotely: [`super::engine::ShellRun`]'s parts, the environment as governed.
pub(crate) struct RemoteRun<'a> {
    /// The command line.
    pub command: &'a str,
    /// The worktree whose commit it runs on (and where an engine's diff is applied), driven
    /// through its admin dir.
    pub worktree: &'a Git,
    /// The governed environment, as the local run would get it.
    pub env: &'a [(String, String)],
    /// The command's own timeout.
    pub timeout: Duration,
    /// Bytes kept per stream.
    pub output_bytes_max: usize,
    /// What the factory must offer.
    pub capabilities: &'a [String],
    /// Bring back the change the command made (an engine).
    pub want_diff: bool,
}

/// Runs `run` on a factory and answers its output as a local run would.
pub(crate) async fn run_remote(
    services: &Services,
    fleet: &Fleet,
    who: &Whose,
    run: RemoteRun<'_>,
) -> Result<CommandOutput, StageError> {
    let git = run.worktree.clone();
    let commit = git.run(&["rev-parse", "HEAD"]).await?;
    let repo = git
        .run(&["rev-parse", "--path-format=absolute", "--git-common-dir"])
        .await?;
    let job_id = Uuid::now_v7();
    let reference = job_ref(job_id);
    git.run(&["update-ref", &reference, &commit]).await?;
    // A clone of a remote (`<data_dir>/remotes/`): the job's commit goes to the remote, where a
    // factory on another host can fetch it.
    let remote = super::fleet_refs::is_remote_clone(&services.config.storage.data_dir, &repo);
    // Deleted here and on the remote however this ends (a cancel drops this future).
    let job_ref = super::fleet_refs::JobRef::new(git.clone(), reference.clone(), remote);
    let origin = if remote {
        let url = git.run(&["config", "--get", "remote.origin.url"]).await?;
        let refspec = format!("+{commit}:{reference}");
        git.run(&["push", "--quiet", "origin", &refspec]).await?;
        Some(url)
    } else {
        None
    };
    let fetch_from = origin.clone().unwrap_or_else(|| repo.clone());
    let outcome = async {
        let (env, files, secrets) = ship(services, run.env).await?;
        let job = FleetJob {
            job_id,
            task_id: who.task_id,
            persona: who.persona.name().to_owned(),
            stage: who.stage,
            attempt: who.attempt,
            repo: fetch_from,
            commit: commit.clone(),
            command: run.command.to_owned(),
            env,
            files,
            timeout_ms: u64::try_from(run.timeout.as_millis()).unwrap_or(u64::MAX),
            output_bytes_max: run.output_bytes_max,
            want_diff: run.want_diff,
            capabilities: run.capabilities.to_vec(),
        };
        let result = run_watched(services, fleet, who, &job, secrets).await?;
        if let Some(diff) = &result.diff {
            apply(services, &git, who, diff).await?;
        }
        tracing::info!(task = %who.task_id, job = %job_id, factory = %result.factory, delivery = result.delivery, "fleet job done");
        let placed = NewEvent::new(
            who.persona,
            "fleet.ran",
            json!({
                "job_id": job_id, "factory": result.factory, "delivery": result.delivery,
                "stage": who.stage, "attempt": who.attempt, "capabilities": run.capabilities,
                "placement": result.placement,
            }),
        );
        if let Err(error) = services.store.append_event(who.task_id, placed).await {
            tracing::warn!(task = %who.task_id, %error, "could not record a fleet job's placement");
        }
        Ok(CommandOutput {
            exit_code: result.exit_code,
            signal: result.signal,
            timed_out: result.timed_out,
            stdout: result.stdout,
            stderr: result.stderr,
            duration: Duration::from_millis(result.duration_ms),
        })
    }
    .await;
    job_ref.release().await;
    outcome
}

/// Runs `job` on the fleet while its live output goes to the task's stream, as a local run's
/// does; the last chunks are out before this returns.
async fn run_watched(
    services: &Services,
    fleet: &Fleet,
    who: &Whose,
    job: &FleetJob,
    secrets: Vec<(String, String)>,
) -> Result<crate::model::fleet::JobResult, StageError> {
    // Subscribed before the job is published: no chunk comes before.
    let subscriber = fleet
        .output(job.job_id)
        .await
        .map_err(|e| fleet_error(FleetError::Nats(e)))?;
    let (taps_in, taps) = mpsc::channel(live_output::TAP_CAPACITY);
    let (done, finished) = oneshot::channel();
    let live = &services.live_output;
    let persona = who.persona.name();
    let forward = live_output::forward(
        taps,
        &services.redactor,
        || live.watched(who.task_id),
        |chunk| {
            live.publish(RunOutput {
                task_id: who.task_id,
                run_id: who.run_id,
                persona: persona.to_owned(),
                stage: who.stage,
                attempt: who.attempt,
                stream: chunk.stream,
                text: chunk.text,
                dropped_bytes: chunk.dropped_bytes,
            });
        },
    );
    let waiter = waiting::Waiter {
        task_id: who.task_id,
        persona: who.persona,
        stage: who.stage,
    };
    let run = async {
        // While no factory claims it, the task shows why (the watch never ends by itself).
        let result = tokio::select! {
            result = fleet.run(job, secrets) => result,
            never = waiting::watch_claim(services, fleet, waiter, job.job_id, &job.capabilities) => {
                match never {}
            }
        };
        let _ = done.send(());
        result
    };
    let (result, (), ()) =
        tokio::join!(run, receive_output(subscriber, taps_in, finished), forward);
    result.map_err(fleet_error)
}

/// Hands the factory's output chunks to the live-output pipeline until the job has ended (and
/// [`OUTPUT_TAIL_WAIT`] after), counting what a full pipeline could not take; dropping the
/// sender ends the pipeline, which then sends its last chunks.
async fn receive_output(
    mut subscriber: async_nats::Subscriber,
    taps: mpsc::Sender<TapChunk>,
    mut finished: oneshot::Receiver<()>,
) {
    let mut missed = [0u64; 2];
    let mut offer = |chunk: OutputChunk| {
        let Ok(bytes) = hex::decode(&chunk.bytes) else {
            return;
        };
        let slot = &mut missed[usize::from(chunk.stream == OutputStream::Stderr)];
        let gap = chunk.missed_bytes + *slot;
        let length = bytes.len() as u64;
        let tap = TapChunk {
            stream: chunk.stream,
            missed_bytes: gap,
            bytes,
        };
        *slot = match taps.try_send(tap) {
            Ok(()) => 0,
            Err(_) => gap + length,
        };
    };
    loop {
        tokio::select! {
            message = subscriber.next() => match message {
                Some(message) => {
                    if let Ok(chunk) = serde_json::from_slice::<OutputChunk>(&message.payload) {
                        offer(chunk);
                    }
                }
                None => return,
            },
            _ = &mut finished => break,
        }
    }
    while let Ok(Some(message)) = tokio::time::timeout(OUTPUT_TAIL_WAIT, subscriber.next()).await {
        if let Ok(chunk) = serde_json::from_slice::<OutputChunk>(&message.payload) {
            offer(chunk);
        }
    }
}

fn fleet_error(error: FleetError) -> StageError {
    StageError::from(error)
}

/// Splits the environment into what travels as variables and what as files: a `*_FILE`
/// variable naming a file under the data dir (a prompt, a feedback file) ships the file. The
/// variables only this host means something by (`TMPDIR`, the instance mark) stay behind. The
/// secret variables (`[governance] secrets`) come back apart: they never go into the job, the
/// claiming factory gets them sealed (issue 30).
async fn ship(services: &Services, env: &[(String, String)]) -> Result<Shipped, StageError> {
    let data_dir = &services.config.storage.data_dir;
    let mut vars = Vec::with_capacity(env.len());
    let mut files = Vec::new();
    let mut secrets = Vec::new();
    for (name, value) in env {
        if name == "TMPDIR" || name == process::INSTANCE_VARIABLE {
            continue;
        }
        if services.redactor.is_secret(name) {
            secrets.push((name.clone(), value.clone()));
            continue;
        }
        let path = Path::new(value);
        if name.ends_with("_FILE") && path.starts_with(data_dir) {
            if let Ok(meta) = tokio::fs::metadata(path).await {
                if meta.len() > JOB_FILE_BYTES_MAX {
                    return Err(StageError::fleet_unavailable(format!(
                        "{name} is larger than {JOB_FILE_BYTES_MAX} bytes: too big for a fleet job"
                    )));
                }
                let content = tokio::fs::read_to_string(path).await?;
                let file_name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| name.to_lowercase());
                files.push(JobFile {
                    variable: name.clone(),
                    name: file_name,
                    content,
                });
            }
            continue;
        }
        vars.push((name.clone(), value.clone()));
    }
    Ok((vars, files, secrets))
}

/// A job's environment as it travels: variables, files, and the secrets kept back.
type Shipped = (Vec<(String, String)>, Vec<JobFile>, Vec<(String, String)>);

/// Applies an engine's diff (hex of `git diff --binary`) to the worktree, staged nowhere: as if
/// the engine had edited the files here.
async fn apply(
    services: &Services,
    git: &Git,
    who: &Whose,
    diff_hex: &str,
) -> Result<(), StageError> {
    let diff = hex::decode(diff_hex).map_err(|e| {
        StageError::fleet_unavailable(format!("the factory's diff is not hex: {e}"))
    })?;
    if diff.is_empty() {
        return Ok(());
    }
    let dir = services.temp_dir(who.task_id);
    tokio::fs::create_dir_all(&dir).await?;
    let file = dir.join(format!("fleet-{}.diff", Uuid::now_v7()));
    tokio::fs::write(&file, &diff).await?;
    let path = file.display().to_string();
    let applied = git
        .run(&["apply", "--binary", "--whitespace=nowarn", &path])
        .await;
    let _ = tokio::fs::remove_file(&file).await;
    applied?;
    Ok(())
}
