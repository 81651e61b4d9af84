//! The ledger against the real service: accounts, idempotent transfers, refusals that change
//! nothing, two-phase transfers (post, void, timeout), history pages, a storm of concurrent
//! clients (with and without a `kill -9` in the middle) audited afterwards, and the CLI.

use std::collections::HashSet;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::task::JoinSet;

use super::helpers::{Options, Service};

/// Funded user accounts the storm moves tokens between.
const STORM_USERS: usize = 10;
/// Concurrent storm clients.
const STORM_CLIENTS: usize = 50;
/// Transfers each storm client makes.
const STORM_TRANSFERS_PER_CLIENT: usize = 40;
/// What each storm user starts with; amounts up to `STORM_AMOUNT_MAX` make some transfers fail.
const STORM_FUNDING: u64 = 1_000;
const STORM_AMOUNT_MAX: u64 = 400;

async fn open_account(service: &Service, id: &str) {
    let (status, body) = service
        .post("/v1/ledger/accounts", &json!({"id": id, "kind": "user"}))
        .await;
    assert_eq!(status, 201, "{body}");
}

async fn mint(service: &Service, account: &str, amount: u64) {
    let body = json!({"account": account, "amount": amount, "memo": "test funding"});
    let (status, body) = service.post("/v1/ledger/mint", &body).await;
    assert_eq!(status, 201, "{body}");
}

async fn account(service: &Service, id: &str) -> Value {
    let (status, body) = service.get(&format!("/v1/ledger/accounts/{id}")).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// `(balance, available, debits_pending, credits_pending)` of an account.
async fn totals(service: &Service, id: &str) -> (i64, i64, i64, i64) {
    let body = account(service, id).await;
    let field = |name: &str| body[name].as_i64().unwrap();
    (
        field("balance"),
        field("available"),
        field("debits_pending"),
        field("credits_pending"),
    )
}

fn transfer_body(id: &str, debit: &str, credit: &str, amount: u64) -> Value {
    json!({"id": id, "debit_account": debit, "credit_account": credit, "amount": amount, "code": 7})
}

async fn assert_balanced(service: &Service) -> Value {
    let (status, audit) = service.get("/v1/ledger/audit").await;
    assert_eq!(status, 200, "{audit}");
    assert_eq!(audit["balanced"], true, "{audit:#}");
    assert_eq!(audit["total_debits"], audit["total_credits"]);
    audit
}

/// Two funded users, `user:a` with `funding`, `user:b` empty.
async fn two_users(service: &Service, funding: u64) {
    open_account(service, "user:a").await;
    open_account(service, "user:b").await;
    mint(service, "user:a", funding).await;
}

#[tokio::test]
async fn builtin_accounts_exist_and_accounts_are_idempotent() {
    let root = tempfile::tempdir().unwrap();
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let local = account(&service, "user:local").await;
    assert_eq!(local["balance"], 1_000_000_000, "{local}");
    for id in [
        "system:revenue",
        "agent:planner",
        "agent:patch",
        "agent:ledger",
    ] {
        assert_eq!(account(&service, id).await["balance"], 0);
    }
    assert_eq!(
        account(&service, "system:mint").await["allow_negative"],
        true
    );

    let body = json!({"id": "project:x", "kind": "project"});
    assert_eq!(service.post("/v1/ledger/accounts", &body).await.0, 201);
    assert_eq!(service.post("/v1/ledger/accounts", &body).await.0, 200);
    let other = json!({"id": "project:x", "kind": "user"});
    let (status, error) = service.post("/v1/ledger/accounts", &other).await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (409, Some("ACCOUNT_EXISTS"))
    );
    let (status, error) = service.get("/v1/ledger/accounts/user:nobody").await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (404, Some("ACCOUNT_NOT_FOUND"))
    );
    let bad = json!({"id": "bad id", "kind": "user"});
    let (status, error) = service.post("/v1/ledger/accounts", &bad).await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (422, Some("INVALID_FIELD"))
    );
    let unknown = json!({"id": "user:y", "kind": "user", "extra": 1});
    assert_eq!(service.post("/v1/ledger/accounts", &unknown).await.0, 422);
}

