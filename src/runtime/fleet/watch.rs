//! What the control plane watches besides results: JetStream's advisory that a job ran out of
//! deliveries (answered at once, not at the stage deadline), the factories' health and the fleet
//! metrics, and the pause (a job's deadline does not run while the fleet is paused).

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use tokio::sync::oneshot;
use tokio_util::task::AbortOnDropHandle;
use uuid::Uuid;

use super::control::{self, ControlKey, FactoryMode, Switches};
use super::controller::Controller;
use super::gate::Gate;
use super::{registry, Waiting};
use crate::model::fleet::{FactoryRecord, JobResult, JOBS_STREAM};
use crate::model::task::CapturedOutput;
use crate::platform::metrics;
use crate::platform::nats::{Nats, NatsError};

/// The advisory JetStream publishes when a message of the jobs stream ran out of deliveries.
fn max_deliveries_subject() -> String {
    format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{JOBS_STREAM}.*")
}
/// How often the fleet gauges are refreshed.
const METRICS_EVERY: Duration = Duration::from_secs(2);
/// The granularity of a job's deadline clock (which stops while the fleet is paused).
const DEADLINE_TICK: Duration = Duration::from_millis(500);

/// A factory as `GET /v1/fleet` shows it: its registry entry, what it is told, its health.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct FactoryView {
    /// What the factory registered.
    #[serde(flatten)]
    pub(crate) record: FactoryRecord,
    /// What the control plane tells it (`active`, `paused`, `draining`).
    pub(crate) told: FactoryMode,
    /// False while it is stalled: a free slot and no pull for 10 s, or no heartbeat as long.
    pub(crate) healthy: bool,
    /// Why it is unhealthy.
    pub(crate) unhealthy: Option<String>,
}

/// Starts the watchers; they stop when the handles drop (with the fleet).
pub(super) async fn start(
    nats: &Nats,
    controller: &Arc<Controller>,
    gate: &Arc<Gate>,
) -> Result<Vec<AbortOnDropHandle<()>>, NatsError> {
    let advisories = nats.subscribe(max_deliveries_subject()).await?;
    Ok(vec![
        AbortOnDropHandle::new(tokio::spawn(Arc::clone(controller).enforce())),
        AbortOnDropHandle::new(tokio::spawn(exhausted(
            advisories,
            Arc::clone(&gate.waiting),
        ))),
        AbortOnDropHandle::new(tokio::spawn(gauges(
            Arc::clone(controller),
            Arc::clone(gate),
        ))),
    ])
}

/// The advisory's fields read here.
#[derive(serde::Deserialize)]
struct MaxDeliveries {
    stream_seq: u64,
    #[serde(default)]
    deliveries: u64,
}

/// Answers a job whose message ran out of deliveries as soon as JetStream says so.
async fn exhausted(mut advisories: async_nats::Subscriber, waiting: Waiting) {
    while let Some(message) = advisories.next().await {
        let Ok(advisory) = serde_json::from_slice::<MaxDeliveries>(&message.payload) else {
            continue;
        };
        let mut waiting = waiting.lock().unwrap_or_else(PoisonError::into_inner);
        let Some((job, waiter)) = waiting
            .iter_mut()
            .find(|(_, w)| w.sequence == Some(advisory.stream_seq))
        else {
            continue;
        };
        ::metrics::counter!(metrics::FLEET_DELIVERIES_EXHAUSTED_TOTAL).increment(1);
        let factory = waiter
            .claimed
            .as_ref()
            .map(|(_, f)| f.clone())
            .unwrap_or_default();
        tracing::warn!(job = %job, deliveries = advisory.deliveries, "fleet: a job ran out of deliveries");
        if let Some(answer) = waiter.answer.take() {
            let _ = answer.send(lost(*job, factory, advisory.deliveries));
        }
    }
}

/// The answer of a job whose every delivery was lost.
fn lost(job: Uuid, factory: String, deliveries: u64) -> JobResult {
    JobResult {
        job_id: job,
        delivery: deliveries,
        factory,
        exit_code: None,
        signal: None,
        timed_out: false,
        stdout: CapturedOutput::default(),
        stderr: CapturedOutput::default(),
        duration_ms: 0,
        diff: None,
        failure: Some(format!(
            "all {deliveries} deliveries were lost (no factory kept its lease)"
        )),
        placement: None,
    }
}

