//! The resolver's clock. Cache timestamps are milliseconds since the clock's epoch, read from
//! tokio's clock: in production that is the monotonic clock, and under
//! `#[tokio::test(start_paused = true)]` it is virtual, so the TTL, serve-stale, prefetch and
//! failure-backoff rules are tested to the millisecond without sleeping.

use std::time::Instant;

use nodedns_cache::Timestamp;

/// An epoch to count cache time from.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    epoch: tokio::time::Instant,
}

impl Clock {
    /// A clock whose epoch is now.
    pub fn starting_now() -> Self {
        Self { epoch: tokio::time::Instant::now() }
    }

    #[inline]
    pub fn now(&self) -> Timestamp {
        self.since_epoch(tokio::time::Instant::now())
    }

    /// `at` (read by a caller that already has the time) as a cache timestamp.
    #[inline]
    pub fn at(&self, at: Instant) -> Timestamp {
        self.since_epoch(tokio::time::Instant::from_std(at))
    }

    #[inline]
    fn since_epoch(&self, at: tokio::time::Instant) -> Timestamp {
        Timestamp::from_millis(at.saturating_duration_since(self.epoch).as_millis() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn paused_time_moves_the_clock_exactly() {
        let clock = Clock::starting_now();
        assert_eq!(clock.now(), Timestamp::from_millis(0));
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(clock.now(), Timestamp::from_millis(1500));
    }
}
