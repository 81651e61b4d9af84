//! `glitchlab factory`: a machine that runs stage work for a control plane, taken from NATS
//! JetStream (see docs/fleet.md and [`crate::model::fleet`] for the protocol).
//!
//! It registers itself with its capabilities and a heartbeat that expires, pulls jobs of the
//! classes it can serve from their shared consumers (at most `--slots` at once), keeps each
//! job's lease alive with progress acknowledgements while the command runs, and answers with a
//! claim first and a result last — both stored in JetStream, so a control plane that reconnects
//! finds them. A factory killed mid-job stops acknowledging: after the lease, JetStream hands the
//! job to another factory, and the control plane fences off this one's late answer.
//!
//! Each job runs in a fresh worktree of a cached bare clone of its repository, on exactly the
//! commit the control plane published; an engine's changes go back as a binary diff.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind};
use chrono::Utc;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::model::fleet::{
    FactoryRecord, FleetJob, JobClaim, JobResult, RunningJob, CLAIMS_SUBJECT_PREFIX, PAUSED_KEY,
    RESULTS_SUBJECT_PREFIX,
};
use crate::model::task::CapturedOutput;
use crate::platform::git::Git;
use crate::platform::nats::{self, Nats, NatsOptions};
use crate::platform::process::{self, CommandSpec};
use crate::runtime::fleet::FACTORY_TTL;

/// How often the registry entry is renewed (well inside [`FACTORY_TTL`]).
const HEARTBEAT_EVERY: Duration = Duration::from_secs(3);
/// How often the job classes are looked up (a new class is served this soon).
const CLASSES_EVERY: Duration = Duration::from_secs(1);
/// How long one pull waits for a job before it looks at the switches again.
const PULL_WAIT: Duration = Duration::from_secs(1);
/// Git calls of a job at most.
const GIT_TIMEOUT: Duration = Duration::from_secs(120);
/// An engine's diff at most (it travels in one NATS message).
const DIFF_BYTES_MAX: u64 = 256 * 1024;
/// Tries to store a result before the job is left to its lease.
const RESULT_TRIES: u32 = 10;
/// Tools whose presence on `PATH` is a capability (`has:<tool>`).
const TOOLS: [&str; 14] = [
    "python3", "node", "npm", "cargo", "go", "java", "make", "gcc", "docker", "git", "claude",
    "codex", "aider", "bwrap",
];
/// Credential variables whose presence (never their value) is a capability (`env:<name>`).
const CREDENTIALS: [&str; 6] = [
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "GITHUB_TOKEN",
    "GH_TOKEN",
    "FLY_API_TOKEN",
    "HF_TOKEN",
];

/// Flags of `glitchlab factory`.
#[derive(Debug, clap::Args)]
pub struct FactoryArgs {
    /// The NATS server (`nats://host:4222`).
    #[arg(long, env = "GLITCHLAB_NATS_URL")]
    pub nats: String,
    /// This factory's unique name.
    #[arg(long)]
    pub name: String,
    /// Capabilities besides the detected ones (`has:gpu`), comma-separated or repeated.
    #[arg(long, value_delimiter = ',')]
    pub capabilities: Vec<String>,
    /// Jobs run at once.
    #[arg(long, default_value_t = 2)]
    pub slots: usize,
    /// Where the repository caches and job worktrees live.
    #[arg(long, default_value = "glitchlab-factory")]
    pub data_dir: PathBuf,
    /// The environment variable holding the NATS token, if the server wants one.
    #[arg(long)]
    pub token_env: Option<String>,
    /// A NATS credentials file.
    #[arg(long)]
    pub creds: Option<PathBuf>,
    /// A job's lease (must match the control plane's `fleet.lease_secs`): progress is reported
    /// three times per lease.
    #[arg(long, default_value_t = 30)]
    pub lease_secs: u64,
    /// Deliveries of one job at most (the control plane's `fleet.max_deliver`).
    #[arg(long, default_value_t = 3)]
    pub max_deliver: u32,
}

