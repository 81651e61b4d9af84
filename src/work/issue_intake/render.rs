//! The one status comment an issue's task keeps on its issue: pure text from the task, so a
//! restart renders the same comment and the marker finds it again. Never a success line after a
//! failed step: a failed task's checklist stops at the step that failed.

use crate::model::pull_request::PrState;
use crate::model::task::{branch_name, Stage, Task, TaskId, TaskStatus};

/// The hidden marker that finds a task's comment on its issue again.
pub(crate) fn marker(task: TaskId) -> String {
    format!("<!-- glitchlab:issue-task={task} -->")
}

/// The checklist's steps, in order.
const STEPS: [&str; 7] = [
    "planned",
    "implementing",
    "verify",
    "pull request",
    "checks",
    "review",
    "merged",
];

/// How far the task got: the steps done (0 ..= 7).
fn steps_done(task: &Task) -> usize {
    if let Some(pr) = &task.progress.pull_request {
        let by_pr = match pr.state {
            PrState::Merged => 7,
            PrState::Merging | PrState::GreenOpen => 6,
            PrState::WaitingReview => 5,
            PrState::WaitingChecks | PrState::PrOpen => 4,
            _ => 3,
        };
        return by_pr;
    }
    match task.progress.stage {
        None => 0,
        Some(Stage::Plan) => 0,
        Some(Stage::Implement) => 1,
        Some(Stage::Verify) => 2,
        Some(Stage::Approve | Stage::Deliver | Stage::Deploy) => 3,
    }
}

/// What the comment is about now; the comment is rewritten only when this changes.
pub(crate) fn signature(task: &Task, notes: &[String]) -> String {
    let pr = task.progress.pull_request.as_ref();
    format!(
        "{:?}|{:?}|{}|{:?}|{:?}|{}",
        task.progress.status,
        task.progress.stage,
        steps_done(task),
        pr.and_then(|p| p.number),
        task.outcome.error.as_ref().map(|e| &e.code),
        notes.join("|")
    )
}

/// The comment's text.
pub(crate) fn comment(task: &Task, cost: u64, notes: &[String]) -> String {
    let done = steps_done(task);
    let status = task.progress.status;
    let failed = matches!(status, TaskStatus::Failed | TaskStatus::DeadLetter);
    let pr = task.progress.pull_request.as_ref();
    let pr_text = pr
        .and_then(|p| p.number.map(|n| (n, p.url.clone().unwrap_or_default())))
        .map(|(n, url)| format!("PR #{n} {url}").trim_end().to_owned());
    let headline = match (status, done) {
        (TaskStatus::Done, 7) => format!(
            "**glitchlab**: merged ({}).",
            pr_text.clone().unwrap_or_default()
        ),
        (TaskStatus::Done, _) => "**glitchlab**: done.".to_owned(),
        (TaskStatus::Cancelled, _) => "**glitchlab**: the task was cancelled.".to_owned(),
        _ if failed => "**glitchlab**: the task failed; this issue stays open.".to_owned(),
        (TaskStatus::Queued | TaskStatus::Blocked, _) => "**glitchlab**: queued.".to_owned(),
        _ => "**glitchlab** is working on this issue.".to_owned(),
    };
    let mut lines = vec![marker(task.id), headline, String::new()];
    for (index, step) in STEPS.iter().enumerate() {
        let label = match (index, &pr_text) {
            (3, Some(pr)) => pr.clone(),
            _ => (*step).to_owned(),
        };
        let mark = if index < done {
            "[x]"
        } else if failed && index == done {
            "[ ] ✗"
        } else {
            "[ ]"
        };
        lines.push(format!("- {mark} {label}"));
    }
    lines.push(String::new());
    if failed {
        lines.extend(failure_lines(task));
    }
    lines.push(format!(
        "Task `{}` · status `{}` · cost so far {cost} micro-tokens.",
        task.id,
        serde_json::to_value(status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    ));
    lines.extend(notes.iter().map(|note| format!("\n{note}")));
    lines.join("\n")
}

/// Why a failed task failed, where its work is, and what unblocks it.
fn failure_lines(task: &Task) -> Vec<String> {
    let (code, message) = task
        .outcome
        .error
        .as_ref()
        .map(|e| (e.code.as_str(), e.message.as_str()))
        .unwrap_or(("unknown", "no reason recorded"));
    let summary: String = message.chars().take(FAILURE_QUOTED_CHARS).collect();
    vec![
        format!("**Reason:** `{code}`"),
        String::new(),
        "```".into(),
        summary.replace("```", "'''"),
        "```".into(),
        String::new(),
        format!(
            "Branch: `{}`. To try again, a writer comments `/glitchlab retry`.",
            branch_name(task.id)
        ),
        String::new(),
    ]
}

/// Characters of a failure's message quoted in the comment.
const FAILURE_QUOTED_CHARS: usize = 1500;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::codes;
    use crate::model::task::ErrorInfo;

    #[test]
    fn a_failed_task_says_why_and_never_claims_a_later_step() {
        let mut task = Task::for_test("t", "d");
        task.progress.status = TaskStatus::Failed;
        task.progress.stage = Some(Stage::Verify);
        task.outcome.error = Some(ErrorInfo::new(codes::VERIFY_FAILED, "1 test failed"));
        let text = comment(&task, 0, &[]);
        assert!(text.starts_with(&marker(task.id)));
        assert!(text.contains(codes::VERIFY_FAILED) && text.contains("1 test failed"));
        assert!(
            text.contains("- [x] implementing\n- [ ] ✗ verify"),
            "{text}"
        );
        assert!(!text.contains("merged ("), "{text}");
        assert!(text.contains("stays open"));
    }

    #[test]
    fn a_merged_task_checks_every_step() {
        let mut task = Task::for_test("t", "d");
        task.progress.status = TaskStatus::Done;
        task.progress.pull_request = Some(crate::model::pull_request::PullRequestRecord {
            number: Some(4),
            url: Some("https://github.com/a/b/pull/4".into()),
            state: PrState::Merged,
            ..Default::default()
        });
        let text = comment(&task, 12, &[]);
        assert!(
            text.contains("merged (PR #4 https://github.com/a/b/pull/4)"),
            "{text}"
        );
        assert_eq!(text.matches("- [x]").count(), 7, "{text}");
        assert!(text.contains("cost so far 12"));
    }
}
