//! Compass runs the work: limits, priorities, dependencies, the queue bound, approval gates,
//! transient retries and dead letters, retry, history for the planner, and the report.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{git, git_repo, shell_task, wait_group_gone, with_config, Options, Service};

/// `waiting_for` of a task back from its merge queue until it has a slot again.
const SLOT_WAIT: &str = "a free slot (compass.max_concurrent_tasks)";

fn id_of(task: &Value) -> String {
    task["id"].as_str().unwrap().to_owned()
}

fn started_at(task: &Value) -> String {
    task["started_at"].as_str().unwrap().to_owned()
}

/// At most `max_concurrent_tasks` tasks work at once. A task waiting in its merge queue (stage
/// `deliver`) holds no slot (issue #23: waiting costs no slot), up to `max_parked_tasks` of them,
/// so those are counted apart and bounded by that limit; so is one sent back from it that waits
/// for its slot (`waiting_for`).
#[tokio::test]
async fn never_more_than_max_concurrent_tasks_run_and_all_finish() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let service = Service::start_in_process(
        root.path(),
        with_config("[compass]\nmax_concurrent_tasks = 2\nmax_parked_tasks = 1\n"),
    )
    .await;
    let mut ids = Vec::new();
    for n in 0..6 {
        let patch = format!("sleep 0.4; echo {n} > file-{n}.txt");
        ids.push(id_of(
            &service.submit(&shell_task(&repo, &patch, "true")).await,
        ));
    }
    let mut most_running = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, list) = service.get("/v1/tasks").await;
        let tasks = list["tasks"].as_array().unwrap();
        let running = tasks.iter().filter(|t| t["status"] == "running");
        // Back from its merge queue with work to do, a task says it waits for a slot until it
        // has one (`waiting_for`): it is not working yet.
        let for_slot = |t: &&Value| t["waiting_for"] == SLOT_WAIT;
        let working = running
            .clone()
            .filter(|t| t["stage"] != "deliver" && !for_slot(t))
            .count();
        let waiting = running
            .filter(|t| t["stage"] == "deliver" || for_slot(t))
            .count();
        most_running = most_running.max(working);
        assert!(
            working <= 2,
            "{working} tasks working at once: {:#}",
            tasks
                .iter()
                .map(|t| format!(
                    "{} {} {} a={}",
                    t["id"], t["status"], t["stage"], t["attempts"]
                ))
                .collect::<Vec<_>>()
                .join("; ")
        );
        assert!(
            working + waiting <= 3,
            "{working} working and {waiting} waiting in the merge queue: more than 2 slots + 1 parked"
        );
        if tasks.iter().all(|t| t["status"] == "done") {
            break;
        }
        assert!(Instant::now() < deadline, "tasks did not finish: {list:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(most_running, 2, "the two slots were never both used");
    for n in 0..6 {
        assert!(repo.join(format!("file-{n}.txt")).exists());
    }
}

/// Where a task's implement and verify runs were, in ms since the epoch (a run's id is a UUID v7
/// made when it starts; its end is that plus its duration). Merge-queue runs (stage `deliver`)
/// hold no slot and are left out.
async fn working_intervals(service: &Service, id: &str) -> Vec<(u64, u64, String)> {
    let (_, runs) = service.get(&format!("/v1/tasks/{id}/runs")).await;
    runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|run| run["stage"] == "implement" || run["stage"] == "verify")
        .map(|run| {
            let hex = run["id"].as_str().unwrap().replace('-', "");
            let start = u64::from_str_radix(&hex[..12], 16).unwrap();
            let end = start + run["duration_ms"].as_u64().unwrap();
            let what = format!("{} attempt {}", run["stage"], run["attempt"]);
            (start, end, what)
        })
        .collect()
}

