#!/usr/bin/env bash
# harness.sh — nodedns's own dnsperf harness: the workloads shared/bench/peers.sh does not have
# (miss over a TCP upstream, memory per cached name, start-to-ready), and the hit/mixed workloads
# for a plain clone where peers.sh is absent.
#
# It follows peers.sh's method so rows compare: a private network namespace (only `lo`), Knot on
# 127.0.0.53:53 (UDP+TCP) pinned to the upstream CPU, servers pinned to the server CPU inside a
# cpu cgroup capped at --server-quota % in saturation runs, dnsperf pinned to the load CPU,
# server CPU from /proc/PID/task/*/schedstat. The zone generator for hit/mixed is peers.sh's.
#
# Run as root (netns, cgroup, port 53). Called by benches/run.sh; `--help` for options.
set -uo pipefail
export LC_ALL=C

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SELF="$HERE/$(basename "${BASH_SOURCE[0]}")"
ORIG_ARGS=("$@")

NAMES=10000          # hit/mixed zone size (as peers.sh)
MISS_NAMES=40000     # names per miss run (each server and round gets its own, never asked before)
MEM_NAMES=0          # memory run: names to cache (0 = skip)
STARTUPS=0           # start-to-ready measurements (0 = skip)
DURATION=5
ROUNDS=1
WORKLOADS="miss"
SERVERS="nodedns,unbound-tcp,dnsdist-tcp"
QUOTA=50
CLIENTS=4
OUTSTANDING=100
SERVER_CPU=0
LOAD_CPU=1
UPSTREAM_CPU=1
TTL=3600
CSV=""
KEEP=0
IN_NETNS=0
UPSTREAM_IP=127.0.0.53
declare -A IP=([nodedns]=127.0.0.70 [unbound-tcp]=127.0.0.71 [dnsdist-tcp]=127.0.0.72
               [unbound]=127.0.0.61 [dnsdist]=127.0.0.63)
CHECK_NAME=svc-1.ns-1.svc.cluster.local
CHECK_A=198.18.0.1

usage() {
    cat <<EOF
Usage: $0 [options]   (as root; NODEDNS_BIN must point at a release build)
  -w, --workloads LIST   hit | mixed | hit@QPS | mixed@QPS | miss | miss-pair, comma separated
                         (default $WORKLOADS). miss: each new name asked once, type A; miss-pair:
                         each new name asked for A then AAAA, as glibc and musl resolvers do
  -S, --servers LIST     nodedns, unbound-tcp, dnsdist-tcp, unbound, dnsdist (default $SERVERS)
  -r, --rounds R         interleaved rounds; the table gives medians (default $ROUNDS)
  -d, --duration S       seconds per measured hit/mixed run (default $DURATION)
  -n, --names N          hit/mixed zone size (default $NAMES)
      --miss-names N     names per miss run (default $MISS_NAMES)
      --memory N         cache N names (A+AAAA pairs) in nodedns and unbound, report RSS growth per name
      --startup K        measure nodedns start-to-ready K times
      --server-quota PCT CPU cap of the server in saturation runs (default $QUOTA)
      --csv FILE         also write the summary as TSV
      --keep             keep the work directory
EOF
}
log() { printf '[harness %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

while (($#)); do
    case $1 in
        -w|--workloads) WORKLOADS=$2; shift ;;
        -S|--servers) SERVERS=$2; shift ;;
        -r|--rounds) ROUNDS=$2; shift ;;
        -d|--duration) DURATION=$2; shift ;;
        -n|--names) NAMES=$2; shift ;;
        --miss-names) MISS_NAMES=$2; shift ;;
        --memory) MEM_NAMES=$2; shift ;;
        --startup) STARTUPS=$2; shift ;;
        --server-quota) QUOTA=$2; shift ;;
        --csv) CSV=$2; shift ;;
        --keep) KEEP=1 ;;
        --in-netns) IN_NETNS=1 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument '$1'" ;;
    esac
    shift
