//! Engines: how a persona thinks or acts. `builtin` is deterministic and offline; `shell` runs a
//! command in the worktree. Every run, of either, is persisted as an [`EngineRun`] before the
//! persona acts on its result.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::Utc;
use uuid::Uuid;

use crate::model::live::RunOutput;
use crate::model::persona::Persona;
use crate::model::task::{
    CapturedOutput, EngineRun, Plan, PlanStep, RunStatus, Stage, Task, TaskId,
};
use crate::platform::executor;
use crate::platform::git::{sandbox_dir, Git};
use crate::platform::live_output;
use crate::platform::openai;
use crate::platform::process::{self, CommandSpec};
use crate::platform::redact::Redactor;
use crate::platform::sandbox;
use crate::runtime::jobs::StageError;
use crate::runtime::Services;
use crate::storage::store::StoreError;
use crate::work::metering;

/// Who runs an engine, for what: becomes the run record's identity.
#[derive(Debug, Clone)]
pub(crate) struct RunIdentity {
    /// The task.
    pub task_id: TaskId,
    /// `planner`, `patch`, `circuit`, ...
    pub persona: Persona,
    /// The stage.
    pub stage: Stage,
    /// The attempt (0 for plan).
    pub attempt: u32,
}

/// A `shell` run: `sh -c <command>` in `cwd`.
#[derive(Debug, Clone)]
pub(crate) struct ShellRun {
    /// The command line.
    pub command: String,
    /// The worktree it runs in (a linked worktree's git: see
    /// [`crate::platform::git::Git::worktree_of`]); its files get a disposable `.git` of their
    /// own before the run.
    pub worktree: Git,
    /// Refs (full names) the disposable `.git` gets besides `HEAD`: the base branch.
    pub sandbox_refs: Vec<String>,
    /// `GLITCHLAB_*` variables.
    pub env: Vec<(String, String)>,
    /// Killed with its process group after this long.
    pub timeout: Duration,
    /// Bytes kept per stream.
    pub output_bytes_max: usize,
    /// The service instance (its data dir), exported as `GLITCHLAB_INSTANCE` so a restarted
    /// service can find and kill what a killed one left running.
    pub instance: String,
    /// [`crate::platform::prompt::prompt_digest`] of the prompt file the engine reads; none for verify.
    pub prompt_digest: Option<String>,
    /// What a fleet factory must offer to run it (the task's `capabilities`).
    pub capabilities: Vec<String>,
}

impl RunIdentity {
    /// The record of a run that starts now: `running`, nothing known yet.
    fn running(&self, engine: &str, command: Option<String>) -> EngineRun {
        EngineRun {
            id: Uuid::now_v7(),
            task_id: self.task_id,
            persona: self.persona.name().to_owned(),
            engine: engine.to_owned(),
            stage: self.stage,
            attempt: self.attempt,
            command,
            exit_code: None,
            signal: None,
            timed_out: false,
            stdout: CapturedOutput::default(),
            stderr: CapturedOutput::default(),
            duration_ms: 0,
            tokens: None,
            prompt_digest: None,
            cost: None,
            started_at: Utc::now(),
            status: RunStatus::Running,
            sandbox: None,
        }
    }
}

/// A run written `running` whose end is not recorded yet. Dropped before [`OpenRun::finish`] (a
/// cancel, a persona crash, shutdown aborting the job), it charges the time the run took and
/// records it `interrupted` from a spawned task, since a drop cannot wait; a crash leaves it to
/// [`crate::storage::store::Store::interrupt_open_runs`] (uncharged: when it ended is unknown).
///
/// The charge goes first and the record closes the run: a task's settlement waits for its open
/// runs to close ([`crate::storage::store::Store::has_open_runs`]), so the charge is on the books before it settles.
struct OpenRun {
    services: Services,
    run: EngineRun,
    started: Instant,
    finished: bool,
}

impl OpenRun {
    async fn start(services: &Services, run: EngineRun) -> Result<Self, StoreError> {
        services.store.start_run(&run).await?;
        Ok(Self {
            services: services.clone(),
            run,
            started: Instant::now(),
            finished: false,
        })
    }

    /// The final record: the running one with what the run produced.
    fn finish(mut self, fill: impl FnOnce(&mut EngineRun)) -> EngineRun {
        self.finished = true;
        let mut run = self.run.clone();
        fill(&mut run);
        run.duration_ms = millis(self.started.elapsed());
        run.status = RunStatus::Finished;
        run
    }
}

