//! The governed executor: allowlists and the global deny list, a cleared environment, secrets
//! redacted from everything persisted, and protected paths.

use serde_json::json;

use crate::helpers::{git, git_repo, shell_task, with_config, Options, Service};

#[tokio::test]
async fn curl_in_a_verify_command_fails_tool_denied_naming_the_rule() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let task = service
        .submit(&shell_task(
            &repo,
            "echo hi > hi.txt",
            "test -f hi.txt && curl -s http://127.0.0.1:9/",
        ))
        .await;
    let task = service
        .wait_until_finished(task["id"].as_str().unwrap())
        .await;
    assert_eq!(task["status"], "failed", "{task:#}");
    assert_eq!(task["error"]["code"], "TOOL_DENIED");
    let message = task["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("curl") && message.contains("global deny list"),
        "{message}"
    );

    let task = service
        .submit(&shell_task(&repo, "echo hi > hi.txt", "perl -e 1"))
        .await;
    let task = service
        .wait_until_finished(task["id"].as_str().unwrap())
        .await;
    assert_eq!(task["error"]["code"], "TOOL_DENIED");
    assert!(task["error"]["message"]
        .as_str()
        .unwrap()
        .contains("the circuit allowlist"));
}

/// Valid shell the checker cannot split word by word but whose programs are still known runs:
/// arithmetic expansion and a literal here-document; a program hidden in an expansion is refused
/// naming the construct.
#[tokio::test]
async fn arithmetic_and_literal_here_documents_run_and_a_hidden_program_is_named() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let patch = "cat > hi.txt <<'EOF'\nhello; not a command\nEOF";
    let task = service
        .submit(&shell_task(
            &repo,
            patch,
            "test $((1+1)) -eq 2 && grep -q 'not a command' hi.txt",
        ))
        .await;
    let task = service
        .wait_until_finished(task["id"].as_str().unwrap())
        .await;
    assert_eq!(task["status"], "done", "{task:#}");

    let task = service
        .submit(&shell_task(&repo, "echo x > x.txt", "$CHECK x.txt"))
        .await;
    let task = service
        .wait_until_finished(task["id"].as_str().unwrap())
        .await;
    assert_eq!(task["error"]["code"], "TOOL_DENIED", "{task:#}");
    let message = task["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("parameter expansion in command position"),
        "{message}"
    );
}

#[tokio::test]
async fn touching_a_protected_path_fails_before_anything_is_merged() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let main_before = git(&repo, &["rev-parse", "main"]);
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let patch = "mkdir -p .github/workflows && echo 'on: push' > .github/workflows/ci.yml && echo hi > hi.txt";
    let task = service.submit(&shell_task(&repo, patch, "true")).await;
    let task = service
        .wait_until_finished(task["id"].as_str().unwrap())
        .await;
    assert_eq!(task["status"], "failed", "{task:#}");
    assert_eq!(task["error"]["code"], "PROTECTED_PATH");
    assert!(task["error"]["message"]
        .as_str()
        .unwrap()
        .contains(".github/workflows/ci.yml"));
    assert_eq!(git(&repo, &["rev-parse", "main"]), main_before);
}

/// The check covers what an engine commits by itself (coding agents such as aider do), and both
/// sides of a rename: moving a protected file away is touching it.
#[tokio::test]
async fn protected_paths_hold_for_engine_commits_and_renames() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    std::fs::create_dir_all(repo.join(".github/workflows")).unwrap();
    std::fs::write(repo.join(".github/workflows/ci.yml"), "on: push\n").unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "a workflow"]);
    let main_before = git(&repo, &["rev-parse", "main"]);
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let commits_itself =
        "mkdir -p .github/workflows && echo 'on: pull_request' > .github/workflows/ci.yml \
        && git add -A && git -c user.name=agent -c user.email=agent@localhost commit -q -m agent";
    let renames_away = "git mv .github/workflows/ci.yml ci.yml";
    for patch in [commits_itself, renames_away] {
        let task = service.submit(&shell_task(&repo, patch, "true")).await;
        let task = service
            .wait_until_finished(task["id"].as_str().unwrap())
            .await;
        assert_eq!(task["error"]["code"], "PROTECTED_PATH", "{patch}: {task:#}");
        assert!(
            task["error"]["message"]
                .as_str()
                .unwrap()
                .contains(".github/workflows/ci.yml"),
            "{task:#}"
        );
    }
    assert_eq!(git(&repo, &["rev-parse", "main"]), main_before);
}

