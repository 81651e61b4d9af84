//! Running outside programs: one place that gives every subprocess a timeout, a bounded output
//! capture and its own process group, so a timeout or a cancel kills the whole tree it started.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio_util::task::AbortOnDropHandle;

use crate::model::live::OutputStream;
use crate::model::task::CapturedOutput;

mod spawn;

/// After the main process exits, how long its pipes may stay open before capture gives up.
const PIPE_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// What to run and within which limits.
#[derive(Debug, Clone)]
pub struct CommandSpec {
    /// Program name or path.
    pub program: String,
    /// Arguments.
    pub args: Vec<String>,
    /// Working directory.
    pub cwd: PathBuf,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Start from an empty environment (only `env` is set): governed commands see no secret
    /// they were not given.
    pub env_clear: bool,
    /// Killed (with its whole process group) when exceeded.
    pub timeout: Duration,
    /// Per stream: bytes kept of stdout and of stderr.
    pub output_bytes_max: usize,
    /// When set, a timeout or a cancel first asks the group to stop (`SIGTERM`) and kills it only
    /// after this grace. git removes its lock files on `SIGTERM`; a `SIGKILL` in the middle of a
    /// ref change leaves `packed-refs.lock` behind, and every later branch deletion or compare-
    /// and-swap in that repository then fails until a human deletes it.
    pub stop_grace: Option<Duration>,
}

impl CommandSpec {
    /// The `PATH` the child looks programs up in, when it is not the service's own: the last
    /// `PATH` of `env`, or none at all in a cleared environment. `None` also when the child
    /// inherits the service's (std searches that one without a fork).
    fn child_path(&self) -> Option<std::ffi::OsString> {
        self.env
            .iter()
            .rev()
            .find(|(name, _)| name == "PATH")
            .map(|(_, value)| value.into())
    }

    /// `sh -c <command_line>`: how engines and verify commands run.
    pub fn shell(
        command_line: &str,
        cwd: PathBuf,
        timeout: Duration,
        output_bytes_max: usize,
    ) -> Self {
        Self {
            program: "sh".into(),
            args: vec!["-c".into(), command_line.into()],
            cwd,
            env: Vec::new(),
            env_clear: false,
            timeout,
            output_bytes_max,
            stop_grace: None,
        }
    }
}

/// How a process ended and what it printed.
#[derive(Debug, Clone)]
pub struct CommandOutput {
    /// Exit code; `None` when a signal ended it.
    pub exit_code: Option<i32>,
    /// The signal that ended it, if any.
    pub signal: Option<i32>,
    /// Whether it was killed for exceeding its timeout.
    pub timed_out: bool,
    /// Standard output, bounded.
    pub stdout: CapturedOutput,
    /// Standard error, bounded.
    pub stderr: CapturedOutput,
    /// Wall-clock time from spawn to exit.
    pub duration: Duration,
}

impl CommandOutput {
    /// Exited 0 in time.
    pub fn success(&self) -> bool {
        self.exit_code == Some(0) && !self.timed_out
    }
}

/// The process could not be run at all.
#[derive(Debug, thiserror::Error)]
#[error("could not start `{program}` in {cwd}: {source}")]
pub struct SpawnError {
    /// The program that failed to start.
    pub program: String,
    /// Where it was started.
    pub cwd: String,
    /// The OS error.
    #[source]
    pub source: std::io::Error,
}

/// Ends a whole process group when dropped: a cancelled or aborted job leaves no process behind.
/// With a grace ([`CommandSpec::stop_grace`]) the group is asked first and killed after it.
struct ProcessGroupGuard {
    /// The group id (the leader's pid, as the child is started with `process_group(0)`).
    pgid: Option<i32>,
    /// How long the group has between `SIGTERM` and `SIGKILL`; `None` kills at once.
    grace: Option<Duration>,
}

impl ProcessGroupGuard {
    /// Kills the group at once: what is left once its leader has exited (background processes
    /// that would hold the pipes open).
    fn kill(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            signal_group(pgid, libc::SIGKILL);
        }
    }

    /// Stops the group of a leader that has not exited (a timeout or a cancel): at once without a
    /// grace; with one, `SIGTERM` now and `SIGKILL` for whatever is left when the grace is over,
    /// from a timer that does not hold up the caller.
    fn stop(&mut self) {
        let Some(grace) = self.grace else {
            return self.kill();
        };
        let Some(pgid) = self.pgid.take() else {
            return;
        };
        signal_group(pgid, libc::SIGTERM);
        let kill_late = move || signal_group(pgid, libc::SIGKILL);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    tokio::time::sleep(grace).await;
                    kill_late();
                });
            }
            Err(_) => {
                std::thread::spawn(move || {
                    std::thread::sleep(grace);
                    kill_late();
                });
            }
        }
    }
}

impl Drop for ProcessGroupGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sends `signal` to the process group `pgid`; a group that is gone is not an error.
fn signal_group(pgid: i32, signal: libc::c_int) {
    // SAFETY: kill(2) with a negative pid signals a process group; it touches no memory.
    unsafe {
        libc::kill(-pgid, signal);
    }
}

