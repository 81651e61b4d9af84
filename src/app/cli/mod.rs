//! The command line: `glitchlab serve [--bind ADDR] [--data-dir DIR] [--config FILE]`, and
//! against a running service `glitchlab task|deploy|incident|silence|fleet|ledger|ops|tree`, all
//! through one client context ([`client::Client`]: `--url`/`GLITCHLAB_URL`, `GLITCHLAB_TOKEN`,
//! `--timeout`, `--json`), plus `glitchlab completions bash|zsh|fish`.
//!
//! Exit codes (docs/api.md, "The CLI"): 0 success; 1 an unreachable service, an error answer or
//! a failed local step; 2 a followed task ended `failed`, 3 `dead_letter`, 4 `cancelled`; 64 a
//! usage error (clap's own included: an unknown flag or value, an ambiguous id prefix).

pub mod client;
pub mod fleet;
pub mod ledger;
pub mod ops;
pub mod records;
pub mod show;
pub mod silence;
pub mod task;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};

pub use client::{CliError, ClientArgs, EXIT_USAGE};

/// glitchlab: an agentic software corporation engine.
#[derive(Debug, Parser)]
#[command(name = "glitchlab", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service: the HTTP ingress and the supervision tree.
    Serve(ServeArgs),
    /// Read the token ledger of a running service.
    Ledger(LedgerArgs),
    /// Ops actions against a running service (deploys).
    Ops(OpsArgs),
    /// Tasks of a running service: submit (and follow), list, show, logs, diff, runs, act.
    Task(task::TaskArgs),
    /// Deploys of a running service: list, show, approve, reject.
    Deploy(records::RecordArgs),
    /// Incidents of a running service: list, show, approve or reject a gated step.
    Incident(records::RecordArgs),
    /// Silences of a running service: add, list, expire (quiet matching signals for a while).
    Silence(silence::SilenceArgs),
    /// Run a fleet factory: take engine and verify jobs from NATS JetStream (docs/fleet.md).
    Factory(crate::app::factory::FactoryArgs),
    /// The fleet of a running service: list, pause, resume, drain.
    Fleet(fleet::FleetArgs),
    /// The supervision tree of a running service.
    Tree {
        /// The service to ask and how to print.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print a shell completion script (`glitchlab completions bash > /etc/bash_completion.d/glitchlab`).
    Completions {
        /// The shell.
        #[arg(value_parser = ["bash", "zsh", "fish"])]
        shell: String,
    },
}

/// Runs one command against a running service (or `completions`); `Ok` is the exit code.
/// `serve` and `factory` are the binary's own.
pub async fn run(command: Command) -> Result<u8, CliError> {
    match command {
        Command::Ledger(args) => ledger::run(args).await,
        Command::Ops(args) => ops::run(args).await,
        Command::Task(args) => task::run(args).await,
        Command::Deploy(args) => records::run(records::Records::Deploys, args).await,
        Command::Incident(args) => records::run(records::Records::Incidents, args).await,
        Command::Silence(args) => silence::run(args).await,
        Command::Fleet(args) => fleet::run(args).await,
        Command::Tree { client } => task::tree(&client::Client::new(&client)?).await,
        Command::Completions { shell } => completions(&shell),
        Command::Serve(_) | Command::Factory(_) => Err(CliError::Usage(
            "`serve` and `factory` are not client commands".into(),
        )),
    }
}

/// Writes the completion script of `shell` to stdout.
fn completions(shell: &str) -> Result<u8, CliError> {
    let shell = match shell {
        "bash" => clap_complete::Shell::Bash,
        "zsh" => clap_complete::Shell::Zsh,
        "fish" => clap_complete::Shell::Fish,
        other => return Err(CliError::Usage(format!("no completions for `{other}`"))),
    };
    clap_complete::generate(
        shell,
        &mut Cli::command(),
        "glitchlab",
        &mut std::io::stdout(),
    );
    Ok(client::EXIT_OK)
}

