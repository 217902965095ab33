# shellcheck shell=bash
# What the scripts that boot a real systemd in a throw-away container share:
# tests/systemd-e2e.sh, tests/systemd-e2e-warm.sh and bench/systemd.sh source
# this file. Sourcing it only defines functions and variables; nothing
# starts until a script calls them:
#
#   skip_unless_bootable      exit 77 without root, systemd-nspawn or nsenter
#   init_work                 make the scratch directory $work (unless the
#                             script has), and the traps that stop and
#                             remove everything on exit
#   boot_container NAME NSPAWN-ARG...
#                             start_container, then wait_for_systemd
#   start_container NAME NSPAWN-ARG...
#                             boot systemd in container NAME (the root and
#                             binds in NSPAWN-ARGs): sets nspawn_pid, pid1
#                             and root (the container's / as seen from here)
#   wait_for_systemd          PASS once the container has booted into
#                             $BOOT_TARGET
#   stop_container            halt the container started last
#   ct CMD...                 run CMD inside the container
#
# The sourcing script may set, before it calls them:
#   BOOT_TIMEOUT (60)     container up and $BOOT_TARGET reached
#   BOOT_TARGET           the unit the container boots into (basic.target:
#                         the journal, the system bus, sockets; no service
#                         the host happens to have enabled)
#   CMD_TIMEOUT (30)      any one command run inside (ct)
#   keep_work             not empty: leave $work in place on exit
#   masks+=(UNIT...)      more units to mask; E2E_MASK="a.service ..." in the
#                         environment adds its units too
#   session_pids+=(PID)   processes to kill on exit
# and may redefine die (the scripts' own error message) after sourcing.

: "${BOOT_TIMEOUT:=60}" "${CMD_TIMEOUT:=30}" "${BOOT_TARGET:=basic.target}"

# ---- reporting ---------------------------------------------------------------

failures=0
failed_checks=()