/// What a running command printed, as it reads from one pipe: for live output
/// ([`crate::platform::live_output`]).
#[derive(Debug)]
pub struct TapChunk {
    /// The pipe.
    pub stream: OutputStream,
    /// The bytes of one read (at most [`READ_BYTES_MAX`]).
    pub bytes: Vec<u8>,
    /// Bytes of this pipe read before these and not delivered (the tap was full): the reader of
    /// the tap must not join the pieces on both sides of the gap as if they were one text.
    pub missed_bytes: u64,
}

/// The sending side of a bounded tap on a command's output. A full tap never blocks the pipe
/// reader (the child would stall) nor grows: what does not fit is counted and skipped — except
/// the last read, which waits a moment for room once the pipe has closed, so a live view ends
/// with the command's last output.
#[derive(Debug, Clone)]
pub struct OutputTap {
    sender: mpsc::Sender<TapChunk>,
}

impl OutputTap {
    /// A tap holding at most `capacity` reads (each at most [`READ_BYTES_MAX`] bytes), and its
    /// receiver, which ends once the command's pipes are closed.
    pub fn channel(capacity: usize) -> (Self, mpsc::Receiver<TapChunk>) {
        let (sender, receiver) = mpsc::channel(capacity.max(1));
        (Self { sender }, receiver)
    }
}

/// Bytes read from a pipe at once.
pub const READ_BYTES_MAX: usize = 8192;

/// Runs a command to completion (or timeout) and captures its bounded output.
pub async fn run(spec: &CommandSpec) -> Result<CommandOutput, SpawnError> {
    run_tapped(spec, None).await
}

/// [`run`], also handing every read of its output to `tap` while it runs. The tap's receiver
/// ends when the run returns (its readers are owned by the run).
pub async fn run_tapped(
    spec: &CommandSpec,
    tap: Option<OutputTap>,
) -> Result<CommandOutput, SpawnError> {
    run_hooked(spec, tap, None).await
}

/// What the child runs between `fork` and `exec`: async-signal-safe calls only (no allocation,
/// no lock), on memory prepared before the fork.
pub type ChildSetup = Box<dyn FnMut() -> std::io::Result<()> + Send + Sync>;

/// Work around one spawn that saves an exec: the sandbox sets its limits, cgroup and uid in the
/// forked child itself instead of in a launcher process of its own
/// ([`crate::platform::sandbox`]).
pub trait SpawnHook: Send + Sync {
    /// In the parent, off the async runtime (it may walk directories), before the fork: what the
    /// child runs after the spawn's own set-up (working dir, process group, umask) and before
    /// `exec`. An error fails the spawn.
    fn prepare(&self) -> std::io::Result<ChildSetup>;
    /// In the parent, once the child runs (its pid leads its process group).
    fn started(&self, pid: u32);
    /// In the parent, off the async runtime, once the child was reaped and its group killed.
    fn finished(&self);
}

/// [`run_tapped`] with a [`SpawnHook`] around the spawn.
pub async fn run_hooked(
    spec: &CommandSpec,
    tap: Option<OutputTap>,
    hook: Option<std::sync::Arc<dyn SpawnHook>>,
) -> Result<CommandOutput, SpawnError> {
    let spawn_error = |source| SpawnError {
        program: spec.program.clone(),
        cwd: spec.cwd.display().to_string(),
        source,
    };
    let setup = match &hook {
        Some(hook) => {
            let hook = std::sync::Arc::clone(hook);
            let prepared = tokio::task::spawn_blocking(move || hook.prepare())
                .await
                .map_err(|error| spawn_error(std::io::Error::other(error.to_string())))?;
            Some(prepared.map_err(spawn_error)?)
        }
        None => None,
    };
    let output = spawn_and_wait(spec, tap, setup, hook.as_deref()).await;
    if let Some(hook) = hook {
        let _ = tokio::task::spawn_blocking(move || hook.finished()).await;
    }
    output
}

