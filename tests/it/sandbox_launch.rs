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
