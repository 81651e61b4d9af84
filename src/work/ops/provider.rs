//! Putting releases on a target: the `local` provider (releases as detached processes on this
//! host, which outlive the service and are adopted by its next start), `fly` (the fly CLI) and
//! `command` (user-given shell commands). Every command goes through
//! [`crate::platform::process::run`] — with a timeout, bounded output and its own process group —
//! after [`super::check_allowed`] let it through; a local release is started by
//! [`crate::platform::process::spawn_detached`] after the same check.
//!
//! Nothing a command starts outlives it: where bubblewrap works, every command runs in a PID
//! namespace of its own ([`crate::platform::sandbox::Sandbox::contain`]), so a `setsid` child of
//! a build, drain or status command dies with the command at its end, its timeout and the
//! service's shutdown. The exceptions put the app on its target, where a process they start may
//! be the app: the `command` provider's deploy, rollback, restart and scale
//! ([`Lifetime::MayOutlive`]), and the local release itself (started detached).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio_util::task::AbortOnDropHandle;

use super::{check_allowed, OpsError, DETAIL_BYTES_MAX, OUTPUT_BYTES_MAX};
use crate::config::definitions::ToolRules;
use crate::model::ops::spec::{AppSpec, CommandSpecs, FlySpec, LocalSpec, OpsFile, ProviderKind};
use crate::model::persona::Persona;
use crate::platform::process::{
    self, CommandOutput, CommandSpec, DetachedSpec, INSTANCE_VARIABLE, RELEASE_VARIABLE,
};
use crate::platform::redact::Redactor;
use crate::runtime::Services;

/// How long a git call (rev-parse, archive) may take.
const GIT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a release no record accounts for gets between SIGTERM and SIGKILL.
const UNRECORDED_STOP_GRACE: Duration = Duration::from_secs(2);
/// A log file over this size is rotated (to `app.log.1`) when the app starts.
pub(crate) const APP_LOG_BYTES_MAX: u64 = 4 * 1024 * 1024;
/// After SIGKILL, how long a stopped release's processes may take to disappear.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How often a stop looks whether the process group is gone.
const STOP_POLL: Duration = Duration::from_millis(25);
/// Log lines a diagnosis collects at most.
pub(crate) const LOG_LINES_MAX: usize = 50;
/// Bytes read from the end of a log file for a diagnosis.
const LOG_TAIL_BYTES: u64 = 16 * 1024;
/// Instances a scale step may ask for at most.
pub(crate) const SCALE_COUNT_MAX: u32 = 100;

/// What a provider needs besides the app's settings.
#[derive(Clone)]
pub(crate) struct ProviderContext {
    /// `<data-dir>`: releases live under `<data-dir>/releases/<app>/<sha>`.
    pub data_dir: PathBuf,
    /// This service's identity, set on every command as `GLITCHLAB_INSTANCE` (orphans are killed
    /// at the next start) and on every local release as `GLITCHLAB_RELEASE_OF` (adopted or
    /// stopped at the next start, never killed as an orphan).
    pub instance: String,
    /// The whole ops file (for `fly_binary`).
    pub ops: Arc<OpsFile>,
    /// The Uplink persona whose rules govern every command run through this context.
    pub persona: String,
    /// That persona's `tools` (allow/deny); the global deny list and [`super::ALWAYS_DENIED`]
    /// apply on top.
    pub rules: ToolRules,
    /// The environment every command starts from: the basics and the persona's `env` names.
    pub env: Vec<(String, String)>,
    /// Hides secret values in every output kept from a command.
    pub redactor: Arc<Redactor>,
    /// The local releases this incarnation started (their exit is logged).
    pub runtime: Arc<LocalRuntime>,
    /// When set, shell commands run under Landlock and may write only these directories
    /// (Uplink-Watch: its checks are read-only by construction, not by promise).
    pub confine: Option<Confinement>,
    /// Started seconds of every command run through this context since [`Self::metered`]: what
    /// the work is charged for at the shell rate.
    clock: Arc<AtomicU64>,
    /// The sandbox whose bubblewrap puts each command in a PID namespace of its own
    /// ([`Lifetime::Contained`]); `None` where bubblewrap does not work (or `sandbox = "off"`):
    /// a command's process group is then all that holds it.
    contain: Option<Arc<crate::platform::sandbox::Sandbox>>,
}

/// Whether what a command starts may outlive it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lifetime {
    /// Everything it started dies with it (a PID namespace where bubblewrap works): builds,
    /// drains, git, queries.
    Contained,
    /// A process it starts may stay: it puts the app on its target (the `command` provider's
    /// deploy, rollback, restart and scale), so that process may be the app.
    MayOutlive,
}

