//! `GET /metrics`: the Prometheus text of a real service after a real task went through it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::helpers::{git_repo, shell_task, Service};

/// How long the counters that follow a task's end (recorded after its flush, and the slot freed
/// after the pipeline stops) may take to show.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// One sample of the exposition: a metric name, its labels, its value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the Prometheus text format (0.0.4): `# ` lines are comments; every other non-empty line
/// is `name{label="value",...} value [timestamp]`, label values escaped with `\\`, `\"`, `\n`.
fn parse_exposition(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| parse_sample(line).unwrap_or_else(|| panic!("bad sample line: {line}")))
        .collect()
}

fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_owned();
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(inner)?;
        labels = parsed;
        rest = after;
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// Parses `key="value",...}`; returns the labels and what follows the `}`.
fn parse_labels(mut text: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    loop {
        text = text.trim_start_matches(',');
        if let Some(after) = text.strip_prefix('}') {
            return Some((labels, after));
        }
        let (key, after_key) = text.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after_key.char_indices();
        let end = loop {
            let (at, c) = chars.next()?;
            match c {
                '"' => break at,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                other => value.push(other),
            }
        };
        labels.insert(key.to_owned(), value);
        text = &after_key[end + 1..];
    }
}

/// The value of the sample `name` whose labels are exactly `labels`.
fn value_of(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let wanted: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    samples
        .iter()
        .find(|s| s.name == name && s.labels == wanted)
        .map(|s| s.value)
}

/// `GET /metrics` → (status, content type, body).
async fn scrape(service: &Service) -> (u16, String, String) {
    let response = crate::helpers::client()
        .get(format!("{}/metrics", service.base))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, content_type, response.text().await.unwrap())
}