/// What every part of a running factory shares.
struct Factory {
    nats: Nats,
    name: String,
    capabilities: Vec<String>,
    slots: Arc<Semaphore>,
    slots_total: usize,
    data_dir: PathBuf,
    lease: Duration,
    max_deliver: u32,
    running: Mutex<Vec<RunningJob>>,
    draining: AtomicBool,
    /// One lock per repository cache: fetches and worktree changes of one cache never race.
    caches: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>,
}

/// Runs a factory until SIGTERM or SIGINT, then drains: claims nothing more, finishes what it
/// runs, and leaves the registry.
pub async fn run(args: FactoryArgs) -> Result<(), String> {
    if args.slots == 0 {
        return Err("--slots must be at least 1".into());
    }
    tokio::fs::create_dir_all(&args.data_dir)
        .await
        .map_err(|e| format!("data dir {}: {e}", args.data_dir.display()))?;
    let data_dir = tokio::fs::canonicalize(&args.data_dir)
        .await
        .map_err(|e| format!("data dir {}: {e}", args.data_dir.display()))?;
    // Commands a killed predecessor with this data dir left running.
    let orphans = process::kill_orphans(&data_dir.display().to_string());
    if orphans > 0 {
        tracing::warn!(orphans, "killed commands left running by a previous run");
    }
    let token = args
        .token_env
        .as_ref()
        .and_then(|name| std::env::var(name).ok());
    let nats = nats::connect(&NatsOptions {
        url: args.nats.clone(),
        token,
        creds_file: args.creds.clone(),
        name: format!("glitchlab-factory-{}", args.name),
    })
    .await
    .map_err(|e| e.to_string())?;
    nats.jobs_stream().await.map_err(|e| e.to_string())?;
    nats.results_stream().await.map_err(|e| e.to_string())?;
    let mut capabilities = detect_capabilities();
    capabilities.extend(args.capabilities.iter().cloned());
    capabilities.sort_unstable();
    capabilities.dedup();
    let factory = Arc::new(Factory {
        nats,
        name: args.name.clone(),
        capabilities,
        slots: Arc::new(Semaphore::new(args.slots)),
        slots_total: args.slots,
        data_dir,
        lease: Duration::from_secs(args.lease_secs.max(2)),
        max_deliver: args.max_deliver.max(1),
        running: Mutex::default(),
        draining: AtomicBool::new(false),
        caches: Mutex::default(),
    });
    tracing::info!(name = %factory.name, capabilities = ?factory.capabilities, slots = args.slots, "factory started");
    println!("glitchlab factory {} ready", factory.name);
    let heartbeat = tokio::spawn(heartbeat(Arc::clone(&factory)));
    let classes = tokio::spawn(serve_classes(Arc::clone(&factory)));
    wait_for_stop().await;
    tracing::info!("draining: no new jobs; finishing the running ones");
    factory.draining.store(true, Ordering::SeqCst);
    classes.abort();
    // Every slot back: every running job has answered.
    let _all = factory
        .slots
        .acquire_many(u32::try_from(args.slots).unwrap_or(u32::MAX))
        .await;
    heartbeat.abort();
    if let Ok(bucket) = factory.nats.factories(FACTORY_TTL).await {
        let _ = bucket.delete(&factory.name).await;
    }
    tracing::info!("factory stopped");
    Ok(())
}

async fn wait_for_stop() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// What this host offers: its OS and architecture, the tools on `PATH`, and which credential
/// variables are set (by name only).
fn detect_capabilities() -> Vec<String> {
    let mut found = vec![
        format!("os:{}", std::env::consts::OS),
        format!("arch:{}", std::env::consts::ARCH),
    ];
    let path = std::env::var_os("PATH").unwrap_or_default();
    for tool in TOOLS {
        if std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()) {
            found.push(format!("has:{tool}"));
        }
    }
    for name in CREDENTIALS {
        if std::env::var_os(name).is_some_and(|v| !v.is_empty()) {
            found.push(format!("env:{name}"));
        }
    }
    found
}

