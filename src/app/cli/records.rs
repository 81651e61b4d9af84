//! `glitchlab deploy list|show|approve|reject` and `glitchlab incident
//! list|show|approve|reject|ack|resolve|snooze`:
//! the ops records of a running service, over HTTP through the shared client context. An id may
//! be the full one, the web page's short id (its last 8 characters) or any unique prefix. Exit 1
//! with the service's error code and message when it refuses; 64 for an unknown `--status`.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::app::cli::client::{
    status_style, styled, CliError, Client, EXIT_CANCELLED, EXIT_FAILED, EXIT_OK,
};
use crate::app::cli::{print_json, ClientArgs};

/// The statuses a deploy can be in (`deploy list --status`).
const DEPLOY_STATUSES: [&str; 7] = [
    "awaiting_approval",
    "queued",
    "running",
    "healthy",
    "rolled_back",
    "failed",
    "rejected",
];
/// The statuses an incident can be in (`incident list --status`).
const INCIDENT_STATUSES: [&str; 4] = ["open", "resolved", "needs_human", "acknowledged"];

/// Flags of `deploy` and `incident`.
#[derive(Debug, clap::Args)]
pub struct RecordArgs {
    /// The service to ask and how to print.
    #[command(flatten)]
    pub client: ClientArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: RecordCommand,
}

/// What to do with deploys or incidents.
#[derive(Debug, clap::Subcommand)]
pub enum RecordCommand {
    /// Newest first, as a table.
    List {
        /// Only this app's.
        #[arg(long)]
        app: Option<String>,
        /// Only in this status (deploys: awaiting_approval, queued, running, healthy,
        /// rolled_back, failed, rejected; incidents: open, resolved, needs_human, acknowledged).
        #[arg(long)]
        status: Option<String>,
    },
    /// One record.
    Show {
        /// Its id.
        id: String,
    },
    /// Pass its gate (a deploy awaiting approval, an incident's gated step: the step it shows
    /// now is printed and approved, or refused if it is not the one `--digest` names).
    Approve {
        /// Its id.
        id: String,
        /// A note for the record (deploys).
        #[arg(long)]
        comment: Option<String>,
        /// Incidents: the digest of the step you looked at (its `awaiting.digest`).
        #[arg(long)]
        digest: Option<String>,
        /// Deploys: follow it until it ends (as `ops deploy --wait`).
        #[arg(long)]
        wait: bool,
    },
    /// Incidents: you have it (`needs_human` becomes `acknowledged`).
    Ack {
        /// Its id.
        id: String,
    },
    /// Incidents: it is over; the next failure opens a new incident.
    Resolve {
        /// Its id.
        id: String,
    },
    /// Incidents: count repeats quietly for a while.
    Snooze {
        /// Its id.
        id: String,
        /// For how many minutes (at most 7 days).
        #[arg(long, default_value_t = 60)]
        minutes: u64,
    },
    /// Refuse it at its gate.
    Reject {
        /// Its id.
        id: String,
        /// A note for the record (deploys).
        #[arg(long)]
        comment: Option<String>,
    },
}

impl RecordCommand {
    /// The record id the command acts on (`list` has none).
    fn id(&self) -> Option<&str> {
        match self {
            RecordCommand::List { .. } => None,
            RecordCommand::Show { id }
            | RecordCommand::Approve { id, .. }
            | RecordCommand::Ack { id }
            | RecordCommand::Resolve { id }
            | RecordCommand::Snooze { id, .. }
            | RecordCommand::Reject { id, .. } => Some(id),
        }
    }
}

/// Which records: the route under `/v1` and the list's key.
#[derive(Debug, Clone, Copy)]
pub enum Records {
    /// `/v1/deploys`.
    Deploys,
    /// `/v1/incidents`.
    Incidents,
}

impl Records {
    fn path(self) -> &'static str {
        match self {
            Records::Deploys => "deploys",
            Records::Incidents => "incidents",
        }
    }

    /// The statuses a record of this kind can be in.
    fn statuses(self) -> &'static [&'static str] {
        match self {
            Records::Deploys => &DEPLOY_STATUSES,
            Records::Incidents => &INCIDENT_STATUSES,
        }
    }
}

/// Runs one `deploy` or `incident` subcommand; `Ok` is the exit code.
pub async fn run(records: Records, args: RecordArgs) -> Result<u8, CliError> {
    let client = Client::new(&args.client)?;
    let base = format!("/v1/{}", records.path());
    if let RecordCommand::List { app, status } = args.command {
        return list(&client, records, app, status).await;
    }
    let Some(given) = args.command.id() else {
        return Ok(EXIT_OK);
    };
    let id = client.resolve(records.path(), given).await?;
    match args.command {
        // Answered above.
        RecordCommand::List { .. } => Ok(EXIT_OK),
        RecordCommand::Show { .. } => {
            print_json(&client.get(&format!("{base}/{id}")).await?)?;
            Ok(EXIT_OK)
        }
        RecordCommand::Approve {
            comment,
            digest,
            wait,
            ..
        } => match records {
            Records::Deploys => {
                let code = decide(&client, &base, &id, "approve", comment).await?;
                if wait {
                    return wait_deploy(&client, &id).await;
                }
                Ok(code)
            }
            Records::Incidents => approve_step(&client, &base, &id, digest).await,
        },
        RecordCommand::Ack { .. } => incident_act(records, &client, &base, &id, "ack", None).await,
        RecordCommand::Resolve { .. } => {
            incident_act(records, &client, &base, &id, "resolve", None).await
        }
        RecordCommand::Snooze { minutes, .. } => {
            let body = json!({ "minutes": minutes });
            incident_act(records, &client, &base, &id, "snooze", Some(body)).await
        }
        RecordCommand::Reject { comment, .. } => {
            decide(&client, &base, &id, "reject", comment).await
        }
    }
}

