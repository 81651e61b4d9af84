//! The outer `sandbox-exec` when it stays to watch its run: it starts `bwrap` as the run's
//! unprivileged uid (see [`super::owner`]) and measures the run's dirs while it runs and after,
//! killing it past `disk_bytes`.
//!
//! An unprivileged `bwrap` must be able to reach every path it binds, and the run's uid may not
//! search the dirs above them (a data dir of mode 0700). So before it drops root, the child
//! stages the binds: in a mount namespace of its own it mounts a tmpfs on [`STAGE_DIR`] and
//! binds each source there, reached through a descriptor opened as root; `bwrap` then binds
//! `STAGE_DIR/N` where the source was. The host's mounts are untouched.

use std::ffi::{CString, OsString};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::owner::RunAs;
use super::tree::{self, WalkError};

/// Where the child mounts its staging tmpfs (in its own mount namespace only).
const STAGE_DIR: &str = "/tmp";
/// [`STAGE_DIR`] for the mount call.
const STAGE_DIR_C: &std::ffi::CStr = c"/tmp";

/// The mark the watcher prints when the run's dirs pass `disk_bytes` (read back by
/// `Sandbox::settle`).
pub(crate) const DISK_MARK: &str = "disk_bytes limit exceeded";

/// Exit code of a run whose dirs were past `disk_bytes` when it ended by itself.
pub(super) const DISK_EXIT: i32 = 125;

/// The shortest wait between two measurements of a run's dirs.
pub(super) const WATCH_INTERVAL_MIN: Duration = Duration::from_millis(200);

/// The longest wait between two measurements (the most a fast writer gets past the limit is
/// what it writes in this long, each file capped by `RLIMIT_FSIZE`).
pub(super) const WATCH_INTERVAL_MAX: Duration = Duration::from_secs(5);

/// A measurement waits this many times its own duration before the next, so walking the
/// run's dirs takes at most about 1/20 of a core.
pub(super) const WATCH_COST_RATIO: u32 = 20;

/// How often the exit is looked for where a pidfd cannot be had.
const EXIT_POLL: Duration = Duration::from_millis(20);

/// `bwrap` options and how many values follow each (those [`super::bwrap_args`] writes).
const BWRAP_ARITY: [(&str, usize); 21] = [
    ("--bind", 2),
    ("--ro-bind", 2),
    ("--symlink", 2),
    ("--setenv", 2),
    ("--tmpfs", 1),
    ("--size", 1),
    ("--proc", 1),
    ("--dev", 1),
    ("--chdir", 1),
    ("--uid", 1),
    ("--gid", 1),
    ("--cap-drop", 1),
    ("--unshare-user", 0),
    ("--unshare-pid", 0),
    ("--unshare-ipc", 0),
    ("--unshare-uts", 0),
    ("--unshare-net", 0),
    ("--unshare-cgroup-try", 0),
    ("--die-with-parent", 0),
    ("--new-session", 0),
    ("--as-pid-1", 0),
];

/// What the watching `sandbox-exec` runs.
#[derive(Debug)]
pub(crate) struct Supervised {
    /// `bwrap` and its arguments (then `--` and the inner command).
    pub(crate) command: Vec<OsString>,
    /// The run's uid when the service is root (then the binds are staged).
    pub(crate) run_as: Option<RunAs>,
    /// The run's own dirs whose total size `disk_bytes` bounds.
    pub(crate) watch: Vec<PathBuf>,
    pub(crate) disk_bytes: u64,
}

/// Rewrites the `--bind` and `--ro-bind` sources of a `bwrap` command line (up to its `--`) to
/// `STAGE_DIR/N`, answering the new line and each source in order.
pub(crate) fn staged_args(command: &[OsString]) -> Result<(Vec<OsString>, Vec<PathBuf>), String> {
    let mut args = command.to_vec();
    let mut sources = Vec::new();
    let mut index = 1;
    while index < args.len() {
        let option = args[index].to_string_lossy().into_owned();
        if option == "--" {
            return Ok((args, sources));
        }
        let arity = BWRAP_ARITY
            .iter()
            .find(|(name, _)| *name == option)
            .map(|(_, arity)| *arity)
            .ok_or_else(|| format!("cannot stage the bwrap option {option}"))?;
        if index + arity >= args.len() {
            return Err(format!("bwrap option {option} lacks its values"));
        }
        if option == "--bind" || option == "--ro-bind" {
            sources.push(PathBuf::from(&args[index + 1]));
            args[index + 1] = format!("{STAGE_DIR}/{}", sources.len() - 1).into();
        }
        index += 1 + arity;
    }
    Err("no -- after the bwrap options".into())
}

