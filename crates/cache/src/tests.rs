//! Cache policy tests with explicit time.

use super::*;

const TYPE_TXT: u16 = 16;

const NAME: &[u8] = b"\x01a\x02ns\x03svc\x07cluster\x05local\x00";

fn policy() -> TtlPolicy {
    TtlPolicy { min_ttl: Ttl::from_secs(5), max_ttl: Ttl::from_secs(3600), denial_max_ttl: Ttl::from_secs(1800) }
}

/// A fake message: a 12-byte header whose rcode byte is set, then `records` 4-byte TTL fields.
fn answer(rcode: u8, records: usize, disposition: Disposition) -> CacheableAnswer {
    let mut message = vec![0u8; 12];
    message[3] = rcode;
    let mut ttl_offsets = Vec::new();
    for _ in 0..records {
        message.extend_from_slice(&[0xaa, 0xbb]);
        ttl_offsets.push(message.len() as u16);
        message.extend_from_slice(&[0xff; 4]);
    }
    CacheableAnswer { message, ttl_offsets, disposition }
}

fn positive(ttl: u32) -> CacheableAnswer {
    answer(0, 2, Disposition::Positive { ttl: Ttl::from_secs(ttl) })
}

fn denial(nxdomain: bool, soa_ttl: u32, minimum: u32) -> CacheableAnswer {
    answer(
        if nxdomain { 3 } else { 0 },
        1,
        Disposition::Denial {
            nxdomain,
            soa: Some((Ttl::from_secs(soa_ttl), Ttl::from_secs(minimum))),
            chain_ttl: None,
        },
    )
}

fn key(qtype: u16) -> (CacheKey<'static>, Member) {
    CacheKey::for_query(LowerName::new(NAME).unwrap(), qtype, CLASS_IN, false, false)
}

fn cache() -> Cache {
    Cache::new(CacheLimits { max_bytes: 1 << 20, max_stale: Ttl::from_secs(3600), shards: 4 })
}

/// Served (ttl, freshness, every TTL field as rendered).
fn served(c: &Cache, qtype: u16, now: Timestamp) -> Option<(u32, Freshness, Vec<u32>)> {
    let (k, m) = key(qtype);
    c.lookup(&k, m, now, |view| {
        let mut out = [0u8; 512];
        let len = view.write_into(&mut out).unwrap();
        let ttls = view
            .ttl_offsets
            .chunks_exact(2)
            .map(|o| {
                let o = u16::from_le_bytes([o[0], o[1]]) as usize;
                u32::from_be_bytes(out[o..o + 4].try_into().unwrap())
            })
            .collect::<Vec<_>>();
        assert!(len >= 12);
        (view.ttl, view.freshness, ttls)
    })
}

#[test]
fn pair_members_share_one_expiry_and_count_down_together() {
    let c = cache();
    let t0 = Timestamp::from_secs(1000);
    let (k, _) = key(TYPE_A);
    // A TTL 30, AAAA TTL 7: the pair lives 7 s.
    let ins = c.insert_pair(&k, &positive(30), &positive(7), &policy(), t0).unwrap();
    assert_eq!(ins.lifetime.secs(), 7);
    assert!(!ins.split);

    let (ttl_a, _, fields_a) = served(&c, TYPE_A, t0).unwrap();
    let (ttl_q, _, fields_q) = served(&c, TYPE_AAAA, t0).unwrap();
    assert_eq!((ttl_a, ttl_q), (7, 7));
    assert_eq!(fields_a, vec![7, 7]);
    assert_eq!(fields_q, vec![7, 7]);

    let t3 = t0.add_millis(3000);
    assert_eq!(served(&c, TYPE_A, t3).unwrap().0, 4);
    assert_eq!(served(&c, TYPE_AAAA, t3).unwrap().0, 4);

    // Both expire at the same instant.
    let t7 = t0.add_secs(7);
    assert!(matches!(served(&c, TYPE_A, t7).unwrap().1, Freshness::Stale { .. }));
    assert!(matches!(served(&c, TYPE_AAAA, t7).unwrap().1, Freshness::Stale { .. }));
    let just_before = t7.add_millis(0).as_millis() - 1;
    assert!(matches!(served(&c, TYPE_AAAA, Timestamp::from_millis(just_before)).unwrap().1, Freshness::Fresh { .. }));
}

