//! The engineering pipeline end to end: plan → implement → verify → deliver on real repos.

use std::time::Duration;

use serde_json::json;

use crate::helpers::{
    git, git_repo, process_group_alive, shell_task, wait_group_gone, Options, Service,
};

#[tokio::test]
async fn task_goes_through_all_stages_and_lands_on_main() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let service = Service::start_in_process(root.path(), Options::default()).await;

    let task = service
        .submit(&shell_task(
            &repo,
            "echo hello > hello.txt",
            "grep -q hello hello.txt",
        ))
        .await;
    assert_eq!(task["status"], "queued");
    let id = task["id"].as_str().unwrap();
    let task = service.wait_until_finished(id).await;

    assert_eq!(task["status"], "done", "{task:#}");
    assert_eq!(task["stage"], "deliver");
    assert_eq!(task["attempts"], 1);
    assert_eq!(task["branch"], format!("glitchlab/{id}"));
    assert_eq!(
        task["commit"].as_str().unwrap(),
        git(&repo, &["rev-parse", "main"])
    );
    assert_eq!(
        std::fs::read_to_string(repo.join("hello.txt")).unwrap(),
        "hello\n"
    );
    assert!(task["plan"]["steps"].as_array().unwrap().len() >= 2);

    // Ledger bookkeeping (the budget's settlement) may follow the task's end at any moment.
    let kinds: Vec<String> = service
        .event_kinds(id)
        .await
        .into_iter()
        .filter(|k| !k.starts_with("ledger."))
        .collect();
    let expected = [
        "task.submitted",
        "task.started",
        "stage.started",
        "engine.run",
        "stage.finished",
        "stage.started",
        "engine.run",
        "stage.finished",
        "stage.started",
        "engine.run",
        "stage.finished",
        "stage.started",
        // The merge queue's turn: the candidate's tree is the one Circuit passed (the base had
        // not moved), so it lands without a second verify run.
        "merge.candidate",
        "merge.landed",
        "stage.finished",
        "task.finished",
    ];
    assert_eq!(kinds, expected);
    let (_, events) = service.get(&format!("/v1/tasks/{id}/events")).await;
    let seqs: Vec<u64> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|pair| pair[0] < pair[1]), "{seqs:?}");

    let (_, runs) = service.get(&format!("/v1/tasks/{id}/runs")).await;
    let runs = runs["runs"].as_array().unwrap();
    let personas: Vec<&str> = runs
        .iter()
        .map(|r| r["persona"].as_str().unwrap())
        .collect();
    assert_eq!(personas, ["planner", "patch", "circuit"]);
    assert_eq!(runs[1]["engine"], "shell");
    assert_eq!(runs[1]["command"], "echo hello > hello.txt");
    assert_eq!(runs[2]["exit_code"], 0);
}

#[tokio::test]
async fn builtin_engines_deliver_a_plan_note_offline() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    // The repository opts in to the demo's notes with a `.glitchlab/` directory; without one, the
    // note stays out of it (`delivery.rs`).
    std::fs::create_dir_all(repo.join(".glitchlab")).unwrap();
    std::fs::write(repo.join(".glitchlab/README.md"), "glitchlab notes\n").unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "opt in to glitchlab notes"]);
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let task = service
        .submit(&json!({
            "title": "Document the plan",
            "description": "Describe the change in docs/plan.md. Keep it short.",
            "repo": repo.display().to_string(),
            "verify": "test -d .glitchlab/notes",
        }))
        .await;
    let id = task["id"].as_str().unwrap();
    let task = service.wait_until_finished(id).await;
    assert_eq!(task["status"], "done", "{task:#}");
    let note = std::fs::read_to_string(repo.join(format!(".glitchlab/notes/{id}.md"))).unwrap();
    assert!(note.contains("Document the plan"));
    assert!(note.contains("docs/plan.md"));
}

