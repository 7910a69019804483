//! A node lab in network namespaces: `pod` ─veth─ `node` (runs nodedns; stand-in kube-proxy
//! DNAT) ─veth─ `up` (two knotd: the kube-dns pod behind the ClusterIP, and the upstream
//! nodedns forwards to). Everything is removed on drop, also when the test panicked.
//!
//! ```text
//! pod 10.244.0.2 fd00:244::2 ── vpod 10.244.0.1 fd00:244::1 [node] vup 10.244.1.1 fd00:245::1 ── up
//!                                 nodelocaldns: 169.254.20.10 10.96.0.10 fd00:10::a fd00:96::a
//! up: 10.244.1.2 fd00:245::2  knotd "kube-dns" (DNAT target of the ClusterIPs)
//!     10.244.1.3 fd00:245::3  knotd "upstream" (what nodedns forwards to, over TCP)
//! ```
//! Both knotd serve `cluster.local` with the same names, except `whoami.cluster.local TXT`,
//! which says who answered: "kube-dns" (through kube-proxy's DNAT) or "upstream" (through
//! nodedns).

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const LINK_LOCAL: &str = "169.254.20.10";
pub const CLUSTER_IP: &str = "10.96.0.10";
pub const LINK_LOCAL6: &str = "fd00:10::a";
pub const CLUSTER_IP6: &str = "fd00:96::a";
pub const KUBE_DNS: &str = "10.244.1.2";
pub const KUBE_DNS6: &str = "fd00:245::2";
pub const UPSTREAM: &str = "10.244.1.3";
pub const UPSTREAM6: &str = "fd00:245::3";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// How the stand-in kube-proxy programs its DNAT: iptables mode (either iptables variant) or
/// nftables mode (its own `kube-proxy` tables, as kube-proxy ≥ 1.31 `--proxy-mode=nftables`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KubeProxy {
    IptablesNft,
    IptablesLegacy,
    Nftables,
}

impl KubeProxy {
    pub fn tool(self, v6: bool) -> &'static str {
        match (self, v6) {
            (KubeProxy::IptablesNft, false) => "iptables-nft",
            (KubeProxy::IptablesNft, true) => "ip6tables-nft",
            (KubeProxy::IptablesLegacy, false) => "iptables-legacy",
            (KubeProxy::IptablesLegacy, true) => "ip6tables-legacy",
            (KubeProxy::Nftables, _) => "nft",
        }
    }
}

pub struct Lab {
    pub node: String,
    pub pod: String,
    pub up: String,
    pub dir: PathBuf,
    knots: Vec<Child>,
    /// Zones both knotd serve besides the lab's own (see [`Lab::with_zones`]).
    extra_zones: Vec<(String, String)>,
}

/// Runs `cmd` with `sh -c` inside namespace `ns`.
pub fn ns_sh(ns: &str, cmd: &str) -> Output {
    Command::new("ip").args(["netns", "exec", ns, "sh", "-c", cmd]).output().expect("run ip netns exec")
}

