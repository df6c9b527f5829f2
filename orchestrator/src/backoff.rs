//! Exponential backoff with jitter, used for reconnecting to workers and for
//! retrying a turn. Its own module so the arithmetic is tested in one place.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BackoffError {
    #[error("backoff initial delay must be more than zero")]
    ZeroInitial,
    #[error("backoff factor must be a finite number of at least 1, got {0}")]
    Factor(f64),
    #[error("backoff max delay {max:?} is below the initial delay {initial:?}")]
    MaxBelowInitial { initial: Duration, max: Duration },
}

/// Delays grow `initial * factor^(attempt-1)`, capped at `max_delay`, each
/// drawn uniformly from its upper half ("equal jitter"): never zero, so a
/// fleet that lost a worker at once does not reconnect in lock-step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    initial: Duration,
    factor: f64,
    max_delay: Duration,
    /// Attempts allowed in all; 0 means no limit.
    max_attempts: u32,
}

impl Backoff {
    pub fn new(
        initial: Duration,
        factor: f64,
        max_delay: Duration,
        max_attempts: u32,
    ) -> Result<Self, BackoffError> {
        if initial.is_zero() {
            return Err(BackoffError::ZeroInitial);
        }
        if !factor.is_finite() || factor < 1.0 {
            return Err(BackoffError::Factor(factor));
        }
        if max_delay < initial {
            return Err(BackoffError::MaxBelowInitial {
                initial,
                max: max_delay,
            });
        }
        Ok(Backoff {
            initial,
            factor,
            max_delay,
            max_attempts,
        })
    }

    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// Whether another attempt may follow attempt number `attempt` (1-based).
    pub fn allows_after(&self, attempt: u32) -> bool {
        self.max_attempts == 0 || attempt < self.max_attempts
    }

    /// The cap of the delay after attempt number `attempt` (1-based), before jitter.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(64);
        let scaled = self.initial.as_secs_f64() * self.factor.powi(exponent as i32);
        if !scaled.is_finite() || scaled >= self.max_delay.as_secs_f64() {
            self.max_delay
        } else {
            Duration::from_secs_f64(scaled)
        }
    }

    /// The jittered delay after attempt number `attempt`: in `[ceiling/2, ceiling]`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt);
        let half = ceiling / 2;
        let spread = ceiling.saturating_sub(half).as_secs_f64();
        half + Duration::from_secs_f64(spread * rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn rejects_bad_parameters() {
        assert_eq!(
            Backoff::new(Duration::ZERO, 2.0, ms(10), 0),
            Err(BackoffError::ZeroInitial)
        );
        assert!(matches!(
            Backoff::new(ms(1), 0.5, ms(10), 0),
            Err(BackoffError::Factor(_))
        ));
        assert!(matches!(
            Backoff::new(ms(1), f64::NAN, ms(10), 0),
            Err(BackoffError::Factor(_))
        ));
        assert!(matches!(
            Backoff::new(ms(20), 2.0, ms(10), 0),
            Err(BackoffError::MaxBelowInitial { .. })
        ));
    }

    #[test]
    fn grows_then_caps_and_jitters_within_bounds() {
        let backoff = Backoff::new(ms(100), 2.0, ms(1000), 0).expect("valid");
        assert_eq!(backoff.ceiling(1), ms(100));
        assert_eq!(backoff.ceiling(2), ms(200));
        assert_eq!(backoff.ceiling(4), ms(800));
        assert_eq!(backoff.ceiling(5), ms(1000));
        assert_eq!(backoff.ceiling(500), ms(1000));
        for attempt in 1..20 {
            let delay = backoff.delay(attempt);
            let ceiling = backoff.ceiling(attempt);
            assert!(delay >= ceiling / 2 && delay <= ceiling, "{delay:?}");
        }
    }

    #[test]
    fn attempt_limit() {
        let limited = Backoff::new(ms(1), 2.0, ms(10), 3).expect("valid");
        assert!(limited.allows_after(2));
        assert!(!limited.allows_after(3));
        let unlimited = Backoff::new(ms(1), 2.0, ms(10), 0).expect("valid");
        assert!(unlimited.allows_after(1_000_000));
    }
}
