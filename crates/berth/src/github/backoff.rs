//! The wait between retries of a call to GitHub, REST
//! ([`GithubClient`](super::GithubClient)) and the Actions service
//! (`scaleset::client`) alike.
//!
//! Exponential with jitter: retry `n` waits a random time in `[x/4, x]`
//! where `x = min(max, base·2^(n-1))`. The jitter spreads the retries of
//! many callers that failed together (a GitHub outage fails every pool at
//! once); the floor of `x/4` keeps a retry from following its failure at
//! once, which full jitter (`[0, x]`) would do now and then.

use std::time::Duration;

use rand::Rng;

/// The upper bound of retry `attempt`'s wait: `min(max, base·2^(attempt-1))`.
/// `attempt` counts from 1 (the retry after the first failure); 0 is read
/// as 1.
pub(crate) fn ceiling(base: Duration, max: Duration, attempt: u32) -> Duration {
    let doublings = attempt.saturating_sub(1).min(16);
    base.saturating_mul(1u32 << doublings).min(max)
}

/// How long to wait before retry `attempt` (counting from 1): uniform in
/// `[x/4, x]` for `x = `[`ceiling`]`(base, max, attempt)`, in whole
/// milliseconds, and at most 1 ms when `x` is below that.
pub(crate) fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    let ceiling = ceiling(base, max, attempt);
    let millis = u64::try_from(ceiling.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    Duration::from_millis(rand::thread_rng().gen_range(millis / 4..=millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_ceiling_doubles_from_base_up_to_max() {
        let base = 200 * MS;
        let max = Duration::from_secs(10);
        let ceilings: Vec<u128> = (1..=8).map(|n| ceiling(base, max, n).as_millis()).collect();
        assert_eq!(ceilings, [200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]);
        assert_eq!(ceiling(base, max, 0), base);
        assert_eq!(ceiling(base, max, u32::MAX), max);
        assert_eq!(
            ceiling(Duration::from_secs(u64::MAX / 2), Duration::MAX, 40),
            Duration::MAX
        );
    }

    #[test]
    fn waits_stay_within_a_quarter_of_the_ceiling_and_the_ceiling() {
        let (base, max) = (200 * MS, Duration::from_secs(10));
        for attempt in 0..=20 {
            let x = ceiling(base, max, attempt);
            let (mut low, mut high) = (Duration::MAX, Duration::ZERO);
            for _ in 0..2000 {
                let wait = backoff(base, max, attempt);
                assert!(
                    wait >= x / 4 && wait <= x,
                    "attempt {attempt}: {wait:?} for {x:?}"
                );
                low = low.min(wait);
                high = high.max(wait);
            }
            // Jittered, and over most of the range.
            assert!(
                low < x / 2 && high > x * 3 / 4,
                "{attempt}: {low:?}..{high:?}"
            );
        }
    }

    #[test]
    fn tiny_ceilings_wait_at_most_a_millisecond() {
        for _ in 0..100 {
            assert!(backoff(Duration::ZERO, Duration::ZERO, 1) <= MS);
            assert!(backoff(Duration::from_micros(300), Duration::from_secs(1), 1) <= MS);
        }
    }
}
