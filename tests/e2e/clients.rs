//! Issue 17: the resolvers pods really use, through nodedns, each resolving a table of names
//! the way applications ask for them.
//!
//! The node lab (`node/lab.rs`): a pod namespace with the resolv.conf kubelet writes
//! (`nameserver 169.254.20.10`, search `<ns>.svc.cluster.local svc.cluster.local cluster.local`,
//! `ndots:5`), nodedns in the node namespace with the shipped config (`deploy/config/nodedns.yaml`:
//! `cluster.local` with `kubernetes_schema`, `in-addr.arpa`, `ip6.arpa` and `.` all to the CoreDNS
//! stand-in, over TCP, with endpoint discovery), and knotd as that stand-in serving
//! `cluster.local` and the external zone `example.test`. The clients, built here from Debian
//! packages (`tests/run.sh` installs them), run inside the pod namespace (`ip netns exec` mounts
//! `/etc/netns/<pod>/resolv.conf` over `/etc/resolv.conf`):
//!
//! - glibc `getaddrinfo(AF_UNSPEC)` (`clients/lookup.c`, gcc): kubelet's resolv.conf, then with
//!   `options single-request-reopen` and with `options use-vc` (TCP only);
//! - musl `getaddrinfo` (the same source, `musl-gcc -static`; Debian's musl 1.2.3 has no TCP
//!   fallback, so the 40-address name must still return a non-empty subset);
//! - Go's own resolver (`clients/lookup.go`, `CGO_ENABLED=0`, `net.Resolver{PreferGo: true}`);
//! - c-ares through Node.js `dns.Resolver` `resolve4` + `resolve6` (`clients/resolve.js`): no
//!   search list (nodejs/node#17850), so only the fully qualified rows;
//! - dnspython's stub resolver with the search list (`clients/resolve.py`).
//!
//! Each client runs every name twice: cold (nodedns freshly started, empty cache) and warm. Every
//! lookup must return exactly the expected addresses (a non-empty subset for musl's large name)
//! within 1.5 s: a lost reply shows as a 5 s stall (glibc's default timeout). The table (client ×
//! name, cold and warm, result and milliseconds) is printed; run with `--nocapture` to see it.
//!
//! Needs root and the lab tools plus musl-tools, golang-go, nodejs and python3-dnspython;
//! skipped with a message otherwise. Run: `cargo build -p nodedns && cargo test -p nodedns-e2e
//! --test clients -- --nocapture`.

#[path = "node/lab.rs"]
#[allow(dead_code)]
mod lab;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use lab::{KubeProxy, LINK_LOCAL, Lab, NodeDaemon, UPSTREAM};

/// The client pod's namespace: its first search domain is `<NAMESPACE>.svc.cluster.local`.
const NAMESPACE: &str = "my-ns";
/// The issue's bound on one lookup (a lost UDP reply costs glibc and musl 5 s, Go 5 s).
const LOOKUP_LIMIT_MS: f64 = 1500.0;
/// How long one client run (every name, one round) may take before it is killed.
const RUN_LIMIT_SECS: &str = "90";
/// Addresses of the 40-record name: 40 × 16 bytes of A records, over 512 bytes.
const MANY: usize = 40;
/// nodedns's admin port in the shipped config.
const ADMIN_PORT: u16 = 9253;

/// Zones the CoreDNS stand-in serves besides the lab's own `cluster.local` names.
fn zones() -> Vec<(&'static str, String)> {
    let cluster = format!(
        "web.{NAMESPACE}.svc.cluster.local. A 10.96.1.10\n\
         web.{NAMESPACE}.svc.cluster.local. AAAA fd00:96::1:10\n\
         db.other-ns.svc.cluster.local. A 10.96.2.20\n\
         db.other-ns.svc.cluster.local. AAAA fd00:96::2:20\n\
         kube-dns-upstream-endpoints.kube-system.svc.cluster.local. A {UPSTREAM}\n"
    );
    let mut external = String::from(
        "$ORIGIN example.test.\n$TTL 300\n@ SOA ns hostmaster 1 3600 600 86400 30\n@ NS ns\nns A 192.0.2.1\n\
         api A 192.0.2.10\napi AAAA 2001:db8::10\n\
         alias CNAME www\nwww CNAME edge\nedge A 192.0.2.20\nedge AAAA 2001:db8::20\n\
         v4only A 192.0.2.30\nv6only AAAA 2001:db8::30\n",
    );
    for i in 1..=MANY {
        external.push_str(&format!("many A 198.51.100.{i}\n"));
    }
    vec![("cluster.local", cluster), ("example.test", external)]
}

