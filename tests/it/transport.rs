//! The transport and the browser protections against the real binary: HTTPS with a certificate
//! made here, the bind guard, `415`/`403`/`421` before anything runs, and the connection
//! timeouts and cap under idle and slowloris connections (loopback only, bounded counts and
//! times) while `/healthz` keeps answering.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::helpers::{git_repo, shell_task, with_config, Service};

/// Idle connections the attack opens. The test machine allows 20 000 descriptors (`ulimit -n`);
/// this test and the service each hold about 1 100 at the peak.
const IDLE_CONNECTIONS: usize = 1000;
/// Slowloris connections: a partial head, then one more header line every 200 ms.
const SLOW_CONNECTIONS: usize = 50;
/// How long `/healthz` may take during the attack.
const HEALTHZ_WITHIN: Duration = Duration::from_secs(1);

/// `127.0.0.1:PORT` of a service.
fn address(service: &Service) -> String {
    service.base.split("://").nth(1).unwrap().to_owned()
}

/// The number of tasks the service holds.
async fn task_count(service: &Service) -> usize {
    let (status, list) = service.get("/v1/tasks").await;
    assert_eq!(status, 200, "{list}");
    list["tasks"].as_array().unwrap().len()
}

/// `serve --bind BIND` with `config`, expected to refuse: its stderr (and no data dir made).
fn refused_start(root: &Path, bind: &str, config: &str) -> String {
    let path = root.join("glitchlab.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_glitchlab"))
        .args(["serve", "--bind", bind, "--config"])
        .arg(&path)
        .arg("--data-dir")
        .arg(root.join("data"))
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("serve --bind {bind} did not refuse to start");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "serve --bind {bind} exited 0: {stderr}");
    assert!(
        !root.join("data").exists(),
        "a refused start made its data dir"
    );
    stderr
}

#[tokio::test]
async fn https_serves_with_a_self_signed_certificate() {
    let root = tempfile::tempdir().unwrap();
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    let (cert_path, key_path) = (root.path().join("cert.pem"), root.path().join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, signing_key.serialize_pem()).unwrap();
    let config = format!(
        "[server]\ntls_cert = {:?}\ntls_key = {:?}\n",
        cert_path.display().to_string(),
        key_path.display().to_string()
    );
    let service = Service::start_with(root.path(), with_config(&config)).await;
    assert!(service.base.starts_with("https://"), "{}", service.base);

    // A client that trusts only the certificate made here verifies the chain and the address.
    let strict = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(cert.pem().as_bytes()).unwrap()])
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let healthz = strict
        .get(format!("{}/healthz", service.base))
        .send()
        .await
        .unwrap();
    assert_eq!(healthz.status(), 200);
    // The API works over it, JSON bodies and all.
    let (status, account) = service
        .post(
            "/v1/ledger/accounts",
            &json!({"id": "user:tls", "kind": "user"}),
        )
        .await;
    assert_eq!(status, 201, "{account}");
    // A client that does not know the certificate is refused by its own verifier.
    let unknown = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    assert!(unknown
        .get(format!("{}/healthz", service.base))
        .send()
        .await
        .is_err());
    // Plain HTTP on the TLS port gets no HTTP answer.
    let mut plain = TcpStream::connect(address(&service)).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut answer)).await;
    assert!(!answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
}

