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
exec "$NODEDNS_BIN" run --config "$conf"