#[test]
fn remaining_ttl_rounds_up_so_it_is_never_zero_while_fresh() {
    let c = cache();
    let t0 = Timestamp::from_secs(10);
    let (k, _) = key(TYPE_A);
    c.insert_pair(&k, &positive(10), &positive(10), &policy(), t0).unwrap();
    assert_eq!(served(&c, TYPE_A, t0.add_millis(9_001)).unwrap().0, 1);
    assert_eq!(served(&c, TYPE_A, t0.add_millis(500)).unwrap().0, 10);
}

#[test]
fn refresh_replaces_both_members() {
    let c = cache();
    let t0 = Timestamp::from_secs(0);
    let (k, _) = key(TYPE_A);
    c.insert_pair(&k, &positive(60), &positive(60), &policy(), t0).unwrap();
    let t1 = t0.add_secs(50);
    c.insert_pair(&k, &positive(100), &denial(false, 300, 300), &policy(), t1).unwrap();
    assert_eq!(served(&c, TYPE_A, t1).unwrap().0, 100);
    assert_eq!(served(&c, TYPE_AAAA, t1).unwrap().0, 100);
    assert_eq!(c.entries(), 1);
}

#[test]
fn split_pair_lives_no_longer_than_min_ttl() {
    let c = cache();
    let t0 = Timestamp::from_secs(0);
    let (k, _) = key(TYPE_A);
    let ins = c.insert_pair(&k, &denial(true, 600, 600), &positive(300), &policy(), t0).unwrap();
    assert!(ins.split);
    assert_eq!(ins.lifetime.secs(), 5);
    assert_eq!(c.counters.split_pairs.load(std::sync::atomic::Ordering::Relaxed), 1);
    let split = {
        let (k, m) = key(TYPE_A);
        c.lookup(&k, m, t0, |v| v.split).unwrap()
    };
    assert!(split);
    // NODATA + NOERROR is not split: both are NOERROR.
    let ins = c.insert_pair(&k, &denial(false, 600, 600), &positive(300), &policy(), t0).unwrap();
    assert!(!ins.split);
}

#[test]
fn ttls_are_clamped_to_zone_policy() {
    let c = cache();
    let t0 = Timestamp::from_secs(0);
    let (k, _) = key(TYPE_A);
    let zone = TtlPolicy { min_ttl: Ttl::from_secs(5), max_ttl: Ttl::from_secs(30), denial_max_ttl: Ttl::from_secs(5) };
    assert_eq!(c.insert_pair(&k, &positive(86400), &positive(86400), &zone, t0).unwrap().lifetime.secs(), 30);
    assert_eq!(c.insert_pair(&k, &positive(0), &positive(1), &zone, t0).unwrap().lifetime.secs(), 5);
    assert_eq!(
        c.insert_pair(&k, &denial(true, 3600, 3600), &denial(true, 3600, 3600), &zone, t0).unwrap().lifetime.secs(),
        5
    );
}

#[test]
fn negative_ttl_comes_from_soa_and_counts_down() {
    let c = cache();
    let t0 = Timestamp::from_secs(0);
    let (k, m) = key(16);
    let ins = c.insert(&k, &denial(true, 3600, 60), &policy(), t0).unwrap();
    assert_eq!(ins.lifetime.secs(), 60);
    let t = t0.add_secs(45);
    let (ttl, _, fields) = served(&c, 16, t).unwrap();
    assert_eq!(ttl, 15);
    assert_eq!(fields, vec![15], "the SOA's TTL counts down too");
    assert!(c.lookup(&k, m, t0.add_secs(60), |v| matches!(v.freshness, Freshness::Stale { .. })).unwrap());
}

#[test]
fn stale_window_then_gone() {
    let c = cache();
    let t0 = Timestamp::from_secs(0);
    let (k, _) = key(TYPE_A);
    c.insert_pair(&k, &positive(10), &positive(10), &policy(), t0).unwrap();
    let (ttl, fresh, fields) = served(&c, TYPE_A, t0.add_secs(100)).unwrap();
    assert_eq!(ttl, STALE_TTL);
    assert_eq!(fields, vec![STALE_TTL, STALE_TTL]);
    assert_eq!(fresh, Freshness::Stale { expired_for_secs: 90, refresh_allowed: true });
    assert!(served(&c, TYPE_A, t0.add_secs(10 + 3600)).is_none());
}

