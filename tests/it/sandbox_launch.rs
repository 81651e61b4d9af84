//! The one-step sandbox launch (issue #29 item 3): from the service's spawn to a sandboxed
//! command in at most two execs (`bwrap`, then the Landlock shim `glitchlab sandbox-exec`),
//! counted with `strace -f` attached to the real service while it runs a task.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::helpers::{git_repo, shell_task, Service};

/// Execs allowed from the service's spawn to the command, the command's own not counted.
const EXECS_BEFORE_COMMAND_MAX: usize = 2;
/// How long strace may take to attach to every thread of the service.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the traced task may take.
const TASK_TIMEOUT: Duration = Duration::from_secs(120);

/// Whether every thread of `pid` is traced (its `TracerPid` is set).
fn all_threads_traced(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.filter_map(Result::ok).all(|task| {
        std::fs::read_to_string(task.path().join("status")).is_ok_and(|status| {
            status
                .lines()
                .any(|l| l.starts_with("TracerPid:") && l.trim_end() != "TracerPid:\t0")
        })
    })
}

/// The service's thread ids now.
fn threads(pid: u32) -> HashSet<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .filter_map(Result::ok)
                .filter_map(|t| t.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// One traced process's calls, from its `strace -ff` file.
#[derive(Default)]
struct Traced {
    /// Successful `execve` lines, in order.
    execs: Vec<String>,
}

/// Per pid: its successful execs; per child: (its parent, whether it is a thread).
fn parse(dir: &Path) -> (HashMap<u32, Traced>, HashMap<u32, (u32, bool)>) {
    let mut traced = HashMap::new();
    let mut parents = HashMap::new();
    for entry in std::fs::read_dir(dir).unwrap().filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.rsplit('.').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let mut calls = Traced::default();
        for line in text.lines() {
            let result = line.rsplit("= ").next().unwrap_or("").trim();
            if line.starts_with("execve(") && result == "0" {
                calls.execs.push(line.to_owned());
            }
            let forks = ["clone(", "clone3(", "fork(", "vfork("];
            if forks.iter().any(|call| line.starts_with(call)) {
                // In a PID namespace the call answers the namespace's pid; strace adds the
                // host's: `2 /* 31656 in strace's PID NS */`.
                let host = result.split("/* ").nth(1).unwrap_or(result);
                let child = host.split_whitespace().next().unwrap_or("");
                if let Ok(child) = child.parse::<u32>() {
                    parents.insert(child, (pid, line.contains("CLONE_THREAD")));
                }
            }
        }
        traced.insert(pid, calls);
    }
    (traced, parents)
}

/// The successful execs from the service's spawn down to the exec of the command (`touch
/// <marker>`), in order, the command's last.
fn exec_chain(dir: &Path, service_threads: &HashSet<u32>, marker: &str) -> Vec<String> {
    let (traced, parents) = parse(dir);
    let needle = format!("/touch\", [\"touch\", \"{marker}\"");
    let command = traced
        .iter()
        .find(|(_, calls)| calls.execs.iter().any(|e| e.contains(&needle)))
        .map(|(pid, _)| *pid)
        .unwrap_or_else(|| panic!("no exec of `touch {marker}` in the trace"));
    let mut chain = vec![command];
    let mut at = command;
    // Up to the service's thread that forked it (bounded: a chain is a few processes).
    for _ in 0..64 {
        let Some(&(parent, thread)) = parents.get(&at) else {
            panic!("the trace lost the parent of {at}: {chain:?}");
        };
        if thread || service_threads.contains(&parent) {
            break;
        }
        chain.push(parent);
        at = parent;
    }
    chain
        .iter()
        .rev()
        .flat_map(|pid| traced.get(pid).map(|t| t.execs.clone()).unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn a_sandboxed_command_is_at_most_two_execs_from_the_service() {
    if crate::containment::skip() {
        return;
    }
    if std::process::Command::new("strace")
        .arg("-V")
        .output()
        .is_err()
    {
        eprintln!("skipping: strace is not installed (apt-get install strace)");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let service = Service::start(root.path()).await;
    let pid = service.pid();
    let trace = root.path().join("trace");
    std::fs::create_dir_all(&trace).unwrap();
    let mut strace = std::process::Command::new("strace")
        .args(["-ff", "-qq", "--pidns-translation", "-s", "512", "-e"])
        .arg("trace=execve,clone,clone3,fork,vfork")
        .arg("-o")
        .arg(trace.join("t"))
        .args(["-p", &pid.to_string()])
        .spawn()
        .unwrap();
    let deadline = Instant::now() + ATTACH_TIMEOUT;
    while !all_threads_traced(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !all_threads_traced(pid) {
        let _ = strace.kill();
        let _ = strace.wait();
        eprintln!("skipping: strace cannot attach to the service here (ptrace refused)");
        return;
    }
    let mut service_threads = threads(pid);
    let marker = format!("exec-count-{}.txt", std::process::id());
    let task = service
        .submit(&shell_task(&repo, &format!("touch {marker}"), "true"))
        .await;
    let id = task["id"].as_str().unwrap();
    let done = service
        .wait_for_task(id, TASK_TIMEOUT, |task| {
            matches!(
                task["status"].as_str(),
                Some("done" | "failed" | "cancelled" | "dead_letter")
            )
        })
        .await;
    service_threads.extend(threads(pid));
    // SAFETY: SIGINT to the strace we started: it detaches and exits.
    unsafe { libc::kill(i32::try_from(strace.id()).unwrap(), libc::SIGINT) };
    strace.wait().unwrap();
    assert_eq!(done["status"], "done", "{done:#}");
    let execs = exec_chain(&trace, &service_threads, &marker);
    let before = execs.len().saturating_sub(1);
    eprintln!("execs from the service's spawn to the command ({before} before it):");
    for exec in &execs {
        eprintln!("  {}", exec.chars().take(160).collect::<String>());
    }
    assert!(
        execs.last().is_some_and(|e| e.contains(&marker)),
        "{execs:#?}"
    );
    assert!(
        before <= EXECS_BEFORE_COMMAND_MAX,
        "{before} execs before the command: {execs:#?}"
    );
    assert!(
        !execs.iter().any(|e| e.starts_with("execve(\"/bin/sh\"")
            || e.starts_with("execve(\"/usr/bin/sh\"")),
        "a plain command line runs without a shell: {execs:#?}"
    );
}

/// The service's children that are the cgroup lock warmer's idle helper
/// (`glitchlab sandbox-exec --idle`).
fn warm_helpers(service_pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // `pid (comm) state ppid ...`: the comm may hold spaces, the fields after it not.
            let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
            let mut fields = after.split_whitespace();
            let (state, ppid) = (fields.next(), fields.next());
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            state != Some("Z")
                && ppid == Some(service_pid.to_string().as_str())
                && cmdline
                    .windows(b"sandbox-exec\0--idle".len())
                    .any(|w| w == b"sandbox-exec\0--idle")
        })
        .collect()
}

/// Whether process `pid` is gone (or a zombie nobody reaped yet: it runs nothing).
fn gone(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            == Some("Z")
    })
}

