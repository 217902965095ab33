#!/usr/bin/env bash
# tcpmuxd behind HAProxy: what the balancer costs, and what the PROXY
# protocol header costs on top of it. HELP and dispatch to /bin/cat, each
# measured three ways in alternating cells on loopback:
#   direct       client -> tcpmuxd
#   haproxy      client -> HAProxy (mode tcp) -> tcpmuxd, no header
#                (both frontends as README's: HAProxy connects to tcpmuxd once
#                the client has sent its first bytes)
#   haproxy-v2   client -> HAProxy (mode tcp, send-proxy-v2) -> tcpmuxd,
#                which trusts HAProxy's source address
# and prints a table of medians and the ratios haproxy-v2 / haproxy (the
# header's cost; target for HELP: at least 0.95) and haproxy / direct.
#
#   sudo bench/balancer.sh
#
# HAProxy comes from Debian's package (installed if missing); it is run in
# the foreground with a configuration of its own, never as a service.
# Settings (environment):
#   ROUNDS=5 CELL_SECONDS=2 CLIENTS="1 8"   rounds, cell length, concurrencies
#   PORT_BASE=17400                          loopback ports PORT_BASE+1 .. +3
#   TIME_LIMIT=600                           seconds before the run is stopped
#   KEEP_WORK=1                              keep the scratch directory
set -euo pipefail

if [ -z "${TCPMUX_BENCH_TIMED:-}" ]; then
    export TCPMUX_BENCH_TIMED=1
    exec timeout --foreground "${TIME_LIMIT:-600}" "$0" "$@"
fi

say() { printf '%s\n' "$*" >&2; }
die() { say "balancer.sh: $*"; exit 1; }

ROUNDS=${ROUNDS:-5}
CELL_SECONDS=${CELL_SECONDS:-2}
CLIENTS=${CLIENTS:-1 8}
PORT_BASE=${PORT_BASE:-17400}
BENCH_DIR=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)

[ "$(id -u)" = 0 ] || die "run as root (HAProxy's package, tcpmuxd's services as root)"
if ! command -v haproxy >/dev/null; then
    say "== installing HAProxy from Debian's package"
    DEBIAN_FRONTEND=noninteractive apt-get -qq install -y --no-install-recommends haproxy \
        >/dev/null || die "cannot install haproxy"
fi
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/tcpmux-balancer.XXXXXX")
PIDS=()
cleanup() {
    local status=$? pid
    trap - EXIT INT TERM HUP
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    if [ -n "${KEEP_WORK:-}" ]; then say "balancer.sh: scratch directory kept: $WORK"; else rm -rf "$WORK"; fi
    exit "$status"
}
trap cleanup EXIT
trap 'say "balancer.sh: stopped by a signal"; exit 130' INT TERM HUP

say "== building tcpmuxd and the benchmark (release)"
CARGO_TARGET_DIR=$REPO/target cargo build --quiet --release --locked \
    --manifest-path "$REPO/Cargo.toml" --bin tcpmuxd
CARGO_TARGET_DIR=$BENCH_DIR/target cargo build --quiet --release --locked \
    --manifest-path "$BENCH_DIR/Cargo.toml" --bin tcpmux-bench
TCPMUXD=$REPO/target/release/tcpmuxd
BENCH=$BENCH_DIR/target/release/tcpmux-bench

# tcpmuxd on 127.0.0.1; HAProxy reaches it from 127.0.0.3 without a header
# (an untrusted address) and from 127.0.0.2 with one (trusted).
P_TCPMUXD=127.0.0.1:$((PORT_BASE + 1))
P_PLAIN=127.0.0.1:$((PORT_BASE + 2))
P_V2=127.0.0.1:$((PORT_BASE + 3))
"$BENCH" free "$P_TCPMUXD" "$P_PLAIN" "$P_V2" ||
    die "ports $((PORT_BASE + 1))-$((PORT_BASE + 3)) are not free: set PORT_BASE"

# The limits that protect tcpmuxd from one hostile source are raised out of
# the way: all the load comes from one client address, on purpose.
cat >"$WORK/tcpmuxd.toml" <<EOF
[tcpmux]
listen = ["$P_TCPMUXD"]
default_user = "root"
trusted_proxies = ["127.0.0.2/32"]
name_timeout = "2m"
max_handshakes = 100000
max_handshakes_per_source = 100000
max_sessions = 100000

[[service]]
name = "date"
command = ["/bin/date"]
max_instances = 100000
max_starts_per_second = 1000000