/// A repository whose committed `link` points at `<root>/outside` (made empty, returned).
fn commit_link_out(
    root: &std::path::Path,
    repo: &std::path::Path,
    link: &str,
) -> std::path::PathBuf {
    let outside = root.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let at = repo.join(link);
    std::fs::create_dir_all(at.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(&outside, &at).unwrap();
    git(repo, &["add", "-A"]);
    git(
        repo,
        &["commit", "-q", "-m", "a link out of the repository"],
    );
    outside
}

fn builtin_task(repo: &std::path::Path) -> serde_json::Value {
    json!({
        "title": "Document the plan",
        "description": "Describe the change in docs/plan.md. Keep it short.",
        "repo": repo.display().to_string(),
        "verify": "true",
    })
}

#[tokio::test]
async fn a_committed_glitchlab_link_is_not_opted_in_and_the_note_is_not_written_through_it() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let outside = commit_link_out(root.path(), &repo, ".glitchlab");
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let task = service.submit(&builtin_task(&repo)).await;
    let id = task["id"].as_str().unwrap();
    let task = service.wait_until_finished(id).await;

    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "the service wrote through the link"
    );
    assert_eq!(task["status"], "done", "{task:#}");
    let note = std::fs::read_to_string(root.path().join(format!("data/notes/{id}.md"))).unwrap();
    assert!(note.contains("Document the plan"), "{note}");
    let (_, runs) = service.get(&format!("/v1/tasks/{id}/runs")).await;
    assert!(
        runs.to_string()
            .contains("the repository's .glitchlab is a symbolic link"),
        "the implement run says why: {runs:#}"
    );
}

#[tokio::test]
async fn a_link_under_glitchlab_fails_the_attempt_edit_refused_and_writes_nothing_outside() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let outside = commit_link_out(root.path(), &repo, ".glitchlab/notes");
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let task = service.submit(&builtin_task(&repo)).await;
    let id = task["id"].as_str().unwrap();
    let task = service.wait_until_finished(id).await;

    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    assert_eq!(task["status"], "failed", "{task:#}");
    assert_eq!(task["error"]["code"], "EDIT_REFUSED");
    let message = task["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("passes through a symbolic link (`.glitchlab/notes`)"),
        "{message}"
    );
}

#[tokio::test]
async fn failed_verify_is_fixed_on_the_second_attempt_using_the_feedback_file() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let service = Service::start_in_process(root.path(), Options::default()).await;
    // Attempt 1 gets an empty feedback file and makes the wrong change; attempt 2 reads why
    // verify failed and fixes it. Both check that the prompt file carries the task.
    let patch = r#"grep -q "Add a greeting" "$GLITCHLAB_PROMPT_FILE" || exit 9
if [ "$GLITCHLAB_ATTEMPT" = 1 ]; then
  test ! -s "$GLITCHLAB_FEEDBACK_FILE" || exit 8
  echo wrong > wrong.txt
else
  grep -q "hello.txt is missing" "$GLITCHLAB_FEEDBACK_FILE" || exit 7
  cp "$GLITCHLAB_FEEDBACK_FILE" feedback-seen.txt
  echo hello > hello.txt
