//! `glitchlab task submit|list|show|watch|logs|cancel|retry|approve|reject` and `glitchlab tree`:
//! the operator's commands against a running service, over HTTP with `GLITCHLAB_TOKEN`. Every
//! request has a timeout; `--json` prints what the service answered. `submit --wait` and `watch`
//! also print the running commands' live output (the task stream's `run.output` messages), each
//! line as `  <persona>| <line>`.
//!
//! Exit codes: 0 success (for `submit --wait`: the task is `done`); 1 a usage, connection or
//! error answer; 2 the task ended `failed`; 3 `dead_letter`; 4 `cancelled`.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use tokio_util::task::AbortOnDropHandle;

use crate::app::cli::{call, http_client, print_json};

/// How long one request may take, connecting included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How often `--wait` looks at the task.
const WAIT_POLL: Duration = Duration::from_millis(500);
/// How long the live output stream of `--wait` and `watch` may stay open.
const OUTPUT_STREAM_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);
/// How long the end of the live output may lag behind the task's end before it is given up.
const OUTPUT_LINGER: Duration = Duration::from_secs(2);
/// Bytes of one unfinished SSE message kept at most (the service's are a few KiB).
const SSE_MESSAGE_BYTES_MAX: usize = 1024 * 1024;
/// Exit code of a task that ended `failed`.
pub const EXIT_FAILED: u8 = 2;
/// Exit code of a task that ended `dead_letter`.
pub const EXIT_DEAD_LETTER: u8 = 3;
/// Exit code of a task that ended `cancelled`.
pub const EXIT_CANCELLED: u8 = 4;

/// Flags of `task`.
#[derive(Debug, clap::Args)]
pub struct TaskArgs {
    /// Base URL of the running service.
    #[arg(
        long,
        global = true,
        env = "GLITCHLAB_URL",
        default_value = "http://127.0.0.1:7700"
    )]
    pub url: String,
    /// Print the service's JSON instead of a table or lines.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: TaskCommand,
}

/// Subcommands of `task`.
#[derive(Debug, clap::Subcommand)]
pub enum TaskCommand {
    /// Submit a task; prints its id (with `--wait`, follows it to its end).
    Submit(Box<SubmitArgs>),
    /// Tasks, newest first, as a table.
    List {
        /// Only tasks in this status (`queued`, `running`, `done`, `failed`, ...).
        #[arg(long)]
        status: Option<String>,
        /// Only tasks on this repository (its canonical path).
        #[arg(long)]
        repo: Option<String>,
        /// Only tasks of this kind.
        #[arg(long)]
        kind: Option<String>,
    },
    /// One task.
    Show {
        /// Task id.
        id: String,
    },
    /// Follow a task to its end: its progress and its commands' live output; the exit code
    /// says how it ended (as `submit --wait`).
    Watch {
        /// Task id.
        id: String,
    },
    /// A task's events, oldest first, one per line.
    Logs {
        /// Task id.
        id: String,
    },
    /// Cancel a task.
    Cancel {
        /// Task id.
        id: String,
    },
    /// Re-queue a failed or dead-lettered task.
    Retry {
        /// Task id.
        id: String,
        /// `implement`: a fresh round of attempts (from the current base when the branch is
        /// behind it); `deliver`: the branch as it is now goes to the merge queue. Absent: where
        /// the failure says (a conflict or a failure on the base re-implements).
        #[arg(long, value_parser = ["implement", "deliver"])]
        from: Option<String>,
    },
    /// Pass a task's approval gate.
    Approve {
        /// Task id.
        id: String,
        /// A note for the record.
        #[arg(long)]
        comment: Option<String>,
    },
    /// Refuse a task at its approval gate.
    Reject {
        /// Task id.
        id: String,
        /// A note for the record.
        #[arg(long)]
        comment: Option<String>,
    },
}

