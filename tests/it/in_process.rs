//! The service inside the test process: the same start-up the binary runs
//! (`glitchlab::app::startup::Application`), on its own multi-thread tokio runtime on its own
//! std thread, bound to `127.0.0.1:0`. It saves a process start per service; suites that never
//! crash, kill, signal or read the environment of a service use it (`Service::start_in_process`).
//!
//! What the binary owns and a test process shares, and how each is handled here:
//! - environment: nothing is set; the admin secret and the sandbox's `glitchlab` binary go
//!   through `Config::embedding`, and a test that needs other variables (`FAILPOINTS`, secrets)
//!   must use the binary (`Options::env` is refused here);
//! - the log: a tracing dispatcher set on each of the runtime's threads writes `service.log` in
//!   the test's root, so `Service::log` works (unredacted: tests of log redaction use the binary;
//!   the service's own std threads, such as the store writer, log nowhere);
//! - the umask is left alone (the binary narrows it to `077`): tests of file modes use the binary;
//! - the metrics recorder is one per process: tests that read `/metrics` values use the binary;
//! - signals, pids and `kill -9` do not exist for an in-process service (they panic);
//! - the current dir: relative data paths in the config are made relative to the test's root,
//!   as the binary, started in it, would read them (an absent default ops file or runbooks dir
//!   gets an empty stand-in there: absolute, it would otherwise be refused as missing).
//!
//! Stopping (drop) runs the binary's shutdown (intake, tree, sled flush), then shuts the runtime
//! down: the port and the data dir's lock are free for a restart on the same root.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use glitchlab::app::startup::Application;
use glitchlab::config::Config;

use crate::helpers::{Options, ADMIN_TOKEN};

/// How long the service may take to bind.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stop may take (the binary's own shutdown bounds are below this).
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the runtime's leftover tasks get once the service has stopped.
const RUNTIME_SHUTDOWN: Duration = Duration::from_secs(5);
/// Worker threads of each service's runtime (the binary gets one per core; CI has two).
const WORKER_THREADS: usize = 2;
/// The log filter the binary is started with (`RUST_LOG` in `helpers::Service::start_with`).
const LOG_FILTER: &str = "info,tower_http=warn";