#[tokio::test]
async fn a_public_bind_needs_tls_or_allow_plain_http() {
    let root = tempfile::tempdir().unwrap();
    let stderr = refused_start(root.path(), "0.0.0.0:0", "");
    assert!(stderr.contains("allow_plain_http"), "{stderr}");
    assert!(stderr.contains("tls_cert"), "{stderr}");

    // With it, a wildcard bind serves, and the address a client reached counts as its `Host`.
    let root = tempfile::tempdir().unwrap();
    let config = "[server]\nallow_plain_http = true\n";
    std::fs::write(root.path().join("glitchlab.toml"), config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_glitchlab"))
        .args(["serve", "--bind", "0.0.0.0:0", "--config", "glitchlab.toml"])
        .env("GLITCHLAB_ADMIN_TOKEN", crate::helpers::ADMIN_TOKEN)
        .arg("--data-dir")
        .arg(root.path().join("data"))
        .current_dir(root.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let stdout = child.stdout.take().unwrap();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap();
    let port = line.trim().rsplit(':').next().unwrap().to_owned();
    let answer = crate::helpers::client()
        .get(format!("http://127.0.0.1:{port}/v1/tasks"))
        .send()
        .await
        .unwrap();
    let status = answer.status();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        line.starts_with("glitchlab listening on http://0.0.0.0:"),
        "{line}"
    );
    assert_eq!(status, 200);
}

#[tokio::test]
async fn auth_off_is_refused_on_a_public_bind_and_warned_about_on_loopback() {
    let root = tempfile::tempdir().unwrap();
    let config = "[server]\nauth = \"off\"\nallow_plain_http = true\n";
    let stderr = refused_start(root.path(), "0.0.0.0:0", config);
    assert!(stderr.contains("server.auth"), "{stderr}");

    let root = tempfile::tempdir().unwrap();
    let service = Service::start_with(root.path(), with_config("[server]\nauth = \"off\"\n")).await;
    assert_eq!(service.get("/healthz").await.0, 200);
    assert!(
        service.log().contains("server.auth = off"),
        "{}",
        service.log()
    );
}

#[tokio::test]
async fn a_body_that_is_not_json_is_refused_415_and_nothing_is_created() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let service = Service::start(root.path()).await;
    let task = shell_task(&repo, "echo hi > hello.txt", "true");

    for content_type in ["text/plain", "application/x-www-form-urlencoded"] {
        let answer = service
            .request(Method::POST, "/v1/tasks")
            .header("content-type", content_type)
            .body(task.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 415, "{content_type}");
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["error"]["code"], "UNSUPPORTED_MEDIA_TYPE", "{body}");
    }
    let missing = service
        .request(Method::POST, "/v1/tasks")
        .body(task.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 415);
    assert_eq!(task_count(&service).await, 0);

    // JSON with a parameter is JSON; a POST without a body needs no type.
    let answer = service
        .request(Method::POST, "/v1/tasks")
        .header("content-type", "application/json; charset=utf-8")
        .body(task.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 201);
    let id = answer.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let cancel = service
        .request(Method::POST, &format!("/v1/tasks/{id}/cancel"))
        .send()
        .await
        .unwrap();
    assert_ne!(cancel.status(), 415);
    assert_eq!(task_count(&service).await, 1);
}

#[tokio::test]
async fn a_foreign_origin_is_refused_403_and_nothing_is_created() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let config = "[server]\nallowed_origins = [\"http://ui.example:3000\"]\n";
    let service = Service::start_with(root.path(), with_config(config)).await;
    let task = shell_task(&repo, "echo hi > hello.txt", "true");

    let submit = |origin: &str| {
        service
            .request(Method::POST, "/v1/tasks")
            .header("origin", origin)
            .json(&task)
            .send()
    };
    for origin in ["http://evil.example", "null", "https://ui.example:3000"] {
        let answer = submit(origin).await.unwrap();
        assert_eq!(answer.status(), 403, "{origin}");
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["error"]["code"], "FORBIDDEN_ORIGIN", "{body}");
    }
    let read = service
        .request(Method::GET, "/v1/tasks")
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 403, "reads are refused too");
    assert_eq!(task_count(&service).await, 0);

    // The service's own origin and a listed one are served.
    let own = submit(&service.base).await.unwrap();
    assert_eq!(own.status(), 201);
    let listed = submit("http://ui.example:3000").await.unwrap();
    assert_eq!(listed.status(), 201);
    assert_eq!(task_count(&service).await, 2);
}

