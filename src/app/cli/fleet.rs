//! `glitchlab fleet list|pause|resume|drain`: the fleet of a running service, over HTTP with
//! `GLITCHLAB_TOKEN` (as `silence` does). `pause` and `resume` act on the whole fleet, or on one
//! factory with `--factory`; `drain` on one factory. Exit 1 with the service's error code and
//! message when it refuses.

use std::time::Duration;

use serde_json::{json, Value};

use crate::app::cli::{call, http_client, print_json};

/// How long one request may take, connecting included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Flags of `fleet`.
#[derive(Debug, clap::Args)]
pub struct FleetArgs {
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
    pub command: FleetCommand,
}

/// What to do with the fleet.
#[derive(Debug, clap::Subcommand)]
pub enum FleetCommand {
    /// The factories (slots, health, paused or draining) and the jobs waiting, as a table.
    List,
    /// Hold all claims (the kill switch), or one factory's with `--factory`.
    Pause {
        /// Only this factory.
        #[arg(long)]
        factory: Option<String>,
    },
    /// Take jobs again: the whole fleet, or one factory (ends its pause or drain).
    Resume {
        /// Only this factory.
        #[arg(long)]
        factory: Option<String>,
    },
    /// Let a factory finish what it runs and take no new job (until resumed).
    Drain {
        /// The factory.
        factory: String,
    },
}

/// Runs one `fleet` subcommand; `Err` is the message to print before exit 1.
pub async fn run(args: FleetArgs) -> Result<(), String> {
    let client = http_client(REQUEST_TIMEOUT)?;
    let base = format!("{}/v1/fleet", args.url.trim_end_matches('/'));
    let url = match &args.command {
        FleetCommand::List => {
            let fleet = call(client.get(&base), &base).await?;
            if args.json {
                return print_json(&fleet);
            }
            print!("{}", table(&fleet));
            return Ok(());
        }
        FleetCommand::Pause { factory: None } => format!("{base}/pause"),
        FleetCommand::Resume { factory: None } => format!("{base}/resume"),
        FleetCommand::Pause {
            factory: Some(name),
        } => format!("{base}/factories/{name}/pause"),
        FleetCommand::Resume {
            factory: Some(name),
        } => format!("{base}/factories/{name}/resume"),
        FleetCommand::Drain { factory } => format!("{base}/factories/{factory}/drain"),
    };
    let answer = call(client.post(&url).json(&json!({})), &url).await?;
    if args.json {
        return print_json(&answer);
    }
    match answer.get("factory").and_then(Value::as_str) {
        Some(name) => println!("{name}: {}", text(&answer["told"])),
        None => println!("fleet paused: {}", answer["paused"]),
    }
    Ok(())
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or("-").to_owned()
}

/// The fleet as text: a header line, one line per factory, then the jobs waiting.
fn table(fleet: &Value) -> String {
    if fleet["configured"] != true {
        return "no fleet: this service runs everything in-process\n".into();
    }
    let mut out = format!(
        "fleet {}\n{:<20} {:>5} {:>5} {:<9} {:<8} {}\n",
        if fleet["paused"] == true {
            "paused"
        } else {
            "taking jobs"
        },
        "factory",
        "used",
        "slots",
        "told",
        "health",
        "why"
    );
    for factory in fleet["factories"].as_array().into_iter().flatten() {
        let used = factory["running"].as_array().map_or(0, Vec::len);
        let health = if factory["healthy"] == false {
            "stalled"
        } else {
            "ok"
        };
        out.push_str(&format!(
            "{:<20} {:>5} {:>5} {:<9} {:<8} {}\n",
            text(&factory["name"]),
            used,
            factory["slots"].as_u64().unwrap_or(0),
            text(&factory["told"]),
            health,
            factory["unhealthy"].as_str().unwrap_or("")
        ));
    }
    let waiting = fleet["waiting"].as_array().map_or(0, Vec::len);
    out.push_str(&format!("{waiting} job(s) waiting for a factory\n"));
    for job in fleet["waiting"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  task {}  since {}  {}\n",
            text(&job["task_id"]),
            text(&job["since"]),
            job["reason"].as_str().unwrap_or("")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_health_and_what_each_factory_is_told() {
        let fleet = json!({
            "configured": true, "paused": false,
            "factories": [
                {"name": "a", "slots": 2, "running": [{}], "told": "draining", "healthy": true},
                {"name": "b", "slots": 8, "running": [], "told": "active", "healthy": false,
                 "unhealthy": "8 free slot(s) and no pull for 12s"},
            ],
            "waiting": [{"task_id": "t1", "since": "now", "reason": "no factory with has:gpu"}],
        });
        let text = table(&fleet);
        assert!(text.contains("draining"), "{text}");
        assert!(
            text.contains("stalled") && text.contains("no pull for 12s"),
            "{text}"
        );
        assert!(
            text.contains("1 job(s) waiting") && text.contains("has:gpu"),
            "{text}"
        );
        assert!(table(&json!({"configured": false})).contains("no fleet"));
    }
}