#[tokio::test]
async fn a_repository_can_protect_more_paths() {
    let root = tempfile::tempdir().unwrap();
    let guarded = git_repo(&root.path().join("guarded"));
    let open = git_repo(&root.path().join("open"));
    let config = format!(
        "[governance.repos.{:?}]\nprotected_paths = [\"migrations/**\"]\n",
        guarded.display().to_string()
    );
    let service = Service::start_in_process(root.path(), with_config(&config)).await;
    let patch = "mkdir -p migrations && echo 'create table t();' > migrations/001.sql";

    let task = service.submit(&shell_task(&guarded, patch, "true")).await;
    let task = service
        .wait_until_finished(task["id"].as_str().unwrap())
        .await;
    assert_eq!(task["error"]["code"], "PROTECTED_PATH", "{task:#}");
    assert!(task["error"]["message"]
        .as_str()
        .unwrap()
        .contains("migrations/001.sql"));

    // The same change elsewhere is ordinary work.
    let task = service.submit(&shell_task(&open, patch, "true")).await;
    let task = service
        .wait_until_finished(task["id"].as_str().unwrap())
        .await;
    assert_eq!(task["status"], "done", "{task:#}");
}

#[tokio::test]
async fn secrets_reach_only_allowed_personas_and_never_the_records() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let secret = "hunter2-7f3a9c-very-secret";
    // Patch may receive the secret; Circuit (the built-in definition) may not.
    std::fs::create_dir_all(root.path().join("actors")).unwrap();
    std::fs::write(
        root.path().join("actors/patch.md"),
        "---\nname: patch\nrole: implementer\nenv: [GLITCHLAB_TEST_SECRET]\ntools:\n  allow: [sh, echo, test]\n---\nYou are Patch.\n",
    )
    .unwrap();
    let options = Options {
        config: Some("[governance]\nsecrets = [\"GLITCHLAB_TEST_SECRET\"]\n".into()),
        env: vec![
            ("GLITCHLAB_TEST_SECRET".into(), secret.into()),
            ("GLITCHLAB_NOT_FOR_ENGINES".into(), "leaked".into()),
        ],
        ..Default::default()
    };
    let service = Service::start_with(root.path(), options).await;
    let patch = "echo \"the key is $GLITCHLAB_TEST_SECRET\"; echo \"$GLITCHLAB_TEST_SECRET\" >&2; echo ok > ok.txt";
    let verify = "test -z \"$GLITCHLAB_TEST_SECRET\" && test -z \"$GLITCHLAB_NOT_FOR_ENGINES\" && test -f ok.txt";
    let task = service.submit(&shell_task(&repo, patch, verify)).await;
    let id = task["id"].as_str().unwrap();
    let task = service.wait_until_finished(id).await;
    assert_eq!(task["status"], "done", "{task:#}");

    let (_, runs) = service.get(&format!("/v1/tasks/{id}/runs")).await;
    let (_, events) = service.get(&format!("/v1/tasks/{id}/events")).await;
    let records = format!("{runs}{events}");
    assert!(
        !records.contains(secret),
        "the secret leaked into the records"
    );
    let patch_run = runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["persona"] == "patch")
        .unwrap()
        .clone();
    assert_eq!(
        patch_run["stdout"]["text"],
        "the key is [REDACTED:GLITCHLAB_TEST_SECRET]\n"
    );
    assert_eq!(
        patch_run["stderr"]["text"],
        "[REDACTED:GLITCHLAB_TEST_SECRET]\n"
    );
    assert_eq!(json!(patch_run["exit_code"]), json!(0));
}

/// The forms a command may print a secret in: plain, base64 (standard and URL-safe, padded and
/// not), hex (lower and upper case), URL-encoded — as the tools print them.
fn encodings_of(secret: &str) -> Vec<String> {
    let run = |script: &str| {
        let output = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .env("S", secret)
            .output()
            .unwrap();
        assert!(output.status.success(), "{script}");
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    };
    let base64 = run("printf %s \"$S\" | base64 -w0");
    let url_safe = base64.replace('+', "-").replace('/', "_");
    let hex = run("printf %s \"$S\" | od -An -v -tx1 | tr -d ' \\n'");
    assert_eq!(hex.len(), secret.len() * 2, "{hex}");
    let mut forms = vec![
        secret.to_owned(),
        base64.trim_end_matches('=').to_owned(),
        base64.clone(),
        url_safe.trim_end_matches('=').to_owned(),
        url_safe,
        hex.to_ascii_uppercase(),
        hex,
    ];
    forms.dedup();
    forms
}

