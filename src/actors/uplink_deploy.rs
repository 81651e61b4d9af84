//! Uplink-Deploy: the deploy pipeline's persona. It takes deploy requests (HTTP, CLI, a delivered
//! task that names `deploy: <app>`), gates them (burn-in, from the stored records), runs one
//! deploy per app at a time in a job ([`crate::work::ops::deploy::run`]) while the others queue, owns
//! the running local releases, and performs the app actions incident runbooks ask for (restart,
//! rollback, scale). A deploy that ends unhealthy or failed becomes a signal for Uplink-Respond.
//!
//! # Restarts
//!
//! The policy of [`crate::runtime::supervision`]. Deviations: the local releases outlive a crash
//! (they are detached, see [`provider::local_start`]). The next incarnation (`recover`) — after a
//! crash of the actor, a `kill -9` of the service or a graceful restart alike — marks deploys that
//! were running `failed` (`DEPLOY_INTERRUPTED`), adopts each app's running release when it is the
//! current one and answers ([`probe::adoptable`]), stops the releases nothing accounts for, starts
//! the current release of the apps that were not adopted, and asks again for the deploys of
//! delivered tasks whose request was lost. The clients in [`crate::runtime::uplink_deploy`] wait up
//! to `PERSONA_WAIT` for the next incarnation; a request lost with the crash answers
//! `PERSONA_UNAVAILABLE` (a task's deploy request is idempotent by its trigger, `task:<id>`).

use std::collections::HashMap;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio_util::task::AbortOnDropHandle;

use crate::model::ops::error::OpsError;
use crate::model::ops::records::{DeployRecord, DeployStatus, Signal};
use crate::model::ops::spec::{AppSpec, ProviderKind};
use crate::model::persona::Persona;
use crate::runtime::jobs::spawn_job;
use crate::runtime::uplink_deploy::{AppAction, UplinkDeployMsg};
use crate::runtime::uplink_respond::send_signals;
use crate::runtime::Services;
use crate::storage::ops::OpsStore;
use crate::work::ops::admission::{self, Prepared};
use crate::work::ops::billing;
use crate::work::ops::deploy::{self, DeployContext};
use crate::work::ops::probe;
use crate::work::ops::provider::{self, LocalRuntime, ProviderContext};
use crate::work::ops::renamed;

/// Recent tasks looked at on start for a delivered task's lost deploy request.
const TASK_DEPLOY_SCAN_MAX: usize = 10_000;

/// The Uplink-Deploy persona.
pub(crate) struct UplinkDeploy;

/// Uplink-Deploy's start-up arguments.
pub(crate) struct UplinkDeployArguments {
    /// Shared services (its apps come from `definitions.ops`).
    pub services: Services,
}

/// Uplink-Deploy's state.
pub(crate) struct UplinkDeployState {
    /// Shared services.
    services: Services,
    /// Provider plumbing, with the local releases it started (dropping them leaves them running:
    /// the next incarnation adopts them).
    provider: ProviderContext,
    /// Deploy records and release state.
    ops: OpsStore,
    /// App → the deploy or action holding it (one at a time per app); dropping it aborts it.
    busy: HashMap<String, AbortOnDropHandle<()>>,
}