/// What a lookup must return.
#[derive(Clone, Debug)]
enum Want {
    /// Exactly these addresses.
    Exactly(BTreeSet<String>),
    /// The 40-address name: exactly these, or for a client without TCP fallback a non-empty subset.
    Many(BTreeSet<String>),
    /// NXDOMAIN at the end of the search walk.
    NotFound,
}

struct Row {
    what: &'static str,
    name: &'static str,
    /// Fully qualified (with dots enough to stand for itself), so c-ares asks it as is.
    fqdn: bool,
    want: Want,
}

fn set(addrs: &[&str]) -> BTreeSet<String> {
    addrs.iter().map(|a| a.to_string()).collect()
}

fn rows() -> Vec<Row> {
    let many = (1..=MANY).map(|i| format!("198.51.100.{i}")).collect();
    vec![
        Row {
            what: "short service",
            name: "web",
            fqdn: false,
            want: Want::Exactly(set(&["10.96.1.10", "fd00:96::1:10"])),
        },
        Row {
            what: "svc.namespace",
            name: "db.other-ns",
            fqdn: false,
            want: Want::Exactly(set(&["10.96.2.20", "fd00:96::2:20"])),
        },
        Row {
            what: "external (search walk)",
            name: "api.example.test",
            fqdn: true,
            want: Want::Exactly(set(&["192.0.2.10", "2001:db8::10"])),
        },
        Row {
            what: "CNAME chain",
            name: "alias.example.test",
            fqdn: true,
            want: Want::Exactly(set(&["192.0.2.20", "2001:db8::20"])),
        },
        Row { what: "A only", name: "v4only.example.test", fqdn: true, want: Want::Exactly(set(&["192.0.2.30"])) },
        Row { what: "AAAA only", name: "v6only.example.test", fqdn: true, want: Want::Exactly(set(&["2001:db8::30"])) },
        Row { what: "40 A (> 512 B)", name: "many.example.test", fqdn: true, want: Want::Many(many) },
        Row { what: "does not exist", name: "nothere.example.test", fqdn: true, want: Want::NotFound },
    ]
}

/// One client: how to run it and what its resolv.conf adds to kubelet's.
struct Client {
    label: &'static str,
    /// Appended to kubelet's `options ndots:5`.
    options: &'static str,
    command: Vec<String>,
    /// Only the fully qualified rows (c-ares `resolve*` has no search list).
    fqdn_only: bool,
    /// No TCP fallback: the 40-address name may come back as a non-empty subset.
    udp_only: bool,
}

/// One lookup's outcome as the client printed it.
#[derive(Clone, Debug)]
struct Outcome {
    ms: f64,
    addrs: BTreeSet<String>,
    /// "" on success, NOTFOUND, or why it failed.
    error: String,
}

impl Outcome {
    /// A table cell, and whether it meets `want` for `client`.
    fn judge(&self, want: &Want, client: &Client) -> (String, bool) {
        let fast = self.ms <= LOOKUP_LIMIT_MS;
        let (text, right) = match want {
            Want::NotFound => ("NXDOMAIN".to_owned(), self.error == "NOTFOUND" && self.addrs.is_empty()),
            Want::Exactly(w) => (format!("{} addrs", self.addrs.len()), self.error.is_empty() && self.addrs == *w),
            Want::Many(w) => {
                let subset = !self.addrs.is_empty() && self.addrs.is_subset(w);
                let right = self.error.is_empty() && if client.udp_only { subset } else { self.addrs == *w };
                (format!("{}/{} addrs", self.addrs.len(), w.len()), right)
            }
        };
        let text = if right { text } else { format!("WRONG {:?} {:?}", self.addrs, self.error) };
        (format!("{text} {:.1} ms{}", self.ms, if fast { "" } else { " SLOW" }), right && fast)
    }
}

/// Parses the clients' `name <TAB> ms <TAB> addresses <TAB> error` lines.
fn parse(stdout: &str) -> Vec<(String, Outcome)> {
    stdout
        .lines()
        .filter_map(|line| {
            let mut f = line.split('\t');
            let name = f.next()?.to_owned();
            let ms = f.next()?.parse().ok()?;
            let addrs = f.next().unwrap_or("").split(',').filter(|a| !a.is_empty()).map(str::to_owned).collect();
            let error = f.next().unwrap_or("").trim().to_owned();
            Some((name, Outcome { ms, addrs, error }))
        })
        .collect()
}

