//! The control plane's side of the fleet: it publishes jobs, hears claims and results, and
//! accepts only the result of the delivery claimed last (a late answer of a factory whose lease
//! ran out is fenced off, so nothing is applied, landed or charged twice). The factories' side is
//! `app::factory`; the wire types are in [`crate::model::fleet`].
//!
//! One reader task (owned: it stops with the `Fleet`) consumes the results stream through a
//! durable consumer and hands each result to the job waiting for it.
//!
//! Trust (issue 30, [`gate`]): claims are requests the control plane answers, accepted only with
//! a registered factory's MAC and for a delivery the jobs consumer really made; the owner,
//! delivery and lease expiry of each job live here, renewed by the owner's signed renewals; a
//! result counts only with its owner's MAC, for the current delivery, within the lease; the
//! accepted result's job is deleted from the stream here (factories never acknowledge), so a
//! late answer or acknowledgement of a superseded delivery touches nothing.

pub(crate) mod control;
mod controller;
mod gate;
mod watch;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use tokio::sync::oneshot;
use tokio_util::task::AbortOnDropHandle;
use uuid::Uuid;

use crate::config::FleetConfig;
use crate::model::fleet::{
    class_of, FactoryRecord, FleetJob, JobClaim, JobResult, CLAIMS_SUBJECT_PREFIX,
    JOBS_SUBJECT_PREFIX, OUTPUT_SUBJECT_PREFIX, PLACED_LOST_LEASE, RESULTS_SUBJECT_PREFIX,
};
use crate::model::task::TaskId;
use crate::platform::nats::{self, Nats, NatsError, NatsOptions};
use crate::storage::store::Store;
pub(crate) use controller::SwitchError;
pub(crate) use watch::FactoryView;

