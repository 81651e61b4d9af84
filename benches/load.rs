//! Load benchmark: what the service sustains under many concurrent HTTP clients, each figure a
//! ratio of a floor measured in the same run on the same disk, so runs on different machines (or
//! on one machine on a busy and a quiet day) compare by their ratios. Run with
//! `cargo bench --bench load`; the method is in `docs/benchmarks.md`.
//!
//! Measures:
//! 1. the fsync floor: 512-byte appends to a file, each followed by `fdatasync`, one at a time —
//!    what one durable write at a time costs on this disk;
//! 2. durable task submits per second (`POST /v1/tasks` answered `201`) at 1, 8, 32 and 128
//!    concurrent clients, as a ratio of the fsync floor;
//! 3. durable ledger transfers per second (`POST /v1/ledger/transfers`) at 32 clients, likewise;
//! 4. `/healthz` latency (p50, p99) from a separate prober while the submit levels run — the
//!    128-client level is the one that counts: the service must stay responsive under load;
//! 5. a no-op task's submit → done p50, one task at a time, as a ratio of `benches/floor.sh`:
//!    the same git work done by a bare shell script.
//!
//! The service is the built binary, `glitchlab serve`, one fresh child process per level (own
//! config file, data dir and repository), not the library in this process: a service that froze
//! can then be killed outright, and nothing of it (sled's process-wide I/O thread pool, a parked
//! runtime) is left to stall the next level — an in-process service started after a frozen one
//! did not even come up. It runs with `serve`'s own runtime (a worker per core) and the default
//! configuration except where a level says otherwise, while the load generator runs here on its
//! own [`CLIENT_WORKERS`]-thread runtime: client and service compete for the CPU as any two
//! processes on one machine do.
//!
//! A level never waits unboundedly: every request has a [`REQUEST_TIMEOUT`], every level a hard
//! deadline, and a service that after its level does not answer the level's own request within
//! [`FREEZE_PROBE_TIMEOUT`] is reported `froze` and killed (its engine processes too).
//!
//! Environment: `LOAD_BENCH_SECS` sets how long each load level runs (default
//! [`DEFAULT_LEVEL_SECS`]); `LOAD_BENCH_CONFIG` is appended to every level's config file
//! (TOML); `TMPDIR` picks the disk (the floor, floor.sh and the services' data
//! share one temporary directory); `LOAD_BENCH_STACKS_DIR`, if set, receives a gdb dump of every
//! thread of a service before it is killed for freezing or for not stopping.

// A test or a bench states what it expects with unwrap/expect/panic, and is nobody's API; the
// service code may not (Cargo.toml).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    unreachable_pub
)]

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::runtime::Runtime;
use tokio::task::JoinSet;

/// Seconds each load level runs when `LOAD_BENCH_SECS` is not set: long enough for a stable
/// rate, short enough that the five load levels and the floors finish in about two minutes.
const DEFAULT_LEVEL_SECS: f64 = 5.0;
/// The environment variable that overrides [`DEFAULT_LEVEL_SECS`] (seconds, fractions allowed).
const LEVEL_SECS_ENV: &str = "LOAD_BENCH_SECS";

/// How long the fsync floor is measured: thousands of fsyncs, a stable rate.
const FSYNC_FLOOR_DURATION: Duration = Duration::from_millis(1500);
/// One appended record of the fsync floor: the size of a small sled write.
const FSYNC_RECORD_BYTES: usize = 512;

/// Concurrent submitting clients per level. Today's service is expected to freeze from 16 on.
const SUBMIT_CLIENTS: [usize; 4] = [1, 8, 32, 128];
/// The submit level the `/healthz` target applies to.
const HEALTH_TARGET_CLIENTS: usize = 128;
/// Concurrent clients of the ledger level.
const TRANSFER_CLIENTS: usize = 32;
/// How often the prober asks `/healthz` (it waits for each answer before the next tick).
const PROBE_INTERVAL: Duration = Duration::from_millis(10);

/// Any request taking longer is counted as a timeout; it also bounds how long a level can
/// overrun its window, since a client starts no request after the window.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A level's hard deadline is its window + [`REQUEST_TIMEOUT`] + this; past it the clients are
/// aborted (only if a request ignored its own timeout).
const LEVEL_GRACE: Duration = Duration::from_secs(5);
/// After a level the service is idle; one more request of the level's kind (and one `/healthz`)
/// not answered within this means the service froze.
const FREEZE_PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// A client that got a transport error waits this long before its next request, so a refused
/// connection does not turn into a busy loop that starves the service of CPU.
const ERROR_BACKOFF: Duration = Duration::from_millis(10);

/// Worker threads of the load generator's runtime: as many as the service's on the 2-core
/// reference machine, so neither side gets more threads than there are cores.
const CLIENT_WORKERS: usize = 2;
/// What the load generator's runtime may take to shut down at the end (its tasks are done).
const RUNTIME_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// `glitchlab serve`'s one stdout line starts with this, followed by its base URL.
/// The admin secret every bench service starts with (`GLITCHLAB_ADMIN_TOKEN`); one token makes
/// all the load, so its rate limit is off (`requests_per_sec = 0`).
const BENCH_TOKEN: &str = "glt_bench-admin-secret-0123456789abcdef0123456789abcdef01";