fi"#;
    let verify = r#"test -f hello.txt || { echo "hello.txt is missing (attempt $GLITCHLAB_ATTEMPT)"; exit 1; }"#;
    let task = service.submit(&shell_task(&repo, patch, verify)).await;
    let id = task["id"].as_str().unwrap();
    let task = service.wait_until_finished(id).await;

    assert_eq!(task["status"], "done", "{task:#}");
    assert_eq!(task["attempts"], 2);
    let seen = std::fs::read_to_string(repo.join("feedback-seen.txt")).unwrap();
    assert!(seen.contains("hello.txt is missing (attempt 1)"), "{seen}");
    let (_, runs) = service.get(&format!("/v1/tasks/{id}/runs")).await;
    let verify_exits: Vec<(u64, i64)> = runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["persona"] == "circuit")
        .map(|r| {
            (
                r["attempt"].as_u64().unwrap(),
                r["exit_code"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(verify_exits, [(1, 1), (2, 0)]);
    // One squashed commit: the failed first attempt never reaches the base.
    let log = git(&repo, &["log", "--format=%s", "main"]);
    assert_eq!(log, "Add a greeting\ninitial");
    let message = git(&repo, &["log", "-1", "--format=%B", "main"]);
    assert!(message.contains("Glitchlab-Attempts: 2"), "{message}");
}

#[tokio::test]
async fn exhausted_attempts_dead_letter_the_task_with_every_diagnostic_and_keep_the_branch() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let main_before = git(&repo, &["rev-parse", "main"]);
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let mut body = shell_task(
        &repo,
        "echo attempt $GLITCHLAB_ATTEMPT >> log.txt",
        "echo never good enough; exit 3",
    );
    body["max_attempts"] = json!(2);
    let task = service.submit(&body).await;
    let id = task["id"].as_str().unwrap();
    let task = service.wait_until_finished(id).await;

    assert_eq!(task["status"], "dead_letter");
    assert_eq!(task["attempts"], 2);
    assert_eq!(task["error"]["code"], "VERIFY_FAILED");
    let failures = task["failures"].as_array().unwrap();
    assert_eq!(
        failures.len(),
        2,
        "one diagnostic per attempt: {failures:#?}"
    );
    assert!(failures
        .iter()
        .all(|f| f["error"]["code"] == "VERIFY_FAILED"));
    assert!(service
        .event_kinds(id)
        .await
        .contains(&"task.escalated".to_owned()));
    assert!(task["error"]["message"]
        .as_str()
        .unwrap()
        .contains("never good enough"));
    assert_eq!(git(&repo, &["rev-parse", "main"]), main_before);
    let branch_log = git(&repo, &["log", "--format=%s", &format!("glitchlab/{id}")]);
    assert!(branch_log.contains("(attempt 2)"), "{branch_log}");
}

#[tokio::test]
async fn cancel_kills_the_running_engine_and_ends_the_task() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let pid_file = root.path().join("engine.pid");
    let patch = format!("echo $$ > {}; sleep 60", pid_file.display());
    let task = service.submit(&shell_task(&repo, &patch, "true")).await;
    let id = task["id"].as_str().unwrap();
    service
        .wait_for_task(id, Duration::from_secs(30), |_| {
            std::fs::read_to_string(&pid_file).is_ok_and(|text| text.ends_with('\n'))
        })
        .await;
    let pgid = crate::helpers::group_of_shell(&pid_file);
    assert!(process_group_alive(pgid));
    // While it runs, the run is visible as `running`.
    let (_, runs) = service.get(&format!("/v1/tasks/{id}/runs")).await;
    let running = runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["persona"] == "patch");
    assert_eq!(running.unwrap()["status"], "running", "{runs:#}");

    let (status, cancelled) = service
        .post(&format!("/v1/tasks/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled");
    assert!(
        wait_group_gone(pgid, Duration::from_secs(2)).await,
        "engine process group still alive 2 s after cancel"
    );

    let (status, again) = service
        .post(&format!("/v1/tasks/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 409);
    assert_eq!(again["error"]["code"], "TASK_FINISHED");
    // The killed engine run is on record, `interrupted` (written as the job is dropped, so it
    // may land just after the task's end, like the ledger's settlement).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let patch_run = loop {
        let (_, runs) = service.get(&format!("/v1/tasks/{id}/runs")).await;
        let run = runs["runs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["persona"] == "patch")
            .cloned();
        match run {
            Some(run) if run["status"] == "interrupted" => break run,
            other => assert!(
                std::time::Instant::now() < deadline,
                "no interrupted patch run: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(patch_run["exit_code"].is_null());
    assert!(patch_run["duration_ms"].as_u64().unwrap() > 0);
    let kinds: Vec<String> = service
        .event_kinds(id)
        .await
        .into_iter()
        .filter(|k| !k.starts_with("ledger.") && !k.starts_with("engine."))
        .collect();
    assert_eq!(kinds.last().map(String::as_str), Some("task.finished"));
}

/// A patch engine that also moves `main` in the user's repository while the task runs.
/// A patch command that, on its first attempt only, commits `base_content` on the base (as a
/// teammate would, after the task's branch left it), then makes the task's edit.
pub(crate) fn moves_base_then(
    repo: &std::path::Path,
    base_content: &str,
    task_edit: &str,
) -> String {
    format!(
        "if [ \"$GLITCHLAB_ATTEMPT\" = 1 ]; then printf '{base_content}\\n' > {r}/{file} && \
         git -C {r} -c user.name=t -c user.email=t@t add -A && \
         git -C {r} -c user.name=t -c user.email=t@t commit -qm base-moved; fi && {task_edit}",
        r = repo.display(),
        file = if base_content == "other" {
            "OTHER.md"
        } else {
            "README.md"
        },
    )
}

/// The base moved while the task worked, without conflict: the candidate (the new base plus the
/// change) is verified as one tree — a second verify run, on the candidate — and lands as one
/// commit on top of the moved base.
#[tokio::test]
async fn a_moved_base_gets_the_change_on_top_verified_again() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let patch = moves_base_then(&repo, "other", "echo hello > hello.txt");
    let task = service
        .submit(&shell_task(&repo, &patch, "test -f hello.txt"))
        .await;
    let id = task["id"].as_str().unwrap();
    let task = service.wait_until_finished(id).await;

    assert_eq!(task["status"], "done", "{task:#}");
    assert_eq!(
        task["commit"].as_str().unwrap(),
        git(&repo, &["rev-parse", "main"])
    );
    assert!(repo.join("hello.txt").exists() && repo.join("OTHER.md").exists());
    let parents = git(&repo, &["rev-list", "--parents", "-n", "1", "main"]);
    assert_eq!(
        parents.split(' ').count(),
        2,
        "one squashed commit: {parents}"
    );
    assert_eq!(
        git(&repo, &["log", "-1", "--format=%s", "main~1"]),
        "base-moved"
    );
    let (_, runs) = service.get(&format!("/v1/tasks/{id}/runs")).await;
    let verify_stages: Vec<&str> = runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["persona"] == "circuit")
        .map(|r| r["stage"].as_str().unwrap())
        .collect();
    assert_eq!(verify_stages, ["verify", "deliver"]);
}

/// The base changed the line the task changes: the change goes back to Patch with the conflict
/// as feedback, is made again on the new base, and lands; the user's checkout stays clean.
#[tokio::test]
async fn a_conflicting_base_sends_the_change_back_to_work_on_the_new_base() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let patch = moves_base_then(
        &repo,
        "changed on main",
        "echo 'changed by the task' > README.md",
    );
    let task = service.submit(&shell_task(&repo, &patch, "true")).await;
    let id = task["id"].as_str().unwrap();
    let task = service.wait_until_finished(id).await;

    assert_eq!(task["status"], "done", "{task:#}");
    assert_eq!(task["attempts"], 2, "{task:#}");
    assert_eq!(task["failures"][0]["error"]["code"], "MERGE_CONFLICT");
    let feedback = task["failures"][0]["error"]["message"].as_str().unwrap();
    assert!(feedback.contains("README.md"), "{feedback}");
    assert_eq!(
        std::fs::read_to_string(repo.join("README.md")).unwrap(),
        "changed by the task\n"
    );
    assert_eq!(
        git(&repo, &["log", "-1", "--format=%s", "main~1"]),
        "base-moved"
    );
    assert_eq!(
        git(&repo, &["status", "--porcelain"]),
        "",
        "the user's checkout was left dirty"
    );
}

/// Out of attempts, a change that still conflicts fails `MERGE_CONFLICT`; the base is untouched
/// and the branch is kept for a human.
#[tokio::test]
async fn a_conflict_with_no_attempt_left_fails_merge_conflict_and_keeps_the_branch() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let patch = moves_base_then(
        &repo,
        "changed on main",
        "echo 'changed by the task' > README.md",
    );
    let mut body = shell_task(&repo, &patch, "true");
    body["max_attempts"] = json!(1);
    let task = service.submit(&body).await;
    let id = task["id"].as_str().unwrap();
    let task = service.wait_until_finished(id).await;

    assert_eq!(task["status"], "dead_letter", "{task:#}");
    assert_eq!(task["error"]["code"], "MERGE_CONFLICT");
    assert_eq!(
        git(&repo, &["log", "-1", "--format=%s", "main"]),
        "base-moved"
    );
    assert_eq!(
        std::fs::read_to_string(repo.join("README.md")).unwrap(),
        "changed on main\n"
    );
    let branch_file = git(&repo, &["show", &format!("glitchlab/{id}:README.md")]);
    assert_eq!(branch_file, "changed by the task");
    assert_eq!(
        git(&repo, &["status", "--porcelain"]),
        "",
        "the user's checkout was left dirty"
    );
}

#[tokio::test]
async fn engine_output_is_bounded_and_the_cut_is_marked() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let options = crate::helpers::Options {
        config: Some("[engines]\noutput_bytes_max = 4096\n".into()),
        env: Vec::new(),
        ..Default::default()
    };
    let service = Service::start_in_process(root.path(), options).await;
    let patch =
        "head -c 300000 /dev/zero | tr '\\0' 'a'; echo; echo THE-END; echo hello > hello.txt";
    let task = service
        .submit(&shell_task(&repo, patch, "test -f hello.txt"))
        .await;
    let id = task["id"].as_str().unwrap();
    assert_eq!(service.wait_until_finished(id).await["status"], "done");

    let (_, runs) = service.get(&format!("/v1/tasks/{id}/runs")).await;
    let patch_run = runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["persona"] == "patch")
        .unwrap()
        .clone();
    let stdout = &patch_run["stdout"];
    assert!(
        stdout["truncated_bytes"].as_u64().unwrap() > 290_000,
        "{stdout}"
    );
    let text = stdout["text"].as_str().unwrap();
    assert!(text.len() < 4096 + 100);
    assert!(text.contains("glitchlab truncated") && text.trim_end().ends_with("THE-END"));
}

