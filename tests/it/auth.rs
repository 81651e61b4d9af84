//! Tokens and roles against the real service: who gets in, what each role may do, scopes at
//! submit, revocation, rate limits, the audit log, and that no secret lands on disk or in a log.

use serde_json::{json, Value};

use crate::helpers::{
    client_builder_with, git_repo, shell_task, with_config, Options, Service, ADMIN_TOKEN,
};

/// A client that sends `secret` (or nothing).
fn as_token(secret: Option<&str>) -> reqwest::Client {
    match secret {
        Some(secret) => client_builder_with(secret).build().unwrap(),
        None => reqwest::Client::new(),
    }
}

async fn call(
    client: &reqwest::Client,
    method: &str,
    url: &str,
    body: Option<&Value>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut request = match method {
        "GET" => client.get(url),
        "POST" => client.post(url),
        "DELETE" => client.delete(url),
        other => panic!("no {other}"),
    };
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (
        status,
        headers,
        response.json().await.unwrap_or(Value::Null),
    )
}

/// Makes a token through the API; answers its secret.
async fn make_token(service: &Service, body: Value) -> String {
    let (status, token) = service.post("/v1/tokens", &body).await;
    assert_eq!(status, 201, "{token}");
    assert!(token.get("secret_sha256").is_none(), "{token}");
    token["secret"].as_str().unwrap().to_owned()
}

/// Mints `amount` into `account` (opened first if needed) as the admin.
async fn fund(service: &Service, account: &str, amount: u64) {
    let (status, body) = service
        .post(
            "/v1/ledger/accounts",
            &json!({"id": account, "kind": "user"}),
        )
        .await;
    assert!(status == 201 || status == 200, "{status} {body}");
    let (status, body) = service
        .post(
            "/v1/ledger/mint",
            &json!({"account": account, "amount": amount}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test]
async fn no_token_is_401_and_every_role_gets_exactly_its_routes() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let service = Service::start(root.path()).await;
    let base = service.base.clone();

    // Probes are open; everything else needs a token.
    let anonymous = as_token(None);
    let (status, _, _) = call(&anonymous, "GET", &format!("{base}/healthz"), None).await;
    assert_eq!(status, 200);
    for (method, path) in [
        ("GET", "/v1/tasks"),
        ("GET", "/metrics"),
        ("POST", "/v1/tasks"),
        ("GET", "/v1/events/stream"),
    ] {
        let (status, headers, body) =
            call(&anonymous, method, &format!("{base}{path}"), None).await;
        assert_eq!(status, 401, "{method} {path}: {body}");
        assert_eq!(body["error"]["code"], "UNAUTHENTICATED");
        assert_eq!(headers["www-authenticate"], "Bearer");
    }
    let wrong = as_token(Some("glt_not-a-token"));
    let (status, _, _) = call(&wrong, "GET", &format!("{base}/v1/tasks"), None).await;
    assert_eq!(status, 401);

    let mut secrets = Vec::new();
    for role in ["viewer", "submitter", "approver", "operator", "admin"] {
        let secret = make_token(&service, json!({"name": role, "role": role})).await;
        secrets.push((role, secret));
    }
    // (method, path, body, least role allowed); a task is paid from the caller's own account.
    let task = json!({"title": "t", "description": "d", "repo": repo, "verify": "true"});
    let routes: Vec<(&str, String, Value, &str)> = vec![
        ("GET", "/v1/tasks".into(), Value::Null, "viewer"),
        ("GET", "/v1/ledger/audit".into(), Value::Null, "viewer"),
        ("POST", "/v1/tasks".into(), task.clone(), "submitter"),
        (
            "POST",
            format!("/v1/tasks/{}/approve", uuid_like()),
            json!({}),
            "approver",
        ),
        (
            "POST",
            "/v1/deploys".into(),
            json!({"app": "none"}),
            "operator",
        ),
        (
            "POST",
            "/v1/alerts".into(),
            json!({"app": "none", "signal": "x"}),
            "operator",
        ),
        (
            "POST",
            "/v1/ledger/mint".into(),
            json!({"account": "user:submitter", "amount": 1}),
            "admin",
        ),
        ("GET", "/v1/tokens".into(), Value::Null, "admin"),
    ];
    let rank = |role: &str| {
        ["viewer", "submitter", "approver", "operator", "admin"]
            .iter()
            .position(|r| *r == role)
            .unwrap()
    };
    for (role, _) in &secrets {
        if *role != "admin" {
            fund(&service, &format!("user:{role}"), 100_000_000).await;
        }
    }
    for (role, secret) in &secrets {
        let client = as_token(Some(secret));
        for (method, path, body, least) in &routes {
            let body = (!body.is_null()).then_some(body);
            let (status, _, answer) = call(&client, method, &format!("{base}{path}"), body).await;
            if rank(role) >= rank(least) {
                assert_ne!(status, 403, "{role} {method} {path}: {answer}");
                assert_ne!(status, 401, "{role} {method} {path}: {answer}");
            } else {
                assert_eq!(status, 403, "{role} {method} {path}: {answer}");
                assert_eq!(answer["error"]["code"], "FORBIDDEN");
                assert!(
                    answer["error"]["message"]
                        .as_str()
                        .unwrap()
                        .contains("permission"),
                    "{answer}"
                );
            }
        }
    }
}

fn uuid_like() -> &'static str {
    "01900000-0000-7000-8000-000000000000"
}