/// The cgroup dirs process `pid` is in, under the service's `glitchlab` cgroups.
fn glitchlab_cgroups(pid: u32) -> Vec<std::path::PathBuf> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            path.contains("/glitchlab/").then(|| {
                let mount = if controllers.is_empty() {
                    "/sys/fs/cgroup".to_owned()
                } else {
                    format!("/sys/fs/cgroup/{controllers}")
                };
                Path::new(&mount).join(path.trim_start_matches('/'))
            })
        })
        .collect()
}

/// Waits (bounded) for `done` to hold.
async fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The warmer's helper of the service `pid`, once there is one (bounded).
async fn helper_started(pid: u32, what: &str) -> u32 {
    let mut helper = None;
    wait_for(what, TASK_TIMEOUT, || {
        helper = warm_helpers(pid).first().copied();
        helper.is_some()
    })
    .await;
    helper.unwrap()
}

/// The cgroups of the service's own that `helper` moved into (bounded wait for its first move).
async fn placed(helper: u32) -> Vec<std::path::PathBuf> {
    let mut cgroups = Vec::new();
    wait_for(
        "the helper moves into cgroups of the service's own",
        Duration::from_secs(5),
        || {
            cgroups = glitchlab_cgroups(helper);
            !cgroups.is_empty() && cgroups.iter().all(|dir| dir.is_dir())
        },
    )
    .await;
    cgroups
}

/// A task's launches keep the kernel's cgroup lock ready through the warmer's idle helper
/// (issue 29, `platform::sandbox::warm`): none while the service is quiet; there, inside
/// cgroups of the service's own, once a task runs; gone, reaped and its cgroups removed once
/// `warm_cgroup_lock_secs` passed without a launch; replaced when killed from outside; and gone
/// with the service when that is killed (it dies with the thread that started it).
#[tokio::test]
async fn the_cgroup_lock_warmer_comes_with_launches_and_leaves_nothing_behind() {
    if crate::containment::skip() {
        return;
    }
    // SAFETY: geteuid reads this process's credentials and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: run cgroups need root here");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path());
    let options = crate::helpers::Options {
        config: Some("[engines.limits]\nwarm_cgroup_lock_secs = 2\n".into()),
        ..Default::default()
    };
    let mut service = Service::start_with(root.path(), options).await;
    let pid = service.pid();
    assert!(warm_helpers(pid).is_empty(), "a helper before any task");

    let task = service
        .submit(&shell_task(&repo, "echo hi > hi.txt", "true"))
        .await;
    let id = task["id"].as_str().unwrap().to_owned();
    let helper = helper_started(pid, "the helper starts with the task").await;
    let first = placed(helper).await;
    // It keeps moving (what keeps the lock ready), not just placed once: its cgroups change.
    wait_for(
        "the helper moves on to its other cgroup",
        Duration::from_secs(2),
        || {
            let now = glitchlab_cgroups(helper);
            !now.is_empty() && now != first
        },
    )
    .await;
    // A helper killed from outside is replaced (and reaped) while the window is open.
    // SAFETY: kill(2) on a pid we just read; it touches no memory.
    unsafe {
        libc::kill(i32::try_from(helper).unwrap(), libc::SIGKILL);
    }
    let mut replaced = None;
    wait_for(
        "a killed helper is replaced",
        Duration::from_secs(5),
        || {
            replaced = warm_helpers(pid).into_iter().find(|other| *other != helper);
            replaced.is_some() && gone(helper)
        },
    )
    .await;
    let helper = replaced.unwrap();
    let cgroups = placed(helper).await;
    let done = service.wait_finished_within(&id, TASK_TIMEOUT).await;
    assert_eq!(done["status"], "done", "{done:#}");
    wait_for(
        "the helper stops 2 s after the last launch",
        Duration::from_secs(15),
        || gone(helper),
    )
    .await;
    assert!(warm_helpers(pid).is_empty());
    assert!(
        cgroups.iter().all(|dir| !dir.exists()),
        "its cgroups are removed: {cgroups:?}"
    );

    service
        .submit(&shell_task(&repo, "echo again > again.txt", "true"))
        .await;
    let helper = helper_started(pid, "the helper starts again").await;
    service.kill_9();
    wait_for(
        "the helper dies with the killed service",
        Duration::from_secs(5),
        || gone(helper),
    )
    .await;
}
