#!/usr/bin/env bash
# benches/run.sh — nodedns's benchmark suite (issue #7). Run as root from anywhere:
#
#   benches/run.sh                 # full suite: -r 3 medians, memory for 1,000,000 names, start-to-ready
#   benches/run.sh --quick         # one round, short runs, no memory run: a look, not a claim
#   benches/run.sh --help
#
# 1. Builds nodedns in release mode.
# 2. If the referee harness ../shared/bench/peers.sh exists (or $PEERS_SH), runs it with nodedns
#    added as a target (`-t nodedns=127.0.0.70:53 -s ...`) for the hit, mixed and mixed@20000
#    workloads against the ceiling, unbound, dnsmasq, dnsdist and kresd.
#    Without it (a plain clone), runs nodedns alone on the same workloads through
#    benches/harness.sh, which replicates peers.sh's method, and says so.
# 3. Runs benches/harness.sh for what peers.sh has no workload for: the miss path (names never
#    seen before, each asked once (type A; and, as `miss-pair`, A then AAAA as stub resolvers
#    ask), forwarded over TCP) against unbound with `tcp-upstream: yes`
#    and dnsdist with a TCP-only backend; RSS growth per cached name (A+AAAA pairs) for nodedns
#    and unbound; start to ready.
# Everything is bounded (dnsperf -l, bounded waits) and runs in private network namespaces.
# Results: the tables on stdout and in $OUT (default /tmp/nodedns-bench-results.DATE).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)

ROUNDS=3
DURATION=5
MEM_NAMES=1000000
STARTUPS=10
MISS_NAMES=40000
PEERS_ONLY=0
OWN_ONLY=0
declare -a EXTRA=()          # NAME=BINARY: more nodedns builds in the same run (A/B)
PEERS_SH=${PEERS_SH:-$REPO/../shared/bench/peers.sh}
OUT=${OUT:-/tmp/nodedns-bench-results.$(date +%Y%m%d-%H%M%S)}

usage() {
    cat <<EOF
Usage: $0 [--quick] [-r ROUNDS] [-d SECONDS] [--memory N] [--startup K] [--miss-names N]
          [--peers-only | --own-only] [--ab NAME=BINARY]...
  --quick          -r 1 -d 3, --memory 0, --startup 3, --miss-names 20000
  --memory N       names cached for the memory run (0 skips it; default $MEM_NAMES)
  --peers-only     only the peers.sh part;  --own-only: only benches/harness.sh
  --ab NAME=BIN    also run another nodedns binary as target NAME (peers.sh part), e.g. a
                   build of the previous commit, for before/after in one run
Environment: CARGO_TARGET_DIR (build dir), PEERS_SH (referee harness), OUT (results dir).
EOF
}
while (($#)); do
    case $1 in
        --quick) ROUNDS=1 DURATION=3 MEM_NAMES=0 STARTUPS=3 MISS_NAMES=20000 ;;
        -r) ROUNDS=$2; shift ;;
        -d) DURATION=$2; shift ;;
        --memory) MEM_NAMES=$2; shift ;;
        --startup) STARTUPS=$2; shift ;;
        --miss-names) MISS_NAMES=$2; shift ;;
        --peers-only) PEERS_ONLY=1 ;;
        --own-only) OWN_ONLY=1 ;;
        --ab) EXTRA+=("$2"); shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; exit 64 ;;
    esac
    shift
done
((EUID == 0)) || { echo "run as root (network namespace, cpu cgroup, port 53)" >&2; exit 1; }
mkdir -p "$OUT"

# Tools: plain Debian packages.
need=()
for b in dnsperf:dnsperf knotd:knot dig:bind9-dnsutils curl:curl unbound:unbound dnsdist:dnsdist; do
    command -v "${b%%:*}" >/dev/null || need+=("${b#*:}")
done
if ((${#need[@]})); then
    echo "installing ${need[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >"$OUT/apt.log" 2>&1 \
        || { apt-get update -q >>"$OUT/apt.log" 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >>"$OUT/apt.log" 2>&1; }
fi

TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
echo "building nodedns (release, $TARGET_DIR)" >&2
CARGO_TARGET_DIR=$TARGET_DIR cargo build --release -q -p nodedns --manifest-path "$REPO/Cargo.toml"
export NODEDNS_BIN=$TARGET_DIR/release/nodedns
START="$HERE/lib/start-nodedns.sh"
{
    echo "nodedns $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null)$(git -C "$REPO" diff --quiet 2>/dev/null || echo +dirty), $(date -u +%FT%TZ)"
    echo "command: $0 -r $ROUNDS -d $DURATION --memory $MEM_NAMES --startup $STARTUPS --miss-names $MISS_NAMES"
} | tee "$OUT/about.txt"

if ((!OWN_ONLY)); then
    if [[ -x $PEERS_SH || -f $PEERS_SH ]]; then
        args=(-r "$ROUNDS" -d "$DURATION" -w hit,mixed,mixed@20000 --csv "$OUT/peers.tsv"
              -t nodedns=127.0.0.70:53 -s "nodedns=exec $START")
        n=80
        for ab in "${EXTRA[@]}"; do
            args+=(-t "${ab%%=*}=127.0.0.$n:53" -s "${ab%%=*}=NODEDNS_BIN=${ab#*=} exec $START")
            n=$((n + 1))
        done
        echo "referee: $PEERS_SH ${args[*]}" | tee -a "$OUT/about.txt"
        bash "$PEERS_SH" "${args[@]}" | tee "$OUT/peers.txt"
    else
        echo "NOTE: $PEERS_SH not found (plain clone without shared/): running nodedns ALONE on" \
             "hit, mixed and mixed@20000 with benches/harness.sh — no peer or ceiling rows to compare" \
            | tee -a "$OUT/about.txt" >&2
        bash "$HERE/harness.sh" -w hit,mixed,mixed@20000 -S nodedns -r "$ROUNDS" -d "$DURATION" \
            --csv "$OUT/own-hit.tsv" | tee "$OUT/own-hit.txt"
    fi
fi
if ((!PEERS_ONLY)); then
    servers=nodedns,unbound-tcp,dnsdist-tcp
    bash "$HERE/harness.sh" -w miss,miss-pair -S "$servers" -r "$ROUNDS" --miss-names "$MISS_NAMES" \
        --startup "$STARTUPS" --memory "$MEM_NAMES" --csv "$OUT/miss.tsv" | tee "$OUT/miss.txt"
fi
echo "results in $OUT" >&2