impl Drop for OpenRun {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut run = self.run.clone();
        run.status = RunStatus::Interrupted;
        run.duration_ms = millis(self.started.elapsed());
        metering::price(&self.services, &mut run);
        let services = self.services.clone();
        // Without a runtime (or without room: logged) the run stays open and the next start
        // closes it `interrupted`, uncharged.
        if tokio::runtime::Handle::try_current().is_ok() {
            self.services.background.spawn("run.interrupted", async move {
                metering::charge_run(&services, &run).await;
                match services.store.record_run(&run).await {
                    Ok(()) => count_run(&run),
                    Err(error) => {
                        tracing::warn!(%error, run = %run.id, "could not record an interrupted run");
                    }
                }
            });
        }
    }
}

/// Counts an ended run in the metrics: persona, engine, outcome, duration, tokens.
fn count_run(run: &EngineRun) {
    crate::platform::metrics::engine_run(
        &run.persona,
        &run.engine,
        run.outcome(),
        Duration::from_millis(run.duration_ms),
        run.tokens.map(|t| (t.input, t.output)),
    );
}

/// The end of every run that finished (or failed to start): priced, persisted with its event,
/// counted, then charged — so the `cost` on the record is always what the books charged.
/// (A run cut off mid-way is closed by [`OpenRun`]'s drop instead, charge first.)
async fn close_run(services: &Services, mut run: EngineRun) -> Result<EngineRun, StoreError> {
    metering::price(services, &mut run);
    services.store.record_run(&run).await?;
    count_run(&run);
    metering::charge_run(services, &run).await;
    Ok(run)
}

/// Runs a shell engine and persists the run. A timeout is a recorded run, not an error; failing to
/// start `sh` at all is an error.
pub(crate) async fn run_shell(
    services: &Services,
    who: &RunIdentity,
    run: ShellRun,
) -> Result<EngineRun, StageError> {
    let rules = services.definitions.tool_rules(who.persona);
    executor::check(&run.command, who.persona.name(), &rules)
        .map_err(|denied| StageError::ToolDenied(denied.to_string()))?;
    // The job gate: while the pause is on, the run waits here (no record yet).
    admit(services, who, &run.capabilities, run.timeout).await?;
    let temp_dir = services.temp_dir(who.task_id);
    tokio::fs::create_dir_all(&temp_dir).await?;
    let cwd = run.worktree.dir().to_path_buf();
    let mut spec = CommandSpec::shell(&run.command, cwd, run.timeout, run.output_bytes_max);
    let remote = services
        .fleet
        .as_ref()
        .filter(|_| matches!(who.persona, Persona::Patch | Persona::Circuit));
    if remote.is_none() {
        // Whatever the last run left in `.git` goes: this one starts from a fresh copy.
        sandbox_dir::give_sandbox_git_dir(&run.worktree, &run.sandbox_refs).await?;
    }
    let confined = match &services.sandbox {
        Some(sandbox) => {
            let jail = jail(services, who.persona, who.task_id, &run.worktree, &temp_dir);
            Some((sandbox, sandbox.launch(&jail, &mut spec)))
        }
        None => None,
    };
    spec.env_clear = true;
    spec.env = governed_env(services, who.persona);
    spec.env
        .push(("TMPDIR".into(), temp_dir.display().to_string()));
    spec.env.extend(run.env);
    spec.env
        .push((process::INSTANCE_VARIABLE.into(), run.instance));
    let command = Some(services.redactor.redact(&run.command));
    let mut running = who.running("shell", command);
    running.prompt_digest = run.prompt_digest;
    running.sandbox = services.sandbox.as_ref().map(|s| s.name().to_owned());
    let open = OpenRun::start(services, running).await?;
    let ran = match remote {
        Some(fleet) => {
            // The task's capabilities and its persona's defaults (`capabilities:` in its file).
            let mut capabilities = run.capabilities.clone();
            capabilities.extend_from_slice(services.definitions.capabilities(who.persona));
            capabilities.sort_unstable();
            capabilities.dedup();
            let remote_run = crate::work::fleet_run::RemoteRun {
                command: &run.command,
                worktree: &run.worktree,
                env: &spec.env,
                timeout: run.timeout,
                output_bytes_max: run.output_bytes_max,
                capabilities: &capabilities,
                want_diff: who.persona == Persona::Patch,
            };
            let whose = crate::work::fleet_run::Whose {
                task_id: who.task_id,
                persona: who.persona,
                stage: who.stage,
                attempt: who.attempt,
                run_id: open.run.id,
            };
            crate::work::fleet_run::run_remote(services, fleet, &whose, remote_run).await
        }
        None => {
            let hook = confined.as_ref().and_then(|(_, confined)| confined.hook());
            run_live(services, who, open.run.id, &spec, hook)
                .await
                .map_err(StageError::from)
        }
    };
    let mut output = match ran {
        Ok(output) => output,
        Err(error) => {
            let message = error.to_string();
            let failed = open.finish(|record| record.stderr.text = message.clone());
            close_run(services, failed).await?;
            return Err(error);
        }
    };
    // A factory's run was not confined by this host's sandbox: nothing of it to settle.
    let limit = confined
        .filter(|_| remote.is_none())
        .and_then(|(sandbox, confined)| sandbox.settle(confined, &mut output));
    let redact = |mut captured: CapturedOutput| {
        captured.text = services.redactor.redact(&captured.text);
        captured
    };
    let mut record = open.finish(|record| {
        record.exit_code = output.exit_code;
        record.signal = output.signal;
        record.timed_out = output.timed_out;
        record.stdout = redact(output.stdout);
        record.stderr = redact(output.stderr);
    });
    record.duration_ms = millis(output.duration);
    let record = close_run(services, record).await?;
    match limit {
        Some(limit) => Err(StageError::ResourceLimit(format!(
            "the {} command hit its {limit} ({}); its output is kept in run {}",
            who.persona.name(),
            ending(&record),
            record.id
        ))),
        None => Ok(record),
    }
}

