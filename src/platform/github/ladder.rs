//! GitHub's rate-limit ladder, as GitHub documents it for integrators: on a `403` secondary limit
//! or a `429`, wait `retry-after` if it is present, else until `x-ratelimit-reset` when
//! `x-ratelimit-remaining` is 0, else at least a minute doubled per retry of the call; `5xx`
//! and transport failures (timeouts) back off exponentially from a second. Every call is bounded
//! by `retries_max`.
//!
//! [`wait_after`] is the pure rule; [`run`] drives one call through it (the clock is tokio's, so
//! a test with a paused clock sees exactly the waits the ladder chose).

use std::future::Future;
use std::time::Duration;

/// The longest single wait the ladder takes (a reset an hour away is waited in full, no longer).
pub(crate) const WAIT_MAX: Duration = Duration::from_secs(3600);
/// The first back-off after a `5xx` or a transport failure.
const SERVER_ERROR_BACKOFF: Duration = Duration::from_secs(1);

/// What one try of a call came to, as far as the ladder cares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Answer {
    /// The HTTP status; 0 when the request never got one (timeout, connection refused).
    pub status: u16,
    /// `retry-after`, seconds.
    pub retry_after: Option<u64>,
    /// `x-ratelimit-remaining`.
    pub remaining: Option<u64>,
    /// `x-ratelimit-reset`, epoch seconds.
    pub reset_epoch: Option<u64>,
    /// Whether the body names a secondary rate limit (a `403` that is not one is a refusal).
    pub secondary: bool,
}

impl Answer {
    /// Whether this answer is a rate limit (primary or secondary).
    pub(crate) fn is_rate_limit(&self) -> bool {
        self.status == 429
            || (self.status == 403
                && (self.secondary || self.retry_after.is_some() || self.remaining == Some(0)))
    }
}

/// The ladder's settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ladder {
    /// Retries after the first try.
    pub retries_max: u32,
    /// The least wait after a rate limit without `retry-after` or an exhausted quota.
    pub secondary_wait_min: Duration,
}

/// How long to wait before try `retry` (1-based) after `answer`, or `None` when the answer is
/// final (a success, or a refusal no wait can change). `now_epoch` is the wall clock in epoch
/// seconds (for `x-ratelimit-reset`).
pub(crate) fn wait_after(
    ladder: &Ladder,
    answer: &Answer,
    retry: u32,
    now_epoch: u64,
) -> Option<Duration> {
    let doubling = 2u32.saturating_pow(retry.saturating_sub(1));
    let wait = if answer.is_rate_limit() {
        if let Some(seconds) = answer.retry_after {
            Duration::from_secs(seconds)
        } else if let (Some(0), Some(reset)) = (answer.remaining, answer.reset_epoch) {
            Duration::from_secs(reset.saturating_sub(now_epoch).max(1))
        } else {
            ladder.secondary_wait_min.saturating_mul(doubling)
        }
    } else if answer.status == 0 || answer.status >= 500 {
        SERVER_ERROR_BACKOFF.saturating_mul(doubling)
    } else {
        return None;
    };
    Some(wait.min(WAIT_MAX))
}

/// Runs `attempt` until its answer is final or the retries are spent; answers the last try's
/// result. `answer_of` reads the ladder's view of a try's result.
pub(crate) async fn run<T, F, Fut>(
    ladder: &Ladder,
    mut attempt: F,
    answer_of: impl Fn(&T) -> Answer,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
{
    let mut retry = 0;
    loop {
        let result = attempt().await;
        retry += 1;
        if retry > ladder.retries_max {
            return result;
        }
        let now_epoch = chrono::Utc::now().timestamp().max(0) as u64;
        match wait_after(ladder, &answer_of(&result), retry, now_epoch) {
            Some(wait) => {
                tracing::info!(wait_ms = wait.as_millis() as u64, retry, "github: waiting");
                tokio::time::sleep(wait).await;
            }
            None => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LADDER: Ladder = Ladder {
        retries_max: 6,
        secondary_wait_min: Duration::from_secs(60),
    };

    fn answer(status: u16) -> Answer {
        Answer {
            status,
            ..Answer::default()
        }
    }

    #[test]
    fn the_ladder_table() {
        let secondary = Answer {
            secondary: true,
            ..answer(403)
        };
        let with_retry_after = Answer {
            retry_after: Some(7),
            ..answer(403)
        };
        let exhausted = Answer {
            remaining: Some(0),
            reset_epoch: Some(1_000 + 42),
            ..answer(403)
        };
        let cases: [(&Answer, u32, Option<u64>); 9] = [
            (&answer(200), 1, None),
            (&answer(422), 1, None),
            // A 403 that is no rate limit is a refusal: no wait helps.
            (&answer(403), 1, None),
            (&with_retry_after, 1, Some(7)),
            (&exhausted, 1, Some(42)),
            (&secondary, 1, Some(60)),
            (&secondary, 3, Some(240)),
            (&answer(429), 2, Some(120)),
            (&answer(502), 3, Some(4)),
        ];
        for (answer, retry, expected) in cases {
            let wait = wait_after(&LADDER, answer, retry, 1_000).map(|d| d.as_secs());
            assert_eq!(wait, expected, "{answer:?} at retry {retry}");
        }
        assert_eq!(
            wait_after(&LADDER, &answer(0), 1, 0),
            Some(Duration::from_secs(1)),
            "a timeout backs off"
        );
        let far = Answer {
            retry_after: Some(100_000),
            ..answer(429)
        };
        assert_eq!(wait_after(&LADDER, &far, 1, 0), Some(WAIT_MAX));
    }

    /// A storm of secondary limits — with `retry-after`, without it, then a 429 — is waited out
    /// exactly as the ladder says, on a paused clock, and the call is made once per try.
    #[tokio::test(start_paused = true)]
    async fn a_storm_is_waited_out_as_the_ladder_says() {
        let script = [
            Answer {
                retry_after: Some(5),
                ..answer(403)
            },
            Answer {
                secondary: true,
                ..answer(403)
            },
            answer(429),
            answer(201),
        ];
        let tries = std::sync::atomic::AtomicUsize::new(0);
        let started = tokio::time::Instant::now();
        let last = run(
            &LADDER,
            || {
                let index = tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let answer = script[index].clone();
                async move { answer }
            },
            Clone::clone,
        )
        .await;
        assert_eq!(last.status, 201);
        assert_eq!(tries.load(std::sync::atomic::Ordering::SeqCst), 4);
        // Retry 1: 5 s (retry-after); retry 2: no header, the floor doubled once (120 s);
        // retry 3: a 429, doubled again (240 s).
        assert_eq!(started.elapsed(), Duration::from_secs(5 + 120 + 240));
    }

    #[tokio::test(start_paused = true)]
    async fn retries_are_bounded() {
        let tries = std::sync::atomic::AtomicUsize::new(0);
        let ladder = Ladder {
            retries_max: 2,
            ..LADDER
        };
        let last = run(
            &ladder,
            || {
                tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async { answer(503) }
            },
            Clone::clone,
        )
        .await;
        assert_eq!(last.status, 503);
        assert_eq!(tries.load(std::sync::atomic::Ordering::SeqCst), 3);
    }
}
