//! Containment: what a hostile engine or verify command cannot do to the service, its secrets,
//! other tasks or the network, and how a runaway one ends (`RESOURCE_LIMIT`). These need the
//! namespace sandbox (bubblewrap); where the kernel or the host refuses it, each test says why
//! and skips.

use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::helpers::{git_repo, shell_task, Options, Service};

/// Every containment test's own bound on waiting for a task.
const TASK_TIMEOUT: Duration = Duration::from_secs(90);

/// Why namespaces cannot be used here, if they cannot: `bwrap` missing, or the kernel refusing
/// to make the namespaces (the same probe the service runs at start).
fn namespaces_unavailable() -> Option<String> {
    let output = std::process::Command::new("bwrap")
        .args([
            "--unshare-user",
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-net",
            "--uid",
            "65534",
            "--gid",
            "65534",
            "--cap-drop",
            "ALL",
            "--ro-bind",
            "/",
            "/",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "true",
        ])
        .output();
    match output {
        Err(error) => Some(format!(
            "bwrap cannot run ({error}); scripts/test installs it"
        )),
        Ok(output) if !output.status.success() => Some(format!(
            "the kernel refuses bwrap's namespaces: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )),
        Ok(_) => None,
    }
}

/// Whether namespaces are unavailable here (without saying why).
pub(crate) fn namespaces_missing() -> bool {
    namespaces_unavailable().is_some()
}

/// Skips (returns true, saying why) when namespaces are unavailable.
pub(crate) fn skip() -> bool {
    match namespaces_unavailable() {
        Some(reason) => {
            eprintln!("skipping: {reason}");
            true
        }
        None => false,
    }
}

async fn finish(service: &Service, task: &Value) -> Value {
    let id = task["id"].as_str().unwrap();
    service
        .wait_for_task(id, TASK_TIMEOUT, |task| {
            matches!(
                task["status"].as_str(),
                Some("done" | "failed" | "cancelled" | "dead_letter")
            )
        })
        .await
}

async fn runs(service: &Service, task: &Value) -> Vec<Value> {
    let (_, runs) = service
        .get(&format!("/v1/tasks/{}/runs", task["id"].as_str().unwrap()))
        .await;
    runs["runs"].as_array().unwrap().clone()
}

async fn healthy(service: &Service) {
    let (status, _) = tokio::time::timeout(Duration::from_secs(5), service.get("/healthz"))
        .await
        .expect("healthz answered within 5 s");
    assert_eq!(status, 200, "healthz; log:\n{}", service.log());
}

fn no_root_writable(config: &str) -> Options {
    Options {
        config: Some(config.to_owned()),
        no_root_writable: true,
        ..Default::default()
    }
}

#[tokio::test]
async fn killing_its_parent_and_every_process_leaves_the_service_and_other_tasks_up() {
    if skip() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let service = Service::start(root.path()).await;
    let other = service
        .submit(&shell_task(
            &repo,
            "sleep 2; echo ok > ok.txt",
            "test -f ok.txt",
        ))
        .await;
    let hostile = service
        .submit(&shell_task(
            &repo,
            "kill -9 $PPID; kill -9 -1; sleep 1; echo hi > hi.txt",
            "kill -9 $PPID; kill -9 -1; test -f hi.txt",
        ))
        .await;
    let hostile = finish(&service, &hostile).await;
    healthy(&service).await;
    let other = finish(&service, &other).await;
    assert_eq!(other["status"], "done", "{other:#}");
    assert_eq!(hostile["status"], "done", "{hostile:#}");
    for run in runs(&service, &hostile).await {
        if run["engine"] == "shell" {
            assert_eq!(run["sandbox"], "bwrap+landlock", "{run:#}");
        }
    }
    healthy(&service).await;
}

#[tokio::test]
async fn secrets_the_data_dir_and_other_worktrees_are_out_of_reach() {
    if skip() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let service = Service::start_with(root.path(), no_root_writable("")).await;
    let data = root.path().join("data");
    let other = data.join("worktrees").join("another-task");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("secret.txt"), "another task's work\n").unwrap();
    let patch = format!(
        "leaks=''; \
         cat /proc/{pid}/environ && leaks=\"$leaks environ\"; \
         cat /etc/shadow && leaks=\"$leaks shadow\"; \
         ls {data}/db && leaks=\"$leaks data\"; \
         cat {other}/secret.txt && leaks=\"$leaks worktree\"; \
         ls {home} && leaks=\"$leaks home\"; \
         git status --porcelain > /dev/null || leaks=\"$leaks git-broken\"; \
         if [ -n \"$leaks\" ]; then echo \"LEAKED:$leaks\"; exit 1; fi; \
         echo hi > hi.txt",
        pid = service.pid(),
        data = data.display(),
        other = other.display(),
        home = std::env::var("HOME").unwrap_or_else(|_| "/root".into()),
    );
    let task = service
        .submit(&shell_task(&repo, &patch, "test -f hi.txt"))
        .await;
    let task = finish(&service, &task).await;
    let runs = runs(&service, &task).await;
    assert_eq!(task["status"], "done", "{task:#}\nruns: {runs:#?}");
    let patch_run = runs.iter().find(|r| r["persona"] == "patch").unwrap();
    let stderr = patch_run["stderr"]["text"].as_str().unwrap();
    assert!(
        stderr.contains("/etc/shadow") && stderr.contains("environ"),
        "{patch_run:#}"
    );
}

/// A loopback server on this host, counting the connections it accepts.
fn loopback_server() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().map_while(Result::ok) {
            counter.fetch_add(1, Ordering::SeqCst);
            let mut buffer = [0u8; 64];
            let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
            let _ = stream.read(&mut buffer);
        }
    });
    (port, accepted)
}