/// The spawn, capture and wait of [`run_hooked`].
async fn spawn_and_wait(
    spec: &CommandSpec,
    tap: Option<OutputTap>,
    setup: Option<ChildSetup>,
    hook: Option<&dyn SpawnHook>,
) -> Result<CommandOutput, SpawnError> {
    let started = Instant::now();
    let resolved = spawn::resolve(&spec.program, spec.child_path().as_deref());
    let mut command = match &resolved {
        Some(path) => {
            let mut command = Command::new(path);
            // The child sees its name as it was asked for (`git`, not `/usr/bin/git`).
            command.arg0(&spec.program);
            command
        }
        None => Command::new(&spec.program),
    };
    if spec.env_clear {
        command.env_clear();
    }
    command
        .args(&spec.args)
        .current_dir(&spec.cwd)
        .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        // The guard below ends the group; tokio's own kill would `SIGKILL` a leader in its grace.
        .kill_on_drop(spec.stop_grace.is_none());
    let spawned = match setup {
        Some(setup) => {
            restore_umask(&mut command);
            // SAFETY: the hook's contract: async-signal-safe calls only, on memory prepared
            // before the fork. Added last, it runs after the umask is restored.
            unsafe {
                command.pre_exec(setup);
            }
            command.spawn()
        }
        // Nothing to run in the child: a vfork, unless this thread cannot hold the umask.
        None => spawn::spawn_with_user_umask(&mut command).map(|(child, _)| child),
    };
    let mut child = spawned.map_err(|source| SpawnError {
        program: spec.program.clone(),
        cwd: spec.cwd.display().to_string(),
        source,
    })?;
    if let (Some(hook), Some(pid)) = (hook, child.id()) {
        hook.started(pid);
    }
    let mut guard = ProcessGroupGuard {
        pgid: child.id().and_then(|pid| i32::try_from(pid).ok()),
        grace: spec.stop_grace,
    };
    // The pipe readers are owned by this run (dropped with it), not background tasks.
    let bytes_max = spec.output_bytes_max;
    let stdout_tap = tap.clone().map(|tap| (tap, OutputStream::Stdout));
    let stdout_capture = child
        .stdout
        .take()
        .map(|pipe| AbortOnDropHandle::new(tokio::spawn(capture(pipe, bytes_max, stdout_tap))));
    let stderr_tap = tap.map(|tap| (tap, OutputStream::Stderr));
    let stderr_capture = child
        .stderr
        .take()
        .map(|pipe| AbortOnDropHandle::new(tokio::spawn(capture(pipe, bytes_max, stderr_tap))));

    let (status, timed_out) = match tokio::time::timeout(spec.timeout, child.wait()).await {
        Ok(status) => (status.ok(), false),
        Err(_elapsed) => {
            if let (Some(grace), Some(pgid)) = (spec.stop_grace, guard.pgid) {
                signal_group(pgid, libc::SIGTERM);
                let _ = tokio::time::timeout(grace, child.wait()).await;
            }
            guard.kill();
            (child.wait().await.ok(), true)
        }
    };
    // Background processes the command left behind would hold the pipes open; end them too.
    guard.kill();
    let duration = started.elapsed();
    let stdout = collect(stdout_capture).await;
    let stderr = collect(stderr_capture).await;

    use std::os::unix::process::ExitStatusExt;
    Ok(CommandOutput {
        exit_code: status.and_then(|s| s.code()),
        signal: status.and_then(|s| s.signal()),
        timed_out,
        stdout,
        stderr,
        duration,
    })
}

async fn collect(capture: Option<AbortOnDropHandle<BoundedCapture>>) -> CapturedOutput {
    let Some(handle) = capture else {
        return CapturedOutput::default();
    };
    match tokio::time::timeout(PIPE_DRAIN_TIMEOUT, handle).await {
        Ok(Ok(captured)) => captured.finish(),
        _ => CapturedOutput {
            text: "[glitchlab: output capture did not finish]".into(),
            truncated_bytes: 0,
        },
    }
}

async fn capture(
    mut pipe: impl AsyncRead + Unpin,
    bytes_max: usize,
    tap: Option<(OutputTap, OutputStream)>,
) -> BoundedCapture {
    let mut captured = BoundedCapture::new(bytes_max);
    let mut buffer = vec![0u8; READ_BYTES_MAX];
    let mut missed_bytes = 0u64;
    // The latest read a full tap did not take: offered again once the pipe has closed.
    let mut unsent: Option<Vec<u8>> = None;
    loop {
        match pipe.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                captured.push(&buffer[..n]);
                if let Some((tap, stream)) = &tap {
                    if let Some(skipped) = unsent.take() {
                        missed_bytes += skipped.len() as u64;
                    }
                    let chunk = TapChunk {
                        stream: *stream,
                        bytes: buffer[..n].to_vec(),
                        missed_bytes,
                    };
                    match tap.sender.try_send(chunk) {
                        Ok(()) => missed_bytes = 0,
                        Err(mpsc::error::TrySendError::Full(chunk)) => unsent = Some(chunk.bytes),
                        Err(mpsc::error::TrySendError::Closed(_)) => {}
                    }
                }
            }
        }
    }
    if let (Some((tap, stream)), Some(bytes)) = (&tap, unsent) {
        // The command's last output matters most to a live view, and nothing waits on this pipe
        // any more: the last read waits a moment for room.
        let last = TapChunk {
            stream: *stream,
            bytes,
            missed_bytes,
        };
        let _ = tokio::time::timeout(TAP_LAST_READ_WAIT, tap.sender.send(last)).await;
    }
    captured
}

/// How long the last read of a pipe waits for room in a full tap once the pipe has closed.
const TAP_LAST_READ_WAIT: Duration = Duration::from_millis(250);

/// Keeps the first half and the last half of a stream within `bytes_max`, counting what it drops.
#[derive(Debug)]
pub struct BoundedCapture {
    head: Vec<u8>,
    tail: VecDeque<u8>,
    head_bytes_max: usize,
    tail_bytes_max: usize,
    dropped_bytes: u64,
}

impl BoundedCapture {
    /// A capture that keeps at most `bytes_max` bytes.
    pub fn new(bytes_max: usize) -> Self {
        let head_bytes_max = bytes_max / 2;
        Self {
            head: Vec::new(),
            tail: VecDeque::new(),
            head_bytes_max,
            tail_bytes_max: bytes_max - head_bytes_max,
            dropped_bytes: 0,
        }
    }

