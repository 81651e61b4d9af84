//! Paying for tasks: the budget is reserved before a task exists, every engine run is charged to
//! the persona that ran it, and the reservation is settled when the task ends.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{git_repo, shell_task, Options, Service};

async fn account(service: &Service, id: &str) -> Value {
    let (status, account) = service.get(&format!("/v1/ledger/accounts/{id}")).await;
    assert_eq!(status, 200, "{id}: {account}");
    account
}

async fn wait_settled(service: &Service, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, task) = service.get(&format!("/v1/tasks/{id}")).await;
        if task["settled"] == true {
            return task;
        }
        assert!(Instant::now() < deadline, "never settled: {task:#}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn assert_audit_balanced(service: &Service) {
    let (status, audit) = service.get("/v1/ledger/audit").await;
    assert_eq!(status, 200, "{audit}");
    assert_eq!(audit["balanced"], true, "{audit:#}");
}

#[tokio::test]
async fn a_task_whose_account_is_short_is_refused_with_402_and_not_created() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let (status, _) = service
        .post(
            "/v1/ledger/accounts",
            &json!({"id": "user:poor", "kind": "user"}),
        )
        .await;
    assert_eq!(status, 201);
    let mut body = shell_task(&repo, "echo hi > hi.txt", "true");
    body["account"] = json!("user:poor");
    let (status, refused) = service.post("/v1/tasks", &body).await;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (402, Some("INSUFFICIENT_FUNDS")),
        "{refused}"
    );
    let (_, tasks) = service.get("/v1/tasks").await;
    assert!(tasks["tasks"].as_array().unwrap().is_empty());
    assert_eq!(account(&service, "user:poor").await["debits_pending"], 0);

    body["account"] = json!("user:nobody");
    let (status, refused) = service.post("/v1/tasks", &body).await;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (422, Some("ACCOUNT_NOT_FOUND"))
    );
    assert_audit_balanced(&service).await;
}

#[tokio::test]
async fn a_finished_tasks_charges_appear_per_persona_and_its_reservation_is_settled() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let before = account(&service, "user:local").await;
    // The prompt folder goes once the task lands: the engine keeps a copy of what it was given.
    let prompt_file = root.path().join("prompt-seen.md");
    let patch = format!(
        "echo hi > hi.txt; cp \"$GLITCHLAB_PROMPT_FILE\" {}",
        prompt_file.display()
    );
    let mut body = shell_task(&repo, &patch, "test -f hi.txt");
    body["budget"] = json!({"max_cost": 5_000_000});
    let task = service.submit(&body).await;
    let id = task["id"].as_str().unwrap().to_owned();
    assert_eq!(task["reservation"], format!("task:{id}:budget:1"));
    assert_eq!(
        account(&service, "user:local").await["debits_pending"],
        5_000_000
    );

    assert_eq!(service.wait_until_finished(&id).await["status"], "done");
    wait_settled(&service, &id).await;
    let mut earned = Vec::new();
    for persona in ["planner", "patch", "circuit"] {
        let agent = account(&service, &format!("agent:{persona}")).await;
        earned.push(agent["credits_posted"].as_u64().unwrap());
    }
    assert!(
        earned.iter().all(|amount| *amount > 0),
        "every persona that ran was paid: {earned:?}"
    );
    let cost: u64 = earned.iter().sum();

    let (_, reservation) = service
        .get(&format!("/v1/ledger/transfers/task:{id}:budget:1"))
        .await;
    assert_eq!(reservation["status"], "posted", "{reservation:#}");
    assert_eq!(reservation["posted_amount"].as_u64(), Some(cost));
    let after = account(&service, "user:local").await;
    assert_eq!(
        after["debits_pending"], 0,
        "the rest of the budget was released"
    );
    assert_eq!(
        before["balance"].as_i64().unwrap() - after["balance"].as_i64().unwrap(),
        i64::try_from(cost).unwrap(),
        "the payer paid exactly what the runs cost"
    );
    assert_eq!(account(&service, &format!("task:{id}")).await["balance"], 0);
    assert_audit_balanced(&service).await;

    // Each run carries the figure the books charged, and the digest of the prompt it was given.
    let (_, runs) = service.get(&format!("/v1/tasks/{id}/runs")).await;
    let runs = runs["runs"].as_array().unwrap();
    let priced: u64 = runs.iter().map(|r| r["cost"].as_u64().unwrap()).sum();
    assert_eq!(priced, cost, "{runs:#?}");
    let patch = runs.iter().find(|r| r["persona"] == "patch").unwrap();
    let prompt = std::fs::read(&prompt_file).unwrap();
    use sha2::Digest;
    let expected = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&prompt)));
    assert_eq!(patch["prompt_digest"], expected.as_str());
    let verify = runs.iter().find(|r| r["persona"] == "circuit").unwrap();
    assert!(verify.get("prompt_digest").is_none(), "{verify:#}");
}

