# shellcheck shell=bash disable=SC2034
# (SC2034: variables set here are read by the scripts that source this file)
# bench/lib.sh -- helpers shared by bench/callrate.sh, bench/memory.sh and
# bench/run.sh.  Source it; do not run it.
#
# Everything here stays on 127.0.0.1.  Every process this file starts is
# remembered by PID (BENCH_PIDS) and killed by PID on exit; nothing is
# killed by name.

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
BENCH_OUT=${BENCH_OUT:-$BENCH_DIR/out}
BENCH_IP=127.0.0.1
CLK_TCK=$(getconf CLK_TCK)
SIPP=${SIPP:-sipp}
LUA=${LUA:-lua5.4}

# BENCH_FAKE_LUASIP=1: use sipp's own uas in place of examples/answer.lua,
# so that the scripts can be tried before luasip exists.  Results are then
# labelled "FAKE" everywhere.
BENCH_FAKE_LUASIP=${BENCH_FAKE_LUASIP:-0}

# Module paths for the luasip server: the work tree's lua/ and build/.
LUAP="$ROOT/lua/?.lua;$ROOT/lua/?/init.lua;;"
LUACP="$ROOT/build/?.so;;"

# Kamailio, the reference server of bench/proxy.sh and bench/register.sh
# (Debian: kamailio + kamailio-lua-modules; bench only, see check_kamailio).
# -DD: stay in the foreground but fork the -n SIP worker processes (a
# single -D is Kamailio's no-fork mode: the main process alone handles
# SIP and -n is ignored).  -x fm: the fast shm allocator; Debian's
# default (qm) is the debugging one.  -m 1024 (MB of shared memory): tm
# keeps each transaction for a while after it ends, and with -m 256 the
# proxy ran out of shared memory at 2000 calls/s ("out of mem" from tm,
# calls failed); 1024 holds about 6000 calls/s.
KAMAILIO=${KAMAILIO:-kamailio}
KAMAILIO_ARGS=${BENCH_KAMAILIO_ARGS:--DD -E -x fm -M 64 -m 1024 -n 2}
KAMAILIO_MODDIR=${KAMAILIO_MODDIR:-/usr/lib/x86_64-linux-gnu/kamailio/modules}

BENCH_PIDS=()

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'bench: error: %s\n' "$*" >&2; exit 2; }

need_cmd() {
    local c
    for c in "$@"; do
        command -v "$c" >/dev/null 2>&1 || die "'$c' not found in PATH"
    done
}

# The real luasip server needs the C module built by `make`.
check_luasip_built() {
    if [[ $BENCH_FAKE_LUASIP == 1 ]]; then
        log "BENCH_FAKE_LUASIP=1: sipp -sn uas stands in for luasip (numbers are NOT luasip's)"
        return 0
    fi
    [[ -f $ROOT/build/luasip/core.so ]] ||
        die "$ROOT/build/luasip/core.so is missing: run 'make' in $ROOT first (or set BENCH_FAKE_LUASIP=1 to try the scripts with sipp's uas as a stand-in)"
    [[ -f $ROOT/examples/answer.lua ]] ||
        die "$ROOT/examples/answer.lua is missing"
    need_cmd "$LUA"
}

# Kamailio with app_lua, for the reference runs.  Returns 1 (after saying
# how to install it) when it is missing, so a caller can skip the run.
check_kamailio() {
    if ! command -v "$KAMAILIO" >/dev/null 2>&1; then
        log "kamailio not found: install it with 'apt-get install kamailio kamailio-lua-modules' (bench only)"
        return 1
    fi
    if [[ ! -f $KAMAILIO_MODDIR/app_lua.so ]]; then
        log "$KAMAILIO_MODDIR/app_lua.so not found: install it with 'apt-get install kamailio-lua-modules' (bench only)"
        return 1
    fi
    return 0
}

# server_oom LOGFILE: lines in a server log saying it ran out of memory
# (Kamailio: "out of mem", "could not allocate shared memory", "no more
# shm/pkg memory"): a too small -m/-M, not the server's speed, failed calls.
server_oom() {
    grep -cE 'out of mem|could not allocate (shared|private) memory|no more (shm|pkg)' "$1" 2>/dev/null || true
}

kamailio_version() { "$KAMAILIO" -v 2>/dev/null | awk '/^version:/ { print $3; exit }'; }

