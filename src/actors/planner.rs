//! Planner: turns a task's text into a structured [`Plan`].
//!
//! # Restarts
//!
//! The policy of [`crate::runtime::supervision`], with no deviation: planning again from the start
//! is safe, as it writes nothing but its run record.

use std::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::model::persona::Persona;
use crate::model::task::branch_name;
use crate::model::task::{EngineSpec, Plan, Stage, Task, TaskId};
use crate::platform::git::Git;
use crate::platform::prompt;
use crate::runtime::directory::PersonaMailbox;
use crate::runtime::jobs::{InFlightJobs, JobKey, JobReply, StageError};
use crate::runtime::Services;
use crate::work::engine::{self, RunIdentity, ShellRun};

/// The Planner persona.
pub(crate) struct Planner;

/// Planner's start-up arguments.
pub(crate) struct PlannerArguments {
    /// Shared services.
    pub services: Services,
}

/// Planner's state: rebuilt empty on restart (in-flight requests are retried by their pipelines).
pub(crate) struct PlannerState {
    services: Services,
    jobs: InFlightJobs<Plan>,
}

/// Planner's messages.
pub(crate) enum PlannerMsg {
    /// Answers at once: proof the mailbox is read (`/readyz`).
    Ping(RpcReplyPort<()>),
    /// Make a plan for a task.
    Plan {
        /// The task as persisted.
        task: Box<Task>,
        /// Where the plan goes.
        reply: JobReply<Plan>,
    },
    /// A plan job finished (sent by the job itself).
    JobDone {
        /// Which job.
        key: JobKey,
        /// Which run of it.
        token: u64,
        /// Its result.
        result: Result<Plan, StageError>,
    },
    /// Abort everything running for a task.
    CancelTask(TaskId),
}

impl PersonaMailbox for PlannerMsg {
    const PERSONA: Persona = Persona::Planner;

    fn ping(reply: RpcReplyPort<()>) -> Self {
        PlannerMsg::Ping(reply)
    }
}

