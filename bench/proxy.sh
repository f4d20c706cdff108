#!/usr/bin/env bash
# bench/proxy.sh KIND   (KIND: luasip | kamailio)
#
# Finds the highest call rate a stateful, record-routing proxy holds on
# udp:127.0.0.1: sipp uac -> proxy -> sipp uas.
#   luasip:   examples/proxy.lua PORT sip:service@127.0.0.1:UAS (one process)
#   kamailio: bench/kamailio/proxy.cfg + proxy.lua (KEMI Lua routing), started
#             as kamailio -f proxy.cfg $BENCH_KAMAILIO_ARGS -l udp:127.0.0.1:PORT
#             (default -DD -E -x fm -M 64 -m 1024 -n 2: two SIP workers)
# Both record-route every INVITE and relay it statefully to the uas; ACK and
# BYE come back through the proxy by their Route header.
#
# The uas (bench/proxy_uas.xml: 180, 50 ms, 200; waits for ACK and BYE) runs
# for the whole search; the uac (bench/proxy_uac.xml, sipp's uac with route
# sets) runs one step of BENCH_PROXY_STEP_SECS seconds per rate of
# BENCH_PROXY_RATES and the search stops at the first rate that fails.  A
# step passes as in callrate.sh: every call of the step completed (ACK and
# BYE included), 0 failed (-recv_timeout 2000: a message lost for good fails
# the call), and the rate reached is at least 95% of the target.  A failing
# step is tried BENCH_RETRIES more times (default 1).
#
# Per step: the proxy's CPU (all its processes: Kamailio's main, SIP
# workers and timers), the uas's and the uac's CPU (% of one core),
# datagrams dropped by the proxy's socket, by the uas's socket and by the
# other sockets (from /proc/net/snmp, in practice the uac's), the proxy's
# memory (PSS of all its processes, kB) and server_oom, the lines its log
# gained that say it ran out of memory (Kamailio's -m too small: the step
# fails with why=server_out_of_memory).
#
# Stdout (machine-readable), one line per attempt and a result line:
#   proxy kind=kamailio rate=2000 attempt=1 achieved=1999.1 calls=10000 ok=10000 failed=0 retrans=0 server_drops=0 uas_drops=0 other_drops=0 server_cpu=41.2 uas_cpu=20.1 uac_cpu=25.0 server_pss_kb=9120 server_procs=6 server_oom=0 pass=1
#   result kind=kamailio max_rate=4000 achieved=3990.1 server_cpu=120.0 uas_cpu=60.1 uac_cpu=80.1 server_procs=6
# Exits 3 (after saying how to install it) when Kamailio is asked for and
# is not installed.
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KIND=${1:-}
[[ $KIND == luasip || $KIND == kamailio ]] || die "usage: $0 luasip|kamailio"

RATES=${BENCH_PROXY_RATES:-"500 1000 1500 2000 2500 3000 3500 4000 4500 5000 6000 7000 8000"}
SECS=${BENCH_PROXY_STEP_SECS:-5}
CALL_LIMIT=${BENCH_CALL_LIMIT:-2000}
RECV_TIMEOUT_MS=2000
MIN_FRACTION=0.95
UAC_BUFF=${BENCH_UAC_BUFF:-4194304}
RETRIES=${BENCH_RETRIES:-1}

need_cmd "$SIPP" ss awk getconf ps
if [[ $KIND == luasip ]]; then
    [[ $BENCH_FAKE_LUASIP == 1 ]] && die "BENCH_FAKE_LUASIP has no stand-in for a proxy"
    check_luasip_built
else
    check_kamailio || exit 3
    need_cmd "$LUA"
fi

OUT=$BENCH_OUT/proxy-$KIND
mkdir -p "$OUT"
BENCH_OUT=$OUT

PORTS=$(free_port_block 24)
PROXY_PORT=$PORTS             # the proxy: one SIP port
UAS_BASE=$((PORTS + 8))       # uas: SIP port, +1 control, +4..7 media
UAC_BASE=$((PORTS + 16))      # uac: the same layout

# the uas, for the whole search
# shellcheck disable=SC2046
"$SIPP" -sf "$BENCH_DIR/proxy_uas.xml" $(sipp_port_args "$UAS_BASE") -nostdin \
    -buff_size "$UAC_BUFF" -trace_stat -stf "$OUT/uas.csv" -fd 1 \
    >"$OUT/uas.log" 2>&1 </dev/null &
UAS_PID=$!
track_pid "$UAS_PID"
for ((i = 0; i < 100; i++)); do
    kill -0 "$UAS_PID" 2>/dev/null || die "sipp uas exited during start-up: $(tail -5 "$OUT/uas.log")"
    ss -Hlun "sport = :$UAS_BASE" | grep -q . && break
    sleep 0.1
done
log "uas pid $UAS_PID on udp:$BENCH_IP:$UAS_BASE"

SERVER_TARGET="sip:service@$BENCH_IP:$UAS_BASE"
start_server "$KIND-proxy" "$PROXY_PORT" "$OUT/server.log"
echo "server kind=$KIND pid=$SERVER_PID procs=${#SERVER_PIDS[@]} port=$PROXY_PORT target=$SERVER_TARGET cmd=\"${SERVER_CMD[*]}\""