# ---------------------------------------------------------------- processes

kill_pid() {  # kill_pid PID: TERM, wait up to 3 s, then KILL.  Only our PIDs.
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 30; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

bench_cleanup() {
    local pid
    for pid in "${BENCH_PIDS[@]}"; do
        kill_pid "$pid"
    done
    BENCH_PIDS=()
}
trap bench_cleanup EXIT
trap 'bench_cleanup; exit 130' INT
trap 'bench_cleanup; exit 143' TERM

track_pid() { BENCH_PIDS+=("$1"); }

# untrack_pid PID: forget a PID once it has been reaped, so that cleanup can
# never hit an unrelated process that got the same PID later.
untrack_pid() {
    local keep=() p
    for p in "${BENCH_PIDS[@]}"; do
        [[ $p == "$1" ]] || keep+=("$p")
    done
    BENCH_PIDS=("${keep[@]}")
}

# cpu_ticks PID: utime+stime of the process in clock ticks (/proc/PID/stat
# fields 14 and 15).  The comm field may hold spaces, so cut at the last ')'.
cpu_ticks() {
    local s
    s=$(<"/proc/$1/stat") || return 1
    s=${s##*) }
    # shellcheck disable=SC2206
    local f=($s)      # f[0] is field 3 (state), so field N is f[N-3]
    echo $((f[11] + f[12]))
}

rss_kb() {  # rss_kb PID: VmRSS in kB
    awk '/^VmRSS:/ {print $2}' "/proc/$1/status"
}

now_ns() { date +%s%N; }

# pct NUM DEN -> NUM/DEN*100 with one decimal
pct() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.1f", a * 100 / b; else print "nan" }'; }

# ---------------------------------------------------------------- ports

# free_port_block N: print a base port B such that UDP and TCP ports
# B..B+N-1 are all unused on this host right now.  Ports are taken from
# 20000-31999, below the kernel's ephemeral range, so that they do not
# collide with ports the kernel hands out.
free_port_block() {
    local n=$1 try base p used busy
    used=$(ss -Hantu 2>/dev/null | awk '{ n = split($5, a, ":"); print a[n] }' | sort -un)
    for ((try = 0; try < 200; try++)); do
        base=$((20000 + (RANDOM % 600) * 20))
        busy=0
        for ((p = base; p < base + n; p++)); do
            if grep -qx "$p" <<<"$used"; then busy=1; break; fi
        done
        if ((busy == 0)); then echo "$base"; return 0; fi
    done
    die "no free block of $n ports found in 20000-31999"
}

# Every sipp we start binds: SIP port, control port (-cp, UDP) and two media
# echo ports (-mp, -mp+2).  Give each sipp a block of 8 ports:
#   B = SIP, B+1 = control, B+4..B+7 = media.
sipp_port_args() {  # sipp_port_args BASE
    local b=$1
    echo "-i $BENCH_IP -bind_local -p $b -ci $BENCH_IP -cp $((b + 1)) -mi $BENCH_IP -mp $((b + 4))"
}

# ---------------------------------------------------------------- server

# server_cmd KIND PORT_BASE: prints nothing; fills the array SERVER_CMD and
# SERVER_READY (how readiness is detected: "listening" or "bound").
# Both servers go through exactly the same start/measure/stop code path.
server_cmd() {
    local kind=$1 base=$2
    case $kind in
    sipp-uas)
        # shellcheck disable=SC2207
        SERVER_CMD=("$SIPP" -sn uas $(sipp_port_args "$base") -nostdin)
        SERVER_READY=bound
        ;;
    luasip)
        if [[ $BENCH_FAKE_LUASIP == 1 ]]; then
            server_cmd sipp-uas "$base"
            return
        fi
        # lua5.4 reads LUA_PATH_5_4 before LUA_PATH: set both, so that a
        # LUA_PATH_5_4 in the caller's environment cannot change what runs
        SERVER_CMD=(env "LUA_PATH=$LUAP" "LUA_PATH_5_4=$LUAP"
            "LUA_CPATH=$LUACP" "LUA_CPATH_5_4=$LUACP"
            "$LUA" "$ROOT/examples/answer.lua" "$base")
        SERVER_READY=listening
        ;;
    luasip-proxy)
        # examples/proxy.lua PORT TARGET SECONDS; it serves until killed
        SERVER_CMD=(env "LUA_PATH=$LUAP" "LUA_PATH_5_4=$LUAP"
            "LUA_CPATH=$LUACP" "LUA_CPATH_5_4=$LUACP"
            "$LUA" "$ROOT/examples/proxy.lua" "$base" "$SERVER_TARGET" 86400)
        SERVER_READY=listening
        ;;
    luasip-registrar)
        SERVER_CMD=(env "LUA_PATH=$LUAP" "LUA_PATH_5_4=$LUAP"
            "LUA_CPATH=$LUACP" "LUA_CPATH_5_4=$LUACP"
            "$LUA" "$BENCH_DIR/luasip/registrar.lua" "$base" "$SERVER_USERS" "$SERVER_AUTH")
        SERVER_READY=listening
        ;;
    luasip-ivr)
        # bench/media.sh: bench/luasip/ivr.lua, pinned to one core
        # (SERVER_TASKSET, e.g. "taskset -c 1", or empty); SERVER_IVR_ARGS:
        # RTP_MIN RTP_MAX PROMPT REC_DIR HOLD off|mandatory
        # shellcheck disable=SC2206
        SERVER_CMD=(env "LUA_PATH=$LUAP" "LUA_PATH_5_4=$LUAP"
            "LUA_CPATH=$LUACP" "LUA_CPATH_5_4=$LUACP" $SERVER_TASKSET
            "$LUA" "$BENCH_DIR/luasip/ivr.lua" "$base" "${SERVER_IVR_ARGS[@]}")
        SERVER_READY=listening
        ;;
    kamailio-proxy | kamailio-registrar)
        local role=${kind#kamailio-} envs=()
        if [[ $role == proxy ]]; then
            envs=("BENCH_TARGET=$SERVER_TARGET")
        else
            envs=("BENCH_AUTH=$([[ $SERVER_AUTH == auth ]] && echo 1 || echo 0)"
                "BENCH_USERS=$SERVER_USERS")
        fi
        mkdir -p "$BENCH_OUT/kamailio-run"
        # shellcheck disable=SC2206
        SERVER_CMD=(env "${envs[@]}" "$KAMAILIO" -f "$BENCH_DIR/kamailio/$role.cfg"
            $KAMAILIO_ARGS -l "udp:$BENCH_IP:$base" -Y "$BENCH_OUT/kamailio-run"
            -A "KEMI_SCRIPT=\"$BENCH_DIR/kamailio/$role.lua\"")
        SERVER_READY=ping
        ;;
    *) die "unknown server kind '$kind' (want luasip, sipp-uas, luasip-proxy, luasip-registrar, luasip-ivr, kamailio-proxy or kamailio-registrar)" ;;
    esac
}

