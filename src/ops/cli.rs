//! `glitchlab ops deploy <app> [--commit SHA] [--url URL]`: requests a deploy from a running
//! service over HTTP and prints the record. Every request has a timeout; an error answer is a
//! clear message and a non-zero exit.

use std::time::Duration;

use serde_json::{json, Value};

use crate::cli::{OpsArgs, OpsCommand};

/// How long the request may take, connecting included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs one `ops` subcommand; `Err` is the message to print before exiting 1.
pub async fn run(args: OpsArgs) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|error| format!("cannot build an HTTP client: {error}"))?;
    let base = args.url.trim_end_matches('/');
    match args.command {
        OpsCommand::Deploy { app, commit } => {
            let body = json!({"app": app, "commit": commit, "trigger": "cli"});
            let response = client
                .post(format!("{base}/v1/deploys"))
                .json(&body)
                .send()
                .await
                .map_err(|error| format!("cannot reach {base}: {error}"))?;
            let status = response.status();
            let answer: Value = response
                .json()
                .await
                .map_err(|error| format!("the answer is not JSON: {error}"))?;
            let text = serde_json::to_string_pretty(&answer).map_err(|e| e.to_string())?;
            if !status.is_success() {
                return Err(format!("the service refused the deploy ({status}): {text}"));
            }
            println!("{text}");
            Ok(())
        }
    }
}