/// An actors dir whose Patch has `network: true`.
fn networked_patch(root: &Path) {
    let builtin =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("actors/patch.md"))
            .unwrap();
    let text = builtin.replacen("engine: builtin\n", "engine: builtin\nnetwork: true\n", 1);
    assert_ne!(text, builtin);
    std::fs::create_dir_all(root.join("actors")).unwrap();
    std::fs::write(root.join("actors/patch.md"), text).unwrap();
}

#[tokio::test]
async fn the_network_is_off_unless_the_persona_allows_it() {
    if skip() {
        return;
    }
    let (port, accepted) = loopback_server();
    let connect = format!("bash -c 'echo hi > /dev/tcp/127.0.0.1/{port}'");

    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let service = Service::start(root.path()).await;
    let patch = format!("if {connect}; then echo CONNECTED; exit 1; fi; echo hi > hi.txt");
    let task = service
        .submit(&shell_task(&repo, &patch, &format!("! {connect}")))
        .await;
    let task = finish(&service, &task).await;
    assert_eq!(
        task["status"],
        "done",
        "{task:#}\nruns: {:#?}",
        runs(&service, &task).await
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "a default persona connected"
    );
    drop(service);

    let root = tempfile::tempdir().unwrap();
    networked_patch(root.path());
    let repo = git_repo(root.path());
    let service = Service::start(root.path()).await;
    let patch = format!("{connect} && echo hi > hi.txt");
    // Circuit keeps the default: no network for the verify command.
    let task = service
        .submit(&shell_task(&repo, &patch, &format!("! {connect}")))
        .await;
    let task = finish(&service, &task).await;
    assert_eq!(
        task["status"],
        "done",
        "{task:#}\nruns: {:#?}",
        runs(&service, &task).await
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "only Patch connected");
}

/// Limits low enough to hit fast; an engine that escapes them still ends within a minute.
const LOW_LIMITS: &str = "[engines]\ntimeout_secs = 60\nverify_timeout_secs = 60\n\n\
    [engines.limits]\nprocesses = 64\nmemory_bytes = 268435456\n";