/// The control plane's durable consumer of claims and results.
const CONTROL_CONSUMER: &str = "control";
/// A factory's registry entry lives this long past its last heartbeat.
pub(crate) const FACTORY_TTL: Duration = Duration::from_secs(15);
/// Jobs waiting for a result at most (more are refused: the stage retries later).
const WAITING_MAX: usize = 10_000;
/// Registry entries read at most (`GET /v1/fleet`, a waiting job's reason).
const FACTORIES_LISTED_MAX: usize = 1000;
/// Reading the whole factory registry takes at most this long.
const REGISTRY_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a job did not come back.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FleetError {
    /// NATS failed (publishing, the registry).
    #[error(transparent)]
    Nats(#[from] NatsError),
    /// No result within the job's bounds (no factory took it, or every delivery was lost).
    #[error("no factory answered job {job} within {seconds}s{reason}")]
    NoResult {
        /// The job.
        job: Uuid,
        /// How long it waited.
        seconds: u64,
        /// Why, when the registry tells (`: no factory with has:gpu`).
        reason: String,
    },
    /// The factory could not run it (fetch failed, ...).
    #[error("factory {factory} could not run job {job}: {detail}")]
    Factory {
        /// Which factory.
        factory: String,
        /// The job.
        job: Uuid,
        /// What it said.
        detail: String,
    },
    /// Too many jobs wait already.
    #[error("{0} fleet jobs are waiting already")]
    Busy(usize),
}

/// A job waiting for its result.
struct Waiter {
    task_id: TaskId,
    capabilities: Vec<String>,
    published_at: DateTime<Utc>,
    /// The delivery claimed last, and by whom.
    claimed: Option<(u64, String)>,
    /// A later delivery was claimed after an earlier one: a holder lost its lease.
    superseded: bool,
    answer: Option<oneshot::Sender<JobResult>>,
    /// The job's lease (a claim holds it this long past its last renewal).
    lease: Duration,
    /// Until when the delivery claimed last holds its lease (the control plane's clock).
    lease_until: Option<Instant>,
    /// The job's sequence in the jobs stream, once the server stored it (JetStream's advisories
    /// name it too).
    sequence: Option<u64>,
    /// The job's class (its consumer is `jobs-<class>`; the per-class waiting gauge).
    class: String,
    /// The secret variables, handed sealed to the factory whose claim is accepted only.
    secrets: Vec<(String, String)>,
}

/// A job that no factory has claimed yet (for `/v1/report` and `/v1/fleet`).
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct WaitingJob {
    /// The job.
    pub(crate) job_id: Uuid,
    /// Its task.
    pub(crate) task_id: TaskId,
    /// What it needs.
    pub(crate) capabilities: Vec<String>,
    /// Since when it waits.
    pub(crate) since: DateTime<Utc>,
    /// Why it waits, when no live factory could take it (`no factory with has:gpu`).
    pub(crate) reason: Option<String>,
}

type Waiting = Arc<Mutex<HashMap<Uuid, Waiter>>>;

/// The control plane's connection to its fleet.
pub struct Fleet {
    nats: Nats,
    lease: Duration,
    max_deliver: u32,
    /// Added to a job's own bounds before the control plane stops waiting for it
    /// (`fleet.deadline_margin_secs`).
    deadline_margin: Duration,
    waiting: Waiting,
    classes: Mutex<HashSet<String>>,
    controller: Arc<controller::Controller>,
    _reader: AbortOnDropHandle<()>,
    _watchers: Vec<AbortOnDropHandle<()>>,
    gate: Arc<gate::Gate>,
    _gate: Vec<AbortOnDropHandle<()>>,
}

impl Fleet {
    /// Connects, makes the streams and buckets, and starts reading results.
    /// Factory keys are read from `store`; the switches (pause, drain) are kept in `data_dir`.
    pub(crate) async fn start(
        config: &FleetConfig,
        url: &str,
        store: Store,
        data_dir: &Path,
    ) -> Result<Arc<Self>, NatsError> {
        let token = config
            .token_env
            .as_ref()
            .and_then(|name| std::env::var(name).ok());
        let nats = nats::connect(&NatsOptions {
            url: url.to_owned(),
            token,
            creds_file: config.creds_file.clone(),
            name: "glitchlab-control".into(),
            inbox_prefix: None,
        })
        .await?
        .with_replicas(config.replicas);
        nats.jobs_stream().await?;
        let results = nats.results_stream().await?;
        nats.factories(FACTORY_TTL).await?;
        nats.classes().await?;
        nats.control().await?;
        let reader_consumer = results
            .get_or_create_consumer(
                CONTROL_CONSUMER,
                consumer::pull::Config {
                    durable_name: Some(CONTROL_CONSUMER.into()),
                    deliver_policy: consumer::DeliverPolicy::New,
                    ack_policy: consumer::AckPolicy::Explicit,
                    ..Default::default()
                },
            )
            .await
            .map_err(NatsError::js)?;
        let waiting = Waiting::default();
        let gate = Arc::new(gate::Gate {
            nats: nats.clone(),
            store,
            waiting: Arc::clone(&waiting),
            lease: Duration::from_secs(config.lease_secs),
            max_deliver: config.max_deliver,
        });
        let reader = tokio::spawn(read_results(reader_consumer, Arc::clone(&gate)));
        let gate_tasks = gate::start(&gate).await?;
        let key = control::ControlKey::from_env(config.control_key_env.as_deref());
        let controller =
            controller::Controller::start(nats.clone(), key, data_dir.to_path_buf()).await;
        let watchers = watch::start(&nats, &controller, &gate).await?;
        Ok(Arc::new(Self {
            nats,
            lease: Duration::from_secs(config.lease_secs),
            max_deliver: config.max_deliver,
            deadline_margin: Duration::from_secs(config.deadline_margin_secs),
            waiting,
            classes: Mutex::default(),
            controller,
            _reader: AbortOnDropHandle::new(reader),
            _watchers: watchers,
            gate,
            _gate: gate_tasks,
        }))
    }

    /// Publishes `job` and waits for the result of the delivery claimed last. The wait is bounded
    /// by the job's timeout and its leases (`max_deliver` of them) plus a margin; past it the job
    /// is withdrawn from the stream (no factory is offered it again) and the caller hears [`FleetError::NoResult`].
    /// `secrets` never go into the published job: the factory whose claim is accepted gets them
    /// sealed in the claim's answer.
    pub(crate) async fn run(
        &self,
        job: &FleetJob,
        secrets: Vec<(String, String)>,
    ) -> Result<JobResult, FleetError> {
        let class = class_of(&job.capabilities);
        self.ensure_class(&class, &job.capabilities).await?;
        let (answer, result) = oneshot::channel();
        {
            let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
            if waiting.len() >= WAITING_MAX {
                return Err(FleetError::Busy(waiting.len()));
            }
            waiting.insert(
                job.job_id,
                Waiter {
                    task_id: job.task_id,
                    capabilities: job.capabilities.clone(),
                    published_at: Utc::now(),
                    claimed: None,
                    superseded: false,
                    answer: Some(answer),
                    lease: self.lease,
                    lease_until: None,
                    sequence: None,
                    class: class.clone(),
                    secrets,
                },
            );
        }
        let mut forget = Forget {
            waiting: &self.waiting,
            job: job.job_id,
            stop: Some((self.nats.clone(), self.controller.key().clone(), None)),
        };
        let payload = serde_json::to_vec(job).map_err(NatsError::js)?;
        let sequence = self
            .nats
            .publish_stored(format!("{JOBS_SUBJECT_PREFIX}{class}"), payload)
            .await?;
        forget.published(sequence);
        let deadline = Duration::from_millis(job.timeout_ms)
            + self.lease * (self.max_deliver + 1)
            + self.deadline_margin;
        match watch::wait_unpaused(&self.controller, deadline, result).await {
            Ok(result) => match &result.failure {
                Some(detail) => Err(FleetError::Factory {
                    factory: result.factory.clone(),
                    job: job.job_id,
                    detail: detail.clone(),
                }),
                None => {
                    forget.stop = None;
                    Ok(result)
                }
            },
            Err(()) => {
                // No factory will be asked for it again, and one that holds it is told to stop
                // (`forget` does both as it drops): its answer is ignored, nobody waits for it.
                let reason = self
                    .why_waiting(&job.capabilities)
                    .await
                    .map(|reason| format!(": {reason}"))
                    .unwrap_or_default();
                Err(FleetError::NoResult {
                    job: job.job_id,
                    seconds: deadline.as_secs(),
                    reason,
                })
            }
        }
    }

    /// Listens to a job's live output (see [`crate::model::fleet::OutputChunk`]); subscribe
    /// before [`Fleet::run`] publishes the job, or the first chunks are missed.
    pub(crate) async fn output(&self, job: Uuid) -> Result<async_nats::Subscriber, NatsError> {
        self.nats
            .subscribe(format!("{OUTPUT_SUBJECT_PREFIX}{job}"))
            .await
    }

    /// Registers the class (for factories to find) and its consumer, once per class per run.
    async fn ensure_class(&self, class: &str, capabilities: &[String]) -> Result<(), NatsError> {
        let known = self
            .classes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(class);
        if known {
            return Ok(());
        }
        self.nats
            .class_consumer(class, self.lease, self.max_deliver)
            .await?;
        let listed = serde_json::to_vec(capabilities).map_err(NatsError::js)?;
        let classes = self.nats.classes().await?;
        nats::bounded("the class list", classes.put(class, listed.into())).await?;
        self.classes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(class.to_owned());
        Ok(())
    }

    /// The factories registered now (their heartbeats not expired).
    /// Only records signed by a factory issued a key are listed (issue 30): a made-up factory
    /// is not one.
    pub(crate) async fn factories(&self) -> Result<Vec<FactoryRecord>, NatsError> {
        tokio::time::timeout(REGISTRY_READ_TIMEOUT, registry(&self.gate))
            .await
            .map_err(|_| NatsError::JetStream("the factory registry did not answer".into()))?
    }

    /// Why a job needing `capabilities` waits, when no live factory offers them all.
    pub(crate) async fn why_waiting(&self, capabilities: &[String]) -> Option<String> {
        let factories = self.factories().await.ok()?;
        reason_among(&factories, capabilities)
    }

    /// Whether job `job` is published and no factory has claimed it yet.
    pub(crate) fn is_unclaimed(&self, job: Uuid) -> bool {
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&job)
            .is_some_and(|w| w.claimed.is_none())
    }

    /// Jobs no factory has claimed yet, with the reason when `factories` (the registry, read once
    /// by the caller) tells one.
    pub(crate) fn unclaimed(&self, factories: &[FactoryRecord]) -> Vec<WaitingJob> {
        let waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        let mut jobs: Vec<WaitingJob> = waiting
            .iter()
            .filter(|(_, w)| w.claimed.is_none())
            .map(|(id, w)| WaitingJob {
                job_id: *id,
                task_id: w.task_id,
                capabilities: w.capabilities.clone(),
                since: w.published_at,
                reason: reason_among(factories, &w.capabilities),
            })
            .collect();
        jobs.sort_by_key(|job| job.since);
        jobs
    }

    /// Stops (`true`) or restarts all claiming, fleet-wide: the kill switch. The state is the
    /// control plane's (kept in its data dir) and reaches the factories signed.
    pub(crate) async fn set_paused(&self, paused: bool) -> Result<(), SwitchError> {
        self.controller.change(|s| s.paused = paused).await?;
        Ok(())
    }

    /// Whether claiming is paused fleet-wide.
    pub(crate) fn paused(&self) -> bool {
        self.controller.paused()
    }

    /// Tells one factory to take jobs, hold its claims, or drain.
    pub(crate) async fn set_factory_mode(
        &self,
        factory: &str,
        mode: control::FactoryMode,
    ) -> Result<(), SwitchError> {
        self.controller
            .change(|s| {
                s.factories.insert(factory.to_owned(), mode);
            })
            .await?;
        Ok(())
    }

    /// The registered factories with what they are told and whether they are healthy.
    pub(crate) fn views(&self, factories: Vec<FactoryRecord>) -> Vec<FactoryView> {
        watch::views(&self.controller.switches(), factories, Utc::now())
    }
}

