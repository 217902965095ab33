#!/usr/bin/env bash
# The soak: tcpmuxd (release build) under a steady mix of every kind of
# client for SOAK_MINUTES (default 30), reloaded every 10 s, its RSS,
# descriptors and children sampled every 10 s; prints the per-minute
# figures and a verdict, and exits 1 on FAIL (BENCHMARKS.md, "Soak").
#
#   bench/soak.sh                     # 30 minutes
#   SOAK_MINUTES=3 bench/soak.sh      # a quick check of the soak itself
#
# Settings (environment):
#   SOAK_MINUTES=30   length of the load
#   SOAK_RATE=250     operations started per second
#   SOAK_SOURCES=16   client addresses, 127.77.0.1 ..
#   PORT=17301        TCPMUX on 127.0.0.1:PORT, MSP (TCP and UDP) on PORT+1
#   KEEP_WORK=1       keep the scratch directory (configuration, log)
#
# Loopback only. Run as root, tcpmuxd runs as "nobody" (as it would as a
# dedicated user), so services need no `user`; otherwise as the caller.
# Every process started here is stopped on exit, whatever the exit.
set -euo pipefail

SOAK_MINUTES=${SOAK_MINUTES:-30}
SOAK_RATE=${SOAK_RATE:-250}
SOAK_SOURCES=${SOAK_SOURCES:-16}
PORT=${PORT:-17301}
REPO=$(cd "$(dirname "$0")/.." && pwd)
TCPMUX=127.0.0.1:$PORT
MSP=127.0.0.1:$((PORT + 1))

say() { printf '%s\n' "$*" >&2; }
die() { say "soak.sh: $*"; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/tcpmux-soak.XXXXXX")
PID=
cleanup() {
    local status=$?
    trap - EXIT INT TERM HUP
    if [ -n "$PID" ] && kill -TERM "$PID" 2>/dev/null; then
        wait "$PID" 2>/dev/null || true
    fi
    if [ -n "${KEEP_WORK:-}" ]; then
        say "soak.sh: scratch directory kept: $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'say "soak.sh: stopped by a signal"; exit 130' INT TERM HUP

say "== building tcpmuxd and the benchmark (release)"
CARGO_TARGET_DIR=$REPO/target cargo build --quiet --release --locked \
    --manifest-path "$REPO/Cargo.toml" --bin tcpmuxd
CARGO_TARGET_DIR=$REPO/bench/target cargo build --quiet --release --locked \
    --manifest-path "$REPO/bench/Cargo.toml" --bin tcpmux-bench
TCPMUXD=$REPO/target/release/tcpmuxd
BENCH=$REPO/bench/target/release/tcpmux-bench
"$BENCH" free "$TCPMUX" "$MSP" || die "ports $PORT and $((PORT + 1)) are not free: set PORT"

# tcpmuxd runs as nobody when we are root: its files must be readable, the
# delivery file writable by it.
RUN_AS=()
if [ "$(id -u)" = 0 ]; then
    RUN_AS=(setpriv --reuid=nobody --regid=nogroup --clear-groups)
fi
chmod 755 "$WORK"
DELIVERED=$WORK/msp-delivered.txt
: >"$DELIVERED"
chmod 666 "$DELIVERED"

# The defaults, but for the limits one test client reaches where the open
# Internet's many would not: its sources are 16 addresses of one machine,
# and MSP's rates are per minute for people, not for a load generator.
# Every bounded table (MSP's retransmission window, the per-source
# counters, the summary's sources) keeps its default bound: the soak shows
# memory flat once they are full. Silent clients are given up on after 2 s.
cat >"$WORK/tcpmuxd.toml" <<EOF
[tcpmux]
listen = ["$TCPMUX"]
name_timeout = "2s"

[[service]]
name = "echo"
command = ["/bin/cat"]
max_instances = 1000
max_starts_per_second = 1000

[[service]]
name = "date"
command = ["/bin/date"]

[msp]
listen = ["$MSP"]
deliver = "command"
command = ["/usr/bin/tee", "-a", "$DELIVERED"]
rate_per_minute = 100000000
recipient_rate_per_minute = 100000000
total_rate_per_minute = 100000000
EOF
chmod 644 "$WORK/tcpmuxd.toml"

# Long sessions and silent clients hold descriptors by the hundred.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
"${RUN_AS[@]}" "$TCPMUXD" --config "$WORK/tcpmuxd.toml" --check >/dev/null ||
    die "tcpmuxd rejects the soak's configuration"
"${RUN_AS[@]}" "$TCPMUXD" --config "$WORK/tcpmuxd.toml" --log-target stderr \
    2>"$WORK/tcpmuxd.log" &
PID=$!
"$BENCH" wait "$TCPMUX" --seconds 10
"$BENCH" wait --udp "$MSP" --seconds 10
# The first sample is the idle one: let startup settle.
sleep 1

say "== soak: $SOAK_MINUTES min, $SOAK_RATE operations/s"
verdict=0
"$BENCH" soak "$TCPMUX" "$MSP" --pid "$PID" --file "$DELIVERED" \
    --minutes "$SOAK_MINUTES" --rate "$SOAK_RATE" --sources "$SOAK_SOURCES" |
    tee "$WORK/report" || verdict=1

# What the log says: every reload must have succeeded, and nothing may
# have been logged as a warning or an error but the silent clients' own
# name_timeout, which they are there to reach.
kill -0 "$PID" 2>/dev/null || die "tcpmuxd died during the soak (log: $WORK/tcpmuxd.log)"
sent=$(sed -n 's/.* \([0-9]*\) reloads$/\1/p' "$WORK/report")
reloaded=$(grep -c ' reload: ' "$WORK/tcpmuxd.log" || true)
failed=$(grep -c 'reload failed' "$WORK/tcpmuxd.log" || true)
expected='limits hit in the last [0-9]+s: [0-9]+ name_timeout$'
problems=$(grep -E '^[^ ]+ +(WARN|ERROR) ' "$WORK/tcpmuxd.log" | grep -cvE "$expected" || true)
echo "log: ${sent:-?} reloads asked, $reloaded done, $failed failed; $problems warnings and errors"
if [ "$reloaded" != "${sent:-}" ] || [ "$failed" != 0 ] || [ "$problems" != 0 ]; then
    grep -E 'reload failed|^[^ ]+ +(WARN|ERROR) ' "$WORK/tcpmuxd.log" | grep -vE "$expected" |
        head -n 20
    echo "verdict of the log: FAIL"
    verdict=1
fi
exit "$verdict"
