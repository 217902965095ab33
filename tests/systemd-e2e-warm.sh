#!/usr/bin/env bash
# End-to-end test of warm session units under a real systemd.
#
# Boots the machine's own systemd as PID 1 of a throw-away container, as
# tests/systemd-e2e.sh does (both use tests/e2e-lib.sh), installs the
# shipped units and tcpmuxd with tcpmux-warm beside it, and checks warm
# units as a user would see them: a session through a warm unit, its
# sandbox, refill, an exec failure answered with -, reload, a restart of
# tcpmuxd with warm units waiting, and no unit left behind.
#
# Usage: tests/systemd-e2e-warm.sh STAGE
#   STAGE/bin/{tcpmuxd,tcpmux,tcpmux-warm}  the binaries under test
#   STAGE/bin/broken-elf                    ELF's magic and nothing more: a
#                                           program exec refuses
#   STAGE/units/                            a copy of the repository's units/
# `cargo test` stages these itself (tests/systemd_warm_e2e.rs).
#
# Environment:
#   E2E_MASK="a.service ..."  more units to mask in the container
#
# Exit status: 0 every check passed; 1 a check failed or the container could
# not be set up; 77 systemd cannot be booted here.

set -uo pipefail

readonly BOOT_TIMEOUT=60 # container up and systemd settled
readonly CMD_TIMEOUT=30  # any one command run inside
readonly WAIT_TIMEOUT=15 # a state we expect to appear
readonly WARM=2          # warm units of the service "echo"

# The helpers, the container, OPT and CONFIG.
# shellcheck source=tests/e2e-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/e2e-lib.sh"

readonly CLIENT=$OPT/bin/tcpmux

stage=${1:-}
if [ -z "$stage" ] || [ ! -x "$stage/bin/tcpmuxd" ] || [ ! -x "$stage/bin/tcpmux-warm" ] ||
    [ ! -x "$stage/bin/broken-elf" ] || [ ! -f "$stage/units/tcpmuxd.service" ]; then
    echo "usage: $0 STAGE (with STAGE/bin/{tcpmuxd,tcpmux,tcpmux-warm,broken-elf}, STAGE/units/)" >&2
    exit 2
fi
stage=$(cd "$stage" && pwd)

skip_unless_bootable

# ---- the container -------------------------------------------------------------

machine="tcpmuxd-warm-$$-$RANDOM"
init_work

journal_says() {
    local text
    text=$(ct journalctl -u tcpmuxd.service -o cat --no-pager 2>/dev/null) || return 1
    printf '%s\n' "$text" | grep -qF -- "$1"
}
# Loaded units of service $1 (all of them with no argument), one name a line.
units_of() {
    ct systemctl list-units --all --plain --no-legend --no-pager "tcpmux-${1:-}*" | awk '{ print $1 }' | sort
}
# Warm units of service $1 waiting for a connection: running the helper.
waiting_of() {
    local unit
    for unit in $(units_of "$1@"); do
        if [ "$(show "$unit" ActiveState)" = active ] &&
            ct systemctl show -p ExecStart --value "$unit" | grep -q 'tcpmux-warm' &&
            ct systemctl status --no-pager "$unit" 2>/dev/null | grep -q "$OPT/bin/tcpmux-warm"; then
            echo "$unit"
        fi
    done
}
count_waiting() { [ "$(waiting_of "$1" | grep -c .)" = "$2" ]; }

boot_container "$machine" -D / --volatile=yes --bind-ro="$stage:$OPT"

# ---- installing ---------------------------------------------------------------

