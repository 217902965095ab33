#!/usr/bin/env bash
# End-to-end test of tcpmuxd under a real systemd.
#
# Boots the machine's own systemd as PID 1 of a throw-away container
# (systemd-nspawn with a volatile root: the host's /usr, an empty /etc),
# installs the shipped units and drop-ins, and then checks, from inside the
# container, what a user would: socket activation, sessions, reload,
# restart, the journal and the sandbox.
#
# Usage: tests/systemd-e2e.sh STAGE
#   STAGE/bin/{tcpmuxd,tcpmux,msend}      the binaries under test
#   STAGE/units/, STAGE/packaging/        copies of the repository's units/
#                                         and packaging/
# `cargo test` stages these itself (tests/systemd_e2e.rs).
#
# Environment:
#   E2E_SYSTEMD_LAUNCHER=0   leave out the checks of the systemd launcher
#   E2E_MAX_EXPOSURE=2.0     highest `systemd-analyze security` exposure
#                            accepted for tcpmuxd.service
#   E2E_MASK="a.service ..." more units to mask in the container (units the
#                            host happens to have that fail in a container)
#   E2E_DEB, E2E_DEB_NEWER   the .deb and a newer build of it: installed with
#                            dpkg -i, then upgraded, in a second container
#                            booted from a debootstrapped bookworm
#   E2E_ROOTFS=FILE          that bookworm root as a tarball; made with
#                            debootstrap when missing
#
# Exit status: 0 every check passed; 1 a check failed or the container could
# not be set up; 77 systemd cannot be booted here (not root, or no
# systemd-nspawn).

set -uo pipefail

E2E_SYSTEMD_LAUNCHER=${E2E_SYSTEMD_LAUNCHER:-1}
E2E_MAX_EXPOSURE=${E2E_MAX_EXPOSURE:-2.0}

# Every wait is bounded; a healthy run needs a fraction of each.
readonly BOOT_TIMEOUT=60     # container up and systemd settled
readonly CMD_TIMEOUT=30      # any one command run inside
readonly WAIT_TIMEOUT=15     # a state we expect to appear
readonly SESSION_TIMEOUT=120 # the long-lived session of the restart check

# The helpers, the container, OPT and CONFIG.
# shellcheck source=tests/e2e-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/e2e-lib.sh"

# The client under test; /usr/bin/tcpmux once the package is installed.
CLIENT=$OPT/bin/tcpmux

stage=${1:-}
if [ -z "$stage" ] || [ ! -x "$stage/bin/tcpmuxd" ] || [ ! -x "$stage/bin/tcpmux" ] ||
    [ ! -f "$stage/units/tcpmuxd.service" ] || [ ! -d "$stage/packaging" ]; then
    echo "usage: $0 STAGE (with STAGE/bin/tcpmuxd, STAGE/bin/tcpmux, STAGE/units/, STAGE/packaging/)" >&2
    exit 2
fi
stage=$(cd "$stage" && pwd)

skip_unless_bootable

# ---- the container -------------------------------------------------------------

machine="tcpmuxd-e2e-$$-$RANDOM"
init_work

lists() { ct "$CLIENT" localhost --list 2>/dev/null | tr -d '\r' | grep -qx "$1"; }
exposure() {
    ct systemd-analyze security --no-pager "$1" 2>&1 |
        sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p'
}
# One journal entry per connection, with structured fields. Captured whole
# and then searched: a pipe into grep -q can die of SIGPIPE under pipefail.
journal_has() {
    local entries
    entries=$(ct journalctl -u tcpmuxd.service -o json --no-pager 2>/dev/null) || return 1
    printf '%s\n' "$entries" | grep -F "\"TCPMUX_SERVICE\":\"$1\"" | grep -F "\"OUTCOME\":\"$2\"" |
        grep -F '"REMOTE_ADDR":"' | grep -qF '"REMOTE_PORT":"'
}

# The machine's own systemd, with --volatile=yes: a tmpfs root with the
# host's /usr read-only and an empty /etc, so nothing persists and the host
# is not touched.
boot_container "$machine" -D / --volatile=yes --bind-ro="$stage:$OPT"

# ---- installing, as a package would --------------------------------------------

section "installing tcpmuxd"
install_staged "$stage"
cat >"$root$CONFIG" <<'EOF'
# Socket-activated: no listen addresses.
[tcpmux]
name_timeout = "5s"

[[service]]
name = "echo"
command = ["/bin/cat"]
launcher = "exec"
# tcpmuxd runs as root (without capabilities): a program it starts itself
# runs as root only when written out.
user = "root"
EOF
ct systemctl daemon-reload || die "systemctl daemon-reload failed"

if out=$(ct "$OPT/bin/tcpmuxd" --config "$CONFIG" --check 2>&1); then
    pass "tcpmuxd --check: $out"
else
    fail "tcpmuxd --check accepts the configuration" "$out"
fi

# ---- socket activation ------------------------------------------------------

section "socket activation"
# The Message Send Protocol is opt-in: the service must not pull its socket
# in; this test enables it explicitly.
out=$(ct systemctl show -p Wants -p Requires -p BindsTo tcpmuxd.service)
if ! printf '%s\n' "$out" | grep -qF tcpmuxd-msp.socket; then
    pass "tcpmuxd.service does not pull in tcpmuxd-msp.socket (MSP is opt-in)"
else
    fail "tcpmuxd.service neither Wants= nor Requires= tcpmuxd-msp.socket" "$out"
fi
# The preset shipped with the packages keeps MSP off even where the default
# preset enables every unit (Debian's, as here: no preset names the units).
out=$(ct systemctl preset tcpmuxd-msp.socket 2>&1; ct systemctl is-enabled tcpmuxd-msp.socket 2>&1)
mkdir -p "$etc/systemd/system-preset"
cp "$stage/packaging/systemd-preset/80-tcpmuxd.preset" "$etc/systemd/system-preset/"
ct systemctl preset tcpmuxd-msp.socket tcpmuxd-msp.service >/dev/null 2>&1
after=$(ct systemctl is-enabled tcpmuxd-msp.socket 2>&1)
if printf '%s\n' "$out" | grep -qx enabled && [ "$after" = disabled ]; then
    pass "80-tcpmuxd.preset: systemctl preset leaves tcpmuxd-msp.socket disabled (enabled without it)"
else
    fail "systemctl preset disables tcpmuxd-msp.socket with 80-tcpmuxd.preset" \
        "without the preset: $out" "with it: $after"
fi
if out=$(ct systemctl enable tcpmuxd 2>&1) && [ "$(ct systemctl is-enabled tcpmuxd.socket)" = enabled ]; then
    pass "systemctl enable tcpmuxd enables tcpmuxd.socket (Also=)"
else
    fail "systemctl enable tcpmuxd enables tcpmuxd.socket" "$out"
fi
if out=$(ct systemctl enable --now tcpmuxd.socket 2>&1); then
    pass "systemctl enable --now tcpmuxd.socket"
else
    fail "systemctl enable --now tcpmuxd.socket" "$out"
fi
out=$(ct systemctl is-active tcpmuxd.socket tcpmuxd-msp.socket tcpmuxd.service)
if [ "$(printf '%s' "$out" | tr '\n' ' ')" = "active inactive inactive" ]; then
    pass "port 1 listening, MSP off, tcpmuxd.service not started before a client comes"
else
    fail "tcpmuxd.socket active, tcpmuxd-msp.socket and tcpmuxd.service inactive before the first client" "$out"
fi

if out=$(ct "$CLIENT" localhost --list 2>&1) && printf '%s\n' "$out" | tr -d '\r' | grep -qx echo; then
    pass "tcpmux localhost --list lists the configured services"
else
    fail "tcpmux localhost --list lists \"echo\"" "$out"
fi

# READY=1 and the client's answer travel separately: give systemd a moment.
wait_until "$WAIT_TIMEOUT" active_running
out=$(ct systemctl show -p ActiveState,SubState,Type,WatchdogUSec,StatusText tcpmuxd.service)
if printf '%s\n' "$out" | grep -qx ActiveState=active && printf '%s\n' "$out" | grep -qx SubState=running &&
    printf '%s\n' "$out" | grep -qx Type=notify && printf '%s\n' "$out" | grep -qx WatchdogUSec=30s &&
    printf '%s\n' "$out" | grep -q '^StatusText=.'; then
    pass "the first connection started tcpmuxd.service (Type=notify: READY, STATUS=)"
    note "$(printf '%s\n' "$out" | grep ^StatusText=)"
else
    fail "tcpmuxd.service is active and running (Type=notify, WatchdogSec=30s, STATUS=) after the first connection" \
        "$out" "$(ct journalctl -u tcpmuxd.service --no-pager -n 30)"
