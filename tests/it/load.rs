//! Load (issue #9, item 6): 64 concurrent clients mix task submits, ledger transfers, cancels and
//! reads against the real binary. Every request must be answered within 10 s and `/healthz` within
//! 500 ms throughout; then `kill -9`, restart, and every acknowledged task and transfer is there
//! exactly once and the books balance. A frozen service fails this test in bounded time: every
//! request has a client timeout and the load phase has an overall one.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::task::JoinSet;

use crate::helpers::{git_repo, shell_task, with_config, Options, Service};

/// Concurrent clients.
const CLIENTS: usize = 64;
/// Requests each client makes at most (the count bound of its loop).
const OPS_PER_CLIENT: usize = 40;
/// No client starts a request after this long (the wall-clock bound of its loop).
const LOAD_DURATION: Duration = Duration::from_secs(20);
/// Every request must be answered within this; a timeout is a failure, not back-pressure.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Backstop for the whole load phase, should a client hang despite its request timeout.
const LOAD_PHASE_LIMIT: Duration = LOAD_DURATION
    .saturating_add(REQUEST_TIMEOUT)
    .saturating_add(Duration::from_secs(5));
/// The slowest acceptable `/healthz` answer while the load runs.
const HEALTHZ_LIMIT: Duration = Duration::from_millis(500);
/// Pause between two `/healthz` probes.
const HEALTHZ_EVERY: Duration = Duration::from_millis(50);
/// Bound on opening and funding the accounts before the load.
const SETUP_LIMIT: Duration = Duration::from_secs(30);
/// Bound on the checks after the restart.
const CHECK_LIMIT: Duration = Duration::from_secs(60);
/// Git repositories the tasks are spread over.
const REPOS: usize = 4;
/// Transfers move `1..=AMOUNT_MAX` each.
const AMOUNT_MAX: u64 = 100;
/// Minted on each client's source account: covers every transfer it can make, so a refusal for
/// funds never muddies the sums.
const FUNDING: u64 = OPS_PER_CLIENT as u64 * AMOUNT_MAX;
/// Transfer code of the load's transfers.
const TRANSFER_CODE: u64 = 7;
/// The credit side of every load transfer; no other traffic touches it.
const SINK: &str = "user:load-sink";
/// A working service gets at least this much done under the load; back-pressure is fine, but a
/// service that refuses everything is not serving.
const MIN_ACKED_TASKS: usize = CLIENTS;
const MIN_ACKED_TRANSFERS: usize = CLIENTS;
/// Problem lines kept per client and printed in the failure message.
const SAMPLES_PER_CLIENT: usize = 3;
const SAMPLES_SHOWN: usize = 20;
/// Reads in flight at once when the checks after the restart read every acknowledged task and
/// transfer back (the same reads and checks as one at a time, in less wall time).
const CHECK_CONCURRENCY: usize = 16;
/// A queue that never fills from this load, and a default account that pays every budget
/// (`ledger.default_task_budget` is 10^7 per task; the default funding covers only 100).
/// The load comes from one token (the test admin), so its per-token rate limit is off here; the
/// limit itself is tested in `auth.rs`.
const CONFIG: &str = "[compass]\nmax_queued_tasks = 100000\n\n\
                      [ledger]\nlocal_funding = 1000000000000000\n\n\
                      [server]\nrequests_per_sec = 0\n";

/// `t=…` since the load started, or `never`.
fn moment(at: Option<Duration>) -> String {
    at.map_or_else(|| "never".to_owned(), |at| format!("t={at:.1?}"))
}

/// The source account of client `client`: only its transfers debit it.
fn source(client: usize) -> String {
    format!("user:load-src-{client}")
}

/// What a client does with one request.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Op {
    Submit,
    Transfer,
    Cancel,
    Read,
}

/// How one request ended, as the client saw it.
enum Reply {
    /// An HTTP answer.
    Answer { status: u16, body: Value },
    /// No answer within [`REQUEST_TIMEOUT`].
    TimedOut,
    /// The connection failed.
    Failed(String),
}

