#!/usr/bin/env bash
# bench/run.sh -- the whole benchmark (what `make bench` runs).
#
#  1. bench/callrate.sh sipp-uas   highest call rate of sipp's own uas
#  2. bench/callrate.sh luasip     highest call rate of examples/answer.lua
#  3. bench/memory.sh luasip       memory per held call, RSS after 100k calls
#  4. bench/proxy.sh luasip|kamailio            proxied call rate (record-routing
#                                               stateful proxy), luasip vs Kamailio
#  5. bench/register.sh luasip|kamailio noauth|auth   REGISTER rate, new users,
#                                               without and with digest auth
#  6. bench/media.sh both                     concurrent G.711 calls playing and
#                                               recording against one IVR process,
#                                               plain RTP and SRTP
#  7. writes bench/RESULTS.md (overwritten); raw output in bench/out/
#
# Takes about 12-15 minutes.  Everything stays on 127.0.0.1.
# Environment: see callrate.sh, memory.sh, proxy.sh, register.sh and media.sh;
# BENCH_PARTS (default "callrate memory proxy register media") runs only some
# parts (RESULTS.md then says which were not run); BENCH_FAKE_LUASIP=1 runs
# the callrate/memory "luasip" parts against sipp's uas (to test the
# scripts without luasip); BENCH_STRICT=1 makes the exit status 1 when a
# target is missed.  Kamailio (apt-get install kamailio kamailio-lua-modules)
# is needed for the reference runs of parts 4 and 5 only; without it they
# are skipped and RESULTS.md says so.
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

need_cmd "$SIPP" ss awk getconf timeout
check_luasip_built

RESULTS=${BENCH_RESULTS:-$BENCH_DIR/RESULTS.md}
PARTS=${BENCH_PARTS:-callrate memory proxy register media}
has_part() { [[ " $PARTS " == *" $1 "* ]]; }
for p in $PARTS; do
    [[ $p == callrate || $p == memory || $p == proxy || $p == register || $p == media ]] ||
        die "BENCH_PARTS: unknown part '$p' (callrate memory proxy register media)"