/// Every file under `dir`, as bytes.
fn all_bytes(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() {
                files.push((
                    entry.path(),
                    std::fs::read(entry.path()).unwrap_or_default(),
                ));
            }
        }
    }
    files
}

/// Issue #11, item 11: a secret reaches no record, whoever writes it — an engine printing it plain,
/// base64 and hex, a client putting it in the verify command (and the builtin planner copying
/// that into its plan), the task's text — not the runs, the events, the task, and not one byte of
/// the data dir.
#[tokio::test]
async fn a_secret_in_any_encoding_is_nowhere_in_the_records_or_the_data_dir() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    // `>>>` and `???` make base64's `+` and `/`, so both alphabets are put to the test.
    let secret = "hunter2>>>7f3a9c???very-secret";
    let forms = encodings_of(secret);
    std::fs::create_dir_all(root.path().join("actors")).unwrap();
    std::fs::write(
        root.path().join("actors/patch.md"),
        "---\nname: patch\nrole: implementer\nenv: [GLITCHLAB_TEST_SECRET]\ntools:\n  allow: [sh, echo, test, base64, od, tr, cp]\n---\nYou are Patch.\n",
    )
    .unwrap();
    let options = Options {
        config: Some("[governance]\nsecrets = [\"GLITCHLAB_TEST_SECRET\"]\n".into()),
        env: vec![("GLITCHLAB_TEST_SECRET".into(), secret.into())],
        ..Default::default()
    };
    let service = Service::start_with(root.path(), options).await;
    let patch = "printf 'plain %s\\n' \"$GLITCHLAB_TEST_SECRET\"; \
        printf %s \"$GLITCHLAB_TEST_SECRET\" | base64; \
        printf %s \"$GLITCHLAB_TEST_SECRET\" | base64 | tr '+/' '-_' >&2; \
        printf %s \"$GLITCHLAB_TEST_SECRET\" | od -An -v -tx1 | tr -d ' \\n'; echo; \
        echo ok > ok.txt";
    // The prompt folder goes once the task lands: the engine keeps a copy of what it was given.
    let prompt_copy = root.path().join("prompt-seen.md");
    let patch = format!(
        "{patch}; cp \"$GLITCHLAB_PROMPT_FILE\" {}",
        prompt_copy.display()
    );
    let patch = patch.as_str();
    // The client writes the value itself into the verify command (and an encoding of it into the
    // description): stored redacted, and the verify runs as stored.
    let verify = format!("test -f ok.txt || echo '{secret}'");
    let mut body = shell_task(&repo, patch, &verify);
    body["description"] = json!(format!("The key is {}. Keep it safe.", forms[1]));
    let task = service.submit(&body).await;
    let id = task["id"].as_str().unwrap().to_owned();
    assert_eq!(
        task["verify"],
        json!("test -f ok.txt || echo '[REDACTED:GLITCHLAB_TEST_SECRET]'"),
        "{task:#}"
    );
    let task = service.wait_until_finished(&id).await;
    assert_eq!(task["status"], "done", "{task:#}");

    let (_, runs) = service.get(&format!("/v1/tasks/{id}/runs")).await;
    let (_, events) = service.get(&format!("/v1/tasks/{id}/events")).await;
    let (_, service_events) = service.get("/v1/events").await;
    let (_, stored) = service.get(&format!("/v1/tasks/{id}")).await;
    let records = format!("{runs}\n{events}\n{service_events}\n{stored}");
    for form in &forms {
        assert!(!records.contains(form.as_str()), "{form} leaked: {records}");
    }
    let patch_run = runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["persona"] == "patch")
        .unwrap()
        .clone();
    assert_eq!(
        patch_run["stdout"]["text"],
        "plain [REDACTED:GLITCHLAB_TEST_SECRET]\n[REDACTED:GLITCHLAB_TEST_SECRET]\n\
         [REDACTED:GLITCHLAB_TEST_SECRET]\n",
        "{patch_run:#}"
    );
    assert_eq!(
        patch_run["stderr"]["text"], "[REDACTED:GLITCHLAB_TEST_SECRET]\n",
        "{patch_run:#}"
    );
    // The builtin planner copied the verify command into its last step: redacted there too.
    let steps = stored["plan"]["steps"].as_array().unwrap();
    assert_eq!(
        steps.last().unwrap()["title"],
        "make `test -f ok.txt || echo '[REDACTED:GLITCHLAB_TEST_SECRET]'` pass",
        "{stored:#}"
    );
    assert!(stored["description"]
        .as_str()
        .unwrap()
        .contains("[REDACTED:GLITCHLAB_TEST_SECRET]"));

    let mut files = all_bytes(&root.path().join("data"));
    let prompt = std::fs::read(&prompt_copy).unwrap();
    assert!(String::from_utf8_lossy(&prompt).contains("[REDACTED:GLITCHLAB_TEST_SECRET]"));
    files.push((prompt_copy, prompt));
    // The service's log too: a log line passes the same redactor.
    let log = root.path().join("service.log");
    files.push((log.clone(), std::fs::read(&log).unwrap()));
    for (path, bytes) in &files {
        for form in &forms {
            assert!(
                !bytes
                    .windows(form.len())
                    .any(|window| window == form.as_bytes()),
                "{form} is in {}",
                path.display()
            );
        }
    }
}

