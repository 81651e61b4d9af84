//! Issue intake (`[[github.intake]]`) against the fake GitHub (`github_fake`): a labelled issue
//! becomes one task delivered as one pull request, its story is told in one comment edited in
//! place, the merge closes the issue; polling recovers a lost webhook; re-labels and
//! redeliveries make no second task; a burst waits at `max_open_tasks`; a failure stays open
//! with its reason; `/glitchlab retry` obeys writers only; a `kill -9` after the task was made
//! leaves one task and one comment.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::github_fake::{Fake, TOKEN};
use crate::helpers::{with_config, Options, Service};
use crate::remote::remote;

const TOKEN_ENV: &str = "GLITCHLAB_IT_ISSUES_TOKEN";
const WEBHOOK_SECRET_ENV: &str = "GLITCHLAB_IT_ISSUES_WEBHOOK_SECRET";
const WEBHOOK_SECRET: &str = "whsec-issues-0123456789";
const REPO: &str = "acme/widgets";
/// A patch engine that makes a change each attempt, in a file of its own task (the tasks of a
/// burst must not conflict with each other).
const PATCH: &str = "date +%s%N > f-$GLITCHLAB_TASK_ID.txt";

fn set_env() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // Set once, before any service of this suite reads them (they never change after).
    ONCE.call_once(|| {
        std::env::set_var(TOKEN_ENV, TOKEN);
        std::env::set_var(WEBHOOK_SECRET_ENV, WEBHOOK_SECRET);
    });
}

struct Setup {
    root: tempfile::TempDir,
    url: String,
    fake: Fake,
}

async fn setup() -> Setup {
    set_env();
    let root = tempfile::tempdir().unwrap();
    let (bare, url) = remote(root.path());
    let fake = Fake::start(&[(REPO, &bare)]).await;
    Setup { root, url, fake }
}

/// `[github]` on the fake with one intake entry; `intake` lines are added to the entry.
fn config(setup: &Setup, intake: &str) -> String {
    let verify = if intake.contains("verify") {
        ""
    } else {
        "verify = \"for f in f-*.txt; do test -f $f; done\"\n"
    };
    format!(
        "[github]\napi_url = \"{}\"\ntoken_env = \"{TOKEN_ENV}\"\n\
         webhook_secret_env = \"{WEBHOOK_SECRET_ENV}\"\npoll_ms = 100\nwrite_spacing_ms = 10\n\
         secondary_wait_min_secs = 1\nchecks_deadline_secs = 20\nno_checks_wait_secs = 1\n\
         retries_max = 4\nrequest_timeout_secs = 5\n\n\
         [[github.intake]]\nrepo = \"{REPO}\"\ngit_url = \"{}\"\n\
         engines = {{ patch = {{ kind = \"shell\", command = \"{PATCH}\" }} }}\n{verify}{intake}\n",
        setup.fake.url, setup.url
    )
}

