//! The fleet with real parts: a real `nats-server -js` on a loopback port, the service with
//! `[fleet]`, and factory processes (`glitchlab factory`), each with its own data dir. Skipped,
//! saying why, when `nats-server` is missing (`scripts/test` installs it).

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{git, git_repo, with_config, Options, Service};

/// Lease of the tests' fleet: short, so a killed factory's job moves on quickly.
pub(crate) const LEASE_SECS: u64 = 3;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) fn nats_server_available() -> bool {
    Command::new("nats-server")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A child process killed when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A JetStream-enabled NATS server on a free loopback port, storing under `dir`.
pub(crate) struct Nats {
    pub(crate) url: String,
    port: u16,
    dir: PathBuf,
    process: Option<Running>,
}

impl Nats {
    pub(crate) fn start(dir: &Path) -> Nats {
        let port = free_port();
        let mut nats = Nats {
            url: format!("nats://127.0.0.1:{port}"),
            port,
            dir: dir.to_path_buf(),
            process: None,
        };
        nats.launch();
        nats
    }

    fn launch(&mut self) {
        let child = Command::new("nats-server")
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.process = Some(Running(child));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn restart(&mut self) {
        self.process = None;
        self.launch();
    }
}

/// A `glitchlab factory` process.
pub(crate) struct Factory {
    name: String,
    process: Option<Running>,
}

impl Factory {
    /// Issues `name` its key through the service (`POST /v1/fleet/factories`) and starts it.
    pub(crate) async fn start(
        root: &Path,
        nats: &Nats,
        service: &Service,
        name: &str,
        extra: &[&str],
    ) -> Factory {
        Self::start_slots(root, nats, service, name, 2, extra, &[]).await
    }

    /// Like [`Factory::start`], with `slots` slots and `env` added to its environment.
    pub(crate) async fn start_slots(
        root: &Path,
        nats: &Nats,
        service: &Service,
        name: &str,
        slots: usize,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Factory {
        let key = enrol(service, name).await;
        Factory::launch_with(root, &nats.url, name, &key, slots, extra, env)
    }

    /// Starts a factory with `key` on the NATS server at `url` (credentials in it, if any).
    fn launch(root: &Path, url: &str, name: &str, key: &str, extra: &[&str]) -> Factory {
        Factory::launch_with(root, url, name, key, 2, extra, &[])
    }

    /// Starts a factory with `key`, `slots` slots and `env` added to its environment.
    fn launch_with(
        root: &Path,
        url: &str,
        name: &str,
        key: &str,
        slots: usize,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Factory {
        let log = std::fs::File::create(root.join(format!("{name}.log"))).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_glitchlab"))
            .args(["factory", "--nats", url, "--name", name])
            .args(["--slots", &slots.to_string()])
            .args(["--lease-secs", &LEASE_SECS.to_string(), "--data-dir"])
            .arg(root.join(name))
            .args(extra)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .env("GLITCHLAB_FACTORY_KEY", key)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start a factory");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let log = std::fs::read_to_string(root.join(format!("{name}.log"))).unwrap_or_default();
        assert!(
            line.contains("ready"),
            "factory {name} did not start: {line}\n{log}"
        );
        Factory {
            name: name.to_owned(),
            process: Some(Running(child)),
        }
    }

    pub(crate) fn kill_9(&mut self) {
        if let Some(mut running) = self.process.take() {
            let _ = running.0.kill();
            let _ = running.0.wait();
        }
    }
}

/// The key the service issues a factory named `name`.
async fn enrol(service: &Service, name: &str) -> String {
    let (status, issued) = service
        .post("/v1/fleet/factories", &json!({"name": name}))
        .await;
    assert_eq!(status, 201, "{issued}");
    issued["key"].as_str().unwrap().to_owned()
}

pub(crate) fn fleet_config(nats: &Nats) -> String {
    format!(
        "[fleet]\nnats_url = \"{}\"\nlease_secs = {LEASE_SECS}\n[compass]\nmax_concurrent_tasks = 6\n",
        nats.url
    )
}

pub(crate) fn task(repo: &Path, title: &str, patch: &str, verify: &str) -> Value {
    json!({
        "title": title,
        "description": format!("{title}."),
        "repo": repo.display().to_string(),
        "verify": verify,
        "engines": {"patch": {"kind": "shell", "command": patch}},
    })
}

/// The factories that ran a task's jobs, from its `fleet.ran` events: (factory, delivery, stage).
async fn placements(service: &Service, id: &str) -> Vec<(String, u64, String)> {
    let (_, events) = service.get(&format!("/v1/tasks/{id}/events")).await;
    events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "fleet.ran")
        .map(|e| {
            (
                e["data"]["factory"].as_str().unwrap().to_owned(),
                e["data"]["delivery"].as_u64().unwrap(),
                e["data"]["stage"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

pub(crate) async fn wait_until(what: &str, timeout: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Skips the test (saying why) without `nats-server`; else holds the machine as a heavy test
/// (a NATS server and factory processes) for the rest of it.
macro_rules! require_nats {
    () => {
        if !nats_server_available() {
            eprintln!("SKIPPED: nats-server is not installed (scripts/test installs it)");
            return;
        }
        let _machine = crate::helpers::heavy().await;
    };
}

/// Six tasks on two factories: every engine and verify run happens on a factory, both
/// factories take work, every task lands its change (the engine's diff came back and was
/// committed here) with one commit on the base.
#[tokio::test]
async fn jobs_spread_over_the_factories_and_their_work_lands() {
    require_nats!();
    let root = tempfile::tempdir().unwrap();
    let nats = Nats::start(&root.path().join("nats"));
    let repo = git_repo(root.path());
    let service = Service::start_with(root.path(), with_config(&fleet_config(&nats))).await;
    let _one = Factory::start(root.path(), &nats, &service, "one", &[]).await;
    let _two = Factory::start(root.path(), &nats, &service, "two", &[]).await;

    let mut ids = Vec::new();
    for n in 0..6 {
        let body = task(
            &repo,
            &format!("Fleet change {n}"),
            &format!("test -s \"$GLITCHLAB_PROMPT_FILE\" && echo {n} > f{n}.txt"),
            &format!("sleep 0.5 && test -f f{n}.txt"),
        );
        ids.push(
            service.submit(&body).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let mut factories = std::collections::BTreeSet::new();
    for (n, id) in ids.iter().enumerate() {
        let task = service
            .wait_finished_within(id, Duration::from_secs(120))
            .await;
        assert_eq!(task["status"], "done", "{task:#}");
        let placed = placements(&service, id).await;
        let stages: Vec<&str> = placed.iter().map(|(_, _, s)| s.as_str()).collect();
        assert!(
            stages.contains(&"implement") && stages.contains(&"verify"),
            "{placed:?}"
        );
        factories.extend(placed.into_iter().map(|(f, _, _)| f));
        assert_eq!(
            git(&repo, &["show", &format!("main:f{n}.txt")]),
            n.to_string()
        );
    }
    assert_eq!(
        factories.into_iter().collect::<Vec<_>>(),
        ["one", "two"],
        "both factories took work"
    );
    let (status, fleet) = service.get("/v1/fleet").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = fleet["factories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["one", "two"], "{fleet:#}");
    assert!(fleet["factories"][0]["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c == "os:linux"));
}

/// `kill -9` of the factory running a verify: after its lease the job is delivered to the other
/// factory and finishes there; the task lands once, and its verify run is recorded (and charged)
/// once.
#[tokio::test]
async fn a_killed_factorys_job_finishes_on_another_within_the_lease() {
    require_nats!();
    let root = tempfile::tempdir().unwrap();
    let nats = Nats::start(&root.path().join("nats"));
    let repo = git_repo(root.path());
    let service = Service::start_with(root.path(), with_config(&fleet_config(&nats))).await;
    let mut factories = [
        Factory::start(root.path(), &nats, &service, "one", &[]).await,
        Factory::start(root.path(), &nats, &service, "two", &[]).await,
    ];
    let body = task(
        &repo,
        "Survives a lost factory",
        "echo ok > f.txt",
        "sleep 4 && test -f f.txt",
    );
    let id = service.submit(&body).await["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Find the factory running the verify, and kill it.
    let mut holder = String::new();
    wait_until(
        "a factory runs the verify",
        Duration::from_secs(60),
        async || {
            let (_, task) = service.get(&format!("/v1/tasks/{id}")).await;
            if task["stage"] != "verify" {
                return false;
            }
            let (_, fleet) = service.get("/v1/fleet").await;
            for factory in fleet["factories"].as_array().unwrap() {
                let runs_it = factory["running"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|job| job["task_id"] == id.as_str());
                if runs_it {
                    holder = factory["name"].as_str().unwrap().to_owned();
                    return true;
                }
            }
            false
        },
    )
    .await;
    let killed_at = Instant::now();
    factories
        .iter_mut()
        .find(|f| f.name == holder)
        .unwrap()
        .kill_9();

    let task = service
        .wait_finished_within(&id, Duration::from_secs(60))
        .await;
    assert_eq!(task["status"], "done", "{task:#}");
    let elapsed = killed_at.elapsed();
    // The lease, a second delivery's own 4 s verify, and a margin.
    assert!(
        elapsed < Duration::from_secs(LEASE_SECS + 4 + 10),
        "took {elapsed:?} after the kill"
    );
    let placed = placements(&service, &id).await;
    let verify: Vec<&(String, u64, String)> = placed.iter().filter(|p| p.2 == "verify").collect();
    assert_eq!(verify.len(), 1, "one verify result accepted: {placed:?}");
    assert_ne!(verify[0].0, holder, "finished elsewhere: {placed:?}");
    assert!(verify[0].1 >= 2, "a redelivery: {placed:?}");
    let ran = fleet_ran(&service, &id).await;
    let moved = ran.iter().find(|r| r["stage"] == "verify").unwrap();
    assert_eq!(
        moved["placement"], "redelivery after a lost lease",
        "{ran:#?}"
    );
    let (_, runs) = service.get(&format!("/v1/tasks/{id}/runs")).await;
    let verify_runs = runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["persona"] == "circuit" && r["stage"] == "verify")
        .count();
    assert_eq!(verify_runs, 1, "recorded and charged once");
    let landed = git(
        &repo,
        &[
            "log",
            "--format=%H",
            "--fixed-strings",
            &format!("--grep=Glitchlab-Task: {id}"),
            "main",
        ],
    );
    assert_eq!(landed.lines().count(), 1);
}

/// A job needing a capability no factory has waits, and says why; the pause switch stops all
/// claiming until resume.
#[tokio::test]
async fn a_job_nobody_can_serve_waits_with_the_reason_and_pause_stops_claims() {
    require_nats!();
    let root = tempfile::tempdir().unwrap();
    let nats = Nats::start(&root.path().join("nats"));
    let repo = git_repo(root.path());
    let service = Service::start_with(root.path(), with_config(&fleet_config(&nats))).await;
    let _one = Factory::start(
        root.path(),
        &nats,
        &service,
        "one",
        &["--capabilities", "has:fpga"],
    )
    .await;

    let mut gpu = task(&repo, "Needs a GPU", "echo ok > gpu.txt", "true");
    gpu["capabilities"] = json!(["has:gpu"]);
    let gpu_id = service.submit(&gpu).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_until(
        "the job waits with its reason",
        Duration::from_secs(30),
        async || {
            let (_, fleet) = service.get("/v1/fleet").await;
            fleet["waiting"].as_array().unwrap().iter().any(|job| {
                job["task_id"] == gpu_id.as_str() && job["reason"] == "no factory with has:gpu"
            })
        },
    )
    .await;
    let (status, _) = service
        .post(&format!("/v1/tasks/{gpu_id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 200);

    let (status, paused) = service.post("/v1/fleet/pause", &json!({})).await;
    assert_eq!((status, &paused["paused"]), (200, &json!(true)), "{paused}");
    let mut fpga = task(&repo, "Needs an FPGA", "echo ok > fpga.txt", "true");
    fpga["capabilities"] = json!(["has:fpga"]);
    let id = service.submit(&fpga).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_until(
        "the job is published",
        Duration::from_secs(30),
        async || {
            let (_, fleet) = service.get("/v1/fleet").await;
            fleet["waiting"]
                .as_array()
                .unwrap()
                .iter()
                .any(|job| job["task_id"] == id.as_str())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, fleet) = service.get("/v1/fleet").await;
    assert_eq!(fleet["paused"], true);
    assert!(
        fleet["waiting"]
            .as_array()
            .unwrap()
            .iter()
            .any(|job| job["task_id"] == id.as_str()),
        "claimed while paused: {fleet:#}"
    );
    let (status, _) = service.post("/v1/fleet/resume", &json!({})).await;
    assert_eq!(status, 200);
    let task = service
        .wait_finished_within(&id, Duration::from_secs(60))
        .await;
    assert_eq!(task["status"], "done", "{task:#}");
}

/// The NATS server restarts while a verify runs: the factory and the service reconnect, the
/// job's result is stored once the server is back, and the task lands.
#[tokio::test]
async fn a_nats_restart_mid_run_loses_nothing() {
    require_nats!();
    let root = tempfile::tempdir().unwrap();
    let mut nats = Nats::start(&root.path().join("nats"));
    let repo = git_repo(root.path());
    let service = Service::start_with(root.path(), with_config(&fleet_config(&nats))).await;
    let _one = Factory::start(root.path(), &nats, &service, "one", &[]).await;
    let body = task(
        &repo,
        "Through a NATS restart",
        "echo ok > f.txt",
        "sleep 3 && test -f f.txt",
    );
    let id = service.submit(&body).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_until("the verify runs", Duration::from_secs(60), async || {
        let (_, task) = service.get(&format!("/v1/tasks/{id}")).await;
        task["stage"] == "verify"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    nats.restart();
    let task = service
        .wait_finished_within(&id, Duration::from_secs(90))
        .await;
    assert_eq!(task["status"], "done", "{task:#}");
    assert_eq!(git(&repo, &["show", "main:f.txt"]), "ok");
}

/// A task on a remote (a `file://` URL): the job's commit is pushed to the remote as the job's
/// ref, the factory fetches it from there (not from the control plane's clone), and the change
/// lands on the remote's base; no job ref is left on the remote.
#[tokio::test]
async fn a_factory_fetches_a_remote_tasks_commit_from_the_remote() {
    require_nats!();
    let root = tempfile::tempdir().unwrap();
    let nats = Nats::start(&root.path().join("nats"));
    let seed = git_repo(&root.path().join("seed"));
    let bare = root.path().join("remote.git");
    git(
        root.path(),
        &[
            "clone",
            "-q",
            "--bare",
            seed.to_str().unwrap(),
            bare.to_str().unwrap(),
        ],
    );
    let url = format!("file://{}", bare.display());
    let service = Service::start_with(root.path(), with_config(&fleet_config(&nats))).await;
    let _one = Factory::start(root.path(), &nats, &service, "one", &[]).await;
    let body = json!({
        "title": "Remote fleet change",
        "description": "Write f.txt.",
        "repo": url,
        "verify": "test -f f.txt",
        "engines": {"patch": {"kind": "shell", "command": "echo ok > f.txt"}},
    });
    let id = service.submit(&body).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let task = service
        .wait_finished_within(&id, Duration::from_secs(60))
        .await;
    assert_eq!(task["status"], "done", "{task:#}");
    assert!(!placements(&service, &id).await.is_empty());
    let git_dir = format!("--git-dir={}", bare.display());
    assert_eq!(git(root.path(), &[&git_dir, "show", "main:f.txt"]), "ok");
    assert_eq!(
        git(root.path(), &[&git_dir, "for-each-ref", "refs/glitchlab/"]),
        "",
        "job refs left on the remote"
    );
    let factory_log = std::fs::read_to_string(root.path().join("one.log")).unwrap();
    assert!(!factory_log.contains("could not run"), "{factory_log}");
}

/// A task's `fleet.ran` events (their `data`).
async fn fleet_ran(service: &Service, id: &str) -> Vec<Value> {
    let (_, events) = service.get(&format!("/v1/tasks/{id}/events")).await;
    events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "fleet.ran")
        .map(|e| e["data"].clone())
        .collect()
}

/// One SSE message: its event name and data.
struct SseMessage {
    event: String,
    data: Value,
}

/// An open SSE response, read message by message (as in `stream.rs`).
struct Sse {
    response: reqwest::Response,
    buffer: String,
}

impl Sse {
    async fn open(service: &Service, path: &str) -> Sse {
        let response = crate::helpers::client()
            .get(format!("{}{path}", service.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        Sse {
            response,
            buffer: String::new(),
        }
    }

    /// The next message (keep-alives skipped); `None` when the stream ended.
    async fn next(&mut self, within: Duration) -> Option<SseMessage> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = "message".to_owned();
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(name) = line.strip_prefix("event: ") {
                        event = name.to_owned();
                    } else if let Some(chunk) = line.strip_prefix("data: ") {
                        data.push_str(chunk);
                    }
                }
                if data.is_empty() {
                    continue;
                }
                let data = serde_json::from_str(&data).unwrap();
                return Some(SseMessage { event, data });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let chunk = tokio::time::timeout(left, self.response.chunk())
                .await
                .expect("no SSE message in time")
                .unwrap()?;
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }
}

/// A verify running on a factory prints a line every 200 ms for 2 s, and a secret: its output
/// reaches the task's stream as `run.output` chunks of the verify's run record before the
/// verify ends, with the secret redacted (the factory sends raw bytes; the control plane
/// redacts and bounds them as it does local output).
#[tokio::test]
async fn a_remote_runs_output_reaches_the_tasks_stream_live_and_redacted() {
    require_nats!();
    let root = tempfile::tempdir().unwrap();
    let nats = Nats::start(&root.path().join("nats"));
    let repo = git_repo(root.path());
    let secret = "hunter2-5e1b7d-fleet-secret";
    std::fs::create_dir_all(root.path().join("actors")).unwrap();
    std::fs::write(
        root.path().join("actors/circuit.md"),
        "---\nname: circuit\nrole: verify gate\nenv: [GLITCHLAB_TEST_SECRET]\ntools:\n  allow: [sh, echo, test, sleep, printf]\n---\nYou are Circuit.\n",
    )
    .unwrap();
    let options = Options {
        config: Some(format!(
            "{}[governance]\nsecrets = [\"GLITCHLAB_TEST_SECRET\"]\n",
            fleet_config(&nats)
        )),
        env: vec![("GLITCHLAB_TEST_SECRET".into(), secret.into())],
        ..Default::default()
    };
    let service = Service::start_with(root.path(), options).await;
    let _one = Factory::start(root.path(), &nats, &service, "one", &[]).await;
    let verify = "sleep 1; echo \"key $GLITCHLAB_TEST_SECRET\"; \
        for i in 0 1 2 3 4 5 6 7 8 9; do echo \"verify line $i\"; sleep 0.2; done; \
        test -f f.txt";
    let body = task(&repo, "Streams from afar", "echo ok > f.txt", verify);
    let id = service.submit(&body).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut stream = Sse::open(&service, &format!("/v1/tasks/{id}/events/stream")).await;
    let mut received = Vec::new();
    loop {
        let message = stream
            .next(Duration::from_secs(90))
            .await
            .expect("the stream ended without an `end` event");
        if message.event == "end" {
            assert_eq!(message.data["status"], "done", "{:#?}", received.len());
            break;
        }
        received.push(message);
    }
    let is_verify_output = |m: &SseMessage| {
        m.event == "run.output" && m.data["persona"] == "circuit" && m.data["stage"] == "verify"
    };
    let output: Vec<&SseMessage> = received.iter().filter(|m| is_verify_output(m)).collect();
    assert!(
        output.len() >= 2,
        "the verify's output came in chunks: {}",
        output.len()
    );
    for chunk in &output {
        let raw = chunk.data.to_string();
        assert!(!raw.contains(secret), "the secret leaked: {raw}");
        assert!(chunk.data["text"].as_str().unwrap().len() <= 4096);
    }
    let text: String = output
        .iter()
        .filter(|m| m.data["stream"] == "stdout")
        .map(|m| m.data["text"].as_str().unwrap())
        .collect();
    assert!(
        text.contains("key [REDACTED:GLITCHLAB_TEST_SECRET]\n"),
        "{text}"
    );
    assert!(text.contains("verify line 9\n"), "{text}");
    let verify_end = received
        .iter()
        .position(|m| m.event == "stage.finished" && m.data["data"]["stage"] == "verify")
        .expect("verify finished");
    let first_line = received
        .iter()
        .position(|m| {
            is_verify_output(m) && m.data["text"].as_str().unwrap().contains("verify line 0\n")
        })
        .expect("the verify's first line was streamed");
    assert!(first_line < verify_end, "streamed before the verify ended");
    // The chunks belong to the verify's run record.
    let (_, runs) = service.get(&format!("/v1/tasks/{id}/runs")).await;
    let run_ids: Vec<&str> = runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["persona"] == "circuit" && r["stage"] == "verify")
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert!(
        run_ids.contains(&output[0].data["run_id"].as_str().unwrap()),
        "{run_ids:?}"
    );
    let placed = placements(&service, &id).await;
    assert!(placed.iter().any(|p| p.2 == "verify"), "{placed:?}");
}

/// Two factories: the first task on a repository warms the cache of the factory that ran it;
/// the next tasks on that repository all run there (it has free slots), and their `fleet.ran`
/// events say `warm clone`.
#[tokio::test]
async fn same_repository_jobs_prefer_the_factory_with_a_warm_clone() {
    require_nats!();
    let root = tempfile::tempdir().unwrap();
    let nats = Nats::start(&root.path().join("nats"));
    let repo = git_repo(root.path());
    let service = Service::start_with(root.path(), with_config(&fleet_config(&nats))).await;
    let _one = Factory::start(root.path(), &nats, &service, "one", &[]).await;
    let _two = Factory::start(root.path(), &nats, &service, "two", &[]).await;

    let first = task(&repo, "Warm up", "echo 0 > w0.txt", "test -f w0.txt");
    let id = service.submit(&first).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let done = service
        .wait_finished_within(&id, Duration::from_secs(120))
        .await;
    assert_eq!(done["status"], "done", "{done:#}");
    let ran = fleet_ran(&service, &id).await;
    assert!(!ran.is_empty());
    assert_eq!(
        ran[0]["placement"], "first free factory",
        "nobody was warm: {ran:#?}"
    );
    let warm: std::collections::BTreeSet<String> = ran
        .iter()
        .map(|r| r["factory"].as_str().unwrap().to_owned())
        .collect();
    // Every later job of the first task found the cache warm too.
    for later in &ran[1..] {
        assert_eq!(later["placement"], "warm clone", "{ran:#?}");
    }

    for n in 1..4 {
        let body = task(
            &repo,
            &format!("Warm {n}"),
            &format!("echo {n} > w{n}.txt"),
            &format!("test -f w{n}.txt"),
        );
        let id = service.submit(&body).await["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let done = service
            .wait_finished_within(&id, Duration::from_secs(120))
            .await;
        assert_eq!(done["status"], "done", "{done:#}");
        let ran = fleet_ran(&service, &id).await;
        assert!(ran.len() >= 2, "{ran:#?}");
        for job in &ran {
            assert!(
                warm.contains(job["factory"].as_str().unwrap()),
                "ran on a cold factory (warm: {warm:?}): {ran:#?}"
            );
            assert_eq!(job["placement"], "warm clone", "{ran:#?}");
        }
    }
}

/// `capabilities: [has:gpu]` in `actors/patch.md`: a task that asks for nothing still needs a
/// GPU factory for Patch's engine; it waits with the reason until one starts, then runs there.
#[tokio::test]
async fn a_personas_default_capabilities_route_its_jobs() {
    require_nats!();
    let root = tempfile::tempdir().unwrap();
    let nats = Nats::start(&root.path().join("nats"));
    let repo = git_repo(root.path());
    let builtin =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("actors/patch.md"))
            .unwrap();
    let with_gpu = builtin.replacen("\nengine:", "\ncapabilities: [has:gpu]\nengine:", 1);
    assert_ne!(with_gpu, builtin);
    std::fs::create_dir_all(root.path().join("actors")).unwrap();
    std::fs::write(root.path().join("actors/patch.md"), with_gpu).unwrap();
    let service = Service::start_with(root.path(), with_config(&fleet_config(&nats))).await;
    let _plain = Factory::start(root.path(), &nats, &service, "plain", &[]).await;

    let body = task(
        &repo,
        "Needs Patch's GPU",
        "echo ok > g.txt",
        "test -f g.txt",
    );
    let id = service.submit(&body).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_until(
        "the job waits with its reason",
        Duration::from_secs(30),
        async || {
            let (_, fleet) = service.get("/v1/fleet").await;
            fleet["waiting"].as_array().unwrap().iter().any(|job| {
                job["task_id"] == id.as_str() && job["reason"] == "no factory with has:gpu"
            })
        },
    )
    .await;
    let (_, task_now) = service.get(&format!("/v1/tasks/{id}")).await;
    assert_ne!(task_now["status"], "done");

    let _gpu = Factory::start(
        root.path(),
        &nats,
        &service,
        "gpu",
        &["--capabilities", "has:gpu"],
    )
    .await;
    let done = service
        .wait_finished_within(&id, Duration::from_secs(120))
        .await;
    assert_eq!(done["status"], "done", "{done:#}");
    assert_eq!(git(&repo, &["show", "main:g.txt"]), "ok");
    let ran = fleet_ran(&service, &id).await;
    let implement: Vec<&Value> = ran.iter().filter(|r| r["stage"] == "implement").collect();
    assert_eq!(implement.len(), 1, "{ran:#?}");
    assert_eq!(implement[0]["factory"], "gpu", "{ran:#?}");
    assert_eq!(implement[0]["capabilities"], json!(["has:gpu"]), "{ran:#?}");
}

/// Issue 30: a fleet you can trust (auth, forgeries, sealed secrets, fencing).
#[path = "fleet_trust.rs"]
mod trust;