/// One bind source, staged at `target`.
pub(super) struct Stage {
    source: CString,
    target: CString,
    dir: bool,
}

/// The stages of `sources`, in order (prepared before the fork: the child only makes calls).
pub(super) fn stages(sources: &[PathBuf]) -> Result<Vec<Stage>, String> {
    use std::os::unix::ffi::OsStrExt;
    let cstring = |bytes: &[u8]| CString::new(bytes).map_err(|e| e.to_string());
    sources
        .iter()
        .enumerate()
        .map(|(index, path)| {
            let dir = std::fs::metadata(path)
                .map_err(|e| format!("cannot bind {}: {e}", path.display()))?
                .is_dir();
            Ok(Stage {
                source: cstring(path.as_os_str().as_bytes())?,
                target: cstring(format!("{STAGE_DIR}/{index}").as_bytes())?,
                dir,
            })
        })
        .collect()
}

/// `/proc/self/fd/<fd>` into `buffer`, NUL-terminated, without allocating (after `fork`).
fn fd_path(buffer: &mut [u8; 32], fd: libc::c_int) -> *const libc::c_char {
    const PREFIX: &[u8] = b"/proc/self/fd/";
    buffer[..PREFIX.len()].copy_from_slice(PREFIX);
    let mut digits = [0u8; 12];
    let mut count = 0;
    let mut rest = u32::try_from(fd).unwrap_or(0);
    loop {
        digits[count] = b'0' + u8::try_from(rest % 10).unwrap_or(0);
        count += 1;
        rest /= 10;
        if rest == 0 || count == digits.len() {
            break;
        }
    }
    for (at, digit) in digits[..count].iter().rev().enumerate() {
        buffer[PREFIX.len() + at] = *digit;
    }
    buffer[PREFIX.len() + count] = 0;
    buffer.as_ptr().cast()
}

/// `-1` is failure, with the reason in `errno`.
fn check(done: libc::c_int) -> std::io::Result<()> {
    if done == -1 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// In the child, as root: a private mount namespace with every source bound under the staging
/// tmpfs, reached through a descriptor opened in that namespace before the tmpfs hides it.
/// System calls only (after `fork`; `fds` has room for every stage).
pub(super) fn stage(stages: &[Stage], fds: &mut Vec<libc::c_int>) -> std::io::Result<()> {
    let none = std::ptr::null::<libc::c_char>();
    // SAFETY: each call reads NUL-terminated strings that outlive it, or null pointers where
    // the call takes none.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS))?;
        check(libc::mount(
            none,
            c"/".as_ptr(),
            none,
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ))?;
        fds.clear();
        for stage in stages {
            let fd = libc::open(stage.source.as_ptr(), libc::O_PATH | libc::O_CLOEXEC);
            check(fd)?;
            fds.push(fd);
        }
        check(libc::mount(
            c"tmpfs".as_ptr(),
            STAGE_DIR_C.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            c"mode=0755,size=65536".as_ptr().cast(),
        ))?;
        for (stage, fd) in stages.iter().zip(fds.iter()) {
            if stage.dir {
                check(libc::mkdir(stage.target.as_ptr(), 0o755))?;
            } else {
                let flags = libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC;
                let made = libc::open(stage.target.as_ptr(), flags, 0o644);
                check(made)?;
                libc::close(made);
            }
            let mut buffer = [0u8; 32];
            check(libc::mount(
                fd_path(&mut buffer, *fd),
                stage.target.as_ptr(),
                none,
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            ))?;
        }
    }
    Ok(())
}

/// In the child: drops root for `run_as` — no supplementary groups, then the gid, then the uid,
/// each checked, and root cannot be had back; it dies with `watcher`, its parent. System calls
/// only (after `fork`).
fn drop_to(run_as: RunAs, watcher: libc::pid_t) -> std::io::Result<()> {
    let refused = || std::io::Error::from_raw_os_error(libc::EPERM);
    drop_root(run_as)?;
    // SAFETY: prctl and getppid on the calling (only) thread.
    unsafe {
        // Dies with its watcher (set after the uid change, which clears it; `bwrap` is no
        // set-id binary, so the exec keeps it).
        check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL))?;
        if libc::getppid() != watcher {
            return Err(refused());
        }
    }
    Ok(())
}