/// How [`ProviderContext::shell`] confines a command: the service's sandbox, the only
/// directories it may write, and whether its persona has the network.
#[derive(Debug, Clone)]
pub(crate) struct Confinement {
    /// The layers in force.
    pub sandbox: Arc<crate::platform::sandbox::Sandbox>,
    /// Writable directories; everything else is read-only (or, under namespaces, absent).
    pub writable: Vec<PathBuf>,
    /// The persona's `network: true`.
    pub network: bool,
}

impl ProviderContext {
    /// The context of `persona`'s commands.
    pub(crate) fn for_persona(
        services: &Services,
        persona: Persona,
        runtime: Arc<LocalRuntime>,
    ) -> Self {
        Self {
            data_dir: services.config.storage.data_dir.clone(),
            instance: services.instance(),
            ops: Arc::new(services.definitions.ops.clone()),
            persona: persona.name().to_owned(),
            rules: services.definitions.tool_rules(persona),
            env: crate::work::engine::governed_env(services, persona),
            redactor: services.redactor.clone(),
            runtime,
            confine: None,
            clock: Arc::default(),
            contain: services.sandbox.clone().filter(|s| s.can_contain()),
        }
    }

    /// This context with a clock of its own, so one deploy's or action's command seconds are
    /// counted apart from every other's.
    pub(crate) fn metered(mut self) -> Self {
        self.clock = Arc::default();
        self
    }

    /// Started seconds of the commands run since [`Self::metered`].
    pub(crate) fn command_seconds(&self) -> u64 {
        self.clock.load(Ordering::Relaxed)
    }

    /// Confines this context's shell commands to writing `writable` only, when the service
    /// runs with a sandbox (see [`crate::platform::sandbox`]); without one it stays as it is.
    pub(crate) fn confined(mut self, services: &Services, writable: Vec<PathBuf>) -> Self {
        for dir in &writable {
            if let Err(error) = std::fs::create_dir_all(dir) {
                tracing::warn!(dir = %dir.display(), %error, "cannot create a confined command's writable dir");
            }
        }
        let network = Persona::from_name(&self.persona)
            .is_some_and(|persona| services.definitions.network_allowed(persona));
        self.confine = services.sandbox.clone().map(|sandbox| Confinement {
            sandbox,
            writable,
            network,
        });
        self
    }

    /// Refuses a command line the persona may not run: `fly secrets`/`fly ssh` and the
    /// persona's deny words, then the executor's rules (global deny list, allowlist) on every
    /// program of the line.
    pub(crate) fn check(&self, line: &str) -> Result<(), OpsError> {
        check_allowed(line, &self.rules.deny)?;
        crate::platform::executor::check(line, &self.persona, &self.rules).map_err(|denied| {
            OpsError::Denied {
                rule: denied.rule.clone(),
                command: denied.program,
            }
        })
    }

    /// The governed environment plus `extra` and the instance mark.
    fn env_with(&self, extra: Vec<(String, String)>) -> Vec<(String, String)> {
        let mut env = self.env.clone();
        env.extend(extra);
        env.push((INSTANCE_VARIABLE.into(), self.instance.clone()));
        env
    }

    /// Runs a process under the executor's process rules: a cleared environment, a timeout,
    /// bounded output (redacted), its own process group — and, when `lifetime` is
    /// [`Lifetime::Contained`] and bubblewrap works, its own PID namespace.
    async fn run_governed(
        &self,
        spec: CommandSpec,
        lifetime: Lifetime,
    ) -> Result<CommandOutput, OpsError> {
        self.run_governed_hooked(spec, lifetime, None).await
    }

    /// [`Self::run_governed`] with a sandbox launch's hook around the spawn.
    async fn run_governed_hooked(
        &self,
        mut spec: CommandSpec,
        lifetime: Lifetime,
        hook: Option<std::sync::Arc<dyn process::SpawnHook>>,
    ) -> Result<CommandOutput, OpsError> {
        spec.env_clear = true;
        let contained = match (&self.contain, lifetime) {
            (Some(sandbox), Lifetime::Contained) => sandbox.contain(&mut spec),
            _ => None,
        };
        let mut output = process::run_hooked(&spec, None, hook)
            .await
            .map_err(|e| OpsError::Provider(e.to_string()))?;
        if let (Some(sandbox), Some(contained)) = (&self.contain, contained) {
            sandbox.settle(contained, &mut output);
        }
        let started_seconds = u64::try_from(output.duration.as_millis().div_ceil(1000))
            .unwrap_or(u64::MAX)
            .max(1);
        self.clock.fetch_add(started_seconds, Ordering::Relaxed);
        output.stdout.text = self.redactor.redact(&output.stdout.text);
        output.stderr.text = self.redactor.redact(&output.stderr.text);
        Ok(output)
    }