done
[[ -x ${NODEDNS_BIN:-} ]] || die "NODEDNS_BIN must be the nodedns release binary (benches/run.sh sets it)"
IFS=, read -r -a WL_LIST <<<"$WORKLOADS"
IFS=, read -r -a SRV_LIST <<<"$SERVERS"
for s in "${SRV_LIST[@]}"; do [[ -n ${IP[$s]:-} ]] || die "unknown server '$s'"; done
for w in "${WL_LIST[@]}"; do [[ -z $w || $w =~ ^((hit|mixed)(@[0-9]+)?|miss|miss-pair)$ ]] || die "bad workload '$w'"; done

if ((!IN_NETNS)); then
    ((EUID == 0)) || die "run as root"
    for b in dnsperf knotd dig taskset unshare setsid curl; do command -v $b >/dev/null || die "'$b' not found"; done
    log "entering a private network namespace"
    exec unshare --net -- bash "$SELF" --in-netns "${ORIG_ARGS[@]}"
fi
ip link set lo up || die "cannot bring up lo"

WORK=$(mktemp -d /tmp/nodedns-bench.XXXXXX)
declare -a PIDS=()
CG=""
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -TERM -- "-$p" 2>/dev/null; done
    sleep 0.3
    for p in "${PIDS[@]}"; do kill -KILL -- "-$p" 2>/dev/null; wait "$p" 2>/dev/null; done
    [[ -n $CG ]] && rmdir "$CG" 2>/dev/null
    if ((KEEP)); then log "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

