//! Wiring of the node setup library: initial apply, periodic resync with metrics, and teardown
//! that leaves shared setup alone while another nodedns instance still serves (rolling update).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};
use tracing::{error, info, warn};

use nodedns_node::{NodeError, NodeSetup, NodeSetupSpec};

use crate::config::{Config, NodeConfig};
use crate::logging::RateLimitedWarn;
use crate::metrics::Metrics;

pub fn spec(node: &NodeConfig, config: &Config) -> NodeSetupSpec {
    // Conntrack bypass for the admin port too, when admin listens on a node address or on all.
    let admin_port = config
        .admin
        .listen
        .iter()
        .find(|a| a.ip().is_unspecified() || node.addresses.contains(&a.ip()))
        .map(|a| a.port());
    NodeSetupSpec {
        interface: node.interface.clone(),
        interface_kind: node.interface_kind,
        addresses: node.addresses.clone(),
        firewall: node.firewall,
        dns_port: node.dns_port,
        admin_port,
    }
}

fn count_error(metrics: &Metrics, e: &NodeError) {
    metrics.node_setup_error(e.kind());
}

/// How long the start waits for the first apply before binding and serving anyway. An apply
/// takes milliseconds; a held xtables lock makes `iptables-restore -w` wait seconds, and DNS
/// must not wait for it (the rules follow as soon as the apply completes).
pub const FIRST_APPLY_WAIT: Duration = Duration::from_secs(1);

/// Between applies: whether setup is incomplete, to warn (rate-limited) while it is and to
/// say once when it is complete again.
struct SetupState {
    /// Whether an apply has run yet: the first one logs what it set up.
    started: bool,
    /// Failed applies since the last complete one.
    failures: u64,
    /// When the current failure streak began.
    failing_since: Option<Instant>,
    warn: RateLimitedWarn,
}

/// Applies the setup once; logs and counts what had to be repaired, or what failed.
///
/// A failure never stops serving (see README "Node integration"): the interface and addresses
/// come before the rules, so with a firewall tool missing or failing (no binary, no kernel
/// module, the xtables lock held) DNS is served on the node addresses without the conntrack
/// bypass — conntrack races beat no DNS — and with the interface itself failing, on `listen`
/// only. Each failure is counted (`nodedns_node_setup_errors_total{kind}`) and retried at the
/// next resync.
async fn apply(setup: &NodeSetup, metrics: &Metrics, state: &mut SetupState, interval: Duration) -> bool {
    let initial = !std::mem::replace(&mut state.started, true);
    match setup.apply().await {
        Ok(r) => {
            if r.any() {
                metrics
                    .node_repairs
                    .inc_by(r.interface_created as u64 + r.addresses_added as u64 + r.rules_restored as u64);
            }
            if let Some(since) = state.failing_since.take() {
                info!(
                    failed_attempts = state.failures,
                    incomplete_secs = since.elapsed().as_secs(),
                    interface = setup.interface().as_str(),
                    firewall = ?setup.firewall_backend(),
                    "node setup complete: interface, addresses and conntrack-bypass rules in place"
                );
            } else if initial {
                info!(interface = setup.interface().as_str(), firewall = ?setup.firewall_backend(), "node setup applied");
            } else if r.any() {
                warn!(
                    interface_created = r.interface_created,
                    addresses_added = r.addresses_added,
                    rules_restored = r.rules_restored,
                    "node setup had drifted and was repaired"
                );
            }
            state.failures = 0;
            true
        }
        Err(e) => {
            count_error(metrics, &e);
            state.failures += 1;
            state.failing_since.get_or_insert_with(Instant::now);
            if state.warn.allow() {
                let serving = if e.is_firewall() {
                    "serving on the node addresses without the conntrack-bypass rules"
                } else {
                    "serving on the listen addresses; the node addresses get no traffic until the interface is up"
                };
                warn!(
                    error = %e,
                    kind = e.kind(),
                    failed_attempts = state.failures,
                    retry_secs = interval.as_secs(),
                    "node setup incomplete: {serving}; retrying at every resync"
                );
            }
            false
        }
    }
}

impl SetupState {
    fn new() -> Self {
        Self { started: false, failures: 0, failing_since: None, warn: RateLimitedWarn::new(Duration::from_secs(10)) }
    }
}

/// Starts node setup on its own thread: the first apply at once, then one every `interval`
/// (see [`resync_loop`]); the netlink futures are not `Send`, and node setup must never compete
/// with the DNS runtime anyway. The returned receiver fires when the first apply has finished
/// (successfully or not): the start waits for it at most [`FIRST_APPLY_WAIT`]. The returned
/// future ends when the loop has stopped (after `stop`): the app's task list awaits it.
pub fn spawn_resync(
    setup: Arc<NodeSetup>,
    interval: Duration,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
) -> std::io::Result<(oneshot::Receiver<()>, impl std::future::Future<Output = ()> + Send + 'static)> {
    let (first_tx, first_rx) = oneshot::channel();
    let (done_tx, done_rx) = oneshot::channel::<()>();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new().name("nodedns-resync".into()).spawn(move || {
        rt.block_on(resync_loop(setup, interval, metrics, stop, first_tx));
        let _ = done_tx.send(());
    })?;
    Ok((first_rx, async move {
        let _ = done_rx.await;
    }))
}

