//! Service configuration: built-in defaults, optionally overridden by a TOML file, then by flags.
//!
//! Every key is optional; unknown keys and bad values stop start-up with the file, the key and the
//! reason (toml's error names the line and the key path).

pub mod definitions;
pub mod embedding;
pub mod github;
pub mod notifications;
pub mod transport;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::model::task::Stage;

/// The file read when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG_PATH: &str = "config/glitchlab.toml";

/// Configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid configuration.
    #[error("invalid config file {path}: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// The key, line and reason as toml reports them.
        reason: String,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// HTTP ingress.
    pub server: ServerConfig,
    /// Where durable state lives.
    pub storage: StorageConfig,
    /// Where persona definitions, runbooks and ops targets are read from.
    pub paths: PathsConfig,
    /// Compass's scheduling.
    pub compass: CompassConfig,
    /// The restart policy every supervisor applies to its children.
    pub supervision: SupervisionConfig,
    /// Engine and verify runs.
    pub engines: EnginesConfig,
    /// Retries of stages after transient failures.
    pub retry: RetryConfig,
    /// Git calls.
    pub git: GitConfig,
    /// How landed work is written onto a base branch.
    pub delivery: DeliveryConfig,
    /// The merge queue of each repository and base branch.
    pub merge_queue: MergeQueueConfig,
    /// Factories on other machines (NATS JetStream); none: everything runs in-process.
    pub fleet: FleetConfig,
    /// Task defaults and limits.
    pub tasks: TasksConfig,
    /// The token ledger: the local account, the rate card, task budgets.
    pub ledger: crate::model::ledger::LedgerConfig,
    /// What personas may touch and see.
    pub governance: GovernanceConfig,
    /// OpenAI-compatible model providers, by name (`openai` engines name one).
    pub providers: std::collections::BTreeMap<String, ProviderConfig>,
    /// Where notifications of incidents, failed deploys and dead letters are sent.
    pub notifications: notifications::NotificationsConfig,
    /// GitHub, for `delivery: pull_request` (docs/github.md).
    pub github: github::GithubConfig,
    /// Set by a process that embeds the service (tests), never by the file.
    #[serde(skip)]
    pub embedding: embedding::Embedding,
}

/// One OpenAI-compatible chat-completions endpoint. The key is read from `api_key_env` at call
/// time and never stored, logged or put in a prompt.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// E.g. `https://api.openai.com/v1`; `/chat/completions` is appended.
    pub base_url: String,
    /// The model asked for.
    pub model: String,
    /// The environment variable holding the API key (none: no `Authorization` header).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// One request's timeout.
    #[serde(default = "provider_timeout_secs")]
    pub timeout_secs: u64,
    /// Retries after 429, 5xx and connection errors (with backoff, honouring `Retry-After`).
    #[serde(default = "provider_retries_max")]
    pub retries_max: u32,
}

fn provider_timeout_secs() -> u64 {
    120
}

fn provider_retries_max() -> u32 {
    3
}

/// Governance: protected paths and secrets.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GovernanceConfig {
    /// Globs (relative to the repository) a task's diff may not touch; `PROTECTED_PATH` if it does.
    pub protected_paths: Vec<String>,
    /// Environment variable names whose values are secrets: redacted from everything persisted
    /// and passed only to the personas whose `env` lists them.
    pub secrets: Vec<String>,
    /// Sandbox of engine, verify and confined ops processes (bubblewrap namespaces around
    /// Landlock): `off`, `auto`, `required`.
    pub sandbox: SandboxMode,
    /// Directories confined processes may write besides their worktree and private temp dir.
    pub sandbox_writable: Vec<PathBuf>,
    /// Per-repository additions, keyed by the repository's absolute path.
    pub repos: std::collections::BTreeMap<String, RepoGovernance>,
}

/// Governance that applies to one repository only.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RepoGovernance {
    /// Globs protected in this repository on top of `governance.protected_paths`.
    pub protected_paths: Vec<String>,
}

impl GovernanceConfig {
    /// Names each `[governance.repos]` entry by its repository's real path (symlinks, `..` and a
    /// trailing `/` resolved), as tasks store theirs: the entry applies however the file spelled
    /// the path. A path that does not resolve (not there yet) is kept as written. Called at
    /// start, like the data dir's resolution.
    pub fn resolve_repo_paths(&mut self) {
        let repos = std::mem::take(&mut self.repos);
        for (path, rules) in repos {
            let real = std::fs::canonicalize(&path)
                .ok()
                .and_then(|real| real.into_os_string().into_string().ok())
                .unwrap_or(path);
            self.repos
                .entry(real)
                .or_default()
                .protected_paths
                .extend(rules.protected_paths);
        }
    }

