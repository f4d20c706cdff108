-- bench/luasip/caller.lua: the load generator of bench/media.sh. Places N
-- G.711 calls (PCMU) to the IVR at RATE calls/s; each call sends a tone
-- (the IVR records it) and HOLD - 1 s after the answer reads its media_stats (what
-- it received from the IVR) and waits for the IVR's BYE, which comes
-- HOLD s after the answer. Exits when every call has ended, or with
-- status 3 after a deadline.
--
--   lua5.4 bench/luasip/caller.lua PORT TARGET_URI N RATE HOLD RTP_MIN RTP_MAX off|mandatory
--   lua5.4 bench/luasip/caller.lua probe-srtp
--
-- Output (flushed): once a second
--   tick up=.. ok=.. failed=.. done=.. rx=.. lost=.. tx=.. srtp=.. bin_us=.. rxn=.. rxmax=.. rxh=k:c,..
-- (up: calls established now; ok: established so far; done: ended with
-- their stats read; rx/lost/tx/srtp: sums of media_stats over the done
-- calls; rxh: the histogram of RTP arrival intervals at this receiver
-- since the previous line), "all_up n=N" once all N calls are up
-- together, and at the end "end ok=.. failed=.. done=.. rx=.. lost=.. tx=.. srtp=.. why=.."
-- (failed calls: the first few reasons are printed as "fail ..." lines).
--
-- probe-srtp: calls itself once with srtp = "mandatory" on both sides and
-- prints "srtp available (SUITE)" (exit 0) when the call's media_stats
-- names an SRTP suite and the answer is RTP/SAVP, else "srtp not
-- available: REASON" (exit 1).
local sip = require "luasip"
local core = require "luasip.core"

local function hist(h)
    local t = {}
    for k, c in pairs(h.bins) do t[#t + 1] = k .. ":" .. c end
    return table.concat(t, ",")
end

if arg[1] == "probe-srtp" then
    local verdict, code = "srtp not available: probe did not finish", 1
    sip.run(function()
        sip.after(10, function() sip.stop() end)
        local a = assert(sip.endpoint { listen = "udp:127.0.0.1:0", user = "ivr" })
        local b = assert(sip.endpoint { listen = "udp:127.0.0.1:0" })
        a:on("INVITE", function(call)
            if call:answer { media = true, srtp = "mandatory" } then call:wait_hangup(5) end
        end)
        local ok, call, err = pcall(b.call, b, a:uri(), { media = true, srtp = "mandatory", timeout = 5 })
        if not ok then
            verdict = "srtp not available: ep:call raised " .. tostring(call)
        elseif not call then
            verdict = "srtp not available: the call failed: " .. tostring(err)
        else
            local st, sdp = call.media_stats, call.remote_sdp or ""
            if st and type(st.srtp) == "string" and sdp:find("RTP/SAVP", 1, true) then
                verdict, code = "srtp available (" .. st.srtp .. ")", 0
            else
                verdict = "srtp not available: the call with srtp = \"mandatory\" has no SRTP "
                    .. "(media_stats.srtp = " .. tostring(st and st.srtp) .. ", answer "
                    .. (sdp:find("RTP/SAVP", 1, true) and "RTP/SAVP" or "RTP/AVP") .. ")"
            end
            call:hangup()
        end
        a:close(); b:close()
        sip.stop()
    end)
    print(verdict)
    os.exit(code)
end

local usage = "usage: caller.lua PORT TARGET_URI N RATE HOLD RTP_MIN RTP_MAX off|mandatory"
local port, target = assert(tonumber(arg[1]), usage), assert(arg[2], usage)
local n, rate = assert(math.tointeger(tonumber(arg[3])), usage), assert(tonumber(arg[4]), usage)
local hold = assert(tonumber(arg[5]), usage)
local rtp_min, rtp_max = assert(math.tointeger(tonumber(arg[6])), usage), assert(math.tointeger(tonumber(arg[7])), usage)
local srtp = arg[8] or "off"
assert(srtp == "off" or srtp == "mandatory", usage)

local up, ok_n, failed, done, ended, fails = 0, 0, 0, 0, 0, 0
local tot = { rx = 0, lost = 0, tx = 0, srtp = 0 }
local all_up = false

local function tick_line()
    local iv = core.media_intervals(true)
    print(("tick up=%d ok=%d failed=%d done=%d rx=%d lost=%d tx=%d srtp=%d bin_us=%d rxn=%d rxmax=%d rxh=%s"):format(
        up, ok_n, failed, done, tot.rx, tot.lost, tot.tx, tot.srtp, iv.bin_us, iv.rx.n, iv.rx.max_us, hist(iv.rx)))
    io.stdout:flush()
end

local function fail(i, why)
    failed = failed + 1
    fails = fails + 1
    if fails <= 5 then print(("fail call=%d %s"):format(i, tostring(why))) end
end

local why = "done"
sip.run(function()
    -- ramp + hold + margins: a bound on the whole run
    local limit = n / rate + hold + 30
    sip.after(limit, function() why = "deadline"; sip.stop() end)
    local ep = assert(sip.endpoint { listen = "udp:127.0.0.1:" .. port, user = "caller",
                                     rtp_ports = { rtp_min, rtp_max } })

    local function one(i)
        local call, err = ep:call(target, { media = true, codecs = { "PCMU" }, timeout = 10,
                                            srtp = srtp ~= "off" and srtp or nil })
        if not call then fail(i, err); ended = ended + 1; return end
        ok_n, up = ok_n + 1, up + 1
        if up == n and not all_up then
            all_up = true
            print("all_up n=" .. n)
            io.stdout:flush()
        end
        -- the tone runs longer than the call; its stats are read at
        -- HOLD - 1 s by the clock (a late loop plays longer, not faster)
        local r, perr = call:play({ tone = 440, duration = hold + 30 }, { timeout = hold - 1 })
        local st = call.media_stats
        if r == nil and perr == "timeout" and st then
            done = done + 1
            tot.rx, tot.lost, tot.tx = tot.rx + st.rx_packets, tot.lost + st.lost, tot.tx + st.tx_packets
            if type(st.srtp) == "string" then tot.srtp = tot.srtp + 1 end
            call:wait_hangup(10)
        else
            fail(i, "ended early: " .. tostring(perr))
        end
        up = up - 1
        call:hangup()
        ended = ended + 1
        if ended == n then sip.stop() end
    end

    sip.spawn(function()
        while true do sip.sleep(1); tick_line() end
    end)

    -- place call i at t0 + (i - 1) / rate
    local t0 = sip.now()
    for i = 1, n do
        local wait = t0 + (i - 1) / rate - sip.now()
        if wait > 0 then sip.sleep(wait) end
        sip.spawn(one, i)
    end
end)
tick_line()
print(("end ok=%d failed=%d done=%d rx=%d lost=%d tx=%d srtp=%d why=%s"):format(
    ok_n, failed, done, tot.rx, tot.lost, tot.tx, tot.srtp, why))
io.stdout:flush()
os.exit(why == "done" and failed == 0 and 0 or 1)