fi

out="$(show tcpmuxd.socket SubState)"
if [ "$out" = "running" ]; then
    pass "tcpmuxd.socket handed its socket to tcpmuxd.service"
else
    fail "tcpmuxd.socket is running (taken by the service)" "$out"
fi

main_pid=$(show tcpmuxd.service MainPID)
proc_status=$(ct cat "/proc/$main_pid/status" 2>&1)
caps=$(printf '%s\n' "$proc_status" | awk '/^Cap(Inh|Prm|Eff|Bnd|Amb):/ { print $2 }' | sort -u)
uid=$(printf '%s\n' "$proc_status" | awk '/^Uid:/ { print $2 }')
if [ "$caps" = 0000000000000000 ] && [ "$uid" = 0 ]; then
    pass "tcpmuxd runs as root without any capability"
else
    fail "tcpmuxd runs as uid 0 with empty capability sets" "$proc_status"
fi
tty_gid=$(ct getent group tty | cut -d: -f3)
groups=$(printf '%s\n' "$proc_status" | awk '/^Groups:/ { $1 = ""; print }')
if [ -n "$tty_gid" ] && ! printf ' %s \n' "$groups" | grep -q " $tty_gid "; then
    pass "tcpmuxd.service (TCPMUX) runs without the group tty (groups:$groups)"
else
    fail "tcpmuxd.service runs without the group tty ($tty_gid)" "groups:$groups"
fi

# ---- sessions and the journal -------------------------------------------------

section "sessions (exec launcher)"
if out=$(printf 'hello through tcpmux\n' | ct "$CLIENT" localhost echo 2>"$work/err") &&
    [ "$out" = "hello through tcpmux" ]; then
    pass "tcpmux localhost echo: a session of /bin/cat echoes"
else
    fail "tcpmux localhost echo echoes its input" "stdout: $out" "stderr: $(cat "$work/err")"
fi

out=$(ct "$CLIENT" localhost no-such-service </dev/null 2>&1)
code=$?
if [ "$code" = 1 ] && printf '%s\n' "$out" | grep -q -- '-Unknown service'; then
    pass "an unknown service is refused with -Unknown service"
else
    fail "tcpmux localhost no-such-service exits 1 with -Unknown service" "exit $code: $out"
fi

if wait_until "$WAIT_TIMEOUT" journal_has echo served; then
    pass "journal: TCPMUX_SERVICE=echo OUTCOME=served with REMOTE_ADDR and REMOTE_PORT"
else
    fail "journalctl -u tcpmuxd -o json has TCPMUX_SERVICE, REMOTE_ADDR, REMOTE_PORT, OUTCOME=served" \
        "$(ct journalctl -u tcpmuxd.service --no-pager -n 10)"
fi
# A refused connection is summed up every 10 seconds too (a flood gets
# entries of its own only for its first few connections).
journal_message_has() {
    local messages
    messages=$(ct journalctl -u tcpmuxd.service -o cat --no-pager 2>/dev/null) || return 1
    printf '%s\n' "$messages" | grep -qF -- "$1"
}
if wait_until "$((WAIT_TIMEOUT + 10))" journal_message_has "connections in the last 10s: " &&
    journal_message_has " unknown" && journal_message_has "; top sources: "; then
    pass "journal: the refused name is summed up, with its source"
else
    fail "journal sums up the unknown name (connections in the last 10s: ... unknown; top sources: ...)" \
        "$(ct journalctl -u tcpmuxd.service --no-pager -n 10)"
fi
if journal_message_has "echo from " && journal_message_has ": session started, pid "; then
    pass "journal: MESSAGE of a served session says which service, from where"
else
    fail "journal MESSAGE 'echo from ADDR:PORT: session started, pid N'" \
        "$(ct journalctl -u tcpmuxd.service --no-pager -n 10)"
fi

# ---- forwarded sessions -----------------------------------------------------

section "forwarded sessions (launcher = \"forward\") under the unit's sandbox"
# A backend on loopback TCP and one on a Unix socket under /run, each a unit
# of its own: it answers what it got (the PROXY header's line too), then
# waits for the client's end.
backend_py='
import os, socket, sys
if sys.argv[1] == "tcp":
    l = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind(("127.0.0.1", 7001))
else:
    l = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    l.bind(sys.argv[1])
    os.chmod(sys.argv[1], 0o666)
l.listen(8)
while True:
    c, _ = l.accept()
    f = c.makefile("rb")
    lines = [f.readline().rstrip(b"\r\n")]
    if lines[0].startswith(b"PROXY "):
        lines.append(f.readline().rstrip(b"\r\n"))
    c.sendall(b"backend got: " + b" | ".join(lines) + b"\n")
    while f.read(4096):
        pass
    # The file holds the socket open: both are closed.
    f.close()
    c.close()
'
ct systemd-run --quiet --unit=e2e-backend-tcp python3 -c "$backend_py" tcp
ct systemd-run --quiet --unit=e2e-backend-unix python3 -c "$backend_py" /run/e2e-backend.sock
cat >"$etc/tcpmuxd/conf.d/40-forward.toml" <<'EOF'
[[service]]
name = "fwd-tcp"
launcher = "forward"
forward = "127.0.0.1:7001"
proxy_protocol = "v1"

[[service]]
name = "fwd-unix"
launcher = "forward"
forward = "/run/e2e-backend.sock"
EOF
backend_up() { ct test -S /run/e2e-backend.sock && ct python3 -c 'import socket; socket.create_connection(("127.0.0.1", 7001)).close()'; }
if ! ct systemctl reload tcpmuxd.service || ! wait_until "$WAIT_TIMEOUT" lists fwd-unix ||
    ! wait_until "$WAIT_TIMEOUT" backend_up; then
    fail "reload serves fwd-tcp and fwd-unix, backends listening" \
        "$(ct journalctl --no-pager -n 20 -u tcpmuxd.service -u e2e-backend-tcp.service -u e2e-backend-unix.service)"
else
    out=$(printf 'hello over tcp\n' | ct "$CLIENT" localhost fwd-tcp 2>"$work/err")
    if printf '%s\n' "$out" | grep -Eqx 'backend got: PROXY TCP[46] [0-9a-f.:]+ [0-9a-f.:]+ [0-9]+ 1 \| hello over tcp'; then
        pass "a session forwarded to a TCP backend on loopback, the PROXY header first: $out"
    else
        fail "tcpmux localhost fwd-tcp reaches the backend at 127.0.0.1:7001 with a v1 header" \
            "stdout: $out" "stderr: $(cat "$work/err")" "$(ct journalctl --no-pager -n 10 -u tcpmuxd.service)"
    fi
    out=$(printf 'hello over unix\n' | ct "$CLIENT" localhost fwd-unix 2>"$work/err")
    if [ "$out" = "backend got: hello over unix" ]; then
        pass "a session forwarded to a Unix socket under /run"
    else
        fail "tcpmux localhost fwd-unix reaches the backend at /run/e2e-backend.sock" \
            "stdout: $out" "stderr: $(cat "$work/err")" "$(ct journalctl --no-pager -n 10 -u tcpmuxd.service)"
    fi
    # The end's entry: how it ended and the bytes each way (the client's
    # line, 16 bytes; the backend's answer, 29).
    forward_end_logged() {
        local entries
        entries=$(ct journalctl -u tcpmuxd.service -o json --no-pager 2>/dev/null) || return 1
        printf '%s\n' "$entries" | grep -F '"TCPMUX_SERVICE":"fwd-unix"' | grep -F '"FORWARD_END":"closed"' |
            grep -F '"BYTES_TO_BACKEND":"16"' | grep -F '"BYTES_TO_CLIENT":"29"' |
            grep -F '"BACKEND":"/run/e2e-backend.sock"' | grep -qF '"REMOTE_ADDR":"'
    }
    if wait_until "$WAIT_TIMEOUT" journal_has fwd-tcp served && wait_until "$WAIT_TIMEOUT" forward_end_logged &&
        journal_message_has "fwd-unix from " && journal_message_has ": session started, forwarded to /run/e2e-backend.sock"; then
        pass "journal: a forwarded session's start (OUTCOME=served) and end (FORWARD_END, BYTES_TO_BACKEND, BYTES_TO_CLIENT)"
    else
        fail "journalctl -u tcpmuxd has the forwarded sessions' start and end" \
            "$(ct journalctl -u tcpmuxd.service -o json --no-pager -n 6)"
    fi
fi
ct systemctl stop e2e-backend-tcp.service e2e-backend-unix.service
rm -f "$etc/tcpmuxd/conf.d/40-forward.toml"
ct systemctl reload tcpmuxd.service

# ---- reload ---------------------------------------------------------------

