//! The node the pods run on, in network namespaces: `pod` ─veth─ `node` (hostNetwork pods;
//! stand-in kube-proxy DNAT for the Service addresses) ─veth─ `up` (knotd: the CoreDNS pod).
//!
//! ```text
//! pod 10.244.0.2 ── vpod 10.244.0.1 [node 10.244.1.1 = status.hostIP] vup ── up 10.244.1.2 (CoreDNS)
//! node: 10.96.0.10, 10.96.0.11 :53 → DNAT 10.244.1.2:53 (kube-dns, kube-dns-upstream)
//!       10.96.0.12 (a Service without endpoints): blackholed in `up`, packets vanish
//! ```
//! The Service addresses exist only inside these namespaces. Removed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const HOST_IP: &str = "10.244.1.1";
pub const COREDNS: &str = "10.244.1.2";
pub const KUBE_DNS_SVC: &str = "10.96.0.10";
pub const UPSTREAM_SVC: &str = "10.96.0.11";
/// A ClusterIP with no endpoints: what a broken config's upstream reaches.
pub const DEAD_SVC: &str = "10.96.0.12";
pub const LINK_LOCAL: &str = "169.254.20.10";
/// Names `svc0..svc{N}.default.svc.cluster.local` exist (A 10.0.x.y).
pub const SERVICES: usize = 2000;

pub struct Lab {
    pub node: String,
    pub pod: String,
    pub up: String,
    pub dir: PathBuf,
    knot: Option<Child>,
}

/// `sh -c cmd` in namespace `ns` (nsenter: keeps the host's /sys and cgroup mounts).
pub fn ns_sh(ns: &str, cmd: &str) -> Output {
    Command::new("nsenter").arg(format!("--net=/run/netns/{ns}")).args(["sh", "-c", cmd]).output().expect("nsenter")
}

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

fn zone() -> String {
    let mut z = format!(
        "$ORIGIN cluster.local.\n$TTL 30\n@ SOA ns hostmaster 1 3600 600 86400 5\n@ NS ns\nns A {COREDNS}\n\
         whoami TXT \"coredns\"\nkube-dns-upstream-endpoints.kube-system.svc A {COREDNS}\n\
         *.wild.default.svc A 10.1.0.1\n"
    );
    for i in 0..SERVICES {
        z.push_str(&format!("svc{i}.default.svc A 10.0.{}.{}\n", i / 250, i % 250 + 1));
    }
    z
}

impl Lab {
    pub fn new() -> Lab {
        let id = format!("ndp{}", std::process::id());
        let dir = std::env::temp_dir().join(format!("nodedns-pods-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut lab =
            Lab { node: format!("{id}-node"), pod: format!("{id}-pod"), up: format!("{id}-up"), dir, knot: None };
        for ns in [&lab.node, &lab.pod, &lab.up] {
            let st = Command::new("ip").args(["netns", "add", ns]).status().unwrap();
            assert!(st.success(), "ip netns add {ns}");
        }
        let (node, pod, up) = (lab.node.clone(), lab.pod.clone(), lab.up.clone());
        ns_ok(
            &node,
            &format!(
                "ip link set lo up && sysctl -qw net.ipv4.ip_forward=1 && \
                 ip link add vpod type veth peer name eth0 netns {pod} && \
                 ip link add vup type veth peer name eth0 netns {up} && \
                 ip addr add 10.244.0.1/24 dev vpod && ip link set vpod up && \
                 ip addr add {HOST_IP}/24 dev vup && ip link set vup up && \
                 ip route add default via {COREDNS}"
            ),
        );
        ns_ok(
            &pod,
            "ip link set lo up && ip addr add 10.244.0.2/24 dev eth0 && ip link set eth0 up && \
             ip route add default via 10.244.0.1",
        );
        ns_ok(
            &up,
            &format!(
                "ip link set lo up && ip addr add {COREDNS}/24 dev eth0 && ip link set eth0 up && \
                 ip route add default via {HOST_IP} && ip route add blackhole {DEAD_SVC}/32"
            ),
        );
        // Stand-in kube-proxy (iptables mode, nft variant): the Services' port 53 → the CoreDNS pod.
        let mut cmd = "iptables-nft -t nat -N KUBE-SERVICES && iptables-nft -t nat -A PREROUTING -j KUBE-SERVICES \
                       && iptables-nft -t nat -A OUTPUT -j KUBE-SERVICES"
            .to_owned();
        for vip in [KUBE_DNS_SVC, UPSTREAM_SVC] {
            for proto in ["udp", "tcp"] {
                cmd += &format!(
                    " && iptables-nft -t nat -A KUBE-SERVICES -d {vip} -p {proto} --dport 53 -j DNAT --to-destination {COREDNS}:53"
                );
            }
        }
        ns_ok(&node, &cmd);
        // The pod's resolv.conf as the kubelet writes it for a ClusterFirst pod in `default`
        // (clusterDNS 169.254.20.10, link-local mode); `ip netns exec` mounts it.
        let etc = PathBuf::from("/etc/netns").join(&lab.pod);
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(
            etc.join("resolv.conf"),
            format!(
                "search default.svc.cluster.local svc.cluster.local cluster.local\nnameserver {LINK_LOCAL}\noptions ndots:5\n"
            ),
        )
        .unwrap();
        lab.knot = Some(lab.start_knot());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = ns_sh(&up, &format!("dig +tcp +short +time=1 +tries=1 @{COREDNS} whoami.cluster.local TXT"));
            if String::from_utf8_lossy(&got.stdout).contains("coredns") {
                break;
            }
            assert!(Instant::now() < deadline, "knotd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        lab
    }

    fn start_knot(&self) -> Child {
        let d = self.dir.join("knot");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("cluster.local.zone"), zone()).unwrap();
        let conf = format!(
            "server:\n  listen: [ {COREDNS}@53 ]\n  rundir: {d}\n  background-workers: 1\n  udp-workers: 2\n  tcp-workers: 2\n  tcp-idle-timeout: 300\n\
             database:\n  storage: {d}\nlog:\n  - target: stderr\n    any: warning\ntemplate:\n  - id: default\n    storage: {d}\n    semantic-checks: off\n\
             zone:\n  - domain: cluster.local\n    file: {d}/cluster.local.zone\n",
            d = d.display()
        );
        std::fs::write(d.join("knot.conf"), conf).unwrap();
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.up))
            .arg("knotd")
            .arg("-c")
            .arg(d.join("knot.conf"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("knot.log")).unwrap())
            .spawn()
            .expect("knotd")
    }