#[tokio::test]
async fn a_submitter_is_held_to_its_scopes_and_its_tasks_name_it() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let other_repo = git_repo(&root.path().join("elsewhere"));
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let glob = format!("{}*", repo.display());
    let secret = make_token(
        &service,
        json!({"name": "ci", "role": "submitter", "repos": [glob]}),
    )
    .await;
    fund(&service, "user:ci", 100_000_000).await;
    let ci = as_token(Some(&secret));
    let url = format!("{}/v1/tasks", service.base);

    // Its own account, its repository, the persona files' engines: accepted, and it says who.
    let body = json!({"title": "ok", "description": "d", "repo": repo, "verify": "true"});
    let (status, _, task) = call(&ci, "POST", &url, Some(&body)).await;
    assert_eq!(status, 201, "{task}");
    assert_eq!(task["account"], "user:ci");
    assert_eq!(task["submitted_by"], "ci");
    let id = task["id"].as_str().unwrap().to_owned();
    let (_, events) = service.get(&format!("/v1/tasks/{id}/events")).await;
    let submitted = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "task.submitted")
        .unwrap();
    assert_eq!(submitted["data"]["principal"], "ci", "{submitted}");

    for (body, code) in [
        (
            json!({"title": "t", "description": "d", "repo": other_repo, "verify": "true"}),
            "REPO_NOT_ALLOWED",
        ),
        (
            json!({"title": "t", "description": "d", "repo": repo, "verify": "true",
                   "account": "user:local"}),
            "ACCOUNT_NOT_ALLOWED",
        ),
        (
            json!({"title": "t", "description": "d", "repo": repo, "verify": "true",
                   "engines": {"patch": {"kind": "shell", "command": "true"}}}),
            "ENGINES_NOT_ALLOWED",
        ),
    ] {
        let (status, _, answer) = call(&ci, "POST", &url, Some(&body)).await;
        assert_eq!(status, 403, "{answer}");
        assert_eq!(answer["error"]["code"], code, "{answer}");
    }

    // It may cancel its own task, not the admin's.
    let (_, admin_task) = service
        .post(
            "/v1/tasks",
            &json!({"title": "admin's", "description": "d", "repo": repo, "verify": "true",
                    "review_policy": "manual"}),
        )
        .await;
    let admin_id = admin_task["id"].as_str().unwrap();
    let cancel = |id: &str| format!("{}/v1/tasks/{id}/cancel", service.base);
    let (status, _, answer) = call(&ci, "POST", &cancel(admin_id), None).await;
    assert_eq!(status, 403, "{answer}");
    assert_eq!(answer["error"]["code"], "NOT_OWN_TASK");
    let (status, _, answer) = call(&ci, "POST", &cancel(&id), None).await;
    assert!(status == 200 || status == 409, "{status} {answer}");

    // The audit log names who did what.
    let (status, page) = service.get("/v1/audit?principal=ci").await;
    assert_eq!(status, 200, "{page}");
    let routes: Vec<&str> = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["route"].as_str().unwrap())
        .collect();
    assert!(routes.contains(&"/v1/tasks"), "{page}");
    assert!(page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["principal"] == "ci" && e["status"].as_u64().unwrap() < 300));
}

