//! Ledger benchmark: durable transfers per second. Run with `cargo bench --bench ledger`; figures
//! go to `docs/benchmarks.md`.
//!
//! Every transfer counted here was acknowledged, so it was flushed to disk first. Measures:
//! 1. over HTTP against the real service in-process on 127.0.0.1:0 (one client, then many
//!    concurrent clients: the Ledger group-commits their transfers under one flush);
//! 2. in-process, calling the Ledger actor directly (no HTTP), one caller and many;
//! 3. the raw sled insert+flush rate on the same disk, for scale: one flush per write is the
//!    ceiling for one transfer at a time.

// A test or a bench states what it expects with unwrap/expect/panic, and is nobody's API; the
// service code may not (Cargo.toml).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    unreachable_pub
)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glitchlab::actors::ledger::{Ledger, LedgerArguments};
use glitchlab::app::startup::Application;
use glitchlab::config::definitions::Definitions;
use glitchlab::config::Config;
use glitchlab::model::ledger::NewTransfer;
use glitchlab::runtime::directory::{ActorDirectory, ActorEntry, ActorHealth};
use glitchlab::runtime::ledger;
use glitchlab::runtime::Services;
use glitchlab::storage::store::Store;
use ractor::Actor;
use serde_json::json;
use tokio::task::JoinSet;

const SEQUENTIAL_TRANSFERS: usize = 500;
const CONCURRENT_CLIENTS: usize = 32;
const TRANSFERS_PER_CLIENT: usize = 150;
const SLED_WRITES: usize = 500;
const FUNDED_ACCOUNT: &str = "user:local";
const CREDIT_ACCOUNT: &str = "system:revenue";

fn config(root: &Path) -> Config {
    let mut config = Config::default();
    config.server.bind = "127.0.0.1:0".parse().unwrap();
    // One token makes all the load: no per-token rate limit.
    config.server.requests_per_sec = 0;
    config.storage.data_dir = root.join("data");
    config.paths.actors_dir = root.join("no-actors");
    config
}