/// What a request came to, once the client has filed it.
enum Outcome {
    /// 2xx: acknowledged.
    Acked(Value),
    /// 429 `QUEUE_FULL`, 503 (`STORE_BUSY` and the like) or 402: back-pressure, not acknowledged.
    PushedBack(u16),
    /// Another non-2xx answer, for the op to judge.
    Other(u16, String),
    /// No answer (timeout or connection error); already recorded as a problem.
    Lost,
}

/// Counts of one op kind.
#[derive(Default, Clone, Copy, Debug)]
struct OpStats {
    sent: usize,
    acked: usize,
    pushed_back: usize,
    /// Answers the op expects besides 2xx (a cancel of a task that already ended).
    refused: usize,
    timed_out: usize,
    failed: usize,
    unexpected: usize,
    slowest: Duration,
}

impl OpStats {
    fn describe(&self) -> String {
        format!(
            "{} sent, {} acknowledged, {} pushed back, {} refused as expected, {} timed out, \
             {} connection errors, {} unexpected; slowest {:.2?}",
            self.sent,
            self.acked,
            self.pushed_back,
            self.refused,
            self.timed_out,
            self.failed,
            self.unexpected,
            self.slowest
        )
    }

    fn add(&mut self, other: &OpStats) {
        self.sent += other.sent;
        self.acked += other.acked;
        self.pushed_back += other.pushed_back;
        self.refused += other.refused;
        self.timed_out += other.timed_out;
        self.failed += other.failed;
        self.unexpected += other.unexpected;
        self.slowest = self.slowest.max(other.slowest);
    }
}

/// Everything one client saw and must later find in the service.
#[derive(Default)]
struct ClientLog {
    client: usize,
    stats: BTreeMap<Op, OpStats>,
    /// Acknowledged submissions: (task id, idempotency key).
    tasks: Vec<(String, String)>,
    /// Submissions without a definite answer (503 or lost): the task may exist, at most once.
    uncertain_keys: Vec<String>,
    /// Submissions refused with 429 or 402: no task may exist for them.
    refused_keys: Vec<String>,
    /// Tasks whose cancel was acknowledged.
    cancelled: Vec<String>,
    /// Acknowledged transfers: (id, amount), all `source(client)` → [`SINK`].
    transfers: Vec<(String, u64)>,
    /// Transfers without a definite answer: each may or may not have been applied.
    uncertain_transfers: Vec<(String, u64)>,
    /// A few problem lines (timeouts, connection errors, unexpected answers).
    samples: Vec<String>,
    /// When (since the load started) this client sent its first request that got no answer.
    first_lost_at: Option<Duration>,
}

impl ClientLog {
    fn problem(&mut self, line: String) {
        if self.samples.len() < SAMPLES_PER_CLIENT {
            self.samples.push(line);
        }
    }

    /// Counts a reply under `op` and sorts it into an [`Outcome`].
    fn file(
        &mut self,
        op: Op,
        what: &str,
        reply: Reply,
        took: Duration,
        started: Instant,
    ) -> Outcome {
        let client = self.client;
        let at = started.elapsed();
        let stats = self.stats.entry(op).or_default();
        stats.sent += 1;
        stats.slowest = stats.slowest.max(took);
        match reply {
            Reply::Answer { status, body } if (200..300).contains(&status) => {
                stats.acked += 1;
                Outcome::Acked(body)
            }
            Reply::Answer { status, body } => {
                let code = body["error"]["code"].as_str().unwrap_or("").to_owned();
                if matches!(
                    (status, code.as_str()),
                    (429, "QUEUE_FULL") | (503, _) | (402, _)
                ) {
                    stats.pushed_back += 1;
                    Outcome::PushedBack(status)
                } else {
                    Outcome::Other(status, code)
                }
            }
            Reply::TimedOut => {
                stats.timed_out += 1;
                self.first_lost_at.get_or_insert(at.saturating_sub(took));
                self.problem(format!(
                    "client {client} {what}: no answer within {REQUEST_TIMEOUT:?} (sent at t={:.1}s)",
                    at.saturating_sub(took).as_secs_f64()
                ));
                Outcome::Lost
            }
            Reply::Failed(error) => {
                stats.failed += 1;
                self.first_lost_at.get_or_insert(at.saturating_sub(took));
                self.problem(format!(
                    "client {client} {what}: connection error after {took:?} at t={:.1}s: {error}",
                    at.as_secs_f64()
                ));
                Outcome::Lost
            }
        }
    }