    /// Runs a shell command line (after [`Self::check`]) in the governed environment; nothing
    /// it starts outlives it ([`Lifetime::Contained`]).
    pub(crate) async fn shell(
        &self,
        line: &str,
        cwd: &Path,
        env: Vec<(String, String)>,
        timeout: Duration,
    ) -> Result<CommandOutput, OpsError> {
        self.shell_living(line, cwd, env, timeout, Lifetime::Contained)
            .await
    }

    /// [`Self::shell`] with the `lifetime` of what the command starts.
    async fn shell_living(
        &self,
        line: &str,
        cwd: &Path,
        env: Vec<(String, String)>,
        timeout: Duration,
        lifetime: Lifetime,
    ) -> Result<CommandOutput, OpsError> {
        self.check(line)?;
        let mut spec = CommandSpec::shell(line, cwd.to_path_buf(), timeout, OUTPUT_BYTES_MAX);
        spec.env = self.env_with(env);
        let Some(confine) = &self.confine else {
            return self.run_governed(spec, lifetime).await;
        };
        let jail = crate::platform::sandbox::Jail {
            cwd: cwd.to_path_buf(),
            writable: confine.writable.clone(),
            readable: Vec::new(),
            network: confine.network,
            // Ops commands write where their app needs to: no disk budget of their own.
            disk: Vec::new(),
        };
        let confined = confine.sandbox.launch(&jail, &mut spec);
        if let Some(temp) = confine.writable.first() {
            spec.env.push(("TMPDIR".into(), temp.display().to_string()));
        }
        // The jail has a PID namespace of its own already (where bubblewrap works).
        let mut output = self
            .run_governed_hooked(spec, Lifetime::MayOutlive, confined.hook())
            .await?;
        confine.sandbox.settle(confined, &mut output);
        Ok(output)
    }

    /// Runs a shell command line and turns anything but exit 0 into an error naming `what`.
    pub(crate) async fn shell_ok(
        &self,
        what: &str,
        line: &str,
        cwd: &Path,
        env: Vec<(String, String)>,
        timeout: Duration,
    ) -> Result<String, OpsError> {
        let output = self.shell(line, cwd, env, timeout).await?;
        ok_or_failed(what, &output)
    }

    /// [`Self::shell_ok`] for a command that puts the app on its target: a process it starts
    /// may outlive it ([`Lifetime::MayOutlive`]).
    pub(crate) async fn shell_ok_outliving(
        &self,
        what: &str,
        line: &str,
        cwd: &Path,
        env: Vec<(String, String)>,
        timeout: Duration,
    ) -> Result<String, OpsError> {
        let output = self
            .shell_living(line, cwd, env, timeout, Lifetime::MayOutlive)
            .await?;
        ok_or_failed(what, &output)
    }

    /// Where an app's releases, log and process record live.
    pub(crate) fn app_dir(&self, app: &str) -> PathBuf {
        app_dir(&self.data_dir, app)
    }
}

/// A program with arguments (no shell), built from [`CommandSpec::shell`] so the executor's
/// defaults for any other field apply.
fn program_spec(
    program: &str,
    args: Vec<String>,
    cwd: &Path,
    env: Vec<(String, String)>,
    timeout: Duration,
    output_bytes_max: usize,
) -> CommandSpec {
    let mut spec = CommandSpec::shell("", cwd.to_path_buf(), timeout, output_bytes_max);
    spec.program = program.to_owned();
    spec.args = args;
    spec.env = env;
    spec
}

/// `<data-dir>/releases/<app>`.
pub(crate) fn app_dir(data_dir: &Path, app: &str) -> PathBuf {
    data_dir.join("releases").join(app)
}

/// The file the record of an app's running release is written to ([`LocalProcess`]).
pub(crate) fn process_file(data_dir: &Path, app: &str) -> PathBuf {
    app_dir(data_dir, app).join("app.json")
}

/// The file a local release's output goes to.
pub(crate) fn log_file(data_dir: &Path, app: &str) -> PathBuf {
    app_dir(data_dir, app).join("app.log")
}

/// What the local provider recorded when it started a release: enough for a later start of the
/// service to tell whether the process still running is that release (the pid alone could have
/// been reused by anything since).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct LocalProcess {
    /// The release's pid: also its session and process group id.
    pub pid: i32,
    /// The process's start time (clock ticks since boot, `/proc/<pid>/stat`); `None` where
    /// `/proc` could not tell.
    pub start_time: Option<u64>,
    /// The port it was given (`PORT`).
    pub port: u16,
    /// The commit it runs.
    pub release: String,
    /// When it was started.
    pub started_at: chrono::DateTime<chrono::Utc>,
}

impl LocalProcess {
    /// Whether the recorded process group still runs and is the one recorded: a leader that is
    /// alive must have the recorded start time (a reused pid is another process). A leader that
    /// is gone while its group still runs is the release's children: the kernel does not hand
    /// out a pid that is a live group's id, so the group is still the release's.
    pub(crate) fn runs(&self) -> bool {
        if self.pid <= 1 || !process::group_runs(self.pid) {
            return false;
        }
        match (process::start_time(self.pid), self.start_time) {
            (Some(now), Some(recorded)) => now == recorded,
            _ => true,
        }
    }
}

