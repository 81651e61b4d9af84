//! The sandbox of engine, verify and confined ops processes, in three layers (see
//! `docs/engines.md`, "Sandbox"); and, for the other ops commands, a PID namespace alone
//! ([`Sandbox::contain`]) so nothing they start outlives them.
//!
//! 1. **Namespaces** (bubblewrap, `bwrap`): a new user, PID, IPC and UTS namespace, and a network
//!    namespace of its own unless the persona has `network: true`; a root of read-only system
//!    dirs, `/etc` without its secrets, a fresh `/proc`, a private sized `/tmp`, and only the
//!    run's own directories bound in; an unprivileged uid (65534) without capabilities. The
//!    service, its data dir, other worktrees and the home dir are not there to read or signal.
//! 2. **Landlock**: inside that, the process may write only its worktree, its git dirs and its
//!    temp dir (a restriction every child inherits and none can lift).
//! 3. **Limits**: rlimits (processes, CPU time, file size, open files); when the service is
//!    root, `bwrap` runs as an unprivileged host uid of the run's own ([`owner`]), since root
//!    ignores `RLIMIT_NPROC`; where they are writable, a `pids` and a `memory` cgroup per run
//!    (else memory falls back to `RLIMIT_AS`, which runtimes that reserve much address space,
//!    such as the JVM, may not start under); the run's dirs measured against `disk_bytes`
//!    ([`supervise`]).
//!
//! Engine, verify and confined ops runs start in one step ([`Sandbox::launch`], [`launch`]):
//! the service hands the run's dirs to its uid, then its own forked child joins the cgroups,
//! lowers the rlimits, stages the binds and drops root (system calls only, between `fork` and
//! `exec`) and execs `bwrap ... -- glitchlab sandbox-exec --write DIR ... -- <command>`; the
//! inner `sandbox-exec` confines itself with Landlock (which forbids the mounts `bwrap` makes, so
//! it cannot come earlier) and execs the command — its words directly when it needs no shell,
//! else `sh -c`. The service watches the run's disk use from a thread. Two execs before the
//! command (`bwrap`, the shim), where [`Sandbox::wrap`] took three and `sh`. While tasks run,
//! [`warm`] keeps the kernel's cgroup lock ready, so the child's join does not wait out an RCU
//! grace period (half of a launch's time otherwise).
//!
//! [`Sandbox::wrap`] keeps the re-exec form, for a caller that cannot run a hook in its spawn:
//! `glitchlab sandbox-exec [--cgroup DIR]... [--rlimit NAME=N]... [--user UID:GID --own DIR...
//! --share DIR...] [--watch DIR... --disk-bytes N] --no-landlock -- bwrap ... -- glitchlab
//! sandbox-exec --write DIR ... -- sh -c <command>`. The outer `sandbox-exec` hands the dirs to
//! the run's uid, joins the cgroup and sets the limits, then execs `bwrap` — or, to drop to the
//! uid or watch the disk, starts it (staged, as that uid) and stays as its parent; the inner one
//! confines itself with Landlock and execs the command.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use landlock::{
    path_beneath_rules, Access, AccessFs, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus,
    ABI,
};

use crate::config::LimitsConfig;
use crate::platform::process::{self, CommandOutput, CommandSpec};

mod launch;
mod owner;
mod supervise;
mod tree;
mod warm;

use owner::{RunAs, Share, UidLease, UidPool};

/// The hidden subcommand that applies the sandbox and execs the command.
pub const SANDBOX_SUBCOMMAND: &str = "sandbox-exec";

/// Exit code of `sandbox-exec` when it cannot confine or start the command.
const SANDBOX_FAILURE_EXIT: i32 = 126;

/// The Landlock ABI this build asks for; older kernels get what they support (best effort).
const LANDLOCK_ABI: ABI = ABI::V3;

/// The uid and gid a sandboxed command runs as inside its user namespace (`nobody`).
const SANDBOX_ID: &str = "65534";

/// What enforces the memory limit without a memory cgroup (said as a warning at start).
const ADDRESS_SPACE_LIMIT: &str = "RLIMIT_AS per process";

/// How long the start-up probe of `bwrap` may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// System directories bound read-only (or recreated as the symlinks they are on merged-/usr
/// systems).
const SYSTEM_DIRS: [&str; 7] = [
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
];

/// Files of `/etc` a command must not read: masked by `/dev/null`, which bubblewrap mounts
/// `nodev`, so opening them fails.
const ETC_SECRET_FILES: [&str; 7] = [
    "/etc/shadow",
    "/etc/shadow-",
    "/etc/gshadow",
    "/etc/gshadow-",
    "/etc/sudoers",
    "/etc/security/opasswd",
    "/etc/machine-id",
];

/// Directories of `/etc` hidden behind an empty tmpfs.
const ETC_SECRET_DIRS: [&str; 3] = ["/etc/ssl/private", "/etc/sudoers.d", "/etc/ssh"];

pub use crate::config::SandboxMode;

/// Whether this kernel enforces Landlock, found by confining a throwaway thread (Landlock
/// restricts the calling thread only, so the rest of the service is untouched).
pub fn landlock_enforced() -> Result<(), String> {
    let probe = std::thread::spawn(|| {
        let status = ruleset(&[])?;
        match status {
            RulesetStatus::FullyEnforced | RulesetStatus::PartiallyEnforced => Ok(()),
            RulesetStatus::NotEnforced => Err("the kernel does not enforce Landlock".to_owned()),
        }
    });
    probe
        .join()
        .unwrap_or_else(|_| Err("the Landlock probe panicked".to_owned()))
}

/// Restricts the calling thread: read everywhere, write only beneath `writable`.
fn ruleset(writable: &[PathBuf]) -> Result<RulesetStatus, String> {
    let all = AccessFs::from_all(LANDLOCK_ABI);
    let status = Ruleset::default()
        .handle_access(all)
        .and_then(|r| r.create())
        .and_then(|r| r.add_rules(path_beneath_rules(["/"], AccessFs::from_read(LANDLOCK_ABI))))
        .and_then(|r| r.add_rules(path_beneath_rules(writable, all)))
        .and_then(|r| r.restrict_self())
        .map_err(|error| format!("landlock: {error}"))?;
    Ok(status.ruleset)
}

/// What one sandboxed command may see and do.
#[derive(Debug, Clone, Default)]
pub struct Jail {
    /// Its working directory (bound read-only when no writable dir holds it).
    pub cwd: PathBuf,
    /// Directories it may write (its worktree, git dirs, temp dir, configured extras).
    pub writable: Vec<PathBuf>,
    /// Directories it may read besides the system (the repository's git dir, its prompt files).
    pub readable: Vec<PathBuf>,
    /// The host network (`network: true` of its persona); otherwise an empty namespace.
    pub network: bool,
    /// The run's own dirs (its worktree and temp dir) whose total size `disk_bytes` bounds;
    /// empty: not measured.
    pub disk: Vec<PathBuf>,
}

/// The layers that work on this host, found once at start.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// This binary, re-executed as `sandbox-exec`.
    exe: PathBuf,
    /// `bwrap`, when it can create the namespaces here.
    bwrap: Option<PathBuf>,
    /// Whether the kernel enforces Landlock.
    landlock: bool,
    /// The parents of the per-run cgroups that are writable here (`pids`, `memory`).
    cgroups: Vec<CgroupParent>,
    /// The limits every run gets.
    limits: LimitsConfig,
    /// The uids runs drop to, when the service is root and an unprivileged `bwrap` works.
    uids: Option<Arc<UidPool>>,
    /// Keeps the kernel's cgroup lock ready while runs launch ([`warm`]), when runs join
    /// cgroups and `warm_cgroup_lock_secs` is not 0.
    warmer: Option<Arc<warm::CgroupLockWarmer>>,
}

/// A cgroup controller a run's limits use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Controller {
    Pids,
    Memory,
}

