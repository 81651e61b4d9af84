//! Recovery benchmark (issue 22): how long the service takes to take work again
//! 1. after a `kill -9` with [`RELOAD_TASKS`] tasks queued (Compass reloads the queue at start and
//!    intake answers `503 NOT_READY` until it has): time to `/readyz` 200, time until a submit is
//!    answered with anything but `503`, Compass's own `reload_ms` (log) and
//!    `glitchlab_queue_reload_seconds` (`/metrics`), and the service's RSS;
//! 2. after a full disk (root only: the data dir is a small tmpfs): the time from deleting a filler
//!    file until a submit is accepted again, [`DISK_ROUNDS`] times, min / median / max.
//!
//! Run with `cargo bench --bench recovery`; the method and figures are in `docs/benchmarks.md`.
//! The service is the built release binary, `glitchlab serve`, as a child process (as in
//! `benches/load.rs`, whose child-process pattern this follows); all traffic is on loopback, every
//! request has a timeout and every phase a deadline. `RECOVERY_BENCH_TASKS` overrides the number
//! of queued tasks (for a quick run).

// A bench states what it expects with unwrap/expect/panic, and is nobody's API (Cargo.toml).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    unreachable_pub
)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Tasks queued before the `kill -9` (issue 22's figure).
const RELOAD_TASKS: usize = 100_000;
/// Overrides [`RELOAD_TASKS`].
const TASKS_ENV: &str = "RECOVERY_BENCH_TASKS";
/// Concurrent submitting clients while filling the queue (the load bench's fastest level).
const FILL_CLIENTS: usize = 64;
/// The fill gives up after this (100k submits take ~20–50 s at the load bench's rates), or after
/// a millisecond per task when that is longer (1,000,000 tasks: ~17 min).
const FILL_DEADLINE: Duration = Duration::from_secs(300);
/// Refusals (anything but `201`) the fill tolerates before it gives up.
const FILL_ERRORS_MAX: usize = 1000;
/// The queue bound: above the fill, so no submit is refused `429`.
const MAX_QUEUED_TASKS: usize = 1_000_000;
/// Every request's timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How often `/readyz` and the probing submit are retried after the restart.
const PROBE_INTERVAL: Duration = Duration::from_millis(5);
/// The restarted service must be ready and take a submit within this.
const READY_DEADLINE: Duration = Duration::from_secs(120);
/// A fresh service must print its address within this (a reload happens after it listens).
const SERVICE_START_TIMEOUT: Duration = Duration::from_secs(60);
/// The blocker must be running within this.
const BLOCKER_START_TIMEOUT: Duration = Duration::from_secs(30);

/// Full-disk rounds: fill, 507, free, time to the next `201`.
const DISK_ROUNDS: usize = 10;
/// The tmpfs under the data dir: small enough to fill in seconds, room for the rounds' growth.
const TMPFS_SIZE: &str = "size=32m";
/// The storage reserve (as in `tests/it/storage_full.rs`).
const DISK_CONFIG: &str = "reserve_bytes = 1048576\n";
/// Room left beside the filler: the store fills it with submits.
const HEADROOM_BYTES: u64 = 256 * 1024;
/// Most submits a round sends before the disk must have answered 507.
const FILL_SUBMITS_MAX: usize = 5000;
/// Space back → a submit accepted must happen within this, or the round fails.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(30);
/// How often the recovering submit is retried.
const RECOVERY_PROBE_INTERVAL: Duration = Duration::from_millis(10);

/// The admin secret every bench service starts with; its rate limit is off.
const BENCH_TOKEN: &str = "glt_bench-admin-secret-0123456789abcdef0123456789abcdef01";
/// `glitchlab serve`'s one stdout line starts with this, followed by its base URL.
const LISTENING_PREFIX: &str = "glitchlab listening on ";
/// Funds every submit's reservation for any number of tasks.
const LOCAL_FUNDING: u64 = 1_000_000_000_000_000;

fn client() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {BENCH_TOKEN}")).unwrap();
    headers.insert(reqwest::header::AUTHORIZATION, value);
    reqwest::Client::builder()
        .default_headers(headers)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .unwrap()
}

/// The built `glitchlab serve`, its data in `dir/data`, its log in `dir/service.log`.
struct Service {
    child: Child,
    base: String,
    instance: String,
    log: PathBuf,
}

