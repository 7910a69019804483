#!/usr/bin/env python3
"""Checks the rendered nodedns manifests (called by tests/deploy/validate.sh; not meant to be run alone).

Reads the kustomize renders that validate.sh wrote into RENDER_DIR (one `<name>.yaml` per kustomization) and:
  * validates every core object against the Kubernetes OpenAPI schemas (kubernetes-validate, strict mode, each
    version in --k8s-versions);
  * checks Prometheus-operator objects (no schema offline) for their required fields, and every PromQL
    expression for syntax (promql-parser);
  * checks what a schema cannot: the DaemonSet's security context and rollout settings, the config inside the
    ConfigMap (known keys only, upstream = kube-dns-upstream's pinned ClusterIP, each mode's addresses, overlay
    configs equal to the base config but for their one change), and the DaemonSet's references to it;
  * checks that the dashboard and the alerts only use metric names in tests/deploy/exported-metrics.txt.

Writes each rendered nodedns config to RENDER_DIR/<name>.nodedns.yaml for `nodedns check-config`.
Prints one line per check (`ok` / `FAIL`) and the counts to --counts as "passed failed".
"""

import argparse
import copy
import ipaddress
import json
import re
import sys
from pathlib import Path

import kubernetes_validate
import promql_parser
import yaml

# The config schema the daemon accepts (from its documented contract). The daemon rejects unknown keys; this
# replica catches typos before the binary exists, and `nodedns check-config` is the authority once it does.
ZONE_KEYS = {"name", "upstreams", "transport", "max_ttl_secs", "min_ttl_secs", "denial_max_ttl_secs",
             "kubernetes_schema", "discover"}
CONFIG_SCHEMA = {
    "listen": list,
    "cache": {"max_bytes", "min_ttl_secs", "max_ttl_secs", "denial_max_ttl_secs", "max_stale_secs",
              "stale_answer_timeout_ms", "prefetch"},
    "zones": list,
    "admin": {"listen", "coredns_compatible_metrics"},
    "node": {"interface", "interface_kind", "addresses", "firewall", "resync_interval_secs", "teardown_on_exit"},
    "limits": {"max_inflight", "max_tcp_connections", "tcp_idle_timeout_secs"},
    "log": {"format", "level"},
    "server": {"drain_timeout_secs", "handover_socket"},
}
LINK_LOCAL = ipaddress.ip_address("169.254.20.10")
ADMIN_PORT = 9253
# Which parts of the base config each overlay may change (everything else must stay identical).
OVERLAY_CONFIG_CHANGES = {
    "link-local": [],
    "clusterip-takeover": [("node", "addresses")],
    "node-resolvers": [("zones", ".")],
}
MONITORING_GROUP = "monitoring.coreos.com/"


class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, name, fn):
        try:
            problems = fn()
        except Exception as e:  # a crash in a check is a failed check, with its reason
            problems = [f"{type(e).__name__}: {e}"]
        if problems:
            self.failed += 1
            print(f"FAIL {name}")
            for p in problems:
                print(f"       {p}")
        else:
            self.passed += 1
            print(f"ok   {name}")


