//! Store writer benchmark: the writer thread's CPU a job, for the two shapes of write the load
//! bench drives (a ledger transfer, a task submit), at a fixed group size. Run with
//! `cargo bench --bench store_commit`; figures go to `docs/benchmarks.md`.
//!
//! The writer is the one thread every durable write goes through, so its CPU a job is the ceiling
//! no number of cores lifts. Measured end to end over HTTP (`benches/cpu_per_request.sh`) it moves
//! ±15 % with the group sizes the scheduler happens to make; here each round hands the writer
//! [`JOBS_PER_ROUND`] jobs at once and waits for all of them, so groups are alike from run to
//! run, and the thread's own run time (`/proc/self/task/<tid>/schedstat`, in ns) is divided by the
//! jobs. The records are shaped like the real ones (sizes, key layouts: growing ids, per-account
//! history, a balance rewritten by every job), written through the real `Store` on a real disk
//! (`TMPDIR`), flush included.

// A test or a bench states what it expects with unwrap/expect/panic, and is nobody's API; the
// service code may not (Cargo.toml).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    unreachable_pub
)]

use std::time::Instant;

use glitchlab::storage::store::{Store, StoreError, Table};
use tokio::task::JoinSet;

/// Jobs handed to the writer at once: about what a group held at 32 clients (11.9 submits,
/// 13.4 transfers a group; docs/benchmarks.md, session 39).
const JOBS_PER_ROUND: usize = 16;
/// Rounds a shape runs: thousands of jobs, a stable figure.
const ROUNDS: usize = 1500;
/// Rounds run first and not counted (the trees grow their first levels).
const WARM_ROUNDS: usize = 100;

/// What one job writes.
#[derive(Clone, Copy, Debug)]
enum Shape {
    /// `POST /v1/ledger/transfers`: both balances, the transfer, two history entries, the
    /// request's audit line.
    Transfer,
    /// `POST /v1/tasks`: the task, its queue entry and event, the audit line, and its budget
    /// reservation (a pending transfer from the payer to a new task account, two history
    /// entries, an expiry entry).
    Submit,
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!("## Store writer: CPU a job ({JOBS_PER_ROUND} jobs a round, {ROUNDS} rounds)");
    println!();
    println!("| shape | jobs | groups | writer CPU a job | wall a round |");
    println!("|---|---|---|---|---|");
    for shape in [Shape::Transfer, Shape::Submit] {
        runtime.block_on(measure(shape));
    }
}

async fn measure(shape: Shape) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path()).expect("open the store");
    let mut seq = 0u64;
    for _ in 0..WARM_ROUNDS {
        round(&store, shape, &mut seq).await;
    }
    // Named by now: it has committed the warm-up rounds.
    let writer = writer_thread().expect("the store-writer thread");
    let groups_before = store.writer_health().groups();
    let cpu_before = run_time_ns(&writer);
    let started = Instant::now();
    for _ in 0..ROUNDS {
        round(&store, shape, &mut seq).await;
    }
    let wall = started.elapsed();
    let cpu = run_time_ns(&writer) - cpu_before;
    let groups = store.writer_health().groups() - groups_before;
    let jobs = ROUNDS * JOBS_PER_ROUND;
    println!(
        "| {shape:?} | {jobs} | {groups} | {:.1} µs | {:.2} ms |",
        cpu as f64 / jobs as f64 / 1000.0,
        wall.as_secs_f64() * 1000.0 / ROUNDS as f64,
    );
}

/// Hands the writer [`JOBS_PER_ROUND`] jobs at once and waits until all are durable.
async fn round(store: &Store, shape: Shape, seq: &mut u64) {
    let mut jobs = JoinSet::new();
    for _ in 0..JOBS_PER_ROUND {
        *seq += 1;
        let n = *seq;
        let store = store.clone();
        jobs.spawn(async move {
            store
                .write(move |batch| {
                    for (table, key, value) in records(shape, n) {
                        batch.insert(table, key, value);
                    }
                    Ok::<_, StoreError>(())
                })
                .await
        });
    }
    while let Some(done) = jobs.join_next().await {
        done.expect("job").expect("durable write");
    }
}

/// The records job `n` of `shape` writes, sized and keyed like the service's.
fn records(shape: Shape, n: u64) -> Vec<(Table, Vec<u8>, Vec<u8>)> {
    let history = |account: &str, n: u64| {
        let mut key = account.as_bytes().to_vec();
        key.push(0);
        key.extend_from_slice(&n.to_be_bytes());
        key
    };
    let audit = (Table::AuditLog, n.to_be_bytes().to_vec(), json_of(260));
    match shape {
        Shape::Transfer => vec![
            (Table::LedgerAccounts, b"user:local".to_vec(), json_of(190)),
            (
                Table::LedgerAccounts,
                b"system:revenue".to_vec(),
                json_of(190),
            ),
            (
                Table::LedgerTransfers,
                format!("t-{n}").into_bytes(),
                json_of(330),
            ),
            (
                Table::LedgerHistory,
                history("user:local", n),
                format!("t-{n}").into_bytes(),
            ),
            (
                Table::LedgerHistory,
                history("system:revenue", n),
                format!("t-{n}").into_bytes(),
            ),
            audit,
        ],
        Shape::Submit => {
            // A time-ordered id, as task ids are.
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&n.to_be_bytes());
            id[8..].copy_from_slice(&n.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes());
            let account = format!("task:{n:016x}");
            let reservation = format!("budget-{n:016x}-1");
            let mut event = id.to_vec();
            event.extend_from_slice(&n.to_be_bytes());
            let mut expiry = (1_800_000_000_000u64 + n).to_be_bytes().to_vec();
            expiry.extend_from_slice(reservation.as_bytes());
            vec![
                (Table::Tasks, id.to_vec(), json_of(1500)),
                (Table::QueueIndex, id.to_vec(), json_of(24)),
                (Table::Events, event, json_of(300)),
                audit,
                (Table::LedgerAccounts, b"user:local".to_vec(), json_of(190)),
                (
                    Table::LedgerAccounts,
                    account.clone().into_bytes(),
                    json_of(190),
                ),
                (
                    Table::LedgerTransfers,
                    reservation.clone().into_bytes(),
                    json_of(380),
                ),
                (
                    Table::LedgerHistory,
                    history("user:local", n),
                    reservation.clone().into_bytes(),
                ),
                (
                    Table::LedgerHistory,
                    history(&account, n),
                    reservation.into_bytes(),
                ),
                (Table::LedgerExpiry, expiry, Vec::new()),
            ]
        }
    }
}

/// A JSON-looking value of `bytes` bytes.
fn json_of(bytes: usize) -> Vec<u8> {
    let mut value = b"{\"v\":\"".to_vec();
    value.resize(bytes.saturating_sub(2).max(value.len()), b'x');
    value.extend_from_slice(b"\"}");
    value
}

/// The store writer's `/proc/self/task/<tid>` directory.
fn writer_thread() -> Option<std::path::PathBuf> {
    std::fs::read_dir("/proc/self/task")
        .ok()?
        .flatten()
        .find_map(|task| {
            let comm = std::fs::read_to_string(task.path().join("comm")).ok()?;
            (comm.trim() == "store-writer").then(|| task.path())
        })
}

/// The thread's time on a CPU so far, in ns (the first field of `schedstat`).
fn run_time_ns(task: &std::path::Path) -> u64 {
    let text = std::fs::read_to_string(task.join("schedstat")).expect("schedstat");
    text.split_whitespace()
        .next()
        .and_then(|ns| ns.parse().ok())
        .expect("a run time in schedstat")
}
