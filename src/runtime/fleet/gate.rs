//! The control plane's trust boundary with its factories (issue 30): it answers hellos and
//! claims, takes lease renewals and checks results and registry records. Everything a factory
//! says comes in a [`Signed`] envelope; without a registered factory's valid MAC it is a forgery:
//! dropped, counted (`glitchlab_fleet_forgeries_total{kind}`) and, for a job of a task, logged as
//! a `fleet.forgery` event on it.
//!
//! A claim is accepted only for a delivery the jobs consumer really made: its acknowledgement
//! subject (made by the server, MACed by the factory) must name this job's message in the jobs
//! stream, the delivery count claimed, and a consumer sequence the consumer's own info has
//! reached.

use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_util::task::AbortOnDropHandle;
use uuid::Uuid;

use super::{on_claim, on_result, Waiting};
use crate::model::fleet::trust::{
    AckSubject, ClaimRequest, ClaimVerdict, FactoryKey, Hello, Kind, LeaseRenewal, Signed, Welcome,
    CLAIM_REQUEST_PREFIX, HELLO_SUBJECT, LEASE_SUBJECT_PREFIX,
};
use crate::model::fleet::{FactoryRecord, JobClaim, JobResult, JOBS_STREAM};
use crate::platform::metrics::FLEET_FORGERIES_TOTAL;
use crate::platform::nats::{Nats, NatsError};
use crate::storage::fleet_keys;
use crate::storage::store::{NewEvent, Store};

/// Claims being checked at once at most (more wait for a permit; each is bounded in time).
const CLAIMS_IN_FLIGHT_MAX: usize = 64;
/// A claim may come before the control plane heard the server store the job: it waits this long
/// at most for the job's sequence.
const SEQUENCE_WAIT: Duration = Duration::from_secs(2);
/// How often it looks for the sequence meanwhile.
const SEQUENCE_POLL: Duration = Duration::from_millis(20);

/// What the gate needs: the connection, the factories' keys (in the store), the jobs waiting.
pub(super) struct Gate {
    /// The control plane's connection.
    pub(super) nats: Nats,
    /// Where the factories' keys are.
    pub(super) store: Store,
    /// The jobs waiting for a result: their owners, deliveries and leases.
    pub(super) waiting: Waiting,
    /// The jobs' lease (the consumers' ack wait).
    pub(super) lease: Duration,
    /// The consumers' `max_deliver`.
    pub(super) max_deliver: u32,
}

/// Subscribes to hellos, claims and lease renewals and serves them until the handles drop.
pub(super) async fn start(gate: &Arc<Gate>) -> Result<Vec<AbortOnDropHandle<()>>, NatsError> {
    let hellos = gate.nats.subscribe(HELLO_SUBJECT.to_owned()).await?;
    let claims = gate
        .nats
        .subscribe(format!("{CLAIM_REQUEST_PREFIX}*"))
        .await?;
    let leases = gate
        .nats
        .subscribe(format!("{LEASE_SUBJECT_PREFIX}*"))
        .await?;
    let serve_hellos = {
        let gate = Arc::clone(gate);
        tokio::spawn(async move { gate.serve_hellos(hellos).await })
    };
    let serve_claims = {
        let gate = Arc::clone(gate);
        tokio::spawn(async move { gate.serve_claims(claims).await })
    };
    let serve_leases = {
        let gate = Arc::clone(gate);
        tokio::spawn(async move { gate.serve_leases(leases).await })
    };
    Ok(vec![
        AbortOnDropHandle::new(serve_hellos),
        AbortOnDropHandle::new(serve_claims),
        AbortOnDropHandle::new(serve_leases),
    ])
}

impl Gate {
    async fn serve_hellos(&self, mut hellos: async_nats::Subscriber) {
        while let Some(message) = hellos.next().await {
            let welcome = self.welcome(&message.payload).await;
            self.reply(message.reply.as_ref(), &welcome).await;
        }
    }