section "installing tcpmuxd with tcpmux-warm beside it"
install_staged "$stage"
write_config() {
    cat >"$root$CONFIG" <<EOF2
[tcpmux]
name_timeout = "5s"
# One unit starting at a time: cold starts and refills take turns.
max_starting_units = 1

[[service]]
name = "echo"
command = ["/bin/cat"]
launcher = "systemd"
warm = $WARM
$1

# The sandbox in force: prints its uid (a dynamic one).
[[service]]
name = "uid"
command = ["/usr/bin/id", "-u"]
launcher = "systemd"
warm = 1

# Passes the helper's readiness check (ELF's magic), fails at exec.
[[service]]
name = "broken"
command = ["$OPT/bin/broken-elf"]
launcher = "systemd"
plus = false
warm = 1

# No warm units: every session starts cold, in its turn.
[[service]]
name = "cold"
command = ["/bin/echo", "started in turn"]
launcher = "systemd"
warm = 0

# No command: ExecStart= from drop-ins only, so no warm units.
[[service]]
name = "dropin"
launcher = "systemd"
EOF2
}
write_config ""
ct systemctl daemon-reload || die "systemctl daemon-reload failed"
if out=$(ct "$OPT/bin/tcpmuxd" --config "$CONFIG" --check 2>&1) &&
    printf '%s\n' "$out" | grep -q 'dropin.*cold'; then
    pass "tcpmuxd --check: says that \"dropin\" stays cold"
    note "$(printf '%s\n' "$out" | grep cold)"
else
    fail "tcpmuxd --check accepts the configuration and says \"dropin\" stays cold" "$out"
fi
ct systemctl enable --now tcpmuxd.socket tcpmuxd-msp.socket >/dev/null 2>&1 ||
    die "cannot enable tcpmuxd.socket"
# The first client starts tcpmuxd, which starts the warm units.
ct "$CLIENT" localhost --list >/dev/null 2>&1
wait_until "$WAIT_TIMEOUT" active_running || die "tcpmuxd.service did not start" \
    "$(ct journalctl -u tcpmuxd.service --no-pager -n 20)"

# ---- warm units ---------------------------------------------------------------

section "warm units"
if wait_until "$WAIT_TIMEOUT" count_waiting echo "$WARM" && wait_until "$WAIT_TIMEOUT" count_waiting uid 1; then
    pass "warm = $WARM: $WARM units of echo wait, running tcpmux-warm, before any client"
    note "$(waiting_of echo | tr '\n' ' ')"
else
    fail "$WARM warm units of echo and 1 of uid wait for connections" "$(units_of)" \
        "$(ct journalctl -u tcpmuxd.service --no-pager -n 20)"
fi
first=$(waiting_of echo | head -n 1)
out=$(ct systemctl show -p DynamicUser,DropInPaths,ProtectSystem "$first")
if printf '%s\n' "$out" | grep -qx DynamicUser=yes && printf '%s\n' "$out" | grep -q 10-defaults.conf; then
    pass "a warm unit has the session sandbox (10-defaults.conf, DynamicUser=yes)"
else
    fail "$first picks up tcpmux-.service.d/10-defaults.conf" "$out"
fi
if [ -z "$(units_of dropin)" ]; then
    pass "a service without a command has no warm unit"
else
    fail "no warm unit for dropin" "$(units_of dropin)"
fi
status_counts_units() {
    status=$(ct systemctl show -p StatusText --value tcpmuxd.service)
    printf '%s\n' "$status" | grep -Eq 'units: [0-9]+ starting, [0-9]+ waiting for a turn, [1-9][0-9]* warm'
}
if wait_until "$WAIT_TIMEOUT" status_counts_units; then
    pass "STATUS= counts units starting, clients waiting for a turn and warm units"
    note "tcpmuxd STATUS: $status"
else
    fail "STATUS= has the units' counters" "$status"
fi

before=$(waiting_of echo)
if out=$(printf 'through a warm unit\n' | ct "$CLIENT" localhost echo 2>"$work/err") &&
    [ "$out" = "through a warm unit" ] && wait_until "$WAIT_TIMEOUT" journal_says "(warm unit)"; then
    pass "tcpmux localhost echo: the session ran in a warm unit"
else
    fail "a session of echo through a warm unit echoes" "stdout: $out" "stderr: $(cat "$work/err")" \
        "$(ct journalctl -u tcpmuxd.service --no-pager -n 10)"