impl Controller {
    fn name(self) -> &'static str {
        match self {
            Self::Pids => "pids",
            Self::Memory => "memory",
        }
    }

    /// A limit the start-up probe writes: valid for the controller (`pids.max` refuses more
    /// than the kernel's pid limit, 2^22).
    fn probe_limit(self) -> &'static str {
        match self {
            Self::Pids => "1024",
            Self::Memory => "1073741824",
        }
    }

    /// The file that holds the limit (v1, v2).
    fn limit_file(self, v2: bool) -> &'static str {
        match (self, v2) {
            (Self::Pids, _) => "pids.max",
            (Self::Memory, false) => "memory.limit_in_bytes",
            (Self::Memory, true) => "memory.max",
        }
    }

    /// The swap limit written after the limit, so swap cannot stretch it (absent without swap
    /// accounting; then nothing to stretch).
    fn swap_file(self, v2: bool) -> Option<(&'static str, bool)> {
        match (self, v2) {
            (Self::Pids, _) => None,
            (Self::Memory, false) => Some(("memory.memsw.limit_in_bytes", false)),
            (Self::Memory, true) => Some(("memory.swap.max", true)),
        }
    }

    /// The file that counts the limit's hits, and the key of the count.
    fn events(self, v2: bool) -> (&'static str, &'static str) {
        match (self, v2) {
            (Self::Pids, _) => ("pids.events", "max"),
            (Self::Memory, false) => ("memory.oom_control", "oom_kill"),
            (Self::Memory, true) => ("memory.events", "oom_kill"),
        }
    }
}

/// Where a controller's per-run cgroups are made.
#[derive(Debug, Clone)]
struct CgroupParent {
    controller: Controller,
    parent: PathBuf,
    v2: bool,
}

/// One run's cgroup of one controller.
#[derive(Debug, Clone)]
struct RunCgroup {
    controller: Controller,
    dir: PathBuf,
    v2: bool,
}

/// One sandboxed run in flight: its cgroups, removed when the run is settled or dropped.
#[derive(Debug)]
pub struct Confined {
    cgroups: Vec<RunCgroup>,
    bwrap: bool,
    /// The run's uid, given back to the pool when the run is settled or dropped.
    _uid: Option<UidLease>,
    /// What the service's spawn does for a one-step launch ([`Sandbox::launch`]).
    launch: Option<Arc<launch::Launch>>,
}

impl Confined {
    /// The hook a one-step launch needs around its spawn: pass it to
    /// [`process::run_hooked`] (`None` for a run [`Sandbox::wrap`]ped or contained).
    pub fn hook(&self) -> Option<Arc<dyn process::SpawnHook>> {
        self.launch
            .as_ref()
            .map(|launch| Arc::clone(launch) as Arc<dyn process::SpawnHook>)
    }

    fn remove_cgroups(&mut self) {
        let mut dirs: Vec<PathBuf> = self.cgroups.drain(..).map(|c| c.dir).collect();
        dirs.dedup();
        for dir in dirs {
            remove_cgroup(dir);
        }
    }
}

impl Drop for Confined {
    fn drop(&mut self) {
        self.remove_cgroups();
    }
}

impl Sandbox {
    /// Finds what works here, logs what is missing and which limit is enforced how, and
    /// applies `mode`: `off` gives `None`; `required` fails unless namespaces and Landlock both
    /// work and every limit is enforced; `auto` takes what there is. `exe` is the `glitchlab`
    /// binary to re-execute, when it is not this process's (an embedding test process).
    pub async fn detect(
        mode: SandboxMode,
        limits: LimitsConfig,
        exe: Option<PathBuf>,
    ) -> Result<Option<Self>, String> {
        if mode == SandboxMode::Off {
            tracing::warn!(
                "sandbox = off: engine and verify processes run unconfined and unlimited; ops commands (build, drain, provider queries) are held by their process group only, which a `setsid` child escapes"
            );
            return Ok(None);
        }
        let exe = match exe {
            Some(exe) => exe,
            None => std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?,
        };
        let landlock = landlock_enforced();
        let pool = (is_root() && limits.sandbox_uid_count > 0)
            .then(|| UidPool::new(limits.sandbox_uid_base, limits.sandbox_uid_count));
        let (bwrap, uids) = probe_namespaces(&exe, pool, &limits).await;
        if mode == SandboxMode::Required {
            if let Err(reason) = &bwrap {
                return Err(format!("namespaces: {reason}"));
            }
            if let Err(reason) = &landlock {
                return Err(reason.clone());
            }
        }
        if let Err(reason) = &bwrap {
            tracing::warn!(%reason, "namespaces unavailable (bubblewrap): engine and verify processes see the host's processes, files and network; ops commands (build, drain, provider queries) are held by their process group only, which a `setsid` child escapes");
        }
        if let Err(reason) = &landlock {
            tracing::warn!(%reason, "Landlock unavailable: engine and verify processes may write wherever their uid may");
        }
        let mut cgroups = Vec::new();
        for controller in [Controller::Pids, Controller::Memory] {
            match cgroup_parent(controller) {
                Ok(parent) => cgroups.push(parent),
                Err(reason) => {
                    tracing::info!(controller = controller.name(), %reason, "no writable cgroup");
                }
            }
        }
        // The helper moves between cgroups of the `pids` parent when there is one: that
        // controller kills nothing.
        let warmer = cgroups
            .iter()
            .find(|c| c.controller == Controller::Pids)
            .or(cgroups.first())
            .filter(|_| limits.warm_cgroup_lock_secs > 0)
            .and_then(|c| warm::CgroupLockWarmer::start(exe.clone(), c.parent.clone()))
            .map(Arc::new);
        let sandbox = Self {
            exe,
            bwrap: bwrap.ok(),
            landlock: landlock.is_ok(),
            cgroups,
            limits,
            uids,
            warmer,
        };
        sandbox.log_enforcement(mode)?;
        let cgroups: Vec<String> = sandbox
            .cgroups
            .iter()
            .map(|c| c.parent.display().to_string())
            .collect();
        tracing::info!(
            sandbox = sandbox.name(),
            ?cgroups,
            "engine and verify processes are sandboxed"
        );
        Ok(Some(sandbox))
    }

    /// Logs each limit and what enforces it; with `required`, a limit nothing enforces stops
    /// the start.
    fn log_enforcement(&self, mode: SandboxMode) -> Result<(), String> {
        for (limit, enforced_by) in self.enforcement(is_root()) {
            match enforced_by {
                Some(by) if by == ADDRESS_SPACE_LIMIT => {
                    tracing::warn!(limit, enforced_by = %by, "no writable memory cgroup: the memory limit is an address-space limit, which the JVM and the like may not start under");
                }
                Some(by) => tracing::info!(limit, enforced_by = %by, "sandbox limit enforced"),
                None if limit == "processes" => {
                    let reason = "the service is root, runs cannot drop to an unprivileged uid (`bwrap` unavailable, refused or `sandbox_uid_count = 0`) and no pids cgroup is writable; root ignores RLIMIT_NPROC";
                    if mode == SandboxMode::Required {
                        return Err(format!("the process limit cannot be enforced: {reason}"));
                    }
                    tracing::warn!(limit, reason, "the process limit is not enforced");
                }
                None => tracing::warn!(limit, "sandbox limit not enforced"),
            }
        }
        Ok(())
    }

    /// Each limit and what enforces it here (`None`: nothing).
    fn enforcement(&self, root: bool) -> Vec<(&'static str, Option<String>)> {
        let has = |controller| self.cgroups.iter().any(|c| c.controller == controller);
        let limits = &self.limits;
        let processes = match (&self.uids, has(Controller::Pids)) {
            (Some(_), true) => Some("uid drop (RLIMIT_NPROC) + pids cgroup".to_owned()),
            (Some(_), false) => Some("uid drop (RLIMIT_NPROC)".to_owned()),
            (None, true) => Some("pids cgroup".to_owned()),
            (None, false) if !root => Some("RLIMIT_NPROC of the service's uid".to_owned()),
            (None, false) => None,
        };
        let memory = if has(Controller::Memory) {
            "memory cgroup"
        } else {
            ADDRESS_SPACE_LIMIT
        };
        let tmp = self
            .bwrap
            .as_ref()
            .map(|_| format!("tmpfs size {}", limits.tmp_bytes));
        vec![
            ("processes", processes),
            ("memory", Some(memory.to_owned())),
            (
                "disk",
                Some(format!("watcher, disk_bytes {}", limits.disk_bytes)),
            ),
            ("tmp", tmp),
            ("cpu", Some("RLIMIT_CPU per process".to_owned())),
            ("file_size", Some("RLIMIT_FSIZE per process".to_owned())),
            ("open_files", Some("RLIMIT_NOFILE per process".to_owned())),
        ]
    }

