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
//! commit the control plane published; an engine's changes go back as a binary diff. What the
//! command prints goes back live too, best effort: raw chunks on a core-NATS subject, at most
//! [`OUTPUT_CHUNK_BYTES`] each and one per [`OUTPUT_TICK`] (the control plane redacts them).
//!
//! **Warm clones.** The factory advertises the repositories it has cached (`warm` in its
//! registry entry). A job's first delivery to a factory without the job's repository cached is
//! handed back (a delayed nak) when another live factory with free slots has it warm, and this
//! factory pauses pulling that class a moment so the warm one gets the redelivery; a later
//! delivery is always taken. Each result says why it ran where it did (`placement`).
//!
//! **Trust** (issue 30, [`gate`]): the factory starts only with a key the service issued for its
//! name (`GLITCHLAB_FACTORY_KEY`), which its hello proves; the lease and `max_deliver` are the
//! control plane's (a flag that disagrees refuses the start). A claim is a signed request the
//! control plane answers, with the job's secrets sealed to this factory; renewals, results and
//! registry records are signed; output and results are redacted here before they are published.
//! The factory never acknowledges a job itself (the control plane deletes an answered one), so a
//! late answer of a superseded delivery touches nothing; each delivery has its own directory and
//! a job this factory runs already is not taken again.

mod gate;

mod control;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use chrono::Utc;
use futures_util::StreamExt;
use tokio::sync::{mpsc, Notify, Semaphore};
use uuid::Uuid;

use crate::model::fleet::trust::{check_factory_name, ClaimRequest, FactoryKey, LeaseRenewal};
use crate::model::fleet::{
    repo_digest, FactoryRecord, FleetJob, JobResult, OutputChunk, RunningJob,
    OUTPUT_SUBJECT_PREFIX, PLACED_FIRST_FREE, PLACED_WARM, RESULTS_SUBJECT_PREFIX, WARM_MAX,
};
use crate::model::live::OutputStream;
use crate::model::task::CapturedOutput;
use crate::platform::git::Git;
use crate::platform::nats::{self, Nats, NatsOptions};
use crate::platform::process::{self, CommandSpec, OutputTap, TapChunk};
use crate::platform::redact::Redactor;
use crate::runtime::fleet::FACTORY_TTL;

/// How often the registry entry is renewed (well inside [`FACTORY_TTL`]).
const HEARTBEAT_EVERY: Duration = Duration::from_secs(3);
/// How often the job classes are looked up (a new class is served this soon).
const CLASSES_EVERY: Duration = Duration::from_secs(1);
/// One look-up of the job classes at most.
const CLASSES_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one pull waits for a job before it looks at the switches again.
const PULL_WAIT: Duration = Duration::from_secs(1);
/// Git calls of a job at most.
const GIT_TIMEOUT: Duration = Duration::from_secs(120);
/// An engine's diff at most (it travels in one NATS message).
const DIFF_BYTES_MAX: u64 = 256 * 1024;
/// Output kept per stream at most, whatever the job asks: a result travels in one NATS message
/// (1 MiB by default), with the diff (hex, up to twice [`DIFF_BYTES_MAX`]) beside it. The head
/// and tail are kept and the cut marked, as for any capture.
const RESULT_OUTPUT_BYTES_MAX: usize = 96 * 1024;
/// Tries to store a result before the job is left to its lease.
const RESULT_TRIES: u32 = 10;
/// How often a running job's output goes out: at most one message per tick (10 a second).
const OUTPUT_TICK: Duration = Duration::from_millis(100);
/// Bytes of output one message carries at most (and one pipe keeps pending at most: the
/// oldest go first, counted).
const OUTPUT_CHUNK_BYTES: usize = 4096;
/// Reads of the command's pipes waiting to be sent at most (then they are counted as missed).
const OUTPUT_TAP_CAPACITY: usize = 32;
/// One output message may wait this long for the connection (it is best effort).
const OUTPUT_SEND_WAIT: Duration = Duration::from_secs(1);
/// A first delivery handed back to a warm factory comes back this late.
const HAND_BACK_DELAY: Duration = Duration::from_millis(500);
/// After handing a job back, the class is not pulled from for this long, so the redelivery goes
/// to the warm factory (whose pull is waiting), not back here.
const HAND_BACK_PAUSE: Duration = Duration::from_millis(1500);
/// Marks every process of a job (`<variable>=<job id>`): its stop finds and kills them.
const JOB_VARIABLE: &str = "GLITCHLAB_FLEET_JOB";
/// A stopped job's run has this long to end once its processes are killed.
const STOP_WAIT: Duration = Duration::from_secs(5);
/// A stopped job's processes are looked for this often until its run ends.
const STOP_TICK: Duration = Duration::from_millis(100);
/// The registry read deciding a hand-back waits this long at most (then the snapshot is used).
const HAND_BACK_READ_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a class's consumer is looked at again while it cannot be opened or has settings
/// other than the fleet's.
const CONSUMER_RETRY: Duration = Duration::from_secs(1);
/// Job classes looked at at most.
const CLASSES_MAX: usize = 1000;
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
    /// A job's lease, checked against the control plane's `fleet.lease_secs` (a mismatch
    /// refuses the start); by default the control plane's. Progress is reported three times per
    /// lease.
    #[arg(long)]
    pub lease_secs: Option<u64>,
    /// Deliveries of one job at most, checked against the control plane's `fleet.max_deliver`;
    /// by default the control plane's.
    #[arg(long)]
    pub max_deliver: Option<u32>,
    /// The environment variable holding this factory's key (`POST /v1/fleet/factories` issues
    /// it); `GLITCHLAB_FACTORY_KEY` by default.
    #[arg(long)]
    pub key_env: Option<String>,
    /// The environment variable holding the control key (the control plane's
    /// `fleet.control_key_env`): pause, drain and stop are obeyed only when signed with it.
    #[arg(long)]
    pub control_key_env: Option<String>,
}