/// Issue 21, item 6: a token's repository globs are matched on the canonical path. Every odd
/// name of a repository outside the scope — `..`, a symlink inside an allowed dir, `//`, a
/// trailing `/`, `file://` URLs (plain, percent-encoded, with a host) — is refused exactly as
/// the same name of a repository that does not exist is (so a refusal tells nothing of what
/// exists, nor of a branch there); odd names that resolve inside the scope are accepted and
/// stored under the canonical path.
#[tokio::test]
async fn token_scopes_are_judged_on_canonical_paths_and_tell_nothing_outside() {
    let root = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(root.path()).unwrap();
    let base = base.display().to_string();
    let allowed = git_repo(&root.path().join("allowed"));
    git_repo(&root.path().join("victim"));
    let link = |name: &str, target: &str| {
        std::os::unix::fs::symlink(format!("{base}/{target}"), format!("{base}/allowed/{name}"))
            .unwrap();
    };
    link("to-victim", "victim/repo");
    link("to-ghost", "ghost/repo");
    link("alias", "allowed/repo");
    let service = Service::start_in_process(root.path(), Options::default()).await;
    // Both globs as a client would write them: the path, and its file:// URL (which, matched as
    // text, let `file://.../allowed/../victim` through).
    let globs = [
        format!("{base}/allowed/*"),
        format!("file://{base}/allowed/*"),
    ];
    let secret = make_token(
        &service,
        json!({"name": "ci", "role": "submitter", "repos": globs}),
    )
    .await;
    fund(&service, "user:ci", 100_000_000).await;
    let ci = as_token(Some(&secret));
    let url = format!("{}/v1/tasks", service.base);
    let submit = |repo: String, branch: &'static str| {
        let body = json!({"title": "t", "description": "d", "repo": repo, "verify": "true",
                          "base_branch": branch});
        let ci = ci.clone();
        let url = url.clone();
        async move { call(&ci, "POST", &url, Some(&body)).await }
    };

    // `{other}` is `victim` (exists, with `main`) or `ghost` (does not exist).
    let outside = [
        "{base}/allowed/../{other}/repo",
        "{base}/allowed/repo/../../{other}/repo",
        "{base}/allowed/to-{other}",
        "{base}/allowed/to-{other}/",
        "{base}//allowed//..//{other}/repo/",
        "file://{base}/allowed/../{other}/repo",
        "file://{base}/allowed%2F..%2F{other}/repo",
        "file://{base}/allowed/to-{other}",
        "file://localhost{base}/allowed/../{other}/repo",
    ];
    for form in outside {
        let mut answers = Vec::new();
        for (other, branch) in [("victim", "main"), ("victim", "nope"), ("ghost", "main")] {
            let repo = form.replace("{base}", &base).replace("{other}", other);
            let (status, _, answer) = submit(repo.clone(), branch).await;
            assert_eq!(status, 403, "{repo} on {branch}: {answer}");
            assert_eq!(
                answer["error"]["code"], "REPO_NOT_ALLOWED",
                "{repo}: {answer}"
            );
            let message = answer["error"]["message"].as_str().unwrap().to_owned();
            assert_eq!(message, format!("token `ci` may not use repo `{repo}`"));
            answers.push(message.replace(&repo, "<repo>"));
        }
        answers.dedup();
        assert_eq!(answers.len(), 1, "{form}: {answers:?}");
    }

    // Odd names that resolve inside the scope are one repository, stored by its real path.
    let real = format!("{base}/allowed/repo");
    assert_eq!(
        std::fs::canonicalize(&allowed)
            .unwrap()
            .display()
            .to_string(),
        real
    );
    for (repo, stored) in [
        (format!("{base}/allowed/repo/"), real.clone()),
        (format!("{base}//allowed/./repo"), real.clone()),
        (format!("{base}/allowed/repo/../repo"), real.clone()),
        (format!("{base}/allowed/alias"), real.clone()),
        (
            format!("file://{base}/allowed/repo"),
            format!("file://{real}"),
        ),
        (
            format!("file://{base}/allowed/alias/"),
            format!("file://{real}"),
        ),
        (
            format!("file://{base}/allowed%2Frepo"),
            format!("file://{real}"),
        ),
    ] {
        let (status, _, task) = submit(repo.clone(), "main").await;
        assert_eq!(status, 201, "{repo}: {task}");
        assert_eq!(task["repo"], json!(stored), "{repo}");
    }
    // A replay of another client's submission (same key, same body) on a repository outside
    // the scope is refused like any other submission there, not answered with the task.
    let victim = format!("{base}/victim/repo");
    let body = json!({"title": "t", "description": "d", "repo": victim, "verify": "true",
                      "idempotency_key": "shared-key"});
    let (status, original) = service.post("/v1/tasks", &body).await;
    assert_eq!(status, 201, "{original}");
    let (status, _, answer) = call(&ci, "POST", &url, Some(&body)).await;
    assert_eq!(status, 403, "{answer}");
    assert_eq!(
        answer["error"]["message"],
        json!(format!("token `ci` may not use repo `{victim}`"))
    );
    // Inside the scope, what does not exist is said as before.
    let (status, _, answer) = submit(format!("{base}/allowed/nothing"), "main").await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["error"]["code"], "NOT_A_GIT_REPOSITORY", "{answer}");
    let (status, _, answer) = submit(real, "nope").await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["error"]["code"], "UNKNOWN_BASE_BRANCH", "{answer}");
}

