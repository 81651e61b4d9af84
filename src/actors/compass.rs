//! Compass: the project manager at the root of the tree.
//!
//! It starts and supervises the personas, owns the queue of tasks waiting for a pipeline slot
//! (priority, then age), spawns one [`Pipeline`] per running task, and restarts its children as
//! [`crate::runtime::supervision`] states (ractor restarts nothing by itself).
//!
//! # Restarts
//!
//! Compass applies the policy of [`crate::runtime::supervision`] to its children (the typed refs it
//! keeps are in `children`). Deviation: it is the root, so nobody restarts it; a crash shuts the
//! service down as on SIGTERM (exit 1) and the next start rebuilds its state (slots, queue, blocked
//! set, tasks resuming) from the store. The ingress and intake answer `COMPASS_UNAVAILABLE`
//! meanwhile; a stored task whose `TaskSubmitted` was lost is picked up at the next start. After an
//! unclean stop, a task whose own engine or verify run was in flight at `compass.poison_after`
//! consecutive ones is dead-lettered `POISONED`, not resumed.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use serde_json::json;

use self::children::{spawn_persona, PersonaRef};
use super::pipeline::{Pipeline, PipelineArguments, PipelineMsg};
use crate::model::errors::TaskActionError;
use crate::model::lifecycle::{self, Effect};
use crate::model::persona::Persona;
use crate::model::task::{Priority, Stage, Task, TaskId, TaskStatus};
use crate::platform::metrics;
use crate::runtime::compass::{CompassMsg, TaskAction};
use crate::runtime::directory::{ActorEntry, ActorHealth};
use crate::runtime::supervision::{RestartDecision, RestartHistory};
use crate::runtime::Services;
use crate::storage::store::{NewEvent, StoreError};
use crate::work::metering;
use crate::work::transitions::{self, MovedTask};

/// How long Compass waits for its children to stop on shutdown.
const SHUTDOWN_CHILDREN_TIMEOUT: Duration = Duration::from_secs(15);
/// How long Compass waits before handling again a message a storage error cut short (a full or
/// failing disk is a state the store recovers from, never a reason for Compass to stop).
const STORE_RETRY_DELAY: Duration = Duration::from_secs(5);
/// Most tasks whose submission Compass retries at once (bounded like the queue it feeds).
const STORE_RETRIES_MAX: usize = 10_000;

/// The Compass actor.
pub(crate) struct Compass;

/// Compass's start-up arguments.
pub(crate) struct CompassArguments {
    /// Shared services.
    pub services: Services,
}

mod children;

struct PersonaSlot {
    /// The current incarnation; `None` while it waits to be restarted or after it failed.
    actor: Option<PersonaRef>,
    history: RestartHistory,
    /// Crashes each unfinished task's requests caused: past `max_restarts` the task is
    /// poisoned, not the persona.
    blame: HashMap<TaskId, u32>,
}

struct PipelineSlot {
    /// The current incarnation; `None` while it waits to be restarted.
    actor: Option<ActorRef<PipelineMsg>>,
    history: RestartHistory,
    /// Its task waits in a merge queue: the slot does not count against the limit.
    parked: bool,
    /// Its task left the queue with work to do and waits, still parked, for a slot
    /// ([`CompassMsg::SlotWanted`]).
    wants_slot: bool,
}

/// Compass's state.
pub(crate) struct CompassState {
    services: Services,
    personas: BTreeMap<Persona, PersonaSlot>,
    pipelines: HashMap<TaskId, PipelineSlot>,
    /// Tasks waiting for a slot: ordered by priority, then by id (UUID v7: age).
    queue: BTreeSet<(Priority, TaskId)>,
    /// Tasks that were running when the service last stopped: they get slots before the queue.
    resuming: VecDeque<TaskId>,
    /// Tasks waiting for dependencies (their records say on which).
    blocked: BTreeSet<TaskId>,
    /// While a `TaskSubmitted` is handled: its queue place (reserved by the ingress) is still to
    /// be freed, in the same step as the first queue update that counts the task.
    admission_pending: bool,
    /// When this Compass started: a budget reservation older than that whose task does not
    /// exist was orphaned by a crash (one made since may still be getting its task).
    started_at: chrono::DateTime<chrono::Utc>,
    /// The periodic clean-up sweep's timer (aborted when Compass stops).
    sweep_timer: Option<tokio::task::JoinHandle<()>>,
    /// Whether a clean-up sweep is running: a slow one is not overlapped by the next.
    sweeping: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Submissions a storage error cut short, sent again after [`STORE_RETRY_DELAY`]: their
    /// queue place was freed already, so the retry frees none.
    retrying: BTreeSet<TaskId>,
}