/// A task its merge queue sends back to implement (the base moved under it: a conflict) while
/// the only slot is taken waits for the slot: its second implement never runs while another
/// task implements or verifies. Before, leaving the queue took the slot back at once and two
/// tasks worked under `max_concurrent_tasks = 1`.
#[tokio::test]
async fn a_task_sent_back_from_its_merge_queue_waits_for_a_free_slot() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let service = Service::start_in_process(
        root.path(),
        with_config("[compass]\nmax_concurrent_tasks = 1\nmax_parked_tasks = 1\n"),
    )
    .await;
    let conflicting = crate::pipeline::moves_base_then(
        &repo,
        "changed on main",
        "echo 'changed by the task' > README.md",
    );
    let sent_back = id_of(
        &service
            .submit(&shell_task(&repo, &conflicting, "true"))
            .await,
    );
    // Starts when the first one parks in its merge queue, and works for 4 s.
    let busy = id_of(
        &service
            .submit(&shell_task(&repo, "sleep 4; echo busy > busy.txt", "true"))
            .await,
    );
    // Sent back while the other works, it says what it waits for instead of looking busy. (Not
    // "until it stops running": right after the submit it is still `queued`.)
    let waiting = service
        .wait_for_task(&sent_back, Duration::from_secs(30), |t| {
            t["waiting_for"] == SLOT_WAIT
                || matches!(
                    t["status"].as_str(),
                    Some("done" | "failed" | "cancelled" | "dead_letter")
                )
        })
        .await;
    assert_eq!(waiting["waiting_for"], SLOT_WAIT, "{waiting:#}");
    assert_eq!(waiting["stage"], "implement", "{waiting:#}");
    for id in [&sent_back, &busy] {
        let task = service.wait_until_finished(id).await;
        assert_eq!(task["status"], "done", "{task:#}");
    }
    let task = service.wait_until_finished(&sent_back).await;
    assert_eq!(
        task["failures"][0]["error"]["code"], "MERGE_CONFLICT",
        "{task:#}"
    );
    assert!(task.get("waiting_for").is_none(), "{task:#}");
    let first = working_intervals(&service, &sent_back).await;
    let second = working_intervals(&service, &busy).await;
    for (start, end, what) in &first {
        for (other_start, other_end, other_what) in &second {
            assert!(
                end <= other_start || other_end <= start,
                "the sent-back task's {what} ({start}..{end}) overlapped the other's \
                 {other_what} ({other_start}..{other_end})"
            );
        }
    }
}

#[tokio::test]
async fn a_critical_task_submitted_after_a_low_one_starts_first() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let service = Service::start_in_process(
        root.path(),
        with_config("[compass]\nmax_concurrent_tasks = 1\n"),
    )
    .await;
    let busy = service
        .submit(&shell_task(&repo, "sleep 1; echo busy > busy.txt", "true"))
        .await;
    service
        .wait_for_task(&id_of(&busy), Duration::from_secs(30), |t| {
            t["status"] == "running"
        })
        .await;
    let mut low = shell_task(&repo, "echo low > low.txt", "true");
    low["priority"] = json!("low");
    let low = service.submit(&low).await;
    let mut critical = shell_task(&repo, "echo critical > critical.txt", "true");
    critical["priority"] = json!("critical");
    let critical = service.submit(&critical).await;

    let low = service.wait_until_finished(&id_of(&low)).await;
    let critical = service.wait_until_finished(&id_of(&critical)).await;
    assert_eq!(
        (low["status"].as_str(), critical["status"].as_str()),
        (Some("done"), Some("done"))
    );
    assert!(
        started_at(&critical) < started_at(&low),
        "critical {critical:#} low {low:#}"
    );
}

