//! `delivery: pull_request` against the fake GitHub (`github_fake`): real bare repositories as
//! the remotes, scripted CI and reviewers, rate limits, outages, App tokens, crashes.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};

use crate::github_fake::{Fake, Fault, ScriptedCheck, ScriptedReview, TOKEN};
use crate::helpers::{with_config, Options, Service};
use crate::remote::{remote, remote_git};

/// The environment variable the services read the fake's token from.
const TOKEN_ENV: &str = "GLITCHLAB_IT_GITHUB_TOKEN";
/// The environment variable holding the webhook secret.
const WEBHOOK_SECRET_ENV: &str = "GLITCHLAB_IT_GITHUB_WEBHOOK_SECRET";
const WEBHOOK_SECRET: &str = "whsec-it-0123456789";
const REPO: &str = "acme/widgets";

fn set_token_env() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // Set once, before any service of this suite reads them (they never change after).
    ONCE.call_once(|| {
        std::env::set_var(TOKEN_ENV, TOKEN);
        std::env::set_var(WEBHOOK_SECRET_ENV, WEBHOOK_SECRET);
    });
}

/// `[github]` pointed at the fake, with short waits; `extra` lines (`key = value`) replace the
/// defaults of the same key.
fn github_config(fake: &Fake, extra: &str) -> String {
    let defaults = [
        format!("api_url = \"{}\"", fake.url),
        format!("token_env = \"{TOKEN_ENV}\""),
        format!("webhook_secret_env = \"{WEBHOOK_SECRET_ENV}\""),
        "poll_ms = 100".into(),
        "write_spacing_ms = 10".into(),
        "secondary_wait_min_secs = 1".into(),
        "checks_deadline_secs = 20".into(),
        "no_checks_wait_secs = 1".into(),
        "retries_max = 4".into(),
        "request_timeout_secs = 5".into(),
    ];
    let key = |line: &str| line.split('=').next().unwrap_or_default().trim().to_owned();
    let overridden: Vec<String> = extra.lines().map(key).collect();
    // An App replaces the token.
    let app = extra.contains("app_id");
    let mut lines: Vec<String> = defaults
        .into_iter()
        .filter(|line| !overridden.contains(&key(line)))
        .filter(|line| !(app && key(line) == "token_env"))
        .collect();
    lines.extend(extra.lines().map(str::to_owned));
    format!("[github]\n{}\n", lines.join("\n"))
}

/// A pull-request task on `url` whose patch engine writes a new `f.txt` each attempt and keeps
/// every prompt it was given in `<root>/prompts.txt`.
fn pr_task(root: &Path, url: &str, pull_request: Value) -> Value {
    let prompts = root.join("prompts.txt");
    json!({
        "title": "Add f",
        "description": "Write f.txt.",
        "repo": url,
        "verify": "test -f f.txt",
        "max_attempts": 3,
        "engines": {"patch": {"kind": "shell", "command": format!(
            "cat \"$GLITCHLAB_PROMPT_FILE\" >> {}; date +%s%N > f.txt", prompts.display())}},
        "delivery": "pull_request",
        "pull_request": pull_request,
    })
}

struct Setup {
    root: tempfile::TempDir,
    bare: std::path::PathBuf,
    url: String,
    fake: Fake,
}

async fn setup() -> Setup {
    set_token_env();
    let root = tempfile::tempdir().unwrap();
    let (bare, url) = remote(root.path());
    let fake = Fake::start(&[(REPO, &bare)]).await;
    Setup {
        root,
        bare,
        url,
        fake,
    }
}

async fn run_task(setup: &Setup, extra_config: &str, pull_request: Value) -> Value {
    let config = github_config(&setup.fake, extra_config);
    let service = Service::start_in_process(setup.root.path(), with_config(&config)).await;
    let body = pr_task(setup.root.path(), &setup.url, pull_request);
    let (status, task) = service.post("/v1/tasks", &body).await;
    assert_eq!(status, 201, "{task:#}");
    let id = task["id"].as_str().unwrap().to_owned();
    let done = service
        .wait_finished_within(&id, Duration::from_secs(120))
        .await;
    crate::github_contract::check(&setup.fake.log());
    done
}

fn merges(fake: &Fake) -> Vec<Value> {
    fake.log()
        .into_iter()
        .filter(|e| e.method == "put" && e.template.ends_with("/merge"))
        .map(|e| json!({"status": e.status, "request": e.request, "response": e.response}))
        .collect()
}