/// An HTTP client builder that sends the bench's token.
fn client_builder() -> reqwest::ClientBuilder {
    let mut headers = reqwest::header::HeaderMap::new();
    let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {BENCH_TOKEN}"))
        .expect("header value");
    headers.insert(reqwest::header::AUTHORIZATION, value);
    reqwest::Client::builder().default_headers(headers)
}

const LISTENING_PREFIX: &str = "glitchlab listening on ";
/// A fresh service must be listening within this.
const SERVICE_START_TIMEOUT: Duration = Duration::from_secs(30);
/// A working service must have stopped after SIGTERM (intake, tree, sled flush) within this;
/// then it is killed.
const SERVICE_STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a stopping service is checked for having exited.
const STOP_POLL_INTERVAL: Duration = Duration::from_millis(20);
/// The environment variable naming a directory for stack dumps of frozen services.
const STACKS_DIR_ENV: &str = "LOAD_BENCH_STACKS_DIR";
/// A stack dump gives up after this many seconds (`timeout` kills gdb).
const GDB_TIMEOUT_SECS: u64 = 60;

/// Pipelines the submit levels allow: exactly one, held by the blocker task, so submitted tasks
/// stay `queued` and their pipelines (git and engine subprocesses) do not compete with intake
/// for the CPU. What is measured is intake alone: validation (with its `git rev-parse` checks),
/// the budget reservation in the Ledger, the flushed task record, Compass queueing it.
const SUBMIT_LEVEL_SLOTS: usize = 1;
/// The queue bound of the submit levels: never reached, so no submit is refused `429`.
const MAX_QUEUED_TASKS: usize = 100_000_000;
/// What `user:local` is minted: a default budget (10 tokens) reserved by every submit, or 1 µ
/// moved by every transfer, never runs it dry in any level length.
const LOCAL_FUNDING: u64 = 1_000_000_000_000_000;
/// The blocker must be in its implement stage (its engine running) within this.
const BLOCKER_START_TIMEOUT: Duration = Duration::from_secs(30);
/// The blocker's engine, `sleep`, outlasts any level; the service's stop (or, when it froze, the
/// bench's kill of its orphans) ends it, and `engines.timeout_secs` bounds it in any case.
const BLOCKER_SLEEP_SECS: u64 = 3600;

/// No-op tasks timed one at a time; also the runs of `benches/floor.sh`.
const NOOP_TASKS: usize = 30;
/// A no-op task not done within this means the pipeline is stuck: the phase stops there.
const NOOP_TASK_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a task's status is polled while waiting for it to finish.
const POLL_INTERVAL: Duration = Duration::from_millis(2);

/// The account the service funds at start, which pays for tasks and for the transfers here.
const FUNDED_ACCOUNT: &str = "user:local";
/// Where transfers go: an account the service creates at start.
const CREDIT_ACCOUNT: &str = "system:revenue";
/// The transfer code the ledger bench uses too.
const TRANSFER_CODE: u32 = 7;

/// The submit level the submit-throughput target applies to.
const SUBMIT_TARGET_CLIENTS: usize = 32;
/// Submit target (issue #29): at that level, one and a half times the fsync floor (one durable
/// write per submit would be the floor itself; batching several submits per flush is what can
/// pass it with a task record, a reservation and a queue entry per submit).
const SUBMIT_TARGET_RATIO: f64 = 1.5;
/// Ledger target: at least three times the fsync floor (group commit).
const TRANSFER_TARGET_RATIO: f64 = 3.0;
/// `/healthz` p99 target while 128 clients submit.
const HEALTH_P99_TARGET: Duration = Duration::from_millis(50);
/// No-op task p50 target: at most this multiple of the bare-git floor.
const NOOP_TARGET_RATIO: f64 = 1.3;

fn level_duration() -> Duration {
    let Ok(text) = std::env::var(LEVEL_SECS_ENV) else {
        return Duration::from_secs_f64(DEFAULT_LEVEL_SECS);
    };
    match text.trim().parse::<f64>() {
        Ok(secs) if secs > 0.0 && secs.is_finite() => Duration::from_secs_f64(secs),
        _ => panic!("{LEVEL_SECS_ENV} must be a positive number of seconds, got `{text}`"),
    }
}

// ---------------------------------------------------------------------------------------------
// Floors

/// Appends of [`FSYNC_RECORD_BYTES`] + `fdatasync` per second, one at a time, in `dir`: the most
/// durable writes per second anything can do on this disk without batching.
fn fsync_floor(dir: &Path) -> f64 {
    let path = dir.join("fsync-floor.log");
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .expect("open the fsync floor file");
    let record = [0u8; FSYNC_RECORD_BYTES];
    let started = Instant::now();
    let mut appends = 0u64;
    while started.elapsed() < FSYNC_FLOOR_DURATION {
        file.write_all(&record).expect("append");
        file.sync_data().expect("fdatasync");
        appends += 1;
    }
    let rate = appends as f64 / started.elapsed().as_secs_f64();
    drop(file);
    let _ = std::fs::remove_file(path);
    rate
}

