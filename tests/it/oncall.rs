//! Incidents a person can own, tried as an on-call engineer would: acknowledge, snooze and
//! resolve (each with their name on it), a resolved incident that takes no new signals, an
//! approval bound to the step as it was shown (a runbook edited in between is refused), and a
//! flapping app whose next crash is restarted again once a person has resolved its incident; and
//! silences (matchers and an end): a matching alert opens no incident, across a restart, until the
//! silence is expired, from the API and from the CLI.

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

/// Posts one alert of app `web` and answers (incident ids, silence per alert).
async fn alert_outcome(service: &Service, signal: &str) -> (Vec<Value>, Vec<Value>) {
    let (status, body) = service
        .post(
            "/v1/alerts",
            &json!({"app": "web", "signal": signal, "summary": "?"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let list = |key: &str| body[key].as_array().unwrap().clone();
    (list("incidents"), list("silenced"))
}

/// Makes a silence of `matchers` for an hour; answers it.
async fn silence(service: &Service, matchers: Value) -> Value {
    let body = json!({"matchers": matchers, "minutes": 60, "comment": "db migration"});
    let (status, made) = service.post("/v1/silences", &body).await;
    assert_eq!(status, 201, "{made}");
    made
}

/// Ids of the silences `GET path` lists.
async fn listed(service: &Service, path: &str) -> Vec<String> {
    let (status, page) = service.get(path).await;
    assert_eq!(status, 200, "{page}");
    page["silences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect()
}

/// `glitchlab_signals_silenced_total{app="other"}` (the app is not in `ops.yaml`).
async fn silenced_count(service: &Service) -> u64 {
    let text = service
        .request(reqwest::Method::GET, "/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|line| line.starts_with("glitchlab_signals_silenced_total{app=\"other\"}"))
        .and_then(|line| line.rsplit(' ').next())
        .map_or(0, |value| value.parse().unwrap())
}

#[tokio::test]
async fn a_silence_quiets_its_signal_across_a_restart_until_it_is_expired() {
    let root = tempfile::tempdir().unwrap();
    let runbooks = gated_runbooks(root.path(), "unused");
    let options = with_config(&config(root.path(), &runbooks));
    let mut service = Service::start_with(root.path(), options.clone()).await;
    let made = silence(&service, json!({"app": "web", "signal": "disk_full"})).await;
    let id = made["id"].as_str().unwrap().to_owned();
    assert_eq!(made["created_by"], "bootstrap");
    assert_eq!(made["comment"], "db migration");

    let (incidents, silenced) = alert_outcome(&service, "disk_full").await;
    assert!(incidents.is_empty(), "a silenced alert opens no incident");
    assert_eq!(silenced, vec![json!(id)]);
    let (incidents, silenced) = alert_outcome(&service, "oom").await;
    assert_eq!((incidents.len(), silenced), (1, vec![Value::Null]));
    let (_, page) = service.get("/v1/incidents?signal=disk_full").await;
    assert_eq!(page["incidents"], json!([]), "{page}");
    assert_eq!(silenced_count(&service).await, 1);

    let (_, page) = service.get("/v1/silences").await;
    assert_eq!(page["silences"][0]["id"], json!(id));
    assert_eq!(page["silences"][0]["created_by"], "bootstrap");
    assert_eq!(page["silences"][0]["matchers"]["signal"], "disk_full");

    // Durable: a kill -9 and a fresh start keep it in force.
    service.kill_9();
    let service = Service::start_with(root.path(), options).await;
    let (incidents, silenced) = alert_outcome(&service, "disk_full").await;
    assert!(incidents.is_empty());
    assert_eq!(silenced, vec![json!(id)]);

    let (status, expired) = service.delete(&format!("/v1/silences/{id}")).await;
    assert_eq!(status, 200, "{expired}");
    assert_eq!(expired["expired_by"], "bootstrap");
    assert!(listed(&service, "/v1/silences").await.is_empty());
    assert_eq!(listed(&service, "/v1/silences?all=true").await, vec![id]);
    let (incidents, silenced) = alert_outcome(&service, "disk_full").await;
    assert_eq!((incidents.len(), silenced), (1, vec![Value::Null]));

    let (status, missing) = service.delete("/v1/silences/no-such-silence").await;
    assert_eq!(
        (status, &missing["error"]["code"]),
        (404, &json!("SILENCE_NOT_FOUND"))
    );
    let (_, audit) = service.get("/v1/audit?principal=bootstrap").await;
    let routes: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["route"].as_str().unwrap())
        .collect();
    assert!(routes.contains(&"/v1/silences/{id}"), "{audit}");
}

#[tokio::test]
async fn a_silence_without_a_matcher_or_a_sensible_end_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let service = start(root.path(), "apps: {}\n", Vec::new()).await;
    let past = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let far = (chrono::Utc::now() + chrono::Duration::days(31)).to_rfc3339();
    let web = json!({"app": "web"});
    for body in [
        json!({"matchers": {}, "minutes": 60}),
        json!({"minutes": 60}),
        json!({"matchers": {"app": ""}, "minutes": 60}),
        json!({"matchers": web, "ends_at": past}),
        json!({"matchers": web, "ends_at": far}),
        json!({"matchers": web, "minutes": 31 * 24 * 60}),
        json!({"matchers": web}),
        json!({"matchers": web, "minutes": 5, "surprise": true}),
    ] {
        let (status, refused) = service.post("/v1/silences", &body).await;
        assert_eq!(
            (status, &refused["error"]["code"]),
            (422, &json!("INVALID_FIELD")),
            "{body}: {refused}"
        );
    }
    assert!(listed(&service, "/v1/silences?all=true").await.is_empty());
    // Labels alone are a matcher: only a signal carrying them is quieted.
    silence(&service, json!({"labels": {"zone": "a"}})).await;
    let labelled = json!({"app": "web", "signal": "x", "labels": {"zone": "a"}});
    let (_, answer) = service.post("/v1/alerts", &labelled).await;
    assert_eq!(answer["incidents"], json!([]), "{answer}");
    let (incidents, _) = alert_outcome(&service, "x").await;
    assert_eq!(incidents.len(), 1);
}

#[tokio::test]
async fn the_cli_adds_lists_and_expires_a_silence() {
    let root = tempfile::tempdir().unwrap();
    let service = start(root.path(), "apps: {}\n", Vec::new()).await;
    let base = service.base.clone();
    let added = tokio::task::spawn_blocking(move || {
        let args = [
            "silence",
            "add",
            "--app",
            "web",
            "--signal",
            "disk_full",
            "--label",
            "zone=a",
            "--minutes",
            "30",
            "--comment",
            "migration",
            "--json",
        ];
        crate::cli::glitchlab(&base, &args)
    })
    .await
    .unwrap();
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let made: Value = serde_json::from_slice(&added.stdout).unwrap();
    let id = made["id"].as_str().unwrap().to_owned();
    assert_eq!(made["matchers"]["labels"]["zone"], "a");
    assert_eq!(listed(&service, "/v1/silences").await, vec![id.clone()]);

    let (base, wanted) = (service.base.clone(), id.clone());
    let (table, expired, again, bad) = tokio::task::spawn_blocking(move || {
        (
            crate::cli::glitchlab(&base, &["silence", "list"]),
            crate::cli::glitchlab(&base, &["silence", "expire", &wanted]),
            crate::cli::glitchlab(&base, &["silence", "list", "--all", "--json"]),
            crate::cli::glitchlab(&base, &["silence", "expire", "nope"]),
        )
    })
    .await
    .unwrap();
    let table = String::from_utf8_lossy(&table.stdout).to_string();
    assert!(
        table.contains(&id) && table.contains("bootstrap"),
        "{table}"
    );
    assert!(table.contains("signal=disk_full"), "{table}");
    assert!(expired.status.success());
    assert!(listed(&service, "/v1/silences").await.is_empty());
    let all: Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(all["silences"][0]["expired_by"], "bootstrap");
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("SILENCE_NOT_FOUND"));
}

/// An incident waiting for a person's approval blocks only its own gated step: a crash of the
/// same app meanwhile is a new incident whose (ungated) runbook restarts the app at once.
#[tokio::test]
async fn a_crash_while_a_gated_step_waits_is_restarted_without_the_approval() {
    let root = tempfile::tempdir().unwrap();
    let _reaper = AppReaper(root.path().to_path_buf());
    let repo = sample_repo(root.path());
    let port = free_port();
    // The shipped runbooks, and one whose only step waits for a person.
    let runbooks = root.path().join("runbooks");
    std::fs::create_dir_all(&runbooks).unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("runbooks");
    for entry in std::fs::read_dir(shipped).unwrap().flatten() {
        std::fs::copy(entry.path(), runbooks.join(entry.file_name())).unwrap();
    }
    std::fs::write(
        runbooks.join("slow.yaml"),
        "name: slow\nmatch: {signal: slow}\nclassify: degradation\nsteps:\n  - {action: scale, count: 2}\n",
    )
    .unwrap();
    let checks =
        "    checks:\n      - {name: web-process, schedule: \"*/1 * * * * *\", kind: process}\n";
    let ops_file = root.path().join("ops.yaml");
    std::fs::write(&ops_file, local_ops(&repo, port, 0, checks)).unwrap();
    let config = format!(
        "[paths]\nops_file = \"{}\"\nrunbooks_dir = \"{}\"\n",
        ops_file.display(),
        runbooks.display()
    );
    let service = Service::start_with(root.path(), with_config(&config)).await;
    let (status, record) = service.post("/v1/deploys", &json!({"app": "web"})).await;
    assert_eq!(status, 201, "{record}");
    let deploy = format!("/v1/deploys/{}", record["id"].as_str().unwrap());
    wait_until(&service, &deploy, |d| d["status"] == "healthy").await;
    let first = wait_for_app(port, |_| true).await;
    wait_until(&service, "/v1/checks", |c| {
        c["checks"][0]["last"]["outcome"] == "pass"
    })
    .await;

    let gated = alert_for(&service, "web", "slow").await;
    let gated_path = format!("/v1/incidents/{gated}");
    wait_until(&service, &gated_path, |i| i["awaiting"].is_object()).await;
    kill(pid_of(&first));
    let restarted = wait_for_app(port, |b| b["pid"] != first["pid"]).await;
    assert_eq!(restarted["version"], "1");
    let (_, still) = service.get(&gated_path).await;
    assert_eq!(still["status"], "open", "{still:#}");
    assert!(still["awaiting"].is_object(), "still waits for its person");
    let kinds: Vec<&str> = still["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(!kinds.contains(&"signal.attached"), "{kinds:?}");
}

async fn alert_for(service: &Service, app: &str, signal: &str) -> String {
    let (status, body) = service
        .post("/v1/alerts", &json!({"app": app, "signal": signal}))
        .await;
    assert_eq!(status, 202, "{body}");
    body["incidents"][0].as_str().unwrap().to_owned()
}

/// Alertmanager grouping by instance gives every webhook its own `groupKey`: 40 of them for one
/// app and one alert, sent 8 at a time, are one incident (the configured grouping decides), and a
/// different alert of the same app is another.
#[tokio::test]
async fn per_instance_group_keys_of_one_app_and_alert_are_one_incident() {
    let root = tempfile::tempdir().unwrap();
    let service = std::sync::Arc::new(start(root.path(), "apps: {}\n", Vec::new()).await);
    let webhook = |alertname: &str, instance: usize| {
        json!({
            "version": "4", "status": "firing", "receiver": "glitchlab",
            "groupKey": format!("{{}}/{{}}:{{alertname=\"{alertname}\", instance=\"i-{instance}\"}}"),
            "alerts": [{
                "status": "firing",
                "labels": {"alertname": alertname, "app": "web", "instance": format!("i-{instance}")},
                "annotations": {"summary": "p99 over 2s"},
                "startsAt": "2026-01-01T00:00:00Z",
            }]
        })
    };
    let mut incidents = std::collections::BTreeSet::new();
    for wave in 0..5 {
        let mut sends = Vec::new();
        for i in 0..8 {
            let (service, body) = (service.clone(), webhook("HighLatency", wave * 8 + i));
            sends.push(tokio::spawn(async move {
                service.post("/v1/alerts", &body).await
            }));
        }
        for send in sends {
            let (status, body) = send.await.unwrap();
            assert_eq!(status, 202, "{body}");
            incidents.insert(body["incidents"][0].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(incidents.len(), 1, "one app, one alert: {incidents:?}");
    let id = incidents.iter().next().unwrap().clone();
    let (_, incident) = service.get(&format!("/v1/incidents/{id}")).await;
    assert_eq!(incident["signal_count"], 40, "{incident}");

    let (status, other) = service.post("/v1/alerts", &webhook("DiskFull", 0)).await;
    assert_eq!(status, 202, "{other}");
    assert_ne!(other["incidents"][0].as_str().unwrap(), id);
}

/// `glitchlab incident ack|snooze|resolve` do what the buttons do, each with its principal, and
/// an act the incident's state refuses exits 1 with the code.
#[tokio::test]
async fn the_cli_acknowledges_snoozes_and_resolves_an_incident() {
    let root = tempfile::tempdir().unwrap();
    let service = start(root.path(), "apps: {}\n", Vec::new()).await;
    let id = alert(&service, "mystery_smell").await;
    let (base, wanted) = (service.base.clone(), id.clone());
    let (ack, snooze, resolve, again) = tokio::task::spawn_blocking(move || {
        let run = |args: &[&str]| crate::cli::glitchlab(&base, args);
        (
            run(&["incident", "ack", &wanted, "--json"]),
            run(&["incident", "snooze", &wanted, "--minutes", "15", "--json"]),
            run(&["incident", "resolve", &wanted, "--json"]),
            run(&["incident", "ack", &wanted]),
        )
    })
    .await
    .unwrap();
    for (what, out) in [("ack", &ack), ("snooze", &snooze), ("resolve", &resolve)] {
        assert!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let acked: Value = serde_json::from_slice(&ack.stdout).unwrap();
    assert_eq!(acked["status"], "acknowledged");
    assert_eq!(acked["acknowledged"]["by"], "bootstrap");
    let snoozed: Value = serde_json::from_slice(&snooze.stdout).unwrap();
    assert!(snoozed["snoozed_until"].is_string(), "{snoozed}");
    let resolved: Value = serde_json::from_slice(&resolve.stdout).unwrap();
    assert_eq!(resolved["status"], "resolved");
    assert_eq!(resolved["resolved_by"]["by"], "bootstrap");
    assert_eq!(
        again.status.code(),
        Some(1),
        "a resolved incident cannot be acknowledged"
    );
    assert!(!String::from_utf8_lossy(&again.stderr).is_empty());
    let (_, stored) = service.get(&format!("/v1/incidents/{id}")).await;
    assert_eq!(stored["status"], "resolved");
}