async fn http_transfer(client: &reqwest::Client, base: &str, id: String) {
    let body = json!({
        "id": id, "debit_account": FUNDED_ACCOUNT, "credit_account": CREDIT_ACCOUNT,
        "amount": 1, "code": 7,
    });
    let response = client
        .post(format!("{base}/v1/ledger/transfers"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201, "transfer {id}");
}

/// (sequential rate, concurrent rate) over HTTP.
async fn over_http(root: &Path) -> (f64, f64) {
    let application = Application::build(config(root)).await.unwrap();
    let base = format!("http://{}", application.addr().unwrap());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(application.run_until_stopped(async move {
        let _ = stop_rx.await;
    }));
    // A fresh data dir's first admin token: its secret is in `<data_dir>/admin.token`.
    let secret = std::fs::read_to_string(root.join("data").join("admin.token")).unwrap();
    let mut headers = reqwest::header::HeaderMap::new();
    let bearer = format!("Bearer {}", secret.trim());
    headers.insert(reqwest::header::AUTHORIZATION, bearer.parse().unwrap());
    let client = reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap();
    let started = Instant::now();
    for n in 0..SEQUENTIAL_TRANSFERS {
        http_transfer(&client, &base, format!("http-seq-{n}")).await;
    }
    let sequential = rate(SEQUENTIAL_TRANSFERS, started.elapsed());
    let started = Instant::now();
    let mut clients = JoinSet::new();
    for c in 0..CONCURRENT_CLIENTS {
        let (client, base) = (client.clone(), base.clone());
        clients.spawn(async move {
            for n in 0..TRANSFERS_PER_CLIENT {
                http_transfer(&client, &base, format!("http-{c}-{n}")).await;
            }
        });
    }
    clients.join_all().await;
    let concurrent = rate(CONCURRENT_CLIENTS * TRANSFERS_PER_CLIENT, started.elapsed());
    let _ = stop_tx.send(());
    server.await.unwrap().unwrap();
    (sequential, concurrent)
}

async fn actor_transfer(directory: &ActorDirectory, id: String) {
    let transfer = NewTransfer::posted(&id, FUNDED_ACCOUNT, CREDIT_ACCOUNT, 1, 7);
    let applied = ledger::transfer(directory, transfer).await.unwrap();
    assert!(!applied.is_replay());
}

/// (sequential rate, concurrent rate) calling a bare Ledger actor.
async fn in_process(root: &Path) -> (f64, f64) {
    let config = config(&root.join("actor"));
    std::fs::create_dir_all(&config.storage.data_dir).unwrap();
    let services = Services {
        fleet: None,
        store: Store::open(&config.storage.data_dir).unwrap(),
        directory: Arc::new(ActorDirectory::default()),
        definitions: Arc::new(Definitions::load(&config.paths).unwrap()),
        redactor: Arc::default(),
        sandbox: None,
        repo_checks: Arc::default(),
        base_health: Arc::default(),
        background: Default::default(),
        live_output: Default::default(),
        hold: Arc::default(),
        merge_lines: Arc::default(),
        config: Arc::new(config),
    };
    let arguments = LedgerArguments {
        services: services.clone(),
    };
    let (actor, handle) = Actor::spawn(None, Ledger, arguments).await.unwrap();
    let entry = ActorEntry {
        name: "ledger".into(),
        parent: None,
        status: ActorHealth::Running,
        restarts: 0,
    };
    services.directory.set(entry, Some(actor.get_cell()));
    let started = Instant::now();
    for n in 0..SEQUENTIAL_TRANSFERS {
        actor_transfer(&services.directory, format!("actor-seq-{n}")).await;
    }
    let sequential = rate(SEQUENTIAL_TRANSFERS, started.elapsed());
    let started = Instant::now();
    let mut callers = JoinSet::new();
    for c in 0..CONCURRENT_CLIENTS {
        let directory = services.directory.clone();
        callers.spawn(async move {
            for n in 0..TRANSFERS_PER_CLIENT {
                actor_transfer(&directory, format!("actor-{c}-{n}")).await;
            }
        });
    }
    callers.join_all().await;
    let concurrent = rate(CONCURRENT_CLIENTS * TRANSFERS_PER_CLIENT, started.elapsed());
    let audit = ledger::audit(&services.directory).await.unwrap();
    assert!(audit.balanced, "{audit:?}");
    actor.stop(None);
    handle.await.unwrap();
    (sequential, concurrent)
}

fn sled_flush_rate(dir: &Path) -> f64 {
    let db = sled::open(dir.join("raw-sled")).unwrap();
    let started = Instant::now();
    for i in 0..SLED_WRITES {
        db.insert((i as u64).to_be_bytes(), vec![0u8; 512]).unwrap();
        db.flush().unwrap();
    }
    rate(SLED_WRITES, started.elapsed())
}

fn rate(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let root = tempfile::tempdir().unwrap();
    let (http_sequential, http_concurrent) = over_http(root.path()).await;
    let (actor_sequential, actor_concurrent) = in_process(root.path()).await;
    let flush_rate = sled_flush_rate(root.path());
    let total = CONCURRENT_CLIENTS * TRANSFERS_PER_CLIENT;
    println!("| measure | durable transfers/s |");
    println!("|---|---|");
    println!(
        "| HTTP, 1 client, {SEQUENTIAL_TRANSFERS} transfers one at a time | {http_sequential:.0} |"
    );
    println!("| HTTP, {CONCURRENT_CLIENTS} concurrent clients, {total} transfers | {http_concurrent:.0} |");
    println!("| in-process (Ledger actor), 1 caller, {SEQUENTIAL_TRANSFERS} transfers | {actor_sequential:.0} |");
    println!("| in-process (Ledger actor), {CONCURRENT_CLIENTS} concurrent callers, {total} transfers | {actor_concurrent:.0} |");
    println!("| raw sled insert + flush (512 B), one at a time | {flush_rate:.0} |");
}