fi
refilled() {
    local now
    now=$(waiting_of echo)
    [ "$(printf '%s\n' "$now" | grep -c .)" = "$WARM" ] && [ "$now" != "$before" ]
}
if wait_until "$WAIT_TIMEOUT" refilled; then
    pass "refill: $WARM units of echo wait again, one of them new"
else
    fail "the pool of echo is refilled after a session" "before: $before" "now: $(waiting_of echo)"
fi

out=$(ct "$CLIENT" localhost uid </dev/null 2>&1 | tr -d '\r')
uid=$(printf '%s\n' "$out" | tail -n 1)
if [ -n "$uid" ] && [ "$uid" -ge 61184 ] 2>/dev/null && [ "$uid" -le 65519 ]; then
    pass "the program in a warm unit runs as a dynamic user (uid $uid)"
else
    fail "tcpmux localhost uid prints a uid of DynamicUser's range" "$out"
fi

out=$(ct "$CLIENT" localhost broken </dev/null 2>&1)
if printf '%s\n' "$out" | grep -qx -- '-Service unavailable' &&
    wait_until "$WAIT_TIMEOUT" journal_says "exec $OPT/bin/broken-elf: Exec format error"; then
    pass "dedicated service whose exec fails: the client gets -Service unavailable, the log says why"
else
    fail "broken (exec fails) answers -Service unavailable and logs the exec error" "$out" \
        "$(ct journalctl -u tcpmuxd.service --no-pager -n 10)"
fi

readonly AT_ONCE=6
clients=()
for i in $(seq "$AT_ONCE"); do
    ct "$CLIENT" localhost cold </dev/null >"$work/cold.$i" 2>&1 &
    clients+=("$!")
done
wait "${clients[@]}"
served=$(cat "$work"/cold.* | grep -cx 'started in turn')
if [ "$served" = "$AT_ONCE" ]; then
    pass "max_starting_units = 1: $AT_ONCE clients at once of a cold service are all served, in turn"
else
    fail "$AT_ONCE clients of cold at once are all served" "$(cat "$work"/cold.*)" \
        "$(ct journalctl -u tcpmuxd.service --no-pager -n 20)"
fi

# ---- reload -------------------------------------------------------------------

section "reload"
before=$(waiting_of echo)
uid_before=$(waiting_of uid)
write_config "max_instances = 10"
replaced() {
    local now
    now=$(waiting_of echo)
    [ "$(printf '%s\n' "$now" | grep -c .)" = "$WARM" ] &&
        [ -z "$(comm -12 <(printf '%s\n' "$before") <(printf '%s\n' "$now"))" ]
}
if ct systemctl reload tcpmuxd.service && wait_until "$WAIT_TIMEOUT" replaced; then
    pass "a changed service's warm units are replaced on reload"
else
    fail "reload replaces every warm unit of echo" "before: $before" "now: $(waiting_of echo)"
fi
if [ -n "$uid_before" ] && [ "$(waiting_of uid)" = "$uid_before" ]; then
    pass "an unchanged service keeps its warm unit"
else
    fail "the warm unit of uid (unchanged) survives the reload" "before: $uid_before" "now: $(waiting_of uid)"
fi

# ---- restart --------------------------------------------------------------------

section "tcpmuxd restarted with warm units waiting"
before=$(waiting_of echo)
main=$(show tcpmuxd.service MainPID)
gone_and_new() {
    local now
    now=$(waiting_of echo)
    [ "$(printf '%s\n' "$now" | grep -c .)" = "$WARM" ] &&
        [ -z "$(comm -12 <(printf '%s\n' "$before") <(units_of echo@))" ]
}
if ct systemctl restart tcpmuxd.service && wait_until "$WAIT_TIMEOUT" active_running &&
    [ "$(show tcpmuxd.service MainPID)" != "$main" ] && wait_until "$WAIT_TIMEOUT" gone_and_new; then
    pass "the previous run's warm units exited (EOF on their stdin); the new run has its own"
else
    fail "after a restart, the old warm units are gone and $WARM new ones wait" \
        "before: $before" "now: $(units_of echo@)"