#[tokio::test]
async fn a_fork_bomb_fails_its_attempt_with_resource_limit() {
    if skip() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let service = Service::start_with(root.path(), no_root_writable(LOW_LIMITS)).await;
    if service.log().contains("the process limit is not enforced") {
        eprintln!(
            "skipping: running as root without a writable pids cgroup, no process limit holds"
        );
        return;
    }
    // The classic bomb (from a script: the allowlist sees only the command line, it is policy,
    // not a boundary), then a loop that surely meets the limit, so the attempt fails.
    let many: Vec<String> = (0..200).map(|i| i.to_string()).collect();
    let bomb = format!(
        "printf 'bomb() {{ bomb | bomb & }}; bomb\\n' > \"$TMPDIR/bomb.sh\"; sh \"$TMPDIR/bomb.sh\"; \
         for i in {}; do sleep 30 & done; wait",
        many.join(" ")
    );
    let task = service.submit(&shell_task(&repo, &bomb, "true")).await;
    healthy(&service).await;
    let task = finish(&service, &task).await;
    healthy(&service).await;
    assert_eq!(task["status"], "failed", "{task:#}");
    assert_eq!(task["error"]["code"], "RESOURCE_LIMIT", "{task:#}");
    let message = task["error"]["message"].as_str().unwrap();
    assert!(message.contains("processes limit (64)"), "{message}");
    let runs = runs(&service, &task).await;
    let patch_run = runs.iter().find(|r| r["persona"] == "patch").unwrap();
    assert!(
        patch_run["stderr"]["text"]
            .as_str()
            .unwrap()
            .contains("fork"),
        "the output is kept: {patch_run:#}"
    );
    // Another task still runs to the end on the same service.
    let next = service
        .submit(&shell_task(&repo, "echo hi > hi.txt", "test -f hi.txt"))
        .await;
    assert_eq!(finish(&service, &next).await["status"], "done");
}

#[tokio::test]
async fn a_memory_hog_fails_its_attempt_with_resource_limit() {
    if skip() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let service = Service::start_with(root.path(), no_root_writable(LOW_LIMITS)).await;
    // The hog is the verify command: Circuit's runs are limited like Patch's.
    let task = service
        .submit(&shell_task(&repo, "echo hi > hi.txt", "tail /dev/zero"))
        .await;
    healthy(&service).await;
    let task = finish(&service, &task).await;
    healthy(&service).await;
    assert_eq!(task["status"], "failed", "{task:#}");
    assert_eq!(task["error"]["code"], "RESOURCE_LIMIT", "{task:#}");
    let message = task["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("memory limit (268435456 bytes)") && message.contains("circuit"),
        "{message}"
    );
    let runs = runs(&service, &task).await;
    // A memory cgroup OOM-kills the hog; under RLIMIT_AS its allocation fails and it says so.
    let verify_run = runs.iter().find(|r| r["persona"] == "circuit").unwrap();
    assert!(
        verify_run["signal"] == 9
            || verify_run["stderr"]["text"]
                .as_str()
                .unwrap()
                .contains("memory exhausted"),
        "{verify_run:#}"
    );
}

#[tokio::test]
async fn a_file_past_the_size_limit_fails_its_attempt_with_resource_limit() {
    if skip() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let config = "[engines]\ntimeout_secs = 60\n\n[engines.limits]\nfile_bytes = 1048576\n";
    let service = Service::start_with(root.path(), no_root_writable(config)).await;
    let task = service
        .submit(&shell_task(
            &repo,
            "head -c 2000000 /dev/zero > big.bin && echo hi > hi.txt",
            "test -f hi.txt",
        ))
        .await;
    let task = finish(&service, &task).await;
    healthy(&service).await;
    assert_eq!(task["error"]["code"], "RESOURCE_LIMIT", "{task:#}");
    let message = task["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("file size limit (1048576 bytes)"),
        "{message}"
    );
}