#[test]
fn keys_differ_by_type_class_and_flags() {
    let c = cache();
    let t0 = Timestamp::from_secs(0);
    let name = LowerName::new(NAME).unwrap();
    let (k_txt, _) = CacheKey::for_query(name, 16, CLASS_IN, false, false);
    c.insert(&k_txt, &positive(100), &policy(), t0).unwrap();
    let (k_mx, m) = CacheKey::for_query(name, 15, CLASS_IN, false, false);
    assert!(c.lookup(&k_mx, m, t0, |_| ()).is_none());
    let (k_do, m) = CacheKey::for_query(name, 16, CLASS_IN, true, false);
    assert!(c.lookup(&k_do, m, t0, |_| ()).is_none());
    let (k_cd, m) = CacheKey::for_query(name, 16, CLASS_IN, false, true);
    assert!(c.lookup(&k_cd, m, t0, |_| ()).is_none());
    let (k_ch, m) = CacheKey::for_query(name, 16, 3, false, false);
    assert!(c.lookup(&k_ch, m, t0, |_| ()).is_none());
    let other = LowerName::new(b"\x01b\x00").unwrap();
    let (k_other, m) = CacheKey::for_query(other, 16, CLASS_IN, false, false);
    assert!(c.lookup(&k_other, m, t0, |_| ()).is_none());
    let (k_same, m) = CacheKey::for_query(name, 16, CLASS_IN, false, false);
    assert!(c.lookup(&k_same, m, t0, |_| ()).is_some());
}

#[test]
fn a_single_entry_has_no_aaaa_member() {
    let c = cache();
    let t0 = Timestamp::from_secs(0);
    let name = LowerName::new(NAME).unwrap();
    // A in class CH is cached alone; its "member" is the single answer.
    let (k, m) = CacheKey::for_query(name, TYPE_A, 3, false, false);
    c.insert(&k, &positive(100), &policy(), t0).unwrap();
    assert!(c.lookup(&k, m, t0, |_| ()).is_some());
    assert!(c.lookup(&k, Member::Aaaa, t0, |_| ()).is_none());
}

#[test]
fn eviction_keeps_bytes_under_the_bound() {
    let limits = CacheLimits { max_bytes: 64 * 1024, max_stale: Ttl::from_secs(3600), shards: 2 };
    let c = Cache::new(limits);
    let t0 = Timestamp::from_secs(0);
    let mut names = Vec::new();
    for i in 0..5000u32 {
        let label = format!("n{i}");
        let mut wire = vec![label.len() as u8];
        wire.extend_from_slice(label.as_bytes());
        wire.push(0);
        names.push(wire);
    }
    for wire in &names {
        let (k, _) = CacheKey::for_query(LowerName::new(wire).unwrap(), TYPE_A, CLASS_IN, false, false);
        c.insert_pair(&k, &positive(300), &positive(300), &policy(), t0).unwrap();
        assert!(c.bytes() as usize <= limits.max_bytes, "{} > {}", c.bytes(), limits.max_bytes);
    }
    assert!(c.counters.evictions.load(std::sync::atomic::Ordering::Relaxed) > 0);
    assert!(c.entries() > 50, "the bound is used, not wasted: {} entries", c.entries());
    assert!(c.entries() < 5000);
    // The newest entry survives.
    let last = names.last().unwrap();
    let (k, m) = CacheKey::for_query(LowerName::new(last).unwrap(), TYPE_A, CLASS_IN, false, false);
    assert!(c.lookup(&k, m, t0, |_| ()).is_some());
}