/// Push → one PR (with the task's marker) → the required check green → merged with `sha` = the
/// verified head → the base holds the squash; the task shows its `pull_request`.
#[tokio::test]
async fn a_pull_request_is_opened_once_checked_and_merged_with_its_head_sha() {
    let setup = setup().await;
    let seed_main = remote_git(&setup.bare, &["rev-parse", "main"]);
    let done = run_task(&setup, "", json!({"repo": REPO})).await;
    assert_eq!(done["status"], "done", "{done:#}");
    let pulls = setup.fake.pulls();
    assert_eq!(pulls.len(), 1, "{pulls:#?}");
    let id = done["id"].as_str().unwrap();
    assert!(pulls[0]
        .body
        .contains(&format!("<!-- glitchlab:task={id} -->")));
    assert_eq!(pulls[0].head, format!("glitchlab/{id}"));
    let pr = &done["pull_request"];
    assert_eq!(pr["number"], 1, "{done:#}");
    assert_eq!(pr["state"], "merged");
    assert_eq!(pr["url"], format!("https://github.com/{REPO}/pull/1"));
    assert_eq!(pr["checks"][0]["name"], "ci");
    assert_eq!(pr["checks"][0]["conclusion"], "success");
    let merges = merges(&setup.fake);
    assert_eq!(merges.len(), 1, "{merges:#?}");
    assert_eq!(merges[0]["request"]["sha"], pr["head_sha"]);
    assert_eq!(merges[0]["request"]["merge_method"], "squash");
    let main = remote_git(&setup.bare, &["rev-parse", "main"]);
    assert_eq!(done["commit"], main.as_str());
    assert_eq!(pr["merged_sha"], main.as_str());
    assert_eq!(
        remote_git(&setup.bare, &["rev-parse", "main^"]),
        seed_main,
        "one squashed commit on the base"
    );
    let head_tree = remote_git(
        &setup.bare,
        &[
            "rev-parse",
            &format!("{}^{{tree}}", pr["head_sha"].as_str().unwrap()),
        ],
    );
    assert_eq!(
        remote_git(&setup.bare, &["rev-parse", "main^{tree}"]),
        head_tree
    );
}

/// Red CI: the failing check's summary and annotation reach Patch as feedback, the second
/// attempt pushes the same branch (same PR), goes green and is merged.
#[tokio::test]
async fn red_checks_are_feedback_and_the_second_attempt_merges() {
    let setup = setup().await;
    setup.fake.with(|s| {
        s.ci = Arc::new(|nth| {
            if nth == 0 {
                vec![ScriptedCheck {
                    summary: "3 tests failed in widgets::spin".into(),
                    annotations: vec![("src/spin.rs".into(), 7, "assertion failed: spun".into())],
                    ..ScriptedCheck::run("ci", "failure")
                }]
            } else {
                vec![ScriptedCheck::run("ci", "success")]
            }
        })
    });
    let done = run_task(&setup, "", json!({"repo": REPO})).await;
    assert_eq!(done["status"], "done", "{done:#}");
    assert_eq!(done["attempts"], 2, "{done:#}");
    assert_eq!(done["failures"][0]["error"]["code"], "CHECKS_FAILED");
    let prompts = std::fs::read_to_string(setup.root.path().join("prompts.txt")).unwrap();
    assert!(
        prompts.contains("3 tests failed in widgets::spin"),
        "{prompts}"
    );
    assert!(prompts.contains("src/spin.rs:7"), "{prompts}");
    let pulls = setup.fake.pulls();
    assert_eq!(pulls.len(), 1, "one PR across attempts");
    assert_eq!(pulls[0].heads.len(), 2, "{pulls:#?}");
    assert!(pulls[0].merged);
}

/// `cancelled` and `action_required` are not green: each goes back as feedback.
#[tokio::test]
async fn cancelled_and_action_required_are_not_green() {
    let setup = setup().await;
    setup.fake.with(|s| {
        s.ci = Arc::new(|nth| match nth {
            0 => vec![ScriptedCheck::run("ci", "cancelled")],
            1 => vec![ScriptedCheck::run("ci", "action_required")],
            _ => vec![ScriptedCheck::run("ci", "success")],
        })
    });
    let done = run_task(&setup, "", json!({"repo": REPO})).await;
    assert_eq!(done["status"], "done", "{done:#}");
    let codes: Vec<&str> = done["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["error"]["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["CHECKS_FAILED", "CHECKS_FAILED"], "{done:#}");
    let messages = done["failures"].to_string();
    assert!(
        messages.contains("cancelled") && messages.contains("action_required"),
        "{messages}"
    );
    assert_eq!(setup.fake.pulls()[0].heads.len(), 3);
}

