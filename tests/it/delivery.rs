//! What delivery leaves behind: no commit nobody asked for (a no-op attempt fails `NO_CHANGES`;
//! the builtin demo engine commits its note only into a repository that opted in), and the
//! clean-up after a task ends (a landed task's branch, worktree and prompt folder go; a failed
//! task's branch stays until `git.keep_failed_branches_days` passes).

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::{git, git_repo, shell_task, with_config, Options, Service};

fn branch_exists(repo: &Path, branch: &str) -> bool {
    !git(repo, &["branch", "--list", branch]).is_empty()
}

/// Waits (bounded) until `done` holds; the clean-up runs in the background after the task ends.
async fn eventually(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_patch_engine_that_changes_nothing_fails_no_changes_and_the_base_is_untouched() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let main_before = git(&repo, &["rev-parse", "main"]);
    let mut body = shell_task(&repo, "true", "true");
    body["max_attempts"] = json!(2);
    let task = service.submit(&body).await;
    let id = task["id"].as_str().unwrap();
    let task = service.wait_until_finished(id).await;

    assert_eq!(task["status"], "failed", "{task:#}");
    assert_eq!(task["error"]["code"], "NO_CHANGES");
    assert_eq!(task["attempts"], 2, "a no-op goes through the attempt loop");
    assert!(
        task["feedback"].as_str().unwrap().starts_with("no changes"),
        "{task:#}"
    );
    let failures = task["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 2, "{failures:#?}");
    assert!(failures.iter().all(|f| f["error"]["code"] == "NO_CHANGES"));
    assert_eq!(git(&repo, &["rev-parse", "main"]), main_before);
    assert_eq!(git(&repo, &["rev-list", "--count", "main"]), "1");
    let kinds = service.event_kinds(id).await;
    assert!(!kinds.contains(&"task.escalated".to_owned()), "{kinds:?}");
}

#[tokio::test]
async fn the_builtin_engine_leaves_the_base_without_a_note_commit() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let main_before = git(&repo, &["rev-parse", "main"]);
    let task = service
        .submit(&json!({
            "title": "Document the plan",
            "description": "Describe the change in docs/plan.md. Keep it short.",
            "repo": repo.display().to_string(),
            "verify": "test ! -e .glitchlab",
        }))
        .await;
    let id = task["id"].as_str().unwrap();
    let task = service.wait_until_finished(id).await;

    assert_eq!(task["status"], "done", "{task:#}");
    assert_eq!(
        git(&repo, &["rev-parse", "main"]),
        main_before,
        "the base moved"
    );
    assert_eq!(git(&repo, &["log", "--format=%s", "main"]), "initial");
    assert!(!repo.join(".glitchlab").exists());
    let note = std::fs::read_to_string(root.path().join(format!("data/notes/{id}.md"))).unwrap();
    assert!(note.contains("Document the plan"), "{note}");
}

#[tokio::test]
async fn a_landed_task_leaves_no_branch_worktree_or_prompt_folder() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let task = service
        .submit(&shell_task(
            &repo,
            "echo hello > hello.txt",
            "test -f hello.txt",
        ))
        .await;
    let id = task["id"].as_str().unwrap().to_owned();
    let task = service.wait_until_finished(&id).await;
    assert_eq!(task["status"], "done", "{task:#}");
    assert_eq!(
        task["commit"].as_str().unwrap(),
        git(&repo, &["rev-parse", "main"])
    );

    let branch = format!("glitchlab/{id}");
    let worktree = root.path().join("data/worktrees").join(&id);
    let prompts = root.path().join("data/prompts").join(&id);
    eventually(
        "the landed task's branch, worktree and prompt folder go",
        || !branch_exists(&repo, &branch) && !worktree.exists() && !prompts.exists(),
    )
    .await;
    assert!(
        git(&repo, &["worktree", "list", "--porcelain"])
            .lines()
            .filter(|l| l.starts_with("worktree "))
            .count()
            == 1,
        "a worktree registration is left"
    );
    assert_eq!(git(&repo, &["show", "main:hello.txt"]), "hello");
}

#[tokio::test]
async fn a_failed_task_keeps_its_branch_until_the_retention_passes() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let mut service = Service::start(root.path()).await;
    let mut body = shell_task(&repo, "echo hello > hello.txt", "false");
    body["max_attempts"] = json!(1);
    let task = service.submit(&body).await;
    let id = task["id"].as_str().unwrap().to_owned();
    let task = service.wait_until_finished(&id).await;
    assert_eq!(task["error"]["code"], "VERIFY_FAILED", "{task:#}");
    let branch = format!("glitchlab/{id}");
    assert!(branch_exists(&repo, &branch));
    assert_eq!(
        git(&repo, &["show", &format!("{branch}:hello.txt")]),
        "hello"
    );

    // A restart within the retention: the sweep removes the worktree and the prompt folder, and
    // keeps the branch (the task can be retried).
    service.terminate(Duration::from_secs(20));
    let mut service = Service::start(root.path()).await;
    let worktree = root.path().join("data/worktrees").join(&id);
    let prompts = root.path().join("data/prompts").join(&id);
    eventually(
        "the sweep removes the worktree and the prompt folder",
        || !worktree.exists() && !prompts.exists(),
    )
    .await;
    assert!(
        branch_exists(&repo, &branch),
        "the failed task's branch went"
    );

    // Past the retention, the sweep at start deletes it.
    service.terminate(Duration::from_secs(20));
    let _service = Service::start_with(
        root.path(),
        with_config("[git]\nkeep_failed_branches_days = 0\n"),
    )
    .await;
    eventually("the sweep deletes the branch past its retention", || {
        !branch_exists(&repo, &branch)
    })
    .await;
}

/// The sweep also runs while the service runs (`git.sweep_interval_secs`): a failed task's
/// worktree and prompt folder go, and past the retention its branch, without a restart.
#[tokio::test]
async fn the_periodic_sweep_cleans_up_without_a_restart() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let config = "[git]\nkeep_failed_branches_days = 0\nsweep_interval_secs = 1\n";
    let service = Service::start_in_process(root.path(), with_config(config)).await;
    let mut body = shell_task(&repo, "echo hello > hello.txt", "false");
    body["max_attempts"] = json!(1);
    let task = service.submit(&body).await;
    let id = task["id"].as_str().unwrap().to_owned();
    let task = service.wait_until_finished(&id).await;
    assert_eq!(task["error"]["code"], "VERIFY_FAILED", "{task:#}");
    let branch = format!("glitchlab/{id}");
    let worktree = root.path().join("data/worktrees").join(&id);
    let prompts = root.path().join("data/prompts").join(&id);
    eventually("a periodic sweep cleans up after the failed task", || {
        !branch_exists(&repo, &branch) && !worktree.exists() && !prompts.exists()
    })
    .await;
}
