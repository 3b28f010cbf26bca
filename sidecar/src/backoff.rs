//! Exponential backoff with jitter: the one implementation behind every retry loop of the sidecar
//! (token exchanges) and the operator (reconciles, watches, the apiserver version at start, the
//! leader's campaign).

use std::time::Duration;

use rand::Rng;

/// How a delay is randomised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Jitter {
    /// None: the schedule exactly.
    None,
    /// `d/2 + rand(0..=d/2)`: spreads a herd of clients that failed together widely (token
    /// exchanges against one Civic Auth).
    Equal,
    /// Up to 20% longer (never past the cap): keeps close to the schedule while many objects'
    /// retries drift apart.
    Up20,
}

/// `base · 2^(n−1)` after the `n`th failure, at most `max`, randomised by `jitter`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Delay after the first failure (before jitter).
    pub base: Duration,
    /// Largest delay.
    pub max: Duration,
    /// How each delay is randomised.
    pub jitter: Jitter,
}

impl Backoff {
    /// The delay after `failures` consecutive failures (0 counts as 1).
    pub fn delay(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(20);
        let d = self.base.saturating_mul(1u32 << exp).min(self.max);
        match self.jitter {
            Jitter::None => d,
            Jitter::Equal => d / 2 + (d / 2).mul_f64(rand::random::<f64>()),
            Jitter::Up20 => jittered(d).min(self.max),
        }
    }

    /// The delays one after another, for a loop that retries until it succeeds.
    pub fn retries(self) -> Retries {
        Retries {
            backoff: self,
            failures: 0,
        }
    }
}

/// Up to 20% longer than `d`, so that periodic work of many replicas does not stay in step.
pub fn jittered(d: Duration) -> Duration {
    d.mul_f64(rand::rng().random_range(1.0..1.2))
}

/// The delays of a [`Backoff`], one per failure; [`Retries::reset`] after a success.
#[derive(Clone, Debug)]
pub struct Retries {
    backoff: Backoff,
    failures: u32,
}

impl Retries {
    /// Starts over from the first delay.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

impl Iterator for Retries {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        self.failures = self.failures.saturating_add(1);
        Some(self.backoff.delay(self.failures))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn backoff(jitter: Jitter) -> Backoff {
        Backoff {
            base: Duration::from_secs(1),
            max: Duration::from_secs(60),
            jitter,
        }
    }

    #[test]
    fn doubles_to_the_cap_with_each_jitter() {
        for n in 1..=12u32 {
            let full = Duration::from_secs(1u64 << (n - 1)).min(Duration::from_secs(60));
            assert_eq!(backoff(Jitter::None).delay(n), full);
            let d = backoff(Jitter::Equal).delay(n);
            assert!(d >= full / 2 && d <= full, "equal, n={n}: {d:?}");
            let d = backoff(Jitter::Up20).delay(n);
            assert!(
                d >= full && d <= full.mul_f64(1.2).min(Duration::from_secs(60)),
                "up20, n={n}: {d:?}"
            );
        }
        assert_eq!(backoff(Jitter::None).delay(0), Duration::from_secs(1));
        assert_eq!(
            backoff(Jitter::Up20).delay(u32::MAX),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn retries_follow_the_schedule_and_reset() {
        let mut r = backoff(Jitter::None).retries();
        let first: Vec<u64> = r.by_ref().take(8).map(|d| d.as_secs()).collect();
        assert_eq!(first, [1, 2, 4, 8, 16, 32, 60, 60]);
        r.reset();
        assert_eq!(r.next(), Some(Duration::from_secs(1)));
        let j = jittered(Duration::from_secs(10));
        assert!(j >= Duration::from_secs(10) && j < Duration::from_secs(12));
    }
}