/// Why the test cannot run here, or `None`.
fn unavailable() -> Option<String> {
    if let Some(why) = lab::unavailable() {
        return Some(why);
    }
    for tool in ["gcc", "musl-gcc", "go", "node", "timeout"] {
        if !nodedns_e2e::have(tool) {
            return Some(format!("{tool} is not installed (tests/run.sh installs it)"));
        }
    }
    let dnspython = Command::new(PYTHON).args(["-c", "import dns.resolver"]).output();
    if !dnspython.is_ok_and(|o| o.status.success()) {
        return Some(format!("{PYTHON} cannot import dnspython (package python3-dnspython)"));
    }
    None
}

/// Debian's python3, which python3-dnspython installs into (not a pyenv or venv python on PATH).
const PYTHON: &str = "/usr/bin/python3";

fn sources() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("e2e/clients")
}

/// Runs a build command; returns how long it took.
fn build(what: &str, cmd: &mut Command) -> Duration {
    let started = Instant::now();
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    started.elapsed()
}

/// Builds the glibc, musl and Go clients into `dir` (concurrently: the Go build is the long one).
fn build_clients(dir: &Path) -> Vec<(&'static str, Duration)> {
    let src = sources();
    let c = src.join("lookup.c");
    let go = src.join("lookup.go");
    // A fresh Go build cache and GOPATH, so a run never depends on (or fills) the user's; only the
    // standard library is used, nothing is downloaded.
    let gocache = dir.join("gocache");
    std::fs::create_dir_all(&gocache).unwrap();
    std::thread::scope(|s| {
        let glibc = s.spawn(|| {
            build("gcc lookup.c", Command::new("gcc").args(["-O2", "-o"]).arg(dir.join("lookup-glibc")).arg(&c))
        });
        let musl = s.spawn(|| {
            build(
                "musl-gcc lookup.c",
                Command::new("musl-gcc").args(["-static", "-O2", "-o"]).arg(dir.join("lookup-musl")).arg(&c),
            )
        });
        let go = s.spawn(|| {
            build(
                "go build lookup.go",
                Command::new("go")
                    .args(["build", "-o"])
                    .arg(dir.join("lookup-go"))
                    .arg(&go)
                    .env("CGO_ENABLED", "0")
                    .env("GOCACHE", &gocache)
                    .env("GOPATH", dir.join("gopath"))
                    .env("GOFLAGS", "")
                    .env("GOTOOLCHAIN", "local"),
            )
        });
        vec![
            ("gcc (glibc)", glibc.join().unwrap()),
            ("musl-gcc -static", musl.join().unwrap()),
            ("go build (CGO_ENABLED=0)", go.join().unwrap()),
        ]
    })
}

fn clients(dir: &Path) -> Vec<Client> {
    let bin = |name: &str| vec![dir.join(name).display().to_string()];
    let script = |interp: &str, name: &str| vec![interp.to_owned(), sources().join(name).display().to_string()];
    let client = |label, options, command, fqdn_only, udp_only| Client { label, options, command, fqdn_only, udp_only };
    vec![
        client("glibc", "", bin("lookup-glibc"), false, false),
        client("glibc single-request-reopen", " single-request-reopen", bin("lookup-glibc"), false, false),
        client("glibc use-vc", " use-vc", bin("lookup-glibc"), false, false),
        client("musl 1.2.3 (static)", "", bin("lookup-musl"), false, true),
        client("Go (PreferGo, CGO_ENABLED=0)", "", bin("lookup-go"), false, false),
        client("c-ares (Node.js dns.Resolver)", "", script("node", "resolve.js"), true, false),
        client("dnspython (search list)", "", script(PYTHON, "resolve.py"), false, false),
    ]
}

/// The shipped config, pointed at the lab: the CoreDNS stand-in for the kube-dns-upstream
/// ClusterIP, a bridge for the interface (this kernel has no `dummy` links), and a handover
/// socket of the lab's own. Everything else as shipped.
fn shipped_config(lab: &Lab) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/nodedns.yaml");
    let mut text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    for (from, to) in [
        ("10.96.0.11:53".to_owned(), format!("{UPSTREAM}:53")),
        ("interface_kind: dummy".to_owned(), "interface_kind: bridge".to_owned()),
        ("/run/nodedns/handover.sock".to_owned(), lab.dir.join("handover.sock").display().to_string()),
    ] {
        assert!(text.contains(&from), "{} no longer has `{from}`: update this test", path.display());
        text = text.replace(&from, &to);
    }
    assert!(text.contains("kubernetes_schema: true"), "the schema relief is on in the shipped config");
    assert!(text.contains(&format!("\"{LINK_LOCAL}\"")), "the shipped config serves {LINK_LOCAL}");
    text
}

