//! Test harness: the real `glitchlab` binary on `127.0.0.1:0` with a temp data dir, real git
//! repositories in temp dirs, and real HTTP — or, for suites that never crash, kill or signal
//! it, the same service inside the test process (`Service::start_in_process`,
//! `crate::in_process`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::in_process::InProcess;

/// How long a service may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Set to `0`, [`Service::start_in_process`] starts the binary instead.
const IN_PROCESS_VAR: &str = "GLITCHLAB_IT_IN_PROCESS";

/// The admin secret every test service starts with (`GLITCHLAB_ADMIN_TOKEN`: the token
/// `bootstrap`), unless its options say otherwise.
pub const ADMIN_TOKEN: &str = "glt_test-admin-secret-0123456789abcdef0123456789abcdef0123";

/// A client that sends the test admin token.
pub fn client() -> reqwest::Client {
    client_builder().build().unwrap()
}

/// A client builder that sends the test admin token.
pub fn client_builder() -> reqwest::ClientBuilder {
    client_builder_with(ADMIN_TOKEN)
}

/// A client builder that sends `secret` as its bearer token.
pub fn client_builder_with(secret: &str) -> reqwest::ClientBuilder {
    let mut headers = reqwest::header::HeaderMap::new();
    let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {secret}")).unwrap();
    headers.insert(reqwest::header::AUTHORIZATION, value);
    // Idle pooled connections are dropped well before the service closes them
    // (`server.idle_timeout_secs`, 60 s by default): a request sent on one the service is closing
    // at that instant fails with an incomplete message, a race of the client's, not the service's.
    reqwest::Client::builder()
        .default_headers(headers)
        .pool_idle_timeout(CLIENT_POOL_IDLE)
}

/// How long the test client keeps an idle connection for reuse: half the service's default idle
/// timeout.
const CLIENT_POOL_IDLE: std::time::Duration = std::time::Duration::from_secs(30);

/// A running service: a process of the binary, or a service inside the test process.
pub struct Service {
    child: Option<Child>,
    /// Set when the service runs inside the test process (then `child` is none).
    in_process: Option<InProcess>,
    /// `http://127.0.0.1:PORT` (`https://` when the config sets `server.tls_cert`).
    pub base: String,
    /// The temp dir holding the data dir, the log and the config.
    pub root: PathBuf,
    client: reqwest::Client,
}

/// How to start a service.
#[derive(Default, Clone)]
pub struct Options {
    /// Config file text (TOML); none means built-in defaults.
    pub config: Option<String>,
    /// Extra environment, e.g. `FAILPOINTS`.
    pub env: Vec<(String, String)>,
    /// Start without `GLITCHLAB_ADMIN_TOKEN` (the service then makes `<data>/admin.token`).
    pub no_admin_env: bool,
    /// Leave the temp root out of `governance.sandbox_writable`, so sandboxed commands see no
    /// more of it than their own directories (containment tests).
    pub no_root_writable: bool,
}

impl Service {
    /// Starts a service with default options in a fresh temp root.
    pub async fn start(root: &Path) -> Service {
        Self::start_with(root, Options::default()).await
    }

