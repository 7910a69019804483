//! A kubelet stand-in over `podman kube play` (podman 4.3): takes the ConfigMap and the
//! DaemonSet's pod template from the rendered `deploy/`, and does for one pod what the kubelet
//! does and podman does not:
//! - downward-API env (`status.hostIP`, `status.podIP`, `metadata.name`, `metadata.namespace`,
//!   `spec.nodeName`) resolved to values;
//! - `$(VAR)` expansion in `command` and `args` (`$$` escapes, undefined names stay as written);
//! - readiness and liveness probes run as declared (`exec`, `httpGet`; initialDelaySeconds,
//!   periodSeconds, timeoutSeconds, successThreshold, failureThreshold), a liveness failure
//!   restarting the container with the pod's grace period. Podman gets the spec without them:
//!   probes are the kubelet's job, not the runtime's;
//! - an emptyDir per pod: podman 4.3 turns an emptyDir into a named volume called after the
//!   emptyDir, which two pods of a rollout would share, so the stand-in names it after the pod;
//! - deletion as the kubelet does it: SIGTERM, `terminationGracePeriodSeconds`, then SIGKILL.
//!
//! Nothing else in the rendered spec is changed but the image name (and, in the ConfigMap only,
//! the interface kind this kernel lacks: `dummy` → `bridge`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_yaml::{Mapping, Value};

/// `podman` with this machine's runtime settings, in network namespace `netns` when given.
pub fn podman(netns: Option<&str>) -> Command {
    let mut c = match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{ns}")).arg("podman");
            c
        }
        None => Command::new("podman"),
    };
    c.args(["--runtime", "runc", "--cgroup-manager", "cgroupfs"]);
    if std::env::var_os("CONTAINERS_CONF").is_none() {
        c.env("CONTAINERS_CONF", concat!(env!("CARGO_MANIFEST_DIR"), "/pods/containers.conf"));
    }
    c
}