/// Where `bwrap` cannot be found (here: an empty `PATH`), `required` refuses to start naming it,
/// and `auto` starts and says at once what is missing.
#[tokio::test]
async fn without_bwrap_required_refuses_to_start_and_auto_says_what_is_missing() {
    let root = tempfile::tempdir().unwrap();
    let config = root.path().join("required.toml");
    std::fs::write(&config, "[governance]\nsandbox = \"required\"\n").unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_glitchlab"))
        .args(["serve", "--bind", "127.0.0.1:0", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(root.path().join("data"))
        .env("PATH", "/nonexistent")
        .env_remove("GLITCHLAB_ADMIN_TOKEN")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("sandbox = \"required\" without bwrap did not stop start-up");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!status.success());
    assert!(
        stderr.contains("sandbox required but unavailable") && stderr.contains("bwrap"),
        "{stderr}"
    );

    let root = tempfile::tempdir().unwrap();
    let options = Options {
        env: vec![("PATH".into(), "/nonexistent".into())],
        ..Default::default()
    };
    let service = Service::start_with(root.path(), options).await;
    healthy(&service).await;
    let log = service.log();
    assert!(
        log.contains("namespaces unavailable") && log.contains("bwrap"),
        "{log}"
    );
}

/// The sandbox uids of the tests that count processes by uid: a range no other test uses.
const UID_BASE: u32 = 1_900_500_000;
const UID_COUNT: u32 = 64;

/// Skips (true, saying why) unless this is root: only a root service drops runs to a uid.
fn not_root() -> bool {
    // SAFETY: geteuid only reads the caller's credentials.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: only a root service drops its runs to an unprivileged uid");
        return true;
    }
    false
}

/// The real uid of every process, read from `/proc`.
fn process_uids() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("status")).ok())
        .filter_map(|status| {
            let line = status.lines().find(|l| l.starts_with("Uid:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .collect()
}

/// Counts, until stopped, the processes of each uid in `uids`; answers the most any one uid
/// had at once.
struct UidSampler {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<usize>,
}

impl UidSampler {
    fn start(uids: std::ops::Range<u32>) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut most = 0;
            while !stopped.load(Ordering::SeqCst) {
                let mut counts = std::collections::HashMap::<u32, usize>::new();
                for uid in process_uids() {
                    if uids.contains(&uid) {
                        *counts.entry(uid).or_default() += 1;
                    }
                }
                most = most.max(counts.values().copied().max().unwrap_or(0));
                std::thread::sleep(Duration::from_millis(5));
            }
            most
        });
        Self { stop, thread }
    }

    fn most(self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap()
    }
}