/// What every part of a running factory shares.
struct Factory {
    nats: Nats,
    name: String,
    /// What its messages are signed with (derived from its key; never logged).
    key: FactoryKey,
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
    /// The repositories cached here ([`repo_digest`]s), the most recently used first, at most
    /// [`WARM_MAX`].
    warm: Mutex<Vec<String>>,
    /// Wakes the heartbeat early: what the registry should say changed (a job started or
    /// ended, a cache got warm).
    changed: Notify,
    /// What the control plane tells it (pause, drain), and when it last pulled.
    control: control::FactoryControl,
}

impl Factory {
    /// Whether a delivery of `job` runs here now.
    fn runs(&self, job: Uuid) -> bool {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .any(|running| running.job_id == job)
    }

    /// Lists a delivery as running here (the registry says so at once).
    fn started(&self, job: &FleetJob, delivery: u64) {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(RunningJob {
                job_id: job.job_id,
                task_id: job.task_id,
                delivery,
                started_at: Utc::now(),
            });
        self.changed.notify_one();
    }

    /// Whether the repository `repo` is cached here.
    fn is_warm(&self, repo: &str) -> bool {
        let digest = repo_digest(repo);
        self.warm
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&digest)
    }

    /// Marks `repo`'s cache as the most recently used.
    fn mark_warm(&self, repo: &str) {
        let digest = repo_digest(repo);
        let mut warm = self.warm.lock().unwrap_or_else(PoisonError::into_inner);
        let known = warm.first() == Some(&digest);
        if !known {
            warm.retain(|d| *d != digest);
            warm.insert(0, digest);
            warm.truncate(WARM_MAX);
            drop(warm);
            self.changed.notify_one();
        }
    }
}

/// Runs a factory until SIGTERM or SIGINT, then drains: claims nothing more, finishes what it
/// runs, and leaves the registry.
pub async fn run(args: FactoryArgs) -> Result<(), String> {
    if args.slots == 0 {
        return Err("--slots must be at least 1".into());
    }
    // It is the factory's key in the registry bucket, whose keys allow no more than this.
    check_factory_name(&args.name).map_err(|e| format!("--name {e}"))?;
    let key = gate::key_from_env(args.key_env.as_deref())?;
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
        inbox_prefix: Some(format!("_INBOX_{}", args.name)),
    })
    .await
    .map_err(|e| e.to_string())?;
    // The streams and consumers are the control plane's: their lease and `max_deliver` are
    // learned from it, and a flag that disagrees refuses the start.
    let welcome = gate::hello(&nats, &key, &args.name).await?;
    gate::check_settings(&welcome, args.lease_secs, args.max_deliver)?;
    let mut capabilities = detect_capabilities();
    capabilities.extend(args.capabilities.iter().cloned());
    capabilities.sort_unstable();
    capabilities.dedup();
    let warm = cached_repos(&data_dir).await;
    let factory = Arc::new(Factory {
        nats,
        name: args.name.clone(),
        key,
        capabilities,
        slots: Arc::new(Semaphore::new(args.slots)),
        slots_total: args.slots,
        data_dir,
        lease: Duration::from_secs(welcome.lease_secs.max(1)),
        max_deliver: welcome.max_deliver.max(1),
        running: Mutex::default(),
        draining: AtomicBool::new(false),
        caches: Mutex::default(),
        warm: Mutex::new(warm),
        changed: Notify::new(),
        control: control::FactoryControl::new(
            crate::runtime::fleet::control::ControlKey::from_env(args.control_key_env.as_deref()),
        ),
    });
    tracing::info!(name = %factory.name, capabilities = ?factory.capabilities, slots = args.slots, "factory started");
    println!("glitchlab factory {} ready", factory.name);
    let heartbeat = tokio::spawn(heartbeat(Arc::clone(&factory)));
    let _follow = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(control::follow(
        Arc::clone(&factory),
    )));
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
        let _ = nats::bounded("leaving the registry", bucket.delete(&factory.name)).await;
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