    /// Every protected-path glob that applies to `repo`.
    pub fn protected_paths_for(&self, repo: &str) -> Vec<String> {
        let extra = self
            .repos
            .get(repo)
            .map(|r| r.protected_paths.as_slice())
            .unwrap_or(&[]);
        self.protected_paths.iter().chain(extra).cloned().collect()
    }
}

impl Default for GovernanceConfig {
    fn default() -> Self {
        Self {
            protected_paths: [".git/**", ".github/**", "ops.yaml", "runbooks/**"]
                .map(str::to_owned)
                .to_vec(),
            secrets: Vec::new(),
            sandbox: SandboxMode::Auto,
            sandbox_writable: Vec::new(),
            repos: std::collections::BTreeMap::new(),
        }
    }
}

/// HTTP ingress settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on; port 0 picks a free one.
    pub bind: SocketAddr,
    /// Request bodies above this are refused with 413.
    pub body_bytes_max: usize,
    /// On shutdown, how long open requests may take before the server stops anyway.
    pub shutdown_timeout_secs: u64,
    /// `on` (every route but `/healthz` and `/readyz` needs a bearer token) or `off` (loopback
    /// only, for local experiments; logged as a warning).
    pub auth: AuthMode,
    /// Whether `GET /metrics` answers without a token (a scraper on a private network).
    pub metrics_public: bool,
    /// Requests per second one token may make on average ...
    pub requests_per_sec: u32,
    /// ... and in a burst; past them `429 RATE_LIMITED` with `Retry-After`.
    pub burst: u32,
    /// Globs of the repositories tasks may name at all (default: any); a token's own `repos`
    /// narrow this further, never widen it.
    pub repos: Vec<String>,
    /// PEM certificate chain: with `tls_key`, the service speaks HTTPS only (both or neither).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Lets a non-loopback `bind` serve plain HTTP (behind a TLS-terminating proxy); without it
    /// `serve` refuses, so tokens never cross a network in clear by accident.
    pub allow_plain_http: bool,
    /// Seconds a client has to send a request's whole head once its first byte arrived (and to
    /// finish the TLS handshake): a slowloris connection is closed past it.
    pub header_read_timeout_secs: u64,
    /// Seconds a request's whole body may take to arrive after its head; past it the request is
    /// answered `408 BODY_TIMEOUT` and the connection closed.
    pub body_read_timeout_secs: u64,
    /// Seconds a connection may sit with no request in flight and nothing received before it is
    /// closed (an open event stream is a request in flight: never cut), and that a client may
    /// leave its answer unread (a write blocked) before it is closed.
    pub idle_timeout_secs: u64,
    /// Connections served at once; past it new connections wait in the listen backlog until
    /// one closes (the timeouts above bound how long one can be held without work).
    pub max_connections: usize,
    /// Connections one client address may hold open at once; past it its new connections are
    /// closed at once (`glitchlab_http_connections_closed_total{reason="per_ip_limit"}`).
    pub max_connections_per_ip: usize,
    /// Connection slots kept for connections that authenticate (at most an eighth of
    /// `max_connections`): once fewer are free, each new connection closes the oldest one that
    /// has not authenticated and has nothing in flight, and a new connection must start its
    /// first request within `header_read_timeout_secs`.
    pub reserved_connections: usize,
    /// Wrong secrets (bearer, session cookie or web login) one client address may send in
    /// `auth_failure_window_secs`; past it `429 RATE_LIMITED` with `Retry-After`, secrets not
    /// even checked. `0` turns the throttle off.
    pub auth_failures_max: u32,
    /// The window of `auth_failures_max`, in seconds.
    pub auth_failure_window_secs: u64,
    /// Event streams open at once (`503 TOO_MANY_STREAMS` past it).
    pub streams_max: usize,
    /// Event streams one token may hold open at once.
    pub streams_per_token_max: usize,
    /// Event streams all the tokens of one role may hold open at once.
    pub streams_per_role_max: usize,
    /// The last event-stream slots, kept for operator and admin tokens: viewers, submitters and
    /// approvers together hold at most `streams_max - streams_reserved`.
    pub streams_reserved: usize,
    /// Origins (`scheme://host[:port]`) besides the service's own whose browser requests are
    /// served; any other `Origin` is refused `403 FORBIDDEN_ORIGIN`.
    pub allowed_origins: Vec<String>,
    /// Host names (no port) clients may reach the service by besides its address (and
    /// `localhost` on a loopback bind); any other `Host` is refused `421 MISDIRECTED_REQUEST`,
    /// which stops DNS rebinding.
    pub hostnames: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 7700)),
            body_bytes_max: 1024 * 1024,
            shutdown_timeout_secs: 10,
            auth: AuthMode::On,
            metrics_public: false,
            requests_per_sec: 1000,
            burst: 5000,
            repos: Vec::new(),
            tls_cert: None,
            tls_key: None,
            allow_plain_http: false,
            header_read_timeout_secs: 10,
            body_read_timeout_secs: 30,
            idle_timeout_secs: 60,
            max_connections: transport::MAX_CONNECTIONS,
            max_connections_per_ip: transport::MAX_CONNECTIONS_PER_IP,
            reserved_connections: transport::RESERVED_CONNECTIONS,
            auth_failures_max: transport::AUTH_FAILURES_MAX,
            auth_failure_window_secs: transport::AUTH_FAILURE_WINDOW_SECS,
            streams_max: transport::STREAMS_MAX,
            streams_per_token_max: transport::STREAMS_PER_TOKEN_MAX,
            streams_per_role_max: transport::STREAMS_PER_ROLE_MAX,
            streams_reserved: transport::STREAMS_RESERVED,
            allowed_origins: Vec::new(),
            hostnames: Vec::new(),
        }
    }
}