/// Passes the job gate ([`crate::work::fleet_run::waiting::admit`]) for `who`'s job.
async fn admit(
    services: &Services,
    who: &RunIdentity,
    capabilities: &[String],
    timeout: Duration,
) -> Result<(), StageError> {
    let waiter = crate::work::fleet_run::waiting::Waiter {
        task_id: who.task_id,
        persona: who.persona,
        stage: who.stage,
    };
    crate::work::fleet_run::waiting::admit(services, waiter, capabilities, timeout).await
}

/// Runs `spec` while its output goes live to the task's event streams as `run.output` chunks
/// (coalesced, rate-limited, redacted: [`crate::platform::live_output`]); the last chunks are
/// out before this returns, so before the run's record and its events.
async fn run_live(
    services: &Services,
    who: &RunIdentity,
    run_id: Uuid,
    spec: &CommandSpec,
    hook: Option<std::sync::Arc<dyn process::SpawnHook>>,
) -> Result<process::CommandOutput, process::SpawnError> {
    let (tap, taps) = process::OutputTap::channel(live_output::TAP_CAPACITY);
    let live = &services.live_output;
    let persona = who.persona.name();
    let forward = live_output::forward(
        taps,
        &services.redactor,
        || live.watched(who.task_id),
        |chunk| {
            live.publish(RunOutput {
                task_id: who.task_id,
                run_id,
                persona: persona.to_owned(),
                stage: who.stage,
                attempt: who.attempt,
                stream: chunk.stream,
                text: chunk.text,
                dropped_bytes: chunk.dropped_bytes,
            });
        },
    );
    let (output, ()) = tokio::join!(process::run_hooked(spec, Some(tap), hook), forward);
    output
}

/// What a sandboxed engine or verify command may touch. Write: its worktree's files (with the
/// disposable `.git` made for the run: [`sandbox_dir`]), its private temp dir, `/dev`, and the
/// configured extras. Read: the repository's `objects` (what that `.git` borrows) and the task's
/// prompt files — nothing else of the repository: not its refs, config, hooks or the worktree's
/// admin dir, which the service alone writes and reads. Network: its persona's `network: true`.
fn jail(
    services: &Services,
    persona: Persona,
    task_id: TaskId,
    worktree: &Git,
    temp_dir: &Path,
) -> sandbox::Jail {
    let cwd = worktree.dir().to_path_buf();
    let mut writable = vec![cwd.clone(), temp_dir.to_path_buf(), PathBuf::from("/dev")];
    writable.extend(services.config.governance.sandbox_writable.iter().cloned());
    let mut readable = vec![services.prompt_dir(task_id)];
    if let Some(linked) = worktree.linked() {
        readable.push(linked.common.join("objects"));
    }
    sandbox::Jail {
        disk: vec![cwd.clone(), temp_dir.to_path_buf()],
        cwd,
        writable,
        readable,
        network: services.definitions.network_allowed(persona),
    }
}

