//! The control plane's side of the fleet: it publishes jobs, hears claims and results, and
//! accepts only the result of the delivery claimed last (a late answer of a factory whose lease
//! ran out is fenced off, so nothing is applied, landed or charged twice). The factories' side is
//! `app::factory`; the wire types are in [`crate::model::fleet`].
//!
//! One reader task (owned: it stops with the `Fleet`) consumes the results stream through a
//! durable consumer and hands each result to the job waiting for it.

pub(crate) mod control;
mod controller;
mod watch;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

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
pub(crate) use controller::SwitchError;
pub(crate) use watch::FactoryView;

/// The control plane's durable consumer of claims and results.
const CONTROL_CONSUMER: &str = "control";
/// A factory's registry entry lives this long past its last heartbeat.
pub(crate) const FACTORY_TTL: Duration = Duration::from_secs(15);
/// Jobs waiting for a result at most (more are refused: the stage retries later).
const WAITING_MAX: usize = 10_000;
/// Added to a job's own bounds before the control plane stops waiting for it.
const DEADLINE_MARGIN: Duration = Duration::from_secs(30);
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
    /// Its job class (for the per-class waiting gauge).
    class: String,
    /// Its message's sequence in the jobs stream, once published (JetStream's advisories name it).
    sequence: Option<u64>,
    /// The delivery claimed last, and by whom.
    claimed: Option<(u64, String)>,
    /// A later delivery was claimed after an earlier one: a holder lost its lease.
    superseded: bool,
    answer: Option<oneshot::Sender<JobResult>>,
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
    waiting: Waiting,
    classes: Mutex<HashSet<String>>,
    controller: Arc<controller::Controller>,
    _reader: AbortOnDropHandle<()>,
    _watchers: Vec<AbortOnDropHandle<()>>,
}

impl Fleet {
    /// Connects, makes the streams and buckets, and starts reading results.
    /// The switches (pause, drain) are kept in `data_dir`.
    pub(crate) async fn start(
        config: &FleetConfig,
        url: &str,
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
        let reader = tokio::spawn(read_results(reader_consumer, Arc::clone(&waiting)));
        let key = control::ControlKey::from_env(config.control_key_env.as_deref());
        let controller =
            controller::Controller::start(nats.clone(), key, data_dir.to_path_buf()).await;
        let watchers = watch::start(&nats, &controller, &waiting).await?;
        Ok(Arc::new(Self {
            nats,
            lease: Duration::from_secs(config.lease_secs),
            max_deliver: config.max_deliver,
            waiting,
            classes: Mutex::default(),
            controller,
            _reader: AbortOnDropHandle::new(reader),
            _watchers: watchers,
        }))
    }

    /// Publishes `job` and waits for the result of the delivery claimed last. The wait is bounded
    /// by the job's timeout and its leases (`max_deliver` of them) plus a margin; past it the job
    /// is withdrawn from the stream (no factory is offered it again) and the caller hears [`FleetError::NoResult`].
    pub(crate) async fn run(&self, job: &FleetJob) -> Result<JobResult, FleetError> {
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
                    class: class.clone(),
                    sequence: None,
                    claimed: None,
                    superseded: false,
                    answer: Some(answer),
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
            + DEADLINE_MARGIN;
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
        self.nats
            .classes()
            .await?
            .put(class, listed.into())
            .await
            .map_err(NatsError::js)?;
        self.classes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(class.to_owned());
        Ok(())
    }

    /// The factories registered now (their heartbeats not expired).
    pub(crate) async fn factories(&self) -> Result<Vec<FactoryRecord>, NatsError> {
        tokio::time::timeout(REGISTRY_READ_TIMEOUT, self.read_factories())
            .await
            .map_err(|_| NatsError::JetStream("the factory registry did not answer".into()))?
    }

    async fn read_factories(&self) -> Result<Vec<FactoryRecord>, NatsError> {
        watch::read_registry(&self.nats).await
    }

    /// Why a job needing `capabilities` waits, when no live factory offers them all.
    pub(crate) async fn why_waiting(&self, capabilities: &[String]) -> Option<String> {
        let factories = self.factories().await.ok()?;
        reason_among(&factories, capabilities)
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

/// Reads claims and results for as long as the fleet lives, reconnecting its message stream
/// after errors (the client reconnects to the server by itself).
async fn read_results(consumer: consumer::Consumer<consumer::pull::Config>, waiting: Waiting) {
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
            let subject = message.subject.as_str();
            if subject.starts_with(CLAIMS_SUBJECT_PREFIX) {
                if let Ok(claim) = serde_json::from_slice::<JobClaim>(&message.payload) {
                    on_claim(&waiting, claim);
                }
            } else if subject.starts_with(RESULTS_SUBJECT_PREFIX) {
                if let Ok(result) = serde_json::from_slice::<JobResult>(&message.payload) {
                    on_result(&waiting, result);
                }
            }
            if let Err(error) = message.ack().await {
                tracing::warn!(%error, "fleet: could not acknowledge a result");
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn on_claim(waiting: &Waiting, claim: JobClaim) {
    let mut waiting = waiting.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(waiter) = waiting.get_mut(&claim.job_id) {
        let newer = waiter
            .claimed
            .as_ref()
            .is_none_or(|(delivery, _)| claim.delivery >= *delivery);
        if newer {
            tracing::info!(job = %claim.job_id, factory = %claim.factory, delivery = claim.delivery, "fleet: job claimed");
            if waiter.claimed.is_none() {
                let waited = (Utc::now() - waiter.published_at)
                    .to_std()
                    .unwrap_or_default();
                ::metrics::histogram!(
                    crate::platform::metrics::FLEET_CLAIM_LATENCY_DURATION_SECONDS
                )
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
        }
    }
}

fn on_result(waiting: &Waiting, mut result: JobResult) {
    let mut waiting = waiting.lock().unwrap_or_else(PoisonError::into_inner);
    let Some(waiter) = waiting.get_mut(&result.job_id) else {
        return; // a job nobody waits for any more (answered, given up, or before a restart)
    };
    let current = waiter.claimed.as_ref().map(|(delivery, _)| *delivery);
    if current != Some(result.delivery) {
        tracing::warn!(job = %result.job_id, factory = %result.factory, delivery = result.delivery, ?current, "fleet: fenced off the result of a lost delivery");
        return;
    }
    if waiter.superseded {
        result.placement = Some(PLACED_LOST_LEASE.to_owned());
    }
    if let Some(answer) = waiter.answer.take() {
        let _ = answer.send(result);
    }
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
                class: "any".into(),
                sequence: None,
                claimed: None,
                superseded: false,
                answer: Some(answer),
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