/// The record of the app's running release, if one was written and reads.
pub(crate) fn read_process(data_dir: &Path, app: &str) -> Option<LocalProcess> {
    let text = std::fs::read(process_file(data_dir, app)).ok()?;
    serde_json::from_slice(&text).ok()
}

fn write_process(data_dir: &Path, app: &str, record: &LocalProcess) -> std::io::Result<()> {
    let path = process_file(data_dir, app);
    let temp = path.with_extension("json.tmp");
    std::fs::write(
        &temp,
        serde_json::to_vec(record).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(&temp, &path)
}

/// The process group of the app's running release, if its record names one that still runs.
pub(crate) fn running_group(data_dir: &Path, app: &str) -> Option<i32> {
    read_process(data_dir, app)
        .filter(LocalProcess::runs)
        .map(|record| record.pid)
}

fn group_alive(pgid: i32) -> bool {
    crate::platform::process::group_runs(pgid)
}

fn signal_group(pgid: i32, signal: i32) {
    // SAFETY: kill(2) on a process group this service started; it touches no memory.
    unsafe {
        libc::kill(-pgid, signal);
    }
}

/// Text of a successful command (bounded), or an error with its output's tail.
pub(crate) fn ok_or_failed(what: &str, output: &CommandOutput) -> Result<String, OpsError> {
    let text = format!("{}{}", output.stdout.text, output.stderr.text);
    let tail = process::keep_tail(text.trim(), DETAIL_BYTES_MAX);
    if output.success() {
        Ok(tail)
    } else if output.timed_out {
        Err(OpsError::Provider(format!(
            "{what} timed out after {:?} and was killed: {tail}",
            output.duration
        )))
    } else {
        let ended = match (output.exit_code, output.signal) {
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(signal)) => format!("was killed by signal {signal}"),
            (None, None) => "ended without a status".to_owned(),
        };
        Err(OpsError::Provider(format!("{what} {ended}: {tail}")))
    }
}

/// Resolves `reference` (a sha or a branch) to a full commit sha of `repo`.
pub(crate) async fn resolve_commit(
    ctx: &ProviderContext,
    repo: &Path,
    reference: &str,
) -> Result<String, OpsError> {
    if reference.starts_with('-') || reference.chars().any(char::is_whitespace) {
        return Err(OpsError::UnknownCommit(format!(
            "`{reference}` is not a commit"
        )));
    }
    ctx.check("git rev-parse")?;
    let spec = program_spec(
        "git",
        vec![
            "rev-parse".into(),
            "--verify".into(),
            "--quiet".into(),
            format!("{reference}^{{commit}}"),
        ],
        repo,
        ctx.env_with(Vec::new()),
        GIT_TIMEOUT,
        OUTPUT_BYTES_MAX,
    );
    let output = ctx.run_governed(spec, Lifetime::Contained).await?;
    let sha = output.stdout.text.trim().to_owned();
    if !output.success() || sha.len() != 40 {
        return Err(OpsError::UnknownCommit(format!(
            "no commit `{reference}` in {}",
            repo.display()
        )));
    }
    Ok(sha)
}

/// Exports `sha` of `repo` into `dest` (via a temp dir and a rename: never half-written).
pub(crate) async fn export_commit(
    ctx: &ProviderContext,
    repo: &Path,
    sha: &str,
    dest: &Path,
) -> Result<(), OpsError> {
    if tokio::fs::metadata(dest).await.is_ok_and(|m| m.is_dir()) {
        return Ok(());
    }
    let parent = dest.parent().unwrap_or(dest);
    tokio::fs::create_dir_all(parent).await?;
    let temp = parent.join(format!(".export-{}", uuid::Uuid::now_v7()));
    tokio::fs::create_dir_all(&temp).await?;
    let line = format!(
        "git archive --format=tar {sha} | tar -x -C '{}'",
        temp.display()
    );
    let exported = ctx
        .shell_ok("git archive", &line, repo, Vec::new(), GIT_TIMEOUT)
        .await;
    if let Err(error) = exported {
        let _ = tokio::fs::remove_dir_all(&temp).await;
        return Err(error);
    }
    if tokio::fs::rename(&temp, dest).await.is_err() {
        // Someone exported it meanwhile.
        let _ = tokio::fs::remove_dir_all(&temp).await;
    }
    Ok(())
}

/// The local releases this incarnation of Uplink-Deploy started, each with a task that waits
/// for its exit (to log it and reap it). Dropping an entry stops the waiting, never the release:
/// releases outlive Uplink-Deploy and the service, and the next start adopts them
/// ([`super::probe::adoptable`]).
#[derive(Default)]
pub(crate) struct LocalRuntime {
    /// App → its running release; a std mutex, never held across an await.
    running: Mutex<HashMap<String, RunningApp>>,
}

