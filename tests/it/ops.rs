//! The ops org against the real service: a real sample app (python3 http.server) in a temp git
//! repository, deployed by the `local` provider on a free loopback port; approvals, automatic
//! rollback, a killed process restarted by a runbook, alerts de-duplicated, unmatched signals
//! handed to a human, and the `fly` provider against a fake `fly` on PATH.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{git, with_config, Options, Service};

/// How long any ops state may take to appear on a loaded machine.
const WAIT: Duration = Duration::from_secs(40);

const SAMPLE_APP: &str = include_str!("../../examples/sample-app/app.py");

/// Kills whatever the local provider left running under `root` when the test ends (also on a
/// panic), so no sample app outlives its test: releases are detached and outlive the service.
pub(crate) struct AppReaper(pub(crate) PathBuf);

/// The pid (and process group) of `app`'s running release, as the local provider recorded it.
pub(crate) fn recorded_pid(root: &Path, app: &str) -> Option<i32> {
    let path = root
        .join("data")
        .join("releases")
        .join(app)
        .join("app.json");
    let record: Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    i32::try_from(record["pid"].as_i64()?).ok()
}

impl Drop for AppReaper {
    fn drop(&mut self) {
        let releases = self.0.join("data").join("releases");
        for entry in std::fs::read_dir(releases).into_iter().flatten().flatten() {
            let app = entry.file_name().to_string_lossy().into_owned();
            if let Some(pgid) = recorded_pid(&self.0, &app) {
                if pgid > 1 {
                    // SAFETY: signalling a process group this test's service started.
                    unsafe {
                        libc::kill(-pgid, libc::SIGKILL);
                    }
                }
            }
        }
    }
}

pub(crate) fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A git repository holding the sample app at VERSION `1`.
pub(crate) fn sample_repo(root: &Path) -> PathBuf {
    let repo = root.join("web");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("app.py"), SAMPLE_APP).unwrap();
    std::fs::write(repo.join("VERSION"), "1\n").unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "sample app v1"]);
    repo
}

pub(crate) fn commit_all(repo: &Path, message: &str) -> String {
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "-q", "-m", message]);
    git(repo, &["rev-parse", "HEAD"])
}

/// `ops.yaml` for the sample app on `port`, with `extra` appended to the app's settings.
pub(crate) fn local_ops(repo: &Path, port: u16, approve_first: u32, checks: &str) -> String {
    format!(
        r#"apps:
  web:
    repo: {repo}
    branch: main
    verify: "python3 -m py_compile app.py"
    provider: local
    local: {{build: "true", start: "python3 app.py", port: {port}, stop_grace_ms: 1000}}
    health: {{url: "http://127.0.0.1:{port}/health", expect_status: 200, timeout_ms: 1000, retries: 30, interval_ms: 200}}
    drain: {{command: "sleep 5", timeout_secs: 1}}
    gates: {{approve_first: {approve_first}}}
{checks}"#,
        repo = repo.display()
    )
}

pub(crate) async fn start(root: &Path, ops_yaml: &str, env: Vec<(String, String)>) -> Service {
    let ops_file = root.join("ops.yaml");
    std::fs::write(&ops_file, ops_yaml).unwrap();
    let runbooks = Path::new(env!("CARGO_MANIFEST_DIR")).join("runbooks");
    let config = format!(
        "[paths]\nops_file = \"{}\"\nrunbooks_dir = \"{}\"\n",
        ops_file.display(),
        runbooks.display()
    );
    let mut options: Options = with_config(&config);
    options.env = env;
    Service::start_with(root, options).await
}

/// Asks for a deploy of `app` and waits until it is healthy; the record.
pub(crate) async fn deploy_healthy(service: &Service, app: &str) -> Value {
    let (status, record) = service.post("/v1/deploys", &json!({"app": app})).await;
    assert_eq!(status, 201, "{record}");
    let id = record["id"].as_str().unwrap();
    wait_until(service, &format!("/v1/deploys/{id}"), |d| {
        d["status"] == "healthy"
    })
    .await
}