/// Like [`ns_sh`], panicking with stderr on failure; returns stdout.
pub fn ns_ok(ns: &str, cmd: &str) -> String {
    let out = ns_sh(ns, cmd);
    assert!(
        out.status.success(),
        "[{ns}] `{cmd}` failed: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn host_ok(cmd: &str) {
    let out = Command::new("sh").args(["-c", cmd]).output().expect("sh");
    assert!(out.status.success(), "`{cmd}` failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Why the lab cannot run here (not root, tools missing), or `None` if it can.
pub fn unavailable() -> Option<String> {
    if !Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n")) {
        return Some("needs root (network namespaces)".into());
    }
    for tool in ["ip", "knotd", "dig", "getent", "conntrack", "nft", "iptables-nft", "iptables-legacy", "curl"] {
        if !nodedns_e2e::have(tool) {
            return Some(format!("{tool} is not installed"));
        }
    }
    None
}

/// The shape of kube-proxy's nftables mode for one Service (the DNS ClusterIP, port 53): DNAT in
/// nat chains at priority dstnat, and its filter checks, every one of them for `ct state new`
/// only, including the reject of ClusterIP traffic that was not DNATed (`cluster-ips-check`,
/// after DNAT in forward and output) and the drop of unallocated ClusterIPs.
fn kube_proxy_nftables(v6: bool, vip: &str, target: &str) -> String {
    let (family, ip, cidr) = if v6 { ("ip6", "ip6", "fd00:96::/64") } else { ("ip", "ip", "10.96.0.0/12") };
    format!(
        "table {family} kube-proxy {{
  chain services {{
    {ip} daddr {vip} udp dport 53 dnat to {target}:53
    {ip} daddr {vip} tcp dport 53 dnat to {target}:53
  }}
  chain cluster-ips-check {{
    {ip} daddr {vip} reject
    {ip} daddr {cidr} drop
  }}
  chain service-endpoints-check {{
  }}
  chain nat-prerouting {{ type nat hook prerouting priority dstnat; policy accept; jump services; }}
  chain nat-output {{ type nat hook output priority -100; policy accept; jump services; }}
  chain filter-input {{ type filter hook input priority 0; policy accept; ct state new jump service-endpoints-check; }}
  chain filter-forward {{ type filter hook forward priority 0; policy accept; ct state new jump cluster-ips-check; }}
  chain filter-output {{ type filter hook output priority 0; policy accept; ct state new jump cluster-ips-check; }}
}}"
    )
}

fn zone(who: &str) -> String {
    let mut z = format!(
        "$ORIGIN cluster.local.\n$TTL 30\n@ SOA ns hostmaster 1 3600 600 86400 5\n@ NS ns\nns A {UPSTREAM}\nwhoami TXT \"{who}\"\n"
    );
    for i in 0..10 {
        z.push_str(&format!("svc{i}.default.svc A 10.0.0.{}\nsvc{i}.default.svc AAAA fd00::{:x}\n", i + 1, i + 1));
    }
    z
}

impl Lab {
    /// Creates the namespaces, links, routes, the stand-in kube-proxy rules and both knotd.
    pub fn new(kube_proxy: KubeProxy) -> Lab {
        Lab::with_zones(kube_proxy, &[])
    }