/// The repository caches a previous run of this factory left (digest names with a bare
/// repository in them), at most [`WARM_MAX`].
async fn cached_repos(data_dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(mut entries) = tokio::fs::read_dir(data_dir.join("repos")).await else {
        return found;
    };
    while let Ok(Some(entry)) = entries.next_entry().await {
        if found.len() >= WARM_MAX {
            break;
        }
        let has_head = tokio::fs::try_exists(entry.path().join("HEAD"))
            .await
            .unwrap_or(false);
        if has_head {
            found.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    found
}

/// Renews the registry entry (capabilities, load, running jobs, warm caches) until the factory
/// stops: every [`HEARTBEAT_EVERY`], and at once when something in it changed.
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
            draining: factory.draining.load(Ordering::SeqCst)
                || factory.control.mode() == crate::runtime::fleet::control::FactoryMode::Draining,
            warm: factory
                .warm
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            last_pull_at: factory.control.last_pull(),
            paused: factory.control.holds(),
        };
        match (
            factory.nats.factories(FACTORY_TTL).await,
            gate::signed_record(&factory.key, &record),
        ) {
            (Ok(bucket), Ok(bytes)) => {
                let put = bucket.put(&factory.name, bytes.into());
                if let Err(error) = nats::bounded("the heartbeat", put).await {
                    tracing::warn!(%error, "heartbeat not stored");
                }
            }
            (Err(error), _) => tracing::warn!(%error, "registry unreachable"),
            (_, Err(error)) => tracing::warn!(%error, "heartbeat not encoded"),
        }
        let _ = tokio::time::timeout(HEARTBEAT_EVERY, factory.changed.notified()).await;
    }
}

/// Starts a pull loop for each job class this factory can serve, as classes appear.
async fn serve_classes(factory: Arc<Factory>) {
    let mut served = HashSet::new();
    let mut loops = Vec::new();
    loop {
        if served.is_empty() {
            // Nothing to pull from yet: idle by design, not stalled.
            factory.control.pulled();
        }
        let read = tokio::time::timeout(CLASSES_READ_TIMEOUT, new_classes(&factory, &served));
        for class in read.await.unwrap_or_default() {
            served.insert(class.clone());
            loops.push(tokio_util::task::AbortOnDropHandle::new(tokio::spawn(
                pull_loop(Arc::clone(&factory), class),
            )));
        }
        tokio::time::sleep(CLASSES_EVERY).await;
    }
}

/// The job classes this factory can serve and does not serve yet.
async fn new_classes(factory: &Factory, served: &HashSet<String>) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(bucket) = factory.nats.classes().await else {
        return found;
    };
    let Ok(keys) = nats::bucket_keys(&bucket, CLASSES_MAX).await else {
        return found;
    };
    for class in keys {
        if served.contains(&class) || found.contains(&class) {
            continue;
        }
        let Ok(Some(listed)) = nats::bounded("a class", bucket.get(&class)).await else {
            continue;
        };
        let needed: Vec<String> = serde_json::from_slice(&listed).unwrap_or_default();
        if needed.iter().all(|n| factory.capabilities.contains(n)) {
            tracing::info!(%class, ?needed, "serving a job class");
            found.push(class);
        }
    }
    found
}

/// Takes jobs of one class while a slot is free and claiming is not paused. The class's consumer
/// is the control plane's; one whose lease or `max_deliver` differ from the fleet's is not served.
async fn pull_loop(factory: Arc<Factory>, class: String) {
    let mut said = false;
    let consumer = loop {
        match factory.nats.existing_class_consumer(&class).await {
            Ok(consumer) => {
                let config = &consumer.cached_info().config;
                match gate::consumer_matches(config, factory.lease, factory.max_deliver) {
                    Ok(()) => break consumer,
                    // The control plane updates it at the class's next job.
                    Err(error) if !said => {
                        tracing::error!(%class, %error, "not serving the class until its consumer has the fleet's settings");
                        said = true;
                    }
                    Err(_) => {}
                }
            }
            Err(error) => {
                tracing::warn!(%class, %error, "cannot open the class's consumer; trying again");
            }
        }
        tokio::time::sleep(CONSUMER_RETRY).await;
    };
    loop {
        if factory.draining.load(Ordering::SeqCst) {
            return;
        }
        if !factory.control.takes_jobs() {
            factory.control.pulled();
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let Ok(permit) = Arc::clone(&factory.slots).acquire_owned().await else {
            return;
        };
        // Told to stop while waiting for the slot: no fetch (the kill switch leaks no job).
        if !factory.control.takes_jobs() || factory.draining.load(Ordering::SeqCst) {
            continue;
        }
        stall_for_tests().await;
        factory.control.pulled();
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
            if hand_back(&factory, &message).await {
                drop(permit);
                tokio::time::sleep(HAND_BACK_PAUSE).await;
                continue;
            }
            let factory = Arc::clone(&factory);
            tokio::spawn(async move {
                if control::hold(&factory, &message).await {
                    handle(&factory, message).await;
                }
                drop(permit);
            });
        }
    }
}