/// Whether the ingress asks for tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// Every route but `/healthz` and `/readyz` needs `Authorization: Bearer <secret>`.
    #[default]
    On,
    /// Nobody is asked (loopback binds only).
    Off,
}

/// Storage settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Holds the sled database, worktrees and prompt files.
    pub data_dir: PathBuf,
    /// Seconds the store writer may spend on one group commit before the watchdog calls it
    /// stalled (logged, `/readyz` 503 naming `storage`, `glitchlab_store_writer_stalled` 1).
    pub stall_secs: u64,
    /// Write jobs that may wait for the store writer; past it a write waits 1 s for room, then
    /// answers `503 STORE_BUSY`.
    pub write_queue_max: usize,
    /// Bytes of the data dir's disk kept back as a ballast file (`storage.reserve`): released
    /// when the disk fills, so the store can still reopen and commit task finishes and ledger
    /// settlements while new tasks answer `507 STORAGE_FULL`; written back once there is room
    /// for it twice. 0 keeps no reserve.
    pub reserve_bytes: u64,
}

/// Default `[storage] reserve_bytes`: 8 MiB, many times what sled needs to reopen (a snapshot)
/// and commit the records of the tasks in flight.
pub const RESERVE_BYTES_DEFAULT: u64 = 8 * 1024 * 1024;

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("glitchlab-data"),
            stall_secs: 10,
            write_queue_max: WRITE_QUEUE_MAX,
            reserve_bytes: RESERVE_BYTES_DEFAULT,
        }
    }
}

/// Data folders of the project layout.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PathsConfig {
    /// Persona definitions (`<name>.md`); built-in copies are used for any missing file.
    pub actors_dir: PathBuf,
    /// Incident runbooks (`*.yaml`).
    pub runbooks_dir: PathBuf,
    /// Ops targets and schedules.
    pub ops_file: PathBuf,
}

impl Default for PathsConfig {
    fn default() -> Self {
        Self {
            actors_dir: PathBuf::from("actors"),
            runbooks_dir: PathBuf::from("runbooks"),
            ops_file: PathBuf::from("ops.yaml"),
        }
    }
}

/// Compass's scheduling settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompassConfig {
    /// Pipelines running at once; the rest wait as `queued`.
    pub max_concurrent_tasks: usize,
    /// Tasks that may wait in merge queues without holding a slot; past it a waiting task holds
    /// its slot again. Bounds the pipelines alive at once (to `max_concurrent_tasks` plus this),
    /// e.g. after a restart with hundreds of tasks at `deliver`.
    pub max_parked_tasks: usize,
    /// Tasks allowed to wait in the queue; past it, submissions get 429 `QUEUE_FULL`.
    pub max_queued_tasks: usize,
    /// A running task with no event for this long is reported as stalled.
    pub stall_after_secs: u64,
    /// Pipeline templates: which stages each task kind runs, in order.
    pub templates: std::collections::BTreeMap<String, Vec<Stage>>,
    /// How long a `deploy` stage waits for its deploy to end (an approval gate included) before
    /// the task fails `DEPLOY_FAILED`; the deploy itself goes on.
    pub deploy_wait_secs: u64,
    /// A task whose own engine or verify run was in flight at this many consecutive unclean
    /// stops (`kill -9`, a crash) is not resumed but dead-lettered `POISONED`, so it cannot take the service down
    /// for ever; 0 resumes it whatever happened.
    pub poison_after: u32,
}