/// Flags of `task submit`.
#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    /// Absolute path of the git repository.
    #[arg(long)]
    pub repo: String,
    /// Short name of the work.
    #[arg(long)]
    pub title: String,
    /// Command that must pass before delivery.
    #[arg(long)]
    pub verify: String,
    /// What to do.
    #[arg(long, conflicts_with = "description_file")]
    pub description: Option<String>,
    /// What to do, read from a file.
    #[arg(long)]
    pub description_file: Option<std::path::PathBuf>,
    /// Pipeline template (default `feature`).
    #[arg(long)]
    pub kind: Option<String>,
    /// `critical`, `high`, `medium` (default) or `low`.
    #[arg(long)]
    pub priority: Option<String>,
    /// A task that must be `done` first (repeatable).
    #[arg(long = "dep")]
    pub deps: Vec<String>,
    /// Patch's engine: this shell command.
    #[arg(long)]
    pub patch_cmd: Option<String>,
    /// Planner's engine: this shell command.
    #[arg(long)]
    pub plan_cmd: Option<String>,
    /// `merge` (default), `branch` or `pull_request` (GitHub; see docs/github.md).
    #[arg(long)]
    pub delivery: Option<String>,
    /// `--delivery pull_request`: the GitHub repository, `owner/name` (default: from an
    /// `https://…/owner/name(.git)` `--repo`).
    #[arg(long)]
    pub gh_repo: Option<String>,
    /// `--delivery pull_request`: `auto` (default: merged when green) or `none` (left open).
    #[arg(long)]
    pub merge: Option<String>,
    /// Follow the task until it ends; the exit code says how it ended.
    #[arg(long)]
    pub wait: bool,
}

/// Runs one `task` subcommand; `Ok` is the exit code, `Err` the message to print before exit 1.
pub async fn run(args: TaskArgs) -> Result<u8, String> {
    let client = http_client(REQUEST_TIMEOUT)?;
    let base = args.url.trim_end_matches('/').to_owned();
    let tasks = format!("{base}/v1/tasks");
    match args.command {
        TaskCommand::Submit(submit) => {
            let wait = submit.wait;
            let body = submission(*submit)?;
            let task = call(client.post(&tasks).json(&body), &tasks).await?;
            let id = task["id"].as_str().unwrap_or_default().to_owned();
            if args.json && !wait {
                print_json(&task)?;
            } else {
                println!("{id}");
            }
            if !wait {
                return Ok(0);
            }
            follow(&client, &base, &id, args.json).await
        }
        TaskCommand::List { status, repo, kind } => {
            let mut url =
                reqwest::Url::parse(&tasks).map_err(|e| format!("bad --url `{base}`: {e}"))?;
            for (key, value) in [("status", status), ("repo", repo), ("kind", kind)] {
                if let Some(value) = value {
                    url.query_pairs_mut().append_pair(key, &value);
                }
            }
            let page = call(client.get(url.clone()), url.as_str()).await?;
            if args.json {
                print_json(&page)?;
            } else {
                print_table(&page);
            }
            Ok(0)
        }
        TaskCommand::Show { id } => {
            let url = format!("{tasks}/{id}");
            print_json(&call(client.get(&url), &url).await?)?;
            Ok(0)
        }
        TaskCommand::Watch { id } => follow(&client, &base, &id, args.json).await,
        TaskCommand::Logs { id } => {
            let url = format!("{tasks}/{id}/events");
            let page = call(client.get(&url), &url).await?;
            if args.json {
                print_json(&page)?;
            } else {
                for event in page["events"].as_array().into_iter().flatten() {
                    println!("{}", event_line(event));
                }
            }
            Ok(0)
        }
        TaskCommand::Cancel { id } => act(&client, &tasks, &id, "cancel", None, args.json).await,
        TaskCommand::Retry { id, from } => {
            let url = format!("{tasks}/{id}/retry");
            let body = match &from {
                Some(from) => json!({ "from": from }),
                None => json!({}),
            };
            let task = call(client.post(&url).json(&body), &url).await?;
            if args.json {
                print_json(&task)?;
            } else {
                println!("{id} {}", task["status"].as_str().unwrap_or("?"));
            }
            Ok(0)
        }
        TaskCommand::Approve { id, comment } => {
            act(&client, &tasks, &id, "approve", comment, args.json).await
        }
        TaskCommand::Reject { id, comment } => {
            act(&client, &tasks, &id, "reject", comment, args.json).await
        }
    }
}

/// `glitchlab tree`: the supervision tree, one actor per line.
pub async fn tree(url: &str, json_out: bool) -> Result<u8, String> {
    let client = http_client(REQUEST_TIMEOUT)?;
    let url = format!("{}/v1/actors", url.trim_end_matches('/'));
    let actors = call(client.get(&url), &url).await?;
    if json_out {
        print_json(&actors)?;
        return Ok(0);
    }
    let list = actors["actors"].as_array().cloned().unwrap_or_default();
    let line = |a: &Value| {
        format!(
            "{} [{}, {} restarts]",
            a["name"].as_str().unwrap_or("?"),
            a["status"].as_str().unwrap_or("?"),
            a["restarts"]
        )
    };
    for root in list.iter().filter(|a| a["parent"].is_null()) {
        println!("{}", line(root));
        let name = &root["name"];
        for child in list.iter().filter(|a| a["parent"] == *name) {
            println!("  {}", line(child));
        }
    }
    Ok(0)
}