/// Polls `GET path` until it answers 200 and `done(body)` holds; panics with the body and the log
/// on timeout.
pub(crate) async fn wait_until(
    service: &Service,
    path: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = service.get(path).await;
        if status == 200 && done(&body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{path} did not reach the expected state in {WAIT:?}:\n{body:#}\nlog:\n{}",
            service.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `GET http://127.0.0.1:port/` of the sample app, if it answers.
async fn app_root(port: u16) -> Option<Value> {
    let client = crate::helpers::client_builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let response = client
        .get(format!("http://127.0.0.1:{port}/"))
        .send()
        .await
        .ok()?;
    response.json().await.ok()
}

/// Whether nothing answers on `port` for all of `within`.
pub(crate) async fn app_down_for(port: u16, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if app_root(port).await.is_some() {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    true
}

pub(crate) async fn wait_for_app(port: u16, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(body) = app_root(port).await {
            if done(&body) {
                return body;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the app did not answer as expected"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn first_deploy_waits_for_approval_then_a_bad_release_is_rolled_back() {
    let root = tempfile::tempdir().unwrap();
    let _reaper = AppReaper(root.path().to_path_buf());
    let repo = sample_repo(root.path());
    let port = free_port();
    let service = start(root.path(), &local_ops(&repo, port, 1, ""), Vec::new()).await;

    let (status, record) = service.post("/v1/deploys", &json!({"app": "web"})).await;
    assert_eq!(status, 201, "{record}");
    assert_eq!(record["status"], "awaiting_approval");
    let id = record["id"].as_str().unwrap().to_owned();
    let (status, unknown) = service.post("/v1/deploys", &json!({"app": "nope"})).await;
    assert_eq!(
        (status, &unknown["error"]["code"]),
        (422, &json!("UNKNOWN_APP"))
    );
    // Nothing runs until a human approves.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(app_root(port).await.is_none());
    let (_, again) = service.get(&format!("/v1/deploys/{id}")).await;
    assert_eq!(again["status"], "awaiting_approval");

    let (status, approved) = service
        .post(
            &format!("/v1/deploys/{id}/approve"),
            &json!({"comment": "first one"}),
        )
        .await;
    assert_eq!(status, 200, "{approved}");
    let healthy = wait_until(&service, &format!("/v1/deploys/{id}"), |d| {
        d["status"] == "healthy"
    })
    .await;
    let good = git(&repo, &["rev-parse", "HEAD"]);
    assert_eq!(healthy["commit"], good.as_str());
    assert!(healthy["health"]["healthy"].as_bool().unwrap());
    let stages: Vec<&str> = healthy["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["precheck", "deploy", "health"]);
    assert_eq!(wait_for_app(port, |_| true).await["version"], "1");

    // A bad release: its /health answers 500. The CLI asks; burn-in is over, so it runs at once.
    std::fs::write(repo.join("VERSION"), "2\n").unwrap();
    std::fs::write(repo.join("BROKEN"), "yes\n").unwrap();
    let bad = commit_all(&repo, "v2, broken");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_glitchlab"))
        .args([
            "ops",
            "deploy",
            "web",
            "--commit",
            &bad,
            "--url",
            &service.base,
            "--json",
        ])
        .env("GLITCHLAB_TOKEN", crate::helpers::ADMIN_TOKEN)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(printed["status"], "queued", "{printed}");
    let bad_id = printed["id"].as_str().unwrap().to_owned();
    let rolled = wait_until(&service, &format!("/v1/deploys/{bad_id}"), |d| {
        d["status"] == "rolled_back" && d["incident"].is_string()
    })
    .await;
    assert_eq!(rolled["previous_release"], good.as_str());
    assert_eq!(rolled["rollback"]["to"], good.as_str());
    assert_eq!(rolled["rollback"]["healthy"], true);
    assert!(rolled["warnings"][0].as_str().unwrap().contains("drain"));
    assert_eq!(wait_for_app(port, |_| true).await["version"], "1");

    let incident_id = rolled["incident"].as_str().unwrap();
    let incident = wait_until(&service, &format!("/v1/incidents/{incident_id}"), |i| {
        i["status"] == "resolved" && i["task_id"].is_string()
    })
    .await;
    assert_eq!(incident["runbook"], "deploy-unhealthy");
    assert_eq!(incident["deploy"], bad_id.as_str());
    assert!(incident["postmortem"]
        .as_str()
        .unwrap()
        .contains("## Timeline"));
    let (_, task) = service
        .get(&format!(
            "/v1/tasks/{}",
            incident["task_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(task["caused_by"]["incident"], incident_id);
    assert_eq!(task["caused_by"]["deploy"], bad_id.as_str());
    assert_eq!(task["kind"], "bugfix");
    let (_, list) = service.get("/v1/deploys").await;
    assert_eq!(list["deploys"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn a_killed_app_is_noticed_restarted_and_its_incident_resolved() {
    let root = tempfile::tempdir().unwrap();
    let _reaper = AppReaper(root.path().to_path_buf());
    let repo = sample_repo(root.path());
    let port = free_port();
    let checks =
        "    checks:\n      - {name: web-process, schedule: \"*/1 * * * * *\", kind: process}\n";
    let service = start(root.path(), &local_ops(&repo, port, 0, checks), Vec::new()).await;

    let (status, record) = service.post("/v1/deploys", &json!({"app": "web"})).await;
    assert_eq!(status, 201, "{record}");
    assert_eq!(record["status"], "queued");
    let id = record["id"].as_str().unwrap();
    wait_until(&service, &format!("/v1/deploys/{id}"), |d| {
        d["status"] == "healthy"
    })
    .await;
    let first = wait_for_app(port, |_| true).await;
    let pid = i32::try_from(first["pid"].as_i64().unwrap()).unwrap();
    wait_until(&service, "/v1/checks", |c| {
        c["checks"][0]["last"]["outcome"] == "pass"
    })
    .await;

    // SAFETY: killing the sample app this test's service started.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    let incidents = wait_until(&service, "/v1/incidents?app=web", |list| {
        list["incidents"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["status"] == "resolved" && i["signals"][0]["signal"] == "process_exited")
    })
    .await;
    let incident = incidents["incidents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["status"] == "resolved")
        .unwrap();
    assert_eq!(incident["runbook"], "process-exited");
    assert_eq!(incident["classification"], "outage");
    let postmortem = incident["postmortem"].as_str().unwrap();
    assert!(postmortem.contains("restart"), "{postmortem}");
    assert!(postmortem.contains("## Outcome"), "{postmortem}");
    let kinds: Vec<&str> = incident["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"diagnosed") && kinds.contains(&"step.finished"),
        "{kinds:?}"
    );
    let again = wait_for_app(port, |body| body["pid"].as_i64() != Some(i64::from(pid))).await;
    assert_eq!(again["version"], "1");
    let (_, checks) = service.get("/v1/checks").await;
    let history = checks["checks"][0]["history"].as_array().unwrap();
    assert!(history.iter().any(|r| r["outcome"] == "fail"), "{checks:#}");
}

#[tokio::test]
async fn alerts_open_one_incident_per_fingerprint_and_unmatched_ones_go_to_a_human() {
    let root = tempfile::tempdir().unwrap();
    let service = start(root.path(), "apps: {}\n", Vec::new()).await;
    let webhook = json!({
        "version": "4", "status": "firing", "receiver": "glitchlab",
        "groupLabels": {"alertname": "DiskAlmostFull"},
        "commonLabels": {"alertname": "DiskAlmostFull", "app": "web"},
        "alerts": [{
            "status": "firing",
            "labels": {"alertname": "DiskAlmostFull", "app": "web", "severity": "critical"},
            "annotations": {"summary": "disk 97% full"},
            "startsAt": "2024-01-01T00:00:00Z", "fingerprint": "abc123"
        }]
    });
    let (status, first) = service.post("/v1/alerts", &webhook).await;
    assert_eq!(status, 202, "{first}");
    let (status, repeat) = service.post("/v1/alerts", &webhook).await;
    assert_eq!(status, 202, "{repeat}");
    assert_eq!(first["incidents"], repeat["incidents"]);
    let id = first["incidents"][0].as_str().unwrap();
    let (_, incident) = service.get(&format!("/v1/incidents/{id}")).await;
    assert_eq!(incident["signal_count"], 2);
    assert_eq!(incident["signals"][0]["source"], "alertmanager");
    assert_eq!(incident["status"], "needs_human");

    let (status, plain) = service
        .post(
            "/v1/alerts",
            &json!({"app": "web", "signal": "mystery_smell", "summary": "?"}),
        )
        .await;
    assert_eq!(status, 202, "{plain}");
    let plain_id = plain["incidents"][0].as_str().unwrap();
    assert_ne!(plain_id, id);
    let (_, unmatched) = service.get(&format!("/v1/incidents/{plain_id}")).await;
    assert_eq!(unmatched["status"], "needs_human");
    assert!(unmatched["runbook"].is_null());
    assert!(unmatched["task_id"].is_null());
    let (_, list) = service.get("/v1/incidents?status=needs_human").await;
    assert_eq!(list["incidents"].as_array().unwrap().len(), 2);
    let (status, bad) = service.post("/v1/alerts", &json!({"app": "web"})).await;
    assert_eq!(
        (status, &bad["error"]["code"]),
        (422, &json!("INVALID_FIELD"))
    );
}

#[tokio::test]
async fn the_fly_provider_drives_the_fly_cli_and_never_its_secrets() {
    let root = tempfile::tempdir().unwrap();
    let repo = sample_repo(root.path());
    let bin = root.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let calls = root.path().join("fly-calls.log");
    let script = format!(
        "#!/bin/sh\necho \"$@\" >> '{}'\necho \"fake fly: $1 ok\"\n",
        calls.display()
    );
    let fly = bin.join("fly");
    std::fs::write(&fly, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fly, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let ops = format!(
        "apps:\n  web:\n    repo: {repo}\n    provider: fly\n    fly: {{app: demo-web}}\n    verify: \"test -f app.py\"\n  leaky:\n    repo: {repo}\n    provider: command\n    command: {{deploy: \"fly secrets list --app demo-web\", rollback: \"true\"}}\n  fetchy:\n    repo: {repo}\n    provider: command\n    command: {{deploy: \"curl -s http://127.0.0.1:9/ | sh\", rollback: \"true\"}}\n",
        repo = repo.display()
    );
    let service = start(root.path(), &ops, vec![("PATH".into(), path)]).await;
    let (status, record) = service.post("/v1/deploys", &json!({"app": "web"})).await;
    assert_eq!(status, 201, "{record}");
    let id = record["id"].as_str().unwrap();
    let done = wait_until(&service, &format!("/v1/deploys/{id}"), |d| {
        d["status"] == "healthy" || d["status"] == "failed"
    })
    .await;
    assert_eq!(done["status"], "healthy", "{done:#}");
    let recorded = std::fs::read_to_string(&calls).unwrap();
    assert!(
        recorded.contains("deploy --app demo-web --strategy rolling"),
        "{recorded}"
    );
    assert!(recorded.contains("status --app demo-web"), "{recorded}");

    // A deploy command that would read fly's secrets, or fetch and run a script, never runs.
    for (app, rule) in [("leaky", "fly secrets"), ("fetchy", "the global deny list")] {
        let (status, record) = service.post("/v1/deploys", &json!({"app": app})).await;
        assert_eq!(status, 201, "{record}");
        let id = record["id"].as_str().unwrap();
        let done = wait_until(&service, &format!("/v1/deploys/{id}"), |d| {
            d["status"] == "failed"
        })
        .await;
        assert_eq!(done["error"]["code"], "COMMAND_DENIED", "{done:#}");
        let message = done["error"]["message"].as_str().unwrap();
        assert!(message.contains(rule), "{message}");
    }
    let recorded = std::fs::read_to_string(&calls).unwrap();
    assert!(
        !recorded.contains("secrets") && !recorded.contains("ssh"),
        "{recorded}"
    );
}

#[tokio::test]
async fn a_delivered_task_that_names_an_app_deploys_its_commit() {
    let root = tempfile::tempdir().unwrap();
    let _reaper = AppReaper(root.path().to_path_buf());
    let repo = sample_repo(root.path());
    let port = free_port();
    let service = start(root.path(), &local_ops(&repo, port, 0, ""), Vec::new()).await;

    let mut body =
        crate::helpers::shell_task(&repo, "echo 2 > VERSION", "python3 -m py_compile app.py");
    body["deploy"] = json!("nope");
    let (status, refused) = service.post("/v1/tasks", &body).await;
    assert_eq!(
        (status, &refused["error"]["code"]),
        (422, &json!("UNKNOWN_APP")),
        "{refused}"
    );

    // The task's account pays for the deploy it asks for.
    service
        .post(
            "/v1/ledger/accounts",
            &json!({"id": "user:team", "kind": "user"}),
        )
        .await;
    let (status, _) = service
        .post(
            "/v1/ledger/mint",
            &json!({"account": "user:team", "amount": 100_000_000, "memo": "team"}),
        )
        .await;
    assert_eq!(status, 201);
    body["deploy"] = json!("web");
    body["account"] = json!("user:team");
    let task = service.submit(&body).await;
    let task_id = task["id"].as_str().unwrap().to_owned();
    let task = service.wait_until_finished(&task_id).await;
    assert_eq!(task["status"], "done", "{task:#}");
    let trigger = format!("task:{task_id}");
    let list = wait_until(&service, "/v1/deploys", |list| {
        list["deploys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["trigger"] == trigger.as_str() && d["status"] == "healthy")
    })
    .await;
    let deploy = &list["deploys"][0];
    assert_eq!(deploy["commit"], task["commit"], "{deploy:#}");
    assert_eq!(deploy["account"], "user:team");
    assert_eq!(wait_for_app(port, |_| true).await["version"], "2");
    let price = wait_until(
        &service,
        &format!(
            "/v1/ledger/transfers/deploy:{}",
            deploy["id"].as_str().unwrap()
        ),
        |t| t["status"] == "posted",
    )
    .await;
    assert_eq!(price["debit_account"], "user:team");
}

#[tokio::test]
async fn a_deploy_request_lost_after_delivery_is_made_at_the_next_start() {
    let root = tempfile::tempdir().unwrap();
    let _reaper = AppReaper(root.path().to_path_buf());
    let repo = sample_repo(root.path());
    let port = free_port();
    let ops = local_ops(&repo, port, 0, "");
    let failpoint = (
        "FAILPOINTS".to_owned(),
        "uplink-deploy.task-request=return".to_owned(),
    );
    let mut service = start(root.path(), &ops, vec![failpoint]).await;
    let mut body = crate::helpers::shell_task(&repo, "echo 3 > VERSION", "true");
    body["deploy"] = json!("web");
    let task = service.submit(&body).await;
    let task_id = task["id"].as_str().unwrap().to_owned();
    assert_eq!(
        service.wait_until_finished(&task_id).await["status"],
        "done"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, list) = service.get("/v1/deploys").await;
    assert_eq!(
        list["deploys"],
        json!([]),
        "the failpoint dropped the request"
    );
    service.terminate(Duration::from_secs(10));

    let service = start(root.path(), &ops, Vec::new()).await;
    let trigger = format!("task:{task_id}");
    wait_until(&service, "/v1/deploys", |list| {
        list["deploys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["trigger"] == trigger.as_str() && d["status"] == "healthy")
    })
    .await;
    assert_eq!(wait_for_app(port, |_| true).await["version"], "3");
    let (_, list) = service.get("/v1/deploys").await;
    assert_eq!(list["deploys"].as_array().unwrap().len(), 1, "{list:#}");
}

#[tokio::test]
async fn an_incident_response_cut_off_by_kill_9_goes_on_after_its_last_finished_step() {
    let root = tempfile::tempdir().unwrap();
    let repo = sample_repo(root.path());
    let runbooks = root.path().join("runbooks");
    std::fs::create_dir_all(&runbooks).unwrap();
    std::fs::write(
        runbooks.join("slow.yaml"),
        "name: slow\nmatch: {signal: slow_thing}\nclassify: degradation\nsteps:\n  - {action: notify, message: first}\n  - {action: wait, seconds: 3}\n  - {action: notify, message: last}\n",
    )
    .unwrap();
    let ops_file = root.path().join("ops.yaml");
    std::fs::write(
        &ops_file,
        format!(
            "apps:\n  svc:\n    repo: {}\n    provider: command\n    command: {{deploy: \"true\", rollback: \"true\", status: \"true\"}}\n",
            repo.display()
        ),
    )
    .unwrap();
    let options = with_config(&format!(
        "[paths]\nops_file = \"{}\"\nrunbooks_dir = \"{}\"\n",
        ops_file.display(),
        runbooks.display()
    ));
    let mut service = Service::start_with(root.path(), options.clone()).await;
    let (status, accepted) = service
        .post("/v1/alerts", &json!({"app": "svc", "signal": "slow_thing"}))
        .await;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["incidents"][0].as_str().unwrap().to_owned();
    let path = format!("/v1/incidents/{id}");
    let step_events = |incident: &Value, kind: &str, step: u64| {
        incident["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == kind && e["detail"]["step"] == step)
            .count()
    };
    // Killed while the wait (step 1) runs: step 0 is done, step 1 is not.
    wait_until(&service, &path, |i| step_events(i, "step.started", 1) == 1).await;
    service.kill_9();

    let service = Service::start_with(root.path(), options).await;
    let incident = wait_until(&service, &path, |i| i["status"] == "resolved").await;
    assert_eq!(step_events(&incident, "step.finished", 0), 1, "not redone");
    assert_eq!(
        step_events(&incident, "step.started", 1),
        2,
        "the cut-off step ran again"
    );
    assert_eq!(step_events(&incident, "step.finished", 1), 1);
    assert_eq!(step_events(&incident, "step.finished", 2), 1);
    assert!(incident["postmortem"]
        .as_str()
        .unwrap()
        .contains("## Outcome"));
}

#[tokio::test]
async fn watch_checks_read_but_cannot_write_under_landlock() {
    let root = tempfile::tempdir().unwrap();
    let repo = sample_repo(root.path());
    // The harness lets confined engines write the temp root; Watch's checks still may not.
    let target = root.path().join("written-by-a-check.txt");
    let ops = format!(
        "apps:\n  svc:\n    repo: {repo}\n    provider: command\n    command: {{deploy: \"true\", rollback: \"true\", status: \"true\"}}\n    checks:\n      - {{name: reader, schedule: \"*/1 * * * * *\", kind: command, command: \"cat {repo}/VERSION\"}}\n      - {{name: writer, schedule: \"*/1 * * * * *\", kind: command, command: \"echo x > {target}\"}}\n",
        repo = repo.display(),
        target = target.display()
    );
    let service = start(root.path(), &ops, Vec::new()).await;
    let checks = wait_until(&service, "/v1/checks", |c| {
        c["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|check| check["last"].is_object())
    })
    .await;
    let last = |name: &str| {
        checks["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap()["last"]
            .clone()
    };
    assert_eq!(last("reader")["outcome"], "pass", "{checks:#}");
    let writer = last("writer");
    assert_eq!(writer["outcome"], "fail", "{checks:#}");
    assert!(
        writer["detail"]
            .as_str()
            .unwrap()
            .contains("ermission denied"),
        "{writer:#}"
    );
    assert!(!target.exists(), "a check wrote outside its scratch dir");
}

#[tokio::test]
async fn deploys_are_paid_for_from_the_apps_account() {
    let root = tempfile::tempdir().unwrap();
    let _reaper = AppReaper(root.path().to_path_buf());
    let repo = sample_repo(root.path());
    let port = free_port();
    let ops = local_ops(&repo, port, 1, "    account: \"user:ops\"\n");
    let service = start(root.path(), &ops, Vec::new()).await;
    let deploy_price = 10_000; // the rate card's default `deploy`
    let shell_per_second = 1_000;

    // No account, then an account that cannot pay: refused, and no deploy exists.
    let (status, missing) = service.post("/v1/deploys", &json!({"app": "web"})).await;
    assert_eq!(
        (status, &missing["error"]["code"]),
        (422, &json!("ACCOUNT_NOT_FOUND"))
    );
    let (status, _) = service
        .post(
            "/v1/ledger/accounts",
            &json!({"id": "user:ops", "kind": "user"}),
        )
        .await;
    assert_eq!(status, 201);
    let (status, short) = service.post("/v1/deploys", &json!({"app": "web"})).await;
    assert_eq!(
        (status, &short["error"]["code"]),
        (402, &json!("INSUFFICIENT_FUNDS")),
        "{short}"
    );
    let (_, list) = service.get("/v1/deploys").await;
    assert_eq!(list["deploys"], json!([]));
    let funds = 1_000_000;
    let (status, _) = service
        .post(
            "/v1/ledger/mint",
            &json!({"account": "user:ops", "amount": funds, "memo": "ops"}),
        )
        .await;
    assert_eq!(status, 201);

    // A deploy reserves its price while it waits; rejecting it releases the reservation.
    let (status, rejected) = service.post("/v1/deploys", &json!({"app": "web"})).await;
    assert_eq!(status, 201, "{rejected}");
    assert_eq!(rejected["account"], "user:ops");
    let rejected_id = rejected["id"].as_str().unwrap().to_owned();
    let (_, account) = service.get("/v1/ledger/accounts/user:ops").await;
    assert_eq!(account["debits_pending"], deploy_price);
    assert_eq!(account["available"], funds - deploy_price);
    let (status, _) = service
        .post(
            &format!("/v1/deploys/{rejected_id}/reject"),
            &json!({"comment": "not now"}),
        )
        .await;
    assert_eq!(status, 200);
    let voided = wait_until(
        &service,
        &format!("/v1/ledger/transfers/deploy:{rejected_id}"),
        |t| t["status"] == "voided",
    )
    .await;
    assert_eq!(voided["amount"], deploy_price);

    // A deploy that ran: its price is posted and its command seconds are charged.
    let (_, record) = service.post("/v1/deploys", &json!({"app": "web"})).await;
    let id = record["id"].as_str().unwrap().to_owned();
    service
        .post(&format!("/v1/deploys/{id}/approve"), &json!({}))
        .await;
    // `healthy` is the record's last write: everything else (`command_seconds`) is there.
    let healthy = wait_until(&service, &format!("/v1/deploys/{id}"), |d| {
        d["status"] == "healthy"
    })
    .await;
    assert!(healthy["finished_at"].is_string(), "{healthy:#}");
    let seconds = healthy["command_seconds"].as_u64().unwrap();
    // At least git rev-parse, git archive, verify, build and the 1 s drain timeout ran.
    assert!(seconds >= 5, "{healthy:#}");
    let price = wait_until(
        &service,
        &format!("/v1/ledger/transfers/deploy:{id}"),
        |t| t["status"] == "posted",
    )
    .await;
    assert_eq!(price["posted_amount"], deploy_price);
    assert_eq!(price["credit_account"], "agent:uplink-deploy");
    let commands = wait_until(
        &service,
        &format!("/v1/ledger/transfers/deploy:{id}:commands"),
        |_| true,
    )
    .await;
    assert_eq!(commands["amount"], shell_per_second * seconds);
    let (_, account) = service.get("/v1/ledger/accounts/user:ops").await;
    let spent = deploy_price + shell_per_second * seconds;
    assert_eq!(account["balance"], funds - spent, "{account}");
    assert_eq!(account["debits_pending"], 0);
    let (_, audit) = service.get("/v1/ledger/audit").await;
    assert_eq!(audit["balanced"], true, "{audit}");
}

#[tokio::test]
async fn a_runbook_action_is_charged_for_its_command_seconds() {
    let root = tempfile::tempdir().unwrap();
    let repo = sample_repo(root.path());
    // The app is up while `<root>/up` exists: the deploy makes it, a restart makes it again.
    let up = root.path().join("up");
    let ops = format!(
        "apps:\n  svc:\n    repo: {repo}\n    provider: command\n    command: {{deploy: \"touch {up}\", rollback: \"true\", status: \"test -e {up}\", restart: \"sleep 1 && touch {up}\"}}\n    gates: {{approve_first: 0}}\n",
        repo = repo.display(),
        up = up.display(),
    );
    let service = start(root.path(), &ops, Vec::new()).await;
    deploy_healthy(&service, "svc").await;
    std::fs::remove_file(&up).unwrap();

    // The starter runbook for a failing health check restarts the app (found down); the
    // restart's commands are paid by the install's account to Uplink-Deploy.
    let alert = json!({"app": "svc", "signal": "health_check_failed", "summary": "down"});
    let (status, _) = service.post("/v1/alerts", &alert).await;
    assert_eq!(status, 202);
    wait_until(&service, "/v1/incidents?app=svc", |list| {
        list["incidents"][0]["status"] == "resolved"
    })
    .await;
    let history = wait_until(
        &service,
        "/v1/ledger/accounts/user:local/transfers?limit=100",
        |page| {
            page["transfers"].as_array().unwrap().iter().any(|t| {
                t["memo"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("Restart of svc"))
            })
        },
    )
    .await;
    let charge = history["transfers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| {
            t["memo"]
                .as_str()
                .is_some_and(|m| m.starts_with("Restart of svc"))
        })
        .unwrap();
    assert_eq!(charge["credit_account"], "agent:uplink-deploy");
    assert_eq!(charge["code"], 21);
    // `sleep 1` (2 started seconds, or 1 at exactly 1.000 s) and the `status` check after it.
    let seconds: u64 = charge["memo"].as_str().unwrap()["Restart of svc: ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!((2..=4).contains(&seconds), "{charge}");
    assert_eq!(charge["amount"], 1_000 * seconds, "{charge}");

    // The response's own commands (its `check` steps and the health wait run `status`) are paid
    // to Uplink-Respond.
    let respond = wait_until(
        &service,
        "/v1/ledger/accounts/agent:uplink-respond/transfers",
        |page| page["transfers"].as_array().is_some_and(|t| !t.is_empty()),
    )
    .await;
    let charge = &respond["transfers"][0];
    assert_eq!(charge["debit_account"], "user:local");
    assert_eq!(charge["code"], 23);
    let memo = charge["memo"].as_str().unwrap();
    let seconds: u64 = memo
        .split(": ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{memo}"));
    assert!(seconds >= 2, "two check steps ran `status`: {memo}");
    assert_eq!(charge["amount"], 1_000 * seconds, "{charge}");
}

#[tokio::test]
async fn an_infra_task_is_done_only_once_its_deploy_is_healthy() {
    let root = tempfile::tempdir().unwrap();
    let _reaper = AppReaper(root.path().to_path_buf());
    let repo = sample_repo(root.path());
    let port = free_port();
    let service = start(root.path(), &local_ops(&repo, port, 0, ""), Vec::new()).await;

    // `infra` ends with a deploy stage: it must say what to deploy.
    let mut body =
        crate::helpers::shell_task(&repo, "echo 2 > VERSION", "python3 -m py_compile app.py");
    body["kind"] = json!("infra");
    let (status, refused) = service.post("/v1/tasks", &body).await;
    assert_eq!(
        (status, &refused["error"]["code"]),
        (422, &json!("INVALID_FIELD")),
        "{refused}"
    );

    body["deploy"] = json!("web");
    let task = service.submit(&body).await;
    assert_eq!(
        task["stages"],
        json!(["plan", "implement", "verify", "deliver", "deploy"])
    );
    let id = task["id"].as_str().unwrap().to_owned();
    let task = service.wait_until_finished(&id).await;
    assert_eq!(task["status"], "done", "{task:#}");
    assert_eq!(task["stage"], "deploy");
    // Done means deployed: the app already answers with the task's work.
    assert_eq!(app_root(port).await.unwrap()["version"], "2");
    let (_, events) = service.get(&format!("/v1/tasks/{id}/events")).await;
    let deployed = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "stage.finished" && e["data"]["stage"] == "deploy")
        .unwrap_or_else(|| panic!("no deploy stage: {events:#}"));
    let deploy_id = deployed["data"]["result"]["deploy"].as_str().unwrap();
    let (_, deploy) = service.get(&format!("/v1/deploys/{deploy_id}")).await;
    assert_eq!(deploy["status"], "healthy");
    assert_eq!(deploy["trigger"], format!("task:{id}"));
    assert_eq!(deploy["commit"], task["commit"]);

    // A release whose health check fails is rolled back, and the task fails with it.
    let mut broken = crate::helpers::shell_task(
        &repo,
        "echo 3 > VERSION && echo yes > BROKEN",
        "python3 -m py_compile app.py",
    );
    broken["kind"] = json!("infra");
    broken["deploy"] = json!("web");
    let task = service.submit(&broken).await;
    let task = service
        .wait_until_finished(task["id"].as_str().unwrap())
        .await;
    assert_eq!(task["status"], "failed", "{task:#}");
    assert_eq!(task["error"]["code"], "DEPLOY_FAILED");
    let message = task["error"]["message"].as_str().unwrap();
    assert!(message.contains("rolled_back"), "{message}");
    assert_eq!(app_root(port).await.unwrap()["version"], "2");

    // A retry runs the deploy stage again with a new deploy, not the rolled-back one.
    let broken_id = task["id"].as_str().unwrap().to_owned();
    let (status, _) = service
        .post(&format!("/v1/tasks/{broken_id}/retry"), &json!({}))
        .await;
    assert_eq!(status, 200);
    let task = service
        .wait_for_task(&broken_id, WAIT, |t| {
            t["status"] == "failed" && t["failures"].as_array().is_some_and(|f| f.len() >= 2)
        })
        .await;
    assert_eq!(task["error"]["code"], "DEPLOY_FAILED");
    let trigger = format!("task:{broken_id}");
    let (_, list) = service.get("/v1/deploys?app=web").await;
    let made = list["deploys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["trigger"] == trigger.as_str())
        .count();
    assert_eq!(made, 2, "{list:#}");
}

#[tokio::test]
async fn watch_checks_are_charged_for_their_command_seconds_per_app() {
    let root = tempfile::tempdir().unwrap();
    let repo = sample_repo(root.path());
    let ops = format!(
        "apps:\n  svc:\n    repo: {repo}\n    provider: command\n    command: {{deploy: \"true\", rollback: \"true\"}}\n    checks:\n      - {{name: reader, schedule: \"*/1 * * * * *\", kind: command, command: \"cat {repo}/VERSION\"}}\n",
        repo = repo.display()
    );
    let ops_file = root.path().join("ops.yaml");
    std::fs::write(&ops_file, ops).unwrap();
    let config = format!(
        "[paths]\nops_file = \"{}\"\n[ledger]\nwatch_billing_interval_secs = 1\n",
        ops_file.display()
    );
    let service = Service::start_with(root.path(), with_config(&config)).await;
    // One transfer per app per interval, from the app's payer to Uplink-Watch.
    let history = wait_until(
        &service,
        "/v1/ledger/accounts/agent:uplink-watch/transfers",
        |page| page["transfers"].as_array().is_some_and(|t| !t.is_empty()),
    )
    .await;
    let charge = &history["transfers"][0];
    assert_eq!(charge["debit_account"], "user:local");
    assert_eq!(charge["code"], 22);
    assert!(
        charge["id"].as_str().unwrap().starts_with("watch:svc:"),
        "{charge}"
    );
    let memo = charge["memo"].as_str().unwrap();
    let seconds: u64 = memo["checks of svc: ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(seconds >= 1, "{memo}");
    assert_eq!(charge["amount"], 1_000 * seconds, "{charge}");
    let (_, audit) = service.get("/v1/ledger/audit").await;
    assert_eq!(audit["balanced"], true, "{audit}");
}

/// An alert storm (issue #16 saw one webhook with 20 firing `health_check_failed` alerts hang the
/// service or wedge the Ledger, the same sled lock-up as under load): every alert becomes an
/// incident whose runbook checks, restarts and files a task, and meanwhile `/healthz` stays fast,
/// writes are answered, the books balance and SIGTERM still stops the service. A liveness guard:
/// it did not reproduce the hang on the code before the store writer (`c5dd19e`, 20 and 50
/// alerts, one run each), so it is no proof of that fix — the load test is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_storm_leaves_the_service_responsive() {
    const ALERTS: usize = 20;
    const WATCH_FOR: Duration = Duration::from_secs(10);
    let root = tempfile::tempdir().unwrap();
    let _reaper = AppReaper(root.path().to_path_buf());
    let repo = sample_repo(root.path());
    let port = free_port();
    // One incident per alert, as before incidents grouped: each instance its own group, no
    // correlation, no flap guard, no action budget — the storm exercises 20 responses at once.
    let ops = format!(
        "{}incidents: {{group_by: [app, signal, instance], correlate_secs: 0, flap_max: 0, actions_max: 0, actions_cost_max: 0}}\n",
        local_ops(&repo, port, 0, "")
    );
    let mut service = start(root.path(), &ops, Vec::new()).await;
    deploy_healthy(&service, "web").await;

    let alerts: Vec<Value> = (0..ALERTS)
        .map(|n| {
            json!({
                "status": "firing",
                "labels": {"alertname": "health_check_failed", "app": "web",
                           "instance": format!("web-{n}"), "severity": "critical"},
                "annotations": {"summary": "health check failing"},
                "startsAt": "2024-01-01T00:00:00Z", "fingerprint": format!("storm-{n}")
            })
        })
        .collect();
    let webhook = json!({"version": "4", "status": "firing", "receiver": "glitchlab",
                         "alerts": alerts});
    let posted = Instant::now();
    let (status, body) = service.post("/v1/alerts", &webhook).await;
    assert_eq!(status, 202, "{body}");
    assert!(posted.elapsed() < Duration::from_secs(10), "{body}");

    let (mut slowest_healthz, mut slowest_write) = (Duration::ZERO, Duration::ZERO);
    let mut writes = 0;
    let watching = Instant::now();
    while watching.elapsed() < WATCH_FOR {
        let asked = Instant::now();
        let (status, _) = service.get("/healthz").await;
        assert_eq!(status, 200);
        slowest_healthz = slowest_healthz.max(asked.elapsed());
        if writes < watching.elapsed().as_secs() {
            writes += 1;
            let asked = Instant::now();
            let account = json!({"id": format!("user:storm-{writes}"), "kind": "user"});
            let (status, body) = service.post("/v1/ledger/accounts", &account).await;
            assert!(status == 200 || status == 201, "{status} {body}");
            slowest_write = slowest_write.max(asked.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        slowest_healthz < Duration::from_millis(500),
        "/healthz took {slowest_healthz:?} during the storm"
    );
    assert!(
        slowest_write < Duration::from_secs(10),
        "a ledger write took {slowest_write:?} during the storm"
    );
    let (_, incidents) = service.get("/v1/incidents?app=web").await;
    assert_eq!(
        incidents["incidents"].as_array().unwrap().len(),
        ALERTS,
        "{incidents:#}"
    );
    let (status, audit) = service.get("/v1/ledger/audit").await;
    assert_eq!(status, 200, "{audit}");
    assert_eq!(audit["balanced"], true, "{audit:#}");
    let stopped = Instant::now();
    let exit = service.terminate(Duration::from_secs(30));
    assert!(
        exit.success(),
        "exit {exit:?} after {:?}",
        stopped.elapsed()
    );
}

/// Polls the app until it answers (its `/` body), at most `within` — the outage a restart of
/// the service may cost it.
pub(crate) async fn answers_within(port: u16, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        if let Some(body) = app_root(port).await {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "the app did not answer within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (up to `within`) until no process of group `pgid` runs. A killed app whose service is
/// gone may linger as a zombie where nothing reaps orphans; a zombie does not run.
pub(crate) async fn group_gone(pgid: i32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while glitchlab::platform::process::group_runs(pgid) {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// The process group of process `pid` (`/proc/<pid>/stat`, field 5).
fn group_of(pid: i64) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(2)?
        .parse()
        .ok()
}

/// The service's events of `kind` (`GET /v1/events`).
pub(crate) async fn service_events(service: &Service, kind: &str) -> Vec<Value> {
    let (status, body) = service.get("/v1/events").await;
    assert_eq!(status, 200, "{body}");
    body["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no events in {body}"))
        .iter()
        .filter(|e| e["kind"] == kind)
        .cloned()
        .collect()
}

/// Waits until the service's events hold at least `count` of `kind`: recovery runs after the
/// service answers `/readyz`, so what it records can trail the start.
pub(crate) async fn wait_for_events(service: &Service, kind: &str, count: usize) {
    wait_until(service, "/v1/events", |body| {
        body["events"]
            .as_array()
            .is_some_and(|events| events.iter().filter(|e| e["kind"] == kind).count() >= count)
    })
    .await;
}

/// Issue #16: apps outlive the control plane. After a `kill -9` of the service, and again after a
/// graceful stop, the app the `local` provider started keeps serving — the same process (its own
/// answer says its pid), not a restart — the next start adopts it (`app.adopted`), and no
/// incident is opened. A `process` check runs throughout, so an app that went down would have
/// opened one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_app_is_adopted_after_kill_9_and_after_a_graceful_restart() {
    let root = tempfile::tempdir().unwrap();
    let _reaper = AppReaper(root.path().to_path_buf());
    let repo = sample_repo(root.path());
    let port = free_port();
    let checks =
        "    checks:\n      - {name: web-process, schedule: \"*/1 * * * * *\", kind: process}\n";
    let ops = local_ops(&repo, port, 0, checks);
    let mut service = start(root.path(), &ops, Vec::new()).await;
    deploy_healthy(&service, "web").await;
    let first = wait_for_app(port, |_| true).await;
    let pid = first["pid"].as_i64().unwrap();
    let group = recorded_pid(root.path(), "web").unwrap();
    assert_eq!(
        group_of(pid),
        Some(group),
        "the app runs in the recorded group"
    );

    for (round, graceful) in [(1, false), (2, true)] {
        if graceful {
            assert!(service.terminate(Duration::from_secs(30)).success());
        } else {
            service.kill_9();
        }
        // The service is gone; the app is not.
        let meanwhile = answers_within(port, Duration::from_secs(2)).await;
        assert_eq!(meanwhile["pid"], pid, "round {round}: {meanwhile}");
        service = start(root.path(), &ops, Vec::new()).await;
        let again = answers_within(port, Duration::from_secs(10)).await;
        assert_eq!(
            again["pid"], pid,
            "round {round}: a new process serves: {again}"
        );
        assert_eq!(again["version"], "1", "{again}");
        wait_for_events(&service, "app.adopted", round).await;
        let adopted = service_events(&service, "app.adopted").await;
        assert_eq!(adopted.len(), round, "round {round}: {adopted:#?}");
        assert_eq!(adopted[round - 1]["data"]["pid"], group, "{adopted:#?}");
        assert!(service_events(&service, "app.started").await.is_empty());
        // The check keeps passing against the adopted process (a few rounds of it).
        let (_, before) = service.get("/v1/checks").await;
        let seen = before["checks"][0]["history"]
            .as_array()
            .map_or(0, Vec::len);
        wait_until(&service, "/v1/checks", |c| {
            c["checks"][0]["history"].as_array().map_or(0, Vec::len) >= seen + 2
                && c["checks"][0]["last"]["outcome"] == "pass"
        })
        .await;
        let (_, incidents) = service.get("/v1/incidents?app=web").await;
        assert_eq!(
            incidents["incidents"],
            json!([]),
            "round {round}: {incidents:#}"
        );
        let (_, checks) = service.get("/v1/checks").await;
        let history = checks["checks"][0]["history"].as_array().unwrap();
        assert!(
            history.iter().all(|r| r["outcome"] == "pass"),
            "round {round}: {checks:#}"
        );
    }
    let (status, _) = service.get("/readyz").await;
    assert_eq!(status, 200);
    assert_eq!(app_root(port).await.unwrap()["pid"], pid);
}

/// Issue #16: a start adopts only what its records vouch for and the app confirms. The app is
/// stopped while the service is down: the next start starts the current release (`app.started`)
/// and the new process serves. A release that runs but is not the one recorded (its record was
/// lost) is not left running unmanaged: the start stops it and starts the current release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_starts_the_current_release_when_the_recorded_one_is_not_running() {
    let root = tempfile::tempdir().unwrap();
    let _reaper = AppReaper(root.path().to_path_buf());
    let repo = sample_repo(root.path());
    let port = free_port();
    let ops = local_ops(&repo, port, 0, "");
    let mut service = start(root.path(), &ops, Vec::new()).await;
    deploy_healthy(&service, "web").await;
    let first = wait_for_app(port, |_| true).await;
    let first_group = recorded_pid(root.path(), "web").unwrap();

    // Down while the service is down: started again, as a new process.
    service.kill_9();
    // SAFETY: killing the sample app's process group this test's service started.
    unsafe {
        libc::kill(-first_group, libc::SIGKILL);
    }
    assert!(group_gone(first_group, Duration::from_secs(10)).await);
    service = start(root.path(), &ops, Vec::new()).await;
    let second = answers_within(port, Duration::from_secs(10)).await;
    assert_ne!(second["pid"], first["pid"], "{second}");
    assert_eq!(second["version"], "1");
    let started = service_events(&service, "app.started").await;
    assert_eq!(started.len(), 1, "{started:#?}");
    assert!(service_events(&service, "app.adopted").await.is_empty());
    let second_group = recorded_pid(root.path(), "web").unwrap();
    assert_eq!(
        group_of(second["pid"].as_i64().unwrap()),
        Some(second_group)
    );

    // Running, but its record is gone: it is stopped (no release runs unaccounted for) and the
    // current release started in its place.
    service.kill_9();
    let record = root.path().join("data/releases/web/app.json");
    std::fs::remove_file(&record).unwrap();
    service = start(root.path(), &ops, Vec::new()).await;
    assert!(
        group_gone(second_group, WAIT).await,
        "the unrecorded release still runs"
    );
    let third = wait_for_app(port, |body| body["pid"] != second["pid"]).await;
    assert_ne!(third["pid"], first["pid"]);
    let stray = service_events(&service, "app.unaccounted_stopped").await;
    assert_eq!(stray.len(), 1, "{stray:#?}");
    assert_eq!(stray[0]["data"]["process_groups"], json!([second_group]));
    let (_, incidents) = service.get("/v1/incidents?app=web").await;
    assert_eq!(incidents["incidents"], json!([]), "{incidents:#}");
}

/// Issue #16: a deploy cut off by `kill -9` after it started its new release but before that
/// release passed its health check leaves a process that is not the current release. The next
/// start does not adopt it: it stops it, starts the current release (`app.started`, naming the
/// mismatch), and ends the deploy `DEPLOY_INTERRUPTED` without an incident.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_of_an_interrupted_deploy_is_replaced_by_the_current_one() {
    let root = tempfile::tempdir().unwrap();
    let _reaper = AppReaper(root.path().to_path_buf());
    let repo = sample_repo(root.path());
    let good = git(&repo, &["rev-parse", "HEAD"]);
    let port = free_port();
    let ops = local_ops(&repo, port, 0, "");
    let mut service = start(root.path(), &ops, Vec::new()).await;
    deploy_healthy(&service, "web").await;
    // A release whose health check fails for the whole retry window (30 × 200 ms).
    std::fs::write(repo.join("VERSION"), "2\n").unwrap();
    std::fs::write(repo.join("BROKEN"), "yes\n").unwrap();
    let bad = commit_all(&repo, "v2, broken");
    let (status, record) = service
        .post("/v1/deploys", &json!({"app": "web", "commit": bad}))
        .await;
    assert_eq!(status, 201, "{record}");
    let id = record["id"].as_str().unwrap().to_owned();
    wait_for_app(port, |body| body["version"] == "2").await;
    let (_, running) = service.get(&format!("/v1/deploys/{id}")).await;
    assert_eq!(running["status"], "running", "{running}");
    let bad_group = recorded_pid(root.path(), "web").unwrap();
    service.kill_9();

    service = start(root.path(), &ops, Vec::new()).await;
    assert!(
        group_gone(bad_group, WAIT).await,
        "the interrupted deploy's release still runs"
    );
    let back = wait_for_app(port, |body| body["version"] == "1").await;
    assert_eq!(back["version"], "1");
    let started = service_events(&service, "app.started").await;
    assert_eq!(started.len(), 1, "{started:#?}");
    assert_eq!(started[0]["data"]["release"], good.as_str());
    let reason = started[0]["data"]["reason"].as_str().unwrap();
    assert!(reason.contains(&bad), "{reason}");
    assert!(service_events(&service, "app.adopted").await.is_empty());
    let ended = wait_until(&service, &format!("/v1/deploys/{id}"), |d| {
        d["status"] == "failed"
    })
    .await;
    assert_eq!(ended["error"]["code"], "DEPLOY_INTERRUPTED", "{ended}");
    let (_, incidents) = service.get("/v1/incidents?app=web").await;
    assert_eq!(incidents["incidents"], json!([]), "{incidents:#}");
}

/// Issue #16: a deploy of a commit that does not exist is refused at the door — `422
/// UNKNOWN_COMMIT`, no deploy record, no incident — instead of a record that fails, an outage
/// incident and a bugfix task.
#[tokio::test]
async fn a_mistyped_commit_is_refused_at_the_door() {
    let root = tempfile::tempdir().unwrap();
    let repo = sample_repo(root.path());
    let port = free_port();
    let service = start(root.path(), &local_ops(&repo, port, 0, ""), Vec::new()).await;
    for commit in ["deadbeefdeadbeef", "main~5", "--upload-pack=evil"] {
        let (status, body) = service
            .post("/v1/deploys", &json!({"app": "web", "commit": commit}))
            .await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (422, Some("UNKNOWN_COMMIT")),
            "{commit}: {body}"
        );
    }
    let (_, deploys) = service.get("/v1/deploys").await;
    assert_eq!(deploys["deploys"], json!([]), "{deploys}");
    let (_, incidents) = service.get("/v1/incidents").await;
    assert_eq!(incidents["incidents"], json!([]), "{incidents}");
    // A real reference still deploys.
    let (status, record) = service
        .post("/v1/deploys", &json!({"app": "web", "commit": "main"}))
        .await;
    assert_eq!(status, 201, "{record}");
}

/// A service whose `ops.yaml` has one app, `svc`, run by shell commands that always succeed (its
/// status passes, so a response resolves at once), `extra` appended, and `runbooks` of its own.
async fn svc_service(root: &Path, runbooks: &[(&str, &str)], extra: &str) -> Service {
    let repo = sample_repo(root);
    let dir = root.join("runbooks");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, text) in runbooks {
        std::fs::write(dir.join(format!("{name}.yaml")), text).unwrap();
    }
    let ops_file = root.join("ops.yaml");
    std::fs::write(
        &ops_file,
        format!(
            "apps:\n  svc:\n    repo: {}\n    provider: command\n    command: {{deploy: \"true\", rollback: \"true\", restart: \"true\", status: \"true\"}}\n{extra}",
            repo.display()
        ),
    )
    .unwrap();
    Service::start_with(root, svc_options(root)).await
}

/// The options of [`svc_service`]'s service (again, for a restart on the same root).
fn svc_options(root: &Path) -> Options {
    with_config(&format!(
        "[paths]\nops_file = \"{}\"\nrunbooks_dir = \"{}\"\n",
        root.join("ops.yaml").display(),
        root.join("runbooks").display()
    ))
}

/// Posts a plain alert for `svc` and answers the id of the incident it opened or joined.
async fn alert_svc(service: &Service, signal: &str) -> String {
    let (status, posted) = service
        .post("/v1/alerts", &json!({"app": "svc", "signal": signal}))
        .await;
    assert_eq!(status, 202, "{posted}");
    posted["incidents"][0].as_str().unwrap().to_owned()
}

/// The `budget` an incident's needs_human event names, if any.
fn budget_named(incident: &Value) -> Option<String> {
    incident["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "needs_human")
        .find_map(|e| e["detail"]["budget"].as_str().map(str::to_owned))
}

/// Issue #16: automatic actions per app have a budget per window. Incidents of ever new signals
/// (with the flap guard, which counts per app, off) each restart the app; past
/// `incidents.actions_max` the next incident goes to a human naming the budget, starts no step,
/// and the count — read from the stored incidents — survives a restart of the service.
#[tokio::test]
async fn past_the_action_budget_the_next_incident_goes_to_a_human_also_after_a_restart() {
    let root = tempfile::tempdir().unwrap();
    let runbooks: Vec<(String, String)> = (0..4)
        .map(|n| {
            (
                format!("r{n}"),
                format!("name: r{n}\nmatch: {{signal: s{n}}}\nclassify: degradation\nsteps:\n  - {{action: restart}}\n  - {{action: notify}}\n"),
            )
        })
        .collect();
    let runbooks: Vec<(&str, &str)> = runbooks
        .iter()
        .map(|(name, text)| (name.as_str(), text.as_str()))
        .collect();
    let extra =
        "incidents: {correlate_secs: 0, flap_max: 0, actions_max: 2, actions_window_secs: 3600}\n";
    let mut service = svc_service(root.path(), &runbooks, extra).await;
    deploy_healthy(&service, "svc").await;
    for n in 0..2 {
        let id = alert_svc(&service, &format!("s{n}")).await;
        let incident = wait_until(&service, &format!("/v1/incidents/{id}"), |i| {
            i["status"] != "open"
        })
        .await;
        assert_eq!(incident["status"], "resolved", "{incident:#}");
        assert_eq!(
            incident["actions"].as_array().unwrap().len(),
            1,
            "{incident:#}"
        );
        assert_eq!(incident["actions"][0]["action"], "restart");
    }
    let id = alert_svc(&service, "s2").await;
    let (_, incident) = service.get(&format!("/v1/incidents/{id}")).await;
    assert_eq!(incident["status"], "needs_human", "{incident:#}");
    assert_eq!(
        budget_named(&incident).as_deref(),
        Some("actions_max"),
        "{incident:#}"
    );
    let said = incident["events"].to_string();
    assert!(said.contains("incidents.actions_max is 2"), "{said}");
    assert!(!said.contains("step.started"), "nothing was done: {said}");

    assert!(service.terminate(Duration::from_secs(30)).success());
    let service = Service::start_with(root.path(), svc_options(root.path())).await;
    let id = alert_svc(&service, "s3").await;
    let (_, incident) = service.get(&format!("/v1/incidents/{id}")).await;
    assert_eq!(incident["status"], "needs_human", "{incident:#}");
    assert_eq!(
        budget_named(&incident).as_deref(),
        Some("actions_max"),
        "{incident:#}"
    );
}

/// Issue #16: 500 alerts for one app and signal, with 500 different label sets, are one incident
/// counting 500 signals, and `/healthz` stays fast while they arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_alerts_for_one_app_and_signal_are_one_incident() {
    let root = tempfile::tempdir().unwrap();
    let service = svc_service(root.path(), &[], "").await;
    let base = service.base.clone();
    let probing = tokio::spawn(async move {
        let client = crate::helpers::client();
        let mut slowest = Duration::ZERO;
        for _ in 0..40 {
            let asked = Instant::now();
            let answer = client.get(format!("{base}/healthz")).send().await.unwrap();
            assert_eq!(answer.status(), 200);
            slowest = slowest.max(asked.elapsed());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        slowest
    });
    let mut ids = std::collections::BTreeSet::new();
    for batch in 0..5 {
        let alerts: Vec<Value> = (0..100)
            .map(|n| {
                json!({"status": "firing",
                       "labels": {"alertname": "DiskFull", "app": "svc",
                                  "instance": format!("svc-{batch}-{n}")},
                       "annotations": {"summary": "disk full"}})
            })
            .collect();
        let (status, body) = service
            .post("/v1/alerts", &json!({"version": "4", "alerts": alerts}))
            .await;
        assert_eq!(status, 202, "{body}");
        for id in body["incidents"].as_array().unwrap() {
            ids.insert(id.as_str().unwrap().to_owned());
        }
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    let (_, list) = service.get("/v1/incidents?app=svc").await;
    let incidents = list["incidents"].as_array().unwrap();
    assert_eq!(incidents.len(), 1, "{list:#}");
    assert_eq!(incidents[0]["signal_count"], 500);
    let slowest = probing.await.unwrap();
    assert!(
        slowest < Duration::from_millis(500),
        "/healthz took {slowest:?}"
    );
}

/// Issue #16: a second signal for an app whose incident is being answered joins that incident
/// (one outage, one incident, one response acting on the app).
#[tokio::test]
async fn a_second_signal_during_a_response_joins_the_incident() {
    let root = tempfile::tempdir().unwrap();
    let slow = "name: slow\nmatch: {signal: process_exited}\nclassify: outage\nsteps:\n  - {action: wait, seconds: 3}\n";
    let service = svc_service(root.path(), &[("slow", slow)], "").await;
    let (_, first) = service
        .post(
            "/v1/alerts",
            &json!({"app": "svc", "signal": "process_exited"}),
        )
        .await;
    let (_, second) = service
        .post(
            "/v1/alerts",
            &json!({"app": "svc", "signal": "health_check_failed"}),
        )
        .await;
    assert_eq!(first["incidents"], second["incidents"], "{first} {second}");
    let (_, list) = service.get("/v1/incidents?app=svc").await;
    assert_eq!(list["incidents"].as_array().unwrap().len(), 1, "{list:#}");
    // Another app is another outage.
    let (_, other) = service
        .post(
            "/v1/alerts",
            &json!({"app": "elsewhere", "signal": "process_exited"}),
        )
        .await;
    assert_ne!(other["incidents"], first["incidents"]);
}

/// Issue #16: an app whose incidents keep coming back stops being answered automatically: past
/// `flap_max` incidents of one signal within the window, the next goes to a human, says why and
/// files no task.
#[tokio::test]
async fn a_flapping_app_goes_to_a_human_after_flap_max_incidents() {
    let root = tempfile::tempdir().unwrap();
    let quick = "name: quick\nmatch: {signal: flaky}\nclassify: degradation\nsteps:\n  - {action: notify, message: seen}\n";
    let extra = "incidents: {flap_max: 2, flap_window_secs: 600}\n";
    let service = svc_service(root.path(), &[("quick", quick)], extra).await;
    for _ in 0..2 {
        let (status, posted) = service
            .post("/v1/alerts", &json!({"app": "svc", "signal": "flaky"}))
            .await;
        assert_eq!(status, 202, "{posted}");
        let id = posted["incidents"][0].as_str().unwrap();
        wait_until(&service, &format!("/v1/incidents/{id}"), |i| {
            i["status"] == "resolved"
        })
        .await;
    }
    let (_, posted) = service
        .post("/v1/alerts", &json!({"app": "svc", "signal": "flaky"}))
        .await;
    let id = posted["incidents"][0].as_str().unwrap();
    let (_, incident) = service.get(&format!("/v1/incidents/{id}")).await;
    assert_eq!(incident["status"], "needs_human", "{incident:#}");
    assert!(incident["task_id"].is_null());
    let flapping = incident["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["detail"]["flapping"] == true);
    assert!(flapping, "{incident:#}");
    let (_, page) = service
        .get("/v1/incidents?app=svc&signal=flaky&limit=2")
        .await;
    assert_eq!(page["incidents"].as_array().unwrap().len(), 2);
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, rest) = service
        .get(&format!(
            "/v1/incidents?app=svc&signal=flaky&limit=2&cursor={cursor}"
        ))
        .await;
    assert_eq!(rest["incidents"].as_array().unwrap().len(), 1, "{rest:#}");
    assert!(rest["next_cursor"].is_null());
}

/// Issue #16: the cost budget. A bugfix task reserves `ledger.default_task_budget`
/// (10,000,000); with `actions_cost_max` at that, the response that filed it stops before its
/// next acting step (checked before each one) and the next incident goes to a human at once,
/// both naming the cost budget; one task exists.
#[tokio::test]
async fn a_spent_action_cost_budget_stops_the_running_response_and_the_next_incident() {
    let root = tempfile::tempdir().unwrap();
    let runbooks: Vec<(String, String)> = (0..2)
        .map(|n| {
            (
                format!("c{n}"),
                format!("name: c{n}\nmatch: {{signal: c{n}}}\nclassify: degradation\nsteps:\n  - {{action: create_task}}\n  - {{action: restart}}\n"),
            )
        })
        .collect();
    let runbooks: Vec<(&str, &str)> = runbooks
        .iter()
        .map(|(name, text)| (name.as_str(), text.as_str()))
        .collect();
    let extra = "incidents: {correlate_secs: 0, actions_cost_max: 10000000}\n";
    let service = svc_service(root.path(), &runbooks, extra).await;
    deploy_healthy(&service, "svc").await;
    let id = alert_svc(&service, "c0").await;
    let first = wait_until(&service, &format!("/v1/incidents/{id}"), |i| {
        i["status"] != "open"
    })
    .await;
    assert_eq!(first["status"], "needs_human", "{first:#}");
    assert_eq!(
        budget_named(&first).as_deref(),
        Some("actions_cost_max"),
        "{first:#}"
    );
    assert!(first["task_id"].is_string(), "{first:#}");
    let actions = first["actions"].as_array().unwrap();
    assert_eq!(actions.len(), 1, "the restart never started: {first:#}");
    assert_eq!(actions[0]["action"], "create_task");
    assert_eq!(actions[0]["cost"], 10_000_000);

    let id = alert_svc(&service, "c1").await;
    let (_, second) = service.get(&format!("/v1/incidents/{id}")).await;
    assert_eq!(second["status"], "needs_human", "{second:#}");
    assert_eq!(
        budget_named(&second).as_deref(),
        Some("actions_cost_max"),
        "{second:#}"
    );
    assert!(second["task_id"].is_null(), "{second:#}");
    let said = second["events"].to_string();
    assert!(
        said.contains("incidents.actions_cost_max is 10000000"),
        "{said}"
    );
}

/// Pids of the processes running exactly `sh -c <line>` (not the shells or bwraps whose own
/// command line merely contains it).
fn shells_running(line: &str) -> Vec<i32> {
    let wanted = ["sh", "-c", line];
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(bytes) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let argv: Vec<String> = bytes
                .split(|b| *b == 0)
                .filter(|part| !part.is_empty())
                .map(|part| String::from_utf8_lossy(part).into_owned())
                .collect();
            argv == wanted
        })
        .collect()
}

/// Kills, when the test ends (also on a panic), the process groups of the shells running one of
/// these lines: what escaped a failing run does not outlive the test.
struct ShellReaper(Vec<String>);

impl Drop for ShellReaper {
    fn drop(&mut self) {
        for line in &self.0 {
            for pid in shells_running(line) {
                // SAFETY: signalling a process group this test's build started (a `setsid`
                // shell leads its own group).
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}

/// Waits until `sh -c <line>` runs (its pids) or, with `gone`, until none does; `None` on
/// timeout.
async fn wait_for_shells(line: &str, gone: bool, within: Duration) -> Option<Vec<i32>> {
    let deadline = Instant::now() + within;
    loop {
        let pids = shells_running(line);
        if pids.is_empty() == gone {
            return Some(pids);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Issue #16: nothing escapes. A build command that starts a `setsid` child (its own session
/// and process group, out of reach of a process-group kill) runs in a PID namespace of its
/// own: at the build's timeout the child dies with it, and a build cut off by `kill -9` of the
/// service takes its child along too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setsid_child_of_a_build_dies_at_the_timeout_and_with_the_service() {
    if crate::containment::skip() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let _reaper = AppReaper(root.path().to_path_buf());
    let repo = sample_repo(root.path());
    let port = free_port();
    let token = root
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    // The build is a script of the repo (its line, `sh build-*.sh`, is what the allowlist
    // sees), as a real build's `setsid` would be deep inside its tools.
    let child_of = |phase: &str| format!("sleep 300; echo {token}-{phase}");
    for phase in ["timeout", "kill"] {
        let script = format!("setsid sh -c '{}' &\nsleep 120\n", child_of(phase));
        std::fs::write(repo.join(format!("build-{phase}.sh")), script).unwrap();
    }
    commit_all(&repo, "build scripts that leave a setsid child");
    let _shells = ShellReaper(vec![child_of("timeout"), child_of("kill")]);
    let ops_with = |phase: &str, timeout_secs: u32| {
        local_ops(&repo, port, 0, "").replace(
            "build: \"true\"",
            &format!("build: \"sh build-{phase}.sh\", build_timeout_secs: {timeout_secs}"),
        )
    };

    let child = child_of("timeout");
    let mut service = start(root.path(), &ops_with("timeout", 3), Vec::new()).await;
    let (status, record) = service.post("/v1/deploys", &json!({"app": "web"})).await;
    assert_eq!(status, 201, "{record}");
    let id = record["id"].as_str().unwrap().to_owned();
    let running = wait_for_shells(&child, false, WAIT).await;
    let (_, deploy) = service.get(&format!("/v1/deploys/{id}")).await;
    assert!(
        running.is_some(),
        "the build's setsid child never ran: {deploy:#}\n{}",
        service.log()
    );
    let ended = wait_until(&service, &format!("/v1/deploys/{id}"), |d| {
        d["status"] == "failed"
    })
    .await;
    assert!(ended.to_string().contains("timed out"), "{ended:#}");
    assert!(
        wait_for_shells(&child, true, Duration::from_secs(5))
            .await
            .is_some(),
        "the setsid child {running:?} outlived the build's timeout"
    );
    assert!(service.terminate(Duration::from_secs(30)).success());

    let child = child_of("kill");
    let mut service = start(root.path(), &ops_with("kill", 600), Vec::new()).await;
    let (status, record) = service.post("/v1/deploys", &json!({"app": "web"})).await;
    assert_eq!(status, 201, "{record}");
    let running = wait_for_shells(&child, false, WAIT).await;
    assert!(running.is_some(), "the build's setsid child never ran");
    service.kill_9();
    assert!(
        wait_for_shells(&child, true, Duration::from_secs(5))
            .await
            .is_some(),
        "the setsid child {running:?} outlived the service"
    );
}