/// Scrapes until `ready` holds for the samples; panics with the last text after the timeout.
async fn scrape_until(service: &Service, ready: impl Fn(&[Sample]) -> bool) -> String {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let (_, _, text) = scrape(service).await;
        if ready(&parse_exposition(&text)) {
            return text;
        }
        assert!(Instant::now() < deadline, "metrics did not settle:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn the_parser_reads_labels_escapes_and_special_values() {
    let samples = parse_exposition(
        "# HELP x a help line\n# TYPE x counter\nx 3\n\
         y{a=\"1\",b=\"q\\\"uo\\\\te\\n\"} 2.5\n\
         z_bucket{le=\"+Inf\"} 7 1700000000\n",
    );
    assert_eq!(value_of(&samples, "x", &[]), Some(3.0));
    assert_eq!(
        value_of(&samples, "y", &[("a", "1"), ("b", "q\"uo\\te\n")]),
        Some(2.5)
    );
    assert_eq!(value_of(&samples, "y", &[("a", "1")]), None);
    assert_eq!(value_of(&samples, "z_bucket", &[("le", "+Inf")]), Some(7.0));
}

#[tokio::test]
async fn metrics_count_a_task_its_engine_runs_and_its_requests() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let service = Service::start(root.path()).await;

    let task = service
        .submit(&shell_task(
            &repo,
            "echo hello > hello.txt",
            "grep -q hello hello.txt",
        ))
        .await;
    let id = task["id"].as_str().unwrap().to_owned();
    let kind = task["kind"].as_str().unwrap().to_owned();
    let task = service.wait_until_finished(&id).await;
    assert_eq!(task["status"], "done", "{task:#}");
    let (status, _) = service.get("/no/such/route").await;
    assert_eq!(status, 404);

    let finished = [("status", "done")];
    scrape_until(&service, |samples| {
        value_of(samples, "glitchlab_tasks_finished_total", &finished) == Some(1.0)
            && value_of(samples, "glitchlab_tasks_running", &[]) == Some(0.0)
    })
    .await;
    let (status, content_type, text) = scrape(&service).await;
    assert_eq!(status, 200);
    assert_eq!(content_type, "text/plain; version=0.0.4");
    let samples = parse_exposition(&text);
    let value = |name: &str, labels: &[(&str, &str)]| value_of(&samples, name, labels);

    // Tasks: one submitted of its kind, one done, nothing waiting or holding a slot.
    assert_eq!(kind, "feature");
    let submitted = value("glitchlab_tasks_submitted_total", &[("kind", "feature")]);
    assert_eq!(submitted, Some(1.0), "{text}");
    assert_eq!(
        value("glitchlab_tasks_finished_total", &finished),
        Some(1.0)
    );
    for other in ["failed", "cancelled", "dead_letter"] {
        let labels = [("status", other)];
        assert_eq!(value("glitchlab_tasks_finished_total", &labels), None);
    }
    assert_eq!(value("glitchlab_tasks_queued", &[]), Some(0.0), "{text}");
    assert_eq!(value("glitchlab_tasks_running", &[]), Some(0.0), "{text}");

    // Engine runs: the builtin plan, the shell implement and the verify, each once, all ok.
    for (persona, engine) in [
        ("planner", "builtin"),
        ("patch", "shell"),
        ("circuit", "shell"),
    ] {
        let labels = [("persona", persona), ("engine", engine), ("status", "ok")];
        let runs = value("glitchlab_engine_runs_total", &labels);
        assert_eq!(runs, Some(1.0), "{persona}/{engine}:\n{text}");
        let labels = [("persona", persona), ("engine", engine)];
        let count = value("glitchlab_engine_run_duration_seconds_count", &labels);
        assert_eq!(count, Some(1.0), "{persona}/{engine}:\n{text}");
        let labels = [("persona", persona), ("engine", engine), ("le", "+Inf")];
        let bucket = value("glitchlab_engine_run_duration_seconds_bucket", &labels);
        assert_eq!(bucket, Some(1.0), "{persona}/{engine}:\n{text}");
        // Each run was charged to its persona's agent account.
        let charged = value(
            "glitchlab_ledger_charged_micro_tokens_total",
            &[("persona", persona)],
        );
        assert!(charged.is_some_and(|v| v > 0.0), "{persona}:\n{text}");
    }
    // The ledger: the task's reservation (code 10) and three run charges (code 11).
    assert_eq!(
        value("glitchlab_ledger_transfers_total", &[("code", "11")]),
        Some(3.0),
        "{text}"
    );
    assert!(value("glitchlab_ledger_transfers_total", &[("code", "10")]).is_some_and(|v| v >= 1.0));

    // HTTP: by route pattern, never by raw path or id.
    let created = [
        ("method", "POST"),
        ("route", "/v1/tasks"),
        ("status", "201"),
    ];
    assert_eq!(
        value("glitchlab_http_requests_total", &created),
        Some(1.0),
        "{text}"
    );
    let polled = [
        ("method", "GET"),
        ("route", "/v1/tasks/{id}"),
        ("status", "200"),
    ];
    assert!(value("glitchlab_http_requests_total", &polled).is_some_and(|v| v >= 1.0));
    let missing = [("method", "GET"), ("route", "unmatched"), ("status", "404")];
    assert_eq!(
        value("glitchlab_http_requests_total", &missing),
        Some(1.0),
        "{text}"
    );
    let timed = [("method", "POST"), ("route", "/v1/tasks")];
    let count = value("glitchlab_http_request_duration_seconds_count", &timed);
    assert_eq!(count, Some(1.0), "{text}");
    assert!(
        !text.contains(&id),
        "a task id leaked into a label:\n{text}"
    );
    assert!(!text.contains("/no/such/route"), "{text}");

    // Nothing crashed.
    assert!(samples
        .iter()
        .all(|s| s.name != "glitchlab_actor_restarts_total"
            && s.name != "glitchlab_actor_failures_total"));
}