#[test]
fn eviction_prefers_unreferenced_entries() {
    let c = Cache::new(CacheLimits { max_bytes: 16 * 1024, max_stale: Ttl::from_secs(3600), shards: 1 });
    let t0 = Timestamp::from_secs(0);
    let mk = |i: u32| {
        let label = format!("h{i}");
        let mut wire = vec![label.len() as u8];
        wire.extend_from_slice(label.as_bytes());
        wire.push(0);
        wire
    };
    let hot = mk(0);
    let (hk, hm) = CacheKey::for_query(LowerName::new(&hot).unwrap(), TYPE_A, CLASS_IN, false, false);
    c.insert_pair(&hk, &positive(300), &positive(300), &policy(), t0).unwrap();
    for i in 1..2000 {
        let w = mk(i);
        let (k, _) = CacheKey::for_query(LowerName::new(&w).unwrap(), TYPE_A, CLASS_IN, false, false);
        c.insert_pair(&k, &positive(300), &positive(300), &policy(), t0).unwrap();
        // The hot entry is asked for between inserts, so CLOCK gives it second chances.
        assert!(c.lookup(&hk, hm, t0, |_| ()).is_some(), "hot entry evicted after {i} inserts");
    }
}

#[test]
fn dead_entries_are_evicted_before_live_ones() {
    let c = Cache::new(CacheLimits { max_bytes: 8 * 1024, max_stale: Ttl::from_secs(10), shards: 1 });
    let t0 = Timestamp::from_secs(0);
    let w = b"\x04live\x00".to_vec();
    let (lk, lm) = CacheKey::for_query(LowerName::new(&w).unwrap(), TYPE_A, CLASS_IN, false, false);
    c.insert_pair(&lk, &positive(3600), &positive(3600), &policy(), t0).unwrap();
    c.lookup(&lk, lm, t0, |_| ()).unwrap();
    // Fill with short-lived entries, then insert more after they are dead.
    for i in 0..60u32 {
        let w = format!("\x03d{:02}\x00", i).into_bytes();
        let (k, _) = CacheKey::for_query(LowerName::new(&w).unwrap(), TYPE_A, CLASS_IN, false, false);
        let _ = c.insert_pair(&k, &positive(5), &positive(5), &policy(), t0);
    }
    let later = t0.add_secs(100);
    for i in 0..60u32 {
        let w = format!("\x03e{:02}\x00", i).into_bytes();
        let (k, _) = CacheKey::for_query(LowerName::new(&w).unwrap(), TYPE_A, CLASS_IN, false, false);
        let _ = c.insert_pair(&k, &positive(3600), &positive(3600), &policy(), later);
        c.lookup(&lk, lm, later, |_| ()).unwrap();
    }
}

#[test]
fn prefetch_is_claimed_once_for_popular_entries_near_expiry() {
    let c = cache();
    let t0 = Timestamp::from_secs(0);
    let (k, m) = key(TYPE_A);
    c.insert_pair(&k, &positive(100), &positive(100), &policy(), t0).unwrap();
    let due = |t: Timestamp| c.lookup(&k, m, t, |v| v.freshness).unwrap();
    assert_eq!(due(t0.add_secs(10)), Freshness::Fresh { refresh_due: false });
    assert_eq!(due(t0.add_secs(50)), Freshness::Fresh { refresh_due: false }, "not yet in the last tenth");
    assert_eq!(due(t0.add_secs(91)), Freshness::Fresh { refresh_due: true });
    assert_eq!(due(t0.add_secs(92)), Freshness::Fresh { refresh_due: false }, "claimed once");
    // After a refresh, the new entry can be claimed again.
    c.insert_pair(&k, &positive(100), &positive(100), &policy(), t0.add_secs(92)).unwrap();
    assert_eq!(due(t0.add_secs(93)), Freshness::Fresh { refresh_due: false });
    assert_eq!(due(t0.add_secs(185)), Freshness::Fresh { refresh_due: true });
}

#[test]
fn an_entry_asked_for_once_is_not_prefetched() {
    let c = cache();
    let t0 = Timestamp::from_secs(0);
    let (k, m) = key(TYPE_A);
    c.insert_pair(&k, &positive(100), &positive(100), &policy(), t0).unwrap();
    assert_eq!(c.lookup(&k, m, t0.add_secs(95), |v| v.freshness).unwrap(), Freshness::Fresh { refresh_due: false });
}