#[tokio::test]
async fn a_revoked_token_is_refused_at_once_and_no_secret_reaches_the_disk_or_the_log() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let options = Options {
        no_admin_env: true,
        ..Options::default()
    };
    let service = Service::start_with(root.path(), options).await;
    // No bootstrap variable: the first admin secret is in a file only its owner may read.
    let file = root.path().join("data").join("admin.token");
    let admin = std::fs::read_to_string(&file).unwrap().trim().to_owned();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(admin.starts_with("glt_") && admin.len() == 68, "{admin}");
    let admin_client = as_token(Some(&admin));
    let base = service.base.clone();
    let (status, _, _) = call(&admin_client, "GET", &format!("{base}/v1/tasks"), None).await;
    assert_eq!(status, 200);
    // The helper's own token is not known here.
    let (status, _) = service.get("/v1/tasks").await;
    assert_eq!(status, 401);

    let body = json!({"name": "temp", "role": "viewer"});
    let (status, _, made) = call(
        &admin_client,
        "POST",
        &format!("{base}/v1/tokens"),
        Some(&body),
    )
    .await;
    assert_eq!(status, 201, "{made}");
    let secret = made["secret"].as_str().unwrap().to_owned();
    let temp = as_token(Some(&secret));
    let (status, _, _) = call(&temp, "GET", &format!("{base}/v1/tasks"), None).await;
    assert_eq!(status, 200);
    let (status, _, listed) = call(&admin_client, "GET", &format!("{base}/v1/tokens"), None).await;
    assert_eq!(status, 200);
    assert!(!listed.to_string().contains(&secret), "{listed}");
    let (status, _, _) = call(
        &admin_client,
        "DELETE",
        &format!("{base}/v1/tokens/temp"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let (status, _, answer) = call(&temp, "GET", &format!("{base}/v1/tasks"), None).await;
    assert_eq!(status, 401, "{answer}");

    // A task runs, so the data dir holds records, events, runs and prompt files to search.
    let task = shell_task(&repo, "echo x > x.txt", "test -f x.txt");
    let (status, _, task) = call(
        &admin_client,
        "POST",
        &format!("{base}/v1/tasks"),
        Some(&task),
    )
    .await;
    assert_eq!(status, 201, "{task}");
    let id = task["id"].as_str().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let url = format!("{base}/v1/tasks/{id}");
        let (_, _, now) = call(&admin_client, "GET", &url, None).await;
        if now["status"] == "done" || std::time::Instant::now() > deadline {
            assert_eq!(now["status"], "done", "{now}");
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // Neither token secret appears in the data dir or the log.
    let mut found = Vec::new();
    for entry in walk(&root.path().join("data"))
        .into_iter()
        .chain([root.path().join("service.log")])
    {
        if entry.ends_with("admin.token") {
            continue;
        }
        let bytes = std::fs::read(&entry).unwrap_or_default();
        for needle in [&admin, &secret] {
            if contains(&bytes, needle.as_bytes()) {
                found.push(format!("{} holds a token secret", entry.display()));
            }
        }
    }
    assert!(found.is_empty(), "{found:?}");
}

/// Issue 21, item 6: the data dir is private. A loose data dir is tightened to 0700 at start;
/// nothing the service created in it (sled's files, `admin.token`, directories) is readable or
/// writable by group or others.
#[tokio::test]
async fn the_data_dir_is_0700_and_nothing_in_it_is_open_to_others() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let options = Options {
        no_admin_env: true,
        ..Default::default()
    };
    let mut service = Service::start_with(root.path(), options).await;
    let mode = |path: &std::path::Path| {
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(&data), 0o700);
    assert!(service.log().contains("made it 0700"), "{}", service.log());
    // A clean stop: sled flushes and writes everything it has.
    service.terminate(std::time::Duration::from_secs(20));
    let mut checked = Vec::new();
    let mut pending = vec![data.clone()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                pending.push(path.clone());
            }
            assert_eq!(
                mode(&path) & 0o077,
                0,
                "{} is {:o}",
                path.display(),
                mode(&path)
            );
            checked.push(path);
        }
    }
    assert!(
        checked.iter().any(|p| p.ends_with("admin.token")),
        "{checked:?}"
    );
    assert!(checked.iter().any(|p| p.ends_with("db")), "{checked:?}");
}

