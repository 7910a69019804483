//! With dnstap on, a client exchange (what every cache hit logs) allocates nothing once the
//! queue's buffers exist: they are recycled by the writer, not freed. Counted by a global
//! allocator that tallies this thread's allocations (`nodedns_sys::alloc`; its own test binary,
//! so nothing else is affected).

use std::time::{Duration, Instant, SystemTime};

use nodedns::config::{DnstapConfig, DnstapTarget};
use nodedns::dnstap::Dnstap;
use nodedns::metrics::{Metrics, Proto};
use nodedns_sys::alloc::Counting;

#[global_allocator]
static GLOBAL: Counting = Counting;

const QUERY: &[u8] = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x01a\x00\x00\x01\x00\x01";
const RESPONSE: &[u8] = b"\x12\x34\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00\x01a\x00\x00\x01\x00\x01\xc0\x0c\x00\x01\x00\x01\x00\x00\x0e\x10\x00\x04\x0a\x00\x00\x01";

#[test]
fn a_logged_exchange_allocates_nothing_once_warm() {
    let metrics = Metrics::new(false);
    let config = DnstapConfig { target: DnstapTarget::File("/dev/null".into()), identity: Some("node-1".into()) };
    let tap = Dnstap::start(&config, &metrics).unwrap();
    let client = "10.1.2.3:40000".parse().ok();
    let server = "169.254.20.10:53".parse().ok();
    let exchange = || {
        let now = SystemTime::now();
        tap.client(Proto::Udp, client, server, QUERY, Some(RESPONSE), now, now);
    };
    // Warm: bursts until at least 1,000 buffers exist (a burst creates only as many as the
    // writer has not recycled meanwhile, which depends on scheduling), then wait until every
    // one is written and back on the free list: the 1,000 exchanges below then find a free
    // buffer each, however slowly the writer runs.
    let mut warm = 0u64;
    while tap.buffers() < 1000 {
        assert!(warm < 20_000, "only {} buffers after {warm} exchanges", tap.buffers());
        for _ in 0..2000 {
            exchange();
        }
        warm += 2000;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while metrics.dnstap_sent.get() < 2 * warm {
        assert!(Instant::now() < deadline, "writer did not drain");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The counter is live (a zero below must mean no allocations, not no counting).
    let probe = Counting::this_thread();
    drop(std::hint::black_box(Vec::<u8>::with_capacity(16)));
    assert_eq!(Counting::this_thread() - probe, 1, "one allocation counted");
    let before = Counting::this_thread();
    for _ in 0..1000 {
        exchange();
    }
    let allocated = Counting::this_thread() - before;
    assert_eq!(allocated, 0, "allocations for 1,000 logged exchanges");
    tap.shutdown(Duration::from_secs(5));
    assert_eq!(metrics.dnstap_dropped.get(), 0);
    assert_eq!(metrics.dnstap_sent.get(), 2 * warm + 2000);
}