/// The resolv.conf kubelet writes for a pod in `NAMESPACE` with `--cluster-dns=169.254.20.10`
/// (ClusterFirst), plus `options`.
fn kubelet_resolv_conf(options: &str) -> String {
    format!(
        "search {NAMESPACE}.svc.cluster.local svc.cluster.local cluster.local\nnameserver {LINK_LOCAL}\noptions ndots:5{options}\n"
    )
}

/// Runs `client` on `names` in the pod; the outcome per name (missing: the client printed none).
fn run_client(lab: &Lab, client: &Client, names: &[&str]) -> (Vec<(String, Outcome)>, String) {
    let out = Command::new("timeout")
        .args([RUN_LIMIT_SECS, "ip", "netns", "exec", &lab.pod])
        .args(&client.command)
        .args(names)
        .output()
        .expect("run a client in the pod");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (parse(&String::from_utf8_lossy(&out.stdout)), stderr)
}

#[test]
fn every_client_resolves_every_name_through_nodedns() {
    if let Some(why) = unavailable() {
        eprintln!("SKIP: {why}");
        return;
    }
    let zones = zones();
    let zone_refs: Vec<(&str, &str)> = zones.iter().map(|(o, t)| (*o, t.as_str())).collect();
    let lab = Lab::with_zones(KubeProxy::IptablesNft, &zone_refs);
    let started = Instant::now();
    let builds = build_clients(&lab.dir);
    let config = shipped_config(&lab);
    let rows = rows();
    let resolv = PathBuf::from("/etc/netns").join(&lab.pod).join("resolv.conf");
    std::fs::create_dir_all(resolv.parent().unwrap()).unwrap();

    let mut table = Vec::new();
    let mut failures = Vec::new();
    for client in clients(&lab.dir) {
        std::fs::write(&resolv, kubelet_resolv_conf(client.options)).unwrap();
        let names: Vec<&str> = rows.iter().filter(|r| r.fqdn || !client.fqdn_only).map(|r| r.name).collect();
        // A fresh nodedns per client: its cold round starts from an empty cache.
        let mut daemon = NodeDaemon::start_yaml(&lab, &config, ADMIN_PORT, &[]);
        let rounds = [run_client(&lab, &client, &names), run_client(&lab, &client, &names)];
        for row in &rows {
            let mut cells = Vec::new();
            for (round, (outcomes, stderr)) in ["cold", "warm"].iter().zip(&rounds) {
                if !names.contains(&row.name) {
                    cells.push("— (no search list)".to_owned());
                    continue;
                }
                let Some((_, outcome)) = outcomes.iter().find(|(n, _)| n == row.name) else {
                    cells.push("NO OUTPUT".to_owned());
                    failures.push(format!("{} {} {round}: no result; stderr: {stderr}", client.label, row.name));
                    continue;
                };
                let (cell, ok) = outcome.judge(&row.want, &client);
                if !ok {
                    failures.push(format!("{} {} ({}) {round}: {cell}", client.label, row.name, row.what));
                }
                cells.push(cell);
            }
            table.push(format!("| {} | {} `{}` | {} | {} |", client.label, row.what, row.name, cells[0], cells[1]));
        }
        // Every lookup went through nodedns (169.254.20.10 is nobody else in the lab).
        let requests = daemon.metric("nodedns_requests_total", &[]);
        assert!(requests >= 2.0 * names.len() as f64, "{}: nodedns counted only {requests} requests", client.label);
        let log = daemon.log();
        let complaints: Vec<&str> =
            log.lines().filter(|l| l.contains(r#""level":"WARN""#) || l.contains(r#""level":"ERROR""#)).collect();
        assert!(complaints.is_empty(), "{}: nodedns complained:\n{}", client.label, complaints.join("\n"));
        assert_eq!(daemon.terminate(), Some(0), "nodedns exits cleanly; log:\n{}", daemon.log());
    }

    println!("clients: builds: {builds:?}; whole matrix (builds included) {:?}", started.elapsed());
    println!("| client | name | cold | warm |\n| --- | --- | --- | --- |");
    for line in &table {
        println!("{line}");
    }
    assert!(failures.is_empty(), "{} lookups wrong or slow:\n{}", failures.len(), failures.join("\n"));
}