fn submission(args: SubmitArgs) -> Result<Value, String> {
    let description = match (args.description, args.description_file) {
        (Some(text), _) => text,
        (None, Some(file)) => std::fs::read_to_string(&file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?,
        (None, None) => String::new(),
    };
    let mut body = json!({
        "title": args.title,
        "description": description,
        "repo": args.repo,
        "verify": args.verify,
    });
    let optional = [
        ("kind", args.kind),
        ("priority", args.priority),
        ("delivery", args.delivery),
    ];
    for (key, value) in optional {
        if let Some(value) = value {
            body[key] = json!(value);
        }
    }
    if !args.deps.is_empty() {
        body["deps"] = json!(args.deps);
    }
    let pull_request = [("repo", args.gh_repo), ("merge", args.merge)];
    for (key, value) in pull_request {
        if let Some(value) = value {
            body["pull_request"][key] = json!(value);
        }
    }
    let mut engines = serde_json::Map::new();
    if let Some(command) = args.patch_cmd {
        engines.insert("patch".into(), json!({"kind": "shell", "command": command}));
    }
    if let Some(command) = args.plan_cmd {
        engines.insert(
            "planner".into(),
            json!({"kind": "shell", "command": command}),
        );
    }
    if !engines.is_empty() {
        body["engines"] = Value::Object(engines);
    }
    Ok(body)
}

/// Follows a task until it ends, printing a line each time its status, stage or attempt moves;
/// the exit code says how it ended.
async fn follow(
    client: &reqwest::Client,
    base: &str,
    id: &str,
    json_out: bool,
) -> Result<u8, String> {
    let url = format!("{base}/v1/tasks/{id}");
    let started = Instant::now();
    let mut last = String::new();
    let printer = (!json_out).then(|| {
        let stream = format!("{url}/events/stream");
        AbortOnDropHandle::new(tokio::spawn(print_output(client.clone(), stream)))
    });
    loop {
        let task = call(client.get(&url), &url).await?;
        let status = task["status"].as_str().unwrap_or("?").to_owned();
        let held = task["merge"]["held"]
            .as_str()
            .map(|why| format!(" held: {why}"))
            .unwrap_or_default();
        let pull_request = pull_request_line(&task["pull_request"]);
        let now = format!(
            "{status} stage={} attempt={}{held}{pull_request}",
            task["stage"].as_str().unwrap_or("-"),
            task["attempts"]
        );
        if now != last && !json_out {
            println!("[{:>5.1}s] {now}", started.elapsed().as_secs_f64());
            last = now;
        }
        let code = match status.as_str() {
            "done" => Some(0),
            "failed" => Some(EXIT_FAILED),
            "dead_letter" => Some(EXIT_DEAD_LETTER),
            "cancelled" => Some(EXIT_CANCELLED),
            _ => None,
        };
        if let Some(code) = code {
            if let Some(printer) = printer {
                // The stream ends after the task: the last lines come first.
                let _ = tokio::time::timeout(OUTPUT_LINGER, printer).await;
            }
            if json_out {
                print_json(&task)?;
            } else if let Some(delivered) = task["delivered"].as_str() {
                // `already_on_base`: the commit is the base's, not one of this task's.
                let commit = task["commit"].as_str().unwrap_or("-");
                println!("task {id} ended {status}: delivered {delivered} at {commit}");
            } else if code != 0 {
                let error = &task["error"];
                eprintln!(
                    "task {id} ended {status}: {}: {}",
                    error["code"].as_str().unwrap_or("-"),
                    error["message"].as_str().unwrap_or("")
                );
            }
            return Ok(code);
        }
        tokio::time::sleep(WAIT_POLL).await;
    }
}

/// ` pr=#N <state> <url> checks=<name:conclusion,…>` for a `pull_request` delivery (empty
/// without one).
fn pull_request_line(pr: &Value) -> String {
    let Some(number) = pr["number"].as_u64() else {
        return String::new();
    };
    let checks: Vec<String> = pr["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let result = c["conclusion"].as_str().or(c["status"].as_str());
            format!(
                "{}:{}",
                c["name"].as_str().unwrap_or("?"),
                result.unwrap_or("?")
            )
        })
        .collect();
    format!(
        " pr=#{number} {} {} checks={}",
        pr["state"].as_str().unwrap_or("?"),
        pr["url"].as_str().unwrap_or("-"),
        if checks.is_empty() {
            "-".into()
        } else {
            checks.join(",")
        }
    )
}