section() { printf '\n== %s\n' "$*"; }
note() { printf '      %s\n' "$*"; }
pass() { printf 'PASS  %s\n' "$*"; }
fail() {
    local check=$1
    printf 'FAIL  %s\n' "$check"
    shift
    # Whatever explains the failure, indented under it.
    if [ $# -gt 0 ] && [ -n "$*" ]; then
        printf '%s\n' "$*" | sed 's/^/      | /'
    fi
    failures=$((failures + 1))
    failed_checks+=("$check")
}
die() {
    printf 'ERROR %s\n' "$1" >&2
    shift
    if [ $# -gt 0 ] && [ -n "$*" ]; then
        printf '%s\n' "$*" | sed 's/^/      | /' >&2
    fi
    exit 1
}

# The last lines of a test script: its exit status says whether every check
# passed.
finish() {
    if [ "$failures" = 0 ]; then
        echo "all checks passed"
        exit 0
    fi
    echo "$failures checks failed:"
    printf '  %s\n' "${failed_checks[@]}"
    exit 1
}

# Runs CMD until it succeeds or SECONDS have passed.
wait_until() {
    local seconds=$1
    shift
    local deadline=$((SECONDS + seconds))
    until "$@"; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.2
    done
}

# Exit status 77 (the test is skipped) when systemd cannot be booted here.
skip_unless_bootable() {
    local tool
    if [ "$(id -u)" != 0 ]; then
        echo "skipped: booting systemd in a container needs root" >&2
        exit 77
    fi
    for tool in systemd-nspawn nsenter; do
        if ! command -v "$tool" >/dev/null; then
            echo "skipped: $tool is not installed (Debian: systemd-container, util-linux)" >&2
            exit 77
        fi
    done
}

# ---- the container -------------------------------------------------------------

work=
keep_work=
nspawn_pid=
pid1=
root=
cgroups=()
session_pids=()
masks=(systemd-firstboot.service)
read -r -a extra_masks <<<"${E2E_MASK:-}"
masks+=("${extra_masks[@]}")

init_work() {
    [ -n "$work" ] || work=$(mktemp -d)
    trap teardown EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM HUP
}

# Halts the container started last, if it still runs.
stop_container() {
    if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
        # SIGTERM makes nspawn halt the container cleanly, in about a second.
        kill -TERM "$nspawn_pid" 2>/dev/null
        if ! wait_until 20 eval '! kill -0 "$nspawn_pid" 2>/dev/null'; then
            # Killing nspawn alone would leave the container running: its
            # init takes every process of the container with it.
            [ -n "$pid1" ] && kill -KILL "$pid1" 2>/dev/null
            kill -KILL "$nspawn_pid" 2>/dev/null
        fi
        wait "$nspawn_pid" 2>/dev/null
    fi
    nspawn_pid=
    pid1=
}

teardown() {
    local status=$? pid dir
    # Whatever fails here, the rest is still cleaned up (bench/systemd.sh
    # runs with set -e).
    set +e
    trap - EXIT INT TERM HUP
    # A writer the test keeps open to a session's input.
    exec 7>&-
    for pid in "${session_pids[@]}"; do
        kill "$pid" 2>/dev/null
    done
    stop_container
    # nspawn leaves its supervisor/ and payload/ below our cgroup: remove
    # the tree depth first, once the last process in it is gone.
    for dir in "${cgroups[@]}"; do
        [ -d "$dir" ] || continue
        wait_until 10 eval 'find "$dir" -depth -type d -exec rmdir {} + 2>/dev/null; [ ! -d "$dir" ]' ||
            echo "warning: cannot remove cgroup $dir" >&2
    done
    if [ -n "$keep_work" ]; then
        echo "${0##*/}: scratch directory kept: $work" >&2
    elif [ -n "$work" ]; then
        rm -rf "$work"
    fi
    exit "$status"
}

# Boots container NAME with systemd-nspawn ARGS... (the root, binds) and
# waits until its systemd has settled; dies when it does not come up.
boot_container() {
    start_container "$@"
    wait_for_systemd
}

# Boots container NAME with systemd-nspawn ARGS... (the root, binds) and
# sets nspawn_pid, pid1 and root once its systemd answers; dies when it
# does not come up.
start_container() {
    local name=$1 dir hierarchy unit
    shift
    # The container gets a cgroup of its own, so that what nspawn creates
    # below it does not clutter the cgroup this script runs in and can be
    # removed afterwards. cgroup v2 has one hierarchy; a v1 ("hybrid") host
    # has the named systemd hierarchy and usually a v2 one beside it.
    local mine=()
    if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
        mine=("/sys/fs/cgroup/$name")
    else
        for hierarchy in systemd unified; do
            if [ -d "/sys/fs/cgroup/$hierarchy" ]; then
                mine+=("/sys/fs/cgroup/$hierarchy/$name")
            fi
        done
    fi
    for dir in "${mine[@]}"; do
        mkdir -p "$dir" || die "cannot create cgroup $dir"
        cgroups+=("$dir")
    done
    # The container boots into BOOT_TARGET, not the default target: its /etc
    # starts empty, so systemd enables every unit the image has by its
    # presets (Debian's enable all), and a database, proxy or log server the
    # host has installed would start in it too and hold up the boot.
    local kernel_args=("systemd.unit=$BOOT_TARGET")
    for unit in "${masks[@]}"; do
        kernel_args+=("systemd.mask=$unit")
    done

    section "booting systemd in container $name"
    # --register=no and --keep-unit: nspawn must not need a systemd on the
    # host. --private-network: only a loopback of its own.
    (
        for dir in "${mine[@]}"; do
            echo "$BASHPID" >"$dir/cgroup.procs" || exit 1
        done
        exec systemd-nspawn -q "$@" -M "$name" -b \
            --register=no --keep-unit --private-network \
            --console=pipe -- "${kernel_args[@]}"
    ) >"$work/console.log" 2>&1 </dev/null &
    nspawn_pid=$!

    wait_until "$BOOT_TIMEOUT" find_pid1 ||
        die "the container's systemd did not start" "$(cat "$work/console.log")"
    root=/proc/$pid1/root
    wait_until "$BOOT_TIMEOUT" test -S "$root/run/systemd/private" ||
        die "the container's systemd does not answer" "$(cat "$work/console.log")"
}

find_pid1() {
    local child
    kill -0 "$nspawn_pid" 2>/dev/null || return 2
    for child in $(cat /proc/"$nspawn_pid"/task/*/children 2>/dev/null); do
        if [ "$(cat /proc/"$child"/comm 2>/dev/null)" = systemd ]; then
            pid1=$child
            return 0
        fi
    done
    return 1
}

# PASS once the container has reached BOOT_TARGET and its system bus
# listens: what the tests use. Not `systemctl is-system-running --wait`,
# which waits for every job of the boot, whatever it is for. Dies when the
# target is not reached within BOOT_TIMEOUT.
target_reached() {
    [ "$(ct systemctl is-active "$BOOT_TARGET" dbus.socket 2>/dev/null | tr '\n' ' ')" = "active active " ]
}
wait_for_systemd() {
    local failed
    if ! wait_until "$BOOT_TIMEOUT" target_reached; then
        die "the container did not reach $BOOT_TARGET within ${BOOT_TIMEOUT}s" \
            "$(ct systemctl list-jobs --no-pager 2>&1 | head -n 20)" "$(cat "$work/console.log")"
    fi
    pass "container booted into $BOOT_TARGET"
    failed=$(ct systemctl --failed --no-legend --plain --no-pager 2>/dev/null)
    if [ -n "$failed" ]; then
        note "units that failed in the container (E2E_MASK can mask them):"
        printf '%s\n' "$failed" | sed 's/^/      /'
    fi
}

# Runs a command inside the container, with a clean environment.
ct() {
    timeout "$CMD_TIMEOUT" nsenter -t "$pid1" -a \
        env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@"
}

# ---- tcpmuxd in the container (the tests) ----------------------------------------

# Where the staged files appear inside the container.
readonly OPT=/opt/tcpmuxd
readonly CONFIG=/etc/tcpmuxd/tcpmuxd.toml

show() { ct systemctl show -p "$2" --value "$1"; }
active_running() {
    [ "$(ct systemctl show -p ActiveState,SubState --value tcpmuxd.service | tr '\n' ' ')" = "active running " ]
}

# Installs the staged units and the session drop-in in the container's /etc,
# as a package would, with tcpmuxd run from the staged binary, and a hosts
# file and name service configuration (an empty /etc has neither; clients
# name "localhost", and dynamic users have names). Sets etc.
install_staged() {
    local stage=$1
    etc=$root/etc
    local unit
    mkdir -p "$etc/systemd/system/tcpmux-.service.d" "$etc/tcpmuxd/conf.d"
    cp "$stage/units/tcpmuxd.socket" "$stage/units/tcpmuxd-msp.socket" \
        "$stage/units/tcpmuxd.service" "$stage/units/tcpmuxd-msp.service" "$etc/systemd/system/"
    cp "$stage/units/tcpmux-.service.d/10-defaults.conf" "$etc/systemd/system/tcpmux-.service.d/"
    # The container's /usr is the host's, read-only: the binary lives in the
    # staged directory, and the shipped units stay as they are but for its
    # path in their own ExecStart= and ExecReload= lines.
    for unit in tcpmuxd.service tcpmuxd-msp.service; do
        mkdir -p "$etc/systemd/system/$unit.d"
        {
            printf '[Service]\nExecStart=\nExecReload=\n'
            grep -E '^Exec(Start|Reload)=' "$stage/units/$unit" | sed "s|/usr/bin/tcpmuxd |$OPT/bin/tcpmuxd |"
        } >"$etc/systemd/system/$unit.d/50-e2e.conf"
    done
    printf '127.0.0.1 localhost\n::1 localhost ip6-localhost\n' >"$etc/hosts"
    printf 'passwd: files systemd\ngroup: files systemd\nhosts: files\n' >"$etc/nsswitch.conf"
}

# ---- a session's user, umask, environment and limits -----------------------

# What each program of resources_dropin must print: umask, open files,
# core, processes, address space (KiB), CPU time (s), uid, then the
# variables.
RESOURCES_WANT=$(printf '0027\n90\n0\n200\n1048576\n3600\n65534\nC own')

# A configuration drop-in on stdout: [tcpmux] defaults, and one service for
# each NAME:WARM argument overriding some of them, whose program prints
# what it got (dash: ulimit -p is processes).
resources_dropin() {
    # shellcheck disable=SC2016 # expanded by the session's shell
    local show='umask; ulimit -n; ulimit -c; ulimit -p; ulimit -v; ulimit -t; id -u; echo "$LANG $VAR"'
    cat <<'EOF2'
[tcpmux]
user = "nobody"
umask = "0027"
environment = { LANG = "C", VAR = "default" }
limits = { open_files = 100, core_size = 0, processes = 200, address_space = "1G" }
EOF2
    local spec
    for spec in "$@"; do
        printf '\n[[service]]\nname = "%s"\ncommand = ["/bin/sh", "-c", '"'"'%s'"'"']\n' \
            "${spec%:*}" "$show"
        printf 'launcher = "systemd"\nwarm = %s\nenvironment = { VAR = "own" }\n' "${spec#*:}"
        printf 'limits = { cpu_time = "1h", open_files = 90 }\n'
    done
}