    /// Says sandboxed launches are coming (a task started): the cgroup lock is kept ready from
    /// now on for `warm_cgroup_lock_secs`, so the first launch does not wait either ([`warm`]).
    pub fn expect_launches(&self) {
        if let Some(warmer) = &self.warmer {
            warmer.arm(Duration::from_secs(self.limits.warm_cgroup_lock_secs));
        }
    }

    /// The layers in force, as recorded on each run: `bwrap+landlock`, `bwrap`, `landlock` or
    /// `limits`.
    pub fn name(&self) -> &'static str {
        match (self.bwrap.is_some(), self.landlock) {
            (true, true) => "bwrap+landlock",
            (true, false) => "bwrap",
            (false, true) => "landlock",
            (false, false) => "limits",
        }
    }

    /// Rewrites `spec` to run its program inside the sandbox. The answer holds the run's
    /// cgroup; give it back to [`Self::settle`] with the output.
    pub fn wrap(&self, jail: &Jail, spec: &mut CommandSpec) -> Confined {
        self.expect_launches();
        let run = uuid::Uuid::now_v7().to_string();
        let lease = match (&self.bwrap, &self.uids) {
            (Some(_), Some(pool)) => Some(pool.lease(&jail.cwd)),
            _ => None,
        };
        let mut confined = Confined {
            cgroups: self.run_cgroups(&run),
            bwrap: self.bwrap.is_some(),
            _uid: None,
            launch: None,
        };
        let mut outer = vec![SANDBOX_SUBCOMMAND.to_owned()];
        let mut joined: Vec<&PathBuf> = Vec::new();
        for cgroup in &confined.cgroups {
            if !joined.contains(&&cgroup.dir) {
                joined.push(&cgroup.dir);
                outer.extend(["--cgroup".to_owned(), cgroup.dir.display().to_string()]);
            }
        }
        for (name, value) in self.rlimits() {
            outer.extend(["--rlimit".to_owned(), format!("{name}={value}")]);
        }
        if let Some(lease) = &lease {
            outer.extend(["--user".to_owned(), lease.run_as.arg()]);
            let (own, share) = handed_dirs(jail);
            for dir in own {
                outer.extend(["--own".to_owned(), dir.display().to_string()]);
            }
            for dir in share {
                outer.extend(["--share".to_owned(), dir.display().to_string()]);
            }
        }
        for dir in &jail.disk {
            outer.extend(["--watch".to_owned(), dir.display().to_string()]);
        }
        if !jail.disk.is_empty() {
            outer.extend([
                "--disk-bytes".to_owned(),
                self.limits.disk_bytes.to_string(),
            ]);
        }
        confined._uid = lease;
        let landlock_args = |args: &mut Vec<String>| {
            if self.landlock {
                for dir in &jail.writable {
                    args.extend(["--write".to_owned(), dir.display().to_string()]);
                }
            } else {
                args.push("--no-landlock".to_owned());
            }
        };
        let mut command = vec![spec.program.clone()];
        command.append(&mut spec.args);
        match &self.bwrap {
            Some(bwrap) => {
                outer.extend(["--no-landlock".to_owned(), "--".to_owned()]);
                outer.push(bwrap.display().to_string());
                outer.extend(bwrap_args(jail, &self.exe, self.limits.tmp_bytes));
                outer.push("--".to_owned());
                if self.landlock {
                    outer.push(self.exe.display().to_string());
                    outer.push(SANDBOX_SUBCOMMAND.to_owned());
                    landlock_args(&mut outer);
                    outer.push("--".to_owned());
                }
            }
            None => {
                landlock_args(&mut outer);
                outer.push("--".to_owned());
            }
        }
        outer.append(&mut command);
        spec.program = self.exe.display().to_string();
        spec.args = outer;
        confined
    }

    /// Whether [`Self::contain`] works here: bubblewrap can make namespaces.
    pub fn can_contain(&self) -> bool {
        self.bwrap.is_some()
    }

    /// Rewrites `spec` to run in a PID namespace of its own, and nothing more: the host's
    /// filesystem (`/` bound as it is, with a fresh `/proc`), network and uid stay as they were.
    /// For ops commands (build, drain, provider queries) that need the host as it is but must
    /// not leave anything behind: when the command's `bwrap` ends — the command exited, its
    /// timeout or a cancel killed its process group, or the service died (`--die-with-parent`)
    /// — the namespace's init dies and the kernel kills every process in it, a `setsid` or
    /// double-forked child included. Give the answer back to [`Self::settle`] with the output.
    /// `None` (the spec unchanged) when bubblewrap does not work here: its process group is then
    /// all that holds the command, which a `setsid` child leaves.
    pub fn contain(&self, spec: &mut CommandSpec) -> Option<Confined> {
        let bwrap = self.bwrap.as_ref()?;
        let mut args: Vec<String> = [
            "--unshare-pid",
            "--die-with-parent",
            "--dev-bind",
            "/",
            "/",
            "--proc",
            "/proc",
            "--chdir",
        ]
        .map(str::to_owned)
        .to_vec();
        args.push(spec.cwd.display().to_string());
        args.push("--".to_owned());
        args.push(std::mem::take(&mut spec.program));
        args.append(&mut spec.args);
        spec.program = bwrap.display().to_string();
        spec.args = args;
        Some(Confined {
            cgroups: Vec::new(),
            bwrap: true,
            _uid: None,
            launch: None,
        })
    }

    /// The run's cgroups, made under each writable parent (one that cannot be made is said and
    /// left out).
    fn run_cgroups(&self, run: &str) -> Vec<RunCgroup> {
        let mut cgroups = Vec::new();
        for parent in &self.cgroups {
            let dir = parent.parent.join(run);
            match self.make_cgroup(parent, &dir) {
                Ok(()) => cgroups.push(RunCgroup {
                    controller: parent.controller,
                    dir,
                    v2: parent.v2,
                }),
                Err(error) => {
                    tracing::warn!(dir = %dir.display(), %error, "cannot make a run's cgroup");
                }
            }
        }
        cgroups
    }

    /// Rewrites `spec` to run in the sandbox in one step: the service's spawn execs `bwrap`
    /// itself, having joined the cgroups, lowered the limits and dropped to the run's uid in the
    /// forked child; `bwrap` execs the Landlock shim (`sandbox-exec --write ...`), which execs
    /// the command — directly, not through `sh -c`, when the line is plain words naming a
    /// system program ([`plain_argv`]). Run the spec with [`process::run_hooked`] and
    /// [`Confined::hook`]; give the answer back to [`Self::settle`] with the output. Same
    /// guarantees as [`Self::wrap`], one exec fewer (two without Landlock's shim: none).
    pub fn launch(&self, jail: &Jail, spec: &mut CommandSpec) -> Confined {
        self.expect_launches();
        let run = uuid::Uuid::now_v7().to_string();
        let lease = match (&self.bwrap, &self.uids) {
            (Some(_), Some(pool)) => Some(pool.lease(&jail.cwd)),
            _ => None,
        };
        let cgroups = self.run_cgroups(&run);
        let mut line = self.launch_line(jail, spec);
        let (own, share) = match &lease {
            Some(_) => handed_dirs(jail),
            None => (Vec::new(), Vec::new()),
        };
        let sources = match &lease {
            Some(_) => supervise::staged_args(&line).map(|(staged, sources)| {
                line = staged;
                sources
            }),
            None => Ok(Vec::new()),
        };
        let mut joined: Vec<PathBuf> = cgroups.iter().map(|c| c.dir.clone()).collect();
        joined.dedup();
        let plan = launch::LaunchPlan {
            cgroups: joined,
            rlimits: self.rlimits(),
            run_as: lease.as_ref().map(|lease| lease.run_as),
            own,
            share,
            sources,
            watch: jail.disk.clone(),
            disk_bytes: self.limits.disk_bytes,
        };
        let mut line = line
            .into_iter()
            .map(|arg| arg.to_string_lossy().into_owned());
        spec.program = line.next().unwrap_or_default();
        spec.args = line.collect();
        Confined {
            cgroups,
            bwrap: self.bwrap.is_some(),
            _uid: lease,
            launch: Some(Arc::new(launch::Launch::new(plan))),
        }
    }

    /// The command line of a one-step launch: `bwrap ... --` (when it works here), the Landlock
    /// shim (when the kernel enforces it), then the command.
    fn launch_line(&self, jail: &Jail, spec: &mut CommandSpec) -> Vec<OsString> {
        let mut line: Vec<String> = Vec::new();
        if let Some(bwrap) = &self.bwrap {
            line.push(bwrap.display().to_string());
            line.extend(bwrap_args(jail, &self.exe, self.limits.tmp_bytes));
            line.push("--".to_owned());
        }
        if self.landlock {
            line.push(self.exe.display().to_string());
            line.push(SANDBOX_SUBCOMMAND.to_owned());
            for dir in &jail.writable {
                line.extend(["--write".to_owned(), dir.display().to_string()]);
            }
            line.push("--".to_owned());
        }
        match plain_argv(spec) {
            Some(argv) => line.extend(argv),
            None => {
                line.push(std::mem::take(&mut spec.program));
                line.append(&mut spec.args);
            }
        }
        line.into_iter().map(OsString::from).collect()
    }

    /// Makes (or, on v2 where one dir serves every controller, reuses) a run's cgroup and
    /// writes its limit.
    fn make_cgroup(&self, parent: &CgroupParent, dir: &Path) -> std::io::Result<()> {
        if let Err(error) = std::fs::create_dir(dir) {
            if error.kind() != std::io::ErrorKind::AlreadyExists {
                return Err(error);
            }
        }
        let limit = match parent.controller {
            Controller::Pids => self.limits.processes,
            Controller::Memory => self.limits.memory_bytes,
        };
        std::fs::write(
            dir.join(parent.controller.limit_file(parent.v2)),
            limit.to_string(),
        )?;
        if let Some((file, zero)) = parent.controller.swap_file(parent.v2) {
            let value = if zero { 0 } else { limit };
            // Absent without swap accounting: nothing to stretch the limit then.
            let _ = std::fs::write(dir.join(file), value.to_string());
        }
        Ok(())
    }

    /// Ends a run: turns `bwrap`'s `128 + signal` back into the signal, and names the limit the
    /// run hit, if it failed because of one.
    pub fn settle(&self, mut confined: Confined, output: &mut CommandOutput) -> Option<String> {
        if confined.bwrap && output.signal.is_none() {
            if let Some(code @ 129..=192) = output.exit_code {
                output.exit_code = None;
                output.signal = Some(code - 128);
            }
        }
        let hit = |controller: Controller| {
            confined.cgroups.iter().any(|cgroup| {
                let (file, key) = cgroup.controller.events(cgroup.v2);
                cgroup.controller == controller
                    && std::fs::read_to_string(cgroup.dir.join(file))
                        .is_ok_and(|events| counted(&events, key))
            })
        };
        let cgroup_hit = if hit(Controller::Pids) {
            Some(Limit::Processes)
        } else if hit(Controller::Memory) {
            Some(Limit::Memory)
        } else {
            None
        };
        confined.remove_cgroups();
        if let Some((line, killed)) = confined.launch.as_ref().and_then(|l| l.disk_verdict()) {
            // As the watching `sandbox-exec` ended such a run: killed, or failed if it ended
            // by itself; the mark in its stderr names the limit.
            if !killed {
                output.exit_code = Some(supervise::DISK_EXIT);
                output.signal = None;
            }
            output.stderr.text.push_str(&line);
            output.stderr.text.push('\n');
        }
        if output.success() {
            return None;
        }
        let text = format!("{}\n{}", output.stdout.text, output.stderr.text);
        // A shell reports a child ended by a signal as 128 + the signal.
        let signal = output.signal.or_else(|| {
            output
                .exit_code
                .filter(|code| *code > 128)
                .map(|code| code - 128)
        });
        limit_hit(cgroup_hit, signal, &text).map(|limit| self.describe(limit))
    }

    /// `processes (1024)`: the limit and its configured value.
    fn describe(&self, limit: Limit) -> String {
        let limits = &self.limits;
        match limit {
            Limit::Processes => format!("processes limit ({})", limits.processes),
            Limit::Memory => format!("memory limit ({} bytes)", limits.memory_bytes),
            Limit::Cpu => format!("CPU time limit ({} s)", limits.cpu_secs),
            Limit::FileSize => format!("file size limit ({} bytes)", limits.file_bytes),
            Limit::OpenFiles => format!("open files limit ({})", limits.open_files),
            Limit::Disk => format!("disk limit (disk_bytes {})", limits.disk_bytes),
        }
    }

    /// The rlimits of every run: address space only where no memory cgroup holds the memory.
    fn rlimits(&self) -> Vec<(&'static str, u64)> {
        let limits = &self.limits;
        let mut rlimits = vec![
            ("nproc", limits.processes),
            ("cpu", limits.cpu_secs),
            ("fsize", limits.file_bytes),
            ("nofile", limits.open_files),
        ];
        if !self
            .cgroups
            .iter()
            .any(|c| c.controller == Controller::Memory)
        {
            rlimits.push(("as", limits.memory_bytes));
        }
        rlimits
    }
}