#[test]
fn inconsistent_answers_are_rejected() {
    let c = cache();
    let (k, _) = key(16);
    let mut bad = positive(10);
    bad.ttl_offsets.push(bad.message.len() as u16 - 2);
    assert_eq!(c.insert(&k, &bad, &policy(), Timestamp::from_secs(0)), Err(InsertError::Inconsistent));
    assert_eq!(c.entries(), 0);
}

#[test]
fn remove_and_reinsert_reuse_slots() {
    let c = cache();
    let t0 = Timestamp::from_secs(0);
    let (k, m) = key(TYPE_A);
    for _ in 0..100 {
        c.insert_pair(&k, &positive(10), &positive(10), &policy(), t0).unwrap();
        assert!(c.remove(&k));
        assert!(c.lookup(&k, m, t0, |_| ()).is_none());
    }
    assert_eq!(c.entries(), 0);
    assert!(!c.remove(&k));
}

#[test]
fn byte_count_returns_to_baseline_after_removal() {
    let c = cache();
    let empty = c.bytes();
    let t0 = Timestamp::from_secs(0);
    let (k, _) = key(TYPE_A);
    c.insert_pair(&k, &positive(10), &positive(10), &policy(), t0).unwrap();
    assert!(c.bytes() > empty);
    c.remove(&k);
    // The slab keeps its capacity, but the entry's own bytes are returned.
    let (k2, _) = key(16);
    c.insert(&k2, &positive(10), &policy(), t0).unwrap();
    c.remove(&k2);
    assert!(c.bytes() < 4096);
}

/// A message whose question is `name` (as answers from the wire layer have), with TTL fields.
fn answer_for(name: &[u8], records: usize, ttl: u32) -> CacheableAnswer {
    let mut message = vec![0u8; 12];
    message.extend_from_slice(name);
    message.extend_from_slice(&[0, 1, 0, 1]);
    let mut ttl_offsets = Vec::new();
    for _ in 0..records {
        message.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
        ttl_offsets.push(message.len() as u16);
        message.extend_from_slice(&[0; 4]);
        message.extend_from_slice(&[0, 4, 10, 0, 0, 1]);
    }
    CacheableAnswer { message, ttl_offsets, disposition: Disposition::Positive { ttl: Ttl::from_secs(ttl) } }
}

#[test]
fn a_warm_cache_moves_to_a_successor_with_its_expiry_and_pairing() {
    let old = cache();
    let t0 = Timestamp::from_secs(100);
    let (pk, _) = key(TYPE_A);
    old.insert_pair(&pk, &answer_for(NAME, 1, 60), &answer_for(NAME, 2, 60), &policy(), t0).unwrap();
    let (sk, _) = key(16);
    old.insert(&sk, &answer_for(NAME, 1, 300), &policy(), t0).unwrap();
    let mut records = Vec::new();
    let n = old.export(t0.add_secs(10), |r| {
        records.push(r.to_vec());
        true
    });
    assert_eq!(n, 2);
    // The successor's clock has another epoch.
    let new = cache();
    let t1 = Timestamp::from_secs(5);
    for r in &records {
        new.import(r, t1).unwrap();
    }
    assert_eq!(new.entries(), 2);
    let (ttl_a, _, _) = served(&new, TYPE_A, t1).unwrap();
    let (ttl_q, _, fields) = served(&new, TYPE_AAAA, t1).unwrap();
    assert_eq!((ttl_a, ttl_q), (50, 50), "the remaining lifetime carries over, shared by the pair");
    assert_eq!(fields.len(), 2);
    assert_eq!(served(&new, 16, t1).unwrap().0, 290);
}

#[test]
fn damaged_records_are_rejected_and_never_panic() {
    let old = cache();
    let t0 = Timestamp::from_secs(100);
    let (pk, _) = key(TYPE_A);
    old.insert_pair(&pk, &answer_for(NAME, 1, 60), &answer_for(NAME, 1, 60), &policy(), t0).unwrap();
    let mut record = Vec::new();
    old.export(t0, |r| {
        record = r.to_vec();
        true
    });
    let new = cache();
    for cut in 0..record.len() {
        assert!(new.import(&record[..cut], t0).is_err(), "truncated at {cut}");
    }
    for i in 0..record.len() {
        for bit in [0x01u8, 0x80] {
            let mut r = record.clone();
            r[i] ^= bit;
            let _ = new.import(&r, t0);
        }
    }
    // Whatever was accepted renders within its own bounds.
    for qtype in [TYPE_A, TYPE_AAAA] {
        let _ = served(&new, qtype, t0);
    }
}