section "reload"
cat >"$etc/tcpmuxd/conf.d/50-reload.toml" <<'EOF'
[[service]]
name = "added-by-reload"
command = ["/bin/cat"]
launcher = "exec"
# tcpmuxd runs as root (without capabilities): a program it starts itself
# runs as root only when written out.
user = "root"
EOF
before=$(show tcpmuxd.service MainPID)
# Once the new service is listed the reload has happened; a daemon that sent
# RELOADING=1 without READY=1 would leave the unit "reloading".
if out=$(ct systemctl reload tcpmuxd.service 2>&1) && wait_until "$WAIT_TIMEOUT" lists added-by-reload &&
    wait_until "$WAIT_TIMEOUT" active_running && [ "$(show tcpmuxd.service MainPID)" = "$before" ]; then
    pass "systemctl reload: same process, active again (READY after RELOADING), new service listed"
else
    fail "systemctl reload tcpmuxd applies conf.d/50-reload.toml" "$out" \
        "$(ct systemctl show -p ActiveState,SubState,MainPID tcpmuxd.service)" \
        "$(ct journalctl -u tcpmuxd.service --no-pager -n 20)"
fi

printf '[[service]]\nname = "broken"\nno_such_key = 1\n' >"$etc/tcpmuxd/conf.d/60-broken.toml"
journal_names_broken() {
    local text
    text=$(ct journalctl -u tcpmuxd.service -o cat --no-pager 2>/dev/null) || return 1
    printf '%s\n' "$text" | grep -q '60-broken.toml'
}
# ExecReload= checks the configuration first: the reload fails, and says
# where.
before=$(show tcpmuxd.service MainPID)
if out=$(ct systemctl reload tcpmuxd.service 2>&1); then
    fail "systemctl reload tcpmuxd exits non-zero with an invalid drop-in" "$out"
else
    pass "systemctl reload tcpmuxd with an invalid drop-in fails: $(printf '%s' "$out" | head -n 1)"
fi
status=$(ct systemctl status --no-pager -n 10 tcpmuxd.service 2>&1)
if wait_until "$WAIT_TIMEOUT" journal_names_broken && printf '%s\n' "$status" | grep -q '60-broken.toml: .*line 3' &&
    printf '%s\n' "$status" | grep -q no_such_key; then
    pass "systemctl status tcpmuxd names the file, line and key"
else
    fail "systemctl status tcpmuxd shows the error (60-broken.toml, line 3, no_such_key)" "$status"
fi
if wait_until "$WAIT_TIMEOUT" active_running && [ "$(show tcpmuxd.service MainPID)" = "$before" ] &&
    lists added-by-reload && ! lists broken; then
    pass "after the failed reload the old configuration serves, same process, active"
else
    fail "an invalid configuration is rejected on reload and the old one kept" \
        "$(ct systemctl show -p ActiveState,SubState,MainPID tcpmuxd.service)" \
        "$(ct journalctl -u tcpmuxd.service --no-pager -n 10)"
fi
rm -f "$etc/tcpmuxd/conf.d/60-broken.toml"

# ---- a configuration error at start -----------------------------------------------

section "a configuration error at start: port 1 stays open"
# What used to close port 1: a broken file, a restart, a few clients. The
# socket kept starting a service that exited 78 until it failed with
# service-start-limit-hit, and only reset-failed brought it back.
printf '[[service]]\nname = "broken"\nno_such_key = 1\n' >"$etc/tcpmuxd/conf.d/60-broken.toml"
if out=$(ct systemctl restart tcpmuxd.service 2>&1) && wait_until "$WAIT_TIMEOUT" active_running; then
    pass "systemctl restart tcpmuxd with an invalid configuration: active, holding the socket"
else
    fail "tcpmuxd.service is active after a restart with an invalid configuration" "$out" \
        "$(ct journalctl -u tcpmuxd.service --no-pager -n 10)"
fi
answers=""
for _ in 1 2 3 4 5 6; do
    answers+="$(ct "$CLIENT" localhost echo </dev/null 2>&1 | tr -d '\r')"$'\n'
done
help=$(ct "$CLIENT" localhost --list 2>&1 | tr -d '\r')
if [ "$(printf '%s' "$answers" | grep -c -- '-Service unavailable')" = 6 ] &&
    printf '%s\n' "$help" | grep -q -- '-Service unavailable'; then
    pass "six clients and HELP: each answered -Service unavailable"
else
    fail "every request is answered -Service unavailable" "echo: $answers" "HELP: $help"
fi
out=$(ct systemctl show -p ActiveState,SubState,NRestarts tcpmuxd.socket tcpmuxd.service)
status_text=$(show tcpmuxd.service StatusText)
if [ "$(show tcpmuxd.socket ActiveState)" = active ] && active_running &&
    [ "$(show tcpmuxd.service NRestarts)" = 0 ] &&
    printf '%s\n' "$status_text" | grep -q '1 error, in .*60-broken.toml line 3 (see the journal)' &&
    printf '%s\n' "$status_text" | grep -qF 'fix it, then systemctl reload tcpmuxd'; then
    pass "tcpmuxd.socket active, the service never restarted, STATUS= says where and how to fix"
    note "StatusText=$status_text"
else
    fail "the socket stays active, and STATUS= names the error and the fix" "$out" "StatusText=$status_text"
fi
errors=$(ct journalctl -u tcpmuxd.service -p err -o cat --no-pager 2>&1)
if printf '%s\n' "$errors" | grep -q 'invalid configuration: .*60-broken.toml: .*line 3' &&
    printf '%s\n' "$errors" | grep -q 'no_such_key.*not serving'; then
    pass "journal (priority err): invalid configuration, file, line and key"
else
    fail "journalctl -u tcpmuxd -p err has the configuration error" "$errors"
fi
# Still broken: the reload fails and changes nothing.
out=$(ct systemctl reload tcpmuxd.service 2>&1)
code=$?
help=$(ct "$CLIENT" localhost --list 2>&1)
if [ "$code" != 0 ] && active_running && printf '%s\n' "$help" | grep -q -- '-Service unavailable'; then
    pass "systemctl reload while still broken: fails, still answering -Service unavailable"
else
    fail "a reload with the configuration still broken fails and changes nothing" "exit $code: $out" "$help"
fi
rm -f "$etc/tcpmuxd/conf.d/60-broken.toml"
if out=$(ct systemctl reload tcpmuxd.service 2>&1) && wait_until "$WAIT_TIMEOUT" lists echo &&
    [ "$(show tcpmuxd.socket ActiveState)" = active ]; then
    pass "fixed, then systemctl reload tcpmuxd: served again (no reset-failed)"
else
    fail "after the fix, systemctl reload tcpmuxd serves" "$out" "$(ct journalctl -u tcpmuxd.service --no-pager -n 10)"
fi
if out=$(printf 'served again\n' | ct "$CLIENT" localhost echo 2>/dev/null) && [ "$out" = "served again" ]; then
    pass "a session after the fix echoes"
else
    fail "tcpmux localhost echo works after the fix" "$out"
fi

# Before the first connection the service is not running: reload would
# fail; try-reload-or-restart does the right thing in every state.
ct systemctl stop tcpmuxd.service
if out=$(ct systemctl try-reload-or-restart tcpmuxd 2>&1) &&
    [ "$(ct systemctl is-active tcpmuxd.service)" = inactive ] &&
    [ "$(show tcpmuxd.socket ActiveState)" = active ] && wait_until "$WAIT_TIMEOUT" lists echo; then
    pass "systemctl try-reload-or-restart tcpmuxd on a stopped service: exit 0, nothing started, the next client starts it"
else
    fail "systemctl try-reload-or-restart tcpmuxd before the first connection" "$out" \
        "$(ct systemctl show -p ActiveState tcpmuxd.service tcpmuxd.socket)"
fi
wait_until "$WAIT_TIMEOUT" active_running

# ---- the sandbox ------------------------------------------------------------

section "sandbox"
for unit in tcpmuxd.service tcpmuxd-msp.service; do
    level=$(exposure "$unit")
    if [ -n "$level" ] && awk -v l="$level" -v max="$E2E_MAX_EXPOSURE" 'BEGIN { exit !(l <= max) }'; then
        pass "systemd-analyze security $unit: exposure $level (at most $E2E_MAX_EXPOSURE)"
    else
        fail "systemd-analyze security $unit: exposure at most $E2E_MAX_EXPOSURE" \
            "$(ct systemd-analyze security --no-pager "$unit" 2>&1 | grep -v '✓')"
    fi
done

