#!/usr/bin/env bash
# Benchmarks the systemd launcher, cold and warm, against systemd's own
# per-connection activation (Accept=yes) with the same sandbox, and the
# exec launcher, all inside one throw-away systemd container (booted as
# tests/systemd-e2e.sh does).
#
#   sudo bench/systemd.sh
#
# Every session runs /bin/echo under tcpmux-.service.d/10-defaults.conf
# (Accept=yes: the same file as its template's drop-in). The figure is the
# time from connect to the service's first byte, p50 and p99, and sessions
# a second, at 1, 4 and 24 clients in a closed loop and at a paced 10
# sessions a second; the configurations alternate within each round, and
# each figure is the median of the rounds. Clients run inside the
# container, on its own loopback. The container is booted by
# tests/e2e-lib.sh, as for the end-to-end tests.
#
# Settings (environment):
#   ROUNDS=3            rounds
#   CELL_SECONDS=3      length of one measurement
#   CLIENTS="1 4 24"    closed-loop concurrencies
#   PACED_RATE=10       sessions a second of the paced load (0: none)
#   BURST=1             measure a burst of WARM clients (0: none)
#   CONFIGS="accept-yes tcpmuxd-cold tcpmuxd-warm tcpmuxd-exec"
#   WARM=4              warm units of the warm service
#   SETTLE=3            seconds between measurements (units end, pools refill)
#   E2E_MASK="a.service ..."  more units to mask in the container
#   TIME_LIMIT=900      seconds before the whole run is stopped
#   KEEP_WORK=1         keep the scratch directory (raw records)
set -euo pipefail

if [ -z "${TCPMUX_BENCH_TIMED:-}" ]; then
    export TCPMUX_BENCH_TIMED=1
    exec timeout --foreground "${TIME_LIMIT:-900}" "$0" "$@"
fi

ROUNDS=${ROUNDS:-3}
CELL_SECONDS=${CELL_SECONDS:-3}
CLIENTS=${CLIENTS:-1 4 24}
PACED_RATE=${PACED_RATE:-10}
BURST=${BURST:-1}
WARM=${WARM:-4}
SETTLE=${SETTLE:-3}

BENCH_DIR=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
readonly TCPMUX_AT=127.0.0.1:1
readonly ACCEPT_AT=127.0.0.1:2001

# The container (start_container, ct, OPT: where the staged files appear).
readonly BOOT_TIMEOUT=60 # container up and systemd settled
readonly CMD_TIMEOUT=120 # any one command run inside
# shellcheck source=tests/e2e-lib.sh
. "$REPO/tests/e2e-lib.sh"