/// Test hook (`--features failpoints`): `FAILPOINTS=factory.pull=return(<ms>)` makes a pull loop
/// that holds a free slot wait that long before it pulls — the stall `GET /v1/fleet` reports.
async fn stall_for_tests() {
    #[cfg(feature = "failpoints")]
    {
        let delay_ms = fail::eval("factory.pull", |value| {
            value.and_then(|ms| ms.parse::<u64>().ok())
        })
        .flatten();
        if let Some(ms) = delay_ms {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }
}

/// Hands a job's first delivery back (a delayed nak) when this factory has not cached its
/// repository and another live factory that can serve it, with a free slot, has; whether it did.
async fn hand_back(factory: &Factory, message: &jetstream::Message) -> bool {
    // Only a first delivery, and only when a redelivery is left (`max_deliver` counts this one).
    let first = message.info().is_ok_and(|info| info.delivered <= 1);
    if !first || factory.max_deliver < 2 {
        return false;
    }
    let Ok(job) = serde_json::from_slice::<FleetJob>(&message.payload) else {
        return false; // `handle` drops it
    };
    if factory.is_warm(&job.repo) {
        return false;
    }
    let digest = repo_digest(&job.repo);
    let Some(warm) = warm_elsewhere(factory, &job, &digest).await else {
        return false;
    };
    match nats::bounded(
        "handing back",
        message.ack_with(AckKind::Nak(Some(HAND_BACK_DELAY))),
    )
    .await
    {
        Ok(()) => {
            tracing::info!(job = %job.job_id, %warm, "handed a job back to a factory with a warm clone");
            true
        }
        Err(error) => {
            tracing::warn!(job = %job.job_id, %error, "could not hand a job back; running it");
            false
        }
    }
}

/// Another live factory (fresh heartbeat, not draining, a free slot, serving the job's
/// capabilities) with the repository `digest` cached: its name.
async fn warm_elsewhere(factory: &Factory, job: &FleetJob, digest: &str) -> Option<String> {
    // Read now, but bounded (a registry read here with no timeout once stalled a factory for
    // minutes); past the bound, the snapshot `control::follow` keeps.
    let fresh_after = Utc::now() - chrono::Duration::from_std(FACTORY_TTL).ok()?;
    let records = control::registry_now(factory, HAND_BACK_READ_TIMEOUT).await;
    for record in records {
        if record.name == factory.name {
            continue;
        }
        let takes_it = !record.draining
            && record.heartbeat_at > fresh_after
            && record.running.len() < record.slots
            && record.serves(&job.capabilities)
            && record.warm.iter().any(|d| d == digest);
        if takes_it {
            return Some(record.name);
        }
    }
    None
}

/// One delivery of a job: claim (the control plane answers), keep the lease, run (unless the
/// control plane stops it), answer. The job's message is never acknowledged here: the control
/// plane deletes it once it accepts the answer (or withdraws it when it gives the job up), so
/// nothing this delivery does can touch a successor's.
async fn handle(factory: &Factory, message: jetstream::Message) {
    let delivery = message
        .info()
        .map(|info| u64::try_from(info.delivered).unwrap_or(1))
        .unwrap_or(1);
    let job: FleetJob = match serde_json::from_slice(&message.payload) {
        Ok(job) => job,
        Err(error) => {
            tracing::error!(%error, "a job that is not a job: dropped");
            let _ = nats::bounded("dropping a bad job", message.ack_with(AckKind::Term)).await;
            return;
        }
    };
    if factory.runs(job.job_id) {
        // Its lease ran out while it ran here: another factory takes the redelivery.
        tracing::warn!(job = %job.job_id, delivery, "refused a job this factory runs already");
        let nak = message.ack_with(AckKind::Nak(Some(factory.lease)));
        let _ = nats::bounded("handing back", nak).await;
        return;
    }
    let placement = if factory.is_warm(&job.repo) {
        PLACED_WARM
    } else {
        PLACED_FIRST_FREE
    };
    // Heard before the claim: a stop sent once the control plane accepted it is not missed.
    let stop = control::watch_stop(factory, job.job_id).await;
    let Some(secrets) = claim(factory, &message, &job, delivery, placement).await else {
        return;
    };
    factory.started(&job, delivery);
    let message = Arc::new(message);
    let keeper = keep_lease(factory, Arc::clone(&message), job.job_id, delivery);
    let redactor = Redactor::new(secrets.iter().cloned());
    let run = Run {
        job: &job,
        delivery,
        secrets: &secrets,
        redactor: &redactor,
    };
    let (mut result, stopped) = run_or_stop(factory, run, stop).await;
    result.placement = Some(placement.to_owned());
    let answered = answer(factory, &redactor, result).await;
    drop(keeper);
    if stopped {
        // Not acknowledged either: the control plane withdrew the job when it gave it up.
        tracing::info!(job = %job.job_id, "stopped job answered; the control plane withdrew it");
    } else if !answered {
        tracing::warn!(job = %job.job_id, "result not stored: the job is left to its lease");
    }
    factory
        .running
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .retain(|running| running.job_id != job.job_id);
    factory.changed.notify_one();
}

/// One delivery to run: the job, which delivery, its secrets and what redacts them.
struct Run<'a> {
    job: &'a FleetJob,
    delivery: u64,
    secrets: &'a [(String, String)],
    redactor: &'a Redactor,
}