/// With the nftables backend, renews the host-client lease on a thread of its own (see
/// [`renew_host_client_lease`]); started once the rules are in (the lease renews elements of
/// our table, which does not exist before).
fn start_host_client_lease(setup: &NodeSetup, metrics: &Arc<Metrics>, stop: &watch::Receiver<bool>) {
    let Some(lease) = setup.host_client_lease() else { return };
    match lease {
        Ok(lease) => {
            let (metrics, stop) = (metrics.clone(), stop.clone());
            let spawned = std::thread::Builder::new()
                .name("nodedns-lease".into())
                .spawn(move || renew_host_client_lease(lease, &metrics, &stop));
            if let Err(e) = spawned {
                error!(error = %e, "cannot start the host-client lease thread");
            }
        }
        Err(e) => {
            count_error(metrics, &e);
            error!(error = %e, "host-network clients will use kube-proxy's path (no lease)");
        }
    }
}

/// Renews the host-client lease every [`nodedns_node::RENEW_EVERY`] until `stop`: while it is
/// renewed, host-network clients' queries to our addresses bypass conntrack (and so
/// kube-proxy's DNAT) and reach us; once renewal stops — shutdown, SIGKILL, OOM, a wedged
/// process — the elements expire within [`nodedns_node::LEASE`] and those clients go to
/// kube-dns through kube-proxy. Its own thread, with no runtime: a busy DNS runtime must not
/// delay renewal, and a renewal is one netlink round trip.
fn renew_host_client_lease(mut lease: nodedns_node::HostClientLease, metrics: &Metrics, stop: &watch::Receiver<bool>) {
    let mut failing = false;
    while !*stop.borrow() {
        match lease.renew() {
            Ok(()) if failing => {
                info!("host-client lease renewed again");
                failing = false;
            }
            Ok(()) => {}
            Err(e) => {
                count_error(metrics, &e);
                // Once per failure streak: the table may simply be gone until the next resync.
                if !failing {
                    warn!(error = %e, "host-client lease renewal failed; retrying every 500 ms");
                }
                failing = true;
            }
        }
        std::thread::sleep(nodedns_node::RENEW_EVERY);
    }
}

/// Applies the setup at once, then every `interval` until `stop` turns true; `first` fires
/// after the first apply. An incomplete setup is retried at every tick until it is complete.
async fn resync_loop(
    setup: Arc<NodeSetup>,
    interval: Duration,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
    first: oneshot::Sender<()>,
) {
    let mut state = SetupState::new();
    let mut first = Some(first);
    let mut lease_started = false;
    let mut tick = tokio::time::interval(interval);
    // An apply that waited out a lock must not be followed by a burst of catch-up applies.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        let complete = apply(&setup, &metrics, &mut state, interval).await;
        if let Some(tx) = first.take() {
            let _ = tx.send(());
        }
        if complete && !lease_started {
            lease_started = true;
            start_host_client_lease(&setup, &metrics, &stop);
        }
    }
}

/// Whether any UDP socket other than ours is bound to one of `addrs` — i.e. another nodedns
/// instance serves the node (call after closing our own sockets). Reads /proc/net/udp{,6}.
pub fn other_instance_serving(addrs: &[SocketAddr], own_inodes: &[u64]) -> bool {
    let mut bound = Vec::new();
    for (file, v6) in [("/proc/net/udp", false), ("/proc/net/udp6", true)] {
        if let Ok(text) = std::fs::read_to_string(file) {
            bound.extend(text.lines().skip(1).filter_map(|l| {
                // Field 10 is the socket's inode: sockets still open in this process (an
                // in-flight answer holding one) are ours, not another instance's.
                let inode: u64 = l.split_whitespace().nth(9)?.parse().ok()?;
                (!own_inodes.contains(&inode)).then(|| parse_proc_net_local(l, v6)).flatten()
            }));
        }
    }
    addrs.iter().any(|a| bound.contains(a))
}

/// The local address of one /proc/net/udp line (`sl local_address rem_address ...`), with
/// each 32-bit word in host (little-endian) order as the kernel prints it.
fn parse_proc_net_local(line: &str, v6: bool) -> Option<SocketAddr> {
    let local = line.split_whitespace().nth(1)?;
    let (ip_hex, port_hex) = local.split_once(':')?;
    let port = u16::from_str_radix(port_hex, 16).ok()?;
    let ip = if v6 {
        if ip_hex.len() != 32 {
            return None;
        }
        let mut bytes = [0u8; 16];
        for w in 0..4 {
            let word = u32::from_str_radix(&ip_hex[w * 8..w * 8 + 8], 16).ok()?;
            bytes[w * 4..w * 4 + 4].copy_from_slice(&word.to_le_bytes());
        }
        IpAddr::V6(Ipv6Addr::from(bytes))
    } else {
        let word = u32::from_str_radix(ip_hex, 16).ok()?;
        IpAddr::V4(Ipv4Addr::from(word.to_le_bytes()))
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_udp() {
        let v4 = "  123: 0A14FEA9:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4242 2 0000000000000000 0";
        assert_eq!(parse_proc_net_local(v4, false), Some("169.254.20.10:53".parse().unwrap()));
        let v6 = "  9: 000080FE00000000FF3F0000070000FE:0035 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000 0 0 1 2 0 0";
        let got = parse_proc_net_local(v6, true).unwrap();
        assert_eq!(got.port(), 53);
        assert!(got.is_ipv6());
    }

    #[test]
    fn sees_a_bound_socket() {
        // An address of 127/8 no other test binds: after `drop`, a parallel test's ephemeral
        // socket on 127.0.0.1 could take the same port and look like "another instance".
        let s = std::net::UdpSocket::bind("127.77.13.1:0").unwrap();
        let a = s.local_addr().unwrap();
        assert!(other_instance_serving(&[a], &[]));
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::MetadataExt;
        let inode = std::fs::metadata(format!("/proc/self/fd/{}", s.as_raw_fd())).unwrap().ino();
        assert!(!other_instance_serving(&[a], &[inode]), "our own socket does not count");
        drop(s);
        assert!(!other_instance_serving(&[a], &[]));
    }
}