impl Actor for Planner {
    type Msg = PlannerMsg;
    type State = PlannerState;
    type Arguments = PlannerArguments;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(PlannerState {
            services: args.services,
            jobs: InFlightJobs::default(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            PlannerMsg::Ping(reply) => {
                let _ = reply.send(());
            }
            PlannerMsg::Plan { task, reply } => {
                crate::handling!(state.services, Persona::Planner, task, "planner.poison");
                crate::work_failpoint!("planner.handle");
                let key = (task.id, Stage::Plan);
                let work = make_plan(state.services.clone(), *task);
                state
                    .jobs
                    .start(key, reply, myself, work, |key, token, result| {
                        PlannerMsg::JobDone { key, token, result }
                    });
                crate::handled!(state.services, Persona::Planner);
            }
            PlannerMsg::JobDone { key, token, result } => state.jobs.finish(key, token, result),
            PlannerMsg::CancelTask(task_id) => state.jobs.cancel_task(task_id),
        }
        Ok(())
    }
}

/// Earlier failures a plan prompt carries at most.
const HISTORY_TASKS_MAX: usize = 5;
/// Recent tasks searched for them.
const HISTORY_SCAN_MAX: usize = 1000;

async fn make_plan(services: Services, task: Task) -> Result<Plan, StageError> {
    engine::wall_budget_left(&task)?;
    let history = services
        .store
        .recent_failures(
            &task.spec.repo,
            task.id,
            HISTORY_TASKS_MAX,
            HISTORY_SCAN_MAX,
        )
        .await?;
    let who = RunIdentity {
        task_id: task.id,
        persona: Persona::Planner,
        stage: Stage::Plan,
        attempt: 0,
    };
    let plan = match services.engine_for(&task, Persona::Planner) {
        EngineSpec::Openai { provider } => {
            plan_with_model(&services, &task, &who, &provider, &history).await
        }
        EngineSpec::Builtin => {
            let started = Instant::now();
            let plan = engine::builtin_plan(&task, &history);
            let text = serde_json::to_string_pretty(&plan)
                .map_err(|e| StageError::internal_from(e.to_string(), e))?;
            engine::record_builtin(&services, &who, text, started).await?;
            Ok(plan)
        }
        EngineSpec::Shell { command } => {
            let system_prompt = services.definitions.system_prompt(Persona::Planner);
            let files = prompt::write_files(
                &services.prompt_dir(task.id),
                "plan",
                0,
                &(prompt::build(system_prompt, &task, None) + &prompt::history_section(&history)),
                None,
                &services.redactor,
            )
            .await?;
            // The planner may read the repository, but in its own worktree, never the user's checkout.
            let worktree = services.worktree_path(task.id);
            crate::work::remote::sync(&services, &task).await?;
            let (_, worktree) = Git::new(
                services.repo_dir(&task.spec.repo),
                services.config.git.timeout(),
            )
            .ensure_worktree(&worktree, &branch_name(task.id), &task.spec.base_branch)
            .await
            .inspect_err(|_| services.repo_checks.forget(&task.spec.repo))?;
            let config = &services.config.engines;
            let run = engine::run_shell(
                &services,
                &who,
                ShellRun {
                    command,
                    worktree,
                    sandbox_refs: vec![format!("refs/heads/{}", task.spec.base_branch)],
                    env: prompt::engine_env(&task, 0, &files),
                    timeout: engine::capped_timeout(
                        &task,
                        services.engine_timeout(Persona::Planner, config.timeout_secs),
                    )?,
                    output_bytes_max: config.output_bytes_max,
                    instance: services.instance(),
                    prompt_digest: Some(files.digest.clone()),
                    capabilities: task.spec.capabilities.clone(),
                },
            )
            .await?;
            if run.timed_out {
                return Err(StageError::EngineTimeout(format!(
                    "planner engine timed out after {}s",
                    config.timeout_secs
                )));
            }
            serde_json::from_str::<Plan>(run.stdout.text.trim())
                .ok()
                .filter(|plan| run.succeeded() && !plan.steps.is_empty())
                .ok_or_else(|| {
                    StageError::PlanInvalid(format!(
                        "the planner engine {} without printing a JSON plan with steps",
                        engine::ending(&run)
                    ))
                })
        }
    }?;
    // The task and every prompt carry the plan from here on: no secret value in it, whichever
    // engine wrote it (the builtin one copies the task's text; a model may echo anything).
    Ok(engine::redact_plan(&services.redactor, plan))
}

/// What the model is told about the shape of its answer.
const PLAN_FORMAT: &str = "\n# Answer\n\nAnswer with one JSON object and nothing else: \
{\"summary\": string, \"steps\": [{\"title\": string, \"files\": [string], \"rationale\": string}], \
\"risk\": \"low\" | \"medium\" | \"high\"}. At least one step.\n";

/// Asks the model for a plan; an invalid answer is asked for once more with the reason, then
/// the stage fails `PLAN_INVALID`.
async fn plan_with_model(
    services: &Services,
    task: &Task,
    who: &RunIdentity,
    provider: &str,
    history: &[Task],
) -> Result<Plan, StageError> {
    let system = services.definitions.system_prompt(Persona::Planner);
    let prompt = prompt::build("", task, None) + &prompt::history_section(history) + PLAN_FORMAT;
    let max_tokens = task.billing.budget.max_tokens;
    let answer = engine::run_model(services, who, provider, system, &prompt, max_tokens).await?;
    let reason = match parse_plan(&answer) {
        Ok(plan) => return Ok(plan),
        Err(reason) => reason,
    };
    let again = format!("{prompt}\n# Your previous answer was not a valid plan\n\n{reason}\nAnswer with the JSON object only.\n");
    let answer = engine::run_model(services, who, provider, system, &again, max_tokens).await?;
    parse_plan(&answer).map_err(|reason| {
        StageError::PlanInvalid(format!(
            "the model's plan was invalid twice; last: {reason}"
        ))
    })
}

/// Parses and checks a model's plan: a summary, at least one titled step, a known risk.
pub(crate) fn parse_plan(answer: &str) -> Result<Plan, String> {
    let json = crate::platform::openai::json_in(answer).ok_or("the answer holds no JSON object")?;
    let plan: Plan = serde_json::from_str(json).map_err(|e| format!("not a plan: {e}"))?;
    if plan.summary.trim().is_empty() {
        return Err("summary is empty".into());
    }
    if plan.steps.is_empty() || plan.steps.iter().any(|s| s.title.trim().is_empty()) {
        return Err("a plan needs at least one step, each with a title".into());
    }
    if !["low", "medium", "high"].contains(&plan.risk.as_str()) {
        return Err(format!(
            "risk must be low, medium or high, not `{}`",
            plan.risk
        ));
    }
    Ok(plan)
}
