//! Notifications from the durable outbox reach real HTTP receivers: a webhook that is down for a
//! while then up gets every notification exactly once (also across a restart), in order, each
//! HMAC-signed; a Slack receiver never gets more than one message a second; an email receiver (a
//! fake SMTP server) gets every notification once, in order, after it recovers; an incident that
//! still needs a person is reminded every `repeat_interval` until acknowledged (across a restart);
//! `group_interval` holds across a restart; rejecting a gated step pages; and
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

/// One mail a fake SMTP server accepted.
#[derive(Clone, Debug)]
struct Mail {
    from: String,
    to: Vec<String>,
    data: String,
}

/// A stateful fake SMTP server on 127.0.0.1:0 speaking the subset of RFC 5321 a client needs
/// (greeting, EHLO/HELO, MAIL, RCPT, DATA with dot-unstuffing, RSET, NOOP, QUIT; anything else
/// `500`, commands out of order `503`). While `up` is false it answers `MAIL` with the transient
/// `451`, as a server that is overloaded does.
#[derive(Clone, Default)]
struct FakeSmtp {
    up: Arc<AtomicBool>,
    refused: Arc<std::sync::atomic::AtomicUsize>,
    mails: Arc<Mutex<Vec<Mail>>>,
}

impl FakeSmtp {
    /// Serves in the background; answers `smtp://127.0.0.1:port`.
    async fn serve(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = self.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let server = server.clone();
                tokio::spawn(async move { server.session(socket).await });
            }
        });
        format!("smtp://{addr}")
    }

    async fn session(&self, socket: tokio::net::TcpStream) {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let (read, mut write) = socket.into_split();
        let mut lines = BufReader::new(read).lines();
        let say = |text: &str| format!("{text}\r\n").into_bytes();
        write.write_all(&say("220 fake.test ESMTP")).await.unwrap();
        let (mut from, mut to) = (None::<String>, Vec::<String>::new());
        while let Ok(Some(line)) = lines.next_line().await {
            let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
            let answer = match verb.as_str() {
                "EHLO" => "250-fake.test greets you\r\n250 8BITMIME".to_owned(),
                "HELO" | "NOOP" => "250 OK".into(),
                "RSET" => {
                    (from, to) = (None, Vec::new());
                    "250 OK".into()
                }
                "MAIL" if !self.up.load(Ordering::SeqCst) => {
                    self.refused.fetch_add(1, Ordering::SeqCst);
                    "451 4.3.0 try again later".into()
                }
                "MAIL" => {
                    from = Some(line.get(10..).unwrap_or("").trim().to_owned());
                    "250 2.1.0 OK".into()
                }
                "RCPT" if from.is_some() => {
                    to.push(line.get(8..).unwrap_or("").trim().to_owned());
                    "250 2.1.5 OK".into()
                }
                "DATA" if from.is_some() && !to.is_empty() => {
                    write
                        .write_all(&say("354 end with <CRLF>.<CRLF>"))
                        .await
                        .unwrap();
                    let mut data = String::new();
                    while let Ok(Some(l)) = lines.next_line().await {
                        if l == "." {
                            break;
                        }
                        data.push_str(
                            l.strip_prefix('.')
                                .filter(|_| l.starts_with(".."))
                                .unwrap_or(&l),
                        );
                        data.push('\n');
                    }
                    self.mails.lock().unwrap().push(Mail {
                        from: from.take().unwrap_or_default(),
                        to: std::mem::take(&mut to),
                        data,
                    });
                    "250 2.0.0 queued".into()
                }
                "RCPT" | "DATA" => "503 5.5.1 bad sequence of commands".into(),
                "QUIT" => {
                    let _ = write.write_all(&say("221 2.0.0 bye")).await;
                    return;
                }
                _ => "500 5.5.2 unknown command".into(),
            };
            if write.write_all(&say(&answer)).await.is_err() {
                return;
            }
        }
    }

    fn mails(&self) -> Vec<Mail> {
        self.mails.lock().unwrap().clone()
    }
}

/// The notification ids a mail's body names, in order.
fn mailed_ids(mail: &Mail) -> Vec<String> {
    mail.data
        .lines()
        .filter_map(|l| l.strip_prefix("notification: "))
        .map(|l| l.split_whitespace().next().unwrap_or("").to_owned())
        .collect()
}

