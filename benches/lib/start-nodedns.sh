#!/usr/bin/env bash
# start-nodedns.sh — writes a benchmark config for nodedns from the DNSBENCH_* variables that
# shared/bench/peers.sh (and benches/harness.sh) export, then execs the daemon, so the PID the
# harness pins, caps and stops is nodedns itself.
#
#   DNSBENCH_IP, DNSBENCH_PORT   where to serve (UDP and TCP)
#   DNSBENCH_UPSTREAM            the authoritative upstream (127.0.0.53:53)
#   DNSBENCH_WORKDIR             where to write nodedns.yaml
#   NODEDNS_BIN                  the release binary (set by benches/run.sh)
#   NODEDNS_CACHE_BYTES          cache.max_bytes (default 256 MiB; the memory run raises it)
#   NODEDNS_TRANSPORT            upstream transport (default tcp: the product default for the
#                                cluster zone: persistent pipelined connections)
#   NODEDNS_LOG_LEVEL            log.level (default warn; the start-to-ready runs read the info
#                                line "an upstream answered: ready")
#   NODEDNS_DNSTAP               1: log.dnstap to a unix socket read by fstrm_capture (fstrm-bin),
#                                which writes to /dev/null and runs outside the server's CPU
#                                cgroup, on CPU NODEDNS_DNSTAP_CPU (default 1, the load CPU), so
#                                the rows measure what producing dnstap costs nodedns itself
set -euo pipefail
: "${DNSBENCH_IP:?}" "${DNSBENCH_PORT:?}" "${DNSBENCH_UPSTREAM:?}" "${DNSBENCH_WORKDIR:?}" "${NODEDNS_BIN:?}"
transport=${NODEDNS_TRANSPORT:-tcp}
conf=$DNSBENCH_WORKDIR/nodedns.yaml
mkdir -p "$DNSBENCH_WORKDIR"
# Both the cluster zone and "." go to the one upstream: the harness's namespace has nothing else.
# The TTL policy is the cache default (not the 30 s cluster.local ceiling of the deploy manifest)
# so that no entry expires during a measured run, as for the peers (zone TTL 3600).
cat >"$conf" <<YAML
listen: ["$DNSBENCH_IP:$DNSBENCH_PORT"]
cache:
  max_bytes: ${NODEDNS_CACHE_BYTES:-268435456}
zones:
  - name: cluster.local
    upstreams: ["$DNSBENCH_UPSTREAM"]
    transport: $transport
  - name: "."
    upstreams: ["$DNSBENCH_UPSTREAM"]
    transport: $transport
admin:
  listen: "$DNSBENCH_IP:9253"
log:
  level: ${NODEDNS_LOG_LEVEL:-warn}
YAML
if [[ ${NODEDNS_DNSTAP:-0} == 1 ]]; then
    sock=$DNSBENCH_WORKDIR/dnstap.sock
    rm -f "$sock"
    fstrm_capture -t protobuf:dnstap.Dnstap -u "$sock" -w /dev/null >"$DNSBENCH_WORKDIR/fstrm_capture.log" 2>&1 &
    cap=$!
    echo "$cap" >/sys/fs/cgroup/cgroup.procs 2>/dev/null || true
    taskset -a -p -c "${NODEDNS_DNSTAP_CPU:-1}" "$cap" >/dev/null 2>&1 || true
    for _ in $(seq 100); do [[ -S $sock ]] && break; sleep 0.05; done
    printf '  dnstap:\n    socket: %s\n' "$sock" >>"$conf"
fi
exec "$NODEDNS_BIN" run --config "$conf"
