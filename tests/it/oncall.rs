//! Incidents a person can own, tried as an on-call engineer would: acknowledge, snooze and
//! resolve (each with their name on it), a resolved incident that takes no new signals, an
//! approval bound to the step as it was shown (a runbook edited in between is refused), and a
//! flapping app whose next crash is restarted again once a person has resolved its incident.

use std::path::Path;

use serde_json::{json, Value};

use crate::helpers::{with_config, Service};
use crate::ops::{free_port, local_ops, sample_repo, start, wait_for_app, wait_until, AppReaper};

/// `runbooks/` holding one runbook whose only step is a gated notify with `message`.
fn gated_runbooks(root: &Path, message: &str) -> std::path::PathBuf {
    let dir = root.join("runbooks");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("gated.yaml"),
        format!(
            "name: gated\nmatch: {{signal: needs_a_person}}\nclassify: outage\nsteps:\n  \
             - {{action: notify, gated: true, message: \"{message}\"}}\n"
        ),
    )
    .unwrap();
    dir
}

fn config(root: &Path, runbooks: &Path) -> String {
    let ops_file = root.join("ops.yaml");
    std::fs::write(&ops_file, "apps: {}\n").unwrap();
    format!(
        "[paths]\nops_file = \"{}\"\nrunbooks_dir = \"{}\"\n",
        ops_file.display(),
        runbooks.display()
    )
}

