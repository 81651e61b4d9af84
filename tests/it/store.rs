//! The store writer stalled on purpose (`--features failpoints`: `store.stall=return(<file>)`
//! holds every group commit while the file exists): the watchdog reports it on `/readyz`,
//! `/metrics` and in the log, `/healthz` keeps answering, writes push back with `503` and
//! `Retry-After` instead of hanging, and everything recovers when the writer moves again.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{Options, Service};

/// The watchdog's bound in this test.
const STALL_SECS: u64 = 1;
/// A write's answer comes within the store's enqueue wait (1 s) plus its answer wait (5 s); the
/// rest is slack for a loaded machine.
const WRITE_ANSWER_LIMIT: Duration = Duration::from_secs(9);
/// Concurrent writes sent while the writer is held: more than the queue (2) holds.
const WRITES_WHILE_STALLED: usize = 6;

fn options(marker: &std::path::Path) -> Options {
    Options {
        config: Some(format!(
            "[storage]\nstall_secs = {STALL_SECS}\nwrite_queue_max = 2\n"
        )),
        env: vec![(
            "FAILPOINTS".into(),
            format!("store.stall=return({})", marker.display()),
        )],
        ..Default::default()
    }
}

/// Polls `path` until `accept` holds for its (status, body), at most `limit`.
async fn poll_until(
    service: &Service,
    path: &str,
    limit: Duration,
    accept: impl Fn(u16, &Value) -> bool,
) -> (u16, Value) {
    let started = Instant::now();
    loop {
        let (status, body) = service.get(path).await;
        if accept(status, &body) || started.elapsed() > limit {
            return (status, body);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (at most 5 s: a few watchdog ticks) until `/metrics` holds `line`.
async fn wait_for_metric(service: &Service, line: &str) {
    let started = Instant::now();
    while !metrics_text(service).await.contains(line) {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "`{line}` is not on /metrics"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn metrics_text(service: &Service) -> String {
    crate::helpers::client()
        .get(format!("{}/metrics", service.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_writer_is_reported_pushes_back_and_recovers() {
    let root = tempfile::tempdir().unwrap();
    let marker = root.path().join("stall-the-writer");
    let service = Service::start_with(root.path(), options(&marker)).await;
    let (status, _) = service.get("/readyz").await;
    assert_eq!(status, 200, "ready before the stall");

    std::fs::write(&marker, "").unwrap();
    // Writes sent while the writer holds its group: each must be answered, with back-pressure.
    let client = crate::helpers::client_builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut writes = tokio::task::JoinSet::new();
    for n in 0..WRITES_WHILE_STALLED {
        let (client, url) = (
            client.clone(),
            format!("{}/v1/ledger/accounts", service.base),
        );
        writes.spawn(async move {
            let sent = Instant::now();
            let body = json!({"id": format!("user:stalled-{n}"), "kind": "user"});
            let response = client.post(url).json(&body).send().await.unwrap();
            let status = response.status().as_u16();
            let retry_after = response.headers().get("retry-after").is_some();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            (status, body, retry_after, sent.elapsed())
        });
    }

    // Until the stall bound passes, a persona held up by the full queue may be what `/readyz`
    // names first (it pings each through its mailbox); then it names `storage`.
    let (status, body) = poll_until(&service, "/readyz", Duration::from_secs(8), |s, b| {
        s == 503 && b.to_string().contains("storage")
    })
    .await;
    assert_eq!(status, 503, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("storage"), "{body}");
    let healthz_started = Instant::now();
    let (status, _) = service.get("/healthz").await;
    assert_eq!(status, 200);
    assert!(
        healthz_started.elapsed() < Duration::from_millis(500),
        "/healthz took {:?} while the writer was stalled",
        healthz_started.elapsed()
    );
    wait_for_metric(&service, "glitchlab_store_writer_stalled 1").await;

    let mut codes = Vec::new();
    while let Some(write) = writes.join_next().await {
        let (status, body, retry_after, took) = write.unwrap();
        assert!(took < WRITE_ANSWER_LIMIT, "a write took {took:?}: {body}");
        assert_eq!(status, 503, "{body}");
        assert!(retry_after, "no Retry-After on {body}");
        codes.push(
            body["error"]["code"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    assert!(
        codes
            .iter()
            .all(|code| code == "STORE_BUSY" || code == "STORE_TIMEOUT"),
        "{codes:?}"
    );
    assert!(
        codes.iter().any(|code| code == "STORE_BUSY"),
        "a full queue should refuse at once: {codes:?}"
    );
    assert!(
        service
            .log()
            .contains("store writer made no progress for storage.stall_secs"),
        "the stall is not in the log"
    );

    std::fs::remove_file(&marker).unwrap();
    let (status, body) = poll_until(&service, "/readyz", Duration::from_secs(10), |s, _| {
        s == 200
    })
    .await;
    assert_eq!(status, 200, "not ready again after the stall: {body}");
    // The watchdog clears the stall and then the gauge in one tick: the gauge may lag /readyz.
    wait_for_metric(&service, "glitchlab_store_writer_stalled 0").await;
    // The store works again: a new write is answered and durable.
    let (status, body) = service
        .post(
            "/v1/ledger/accounts",
            &json!({"id": "user:after-the-stall", "kind": "user"}),
        )
        .await;
    assert!(status == 200 || status == 201, "{status} {body}");
    let (status, _) = service
        .get("/v1/ledger/accounts/user:after-the-stall")
        .await;
    assert_eq!(status, 200);
}