say() { printf '%s\n' "$*" >&2; }
die() { say "systemd.sh: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (systemd-nspawn)"
for tool in cargo systemd-nspawn nsenter timeout; do
    command -v "$tool" >/dev/null || die "$tool is needed"
done

work=$(mktemp -d "${TMPDIR:-/tmp}/tcpmux-systemd-bench.XXXXXX")
chmod 755 "$work"
keep_work=${KEEP_WORK:-}
machine="tcpmux-bench-$$"
init_work

say "building (release)"
(cd "$REPO" && CARGO_TARGET_DIR=$REPO/target cargo build --quiet --release --locked --bins) ||
    die "cannot build tcpmuxd"
(cd "$BENCH_DIR" && CARGO_TARGET_DIR=$BENCH_DIR/target cargo build --quiet --release --locked) ||
    die "cannot build the benchmark client"
mkdir -p "$work/stage/bin"
cp "$REPO/target/release/tcpmuxd" "$REPO/target/release/tcpmux-warm" \
    "$BENCH_DIR/target/release/tcpmux-bench" "$work/stage/bin/"
chmod -R a+rX "$work/stage"

# ---- the container -------------------------------------------------------------

# Progress on stderr: stdout is the table.
start_container "$machine" -D / --volatile=yes --bind-ro="$work/stage:$OPT" >&2
wait_for_systemd >&2

# ---- installing the servers -----------------------------------------------------

etc=$root/etc
mkdir -p "$etc/systemd/system/tcpmux-.service.d" "$etc/systemd/system/tcpmuxd.service.d" \
    "$etc/systemd/system/bench-accept@.service.d" "$etc/tcpmuxd"
cp "$REPO/units/tcpmuxd.socket" "$REPO/units/tcpmuxd.service" \
    "$etc/systemd/system/"
cp "$REPO/units/tcpmux-.service.d/10-defaults.conf" "$etc/systemd/system/tcpmux-.service.d/"
# Accept=yes gets the very same sandbox.
cp "$REPO/units/tcpmux-.service.d/10-defaults.conf" "$etc/systemd/system/bench-accept@.service.d/"
cat >"$etc/systemd/system/tcpmuxd.service.d/50-bench.conf" <<EOF2
[Service]
ExecStart=
ExecStart=$OPT/bin/tcpmuxd --config /etc/tcpmuxd/tcpmuxd.toml --log-level warn
EOF2
printf 'passwd: files systemd\ngroup: files systemd\nhosts: files\n' >"$etc/nsswitch.conf"
cat >"$etc/systemd/system/bench-accept.socket" <<EOF2
[Socket]
ListenStream=$ACCEPT_AT
Accept=yes
MaxConnections=4096
TriggerLimitIntervalSec=0
EOF2
# A plus-mode TCPMUX service on a port of its own, as PEERS.md describes.
cat >"$etc/systemd/system/bench-accept@.service" <<'EOF2'
[Service]
StandardInput=socket
StandardError=journal
ExecStart=/bin/sh -c 'read name; printf "+\r\n"; exec /bin/echo hello'
EOF2
limits="max_instances = 1000
max_starts_per_second = 100000"
cat >"$etc/tcpmuxd/tcpmuxd.toml" <<EOF2
[tcpmux]
max_sessions = 4000

[[service]]
name = "cold"
command = ["/bin/echo", "hello"]
launcher = "systemd"
warm = 0
$limits

[[service]]
name = "warm"
command = ["/bin/echo", "hello"]
launcher = "systemd"
warm = $WARM
$limits

[[service]]
name = "exec"
command = ["/bin/echo", "hello"]
launcher = "exec"
# tcpmuxd runs as root without capabilities: it cannot switch users.
user = "root"
$limits
EOF2
ct systemctl daemon-reload
ct systemctl start bench-accept.socket tcpmuxd.socket || die "cannot start the sockets"
BENCH=$OPT/bin/tcpmux-bench
for probe in "$ACCEPT_AT x" "$TCPMUX_AT cold" "$TCPMUX_AT warm" "$TCPMUX_AT exec"; do
    # shellcheck disable=SC2086
    ct "$BENCH" first-byte $probe --once || die "probe $probe fails"
done

# ---- measuring -----------------------------------------------------------------

declare -A AT=([accept-yes]="$ACCEPT_AT x" [tcpmuxd-cold]="$TCPMUX_AT cold"
    [tcpmuxd-warm]="$TCPMUX_AT warm" [tcpmuxd-exec]="$TCPMUX_AT exec")
read -r -a CONFIGS <<<"${CONFIGS:-accept-yes tcpmuxd-cold tcpmuxd-warm tcpmuxd-exec}"
for config in "${CONFIGS[@]}"; do
    [ -n "${AT[$config]:-}" ] || die "no configuration $config (CONFIGS)"
done
LOADS=$CLIENTS
[ "$PACED_RATE" = 0 ] || LOADS="$LOADS paced"
[ "$BURST" = 0 ] || LOADS="$LOADS burst"

# CPU time in clock ticks, as "pid1 pid1-children bus tcpmuxd machine":
# PID 1 itself; the processes it started and reaped (each unit's set-up
# before exec, and the sessions); the bus daemon; tcpmuxd with its
# children; and every core of the machine, busy. /proc of the container.
cpu_ticks() {
    local bus daemon
    bus=$(ct systemctl show -p MainPID --value dbus.service)
    daemon=$(ct systemctl show -p MainPID --value tcpmuxd.service)
    # shellcheck disable=SC2016
    ct sh -c 'stat() { if [ "$1" -gt 0 ] 2>/dev/null && [ -r /proc/$1/stat ]; then sed "s/.*) //" /proc/$1/stat; else echo "x x x x x x x x x x x 0 0 0 0"; fi; }
        set -- $(stat 1); p1=$((${12} + ${13})); p1c=$((${14} + ${15}))
        set -- $(stat '"$bus"'); b=$((${12} + ${13}))
        set -- $(stat '"$daemon"'); d=$((${12} + ${13} + ${14} + ${15}))
        echo $p1 $p1c $b $d'
    awk '/^cpu /{print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat
}
# "cpu CONCURRENCY CONFIG SESSIONS/S TICKS..." of one cell: the ticks
# between BEFORE and AFTER (5 numbers each).
cpu_record() { # CONFIG CONCURRENCY SESSIONS/S BEFORE... AFTER...
    local config=$1 conc=$2 rate=$3
    shift 3
    printf 'cpu\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$conc" "$config" "$rate" \
        $(($6 - $1)) $(($7 - $2)) $(($8 - $3)) $(($9 - $4)) $((${10} - $5))
}

records=$work/records.tsv
: >"$records"
for round in $(seq "$ROUNDS"); do
    for config in "${CONFIGS[@]}"; do
        for load in $LOADS; do
            sleep "$SETTLE"
            case $load in
            paced) how=(--rate "$PACED_RATE" --seconds "$CELL_SECONDS") ;;
            # As many clients as there are warm units, the pool full: each
            # should get one.
            burst) how=(--burst "$WARM") ;;
            *) how=(--concurrency "$load" --seconds "$CELL_SECONDS") ;;
            esac
            say "round $round: $config, ${how[*]}"
            # shellcheck disable=SC2046
            before=$(cpu_ticks | tr '\n' ' ')
            # shellcheck disable=SC2086
            ct "$BENCH" first-byte ${AT[$config]} "${how[@]}" --label "$config" \
                >>"$records" || say "  (failed)"
            case $load in paced | burst) ;; *)
                rate=$(tail -n 1 "$records" | cut -f 4)
                # shellcheck disable=SC2086
                cpu_record "$config" "$load" "$rate" $before $(cpu_ticks | tr '\n' ' ') \
                    >>"$work/cpu.tsv" ;;
            esac
        done
    done