/// The `Umask:` line of `/proc/<pid>/status` (`self` for this test process).
fn umask_of(pid: &str) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Umask:")).unwrap();
    u32::from_str_radix(line["Umask:".len()..].trim(), 8).unwrap()
}

/// Issue 21, item 6: the service runs with umask 077, but the commands it runs (git, engines)
/// get the umask it was started with: what they write in the user's repository is the user's.
#[tokio::test]
async fn the_service_is_private_but_its_commands_keep_the_inherited_umask() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    // The temp root (and the data dir in it) is no sandbox-writable extra here: runs share such
    // dirs through their group, which would open the service's own files to it.
    let options = crate::helpers::Options {
        no_root_writable: true,
        ..Default::default()
    };
    let service = Service::start_with(root.path(), options).await;
    assert_eq!(umask_of(&service.pid().to_string()), 0o077);
    let inherited = umask_of("self");
    let patch = "touch made.txt && stat -c %a made.txt > mode.txt";
    let task = service.submit(&shell_task(&repo, patch, "true")).await;
    let task = service
        .wait_until_finished(task["id"].as_str().unwrap())
        .await;
    assert_eq!(task["status"], "done", "{task:#}");
    let mode = crate::helpers::git(&repo, &["show", "main:mode.txt"]);
    // A root service's sandboxed runs each get a host uid of their own and share files through
    // the runs' group: they run with umask 002 (docs/engines.md). Otherwise: the inherited one.
    // SAFETY: geteuid reads this process's credentials.
    let uid_drop = unsafe { libc::geteuid() } == 0 && !crate::containment::namespaces_missing();
    let expected = if uid_drop { 0o664 } else { 0o666 & !inherited };
    assert_eq!(
        mode,
        format!("{expected:o}"),
        "inherited umask {inherited:o}, uid drop {uid_drop}"
    );
    // The service's own git (`add -A`, vforked with the mask held by its spawning thread) wrote
    // that file's blob into the user's repository with the inherited umask too.
    let blob = crate::helpers::git(&repo, &["rev-parse", "main:mode.txt"]);
    let object = std::path::Path::new(&repo)
        .join(".git/objects")
        .join(&blob[..2])
        .join(&blob[2..]);
    let mode = std::fs::metadata(&object).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o444 & !inherited, "{}", object.display());
    // So did the service's in-process writes there (gix, on the blocking pool): the landing's
    // squash commit and the base it moved.
    let landed = crate::helpers::git(&repo, &["rev-parse", "main"]);
    let git_dir = std::path::Path::new(&repo).join(".git");
    let commit = git_dir
        .join("objects")
        .join(&landed[..2])
        .join(&landed[2..]);
    let mode = std::fs::metadata(&commit).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o444 & !inherited, "{}", commit.display());
    let main = git_dir.join("refs/heads/main");
    let mode = std::fs::metadata(&main).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o666 & !inherited, "{}", main.display());
    // The task's worktree was one of those writes: added in-process, not by the `git` fallback.
    let log = service.log();
    assert!(!log.contains("in-process worktree add failed"), "{log}");
    // What the service writes itself during a task is private: the builtin engine's note.
    let body = json!({"title": "t", "description": "d", "repo": repo, "verify": "true"});
    let task = service.submit(&body).await;
    let id = task["id"].as_str().unwrap();
    let task = service.wait_until_finished(id).await;
    assert_eq!(task["status"], "done", "{task:#}");
    let note = root.path().join(format!("data/notes/{id}.md"));
    let mode = std::fs::metadata(&note).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{}", note.display());
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return files;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn a_token_past_its_rate_limit_gets_429_with_retry_after() {
    let root = tempfile::tempdir().unwrap();
    let service = Service::start_with(
        root.path(),
        with_config("[server]\nrequests_per_sec = 1\nburst = 3\nmetrics_public = true\n"),
    )
    .await;
    let mut statuses = Vec::new();
    let mut retry_after = None;
    let client = as_token(Some(ADMIN_TOKEN));
    for _ in 0..10 {
        let (status, headers, _) =
            call(&client, "GET", &format!("{}/v1/tasks", service.base), None).await;
        statuses.push(status);
        if status == 429 {
            retry_after = headers.get("retry-after").cloned();
        }
    }
    assert!(statuses[..3].iter().all(|s| *s == 200), "{statuses:?}");
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(retry_after.is_some());
    // `metrics_public`: a scraper needs no token (and is not limited).
    let (status, _, _) = call(
        &reqwest::Client::new(),
        "GET",
        &format!("{}/metrics", service.base),
        None,
    )
    .await;
    assert_eq!(status, 200);
}