    /// A non-2xx answer the op did not expect.
    fn unexpected(&mut self, op: Op, what: &str, status: u16, code: &str) {
        self.stats.entry(op).or_default().unexpected += 1;
        let client = self.client;
        self.problem(format!(
            "client {client} {what}: unexpected {status} {code}"
        ));
    }

    /// A non-2xx answer the op expects.
    fn refused(&mut self, op: Op) {
        self.stats.entry(op).or_default().refused += 1;
    }
}

/// Sends one request with [`REQUEST_TIMEOUT`] (set on `http`); how it ended and how long it took.
async fn request(
    http: &reqwest::Client,
    method: Method,
    url: String,
    body: Option<&Value>,
) -> (Reply, Duration) {
    let sent = Instant::now();
    let mut builder = http.request(method, url);
    if let Some(body) = body {
        builder = builder.json(body);
    }
    let lost = |error: reqwest::Error| {
        if error.is_timeout() {
            Reply::TimedOut
        } else {
            Reply::Failed(error.to_string())
        }
    };
    let reply = match builder.send().await {
        Err(error) => lost(error),
        Ok(response) => {
            let status = response.status().as_u16();
            match response.bytes().await {
                Ok(bytes) => Reply::Answer {
                    status,
                    body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                },
                Err(error) => lost(error),
            }
        }
    };
    (reply, sent.elapsed())
}

/// One client: up to [`OPS_PER_CLIENT`] requests, none started after [`LOAD_DURATION`], cycling
/// through submit, transfer, read, cancel (of its own tasks) at an offset of its own so that all
/// kinds run at once from the start.
async fn client(
    client: usize,
    base: String,
    repos: Arc<Vec<PathBuf>>,
    started: Instant,
) -> ClientLog {
    let http = crate::helpers::client_builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .unwrap();
    let mut log = ClientLog {
        client,
        ..ClientLog::default()
    };
    // Its acknowledged tasks not yet cancelled, newest last.
    let mut open: Vec<String> = Vec::new();
    for n in 0..OPS_PER_CLIENT {
        if started.elapsed() >= LOAD_DURATION {
            break;
        }
        match (client + n) % 8 {
            0 | 4 => {
                let key = format!("load-{client}-{n}");
                let repo = &repos[(client + n) % repos.len()];
                let mut body = shell_task(repo, &format!("echo {n} > {key}.txt"), "true");
                body["idempotency_key"] = json!(key);
                let what = format!("submit {key}");
                let url = format!("{base}/v1/tasks");
                let (reply, took) = request(&http, Method::POST, url, Some(&body)).await;
                match log.file(Op::Submit, &what, reply, took, started) {
                    Outcome::Acked(task) => {
                        let id = task["id"].as_str().unwrap_or_default().to_owned();
                        open.push(id.clone());
                        log.tasks.push((id, key));
                    }
                    Outcome::PushedBack(503) | Outcome::Lost => log.uncertain_keys.push(key),
                    Outcome::PushedBack(_) => log.refused_keys.push(key),
                    Outcome::Other(status, code) => {
                        log.unexpected(Op::Submit, &what, status, &code);
                        log.uncertain_keys.push(key);
                    }
                }
            }
            1 | 3 | 6 => {
                let id = format!("load-t-{client}-{n}");
                let amount = 1 + (client as u64 * 31 + n as u64 * 17) % AMOUNT_MAX;
                let body = json!({"id": id, "debit_account": source(client),
                    "credit_account": SINK, "amount": amount, "code": TRANSFER_CODE});
                let what = format!("transfer {id}");
                let url = format!("{base}/v1/ledger/transfers");
                let (reply, took) = request(&http, Method::POST, url, Some(&body)).await;
                match log.file(Op::Transfer, &what, reply, took, started) {
                    Outcome::Acked(_) => log.transfers.push((id, amount)),
                    Outcome::PushedBack(_) | Outcome::Lost => {
                        log.uncertain_transfers.push((id, amount))
                    }
                    Outcome::Other(status, code) => {
                        log.unexpected(Op::Transfer, &what, status, &code);
                        log.uncertain_transfers.push((id, amount));
                    }
                }
            }
            5 if !open.is_empty() => {
                let id = open.pop().unwrap();
                let what = format!("cancel {id}");
                let url = format!("{base}/v1/tasks/{id}/cancel");
                let (reply, took) = request(&http, Method::POST, url, Some(&json!({}))).await;
                match log.file(Op::Cancel, &what, reply, took, started) {
                    Outcome::Acked(_) => log.cancelled.push(id),
                    // Too late (it ended), or too late because its change is going onto
                    // the base right now (it ends `done`): documented refusals.
                    Outcome::Other(409, code)
                        if code == "TASK_FINISHED"
                            || code == "INVALID_TASK_STATUS"
                            || code == "TASK_LANDING" =>
                    {
                        log.refused(Op::Cancel)
                    }
                    Outcome::Other(status, code) => {
                        log.unexpected(Op::Cancel, &what, status, &code)
                    }
                    Outcome::PushedBack(_) | Outcome::Lost => {}
                }
            }
            step => {
                let path = match (step, open.last()) {
                    (2, Some(id)) => format!("/v1/tasks/{id}"),
                    (2 | 5, _) => "/v1/tasks?limit=20".to_owned(),
                    _ => format!("/v1/ledger/accounts/{}", source(client)),
                };
                let what = format!("GET {path}");
                let url = format!("{base}{path}");
                let (reply, took) = request(&http, Method::GET, url, None).await;
                if let Outcome::Other(status, code) =
                    log.file(Op::Read, &what, reply, took, started)
                {
                    log.unexpected(Op::Read, &what, status, &code);
                }
            }
        }
    }
    log
}