/// Prints the live output of a task's running commands from its event stream until the stream
/// ends (or the caller drops it). The stream is best effort: without it, progress still shows.
async fn print_output(client: reqwest::Client, url: String) {
    let Ok(mut response) = client.get(&url).timeout(OUTPUT_STREAM_TIMEOUT).send().await else {
        return;
    };
    if !response.status().is_success() {
        return;
    }
    let mut buffer: Vec<u8> = Vec::new();
    while let Ok(Some(bytes)) = response.chunk().await {
        buffer.extend_from_slice(&bytes);
        while let Some(end) = buffer.windows(2).position(|pair| pair == b"\n\n") {
            let message: Vec<u8> = buffer.drain(..end + 2).collect();
            for line in output_lines(&String::from_utf8_lossy(&message)) {
                println!("{line}");
            }
        }
        if buffer.len() > SSE_MESSAGE_BYTES_MAX {
            buffer.clear();
        }
    }
}

/// The lines to print for one SSE message: those of a `run.output` chunk, prefixed with the
/// persona, control characters (a command's terminal escapes) shown as `?`; a note for
/// skipped output; nothing for other messages.
fn output_lines(message: &str) -> Vec<String> {
    let mut event = "";
    let mut data = String::new();
    for line in message.lines() {
        if let Some(name) = line.strip_prefix("event:") {
            event = name.trim();
        } else if let Some(part) = line.strip_prefix("data:") {
            data.push_str(part.strip_prefix(' ').unwrap_or(part));
        }
    }
    let Ok(data) = serde_json::from_str::<Value>(&data) else {
        return Vec::new();
    };
    match event {
        "run.output" => {
            let persona = data["persona"].as_str().unwrap_or("?");
            let mut lines = Vec::new();
            let dropped = data["dropped_bytes"].as_u64().unwrap_or(0);
            if dropped > 0 {
                lines.push(format!("  {persona}| [... {dropped} bytes not shown ...]"));
            }
            let text = data["text"].as_str().unwrap_or_default();
            for line in text.split(['\n', '\r']).filter(|line| !line.is_empty()) {
                let shown: String = line
                    .chars()
                    .map(|c| if c.is_control() && c != '\t' { '?' } else { c })
                    .collect();
                lines.push(format!("  {persona}| {shown}"));
            }
            lines
        }
        "run.output.lagged" => vec![format!(
            "  [... {} chunks of live output not shown ...]",
            data["skipped"]
        )],
        _ => Vec::new(),
    }
}

async fn act(
    client: &reqwest::Client,
    tasks: &str,
    id: &str,
    action: &str,
    comment: Option<String>,
    json_out: bool,
) -> Result<u8, String> {
    let url = format!("{tasks}/{id}/{action}");
    let mut request = client.post(&url);
    if let Some(comment) = comment {
        request = request.json(&json!({"comment": comment}));
    }
    let task = call(request, &url).await?;
    if json_out {
        print_json(&task)?;
    } else {
        println!("{id} {}", task["status"].as_str().unwrap_or("?"));
    }
    Ok(0)
}

fn print_table(page: &Value) {
    let header = format!(
        "{:<36}  {:<12}  {:<10}  {:<8}  title",
        "id", "status", "stage", "kind"
    );
    println!("{}", header.to_uppercase());
    for task in page["tasks"].as_array().into_iter().flatten() {
        println!(
            "{:<36}  {:<12}  {:<10}  {:<8}  {}",
            task["id"].as_str().unwrap_or("?"),
            task["status"].as_str().unwrap_or("?"),
            task["stage"].as_str().unwrap_or("-"),
            task["kind"].as_str().unwrap_or("?"),
            task["title"].as_str().unwrap_or("")
        );
    }
    if let Some(next) = page["next_cursor"].as_str() {
        println!("(more: the service's next_cursor is {next})");
    }
}

fn event_line(event: &Value) -> String {
    format!(
        "{}  {:<10}  {:<20}  {}",
        event["at"].as_str().unwrap_or("?"),
        event["actor"].as_str().unwrap_or("?"),
        event["kind"].as_str().unwrap_or("?"),
        event["data"]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_output_becomes_prefixed_lines_and_other_messages_nothing() {
        let chunk =
            json!({"persona": "circuit", "text": "ok 1\nok\u{1b}[2J 2\r\n", "dropped_bytes": 10});
        let message = format!("event: run.output\ndata: {chunk}\n\n");
        assert_eq!(
            output_lines(&message),
            vec![
                "  circuit| [... 10 bytes not shown ...]",
                "  circuit| ok 1",
                "  circuit| ok?[2J 2"
            ]
        );
        let event = "id: 4\nevent: stage.started\ndata: {\"seq\":4}\n\n";
        assert!(output_lines(event).is_empty());
        assert!(output_lines(": keep-alive\n\n").is_empty());
    }
}
