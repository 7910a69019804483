//! Coalescing and upstream fetches: identical misses share one exchange (a `watch` the late
//! joiners read too), A and AAAA are fetched as a pair and stored to expire together, and one
//! member's failure stays that member's (issue #13).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use tokio::sync::watch;
use tracing::{debug, warn};

use nodedns_cache::{
    AnswerView, CacheKey, CacheableAnswer, FailurePolicy, FailureRecorded, Freshness, KeyKind, LowerName, Member,
    PairMember, TtlPolicy,
};
use nodedns_upstream::UpstreamError;
use nodedns_wire::{UpstreamQuestion, name_from_wire};

use crate::resolver::Resolver;
use crate::zone::Zone;

/// A fetched answer, ready to render for any waiter.
pub struct Fetched {
    pub(crate) message: Vec<u8>,
    offsets_le: Vec<u8>,
    ttl: u32,
    split: bool,
}

impl Fetched {
    pub(crate) fn new(a: CacheableAnswer, policy: &TtlPolicy) -> Self {
        let ttl = a.disposition.lifetime(policy).secs();
        Self::with_ttl(a, ttl, false)
    }

    /// With the TTL of the entry it belongs to (a pair's one TTL). Takes the answer: the cache
    /// holds its own copy, and the waiters render from this one without another.
    pub(crate) fn with_ttl(a: CacheableAnswer, ttl: u32, split: bool) -> Self {
        let offsets_le = a.ttl_offsets_le();
        Self { message: a.message, offsets_le, ttl, split }
    }

    pub fn view(&self) -> AnswerView<'_> {
        AnswerView::detached(&self.message, &self.offsets_le, self.ttl, self.split)
    }
}

/// How one member of a fetch (the single answer, or A or AAAA of a pair) stands.
#[derive(Clone)]
pub enum MemberState {
    Pending,
    Answered(Arc<Fetched>),
    /// The member failed; the cache holds what answers it now (a failure entry, stale data),
    /// except for a shed query, which is answered REFUSED and caches nothing.
    Failed(UpstreamError),
}

/// The progress of one (coalesced) upstream fetch, published to its waiters as each member
/// settles: a client waits for its own member only, never for the other one of a pair beyond
/// `cache.pair_wait_ms` (issue #13: one record type's failure is that type's).
#[derive(Clone)]
pub struct FetchState {
    /// Single fetches use `members[0]`.
    members: [MemberState; 2],
    done: bool,
}

impl FetchState {
    pub(crate) fn new() -> Self {
        Self { members: [MemberState::Pending, MemberState::Pending], done: false }
    }

    pub(crate) fn member(&self, m: Member) -> &MemberState {
        &self.members[match m {
            Member::Aaaa => 1,
            Member::A | Member::Single => 0,
        }]
    }

    /// Whether a waiter for `m` has its answer (or will get none from this fetch).
    pub(crate) fn settled(&self, m: Member) -> bool {
        self.done || !matches!(self.member(m), MemberState::Pending)
    }
}

/// Identity of a fetch: the cache key in owned form.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct FetchKey {
    name: Box<[u8]>,
    kind: KeyKind,
    class: u16,
    dnssec_ok: bool,
    checking_disabled: bool,
}

impl FetchKey {
    pub(crate) fn of(k: &CacheKey<'_>) -> Self {
        Self {
            name: k.name.as_wire().into(),
            kind: k.kind,
            class: k.class,
            dnssec_ok: k.dnssec_ok,
            checking_disabled: k.checking_disabled,
        }
    }
}

impl Resolver {
    /// Joins or starts the fetch for `key`. Identical misses share one upstream exchange: 10,000
    /// simultaneous queries for one name cost the upstream one A+AAAA pair. A query that joins
    /// late sees what has settled already (a `watch`, not a broadcast).
    pub(crate) fn fetch(self: &Arc<Self>, zone: &Arc<Zone>, key: &CacheKey<'_>) -> watch::Receiver<FetchState> {
        self.join_or_fetch(zone, key, None).unwrap_or_else(|| unreachable!("no recheck asked"))
    }

