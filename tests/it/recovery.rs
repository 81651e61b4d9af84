//! Durability: `kill -9` and SIGTERM in the middle of a stage lose nothing.

use std::time::Duration;

use crate::helpers::{
    git, git_repo, process_group_alive, shell_task, wait_group_gone, Options, Service,
};

/// A verify command that hangs the first time it runs (recording its process group in `marker`)
/// and passes on every later run.
fn verify_that_hangs_once(marker: &std::path::Path) -> String {
    format!(
        "if [ ! -f {m} ]; then echo $$ > {m}; sleep 60; fi; test -f hello.txt",
        m = marker.display()
    )
}

async fn wait_for_marker(service: &Service, id: &str, marker: &std::path::Path) -> i32 {
    let task = service
        .wait_for_task(id, Duration::from_secs(30), |task| {
            task["stage"] == "verify"
                && std::fs::read_to_string(marker).is_ok_and(|t| t.ends_with('\n'))
        })
        .await;
    assert_eq!(task["status"], "running");
    crate::helpers::group_of_shell(marker)
}

#[tokio::test]
async fn kill_9_during_verify_then_restart_finishes_the_task() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let marker = root.path().join("verify-started");
    let mut service = Service::start(root.path()).await;
    let task = service
        .submit(&shell_task(
            &repo,
            "echo hello > hello.txt",
            &verify_that_hangs_once(&marker),
        ))
        .await;
    let id = task["id"].as_str().unwrap().to_owned();
    let orphan = wait_for_marker(&service, &id, &marker).await;

    service.kill_9();
    // kill -9 gives the service no chance to stop its verify. Unconfined, the verify outlives it;
    // in namespaces (`bwrap --die-with-parent`) it dies with it.
    let _outlived = process_group_alive(orphan);

    // The restarted service finds the orphan by its instance mark and kills it.
    let service = Service::start(root.path()).await;
    assert!(
        wait_group_gone(orphan, Duration::from_secs(2)).await,
        "the orphaned verify of the killed service still runs"
    );
    let task = service.wait_until_finished(&id).await;
    assert_eq!(task["status"], "done", "{task:#}");
    assert_eq!(task["attempts"], 1);
    assert_eq!(
        task["commit"].as_str().unwrap(),
        git(&repo, &["rev-parse", "main"])
    );
    let kinds = service.event_kinds(&id).await;
    assert!(kinds.contains(&"task.resumed".to_owned()), "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| *k == "task.submitted").count(), 1);
    let (_, runs) = service.get(&format!("/v1/tasks/{id}/runs")).await;
    let verify_runs: Vec<&str> = runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["persona"] == "circuit")
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        verify_runs,
        ["interrupted", "finished"],
        "the cut-off verify is on record as interrupted, then the rerun: {runs:#}"
    );
    assert!(
        kinds.contains(&"engine.interrupted".to_owned()),
        "{kinds:?}"
    );
}

#[tokio::test]
async fn sigterm_stops_cleanly_and_the_next_start_resumes_in_flight_work() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let marker = root.path().join("verify-started");
    let mut service = Service::start(root.path()).await;
    let task = service
        .submit(&shell_task(
            &repo,
            "echo hello > hello.txt",
            &verify_that_hangs_once(&marker),
        ))
        .await;
    let id = task["id"].as_str().unwrap().to_owned();
    let verify_group = wait_for_marker(&service, &id, &marker).await;

    let status = service.terminate(Duration::from_secs(20));
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        service.log()
    );
    // Killed on shutdown; give init a moment to reap the orphaned zombies.
    assert!(
        wait_group_gone(verify_group, Duration::from_secs(2)).await,
        "shutdown left the verify command running"
    );

    let service = Service::start(root.path()).await;
    let task = service.wait_until_finished(&id).await;
    assert_eq!(task["status"], "done", "{task:#}");
    assert!(service
        .event_kinds(&id)
        .await
        .contains(&"task.resumed".to_owned()));
}

/// A `packed-refs.lock` whose writer died (planted here, a minute old, as a `kill -9` in the
/// middle of a ref change leaves it) would refuse every branch change in the repository for
/// good: the task's retry removes it, says so, and the task lands. A fresh lock is a live
/// writer's and is left alone.
#[tokio::test]
async fn an_abandoned_ref_lock_is_removed_and_the_task_lands() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let lock = repo.join(".git/packed-refs.lock");
    std::fs::write(&lock, "").unwrap();
    let file = std::fs::File::options().write(true).open(&lock).unwrap();
    file.set_modified(std::time::SystemTime::now() - Duration::from_secs(60))
        .unwrap();
    drop(file);
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let task = service
        .submit(&shell_task(&repo, "echo hello > hello.txt", "true"))
        .await;
    let id = task["id"].as_str().unwrap().to_owned();
    let task = service.wait_until_finished(&id).await;
    assert_eq!(task["status"], "done", "{task:#}");
    assert!(!lock.exists());
    let (_, events) = service.get(&format!("/v1/tasks/{id}/events")).await;
    let removed: Vec<&serde_json::Value> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|event| event["kind"] == "git.stale_lock_removed")
        .collect();
    assert_eq!(removed.len(), 1, "{events:#}");
    assert!(
        removed[0]["data"]["path"]
            .as_str()
            .unwrap()
            .ends_with("packed-refs.lock"),
        "{removed:#?}"
    );
}
