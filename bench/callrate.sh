#!/usr/bin/env bash
# bench/callrate.sh SERVER_KIND   (SERVER_KIND: luasip | sipp-uas)
#
# Finds the highest call rate a SIP server holds on udp:127.0.0.1.
# Starts the server on a free port, then runs sipp's built-in `uac` scenario
# (INVITE, [100/180/183], 200, ACK, BYE, 200) at increasing rates, one step
# of BENCH_STEP_SECS seconds each, and stops at the first step that fails.
#
# A step passes when: every call of the step (rate * secs) completed
# successfully, 0 failed calls (a lost message counts as failed through
# -recv_timeout), and the achieved rate (calls created / uac wall time from
# sipp's own statistics, see achieved_rate in lib.sh) is at least 95% of
# the target.  Retransmissions are allowed (and reported).
#
# Also reported per step: datagrams dropped by the server's socket
# (server_drops, ss skmem d) and by every other UDP socket on the host
# (other_drops, nearly always the uac's), from /proc/net/snmp, and the
# server's VmRSS at the end of the step (one server process serves all steps).
#
# A failing step is repeated BENCH_RETRIES times (default 1) before the
# search stops; every attempt is printed.
#
# Stdout, one line per attempt and one result line (machine-readable):
#   step kind=sipp-uas rate=2000 attempt=1 achieved=1991.5 calls=16000 ok=16000 failed=0 retrans=0 server_drops=0 other_drops=0 server_cpu=41.2 uac_cpu=55.0 server_rss_kb=9120 pass=1
#   result kind=sipp-uas max_rate=3000 achieved=2990.1 server_cpu=62.0 uac_cpu=80.1
# CPU is percent of one core (100 = one core busy) over the step.
#
# Environment (all optional):
#   BENCH_RATES       rates to try, calls/s  (default below)
#   BENCH_STEP_SECS   seconds per step       (default 8)
#   BENCH_CALL_LIMIT  sipp -l, max concurrent calls (default 2000)
#   BENCH_RETRIES     extra attempts for a failing step (default 1)
#   BENCH_UAC_ARGS    extra sipp options for the uac (default none)
#   BENCH_OUT         where raw sipp output goes (default bench/out)
#   BENCH_FAKE_LUASIP=1  use sipp's uas in place of luasip (script testing)
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KIND=${1:-}
[[ $KIND == luasip || $KIND == sipp-uas ]] ||
    die "usage: $0 luasip|sipp-uas"

RATES=${BENCH_RATES:-"500 1000 1500 2000 2500 3000 3500 4000 4500 5000 6000 7000 8000 10000 12000"}
SECS=${BENCH_STEP_SECS:-8}
CALL_LIMIT=${BENCH_CALL_LIMIT:-2000}
RECV_TIMEOUT_MS=2000
MIN_FRACTION=0.95
# The uac gets a large socket buffer so that it drops as little as it can;
# the server keeps whatever buffer it sets itself (sipp's uas: 64 KB).
UAC_BUFF=${BENCH_UAC_BUFF:-4194304}
# Extra sipp options for the uac, e.g. "-timer_resol 1" (word-split).
UAC_EXTRA=${BENCH_UAC_ARGS:-}
# A failed step is tried again this many times before the search stops
# (one bad second, e.g. other load on the machine, should not end it).
RETRIES=${BENCH_RETRIES:-1}

need_cmd "$SIPP" ss awk getconf
[[ $KIND == luasip ]] && check_luasip_built

OUT=$BENCH_OUT/callrate-$KIND
mkdir -p "$OUT"
BENCH_OUT=$OUT   # run_uac writes under BENCH_OUT

PORTS=$(free_port_block 16)
SERVER_BASE=$PORTS            # server: SIP port PORTS (+1 control, +4..7 media for sipp)
UAC_BASE=$((PORTS + 8))       # uac:    SIP port PORTS+8 (+9 control, +12..15 media)

