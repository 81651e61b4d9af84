//! The merge queue against a real repository whose verify is a test script (`test.sh`): only
//! verified trees land, one squashed commit per task, nobody starves, conflicts go back to work,
//! a human's commits on a kept branch are verified before they land, and `kill -9` mid-stream
//! loses nothing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{git, git_repo, wait_for_file_sh, with_config, Options, Service};

/// A repository whose test script fails when any `f*.txt` holds anything but `ok`.
fn repo_with_test_script(root: &Path) -> PathBuf {
    let repo = git_repo(root);
    std::fs::write(
        repo.join("test.sh"),
        "#!/bin/sh\nfor f in f*.txt; do [ -e \"$f\" ] || continue; \
         [ \"$(cat \"$f\")\" = ok ] || { echo \"$f is broken\"; exit 1; }; done\necho all good\n",
    )
    .unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "a test script"]);
    repo
}

fn task(repo: &Path, title: &str, patch: &str, verify: &str) -> Value {
    json!({
        "title": title,
        "description": format!("{title}: one small change."),
        "repo": repo.display().to_string(),
        "verify": verify,
        "engines": {"patch": {"kind": "shell", "command": patch}},
    })
}

/// The base's first-parent chain, newest first.
fn first_parent_chain(repo: &Path) -> Vec<String> {
    git(repo, &["rev-list", "--first-parent", "main"])
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Whether `test.sh` passes on `commit` (its tree exported to a scratch dir: no worktree, so
/// nothing races the service's own worktree administration).
fn passes_test_script(repo: &Path, commit: &str, scratch: &Path) -> bool {
    let dir = scratch.join(&commit[..12]);
    std::fs::create_dir_all(&dir).unwrap();
    let archive = Command::new("git")
        .args(["archive", "--format=tar", commit])
        .current_dir(repo)
        .output()
        .unwrap();
    assert!(archive.status.success(), "git archive {commit} failed");
    let mut tar = Command::new("tar")
        .args(["-x", "-C"])
        .arg(&dir)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut tar.stdin.take().unwrap(), &archive.stdout).unwrap();
    assert!(tar.wait().unwrap().success());
    let passed = Command::new("sh")
        .arg("test.sh")
        .current_dir(&dir)
        .output()
        .unwrap()
        .status
        .success();
    std::fs::remove_dir_all(&dir).unwrap();
    passed
}

/// Every one of `commits` passes the test script.
fn assert_newest_pass(repo: &Path, root: &Path, commits: &[String]) {
    let scratch = root.join("check");
    std::fs::create_dir_all(&scratch).unwrap();
    for commit in commits {
        assert!(passes_test_script(repo, commit, &scratch), "{commit} fails");
    }
}

/// Commits on the base whose message carries the task's trailer.
fn landings_of(repo: &Path, id: &str) -> usize {
    let grep = format!("--grep=Glitchlab-Task: {id}");
    git(
        repo,
        &["log", "--format=%H", "--fixed-strings", &grep, "main"],
    )
    .lines()
    .count()
}

async fn verify_runs(service: &Service, id: &str) -> usize {
    let (_, runs) = service.get(&format!("/v1/tasks/{id}/runs")).await;
    runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|run| run["persona"] == "circuit")
        .count()
}

/// 12 tasks in one repository with 4 slots: one with a 3 s verify while the others land around
/// it, one whose first attempt breaks the test script. All end `done`; the base's first-parent
/// chain grows by exactly 12 commits, each passing the test script; the broken attempt is
/// reachable from nowhere on the base; verify runs stay within 2 per task.
#[tokio::test]
async fn twelve_tasks_land_verified_one_commit_each_and_nobody_starves() {
    let root = tempfile::tempdir().unwrap();
    let repo = repo_with_test_script(root.path());
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let chain_before = first_parent_chain(&repo).len();

    let mut ids = Vec::new();
    let slow = task(
        &repo,
        "Slow change",
        "echo ok > f-slow.txt",
        "sleep 3 && sh test.sh",
    );
    ids.push(
        service.submit(&slow).await["id"]
            .as_str()
            .unwrap()
            .to_owned(),
    );
    // Attempt 1 writes a broken file (verify fails), attempt 2 the right one.
    let flaky_patch = "if [ \"$GLITCHLAB_ATTEMPT\" = 1 ]; then echo broken > f-flaky.txt; \
                       else echo ok > f-flaky.txt; fi";
    let flaky = task(&repo, "Flaky change", flaky_patch, "sh test.sh");
    let flaky_id = service.submit(&flaky).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    ids.push(flaky_id.clone());
    for n in 0..10 {
        let body = task(
            &repo,
            &format!("Change {n}"),
            &format!("echo ok > f{n}.txt"),
            "sh test.sh",
        );
        ids.push(
            service.submit(&body).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }

    let mut runs = 0;
    for id in &ids {
        let task = service
            .wait_finished_within(id, Duration::from_secs(180))
            .await;
        assert_eq!(task["status"], "done", "{task:#}");
        assert_eq!(landings_of(&repo, id), 1, "task {id} landed once");
        if *id != flaky_id {
            runs += verify_runs(&service, id).await;
        }
    }
    assert!(
        runs <= 2 * (ids.len() - 1),
        "{runs} verify runs for {} independent tasks",
        ids.len() - 1
    );

    let chain = first_parent_chain(&repo);
    assert_eq!(chain.len(), chain_before + ids.len(), "one commit per task");
    assert_newest_pass(&repo, root.path(), &chain[..ids.len()]);
    for commit in &chain[..ids.len()] {
        let parents = git(&repo, &["rev-list", "--parents", "-n", "1", commit]);
        assert_eq!(parents.split(' ').count(), 2, "{commit} is not a squash");
    }
    // The broken first attempt is on no branch the base can reach.
    let broken = git(
        &repo,
        &[
            "log",
            "--format=%H",
            "--all",
            "-S",
            "broken",
            "--",
            "f-flaky.txt",
        ],
    );
    for commit in broken.lines() {
        let reachable = Command::new("git")
            .args(["merge-base", "--is-ancestor", commit, "main"])
            .current_dir(&repo)
            .status()
            .unwrap()
            .success();
        assert!(
            !reachable,
            "the failing attempt {commit} is reachable from the base"
        );
    }
    let flaky_task = service.get(&format!("/v1/tasks/{flaky_id}")).await.1;
    let message = git(
        &repo,
        &[
            "log",
            "-1",
            "--format=%B",
            flaky_task["commit"].as_str().unwrap(),
        ],
    );
    assert!(message.starts_with("Flaky change\n"), "{message}");
    assert!(
        message.contains(&format!("Glitchlab-Task: {flaky_id}")),
        "{message}"
    );
    assert!(message.contains("Glitchlab-Attempts: 2"), "{message}");
}

/// Two tasks that rewrite the same line: the second no longer applies once the first lands, goes
/// back to Patch with the conflict, is made again on the new base, and lands too.
#[tokio::test]
async fn two_tasks_rewriting_the_same_line_both_land() {
    let root = tempfile::tempdir().unwrap();
    let repo = repo_with_test_script(root.path());
    std::fs::write(repo.join("shared.txt"), "original\n").unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "a shared line"]);
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let marker = root.path().join("first-implemented");

    // The second waits (inside its engine, so after its branch left the base) until the first
    // has made its change: both branches leave the same base, and the second must conflict.
    let first = task(
        &repo,
        "First rewrite",
        &format!("echo first > shared.txt && touch {}", marker.display()),
        "grep -q first shared.txt",
    );
    let second = task(
        &repo,
        "Second rewrite",
        &format!(
            "while [ ! -e {} ]; do sleep 0.05; done; echo second > shared.txt",
            marker.display()
        ),
        "sleep 1 && grep -q second shared.txt",
    );
    let first_id = service.submit(&first).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let second_id = service.submit(&second).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let first = service
        .wait_finished_within(&first_id, Duration::from_secs(60))
        .await;
    let second = service
        .wait_finished_within(&second_id, Duration::from_secs(60))
        .await;
    assert_eq!(first["status"], "done", "{first:#}");
    assert_eq!(second["status"], "done", "{second:#}");
    assert_eq!(second["attempts"], 2, "{second:#}");
    let codes: Vec<&str> = second["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["error"]["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["MERGE_CONFLICT"], "{second:#}");
    assert!(
        second["failures"][0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("shared.txt"),
        "the feedback names the conflicting file: {second:#}"
    );
    assert_eq!(git(&repo, &["show", "main:shared.txt"]), "second");
    assert_eq!(first_parent_chain(&repo).len(), 5);
}

