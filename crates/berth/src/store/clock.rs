//! Time as the store sees it: an injectable clock and the millisecond
//! encoding used in every timestamp column.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;

/// Where the store gets "now" for the timestamps it stamps itself
/// (`created_at`, `updated_at`, `queued_at`, …).
///
/// Methods whose meaning depends on time (`job_claim`, `jobs_with_expired_leases`,
/// `delivery_record`, …) take `now` as an argument instead, so the caller
/// decides; tests pass [`ManualClock::now`] to both and never sleep.
///
/// Clocks return times truncated to whole milliseconds, the precision of the
/// columns, so a value written and read back compares equal.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    fn now(&self) -> OffsetDateTime;
}

/// The system's UTC wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        truncate_to_millis(OffsetDateTime::now_utc())
    }
}

/// A clock that only moves when told to; clones share the same time.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<OffsetDateTime>>);

impl ManualClock {
    /// A clock stopped at `start` (truncated to milliseconds).
    pub fn new(start: OffsetDateTime) -> Self {
        ManualClock(Arc::new(Mutex::new(truncate_to_millis(start))))
    }

    /// The current time (also [`Clock::now`]).
    pub fn now(&self) -> OffsetDateTime {
        *self.lock()
    }

    /// Sets the time (truncated to milliseconds).
    pub fn set(&self, to: OffsetDateTime) {
        *self.lock() = truncate_to_millis(to);
    }

    /// Moves the time forward by `by`; returns the new time.
    pub fn advance(&self, by: Duration) -> OffsetDateTime {
        let mut now = self.lock();
        *now = truncate_to_millis(*now + by);
        *now
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OffsetDateTime> {
        // A panic while holding this lock cannot leave a half-written time.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        ManualClock::now(self)
    }
}

/// `t` without its sub-millisecond part.
pub fn truncate_to_millis(t: OffsetDateTime) -> OffsetDateTime {
    from_millis(to_millis(t)).unwrap_or(t)
}

/// The column encoding of a timestamp: milliseconds since the Unix epoch, UTC.
pub(crate) fn to_millis(t: OffsetDateTime) -> i64 {
    // i64 milliseconds cover ±292 million years; OffsetDateTime's range is
    // far smaller, so the conversion cannot overflow.
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// Reads a timestamp column back; `None` when out of `OffsetDateTime`'s range.
pub(crate) fn from_millis(ms: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
}