/// Runs the job unless its stop comes first: then the command's whole process group is killed
/// (dropping the run does it), its directory goes, and the result says so. Whether it stopped.
async fn run_or_stop(
    factory: &Factory,
    what: Run<'_>,
    mut stop: Option<async_nats::Subscriber>,
) -> (JobResult, bool) {
    let (job, delivery) = (what.job, what.delivery);
    let run = run_job(factory, job, delivery, what.secrets, what.redactor);
    tokio::pin!(run);
    let reason = tokio::select! {
        result = &mut run => return (result, false),
        reason = control::stopped(stop.as_mut(), factory.control.key(), job.job_id) => reason,
    };
    tracing::warn!(job = %job.job_id, %reason, "stopped by the control plane: killing its processes");
    // Killed here, and the run goes on to reap them and clean up (a dropped run would leave
    // its zombies to the runtime); a run that does not end in time is dropped (its guard kills).
    let job_mark = job.job_id.to_string();
    let ended = tokio::time::timeout(STOP_WAIT, async {
        loop {
            for group in process::groups_carrying(JOB_VARIABLE, &job_mark) {
                // SAFETY: kill(2) on a process group that carries this job's mark.
                unsafe {
                    libc::kill(-group, libc::SIGKILL);
                }
            }
            tokio::select! {
                result = &mut run => return result,
                () = tokio::time::sleep(STOP_TICK) => {}
            }
        }
    })
    .await;
    let mut result = match ended {
        Ok(result) => result,
        Err(_) => {
            let cache = cache_dir(&factory.data_dir, &job.repo);
            let work = delivery_dir(&factory.data_dir, job, delivery);
            clean_up(factory, &cache, &work, job).await;
            empty_result(factory, job, delivery)
        }
    };
    result.diff = None;
    result.failure = Some(format!("stopped by the control plane: {reason}"));
    (result, true)
}

/// A result with nothing run yet.
fn empty_result(factory: &Factory, job: &FleetJob, delivery: u64) -> JobResult {
    JobResult {
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
        placement: None,
    }
}

/// Claims the delivery with the control plane: the job's secrets when this factory owns it now;
/// `None` when it must not run it (refused: left alone; the control plane unreachable: handed
/// back).
async fn claim(
    factory: &Factory,
    message: &jetstream::Message,
    job: &FleetJob,
    delivery: u64,
    placement: &str,
) -> Option<Vec<(String, String)>> {
    let request = ClaimRequest {
        job_id: job.job_id,
        delivery,
        factory: factory.name.clone(),
        ack_subject: message
            .reply
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        placement: Some(placement.to_owned()),
    };
    match gate::claim(&factory.nats, &factory.key, &request).await {
        Ok(gate::Claimed::Owner(secrets)) => {
            tracing::info!(job = %job.job_id, task = %job.task_id, delivery, "claimed a job");
            Some(secrets)
        }
        Ok(gate::Claimed::Refused(reason)) => {
            tracing::warn!(job = %job.job_id, delivery, %reason, "the control plane refused the claim");
            None
        }
        Err(error) => {
            tracing::warn!(job = %job.job_id, %error, "could not claim; handing the job back");
            let _ = nats::bounded("handing back", message.ack_with(AckKind::Nak(None))).await;
            None
        }
    }
}