/// What `benches/floor.sh` reported.
struct GitFloor {
    p50: Duration,
    p95: Duration,
}

/// Runs `benches/floor.sh` [`NOOP_TASKS`] times and reads its summary line.
fn git_floor(tmp: &Path) -> Result<GitFloor, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/floor.sh");
    let output = Command::new("bash")
        .arg(&script)
        .arg(NOOP_TASKS.to_string())
        .env("TMPDIR", tmp)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(format!("floor.sh failed ({}): {stderr}", output.status));
    }
    let summary = stdout.lines().last().unwrap_or_default();
    let field = |name: &str| -> Result<Duration, String> {
        summary
            .split_whitespace()
            .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
            .and_then(|ms| ms.parse::<f64>().ok())
            .map(|ms| Duration::from_secs_f64(ms / 1000.0))
            .ok_or_else(|| format!("floor.sh printed no {name}: `{summary}`"))
    };
    Ok(GitFloor {
        p50: field("p50_ms")?,
        p95: field("p95_ms")?,
    })
}

// ---------------------------------------------------------------------------------------------
// The service, as a child process

/// What a level's service is configured with besides the defaults.
#[derive(Default)]
struct Settings {
    /// `compass.max_concurrent_tasks`, when not the default.
    slots: Option<usize>,
    /// `compass.max_queued_tasks`, when not the default.
    max_queued: Option<usize>,
}

/// The built `glitchlab serve` running for one level, its data in `dir`.
struct Service {
    child: Child,
    base: String,
    /// The service's instance marker (its canonical data dir), carried by its engine processes.
    instance: String,
    label: String,
}

impl Service {
    /// Writes the level's config file and starts `glitchlab serve` on a free port; its log goes
    /// to `dir/service.log`.
    fn start(dir: &Path, label: &str, settings: &Settings) -> Service {
        let data_dir = dir.join("data");
        std::fs::create_dir_all(&data_dir).expect("data dir");
        let data_dir = std::fs::canonicalize(&data_dir).expect("canonical data dir");
        let quoted = |path: PathBuf| toml::Value::String(path.display().to_string()).to_string();
        // Configured paths must exist (the service refuses a configured one that does not):
        // an empty runbooks dir and an ops file with no apps.
        std::fs::create_dir_all(dir.join("no-runbooks")).expect("runbooks dir");
        std::fs::write(dir.join("no-ops.yaml"), "apps: {}\n").expect("ops file");
        let mut config = format!(
            "[server]\nbind = \"127.0.0.1:0\"\nrequests_per_sec = 0\n\
             [storage]\ndata_dir = {}\n\
             [paths]\nactors_dir = {}\nrunbooks_dir = {}\nops_file = {}\n\
             [ledger]\nlocal_funding = {LOCAL_FUNDING}\n\
             [compass]\n",
            quoted(data_dir.clone()),
            quoted(dir.join("no-actors")),
            quoted(dir.join("no-runbooks")),
            quoted(dir.join("no-ops.yaml")),
        );
        if let Some(slots) = settings.slots {
            config.push_str(&format!("max_concurrent_tasks = {slots}\n"));
        }
        if let Some(max_queued) = settings.max_queued {
            config.push_str(&format!("max_queued_tasks = {max_queued}\n"));
        }
        // Extra config for every level's service (e.g. a setting to compare with and without).
        if let Ok(extra) = std::env::var("LOAD_BENCH_CONFIG") {
            config.push_str(&extra);
            config.push('\n');
        }
        let config_path = dir.join("glitchlab.toml");
        std::fs::write(&config_path, config).expect("config file");
        let log = std::fs::File::create(dir.join("service.log")).expect("service log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_glitchlab"))
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .env("GLITCHLAB_ADMIN_TOKEN", BENCH_TOKEN)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start glitchlab serve");
        // Its one stdout line names the address; the thread then drains stdout until it closes.
        let stdout = child.stdout.take().expect("piped stdout");
        let (line_tx, line_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = line_tx.send(line);
            }
            lines.for_each(drop);
        });
        let mut service = Service {
            child,
            base: String::new(),
            instance: data_dir.display().to_string(),
            label: label.to_owned(),
        };
        match line_rx.recv_timeout(SERVICE_START_TIMEOUT) {
            Ok(line) => match line.strip_prefix(LISTENING_PREFIX) {
                Some(base) => service.base = base.trim().to_owned(),
                None => panic!("glitchlab serve printed `{line}`, not its address"),
            },
            Err(_) => panic!(
                "glitchlab serve did not start within {SERVICE_START_TIMEOUT:?}; see {}",
                dir.join("service.log").display()
            ),
        }
        service
    }

    /// Stops the service: SIGTERM and a bounded wait when it still works; straight SIGKILL when
    /// it froze (after a stack dump, if asked for). Returns what happened, for the progress log.
    fn stop(mut self, froze: bool) -> String {
        if froze {
            let stacks = self.dump_stacks();
            self.kill();
            return format!("froze: killed{stacks}");
        }
        // SAFETY: kill(2) with SIGTERM on the pid of a child this bench started and has not
        // reaped yet, so the pid cannot have been reused.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + SERVICE_STOP_TIMEOUT;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => return "stopped".into(),
                Ok(Some(status)) => return format!("stopped: {status}"),
                Ok(None) => std::thread::sleep(STOP_POLL_INTERVAL),
                Err(error) => return format!("cannot wait for it: {error}"),
            }
        }
        let stacks = self.dump_stacks();
        self.kill();
        format!("did not stop within {SERVICE_STOP_TIMEOUT:?}: killed{stacks}")
    }

    /// SIGKILL, reap, and kill what its engines left running (as its own next start would).
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        glitchlab::platform::process::kill_orphans(&self.instance);
    }

    /// With `LOAD_BENCH_STACKS_DIR` set, every thread's stack (gdb) into `<dir>/<level>.txt`.
    fn dump_stacks(&self) -> String {
        let Some(dir) = std::env::var_os(STACKS_DIR_ENV) else {
            return String::new();
        };
        let path = Path::new(&dir).join(format!("{}.txt", self.label));
        let output = Command::new("timeout")
            .arg(GDB_TIMEOUT_SECS.to_string())
            .args(["gdb", "-batch", "-p", &self.child.id().to_string()])
            .args(["-ex", "thread apply all bt"])
            .stdin(Stdio::null())
            .output();
        match output.map(|output| std::fs::write(&path, output.stdout)) {
            Ok(Ok(())) => format!(" (stacks in {})", path.display()),
            Ok(Err(error)) | Err(error) => format!(" (no stacks: {error})"),
        }
    }
}