/// The environment a governed command starts from: the basics ([`executor::ENV_PASSED`]) and
/// the variables its persona's `env` allows — nothing else of the service's environment.
pub(crate) fn governed_env(services: &Services, persona: Persona) -> Vec<(String, String)> {
    let allowed = services
        .definitions
        .env_allowed(persona)
        .iter()
        .filter_map(|name| std::env::var(name).ok().map(|value| (name.clone(), value)));
    executor::passed_env().into_iter().chain(allowed).collect()
}

/// What is left of a task's `max_wall_secs` (`None`: no cap). A task past its cap is refused
/// with `BUDGET_EXCEEDED` — checked when each persona job starts, and every engine's timeout is
/// cut to what is left, so no run outlives the budget.
pub(crate) fn wall_budget_left(task: &Task) -> Result<Option<Duration>, StageError> {
    let (Some(cap_secs), Some(started)) =
        (task.billing.budget.max_wall_secs, task.progress.started_at)
    else {
        return Ok(None);
    };
    let used_secs = u64::try_from((Utc::now() - started).num_seconds()).unwrap_or(0);
    if used_secs >= cap_secs {
        return Err(StageError::BudgetExceeded(format!(
            "max_wall_secs: the task has run {used_secs}s of its {cap_secs}s"
        )));
    }
    Ok(Some(Duration::from_secs(cap_secs - used_secs)))
}

/// `timeout`, cut to what is left of the task's wall-clock budget.
pub(crate) fn capped_timeout(task: &Task, timeout: Duration) -> Result<Duration, StageError> {
    Ok(wall_budget_left(task)?.map_or(timeout, |left| left.min(timeout)))
}

/// One call of an `openai` engine: the completion is persisted as an engine run (its text
/// redacted, its token usage kept and metered) before it is returned. When the task's model
/// tokens then exceed `max_tokens`, the answer is refused with `BUDGET_EXCEEDED`.
pub(crate) async fn run_model(
    services: &Services,
    who: &RunIdentity,
    provider_name: &str,
    system: &str,
    user: &str,
    max_tokens: Option<u64>,
) -> Result<String, StageError> {
    let provider = services
        .config
        .providers
        .get(provider_name)
        .ok_or_else(|| StageError::EngineFailed {
            message: format!("no provider `{provider_name}` in [providers]"),
            source: None,
        })?;
    let timeout = Duration::from_secs(services.config.engines.timeout_secs);
    admit(services, who, &[], timeout).await?;
    let command = Some(format!("openai:{provider_name}/{}", provider.model));
    let mut running = who.running("openai", command);
    running.prompt_digest = Some(crate::platform::prompt::prompt_digest(&format!(
        "{system}\n\n{user}"
    )));
    let open = OpenRun::start(services, running).await?;
    let completion = match openai::complete(provider, system, user).await {
        Ok(completion) => completion,
        Err(error) => {
            // A failed call is a finished run without an answer, recorded like any other.
            let message = services.redactor.redact(&error.to_string());
            let failed = open.finish(|record| record.stderr.text = message.clone());
            close_run(services, failed).await?;
            return Err(if error.is_transient() {
                StageError::ProviderUnavailable(message)
            } else {
                // The redacted text only: the provider's error may quote a secret.
                StageError::EngineFailed {
                    message,
                    source: None,
                }
            });
        }
    };
    let record = open.finish(|record| {
        record.exit_code = Some(0);
        record.stdout = CapturedOutput {
            text: services.redactor.redact(&completion.content),
            truncated_bytes: 0,
        };
        record.tokens = Some(completion.usage);
    });
    close_run(services, record).await?;
    if let Some(cap) = max_tokens {
        let used: u64 = services
            .store
            .runs(who.task_id)
            .await?
            .iter()
            .filter_map(|run| run.tokens)
            .map(|tokens| tokens.total())
            .sum();
        if used > cap {
            return Err(StageError::BudgetExceeded(format!(
                "max_tokens: the task used {used} model tokens of its {cap}"
            )));
        }
    }
    Ok(completion.content)
}