[[service]]
name = "echo"
command = ["/bin/cat"]
max_instances = 100000
max_starts_per_second = 1000000
EOF

cat >"$WORK/haproxy.cfg" <<EOF
global
    maxconn 8000
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend plain
    bind $P_PLAIN
    tcp-request inspect-delay 10s
    tcp-request content accept if { req.len gt 0 }
    default_backend tcpmuxd-plain
frontend v2
    bind $P_V2
    tcp-request inspect-delay 10s
    tcp-request content accept if { req.len gt 0 }
    default_backend tcpmuxd-v2
backend tcpmuxd-plain
    server t1 $P_TCPMUXD source 127.0.0.3
backend tcpmuxd-v2
    server t1 $P_TCPMUXD source 127.0.0.2 send-proxy-v2
EOF

"$TCPMUXD" --config "$WORK/tcpmuxd.toml" --check >/dev/null ||
    die "tcpmuxd rejects the benchmark configuration"
"$TCPMUXD" --config "$WORK/tcpmuxd.toml" --log-target stderr --log-level warn \
    >"$WORK/tcpmuxd.log" 2>&1 &
PIDS+=("$!")
haproxy -q -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 &
PIDS+=("$!")
for addr in "$P_TCPMUXD" "$P_PLAIN" "$P_V2"; do "$BENCH" wait "$addr"; done

declare -A AT=([direct]=$P_TCPMUXD [haproxy]=$P_PLAIN [haproxy-v2]=$P_V2)
WAYS=(direct haproxy haproxy-v2)
for way in "${WAYS[@]}"; do
    "$BENCH" help "${AT[$way]}" --once || die "$way: HELP fails (logs: $WORK)"
    "$BENCH" dispatch "${AT[$way]}" echo --once || die "$way: dispatch fails (logs: $WORK)"
done

RESULTS=$WORK/results.tsv
: >"$RESULTS"
say "== load: $ROUNDS rounds of cells of ${CELL_SECONDS}s"
for ((round = 0; round < ROUNDS; round++)); do
    for test in help dispatch; do
        for c in $CLIENTS; do
            for ((i = 0; i < ${#WAYS[@]}; i++)); do
                way=${WAYS[(i + round) % ${#WAYS[@]}]}
                extra=()
                [ "$test" = dispatch ] && extra=(echo)
                "$BENCH" "$test" "${AT[$way]}" "${extra[@]}" --concurrency "$c" \
                    --seconds "$CELL_SECONDS" --label "$way" >>"$RESULTS"
            done
        done
    done
done
for pid in "${PIDS[@]}"; do
    kill -0 "$pid" 2>/dev/null || say "balancer.sh: warning: a server died during the run (logs: $WORK)"
done

echo "tcpmuxd $(git -C "$REPO" describe --always --dirty 2>/dev/null || echo '(no git)')," \
    "$(haproxy -v | head -n 1 | cut -d' ' -f1-3), $(date -u +%Y-%m-%dT%H:%MZ)," \
    "$(nproc) cores, $ROUNDS rounds of ${CELL_SECONDS}s"
echo
# Records: test, clients, label, rate/s, p50 us, p99 us, errors. Medians
# over the rounds; the errors summed.
awk -F'\t' '
    { key = $1 "\t" $2; n = ++count[key, $3]; rate[key, $3, n] = $4; err[key, $3] += $7
      keys[key] = 1 }
    function median(key, way,   n, i, j, t, v) {
        n = count[key, way]
        if (n == 0) return 0
        for (i = 1; i <= n; i++) v[i] = rate[key, way, i]
        for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
        return (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
    }
    END {
        print "| figure | direct | through HAProxy | through HAProxy, PROXY v2 | v2 / HAProxy | HAProxy / direct | errors |"
        print "|---|---|---|---|---|---|---|"
        for (key in keys) {
            split(key, k, "\t")
            d = median(key, "direct"); p = median(key, "haproxy"); v = median(key, "haproxy-v2")
            what = (k[1] == "help") ? "HELP handshakes/s" : "dispatch to /bin/cat/s"
            printf "| %s, %s client%s | %.0f/s | %.0f/s | %.0f/s | %.2fx | %.2fx | %d |\n", \
                what, k[2], (k[2] == 1 ? "" : "s"), d, p, v, (p ? v / p : 0), (d ? p / d : 0), \
                err[key, "direct"] + err[key, "haproxy"] + err[key, "haproxy-v2"]
        }
    }' "$RESULTS" | { read -r head; read -r rule; echo "$head"; echo "$rule"; sort; }