struct RunningApp {
    /// The task awaiting the release's exit; dropping it leaves the release running.
    _waiter: AbortOnDropHandle<()>,
}

impl LocalRuntime {
    fn forget(&self, app: &str) -> Option<RunningApp> {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        running.remove(app)
    }

    fn insert(&self, app: &str, child: RunningApp) {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        running.insert(app.to_owned(), child);
    }
}

async fn wait_gone(pgid: i32, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    while group_alive(pgid) {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(STOP_POLL).await;
    }
    true
}

/// SIGTERM to a process group, SIGKILL after `grace`; waits (bounded) until it is gone.
async fn stop_group(pgid: i32, grace: Duration) {
    signal_group(pgid, libc::SIGTERM);
    if !wait_gone(pgid, grace).await {
        signal_group(pgid, libc::SIGKILL);
        wait_gone(pgid, KILL_WAIT).await;
    }
}

/// Stops the app's running release (the one its record names, if it still runs): SIGTERM to its
/// group, SIGKILL after `grace`.
pub(crate) async fn local_stop(ctx: &ProviderContext, app: &str, grace: Duration) {
    if let Some(pgid) = running_group(&ctx.data_dir, app) {
        stop_group(pgid, grace).await;
    }
    drop(ctx.runtime.forget(app));
    let _ = std::fs::remove_file(process_file(&ctx.data_dir, app));
}

/// Starts release `sha` of `app` (already exported and built) detached from the service (its own
/// session, `PORT` set, output appended to the app's log file) and records it
/// ([`LocalProcess`]).
pub(crate) fn local_start(
    ctx: &ProviderContext,
    app: &str,
    local: &LocalSpec,
    sha: &str,
) -> Result<(), OpsError> {
    let dir = ctx.app_dir(app).join(sha);
    if !dir.is_dir() {
        return Err(OpsError::NoRelease(format!(
            "release {sha} of `{app}` is not on disk"
        )));
    }
    ctx.check(&local.start)?;
    let log = log_file(&ctx.data_dir, app);
    rotate_log(&log);
    let _ = std::fs::remove_file(process_file(&ctx.data_dir, app));
    let script =
        "echo \"[glitchlab] starting release $GLITCHLAB_RELEASE\"; exec sh -c \"$GLITCHLAB_START\"";
    let mut env = ctx.env.clone();
    env.extend([
        ("PORT".into(), local.port.to_string()),
        ("GLITCHLAB_START".into(), local.start.clone()),
        ("GLITCHLAB_RELEASE".into(), sha.to_owned()),
        (RELEASE_VARIABLE.into(), ctx.instance.clone()),
    ]);
    let spec = DetachedSpec {
        program: "sh".into(),
        args: vec!["-c".into(), script.into()],
        cwd: dir,
        env,
        output: log,
    };
    let detached = process::spawn_detached(&spec).map_err(|e| OpsError::Provider(e.to_string()))?;
    let record = LocalProcess {
        pid: detached.pid,
        start_time: detached.start_time,
        port: local.port,
        release: sha.to_owned(),
        started_at: chrono::Utc::now(),
    };
    if let Err(error) = write_process(&ctx.data_dir, app, &record) {
        // Unrecorded, it would be stopped as unaccounted for at the next start; stop it now.
        signal_group(detached.pid, libc::SIGKILL);
        return Err(OpsError::Provider(format!(
            "could not record the release of `{app}`: {error}"
        )));
    }
    let (app_name, release, mut child) = (app.to_owned(), sha.to_owned(), detached.child);
    // Owned by `LocalRuntime` (the entry's `AbortOnDropHandle`), not a background task; it only
    // waits, so dropping it leaves the release running.
    let waiter = tokio::spawn(async move {
        use std::os::unix::process::ExitStatusExt;
        match child.wait().await {
            Ok(status) => tracing::warn!(
                app = %app_name, %release, exit_code = ?status.code(), signal = ?status.signal(),
                "app process exited"
            ),
            Err(error) => tracing::error!(app = %app_name, %release, %error, "app process lost"),
        }
    });
    ctx.runtime.insert(
        app,
        RunningApp {
            _waiter: AbortOnDropHandle::new(waiter),
        },
    );
    Ok(())
}