/// No required checks and no check at all: `pass` merges at once, `fail` ends
/// `CHECKS_STALLED`, `wait_secs` merges after the wait.
#[tokio::test]
async fn no_checks_policies() {
    for (policy, status) in [("pass", "done"), ("fail", "failed"), ("wait_secs", "done")] {
        let setup = setup().await;
        setup.fake.with(|s| {
            s.required_checks = None;
            s.ci = Arc::new(|_| Vec::new());
        });
        let done = run_task(&setup, "", json!({"repo": REPO, "no_checks": policy})).await;
        assert_eq!(done["status"], status, "{policy}: {done:#}");
        if status == "failed" {
            assert_eq!(done["error"]["code"], "CHECKS_STALLED", "{done:#}");
            assert!(setup.fake.pulls()[0].state == "open");
        } else {
            assert!(setup.fake.pulls()[0].merged, "{policy}");
        }
    }
}

/// A required check that never reports ends the wait `CHECKS_STALLED`, naming it.
#[tokio::test]
async fn a_check_that_never_reports_stalls() {
    let setup = setup().await;
    e2e_never_reports(&setup.fake);
    let done = run_task(&setup, "checks_deadline_secs = 2\n", json!({"repo": REPO})).await;
    assert_eq!(done["status"], "failed", "{done:#}");
    assert_eq!(done["error"]["code"], "CHECKS_STALLED");
    let message = done["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("e2e") && !message.contains("ci,"),
        "{message}"
    );
    assert!(merges(&setup.fake).is_empty());
}

/// A check that never reports e2e on the head (ci passes), for the stall tests.
fn e2e_never_reports(fake: &Fake) {
    fake.with(|s| {
        s.required_checks = Some(vec!["ci".into(), "e2e".into()]);
        s.ci = Arc::new(|_| {
            vec![
                ScriptedCheck::run("ci", "success"),
                ScriptedCheck {
                    conclusion: None,
                    ..ScriptedCheck::run("e2e", "success")
                },
            ]
        })
    });
}

fn parse_time(value: &Value) -> chrono::DateTime<chrono::Utc> {
    let text = value.as_str().unwrap_or_else(|| panic!("no time: {value}"));
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&chrono::Utc)
}

