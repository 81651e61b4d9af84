//! Live events over SSE against the real service: a task's stream shows progress while the task
//! runs and ends after it, a reconnect resumes after `Last-Event-ID`, and the service-wide stream
//! carries every task's events.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{git_repo, shell_task, Options, Service};

/// One SSE message.
#[derive(Debug)]
struct Message {
    id: Option<u64>,
    event: String,
    data: Value,
}

/// An open SSE response, read message by message.
struct Stream {
    response: reqwest::Response,
    buffer: String,
}

impl Stream {
    async fn open(service: &Service, path: &str, last_event_id: Option<u64>) -> Stream {
        let mut request = crate::helpers::client().get(format!("{}{path}", service.base));
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        let content_type = response.headers()["content-type"].to_str().unwrap();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        Stream {
            response,
            buffer: String::new(),
        }
    }

    /// The next message (keep-alive comments skipped); `None` when the stream ended.
    async fn next(&mut self, within: Duration) -> Option<Message> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut message = Message {
                    id: None,
                    event: "message".into(),
                    data: Value::Null,
                };
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(id) = line.strip_prefix("id: ") {
                        message.id = Some(id.parse().unwrap());
                    } else if let Some(event) = line.strip_prefix("event: ") {
                        message.event = event.to_owned();
                    } else if let Some(chunk) = line.strip_prefix("data: ") {
                        data.push_str(chunk);
                    }
                }
                if data.is_empty() {
                    continue; // a keep-alive comment
                }
                message.data = serde_json::from_str(&data).unwrap();
                return Some(message);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let chunk = tokio::time::timeout(left, self.response.chunk())
                .await
                .expect("no SSE message in time")
                .unwrap()?;
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }
}

#[tokio::test]
async fn a_tasks_stream_shows_progress_live_ends_after_it_and_resumes() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let mut everything = Stream::open(&service, "/v1/events/stream", None).await;

    // Verify takes a while, so the stream can be seen moving before the task ends.
    let task = service
        .submit(&shell_task(
            &repo,
            "echo hi > hello.txt",
            "sleep 1; test -f hello.txt",
        ))
        .await;
    let id = task["id"].as_str().unwrap().to_owned();
    let mut stream = Stream::open(&service, &format!("/v1/tasks/{id}/events/stream"), None).await;
    let mut received = Vec::new();
    let mut seen_running = false;
    loop {
        let message = stream
            .next(Duration::from_secs(60))
            .await
            .expect("the stream ended without an `end` event");
        if message.event == "end" {
            assert_eq!(message.data["status"], "done", "{received:#?}");
            break;
        }
        assert_eq!(message.data["task_id"], id.as_str());
        assert_eq!(message.id, message.data["seq"].as_u64());
        assert_eq!(message.event, message.data["kind"].as_str().unwrap());
        if message.event == "stage.started" && message.data["data"]["stage"] == "verify" {
            // Delivered while the task still runs, not replayed afterwards.
            let (_, now) = service.get(&format!("/v1/tasks/{id}")).await;
            seen_running |= now["status"] == "running";
        }
        received.push(message);
    }
    assert!(
        seen_running,
        "the verify stage was not streamed while it ran"
    );
    assert!(
        stream.next(Duration::from_secs(5)).await.is_none(),
        "the stream did not close"
    );

    // Everything the log has, the stream sent: same events, none twice.
    let (_, stored) = service.get(&format!("/v1/tasks/{id}/events")).await;
    let stored: Vec<u64> = stored["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    let mut streamed: Vec<u64> = received.iter().map(|m| m.id.unwrap()).collect();
    streamed.sort_unstable();
    assert_eq!(streamed, stored);
    let kinds: Vec<&str> = received.iter().map(|m| m.event.as_str()).collect();
    for kind in [
        "task.submitted",
        "engine.run",
        "task.finished",
        "ledger.settled",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }

    // A client that reconnects after the third event gets the rest, then `end`.
    let third = stored[2];
    let mut resumed = Stream::open(
        &service,
        &format!("/v1/tasks/{id}/events/stream"),
        Some(third),
    )
    .await;
    let mut rest = Vec::new();
    while let Some(message) = resumed.next(Duration::from_secs(10)).await {
        if message.event == "end" {
            break;
        }
        rest.push(message.id.unwrap());
    }
    rest.sort_unstable();
    assert_eq!(rest, stored[3..]);

    // The service-wide stream carried the task's events too.
    let mut of_task = 0;
    while of_task < stored.len() {
        let message = everything.next(Duration::from_secs(10)).await.unwrap();
        if message.data["task_id"] == id.as_str() {
            of_task += 1;
        }
    }

    // Unknown tasks and bad resume points are refused like elsewhere.
    let (status, body) = service
        .get("/v1/tasks/00000000-0000-0000-0000-000000000000/events/stream")
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (404, &json!("TASK_NOT_FOUND"))
    );
    let (status, body) = service
        .get(&format!("/v1/tasks/{id}/events/stream?after=soon"))
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (422, &json!("INVALID_FIELD"))
    );
}