#[tokio::test]
async fn a_dependent_task_waits_for_its_dependency_and_then_runs() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let first = service
        .submit(&shell_task(&repo, "sleep 1; echo one > one.txt", "true"))
        .await;
    let mut second = shell_task(&repo, "echo two > two.txt", "test -f one.txt");
    second["deps"] = json!([id_of(&first)]);
    let second = service.submit(&second).await;
    assert_eq!(second["status"], "blocked");
    assert_eq!(second["blocked_by"], json!([id_of(&first)]));
    let (_, report) = service.get("/v1/report").await;
    let blocked = report["blocked"].as_array().unwrap();
    assert_eq!(
        blocked[0]["blocked_by"],
        json!([id_of(&first)]),
        "{report:#}"
    );

    let first = service.wait_until_finished(&id_of(&first)).await;
    let second = service.wait_until_finished(&id_of(&second)).await;
    assert_eq!(second["status"], "done", "{second:#}");
    assert!(started_at(&second).as_str() > first["finished_at"].as_str().unwrap());
    assert!(service
        .event_kinds(&id_of(&second))
        .await
        .contains(&"task.unblocked".to_owned()));
}

#[tokio::test]
async fn a_dependent_task_fails_when_its_dependency_fails() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let mut failing = shell_task(&repo, "sleep 0.5; echo x > x.txt", "echo nope; exit 1");
    failing["max_attempts"] = json!(1);
    let failing = service.submit(&failing).await;
    let mut dependent = shell_task(&repo, "echo y > y.txt", "true");
    dependent["deps"] = json!([id_of(&failing)]);
    let dependent = service.submit(&dependent).await;
    let mut transitive = shell_task(&repo, "echo z > z.txt", "true");
    transitive["deps"] = json!([id_of(&dependent)]);
    let transitive = service.submit(&transitive).await;

    let dependent = service.wait_until_finished(&id_of(&dependent)).await;
    assert_eq!(dependent["status"], "failed");
    assert_eq!(dependent["error"]["code"], "DEPENDENCY_FAILED");
    assert!(dependent["error"]["message"]
        .as_str()
        .unwrap()
        .contains(&id_of(&failing)));
    let transitive = service.wait_until_finished(&id_of(&transitive)).await;
    assert_eq!(transitive["error"]["code"], "DEPENDENCY_FAILED");
    assert!(!repo.join("y.txt").exists());

    let mut unknown = shell_task(&repo, "true", "true");
    unknown["deps"] = json!(["01234567-89ab-7def-8123-456789abcdef"]);
    let (status, body) = service.post("/v1/tasks", &unknown).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("UNKNOWN_DEPENDENCY"))
    );
}

#[tokio::test]
async fn a_full_queue_answers_429_with_retry_after() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let config = "[compass]\nmax_concurrent_tasks = 1\nmax_queued_tasks = 2\n";
    let service = Service::start_in_process(root.path(), with_config(config)).await;
    // Busy for longer than the rest of the test takes on a loaded machine: it must still hold
    // the only slot when the report is read (the service's stop ends it).
    let busy = service
        .submit(&shell_task(&repo, "sleep 30; echo a > a.txt", "true"))
        .await;
    service
        .wait_for_task(&id_of(&busy), Duration::from_secs(30), |t| {
            t["status"] == "running"
        })
        .await;
    service
        .submit(&shell_task(&repo, "echo b > b.txt", "true"))
        .await;
    service
        .submit(&shell_task(&repo, "echo c > c.txt", "true"))
        .await;
    let (status, headers, body) = service
        .post_full("/v1/tasks", &shell_task(&repo, "echo d > d.txt", "true"))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("QUEUE_FULL")),
        "{body}"
    );
    assert!(headers.get("retry-after").is_some());
    // The two places were taken at admission; they count in Compass's queue once Compass has
    // taken the submissions in, which a loaded machine may delay past the refusal above.
    let deadline = Instant::now() + Duration::from_secs(10);
    let report = loop {
        let (_, report) = service.get("/v1/report").await;
        if report["queue_depth"] == 2 || Instant::now() > deadline {
            break report;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(report["queue_depth"], 2, "{report:#}");
    assert_eq!(report["counts"]["queued"], 2);
    assert_eq!(report["running"][0]["id"], busy["id"]);
}

/// The queue bound holds under 64 concurrent submitters: a place is reserved at admission, so
/// submits that race past each other before Compass has queued them cannot overshoot it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submits_never_overshoot_the_queue_bound() {
    const SUBMITTERS: usize = 64;
    const QUEUE_MAX: usize = 5;
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let config = format!("[compass]\nmax_concurrent_tasks = 1\nmax_queued_tasks = {QUEUE_MAX}\n");
    let service = Service::start_in_process(root.path(), with_config(&config)).await;
    let busy = service
        .submit(&shell_task(&repo, "sleep 30; echo a > a.txt", "true"))
        .await;
    service
        .wait_for_task(&id_of(&busy), Duration::from_secs(30), |t| {
            t["status"] == "running"
        })
        .await;
    let client = crate::helpers::client();
    let mut submits = tokio::task::JoinSet::new();
    for n in 0..SUBMITTERS {
        let (client, url) = (client.clone(), format!("{}/v1/tasks", service.base));
        let body = shell_task(&repo, &format!("echo {n} > f{n}.txt"), "true");
        submits.spawn(async move {
            let response = client.post(url).json(&body).send().await.unwrap();
            response.status().as_u16()
        });
    }
    let mut statuses = Vec::new();
    while let Some(status) = submits.join_next().await {
        statuses.push(status.unwrap());
    }
    let accepted = statuses.iter().filter(|s| **s == 201).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(accepted + refused, SUBMITTERS, "{statuses:?}");
    assert!(
        accepted <= QUEUE_MAX && accepted > 0,
        "{accepted} accepted with a bound of {QUEUE_MAX}"
    );
    let (_, report) = service.get("/v1/report").await;
    assert_eq!(report["counts"]["queued"], accepted, "{report}");
}