#[tokio::test]
async fn an_email_receiver_gets_every_notification_once_in_order_after_the_server_recovers() {
    let root = tempfile::tempdir().unwrap();
    let smtp = FakeSmtp::default();
    let url = smtp.serve().await;
    let notifications = format!(
        "[[notifications.receivers]]\nname = \"mail\"\nkind = \"email\"\nurl = \"{url}\"\n\
         from = \"Glitchlab <glitchlab@example.test>\"\nto = [\"oncall@example.test\", \"lead@example.test\"]\n\n\
         [[notifications.routes]]\nreceiver = \"mail\"\nkinds = [\"incident_needs_human\"]\n"
    );
    let options = options(root.path(), &notifications);
    let mut service = Service::start_with(root.path(), options.clone()).await;
    let mut incidents = Vec::new();
    for signal in ["first", "second", "third"] {
        incidents.push(alert(&service, "web", signal).await);
    }
    wait_until(&service, "/v1/notifications", |b| {
        b["deliveries"].as_array().is_some_and(|d| {
            d.iter().any(|d| {
                d["receiver_kind"] == "email"
                    && d["last_error"].as_str().is_some_and(|e| e.contains("451"))
            })
        })
    })
    .await;
    assert!(smtp.mails().is_empty());
    smtp.up.store(true, Ordering::SeqCst);

    let done = wait_until(&service, "/v1/notifications", |b| {
        b["deliveries"]
            .as_array()
            .is_some_and(|d| d.len() == 3 && d.iter().all(|d| !d["delivered_at"].is_null()))
    })
    .await;
    let mut ids_by_incident = std::collections::HashMap::new();
    for d in done["deliveries"].as_array().unwrap() {
        ids_by_incident.insert(
            d["notification_id"].as_str().unwrap().to_owned(),
            d["subject"].as_str().unwrap().to_owned(),
        );
    }
    let mails = smtp.mails();
    assert!(smtp.refused.load(Ordering::SeqCst) >= 1);
    let mut subjects = Vec::new();
    for mail in &mails {
        assert_eq!(mail.from, "<glitchlab@example.test>", "{mail:?}");
        assert_eq!(
            mail.to,
            vec!["<oncall@example.test>", "<lead@example.test>"],
            "{mail:?}"
        );
        assert!(
            mail.data
                .contains("Subject: [glitchlab] incident_needs_human web:"),
            "{}",
            mail.data
        );
        for id in mailed_ids(mail) {
            subjects.push(ids_by_incident[&id].clone());
        }
    }
    assert_eq!(subjects, incidents, "each once, in order");

    service.terminate(Duration::from_secs(10));
    let _service = Service::start_with(root.path(), options).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        smtp.mails().len(),
        mails.len(),
        "nothing mailed again after a restart"
    );
}

