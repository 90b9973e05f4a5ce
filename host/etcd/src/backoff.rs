//! Jittered exponential backoff.
//!
//! When a remote clustermesh-apiserver restarts, every consumer loses it at the same
//! moment. Plain exponential backoff brings them all back at the same moments too (the
//! CFP's thundering herd). "Full jitter" picks each delay uniformly between zero and the
//! exponential cap, which spreads the reconnects over the whole window.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Delays for successive retries of one operation.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
    rng: fastrand::Rng,
}

impl Backoff {
    /// Delays grow from `base`, doubling per attempt, capped at `max`.
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max,
            attempt: 0,
            rng: fastrand::Rng::new(),
        }
    }

    /// With a fixed seed, for reproducible tests.
    pub fn with_seed(base: Duration, max: Duration, seed: u64) -> Backoff {
        Backoff {
            base,
            max,
            attempt: 0,
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    /// The cap for the current attempt: `min(max, base * 2^attempt)`.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(30)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The next delay, uniform in `[0, ceiling]`, and one more attempt counted.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let nanos = ceiling.as_nanos().min(u128::from(u64::MAX)) as u64;
        Duration::from_nanos(self.rng.u64(0..=nanos))
    }

    /// Attempts since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Call after a success: the next failure starts from `base` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Sleeps the next delay; false when `cancel` fired first, so a retry loop reads
    /// `if !backoff.wait(&cancel).await { return }` and shutdown never waits out a delay.
    pub async fn wait(&mut self, cancel: &CancellationToken) -> bool {
        self.wait_noted(cancel, |_| {}).await
    }

    /// [`Backoff::wait`], first handing the delay to `note` (to log or count it before
    /// the wait starts).
    pub async fn wait_noted(
        &mut self,
        cancel: &CancellationToken,
        note: impl FnOnce(Duration),
    ) -> bool {
        let delay = self.next_delay();
        note(delay);
        tokio::select! {
            _ = cancel.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }
}

impl Default for Backoff {
    /// Cilium's controller range: from 1 s up to 2 min.
    fn default() -> Backoff {
        Backoff::new(Duration::from_secs(1), Duration::from_secs(120))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_double_up_to_the_cap() {
        let mut b = Backoff::with_seed(Duration::from_millis(100), Duration::from_secs(1), 7);
        let ceilings: Vec<_> = (0..6)
            .map(|_| {
                let c = b.ceiling();
                let d = b.next_delay();
                assert!(d <= c, "{d:?} > {c:?}");
                c.as_millis()
            })
            .collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1000, 1000]);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
    }

    #[test]
    fn many_clients_spread_over_the_window() {
        // 100 clients at their 5th attempt: delays cover the window instead of piling up.
        let window = Duration::from_secs(16);
        let mut buckets = [0u32; 8];
        for seed in 0..100 {
            let mut b = Backoff::with_seed(Duration::from_secs(1), window, seed);
            for _ in 0..4 {
                b.next_delay();
            }
            let d = b.next_delay();
            buckets[(d.as_secs_f64() / 2.0).min(7.0) as usize] += 1;
        }
        assert!(
            buckets.iter().all(|&n| n <= 30),
            "no two-second slot takes most clients: {buckets:?}"
        );
        assert!(
            buckets.iter().filter(|&&n| n > 0).count() >= 6,
            "{buckets:?}"
        );
    }
}
