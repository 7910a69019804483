//! Per-client query rate limit (`limits.per_client_qps`, 0 = off), for the mode where nodedns
//! takes over the kube-dns ClusterIP and any pod's traffic reaches it.
//!
//! Memory never grows with the number of clients: buckets live in a fixed table of
//! [`ROWS`] × [`BUCKETS_PER_ROW`] atomics (64 KiB) addressed by keyed hashes of the client IP, so
//! a flood from many (or spoofed) source addresses cannot allocate anything. Distinct clients
//! can share a bucket; as in a count-min sketch, each client maps to one bucket per row (with
//! independent random keys) and is refused only when *every* one of its buckets is empty, so an
//! innocent client shares the fate of a heavy one only if it collides with heavy clients in all
//! rows. Every bucket refills at `per_client_qps` tokens per second up to one second's worth
//! (the burst). Refused queries do not spend tokens: a client that keeps flooding is answered at
//! the configured rate, not starved for longer.
//!
//! Lock-free: each bucket is one `AtomicU64` (refill time in ms, milli-tokens), updated with
//! compare-and-swap, so UDP workers never contend on a lock.

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

/// Rows of the sketch: independent hashes of the client address.
pub const ROWS: usize = 2;
/// Buckets per row (a power of two).
pub const BUCKETS_PER_ROW: usize = 4096;
/// One token in the fixed-point unit buckets count in.
const TOKEN: u64 = 1000;
/// The highest rate honoured (higher settings are clamped): one second's burst in milli-tokens
/// must fit the bucket's 24-bit token field.
pub const MAX_QPS: u32 = 16_000;
/// Bits of a packed bucket holding milli-tokens; the 40 above hold the refill time in ms (34
/// years: the clock never wraps).
const TOKEN_BITS: u32 = 24;
const TOKEN_MASK: u64 = (1 << TOKEN_BITS) - 1;

/// Fixed-size token-bucket table keyed by client IP.
pub struct ClientRateLimit {
    /// Tokens added per second (= milli-tokens per millisecond); also the burst, in tokens.
    qps: u64,
    /// Start of the millisecond clock the buckets' refill times count in.
    epoch: Instant,
    /// One independently keyed hasher per row.
    hashers: [std::collections::hash_map::RandomState; ROWS],
    /// `ROWS * BUCKETS_PER_ROW` packed buckets: high 40 bits the last refill (ms since `epoch`),
    /// low 24 bits the milli-tokens left. All start full at time 0.
    buckets: Box<[AtomicU64]>,
}

impl ClientRateLimit {
    /// A limiter for `qps` queries per second per client, or `None` for 0 (off).
    pub fn new(qps: u32) -> Option<Self> {
        if qps == 0 {
            return None;
        }
        let qps = qps.min(MAX_QPS) as u64;
        Some(Self {
            qps,
            epoch: Instant::now(),
            hashers: std::array::from_fn(|_| Default::default()),
            buckets: (0..ROWS * BUCKETS_PER_ROW).map(|_| AtomicU64::new(pack(0, qps * TOKEN))).collect(),
        })
    }

    /// Whether a query from `client` may be answered now; spends a token if so.
    pub fn allow(&self, client: IpAddr) -> bool {
        self.allow_at(client, self.epoch.elapsed().as_millis() as u64)
    }

    /// [`allow`](Self::allow) at `now_ms` milliseconds after the limiter's epoch (for tests).
    pub fn allow_at(&self, client: IpAddr, now_ms: u64) -> bool {
        let now = now_ms;
        let cap = self.qps * TOKEN;
        let mut slots = [0usize; ROWS];
        let mut allowed = false;
        for (row, slot) in slots.iter_mut().enumerate() {
            let h = self.hashers[row].hash_one(client) as usize;
            *slot = row * BUCKETS_PER_ROW + (h & (BUCKETS_PER_ROW - 1));
            allowed |= self.tokens(self.buckets[*slot].load(Relaxed), now, cap) >= TOKEN;
        }
        if !allowed {
            return false;
        }
        // Spend in every row: each bucket counts everything its clients sent. Races between
        // workers make this approximate, never unbounded.
        for slot in slots {
            let bucket = &self.buckets[slot];
            let mut cur = bucket.load(Relaxed);
            loop {
                let left = self.tokens(cur, now, cap).saturating_sub(TOKEN);
                let next = pack(now, left);
                match bucket.compare_exchange_weak(cur, next, Relaxed, Relaxed) {
                    Ok(_) => break,
                    Err(seen) => cur = seen,
                }
            }
        }
        true
    }

