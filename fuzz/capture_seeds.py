#!/usr/bin/env python3
"""Captures real wire traffic into the fuzz corpus (files named capture-*):

- client_query: the queries dig and kdig send (EDNS, DO, cookies, NSID, ECS, padding, 0x20).
- tcp_framing: the same clients' TCP streams (control byte 0 = client side) and Knot's TCP
  answers (control byte 1 = upstream side).
- upstream_response: Knot DNS answers (positive, CNAME, SRV with glue, NXDOMAIN and NODATA
  with SOA, delegations, DNSSEC-less ANY) to those queries.

Needs dig, kdig and knotd (tests/run.sh installs them). Run from the repo root:
    python3 fuzz/capture_seeds.py
Deterministic content, except for the random IDs and cookies the clients pick.
"""
import os, socket, struct, subprocess, tempfile, threading, time

ROOT = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(ROOT, "corpus")

ZONE = """$ORIGIN cluster.local.
$TTL 30
@ SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5
@ NS ns.dns
ns.dns A 10.96.0.10
web.default.svc A 10.96.1.1
web.default.svc AAAA fd00::1:1
v4only.default.svc A 10.96.1.2
alias.default.svc CNAME web.default.svc
_http._tcp.web.default.svc SRV 0 100 80 web.default.svc
big.default.svc TXT "{big}" "{big}" "{big}"
sub NS ns.sub
ns.sub A 10.96.9.9
mx MX 10 web.default.svc
""".format(big="x" * 250)

CLIENT_ARGS = [
    ("a", ["web.default.svc.cluster.local", "A"]),
    ("aaaa-do", ["web.default.svc.cluster.local", "AAAA", "+dnssec"]),
    ("srv", ["_http._tcp.web.default.svc.cluster.local", "SRV"]),
    ("cname", ["alias.default.svc.cluster.local", "A"]),
    ("nx", ["nope.default.svc.cluster.local", "A"]),
    ("nodata", ["v4only.default.svc.cluster.local", "AAAA"]),
    ("txt-big", ["big.default.svc.cluster.local", "TXT", "+bufsize=4096"]),
    ("delegated", ["x.sub.cluster.local", "A", "+norecurse"]),
    ("mx", ["mx.cluster.local", "MX"]),
    ("any", ["web.default.svc.cluster.local", "ANY"]),
    ("soa", ["cluster.local", "SOA", "+nsid"]),
    ("noedns", ["web.default.svc.cluster.local", "A", "+noedns"]),
    ("ecs", ["web.default.svc.cluster.local", "A", "+subnet=10.0.0.0/24"]),
    ("cookie", ["web.default.svc.cluster.local", "A", "+cookie"]),
    ("padding", ["web.default.svc.cluster.local", "A", "+padding=128"]),
    ("cd-ad", ["web.default.svc.cluster.local", "A", "+cd", "+adflag"]),
]


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "capture-" + name), "wb") as f:
        f.write(data)


def capture_udp(cmd):
    """Runs a client against a UDP socket that never answers; returns the first query."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.settimeout(3)
    p = subprocess.Popen(cmd(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        data, _ = s.recvfrom(65535)
    finally:
        p.kill()
        p.wait()
        s.close()
    return data


def capture_tcp(cmd):
    """Runs a client against a TCP listener that never answers; returns the bytes it sent."""
    l = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    l.bind(("127.0.0.1", 0))
    l.listen(1)
    port = l.getsockname()[1]
    l.settimeout(3)
    p = subprocess.Popen(cmd(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        c, _ = l.accept()
        c.settimeout(1)
        data = b""
        try:
            while len(data) < 2 or len(data) < 2 + struct.unpack("!H", data[:2])[0]:
                chunk = c.recv(65535)
                if not chunk:
                    break
                data += chunk
        except socket.timeout:
            pass
        c.close()
    finally:
        p.kill()
        p.wait()
        l.close()
    return data


def start_knot(tmp):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with open(os.path.join(tmp, "cluster.local.zone"), "w") as f:
        f.write(ZONE)
    conf = os.path.join(tmp, "knot.conf")
    with open(conf, "w") as f:
        f.write(
            f"server:\n  listen: 127.0.0.1@{port}\n  rundir: {tmp}\ndatabase:\n  storage: {tmp}\n"
            f"template:\n  - id: default\n    storage: {tmp}\n    semantic-checks: off\n"
            f"zone:\n  - domain: cluster.local.\n    file: {tmp}/cluster.local.zone\n"
        )
    p = subprocess.Popen(["knotd", "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return p, port
        except OSError:
            time.sleep(0.05)
    p.kill()
    raise SystemExit("knotd did not start")


def ask_udp(port, q):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    s.sendto(q, ("127.0.0.1", port))
    data, _ = s.recvfrom(65535)
    s.close()
    return data


def ask_tcp(port, q):
    c = socket.create_connection(("127.0.0.1", port), timeout=2)
    c.sendall(struct.pack("!H", len(q)) + q)
    data = b""
    while len(data) < 2 or len(data) < 2 + struct.unpack("!H", data[:2])[0]:
        chunk = c.recv(65535)
        if not chunk:
            break
        data += chunk
    c.close()
    return data


def main():
    queries = {}
    for name, args in CLIENT_ARGS:
        dig = lambda port, a=args: ["dig", "@127.0.0.1", "-p", str(port), "+time=2", "+tries=1"] + a
        kdig = lambda port, a=args: ["kdig", "@127.0.0.1", "-p", str(port), "+time=2", "+retry=0"] + a
        for client, cmd in (("dig", dig), ("kdig", kdig)):
            try:
                q = capture_udp(cmd)
            except (socket.timeout, OSError):
                continue
            queries[f"{client}-{name}"] = q
            write("client_query", f"{client}-{name}", q)
        try:
            stream = capture_tcp(lambda port, a=args: ["dig", "@127.0.0.1", "-p", str(port), "+tcp", "+time=2", "+tries=1"] + a)
            write("tcp_framing", f"dig-tcp-{name}", b"\x00" + stream)
        except (socket.timeout, OSError):
            pass
    with tempfile.TemporaryDirectory() as tmp:
        knot, port = start_knot(tmp)
        try:
            for name, q in queries.items():
                # Clear the RD bit's absence etc. as sent; Knot answers authoritatively.
                try:
                    write("upstream_response", f"knot-{name}", ask_udp(port, q))
                    if name.startswith("dig-"):
                        write("tcp_framing", f"knot-tcp-{name}", b"\x01" + ask_tcp(port, q))
                except (socket.timeout, OSError):
                    pass
        finally:
            knot.kill()
            knot.wait()
    print("captured", len(queries), "client queries and their Knot answers")


if __name__ == "__main__":
    main()
