//! A bounded UDP load generator with per-query records, for the rollout tests: how many
//! queries were sent, answered, lost and SERVFAILed, and their latency, overall and within a
//! time window (e.g. one pod replacement).

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};

/// One query: when it was sent, its latency and RCODE if answered.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub sent_at: Instant,
    pub answer: Option<(Duration, u8)>,
}

/// Load results: per-query samples and the totals.
#[derive(Default, Debug)]
pub struct LoadReport {
    pub sent: usize,
    pub answered: usize,
    pub servfail: usize,
    pub latencies: Vec<Duration>,
    pub samples: Vec<Sample>,
}

/// Totals for the queries sent within one window.
#[derive(Debug, Default, Clone, Copy)]
pub struct WindowStats {
    pub sent: usize,
    pub answered: usize,
    pub lost: usize,
    pub servfail: usize,
    pub p99: Duration,
}

impl std::fmt::Display for WindowStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sent {} answered {} lost {} servfail {} p99 {:.1} ms",
            self.sent,
            self.answered,
            self.lost,
            self.servfail,
            self.p99.as_secs_f64() * 1e3
        )
    }
}

fn p99(mut l: Vec<Duration>) -> Duration {
    l.sort();
    l.get(((l.len() as f64) * 0.99) as usize).copied().unwrap_or_default()
}

impl LoadReport {
    pub fn p99(&self) -> Duration {
        p99(self.latencies.clone())
    }

    /// The queries sent in `[from, to)`.
    pub fn window(&self, from: Instant, to: Instant) -> WindowStats {
        let mut w = WindowStats::default();
        let mut lat = Vec::new();
        for s in self.samples.iter().filter(|s| s.sent_at >= from && s.sent_at < to) {
            w.sent += 1;
            match s.answer {
                Some((l, rcode)) => {
                    w.answered += 1;
                    w.servfail += (rcode == 2) as usize;
                    lat.push(l);
                }
                None => w.lost += 1,
            }
        }
        w.p99 = p99(lat);
        w
    }

    pub fn total(&self) -> WindowStats {
        let far = Duration::from_secs(3600);
        let start = self.samples.first().map(|s| s.sent_at).unwrap_or_else(Instant::now);
        self.window(start, start + far)
    }
}

/// Sends `qps` A queries a second from `socket` to `dns` for `duration` or until `stop` (names
/// cycling through `names`), and collects every answer; waits up to 3 s at the end for
/// stragglers. Unanswered queries are lost.
pub fn run_load(
    s: UdpSocket,
    dns: SocketAddr,
    qps: u64,
    duration: Duration,
    names: &[String],
    stop: Arc<AtomicBool>,
) -> LoadReport {
    s.set_nonblocking(true).unwrap();
    // Encoded once: the loop only patches the ID, so the client keeps up with the rate.
    let packets: Vec<Vec<u8>> = names
        .iter()
        .map(|n| {
            let mut q = Message::new(0, MessageType::Query, OpCode::Query);
            q.metadata.recursion_desired = true;
            q.add_query(Query::query(Name::from_ascii(n).unwrap(), RecordType::A));
            q.to_vec().unwrap()
        })
        .collect();
    // ID → index of its sample.
    let mut pending: HashMap<u16, usize> = HashMap::new();
    let mut r = LoadReport::default();
    let mut buf = [0u8; 1500];
    let start = Instant::now();
    let interval = Duration::from_nanos(1_000_000_000 / qps);
    let mut next = start;
    let drain = |s: &UdpSocket, pending: &mut HashMap<u16, usize>, r: &mut LoadReport, buf: &mut [u8]| {
        while let Ok(n) = s.recv(buf) {
            if n < 12 {
                continue;
            }
            let id = u16::from_be_bytes([buf[0], buf[1]]);
            if let Some(i) = pending.remove(&id) {
                let sample = &mut r.samples[i];
                let latency = sample.sent_at.elapsed();
                let rcode = buf[3] & 0x0f;
                sample.answer = Some((latency, rcode));
                r.answered += 1;
                r.latencies.push(latency);
                r.servfail += (rcode == 2) as usize;
            }
        }
    };
    while start.elapsed() < duration && !stop.load(Ordering::Relaxed) {
        while Instant::now() >= next {
            let id = (r.sent % 65536) as u16;
            let mut p = packets[r.sent % packets.len()].clone();
            p[..2].copy_from_slice(&id.to_be_bytes());
            // A full send buffer is the client's problem, not a lost query: retry.
            while s.send_to(&p, dns).is_err() {
                drain(&s, &mut pending, &mut r, &mut buf);
            }
            pending.insert(id, r.samples.len());
            r.samples.push(Sample { sent_at: Instant::now(), answer: None });
            r.sent += 1;
            next += interval;
        }
        drain(&s, &mut pending, &mut r, &mut buf);
        std::thread::sleep(Duration::from_micros(100));
    }
    let end = Instant::now() + Duration::from_secs(3);
    while !pending.is_empty() && Instant::now() < end {
        drain(&s, &mut pending, &mut r, &mut buf);
        std::thread::sleep(Duration::from_millis(1));
    }
    r
}