/// The registry entries signed by a factory issued a key, by name (heartbeats not expired):
/// `GET /v1/fleet`, a waiting job's reason and the fleet gauges read it so.
async fn registry(gate: &gate::Gate) -> Result<Vec<FactoryRecord>, NatsError> {
    let bucket = gate.nats.factories(FACTORY_TTL).await?;
    let names = nats::bucket_keys(&bucket, FACTORIES_LISTED_MAX).await?;
    let mut factories = Vec::new();
    for name in names {
        if let Ok(Some(bytes)) = nats::bounded("a registry entry", bucket.get(&name)).await {
            if let Some(record) = gate.verified_record(&name, &bytes).await {
                factories.push(record);
            }
        }
    }
    factories.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(factories)
}

/// Why a job needing `capabilities` cannot be served by any of `factories`; `None` when one can.
fn reason_among(factories: &[FactoryRecord], capabilities: &[String]) -> Option<String> {
    if factories.iter().any(|f| f.serves(capabilities)) {
        return None;
    }
    if factories.is_empty() {
        return Some("no factory is registered".into());
    }
    let missing: Vec<&str> = capabilities
        .iter()
        .filter(|need| !factories.iter().any(|f| f.capabilities.contains(need)))
        .map(String::as_str)
        .collect();
    Some(if missing.is_empty() {
        format!("no factory with all of {}", capabilities.join(", "))
    } else {
        format!("no factory with {}", missing.join(", "))
    })
}