/// The `repeat` numbers of the acknowledged webhook messages, in arrival order, with when.
fn repeats(got: &[Received]) -> Vec<(u64, Instant)> {
    got.iter()
        .filter(|r| r.answered_ok)
        .flat_map(|r| {
            let body: Value = serde_json::from_slice(&r.body).unwrap();
            body["notifications"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| (n["repeat"].as_u64().unwrap(), r.at))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test]
async fn an_incident_that_needs_a_person_is_reminded_every_repeat_interval_until_acknowledged() {
    let root = tempfile::tempdir().unwrap();
    let receiver = Receiver::default();
    receiver.up.store(true, Ordering::SeqCst);
    let url = receiver.serve().await;
    let notifications = format!(
        "[[notifications.receivers]]\nname = \"pager\"\nkind = \"webhook\"\nurl = \"{url}\"\n\
         secret_env = \"NOTIFY_SECRET\"\n\n[[notifications.routes]]\nreceiver = \"pager\"\n\
         kinds = [\"incident_needs_human\"]\nrepeat_interval = \"2s\"\n"
    );
    let options = options(root.path(), &notifications);
    let mut service = Service::start_with(root.path(), options.clone()).await;
    let incident = alert(&service, "web", "mystery").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while repeats(&receiver.got()).len() < 2 {
        assert!(Instant::now() < deadline, "no reminder: {}", service.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The schedule is in the outbox: a restart keeps reminding.
    service.terminate(Duration::from_secs(10));
    let service = Service::start_with(root.path(), options).await;
    while repeats(&receiver.got()).len() < 3 {
        assert!(
            Instant::now() < deadline,
            "no reminder after the restart: {}",
            service.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, acked) = service
        .post(&format!("/v1/incidents/{incident}/ack"), &json!({}))
        .await;
    assert_eq!(status, 200, "{acked}");
    let at_ack = repeats(&receiver.got()).len();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let seen = repeats(&receiver.got());
    assert!(
        seen.len() <= at_ack + 1,
        "at most one reminder in flight at the ack, then none: {} then {}",
        at_ack,
        seen.len()
    );
    let numbers: Vec<u64> = seen.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        numbers,
        (0..seen.len() as u64).collect::<Vec<_>>(),
        "counted up, once each"
    );
    for pair in seen.windows(2) {
        let gap = pair[1].1.duration_since(pair[0].1);
        assert!(
            gap >= Duration::from_millis(1800),
            "reminders {gap:?} apart"
        );
    }
    delivered_subjects(&receiver.got());
}

#[tokio::test]
async fn group_interval_holds_across_a_restart() {
    let root = tempfile::tempdir().unwrap();
    let receiver = Receiver::default();
    receiver.up.store(true, Ordering::SeqCst);
    let url = receiver.serve().await;
    let notifications = format!(
        "[[notifications.receivers]]\nname = \"pager\"\nkind = \"webhook\"\nurl = \"{url}\"\n\
         secret_env = \"NOTIFY_SECRET\"\n\n[[notifications.routes]]\nreceiver = \"pager\"\n\
         kinds = [\"incident_needs_human\"]\ngroup_interval = \"1h\"\n"
    );
    let options = options(root.path(), &notifications);
    let mut service = Service::start_with(root.path(), options.clone()).await;
    alert(&service, "web", "first").await;
    wait_until(&service, "/v1/notifications", |b| {
        b["deliveries"][0]["delivered_at"].is_string()
    })
    .await;
    service.terminate(Duration::from_secs(10));
    let service = Service::start_with(root.path(), options).await;
    let second = alert(&service, "web", "second").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, listed) = service.get("/v1/notifications").await;
    let pending = listed["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["subject"] == second.as_str())
        .cloned()
        .unwrap();
    assert!(
        pending["delivered_at"].is_null(),
        "sent before group_interval: {pending}"
    );
    assert_eq!(
        receiver.got().len(),
        1,
        "one message of the group in the hour"
    );
}

#[tokio::test]
async fn rejecting_a_gated_step_tells_people_the_incident_needs_a_human() {
    let root = tempfile::tempdir().unwrap();
    let receiver = Receiver::default();
    receiver.up.store(true, Ordering::SeqCst);
    let url = receiver.serve().await;
    let notifications = format!(
        "[[notifications.receivers]]\nname = \"pager\"\nkind = \"webhook\"\nurl = \"{url}\"\n\
         secret_env = \"NOTIFY_SECRET\"\n\n[[notifications.routes]]\nreceiver = \"pager\"\n\
         kinds = [\"incident_needs_human\"]\n"
    );
    let options = options(root.path(), &notifications);
    std::fs::write(
        root.path().join("runbooks").join("gated.yaml"),
        "name: gated\nmatch: {signal: needs_a_person}\nclassify: outage\nsteps:\n  \
         - {action: notify, gated: true, message: \"page\"}\n",
    )
    .unwrap();
    let service = Service::start_with(root.path(), options).await;
    let incident = alert(&service, "web", "needs_a_person").await;
    let path = format!("/v1/incidents/{incident}");
    wait_until(&service, &path, |i| i["awaiting"].is_object()).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        receiver.got().is_empty(),
        "an open incident is not a needs_human page"
    );
    let (status, body) = service.post(&format!("{path}/reject"), &json!({})).await;
    assert_eq!(status, 200, "{body}");
    let delivered = wait_until(&service, "/v1/notifications", |b| {
        b["deliveries"]
            .as_array()
            .is_some_and(|d| d.iter().any(|d| d["delivered_at"].is_string()))
    })
    .await;
    assert_eq!(delivered["deliveries"][0]["subject"], incident.as_str());
    assert_eq!(delivered_subjects(&receiver.got()), vec![incident]);
}