# Any transient unit named tcpmux-*.service gets the session defaults, with
# or without tcpmuxd: check the drop-in on a unit started by hand.
probe=tcpmux-e2e-probe@1.service
out=$(ct systemd-run --quiet --wait --pipe --unit="$probe" /usr/bin/id 2>&1)
uid=$(printf '%s\n' "$out" | sed -n 's/^uid=\([0-9]*\).*/\1/p')
# DynamicUser= allocates from 61184 to 65519.
if [ -n "$uid" ] && [ "$uid" -ge 61184 ] && [ "$uid" -le 65519 ]; then
    pass "tcpmux-.service.d/10-defaults.conf applies to a transient tcpmux-*.service (DynamicUser: $out)"
else
    fail "a transient $probe runs as a dynamic user" "$out"
fi
probe=tcpmux-e2e-probe@2.service
if ct systemd-run --quiet --unit="$probe" /bin/sleep "$CMD_TIMEOUT" &&
    out=$(ct systemctl show -p MemoryMax,TasksMax,RuntimeMaxUSec,ProtectSystem,CollectMode "$probe"); then
    note "session defaults as applied: $(printf '%s' "$out" | tr '\n' ' ')"
    note "systemd-analyze security of a session unit: exposure $(exposure "$probe")"
    ct systemctl stop "$probe"
else
    fail "a transient $probe starts" "$out"
fi

# ---- pass: a client handed to a running daemon -------------------------------

section "pass launcher"
# The receiving daemon: a unit of its own listening on a SOCK_SEQPACKET
# socket under /run, greeting each client it is handed with the
# REMOTE_ADDR its message names.
receiver='
import os, socket, sys
listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
listener.bind(sys.argv[1])
listener.listen(4)
while True:
    link, _ = listener.accept()
    while True:
        message, fds, flags, _ = socket.recv_fds(link, 1024, 4)
        if not message and not fds:
            break
        if len(fds) != 1 or flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            for fd in fds:
                os.close(fd)
            continue
        variables = dict(line.split("=", 1) for line in message.decode().splitlines())
        client = socket.socket(fileno=fds[0])
        client.sendall(("hello " + variables["REMOTE_ADDR"] + "\n").encode())
        client.close()
'
printf '[[service]]\nname = "app"\nlauncher = "pass"\npass = "/run/e2e-pass/app.sock"\n' \
    >"$etc/tcpmuxd/conf.d/55-pass.toml"
pass_socket_there() { ct test -S /run/e2e-pass/app.sock; }
if ct systemctl reload tcpmuxd.service && wait_until "$WAIT_TIMEOUT" lists app &&
    ct systemd-run --quiet --unit=e2e-pass-receiver.service -p RuntimeDirectory=e2e-pass \
        /usr/bin/python3 -c "$receiver" /run/e2e-pass/app.sock &&
    wait_until "$WAIT_TIMEOUT" pass_socket_there; then
    out=$(ct "$CLIENT" localhost app </dev/null 2>"$work/err")
    case "$out" in
    "hello 127.0.0.1" | "hello ::1")
        pass "tcpmux localhost app: + from tcpmuxd, then the running daemon's greeting ($out)" ;;
    *) fail "a pass service's client is greeted by the receiving daemon" "stdout: $out" \
        "stderr: $(cat "$work/err")" "$(ct journalctl -u tcpmuxd.service --no-pager -n 10)" ;;
    esac
    if wait_until "$WAIT_TIMEOUT" journal_has app served &&
        journal_message_has ": passed to /run/e2e-pass/app.sock"; then
        pass "journal: TCPMUX_SERVICE=app OUTCOME=served, 'app from ADDR:PORT: passed to /run/e2e-pass/app.sock'"
    else
        fail "journal entry of the pass" "$(ct journalctl -u tcpmuxd.service --no-pager -n 10)"
    fi
    ct systemctl stop e2e-pass-receiver.service
    out=$(ct "$CLIENT" localhost app </dev/null 2>&1)
    if printf '%s\n' "$out" | grep -q -- '-Service unavailable' &&
        wait_until "$WAIT_TIMEOUT" journal_message_has "pass socket /run/e2e-pass/app.sock: "; then
        pass "receiving daemon stopped: -Service unavailable, the cause in the journal"
    else
        fail "a pass service without its daemon answers -Service unavailable" "$out" \
            "$(ct journalctl -u tcpmuxd.service --no-pager -n 10)"
    fi
else
    fail "a pass service and its receiving daemon are set up" \
        "$(ct journalctl -u tcpmuxd.service -u e2e-pass-receiver.service --no-pager -n 20)"
fi
rm -f "$etc/tcpmuxd/conf.d/55-pass.toml"

# ---- watchdog ---------------------------------------------------------------

section "watchdog"
# WatchdogSec=30s: tcpmuxd must ping every 15 s, so the time of the last
# ping moves within 16 s of any moment.
last_ping() { show tcpmuxd.service WatchdogTimestampMonotonic; }
first=$(last_ping)
if wait_until 17 eval '[ "$(last_ping)" != "$first" ]'; then
    pass "tcpmuxd sends WATCHDOG=1 (last ping moved)"
else
    fail "WatchdogTimestamp of tcpmuxd.service advances within 16 s" \
        "$(ct systemctl show -p WatchdogTimestamp,WatchdogUSec tcpmuxd.service)"
fi

# ---- the systemd launcher ---------------------------------------------------

# Sessions as transient units. Returns early when tcpmuxd does not accept
# the configuration: every later check depends on it.
systemd_launcher_checks() {
    section "sessions as transient units (systemd launcher)"
    local dropin out unit before
    for dropin in "$stage"/units/examples/*.service.d; do
        mkdir -p "$etc/systemd/system/${dropin##*/}"
        cp "$dropin"/*.conf "$etc/systemd/system/${dropin##*/}/"
    done
    ct systemctl daemon-reload
    cat >"$etc/tcpmuxd/conf.d/70-systemd.toml" <<'EOF'
[[service]]
name = "hold"
command = ["/bin/cat"]
launcher = "systemd"
# Cold starts here (warm units have a test of their own).
warm = 0

# Defined by its unit drop-in alone: tcpmux-daytime@.service.d/50-exec.conf.
[[service]]
name = "daytime"
launcher = "systemd"

# DynamicUser=no, User=nobody: tcpmux-whoami@.service.d/50-user.conf.
[[service]]
name = "whoami"
launcher = "systemd"

