//! Merge-queue benchmark: N independent tasks in one repository, landed through the merge queue
//! with `merge_queue.batch_max` 1 and 4. The real service in-process on 127.0.0.1:0, real sled,
//! a real git repository whose verify is a test script that takes `VERIFY_MS`. Run with
//! `cargo bench --bench merge_queue`; figures go to `docs/benchmarks.md`.
//!
//! Prints, per batch size: verify runs in all (Circuit's on the branches plus the queue's on
//! candidates; the target is at most 2 per task), of which on candidates, the wall time from
//! the first submit to the last `done`, and how much the base's first-parent chain grew (one
//! commit per task).

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

/// Independent tasks per run (override with `MERGE_QUEUE_BENCH_TASKS`).
const TASKS: usize = 16;
/// How long the test script takes.
const VERIFY_MS: u64 = 300;

fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .args(["-c", "user.name=bench", "-c", "user.email=bench@localhost"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git");
    assert!(output.status.success(), "git {args:?}");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn repo(root: &Path) -> PathBuf {
    let path = root.join("repo");
    std::fs::create_dir_all(&path).unwrap();
    git(&path, &["init", "-q", "-b", "main"]);
    let script = format!(
        "#!/bin/sh\nsleep {}\nfor f in f*.txt; do [ -e \"$f\" ] || continue; \
         [ \"$(cat \"$f\")\" = ok ] || exit 1; done\n",
        VERIFY_MS as f64 / 1000.0
    );
    std::fs::write(path.join("test.sh"), script).unwrap();
    git(&path, &["add", "-A"]);
    git(&path, &["commit", "-q", "-m", "initial"]);
    path
}

struct Figures {
    verify_runs: usize,
    candidate_runs: usize,
    wall: Duration,
    chain_growth: usize,
}

async fn run(batch_max: usize, tasks: usize) -> Figures {
    let root = tempfile::tempdir().unwrap();
    let repo = repo(root.path());
    let mut config = Config::default();
    config.server.bind = "127.0.0.1:0".parse().unwrap();
    config.server.requests_per_sec = 0;
    config.storage.data_dir = root.path().join("data");
    config.paths.actors_dir = root.path().join("no-actors");
    // In-process, this binary is the bench, not `glitchlab`: it cannot be the sandbox helper.
    config.governance.sandbox = glitchlab::platform::sandbox::SandboxMode::Off;
    config.merge_queue.batch_max = batch_max;
    let application = Application::build(config).await.unwrap();
    let base = format!("http://{}", application.addr().unwrap());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(application.run_until_stopped(async move {
        let _ = stop_rx.await;
    }));
    let secret = std::fs::read_to_string(root.path().join("data").join("admin.token")).unwrap();
    let mut headers = reqwest::header::HeaderMap::new();
    let bearer = format!("Bearer {}", secret.trim());
    headers.insert(reqwest::header::AUTHORIZATION, bearer.parse().unwrap());
    let client = reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap();
    let chain_before = git(&repo, &["rev-list", "--first-parent", "--count", "main"]);

    let started = Instant::now();
    let mut ids = Vec::with_capacity(tasks);
    for n in 0..tasks {
        let body = json!({
            "title": format!("bench change {n}"),
            "description": "Write one file.",
            "repo": repo.display().to_string(),
            "verify": "sh test.sh",
            "engines": {"patch": {"kind": "shell", "command": format!("echo ok > f{n}.txt")}},
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
        ids.push(task["id"].as_str().expect("task id").to_owned());
    }
    for id in &ids {
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
                Some("done") => break,
                Some("failed" | "cancelled" | "dead_letter") => panic!("bench task failed: {task}"),
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
    let wall = started.elapsed();
    let mut verify_runs = 0;
    let mut candidate_runs = 0;
    for id in &ids {
        let runs: Value = client
            .get(format!("{base}/v1/tasks/{id}/runs"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for run in runs["runs"].as_array().unwrap() {
            if run["persona"] == "circuit" {
                verify_runs += 1;
                if run["stage"] == "deliver" {
                    candidate_runs += 1;
                }
            }
        }
    }
    let _ = stop_tx.send(());
    server.await.unwrap().unwrap();
    let chain_after = git(&repo, &["rev-list", "--first-parent", "--count", "main"]);
    Figures {
        verify_runs,
        candidate_runs,
        wall,
        chain_growth: chain_after.parse::<usize>().unwrap()
            - chain_before.parse::<usize>().unwrap(),
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let tasks = std::env::var("MERGE_QUEUE_BENCH_TASKS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(TASKS);
    println!("{tasks} independent tasks, one repository, 4 slots, verify {VERIFY_MS} ms");
    println!("| batch_max | verify runs (all) | on candidates | runs per task | wall time | base grew by |");
    println!("|---|---|---|---|---|---|");
    for batch_max in [1, 4] {
        let figures = run(batch_max, tasks).await;
        println!(
            "| {batch_max} | {} | {} | {:.2} | {:.1} s | {} commits |",
            figures.verify_runs,
            figures.candidate_runs,
            figures.verify_runs as f64 / tasks as f64,
            figures.wall.as_secs_f64(),
            figures.chain_growth
        );
    }
}