    /// Like [`Lab::new`], both knotd also serving `zones` (`(origin, zone file text)`); text for
    /// `cluster.local` is appended to the lab's own cluster zone.
    pub fn with_zones(kube_proxy: KubeProxy, zones: &[(&str, &str)]) -> Lab {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = format!("nd{}x{n}", std::process::id());
        let dir = std::env::temp_dir().join(format!("nodedns-lab-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let lab = Lab {
            node: format!("{id}-node"),
            pod: format!("{id}-pod"),
            up: format!("{id}-up"),
            dir,
            knots: Vec::new(),
            extra_zones: zones.iter().map(|(o, t)| (o.trim_end_matches('.').to_owned(), (*t).to_owned())).collect(),
        };
        let mut lab = lab;
        for ns in [&lab.node, &lab.pod, &lab.up] {
            host_ok(&format!("ip netns add {ns}"));
            // No duplicate address detection on the lab's links: a tentative link-local
            // address delays neighbour discovery, and the first IPv6 packet toward a fresh
            // neighbour (e.g. right after a fail-open) would wait a second for it.
            ns_ok(ns, "sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0");
        }
        let (node, pod, up) = (lab.node.clone(), lab.pod.clone(), lab.up.clone());
        ns_ok(
            &node,
            &format!(
                "ip link set lo up && sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 && \
                 ip link add vpod type veth peer name eth0 netns {pod} && \
                 ip link add vup type veth peer name eth0 netns {up} && \
                 ip addr add 10.244.0.1/24 dev vpod && ip addr add fd00:244::1/64 dev vpod nodad && ip link set vpod up && \
                 ip addr add 10.244.1.1/24 dev vup && ip addr add fd00:245::1/64 dev vup nodad && ip link set vup up && \
                 ip route add default via {KUBE_DNS} && ip -6 route add default via {KUBE_DNS6}"
            ),
        );
        ns_ok(
            &pod,
            "ip link set lo up && ip addr add 10.244.0.2/24 dev eth0 && ip addr add fd00:244::2/64 dev eth0 nodad && \
             ip link set eth0 up && ip route add default via 10.244.0.1 && ip -6 route add default via fd00:244::1",
        );
        ns_ok(
            &up,
            &format!(
                "ip link set lo up && ip addr add {KUBE_DNS}/24 dev eth0 && ip addr add {UPSTREAM}/24 dev eth0 && \
                 ip addr add {KUBE_DNS6}/64 dev eth0 nodad && ip addr add {UPSTREAM6}/64 dev eth0 nodad && \
                 ip link set eth0 up && ip route add default via 10.244.1.1 && ip -6 route add default via fd00:245::1"
            ),
        );
        // Stand-in kube-proxy (iptables mode): KUBE-SERVICES in nat PREROUTING and OUTPUT,
        // DNAT of the ClusterIPs' port 53 to the kube-dns pod.
        for (v6, vip, target) in
            [(false, CLUSTER_IP, KUBE_DNS.to_string()), (true, CLUSTER_IP6, format!("[{KUBE_DNS6}]"))]
        {
            if kube_proxy == KubeProxy::Nftables {
                ns_ok(&node, &format!("nft -f - <<'EOF'\n{}\nEOF", kube_proxy_nftables(v6, vip, &target)));
                continue;
            }
            let t = kube_proxy.tool(v6);
            let mut cmd = format!(
                "{t} -t nat -N KUBE-SERVICES && {t} -t nat -A PREROUTING -j KUBE-SERVICES && {t} -t nat -A OUTPUT -j KUBE-SERVICES"
            );
            for proto in ["udp", "tcp"] {
                cmd += &format!(
                    " && {t} -t nat -A KUBE-SERVICES -d {vip} -p {proto} --dport 53 -j DNAT --to-destination {target}:53"
                );
            }
            ns_ok(&node, &cmd);
        }
        for (who, v4, v6) in [("kube-dns", KUBE_DNS, KUBE_DNS6), ("upstream", UPSTREAM, UPSTREAM6)] {
            let child = lab.start_knot(who, v4, v6);
            lab.knots.push(child);
        }
        // Ready once both answer over TCP. Asked from inside `up`, so the node's conntrack
        // table stays empty for the tests that count its entries.
        for (who, addr) in [("kube-dns", KUBE_DNS), ("upstream", UPSTREAM)] {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let got = ns_sh(&up, &format!("dig +tcp +short +time=1 +tries=1 @{addr} whoami.cluster.local TXT"));
                if String::from_utf8_lossy(&got.stdout).contains(who) {
                    break;
                }
                assert!(Instant::now() < deadline, "knotd {who} did not start: {}", lab.knot_log(who));
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        lab
    }

    fn start_knot(&self, who: &str, v4: &str, v6: &str) -> Child {
        let d = self.dir.join(format!("knot-{who}"));
        std::fs::create_dir_all(&d).unwrap();
        let mut cluster = zone(who);
        let mut conf = format!(
            "server:\n  listen: [ {v4}@53, {v6}@53 ]\n  rundir: {d}\n  background-workers: 1\n  udp-workers: 1\n  tcp-workers: 1\n  tcp-idle-timeout: 300\n\
             database:\n  storage: {d}\nlog:\n  - target: stderr\n    any: warning\ntemplate:\n  - id: default\n    storage: {d}\n    semantic-checks: off\n\
             zone:\n  - domain: cluster.local\n    file: {d}/cluster.local.zone\n",
            d = d.display()
        );
        for (origin, text) in &self.extra_zones {
            if origin == "cluster.local" {
                cluster.push_str(text);
            } else {
                std::fs::write(d.join(format!("{origin}.zone")), text).unwrap();
                conf.push_str(&format!("  - domain: {origin}\n    file: {}/{origin}.zone\n", d.display()));
            }
        }
        std::fs::write(d.join("cluster.local.zone"), cluster).unwrap();
        std::fs::write(d.join("knot.conf"), conf).unwrap();
        Command::new("ip")
            .args(["netns", "exec", &self.up, "knotd", "-c"])
            .arg(d.join("knot.conf"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("knot.log")).unwrap())
            .spawn()
            .expect("knotd")
    }

    fn knot_log(&self, who: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("knot-{who}/knot.log"))).unwrap_or_default()
    }