fn run_ok(mut c: Command) -> String {
    let out = c.output().expect("run podman");
    assert!(
        out.status.success(),
        "{c:?} failed: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `kubectl kustomize dir`, split into objects.
pub fn render(kubectl: &Path, dir: &Path) -> Vec<Value> {
    let out = Command::new(kubectl).arg("kustomize").arg(dir).output().expect("run kubectl");
    assert!(out.status.success(), "kubectl kustomize {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    serde_yaml::Deserializer::from_str(&text).map(|d| Value::deserialize(d).unwrap()).collect()
}

use serde::Deserialize;

fn kind_is(v: &Value, kind: &str) -> bool {
    v["kind"].as_str() == Some(kind)
}

/// One probe as declared, with the Kubernetes defaults for what is left out.
#[derive(Clone, Debug)]
pub struct Probe {
    pub action: ProbeAction,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

#[derive(Clone, Debug)]
pub enum ProbeAction {
    Exec(Vec<String>),
    HttpGet { host: String, port: u16, path: String },
}

impl Probe {
    fn from_spec(v: &Value) -> Probe {
        let secs = |k: &str, d: u64| Duration::from_secs(v[k].as_u64().unwrap_or(d));
        let action = if let Some(cmd) = v["exec"]["command"].as_sequence() {
            ProbeAction::Exec(cmd.iter().map(|c| c.as_str().unwrap().to_owned()).collect())
        } else if v["httpGet"].is_mapping() {
            let g = &v["httpGet"];
            ProbeAction::HttpGet {
                // An empty host is the pod IP: with hostNetwork, the node's.
                host: g["host"].as_str().unwrap_or("").to_owned(),
                port: g["port"].as_u64().expect("numeric httpGet port") as u16,
                path: g["path"].as_str().unwrap_or("/").to_owned(),
            }
        } else {
            panic!("probe kind not supported by the stand-in: {v:?}");
        };
        Probe {
            action,
            initial_delay: secs("initialDelaySeconds", 0),
            period: secs("periodSeconds", 10),
            timeout: secs("timeoutSeconds", 1),
            success_threshold: v["successThreshold"].as_u64().unwrap_or(1) as u32,
            failure_threshold: v["failureThreshold"].as_u64().unwrap_or(3) as u32,
        }
    }
}

/// What the kubelet needs to run one pod: the objects for `podman kube play`, and what it keeps
/// for itself (probes, grace period).
pub struct PodSpec {
    pub name: String,
    pub container: String,
    pub play_yaml: String,
    pub readiness: Option<Probe>,
    pub liveness: Option<Probe>,
    pub grace: Duration,
    /// Volumes podman creates for this pod alone (removed with it).
    pub volumes: Vec<String>,
    /// The ConfigMap's volume, shared with other pods of the same ConfigMap.
    pub config_volume: String,
}

/// Expands `$(VAR)` as the kubelet does (`$$` is a literal `$`; unknown names stay as written).
pub fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(t) = tail.strip_prefix("$$") {
            out.push('$');
            rest = t;
        } else if let Some(inner) = tail.strip_prefix("$(")
            && let Some(end) = inner.find(')')
            && let Some((_, v)) = env.iter().find(|(k, _)| k == &inner[..end])
        {
            out.push_str(v);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// A new version of the config: the ConfigMap's new name and the edit to its text.
pub type ConfigChange<'a> = (&'a str, &'a dyn Fn(&str) -> String);

/// Builds pod `name` from the rendered objects. `config_edit` may change the config text (a new
/// version of it: the ConfigMap then gets `config_name`, as kustomize's hash suffix would change).
pub fn pod_from_daemonset(
    objects: &[Value],
    name: &str,
    image: &str,
    host_ip: &str,
    config_change: Option<ConfigChange<'_>>,
) -> PodSpec {
    let mut cm = objects.iter().find(|o| kind_is(o, "ConfigMap")).expect("a ConfigMap").clone();
    let ds = objects.iter().find(|o| kind_is(o, "DaemonSet")).expect("a DaemonSet");
    let namespace = ds["metadata"]["namespace"].as_str().unwrap_or("default").to_owned();
    let cm_name = cm["metadata"]["name"].as_str().unwrap().to_owned();
    let (key, text) = {
        let data = cm["data"].as_mapping().expect("ConfigMap data");
        let (k, v) = data.iter().next().expect("ConfigMap data");
        (k.as_str().unwrap().to_owned(), v.as_str().unwrap().to_owned())
    };
    assert!(text.contains("interface_kind: dummy"), "{key}: interface_kind: dummy expected");
    let mut config = text.replace("interface_kind: dummy", "interface_kind: bridge");
    let mut new_cm_name = cm_name.clone();
    if let Some((new_name, edit)) = config_change {
        let edited = edit(&config);
        assert_ne!(edited, config, "the config change changed nothing");
        config = edited;
        new_cm_name = new_name.to_owned();
        cm["metadata"]["name"] = Value::from(new_name);
    }
    cm["data"][key.as_str()] = Value::from(config);

    let template = &ds["spec"]["template"];
    let mut spec = template["spec"].clone();
    let grace = Duration::from_secs(spec["terminationGracePeriodSeconds"].as_u64().unwrap_or(30));
    // Only the emptyDirs are the pod's: podman's ConfigMap volume is shared by every pod that
    // names the ConfigMap (and `volume rm --force` would take their containers with it).
    let mut volumes = Vec::new();
    // Volumes: the ConfigMap reference follows a renamed ConfigMap; emptyDirs get the pod's name.
    let mut renamed = Vec::new();
    for v in spec["volumes"].as_sequence_mut().into_iter().flatten() {
        if v["configMap"]["name"].as_str() == Some(cm_name.as_str()) {
            v["configMap"]["name"] = Value::from(new_cm_name.as_str());
        }
        if v.get("emptyDir").is_some() {
            let old = v["name"].as_str().unwrap().to_owned();
            let new = format!("{name}-{old}");
            v["name"] = Value::from(new.as_str());
            volumes.push(new.clone());
            renamed.push((old, new));
        }
    }
    let mut readiness = None;
    let mut liveness = None;
    let containers = spec["containers"].as_sequence_mut().expect("containers");
    assert_eq!(containers.len(), 1, "the stand-in runs one container per pod");
    let c = &mut containers[0];
    let container = format!("{name}-{}", c["name"].as_str().unwrap());
    c["image"] = Value::from(image);
    // The downward API, as the kubelet resolves it (hostNetwork: the pod IP is the node's).
    let mut env_values = Vec::new();
    for e in c["env"].as_sequence_mut().into_iter().flatten() {
        let var = e["name"].as_str().unwrap().to_owned();
        if let Some(path) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            let value = match path {
                "status.hostIP" | "status.podIP" => host_ip.to_owned(),
                "metadata.name" => name.to_owned(),
                "metadata.namespace" => namespace.clone(),
                "spec.nodeName" => "node".to_owned(),
                other => panic!("fieldRef {other} not supported by the stand-in"),
            };
            let m = e.as_mapping_mut().unwrap();
            m.remove("valueFrom");
            m.insert(Value::from("value"), Value::from(value.as_str()));
        }
        let value = expand(e["value"].as_str().unwrap_or(""), &env_values);
        env_values.push((var, value));
    }
    for field in ["command", "args"] {
        for a in c[field].as_sequence_mut().into_iter().flatten() {
            *a = Value::from(expand(a.as_str().unwrap(), &env_values));
        }
    }
    for m in c["volumeMounts"].as_sequence_mut().into_iter().flatten() {
        if let Some((_, new)) = renamed.iter().find(|(old, _)| m["name"].as_str() == Some(old.as_str())) {
            m["name"] = Value::from(new.as_str());
        }
    }
    let cm_map = c.as_mapping_mut().unwrap();
    if let Some(p) = cm_map.remove("readinessProbe") {
        readiness = Some(Probe::from_spec(&p));
    }
    if let Some(p) = cm_map.remove("livenessProbe") {
        liveness = Some(Probe::from_spec(&p));
    }
    assert!(cm_map.get("startupProbe").is_none(), "startupProbe not supported by the stand-in");

    let mut meta = Mapping::new();
    meta.insert("name".into(), name.into());
    meta.insert("namespace".into(), namespace.as_str().into());
    meta.insert("labels".into(), template["metadata"]["labels"].clone());
    let mut pod = Mapping::new();
    pod.insert("apiVersion".into(), "v1".into());
    pod.insert("kind".into(), "Pod".into());
    pod.insert("metadata".into(), Value::Mapping(meta));
    pod.insert("spec".into(), spec);
    let play_yaml =
        format!("{}---\n{}", serde_yaml::to_string(&cm).unwrap(), serde_yaml::to_string(&Value::Mapping(pod)).unwrap());
    PodSpec {
        name: name.to_owned(),
        container,
        play_yaml,
        readiness,
        liveness,
        grace,
        volumes,
        config_volume: new_cm_name,
    }
}

/// Removes podman's ConfigMap volumes once no pod uses them (the kubelet's ConfigMap volumes
/// go with their pods; podman keeps them by name).
pub fn remove_config_volumes(names: &[&str]) {
    for v in names {
        let mut c = podman(None);
        c.args(["volume", "rm", v]);
        let _ = c.output();
    }
}

/// What the probes of one pod have seen.
#[derive(Default, Debug)]
pub struct PodStatus {
    pub ready: bool,
    pub ready_since: Option<Instant>,
    /// Every readiness result: when, success, output.
    pub readiness_results: Vec<(Instant, bool, String)>,
    pub liveness_failures: u32,
    pub restarts: u32,
}

/// A pod the stand-in runs in the node's network namespace.
pub struct Pod {
    pub name: String,
    pub container: String,
    pub status: Arc<Mutex<PodStatus>>,
    grace: Duration,
    volumes: Vec<String>,
    stop: Arc<AtomicBool>,
    workers: Vec<std::thread::JoinHandle<()>>,
    deleted: bool,
    /// The container's log, kept when the pod is deleted.
    pub final_logs: String,
}

static FILES: AtomicU32 = AtomicU32::new(0);

fn run_probe(action: &ProbeAction, container: &str, netns: &str, timeout: Duration) -> (bool, String) {
    let mut cmd = match action {
        ProbeAction::Exec(argv) => {
            let mut c = podman(None);
            c.arg("exec").arg(container).args(argv);
            c
        }
        ProbeAction::HttpGet { host, port, path } => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{netns}")).args(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}"]);
            c.arg(format!("http://{}:{port}{path}", if host.is_empty() { "127.0.0.1" } else { host }));
            c
        }
    };
    let out_path = std::env::temp_dir().join(format!(
        "nodedns-probe-{}-{}",
        std::process::id(),
        FILES.fetch_add(1, Ordering::Relaxed)
    ));
    let out = std::fs::File::create(&out_path).unwrap();
    let mut child =
        cmd.stdin(Stdio::null()).stdout(out.try_clone().unwrap()).stderr(out).spawn().expect("spawn the probe");
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break Some(s);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let text = std::fs::read_to_string(&out_path).unwrap_or_default().trim().to_owned();
    let _ = std::fs::remove_file(&out_path);
    match (action, status) {
        (_, None) => (false, format!("timed out after {timeout:?}: {text}")),
        (ProbeAction::Exec(_), Some(s)) => (s.success(), text),
        (ProbeAction::HttpGet { .. }, Some(_)) => {
            let ok = text.parse::<u16>().is_ok_and(|c| (200..400).contains(&c));
            (ok, text)
        }
    }
}

/// Sleeps up to `d`, returning early (false) once `stop` is set.
fn sleep_unless(stop: &AtomicBool, d: Duration) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20).min(end - Instant::now()));
    }
    !stop.load(Ordering::Relaxed)
}

