#!/usr/bin/env bash
# tcpmuxd's forward and pass launchers next to the tools people use to put
# several services behind one port, on loopback:
#   forward   tcpmuxd (launcher = "forward"), HAProxy (mode tcp, option
#             splice-auto) and sslh (sslh-select --anyprot), each relaying
#             to the same zero-copy echo backend:
#               - connection rate: connect, (the name and '+' for tcpmuxd),
#                 one line echoed, EOF, close; at 1, 8 and 32 clients; and
#                 the CPU each connection costs the client, the relay and
#                 the backend (where a shortfall in rate comes from)
#               - bulk: BULK_MIB each way through one pair, then through 8
#                 pairs at once (BULK_MIB each), checked byte by byte; and
#                 each relay's CPU per GiB relayed (both directions counted)
#   pass      tcpmuxd (launcher = "pass") handing each connection to a
#             running receiver, at 1, 8 and 32 clients:
#               - against tcpmuxd's own HELP, the same exchange: name, a
#                 reply, EOF (the receiver writes one line and closes)
#               - against the exec dispatch floor (posix_spawn of /bin/cat),
#                 the same exchange: name, '+', one line echoed, EOF (the
#                 receiver echoes)
#               - the CPU and the median latency of each dispatch, next to
#                 HELP's and the floor's
# and prints one table of medians with the ratios the targets are set in.
#
#   sudo bench/relay.sh
#
# HAProxy and sslh come from Debian's packages (installed if missing) and
# run in the foreground with configurations of their own, never as
# services. Settings (environment):
#   ROUNDS=3 CELL_SECONDS=3 CLIENTS="1 8 32"   rounds, cell length, clients
#   BULK_MIB=1024                              MiB each way per pair
#   PORT_BASE=17600                            loopback ports PORT_BASE+1 .. +5
#   TIME_LIMIT=1500                            seconds before the run is stopped
#   KEEP_WORK=1                                keep the scratch directory
set -euo pipefail

if [ -z "${TCPMUX_BENCH_TIMED:-}" ]; then
    export TCPMUX_BENCH_TIMED=1
    exec timeout --foreground "${TIME_LIMIT:-1500}" "$0" "$@"
fi

say() { printf '%s\n' "$*" >&2; }
die() { say "relay.sh: $*"; exit 1; }

ROUNDS=${ROUNDS:-3}
CELL_SECONDS=${CELL_SECONDS:-3}
CLIENTS=${CLIENTS:-1 8 32}
BULK_MIB=${BULK_MIB:-1024}
PORT_BASE=${PORT_BASE:-17600}
BENCH_DIR=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)