#[test]
fn allocation_estimate_covers_glibc_and_mimalloc_size_classes() {
    use crate::store::allocated;
    // (requested, glibc's chunk, mimalloc's size class)
    for (len, glibc, mimalloc) in
        [(1, 16, 8), (24, 32, 32), (64, 80, 64), (72, 80, 80), (129, 144, 160), (300, 320, 320), (1025, 1040, 1280)]
    {
        assert_eq!(allocated(len), glibc.max(mimalloc), "{len} bytes");
    }
    // Never less than asked for, whatever the size.
    for len in 1..70_000 {
        assert!(allocated(len) >= len);
    }
}

/// The rcode byte a lookup would render, if the key's member is servable.
fn rcode_of(c: &Cache, qtype: u16, now: Timestamp) -> Option<(u8, Freshness)> {
    let (k, m) = key(qtype);
    c.lookup(&k, m, now, |v| (v.message()[3] & 0x0f, v.freshness))
}

#[test]
fn failure_entry_backs_off_while_the_failure_repeats() {
    let c = cache();
    let p = FailurePolicy { initial: Ttl::from_secs(1), max: Ttl::from_secs(8) };
    let (k, _) = key(16);
    let mut t = Timestamp::from_secs(100);
    // 1, 2, 4, 8, 8: each new failure comes when the previous entry has expired.
    for expected in [1, 2, 4, 8, 8] {
        assert_eq!(
            c.insert_failure(&k, &p, t).unwrap(),
            FailureRecorded::Stored { lifetime: Ttl::from_secs(expected) }
        );
        let (rcode, fresh) = rcode_of(&c, 16, t).unwrap();
        assert_eq!(rcode, 2, "served as SERVFAIL");
        assert!(matches!(fresh, Freshness::Fresh { refresh_due: false }));
        assert!(rcode_of(&c, 16, t.add_millis(expected as u64 * 1000 - 1)).is_some());
        t = t.add_secs(expected);
        assert!(rcode_of(&c, 16, t).is_none(), "a failure entry is never served stale");
    }
    // A success replaces it: the next failure (once that answer is past its stale window, or
    // it would be served stale instead) starts again at 1 s.
    c.insert(&k, &denial(false, 60, 60), &policy(), t).unwrap();
    let t = t.add_secs(60 + 3600);
    assert_eq!(c.insert_failure(&k, &p, t).unwrap(), FailureRecorded::Stored { lifetime: Ttl::from_secs(1) });
    assert_eq!(c.counters.failures.load(std::sync::atomic::Ordering::Relaxed), 6);
}

#[test]
fn stale_data_wins_over_a_failure_and_its_refresh_backs_off() {
    let c = cache();
    let p = FailurePolicy { initial: Ttl::from_secs(1), max: Ttl::from_secs(30) };
    let (k, _) = key(TYPE_A);
    let t0 = Timestamp::from_secs(0);
    c.insert_pair(&k, &positive(10), &positive(10), &policy(), t0).unwrap();
    // Fresh data is never replaced by a failure (a failed prefetch).
    assert_eq!(c.insert_failure(&k, &p, t0.add_secs(5)).unwrap(), FailureRecorded::FreshKept);
    let t = t0.add_secs(20);
    assert_eq!(rcode_of(&c, TYPE_A, t).unwrap().1, Freshness::Stale { expired_for_secs: 10, refresh_allowed: true });
    assert_eq!(c.insert_failure(&k, &p, t).unwrap(), FailureRecorded::StaleKept { retry_in: Ttl::from_secs(1) });
    let (rcode, fresh) = rcode_of(&c, TYPE_AAAA, t.add_millis(500)).unwrap();
    assert_eq!(rcode, 0, "stale data is still served");
    assert_eq!(fresh, Freshness::Stale { expired_for_secs: 10, refresh_allowed: false });
    assert!(matches!(
        rcode_of(&c, TYPE_A, t.add_millis(1000)).unwrap().1,
        Freshness::Stale { refresh_allowed: true, .. }
    ));
    // The next failed refresh waits twice as long.
    let t = t.add_secs(1);
    assert_eq!(c.insert_failure(&k, &p, t).unwrap(), FailureRecorded::StaleKept { retry_in: Ttl::from_secs(2) });
    assert!(matches!(
        rcode_of(&c, TYPE_A, t.add_millis(1999)).unwrap().1,
        Freshness::Stale { refresh_allowed: false, .. }
    ));
    assert!(matches!(
        rcode_of(&c, TYPE_A, t.add_millis(2000)).unwrap().1,
        Freshness::Stale { refresh_allowed: true, .. }
    ));
}