    /// [`Resolver::fetch`] for a miss of `recheck`: `None` when no fetch is running and the cache
    /// has a fresh answer for it after all (the fetch that filled it ended after the caller
    /// looked), so identical misses never cost a second upstream exchange.
    pub(crate) fn join_or_fetch(
        self: &Arc<Self>,
        zone: &Arc<Zone>,
        key: &CacheKey<'_>,
        recheck: Option<Member>,
    ) -> Option<watch::Receiver<FetchState>> {
        let fk = FetchKey::of(key);
        let mut fetches = self.fetches.lock();
        if let Some(tx) = fetches.get(&fk) {
            return Some(tx.subscribe());
        }
        if let Some(member) = recheck
            && let Some(Freshness::Fresh { .. }) = self.cache.lookup(key, member, self.now(), |v| v.freshness)
        {
            return None;
        }
        let (tx, rx) = watch::channel(FetchState::new());
        let tx = Arc::new(tx);
        fetches.insert(fk.clone(), tx.clone());
        drop(fetches);
        let engine = self.clone();
        let zone = zone.clone();
        tokio::spawn(async move {
            engine.run_fetch(&zone, &fk, &tx).await;
            engine.fetches.lock().remove(&fk);
            tx.send_modify(|s| s.done = true);
        });
        Some(rx)
    }

    /// Stores the failure of `key` unless it was shed (our limit, not a resolution failure).
    pub(crate) fn cache_failure(&self, key: &CacheKey<'_>, e: &UpstreamError) {
        match e {
            UpstreamError::Failed { .. } => {
                let failure = self.cache_config.read().failure;
                if let Ok(FailureRecorded::Stored { .. }) = self.cache.insert_failure(key, &failure, self.now()) {
                    self.events.failure_entry_stored();
                }
            }
            // Shed, every endpoint ejected (already failing fast, and re-admission must not
            // leave names failing behind it), or nothing configured: no failure entry.
            UpstreamError::Overloaded | UpstreamError::AllEjected | UpstreamError::NoEndpoints => {}
        }
    }

    async fn run_fetch(&self, zone: &Zone, fk: &FetchKey, tx: &watch::Sender<FetchState>) {
        let Ok(name) = LowerName::new(&fk.name) else {
            tx.send_modify(|s| s.members = [0, 1].map(|_| MemberState::Failed(UpstreamError::NoEndpoints)));
            return;
        };
        let question = |qtype| UpstreamQuestion {
            name,
            qtype,
            qclass: fk.class,
            dnssec_ok: fk.dnssec_ok,
            checking_disabled: fk.checking_disabled,
        };
        let key = CacheKey {
            name,
            kind: fk.kind,
            class: fk.class,
            dnssec_ok: fk.dnssec_ok,
            checking_disabled: fk.checking_disabled,
        };
        let policy = zone.config.ttl;
        match fk.kind {
            KeyKind::Single(qtype) => {
                let state = match zone.resolve(&question(qtype)).await {
                    Ok(r) => {
                        let _ = self.cache.insert(&key, &r.answer, &policy, self.now());
                        // After the insert: readiness must not announce an answer not yet cached.
                        self.upstream_answered.store(true, Relaxed);
                        MemberState::Answered(Arc::new(Fetched::new(r.answer, &policy)))
                    }
                    Err(e) => {
                        self.cache_failure(&key, &e);
                        MemberState::Failed(e)
                    }
                };
                tx.send_modify(|s| s.members[0] = state);
            }
            KeyKind::Pair => {
                let questions = (question(nodedns_cache::TYPE_A), question(nodedns_cache::TYPE_AAAA));
                self.run_pair_fetch(zone, &key, fk, tx, questions).await
            }
        }
    }

