//! The command line: `glitchlab serve [--bind ADDR] [--data-dir DIR] [--config FILE]`, and
//! `glitchlab ledger [--url URL] balance|history|audit` and `glitchlab ops deploy <app>
//! [--commit SHA] [--url URL]` against a running service.

use std::net::SocketAddr;
use std::path::PathBuf;

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