/// Persists the run of a builtin engine that produced `stdout` (redacted, like every output).
pub(crate) async fn record_builtin(
    services: &Services,
    who: &RunIdentity,
    stdout: String,
    started: Instant,
) -> Result<EngineRun, StageError> {
    // A builtin engine computes in memory; its run is recorded (and the stage goes on) only
    // once the job gate lets it, and its duration leaves the wait out.
    let gate = Instant::now();
    let timeout = Duration::from_secs(services.config.engines.timeout_secs);
    admit(services, who, &[], timeout).await?;
    let waited = gate.elapsed();
    let stdout = services.redactor.redact(&stdout);
    let record = EngineRun {
        id: Uuid::now_v7(),
        task_id: who.task_id,
        persona: who.persona.name().to_owned(),
        engine: "builtin".into(),
        stage: who.stage,
        attempt: who.attempt,
        command: None,
        exit_code: Some(0),
        signal: None,
        timed_out: false,
        stdout: CapturedOutput {
            text: stdout,
            truncated_bytes: 0,
        },
        stderr: CapturedOutput::default(),
        duration_ms: millis(started.elapsed().saturating_sub(waited)),
        tokens: None,
        prompt_digest: None,
        cost: None,
        started_at: Utc::now(),
        status: RunStatus::Finished,
        sandbox: None,
    };
    Ok(close_run(services, record).await?)
}

/// How a run ended, for messages: "exited with code 2", "was killed by signal 9".
pub(crate) fn ending(run: &EngineRun) -> String {
    match (run.exit_code, run.signal) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => "ended without an exit status".to_owned(),
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Steps the builtin planner makes at most; the rest of a long description is folded into the last.
const PLAN_STEPS_MAX: usize = 12;

/// The builtin planner: a deterministic structured plan from the task's text.
///
/// Each non-empty line or sentence of the description becomes a step; words that look like paths
/// (`src/lib.rs`, `README.md`) become the step's files; the risk grows with the plan's size and
/// with words that signal risky work.
///
/// Earlier failures on the same repository (`history`) open the plan with a step to avoid them.
pub(crate) fn builtin_plan(task: &Task, history: &[Task]) -> Plan {
    let mut sentences: Vec<String> = task
        .spec
        .description
        .lines()
        .flat_map(|line| line.split(". "))
        .map(|part| {
            part.trim()
                .trim_start_matches(['-', '*', ' '])
                .trim_end_matches('.')
                .trim()
                .to_owned()
        })
        .filter(|part| !part.is_empty())
        .collect();
    if sentences.is_empty() {
        sentences.push(task.spec.title.clone());
    }
    if sentences.len() > PLAN_STEPS_MAX {
        let rest = sentences.split_off(PLAN_STEPS_MAX - 1).join("; ");
        sentences.push(rest);
    }
    let mut steps: Vec<PlanStep> = sentences
        .iter()
        .enumerate()
        .map(|(index, sentence)| PlanStep {
            title: sentence.clone(),
            files: mentioned_files(sentence),
            rationale: format!("step {} of the task as described", index + 1),
        })
        .collect();
    if !history.is_empty() {
        let codes: Vec<String> = history
            .iter()
            .filter_map(|t| {
                t.outcome
                    .error
                    .as_ref()
                    .map(|e| format!("{} ({})", t.id, e.code))
            })
            .collect();
        steps.insert(
            0,
            PlanStep {
                title: "review the earlier failures on this repository and avoid repeating them"
                    .into(),
                files: Vec::new(),
                rationale: format!("recent failed tasks: {}", codes.join(", ")),
            },
        );
    }
    steps.push(PlanStep {
        title: format!("make `{}` pass", task.spec.verify),
        files: Vec::new(),
        rationale: "the verify gate must pass before delivery".into(),
    });
    Plan {
        summary: task.spec.title.clone(),
        risk: risk_of(task, steps.len()).into(),
        steps,
    }
}

/// `plan` with every secret value in its text replaced: what is kept on the task and handed to
/// the next personas' prompts.
pub(crate) fn redact_plan(redactor: &Redactor, plan: Plan) -> Plan {
    let Plan {
        summary,
        steps,
        risk,
    } = plan;
    Plan {
        summary: redactor.redact(&summary),
        steps: steps
            .into_iter()
            .map(|step| PlanStep {
                title: redactor.redact(&step.title),
                files: step.files.iter().map(|f| redactor.redact(f)).collect(),
                rationale: redactor.redact(&step.rationale),
            })
            .collect(),
        risk: redactor.redact(&risk),
    }
}

fn mentioned_files(text: &str) -> Vec<String> {
    let mut files: Vec<String> = text
        .split(|c: char| c.is_whitespace() || c == ',' || c == '`' || c == '(' || c == ')')
        .map(|word| word.trim_end_matches([':', ';', '.']))
        .filter(|word| {
            let has_extension = word.rsplit_once('.').is_some_and(|(stem, ext)| {
                !stem.is_empty()
                    && (1..=5).contains(&ext.len())
                    && ext.chars().all(|c| c.is_ascii_alphanumeric())
            });
            (word.contains('/') || has_extension) && !word.starts_with("http")
        })
        .map(str::to_owned)
        .collect();
    files.sort();
    files.dedup();
    files
}

fn risk_of(task: &Task, step_count: usize) -> &'static str {
    let text = format!("{} {}", task.spec.title, task.spec.description).to_lowercase();
    let risky = [
        "migration",
        "delete",
        "security",
        "auth",
        "database",
        "schema",
        "concurrency",
    ];
    if risky.iter().any(|word| text.contains(word)) || step_count > 8 {
        "high"
    } else if step_count > 3 {
        "medium"
    } else {
        "low"
    }
}