    /// A/AAAA fetched together. When both answer within `pair_wait` of each other the pair rule
    /// stands (one entry, one expiry, split detection). When one member fails, or is still
    /// missing `pair_wait` after the other arrived, the one that answered is served at once and
    /// stored with the other as a failure member, both for `min_ttl` only: IPv4 never breaks
    /// because of IPv6, the two still expire together, and a failure member is SERVFAIL, never
    /// NXDOMAIN, so the NXDOMAIN-next-to-NOERROR split that made glibc give up cannot come of it.
    async fn run_pair_fetch(
        &self,
        zone: &Zone,
        key: &CacheKey<'_>,
        fk: &FetchKey,
        tx: &watch::Sender<FetchState>,
        questions: (UpstreamQuestion<'_>, UpstreamQuestion<'_>),
    ) {
        let policy = zone.config.ttl;
        let (pair_wait, failure) = {
            let c = self.cache_config.read();
            (c.pair_wait, c.failure)
        };
        let degraded_ttl = policy.min_ttl.max(failure.initial).max(nodedns_cache::Ttl::from_secs(1)).secs();
        let (qa, qaaaa) = questions;
        let publish = |m: PairMember, state: MemberState| {
            tx.send_modify(|s| s.members[pair_slot(m)] = state);
        };
        let mut refetched = false;
        loop {
            let mut fa = std::pin::pin!(zone.resolve(&qa));
            let mut fb = std::pin::pin!(zone.resolve(&qaaaa));
            let (first, first_result) = tokio::select! {
                r = fa.as_mut() => (PairMember::A, r),
                r = fb.as_mut() => (PairMember::Aaaa, r),
            };
            let mut other = match first {
                PairMember::A => fb.as_mut(),
                PairMember::Aaaa => fa.as_mut(),
            };
            let second_result = match &first_result {
                Ok(_) => match tokio::time::timeout(pair_wait, other.as_mut()).await {
                    Ok(r) => r,
                    Err(_) => {
                        // The other member is late: the one that came is answered now, and the
                        // pair is stored once the other settles.
                        let Ok(first_answer) = first_result else { unreachable!("matched Ok") };
                        self.upstream_answered.store(true, Relaxed);
                        let kept = first_answer.answer.clone();
                        let fetched = Fetched::with_ttl(first_answer.answer, degraded_ttl, false);
                        publish(first, MemberState::Answered(Arc::new(fetched)));
                        let late = other.await;
                        self.store_late_pair(key, (first, kept), late, &policy, &failure, &publish);
                        return;
                    }
                },
                Err(e) => {
                    // The failed member's waiters are answered now (stale data, a failure
                    // entry once stored, or SERVFAIL); the other member is awaited in full.
                    publish(first, MemberState::Failed(*e));
                    other.await
                }
            };
            let (a, aaaa) = match first {
                PairMember::A => (first_result, second_result),
                PairMember::Aaaa => (second_result, first_result),
            };
            match (a, aaaa) {
                (Ok(a), Ok(aaaa)) => {
                    self.upstream_answered.store(true, Relaxed);
                    let split = a.answer.disposition.is_nxdomain() != aaaa.answer.disposition.is_nxdomain();
                    if split && !refetched {
                        // An NXDOMAIN for one type and NOERROR for the other is what made glibc
                        // give up on names (CoreDNS autopath guessing wrong): ask once more.
                        refetched = true;
                        debug!(name = %display_name(&fk.name), "split A/AAAA answer, fetching the pair again");
                        continue;
                    }
                    if split && self.split_warn.allow() {
                        warn!(
                            name = %display_name(&fk.name),
                            a_nxdomain = a.answer.disposition.is_nxdomain(),
                            aaaa_nxdomain = aaaa.answer.disposition.is_nxdomain(),
                            "upstream answers NXDOMAIN for one of A/AAAA and NOERROR for the other; caching the split pair for min_ttl only"
                        );
                    }
                    let ttl = self.store_pair(key, &a.answer, &aaaa.answer, &policy);
                    tx.send_modify(|s| {
                        s.members = [
                            MemberState::Answered(Arc::new(Fetched::with_ttl(a.answer, ttl, split))),
                            MemberState::Answered(Arc::new(Fetched::with_ttl(aaaa.answer, ttl, split))),
                        ]
                    });
                }
                (Ok(ok), Err(e)) => {
                    self.upstream_answered.store(true, Relaxed);
                    self.store_degraded(key, (PairMember::A, ok), e, &policy, &failure, &publish);
                }
                (Err(e), Ok(ok)) => {
                    self.upstream_answered.store(true, Relaxed);
                    self.store_degraded(key, (PairMember::Aaaa, ok), e, &policy, &failure, &publish);
                }
                (Err(ea), Err(eb)) => {
                    // Both failed: one failure entry for the pair, unless either was shed.
                    if matches!((ea, eb), (UpstreamError::Failed { .. }, UpstreamError::Failed { .. })) {
                        self.cache_failure(key, &eb);
                    }
                    tx.send_modify(|s| s.members = [MemberState::Failed(ea), MemberState::Failed(eb)]);
                }
            }
            return;
        }
    }