    async fn serve_claims(self: Arc<Self>, mut claims: async_nats::Subscriber) {
        let permits = Arc::new(Semaphore::new(CLAIMS_IN_FLIGHT_MAX));
        while let Some(message) = claims.next().await {
            let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                return;
            };
            let gate = Arc::clone(&self);
            tokio::spawn(async move {
                let verdict = gate.judge_claim(&message.payload).await;
                gate.reply(message.reply.as_ref(), &verdict).await;
                drop(permit);
            });
        }
    }

    async fn serve_leases(&self, mut leases: async_nats::Subscriber) {
        while let Some(message) = leases.next().await {
            self.on_lease(&message.payload).await;
        }
    }

    async fn reply(&self, to: Option<&async_nats::Subject>, answer: &impl serde::Serialize) {
        let (Some(to), Ok(bytes)) = (to, serde_json::to_vec(answer)) else {
            return;
        };
        if let Err(error) = self.nats.publish_core(to.to_string(), bytes).await {
            tracing::warn!(%error, "fleet: could not answer a factory");
        }
    }

    /// The key of a factory issued one; `None` (logged) for any other name or a store failure.
    async fn key_of(&self, factory: &str) -> Option<FactoryKey> {
        match fleet_keys::key_of(&self.store, factory).await {
            Ok(key) => key,
            Err(error) => {
                tracing::warn!(%error, "fleet: could not read a factory's key");
                None
            }
        }
    }

    /// Counts and reports a forgery; on the task when the job is one of a waiting task's.
    async fn forgery(&self, kind: &'static str, job: Uuid, factory: &str, reason: &str) {
        ::metrics::counter!(FLEET_FORGERIES_TOTAL, "kind" => kind).increment(1);
        tracing::warn!(kind, %job, factory = %factory.escape_debug(), reason, "fleet: dropped a forged message");
        let task = self
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&job)
            .map(|waiter| waiter.task_id);
        if let Some(task) = task {
            let event = NewEvent::new(
                "fleet",
                "fleet.forgery",
                json!({"job_id": job, "kind": kind, "factory": factory, "reason": reason}),
            );
            if let Err(error) = self.store.append_event(task, event).await {
                tracing::warn!(%error, "fleet: could not record a forgery");
            }
        }
    }

    async fn welcome(&self, payload: &[u8]) -> Welcome {
        let mut welcome = Welcome {
            accepted: false,
            reason: None,
            lease_secs: self.lease.as_secs(),
            max_deliver: self.max_deliver,
        };
        let hello = serde_json::from_slice::<Signed>(payload)
            .ok()
            .and_then(|signed| Some((serde_json::from_str::<Hello>(&signed.body).ok()?, signed)));
        let Some((hello, signed)) = hello else {
            self.forgery("hello", Uuid::nil(), "", "not a signed hello")
                .await;
            welcome.reason = Some("not a signed hello".into());
            return welcome;
        };
        let valid = match self.key_of(&hello.factory).await {
            Some(key) => key.verify(Kind::Hello, Uuid::nil(), 0, &hello.factory, &signed),
            None => false,
        };
        if valid {
            welcome.accepted = true;
        } else {
            self.forgery(
                "hello",
                Uuid::nil(),
                &hello.factory,
                "no factory of that name holds this key",
            )
            .await;
            welcome.reason = Some(format!(
                "factory `{}` was not issued this key (POST /v1/fleet/factories issues one)",
                hello.factory.escape_debug()
            ));
        }
        welcome
    }

    /// Checks a claim and, when it holds, makes its factory the job's owner; the answer carries
    /// the job's secrets sealed to that factory.
    async fn judge_claim(&self, payload: &[u8]) -> ClaimVerdict {
        let refused = |reason: String| ClaimVerdict {
            accepted: false,
            reason: Some(reason),
            sealed_env: None,
        };
        let parsed = serde_json::from_slice::<Signed>(payload)
            .ok()
            .and_then(|signed| {
                Some((
                    serde_json::from_str::<ClaimRequest>(&signed.body).ok()?,
                    signed,
                ))
            });
        let Some((claim, signed)) = parsed else {
            self.forgery("claim", job_named(payload), "", "not a signed claim")
                .await;
            return refused("not a signed claim".into());
        };
        let (job, delivery) = (claim.job_id, claim.delivery);
        let waits = self
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&job);
        if !waits {
            // A job of a previous run of the service, or one given up: nobody takes its result.
            return refused(format!("nobody waits for job {job}"));
        }
        let key = match self.key_of(&claim.factory).await {
            Some(key) if key.verify(Kind::Claim, job, delivery, &claim.factory, &signed) => key,
            _ => {
                let reason = "no valid MAC of a factory issued a key";
                self.forgery("claim", job, &claim.factory, reason).await;
                return refused(reason.into());
            }
        };
        if let Err(reason) = self.check_delivery(&claim).await {
            self.forgery("claim", job, &claim.factory, &reason).await;
            return refused(reason);
        }
        let factory = claim.factory.clone();
        let Some(secrets) = self.take_ownership(claim).await else {
            return refused(format!(
                "delivery {delivery} of job {job} is not the current one"
            ));
        };
        let Ok(plain) = serde_json::to_vec(&secrets) else {
            return refused("the secrets could not be encoded".into());
        };
        match key.seal(job, delivery, &plain) {
            Some(sealed) => {
                tracing::debug!(%job, delivery, %factory, "fleet: claim accepted");
                ClaimVerdict {
                    accepted: true,
                    reason: None,
                    sealed_env: Some(sealed),
                }
            }
            None => refused("no randomness to seal the secrets".into()),
        }
    }

    /// Whether the claim names a delivery the jobs consumer made of this job's message: the
    /// error says why not.
    async fn check_delivery(&self, claim: &ClaimRequest) -> Result<(), String> {
        let ack = AckSubject::parse(&claim.ack_subject)
            .ok_or_else(|| "the claim names no acknowledgement subject".to_owned())?;
        if ack.stream != JOBS_STREAM || ack.delivered != claim.delivery {
            return Err(format!(
                "delivery {} claimed, the server's subject says {} of stream {}",
                claim.delivery, ack.delivered, ack.stream
            ));
        }
        if ack.delivered == 0 || ack.delivered > u64::from(self.max_deliver) {
            return Err(format!("delivery {} is past max_deliver", ack.delivered));
        }
        let (sequence, class) = self.sequence_of(claim.job_id).await.ok_or_else(|| {
            format!(
                "job {} is not waiting here (or was not stored yet)",
                claim.job_id
            )
        })?;
        if ack.stream_sequence != sequence || ack.consumer != format!("jobs-{class}") {
            return Err(format!(
                "the subject names message {} of {}, not this job's ({sequence} of jobs-{class})",
                ack.stream_sequence, ack.consumer
            ));
        }
        let info = self
            .nats
            .jobs_consumer_info(&ack.consumer)
            .await
            .map_err(|e| format!("cannot read the consumer: {e}"))?;
        if info.delivered.consumer_sequence < ack.consumer_sequence {
            return Err(format!(
                "the consumer made {} deliveries, not {}",
                info.delivered.consumer_sequence, ack.consumer_sequence
            ));
        }
        Ok(())
    }

    /// The job's stream sequence and class, waiting up to [`SEQUENCE_WAIT`] for the server's
    /// acknowledgement of the publish; `None` for a job nobody waits for.
    async fn sequence_of(&self, job: Uuid) -> Option<(u64, String)> {
        let deadline = Instant::now() + SEQUENCE_WAIT;
        loop {
            let known = {
                let waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
                let waiter = waiting.get(&job)?;
                waiter.sequence.map(|seq| (seq, waiter.class.clone()))
            };
            if known.is_some() || Instant::now() >= deadline {
                return known;
            }
            tokio::time::sleep(SEQUENCE_POLL).await;
        }
    }

    /// Makes the claim's factory the owner (see [`on_claim`]); the job's secrets then.
    async fn take_ownership(&self, claim: ClaimRequest) -> Option<Vec<(String, String)>> {
        let job = claim.job_id;
        let accepted = on_claim(
            &self.waiting,
            JobClaim {
                job_id: job,
                delivery: claim.delivery,
                factory: claim.factory,
                placement: claim.placement,
            },
        );
        if !accepted {
            return None;
        }
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&job)
            .map(|waiter| waiter.secrets.clone())
    }

    /// Renews the lease of the delivery claimed last when its owner says so, signed.
    async fn on_lease(&self, payload: &[u8]) {
        let parsed = serde_json::from_slice::<Signed>(payload)
            .ok()
            .and_then(|signed| {
                Some((
                    serde_json::from_str::<LeaseRenewal>(&signed.body).ok()?,
                    signed,
                ))
            });
        let Some((renewal, signed)) = parsed else {
            self.forgery("lease", Uuid::nil(), "", "not a signed renewal")
                .await;
            return;
        };
        let (job, delivery) = (renewal.job_id, renewal.delivery);
        let valid = match self.key_of(&renewal.factory).await {
            Some(key) => key.verify(Kind::Lease, job, delivery, &renewal.factory, &signed),
            None => false,
        };
        if !valid {
            self.forgery(
                "lease",
                job,
                &renewal.factory,
                "no valid MAC of a factory issued a key",
            )
            .await;
            return;
        }
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(waiter) = waiting.get_mut(&job) {
            let owner = waiter
                .claimed
                .as_ref()
                .is_some_and(|(d, f)| *d == delivery && *f == renewal.factory);
            let live = waiter
                .lease_until
                .is_some_and(|until| Instant::now() <= until);
            if owner && live {
                waiter.lease_until = Some(Instant::now() + waiter.lease);
            }
        }
    }

    /// A result from the results stream: checked, handed to its job when it is the owner's, and
    /// the job's message deleted from the jobs stream then.
    pub(super) async fn on_result_message(&self, payload: &[u8]) {
        let parsed = serde_json::from_slice::<Signed>(payload)
            .ok()
            .and_then(|signed| {
                Some((
                    serde_json::from_str::<JobResult>(&signed.body).ok()?,
                    signed,
                ))
            });
        let Some((result, signed)) = parsed else {
            self.forgery("result", job_named(payload), "", "not a signed result")
                .await;
            return;
        };
        let (job, delivery) = (result.job_id, result.delivery);
        let valid = match self.key_of(&result.factory).await {
            Some(key) => key.verify(Kind::Result, job, delivery, &result.factory, &signed),
            None => false,
        };
        if !valid {
            let factory = result.factory.clone();
            self.forgery(
                "result",
                job,
                &factory,
                "no valid MAC of a factory issued a key",
            )
            .await;
            return;
        }
        if let Some(sequence) = on_result(&self.waiting, result) {
            match self.nats.withdraw_job(sequence).await {
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%job, %error, "fleet: could not delete an answered job")
                }
            }
        }
    }

    /// A registry entry as a factory signed it; `None` (not listed) for anything else.
    pub(super) async fn verified_record(&self, name: &str, bytes: &[u8]) -> Option<FactoryRecord> {
        let signed: Signed = serde_json::from_slice(bytes).ok()?;
        let key = self.key_of(name).await?;
        if !key.verify(Kind::Record, Uuid::nil(), 0, name, &signed) {
            tracing::debug!(factory = %name.escape_debug(), "fleet: an unsigned registry entry is not listed");
            return None;
        }
        let record: FactoryRecord = serde_json::from_str(&signed.body).ok()?;
        (record.name == name).then_some(record)
    }
}

/// The job an unsigned message names (`job_id`), to report its forgery on the job's task;
/// the nil id when it names none.
fn job_named(payload: &[u8]) -> Uuid {
    serde_json::from_slice::<serde_json::Value>(payload)
        .ok()
        .and_then(|value| value.get("job_id")?.as_str()?.parse().ok())
        .unwrap_or_else(Uuid::nil)
}