#[tokio::test]
async fn open_streams_end_when_the_service_stops() {
    let root = tempfile::tempdir().unwrap();
    let mut service = Service::start(root.path()).await;
    let mut everything = Stream::open(&service, "/v1/events/stream", None).await;
    // A graceful shutdown waits for open responses (up to `server.shutdown_timeout_secs`, 10 s);
    // a stream that never ends by itself must not hold it.
    let stopped_at = Instant::now();
    let status = service.terminate(Duration::from_secs(5));
    assert!(status.success(), "{status:?}");
    assert!(stopped_at.elapsed() < Duration::from_secs(5));
    assert!(everything.next(Duration::from_secs(5)).await.is_none());
}

/// Issue #12, live output: while Patch's engine and the verify command run, what they print
/// reaches the task's stream as `run.output` chunks — the verify's early lines before the verify
/// stage ends, a secret printed in two pieces redacted whole, a flood of output in few bounded
/// chunks that count what they leave out — and none of it is stored as an event.
#[tokio::test]
async fn a_running_commands_output_reaches_the_tasks_stream_live_bounded_and_redacted() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let secret = "hunter2-7f3a9c-very-secret";
    std::fs::create_dir_all(root.path().join("actors")).unwrap();
    std::fs::write(
        root.path().join("actors/patch.md"),
        "---\nname: patch\nrole: implementer\nenv: [GLITCHLAB_TEST_SECRET]\ntools:\n  allow: [sh, echo, test, sleep, head, tail, awk, printf]\n---\nYou are Patch.\n",
    )
    .unwrap();
    let options = Options {
        config: Some("[governance]\nsecrets = [\"GLITCHLAB_TEST_SECRET\"]\n".into()),
        env: vec![("GLITCHLAB_TEST_SECRET".into(), secret.into())],
        ..Default::default()
    };
    let service = Service::start_with(root.path(), options).await;
    // Patch waits for the stream to open, prints the secret in two writes far apart, then
    // floods; verify prints a line every 200 ms for 3 s.
    let patch = "sleep 1; \
        printf 'key: %s' \"$(printf %s \"$GLITCHLAB_TEST_SECRET\" | head -c 9)\"; sleep 0.3; \
        printf '%s end\\n' \"$(printf %s \"$GLITCHLAB_TEST_SECRET\" | tail -c +10)\"; \
        echo \"plain $GLITCHLAB_TEST_SECRET\" >&2; sleep 0.5; \
        awk 'BEGIN { for (i = 0; i < 200000; i++) print \"flood line \" i }'; \
        echo ok > ok.txt";
    let verify = "for i in 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14; do echo \"verify line $i\"; \
        sleep 0.2; done; test -f ok.txt";
    let task = service.submit(&shell_task(&repo, patch, verify)).await;
    let id = task["id"].as_str().unwrap().to_owned();
    let mut stream = Stream::open(&service, &format!("/v1/tasks/{id}/events/stream"), None).await;
    let mut received = Vec::new();
    loop {
        let message = stream
            .next(Duration::from_secs(60))
            .await
            .expect("the stream ended without an `end` event");
        if message.event == "end" {
            assert_eq!(message.data["status"], "done", "{received:#?}");
            break;
        }
        let raw = message.data.to_string();
        assert!(!raw.contains(secret), "the secret leaked: {raw}");
        assert!(
            !raw.contains(&secret[..9]),
            "the secret's start leaked: {raw}"
        );
        assert!(
            !raw.contains(&secret[9..]),
            "the secret's end leaked: {raw}"
        );
        received.push(message);
    }
    let output: Vec<&Message> = received
        .iter()
        .filter(|m| m.event == "run.output")
        .collect();
    for chunk in &output {
        assert_eq!(chunk.id, None, "live output is not a stored event");
        assert_eq!(chunk.data["task_id"], id.as_str());
        assert!(chunk.data["run_id"].is_string());
        assert!(chunk.data["attempt"].is_u64());
        assert!(chunk.data["dropped_bytes"].is_u64());
        assert!(
            chunk.data["text"].as_str().unwrap().len() <= 4096,
            "{chunk:?}"
        );
    }
    let text_of = |persona: &str, stream: &str| -> String {
        output
            .iter()
            .filter(|m| m.data["persona"] == persona && m.data["stream"] == stream)
            .map(|m| m.data["text"].as_str().unwrap())
            .collect()
    };

    // Verify: its first line arrived before its stage ended, in more than one chunk.
    let verify_end = received
        .iter()
        .position(|m| m.event == "stage.finished" && m.data["data"]["stage"] == "verify")
        .expect("verify finished");
    let first_line = received
        .iter()
        .position(|m| {
            m.event == "run.output"
                && m.data["persona"] == "circuit"
                && m.data["stage"] == "verify"
                && m.data["text"].as_str().unwrap().contains("verify line 0\n")
        })
        .expect("the verify's first line was streamed");
    assert!(first_line < verify_end, "{received:#?}");
    let verify_chunks = output
        .iter()
        .filter(|m| m.data["persona"] == "circuit")
        .count();
    assert!(verify_chunks >= 3, "{verify_chunks} verify chunks");
    let verify_text = text_of("circuit", "stdout");
    assert!(verify_text.contains("verify line 14\n"), "{verify_text}");

    // Patch: the secret, printed in two pieces, redacted whole; stderr on its own.
    let patch_out = text_of("patch", "stdout");
    assert!(
        patch_out.contains("key: [REDACTED:GLITCHLAB_TEST_SECRET] end\n"),
        "{patch_out:.2000}"
    );
    assert!(text_of("patch", "stderr").contains("plain [REDACTED:GLITCHLAB_TEST_SECRET]\n"));
    // The flood: few chunks, the latest lines, the rest counted.
    assert!(
        patch_out.ends_with("flood line 199999\n"),
        "{}",
        &patch_out[patch_out.len().saturating_sub(200)..]
    );
    let patch_chunks: Vec<&&Message> = output
        .iter()
        .filter(|m| m.data["persona"] == "patch")
        .collect();
    let dropped: u64 = patch_chunks
        .iter()
        .map(|m| m.data["dropped_bytes"].as_u64().unwrap())
        .sum();
    let flood_bytes: u64 = (0..200_000u64)
        .map(|i| format!("flood line {i}\n").len() as u64)
        .sum();
    assert!(
        dropped > flood_bytes / 2,
        "{dropped} of {flood_bytes} dropped"
    );
    let (_, runs) = service.get(&format!("/v1/tasks/{id}/runs")).await;
    let patch_run = runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|run| run["persona"] == "patch")
        .expect("a patch run");
    assert_eq!(patch_chunks[0].data["run_id"], patch_run["id"]);
    let run_secs = patch_run["duration_ms"].as_u64().unwrap() / 1000 + 1;
    assert!(
        patch_chunks.len() as u64 <= 10 * run_secs + 2,
        "{} chunks in {run_secs}s",
        patch_chunks.len()
    );
    // The run record keeps its bounded tail as before, redacted too.
    assert!(patch_run["stdout"]["text"]
        .as_str()
        .unwrap()
        .contains("flood line 199999"));
    assert!(!patch_run.to_string().contains(secret));

    // Nothing of it was stored.
    let (_, stored) = service.get(&format!("/v1/tasks/{id}/events")).await;
    assert!(stored["events"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["kind"] != "run.output"));
}