fi
if out=$(printf 'after restart\n' | ct "$CLIENT" localhost echo 2>"$work/err") && [ "$out" = "after restart" ]; then
    pass "sessions through warm units work after the restart"
else
    fail "echo works after the restart" "$out"
fi
if wait_until "$WAIT_TIMEOUT" eval '[ "$(ct systemctl show -p StatusText --value tcpmuxd.service | sed -n "s/.* \([0-9]*\) sessions running.*/\1/p")" = 0 ]'; then
    pass "the old warm units are not counted as sessions"
else
    fail "STATUS shows 0 sessions running once the old warm units are gone" \
        "$(ct systemctl show -p StatusText --value tcpmuxd.service)"
fi

# ---- the journal: what happened to a client ------------------------------------

section "the journal: a session's entries under its unit, a client's by REMOTE_ADDR"
# Services of this section, added to the configuration in force.
cat >>"$root$CONFIG" <<'EOF2'

# Complains on stderr and fails: through a warm unit, and cold.
[[service]]
name = "oopswarm"
command = ["/bin/sh", "-c", "echo oops >&2; exit 3"]
launcher = "systemd"
warm = 1

[[service]]
name = "oopscold"
command = ["/bin/sh", "-c", "echo oops >&2; exit 3"]
launcher = "systemd"
warm = 0

# What a program is given: its variables and its descriptors.
[[service]]
name = "envwarm"
command = ["/bin/sh", "-c", "env | sort; echo FDS; ls /proc/self/fd"]
launcher = "systemd"
warm = 1

[[service]]
name = "envcold"
command = ["/bin/sh", "-c", "env | sort; echo FDS; ls /proc/self/fd"]
launcher = "systemd"
warm = 0

# The exec launcher's session: its lines go to the journal through tcpmuxd.
[[service]]
name = "oopsexec"
command = ["/bin/sh", "-c", "echo oops >&2; exit 3"]
launcher = "exec"
user = "root"

# Hidden from every client here: refused as denied.
[[service]]
name = "hidden"
command = ["/bin/cat"]
launcher = "systemd"
warm = 0
allow = ["192.0.2.0/24"]
EOF2
ct systemctl reload tcpmuxd.service
wait_until "$WAIT_TIMEOUT" count_waiting oopswarm 1 || note "no warm unit of oopswarm waiting"
wait_until "$WAIT_TIMEOUT" count_waiting envwarm 1 || note "no warm unit of envwarm waiting"
# The unit of the last session of service $1, from tcpmuxd's start entry.
unit_of_session() {
    ct journalctl -u tcpmuxd.service TCPMUX_SERVICE="$1" OUTCOME=served -o cat --no-pager |
        sed -n 's/.*session started as \(tcpmux-[^ ]*\.service\).*/\1/p' | tail -n 1
}
for service in oopswarm oopscold; do
    heard=$(ct "$CLIENT" localhost "$service" </dev/null 2>/dev/null | tr -d '\r')
    # A cold unit gets the connection as StandardOutputFileDescriptor, and
    # systemd gives stderr a copy of stdout when StandardOutput= and
    # StandardError= say the same; tcpmuxd sets StandardOutput=null so that
    # they never do. Both must send stderr to the journal, never the client.
    known() { fail "$@"; }
    if [ -z "$heard" ]; then
        pass "$service: the client hears nothing of the program's stderr"
    else
        known "$service: the program's stderr does not reach the client" "$heard"
    fi
    unit=$(unit_of_session "$service")
    if [ -z "$unit" ]; then
        fail "$service: tcpmuxd's start entry names the session's unit (OUTCOME=served)" \
            "$(ct journalctl -u tcpmuxd.service -o cat --no-pager | tail -n 20)"
        continue
    fi
    note "$service: $unit"
    # Entries about the unit, once systemd has unloaded it.
    ended() {
        ct journalctl -u "$unit" SYSLOG_IDENTIFIER=tcpmuxd EXIT_CODE=exited EXIT_STATUS=3 \
            -o cat --no-pager 2>/dev/null | grep -qF "session $unit ended, exited with status 3"
    }
    if wait_until "$WAIT_TIMEOUT" ended; then
        pass "$service: journalctl -u $unit shows tcpmuxd's end entry, EXIT_CODE=exited EXIT_STATUS=3"
    else
        fail "$service: tcpmuxd's end entry under journalctl -u $unit with EXIT_STATUS=3" \
            "$(ct journalctl -u "$unit" -o verbose --no-pager | tail -n 60)"
    fi
    own=$(ct journalctl -u "$unit" -o verbose --no-pager 2>/dev/null)
    if printf '%s\n' "$own" | grep -q "MESSAGE=$service from 127.0.0.1:[0-9]*: session started as $unit"; then
        pass "$service: and its start entry"
    else
        fail "$service: tcpmuxd's start entry under journalctl -u $unit" "$own"
    fi
    for field in "TCPMUX_SERVICE=$service" "REMOTE_ADDR=127.0.0.1" "UNIT=$unit"; do
        if printf '%s\n' "$own" | grep -qx "    $field"; then
            pass "$service: the entries carry $field"
        else
            fail "$service: $field in tcpmuxd's entries about the session" "$own"
        fi
    done
    stderr=$(ct journalctl -u "$unit" SYSLOG_IDENTIFIER="tcpmux-$service" -o cat --no-pager 2>/dev/null)
    if [ "$stderr" = oops ]; then
        pass "$service: the program's stderr line is there, tagged tcpmux-$service"
    else
        known "$service: the line oops under SYSLOG_IDENTIFIER=tcpmux-$service" \
            "$(ct journalctl -u "$unit" -o short --no-pager)"
    fi