/// A service running on its own runtime in this process.
pub(crate) struct InProcess {
    /// Completes the shutdown future; dropping it does too.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// Says the runtime is gone (its port and sled with it); in a mutex so a `Service` can be
    /// shared between tasks (`Arc<Service>`), as a binary one can.
    stopped: std::sync::Mutex<mpsc::Receiver<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl InProcess {
    /// Starts a service on `root` with the config file at `config_file`; returns it and its
    /// base URL.
    pub(crate) fn start(root: &Path, config_file: &Path, options: &Options) -> (Self, String) {
        assert!(
            options.env.is_empty(),
            "an in-process service cannot be given environment variables ({:?}): the test process \
             shares its environment; start this service with Service::start_with",
            options.env
        );
        let config = config_for(root, config_file, options);
        let dispatch = log_dispatch(root);
        let (ready_tx, ready_rx) = mpsc::channel::<Result<String, String>>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (stopped_tx, stopped_rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("glitchlab-in-process".into())
            .spawn(move || {
                let _log = tracing::dispatcher::set_default(&dispatch);
                serve(config, dispatch, ready_tx, stop_rx);
                let _ = stopped_tx.send(());
            })
            .unwrap();
        let base = match ready_rx.recv_timeout(START_TIMEOUT) {
            Ok(Ok(base)) => base,
            Ok(Err(error)) => panic!(
                "in-process service did not start: {error}; log:\n{}",
                read_log(root)
            ),
            Err(_) => panic!(
                "in-process service did not start in {START_TIMEOUT:?}; log:\n{}",
                read_log(root)
            ),
        };
        let service = Self {
            stop: Some(stop_tx),
            stopped: std::sync::Mutex::new(stopped_rx),
            thread: Some(thread),
        };
        (service, base)
    }

    /// Runs the binary's shutdown and waits (bounded) until the runtime is gone.
    pub(crate) fn stop(&mut self) {
        let Some(stop) = self.stop.take() else {
            return;
        };
        let _ = stop.send(());
        let stopped = self.stopped.lock().unwrap_or_else(|e| e.into_inner());
        match stopped.recv_timeout(STOP_TIMEOUT) {
            Ok(()) => {
                if let Some(thread) = self.thread.take() {
                    let _ = thread.join();
                }
            }
            // Panicking in a drop would abort the test process; the leak is reported instead.
            Err(_) => eprintln!("in-process service did not stop within {STOP_TIMEOUT:?}"),
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The config the binary would run with, given `serve --bind 127.0.0.1:0 --data-dir <root>/data
/// --config <config_file>` in `root` and the test admin secret in its environment.
fn config_for(root: &Path, config_file: &Path, options: &Options) -> Config {
    let mut config = Config::load(Some(config_file)).unwrap_or_else(|e| panic!("config: {e}"));
    config.server.bind = "127.0.0.1:0".parse().unwrap();
    config.storage.data_dir = root.join("data");
    let paths = &mut config.paths;
    paths.actors_dir = in_root(root, &paths.actors_dir);
    paths.runbooks_dir = in_root(root, &paths.runbooks_dir);
    paths.ops_file = in_root(root, &paths.ops_file);
    // Only the default paths may be absent, and only while relative (then the binary reads
    // nothing from them): an empty stand-in at the same place reads as nothing too.
    if !paths.runbooks_dir.exists() {
        std::fs::create_dir_all(&paths.runbooks_dir).unwrap();
    }
    if !paths.ops_file.exists() {
        std::fs::write(&paths.ops_file, "").unwrap();
    }
    for path in [&mut config.server.tls_cert, &mut config.server.tls_key]
        .into_iter()
        .flatten()
    {
        *path = in_root(root, path);
    }
    config.embedding.admin_secret = (!options.no_admin_env).then(|| ADMIN_TOKEN.to_owned());
    config.embedding.sandbox_exe = Some(PathBuf::from(env!("CARGO_BIN_EXE_glitchlab")));
    config
}

/// `path` as the binary started in `root` reads it.
fn in_root(root: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        root.join(path)
    }
}

/// A subscriber writing the service's log lines to `<root>/service.log`, like the binary's
/// stderr in `helpers::Service::start_with`.
fn log_dispatch(root: &Path) -> tracing::Dispatch {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(root.join("service.log"))
        .unwrap();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(LOG_FILTER))
        .with_writer(std::sync::Mutex::new(file))
        .with_ansi(false)
        .finish();
    tracing::Dispatch::new(subscriber)
}

/// The service's thread: build, say where it listens, serve until stopped, drop the runtime.
fn serve(
    config: Config,
    dispatch: tracing::Dispatch,
    ready: mpsc::Sender<Result<String, String>>,
    stop: tokio::sync::oneshot::Receiver<()>,
) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKER_THREADS)
        .enable_all()
        // Every thread of this runtime logs to this service's file; the guard lives as long as
        // the thread.
        .on_thread_start(move || std::mem::forget(tracing::dispatcher::set_default(&dispatch)))
        .build()
        .unwrap();
    runtime.block_on(async move {
        let application = match Application::build(config).await {
            Ok(application) => application,
            Err(error) => {
                let _ = ready.send(Err(error.to_string()));
                return;
            }
        };
        let base = match application.addr() {
            Ok(addr) => format!("{}://{addr}", application.scheme()),
            Err(error) => {
                let _ = ready.send(Err(error.to_string()));
                return;
            }
        };
        let _ = ready.send(Ok(base));
        let shutdown = async move {
            let _ = stop.await;
        };
        if let Err(error) = application.run_until_stopped(shutdown).await {
            tracing::error!(%error, "the in-process service stopped abnormally");
        }
    });
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
}

/// The log so far, for a failed start's message.
fn read_log(root: &Path) -> String {
    std::fs::read_to_string(root.join("service.log")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use crate::helpers::{git_repo, shell_task, Options, Service};

    /// Polls of the stopped service's port, 100 ms apart.
    const PORT_CLOSE_POLLS: usize = 100;

    /// Stopping frees what the binary's exit frees: the port, and sled's lock on the data dir (a
    /// second in-process service and then the binary reopen it and find the task).
    #[tokio::test]
    async fn a_stopped_service_frees_its_port_and_data_dir_for_a_restart() {
        let root = tempfile::tempdir().unwrap();
        let repo = git_repo(root.path());
        let service = Service::always_in_process(root.path(), Options::default()).await;
        let task = service
            .submit(&shell_task(&repo, "echo a > a.txt", "true"))
            .await;
        let id = task["id"].as_str().unwrap().to_owned();
        assert_eq!(service.wait_until_finished(&id).await["status"], "done");
        assert!(
            service.log().contains("loaded data folders"),
            "the service's log is not in service.log:\n{}",
            service.log()
        );
        let addr = service.base.trim_start_matches("http://").to_owned();
        drop(service);
        // The runtime's shutdown drops the listener; on a loaded machine a worker may get to it
        // a moment after the stop returned.
        let mut closed = false;
        for _ in 0..PORT_CLOSE_POLLS {
            if tokio::net::TcpStream::connect(&addr).await.is_err() {
                closed = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(
            closed,
            "{addr} still accepts connections 10 s after the stop"
        );
        let service = Service::always_in_process(root.path(), Options::default()).await;
        let (status, again) = service.get(&format!("/v1/tasks/{id}")).await;
        assert_eq!((status, again["status"].as_str()), (200, Some("done")));
        drop(service);
        let service = Service::start_with(root.path(), Options::default()).await;
        let (status, again) = service.get(&format!("/v1/tasks/{id}")).await;
        assert_eq!((status, again["status"].as_str()), (200, Some("done")));
        let (status, _) = service.get("/healthz").await;
        assert_eq!(status, 200);
    }

    #[tokio::test]
    #[should_panic(expected = "runs in-process")]
    async fn kill_9_of_an_in_process_service_panics_saying_why() {
        let root = tempfile::tempdir().unwrap();
        let mut service = Service::always_in_process(root.path(), Options::default()).await;
        service.kill_9();
    }

    #[tokio::test]
    #[should_panic(expected = "cannot be given environment variables")]
    async fn environment_for_an_in_process_service_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let options = Options {
            env: vec![("GLITCHLAB_TEST_SECRET".into(), "x".into())],
            ..Options::default()
        };
        Service::always_in_process(root.path(), options).await;
    }
}