    /// Milli-tokens in a packed bucket once refilled up to `now`.
    fn tokens(&self, packed: u64, now: u64, cap: u64) -> u64 {
        let (last, left) = (packed >> TOKEN_BITS, packed & TOKEN_MASK);
        // A refill time ahead of `now` (another worker read the clock a moment later and stored
        // first) counts as no time passed.
        let elapsed = now.saturating_sub(last);
        left.saturating_add(elapsed.saturating_mul(self.qps)).min(cap)
    }
}

fn pack(now_ms: u64, milli_tokens: u64) -> u64 {
    (now_ms << TOKEN_BITS) | (milli_tokens & TOKEN_MASK)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn zero_is_off() {
        assert!(ClientRateLimit::new(0).is_none());
    }

    #[test]
    fn allows_a_burst_of_one_second_then_refills_at_the_rate() {
        let l = ClientRateLimit::new(10).unwrap();
        let c = ip("10.0.0.1");
        let allowed = (0..25).filter(|_| l.allow_at(c, 1000)).count();
        assert_eq!(allowed, 10, "burst = one second of tokens");
        assert!(!l.allow_at(c, 1050), "half a token after 50 ms");
        assert!(l.allow_at(c, 1100), "one token per 100 ms at 10 qps");
        assert!(!l.allow_at(c, 1100));
        // Over a long run the rate holds: 10 s at one query per ms → about 100 allowed.
        let allowed = (0..10_000u64).filter(|t| l.allow_at(c, 2000 + t)).count();
        assert!((100..=112).contains(&allowed), "{allowed} allowed in 10 s at 10 qps");
    }

    #[test]
    fn clients_are_limited_separately() {
        let l = ClientRateLimit::new(5).unwrap();
        let heavy = ip("10.0.0.1");
        for _ in 0..100 {
            l.allow_at(heavy, 0);
        }
        assert!(!l.allow_at(heavy, 0));
        // Another client (v4 or v6) still has its full budget unless it collides with the heavy
        // one in both rows, which with these two addresses and random keys is 1 in 16M.
        assert_eq!((0..5).filter(|_| l.allow_at(ip("10.0.0.2"), 0)).count(), 5);
        assert!(l.allow_at(ip("fd00::2"), 0));
    }

    #[test]
    fn many_clients_use_fixed_memory_and_mostly_get_through() {
        let l = ClientRateLimit::new(1).unwrap();
        // 100k distinct clients, one query each: the table does not grow, and since each bucket
        // refuses only when all of a client's buckets are spent, most first queries pass.
        let passed = (0..100_000u32).filter(|i| l.allow_at(IpAddr::from(i.to_be_bytes()), 0)).count();
        assert_eq!(l.buckets.len(), ROWS * BUCKETS_PER_ROW);
        assert!(passed >= BUCKETS_PER_ROW, "at least one client per row-0 bucket passes: {passed}");
    }

    #[test]
    fn refused_queries_do_not_spend_tokens() {
        let l = ClientRateLimit::new(2).unwrap();
        let c = ip("10.1.1.1");
        assert!(l.allow_at(c, 0) && l.allow_at(c, 0));
        for _ in 0..1000 {
            assert!(!l.allow_at(c, 100));
        }
        assert!(l.allow_at(c, 500), "one token back after 500 ms at 2 qps despite the flood");
    }

    #[test]
    fn long_uptime_and_out_of_order_clocks() {
        let l = ClientRateLimit::new(3).unwrap();
        let c = ip("10.2.2.2");
        let day_100 = 100 * 86_400_000;
        for _ in 0..3 {
            assert!(l.allow_at(c, day_100));
        }
        assert!(!l.allow_at(c, day_100));
        // A worker that read the clock earlier than the last update sees no refill, not a huge one.
        assert!(!l.allow_at(c, day_100 - 5000));
        assert!(l.allow_at(c, day_100 + 334), "one token per 333 ms");
        // Settings above the maximum are clamped, not overflowed.
        let fast = ClientRateLimit::new(u32::MAX).unwrap();
        assert_eq!((0..20_000).filter(|_| fast.allow_at(c, 5)).count(), MAX_QPS as usize);
    }
}
