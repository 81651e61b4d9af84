//! The `openai` engine against a real OpenAI-compatible HTTP server on loopback, written here: it
//! records every request and answers with scripted completions (including a 429 with
//! `Retry-After` and malformed replies).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::helpers::{git_repo, shell_task, Options, Service};

/// One scripted answer: status, `Retry-After`, body.
type Scripted = (u16, Option<u64>, Value);

/// One recorded request: when, its `Authorization` header, its body.
type Recorded = (Instant, Option<String>, Value);

#[derive(Clone, Default)]
struct FakeModel {
    script: Arc<Mutex<VecDeque<Scripted>>>,
    /// (when, authorization header, body) of every request.
    requests: Arc<Mutex<Vec<Recorded>>>,
}

async fn completions(
    State(fake): State<FakeModel>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    fake.requests
        .lock()
        .unwrap()
        .push((Instant::now(), authorization, body));
    let next = fake.script.lock().unwrap().pop_front();
    let (status, retry_after, body) =
        next.unwrap_or((500, None, json!({"error": "script exhausted"})));
    let mut response = (StatusCode::from_u16(status).unwrap(), Json(body)).into_response();
    if let Some(seconds) = retry_after {
        response.headers_mut().insert("retry-after", seconds.into());
    }
    response
}

impl FakeModel {
    async fn start(script: Vec<Scripted>) -> (Self, String) {
        let fake = FakeModel::default();
        fake.script.lock().unwrap().extend(script);
        let app = Router::new()
            .route("/v1/chat/completions", post(completions))
            .with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/v1", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (fake, base)
    }

    fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

fn reply(content: &str, input: u64, output: u64) -> Scripted {
    (
        200,
        None,
        json!({
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output},
        }),
    )
}

fn options(base: &str) -> Options {
    Options {
        config: Some(format!(
            "[providers.fake]\nbase_url = \"{base}\"\nmodel = \"fake-model\"\napi_key_env = \"GLITCHLAB_FAKE_KEY\"\nretries_max = 3\n\n[governance]\nsecrets = [\"GLITCHLAB_FAKE_KEY\"]\n"
        )),
        env: vec![("GLITCHLAB_FAKE_KEY".into(), "sk-test-0123456789".into())],
        ..Default::default()
    }
}

const PLAN: &str = r#"{"summary":"Greet","steps":[{"title":"write hello.txt","files":["hello.txt"],"rationale":"asked"}],"risk":"low"}"#;

#[tokio::test]
async fn a_task_planned_implemented_and_judged_by_a_model_is_delivered() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let edits = r#"Here are the edits: {"edits":[{"path":"hello.txt","content":"hello\n"}]}"#;
    let (fake, base) = FakeModel::start(vec![
        reply(PLAN, 100, 40),
        reply(edits, 200, 50),
        reply(
            r#"{"verdict":"pass","reasons":["hello.txt greets"]}"#,
            300,
            10,
        ),
    ])
    .await;
    let service = Service::start_with(root.path(), options(&base)).await;
    let mut body = shell_task(&repo, "unused", "test -f hello.txt");
    body["engines"] = json!({
        "planner": {"kind": "openai", "provider": "fake"},
        "patch": {"kind": "openai", "provider": "fake"},
        "circuit": {"kind": "openai", "provider": "fake"},
    });
    body["acceptance"] = json!("hello.txt exists and greets");
    let task = service.submit(&body).await;
    let id = task["id"].as_str().unwrap();
    let task = service.wait_until_finished(id).await;
    assert_eq!(task["status"], "done", "{task:#}");
    assert_eq!(
        std::fs::read_to_string(repo.join("hello.txt")).unwrap(),
        "hello\n"
    );
    assert_eq!(task["plan"]["summary"], "Greet");

    let requests = fake.requests();
    assert_eq!(requests.len(), 3);
    let system = requests[0].2["messages"][0]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        system.starts_with("You are Planner"),
        "the persona's system prompt reached the model: {system}"
    );
    assert!(requests[1].2["messages"][0]["content"]
        .as_str()
        .unwrap()
        .starts_with("You are Patch"));
    assert!(requests[2].2["messages"][1]["content"]
        .as_str()
        .unwrap()
        .contains("hello.txt exists and greets"));
    assert_eq!(requests[0].1.as_deref(), Some("Bearer sk-test-0123456789"));
    assert!(requests
        .iter()
        .all(|(_, _, body)| !body.to_string().contains("sk-test-0123456789")));

    let (_, runs) = service.get(&format!("/v1/tasks/{id}/runs")).await;
    let tokens: Vec<Value> = runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["engine"] == "openai")
        .map(|r| r["tokens"].clone())
        .collect();
    assert_eq!(
        tokens,
        vec![
            json!({"input": 100, "output": 40}),
            json!({"input": 200, "output": 50}),
            json!({"input": 300, "output": 10})
        ]
    );
    let (_, events) = service.get(&format!("/v1/tasks/{id}/events")).await;
    assert!(!format!("{runs}{events}").contains("sk-test-0123456789"));
}