#[tokio::test]
async fn cancel_kills_a_running_verify_removes_the_worktree_and_keeps_the_branch() {
    // It bounds the kill at 2 s after the cancel: no browser or load test starts beside it (it
    // missed that bound twice in full runs with them, and passes alone in ~1.7 s).
    let _machine = crate::helpers::latency_bound().await;
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let pid_file = root.path().join("verify.pid");
    let verify = format!("echo $$ > {}; sleep 60", pid_file.display());
    let task = service
        .submit(&shell_task(&repo, "echo hello > hello.txt", &verify))
        .await;
    let id = id_of(&task);
    service
        .wait_for_task(&id, Duration::from_secs(30), |_| {
            std::fs::read_to_string(&pid_file).is_ok_and(|text| text.ends_with('\n'))
        })
        .await;
    let pgid = crate::helpers::group_of_shell(&pid_file);

    let cancelled_at = Instant::now();
    let (status, cancelled) = service
        .post(&format!("/v1/tasks/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(
        (status, cancelled["status"].as_str()),
        (200, Some("cancelled"))
    );
    assert!(
        wait_group_gone(
            pgid,
            Duration::from_secs(2).saturating_sub(cancelled_at.elapsed())
        )
        .await,
        "the verify command outlived the cancel by 2 s"
    );
    let worktree = root.path().join("data/worktrees").join(&id);
    let deadline = Instant::now() + Duration::from_secs(5);
    while worktree.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!worktree.exists(), "the worktree was kept");
    assert_eq!(
        git(&repo, &["show", &format!("glitchlab/{id}:hello.txt")]),
        "hello"
    );
    assert_eq!(
        service.get(&format!("/v1/tasks/{id}")).await.1["status"],
        "cancelled"
    );
}