    /// `getent ahostsv4 NAME` in the pod (glibc with the kubelet's resolv.conf): the addresses.
    pub fn pod_getent(&self, name: &str) -> Vec<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.pod, "timeout", "10", "getent", "ahostsv4", name])
            .output()
            .expect("getent");
        let mut addrs: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect();
        addrs.dedup();
        addrs
    }

    /// `dig` from the pod to 169.254.20.10: the status (NOERROR, SERVFAIL, ... or "timeout") and
    /// the answer's addresses.
    pub fn pod_dig(&self, name: &str) -> (String, Vec<String>) {
        let out = ns_sh(&self.pod, &format!("dig +time=2 +tries=1 +noall +comments +answer @{LINK_LOCAL} {name} A"));
        let text = String::from_utf8_lossy(&out.stdout);
        let status = text
            .split("status: ")
            .nth(1)
            .and_then(|t| t.split(',').next())
            .map_or_else(|| "timeout".to_owned(), str::to_owned);
        let addrs = text
            .lines()
            .filter(|l| !l.starts_with(';') && l.contains("\tA\t"))
            .filter_map(|l| l.split_whitespace().last().map(str::to_owned))
            .collect();
        (status, addrs)
    }

    /// GET on the node's admin port from the node (what Prometheus scrapes).
    pub fn node_get(&self, addr: &str, path: &str) -> Option<(u16, String)> {
        let out = ns_sh(&self.node, &format!("curl -s -m 2 -w '\\n%{{http_code}}' http://{addr}{path}"));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n')?;
        Some((code.trim().parse().ok()?, body.to_owned()))
    }

    /// A UDP socket in the pod's network namespace (a thread enters it, creates the socket and
    /// returns it: a socket stays in the namespace it was created in).
    pub fn pod_socket(&self) -> std::net::UdpSocket {
        let path = format!("/run/netns/{}", self.pod);
        std::thread::spawn(move || {
            let f = std::fs::File::open(&path).unwrap();
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns into the pod");
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
            let _ = s.set_recv_buffer_size(8 << 20);
            s.bind(&std::net::SocketAddr::from(([0, 0, 0, 0], 0)).into()).unwrap();
            std::net::UdpSocket::from(s)
        })
        .join()
        .unwrap()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let namespaces = [self.pod.as_str(), self.up.as_str(), self.node.as_str()];
        nodedns_e2e::tear_down_lab(self.knot.as_mut(), &namespaces, &self.pod, &self.dir);
    }
}