/// Renews the registry entry (capabilities, load, running jobs) until the factory stops.
async fn heartbeat(factory: Arc<Factory>) {
    loop {
        let record = FactoryRecord {
            name: factory.name.clone(),
            capabilities: factory.capabilities.clone(),
            slots: factory.slots_total,
            running: factory
                .running
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            heartbeat_at: Utc::now(),
            draining: factory.draining.load(Ordering::SeqCst),
        };
        match (
            factory.nats.factories(FACTORY_TTL).await,
            serde_json::to_vec(&record),
        ) {
            (Ok(bucket), Ok(bytes)) => {
                if let Err(error) = bucket.put(&factory.name, bytes.into()).await {
                    tracing::warn!(%error, "heartbeat not stored");
                }
            }
            (Err(error), _) => tracing::warn!(%error, "registry unreachable"),
            (_, Err(error)) => tracing::warn!(%error, "heartbeat not encoded"),
        }
        tokio::time::sleep(HEARTBEAT_EVERY).await;
    }
}

/// Starts a pull loop for each job class this factory can serve, as classes appear.
async fn serve_classes(factory: Arc<Factory>) {
    let mut served = HashSet::new();
    let mut loops = Vec::new();
    loop {
        if let Ok(bucket) = factory.nats.classes().await {
            if let Ok(mut keys) = bucket.keys().await {
                while let Some(Ok(class)) = keys.next().await {
                    if served.contains(&class) {
                        continue;
                    }
                    let Ok(Some(listed)) = bucket.get(&class).await else {
                        continue;
                    };
                    let needed: Vec<String> = serde_json::from_slice(&listed).unwrap_or_default();
                    if needed.iter().all(|n| factory.capabilities.contains(n)) {
                        tracing::info!(%class, ?needed, "serving a job class");
                        served.insert(class.clone());
                        loops.push(tokio_util::task::AbortOnDropHandle::new(tokio::spawn(
                            pull_loop(Arc::clone(&factory), class),
                        )));
                    }
                }
            }
        }
        tokio::time::sleep(CLASSES_EVERY).await;
    }
}