/// The checks' deadline survives a restart: the wait began (`checks_since`, on the record) before
/// a `kill -9`; the restarted service stalls at the original deadline, not a full deadline after
/// it came back.
#[tokio::test]
async fn the_checks_deadline_counts_from_before_a_restart() {
    const DEADLINE_SECS: i64 = 10;
    let setup = setup().await;
    e2e_never_reports(&setup.fake);
    let options = Options {
        env: vec![(TOKEN_ENV.into(), TOKEN.into())],
        ..with_config(&github_config(
            &setup.fake,
            &format!("checks_deadline_secs = {DEADLINE_SECS}\n"),
        ))
    };
    let mut service = Service::start_with(setup.root.path(), options.clone()).await;
    let body = pr_task(setup.root.path(), &setup.url, json!({"repo": REPO}));
    let id = service.submit(&body).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let waiting = service
        .wait_for_task(&id, Duration::from_secs(120), |t| {
            t["pull_request"]["checks_since"].is_string()
        })
        .await;
    let since = parse_time(&waiting["pull_request"]["checks_since"]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    service.kill_9();
    // Down long enough that "a deadline from the restart" and "the original deadline" differ.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let again = Service::start_with(setup.root.path(), options).await;
    let restarted = chrono::Utc::now();
    let done = again
        .wait_finished_within(&id, Duration::from_secs(120))
        .await;
    assert_eq!(done["status"], "failed", "{done:#}");
    assert_eq!(done["error"]["code"], "CHECKS_STALLED", "{done:#}");
    assert_eq!(
        parse_time(&done["pull_request"]["checks_since"]),
        since,
        "set once for the head"
    );
    let (_, events) = again.get(&format!("/v1/tasks/{id}/events")).await;
    let events = events["events"].as_array().unwrap();
    let opened = events
        .iter()
        .find(|e| e["kind"] == "pull_request.state" && e["data"]["state"] == "pr_open")
        .unwrap_or_else(|| panic!("{events:#?}"));
    let finished = events
        .iter()
        .rev()
        .find(|e| e["kind"] == "task.finished")
        .unwrap_or_else(|| panic!("{events:#?}"));
    let (opened, finished) = (parse_time(&opened["ts"]), parse_time(&finished["ts"]));
    assert!(
        (opened - since).num_milliseconds().abs() < 1000,
        "the wait began when the PR was recorded: {opened} {since}"
    );
    let deadline = chrono::Duration::seconds(DEADLINE_SECS);
    assert!(
        finished - since >= deadline,
        "not before the deadline: {since} → {finished}"
    );
    assert!(
        finished < restarted + deadline,
        "at the original deadline, not a deadline after the restart ({restarted}): {since} → {finished}"
    );
    crate::github_contract::check(&setup.fake.log());
    assert!(merges(&setup.fake).is_empty());
}

/// `CHANGES_REQUESTED` with two comments → one feedback round → the fix is pushed, glitchlab
/// replies on both threads once → the required approval → merged.
#[tokio::test]
async fn requested_changes_are_one_feedback_round_then_approval_merges() {
    let setup = setup().await;
    setup.fake.with(|s| {
        s.required_approvals = Some(1);
        s.reviewer = Arc::new(|nth| {
            Some(if nth == 0 {
                ScriptedReview {
                    state: "CHANGES_REQUESTED".into(),
                    body: "Please rename things.".into(),
                    comments: vec![
                        ("f.txt".into(), 1, "call it greeting".into()),
                        ("f.txt".into(), 2, "add a newline".into()),
                    ],
                }
            } else {
                ScriptedReview {
                    state: "APPROVED".into(),
                    body: "Thanks".into(),
                    comments: Vec::new(),
                }
            })
        });
    });
    let done = run_task(&setup, "", json!({"repo": REPO})).await;
    assert_eq!(done["status"], "done", "{done:#}");
    assert_eq!(done["failures"][0]["error"]["code"], "CHANGES_REQUESTED");
    let prompts = std::fs::read_to_string(setup.root.path().join("prompts.txt")).unwrap();
    for text in [
        "Please rename things.",
        "call it greeting",
        "f.txt:2: add a newline",
    ] {
        assert!(prompts.contains(text), "{text}: {prompts}");
    }
    let replies: Vec<_> = setup
        .fake
        .with(|s| s.comments.clone())
        .into_iter()
        .filter(|c| c.in_reply_to.is_some())
        .collect();
    assert_eq!(replies.len(), 2, "{replies:#?}");
    assert!(setup.fake.pulls()[0].merged);
}

/// The head moves under the merge (a human's push): 409 → the new head's checks are awaited →
/// merged with the new head's sha.
#[tokio::test]
async fn a_head_moved_under_the_merge_is_verified_again() {
    let setup = setup().await;
    setup.fake.with(|s| s.move_head_on_merge = true);
    let done = run_task(&setup, "", json!({"repo": REPO})).await;
    assert_eq!(done["status"], "done", "{done:#}");
    let merges = merges(&setup.fake);
    assert_eq!(merges.len(), 2, "{merges:#?}");
    assert_eq!(merges[0]["status"], 409);
    assert_eq!(merges[1]["status"], 200);
    let pulls = setup.fake.pulls();
    assert_eq!(pulls[0].heads.len(), 2, "CI ran on the moved head");
    assert_eq!(merges[1]["request"]["sha"], pulls[0].heads[1].as_str());
    assert_eq!(done["pull_request"]["head_moves"], 1);
}

/// A storm on the writes — a 502, secondary limits with and without `retry-after`, a 429: one
/// PR, one merge, and the waits the ladder asks for (the floor is 1 s here; the exact ladder on
/// a paused clock is `platform::github::ladder`'s unit test).
#[tokio::test]
async fn a_rate_limit_storm_makes_no_duplicate() {
    let setup = setup().await;
    setup.fake.with(|s| {
        s.write_faults = [
            Fault::BadGateway,
            Fault::SecondaryRetryAfter(1),
            Fault::Secondary,
            Fault::TooMany,
        ]
        .into_iter()
        .collect()
    });
    let started = std::time::Instant::now();
    let done = run_task(&setup, "", json!({"repo": REPO})).await;
    assert_eq!(done["status"], "done", "{done:#}");
    assert_eq!(setup.fake.pulls().len(), 1);
    let log = setup.fake.log();
    let creates = log
        .iter()
        .filter(|e| e.method == "post" && e.status == 201)
        .count();
    assert_eq!(creates, 1);
    assert_eq!(
        merges(&setup.fake)
            .iter()
            .filter(|m| m["status"] == 200)
            .count(),
        1
    );
    // Retry 1, a 502: 1 s; retry 2, retry-after: 1 s; retry 3, no header: the 1 s floor
    // doubled twice (4 s); retry 4, a 429: 8 s. At least 14 s in all.
    assert!(
        started.elapsed() >= Duration::from_secs(14),
        "{:?}",
        started.elapsed()
    );
}

/// A forge outage: `fail_fast` fails `DELIVERY_FAILED` naming the step; `best_effort` ends with
/// the branch pushed, `delivered: branch_only` and `delivery_error`.
#[tokio::test]
async fn an_outage_under_fail_fast_and_best_effort() {
    for mode in ["fail_fast", "best_effort"] {
        let setup = setup().await;
        setup.fake.with(|s| s.outage = true);
        let done = run_task(
            &setup,
            "retries_max = 1\n",
            json!({"repo": REPO, "mode": mode}),
        )
        .await;
        let id = done["id"].as_str().unwrap();
        let pushed = remote_git(
            &setup.bare,
            &["for-each-ref", &format!("refs/heads/glitchlab/{id}")],
        );
        assert!(!pushed.is_empty(), "{mode}: the branch is pushed");
        if mode == "fail_fast" {
            assert_eq!(done["status"], "failed", "{done:#}");
            assert_eq!(done["error"]["code"], "DELIVERY_FAILED");
            let message = done["error"]["message"].as_str().unwrap();
            assert!(message.contains("find the pull request"), "{message}");
        } else {
            assert_eq!(done["status"], "done", "{done:#}");
            assert_eq!(done["delivered"], "branch_only");
            assert_eq!(done["delivery_error"]["code"], "DELIVERY_FAILED");
        }
    }
}

/// `kill -9` after GitHub opened the PR but before glitchlab recorded it: the restarted service
/// finds it by head and marker — one PR, merged.
#[tokio::test]
async fn a_kill_between_creating_the_pr_and_recording_it_makes_one_pr() {
    let setup = setup().await;
    let (created, mut told) = tokio::sync::mpsc::unbounded_channel();
    setup.fake.with(|s| {
        s.slow_create = Some(Duration::from_secs(30));
        s.created = Some(created);
    });
    let options = Options {
        env: vec![(TOKEN_ENV.into(), TOKEN.into())],
        ..with_config(&github_config(&setup.fake, ""))
    };
    let mut service = Service::start_with(setup.root.path(), options.clone()).await;
    let body = pr_task(setup.root.path(), &setup.url, json!({"repo": REPO}));
    let id = service.submit(&body).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    tokio::time::timeout(Duration::from_secs(120), told.recv())
        .await
        .unwrap()
        .unwrap();
    service.kill_9();
    let (_, task) = {
        let again = Service::start_with(setup.root.path(), options).await;
        let done = again
            .wait_finished_within(&id, Duration::from_secs(120))
            .await;
        (again, done)
    };
    assert_eq!(task["status"], "done", "{task:#}");
    crate::github_contract::check(&setup.fake.log());
    assert_eq!(setup.fake.pulls().len(), 1, "no second PR");
    assert!(setup.fake.pulls()[0].merged);
}

/// Stops the real service at the failpoint `at` (`sleep`), once `reached(fake)` says the side
/// effect before it happened, kills it (`kill -9`), restarts it without the failpoint, and
/// answers the finished task.
async fn kill_at_failpoint_and_resume(
    setup: &Setup,
    at: &str,
    reached: impl Fn(&Fake) -> bool,
) -> Value {
    let options = Options {
        env: vec![(TOKEN_ENV.into(), TOKEN.into())],
        ..with_config(&github_config(&setup.fake, ""))
    };
    let mut stopped = options.clone();
    stopped
        .env
        .push(("FAILPOINTS".into(), format!("{at}=sleep(60000)")));
    let mut service = Service::start_with(setup.root.path(), stopped).await;
    let body = pr_task(setup.root.path(), &setup.url, json!({"repo": REPO}));
    let id = service.submit(&body).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !reached(&setup.fake) {
        assert!(std::time::Instant::now() < deadline, "{at} never reached");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The failpoint holds the delivery: nothing after it can be recorded before the kill.
    tokio::time::sleep(Duration::from_millis(300)).await;
    service.kill_9();
    let again = Service::start_with(setup.root.path(), options).await;
    let done = again
        .wait_finished_within(&id, Duration::from_secs(120))
        .await;
    crate::github_contract::check(&setup.fake.log());
    done
}

/// After a resumed delivery: one PR, one merge call (it succeeded), no comment, and the base
/// holds the squash of the task's head.
fn assert_delivered_once(setup: &Setup, done: &Value) {
    assert_eq!(done["status"], "done", "{done:#}");
    let pulls = setup.fake.pulls();
    assert_eq!(pulls.len(), 1, "no second PR: {pulls:#?}");
    assert!(pulls[0].merged);
    let merges = merges(&setup.fake);
    assert_eq!(merges.len(), 1, "no second merge: {merges:#?}");
    assert_eq!(merges[0]["status"], 200, "{merges:#?}");
    let opened = setup
        .fake
        .log()
        .into_iter()
        .filter(|e| e.method == "post" && e.template.ends_with("/pulls"))
        .count();
    assert_eq!(opened, 1, "one create call");
    assert!(setup.fake.with(|s| s.comments.is_empty()), "no comment");
    let main = remote_git(&setup.bare, &["rev-parse", "main"]);
    assert_eq!(done["commit"], main.as_str());
    assert_eq!(done["pull_request"]["merged_sha"], main.as_str());
    let head = done["pull_request"]["head_sha"].as_str().unwrap();
    assert_eq!(
        remote_git(&setup.bare, &["rev-parse", "main^{tree}"]),
        remote_git(&setup.bare, &["rev-parse", &format!("{head}^{{tree}}")]),
        "the base holds the squash"
    );
}

/// `kill -9` after the push, before the record says so: the restarted service pushes the same
/// head again (no change), opens one PR and merges it once.
#[tokio::test]
async fn a_kill_after_the_push_resumes_with_one_pr_and_one_merge() {
    let setup = setup().await;
    let bare = setup.bare.clone();
    let pushed = move |fake: &Fake| {
        let branches = remote_git(&bare, &["for-each-ref", "refs/heads/glitchlab/"]);
        // Pushed, and no PR yet: the kill lands between the two.
        !branches.is_empty() && fake.pulls().is_empty()
    };
    let done = kill_at_failpoint_and_resume(&setup, "pull_request.pushed", pushed).await;
    assert_delivered_once(&setup, &done);
}

/// `kill -9` during the merge — GitHub merged, glitchlab had not recorded it: the restarted
/// service reads the recorded PR, finds it merged and ends the task with its merge commit (no
/// second merge call).
#[tokio::test]
async fn a_kill_during_the_merge_resumes_without_a_second_merge() {
    let setup = setup().await;
    let merged = |fake: &Fake| fake.pulls().first().is_some_and(|p| p.merged);
    let done = kill_at_failpoint_and_resume(&setup, "pull_request.merged", merged).await;
    assert_delivered_once(&setup, &done);
}

/// A GitHub App: the JWT (RS256, checked by the fake with the key's public half) buys an
/// installation token; tokens that expire mid-task are renewed before they do (no call is ever
/// refused for an expired token).
#[tokio::test]
async fn an_app_token_expiring_mid_task_is_renewed() {
    let setup = setup().await;
    let key = setup.root.path().join("app.pem");
    let made = std::process::Command::new("openssl")
        .args(["genrsa", "-traditional", "-out"])
        .arg(&key)
        .arg("2048")
        .output();
    if !made.as_ref().is_ok_and(|m| m.status.success()) {
        eprintln!("skipped: openssl is not installed to make the App's key");
        return;
    }
    let public = std::process::Command::new("openssl")
        .args(["rsa", "-RSAPublicKey_out", "-outform", "DER", "-in"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(public.status.success());
    setup.fake.with(|s| {
        s.app = Some(crate::github_fake::AppAuth {
            installation_id: 7,
            public_key: public.stdout.clone(),
            token_life: Duration::from_secs(3),
            minted: Vec::new(),
        });
        // CI takes a while: the first token expires under it.
        s.ci = Arc::new(|_| {
            vec![ScriptedCheck {
                pending_reads: 25,
                ..ScriptedCheck::run("ci", "success")
            }]
        });
    });
    let extra = format!(
        "app_id = 42\ninstallation_id = 7\nprivate_key_file = \"{}\"\ntoken_refresh_margin_secs = 2\n",
        key.display()
    );
    let done = run_task(&setup, &extra, json!({"repo": REPO})).await;
    assert_eq!(done["status"], "done", "{done:#}");
    let (minted, refused) = setup
        .fake
        .with(|s| (s.app.as_ref().unwrap().minted.len(), s.unauthorized));
    assert!(minted >= 2, "the token was renewed: {minted}");
    assert_eq!(refused, 0, "no call went out with an expired token");
}

fn signed(body: &[u8]) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(WEBHOOK_SECRET.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn send_webhook(service: &Service, delivery: &str, signature: &str) -> (u16, Value) {
    let body = json!({"action": "completed", "repository": {"full_name": REPO}}).to_string();
    let response = service
        .request(reqwest::Method::POST, "/v1/github/webhook")
        .header("content-type", "application/json")
        .header("x-github-event", "check_run")
        .header("x-github-delivery", delivery)
        .header("x-hub-signature-256", signature)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Webhooks wake a waiting delivery at once (the poll here is a minute), a redelivery is
/// handled once, and a bad signature is refused `401 WEBHOOK_SIGNATURE`.
#[tokio::test]
async fn webhooks_wake_deliveries_once_and_bad_signatures_are_refused() {
    let setup = setup().await;
    let config = github_config(&setup.fake, "poll_ms = 60000\n");
    let service = Service::start_in_process(setup.root.path(), with_config(&config)).await;
    let payload = json!({"action": "completed", "repository": {"full_name": REPO}}).to_string();
    let (status, answer) = send_webhook(&service, "d-bad", "sha256=00").await;
    assert_eq!(status, 401, "{answer}");
    assert_eq!(answer["error"]["code"], "WEBHOOK_SIGNATURE");
    let good = signed(payload.as_bytes());
    let (status, first) = send_webhook(&service, "d-1", &good).await;
    assert_eq!(
        (status, &first["duplicate"]),
        (202, &json!(false)),
        "{first}"
    );
    assert_eq!(first["woke"], REPO);
    let (status, again) = send_webhook(&service, "d-1", &good).await;
    assert_eq!(
        (status, &again["duplicate"]),
        (202, &json!(true)),
        "{again}"
    );
    assert_eq!(again["woke"], Value::Null, "a redelivery wakes nothing");
    let body = pr_task(setup.root.path(), &setup.url, json!({"repo": REPO}));
    let id = service.submit(&body).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let started = std::time::Instant::now();
    let mut delivery = 0;
    let done = loop {
        let (_, task) = service.get(&format!("/v1/tasks/{id}")).await;
        if task["status"] == "done" || task["status"] == "failed" {
            break task;
        }
        assert!(
            started.elapsed() < Duration::from_secs(50),
            "not woken: {task:#}"
        );
        delivery += 1;
        send_webhook(&service, &format!("d-wake-{delivery}"), &good).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(done["status"], "done", "{done:#}");
    assert!(started.elapsed() < Duration::from_secs(50));
    crate::github_contract::check(&setup.fake.log());
}

/// Intake refuses a pull-request task it could not deliver: no `[github]` credentials, a local
/// path as `repo`, `pull_request` without `delivery: pull_request`, a bad `owner/name` (the
/// default from an `https://` URL is `model::pull_request`'s unit test).
#[tokio::test]
async fn intake_refuses_what_it_could_not_deliver() {
    let setup = setup().await;
    let service = Service::start_in_process(setup.root.path(), Options::default()).await;
    let body = pr_task(setup.root.path(), &setup.url, json!({"repo": REPO}));
    let (status, answer) = service.post("/v1/tasks", &body).await;
    assert_eq!(status, 422, "no [github]: {answer}");
    assert!(answer["error"]["message"]
        .as_str()
        .unwrap()
        .contains("[github]"));
    drop(service);
    let root = tempfile::tempdir().unwrap();
    let config = github_config(&setup.fake, "");
    let service = Service::start_in_process(root.path(), with_config(&config)).await;
    let local = crate::helpers::git_repo(root.path());
    let cases = [
        (json!({"repo": local.display().to_string()}), "git URL"),
        (
            json!({"delivery": "merge"}),
            "needs `delivery: pull_request`",
        ),
        (
            json!({"pull_request": {"repo": "not a repo"}}),
            "owner/name",
        ),
    ];
    for (change, expected) in cases {
        let mut body = pr_task(root.path(), &setup.url, json!({"repo": REPO}));
        for (key, value) in change.as_object().unwrap() {
            body[key] = value.clone();
        }
        let (status, answer) = service.post("/v1/tasks", &body).await;
        assert_eq!(status, 422, "{change}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(expected), "{change}: {message}");
    }
}

/// The fake's repository over smart HTTP (`git http-backend` behind the fake's credential check).
fn http_url(fake: &Fake) -> String {
    format!("{}/{REPO}.git", fake.url)
}

/// Runs a pull-request task on the fake's HTTP remote with the real binary (its log is read).
async fn run_on_http(setup: &Setup) -> (Service, Value) {
    let options = Options {
        env: vec![(TOKEN_ENV.into(), TOKEN.into())],
        ..with_config(&github_config(&setup.fake, ""))
    };
    let service = Service::start_with(setup.root.path(), options).await;
    let body = pr_task(
        setup.root.path(),
        &http_url(&setup.fake),
        json!({"repo": REPO}),
    );
    let id = service.submit(&body).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let done = service
        .wait_finished_within(&id, Duration::from_secs(120))
        .await;
    crate::github_contract::check(&setup.fake.log());
    (service, done)
}

/// Neither the token nor its Basic form is in the service's log or the task's events.
async fn assert_token_kept_out(service: &Service, id: &str) {
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{TOKEN}"));
    let (_, events) = service.get(&format!("/v1/tasks/{id}/events")).await;
    let (_, task) = service.get(&format!("/v1/tasks/{id}")).await;
    for (what, text) in [
        ("log", service.log()),
        ("events", events.to_string()),
        ("task", task.to_string()),
    ] {
        assert!(!text.contains(TOKEN), "the token is in the {what}");
        assert!(!text.contains(&basic), "the Basic header is in the {what}");
    }
}

/// A private repository over HTTP(S): the clone, the fetches and the push carry the token as
/// `Authorization: Basic x-access-token:<token>` (git's `extraHeader`, from the call's
/// environment), the push reaches the bare repository and the PR merges; the token is nowhere in
/// the log or the events.
#[tokio::test]
async fn a_private_repo_is_fetched_and_pushed_over_http_with_the_token() {
    let setup = setup().await;
    setup.fake.with(|s| s.git_public = false);
    let (service, done) = run_on_http(&setup).await;
    assert_eq!(done["status"], "done", "{done:#}");
    let requests = setup.fake.with(|s| s.git_requests.clone());
    assert!(
        requests
            .iter()
            .any(|r| r.method == "POST" && r.path.contains("git-receive-pack") && r.status == 200),
        "the push went over HTTP: {requests:#?}"
    );
    assert!(
        requests.iter().any(|r| r.path.contains("git-upload-pack")),
        "so did the clone: {requests:#?}"
    );
    assert!(
        requests.iter().all(|r| r.authorized && r.status != 401),
        "every git request carried the token: {requests:#?}"
    );
    let head = done["pull_request"]["head_sha"].as_str().unwrap();
    let id = done["id"].as_str().unwrap();
    assert_eq!(
        remote_git(&setup.bare, &["rev-parse", &format!("glitchlab/{id}")]),
        head,
        "the pushed head is in the bare repository"
    );
    assert_eq!(
        remote_git(&setup.bare, &["rev-parse", "main"]),
        done["pull_request"]["merged_sha"].as_str().unwrap()
    );
    assert_token_kept_out(&service, id).await;
}

/// A token the remote refuses for writes: the (public) clone works, the push is answered 401, and
/// the task fails `DELIVERY_FAILED` naming the push — no PR, and no token in what it says.
#[tokio::test]
async fn a_wrong_token_fails_the_push_as_delivery_failed() {
    let setup = setup().await;
    setup.fake.with(|s| {
        s.git_public = true;
        s.git_token = Some("ghs_the-token-git-wants".into());
    });
    let (service, done) = run_on_http(&setup).await;
    assert_eq!(done["status"], "failed", "{done:#}");
    assert_eq!(done["error"]["code"], "DELIVERY_FAILED", "{done:#}");
    let message = done["error"]["message"].as_str().unwrap();
    assert!(message.contains("push"), "{message}");
    let refused = setup.fake.with(|s| {
        s.git_requests
            .iter()
            .filter(|r| r.status == 401 && r.path.contains("git-receive-pack"))
            .count()
    });
    assert!(refused >= 1, "the push was refused");
    assert!(setup.fake.pulls().is_empty(), "no PR without the branch");
    assert_token_kept_out(&service, done["id"].as_str().unwrap()).await;
}
