//! Rate-limited warnings: a flood of one failure must not fill a disk with log lines.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Lets one warning of a kind through per interval; counts the ones suppressed.
pub struct RateLimitedWarn {
    interval_ms: u64,
    epoch: Instant,
    next_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimitedWarn {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval_ms: interval.as_millis() as u64,
            epoch: Instant::now(),
            next_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether to log now. Lock-free; at most one caller wins per interval.
    pub fn allow(&self) -> bool {
        let now = self.epoch.elapsed().as_millis() as u64;
        let next = self.next_ms.load(Relaxed);
        if now >= next && self.next_ms.compare_exchange(next, now + self.interval_ms, Relaxed, Relaxed).is_ok() {
            let n = self.suppressed.swap(0, Relaxed);
            if n > 0 {
                tracing::warn!(suppressed = n, "similar warnings were suppressed by rate limiting");
            }
            return true;
        }
        self.suppressed.fetch_add(1, Relaxed);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_per_interval() {
        let w = RateLimitedWarn::new(Duration::from_secs(3600));
        assert!(w.allow());
        assert!(!w.allow());
        assert!(!w.allow());
    }
}