/// Takes jobs of one class while a slot is free and claiming is not paused.
async fn pull_loop(factory: Arc<Factory>, class: String) {
    let consumer = loop {
        match factory
            .nats
            .class_consumer(&class, factory.lease, factory.max_deliver)
            .await
        {
            Ok(consumer) => break consumer,
            Err(error) => {
                tracing::warn!(%class, %error, "cannot open the class's consumer; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let mut paused_until_checked = Instant::now();
    let mut paused = false;
    loop {
        if factory.draining.load(Ordering::SeqCst) {
            return;
        }
        if Instant::now() >= paused_until_checked {
            paused = is_paused(&factory.nats).await;
            paused_until_checked = Instant::now() + Duration::from_millis(500);
        }
        if paused {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let Ok(permit) = Arc::clone(&factory.slots).acquire_owned().await else {
            return;
        };
        let batch = consumer
            .fetch()
            .max_messages(1)
            .expires(PULL_WAIT)
            .messages()
            .await;
        let mut messages = match batch {
            Ok(messages) => messages,
            Err(error) => {
                tracing::warn!(%class, %error, "pull failed");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        if let Some(Ok(message)) = messages.next().await {
            let factory = Arc::clone(&factory);
            tokio::spawn(async move {
                handle(&factory, message).await;
                drop(permit);
            });
        }
    }
}

async fn is_paused(nats: &Nats) -> bool {
    match nats.control().await {
        Ok(bucket) => bucket
            .get(PAUSED_KEY)
            .await
            .ok()
            .flatten()
            .is_some_and(|v| v.as_ref() == b"true"),
        Err(_) => false,
    }
}

/// One delivery of a job: claim, keep the lease, run, answer, acknowledge.
async fn handle(factory: &Factory, message: jetstream::Message) {
    let delivery = message
        .info()
        .map(|info| u64::try_from(info.delivered).unwrap_or(1))
        .unwrap_or(1);
    let job: FleetJob = match serde_json::from_slice(&message.payload) {
        Ok(job) => job,
        Err(error) => {
            tracing::error!(%error, "a job that is not a job: dropped");
            let _ = message.ack_with(AckKind::Term).await;
            return;
        }
    };
    let claim = JobClaim {
        job_id: job.job_id,
        delivery,
        factory: factory.name.clone(),
    };
    let stored = match serde_json::to_vec(&claim) {
        Ok(bytes) => {
            factory
                .nats
                .publish_stored(format!("{CLAIMS_SUBJECT_PREFIX}{}", job.job_id), bytes)
                .await
        }
        Err(error) => Err(nats::NatsError::js(error)),
    };
    if let Err(error) = stored {
        tracing::warn!(job = %job.job_id, %error, "could not claim; handing the job back");
        let _ = message.ack_with(AckKind::Nak(None)).await;
        return;
    }
    tracing::info!(job = %job.job_id, task = %job.task_id, delivery, "claimed a job");
    factory
        .running
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(RunningJob {
            job_id: job.job_id,
            task_id: job.task_id,
            delivery,
            started_at: Utc::now(),
        });
    let message = Arc::new(message);
    let keeper = {
        let message = Arc::clone(&message);
        let every = factory.lease / 3;
        tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(error) = message.ack_with(AckKind::Progress).await {
                    tracing::warn!(%error, "lease not renewed");
                }
            }
        }))
    };
    let result = run_job(factory, &job, delivery).await;
    let answered = answer(factory, &result).await;
    drop(keeper);
    if answered {
        if let Err(error) = message.double_ack().await {
            tracing::warn!(job = %job.job_id, %error, "result stored but the job not acknowledged");
        }
    }
    factory
        .running
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .retain(|running| running.job_id != job.job_id);
}

/// Stores the result, trying a few times (the server may be restarting); whether it is stored.
async fn answer(factory: &Factory, result: &JobResult) -> bool {
    let Ok(bytes) = serde_json::to_vec(result) else {
        return false;
    };
    for attempt in 1..=RESULT_TRIES {
        let subject = format!("{RESULTS_SUBJECT_PREFIX}{}", result.job_id);
        match factory.nats.publish_stored(subject, bytes.clone()).await {
            Ok(()) => return true,
            Err(error) => {
                tracing::warn!(job = %result.job_id, attempt, %error, "result not stored yet");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    false
}

/// Runs the job in a fresh worktree; any trouble of the factory's own becomes the result's
/// `failure`, never a panic.
async fn run_job(factory: &Factory, job: &FleetJob, delivery: u64) -> JobResult {
    let mut result = JobResult {
        job_id: job.job_id,
        delivery,
        factory: factory.name.clone(),
        exit_code: None,
        signal: None,
        timed_out: false,
        stdout: CapturedOutput::default(),
        stderr: CapturedOutput::default(),
        duration_ms: 0,
        diff: None,
        failure: None,
    };
    let cache = cache_dir(&factory.data_dir, &job.repo);
    let work = factory.data_dir.join("jobs").join(job.job_id.to_string());
    let outcome = async {
        let tree = prepare(factory, &cache, &work, job).await?;
        run_command(factory, &tree, &work, job, &mut result).await
    }
    .await;
    if let Err(failure) = outcome {
        tracing::warn!(job = %job.job_id, %failure, "job could not run");
        result.failure = Some(failure);
    }
    clean_up(factory, &cache, &work, job).await;
    result
}

fn cache_dir(data_dir: &Path, repo: &str) -> PathBuf {
    let digest = Sha256::digest(repo.as_bytes());
    data_dir.join("repos").join(hex::encode(&digest[..8]))
}

fn cache_lock(factory: &Factory, cache: &Path) -> Arc<tokio::sync::Mutex<()>> {
    factory
        .caches
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(cache.to_path_buf())
        .or_default()
        .clone()
}

/// Fetches the job's commit into the repository's cache and makes a worktree at it.
async fn prepare(
    factory: &Factory,
    cache: &Path,
    work: &Path,
    job: &FleetJob,
) -> Result<PathBuf, String> {
    let lock = cache_lock(factory, cache);
    let _one_at_a_time = lock.lock().await;
    let git = Git::new(cache, GIT_TIMEOUT);
    if !tokio::fs::try_exists(cache.join("HEAD"))
        .await
        .unwrap_or(false)
    {
        tokio::fs::create_dir_all(cache)
            .await
            .map_err(|e| format!("cache {}: {e}", cache.display()))?;
        git.run(&["init", "--quiet", "--bare"])
            .await
            .map_err(|e| e.to_string())?;
    }
    let reference = job.job_ref();
    let refspec = format!("+{reference}:{reference}");
    git.run(&["fetch", "--quiet", "--no-tags", &job.repo, &refspec])
        .await
        .map_err(|e| format!("fetching the job's commit from {}: {e}", job.repo))?;
    let tree = work.join("tree");
    let _ = tokio::fs::remove_dir_all(work).await;
    tokio::fs::create_dir_all(work)
        .await
        .map_err(|e| format!("job dir: {e}"))?;
    let _ = git.run(&["worktree", "prune"]).await;
    let tree_text = tree.display().to_string();
    git.run(&[
        "worktree",
        "add",
        "--detach",
        "--quiet",
        &tree_text,
        &job.commit,
    ])
    .await
    .map_err(|e| format!("worktree at {}: {e}", job.commit))?;
    Ok(tree)
}

/// Runs the command (its whole process group killed at the timeout) and, for an engine, reads
/// back what it changed.
async fn run_command(
    factory: &Factory,
    tree: &Path,
    work: &Path,
    job: &FleetJob,
    result: &mut JobResult,
) -> Result<(), String> {
    let files_dir = work.join("files");
    let temp = work.join("tmp");
    for dir in [&files_dir, &temp] {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| format!("job dir: {e}"))?;
    }
    let mut env = job.env.clone();
    for file in &job.files {
        let name = Path::new(&file.name)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "file".into());
        let path = files_dir.join(name);
        tokio::fs::write(&path, &file.content)
            .await
            .map_err(|e| format!("job file: {e}"))?;
        env.push((file.variable.clone(), path.display().to_string()));
    }
    env.push(("TMPDIR".into(), temp.display().to_string()));
    env.push((
        process::INSTANCE_VARIABLE.into(),
        factory.data_dir.display().to_string(),
    ));
    let mut spec = CommandSpec::shell(
        &job.command,
        tree.to_path_buf(),
        Duration::from_millis(job.timeout_ms),
        job.output_bytes_max,
    );
    spec.env_clear = true;
    spec.env = env;
    let output = process::run(&spec).await.map_err(|e| e.to_string())?;
    result.exit_code = output.exit_code;
    result.signal = output.signal;
    result.timed_out = output.timed_out;
    result.stdout = output.stdout;
    result.stderr = output.stderr;
    result.duration_ms = u64::try_from(output.duration.as_millis()).unwrap_or(u64::MAX);
    if job.want_diff {
        result.diff = Some(diff(tree, work, &job.commit).await?);
    }
    Ok(())
}

/// Hex of the binary diff from `commit` to everything in the worktree now (new files too).
async fn diff(tree: &Path, work: &Path, commit: &str) -> Result<String, String> {
    let git = Git::new(tree, GIT_TIMEOUT);
    git.run(&["add", "-A"]).await.map_err(|e| e.to_string())?;
    let file = work.join("change.diff");
    let output = format!("--output={}", file.display());
    git.run(&["diff", "--cached", "--binary", &output, commit])
        .await
        .map_err(|e| e.to_string())?;
    let size = tokio::fs::metadata(&file)
        .await
        .map(|m| m.len())
        .unwrap_or(0);
    if size > DIFF_BYTES_MAX {
        return Err(format!(
            "the change is {size} bytes of diff, more than a fleet job carries ({DIFF_BYTES_MAX})"
        ));
    }
    let bytes = tokio::fs::read(&file).await.unwrap_or_default();
    Ok(hex::encode(bytes))
}

/// Removes the job's worktree, files and ref.
async fn clean_up(factory: &Factory, cache: &Path, work: &Path, job: &FleetJob) {
    let lock = cache_lock(factory, cache);
    let _one_at_a_time = lock.lock().await;
    let git = Git::new(cache, GIT_TIMEOUT);
    let tree = work.join("tree").display().to_string();
    let _ = git.run(&["worktree", "remove", "--force", &tree]).await;
    let _ = tokio::fs::remove_dir_all(work).await;
    let _ = git.run(&["update-ref", "-d", &job.job_ref()]).await;
}