alive() { local st; st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) && [[ -n $st && $st != Z ]]; }
stop() {   # stop PID: TERM its group, KILL after 5 s
    local pid=$1 i
    kill -TERM -- "-$pid" 2>/dev/null
    for ((i = 0; i < 50; i++)); do alive "$pid" || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    local keep=() p
    for p in "${PIDS[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}
# spawn CG|- CPU LOG CMD...: own session, pinned, optionally inside the quota cgroup.
spawn() {
    local cg=$1 cpu=$2 logf=$3
    shift 3
    if [[ $cg != - ]]; then
        setsid bash -c 'echo $$ >"$0/cgroup.procs" && exec "$@"' "$cg" taskset -c "$cpu" "$@" >"$logf" 2>&1 </dev/null &
    else
        setsid taskset -c "$cpu" "$@" >"$logf" 2>&1 </dev/null &
    fi
    SPAWNED=$!
    PIDS+=("$SPAWNED")
}

# The quota cgroup (10 ms CFS period), as peers.sh.
if ((QUOTA > 0)); then
    if [[ -w /sys/fs/cgroup/cpu/cpu.cfs_quota_us ]]; then
        CG_KIND=v1 CG=/sys/fs/cgroup/cpu/nodedns-bench.$$
    else
        CG_KIND=v2 CG=/sys/fs/cgroup/nodedns-bench.$$
        grep -qw cpu /sys/fs/cgroup/cgroup.subtree_control || echo +cpu >/sys/fs/cgroup/cgroup.subtree_control
    fi
    mkdir -p "$CG" || die "cannot create cgroup $CG"
    [[ $CG_KIND == v1 ]] && echo 10000 >"$CG/cpu.cfs_period_us"
fi
quota() {   # quota on|off
    [[ -n $CG ]] || return 0
    if [[ $CG_KIND == v1 ]]; then
        [[ $1 == on ]] && echo $((QUOTA * 100)) >"$CG/cpu.cfs_quota_us" || echo -1 >"$CG/cpu.cfs_quota_us"
    else
        [[ $1 == on ]] && echo "$((QUOTA * 100)) 10000" >"$CG/cpu.max" || echo "max 10000" >"$CG/cpu.max"
    fi
}
SRV_CG=${CG:--}

dig_a() { dig +short +time=1 +tries=1 @"$1" -p 53 "$2" A 2>/dev/null; }
wait_answer() {   # wait_answer IP NAME EXPECT PID SECONDS
    local deadline=$((SECONDS + $5))
    while ((SECONDS < deadline)); do
        [[ $(dig_a "$1" "$2") == *"$3"* ]] && return 0
        alive "$4" || return 1
        sleep 0.1
    done
    return 1
}

# ------------------------------------------------------------------ data --
# gen_zone FILE EXTRA EXTRA_BASE: the peers.sh zone (NAMES names, hit.txt, mixed.txt) plus EXTRA
# names svc-(EXTRA_BASE+j) for miss and memory runs, 80% dual-stack like the rest.
gen_zone() {
    awk -v n="$NAMES" -v extra="$2" -v base="$3" -v ttl="$TTL" -v zf="$1" \
        -v hf="$WORK/hit.tmp" -v mf="$WORK/mixed.txt" '
    function fq(i) { return "svc-" i ".ns-" (i % 50) ".svc.cluster.local" }
    function rr(i,  rel) {
        rel = "svc-" i ".ns-" (i % 50) ".svc"
        printf "%s IN A 198.%d.%d.%d\n", rel, 18 + int(i / 65536) % 2, int(i / 256) % 256, i % 256 > zf
        if (i % 5 != 4) printf "%s IN AAAA 2001:db8::%x:%x\n", rel, int(i / 65536), i % 65536 > zf
    }
    BEGIN {
        srand(20241123)
        print "$ORIGIN cluster.local." > zf
        print "$TTL " ttl > zf
        print "@ IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 " ttl > zf
        print "@ IN NS ns.dns.cluster.local." > zf
        print "ns.dns IN A 127.0.0.53" > zf
        for (i = 0; i < n; i++) { rr(i); printf "%.9f %s A\n", rand(), fq(i) > hf }
        for (k = 0; k < n; k++) {
            r = rand()
            if (r < 0.15)      q = "svc-" (n + k) ".ns-" (k % 50) ".svc.cluster.local"
            else if (r < 0.30) { i = int(rand() * n); q = fq(i) ".ns-" (i % 50) ".svc.cluster.local" }
            else               q = fq(int(rand() * n))
            print q, (rand() < 0.5 ? "AAAA" : "A") > mf
        }
        for (j = 0; j < extra; j++) rr(base + j)
    }'
    sort -k1,1 "$WORK/hit.tmp" | cut -d' ' -f2- >"$WORK/hit.txt" && rm -f "$WORK/hit.tmp"
}
# slice FILE FROM COUNT TYPES: query file of names svc-FROM.. svc-(FROM+COUNT-1), each name once
# per type in TYPES ("A" or "A AAAA").
slice() {
    awk -v from="$2" -v cnt="$3" -v types="$4" 'BEGIN {
        nt = split(types, t, " ")
        for (i = from; i < from + cnt; i++) for (k = 1; k <= nt; k++)
            printf "svc-%d.ns-%d.svc.cluster.local %s\n", i, i % 50, t[k]
    }' >"$1"
}

KNOT_PID=""
start_knot() {   # start_knot ZONEFILE
    [[ -n $KNOT_PID ]] && stop "$KNOT_PID"
    local d=$WORK/knot
    rm -rf "$d" && mkdir -p "$d/db" && cp "$1" "$d/cluster.local.zone"
    cat >"$d/knot.conf" <<EOF
server:
    rundir: "$d"
    listen: $UPSTREAM_IP@53
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
database:
    storage: "$d/db"
log:
  - target: stderr
    any: warning
template:
  - id: default
    storage: "$d"
    journal-content: none
    zonefile-sync: -1
    zonefile-load: whole
    semantic-checks: off
zone:
  - domain: cluster.local
    file: cluster.local.zone
EOF
    spawn - "$UPSTREAM_CPU" "$d/knotd.log" knotd -c "$d/knot.conf"
    KNOT_PID=$SPAWNED
    wait_answer "$UPSTREAM_IP" "$CHECK_NAME" "$CHECK_A" "$KNOT_PID" 120 || { tail "$d/knotd.log" >&2; die "knotd does not answer"; }
    log "upstream knotd answers ($(grep -c ' IN ' "$1") records)"
}

