//! Issue 15: the DaemonSet's own pod spec in a real container runtime, rolled out the way the
//! kubelet and the DaemonSet controller do it (`maxSurge: 1, maxUnavailable: 0`).
//!
//! `deploy/` is rendered with `kubectl kustomize`; its ConfigMap and the DaemonSet's pod
//! template run under `podman kube play` in a network namespace playing the node (hostNetwork),
//! through a kubelet stand-in (`pods/kubelet.rs`: downward API, `$(VAR)` expansion, the probes
//! as declared, per-pod emptyDir, deletion with the grace period). Client pods are a network
//! namespace with the resolv.conf the kubelet writes (nameserver 169.254.20.10); CoreDNS is
//! knotd behind a stand-in kube-proxy DNAT at the shipped Service addresses (`pods/lab.rs`).
//!
//! Needs root, podman (runc, catatonit), nsenter, knotd, dig, curl, iptables-nft, kubectl, and
//! the image in `$NODEDNS_POD_IMAGE` (tests/pods/build-image.sh; tests/run.sh does both).
//! Skipped with a message otherwise. Run:
//! `tests/pods/build-image.sh target/debug/nodedns && NODEDNS_POD_IMAGE=localhost/nodedns:dev \
//!  cargo test -p nodedns-e2e --test pods -- --nocapture`

#[path = "pods/kubelet.rs"]
mod kubelet;
#[path = "pods/lab.rs"]
mod lab;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kubelet::{Pod, pod_from_daemonset, render};
use lab::{DEAD_SVC, HOST_IP, LINK_LOCAL, Lab, SERVICES, UPSTREAM_SVC};
use nodedns_e2e::load::{LoadReport, run_load};

const QPS: u64 = 5000;

/// The tests share the node's hostPaths (/run/nodedns) and the lab's names: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// kubectl and the image, or why the test cannot run here.
fn setup() -> Result<(PathBuf, String), String> {
    let image = std::env::var("NODEDNS_POD_IMAGE")
        .map_err(|_| "NODEDNS_POD_IMAGE is not set (tests/pods/build-image.sh builds the image)".to_owned())?;
    if !std::process::Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n")) {
        return Err("needs root".into());
    }
    for tool in ["podman", "nsenter", "knotd", "dig", "curl", "iptables-nft", "getent"] {
        if !nodedns_e2e::have(tool) {
            return Err(format!("{tool} is not installed"));
        }
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let kubectl = std::env::var("NODEDNS_KUBECTL")
        .map(PathBuf::from)
        .ok()
        .or_else(|| nodedns_e2e::have("kubectl").then(|| PathBuf::from("kubectl")))
        .or_else(|| {
            let p = PathBuf::from(home).join(".cache/nodedns-deploy-tools/bin/kubectl");
            p.exists().then_some(p)
        })
        .ok_or("no kubectl (NODEDNS_KUBECTL, PATH, or tests/deploy/validate.sh's tools)")?;
    Ok((kubectl, image))
}

