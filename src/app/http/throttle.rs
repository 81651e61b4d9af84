//! Wrong secrets throttled per client address, so a guesser gets `server.auth_failures_max`
//! tries per `server.auth_failure_window_secs` instead of thousands a second.
//!
//! Failures are counted by a keyed `governor` limiter (GCRA: a burst of `auth_failures_max`,
//! one more every `window / max`). The failure that goes past it blocks the address until the
//! limiter would take one more; while blocked, its requests with a secret are answered
//! `429 RATE_LIMITED` with `Retry-After` without the secret being checked (else a guess would
//! still be tried). Each outcome is counted in `glitchlab_http_auth_failures_total`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::platform::metrics;

/// Addresses blocked at once at most (memory stays bounded whatever the spread of a flood; an
/// address that finds no room is still answered 429, just not remembered as blocked).
const BLOCKED_ADDRESSES_MAX: usize = 65_536;
/// Every this many failures, the limiter forgets addresses whose buckets are full again.
const FORGET_EVERY: u64 = 4096;

/// The failure counts and blocks of the service.
pub(crate) struct FailureThrottle {
    /// One bucket per address.
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    /// Blocked addresses and until when.
    blocked: Mutex<HashMap<IpAddr, Instant>>,
    /// Failures recorded (for the periodic clean-up).
    failures: AtomicU64,
}

impl FailureThrottle {
    /// `max` failures per `window_secs`; `None` (no throttle) when `max` is 0.
    pub(crate) fn new(max: u32, window_secs: u64) -> Option<Self> {
        let burst = NonZeroU32::new(max)?;
        let period = Duration::from_secs(window_secs) / max;
        let quota = Quota::with_period(period)?.allow_burst(burst);
        Some(Self {
            limiter: governor::RateLimiter::keyed(quota),
            blocked: Mutex::default(),
            failures: AtomicU64::new(0),
        })
    }

    /// How long `ip` stays blocked, if it is (counted as a throttled attempt).
    pub(crate) fn blocked_for(&self, ip: IpAddr) -> Option<Duration> {
        let mut blocked = self.blocked.lock().unwrap_or_else(PoisonError::into_inner);
        let until = *blocked.get(&ip)?;
        let now = Instant::now();
        if until <= now {
            blocked.remove(&ip);
            return None;
        }
        metrics::auth_failure("throttled");
        Some(until - now)
    }

    /// Records a wrong secret from `ip`; `Some(wait)` when this one went past the limit (the
    /// address is blocked for `wait` and this answer is 429 already).
    pub(crate) fn failed(&self, ip: IpAddr) -> Option<Duration> {
        if self.failures.fetch_add(1, Ordering::Relaxed) % FORGET_EVERY == FORGET_EVERY - 1 {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
        let Err(not_until) = self.limiter.check_key(&ip) else {
            metrics::auth_failure("rejected");
            return None;
        };
        metrics::auth_failure("throttled");
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        let until = Instant::now() + wait;
        let mut blocked = self.blocked.lock().unwrap_or_else(PoisonError::into_inner);
        if blocked.len() >= BLOCKED_ADDRESSES_MAX {
            let now = Instant::now();
            blocked.retain(|_, until| *until > now);
        }
        if blocked.len() < BLOCKED_ADDRESSES_MAX {
            blocked.insert(ip, until);
        }
        Some(wait)
    }
}

/// Whole seconds to send in `Retry-After` for `wait` (at least 1).
pub(crate) fn retry_after_secs(wait: Duration) -> u64 {
    let whole = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    whole.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_burst_an_address_is_blocked_and_others_are_not() {
        let throttle = FailureThrottle::new(3, 60).unwrap();
        let (a, b) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        for _ in 0..3 {
            assert!(throttle.failed(a).is_none());
        }
        let wait = throttle.failed(a).unwrap();
        assert!(
            wait > Duration::from_secs(15) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        assert!(throttle.blocked_for(a).is_some());
        assert!(throttle.blocked_for(b).is_none());
        assert!(throttle.failed(b).is_none());
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert!(FailureThrottle::new(0, 60).is_none());
    }
}