/// Takes a job out of the waiting map however its wait ends; unless it ended with a result
/// (`stop` taken), also withdraws the job from the stream and tells whoever runs it to stop — a
/// cancelled task drops the wait, and that reaches the factory.
struct Forget<'a> {
    waiting: &'a Waiting,
    job: Uuid,
    /// The connection, the control key and the job's sequence in the stream once published.
    stop: Option<(Nats, control::ControlKey, Option<u64>)>,
}

impl Forget<'_> {
    fn published(&mut self, sequence: u64) {
        if let Some((_, _, known)) = &mut self.stop {
            *known = Some(sequence);
        }
        if let Some(waiter) = self
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(&self.job)
        {
            waiter.sequence = Some(sequence);
        }
    }
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.job);
        let Some((nats, key, Some(sequence))) = self.stop.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let job = self.job;
        runtime.spawn(watch::give_up(nats, key, job, sequence));
    }
}

/// Reads results for as long as the fleet lives, reconnecting its message stream after errors
/// (the client reconnects to the server by itself). Each result is checked by the [`gate`]
/// first; claims are not read here any more (they are requests the gate answers).
async fn read_results(consumer: consumer::Consumer<consumer::pull::Config>, gate: Arc<gate::Gate>) {
    loop {
        let mut messages = match consumer.messages().await {
            Ok(messages) => messages,
            Err(error) => {
                tracing::warn!(%error, "fleet: cannot read results; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(message) = messages.next().await {
            let message = match message {
                Ok(message) => message,
                Err(error) => {
                    tracing::warn!(%error, "fleet: results stream error");
                    break;
                }
            };
            if message.subject.as_str().starts_with(RESULTS_SUBJECT_PREFIX) {
                gate.on_result_message(&message.payload).await;
            } else if message.subject.as_str().starts_with(CLAIMS_SUBJECT_PREFIX) {
                tracing::debug!(subject = %message.subject, "fleet: a stored claim is ignored (claims are requests)");
            }
            if let Err(error) = nats::bounded("acknowledging a result", message.ack()).await {
                tracing::warn!(%error, "fleet: could not acknowledge a result");
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Takes a claim (already checked by the [`gate`]) as the job's owner now when it is a later
/// delivery than the one claimed last (or the same one again, from the same factory); whether
/// it did. The lease runs from now.
fn on_claim(waiting: &Waiting, claim: JobClaim) -> bool {
    let mut waiting = waiting.lock().unwrap_or_else(PoisonError::into_inner);
    let Some(waiter) = waiting.get_mut(&claim.job_id) else {
        return false;
    };
    let accept = match &waiter.claimed {
        None => true,
        Some((delivery, factory)) => {
            claim.delivery > *delivery || (claim.delivery == *delivery && claim.factory == *factory)
        }
    };
    if !accept {
        return false;
    }
    tracing::info!(job = %claim.job_id, factory = %claim.factory, delivery = claim.delivery, "fleet: job claimed");
    if waiter.claimed.is_none() {
        let waited = (Utc::now() - waiter.published_at)
            .to_std()
            .unwrap_or_default();
        ::metrics::histogram!(crate::platform::metrics::FLEET_CLAIM_LATENCY_DURATION_SECONDS)
            .record(waited.as_secs_f64());
    }
    if waiter
        .claimed
        .as_ref()
        .is_some_and(|(delivery, _)| claim.delivery > *delivery)
    {
        waiter.superseded = true;
    }
    waiter.claimed = Some((claim.delivery, claim.factory));
    waiter.lease_until = Some(Instant::now() + waiter.lease);
    true
}

/// Hands a result (its MAC already checked) to the job waiting for it when it is the result of
/// the delivery claimed last, from its owner, within its lease; answers the job's sequence in
/// the jobs stream then (the caller deletes it there), `None` when it was fenced off.
fn on_result(waiting: &Waiting, mut result: JobResult) -> Option<u64> {
    let mut waiting = waiting.lock().unwrap_or_else(PoisonError::into_inner);
    let Some(waiter) = waiting.get_mut(&result.job_id) else {
        // A job nobody waits for any more (answered, given up, or before a restart).
        tracing::info!(job = %result.job_id, factory = %result.factory, delivery = result.delivery, "fleet: fenced off the result of a job nobody waits for");
        return None;
    };
    let current = waiter.claimed.as_ref();
    let owner = current.is_some_and(|(delivery, factory)| {
        *delivery == result.delivery && *factory == result.factory
    });
    if !owner {
        tracing::warn!(job = %result.job_id, factory = %result.factory, delivery = result.delivery, ?current, "fleet: fenced off the result of a lost delivery");
        return None;
    }
    if waiter
        .lease_until
        .is_none_or(|until| Instant::now() > until)
    {
        tracing::warn!(job = %result.job_id, factory = %result.factory, delivery = result.delivery, "fleet: fenced off a result that came after its lease ran out");
        return None;
    }
    if waiter.superseded {
        result.placement = Some(PLACED_LOST_LEASE.to_owned());
    }
    if let Some(answer) = waiter.answer.take() {
        let _ = answer.send(result);
    }
    waiter.sequence
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::task::CapturedOutput;

    fn result(job: Uuid, delivery: u64, factory: &str) -> JobResult {
        JobResult {
            job_id: job,
            delivery,
            factory: factory.into(),
            exit_code: Some(0),
            signal: None,
            timed_out: false,
            stdout: CapturedOutput::default(),
            stderr: CapturedOutput::default(),
            duration_ms: 1,
            diff: None,
            failure: None,
            placement: Some("first free factory".into()),
        }
    }

    #[test]
    fn only_the_delivery_claimed_last_is_accepted() {
        let waiting = Waiting::default();
        let job = Uuid::now_v7();
        let (answer, mut answered) = oneshot::channel();
        waiting.lock().unwrap().insert(
            job,
            Waiter {
                task_id: TaskId::new(),
                capabilities: Vec::new(),
                published_at: Utc::now(),
                claimed: None,
                superseded: false,
                answer: Some(answer),
                lease: Duration::from_secs(30),
                lease_until: None,
                sequence: Some(1),
                class: "any".into(),
                secrets: Vec::new(),
            },
        );
        on_claim(
            &waiting,
            JobClaim {
                job_id: job,
                delivery: 1,
                factory: "a".into(),
                placement: None,
            },
        );
        on_claim(
            &waiting,
            JobClaim {
                job_id: job,
                delivery: 2,
                factory: "b".into(),
                placement: None,
            },
        );
        // The first holder's lease ran out: its late result is fenced off.
        on_result(&waiting, result(job, 1, "a"));
        assert!(answered.try_recv().is_err());
        on_result(&waiting, result(job, 2, "b"));
        let accepted = answered.try_recv().unwrap();
        assert_eq!(accepted.factory, "b");
        assert_eq!(
            accepted.placement.as_deref(),
            Some(PLACED_LOST_LEASE),
            "the placement says why it moved"
        );
    }
}
