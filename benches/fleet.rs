//! Fleet benchmark: task throughput with one, two and three local factories, and the time from a
//! factory's `kill -9` to its job's completion on another. A real `nats-server -js` on a loopback
//! port, the service in-process, factories as `glitchlab factory` child processes (2 slots each).
//! Run with `cargo bench --bench fleet`; figures go to `docs/benchmarks.md`. Every factory runs on
//! this machine, so the figures are bound by its cores, not by the fleet.

// A test or a bench states what it expects with unwrap/expect/panic, and is nobody's API; the
// service code may not (Cargo.toml).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    unreachable_pub
)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use glitchlab::app::startup::Application;
use glitchlab::config::Config;
use serde_json::{json, Value};

const TASKS: usize = 12;
const REPOS: usize = 4;
const LEASE_SECS: u64 = 3;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn git(dir: &Path, args: &[&str]) {
    let status = Command::new("git")
        .args(["-c", "user.name=bench", "-c", "user.email=bench@localhost"])
        .args(args)
        .current_dir(dir)
        .status()
        .expect("git");
    assert!(status.success(), "git {args:?}");
}

fn repo(root: &Path, name: &str) -> PathBuf {
    let path = root.join(name);
    std::fs::create_dir_all(&path).unwrap();
    git(&path, &["init", "-q", "-b", "main"]);
    std::fs::write(path.join("README.md"), "bench\n").unwrap();
    git(&path, &["add", "-A"]);
    git(&path, &["commit", "-q", "-m", "initial"]);
    path
}

fn nats_server(dir: &Path) -> (Killed, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("nats-server")
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server (apt-get install nats-server)");
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(50));
    }
    (Killed(child), format!("nats://127.0.0.1:{port}"))
}

fn factory(root: &Path, url: &str, name: &str, key: &str) -> Killed {
    let mut child = Command::new(env!("CARGO_BIN_EXE_glitchlab"))
        .args(["factory", "--nats", url, "--name", name, "--slots", "2"])
        .env("GLITCHLAB_FACTORY_KEY", key)
        .args(["--lease-secs", &LEASE_SECS.to_string(), "--data-dir"])
        .arg(root.join(name))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("ready"), "{line}");
    Killed(child)
}

struct Bench {
    client: reqwest::Client,
    base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<Result<(), glitchlab::app::startup::StartupError>>>,
}

impl Bench {
    async fn start(root: &Path, url: &str) -> Bench {
        let mut config = Config::default();
        config.server.bind = "127.0.0.1:0".parse().unwrap();
        config.server.requests_per_sec = 0;
        config.storage.data_dir = root.join("data");
        config.paths.actors_dir = root.join("no-actors");
        config.governance.sandbox = glitchlab::platform::sandbox::SandboxMode::Off;
        config.compass.max_concurrent_tasks = 8;
        config.fleet.nats_url = Some(url.to_owned());
        config.fleet.lease_secs = LEASE_SECS;
        let application = Application::build(config).await.unwrap();
        let base = format!("http://{}", application.addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(application.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        let secret = std::fs::read_to_string(root.join("data").join("admin.token")).unwrap();
        let mut headers = reqwest::header::HeaderMap::new();
        let bearer = format!("Bearer {}", secret.trim());
        headers.insert(reqwest::header::AUTHORIZATION, bearer.parse().unwrap());
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .unwrap();
        Bench {
            client,
            base,
            stop: Some(stop),
            server: Some(server),
        }
    }

    /// The key the service issues factory `name` (issue 30: a factory needs one).
    async fn enrol(&self, name: &str) -> String {
        let issued: Value = self
            .client
            .post(format!("{}/v1/fleet/factories", self.base))
            .json(&json!({"name": name}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        issued["key"].as_str().unwrap().to_owned()
    }

    async fn submit(&self, repo: &Path, n: usize, verify: &str) -> String {
        let body = json!({
            "title": format!("fleet bench {n}"),
            "description": "Write one file.",
            "repo": repo.display().to_string(),
            "verify": verify,
            "engines": {"patch": {"kind": "shell", "command": format!("echo {n} > f{n}.txt")}},
        });
        let task: Value = self
            .client
            .post(format!("{}/v1/tasks", self.base))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        task["id"].as_str().expect("task id").to_owned()
    }

    async fn task(&self, id: &str) -> Value {
        self.client
            .get(format!("{}/v1/tasks/{id}", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn wait_done(&self, id: &str) {
        loop {
            let task = self.task(id).await;
            match task["status"].as_str() {
                Some("done") => return,
                Some("failed" | "cancelled" | "dead_letter") => panic!("bench task failed: {task}"),
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }
}

/// Tasks per second for `TASKS` tasks over `REPOS` repositories with `factories` factories.
async fn throughput(factories: usize, verify: &str) -> f64 {
    let root = tempfile::tempdir().unwrap();
    let (_nats, url) = nats_server(&root.path().join("nats"));
    let bench = Bench::start(root.path(), &url).await;
    let mut _factories: Vec<Killed> = Vec::new();
    for n in 0..factories {
        let name = format!("f{n}");
        let key = bench.enrol(&name).await;
        _factories.push(factory(root.path(), &url, &name, &key));
    }
    let repos: Vec<PathBuf> = (0..REPOS)
        .map(|n| repo(root.path(), &format!("repo-{n}")))
        .collect();
    let started = Instant::now();
    let mut ids = Vec::new();
    for n in 0..TASKS {
        ids.push(bench.submit(&repos[n % REPOS], n, verify).await);
    }
    for id in &ids {
        bench.wait_done(id).await;
    }
    let rate = TASKS as f64 / started.elapsed().as_secs_f64();
    bench.stop().await;
    rate
}

/// Seconds from `kill -9` of the factory running a 2 s verify to the task's end.
async fn reclaim() -> f64 {
    let root = tempfile::tempdir().unwrap();
    let (_nats, url) = nats_server(&root.path().join("nats"));
    let bench = Bench::start(root.path(), &url).await;
    let mut factories: Vec<(String, Killed)> = Vec::new();
    for n in 0..2 {
        let name = format!("f{n}");
        let key = bench.enrol(&name).await;
        let process = factory(root.path(), &url, &name, &key);
        factories.push((name, process));
    }
    let repo = repo(root.path(), "repo");
    let id = bench.submit(&repo, 0, "sleep 2").await;
    let holder = loop {
        let fleet: Value = bench
            .client
            .get(format!("{}/v1/fleet", bench.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let task = bench.task(&id).await;
        let found = fleet["factories"].as_array().unwrap().iter().find(|f| {
            task["stage"] == "verify"
                && f["running"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|job| job["task_id"] == id.as_str())
        });
        if let Some(found) = found {
            break found["name"].as_str().unwrap().to_owned();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let killed_at = Instant::now();
    factories.retain(|(name, _)| *name != holder);
    bench.wait_done(&id).await;
    let seconds = killed_at.elapsed().as_secs_f64();
    bench.stop().await;
    seconds
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    println!(
        "{TASKS} tasks over {REPOS} repositories; factories with 2 slots each, all on this host"
    );
    println!("| factories | no-op tasks/s | 1 s verify tasks/s |");
    println!("|---|---|---|");
    for factories in 1..=3 {
        let noop = throughput(factories, "true").await;
        let slow = throughput(factories, "sleep 1").await;
        println!("| {factories} | {noop:.2} | {slow:.2} |");
    }
    let seconds = reclaim().await;
    println!(
        "kill -9 of the factory running a 2 s verify → the task done elsewhere: {seconds:.1} s \
         (lease {LEASE_SECS} s)"
    );
}