#[tokio::test]
async fn transfer_ids_are_idempotent() {
    let root = tempfile::tempdir().unwrap();
    let service = Service::start_in_process(root.path(), Options::default()).await;
    two_users(&service, 1_000).await;
    let body = transfer_body("t-1", "user:a", "user:b", 300);
    let (status, first) = service.post("/v1/ledger/transfers", &body).await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["status"], "posted");
    let (status, again) = service.post("/v1/ledger/transfers", &body).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again, first);
    let changed = transfer_body("t-1", "user:a", "user:b", 301);
    let (status, error) = service.post("/v1/ledger/transfers", &changed).await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (409, Some("TRANSFER_EXISTS"))
    );
    assert_eq!(totals(&service, "user:a").await.0, 700);
    assert_eq!(totals(&service, "user:b").await.0, 300);
    let (status, stored) = service.get("/v1/ledger/transfers/t-1").await;
    assert_eq!((status, stored), (200, first));
    assert_balanced(&service).await;
}

/// Each transfer request leaves one audit line: a created transfer's is written in the
/// transfer's own store job (one group commit, not two), a replay's by the ingress, a refusal's
/// by no one.
#[tokio::test]
async fn each_transfer_request_leaves_one_audit_line() {
    let root = tempfile::tempdir().unwrap();
    let service = Service::start_in_process(root.path(), Options::default()).await;
    two_users(&service, 1_000).await;
    let body = transfer_body("audited", "user:a", "user:b", 10);
    assert_eq!(service.post("/v1/ledger/transfers", &body).await.0, 201);
    assert_eq!(service.post("/v1/ledger/transfers", &body).await.0, 200);
    let refused = transfer_body("audited", "user:a", "user:b", 11);
    assert_eq!(service.post("/v1/ledger/transfers", &refused).await.0, 409);
    // The replay's line is queued as its answer leaves: wait for it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let statuses = loop {
        let (status, page) = service.get("/v1/audit").await;
        assert_eq!(status, 200, "{page}");
        let statuses: Vec<u64> = page["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["route"] == "/v1/ledger/transfers")
            .map(|e| e["status"].as_u64().unwrap())
            .collect();
        if statuses.len() >= 2 || Instant::now() > deadline {
            break statuses;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(statuses, [201, 200]);
}

#[tokio::test]
async fn insufficient_funds_leave_balances_untouched() {
    let root = tempfile::tempdir().unwrap();
    let service = Service::start_in_process(root.path(), Options::default()).await;
    two_users(&service, 100).await;
    let before = (
        account(&service, "user:a").await,
        account(&service, "user:b").await,
    );
    let body = transfer_body("t-big", "user:a", "user:b", 101);
    let (status, error) = service.post("/v1/ledger/transfers", &body).await;
    assert_eq!(status, 422, "{error}");
    assert_eq!(error["error"]["code"], "INSUFFICIENT_FUNDS");
    let after = (
        account(&service, "user:a").await,
        account(&service, "user:b").await,
    );
    assert_eq!(after, before);
    let (status, _) = service.get("/v1/ledger/transfers/t-big").await;
    assert_eq!(status, 404);
    let (_, history) = service.get("/v1/ledger/accounts/user:b/transfers").await;
    assert_eq!(history["transfers"].as_array().unwrap().len(), 0);
    let unknown = transfer_body("t-x", "user:a", "user:nobody", 1);
    let (status, error) = service.post("/v1/ledger/transfers", &unknown).await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (404, Some("ACCOUNT_NOT_FOUND"))
    );
    assert_balanced(&service).await;
}

#[tokio::test]
async fn pending_then_post_for_less_releases_the_rest() {
    let root = tempfile::tempdir().unwrap();
    let service = Service::start_in_process(root.path(), Options::default()).await;
    two_users(&service, 1_000).await;
    let mut body = transfer_body("p-1", "user:a", "user:b", 600);
    body["pending"] = json!(true);
    let (status, pending) = service.post("/v1/ledger/transfers", &body).await;
    assert_eq!((status, pending["status"].as_str()), (201, Some("pending")));
    assert_eq!(totals(&service, "user:a").await, (1_000, 400, 600, 0));
    assert_eq!(totals(&service, "user:b").await, (0, 0, 0, 600));
    let spend = transfer_body("t-over", "user:a", "user:b", 401);
    assert_eq!(service.post("/v1/ledger/transfers", &spend).await.0, 422);

    let path = "/v1/ledger/transfers/p-1/post";
    let (status, error) = service.post(path, &json!({"amount": 601})).await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (422, Some("EXCEEDS_PENDING_AMOUNT"))
    );
    let (status, posted) = service.post(path, &json!({"amount": 250})).await;
    assert_eq!(status, 200, "{posted}");
    assert_eq!(
        (posted["status"].as_str(), posted["posted_amount"].as_u64()),
        (Some("posted"), Some(250))
    );
    assert_eq!(totals(&service, "user:a").await, (750, 750, 0, 0));
    assert_eq!(totals(&service, "user:b").await, (250, 250, 0, 0));
    assert_eq!(service.post(path, &json!({"amount": 250})).await.0, 200);
    let (status, error) = service
        .post("/v1/ledger/transfers/p-1/void", &json!({}))
        .await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (409, Some("TRANSFER_NOT_PENDING"))
    );
    assert_eq!(totals(&service, "user:a").await, (750, 750, 0, 0));
    assert_balanced(&service).await;
}