/// Streams the viewers try to open: more than the whole budget (256).
const VIEWER_STREAMS: usize = 300;
/// Viewer tokens they use: together they could hold 320 at 32 each, past the role's 128.
const VIEWER_TOKENS: usize = 10;

#[tokio::test]
async fn viewers_holding_every_stream_they_can_leave_room_for_an_admin() {
    let _machine = crate::helpers::heavy().await;
    let root = tempfile::tempdir().unwrap();
    // Every stream is a connection from 127.0.0.1: the per-address share is raised past them.
    let config = "[server]\nmax_connections_per_ip = 1000\n";
    let service = Service::start_in_process(root.path(), crate::helpers::with_config(config)).await;
    let mut viewers = Vec::new();
    for n in 0..VIEWER_TOKENS {
        let (status, body) = service
            .post(
                "/v1/tokens",
                &json!({"name": format!("wall-{n}"), "role": "viewer"}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let secret = body["secret"].as_str().unwrap();
        viewers.push(crate::helpers::client_builder_with(secret).build().unwrap());
    }
    let url = format!("{}/v1/events/stream", service.base);
    let (mut held, mut refused) = (Vec::new(), 0);
    for n in 0..VIEWER_STREAMS {
        let response = viewers[n % VIEWER_TOKENS].get(&url).send().await.unwrap();
        match response.status().as_u16() {
            200 => held.push(response),
            503 => {
                let body: Value = response.json().await.unwrap();
                assert_eq!(body["error"]["code"], "TOO_MANY_STREAMS", "{body}");
                refused += 1;
            }
            other => panic!("a viewer's stream was answered {other}"),
        }
    }
    eprintln!(
        "stream: {VIEWER_STREAMS} viewer streams asked: {} open, {refused} refused",
        held.len()
    );
    // The viewers' role holds its share (128 by default) and no more.
    assert_eq!(held.len(), 128);
    // An admin still gets a stream, and sees events on it.
    let mut admin = Stream::open(&service, "/v1/events/stream", None).await;
    let repo = git_repo(root.path());
    service
        .submit(&shell_task(&repo, "echo hi > a.txt", "true"))
        .await;
    let message = admin
        .next(Duration::from_secs(30))
        .await
        .expect("the admin's stream ended");
    assert!(message.id.is_some(), "{message:?}");
    drop(held);
}