start_server "$KIND" "$SERVER_BASE" "$OUT/server.log"
echo "server kind=$KIND label=$(server_label "$KIND") pid=$SERVER_PID port=$SERVER_BASE cmd=\"${SERVER_CMD[*]}\""

# run_step RATE ATTEMPT: one step; prints its `step` line, sets STEP_PASS
# and STEP_SUMMARY.
run_step() {
    local rate=$1 attempt=$2
    local calls=$((rate * SECS)) name="uac-$rate-$attempt"
    # sipp's own -timeout: a step slower than 95% of target fails anyway, so
    # stop it soon after secs/0.95; the watchdog in run_uac is the hard bound.
    local sipp_timeout=$((SECS * 11 / 10 + 3 + RECV_TIMEOUT_MS / 1000))
    local hard_deadline=$((sipp_timeout + 15))
    local stf=$OUT/$name.csv
    rm -f "$stf"

    log "$KIND: step rate=$rate calls=$calls (~${SECS}s) attempt $attempt"
    local d_srv0 d_all0 s_t0 s_c0 s_c1 s_t1 server_alive=1
    d_srv0=$(sock_drops "$SERVER_BASE")
    d_all0=$(udp_rcvbuf_errors)
    s_t0=$(now_ns)
    s_c0=$(cpu_ticks "$SERVER_PID")
    # shellcheck disable=SC2046,SC2086
    run_uac "$name" "$hard_deadline" \
        -sn uac "$BENCH_IP:$SERVER_BASE" $(sipp_port_args "$UAC_BASE") \
        -nostdin -max_socket 64 -buff_size "$UAC_BUFF" \
        -r "$rate" -rp 1000 -m "$calls" -l "$CALL_LIMIT" \
        -timeout "${sipp_timeout}s" -recv_timeout "$RECV_TIMEOUT_MS" \
        -trace_stat -stf "$stf" -fd 200ms \
        -trace_screen -screen_file "$OUT/$name.screen" $UAC_EXTRA
    if s_c1=$(cpu_ticks "$SERVER_PID" 2>/dev/null); then :; else s_c1=$s_c0; server_alive=0; fi
    s_t1=$(now_ns)
    local srv_rss
    srv_rss=$(rss_kb "$SERVER_PID" 2>/dev/null || echo 0)
    local srv_drops all_drops uac_drops server_cpu uac_cpu
    srv_drops=$(($(sock_drops "$SERVER_BASE") - d_srv0))
    all_drops=$(($(udp_rcvbuf_errors) - d_all0))
    uac_drops=$((all_drops - srv_drops))
    server_cpu=$(awk -v c="$((s_c1 - s_c0))" -v hz="$CLK_TCK" -v a="$s_t0" -v b="$s_t1" \
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
    ((server_alive)) || { STEP_PASS=0; why+=",server_died"; }

    echo "step kind=$KIND rate=$rate attempt=$attempt achieved=$achieved calls=$created ok=$ok failed=$failed retrans=$retrans server_drops=$srv_drops other_drops=$uac_drops server_cpu=$server_cpu uac_cpu=$uac_cpu server_rss_kb=$srv_rss pass=$STEP_PASS${why:+ why=${why#,}}"
    STEP_SUMMARY="achieved=$achieved server_cpu=$server_cpu uac_cpu=$uac_cpu"
    ((server_alive)) || STEP_SERVER_DEAD=1
    return 0
}

best_rate=0 best_line="" STEP_SERVER_DEAD=0
for rate in $RATES; do
    for ((attempt = 1; attempt <= 1 + RETRIES; attempt++)); do
        run_step "$rate" "$attempt"
        ((STEP_PASS == 0 && STEP_SERVER_DEAD == 0)) || break
        sleep 2   # a failed attempt: let the server drain, try once more
    done
    ((STEP_PASS)) || break
    best_rate=$rate best_line=$STEP_SUMMARY
    sleep 1   # let the server drain before the next step
done

echo "result kind=$KIND max_rate=$best_rate${best_line:+ $best_line}"
stop_server