/// In the child: drops root for `run_as` — no supplementary groups, then the gid, then the uid,
/// each checked, and root cannot be had back — and sets the umask that keeps new dirs writable
/// by the runs' shared group (see `owner`). System calls only (after `fork`).
pub(super) fn drop_root(run_as: RunAs) -> std::io::Result<()> {
    let refused = || std::io::Error::from_raw_os_error(libc::EPERM);
    // SAFETY: credential calls on the calling (only) thread; setgroups reads no list (0).
    unsafe {
        check(libc::setgroups(0, std::ptr::null()))?;
        check(libc::setgid(run_as.gid))?;
        check(libc::setuid(run_as.uid))?;
        if libc::getuid() != run_as.uid
            || libc::geteuid() != run_as.uid
            || libc::getgid() != run_as.gid
            || libc::getegid() != run_as.gid
            || libc::setuid(0) == 0
        {
            return Err(refused());
        }
        libc::umask(0o002);
    }
    Ok(())
}

/// Starts the command (staged and dropped to `run_as` when given), watches it, and answers the
/// exit code `sandbox-exec` should end with.
pub(crate) fn run(supervised: Supervised) -> Result<i32, String> {
    let (command, stages) = match supervised.run_as {
        Some(_) => {
            let (command, sources) = staged_args(&supervised.command)?;
            (command, stages(&sources)?)
        }
        None => (supervised.command.clone(), Vec::new()),
    };
    let Some((program, rest)) = command.split_first() else {
        return Err("no command after --".into());
    };
    let mut start = Command::new(program);
    start.args(rest);
    if let Some(run_as) = supervised.run_as {
        let mut fds = Vec::with_capacity(stages.len());
        let watcher = libc::pid_t::try_from(std::process::id()).map_err(|e| e.to_string())?;
        // SAFETY: the closure makes system calls only, on memory prepared before the fork.
        unsafe {
            start.pre_exec(move || {
                stage(&stages, &mut fds)?;
                drop_to(run_as, watcher)
            });
        }
    }
    let mut child = start.spawn().map_err(|error| match supervised.run_as {
        Some(run_as) => format!(
            "could not start {} as uid {} (staging its binds, dropping root): {error}",
            program.to_string_lossy(),
            run_as.uid
        ),
        None => format!("could not start {}: {error}", program.to_string_lossy()),
    })?;
    let watch = Watch {
        dirs: supervised.watch,
        limit: supervised.disk_bytes,
    };
    watch_until_exit(&mut child, &watch)
}

/// The run's dirs and their limit.
pub(super) struct Watch {
    pub(super) dirs: Vec<PathBuf>,
    pub(super) limit: u64,
}

impl Watch {
    /// The bytes in the dirs when past the limit (too many entries to count is past it too),
    /// and how long measuring took. An unreadable dir is skipped this time.
    pub(super) fn over(&self) -> (Option<String>, Duration) {
        let started = Instant::now();
        let mut bytes: u64 = 0;
        for dir in &self.dirs {
            match tree::disk_usage(dir) {
                Ok((used, _)) => bytes = bytes.saturating_add(used),
                Err(error @ WalkError::TooLarge(_)) => {
                    return (Some(error.to_string()), started.elapsed())
                }
                Err(WalkError::Io { .. }) => {}
            }
        }
        let over = (bytes > self.limit).then(|| format!("{bytes} bytes"));
        (over, started.elapsed())
    }

    fn report(&self, used: &str, killed: bool) {
        eprintln!("{}", self.message(used, killed));
    }

    /// The line that says the run passed the limit (read back by `Sandbox::settle`).
    pub(super) fn message(&self, used: &str, killed: bool) -> String {
        let dirs: Vec<String> = self.dirs.iter().map(|d| d.display().to_string()).collect();
        format!(
            "glitchlab sandbox: {DISK_MARK} ({used} in {}, limit {}){}",
            dirs.join(", "),
            self.limit,
            if killed { "; the run was killed" } else { "" }
        )
    }
}