#[tokio::test]
async fn pending_then_void_or_timeout_releases_everything() {
    let root = tempfile::tempdir().unwrap();
    let service = Service::start_in_process(root.path(), Options::default()).await;
    two_users(&service, 1_000).await;
    let mut voided = transfer_body("p-void", "user:a", "user:b", 400);
    voided["pending"] = json!(true);
    let mut timed = transfer_body("p-timeout", "user:a", "user:b", 500);
    timed["pending"] = json!(true);
    timed["timeout_secs"] = json!(1);
    assert_eq!(service.post("/v1/ledger/transfers", &voided).await.0, 201);
    assert_eq!(service.post("/v1/ledger/transfers", &timed).await.0, 201);
    assert_eq!(totals(&service, "user:a").await, (1_000, 100, 900, 0));

    let (status, body) = service
        .post("/v1/ledger/transfers/p-void/void", &json!({}))
        .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("voided")),
        "{body}"
    );
    assert_eq!(totals(&service, "user:a").await, (1_000, 500, 500, 0));

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, transfer) = service.get("/v1/ledger/transfers/p-timeout").await;
        if transfer["status"] == "expired" {
            break;
        }
        assert!(Instant::now() < deadline, "never expired: {transfer}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(totals(&service, "user:a").await, (1_000, 1_000, 0, 0));
    assert_eq!(totals(&service, "user:b").await, (0, 0, 0, 0));
    let (status, error) = service
        .post("/v1/ledger/transfers/p-timeout/post", &json!({}))
        .await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (409, Some("TRANSFER_EXPIRED"))
    );
    assert_balanced(&service).await;
}

#[tokio::test]
async fn history_is_paginated_newest_first() {
    let root = tempfile::tempdir().unwrap();
    let service = Service::start_in_process(root.path(), Options::default()).await;
    two_users(&service, 1_000).await;
    for n in 0..5 {
        let body = transfer_body(&format!("h-{n}"), "user:a", "user:b", 1);
        assert_eq!(service.post("/v1/ledger/transfers", &body).await.0, 201);
    }
    let mut seen = Vec::new();
    let mut path = "/v1/ledger/accounts/user:b/transfers?limit=2".to_owned();
    loop {
        let (status, page) = service.get(&path).await;
        assert_eq!(status, 200, "{page}");
        for transfer in page["transfers"].as_array().unwrap() {
            seen.push(transfer["id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(cursor) => {
                path = format!("/v1/ledger/accounts/user:b/transfers?limit=2&cursor={cursor}")
            }
            None => break,
        }
    }
    assert_eq!(seen, ["h-4", "h-3", "h-2", "h-1", "h-0"]);
    let (_, page) = service.get("/v1/ledger/accounts/user:a/transfers").await;
    assert_eq!(page["transfers"].as_array().unwrap().len(), 6);
    for bad in ["limit=0", "limit=501", "limit=x", "cursor=nope"] {
        let (status, error) = service
            .get(&format!("/v1/ledger/accounts/user:a/transfers?{bad}"))
            .await;
        assert_eq!(
            (status, error["error"]["code"].as_str()),
            (422, Some("INVALID_FIELD")),
            "{bad}"
        );
    }
}

/// A tiny deterministic generator: the storm needs variety, not quality.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

fn storm_user(n: u64) -> String {
    format!("user:storm-{n}")
}

async fn fund_storm_users(service: &Service) {
    for n in 0..STORM_USERS as u64 {
        open_account(service, &storm_user(n)).await;
        mint(service, &storm_user(n), STORM_FUNDING).await;
    }
}

/// What one storm client saw.
#[derive(Default)]
struct ClientOutcome {
    /// Transfers answered 201/200, with their bodies.
    acknowledged: Vec<Value>,
    /// Transfers refused with INSUFFICIENT_FUNDS.
    refused: usize,
    /// Requests that got no answer (the service was killed).
    lost: usize,
}

/// One client: `STORM_TRANSFERS_PER_CLIENT` random transfers between storm users. With
/// `tolerate_loss`, a request without an answer ends the client instead of failing the test.
async fn storm_client(
    base: String,
    client_number: usize,
    acknowledged_count: Arc<AtomicUsize>,
    tolerate_loss: bool,
) -> ClientOutcome {
    let client = crate::helpers::client_builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut random = XorShift(0x9E37_79B9_7F4A_7C15 ^ ((client_number as u64 + 1) * 0x1000_0001));
    let mut outcome = ClientOutcome::default();
    for n in 0..STORM_TRANSFERS_PER_CLIENT {
        let debit = random.next(STORM_USERS as u64);
        let credit = (debit + 1 + random.next(STORM_USERS as u64 - 1)) % STORM_USERS as u64;
        let amount = 1 + random.next(STORM_AMOUNT_MAX);
        let id = format!("storm-{client_number}-{n}");
        let body = transfer_body(&id, &storm_user(debit), &storm_user(credit), amount);
        let sent = client
            .post(format!("{base}/v1/ledger/transfers"))
            .json(&body)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(_) if tolerate_loss => {
                outcome.lost += 1;
                return outcome;
            }
            Err(error) => panic!("transfer {id}: {error}"),
        };
        let status = response.status().as_u16();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        match (status, answer["error"]["code"].as_str()) {
            (201 | 200, _) => {
                acknowledged_count.fetch_add(1, Ordering::Relaxed);
                outcome.acknowledged.push(body);
            }
            (422, Some("INSUFFICIENT_FUNDS")) => outcome.refused += 1,
            _ if tolerate_loss => {
                outcome.lost += 1;
                return outcome;
            }
            _ => panic!("transfer {id}: {status} {answer}"),
        }
    }
    outcome
}

