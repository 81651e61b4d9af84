//! The one-step launch ([`super::Sandbox::launch`]): what the outer `sandbox-exec` did in a
//! process of its own now happens around the service's own spawn, saving that exec.
//!
//! - In the parent, off the async runtime, before the fork ([`SpawnHook::prepare`]): the run's
//!   dirs are handed to its uid ([`super::owner`]), the bind sources looked at, every path and
//!   limit turned into what a system call takes.
//! - In the forked child, before it execs `bwrap` (system calls only): it joins the run's
//!   cgroups, stages the binds in a mount namespace of its own, drops root and lowers its
//!   rlimits ([`super::supervise::stage`], [`super::supervise::drop_root`]).
//! - In the parent while the run runs ([`SpawnHook::started`]): a thread measures the run's
//!   dirs against `disk_bytes` and kills the run past it; once it ended
//!   ([`SpawnHook::finished`]), one last measurement.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use super::owner::{self, RunAs, Share};
use super::supervise::{self, Stage, Watch};
use crate::platform::process::{ChildSetup, SpawnHook};

/// The type `setrlimit` takes for a resource on this target.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
type Resource = libc::__rlimit_resource_t;
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
type Resource = libc::c_int;

/// What one run's launch does around the spawn (see the module doc).
pub(crate) struct Launch {
    /// What the launch does.
    pub(super) plan: LaunchPlan,
    /// The watcher while the run runs: its stop signal and thread.
    watcher: Mutex<Option<(mpsc::Sender<()>, JoinHandle<()>)>>,
    /// The watcher's verdict: the line saying the run passed `disk_bytes`, and whether it was
    /// killed for it.
    over: Arc<Mutex<Option<(String, bool)>>>,
}

impl std::fmt::Debug for Launch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Launch")
            .field("cgroups", &self.plan.cgroups)
            .field("run_as", &self.plan.run_as)
            .field("watch", &self.plan.watch)
            .finish_non_exhaustive()
    }
}

/// What a [`Launch`] does, decided before the spawn.
pub(super) struct LaunchPlan {
    /// The run's cgroup dirs, joined by the child.
    pub(super) cgroups: Vec<PathBuf>,
    /// The rlimits (by `sandbox-exec --rlimit` name) the child lowers.
    pub(super) rlimits: Vec<(&'static str, u64)>,
    /// The uid the child drops to (then the binds are staged), with the dirs handed to it first.
    pub(super) run_as: Option<RunAs>,
    pub(super) own: Vec<PathBuf>,
    pub(super) share: Vec<PathBuf>,
    /// The bind sources to stage, in `bwrap`'s order (or why they cannot be).
    pub(super) sources: Result<Vec<PathBuf>, String>,
    /// The run's own dirs and `disk_bytes` (no dirs: not watched).
    pub(super) watch: Vec<PathBuf>,
    pub(super) disk_bytes: u64,
}

impl Launch {
    /// A launch of `plan`, not yet started.
    pub(super) fn new(plan: LaunchPlan) -> Self {
        Self {
            plan,
            watcher: Mutex::new(None),
            over: Arc::new(Mutex::new(None)),
        }
    }