/// Keeps the delivery's lease: a progress acknowledgement to the server and a signed renewal to
/// the control plane, three times per lease, until dropped.
fn keep_lease(
    factory: &Factory,
    message: Arc<jetstream::Message>,
    job: Uuid,
    delivery: u64,
) -> tokio_util::task::AbortOnDropHandle<()> {
    let every = factory.lease / 3;
    let nats = factory.nats.clone();
    let key = factory.key.clone();
    let renewal = LeaseRenewal {
        job_id: job,
        delivery,
        factory: factory.name.clone(),
    };
    tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let progress = message.ack_with(AckKind::Progress);
            if let Err(error) = nats::bounded("renewing the lease", progress).await {
                tracing::warn!(%error, "lease not renewed");
            }
            gate::renew(&nats, &key, &renewal).await;
        }
    }))
}

/// Stores the result, redacted and signed, trying a few times (the server may be restarting);
/// whether it is stored.
async fn answer(factory: &Factory, redactor: &Redactor, result: JobResult) -> bool {
    let job = result.job_id;
    let bytes = match gate::sealed_result(&factory.key, redactor, result) {
        Ok(bytes) => bytes,
        Err(error) => {
            tracing::error!(%job, %error, "result not encoded");
            return false;
        }
    };
    for attempt in 1..=RESULT_TRIES {
        let subject = format!("{RESULTS_SUBJECT_PREFIX}{job}");
        match factory.nats.publish_stored(subject, bytes.clone()).await {
            Ok(_) => return true,
            Err(error) => {
                tracing::warn!(%job, attempt, %error, "result not stored yet");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    false
}

/// Runs the job in a fresh worktree; any trouble of the factory's own becomes the result's
/// `failure`, never a panic.
async fn run_job(
    factory: &Factory,
    job: &FleetJob,
    delivery: u64,
    secrets: &[(String, String)],
    redactor: &Redactor,
) -> JobResult {
    let mut result = empty_result(factory, job, delivery);
    let cache = cache_dir(&factory.data_dir, &job.repo);
    let work = delivery_dir(&factory.data_dir, job, delivery);
    let outcome = async {
        let tree = prepare(factory, &cache, &work, job).await?;
        let secret = Secret { secrets, redactor };
        run_command(factory, &cache, &tree, &work, job, secret, &mut result).await
    }
    .await;
    if let Err(failure) = outcome {
        tracing::warn!(job = %job.job_id, %failure, "job could not run");
        result.failure = Some(failure);
    }
    clean_up(factory, &cache, &work, job).await;
    result
}

/// A delivery's own directory, keyed by job and delivery: two deliveries of one job never share
/// one.
fn delivery_dir(data_dir: &Path, job: &FleetJob, delivery: u64) -> PathBuf {
    data_dir
        .join("jobs")
        .join(format!("{}-{delivery}", job.job_id))
}

/// A delivery's worktree: named after its delivery dir (`<job>-<delivery>`), not a fixed name, for
/// git names a worktree's admin dir after the worktree's own name — two jobs of one repository
/// running at once here would share `worktrees/tree`, and the first to end would take the other's.
fn tree_dir(work: &Path) -> PathBuf {
    match work.file_name() {
        Some(name) => work.join(name),
        None => work.join("tree"),
    }
}

fn cache_dir(data_dir: &Path, repo: &str) -> PathBuf {
    data_dir.join("repos").join(repo_digest(repo))
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
    factory.mark_warm(&job.repo);
    let tree = tree_dir(work);
    let _ = tokio::fs::remove_dir_all(work).await;
    tokio::fs::create_dir_all(work)
        .await
        .map_err(|e| format!("job dir: {e}"))?;
    let _ = git.run(&["worktree", "prune"]).await;
    let tree_text = tree.display().to_string();
    git.run(&[
        "worktree",
        "add",
        "--lock",
        "--detach",
        "--quiet",
        &tree_text,
        &job.commit,
    ])
    .await
    .map_err(|e| format!("worktree at {}: {e}", job.commit))?;
    // The command gets a `.git` of its own; the diff is read through the admin dir.
    let worktree = git.worktree_of(&tree).await.map_err(|e| e.to_string())?;
    crate::platform::git::sandbox_dir::give_sandbox_git_dir(&worktree, &[])
        .await
        .map_err(|e| e.to_string())?;
    Ok(tree)
}

/// Runs the command (its whole process group killed at the timeout) and, for an engine, reads
/// back what it changed.
async fn run_command(
    factory: &Factory,
    cache: &Path,
    tree: &Path,
    work: &Path,
    job: &FleetJob,
    secret: Secret<'_>,
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
    env.extend(secret.secrets.iter().cloned());
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
    env.push((JOB_VARIABLE.into(), job.job_id.to_string()));
    env.push((
        process::INSTANCE_VARIABLE.into(),
        factory.data_dir.display().to_string(),
    ));
    let mut spec = CommandSpec::shell(
        &job.command,
        tree.to_path_buf(),
        Duration::from_millis(job.timeout_ms),
        job.output_bytes_max.min(RESULT_OUTPUT_BYTES_MAX),
    );
    spec.env_clear = true;
    spec.env = env;
    let (tap, taps) = OutputTap::channel(OUTPUT_TAP_CAPACITY);
    let (output, ()) = tokio::join!(
        process::run_tapped(&spec, Some(tap)),
        send_output(&factory.nats, job.job_id, taps, secret.redactor)
    );
    let output = output.map_err(|e| e.to_string())?;
    result.exit_code = output.exit_code;
    result.signal = output.signal;
    result.timed_out = output.timed_out;
    result.stdout = output.stdout;
    result.stderr = output.stderr;
    result.duration_ms = u64::try_from(output.duration.as_millis()).unwrap_or(u64::MAX);
    if job.want_diff {
        result.diff = Some(diff(cache, tree, work, &job.commit).await?);
    }
    Ok(())
}

/// A job's secrets as its command gets them, and the redactor of everything it prints.
#[derive(Clone, Copy)]
struct Secret<'a> {
    secrets: &'a [(String, String)],
    redactor: &'a Redactor,
}

/// Sends what the command prints to the control plane as it prints it, until its pipes close:
/// at most one [`OutputChunk`] per [`OUTPUT_TICK`], then what is left (one per pipe). With
/// secrets, each chunk is redacted here and a tick sends only whole lines (a secret is never cut
/// in two chunks, where neither would match).
async fn send_output(
    nats: &Nats,
    job: Uuid,
    mut taps: mpsc::Receiver<TapChunk>,
    redactor: &Redactor,
) {
    let subject = format!("{OUTPUT_SUBJECT_PREFIX}{job}");
    let send = |mut chunk: OutputChunk| {
        let subject = subject.clone();
        async move {
            if !redactor.is_empty() {
                let bytes = hex::decode(&chunk.bytes).unwrap_or_default();
                let text = redactor.redact(&String::from_utf8_lossy(&bytes));
                chunk.bytes = hex::encode(text.as_bytes());
            }
            let Ok(payload) = serde_json::to_vec(&chunk) else {
                return;
            };
            match tokio::time::timeout(OUTPUT_SEND_WAIT, nats.publish_core(subject, payload)).await
            {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::debug!(%error, "live output not sent"),
                Err(_) => tracing::debug!("live output not sent in time"),
            }
        }
    };
    let mut pending = PendingOutput::default();
    let mut tick = tokio::time::interval(OUTPUT_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            received = taps.recv() => match received {
                Some(chunk) => pending.push(chunk),
                None => break,
            },
            _ = tick.tick() => {
                let ready = if redactor.is_empty() {
                    pending.take()
                } else {
                    pending.take_lines()
                };
                if let Some(chunk) = ready {
                    send(chunk).await;
                }
            }
        }
    }
    while let Some(chunk) = pending.take() {
        send(chunk).await;
    }
}

/// A running command's output not sent yet: raw bytes per pipe, each at most
/// [`OUTPUT_CHUNK_BYTES`] (the oldest go first, from a line's start where one is near), and
/// what was left out.
#[derive(Debug, Default)]
struct PendingOutput {
    bytes: [Vec<u8>; 2],
    missed: [u64; 2],
    /// The pipe whose turn is next (they alternate, so neither starves the other).
    next: usize,
}

impl PendingOutput {
    const STREAMS: [OutputStream; 2] = [OutputStream::Stdout, OutputStream::Stderr];

    fn push(&mut self, chunk: TapChunk) {
        let pipe = usize::from(chunk.stream == OutputStream::Stderr);
        let (bytes, missed) = (&mut self.bytes[pipe], &mut self.missed[pipe]);
        if chunk.missed_bytes > 0 {
            // What came before the gap must not be sent as if it joined what comes after.
            *missed += chunk.missed_bytes + bytes.len() as u64;
            bytes.clear();
        }
        bytes.extend_from_slice(&chunk.bytes);
        if bytes.len() > OUTPUT_CHUNK_BYTES {
            let mut cut = bytes.len() - OUTPUT_CHUNK_BYTES;
            if let Some(end) = bytes[cut..].iter().position(|b| *b == b'\n') {
                if cut + end + 1 < bytes.len() {
                    cut += end + 1;
                }
            }
            *missed += cut as u64;
            bytes.drain(..cut);
        }
    }

    /// Like [`PendingOutput::take`], but only whole lines (the rest waits for its line's end,
    /// or for the buffer to fill): what redaction needs.
    fn take_lines(&mut self) -> Option<OutputChunk> {
        for turn in 0..2 {
            let pipe = (self.next + turn) % 2;
            let bytes = &mut self.bytes[pipe];
            let full = bytes.len() >= OUTPUT_CHUNK_BYTES;
            let Some(end) = bytes.iter().rposition(|b| *b == b'\n').map(|at| at + 1) else {
                if full {
                    return self.take_pipe(pipe);
                }
                continue;
            };
            let rest = bytes.split_off(end);
            let chunk = self.take_pipe(pipe);
            self.bytes[pipe] = rest;
            return chunk;
        }
        None
    }

    fn take_pipe(&mut self, pipe: usize) -> Option<OutputChunk> {
        if self.bytes[pipe].is_empty() {
            return None;
        }
        self.next = (pipe + 1) % 2;
        let bytes = std::mem::take(&mut self.bytes[pipe]);
        Some(OutputChunk {
            stream: Self::STREAMS[pipe],
            bytes: hex::encode(bytes),
            missed_bytes: std::mem::take(&mut self.missed[pipe]),
        })
    }

    /// The next chunk to send (the pipes take turns), if anything is pending.
    fn take(&mut self) -> Option<OutputChunk> {
        for turn in 0..2 {
            let pipe = (self.next + turn) % 2;
            if self.bytes[pipe].is_empty() {
                continue;
            }
            self.next = (pipe + 1) % 2;
            let bytes = std::mem::take(&mut self.bytes[pipe]);
            return Some(OutputChunk {
                stream: Self::STREAMS[pipe],
                bytes: hex::encode(bytes),
                missed_bytes: std::mem::take(&mut self.missed[pipe]),
            });
        }
        None
    }
}

/// Hex of the binary diff from `commit` to everything in the worktree now (new files too), read
/// through the worktree's admin dir in `cache`, never the `.git` the command could rewrite.
async fn diff(cache: &Path, tree: &Path, work: &Path, commit: &str) -> Result<String, String> {
    let git = Git::new(cache, GIT_TIMEOUT)
        .worktree_of(tree)
        .await
        .map_err(|e| e.to_string())?;
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
    let _ = git.remove_worktree(&tree_dir(work)).await;
    let _ = tokio::fs::remove_dir_all(work).await;
    let _ = git.run(&["update-ref", "-d", &job.job_ref()]).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(stream: OutputStream, text: &str, missed_bytes: u64) -> TapChunk {
        TapChunk {
            stream,
            bytes: text.as_bytes().to_vec(),
            missed_bytes,
        }
    }

    #[test]
    fn with_secrets_a_tick_sends_whole_lines_only() {
        let mut pending = PendingOutput::default();
        pending.push(read(OutputStream::Stdout, "key hunt", 0));
        assert!(pending.take_lines().is_none(), "half a line waits");
        pending.push(read(OutputStream::Stdout, "er2\nnext", 0));
        let chunk = pending.take_lines().unwrap();
        assert_eq!(hex::decode(chunk.bytes).unwrap(), b"key hunter2\n");
        assert!(pending.take_lines().is_none());
        let rest = pending.take().unwrap();
        assert_eq!(hex::decode(rest.bytes).unwrap(), b"next");
    }

    #[test]
    fn pending_output_takes_turns_and_stays_bounded() {
        let mut pending = PendingOutput::default();
        assert!(pending.take().is_none());
        pending.push(read(OutputStream::Stdout, "one\n", 0));
        pending.push(read(OutputStream::Stderr, "err\n", 0));
        pending.push(read(OutputStream::Stdout, "two\n", 0));
        let first = pending.take().unwrap();
        assert_eq!(first.stream, OutputStream::Stdout);
        assert_eq!(hex::decode(first.bytes).unwrap(), b"one\ntwo\n");
        assert_eq!(pending.take().unwrap().stream, OutputStream::Stderr);
        assert!(pending.take().is_none());

        // A flood keeps the latest bytes, from a line's start, and counts the rest.
        let line = "flood line\n";
        for _ in 0..1000 {
            pending.push(read(OutputStream::Stdout, line, 0));
        }
        let chunk = pending.take().unwrap();
        let bytes = hex::decode(chunk.bytes).unwrap();
        assert!(bytes.len() <= OUTPUT_CHUNK_BYTES);
        assert!(bytes.starts_with(b"flood line\n"));
        assert_eq!(
            bytes.len() as u64 + chunk.missed_bytes,
            (line.len() * 1000) as u64
        );

        // A gap: what came before it is not joined to what comes after.
        pending.push(read(OutputStream::Stderr, "before", 0));
        pending.push(read(OutputStream::Stderr, "after", 7));
        let chunk = pending.take().unwrap();
        assert_eq!(hex::decode(chunk.bytes).unwrap(), b"after");
        assert_eq!(chunk.missed_bytes, 7 + 6);
    }
}
