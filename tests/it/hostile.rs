//! Everything a task writes is hostile: git metadata planted from inside the sandbox (config
//! keys that run commands, hooks, `include.path`, a `commondir` or `.git` file pointing
//! elsewhere, moved refs, deleted objects) never runs in the service's own git and never moves
//! or damages the user's repository. Each attempt is a real task against the real service, with
//! the sandbox seeing none of the test's temp root but its own directories.

use std::path::Path;
use std::time::Duration;

use crate::helpers::{git, git_repo, shell_task, Options, Service};

/// Each test's bound on waiting for its task.
const TASK_TIMEOUT: Duration = Duration::from_secs(120);

/// A shell script that plants every git configuration that runs a command (`touch
/// <markers>/<key>`) wherever it can reach: the `.git` the sandbox finds in its worktree, the real
/// repository's git dir and its worktrees' admin dirs (not there to write, if the sandbox holds),
/// hooks for every event; then commits a protected file in its own `.git`, moves `main` there
/// and tries to move (and wipe) the real one; finally leaves `.git` as a file pointing at a
/// planted git dir.
fn attack(markers: &Path, repo: &Path) -> String {
    format!(
        r#"set +e
M={markers}; R={repo}
plant() {{
  for key in core.fsmonitor core.pager diff.external core.sshCommand core.editor sequence.editor core.askPass credential.helper; do
    git config --file "$1/config" "$key" "touch $M/$key #"
  done
  git config --file "$1/config" filter.evil.clean "touch $M/filter #"
  git config --file "$1/config" filter.evil.smudge "touch $M/filter #"
  git config --file "$1/config" diff.evil.textconv "touch $M/textconv #"
  git config --file "$1/config" core.hooksPath "$1/hooks"
  printf '[core]\n\tfsmonitor = touch %s/include #\n' "$M" > "$1/evil.cfg"
  git config --file "$1/config" include.path "$1/evil.cfg"
  mkdir -p "$1/hooks"
  for hook in pre-commit post-commit post-checkout post-merge reference-transaction post-index-change pre-auto-gc; do
    printf '#!/bin/sh\ntouch %s/hook-%s\n' "$M" "$hook" > "$1/hooks/$hook"; chmod +x "$1/hooks/$hook"
  done
}}
plant .git
plant "$R/.git" 2>/dev/null
for admin in "$R"/.git/worktrees/*; do plant "$admin"; echo "$PWD/.git" > "$admin/commondir"; done 2>/dev/null
git --git-dir="$R/.git" update-ref refs/heads/main HEAD 2>/dev/null
mkdir -p .github/workflows && echo evil > .github/workflows/evil.yml
git add -A .github && git -c user.name=x -c user.email=x@localhost commit -qm evil
git update-ref refs/heads/main HEAD; git push -q . HEAD:main; git push -q "$R" HEAD:main 2>/dev/null
rm -rf .github
echo '* filter=evil diff=evil' > .gitattributes
rm -rf "$R"/.git/objects/?? "$R"/.git/refs/heads/* 2>/dev/null
rm -rf .git/objects/?? .git/refs/heads/*
mkdir -p "$TMPDIR/evil" && cp -r .git/. "$TMPDIR/evil/" && rm -rf .git && printf 'gitdir: %s/evil\n' "$TMPDIR" > .git
"#,
        markers = markers.display(),
        repo = repo.display(),
    )
}

/// What a run of the attack may have left behind where only the service could have written.
fn planted_markers(markers: &Path) -> Vec<String> {
    std::fs::read_dir(markers)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The repository's own git files an attack aimed at: its config and its hooks.
fn repo_metadata(repo: &Path) -> (String, Vec<String>) {
    let config = std::fs::read_to_string(repo.join(".git/config")).unwrap();
    let mut hooks: Vec<String> = std::fs::read_dir(repo.join(".git/hooks"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    hooks.sort();
    (config, hooks)
}

/// Patch and verify commands both plant everything they can; verify fails the first attempt,
/// so the second runs in the worktree the first verify left (its planted `.git` file, config
/// and `.gitattributes`). The task lands its own change and nothing else: `main` moved by one
/// verified commit without the protected file, no planted command ran as the service, the
/// repository's config, hooks and history are intact.
#[tokio::test]
async fn planted_git_metadata_never_runs_and_never_moves_the_base() {
    if crate::containment::skip() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let markers = root.path().join("markers");
    std::fs::create_dir_all(&markers).unwrap();
    let metadata_before = repo_metadata(&repo);
    let options = Options {
        no_root_writable: true,
        ..Options::default()
    };
    let service = Service::start_in_process(root.path(), options).await;

    // The script is the repository's own (the executor checks command lines, not scripts).
    std::fs::write(repo.join("attack.sh"), attack(&markers, &repo)).unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "an attack script"]);
    let initial = git(&repo, &["rev-parse", "main"]);
    let patch = "sh attack.sh; echo ok > legit.txt; \
                 [ \"$GLITCHLAB_ATTEMPT\" = 1 ] || echo second > second.txt";
    let verify = "sh attack.sh; [ -e second.txt ]";
    let id = service.submit(&shell_task(&repo, patch, verify)).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let task = service.wait_finished_within(&id, TASK_TIMEOUT).await;
    assert_eq!(task["status"], "done", "{task:#}");
    assert_eq!(task["attempts"], 2, "{task:#}");

    assert_eq!(
        planted_markers(&markers),
        Vec::<String>::new(),
        "a planted command ran outside the sandbox"
    );
    let chain = git(&repo, &["rev-list", "--first-parent", "main"]);
    let chain: Vec<&str> = chain.lines().collect();
    assert_eq!(chain.len(), 3, "main moved by one commit: {chain:?}");
    assert_eq!(chain[1], initial);
    assert_eq!(Some(chain[0]), task["commit"].as_str());
    let files = git(&repo, &["ls-tree", "-r", "--name-only", "main"]);
    let mut files: Vec<&str> = files.lines().collect();
    files.sort_unstable();
    assert_eq!(
        files,
        vec![
            ".gitattributes",
            "README.md",
            "attack.sh",
            "legit.txt",
            "second.txt"
        ],
        "only the task's own files landed (no .github, no .git)"
    );
    assert_eq!(repo_metadata(&repo), metadata_before);
    git(&repo, &["fsck", "--no-dangling", "--no-progress"]);
}

/// A verify command that deletes the objects and refs it can see, and rewrites `main` in the
/// `.git` it was given, takes nothing from the real repository: the task's branch and the base
/// keep every commit, and the change still lands.
#[tokio::test]
async fn deleting_objects_and_refs_from_a_sandbox_deletes_none_of_the_repository() {
    if crate::containment::skip() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let options = Options {
        no_root_writable: true,
        ..Options::default()
    };
    let service = Service::start_in_process(root.path(), options).await;
    let wipe = format!(
        "R={repo}; for dir in .git \"$R/.git\" $(cat .git/objects/info/alternates | sed 's#/objects$##'); do \
         rm -rf \"$dir\"/objects/?? \"$dir\"/objects/pack/* \"$dir\"/refs/heads/* \"$dir\"/packed-refs; done 2>/dev/null; true",
        repo = repo.display()
    );
    let id = service
        .submit(&shell_task(&repo, "echo ok > kept.txt", &wipe))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let task = service.wait_finished_within(&id, TASK_TIMEOUT).await;
    assert_eq!(task["status"], "done", "{task:#}");
    git(&repo, &["fsck", "--no-dangling", "--no-progress"]);
    let files = git(&repo, &["ls-tree", "-r", "--name-only", "main"]);
    assert!(files.lines().any(|f| f == "kept.txt"), "{files}");
}