/// What the `/healthz` prober saw.
#[derive(Default, Debug)]
struct Probes {
    count: usize,
    slowest: Duration,
    /// When (since the load started) the slowest probe was sent.
    slowest_at: Duration,
    /// Probes slower than [`HEALTHZ_LIMIT`] (timeouts and errors included).
    too_slow: usize,
    first_too_slow_at: Option<Duration>,
    errors: usize,
}

/// Probes `/healthz` every [`HEALTHZ_EVERY`] until `stop`, on a thread and runtime of its own so
/// that the 64 clients in this process do not add their scheduling delays to its measurements.
fn start_prober(
    base: String,
    started: Instant,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Probes> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let http = crate::helpers::client_builder()
                .timeout(REQUEST_TIMEOUT)
                .build()
                .unwrap();
            let mut probes = Probes::default();
            while !stop.load(Ordering::Relaxed) {
                let at = started.elapsed();
                let url = format!("{base}/healthz");
                let (reply, took) = request(&http, Method::GET, url, None).await;
                probes.count += 1;
                let ok = matches!(reply, Reply::Answer { status: 200, .. });
                if !ok {
                    probes.errors += 1;
                }
                if took > probes.slowest {
                    probes.slowest = took;
                    probes.slowest_at = at;
                }
                if !ok || took >= HEALTHZ_LIMIT {
                    probes.too_slow += 1;
                    probes.first_too_slow_at.get_or_insert(at);
                }
                tokio::time::sleep(HEALTHZ_EVERY).await;
            }
            probes
        })
    })
}

/// Opens [`SINK`] and one funded source account per client, one request at a time.
async fn open_accounts(service: &Service) {
    let open = |id: String| async move {
        let body = json!({"id": id, "kind": "user"});
        let (status, answer) = service.post("/v1/ledger/accounts", &body).await;
        assert_eq!(status, 201, "open {id}: {answer}");
    };
    open(SINK.to_owned()).await;
    for client in 0..CLIENTS {
        open(source(client)).await;
        let body = json!({"account": source(client), "amount": FUNDING, "memo": "load funding"});
        let (status, answer) = service.post("/v1/ledger/mint", &body).await;
        assert_eq!(status, 201, "mint for {}: {answer}", source(client));
    }
}