/// Starts `QPS` queries a second from the client pod to 169.254.20.10 for `secs` (bounded).
fn start_load(lab: &Lab, secs: u64, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<LoadReport> {
    let socket = lab.pod_socket();
    let names: Vec<String> = (0..SERVICES).map(|i| format!("svc{i}.default.svc.cluster.local.")).collect();
    let dns = format!("{LINK_LOCAL}:53").parse().unwrap();
    std::thread::spawn(move || run_load(socket, dns, QPS, Duration::from_secs(secs), &names, stop))
}

/// Scrapes `HOST_IP:9253/metrics` (what Prometheus scrapes) every 200 ms until `stop`:
/// (scrapes, failed scrapes, decreases of `nodedns_requests_total`). During an overlap that
/// alternates between two processes the counter jumps back and forth.
fn start_scraper(lab: &Lab, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(usize, usize, usize)> {
    let node = lab.node.clone();
    std::thread::spawn(move || {
        let (mut n, mut failed, mut decreases) = (0, 0, 0);
        let mut last = None;
        while !stop.load(Ordering::Relaxed) {
            let out = lab::ns_sh(&node, &format!("curl -s -f -m 2 http://{HOST_IP}:9253/metrics"));
            n += 1;
            if !out.status.success() {
                failed += 1;
            } else {
                let v = nodedns_e2e::metric_sum(&String::from_utf8_lossy(&out.stdout), "nodedns_requests_total", &[]);
                if last.is_some_and(|l| v < l) {
                    decreases += 1;
                }
                last = Some(v);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        (n, failed, decreases)
    })
}

fn readiness_summary(pod: &Pod) -> String {
    let s = pod.status.lock().unwrap();
    let ok = s.readiness_results.iter().filter(|r| r.1).count();
    let last = s.readiness_results.last().map(|r| r.2.clone()).unwrap_or_default();
    format!(
        "{} readiness probes ({ok} passed), last said {last:?}; {} liveness failures, {} restarts",
        s.readiness_results.len(),
        s.liveness_failures,
        s.restarts
    )
}

fn memory(pod: &Pod) -> String {
    match pod.memory_peak_and_limit() {
        Some((peak, limit)) => format!("peak {} MiB of a {} MiB limit", peak >> 20, limit >> 20),
        None => "memory cgroup not readable".into(),
    }
}

#[test]
fn daemonset_pods_roll_out_gated_by_their_own_probes() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (kubectl, image) = match setup() {
        Ok(s) => s,
        Err(why) => {
            eprintln!("SKIP: {why}");
            return;
        }
    };
    let lab = Lab::new();
    let objects = render(&kubectl, &root().join("deploy"));
    let tag = std::process::id();
    let spec = |n: u32| pod_from_daemonset(&objects, &format!("nodedns-{tag}-{n}"), &image, HOST_IP, None);
    let load_secs: u64 = std::env::var("NODEDNS_POD_LOAD_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);

    // The first pod on the node.
    let first_spec = spec(1);
    let config_volume = first_spec.config_volume.clone();
    assert!(first_spec.play_yaml.contains(&format!("--admin-listen={HOST_IP}:9253")), "$(HOST_IP) expanded");
    let mut old = Pod::start(first_spec, &lab.node, &lab.dir);
    let t = old.wait_ready(Duration::from_secs(60));
    assert!(t.is_some(), "the first pod never became ready: {}\n{}", readiness_summary(&old), old.logs());
    eprintln!("pod 1 ready after {:?}", t.unwrap());
    // A pod created after the install resolves through 169.254.20.10 with the kubelet's resolv.conf.
    assert_eq!(lab.pod_getent("svc1"), ["10.0.0.2"], "search path + link-local nameserver");
    assert!(lab.node_get(&format!("{HOST_IP}:9253"), "/metrics").is_some_and(|(c, _)| c == 200));

    // --- replacement 1: a new pod beside the old one, under load --------------------------------
    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(&lab, load_secs, stop.clone());
    std::thread::sleep(Duration::from_secs(3));
    let scrape_stop = Arc::new(AtomicBool::new(false));
    let scraper = start_scraper(&lab, scrape_stop.clone());
    let r1_start = Instant::now();
    let mut new = Pod::start(spec(2), &lab.node, &lab.dir);
    // The DaemonSet controller waits for the new pod's own readiness...
    let ready_after = new.wait_ready(Duration::from_secs(60));
    assert!(ready_after.is_some(), "the new pod never became ready: {}\n{}", readiness_summary(&new), new.logs());
    // ...then deletes the old pod (SIGTERM, terminationGracePeriodSeconds, SIGKILL).
    let old_stop = old.delete();
    let r1_end = Instant::now();
    scrape_stop.store(true, Ordering::Relaxed);
    let (scrapes, scrape_failures, counter_decreases) = scraper.join().unwrap();
    let report1 = load.join().unwrap();
    let w1 = report1.window(r1_start, r1_end);
    eprintln!(
        "replacement 1 (new version): new pod ready after {:?}, old pod stopped in {old_stop:?}; during it: {w1}; \
         whole run ({load_secs} s at {QPS} qps): {}; metrics scrapes {scrapes}, failed {scrape_failures}, \
         counter went back {counter_decreases} times; new pod: {}",
        ready_after.unwrap(),
        report1.total(),
        memory(&new)
    );
    assert!(new.logs().contains("received DNS sockets"), "no handover: {}", new.logs());
    assert!(old.final_logs.contains("sockets were handed to a successor"), "{}", old.final_logs);
    assert!(old_stop < Duration::from_secs(30), "the old pod needed SIGKILL");
    assert_eq!(report1.total().lost, 0, "queries lost during the replacement");
    assert_eq!(report1.total().servfail, 0);
    assert!(report1.sent as u64 >= QPS * load_secs * 9 / 10, "the load fell behind: sent {}", report1.sent);
    // Scrapes reached one process at a time: the counter restarts once (at the takeover), never
    // back and forth.
    assert!(counter_decreases <= 1, "scrapes alternated between the two processes");
    assert_eq!(scrape_failures, 0, "the admin port had no listener during the handover");

    // --- replacement 2: a broken new version (its upstream, a Service without endpoints) -------
    let stop = Arc::new(AtomicBool::new(false));
    let broken_watch = Duration::from_secs(25);
    let load = start_load(&lab, broken_watch.as_secs() + 10, stop.clone());
    std::thread::sleep(Duration::from_secs(2));
    let r2_start = Instant::now();
    let to_dead = |c: &str| c.replace(&format!("{UPSTREAM_SVC}:53"), &format!("{DEAD_SVC}:53"));
    let broken_spec = pod_from_daemonset(
        &objects,
        &format!("nodedns-{tag}-3"),
        &image,
        HOST_IP,
        Some(("nodedns-unreachable-upstream", &to_dead)),
    );
    let broken_config_volume = broken_spec.config_volume.clone();
    let mut broken = Pod::start(broken_spec, &lab.node, &lab.dir);
    // While it runs: never Ready by its own probe, and the old pod answers cached and uncached names.
    let mut uncached = 0;
    while r2_start.elapsed() < broken_watch {
        assert!(!broken.ready(), "the broken pod was reported Ready: {}", readiness_summary(&broken));
        assert_eq!(lab.pod_getent("svc7"), ["10.0.0.8"], "cached name while the broken pod runs");
        let name = format!("u{uncached}-{tag}.wild");
        assert_eq!(lab.pod_getent(&name), ["10.1.0.1"], "uncached name {name} while the broken pod runs");
        uncached += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    let broken_status = readiness_summary(&broken);
    let broken_ran = {
        let s = broken.status.lock().unwrap();
        (s.readiness_results.len(), s.readiness_results.iter().all(|r| !r.1 && r.2.contains("taking over")))
    };
    let broken_stop = broken.delete();
    let r2_end = Instant::now();
    // After it is gone the running pod still serves, uncached names included.
    assert_eq!(lab.pod_getent(&format!("after-{tag}.wild")), ["10.1.0.1"]);
    assert!(new.ready(), "the serving pod lost readiness: {}", readiness_summary(&new));
    let report2 = load.join().unwrap();
    let w2 = report2.window(r2_start, r2_end);
    eprintln!(
        "replacement 2 (broken version, upstream {DEAD_SVC}): {broken_status}; stopped in {broken_stop:?}; \
         {uncached} uncached and cached lookups answered meanwhile; during it: {w2}; whole run: {}; serving pod: {}",
        report2.total(),
        memory(&new)
    );
    assert!(broken_ran.0 >= 4, "the readiness probe ran {} times", broken_ran.0);
    assert!(broken_ran.1, "every probe of the broken pod must fail, saying it waits to take over: {broken_status}");
    assert!(broken.final_logs.contains("another nodedns serves this node"), "{}", broken.final_logs);
    assert!(!broken.final_logs.contains("received DNS sockets"), "the broken pod took the sockets");
    assert_eq!(report2.total().lost, 0, "queries lost while the broken pod ran or after it was deleted");
    assert_eq!(report2.total().servfail, 0);
    assert!(new.logs().contains("nodedns serving"));

    // Control: the same broken version with the probes the DaemonSet had before (httpGet on the
    // shared 127.0.0.1:9253) is reported Ready — answered by the serving pod's process. This is
    // what the exec probes on the pod's own socket prevent.
    let mut http_probes = objects.clone();
    for o in http_probes.iter_mut().filter(|o| o["kind"].as_str() == Some("DaemonSet")) {
        let c = &mut o["spec"]["template"]["spec"]["containers"][0];
        for (probe, path) in [("readinessProbe", "/ready"), ("livenessProbe", "/health")] {
            let p = c[probe].as_mapping_mut().unwrap();
            p.remove("exec");
            let get = serde_yaml::from_str(&format!("{{host: 127.0.0.1, port: 9253, path: {path}}}")).unwrap();
            p.insert("httpGet".into(), get);
        }
    }
    let control_spec = pod_from_daemonset(
        &http_probes,
        &format!("nodedns-{tag}-4"),
        &image,
        HOST_IP,
        Some(("nodedns-unreachable-upstream", &to_dead)),
    );
    let mut control = Pod::start(control_spec, &lab.node, &lab.dir);
    let fooled = control.wait_ready(Duration::from_secs(12));
    let control_status = readiness_summary(&control);
    control.delete();
    eprintln!("control (broken version, httpGet probes on the shared port): Ready after {fooled:?}; {control_status}");
    assert!(fooled.is_some(), "httpGet probes on the shared port were expected to be fooled: {control_status}");
    assert!(!control.final_logs.contains("received DNS sockets"), "the control took the sockets");
    assert_eq!(lab.pod_getent(&format!("after-control-{tag}.wild")), ["10.1.0.1"]);

    // Deleting the last pod removes the node setup (SIGTERM teardown).
    let last_stop = new.delete();
    kubelet::remove_config_volumes(&[&config_volume, &broken_config_volume]);
    let link = lab::ns_sh(&lab.node, "ip link show nodelocaldns");
    eprintln!("last pod stopped in {last_stop:?}");
    assert!(!link.status.success(), "the interface outlived the last pod");
}

/// The 60 s unique-name flood (tests/e2e/resilience.rs) against the pod in the runtime, with the
/// shipped config (64 MiB cache, 10,000 in flight): the container's peak memory (cgroup v1
/// `memory.max_usage_in_bytes`) stays under the limit the runtime enforces, no OOM kill or
/// restart. Also reported: how often a name pods keep asking for was not answered from cache.
#[test]
fn a_unique_name_flood_against_the_pod_stays_under_its_memory_limit() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (kubectl, image) = match setup() {
        Ok(s) => s,
        Err(why) => {
            eprintln!("SKIP: {why}");
            return;
        }
    };
    let secs: u64 = std::env::var("NODEDNS_POD_FLOOD_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(60);
    let lab = Lab::new();
    let objects = render(&kubectl, &root().join("deploy"));
    let spec = pod_from_daemonset(&objects, &format!("nodedns-{}-flood", std::process::id()), &image, HOST_IP, None);
    let config_volume = spec.config_volume.clone();
    let mut pod = Pod::start(spec, &lab.node, &lab.dir);
    assert!(pod.wait_ready(Duration::from_secs(60)).is_some(), "not ready: {}", pod.logs());
    assert_eq!(lab.pod_getent("svc7"), ["10.0.0.8"]);
    // A name pods keep asking for (the cache keeps what is asked again; one-hit flood names go first).
    for _ in 0..5 {
        assert_eq!(lab.pod_dig("svc7.default.svc.cluster.local").1, ["10.0.0.8"]);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let flood = {
        let socket = lab.pod_socket();
        let stop = stop.clone();
        let dns: std::net::SocketAddr = format!("{LINK_LOCAL}:53").parse().unwrap();
        std::thread::spawn(move || {
            socket.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
            let (mut sent, mut received) = (0u64, 0u64);
            let mut buf = [0u8; 1500];
            while !stop.load(Ordering::Relaxed) {
                // At most 2,000 outstanding, as in the resilience flood.
                while sent - received < 2000 {
                    let mut q = hickory_proto::op::Message::new(
                        sent as u16,
                        hickory_proto::op::MessageType::Query,
                        hickory_proto::op::OpCode::Query,
                    );
                    let name = format!("f{sent}.wild.default.svc.cluster.local.");
                    q.add_query(hickory_proto::op::Query::query(
                        hickory_proto::rr::Name::from_ascii(&name).unwrap(),
                        hickory_proto::rr::RecordType::A,
                    ));
                    let _ = socket.send_to(&q.to_vec().unwrap(), dns);
                    sent += 1;
                }
                match socket.recv(&mut buf) {
                    Ok(_) => received += 1,
                    Err(_) => received = received.max(sent.saturating_sub(1000)),
                }
            }
            (sent, received)
        })
    };
    let start = Instant::now();
    let mut failures = 0;
    let mut checks = 0;
    while start.elapsed() < Duration::from_secs(secs) {
        checks += 1;
        let (status, addrs) = lab.pod_dig("svc7.default.svc.cluster.local");
        if addrs != ["10.0.0.8"] {
            failures += 1;
            eprintln!("cached name during the flood at {:?}: {status} {addrs:?}", start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    stop.store(true, Ordering::Relaxed);
    let (sent, received) = flood.join().unwrap();
    let metrics = lab.node_get(&format!("{HOST_IP}:9253"), "/metrics").map(|(_, b)| b).unwrap_or_default();
    let entries = nodedns_e2e::metric_sum(&metrics, "nodedns_cache_entries", &[]);
    let cache_bytes = nodedns_e2e::metric_sum(&metrics, "nodedns_cache_bytes", &[]);
    let evictions = nodedns_e2e::metric_sum(&metrics, "nodedns_cache_evictions_total", &[]);
    let shed = nodedns_e2e::metric_sum(&metrics, "nodedns_shed_total", &[]);
    let (peak, limit) = pod.memory_peak_and_limit().expect("the container's memory cgroup");
    let restarts = {
        let mut c = kubelet::podman(None);
        c.args(["inspect", "--format", "{{.RestartCount}} {{.State.OOMKilled}}", &pod.container]);
        String::from_utf8_lossy(&c.output().unwrap().stdout).trim().to_owned()
    };
    // The documented bound with the shipped config (README, "Bounds").
    let bound = (64u64 << 20) + (24 << 20) + 10_000 * 12 * 1024;
    eprintln!(
        "pod flood: {sent} unique names in {secs} s ({received} answers, {shed} shed); cache {entries} entries, \
         {} MiB, {evictions} evictions; \
         container peak {} MiB of a {} MiB limit (documented bound {} MiB); restarts/OOM-killed: {restarts}; \
         lookups of a name asked 4 times a second {checks}, not answered from cache {failures}",
        cache_bytes as u64 >> 20,
        peak >> 20,
        limit >> 20,
        bound >> 20
    );
    assert_eq!(limit, 256 << 20, "the runtime enforces the manifest's limit");
    assert!(peak < bound, "peak {peak} above the documented bound {bound}");
    assert_eq!(restarts, "0 false", "the container was restarted or OOM-killed");
    // Not asserted (reported): under this flood a name asked 4 times a second is REFUSED part of
    // the time with no eviction at all. Likely cause (for the daemon, not this test): its A+AAAA
    // pair expires with the 5 s NODATA of its AAAA, an expired entry is not a hit, and a miss is
    // shed (REFUSED) when the miss queue or max_inflight is full, before serve-stale is considered.
    let _ = failures;
    pod.delete();
    kubelet::remove_config_volumes(&[&config_volume]);
}