# sip_ping PORT: 0 when an OPTIONS to udp:127.0.0.1:PORT gets any SIP
# response within 0.5 s (a Kamailio worker has loaded its KEMI script).
# Uses LuaSocket (lua-socket, a test dependency).
sip_ping() {
    "$LUA" - "$BENCH_IP" "$1" 2>/dev/null <<'EOF'
local socket = require "socket"
local ip, port = arg[1], tonumber(arg[2])
local u = assert(socket.udp())
assert(u:setsockname(ip, 0))
local _, lport = u:getsockname()
u:settimeout(0.5)
math.randomseed(os.time())
local id = math.random(1, 1e9)
local msg = table.concat({
    ("OPTIONS sip:ping@%s:%d SIP/2.0"):format(ip, port),
    ("Via: SIP/2.0/UDP %s:%d;branch=z9hG4bK-ping%d;rport"):format(ip, lport, id),
    "Max-Forwards: 70",
    ("From: <sip:bench@%s:%d>;tag=%d"):format(ip, lport, id),
    ("To: <sip:ping@%s:%d>"):format(ip, port),
    ("Call-ID: ping-%d@%s"):format(id, ip),
    "CSeq: 1 OPTIONS", "Content-Length: 0", "", "" }, "\r\n")
assert(u:sendto(msg, ip, port))
local r = u:receive()
os.exit(r and r:match("^SIP/2%.0 %d%d%d") and 0 or 1)
EOF
}