done
ct "$CLIENT" localhost oopsexec </dev/null >/dev/null 2>&1
exec_ended() {
    ct journalctl -u tcpmuxd.service TCPMUX_SERVICE=oopsexec EXIT_CODE=exited EXIT_STATUS=3 \
        -o cat --no-pager 2>/dev/null | grep -q 'session ended, pid [0-9]* exited with status 3'
}
if wait_until "$WAIT_TIMEOUT" exec_ended; then
    pass "exec launcher: the end entry has EXIT_CODE=exited EXIT_STATUS=3"
else
    fail "exec launcher: the end entry with EXIT_STATUS=3" \
        "$(ct journalctl -u tcpmuxd.service -o cat --no-pager | tail -n 20)"
fi
stderr=$(ct journalctl -u tcpmuxd.service SYSLOG_IDENTIFIER=tcpmux-oopsexec -o cat --no-pager 2>/dev/null)
if [ "$stderr" = oops ]; then
    pass "exec launcher: the program's stderr line is tagged tcpmux-oopsexec"
else
    fail "exec launcher: the line oops under SYSLOG_IDENTIFIER=tcpmux-oopsexec" \
        "$(ct journalctl -u tcpmuxd.service -o short --no-pager | tail -n 20)"
fi
# Every entry about a client (starts, ends, its sessions' stderr, its
# refusals) counts against its source's 10 a second: the sessions above
# used this second's, so the refusals come in the next.
sleep 1.1
ct "$CLIENT" localhost hidden </dev/null >/dev/null 2>&1
ct "$CLIENT" localhost nosuch </dev/null >/dev/null 2>&1
# README's own examples.
for outcome in denied unknown; do
    if wait_until "$WAIT_TIMEOUT" eval \
        "ct journalctl -u tcpmuxd OUTCOME=$outcome -o cat --no-pager 2>/dev/null | grep -q ': $outcome'"; then
        pass "journalctl -u tcpmuxd OUTCOME=$outcome finds the refusal"
    else
        fail "journalctl -u tcpmuxd OUTCOME=$outcome finds the refusal" \
            "$(ct journalctl -u tcpmuxd -o cat --no-pager | tail -n 20)"
    fi
