//! How the task commands print for people (`--json` prints the service's JSON instead): a task
//! as a readable summary, its runs as a table, its events as lines with their times, its diff
//! with added and removed lines coloured. Every field is read defensively: one the service does
//! not send (an older service, a field added later such as `merge.place` or `waiting_for`) is
//! left out, never an error. Money is in tokens with decimals.

use serde_json::Value;

use crate::app::cli::client::{status_style, styled, tokens};

/// Characters of an error message shown in a summary before it is cut.
const ERROR_SHOWN_CHARS_MAX: usize = 600;
/// Characters of a command shown in the runs table before it is cut.
const COMMAND_SHOWN_CHARS_MAX: usize = 60;

/// The text of a string field, or `-`.
fn text(value: &Value) -> &str {
    value.as_str().unwrap_or("-")
}

/// The task's place in its merge queue, why it is held, and what it waits for, as they are
/// present: ` place=2 held: <why> waiting for: <what>`.
pub fn queue_notes(task: &Value) -> String {
    let mut notes = String::new();
    if let Some(place) = task["merge"]["place"].as_u64() {
        notes.push_str(&format!(" place={place}"));
    }
    if let Some(why) = task["merge"]["held"].as_str() {
        notes.push_str(&format!(" held: {why}"));
    }
    if let Some(what) = task["waiting_for"].as_str() {
        notes.push_str(&format!(" waiting for: {what}"));
    }
    notes.push_str(&pull_request_line(&task["pull_request"]));
    notes
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
            format!("{}:{}", text(&c["name"]), result.unwrap_or("?"))
        })
        .collect();
    let checks = if checks.is_empty() {
        "-".to_owned()
    } else {
        checks.join(",")
    };
    format!(
        " pr=#{number} {} {} checks={checks}",
        text(&pr["state"]),
        text(&pr["url"])
    )
}

/// One line of a followed task's progress: status (coloured), stage, attempt, queue notes.
pub fn progress_line(task: &Value) -> String {
    let status = task["status"].as_str().unwrap_or("?");
    format!(
        "{} stage={} attempt={}{}",
        styled(status, status_style(status)),
        task["stage"].as_str().unwrap_or("-"),
        task["attempts"],
        queue_notes(task)
    )
}

/// A task as a readable summary: what was asked, where it stands, how it ended.
pub fn task_summary(task: &Value) -> String {
    let status = task["status"].as_str().unwrap_or("?");
    let mut out = format!("{}  {}\n", text(&task["id"]), text(&task["title"]));
    let mut row = |name: &str, value: String| out.push_str(&format!("  {name:<10} {value}\n"));
    let stage = task["stage"].as_str().unwrap_or("-");
    row(
        "status",
        format!(
            "{}  stage {stage}  attempt {}/{}",
            styled(status, status_style(status)),
            task["attempts"],
            task["max_attempts"]
        ),
    );
    let stages: Vec<&str> = task["stages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if !stages.is_empty() {
        row("stages", stages.join(" → "));
    }
    row(
        "repo",
        format!(
            "{} ({})  kind {}  priority {}",
            text(&task["repo"]),
            text(&task["base_branch"]),
            text(&task["kind"]),
            text(&task["priority"])
        ),
    );
    row("verify", text(&task["verify"]).to_owned());
    outcome_rows(task, &mut row);
    times_row(task, &mut row);
    out
}

/// The rows of a summary about delivery, the merge queue, money and the error.
fn outcome_rows(task: &Value, row: &mut impl FnMut(&str, String)) {
    if let Some(branch) = task["branch"].as_str() {
        row("branch", branch.to_owned());
    }
    if let Some(commit) = task["commit"].as_str() {
        let how = task["delivered"].as_str().unwrap_or("");
        row("commit", format!("{commit} {how}").trim_end().to_owned());
    }
    let notes = queue_notes(task);
    if !notes.is_empty() {
        row("queue", notes.trim_start().to_owned());
    }
    if let Some(deps) = task["blocked_by"].as_array().filter(|d| !d.is_empty()) {
        let deps: Vec<&str> = deps.iter().map(text).collect();
        row("blocked by", deps.join(", "));
    }
    if let Some(max_cost) = task["budget"].get("max_cost") {
        let account = task["account"].as_str().unwrap_or("-");
        row(
            "budget",
            format!("{} tokens from {account}", tokens(max_cost)),
        );
    }
    if let Some(plan) = task["plan"]["summary"].as_str() {
        let steps = task["plan"]["steps"].as_array().map_or(0, Vec::len);
        row("plan", format!("{plan} ({steps} steps)"));
    }
    let error = &task["error"];
    if let Some(code) = error["code"].as_str() {
        let message: String = text(&error["message"])
            .chars()
            .take(ERROR_SHOWN_CHARS_MAX)
            .collect();
        let code = styled(code, status_style("failed"));
        row("error", format!("{code}: {}", message.trim_end()));
    }
}

/// When it was created, started and finished.
fn times_row(task: &Value, row: &mut impl FnMut(&str, String)) {
    let mut times = format!("created {}", time(&task["created_at"]));
    if task["started_at"].is_string() {
        times.push_str(&format!("  started {}", time(&task["started_at"])));
    }
    if task["finished_at"].is_string() {
        times.push_str(&format!("  finished {}", time(&task["finished_at"])));
    }
    row("times", times);
}