    /// Appends bytes, dropping from the middle once full. Dropped bytes are counted, never kept,
    /// so a command printing gigabytes costs `bytes_max` of memory and its marker tells the truth.
    pub fn push(&mut self, mut bytes: &[u8]) {
        let head_room = self.head_bytes_max - self.head.len();
        if head_room > 0 {
            let taken = head_room.min(bytes.len());
            self.head.extend_from_slice(&bytes[..taken]);
            bytes = &bytes[taken..];
        }
        if bytes.len() >= self.tail_bytes_max {
            // The new bytes alone fill the tail: all it held and their own front are dropped.
            let dropped = self.tail.len() + bytes.len() - self.tail_bytes_max;
            self.dropped_bytes += dropped as u64;
            self.tail.clear();
            self.tail
                .extend(&bytes[bytes.len() - self.tail_bytes_max..]);
            return;
        }
        let overflow = (self.tail.len() + bytes.len()).saturating_sub(self.tail_bytes_max);
        self.tail.drain(..overflow);
        self.dropped_bytes += overflow as u64;
        self.tail.extend(bytes);
    }

    /// The kept text with a marker where the middle was dropped.
    pub fn finish(self) -> CapturedOutput {
        let mut text = String::from_utf8_lossy(&self.head).into_owned();
        if self.dropped_bytes > 0 {
            text.push_str(&format!(
                "\n{TRUNCATION_MARKER_OPEN}{}{TRUNCATION_MARKER_CLOSE}\n",
                self.dropped_bytes
            ));
        }
        let tail: Vec<u8> = self.tail.into_iter().collect();
        text.push_str(&String::from_utf8_lossy(&tail));
        CapturedOutput {
            text,
            truncated_bytes: self.dropped_bytes,
        }
    }
}

/// The variable every engine and verify process carries, naming the service instance (its data
/// dir) that started it, so a restarted service can find what a killed one left running.
pub const INSTANCE_VARIABLE: &str = "GLITCHLAB_INSTANCE";

/// Kills the process groups of processes that carry `INSTANCE_VARIABLE=<instance>`: engines and
/// verify commands orphaned when a previous run of this service was killed (`kill -9` gives it
/// no chance to clean up). Returns how many group kills were sent. Linux only (reads `/proc`).
pub fn kill_orphans(instance: &str) -> usize {
    let marker = format!("{INSTANCE_VARIABLE}={instance}");
    let mut killed = 0;
    // A group member forked while the signal was sent can escape one round; look again.
    for _ in 0..ORPHAN_KILL_ROUNDS_MAX {
        let groups = marked_groups(&marker);
        if groups.is_empty() {
            break;
        }
        for pgid in &groups {
            // SAFETY: kill(2) on a process group that carries this instance's marker.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
        killed += groups.len();
        std::thread::sleep(Duration::from_millis(20));
    }
    killed
}

/// The variable every local release (an app the `local` provider started) carries instead of
/// [`INSTANCE_VARIABLE`], naming the service instance that started it. Releases outlive the
/// service on purpose, so [`kill_orphans`] leaves them alone; Uplink-Deploy finds them by this
/// mark at its start ([`groups_carrying`]) and adopts them or stops them.
pub const RELEASE_VARIABLE: &str = "GLITCHLAB_RELEASE_OF";

/// The live process groups with a member whose environment holds `variable=value`.
pub fn groups_carrying(variable: &str, value: &str) -> Vec<i32> {
    marked_groups(&format!("{variable}={value}"))
}

/// What [`spawn_detached`] starts: a program in its own session, its output appended to a file.
#[derive(Debug, Clone)]
pub struct DetachedSpec {
    /// Program name or path.
    pub program: String,
    /// Arguments.
    pub args: Vec<String>,
    /// Working directory.
    pub cwd: PathBuf,
    /// The whole environment (nothing is inherited from the service).
    pub env: Vec<(String, String)>,
    /// The file stdout and stderr are appended to (made when missing).
    pub output: PathBuf,
}

/// A process [`spawn_detached`] started.
#[derive(Debug)]
pub struct Detached {
    /// Its pid, which is also its session and process group id.
    pub pid: i32,
    /// Its start time (see [`start_time`]): with the pid, what tells it from a later process
    /// that got the same pid.
    pub start_time: Option<u64>,
    /// The handle to wait for it with; dropping it neither kills nor stops the process.
    pub child: tokio::process::Child,
}

/// Starts a process that outlives this service: its own session (so its process group is its
/// own, and a terminal's hang-up or the service's death does not reach it), no pipe to the
/// service (its output goes to a file, so nothing breaks when the service is gone), and no kill
/// on drop. The one exception to "every subprocess runs through [`run`]": local releases, which
/// must keep serving while the service restarts.
pub fn spawn_detached(spec: &DetachedSpec) -> Result<Detached, SpawnError> {
    let spawn_error = |source| SpawnError {
        program: spec.program.clone(),
        cwd: spec.cwd.display().to_string(),
        source,
    };
    let output = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.output)
        .map_err(spawn_error)?;
    let errors = output.try_clone().map_err(spawn_error)?;
    let mut command = Command::new(&spec.program);
    command
        .env_clear()
        .args(&spec.args)
        .current_dir(&spec.cwd)
        .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::from(output))
        .stderr(Stdio::from(errors))
        .kill_on_drop(false);
    // SAFETY: setsid(2) is async-signal-safe and touches no memory of the parent; it runs in the
    // forked child before exec.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    restore_umask(&mut command);
    let child = command.spawn().map_err(spawn_error)?;
    let pid = child
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .ok_or_else(|| spawn_error(std::io::Error::other("the process has no pid")))?;
    Ok(Detached {
        pid,
        start_time: start_time(pid),
        child,
    })
}