#[tokio::test]
async fn a_429_is_retried_after_its_delay_and_a_malformed_plan_is_asked_again_then_plan_invalid() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let (fake, base) = FakeModel::start(vec![
        (429, Some(1), json!({"error": {"message": "slow down"}})),
        reply("I think you should write a file.", 10, 10),
        reply(r#"{"summary":"","steps":[],"risk":"low"}"#, 10, 10),
    ])
    .await;
    let service = Service::start_with(root.path(), options(&base)).await;
    let mut body = shell_task(&repo, "true", "true");
    body["engines"] = json!({"planner": {"kind": "openai", "provider": "fake"}});
    let task = service.submit(&body).await;
    let task = service
        .wait_until_finished(task["id"].as_str().unwrap())
        .await;
    assert_eq!(task["status"], "failed", "{task:#}");
    assert_eq!(task["error"]["code"], "PLAN_INVALID");
    let requests = fake.requests();
    assert_eq!(requests.len(), 3, "one 429, then the plan and one more ask");
    assert!(
        requests[1].0 - requests[0].0 >= Duration::from_millis(900),
        "Retry-After was not honoured"
    );
    let again = requests[2].2["messages"][1]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(again.contains("was not a valid plan"), "{again}");
}

#[tokio::test]
async fn an_edit_path_escaping_the_worktree_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let edits = r#"{"edits":[{"path":"../../escaped.txt","content":"out"}]}"#;
    let (_fake, base) = FakeModel::start(vec![reply(edits, 10, 10)]).await;
    let service = Service::start_with(root.path(), options(&base)).await;
    let mut body = shell_task(&repo, "unused", "true");
    body["engines"] = json!({"patch": {"kind": "openai", "provider": "fake"}});
    let task = service.submit(&body).await;
    let task = service
        .wait_until_finished(task["id"].as_str().unwrap())
        .await;
    assert_eq!(task["status"], "failed", "{task:#}");
    assert_eq!(task["error"]["code"], "EDIT_REFUSED");
    assert!(
        !root.path().join("data/escaped.txt").exists() && !root.path().join("escaped.txt").exists()
    );
}