# The default launcher ("auto"): under systemd, the systemd launcher,
# whether or not the bus answers (the bus loss checks).
[[service]]
name = "uid"
command = ["/usr/bin/id", "-u"]
warm = 0
EOF
    if out=$(ct "$OPT/bin/tcpmuxd" --config "$CONFIG" --check 2>&1); then
        pass "tcpmuxd --check accepts launcher = \"systemd\" and services without a command"
    else
        fail "tcpmuxd --check accepts launcher = \"systemd\" and services without a command" "$out"
        rm -f "$etc/tcpmuxd/conf.d/70-systemd.toml"
        note "the other systemd launcher checks were not run"
        return 1
    fi
    if ct systemctl reload tcpmuxd.service && wait_until "$WAIT_TIMEOUT" active_running &&
        wait_until "$WAIT_TIMEOUT" lists hold && lists daytime && lists whoami; then
        pass "reload: hold, daytime and whoami listed"
    else
        fail "reload serves hold, daytime and whoami" "$(ct "$CLIENT" localhost --list 2>&1)" \
            "$(ct journalctl -u tcpmuxd.service --no-pager -n 10)"
    fi

    # A session kept open through a FIFO, so that it can be used again after
    # tcpmuxd restarts.
    mkfifo "$work/hold.in"
    timeout "$SESSION_TIMEOUT" nsenter -t "$pid1" -a env -i PATH=/usr/bin:/bin "$CLIENT" localhost hold \
        <"$work/hold.in" >"$work/hold.out" 2>"$work/hold.err" &
    session_pids+=($!)
    exec 7>"$work/hold.in"
    echo "before restart" >&7
    hold_said() { grep -qx "$1" "$work/hold.out"; }
    if wait_until "$WAIT_TIMEOUT" hold_said "before restart"; then
        pass "tcpmux localhost hold: the session echoes"
    else
        fail "a session of \"hold\" echoes" "stdout: $(cat "$work/hold.out")" "stderr: $(cat "$work/hold.err")" \
            "$(ct journalctl -u tcpmuxd.service --no-pager -n 10)"
    fi

    session_units() {
        ct systemctl list-units --plain --no-legend --no-pager 'tcpmux-hold@*' | awk '{ print $1 }'
    }
    unit=$(session_units)
    if [ "$(printf '%s\n' "$unit" | grep -c '^tcpmux-hold@.*\.service$')" = 1 ]; then
        pass "the session runs as transient unit $unit"
        out=$(ct systemctl show -p DynamicUser,DropInPaths "$unit")
        if printf '%s\n' "$out" | grep -qx DynamicUser=yes &&
            printf '%s\n' "$out" | grep -q 'tcpmux-.service.d/10-defaults.conf'; then
            pass "$unit has the session defaults (DynamicUser=yes from 10-defaults.conf)"
        else
            fail "$unit picks up tcpmux-.service.d/10-defaults.conf" "$out"
        fi
        note "systemd-analyze security $unit: exposure $(exposure "$unit")"
    else
        fail "systemctl list-units 'tcpmux-*' shows one tcpmux-hold@INSTANCE.service during the session" \
            "$(ct systemctl list-units --all --no-pager 'tcpmux-*')"
    fi

    before=$(show tcpmuxd.service MainPID)
    if out=$(ct systemctl restart tcpmuxd.service 2>&1) && wait_until "$WAIT_TIMEOUT" active_running &&
        [ "$(show tcpmuxd.service MainPID)" != "$before" ]; then
        echo "after restart" >&7
        if wait_until "$WAIT_TIMEOUT" hold_said "after restart"; then
            pass "systemctl restart tcpmuxd: the open session keeps working"
        else
            fail "a session survives systemctl restart tcpmuxd" "stdout: $(cat "$work/hold.out")" \
                "stderr: $(cat "$work/hold.err")"
        fi
    else
        fail "systemctl restart tcpmuxd.service gives a new, running tcpmuxd" "$out" \
            "$(ct systemctl status --no-pager tcpmuxd.service)"
    fi

    exec 7>&-
    if wait_until "$WAIT_TIMEOUT" eval '[ -z "$(session_units)" ]'; then
        pass "the session's unit is gone once the client closes"
    else
        fail "tcpmux-hold@*.service goes away after the session ends" "$(session_units)"
    fi

    out=$(ct "$CLIENT" localhost daytime </dev/null 2>&1)
    if printf '%s\n' "$out" | grep -q 'UTC 20[0-9][0-9]'; then
        pass "daytime (ExecStart= from its drop-in only): $(printf '%s\n' "$out" | tail -n 1)"
    else
        fail "tcpmux localhost daytime prints the date from the drop-in's ExecStart=/bin/date -u" "$out" \
            "$(ct journalctl --no-pager -n 10 -u 'tcpmux-daytime@*' 2>&1)"
    fi

    out=$(ct "$CLIENT" localhost whoami </dev/null 2>/dev/null | tr -d '\r')
    if [ "$out" = nobody ]; then
        pass "whoami (drop-in DynamicUser=no, User=nobody) runs as nobody"
    else
        fail "tcpmux localhost whoami prints nobody" "$out" \
            "$(ct journalctl --no-pager -n 10 -u 'tcpmux-whoami@*' 2>&1)"
    fi

    if wait_until "$WAIT_TIMEOUT" journal_has hold served; then
        pass "journal: TCPMUX_SERVICE=hold OUTCOME=served"
    else
        fail "journal has OUTCOME=served for hold" "$(ct journalctl -u tcpmuxd.service --no-pager -n 10)"
    fi
}

# The other way to run tcpmuxd (packaging/README.md): as the user "tcpmuxd",
# allowed by the shipped polkit rule to start session units, and no others.
# The system bus going away: HELP and exec sessions go on, systemd-launched
# ones are refused with a reason, and come back once the bus does.
bus_loss_checks() {
    section "the system bus and the journal going away"
    local out
    ct systemctl stop dbus.socket dbus.service
    if out=$(printf 'ping\n' | ct "$CLIENT" localhost echo 2>&1) &&
        printf '%s\n' "$out" | grep -qx ping && lists hold; then
        pass "without the bus: HELP and an exec-launched session still work"
    else
        fail "HELP and the echo service work while the bus is down" "$out"
    fi
    out=$(printf 'ping\n' | ct "$CLIENT" localhost hold 2>&1)
    if printf '%s\n' "$out" | grep -qx -- '-Service unavailable'; then
        pass "without the bus: a systemd-launched service answers -Service unavailable"
    else
        fail "hold is refused with -Service unavailable while the bus is down" "$out"
    fi
    # The journal going away, too: logging fails quietly, serving goes on.
    ct systemctl stop systemd-journald.socket systemd-journald-dev-log.socket \
        systemd-journald-audit.socket systemd-journald.service 2>/dev/null
    if out=$(printf 'ping\n' | ct "$CLIENT" localhost echo 2>&1) &&
        printf '%s\n' "$out" | grep -qx ping && lists hold; then
        pass "without journald: HELP and sessions still work"
    else
        fail "tcpmuxd serves while journald is stopped" "$out"
    fi
    ct systemctl start systemd-journald.socket systemd-journald-dev-log.socket systemd-journald.service
    # tcpmuxd restarted while the bus is away: launcher = "auto" still
    # means the systemd launcher. Its clients are refused until the bus is
    # back; nothing runs as tcpmuxd's child, as root.
    if ct systemctl restart tcpmuxd.service && wait_until "$WAIT_TIMEOUT" active_running; then
        out=$(ct "$CLIENT" localhost uid </dev/null 2>&1 | tr -d '\r')
        if [ "$out" = "-Service unavailable" ]; then
            pass "restarted without the bus: a launcher = \"auto\" service answers -Service unavailable"
        else
            fail "a launcher = \"auto\" service is refused, not run as root, while the bus is down" \
                "id -u printed: $out" "$(ct journalctl -u tcpmuxd.service --no-pager -n 10)"
        fi
    else
        fail "tcpmuxd restarts while the bus is down" "$(ct systemctl status --no-pager tcpmuxd.service)"
    fi
    sleep 2
    ct systemctl start dbus.socket dbus.service
    uid_is_dynamic() {
        local uid
        uid=$(ct "$CLIENT" localhost uid </dev/null 2>/dev/null | tr -d '\r' | tail -n 1)
        [ -n "$uid" ] && [ "$uid" -ge 61184 ] && [ "$uid" -le 65519 ]
    }
    if wait_until 45 uid_is_dynamic; then
        pass "the bus is back 2 s later: the launcher = \"auto\" service runs as a dynamic user, not as root"
    else
        fail "after the bus outage at startup, service uid runs in a unit as a dynamic user" \
            "id -u printed: $(ct "$CLIENT" localhost uid </dev/null 2>&1)" \
            "$(ct journalctl -u tcpmuxd.service --no-pager -n 10)"
    fi
    hold_works() {
        printf 'back\n' | ct "$CLIENT" localhost hold 2>/dev/null | grep -qx back
    }
    if wait_until 45 hold_works; then
        pass "the bus is back: tcpmuxd reconnected and starts session units again"
    else
        fail "sessions of hold work again after the bus restarts" \
            "$(ct journalctl -u tcpmuxd.service --no-pager -n 10)"
    fi
}

dedicated_user_checks() {
    section "tcpmuxd as the dedicated user tcpmuxd (polkit rule)"
    local out uid main_pid
    if [ ! -x "$root/usr/lib/polkit-1/polkitd" ]; then
        note "not run: polkitd is not installed"
        return
    fi
    mkdir -p "$etc/sysusers.d" "$etc/polkit-1/rules.d"
    cp "$stage/packaging/sysusers.d/tcpmuxd.conf" "$etc/sysusers.d/"
    # The rule belongs in /usr/share/polkit-1/rules.d/, but in this container
    # that directory belongs to the host's polkitd user id: use /etc.
    cp "$stage/packaging/polkit/50-tcpmuxd.rules" "$etc/polkit-1/rules.d/"
    if ! out=$(ct systemd-sysusers 2>&1); then
        fail "systemd-sysusers creates the user from packaging/sysusers.d/tcpmuxd.conf" "$out"
        return
    fi
    cat >"$etc/systemd/system/tcpmuxd.service.d/60-user.conf" <<'EOF'
[Service]
User=tcpmuxd
EOF
    ct systemctl daemon-reload
    uid=$(ct id -u tcpmuxd)
    if out=$(ct systemctl restart tcpmuxd.service 2>&1) && wait_until "$WAIT_TIMEOUT" active_running; then
        main_pid=$(show tcpmuxd.service MainPID)
        out=$(ct cat "/proc/$main_pid/status" | awk '/^Uid:/ { print $2 }')
        if [ -n "$uid" ] && [ "$out" = "$uid" ]; then
            pass "tcpmuxd runs as tcpmuxd (uid $uid) with the drop-in User=tcpmuxd"
        else
            fail "tcpmuxd runs as user tcpmuxd (uid ${uid:-unknown})" "uid of MainPID $main_pid: $out"
        fi
    else
        fail "systemctl restart tcpmuxd with User=tcpmuxd" "$out" "$(ct journalctl -u tcpmuxd.service --no-pager -n 10)"
    fi

    out=$(printf 'from the tcpmuxd user\n' | ct "$CLIENT" localhost hold 2>"$work/err")
    if [ "$out" = "from the tcpmuxd user" ]; then
        pass "the polkit rule lets user tcpmuxd start session units"
    else
        fail "a session works when tcpmuxd runs as user tcpmuxd" "stdout: $out" "stderr: $(cat "$work/err")" \
            "$(ct journalctl -u tcpmuxd.service -u polkit.service --no-pager -n 10)"
    fi
    out=$(ct systemd-run --quiet --wait --pipe -p User=tcpmuxd busctl call org.freedesktop.systemd1 \
        /org/freedesktop/systemd1 org.freedesktop.systemd1.Manager StopUnit ss dbus.service fail 2>&1)
    if printf '%s\n' "$out" | grep -q 'Access denied' && [ "$(ct systemctl is-active dbus.service)" = active ]; then
        pass "the polkit rule does not let user tcpmuxd stop other units"
    else
        fail "user tcpmuxd is refused StopUnit dbus.service" "$out"
    fi
    note "systemd-analyze security tcpmuxd.service with User=tcpmuxd: exposure $(exposure tcpmuxd.service)"
}