impl Pod {
    /// `podman kube play` in `netns` (the node: the pod has hostNetwork), then the probes.
    pub fn start(spec: PodSpec, netns: &str, dir: &Path) -> Pod {
        let file: PathBuf = dir.join(format!("{}.yaml", spec.name));
        std::fs::write(&file, &spec.play_yaml).unwrap();
        let mut c = podman(Some(netns));
        c.args(["kube", "play", "--quiet"]).arg(&file);
        run_ok(c);
        let status = Arc::new(Mutex::new(PodStatus::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        if let Some(p) = spec.readiness.clone() {
            let (status, stop, container, ns) =
                (status.clone(), stop.clone(), spec.container.clone(), netns.to_owned());
            workers.push(std::thread::spawn(move || {
                if !sleep_unless(&stop, p.initial_delay) {
                    return;
                }
                let (mut ok_run, mut fail_run) = (0, 0);
                loop {
                    let started = Instant::now();
                    let (ok, text) = run_probe(&p.action, &container, &ns, p.timeout);
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let mut s = status.lock().unwrap();
                    s.readiness_results.push((started, ok, text));
                    if ok {
                        ok_run += 1;
                        fail_run = 0;
                        if ok_run >= p.success_threshold && !s.ready {
                            s.ready = true;
                            s.ready_since = Some(Instant::now());
                        }
                    } else {
                        fail_run += 1;
                        ok_run = 0;
                        if fail_run >= p.failure_threshold {
                            s.ready = false;
                        }
                    }
                    drop(s);
                    if !sleep_unless(&stop, p.period.saturating_sub(started.elapsed())) {
                        return;
                    }
                }
            }));
        }
        if let Some(p) = spec.liveness.clone() {
            let (status, stop, container, ns, grace) =
                (status.clone(), stop.clone(), spec.container.clone(), netns.to_owned(), spec.grace);
            workers.push(std::thread::spawn(move || {
                'container: loop {
                    if !sleep_unless(&stop, p.initial_delay) {
                        return;
                    }
                    let mut fail_run = 0;
                    loop {
                        let started = Instant::now();
                        let (ok, _) = run_probe(&p.action, &container, &ns, p.timeout);
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        if ok {
                            fail_run = 0;
                        } else {
                            fail_run += 1;
                            status.lock().unwrap().liveness_failures += 1;
                        }
                        if fail_run >= p.failure_threshold {
                            // The kubelet kills the container (grace period) and restarts it.
                            let mut c = podman(None);
                            c.args(["restart", "--time", &grace.as_secs().to_string(), &container]);
                            let _ = c.output();
                            let mut s = status.lock().unwrap();
                            s.restarts += 1;
                            s.ready = false;
                            continue 'container;
                        }
                        if !sleep_unless(&stop, p.period.saturating_sub(started.elapsed())) {
                            return;
                        }
                    }
                }
            }));
        }
        Pod {
            name: spec.name,
            container: spec.container,
            status,
            grace: spec.grace,
            volumes: spec.volumes,
            stop,
            workers,
            deleted: false,
            final_logs: String::new(),
        }
    }

    pub fn ready(&self) -> bool {
        self.status.lock().unwrap().ready
    }

    /// Polls the pod's own readiness (as the DaemonSet controller watches it) until Ready.
    pub fn wait_ready(&self, timeout: Duration) -> Option<Duration> {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if self.ready() {
                return Some(started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn logs(&self) -> String {
        let mut c = podman(None);
        c.args(["logs", &self.container]);
        c.output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr))
            .unwrap_or_default()
    }

    /// Peak memory of the container's cgroup (v1 `memory.max_usage_in_bytes`) and its limit.
    pub fn memory_peak_and_limit(&self) -> Option<(u64, u64)> {
        let mut c = podman(None);
        c.args(["inspect", "--format", "{{.Id}}", &self.container]);
        let id = String::from_utf8(c.output().ok()?.stdout).ok()?.trim().to_owned();
        // cgroupfs: libpod_parent/<pod cgroup>/libpod-<container id> (or without the pod level).
        fn find(dir: &Path, leaf: &str, depth: u32) -> Option<PathBuf> {
            for e in std::fs::read_dir(dir).ok()?.flatten() {
                let p = e.path();
                if !p.is_dir() {
                    continue;
                }
                if p.file_name().is_some_and(|n| n.to_string_lossy() == leaf) {
                    return Some(p);
                }
                if depth > 0
                    && let Some(f) = find(&p, leaf, depth - 1)
                {
                    return Some(f);
                }
            }
            None
        }
        let base = find(Path::new("/sys/fs/cgroup/memory/libpod_parent"), &format!("libpod-{id}"), 2)?;
        let read = |f: &str| std::fs::read_to_string(base.join(f)).ok()?.trim().parse::<u64>().ok();
        Some((read("memory.max_usage_in_bytes")?, read("memory.limit_in_bytes")?))
    }

    /// Deletes the pod as the kubelet does: probes stop, SIGTERM, SIGKILL after the grace
    /// period. Returns how long the container took to stop.
    pub fn delete(&mut self) -> Duration {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        let started = Instant::now();
        let mut c = podman(None);
        c.args(["pod", "stop", "--time", &self.grace.as_secs().to_string(), &self.name]);
        let _ = c.output();
        let took = started.elapsed();
        self.final_logs = self.logs();
        let mut c = podman(None);
        c.args(["pod", "rm", "--force", &self.name]);
        let _ = c.output();
        for v in &self.volumes {
            let mut c = podman(None);
            c.args(["volume", "rm", "--force", v]);
            let _ = c.output();
        }
        self.deleted = true;
        took
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        if !self.deleted {
            self.grace = Duration::from_secs(2);
            self.delete();
        }
        if std::thread::panicking() {
            eprintln!("--- logs of pod {} ---\n{}", self.name, self.final_logs);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_like_the_kubelet() {
        let env = vec![("HOST_IP".to_owned(), "10.0.0.1".to_owned())];
        assert_eq!(expand("--admin-listen=$(HOST_IP):9253", &env), "--admin-listen=10.0.0.1:9253");
        assert_eq!(expand("$$(HOST_IP) $(NOPE) $", &env), "$(HOST_IP) $(NOPE) $");
    }
}