/// Stops every running local release of this service (found by its `GLITCHLAB_RELEASE_OF` mark)
/// whose process group is not in `keep`: releases no record accounts for (the record was lost,
/// overwritten or never written before a crash, the app left `ops.yaml`). Returns their groups.
pub(crate) async fn stop_unaccounted(ctx: &ProviderContext, keep: &[i32]) -> Vec<i32> {
    let instance = ctx.instance.clone();
    let groups =
        tokio::task::spawn_blocking(move || process::groups_carrying(RELEASE_VARIABLE, &instance))
            .await
            .unwrap_or_default();
    let stray: Vec<i32> = groups.into_iter().filter(|g| !keep.contains(g)).collect();
    for pgid in &stray {
        signal_group(*pgid, libc::SIGTERM);
    }
    for pgid in &stray {
        if !wait_gone(*pgid, UNRECORDED_STOP_GRACE).await {
            signal_group(*pgid, libc::SIGKILL);
            wait_gone(*pgid, KILL_WAIT).await;
        }
    }
    stray
}

fn rotate_log(log: &Path) {
    if let Some(parent) = log.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    let too_big = std::fs::metadata(log).is_ok_and(|m| m.len() > APP_LOG_BYTES_MAX);
    if too_big {
        let _ = std::fs::rename(log, log.with_extension("log.1"));
    }
}

/// The last lines of the app's log file (at most [`LOG_LINES_MAX`]).
pub(crate) fn local_log_tail(data_dir: &Path, app: &str) -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(log_file(data_dir, app)) else {
        return Vec::new();
    };
    let length = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(length.saturating_sub(LOG_TAIL_BYTES)));
    let mut bytes = Vec::new();
    let _ = file.take(LOG_TAIL_BYTES).read_to_end(&mut bytes);
    last_lines(&String::from_utf8_lossy(&bytes))
}

fn last_lines(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(LOG_LINES_MAX);
    lines[start..].iter().map(|l| (*l).to_owned()).collect()
}

/// Refuses to replace the running release while `port` is held by anything else: stopping ours
/// and starting the new one would leave the new one dead ("Address already in use") and the
/// health check answered by the stranger. Called before the swap, so the running release keeps
/// serving.
async fn refuse_foreign_listener(
    ctx: &ProviderContext,
    name: &str,
    port: u16,
) -> Result<(), OpsError> {
    let ours = running_group(&ctx.data_dir, name);
    let listeners = tokio::task::spawn_blocking(move || process::port_listeners(port))
        .await
        .map_err(|e| OpsError::Provider(format!("could not read the port's listeners: {e}")))?;
    let foreign: Vec<i32> = listeners
        .groups
        .iter()
        .copied()
        .filter(|group| Some(*group) != ours)
        .collect();
    // Ours alone may listen; a listener /proc cannot name is not known to be ours.
    if !listeners.listening || (foreign.is_empty() && !listeners.groups.is_empty()) {
        return Ok(());
    }
    Err(OpsError::PortInUse(format!(
        "port {port} of `{name}` is held by {} (not the app's running release{}); the running \
         release was left serving",
        if foreign.is_empty() {
            "a process /proc does not name".to_owned()
        } else {
            format!("process group(s) {foreign:?}")
        },
        ours.map_or(String::new(), |group| format!(", group {group}"))
    )))
}

/// Whether the app's running release (the process group its record names) is what listens on
/// `port`: an HTTP answer on the port proves nothing when another process holds it, or when the
/// release died at start. `Err` says who serves instead.
pub(crate) async fn release_serves(
    ctx: &ProviderContext,
    name: &str,
    port: u16,
) -> Result<(), String> {
    let Some(ours) = running_group(&ctx.data_dir, name) else {
        return Err(format!("the release of `{name}` does not run"));
    };
    let listeners = tokio::task::spawn_blocking(move || process::port_listeners(port))
        .await
        .map_err(|e| format!("could not read the port's listeners: {e}"))?;
    if listeners.groups.contains(&ours) {
        return Ok(());
    }
    Err(format!(
        "port {port} is not held by the release's process group {ours} (held by {:?})",
        listeners.groups
    ))
}

/// The app's `local:` section, or why the app cannot run locally.
pub(crate) fn local_of(app: &AppSpec) -> Result<&LocalSpec, OpsError> {
    app.local
        .as_ref()
        .ok_or_else(|| OpsError::Unsupported("the app has no `local:` section".into()))
}

/// Puts release `sha` on the target: export, build, stop the old, start the new. Returns a short
/// account of what ran.
pub(crate) async fn deploy(
    ctx: &ProviderContext,
    name: &str,
    app: &AppSpec,
    sha: &str,
) -> Result<String, OpsError> {
    let release_dir = ctx.app_dir(name).join(sha);
    export_commit(ctx, &app.repo, sha, &release_dir).await?;
    match app.provider {
        ProviderKind::Local => {
            let local = local_of(app)?;
            let build_timeout = Duration::from_secs(local.build_timeout_secs);
            let built = ctx
                .shell_ok(
                    "build",
                    &local.build,
                    &release_dir,
                    Vec::new(),
                    build_timeout,
                )
                .await?;
            refuse_foreign_listener(ctx, name, local.port).await?;
            local_stop(ctx, name, Duration::from_millis(local.stop_grace_ms)).await;
            local_start(ctx, name, local, sha)?;
            Ok(format!("built and started {sha}; build output: {built}"))
        }
        ProviderKind::Fly => fly_deploy(ctx, fly_of(app)?, &release_dir).await,
        ProviderKind::Command => {
            let commands = command_of(app)?;
            let env = command_env(name, sha, &release_dir, None);
            let timeout = Duration::from_secs(commands.timeout_secs);
            ctx.shell_ok_outliving("deploy", &commands.deploy, &release_dir, env, timeout)
                .await
        }
    }
}

