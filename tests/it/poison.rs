//! Poison tasks and ledger edges (#14): a task that takes the service down at every start is
//! dead-lettered, one that keeps crashing a persona is failed, a crash between a reservation and
//! its task leaves no reservation behind, a refused submission no account, and an overflowing
//! charge is loud.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{client_builder_with, git_repo, shell_task, with_config, Options, Service};

/// Waits (bounded) until `path` exists.
async fn wait_for_file(service: &Service, path: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} did not appear in {timeout:?}; log:\n{}",
            path.display(),
            service.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of the metric line that starts with `prefix` (summed over its label sets).
async fn metric(service: &Service, prefix: &str) -> f64 {
    let text = crate::helpers::client()
        .get(format!("{}/metrics", service.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|line| line.starts_with(prefix))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn a_task_in_flight_across_two_unclean_stops_is_poisoned_and_the_others_run() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let marker = root.path().join("in-stage");
    // One slot: the second task waits in the queue through both crashes.
    let options = with_config("[compass]\nmax_concurrent_tasks = 1\n");
    let mut service = Service::start_with(root.path(), options.clone()).await;
    let poison = service
        .submit(&shell_task(
            &repo,
            &format!("touch {}; sleep 30", marker.display()),
            "true",
        ))
        .await;
    let poison = poison["id"].as_str().unwrap().to_owned();
    let other = service
        .submit(&shell_task(
            &repo,
            "echo hello > hello.txt",
            "test -f hello.txt",
        ))
        .await;
    let other = other["id"].as_str().unwrap().to_owned();

    // Twice: the stage runs, and the test takes the whole service down under it.
    for stop in 1..=2 {
        wait_for_file(&service, &marker, Duration::from_secs(30)).await;
        service.kill_9();
        std::fs::remove_file(&marker).unwrap();
        service = Service::start_with(root.path(), options.clone()).await;
        if stop == 1 {
            let task = service
                .wait_for_task(&poison, Duration::from_secs(10), |t| {
                    t["status"] == "running"
                })
                .await;
            assert!(
                task["error"].is_null(),
                "one unclean stop is not poison: {task:#}"
            );
        }
    }

    let task = service.wait_until_finished(&poison).await;
    assert_eq!(task["status"], "dead_letter", "{task:#}");
    assert_eq!(task["error"]["code"], "POISONED");
    assert!(
        task["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unclean stops"),
        "{task:#}"
    );
    let (_, events) = service.get(&format!("/v1/tasks/{poison}/events")).await;
    let poisoned = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "task.poisoned")
        .unwrap_or_else(|| panic!("no task.poisoned event: {events:#}"));
    assert_eq!(poisoned["data"]["stops"], 2);
    assert_eq!(poisoned["data"]["poison_after"], 2);
    // The evidence: the engine run in flight at each stop, each one closed `interrupted`.
    let runs = poisoned["data"]["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{poisoned:#}");
    let interrupted: Vec<&Value> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "engine.interrupted")
        .map(|e| &e["data"]["run_id"])
        .collect();
    assert_eq!(interrupted, runs.iter().collect::<Vec<_>>(), "{events:#}");
    assert!(!marker.exists(), "the poison task's stage ran a third time");

    let other = service.wait_until_finished(&other).await;
    assert_eq!(other["status"], "done", "{other:#}");
    let (status, _) = service.get("/healthz").await;
    assert_eq!(status, 200);
    assert!(metric(&service, "glitchlab_tasks_poisoned_total").await >= 1.0);
}

#[tokio::test]
async fn a_clean_stop_does_not_count_against_a_running_task() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let marker = root.path().join("in-stage");
    let release = root.path().join("release");
    let command = format!(
        "touch {m}; while [ ! -f {r} ]; do sleep 0.1; done; echo hello > hello.txt",
        m = marker.display(),
        r = release.display()
    );
    let mut service = Service::start(root.path()).await;
    let task = service.submit(&shell_task(&repo, &command, "true")).await;
    let id = task["id"].as_str().unwrap().to_owned();

    // One unclean stop, then a clean one, then another start: still one unclean stop.
    wait_for_file(&service, &marker, Duration::from_secs(30)).await;
    service.kill_9();
    std::fs::remove_file(&marker).unwrap();
    service = Service::start(root.path()).await;
    wait_for_file(&service, &marker, Duration::from_secs(30)).await;
    assert!(service.terminate(Duration::from_secs(30)).success());
    std::fs::remove_file(&marker).unwrap();
    std::fs::write(&release, "").unwrap();
    let service = Service::start(root.path()).await;
    let task = service.wait_until_finished(&id).await;
    assert_eq!(task["status"], "done", "{task:#}");
}