impl Actor for UplinkDeploy {
    type Msg = UplinkDeployMsg;
    type State = UplinkDeployState;
    type Arguments = UplinkDeployArguments;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let services = args.services;
        let ops = OpsStore::new(&services.store);
        Ok(UplinkDeployState {
            provider: ProviderContext::for_persona(
                &services,
                Persona::UplinkDeploy,
                Arc::new(LocalRuntime::default()),
            ),
            services,
            ops,
            busy: HashMap::new(),
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        recover(&myself, state).await?;
        let apps: Vec<String> = state
            .services
            .definitions
            .ops
            .apps
            .keys()
            .cloned()
            .collect();
        for app in apps {
            dispatch(&myself, state, &app).await?;
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            UplinkDeployMsg::Ping(reply) => {
                let _ = reply.send(());
            }
            UplinkDeployMsg::Request {
                app,
                commit,
                trigger,
                requested_by,
                reply,
            } => {
                crate::work_failpoint!("uplink-deploy.handle");
                let asked = (commit, trigger.as_str(), requested_by);
                match admission::prepare(&state.services, &state.ops, &app, asked).await {
                    Ok(Prepared::Existing(record)) => {
                        admission::answer(reply, &app, &trigger, Ok(record))
                    }
                    Ok(Prepared::New(record)) => {
                        admission::reserve_then_admit(&myself, &state.services, record, reply);
                    }
                    Err(error) => admission::answer(reply, &app, &trigger, Err(error)),
                }
            }
            UplinkDeployMsg::Admit { record, reply } => {
                let (app, trigger) = (record.app.clone(), record.trigger.clone());
                let outcome = admission::admit(&state.services, &state.ops, *record).await;
                if outcome.is_ok() {
                    dispatch_or_wait(&myself, state, &app).await;
                }
                admission::answer(reply, &app, &trigger, outcome);
            }
            UplinkDeployMsg::Decide {
                id,
                approve,
                comment,
                by,
                reply,
            } => {
                let outcome = decide(state, &id, approve, comment, by).await;
                if let Ok(record) = &outcome {
                    count_if_ended(record);
                    if record.status.is_terminal() {
                        settle_later(&state.services, record.clone());
                    }
                    dispatch_or_wait(&myself, state, &record.app).await;
                }
                let _ = reply.send(outcome);
            }
            UplinkDeployMsg::Act { app, action, reply } => {
                act_on(&myself, state, app, action, reply)
            }
            UplinkDeployMsg::DeployDone { app, outcome } => {
                state.busy.remove(&app);
                on_deploy_done(state, &app, outcome).await;
                dispatch_or_wait(&myself, state, &app).await;
            }
            UplinkDeployMsg::ActionDone(app) => {
                state.busy.remove(&app);
                dispatch_or_wait(&myself, state, &app).await;
            }
        }
        Ok(())
    }
}

/// After a start or a crash: deploys that were running died with the last incarnation (failed,
/// `DEPLOY_INTERRUPTED`); local releases are adopted or started again ([`recover_releases`]).
async fn recover(
    myself: &ActorRef<UplinkDeployMsg>,
    state: &mut UplinkDeployState,
) -> Result<(), OpsError> {
    for name in state.services.definitions.ops.apps.keys() {
        for mut record in state.ops.deploys_of(name).await? {
            if record.status == DeployStatus::Running {
                let updated = state
                    .ops
                    .update_deploy(&record.id, |d| {
                        deploy::close_interrupted(d, chrono::Utc::now())
                    })
                    .await?;
                record = updated.unwrap_or(record);
                count_if_ended(&record);
                if let Some(note) = crate::runtime::notifier::of_deploy(&record) {
                    crate::runtime::notifier::enqueue(&state.ops, note).await;
                }
            }
            // Ended before the last incarnation could settle it (reads only when nothing is owed).
            if billing::needs_settling(&state.services, &record)
                .await
                .unwrap_or(true)
            {
                settle_later(&state.services, record);
            }
        }
        state
            .ops
            .update_release(name, |r| r.deploying = None)
            .await?;
    }
    recover_releases(state).await?;
    request_missed_task_deploys(myself, state).await
}

/// The local releases after a start (of the service or of this actor): each app whose recorded
/// release still runs, is its current release and answers is adopted (service event
/// `app.adopted`: no restart, no signal); a release that does not qualify is stopped; releases of
/// this service that no record accounts for are stopped (`app.unaccounted_stopped`), so none runs
/// unmanaged; then the current release of every app not adopted is started (`app.started`).
async fn recover_releases(state: &UplinkDeployState) -> Result<(), OpsError> {
    renames(state).await?;
    let mut adopted = Vec::new();
    let mut to_start = Vec::new();
    for (name, app) in &state.services.definitions.ops.apps {
        let (ProviderKind::Local, Some(local)) = (app.provider, &app.local) else {
            continue;
        };
        let current = state.ops.release(name).await?.current;
        let verdict = match &current {
            Some(sha) => probe::adoptable(&state.provider, name, app, sha).await,
            None => Err("the app has no current release".to_owned()),
        };
        match verdict {
            Ok(process) => {
                tracing::info!(app = %name, pid = process.pid, release = %process.release, "adopted the running release");
                let data = serde_json::json!({"app": name, "pid": process.pid,
                    "release": process.release, "port": process.port,
                    "started_at": process.started_at});
                service_event(state, "app.adopted", data).await;
                adopted.push(process.pid);
            }
            Err(reason) => {
                let grace = std::time::Duration::from_millis(local.stop_grace_ms);
                let running = provider::running_group(&state.provider.data_dir, name);
                if let Some(pgid) = running {
                    tracing::warn!(app = %name, pgid, %reason, "stopping a running release that is not adopted");
                }
                provider::local_stop(&state.provider, name, grace).await;
                if let Some(sha) = current {
                    to_start.push((name.clone(), local.clone(), sha, reason));
                }
            }
        }
    }
    let stray = provider::stop_unaccounted(&state.provider, &adopted).await;
    if !stray.is_empty() {
        tracing::warn!(groups = ?stray, "stopped local releases that no record accounts for");
        let data = serde_json::json!({"process_groups": stray});
        service_event(state, "app.unaccounted_stopped", data).await;
    }
    for (name, local, sha, reason) in to_start {
        match provider::local_start(&state.provider, &name, &local, &sha) {
            Ok(()) => {
                tracing::info!(app = %name, release = %sha, %reason, "started the current release");
                let data = serde_json::json!({"app": name, "release": sha, "reason": reason});
                service_event(state, "app.started", data).await;
            }
            Err(error) => {
                tracing::error!(app = %name, %error, "could not start the current release again");
            }
        }
    }
    Ok(())
}

/// Before adoption: releases recorded under an app's `previous_names` become the app's
/// (`app.renamed`), and releases of names that left `ops.yaml` are stopped (`app.removed_stopped`).
async fn renames(state: &UplinkDeployState) -> Result<(), OpsError> {
    let apps = &state.services.definitions.ops.apps;
    for carried in renamed::carry_over(&state.ops, &state.provider, apps).await? {
        tracing::info!(from = %carried.from, to = %carried.to, "carried the release of a renamed app over");
        let data = serde_json::json!({"from": carried.from, "to": carried.to});
        service_event(state, "app.renamed", data).await;
    }
    for (app, pgid) in renamed::stop_removed(&state.provider, apps).await {
        let data = serde_json::json!({"app": app, "process_group": pgid,
            "reason": "the app left ops.yaml and no app lists it in previous_names"});
        service_event(state, "app.removed_stopped", data).await;
    }
    Ok(())
}

/// Records a service-wide event of Uplink-Deploy (`GET /v1/events`); a failure is logged.
async fn service_event(state: &UplinkDeployState, kind: &'static str, data: serde_json::Value) {
    let event = crate::storage::store::NewEvent::new(Persona::UplinkDeploy, kind, data);
    let service = crate::model::task::TaskId::service();
    if let Err(error) = state.services.store.append_event(service, event).await {
        tracing::error!(%error, kind, "could not record a service event");
    }
}

/// Delivered tasks that name `deploy: <app>` but whose deploy request was lost (the service
/// stopped between the delivery and the request) get it now. Looks at the newest
/// [`TASK_DEPLOY_SCAN_MAX`] tasks. The requests go to this actor's own mailbox, like any other.
///
/// The app's history keeps only its newest deploys, so a task whose deploy record was dropped
/// must not look lost (asking again would deploy an old commit): skipped are tasks with a
/// `deploy` stage (done only through a healthy deploy of their own) and tasks that finished
/// before the newest dropped deploy was created (their request was made, or given up, long ago).
async fn request_missed_task_deploys(
    myself: &ActorRef<UplinkDeployMsg>,
    state: &UplinkDeployState,
) -> Result<(), OpsError> {
    /// An app's known triggers, and when its newest dropped deploy was created.
    type Known = (
        std::collections::HashSet<String>,
        Option<chrono::DateTime<chrono::Utc>>,
    );
    let tasks = state.services.store.tasks(TASK_DEPLOY_SCAN_MAX).await?;
    let mut requested: HashMap<String, Known> = HashMap::new();
    for task in tasks {
        let Some(app) = task.spec.deploy.as_deref() else {
            continue;
        };
        if task.progress.status != crate::model::task::TaskStatus::Done
            || task
                .spec
                .stages
                .contains(&crate::model::task::Stage::Deploy)
            || !state.services.definitions.ops.apps.contains_key(app)
        {
            continue;
        }
        if !requested.contains_key(app) {
            let history = state.ops.deploy_history(app).await?;
            let triggers = history.records.into_iter().map(|d| d.trigger).collect();
            requested.insert(app.to_owned(), (triggers, history.pruned.newest_created_at));
        }
        let trigger = format!("task:{}", task.id);
        let Some((known, dropped_until)) = requested.get(app) else {
            continue;
        };
        let dropped = dropped_until
            .is_some_and(|until| task.outcome.finished_at.is_some_and(|at| at <= until));
        if known.contains(&trigger) || dropped {
            continue;
        }
        tracing::warn!(app, task = %task.id, "requesting a delivered task's missed deploy");
        // A refusal (say, a full queue) is logged when it comes, never a reason to stop.
        let message = UplinkDeployMsg::Request {
            app: app.to_owned(),
            commit: task.outcome.commit.clone(),
            trigger,
            requested_by: None,
            reply: None,
        };
        if myself.cast(message).is_err() {
            return Ok(());
        }
    }
    Ok(())
}

async fn decide(
    state: &UplinkDeployState,
    id: &str,
    approve: bool,
    comment: Option<String>,
    by: Option<String>,
) -> Result<DeployRecord, OpsError> {
    let record = state
        .ops
        .deploy(id)
        .await?
        .ok_or_else(|| OpsError::NotFound(format!("no deploy with id `{id}`")))?;
    if record.status != DeployStatus::AwaitingApproval {
        return Err(OpsError::InvalidState(format!(
            "deploy {id} is {}, not awaiting approval",
            crate::model::ops::wire_name(&record.status)
        )));
    }
    let updated = state
        .ops
        .update_deploy(id, move |d| {
            d.comment = comment.clone();
            d.decided_by = by.clone();
            if approve {
                d.status = DeployStatus::Queued;
            } else {
                d.status = DeployStatus::Rejected;
                d.finished_at = Some(chrono::Utc::now());
            }
        })
        .await?;
    updated.ok_or_else(|| OpsError::NotFound(format!("no deploy with id `{id}`")))
}

fn deploy_context(state: &UplinkDeployState, app: &str, spec: AppSpec) -> DeployContext {
    DeployContext {
        provider: state.provider.clone().metered(),
        ops: state.ops.clone(),
        name: app.to_owned(),
        app: spec,
    }
}

/// Starts the app's oldest queued deploy unless something holds the app.
/// [`dispatch`] from a handler: a storage error (a full disk) leaves the app's deploys waiting
/// for its next event instead of stopping Uplink-Deploy.
async fn dispatch_or_wait(
    myself: &ActorRef<UplinkDeployMsg>,
    state: &mut UplinkDeployState,
    app: &str,
) {
    if let Err(error) = dispatch(myself, state, app).await {
        tracing::error!(%app, %error, "uplink-deploy: could not start the next deploy (storage); it waits");
    }
}

async fn dispatch(
    myself: &ActorRef<UplinkDeployMsg>,
    state: &mut UplinkDeployState,
    app: &str,
) -> Result<(), OpsError> {
    if state.busy.contains_key(app) {
        return Ok(());
    }
    let Some(spec) = state.services.definitions.ops.apps.get(app).cloned() else {
        return Ok(());
    };
    let Some(next) = state
        .ops
        .deploys_of(app)
        .await?
        .into_iter()
        .find(|d| d.status == DeployStatus::Queued)
    else {
        return Ok(());
    };
    let ctx = deploy_context(state, app, spec);
    let (me, name) = (myself.clone(), app.to_owned());
    let job = spawn_job(deploy::run(ctx, next.id), move |outcome| {
        let outcome = match outcome {
            Ok(Ok(record)) => Ok(Box::new(record)),
            Ok(Err(error)) => Err(error.to_string()),
            Err(panic) => Err(panic),
        };
        let _ = me.cast(UplinkDeployMsg::DeployDone { app: name, outcome });
    });
    state.busy.insert(app.to_owned(), job);
    Ok(())
}

/// Settles an ended deploy with the Ledger in a background task (the handler never waits on it).
/// A settlement that fails, or finds no room to run, is logged and done again at the next start.
fn settle_later(services: &Services, record: DeployRecord) {
    let background = services.background.clone();
    let services = services.clone();
    background.spawn("deploy.settle", async move {
        if let Err(error) = billing::settle_deploy(&services, &record).await {
            tracing::error!(deploy = %record.id, %error, "could not settle a deploy with the ledger");
        }
    });
}

/// A deploy that did not end healthy becomes a signal (sent from a background task, or here when
/// there is no room: a lost signal would be a missed incident); the incident's id goes on the
/// record.
async fn on_deploy_done(
    state: &UplinkDeployState,
    app: &str,
    outcome: Result<Box<DeployRecord>, String>,
) {
    let record = match outcome {
        Ok(record) => record,
        Err(error) => {
            tracing::error!(app, %error, "deploy job failed");
            return;
        }
    };
    tracing::info!(app, deploy = %record.id, status = ?record.status, "deploy finished");
    count_if_ended(&record);
    settle_later(&state.services, (*record).clone());
    let signal_name = match record.status {
        DeployStatus::RolledBack => "deploy_unhealthy",
        DeployStatus::Failed => "deploy_failed",
        _ => return,
    };
    let summary = record.error.as_ref().map_or_else(
        || format!("deploy {} {signal_name}", record.id),
        |e| e.message.clone(),
    );
    let signal = Signal {
        app: app.to_owned(),
        signal: signal_name.into(),
        severity: "critical".into(),
        summary,
        labels: [("deploy".to_owned(), record.id.clone())].into(),
        source: "deploy".into(),
        deploy: Some(record.id.clone()),
        at: chrono::Utc::now(),
        group: None,
    };
    let (services, ops, id) = (state.services.clone(), state.ops.clone(), record.id);
    let signal = async move {
        let incidents = send_signals(&services, vec![signal]).await;
        if let Some(incident) = incidents.into_iter().next() {
            let _ = ops
                .update_deploy(&id, move |d| d.incident = Some(incident.clone()))
                .await;
        }
    };
    state
        .services
        .background
        .spawn_or_run("deploy.signal", signal)
        .await;
}

/// Counts a deploy that reached a terminal status in the metrics (others are not counted).
fn count_if_ended(record: &DeployRecord) {
    if record.status.is_terminal() {
        let status = crate::model::ops::wire_name(&record.status);
        crate::platform::metrics::deploy_finished(&record.app, &status);
    }
}

fn act_on(
    myself: &ActorRef<UplinkDeployMsg>,
    state: &mut UplinkDeployState,
    app: String,
    action: AppAction,
    reply: RpcReplyPort<Result<String, OpsError>>,
) {
    let Some(spec) = state.services.definitions.ops.apps.get(&app).cloned() else {
        let _ = reply.send(Err(OpsError::UnknownApp(app)));
        return;
    };
    if state.busy.contains_key(&app) {
        let _ = reply.send(Err(OpsError::Busy(app)));
        return;
    }
    let payer_spec = spec.clone();
    let ctx = deploy_context(state, &app, spec);
    let (me, name, services) = (myself.clone(), app.clone(), state.services.clone());
    let job = spawn_job(
        async move {
            let outcome = perform(&ctx, action).await;
            let payer = billing::payer(&services, &payer_spec, "action").await;
            let id = format!("action:{}", uuid::Uuid::now_v7());
            let seconds = ctx.provider.command_seconds();
            let memo = format!("{action:?} of {}: {seconds} command seconds", ctx.name);
            if let Err(error) = billing::charge_action(&services, &id, &payer, seconds, memo).await
            {
                tracing::error!(app = %ctx.name, %error, "could not charge an app action");
            }
            let _ = reply.send(outcome);
        },
        move |_| {
            let _ = me.cast(UplinkDeployMsg::ActionDone(name));
        },
    );
    state.busy.insert(app, job);
}

async fn perform(ctx: &DeployContext, action: AppAction) -> Result<String, OpsError> {
    let release = ctx.ops.release(&ctx.name).await?;
    let done = match action {
        AppAction::Scale(count) => {
            return provider::scale(&ctx.provider, &ctx.name, &ctx.app, count).await
        }
        AppAction::Restart => {
            let current = release.current.ok_or_else(|| {
                OpsError::NoRelease(format!("`{}` has no release to restart", ctx.name))
            })?;
            provider::restart(&ctx.provider, &ctx.name, &ctx.app, &current).await?
        }
        AppAction::Rollback => {
            let target = release.last_healthy.ok_or_else(|| {
                OpsError::NoRelease(format!(
                    "`{}` has no healthy release to go back to",
                    ctx.name
                ))
            })?;
            let detail = provider::rollback(&ctx.provider, &ctx.name, &ctx.app, &target).await?;
            ctx.ops
                .update_release(&ctx.name, move |r| r.current = Some(target.clone()))
                .await?;
            detail
        }
    };
    let health = probe::app_health(&ctx.provider, &ctx.name, &ctx.app).await;
    if health.healthy {
        Ok(format!("{done}; {} is healthy", health.target))
    } else {
        Err(OpsError::Provider(format!(
            "{done}; {} is still unhealthy",
            health.target
        )))
    }
}
