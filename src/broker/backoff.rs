//! Reconnection delays: capped exponential growth with jitter.
//!
//! Jitter matters because every registry replica loses the broker at the same moment when it
//! restarts; without it they would all knock again in lockstep. The function is pure: the
//! caller supplies the random fraction, so tests pin it.

use std::time::Duration;

/// The wait before reconnection attempt `attempt` (0 for the first retry).
///
/// The ceiling doubles from `min` per attempt up to `max`; the wait is drawn from the upper
/// half of it (`random` in [0, 1) picks where), so it never collapses to zero and never
/// exceeds the cap.
pub fn reconnect_delay(attempt: u32, min: Duration, max: Duration, random: f64) -> Duration {
    let min = min.max(Duration::from_millis(1));
    let max = max.max(min);
    let ceiling = min
        .checked_mul(2u32.saturating_pow(attempt.min(31)))
        .unwrap_or(max)
        .min(max);
    let random = if random.is_finite() {
        random.clamp(0.0, 1.0)
    } else {
        0.5
    };
    let half = ceiling / 2;
    (half + half.mul_f64(random)).max(min.min(ceiling))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    #[test]
    fn grows_exponentially_then_stays_at_the_cap() {
        let tops: Vec<_> = (0..10)
            .map(|a| reconnect_delay(a, MIN, MAX, 1.0).as_millis())
            .collect();
        assert_eq!(
            tops,
            [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000, 5000]
        );
        assert_eq!(reconnect_delay(u32::MAX, MIN, MAX, 1.0), MAX);
    }

    #[test]
    fn jitter_stays_within_the_upper_half_and_never_below_min() {
        for attempt in 0..12 {
            let low = reconnect_delay(attempt, MIN, MAX, 0.0);
            let high = reconnect_delay(attempt, MIN, MAX, 0.999);
            assert!(low >= MIN, "{attempt}: {low:?}");
            assert!(high <= MAX, "{attempt}: {high:?}");
            assert!(low <= high);
            assert!(high.as_secs_f64() <= low.as_secs_f64() * 2.0 + 0.001);
        }
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        assert!(reconnect_delay(3, Duration::ZERO, Duration::ZERO, f64::NAN) > Duration::ZERO);
        assert_eq!(reconnect_delay(1, MAX, MIN, 2.0), MAX);
    }
}