impl Actor for Compass {
    type Msg = CompassMsg;
    type State = CompassState;
    type Arguments = CompassArguments;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let started_at = chrono::Utc::now();
        let services = args.services;
        services.directory.set(
            entry(Persona::Compass.name(), None, ActorHealth::Running, 0),
            Some(myself.get_cell()),
        );
        let mut state = CompassState {
            services,
            personas: BTreeMap::new(),
            pipelines: HashMap::new(),
            queue: BTreeSet::new(),
            resuming: VecDeque::new(),
            blocked: BTreeSet::new(),
            admission_pending: false,
            started_at,
            sweep_timer: None,
            sweeping: Default::default(),
            retrying: BTreeSet::new(),
        };
        for name in Persona::ALL.into_iter().filter(|p| *p != Persona::Compass) {
            let actor = spawn_persona(name, &myself, &state.services).await?;
            state.services.directory.set(
                entry(name.name(), PARENT, ActorHealth::Running, 0),
                Some(actor.cell()),
            );
            state.personas.insert(
                name,
                PersonaSlot {
                    actor: Some(actor),
                    history: RestartHistory::default(),
                    blame: HashMap::new(),
                },
            );
        }
        Ok(state)
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let loading = Instant::now();
        slow_reload_for_tests().await;
        metering::void_orphan_reservations_later(&state.services, state.started_at);
        crate::work::cleanup::sweep_later(&state.services, &state.sweeping);
        let every = state.services.config.git.sweep_interval_secs;
        if every > 0 {
            let timer = myself.send_interval(Duration::from_secs(every), || CompassMsg::Sweep);
            state.sweep_timer = Some(timer);
        }
        let poisoned = reload_queue(state).await?;
        // The queue is counted now: the ingress admits against a true count from here on.
        let depth = state.queue.len() + state.resuming.len();
        state.services.directory.set_queue_loaded(depth);
        let elapsed = loading.elapsed();
        metrics::queue_reloaded(elapsed);
        tracing::info!(
            queued = depth,
            reload_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            "compass loaded the queue; intake is open"
        );
        // After the queue is open: a scan of every record, for budgets a stop left unsettled.
        for task in state.services.store.unsettled_tasks().await? {
            settle_later(&state.services, task.id);
        }
        // Their ends' effects: budgets settle, and tasks waiting on them fail `DEPENDENCY_FAILED`.
        for moved in poisoned {
            worth_retrying(
                "a poisoned task's end",
                execute(&myself, state, &moved).await,
            );
        }
        let blocked: Vec<TaskId> = state.blocked.iter().copied().collect();
        for task_id in blocked {
            worth_retrying("a blocked task", on_blocked(&myself, state, task_id).await);
        }
        dispatch(&myself, state).await;
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(timer) = state.sweep_timer.take() {
            timer.abort();
        }
        // Running tasks stay `running` at their stage in sled: the next start resumes them.
        myself
            .stop_children_and_wait(Some("shutdown".into()), Some(SHUTDOWN_CHILDREN_TIMEOUT))
            .await;
        state.services.directory.mark_all_stopped();
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            CompassMsg::Sweep => {
                crate::work::cleanup::sweep_later(&state.services, &state.sweeping);
            }
            CompassMsg::Ping(reply) => {
                let _ = reply.send(());
            }
            CompassMsg::TaskSubmitted(task_id) => {
                // A retry's place was freed the first time.
                state.admission_pending = !state.retrying.remove(&task_id);
                let queued = on_submitted(&myself, state, task_id).await;
                // The ingress reserved a queue place for it: freed with the first queue update
                // (`set_queue_depth`), or here if there was none.
                if std::mem::take(&mut state.admission_pending) {
                    state.services.directory.admission_queued();
                }
                if worth_retrying("a submitted task", queued)
                    && state.retrying.len() < STORE_RETRIES_MAX
                {
                    state.retrying.insert(task_id);
                    myself.send_after(STORE_RETRY_DELAY, move || {
                        CompassMsg::TaskSubmitted(task_id)
                    });
                }
            }
            CompassMsg::Act {
                task_id,
                action,
                by,
                reply,
            } => {
                let outcome = act(&myself, state, task_id, action, by.as_deref()).await;
                let _ = reply.send(outcome);
            }
            CompassMsg::RestartPersona(name) => restart_persona(&myself, state, name).await,
            CompassMsg::RevivePersona(name) => revive_persona(&myself, state, name).await,
            CompassMsg::PipelineStartFailed(task_id, reason) => {
                let failure = format!("failed to start: {reason}");
                let exit = on_pipeline_exit(&myself, state, task_id, failure).await;
                retry_pipeline_exit(&myself, task_id, reason, exit);
            }
            CompassMsg::RestartPipeline(task_id) => {
                if state.pipelines.contains_key(&task_id) {
                    start_pipeline(&myself, state, task_id).await;
                }
            }
            CompassMsg::Parked(task_id, true) => {
                if let Some(slot) = state.pipelines.get_mut(&task_id) {
                    slot.parked = true;
                    dispatch(&myself, state).await;
                }
            }
            // Unparked only if that fits: a pipeline that goes on working asks for its slot
            // (`SlotWanted`); one that ends frees it anyway.
            CompassMsg::Parked(task_id, false) => {
                if fits_unparked(state, task_id) {
                    if let Some(slot) = state.pipelines.get_mut(&task_id) {
                        slot.parked = false;
                    }
                }
            }
            CompassMsg::SlotWanted(task_id) => {
                if let Some(slot) = state.pipelines.get_mut(&task_id) {
                    slot.wants_slot = true;
                }
                dispatch(&myself, state).await;
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, failure) = match event {
            SupervisionEvent::ActorTerminated(cell, _, reason) => (cell, reason),
            SupervisionEvent::ActorFailed(cell, error) => (cell, Some(format!("crashed: {error}"))),
            _ => return Ok(()),
        };
        let id = cell.get_id();
        if let Some(name) = state
            .personas
            .iter()
            .find(|(_, s)| s.actor.as_ref().map(PersonaRef::id) == Some(id))
            .map(|(n, _)| *n)
        {
            on_persona_exit(&myself, state, name, failure.unwrap_or_default()).await;
        } else if let Some(task_id) = state
            .pipelines
            .iter()
            .find(|(_, s)| s.actor.as_ref().map(|pipeline| pipeline.get_id()) == Some(id))
            .map(|(t, _)| *t)
        {
            let reason = failure.unwrap_or_default();
            let exit = on_pipeline_exit(&myself, state, task_id, reason.clone()).await;
            retry_pipeline_exit(&myself, task_id, reason, exit);
        }
        Ok(())
    }
}