#[tokio::test]
async fn a_host_that_is_not_the_service_is_refused_421() {
    let root = tempfile::tempdir().unwrap();
    let config = "[server]\nhostnames = [\"glitch.internal\"]\n";
    let service = Service::start_with(root.path(), with_config(config)).await;
    let port = address(&service).rsplit(':').next().unwrap().to_owned();
    let get = |path: &str, host: String| {
        service
            .request(Method::GET, path)
            .header("host", host)
            .send()
    };

    // A DNS-rebinding page reaches the port under its own name.
    let answer = get("/v1/tasks", format!("evil.example:{port}"))
        .await
        .unwrap();
    assert_eq!(answer.status(), 421);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["error"]["code"], "MISDIRECTED_REQUEST", "{body}");
    for host in [format!("127.0.0.2:{port}"), "127.0.0.1:1".to_owned()] {
        assert_eq!(
            get("/v1/tasks", host.clone()).await.unwrap().status(),
            421,
            "{host}"
        );
    }
    // The address, `localhost` on loopback, and a listed name are served.
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "glitch.internal".to_owned(),
        format!("GLITCH.internal:{port}"),
    ] {
        assert_eq!(
            get("/v1/tasks", host.clone()).await.unwrap().status(),
            200,
            "{host}"
        );
    }
    // Probes are answered whatever they call the service.
    let probe = get("/healthz", "probe.example".to_owned()).await.unwrap();
    assert_eq!(probe.status(), 200);
}

#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_is_answered_408_and_closed() {
    let root = tempfile::tempdir().unwrap();
    let config = "[server]\nbody_read_timeout_secs = 1\n";
    let service = Service::start_with(root.path(), with_config(config)).await;
    let address = address(&service);
    let mut stream = TcpStream::connect(&address).await.unwrap();
    let head = format!(
        "POST /v1/ledger/accounts HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{",
        crate::helpers::ADMIN_TOKEN
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    // One byte every 200 ms: a body that never ends in time, though never silent for long.
    let closed = loop {
        tokio::select! {
            read = stream.read(&mut buffer) => match read {
                Ok(0) | Err(_) => break started.elapsed(),
                Ok(n) => answer.extend_from_slice(&buffer[..n]),
            },
            () = tokio::time::sleep(Duration::from_millis(200)) => {
                let _ = stream.write_all(b" ").await;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(10), "never closed");
    };
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("BODY_TIMEOUT"), "{answer}");
    assert!(
        (Duration::from_millis(900)..Duration::from_secs(4)).contains(&closed),
        "{closed:?}"
    );
    let (_, account) = service.get("/v1/ledger/accounts/user:never").await;
    assert_eq!(account["error"]["code"], "ACCOUNT_NOT_FOUND");
}

#[tokio::test]
async fn an_event_stream_outlives_the_idle_timeout() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let config = "[server]\nidle_timeout_secs = 1\nheader_read_timeout_secs = 1\n";
    let service = Service::start_with(root.path(), with_config(config)).await;
    let mut stream = service
        .request(Method::GET, "/v1/events/stream")
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    // Three idle timeouts without a byte on the stream (its keep-alive comes every 15 s).
    tokio::time::sleep(Duration::from_secs(3)).await;
    service
        .submit(&shell_task(&repo, "echo hi > hello.txt", "true"))
        .await;
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !seen.contains("task.submitted") {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, stream.chunk())
            .await
            .expect("no event in time")
            .expect("the stream was cut")
            .expect("the stream ended");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
}