def load_docs(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def obj_id(o):
    return f"{o['kind']}/{o['metadata'].get('namespace', '-')}/{o['metadata']['name']}"


def metric_names(expr):
    """Metric names selected by a PromQL expression, histogram series folded to their family."""
    names = set()
    stack = [promql_parser.parse(expr)]
    while stack:
        node = stack.pop()
        if isinstance(node, promql_parser.VectorSelector):
            names.add(node.name)
            continue
        for attr in ("expr", "lhs", "rhs", "vector_selector", "param"):
            child = getattr(node, attr, None)
            if isinstance(child, promql_parser.Expr):
                stack.append(child)
        for child in getattr(node, "args", None) or []:
            if isinstance(child, promql_parser.Expr):
                stack.append(child)
    out = set()
    for n in names:
        if n is None:
            continue
        out.add(re.sub(r"_(bucket|sum|count)$", "", n))
    return out


def check_metric_names(exprs, exported):
    problems = []
    for where, expr in exprs:
        try:
            names = metric_names(expr)
        except Exception as e:
            problems.append(f"{where}: PromQL does not parse: {e}: {expr!r}")
            continue
        for n in sorted(names):
            if n.startswith(("nodedns_", "coredns_")) and n not in exported:
                problems.append(f"{where}: {n} is not in exported-metrics.txt")
    return problems


# --- core objects -------------------------------------------------------------------------------------------

def schema_check(obj, version):
    def run():
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            return [f"{'.'.join(str(p) for p in e.path)}: {e.message}"]
        except kubernetes_validate.SchemaNotFoundError as e:
            return [f"no schema: {e}"]
        return []
    return run


def config_key_problems(cfg):
    problems = []
    if not isinstance(cfg, dict):
        return ["config is not a mapping"]
    for key, val in cfg.items():
        if key not in CONFIG_SCHEMA:
            problems.append(f"unknown key {key}")
            continue
        allowed = CONFIG_SCHEMA[key]
        if allowed is list:
            if not isinstance(val, list):
                problems.append(f"{key}: expected a list")
        elif not isinstance(val, dict):
            problems.append(f"{key}: expected a mapping")
        else:
            problems += [f"unknown key {key}.{k}" for k in val if k not in allowed]
    for i, zone in enumerate(cfg.get("zones") or []):
        problems += [f"unknown key zones[{i}].{k}" for k in zone if k not in ZONE_KEYS]
        if zone.get("transport") not in ("tcp", "udp"):
            problems.append(f"zones[{i}].transport must be tcp or udp")
        ups = zone.get("upstreams")
        if ups != "resolv.conf" and not (isinstance(ups, list) and ups):
            problems.append(f"zones[{i}].upstreams must be a list of IP:PORT or \"resolv.conf\"")
    names = [z.get("name") for z in cfg.get("zones") or []]
    if "." not in names:
        problems.append('no "." zone')
    if len(names) != len(set(names)):
        problems.append("duplicate zone names")
    if cfg.get("node", {}).get("firewall") not in ("auto", "iptables", "nftables", "none"):
        problems.append("node.firewall must be auto|iptables|nftables|none")
    if cfg.get("log", {}).get("format") not in ("text", "json"):
        problems.append("log.format must be text|json")
    return problems


def split_hostport(s):
    host, _, port = s.rpartition(":")
    return ipaddress.ip_address(host.strip("[]")), int(port)


def without(cfg, changes):
    """The config with the parts an overlay may change removed, for comparing with the base config."""
    cfg = copy.deepcopy(cfg)
    for section, key in changes:
        if section == "zones":
            cfg["zones"] = [z for z in cfg["zones"] if z.get("name") != key]
        else:
            cfg[section].pop(key, None)
    return cfg


def install_checks(checks, name, objs, base_cfg, render_dir):
    by_kind = {}
    for o in objs:
        by_kind.setdefault(o["kind"], []).append(o)
    ds = [o for o in by_kind.get("DaemonSet", []) if o["metadata"]["name"] == "nodedns"]
    cms = [o for o in by_kind.get("ConfigMap", []) if o["metadata"]["name"].startswith("nodedns")]
    svcs = {o["metadata"]["name"]: o for o in by_kind.get("Service", [])}
    state = {}

    def one_each():
        p = []
        if len(ds) != 1:
            p.append(f"expected one DaemonSet nodedns, got {len(ds)}")
        if len(cms) != 1:
            p.append(f"expected one nodedns ConfigMap, got {len(cms)}")
        for want in ("kube-dns-upstream", "kube-dns-upstream-endpoints", "nodedns-metrics"):
            if want not in svcs:
                p.append(f"missing Service {want}")
        if not any(o["kind"] == "ServiceAccount" and o["metadata"]["name"] == "nodedns" for o in objs):
            p.append("missing ServiceAccount nodedns")
        if any(o["kind"] == "Namespace" for o in objs):
            p.append("a Namespace object is rendered (kubectl delete -k would delete it)")
        for o in objs:
            if o["metadata"].get("namespace") != "kube-system":
                p.append(f"{obj_id(o)} is not in kube-system")
        return p
    checks.check(f"{name}: expected objects, all in kube-system", one_each)
    if len(ds) != 1 or len(cms) != 1:
        return
    ds, cm = ds[0], cms[0]
    pod = ds["spec"]["template"]["spec"]
    ctr = pod["containers"][0]

    def security():
        p = []
        sc = ctr.get("securityContext", {})
        caps = sc.get("capabilities", {})
        if caps.get("drop") != ["ALL"]:
            p.append("capabilities.drop must be [ALL]")
        added = set(caps.get("add", []))
        if not {"NET_ADMIN", "NET_BIND_SERVICE"} <= added or added - {"NET_ADMIN", "NET_BIND_SERVICE", "NET_RAW"}:
            p.append(f"capabilities.add must be NET_ADMIN+NET_BIND_SERVICE (+NET_RAW for legacy), got {sorted(added)}")
        for key, want in (("readOnlyRootFilesystem", True), ("allowPrivilegeEscalation", False),
                          ("privileged", False)):
            if sc.get(key) is not want:
                p.append(f"securityContext.{key} must be {want}")
        if sc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            p.append("seccompProfile must be RuntimeDefault")
        if pod.get("automountServiceAccountToken") is not False:
            p.append("the ServiceAccount token must not be mounted")
        return p
    checks.check(f"{name}: DaemonSet security context", security)

    def scheduling():
        p = []
        if pod.get("hostNetwork") is not True:
            p.append("hostNetwork must be true")
        if pod.get("dnsPolicy") != "Default":
            p.append("dnsPolicy must be Default (ClusterFirstWithHostNet would loop to nodedns)")
        if pod.get("priorityClassName") != "system-node-critical":
            p.append("priorityClassName must be system-node-critical")
        if {"operator": "Exists"} not in pod.get("tolerations", []):
            p.append("must tolerate every taint (operator: Exists)")
        ru = ds["spec"].get("updateStrategy", {})
        if ru.get("type") != "RollingUpdate" or ru.get("rollingUpdate") != {"maxSurge": 1, "maxUnavailable": 0}:
            p.append("updateStrategy must be RollingUpdate maxSurge 1 maxUnavailable 0")
        for c in pod["containers"] + pod.get("initContainers", []):
            if c.get("ports"):
                p.append(f"container {c['name']} declares ports: with hostNetwork they become hostPorts and "
                         "block the surge pod")
        if "memory" not in ctr.get("resources", {}).get("limits", {}):
            p.append("a memory limit is required")
        if "cpu" in ctr.get("resources", {}).get("limits", {}):
            p.append("no CPU limit (throttling stalls DNS)")
        if ds["spec"]["selector"]["matchLabels"].get("k8s-app") == "kube-dns" or \
                ds["spec"]["template"]["metadata"]["labels"].get("k8s-app") == "kube-dns":
            p.append("nodedns pods must not carry k8s-app: kube-dns (the upstream Services would select them)")
        return p
    checks.check(f"{name}: DaemonSet scheduling and rollout", scheduling)

    def config_refs():
        p = []
        vols = {v["name"]: v for v in pod.get("volumes", [])}
        mounts = {m["name"]: m for m in ctr.get("volumeMounts", [])}
        cfg_vols = [v for v in vols.values() if "configMap" in v]
        if len(cfg_vols) != 1 or cfg_vols[0]["configMap"]["name"] != cm["metadata"]["name"]:
            p.append(f"the config volume must reference ConfigMap {cm['metadata']['name']} "
                     f"(got {[v['configMap']['name'] for v in cfg_vols]})")
            return p
        mount = mounts.get(cfg_vols[0]["name"])
        if not mount:
            return p + ["the config volume is not mounted"]
        args = ctr.get("args", [])
        cfg_args = [a.split("=", 1)[1] for a in args if a.startswith("--config=")]
        keys = list(cm.get("data", {}))
        if args[:1] != ["run"] or len(cfg_args) != 1:
            p.append(f"args must be `run --config=FILE ...`, got {args}")
        elif cfg_args[0] != f"{mount['mountPath']}/{keys[0]}" or len(keys) != 1:
            p.append(f"--config={cfg_args[0]} is not the ConfigMap's key {keys} under {mount['mountPath']}")
        admin = [a.split("=", 1)[1] for a in args if a.startswith("--admin-listen=")]
        if f"127.0.0.1:{ADMIN_PORT}" not in admin or f"$(HOST_IP):{ADMIN_PORT}" not in admin:
            p.append(f"--admin-listen must include 127.0.0.1:{ADMIN_PORT} and $(HOST_IP):{ADMIN_PORT}")
        env = {e["name"]: e for e in ctr.get("env", [])}
        if env.get("HOST_IP", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "status.hostIP":
            p.append("env HOST_IP must come from status.hostIP")
        # Probes must reach this pod's own process: an exec of `nodedns health` on the --admin-socket, which
        # must lie in an emptyDir (never on a hostPath or the shared admin port, issue 15).
        sockets = [a.split("=", 1)[1] for a in args if a.startswith("--admin-socket=")]
        if len(sockets) != 1:
            p.append("args must name the pod's own admin socket once (--admin-socket=PATH)")
        else:
            sock_dir = sockets[0].rsplit("/", 1)[0]
            owner = [m for m in mounts.values() if m["mountPath"] == sock_dir]
            if not owner or "emptyDir" not in vols.get(owner[0]["name"], {}):
                p.append(f"--admin-socket {sockets[0]} must be in an emptyDir mounted at {sock_dir}")
            for probe, ready in (("livenessProbe", False), ("readinessProbe", True)):
                pr = ctr.get(probe, {})
                cmd = pr.get("exec", {}).get("command", [])
                if "httpGet" in pr or "tcpSocket" in pr or cmd[:2] != ["/usr/local/bin/nodedns", "health"] or \
                        f"--socket={sockets[0]}" not in cmd or ("--ready" in cmd) != ready:
                    p.append(f"{probe} must exec `/usr/local/bin/nodedns health{' --ready' if ready else ''} "
                             f"--socket={sockets[0]}`, got {pr}")
                ms = [int(a.split("=", 1)[1]) for a in cmd if a.startswith("--timeout-ms=")] or [1500]
                if ms[0] >= pr.get("timeoutSeconds", 1) * 1000:
                    p.append(f"{probe}: --timeout-ms {ms[0]} must be below timeoutSeconds")
        hp = {v["hostPath"]["path"]: v for v in vols.values() if "hostPath" in v}
        if hp.get("/run/nodedns", {}).get("hostPath", {}).get("type") != "DirectoryOrCreate":
            p.append("hostPath /run/nodedns (DirectoryOrCreate) missing")
        if hp.get("/run/xtables.lock", {}).get("hostPath", {}).get("type") != "FileOrCreate":
            p.append("hostPath /run/xtables.lock (FileOrCreate) missing")
        for path, v in hp.items():
            m = mounts.get(v["name"])
            if not m or m["mountPath"] != path or m.get("readOnly"):
                p.append(f"hostPath {path} must be mounted writable at the same path")
        state["cfg"] = yaml.safe_load(cm["data"][keys[0]])
        (render_dir / f"{name}.nodedns.yaml").write_text(cm["data"][keys[0]])
        return p
    checks.check(f"{name}: DaemonSet mounts and references the ConfigMap", config_refs)
    cfg = state.get("cfg")
    if cfg is None:
        return

    checks.check(f"{name}: config has only known keys and valid enums", lambda: config_key_problems(cfg))
    checks.check(f"{name}: memory request and limit cover the documented bound (README, Bounds)",
                 lambda: memory_problems(ctr.get("resources", {}), cfg)
                 if "memory" in ctr.get("resources", {}).get("limits", {}) else ["no memory limit"])

    def config_vs_objects():
        p = []
        up = svcs["kube-dns-upstream"]["spec"]
        up_ip = ipaddress.ip_address(up["clusterIP"])
        for svc in ("kube-dns-upstream", "kube-dns-upstream-endpoints"):
            if svcs[svc]["spec"].get("selector") != {"k8s-app": "kube-dns"}:
                p.append(f"Service {svc} must select k8s-app: kube-dns")
        ep = svcs["kube-dns-upstream-endpoints"]["spec"]
        if ep.get("clusterIP") != "None" or ep.get("publishNotReadyAddresses") is not False:
            p.append("kube-dns-upstream-endpoints must be headless with publishNotReadyAddresses: false")
        ns = ds["metadata"]["namespace"]
        for z in cfg["zones"]:
            if z["upstreams"] != "resolv.conf":
                for u in z["upstreams"]:
                    ip, port = split_hostport(u)
                    if (ip, port) != (up_ip, 53):
                        p.append(f"zone {z['name']}: upstream {u} is not kube-dns-upstream's {up_ip}:53")
            if "discover" in z and z["discover"] != f"kube-dns-upstream-endpoints.{ns}.svc.cluster.local":
                p.append(f"zone {z['name']}: discover does not name the kube-dns-upstream-endpoints Service")
        addrs = [ipaddress.ip_address(a) for a in cfg["node"]["addresses"]]
        if LINK_LOCAL not in addrs:
            p.append(f"node.addresses must include {LINK_LOCAL}")
        if up_ip in addrs:
            p.append("node.addresses must not include kube-dns-upstream's address (nodedns would query itself)")
        extra = [a for a in addrs if a != LINK_LOCAL]
        if name == "clusterip-takeover" and len(extra) != 1:
            p.append("takeover mode must add exactly one address (the kube-dns ClusterIP)")
        if name != "clusterip-takeover" and extra:
            p.append(f"link-local mode must serve only {LINK_LOCAL}, got {extra}")
        grace = pod.get("terminationGracePeriodSeconds", 30)
        if grace <= cfg["server"]["drain_timeout_secs"]:
            p.append(f"terminationGracePeriodSeconds {grace} must exceed server.drain_timeout_secs")
        sock = cfg["server"]["handover_socket"]
        if not sock.startswith("/run/nodedns/"):
            p.append(f"server.handover_socket {sock} must be on the /run/nodedns hostPath")
        return p
    checks.check(f"{name}: config agrees with the Services and the DaemonSet", config_vs_objects)

    if name in OVERLAY_CONFIG_CHANGES:
        def same_as_base():
            changes = OVERLAY_CONFIG_CHANGES[name]
            if without(cfg, changes) != without(base_cfg, changes):
                return [f"differs from deploy/config/nodedns.yaml outside {changes or 'nothing'}"]
            if changes and cfg == base_cfg:
                return [f"is identical to the base config; expected a change in {changes}"]
            return []
        checks.check(f"{name}: config equals the base config but for the mode's change", same_as_base)


MIB = 1 << 20
UNITS = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "K": 1000, "M": 1000 ** 2, "G": 1000 ** 3, "": 1}


def quantity_bytes(q):
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|K|M|G|)", str(q))
    if not m:
        raise ValueError(f"unsupported memory quantity {q!r}")
    return int(m.group(1)) * UNITS[m.group(2)]


