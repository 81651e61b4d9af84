//! `glitchlab fleet list|pause|resume|drain`: the fleet of a running service, over HTTP with
//! `GLITCHLAB_TOKEN` (as `silence` does). `pause` and `resume` act on the whole fleet, or on one
//! factory with `--factory`; `drain` on one factory. Exit 1 with the service's error code and
//! message when it refuses.

use serde_json::{json, Value};

use crate::app::cli::client::{CliError, Client, EXIT_OK};
use crate::app::cli::{print_json, ClientArgs};

/// Flags of `fleet`.
#[derive(Debug, clap::Args)]
pub struct FleetArgs {
    /// The service to ask and how to print.
    #[command(flatten)]
    pub client: ClientArgs,
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

/// Runs one `fleet` subcommand; `Ok` is the exit code.
pub async fn run(args: FleetArgs) -> Result<u8, CliError> {
    let client = Client::new(&args.client)?;
    let base = "/v1/fleet";
    let path = match &args.command {
        FleetCommand::List => {
            let fleet = client.get(base).await?;
            if client.json {
                print_json(&fleet)?;
            } else {
                anstream::print!("{}", table(&fleet));
            }
            return Ok(EXIT_OK);
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
    let answer = client.post(&path, &json!({})).await?;
    if client.json {
        print_json(&answer)?;
        return Ok(EXIT_OK);
    }
    match answer.get("factory").and_then(Value::as_str) {
        Some(name) => anstream::println!("{name}: {}", text(&answer["told"])),
        None => anstream::println!("fleet paused: {}", answer["paused"]),
    }
    Ok(EXIT_OK)
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