/// An RFC 3339 time as `YYYY-MM-DD HH:MM:SS.mmm` (UTC), or `-` when absent.
pub fn time(value: &Value) -> String {
    let Some(text) = value.as_str() else {
        return "-".into();
    };
    match chrono::DateTime::parse_from_rfc3339(text) {
        Ok(at) => at
            .with_timezone(&chrono::Utc)
            .format("%Y-%m-%d %H:%M:%S%.3f")
            .to_string(),
        Err(_) => text.to_owned(),
    }
}

/// One event on one line: its time, actor, kind and data.
pub fn event_line(event: &Value) -> String {
    format!(
        "{}  {:<10}  {:<20}  {}",
        time(&event["ts"]),
        event["actor"].as_str().unwrap_or("?"),
        event["kind"].as_str().unwrap_or("?"),
        event["data"]
    )
}

/// A task's runs as a table, oldest first, then the cost of all of them in tokens.
pub fn runs_table(page: &Value) -> String {
    let mut out = format!(
        "{:<8} {:<10} {:>3} {:<12} {:>5} {:>9} {:>10}  command\n",
        "persona", "stage", "try", "status", "exit", "ms", "tokens"
    );
    let mut total: u64 = 0;
    for run in page["runs"].as_array().into_iter().flatten() {
        total = total.saturating_add(run["cost"].as_u64().unwrap_or(0));
        let status = run["status"].as_str().unwrap_or("-");
        let exit = match (run["exit_code"].as_i64(), run["signal"].as_i64()) {
            (Some(code), _) => code.to_string(),
            (None, Some(signal)) => format!("sig{signal}"),
            (None, None) => "-".into(),
        };
        let outcome = match (status, run["exit_code"].as_i64()) {
            ("finished", Some(0)) => "done",
            ("finished", _) => "failed",
            (other, _) => other,
        };
        let command: String = run["command"]
            .as_str()
            .unwrap_or(text(&run["engine"]))
            .chars()
            .take(COMMAND_SHOWN_CHARS_MAX)
            .collect();
        out.push_str(&format!(
            "{:<8} {:<10} {:>3} {} {:>5} {:>9} {:>10}  {command}\n",
            text(&run["persona"]),
            text(&run["stage"]),
            run["attempt"],
            styled(&format!("{status:<12}"), status_style(outcome)),
            exit,
            run["duration_ms"]
                .as_u64()
                .map_or("-".into(), |ms| ms.to_string()),
            tokens(&run["cost"]),
        ));
    }
    out.push_str(&format!(
        "total cost: {} tokens\n",
        tokens(&serde_json::json!(total))
    ));
    out
}

/// A unified diff with added lines green and removed lines red (on a terminal).
pub fn coloured_diff(diff: &str) -> String {
    use anstyle::{AnsiColor, Style};
    let added = Style::new().fg_color(Some(AnsiColor::Green.into()));
    let removed = Style::new().fg_color(Some(AnsiColor::Red.into()));
    let header = Style::new().bold();
    let mut out = String::with_capacity(diff.len());
    for line in diff.lines() {
        let style = if line.starts_with("+++") || line.starts_with("---") {
            header
        } else if line.starts_with('+') {
            added
        } else if line.starts_with('-') {
            removed
        } else if line.starts_with("@@") || line.starts_with("diff ") {
            Style::new().fg_color(Some(AnsiColor::Cyan.into()))
        } else {
            Style::new()
        };
        out.push_str(&styled(line, style));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_summary_shows_what_is_present_and_skips_what_is_not() {
        let task = json!({
            "id": "01a207bd-b5a8-72da-a005-273193a12d7a", "title": "Say hello",
            "status": "running", "stage": "deliver", "attempts": 1, "max_attempts": 3,
            "stages": ["plan", "implement", "verify", "deliver"], "repo": "/tmp/demo",
            "base_branch": "main", "kind": "feature", "priority": "medium",
            "verify": "test -f hello.txt", "merge": {"place": 2, "held": "base moved"},
            "waiting_for": "the merge queue", "budget": {"max_cost": 5_000_000},
            "account": "user:local", "created_at": "2026-11-23T09:30:03.048453349Z",
        });
        let text = task_summary(&task);
        assert!(text.contains("place=2 held: base moved waiting for: the merge queue"));
        assert!(text.contains("5.00 tokens from user:local"), "{text}");
        assert!(
            text.contains("plan → implement → verify → deliver"),
            "{text}"
        );
        assert!(text.contains("created 2026-11-23 09:30:03.048"), "{text}");
        assert!(!text.contains("error"), "{text}");
        let bare = task_summary(&json!({"id": "x", "status": "queued"}));
        assert!(
            bare.contains("queued") && !bare.contains("queue "),
            "{bare}"
        );
    }

    #[test]
    fn events_show_their_times_and_runs_their_cost_in_tokens() {
        let event = json!({"ts": "2026-11-23T09:30:03.1234Z", "actor": "compass",
                           "kind": "task.submitted", "data": {}});
        assert!(event_line(&event).starts_with("2026-11-23 09:30:03.123  compass"));
        let runs = json!({"runs": [
            {"persona": "patch", "stage": "implement", "attempt": 1, "status": "finished",
             "exit_code": 0, "duration_ms": 2, "cost": 1500, "command": "echo hi"},
            {"persona": "circuit", "stage": "verify", "attempt": 1, "status": "running",
             "exit_code": null, "engine": "shell"},
        ]});
        let table = runs_table(&runs);
        assert!(
            table.contains("0.0015") && table.contains("echo hi"),
            "{table}"
        );
        assert!(table.contains("total cost: 0.0015 tokens"), "{table}");
    }
}