    /// Stores a pair both of whose members answered; returns its one TTL.
    fn store_pair(&self, key: &CacheKey<'_>, a: &CacheableAnswer, aaaa: &CacheableAnswer, policy: &TtlPolicy) -> u32 {
        match self.cache.insert_pair(key, a, aaaa, policy, self.now()) {
            Ok(ins) => ins.lifetime.secs(),
            // Not stored (larger than a shard's budget): the same rule, computed here.
            Err(_) => {
                let t = a.disposition.lifetime(policy).min(aaaa.disposition.lifetime(policy));
                let split = a.disposition.is_nxdomain() != aaaa.disposition.is_nxdomain();
                if split { t.min(policy.min_ttl).secs() } else { t.secs() }
            }
        }
    }

    /// One member answered and the other failed: the answered one is served and stored with
    /// the other as a failure member ([`Cache::insert_pair_degraded`]). A shed member (our
    /// limit) caches nothing: the answered member is served without being stored.
    fn store_degraded(
        &self,
        key: &CacheKey<'_>,
        answered: (PairMember, nodedns_upstream::Resolved),
        error: UpstreamError,
        policy: &TtlPolicy,
        failure: &FailurePolicy,
        publish: &dyn Fn(PairMember, MemberState),
    ) {
        let (member, ok) = answered;
        let mut ttl = policy.min_ttl.max(failure.initial).max(nodedns_cache::Ttl::from_secs(1)).secs();
        if matches!(error, UpstreamError::Failed { .. })
            && let Ok(ins) = self.cache.insert_pair_degraded(key, (member, &ok.answer), policy, failure, self.now())
        {
            self.events.failure_entry_stored();
            ttl = ins.lifetime.secs();
        }
        publish(member.other(), MemberState::Failed(error));
        publish(member, MemberState::Answered(Arc::new(Fetched::with_ttl(ok.answer, ttl, false))));
    }

    /// The first member was answered alone after `pair_wait`; the late one has now settled.
    fn store_late_pair(
        &self,
        key: &CacheKey<'_>,
        first: (PairMember, CacheableAnswer),
        late: Result<nodedns_upstream::Resolved, UpstreamError>,
        policy: &TtlPolicy,
        failure: &FailurePolicy,
        publish: &dyn Fn(PairMember, MemberState),
    ) {
        let (member, first_answer) = first;
        match late {
            Ok(second) => {
                let (a, aaaa) = match member {
                    PairMember::A => (&first_answer, &second.answer),
                    PairMember::Aaaa => (&second.answer, &first_answer),
                };
                let ttl = self.store_pair(key, a, aaaa, policy);
                publish(member.other(), MemberState::Answered(Arc::new(Fetched::with_ttl(second.answer, ttl, false))));
            }
            Err(error) => {
                if matches!(error, UpstreamError::Failed { .. })
                    && self
                        .cache
                        .insert_pair_degraded(key, (member, &first_answer), policy, failure, self.now())
                        .is_ok()
                {
                    self.events.failure_entry_stored();
                }
                publish(member.other(), MemberState::Failed(error));
            }
        }
    }
}

/// Where a pair member's state lives in [`FetchState::members`].
fn pair_slot(m: PairMember) -> usize {
    match m {
        PairMember::A => 0,
        PairMember::Aaaa => 1,
    }
}

fn display_name(wire: &[u8]) -> String {
    name_from_wire(wire).map(|n| n.to_ascii()).unwrap_or_else(|| "<invalid>".into())
}