#[tokio::test]
async fn branch_delivery_leaves_the_work_for_review_and_the_base_untouched() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let main_before = git(&repo, &["rev-parse", "main"]);
    let mut body = shell_task(&repo, "echo hello > hello.txt", "test -f hello.txt");
    body["delivery"] = json!("branch");
    let task = service.submit(&body).await;
    assert_eq!(task["delivery"], "branch");
    let id = task["id"].as_str().unwrap();
    let task = service.wait_until_finished(id).await;

    assert_eq!(task["status"], "done", "{task:#}");
    let branch = format!("glitchlab/{id}");
    assert_eq!(
        task["commit"].as_str().unwrap(),
        git(&repo, &["rev-parse", &branch])
    );
    assert_eq!(
        git(&repo, &["rev-parse", "main"]),
        main_before,
        "the base moved"
    );
    assert!(!repo.join("hello.txt").exists(), "the checkout changed");
    assert_eq!(
        git(&repo, &["show", &format!("{branch}:hello.txt")]),
        "hello"
    );
    assert!(
        !root.path().join("data/worktrees").join(id).exists(),
        "the worktree was kept"
    );
    let (_, events) = service.get(&format!("/v1/tasks/{id}/events")).await;
    let delivered = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "stage.finished" && e["data"]["stage"] == "deliver")
        .unwrap_or_else(|| panic!("no deliver stage: {events:#}"));
    assert_eq!(
        delivered["data"]["result"]["delivery"], "branch",
        "{delivered:#}"
    );
    assert_eq!(delivered["data"]["result"]["branch"], branch.as_str());

    // A deploy ships what landed on the base: it cannot follow a branch left for review.
    body["deploy"] = json!("web");
    let (status, refused) = service.post("/v1/tasks", &body).await;
    assert_eq!(
        (status, &refused["error"]["code"]),
        (422, &json!("INVALID_FIELD")),
        "{refused}"
    );
}

