#!/usr/bin/env bash
# bench/media.sh [plain|srtp|both]   (default both)
#
# Concurrent G.711 calls with media against one luasip IVR process:
# bench/luasip/ivr.lua answers every call with PCMU, records what the
# caller sends to a WAV file under a temporary directory in /tmp, plays a
# prompt (a 3 s WAV written at run time) over and over, and hangs up after
# HOLD s; bench/luasip/caller.lua (another luasip process) places N calls
# at BENCH_MEDIA_RATE calls/s, sends a tone on each and reads what it
# received. The server is pinned to one core (taskset -c
# BENCH_MEDIA_SERVER_CPU, 1), the caller to the other (BENCH_MEDIA_CALLER_CPU, 0).
#
# For each N of BENCH_MEDIA_CALLS (a fresh server per step): RSS of the
# idle server; the N calls; once all N are up together, a window of
# BENCH_MEDIA_WINDOW s in which the server's and the caller's CPU
# (/proc/PID/stat) and the server's RSS are taken, and the intervals
# between the RTP packets the server sent (taken in C right after each
# send, csrc/media.c core.media_intervals) and between those the caller
# received (at its receive handler) are summed into histograms; then the
# per-call media_stats of both sides (expected vs received: `lost`) and
# the server's RSS after all calls ended (BENCH_MEDIA_SETTLE s later).
# A step passes when every call was answered, held and ended by the
# server after HOLD s, the server's send intervals deviate from 20 ms by
# at most 2 ms at p99, and no packet was lost either way. A failing step
# is tried again (BENCH_RETRIES, 1). The search goes on past steps that
# failed only the interval target (a busy shared machine delays the
# server now and then: srv_runq_wait_ms shows it) and stops after lost
# calls or packets or a server at 97% of its core or more. Then, per mode,
# repeat_check: 3 rounds of 500 calls on one server, RSS after each
# (BENCH_MEDIA_REPEAT_ROUNDS, BENCH_MEDIA_REPEAT_CALLS; 0 rounds: skip).
#
# "srtp" runs the same steps with srtp = "mandatory" on both sides, after
# a probe (caller.lua probe-srtp) showed that this luasip has SRTP calls;
# otherwise it prints "srtp available=0 why=..." and skips them. With
# both modes, BENCH_MEDIA_PAIR_ROUNDS (3) rounds then run a plain step
# and an SRTP step back to back at each of BENCH_MEDIA_PAIR_CALLS (500)
# calls: SRTP's extra CPU per call, per round and their median (steps
# minutes apart differ by more than that on a shared machine); and as
# many rounds of a plain and an SRTP server side by side on the server's
# core, BENCH_MEDIA_SIDE_CALLS (250) calls each (side_step).
#
# Stdout (machine-readable), one line per attempt, one result per mode:
#   media mode=plain calls=1000 attempt=1 held=1000 ok=1000 failed=0 srv_done=1000 srv_failed=0
#     server_cpu=45.1 caller_cpu=50.2 us_per_call_s=451 rss_idle_kb=.. rss_held_kb=..
#     rss_after_kb=.. kb_per_call=.. after_growth_kb=.. tx_n=.. tx_p50_ms=.. tx_p99_ms=..
#     tx_p999_ms=.. tx_max_ms=.. rx_n=.. rx_p50_ms=.. rx_p99_ms=.. rx_max_ms=..
#     srv_tx=.. srv_rx=.. srv_lost=.. clr_tx=.. clr_rx=.. clr_lost=.. udp_drops=..
#     rec_files=.. rec_avg_s=.. srtp_calls=.. pass=1[ why=..]
#   media_repeat mode=plain calls=500 rounds=3 rss_idle_kb=.. rss_after_kb=r1,r2,r3 growth_kb=.. failed=0
#   result mode=plain max_calls=1000 server_cpu=.. us_per_call_s=.. tx_p99_ms=.. kb_per_call=..
#   media_pair calls=500 round=1 plain_us_per_call_s=.. srtp_us_per_call_s=.. extra_pct=..
#   media_pair_result calls=500 rounds=3 extras_pct=a,b,c median_extra_pct=..
#   media_side calls=250 round=1 plain_cpu=.. srtp_cpu=.. extra_pct=.. ok_plain=.. ok_srtp=.. srtp_calls=..
#   media_side_result calls=250 rounds=3 extras_pct=a,b,c median_extra_pct=..
#   srtp available=1|0 why="..."
# tx_*: |send interval - 20 ms| at the server, p50/p99/p99.9, and the
# longest interval; rx_*: the same at the caller (its own load included).
# us_per_call_s: server CPU µs per second of one call (CPU % * 10^4 / N).
#
# Environment (all optional):
#   BENCH_MEDIA_CALLS   steps (default "100 250 500 750 1000 1250 1500 1750")
#   BENCH_MEDIA_RATE    call setup rate, calls/s (250)
#   BENCH_MEDIA_WINDOW  measuring window with all calls up, s (8)
#   BENCH_MEDIA_SETTLE  s after the last call before RSS "after" (12)
#   BENCH_MEDIA_SERVER_RTP / BENCH_MEDIA_CALLER_RTP   RTP port ranges
#                       ("33000 46999" / "47000 60999": 2 ports per call,
#                       libre picks ports at random, 64 tries, so each
#                       range must be well over twice the calls)
#   BENCH_MEDIA_SERVER_CPU / BENCH_MEDIA_CALLER_CPU   cores (1 / 0)
#   BENCH_MEDIA_REC_PARENT  where the recordings directory is made (/tmp;
#                       /dev/shm takes the disk out of the measurement)
#   BENCH_RETRIES, BENCH_OUT as for callrate.sh
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MODES=${1:-both}
case $MODES in
plain) MODES=plain ;;
srtp) MODES=srtp ;;
both) MODES="plain srtp" ;;
*) die "usage: $0 [plain|srtp|both]" ;;
esac

