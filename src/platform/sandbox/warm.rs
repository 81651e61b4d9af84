//! Keeps the kernel's cgroup migration lock ready while runs launch (issue 29).
//!
//! Every launch's child joins its run's cgroups: a write of its pid to `cgroup.procs`. The
//! kernel takes its cgroup threadgroup lock for writing on a join, and unless another join
//! happened in about the last 10 ms it first waits out an RCU grace period — 10–15 ms on the
//! 2-core development VM (`benches/cgroup_join.py`), half of a task's sandboxed launch
//! (`benches/sandbox.rs`, "launch after an idle pause"). While armed (for
//! `engines.limits.warm_cgroup_lock_secs` after each launch, or after a task says launches are
//! coming), an idle helper process of the service moves between two empty cgroups of its own
//! every [`MOVE_EVERY`], which keeps the lock in the state a join finds at once.
//!
//! That is what the kernel's own `favordynmods` cgroup mount option does for good, at the same
//! price: meanwhile, forks and exits on the host take the lock's slower shared path, and the
//! moves cost about 2 % of one core. No thread of the service moves (a service thread in a run's
//! memory cgroup would be that cgroup's OOM victim); the helper is `glitchlab sandbox-exec
//! --idle`, which only waits, and dies with the thread that started it.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the helper moves while armed: within the ~10 ms after a join in which the next one
/// is fast (measured: joins 10 ms apart take 0.45 ms; 20 ms apart, a grace period).
const MOVE_EVERY: Duration = Duration::from_millis(8);
/// The flag of `sandbox-exec` that makes it the idle helper.
pub(super) const IDLE_FLAG: &str = "--idle";

/// The warmer: its thread, and what it is told.
#[derive(Debug)]
pub(super) struct CgroupLockWarmer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    armed_until: Option<Instant>,
    stop: bool,
}

impl CgroupLockWarmer {
    /// Starts the warmer's thread (unarmed); it makes its two cgroups under `parent` and starts
    /// the helper (`exe sandbox-exec --idle`) when first armed. `None` if the thread cannot
    /// start.
    pub(super) fn start(exe: PathBuf, parent: PathBuf) -> Option<Self> {
        let shared = Arc::new(Shared::default());
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("cgroup-warmer".into())
            .spawn(move || run(&thread_shared, &exe, &parent));
        match thread {
            Ok(thread) => Some(Self {
                shared,
                thread: Some(thread),
            }),
            Err(error) => {
                tracing::warn!(%error, "cannot start the cgroup lock warmer");
                None
            }
        }
    }

    /// Keeps the lock ready for the next `warm_for` (from now).
    pub(super) fn arm(&self, warm_for: Duration) {
        let mut state = self
            .shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let until = Instant::now() + warm_for;
        if state.armed_until.is_none_or(|armed| armed < until) {
            let was_idle = state
                .armed_until
                .is_none_or(|armed| armed <= Instant::now());
            state.armed_until = Some(until);
            if was_idle {
                self.shared.changed.notify_all();
            }
        }
    }
}

impl Drop for CgroupLockWarmer {
    fn drop(&mut self) {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stop = true;
        self.shared.changed.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The helper and the two cgroups it moves between.
struct Mover {
    helper: Child,
    pid: String,
    dirs: [PathBuf; 2],
    moves: u64,
}

impl Mover {
    /// Makes the cgroups (named like runs' cgroups, so a killed service's are swept at the next
    /// start) and starts the helper.
    fn start(exe: &Path, parent: &Path) -> std::io::Result<Self> {
        let dirs = [
            parent.join(uuid::Uuid::now_v7().to_string()),
            parent.join(uuid::Uuid::now_v7().to_string()),
        ];
        for dir in &dirs {
            std::fs::create_dir(dir)?;
        }
        let mut command = Command::new(exe);
        command
            .args([super::SANDBOX_SUBCOMMAND, IDLE_FLAG])
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: prctl and getppid are async-signal-safe and touch no memory of ours.
        unsafe {
            let parent_pid = libc::getpid();
            command.pre_exec(move || {
                // Dies with this thread (and so with the service, even a killed one).
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1
                    || libc::getppid() != parent_pid
                {
                    return Err(std::io::Error::other("the service is gone"));
                }
                Ok(())
            });
        }
        let helper = match command.spawn() {
            Ok(helper) => helper,
            Err(error) => {
                remove(&dirs);
                return Err(error);
            }
        };
        let pid = helper.id().to_string();
        Ok(Self {
            helper,
            pid,
            dirs,
            moves: 0,
        })
    }

    /// Moves the helper into the other cgroup (made again if a sweep removed it). A helper that
    /// exited is an error (its pid, a zombie's, would move nothing).
    fn shift(&mut self) -> std::io::Result<()> {
        if let Some(status) = self.helper.try_wait()? {
            return Err(std::io::Error::other(format!(
                "the helper exited: {status}"
            )));
        }
        let dir = &self.dirs[usize::from(self.moves % 2 == 1)];
        self.moves += 1;
        let procs = dir.join("cgroup.procs");
        match std::fs::write(&procs, &self.pid) {
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir(dir)?;
                std::fs::write(&procs, &self.pid)
            }
            done => done,
        }
    }

    fn stop(mut self) {
        let _ = self.helper.kill();
        let _ = self.helper.wait();
        remove(&self.dirs);
    }
}

fn remove(dirs: &[PathBuf]) {
    for dir in dirs {
        let _ = std::fs::remove_dir(dir);
    }
}

/// Failures in a row (the helper cannot start, or cannot be moved: killed from outside, no
/// permission) after which the warming ends for good.
const FAILURES_MAX: u32 = 3;

/// The warmer's thread: waits to be armed; while armed, moves the helper every [`MOVE_EVERY`];
/// stops the helper once disarmed (a quiet service keeps no process for it). A helper that
/// fails is started again; [`FAILURES_MAX`] failures in a row end the warming for good
/// (launches then pay the wait, as without it).
fn run(shared: &Shared, exe: &Path, parent: &Path) {
    let mut mover: Option<Mover> = None;
    let mut failures = 0;
    let mut state = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        if state.stop {
            break;
        }
        let now = Instant::now();
        let Some(until) = state.armed_until.filter(|until| *until > now) else {
            if let Some(idle) = mover.take() {
                drop(state);
                idle.stop();
                state = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            state = shared
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
            continue;
        };
        drop(state);
        let moved = match mover.as_mut() {
            Some(moving) => moving.shift(),
            None => Mover::start(exe, parent).and_then(|mut started| {
                let first = started.shift();
                mover = Some(started);
                first
            }),
        };
        match moved {
            Ok(()) => failures = 0,
            Err(error) => {
                failures += 1;
                if let Some(failed) = mover.take() {
                    failed.stop();
                }
                if failures >= FAILURES_MAX {
                    tracing::warn!(%error, dir = %parent.display(), "cgroup lock warmer off: its helper cannot start or move; each sandboxed launch waits out a grace period to join its cgroups");
                    return;
                }
                tracing::debug!(%error, "the cgroup lock warmer's helper failed; starting another");
            }
        }
        state = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
        let pause = MOVE_EVERY.min(until.saturating_duration_since(Instant::now()));
        if !state.stop && !pause.is_zero() {
            state = shared
                .changed
                .wait_timeout(state, pause)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
    drop(state);
    if let Some(moving) = mover {
        moving.stop();
    }
}

/// `sandbox-exec --idle`: the warmer's helper, which only waits until it is killed.
pub(super) fn idle() -> ! {
    loop {
        // SAFETY: pause(2) takes nothing and touches no memory.
        unsafe {
            libc::pause();
        }
    }
}