#[test]
fn degraded_pair_serves_the_answered_member_and_expires_together() {
    let c = cache();
    let p = FailurePolicy::default();
    let (k, _) = key(TYPE_A);
    let t0 = Timestamp::from_secs(0);
    let ins = c.insert_pair_degraded(&k, (PairMember::A, &positive(300)), &policy(), &p, t0).unwrap();
    assert_eq!(ins.lifetime.secs(), 5, "min_ttl, not the answered member's 300 s");
    assert_eq!(rcode_of(&c, TYPE_A, t0).unwrap().0, 0);
    assert_eq!(rcode_of(&c, TYPE_AAAA, t0).unwrap().0, 2, "the failed member answers SERVFAIL, never NXDOMAIN");
    assert_eq!(served(&c, TYPE_A, t0.add_secs(1)).unwrap().0, 4);
    // Both expire at once: A goes stale, AAAA (a failure) is gone.
    let t = t0.add_secs(5);
    assert!(matches!(rcode_of(&c, TYPE_A, t).unwrap().1, Freshness::Stale { .. }));
    assert!(rcode_of(&c, TYPE_AAAA, t).is_none());
}

#[test]
fn degraded_pair_keeps_stale_data_of_the_failed_member() {
    let c = cache();
    let (k, _) = key(TYPE_A);
    let t0 = Timestamp::from_secs(0);
    let mut old_aaaa = positive(10);
    old_aaaa.message[11] = 0x77; // marks the old AAAA message
    c.insert_pair(&k, &positive(10), &old_aaaa, &policy(), t0).unwrap();
    let t = t0.add_secs(30);
    c.insert_pair_degraded(&k, (PairMember::A, &positive(60)), &policy(), &FailurePolicy::default(), t).unwrap();
    let (km, m) = key(TYPE_AAAA);
    let (rcode, marker) = c.lookup(&km, m, t, |v| (v.message()[3], v.message()[11])).unwrap();
    assert_eq!((rcode, marker), (0, 0x77), "stale AAAA data wins over a failure member");
}

#[test]
fn failure_entries_count_against_max_bytes() {
    let c = Cache::new(CacheLimits { max_bytes: 1 << 20, max_stale: Ttl::from_secs(3600), shards: 4 });
    let p = FailurePolicy::default();
    let before = c.bytes();
    let (k, _) = key(TYPE_A);
    c.insert_failure(&k, &p, Timestamp::from_secs(0)).unwrap();
    assert!(c.bytes() > before);
    assert_eq!(c.entries(), 1);
}

/// A positive answer whose header counts its answer records, as real responses do (the fake
/// `positive` leaves ANCOUNT 0, which [`Cache::cap_ttl`] would take for NODATA).
fn positive_counted(ttl: u32) -> CacheableAnswer {
    let mut a = positive(ttl);
    a.message[7] = a.ttl_offsets.len() as u8;
    a
}

/// One ceiling per kind, for every name.
fn ceilings(positive: u32, denial: u32, failure: u32) -> impl FnMut(&[u8], CapKind) -> Option<Ttl> {
    move |name, kind| {
        assert_eq!(name, NAME);
        Some(Ttl::from_secs(match kind {
            CapKind::Positive => positive,
            CapKind::Denial => denial,
            CapKind::Failure => failure,
        }))
    }
}

