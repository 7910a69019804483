//! The hit path: synchronous, allocation-free, no tokio — what a UDP worker thread calls for
//! every query, with the time it read once per batch.

use nodedns_cache::{Freshness, MAX_NAME_LEN, Timestamp};
use nodedns_wire::{Query, Rcode, Transport, render_cached};

use crate::resolver::Resolver;

impl Resolver {
    /// The hit path: renders a fresh cached answer into `out`. Returns the length and whether a
    /// prefetch is due, or `None` on a miss or stale entry (the miss path decides). `now` comes
    /// from the caller: a UDP worker reads the clock once per `recvmmsg` batch.
    #[inline]
    pub fn answer_from_cache(
        &self,
        query: &Query<'_>,
        transport: Transport,
        out: &mut [u8],
        now: Timestamp,
    ) -> Option<(usize, bool)> {
        let mut name_buf = [0u8; MAX_NAME_LEN];
        let (key, member) = query.cache_key(&mut name_buf);
        let hit = self
            .cache
            .lookup(&key, member, now, |view| match view.freshness {
                Freshness::Fresh { refresh_due } => {
                    render_cached(query, view, transport, out).map(|n| (n, refresh_due))
                }
                Freshness::Stale { .. } => None,
            })
            .flatten();
        // A SERVFAIL served from the cache can only come from a failure entry (RFC 9520).
        if let Some((len, _)) = hit
            && len > 3
            && out[3] & 0x0f == Rcode::ServFail as u8
        {
            self.events.failure_answered();
        }
        hit
    }

    /// A stale (expired, within `max_stale_secs`) answer for a query that cannot wait for an
    /// upstream because a bound is reached (the miss queue is full): serve-stale wins over
    /// shedding, so a flood of new names from one client never costs the names others had.
    pub fn answer_stale(
        &self,
        query: &Query<'_>,
        transport: Transport,
        out: &mut [u8],
        now: Timestamp,
    ) -> Option<usize> {
        let mut name_buf = [0u8; MAX_NAME_LEN];
        let (key, member) = query.cache_key(&mut name_buf);
        self.cache
            .lookup(&key, member, now, |view| match view.freshness {
                Freshness::Stale { .. } if !view.is_failure() => render_cached(query, view, transport, out),
                _ => None,
            })
            .flatten()
    }
}
