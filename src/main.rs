//! The `glitchlab` binary: a thin wrapper over the library.

use std::process::ExitCode;

use clap::Parser;
use glitchlab::app::cli::{Cli, Command, ServeArgs, EXIT_USAGE};
use glitchlab::app::startup::Application;
use glitchlab::config::Config;

fn main() -> ExitCode {
    // The sandbox helper confines itself and execs the command: no runtime, no threads, no logs.
    let mut args = std::env::args_os();
    if args
        .nth(1)
        .is_some_and(|arg| arg == glitchlab::platform::sandbox::SANDBOX_SUBCOMMAND)
    {
        glitchlab::platform::sandbox::exec_main(args.collect());
    }
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(run()),
        Err(error) => {
            eprintln!("glitchlab: cannot start the async runtime: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> ExitCode {
    glitchlab::platform::telemetry::init();
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return usage_exit(&error),
    };
    if !matches!(cli.command, Command::Serve(_) | Command::Factory(_)) {
        // A client command piped into `head` should end quietly when the pipe closes, as other
        // Unix tools do, instead of panicking on the write's EPIPE. (The service and the factory
        // keep SIGPIPE ignored: a peer's closed socket must not kill them.)
        // SAFETY: restoring a signal's default disposition before any thread writes to stdout.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let result = match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Factory(args) => glitchlab::app::factory::run(args).await,
        client => {
            return match glitchlab::app::cli::run(client).await {
                Ok(code) => ExitCode::from(code),
                Err(error) => {
                    eprintln!("glitchlab: {error}");
                    ExitCode::from(error.exit_code())
                }
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("glitchlab: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Prints clap's message; `--help` and `--version` exit 0, a usage error 64 (not clap's 2, which
/// is also "the task failed").
fn usage_exit(error: &clap::Error) -> ExitCode {
    let _ = error.print();
    if error.use_stderr() {
        ExitCode::from(EXIT_USAGE)
    } else {
        ExitCode::SUCCESS
    }
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    // Everything the service creates (its data dir, sled's files, tokens, prompts) is private to
    // its user from the first file on; the commands it runs get the inherited umask back.
    glitchlab::platform::private::restrict_umask();
    let mut config = Config::load(args.config.as_deref()).map_err(|e| e.to_string())?;
    if let Some(bind) = args.bind {
        config.server.bind = bind;
    }
    if let Some(ops) = args.ops {
        config.paths.ops_file = ops;
    }
    if let Some(data_dir) = args.data_dir {
        config.storage.data_dir = data_dir;
    }
    let application = Application::build(config)
        .await
        .map_err(|e| e.to_string())?;
    let addr = application.addr().map_err(|e| e.to_string())?;
    // The one line on stdout: scripts and tests read the address from it.
    println!("glitchlab listening on {}://{addr}", application.scheme());
    application
        .run_until_stopped(shutdown_signal())
        .await
        .map_err(|e| e.to_string())
}

/// Completes on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = terminate => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received"),
    }
}