#[tokio::test]
async fn manual_review_waits_for_approval_and_reject_cancels() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let main_before = git(&repo, &["rev-parse", "main"]);
    let mut body = shell_task(&repo, "echo reviewed > reviewed.txt", "true");
    body["review_policy"] = json!("manual");
    let approved = service.submit(&body).await;
    let id = id_of(&approved);
    let waiting = service
        .wait_for_task(&id, Duration::from_secs(30), |t| {
            t["status"] == "awaiting_approval"
        })
        .await;
    assert_eq!(waiting["stage"], "approve");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        git(&repo, &["rev-parse", "main"]),
        main_before,
        "delivered before approval"
    );
    let (_, actors) = service.get("/v1/actors").await;
    assert!(
        !actors.to_string().contains(&format!("pipeline-{id}")),
        "a parked task holds a slot"
    );

    let (status, after) = service
        .post(
            &format!("/v1/tasks/{id}/approve"),
            &json!({"comment": "ship it"}),
        )
        .await;
    assert_eq!(status, 200, "{after}");
    let done = service.wait_until_finished(&id).await;
    assert_eq!(done["status"], "done");
    assert!(repo.join("reviewed.txt").exists());
    let kinds = service.event_kinds(&id).await;
    assert!(
        kinds.contains(&"approval.requested".to_owned())
            && kinds.contains(&"task.approved".to_owned())
    );

    // Work of its own: the same change again would be a no-op on the new main (`NO_CHANGES`).
    let mut body = shell_task(&repo, "echo rejected > rejected.txt", "true");
    body["review_policy"] = json!("manual");
    let rejected = service.submit(&body).await;
    let rejected_id = id_of(&rejected);
    service
        .wait_for_task(&rejected_id, Duration::from_secs(30), |t| {
            t["status"] == "awaiting_approval"
        })
        .await;
    let (status, after) = service
        .post(
            &format!("/v1/tasks/{rejected_id}/reject"),
            &json!({"comment": "not this way"}),
        )
        .await;
    assert_eq!((status, after["status"].as_str()), (200, Some("cancelled")));
    assert!(service
        .event_kinds(&rejected_id)
        .await
        .contains(&"task.rejected".to_owned()));
    let (status, body) = service
        .post(&format!("/v1/tasks/{id}/approve"), &json!({}))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("INVALID_TASK_STATUS"))
    );
}

#[tokio::test]
async fn two_tasks_editing_one_file_never_break_main() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    std::fs::write(repo.join("shared.txt"), "base\n").unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-qm", "shared file"]);
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let verify = "test \"$(wc -l < shared.txt)\" -eq 1";
    let first = service
        .submit(&shell_task(
            &repo,
            "sleep 0.3; echo first > shared.txt",
            verify,
        ))
        .await;
    let second = service
        .submit(&shell_task(
            &repo,
            "sleep 0.3; echo second > shared.txt",
            verify,
        ))
        .await;
    let first = service.wait_until_finished(&id_of(&first)).await;
    let second = service.wait_until_finished(&id_of(&second)).await;

    let outcomes = [&first, &second].map(|t| {
        (
            t["status"].as_str().unwrap().to_owned(),
            t["error"]["code"].as_str().map(str::to_owned),
        )
    });
    let done = outcomes
        .iter()
        .filter(|(status, _)| status == "done")
        .count();
    let conflicts = outcomes
        .iter()
        .filter(|(_, code)| code.as_deref() == Some("MERGE_CONFLICT"))
        .count();
    assert!(
        done >= 1 && done + conflicts == 2,
        "{outcomes:?} {:#} {:#}",
        first["error"],
        second["error"]
    );
    let content = std::fs::read_to_string(repo.join("shared.txt")).unwrap();
    assert!(
        content == "first\n" || content == "second\n",
        "main is broken: {content:?}"
    );
    assert_eq!(git(&repo, &["status", "--porcelain"]), "");
}

