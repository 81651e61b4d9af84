//! `glitchlab task submit|list|show|watch|logs|diff|runs|cancel|retry|approve|reject` and
//! `glitchlab tree`: the operator's commands against a running service, through the shared
//! client context ([`Client`]). A task id may be the full UUID, the web page's short id (its last
//! 8 characters) or any unique prefix. `--json` prints what the service answered and nothing else
//! (`submit --json --wait`: one document, the final task). `submit --wait` and `watch` also print
//! the running commands' live output (the task stream's `run.output` messages), each line as
//! `  <persona>| <line>`; on a terminal their progress is one line that updates in place.
//!
//! Exit codes: 0 success (for `--wait`/`watch`: the task is `done`); 1 a connection or error
//! answer; 2 the task ended `failed`; 3 `dead_letter`; 4 `cancelled`; 64 a usage error.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use tokio_util::task::AbortOnDropHandle;

use crate::app::cli::client::{
    status_style, stdout_is_terminal, styled, CliError, Client, EXIT_OK,
};
pub use crate::app::cli::client::{EXIT_CANCELLED, EXIT_DEAD_LETTER, EXIT_FAILED};
use crate::app::cli::{print_json, show, ClientArgs};

/// How often `--wait` looks at the task.
const WAIT_POLL: Duration = Duration::from_millis(500);
/// How long the live output stream of `--wait` and `watch` may stay open.
const OUTPUT_STREAM_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);
/// How long the end of the live output may lag behind the task's end before it is given up.
const OUTPUT_LINGER: Duration = Duration::from_secs(2);
/// Bytes of one unfinished SSE message kept at most (the service's are a few KiB).
const SSE_MESSAGE_BYTES_MAX: usize = 1024 * 1024;
/// How often the progress line's spinner turns.
const SPINNER_TICK: Duration = Duration::from_millis(120);
/// The statuses a task can be in (`task list --status`).
const TASK_STATUSES: [&str; 8] = [
    "queued",
    "blocked",
    "running",
    "awaiting_approval",
    "done",
    "failed",
    "cancelled",
    "dead_letter",
];

/// Flags of `task`.
#[derive(Debug, clap::Args)]
pub struct TaskArgs {
    /// The service to ask and how to print.
    #[command(flatten)]
    pub client: ClientArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: TaskCommand,
}