/// Two `kill -9`s 0.5 s apart with a task running across both: at the first its verify run is
/// in flight, at the second Circuit holds the request before any run starts (a failpoint), so
/// the run had ended (interrupted) and no run of the task is in flight. Only one stop has
/// evidence: the task is resumed and finishes, never `POISONED`.
#[cfg(feature = "failpoints")]
#[tokio::test]
async fn a_task_without_a_run_in_flight_at_the_second_unclean_stop_is_resumed_not_poisoned() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let marker = root.path().join("in-verify");
    let once = root.path().join("verified-once");
    // The first verify run hangs (in flight at stop 1); every later one passes at once.
    let verify = format!(
        "if [ ! -f {o} ]; then touch {o} {m}; sleep 30; fi; test -f hello.txt",
        o = once.display(),
        m = marker.display()
    );
    let mut body = shell_task(&repo, "echo hello > hello.txt", &verify);
    // `circuit.poison` hooks only tasks whose title says poison.
    body["title"] = json!("A poison-looking task that is not one");
    let mut service = Service::start(root.path()).await;
    let task = service.submit(&body).await;
    let id = task["id"].as_str().unwrap().to_owned();
    wait_for_file(&service, &marker, Duration::from_secs(30)).await;
    service.kill_9();

    let hold = Options {
        env: vec![("FAILPOINTS".into(), "circuit.poison=sleep(60000)".into())],
        ..Default::default()
    };
    service = Service::start_with(root.path(), hold).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !service
        .event_kinds(&id)
        .await
        .contains(&"task.resumed".to_owned())
    {
        assert!(Instant::now() < deadline, "the task was not resumed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    service.kill_9();

    let service = Service::start(root.path()).await;
    let task = service.wait_until_finished(&id).await;
    assert_eq!(task["status"], "done", "{task:#}");
    let kinds = service.event_kinds(&id).await;
    assert!(!kinds.contains(&"task.poisoned".to_owned()), "{kinds:?}");
    assert_eq!(
        kinds.iter().filter(|k| *k == "engine.interrupted").count(),
        1,
        "one run was cut off, at the first stop: {kinds:?}"
    );
}

#[cfg(feature = "failpoints")]
#[tokio::test]
async fn a_task_whose_requests_crash_a_persona_is_poisoned_and_the_persona_revived() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let config = "[supervision]\nmax_restarts = 3\nwindow_secs = 60\nbackoff_base_ms = 10\nbackoff_max_ms = 40\n";
    let options = Options {
        config: Some(config.into()),
        env: vec![("FAILPOINTS".into(), "patch.poison=panic".into())],
        ..Default::default()
    };
    let service = Service::start_with(root.path(), options).await;
    let mut body = shell_task(&repo, "echo poison > poison.txt", "true");
    body["title"] = json!("A poison task");
    let poison = service.submit(&body).await;
    let poison = poison["id"].as_str().unwrap().to_owned();
    let other = service
        .submit(&shell_task(
            &repo,
            "echo hello > hello.txt",
            "test -f hello.txt",
        ))
        .await;
    let other = other["id"].as_str().unwrap().to_owned();

    let task = service.wait_until_finished(&poison).await;
    assert_eq!(task["status"], "failed", "{task:#}");
    assert_eq!(task["error"]["code"], "POISONED");
    assert!(
        task["error"]["message"].as_str().unwrap().contains("patch"),
        "{task:#}"
    );
    let kinds = service.event_kinds(&poison).await;
    assert!(kinds.contains(&"task.poisoned".to_owned()), "{kinds:?}");

    let other = service.wait_until_finished(&other).await;
    assert_eq!(other["status"], "done", "{other:#}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while service.actor("patch").await["status"] != "running" {
        assert!(Instant::now() < deadline, "patch was not revived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, ready) = service.get("/readyz").await;
    assert_eq!(status, 200, "{ready}");
    // New work gets the persona.
    let again = service
        .submit(&shell_task(&repo, "echo again > again.txt", "true"))
        .await;
    let again = service
        .wait_until_finished(again["id"].as_str().unwrap())
        .await;
    assert_eq!(again["status"], "done", "{again:#}");
}

/// The pending transfers of `account`'s history.
async fn pending_reservations(service: &Service, account: &str) -> Vec<Value> {
    let (status, page) = service
        .get(&format!(
            "/v1/ledger/accounts/{account}/transfers?limit=100"
        ))
        .await;
    assert_eq!(status, 200, "{page}");
    page["transfers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["code"] == 10 && t["status"] == "pending")
        .cloned()
        .collect()
}

/// A submission writes its task and its budget reservation in one store job (issue #29), so a
/// `kill -9` while a submission is on its way leaves neither: no task, no money held.
#[cfg(feature = "failpoints")]
#[tokio::test]
async fn a_crash_during_a_submission_leaves_neither_task_nor_reservation() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let options = Options {
        env: vec![("FAILPOINTS".into(), "intake.writing=sleep(30000)".into())],
        ..Default::default()
    };
    let mut service = Service::start_with(root.path(), options).await;
    let before = service.get("/v1/ledger/accounts/user:local").await.1;
    let url = format!("{}/v1/tasks", service.base);
    let body = shell_task(&repo, "echo hello > hello.txt", "true");
    let submit = tokio::spawn(async move {
        let client = client_builder_with(crate::helpers::ADMIN_TOKEN)
            .timeout(Duration::from_secs(40))
            .build()
            .unwrap();
        client.post(url).json(&body).send().await
    });
    // Its checks take milliseconds; then it waits 30 s just before its write. Still unanswered
    // after 1.5 s, it is there when the service dies.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !submit.is_finished(),
        "the submission was answered before the crash"
    );
    service.kill_9();
    let answered = submit.await.unwrap();
    assert!(
        answered.is_err(),
        "the submission was answered: {answered:?}"
    );

    let service = Service::start(root.path()).await;
    let (_, tasks) = service.get("/v1/tasks").await;
    assert_eq!(tasks["tasks"].as_array().unwrap().len(), 0, "{tasks:#}");
    assert_eq!(
        pending_reservations(&service, "user:local").await,
        Vec::<Value>::new()
    );
    let after = service.get("/v1/ledger/accounts/user:local").await.1;
    assert_eq!(
        after["debits_pending"], before["debits_pending"],
        "{after:#}"
    );
    assert_eq!(after["debits_posted"], before["debits_posted"]);
    // A task submitted now has its reservation.
    let task = service
        .submit(&shell_task(&repo, "echo hello > hello.txt", "true"))
        .await;
    let reservation = task["reservation"].as_str().unwrap().to_owned();
    let (_, held) = service
        .get(&format!("/v1/ledger/transfers/{reservation}"))
        .await;
    assert_eq!(held["parent_task"], task["id"], "{held:#}");
    let task = service
        .wait_until_finished(task["id"].as_str().unwrap())
        .await;
    assert_eq!(task["status"], "done", "{task:#}");
}

/// A budget reservation whose task does not exist — what a crash between the two writes of an
/// earlier version left behind — is voided at the next start (`ledger.orphan_voided`) and its
/// money released. The orphan is made here as that version wrote it, through the ledger's API.
#[tokio::test]
async fn a_reservation_orphaned_by_an_earlier_version_is_voided_at_start() {
    let root = tempfile::tempdir().unwrap();
    let service = Service::start(root.path()).await;
    let before = service.get("/v1/ledger/accounts/user:local").await.1;
    let task_id = "01a24c00-0000-7000-8000-000000000001";
    let account = format!("task:{task_id}");
    let (status, opened) = service
        .post(
            "/v1/ledger/accounts",
            &json!({"id": account, "kind": "project", "allow_negative": true}),
        )
        .await;
    assert_eq!(status, 201, "{opened}");
    let id = format!("task:{task_id}:budget:1");
    let (status, orphan) = service
        .post(
            "/v1/ledger/transfers",
            &json!({"id": id, "debit_account": "user:local", "credit_account": account,
                    "amount": 5000, "code": 10, "pending": true, "parent_task": task_id}),
        )
        .await;
    assert_eq!(status, 201, "{orphan}");
    assert_eq!(orphan["status"], "pending", "{orphan}");
    drop(service);

    let service = Service::start(root.path()).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, transfer) = service.get(&format!("/v1/ledger/transfers/{id}")).await;
        if transfer["status"] == "voided" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the orphaned reservation was not voided: {transfer:#}\nlog:\n{}",
            service.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = service.get("/v1/ledger/accounts/user:local").await.1;
    assert_eq!(
        after["debits_pending"], before["debits_pending"],
        "{after:#}"
    );
    assert_eq!(after["debits_posted"], before["debits_posted"]);
    let (_, events) = service.get("/v1/events").await;
    assert!(
        events.to_string().contains("ledger.orphan_voided"),
        "{events:#}"
    );
}

#[tokio::test]
async fn a_submission_refused_with_402_leaves_no_account_behind() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let service = Service::start(root.path()).await;
    let (status, _) = service
        .post(
            "/v1/ledger/accounts",
            &json!({"id": "user:poor", "kind": "user"}),
        )
        .await;
    assert_eq!(status, 201);
    let accounts = || async {
        let (status, audit) = service.get("/v1/ledger/audit").await;
        assert_eq!(status, 200, "{audit}");
        assert_eq!(audit["balanced"], true, "{audit:#}");
        audit["accounts_checked"].as_u64().unwrap()
    };
    let before = accounts().await;

    // An empty payer.
    let mut body = shell_task(&repo, "true", "true");
    body["account"] = json!("user:poor");
    let (status, answer) = service.post("/v1/tasks", &body).await;
    assert_eq!(status, 402, "{answer}");
    assert_eq!(answer["error"]["code"], "INSUFFICIENT_FUNDS");

    // A token whose own account nobody opened yet.
    let (status, token) = service
        .post("/v1/tokens", &json!({"name": "fresh", "role": "submitter"}))
        .await;
    assert_eq!(status, 201, "{token}");
    let fresh = client_builder_with(token["secret"].as_str().unwrap())
        .build()
        .unwrap();
    let response = fresh
        .post(format!("{}/v1/tasks", service.base))
        .json(&json!({"title": "t", "description": "d", "repo": repo, "verify": "true"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 402);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["error"]["code"], "INSUFFICIENT_FUNDS", "{answer}");

    assert_eq!(
        accounts().await,
        before,
        "a refused submission opened an account"
    );
    let (status, _) = service.get("/v1/ledger/accounts/user:fresh").await;
    assert_eq!(status, 404);
    let (_, tasks) = service.get("/v1/tasks").await;
    assert_eq!(tasks["tasks"].as_array().unwrap().len(), 0, "{tasks:#}");
}

#[tokio::test]
async fn a_charge_that_would_overflow_an_account_is_loud() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    // Two runs at i64::MAX each fill the task account's debits; the next charge overflows it.
    let config = "[ledger.rates]\nbuiltin_per_run = 9223372036854775807\nshell_per_second = 9223372036854775807\nverify_per_run = 9223372036854775807\n";
    let service = Service::start_with(root.path(), with_config(config)).await;
    let task = service
        .submit(&shell_task(
            &repo,
            "echo hello > hello.txt",
            "test -f hello.txt",
        ))
        .await;
    let id = task["id"].as_str().unwrap().to_owned();
    let task = service.wait_until_finished(&id).await;
    assert_eq!(task["status"], "done", "the work itself goes on: {task:#}");

    let (_, events) = service.get(&format!("/v1/tasks/{id}/events")).await;
    let failed: Vec<&Value> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "ledger.charge_failed")
        .collect();
    assert!(!failed.is_empty(), "no charge failed loudly: {events:#}");
    assert_eq!(failed[0]["data"]["code"], "AMOUNT_OVERFLOW", "{failed:#?}");
    assert_eq!(failed[0]["data"]["unpaid"], true);
    assert!(
        metric(&service, "glitchlab_ledger_charge_failures_total{").await >= 1.0,
        "no metric"
    );
    assert!(service.log().contains("could not charge an engine run"));
}