/// Which limit a failed run hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Limit {
    Processes,
    Memory,
    Cpu,
    FileSize,
    OpenFiles,
    Disk,
}

/// Reads a failed run's end for the marks each limit leaves: the cgroups' counts of refused
/// forks and OOM kills, SIGXCPU and SIGXFSZ, and what shells and runtimes print when `fork`,
/// `malloc` or `open` is refused.
fn limit_hit(cgroup_hit: Option<Limit>, signal: Option<i32>, output: &str) -> Option<Limit> {
    if cgroup_hit.is_some() {
        return cgroup_hit;
    }
    match signal {
        Some(libc::SIGXCPU) => return Some(Limit::Cpu),
        Some(libc::SIGXFSZ) => return Some(Limit::FileSize),
        _ => {}
    }
    const MARKS: [(&str, Limit); 13] = [
        (supervise::DISK_MARK, Limit::Disk),
        ("Cannot fork", Limit::Processes),
        ("fork: Resource temporarily unavailable", Limit::Processes),
        ("fork: retry", Limit::Processes),
        ("memory exhausted", Limit::Memory),
        ("Cannot allocate memory", Limit::Memory),
        ("out of memory", Limit::Memory),
        ("MemoryError", Limit::Memory),
        ("memory allocation of", Limit::Memory),
        ("Too many open files", Limit::OpenFiles),
        ("File too large", Limit::FileSize),
        ("File size limit exceeded", Limit::FileSize),
        ("CPU time limit exceeded", Limit::Cpu),
    ];
    MARKS
        .iter()
        .find(|(mark, _)| output.contains(mark))
        .map(|(_, limit)| *limit)
}

/// Whether a cgroup events file counts a hit: a `KEY N` line with N > 0 (`max` of
/// `pids.events`, `oom_kill` of `memory.events` or `memory.oom_control`).
fn counted(events: &str, key: &str) -> bool {
    events.lines().any(|line| {
        line.strip_prefix(key)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .is_some_and(|n| n > 0)
    })
}

/// Shell builtins that also exist as programs but behave differently there (`echo`'s escapes,
/// `pwd`'s logical path, `kill`'s jobs): such a line keeps its shell.
const SHELL_FLAVOURED: [&str; 7] = ["echo", "printf", "pwd", "kill", "test", "[", "time"];

