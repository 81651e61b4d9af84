//! `glitchlab ops deploy <app> [--commit SHA] [--url URL]`: requests a deploy from a running
//! service over HTTP and prints the record. Every request has a timeout; an error answer is a
//! clear message and a non-zero exit.

use std::time::Duration;

use serde_json::json;

use crate::app::cli::{call, http_client, print_json, OpsArgs, OpsCommand};

/// How long the request may take, connecting included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs one `ops` subcommand; `Err` is the message to print before exiting 1.
pub async fn run(args: OpsArgs) -> Result<(), String> {
    let client = http_client(REQUEST_TIMEOUT)?;
    let base = args.url.trim_end_matches('/');
    match args.command {
        OpsCommand::Deploy { app, commit } => {
            let body = json!({"app": app, "commit": commit, "trigger": "cli"});
            let url = format!("{base}/v1/deploys");
            let record = call(client.post(&url).json(&body), &url).await?;
            print_json(&record)
        }
    }
}
