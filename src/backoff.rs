//! Pauses between reconnect attempts (to the engine, to the broker): doubling from a minimum to
//! a cap, with jitter so that many registries do not hammer a recovering peer in step.

use std::time::Duration;

/// Exponential backoff with a cap. The jitter source is injected so tests are exact.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// The next pause. `jitter` in [0, 1) scales it into [75 %, 100 %] of the nominal value,
    /// so the cap is never exceeded.
    pub fn next(&mut self, jitter: f64) -> Duration {
        let pause = delay(self.attempt, self.min, self.max, jitter);
        self.attempt = self.attempt.saturating_add(1);
        pause
    }

    /// Start over after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Whether no pause was taken since the start or the last reset.
    pub fn is_reset(&self) -> bool {
        self.attempt == 0
    }
}

/// The pause before retry number `attempt` (0 for the first): `min` doubled per attempt up to
/// `max`, shortened by up to a quarter by `jitter` in [0, 1). Odd inputs (NaN jitter, a cap
/// below the minimum) give a pause within the bounds, never a panic.
fn delay(attempt: u32, min: Duration, max: Duration, jitter: f64) -> Duration {
    let max = max.max(min);
    let factor = 2u32.saturating_pow(attempt.min(16));
    let nominal = min.saturating_mul(factor).min(max);
    let jitter = if jitter.is_finite() {
        jitter.clamp(0.0, 1.0)
    } else {
        0.5
    };
    nominal.mul_f64(1.0 - 0.25 * jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let seq: Vec<u128> = (0..6).map(|_| b.next(0.0).as_millis()).collect();
        assert_eq!(seq, [100, 200, 400, 800, 1000, 1000]);
        assert!(!b.is_reset());
        b.reset();
        assert!(b.is_reset());
        assert_eq!(b.next(0.0), Duration::from_millis(100));
    }

    #[test]
    fn odd_inputs_stay_in_bounds() {
        let (min, max) = (Duration::from_millis(100), Duration::from_millis(50));
        assert_eq!(delay(3, min, max, f64::NAN), Duration::from_micros(87_500));
        let cap = Duration::from_secs(5);
        assert_eq!(delay(u32::MAX, min, cap, 0.0), cap);
    }

    #[test]
    fn jitter_only_shortens() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        assert_eq!(b.next(0.999_999).as_millis(), 75);
        for _ in 0..40 {
            assert!(b.next(0.5) <= Duration::from_millis(1000));
        }
    }
}