impl Drop for Service {
    /// A bench that panics mid-level leaves no service behind.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}

fn git(dir: &Path, args: &[&str]) {
    let status = Command::new("git")
        .args(["-c", "user.name=bench", "-c", "user.email=bench@localhost"])
        .args(args)
        .current_dir(dir)
        .status()
        .expect("git");
    assert!(status.success(), "git {args:?}");
}

/// A repository with one commit on `main`, as the other benches make.
fn repo(path: &Path) -> PathBuf {
    std::fs::create_dir_all(path).expect("repo dir");
    git(path, &["init", "-q", "-b", "main"]);
    std::fs::write(path.join("README.md"), "bench\n").expect("README");
    git(path, &["add", "-A"]);
    git(path, &["commit", "-q", "-m", "initial"]);
    path.to_path_buf()
}

/// Whether the service answers `request` (any status) within [`FREEZE_PROBE_TIMEOUT`].
async fn answers(request: reqwest::RequestBuilder) -> bool {
    let answered = async {
        let response = request.timeout(FREEZE_PROBE_TIMEOUT).send().await?;
        response.bytes().await
    };
    answered.await.is_ok()
}

/// After a level: does the idle service still answer `/healthz`, and the level's own request?
async fn liveness(base: &str, load: &Load, who: usize) -> Liveness {
    let client = client_builder().build().expect("HTTP client");
    let health = answers(client.get(format!("{base}/healthz"))).await;
    let work = answers(load.request(&client, base, who, 0)).await;
    match (health, work) {
        (_, true) => Liveness::Answers,
        (true, false) => Liveness::OnlyHealthz,
        (false, false) => Liveness::Nothing,
    }
}

/// What an idle service still answers after a level.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Liveness {
    /// The level's own kind of request: it works.
    Answers,
    /// `/healthz` only: requests of the level's kind hang (froze, the runtime still runs).
    OnlyHealthz,
    /// Nothing (froze, the runtime too).
    Nothing,
}

// ---------------------------------------------------------------------------------------------
// The load generator

/// What a level's clients send.
#[derive(Clone)]
enum Load {
    /// `POST /v1/tasks`: a one-line shell patch, verify `true`, builtin planner.
    Submit { repo: String },
    /// `POST /v1/ledger/transfers`: 1 µ from the funded account, a fresh id each.
    Transfer,
}

impl Load {
    fn request(
        &self,
        client: &reqwest::Client,
        base: &str,
        who: usize,
        n: usize,
    ) -> reqwest::RequestBuilder {
        match self {
            Load::Submit { repo } => client.post(format!("{base}/v1/tasks")).json(&json!({
                "title": format!("load {who}-{n}"),
                "description": "Write one file.",
                "repo": repo,
                "verify": "true",
                "engines": {"patch": {"kind": "shell", "command": format!("echo {n} > load-{who}-{n}.txt")}},
            })),
            Load::Transfer => client
                .post(format!("{base}/v1/ledger/transfers"))
                .json(&json!({
                    "id": format!("load-{who}-{n}"),
                    "debit_account": FUNDED_ACCOUNT,
                    "credit_account": CREDIT_ACCOUNT,
                    "amount": 1,
                    "code": TRANSFER_CODE,
                })),
        }
    }
}