# ---------------------------------------------------------------- servers --
# start_server NAME: writes its config, spawns it pinned (in the quota cgroup), waits for an answer.
start_server() {
    local name=$1 ip=${IP[$1]} d=$WORK/$1
    mkdir -p "$d"
    case $name in
        nodedns)
            DNSBENCH_IP=$ip DNSBENCH_PORT=53 DNSBENCH_UPSTREAM=$UPSTREAM_IP:53 DNSBENCH_WORKDIR=$d \
                spawn "$SRV_CG" "$SERVER_CPU" "$d/log" "$HERE/lib/start-nodedns.sh" ;;
        unbound|unbound-tcp)
            # peers.sh's unbound, plus tcp-upstream for the TCP row; caches sized for --memory.
            local tcp=no msg=64m rrset=128m
            [[ $name == unbound-tcp ]] && tcp=yes
            ((MEM_NAMES > 0)) && msg=1g rrset=2g
            cat >"$d/unbound.conf" <<EOF
server:
    interface: $ip
    port: 53
    do-ip6: no
    do-daemonize: no
    username: ""
    chroot: ""
    directory: "$d"
    pidfile: ""
    use-syslog: no
    logfile: ""
    verbosity: 1
    access-control: 127.0.0.0/8 allow
    outgoing-interface: $ip
    do-not-query-localhost: no
    num-threads: 1
    msg-cache-slabs: 1
    rrset-cache-slabs: 1
    infra-cache-slabs: 1
    key-cache-slabs: 1
    msg-cache-size: $msg
    rrset-cache-size: $rrset
    num-queries-per-thread: 4096
    outgoing-range: 8192
    so-reuseport: yes
    so-rcvbuf: 4m
    so-sndbuf: 4m
    module-config: "iterator"
    qname-minimisation: no
    minimal-responses: yes
    prefetch: yes
    domain-insecure: "cluster.local."
    statistics-interval: 0
    tcp-upstream: $tcp
remote-control:
    control-enable: yes
    control-interface: $d/control.sock
    control-use-cert: no
forward-zone:
    name: "."
    forward-addr: $UPSTREAM_IP@53
EOF
            spawn "$SRV_CG" "$SERVER_CPU" "$d/log" unbound -d -c "$d/unbound.conf" ;;
        dnsdist|dnsdist-tcp)
            # peers.sh's dnsdist; the TCP row's backend is TCP-only (dnsdist >= 1.6 `tcpOnly`).
            local tcp=false entries=$((NAMES * 4 > 100000 ? NAMES * 4 : 100000))
            [[ $name == dnsdist-tcp ]] && tcp=true
            cat >"$d/dnsdist.conf" <<EOF
setLocal('$ip:53', { reusePort = true })
setSecurityPollSuffix('')
newServer({ address = '$UPSTREAM_IP:53', name = 'upstream', source = '$ip', tcpOnly = $tcp,
            checkName = 'cluster.local.', checkType = 'SOA', mustResolve = true })
setServerPolicy(firstAvailable)
pc = newPacketCache($entries, { maxTTL = 86400, minTTL = 0, temporaryFailureTTL = 60,
                               staleTTL = 60, dontAge = false })
getPool(''):setCache(pc)
EOF
            spawn "$SRV_CG" "$SERVER_CPU" "$d/log" dnsdist --supervised --disable-syslog -C "$d/dnsdist.conf" ;;
    esac
    PID[$name]=$SPAWNED
    if ! wait_answer "$ip" "$CHECK_NAME" "$CHECK_A" "$SPAWNED" 15; then
        tail -5 "$d/log" >&2
        die "$name does not answer $CHECK_NAME"
    fi
    log "$name up on $ip:53 (pid $SPAWNED)"
}
declare -A PID=()