/// `list`: newest first, one line each; an unknown `--status` is a usage error, and the filter
/// holds for deploys too (the service lists them unfiltered by status).
async fn list(
    client: &Client,
    records: Records,
    app: Option<String>,
    status: Option<String>,
) -> Result<u8, CliError> {
    if let Some(status) = &status {
        if !records.statuses().contains(&status.as_str()) {
            return Err(CliError::Usage(format!(
                "unknown --status `{status}`; one of: {}",
                records.statuses().join(", ")
            )));
        }
    }
    let pairs = [("app", app), ("status", status.clone())];
    let mut page = client
        .get_with(&format!("/v1/{}", records.path()), &pairs)
        .await?;
    if let (Some(wanted), Some(list)) = (&status, page[records.path()].as_array_mut()) {
        list.retain(|record| record["status"] == wanted.as_str());
    }
    if client.json {
        print_json(&page)?;
        return Ok(EXIT_OK);
    }
    for record in page[records.path()].as_array().into_iter().flatten() {
        anstream::println!("{}", line(record));
    }
    Ok(EXIT_OK)
}

/// Approves or rejects a deploy at its gate.
async fn decide(
    client: &Client,
    base: &str,
    id: &str,
    action: &str,
    comment: Option<String>,
) -> Result<u8, CliError> {
    let body = match comment {
        Some(comment) => json!({ "comment": comment }),
        None => json!({}),
    };
    let record = client.post(&format!("{base}/{id}/{action}"), &body).await?;
    print_record(client, &record)
}

/// The record as JSON (`--json`) or as its line.
fn print_record(client: &Client, record: &Value) -> Result<u8, CliError> {
    if client.json {
        print_json(record)?;
    } else {
        anstream::println!("{}", line(record));
    }
    Ok(EXIT_OK)
}

/// How often `--wait` looks at a deploy.
const DEPLOY_POLL: Duration = Duration::from_millis(500);
/// How long `--wait` follows a deploy at most (its stages have their own timeouts, far less).
const DEPLOY_WAIT_MAX: Duration = Duration::from_secs(60 * 60);

/// Follows deploy `id` until it ends or waits for a human, printing each status it moves to;
/// exit 0 `healthy`, 2 `rolled_back` or `failed`, 4 `rejected`, 0 `awaiting_approval` (the
/// gate is the next step, not a failure). With `--json`, the last record only.
pub(crate) async fn wait_deploy(client: &Client, id: &str) -> Result<u8, CliError> {
    let started = Instant::now();
    let mut last = String::new();
    loop {
        let record = client.get(&format!("/v1/deploys/{id}")).await?;
        let status = record["status"].as_str().unwrap_or("?").to_owned();
        if status != last && !client.json {
            anstream::println!(
                "[{:>5.1}s] {}",
                started.elapsed().as_secs_f64(),
                line(&record)
            );
        }
        let code = match status.as_str() {
            "healthy" | "awaiting_approval" => Some(EXIT_OK),
            "rolled_back" | "failed" => Some(EXIT_FAILED),
            "rejected" => Some(EXIT_CANCELLED),
            _ => None,
        };
        if let Some(code) = code {
            if client.json {
                print_json(&record)?;
            }
            return Ok(code);
        }
        if started.elapsed() > DEPLOY_WAIT_MAX {
            return Err(CliError::Failed(format!(
                "deploy {id} is still {status} after {} s",
                DEPLOY_WAIT_MAX.as_secs()
            )));
        }
        last = status;
        tokio::time::sleep(DEPLOY_POLL).await;
    }
}

/// Approves the gated step incident `id` shows now (printed first), or the one `digest` names.
async fn approve_step(
    client: &Client,
    base: &str,
    id: &str,
    digest: Option<String>,
) -> Result<u8, CliError> {
    let incident = client.get(&format!("{base}/{id}")).await?;
    let mut shown = incident["awaiting"].clone();
    if shown.is_null() {
        return Err(CliError::Failed(format!(
            "incident {id} waits for no approval"
        )));
    }
    eprintln!(
        "approving step {} `{}` of runbook {} (digest {})",
        shown["step"],
        shown["action"].as_str().unwrap_or("?"),
        incident["runbook"].as_str().unwrap_or("?"),
        shown["digest"].as_str().unwrap_or("?")
    );
    if let Some(digest) = digest {
        shown["digest"] = json!(digest);
    }
    let record = client.post(&format!("{base}/{id}/approve"), &shown).await?;
    print_record(client, &record)
}

/// `ack`, `resolve` or `snooze` of an incident.
async fn incident_act(
    records: Records,
    client: &Client,
    base: &str,
    id: &str,
    act: &str,
    body: Option<Value>,
) -> Result<u8, CliError> {
    if !matches!(records, Records::Incidents) {
        return Err(CliError::Usage(format!("`{act}` is for incidents")));
    }
    let body = body.unwrap_or(json!({}));
    let record = client.post(&format!("{base}/{id}/{act}"), &body).await?;
    print_record(client, &record)
}

/// One record on one line: id, app, status (coloured on a terminal), then what says most about
/// it.
pub(crate) fn line(record: &Value) -> String {
    let text = |key: &str| record[key].as_str().unwrap_or("-").to_owned();
    let detail = if record.get("signal_count").is_some() {
        format!(
            "signals={} runbook={}",
            record["signal_count"],
            text("runbook")
        )
    } else {
        format!("commit={} trigger={}", text("commit"), text("trigger"))
    };
    let status = text("status");
    format!(
        "{}  {:<16}  {}  {detail}",
        text("id"),
        text("app"),
        styled(&format!("{status:<18}"), status_style(&status))
    )
}
