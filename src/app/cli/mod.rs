//! The command line: `glitchlab serve [--bind ADDR] [--data-dir DIR] [--config FILE]`, and
//! against a running service `glitchlab ledger [--url URL] balance|history|audit`,
//! `glitchlab ops deploy <app> [--commit SHA]`, `glitchlab task ...` and `glitchlab tree`.

pub mod fleet;
pub mod ledger;
pub mod ops;
pub mod records;
pub mod silence;
pub mod task;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

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
    /// Tasks of a running service: submit (and follow), list, show, logs, act.
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
        /// Base URL of the running service.
        #[arg(long, env = "GLITCHLAB_URL", default_value = "http://127.0.0.1:7700")]
        url: String,
        /// Print the service's JSON.
        #[arg(long)]
        json: bool,
    },
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
    /// Base URL of the running service.
    #[arg(long, global = true, default_value = "http://127.0.0.1:7700")]
    pub url: String,
    /// What to do.
    #[command(subcommand)]
    pub command: OpsCommand,
}

/// Subcommands of `ops`.
#[derive(Debug, Subcommand)]
pub enum OpsCommand {
    /// Request a deploy of an app (prints the deploy record as JSON).
    Deploy {
        /// The app of `ops.yaml`.
        app: String,
        /// The commit to deploy (default: the app's branch head).
        #[arg(long)]
        commit: Option<String>,
    },
}

/// Flags of `ledger`.
#[derive(Debug, clap::Args)]
pub struct LedgerArgs {
    /// Base URL of the running service.
    #[arg(long, global = true, default_value = "http://127.0.0.1:7700")]
    pub url: String,
    /// What to read.
    #[command(subcommand)]
    pub command: LedgerCommand,
}

/// Subcommands of `ledger`.
#[derive(Debug, Subcommand)]
pub enum LedgerCommand {
    /// An account's totals, balance and available amount (JSON).
    Balance {
        /// Account id, e.g. `user:local`.
        account: String,
    },
    /// An account's transfers, newest first (a table; `--json` for the raw page).
    History {
        /// Account id.
        account: String,
        /// Transfers per page (1..=500).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// `next_cursor` of the previous page.
        #[arg(long)]
        cursor: Option<String>,
        /// Print the page as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Recompute every balance from the transfers (JSON); exits 1 unless balanced.
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