/// Every task of the service, following `next_cursor` (an exclusive "older than" task id).
async fn all_tasks(service: &Service) -> Vec<Value> {
    let mut tasks = Vec::new();
    let mut path = "/v1/tasks?limit=500".to_owned();
    loop {
        let (status, page) = service.get(&path).await;
        assert_eq!(status, 200, "{path}: {page}");
        tasks.extend(page["tasks"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/tasks?limit=500&cursor={cursor}"),
            None => return tasks,
        }
    }
}

/// `GET`s every path, [`CHECK_CONCURRENCY`] at a time: the answers by path.
async fn get_all(
    service: &Service,
    paths: impl IntoIterator<Item = String>,
) -> HashMap<String, (u16, Value)> {
    futures_util::stream::iter(paths)
        .map(|path| async move {
            let answer = service.get(&path).await;
            (path, answer)
        })
        .buffer_unordered(CHECK_CONCURRENCY)
        .collect()
        .await
}

/// After the restart: every acknowledged task is there exactly once under its key (and
/// cancelled if its cancel was acknowledged), no refused submission left a task, every
/// acknowledged transfer is there as sent, each account holds exactly what its transfers imply,
/// and the audit balances. Returns the problems found, and what became of the requests that got
/// no definite answer.
async fn check_after_restart(service: &Service, logs: &[ClientLog]) -> (Vec<String>, String) {
    let mut problems = Vec::new();

    let listed = all_tasks(service).await;
    let mut times_listed: HashMap<String, usize> = HashMap::new();
    let mut by_key: HashMap<String, Vec<String>> = HashMap::new();
    for task in &listed {
        let id = task["id"].as_str().unwrap().to_owned();
        *times_listed.entry(id.clone()).or_default() += 1;
        if let Some(key) = task["idempotency_key"].as_str() {
            by_key.entry(key.to_owned()).or_default().push(id);
        }
    }
    for (key, ids) in &by_key {
        if key.starts_with("load-") && ids.len() > 1 {
            problems.push(format!("key {key} has {} tasks: {ids:?}", ids.len()));
        }
    }
    let cancelled: HashSet<&str> = logs
        .iter()
        .flat_map(|log| log.cancelled.iter().map(String::as_str))
        .collect();
    let tasks = get_all(
        service,
        logs.iter()
            .flat_map(|log| &log.tasks)
            .map(|(id, _)| format!("/v1/tasks/{id}")),
    )
    .await;
    for (id, key) in logs.iter().flat_map(|log| &log.tasks) {
        let (status, task) = &tasks[&format!("/v1/tasks/{id}")];
        let status = *status;
        if status != 200 {
            problems.push(format!(
                "acknowledged task {id} ({key}): GET answered {status}"
            ));
            continue;
        }
        if task["idempotency_key"] != json!(key) {
            problems.push(format!(
                "task {id} has key {} instead of {key}",
                task["idempotency_key"]
            ));
        }
        if cancelled.contains(id.as_str()) && task["status"] != "cancelled" {
            problems.push(format!(
                "task {id}: cancel was acknowledged, status is {}",
                task["status"]
            ));
        }
        let count = times_listed.get(id).copied().unwrap_or(0);
        if count != 1 {
            problems.push(format!("acknowledged task {id} is listed {count} times"));
        }
    }
    let uncertain_keys: Vec<&String> = logs.iter().flat_map(|log| &log.uncertain_keys).collect();
    let created = uncertain_keys
        .iter()
        .filter(|key| by_key.contains_key(key.as_str()))
        .count();
    for key in logs.iter().flat_map(|log| &log.refused_keys) {
        if let Some(ids) = by_key.get(key) {
            problems.push(format!("refused submission {key} created {ids:?}"));
        }
    }

    let transfers = get_all(
        service,
        logs.iter()
            .flat_map(|log| log.transfers.iter().chain(&log.uncertain_transfers))
            .map(|(id, _)| format!("/v1/ledger/transfers/{id}")),
    )
    .await;
    let mut sink_expected = 0;
    let mut applied = 0;
    for log in logs {
        let mut sent = 0;
        for (id, amount) in &log.transfers {
            let (status, transfer) = &transfers[&format!("/v1/ledger/transfers/{id}")];
            let status = *status;
            let expected = (
                200,
                json!(amount),
                json!(source(log.client)),
                json!(SINK),
                json!("posted"),
            );
            let stored = (
                status,
                transfer["amount"].clone(),
                transfer["debit_account"].clone(),
                transfer["credit_account"].clone(),
                transfer["status"].clone(),
            );
            if stored != expected {
                problems.push(format!(
                    "acknowledged transfer {id} of {amount}: {status} {transfer}"
                ));
            }
            sent += amount;
        }
        // Unanswered transfers count only if they were applied (which is allowed).
        for (id, amount) in &log.uncertain_transfers {
            let (status, _) = &transfers[&format!("/v1/ledger/transfers/{id}")];
            if *status == 200 {
                sent += amount;
                applied += 1;
            }
        }
        sink_expected += sent;
        let (status, account) = service
            .get(&format!("/v1/ledger/accounts/{}", source(log.client)))
            .await;
        let totals = [
            "debits_posted",
            "credits_posted",
            "debits_pending",
            "credits_pending",
        ]
        .map(|field| account[field].as_u64());
        if status != 200 || totals != [Some(sent), Some(FUNDING), Some(0), Some(0)] {
            problems.push(format!(
                "{} should have debits {sent}, credits {FUNDING}, nothing pending: {status} {account}",
                source(log.client)
            ));
        }
    }
    let (status, sink) = service.get(&format!("/v1/ledger/accounts/{SINK}")).await;
    if status != 200
        || sink["credits_posted"].as_u64() != Some(sink_expected)
        || sink["debits_posted"].as_u64() != Some(0)
    {
        problems.push(format!(
            "{SINK} should have credits {sink_expected}, no debits: {status} {sink}"
        ));
    }
    let (status, audit) = service.get("/v1/ledger/audit").await;
    let clean = audit["violations"].as_array().is_some_and(Vec::is_empty);
    if status != 200 || audit["balanced"] != true || !clean {
        problems.push(format!("audit after restart: {status} {audit}"));
    }
    let uncertain_transfers: usize = logs.iter().map(|log| log.uncertain_transfers.len()).sum();
    let notes = format!(
        "{created} of {} unanswered submissions created a task; {applied} of \
         {uncertain_transfers} unanswered transfers were applied",
        uncertain_keys.len()
    );
    (problems, notes)
}

/// Issue #9, item 6. On a service whose sled calls block the tokio workers this freezes within
/// seconds; the request timeouts then fail it in about [`LOAD_PHASE_LIMIT`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_clients_get_answers_and_a_kill_9_loses_nothing_acknowledged() {
    // Heavy, and it asserts a latency bound (`/healthz` under HEALTHZ_LIMIT): so it runs alone
    // among the heavy tests. Beside the browser tests, CI once saw a 563 ms probe.
    let _machine = crate::helpers::latency_bound().await;
    load_then_kill_9(with_config(CONFIG)).await;
}

