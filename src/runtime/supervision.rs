//! The restart policy of the supervision tree, stated once: each actor's file names only where it
//! deviates, and links here. ractor restarts nothing by itself (its default is to stop the
//! supervisor); this is OTP-style intensity (at most R restarts in T seconds) with exponential
//! backoff. The bookkeeping ([`RestartHistory`]) is pure, so it is tested without actors.
//!
//! # Who restarts whom
//!
//! - **Compass** ([`crate::actors::compass`]) is the root and the only supervisor. It spawns the
//!   personas in its `pre_start` and one pipeline per running task, all linked to itself, keeps
//!   their current typed refs, and restarts them. A child whose `pre_start` fails comes back as a
//!   spawn error, not a supervision event; Compass counts it as a crash all the same.
//! - **Nobody restarts Compass**: its own crash shuts the service down (exit 1), and the next start
//!   rebuilds everything from the store.
//!
//! # The bounds (`[supervision]`)
//!
//! - A child that exits unexpectedly is restarted after `backoff_base_ms × 2^n` (n: its restarts
//!   still inside the window), capped at `backoff_max_ms`.
//! - At most `max_restarts` restarts inside a sliding `window_secs`; the next crash gives up: a
//!   persona is marked `failed` (`/readyz` answers 503, calls to it `PERSONA_UNAVAILABLE`) and is
//!   tried again with a fresh budget after `revive_after_secs` (0: never); a pipeline's task fails
//!   `PIPELINE_FAILED`.
//! - Unless the crashes were one task's: a persona marks the task whose request it is taking in
//!   (`ActorDirectory::handling`); a task whose requests crashed a persona more than
//!   `max_restarts` times fails `POISONED`, and the persona starts over with a fresh budget.
//! - Every crash, restart, give-up and revival is logged and recorded as a service event
//!   (`actor.crashed`, `actor.restarted`, `actor.failed`, `actor.reviving`).
//!
//! # The operation in flight
//!
//! - A restarted actor is a new actor with empty state, rebuilt from the store. The jobs it ran
//!   ([`crate::runtime::jobs::InFlightJobs`]) die with the old one: aborted, their process groups
//!   killed, their reply ports closed unanswered.
//! - A pipeline whose request's reply port closed asks the persona's next incarnation again
//!   ([`crate::runtime::jobs::call_persona`]): it waits up to `2 × backoff_max_ms + 5 s` for a new
//!   incarnation, at most `max_restarts + 2` tries, and records `actor.restarted` on the task. So
//!   every persona operation is safe to redo; each persona's file says why its is, or how it
//!   deviates (callers that are not pipelines, work that outlives the actor).
//! - A restarted pipeline reloads its task and runs the task's current stage again.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::SupervisionConfig;

/// What a supervisor does about a child that just exited unexpectedly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RestartDecision {
    /// Restart it after this delay.
    RestartAfter(Duration),
    /// It crashed too often: mark it failed and leave it down.
    GiveUp,
}

/// One child's crash history.
#[derive(Debug, Default, Clone)]
pub(crate) struct RestartHistory {
    /// Restarts inside the current window, oldest first; bounded by `max_restarts`.
    recent: VecDeque<Instant>,
    /// Every restart since the service started, for `GET /v1/actors`.
    total: u32,
}

impl RestartHistory {
    /// Records a crash at `now` and decides.
    pub(crate) fn on_failure(
        &mut self,
        policy: &SupervisionConfig,
        now: Instant,
    ) -> RestartDecision {
        let window = policy.window();
        while let Some(oldest) = self.recent.front() {
            if now.duration_since(*oldest) >= window {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        if self.recent.len() >= policy.max_restarts as usize {
            return RestartDecision::GiveUp;
        }
        let exponent = u32::try_from(self.recent.len()).unwrap_or(u32::MAX).min(20);
        let delay_ms = policy
            .backoff_base_ms
            .saturating_mul(1u64 << exponent)
            .min(policy.backoff_max_ms);
        self.recent.push_back(now);
        self.total += 1;
        RestartDecision::RestartAfter(Duration::from_millis(delay_ms))
    }

    /// Forgets the crashes in the window: a revived child gets its whole restart budget again.
    pub(crate) fn forgive(&mut self) {
        self.recent.clear();
    }

    /// Restarts since the service started.
    pub(crate) fn total(&self) -> u32 {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> SupervisionConfig {
        SupervisionConfig {
            max_restarts: 3,
            window_secs: 10,
            backoff_base_ms: 100,
            backoff_max_ms: 250,
            revive_after_secs: 0,
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_then_gives_up() {
        let mut history = RestartHistory::default();
        let now = Instant::now();
        let decisions: Vec<_> = (0..4).map(|_| history.on_failure(&policy(), now)).collect();
        assert_eq!(
            decisions,
            vec![
                RestartDecision::RestartAfter(Duration::from_millis(100)),
                RestartDecision::RestartAfter(Duration::from_millis(200)),
                RestartDecision::RestartAfter(Duration::from_millis(250)),
                RestartDecision::GiveUp,
            ]
        );
        assert_eq!(history.total(), 3);
    }

    #[test]
    fn crashes_outside_the_window_are_forgotten() {
        let mut history = RestartHistory::default();
        let start = Instant::now();
        for _ in 0..3 {
            history.on_failure(&policy(), start);
        }
        let later = start + Duration::from_secs(11);
        assert_eq!(
            history.on_failure(&policy(), later),
            RestartDecision::RestartAfter(Duration::from_millis(100))
        );
    }
}