/// The words of `sh -c LINE` when LINE needs no shell: plain words (letters, digits and
/// `_./=:,+@-`) separated by single spaces, the first of them a program found on `PATH` in a
/// system dir (bound into every jail) and not a shell-flavoured builtin. Anything else — quotes,
/// variables, globs, redirections, `;`, a relative path (which `sh` runs as a script when it
/// has no `#!`) — keeps `sh -c`.
fn plain_argv(spec: &CommandSpec) -> Option<Vec<String>> {
    let [dash_c, line] = spec.args.as_slice() else {
        return None;
    };
    if spec.program != "sh" || dash_c != "-c" || line.is_empty() {
        return None;
    }
    let plain = |c: char| c.is_ascii_alphanumeric() || "_./=:,+@-".contains(c);
    if !line.chars().all(|c| c == ' ' || plain(c)) {
        return None;
    }
    let words: Vec<String> = line.split(' ').map(str::to_owned).collect();
    if words.iter().any(String::is_empty) {
        return None;
    }
    let first = words.first()?;
    if first.contains(['/', '=']) || SHELL_FLAVOURED.contains(&first.as_str()) {
        return None;
    }
    let found = find_program(first)?;
    SYSTEM_DIRS
        .iter()
        .any(|dir| found.starts_with(dir))
        .then_some(words)
}

/// The `bwrap` arguments (before `--`) of a jail.
fn bwrap_args(jail: &Jail, exe: &Path, tmp_bytes: u64) -> Vec<String> {
    let mut args: Vec<String> = [
        "--unshare-user",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--uid",
        SANDBOX_ID,
        "--gid",
        SANDBOX_ID,
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
    ]
    .map(str::to_owned)
    .to_vec();
    if !jail.network {
        args.push("--unshare-net".into());
    }
    let mut push = |parts: &[&str]| args.extend(parts.iter().map(|p| (*p).to_owned()));
    for dir in SYSTEM_DIRS {
        let path = Path::new(dir);
        if let Ok(target) = std::fs::read_link(path) {
            push(&["--symlink", &target.display().to_string(), dir]);
        } else if path.is_dir() {
            push(&["--ro-bind", dir, dir]);
        }
    }
    push(&["--ro-bind", "/etc", "/etc"]);
    for file in ETC_SECRET_FILES {
        if Path::new(file).is_file() {
            push(&["--ro-bind", "/dev/null", file]);
        }
    }
    for file in ssh_host_keys() {
        push(&["--ro-bind", "/dev/null", &file]);
    }
    for dir in ETC_SECRET_DIRS {
        if Path::new(dir).is_dir() {
            push(&["--tmpfs", dir]);
        }
    }
    let tmp_bytes = tmp_bytes.to_string();
    push(&["--proc", "/proc", "--dev", "/dev"]);
    push(&["--size", &tmp_bytes, "--tmpfs", "/tmp"]);
    for (path, writable) in binds(jail, exe) {
        let path = path.display().to_string();
        push(&[if writable { "--bind" } else { "--ro-bind" }, &path, &path]);
    }
    push(&[
        "--setenv",
        "HOME",
        "/tmp",
        // The bound worktree belongs to a uid the namespace maps to `nobody`, or to no uid:
        // git must not refuse it as "dubious ownership".
        "--setenv",
        "GIT_CONFIG_COUNT",
        "1",
        "--setenv",
        "GIT_CONFIG_KEY_0",
        "safe.directory",
        "--setenv",
        "GIT_CONFIG_VALUE_0",
        "*",
        "--chdir",
        &jail.cwd.display().to_string(),
    ]);
    args
}

/// Host keys under `/etc/ssh` (hidden with the whole dir too; named so a host whose `/etc/ssh`
/// cannot be covered still masks them).
fn ssh_host_keys() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/etc/ssh") else {
        return Vec::new();
    };
    let mut keys: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("ssh_host_") && !n.ends_with(".pub"))
        })
        .map(|path| path.display().to_string())
        .collect();
    keys.sort();
    keys
}

/// The jail's own paths, parents before children (so a writable dir inside a read-only one is
/// mounted over it), each once (writable wins): what exists of the writable and readable dirs,
/// the working directory when nothing holds it, and this binary.
fn binds(jail: &Jail, exe: &Path) -> Vec<(PathBuf, bool)> {
    fn add(binds: &mut Vec<(PathBuf, bool)>, path: &Path, writable: bool) {
        if path == Path::new("/") || path.starts_with("/dev") || !path.exists() {
            return;
        }
        match binds.iter_mut().find(|(p, _)| p == path) {
            Some(existing) => existing.1 |= writable,
            None => binds.push((path.to_path_buf(), writable)),
        }
    }
    let mut binds: Vec<(PathBuf, bool)> = Vec::new();
    for dir in &jail.writable {
        add(&mut binds, dir, true);
    }
    // A readable path inside a writable one is already there, writable by that choice.
    let inside_writable = |binds: &[(PathBuf, bool)], path: &Path| {
        binds.iter().any(|(p, w)| *w && path.starts_with(p))
    };
    for dir in jail.readable.iter().map(PathBuf::as_path).chain([exe]) {
        if !inside_writable(&binds, dir) {
            add(&mut binds, dir, false);
        }
    }
    let held = binds.iter().any(|(path, _)| jail.cwd.starts_with(path))
        || SYSTEM_DIRS.iter().any(|dir| jail.cwd.starts_with(dir));
    if !held {
        add(&mut binds, &jail.cwd, false);
    }
    binds.sort_by_key(|(path, writable)| (path.components().count(), *writable));
    binds
}

/// Finds `bwrap` and probes it the way runs will use it: as the pool's probe uid through
/// `sandbox-exec --user` when the service is root (then runs drop to the pool's uids), else (or
/// when that fails) as the service's own uid.
async fn probe_namespaces(
    exe: &Path,
    pool: Option<Arc<UidPool>>,
    limits: &LimitsConfig,
) -> (Result<PathBuf, String>, Option<Arc<UidPool>>) {
    let Some(bwrap) = find_program("bwrap") else {
        let reason = "`bwrap` is not installed (apt-get install bubblewrap)".to_owned();
        return (Err(reason), None);
    };
    if let Some(pool) = pool {
        match probe_bwrap(&bwrap, exe, Some(pool.probe_identity()), limits).await {
            Ok(()) => return (Ok(bwrap), Some(pool)),
            Err(reason) => {
                tracing::warn!(%reason, "`bwrap` cannot run as an unprivileged uid: runs stay host root in their user namespace");
            }
        }
    }
    let plain = probe_bwrap(&bwrap, exe, None, limits).await;
    (plain.map(|()| bwrap), None)
}

/// Runs `true` in the namespaces, binds and `/tmp` of a real run, as `run_as` when given.
async fn probe_bwrap(
    bwrap: &Path,
    exe: &Path,
    run_as: Option<RunAs>,
    limits: &LimitsConfig,
) -> Result<(), String> {
    let jail = Jail {
        cwd: PathBuf::from("/"),
        ..Jail::default()
    };
    let mut spec = CommandSpec::shell("", std::env::temp_dir(), PROBE_TIMEOUT, 4096);
    spec.program = bwrap.display().to_string();
    spec.args = bwrap_args(&jail, exe, limits.tmp_bytes);
    spec.args.extend(["--".to_owned(), "true".to_owned()]);
    if let Some(run_as) = run_as {
        let mut args = vec![
            SANDBOX_SUBCOMMAND.to_owned(),
            "--user".to_owned(),
            run_as.arg(),
            "--no-landlock".to_owned(),
            "--".to_owned(),
            std::mem::take(&mut spec.program),
        ];
        args.append(&mut spec.args);
        spec.program = exe.display().to_string();
        spec.args = args;
    }
    let output = process::run(&spec)
        .await
        .map_err(|error| error.to_string())?;
    if output.success() {
        Ok(())
    } else {
        Err(format!(
            "`bwrap` cannot create namespaces here: {}",
            output.stderr.text.trim()
        ))
    }
}