/// The same load against a service with a single async worker thread (tokio reads
/// `TOKIO_WORKER_THREADS`): one blocking call on that worker — a sled read, a flush, a file or
/// process wait — stalls every request, `/healthz` included, so this is the test that no handler
/// blocks the runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_async_worker_is_never_blocked_under_the_same_load() {
    // As above: a latency bound, so no other heavy test runs beside it.
    let _machine = crate::helpers::latency_bound().await;
    let mut options = with_config(CONFIG);
    options
        .env
        .push(("TOKIO_WORKER_THREADS".into(), "1".into()));
    load_then_kill_9(options).await;
}

async fn load_then_kill_9(options: Options) {
    let root = tempfile::tempdir().unwrap();
    let repos: Vec<PathBuf> = (0..REPOS)
        .map(|n| {
            let dir = root.path().join(format!("repos/{n}"));
            std::fs::create_dir_all(&dir).unwrap();
            git_repo(&dir)
        })
        .collect();
    let repos = Arc::new(repos);
    let mut service = Service::start_with(root.path(), options.clone()).await;
    tokio::time::timeout(SETUP_LIMIT, open_accounts(&service))
        .await
        .expect("opening and funding the accounts one at a time took too long");

    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let prober = start_prober(service.base.clone(), started, stop.clone());
    let mut clients = JoinSet::new();
    for number in 0..CLIENTS {
        clients.spawn(client(number, service.base.clone(), repos.clone(), started));
    }
    let mut logs = Vec::new();
    let drained = tokio::time::timeout(LOAD_PHASE_LIMIT, async {
        while let Some(log) = clients.join_next().await {
            logs.push(log.unwrap());
        }
    })
    .await;
    let load_took = started.elapsed();
    clients.abort_all();
    stop.store(true, Ordering::Relaxed);
    let probes = tokio::task::spawn_blocking(move || prober.join().unwrap())
        .await
        .unwrap();

    let mut totals: BTreeMap<Op, OpStats> = BTreeMap::new();
    for log in &logs {
        for (op, stats) in &log.stats {
            totals.entry(*op).or_default().add(stats);
        }
    }
    let all = totals.values().fold(OpStats::default(), |mut sum, stats| {
        sum.add(stats);
        sum
    });
    let first_lost_at = logs.iter().filter_map(|log| log.first_lost_at).min();
    let acked_tasks: usize = logs.iter().map(|log| log.tasks.len()).sum();
    let acked_transfers: usize = logs.iter().map(|log| log.transfers.len()).sum();
    let mut summary = format!(
        "load: {} of {CLIENTS} clients finished in {load_took:.1?}; first unanswered request sent \
         at {}\n",
        logs.len(),
        moment(first_lost_at)
    );
    for (op, stats) in &totals {
        summary += &format!("  {op:?}: {}\n", stats.describe());
    }
    summary += &format!(
        "  /healthz: {} probes, slowest {:.2?} (sent at t={:.1?}), {} over {HEALTHZ_LIMIT:?} or failed \
         (first sent at {}), {} failed\n",
        probes.count,
        probes.slowest,
        probes.slowest_at,
        probes.too_slow,
        moment(probes.first_too_slow_at),
        probes.errors
    );
    eprintln!("{summary}");

    let mut problems = Vec::new();
    if drained.is_err() {
        problems.push(format!(
            "the load phase did not end within {LOAD_PHASE_LIMIT:?} despite request timeouts"
        ));
    }
    if all.timed_out + all.failed > 0 {
        problems.push(format!(
            "{} requests got no answer within {REQUEST_TIMEOUT:?} and {} ended in a connection error \
             (of {} sent)",
            all.timed_out, all.failed, all.sent
        ));
    }
    if all.unexpected > 0 {
        problems.push(format!("{} unexpected answers", all.unexpected));
    }
    if probes.slowest >= HEALTHZ_LIMIT || probes.errors > 0 {
        problems.push(format!(
            "/healthz: slowest {:.1?}, sent at t={:.1?} (limit {HEALTHZ_LIMIT:?}); {} of {} probes too \
             slow or failed, the first sent at {}",
            probes.slowest,
            probes.slowest_at,
            probes.too_slow,
            probes.count,
            moment(probes.first_too_slow_at)
        ));
    }
    if acked_tasks < MIN_ACKED_TASKS || acked_transfers < MIN_ACKED_TRANSFERS {
        problems.push(format!(
            "too little got done: {acked_tasks} tasks (need {MIN_ACKED_TASKS}) and {acked_transfers} transfers (need {MIN_ACKED_TRANSFERS}) acknowledged"
        ));
    }

    service.kill_9();
    let service = Service::start_with(root.path(), options).await;
    let checked_at = Instant::now();
    match tokio::time::timeout(CHECK_LIMIT, check_after_restart(&service, &logs)).await {
        Ok((found, notes)) => {
            eprintln!(
                "after kill -9 and restart: {} problems in {:.1?} ({acked_tasks} tasks, \
                 {acked_transfers} transfers acknowledged); {notes}",
                found.len(),
                checked_at.elapsed()
            );
            if !found.is_empty() {
                problems.push(format!(
                    "after kill -9 and restart, {} problems:\n    {}",
                    found.len(),
                    found
                        .iter()
                        .take(SAMPLES_SHOWN)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join("\n    ")
                ));
            }
        }
        Err(_) => problems.push(format!(
            "the checks after the restart did not finish within {CHECK_LIMIT:?}"
        )),
    }

    let samples: Vec<&String> = logs
        .iter()
        .flat_map(|log| &log.samples)
        .take(SAMPLES_SHOWN)
        .collect();
    assert!(
        problems.is_empty(),
        "{}\n{summary}sample request problems:\n  {}",
        problems.join("\n"),
        samples
            .iter()
            .map(|line| line.as_str())
            .collect::<Vec<_>>()
            .join("\n  ")
    );
}