/// Puts every unfinished task in the line its status says (the lifecycle's `on_load`), from the
/// store's compact queue index: ids, statuses and priorities only. Full records are read only
/// for the tasks that were running (the unclean-stop count needs their stage); those poisoned
/// are ended instead (answered, for their ends' effects). Blocked tasks' dependencies are looked
/// at once the queue is counted.
async fn reload_queue(state: &mut CompassState) -> Result<Vec<MovedTask>, StoreError> {
    let queued = state.services.store.queued_tasks().await?;
    let mut running = Vec::new();
    for entry in queued.iter().filter(|q| q.status == TaskStatus::Running) {
        running.extend(state.services.store.task(entry.id).await?);
    }
    // Counting unclean stops writes; a full disk skips it this start rather than stop Compass.
    let poisoned = poison_after_unclean_stop(&state.services, &running)
        .await
        .unwrap_or_else(|error| {
            tracing::error!(%error, "could not count unclean stops (storage); no task poisoned this start");
            Vec::new()
        });
    let is_poisoned = |id: TaskId| poisoned.iter().any(|moved| moved.task.id == id);
    for entry in queued.iter().filter(|q| !is_poisoned(q.id)) {
        place(
            state,
            entry.id,
            entry.priority,
            lifecycle::on_load(entry.status),
        );
    }
    tracing::info!(
        unfinished = queued.len() - poisoned.len(),
        resumed = state.resuming.len(),
        poisoned = poisoned.len(),
        "compass reloaded unfinished tasks"
    );
    Ok(poisoned)
}