cpu_ns() {   # CPU ns of every thread of the server's process group
    local p
    for p in $(pgrep -g "$1" 2>/dev/null); do cat /proc/"$p"/task/*/schedstat 2>/dev/null; done | awk '{s += $1} END {printf "%.0f\n", s}'
}
parse_perf() {   # -> qps avg_ms p50_ms p99_ms sent lost rcodes
    awk '
    /^> / { if ($2 != "T" && $2 != "I" && $NF ~ /^[0-9.]+$/) { us = int($NF * 1e6 + 0.5); h[us]++; cnt++; if (us > mx) mx = us }; next }
    /Queries sent:/ { sent = $3 } /Queries lost:/ { lost = $3 }
    /Response codes:/ { sub(/.*Response codes: */, ""); rc = $0; gsub(/ /, "_", rc) }
    /Queries per second:/ { qps = $4 } /Average Latency \(s\):/ { avg = $4 }
    function pct(p,  i, c) { c = 0; for (i = 0; i <= mx; i++) { c += h[i]; if (c >= p * cnt) return sprintf("%.3f", i / 1000) } return "-" }
    END { if (qps == "") { print "-\t-\t-\t-\t-\t-\tno-result"; exit }
          printf "%.0f\t%.3f\t%s\t%s\t%s\t%s\t%s\n", qps, avg * 1000, cnt ? pct(0.5) : "-", cnt ? pct(0.99) : "-", sent, lost, rc }' "$1"
}