/// Waits for `result` for `deadline`, not counting the time the fleet is paused: a pause longer
/// than a job's bounds costs no stage retry. `Err` when the time ran out (or nobody answers).
pub(super) async fn wait_unpaused(
    controller: &Controller,
    deadline: Duration,
    mut result: oneshot::Receiver<JobResult>,
) -> Result<JobResult, ()> {
    let mut counted = Duration::ZERO;
    let mut tick = tokio::time::interval(DEADLINE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    while counted < deadline {
        tokio::select! {
            answered = &mut result => return answered.map_err(|_| ()),
            _ = tick.tick() => {
                if !controller.paused() {
                    counted += DEADLINE_TICK;
                }
            }
        }
    }
    Err(())
}

/// Withdraws a job nobody waits for any more from the stream, and tells the factory running it
/// to stop.
pub(super) async fn give_up(nats: Nats, key: ControlKey, job: Uuid, sequence: u64) {
    ::metrics::counter!(metrics::FLEET_STOPS_TOTAL).increment(1);
    let stop = control::send_stop(&nats, &key, job, "the control plane no longer waits for it");
    let withdraw = tokio::time::timeout(control::CONTROL_CALL_TIMEOUT, nats.withdraw_job(sequence));
    let ((), withdrawn) = tokio::join!(stop, withdraw);
    match withdrawn {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => tracing::debug!(%job, %error, "fleet: job not withdrawn"),
        Err(_) => tracing::warn!(%job, "fleet: job not withdrawn in time"),
    }
}

/// The factories with what they are told and their health at `now`.
pub(super) fn views(
    switches: &Switches,
    factories: Vec<FactoryRecord>,
    now: DateTime<Utc>,
) -> Vec<FactoryView> {
    factories
        .into_iter()
        .map(|record| {
            let told = switches.mode_of(&record.name);
            let unhealthy = control::stalled(&record, told, switches.paused, now);
            FactoryView {
                record,
                told,
                healthy: unhealthy.is_none(),
                unhealthy,
            }
        })
        .collect()
}

/// Refreshes the fleet gauges: jobs waiting per class, each factory's slots and health.
async fn gauges(controller: Arc<Controller>, gate: Arc<Gate>) {
    let mut known: Vec<String> = Vec::new();
    let mut classes: Vec<String> = Vec::new();
    loop {
        tokio::time::sleep(METRICS_EVERY).await;
        let mut per_class: BTreeMap<String, usize> =
            classes.iter().map(|c| (c.clone(), 0)).collect();
        for waiter in gate
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter(|w| w.claimed.is_none())
        {
            *per_class.entry(waiter.class.clone()).or_default() += 1;
        }
        for (class, count) in &per_class {
            ::metrics::gauge!(metrics::FLEET_JOBS_WAITING, "class" => class.clone())
                .set(*count as f64);
        }
        classes = per_class.into_keys().collect();
        let read = tokio::time::timeout(control::CONTROL_CALL_TIMEOUT, registry(&gate)).await;
        let Ok(Ok(factories)) = read else { continue };
        let views = views(&controller.switches(), factories, Utc::now());
        for gone in known
            .iter()
            .filter(|n| !views.iter().any(|v| &v.record.name == *n))
        {
            ::metrics::gauge!(metrics::FLEET_FACTORY_HEALTHY, "factory" => gone.clone()).set(0.0);
            for state in ["used", "free"] {
                ::metrics::gauge!(metrics::FLEET_FACTORY_SLOTS, "factory" => gone.clone(), "state" => state).set(0.0);
            }
        }
        known = views.iter().map(|v| v.record.name.clone()).collect();
        for view in &views {
            let name = view.record.name.clone();
            let used = view.record.running.len();
            let free = view.record.slots.saturating_sub(used);
            ::metrics::gauge!(metrics::FLEET_FACTORY_SLOTS, "factory" => name.clone(), "state" => "used").set(used as f64);
            ::metrics::gauge!(metrics::FLEET_FACTORY_SLOTS, "factory" => name.clone(), "state" => "free").set(free as f64);
            ::metrics::gauge!(metrics::FLEET_FACTORY_HEALTHY, "factory" => name)
                .set(if view.healthy { 1.0 } else { 0.0 });
        }
    }
}