/// A client from the loopback source `127.0.0.<last>` that sends `secret` (or nothing).
fn from_address(last: u8, secret: Option<&str>) -> reqwest::Client {
    let builder = match secret {
        Some(secret) => client_builder_with(secret),
        None => reqwest::Client::builder(),
    };
    builder
        .local_address(std::net::IpAddr::from([127, 0, 0, last]))
        .build()
        .unwrap()
}

/// A labelled counter's value in `/metrics` (0 when absent), asked from `127.0.0.<last>`.
async fn counter_from(service: &Service, last: u8, sample: &str) -> f64 {
    let text = from_address(last, Some(ADMIN_TOKEN))
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

/// Wrong secrets this test sends from one address.
const GUESSES: usize = 1000;
/// Concurrent guessers (one address, several connections).
const GUESSERS: usize = 8;

#[tokio::test]
async fn wrong_secrets_from_one_address_are_throttled_429_with_retry_after_and_counted() {
    let root = tempfile::tempdir().unwrap();
    // Defaults: 20 wrong secrets per 60 s per address.
    let service = Service::start(root.path()).await;
    let url = format!("{}/v1/tasks", service.base);
    let guesser = from_address(
        2,
        Some("glt_guess-0000000000000000000000000000000000000000"),
    );
    let started = std::time::Instant::now();
    let mut rounds = tokio::task::JoinSet::new();
    for _ in 0..GUESSERS {
        let (guesser, url) = (guesser.clone(), url.clone());
        rounds.spawn(async move {
            let (mut unauthorized, mut throttled, mut retry_after) = (0, 0, u64::MAX);
            for _ in 0..GUESSES / GUESSERS {
                let answer = guesser.get(&url).send().await.unwrap();
                match answer.status().as_u16() {
                    401 => unauthorized += 1,
                    429 => {
                        throttled += 1;
                        let secs = answer.headers()["retry-after"].to_str().unwrap();
                        retry_after = retry_after.min(secs.parse::<u64>().unwrap());
                        let body: Value = answer.json().await.unwrap();
                        assert_eq!(body["error"]["code"], "RATE_LIMITED", "{body}");
                    }
                    other => panic!("a wrong secret was answered {other}"),
                }
            }
            (unauthorized, throttled, retry_after)
        });
    }
    let (mut unauthorized, mut throttled, mut retry_after) = (0, 0, u64::MAX);
    for (u, t, r) in rounds.join_all().await {
        (unauthorized, throttled, retry_after) =
            (unauthorized + u, throttled + t, retry_after.min(r));
    }
    let took = started.elapsed();
    eprintln!(
        "auth: {GUESSES} wrong secrets in {took:?}: {unauthorized} answered 401, {throttled} \
         429 (Retry-After at least {retry_after} s)"
    );
    // 20 tries, plus one more every 3 s of the run.
    let replenished = usize::try_from(took.as_secs() / 3).unwrap() + 1;
    assert!(
        (20..=20 + replenished).contains(&unauthorized),
        "{unauthorized} secrets were checked"
    );
    assert_eq!(unauthorized + throttled, GUESSES);
    assert!((1..=3).contains(&retry_after), "{retry_after}");
    // While blocked, even the right secret from that address is not checked ...
    let blocked = from_address(2, Some(ADMIN_TOKEN))
        .get(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(blocked.status(), 429);
    // ... and other addresses are not affected.
    let other = from_address(3, Some(ADMIN_TOKEN))
        .get(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200);
    let sample = "glitchlab_http_auth_failures_total{outcome=\"throttled\"} ";
    assert!(counter_from(&service, 3, sample).await >= throttled as f64);
    let sample = "glitchlab_http_auth_failures_total{outcome=\"rejected\"} ";
    assert_eq!(counter_from(&service, 3, sample).await, unauthorized as f64);
}

#[test]
fn an_admin_token_variable_under_32_characters_refuses_to_start() {
    let root = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_glitchlab"))
        .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
        .arg(root.path().join("data"))
        .current_dir(root.path())
        .env("GLITCHLAB_ADMIN_TOKEN", "0123456789")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("GLITCHLAB_ADMIN_TOKEN is 10 characters long")
            && stderr.contains("at least 32"),
        "{stderr}"
    );
    assert!(
        !root.path().join("data").exists(),
        "a refused start made its data dir"
    );
}

#[tokio::test]
async fn the_bootstrap_token_ends_when_its_variable_is_gone_and_its_name_is_reserved() {
    let root = tempfile::tempdir().unwrap();
    let mut service = Service::start(root.path()).await;
    let (status, _) = service.get("/v1/tasks").await;
    assert_eq!(status, 200);
    let (status, body) = service
        .post(
            "/v1/tokens",
            &json!({"name": "bootstrap", "role": "viewer"}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let viewer = make_token(&service, json!({"name": "dash", "role": "viewer"})).await;
    service.terminate(std::time::Duration::from_secs(30));

    // Started again without the variable: the secret it carried opens nothing any more.
    let options = Options {
        no_admin_env: true,
        ..Options::default()
    };
    let service = Service::start_with(root.path(), options).await;
    let (status, body) = service.get("/v1/tasks").await;
    assert_eq!(status, 401, "{body}");
    assert!(
        service
            .log()
            .contains("removed the admin token `bootstrap`"),
        "{}",
        service.log()
    );
    // The other tokens are untouched.
    let (status, _, _) = call(
        &as_token(Some(&viewer)),
        "GET",
        &format!("{}/v1/tasks", service.base),
        None,
    )
    .await;
    assert_eq!(status, 200);
}