[ "$(id -u)" = 0 ] || die "run as root (the peers' packages, tcpmuxd's services as root)"
missing=()
command -v haproxy >/dev/null || missing+=(haproxy)
command -v sslh-select >/dev/null || missing+=(sslh)
if [ ${#missing[@]} -gt 0 ]; then
    say "== installing ${missing[*]} from Debian's packages"
    DEBIAN_FRONTEND=noninteractive apt-get -qq install -y --no-install-recommends "${missing[@]}" \
        >/dev/null || die "cannot install ${missing[*]}"
fi
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/tcpmux-relay.XXXXXX")
chmod 755 "$WORK"
PIDS=()
cleanup() {
    local status=$? pid
    trap - EXIT INT TERM HUP
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    if [ -n "${KEEP_WORK:-}" ]; then say "relay.sh: scratch directory kept: $WORK"; else rm -rf "$WORK"; fi
    exit "$status"
}
trap cleanup EXIT
trap 'say "relay.sh: stopped by a signal"; exit 130' INT TERM HUP

say "== building tcpmuxd and the benchmark (release)"
CARGO_TARGET_DIR=$REPO/target cargo build --quiet --release --locked \
    --manifest-path "$REPO/Cargo.toml" --bin tcpmuxd
CARGO_TARGET_DIR=$BENCH_DIR/target cargo build --quiet --release --locked \
    --manifest-path "$BENCH_DIR/Cargo.toml"
TCPMUXD=$REPO/target/release/tcpmuxd
BIN=$BENCH_DIR/target/release
BENCH=$BIN/tcpmux-bench

P_BACKEND=127.0.0.1:$((PORT_BASE + 1))
P_TCPMUXD=127.0.0.1:$((PORT_BASE + 2))
P_HAPROXY=127.0.0.1:$((PORT_BASE + 3))
P_SSLH=127.0.0.1:$((PORT_BASE + 4))
P_FLOOR=127.0.0.1:$((PORT_BASE + 5))
"$BENCH" free "$P_BACKEND" "$P_TCPMUXD" "$P_HAPROXY" "$P_SSLH" "$P_FLOOR" ||
    die "ports $((PORT_BASE + 1))-$((PORT_BASE + 5)) are not free: set PORT_BASE"
PASS_SOCKET=$WORK/pass.sock
GREET_SOCKET=$WORK/greet.sock

# The limits that protect tcpmuxd from one hostile source are raised out of
# the way: all the load comes from one client address, on purpose.
cat >"$WORK/tcpmuxd.toml" <<CONFIG
[tcpmux]
listen = ["$P_TCPMUXD"]
default_user = "root"
name_timeout = "2m"
max_handshakes = 100000
max_handshakes_per_source = 100000
max_sessions = 100000
max_sessions_per_source = 100000

[[service]]
name = "date"
command = ["/bin/date"]

[[service]]
name = "fwd"
launcher = "forward"
forward = "$P_BACKEND"
max_instances = 100000
max_instances_per_source = 100000
max_starts_per_second = 1000000

[[service]]
name = "app"
launcher = "pass"
pass = "$PASS_SOCKET"
max_instances = 100000
max_instances_per_source = 100000
max_starts_per_second = 1000000

[[service]]
name = "greet"
launcher = "pass"
pass = "$GREET_SOCKET"
max_instances = 100000
max_instances_per_source = 100000
max_starts_per_second = 1000000
CONFIG

cat >"$WORK/haproxy.cfg" <<CONFIG
global
    maxconn 4000
defaults
    mode tcp
    option splice-auto
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend relay
    bind $P_HAPROXY
    default_backend echo
backend echo
    server b1 $P_BACKEND
CONFIG

declare -A PID_OF
start() {
    local name=$1
    shift
    "$@" >"$WORK/$name.log" 2>&1 &
    PIDS+=("$!")
    PID_OF[$name]=$!
}
start backend "$BIN/echo-backend" tcp "$P_BACKEND"
start receiver "$BIN/echo-backend" pass "$PASS_SOCKET"
start greeter "$BIN/echo-backend" greet "$GREET_SOCKET"
"$BENCH" wait "$P_BACKEND"
for _ in $(seq 50); do [ -S "$PASS_SOCKET" ] && [ -S "$GREET_SOCKET" ] && break; sleep 0.1; done
"$TCPMUXD" --config "$WORK/tcpmuxd.toml" --check >/dev/null ||
    die "tcpmuxd rejects the benchmark configuration"
start tcpmuxd "$TCPMUXD" --config "$WORK/tcpmuxd.toml" --log-target stderr --log-level warn
start haproxy haproxy -db -f "$WORK/haproxy.cfg"
start sslh sslh-select -f -n -p "$P_SSLH" --anyprot "$P_BACKEND" -u nobody
start floor "$BIN/floor-dispatch" "$P_FLOOR"
for addr in "$P_TCPMUXD" "$P_HAPROXY" "$P_SSLH" "$P_FLOOR"; do "$BENCH" wait "$addr"; done

# Each relay's address, and the service to name (tcpmuxd only).
declare -A RELAY_AT=([tcpmuxd]=$P_TCPMUXD [haproxy]=$P_HAPROXY [sslh]=$P_SSLH)
declare -A RELAY_NAME=([tcpmuxd]=fwd [haproxy]= [sslh]=)
RELAYS=(tcpmuxd haproxy sslh)
relay() { # subcommand, relay, arguments...
    local cmd=$1 r=$2
    shift 2
    local name=()
    [ -z "${RELAY_NAME[$r]}" ] || name=("${RELAY_NAME[$r]}")
    "$BENCH" "$cmd" "${RELAY_AT[$r]}" "${name[@]}" "$@"
}
say "== checking every server answers"
for r in "${RELAYS[@]}"; do
    relay echo "$r" --once || die "$r: forwarding fails (logs: $WORK)"
done
"$BENCH" dispatch "$P_TCPMUXD" app --once || die "tcpmuxd: pass fails (logs: $WORK)"
"$BENCH" greet "$P_TCPMUXD" greet --once || die "tcpmuxd: pass fails (logs: $WORK)"
"$BENCH" dispatch "$P_FLOOR" echo --once || die "the dispatch floor fails"
"$BENCH" help "$P_TCPMUXD" --once || die "tcpmuxd: HELP fails"

RESULTS=$WORK/results.tsv
: >"$RESULTS"
rotate() { # round, items...: the items, starting with a different one each round
    local round=$1 i
    shift
    local all=("$@")
    for ((i = 0; i < $#; i++)); do printf '%s\n' "${all[(i + round) % $#]}"; done
}
say "== load: $ROUNDS rounds"
for ((round = 0; round < ROUNDS; round++)); do
    for c in $CLIENTS; do
        for r in $(rotate "$round" "${RELAYS[@]}"); do
            relay echo "$r" --concurrency "$c" --seconds "$CELL_SECONDS" --label "$r" \
                --pid "${PID_OF[$r]}" --backend-pid "${PID_OF[backend]}" >>"$RESULTS"
        done
        for way in $(rotate "$round" pass greet help floor); do
            case $way in
            pass) op=(dispatch "$P_TCPMUXD" app --pid "${PID_OF[tcpmuxd]}" --backend-pid "${PID_OF[receiver]}") ;;
            greet) op=(greet "$P_TCPMUXD" greet --pid "${PID_OF[tcpmuxd]}" --backend-pid "${PID_OF[greeter]}") ;;
            help) op=(help "$P_TCPMUXD" --pid "${PID_OF[tcpmuxd]}") ;;
            floor) op=(dispatch "$P_FLOOR" echo --pid "${PID_OF[floor]}") ;;
            esac
            "$BENCH" "${op[@]}" --concurrency "$c" --seconds "$CELL_SECONDS" --label "$way" >>"$RESULTS"
        done
    done
    for pairs in 1 8; do
        for r in $(rotate "$round" "${RELAYS[@]}"); do
            relay bulk "$r" --mib "$BULK_MIB" --pairs "$pairs" --pid "${PID_OF[$r]}" \
                --label "$r" >>"$RESULTS"
        done
    done
