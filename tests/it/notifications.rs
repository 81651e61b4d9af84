//! Notifications from the durable outbox reach real HTTP receivers: a webhook that is down for a
//! while then up gets every notification exactly once (also across a restart), in order, each
//! HMAC-signed; a Slack receiver never gets more than one message a second; and
//! `GET /v1/notifications` shows the failed attempts, then the delivery.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::helpers::{with_config, Options, Service};
use crate::ops::wait_until;

const SECRET: &str = "notify-test-secret";

/// One request a receiver got.
#[derive(Clone)]
struct Received {
    at: Instant,
    signature: Option<String>,
    body: Vec<u8>,
    answered_ok: bool,
}

/// A local HTTP receiver on 127.0.0.1:0 that answers 503 while `up` is false.
#[derive(Clone, Default)]
struct Receiver {
    up: Arc<AtomicBool>,
    got: Arc<Mutex<Vec<Received>>>,
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let up = r.up.load(Ordering::SeqCst);
    r.got.lock().unwrap().push(Received {
        at: Instant::now(),
        signature: headers
            .get("x-glitchlab-signature")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        body: body.to_vec(),
        answered_ok: up,
    });
    if up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

impl Receiver {
    /// Serves in the background; answers its URL.
    async fn serve(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(self.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}/hook")
    }

    fn got(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }
}

/// Config with an empty runbooks dir (every alert goes to a human) and `notifications`.
fn options(root: &Path, notifications: &str) -> Options {
    let ops_file = root.join("ops.yaml");
    std::fs::write(&ops_file, "apps: {}\n").unwrap();
    let runbooks = root.join("runbooks");
    std::fs::create_dir_all(&runbooks).unwrap();
    let mut options = with_config(&format!(
        "[paths]\nops_file = \"{}\"\nrunbooks_dir = \"{}\"\n\n{notifications}",
        ops_file.display(),
        runbooks.display()
    ));
    options.env = vec![("NOTIFY_SECRET".into(), SECRET.into())];
    options
}

/// Posts an alert; answers the incident it opened.
async fn alert(service: &Service, app: &str, signal: &str) -> String {
    let body = json!({"app": app, "signal": signal});
    let (status, answer) = service.post("/v1/alerts", &body).await;
    assert_eq!(status, 202, "{answer}");
    answer["incidents"][0].as_str().unwrap().to_owned()
}

fn expected_signature(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The subjects (incident ids) of the acknowledged messages, in the order they arrived; checks
/// every message's signature on the way.
fn delivered_subjects(got: &[Received]) -> Vec<String> {
    let mut subjects = Vec::new();
    for r in got {
        assert_eq!(
            r.signature.as_deref(),
            Some(expected_signature(&r.body).as_str()),
            "every message is signed over its exact body"
        );
        if !r.answered_ok {
            continue;
        }
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        for n in body["notifications"].as_array().unwrap() {
            assert_eq!(n["kind"], "incident_needs_human", "{n}");
            subjects.push(n["subject"].as_str().unwrap().to_owned());
        }
    }
    subjects
}

#[tokio::test]
async fn a_webhook_down_then_up_gets_every_notification_once_in_order_and_signed() {
    let root = tempfile::tempdir().unwrap();
    let receiver = Receiver::default();
    let url = receiver.serve().await;
    let notifications = format!(
        "[[notifications.receivers]]\nname = \"pager\"\nkind = \"webhook\"\nurl = \"{url}\"\n\
         secret_env = \"NOTIFY_SECRET\"\n\n[[notifications.routes]]\nreceiver = \"pager\"\n\
         kinds = [\"incident_needs_human\"]\n"
    );
    let options = options(root.path(), &notifications);
    let mut service = Service::start_with(root.path(), options.clone()).await;
    let mut incidents = Vec::new();
    for signal in ["first", "second", "third"] {
        incidents.push(alert(&service, "web", signal).await);
    }

    // Down: attempts fail and GET /v1/notifications says so.
    let failing = wait_until(&service, "/v1/notifications", |b| {
        b["deliveries"].as_array().is_some_and(|d| {
            d.iter().any(|d| {
                d["attempts"].as_u64() >= Some(1)
                    && d["last_error"] == "HTTP 503 Service Unavailable"
            })
        })
    })
    .await;
    assert!(
        failing["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["delivered_at"].is_null()),
        "{failing}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(receiver.got().iter().all(|r| !r.answered_ok));
    receiver.up.store(true, Ordering::SeqCst);

    // Up: every one delivered, once, in order.
    let done = wait_until(&service, "/v1/notifications", |b| {
        b["deliveries"]
            .as_array()
            .is_some_and(|d| d.len() == 3 && d.iter().all(|d| !d["delivered_at"].is_null()))
    })
    .await;
    for d in done["deliveries"].as_array().unwrap() {
        assert_eq!(d["receiver"], "pager", "{d}");
        assert_eq!(d["receiver_kind"], "webhook", "{d}");
        assert!(
            d["attempts"].as_u64().unwrap() >= 2,
            "a failed attempt, then the delivery: {d}"
        );
        assert!(d["last_error"].is_null(), "{d}");
    }
    assert_eq!(delivered_subjects(&receiver.got()), incidents);

    // A restart does not send again what was acknowledged.
    service.terminate(Duration::from_secs(10));
    let service = Service::start_with(root.path(), options).await;
    let before = receiver.got().len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        receiver.got().len(),
        before,
        "nothing re-sent after a restart"
    );
    assert_eq!(delivered_subjects(&receiver.got()), incidents);
    drop(service);
}

#[tokio::test]
async fn a_slack_receiver_gets_at_most_one_message_a_second() {
    let root = tempfile::tempdir().unwrap();
    let receiver = Receiver::default();
    receiver.up.store(true, Ordering::SeqCst);
    let url = receiver.serve().await;
    let notifications = format!(
        "[[notifications.receivers]]\nname = \"chat\"\nkind = \"slack\"\nurl = \"{url}\"\n\n\
         [[notifications.routes]]\nreceiver = \"chat\"\n"
    );
    let service = Service::start_with(root.path(), options(root.path(), &notifications)).await;
    // Five apps: five groups, so five messages, not one.
    for app in ["a1", "a2", "a3", "a4", "a5"] {
        alert(&service, app, "boom").await;
    }
    wait_until(&service, "/v1/notifications", |b| {
        b["deliveries"]
            .as_array()
            .is_some_and(|d| d.len() == 5 && d.iter().all(|d| !d["delivered_at"].is_null()))
    })
    .await;
    let got = receiver.got();
    assert_eq!(got.len(), 5, "one message per group");
    for r in &got {
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert!(
            body["text"]
                .as_str()
                .unwrap()
                .contains("incident_needs_human"),
            "{body}"
        );
        assert!(r.signature.is_none(), "Slack messages are not signed");
    }
    for pair in got.windows(2) {
        let gap = pair[1].at.duration_since(pair[0].at);
        assert!(
            gap >= Duration::from_millis(990),
            "two Slack messages {gap:?} apart"
        );
    }
}