impl Default for CompassConfig {
    fn default() -> Self {
        let full = vec![Stage::Plan, Stage::Implement, Stage::Verify, Stage::Deliver];
        let mut templates: std::collections::BTreeMap<String, Vec<Stage>> =
            ["feature", "bugfix", "refactor", "chore"]
                .into_iter()
                .map(|kind| (kind.to_owned(), full.clone()))
                .collect();
        templates.insert("docs".to_owned(), vec![Stage::Implement, Stage::Deliver]);
        let mut deployed = full;
        deployed.push(Stage::Deploy);
        templates.insert("infra".to_owned(), deployed);
        Self {
            max_concurrent_tasks: 4,
            max_parked_tasks: 16,
            max_queued_tasks: 10_000,
            stall_after_secs: 900,
            templates,
            deploy_wait_secs: 3600,
            poison_after: 2,
        }
    }
}

/// OTP-style restart intensity: at most `max_restarts` in `window_secs`, with exponential backoff.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SupervisionConfig {
    /// Restarts allowed within the window before the child is marked `failed`.
    pub max_restarts: u32,
    /// The sliding window, in seconds.
    pub window_secs: u64,
    /// First restart delay; doubles with each restart in the window.
    pub backoff_base_ms: u64,
    /// Cap on the restart delay.
    pub backoff_max_ms: u64,
    /// A `failed` persona is tried again, with a fresh restart budget, this long after it failed;
    /// 0 leaves it down until the service restarts.
    pub revive_after_secs: u64,
}

impl Default for SupervisionConfig {
    fn default() -> Self {
        Self {
            max_restarts: 5,
            window_secs: 60,
            backoff_base_ms: 100,
            backoff_max_ms: 5_000,
            revive_after_secs: 300,
        }
    }
}

impl SupervisionConfig {
    /// The window as a duration.
    pub fn window(&self) -> Duration {
        Duration::from_secs(self.window_secs)
    }
}

/// Retries of a stage after transient failures (engine timeout or kill, git lock, persona timeout):
/// exponential backoff with jitter, at most `max` per stage; then the task is dead-lettered.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Retries per stage.
    pub max: u32,
    /// First delay; doubles with each retry.
    pub base_backoff_ms: u64,
    /// Cap on the delay.
    pub max_backoff_ms: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max: 3,
            base_backoff_ms: 500,
            max_backoff_ms: 30_000,
        }
    }
}

impl RetryConfig {
    /// The delay before retry number `retry` (1-based): exponential, capped, with jitter in
    /// `[delay/2, delay]` so retries of many tasks do not stampede together.
    pub fn delay(&self, retry: u32) -> Duration {
        use std::hash::{BuildHasher, Hasher};
        let exponent = retry.saturating_sub(1).min(20);
        let ceiling = self
            .base_backoff_ms
            .saturating_mul(1u64 << exponent)
            .min(self.max_backoff_ms);
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let half = ceiling / 2;
        Duration::from_millis(half + random % (ceiling - half + 1))
    }
}

/// Engine and verify run limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EnginesConfig {
    /// A `shell` engine run is killed (with its process group) after this long.
    pub timeout_secs: u64,
    /// A verify command is killed after this long.
    pub verify_timeout_secs: u64,
    /// Bytes of stdout and of stderr kept per run.
    pub output_bytes_max: usize,
    /// Bytes of the last verify failure handed to the next attempt.
    pub feedback_bytes_max: usize,
    /// Resource limits of every sandboxed process tree (engines, verify and confined ops
    /// commands): high enough that a normal test suite never meets them, low enough that a
    /// runaway always does.
    pub limits: LimitsConfig,
}