# run_step RATE ATTEMPT: one step; prints its line, sets STEP_PASS, STEP_SUMMARY.
run_step() {
    local rate=$1 attempt=$2
    local calls=$((rate * SECS)) name="uac-$rate-$attempt"
    local sipp_timeout=$((SECS * 11 / 10 + 3 + RECV_TIMEOUT_MS / 1000))
    local hard_deadline=$((sipp_timeout + 15))
    local stf=$OUT/$name.csv
    rm -f "$stf"

    log "$KIND proxy: step rate=$rate calls=$calls (~${SECS}s) attempt $attempt"
    local d_srv0 d_uas0 d_all0 t0 c0 c1 t1 u0 u1 alive=1 oom0 oom
    oom0=$(server_oom "$OUT/server.log")
    d_srv0=$(sock_drops "$PROXY_PORT")
    d_uas0=$(sock_drops "$UAS_BASE")
    d_all0=$(udp_rcvbuf_errors)
    t0=$(now_ns)
    c0=$(server_ticks)
    u0=$(cpu_ticks "$UAS_PID" 2>/dev/null || echo 0)
    # shellcheck disable=SC2046
    run_uac "$name" "$hard_deadline" \
        -sf "$BENCH_DIR/proxy_uac.xml" "$BENCH_IP:$PROXY_PORT" $(sipp_port_args "$UAC_BASE") \
        -nostdin -buff_size "$UAC_BUFF" \
        -r "$rate" -rp 1000 -m "$calls" -l "$CALL_LIMIT" \
        -timeout "${sipp_timeout}s" -recv_timeout "$RECV_TIMEOUT_MS" \
        -trace_stat -stf "$stf" -fd 200ms
    c1=$(server_ticks)
    kill -0 "$SERVER_PID" 2>/dev/null || alive=0
    u1=$(cpu_ticks "$UAS_PID" 2>/dev/null || echo "$u0")
    t1=$(now_ns)
    local pss srv_drops uas_drops all_drops other_drops server_cpu uas_cpu uac_cpu
    pss=$(server_pss_kb)
    oom=$(($(server_oom "$OUT/server.log") - oom0))
    srv_drops=$(($(sock_drops "$PROXY_PORT") - d_srv0))
    uas_drops=$(($(sock_drops "$UAS_BASE") - d_uas0))
    all_drops=$(($(udp_rcvbuf_errors) - d_all0))
    other_drops=$((all_drops - srv_drops - uas_drops))
    server_cpu=$(awk -v c="$((c1 - c0))" -v hz="$CLK_TCK" -v a="$t0" -v b="$t1" \
        'BEGIN { printf "%.1f", (c / hz) * 100 / ((b - a) / 1e9) }')
    uas_cpu=$(awk -v c="$((u1 - u0))" -v hz="$CLK_TCK" -v a="$t0" -v b="$t1" \
        'BEGIN { printf "%.1f", (c / hz) * 100 / ((b - a) / 1e9) }')
    uac_cpu=$(pct "$UAC_CPU_S" "$UAC_WALL_S")

    local created ok failed retrans achieved
    if [[ -s $stf ]] && created=$(stat_field "$stf" "OutgoingCall(C)"); then
        ok=$(stat_field "$stf" "SuccessfulCall(C)")
        failed=$(stat_field "$stf" "FailedCall(C)")
        retrans=$(stat_field "$stf" "Retransmissions(C)")
        achieved=$(achieved_rate "$stf")
    else
        created=0 ok=0 failed=unknown retrans=0 achieved=0
    fi

    local why=""
    STEP_PASS=1
    [[ $UAC_RC == 0 ]] || { STEP_PASS=0; why+=",uac_exit_$UAC_RC"; }
    [[ $failed == 0 ]] || { STEP_PASS=0; why+=",failed_calls"; }
    [[ $ok == "$calls" ]] || { STEP_PASS=0; why+=",completed_${ok}_of_$calls"; }
    awk -v a="$achieved" -v r="$rate" -v f="$MIN_FRACTION" 'BEGIN { exit !(a >= r * f) }' ||
        { STEP_PASS=0; why+=",rate_below_95%"; }
    ((oom == 0)) || { STEP_PASS=0; why+=",server_out_of_memory"; }
    ((alive)) || { STEP_PASS=0; why+=",server_died"; STEP_SERVER_DEAD=1; }
    kill -0 "$UAS_PID" 2>/dev/null || { STEP_PASS=0; why+=",uas_died"; STEP_SERVER_DEAD=1; }

    echo "proxy kind=$KIND rate=$rate attempt=$attempt achieved=$achieved calls=$created ok=$ok failed=$failed retrans=$retrans server_drops=$srv_drops uas_drops=$uas_drops other_drops=$other_drops server_cpu=$server_cpu uas_cpu=$uas_cpu uac_cpu=$uac_cpu server_pss_kb=$pss server_procs=${#SERVER_PIDS[@]} server_oom=$oom pass=$STEP_PASS${why:+ why=${why#,}}"
    STEP_SUMMARY="achieved=$achieved server_cpu=$server_cpu uas_cpu=$uas_cpu uac_cpu=$uac_cpu server_procs=${#SERVER_PIDS[@]}"
    return 0
}

best_rate=0 best_line="" STEP_SERVER_DEAD=0
for rate in $RATES; do
    for ((attempt = 1; attempt <= 1 + RETRIES; attempt++)); do
        run_step "$rate" "$attempt"
        ((STEP_PASS == 0 && STEP_SERVER_DEAD == 0)) || break
        sleep 2   # a failed attempt: let both drain, try once more
    done
    ((STEP_PASS)) || break
    best_rate=$rate best_line=$STEP_SUMMARY
    sleep 1
done

echo "result kind=$KIND max_rate=$best_rate${best_line:+ $best_line}"
stop_server
kill_pid "$UAS_PID"
untrack_pid "$UAS_PID"