/// Issue 21, item 5: an engine that writes a secret value into the change (plain in one file,
/// base64 in another) fails the task `SECRET_IN_CHANGE` naming the files and not the value;
/// nothing is committed and the staged edits are gone from the data dir. A branch that gets such
/// a value from elsewhere is served by the diff route redacted.
#[tokio::test]
async fn a_secret_written_into_the_change_is_never_committed_or_served() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let secret = "hunter2>>>7f3a9c???very-secret";
    let forms = encodings_of(secret);
    std::fs::create_dir_all(root.path().join("actors")).unwrap();
    std::fs::write(
        root.path().join("actors/patch.md"),
        "---\nname: patch\nrole: implementer\nenv: [GLITCHLAB_TEST_SECRET]\ntools:\n  allow: [sh, echo, printf, base64]\n---\nYou are Patch.\n",
    )
    .unwrap();
    let options = Options {
        config: Some("[governance]\nsecrets = [\"GLITCHLAB_TEST_SECRET\"]\n".into()),
        env: vec![("GLITCHLAB_TEST_SECRET".into(), secret.into())],
        ..Default::default()
    };
    let service = Service::start_with(root.path(), options).await;
    let patch = "printf 'key=%s\\n' \"$GLITCHLAB_TEST_SECRET\" > config.env; \
        printf %s \"$GLITCHLAB_TEST_SECRET\" | base64 > encoded.txt; echo ok > ok.txt";
    let mut body = shell_task(&repo, patch, "true");
    body["max_attempts"] = json!(1);
    let task = service.submit(&body).await;
    let id = task["id"].as_str().unwrap().to_owned();
    let task = service.wait_until_finished(&id).await;

    assert_eq!(task["status"], "failed", "{task:#}");
    assert_eq!(task["error"]["code"], "SECRET_IN_CHANGE", "{task:#}");
    let message = task["error"]["message"].as_str().unwrap();
    assert!(message.contains("config.env"), "{message}");
    assert!(message.contains("encoded.txt"), "{message}");
    assert!(!message.contains("ok.txt"), "{message}");
    // Nothing reached a commit: the branch is gone (a branch identical to its base is deleted
    // when the task ends) or, had it survived, where the base is; and no commit of any ref holds
    // any form of the value.
    let branch = format!("refs/heads/glitchlab/{id}");
    let refs = git(&repo, &["for-each-ref", "--format=%(objectname)", &branch]);
    assert!(
        refs.is_empty() || refs == git(&repo, &["rev-parse", "main"]),
        "{branch} at {refs}"
    );
    let history = git(&repo, &["log", "--all", "-p", "--format=%H %s"]);
    // The staged edits were discarded: no file of the data dir holds the value.
    let files = all_bytes(&root.path().join("data"));
    for form in &forms {
        assert!(!message.contains(form.as_str()), "{form} in {message}");
        assert!(
            !history.contains(form.as_str()),
            "{form} committed: {history}"
        );
        for (path, bytes) in &files {
            let found = bytes.windows(form.len()).any(|w| w == form.as_bytes());
            assert!(!found, "{form} is in {}", path.display());
        }
    }

    // A commit made outside the service (a human, an engine's own commit) puts the value on the
    // branch, plain and base64: the diff route serves it redacted.
    git(&repo, &["checkout", "-q", "-b", "planted"]);
    std::fs::write(
        repo.join("leak.txt"),
        format!("plain {secret}\nbase64 {}\n", forms[2]),
    )
    .unwrap();
    git(&repo, &["add", "leak.txt"]);
    git(&repo, &["commit", "-q", "-m", "planted"]);
    git(&repo, &["checkout", "-q", "main"]);
    git(&repo, &["update-ref", &branch, "planted"]);
    let response = service
        .request(reqwest::Method::GET, &format!("/v1/tasks/{id}/diff"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let text = response.text().await.unwrap();
    assert!(text.contains("leak.txt"), "{text}");
    assert!(
        text.contains("+plain [REDACTED:GLITCHLAB_TEST_SECRET]"),
        "{text}"
    );
    for form in &forms {
        assert!(!text.contains(form.as_str()), "{form} served: {text}");
    }
}

#[tokio::test]
async fn a_confined_engine_cannot_write_outside_its_worktree() {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let target = outside.path().join("escaped.txt");
    let patch = format!(
        "echo escaped > {}; echo scratch > \"$TMPDIR/scratch.txt\" && cat \"$TMPDIR/scratch.txt\"; echo hi > hi.txt",
        target.display()
    );
    let task = service
        .submit(&shell_task(&repo, &patch, "test -f hi.txt"))
        .await;
    let id = task["id"].as_str().unwrap();
    let task = service.wait_until_finished(id).await;
    assert_eq!(task["status"], "done", "{task:#}");
    assert!(!target.exists(), "the engine wrote outside its worktree");
    let (_, runs) = service.get(&format!("/v1/tasks/{id}/runs")).await;
    let patch_run = runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["persona"] == "patch")
        .unwrap()
        .clone();
    // Landlock refuses the write; under namespaces the directory is not even there.
    let stderr = patch_run["stderr"]["text"].as_str().unwrap();
    assert!(
        stderr.contains("ermission denied") || stderr.contains("nonexistent"),
        "{patch_run:#}"
    );
    assert_eq!(
        patch_run["stdout"]["text"], "scratch\n",
        "the private temp dir is writable"
    );
    assert!(repo.join("hi.txt").exists());
}