done
client=$(ct journalctl -u tcpmuxd REMOTE_ADDR=127.0.0.1 -o cat --no-pager 2>/dev/null)
if printf '%s\n' "$client" | grep -q 'session started as' &&
    printf '%s\n' "$client" | grep -q 'ended, exited with status 3' &&
    printf '%s\n' "$client" | grep -q 'hidden from 127.0.0.1:[0-9]*: denied'; then
    pass "journalctl -u tcpmuxd REMOTE_ADDR=127.0.0.1 finds the client's sessions and refusals"
else
    fail "journalctl -u tcpmuxd REMOTE_ADDR=127.0.0.1: starts, ends and a refusal" "$client"
fi
# Warm and cold units give the program the same descriptors and the same
# variables (by name; a few values are the unit's own), JOURNAL_STREAM
# included: stderr is the journal in both.
given() {
    ct "$CLIENT" localhost "$1" </dev/null 2>/dev/null | tr -d '\r' |
        sed -e 's/=.*//' -e '/^+$/d' | grep -v -e '^TCPMUX_SERVICE$'
}
warm_given=$(given envwarm)
cold_given=$(given envcold)
if [ -n "$warm_given" ] && [ "$warm_given" = "$cold_given" ]; then
    pass "a warm and a cold unit give the program the same variables and descriptors"
else
    fail "the same variables and descriptors, warm and cold" \
        "$(diff <(printf '%s\n' "$cold_given") <(printf '%s\n' "$warm_given"))"
fi
note "given: $(printf '%s\n' "$warm_given" | tr '\n' ' ')"

# ---- resources: the same in warm and cold units ---------------------------------

section "user, umask, environment and limits: warm and cold units alike"
mkdir -p "$root$(dirname "$CONFIG")/conf.d"
resources_dropin reswarm:1 rescold:0 >"$root$(dirname "$CONFIG")/conf.d/85-resources.toml"
want=$RESOURCES_WANT
session_of() { ct "$CLIENT" localhost "$1" </dev/null 2>/dev/null | tr -d '\r'; }
warm_started() {
    ct journalctl -u tcpmuxd.service -o cat --no-pager 2>/dev/null |
        grep -q '^reswarm from .*session started as tcpmux-reswarm@.* (warm unit)$'
}
if ct systemctl reload tcpmuxd.service && wait_until "$WAIT_TIMEOUT" count_waiting reswarm 1; then
    out=$(session_of reswarm)
    if [ "$out" = "$want" ] && wait_until "$WAIT_TIMEOUT" warm_started; then
        pass "a warm unit gets User=, UMask=, Environment= and Limit*= from [tcpmux] and its service"
    else
        fail "the session of reswarm, on a warm unit, prints its umask, limits, uid and variables" \
            "got: $(printf '%s' "$out" | tr '\n' ' ')" "want: $(printf '%s' "$want" | tr '\n' ' ')" \
            "$(ct journalctl --no-pager -n 10 -u tcpmuxd.service -u 'tcpmux-reswarm@*' 2>&1)"
    fi
    out=$(session_of rescold)
    if [ "$out" = "$want" ]; then
        pass "a cold unit of the same configuration prints the same"
    else
        fail "the session of rescold prints what reswarm's did" \
            "got: $(printf '%s' "$out" | tr '\n' ' ')" "want: $(printf '%s' "$want" | tr '\n' ' ')"
    fi
else
    fail "reload: a warm unit of reswarm waits" "$(units_of)" \
        "$(ct journalctl -u tcpmuxd.service --no-pager -n 20)"
fi
rm -f "$root$(dirname "$CONFIG")/conf.d/85-resources.toml"

# ---- nothing left behind -------------------------------------------------------

section "no leaked units"
ct systemctl stop tcpmuxd.socket tcpmuxd-msp.socket tcpmuxd.service
if wait_until "$WAIT_TIMEOUT" eval '[ -z "$(units_of)" ]'; then
    pass "systemctl list-units 'tcpmux-*' is empty once tcpmuxd stops"
else
    fail "no tcpmux-* unit is left after tcpmuxd stops" "$(ct systemctl list-units --all --no-pager 'tcpmux-*')"
fi

section "result"
finish