#[test]
fn a_lowered_ceiling_caps_cached_entries_at_once() {
    let c = cache();
    let t0 = Timestamp::from_secs(1000);
    let (k, _) = key(TYPE_A);
    c.insert_pair(&k, &positive_counted(3000), &positive_counted(3000), &policy(), t0).unwrap();
    let t1 = t0.add_secs(100);
    assert_eq!(served(&c, TYPE_A, t1).unwrap().0, 2900);

    // Ceiling 60: both members show 60 at once and still share one expiry.
    assert_eq!(c.cap_ttl(t1, ceilings(60, 1800, 30)), 1);
    let (ttl_a, fresh, fields_a) = served(&c, TYPE_A, t1).unwrap();
    let (ttl_q, _, fields_q) = served(&c, TYPE_AAAA, t1).unwrap();
    assert_eq!((ttl_a, ttl_q), (60, 60));
    assert_eq!((fields_a, fields_q), (vec![60, 60], vec![60, 60]));
    assert!(matches!(fresh, Freshness::Fresh { .. }));
    assert_eq!(served(&c, TYPE_A, t1.add_secs(59)).unwrap().0, 1);
    assert!(matches!(served(&c, TYPE_A, t1.add_secs(61)).unwrap().1, Freshness::Stale { .. }));

    // A ceiling above what remains changes nothing; so does a second call.
    let c2 = cache();
    c2.insert_pair(&k, &positive_counted(30), &positive_counted(30), &policy(), t0).unwrap();
    assert_eq!(c2.cap_ttl(t0, ceilings(60, 1800, 30)), 0);
    assert_eq!(served(&c2, TYPE_A, t0).unwrap().0, 30);
}

#[test]
fn each_kind_is_capped_at_its_own_ceiling_and_stale_entries_are_left_alone() {
    let t0 = Timestamp::from_secs(1000);
    // A denial is capped at the denial ceiling, not the positive one.
    let c = cache();
    let (k, _) = key(TYPE_TXT);
    c.insert(&k, &denial(true, 900, 900), &policy(), t0).unwrap();
    assert_eq!(c.cap_ttl(t0, ceilings(10, 100, 30)), 1);
    assert_eq!(served(&c, TYPE_TXT, t0).unwrap().0, 100);

    // A failure entry follows the failure ceiling (cache.failure_max_ttl_secs lowered).
    let c = cache();
    let long = FailurePolicy { initial: Ttl::from_secs(40), max: Ttl::from_secs(300) };
    c.insert_failure(&k, &long, t0).unwrap();
    assert_eq!(c.cap_ttl(t0, ceilings(3600, 1800, 5)), 1);
    let (ttl, _, _) = served(&c, TYPE_TXT, t0).unwrap();
    assert_eq!(ttl, 5);

    // `None`: uncapped (a name outside every zone whose ceiling changed).
    let c = cache();
    c.insert(&k, &positive_counted(3000), &policy(), t0).unwrap();
    assert_eq!(c.cap_ttl(t0, |_, _| None), 0);
    assert_eq!(served(&c, TYPE_TXT, t0).unwrap().0, 3000);

    // An expired entry keeps its stale window, measured from its own expiry.
    let c = cache();
    c.insert(&k, &positive_counted(10), &policy(), t0).unwrap();
    let later = t0.add_secs(20);
    assert_eq!(c.cap_ttl(later, ceilings(1, 1, 1)), 0);
    assert!(matches!(served(&c, TYPE_TXT, later).unwrap().1, Freshness::Stale { expired_for_secs: 10, .. }));
}

#[test]
fn the_stale_window_changes_at_runtime() {
    let c = cache();
    let t0 = Timestamp::from_secs(1000);
    let (k, _) = key(TYPE_TXT);
    c.insert(&k, &positive_counted(10), &policy(), t0).unwrap();
    let later = t0.add_secs(10 + 600);
    assert!(matches!(served(&c, TYPE_TXT, later).unwrap().1, Freshness::Stale { .. }));
    c.set_max_stale(Ttl::from_secs(300));
    assert_eq!(c.limits().max_stale.secs(), 300);
    assert!(served(&c, TYPE_TXT, later).is_none(), "past the shortened stale window");
    c.set_max_stale(Ttl::from_secs(7200));
    assert!(matches!(served(&c, TYPE_TXT, later).unwrap().1, Freshness::Stale { .. }), "not evicted yet");
}