/// Waits for the child, measuring its dirs in between (at an interval that keeps the walks
/// cheap) and once after; kills it past the limit.
fn watch_until_exit(child: &mut Child, watch: &Watch) -> Result<i32, String> {
    let pid = libc::pid_t::try_from(child.id()).map_err(|e| e.to_string())?;
    let pidfd = open_pidfd(pid);
    let mut interval = WATCH_INTERVAL_MIN;
    while !watch.dirs.is_empty() && !exited_within(child, pidfd, interval)? {
        let (over, took) = watch.over();
        if let Some(used) = over {
            // SAFETY: kill sends a signal to our own child, which has not been reaped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = child.wait();
            watch.report(&used, true);
            close_pidfd(pidfd);
            return Ok(128 + libc::SIGKILL);
        }
        interval = took
            .saturating_mul(WATCH_COST_RATIO)
            .clamp(WATCH_INTERVAL_MIN, WATCH_INTERVAL_MAX);
    }
    close_pidfd(pidfd);
    let status = child
        .wait()
        .map_err(|error| format!("cannot wait for the run: {error}"))?;
    if !watch.dirs.is_empty() {
        if let (Some(used), _) = watch.over() {
            watch.report(&used, false);
            return Ok(DISK_EXIT);
        }
    }
    Ok(status
        .code()
        .or_else(|| status.signal().map(|signal| 128 + signal))
        .unwrap_or(super::SANDBOX_FAILURE_EXIT))
}

/// A descriptor that becomes readable when `pid` exits (`None` on kernels before 5.3).
pub(super) fn open_pidfd(pid: libc::pid_t) -> Option<libc::c_int> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    libc::c_int::try_from(fd).ok().filter(|fd| *fd >= 0)
}

pub(super) fn close_pidfd(pidfd: Option<libc::c_int>) {
    if let Some(fd) = pidfd {
        // SAFETY: the descriptor is ours and closed once.
        unsafe { libc::close(fd) };
    }
}

/// Whether the child exited within `wait` (it is not reaped here).
fn exited_within(
    child: &mut Child,
    pidfd: Option<libc::c_int>,
    wait: Duration,
) -> Result<bool, String> {
    if let Some(fd) = pidfd {
        let mut poll = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let millis = libc::c_int::try_from(wait.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: poll reads and writes the one pollfd we own.
        let ready = unsafe { libc::poll(&mut poll, 1, millis) };
        return Ok(ready > 0);
    }
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if child
            .try_wait()
            .map_err(|error| format!("cannot wait for the run: {error}"))?
            .is_some()
        {
            return Ok(true);
        }
        std::thread::sleep(EXIT_POLL);
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(parts: &[&str]) -> Vec<OsString> {
        parts.iter().map(OsString::from).collect()
    }

    #[test]
    fn binds_are_staged_and_nothing_after_the_double_dash() {
        let command = line(&[
            "/usr/bin/bwrap",
            "--unshare-user",
            "--uid",
            "65534",
            "--ro-bind",
            "/usr",
            "/usr",
            "--setenv",
            "X",
            "--bind",
            "--size",
            "1024",
            "--tmpfs",
            "/tmp",
            "--bind",
            "/data/worktrees/t",
            "/data/worktrees/t",
            "--chdir",
            "/data/worktrees/t",
            "--",
            "sh",
            "--bind",
            "/etc",
        ]);
        let (args, sources) = staged_args(&command).unwrap();
        assert_eq!(
            sources,
            vec![PathBuf::from("/usr"), PathBuf::from("/data/worktrees/t")]
        );
        let text: Vec<String> = args.iter().map(|a| a.to_string_lossy().into()).collect();
        assert_eq!(text[5], "/tmp/0");
        assert_eq!(text[6], "/usr", "the destination stays");
        assert_eq!(text[9], "--bind", "a value is not an option");
        assert_eq!(text[15], "/tmp/1");
        assert_eq!(text[16], "/data/worktrees/t");
        assert_eq!(&text[20..], ["sh", "--bind", "/etc"]);
        assert!(staged_args(&line(&["bwrap", "--bind-fd", "3", "/x", "--"])).is_err());
        assert!(staged_args(&line(&["bwrap", "--bind", "/x"])).is_err());
        assert!(staged_args(&line(&["bwrap", "--unshare-pid"])).is_err());
    }

    #[test]
    fn fd_paths_are_written_without_allocating() {
        let mut buffer = [0u8; 32];
        for (fd, text) in [
            (0, "/proc/self/fd/0"),
            (7, "/proc/self/fd/7"),
            (1024, "/proc/self/fd/1024"),
        ] {
            let path = fd_path(&mut buffer, fd);
            // SAFETY: fd_path wrote a NUL-terminated string into the buffer.
            let written = unsafe { std::ffi::CStr::from_ptr(path) };
            assert_eq!(written.to_str().unwrap(), text);
        }
    }
}