fn start_storm(
    base: &str,
    acknowledged_count: &Arc<AtomicUsize>,
    tolerate_loss: bool,
) -> JoinSet<ClientOutcome> {
    let mut clients = JoinSet::new();
    for client_number in 0..STORM_CLIENTS {
        clients.spawn(storm_client(
            base.to_owned(),
            client_number,
            acknowledged_count.clone(),
            tolerate_loss,
        ));
    }
    clients
}

/// Every acknowledged transfer is stored as sent; the audit balances; no storm user is below
/// zero; the storm users together still hold exactly what was minted for them.
async fn check_books(service: &Service, acknowledged: &[Value]) {
    let mut ids = HashSet::new();
    for body in acknowledged {
        let id = body["id"].as_str().unwrap();
        assert!(ids.insert(id.to_owned()), "acknowledged twice: {id}");
        let (status, stored) = service.get(&format!("/v1/ledger/transfers/{id}")).await;
        assert_eq!(status, 200, "acknowledged transfer {id} is missing");
        for field in ["debit_account", "credit_account", "amount"] {
            assert_eq!(stored[field], body[field], "{id}");
        }
        assert_eq!(stored["status"], "posted");
    }
    let audit = assert_balanced(service).await;
    assert!(
        audit["violations"].as_array().unwrap().is_empty(),
        "{audit}"
    );
    let mut total = 0;
    for n in 0..STORM_USERS as u64 {
        let (balance, available, _, _) = totals(service, &storm_user(n)).await;
        assert!(available >= 0, "{} is at {available}", storm_user(n));
        total += balance;
    }
    assert_eq!(total, (STORM_FUNDING * STORM_USERS as u64) as i64);
}

#[tokio::test]
async fn a_storm_of_concurrent_transfers_keeps_the_books_balanced() {
    let root = tempfile::tempdir().unwrap();
    let service = Service::start_in_process(root.path(), Options::default()).await;
    fund_storm_users(&service).await;
    let count = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut clients = start_storm(&service.base, &count, false);
    let mut acknowledged = Vec::new();
    let mut refused = 0;
    while let Some(outcome) = clients.join_next().await {
        let outcome = outcome.unwrap();
        acknowledged.extend(outcome.acknowledged);
        refused += outcome.refused;
    }
    eprintln!(
        "storm: {} acknowledged, {refused} refused in {:?}",
        acknowledged.len(),
        started.elapsed()
    );
    assert_eq!(
        acknowledged.len() + refused,
        STORM_CLIENTS * STORM_TRANSFERS_PER_CLIENT
    );
    assert!(
        refused > 0,
        "no transfer hit INSUFFICIENT_FUNDS; raise STORM_AMOUNT_MAX"
    );
    assert!(!acknowledged.is_empty());
    check_books(&service, &acknowledged).await;
}