#[tokio::test]
async fn edits_through_a_committed_link_out_are_refused_and_nothing_outside_is_touched() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let outside = root.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), "original\n").unwrap();
    std::os::unix::fs::symlink(&outside, repo.join("docs")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret.txt"), repo.join("notes.md")).unwrap();
    crate::helpers::git(&repo, &["add", "-A"]);
    crate::helpers::git(&repo, &["commit", "-q", "-m", "links out"]);
    // One task writes `docs/x` (through the directory link), the next edits `notes.md` (a link
    // to a file outside): both refused, outside as it was.
    let write = r#"{"edits":[{"path":"docs/x","content":"written outside"}]}"#;
    let replace = r#"{"edits":[{"path":"notes.md","search":"original","replace":"changed"}]}"#;
    let (fake, base) = FakeModel::start(vec![reply(write, 10, 10), reply(replace, 10, 10)]).await;
    let service = Service::start_with(root.path(), options(&base)).await;
    let mut body = shell_task(&repo, "unused", "true");
    body["engines"] = json!({"patch": {"kind": "openai", "provider": "fake"}});
    for (expected_link, path) in [("docs", "docs/x"), ("notes.md", "notes.md")] {
        let task = service.submit(&body).await;
        let id = task["id"].as_str().unwrap();
        let task = service.wait_until_finished(id).await;
        assert_eq!(task["status"], "failed", "{task:#}");
        assert_eq!(task["error"]["code"], "EDIT_REFUSED");
        let why = format!("`{path}` passes through a symbolic link (`{expected_link}`)");
        let message = task["error"]["message"].as_str().unwrap();
        assert!(message.contains(&why), "{message}");
        let (_, events) = service.get(&format!("/v1/tasks/{id}/events")).await;
        assert!(
            events.to_string().contains(&why),
            "the events say why: {events:#}"
        );
    }
    assert_eq!(fake.requests().len(), 2);
    let mut names: Vec<String> = std::fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["secret.txt"], "nothing was written outside");
    assert_eq!(
        std::fs::read_to_string(outside.join("secret.txt")).unwrap(),
        "original\n"
    );
}

#[tokio::test]
async fn a_model_can_delete_a_file_but_not_a_link() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    std::fs::write(repo.join("old.txt"), "old\n").unwrap();
    std::os::unix::fs::symlink("README.md", repo.join("alias.md")).unwrap();
    crate::helpers::git(&repo, &["add", "-A"]);
    crate::helpers::git(&repo, &["commit", "-q", "-m", "a file and a link"]);
    let delete = r#"{"edits":[{"path":"old.txt","delete":true}]}"#;
    let delete_link = r#"{"edits":[{"path":"alias.md","delete":true}]}"#;
    let (_fake, base) =
        FakeModel::start(vec![reply(delete, 10, 10), reply(delete_link, 10, 10)]).await;
    let service = Service::start_with(root.path(), options(&base)).await;
    let mut body = shell_task(&repo, "unused", "test ! -e old.txt");
    body["engines"] = json!({"patch": {"kind": "openai", "provider": "fake"}});
    let task = service.submit(&body).await;
    let task = service
        .wait_until_finished(task["id"].as_str().unwrap())
        .await;
    assert_eq!(task["status"], "done", "{task:#}");
    assert!(!repo.join("old.txt").exists());

    let task = service.submit(&body).await;
    let task = service
        .wait_until_finished(task["id"].as_str().unwrap())
        .await;
    assert_eq!(task["status"], "failed", "{task:#}");
    assert_eq!(task["error"]["code"], "EDIT_REFUSED");
    assert!(repo.join("alias.md").symlink_metadata().is_ok());
}

#[tokio::test]
async fn a_token_cap_stops_the_task_with_budget_exceeded() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let (_fake, base) = FakeModel::start(vec![reply(PLAN, 700, 600)]).await;
    let service = Service::start_with(root.path(), options(&base)).await;
    let mut body = shell_task(&repo, "true", "true");
    body["engines"] = json!({"planner": {"kind": "openai", "provider": "fake"}});
    body["budget"] = json!({"max_tokens": 1000});
    let task = service.submit(&body).await;
    let task = service
        .wait_until_finished(task["id"].as_str().unwrap())
        .await;
    assert_eq!(task["status"], "failed", "{task:#}");
    assert_eq!(task["error"]["code"], "BUDGET_EXCEEDED");
    let message = task["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("max_tokens") && message.contains("1300"),
        "{message}"
    );
}