/// 1,500 background `sleep`s against a process limit of 200, from a service running as root:
/// the run is an unprivileged uid of the configured range, so `RLIMIT_NPROC` binds (with or
/// without a pids cgroup), the attempt fails `RESOURCE_LIMIT` naming it, no uid ever has more
/// than the limit, and the service answers throughout.
#[tokio::test]
async fn a_root_service_runs_a_fork_loop_as_an_unprivileged_uid_that_the_process_limit_binds() {
    if skip() || not_root() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let config = format!(
        "[engines]\ntimeout_secs = 60\nverify_timeout_secs = 60\n\n[engines.limits]\n\
         processes = 200\nsandbox_uid_base = {UID_BASE}\nsandbox_uid_count = {UID_COUNT}\n"
    );
    let service = Service::start_with(root.path(), no_root_writable(&config)).await;
    let log = service.log();
    assert!(
        log.contains("sandbox limit enforced") && log.contains("uid drop (RLIMIT_NPROC)"),
        "{log}"
    );
    let sampler = UidSampler::start(UID_BASE..UID_BASE + UID_COUNT);
    // The loop forks until refused; its sleeps outlive it for two seconds, its status stays.
    // (From a script: the allowlist sees only the command line, it is policy, not a boundary.)
    let verify = "printf '%s\\n' '(i=0; while [ $i -lt 1500 ]; do sleep 20 & i=$((i+1)); done); \
                  s=$?; sleep 2; exit $s' > \"$TMPDIR/forks.sh\"; sh \"$TMPDIR/forks.sh\"";
    let task = service
        .submit(&shell_task(&repo, "echo hi > hi.txt", verify))
        .await;
    let id = task["id"].as_str().unwrap().to_owned();
    let deadline = std::time::Instant::now() + TASK_TIMEOUT;
    let task = loop {
        healthy(&service).await;
        let (_, task) = service.get(&format!("/v1/tasks/{id}")).await;
        if matches!(
            task["status"].as_str(),
            Some("done" | "failed" | "cancelled")
        ) {
            break task;
        }
        assert!(std::time::Instant::now() < deadline, "{task:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let most = sampler.most();
    eprintln!("most processes of one run uid at once: {most} (limit 200)");
    healthy(&service).await;
    assert_eq!(task["status"], "failed", "{task:#}");
    assert_eq!(task["error"]["code"], "RESOURCE_LIMIT", "{task:#}");
    let message = task["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("processes limit (200)") && message.contains("circuit"),
        "{message}"
    );
    assert!(
        (100..=200 + 2).contains(&most),
        "the run's uid had at most {most} processes at once (limit 200)"
    );
}

/// The outer `sandbox-exec` alone, no cgroup: dropped to a uid, 300 background `sleep`s meet
/// an `RLIMIT_NPROC` of 64 and are refused past it — the limit binds by the uid drop itself.
#[tokio::test]
async fn the_uid_drop_alone_makes_the_process_limit_bind() {
    if skip() || not_root() {
        return;
    }
    // Past the service tests' range, so their runs are not counted here.
    let uid = UID_BASE + UID_COUNT;
    let sampler = UidSampler::start(uid..uid + 1);
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_glitchlab"))
        .args(["sandbox-exec", "--user", &format!("{uid}:{UID_BASE}")])
        .args(["--rlimit", "nproc=64", "--no-landlock", "--", "bwrap"])
        .args([
            "--unshare-user",
            "--unshare-pid",
            "--uid",
            "65534",
            "--gid",
            "65534",
        ])
        .args([
            "--die-with-parent",
            "--ro-bind",
            "/",
            "/",
            "--proc",
            "/proc",
        ])
        .args(["--dev", "/dev", "--", "sh", "-c"])
        .arg("(for i in $(seq 300); do sleep 20 & done); id -u; sleep 2")
        .output()
        .await
        .unwrap();
    let most = sampler.most();
    eprintln!("most processes of uid {uid} at once: {most} (limit 64)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stdout.trim(), "65534", "{stderr}");
    assert!(stderr.contains("Cannot fork"), "{stderr}");
    assert!(
        (32..=64 + 2).contains(&most),
        "uid {uid} had at most {most} processes at once (limit 64)"
    );
}

/// Three 30 MiB files against a `disk_bytes` of 64 MiB: the run is killed while it runs (not
/// 30 s later), the attempt fails `RESOURCE_LIMIT` naming `disk_bytes`, nothing keeps writing
/// after, and the clean-up sweep removes what it wrote.
#[tokio::test]
async fn a_disk_filler_fails_its_attempt_with_resource_limit_and_leaves_nothing() {
    if skip() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    // A sweep every 2 s removes a finished task's worktree (root removing what the run owns).
    let config = "[engines]\ntimeout_secs = 60\n\n[engines.limits]\ndisk_bytes = 67108864\n\n\
                  [git]\nsweep_interval_secs = 2\n";
    let service = Service::start_with(root.path(), no_root_writable(config)).await;
    let fill = "for f in a b c; do head -c 31457280 /dev/zero > $f.bin || exit 1; done; \
                sleep 30; echo hi > hi.txt";
    let task = service
        .submit(&shell_task(&repo, fill, "test -f hi.txt"))
        .await;
    healthy(&service).await;
    let task = finish(&service, &task).await;
    healthy(&service).await;
    assert_eq!(task["status"], "failed", "{task:#}");
    assert_eq!(task["error"]["code"], "RESOURCE_LIMIT", "{task:#}");
    let message = task["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("disk limit (disk_bytes 67108864)") && message.contains("patch"),
        "{message}"
    );
    let runs = runs(&service, &task).await;
    let patch_run = runs.iter().find(|r| r["persona"] == "patch").unwrap();
    assert!(
        patch_run["duration_ms"].as_u64().unwrap() < 25_000,
        "killed while it ran: {patch_run:#}"
    );
    // The worktrees and temp dirs: where the run could write.
    let data = root.path().join("data");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let used = disk_usage(&data.join("worktrees")) + disk_usage(&data.join("tmp"));
        if used < 1024 * 1024 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{used} bytes still used under {}",
            data.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Bytes allocated under `dir` (symlinks not followed).
fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(dir) else {
        return 0;
    };
    let mut bytes = meta.blocks() * 512;
    if meta.is_dir() {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            bytes += disk_usage(&entry.path());
        }
    }
    bytes
}
