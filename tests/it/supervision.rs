//! The restart policy, exercised with failpoints (`--features failpoints`, `FAILPOINTS=...`).
#![cfg(feature = "failpoints")]

use crate::helpers::{git_repo, shell_task, Options, Service};

fn failpoints(spec: &str, config: Option<&str>) -> Options {
    Options {
        config: config.map(str::to_owned),
        env: vec![("FAILPOINTS".into(), spec.into())],
        ..Default::default()
    }
}

#[tokio::test]
async fn a_persona_panic_is_survived_and_its_request_retried() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let service = Service::start_with(root.path(), failpoints("patch.handle=1*panic", None)).await;
    let task = service
        .submit(&shell_task(
            &repo,
            "echo hello > hello.txt",
            "test -f hello.txt",
        ))
        .await;
    let id = task["id"].as_str().unwrap();
    let task = service.wait_until_finished(id).await;

    assert_eq!(task["status"], "done", "{task:#}");
    let patch = service.actor("patch").await;
    assert_eq!(patch["status"], "running");
    assert_eq!(patch["restarts"], 1);
    let kinds = service.event_kinds(id).await;
    assert!(kinds.contains(&"actor.restarted".to_owned()), "{kinds:?}");
    let (status, _) = service.get("/readyz").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_crashed_pipeline_resumes_from_its_persisted_state() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let service =
        Service::start_with(root.path(), failpoints("pipeline.handle=2*panic", None)).await;
    let task = service
        .submit(&shell_task(
            &repo,
            "echo hello > hello.txt",
            "test -f hello.txt",
        ))
        .await;
    let id = task["id"].as_str().unwrap();
    let task = service.wait_until_finished(id).await;

    assert_eq!(task["status"], "done", "{task:#}");
    let (_, events) = service.get(&format!("/v1/tasks/{id}/events")).await;
    let restarts: Vec<_> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "actor.restarted")
        .map(|e| e["data"]["actor"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(restarts, vec![format!("pipeline-{id}"); 2]);
    let resumed = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "task.resumed")
        .count();
    assert_eq!(resumed, 2);
}

#[tokio::test]
async fn a_persona_that_always_panics_is_given_up_on() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let config = "[supervision]\nmax_restarts = 3\nwindow_secs = 60\nbackoff_base_ms = 10\nbackoff_max_ms = 40\n";
    // One crash on a request, then it cannot even start: the persona is broken, not the task
    // (a task whose requests alone crash it is poisoned instead: `poison.rs`).
    let service = Service::start_with(
        root.path(),
        failpoints(
            "circuit.handle=1*panic;circuit.start=1*off->panic",
            Some(config),
        ),
    )
    .await;
    let task = service
        .submit(&shell_task(
            &repo,
            "echo hello > hello.txt",
            "test -f hello.txt",
        ))
        .await;
    let id = task["id"].as_str().unwrap();
    let task = service.wait_until_finished(id).await;

    assert_eq!(task["status"], "failed", "{task:#}");
    assert_eq!(task["error"]["code"], "PERSONA_UNAVAILABLE");
    assert!(task["error"]["message"]
        .as_str()
        .unwrap()
        .contains("circuit"));
    let circuit = service.actor("circuit").await;
    assert_eq!(circuit["status"], "failed");
    assert_eq!(circuit["restarts"], 3);

    let (status, ready) = service.get("/readyz").await;
    assert_eq!(status, 503);
    assert!(ready.to_string().contains("circuit"), "{ready}");
    let (status, _) = service.get("/healthz").await;
    assert_eq!(status, 200);
    // Everything else keeps running: the other personas, the ingress, and new work up to verify.
    assert_eq!(service.actor("patch").await["status"], "running");
    assert_eq!(service.actor("planner").await["status"], "running");
    let second = service
        .submit(&shell_task(&repo, "echo again > again.txt", "true"))
        .await;
    let second = service
        .wait_until_finished(second["id"].as_str().unwrap())
        .await;
    assert_eq!(second["error"]["code"], "PERSONA_UNAVAILABLE");
    assert_eq!(second["stage"], "verify");
}

#[tokio::test]
async fn a_failed_persona_is_revived_after_its_cooldown() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let config = "[supervision]\nmax_restarts = 3\nwindow_secs = 60\nbackoff_base_ms = 10\nbackoff_max_ms = 40\nrevive_after_secs = 1\n";
    // A crash, then four failed starts (the limit is three restarts), then the trouble is gone.
    let service = Service::start_with(
        root.path(),
        failpoints(
            "circuit.handle=1*panic->off;circuit.start=1*off->4*panic->off",
            Some(config),
        ),
    )
    .await;
    let first = service
        .submit(&shell_task(&repo, "echo one > one.txt", "true"))
        .await;
    let first = service
        .wait_until_finished(first["id"].as_str().unwrap())
        .await;
    assert_eq!(first["error"]["code"], "PERSONA_UNAVAILABLE", "{first:#}");

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (status, _) = service.get("/readyz").await;
        if status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "circuit was not revived"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(service.actor("circuit").await["status"], "running");
    let second = service
        .submit(&shell_task(&repo, "echo two > two.txt", "true"))
        .await;
    let second = service
        .wait_until_finished(second["id"].as_str().unwrap())
        .await;
    assert_eq!(second["status"], "done", "{second:#}");
    let (_, events) = service.get("/v1/events").await;
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"actor.failed") && kinds.contains(&"actor.reviving"),
        "{kinds:?}"
    );
}

/// Issue #16: `/readyz` asks every persona through its mailbox. Uplink-Deploy stuck in a handler
/// (the failpoint sleeps in it) still reads `running` to its supervisor, yet `/readyz` says 503
/// naming it, and 200 again once it reads its mailbox.
#[tokio::test]
async fn readyz_names_a_persona_that_runs_but_does_not_answer() {
    let root = tempfile::tempdir().unwrap();
    let service = Service::start_with(
        root.path(),
        Options {
            env: vec![(
                "FAILPOINTS".into(),
                "uplink-deploy.handle=1*sleep(6000)".into(),
            )],
            ..Default::default()
        },
    )
    .await;
    let (status, _) = service.get("/readyz").await;
    assert_eq!(status, 200);
    let base = service.base.clone();
    let stuck = tokio::spawn(async move {
        crate::helpers::client()
            .post(format!("{base}/v1/deploys"))
            .json(&serde_json::json!({"app": "none"}))
            .send()
            .await
    });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let (status, body) = service.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("uplink-deploy"), "{message}");
    assert!(!message.contains("patch"), "{message}");
    let _ = stuck.await;
    let (status, body) = service.get("/readyz").await;
    assert_eq!(status, 200, "{body}");
}
