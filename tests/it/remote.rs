//! Repositories named by URL: the service clones the remote, works in worktrees of its clone,
//! pushes task branches there, and lands on the remote's base by a compare-and-swap push. The
//! remote is a real bare repository reached over `file://`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{git, git_repo, Options, Service};

/// A bare "remote" at `<root>/remote.git` with `main` holding one commit, and its `file://` URL.
pub(crate) fn remote(root: &Path) -> (PathBuf, String) {
    let seed = git_repo(&root.join("seed"));
    let bare = root.join("remote.git");
    git(
        root,
        &[
            "clone",
            "-q",
            "--bare",
            seed.to_str().unwrap(),
            bare.to_str().unwrap(),
        ],
    );
    let url = format!("file://{}", bare.display());
    (bare, url)
}

pub(crate) fn remote_git(bare: &Path, args: &[&str]) -> String {
    let mut all = vec!["--git-dir", bare.to_str().unwrap()];
    all.extend_from_slice(args);
    git(bare.parent().unwrap(), &all)
}

fn task(url: &str, title: &str, patch: &str, verify: &str) -> Value {
    json!({
        "title": title,
        "description": format!("{title}."),
        "repo": url,
        "verify": verify,
        "engines": {"patch": {"kind": "shell", "command": patch}},
    })
}

