#!/usr/bin/env bash
# Slowloris against tcpmuxd with its default configuration: HOLD silent
# connections (default 5000) from SOURCES addresses (default 250) are held
# open while HELP is asked from another address, one request at a time.
# Prints one record (see tcpmux-bench); loopback only, bounded in time.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
HOLD=${HOLD:-5000}
SOURCES=${SOURCES:-250}
SAMPLES=${SAMPLES:-200}
PORT=${PORT:-17201}
WORK=$(mktemp -d)
PID=
cleanup() {
    [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

cargo build --quiet --release --locked --manifest-path "$REPO/Cargo.toml" --bin tcpmuxd
cargo build --quiet --release --manifest-path "$REPO/bench/Cargo.toml" --bin tcpmux-bench
BENCH=$REPO/bench/target/release/tcpmux-bench

# Defaults for every limit: only the address and one service are set.
cat >"$WORK/tcpmuxd.toml" <<CONF
[tcpmux]
listen = ["127.0.0.1:$PORT"]
# The sessions' programs, when run as root (ignored otherwise).
default_user = "nobody"

[[service]]
name = "echo"
command = ["/bin/cat"]
CONF
"$REPO/target/release/tcpmuxd" --config "$WORK/tcpmuxd.toml" --log-target stderr \
    --log-level warn 2>"$WORK/log" &
PID=$!
"$BENCH" wait "127.0.0.1:$PORT" --seconds 10
timeout 300 "$BENCH" slowloris "127.0.0.1:$PORT" --count "$HOLD" --sources "$SOURCES" \
    --samples "$SAMPLES" --label tcpmuxd
if [ -s "$WORK/log" ]; then
    echo "tcpmuxd's warnings:" >&2
    cat "$WORK/log" >&2
fi
