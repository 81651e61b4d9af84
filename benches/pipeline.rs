//! End-to-end pipeline benchmark: the real service in-process on 127.0.0.1:0, real sled, real git
//! repositories, real HTTP. Run with `cargo bench --bench pipeline`; figures go to
//! `docs/benchmarks.md`.
//!
//! Measures, for a trivial task (a one-line shell patch, verify `true`):
//! 1. latency from `POST /v1/tasks` to `status: done`, one task at a time;
//! 2. throughput with many tasks queued at once (`max_concurrent_tasks` = 4, one repo each);
//! 3. the raw sled insert+flush rate on the same disk, for scale (every stage transition flushes).

// A test or a bench states what it expects with unwrap/expect/panic, and is nobody's API; the
// service code may not (Cargo.toml).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    unreachable_pub
)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use glitchlab::app::startup::Application;
use glitchlab::config::Config;
use serde_json::{json, Value};

const SEQUENTIAL_TASKS: usize = 30;
const CONCURRENT_TASKS: usize = 40;
const REPOS: usize = 4;
const SLED_WRITES: usize = 500;

fn git(dir: &Path, args: &[&str]) {
    let status = Command::new("git")
        .args(["-c", "user.name=bench", "-c", "user.email=bench@localhost"])
        .args(args)
        .current_dir(dir)
        .status()
        .expect("git");
    assert!(status.success(), "git {args:?}");
}

fn repo(root: &Path, name: &str) -> PathBuf {
    let path = root.join(name);
    std::fs::create_dir_all(&path).unwrap();
    git(&path, &["init", "-q", "-b", "main"]);
    std::fs::write(path.join("README.md"), "bench\n").unwrap();
    git(&path, &["add", "-A"]);
    git(&path, &["commit", "-q", "-m", "initial"]);
    path
}

async fn submit(client: &reqwest::Client, base: &str, repo: &Path, n: usize) -> String {
    let body = json!({
        "title": format!("bench task {n}"),
        "description": "Write one file.",
        "repo": repo.display().to_string(),
        "verify": "true",
        "engines": {"patch": {"kind": "shell", "command": format!("echo {n} > bench-{n}.txt")}},
    });
    let task: Value = client
        .post(format!("{base}/v1/tasks"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    task["id"].as_str().expect("task id").to_owned()
}

async fn wait_done(client: &reqwest::Client, base: &str, id: &str) {
    loop {
        let task: Value = client
            .get(format!("{base}/v1/tasks/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        match task["status"].as_str() {
            Some("done") => return,
            Some("failed" | "cancelled" | "dead_letter") => panic!("bench task failed: {task}"),
            _ => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

fn ms(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1000.0)
}

fn sled_flush_rate(dir: &Path) -> f64 {
    let db = sled::open(dir.join("raw-sled")).unwrap();
    let started = Instant::now();
    for i in 0..SLED_WRITES {
        db.insert((i as u64).to_be_bytes(), vec![0u8; 512]).unwrap();
        db.flush().unwrap();
    }
    SLED_WRITES as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let root = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.server.bind = "127.0.0.1:0".parse().unwrap();
    // One token makes all the load: no per-token rate limit.
    config.server.requests_per_sec = 0;
    config.storage.data_dir = root.path().join("data");
    config.paths.actors_dir = root.path().join("no-actors");
    // In-process, this binary is the bench, not `glitchlab`: it cannot be the sandbox helper.
    config.governance.sandbox = glitchlab::platform::sandbox::SandboxMode::Off;
    let application = Application::build(config).await.unwrap();
    let base = format!("http://{}", application.addr().unwrap());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(application.run_until_stopped(async move {
        let _ = stop_rx.await;
    }));
    // A fresh data dir's first admin token: its secret is in `<data_dir>/admin.token`.
    let secret = std::fs::read_to_string(root.path().join("data").join("admin.token")).unwrap();
    let mut headers = reqwest::header::HeaderMap::new();
    let bearer = format!("Bearer {}", secret.trim());
    headers.insert(reqwest::header::AUTHORIZATION, bearer.parse().unwrap());
    let client = reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap();
    let repos: Vec<PathBuf> = (0..REPOS)
        .map(|i| repo(root.path(), &format!("repo-{i}")))
        .collect();

    let mut latencies = Vec::with_capacity(SEQUENTIAL_TASKS);
    for n in 0..SEQUENTIAL_TASKS {
        let started = Instant::now();
        let id = submit(&client, &base, &repos[0], n).await;
        wait_done(&client, &base, &id).await;
        latencies.push(started.elapsed());
    }
    latencies.sort();

    let started = Instant::now();
    let mut ids = Vec::with_capacity(CONCURRENT_TASKS);
    for n in 0..CONCURRENT_TASKS {
        ids.push(submit(&client, &base, &repos[n % REPOS], SEQUENTIAL_TASKS + n).await);
    }
    for id in &ids {
        wait_done(&client, &base, id).await;
    }
    let burst = started.elapsed();
    let _ = stop_tx.send(());
    server.await.unwrap().unwrap();
    let flush_rate = sled_flush_rate(root.path());

    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| submit → done, one at a time ({SEQUENTIAL_TASKS} tasks), p50 | {} |",
        ms(percentile(&latencies, 0.5))
    );
    println!(
        "| submit → done, p95 | {} |",
        ms(percentile(&latencies, 0.95))
    );
    println!(
        "| submit → done, max | {} |",
        ms(*latencies.last().unwrap())
    );
    println!(
        "| {CONCURRENT_TASKS} tasks queued at once over {REPOS} repos, 4 slots: wall time | {} ({:.1} tasks/s) |",
        ms(burst),
        CONCURRENT_TASKS as f64 / burst.as_secs_f64()
    );
    println!("| raw sled insert + flush (512 B) | {flush_rate:.0} /s |");
}
