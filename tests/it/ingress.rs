//! The HTTP edge: every bad input gets its status and code, never a 500; idempotent submission.

use serde_json::{json, Value};

use crate::helpers::{git_repo, shell_task, Options, Service};

async fn assert_error(service: &Service, body: impl Into<reqwest::Body>, status: u16, code: &str) {
    let (got_status, got) = service.post_raw("/v1/tasks", body).await;
    assert_eq!(
        (got_status, got["error"]["code"].as_str()),
        (status, Some(code)),
        "{got}"
    );
    assert!(
        got["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{got}"
    );
}

#[tokio::test]
async fn each_bad_input_gets_its_status_and_code() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let not_a_repo = root.path().join("plain-dir");
    std::fs::create_dir_all(&not_a_repo).unwrap();
    // The binary: this test reads its log for panics, which an in-process service's thread would
    // print to the test's own stderr instead.
    let service = Service::start(root.path()).await;
    let valid = shell_task(&repo, "true", "true");
    let with = |key: &str, value: Value| {
        let mut body = valid.clone();
        body[key] = value;
        body.to_string()
    };
    let without = |key: &str| {
        let mut body = valid.clone();
        body.as_object_mut().unwrap().remove(key);
        body.to_string()
    };

    assert_error(&service, "{not json", 400, "INVALID_JSON").await;
    assert_error(&service, "", 400, "INVALID_JSON").await;
    assert_error(&service, without("title"), 422, "INVALID_FIELD").await;
    assert_error(&service, without("verify"), 422, "INVALID_FIELD").await;
    assert_error(&service, with("title", json!("   ")), 422, "INVALID_FIELD").await;
    assert_error(
        &service,
        with("priority", json!("urgent")),
        422,
        "INVALID_FIELD",
    )
    .await;
    assert_error(
        &service,
        with("max_attempts", json!(0)),
        422,
        "INVALID_FIELD",
    )
    .await;
    assert_error(
        &service,
        with("max_attempts", json!(-1)),
        422,
        "INVALID_FIELD",
    )
    .await;
    assert_error(
        &service,
        with("surprise", json!(true)),
        422,
        "INVALID_FIELD",
    )
    .await;
    assert_error(
        &service,
        with("engines", json!({"patch": {"kind": "magic"}})),
        422,
        "INVALID_FIELD",
    )
    .await;
    assert_error(
        &service,
        with("repo", json!("relative/path")),
        422,
        "INVALID_FIELD",
    )
    .await;
    assert_error(
        &service,
        with("repo", json!(not_a_repo.display().to_string())),
        422,
        "NOT_A_GIT_REPOSITORY",
    )
    .await;
    assert_error(
        &service,
        with("repo", json!("/definitely/not/here")),
        422,
        "NOT_A_GIT_REPOSITORY",
    )
    .await;
    assert_error(
        &service,
        with("base_branch", json!("nope")),
        422,
        "UNKNOWN_BASE_BRANCH",
    )
    .await;
    assert_error(&service, with("kind", json!("poetry")), 422, "UNKNOWN_KIND").await;
    let huge = with("description", json!("x".repeat(1024 * 1024 + 1)));
    assert_error(&service, huge, 413, "PAYLOAD_TOO_LARGE").await;

    for path in [
        "/v1/tasks/00000000-0000-7000-8000-000000000000",
        "/v1/tasks/not-an-id",
        "/v1/tasks/not-an-id/events",
        "/v1/tasks/not-an-id/runs",
    ] {
        let (status, body) = service.get(path).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (404, Some("TASK_NOT_FOUND")),
            "{path}: {body}"
        );
    }
    let (status, body) = service.post("/v1/tasks/not-an-id/cancel", &json!({})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("TASK_NOT_FOUND"))
    );
    let (status, body) = service.get("/v1/nothing-here").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("NOT_FOUND"))
    );
    // Query strings and optional bodies that axum itself refuses still get the error envelope.
    for path in [
        "/v1/tasks?limit=many",
        "/v1/deploys?limit=many",
        "/v1/checks?limit=-1",
        "/v1/incidents?status=sleeping",
        "/v1/ledger/accounts/user:local/transfers?limit=x",
    ] {
        let (status, body) = service.get(path).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (422, Some("INVALID_FIELD")),
            "{path}: {body}"
        );
    }
    let huge_comment = json!({"comment": "x".repeat(1024 * 1024 + 1)}).to_string();
    for path in [
        "/v1/tasks/00000000-0000-7000-8000-000000000000/approve",
        "/v1/deploys/nope/reject",
    ] {
        let (status, body) = service.post_raw(path, huge_comment.clone()).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (413, Some("PAYLOAD_TOO_LARGE")),
            "{path}: {body}"
        );
    }

    let (_, tasks) = service.get("/v1/tasks").await;
    assert_eq!(
        tasks["tasks"].as_array().unwrap().len(),
        0,
        "a bad submission created a task"
    );
    assert!(!service.log().contains("panicked"), "{}", service.log());
}