#[tokio::test]
async fn usage_past_the_budget_is_charged_to_the_payer_at_settlement() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let before = account(&service, "user:local").await;
    let mut body = shell_task(&repo, "echo hi > hi.txt", "true");
    body["budget"] = json!({"max_cost": 1});
    let task = service.submit(&body).await;
    let id = task["id"].as_str().unwrap().to_owned();
    service.wait_until_finished(&id).await;
    wait_settled(&service, &id).await;

    let (_, reservation) = service
        .get(&format!("/v1/ledger/transfers/task:{id}:budget:1"))
        .await;
    assert_eq!(reservation["posted_amount"], 1);
    assert_eq!(account(&service, &format!("task:{id}")).await["balance"], 0);
    let after = account(&service, "user:local").await;
    assert!(before["balance"].as_i64().unwrap() > after["balance"].as_i64().unwrap() + 1);
    assert_audit_balanced(&service).await;
}

#[tokio::test]
async fn a_run_cut_off_by_a_cancel_is_charged_before_the_task_settles() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let before = account(&service, "user:local").await;
    let marker = root.path().join("verify.started");
    let verify = format!("touch {}; sleep 60", marker.display());
    let task = service
        .submit(&shell_task(&repo, "echo hi > hi.txt", &verify))
        .await;
    let id = task["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !marker.exists() {
        assert!(Instant::now() < deadline, "verify never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let it run into its second second, so the charge is for 2 started seconds at least.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (status, _) = service
        .post(&format!("/v1/tasks/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 200);
    wait_settled(&service, &id).await;

    let (_, runs) = service.get(&format!("/v1/tasks/{id}/runs")).await;
    let cut = runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["stage"] == "verify")
        .unwrap_or_else(|| panic!("no verify run: {runs:#}"));
    assert_eq!(cut["status"], "interrupted", "{cut:#}");
    let (status, charge) = service
        .get(&format!(
            "/v1/ledger/transfers/run:{}",
            cut["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, 200, "the cut-off run was not charged: {charge}");
    // 1,000 per started second (at least 2) plus 500 per verify run: the default rate card.
    assert!(charge["amount"].as_u64().unwrap() >= 2_500, "{charge:#}");
    assert_eq!(charge["credit_account"], "agent:circuit");
    assert_eq!(
        cut["cost"], charge["amount"],
        "the run shows what was charged"
    );

    // The settlement came after the charge: the task's account is square, the payer paid it.
    assert_eq!(account(&service, &format!("task:{id}")).await["balance"], 0);
    let after = account(&service, "user:local").await;
    assert_eq!(after["debits_pending"], 0);
    let (_, reservation) = service
        .get(&format!("/v1/ledger/transfers/task:{id}:budget:1"))
        .await;
    let paid = before["balance"].as_i64().unwrap() - after["balance"].as_i64().unwrap();
    assert_eq!(Some(paid), reservation["posted_amount"].as_i64());
    assert!(paid >= 2_500, "{reservation:#}");
    assert_audit_balanced(&service).await;
    // The cancel and the pipeline's end both ask for the settlement; it is recorded once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let settled = service
        .event_kinds(&id)
        .await
        .iter()
        .filter(|kind| *kind == "ledger.settled")
        .count();
    assert_eq!(settled, 1, "{:?}", service.event_kinds(&id).await);
}