/// How long clean-up after a task's end may take (a background job bounded by git's timeout).
const CLEANUP_WAIT: Duration = Duration::from_secs(10);

/// Polls `gone` until it holds or [`CLEANUP_WAIT`] passes; answers whether it held.
async fn gone_soon(gone: impl Fn() -> bool) -> bool {
    let deadline = std::time::Instant::now() + CLEANUP_WAIT;
    while std::time::Instant::now() < deadline {
        if gone() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gone()
}

/// A task that ends without landing loses its worktree and prompt folder right away (not at
/// the next hourly sweep); its branch, with its work on it, stays for a human.
#[tokio::test]
async fn a_failed_tasks_worktree_and_prompt_folder_are_gone_when_it_ends() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let mut body = shell_task(&repo, "echo hello > hello.txt", "false");
    body["max_attempts"] = json!(1);
    let id = service.submit(&body).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let worktree = root.path().join("data/worktrees").join(&id);
    let prompts = root.path().join("data/prompts").join(&id);
    service
        .wait_for_task(&id, Duration::from_secs(60), |t| t["stage"] == "verify")
        .await;
    assert!(worktree.exists(), "no worktree while the task ran");
    let ended = service.wait_until_finished(&id).await;
    assert_eq!(ended["status"], "dead_letter", "{ended:#}");
    assert!(
        gone_soon(|| !worktree.exists() && !prompts.exists()).await,
        "the worktree or prompt folder of an ended task is still there"
    );
    let branches = git(&repo, &["branch", "--list", &format!("glitchlab/{id}")]);
    assert!(
        !branches.is_empty(),
        "the branch with work on it was deleted"
    );
}