#[tokio::test]
async fn kill_9_during_a_storm_loses_no_acknowledged_transfer() {
    let root = tempfile::tempdir().unwrap();
    let mut service = Service::start(root.path()).await;
    fund_storm_users(&service).await;
    let count = Arc::new(AtomicUsize::new(0));
    let mut clients = start_storm(&service.base, &count, true);
    let deadline = Instant::now() + Duration::from_secs(20);
    while count.load(Ordering::Relaxed) < STORM_CLIENTS * STORM_TRANSFERS_PER_CLIENT / 4 {
        assert!(Instant::now() < deadline, "the storm did not get going");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    service.kill_9();
    let mut acknowledged = Vec::new();
    let mut lost = 0;
    while let Some(outcome) = clients.join_next().await {
        let outcome = outcome.unwrap();
        acknowledged.extend(outcome.acknowledged);
        lost += outcome.lost;
    }
    eprintln!(
        "killed after {} acknowledged transfers; {lost} clients lost an answer",
        acknowledged.len()
    );
    let service = Service::start(root.path()).await;
    check_books(&service, &acknowledged).await;
    assert_eq!(totals(&service, "user:local").await.0, 1_000_000_000);
}

fn cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_glitchlab"))
        .arg("ledger")
        .args(args)
        .env("RUST_LOG", "warn")
        .env("GLITCHLAB_TOKEN", crate::helpers::ADMIN_TOKEN)
        .output()
        .unwrap()
}

#[tokio::test]
async fn the_cli_reads_balance_history_and_audit() {
    let root = tempfile::tempdir().unwrap();
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let url = service.base.clone();
    let output = tokio::task::spawn_blocking(move || {
        [
            // People read tokens; `--json` keeps the service's micro-token integers.
            cli(&["--url", &url, "balance", "user:local", "--json"]),
            cli(&["--url", &url, "history", "user:local"]),
            cli(&["--url", &url, "audit", "--json"]),
            cli(&["--url", &url, "balance", "user:nobody"]),
            cli(&["--url", "http://127.0.0.1:9", "audit"]),
        ]
    })
    .await
    .unwrap();
    let stdout = |n: usize| String::from_utf8_lossy(&output[n].stdout).into_owned();
    let stderr = |n: usize| String::from_utf8_lossy(&output[n].stderr).into_owned();
    assert!(output[0].status.success(), "{}", stderr(0));
    let balance: Value = serde_json::from_str(&stdout(0)).unwrap();
    assert_eq!(balance["balance"], 1_000_000_000);
    assert!(output[1].status.success(), "{}", stderr(1));
    assert!(stdout(1).contains("genesis:user:local"), "{}", stdout(1));
    assert!(output[2].status.success(), "{}", stderr(2));
    assert!(stdout(2).contains("\"balanced\": true"), "{}", stdout(2));
    assert!(!output[3].status.success());
    assert!(stderr(3).contains("ACCOUNT_NOT_FOUND"), "{}", stderr(3));
    assert!(!output[4].status.success());
    assert!(
        stderr(4).contains("cannot reach the service"),
        "{}",
        stderr(4)
    );
}

#[cfg(feature = "failpoints")]
#[tokio::test]
async fn a_ledger_crash_loses_the_answer_not_the_books() {
    let root = tempfile::tempdir().unwrap();
    let options = super::helpers::Options {
        config: None,
        env: vec![("FAILPOINTS".into(), "ledger.handle=1*off->1*panic".into())],
        ..Default::default()
    };
    let service = Service::start_with(root.path(), options).await;
    open_account(&service, "user:a").await;
    let body = transfer_body("t-crash", "user:local", "user:a", 10);
    let (status, error) = service.post("/v1/ledger/transfers", &body).await;
    assert_eq!(status, 503, "{error}");
    assert_eq!(error["error"]["code"], "PERSONA_UNAVAILABLE");
    // The caller retries with the same id once Compass has restarted the Ledger.
    let deadline = Instant::now() + Duration::from_secs(10);
    let transfer = loop {
        let (status, answer) = service.post("/v1/ledger/transfers", &body).await;
        if status == 201 {
            break answer;
        }
        assert!(Instant::now() < deadline, "{status} {answer}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(transfer["status"], "posted");
    assert_eq!(totals(&service, "user:a").await.0, 10);
    assert_eq!(service.actor("ledger").await["restarts"], 1);
    assert_balanced(&service).await;
}