STEPS=${BENCH_MEDIA_CALLS:-"100 250 500 750 1000 1250 1500 1750"}
RATE=${BENCH_MEDIA_RATE:-250}
WINDOW=${BENCH_MEDIA_WINDOW:-8}
SETTLE=${BENCH_MEDIA_SETTLE:-12}
RETRIES=${BENCH_RETRIES:-1}
read -r SRV_RTP_MIN SRV_RTP_MAX <<<"${BENCH_MEDIA_SERVER_RTP:-33000 46999}"
read -r CLR_RTP_MIN CLR_RTP_MAX <<<"${BENCH_MEDIA_CALLER_RTP:-47000 60999}"
SERVER_CPU=${BENCH_MEDIA_SERVER_CPU:-1}
CALLER_CPU=${BENCH_MEDIA_CALLER_CPU:-0}
P99_MAX_MS=2
KB_PER_CALL_MAX=128
# 4 file descriptors per call in the server (RTP, RTCP, the recording,
# the prompt) and libre's loop takes fds below 8192 (fd_setsize in core.c)
MAX_CALLS=1800
REPEAT_ROUNDS=${BENCH_MEDIA_REPEAT_ROUNDS:-3}
REPEAT_CALLS=${BENCH_MEDIA_REPEAT_CALLS:-500}
PAIR_CALLS=${BENCH_MEDIA_PAIR_CALLS:-500}
PAIR_ROUNDS=${BENCH_MEDIA_PAIR_ROUNDS:-3}
SIDE_CALLS=${BENCH_MEDIA_SIDE_CALLS:-250}
SRTP_OK=0

need_cmd awk ss getconf timeout
check_luasip_built
[[ $BENCH_FAKE_LUASIP == 1 ]] && die "media.sh has no fake mode (sipp's uas does not record or play)"

for n in $STEPS $PAIR_CALLS $SIDE_CALLS; do
    [[ $n =~ ^[0-9]+$ ]] && ((n >= 1 && n <= MAX_CALLS)) ||
        die "BENCH_MEDIA_CALLS: '$n' is not a number of calls in 1-$MAX_CALLS"
    ((4 * n <= SRV_RTP_MAX - SRV_RTP_MIN && 4 * n <= CLR_RTP_MAX - CLR_RTP_MIN)) ||
        die "RTP port ranges too small for $n calls (want at least 4 ports per call on each side)"
done

TASKSET_SRV="" TASKSET_CLR=""
if command -v taskset >/dev/null 2>&1 && (($(nproc) >= 2)); then
    TASKSET_SRV="taskset -c $SERVER_CPU" TASKSET_CLR="taskset -c $CALLER_CPU"
else
    log "taskset missing or a single core: server and caller are not pinned"
fi

OUT=$BENCH_OUT/media
mkdir -p "$OUT"
REC_DIR=$(mktemp -d "${BENCH_MEDIA_REC_PARENT:-/tmp}/luasip-media-rec.XXXXXX")
CALLER_PID=""
media_cleanup() {
    if [[ -n $CALLER_PID ]]; then kill_pid "$CALLER_PID"; fi
    bench_cleanup
    rm -rf "$REC_DIR"
}
trap media_cleanup EXIT
trap 'media_cleanup; exit 130' INT
trap 'media_cleanup; exit 143' TERM

lua_env=(env "LUA_PATH=$LUAP" "LUA_PATH_5_4=$LUAP" "LUA_CPATH=$LUACP" "LUA_CPATH_5_4=$LUACP")