/// The builtin implementer's note: the plan, as `.glitchlab/notes/<id>.md`. It is committed only
/// into a repository that opted in (it has a `.glitchlab/` directory); elsewhere Patch writes it to
/// the data dir ([`Services::note_path`](crate::runtime::Services::note_path)) and the demo attempt
/// changes nothing, so the base never gets a commit nobody asked for.
pub(crate) fn builtin_note(task: &Task, attempt: u32) -> (String, String) {
    let path = format!(".glitchlab/notes/{}.md", task.id);
    let mut text = format!(
        "# {}\n\n{}\n\nAttempt {attempt}.\n",
        task.spec.title, task.spec.description
    );
    if let Some(plan) = &task.progress.plan {
        text.push_str(&format!("\n## Plan ({} risk)\n\n", plan.risk));
        for (index, step) in plan.steps.iter().enumerate() {
            text.push_str(&format!("{}. {}\n", index + 1, step.title));
        }
    }
    (path, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(description: &str) -> Task {
        let mut task = Task::for_test("Add greeting", description);
        task.spec.verify = "test -f hello.txt".into();
        task
    }

    #[test]
    fn plan_has_a_step_per_sentence_and_names_files() {
        let plan = builtin_plan(
            &task("Create hello.txt with a greeting. Mention it in README.md"),
            &[],
        );
        assert_eq!(plan.summary, "Add greeting");
        assert_eq!(plan.steps.len(), 3);
        assert_eq!(plan.steps[0].files, vec!["hello.txt"]);
        assert_eq!(plan.steps[1].files, vec!["README.md"]);
        assert_eq!(plan.risk, "low");
    }

    /// The builtin planner copies the task's text (its verify command into the last step): what
    /// is kept of the plan holds no secret value, in any encoding the redactor knows.
    #[test]
    fn a_plan_is_redacted_before_it_is_kept() {
        let secret = "hunter2-7f3a9c-very-secret";
        let redactor = Redactor::new([("TOKEN".to_owned(), secret.to_owned())]);
        let mut task = task(&format!(
            "Use {secret} in src/{secret}.rs. Then hex {}",
            hex::encode(secret)
        ));
        task.spec.verify = format!("test \"$KEY\" = {secret}");
        task.spec.title = format!("Rotate {secret}");
        let plan = redact_plan(&redactor, builtin_plan(&task, &[]));
        let text = serde_json::to_string(&plan).unwrap();
        assert!(!text.contains(secret), "{text}");
        assert!(!text.contains(&hex::encode(secret)), "{text}");
        assert_eq!(
            plan.steps.last().unwrap().title,
            "make `test \"$KEY\" = [REDACTED:TOKEN]` pass"
        );
        assert_eq!(plan.summary, "Rotate [REDACTED:TOKEN]");
        assert_eq!(plan.steps[0].files, vec!["src/[REDACTED:TOKEN].rs"]);
    }

    #[test]
    fn plan_is_bounded_and_deterministic() {
        let long: String = (0..40).map(|i| format!("step {i}\n")).collect();
        let first = builtin_plan(&task(&long), &[]);
        assert_eq!(first.steps.len(), PLAN_STEPS_MAX + 1);
        assert_eq!(first, builtin_plan(&task(&long), &[]));
        assert_eq!(first.risk, "high");
    }
}
