//! `glitchlab silence add|list|expire`: the silences of a running service, over HTTP with
//! `GLITCHLAB_TOKEN` (as `incident` does). Exit 1 with the service's error code and message when
//! it refuses.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use crate::app::cli::{call, http_client, print_json};

/// How long one request may take, connecting included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A silence's length when neither `--minutes` nor `--until` is given.
const DEFAULT_MINUTES: u64 = 60;

/// Flags of `silence`.
#[derive(Debug, clap::Args)]
pub struct SilenceArgs {
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
    pub command: SilenceCommand,
}

/// What to do with silences.
#[derive(Debug, clap::Subcommand)]
pub enum SilenceCommand {
    /// Quiet an app's signals (all, or those of `--signal` and `--label`) for a while: they open
    /// no incident and run no runbook.
    Add {
        /// The app whose signals to quiet.
        #[arg(long)]
        app: String,
        /// Only signals of this name.
        #[arg(long)]
        signal: Option<String>,
        /// Only signals carrying this label (`name=value`; repeat for more).
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// For how many minutes (at most 30 days; 60 when `--until` is not given either).
        #[arg(long, conflicts_with = "until")]
        minutes: Option<u64>,
        /// Until this RFC 3339 time.
        #[arg(long)]
        until: Option<String>,
        /// Why, for the next person on call.
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// The active silences, newest first, as a table.
    List {
        /// Expired ones too.
        #[arg(long)]
        all: bool,
    },
    /// End a silence now.
    Expire {
        /// Its id.
        id: String,
    },
}

/// `name=value` of `--label`.
fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!("`{text}`: a label is name=value")),
    }
}

/// Runs one `silence` subcommand; `Err` is the message to print before exit 1.
pub async fn run(args: SilenceArgs) -> Result<(), String> {
    let client = http_client(REQUEST_TIMEOUT)?;
    let base = format!("{}/v1/silences", args.url.trim_end_matches('/'));
    let silence = match args.command {
        SilenceCommand::Add {
            app,
            signal,
            labels,
            minutes,
            until,
            comment,
        } => {
            let labels: BTreeMap<String, String> = labels.into_iter().collect();
            let mut body = json!({
                "matchers": {"app": app, "signal": signal, "labels": labels},
                "comment": comment,
            });
            match until {
                Some(until) => body["ends_at"] = json!(until),
                None => body["minutes"] = json!(minutes.unwrap_or(DEFAULT_MINUTES)),
            }
            call(client.post(&base).json(&body), &base).await?
        }
        SilenceCommand::List { all } => {
            let url = format!("{base}?all={all}");
            let page = call(client.get(&url), &url).await?;
            if args.json {
                return print_json(&page);
            }
            for silence in page["silences"].as_array().into_iter().flatten() {
                println!("{}", line(silence));
            }
            return Ok(());
        }
        SilenceCommand::Expire { id } => {
            let url = format!("{base}/{id}");
            call(client.delete(&url), &url).await?
        }
    };
    if args.json {
        return print_json(&silence);
    }
    println!("{}", line(&silence));
    Ok(())
}

/// One silence on one line: id, end, creator, matchers, comment.
fn line(silence: &Value) -> String {
    let text = |value: &Value| value.as_str().unwrap_or("-").to_owned();
    let matchers = &silence["matchers"];
    let mut matched = Vec::new();
    for key in ["app", "signal"] {
        if let Some(value) = matchers[key].as_str() {
            matched.push(format!("{key}={value}"));
        }
    }
    for (name, value) in matchers["labels"].as_object().into_iter().flatten() {
        matched.push(format!("{name}={}", text(value)));
    }
    format!(
        "{}  until {}  by {:<12}  {}  {}",
        text(&silence["id"]),
        text(&silence["ends_at"]),
        text(&silence["created_by"]),
        matched.join(","),
        text(&silence["comment"])
    )
}
