//! `glitchlab silence add|list|expire`: the silences of a running service, over HTTP with
//! `GLITCHLAB_TOKEN` (as `incident` does). Exit 1 with the service's error code and message when
//! it refuses.

use serde_json::{json, Value};
use std::collections::BTreeMap;

use crate::app::cli::client::{CliError, Client, EXIT_OK};
use crate::app::cli::{print_json, ClientArgs};

/// A silence's length when neither `--minutes` nor `--until` is given.
const DEFAULT_MINUTES: u64 = 60;

/// Flags of `silence`.
#[derive(Debug, clap::Args)]
pub struct SilenceArgs {
    /// The service to ask and how to print.
    #[command(flatten)]
    pub client: ClientArgs,
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

/// Runs one `silence` subcommand; `Ok` is the exit code.
pub async fn run(args: SilenceArgs) -> Result<u8, CliError> {
    let client = Client::new(&args.client)?;
    let base = "/v1/silences";
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
            client.post(base, &body).await?
        }
        SilenceCommand::List { all } => {
            let page = client
                .get_with(base, &[("all", Some(all.to_string()))])
                .await?;
            if client.json {
                print_json(&page)?;
                return Ok(EXIT_OK);
            }
            for silence in page["silences"].as_array().into_iter().flatten() {
                anstream::println!("{}", line(silence));
            }
            return Ok(EXIT_OK);
        }
        SilenceCommand::Expire { id } => client.delete(&format!("{base}/{id}")).await?,
    };
    if client.json {
        print_json(&silence)?;
    } else {
        anstream::println!("{}", line(&silence));
    }
    Ok(EXIT_OK)
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
