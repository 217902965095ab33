#!/usr/bin/env bash
# Benchmarks tcpmuxd side by side with xinetd, inetutils-inetd and the
# minimal floors, all on loopback, and prints one table (BENCHMARKS.md).
#
#   sudo bench/run.sh
#   sudo bench/run.sh --quick
#
# --quick is the check to run before resolving a change to the connection
# path or a launcher, about a minute once built: tcpmuxd and the floors
# only (no peers, no MSP, no memory figures), HELP and dispatch at 4
# clients each, 7 rounds of 2 s, and a short table of tcpmuxd / floor (and
# tcpmuxd / before with BASELINE). The settings below still apply.
#
# Root is needed to install the peers' libraries and to give
# inetutils-inetd a private /etc/services (its TCPMUX port comes from
# there). The peers are unpacked from Debian's packages into a scratch
# directory, never installed as services. Every server started here is
# stopped on exit, whatever the exit.
#
# Settings (environment; the --quick defaults in brackets):
#   ROUNDS=3 [7]             rounds; each figure is the median over them
#   CELL_SECONDS=3 [2]       length of one measurement
#   HELP_CLIENTS="1 8 64" [4]
#                            concurrencies for HELP
#   DISPATCH_CLIENTS="1 8 32" [4]
#   MSP_CLIENTS="1 16" [none]
#   HELD=5000                silent connections held for the memory figure
#   PORT_BASE=17100          loopback ports PORT_BASE+1 .. PORT_BASE+9
#   BASELINE=PATH            an earlier tcpmuxd binary, measured in the same
#                            cells as "tcpmuxd-before": a change to the
#                            connection path against what it changes
#   DEFER_ACCEPT=DURATION    tcpmuxd's [tcpmux] defer_accept (TCP_DEFER_ACCEPT on its
#                            listener; unset: off). Leave it unset for the memory
#                            figure: its silent connections would wait in the kernel
#   RELAY=1 [0]              then bench/relay.sh: the forward and pass launchers
#                            against HAProxy, sslh, HELP and the exec floor
#                            (RELAY=0 leaves it out; its settings apply)
#   TIME_LIMIT=2400 [900]    seconds before the whole run is stopped
#   KEEP_WORK=1              keep the scratch directory (logs, raw records)
set -euo pipefail

# The whole run, builds included, is bounded: on expiry the script gets
# SIGTERM and its trap stops the servers.
if [ -z "${TCPMUX_BENCH_TIMED:-}" ]; then
    export TCPMUX_BENCH_TIMED=1
    if [ "${1:-}" = --quick ]; then limit=${TIME_LIMIT:-900}; else limit=${TIME_LIMIT:-2400}; fi
    exec timeout --foreground "$limit" "$0" "$@"
fi

say() { printf '%s\n' "$*" >&2; }
die() { say "run.sh: $*"; exit 1; }

QUICK=
case "$#:${1:-}" in
0:) ;;
1:--quick) QUICK=1 ;;
*) die "usage: bench/run.sh [--quick]" ;;
esac

# --quick: one concurrency each, more than the cores, so that what a
# session costs in CPU shows; rounds enough for a median that holds.
if [ -n "$QUICK" ]; then
    ROUNDS=${ROUNDS:-7}
    CELL_SECONDS=${CELL_SECONDS:-2}
    HELP_CLIENTS=${HELP_CLIENTS:-4}
    DISPATCH_CLIENTS=${DISPATCH_CLIENTS:-4}
fi
ROUNDS=${ROUNDS:-3}
CELL_SECONDS=${CELL_SECONDS:-3}
HELP_CLIENTS=${HELP_CLIENTS:-1 8 64}
DISPATCH_CLIENTS=${DISPATCH_CLIENTS:-1 8 32}
MSP_CLIENTS=${MSP_CLIENTS:-1 16}
HELD=${HELD:-5000}
PORT_BASE=${PORT_BASE:-17100}
BASELINE=${BASELINE:-}
DEFER_ACCEPT=${DEFER_ACCEPT:-}

BENCH_DIR=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
LOOPBACK=127.0.0.1