/// Whether the service runs as root (whose runs `RLIMIT_NPROC` does not bind).
fn is_root() -> bool {
    // SAFETY: geteuid reads the caller's credentials; it cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The writable dirs handed to the run's uid, less `/dev` and the system's: the run's own
/// (`Jail::disk`, owned) and the others (shared through the group), each once.
fn handed_dirs(jail: &Jail) -> (Vec<PathBuf>, Vec<PathBuf>) {
    const NEVER: [&str; 8] = [
        "/dev", "/proc", "/sys", "/etc", "/boot", "/run", "/var/run", "/usr",
    ];
    let system = |dir: &Path| {
        dir == Path::new("/")
            || NEVER
                .iter()
                .chain(SYSTEM_DIRS.iter())
                .any(|s| dir.starts_with(s))
    };
    let mut own: Vec<PathBuf> = Vec::new();
    for dir in jail.disk.iter().filter(|d| !system(d)) {
        if !own.contains(dir) {
            own.push(dir.clone());
        }
    }
    let mut share: Vec<PathBuf> = Vec::new();
    for dir in jail.writable.iter().filter(|d| !system(d)) {
        if !own.iter().any(|o| dir.starts_with(o)) && !share.contains(dir) {
            share.push(dir.clone());
        }
    }
    (own, share)
}

/// `name` on `PATH`.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// A writable parent for a controller's per-run cgroups: `glitchlab` under this process's own
/// cgroup of the controller's v1 hierarchy or of the v2 one, if it can be made and a limit
/// written in a child of it.
fn cgroup_parent(controller: Controller) -> Result<CgroupParent, String> {
    let own = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| e.to_string())?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| e.to_string())?;
    let mut reasons = Vec::new();
    for (mount, path, v2) in cgroup_candidates(&own, &mounts, controller.name()) {
        let parent = mount.join(path.trim_start_matches('/')).join("glitchlab");
        let probe = parent.join(format!("probe-{}", uuid::Uuid::now_v7()));
        let made = std::fs::create_dir_all(&probe).and_then(|()| {
            std::fs::write(
                probe.join(controller.limit_file(v2)),
                controller.probe_limit(),
            )
        });
        let _ = std::fs::remove_dir(&probe);
        match made {
            Ok(()) => {
                sweep_cgroups(&parent);
                return Ok(CgroupParent {
                    controller,
                    parent,
                    v2,
                });
            }
            Err(error) => reasons.push(format!("{}: {error}", parent.display())),
        }
    }
    if reasons.is_empty() {
        return Err(format!(
            "no {} cgroup controller is mounted",
            controller.name()
        ));
    }
    Err(reasons.join("; "))
}

/// Runs' cgroups older than a minute that a killed service left behind: removed if empty (a
/// cgroup still in use cannot be removed, and a young one may be about to be joined).
fn sweep_cgroups(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    for entry in entries.filter_map(Result::ok) {
        let made_secs = entry
            .file_name()
            .to_str()
            .and_then(|name| uuid::Uuid::parse_str(name).ok())
            .and_then(|id| id.get_timestamp())
            .map(|stamp| stamp.to_unix().0);
        if made_secs.is_some_and(|secs| now.saturating_sub(secs) > CGROUP_SWEEP_AGE_SECS) {
            let _ = std::fs::remove_dir(entry.path());
        }
    }
}

/// Age past which an empty run cgroup is left over, not about to be joined.
const CGROUP_SWEEP_AGE_SECS: u64 = 60;

/// (mount point, this process's path in it, v2) of the v1 hierarchy of `controller` and of the
/// v2 one.
fn cgroup_candidates(own: &str, mountinfo: &str, controller: &str) -> Vec<(PathBuf, String, bool)> {
    let mut candidates = Vec::new();
    for line in mountinfo.lines() {
        let Some((before, after)) = line.split_once(" - ") else {
            continue;
        };
        let mount_point = before.split_whitespace().nth(4).unwrap_or("");
        let mut fields = after.split_whitespace();
        let fs_type = fields.next().unwrap_or("");
        let options = fields.nth(1).unwrap_or("");
        let v1 = fs_type == "cgroup" && options.split(',').any(|o| o == controller);
        let v2 = fs_type == "cgroup2";
        for entry in own.lines() {
            let mut parts = entry.splitn(3, ':');
            let (Some(_), Some(controllers), Some(path)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let matches = (v1 && controllers.split(',').any(|c| c == controller))
                || (v2 && controllers.is_empty());
            if matches {
                candidates.push((PathBuf::from(mount_point), path.to_owned(), v2));
            }
        }
    }
    candidates
}

/// Removes a run's cgroup once its last process is gone (from a thread: the dying processes of
/// a killed namespace may take a moment).
fn remove_cgroup(dir: PathBuf) {
    if std::fs::remove_dir(&dir).is_ok() || !dir.exists() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("cgroup-cleanup".into())
        .spawn(move || {
            for _ in 0..100 {
                std::thread::sleep(Duration::from_millis(100));
                if std::fs::remove_dir(&dir).is_ok() || !dir.exists() {
                    return;
                }
            }
            tracing::warn!(dir = %dir.display(), "a run's cgroup could not be removed");
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "cannot start the cgroup cleanup");
    }
}

/// What `sandbox-exec` was asked to do.
#[derive(Debug, Default)]
struct ExecArgs {
    writable: Vec<PathBuf>,
    landlock: bool,
    cgroups: Vec<PathBuf>,
    rlimits: Vec<(String, u64)>,
    /// The uid to drop to (then the command is `bwrap`, whose binds are staged).
    run_as: Option<RunAs>,
    /// Dirs handed to `run_as` first: owned, and shared through its group.
    own: Vec<PathBuf>,
    share: Vec<PathBuf>,
    /// Dirs whose total size is watched.
    watch: Vec<PathBuf>,
    disk_bytes: u64,
    command: Vec<OsString>,
}

/// `glitchlab sandbox-exec [--cgroup DIR] [--rlimit NAME=N]... [--user UID:GID [--own DIR]...
/// [--share DIR]...]
/// [--watch DIR... --disk-bytes N] [--no-landlock | --write DIR...] -- PROGRAM ARGS...`: hand
/// the dirs over, join the cgroup, set the limits, confine, then exec — or, to drop to a uid or
/// watch the disk, start the command and stay until it ends. Never returns; on failure it
/// exits 126 with the reason on stderr.
pub fn exec_main(args: Vec<OsString>) -> ! {
    use std::os::unix::process::CommandExt;
    if args.first().is_some_and(|arg| arg == warm::IDLE_FLAG) {
        warm::idle();
    }
    let mut parsed = match parse(args) {
        Ok(parsed) => parsed,
        Err(reason) => fail(&reason),
    };
    if let Err(reason) = apply(&parsed) {
        fail(&reason);
    }
    if parsed.run_as.is_some() || !parsed.watch.is_empty() {
        let supervised = supervise::Supervised {
            command: std::mem::take(&mut parsed.command),
            run_as: parsed.run_as,
            watch: std::mem::take(&mut parsed.watch),
            disk_bytes: parsed.disk_bytes,
        };
        match supervise::run(supervised) {
            Ok(code) => std::process::exit(code),
            Err(reason) => fail(&reason),
        }
    }
    let Some((program, rest)) = parsed.command.split_first() else {
        fail("no command after --");
    };
    let error = std::process::Command::new(program).args(rest).exec();
    fail(&format!(
        "could not start {}: {error}",
        program.to_string_lossy()
    ))
}

/// Everything `sandbox-exec` does to itself before it starts the command.
fn apply(parsed: &ExecArgs) -> Result<(), String> {
    if let Some(run_as) = parsed.run_as {
        let handed = |dirs: &[PathBuf], share| {
            owner::hand_over(dirs, share, run_as).map_err(|error| {
                format!("cannot hand the run's dirs to uid {}: {error}", run_as.uid)
            })
        };
        // Shared first: an owned dir inside a shared one ends the run's own.
        handed(&parsed.share, Share::Group)?;
        handed(&parsed.own, Share::Own)?;
    }
    for dir in &parsed.cgroups {
        std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string())
            .map_err(|error| format!("cannot join the cgroup {}: {error}", dir.display()))?;
    }
    for (name, value) in &parsed.rlimits {
        set_rlimit(name, *value)?;
    }
    if parsed.landlock {
        match ruleset(&parsed.writable)? {
            RulesetStatus::NotEnforced => {
                return Err("the kernel does not enforce Landlock".into());
            }
            RulesetStatus::FullyEnforced | RulesetStatus::PartiallyEnforced => {}
        }
    }
    Ok(())
}