def memory_bound(cfg):
    """The daemon's documented memory bound (README.md, "Bounds"), enforced by the flood test:
    cache.max_bytes + 24 MiB + 12 KiB x limits.max_inflight (defaults: 64 MiB, 10000)."""
    max_bytes = cfg.get("cache", {}).get("max_bytes", 64 * MIB)
    inflight = cfg.get("limits", {}).get("max_inflight", 10000)
    return max_bytes + 24 * MIB + 12 * 1024 * inflight


def memory_problems(resources, cfg):
    """An OOM kill skips the teardown and drops the cache: limit >= 1.2 x bound, request >= bound."""
    bound = memory_bound(cfg)
    try:
        limit = quantity_bytes(resources["limits"]["memory"])
        request = quantity_bytes(resources.get("requests", {}).get("memory", "0"))
    except ValueError as e:
        return [str(e)]
    p = []
    if limit < 1.2 * bound:
        p.append(f"memory limit {limit / MIB:.0f} MiB is below 1.2 x the documented bound {bound / MIB:.1f} MiB")
    if request < bound:
        p.append(f"memory request {request / MIB:.0f} MiB is below the documented bound {bound / MIB:.1f} MiB")
    return p


# --- monitoring objects -------------------------------------------------------------------------------------

def monitoring_checks(checks, objs, exported, root):
    def crd_fields(o):
        def run():
            p = []
            for k in ("apiVersion", "kind", "metadata", "spec"):
                if k not in o:
                    p.append(f"missing {k}")
            if o.get("apiVersion") != "monitoring.coreos.com/v1":
                p.append("apiVersion must be monitoring.coreos.com/v1")
            spec = o.get("spec", {})
            if o["kind"] == "PodMonitor":
                if not spec.get("selector", {}).get("matchLabels"):
                    p.append("spec.selector.matchLabels missing")
                eps = spec.get("podMetricsEndpoints") or []
                if not eps:
                    p.append("spec.podMetricsEndpoints missing")
                for i, ep in enumerate(eps):
                    for k in ("port", "portNumber", "targetPort"):
                        if k in ep:
                            p.append(f"podMetricsEndpoints[{i}].{k}: the DaemonSet declares no ports")
                    if not any(r.get("targetLabel") == "__address__" for r in ep.get("relabelings", [])):
                        p.append(f"podMetricsEndpoints[{i}] must set __address__ by relabeling")
            elif o["kind"] == "PrometheusRule":
                seen = set()
                for g in spec.get("groups") or [None]:
                    if not g or not g.get("name") or not g.get("rules"):
                        p.append("every group needs a name and rules")
                        continue
                    for r in g["rules"]:
                        if "alert" not in r or "expr" not in r:
                            p.append(f"group {g['name']}: every rule needs alert and expr")
                            continue
                        if r["alert"] in seen:
                            p.append(f"duplicate alert {r['alert']}")
                        seen.add(r["alert"])
                        if r.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
                            p.append(f"{r['alert']}: labels.severity must be critical|warning|info")
                        if not r.get("annotations", {}).get("summary"):
                            p.append(f"{r['alert']}: annotations.summary missing")
                        if "for" in r and not re.fullmatch(r"(\d+[smhd])+", str(r["for"])):
                            p.append(f"{r['alert']}: bad `for` duration {r['for']}")
            else:
                p.append(f"unexpected kind {o['kind']}")
            return p
        return run

    exprs = []
    for o in objs:
        if o["apiVersion"].startswith(MONITORING_GROUP):
            checks.check(f"monitoring: {obj_id(o)} required fields", crd_fields(o))
            if o["kind"] == "PrometheusRule":
                for g in o["spec"].get("groups", []):
                    exprs += [(f"alert {r.get('alert')}", r["expr"]) for r in g.get("rules", []) if "expr" in r]
    checks.check("monitoring: PrometheusRule expressions parse and use exported metrics only",
                 lambda: check_metric_names(exprs, exported) or ([] if exprs else ["no expressions found"]))

    dash_state = {}

    def dashboard_parses():
        p = []
        dash = json.loads((root / "deploy/monitoring/grafana-dashboard.json").read_text())
        rendered = [o for o in objs if o["kind"] == "ConfigMap" and "grafana_dashboard" in o["metadata"].get("labels", {})]
        if len(rendered) != 1 or json.loads(next(iter(rendered[0]["data"].values()))) != dash:
            p.append("the dashboard ConfigMap does not hold grafana-dashboard.json")
        ids = [pn["id"] for pn in dash.get("panels", [])]
        if len(ids) != len(set(ids)):
            p.append("duplicate panel ids")
        if not dash.get("uid") or not dash.get("title"):
            p.append("uid and title are required")
        variables = {v["name"] for v in dash.get("templating", {}).get("list", [])}
        for pn in dash.get("panels", []):
            if pn["type"] == "row":
                continue
            if not pn.get("targets"):
                p.append(f"panel {pn['title']!r} has no queries")
            uid = pn.get("datasource", {}).get("uid", "")
            if uid.startswith("$") and uid.strip("${}") not in variables:
                p.append(f"panel {pn['title']!r} uses undefined variable {uid}")
        dash_state["dash"] = dash
        return p
    checks.check("monitoring: grafana-dashboard.json parses, is the rendered ConfigMap, panels well-formed",
                 dashboard_parses)

    def dashboard_metrics():
        dash = dash_state.get("dash")
        if not dash:
            return ["dashboard did not load"]
        exprs = []
        for pn in dash.get("panels", []):
            for t in pn.get("targets", []):
                # Grafana variables are substituted before PromQL is parsed.
                e = t["expr"].replace("$__rate_interval", "5m").replace("$node", ".*")
                exprs.append((f"panel {pn['title']!r}", e))
        for v in dash.get("templating", {}).get("list", []):
            q = v.get("definition") or ""
            m = re.fullmatch(r"label_values\((.*),\s*\w+\)", q)
            if m:
                exprs.append((f"variable {v['name']}", m.group(1)))
        used = set()
        for _, e in exprs:
            try:
                used |= metric_names(e)
            except Exception:
                pass
        unused = sorted(exported - used)
        if unused:
            print(f"       note: exported but not on the dashboard: {', '.join(unused)}")
        return check_metric_names(exprs, exported)
    checks.check("monitoring: dashboard queries parse and use exported metrics only", dashboard_metrics)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--render-dir", type=Path, required=True)
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--k8s-versions", required=True)
    ap.add_argument("--counts", type=Path, required=True)
    args = ap.parse_args()
    versions = args.k8s_versions.split(",")
    exported = {l.strip() for l in (args.root / "tests/deploy/exported-metrics.txt").read_text().splitlines()
                if l.strip() and not l.startswith("#")}
    base_cfg = yaml.safe_load((args.root / "deploy/config/nodedns.yaml").read_text())
    checks = Checks()

    for path in sorted(args.render_dir.glob("*.yaml")):
        if path.name.endswith(".nodedns.yaml"):
            continue
        name = path.stem
        objs = load_docs(path)
        core = [o for o in objs if not o["apiVersion"].startswith(MONITORING_GROUP)]
        for o in core:
            for v in versions:
                checks.check(f"{name}: {obj_id(o)} valid for Kubernetes {v} (strict)", schema_check(o, v))
        if name == "monitoring":
            monitoring_checks(checks, objs, exported, args.root)
        else:
            install_checks(checks, name, objs, base_cfg, args.render_dir)

    args.counts.write_text(f"{checks.passed} {checks.failed}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