done
mkdir -p "$BENCH_OUT"
rm -rf "$BENCH_OUT"/callrate-* "$BENCH_OUT"/memory-* "$BENCH_OUT"/proxy-* \
    "$BENCH_OUT"/register-* "$BENCH_OUT"/media "$BENCH_OUT"/*.txt "$BENCH_OUT"/*.log
T_START=$(date +%s)
DATE=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
HAVE_KAMAILIO=0
if has_part proxy || has_part register; then
    if check_kamailio; then HAVE_KAMAILIO=1; fi
fi

# Each part is bounded again from outside; on timeout it gets SIGTERM and
# its trap kills the processes it started.
part() {  # part NAME TIMEOUT_S CMD...
    local name=$1 to=$2
    shift 2
    log "=== $name"
    local rc=0 pid
    # in the background so that Ctrl-C here reaches our trap, which TERMs
    # `timeout` by PID, which passes the TERM on to the script
    timeout -k 10 "$to" "$@" >"$BENCH_OUT/$name.txt" 2>"$BENCH_OUT/$name.log" &
    pid=$!
    track_pid "$pid"
    wait "$pid" || rc=$?
    untrack_pid "$pid"
    grep -E '^(step|result|mem|proxy|register|media|srtp) ' "$BENCH_OUT/$name.txt" >&2 || true
    ((rc == 0)) || log "$name exited with status $rc (see $BENCH_OUT/$name.log)"
    return 0
}

# kv KEY < lines: value of KEY=... in the (first) line read
kv() { awk -v k="$1" '{ for (i = 1; i <= NF; i++) if (index($i, k "=") == 1) { print substr($i, length(k) + 2); exit } }'; }
line_of() { grep -E "$2" "$BENCH_OUT/$1.txt" 2>/dev/null | head -1 || true; }

if has_part callrate; then
    part callrate-sipp-uas 400 "$BENCH_DIR/callrate.sh" sipp-uas
    part callrate-luasip 400 "$BENCH_DIR/callrate.sh" luasip
fi

uas_max=$(line_of callrate-sipp-uas '^result ' | kv max_rate)
lua_max=$(line_of callrate-luasip '^result ' | kv max_rate)
uas_max=${uas_max:-0} lua_max=${lua_max:-0}

if has_part memory; then
    # The churn must run at a rate luasip holds: min(2000, its highest rate).
    mem_rate=2000
    if ((lua_max > 0 && lua_max < mem_rate)); then mem_rate=$lua_max; fi
    if ! has_part callrate || ((lua_max == 0)); then mem_rate=${BENCH_MEM_RATE:-500}; fi
    BENCH_MEM_RATE=$mem_rate part memory-luasip 500 "$BENCH_DIR/memory.sh" luasip
fi

# proxy and registrar: luasip, then Kamailio as the reference
REF_KINDS=luasip
((HAVE_KAMAILIO)) && REF_KINDS="luasip kamailio"
if has_part proxy; then
    for k in $REF_KINDS; do
        part "proxy-$k" 300 "$BENCH_DIR/proxy.sh" "$k"
    done
fi
if has_part register; then
    for a in noauth auth; do
        for k in $REF_KINDS; do
            part "register-$k-$a" 240 "$BENCH_DIR/register.sh" "$k" "$a"
        done
    done
fi

if has_part media; then
    part media 1200 "$BENCH_DIR/media.sh" both
fi

T_END=$(date +%s)

# ------------------------------------------------------------------ report
luasip_version() {
    if [[ ! -f $ROOT/build/luasip/core.so ]]; then
        echo "n/a (build/luasip/core.so not built)"
        return
    fi
    LUA_PATH=$LUAP LUA_PATH_5_4=$LUAP LUA_CPATH=$LUACP LUA_CPATH_5_4=$LUACP \
        "$LUA" -e '
        for _, n in ipairs { "luasip", "luasip.core" } do
            local ok, m = pcall(require, n)
            if ok and type(m) == "table" and m._VERSION then print(m._VERSION) return end
        end
        print("unknown")' 2>/dev/null || echo unknown
}

pass_word() { if [[ $1 == 1 ]]; then echo PASS; else echo FAIL; fi; }

steps_table() {  # steps_table KIND-FILE
    echo "| server | target calls/s | try | achieved calls/s | calls | failed | retrans | server socket drops | other drops | server CPU % | uac CPU % | server RSS kB | step |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    local f
    for f in "$@"; do
        grep '^step ' "$BENCH_OUT/$f.txt" 2>/dev/null | while read -r l; do
            local k w
            k=$(kv kind <<<"$l")
            w=$(kv why <<<"$l")
            [[ $k == luasip ]] && k=$(server_label luasip)
            printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' \
                "$k" "$(kv rate <<<"$l")" "$(kv attempt <<<"$l")" "$(kv achieved <<<"$l")" "$(kv calls <<<"$l")" \
                "$(kv failed <<<"$l")" "$(kv retrans <<<"$l")" "$(kv server_drops <<<"$l")" \
                "$(kv other_drops <<<"$l")" "$(kv server_cpu <<<"$l")" "$(kv uac_cpu <<<"$l")" \
                "$(kv server_rss_kb <<<"$l")" \
                "$(if [[ $(kv pass <<<"$l") == 1 ]]; then echo pass; else w=${w//_/ }; echo "FAIL: ${w//,/, }"; fi)"
        done
    done
}

best_row() {  # best_row FILE LABEL
    local r cpu uac rate
    r=$(line_of "$1" '^result ')
    rate=$(kv max_rate <<<"$r")
    cpu=$(kv server_cpu <<<"$r")
    uac=$(kv uac_cpu <<<"$r")
    local us=n/a
    if [[ -n $cpu && ${rate:-0} -gt 0 ]]; then
        us=$(awk -v c="$cpu" -v r="$rate" 'BEGIN { printf "%.0f", c / 100 / r * 1e6 }')
    fi
    echo "| $2 | ${rate:-0} | $(kv achieved <<<"$r") | ${cpu:-n/a} | $us | ${uac:-n/a} |"
}

first_fail() {  # first_fail FILE: the step line that stopped the search
    grep '^step ' "$BENCH_OUT/$1.txt" 2>/dev/null | tail -1 | grep 'pass=0' || true
}

limit_note() {  # limit_note FILE LABEL
    local l
    l=$(first_fail "$1")
    if [[ -z $l ]]; then
        echo "- $2: passed every step tried (up to the last rate in BENCH_RATES); its real limit is higher."
        return
    fi
    local u s sd od
    u=$(kv uac_cpu <<<"$l") s=$(kv server_cpu <<<"$l")
    sd=$(kv server_drops <<<"$l") od=$(kv other_drops <<<"$l")
    local w
    w=$(kv why <<<"$l" | tr '_' ' ' | sed 's/,/, /g')
    local note
    note="- $2: stopped at $(kv rate <<<"$l") calls/s ($w); there the server used $s% of a core, the uac $u%, the server's socket dropped $sd datagrams and other sockets (the uac's) $od."
    if awk -v u="$u" 'BEGIN { exit !(u >= 90) }'; then
        note+=" The uac was near one full core: **the load generator, not the server, may be the limit.**"
    elif awk -v s="$s" 'BEGIN { exit !(s >= 90) }'; then
        note+=" The server was near one full core (CPU-bound)."
    elif ((${sd:-0} > 0)); then
        note+=" Neither process was CPU-bound: the server fell behind in bursts and its receive buffer overflowed."
    fi
    echo "$note"
}

ratio=$(awk -v a="$lua_max" -v b="$uas_max" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }')
ratio_pass=$(awk -v a="$lua_max" -v b="$uas_max" 'BEGIN { print (b > 0 && a >= 0.7 * b) ? 1 : 0 }')

hold=$(line_of memory-luasip 'phase=hold')
churn=$(line_of memory-luasip 'phase=churn')
hold_pass=$(kv pass <<<"$hold")
churn_pass_start=$(kv pass_start <<<"$churn")
churn_pass_warm=$(kv pass_warm <<<"$churn")

cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "none")
dirty=""
if [[ $commit != none ]] && [[ -n $(git -C "$ROOT" status --porcelain 2>/dev/null | grep -v '^?? bench/' || true) ]]; then
    dirty=" (work tree has uncommitted changes)"
fi
fake_note=""
if [[ $BENCH_FAKE_LUASIP == 1 ]]; then
    fake_note=$(cat <<'EOF'

> **FAKE RUN** (`BENCH_FAKE_LUASIP=1`): every "luasip" number below was
> measured on sipp's own `uas` standing in for examples/answer.lua. It only
> shows that the scripts work; it says nothing about luasip.
EOF
)
fi

# ------------------------------------------------------ proxy and registrar

# kamailio_workers: SIP worker processes KAMAILIO_ARGS gives (a lone -D is
# no-fork mode: the main process alone)
kamailio_workers() {
    local a n=8 nofork=0 prev=""
    for a in $KAMAILIO_ARGS; do
        [[ $a == -D ]] && nofork=1
        [[ $prev == -n ]] && n=$a
        prev=$a
    done
    if ((nofork)); then echo 1; else echo "$n"; fi
}

# ref_rows PREFIX FILE...: the step lines (PREFIX proxy|register) as table rows
ref_rows() {
    local prefix=$1 f l
    shift
    for f in "$@"; do
        grep "^$prefix " "$BENCH_OUT/$f.txt" 2>/dev/null | while read -r l; do
            local w step cols
            w=$(kv why <<<"$l")
            if [[ $(kv pass <<<"$l") == 1 ]]; then step=pass; else w=${w//_/ }; step="FAIL: ${w//,/, }"; fi
            if [[ $prefix == proxy ]]; then
                cols=(kind rate attempt achieved calls failed retrans server_drops uas_drops other_drops server_cpu uas_cpu uac_cpu server_pss_kb)
            else
                cols=(kind auth rate attempt achieved regs failed retrans server_drops other_drops server_cpu uac_cpu server_pss_kb)
            fi
            local c row="|"
            for c in "${cols[@]}"; do row+=" $(kv "$c" <<<"$l") |"; done
            echo "$row $step |"
        done
    done
}

# ref_best FILE: "max_rate server_cpu procs" of a search, or "0 n/a 0"
ref_best() {
    local r
    r=$(line_of "$1" '^result ')
    echo "$(kv max_rate <<<"$r" | grep . || echo 0) $(kv server_cpu <<<"$r" | grep . || echo n/a) $(kv server_procs <<<"$r" | grep . || echo 0)"
}

# ref_summary_row LABEL LUASIP_FILE KAMAILIO_FILE UNIT
ref_summary_row() {
    local lr lc kr kc ratio lus kus
    read -r lr lc _ <<<"$(ref_best "$2")"
    read -r kr kc _ <<<"$(ref_best "$3")"
    us() { awk -v c="$1" -v r="$2" 'BEGIN { if (r > 0 && c + 0 > 0) printf "%.0f", c / 100 / r * 1e6; else print "n/a" }'; }
    lus=$(us "$lc" "$lr")
    kus=$(us "$kc" "$kr")
    ratio=$(awk -v a="$lr" -v b="$kr" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }')
    local cratio
    cratio=$(awk -v a="$lus" -v b="$kus" 'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "%.1f", a / b; else print "n/a" }')
    if [[ ! -s $BENCH_OUT/$3.txt ]]; then kr="not run" kc=n/a kus=n/a; fi
    echo "| $1 | $lr | $kr | **$ratio** | $lc | $kc | $lus | $kus | $cratio |"
}

# ref_stop_note PREFIX FILE LABEL: what ended a search
ref_stop_note() {
    local l
    l=$(grep "^$1 " "$BENCH_OUT/$2.txt" 2>/dev/null | tail -1 | grep 'pass=0' || true)
    if [[ ! -s $BENCH_OUT/$2.txt ]]; then
        echo "- $3: not run."
    elif [[ -z $l ]]; then
        echo "- $3: passed every step tried (up to the last rate); its real limit is higher."
    else
        local w
        w=$(kv why <<<"$l" | tr '_' ' ' | sed 's/,/, /g')
        local note u
        u=$(kv uac_cpu <<<"$l")
        note="- $3: stopped at $(kv rate <<<"$l")/s ($w); there the server used $(kv server_cpu <<<"$l")% CPU over its $(kv server_procs <<<"$l") process(es), the uac $u%${4:+, the uas $(kv uas_cpu <<<"$l")%}; the server's socket dropped $(kv server_drops <<<"$l") datagrams."
        if [[ $(kv server_oom <<<"$l") != 0 && -n $(kv server_oom <<<"$l") ]]; then
            note+=" **The server ran out of memory** ($(kv server_oom <<<"$l") log lines): its memory setting, not its speed, ended the search."
        elif awk -v u="$u" 'BEGIN { exit !(u >= 80) }'; then
            note+=" The uac used most of a core: **the load generator may be the limit.**"
        fi
        echo "$note"
    fi
}

kamailio_row() {  # the machine table's Kamailio row, when it was used
    has_part proxy || has_part register || return 0
    if ((HAVE_KAMAILIO)); then
        echo "| Kamailio (reference) | $(kamailio_version), \`$KAMAILIO_ARGS\` |"
    else
        echo "| Kamailio (reference) | not installed (\`apt-get install kamailio kamailio-lua-modules\`) |"
    fi
}

reference_report() {
    has_part proxy || has_part register || return 0
    local kw kam_note
    kw=$(kamailio_workers)
    if ((HAVE_KAMAILIO)); then
        kam_note="Kamailio $(kamailio_version) runs as \`kamailio -f bench/kamailio/ROLE.cfg $KAMAILIO_ARGS -l udp:127.0.0.1:PORT\` with KEMI Lua routing (bench/kamailio/ROLE.lua): $kw SIP worker process(es) plus its main and timer processes, so it can use up to $kw of this machine's $(nproc) cores."
    else
        kam_note="Kamailio is not installed here (\`apt-get install kamailio kamailio-lua-modules\`), so only luasip was measured."
    fi
    cat <<EOF

## Proxy and registrar: luasip and Kamailio

luasip runs as one process (one core at most): examples/proxy.lua for the
proxy, bench/luasip/registrar.lua (sip.registrar) for the registrar.
$kam_note CPU is % of one core summed over all the server's processes (so
Kamailio's can pass 100), over the step; µs/op is CPU time per call or
registration at the highest rate held, a cost per operation that does not
depend on how many cores a server can use. Memory is the PSS of all the
server's processes after the step (Kamailio's shared memory counted once).

| measure (highest rate held) | luasip | Kamailio | luasip / Kamailio | luasip CPU % | Kamailio CPU % | luasip µs/op | Kamailio µs/op | CPU per op, luasip / Kamailio |
|---|---:|---:|---:|---:|---:|---:|---:|---:|
EOF
    has_part proxy && ref_summary_row "proxied calls/s (uac -> proxy -> uas)" proxy-luasip proxy-kamailio
    if has_part register; then
        ref_summary_row "REGISTER/s, new users, no auth" register-luasip-noauth register-kamailio-noauth
        ref_summary_row "registrations/s, new users, digest auth (401 + REGISTER)" register-luasip-auth register-kamailio-auth
    fi
    if has_part proxy; then
        cat <<EOF

### Proxy

sipp uac (bench/proxy_uac.xml: sipp's \`uac\` with route sets) -> proxy ->
sipp uas (bench/proxy_uas.xml: 180, 50 ms, 200, then ACK and BYE through
the proxy). The proxy record-routes every INVITE and relays it statefully;
ACK and BYE follow the Route set. Steps of ${BENCH_PROXY_STEP_SECS:-5} s; a step passes when
every call completed, 0 failed, at >= 95% of the target rate. The uas runs
for the whole search; its CPU is shown because the uac, the uas and the
proxy share the machine.

| server | target calls/s | try | achieved | calls | failed | retrans | proxy socket drops | uas socket drops | other drops | proxy CPU % | uas CPU % | uac CPU % | proxy PSS kB | step |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|
$(ref_rows proxy proxy-luasip proxy-kamailio)

$(ref_stop_note proxy proxy-luasip luasip uas)
$(ref_stop_note proxy proxy-kamailio Kamailio uas)
EOF
    fi
    if has_part register; then
        cat <<EOF

### Registrar

Each sipp "call" registers a user not registered before (bench/register.xml:
REGISTER, 200; bench/register_auth.xml: REGISTER, 401, REGISTER with
credentials, 200; users and passwords from an injection file written at run
time, which both servers also load into a Lua table). Expires 3600, bindings
in memory. Every step runs against a fresh server process, ${BENCH_REG_STEP_SECS:-4} s per step;
a step passes when every registration succeeded at >= 95% of the target
rate.

| server | auth | target/s | try | achieved | registrations | failed | retrans | server socket drops | other drops | server CPU % | uac CPU % | server PSS kB | step |
|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|
$(ref_rows register register-luasip-noauth register-kamailio-noauth register-luasip-auth register-kamailio-auth)

$(ref_stop_note register register-luasip-noauth "luasip, no auth")
$(ref_stop_note register register-kamailio-noauth "Kamailio, no auth")
$(ref_stop_note register register-luasip-auth "luasip, digest auth")
$(ref_stop_note register register-kamailio-auth "Kamailio, digest auth")
EOF
    fi
}


# ------------------------------------------------------------------ media

# media_rows: the `media` lines of out/media.txt as table rows
media_rows() {
    grep '^media ' "$BENCH_OUT/media.txt" 2>/dev/null | while read -r l; do
        local w step c row="|"
        w=$(kv why <<<"$l")
        if [[ $(kv pass <<<"$l") == 1 ]]; then step=pass; else w=${w//_/ }; step="FAIL: ${w//,/, }"; fi
        for c in mode calls attempt held failed server_cpu server_sys us_per_call_s caller_cpu srv_runq_wait_ms \
            kb_per_call after_growth_kb tx_p50_ms tx_p99_ms tx_p999_ms tx_max_ms rx_p99_ms srv_lost clr_lost rec_files rec_avg_s; do
            row+=" $(kv "$c" <<<"$l") |"
        done
        echo "$row $step |"
    done
}

# media_srtp_rows: CPU per call, plain vs SRTP, at each number of calls
# that both runs held (their last attempt)
media_srtp_rows() {
    awk '
        function v(k,   i) { for (i = 1; i <= NF; i++) if (index($i, k "=") == 1) return substr($i, length(k) + 2); return "" }
        /^media / && v("held") == v("calls") && v("us_per_call_s") != "nan" && v("attempt") !~ /^pair/ {
            us[v("mode"), v("calls")] = v("us_per_call_s"); cpu[v("mode"), v("calls")] = v("server_cpu"); n[v("calls")] = 1
        }
        END {
            for (c in n) if ((("plain", c) in us) && (("srtp", c) in us)) {
                p = us["plain", c]; s = us["srtp", c]
                printf "| %d | %s | %s | %s | %s | %+.0f %% | %s |\n", c, cpu["plain", c], cpu["srtp", c], p, s,
                    (s - p) * 100 / p, ((s - p) * 100 / p < 25) ? "pass" : "FAIL"
            }
        }' "$BENCH_OUT/media.txt" 2>/dev/null | sort -t'|' -k2 -n
}

# srtp_verdicts KIND WHAT: the media_KIND_result lines (SRTP's extra CPU,
# median of rounds) as list items against the 25% target
srtp_verdicts() {
    grep "^media_$1_result " "$BENCH_OUT/media.txt" 2>/dev/null | while read -r l; do
        local m v
        m=$(kv median_extra_pct <<<"$l")
        v=$(awk -v m="$m" 'BEGIN { print (m != "nan" && m + 0 < 25) ? "pass" : "FAIL" }')
        echo "- $(kv calls <<<"$l") $2, $(kv rounds <<<"$l") rounds: SRTP extra per round $(kv extras_pct <<<"$l") %, median **$m %** ($v)."
    done
}

media_report() {
    if ! has_part media; then
        printf '\n## Media (concurrent calls with RTP)\n\nNot run (BENCH_PARTS="%s").\n' "$PARTS"
        return 0
    fi
    local rp rs srtp_line best_p best_s
    rp=$(line_of media '^result mode=plain')
    rs=$(line_of media '^result mode=srtp')
    srtp_line=$(line_of media '^srtp ')
    best_p=$(kv max_calls <<<"$rp")
    best_s=$(kv max_calls <<<"$rs")
    cat <<EOF

## Media (concurrent calls with RTP)

bench/media.sh: one luasip IVR process (bench/luasip/ivr.lua, pinned with
\`taskset\` to one core) answers every call with G.711 PCMU, records what
the caller sends to a WAV file in /tmp and plays a 3 s prompt WAV (written
at run time) over and over, then hangs up; one luasip caller process
(bench/luasip/caller.lua, pinned to the other core) places the calls at
${BENCH_MEDIA_RATE:-250}/s and sends a tone on each. A fresh server per step. Once all
calls are up, ${BENCH_MEDIA_WINDOW:-8} s are measured: CPU of both processes (% of one core;
"sys" is the kernel's part of the server's), the time the server waited
for its core while runnable (other processes on this shared machine),
RSS. Send intervals are taken by the server in C right after each RTP
send (|interval - 20 ms| at p50/p99/p99.9, and the longest interval);
"rx p99" is the same at the caller's receive handler, its own load
included. Loss is media_stats' \`lost\` (expected from sequence numbers
minus received) summed over all calls, server and caller side. KB/call =
(RSS with all calls up - RSS idle) / calls; "RSS after" = RSS ${BENCH_MEDIA_SETTLE:-12} s after
the last call ended minus RSS idle. µs/call-s = server CPU µs per second
of one call (50 packets each way). A step passes when every call was
held and ended normally, p99 ≤ 2 ms and nothing was lost.

| measure | plain RTP | SRTP | target |
|---|---:|---:|---|
| most concurrent calls meeting the targets | ${best_p:-not run} | ${best_s:-not run} | 1000 |
| server CPU % there | $(kv server_cpu <<<"$rp") | $(kv server_cpu <<<"$rs") | |
| server CPU µs per call-second there | $(kv us_per_call_s <<<"$rp") | $(kv us_per_call_s <<<"$rs") | |
| send interval deviation p99 there (ms) | $(kv tx_p99_ms <<<"$rp") | $(kv tx_p99_ms <<<"$rs") | ≤ 2 |
| RSS per call there (KB) | $(kv kb_per_call <<<"$rp") | $(kv kb_per_call <<<"$rs") | < 128 |

SRTP: ${srtp_line:-not run}

| mode | calls | try | held | failed | server CPU % | of which sys % | µs/call-s | caller CPU % | server run-queue wait ms | KB/call | RSS after, kB | tx p50 ms | tx p99 ms | tx p99.9 ms | longest interval ms | rx p99 ms | lost (server) | lost (caller) | recordings | recorded s (mean) | step |
|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|
$(media_rows)

Memory after repeated rounds (one server, rounds of calls held 5 s one
after the other, RSS ${BENCH_MEDIA_SETTLE:-12} s after each round, after a full Lua garbage
collection; a leak grows from round to round):

$(grep '^media_repeat ' "$BENCH_OUT/media.txt" 2>/dev/null | while read -r l; do
    echo "- $(kv mode <<<"$l"): $(kv rounds <<<"$l") rounds of $(kv calls <<<"$l") calls: RSS idle $(kv rss_idle_kb <<<"$l") kB, after each round $(kv rss_after_kb <<<"$l") kB (last - first: $(kv growth_kb <<<"$l") kB); Lua heap $(kv lua_kb_after <<<"$l") kB; live media objects $(kv media_after <<<"$l"); failed calls $(kv failed <<<"$l")."
done)

CPU per call, plain RTP vs SRTP (target: SRTP under 25% extra). Plain
and SRTP steps run back to back at the same number of calls, in rounds
(odd rounds plain first, even rounds SRTP first);
the median of the rounds is the result (the steps of the search above
run minutes apart, and on this shared machine a call's CPU drifts by more
than SRTP's share between them: their ratios follow, for reference):

| calls | round | µs/call-s plain | µs/call-s SRTP | SRTP extra |
|---:|---:|---:|---:|---:|
$(grep '^media_pair ' "$BENCH_OUT/media.txt" 2>/dev/null | while read -r l; do
    echo "| $(kv calls <<<"$l") | $(kv round <<<"$l") | $(kv plain_us_per_call_s <<<"$l") | $(kv srtp_us_per_call_s <<<"$l") | $(kv extra_pct <<<"$l") % |"
done)

$(srtp_verdicts pair calls)

The same, a plain and an SRTP server side by side on the server's core
(N calls each, placed together; the CPU of both over the same window, so
the machine's drift meets both alike):

| calls each | round | server CPU % plain | server CPU % SRTP | SRTP extra |
|---:|---:|---:|---:|---:|
$(grep '^media_side ' "$BENCH_OUT/media.txt" 2>/dev/null | while read -r l; do
    echo "| $(kv calls <<<"$l") | $(kv round <<<"$l") | $(kv plain_cpu <<<"$l") | $(kv srtp_cpu <<<"$l") | $(kv extra_pct <<<"$l") % |"
done)

$(srtp_verdicts side "calls each")

From the steps of the search:

| calls | server CPU % plain | server CPU % SRTP | µs/call-s plain | µs/call-s SRTP | SRTP extra | |
|---:|---:|---:|---:|---:|---:|---|
$(media_srtp_rows)
EOF
}

{
    cat <<EOF
# luasip benchmark results

Written by \`bench/run.sh\` (\`make bench\`) on $DATE, in $((T_END - T_START)) s.
Raw output: \`bench/out/\` (not committed). How it is measured: \`bench/README.md\`.
$fake_note

## Machine and versions

| | |
|---|---|
| CPU | $cpu_model, $(nproc) cores (\`nproc\`) |
| kernel | $(uname -srm) |
| sipp | $(sipp_version) |
| Lua | $("$LUA" -v 2>&1 | head -1) |
| libre0 | $(dpkg-query -W -f='${Version}' libre0 2>/dev/null || echo unknown) |
| luasip | $(luasip_version), commit $commit$dirty |
$(kamailio_row)

The load generator (sipp \`uac\`) and the server run on the same machine, all
traffic on 127.0.0.1 (UDP).
EOF
    if ! has_part callrate; then
        printf '\n## Call rate\n\nNot run (BENCH_PARTS="%s").\n' "$PARTS"
    else
        cat <<EOF

## Call rate

Each step: sipp's built-in \`uac\` scenario (INVITE, 100/180 optional, 200,
ACK, BYE, 200) at a fixed target rate for ${BENCH_STEP_SECS:-8} s. A step passes when
every call succeeded (0 failed, lost messages time out after 2 s and count as
failed) and the rate actually reached is at least 95% of the target.
Retransmissions are allowed. A failing step is tried ${BENCH_RETRIES:-1} more time(s)
before the search stops ("try" column). CPU is % of one core over the step
(from /proc/PID/stat for the server, from \`times\` for the uac). One
server process serves all the steps of its search; its RSS after each step
is shown because a growing heap also costs time (e.g. Lua's GC).

$(steps_table callrate-sipp-uas callrate-luasip)

### Highest rate held

| server | calls/s | achieved | server CPU % | server CPU µs/call | uac CPU % |
|---|---:|---:|---:|---:|---:|
$(best_row callrate-sipp-uas sipp-uas)
$(best_row callrate-luasip "$(server_label luasip)")

**luasip / sipp uas = $ratio** (target: at least 0.70) — **$(pass_word "$ratio_pass")**

What stopped each search:

$(limit_note callrate-sipp-uas sipp-uas)
$(limit_note callrate-luasip "$(server_label luasip)")
EOF
    fi
    if ! has_part memory; then
        printf '\n## Memory\n\nNot run (BENCH_PARTS="%s").\n' "$PARTS"
    else
        cat <<EOF

## Memory ($(server_label luasip))

| measure | value | target | result |
|---|---:|---|---|
| process memory per established call ($(kv calls <<<"$hold") calls held together) | $(kv kb_per_call <<<"$hold") KB | under 32 KB | **$(pass_word "$hold_pass")** |
| RSS after $(kv warmup <<<"$churn") + $(kv calls <<<"$churn") calls, vs. RSS at start | $(kv pct_vs_start <<<"$churn") % | within 5% | **$(pass_word "$churn_pass_start")** |
| RSS after the $(kv calls <<<"$churn") calls, vs. RSS after the warm-up | $(kv pct_vs_warm <<<"$churn") % | within 5% | **$(pass_word "$churn_pass_warm")** |

Held calls (bench/hold.xml, fresh server): RSS at start $(kv rss_start_kb <<<"$hold") kB, with
$(kv held <<<"$hold") calls established $(kv rss_held_kb <<<"$hold") kB, after they ended
$(kv rss_after_kb <<<"$hold") kB; $(kv ok <<<"$hold") calls completed, $(kv failed <<<"$hold") failed.
Per call = (held - start) / calls; the start value is the idle process, so
one-time growth (first use of allocator arenas, hash tables, the Lua heap)
is charged to the calls: this overstates the per-call cost, never understates it.

Churn (sipp \`uac\` at $(kv rate <<<"$churn") calls/s, another fresh server): RSS at start
$(kv rss_start_kb <<<"$churn") kB, after $(kv warmup <<<"$churn") warm-up calls $(kv rss_warm_kb <<<"$churn") kB,
peak during the $(kv calls <<<"$churn") calls $(kv rss_peak_kb <<<"$churn") kB, ${BENCH_SETTLE_SECS:-60} s after the last call (when its transactions had expired)
$(kv rss_end_kb <<<"$churn") kB; $(kv ok <<<"$churn") calls completed, $(kv failed <<<"$churn") failed
(warm-up: $(kv warmup_failed <<<"$churn") failed). The issue asks for "within 5% of its start":
the first row is that, literally, and it includes the one-time growth of the
first calls; the second row compares with the process after a warm-up and is
the better test for memory that grows with every call (a leak).
EOF
    fi
    reference_report
    media_report
} >"$RESULTS"

log "wrote $RESULTS ($((T_END - T_START)) s)"
cat "$RESULTS"

if [[ ${BENCH_STRICT:-0} == 1 ]]; then
    if has_part callrate; then [[ $ratio_pass == 1 ]] || exit 1; fi
    if has_part memory; then [[ $hold_pass == 1 && $churn_pass_start == 1 ]] || exit 1; fi
fi