    /// Points the pod's resolv.conf (`/etc/netns/<pod>/resolv.conf`) at `nameserver`.
    pub fn pod_resolv(&self, nameserver: &str) {
        let d = PathBuf::from("/etc/netns").join(&self.pod);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("resolv.conf"),
            format!("nameserver {nameserver}\noptions ndots:1 timeout:1 attempts:1\n"),
        )
        .unwrap();
    }

    /// `dig +short` from the pod; the answer lines (empty on timeout).
    pub fn pod_dig(&self, server: &str, args: &str) -> String {
        dig_in(&self.pod, server, args)
    }

    /// `dig +short` from the node namespace (a host-network client).
    pub fn node_dig(&self, server: &str, args: &str) -> String {
        dig_in(&self.node, server, args)
    }

    /// Who answers `whoami.cluster.local TXT` sent from the pod to `server`: "upstream" (via
    /// nodedns), "kube-dns" (via kube-proxy's DNAT), or "" (no answer within 1 s).
    pub fn pod_whoami(&self, server: &str, tcp: bool) -> String {
        who(&self.pod_dig(server, &format!("{} whoami.cluster.local TXT", if tcp { "+tcp" } else { "" })))
    }

    /// The same from a host-network client in the node namespace.
    pub fn node_whoami(&self, server: &str, tcp: bool) -> String {
        who(&self.node_dig(server, &format!("{} whoami.cluster.local TXT", if tcp { "+tcp" } else { "" })))
    }

    /// `conntrack -L` in the node namespace (both families).
    pub fn conntrack(&self) -> String {
        ns_ok(&self.node, "conntrack -L -f ipv4 2>/dev/null; conntrack -L -f ipv6 2>/dev/null")
    }
}

fn dig_in(ns: &str, server: &str, args: &str) -> String {
    let out = ns_sh(ns, &format!("dig +short +time=1 +tries=1 @{server} {args}"));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn who(txt: &str) -> String {
    txt.lines().find(|l| l.starts_with('"')).map(|l| l.trim_matches('"').to_owned()).unwrap_or_default()
}

impl Drop for Lab {
    fn drop(&mut self) {
        let namespaces = [self.pod.as_str(), self.up.as_str(), self.node.as_str()];
        nodedns_e2e::tear_down_lab(self.knots.iter_mut(), &namespaces, &self.pod, &self.dir);
    }
}

/// Settings of one nodedns instance in the lab.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub addresses: Vec<&'static str>,
    /// `nftables` or `iptables`.
    pub firewall: &'static str,
    pub admin_port: u16,
    pub teardown_on_exit: bool,
    /// `bridge` (the sandbox kernel has no `dummy`), or `dummy` to make creation fail here.
    pub interface_kind: &'static str,
    /// `listen` addresses besides the node addresses.
    pub listen: Vec<&'static str>,
}

impl NodeConfig {
    pub fn new(firewall: &'static str, addresses: &[&'static str]) -> NodeConfig {
        NodeConfig {
            addresses: addresses.to_vec(),
            firewall,
            admin_port: 9253,
            teardown_on_exit: true,
            interface_kind: "bridge",
            listen: Vec::new(),
        }
    }

    fn render(&self) -> String {
        let addrs: Vec<String> = self.addresses.iter().map(|a| format!("\"{a}\"")).collect();
        let listen: Vec<String> = self.listen.iter().map(|a| format!("\"{a}\"")).collect();
        format!(
            r#"listen: [{listen}]
zones:
  - name: cluster.local
    upstreams: ["{UPSTREAM}:53"]
    transport: tcp
    tcp_connections: 2
  - name: "."
    upstreams: ["{UPSTREAM}:53"]
    transport: tcp
admin:
  listen: "127.0.0.1:{admin}"
node:
  interface: nodelocaldns
  interface_kind: {kind}
  addresses: [{addrs}]
  firewall: {fw}
  resync_interval_secs: 1
  teardown_on_exit: {teardown}
server:
  workers: 1
  drain_timeout_secs: 2
"#,
            admin = self.admin_port,
            addrs = addrs.join(", "),
            fw = self.firewall,
            teardown = self.teardown_on_exit,
            kind = self.interface_kind,
            listen = listen.join(", "),
        )
    }
}