# Root in both modes, so that the quick figures are those of the full run:
# tcpmuxd as root, its services' user = "root".
[ "$(id -u)" = 0 ] || die "run as root (peers' libraries, private /etc/services)"
tools=(cargo timeout)
[ -n "$QUICK" ] || tools+=(apt-get dpkg unshare)
for tool in "${tools[@]}"; do
    command -v "$tool" >/dev/null || die "$tool is needed"
done

# Thousands of connections held at once need as many descriptors, in the
# servers (which inherit this limit) and in the client.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/tcpmux-bench.XXXXXX")
PIDS=()

cleanup() {
    local status=$?
    trap - EXIT INT TERM HUP
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    done
    if [ -n "${KEEP_WORK:-}" ]; then
        say "run.sh: scratch directory kept: $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'say "run.sh: stopped by a signal"; exit 130' INT TERM HUP

# ---- the peers, from Debian's packages -----------------------------------

apt_get() { DEBIAN_FRONTEND=noninteractive apt-get -o APT::Sandbox::User=root -qq "$@"; }

install_peers() {
    # Their shared libraries are installed; the daemons themselves are only
    # unpacked, so no service of theirs is set up or started.
    local libs=(libwrap0 libtirpc3) missing=() lib
    for lib in "${libs[@]}"; do
        [ "$(dpkg-query -W -f='${Status}' "$lib" 2>/dev/null)" = "install ok installed" ] ||
            missing+=("$lib")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        apt_get install -y --no-install-recommends "${missing[@]}" >/dev/null ||
            { apt_get update && apt_get install -y --no-install-recommends "${missing[@]}" >/dev/null; }
    fi
    mkdir -p "$WORK/debs" "$WORK/peers"
    (cd "$WORK/debs" && { apt_get download xinetd inetutils-inetd ||
        { apt_get update && apt_get download xinetd inetutils-inetd; }; })
    local deb
    for deb in "$WORK"/debs/*.deb; do
        dpkg -x "$deb" "$WORK/peers"
    done
    XINETD=$WORK/peers/usr/sbin/xinetd
    INETD=$WORK/peers/usr/sbin/inetutils-inetd
    if [ ! -x "$XINETD" ] || [ ! -x "$INETD" ]; then
        die "the peers' packages did not unpack"
    fi
}

if [ -z "$QUICK" ]; then
    say "== peers: xinetd and inetutils-inetd from Debian's packages"
    install_peers
fi

# ---- builds ----------------------------------------------------------------

say "== building tcpmuxd and the benchmark (release)"
CARGO_TARGET_DIR=$REPO/target cargo build --quiet --release --locked \
    --manifest-path "$REPO/Cargo.toml" --bin tcpmuxd
CARGO_TARGET_DIR=$BENCH_DIR/target cargo build --quiet --release --locked \
    --manifest-path "$BENCH_DIR/Cargo.toml"
TCPMUXD=$REPO/target/release/tcpmuxd
BIN=$BENCH_DIR/target/release
BENCH=$BIN/tcpmux-bench

# ---- configuration: the same services everywhere ----------------------------
# echo: plus mode, /bin/cat (the dispatch figure); date: plus mode,
# /bin/date (so that HELP lists more than one name).

P_TCPMUXD=$LOOPBACK:$((PORT_BASE + 1))
P_TCPMUXD_MSP=$LOOPBACK:$((PORT_BASE + 2))
P_XINETD=$LOOPBACK:$((PORT_BASE + 3))
P_INETD=$LOOPBACK:$((PORT_BASE + 4))
P_FLOOR_HELP=$LOOPBACK:$((PORT_BASE + 5))
P_FLOOR_DISPATCH=$LOOPBACK:$((PORT_BASE + 6))
P_FLOOR_MSP=$LOOPBACK:$((PORT_BASE + 7))
P_BEFORE=$LOOPBACK:$((PORT_BASE + 8))
P_BEFORE_MSP=$LOOPBACK:$((PORT_BASE + 9))
if [ -n "$BASELINE" ]; then
    [ -x "$BASELINE" ] || die "BASELINE=$BASELINE is not an executable"
    "$BENCH" free "$P_BEFORE" "$P_BEFORE_MSP" ||
        die "ports $((PORT_BASE + 8))-$((PORT_BASE + 9)) are not free: set PORT_BASE"
fi
if [ -n "$QUICK" ]; then
    "$BENCH" free "$P_TCPMUXD" "$P_TCPMUXD_MSP" "$P_FLOOR_HELP" "$P_FLOOR_DISPATCH"
else
    "$BENCH" free "$P_TCPMUXD" "$P_TCPMUXD_MSP" "$P_XINETD" "$P_INETD" \
        "$P_FLOOR_HELP" "$P_FLOOR_DISPATCH" "$P_FLOOR_MSP"
fi || die "ports $((PORT_BASE + 1))-$((PORT_BASE + 7)) are not free: set PORT_BASE"

# Every limit that protects tcpmuxd from hostile load is raised out of the
# way: one client address makes all the connections here, on purpose.
cat >"$WORK/tcpmuxd.toml" <<EOF
[tcpmux]
listen = ["$P_TCPMUXD"]
# As root, like the peers' services (user = root): tcpmuxd asks for it to be
# written out. Ignored when not run as root.
default_user = "root"
name_timeout = "2m"
${DEFER_ACCEPT:+defer_accept = \"$DEFER_ACCEPT\"}
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

[msp]
listen = ["$P_TCPMUXD_MSP"]
deliver = "command"
command = ["/usr/bin/tee", "-a", "$WORK/msp-tcpmuxd.txt"]
rate_per_minute = 100000000
recipient_rate_per_minute = 100000000
total_rate_per_minute = 100000000
EOF

# xinetd throttles by default (50 connections a second, then a pause).
cat >"$WORK/xinetd.conf" <<EOF
defaults
{
    instances = UNLIMITED
    per_source = UNLIMITED
    cps = 1000000 1
}
service tcpmux
{
    type = INTERNAL UNLISTED
    id = tcpmux-server
    socket_type = stream
    protocol = tcp
    port = ${P_XINETD##*:}
    bind = $LOOPBACK
    wait = no
    user = root
}
service date
{
    type = TCPMUXPLUS UNLISTED
    socket_type = stream
    protocol = tcp
    wait = no
    user = root
    server = /bin/date
}
service echo
{
    type = TCPMUXPLUS UNLISTED
    socket_type = stream
    protocol = tcp
    wait = no
    user = root
    server = /bin/cat
}
EOF

cat >"$WORK/inetd.conf" <<EOF
$LOOPBACK:tcpmux stream tcp nowait root internal
tcpmux/+date stream tcp nowait root /bin/date date
tcpmux/+echo stream tcp nowait root /bin/cat cat
EOF
printf 'tcpmux %s/tcp\n' "${P_INETD##*:}" >"$WORK/services"
: >"$WORK/msp-tcpmuxd.txt"
: >"$WORK/msp-tcpmuxd-before.txt"
# The baseline: the same configuration on its own ports and file.
sed -e "s/$P_TCPMUXD_MSP/$P_BEFORE_MSP/" -e "s/$P_TCPMUXD/$P_BEFORE/" \
    -e "s|msp-tcpmuxd.txt|msp-tcpmuxd-before.txt|" "$WORK/tcpmuxd.toml" >"$WORK/tcpmuxd-before.toml"
# A baseline from before [tcpmux] defer_accept runs without it.
if [ -n "$BASELINE" ] && ! "$BASELINE" --config "$WORK/tcpmuxd-before.toml" --check >/dev/null 2>&1; then
    sed -i '/^defer_accept = /d' "$WORK/tcpmuxd-before.toml"
fi
: >"$WORK/msp-floor.txt"

# ---- servers ---------------------------------------------------------------

declare -A PID_OF
start() {
    local name=$1
    shift
    "$@" >"$WORK/$name.log" 2>&1 &
    PIDS+=("$!")
    PID_OF[$name]=$!
}

"$TCPMUXD" --config "$WORK/tcpmuxd.toml" --check >/dev/null ||
    die "tcpmuxd rejects the benchmark configuration"
start tcpmuxd "$TCPMUXD" --config "$WORK/tcpmuxd.toml" --log-target stderr
if [ -n "$BASELINE" ]; then
    start tcpmuxd-before "$BASELINE" --config "$WORK/tcpmuxd-before.toml" --log-target stderr
    "$BENCH" wait "$P_BEFORE"
    "$BENCH" wait --udp "$P_BEFORE_MSP"
fi
start floor-handshake "$BIN/floor-handshake" "$P_FLOOR_HELP" date echo
start floor-dispatch "$BIN/floor-dispatch" "$P_FLOOR_DISPATCH"
for addr in "$P_TCPMUXD" "$P_FLOOR_HELP" "$P_FLOOR_DISPATCH"; do
    "$BENCH" wait "$addr"
done

# Which server answers what, where. xinetd has no HELP, and neither peer
# speaks MSP.
HELP_SERVERS=(tcpmuxd floor)
DISPATCH_SERVERS=(tcpmuxd floor)
MSP_SERVERS=()
if [ -z "$QUICK" ]; then
    start xinetd "$XINETD" -f "$WORK/xinetd.conf" -dontfork -pidfile "$WORK/xinetd.pid"
    # unshare and sh exec in turn, so the pid is inetutils-inetd's own. -d
    # keeps it in the foreground (and logs each connection); -R lifts its
    # limit of about 1,000 starts a minute.
    # shellcheck disable=SC2016 # expanded by the inner shell
    start inetutils-inetd unshare --mount --propagation private sh -c \
        'mount --bind "$1" /etc/services && exec "$2" -d -R 100000000 "-p$3" "$4"' \
        sh "$WORK/services" "$INETD" "$WORK/inetd.pid" "$WORK/inetd.conf"
    start floor-msp "$BIN/floor-msp" "$P_FLOOR_MSP" /usr/bin/tee -a "$WORK/msp-floor.txt"
    for addr in "$P_XINETD" "$P_INETD"; do
        "$BENCH" wait "$addr"
    done
    "$BENCH" wait --udp "$P_TCPMUXD_MSP"
    "$BENCH" wait --udp "$P_FLOOR_MSP"
    HELP_SERVERS+=(inetutils-inetd)
    DISPATCH_SERVERS+=(xinetd inetutils-inetd)
    MSP_SERVERS=(tcpmuxd floor)
fi
declare -A HELP_AT=([tcpmuxd]=$P_TCPMUXD [floor]=$P_FLOOR_HELP [inetutils-inetd]=$P_INETD)
declare -A DISPATCH_AT=([tcpmuxd]=$P_TCPMUXD [floor]=$P_FLOOR_DISPATCH [xinetd]=$P_XINETD
    [inetutils-inetd]=$P_INETD)
declare -A MSP_AT=([tcpmuxd]=$P_TCPMUXD_MSP [floor]=$P_FLOOR_MSP)
declare -A MSP_FILE=([tcpmuxd]=$WORK/msp-tcpmuxd.txt [floor]=$WORK/msp-floor.txt)
if [ -n "$BASELINE" ]; then
    HELP_SERVERS+=(tcpmuxd-before)
    DISPATCH_SERVERS+=(tcpmuxd-before)
    [ -n "$QUICK" ] || MSP_SERVERS+=(tcpmuxd-before)
    HELP_AT[tcpmuxd-before]=$P_BEFORE
    DISPATCH_AT[tcpmuxd-before]=$P_BEFORE
    MSP_AT[tcpmuxd-before]=$P_BEFORE_MSP
    MSP_FILE[tcpmuxd-before]=$WORK/msp-tcpmuxd-before.txt
fi

say "== checking every server answers"
for s in "${HELP_SERVERS[@]}"; do
    "$BENCH" help "${HELP_AT[$s]}" --once || die "$s: HELP fails (log: $WORK/$s.log)"
done
for s in "${DISPATCH_SERVERS[@]}"; do
    "$BENCH" dispatch "${DISPATCH_AT[$s]}" echo --once || die "$s: dispatch fails"
done
for s in "${MSP_SERVERS[@]}"; do
    "$BENCH" msp "${MSP_AT[$s]}" --file "${MSP_FILE[$s]}" --once || die "$s: MSP fails"
done

RESULTS=$WORK/results.tsv
: >"$RESULTS"

# ---- memory: first, while every server is fresh ------------------------------

[ -n "$QUICK" ] || say "== memory: idle, then $HELD silent connections each"
[ -n "$QUICK" ] || {
    "$BENCH" memory "$P_TCPMUXD" --pid "${PID_OF[tcpmuxd]}" --count "$HELD" --label tcpmuxd
    "$BENCH" memory "$P_XINETD" --pid "${PID_OF[xinetd]}" --count "$HELD" --label xinetd
    "$BENCH" memory "$P_INETD" --pid "${PID_OF[inetutils-inetd]}" --count "$HELD" \
        --label inetutils-inetd
    # The floors serve one connection at a time: only their idle size
    # means anything.
    "$BENCH" memory "$P_FLOOR_HELP" --pid "${PID_OF[floor-handshake]}" --count 0 --label floor
} >>"$RESULTS"

# ---- load: servers alternate within each cell, and rotate between rounds ----

cells=0
for c in $HELP_CLIENTS; do cells=$((cells + ${#HELP_SERVERS[@]})); done
for c in $DISPATCH_CLIENTS; do cells=$((cells + ${#DISPATCH_SERVERS[@]})); done
for c in $MSP_CLIENTS; do cells=$((cells + ${#MSP_SERVERS[@]})); done
cells=$((cells * ROUNDS))
say "== load: $cells measurements of ${CELL_SECONDS}s"

done_cells=0
measure() {
    local test=$1 clients=$2 server=$3
    shift 3
    done_cells=$((done_cells + 1))
    [ -n "$QUICK" ] || say "[$done_cells/$cells] $test, $clients clients: $server"
    "$BENCH" "$test" "$@" --concurrency "$clients" --seconds "$CELL_SECONDS" \
        --label "$server" >>"$RESULTS"
}

# The servers of a cell, starting with a different one each round.
rotated() {
    local round=$1
    shift
    local n=$# i
    local all=("$@")
    for ((i = 0; i < n; i++)); do
        printf '%s\n' "${all[(i + round) % n]}"
    done
}

for ((round = 0; round < ROUNDS; round++)); do
    for c in $HELP_CLIENTS; do
        for s in $(rotated "$round" "${HELP_SERVERS[@]}"); do
            measure help "$c" "$s" "${HELP_AT[$s]}"
        done
    done
    for c in $DISPATCH_CLIENTS; do
        for s in $(rotated "$round" "${DISPATCH_SERVERS[@]}"); do
            measure dispatch "$c" "$s" "${DISPATCH_AT[$s]}" echo
        done
    done
    for c in $MSP_CLIENTS; do
        for s in $(rotated "$round" "${MSP_SERVERS[@]}"); do
            measure msp "$c" "$s" "${MSP_AT[$s]}" --file "${MSP_FILE[$s]}"
        done
    done
done

# ---- the table -----------------------------------------------------------------

for name in "${!PID_OF[@]}"; do
    kill -0 "${PID_OF[$name]}" 2>/dev/null || say "run.sh: warning: $name died during the run"
done
say "== done"
echo
if [ -n "$QUICK" ]; then
    echo "tcpmuxd $(git -C "$REPO" describe --always --dirty 2>/dev/null || echo '(no git)')," \
        "$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, rounds of ${CELL_SECONDS}s"
    echo
    "$BENCH" report --quick "$RESULTS"
    exit 0
fi
echo "tcpmuxd $(git -C "$REPO" describe --always --dirty 2>/dev/null || echo '(no git)'), $(date -u +%Y-%m-%dT%H:%MZ)"
echo "$(nproc) cores, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)," \
    "Linux $(uname -r), $(
        # shellcheck disable=SC1091
        . /etc/os-release && echo "$PRETTY_NAME"
    )"
echo
"$BENCH" report "$RESULTS"
if [ "${RELAY:-1}" != 0 ]; then
    echo
    # Its own ports, clear of this run's servers (still up).
    PORT_BASE=$((PORT_BASE + 500)) "$BENCH_DIR/relay.sh"
fi
