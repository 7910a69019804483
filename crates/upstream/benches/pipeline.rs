//! The upstream pipeline of the miss path: building the query, one pipelined TCP exchange
//! through an [`UpstreamPool`], and ingesting the response into a cacheable answer.
//!
//! - `ingest_a`: `nodedns_wire::ingest` of a one-record answer (the wire walker takes it: cut
//!   and copy, no decode): pure CPU per upstream response.
//! - `ingest_a_decoded`: the same response through `ingest_decoded` (hickory decode, bailiwick
//!   filter, re-encode for the cache), the path every response took before the walker.
//! - `build_query`: the upstream query bytes.
//! - `tcp_pipelined/N`: N distinct queries in flight at once through a pool with one persistent
//!   connection to a canned-answer responder on 127.0.0.1 that runs on the same single-threaded
//!   runtime; time per query covers both ends and the loopback TCP syscalls.
//!
//! Run: `cargo bench -p nodedns-upstream --bench pipeline`
//!
//! Last result (2026-11-23, 2-vCPU AMD EPYC VM shared with other builds; ±10% between runs;
//! `--warm-up-time 1 --measurement-time 4`):
//!
//! | bench | time per iteration | per query |
//! | --- | --- | --- |
//! | ingest_a | 100 ns | 100 ns (wire walker) |
//! | ingest_a_decoded | 1.77 µs | 1.77 µs (full hickory decode; 1.9 µs in the run before) |
//! | build_query | 9.7 ns | 9.7 ns |
//! | tcp_pipelined/1 | 17.9 µs | 17.9 µs (one round trip at a time) |
//! | tcp_pipelined/256 | 1.17 ms | 4.6 µs (both ends, pipelined) |
//!
//! For scale: the whole daemon spends ~50 µs of CPU per first-time A query in the miss workload
//! (it fetches the A+AAAA pair: two upstream exchanges, two ingests), unbound with
//! `tcp-upstream: yes` ~30 µs for its one exchange (benches/RESULTS.md).
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hickory_proto::rr::Name;
use nodedns_cache::LowerName;
use nodedns_testkit::wire_name;
use nodedns_upstream::{PoolConfig, Transport, UpstreamPool};
use nodedns_wire::{UpstreamQuestion, build_query, ingest, ingest_decoded};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpListener;

/// The canned answer to `query`: its header and question, QR+AA+RA, one record (A or AAAA by
/// the question's type, TTL 300). Knot's answers to the bench zone have this shape.
fn answer_to(query: &[u8]) -> Vec<u8> {
    let mut pos = 12;
    while pos < query.len() && query[pos] != 0 {
        pos += 1 + query[pos] as usize;
    }
    let qend = (pos + 5).min(query.len());
    let qtype = u16::from_be_bytes([query[qend - 4], query[qend - 3]]);
    let mut r = Vec::with_capacity(qend + 32);
    r.extend_from_slice(&query[..2]);
    r.extend_from_slice(&[0x85, 0x80, 0, 1, 0, 1, 0, 0, 0, 0]);
    r.extend_from_slice(&query[12..qend]);
    r.extend_from_slice(&[0xc0, 0x0c]);
    r.extend_from_slice(&qtype.to_be_bytes());
    r.extend_from_slice(&[0, 1, 0, 0, 1, 44]);
    if qtype == 28 {
        r.extend_from_slice(&[0, 16, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    } else {
        r.extend_from_slice(&[0, 4, 198, 18, 0, 1]);
    }
    r
}

/// A pipelining TCP responder: answers every framed query in order, flushing when its input
/// buffer runs dry so a burst of queries gets a burst of answers.
async fn responder(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { return };
        tokio::spawn(async move {
            let (rd, wr) = stream.into_split();
            let mut rd = BufReader::new(rd);
            let mut wr = BufWriter::new(wr);
            let mut buf = vec![0u8; 65535];
            loop {
                let Ok(len) = rd.read_u16().await else { return };
                if rd.read_exact(&mut buf[..len as usize]).await.is_err() {
                    return;
                }
                let ans = answer_to(&buf[..len as usize]);
                if wr.write_u16(ans.len() as u16).await.is_err() || wr.write_all(&ans).await.is_err() {
                    return;
                }
                if rd.buffer().is_empty() && wr.flush().await.is_err() {
                    return;
                }
            }
        });
    }
}

fn question(w: &[u8]) -> UpstreamQuestion<'_> {
    UpstreamQuestion {
        name: LowerName::new(w).unwrap(),
        qtype: 1,
        qclass: 1,
        dnssec_ok: false,
        checking_disabled: false,
    }
}

fn benches(c: &mut Criterion) {
    let names: Vec<Vec<u8>> =
        (0..4096).map(|i| wire_name(&format!("svc-{i}.ns-{}.svc.cluster.local", i % 50))).collect();
    let bailiwick = Name::from_ascii("cluster.local.").unwrap();

    let mut g = c.benchmark_group("upstream");
    g.throughput(Throughput::Elements(1));
    let q0 = question(&names[0]);
    let mut query = Vec::new();
    build_query(7, &q0, &mut query);
    let response = answer_to(&query);
    g.bench_function("ingest_a", |b| b.iter(|| ingest(black_box(&response), &q0, &bailiwick).unwrap()));
    g.bench_function("ingest_a_decoded", |b| b.iter(|| ingest_decoded(black_box(&response), &q0, &bailiwick).unwrap()));
    g.bench_function("build_query", |b| b.iter(|| build_query(black_box(7), &q0, &mut query)));

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let addr: SocketAddr = rt.block_on(async {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        tokio::spawn(responder(l));
        a
    });
    let pool = UpstreamPool::new(
        &[addr],
        PoolConfig {
            transport: Transport::Tcp,
            tcp_connections: 1,
            query_timeout: Duration::from_secs(2),
            ..PoolConfig::default()
        },
    );
    rt.block_on(pool.warm());
    for inflight in [1usize, 256] {
        g.throughput(Throughput::Elements(inflight as u64));
        let mut next = 0usize;
        g.bench_with_input(BenchmarkId::new("tcp_pipelined", inflight), &inflight, |b, &n| {
            b.iter(|| {
                rt.block_on(async {
                    let batch: Vec<_> = (0..n)
                        .map(|k| {
                            let w = &names[(next + k) % names.len()];
                            let q = question(w);
                            let (pool, bailiwick) = (&pool, &bailiwick);
                            async move { pool.resolve(&q, bailiwick).await.unwrap() }
                        })
                        .collect();
                    next = next.wrapping_add(n);
                    futures_join_all(batch).await
                })
            })
        });
    }
    g.finish();
}

/// Runs the futures concurrently on this task (the pool pipelines them on one connection).
async fn futures_join_all<F: std::future::Future>(futs: Vec<F>) -> usize {
    let mut set = Vec::with_capacity(futs.len());
    for f in futs {
        set.push(Box::pin(f));
    }
    let mut done = 0;
    let mut pending: Vec<Option<std::pin::Pin<Box<F>>>> = set.into_iter().map(Some).collect();
    std::future::poll_fn(|cx| {
        for slot in pending.iter_mut() {
            if let Some(f) = slot
                && f.as_mut().poll(cx).is_ready()
            {
                *slot = None;
                done += 1;
            }
        }
        if pending.iter().all(Option::is_none) { std::task::Poll::Ready(done) } else { std::task::Poll::Pending }
    })
    .await
}

criterion_group!(pipeline, benches);
criterion_main!(pipeline);