    /// The line saying the run passed `disk_bytes`, and whether it was killed for it.
    pub(super) fn disk_verdict(&self) -> Option<(String, bool)> {
        self.over
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn watch(&self) -> Watch {
        Watch {
            dirs: self.plan.watch.clone(),
            limit: self.plan.disk_bytes,
        }
    }

    /// The dirs handed to the run's uid (shared first: an owned dir inside a shared one ends
    /// the run's own).
    fn hand_over(&self, run_as: RunAs) -> std::io::Result<()> {
        let handed = |dirs: &[PathBuf], share| {
            owner::hand_over(dirs, share, run_as).map_err(|error| {
                std::io::Error::other(format!(
                    "cannot hand the run's dirs to uid {}: {error}",
                    run_as.uid
                ))
            })
        };
        handed(&self.plan.share, Share::Group)?;
        handed(&self.plan.own, Share::Own)?;
        Ok(())
    }
}

impl SpawnHook for Launch {
    fn prepare(&self) -> std::io::Result<ChildSetup> {
        let stages: Vec<Stage> = match self.plan.run_as {
            Some(run_as) => {
                self.hand_over(run_as)?;
                let sources = self
                    .plan
                    .sources
                    .as_ref()
                    .map_err(|e| std::io::Error::other(e.clone()))?;
                supervise::stages(sources).map_err(std::io::Error::other)?
            }
            None => Vec::new(),
        };
        let procs = self
            .plan
            .cgroups
            .iter()
            .map(|dir| CString::new(dir.join("cgroup.procs").as_os_str().as_bytes()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(std::io::Error::other)?;
        let limits = self
            .plan
            .rlimits
            .iter()
            .map(|(name, value)| lowered(name, *value))
            .collect::<std::io::Result<Vec<_>>>()?;
        let run_as = self.plan.run_as;
        let mut fds = Vec::with_capacity(stages.len());
        Ok(Box::new(move || {
            for path in &procs {
                join_cgroup(path)?;
            }
            if let Some(run_as) = run_as {
                supervise::stage(&stages, &mut fds)?;
                supervise::drop_root(run_as)?;
            }
            // Last: staging opens descriptors, which a lowered `RLIMIT_NOFILE` could refuse in a
            // service holding many (lowering a limit needs no privilege).
            for (resource, limit) in &limits {
                // SAFETY: setrlimit reads the struct we own.
                check(unsafe { libc::setrlimit(*resource, limit) })?;
            }
            Ok(())
        }))
    }

    fn started(&self, pid: u32) {
        if self.plan.watch.is_empty() {
            return;
        }
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            return;
        };
        let (stop, stopped) = mpsc::channel();
        let watch = self.watch();
        let over = Arc::clone(&self.over);
        let pidfd = supervise::open_pidfd(pid);
        let spawned = std::thread::Builder::new()
            .name("sandbox-disk-watch".into())
            .spawn(move || watch_run(&watch, pid, pidfd, &stopped, &over));
        match spawned {
            Ok(thread) => {
                *self.watcher.lock().unwrap_or_else(PoisonError::into_inner) = Some((stop, thread));
            }
            Err(error) => {
                supervise::close_pidfd(pidfd);
                tracing::warn!(%error, "cannot start a run's disk watcher: measured at its end only");
            }
        }
    }

    fn finished(&self) {
        let watcher = self
            .watcher
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some((stop, thread)) = watcher {
            drop(stop);
            let _ = thread.join();
        }
        if self.plan.watch.is_empty() || self.disk_verdict().is_some() {
            return;
        }
        let watch = self.watch();
        if let (Some(used), _) = watch.over() {
            *self.over.lock().unwrap_or_else(PoisonError::into_inner) =
                Some((watch.message(&used, false), false));
        }
    }
}

/// The watcher thread: measures the run's dirs at an interval that keeps the walks cheap until
/// it is stopped (or its launch dropped); past the limit it kills the run (`bwrap`, whose
/// namespace dies with it) and says so in `over`.
fn watch_run(
    watch: &Watch,
    pid: libc::pid_t,
    pidfd: Option<libc::c_int>,
    stopped: &mpsc::Receiver<()>,
    over: &Mutex<Option<(String, bool)>>,
) {
    let mut interval = supervise::WATCH_INTERVAL_MIN;
    // Stopped (or its launch dropped): the run ended.
    while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
        let (used, took) = watch.over();
        if let Some(used) = used {
            kill_run(pid, pidfd);
            *over.lock().unwrap_or_else(PoisonError::into_inner) =
                Some((watch.message(&used, true), true));
            break;
        }
        interval = took
            .saturating_mul(supervise::WATCH_COST_RATIO)
            .clamp(supervise::WATCH_INTERVAL_MIN, supervise::WATCH_INTERVAL_MAX);
    }
    supervise::close_pidfd(pidfd);
}

/// Kills the run: through its pidfd (never another process that took its pid), else its
/// process group (it leads one).
fn kill_run(pid: libc::pid_t, pidfd: Option<libc::c_int>) {
    match pidfd {
        // SAFETY: pidfd_send_signal takes a descriptor we own, a signal and no info.
        Some(fd) => unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd,
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            );
        },
        // SAFETY: kill(2) with a negative pid signals a process group; it touches no memory.
        None => unsafe {
            libc::kill(-pid, libc::SIGKILL);
        },
    }
}

/// Moves the calling process into the cgroup whose `cgroup.procs` is `procs` (`0` names the
/// writer). System calls only (after `fork`).
fn join_cgroup(procs: &CString) -> std::io::Result<()> {
    // SAFETY: open, write and close on a NUL-terminated path and a static buffer.
    unsafe {
        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        check(fd)?;
        let written = libc::write(fd, b"0".as_ptr().cast(), 1);
        let error = std::io::Error::last_os_error();
        libc::close(fd);
        if written != 1 {
            return Err(error);
        }
    }
    Ok(())
}

/// `-1` is failure, with the reason in `errno`.
fn check(done: libc::c_int) -> std::io::Result<()> {
    if done == -1 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The resource and limit `name=value` sets (as `sandbox-exec --rlimit` does: soft and hard,
/// never above the current hard limit, which the forked child shares with this process; CPU
/// time keeps a few seconds of hard limit above the soft one, so SIGXCPU comes first).
fn lowered(name: &str, value: u64) -> std::io::Result<(Resource, libc::rlimit)> {
    let resource: Resource = match name {
        "nproc" => libc::RLIMIT_NPROC,
        "as" => libc::RLIMIT_AS,
        "cpu" => libc::RLIMIT_CPU,
        "fsize" => libc::RLIMIT_FSIZE,
        "nofile" => libc::RLIMIT_NOFILE,
        _ => return Err(std::io::Error::other(format!("unknown limit `{name}`"))),
    };
    let mut current = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    check(unsafe { libc::getrlimit(resource, &mut current) })?;
    let soft = value.min(current.rlim_max);
    let hard = if name == "cpu" {
        value.saturating_add(5).min(current.rlim_max)
    } else {
        soft
    };
    Ok((
        resource,
        libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_lowered_never_raised_and_cpu_keeps_a_margin() {
        let (resource, limit) = lowered("cpu", 10).unwrap();
        assert_eq!(resource, libc::RLIMIT_CPU);
        let mut current = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct we own.
        unsafe { libc::getrlimit(libc::RLIMIT_CPU, &mut current) };
        assert_eq!(limit.rlim_cur, 10.min(current.rlim_max));
        assert_eq!(limit.rlim_max, 15.min(current.rlim_max));
        let (_, nofile) = lowered("nofile", u64::MAX).unwrap();
        // SAFETY: as above.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut current) };
        assert_eq!(
            (nofile.rlim_cur, nofile.rlim_max),
            (current.rlim_max, current.rlim_max)
        );
        assert!(lowered("stack", 1).is_err());
    }
}