done
for pid in "${PIDS[@]}"; do
    kill -0 "$pid" 2>/dev/null || say "relay.sh: warning: a server died during the run (logs: $WORK)"
done

echo "tcpmuxd $(git -C "$REPO" describe --always --dirty 2>/dev/null || echo '(no git)')," \
    "$(haproxy -v | head -n 1 | cut -d' ' -f1-3), sslh $(sslh-select -V 2>&1 | head -n 1 | awk '{print $2}')," \
    "$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $ROUNDS rounds of ${CELL_SECONDS}s, bulk $BULK_MIB MiB"
echo
# Records: test, clients, label, value, p50, p99, errors. Medians over
# the rounds; the errors summed.
awk -F'\t' -v clients="$CLIENTS" '
    # CPU records are told apart by whose CPU they count (the note).
    { label = ($1 ~ /-cpu$/ && $8 != "") ? $3 "/" $8 : $3
      key = $1 "\t" $2 "\t" label; n = ++count[key]; v[key, n] = $4; lat[key, n] = $5; err[$1 "\t" $2] += $7 }
    # The median over the rounds of the values (v) or p50s (lat) of a cell.
    function median(values, test, c, label,   key, n, i, j, t, a) {
        key = test "\t" c "\t" label; n = count[key]
        if (n == 0) return 0
        for (i = 1; i <= n; i++) a[i] = values[key, i]
        for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
        return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    function med(test, c, label) { return median(v, test, c, label) }
    # The median p50 latency of a cell, in microseconds.
    function medlat(test, c, label) { return median(lat, test, c, label) }
    function ratio(a, b) { return b ? sprintf("%.2fx", a / b) : "-" }
    # CPU microseconds per operation: the client, the server, the daemon
    # behind it (when there is one), and their sum.
    function cpu(test, c, label,   k, s, b) {
        k = med(test "-cpu", c, label "/client"); s = med(test "-cpu", c, label "/server")
        b = med(test "-cpu", c, label "/backend")
        return b ? sprintf("%.0f + %.0f + %.0f = %.0f", k, s, b, k + s + b) : sprintf("%.0f + %.0f = %.0f", k, s, k + s)
    }
    function plural(n, word) { return n " " word (n == 1 ? "" : "s") }
    END {
        nc = split(clients, cs, " ")
        print "| forward: connections/s | tcpmuxd | HAProxy | sslh | tcpmuxd / sslh (target 1.2x) | tcpmuxd / HAProxy (target 0.8x) | errors |"
        print "|---|---|---|---|---|---|---|"
        for (i = 1; i <= nc; i++) {
            c = cs[i]; t = med("echo", c, "tcpmuxd"); h = med("echo", c, "haproxy"); s = med("echo", c, "sslh")
            printf "| %s | %.0f/s | %.0f/s | %.0f/s | %s | %s | %d |\n", plural(c, "client"), t, h, s, ratio(t, s), ratio(t, h), err["echo\t" c]
        }
        print ""
        print "| forward: CPU us per connection, client + relay + backend | tcpmuxd | HAProxy | sslh |"
        print "|---|---|---|---|"
        for (i = 1; i <= nc; i++) {
            c = cs[i]
            printf "| %s | %s | %s | %s |\n", plural(c, "client"), cpu("echo", c, "tcpmuxd"), cpu("echo", c, "haproxy"), cpu("echo", c, "sslh")
        }
        print ""
        print "| forward: bulk, MiB/s each way | tcpmuxd | HAProxy (splice-auto) | sslh | tcpmuxd / HAProxy (target 1.0x) | tcpmuxd / sslh (target 1.5x) | errors |"
        print "|---|---|---|---|---|---|---|"
        for (p = 1; p <= 8; p += 7) {
            t = med("bulk", p, "tcpmuxd"); h = med("bulk", p, "haproxy"); s = med("bulk", p, "sslh")
            printf "| %s | %.0f | %.0f | %.0f | %s | %s | %d |\n", plural(p, "pair"), t, h, s, ratio(t, h), ratio(t, s), err["bulk\t" p]
        }
        print ""
        print "| forward: CPU ms per GiB relayed | tcpmuxd | HAProxy | sslh |"
        print "|---|---|---|---|"
        for (p = 1; p <= 8; p += 7)
            printf "| %s | %.0f | %.0f | %.0f |\n", plural(p, "pair"), med("bulk-cpu", p, "tcpmuxd"), med("bulk-cpu", p, "haproxy"), med("bulk-cpu", p, "sslh")
        print ""
        print "| pass: dispatches/s | pass, one line and EOF | tcpmuxd HELP | pass / HELP (target 0.8x) | pass, a line echoed | exec floor, a line echoed | pass / floor (target 10x) | errors |"
        print "|---|---|---|---|---|---|---|---|"
        for (i = 1; i <= nc; i++) {
            c = cs[i]; g = med("greet", c, "greet"); h = med("help", c, "help")
            p = med("dispatch", c, "pass"); f = med("dispatch", c, "floor")
            printf "| %s | %.0f/s | %.0f/s | %s | %.0f/s | %.0f/s | %s | %d |\n", plural(c, "client"), g, h, ratio(g, h), p, f, ratio(p, f), err["dispatch\t" c] + err["help\t" c] + err["greet\t" c]
        }
        print ""
        print "| pass: per dispatch | pass, one line and EOF: CPU us, client + tcpmuxd + receiver | p50 | tcpmuxd HELP: CPU us, client + tcpmuxd | p50 | exec floor: CPU us, client + floor | p50 |"
        print "|---|---|---|---|---|---|---|"
        for (i = 1; i <= nc; i++) {
            c = cs[i]
            printf "| %s | %s | %.0f us | %s | %.0f us | %s | %.0f us |\n", plural(c, "client"), cpu("greet", c, "greet"), medlat("greet", c, "greet"), cpu("help", c, "help"), medlat("help", c, "help"), cpu("dispatch", c, "floor"), medlat("dispatch", c, "floor")
        }
    }' "$RESULTS"
# What went wrong, where anything did: the records with errors, whole.
if awk -F'\t' '$7 > 0 { found = 1 } END { exit !found }' "$RESULTS"; then
    echo
    echo "Records with errors (test, clients, server, value, p50, p99, errors, note):"
    awk -F'\t' '$7 > 0' "$RESULTS"
fi