/// Subcommands of `task`.
#[derive(Debug, clap::Subcommand)]
pub enum TaskCommand {
    /// Submit a task; prints its id (with `--wait`, follows it to its end; with `--json`, the
    /// task: the final one with `--wait`).
    Submit(Box<SubmitArgs>),
    /// Tasks, newest first, as a table.
    List {
        /// Only tasks in this status.
        #[arg(long, value_parser = TASK_STATUSES)]
        status: Option<String>,
        /// Only tasks on this repository (its canonical path).
        #[arg(long)]
        repo: Option<String>,
        /// Only tasks of this kind.
        #[arg(long)]
        kind: Option<String>,
        /// Only tasks taken in from elsewhere: `github` (issues), or a source kind.
        #[arg(long)]
        source: Option<String>,
    },
    /// One task, as a readable summary.
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
    /// The task's branch against its base, as a unified diff (what approving would land).
    Diff {
        /// Task id.
        id: String,
    },
    /// The task's engine and verify runs, oldest first, with their exit and cost.
    Runs {
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
    #[arg(long, value_parser = ["critical", "high", "medium", "low"])]
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
    #[arg(long, value_parser = ["auto", "none"])]
    pub merge: Option<String>,
    /// `auto` (default: delivered once verify passes) or `manual` (an approval gate before
    /// delivery: `task diff`, then `task approve` or `task reject`).
    #[arg(long, value_parser = ["auto", "manual"])]
    pub review_policy: Option<String>,
    /// Follow the task until it ends; the exit code says how it ended.
    #[arg(long)]
    pub wait: bool,
}

impl TaskCommand {
    /// The task id the command acts on (`submit` and `list` have none).
    fn id(&self) -> Option<&str> {
        match self {
            TaskCommand::Submit(_) | TaskCommand::List { .. } => None,
            TaskCommand::Show { id }
            | TaskCommand::Watch { id }
            | TaskCommand::Logs { id }
            | TaskCommand::Diff { id }
            | TaskCommand::Runs { id }
            | TaskCommand::Cancel { id }
            | TaskCommand::Retry { id, .. }
            | TaskCommand::Approve { id, .. }
            | TaskCommand::Reject { id, .. } => Some(id),
        }
    }
}

/// Runs one `task` subcommand; `Ok` is the exit code.
pub async fn run(args: TaskArgs) -> Result<u8, CliError> {
    let client = Client::new(&args.client)?;
    match args.command {
        TaskCommand::Submit(submit) => submit_task(&client, *submit).await,
        TaskCommand::List {
            status,
            repo,
            kind,
            source,
        } => {
            let pairs = [
                ("status", status),
                ("repo", repo),
                ("kind", kind),
                ("source", source),
            ];
            let page = client.get_with("/v1/tasks", &pairs).await?;
            if client.json {
                print_json(&page)?;
            } else {
                print_table(&page);
            }
            Ok(EXIT_OK)
        }
        command => {
            let Some(given) = command.id() else {
                return Ok(EXIT_OK);
            };
            let id = client.resolve("tasks", given).await?;
            by_id(&client, command, &id).await
        }
    }
}

/// Submits a task; without `--wait` prints its id (or, `--json`, the task); with it follows the
/// task to its end.
async fn submit_task(client: &Client, submit: SubmitArgs) -> Result<u8, CliError> {
    let wait = submit.wait;
    let body = submission(submit)?;
    let task = client.post("/v1/tasks", &body).await?;
    let id = task["id"].as_str().unwrap_or_default().to_owned();
    if client.json && !wait {
        print_json(&task)?;
        return Ok(EXIT_OK);
    }
    if !client.json {
        println!("{id}");
    }
    if !wait {
        return Ok(EXIT_OK);
    }
    follow(client, &id).await
}

/// The commands on one task, its id resolved.
async fn by_id(client: &Client, command: TaskCommand, id: &str) -> Result<u8, CliError> {
    let path = format!("/v1/tasks/{id}");
    let shown = match command {
        TaskCommand::Watch { .. } => return follow(client, id).await,
        TaskCommand::Show { .. } => client.get(&path).await?,
        TaskCommand::Logs { .. } => client.get(&format!("{path}/events")).await?,
        TaskCommand::Diff { .. } => client.get(&format!("{path}/diff")).await?,
        TaskCommand::Runs { .. } => client.get(&format!("{path}/runs")).await?,
        TaskCommand::Retry { ref from, .. } => {
            let body = match from {
                Some(from) => json!({ "from": from }),
                None => json!({}),
            };
            client.post(&format!("{path}/retry"), &body).await?
        }
        TaskCommand::Cancel { .. } => client.post(&format!("{path}/cancel"), &json!({})).await?,
        TaskCommand::Approve { ref comment, .. } | TaskCommand::Reject { ref comment, .. } => {
            let action = if matches!(command, TaskCommand::Approve { .. }) {
                "approve"
            } else {
                "reject"
            };
            let body = comment
                .as_ref()
                .map_or(json!({}), |c| json!({ "comment": c }));
            client.post(&format!("{path}/{action}"), &body).await?
        }
        TaskCommand::Submit(_) | TaskCommand::List { .. } => return Ok(EXIT_OK),
    };
    if client.json {
        print_json(&shown)?;
        return Ok(EXIT_OK);
    }
    match command {
        TaskCommand::Show { .. } => anstream::print!("{}", show::task_summary(&shown)),
        TaskCommand::Logs { .. } => {
            for event in shown["events"].as_array().into_iter().flatten() {
                anstream::println!("{}", show::event_line(event));
            }
        }
        TaskCommand::Runs { .. } => anstream::print!("{}", show::runs_table(&shown)),
        TaskCommand::Diff { .. } => print_diff(&shown),
        _ => {
            let status = shown["status"].as_str().unwrap_or("?");
            anstream::println!("{id} {}", styled(status, status_style(status)));
        }
    }
    Ok(EXIT_OK)
}

/// The diff on stdout (so it pipes into `git apply`), what it is against on stderr.
fn print_diff(diff: &Value) {
    let source = diff["source"].as_str().unwrap_or("none");
    eprintln!(
        "{} against {} ({source})",
        diff["branch"].as_str().unwrap_or("-"),
        diff["base"].as_str().unwrap_or("-")
    );
    if source == "none" {
        eprintln!("nothing to show yet: no branch and no delivered commit");
    }
    anstream::print!(
        "{}",
        show::coloured_diff(diff["diff"].as_str().unwrap_or(""))
    );
    if diff["truncated"] == true {
        eprintln!("(the diff was cut to fit; see the branch itself for the rest)");
    }
}

/// `glitchlab tree`: the supervision tree, one actor per line.
pub async fn tree(client: &Client) -> Result<u8, CliError> {
    let actors = client.get("/v1/actors").await?;
    if client.json {
        print_json(&actors)?;
        return Ok(EXIT_OK);
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
    Ok(EXIT_OK)
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
        ("review_policy", args.review_policy),
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

/// Where a followed task's progress goes: a line that updates in place on a terminal, a line
/// per change otherwise, nothing with `--json`.
struct Progress {
    bar: Option<ProgressBar>,
    quiet: bool,
    last: String,
    started: Instant,
}

impl Progress {
    fn new(json_out: bool) -> Progress {
        let bar = (!json_out && stdout_is_terminal()).then(|| {
            let bar = ProgressBar::new_spinner();
            if let Ok(style) = ProgressStyle::with_template("{spinner} [{elapsed}] {msg}") {
                bar.set_style(style);
            }
            bar.enable_steady_tick(SPINNER_TICK);
            bar
        });
        Progress {
            bar,
            quiet: json_out,
            last: String::new(),
            started: Instant::now(),
        }
    }

    /// Shows `now` if it differs from what was shown last.
    fn update(&mut self, now: String) {
        if now == self.last || self.quiet {
            return;
        }
        match &self.bar {
            Some(bar) => bar.set_message(now.clone()),
            None => anstream::println!("[{:>5.1}s] {now}", self.started.elapsed().as_secs_f64()),
        }
        self.last = now;
    }

    /// Clears the progress line, leaving the last state as a plain line.
    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
            anstream::println!(
                "[{:>5.1}s] {}",
                self.started.elapsed().as_secs_f64(),
                self.last
            );
        }
    }
}

/// The exit code of a task that ended in `status`; `None` while it has not.
fn outcome_code(status: &str) -> Option<u8> {
    match status {
        "done" => Some(EXIT_OK),
        "failed" => Some(EXIT_FAILED),
        "dead_letter" => Some(EXIT_DEAD_LETTER),
        "cancelled" => Some(EXIT_CANCELLED),
        _ => None,
    }
}

/// Follows a task until it ends, showing its progress and its commands' live output; the exit
/// code says how it ended. With `--json` the only output is the final task.
async fn follow(client: &Client, id: &str) -> Result<u8, CliError> {
    let path = format!("/v1/tasks/{id}");
    let mut progress = Progress::new(client.json);
    let printer = (!client.json).then(|| {
        let stream = client.url(&format!("{path}/events/stream"));
        let bar = progress.bar.clone();
        AbortOnDropHandle::new(tokio::spawn(print_output(
            client.http().clone(),
            stream,
            bar,
        )))
    });
    loop {
        let task = client.get(&path).await?;
        progress.update(show::progress_line(&task));
        let status = task["status"].as_str().unwrap_or("?");
        if let Some(code) = outcome_code(status) {
            if let Some(printer) = printer {
                // The stream ends after the task: the last lines come first.
                let _ = tokio::time::timeout(OUTPUT_LINGER, printer).await;
            }
            progress.finish();
            report_end(client, id, &task, code)?;
            return Ok(code);
        }
        tokio::time::sleep(WAIT_POLL).await;
    }
}

/// The last word on a followed task: the task as JSON, how it was delivered, or its error.
fn report_end(client: &Client, id: &str, task: &Value, code: u8) -> Result<(), CliError> {
    let status = task["status"].as_str().unwrap_or("?");
    if client.json {
        print_json(task)?;
    } else if let Some(delivered) = task["delivered"].as_str() {
        // `already_on_base`: the commit is the base's, not one of this task's.
        let commit = task["commit"].as_str().unwrap_or("-");
        println!("task {id} ended {status}: delivered {delivered} at {commit}");
    } else if code != EXIT_OK {
        let error = &task["error"];
        eprintln!(
            "task {id} ended {status}: {}: {}",
            error["code"].as_str().unwrap_or("-"),
            error["message"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

/// Prints the live output of a task's running commands from its event stream until the stream
/// ends (or the caller drops it). The stream is best effort: without it, progress still shows.
async fn print_output(client: reqwest::Client, url: String, bar: Option<ProgressBar>) {
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
                match &bar {
                    Some(bar) => bar.println(line),
                    None => println!("{line}"),
                }
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

/// Tasks as a table: id, status (coloured on a terminal), stage, kind, title.
fn print_table(page: &Value) {
    let header = format!(
        "{:<36}  {:<17}  {:<10}  {:<8}  title",
        "id", "status", "stage", "kind"
    );
    println!("{}", header.to_uppercase());
    for task in page["tasks"].as_array().into_iter().flatten() {
        let status = task["status"].as_str().unwrap_or("?");
        anstream::println!(
            "{:<36}  {}  {:<10}  {:<8}  {}",
            task["id"].as_str().unwrap_or("?"),
            styled(&format!("{status:<17}"), status_style(status)),
            task["stage"].as_str().unwrap_or("-"),
            task["kind"].as_str().unwrap_or("?"),
            source_prefix(task) + task["title"].as_str().unwrap_or("")
        );
    }
    if let Some(next) = page["next_cursor"].as_str() {
        println!("(more: the service's next_cursor is {next})");
    }
}

/// `[owner/name#n] ` before the title of a task taken in from an issue.
fn source_prefix(task: &Value) -> String {
    let source = &task["source"];
    match (source["repo"].as_str(), source["number"].as_u64()) {
        (Some(repo), Some(number)) => format!("[{repo}#{number}] "),
        _ => String::new(),
    }
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