#[tokio::test]
async fn idempotency_key_replays_the_same_task_and_refuses_another_body() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let mut body = shell_task(&repo, "echo hello > hello.txt", "test -f hello.txt");
    body["idempotency_key"] = json!("deploy-greeting-1");

    let first = service.submit(&body).await;
    let second = service.submit(&body).await;
    assert_eq!(first["id"], second["id"]);

    body["title"] = json!("Something else");
    let (status, conflict) = service.post("/v1/tasks", &body).await;
    assert_eq!(status, 409);
    assert_eq!(conflict["error"]["code"], "IDEMPOTENCY_CONFLICT");

    let (_, tasks) = service.get("/v1/tasks").await;
    assert_eq!(tasks["tasks"].as_array().unwrap().len(), 1);
    let id = first["id"].as_str().unwrap();
    assert_eq!(service.wait_until_finished(id).await["status"], "done");
}

/// 64 clients send the same keyed submission at once: the twins meet inside the store's group
/// commits, where the task and its budget reservation are one write. One task is made, every
/// answer names it, and exactly one budget is held for it — a twin that lost the key holds none.
#[tokio::test]
async fn sixty_four_twins_of_a_keyed_submission_make_one_task_and_hold_one_budget() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let before = service.get("/v1/ledger/accounts/user:local").await.1;
    let mut body = shell_task(&repo, "echo twin > twin.txt", "true");
    body["idempotency_key"] = json!("twins-1");
    let url = format!("{}/v1/tasks", service.base);
    let mut twins = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let (url, body) = (url.clone(), body.clone());
        twins.spawn(async move {
            let answer = crate::helpers::client()
                .post(url)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = answer.status().as_u16();
            let replayed = answer.headers().contains_key("idempotent-replayed");
            (status, replayed, answer.json::<Value>().await.unwrap())
        });
    }
    let answers = twins.join_all().await;
    let mut ids = std::collections::BTreeSet::new();
    for (status, _, task) in &answers {
        assert_eq!(*status, 201, "{task}");
        ids.insert(task["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    // A replay answers `201` too, marked `idempotent-replayed`: exactly one answer is not.
    let created = answers.iter().filter(|(_, replayed, _)| !replayed).count();
    assert_eq!(created, 1, "{created} answers say they created the task");
    let (_, tasks) = service.get("/v1/tasks").await;
    assert_eq!(tasks["tasks"].as_array().unwrap().len(), 1, "{tasks:#}");
    let task = &answers[0].2;
    let budget = task["budget"]["max_cost"].as_u64().unwrap();
    let after = service.get("/v1/ledger/accounts/user:local").await.1;
    let held = |account: &Value| account["debits_pending"].as_u64().unwrap_or(0);
    let settled = |account: &Value| account["debits_posted"].as_u64().unwrap_or(0);
    // The task may have started (and even finished) since: what it holds or spent is one budget.
    let moved = held(&after) + settled(&after) - held(&before) - settled(&before);
    assert!(
        moved <= budget && held(&after) - held(&before) <= budget,
        "more than one budget moved for one task: {moved} (budget {budget}): {after:#}"
    );
    let reservation = task["reservation"].as_str().unwrap();
    let (status, _) = service
        .get(&format!("/v1/ledger/transfers/{reservation}"))
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn the_tree_is_listed_with_every_persona() {
    let root = tempfile::tempdir().unwrap();
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let (status, _) = service.get("/healthz").await;
    assert_eq!(status, 200);
    let (status, ready) = service.get("/readyz").await;
    assert_eq!(status, 200, "{ready}");
    let (_, actors) = service.get("/v1/actors").await;
    let mut names: Vec<String> = actors["actors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            assert_eq!(a["status"], "running");
            assert_eq!(a["restarts"], 0);
            a["name"].as_str().unwrap().to_owned()
        })
        .collect();
    names.sort();
    let expected = [
        "circuit",
        "compass",
        "ledger",
        "patch",
        "planner",
        "uplink-deploy",
        "uplink-respond",
        "uplink-watch",
    ];
    assert_eq!(names, expected);
    assert_eq!(service.actor("compass").await["parent"], Value::Null);
    let (status, personas) = service.get("/v1/personas").await;
    assert_eq!(status, 200);
    let patch = personas["personas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "patch")
        .unwrap()
        .clone();
    assert_eq!(patch["engine"], "builtin");
    assert!(patch["tools"]["allow"]
        .as_array()
        .unwrap()
        .contains(&Value::from("cargo")));
    assert!(patch["tools"]["deny"]
        .as_array()
        .unwrap()
        .contains(&Value::from("curl")));
    assert_eq!(service.actor("patch").await["parent"], "compass");
}

#[test]
fn a_bad_config_file_stops_start_up_naming_file_and_key() {
    let root = tempfile::tempdir().unwrap();
    let config = root.path().join("bad.toml");
    std::fs::write(&config, "[compass]\nmax_concurrent_tasks = \"four\"\n").unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_glitchlab"))
        .args(["serve", "--bind", "127.0.0.1:0", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(root.path().join("data"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("bad.toml") && stderr.contains("max_concurrent_tasks"),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_task_list_pages_with_a_cursor() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let mut submitted = Vec::new();
    for n in 0..3 {
        let task = service
            .submit(&shell_task(&repo, &format!("echo {n} > n{n}.txt"), "true"))
            .await;
        submitted.push(task["id"].as_str().unwrap().to_owned());
    }
    let (status, first) = service.get("/v1/tasks?limit=2").await;
    assert_eq!(status, 200, "{first}");
    let ids = |page: &Value| -> Vec<String> {
        page["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_owned())
            .collect()
    };
    // Newest first.
    assert_eq!(ids(&first), [submitted[2].clone(), submitted[1].clone()]);
    let cursor = first["next_cursor"].as_str().unwrap();
    let (_, second) = service
        .get(&format!("/v1/tasks?limit=2&cursor={cursor}"))
        .await;
    assert_eq!(ids(&second), [submitted[0].clone()]);
    assert!(second["next_cursor"].is_null(), "{second}");
    let (_, all) = service.get("/v1/tasks").await;
    assert_eq!(ids(&all).len(), 3);
    assert!(all["next_cursor"].is_null());

    for bad in [
        "/v1/tasks?limit=0",
        "/v1/tasks?limit=x",
        "/v1/tasks?cursor=nope",
    ] {
        let (status, body) = service.get(bad).await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (422, &json!("INVALID_FIELD")),
            "{bad}: {body}"
        );
    }
}

/// A submission's status, error code and answer.
async fn refused(service: &Service, body: Value) -> (u16, String, Value) {
    let (status, answer) = service.post("/v1/tasks", &body).await;
    let code = answer["error"]["code"].as_str().unwrap_or("").to_owned();
    (status, code, answer)
}

/// Issue #11, item 9: the door says no to what it cannot store or act on faithfully — a control
/// character, a git directory, a revision for a branch, the service's own books — with a code,
/// and nothing is created.
#[tokio::test]
async fn intake_refuses_controls_git_dirs_revisions_and_reserved_accounts() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    // The binary: this test reads its log for panics, which an in-process service's thread would
    // print to the test's own stderr instead.
    let service = Service::start(root.path()).await;
    let valid = shell_task(&repo, "true", "true");
    let with = |key: &str, value: Value| {
        let mut body = valid.clone();
        body[key] = value;
        body
    };

    let (status, code, answer) = refused(&service, with("title", json!("Fix\u{0}it"))).await;
    assert_eq!((status, code.as_str()), (422, "INVALID_FIELD"), "{answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("title "), "names the field: {message}");
    for (key, value) in [
        ("description", json!("one\r\ntwo")),
        ("verify", json!("true\u{1b}[2J")),
        ("kind", json!("feature\n")),
        ("idempotency_key", json!("k\u{7f}")),
    ] {
        let (status, code, answer) = refused(&service, with(key, value)).await;
        assert_eq!(
            (status, code.as_str()),
            (422, "INVALID_FIELD"),
            "{key}: {answer}"
        );
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with(key),
            "{key}: {answer}"
        );
    }

    let git_dir = format!("{}/.git", repo.display());
    let (status, code, answer) = refused(&service, with("repo", json!(git_dir))).await;
    assert_eq!(
        (status, code.as_str()),
        (422, "NOT_A_WORK_TREE"),
        "{answer}"
    );
    let top = std::fs::canonicalize(&repo).unwrap().display().to_string();
    assert!(
        answer["error"]["message"].as_str().unwrap().contains(&top),
        "the hint names the work tree: {answer}"
    );

    for revision in ["main~1", "main^", "main@{1}", "main:README.md", "-main"] {
        let (status, code, answer) = refused(&service, with("base_branch", json!(revision))).await;
        assert_eq!(
            (status, code.as_str()),
            (422, "INVALID_FIELD"),
            "{revision}: {answer}"
        );
    }

    for account in ["system:mint", "agent:patch"] {
        let (status, code, answer) = refused(&service, with("account", json!(account))).await;
        assert_eq!(
            (status, code.as_str()),
            (422, "RESERVED_ACCOUNT"),
            "{account}: {answer}"
        );
    }

    let (_, tasks) = service.get("/v1/tasks").await;
    assert_eq!(tasks["tasks"].as_array().unwrap().len(), 0, "{tasks}");
    assert!(!service.log().contains("panicked"), "{}", service.log());
}

/// One repository is one repository whatever path names it: a symlink to it and a subdirectory
/// of it are stored as its real top level.
#[tokio::test]
async fn a_symlinked_repo_path_and_the_real_path_are_one_repository() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let link = root.path().join("link-to-repo");
    std::os::unix::fs::symlink(&repo, &link).unwrap();
    std::fs::create_dir_all(repo.join("docs")).unwrap();
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let top = std::fs::canonicalize(&repo).unwrap().display().to_string();
    let mut ids = Vec::new();
    for (n, path) in [
        repo.clone(),
        link.clone(),
        link.join("docs"),
        repo.join("docs/.."),
    ]
    .iter()
    .enumerate()
    {
        let mut body = shell_task(path, &format!("echo {n} > n{n}.txt"), "true");
        body["repo"] = json!(format!("{}/", path.display()));
        let task = service.submit(&body).await;
        assert_eq!(task["repo"], json!(top), "{}: {task}", path.display());
        ids.push(task["id"].as_str().unwrap().to_owned());
    }
    for id in ids {
        let task = service.wait_until_finished(&id).await;
        assert_eq!(task["status"], "done", "{task:#}");
        assert_eq!(task["repo"], json!(top));
    }
}

/// serde reads a struct from a JSON array too, field by field: an array must never be taken for
/// an object — not as a task, not as a ledger transfer.
#[tokio::test]
async fn a_json_array_body_is_refused_and_creates_nothing() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let repo = repo.display().to_string();
    let task_array = json!([
        "Add",
        "Create a file.",
        repo,
        "main",
        "feature",
        "high",
        "true"
    ]);
    let (status, answer) = service.post("/v1/tasks", &task_array).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (422, Some("INVALID_FIELD")),
        "{answer}"
    );
    let (_, tasks) = service.get("/v1/tasks").await;
    assert_eq!(tasks["tasks"].as_array().unwrap().len(), 0, "{tasks}");

    let (_, before) = service.get("/v1/ledger/accounts/user:local").await;
    let transfer_array = json!(["arr-1", "user:local", "system:revenue", 5, 10]);
    let (status, answer) = service.post("/v1/ledger/transfers", &transfer_array).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (422, Some("INVALID_FIELD")),
        "{answer}"
    );
    let (status, _) = service.get("/v1/ledger/transfers/arr-1").await;
    assert_eq!(status, 404, "no transfer was made");
    let (_, after) = service.get("/v1/ledger/accounts/user:local").await;
    assert_eq!(before, after);

    // Every other body is an object too; the optional ones may still be empty.
    for path in [
        "/v1/ledger/accounts",
        "/v1/ledger/mint",
        "/v1/ledger/transfers/arr-1/post",
        "/v1/deploys",
        "/v1/alerts",
        "/v1/tasks/00000000-0000-7000-8000-000000000000/approve",
        "/v1/deploys/nope/reject",
    ] {
        let (status, answer) = service.post_raw(path, "[\"x\"]").await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (422, Some("INVALID_FIELD")),
            "{path}: {answer}"
        );
    }
}

/// Issue #12: the task list filters by status, repository and kind, and refuses a parameter it
/// does not know instead of ignoring it (a typo would otherwise list everything).
#[tokio::test]
async fn the_task_list_filters_by_status_repo_and_kind() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let other = git_repo(&root.path().join("other"));
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let done = service
        .submit(&shell_task(&repo, "echo a > a.txt", "true"))
        .await;
    let done_id = done["id"].as_str().unwrap().to_owned();
    service.wait_until_finished(&done_id).await;
    let mut gated = shell_task(&other, "echo b > b.txt", "true");
    gated["review_policy"] = json!("manual");
    let gated = service.submit(&gated).await;
    let gated_id = gated["id"].as_str().unwrap().to_owned();
    let stored_repo = done["repo"].as_str().unwrap().to_owned();

    let ids = |page: &Value| -> Vec<String> {
        page["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (status, page) = service.get("/v1/tasks?status=done").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(ids(&page), std::slice::from_ref(&done_id));
    let (_, page) = service
        .get(&format!("/v1/tasks?repo={stored_repo}&kind=feature"))
        .await;
    assert_eq!(ids(&page), std::slice::from_ref(&done_id));
    let (_, page) = service.get("/v1/tasks?kind=docs").await;
    assert!(ids(&page).is_empty(), "{page}");
    let (_, page) = service.get("/v1/tasks").await;
    assert_eq!(ids(&page), [gated_id, done_id]);
    for bad in ["/v1/tasks?stauts=done", "/v1/tasks?status=finished"] {
        let (status, body) = service.get(bad).await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (422, &json!("INVALID_FIELD")),
            "{bad}: {body}"
        );
    }
}
