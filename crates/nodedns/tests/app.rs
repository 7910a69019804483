//! The app run in-process on `127.0.0.1:0`, as an embedding (or a test) runs it: built from a
//! config and a metrics registry, served on sockets bound here, stopped by a future.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use nodedns::app::{App, AppOptions, Sockets};
use nodedns::config::Config;
use nodedns::metrics::Metrics;
use nodedns::readiness::Phase;
use nodedns_testkit::{Behaviour, FakeUpstream, query_tcp, query_udp};
use tokio::sync::oneshot;

const T: Duration = Duration::from_secs(5);

fn config(upstream: SocketAddr, extra: &str) -> Config {
    let yaml = format!(
        r#"listen: ["127.0.0.1:0"]
admin:
  listen: ["127.0.0.1:0"]
server:
  workers: 2
  drain_timeout_secs: 5
cache:
  min_ttl_secs: 0
zones:
  - name: "."
    upstreams: ["{upstream}"]
{extra}"#
    );
    Config::parse(&yaml, "app-test.yaml").expect("valid config")
}

/// A served app: its addresses, its readiness, and how to stop it.
struct Running {
    dns: SocketAddr,
    admin: SocketAddr,
    readiness: Arc<nodedns::readiness::Readiness>,
    stop: Option<oneshot::Sender<()>>,
    served: tokio::task::JoinHandle<Result<nodedns::app::Stopped, nodedns::app::RunError>>,
}

impl Running {
    fn start(config: Config) -> Running {
        let metrics = Metrics::new(false);
        let sockets = Sockets::bind(&config, 2).expect("bind on 127.0.0.1:0");
        let dns = sockets.dns_addrs()[0];
        let admin = sockets.admin_addrs()[0];
        assert_ne!(dns.port(), 0);
        let app = App::new(config, metrics, AppOptions::new(None));
        let readiness = app.readiness().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(app.serve(sockets, async move {
            let _ = stopped.await;
        }));
        Running { dns, admin, readiness, stop: Some(stop), served }
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + T;
        while !self.readiness.ready() {
            assert!(Instant::now() < deadline, "not ready within {T:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the app and waits (bounded) for `serve` to return: every query answered in time,
    /// every background task stopped when told (none had to be aborted).
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let served = tokio::time::timeout(Duration::from_secs(20), self.served).await;
        let stopped = served.expect("serve returned").expect("no panic").expect("clean stop");
        assert_eq!(stopped, nodedns::app::Stopped::default(), "an unclean shutdown");
    }
}

async fn udp(server: SocketAddr, name: &'static str, rtype: RecordType) -> hickory_proto::op::Message {
    tokio::task::spawn_blocking(move || query_udp(server, name, rtype, T).expect("UDP answer")).await.unwrap()
}

async fn tcp(server: SocketAddr, name: &'static str, rtype: RecordType) -> hickory_proto::op::Message {
    tokio::task::spawn_blocking(move || query_tcp(server, name, rtype, T).expect("TCP answer")).await.unwrap()
}

fn http_get(addr: SocketAddr, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, T).ok()?;
    s.set_read_timeout(Some(T)).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_udp_tcp_and_admin_on_port_zero_then_stops_everything() {
    let up = FakeUpstream::start();
    up.answer("a.example", RecordType::A, &["192.0.2.1"], 60);
    let app = Running::start(config(up.addr(), ""));
    app.wait_ready().await;
    let (dns, admin) = (app.dns, app.admin);
    assert_eq!(udp(dns, "a.example", RecordType::A).await.answers.len(), 1);
    assert_eq!(tcp(dns, "a.example", RecordType::A).await.answers.len(), 1, "the TCP hit");
    let ready = tokio::task::spawn_blocking(move || http_get(admin, "/ready")).await.unwrap();
    assert_eq!(ready, Some(200));
    let readiness = app.readiness.clone();
    app.stop().await;
    assert_eq!(readiness.phase(), Phase::Draining, "not ready after the stop");
    // Admin is stopped too: its port no longer answers.
    let after = tokio::task::spawn_blocking(move || http_get(admin, "/ready")).await.unwrap();
    assert_eq!(after, None, "admin still answering after shutdown");
    let gone =
        tokio::task::spawn_blocking(move || query_udp(dns, "a.example", RecordType::A, Duration::from_millis(300)))
            .await
            .unwrap();
    assert!(gone.is_err(), "DNS still answered after shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_every_miss_already_read_queued_or_running() {
    let up = FakeUpstream::start();
    up.set_zone_soa(".", 30, 30);
    let app = Running::start(config(up.addr(), ""));
    app.wait_ready().await;
    // Every name is slow upstream: the misses are still waiting (in the queue or on upstream)
    // when the shutdown starts.
    const NAMES: [&str; 16] = [
        "n0.example",
        "n1.example",
        "n2.example",
        "n3.example",
        "n4.example",
        "n5.example",
        "n6.example",
        "n7.example",
        "n8.example",
        "n9.example",
        "n10.example",
        "n11.example",
        "n12.example",
        "n13.example",
        "n14.example",
        "n15.example",
    ];
    for name in NAMES {
        up.answer(name, RecordType::A, &["192.0.2.7"], 60);
        up.behaviour(name, RecordType::A, Behaviour::Delay(Duration::from_millis(400)));
        up.behaviour(name, RecordType::AAAA, Behaviour::Delay(Duration::from_millis(400)));
    }
    let dns = app.dns;
    let clients: Vec<_> = NAMES
        .iter()
        .map(|name| {
            let name = *name;
            std::thread::spawn(move || query_udp(dns, name, RecordType::A, T))
        })
        .collect();
    // Stop once upstream has seen them: each is read and on the miss path.
    let deadline = Instant::now() + T;
    while NAMES.iter().any(|n| up.query_count(&format!("{n}."), RecordType::A) == 0) {
        assert!(Instant::now() < deadline, "the misses never reached upstream");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    app.stop().await;
    for c in clients {
        let answer = c.join().unwrap().expect("every miss read before the shutdown is answered");
        assert_eq!(answer.response_code, ResponseCode::NoError);
        assert_eq!(answer.answers.len(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_hit_near_expiry_refreshes_the_entry_like_a_udp_hit() {
    let up = FakeUpstream::start();
    up.answer("pop.example", RecordType::A, &["192.0.2.9"], 2);
    let app = Running::start(config(up.addr(), ""));
    app.wait_ready().await;
    let dns = app.dns;
    // Two hits make it popular; in its last second a TCP hit is due to refresh it.
    tcp(dns, "pop.example", RecordType::A).await;
    tcp(dns, "pop.example", RecordType::A).await;
    tcp(dns, "pop.example", RecordType::A).await;
    assert_eq!(up.query_count("pop.example.", RecordType::A), 1);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let hit = tcp(dns, "pop.example", RecordType::A).await;
    assert_eq!(hit.answers.len(), 1);
    let deadline = Instant::now() + Duration::from_millis(700);
    while up.query_count("pop.example.", RecordType::A) < 2 {
        assert!(Instant::now() < deadline, "a TCP hit in the refresh window started no prefetch");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    app.stop().await;
}