server_label() {  # human label for reports
    if [[ $1 == luasip && $BENCH_FAKE_LUASIP == 1 ]]; then
        echo "luasip(FAKE=sipp-uas)"
    else
        echo "$1"
    fi
}

# start_server KIND PORT_BASE LOGFILE: sets SERVER_PID; waits until ready.
start_server() {
    local kind=$1 base=$2 logf=$3
    server_cmd "$kind" "$base"
    log "starting $(server_label "$kind"): ${SERVER_CMD[*]}"
    # `env` execs the interpreter, so $! is the server process itself.
    "${SERVER_CMD[@]}" >"$logf" 2>&1 </dev/null &
    SERVER_PID=$!
    track_pid "$SERVER_PID"
    # ready within 10 s (a ping that gets no answer takes 0.5 s itself)
    local deadline=$(($(now_ns) + 10000000000)) ready=0
    while (($(now_ns) < deadline)); do
        kill -0 "$SERVER_PID" 2>/dev/null ||
            die "server exited during start-up; see $logf: $(tail -5 "$logf")"
        if [[ $SERVER_READY == listening ]]; then
            grep -q listening "$logf" && { ready=1; break; }
        elif [[ $SERVER_READY == ping ]]; then
            # three answers in a row: every worker is likely past its init
            sip_ping "$base" && sip_ping "$base" && sip_ping "$base" && { ready=1; break; }
        else
            ss -Hlun "sport = :$base" | grep -q . && { ready=1; break; }
        fi
        sleep 0.1
    done
    ((ready)) || die "server not ready after 10 s; see $logf"
    # a forking server (Kamailio): its processes, so that CPU and memory
    # are counted for all of them and each is killed by its PID at the end
    SERVER_PIDS=("$SERVER_PID")
    local c
    for c in $(ps -o pid= --ppid "$SERVER_PID"); do
        SERVER_PIDS+=("$c")
        track_pid "$c"
    done
    # the PID must be the server itself, not a wrapper
    log "server pid $SERVER_PID ($(cat "/proc/$SERVER_PID/comm"), ${#SERVER_PIDS[@]} process(es)) ready on udp:$BENCH_IP:$base"
}

stop_server() {
    local p
    for p in "${SERVER_PIDS[@]:-$SERVER_PID}"; do   # main first: it stops its children
        kill_pid "$p"
        untrack_pid "$p"
    done
    SERVER_PIDS=()
}

# server_ticks: utime+stime of all the server's processes, in clock ticks
# (a process that is gone counts 0).
server_ticks() {
    local p t=0 c
    for p in "${SERVER_PIDS[@]}"; do
        c=$(cpu_ticks "$p" 2>/dev/null) || c=0
        t=$((t + c))
    done
    echo "$t"
}

# server_pss_kb: proportional set size of all the server's processes (kB);
# for Kamailio this counts its shared memory once, not once per process.
server_pss_kb() {
    local p t=0 c
    for p in "${SERVER_PIDS[@]}"; do
        c=$(awk '/^Pss:/ { print $2; exit }' "/proc/$p/smaps_rollup" 2>/dev/null) || c=0
        t=$((t + ${c:-0}))
    done
    echo "$t"
}

# ---------------------------------------------------------------- sipp uac

# uac_start NAME SIPP_ARGS...  /  uac_wait DEADLINE_S  /  run_uac NAME DEADLINE_S SIPP_ARGS...
# Runs one sipp client in a subshell whose only child is sipp, so that the
# subshell's `times` gives sipp's own CPU time.  uac_wait kills sipp (by its
# PID) if it is still running DEADLINE_S seconds after it started.  Sets
# UAC_PID while running; after uac_wait: UAC_RC, UAC_CPU_S, UAC_WALL_S.
# Output: $BENCH_OUT/NAME.{log,times,pid,rc}.
uac_start() {
    UAC_NAME=$1
    shift
    local base=$BENCH_OUT/$UAC_NAME i
    rm -f "$base".{log,times,pid,rc}
    UAC_T0=$(now_ns)
    (
        "$SIPP" "$@" >"$base.log" 2>&1 </dev/null &
        echo $! >"$base.pid"
        rc=0
        wait $! || rc=$?
        echo "$rc" >"$base.rc"
        times >"$base.times"
    ) &
    UAC_SUB=$!
    track_pid "$UAC_SUB"
    for ((i = 0; i < 100; i++)); do
        [[ -s $base.pid ]] && break
        sleep 0.02
    done
    UAC_PID=$(cat "$base.pid" 2>/dev/null || true)
    if [[ -n $UAC_PID ]]; then track_pid "$UAC_PID"; fi
}