/// Reads until the peer closes; how long after `opened` that was (`None`: not within `limit`).
async fn closed_after(mut stream: TcpStream, opened: Instant, limit: Duration) -> Option<Duration> {
    let mut buffer = [0u8; 1024];
    loop {
        let left = limit.checked_sub(opened.elapsed())?;
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Err(_elapsed) => return None,
            Ok(Ok(0) | Err(_)) => return Some(opened.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// A slowloris connection: a partial head, then a header line every 200 ms until the service
/// closes it; how long after its first byte that was.
async fn slowloris(address: String, limit: Duration) -> Option<Duration> {
    let mut stream = TcpStream::connect(&address).await.unwrap();
    let head = format!("GET /v1/tasks HTTP/1.1\r\nHost: {address}\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut buffer = [0u8; 1024];
    while started.elapsed() < limit {
        tokio::select! {
            read = stream.read(&mut buffer) => match read {
                Ok(0) | Err(_) => return Some(started.elapsed()),
                Ok(_) => {}
            },
            () = tokio::time::sleep(Duration::from_millis(200)) => {
                let _ = stream.write_all(b"X-Slow: 1\r\n").await;
            }
        }
    }
    None
}

/// The value of an unlabelled gauge in `/metrics`.
async fn gauge(service: &Service, name: &str) -> f64 {
    let answer = service
        .request(Method::GET, "/metrics")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let text = answer.text().await.unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .map_or(0.0, |value| value.trim().parse().unwrap())
}

/// `/healthz` on a new connection each time (a pooled one would not show whether the service
/// still accepts), every 100 ms until `done`; the slowest answer.
async fn probe_healthz(base: &str, done: &tokio::sync::watch::Receiver<bool>) -> (Duration, usize) {
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let (mut slowest, mut probes) = (Duration::ZERO, 0);
    while !*done.borrow() {
        let started = Instant::now();
        let answer = fresh.get(format!("{base}/healthz")).send().await.unwrap();
        assert_eq!(answer.status(), 200);
        slowest = slowest.max(started.elapsed());
        probes += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (slowest, probes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slowloris_connections_are_closed_while_healthz_answers() {
    let _machine = crate::helpers::latency_bound().await;
    let root = tempfile::tempdir().unwrap();
    // All from 127.0.0.1: the per-address share is raised past the attack (its own test is
    // `one_address_holds_at_most_its_share_of_connections`).
    let config = "[server]\nheader_read_timeout_secs = 1\nidle_timeout_secs = 5\n\
                  max_connections = 1200\nmax_connections_per_ip = 2000\n";
    let service = Service::start_with(root.path(), with_config(config)).await;
    let address = address(&service);
    let (done_tx, done) = tokio::sync::watch::channel(false);
    let limit = Duration::from_secs(20);

    let attack = async {
        let started = Instant::now();
        let mut idle = JoinSet::new();
        for _ in 0..IDLE_CONNECTIONS {
            let stream = TcpStream::connect(&address).await.unwrap();
            idle.spawn(closed_after(stream, Instant::now(), limit));
        }
        let mut slow = JoinSet::new();
        for _ in 0..SLOW_CONNECTIONS {
            slow.spawn(slowloris(address.clone(), limit));
        }
        let opened_in = started.elapsed();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let held = gauge(&service, "glitchlab_http_connections").await;
        let idle_closed: Vec<Duration> = idle
            .join_all()
            .await
            .into_iter()
            .map(Option::unwrap)
            .collect();
        let slow_closed: Vec<Duration> = slow
            .join_all()
            .await
            .into_iter()
            .map(|c| c.expect("a slowloris connection was never closed"))
            .collect();
        let all_closed = started.elapsed();
        // Probe a little longer: the service is still fine once they are gone.
        tokio::time::sleep(Duration::from_millis(500)).await;
        done_tx.send(true).unwrap();
        (opened_in, held, idle_closed, slow_closed, all_closed)
    };
    let ((slowest, probes), (opened_in, held, idle_closed, slow_closed, all_closed)) =
        tokio::join!(probe_healthz(&service.base, &done), attack);

    let range = |times: &[Duration]| (*times.iter().min().unwrap(), *times.iter().max().unwrap());
    let (idle_min, idle_max) = range(&idle_closed);
    let (slow_min, slow_max) = range(&slow_closed);
    eprintln!(
        "transport: {IDLE_CONNECTIONS} idle + {SLOW_CONNECTIONS} slowloris connections opened in \
         {opened_in:?}; open connections (gauge) {held}; idle closed after {idle_min:?} ..= \
         {idle_max:?}; slowloris closed after {slow_min:?} ..= {slow_max:?}; all closed after \
         {all_closed:?}; /healthz slowest {slowest:?} over {probes} probes"
    );
    assert!(
        opened_in < Duration::from_secs(4),
        "opening took {opened_in:?}"
    );
    assert!(
        held >= IDLE_CONNECTIONS as f64,
        "only {held} connections were held open"
    );
    // Idle ones go at the idle timeout (5 s: opening them all may take a few seconds on a busy
    // machine, and all must be open at once), not before; slow heads at the head timeout (1 s),
    // however much they trickle.
    assert!(idle_min >= Duration::from_millis(4500), "{idle_min:?}");
    assert!(idle_max <= Duration::from_secs(10), "{idle_max:?}");
    assert!(slow_min >= Duration::from_millis(900), "{slow_min:?}");
    assert!(slow_max <= Duration::from_millis(2500), "{slow_max:?}");
    assert!(slowest < HEALTHZ_WITHIN, "/healthz took {slowest:?}");
    assert!(probes >= 10, "{probes} probes");
    // Only the probes' and this request's connections may still be open.
    let left = gauge(&service, "glitchlab_http_connections").await;
    assert!(left < 10.0, "{left} connections still open");
}

#[tokio::test]
async fn past_the_cap_a_new_connection_waits_for_a_slot() {
    let root = tempfile::tempdir().unwrap();
    let config = "[server]\nmax_connections = 4\nidle_timeout_secs = 2\n";
    let service = Service::start_with(root.path(), with_config(config)).await;
    let address = address(&service);
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(&address).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The fifth waits in the backlog until the idle timeout frees a slot, then is served.
    let started = Instant::now();
    let answer = reqwest::Client::new()
        .get(format!("{}/healthz", service.base))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(answer.status(), 200);
    assert!(
        (Duration::from_millis(1500)..Duration::from_secs(5)).contains(&waited),
        "{waited:?}"
    );
    drop(held);
}

/// A labelled counter's value in `/metrics` (0 when absent).
async fn counter(service: &Service, sample: &str) -> f64 {
    let answer = service
        .request(Method::GET, "/metrics")
        .send()
        .await
        .unwrap();
    let text = answer.text().await.unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(sample))
        .map_or(0.0, |value| value.trim().parse().unwrap())
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_after_the_idle_timeout() {
    let root = tempfile::tempdir().unwrap();
    let config = "[server]\nidle_timeout_secs = 2\n";
    let service = Service::start_with(root.path(), with_config(config)).await;
    let address = address(&service);
    // A small receive window and 200 pipelined requests for the OpenAPI document: megabytes of
    // answers nobody reads, so the service's writes block.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(address.parse().unwrap()).await.unwrap();
    let request = format!(
        "GET /v1/openapi.json HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\n\r\n",
        crate::helpers::ADMIN_TOKEN
    );
    stream
        .write_all(request.repeat(200).as_bytes())
        .await
        .unwrap();
    let started = Instant::now();
    let sample = "glitchlab_http_connections_closed_total{reason=\"write_timeout\"} ";
    while counter(&service, sample).await < 1.0 {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "a stalled reader was never closed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let closed = started.elapsed();
    assert!(closed >= Duration::from_millis(1500), "{closed:?}");
    // What was sent before the close can still be read; then the connection ends.
    let mut sink = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut sink)).await;
    assert!(read.is_ok(), "the connection did not end");
}

/// Idle sockets the flood opens: more than the default `max_connections` (1024).
const FLOOD_SOCKETS: usize = 1200;
/// Loopback source addresses the flood comes from (127.0.0.2 ..), so no one address passes the
/// default `max_connections_per_ip` (256): this is the reserve and shedding at work, not the
/// per-address cap.
const FLOOD_SOURCES: u8 = 8;

/// A socket to `address` from the loopback source `127.0.0.<last>`, sending nothing.
async fn connect_from(last: u8, address: &str) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(std::net::SocketAddr::from(([127, 0, 0, last], 0)))
        .unwrap();
    socket.connect(address.parse().unwrap()).await.unwrap()
}

/// A client on new connections only, from the loopback source `127.0.0.<last>`, sending
/// `secret` as its bearer token when given.
fn fresh_client(last: u8, secret: Option<&str>) -> reqwest::Client {
    let builder = match secret {
        Some(secret) => crate::helpers::client_builder_with(secret),
        None => reqwest::Client::builder(),
    };
    builder
        .pool_max_idle_per_host(0)
        .local_address(std::net::IpAddr::from([127, 0, 0, last]))
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A counter's value in `/metrics`, asked from the loopback source `127.0.0.<last>`.
async fn counter_from(service: &Service, last: u8, sample: &str) -> f64 {
    let text = fresh_client(last, Some(crate::helpers::ADMIN_TOKEN))
        .get(format!("{}/metrics", service.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(sample))
        .map_or(0.0, |value| value.trim().parse().unwrap())
}

/// Raises this test process's soft open-file limit to its hard limit: the flood holds 1 200
/// sockets, past a soft limit of 1024.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own; setrlimit reads it.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    assert!(
        limit.rlim_cur >= 2 * FLOOD_SOCKETS as u64,
        "the hard open-file limit {} is too low for the flood",
        limit.rlim_cur
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_sockets_past_the_cap_keeps_out_neither_healthz_nor_a_token() {
    let _machine = crate::helpers::latency_bound().await;
    raise_open_files_limit();
    let root = tempfile::tempdir().unwrap();
    // Defaults: max_connections 1024, reserved_connections 64, idle timeout 60 s.
    let service = Service::start(root.path()).await;
    let address = address(&service);
    let started = Instant::now();
    let mut flood = Vec::with_capacity(FLOOD_SOCKETS);
    for n in 0..FLOOD_SOCKETS {
        let source = 2 + u8::try_from(n % usize::from(FLOOD_SOURCES)).unwrap();
        flood.push(connect_from(source, &address).await);
    }
    let opened_in = started.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // With all 1 200 sockets open on this side: a probe and an authenticated request, each on a
    // new connection, from an address of their own.
    let started = Instant::now();
    let healthz = fresh_client(20, None)
        .get(format!("{}/healthz", service.base))
        .send()
        .await
        .unwrap();
    let healthz_in = started.elapsed();
    assert_eq!(healthz.status(), 200);
    let started = Instant::now();
    let tasks = fresh_client(21, Some(crate::helpers::ADMIN_TOKEN))
        .get(format!("{}/v1/tasks", service.base))
        .send()
        .await
        .unwrap();
    let tasks_in = started.elapsed();
    assert_eq!(tasks.status(), 200);

    let shed = counter_from(
        &service,
        22,
        "glitchlab_http_connections_closed_total{reason=\"shed\"} ",
    )
    .await;
    let held = counter_from(&service, 22, "glitchlab_http_connections ").await;
    eprintln!(
        "transport: {FLOOD_SOCKETS} idle sockets from {FLOOD_SOURCES} addresses opened in \
         {opened_in:?}; shed {shed}; open (gauge) {held}; /healthz {healthz_in:?}; \
         GET /v1/tasks with a token {tasks_in:?}"
    );
    assert!(healthz_in < HEALTHZ_WITHIN, "/healthz took {healthz_in:?}");
    assert!(tasks_in < HEALTHZ_WITHIN, "GET /v1/tasks took {tasks_in:?}");
    // Past 1024 - 64 open, each new socket closed the oldest silent one.
    assert!(shed >= (FLOOD_SOCKETS - 1024) as f64, "only {shed} shed");
    assert!(held <= 1024.0, "{held} connections open");
    drop(flood);
}

#[tokio::test]
async fn one_address_holds_at_most_its_share_of_connections() {
    let root = tempfile::tempdir().unwrap();
    let config = "[server]\nmax_connections_per_ip = 8\n";
    let service = Service::start_with(root.path(), with_config(config)).await;
    let address = address(&service);
    let mut held = Vec::new();
    for _ in 0..12 {
        held.push(connect_from(2, &address).await);
    }
    // The first 8 are held open; the 4 past the share are closed at once.
    let mut closed = 0;
    for stream in &mut held {
        let mut buffer = [0u8; 16];
        match tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buffer)).await {
            Ok(Ok(0) | Err(_)) => closed += 1,
            Ok(Ok(_)) => panic!("the service sent something unasked"),
            Err(_elapsed) => {}
        }
    }
    assert_eq!(closed, 4);
    // Another address is served meanwhile.
    let answer = fresh_client(3, None)
        .get(format!("{}/healthz", service.base))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let refused = counter_from(
        &service,
        4,
        "glitchlab_http_connections_closed_total{reason=\"per_ip_limit\"} ",
    )
    .await;
    assert_eq!(refused, 4.0);
    drop(held);
}
