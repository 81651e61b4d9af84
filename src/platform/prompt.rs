//! The prompt a persona builds for its engine (its system prompt, the task, the plan, the last
//! failure) and the files and environment variables that hand it to a `shell` engine.

use std::path::{Path, PathBuf};

use crate::model::task::Task;
use crate::platform::redact::Redactor;

/// The files a `shell` engine reads.
#[derive(Debug, Clone)]
pub(crate) struct PromptFiles {
    /// `GLITCHLAB_PROMPT_FILE`.
    pub prompt: PathBuf,
    /// `GLITCHLAB_FEEDBACK_FILE`: the previous verify failure; empty on attempt 1.
    pub feedback: PathBuf,
    /// The prompt's digest, for the run record.
    pub digest: String,
}

/// The full prompt text.
pub(crate) fn build(system_prompt: &str, task: &Task, feedback: Option<&str>) -> String {
    let mut text = String::new();
    text.push_str(system_prompt.trim());
    text.push_str("\n\n# Task\n\n");
    text.push_str(&format!(
        "Title: {}\nKind: {}\n",
        task.spec.title, task.spec.kind
    ));
    text.push_str(&format!("Verify command: {}\n\n", task.spec.verify));
    text.push_str(task.spec.description.trim());
    text.push('\n');
    if let Some(plan) = &task.progress.plan {
        text.push_str(&format!(
            "\n# Plan ({} risk)\n\n{}\n\n",
            plan.risk, plan.summary
        ));
        for (index, step) in plan.steps.iter().enumerate() {
            text.push_str(&format!("{}. {}", index + 1, step.title));
            if !step.files.is_empty() {
                text.push_str(&format!(" [files: {}]", step.files.join(", ")));
            }
            text.push('\n');
        }
    }
    if let Some(feedback) = feedback.filter(|f| !f.is_empty()) {
        text.push_str("\n# The previous attempt failed verification\n\n```\n");
        text.push_str(feedback);
        text.push_str("\n```\n");
    }
    text
}

/// Bytes of each earlier failure's message a prompt carries.
const HISTORY_MESSAGE_BYTES_MAX: usize = 600;

/// The planner's extra section: earlier failures on the same repository, so a model-backed
/// planner can avoid repeating them.
pub(crate) fn history_section(failures: &[Task]) -> String {
    if failures.is_empty() {
        return String::new();
    }
    let mut text = String::from("\n# Earlier failures on this repository (most recent first)\n");
    for task in failures {
        let Some(error) = &task.outcome.error else {
            continue;
        };
        let message =
            crate::platform::process::keep_tail(&error.message, HISTORY_MESSAGE_BYTES_MAX);
        text.push_str(&format!(
            "\n## Task {} \"{}\": {}\n\n```\n{}\n```\n",
            task.id, task.spec.title, error.code, message
        ));
    }
    text
}

/// Writes the prompt and feedback files for one engine run. They sit in the data dir, so they
/// hold no secret value: both are redacted first (the digest is the digest of what was written).
pub(crate) async fn write_files(
    dir: &Path,
    stage: &str,
    attempt: u32,
    prompt: &str,
    feedback: Option<&str>,
    redactor: &Redactor,
) -> std::io::Result<PromptFiles> {
    tokio::fs::create_dir_all(dir).await?;
    let prompt = redactor.redact(prompt);
    let feedback = redactor.redact(feedback.unwrap_or(""));
    let files = PromptFiles {
        prompt: dir.join(format!("{stage}-{attempt}.prompt.md")),
        feedback: dir.join(format!("{stage}-{attempt}.feedback.txt")),
        digest: prompt_digest(&prompt),
    };
    tokio::fs::write(&files.prompt, prompt).await?;
    tokio::fs::write(&files.feedback, feedback).await?;
    Ok(files)
}

/// The `GLITCHLAB_*` environment of an engine run.
pub(crate) fn engine_env(task: &Task, attempt: u32, files: &PromptFiles) -> Vec<(String, String)> {
    vec![
        ("GLITCHLAB_TASK_ID".into(), task.id.to_string()),
        ("GLITCHLAB_ATTEMPT".into(), attempt.to_string()),
        (
            "GLITCHLAB_PROMPT_FILE".into(),
            files.prompt.display().to_string(),
        ),
        (
            "GLITCHLAB_FEEDBACK_FILE".into(),
            files.feedback.display().to_string(),
        ),
    ]
}

/// `sha256:<hex>` of a prompt: recorded on the run so runs that saw the same input can be told
/// apart from runs that did not, without storing the text again.
pub(crate) fn prompt_digest(prompt: &str) -> String {
    use sha2::{Digest, Sha256};
    format!("sha256:{}", hex::encode(Sha256::digest(prompt.as_bytes())))
}