/// Lowers one limit (soft and hard) to `value`, never above the current hard limit. CPU time
/// keeps a few seconds of hard limit above the soft one, so SIGXCPU comes first and says why.
fn set_rlimit(name: &str, value: u64) -> Result<(), String> {
    let resource = match name {
        "nproc" => libc::RLIMIT_NPROC,
        "as" => libc::RLIMIT_AS,
        "cpu" => libc::RLIMIT_CPU,
        "fsize" => libc::RLIMIT_FSIZE,
        "nofile" => libc::RLIMIT_NOFILE,
        _ => return Err(format!("unknown limit `{name}`")),
    };
    let mut current = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(resource, &mut current) } != 0 {
        return Err(format!(
            "getrlimit {name}: {}",
            std::io::Error::last_os_error()
        ));
    }
    let soft = value.min(current.rlim_max);
    let hard = if name == "cpu" {
        value.saturating_add(5).min(current.rlim_max)
    } else {
        soft
    };
    let wanted = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads the struct we own.
    if unsafe { libc::setrlimit(resource, &wanted) } != 0 {
        return Err(format!(
            "setrlimit {name}={value}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn parse(args: Vec<OsString>) -> Result<ExecArgs, String> {
    let mut parsed = ExecArgs {
        landlock: true,
        ..ExecArgs::default()
    };
    let mut iter = args.into_iter();
    while let Some(arg) = iter.next() {
        let Some(flag) = arg.to_str() else {
            return Err(format!("unexpected argument {}", arg.to_string_lossy()));
        };
        if flag == "--" {
            parsed.command = iter.collect();
            if parsed.run_as.is_none() && !(parsed.own.is_empty() && parsed.share.is_empty()) {
                return Err("--own and --share need --user".into());
            }
            // Landlock forbids the mounts that stage the binds; the inner one confines.
            if parsed.run_as.is_some() && parsed.landlock {
                return Err("--user needs --no-landlock".into());
            }
            return Ok(parsed);
        }
        if flag == "--no-landlock" {
            parsed.landlock = false;
            continue;
        }
        let value = iter.next().ok_or_else(|| format!("{flag} needs a value"))?;
        parse_valued(&mut parsed, flag, value)?;
    }
    Err("missing -- before the command".into())
}

/// One option that takes a value.
fn parse_valued(parsed: &mut ExecArgs, flag: &str, path: OsString) -> Result<(), String> {
    let value = path.to_string_lossy().into_owned();
    let value = value.as_str();
    match flag {
        "--write" => parsed.writable.push(PathBuf::from(path)),
        "--cgroup" => parsed.cgroups.push(PathBuf::from(path)),
        "--own" => parsed.own.push(PathBuf::from(path)),
        "--share" => parsed.share.push(PathBuf::from(path)),
        "--watch" => parsed.watch.push(PathBuf::from(path)),
        "--user" => parsed.run_as = Some(RunAs::parse(value)?),
        "--disk-bytes" => {
            parsed.disk_bytes = value
                .parse::<u64>()
                .map_err(|e| format!("--disk-bytes {value}: {e}"))?;
        }
        "--rlimit" => {
            let (name, number) = value
                .split_once('=')
                .ok_or_else(|| format!("--rlimit {value}: expected NAME=N"))?;
            let number = number
                .parse::<u64>()
                .map_err(|e| format!("--rlimit {value}: {e}"))?;
            parsed.rlimits.push((name.to_owned(), number));
        }
        _ => return Err(format!("unexpected argument {flag}")),
    }
    Ok(())
}

fn fail(reason: &str) -> ! {
    eprintln!("glitchlab sandbox: {reason}");
    std::process::exit(SANDBOX_FAILURE_EXIT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox_with(bwrap: Option<&str>) -> Sandbox {
        Sandbox {
            exe: PathBuf::from("/usr/bin/glitchlab"),
            bwrap: bwrap.map(PathBuf::from),
            landlock: false,
            cgroups: Vec::new(),
            limits: LimitsConfig::default(),
            uids: None,
            warmer: None,
        }
    }

    #[test]
    fn contain_puts_the_command_in_a_pid_namespace_that_dies_with_it() {
        let mut spec = CommandSpec::shell(
            "make build",
            PathBuf::from("/srv/release"),
            Duration::from_secs(5),
            64,
        );
        let confined = sandbox_with(Some("/usr/bin/bwrap")).contain(&mut spec);
        assert!(confined.is_some_and(|c| c.bwrap && c.cgroups.is_empty()));
        assert_eq!(spec.program, "/usr/bin/bwrap");
        let args = spec.args.join(" ");
        assert_eq!(
            args,
            "--unshare-pid --die-with-parent --dev-bind / / --proc /proc --chdir /srv/release \
             -- sh -c make build"
        );
        // Without bubblewrap the spec stays as it was: its process group holds it.
        let mut plain = CommandSpec::shell("true", PathBuf::from("/"), Duration::from_secs(5), 64);
        assert!(sandbox_with(None).contain(&mut plain).is_none());
        assert_eq!((plain.program.as_str(), plain.args.len()), ("sh", 2));
    }

    #[test]
    fn a_root_run_drops_to_its_uid_hands_its_dirs_over_and_is_watched() {
        let mut sandbox = sandbox_with(Some("/usr/bin/bwrap"));
        sandbox.landlock = true;
        sandbox.uids = Some(UidPool::new(1_900_000_000, 16));
        let jail = Jail {
            cwd: PathBuf::from("/data/worktrees/t"),
            writable: vec![
                PathBuf::from("/data/worktrees/t"),
                PathBuf::from("/data/tmp/t"),
                PathBuf::from("/dev"),
                PathBuf::from("/repo/.git/objects"),
                PathBuf::from("/data/worktrees/t/sub"),
            ],
            readable: Vec::new(),
            network: false,
            disk: vec![
                PathBuf::from("/data/worktrees/t"),
                PathBuf::from("/data/tmp/t"),
            ],
        };
        let mut spec =
            CommandSpec::shell("make test", jail.cwd.clone(), Duration::from_secs(5), 64);
        let confined = sandbox.wrap(&jail, &mut spec);
        let uid = confined._uid.as_ref().map(|lease| lease.run_as).unwrap();
        assert!((1_900_000_000..1_900_000_016).contains(&uid.uid));
        assert_eq!(uid.gid, 1_900_000_000);
        let args = spec.args.join(" ");
        let outer = args.split(" -- ").next().unwrap();
        assert!(
            outer.contains(&format!("--user {}:1900000000", uid.uid)),
            "{outer}"
        );
        assert!(
            outer.contains("--own /data/worktrees/t --own /data/tmp/t --share /repo/.git/objects"),
            "the run's own dirs owned, the others shared, /dev and dirs inside owned ones not: {outer}"
        );
        assert!(
            !outer.contains("/dev") && !outer.contains("/sub"),
            "{outer}"
        );
        assert!(
            outer.contains("--watch /data/worktrees/t --watch /data/tmp/t --disk-bytes 4294967296"),
            "{outer}"
        );
        assert!(args.contains("--size 536870912 --tmpfs /tmp"), "{args}");
        // The same worktree's next run, once this one is settled, gets the same uid.
        drop(confined);
        let mut again = CommandSpec::shell("true", jail.cwd.clone(), Duration::from_secs(5), 64);
        let next = sandbox.wrap(&jail, &mut again);
        assert_eq!(next._uid.as_ref().map(|lease| lease.run_as), Some(uid));
        // The parsed outer command line gives back what was asked.
        let outer_args: Vec<OsString> = again.args[1..].iter().map(OsString::from).collect();
        let parsed = parse(outer_args).unwrap();
        assert_eq!(parsed.run_as, Some(uid));
        assert_eq!(parsed.own.len(), 2);
        assert_eq!(parsed.share, vec![PathBuf::from("/repo/.git/objects")]);
        assert_eq!(parsed.disk_bytes, 4_294_967_296);
        assert!(
            !parsed.landlock,
            "the outer one leaves Landlock to the inner one"
        );
        assert_eq!(parsed.command[0], OsString::from("/usr/bin/bwrap"));
        assert!(parse(["--own", "/x", "--", "true"].map(OsString::from).to_vec()).is_err());
        assert!(parse(["--user", "0:0", "--", "true"].map(OsString::from).to_vec()).is_err());
        assert!(parse(["--user", "5:5", "--", "true"].map(OsString::from).to_vec()).is_err());
    }

    #[test]
    fn a_plain_line_runs_without_its_shell_and_anything_shell_keeps_it() {
        let words = |line: &str| {
            plain_argv(&CommandSpec::shell(
                line,
                PathBuf::from("/"),
                Duration::from_secs(5),
                64,
            ))
        };
        if find_program("true").is_some_and(|p| SYSTEM_DIRS.iter().any(|d| p.starts_with(d))) {
            assert_eq!(
                words("true --x=1 a/b.txt"),
                Some(vec![
                    "true".to_owned(),
                    "--x=1".to_owned(),
                    "a/b.txt".to_owned()
                ])
            );
        }
        for shell in [
            "true; rm -rf x",
            "true && false",
            "true > out",
            "true $HOME",
            "true *.rs",
            "true 'a b'",
            "true  two-spaces",
            "true\ttab",
            "A=1 true",
            "./test.sh",
            "echo hi",
            "cd sub",
            "no-such-program-anywhere x",
            "",
        ] {
            assert_eq!(words(shell), None, "{shell:?}");
        }
        let mut not_shell =
            CommandSpec::shell("true", PathBuf::from("/"), Duration::from_secs(5), 64);
        not_shell.program = "bash".into();
        assert_eq!(plain_argv(&not_shell), None);
    }

    #[test]
    fn a_launch_execs_bwrap_then_the_landlock_shim_and_stages_the_binds_of_a_root_run() {
        let mut sandbox = sandbox_with(Some("/usr/bin/bwrap"));
        sandbox.landlock = true;
        sandbox.uids = Some(UidPool::new(1_900_000_000, 16));
        let root = tempfile::tempdir().unwrap();
        let work = root.path().join("worktrees/t");
        std::fs::create_dir_all(&work).unwrap();
        let shown = work.display().to_string();
        let jail = Jail {
            cwd: work.clone(),
            writable: vec![work.clone(), PathBuf::from("/dev")],
            readable: Vec::new(),
            network: false,
            disk: vec![work.clone()],
        };
        let line = "make test; true";
        let mut spec = CommandSpec::shell(line, work.clone(), Duration::from_secs(5), 64);
        let confined = sandbox.launch(&jail, &mut spec);
        assert_eq!(spec.program, "/usr/bin/bwrap", "no launcher before bwrap");
        let args = spec.args.join(" ");
        let (options, inner) = args.split_once(" -- ").unwrap();
        assert_eq!(
            inner,
            format!("/usr/bin/glitchlab sandbox-exec --write {shown} --write /dev -- sh -c {line}")
        );
        assert!(
            options.contains("--size 536870912 --tmpfs /tmp"),
            "{options}"
        );
        assert!(
            !options.contains(&format!("--bind {shown}"))
                && options.contains(&format!(" {shown} ")),
            "the worktree's bind is staged (its source under /tmp/N): {options}"
        );
        let launch = confined.launch.as_ref().unwrap();
        assert!(confined.hook().is_some());
        let uid = confined._uid.as_ref().map(|lease| lease.run_as);
        assert!(uid.is_some());
        assert_eq!(launch.plan.run_as, uid);
        assert_eq!(launch.plan.own, vec![work.clone()]);
        assert_eq!(launch.plan.watch, jail.disk);
        assert_eq!(launch.plan.disk_bytes, 4_294_967_296);
        assert!(
            launch.plan.rlimits.contains(&("nproc", 1024)),
            "{:?}",
            launch.plan.rlimits
        );
        let sources = launch.plan.sources.as_ref().unwrap();
        assert!(sources.contains(&work), "{sources:?}");
        // Without bubblewrap nor Landlock the command itself is what the service execs.
        let mut plain = CommandSpec::shell(line, work.clone(), Duration::from_secs(5), 64);
        let bare = sandbox_with(None).launch(&jail, &mut plain);
        assert_eq!((plain.program.as_str(), plain.args.len()), ("sh", 2));
        assert!(bare
            .launch
            .as_ref()
            .is_some_and(|l| l.plan.run_as.is_none()));
    }

    #[test]
    fn without_a_uid_drop_or_a_pids_cgroup_a_root_service_enforces_no_process_limit() {
        let plain = sandbox_with(Some("/usr/bin/bwrap"));
        let processes = |sandbox: &Sandbox, root| sandbox.enforcement(root)[0].1.clone();
        assert_eq!(processes(&plain, true), None);
        assert_eq!(
            processes(&plain, false).as_deref(),
            Some("RLIMIT_NPROC of the service's uid")
        );
        let mut dropping = plain.clone();
        dropping.uids = Some(UidPool::new(1_900_000_000, 4));
        assert_eq!(
            processes(&dropping, true).as_deref(),
            Some("uid drop (RLIMIT_NPROC)")
        );
        let enforcement = dropping.enforcement(true);
        assert!(enforcement
            .iter()
            .all(|(limit, by)| by.is_some() || *limit == "processes"));
        assert_eq!(
            enforcement[2],
            ("disk", Some("watcher, disk_bytes 4294967296".to_owned()))
        );
        // Required refuses to start where nothing bounds a root service's processes.
        if is_root() {
            assert!(plain.log_enforcement(SandboxMode::Required).is_err());
            assert!(dropping.log_enforcement(SandboxMode::Required).is_ok());
        }
    }

    #[test]
    fn limits_are_named_from_their_marks() {
        assert_eq!(
            limit_hit(Some(Limit::Processes), None, ""),
            Some(Limit::Processes)
        );
        assert_eq!(limit_hit(None, Some(libc::SIGXCPU), ""), Some(Limit::Cpu));
        assert_eq!(
            limit_hit(None, None, "sh: 1: Cannot fork\n"),
            Some(Limit::Processes)
        );
        assert_eq!(
            limit_hit(None, None, "tail: memory exhausted"),
            Some(Limit::Memory)
        );
        assert_eq!(limit_hit(None, Some(9), "test failed"), None);
        let watcher = format!(
            "glitchlab sandbox: {} (70000000 bytes ...)",
            supervise::DISK_MARK
        );
        assert_eq!(limit_hit(None, Some(9), &watcher), Some(Limit::Disk));
        assert_eq!(
            sandbox_with(None).describe(Limit::Disk),
            "disk limit (disk_bytes 4294967296)"
        );
    }

    #[test]
    fn events_count_refused_forks_and_oom_kills() {
        assert!(counted("max 3\n", "max"));
        assert!(!counted("max 0\n", "max"));
        assert!(counted(
            "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
            "oom_kill"
        ));
        assert!(!counted(
            "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
            "oom_kill"
        ));
    }

    #[test]
    fn binds_put_parents_first_and_writable_wins() {
        let root = tempfile::tempdir().unwrap();
        let repo_git = root.path().join("repo/.git");
        let gitdir = repo_git.join("worktrees/t");
        std::fs::create_dir_all(&gitdir).unwrap();
        let jail = Jail {
            cwd: root.path().to_path_buf(),
            writable: vec![gitdir.clone(), repo_git.clone()],
            readable: vec![repo_git.clone(), root.path().join("missing")],
            network: false,
            disk: Vec::new(),
        };
        let binds = binds(&jail, Path::new("/nonexistent/glitchlab"));
        assert_eq!(binds[0], (root.path().to_path_buf(), false));
        assert_eq!(binds[1], (repo_git, true));
        assert_eq!(binds[2], (gitdir, true));
        assert_eq!(binds.len(), 3);
    }

    #[test]
    fn cgroup_candidates_find_v1_pids_and_v2() {
        let own = "8:pids:/a\n0::/b\n";
        let mounts = "30 25 0:26 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids\n\
                      31 25 0:27 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        let found = cgroup_candidates(own, mounts, "pids");
        assert_eq!(
            found,
            vec![
                (PathBuf::from("/sys/fs/cgroup/pids"), "/a".to_owned(), false),
                (
                    PathBuf::from("/sys/fs/cgroup/unified"),
                    "/b".to_owned(),
                    true
                ),
            ]
        );
        assert_eq!(cgroup_candidates(own, mounts, "memory").len(), 1);
    }
}