/// Every answer of a level, shared by its clients (merged per request, so a level cut off at its
/// deadline still reports what it saw).
#[derive(Default)]
struct Tally {
    /// `201` answers that arrived within the window: the rate counts these.
    ok: u64,
    /// `201` answers to requests that were in flight when the window closed.
    late: u64,
    /// Other statuses, by code.
    refused: BTreeMap<u16, u64>,
    /// Requests that got no answer within [`REQUEST_TIMEOUT`].
    timeouts: u64,
    /// Transport errors other than timeouts (refused or reset connections).
    errors: u64,
    /// Latency of every `201`.
    latencies: Vec<Duration>,
}

type SharedTally = Arc<Mutex<Tally>>;

fn with_tally<T>(tally: &SharedTally, f: impl FnOnce(&mut Tally) -> T) -> T {
    f(&mut tally.lock().unwrap_or_else(PoisonError::into_inner))
}

/// One client: requests back to back until the window closes.
async fn client_loop(
    client: reqwest::Client,
    base: Arc<str>,
    load: Load,
    who: usize,
    deadline: Instant,
    tally: SharedTally,
) {
    let mut n = 0;
    while Instant::now() < deadline {
        let started = Instant::now();
        let outcome = async {
            let response = load.request(&client, &base, who, n).send().await?;
            let status = response.status();
            // The answer is only complete with its body (and the connection only reusable).
            response.bytes().await?;
            Ok::<StatusCode, reqwest::Error>(status)
        }
        .await;
        let ended = Instant::now();
        n += 1;
        let backoff = with_tally(&tally, |tally| match outcome {
            Ok(StatusCode::CREATED) => {
                if ended <= deadline {
                    tally.ok += 1;
                } else {
                    tally.late += 1;
                }
                tally.latencies.push(ended - started);
                false
            }
            Ok(status) => {
                *tally.refused.entry(status.as_u16()).or_default() += 1;
                false
            }
            Err(error) if error.is_timeout() => {
                tally.timeouts += 1;
                false
            }
            Err(_) => {
                tally.errors += 1;
                true
            }
        });
        if backoff {
            tokio::time::sleep(ERROR_BACKOFF).await;
        }
    }
}

/// `/healthz` answers seen by the prober; a probe that timed out counts as [`REQUEST_TIMEOUT`].
#[derive(Default)]
struct Probes {
    latencies: Vec<Duration>,
    failed: u64,
}

