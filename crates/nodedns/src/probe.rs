//! `nodedns probe`: query every upstream endpoint of a name's zone individually and report per
//! endpoint — the loop of `dig`s operators wrote by hand to find the sick CoreDNS pod.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use nodedns_cache::LowerName;
use nodedns_upstream::{PoolConfig, UpstreamError, UpstreamPool};
use nodedns_wire::UpstreamQuestion;

use crate::config::{Config, parse_zone_name};

/// What one endpoint did with `count` queries.
#[derive(Debug, Default)]
pub struct EndpointReport {
    pub endpoint: Option<SocketAddr>,
    pub sent: usize,
    pub rcodes: Vec<(String, usize)>,
    pub timeouts: usize,
    pub errors: Vec<(&'static str, usize)>,
    pub latencies: Vec<Duration>,
}

fn bump<K: PartialEq>(v: &mut Vec<(K, usize)>, k: K) {
    match v.iter_mut().find(|(x, _)| *x == k) {
        Some((_, n)) => *n += 1,
        None => v.push((k, 1)),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied()
}

impl EndpointReport {
    fn p50(&self) -> Option<Duration> {
        let mut lat = self.latencies.clone();
        lat.sort();
        percentile(&lat, 0.5)
    }

    pub fn failing(&self) -> bool {
        self.timeouts + self.errors.iter().map(|e| e.1).sum::<usize>() > 0
    }

    /// One line per endpoint; `fastest_p50` (over all endpoints) marks the slow ones.
    pub fn line_vs(&self, fastest_p50: Option<Duration>) -> String {
        let mut s = self.line();
        // Slow: a median three times the best endpoint's and above 10 ms — a sick node, not jitter.
        if let (Some(p50), Some(best)) = (self.p50(), fastest_p50)
            && p50 > best * 3
            && p50 > Duration::from_millis(10)
        {
            s.push_str("  <-- SLOW");
        }
        s
    }

    pub fn line(&self) -> String {
        let mut lat = self.latencies.clone();
        lat.sort();
        let ms = |d: Option<Duration>| d.map_or("-".to_string(), |d| format!("{:.2}ms", d.as_secs_f64() * 1000.0));
        let mut s = format!(
            "{:<24} sent={} answered={} timeouts={}",
            self.endpoint.map(|e| e.to_string()).unwrap_or_default(),
            self.sent,
            self.latencies.len(),
            self.timeouts
        );
        for (rcode, n) in &self.rcodes {
            let _ = write!(s, " {rcode}={n}");
        }
        for (kind, n) in &self.errors {
            let _ = write!(s, " error_{kind}={n}");
        }
        let _ = write!(s, " p50={} p99={}", ms(percentile(&lat, 0.5)), ms(percentile(&lat, 0.99)));
        let verdict =
            if self.timeouts + self.errors.iter().map(|e| e.1).sum::<usize>() > 0 { "  <-- FAILING" } else { "" };
        s.push_str(verdict);
        s
    }
}

fn rcode_name(code: u8) -> String {
    match code {
        0 => "NOERROR".into(),
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        3 => "NXDOMAIN".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        n => format!("RCODE{n}"),
    }
}

/// Probes every endpoint of the zone of `name`; returns one report per endpoint.
/// The smallest median latency among `reports`.
pub fn fastest_p50(reports: &[EndpointReport]) -> Option<Duration> {
    reports.iter().filter_map(|r| r.p50()).min()
}

pub async fn probe(
    config: &Config,
    name: &str,
    qtype: u16,
    count: usize,
) -> Result<(String, Vec<EndpointReport>), String> {
    let qname = parse_zone_name(name)?;
    let zone = config
        .zone_index_for(&qname)
        .map(|i| &config.zones[i])
        .ok_or_else(|| format!("no zone in the config covers {qname}"))?;
    let wire = hickory_proto::serialize::binary::BinEncodable::to_bytes(&qname).map_err(|e| e.to_string())?;
    let lname = LowerName::new(&wire).map_err(|e| e.to_string())?;
    let question = UpstreamQuestion { name: lname, qtype, qclass: 1, dnssec_ok: false, checking_disabled: false };
    let mut endpoints: Vec<SocketAddr> = zone.upstreams.addrs().to_vec();
    if let Some(service) = &zone.discover {
        for a in crate::discover::resolve_endpoints(zone, service).await.unwrap_or_default() {
            if !endpoints.contains(&a) {
                endpoints.push(a);
            }
        }
    }
    let mut reports = Vec::new();
    for ep in endpoints {
        let pool = UpstreamPool::new(
            &[ep],
            PoolConfig {
                transport: zone.transport,
                tcp_connections: 1,
                query_timeout: zone.query_timeout,
                max_attempts: 1,
                // Every probe query goes out: the point is to measure, not to protect.
                ejection: nodedns_upstream::EjectionPolicy {
                    consecutive_failures: u32::MAX,
                    window_failures: u32::MAX,
                    ..Default::default()
                },
                ..PoolConfig::default()
            },
        );
        let mut r = EndpointReport { endpoint: Some(ep), ..Default::default() };
        for _ in 0..count {
            r.sent += 1;
            let started = Instant::now();
            match pool.resolve(&question, &zone.name).await {
                Ok(resolved) => {
                    r.latencies.push(started.elapsed());
                    bump(&mut r.rcodes, rcode_name(resolved.answer.message[3] & 0x0f));
                }
                Err(UpstreamError::Failed { last, rcode: Some(code) }) => {
                    let _ = last;
                    r.latencies.push(started.elapsed());
                    bump(&mut r.rcodes, rcode_name(code as u8));
                }
                Err(UpstreamError::Failed { last: nodedns_upstream::ErrorKind::Timeout, .. }) => r.timeouts += 1,
                Err(UpstreamError::Failed { last, .. }) => bump(&mut r.errors, last.label()),
                Err(UpstreamError::NoEndpoints) => bump(&mut r.errors, "no_endpoints"),
                Err(UpstreamError::AllEjected) => bump(&mut r.errors, "ejected"),
                Err(UpstreamError::Overloaded) => bump(&mut r.errors, "overloaded"),
            }
        }
        reports.push(r);
    }
    Ok((zone.name.to_ascii(), reports))
}
