//! `glitchlab ops deploy <app> [--commit SHA]`: requests a deploy from a running service over
//! HTTP (the shared client context: `GLITCHLAB_URL`, `GLITCHLAB_TOKEN`, `--json`) and prints the
//! record's line, or with `--json` the record.

use serde_json::json;

use crate::app::cli::client::{CliError, Client, EXIT_OK};
use crate::app::cli::{print_json, records, OpsArgs, OpsCommand};

/// Runs one `ops` subcommand; `Ok` is the exit code.
pub async fn run(args: OpsArgs) -> Result<u8, CliError> {
    let client = Client::new(&args.client)?;
    match args.command {
        OpsCommand::Deploy { app, commit, wait } => {
            let body = json!({"app": app, "commit": commit, "trigger": "cli"});
            let record = client.post("/v1/deploys", &body).await?;
            if wait {
                let id = record["id"].as_str().unwrap_or_default().to_owned();
                return records::wait_deploy(&client, &id).await;
            }
            if client.json {
                print_json(&record)?;
            } else {
                anstream::println!("{}", records::line(&record));
            }
            Ok(EXIT_OK)
        }
    }
}
