//! Building and running the service: open the store, load the data folders, start the tree, bind
//! the listener; then serve until a shutdown signal, and shut down in order (stop intake, stop the
//! tree, flush sled).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorRef};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::actors::compass::{Compass, CompassArguments};
use crate::app::http::auth::Auth;
use crate::app::http::{self, AppParts, AppState};
use crate::app::transport::{tls, Transport};
use crate::config::definitions::{DefinitionError, Definitions};
use crate::config::{AuthMode, Config, ServerConfig};
use crate::platform::process;
use crate::platform::sandbox::Sandbox;
use crate::runtime::compass::CompassMsg;
use crate::runtime::directory::ActorDirectory;
use crate::runtime::Services;
use crate::storage::store::{Store, StoreError};

/// How long the tree may take to stop on shutdown.
const TREE_STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long shutdown waits for the notifications sender's current message (its call is bounded
/// by `runtime::notifier::SEND_TIMEOUT`; past this it is cut off and sent again next start).
const NOTIFIER_STOP_TIMEOUT: Duration = Duration::from_secs(2);
/// How long shutdown waits, once the tree has stopped, for background tasks (settlements,
/// signals, worktree removals, interrupted runs being recorded) before it leaves them.
const BACKGROUND_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for the store watchdog to notice it was cancelled.
const WATCHDOG_STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// The service could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The data directory could not be made.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// sled could not be opened (another glitchlab may hold it).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A data file is invalid.
    #[error(transparent)]
    Definitions(#[from] DefinitionError),
    /// The tree's root could not start.
    #[error("compass failed to start: {0}")]
    Tree(String),
    /// The listener could not be bound or served.
    #[error("http: {0}")]
    Http(#[from] std::io::Error),
    /// The bind guard refused the configuration (it names the option to change).
    #[error("refusing to serve: {0}")]
    Exposure(String),
    /// The TLS certificate or key could not be used.
    #[error("tls: {0}")]
    Tls(String),
    /// `[fleet] nats_url` is set but NATS could not be reached or set up.
    #[error("fleet: {0}")]
    Fleet(String),
    /// `GLITCHLAB_ADMIN_TOKEN` is set but too short (or not UTF-8) to be an admin secret.
    #[error("refusing to start: {0}")]
    AdminToken(String),
    /// `sandbox = "required"` but namespaces or Landlock do not work here.
    #[error("sandbox required but unavailable: {0}")]
    Sandbox(String),
    /// Compass died while the service ran.
    #[error("compass stopped unexpectedly")]
    CompassDied,
}

/// The bind guard on the final configuration, and the TLS acceptor when TLS is on: checked
/// before anything is opened, so a refused start touches no data.
fn transport_setup(
    server: &ServerConfig,
) -> Result<Option<tokio_rustls::TlsAcceptor>, StartupError> {
    crate::config::transport::check_exposure(server).map_err(StartupError::Exposure)?;
    if server.auth == AuthMode::Off {
        tracing::warn!(
            bind = %server.bind,
            "server.auth = off: anyone on this host can use the service without a token"
        );
    }
    match (&server.tls_cert, &server.tls_key) {
        (Some(cert), Some(key)) => tls::acceptor(cert, key)
            .map(Some)
            .map_err(|error| StartupError::Tls(error.to_string())),
        _ => Ok(None),
    }
}

/// Tightens the data dir to `0700` when its mode gives group or others anything (logged: an
/// operator may have loosened it on purpose); what the service creates in it is private by the
/// process umask ([`crate::platform::private`]).
fn private_data_dir(data_dir: &std::path::Path) -> Result<(), StartupError> {
    let tightened = crate::platform::private::tighten_dir(data_dir).map_err(|source| {
        StartupError::DataDir {
            path: data_dir.display().to_string(),
            source,
        }
    })?;
    if let Some(mode) = tightened {
        tracing::warn!(
            data_dir = %data_dir.display(),
            was = format!("{mode:04o}"),
            "the data dir was readable by others: made it 0700"
        );
    }
    Ok(())
}

/// A built service, bound and with its tree running.
pub struct Application {
    /// The bound listener, TLS and the connection limits.
    transport: Transport,
    app: AppState,
    compass_done: JoinHandle<()>,
    /// Stops the store writer's watchdog with the service.
    watchdog: tokio_util::sync::CancellationToken,
    /// The watchdog's task, awaited at shutdown once cancelled.
    watchdog_task: JoinHandle<()>,
}

impl Application {
    /// Opens the store, loads the data folders, starts Compass (which starts the personas and
    /// resumes unfinished tasks) and binds `config.server.bind`.
    pub async fn build(mut config: Config) -> Result<Self, StartupError> {
        // Before any task resumes: a task branch's lock older than this is a killed writer's.
        crate::platform::git::stale_locks::note_process_start();
        let tls = transport_setup(&config.server)?;
        crate::app::http::auth::admin_token_var(&config).map_err(StartupError::AdminToken)?;
        crate::app::transport::raise_open_files_limit();
        let data_dir = &config.storage.data_dir;
        let data_dir_error = |source| StartupError::DataDir {
            path: data_dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(data_dir).map_err(data_dir_error)?;
        config.storage.data_dir = std::fs::canonicalize(data_dir).map_err(data_dir_error)?;
        // Private before anything is opened in it: tokens, prompts, task records.
        private_data_dir(&config.storage.data_dir)?;
        // Tasks store their repository's real path: per-repository governance is keyed alike.
        config.governance.resolve_repo_paths();
        let definitions = Definitions::load(&config.paths)?;
        // Process-wide and idempotent: a second service in this process shares the recorder.
        crate::platform::metrics::install();
        tracing::info!(
            personas = definitions.personas.len(),
            runbooks = definitions.runbooks.len(),
            apps = definitions.ops.apps.len(),
            "loaded data folders"
        );
        // One redactor for everything: the store scrubs each record it writes with it, the engines
        // their outputs, intake a submission's text.
        // GitHub's token and webhook secret are secrets like the operator's own.
        let mut secret_names = config.governance.secrets.clone();
        secret_names.extend(config.github.secret_env_names());
        let redactor = Arc::new(crate::platform::redact::Redactor::from_env(&secret_names));
        crate::platform::telemetry::redact_logs_with(redactor.clone());
        let store = Store::open_reserving(
            &config.storage.data_dir,
            config.storage.write_queue_max,
            redactor.clone(),
            config.storage.reserve_bytes,
        )?;
        // Opening sled took its lock: no other live service uses this data dir, so anything still
        // running with its mark was orphaned by a killed predecessor.
        let orphans = process::kill_orphans(&config.storage.data_dir.display().to_string());
        if orphans > 0 {
            tracing::warn!(
                orphans,
                "killed process groups left running by a previous run"
            );
        }
        // Their processes are gone now: runs they were recorded under end `interrupted`.
        let interrupted = store.interrupt_open_runs().await?;
        if interrupted > 0 {
            tracing::warn!(interrupted, "engine runs cut off by the previous run's end");
        }
        // Deploy records stored before the per-app index existed get their index entries (once).
        let indexed = crate::storage::ops::OpsStore::new(&store)
            .index_deploys()
            .await?;
        if indexed > 0 {
            tracing::info!(indexed, "indexed the deploy history by app");
        }
        let watchdog = tokio_util::sync::CancellationToken::new();
        let watchdog_task = tokio::spawn(crate::storage::store::watch_writer(
            store.clone(),
            Duration::from_secs(config.storage.stall_secs),
            watchdog.clone(),
        ));
        let exe = config.embedding.sandbox_exe.clone();
        let sandbox = Sandbox::detect(config.governance.sandbox, config.engines.limits, exe)
            .await
            .map_err(StartupError::Sandbox)?;
        let fleet = match &config.fleet.nats_url {
            Some(url) => Some(
                crate::runtime::fleet::Fleet::start(
                    &config.fleet,
                    url,
                    store.clone(),
                    &config.storage.data_dir,
                )
                .await
                .map_err(|error| StartupError::Fleet(error.to_string()))?,
            ),
            None => None,
        };
        // The job gate mirrors the fleet's pause, or keeps its own without a fleet.
        let hold = match &fleet {
            Some(fleet) => crate::runtime::jobs::hold::JobHold::mirroring(fleet.paused()),
            None => crate::runtime::jobs::hold::JobHold::kept_in(&config.storage.data_dir).await,
        };
        let services = Services {
            hold: Arc::new(hold),
            merge_lines: Arc::default(),
            fleet,
            redactor,
            sandbox: sandbox.map(Arc::new),
            repo_checks: Arc::default(),
            base_health: Arc::default(),
            background: Default::default(),
            live_output: Default::default(),
            store,
            directory: Arc::new(ActorDirectory::default()),
            config: Arc::new(config),
            definitions: Arc::new(definitions),
        };
        // Before the tree: the first admin token exists (and its file is written) before anyone
        // can be told the service listens.
        let auth = Auth::start(&services.config, &services.store).await?;
        // Job refs a killed predecessor left in the users' repositories and remotes.
        crate::work::fleet_refs::clean_after_restart(&services);
        let (compass, compass_done) = Actor::spawn(
            None,
            Compass,
            CompassArguments {
                services: services.clone(),
            },
        )
        .await
        .map_err(|error| StartupError::Tree(error.to_string()))?;
        let transport = Transport::bind(&services.config.server, tls).await?;
        let streams = http::stream::StreamSlots::new(&services.config.server);
        Ok(Self {
            transport,
            app: AppState::new(AppParts {
                services,
                compass,
                streams,
                auth,
            }),
            compass_done,
            watchdog,
            watchdog_task,
        })
    }

    /// The address actually bound (the port is real even when 0 was asked for).
    pub fn addr(&self) -> Result<SocketAddr, StartupError> {
        Ok(self.transport.local_addr()?)
    }

    /// `https` when `server.tls_cert` is set, else `http`: the scheme of the service's URL.
    pub fn scheme(&self) -> &'static str {
        self.transport.scheme()
    }

    /// Serves until `shutdown` completes, then stops intake, the tree and sled, in that order.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartupError> {
        let Self {
            transport,
            app,
            mut compass_done,
            watchdog,
            watchdog_task,
        } = self;
        let compass: ActorRef<CompassMsg> = app.compass.clone();
        let services = app.services.clone();
        let streams = app.streams.clone();
        let stop = CancellationToken::new();
        // Owned here: awaited (or aborted, with every connection) below, like the watchdog's task.
        let mut server = tokio::spawn(transport.serve(http::router(app), stop.clone()));
        // Delivers the notifications outbox until intake stops (what is left is sent next start).
        let mut notifier = tokio::spawn(crate::runtime::notifier::run(
            crate::storage::ops::OpsStore::new(&services.store),
            services.config.notifications.clone(),
            stop.clone(),
        ));
        // Issue intake (`[[github.intake]]`): one loop per repository until intake stops.
        let issue_intake = crate::work::issue_intake::start(&services, &stop);
        let compass_died = tokio::select! {
            _ = shutdown => false,
            _ = &mut compass_done => true,
            result = &mut server => {
                result.map_err(|e| std::io::Error::other(e.to_string()))?;
                false
            }
        };
        tracing::info!("shutting down: stopping intake");
        stop.cancel();
        for intake in issue_intake {
            intake.abort();
        }
        // Event streams never end by themselves; the graceful shutdown would wait for them.
        streams.close();
        if tokio::time::timeout(NOTIFIER_STOP_TIMEOUT, &mut notifier)
            .await
            .is_err()
        {
            notifier.abort();
        }
        let drain = Duration::from_secs(services.config.server.shutdown_timeout_secs);
        if tokio::time::timeout(drain, &mut server).await.is_err() {
            tracing::warn!("open requests did not finish in time; closing them");
            server.abort();
        }
        if !compass_died {
            tracing::info!("stopping the supervision tree");
            compass.stop(Some("shutdown".into()));
            if tokio::time::timeout(TREE_STOP_TIMEOUT, compass_done)
                .await
                .is_err()
            {
                tracing::warn!("the tree did not stop in time");
            }
        }
        // What the stopped actors and handlers left running (settlements, signals, runs cut off
        // by the stop being recorded) ends now, or is left to the runtime's end after a bound.
        if !services.background.is_empty() {
            tracing::info!(
                running = services.background.len(),
                "waiting for background tasks"
            );
        }
        services
            .background
            .close_and_wait(BACKGROUND_STOP_TIMEOUT)
            .await;
        // The running stages were stopped by us, not by what they did: the next start does not
        // count this stop against them (`compass.poison_after`).
        if !compass_died {
            if let Err(error) = services.store.mark_clean_stop().await {
                tracing::error!(%error, "could not record the clean stop");
            }
        }
        watchdog.cancel();
        if tokio::time::timeout(WATCHDOG_STOP_TIMEOUT, watchdog_task)
            .await
            .is_err()
        {
            tracing::warn!("the store watchdog did not stop in time");
        }
        tracing::info!("stopped");
        if compass_died {
            return Err(StartupError::CompassDied);
        }
        Ok(())
    }
}