/// Per-run resource limits, set as rlimits (and `pids` and `memory` cgroups where they are
/// writable) by `sandbox-exec` before it starts the command. A hit fails the run with `RESOURCE_LIMIT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Processes (and threads) of the run at once (`RLIMIT_NPROC`, and `pids.max` of its cgroup:
    /// root ignores `RLIMIT_NPROC`).
    pub processes: u64,
    /// Memory of the run, in bytes: its `memory` cgroup's limit where one is writable (the run
    /// is OOM-killed past it), else the address space of each process (`RLIMIT_AS`).
    pub memory_bytes: u64,
    /// CPU seconds of each process (`RLIMIT_CPU`; SIGXCPU past it).
    pub cpu_secs: u64,
    /// Largest file a process may write, in bytes (`RLIMIT_FSIZE`; SIGXFSZ past it).
    pub file_bytes: u64,
    /// Open files of each process (`RLIMIT_NOFILE`).
    pub open_files: u64,
    /// Bytes the run's own dirs (its worktree and temp dir) may hold in all, measured while it
    /// runs and after: past it the run is killed (`RLIMIT_FSIZE` caps single files only).
    pub disk_bytes: u64,
    /// Size of the run's private `/tmp` (a tmpfs, so memory): a full one answers ENOSPC.
    pub tmp_bytes: u64,
    /// First host uid of the range runs get when the service is root: each run drops to a uid
    /// of its own (stable per worktree), so `RLIMIT_NPROC` binds and concurrent runs do not
    /// share one count. Its gid is this value, the group every run shares.
    pub sandbox_uid_base: u32,
    /// Uids in the range; 0 keeps runs as root (then only a `pids` cgroup bounds processes).
    pub sandbox_uid_count: u32,
    /// Seconds the kernel's cgroup lock is kept ready after a task starts or a run launches
    /// (`platform::sandbox::warm`): each launch then joins its cgroups at once instead of after
    /// an RCU grace period (10–15 ms). Costs about 2 % of one core while kept; 0 turns it off.
    pub warm_cgroup_lock_secs: u64,
}

impl LimitsConfig {
    /// Whether the sandbox uid range is usable: above the system and login uids, below
    /// `(uid_t)-1`, and without `nobody` (65534), whose processes are not the run's own.
    fn sandbox_uids_valid(&self) -> bool {
        if self.sandbox_uid_count == 0 {
            return true;
        }
        let first = u64::from(self.sandbox_uid_base);
        let end = first + u64::from(self.sandbox_uid_count);
        first >= 1000 && end <= u64::from(u32::MAX) && !(first..end).contains(&65534)
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            processes: 1024,
            memory_bytes: 2 * 1024 * 1024 * 1024,
            cpu_secs: 3600,
            file_bytes: 1024 * 1024 * 1024,
            open_files: 4096,
            disk_bytes: 4 * 1024 * 1024 * 1024,
            tmp_bytes: 512 * 1024 * 1024,
            sandbox_uid_base: 1_900_000_000,
            sandbox_uid_count: 10_000,
            warm_cgroup_lock_secs: 10,
        }
    }
}

impl Default for EnginesConfig {
    fn default() -> Self {
        Self {
            timeout_secs: 600,
            verify_timeout_secs: 600,
            output_bytes_max: 64 * 1024,
            feedback_bytes_max: 16 * 1024,
            limits: LimitsConfig::default(),
        }
    }
}

/// Git call limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GitConfig {
    /// Any git call is killed after this long.
    pub timeout_secs: u64,
    /// Days the branch of a failed, cancelled or dead-lettered task is kept (it can be retried
    /// meanwhile); past that, the sweep at start deletes it.
    pub keep_failed_branches_days: u64,
    /// Seconds between two clean-up sweeps of finished tasks while the service runs (one also
    /// runs at start); 0: at start only.
    pub sweep_interval_secs: u64,
}

impl Default for GitConfig {
    fn default() -> Self {
        Self {
            timeout_secs: 120,
            keep_failed_branches_days: 14,
            sweep_interval_secs: 3600,
        }
    }
}

impl GitConfig {
    /// The timeout as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }
}

/// How landed work is written onto a base branch.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliveryConfig {
    /// `squash` (one verified commit per task), `merge` or `rebase`.
    pub history: crate::model::task::History,
}

/// The merge queue of each repository and base branch: one candidate at a time, in the order
/// tasks passed verify.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MergeQueueConfig {
    /// Times a candidate is rebuilt because the base moved outside glitchlab while it was
    /// verified, before the delivery fails `DELIVER_FAILED` (no attempt is used up meanwhile).
    pub base_moved_max: u32,
    /// How long a task may wait in the queue and have its candidate verified, in all, before
    /// its delivery is asked for again (it keeps its place).
    pub wait_secs: u64,
    /// Tasks tested together as one candidate (1: one at a time). Green lands them all, one
    /// commit each; red is bisected.
    pub batch_max: usize,
}

impl Default for MergeQueueConfig {
    fn default() -> Self {
        Self {
            base_moved_max: 100,
            wait_secs: 86_400,
            batch_max: 4,
        }
    }
}