done
leftover=$(ct systemctl list-units --no-legend --plain 'tcpmux-*' 'bench-accept@*' | grep -c . || true)

# ---- the table -------------------------------------------------------------------

cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
echo "Machine: $(nproc) cores ($cpu), $(uname -r), systemd $(systemctl --version | head -n 1 | awk '{print $2}') in systemd-nspawn"
echo "Command: sudo bench/systemd.sh (ROUNDS=$ROUNDS CELL_SECONDS=$CELL_SECONDS WARM=$WARM); medians of $ROUNDS rounds"
echo
echo "| configuration | load | sessions/s | p50 first byte | p99 first byte | errors |"
echo "|---|---|---|---|---|---|"
for config in "${CONFIGS[@]}"; do
    for load in $LOADS; do
        if [ "$load" = paced ]; then
            test=first-byte-paced label="$PACED_RATE/s paced" conc=$PACED_RATE
        elif [ "$load" = burst ]; then
            test=first-byte-burst label="burst of $WARM" conc=$WARM
        else
            test=first-byte label="$load clients" conc=$load
        fi
        awk -F'\t' -v t="$test" -v c="$conc" -v s="$config" -v label="$label" '
            function median(a, n,   i, j, x) {
                for (i = 2; i <= n; i++) { x = a[i]; for (j = i - 1; j > 0 && a[j] > x; j--) a[j + 1] = a[j]; a[j + 1] = x }
                return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
            }
            $1 == t && $2 == c && $3 == s { n++; v[n] = $4; p50[n] = $5; p99[n] = $6; e += $7 }
            END {
                if (n == 0) { printf "| %s | %s | - | - | - | not measured |\n", s, label; exit }
                printf "| %s | %s | %.0f | %.1f ms | %.1f ms | %d |\n", s, label, median(v, n), median(p50, n) / 1000, median(p99, n) / 1000, e
            }' "$records"
    done
done
echo
echo "Units of tcpmux-* and bench-accept@* still loaded at the end: $leftover (the warm service's $WARM warm units, and sessions ending)"
echo
echo "CPU time per session (ms; medians of $ROUNDS rounds, closed loop): PID 1 itself; the processes"
echo "PID 1 forked (each unit's set-up before exec, and the session); the bus daemon; tcpmuxd"
echo "with its children; and the whole machine (every core, busy)."
echo
echo "| configuration | clients | PID 1 | PID 1's children | bus | tcpmuxd | machine |"
echo "|---|---|---|---|---|---|---|"
hz=$(getconf CLK_TCK)
for config in "${CONFIGS[@]}"; do
    for load in $CLIENTS; do
        awk -F'\t' -v c="$load" -v s="$config" -v hz="$hz" -v secs="$CELL_SECONDS" '
            function median(a, n,   i, j, x) {
                for (i = 2; i <= n; i++) { x = a[i]; for (j = i - 1; j > 0 && a[j] > x; j--) a[j + 1] = a[j]; a[j + 1] = x }
                return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
            }
            $2 == c && $3 == s && $4 > 0 {
                n++; for (k = 1; k <= 5; k++) { v[k, n] = $(k + 4) * 1000 / hz / ($4 * secs) }
            }
            END {
                if (n == 0) exit
                printf "| %s | %s |", s, c
                for (k = 1; k <= 5; k++) { for (i = 1; i <= n; i++) a[i] = v[k, i]; printf " %.1f |", median(a, n) }
                printf "\n"
            }' "$work/cpu.tsv"
    done
done
