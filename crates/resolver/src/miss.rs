//! The miss path: one client query that the cache could not answer, decided by its deadline
//! (the zone's `query_budget_ms` from now) — stale data, a coalesced fetch, a synthesized
//! denial, a failure entry, or an rcode — then rendered once.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use tokio::time::Instant;
use tracing::warn;

use nodedns_cache::{CacheKey, CacheableAnswer, Freshness, Member, TtlPolicy};
use nodedns_upstream::UpstreamError;
use nodedns_wire::{OwnedQuery, Query, Rcode, Transport, name_from_wire, render_cached, render_rcode};

use crate::events::{CacheResult, Shed};
use crate::fetch::{Fetched, MemberState};
use crate::resolver::Resolver;

/// What the miss path produced for a client: the answer's bytes, allocated at their exact size
/// only once the answer is known (a query waiting on upstream holds no output buffer).
pub struct MissAnswer {
    pub bytes: Vec<u8>,
    pub result: CacheResult,
}

/// What to answer, decided (after waiting, if need be) before anything is rendered.
enum Decision {
    Rcode(Rcode),
    /// The cache has a fresh answer now.
    Cached,
    Fetched(Arc<Fetched>),
    /// Upstream failed or was too slow: stale data if any, else what the cache holds for the
    /// failure (a failure entry), else SERVFAIL.
    StaleOrServFail,
    /// Shed by the upstream in-flight limit: stale data if any, else REFUSED (as `max_inflight`
    /// shedding answers); never a failure entry.
    StaleOrRefused,
    Synthesized(Box<CacheableAnswer>, TtlPolicy),
}

thread_local! {
    /// Render scratch for the miss path: rendering is synchronous, so one buffer per runtime
    /// thread serves every miss.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; nodedns_wire::MAX_MESSAGE]);
}

impl Resolver {
    /// The miss path for one client query (owned packet). Everything it does for the query —
    /// the schema rule's SOA fetch, every upstream attempt, the pair wait — fits one deadline,
    /// the zone's `query_budget_ms` from now (issue #13: glibc gives up after 5 s).
    pub async fn answer_miss(self: &Arc<Self>, miss: &OwnedQuery, transport: Transport) -> Option<MissAnswer> {
        let query = miss.query();
        let (key, member) = miss.cache_key();
        let decision = if self.waiting.load(Relaxed) >= self.max_inflight() {
            self.events.shed(Shed::Inflight);
            if self.shed_warn.allow() {
                warn!(limit = self.max_inflight(), "shedding queries: too many waiting for upstream answers");
            }
            // One client's flood of new names must not cost other pods the names they had: stale
            // data still answers (RFC 8767), only a query with nothing cached is refused.
            Decision::StaleOrRefused
        } else {
            self.waiting.fetch_add(1, Relaxed);
            self.events.waiting(1);
            let d = self.decide(&query, &key, member, Instant::now()).await;
            self.events.waiting(-1);
            self.waiting.fetch_sub(1, Relaxed);
            d
        };
        SCRATCH.with(|scratch| {
            let mut out = scratch.borrow_mut();
            let (len, result) = self.render_decision(&query, (&key, member), decision, transport, &mut out)?;
            Some(MissAnswer { bytes: out[..len].to_vec(), result })
        })
    }