    /// Starts a service whose data dir is `<root>/data` (reused when it exists: a restart).
    pub async fn start_with(root: &Path, options: Options) -> Service {
        let mut command = Command::new(env!("CARGO_BIN_EXE_glitchlab"));
        command
            .arg("serve")
            .arg("--bind")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(root.join("data"))
            .current_dir(root)
            .env("RUST_LOG", "info,tower_http=warn")
            .env_remove("GLITCHLAB_ADMIN_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        command.arg("--config").arg(write_config(root, &options));
        if !options.no_admin_env {
            command.env("GLITCHLAB_ADMIN_TOKEN", ADMIN_TOKEN);
        }
        for (key, value) in &options.env {
            command.env(key, value);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(root.join("service.log"))
            .unwrap();
        command.stderr(log);
        let mut child = command.spawn().expect("start glitchlab");
        let stdout = child.stdout.take().unwrap();
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = sender.send(line);
            }
        });
        let line = receiver.recv_timeout(START_TIMEOUT).unwrap_or_else(|_| {
            panic!(
                "service did not start; log:\n{}",
                std::fs::read_to_string(root.join("service.log")).unwrap_or_default()
            )
        });
        let base = line
            .strip_prefix("glitchlab listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line}"))
            .to_owned();
        Service {
            child: Some(child),
            in_process: None,
            root: root.to_path_buf(),
            client: service_client(&base),
            base,
        }
    }

    /// Starts the service inside the test process (same start-up, config, data dir, admin
    /// secret and log file as [`Service::start_with`]), saving a process start. For tests that
    /// never kill, signal or set the environment of the service (`crate::in_process` says why).
    ///
    /// `GLITCHLAB_IT_IN_PROCESS=0` starts the binary instead (to compare the two, or to rule the
    /// harness out when a test fails).
    pub async fn start_in_process(root: &Path, options: Options) -> Service {
        if std::env::var_os(IN_PROCESS_VAR).is_some_and(|value| value == "0") {
            return Self::start_with(root, options).await;
        }
        Self::always_in_process(root, options).await
    }

    /// [`Service::start_in_process`] whatever `GLITCHLAB_IT_IN_PROCESS` says: the harness's own
    /// tests.
    pub(crate) async fn always_in_process(root: &Path, options: Options) -> Service {
        let config = write_config(root, &options);
        let (root, task_root) = (root.to_path_buf(), root.to_path_buf());
        // Starting blocks (a thread waits for the address): off the test's runtime.
        let (service, base) =
            tokio::task::spawn_blocking(move || InProcess::start(&task_root, &config, &options))
                .await
                .unwrap();
        Service {
            child: None,
            in_process: Some(service),
            root,
            client: service_client(&base),
            base,
        }
    }

    fn assert_process(&self, what: &str) {
        assert!(
            self.in_process.is_none(),
            "{what} needs a service process; this one runs in-process: start it with \
             Service::start_with"
        );
    }

    /// A request to `path` through the service's client (its settings, and whatever it sends
    /// with every request), to be completed by the caller: headers, body, send.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, format!("{}{path}", self.base))
    }

    /// `GET path` → (status, JSON body).
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// `DELETE path` → (status, JSON body).
    pub async fn delete(&self, path: &str) -> (u16, Value) {
        let response = self
            .client
            .delete(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// `POST path` with a JSON body → (status, JSON body).
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_raw(path, body.to_string()).await
    }

    /// `POST path` with raw bytes → (status, JSON body).
    pub async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// `POST path` → (status, headers, JSON body).
    pub async fn post_full(
        &self,
        path: &str,
        body: &Value,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        (
            status,
            headers,
            response.json().await.unwrap_or(Value::Null),
        )
    }

    /// Submits a task; panics unless it is accepted.
    pub async fn submit(&self, body: &Value) -> Value {
        let (status, task) = self.post("/v1/tasks", body).await;
        assert_eq!(status, 201, "submit failed: {task}");
        task
    }

    /// Polls a task until `done(task)` holds; panics with the task and its events on timeout.
    pub async fn wait_for_task(
        &self,
        id: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let (_, task) = self.get(&format!("/v1/tasks/{id}")).await;
            if done(&task) {
                return task;
            }
            if Instant::now() > deadline {
                let (_, events) = self.get(&format!("/v1/tasks/{id}/events")).await;
                let (_, actors) = self.get("/v1/actors").await;
                let (_, report) = self.get("/v1/report").await;
                panic!(
                    "task did not reach the expected state in {timeout:?}:\n{task:#}\nevents: {events:#}\nactors: {actors}\nreport: {report}\nprocesses running 5 s or more below {}:\n{}\nthreads:\n{}\nlog:\n{}",
                    self.process_root(),
                    long_running_below(self.process_root()),
                    self.thread_stacks(),
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the task reaches a terminal status.
    pub async fn wait_until_finished(&self, id: &str) -> Value {
        self.wait_finished_within(id, Duration::from_secs(60)).await
    }

    /// Waits (up to `timeout`) until the task reaches a terminal status.
    pub async fn wait_finished_within(&self, id: &str, timeout: Duration) -> Value {
        self.wait_for_task(id, timeout, |task| {
            matches!(
                task["status"].as_str(),
                Some("done" | "failed" | "cancelled" | "dead_letter")
            )
        })
        .await
    }

    /// The event kinds of a task, in order.
    pub async fn event_kinds(&self, id: &str) -> Vec<String> {
        let (_, events) = self.get(&format!("/v1/tasks/{id}/events")).await;
        events["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap().to_owned())
            .collect()
    }

    /// One actor's row of `/v1/actors`.
    pub async fn actor(&self, name: &str) -> Value {
        let (_, actors) = self.get("/v1/actors").await;
        actors["actors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == name)
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// The service's process id.
    pub fn pid(&self) -> u32 {
        self.assert_process("pid()");
        self.child.as_ref().expect("service is running").id()
    }

    /// The process the service's children hang from: its own, or this test process's when it
    /// runs in-process (whose children are every in-process test's).
    fn process_root(&self) -> u32 {
        self.child
            .as_ref()
            .map_or_else(std::process::id, std::process::Child::id)
    }

    /// Every thread's stack of a service running as its own process, when gdb is installed (at
    /// most 60 s): where a stuck service waits, a blocking call or an idle runtime.
    fn thread_stacks(&self) -> String {
        let Some(child) = &self.child else {
            return "  (in-process service: not dumped)".into();
        };
        let pid = child.id().to_string();
        let dumped = Command::new("timeout")
            .args([
                "60",
                "gdb",
                "-batch",
                "-nx",
                "-ex",
                "thread apply all bt 30",
                "-p",
                &pid,
            ])
            .stdin(Stdio::null())
            .output();
        match dumped {
            Ok(output) if output.status.success() => {
                String::from_utf8_lossy(&output.stdout).into_owned()
            }
            Ok(output) => format!(
                "  (gdb: {})",
                String::from_utf8_lossy(&output.stderr).trim()
            ),
            Err(error) => format!("  (no gdb: {error})"),
        }
    }

    /// The service's stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("service.log")).unwrap_or_default()
    }

    /// `kill -9`: no chance to flush or clean up.
    pub fn kill_9(&mut self) {
        self.assert_process("kill_9()");
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGTERM, then wait for the exit status (bounded).
    pub fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        self.assert_process("terminate()");
        let mut child = self.child.take().expect("service is running");
        let pid = i32::try_from(child.id()).unwrap();
        // SAFETY: sending a signal to our own child process.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "service did not stop within {timeout:?} of SIGTERM; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What a stuck test shows of the processes below `root` that have run for 5 s or more (a git
/// call that never returned, a verify still running): `ps`'s pid, ppid, seconds and command line,
/// at most 40 of them.
fn long_running_below(root: u32) -> String {
    let Ok(output) = Command::new("ps")
        .args(["-eo", "pid=,ppid=,etimes=,args="])
        .output()
    else {
        return "(ps did not run)".into();
    };
    let rows: Vec<(u32, u32, u64, String)> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let pid = fields.next()?.parse().ok()?;
            let ppid = fields.next()?.parse().ok()?;
            let seconds = fields.next()?.parse().ok()?;
            Some((pid, ppid, seconds, fields.collect::<Vec<_>>().join(" ")))
        })
        .collect();
    let mut below = std::collections::BTreeSet::from([root]);
    // Parents come before their children in pid order only mostly: repeat until nothing is added.
    while {
        let before = below.len();
        for (pid, ppid, _, _) in &rows {
            if below.contains(ppid) {
                below.insert(*pid);
            }
        }
        below.len() > before
    } {}
    let lines: Vec<String> = rows
        .iter()
        .filter(|(pid, _, seconds, _)| *pid != root && below.contains(pid) && *seconds >= 5)
        .take(40)
        .map(|(pid, ppid, seconds, args)| format!("  {pid} (parent {ppid}) {seconds}s: {args}"))
        .collect();
    if lines.is_empty() {
        "  none".into()
    } else {
        lines.join("\n")
    }
}

/// The machine, shared between tests. Tests that load it hard (a browser, a NATS server with
/// factories, 64 clients) run beside each other, but never beside a test that asserts a latency
/// bound: the harness runs tests on every core at once, and a browser starting can stall a
/// 2-core machine for a second. (The lock is fair: a waiting latency test holds back new heavy
/// ones.)
static MACHINE: std::sync::LazyLock<tokio::sync::RwLock<()>> =
    std::sync::LazyLock::new(|| tokio::sync::RwLock::new(()));

/// Held by a test that loads the machine hard.
pub async fn heavy() -> tokio::sync::RwLockReadGuard<'static, ()> {
    MACHINE.read().await
}

/// Held by a test that asserts a latency bound: no heavy test runs meanwhile.
pub async fn latency_bound() -> tokio::sync::RwLockWriteGuard<'static, ()> {
    MACHINE.write().await
}

/// Runs git in `dir`; panics on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .args(["-c", "user.name=test", "-c", "user.email=test@localhost"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A fresh repository at `<root>/repo` on `main` with one commit.
pub fn git_repo(root: &Path) -> PathBuf {
    let repo = root.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("README.md"), "# demo\n").unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "initial"]);
    repo
}

