#!/usr/bin/env bash
# bench/register.sh KIND AUTH   (KIND: luasip | kamailio; AUTH: noauth | auth)
#
# Finds the highest rate of REGISTERs, each for a new user, that a
# registrar holds on udp:127.0.0.1.
#   luasip:   bench/luasip/registrar.lua (sip.registrar, bindings in memory;
#             one process)
#   kamailio: bench/kamailio/registrar.cfg + registrar.lua (KEMI Lua routing,
#             usrloc in memory), kamailio -f registrar.cfg $BENCH_KAMAILIO_ARGS
#             (default -DD -E -x fm -M 64 -m 1024 -n 2: two SIP workers)
# With `auth` both challenge every REGISTER (401, MD5, qop=auth) and check
# the credentials against a Lua table of users and passwords loaded at
# start from the injection file below; the authenticated user must be the
# user of To.
#
# The users are written at run time to $BENCH_OUT/register-*/users.csv
# (sipp's -inf injection file): "user<N>;<password>;[authentication ...]",
# as many as the highest step needs.  sipp expands [field2] into the
# Authorization header; 3.6.1 does not expand [field0] inside
# [authentication username=...] itself.  Scenarios: bench/register.xml
# (REGISTER, 200) and bench/register_auth.xml (REGISTER, 401, REGISTER
# with credentials, 200); every REGISTER is for a user not registered
# before: each step runs against a fresh server process and its users are
# the first rate*secs lines of the file.
#
# A step: BENCH_REG_STEP_SECS seconds at one rate of BENCH_REG_RATES; it
# passes when every registration succeeded (0 failed; -recv_timeout 2000),
# and the rate reached is at least 95% of the target.  The search stops at
# the first rate that fails (after BENCH_RETRIES more tries, default 1).
# server_oom counts the lines of the server's log that say it ran out of
# memory (the step then fails with why=server_out_of_memory).
#
# Stdout (machine-readable), one line per attempt and a result line:
#   register kind=luasip auth=auth rate=2000 attempt=1 achieved=1998.0 regs=8000 ok=8000 failed=0 retrans=0 server_drops=0 other_drops=0 server_cpu=51.2 uac_cpu=30.3 server_pss_kb=20480 server_procs=1 server_oom=0 pass=1
#   result kind=luasip auth=auth max_rate=4000 achieved=3990.2 server_cpu=90.1 uac_cpu=40.2 server_procs=1
# Exits 3 (after saying how to install it) when Kamailio is asked for and
# is not installed.
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KIND=${1:-}
AUTH=${2:-noauth}
[[ ($KIND == luasip || $KIND == kamailio) && ($AUTH == noauth || $AUTH == auth) ]] ||
    die "usage: $0 luasip|kamailio noauth|auth"

RATES=${BENCH_REG_RATES:-"1000 2000 3000 4000 6000 8000 10000 12000 15000 20000 25000 30000 35000 40000 45000 50000"}
SECS=${BENCH_REG_STEP_SECS:-4}
CALL_LIMIT=${BENCH_CALL_LIMIT:-2000}
RECV_TIMEOUT_MS=2000
MIN_FRACTION=0.95
UAC_BUFF=${BENCH_UAC_BUFF:-4194304}
RETRIES=${BENCH_RETRIES:-1}

need_cmd "$SIPP" ss awk getconf ps
if [[ $KIND == luasip ]]; then
    [[ $BENCH_FAKE_LUASIP == 1 ]] && die "BENCH_FAKE_LUASIP has no stand-in for a registrar"
    check_luasip_built
else
    check_kamailio || exit 3
    need_cmd "$LUA"
fi

OUT=$BENCH_OUT/register-$KIND-$AUTH
mkdir -p "$OUT"
BENCH_OUT=$OUT

# users: enough for the longest step; a password of its own for each
max_rate=0
for r in $RATES; do ((r > max_rate)) && max_rate=$r; done
NUSERS=$((max_rate * SECS))
USERS=$OUT/users.csv
awk -v n="$NUSERS" -v seed="$RANDOM" 'BEGIN {
    srand(seed); print "SEQUENTIAL"
    for (i = 1; i <= n; i++) {
        pw = sprintf("%08x%04x", int(rand() * 2147483647), i % 65536)
        printf "user%d;%s;[authentication username=user%d password=%s]\n", i, pw, i, pw
    }
}' >"$USERS"
log "$NUSERS users in $USERS"

