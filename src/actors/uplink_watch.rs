//! Uplink-Watch: periodic read-only checks on cron schedules (with a seconds field). Each due
//! check runs in a job ([`crate::work::ops::probe::run_check`]); its result comes back as a message, is
//! stored, and a failure becomes a signal for Uplink-Respond. Watch never acts on an app itself.
//! Checks of an app pause while it is being deployed and before its first release.
//!
//! # Restarts
//!
//! The policy of [`crate::runtime::supervision`]. Deviation: nobody waits on it; the next
//! incarnation rebuilds the schedules from `ops.yaml` and runs every check at its next due time.
//! Results already stored stay; command seconds counted but not charged yet are lost (checks are
//! cheap; a crash is not charged for).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio_util::task::AbortOnDropHandle;

use crate::model::ops::records::{CheckResult, Signal};
use crate::model::ops::spec::{CheckKind, CheckSpec};
use crate::model::persona::Persona;
use crate::runtime::directory::PersonaMailbox;
use crate::runtime::jobs::spawn_job;
use crate::runtime::uplink_respond::send_signals;
use crate::runtime::Services;
use crate::storage::ops::OpsStore;
use crate::work::ops::provider::{LocalRuntime, ProviderContext};
use crate::work::ops::{billing, probe};

/// How often Watch looks for due checks: the resolution of its schedules.
const TICK: Duration = Duration::from_millis(200);
/// Checks Watch schedules at most (across apps).
pub(crate) const CHECKS_MAX: usize = 1024;

/// The Uplink-Watch persona.
pub(crate) struct UplinkWatch;

/// Uplink-Watch's start-up arguments.
pub(crate) struct UplinkWatchArguments {
    /// Shared services (its checks come from `definitions.ops`).
    pub services: Services,
}

struct Scheduled {
    /// The app the check belongs to.
    app: String,
    /// The check.
    spec: CheckSpec,
    /// Its parsed schedule.
    schedule: cron::Schedule,
    /// When it is due next; `None` when the schedule has no future time.
    next: Option<DateTime<Utc>>,
    /// The run in flight (at most one per check); dropping it aborts the run.
    running: Option<AbortOnDropHandle<()>>,
}

/// Uplink-Watch's state.
pub(crate) struct UplinkWatchState {
    services: Services,
    provider: ProviderContext,
    ops: OpsStore,
    /// Every check, in `ops.yaml` order.
    checks: Vec<Scheduled>,
    /// Command seconds the checks of each app ran since its last charge.
    unbilled: BTreeMap<String, u64>,
    /// When the unbilled seconds were last charged.
    billed_at: tokio::time::Instant,
    /// Sends `Tick`; aborted with the state.
    _ticker: AbortOnDropHandle<()>,
}

/// Uplink-Watch's messages.
pub(crate) enum UplinkWatchMsg {
    /// Answers at once: proof the mailbox is read (`/readyz`).
    Ping(RpcReplyPort<()>),
    /// Time to look for due checks.
    Tick,
    /// A check run ended.
    CheckDone {
        /// Index into the schedule.
        index: usize,
        /// What it found.
        result: CheckResult,
        /// Started seconds of the commands it ran (to be charged).
        command_seconds: u64,
    },
}

impl PersonaMailbox for UplinkWatchMsg {
    const PERSONA: Persona = Persona::UplinkWatch;

    fn ping(reply: RpcReplyPort<()>) -> Self {
        UplinkWatchMsg::Ping(reply)
    }
}

impl Actor for UplinkWatch {
    type Msg = UplinkWatchMsg;
    type State = UplinkWatchState;
    type Arguments = UplinkWatchArguments;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let services = args.services;
        let ops = OpsStore::new(&services.store);
        let now = Utc::now();
        let mut checks = Vec::new();
        for (app, spec) in &services.definitions.ops.apps {
            for check in spec.checks.iter().take(CHECKS_MAX) {
                let schedule = check.parsed_schedule()?;
                let next = schedule.after(&now).next();
                checks.push(Scheduled {
                    app: app.clone(),
                    spec: check.clone(),
                    schedule,
                    next,
                    running: None,
                });
            }
        }
        checks.truncate(CHECKS_MAX);
        // Checks observe; under Landlock they may write only a scratch dir and /dev.
        let scratch = services.config.storage.data_dir.join("tmp").join("watch");
        let provider = ProviderContext::for_persona(
            &services,
            Persona::UplinkWatch,
            Arc::new(LocalRuntime::default()),
        )
        .confined(&services, vec![scratch, PathBuf::from("/dev")]);
        Ok(UplinkWatchState {
            services,
            provider,
            ops,
            checks,
            unbilled: BTreeMap::new(),
            billed_at: tokio::time::Instant::now(),
            _ticker: ticker(myself),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            UplinkWatchMsg::Ping(reply) => {
                let _ = reply.send(());
            }
            UplinkWatchMsg::Tick => {
                // A storage error (a full disk) skips this tick; the next one tries again.
                if let Err(error) = on_tick(&myself, state).await {
                    tracing::error!(%error, "uplink-watch: storage error on a tick; trying again next tick");
                }
                bill_if_due(state);
            }
            UplinkWatchMsg::CheckDone {
                index,
                result,
                command_seconds,
            } => {
                if command_seconds > 0 {
                    *state.unbilled.entry(result.app.clone()).or_default() += command_seconds;
                }
                if let Err(error) = on_check_done(state, index, result).await {
                    tracing::error!(%error, "uplink-watch: a check result could not be recorded (storage); the check runs again on schedule");
                }
            }
        }
        Ok(())
    }
}