/// Polls of [`wait_for_file_sh`] (every 50 ms: at most 120 s) before the command goes on anyway.
const GATE_POLLS: u32 = 2400;

/// A shell snippet that waits until `path` exists (polling every 50 ms, bounded by
/// [`GATE_POLLS`]): a patch or verify command held open until the test has seen what it needs
/// and creates the file, where a fixed `sleep` would cost its whole length on every run and
/// still race on a slow machine.
pub fn wait_for_file_sh(path: &Path) -> String {
    format!(
        "i=0; while [ ! -e '{}' ] && [ $i -lt {GATE_POLLS} ]; do sleep 0.05; i=$((i+1)); done",
        path.display()
    )
}

/// A task body with a shell patch engine.
pub fn shell_task(repo: &Path, patch_command: &str, verify: &str) -> Value {
    serde_json::json!({
        "title": "Add a greeting",
        "description": "Create hello.txt containing a greeting.",
        "repo": repo.display().to_string(),
        "verify": verify,
        "engines": {"patch": {"kind": "shell", "command": patch_command}},
    })
}

/// The client a service's tests talk through.
fn service_client(base: &str) -> reqwest::Client {
    client_builder()
        .timeout(Duration::from_secs(30))
        // A service started with `server.tls_cert` serves a certificate the test made
        // itself; `transport.rs` checks the chain with a strict client of its own.
        .tls_danger_accept_invalid_certs(base.starts_with("https://"))
        .build()
        .unwrap()
}