/// Where stage work runs: with `nats_url`, engine and verify runs go to factories through NATS
/// JetStream (see docs/fleet.md); without it, in-process.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FleetConfig {
    /// `nats://host:4222` (or `tls://`); none: no fleet.
    pub nats_url: Option<String>,
    /// The environment variable holding the NATS token, if the server wants one.
    pub token_env: Option<String>,
    /// A NATS credentials file (JWT + nkey seed), if the server wants one.
    pub creds_file: Option<std::path::PathBuf>,
    /// A job's lease: a factory that does not report progress for this long loses it, and the
    /// job goes to another factory.
    pub lease_secs: u64,
    /// Deliveries of one job at most (the first plus redeliveries after lost leases); past it,
    /// the stage fails with a transient error (retried, then dead-lettered, as today). A cold
    /// factory handing a first delivery back to a warm one spends a delivery too, hence 4 by
    /// default: three lost leases still fit.
    pub max_deliver: u32,
    /// Added to a job's own bounds (its timeout and every delivery's lease) before the control
    /// plane stops waiting for its result: room for a slow result to travel back.
    pub deadline_margin_secs: u64,
    /// The environment variable holding the key that signs pause, drain and stop for the
    /// factories (each factory is started with the same key): without it a NATS client could
    /// forge them.
    pub control_key_env: Option<String>,
    /// Replicas of each stream and bucket the fleet makes (1 on a single NATS server; 3 on a
    /// three-node cluster, so a node lost loses nothing).
    pub replicas: usize,
}

/// JetStream replicas of a stream at most (NATS's own limit).
const FLEET_REPLICAS_MAX: usize = 5;

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            nats_url: None,
            token_env: None,
            creds_file: None,
            lease_secs: 30,
            max_deliver: 4,
            deadline_margin_secs: 30,
            control_key_env: None,
            replicas: 1,
        }
    }
}

/// Task defaults and limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TasksConfig {
    /// `max_attempts` when a submission gives none.
    pub default_max_attempts: u32,
    /// The largest `max_attempts` a submission may ask for.
    pub max_attempts_limit: u32,
    /// `GET /v1/tasks` returns at most this many.
    pub list_limit: usize,
    /// What delivery does when a submission does not say: `merge` or leave the `branch`.
    pub delivery: crate::model::task::Delivery,
}

impl Default for TasksConfig {
    fn default() -> Self {
        Self {
            default_max_attempts: 3,
            max_attempts_limit: 10,
            list_limit: 1000,
            delivery: crate::model::task::Delivery::Merge,
        }
    }
}

