//! `cache`.

use std::time::Duration;

use nodedns_cache::{FailurePolicy, Ttl, TtlPolicy};

use super::Validator;
use crate::CacheConfig;
use crate::raw::RawCache;

impl Validator<'_> {
    pub(super) fn cache(&mut self, c: &RawCache) -> CacheConfig {
        let max_bytes = self.range("cache.max_bytes", c.max_bytes, 1 << 20, 64 << 30) as usize;
        let min_ttl = self.range("cache.min_ttl_secs", c.min_ttl_secs, 0, 86_400);
        let max_ttl = self.range("cache.max_ttl_secs", c.max_ttl_secs, 1, 7 * 86_400);
        let denial_max = self.range("cache.denial_max_ttl_secs", c.denial_max_ttl_secs, 1, 7 * 86_400);
        if max_ttl < min_ttl {
            self.problem("cache.max_ttl_secs", format!("{max_ttl} is below cache.min_ttl_secs ({min_ttl})"));
        }
        if denial_max < min_ttl {
            self.problem("cache.denial_max_ttl_secs", format!("{denial_max} is below cache.min_ttl_secs ({min_ttl})"));
        }
        let max_stale = self.range("cache.max_stale_secs", c.max_stale_secs, 0, 7 * 86_400);
        let stale_timeout = self.range("cache.stale_answer_timeout_ms", c.stale_answer_timeout_ms, 1, 30_000);
        let ttl = TtlPolicy {
            min_ttl: Ttl::from_secs(min_ttl),
            max_ttl: Ttl::from_secs(max_ttl),
            denial_max_ttl: Ttl::from_secs(denial_max),
        };
        // RFC 9520 §3.2: failures are cached at least 1 s and at most 5 minutes.
        let failure_max = self.range("cache.failure_max_ttl_secs", c.failure_max_ttl_secs, 1, 300);
        let pair_wait = self.range("cache.pair_wait_ms", c.pair_wait_ms, 0, 5_000);
        CacheConfig {
            max_bytes,
            ttl,
            max_stale: Ttl::from_secs(max_stale),
            stale_answer_timeout: Duration::from_millis(stale_timeout),
            prefetch: c.prefetch,
            failure: FailurePolicy { initial: Ttl::from_secs(1), max: Ttl::from_secs(failure_max) },
            pair_wait: Duration::from_millis(pair_wait),
        }
    }
}