/// Test hook (`--features failpoints`): `FAILPOINTS=compass.reload=return(<ms>)` makes the queue
/// load at start take that much longer, as a queue of 100,000 tasks does (an async wait: the
/// runtime's workers stay free).
async fn slow_reload_for_tests() {
    #[cfg(feature = "failpoints")]
    {
        let delay_ms = fail::eval("compass.reload", |value| {
            value.and_then(|ms| ms.parse::<u64>().ok())
        })
        .flatten();
        if let Some(ms) = delay_ms {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }
}

/// Logs a storage error that cut a handler short; answers whether it is worth handling the
/// message again: a full, failing or busy store recovers by itself, anything else would fail the
/// same way. Compass never stops for one.
fn worth_retrying(what: &str, result: Result<(), StoreError>) -> bool {
    match result {
        Ok(()) => false,
        Err(error) if error.is_fault() || error.is_overload() => {
            tracing::error!(%error, "compass: storage error while handling {what}; will retry");
            true
        }
        Err(error) => {
            tracing::error!(%error, "compass: storage error while handling {what}; not retried");
            false
        }
    }
}

/// A pipeline's exit that a storage error cut short is handled again after
/// [`STORE_RETRY_DELAY`] (as a start failure: the pipeline is gone either way).
fn retry_pipeline_exit(
    myself: &ActorRef<CompassMsg>,
    task_id: TaskId,
    reason: String,
    exit: Result<(), StoreError>,
) {
    if worth_retrying("a pipeline's exit", exit) {
        myself.send_after(STORE_RETRY_DELAY, move || {
            CompassMsg::PipelineStartFailed(task_id, reason)
        });
    }
}

/// Every persona and pipeline reports to Compass.
const PARENT: Option<&str> = Some(Persona::Compass.name());

fn entry(name: &str, parent: Option<&str>, status: ActorHealth, restarts: u32) -> ActorEntry {
    ActorEntry {
        name: name.to_owned(),
        parent: parent.map(str::to_owned),
        status,
        restarts,
    }
}

async fn record_service_event(state: &CompassState, kind: &'static str, data: serde_json::Value) {
    let event = NewEvent::new(Persona::Compass, kind, data);
    if let Err(error) = state
        .services
        .store
        .append_event(TaskId::service(), event)
        .await
    {
        tracing::error!(%error, kind, "could not record a service event");
    }
}

async fn on_persona_exit(
    myself: &ActorRef<CompassMsg>,
    state: &mut CompassState,
    name: Persona,
    reason: String,
) {
    let policy = state.services.config.supervision.clone();
    let blamed = state.services.directory.take_handling(name);
    let Some(slot) = state.personas.get_mut(&name) else {
        return;
    };
    slot.actor = None;
    let mut decision = slot.history.on_failure(&policy, Instant::now());
    let poisoned = blamed.and_then(|task| {
        let crashes = slot.blame.entry(task).or_default();
        *crashes += 1;
        (*crashes > policy.max_restarts).then_some((task, *crashes))
    });
    if let Some((task, _)) = poisoned {
        // The task is the trouble, not the persona: it ends, and the persona starts over with
        // its whole restart budget (revived at once even if this crash was past the limit).
        slot.blame.remove(&task);
        slot.history.forgive();
        decision = slot.history.on_failure(&policy, Instant::now());
    }
    let restarts = slot.history.total();
    if let Some((task, crashes)) = poisoned {
        Box::pin(poison_for_crashes(myself, state, name, task, crashes)).await;
    }
    match decision {
        RestartDecision::RestartAfter(delay) => {
            tracing::warn!(persona = %name, %reason, ?delay, "persona exited; restarting");
            state.services.directory.set(
                entry(name.name(), PARENT, ActorHealth::Restarting, restarts),
                None,
            );
            myself.send_after(delay, move || CompassMsg::RestartPersona(name));
            let data = json!({"actor": name, "reason": reason, "restart_in_ms": delay.as_millis(), "task": blamed, "poisoned": poisoned.is_some()});
            record_service_event(state, "actor.crashed", data).await;
        }
        RestartDecision::GiveUp => {
            tracing::error!(persona = %name, %reason, "persona crashed past its restart limit; marked failed");
            metrics::actor_failed(name.name());
            state.services.directory.set(
                entry(name.name(), PARENT, ActorHealth::Failed, restarts),
                None,
            );
            let revive_after = policy.revive_after_secs;
            if revive_after > 0 {
                myself.send_after(Duration::from_secs(revive_after), move || {
                    CompassMsg::RevivePersona(name)
                });
            }
            let data = json!({"actor": name, "reason": reason, "restarts": restarts, "revive_after_secs": revive_after, "task": blamed});
            record_service_event(state, "actor.failed", data).await;
        }
    }
}

/// Ends a task whose requests crashed `persona` past its restart limit (`POISONED`), stops its
/// pipeline and drops its jobs, so the other tasks get the persona back.
async fn poison_for_crashes(
    myself: &ActorRef<CompassMsg>,
    state: &mut CompassState,
    persona: Persona,
    task_id: TaskId,
    crashes: u32,
) {
    let why = transitions::Poison::PersonaCrashes { persona, crashes };
    let moved = match transitions::poison(&state.services, task_id, why).await {
        Ok(Some(moved)) => moved,
        Ok(None) => return,
        Err(error) => {
            tracing::error!(%error, task = %task_id, "could not record a poison task; it goes on");
            return;
        }
    };
    metrics::task_poisoned("persona_crashes");
    if let Err(error) = execute(myself, state, &moved).await {
        tracing::error!(%error, task = %task_id, "a poison task's end was cut short; its pipeline's exit settles it");
    }
}

/// Tries a `failed` persona again with a fresh restart budget (a dependency it needed may be
/// back); if it fails again it is `failed` again, until the next cooldown.
async fn revive_persona(myself: &ActorRef<CompassMsg>, state: &mut CompassState, name: Persona) {
    let Some(slot) = state.personas.get_mut(&name) else {
        return;
    };
    if slot.actor.is_some() {
        return;
    }
    slot.history.forgive();
    tracing::warn!(persona = %name, "reviving a failed persona");
    record_service_event(state, "actor.reviving", json!({"actor": name})).await;
    restart_persona(myself, state, name).await;
}

async fn restart_persona(myself: &ActorRef<CompassMsg>, state: &mut CompassState, name: Persona) {
    match spawn_persona(name, myself, &state.services).await {
        Ok(actor) => {
            let Some(slot) = state.personas.get_mut(&name) else {
                return;
            };
            let cell = actor.cell();
            slot.actor = Some(actor);
            let restarts = slot.history.total();
            state.services.directory.set(
                entry(name.name(), PARENT, ActorHealth::Running, restarts),
                Some(cell),
            );
            tracing::info!(persona = %name, restarts, "persona restarted");
            metrics::actor_restarted(name.name());
            record_service_event(
                state,
                "actor.restarted",
                json!({"actor": name, "restarts": restarts}),
            )
            .await;
            for slot in state.pipelines.values() {
                if let Some(pipeline) = &slot.actor {
                    let _ = pipeline.cast(PipelineMsg::PersonaRestarted {
                        persona: name,
                        restarts,
                    });
                }
            }
        }
        Err(error) => {
            on_persona_exit(myself, state, name, format!("failed to start: {error}")).await
        }
    }
}

/// After an unclean stop (no clean-stop mark), counts it against every task that was running
/// *with one of its own engine or verify runs in flight* (recorded `running`, never finished):
/// those with such a run at `compass.poison_after` consecutive ones are ended `POISONED` instead
/// of resumed, so one task cannot crash the service at every start, while a task that merely was
/// running (its run had finished) is resumed. Answers them.
async fn poison_after_unclean_stop(
    services: &Services,
    unfinished: &[Task],
) -> Result<Vec<MovedTask>, StoreError> {
    if services.store.take_clean_stop().await? {
        return Ok(Vec::new());
    }
    let running: Vec<_> = unfinished
        .iter()
        .filter(|t| t.progress.status == TaskStatus::Running)
        .map(|t| {
            (
                t.id,
                t.progress.stage.unwrap_or(Stage::Plan),
                t.progress.attempts,
            )
        })
        .collect();
    let counts = services.store.count_unclean_stops(running).await?;
    let limit = services.config.compass.poison_after;
    let mut poisoned = Vec::new();
    for stops in counts {
        let task_id = stops.task_id;
        if limit == 0 || stops.count < limit {
            if stops.count > 1 {
                tracing::warn!(task = %task_id, stops = stops.count, limit, runs = ?stops.runs, "a task's run was in flight at consecutive unclean stops");
            }
            continue;
        }
        let why = transitions::Poison::UncleanStops {
            stops: stops.count,
            limit,
            runs: stops.runs,
        };
        if let Some(moved) = transitions::poison(services, task_id, why).await? {
            metrics::task_poisoned("unclean_stops");
            poisoned.push(moved);
        }
    }
    Ok(poisoned)
}

async fn on_submitted(
    myself: &ActorRef<CompassMsg>,
    state: &mut CompassState,
    task_id: TaskId,
) -> Result<(), StoreError> {
    let Some(task) = state.services.store.task(task_id).await? else {
        return Ok(());
    };
    if state.pipelines.contains_key(&task_id) {
        return Ok(());
    }
    // A submit is no move: the task waits where the status it was accepted in says.
    let effects = lifecycle::on_load(task.progress.status);
    if effects.is_empty() {
        return Ok(());
    }
    let moved = MovedTask {
        effects: effects.to_vec(),
        task,
    };
    execute(myself, state, &moved).await?;
    dispatch(myself, state).await;
    Ok(())
}

/// Looks at one blocked task; if it ended (a dependency failed), its dependents are next.
async fn on_blocked(
    myself: &ActorRef<CompassMsg>,
    state: &mut CompassState,
    task_id: TaskId,
) -> Result<(), StoreError> {
    let Some(task) = state.services.store.task(task_id).await? else {
        state.blocked.remove(&task_id);
        return Ok(());
    };
    match transitions::evaluate_blocked(&state.services, &task).await? {
        Some(moved) => Box::pin(execute(myself, state, &moved)).await?,
        None => {
            // Moved by another path meanwhile: it no longer waits here.
            if task.progress.status != TaskStatus::Blocked {
                state.blocked.remove(&task_id);
            }
        }
    }
    Ok(())
}

/// Executes the effects a lifecycle move (or [`lifecycle::on_load`]) asked of Compass, for the
/// task as the move left it — the one place Compass acts on a move, never on a status it reads
/// back. In a fixed order: the task leaves its line and its pipeline is told before its jobs are
/// killed, and its budget and dependents come last. `Advance` is the pipeline's; `FreeSlot` and
/// `TakeSlot` arrive as `CompassMsg::Parked` from the pipeline that made the move.
async fn execute(
    myself: &ActorRef<CompassMsg>,
    state: &mut CompassState,
    moved: &MovedTask,
) -> Result<(), StoreError> {
    let task = &moved.task;
    let asks = |effect: Effect| moved.effects.contains(&effect);
    if asks(Effect::Dequeue) {
        dequeue(state, task);
    }
    place(state, task.id, task.spec.priority, &moved.effects);
    let stopping = asks(Effect::StopPipeline);
    let exit_ends = stop_or_clean(state, task, stopping, asks(Effect::CleanUpWorktree));
    if stopping || asks(Effect::KillRunningStage) {
        // After the pipeline has been told, so its call ends as cancelled work, not as a crash.
        cancel_persona_jobs(state, task.id);
    }
    if asks(Effect::EscalateToHuman) {
        transitions::escalate(&state.services, task).await;
    }
    // A stopped pipeline's exit executes the rest of the end (`on_ended_by_pipeline`).
    if asks(Effect::SettleBudget) && !exit_ends {
        settle_later(&state.services, task.id);
    }
    if asks(Effect::WatchDependencies) {
        on_blocked(myself, state, task.id).await?;
    }
    if asks(Effect::NotifyDependents) && !exit_ends {
        notify_dependents(myself, state, task.id).await?;
    }
    set_queue_depth(state);
    Ok(())
}

/// `Dequeue`: the task leaves whichever of Compass's lines it waited in, and the crashes it was
/// blamed for are forgotten.
fn dequeue(state: &mut CompassState, task: &Task) {
    state.queue.remove(&(task.spec.priority, task.id));
    state.resuming.retain(|waiting| *waiting != task.id);
    state.blocked.remove(&task.id);
    for slot in state.personas.values_mut() {
        slot.blame.remove(&task.id);
    }
}

/// The effects that put a task in one of Compass's lines (no IO: start-up places every task
/// before it looks at any blocked one's dependencies).
fn place(state: &mut CompassState, id: TaskId, priority: Priority, effects: &[Effect]) {
    for effect in effects {
        match effect {
            Effect::Enqueue => {
                state.queue.insert((priority, id));
            }
            Effect::ResumeFirst => state.resuming.push_back(id),
            Effect::WatchDependencies => {
                state.blocked.insert(id);
            }
            _ => {}
        }
    }
}

/// `StopPipeline` and `CleanUpWorktree` for a move Compass made. A live pipeline is told to stop:
/// cancelled (it kills its stage and removes its worktree itself) or stopped (its worktree is
/// the start sweep's, as for any task left by a crash); its exit frees the slot. With no live
/// pipeline (queued, blocked, parked at the gate, or waiting for a restart) the slot is freed and
/// the worktree removed now. Answers whether a stopped pipeline's exit ends the task's end.
fn stop_or_clean(state: &mut CompassState, task: &Task, stop: bool, clean: bool) -> bool {
    let pipeline = state
        .pipelines
        .get(&task.id)
        .and_then(|slot| slot.actor.clone());
    match pipeline {
        Some(pipeline) if stop => {
            pipeline.stop(Some("ended".into()));
            return true;
        }
        Some(pipeline) if clean => {
            let _ = pipeline.cast(PipelineMsg::Cancel);
        }
        Some(_) => {}
        None if clean => {
            free_slot(state, task.id);
            transitions::clean_up(&state.services, task);
        }
        None => {}
    }
    false
}

/// `NotifyDependents`: the blocked tasks that depend on `finished` may move now.
async fn notify_dependents(
    myself: &ActorRef<CompassMsg>,
    state: &mut CompassState,
    finished: TaskId,
) -> Result<(), StoreError> {
    let waiting: Vec<TaskId> = state.blocked.iter().copied().collect();
    for task_id in waiting {
        let depends = state
            .services
            .store
            .task(task_id)
            .await?
            .is_some_and(|task| task.spec.deps.contains(&finished));
        if depends {
            Box::pin(on_blocked(myself, state, task_id)).await?;
        }
    }
    Ok(())
}

/// A task ended by a move its own pipeline made (delivered, failed) or that stopped its pipeline
/// (poison): Compass executes the effects every end asks of it (`lifecycle::ENDED`). The clean-up
/// among them was the pipeline's (`after_end`), or is the start sweep's for a stopped one.
async fn on_ended_by_pipeline(
    myself: &ActorRef<CompassMsg>,
    state: &mut CompassState,
    task: Task,
) -> Result<(), StoreError> {
    let effects = lifecycle::ENDED
        .into_iter()
        .filter(|effect| *effect != Effect::CleanUpWorktree)
        .collect();
    execute(myself, state, &MovedTask { task, effects }).await
}

/// Gives free slots to pipelines back from their merge queue first (`SlotWanted`, oldest task
/// first), then starts queued tasks while slots are free.
async fn dispatch(myself: &ActorRef<CompassMsg>, state: &mut CompassState) {
    let slots = state.services.config.compass.max_concurrent_tasks;
    give_back_slots(state);
    while busy_slots(state) < slots {
        let next = state
            .resuming
            .pop_front()
            .or_else(|| state.queue.pop_first().map(|(_, task_id)| task_id));
        let Some(task_id) = next else {
            break;
        };
        start_pipeline(myself, state, task_id).await;
    }
    set_queue_depth(state);
}

/// Answers the pipelines waiting for their slot back (`SlotWanted`) while they fit, oldest task
/// first: each is unparked and told to go on.
fn give_back_slots(state: &mut CompassState) {
    loop {
        let next = state
            .pipelines
            .iter()
            .filter(|(_, slot)| slot.wants_slot)
            .map(|(task_id, _)| *task_id)
            .min();
        let Some(task_id) = next.filter(|task_id| fits_unparked(state, *task_id)) else {
            return;
        };
        let Some(slot) = state.pipelines.get_mut(&task_id) else {
            return;
        };
        slot.parked = false;
        slot.wants_slot = false;
        if let Some(pipeline) = &slot.actor {
            let _ = pipeline.cast(PipelineMsg::Advance);
        }
    }
}

/// Whether `task_id`'s pipeline could hold a slot without the service going over
/// `compass.max_concurrent_tasks` (one already holding one always fits).
fn fits_unparked(state: &CompassState, task_id: TaskId) -> bool {
    let Some(slot) = state.pipelines.get(&task_id) else {
        return false;
    };
    if !slot.parked {
        return true;
    }
    let parked = state.pipelines.values().filter(|slot| slot.parked).count() - 1;
    let free_parked = parked.min(state.services.config.compass.max_parked_tasks);
    state.pipelines.len() - free_parked <= state.services.config.compass.max_concurrent_tasks
}

/// Pipelines that hold a slot: every one but those waiting in a merge queue, up to
/// `compass.max_parked_tasks` of them (past it, waiting holds a slot again).
fn busy_slots(state: &CompassState) -> usize {
    let parked = state.pipelines.values().filter(|slot| slot.parked).count();
    let free_parked = parked.min(state.services.config.compass.max_parked_tasks);
    state.pipelines.len() - free_parked
}

fn set_queue_depth(state: &mut CompassState) {
    let depth = state.queue.len() + state.resuming.len();
    if std::mem::take(&mut state.admission_pending) {
        state.services.directory.set_queue_depth_admitted(depth);
    } else {
        state.services.directory.set_queue_depth(depth);
    }
    metrics::task_gauges(depth, state.pipelines.len());
}

async fn start_pipeline(myself: &ActorRef<CompassMsg>, state: &mut CompassState, task_id: TaskId) {
    let name = format!("pipeline-{task_id}");
    let arguments = PipelineArguments {
        task_id,
        services: state.services.clone(),
    };
    let spawned = Actor::spawn_linked(None, Pipeline, arguments, myself.get_cell()).await;
    let slot = state
        .pipelines
        .entry(task_id)
        .or_insert_with(|| PipelineSlot {
            actor: None,
            history: RestartHistory::default(),
            parked: false,
            wants_slot: false,
        });
    // A new incarnation starts its stage again; it parks again if that is a delivery.
    slot.parked = false;
    slot.wants_slot = false;
    let restarts = slot.history.total();
    match spawned {
        Ok((actor, _)) => {
            state.services.directory.set(
                entry(&name, PARENT, ActorHealth::Running, restarts),
                Some(actor.get_cell()),
            );
            slot.actor = Some(actor);
            if restarts > 0 {
                metrics::actor_restarted("pipeline");
                let event = NewEvent::new(
                    Persona::Compass,
                    "actor.restarted",
                    json!({"actor": name, "restarts": restarts}),
                );
                if let Err(error) = state.services.store.append_event(task_id, event).await {
                    tracing::error!(%error, task = %task_id, "could not record a pipeline restart");
                }
            }
        }
        Err(error) => {
            tracing::error!(%error, task = %task_id, "pipeline failed to start");
            // Counted like a crash (through the mailbox), so a pipeline that never starts is given up on.
            let _ = myself.cast(CompassMsg::PipelineStartFailed(task_id, error.to_string()));
        }
    }
}

async fn on_pipeline_exit(
    myself: &ActorRef<CompassMsg>,
    state: &mut CompassState,
    task_id: TaskId,
    reason: String,
) -> Result<(), StoreError> {
    let task = state.services.store.task(task_id).await?;
    let status = task.as_ref().map(|t| t.progress.status);
    if status != Some(TaskStatus::Running) {
        // Finished, parked at the approval gate, or gone: the slot is free; nothing restarts.
        free_slot(state, task_id);
        if let Some(ended) = task.filter(|t| t.progress.status.is_terminal()) {
            on_ended_by_pipeline(myself, state, ended).await?;
        }
        dispatch(myself, state).await;
        return Ok(());
    }
    let policy = state.services.config.supervision.clone();
    let Some(slot) = state.pipelines.get_mut(&task_id) else {
        return Ok(());
    };
    slot.actor = None;
    let name = format!("pipeline-{task_id}");
    match slot.history.on_failure(&policy, Instant::now()) {
        RestartDecision::RestartAfter(delay) => {
            tracing::warn!(task = %task_id, %reason, ?delay, "pipeline exited; restarting from its persisted state");
            let restarts = slot.history.total();
            let health = entry(&name, PARENT, ActorHealth::Restarting, restarts);
            state.services.directory.set(health, None);
            myself.send_after(delay, move || CompassMsg::RestartPipeline(task_id));
        }
        RestartDecision::GiveUp => {
            metrics::actor_failed("pipeline");
            free_slot(state, task_id);
            if let Some(moved) =
                transitions::give_up_pipeline(&state.services, task_id, &reason).await?
            {
                execute(myself, state, &moved).await?;
            }
            dispatch(myself, state).await;
        }
    }
    Ok(())
}

/// Settles a finished task's reservation in the ledger, off the mailbox (a ledger call may wait
/// for a flush or a restart), in a background task. Idempotent: a settlement cut off by a crash,
/// or dropped for want of room, is redone at start.
fn settle_later(services: &Services, task_id: TaskId) {
    let background = services.background.clone();
    let services = services.clone();
    background.spawn("task.settle", async move {
        let Ok(Some(task)) = services.store.task(task_id).await else {
            return;
        };
        if task.billing.settled
            || !task.progress.status.is_terminal()
            || task.billing.reservation.is_none()
        {
            return;
        }
        let (kind, data) = match metering::settle(&services, &task).await {
            Ok(()) => (
                "ledger.settled",
                json!({"reservation": task.billing.reservation}),
            ),
            Err(error) => {
                tracing::warn!(task = %task_id, %error, "could not settle a task's budget");
                let data =
                    json!({"reservation": task.billing.reservation, "error": error.to_string()});
                let event = NewEvent::new(Persona::Compass, "ledger.settle_failed", data);
                let _ = services.store.append_event(task_id, event).await;
                return;
            }
        };
        if let Err(error) = services
            .store
            .mark_settled(task_id, NewEvent::new(Persona::Compass, kind, data))
            .await
        {
            tracing::error!(task = %task_id, %error, "could not record a settlement");
        }
    });
}

fn free_slot(state: &mut CompassState, task_id: TaskId) {
    state.pipelines.remove(&task_id);
    state
        .services
        .directory
        .remove(&format!("pipeline-{task_id}"));
}

/// Carries out a client's action on a task: the move is made in `transitions`, and Compass
/// executes the effects the lifecycle gave it.
async fn act(
    myself: &ActorRef<CompassMsg>,
    state: &mut CompassState,
    task_id: TaskId,
    action: TaskAction,
    by: Option<&str>,
) -> Result<Task, TaskActionError> {
    let services = &state.services;
    let moved = match action {
        TaskAction::Cancel => transitions::cancel(services, task_id, by).await?,
        TaskAction::Approve { comment } => {
            transitions::approve(services, task_id, comment, by).await?
        }
        TaskAction::Reject { comment } => {
            transitions::reject(services, task_id, comment, by).await?
        }
        TaskAction::Retry { reservation, from } => {
            transitions::retry(services, task_id, reservation, from, by).await?
        }
    };
    execute(myself, state, &moved).await?;
    dispatch(myself, state).await;
    if moved.task.progress.status.is_terminal() {
        return Ok(moved.task);
    }
    // The record after any immediate move (a retried task whose dependency failed ends again).
    Ok(state
        .services
        .store
        .task(task_id)
        .await?
        .unwrap_or(moved.task))
}

/// Tells Planner, Patch and Circuit to drop the task's jobs (killing their process groups).
fn cancel_persona_jobs(state: &CompassState, task_id: TaskId) {
    for persona in [Persona::Planner, Persona::Patch, Persona::Circuit] {
        if let Some(actor) = state
            .personas
            .get(&persona)
            .and_then(|slot| slot.actor.as_ref())
        {
            actor.cancel_task(task_id);
        }
    }
}