RUNS=$WORK/runs.tsv
printf 'server\tworkload\tround\tqps\tavg_ms\tp50_ms\tp99_ms\tsent\tlost\tsrv_pct\tus_per_q\trcodes\n' >"$RUNS"
# measure NAME WORKLOAD ROUND FILE [warm]: one dnsperf run, CPU accounted, a row in $RUNS.
measure() {
    local name=$1 wl=$2 round=$3 file=$4 ip=${IP[$1]} out=$WORK/$1.$2.$3.out rate="" args
    [[ $wl == *@* ]] && rate=${wl#*@}
    if [[ $wl == miss* ]]; then
        args=(-n 1 -l 60)          # each name once; bounded
    else
        quota off
        taskset -c "$LOAD_CPU" dnsperf -s "$ip" -d "$file" -n 1 -l 60 -c 1 -q 50 -t 2 >/dev/null 2>&1   # warm-up
        args=(-l "$DURATION")
    fi
    [[ -n $rate ]] && args+=(-Q "$rate")
    if [[ -n $rate ]]; then quota off; else quota on; fi
    local s0 s1 t0 t1
    # PROFILE=SERVER:WORKLOAD records a CPU profile of that server's measured runs (perf, software
    # clock: this VM has no hardware counters) into $PROFILE_DIR/perf.SERVER.WORKLOAD.ROUND.data.
    local perf_pid=""
    if [[ ${PROFILE:-} == "$name:$wl" ]]; then
        perf record -q -F 4999 -e cpu-clock -g -p "${PID[$name]}" -o "${PROFILE_DIR:-/tmp}/perf.$name.${wl//@/_}.$round.data" >/dev/null 2>&1 &
        perf_pid=$!
        sleep 0.5
    fi
    # SYSCALLS=SERVER:WORKLOAD counts that server's syscalls and context switches during its
    # measured runs (perf stat) into $PROFILE_DIR/syscalls.SERVER.WORKLOAD.ROUND.txt.
    if [[ ${SYSCALLS:-} == "$name:$wl" ]]; then
        local ev=sched:sched_switch
        for sc in recvmmsg sendmmsg sendto recvfrom read write writev epoll_wait futex; do ev+=",syscalls:sys_enter_$sc"; done
        perf stat -e "$ev" -p "${PID[$name]}" -o "${PROFILE_DIR:-/tmp}/syscalls.$name.${wl//@/_}.$round.txt" >/dev/null 2>&1 &
        perf_pid=$!
        sleep 0.5
    fi
    s0=$(cpu_ns "${PID[$name]}"); t0=$(date +%s%N)
    taskset -c "$LOAD_CPU" dnsperf -s "$ip" -d "$file" "${args[@]}" -c "$CLIENTS" -q "$OUTSTANDING" -t 2 -v >"$out" 2>&1
    t1=$(date +%s%N); s1=$(cpu_ns "${PID[$name]}")
    if [[ -n $perf_pid ]]; then kill -INT "$perf_pid"; wait "$perf_pid" 2>/dev/null; fi
    quota off
    local qps avg p50 p99 sent lost rc
    IFS=$'\t' read -r qps avg p50 p99 sent lost rc < <(parse_perf "$out")
    local srv usq
    read -r srv usq < <(awk -v a="$s0" -v b="$s1" -v t0="$t0" -v t1="$t1" -v s="$sent" -v l="$lost" 'BEGIN {
        ans = s - l; printf "%.0f %s\n", 100 * (b - a) / (t1 - t0), (ans > 0) ? sprintf("%.2f", (b - a) / 1000 / ans) : "-" }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$wl" "$round" "$qps" "$avg" "$p50" "$p99" \
        "$sent" "$lost" "$srv" "$usq" "$rc" >>"$RUNS"
    log "r$round $name $wl: qps=$qps avg=${avg}ms p99=${p99}ms lost=$lost srv=$srv% us/q=$usq rcodes=$rc"
    ((KEEP)) || rm -f "$out"
}

summarize() {   # medians per server and workload; lost summed
    awk -F'\t' 'NR == 1 { next }
    { k = $1 "\t" $2; if (!(k in n)) order[++no] = k; c = ++n[k]; for (i = 4; i <= 11; i++) v[k, c, i] = $i; lost[k] += $9 }
    function med(k, col,  m, i, j, t, a) { m = 0; for (i = 1; i <= n[k]; i++) if (v[k, i, col] != "-") a[++m] = v[k, i, col] + 0
        if (!m) return "-"; for (i = 2; i <= m; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
        return (m % 2) ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2 }
    function spread(k,  i, lo, hi, t) { lo = hi = v[k, 1, 4] + 0; for (i = 2; i <= n[k]; i++) { t = v[k, i, 4] + 0; if (t < lo) lo = t; if (t > hi) hi = t }
        return n[k] < 2 ? "-" : sprintf("%.0f", 100 * (hi - lo) / med(k, 4)) }
    END { printf "%-12s %-12s %7s %4s %7s %7s %7s %6s %5s %6s\n", "server", "workload", "qps", "+-%", "avg_ms", "p50_ms", "p99_ms", "lost", "srv%", "us/q"
          for (o = 1; o <= no; o++) { k = order[o]; split(k, kk, "\t")
            printf "%-12s %-12s %7.0f %4s %7.3f %7s %7s %6d %5.0f %6.2f\n", kk[1], kk[2], med(k, 4), spread(k), med(k, 5), med(k, 6), med(k, 7), lost[k], med(k, 10), med(k, 11) } }' "$RUNS"
}

# ------------------------------------------------------------------- main --
START_TS=$(date +%s)
HAVE_SAT=0 HAVE_MISS=0
for w in "${WL_LIST[@]}"; do [[ $w == miss* ]] && HAVE_MISS=1; [[ $w == hit* || $w == mixed* ]] && HAVE_SAT=1; done
NS=${#SRV_LIST[@]}
MISS_BASE=1000000      # miss names start here, far above the hit/mixed names
if ((HAVE_SAT || HAVE_MISS || STARTUPS > 0)); then
    extra=0
    for w in "${WL_LIST[@]}"; do [[ $w == miss* ]] && extra=$((extra + MISS_NAMES * NS * ROUNDS)); done
    log "generating zone: $NAMES names + $extra miss names"
    gen_zone "$WORK/zone" "$extra" "$MISS_BASE"
    start_knot "$WORK/zone"
    for s in "${SRV_LIST[@]}"; do start_server "$s"; done
    slice_no=0
    for ((round = 1; round <= ROUNDS; round++)); do
        for wl in "${WL_LIST[@]}"; do
            [[ -z $wl ]] && continue
            for s in "${SRV_LIST[@]}"; do
                if [[ $wl == miss* ]]; then
                    # Every server and round gets names nobody has asked for yet.
                    f=$WORK/miss.$slice_no.txt
                    types=A
                    [[ $wl == miss-pair ]] && types="A AAAA"
                    slice "$f" $((MISS_BASE + slice_no * MISS_NAMES)) "$MISS_NAMES" "$types"
                    slice_no=$((slice_no + 1))
                    measure "$s" "$wl" "$round" "$f"
                    rm -f "$f"
                else
                    measure "$s" "$wl" "$round" "$WORK/${wl%@*}.txt"
                fi
            done
        done
    done
    if ((STARTUPS > 0)); then
        # Start to ready: from the exec of a fresh nodedns (same config, same knot) to /ready = 200.
        # The answers measured are the first ones; the old instance is stopped first.
        [[ -n ${PID[nodedns]:-} ]] && stop "${PID[nodedns]}"
        d=$WORK/nodedns-start
        mkdir -p "$d"
        : >"$WORK/startup.txt"
        for ((k = 1; k <= STARTUPS; k++)); do
            t0=$(date +%s%N)
            DNSBENCH_IP=${IP[nodedns]} DNSBENCH_PORT=53 DNSBENCH_UPSTREAM=$UPSTREAM_IP:53 DNSBENCH_WORKDIR=$d \
                NODEDNS_LOG_LEVEL=info spawn - "$SERVER_CPU" "$d/log" "$HERE/lib/start-nodedns.sh"
            p=$SPAWNED ready="" answer=""
            for ((i = 0; i < 2000; i++)); do
                if [[ -z $ready && $(curl -s -m 0.5 -o /dev/null -w '%{http_code}' "http://${IP[nodedns]}:9253/ready") == 200 ]]; then
                    ready=$((($(date +%s%N) - t0) / 1000000))
                fi
                if [[ -n $ready ]]; then
                    [[ $(dig_a "${IP[nodedns]}" "$CHECK_NAME") == "$CHECK_A" ]] && answer=$((($(date +%s%N) - t0) / 1000000))
                    break
                fi
                alive "$p" || break
            done
            stop "$p"
            # The daemon's own figure, from its first instruction (excludes the fork/exec of the
            # wrapper and curl's polling interval).
            inner=$(grep -o 'since_start_ms=[0-9]*' "$d/log" 2>/dev/null | tail -1 | cut -d= -f2)
            log "start $k: ready after ${ready:-?} ms (an answer at ${answer:-?} ms; the daemon logged ready at ${inner:-?} ms)"
            echo "${ready:--} ${answer:--} ${inner:--}" >>"$WORK/startup.txt"
        done
    fi
fi

if ((MEM_NAMES > 0)); then
    # Memory per cached name: a zone of MEM_NAMES extra dual-stack names; each name asked for A
    # and AAAA once (uncapped); RSS growth / names. The same query file for nodedns and unbound.
    for s in "${!PID[@]}"; do stop "${PID[$s]}"; unset "PID[$s]"; done
    log "memory run: generating a zone with $MEM_NAMES dual-stack names"
    NAMES=10 gen_zone "$WORK/memzone" 0 0
    awk -v n="$MEM_NAMES" -v zf="$WORK/memzone" 'BEGIN { for (i = 0; i < n; i++) {
        printf "m%d.mem.svc IN A 198.%d.%d.%d\n", i, 18 + int(i / 65536) % 2, int(i / 256) % 256, i % 256 >> zf
        printf "m%d.mem.svc IN AAAA 2001:db8::%x:%x\n", i, int(i / 65536), i % 65536 >> zf } }'
    awk -v n="$MEM_NAMES" 'BEGIN { for (i = 0; i < n; i++) { printf "m%d.mem.svc.cluster.local A\n", i; printf "m%d.mem.svc.cluster.local AAAA\n", i } }' >"$WORK/mem.txt"
    start_knot "$WORK/memzone"
    : >"$WORK/memory.txt"
    for s in nodedns unbound; do
        [[ $s == nodedns ]] && export NODEDNS_CACHE_BYTES=$((4 << 30))
        SRV_CG=- start_server "$s"
        p=${PID[$s]}
        sleep 1
        r0=$(awk '/^VmRSS/ {print $2}' /proc/"$p"/status)
        taskset -c "$LOAD_CPU" dnsperf -s "${IP[$s]}" -d "$WORK/mem.txt" -n 1 -l 600 -c 4 -q 200 -t 5 >"$WORK/mem.$s.out" 2>&1
        sleep 1
        r1=$(awk '/^VmRSS/ {print $2}' /proc/"$p"/status)
        lost=$(awk '/Queries lost:/ {print $3}' "$WORK/mem.$s.out")
        held=""
        if [[ $s == nodedns ]]; then
            held=$(curl -s "http://${IP[nodedns]}:9253/metrics" | awk '/^nodedns_cache_entries / {print $2}')
        else
            held=$(unbound-control -c "$WORK/unbound/unbound.conf" stats_noreset 2>/dev/null | awk -F= '/^msg.cache.count/ {m=$2} /^rrset.cache.count/ {r=$2} END {print "msg=" m ",rrset=" r}')
        fi
        per=$(awk -v a="$r0" -v b="$r1" -v n="$MEM_NAMES" 'BEGIN { printf "%.0f", (b - a) * 1024 / n }')
        log "memory $s: RSS ${r0} kB -> ${r1} kB for $MEM_NAMES names: $per bytes per name (lost $lost; held $held)"
        echo "$s $MEM_NAMES $r0 $r1 $per ${lost:-?} $held" >>"$WORK/memory.txt"
        stop "$p"
        unset "PID[$s]"
    done
fi

{
    echo
    echo "== nodedns harness: $(nproc --all) CPUs ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), kernel $(uname -r), $(date -u +%FT%TZ), $(($(date +%s) - START_TS)) s"
    echo "== servers on CPU $SERVER_CPU (capped at $QUOTA% in saturation and miss runs), dnsperf on CPU $LOAD_CPU, knotd on CPU $UPSTREAM_CPU; private netns"
    echo "== dnsperf -c $CLIENTS -q $OUTSTANDING -t 2 -v; hit/mixed: -l $DURATION after a warm-up pass; miss: -n 1 over $MISS_NAMES new names per server and round (miss: A; miss-pair: A then AAAA)"
    if (($(wc -l <"$RUNS") > 1)); then echo; summarize; fi
    if [[ -s $WORK/startup.txt ]]; then
        echo
        r=$(awk '{print $1}' "$WORK/startup.txt" | sort -n | awk '{ v[NR] = $1 } END { printf "median %s ms, max %s ms", v[int((NR + 1) / 2)], v[NR] }')
        a=$(awk '{print $2}' "$WORK/startup.txt" | sort -n | awk '{ v[NR] = $1 } END { printf "median %s ms", v[int((NR + 1) / 2)] }')
        i=$(awk '{print $3}' "$WORK/startup.txt" | sort -n | awk '{ v[NR] = $1 } END { printf "median %s ms, max %s ms", v[int((NR + 1) / 2)], v[NR] }')
        echo "start-to-ready (exec -> /ready 200) over $(wc -l <"$WORK/startup.txt") starts: $r; first answer after ready: $a"
        echo "start-to-ready as the daemon logs it (main() -> first upstream answer): $i; all: $(awk '{printf "%s ", $3}' "$WORK/startup.txt")"
    fi
    if [[ -s $WORK/memory.txt ]]; then
        echo
        echo "memory: server names rss_before_kB rss_after_kB bytes_per_name lost held"
        cat "$WORK/memory.txt"
    fi
} | tee "$WORK/table.txt"
[[ -n $CSV ]] && cp "$RUNS" "$CSV" && cp "$WORK/table.txt" "$CSV.table"
exit 0
