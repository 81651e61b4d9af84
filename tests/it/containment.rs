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