    fn render_decision(
        &self,
        query: &Query<'_>,
        (key, member): (&CacheKey<'_>, Member),
        decision: Decision,
        transport: Transport,
        out: &mut [u8],
    ) -> Option<(usize, CacheResult)> {
        let miss = |len| (len, CacheResult::Miss);
        match decision {
            Decision::Rcode(rcode) => render_rcode(query, rcode, out).map(miss),
            Decision::Fetched(f) => render_cached(query, &f.view(), transport, out).map(miss),
            Decision::Synthesized(answer, policy) => {
                render_cached(query, &Fetched::new(*answer, &policy).view(), transport, out).map(miss)
            }
            Decision::Cached | Decision::StaleOrServFail | Decision::StaleOrRefused => {
                let now = self.now();
                let from_cache = self
                    .cache
                    .lookup(key, member, now, |view| {
                        let result = match view.freshness {
                            Freshness::Fresh { .. } => CacheResult::Hit,
                            Freshness::Stale { .. } => CacheResult::Stale,
                        };
                        let failure = view.is_failure();
                        render_cached(query, view, transport, out).map(|len| (len, result, failure))
                    })
                    .flatten();
                match from_cache {
                    // Shed: stale data may answer, a failure entry may not (shedding is no
                    // resolution failure, and the client should retry elsewhere).
                    Some((_, _, true)) if matches!(decision, Decision::StaleOrRefused) => {
                        render_rcode(query, Rcode::Refused, out).map(miss)
                    }
                    Some((len, result, failure)) => {
                        if failure {
                            self.events.failure_answered();
                        }
                        // A fresh entry found after the upstream failed was filled by a fetch.
                        let result = match (result, &decision) {
                            (CacheResult::Hit, Decision::Cached) => CacheResult::Hit,
                            (CacheResult::Hit, _) => CacheResult::Miss,
                            (r, _) => r,
                        };
                        Some((len, result))
                    }
                    None if matches!(decision, Decision::StaleOrRefused) => {
                        render_rcode(query, Rcode::Refused, out).map(miss)
                    }
                    None => render_rcode(query, Rcode::ServFail, out).map(miss),
                }
            }
        }
    }

    /// Decides how to answer a miss, waiting for upstream if needed, by the query's deadline.
    async fn decide(
        self: &Arc<Self>,
        query: &Query<'_>,
        key: &CacheKey<'_>,
        member: Member,
        received: Instant,
    ) -> Decision {
        // Filled while this query waited in a queue?
        let now = self.now();
        let freshness = self.cache.lookup(key, member, now, |view| view.freshness);
        let has_stale = match freshness {
            Some(Freshness::Fresh { .. }) => return Decision::Cached,
            // A failed refresh of this stale entry is backing off (RFC 9520 §3.2): answer stale
            // now without asking upstream again.
            Some(Freshness::Stale { refresh_allowed: false, .. }) => return Decision::StaleOrServFail,
            Some(Freshness::Stale { .. }) => true,
            None => false,
        };

        let Some(qname) = name_from_wire(key.name.as_wire()) else {
            return Decision::Rcode(Rcode::FormErr);
        };
        let Some(zone) = self.zone_for(&qname) else {
            // No zone covers the name and there is no "." zone: not ours to answer.
            return Decision::Rcode(Rcode::Refused);
        };
        let deadline = received + zone.config.query_budget;

        if zone.config.kubernetes_schema
            && crate::schema::verdict(&qname, &zone.config) == crate::schema::SchemaVerdict::CannotExist
        {
            // The SOA fetch may take at most half the budget: the other half is for asking
            // upstream about the name itself if no SOA can be had.
            let soa_deadline = received + zone.config.query_budget / 2;
            if let Some(answer) = self.synthesize_nxdomain(&zone, query, soa_deadline).await {
                self.events.synthesized(&zone);
                return Decision::Synthesized(Box::new(answer), zone.config.ttl);
            }
        }
        // (No SOA learned yet, e.g. upstream down: ask upstream like any other name.)

        let Some(mut rx) = self.join_or_fetch(&zone, key, Some(member)) else {
            // Filled by a fetch that ended between the lookup above and now.
            return Decision::Cached;
        };
        // RFC 8767 §5: with stale data, answer from it if the refresh takes longer than the
        // client timeout allows; the fetch goes on in the background and refreshes the entry.
        let wait_until = if has_stale { deadline.min(Instant::now() + self.stale_answer_timeout()) } else { deadline };
        let state = match tokio::time::timeout_at(wait_until, rx.wait_for(|s| s.settled(member))).await {
            Ok(Ok(state)) => state.member(member).clone(),
            _ => return Decision::StaleOrServFail,
        };
        match state {
            MemberState::Answered(f) => Decision::Fetched(f),
            MemberState::Failed(UpstreamError::Overloaded) => {
                self.events.shed(Shed::UpstreamInflight);
                if self.shed_warn.allow() {
                    warn!(
                        limit = self.limits.max_upstream_inflight,
                        zone = %zone.label,
                        "shedding queries: every upstream endpoint of the zone holds its in-flight limit"
                    );
                }
                Decision::StaleOrRefused
            }
            MemberState::Failed(_) | MemberState::Pending => Decision::StaleOrServFail,
        }
    }

    /// Starts a refresh of a popular entry before it expires (prefetch). Coalesced with any
    /// fetch of the same key already running.
    pub fn prefetch(self: &Arc<Self>, query: &OwnedQuery) {
        if !self.prefetch_enabled() {
            return;
        }
        let (key, _) = query.cache_key();
        let Some(qname) = name_from_wire(key.name.as_wire()) else {
            return;
        };
        if let Some(zone) = self.zone_for(&qname) {
            self.events.prefetch_started();
            drop(self.fetch(&zone, &key));
        }
    }
}