#[tokio::test]
async fn a_transient_engine_kill_is_retried_with_backoff() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let config = "[retry]\nmax = 2\nbase_backoff_ms = 20\nmax_backoff_ms = 100\n";
    let service = Service::start_in_process(root.path(), with_config(config)).await;
    let marker = root.path().join("killed-once");
    let patch = format!(
        "if [ ! -f {m} ]; then touch {m}; kill -KILL $$; fi; echo hello > hello.txt",
        m = marker.display()
    );
    let task = service
        .submit(&shell_task(&repo, &patch, "test -f hello.txt"))
        .await;
    let task = service.wait_until_finished(&id_of(&task)).await;
    assert_eq!(task["status"], "done", "{task:#}");
    assert_eq!(
        task["attempts"], 1,
        "a transient failure does not use up an attempt"
    );
    assert_eq!(task["failures"][0]["error"]["code"], "ENGINE_KILLED");
    assert!(service
        .event_kinds(&id_of(&task))
        .await
        .contains(&"stage.retry_scheduled".to_owned()));

    let always = service
        .submit(&shell_task(&repo, "kill -KILL $$", "true"))
        .await;
    let always = service.wait_until_finished(&id_of(&always)).await;
    assert_eq!(always["status"], "dead_letter", "{always:#}");
    assert_eq!(always["error"]["code"], "ENGINE_KILLED");
    assert_eq!(
        always["failures"].as_array().unwrap().len(),
        3,
        "first try and two retries"
    );
    let (_, runs) = service
        .get(&format!("/v1/tasks/{}/runs", id_of(&always)))
        .await;
    assert_eq!(
        runs["runs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["persona"] == "patch")
            .count(),
        3
    );
    assert!(service
        .event_kinds(&id_of(&always))
        .await
        .contains(&"task.escalated".to_owned()));
}

#[tokio::test]
async fn retry_requeues_a_dead_lettered_task() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let allow = root.path().join("allow");
    let verify = format!(
        "test -f {} || {{ echo 'not allowed yet'; exit 1; }}",
        allow.display()
    );
    let mut body = shell_task(&repo, "echo hello > hello.txt", &verify);
    body["max_attempts"] = json!(1);
    let task = service.submit(&body).await;
    let id = id_of(&task);
    assert_eq!(
        service.wait_until_finished(&id).await["status"],
        "dead_letter"
    );

    std::fs::write(&allow, "").unwrap();
    let (status, retried) = service
        .post(&format!("/v1/tasks/{id}/retry"), &json!({}))
        .await;
    assert_eq!(status, 200, "{retried}");
    let done = service.wait_until_finished(&id).await;
    assert_eq!(done["status"], "done", "{done:#}");
    assert!(service
        .event_kinds(&id)
        .await
        .contains(&"task.retried".to_owned()));
    let (status, body) = service
        .post(&format!("/v1/tasks/{id}/retry"), &json!({}))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("INVALID_TASK_STATUS"))
    );

    let (_, report) = service.get("/v1/report").await;
    assert_eq!(report["finished_last_hour"]["counts"]["done"], 1);
    assert!(report["finished_last_hour"]["median_secs_to_done"]
        .as_f64()
        .is_some());
}

#[tokio::test]
async fn the_planner_prompt_carries_earlier_failures_on_the_repo() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let mut failing = shell_task(
        &repo,
        "echo x > x.txt",
        "echo BOOM-4711 broke the build; exit 1",
    );
    failing["max_attempts"] = json!(1);
    let failing = service.submit(&failing).await;
    service.wait_until_finished(&id_of(&failing)).await;

    let copy = root.path().join("planner-prompt.md");
    let plan = r#"{"summary":"s","steps":[{"title":"t","files":[],"rationale":"r"}],"risk":"low"}"#;
    let mut next = shell_task(&repo, "echo ok > ok.txt", "true");
    next["engines"]["planner"] = json!({"kind": "shell", "command": format!("cp \"$GLITCHLAB_PROMPT_FILE\" {}; echo '{plan}'", copy.display())});
    let next = service.submit(&next).await;
    assert_eq!(
        service.wait_until_finished(&id_of(&next)).await["status"],
        "done"
    );
    let prompt = std::fs::read_to_string(&copy).unwrap();
    assert!(
        prompt.contains("BOOM-4711") && prompt.contains(&id_of(&failing)),
        "{prompt}"
    );
    assert!(prompt.contains("VERIFY_FAILED"));
}