# The prompt: 3 s, 8 kHz mono 16-bit, three tones of a second each
PROMPT=$OUT/prompt.wav
"$LUA" - "$PROMPT" <<'EOF'
local f = assert(io.open(arg[1], "wb"))
local rate, secs, samples = 8000, 3, {}
for i = 0, rate * secs - 1 do
    local hz = ({ 440, 660, 550 })[i // rate + 1]
    samples[#samples + 1] = string.pack("<i2", math.floor(8000 * math.sin(2 * math.pi * hz * i / rate)))
end
local data = table.concat(samples)
f:write("RIFF", string.pack("<I4", 36 + #data), "WAVEfmt ",
        string.pack("<I4I2I2I4I4I2I2", 16, 1, 1, rate, rate * 2, 2, 16), "data", string.pack("<I4", #data), data)
f:close()
EOF

# ---------------------------------------------------------------- helpers

# iv_stats LOG FIRST LAST PREFIX: sums the histograms (PREFIXh=k:c,...) of
# the tick lines FIRST..LAST of LOG; prints "n p50 p99 p999 max_ms" where
# the percentiles are of |interval - 20 ms| in ms (each bin counted at
# its far edge from 20 ms, so rounded up to 0.1 ms)
iv_stats() {
    awk -v first="$2" -v last="$3" -v p="$4" '
        /^tick / {
            ++t
            if (t < first || t > last) next
            for (i = 1; i <= NF; i++) {
                if (index($i, "bin_us=") == 1) bin = substr($i, 8) + 0
                else if (index($i, p "max=") == 1) { m = substr($i, length(p) + 5) + 0; if (m > max) max = m }
                else if (index($i, p "h=") == 1) {
                    k = split(substr($i, length(p) + 3), kv, ",")
                    for (j = 1; j <= k; j++) { split(kv[j], a, ":"); h[a[1] + 0] += a[2]; n += a[2] }
                }
            }
        }
        END {
            if (n == 0 || bin == 0) { print "0 nan nan nan nan"; exit }
            c = 20000 / bin                      # the bin where 20 ms starts
            for (k in h) { d = (k < c) ? c - k : k - c + 1; dev[d] += h[k]; if (d > dmax) dmax = d }
            split("0.5 0.99 0.999", q, " ")
            out = n
            for (i = 1; i <= 3; i++) {
                need = q[i] * n; s = 0
                for (d = 0; d <= dmax; d++) { s += dev[d]; if (s >= need) break }
                out = out sprintf(" %.1f", d * bin / 1000)
            }
            printf "%s %.1f\n", out, max / 1000
        }' "$1"
}

# sched_wait PID: "ns waited on a run queue, involuntary context switches"
# (/proc/PID/schedstat field 2, /proc/PID/status): time the server was
# ready to run but another process had its core
sched_wait() {
    local w v
    w=$(awk '{ print $2 }' "/proc/$1/schedstat" 2>/dev/null) || w=0
    v=$(awk '/^nonvoluntary_ctxt_switches/ { print $2 }' "/proc/$1/status" 2>/dev/null) || v=0
    echo "${w:-0} ${v:-0}"
}

# sys_ticks PID: stime alone (/proc/PID/stat field 15), clock ticks
sys_ticks() {
    local s
    s=$(<"/proc/$1/stat") 2>/dev/null || { echo 0; return; }
    s=${s##*) }
    # shellcheck disable=SC2206
    local f=($s)
    echo "${f[12]}"
}

ticks_in() { grep -c '^tick ' "$1" 2>/dev/null || true; }

# last_kv FILE PREFIX KEY: KEY's value in the last line of FILE starting with PREFIX
last_kv() {
    awk -v p="$2" -v k="$3" 'index($0, p) == 1 { line = $0 }
        END { n = split(line, f, " "); for (i = 1; i <= n; i++) if (index(f[i], k "=") == 1) { print substr(f[i], length(k) + 2); exit } }' "$1"
}

# field KEY LINE: the value of KEY=value in LINE
field() { awk -v k="$1" '{ for (i = 1; i <= NF; i++) if (index($i, k "=") == 1) print substr($i, length(k) + 2) }' <<<"$2"; }

# median of a comma-separated list of numbers ("nan" if empty)
median() { tr ',' '\n' <<<"$1" | grep . | sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print a[(NR + 1) / 2]; else printf "%.1f", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

# extra_pct PLAIN SRTP: SRTP's extra over PLAIN in % (one decimal), "nan"
# unless both are numbers and PLAIN > 0
extra_pct() {
    awk -v p="$1" -v s="$2" 'BEGIN { if (p == "" || s == "" || p == "nan" || s == "nan" || p + 0 <= 0) print "nan"
        else printf "%.1f", (s - p) * 100 / p }'
}

cpu_pct() {  # cpu_pct TICKS NS
    awk -v c="$1" -v hz="$CLK_TCK" -v ns="$2" 'BEGIN { printf "%.1f", (c / hz) * 100 / (ns / 1e9) }'
}

# --------------------------------------------------------------- one step

# run_step MODE N ATTEMPT: prints its `media` line; sets STEP_PASS, STEP_LINE
run_step() {
    local mode=$1 n=$2 attempt=$3
    local name="$mode-$n-$attempt"
    local ramp hold
    ramp=$(awk -v n="$n" -v r="$RATE" 'BEGIN { printf "%d", (n + r - 1) / r }')
    # all N are up together for hold - ramp s: 1 s to settle, the window,
    # and spare time: a loaded server answers more slowly than RATE
    hold=$((2 * ramp + 1 + WINDOW + 5))
    rm -rf "${REC_DIR:?}"/*
    local base
    base=$(free_port_block 16)
    SERVER_TASKSET=$TASKSET_SRV
    SERVER_IVR_ARGS=("$SRV_RTP_MIN" "$SRV_RTP_MAX" "$PROMPT" "$REC_DIR" "$hold" "$([[ $mode == srtp ]] && echo mandatory || echo off)")
    local slog=$OUT/server-$name.log clog=$OUT/caller-$name.log
    start_server luasip-ivr "$base" "$slog"
    sleep 1
    local rss_idle
    rss_idle=$(rss_kb "$SERVER_PID" || echo nan)
    local udp0
    udp0=$(udp_rcvbuf_errors)

    log "$mode: $n calls at ${RATE}/s, each held ${hold}s (attempt $attempt)"
    # shellcheck disable=SC2086
    "${lua_env[@]}" $TASKSET_CLR "$LUA" "$BENCH_DIR/luasip/caller.lua" "$((base + 8))" \
        "sip:ivr@$BENCH_IP:$base" "$n" "$RATE" "$hold" "$CLR_RTP_MIN" "$CLR_RTP_MAX" \
        "$([[ $mode == srtp ]] && echo mandatory || echo off)" >"$clog" 2>&1 </dev/null &
    CALLER_PID=$!
    track_pid "$CALLER_PID"
    local t_start deadline_ns
    t_start=$(now_ns)
    # the caller ends itself after ramp + hold + 30 s; ours is later
    deadline_ns=$((t_start + (ramp + hold + 45) * 1000000000))

    # wait for all N up (at most ramp + 15 s)
    local up=0
    while kill -0 "$CALLER_PID" 2>/dev/null && (($(now_ns) - t_start < (ramp + 15) * 1000000000)); do
        if grep -q '^all_up' "$clog"; then up=1; break; fi
        sleep 0.1
    done
    local n1=0 n2=0 c1=0 c2=0 k1=0 k2=0 t1 t2 rss_held=nan held=0 w1=0 w2=0 v1=0 v2=0 u1=0 u2=0
    if ((up)); then
        sleep 1
        n1=$(ticks_in "$slog") m1=$(ticks_in "$clog")
        c1=$(cpu_ticks "$SERVER_PID" || echo 0) k1=$(cpu_ticks "$CALLER_PID" || echo 0)
        read -r w1 v1 <<<"$(sched_wait "$SERVER_PID")"
        u1=$(sys_ticks "$SERVER_PID")
        t1=$(now_ns)
        sleep "$WINDOW"
        c2=$(cpu_ticks "$SERVER_PID" || echo 0) k2=$(cpu_ticks "$CALLER_PID" || echo 0)
        read -r w2 v2 <<<"$(sched_wait "$SERVER_PID")"
        u2=$(sys_ticks "$SERVER_PID")
        t2=$(now_ns)
        n2=$(ticks_in "$slog") m2=$(ticks_in "$clog")
        rss_held=$(rss_kb "$SERVER_PID" || echo nan)
        # calls up through the whole window: the fewest the server
        # reported in the lines it printed during the window
        held=$(awk -v a=$((n1 + 1)) -v b="$n2" '/^tick / { if (++t < a || t > b) next
                for (i = 1; i <= NF; i++) if (index($i, "live=") == 1) { v = substr($i, 6) + 0; if (m == "" || v < m) m = v } }
            END { print (m == "") ? 0 : m }' "$slog")
    else
        t1=$(now_ns) t2=$t1 m1=0 m2=0
    fi

    # wait for the caller to finish (its calls end hold s after answer)
    while kill -0 "$CALLER_PID" 2>/dev/null && (($(now_ns) < deadline_ns)); do sleep 0.2; done
    if kill -0 "$CALLER_PID" 2>/dev/null; then log "caller still running at its deadline: killing pid $CALLER_PID"; fi
    kill_pid "$CALLER_PID"
    untrack_pid "$CALLER_PID"
    CALLER_PID=""
    sleep "$SETTLE"
    local rss_after server_alive=1
    rss_after=$(rss_kb "$SERVER_PID" 2>/dev/null) || { rss_after=nan; server_alive=0; }
    local udp_drops=$(($(udp_rcvbuf_errors) - udp0))
    local media_after lua_after
    media_after=$(last_kv "$slog" "tick " media) lua_after=$(last_kv "$slog" "tick " lua_kb)
    stop_server

    # recordings: files and mean length (16-bit 8 kHz: 16000 bytes/s after a 44-byte header)
    local rec_files rec_avg
    rec_files=$(find "$REC_DIR" -name '*.wav' | wc -l)
    rec_avg=$(find "$REC_DIR" -name '*.wav' -printf '%s\n' |
        awk '{ s += ($1 - 44) / 16000; n++ } END { if (n) printf "%.1f", s / n; else print 0 }')
    rm -rf "${REC_DIR:?}"/*

    local scpu=nan ccpu=nan uspc=nan kbpc=nan growth=nan ssys=nan
    if ((up)); then
        scpu=$(cpu_pct $((c2 - c1)) $((t2 - t1)))
        ccpu=$(cpu_pct $((k2 - k1)) $((t2 - t1)))
        ssys=$(cpu_pct $((u2 - u1)) $((t2 - t1)))
        uspc=$(awk -v c="$scpu" -v n="$n" 'BEGIN { printf "%.0f", c * 1e4 / n }')
        kbpc=$(awk -v a="$rss_idle" -v b="$rss_held" -v n="$n" 'BEGIN { printf "%.1f", (b - a) / n }')
    fi
    [[ $rss_after == nan ]] || growth=$((rss_after - rss_idle))
    local tx rx
    read -r tx_n tx_p50 tx_p99 tx_p999 tx_max <<<"$(iv_stats "$slog" $((n1 + 1)) "$n2" tx)"
    read -r rx_n rx_p50 rx_p99 rx_p999 rx_max <<<"$(iv_stats "$clog" $((m1 + 1)) "$m2" rx)"
    local ok failed srv_done srv_failed srv_tx srv_rx srv_lost clr_tx clr_rx clr_lost srtp_calls
    ok=$(last_kv "$clog" "end " ok) failed=$(last_kv "$clog" "end " failed)
    clr_tx=$(last_kv "$clog" "end " tx) clr_rx=$(last_kv "$clog" "end " rx)
    clr_lost=$(last_kv "$clog" "end " lost) srtp_calls=$(last_kv "$clog" "end " srtp)
    srv_done=$(last_kv "$slog" "tick " done) srv_failed=$(last_kv "$slog" "tick " failed)
    srv_tx=$(last_kv "$slog" "tick " tx) srv_rx=$(last_kv "$slog" "tick " rx)
    srv_lost=$(last_kv "$slog" "tick " lost)
    : "${ok:=0}" "${failed:=unknown}" "${srv_done:=0}" "${srv_failed:=unknown}"

    local why=""
    STEP_PASS=1
    ((up)) || { STEP_PASS=0; why+=",not_all_up"; }
    [[ $ok == "$n" && $failed == 0 ]] || { STEP_PASS=0; why+=",caller_ok_${ok}_failed_$failed"; }
    [[ $held == "$n" ]] || { STEP_PASS=0; why+=",server_held_$held"; }
    [[ $srv_done == "$n" && $srv_failed == 0 ]] || { STEP_PASS=0; why+=",server_done_${srv_done}_failed_$srv_failed"; }
    awk -v p="$tx_p99" -v m="$P99_MAX_MS" 'BEGIN { exit !(p != "nan" && p + 0 <= m) }' ||
        { STEP_PASS=0; why+=",tx_p99_over_${P99_MAX_MS}ms"; }
    [[ ${srv_lost:-x} == 0 && ${clr_lost:-x} == 0 ]] || { STEP_PASS=0; why+=",packets_lost"; }
    if [[ $mode == srtp && ${srtp_calls:-0} != "$n" ]]; then STEP_PASS=0; why+=",srtp_calls_${srtp_calls:-0}"; fi
    ((server_alive)) || { STEP_PASS=0; why+=",server_died"; }

    STEP_LINE="media mode=$mode calls=$n attempt=$attempt held=$held ok=$ok failed=$failed srv_done=$srv_done srv_failed=$srv_failed server_cpu=$scpu server_sys=$ssys caller_cpu=$ccpu us_per_call_s=$uspc rss_idle_kb=$rss_idle rss_held_kb=$rss_held rss_after_kb=$rss_after media_after=${media_after:-nan} lua_kb_after=${lua_after:-nan} kb_per_call=$kbpc after_growth_kb=$growth tx_n=$tx_n tx_p50_ms=$tx_p50 tx_p99_ms=$tx_p99 tx_p999_ms=$tx_p999 tx_max_ms=$tx_max rx_n=$rx_n rx_p50_ms=$rx_p50 rx_p99_ms=$rx_p99 rx_p999_ms=$rx_p999 rx_max_ms=$rx_max srv_tx=${srv_tx:-0} srv_rx=${srv_rx:-0} srv_lost=${srv_lost:-nan} clr_tx=${clr_tx:-0} clr_rx=${clr_rx:-0} clr_lost=${clr_lost:-nan} udp_drops=$udp_drops rec_files=$rec_files rec_avg_s=$rec_avg srv_runq_wait_ms=$(((w2 - w1) / 1000000)) srv_preempted=$((v2 - v1)) srtp_calls=${srtp_calls:-0} pass=$STEP_PASS${why:+ why=${why#,}}"
    echo "$STEP_LINE"
    return 0
}

# repeat_check MODE N ROUNDS: one server, ROUNDS rounds of N calls (held
# 5 s each, one after the other); RSS of the idle server and
# BENCH_MEDIA_SETTLE s after each round. Memory a call leaves behind
# grows from round to round; the allocator's free lists and Lua's heap do
# not.  Prints "media_repeat mode=.. calls=.. rounds=.. rss_idle_kb=..
# rss_after_kb=r1,r2,.. growth_kb=(last - first) lua_kb_after=.. media_after=.. failed=.."
repeat_check() {
    local mode=$1 n=$2 rounds=$3 hold=5 r list="" first="" last="" failed=0 lua_list="" media_list=""
    local srtp_arg
    srtp_arg=$([[ $mode == srtp ]] && echo mandatory || echo off)
    rm -rf "${REC_DIR:?}"/*
    local base
    base=$(free_port_block 16)
    SERVER_TASKSET=$TASKSET_SRV
    SERVER_IVR_ARGS=("$SRV_RTP_MIN" "$SRV_RTP_MAX" "$PROMPT" "$REC_DIR" "$hold" "$srtp_arg")
    start_server luasip-ivr "$base" "$OUT/server-repeat-$mode.log"
    sleep 1
    local idle
    idle=$(rss_kb "$SERVER_PID" || echo nan)
    for ((r = 1; r <= rounds; r++)); do
        log "$mode: repeat round $r/$rounds, $n calls"
        # shellcheck disable=SC2086
        "${lua_env[@]}" $TASKSET_CLR "$LUA" "$BENCH_DIR/luasip/caller.lua" "$((base + 8))" \
            "sip:ivr@$BENCH_IP:$base" "$n" "$RATE" "$hold" "$CLR_RTP_MIN" "$CLR_RTP_MAX" \
            "$srtp_arg" >"$OUT/caller-repeat-$mode-$r.log" 2>&1 </dev/null &
        CALLER_PID=$!
        track_pid "$CALLER_PID"
        local t0
        t0=$(now_ns)
        while kill -0 "$CALLER_PID" 2>/dev/null && (($(now_ns) - t0 < (n / RATE + hold + 45) * 1000000000)); do
            sleep 0.2
        done
        kill_pid "$CALLER_PID"
        untrack_pid "$CALLER_PID"
        CALLER_PID=""
        failed=$((failed + $(last_kv "$OUT/caller-repeat-$mode-$r.log" "end " failed | grep . || echo "$n")))
        rm -rf "${REC_DIR:?}"/*
        sleep "$SETTLE"
        last=$(rss_kb "$SERVER_PID" || echo 0)
        [[ -n $first ]] || first=$last
        list+="${list:+,}$last"
        lua_list+="${lua_list:+,}$(last_kv "$OUT/server-repeat-$mode.log" "tick " lua_kb)"
        media_list+="${media_list:+,}$(last_kv "$OUT/server-repeat-$mode.log" "tick " media)"
    done
    stop_server
    echo "media_repeat mode=$mode calls=$n rounds=$rounds rss_idle_kb=$idle rss_after_kb=$list growth_kb=$((last - first)) lua_kb_after=$lua_list media_after=$media_list failed=$failed"
}

# ------------------------------------------------------------------ modes

for mode in $MODES; do
    if [[ $mode == srtp ]]; then
        probe=$("${lua_env[@]}" timeout 20 "$LUA" "$BENCH_DIR/luasip/caller.lua" probe-srtp 2>&1 | tail -1) && prc=0 || prc=$?
        if ((prc != 0)); then
            echo "srtp available=0 why=\"${probe:-probe exited with $prc}\""
            continue
        fi
        echo "srtp available=1 why=\"$probe\""
        SRTP_OK=1
    fi
    best=0 best_line=""
    for n in $STEPS; do
        for ((attempt = 1; attempt <= 1 + RETRIES; attempt++)); do
            run_step "$mode" "$n" "$attempt"
            ((STEP_PASS == 0)) || break
        done
        if ((STEP_PASS)); then best=$n best_line=$STEP_LINE; fi
        # a step that missed only the interval target does not end the
        # search (a busy shared machine delays the server now and then);
        # lost calls or packets, or a saturated server core, do
        [[ $STEP_LINE =~ why=tx_p99_over_[0-9]+ms$ ]] || ((STEP_PASS)) || break
        scpu=$(field server_cpu "$STEP_LINE")
        awk -v c="$scpu" 'BEGIN { exit !(c == "nan" || c + 0 >= 97) }' && break
    done
    if ((REPEAT_ROUNDS > 0)); then
        rn=$REPEAT_CALLS
        ((best > 0 && best < rn)) && rn=$best
        repeat_check "$mode" "$rn" "$REPEAT_ROUNDS"
    fi
    kvs=""
    for k in server_cpu us_per_call_s tx_p99_ms kb_per_call; do
        v=$(field "$k" "$best_line")
        kvs+=" $k=${v:-nan}"
    done
    echo "result mode=$mode max_calls=$best$kvs"
done

# side_step N ROUND: a plain and an SRTP IVR side by side on the server's
# core, N calls each (two callers on the other core, placed together).
# The CPU of both servers over the same WINDOW s: whatever else the
# machine does then, it does to both, so their ratio is SRTP's extra CPU
# per call with the machine's drift taken out (both pay for sharing the
# core: context switches, each other's cache lines). Prints (and sets
# SIDE_LINE to)
#   media_side calls=N round=R plain_cpu=.. srtp_cpu=.. extra_pct=.. ok_plain=.. ok_srtp=.. srtp_calls=..
side_step() {
    local n=$1 r=$2 ramp hold bp bs pp ps cp cs lp ls lcp lcs t1 t2
    ramp=$(awk -v n="$n" -v r="$RATE" 'BEGIN { printf "%d", (n + r - 1) / r }')
    hold=$((2 * ramp + 1 + WINDOW + 5))
    local half_s=$(((SRV_RTP_MIN + SRV_RTP_MAX) / 2)) half_c=$(((CLR_RTP_MIN + CLR_RTP_MAX) / 2))
    rm -rf "${REC_DIR:?}"/*
    mkdir -p "$REC_DIR/plain" "$REC_DIR/srtp"
    bp=$(free_port_block 16)
    bs=$(free_port_block 16)
    while ((bs >= bp - 16 && bs <= bp + 16)); do bs=$(free_port_block 16); done
    lp=$OUT/server-side-plain-$n-$r.log ls=$OUT/server-side-srtp-$n-$r.log
    lcp=$OUT/caller-side-plain-$n-$r.log lcs=$OUT/caller-side-srtp-$n-$r.log
    SERVER_TASKSET=$TASKSET_SRV
    SERVER_IVR_ARGS=("$SRV_RTP_MIN" "$((half_s - 1))" "$PROMPT" "$REC_DIR/plain" "$hold" off)
    start_server luasip-ivr "$bp" "$lp"
    pp=$SERVER_PID
    SERVER_IVR_ARGS=("$half_s" "$SRV_RTP_MAX" "$PROMPT" "$REC_DIR/srtp" "$hold" mandatory)
    start_server luasip-ivr "$bs" "$ls"
    ps=$SERVER_PID
    SERVER_PIDS=()
    log "side by side: $n plain and $n SRTP calls at ${RATE}/s each, held ${hold}s (round $r)"
    # shellcheck disable=SC2086
    "${lua_env[@]}" $TASKSET_CLR "$LUA" "$BENCH_DIR/luasip/caller.lua" "$((bp + 8))" \
        "sip:ivr@$BENCH_IP:$bp" "$n" "$RATE" "$hold" "$CLR_RTP_MIN" "$((half_c - 1))" off >"$lcp" 2>&1 </dev/null &
    cp=$!
    track_pid "$cp"
    # shellcheck disable=SC2086
    "${lua_env[@]}" $TASKSET_CLR "$LUA" "$BENCH_DIR/luasip/caller.lua" "$((bs + 8))" \
        "sip:ivr@$BENCH_IP:$bs" "$n" "$RATE" "$hold" "$half_c" "$CLR_RTP_MAX" mandatory >"$lcs" 2>&1 </dev/null &
    cs=$!
    track_pid "$cs"
    local deadline_ns=$(($(now_ns) + (ramp + hold + 45) * 1000000000)) up=0 a1 a2 b1 b2
    while (($(now_ns) < deadline_ns)); do
        grep -q '^all_up' "$lcp" && grep -q '^all_up' "$lcs" && { up=1; break; }
        kill -0 "$cp" 2>/dev/null && kill -0 "$cs" 2>/dev/null || break
        sleep 0.2
    done
    local pcpu=nan scpu=nan
    if ((up)); then
        sleep 1
        a1=$(cpu_ticks "$pp" || echo 0) b1=$(cpu_ticks "$ps" || echo 0) t1=$(now_ns)
        sleep "$WINDOW"
        a2=$(cpu_ticks "$pp" || echo 0) b2=$(cpu_ticks "$ps" || echo 0) t2=$(now_ns)
        pcpu=$(cpu_pct $((a2 - a1)) $((t2 - t1)))
        scpu=$(cpu_pct $((b2 - b1)) $((t2 - t1)))
    fi
    while { kill -0 "$cp" 2>/dev/null || kill -0 "$cs" 2>/dev/null; } && (($(now_ns) < deadline_ns)); do sleep 0.2; done
    for p in "$cp" "$cs" "$pp" "$ps"; do kill_pid "$p"; untrack_pid "$p"; done
    rm -rf "${REC_DIR:?}"/*
    local okp oks srtp_calls extra=nan
    okp=$(last_kv "$lcp" "end " ok) oks=$(last_kv "$lcs" "end " ok) srtp_calls=$(last_kv "$lcs" "end " srtp)
    if [[ $okp == "$n" && $oks == "$n" && $srtp_calls == "$n" ]]; then extra=$(extra_pct "$pcpu" "$scpu"); fi
    SIDE_LINE="media_side calls=$n round=$r plain_cpu=$pcpu srtp_cpu=$scpu extra_pct=$extra ok_plain=${okp:-0} ok_srtp=${oks:-0} srtp_calls=${srtp_calls:-0}"
    echo "$SIDE_LINE"
}

# ------------------------------------------------------ SRTP's extra CPU
# The steps above run all plain calls first, then all SRTP ones, minutes
# apart; on a shared machine the CPU a call costs drifts by more than the
# difference measured. So plain and SRTP also run back to back at the
# same number of calls, PAIR_ROUNDS times (odd rounds plain first, even
# rounds SRTP first); each round gives SRTP's extra CPU per call over its
# plain step, and the median of the rounds is the result. A round counts
# when both steps held every call.
if [[ $MODES == "plain srtp" && $SRTP_OK == 1 ]] && ((PAIR_ROUNDS > 0)); then
    for n in $PAIR_CALLS; do
        extras=""
        for ((r = 1; r <= PAIR_ROUNDS; r++)); do
            # odd rounds plain first, even rounds SRTP first: a drift of
            # the machine over a round does not favour one mode
            if ((r % 2)); then
                run_step plain "$n" "pair$r"; line_p=$STEP_LINE
                run_step srtp "$n" "pair$r"; line_s=$STEP_LINE
            else
                run_step srtp "$n" "pair$r"; line_s=$STEP_LINE
                run_step plain "$n" "pair$r"; line_p=$STEP_LINE
            fi
            us_p=$(field us_per_call_s "$line_p") us_s=$(field us_per_call_s "$line_s") extra=nan
            if [[ $(field held "$line_p") == "$n" && $(field held "$line_s") == "$n" ]]; then
                extra=$(extra_pct "$us_p" "$us_s")
            fi
            echo "media_pair calls=$n round=$r plain_us_per_call_s=$us_p srtp_us_per_call_s=$us_s extra_pct=$extra"
            [[ $extra == nan ]] || extras+="${extras:+,}$extra"
        done
        echo "media_pair_result calls=$n rounds=$PAIR_ROUNDS extras_pct=${extras:-none} median_extra_pct=$(median "$extras")"
    done
    for n in $SIDE_CALLS; do
        extras=""
        for ((r = 1; r <= PAIR_ROUNDS; r++)); do
            side_step "$n" "$r"
            extra=$(field extra_pct "$SIDE_LINE")
            [[ $extra == nan ]] || extras+="${extras:+,}$extra"
        done
        echo "media_side_result calls=$n rounds=$PAIR_ROUNDS extras_pct=${extras:-none} median_extra_pct=$(median "$extras")"
    done
fi