SCENARIO=$BENCH_DIR/register.xml
[[ $AUTH == auth ]] && SCENARIO=$BENCH_DIR/register_auth.xml
SERVER_USERS=$USERS
SERVER_AUTH=$AUTH

# run_step RATE ATTEMPT: one step against a fresh server; prints its line,
# sets STEP_PASS and STEP_SUMMARY.
run_step() {
    local rate=$1 attempt=$2
    local regs=$((rate * SECS)) name="uac-$rate-$attempt"
    local sipp_timeout=$((SECS * 11 / 10 + 3 + RECV_TIMEOUT_MS / 1000))
    local hard_deadline=$((sipp_timeout + 15))
    local stf=$OUT/$name.csv
    rm -f "$stf"

    local ports
    ports=$(free_port_block 16)
    start_server "$KIND-registrar" "$ports" "$OUT/server-$rate-$attempt.log"
    log "$KIND registrar ($AUTH): step rate=$rate registrations=$regs (~${SECS}s) attempt $attempt"
    local d_srv0 d_all0 t0 c0 c1 t1 alive=1
    d_srv0=$(sock_drops "$ports")
    d_all0=$(udp_rcvbuf_errors)
    t0=$(now_ns)
    c0=$(server_ticks)
    # shellcheck disable=SC2046
    run_uac "$name" "$hard_deadline" \
        -sf "$SCENARIO" -inf "$USERS" "$BENCH_IP:$ports" $(sipp_port_args $((ports + 8))) \
        -nostdin -buff_size "$UAC_BUFF" \
        -r "$rate" -rp 1000 -m "$regs" -l "$CALL_LIMIT" \
        -timeout "${sipp_timeout}s" -recv_timeout "$RECV_TIMEOUT_MS" \
        -trace_stat -stf "$stf" -fd 200ms
    c1=$(server_ticks)
    kill -0 "$SERVER_PID" 2>/dev/null || alive=0
    t1=$(now_ns)
    local pss srv_drops all_drops other_drops server_cpu uac_cpu procs=${#SERVER_PIDS[@]} oom
    pss=$(server_pss_kb)
    oom=$(server_oom "$OUT/server-$rate-$attempt.log")
    srv_drops=$(($(sock_drops "$ports") - d_srv0))
    all_drops=$(($(udp_rcvbuf_errors) - d_all0))
    other_drops=$((all_drops - srv_drops))
    server_cpu=$(awk -v c="$((c1 - c0))" -v hz="$CLK_TCK" -v a="$t0" -v b="$t1" \
        'BEGIN { printf "%.1f", (c / hz) * 100 / ((b - a) / 1e9) }')
    uac_cpu=$(pct "$UAC_CPU_S" "$UAC_WALL_S")
    stop_server

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
    [[ $failed == 0 ]] || { STEP_PASS=0; why+=",failed_registrations"; }
    [[ $ok == "$regs" ]] || { STEP_PASS=0; why+=",completed_${ok}_of_$regs"; }
    awk -v a="$achieved" -v r="$rate" -v f="$MIN_FRACTION" 'BEGIN { exit !(a >= r * f) }' ||
        { STEP_PASS=0; why+=",rate_below_95%"; }
    ((oom == 0)) || { STEP_PASS=0; why+=",server_out_of_memory"; }
    ((alive)) || { STEP_PASS=0; why+=",server_died"; }

    echo "register kind=$KIND auth=$AUTH rate=$rate attempt=$attempt achieved=$achieved regs=$created ok=$ok failed=$failed retrans=$retrans server_drops=$srv_drops other_drops=$other_drops server_cpu=$server_cpu uac_cpu=$uac_cpu server_pss_kb=$pss server_procs=$procs server_oom=$oom pass=$STEP_PASS${why:+ why=${why#,}}"
    STEP_SUMMARY="achieved=$achieved server_cpu=$server_cpu uac_cpu=$uac_cpu server_procs=$procs"
    return 0
}

best_rate=0 best_line=""
for rate in $RATES; do
    for ((attempt = 1; attempt <= 1 + RETRIES; attempt++)); do
        run_step "$rate" "$attempt"
        ((STEP_PASS == 0)) || break
        sleep 1
    done
    ((STEP_PASS)) || break
    best_rate=$rate best_line=$STEP_SUMMARY
done

echo "result kind=$KIND auth=$AUTH max_rate=$best_rate${best_line:+ $best_line}"
