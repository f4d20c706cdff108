-- bench/luasip/ivr.lua: the IVR-like server bench/media.sh measures.
-- Answers every INVITE with G.711 audio (PCMU; `srtp = "mandatory"` when
-- SRTP is asked for), records what the caller sends to REC_DIR/<n>.wav,
-- plays PROMPT (a WAV file) over and over for HOLD seconds, reads the
-- call's media_stats and hangs up.
--
--   lua5.4 bench/luasip/ivr.lua PORT RTP_MIN RTP_MAX PROMPT REC_DIR HOLD off|mandatory
--
-- Prints "listening on sip:ivr@127.0.0.1:PORT" when ready, then once a
-- second (and flushed) a line
--   tick live=.. peak=.. done=.. failed=.. media=.. lua_kb=.. tx=.. rx=.. lost=..
--        rx_dropped=.. srtp=.. txn=.. txmax=.. txh=k:c,.. rxn=.. rxmax=.. rxh=k:c,..
-- live: calls answered and not yet ended; done: calls ended after their
-- HOLD; tx/rx/lost/rx_dropped/srtp: sums of media_stats over the done
-- calls (srtp: calls whose media_stats.srtp names a suite); txh/rxh: the
-- histograms of send and arrival intervals (core.media_intervals, bins of
-- bin_us) since the previous line, which reset them; media: live media
-- objects in C; lua_kb: the Lua heap. When the last call has ended it
-- runs a full garbage collection (so RSS then shows memory still held).
-- Serves until killed.
local sip = require "luasip"
local core = require "luasip.core"

local usage = "usage: ivr.lua PORT RTP_MIN RTP_MAX PROMPT REC_DIR HOLD off|mandatory"
local port = assert(tonumber(arg[1]), usage)
local rtp_min, rtp_max = assert(math.tointeger(tonumber(arg[2])), usage), assert(math.tointeger(tonumber(arg[3])), usage)
local prompt, rec_dir = assert(arg[4], usage), assert(arg[5], usage)
local hold = assert(tonumber(arg[6]), usage)
local srtp = arg[7] or "off"
assert(srtp == "off" or srtp == "mandatory", usage)

local live, peak, done, failed, seq = 0, 0, 0, 0, 0
local idle_gc = false
local tot = { tx = 0, rx = 0, lost = 0, rx_dropped = 0, srtp = 0 }

local function hist(h)
    local t = {}
    for k, c in pairs(h.bins) do t[#t + 1] = k .. ":" .. c end
    return table.concat(t, ",")
end

sip.run(function()
    local ep = assert(sip.endpoint { listen = "udp:127.0.0.1:" .. port, user = "ivr",
                                     rtp_ports = { rtp_min, rtp_max } })

    ep:on("INVITE", function(call)
        local ok = call:answer { media = true, codecs = { "PCMU" },
                                 srtp = srtp ~= "off" and srtp or nil }
        if not ok then failed = failed + 1; return end
        seq = seq + 1
        live = live + 1
        if live > peak then peak = live end
        local t_end = sip.now() + hold
        local m = call.media
        if not (m and m:record(("%s/%d.wav"):format(rec_dir, seq), hold + 5, 0)) then
            failed, live = failed + 1, live - 1
            call:hangup()
            return
        end
        local ended = false
        while true do
            local left = t_end - sip.now()
            if left <= 0 then break end
            local r, err = call:play(prompt, { timeout = left })
            if r ~= true then ended = err ~= "timeout"; break end
        end
        live = live - 1
        if live == 0 then idle_gc = true end
        local st = call.media_stats
        if ended or not st then
            failed = failed + 1                 -- the caller left early
        else
            done = done + 1
            tot.tx, tot.rx, tot.lost = tot.tx + st.tx_packets, tot.rx + st.rx_packets, tot.lost + st.lost
            tot.rx_dropped = tot.rx_dropped + st.rx_dropped
            if type(st.srtp) == "string" then tot.srtp = tot.srtp + 1 end
        end
        call:hangup()                           -- also closes the recording
    end)

    print("listening on " .. ep:uri())
    io.stdout:flush()

    while true do
        sip.sleep(1)
        if idle_gc and live == 0 then
            -- all calls ended: a full collection, so that RSS "after"
            -- shows memory still held, not garbage Lua has not swept yet
            idle_gc = false
            collectgarbage()
            collectgarbage()
        end
        local iv = core.media_intervals(true)
        print(("tick live=%d peak=%d done=%d failed=%d media=%d lua_kb=%d tx=%d rx=%d lost=%d rx_dropped=%d srtp=%d "
               .. "bin_us=%d txn=%d txmax=%d txh=%s rxn=%d rxmax=%d rxh=%s"):format(
            live, peak, done, failed, core.media_count(), math.floor(collectgarbage("count")), tot.tx, tot.rx, tot.lost, tot.rx_dropped, tot.srtp,
            iv.bin_us, iv.tx.n, iv.tx.max_us, hist(iv.tx), iv.rx.n, iv.rx.max_us, hist(iv.rx)))
        io.stdout:flush()
    end
end)