/// Asks `/healthz` every [`PROBE_INTERVAL`] until the window closes, on its own connection.
async fn probe_health(base: Arc<str>, deadline: Instant) -> Probes {
    let mut probes = Probes::default();
    let Ok(client) = client_builder().timeout(REQUEST_TIMEOUT).build() else {
        return probes;
    };
    let mut ticks = tokio::time::interval(PROBE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while Instant::now() < deadline {
        ticks.tick().await;
        let started = Instant::now();
        let answered = async {
            let response = client.get(format!("{base}/healthz")).send().await?;
            let ok = response.status().is_success();
            response.bytes().await?;
            Ok::<bool, reqwest::Error>(ok)
        }
        .await;
        match answered {
            Ok(true) => probes.latencies.push(started.elapsed()),
            _ => {
                probes.failed += 1;
                probes
                    .latencies
                    .push(started.elapsed().max(REQUEST_TIMEOUT));
            }
        }
    }
    probes
}

/// How one load level went.
struct Level {
    name: String,
    window: Duration,
    tally: Tally,
    probes: Option<Probes>,
    /// What the service answered after the level.
    liveness: Liveness,
    /// The level ran past its hard deadline and its clients were aborted.
    overran: bool,
}

impl Level {
    fn froze(&self) -> bool {
        self.liveness != Liveness::Answers
    }

    fn rate(&self) -> f64 {
        self.tally.ok as f64 / self.window.as_secs_f64()
    }
}

/// Runs `clients` clients of `load` against `base` for `window` (with a `/healthz` prober when
/// `probe`), then checks whether the service still answers.
async fn run_level(
    name: String,
    base: &str,
    load: Load,
    clients: usize,
    window: Duration,
    probe: bool,
) -> Level {
    let client = client_builder()
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(clients)
        .build()
        .expect("http client");
    let base: Arc<str> = base.into();
    let tally = SharedTally::default();
    let deadline = Instant::now() + window;
    let mut workers = JoinSet::new();
    for who in 0..clients {
        workers.spawn(client_loop(
            client.clone(),
            base.clone(),
            load.clone(),
            who,
            deadline,
            tally.clone(),
        ));
    }
    let prober = probe.then(|| tokio::spawn(probe_health(base.clone(), deadline)));
    let hard_deadline = tokio::time::Instant::from_std(deadline + REQUEST_TIMEOUT + LEVEL_GRACE);
    let mut overran = tokio::time::timeout_at(hard_deadline, async {
        while workers.join_next().await.is_some() {}
    })
    .await
    .is_err();
    workers.abort_all();
    let probes = match prober {
        Some(prober) => match tokio::time::timeout_at(hard_deadline, prober).await {
            Ok(Ok(probes)) => Some(probes),
            _ => {
                overran = true;
                None
            }
        },
        None => None,
    };
    // A client number no client used, so the probe's transfer id is fresh.
    let liveness = liveness(&base, &load, clients).await;
    let tally = std::mem::take(&mut *tally.lock().unwrap_or_else(PoisonError::into_inner));
    Level {
        name,
        window,
        tally,
        probes,
        liveness,
        overran,
    }
}

/// Polls a task until it is done; `Err` if it failed, or `Ok(false)` if it was not done in time.
async fn wait_done(client: &reqwest::Client, base: &str, id: &str) -> Result<bool, String> {
    let started = Instant::now();
    while started.elapsed() < NOOP_TASK_TIMEOUT {
        let task: Value = match client.get(format!("{base}/v1/tasks/{id}")).send().await {
            Ok(response) => response.json().await.map_err(|e| e.to_string())?,
            Err(error) if error.is_timeout() => return Ok(false),
            Err(error) => return Err(error.to_string()),
        };
        match task["status"].as_str() {
            Some("done") => return Ok(true),
            Some("failed" | "cancelled" | "dead_letter") => return Err(format!("{task}")),
            _ => tokio::time::sleep(POLL_INTERVAL).await,
        }
    }
    Ok(false)
}

/// Submits `body` and returns the task id.
async fn submit(client: &reqwest::Client, base: &str, body: &Value) -> Result<String, String> {
    let response = client
        .post(format!("{base}/v1/tasks"))
        .json(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let task: Value = response.json().await.map_err(|e| e.to_string())?;
    if status != StatusCode::CREATED {
        return Err(format!("submit answered {status}: {task}"));
    }
    task["id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("no id in {task}"))
}

/// Submits the task that holds the only pipeline slot of a submit level, and waits until its
/// engine (a long `sleep`) runs, so no submitted task can start.
async fn start_blocker(base: &str, repo: &Path) -> Result<(), String> {
    let client = client_builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|e| e.to_string())?;
    let body = json!({
        "title": "blocker: holds the only pipeline slot",
        "description": "Wait while the load runs.",
        "repo": repo.display().to_string(),
        "verify": "true",
        "engines": {"patch": {"kind": "shell", "command": format!("sleep {BLOCKER_SLEEP_SECS}")}},
    });
    let id = submit(&client, base, &body).await?;
    let started = Instant::now();
    while started.elapsed() < BLOCKER_START_TIMEOUT {
        let task: Value = client
            .get(format!("{base}/v1/tasks/{id}"))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        match (task["status"].as_str(), task["stage"].as_str()) {
            (Some("running"), Some("implement")) => return Ok(()),
            (Some("queued" | "running"), _) => tokio::time::sleep(POLL_INTERVAL).await,
            _ => return Err(format!("the blocker ended: {task}")),
        }
    }
    Err(format!(
        "the blocker did not reach implement within {BLOCKER_START_TIMEOUT:?}"
    ))
}

/// One submit level on a fresh service whose only slot is held, so tasks stay queued.
fn submit_level(
    clients_runtime: &Runtime,
    root: &Path,
    clients: usize,
    window: Duration,
) -> Result<Level, String> {
    let label = format!("submit-{clients:03}");
    let dir = root.join(&label);
    let repo = repo(&dir.join("repo"));
    let settings = Settings {
        slots: Some(SUBMIT_LEVEL_SLOTS),
        max_queued: Some(MAX_QUEUED_TASKS),
    };
    let service = Service::start(&dir, &label, &settings);
    let level = clients_runtime.block_on(async {
        start_blocker(&service.base, &repo).await?;
        let load = Load::Submit {
            repo: repo.display().to_string(),
        };
        let name = format!("submit, {}", clients_text(clients));
        Ok(run_level(name, &service.base, load, clients, window, true).await)
    });
    let froze = matches!(&level, Ok(level) if level.froze());
    eprintln!("load: {label}: service {}", service.stop(froze));
    level
}

/// The ledger level on a fresh service.
fn transfer_level(clients_runtime: &Runtime, root: &Path, window: Duration) -> Level {
    let label = "transfers";
    let service = Service::start(&root.join(label), label, &Settings::default());
    let name = format!("ledger transfers, {TRANSFER_CLIENTS} clients");
    let level = clients_runtime.block_on(run_level(
        name,
        &service.base,
        Load::Transfer,
        TRANSFER_CLIENTS,
        window,
        false,
    ));
    eprintln!("load: {label}: service {}", service.stop(level.froze()));
    level
}

/// What the no-op phase saw.
struct Noop {
    latencies: Vec<Duration>,
    /// Why it stopped early, if it did.
    problem: Option<String>,
}

/// Submit → done of [`NOOP_TASKS`] builtin tasks, one at a time, on a fresh service.
///
/// The task uses the builtin patch engine (it writes one note file in-process) and verify
/// `true`: the least a task can ask for, so the figure is glitchlab's own cost over the git work
/// `benches/floor.sh` does — worktree, commit, fast-forward, worktree removal.
fn noop_latency(clients_runtime: &Runtime, root: &Path) -> Noop {
    let label = "noop";
    let dir = root.join(label);
    let repo = repo(&dir.join("repo"));
    let service = Service::start(&dir, label, &Settings::default());
    let base = service.base.clone();
    let (noop, froze) = clients_runtime.block_on(async {
        let client = client_builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .expect("http client");
        let mut latencies = Vec::with_capacity(NOOP_TASKS);
        let mut problem = None;
        for n in 0..NOOP_TASKS {
            let body = json!({
                "title": format!("no-op {n}"),
                "description": "Nothing to do.",
                "repo": repo.display().to_string(),
                "verify": "true",
            });
            let started = Instant::now();
            let outcome = match submit(&client, &base, &body).await {
                Ok(id) => wait_done(&client, &base, &id).await,
                Err(error) => Err(error),
            };
            match outcome {
                Ok(true) => latencies.push(started.elapsed()),
                Ok(false) => {
                    problem = Some(format!("task {n} not done within {NOOP_TASK_TIMEOUT:?}"));
                    break;
                }
                Err(error) => {
                    problem = Some(format!("task {n}: {error}"));
                    break;
                }
            }
        }
        let froze = problem.is_some() && !answers(client.get(format!("{base}/healthz"))).await;
        (Noop { latencies, problem }, froze)
    });
    eprintln!("load: {label}: service {}", service.stop(froze));
    noop
}

// ---------------------------------------------------------------------------------------------
// Report

/// "1 client", "8 clients".
fn clients_text(clients: usize) -> String {
    match clients {
        1 => "1 client".into(),
        n => format!("{n} clients"),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    Some(sorted[index])
}

fn ms(duration: Option<Duration>) -> String {
    match duration {
        None => "—".into(),
        Some(d) if d >= REQUEST_TIMEOUT => format!("≥ {:.0} ms", d.as_secs_f64() * 1000.0),
        Some(d) => format!("{:.1} ms", d.as_secs_f64() * 1000.0),
    }
}

fn level_state(level: &Level) -> &'static str {
    match (level.liveness, level.overran) {
        (Liveness::Nothing, _) => "froze",
        (Liveness::OnlyHealthz, _) => "froze (`/healthz` still answers)",
        (Liveness::Answers, true) => "overran",
        (Liveness::Answers, false) => "ok",
    }
}

/// The rate column: `froze` rather than a rate that only measured the time until the freeze.
fn rate_cell(level: &Level, floor: f64) -> (String, String) {
    if level.froze() || level.overran {
        return (
            format!("{} (after {} ok)", level_state(level), level.tally.ok),
            "—".into(),
        );
    }
    let rate = level.rate();
    (format!("{rate:.0} /s"), format!("{:.2}×", rate / floor))
}

fn health_cells(level: &Level) -> (Option<Duration>, Option<Duration>, Option<Duration>, u64) {
    let Some(probes) = &level.probes else {
        return (None, None, None, 0);
    };
    let mut sorted = probes.latencies.clone();
    sorted.sort();
    (
        percentile(&sorted, 0.5),
        percentile(&sorted, 0.99),
        sorted.last().copied(),
        probes.failed,
    )
}

fn refused_cell(tally: &Tally) -> String {
    if tally.refused.is_empty() {
        return "0".into();
    }
    tally
        .refused
        .iter()
        .map(|(status, count)| format!("{count}×{status}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn report(
    window: Duration,
    floor_before: f64,
    floor_after: f64,
    git_floor: &Result<GitFloor, String>,
    noop: &Noop,
    submits: &[Result<Level, String>],
    transfers: &Level,
) {
    let floor = floor_before;
    println!();
    println!(
        "## Load: figures as ratios of floors measured in this run ({:.1} s per level)",
        window.as_secs_f64()
    );
    println!();
    println!("| measure | this run | floor | ratio | target |");
    println!("|---|---|---|---|---|");
    println!(
        "| fsync floor: {FSYNC_RECORD_BYTES} B append + fdatasync, one at a time | {floor:.0} /s (after the levels: {floor_after:.0} /s) | — | 1.00× | — |"
    );
    for (clients, level) in SUBMIT_CLIENTS.iter().zip(submits) {
        let target = if *clients == SUBMIT_TARGET_CLIENTS {
            format!("≥ {SUBMIT_TARGET_RATIO}×")
        } else {
            "—".into()
        };
        let (value, ratio) = match level {
            Ok(level) => rate_cell(level, floor),
            Err(error) => (format!("not measured: {error}"), "—".into()),
        };
        println!(
            "| durable submits (`POST /v1/tasks`), {} | {value} | {floor:.0} /s fsync | {ratio} | {target} |",
            clients_text(*clients)
        );
    }
    let (value, ratio) = rate_cell(transfers, floor);
    println!(
        "| durable ledger transfers, {TRANSFER_CLIENTS} clients | {value} | {floor:.0} /s fsync | {ratio} | ≥ {TRANSFER_TARGET_RATIO}× |"
    );
    let health_level = SUBMIT_CLIENTS
        .iter()
        .zip(submits)
        .find(|(clients, _)| **clients == HEALTH_TARGET_CLIENTS)
        .and_then(|(_, level)| level.as_ref().ok());
    let health = match health_level {
        Some(level) => {
            let (p50, p99, _, failed) = health_cells(level);
            let mut cell = format!("p50 {} / p99 {}", ms(p50), ms(p99));
            if failed > 0 {
                cell.push_str(&format!(" (unanswered probes: {failed})"));
            }
            if level.froze() {
                cell.push_str(" — froze");
            }
            cell
        }
        None => "not measured".into(),
    };
    println!(
        "| `/healthz` while {HEALTH_TARGET_CLIENTS} clients submit | {health} | — | — | p99 < {} ms |",
        HEALTH_P99_TARGET.as_millis()
    );
    let mut noop_sorted = noop.latencies.clone();
    noop_sorted.sort();
    let p50 = percentile(&noop_sorted, 0.5);
    let mut value = format!("p50 {} ({} tasks)", ms(p50), noop_sorted.len());
    if let Some(problem) = &noop.problem {
        value.push_str(&format!("; stopped: {problem}"));
    }
    let (floor_cell, ratio) = match (git_floor, p50) {
        (Ok(git_floor), Some(p50)) => (
            format!("floor.sh p50 {}", ms(Some(git_floor.p50))),
            format!("{:.2}×", p50.as_secs_f64() / git_floor.p50.as_secs_f64()),
        ),
        (Ok(git_floor), None) => (
            format!("floor.sh p50 {}", ms(Some(git_floor.p50))),
            "—".into(),
        ),
        (Err(error), _) => (format!("floor.sh failed: {error}"), "—".into()),
    };
    println!(
        "| no-op task, submit → done, one at a time | {value} | {floor_cell} | {ratio} | ≤ {NOOP_TARGET_RATIO}× |"
    );

    println!();
    println!("Per level (requests answered `201` within the window count; `late` ones were in flight when it closed):");
    println!();
    println!("| level | ok | late | refused | timeouts | errors | request p50 | request p99 | `/healthz` p50 | p99 | max | unanswered probes | state |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let levels = submits
        .iter()
        .filter_map(|level| level.as_ref().ok())
        .chain([transfers]);
    for level in levels {
        let mut sorted = level.tally.latencies.clone();
        sorted.sort();
        let (h50, h99, hmax, failed) = health_cells(level);
        let probes = if level.probes.is_some() {
            failed.to_string()
        } else {
            "—".into()
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            level.name,
            level.tally.ok,
            level.tally.late,
            refused_cell(&level.tally),
            level.tally.timeouts,
            level.tally.errors,
            ms(percentile(&sorted, 0.5)),
            ms(percentile(&sorted, 0.99)),
            ms(h50),
            ms(h99),
            ms(hmax),
            probes,
            level_state(level),
        );
    }
    if let Ok(git_floor) = git_floor {
        println!();
        println!(
            "no-op task p95 {}; floor.sh p95 {}",
            ms(percentile(&noop_sorted, 0.95)),
            ms(Some(git_floor.p95))
        );
    }
}

fn main() {
    let window = level_duration();
    let root = tempfile::tempdir().expect("temp dir");
    let clients_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(CLIENT_WORKERS)
        .thread_name("load-client")
        .enable_all()
        .build()
        .expect("load generator runtime");

    eprintln!("load: fsync floor…");
    let floor_before = fsync_floor(root.path());
    eprintln!("load: fsync floor {floor_before:.0} appends/s");

    // The two latency phases first and back to back, while the machine is as it was at start.
    eprintln!("load: benches/floor.sh, {NOOP_TASKS} runs…");
    let git_floor = git_floor(root.path());
    eprintln!("load: no-op tasks, {NOOP_TASKS} one at a time…");
    let noop = noop_latency(&clients_runtime, root.path());

    let mut submits = Vec::with_capacity(SUBMIT_CLIENTS.len());
    for clients in SUBMIT_CLIENTS {
        eprintln!("load: submit level, {}, {window:?}…", clients_text(clients));
        let level = submit_level(&clients_runtime, root.path(), clients, window);
        match &level {
            Ok(level) => eprintln!(
                "load: {}: {} ok, {} timeouts, {} errors, {}",
                clients_text(clients),
                level.tally.ok,
                level.tally.timeouts,
                level.tally.errors,
                level_state(level)
            ),
            Err(error) => eprintln!("load: {}: not measured: {error}", clients_text(clients)),
        }
        submits.push(level);
    }

    eprintln!("load: ledger level, {TRANSFER_CLIENTS} clients, {window:?}…");
    let transfers = transfer_level(&clients_runtime, root.path(), window);
    let floor_after = fsync_floor(root.path());

    report(
        window,
        floor_before,
        floor_after,
        &git_floor,
        &noop,
        &submits,
        &transfers,
    );
    // Abandoned services' threads are parked for good: do not wait for them.
    clients_runtime.shutdown_timeout(RUNTIME_SHUTDOWN_TIMEOUT);
    drop(root);
}
