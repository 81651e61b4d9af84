//! The command line: `glitchlab serve [--bind ADDR] [--data-dir DIR] [--config FILE]`.

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
}