/// A persona that always crashes: restarted twice, then it cannot start any more (a broken
/// persona, not a poison task): given up on; its task fails.
#[cfg(feature = "failpoints")]
#[tokio::test]
async fn metrics_count_persona_restarts_and_give_ups() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let config = "[supervision]\nmax_restarts = 3\nwindow_secs = 60\nbackoff_base_ms = 10\nbackoff_max_ms = 40\n";
    let options = crate::helpers::Options {
        config: Some(config.to_owned()),
        env: vec![(
            "FAILPOINTS".into(),
            "circuit.handle=panic;circuit.start=3*off->panic".into(),
        )],
        ..Default::default()
    };
    let service = Service::start_with(root.path(), options).await;
    let task = service
        .submit(&shell_task(&repo, "echo hi > hi.txt", "true"))
        .await;
    let task = service
        .wait_until_finished(task["id"].as_str().unwrap())
        .await;
    assert_eq!(task["error"]["code"], "PERSONA_UNAVAILABLE", "{task:#}");

    let failed = [("status", "failed")];
    let text = scrape_until(&service, |samples| {
        value_of(samples, "glitchlab_tasks_finished_total", &failed) == Some(1.0)
    })
    .await;
    let samples = parse_exposition(&text);
    let circuit = [("actor", "circuit")];
    let restarts = value_of(&samples, "glitchlab_actor_restarts_total", &circuit);
    assert_eq!(restarts, Some(2.0), "{text}");
    let failures = value_of(&samples, "glitchlab_actor_failures_total", &circuit);
    assert_eq!(failures, Some(1.0), "{text}");
    for other in ["patch", "planner", "pipeline"] {
        let labels = [("actor", other)];
        assert_eq!(
            value_of(&samples, "glitchlab_actor_restarts_total", &labels),
            None,
            "{text}"
        );
    }
}

/// Deploys (rejected, then approved and healthy), check runs and incidents of a `command` app.
#[tokio::test]
async fn metrics_count_deploys_checks_and_incidents() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let ops_file = root.path().join("ops.yaml");
    let ops = format!(
        "apps:\n  svc:\n    repo: {repo}\n    provider: command\n    command: {{deploy: \"true\", rollback: \"true\", status: \"true\"}}\n    gates: {{approve_first: 5}}\n    checks:\n      - {{name: up, schedule: \"*/1 * * * * *\", kind: command, command: \"true\"}}\n      - {{name: down, schedule: \"*/1 * * * * *\", kind: command, command: \"false\"}}\n",
        repo = repo.display()
    );
    std::fs::write(&ops_file, ops).unwrap();
    let config = format!("[paths]\nops_file = \"{}\"\n", ops_file.display());
    let service = Service::start_with(root.path(), crate::helpers::with_config(&config)).await;

    let deploy = serde_json::json!({"app": "svc"});
    let (status, first) = service.post("/v1/deploys", &deploy).await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["status"], "awaiting_approval", "{first}");
    let reject = format!("/v1/deploys/{}/reject", first["id"].as_str().unwrap());
    let (status, rejected) = service.post_raw(&reject, "").await;
    assert_eq!(status, 200, "{rejected}");
    let (status, second) = service.post("/v1/deploys", &deploy).await;
    assert_eq!(status, 201, "{second}");
    let approve = format!("/v1/deploys/{}/approve", second["id"].as_str().unwrap());
    let (status, approved) = service.post_raw(&approve, "").await;
    assert_eq!(status, 200, "{approved}");
    let alert = serde_json::json!({"app": "not-in-ops-yaml", "signal": "odd_smell"});
    let (status, opened) = service.post("/v1/alerts", &alert).await;
    assert_eq!(status, 202, "{opened}");

    let healthy = [("app", "svc"), ("status", "healthy")];
    let up = [("app", "svc"), ("check", "up"), ("outcome", "pass")];
    let down = [("app", "svc"), ("check", "down"), ("outcome", "fail")];
    let text = scrape_until(&service, |samples| {
        value_of(samples, "glitchlab_deploys_finished_total", &healthy) == Some(1.0)
            && value_of(samples, "glitchlab_checks_total", &up).is_some_and(|v| v >= 1.0)
            && value_of(samples, "glitchlab_checks_total", &down).is_some_and(|v| v >= 1.0)
    })
    .await;
    let samples = parse_exposition(&text);
    let rejected = [("app", "svc"), ("status", "rejected")];
    assert_eq!(
        value_of(&samples, "glitchlab_deploys_finished_total", &rejected),
        Some(1.0),
        "{text}"
    );
    // The webhook's app is not in ops.yaml: one label for all such apps, never the name sent.
    let other = [("app", "other"), ("classification", "none")];
    assert_eq!(
        value_of(&samples, "glitchlab_incidents_opened_total", &other),
        Some(1.0),
        "{text}"
    );
    assert!(!text.contains("not-in-ops-yaml"), "{text}");
}