#[tokio::test]
async fn a_wall_clock_cap_stops_a_task_with_budget_exceeded() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let mut body = shell_task(&repo, "sleep 30", "true");
    body["budget"] = json!({"max_wall_secs": 2});
    let started = std::time::Instant::now();
    let task = service.submit(&body).await;
    let task = service
        .wait_until_finished(task["id"].as_str().unwrap())
        .await;
    assert_eq!(task["status"], "failed", "{task:#}");
    assert_eq!(task["error"]["code"], "BUDGET_EXCEEDED");
    assert!(task["error"]["message"]
        .as_str()
        .unwrap()
        .contains("max_wall_secs"));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "the engine outlived the cap"
    );
}

/// Every git the service runs starts from a cleared environment with its configuration pinned
/// (no system or global config), and runs no hook — not even the repository's own.
#[tokio::test]
async fn git_runs_with_a_cleared_environment() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    // A `git` first on the service's PATH records the environment of every git it runs.
    let seen = root.path().join("git-env.txt");
    let bin = root.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let real_git = String::from_utf8(
        std::process::Command::new("sh")
            .args(["-c", "command -v git"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let wrapper = bin.join("git");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nenv >> '{}'\nexec {} \"$@\"\n",
            seen.display(),
            real_git.trim()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    // A post-commit hook of the repository's own: the service's git never runs it.
    let hooked = root.path().join("hook-ran.txt");
    let hook = repo.join(".git/hooks/post-commit");
    std::fs::write(&hook, format!("#!/bin/sh\nenv > '{}'\n", hooked.display())).unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let secret = "do-not-leak-4d1c8e2b";
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let options = Options {
        config: None,
        env: vec![
            ("SERVICE_ONLY_SECRET".into(), secret.into()),
            ("PATH".into(), path),
        ],
        ..Default::default()
    };
    let service = Service::start_with(root.path(), options).await;
    let task = service
        .submit(&shell_task(&repo, "echo hi > hi.txt", "true"))
        .await;
    let task = service
        .wait_until_finished(task["id"].as_str().unwrap())
        .await;
    assert_eq!(task["status"], "done", "{task:#}");
    let env = std::fs::read_to_string(&seen).expect("the service ran git");
    assert!(env.contains("PATH="), "{env}");
    assert!(env.contains("GIT_CONFIG_NOSYSTEM=1"), "{env}");
    assert!(env.contains("GIT_CONFIG_GLOBAL=/dev/null"), "{env}");
    assert!(!env.contains(secret), "{env}");
    assert!(!env.contains("RUST_LOG"), "{env}");
    assert!(
        !hooked.exists(),
        "the service's git ran the repository's hook"
    );
}