if [ "$E2E_SYSTEMD_LAUNCHER" = 1 ]; then
    systemd_launcher_checks && bus_loss_checks && dedicated_user_checks
else
    section "systemd launcher checks left out (E2E_SYSTEMD_LAUNCHER=$E2E_SYSTEMD_LAUNCHER)"
fi

# ---- the Message Send Protocol -----------------------------------------------

section "Message Send Protocol: turned on and off while TCPMUX serves"
cat >"$etc/tcpmuxd/conf.d/80-msp.toml" <<'EOF'
[msp]
deliver = "journal"
EOF
ct systemctl reload tcpmuxd.service
wait_until "$WAIT_TIMEOUT" active_running
tcpmux_pid=$(show tcpmuxd.service MainPID)
readonly MSP_MESSAGE_ID=3c4f0b9e2d7a4c61a8e5f1b27d9c6e04
msp_in_journal() {
    local entries
    entries=$(ct journalctl MESSAGE_ID=$MSP_MESSAGE_ID -o json --no-pager 2>/dev/null) || return 1
    printf '%s\n' "$entries" | grep -F '"MSP_RECIPIENT":"alice"' | grep -F "\"MSP_TRANSPORT\":\"$1\"" |
        grep -F '"REMOTE_ADDR":"' | grep -qF "$2"
}
# TCPMUX clients in a loop, inside the container, until /run/e2e-msp-done
# appears (at most 120 s): every one must be served while MSP is turned on
# and off.
rm -f "$root/run/e2e-msp-done"
# shellcheck disable=SC2016 # expanded by the shell inside
timeout 130 nsenter -t "$pid1" -a env -i PATH=/usr/bin:/bin CLIENT="$CLIENT" bash -c '
    ok=0 failed=0 end=$((SECONDS + 120))
    while [ ! -e /run/e2e-msp-done ] && [ "$SECONDS" -lt "$end" ]; do
        if out=$("$CLIENT" --timeout 10 localhost --list 2>&1) && printf "%s\n" "$out" | grep -q "^echo"; then
            ok=$((ok + 1))
        else
            failed=$((failed + 1))
            printf "failed: %s\n" "$out"
        fi
    done
    echo "connections: $ok served, $failed failed"' >"$work/msp-loop.log" 2>&1 &
msp_loop_pid=$!
session_pids+=("$msp_loop_pid")

if out=$(ct systemctl enable --now tcpmuxd-msp.socket 2>&1); then
    pass "MSP on: systemctl enable --now tcpmuxd-msp.socket"
else
    fail "systemctl enable --now tcpmuxd-msp.socket while tcpmuxd.service runs" "$out"
fi
if out=$(ct "$OPT/bin/msend" alice@localhost "hello over tcp" 2>&1) &&
    wait_until "$WAIT_TIMEOUT" msp_in_journal tcp "hello over tcp"; then
    pass "msend right after: over TCP port 18 acknowledged, one journal entry with the MSP_* fields"
else
    fail "msend alice@localhost over TCP is delivered to the journal right after MSP is on" "$out" \
        "$(ct journalctl -u tcpmuxd-msp.service --no-pager -n 10)"
fi
if out=$(ct "$OPT/bin/msend" --udp alice@localhost "hello over udp" 2>&1) &&
    wait_until "$WAIT_TIMEOUT" msp_in_journal udp "hello over udp"; then
    pass "msend --udp to port 18: acknowledged and delivered"
else
    fail "msend --udp alice@localhost is delivered to the journal" "$out" \
        "$(ct journalctl -u tcpmuxd-msp.service --no-pager -n 10)"
fi
msp_pid=$(show tcpmuxd-msp.service MainPID)
tty_gid=$(ct getent group tty | cut -d: -f3)
groups=$(ct cat "/proc/$msp_pid/status" 2>/dev/null | awk '/^Groups:/ { $1 = ""; print }')
if [ "$(show tcpmuxd-msp.service SubState)" = running ] && [ "$msp_pid" != "$tcpmux_pid" ] &&
    [ "$(show tcpmuxd.service MainPID)" = "$tcpmux_pid" ] && printf ' %s \n' "$groups" | grep -q " $tty_gid "; then
    pass "MSP is served by tcpmuxd-msp.service (pid $msp_pid, group tty); tcpmuxd.service untouched (pid $tcpmux_pid)"
else
    fail "tcpmuxd-msp.service serves MSP with the group tty, and tcpmuxd.service keeps its process" \
        "$(ct systemctl show -p SubState,MainPID tcpmuxd-msp.service tcpmuxd.service)" "groups:$groups"
fi

# Its reload checks the configuration first too.
printf '[msp]\nno_such_key = 1\n' >"$etc/tcpmuxd/conf.d/85-broken.toml"
if ! out=$(ct systemctl reload tcpmuxd-msp.service 2>&1) &&
    [ "$(show tcpmuxd-msp.service MainPID)" = "$msp_pid" ] &&
    ct "$OPT/bin/msend" alice@localhost "after a failed reload" >/dev/null 2>&1 &&
    wait_until "$WAIT_TIMEOUT" msp_in_journal tcp "after a failed reload"; then
    pass "systemctl reload tcpmuxd-msp with an invalid drop-in fails; the old configuration serves"
else
    fail "systemctl reload tcpmuxd-msp fails with an invalid drop-in and MSP keeps serving" "$out" \
        "$(ct journalctl -u tcpmuxd-msp.service --no-pager -n 10)"
fi
rm -f "$etc/tcpmuxd/conf.d/85-broken.toml" "$etc/tcpmuxd/conf.d/80-msp.toml"

section "Message Send Protocol (command delivery as tcpmux-msp@ units)"
cat >"$etc/tcpmuxd/conf.d/80-msp.toml" <<'EOF'
[msp]
deliver = "command"
command = ["/bin/sh", "-c", "if [ \"$MSP_RECIPIENT\" = bob ]; then echo 'bob is away' >&2; exit 1; fi; cat >/dev/null"]
EOF
ct systemctl reload tcpmuxd-msp.service
msp_units_logged() {
    local text
    text=$(ct journalctl -u 'tcpmux-msp@*' -o cat --no-pager 2>/dev/null) || return 1
    [ -n "$text" ]
}
if out=$(ct "$OPT/bin/msend" alice@localhost "by command" 2>&1) &&
    wait_until "$WAIT_TIMEOUT" msp_units_logged; then
    pass "msend: delivered by the command, run as a transient tcpmux-msp@ unit"
else
    fail "[msp] deliver = \"command\" runs as tcpmux-msp@*.service" "$out" \
        "$(ct journalctl -u tcpmuxd-msp.service --no-pager -n 10)"
fi
out=$(ct "$OPT/bin/msend" bob@localhost "anyone?" 2>&1)
if [ $? = 1 ] && printf '%s\n' "$out" | grep -q 'refused: bob is away'; then
    pass "a failing delivery command's first stderr line is the reason sent back"
else
    fail "msend bob@localhost is refused with the command's reason" "$out"
fi
rm -f "$etc/tcpmuxd/conf.d/80-msp.toml"

section "Message Send Protocol: off"
if out=$(ct systemctl disable --now tcpmuxd-msp.socket 2>&1); then
    pass "MSP off: systemctl disable --now tcpmuxd-msp.socket"
    [ -z "$out" ] || note "$out"
else
    fail "systemctl disable --now tcpmuxd-msp.socket" "$out"