fn ticker(myself: ActorRef<UplinkWatchMsg>) -> AbortOnDropHandle<()> {
    // Owned already (not a `Background` task): Watch's state holds the handle, and dropping it
    // with the state stops the ticker.
    AbortOnDropHandle::new(tokio::spawn(async move {
        let mut interval = tokio::time::interval(TICK);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            interval.tick().await;
            if myself.cast(UplinkWatchMsg::Tick).is_err() {
                return;
            }
        }
    }))
}

async fn on_tick(
    myself: &ActorRef<UplinkWatchMsg>,
    state: &mut UplinkWatchState,
) -> Result<(), crate::storage::store::StoreError> {
    let now = Utc::now();
    for index in 0..state.checks.len() {
        let due = {
            let check = &state.checks[index];
            check.running.is_none() && check.next.is_some_and(|next| next <= now)
        };
        if !due {
            continue;
        }
        let next = state.checks[index].schedule.after(&now).next();
        state.checks[index].next = next;
        if paused(state, index).await? {
            continue;
        }
        start_check(myself, state, index);
    }
    Ok(())
}

/// Whether the check's app is being deployed, or (for app-bound kinds) has no release yet.
async fn paused(
    state: &UplinkWatchState,
    index: usize,
) -> Result<bool, crate::storage::store::StoreError> {
    let check = &state.checks[index];
    let release = state.ops.release(&check.app).await?;
    let bound_to_release = matches!(check.spec.kind, CheckKind::Http | CheckKind::Process);
    Ok(release.deploying.is_some() || (bound_to_release && release.current.is_none()))
}

fn start_check(myself: &ActorRef<UplinkWatchMsg>, state: &mut UplinkWatchState, index: usize) {
    let check = &state.checks[index];
    let Some(app) = state.services.definitions.ops.apps.get(&check.app).cloned() else {
        return;
    };
    let (provider, store) = (
        state.provider.clone().metered(),
        state.services.store.clone(),
    );
    let (name, spec) = (check.app.clone(), check.spec.clone());
    let me = myself.clone();
    let (fallback_app, fallback_check, kind) = (name.clone(), spec.name.clone(), spec.kind);
    let job = spawn_job(
        async move {
            let result = probe::run_check(&provider, &store, &name, &app, &spec).await;
            (result, provider.command_seconds())
        },
        move |outcome| {
            let (result, command_seconds) = outcome.unwrap_or_else(|panic| {
                let result = CheckResult {
                    app: fallback_app,
                    check: fallback_check,
                    kind,
                    outcome: "fail".into(),
                    detail: panic,
                    at: Utc::now(),
                    duration_ms: 0,
                };
                (result, 0)
            });
            let _ = me.cast(UplinkWatchMsg::CheckDone {
                index,
                result,
                command_seconds,
            });
        },
    );
    state.checks[index].running = Some(job);
}

/// Once per `ledger.watch_billing_interval_secs`, charges each app's unbilled command seconds in
/// one transfer, from a spawned task (the handler never waits on the Ledger). Seconds whose charge
/// fails, or that a crash cuts off before their interval ends, go uncharged: Watch under-bills,
/// it never bills twice.
fn bill_if_due(state: &mut UplinkWatchState) {
    let interval = Duration::from_secs(state.services.config.ledger.watch_billing_interval_secs);
    if state.billed_at.elapsed() < interval || state.unbilled.is_empty() {
        return;
    }
    state.billed_at = tokio::time::Instant::now();
    for (app, seconds) in std::mem::take(&mut state.unbilled) {
        let Some(spec) = state.services.definitions.ops.apps.get(&app).cloned() else {
            continue;
        };
        let services = state.services.clone();
        // No room: these seconds go uncharged, like a charge that fails.
        state.services.background.spawn("watch.charge", async move {
            if let Err(error) = billing::charge_watch(&services, &app, &spec, seconds).await {
                tracing::error!(%app, seconds, %error, "could not charge the checks' command seconds");
            }
        });
    }
}

async fn on_check_done(
    state: &mut UplinkWatchState,
    index: usize,
    result: CheckResult,
) -> Result<(), crate::storage::store::StoreError> {
    if let Some(check) = state.checks.get_mut(index) {
        check.running = None;
    }
    state.ops.record_check(&result).await?;
    crate::platform::metrics::check_finished(&result.app, &result.check, &result.outcome);
    if !result.failed() {
        return Ok(());
    }
    // A deploy may have started while the check ran; its own health check decides then.
    if state.ops.release(&result.app).await?.deploying.is_some() {
        return Ok(());
    }
    tracing::warn!(app = %result.app, check = %result.check, detail = %result.detail, "check failed");
    let signal = Signal {
        app: result.app.clone(),
        signal: result.kind.signal().into(),
        severity: "critical".into(),
        summary: format!("check `{}` failed: {}", result.check, result.detail),
        labels: [
            ("check".to_owned(), result.check.clone()),
            (
                "kind".to_owned(),
                crate::model::ops::wire_name(&result.kind),
            ),
        ]
        .into(),
        source: "watch".into(),
        deploy: None,
        at: Utc::now(),
        group: None,
    };
    let services = state.services.clone();
    // A lost signal would be a missed incident: without room, it is sent from here.
    let signal = async move {
        send_signals(&services, vec![signal]).await;
    };
    state
        .services
        .background
        .spawn_or_run("watch.signal", signal)
        .await;
    Ok(())
}