/// When process `pid` started, in clock ticks since boot (`/proc/<pid>/stat`, field 22); `None`
/// when it does not exist or `/proc` is unreadable. A pid is reused once its process is gone; a
/// pid and its start time name one process for as long as the host runs.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command start after the last ')' with field 3 (state); 22 is starttime.
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(22 - 3)?
        .parse()
        .ok()
}

/// Rounds of scanning and killing before [`kill_orphans`] gives up on stragglers.
const ORPHAN_KILL_ROUNDS_MAX: usize = 10;

fn marked_groups(marker: &str) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let own_group = own_process_group();
    let mut groups: Vec<i32> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| carries(*pid, marker))
        .filter_map(live_process_group)
        .filter(|pgid| Some(*pgid) != own_group && *pgid > 1)
        .collect();
    groups.sort_unstable();
    groups.dedup();
    groups
}

fn carries(pid: i32, marker: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|environ| {
            environ
                .split(|b| *b == 0)
                .any(|entry| entry == marker.as_bytes())
        })
        .unwrap_or(false)
}

/// Whether process group `pgid` has a member that still runs. `kill(-pgid, 0)` alone also
/// succeeds for a group of zombies, which linger where nothing reaps orphans (a container whose
/// PID 1 does not wait): a release killed with its service would look alive for ever. Reads
/// `/proc`; where that is unreadable, the signal's answer stands.
pub fn group_runs(pgid: i32) -> bool {
    // SAFETY: signal 0 only checks that the group exists; it touches no memory.
    if unsafe { libc::kill(-pgid, 0) } != 0 {
        return false;
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return true;
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .any(|pid| live_process_group(pid) == Some(pgid))
}

/// The process group of a process that is still running (a zombie is already dead).
fn live_process_group(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces) start after the last ')':
    // state, parent, process group.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    if fields.next()? == "Z" {
        return None;
    }
    fields.nth(1)?.parse().ok()
}

fn own_process_group() -> Option<i32> {
    live_process_group(i32::try_from(std::process::id()).ok()?)
}

/// The kernel's tables of TCP sockets (IPv4, IPv6) in this network namespace.
const TCP_TABLES: [&str; 2] = ["/proc/net/tcp", "/proc/net/tcp6"];
/// The `st` column of a listening socket in those tables.
const TCP_LISTEN_STATE: &str = "0A";

/// Who listens on a TCP port of this host, read from `/proc`: a deploy must know that the
/// answer on the port comes from the release it started, not from whatever held the port.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortListeners {
    /// Whether any socket listens on the port (on any address).
    pub listening: bool,
    /// The process groups of the processes holding those sockets (empty when `/proc` does not
    /// tell, e.g. a socket of another user's process without the right to read its fds).
    pub groups: Vec<i32>,
}

/// The listeners of TCP `port` on this host and the process groups that hold them.
pub fn port_listeners(port: u16) -> PortListeners {
    let inodes = listening_inodes(port);
    if inodes.is_empty() {
        return PortListeners::default();
    }
    let mut groups: Vec<i32> = std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
                .filter(|pid| holds_any_socket(*pid, &inodes))
                .filter_map(live_process_group)
                .collect()
        })
        .unwrap_or_default();
    groups.sort_unstable();
    groups.dedup();
    PortListeners {
        listening: true,
        groups,
    }
}