/// A task cancelled while its engine runs, before anything was committed: its branch is the base
/// itself, so it goes at once — with the worktree (and its registration) and the prompt folder —
/// not 14 days later.
#[tokio::test]
async fn a_cancelled_tasks_branch_identical_to_the_base_is_gone_when_it_ends() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let marker = root.path().join("engine-started");
    let patch = format!("touch {} && sleep 60", marker.display());
    let id = service.submit(&shell_task(&repo, &patch, "true")).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        gone_soon(|| marker.exists()).await,
        "the engine never started"
    );
    let branch = format!("glitchlab/{id}");
    assert!(!git(&repo, &["branch", "--list", &branch]).is_empty());
    let (status, cancelled) = service
        .post(&format!("/v1/tasks/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 200, "{cancelled}");
    let worktree = root.path().join("data/worktrees").join(&id);
    let prompts = root.path().join("data/prompts").join(&id);
    let admin = repo.join(".git/worktrees").join(&id);
    assert!(
        gone_soon(|| {
            git(&repo, &["branch", "--list", &branch]).is_empty()
                && !worktree.exists()
                && !prompts.exists()
                && !admin.exists()
        })
        .await,
        "the cancelled task's branch, worktree or prompt folder is still there"
    );
}

/// A `NO_CHANGES` task's branch (identical to the base) is deleted when the task ends.
#[tokio::test]
async fn a_no_changes_tasks_branch_is_gone_when_it_ends() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let mut body = shell_task(&repo, "true", "true");
    body["max_attempts"] = json!(1);
    let id = service.submit(&body).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let ended = service.wait_until_finished(&id).await;
    assert_eq!(ended["status"], "failed", "{ended:#}");
    assert_eq!(ended["error"]["code"], "NO_CHANGES", "{ended:#}");
    let branch = format!("glitchlab/{id}");
    assert!(
        gone_soon(|| git(&repo, &["branch", "--list", &branch]).is_empty()).await,
        "the NO_CHANGES branch is still there"
    );
    assert!(!root.path().join("data/worktrees").join(&id).exists());
}