impl Service {
    /// Writes the config (one pipeline slot, a large queue bound, `extra` lines of `[storage]`)
    /// and starts the binary.
    fn start(dir: &Path, extra: &str) -> Service {
        let data_dir = dir.join("data");
        std::fs::create_dir_all(&data_dir).unwrap();
        let data_dir = std::fs::canonicalize(&data_dir).unwrap();
        let quoted = |path: PathBuf| toml::Value::String(path.display().to_string()).to_string();
        let config = format!(
            "[server]\nbind = \"127.0.0.1:0\"\nrequests_per_sec = 0\n\
             [ledger]\nlocal_funding = {LOCAL_FUNDING}\n\
             [compass]\nmax_concurrent_tasks = 1\nmax_queued_tasks = {MAX_QUEUED_TASKS}\n\
             [storage]\ndata_dir = {}\n{extra}",
            quoted(data_dir.clone()),
        );
        let config_path = dir.join("glitchlab.toml");
        std::fs::write(&config_path, config).unwrap();
        let log = dir.join("service.log");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_glitchlab"))
            .args(["serve", "--config"])
            .arg(&config_path)
            .env("GLITCHLAB_ADMIN_TOKEN", BENCH_TOKEN)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (line_tx, line_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = line_tx.send(line);
            }
            lines.for_each(drop);
        });
        let line = line_rx
            .recv_timeout(SERVICE_START_TIMEOUT)
            .unwrap_or_else(|_| {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: String = text.lines().rev().take(20).collect::<Vec<_>>().join("\n");
                panic!(
                    "no address within {SERVICE_START_TIMEOUT:?}; log, last lines first:\n{tail}"
                )
            });
        let base = line
            .strip_prefix(LISTENING_PREFIX)
            .unwrap_or_else(|| panic!("printed `{line}`, not its address"))
            .trim()
            .to_owned();
        Service {
            child,
            base,
            instance: data_dir.display().to_string(),
            log,
        }
    }

    /// `kill -9`, and reap it; its engine orphans stay (the next start kills them).
    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Resident and peak resident memory, from `/proc/<pid>/status`.
    fn rss(&self) -> String {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
                .unwrap_or_else(|| "?".into())
        };
        format!("RSS {} (peak {})", field("VmRSS:"), field("VmHWM:"))
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill9();
        glitchlab::platform::process::kill_orphans(&self.instance);
    }
}

fn git(dir: &Path, args: &[&str]) {
    let status = Command::new("git")
        .args(["-c", "user.name=bench", "-c", "user.email=bench@localhost"])
        .args(args)
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(status.success(), "git {args:?}");
}

/// A repository with one commit on `main`.
fn repo(path: &Path) -> String {
    std::fs::create_dir_all(path).unwrap();
    git(path, &["init", "-q", "-b", "main"]);
    std::fs::write(path.join("README.md"), "bench\n").unwrap();
    git(path, &["add", "-A"]);
    git(path, &["commit", "-q", "-m", "initial"]);
    path.display().to_string()
}

/// A task that stays queued behind the blocker; `padding` bytes of description.
fn task(repo: &str, n: usize, padding: usize) -> Value {
    json!({
        "title": format!("queued {n}"),
        "description": format!("Write one file. {}", "x".repeat(padding)),
        "repo": repo,
        "verify": "true",
        "engines": {"patch": {"kind": "shell", "command": format!("echo {n} > f-{n}.txt")}},
    })
}