/// The real nodedns binary running in the lab's node namespace.
pub struct NodeDaemon {
    child: Option<Child>,
    node: String,
    admin_port: u16,
    log: PathBuf,
}

static DAEMONS: AtomicU32 = AtomicU32::new(0);

impl NodeDaemon {
    /// Starts nodedns in the node namespace and waits for `/ready` (10 s).
    pub fn start(lab: &Lab, config: &NodeConfig) -> NodeDaemon {
        NodeDaemon::start_wrapped(lab, config, &[])
    }

    /// Like [`NodeDaemon::start`], running the binary under `wrapper` (e.g. `setpriv ...`).
    pub fn start_wrapped(lab: &Lab, config: &NodeConfig, wrapper: &[&str]) -> NodeDaemon {
        let d = NodeDaemon::spawn(lab, config, wrapper, &[]);
        d.wait_ready(Duration::from_secs(10));
        d
    }

    /// Starts nodedns in the node namespace with `env` added to its environment, without
    /// waiting for anything.
    pub fn spawn(lab: &Lab, config: &NodeConfig, wrapper: &[&str], env: &[(&str, String)]) -> NodeDaemon {
        NodeDaemon::spawn_yaml(lab, &config.render(), config.admin_port, wrapper, env)
    }

    /// Starts nodedns with the config file text `yaml` as given, its admin HTTP on
    /// 127.0.0.1:`admin_port` of the node namespace, and waits for `/ready` (10 s). Used by the
    /// client matrix (tests/e2e/clients.rs), which includes this module too.
    #[allow(dead_code)]
    pub fn start_yaml(lab: &Lab, yaml: &str, admin_port: u16, wrapper: &[&str]) -> NodeDaemon {
        let d = NodeDaemon::spawn_yaml(lab, yaml, admin_port, wrapper, &[]);
        d.wait_ready(Duration::from_secs(10));
        d
    }

    /// Starts nodedns with the config file text `yaml` and `env` added, without waiting.
    fn spawn_yaml(lab: &Lab, yaml: &str, admin_port: u16, wrapper: &[&str], env: &[(&str, String)]) -> NodeDaemon {
        let n = DAEMONS.fetch_add(1, Ordering::Relaxed);
        let dir = lab.dir.join(format!("nodedns-{n}"));
        std::fs::create_dir_all(&dir).unwrap();
        let config_path = dir.join("nodedns.yaml");
        std::fs::write(&config_path, yaml).unwrap();
        let log = dir.join("nodedns.log");
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &lab.node])
            .args(wrapper)
            .arg(nodedns_e2e::nodedns_bin())
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", std::env::var("NODEDNS_TEST_LOG").unwrap_or_else(|_| "info".into()))
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("spawn nodedns");
        NodeDaemon { child: Some(child), node: lab.node.clone(), admin_port, log }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET on the admin port (curl inside the node namespace); `None` when unreachable.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        let out = ns_sh(
            &self.node,
            &format!("curl -s -m 2 -w '\\n%{{http_code}}' http://127.0.0.1:{}{path}", self.admin_port),
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n')?;
        Some((code.trim().parse().ok()?, body.to_owned()))
    }

    fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some((200, _)) = self.get("/ready") {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("nodedns did not become ready within {timeout:?}; log:\n{}", self.log());
    }

    pub fn metrics(&self) -> String {
        match self.get("/metrics") {
            Some((200, body)) => body,
            other => panic!("metrics unavailable: {other:?}; log:\n{}", self.log()),
        }
    }

    /// Sum of all samples of `name` with all of `labels`.
    pub fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        nodedns_e2e::metric_sum(&self.metrics(), name, labels)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// `ip netns exec` execs the binary, so the child's pid is nodedns's.
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill").arg(format!("-{sig}")).arg(self.pid().to_string()).status();
    }

    /// Waits for exit; returns the exit code (`-1` for a signal).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let child = self.child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// SIGTERM and wait for the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        self.signal("TERM");
        self.wait_exit(Duration::from_secs(15))
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        self.signal("KILL");
        assert_eq!(self.wait_exit(Duration::from_secs(5)), Some(-1), "SIGKILL");
    }
}

impl Drop for NodeDaemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- nodedns log ({}) ---\n{}", self.log.display(), self.log());
        }
    }
}