impl Config {
    /// Loads `path` if given (it must exist), else [`DEFAULT_CONFIG_PATH`] if it exists, else defaults.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let (path, required) = match path {
            Some(path) => (path.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        if !required && !path.exists() {
            return Ok(Self::default());
        }
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|reason| ConfigError::Invalid {
            path: path.display().to_string(),
            reason,
        })
    }

    /// Parses TOML text and checks the values.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut config: Self = toml::from_str(text).map_err(|e| e.to_string())?;
        // A file's templates add to (or replace) the built-in kinds rather than removing the rest.
        for (kind, stages) in CompassConfig::default().templates {
            config.compass.templates.entry(kind).or_insert(stages);
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        self.notifications.validate()?;
        let checks = [
            (
                self.compass.max_concurrent_tasks == 0,
                "compass.max_concurrent_tasks must be at least 1",
            ),
            (
                self.compass.templates.values().any(Vec::is_empty),
                "compass.templates: a template needs at least one stage",
            ),
            (
                self.supervision.window_secs == 0,
                "supervision.window_secs must be at least 1",
            ),
            (
                self.supervision.backoff_base_ms > self.supervision.backoff_max_ms,
                "supervision.backoff_base_ms must not exceed backoff_max_ms",
            ),
            (
                self.engines.timeout_secs == 0,
                "engines.timeout_secs must be at least 1",
            ),
            (
                self.engines.verify_timeout_secs == 0,
                "engines.verify_timeout_secs must be at least 1",
            ),
            (
                self.engines.output_bytes_max < 1024,
                "engines.output_bytes_max must be at least 1024",
            ),
            (
                !self.engines.limits.sandbox_uids_valid(),
                "engines.limits.sandbox_uid_base .. + sandbox_uid_count must lie within 1000 .. 4294967294 and leave out 65534",
            ),
            (
                self.engines.limits.disk_bytes == 0 || self.engines.limits.tmp_bytes == 0,
                "engines.limits.disk_bytes and tmp_bytes must be at least 1",
            ),
            (
                self.engines.limits.warm_cgroup_lock_secs > 3600,
                "engines.limits.warm_cgroup_lock_secs must be at most 3600",
            ),
            (
                self.git.timeout_secs == 0,
                "git.timeout_secs must be at least 1",
            ),
            (
                self.merge_queue.wait_secs == 0,
                "merge_queue.wait_secs must be at least 1",
            ),
            (
                !(1..=64).contains(&self.merge_queue.batch_max),
                "merge_queue.batch_max must be between 1 and 64",
            ),
            (
                !(2..=3600).contains(&self.fleet.lease_secs),
                "fleet.lease_secs must be between 2 and 3600",
            ),
            (
                !(1..=100).contains(&self.fleet.max_deliver),
                "fleet.max_deliver must be between 1 and 100",
            ),
            (
                !(1..=3600).contains(&self.fleet.deadline_margin_secs),
                "fleet.deadline_margin_secs must be between 1 and 3600",
            ),
            (
                !(1..=FLEET_REPLICAS_MAX).contains(&self.fleet.replicas),
                "fleet.replicas must be between 1 and 5",
            ),
            (
                self.storage.stall_secs == 0,
                "storage.stall_secs must be at least 1",
            ),
            (
                self.storage.write_queue_max == 0,
                "storage.write_queue_max must be at least 1",
            ),
            (
                self.retry.base_backoff_ms > self.retry.max_backoff_ms,
                "retry.base_backoff_ms must not exceed max_backoff_ms",
            ),
            (self.retry.max > 100, "retry.max must be at most 100"),
            (
                self.compass.stall_after_secs == 0,
                "compass.stall_after_secs must be at least 1",
            ),
            (
                self.compass.deploy_wait_secs == 0,
                "compass.deploy_wait_secs must be at least 1",
            ),
            (
                self.ledger.watch_billing_interval_secs == 0,
                "ledger.watch_billing_interval_secs must be at least 1",
            ),
            (
                self.tasks.default_max_attempts == 0,
                "tasks.default_max_attempts must be at least 1",
            ),
            (
                self.tasks.default_max_attempts > self.tasks.max_attempts_limit,
                "tasks.default_max_attempts must not exceed max_attempts_limit",
            ),
            (
                self.server.body_bytes_max == 0,
                "server.body_bytes_max must be at least 1",
            ),
        ];
        if let Some((_, reason)) = checks.iter().find(|(failed, _)| *failed) {
            return Err((*reason).to_owned());
        }
        transport::validate(&self.server)?;
        self.github.validate()?;
        let per_repo = self
            .governance
            .repos
            .values()
            .flat_map(|r| &r.protected_paths);
        for pattern in self.governance.protected_paths.iter().chain(per_repo) {
            globset::Glob::new(pattern)
                .map_err(|e| format!("governance.protected_paths: `{pattern}`: {e}"))?;
        }
        crate::model::ledger::validate_id("ledger.local_account", &self.ledger.local_account)
            .map_err(|e| e.to_string())?;
        if self.ledger.default_task_budget == 0 {
            return Err("ledger.default_task_budget must be at least 1".into());
        }
        self.compass
            .templates
            .iter()
            .try_for_each(|(kind, stages)| check_template(kind, stages))
    }
}

/// A template runs each stage once, and verify and deliver only after implement made the branch.
fn check_template(kind: &str, stages: &[Stage]) -> Result<(), String> {
    for (index, stage) in stages.iter().enumerate() {
        if stages[..index].contains(stage) {
            return Err(format!(
                "compass.templates.{kind}: stage `{stage}` appears twice"
            ));
        }
        let needs_branch = matches!(stage, Stage::Verify | Stage::Deliver);
        if needs_branch && !stages[..index].contains(&Stage::Implement) {
            return Err(format!(
                "compass.templates.{kind}: `{stage}` must come after `implement`"
            ));
        }
        if *stage == Stage::Deploy && !stages[..index].contains(&Stage::Deliver) {
            return Err(format!(
                "compass.templates.{kind}: `deploy` must come after `deliver` (it ships what landed)"
            ));
        }
    }
    Ok(())
}

/// How the service treats the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SandboxMode {
    /// Never confine (for hosts that cannot, or an in-process embedding of the library).
    Off,
    /// Use every layer that works here (namespaces through `bwrap`, Landlock); name at start
    /// what is missing.
    #[default]
    Auto,
    /// Refuse to start unless both layers (namespaces and Landlock) work and every limit is
    /// enforced (a root service: its runs drop to a uid, or a `pids` cgroup is writable).
    Required,
}

/// Most write jobs waiting for the store's writer by default (`storage.write_queue_max`).
pub const WRITE_QUEUE_MAX: usize = 4096;

#[cfg(test)]
mod tests {