/// The human's `git worktree add --force <human> <branch>`, once. It used to die now and then
/// ("could not open '.git/worktrees/human/locked' for writing", "couldn't set 'HEAD'"): the
/// service's clean-up ran `git worktree prune`, which took the admin dir of this add caught
/// between git's `mkdir` and its first write. The service no longer prunes a user's repository.
fn human_worktree_add(repo: &std::path::Path, human: &std::path::Path, branch: &str) {
    let output = std::process::Command::new("git")
        .args(["worktree", "add", "-q", "--force"])
        .arg(human)
        .arg(branch)
        .current_dir(repo)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "git worktree add failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A task that ran out of attempts keeps its branch. A human's commit that still breaks it, then
/// `retry` from deliver: verified on the base, not landed (`VERIFY_FAILED`), base unchanged. A
/// fixing commit, then `retry` from deliver: landed.
#[tokio::test]
async fn a_retry_from_deliver_lands_a_human_fix_only_once_it_passes() {
    let root = tempfile::tempdir().unwrap();
    let repo = repo_with_test_script(root.path());
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let mut body = task(&repo, "Needs a human", "echo broken > f1.txt", "sh test.sh");
    body["max_attempts"] = json!(1);
    let id = service.submit(&body).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let failed = service
        .wait_finished_within(&id, Duration::from_secs(60))
        .await;
    assert_eq!(failed["status"], "dead_letter", "{failed:#}");
    let base_before = git(&repo, &["rev-parse", "main"]);

    let human = root.path().join("human");
    let branch = format!("glitchlab/{id}");
    let human_commit = |content: &str| {
        human_worktree_add(&repo, &human, &branch);
        std::fs::write(human.join("f1.txt"), content).unwrap();
        git(&human, &["commit", "-q", "-am", "a human's fix"]);
        git(
            &repo,
            &["worktree", "remove", "--force", human.to_str().unwrap()],
        );
    };
    human_commit("still broken\n");
    let (status, retried) = service
        .post(
            &format!("/v1/tasks/{id}/retry"),
            &json!({"from": "deliver"}),
        )
        .await;
    assert_eq!(status, 200, "{retried:#}");
    let again = service
        .wait_finished_within(&id, Duration::from_secs(60))
        .await;
    assert_eq!(again["status"], "dead_letter", "{again:#}");
    assert_eq!(again["error"]["code"], "VERIFY_FAILED", "{again:#}");
    assert_eq!(
        git(&repo, &["rev-parse", "main"]),
        base_before,
        "the base moved"
    );

    human_commit("ok\n");
    let (status, _) = service
        .post(
            &format!("/v1/tasks/{id}/retry"),
            &json!({"from": "deliver"}),
        )
        .await;
    assert_eq!(status, 200);
    let landed = service
        .wait_finished_within(&id, Duration::from_secs(60))
        .await;
    assert_eq!(landed["status"], "done", "{landed:#}");
    assert_eq!(git(&repo, &["show", "main:f1.txt"]), "ok");
    assert_eq!(
        landed["commit"].as_str().unwrap(),
        git(&repo, &["rev-parse", "main"])
    );

    let (status, refused) = service
        .post(
            &format!("/v1/tasks/{id}/retry"),
            &json!({"from": "somewhere"}),
        )
        .await;
    assert_eq!(status, 422, "{refused:#}");
}

/// `kill -9` of the service three times while a stream of tasks delivers: every task still ends
/// `done` with exactly one commit on the base, and every commit there passes the test script.
#[tokio::test]
async fn kill_9_during_a_stream_of_deliveries_loses_and_repeats_nothing() {
    let root = tempfile::tempdir().unwrap();
    let repo = repo_with_test_script(root.path());
    let config = "[compass]\nmax_concurrent_tasks = 4\npoison_after = 0\n";
    let mut service = Service::start_with(root.path(), with_config(config)).await;
    let mut ids = Vec::new();
    for n in 0..10 {
        let body = task(
            &repo,
            &format!("Stream change {n}"),
            &format!("echo ok > f{n}.txt"),
            "sleep 0.3 && sh test.sh",
        );
        ids.push(
            service.submit(&body).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    for pause_ms in [700, 1300, 900] {
        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        service.kill_9();
        service = Service::start_with(root.path(), with_config(config)).await;
    }
    for id in &ids {
        let task = service
            .wait_finished_within(id, Duration::from_secs(180))
            .await;
        assert_eq!(task["status"], "done", "{task:#}");
        assert_eq!(
            landings_of(&repo, id),
            1,
            "task {id}: one commit on the base"
        );
    }
    let chain = first_parent_chain(&repo);
    assert_eq!(chain.len(), 2 + ids.len());
    assert_newest_pass(&repo, root.path(), &chain[..ids.len()]);
}

/// Four changes that queue up behind a slow candidate are tested as one batch
/// (`merge_queue.batch_max = 4`). One of them passes on its branch but breaks the others' files
/// (its test script forbids a file another task adds): the batch is red, bisection lands the
/// three good changes, one commit each, and sends only the culprit back (out of attempts here:
/// `VERIFY_FAILED`). Nothing failing reaches the base.
#[tokio::test]
async fn a_red_batch_is_bisected_and_only_the_culprit_is_sent_back() {
    let root = tempfile::tempdir().unwrap();
    let repo = repo_with_test_script(root.path());
    // Slots for the blocker and all four, so all four can line up behind it.
    let config = "[merge_queue]\nbatch_max = 4\n[compass]\nmax_concurrent_tasks = 6\n";
    let service = Service::start_in_process(root.path(), with_config(config)).await;

    // The blocker moves the base on its first attempt (so its own candidate must be verified)
    // and its verify waits, only in the merge queue's scratch worktree, for the gate the test
    // opens once the others have passed verify and lined up: the queue is busy until then.
    let gate = root.path().join("blocker-gate");
    let blocker_patch = format!(
        "echo hi > {r}/teammate.txt && git -C {r} add teammate.txt && \
         git -C {r} -c user.name=t -c user.email=t@t commit -q -m teammate && \
         echo ok > f-blocker.txt",
        r = repo.display()
    );
    let blocker_verify = format!(
        "case \"$PWD\" in */merge-queue/*) {};; esac; sh test.sh",
        wait_for_file_sh(&gate)
    );
    let blocker = task(&repo, "Blocker", &blocker_patch, &blocker_verify);
    let blocker_id = service.submit(&blocker).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    service
        .wait_for_task(&blocker_id, Duration::from_secs(60), |t| {
            t["stage"] == "deliver"
        })
        .await;

    let mut good = Vec::new();
    for name in ["a", "b", "c"] {
        let body = task(
            &repo,
            &format!("Add {name}"),
            &format!("echo ok > f-{name}.txt"),
            "sh test.sh",
        );
        good.push(
            service.submit(&body).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    // Last in line (it passes verify a second after the others): the queue lands in line order,
    // so the change that breaks what others landed is this one.
    let culprit_patch = "sleep 1 && printf '#!/bin/sh\\n[ ! -e f-a.txt ] || { echo f-a.txt is forbidden; exit 1; }\\n' > test.sh";
    let mut culprit = task(&repo, "Forbid a", culprit_patch, "sh test.sh");
    culprit["max_attempts"] = json!(1);
    let culprit_id = service.submit(&culprit).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for id in good.iter().chain([&culprit_id]) {
        service
            .wait_for_task(id, Duration::from_secs(60), |t| {
                t["merge"]["place"].is_u64()
            })
            .await;
    }
    std::fs::write(&gate, "").unwrap();

    let blocker = service
        .wait_finished_within(&blocker_id, Duration::from_secs(60))
        .await;
    assert_eq!(blocker["status"], "done", "{blocker:#}");
    for id in &good {
        let task = service
            .wait_finished_within(id, Duration::from_secs(120))
            .await;
        assert_eq!(task["status"], "done", "{task:#}");
        assert_eq!(landings_of(&repo, id), 1);
    }
    let culprit = service
        .wait_finished_within(&culprit_id, Duration::from_secs(120))
        .await;
    assert_eq!(culprit["status"], "dead_letter", "{culprit:#}");
    assert_eq!(culprit["error"]["code"], "VERIFY_FAILED", "{culprit:#}");
    assert_eq!(landings_of(&repo, &culprit_id), 0);

    // They were tested together first, then bisected.
    let (_, events) = service.get(&format!("/v1/tasks/{culprit_id}/events")).await;
    let events = events["events"].as_array().unwrap();
    let batch_sizes: Vec<u64> = events
        .iter()
        .filter(|e| e["kind"] == "merge.candidate")
        .map(|e| e["data"]["batch"].as_u64().unwrap())
        .collect();
    assert_eq!(batch_sizes.first(), Some(&4), "{events:#?}");
    assert!(
        events.iter().any(|e| e["kind"] == "merge.bisect"),
        "{events:#?}"
    );

    let chain = first_parent_chain(&repo);
    // initial, test script, teammate, blocker, a, b, c.
    assert_eq!(chain.len(), 7);
    assert_newest_pass(&repo, root.path(), &chain[..4]);
}

/// Someone outside glitchlab moves the base while the candidate is verified: the landing's
/// compare-and-swap fails, the candidate is built again on the new base and verified again, and
/// the task lands on top of the outside commit without using up an attempt.
#[tokio::test]
async fn a_base_moved_outside_during_the_candidates_verify_rebuilds_it() {
    let root = tempfile::tempdir().unwrap();
    let repo = repo_with_test_script(root.path());
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let r = repo.display();
    let commit = "git -c user.name=t -c user.email=t@t";
    // The engine moves the base first (so the candidate differs from the branch and is
    // verified); the candidate's first verify moves it again, as a teammate pushing would.
    let patch = format!(
        "echo a > {r}/teammate.txt && git -C {r} add teammate.txt && {commit} -C {r} commit -qm teammate && \
         echo ok > f1.txt"
    );
    let marker = root.path().join("moved-outside");
    let verify = format!(
        "case \"$PWD\" in */merge-queue/*) if [ ! -e {m} ]; then touch {m}; echo b > {r}/outside.txt && \
         git -C {r} add outside.txt && {commit} -C {r} commit -qm outside; fi;; esac; sh test.sh",
        m = marker.display()
    );
    let id = service
        .submit(&task(&repo, "Lands after all", &patch, &verify))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let done = service
        .wait_finished_within(&id, Duration::from_secs(60))
        .await;
    assert_eq!(done["status"], "done", "{done:#}");
    assert_eq!(done["attempts"], 1, "no attempt used up: {done:#}");
    assert_eq!(done["reverifications"], 1, "{done:#}");
    let kinds = service.event_kinds(&id).await;
    assert!(kinds.contains(&"merge.base_moved".to_owned()), "{kinds:?}");
    assert_eq!(
        git(&repo, &["log", "-1", "--format=%s", "main~1"]),
        "outside"
    );
    assert_eq!(git(&repo, &["show", "main:f1.txt"]), "ok");
    assert_eq!(landings_of(&repo, &id), 1);
}

/// `delivery.history = "merge"`: a merge commit per task whose first parent is the old base;
/// `"rebase"`: the branch's commit replayed, with the trailers on it.
#[tokio::test]
async fn merge_and_rebase_histories_keep_one_first_parent_commit_per_task() {
    for history in ["merge", "rebase"] {
        let root = tempfile::tempdir().unwrap();
        let repo = repo_with_test_script(root.path());
        let base_before = git(&repo, &["rev-parse", "main"]);
        let config = format!("[delivery]\nhistory = \"{history}\"\n");
        let service = Service::start_in_process(root.path(), with_config(&config)).await;
        let body = task(&repo, "Add one", "echo ok > f1.txt", "sh test.sh");
        let id = service.submit(&body).await["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let done = service
            .wait_finished_within(&id, Duration::from_secs(60))
            .await;
        assert_eq!(done["status"], "done", "{history}: {done:#}");
        let tip = git(&repo, &["rev-parse", "main"]);
        assert_eq!(done["commit"].as_str().unwrap(), tip);
        let parents: Vec<String> = git(&repo, &["rev-list", "--parents", "-n", "1", "main"])
            .split(' ')
            .skip(1)
            .map(str::to_owned)
            .collect();
        assert_eq!(
            parents[0], base_before,
            "{history}: first parent is the old base"
        );
        let expected_parents = if history == "merge" { 2 } else { 1 };
        assert_eq!(parents.len(), expected_parents, "{history}");
        let message = git(&repo, &["log", "-1", "--format=%B", "main"]);
        assert!(
            message.contains(&format!("Glitchlab-Task: {id}")),
            "{history}: {message}"
        );
        assert_eq!(git(&repo, &["show", "main:f1.txt"]), "ok");
    }
}

/// A change a human already committed to the base ends `done` with `delivered: already_on_base`
/// and the base's commit (not another commit passed off as the task's); the base does not move.
#[tokio::test]
async fn a_change_the_base_already_holds_is_delivered_already_on_base() {
    let root = tempfile::tempdir().unwrap();
    let repo = repo_with_test_script(root.path());
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let mut body = task(&repo, "Same as a human", "echo ok > f1.txt", "sh test.sh");
    body["review_policy"] = json!("manual");
    let id = service.submit(&body).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    service
        .wait_for_task(&id, Duration::from_secs(60), |t| {
            t["status"] == "awaiting_approval"
        })
        .await;
    std::fs::write(repo.join("f1.txt"), "ok\n").unwrap();
    git(&repo, &["add", "f1.txt"]);
    git(
        &repo,
        &["commit", "-q", "-m", "a human made the same change"],
    );
    let human = git(&repo, &["rev-parse", "main"]);

    let (status, approved) = service
        .post(&format!("/v1/tasks/{id}/approve"), &json!({}))
        .await;
    assert_eq!(status, 200, "{approved:#}");
    let done = service
        .wait_finished_within(&id, Duration::from_secs(60))
        .await;
    assert_eq!(done["status"], "done", "{done:#}");
    assert_eq!(done["delivered"], "already_on_base", "{done:#}");
    assert_eq!(done["commit"].as_str().unwrap(), human, "{done:#}");
    assert_eq!(git(&repo, &["rev-parse", "main"]), human, "the base moved");
    assert_eq!(landings_of(&repo, &id), 0, "a commit of the task landed");
}

/// A retry from deliver whose branch, after a human's commits, adds nothing to the base ends
/// `failed NO_CHANGES`, not `done` with nothing delivered.
#[tokio::test]
async fn a_retry_from_deliver_with_no_net_change_fails_no_changes() {
    let root = tempfile::tempdir().unwrap();
    let repo = repo_with_test_script(root.path());
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let mut body = task(
        &repo,
        "Undone by a human",
        "echo broken > f1.txt",
        "sh test.sh",
    );
    body["max_attempts"] = json!(1);
    let id = service.submit(&body).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let failed = service
        .wait_finished_within(&id, Duration::from_secs(60))
        .await;
    assert_eq!(failed["status"], "dead_letter", "{failed:#}");
    let base_before = git(&repo, &["rev-parse", "main"]);
    let human = root.path().join("human");
    let branch = format!("glitchlab/{id}");
    let human_dir = human.to_str().unwrap();
    git(
        &repo,
        &["worktree", "add", "-q", "--force", human_dir, &branch],
    );
    git(&human, &["rm", "-q", "f1.txt"]);
    git(
        &human,
        &["commit", "-q", "-m", "a human dropped the change"],
    );
    git(&repo, &["worktree", "remove", "--force", human_dir]);

    let (status, retried) = service
        .post(
            &format!("/v1/tasks/{id}/retry"),
            &json!({"from": "deliver"}),
        )
        .await;
    assert_eq!(status, 200, "{retried:#}");
    let ended = service
        .wait_finished_within(&id, Duration::from_secs(60))
        .await;
    assert_eq!(ended["status"], "failed", "{ended:#}");
    assert_eq!(ended["error"]["code"], "NO_CHANGES", "{ended:#}");
    assert!(ended.get("delivered").is_none(), "{ended:#}");
    assert_eq!(
        git(&repo, &["rev-parse", "main"]),
        base_before,
        "the base moved"
    );
}

/// A human's red commit on `main` while 4 approved tasks head for delivery: the queue verifies
/// the bare base once, finds it red and holds — no attempt spent, each held task says why,
/// `/v1/report` lists the red base and `/readyz` warns — and once a fixing commit moves the base,
/// all 4 land, each once, on a base that passes.
#[tokio::test]
async fn a_red_base_holds_the_queue_without_spending_attempts_and_a_fix_releases_it() {
    let root = tempfile::tempdir().unwrap();
    let repo = repo_with_test_script(root.path());
    let config = "[merge_queue]\nbatch_max = 4\n[compass]\nmax_concurrent_tasks = 6\n";
    let service = Service::start_with(root.path(), with_config(config)).await;
    let mut ids = Vec::new();
    for name in ["a", "b", "c", "d"] {
        let mut body = task(
            &repo,
            &format!("Add {name}"),
            &format!("echo ok > f-{name}.txt"),
            "sh test.sh",
        );
        body["review_policy"] = json!("manual");
        body["max_attempts"] = json!(1);
        ids.push(
            service.submit(&body).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    for id in &ids {
        service
            .wait_for_task(id, Duration::from_secs(120), |t| {
                t["status"] == "awaiting_approval"
            })
            .await;
    }
    // A human breaks main (the checkout is on main and clean).
    std::fs::write(repo.join("f-human.txt"), "broken\n").unwrap();
    git(&repo, &["add", "f-human.txt"]);
    git(&repo, &["commit", "-q", "-m", "a human's red commit"]);
    let red = git(&repo, &["rev-parse", "HEAD"]).trim().to_owned();
    for id in &ids {
        let (status, body) = service
            .post(&format!("/v1/tasks/{id}/approve"), &json!({}))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    // The turn that finds the base red holds the tasks it took; a turn that started before the
    // others reached the queue holds its one task, and they wait in line behind it. So: whichever
    // task holds (CI saw `Add b` take the first turn alone, `Add a` waiting at place 2).
    let deadline = Instant::now() + Duration::from_secs(120);
    let held_id = 'found: loop {
        for id in &ids {
            let (_, t) = service.get(&format!("/v1/tasks/{id}")).await;
            if t["merge"]["held"].is_string() {
                break 'found id.clone();
            }
        }
        if Instant::now() > deadline {
            // Panics with the first task, its events, the queues' lines and the threads.
            service
                .wait_for_task(&ids[0], Duration::ZERO, |t| t["merge"]["held"].is_string())
                .await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (_, held) = service.get(&format!("/v1/tasks/{held_id}")).await;
    assert!(
        held["merge"]["held"].as_str().unwrap().contains("is red"),
        "{held:#}"
    );
    let (_, report) = service.get("/v1/report").await;
    let listed = &report["base_red"][0];
    assert_eq!(listed["commit"], red.as_str(), "{report:#}");
    assert_eq!(listed["branch"], "main");
    assert!(
        listed["output"]
            .as_str()
            .unwrap()
            .contains("f-human.txt is broken"),
        "{report:#}"
    );
    // The queue's line, in order, with the hold on the held task.
    let line = report["merge_queues"][0]["line"]
        .as_array()
        .unwrap()
        .clone();
    let places: Vec<u64> = line.iter().map(|p| p["place"].as_u64().unwrap()).collect();
    assert_eq!(
        places,
        (1..=line.len() as u64).collect::<Vec<_>>(),
        "{report:#}"
    );
    let first = line.iter().find(|p| p["id"] == held_id.as_str()).unwrap();
    assert!(
        first["held"].as_str().unwrap().contains("is red"),
        "{report:#}"
    );
    let (status, ready) = service.get("/readyz").await;
    assert_eq!(status, 200, "{ready}");
    assert!(
        ready["warnings"][0]
            .as_str()
            .unwrap()
            .starts_with("base_red"),
        "{ready}"
    );
    // Held, not failed: a few seconds later nobody has ended or spent anything.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for id in &ids {
        let (_, t) = service.get(&format!("/v1/tasks/{id}")).await;
        assert_eq!(t["status"], "running", "{t:#}");
        assert_eq!(t["attempts"], 1, "{t:#}");
    }

    // The fix moves the base: the queue resumes by itself.
    std::fs::write(repo.join("f-human.txt"), "ok\n").unwrap();
    git(&repo, &["commit", "-q", "-am", "a human's fix"]);
    for id in &ids {
        let t = service
            .wait_finished_within(id, Duration::from_secs(120))
            .await;
        assert_eq!(t["status"], "done", "{t:#}");
        assert_eq!(t["attempts"], 1, "no attempt spent: {t:#}");
        assert!(t["merge"]["held"].is_null(), "{t:#}");
        assert_eq!(landings_of(&repo, id), 1);
    }
    let (_, events) = service.get(&format!("/v1/tasks/{held_id}/events")).await;
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"merge.base_red"), "{kinds:?}");
    assert!(kinds.contains(&"merge.base_unheld"), "{kinds:?}");
    let (_, report) = service.get("/v1/report").await;
    assert_eq!(report["base_red"], json!([]), "{report:#}");
    let chain = first_parent_chain(&repo);
    assert_newest_pass(&repo, root.path(), &chain[..4]);
}

/// A change that conflicts and has no attempt left ends `MERGE_CONFLICT`; a plain
/// `glitchlab task retry` (no `--from`) re-implements it on the current base — it does not rerun
/// deliver into the same conflict — and it lands. `--from` is checked by the CLI.
#[tokio::test]
async fn a_plain_cli_retry_after_a_merge_conflict_re_implements_on_the_base_and_lands() {
    let root = tempfile::tempdir().unwrap();
    let repo = repo_with_test_script(root.path());
    std::fs::write(repo.join("shared.txt"), "original\n").unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "a shared line"]);
    let service = Service::start(root.path()).await;
    let marker = root.path().join("first-implemented");
    let first = task(
        &repo,
        "First rewrite",
        &format!("echo first > shared.txt && touch {}", marker.display()),
        "grep -q first shared.txt",
    );
    let mut second = task(
        &repo,
        "Second rewrite",
        &format!(
            "while [ ! -e {} ]; do sleep 0.05; done; echo second > shared.txt",
            marker.display()
        ),
        "sleep 1 && grep -q second shared.txt",
    );
    second["max_attempts"] = json!(1);
    let first_id = service.submit(&first).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let second_id = service.submit(&second).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let first = service
        .wait_finished_within(&first_id, Duration::from_secs(60))
        .await;
    assert_eq!(first["status"], "done", "{first:#}");
    let conflicted = service
        .wait_finished_within(&second_id, Duration::from_secs(60))
        .await;
    assert_eq!(
        conflicted["error"]["code"], "MERGE_CONFLICT",
        "{conflicted:#}"
    );

    let (base, id) = (service.base.clone(), second_id.clone());
    let (bad, retried) = tokio::task::spawn_blocking(move || {
        (
            crate::cli::glitchlab(&base, &["task", "retry", &id, "--from", "nowhere"]),
            crate::cli::glitchlab(&base, &["task", "retry", &id, "--json"]),
        )
    })
    .await
    .unwrap();
    assert_eq!(bad.status.code(), Some(64), "a usage error");
    assert!(
        retried.status.success(),
        "{}",
        String::from_utf8_lossy(&retried.stderr)
    );
    let reopened: Value = serde_json::from_slice(&retried.stdout).unwrap();
    assert_eq!(reopened["stage"], "implement", "{reopened:#}");
    let landed = service
        .wait_finished_within(&second_id, Duration::from_secs(60))
        .await;
    assert_eq!(landed["status"], "done", "{landed:#}");
    assert_eq!(landings_of(&repo, &second_id), 1);
    assert_eq!(git(&repo, &["show", "main:shared.txt"]), "second");
}

/// Waiting in a merge queue costs no slot: with `max_concurrent_tasks = 2`, three tasks lined up
/// behind a 10 s candidate verify on repository A leave room for a quick task on repository B,
/// which finishes while that candidate is still being verified.
#[tokio::test]
async fn tasks_waiting_in_a_merge_queue_hold_no_slot() {
    let root = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let repo_a = repo_with_test_script(root.path());
    let repo_b = git_repo(other.path());
    let config = "[merge_queue]\nbatch_max = 1\n[compass]\nmax_concurrent_tasks = 2\n";
    let service = Service::start_with(root.path(), with_config(config)).await;
    // The blocker moves A's base on each attempt (a teammate's commit, new content every time),
    // so its candidate must be verified; that verify waits, only in the merge queue's scratch
    // worktree, for the gate the test opens once the quick task is done. (Every attempt moves
    // it, so a candidate sent back once — seen: git's `merge --squash` failing `fatal: stash
    // failed`, taken for a conflict — still waits at the gate.)
    let gate = root.path().join("blocker-gate");
    let blocker_patch = format!(
        "date +%s%N > {r}/teammate.txt && git -C {r} add teammate.txt && \
         git -C {r} -c user.name=t -c user.email=t@t commit -q -m teammate && \
         echo ok > f-blocker.txt",
        r = repo_a.display()
    );
    let blocker_verify = format!(
        "case \"$PWD\" in */merge-queue/*) {};; esac; sh test.sh",
        wait_for_file_sh(&gate)
    );
    let blocker = task(&repo_a, "Blocker", &blocker_patch, &blocker_verify);
    let blocker_id = service.submit(&blocker).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut waiting = Vec::new();
    for name in ["a", "b"] {
        let body = task(
            &repo_a,
            &format!("Add {name}"),
            &format!("echo ok > f-{name}.txt"),
            "sh test.sh",
        );
        waiting.push(
            service.submit(&body).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    for id in std::iter::once(&blocker_id).chain(&waiting) {
        service
            .wait_for_task(id, Duration::from_secs(60), |t| t["stage"] == "deliver")
            .await;
    }
    let quick = service
        .submit(&task(&repo_b, "Quick", "echo quick > quick.txt", "true"))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let quick = service
        .wait_finished_within(&quick, Duration::from_secs(60))
        .await;
    assert_eq!(quick["status"], "done", "{quick:#}");
    let (_, blocker) = service.get(&format!("/v1/tasks/{blocker_id}")).await;
    assert_eq!(
        blocker["status"], "running",
        "the quick task finished while the candidate was still verified: {blocker:#}"
    );
    std::fs::write(&gate, "").unwrap();
    for id in std::iter::once(&blocker_id).chain(&waiting) {
        let t = service
            .wait_finished_within(id, Duration::from_secs(120))
            .await;
        assert_eq!(t["status"], "done", "{t:#}");
    }
}

/// A retried round whose branch the base has moved past starts from the current base: the
/// first round could not pass without a human's later commit; a plain retry sees that commit
/// in its worktree and lands.
#[tokio::test]
async fn a_retry_whose_branch_is_behind_the_base_starts_from_the_current_base() {
    let root = tempfile::tempdir().unwrap();
    let repo = repo_with_test_script(root.path());
    let service = Service::start(root.path()).await;
    let patch = "if [ -e human.txt ]; then echo ok > f-fix.txt; else echo broken > f-fix.txt; fi";
    let mut body = task(&repo, "Needs the human's file", patch, "sh test.sh");
    body["max_attempts"] = json!(1);
    let id = service.submit(&body).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let failed = service
        .wait_finished_within(&id, Duration::from_secs(60))
        .await;
    assert_eq!(failed["error"]["code"], "VERIFY_FAILED", "{failed:#}");

    std::fs::write(repo.join("human.txt"), "hello\n").unwrap();
    git(&repo, &["add", "human.txt"]);
    git(
        &repo,
        &["commit", "-q", "-m", "a human's commit the task needs"],
    );
    let (status, retried) = service
        .post(&format!("/v1/tasks/{id}/retry"), &json!({}))
        .await;
    assert_eq!(status, 200, "{retried}");
    let landed = service
        .wait_finished_within(&id, Duration::from_secs(60))
        .await;
    assert_eq!(landed["status"], "done", "{landed:#}");
    assert_eq!(git(&repo, &["show", "main:f-fix.txt"]), "ok");
}

/// Tasks waiting behind a slow candidate verify carry their place in line (`merge.place`, 1 for
/// the candidate being served), as the report's line has them; a task that left the queue has
/// none.
#[tokio::test]
async fn tasks_waiting_behind_a_slow_candidate_show_their_place_in_line() {
    let root = tempfile::tempdir().unwrap();
    let repo = repo_with_test_script(root.path());
    let config = "[merge_queue]\nbatch_max = 1\n";
    let service = Service::start_in_process(root.path(), with_config(config)).await;
    // The blocker moves the base on its first attempt, so its candidate must be verified; that
    // verify waits, only in the merge queue's scratch worktree, for the gate the test opens
    // once the places are checked.
    let gate = root.path().join("blocker-gate");
    let blocker_patch = format!(
        "echo hi > {r}/teammate.txt && git -C {r} add teammate.txt && \
         git -C {r} -c user.name=t -c user.email=t@t commit -q -m teammate && \
         echo ok > f-blocker.txt",
        r = repo.display()
    );
    let blocker_verify = format!(
        "case \"$PWD\" in */merge-queue/*) {};; esac; sh test.sh",
        wait_for_file_sh(&gate)
    );
    let blocker = task(&repo, "Blocker", &blocker_patch, &blocker_verify);
    let blocker_id = service.submit(&blocker).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    service
        .wait_for_task(&blocker_id, Duration::from_secs(60), |t| {
            t["merge"]["place"] == 1
        })
        .await;
    let mut behind = Vec::new();
    for name in ["a", "b"] {
        let body = task(
            &repo,
            &format!("Add {name}"),
            &format!("echo ok > f-{name}.txt"),
            "sh test.sh",
        );
        behind.push(
            service.submit(&body).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    for id in &behind {
        service
            .wait_for_task(id, Duration::from_secs(60), |t| {
                t["merge"]["place"].is_u64()
            })
            .await;
    }
    let place = async |id: &str| {
        let (_, t) = service.get(&format!("/v1/tasks/{id}")).await;
        t["merge"]["place"].as_u64()
    };
    let (_, report) = service.get("/v1/report").await;
    assert_eq!(place(&blocker_id).await, Some(1), "{report:#}");
    let mut places = vec![place(&behind[0]).await, place(&behind[1]).await];
    let line = report["merge_queues"][0]["line"].as_array().unwrap();
    for (id, got) in behind.iter().zip(&places) {
        let listed = line.iter().find(|p| p["id"] == id.as_str());
        assert_eq!(listed.and_then(|p| p["place"].as_u64()), *got, "{report:#}");
    }
    places.sort();
    assert_eq!(places, vec![Some(2), Some(3)], "{report:#}");
    std::fs::write(&gate, "").unwrap();
    for id in std::iter::once(&blocker_id).chain(&behind) {
        let t = service
            .wait_finished_within(id, Duration::from_secs(120))
            .await;
        assert_eq!(t["status"], "done", "{t:#}");
        assert!(t["merge"].get("place").is_none(), "{t:#}");
    }
}

/// The events of `kind` recorded on the task.
async fn events_of(service: &Service, id: &str, kind: &str) -> Vec<Value> {
    let (_, events) = service.get(&format!("/v1/tasks/{id}/events")).await;
    events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == kind)
        .cloned()
        .collect()
}

/// A developer's uncommitted edit in the repository's checkout (on `main`) on a file one of
/// three approved tasks rewrites: every task lands (the base moves by ref), none fails
/// `GIT_FAILED`, the edit is still there byte for byte, and the overlapping landing says the
/// checkout was left behind (`merge.checkout_stale` naming the file).
#[tokio::test]
async fn a_local_edit_in_the_checkout_fails_no_batch_mate_and_survives() {
    let root = tempfile::tempdir().unwrap();
    let repo = repo_with_test_script(root.path());
    std::fs::write(repo.join("shared.txt"), "original\n").unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "a shared file"]);
    let config = "[merge_queue]\nbatch_max = 4\n[compass]\nmax_concurrent_tasks = 4\n";
    let service = Service::start_in_process(root.path(), with_config(config)).await;
    let patches = [
        ("Rewrite shared", "echo changed > shared.txt"),
        ("Add f1", "echo ok > f1.txt"),
        ("Add f2", "echo ok > f2.txt"),
    ];
    let mut ids = Vec::new();
    for (title, patch) in patches {
        let mut body = task(&repo, title, patch, "sh test.sh");
        body["review_policy"] = json!("manual");
        ids.push(
            service.submit(&body).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    for id in &ids {
        service
            .wait_for_task(id, Duration::from_secs(60), |t| {
                t["status"] == "awaiting_approval"
            })
            .await;
    }
    let local_edit = b"my local edit, not committed\r\nno newline at the end";
    std::fs::write(repo.join("shared.txt"), local_edit).unwrap();
    for id in &ids {
        let (status, body) = service
            .post(&format!("/v1/tasks/{id}/approve"), &json!({}))
            .await;
        assert_eq!(status, 200, "{body:#}");
    }
    for id in &ids {
        let done = service
            .wait_finished_within(id, Duration::from_secs(90))
            .await;
        assert_eq!(done["status"], "done", "{done:#}");
        assert_eq!(landings_of(&repo, id), 1, "{done:#}");
    }
    assert_eq!(git(&repo, &["show", "main:shared.txt"]), "changed");
    assert_eq!(git(&repo, &["show", "main:f1.txt"]), "ok");
    assert_eq!(git(&repo, &["show", "main:f2.txt"]), "ok");
    assert_eq!(std::fs::read(repo.join("shared.txt")).unwrap(), local_edit);
    let stale = events_of(&service, &ids[0], "merge.checkout_stale").await;
    assert_eq!(stale.len(), 1, "{stale:#?}");
    assert_eq!(
        stale[0]["data"]["files"],
        json!(["shared.txt"]),
        "{stale:#?}"
    );
}

/// Eight landings in a row into a checkout on `main` holding a modified tracked file and an
/// untracked one — and, every other time, an untracked file where the task adds one: the
/// developer's files survive each landing byte for byte; a landing nothing is in the way of
/// brings its file into the checkout, one that is in the way leaves the checkout behind and
/// says so. (A checkout update that overwrote local files 1 time in 4 would fail here.)
#[tokio::test]
async fn untracked_and_modified_files_in_the_checkout_survive_every_landing() {
    let root = tempfile::tempdir().unwrap();
    let repo = repo_with_test_script(root.path());
    let service = Service::start_in_process(root.path(), Options::default()).await;
    for n in 0..8 {
        let readme = format!("# demo\nlocal edit {n}\n");
        let notes = format!("untracked notes {n}");
        let mine = format!("the developer's own f{n}");
        std::fs::write(repo.join("README.md"), &readme).unwrap();
        std::fs::write(repo.join("notes.txt"), &notes).unwrap();
        let in_the_way = n % 2 == 1;
        let file = format!("f{n}.txt");
        if in_the_way {
            std::fs::write(repo.join(&file), &mine).unwrap();
        }
        let body = task(
            &repo,
            &format!("Add {file}"),
            &format!("echo ok > {file}"),
            "sh test.sh",
        );
        let id = service.submit(&body).await["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let done = service
            .wait_finished_within(&id, Duration::from_secs(60))
            .await;
        assert_eq!(done["status"], "done", "round {n}: {done:#}");
        assert_eq!(git(&repo, &["show", &format!("main:{file}")]), "ok");
        assert_eq!(
            std::fs::read_to_string(repo.join("README.md")).unwrap(),
            readme,
            "round {n}"
        );
        assert_eq!(
            std::fs::read_to_string(repo.join("notes.txt")).unwrap(),
            notes,
            "round {n}"
        );
        let stale = events_of(&service, &id, "merge.checkout_stale").await;
        if in_the_way {
            assert_eq!(
                std::fs::read_to_string(repo.join(&file)).unwrap(),
                mine,
                "round {n}"
            );
            assert_eq!(stale.len(), 1, "round {n}: {stale:#?}");
            assert_eq!(stale[0]["data"]["files"], json!([file]), "round {n}");
        } else {
            assert_eq!(
                std::fs::read_to_string(repo.join(&file)).unwrap(),
                "ok\n",
                "round {n}"
            );
            assert!(stale.is_empty(), "round {n}: {stale:#?}");
        }
    }
}

/// A single task whose branch sits on the base and whose tree Circuit passed lands the quick way:
/// no scratch worktree is made, the landed commit is one squash commit on the old base with the
/// branch tip's tree and the task's trailers, and clean-up leaves no branch, worktree or
/// registration behind.
#[tokio::test]
async fn a_single_change_on_the_base_lands_without_a_scratch_worktree() {
    let root = tempfile::tempdir().unwrap();
    let repo = repo_with_test_script(root.path());
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let base_before = git(&repo, &["rev-parse", "main"]);
    let body = task(&repo, "Quick change", "echo ok > f1.txt", "sh test.sh");
    let id = service.submit(&body).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let done = service
        .wait_finished_within(&id, Duration::from_secs(60))
        .await;
    assert_eq!(done["status"], "done", "{done:#}");
    let commit = done["commit"].as_str().unwrap();
    assert_eq!(git(&repo, &["rev-parse", "main"]), commit);
    let parents = git(&repo, &["rev-list", "--parents", "-n", "1", commit]);
    assert_eq!(
        parents,
        format!("{commit} {base_before}"),
        "one squash on the old base"
    );
    let message = git(&repo, &["log", "-1", "--format=%B", commit]);
    assert!(message.starts_with("Quick change\n\n"), "{message}");
    assert!(
        message.ends_with(&format!("Glitchlab-Task: {id}\nGlitchlab-Attempts: 1")),
        "{message}"
    );
    assert_eq!(
        git(&repo, &["log", "-1", "--format=%an <%ae>", commit]),
        "glitchlab <glitchlab@localhost>"
    );
    let candidates = events_of(&service, &id, "merge.candidate").await;
    assert_eq!(candidates.len(), 1, "{candidates:#?}");
    assert_eq!(candidates[0]["data"]["fast"], true, "{candidates:#?}");
    assert!(
        !root.path().join("data/merge-queue").exists(),
        "a scratch worktree was made"
    );
    // The checkout, on the base and clean, moved along.
    assert_eq!(
        std::fs::read_to_string(repo.join("f1.txt")).unwrap(),
        "ok\n"
    );
    assert_eq!(git(&repo, &["status", "--porcelain"]), "");
    let branch = format!("glitchlab/{id}");
    let worktree = root.path().join("data/worktrees").join(&id);
    let admin = repo.join(".git/worktrees").join(&id);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline
        && (worktree.exists()
            || admin.exists()
            || !git(&repo, &["branch", "--list", &branch]).is_empty())
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !worktree.exists() && !admin.exists(),
        "the worktree or its registration is left"
    );
    assert_eq!(
        git(&repo, &["branch", "--list", &branch]),
        "",
        "the branch is left"
    );
    assert_eq!(
        git(&repo, &["worktree", "list", "--porcelain"])
            .lines()
            .filter(|l| l.starts_with("worktree "))
            .count(),
        1
    );
}