fi
msp_off() {
    [ "$(ct systemctl is-active tcpmuxd-msp.socket tcpmuxd-msp.service | tr '\n' ' ')" = "inactive inactive " ]
}
if wait_until "$WAIT_TIMEOUT" msp_off && [ "$(ct systemctl is-enabled tcpmuxd-msp.socket)" = disabled ]; then
    pass "tcpmuxd-msp.socket and tcpmuxd-msp.service both stopped, the socket disabled"
else
    fail "the MSP socket and service are stopped and disabled" \
        "$(ct systemctl show -p ActiveState,UnitFileState tcpmuxd-msp.socket tcpmuxd-msp.service)"
fi
out=$(ct "$OPT/bin/msend" alice@localhost "nobody listens" 2>&1)
code=$?
if [ "$code" != 0 ]; then
    pass "msend once MSP is off: not answered (exit $code: $out)"
else
    fail "msend fails once MSP is off" "$out"
fi
touch "$root/run/e2e-msp-done"
wait "$msp_loop_pid"
out=$(cat "$work/msp-loop.log")
if printf '%s\n' "$out" | grep -q '^connections: [1-9][0-9]* served, 0 failed$' &&
    [ "$(show tcpmuxd.service MainPID)" = "$tcpmux_pid" ]; then
    pass "TCPMUX clients meanwhile: $(printf '%s\n' "$out" | tail -n 1), tcpmuxd.service never restarted"
else
    fail "every TCPMUX client is served while MSP is turned on and off, by the same process" "$out" \
        "MainPID $tcpmux_pid, now $(show tcpmuxd.service MainPID)"
fi

# ---- resources: [tcpmux] defaults and a service's own, in its unit ----------

# What a session's program sees of its user, umask, limits and environment.
# Warm units: tests/systemd-e2e-warm.sh.
resources_checks() {
    section "user, umask, environment and limits of a session's unit (cold)"
    local out want=$RESOURCES_WANT
    resources_dropin resources:0 >"$etc/tcpmuxd/conf.d/85-resources.toml"
    if ! ct systemctl reload tcpmuxd.service || ! wait_until "$WAIT_TIMEOUT" lists resources; then
        fail "reload serves \"resources\"" "$(ct journalctl -u tcpmuxd.service --no-pager -n 10)"
    else
        out=$(ct "$CLIENT" localhost resources </dev/null 2>/dev/null | tr -d '\r')
        if [ "$out" = "$want" ]; then
            pass "a cold unit gets User=, UMask=, Environment= and Limit*= from [tcpmux] and its service"
        else
            fail "the session of \"resources\" prints its umask, limits, uid and variables" \
                "got: $(printf '%s' "$out" | tr '\n' ' ')" "want: $(printf '%s' "$want" | tr '\n' ' ')" \
                "$(ct journalctl --no-pager -n 10 -u 'tcpmux-resources@*' 2>&1)"
        fi
    fi
    rm -f "$etc/tcpmuxd/conf.d/85-resources.toml"
    ct systemctl reload tcpmuxd.service
}
if [ "$E2E_SYSTEMD_LAUNCHER" = 1 ]; then
    resources_checks
fi

# Behind a load balancer: from a trusted address, the client a PROXY header
# names is the session's REMOTE_ADDR and REMOTE_PORT, in its unit too.
proxy_checks() {
    section "a client named by a trusted balancer's PROXY header (systemd launcher)"
    local out want
    cat >"$etc/tcpmuxd/conf.d/86-proxy.toml" <<'EOF'
[tcpmux]
trusted_proxies = ["127.0.0.2"]

[[service]]
name = "remote"
command = ["/usr/bin/printenv", "REMOTE_ADDR", "REMOTE_PORT"]
launcher = "systemd"
warm = 0
EOF
    if ! ct systemctl reload tcpmuxd.service || ! wait_until "$WAIT_TIMEOUT" lists remote; then
        fail "reload serves \"remote\"" "$(ct journalctl -u tcpmuxd.service --no-pager -n 10)"
    else
        # A balancer at 127.0.0.2 (python3 binds the source address).
        out=$(ct timeout 20 python3 -c '
import socket
s = socket.socket()
s.settimeout(15)
s.bind(("127.0.0.2", 0))
s.connect(("127.0.0.1", 1))
s.sendall(b"PROXY TCP4 203.0.113.7 127.0.0.1 40001 1\r\nremote\r\n")
got = b""
while True:
    b = s.recv(4096)
    if not b:
        break
    got += b
print(got.decode(errors="replace"), end="")
' 2>&1 | tr -d '\r')
        want=$(printf '+\n203.0.113.7\n40001')
        if [ "$out" = "$want" ]; then
            pass "a unit's session sees REMOTE_ADDR and REMOTE_PORT from a trusted PROXY header"
        else
            fail "the session of \"remote\" behind 127.0.0.2 prints the client the header names" \
                "got: $(printf '%s' "$out" | tr '\n' ' ')" "want: $(printf '%s' "$want" | tr '\n' ' ')" \
                "$(ct journalctl --no-pager -n 10 -u tcpmuxd.service 2>&1)"
        fi
        if ct journalctl -u tcpmuxd.service -o json --no-pager |
            grep -F '"TCPMUX_SERVICE":"remote"' | grep -F '"OUTCOME":"served"' |
            grep -qF '"REMOTE_ADDR":"203.0.113.7"'; then
            pass "journal: the session of \"remote\" is logged with the client's REMOTE_ADDR"
        else
            fail "journalctl -u tcpmuxd has OUTCOME=served, REMOTE_ADDR=203.0.113.7 for \"remote\"" \
                "$(ct journalctl -u tcpmuxd.service --no-pager -n 10)"
        fi
    fi
    rm -f "$etc/tcpmuxd/conf.d/86-proxy.toml"
    ct systemctl reload tcpmuxd.service
}
if [ "$E2E_SYSTEMD_LAUNCHER" = 1 ]; then
    proxy_checks
fi

# ---- the end ------------------------------------------------------------------

section "result"
restarts=$(show tcpmuxd.service NRestarts)
if [ "$restarts" = 0 ] && ! ct systemctl is-failed --quiet tcpmuxd.service; then
    pass "tcpmuxd.service never failed or restarted on its own"
else
    fail "tcpmuxd.service did not fail (NRestarts=$restarts)" "$(ct journalctl -u tcpmuxd.service --no-pager -n 20)"
fi
# ---- the Debian package: install, man page, reload, upgrade ------------------

# A bookworm root file system made by debootstrap, cached as a tarball
# (about a minute to make; seconds to unpack).
make_rootfs() {
    local cache=$1 mirror
    # The mirror apt already uses: deb822 .sources, or one-line .list files.
    mirror=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
        sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\).*/\1/p' | grep -v security | head -n 1)
    if [ -z "$mirror" ]; then
        mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
            awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /:\/\//) { print $i; exit } }')
    fi
    [ -n "$mirror" ] || return 1
    command -v debootstrap >/dev/null || return 1
    note "debootstrap bookworm from $mirror (cached in $cache)"
    rm -rf "$work/debootstrap"
    timeout 600 debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,man-db \
        bookworm "$work/debootstrap" "$mirror" >"$work/debootstrap.log" 2>&1 || return 1
    mkdir -p "$(dirname "$cache")"
    tar -C "$work/debootstrap" -cf "$cache.part" . && mv "$cache.part" "$cache"
    rm -rf "$work/debootstrap"
}

# Whether the session across the upgrade echoed LINE.
up_said() { grep -qx "$1" "$work/up.out"; }