/// Writes `<root>/glitchlab.toml` from the options; returns its path.
fn write_config(root: &Path, options: &Options) -> PathBuf {
    // Tests keep their markers and pid files in the temp root: let confined engines write there.
    let path = root.join("glitchlab.toml");
    let config = options.config.as_deref().unwrap_or("");
    let config = if options.no_root_writable {
        config.to_owned()
    } else {
        with_root_writable(config, root)
    };
    std::fs::write(&path, config).unwrap();
    path
}

/// Adds `governance.sandbox_writable = [root]` to a test's config text.
fn with_root_writable(config: &str, root: &Path) -> String {
    let line = format!("sandbox_writable = [{:?}]\n", root.display().to_string());
    match config.find("[governance]\n") {
        Some(at) => {
            let after = at + "[governance]\n".len();
            format!("{}{line}{}", &config[..after], &config[after..])
        }
        None => format!("{config}\n[governance]\n{line}"),
    }
}

/// Options with a config file.
pub fn with_config(config: &str) -> Options {
    Options {
        config: Some(config.to_owned()),
        env: Vec::new(),
        ..Default::default()
    }
}

/// Whether any process of the group `pgid` is alive.
pub fn process_group_alive(pgid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(-pgid, 0) == 0 }
}

/// Waits (up to `timeout`) for a process group to be gone; whether it is.
pub async fn wait_group_gone(pgid: i32, timeout: std::time::Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while process_group_alive(pgid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    !process_group_alive(pgid)
}

/// The process group, as this (host) side sees it, of the running `sh` whose command line
/// mentions `marker`: what a test signals or waits for. A command in a PID namespace cannot tell
/// it (its `$$` is its namespace's pid), so the test looks it up in `/proc`; panics if none runs.
pub fn group_of_shell(marker: &Path) -> i32 {
    let marker = marker.display().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(Result::ok)
            .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
            .find_map(|pid| {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                if comm.trim() != "sh" || !cmdline.contains(&marker) {
                    return None;
                }
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                stat[stat.rfind(')')? + 1..]
                    .split_whitespace()
                    .nth(2)?
                    .parse()
                    .ok()
            });
        if let Some(pgid) = found {
            return pgid;
        }
        assert!(Instant::now() < deadline, "no running sh mentions {marker}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