/// Puts an earlier release (`sha`) back.
pub(crate) async fn rollback(
    ctx: &ProviderContext,
    name: &str,
    app: &AppSpec,
    sha: &str,
) -> Result<String, OpsError> {
    match app.provider {
        ProviderKind::Local | ProviderKind::Fly => deploy(ctx, name, app, sha).await,
        ProviderKind::Command => {
            let commands = command_of(app)?;
            let release_dir = ctx.app_dir(name).join(sha);
            export_commit(ctx, &app.repo, sha, &release_dir).await?;
            let env = command_env(name, sha, &release_dir, None);
            let timeout = Duration::from_secs(commands.timeout_secs);
            ctx.shell_ok_outliving("rollback", &commands.rollback, &release_dir, env, timeout)
                .await
        }
    }
}

/// Restarts the running release (`current`).
pub(crate) async fn restart(
    ctx: &ProviderContext,
    name: &str,
    app: &AppSpec,
    current: &str,
) -> Result<String, OpsError> {
    match app.provider {
        ProviderKind::Local => {
            let local = local_of(app)?;
            local_stop(ctx, name, Duration::from_millis(local.stop_grace_ms)).await;
            local_start(ctx, name, local, current)?;
            Ok(format!("restarted release {current}"))
        }
        ProviderKind::Fly => {
            let fly = fly_of(app)?;
            fly_run(ctx, fly, &["apps", "restart", &fly.app]).await
        }
        ProviderKind::Command => {
            let commands = command_of(app)?;
            let line = commands.restart.as_deref().ok_or_else(|| {
                OpsError::Unsupported("the app's `command:` has no `restart`".into())
            })?;
            let env = command_env(name, current, &ctx.app_dir(name).join(current), None);
            let timeout = Duration::from_secs(commands.timeout_secs);
            ctx.shell_ok_outliving("restart", line, &app.repo, env, timeout)
                .await
        }
    }
}

/// Scales the app to `count` instances (fly and command providers).
pub(crate) async fn scale(
    ctx: &ProviderContext,
    name: &str,
    app: &AppSpec,
    count: u32,
) -> Result<String, OpsError> {
    if count == 0 || count > SCALE_COUNT_MAX {
        return Err(OpsError::InvalidState(format!(
            "scale count must be within 1..={SCALE_COUNT_MAX}"
        )));
    }
    match app.provider {
        ProviderKind::Local => Err(OpsError::Unsupported(
            "the local provider runs one process per app; it does not scale".into(),
        )),
        ProviderKind::Fly => {
            let fly = fly_of(app)?;
            let count = count.to_string();
            fly_run(
                ctx,
                fly,
                &["scale", "count", &count, "--app", &fly.app, "--yes"],
            )
            .await
        }
        ProviderKind::Command => {
            let commands = command_of(app)?;
            let line = commands.scale.as_deref().ok_or_else(|| {
                OpsError::Unsupported("the app's `command:` has no `scale`".into())
            })?;
            let env = command_env(name, "", &app.repo, Some(count));
            let timeout = Duration::from_secs(commands.timeout_secs);
            ctx.shell_ok_outliving("scale", line, &app.repo, env, timeout)
                .await
        }
    }
}

/// Whether the app runs, by the provider's own account (used when no health URL is configured
/// and by `process` checks). `Ok` holds what the provider said.
pub(crate) async fn status(
    ctx: &ProviderContext,
    name: &str,
    app: &AppSpec,
) -> Result<String, OpsError> {
    match app.provider {
        ProviderKind::Local => match running_group(&ctx.data_dir, name) {
            Some(pgid) => Ok(format!("process group {pgid} is running")),
            None => Err(OpsError::Provider(format!(
                "no process of `{name}` is running"
            ))),
        },
        ProviderKind::Fly => {
            let fly = fly_of(app)?;
            fly_run(ctx, fly, &["status", "--app", &fly.app]).await
        }
        ProviderKind::Command => {
            let commands = command_of(app)?;
            let Some(line) = commands.status.as_deref() else {
                return Ok("no status command; assumed running".into());
            };
            let env = command_env(name, "", &app.repo, None);
            let timeout = Duration::from_secs(commands.timeout_secs);
            ctx.shell_ok("status", line, &app.repo, env, timeout).await
        }
    }
}

