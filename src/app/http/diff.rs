//! `GET /v1/tasks/{id}/diff`: what a task's branch changes against its base, so a reviewer can
//! look at the work before approving it (the web control plane's task page shows it). Computed by
//! the `git` binary through [`Git`] (with `git.timeout_secs`), and bounded: at most
//! [`DIFF_BYTES_MAX`] bytes are answered, with `truncated` saying when there was more. The text
//! goes through the service's redactor first, as every other output does: a secret value in a
//! change (plain or encoded) is served as `[REDACTED:<NAME>]`.

use axum::extract::{Path, State};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::describe;
use super::error::{ApiError, ErrorBody};
use super::AppState;
use crate::model::codes;
use crate::model::task::{branch_name, Task, TaskId};
use crate::platform::git::Git;

/// The most bytes of diff text answered (a page shows it; the branch itself has the rest).
pub(crate) const DIFF_BYTES_MAX: usize = 48 * 1024;

/// The answer of `GET /v1/tasks/{id}/diff`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TaskDiff {
    /// The task's branch (`glitchlab/<id>`).
    pub branch: String,
    /// The branch it is compared with (the task's `base_branch`).
    pub base: String,
    /// `branch` (the branch against its merge base with `base`), `delivered` (the delivered
    /// commit against its first parent, once the branch is gone), or `none` (nothing to show
    /// yet: no branch and no delivered commit).
    pub source: String,
    /// The unified diff, at most 48 KiB; empty when `source` is `none` or nothing changed.
    pub diff: String,
    /// Whether the diff was cut to fit.
    pub truncated: bool,
}

/// `GET /v1/tasks/{id}/diff`.
#[utoipa::path(
    get,
    path = "/v1/tasks/{id}/diff",
    operation_id = "task_diff",
    tag = "tasks",
    params(("id" = String, Path, description = "Task id (a UUID).")),
    responses(
        (status = 200, description = "The branch's diff against its base (bounded).",
            body = TaskDiff),
        (status = 404, description = describe::TASK_NOT_FOUND, body = ErrorBody),
        (status = 500, description = describe::INTERNAL, body = ErrorBody),
    )
)]
pub(crate) async fn diff(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<TaskDiff>, ApiError> {
    let not_found =
        || ApiError::not_found(codes::TASK_NOT_FOUND, format!("no task with id `{id}`"));
    let task_id: TaskId = id.parse().map_err(|_| not_found())?;
    let task: Task = app
        .services
        .store
        .task(task_id)
        .await?
        .ok_or_else(not_found)?;
    let branch = task
        .progress
        .branch
        .clone()
        .unwrap_or_else(|| branch_name(task.id));
    let repo = Git::new(
        app.services.repo_dir(&task.spec.repo),
        app.services.config.git.timeout(),
    );
    let (source, text) = if repo.branch_exists(&branch).await {
        let range = format!("refs/heads/{}...refs/heads/{branch}", task.spec.base_branch);
        let args = [
            "diff",
            "--no-color",
            "--no-ext-diff",
            "--no-textconv",
            &range,
            "--",
        ];
        ("branch", run(&repo, &args).await?)
    } else if let Some(commit) = &task.outcome.commit {
        let parent = format!("{commit}^1");
        let args = [
            "diff",
            "--no-color",
            "--no-ext-diff",
            "--no-textconv",
            &parent,
            commit.as_str(),
            "--",
        ];
        ("delivered", run(&repo, &args).await?)
    } else {
        ("none", String::new())
    };
    // Like every other output: a secret value a change holds (plain or encoded) is never served.
    // Redacted before the cut, so no cut can leave part of a value standing.
    let (diff, truncated) = bounded(app.services.redactor.redact(&text));
    Ok(Json(TaskDiff {
        branch,
        base: task.spec.base_branch,
        source: source.to_owned(),
        diff,
        truncated,
    }))
}

async fn run(repo: &Git, args: &[&str]) -> Result<String, ApiError> {
    repo.run(args)
        .await
        .map_err(|error| ApiError::internal(format!("git diff: {error}")))
}

/// `text` cut to [`DIFF_BYTES_MAX`] bytes on a line (or at least a char) boundary, and whether
/// it was cut.
fn bounded(mut text: String) -> (String, bool) {
    if text.len() <= DIFF_BYTES_MAX {
        return (text, false);
    }
    let mut end = DIFF_BYTES_MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    if let Some(newline) = text[..end].rfind('\n') {
        end = newline + 1;
    }
    text.truncate(end);
    (text, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_diff_is_cut_on_a_line_boundary() {
        let short = "+a\n".to_owned();
        assert_eq!(bounded(short.clone()), (short, false));
        let long = "+é line\n".repeat(DIFF_BYTES_MAX / 4);
        let (cut, truncated) = bounded(long);
        assert!(truncated);
        assert!(cut.len() <= DIFF_BYTES_MAX);
        assert!(cut.ends_with('\n'));
    }
}