/// The socket inodes listening on `port` in [`TCP_TABLES`].
fn listening_inodes(port: u16) -> Vec<String> {
    let port_hex = format!("{port:04X}");
    let mut inodes = Vec::new();
    for table in TCP_TABLES {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            let on_port = local.rsplit_once(':').is_some_and(|(_, p)| p == port_hex);
            if on_port && *state == TCP_LISTEN_STATE && *inode != "0" {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    inodes
}

/// Whether process `pid` has one of `sockets` (`socket:[inode]`) among its open files.
fn holds_any_socket(pid: i32, sockets: &[String]) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(Result::ok).any(|fd| {
        std::fs::read_link(fd.path())
            .ok()
            .and_then(|target| target.to_str().map(|t| sockets.iter().any(|s| s == t)))
            .unwrap_or(false)
    })
}

/// The marker [`BoundedCapture`] and [`keep_tail`] put where bytes were dropped.
const TRUNCATION_MARKER_OPEN: &str = "[... glitchlab truncated ";
const TRUNCATION_MARKER_CLOSE: &str = " bytes ...]";

/// Cuts text to at most `bytes_max` bytes, keeping the tail (where test failures print), marked.
/// The marker counts bytes of the original output: a marker of an earlier cut (a bounded capture
/// that dropped 200 MB) that falls in the cut part adds its own count, so the new marker does not
/// claim that only the few kept bytes before it were lost.
pub fn keep_tail(text: &str, bytes_max: usize) -> String {
    if text.len() <= bytes_max {
        return text.to_owned();
    }
    let mut start = text.len() - bytes_max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    let mut dropped = start as u64;
    let mut from = 0;
    while let Some(found) = text[from..].find(TRUNCATION_MARKER_OPEN) {
        let at = from + found;
        if at >= start {
            break;
        }
        let digits_at = at + TRUNCATION_MARKER_OPEN.len();
        let Some(close) = text[digits_at..].find(TRUNCATION_MARKER_CLOSE) else {
            break;
        };
        let mut end = digits_at + close + TRUNCATION_MARKER_CLOSE.len();
        // The line breaks a capture puts around its marker were not output either.
        if text[end..].starts_with('\n') {
            end += 1;
        }
        let at = if at > 0 && text[..at].ends_with('\n') {
            at - 1
        } else {
            at
        };
        let Ok(count) = text[digits_at..digits_at + close].parse::<u64>() else {
            from = digits_at;
            continue;
        };
        // The earlier marker was not output: count what it stood for, not its own text.
        dropped = dropped.saturating_add(count);
        if end > start {
            // The cut falls inside the marker: drop all of it.
            dropped = dropped.saturating_sub((start - at) as u64);
            start = end;
        } else {
            dropped = dropped.saturating_sub((end - at) as u64);
        }
        from = end;
    }
    format!(
        "{TRUNCATION_MARKER_OPEN}{dropped}{TRUNCATION_MARKER_CLOSE}\n{}",
        &text[start..]
    )
}

/// A child gets back the umask the service was started with (the service's own is private:
/// [`crate::platform::private`]); nothing is added while the umask was never changed.
fn restore_umask(command: &mut Command) {
    if let Some(mask) = crate::platform::private::inherited_umask() {
        spawn::restore_in_child(command, mask);
    }
}

#[cfg(test)]
mod tests {

    /// A listener this test holds is found on its port, in this test's own process group.
    #[test]
    fn port_listeners_names_the_group_that_holds_the_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let found = super::port_listeners(port);
        assert!(found.listening, "{found:?}");
        assert_eq!(found.groups, vec![super::own_process_group().unwrap()]);
        drop(listener);
        assert!(!super::port_listeners(port).listening);
    }
    use super::*;

    /// A group whose only member exited but was not reaped yet (a zombie) does not run, though
    /// `kill(-pgid, 0)` still finds it.
    #[test]
    fn a_group_of_zombies_does_not_run() {
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("true")
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = i32::try_from(child.id()).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        // SAFETY: signal 0 on the group of the child this test started.
        assert_eq!(
            unsafe { libc::kill(-pgid, 0) },
            0,
            "the zombie is still there"
        );
        assert!(!group_runs(pgid));
        child.wait().unwrap();
        let mut sleeper = std::process::Command::new("sleep")
            .arg("5")
            .process_group(0)
            .spawn()
            .unwrap();
        assert!(group_runs(i32::try_from(sleeper.id()).unwrap()));
        sleeper.kill().unwrap();
        sleeper.wait().unwrap();
    }
    use std::os::unix::process::CommandExt;

    #[test]
    fn capture_keeps_everything_under_the_limit() {
        let mut capture = BoundedCapture::new(16);
        capture.push(b"hello");
        let output = capture.finish();
        assert_eq!(output.text, "hello");
        assert_eq!(output.truncated_bytes, 0);
    }

    #[test]
    fn capture_keeps_head_and_tail_and_marks_the_gap() {
        let mut capture = BoundedCapture::new(8);
        capture.push(b"abcd");
        capture.push(b"0123456789");
        capture.push(b"wxyz");
        let output = capture.finish();
        assert_eq!(output.truncated_bytes, 10);
        assert!(output
            .text
            .starts_with("abcd\n[... glitchlab truncated 10 bytes ...]\n"));
        assert!(output.text.ends_with("wxyz"));
    }

    #[test]
    fn keep_tail_respects_char_boundaries() {
        let text = "ééééé";
        let kept = keep_tail(text, 3);
        assert!(kept.ends_with('é'));
        assert!(kept.starts_with("[... glitchlab truncated"));
    }

    /// Issue #16: 200 MB through a 1 KiB capture is reported as 200 MB (less the kept bytes),
    /// and memory stays at the bound.
    #[test]
    fn a_huge_stream_is_counted_not_kept() {
        let mut capture = BoundedCapture::new(1024);
        let chunk = vec![b'x'; 8192];
        let total: u64 = 200 * 1024 * 1024;
        for _ in 0..total / 8192 {
            capture.push(&chunk);
            assert!(capture.tail.len() <= 512 && capture.head.len() <= 512);
        }
        let output = capture.finish();
        assert_eq!(output.truncated_bytes, total - 1024);
        assert!(output.text.contains(&format!(
            "[... glitchlab truncated {} bytes ...]",
            total - 1024
        )));
    }

    /// Small pushes past the bound drop the oldest tail bytes, one count per byte.
    #[test]
    fn small_pushes_count_every_dropped_byte() {
        let mut capture = BoundedCapture::new(4);
        for byte in b"abcdefgh" {
            capture.push(&[*byte]);
        }
        let output = capture.finish();
        assert_eq!(output.truncated_bytes, 4);
        assert!(output.text.starts_with("ab\n["), "{}", output.text);
        assert!(output.text.ends_with("gh"), "{}", output.text);
    }

    /// Cutting a captured output again (verify feedback, a failure's tail) keeps the true count:
    /// the earlier marker's bytes are added, not replaced by the few bytes cut now.
    #[test]
    fn keep_tail_adds_the_count_of_a_marker_it_cuts() {
        let mut capture = BoundedCapture::new(200);
        capture.push(&[b'a'; 100]);
        let chunk = vec![b'b'; 1024 * 1024];
        for _ in 0..200 {
            capture.push(&chunk);
        }
        let captured = capture.finish();
        let kept = keep_tail(&captured.text, 50);
        let real = captured.truncated_bytes + 100 + 50;
        assert!(
            kept.starts_with(&format!("[... glitchlab truncated {real} bytes ...]\n")),
            "{kept}"
        );
        assert!(kept.ends_with(&"b".repeat(50)), "{kept}");
        // A cut through the middle of the marker drops the whole marker and counts it.
        let text = "ab\n[... glitchlab truncated 1000 bytes ...]\ncd";
        let kept = keep_tail(text, text.len() - 5);
        assert_eq!(kept, "[... glitchlab truncated 1002 bytes ...]\ncd");
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group() {
        let spec = CommandSpec::shell(
            "sleep 30 & sleep 30; echo never",
            std::env::temp_dir(),
            Duration::from_millis(200),
            1024,
        );
        let output = run(&spec).await.unwrap();
        assert!(output.timed_out);
        assert!(output.duration < Duration::from_secs(5));
        assert!(!output.stdout.text.contains("never"));
    }

    /// A program named by its bare name in a cleared environment with a `PATH` of its own is
    /// found there (so the spawn may be a vfork), and still sees its name as asked: `sh`, not
    /// `/usr/bin/sh`.
    #[tokio::test]
    async fn a_bare_name_is_found_in_the_childs_path_and_keeps_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = CommandSpec::shell(
            "tr '\\0' ' ' < /proc/$$/cmdline",
            dir.path().to_path_buf(),
            Duration::from_secs(10),
            1024,
        );
        spec.env_clear = true;
        spec.env = vec![("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into())];
        assert!(spawn::resolve(&spec.program, spec.child_path().as_deref()).is_some());
        let output = run(&spec).await.unwrap();
        assert!(output.success(), "{output:?}");
        assert!(
            output.stdout.text.starts_with("sh -c "),
            "{:?}",
            output.stdout.text
        );
    }

    /// A command holding a lock file the way git does: it takes it, and its `SIGTERM` handler
    /// removes it (git's lockfile code does the same).
    fn lock_holder(
        dir: &std::path::Path,
        grace: Option<Duration>,
        timeout: Duration,
    ) -> CommandSpec {
        let mut spec = CommandSpec::shell(
            "trap 'rm -f held.lock; exit 143' TERM; : > held.lock; sleep 30 & wait",
            dir.to_path_buf(),
            timeout,
            1024,
        );
        spec.stop_grace = grace;
        spec
    }

    /// Polls for up to 5 s until `path` is gone.
    async fn gone_within_5s(path: &std::path::Path) -> bool {
        for _ in 0..100 {
            if !path.exists() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// A cancelled run (its future dropped, as an aborted task drops it) with a grace lets the
    /// command remove its lock; without one, `SIGKILL` leaves the lock behind for good.
    #[tokio::test]
    async fn a_cancel_with_a_grace_lets_the_command_remove_its_lock() {
        for grace in [Some(Duration::from_secs(2)), None] {
            let dir = tempfile::tempdir().unwrap();
            let lock = dir.path().join("held.lock");
            let spec = lock_holder(dir.path(), grace, Duration::from_secs(60));
            let mut run = Box::pin(run(&spec));
            let waited = tokio::time::timeout(Duration::from_millis(500), &mut run).await;
            assert!(waited.is_err(), "the command ran to its end");
            assert!(lock.exists(), "the command had not taken its lock yet");
            drop(run);
            let removed = gone_within_5s(&lock).await;
            assert_eq!(removed, grace.is_some(), "grace {grace:?}");
        }
    }

    /// A timeout with a grace asks first: the command removes its lock and the run still ends
    /// promptly, marked timed out.
    #[tokio::test]
    async fn a_timeout_with_a_grace_lets_the_command_remove_its_lock() {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join("held.lock");
        let spec = lock_holder(
            dir.path(),
            Some(Duration::from_secs(2)),
            Duration::from_millis(300),
        );
        let output = run(&spec).await.unwrap();
        assert!(output.timed_out);
        assert!(output.duration < Duration::from_secs(3), "{output:?}");
        assert!(!lock.exists());
    }

    #[tokio::test]
    async fn orphans_of_an_instance_are_found_and_killed() {
        let instance = format!("test-{}", uuid::Uuid::now_v7());
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30"])
            .env(INSTANCE_VARIABLE, &instance)
            .process_group(0)
            .spawn()
            .unwrap();
        let mut killed = 0;
        for _ in 0..50 {
            killed = kill_orphans(&instance);
            if killed > 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(killed >= 1);
        let status = child.wait().unwrap();
        assert!(!status.success());
        assert_eq!(kill_orphans(&instance), 0);
    }

    /// A detached process has its own session, writes to its file, carries only the environment
    /// it was given, survives the drop of its handle, and its start time tells it apart.
    #[tokio::test]
    async fn a_detached_process_runs_in_its_own_session_and_outlives_its_handle() {
        let dir = tempfile::tempdir().unwrap();
        let output = dir.path().join("out.log");
        let instance = format!("test-{}", uuid::Uuid::now_v7());
        let spec = DetachedSpec {
            program: "sh".into(),
            args: vec![
                "-c".into(),
                "echo \"hi $mark ${HOME:-nohome}\"; exec sleep 30".into(),
            ],
            cwd: dir.path().to_path_buf(),
            env: vec![
                ("mark".into(), "marked".into()),
                (RELEASE_VARIABLE.into(), instance.clone()),
            ],
            output: output.clone(),
        };
        let detached = spawn_detached(&spec).unwrap();
        let pid = detached.pid;
        // SAFETY: getsid(2) reads the session of the process this test started.
        assert_eq!(unsafe { libc::getsid(pid) }, pid, "its own session");
        let started = detached.start_time.unwrap();
        assert_eq!(start_time(pid), Some(started));
        drop(detached);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&output).is_ok_and(|t| t.contains('\n')) {
            assert!(Instant::now() < deadline, "no output");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            std::fs::read_to_string(&output).unwrap(),
            "hi marked nohome\n"
        );
        assert!(group_runs(pid), "dropping the handle stops nothing");
        assert_eq!(groups_carrying(RELEASE_VARIABLE, &instance), vec![pid]);
        assert_eq!(kill_orphans(&instance), 0, "a release is no orphan");
        // SAFETY: killing the group this test started.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
        while group_runs(pid) {
            assert!(Instant::now() < deadline, "still running");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(groups_carrying(RELEASE_VARIABLE, &instance).is_empty());
    }

    /// A tapped run hands its reads over while it runs; a tap nobody drains neither blocks the
    /// command nor grows: the reads that do not fit are counted.
    #[tokio::test]
    async fn a_tap_sees_output_while_the_command_runs_and_never_blocks_it() {
        let spec = CommandSpec::shell(
            "echo early; sleep 1; echo late >&2",
            std::env::temp_dir(),
            Duration::from_secs(10),
            1024,
        );
        let (tap, mut taps) = OutputTap::channel(4);
        let run = tokio::spawn(async move { run_tapped(&spec, Some(tap)).await });
        let first = tokio::time::timeout(Duration::from_millis(900), taps.recv())
            .await
            .expect("the early line arrives before the command ends")
            .unwrap();
        assert_eq!(
            (first.stream, first.bytes.as_slice()),
            (OutputStream::Stdout, &b"early\n"[..])
        );
        let second = taps.recv().await.unwrap();
        assert_eq!(second.stream, OutputStream::Stderr);
        assert!(taps.recv().await.is_none(), "the tap ends with the run");
        assert!(run.await.unwrap().unwrap().success());

        let spec = CommandSpec::shell(
            "for i in $(seq 1 2000); do echo line $i; done",
            std::env::temp_dir(),
            Duration::from_secs(10),
            1024,
        );
        let (tap, mut taps) = OutputTap::channel(1);
        let output = run_tapped(&spec, Some(tap)).await.unwrap();
        assert!(output.success());
        let mut delivered = 0u64;
        let mut missed = 0u64;
        while let Ok(chunk) = taps.try_recv() {
            delivered += chunk.bytes.len() as u64;
            missed += chunk.missed_bytes;
        }
        let total: u64 = (1..=2000).map(|i| format!("line {i}\n").len() as u64).sum();
        assert!(delivered <= READ_BYTES_MAX as u64, "{delivered}");
        assert!(
            delivered + missed <= total,
            "{delivered} + {missed} > {total}"
        );
    }

    #[tokio::test]
    async fn captures_exit_code_and_streams() {
        let spec = CommandSpec::shell(
            "echo out; echo err >&2; exit 3",
            std::env::temp_dir(),
            Duration::from_secs(10),
            1024,
        );
        let output = run(&spec).await.unwrap();
        assert_eq!(output.exit_code, Some(3));
        assert_eq!(output.stdout.text, "out\n");
        assert_eq!(output.stderr.text, "err\n");
    }
}