async fn alert(service: &Service, signal: &str) -> String {
    let (status, body) = service
        .post(
            "/v1/alerts",
            &json!({"app": "web", "signal": signal, "summary": "?"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    body["incidents"][0].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_person_acknowledges_snoozes_and_resolves_and_the_next_failure_opens_a_new_incident() {
    let root = tempfile::tempdir().unwrap();
    let service = start(root.path(), "apps: {}\n", Vec::new()).await;
    let id = alert(&service, "mystery_smell").await;
    let path = format!("/v1/incidents/{id}");
    let (_, incident) = service.get(&path).await;
    assert_eq!(incident["status"], "needs_human");

    let (status, acked) = service.post(&format!("{path}/ack"), &json!({})).await;
    assert_eq!(status, 200, "{acked}");
    assert_eq!(acked["status"], "acknowledged");
    assert_eq!(acked["acknowledged"]["by"], "bootstrap");
    // A person owns it: repeats still attach to it.
    assert_eq!(alert(&service, "mystery_smell").await, id);

    let (status, snoozed) = service
        .post(&format!("{path}/snooze"), &json!({"minutes": 30}))
        .await;
    assert_eq!(status, 200, "{snoozed}");
    assert!(snoozed["snoozed_until"].is_string(), "{snoozed}");
    let events_before = snoozed["events"].as_array().unwrap().len();
    assert_eq!(alert(&service, "mystery_smell").await, id);
    let (_, quiet) = service.get(&path).await;
    assert_eq!(quiet["signal_count"], 3);
    assert_eq!(
        quiet["events"].as_array().unwrap().len(),
        events_before,
        "a snoozed incident counts repeats without a timeline entry each"
    );
    let (status, refused) = service
        .post(&format!("{path}/snooze"), &json!({"minutes": 0}))
        .await;
    assert_eq!(
        (status, &refused["error"]["code"]),
        (422, &json!("INVALID_FIELD"))
    );

    let (status, resolved) = service.post(&format!("{path}/resolve"), &json!({})).await;
    assert_eq!(status, 200, "{resolved}");
    assert_eq!(resolved["status"], "resolved");
    assert_eq!(resolved["resolved_by"]["by"], "bootstrap");
    assert!(resolved["postmortem"].is_string());
    let kinds: Vec<&str> = resolved["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    for kind in ["acknowledged", "snoozed", "resolved"] {
        assert!(kinds.contains(&kind), "{kinds:?}");
    }
    // Resolving again changes nothing; acknowledging a resolved incident is refused.
    let (status, again) = service.post(&format!("{path}/resolve"), &json!({})).await;
    assert_eq!((status, &again["status"]), (200, &json!("resolved")));
    let (status, late) = service.post(&format!("{path}/ack"), &json!({})).await;
    assert_eq!(
        (status, &late["error"]["code"]),
        (409, &json!("INVALID_STATE"))
    );

    let next = alert(&service, "mystery_smell").await;
    assert_ne!(next, id, "a resolved incident takes no new signals");
    let (status, missing) = service.post("/v1/incidents/nope/ack", &json!({})).await;
    assert_eq!(
        (status, &missing["error"]["code"]),
        (404, &json!("INCIDENT_NOT_FOUND"))
    );
}

#[tokio::test]
async fn an_approval_names_the_step_as_shown_and_an_edited_runbook_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let runbooks = gated_runbooks(root.path(), "first text");
    let options = with_config(&config(root.path(), &runbooks));
    let mut service = Service::start_with(root.path(), options.clone()).await;
    let id = alert(&service, "needs_a_person").await;
    let path = format!("/v1/incidents/{id}");
    let waiting = wait_until(&service, &path, |i| i["awaiting"].is_object()).await;
    let shown = waiting["awaiting"].clone();
    assert_eq!(shown["step"], 0);
    assert_eq!(shown["action"], "notify");

    let (status, blind) = service.post(&format!("{path}/approve"), &json!({})).await;
    assert_eq!(
        (status, &blind["error"]["code"]),
        (422, &json!("INVALID_FIELD"))
    );
    let mut wrong = shown.clone();
    wrong["action"] = json!("restart");
    let (status, refused) = service.post(&format!("{path}/approve"), &wrong).await;
    assert_eq!(
        (status, &refused["error"]["code"]),
        (409, &json!("STEP_CHANGED"))
    );

    // The runbook is edited and the service restarted between showing and approving.
    gated_runbooks(root.path(), "edited text");
    service.kill_9();
    let service = Service::start_with(root.path(), options).await;
    let (status, stale) = service.post(&format!("{path}/approve"), &shown).await;
    assert_eq!(
        (status, &stale["error"]["code"]),
        (409, &json!("STEP_CHANGED")),
        "{stale}"
    );
    let (_, fresh) = service.get(&path).await;
    assert_eq!(fresh["status"], "open", "{fresh:#}");
    let now = fresh["awaiting"].clone();
    assert_ne!(
        now["digest"], shown["digest"],
        "the incident shows the new step"
    );
    let kinds: Vec<&str> = fresh["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(!kinds.contains(&"step.started"), "nothing ran: {kinds:?}");

    let (status, approved) = service.post(&format!("{path}/approve"), &now).await;
    assert_eq!(status, 200, "{approved}");
    let ran = wait_until(&service, &path, |i| {
        i["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "step.finished")
    })
    .await;
    let finished = ran["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "step.finished")
        .unwrap()
        .clone();
    assert_eq!(finished["detail"]["detail"], "edited text", "{finished}");
}

fn pid_of(body: &Value) -> i32 {
    i32::try_from(body["pid"].as_i64().unwrap()).unwrap()
}

fn kill(pid: i32) {
    // SAFETY: killing the sample app this test's service started.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}

/// A flapping app is handed to a person (`needs_human`, no restart); once they acknowledge and
/// resolve, the next crash gets the automatic restart again.
#[tokio::test]
async fn after_the_flap_guard_a_resolve_by_hand_lets_the_next_crash_be_restarted() {
    let root = tempfile::tempdir().unwrap();
    let _reaper = AppReaper(root.path().to_path_buf());
    let repo = sample_repo(root.path());
    let port = free_port();
    let checks =
        "    checks:\n      - {name: web-process, schedule: \"*/1 * * * * *\", kind: process}\n\
                  incidents: {flap_max: 1, flap_window_secs: 600}\n";
    let service = start(root.path(), &local_ops(&repo, port, 0, checks), Vec::new()).await;
    let (status, record) = service.post("/v1/deploys", &json!({"app": "web"})).await;
    assert_eq!(status, 201, "{record}");
    let deploy = format!("/v1/deploys/{}", record["id"].as_str().unwrap());
    wait_until(&service, &deploy, |d| d["status"] == "healthy").await;
    let first = wait_for_app(port, |_| true).await;
    wait_until(&service, "/v1/checks", |c| {
        c["checks"][0]["last"]["outcome"] == "pass"
    })
    .await;

    // The first crash is restarted; the second trips the flap guard.
    kill(pid_of(&first));
    let second = wait_for_app(port, |b| b["pid"] != first["pid"]).await;
    wait_until(&service, "/v1/incidents?app=web&status=resolved", |list| {
        !list["incidents"].as_array().unwrap().is_empty()
    })
    .await;
    kill(pid_of(&second));
    let list = wait_until(
        &service,
        "/v1/incidents?app=web&status=needs_human",
        |list| !list["incidents"].as_array().unwrap().is_empty(),
    )
    .await;
    let flapping = list["incidents"][0]["id"].as_str().unwrap().to_owned();
    assert!(
        crate::ops::app_down_for(port, std::time::Duration::from_secs(3)).await,
        "a flapping app is not restarted automatically"
    );

    let path = format!("/v1/incidents/{flapping}");
    let (status, _) = service.post(&format!("{path}/ack"), &json!({})).await;
    assert_eq!(status, 200);
    let (status, resolved) = service.post(&format!("{path}/resolve"), &json!({})).await;
    assert_eq!((status, &resolved["status"]), (200, &json!("resolved")));
    // The process check still fails: a new incident, restarted automatically.
    let third = wait_for_app(port, |b| b["pid"] != second["pid"]).await;
    assert_eq!(third["version"], "1");
    let list = wait_until(&service, "/v1/incidents?app=web", |list| {
        list["incidents"][0]["status"] == "resolved"
    })
    .await;
    let newest = &list["incidents"][0];
    assert_ne!(newest["id"], json!(flapping));
    assert!(
        newest["resolved_by"].is_null(),
        "resolved by its runbook: {newest:#}"
    );
}

/// The shipped `health-check-failing` runbook checks first: on an app that is healthy it ends
/// there, resolved, and restarts nothing.
#[tokio::test]
async fn the_health_check_failing_runbook_leaves_a_healthy_app_alone() {
    let root = tempfile::tempdir().unwrap();
    let repo = sample_repo(root.path());
    let restarted = root.path().join("restarted");
    let ops = format!(
        "apps:\n  svc:\n    repo: {repo}\n    provider: command\n    command: {{deploy: \"true\", rollback: \"true\", status: \"true\", restart: \"touch {restarted}\"}}\n    gates: {{approve_first: 0}}\n",
        repo = repo.display(),
        restarted = restarted.display(),
    );
    let service = start(root.path(), &ops, Vec::new()).await;
    let (status, record) = service.post("/v1/deploys", &json!({"app": "svc"})).await;
    assert_eq!(status, 201, "{record}");
    let deploy = format!("/v1/deploys/{}", record["id"].as_str().unwrap());
    wait_until(&service, &deploy, |d| d["status"] == "healthy").await;
    let (status, body) = service
        .post(
            "/v1/alerts",
            &json!({"app": "svc", "signal": "health_check_failed", "summary": "flaky probe"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let path = format!("/v1/incidents/{}", body["incidents"][0].as_str().unwrap());
    let incident = wait_until(&service, &path, |i| i["status"] != "open").await;
    assert_eq!(incident["status"], "resolved", "{incident:#}");
    assert_eq!(incident["actions"], json!([]), "{incident:#}");
    assert!(!restarted.exists(), "a healthy app was restarted");
}