/// One submit: its status and body (status 0 for a transport error).
async fn submit(client: &reqwest::Client, base: &str, body: &Value) -> (u16, Value) {
    match client
        .post(format!("{base}/v1/tasks"))
        .json(body)
        .send()
        .await
    {
        Ok(response) => {
            let status = response.status().as_u16();
            (status, response.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

/// Submits a `sleep` task and waits until it runs: it holds the only slot, so the rest queue.
async fn start_blocker(base: &str, repo: &str) {
    let client = client();
    let mut body = task(repo, 0, 0);
    body["engines"]["patch"]["command"] = json!("sleep 3600");
    let (status, task) = submit(&client, base, &body).await;
    assert_eq!(status, 201, "blocker: {task}");
    let id = task["id"].as_str().unwrap().to_owned();
    let started = Instant::now();
    while started.elapsed() < BLOCKER_START_TIMEOUT {
        let task: Value = client
            .get(format!("{base}/v1/tasks/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if task["status"] == "running" && task["stage"] == "implement" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the blocker did not run within {BLOCKER_START_TIMEOUT:?}");
}

/// Submits `total` tasks from [`FILL_CLIENTS`] clients; answers how many were accepted.
async fn fill_queue(base: &str, repo: &str, total: usize) -> usize {
    let next = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let per_task = Duration::from_millis(u64::try_from(total).unwrap_or(u64::MAX));
    let deadline = Instant::now() + FILL_DEADLINE.max(per_task);
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..FILL_CLIENTS {
        let (next, accepted, errors) = (next.clone(), accepted.clone(), errors.clone());
        let (base, repo, client) = (base.to_owned(), repo.to_owned(), client());
        clients.spawn(async move {
            while Instant::now() < deadline && errors.load(Ordering::Relaxed) < FILL_ERRORS_MAX {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    return;
                }
                match submit(&client, &base, &task(&repo, n, 0)).await {
                    (201, _) => accepted.fetch_add(1, Ordering::Relaxed),
                    _ => errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        });
    }
    while clients.join_next().await.is_some() {}
    let errors = errors.load(Ordering::Relaxed);
    if errors > 0 {
        eprintln!("recovery: {errors} submits were not answered 201 during the fill");
    }
    accepted.load(Ordering::Relaxed)
}

/// Polls `probe` every [`PROBE_INTERVAL`] until it says yes; answers when (since `since`).
async fn until<F, Fut>(since: Instant, mut probe: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    while since.elapsed() < READY_DEADLINE {
        if probe().await {
            return Some(since.elapsed());
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
    None
}

/// The first number after `key` in `text` (works for `key=12` and `"key":12`).
fn number_after(text: &str, key: &str) -> Option<f64> {
    let rest = &text[text.rfind(key)? + key.len()..];
    let start = rest.find(|c: char| c.is_ascii_digit())?;
    let digits: String = rest[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == 'e' || *c == '-')
        .collect();
    digits.parse().ok()
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(
        || "never".into(),
        |d| format!("{:.1} ms", d.as_secs_f64() * 1000.0),
    )
}

/// Part 1: fill, `kill -9`, restart, time the reload.
fn reload_bench(rt: &tokio::runtime::Runtime, root: &Path, total: usize) {
    let dir = root.join("reload");
    let repo = repo(&dir.join("repo"));
    let mut service = Service::start(&dir, "");
    let filled = rt.block_on(async {
        start_blocker(&service.base, &repo).await;
        let started = Instant::now();
        let accepted = fill_queue(&service.base, &repo, total).await;
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "recovery: filled {accepted} tasks in {secs:.1} s ({:.0} /s); {}",
            accepted as f64 / secs,
            service.rss()
        );
        accepted
    });
    let data_bytes = dir_size(&dir.join("data"));
    service.kill9();
    drop(service);
    let started = Instant::now();
    let service = Service::start(&dir, "");
    let listening = started.elapsed();
    let (ready, intake) = rt.block_on(async {
        let client = client();
        let ready = until(started, || async {
            let r = client.get(format!("{}/readyz", service.base)).send().await;
            matches!(r, Ok(r) if r.status() == 200)
        });
        let probe = task(&repo, total + 1, 0);
        let intake = until(started, || async {
            let (status, _) = submit(&client, &service.base, &probe).await;
            status != 503 && status != 0
        });
        tokio::join!(ready, intake)
    });
    let rss = service.rss();
    let metrics = rt.block_on(async {
        let r = client()
            .get(format!("{}/metrics", service.base))
            .send()
            .await;
        match r {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    });
    let log = std::fs::read_to_string(&service.log).unwrap_or_default();
    println!("## queue reload after kill -9, {filled} tasks queued (+1 running blocker)");
    println!(
        "data dir on disk before the restart: {:.1} MiB",
        data_bytes as f64 / 1048576.0
    );
    println!(
        "restart → listening (address printed): {}",
        ms(Some(listening))
    );
    println!("restart → /readyz 200: {}", ms(ready));
    println!("restart → first submit not 503: {}", ms(intake));
    // Compass's one line at the end of its reload: `queued=… reload_ms=…`.
    match log.lines().rev().find(|line| line.contains("reload_ms")) {
        Some(line) => println!(
            "reload_ms (log): {:?} ms, queued={:?}",
            number_after(line, "reload_ms"),
            number_after(line, "queued=")
        ),
        None => println!("reload_ms (log): not found"),
    }
    let gauge = metrics
        .lines()
        .find(|l| l.starts_with("glitchlab_queue_reload_seconds"))
        .unwrap_or("glitchlab_queue_reload_seconds: not exported");
    println!("{gauge}");
    println!("after the reload: {rss}");
}

/// Bytes of the files under `dir`.
fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// A tmpfs at `dir`, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(dir).unwrap();
        // SAFETY: reads the effective user id.
        if unsafe { libc::geteuid() } != 0 {
            return Err("mounting a tmpfs needs root".into());
        }
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", TMPFS_SIZE, "tmpfs"])
            .arg(dir)
            .status();
        match status {
            Ok(s) if s.success() => Ok(Self(dir.to_path_buf())),
            other => Err(format!("cannot mount a tmpfs here ({other:?})")),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes `path` until the disk is full, then gives `headroom` bytes back.
fn fill_disk(path: &Path, headroom: u64) {
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![7_u8; 64 * 1024];
    let mut written = 0_u64;
    while file.write_all(&chunk).is_ok() {
        written += chunk.len() as u64;
    }
    let _ = file.flush();
    file.set_len(written.saturating_sub(headroom)).unwrap();
}

/// One round: fill, submit until 507, delete the filler, time until a submit is accepted.
async fn disk_round(service: &Service, repo: &str, filler: &Path) -> Result<Duration, String> {
    let client = client();
    fill_disk(filler, HEADROOM_BYTES);
    let mut full = false;
    for n in 0..FILL_SUBMITS_MAX {
        match submit(&client, &service.base, &task(repo, n, 2000)).await {
            (201, _) => {}
            (507, _) => {
                full = true;
                break;
            }
            (503, _) => tokio::time::sleep(Duration::from_millis(50)).await,
            (other, body) => return Err(format!("fill answered {other}: {body}")),
        }
    }
    if !full {
        return Err(format!("no 507 after {FILL_SUBMITS_MAX} submits"));
    }
    std::fs::remove_file(filler).map_err(|e| e.to_string())?;
    let freed = Instant::now();
    let probe = task(repo, 0, 0);
    while freed.elapsed() < RECOVERY_DEADLINE {
        if submit(&client, &service.base, &probe).await.0 == 201 {
            return Ok(freed.elapsed());
        }
        tokio::time::sleep(RECOVERY_PROBE_INTERVAL).await;
    }
    Err(format!(
        "no 201 within {RECOVERY_DEADLINE:?} of freeing space"
    ))
}

/// Part 2: full disk → space back → intake, [`DISK_ROUNDS`] times.
fn disk_bench(rt: &tokio::runtime::Runtime, root: &Path) {
    println!("## recovery from a full disk ({TMPFS_SIZE} tmpfs, 1 MiB reserve)");
    let dir = root.join("disk");
    let _tmpfs = match Tmpfs::mount(&dir.join("data")) {
        Ok(tmpfs) => tmpfs,
        Err(why) => {
            println!("skipped: {why}");
            return;
        }
    };
    let repo = repo(&dir.join("repo"));
    let service = Service::start(&dir, DISK_CONFIG);
    let filler = dir.join("data").join("filler");
    let mut times = Vec::new();
    rt.block_on(async {
        start_blocker(&service.base, &repo).await;
        for round in 1..=DISK_ROUNDS {
            match disk_round(&service, &repo, &filler).await {
                Ok(t) => {
                    eprintln!("recovery: disk round {round}: {}", ms(Some(t)));
                    times.push(t);
                }
                Err(e) => {
                    println!("round {round} failed: {e}");
                    break;
                }
            }
        }
    });
    times.sort();
    if let (Some(min), Some(max)) = (times.first(), times.last()) {
        let median = times[times.len() / 2];
        println!(
            "space back → submit accepted, {} rounds: min {} / median {} / max {}",
            times.len(),
            ms(Some(*min)),
            ms(Some(median)),
            ms(Some(*max))
        );
    }
    drop(service);
}

fn main() {
    let total = std::env::var(TASKS_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(RELOAD_TASKS);
    let root = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    reload_bench(&rt, root.path(), total);
    println!();
    disk_bench(&rt, root.path());
    rt.shutdown_timeout(Duration::from_secs(5));
}
