//! `glitchlab deploy list|show|approve|reject` and `glitchlab incident
//! list|show|approve|reject|ack|resolve|snooze`:
//! the ops records of a running service, over HTTP with `GLITCHLAB_TOKEN`. Exit 1 with the
//! service's error code and message when it refuses.

use std::time::Duration;

use serde_json::{json, Value};

use crate::app::cli::{call, http_client, print_json};

/// How long one request may take, connecting included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Flags of `deploy` and `incident`.
#[derive(Debug, clap::Args)]
pub struct RecordArgs {
    /// Base URL of the running service.
    #[arg(
        long,
        global = true,
        env = "GLITCHLAB_URL",
        default_value = "http://127.0.0.1:7700"
    )]
    pub url: String,
    /// Print the service's JSON instead of a table or a line.
    #[arg(long, global = true)]
    pub json: bool,
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
        /// Only in this status.
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
}

/// Runs one `deploy` or `incident` subcommand; `Err` is the message to print before exit 1.
pub async fn run(records: Records, args: RecordArgs) -> Result<(), String> {
    let client = http_client(REQUEST_TIMEOUT)?;
    let base = format!("{}/v1/{}", args.url.trim_end_matches('/'), records.path());
    match args.command {
        RecordCommand::List { app, status } => {
            let mut url = reqwest::Url::parse(&base).map_err(|e| format!("bad --url: {e}"))?;
            for (key, value) in [("app", app), ("status", status)] {
                if let Some(value) = value {
                    url.query_pairs_mut().append_pair(key, &value);
                }
            }
            let page = call(client.get(url.clone()), url.as_str()).await?;
            if args.json {
                return print_json(&page);
            }
            for record in page[records.path()].as_array().into_iter().flatten() {
                println!("{}", line(record));
            }
            Ok(())
        }
        RecordCommand::Show { id } => {
            let url = format!("{base}/{id}");
            print_json(&call(client.get(&url), &url).await?)
        }
        RecordCommand::Approve {
            id,
            comment,
            digest,
        } => match records {
            Records::Deploys => decide(&client, &base, &id, "approve", comment, args.json).await,
            Records::Incidents => approve_step(&client, &base, &id, digest, args.json).await,
        },
        RecordCommand::Ack { id } => {
            incident_act(records, &client, &base, &id, "ack", None, args.json).await
        }
        RecordCommand::Resolve { id } => {
            incident_act(records, &client, &base, &id, "resolve", None, args.json).await
        }
        RecordCommand::Snooze { id, minutes } => {
            let body = json!({ "minutes": minutes });
            incident_act(
                records,
                &client,
                &base,
                &id,
                "snooze",
                Some(body),
                args.json,
            )
            .await
        }
        RecordCommand::Reject { id, comment } => {
            decide(&client, &base, &id, "reject", comment, args.json).await
        }
    }
}

async fn decide(
    client: &reqwest::Client,
    base: &str,
    id: &str,
    action: &str,
    comment: Option<String>,
    json_out: bool,
) -> Result<(), String> {
    let url = format!("{base}/{id}/{action}");
    let mut request = client.post(&url);
    if let Some(comment) = comment {
        request = request.json(&json!({"comment": comment}));
    }
    let record = call(request, &url).await?;
    if json_out {
        return print_json(&record);
    }
    println!("{}", line(&record));
    Ok(())
}

/// Approves the gated step incident `id` shows now (printed first), or the one `digest` names.
async fn approve_step(
    client: &reqwest::Client,
    base: &str,
    id: &str,
    digest: Option<String>,
    json_out: bool,
) -> Result<(), String> {
    let url = format!("{base}/{id}");
    let incident = call(client.get(&url), &url).await?;
    let mut shown = incident["awaiting"].clone();
    if shown.is_null() {
        return Err(format!("incident {id} waits for no approval"));
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
    let url = format!("{base}/{id}/approve");
    let record = call(client.post(&url).json(&shown), &url).await?;
    if json_out {
        return print_json(&record);
    }
    println!("{}", line(&record));
    Ok(())
}

/// `ack`, `resolve` or `snooze` of an incident.
async fn incident_act(
    records: Records,
    client: &reqwest::Client,
    base: &str,
    id: &str,
    act: &str,
    body: Option<Value>,
    json_out: bool,
) -> Result<(), String> {
    if !matches!(records, Records::Incidents) {
        return Err(format!("`{act}` is for incidents"));
    }
    let url = format!("{base}/{id}/{act}");
    let record = call(client.post(&url).json(&body.unwrap_or(json!({}))), &url).await?;
    if json_out {
        return print_json(&record);
    }
    println!("{}", line(&record));
    Ok(())
}

/// One record on one line: id, app, status, then what says most about it.
fn line(record: &Value) -> String {
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
    format!(
        "{}  {:<16}  {:<18}  {detail}",
        text("id"),
        text("app"),
        text("status")
    )
}
