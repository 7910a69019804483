//! The cache-hit path without sockets: query parse → cache key → cache lookup → response patch,
//! the work a UDP worker does per datagram between `recvmmsg` and `sendmmsg`.
//!
//! Data: 10,000 names shaped like shared/bench's zone (`svc-I.ns-(I%50).svc.cluster.local`),
//! each cached as an A+AAAA pair with one record per member, as Knot answers them; queries are
//! dnsperf's (RD, no EDNS) unless the name says otherwise.
//!
//! Run: `cargo bench -p nodedns-wire --bench hit_path`
//! (quick look: `cargo bench -p nodedns-wire --bench hit_path -- --warm-up-time 1 --measurement-time 3`)
//!
//! Last result (2026-11-23, 2-vCPU AMD EPYC VM shared with other builds; ±10% between runs;
//! `--warm-up-time 1 --measurement-time 4`). "before" is the same bench on the previous store
//! layout (a `HashTable<u32>` of indices into a slab of slots):
//!
//! | bench | time per query | before |
//! | --- | --- | --- |
//! | parse_query | 11.5 ns | |
//! | cache_key (lower-case + validate) | 24 ns | |
//! | hit, one hot name | 84 ns | 84 ns |
//! | hit, cycling 10,000 names | 134 ns | 273 ns |
//! | hit, 10,000 names, EDNS queries | 132 ns | 208 ns |
//! | miss lookup (absent name) | 57 ns | 54 ns |
//!
//! Compare with the whole server: ~5 µs of CPU per answered query in shared/bench's hit
//! workload, ~85% of it in the kernel (benches/RESULTS.md). The gap between one hot name and
//! 10,000 names is cache misses: table control bytes, the slot in its bucket, the entry blob.
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nodedns_cache::{
    Cache, CacheKey, CacheLimits, CacheableAnswer, Disposition, LowerName, MAX_NAME_LEN, Timestamp, Ttl, TtlPolicy,
};
use nodedns_testkit::wire_name;
use nodedns_wire::{Parsed, Transport, parse_query, render_cached};

const NAMES: usize = 10_000;

/// A response as stored: header, lower-cased question, one record of `rdata`, no OPT.
fn stored(name: &[u8], qtype: u16, rdata: &[u8]) -> CacheableAnswer {
    let mut m = vec![0, 0, 0x85, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
    m.extend_from_slice(name);
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&[0, 1, 0xc0, 0x0c]);
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&[0, 1]);
    let ttl_at = m.len() as u16;
    m.extend_from_slice(&3600u32.to_be_bytes());
    m.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    m.extend_from_slice(rdata);
    CacheableAnswer {
        message: m,
        ttl_offsets: vec![ttl_at],
        disposition: Disposition::Positive { ttl: Ttl::from_secs(3600) },
    }
}

fn query(name: &[u8], qtype: u16, edns: bool) -> Vec<u8> {
    let mut p = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, edns as u8];
    p.extend_from_slice(name);
    p.extend_from_slice(&qtype.to_be_bytes());
    p.extend_from_slice(&[0, 1]);
    if edns {
        p.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
    }
    p
}

fn setup() -> (Cache, Vec<Vec<u8>>) {
    let cache = Cache::new(CacheLimits::default());
    let policy = TtlPolicy { max_ttl: Ttl::from_secs(3600), ..TtlPolicy::default() };
    let mut names = Vec::with_capacity(NAMES);
    for i in 0..NAMES {
        let w = wire_name(&format!("svc-{i}.ns-{}.svc.cluster.local", i % 50));
        let a = stored(&w, 1, &[198, 18, (i >> 8) as u8, i as u8]);
        let mut v6 = [0u8; 16];
        v6[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        v6[14..].copy_from_slice(&(i as u16).to_be_bytes());
        let aaaa = stored(&w, 28, &v6);
        let (key, _) = CacheKey::for_query(LowerName::new(&w).unwrap(), 1, 1, false, false);
        cache.insert_pair(&key, &a, &aaaa, &policy, Timestamp::from_secs(0)).unwrap();
        names.push(w);
    }
    (cache, names)
}

/// One datagram's work on the hit path, as `FrontDoor::classify` + `Resolver::answer_from_cache`.
#[inline]
fn answer(cache: &Cache, packet: &[u8], now: Timestamp, out: &mut [u8]) -> Option<usize> {
    let Parsed::Query(q) = parse_query(packet) else { return None };
    let mut buf = [0u8; MAX_NAME_LEN];
    let (key, member) = q.cache_key(&mut buf);
    let transport = Transport::Udp { max_len: q.max_udp_response(1232) };
    cache.lookup(&key, member, now, |view| render_cached(&q, view, transport, out)).flatten()
}

fn benches(c: &mut Criterion) {
    let (cache, names) = setup();
    let now = Timestamp::from_secs(100);
    // Shuffled order, as dnsperf's hit file.
    let mut order: Vec<usize> = (0..NAMES).collect();
    let mut x = 0x2545_f491_u32;
    for i in (1..NAMES).rev() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        order.swap(i, x as usize % (i + 1));
    }
    let plain: Vec<Vec<u8>> = order.iter().map(|&i| query(&names[i], 1, false)).collect();
    let edns: Vec<Vec<u8>> = order.iter().map(|&i| query(&names[i], if i % 2 == 0 { 1 } else { 28 }, true)).collect();
    let mut out = vec![0u8; 4096];

    let mut g = c.benchmark_group("hit_path");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse_query", |b| b.iter(|| matches!(parse_query(black_box(&plain[7])), Parsed::Query(_))));
    g.bench_function("cache_key", |b| {
        let Parsed::Query(q) = parse_query(&plain[7]) else { unreachable!() };
        b.iter(|| {
            let mut buf = [0u8; MAX_NAME_LEN];
            let (key, member) = black_box(&q).cache_key(&mut buf);
            black_box((key.name.as_wire().len(), member));
        })
    });
    g.bench_function("hit_one_hot_name", |b| b.iter(|| answer(&cache, black_box(&plain[7]), now, &mut out).unwrap()));
    let mut i = 0;
    g.bench_function("hit_10k_names", |b| {
        b.iter(|| {
            i = (i + 1) % NAMES;
            answer(&cache, black_box(&plain[i]), now, &mut out).unwrap()
        })
    });
    g.bench_function("hit_10k_names_edns", |b| {
        b.iter(|| {
            i = (i + 1) % NAMES;
            answer(&cache, black_box(&edns[i]), now, &mut out).unwrap()
        })
    });
    let absent = query(&wire_name("svc-99999.ns-9.svc.cluster.local"), 1, false);
    g.bench_function("miss_lookup", |b| b.iter(|| answer(&cache, black_box(&absent), now, &mut out).is_none()));
    g.finish();
}

criterion_group!(hit_path, benches);
criterion_main!(hit_path);
