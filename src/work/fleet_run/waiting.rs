//! What a task shows while one of its jobs waits to start: `waiting_for` on the task (through
//! the lifecycle's `WaitForFleet`/`StopWaiting`) and a `job.waiting` / `job.released` event
//! pair. Two waits are shown: at the job gate while the pause is on ([`admit`], every engine
//! and verify job, in-process or on the fleet), and on the fleet while no live factory offers
//! what a published job needs ([`watch_claim`]).

use std::convert::Infallible;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::model::lifecycle::LifecycleEvent;
use crate::model::persona::Persona;
use crate::model::task::{Stage, TaskId};
use crate::runtime::fleet::Fleet;
use crate::runtime::jobs::StageError;
use crate::runtime::Services;
use crate::storage::store::NewEvent;
use crate::work::transitions;

/// What a job held by the pause waits for.
pub(crate) const PAUSED: &str = "fleet paused";
/// Added to a held job's own timeout (with three git calls' worth) to bound its wait at the
/// gate: the stage's bound as the pipeline counts it (its call timeout is at least this), so the
/// gate gives up, with a reason, no later than the stage would.
const HOLD_MARGIN: Duration = Duration::from_secs(30);
/// Git calls a stage's bound allows for besides its job.
const HOLD_GIT_CALLS: u32 = 3;
/// How often a published job that no factory has claimed is looked at (and how long it may
/// wait unclaimed before its task shows why).
const CLAIM_WATCH_EVERY: Duration = Duration::from_secs(2);

/// Whose job waits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Waiter {
    /// The task.
    pub task_id: TaskId,
    /// The persona whose job it is.
    pub persona: Persona,
    /// The stage it runs for.
    pub stage: Stage,
}

/// Lets a job start: at once without a pause; while the pause is on, after it ends and every
/// job that asked earlier has started (its task shows `waiting_for: "fleet paused"` meanwhile).
/// The wait is bounded by the stage's timeout (`timeout`, the job's own, plus the stage's git
/// allowance and margin: a pause longer than a job's timeout alone spends no retry): past it
/// the stage fails transiently (`FLEET_UNAVAILABLE`, retried with backoff). A cancel of the
/// task drops the wait at once.
pub(crate) async fn admit(
    services: &Services,
    who: Waiter,
    capabilities: &[String],
    timeout: Duration,
) -> Result<(), StageError> {
    let place = match services.hold.join(who.task_id, capabilities) {
        Ok(None) => return Ok(()),
        Ok(Some(place)) => place,
        Err(full) => return Err(StageError::fleet_unavailable(full.to_string())),
    };
    let started = Instant::now();
    let mut shown = Shown::new(services, who);
    shown.wait_for(PAUSED).await;
    let bound = timeout + services.config.git.timeout() * HOLD_GIT_CALLS + HOLD_MARGIN;
    let waited = place.wait(bound).await;
    let outcome = if waited.is_ok() {
        "released"
    } else {
        "timed_out"
    };
    shown.stop(started, outcome).await;
    // Leaving the line lets the next job go: after this one's release is recorded.
    drop(place);
    waited.map_err(|error| StageError::fleet_unavailable(error.to_string()))
}

/// Shows on the task why its published job waits unclaimed (the fleet paused, no live factory
/// with what it needs), looked at every [`CLAIM_WATCH_EVERY`], until a factory claims it; then
/// never returns (the caller races it with the job's run, which ends it).
pub(crate) async fn watch_claim(
    services: &Services,
    fleet: &Fleet,
    who: Waiter,
    job: uuid::Uuid,
    capabilities: &[String],
) -> Infallible {
    let started = Instant::now();
    let mut shown = Shown::new(services, who);
    loop {
        tokio::time::sleep(CLAIM_WATCH_EVERY).await;
        if !fleet.is_unclaimed(job) {
            break;
        }
        let reason = if fleet.paused() {
            Some(PAUSED.to_owned())
        } else {
            fleet.why_waiting(capabilities).await
        };
        match reason {
            Some(reason) => shown.wait_for(&reason).await,
            None => shown.stop(started, "served").await,
        }
    }
    shown.stop(started, "claimed").await;
    std::future::pending::<Infallible>().await
}

/// The task's `waiting_for` as this wait set it; cleared (off any caller, from a spawned task)
/// if dropped while set — a job cut off mid-wait. An ended task's is cleared by its end.
struct Shown<'a> {
    services: &'a Services,
    who: Waiter,
    reason: Option<String>,
}

impl<'a> Shown<'a> {
    fn new(services: &'a Services, who: Waiter) -> Self {
        Self {
            services,
            who,
            reason: None,
        }
    }

    /// Shows `reason` (an event when it changes).
    async fn wait_for(&mut self, reason: &str) {
        if self.reason.as_deref() == Some(reason) {
            return;
        }
        let data =
            json!({"reason": reason, "stage": self.who.stage, "persona": self.who.persona.name()});
        let event = NewEvent::new(self.who.persona, "job.waiting", data);
        let wait = LifecycleEvent::WaitForFleet(reason.to_owned());
        let updated = self
            .services
            .store
            .update_task(self.who.task_id, &[event], move |t| {
                transitions::apply(t, wait);
            })
            .await;
        if let Err(error) = updated {
            tracing::debug!(task = %self.who.task_id, %error, "a job's wait was not shown");
        }
        self.reason = Some(reason.to_owned());
    }

    /// Clears what was shown (an event saying how long the job waited and how the wait ended).
    async fn stop(&mut self, started: Instant, outcome: &'static str) {
        let Some(reason) = self.reason.take() else {
            return;
        };
        let waited_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let data = json!({"reason": reason, "waited_ms": waited_ms, "outcome": outcome, "stage": self.who.stage});
        clear(self.services, self.who, data).await;
    }
}

impl Drop for Shown<'_> {
    fn drop(&mut self) {
        let Some(reason) = self.reason.take() else {
            return;
        };
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let services = self.services.clone();
        let who = self.who;
        let data = json!({"reason": reason, "outcome": "dropped", "stage": who.stage});
        self.services.background.spawn("job.released", async move {
            clear(&services, who, data).await;
        });
    }
}

async fn clear(services: &Services, who: Waiter, data: serde_json::Value) {
    let event = NewEvent::new(who.persona, "job.released", data);
    let updated = services
        .store
        .update_task(who.task_id, &[event], |t| {
            transitions::apply(t, LifecycleEvent::StopWaiting);
        })
        .await;
    if let Err(error) = updated {
        tracing::debug!(task = %who.task_id, %error, "a job's wait was not cleared");
    }
}