#[tokio::test]
async fn a_docs_task_runs_only_its_templates_stages() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let service = Service::start_in_process(root.path(), Options::default()).await;
    let mut body = shell_task(&repo, "echo '# Guide' > GUIDE.md", "false");
    body["kind"] = json!("docs");
    let task = service.submit(&body).await;
    assert_eq!(task["stages"], json!(["implement", "deliver"]));
    let task = service.wait_until_finished(&id_of(&task)).await;
    assert_eq!(task["status"], "done", "{task:#}");
    assert!(repo.join("GUIDE.md").exists());
    let (_, runs) = service
        .get(&format!("/v1/tasks/{}/runs", id_of(&task)))
        .await;
    let personas: Vec<&str> = runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["persona"].as_str().unwrap())
        .collect();
    assert_eq!(personas, ["patch"], "no plan, no verify for docs");
}

/// Racers, and rounds each, of a cancel racing a task's delivery (loopback only): 60 in all.
const CANCEL_RACERS: usize = 4;
const CANCEL_RACE_ROUNDS: usize = 15;

/// What one round of the race came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RaceEnd {
    Won,
    Finished,
    Landing,
}

/// A cancel racing a task's end, repeated by 4 clients at once on one repository: every cancel
/// answered 2xx ends `cancelled` with nothing of the task on the base; a `409 TASK_FINISHED` is
/// only said of a task that ended, and a `409 TASK_LANDING` of one whose change the queue was
/// putting on the base (it ends `done`, landed once).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancel_racing_delivery_wins_when_answered_2xx() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let service = std::sync::Arc::new(Service::start(root.path()).await);
    let mut racers = Vec::new();
    for racer in 0..CANCEL_RACERS {
        let (service, repo) = (service.clone(), repo.clone());
        racers.push(tokio::spawn(async move {
            let mut ends = Vec::new();
            for round in 0..CANCEL_RACE_ROUNDS {
                ends.push(race_once(&service, &repo, racer * 100 + round).await);
            }
            ends
        }));
    }
    let mut ends = Vec::new();
    for racer in racers {
        ends.extend(racer.await.unwrap());
    }
    let count = |end| ends.iter().filter(|e| **e == end).count();
    eprintln!(
        "cancel race: {} cancels won, {} TASK_FINISHED, {} TASK_LANDING",
        count(RaceEnd::Won),
        count(RaceEnd::Finished),
        count(RaceEnd::Landing)
    );
}

/// Submits a task, cancels it somewhere in its delivery window, checks the contract.
async fn race_once(service: &Service, repo: &std::path::Path, round: usize) -> RaceEnd {
    let patch = format!("echo {round} > race{round}.txt");
    let id = id_of(&service.submit(&shell_task(repo, &patch, "true")).await);
    service
        .wait_for_task(&id, Duration::from_secs(120), |t| {
            t["stage"] == "deliver" || t["status"] == "done"
        })
        .await;
    // Spread the cancel over the delivery window and past it: 0 to 280 ms after deliver began.
    tokio::time::sleep(Duration::from_millis((round as u64 % 15) * 20)).await;
    let (status, answer) = service
        .post(&format!("/v1/tasks/{id}/cancel"), &json!({}))
        .await;
    let ended = service
        .wait_finished_within(&id, Duration::from_secs(120))
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let grep = format!("--grep=Glitchlab-Task: {id}");
    let landed = git(
        repo,
        &["log", "--format=%H", "--fixed-strings", &grep, "main"],
    );
    if (200..300).contains(&status) {
        assert_eq!(ended["status"], "cancelled", "round {round}: {ended:#}");
        assert!(
            landed.is_empty(),
            "round {round}: a cancelled task landed {landed}"
        );
        return RaceEnd::Won;
    }
    assert_eq!(status, 409, "round {round}: {answer:#}");
    assert_eq!(ended["status"], "done", "round {round}: {ended:#}");
    assert_eq!(landed.lines().count(), 1, "round {round}: {ended:#}");
    match answer["error"]["code"].as_str() {
        Some("TASK_FINISHED") => RaceEnd::Finished,
        Some("TASK_LANDING") => RaceEnd::Landing,
        _ => panic!("round {round}: {answer:#}"),
    }
}