/// A task on a `file://` remote lands on the remote's `main` as one commit; its branch is
/// pushed while it works and deleted from the remote once it landed.
#[tokio::test]
async fn a_task_on_a_remote_lands_on_the_remotes_base() {
    let root = tempfile::tempdir().unwrap();
    let (bare, url) = remote(root.path());
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let body = task(&url, "Remote change", "echo ok > f.txt", "test -f f.txt");
    let id = service.submit(&body).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let done = service.wait_until_finished(&id).await;
    assert_eq!(done["status"], "done", "{done:#}");
    assert_eq!(done["repo"], url.as_str(), "the task keeps the URL");
    assert_eq!(remote_git(&bare, &["show", "main:f.txt"]), "ok");
    assert_eq!(
        done["commit"].as_str().unwrap(),
        remote_git(&bare, &["rev-parse", "main"])
    );
    let message = remote_git(&bare, &["log", "-1", "--format=%B", "main"]);
    assert!(
        message.contains(&format!("Glitchlab-Task: {id}")),
        "{message}"
    );
    let branch = format!("refs/heads/glitchlab/{id}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !remote_git(&bare, &["for-each-ref", &branch]).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the remote branch stayed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Once a `file://` task has landed, its idle merge queue removes its scratch worktree from the
/// service's clone of the remote: the repository's URL is never used as a directory (the log
/// said "could not start `git` in file:///…" and the scratch worktree stayed).
#[tokio::test]
async fn an_idle_queue_on_a_remote_removes_its_scratch_worktree() {
    let root = tempfile::tempdir().unwrap();
    let (_bare, url) = remote(root.path());
    let service = Service::start_in_process(root.path(), Options::default()).await;
    // The queue builds every candidate in its scratch worktree (`<data>/merge-queue/<digest>`).
    let body = task(&url, "Scratch goes", "echo ok > f.txt", "test -f f.txt");
    let id = service.submit(&body).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let done = service.wait_until_finished(&id).await;
    assert_eq!(done["status"], "done", "{done:#}");
    let queues = root.path().join("data").join("merge-queue");
    let scratch_dirs = || -> Vec<PathBuf> {
        std::fs::read_dir(&queues)
            .map(|dir| {
                dir.filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !scratch_dirs().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the scratch worktree stayed: {:?}\n{}",
            scratch_dirs(),
            service.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = service.log();
    assert!(
        !log.contains("could not remove the merge queue's scratch worktree"),
        "{log}"
    );
}

/// Someone pushes to the remote's `main` while the candidate is verified: the landing's
/// compare-and-swap push is refused, the candidate is built again on the new remote base and
/// lands on top of the outside commit, which is kept.
#[tokio::test]
async fn a_push_to_the_remote_during_the_candidates_verify_is_not_overwritten() {
    let root = tempfile::tempdir().unwrap();
    let (bare, url) = remote(root.path());
    let outside = root.path().join("outside");
    git(
        root.path(),
        &["clone", "-q", &url, outside.to_str().unwrap()],
    );
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let o = outside.display();
    let push = |file: &str| {
        format!(
            "echo {file} > {o}/{file}.txt && git -C {o} add -A && \
             git -C {o} -c user.name=t -c user.email=t@t commit -qm {file} && \
             git -C {o} push -q origin HEAD:main"
        )
    };
    // The engine's push moves the base before the candidate (so the candidate is verified); the
    // candidate's first verify pushes again, as a teammate would.
    let patch = format!("{} && echo ok > f.txt", push("teammate"));
    let marker = root.path().join("pushed");
    let verify = format!(
        "case \"$PWD\" in */merge-queue/*) if [ ! -e {m} ]; then touch {m}; {p}; fi;; esac; test -f f.txt",
        m = marker.display(),
        p = push("outside"),
    );
    let id = service
        .submit(&task(&url, "Lands on top", &patch, &verify))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let done = service.wait_until_finished(&id).await;
    assert_eq!(done["status"], "done", "{done:#}");
    assert!(done["reverifications"].as_u64().unwrap() >= 1, "{done:#}");
    assert_eq!(
        remote_git(&bare, &["log", "-1", "--format=%s", "main~1"]),
        "outside"
    );
    assert_eq!(remote_git(&bare, &["show", "main:outside.txt"]), "outside");
    assert_eq!(remote_git(&bare, &["show", "main:f.txt"]), "ok");
}

/// A URL that is no repository, and one without the base branch, are refused at the door.
#[tokio::test]
async fn a_remote_that_does_not_answer_or_lacks_the_base_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let (_bare, url) = remote(root.path());
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let missing = format!("file://{}/nothing.git", root.path().display());
    let (status, refused) = service
        .post("/v1/tasks", &task(&missing, "Nowhere", "true", "true"))
        .await;
    assert_eq!(
        refused["error"]["code"], "NOT_A_GIT_REPOSITORY",
        "{status} {refused}"
    );
    let mut body = task(&url, "No such base", "true", "true");
    body["base_branch"] = json!("develop");
    let (_, refused) = service.post("/v1/tasks", &body).await;
    assert_eq!(refused["error"]["code"], "UNKNOWN_BASE_BRANCH", "{refused}");
}

/// A remote that declines the task branch's push (its `pre-receive` hook says no): a git failure
/// deep in the implement stage. The task records `GIT_FAILED` with git's message and nothing
/// more, while the service's log carries the failure with its code and cause chain.
#[tokio::test]
async fn a_declined_push_fails_git_failed_with_the_chain_in_the_log_only() {
    use std::os::unix::fs::PermissionsExt;

    let root = tempfile::tempdir().unwrap();
    let (bare, url) = remote(root.path());
    let hook = bare.join("hooks/pre-receive");
    std::fs::create_dir_all(hook.parent().unwrap()).unwrap();
    std::fs::write(&hook, "#!/bin/sh\necho 'no pushes today' >&2\nexit 1\n").unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let service = Service::start(root.path()).await;
    let body = task(&url, "Declined push", "echo ok > f.txt", "test -f f.txt");
    let id = service.submit(&body).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let failed = service.wait_until_finished(&id).await;

    assert_eq!(failed["status"], "failed", "{failed:#}");
    assert_eq!(failed["error"]["code"], "GIT_FAILED", "{failed:#}");
    let message = failed["error"]["message"].as_str().unwrap();
    assert!(message.contains("no pushes today"), "{message}");
    let fields: Vec<&String> = failed["error"].as_object().unwrap().keys().collect();
    assert_eq!(
        fields,
        ["code", "message"],
        "the envelope keeps code and message only"
    );
    let log = service.log();
    let line = log
        .lines()
        .find(|line| line.contains("stage failed") && line.contains(&id))
        .unwrap_or_else(|| panic!("no `stage failed` line for {id} in:\n{log}"));
    assert!(line.contains("GIT_FAILED"), "{line}");
    assert!(line.contains("no pushes today"), "{line}");
}