    #[test]
    fn the_sandbox_uid_range_leaves_out_root_nobody_and_the_top() {
        let parse = |range: &str| Config::parse(&format!("[engines.limits]\n{range}\n"));
        let limits = Config::parse("").unwrap().engines.limits;
        assert_eq!(
            (limits.sandbox_uid_base, limits.sandbox_uid_count),
            (1_900_000_000, 10_000)
        );
        assert!(parse("sandbox_uid_base = 200000\nsandbox_uid_count = 10000").is_ok());
        assert_eq!(limits.warm_cgroup_lock_secs, 10);
        assert!(parse("warm_cgroup_lock_secs = 0").is_ok(), "off");
        assert!(
            parse("sandbox_uid_base = 0\nsandbox_uid_count = 0").is_ok(),
            "off"
        );
        for bad in [
            "sandbox_uid_base = 0",
            "sandbox_uid_base = 60000",
            "sandbox_uid_base = 4294967000",
            "disk_bytes = 0",
            "warm_cgroup_lock_secs = 3601",
        ] {
            let error = parse(bad).unwrap_err();
            assert!(error.contains("engines.limits"), "{bad}: {error}");
        }
    }
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let config = Config::parse("").unwrap();
        assert_eq!(config.compass.max_concurrent_tasks, 4);
        assert_eq!(config.supervision.max_restarts, 5);
        assert_eq!(config.server.bind.port(), 7700);
    }

    #[test]
    fn the_shipped_config_file_parses_to_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_CONFIG_PATH);
        let config = Config::load(Some(&path)).unwrap();
        let defaults = Config::default();
        assert_eq!(config.compass.templates, defaults.compass.templates);
        assert!(
            config.notifications.receivers.is_empty() && config.notifications.routes.is_empty()
        );
        assert_eq!(config.retry.max, defaults.retry.max);
        assert_eq!(config.tasks.delivery, defaults.tasks.delivery);
        assert_eq!(
            config.compass.stall_after_secs,
            defaults.compass.stall_after_secs
        );
    }

    #[test]
    fn delivery_is_merge_or_branch() {
        let config = Config::parse("[tasks]\ndelivery = \"branch\"\n").unwrap();
        assert_eq!(config.tasks.delivery, crate::model::task::Delivery::Branch);
        let error = Config::parse("[tasks]\ndelivery = \"push\"\n").unwrap_err();
        assert!(error.contains("push"), "{error}");
    }

    #[test]
    fn unknown_key_names_the_key() {
        let error = Config::parse("[compass]\nmax_concurent_tasks = 3\n").unwrap_err();
        assert!(error.contains("max_concurent_tasks"), "{error}");
    }

    #[test]
    fn retry_delay_grows_with_jitter_and_a_cap() {
        let retry = RetryConfig {
            max: 5,
            base_backoff_ms: 100,
            max_backoff_ms: 300,
        };
        for _ in 0..50 {
            let first = retry.delay(1).as_millis();
            assert!((50..=100).contains(&first), "{first}");
            let third = retry.delay(3).as_millis();
            assert!((150..=300).contains(&third), "{third}");
        }
    }

    #[test]
    fn templates_are_checked() {
        let twice = "[compass.templates]\nloop = [\"implement\", \"verify\", \"implement\"]\n";
        assert!(Config::parse(twice).unwrap_err().contains("appears twice"));
        let early = "[compass.templates]\nodd = [\"verify\", \"implement\"]\n";
        assert!(Config::parse(early)
            .unwrap_err()
            .contains("after `implement`"));
        let docs = "[compass.templates]\ndocs = [\"implement\", \"deliver\"]\n";
        let templates = Config::parse(docs).unwrap().compass.templates;
        assert_eq!(templates["docs"].len(), 2);
        assert_eq!(templates["feature"].len(), 4);
        assert_eq!(templates["infra"].last(), Some(&Stage::Deploy));
        let early_deploy = "[compass.templates]\nship = [\"implement\", \"deploy\", \"deliver\"]\n";
        assert!(Config::parse(early_deploy)
            .unwrap_err()
            .contains("`deploy` must come after `deliver`"));
    }

    #[test]
    fn bad_value_is_refused() {
        let error = Config::parse("[compass]\nmax_concurrent_tasks = 0\n").unwrap_err();
        assert!(error.contains("max_concurrent_tasks"), "{error}");
        let error = Config::parse("[supervision]\nmax_restarts = \"many\"\n").unwrap_err();
        assert!(error.contains("max_restarts"), "{error}");
        let error = Config::parse("[fleet]\ndeadline_margin_secs = 0\n").unwrap_err();
        assert!(error.contains("fleet.deadline_margin_secs"), "{error}");
    }
}