/// Flags of `serve`; each overrides the config file.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long)]
    pub bind: Option<SocketAddr>,
    /// Where the database, worktrees and prompt files live.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Configuration file (TOML); without it `config/glitchlab.toml` is read if present.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Ops targets (`ops.yaml`); overrides `paths.ops_file`.
    #[arg(long)]
    pub ops: Option<PathBuf>,
}

/// Flags of `ops`.
#[derive(Debug, clap::Args)]
pub struct OpsArgs {
    /// The service to ask and how to print.
    #[command(flatten)]
    pub client: ClientArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: OpsCommand,
}

/// Subcommands of `ops`.
#[derive(Debug, Subcommand)]
pub enum OpsCommand {
    /// Request a deploy of an app (prints the deploy record's line; `--json` the record).
    Deploy {
        /// The app of `ops.yaml`.
        app: String,
        /// The commit to deploy (default: the app's branch head).
        #[arg(long)]
        commit: Option<String>,
        /// Follow the deploy until it ends or waits for approval: exit 0 `healthy` (or
        /// `awaiting_approval`), 2 `rolled_back` or `failed`, 4 `rejected`.
        #[arg(long)]
        wait: bool,
    },
}

/// Flags of `ledger`.
#[derive(Debug, clap::Args)]
pub struct LedgerArgs {
    /// The service to ask and how to print.
    #[command(flatten)]
    pub client: ClientArgs,
    /// What to read.
    #[command(subcommand)]
    pub command: LedgerCommand,
}

/// Subcommands of `ledger`.
#[derive(Debug, Subcommand)]
pub enum LedgerCommand {
    /// An account's balance and available amount, in tokens (`--json`: micro-tokens).
    Balance {
        /// Account id, e.g. `user:local`.
        account: String,
    },
    /// An account's transfers, newest first (a table in tokens; `--json` for the raw page).
    History {
        /// Account id.
        account: String,
        /// Transfers per page (1..=500).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=500))]
        limit: u64,
        /// `next_cursor` of the previous page.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Recompute every balance from the transfers; exits 1 unless balanced.
    Audit,
}

/// The HTTP client of a CLI command talking to a running service: every request bounded by
/// `timeout`, connecting included, and carrying [`TOKEN_VAR`]'s token when it is set.
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, String> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Ok(secret) = std::env::var(TOKEN_VAR) {
        let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", secret.trim()))
            .map_err(|_| format!("{TOKEN_VAR} holds characters a header cannot"))?;
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    reqwest::Client::builder()
        .timeout(timeout)
        .default_headers(headers)
        .build()
        .map_err(|error| format!("cannot build an HTTP client: {error}"))
}

/// The variable the CLIs read their bearer token from (`export GLITCHLAB_TOKEN=$(cat
/// glitchlab-data/admin.token)`).
pub const TOKEN_VAR: &str = "GLITCHLAB_TOKEN";

/// Sends a CLI command's request to `url` and reads the JSON answer. An unreachable service, an
/// answer that is not JSON and an error answer (`STATUS: CODE: message`) are messages for the
/// user.
pub async fn call(
    request: reqwest::RequestBuilder,
    url: &str,
) -> Result<serde_json::Value, String> {
    let response = request
        .send()
        .await
        .map_err(|error| format!("cannot reach the service at {url}: {error}"))?;
    let status = response.status();
    let body: serde_json::Value = response
        .json()
        .await
        .map_err(|error| format!("unexpected answer from {url} ({status}): {error}"))?;
    if !status.is_success() {
        let code = body["error"]["code"].as_str().unwrap_or("UNKNOWN");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        return Err(format!("{status}: {code}: {message}"));
    }
    Ok(body)
}

/// Prints a value as pretty JSON on stdout.
pub fn print_json(value: &serde_json::Value) -> Result<(), String> {
    let text = serde_json::to_string_pretty(value).map_err(|error| error.to_string())?;
    println!("{text}");
    Ok(())
}