fn signed(body: &[u8]) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(WEBHOOK_SECRET.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn webhook(service: &Service, event: &str, delivery: &str, payload: &Value) -> Value {
    let body = payload.to_string();
    let response = service
        .request(reqwest::Method::POST, "/v1/github/webhook")
        .header("content-type", "application/json")
        .header("x-github-event", event)
        .header("x-github-delivery", delivery)
        .header("x-hub-signature-256", signed(body.as_bytes()))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    response.json().await.unwrap()
}

fn labeled(fake: &Fake, number: u64) -> Value {
    json!({"action": "labeled", "issue": fake.issue_json(REPO, number),
        "label": {"name": "glitchlab"}, "repository": {"full_name": REPO}})
}

fn command(number: u64, user: &str, text: &str) -> Value {
    json!({"action": "created", "issue": {"number": number},
        "comment": {"id": 1, "body": text, "user": {"login": user}},
        "repository": {"full_name": REPO}})
}

/// The service's tasks made from issues, oldest first.
async fn issue_tasks(service: &Service) -> Vec<Value> {
    let (status, page) = service.get("/v1/tasks?limit=200").await;
    assert_eq!(status, 200, "{page}");
    let mut tasks: Vec<Value> = page["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["source"]["kind"] == "github_issue")
        .cloned()
        .collect();
    tasks.reverse();
    tasks
}

/// Holds every exchange to GitHub's OpenAPI description, but the `304`s: GitHub answers an
/// unchanged conditional GET so (its REST docs, "conditional requests"), which the description
/// leaves out.
fn contract(fake: &Fake) {
    let log: Vec<_> = fake.log().into_iter().filter(|e| e.status != 304).collect();
    crate::github_contract::check(&log);
}

/// Waits until `done` holds, polling; panics after `within` with `what`.
async fn eventually<F, Fut>(within: Duration, what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !done().await {
        assert!(start.elapsed() < within, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (up to `within`) until issue `number` has exactly one comment, and it says `text`.
async fn one_comment_saying(fake: &Fake, number: u64, text: &str, within: Duration) {
    let what = format!("one comment on #{number} saying {text:?}");
    eventually(within, &what, || async {
        let comments = fake.issue_comments(number);
        comments.len() == 1 && comments[0].body.contains(text)
    })
    .await;
}

async fn one_task(service: &Service) -> Value {
    let start = Instant::now();
    loop {
        let mut found = issue_tasks(service).await;
        if !found.is_empty() {
            assert_eq!(found.len(), 1, "{found:#?}");
            return found.remove(0);
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no task for the issue"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Webhook → one task (its `source`, `delivery: pull_request`) → one PR with `Fixes #n` →
/// merged → the issue closed, 👀 on it, and exactly one comment, edited to "merged". A re-label
/// while the task runs and a redelivered webhook make no second task.
#[tokio::test]
async fn a_labelled_issue_becomes_one_task_one_pr_and_one_comment_then_closes() {
    let setup = setup().await;
    let config = config(&setup, "poll_secs = 3600");
    let service = Service::start_in_process(setup.root.path(), with_config(&config)).await;
    let number = setup.fake.add_issue(
        "Add f",
        "Please add f.txt.",
        &["glitchlab", "priority:high"],
    );
    setup
        .fake
        .add_issue_comment(number, "alice", "End it with a newline.");
    setup
        .fake
        .add_issue_comment(number, "bob", "/glitchlab retry");
    let answer = webhook(&service, "issues", "i-1", &labeled(&setup.fake, number)).await;
    assert_eq!(answer["intake"], "issue", "{answer}");
    let task = one_task(&service).await;
    assert_eq!(task["source"]["repo"], REPO);
    assert_eq!(task["source"]["number"], number);
    assert_eq!(
        task["source"]["url"],
        format!("https://github.com/{REPO}/issues/{number}")
    );
    assert_eq!(task["delivery"], "pull_request");
    assert_eq!(task["priority"], "high");
    let description = task["description"].as_str().unwrap();
    assert!(description.contains("Please add f.txt."), "{description}");
    assert!(
        description.contains("Comment by @alice:\nEnd it with a newline."),
        "{description}"
    );
    assert!(!description.contains("/glitchlab"), "{description}");
    // Re-labelled while it runs, and the first delivery redelivered.
    webhook(&service, "issues", "i-2", &labeled(&setup.fake, number)).await;
    let again = webhook(&service, "issues", "i-1", &labeled(&setup.fake, number)).await;
    assert_eq!(again["duplicate"], true);
    let id = task["id"].as_str().unwrap();
    let done = service
        .wait_finished_within(id, Duration::from_secs(120))
        .await;
    assert_eq!(done["status"], "done", "{done:#}");
    assert_eq!(issue_tasks(&service).await.len(), 1);
    let pulls = setup.fake.pulls();
    assert_eq!(pulls.len(), 1, "{pulls:#?}");
    assert!(pulls[0].body.starts_with(&format!("Fixes #{number}")));
    one_comment_saying(&setup.fake, number, "merged (PR #", Duration::from_secs(20)).await;
    let comments = setup.fake.issue_comments(number);
    assert_eq!(comments.len(), 1, "{comments:#?}");
    assert!(comments[0].edits >= 1, "edited in place: {comments:#?}");
    assert!(comments[0]
        .body
        .contains(&format!("<!-- glitchlab:issue-task={id} -->")));
    assert_eq!(setup.fake.issue(number).state, "closed");
    assert!(setup
        .fake
        .with(|s| s.reactions.contains(&(number, "eyes".into()))));
    contract(&setup.fake);
}

/// With no webhook at all, polling (ETag'd) finds the labelled issue and carries it through.
#[tokio::test]
async fn polling_recovers_a_lost_webhook() {
    let setup = setup().await;
    let number = setup.fake.add_issue("Add f", "Polled.", &["glitchlab"]);
    setup.fake.add_issue("Not ours", "No label.", &["bug"]);
    let config = config(&setup, "poll_secs = 1");
    let service = Service::start_in_process(setup.root.path(), with_config(&config)).await;
    let task = one_task(&service).await;
    assert_eq!(task["source"]["number"], number);
    // `task list --source github` asks this.
    let (status, page) = service.get("/v1/tasks?source=github").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["tasks"].as_array().unwrap().len(), 1, "{page}");
    let (_, page) = service.get("/v1/tasks?source=jira").await;
    assert!(page["tasks"].as_array().unwrap().is_empty(), "{page}");
    let id = task["id"].as_str().unwrap();
    let done = service
        .wait_finished_within(id, Duration::from_secs(120))
        .await;
    assert_eq!(done["status"], "done", "{done:#}");
    one_comment_saying(&setup.fake, number, "merged (PR #", Duration::from_secs(20)).await;
    assert_eq!(setup.fake.issue(number).state, "closed");
    assert_eq!(issue_tasks(&service).await.len(), 1);
    let polls = || {
        setup
            .fake
            .log()
            .into_iter()
            .filter(|e| e.template == "/repos/{owner}/{repo}/issues")
            .map(|e| e.status)
            .collect::<Vec<_>>()
    };
    eventually(
        Duration::from_secs(10),
        "an unchanged poll's 304",
        || async { polls().contains(&304) },
    )
    .await;
    contract(&setup.fake);
}

/// A task that fails: the issue stays open and its one comment gives the reason; `/glitchlab
/// retry` from a reader is ignored (and told so once), from a writer it runs the task again.
#[tokio::test]
async fn a_failure_stays_open_with_its_reason_and_only_writers_may_retry() {
    let setup = setup().await;
    setup.fake.with(|s| {
        s.permissions.insert("wanda".into(), "write".into());
        s.permissions.insert("rita".into(), "read".into());
    });
    let config = config(&setup, "poll_secs = 3600\nverify = \"test -f never.txt\"");
    let service = Service::start_in_process(setup.root.path(), with_config(&config)).await;
    let number = setup.fake.add_issue("Add f", "Will fail.", &["glitchlab"]);
    webhook(&service, "issues", "f-1", &labeled(&setup.fake, number)).await;
    let task = one_task(&service).await;
    let id = task["id"].as_str().unwrap();
    let failed = service
        .wait_finished_within(id, Duration::from_secs(120))
        .await;
    // Every attempt failed verify: failed, or kept as a dead letter for a human.
    assert!(
        ["failed", "dead_letter"].contains(&failed["status"].as_str().unwrap()),
        "{failed:#}"
    );
    one_comment_saying(
        &setup.fake,
        number,
        "VERIFY_FAILED",
        Duration::from_secs(20),
    )
    .await;
    let comment = &setup.fake.issue_comments(number)[0];
    assert!(comment.body.contains("stays open"), "{}", comment.body);
    assert!(!comment.body.contains("merged ("), "{}", comment.body);
    assert_eq!(setup.fake.issue(number).state, "open");
    assert!(setup.fake.pulls().is_empty());
    // A reader: ignored, told once in the one comment.
    for delivery in ["c-1", "c-2"] {
        let answer = webhook(
            &service,
            "issue_comment",
            delivery,
            &command(number, "rita", "/glitchlab retry"),
        )
        .await;
        assert_eq!(answer["intake"], "command");
    }
    eventually(Duration::from_secs(20), "the reader told", || async {
        setup.fake.issue_comments(number)[0].body.contains("@rita")
    })
    .await;
    let (_, still) = service.get(&format!("/v1/tasks/{id}")).await;
    assert_eq!(
        still["status"], failed["status"],
        "a reader's retry did nothing"
    );
    let comments = setup.fake.issue_comments(number);
    assert_eq!(comments.len(), 1, "{comments:#?}");
    assert_eq!(comments[0].body.matches("@rita").count(), 1);
    // A writer: the task runs again (and fails again: its verify cannot pass).
    webhook(
        &service,
        "issue_comment",
        "c-3",
        &command(number, "wanda", "/glitchlab retry"),
    )
    .await;
    eventually(Duration::from_secs(30), "the retry", || async {
        let events = service.event_kinds(id).await;
        events.iter().any(|k| k == "task.retried")
    })
    .await;
    assert_eq!(issue_tasks(&service).await.len(), 1);
    contract(&setup.fake);
}

/// `/glitchlab cancel` from a writer ends the issue's running task; its comment says so.
#[tokio::test]
async fn a_writer_cancels_the_issues_task_with_a_comment() {
    let setup = setup().await;
    setup
        .fake
        .with(|s| s.permissions.insert("wanda".into(), "admin".into()));
    let config = config(&setup, "poll_secs = 3600").replace(PATCH, "sleep 60");
    let service = Service::start_in_process(setup.root.path(), with_config(&config)).await;
    let number = setup.fake.add_issue("Slow", "Takes long.", &["glitchlab"]);
    webhook(&service, "issues", "k-1", &labeled(&setup.fake, number)).await;
    let task = one_task(&service).await;
    let id = task["id"].as_str().unwrap();
    eventually(Duration::from_secs(30), "the task running", || async {
        service.get(&format!("/v1/tasks/{id}")).await.1["status"] == "running"
    })
    .await;
    let cancel = command(number, "wanda", "/glitchlab cancel");
    webhook(&service, "issue_comment", "k-2", &cancel).await;
    let ended = service
        .wait_finished_within(id, Duration::from_secs(30))
        .await;
    assert_eq!(ended["status"], "cancelled", "{ended:#}");
    one_comment_saying(&setup.fake, number, "cancelled", Duration::from_secs(20)).await;
    assert_eq!(setup.fake.issue(number).state, "open");
    contract(&setup.fake);
}

/// 20 labelled issues at once, `max_open_tasks = 3`: never more than 3 tasks open, all done in
/// the end, each issue with one comment, content-creating writes counted per minute.
#[tokio::test]
async fn a_burst_of_issues_is_admitted_three_at_a_time() {
    let setup = setup().await;
    for n in 0..20 {
        setup
            .fake
            .add_issue(&format!("Issue {n}"), "Add f.", &["glitchlab"]);
    }
    // Writes 200 ms apart: far above the loopback's jitter, so the spacing shows at the fake.
    let config = config(&setup, "poll_secs = 1\nmax_open_tasks = 3")
        .replace("write_spacing_ms = 10", "write_spacing_ms = 200");
    let service = Service::start_in_process(setup.root.path(), with_config(&config)).await;
    let start = Instant::now();
    let mut open_max = 0;
    loop {
        let tasks = issue_tasks(&service).await;
        let open = tasks
            .iter()
            .filter(|t| {
                !["done", "failed", "cancelled", "dead_letter"]
                    .contains(&t["status"].as_str().unwrap())
            })
            .count();
        open_max = open_max.max(open);
        assert!(open <= 3, "{open} open at once");
        let done = tasks.iter().filter(|t| t["status"] == "done").count();
        if done == 20 {
            break;
        }
        let failed: Vec<&Value> = tasks
            .iter()
            .filter(|t| t["status"] == "failed")
            .map(|t| &t["failures"])
            .collect();
        assert!(failed.is_empty(), "{}", json!(failed));
        assert!(
            start.elapsed() < Duration::from_secs(400),
            "{done} of 20 done"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(open_max, 3, "the repository's room was used");
    eventually(Duration::from_secs(30), "every comment merged", || async {
        (0..20u64).all(|n| {
            let comments = setup
                .fake
                .issue_comments(crate::github_fake::FIRST_ISSUE + n);
            comments.len() == 1 && comments[0].body.contains("merged (PR #")
        })
    })
    .await;
    let per_minute = setup.fake.creating_writes_per_minute_max();
    eprintln!("content-creating writes, most in one minute: {per_minute}");
    assert_eq!(
        per_minute, 60,
        "20 comments, 20 reactions, 20 PRs: nothing twice"
    );
    // Spaced by the one writer: each write starts 200 ms after the previous one started (and
    // after it was answered). The fake sees arrivals, each late by its request's own trip (which
    // a loaded machine stretched past 100 ms once), so the spacing is judged over the whole run:
    // from the first arrival to the last, the writer waited 200 ms between every two starts,
    // less at most the first request's trip. Unspaced writes take a fraction of that.
    let mut times = setup.fake.with(|s| s.creating_writes.clone());
    times.sort();
    let closest = times.windows(2).map(|w| w[1] - w[0]).min().unwrap();
    let span = times[times.len() - 1] - times[0];
    let spaced = Duration::from_millis(200) * u32::try_from(times.len() - 1).unwrap();
    eprintln!("content-creating writes: {span:?} from first to last, closest {closest:?} apart");
    assert!(
        span + Duration::from_millis(500) >= spaced,
        "{} writes in {span:?}: not {spaced:?} of spacing",
        times.len()
    );
    // And pair by pair: a late arrival shortens one gap (and lengthens the next); writes spaced
    // by less than 200 ms would make most gaps short.
    let short = times
        .windows(2)
        .filter(|w| w[1] - w[0] < Duration::from_millis(150))
        .count();
    assert!(
        short * 10 <= times.len(),
        "{short} of {} gaps under 150 ms",
        times.len() - 1
    );
    contract(&setup.fake);
}

/// `kill -9` right after the task was made, before its comment: after the restart one task and
/// one comment.
#[tokio::test]
async fn a_kill_between_the_task_and_its_comment_leaves_one_of_each() {
    let setup = setup().await;
    let number = setup.fake.add_issue("Add f", "Crash.", &["glitchlab"]);
    let config = config(&setup, "poll_secs = 1");
    let mut options: Options = with_config(&config);
    options.env = vec![
        (
            "FAILPOINTS".into(),
            "issue_intake.created=sleep(60000)".into(),
        ),
        (TOKEN_ENV.into(), TOKEN.into()),
        (WEBHOOK_SECRET_ENV.into(), WEBHOOK_SECRET.into()),
    ];
    let mut service = Service::start_with(setup.root.path(), options).await;
    one_task(&service).await;
    assert!(setup.fake.issue_comments(number).is_empty());
    service.kill_9();
    let mut options: Options = with_config(&config);
    options.env = vec![
        (TOKEN_ENV.into(), TOKEN.into()),
        (WEBHOOK_SECRET_ENV.into(), WEBHOOK_SECRET.into()),
    ];
    let service = Service::start_with(setup.root.path(), options).await;
    let task = one_task(&service).await;
    let id = task["id"].as_str().unwrap();
    let done = service
        .wait_finished_within(id, Duration::from_secs(120))
        .await;
    assert_eq!(done["status"], "done", "{done:#}");
    eventually(
        Duration::from_secs(20),
        "the comment to say merged",
        || async {
            let comments = setup.fake.issue_comments(number);
            !comments.is_empty() && comments[0].body.contains("merged (PR #")
        },
    )
    .await;
    assert_eq!(setup.fake.issue_comments(number).len(), 1);
    assert_eq!(issue_tasks(&service).await.len(), 1);
}
