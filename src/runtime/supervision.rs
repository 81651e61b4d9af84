//! The restart policy ractor does not have: OTP-style intensity (at most R restarts in T seconds)
//! with exponential backoff. Pure bookkeeping, so it is tested without actors.

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