/// The app's recent log lines (and, for fly, its releases), for a diagnosis.
pub(crate) async fn recent_logs(ctx: &ProviderContext, name: &str, app: &AppSpec) -> Vec<String> {
    let text = match app.provider {
        ProviderKind::Local => {
            // A file read: on the blocking pool, never on an async worker.
            let (data_dir, name) = (ctx.data_dir.clone(), name.to_owned());
            return tokio::task::spawn_blocking(move || local_log_tail(&data_dir, &name))
                .await
                .unwrap_or_default();
        }
        ProviderKind::Fly => match fly_of(app) {
            Ok(fly) => {
                let logs = fly_run(ctx, fly, &["logs", "--app", &fly.app, "--no-tail"]).await;
                let releases = fly_run(ctx, fly, &["releases", "--app", &fly.app]).await;
                format!("{}\n{}", flatten(logs), flatten(releases))
            }
            Err(error) => error.to_string(),
        },
        ProviderKind::Command => match command_of(app).map(|c| (c.logs.clone(), c.timeout_secs)) {
            Ok((Some(line), secs)) => flatten(
                ctx.shell_ok(
                    "logs",
                    &line,
                    &app.repo,
                    Vec::new(),
                    Duration::from_secs(secs),
                )
                .await,
            ),
            Ok((None, _)) => String::new(),
            Err(error) => error.to_string(),
        },
    };
    last_lines(&text)
}

fn flatten(result: Result<String, OpsError>) -> String {
    result.unwrap_or_else(|error| error.to_string())
}

fn fly_of(app: &AppSpec) -> Result<&FlySpec, OpsError> {
    app.fly
        .as_ref()
        .ok_or_else(|| OpsError::Unsupported("the app has no `fly:` section".into()))
}

fn command_of(app: &AppSpec) -> Result<&CommandSpecs, OpsError> {
    app.command
        .as_ref()
        .ok_or_else(|| OpsError::Unsupported("the app has no `command:` section".into()))
}

fn command_env(
    name: &str,
    sha: &str,
    release_dir: &Path,
    count: Option<u32>,
) -> Vec<(String, String)> {
    let mut env = vec![
        ("GLITCHLAB_APP".into(), name.to_owned()),
        ("GLITCHLAB_COMMIT".into(), sha.to_owned()),
        (
            "GLITCHLAB_RELEASE_DIR".into(),
            release_dir.display().to_string(),
        ),
    ];
    if let Some(count) = count {
        env.push(("GLITCHLAB_COUNT".into(), count.to_string()));
    }
    env
}

async fn fly_deploy(
    ctx: &ProviderContext,
    fly: &FlySpec,
    release_dir: &Path,
) -> Result<String, OpsError> {
    let mut args = vec!["deploy", "--app", &fly.app, "--strategy", "rolling"];
    if let Some(config) = &fly.config {
        args.extend(["--config", config]);
    }
    fly_run_in(ctx, fly, &args, release_dir).await
}

async fn fly_run(ctx: &ProviderContext, fly: &FlySpec, args: &[&str]) -> Result<String, OpsError> {
    fly_run_in(ctx, fly, args, &ctx.data_dir).await
}

/// Runs the fly CLI with `args` (refusing `secrets` and `ssh` whatever the binary is called).
async fn fly_run_in(
    ctx: &ProviderContext,
    fly: &FlySpec,
    args: &[&str],
    cwd: &Path,
) -> Result<String, OpsError> {
    let line = format!("fly {}", args.join(" "));
    let binary = fly
        .binary
        .clone()
        .or_else(|| ctx.ops.fly_binary.clone())
        .unwrap_or_else(|| "fly".into());
    // Checked as `fly ...` (the rules name the CLI) and as the binary actually run.
    ctx.check(&line)?;
    ctx.check(&format!("'{binary}' {}", args.join(" ")))?;
    let spec = program_spec(
        &binary,
        args.iter().map(|a| (*a).to_owned()).collect(),
        cwd,
        ctx.env_with(Vec::new()),
        Duration::from_secs(fly.timeout_secs),
        OUTPUT_BYTES_MAX,
    );
    let output = ctx.run_governed(spec, Lifetime::Contained).await?;
    ok_or_failed(&line, &output)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    /// A record names one process: the same pid with another start time (a reused pid) is not
    /// the release, and a group that is gone does not run.
    #[test]
    fn a_record_matches_only_the_process_it_was_written_for() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        let started = process::start_time(pid).unwrap();
        let record = LocalProcess {
            pid,
            start_time: Some(started),
            port: 1,
            release: "abc".into(),
            started_at: chrono::Utc::now(),
        };
        assert!(record.runs());
        let reused = LocalProcess {
            start_time: Some(started + 1),
            ..record.clone()
        };
        assert!(!reused.runs(), "another process with the recorded pid");
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!record.runs());
    }
}