uac_running() { kill -0 "$UAC_SUB" 2>/dev/null; }

uac_wait() {
    local deadline=$1 base=$BENCH_OUT/$UAC_NAME
    while uac_running; do
        if (($(now_ns) - UAC_T0 > deadline * 1000000000)); then
            log "uac $UAC_NAME still running after ${deadline}s: killing pid $UAC_PID"
            if [[ -n $UAC_PID ]]; then kill_pid "$UAC_PID"; fi
            break
        fi
        sleep 0.1
    done
    wait "$UAC_SUB" 2>/dev/null || true
    untrack_pid "$UAC_SUB"
    if [[ -n $UAC_PID ]]; then untrack_pid "$UAC_PID"; fi
    UAC_WALL_S=$(awk -v a="$UAC_T0" -v b="$(now_ns)" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')
    UAC_RC=$(cat "$base.rc" 2>/dev/null || echo killed)
    # `times`, second line: children's user and system time, e.g. 0m1.930s 0m0.870s
    UAC_CPU_S=$(awk 'NR == 2 {
            s = 0
            for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); s += a[1] * 60 + a[2] }
            printf "%.3f", s }' "$base.times" 2>/dev/null || true)
    [[ -n $UAC_CPU_S ]] || UAC_CPU_S=0
}

run_uac() {
    local name=$1 deadline=$2
    shift 2
    uac_start "$name" "$@"
    uac_wait "$deadline"
}

# stat_field CSV NAME: value of column NAME in the last line of a sipp
# -trace_stat file (';'-separated, header on line 1).
stat_field() {
    awk -F';' -v name="$2" '
        NR == 1 { for (i = 1; i <= NF; i++) if ($i == name) col = i; next }
        { last = $col }
        END { if (col == "") exit 1; print last }' "$1"
}

# stat_epoch CSV NAME: the epoch seconds inside a time column such as
# "2026-11-22<TAB>02:28:25.607289<TAB>1795314505.607289" of the last line.
stat_epoch() {
    stat_field "$1" "$2" | awk -F'\t' '{ print $NF }'
}

# achieved_rate CSV: the rate at which the uac really created calls, from a
# -trace_stat file written with a short -fd period.  Uses the last periodic
# row taken while calls were still being created (n calls at time t after
# start: n / t), so that the tail spent waiting for the last responses or
# retransmissions does not count against the rate.  Falls back to
# all calls / whole run when the run was too short for such a row.
achieved_rate() {
    awk -F';' '
        function epoch(field,   a, k) { k = split(field, a, "\t"); return a[k] + 0 }
        NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
        {
            t0 = epoch($col["StartTime"]); t = epoch($col["CurrentTime"])
            n = $col["OutgoingCall(C)"] + 0
            rows++; T[rows] = t - t0; N[rows] = n; total = n; tend = t - t0
        }
        END {
            rate = (tend > 0) ? total / tend : 0
            for (r = rows; r >= 1; r--)
                if (N[r] < total && T[r] >= 1) { rate = N[r] / T[r]; break }
            printf "%.1f", rate
        }' "$1"
}

# udp_rcvbuf_errors: host-wide count of UDP datagrams dropped because a
# socket receive buffer was full (/proc/net/snmp Udp: RcvbufErrors).
udp_rcvbuf_errors() {
    awk '/^Udp:/ { if (!h++) { for (i = 1; i <= NF; i++) c[$i] = i } else print $c["RcvbufErrors"] }' /proc/net/snmp
}

# sock_drops PORT: datagrams dropped by the UDP socket bound to
# 127.0.0.1:PORT (ss skmem "d" counter); 0 if not found.
sock_drops() {
    ss -Huam "sport = :$1" 2>/dev/null |
        awk '{ if (match($0, /,d[0-9]+\)/)) { print substr($0, RSTART + 2, RLENGTH - 3); f = 1; exit } }
             END { if (!f) print 0 }'
}

sipp_version() { "$SIPP" -v 2>&1 | awk 'NF { sub(/^ +/, ""); print; exit }'; }