package_checks() {
    section "the Debian package (dpkg -i, man page, reload without procps, upgrade)"
    local deb=$E2E_DEB newer=${E2E_DEB_NEWER:-} cache=${E2E_ROOTFS:-$work/bookworm.tar}
    local out page loop_pid before_pid after_pid sock_before sock_after
    # The client loop runs until the upgrade is over, at most this long.
    local loop_seconds=90
    if [ ! -f "$deb" ] || [ ! -f "$newer" ]; then
        fail "the packages to install exist" "E2E_DEB=$deb" "E2E_DEB_NEWER=$newer"
        return
    fi
    if [ ! -f "$cache" ] && ! make_rootfs "$cache"; then
        fail "a bookworm root file system for the package checks (debootstrap)" \
            "$(tail -n 20 "$work/debootstrap.log" 2>/dev/null)"
        return
    fi
    mkdir "$work/rootfs"
    if ! tar -C "$work/rootfs" -xf "$cache"; then
        fail "unpack $cache"
        return
    fi
    # Not in /tmp: the container mounts a tmpfs there.
    cp "$deb" "$work/rootfs/root/old.deb"
    cp "$newer" "$work/rootfs/root/new.deb"
    printf '127.0.0.1 localhost\n::1 localhost ip6-localhost\n' >"$work/rootfs/etc/hosts"
    boot_container "$machine-deb" -D "$work/rootfs"
    CLIENT=/usr/bin/tcpmux

    if out=$(ct dpkg -i /root/old.deb 2>&1); then
        pass "dpkg -i $(basename "$deb") on a minimal bookworm"
    else
        fail "dpkg -i $(basename "$deb")" "$out"
        return
    fi
    if ct test -x /usr/bin/msend && ct test -x /usr/bin/tcpmux && ct test -d /etc/tcpmuxd/conf.d &&
        [ "$(ct systemctl is-active tcpmuxd.socket tcpmuxd.service | tr '\n' ' ')" = "inactive inactive " ]; then
        pass "installed: tcpmuxd, tcpmux, msend, /etc/tcpmuxd/conf.d/; nothing started"
    else
        fail "the package installs msend and conf.d/ and starts nothing" \
            "$(ct dpkg -L tcpmuxd 2>&1 | grep -e bin/ -e conf.d)"
    fi
    out=$(ct dpkg -S /etc/tcpmuxd/conf.d 2>&1)
    if [ "$out" = "tcpmuxd: /etc/tcpmuxd/conf.d" ] && ct test -f /usr/lib/systemd/system/tcpmuxd-msp.service; then
        pass "/etc/tcpmuxd/conf.d belongs to the package; tcpmuxd-msp.service installed"
    else
        fail "dpkg -S /etc/tcpmuxd/conf.d names tcpmuxd" "$out"
    fi
    ct systemctl preset tcpmuxd-msp.socket tcpmuxd-msp.service >/dev/null 2>&1
    out=$(ct systemctl is-enabled tcpmuxd-msp.socket 2>&1)
    if [ "$out" = disabled ]; then
        pass "the package's preset keeps tcpmuxd-msp.socket disabled (systemctl preset)"
    else
        fail "systemctl preset tcpmuxd-msp.socket leaves it disabled" "$out"
    fi
    page=$(ct man -P cat tcpmuxd 2>&1)
    if printf '%s\n' "$page" | grep -q -- '--check' && ct man -w tcpmuxd.toml >/dev/null 2>&1 &&
        ct man -w msend >/dev/null 2>&1 && ct man -w tcpmux >/dev/null 2>&1; then
        pass "man tcpmuxd works (and man tcpmuxd.toml, tcpmux, msend are found)"
    else
        fail "man tcpmuxd shows the page" "$(printf '%s\n' "$page" | head -n 5)"
    fi

    printf '[[service]]\nname = "hold"\ncommand = ["/bin/cat"]\nlauncher = "systemd"\n' \
        >"$root/etc/tcpmuxd/conf.d/50-hold.toml"
    if ! out=$(ct systemctl enable --now tcpmuxd.socket tcpmuxd-msp.socket 2>&1) ||
        ! wait_until "$WAIT_TIMEOUT" lists hold || ! wait_until "$WAIT_TIMEOUT" active_running; then
        fail "systemctl enable --now tcpmuxd.socket tcpmuxd-msp.socket serves hold" "$out" \
            "$(ct journalctl -u tcpmuxd.service --no-pager -n 20)"
        return
    fi
    pass "the packaged units serve: tcpmux localhost --list lists hold"

    printf '[[service]]\nname = "added-by-reload"\ncommand = ["/bin/cat"]\n' \
        >"$root/etc/tcpmuxd/conf.d/60-reload.toml"
    if ct test ! -e /bin/kill && ct test ! -e /usr/bin/kill && out=$(ct systemctl reload tcpmuxd.service 2>&1) &&
        wait_until "$WAIT_TIMEOUT" lists added-by-reload && wait_until "$WAIT_TIMEOUT" active_running; then
        pass "systemctl reload works without procps (no kill binary installed)"
    else
        fail "systemctl reload tcpmuxd works on a system without /bin/kill" "$out" \
            "$(ct journalctl -u tcpmuxd.service --no-pager -n 10)"
    fi

    # A session open across the upgrade (systemd launcher: a unit of its own).
    mkfifo "$work/up.in"
    timeout "$SESSION_TIMEOUT" nsenter -t "$pid1" -a env -i PATH=/usr/bin:/bin "$CLIENT" localhost hold \
        <"$work/up.in" >"$work/up.out" 2>"$work/up.err" &
    session_pids+=($!)
    exec 7>"$work/up.in"
    echo "before upgrade" >&7
    if ! wait_until "$WAIT_TIMEOUT" up_said "before upgrade"; then
        fail "a session of hold echoes before the upgrade" "$(cat "$work/up.out" "$work/up.err")"
    fi

    # A client connecting in a loop meanwhile, inside the container; it
    # stops when /run/e2e-stop appears, or after loop_seconds.
    # shellcheck disable=SC2016 # expanded by the shell inside
    timeout $((loop_seconds + 10)) nsenter -t "$pid1" -a env -i PATH=/usr/bin:/bin \
        LOOP_SECONDS="$loop_seconds" bash -c '
        ok=0 failed=0 end=$((SECONDS + LOOP_SECONDS))
        while [ ! -e /run/e2e-stop ] && [ "$SECONDS" -lt "$end" ]; do
            if out=$(tcpmux --timeout 10 localhost --list 2>&1) && printf "%s\n" "$out" | grep -q "^hold"; then
                ok=$((ok + 1))
            else
                failed=$((failed + 1))
                printf "failed: %s\n" "$out"
            fi
        done
        echo "connections: $ok served, $failed failed"' >"$work/loop.log" 2>&1 &
    loop_pid=$!
    session_pids+=("$loop_pid")
    sleep 1
    before_pid=$(show tcpmuxd.service MainPID)
    sock_before="$(show tcpmuxd.socket ActiveEnterTimestampMonotonic) $(show tcpmuxd-msp.socket ActiveEnterTimestampMonotonic)"
    if out=$(ct dpkg -i /root/new.deb 2>&1); then
        pass "dpkg -i $(basename "$newer") over $(basename "$deb")"
    else
        fail "dpkg -i $(basename "$newer")" "$out"
    fi
    wait_until "$WAIT_TIMEOUT" eval '[ "$(show tcpmuxd.service MainPID)" != "$before_pid" ]' &&
        wait_until "$WAIT_TIMEOUT" active_running
    # Connections keep coming for a moment after the new daemon is up.
    sleep 1
    touch "$root/run/e2e-stop"
    wait "$loop_pid"
    out=$(cat "$work/loop.log")
    after_pid=$(show tcpmuxd.service MainPID)
    sock_after="$(show tcpmuxd.socket ActiveEnterTimestampMonotonic) $(show tcpmuxd-msp.socket ActiveEnterTimestampMonotonic)"
    if [ "$after_pid" != "$before_pid" ] && [ "$sock_after" = "$sock_before" ] && active_running; then
        pass "the upgrade restarted tcpmuxd.service (pid $before_pid, now $after_pid), neither socket unit"
    else
        fail "the postinst restarts tcpmuxd.service only" "MainPID $before_pid, then $after_pid" \
            "sockets active since $sock_before, then $sock_after"
    fi
    if printf '%s\n' "$out" | grep -q '^connections: [1-9][0-9]* served, 0 failed$'; then
        pass "a client connecting in a loop across the upgrade: $(printf '%s\n' "$out" | tail -n 1)"
    else
        fail "no connection refused or reset during the upgrade" "$out"
    fi
    echo "after upgrade" >&7
    if wait_until "$WAIT_TIMEOUT" up_said "after upgrade"; then
        pass "a session open across the upgrade keeps working"
    else
        fail "the session of hold echoes after the upgrade" "$(cat "$work/up.out" "$work/up.err")"
    fi
    exec 7>&-
    note "installed after the upgrade: tcpmuxd $(ct dpkg-query -W -f '${Version}' tcpmuxd)"

    # The drop-ins this test wrote are the administrator's: once they are
    # gone, purging removes conf.d/ and /etc/tcpmuxd/ with the package.
    rm -f "$root"/etc/tcpmuxd/conf.d/*.toml
    if out=$(ct dpkg --purge tcpmuxd 2>&1) && ct test ! -e /etc/tcpmuxd; then
        pass "dpkg --purge tcpmuxd removes /etc/tcpmuxd/ and its conf.d/"
    else
        fail "dpkg --purge tcpmuxd removes /etc/tcpmuxd" "$out" "$(ct ls -la /etc/tcpmuxd 2>&1)"
    fi
}

if [ -n "${E2E_DEB:-}" ]; then
    stop_container
    package_checks
else
    section "package checks not run (E2E_DEB is not set)"
fi

finish
