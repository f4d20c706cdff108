-- spec/srtp_media_spec.lua: SRTP in calls between two luasip endpoints
-- (srtp option, SDES offer/answer, libsrtp2 through udp helpers in
-- csrc/srtp.c). The caller's SDP offer is rewritten to point at a UDP
-- man-in-the-middle relay written here with LuaSocket, so the specs see
-- and can tamper with the packets on the wire.
local h = require "spec.helper"
local sip = h.sip
local core = require "luasip.core"
local media = require "luasip.media"

local has_socket, socket = pcall(require, "socket")
local it_socket = has_socket and it or pending

local S80, S32 = "AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32"
local RTP_HDR, FRAME = 12, 160


local run = h.run_settled


local function tmpwav()
    local p = os.tmpname()
    os.remove(p)
    return p .. ".wav"
end


local function pair(aopts, bopts)
    local ao, bo = { user = "alice" }, { user = "bob", rtp_ports = { 31000, 31999 } }
    for k, v in pairs(aopts or {}) do ao[k] = v end
    for k, v in pairs(bopts or {}) do bo[k] = v end
    local a, b = h.endpoint(ao), h.endpoint(bo)
    return a, b, h.uri(b, "bob")
end


---------------------------------------------------------------- the relay

-- A UDP relay on two consecutive loopback ports (RTP, RTCP) between the
-- caller (its real ports from the offer) and the callee (learnt from the
-- first packet). It records every datagram per direction; tamper(pkt,
-- n) may return a changed packet for the callee->caller RTP stream.
local function relay_new()
    local r = { seen = { b2a = {}, a2b = {}, rtcp_b2a = {} }, running = true }
    for _ = 1, 50 do
        local u = assert(socket.udp())
        assert(u:setsockname("127.0.0.1", 0))
        local _, port = u:getsockname()
        port = tonumber(port)
        local u2 = assert(socket.udp())
        if port < 65535 and u2:setsockname("127.0.0.1", port + 1) then
            r.rtp, r.rtcp, r.port = u, u2, port
            break
        end
        u:close()
        u2:close()
    end
    assert(r.rtp, "no pair of free UDP ports")
    r.rtp:settimeout(0)
    r.rtcp:settimeout(0)
    return r
end


local function relay_pump(r, sock, rtcp)
    local n = 0
    while true do
        local pkt, ip, port = sock:receivefrom()
        if not pkt then return n end
        n = n + 1
        local a_port = r.a_port + (rtcp and 1 or 0)
        if port == a_port then
            if not rtcp then r.seen.a2b[#r.seen.a2b + 1] = pkt end
            local bp = rtcp and r.b_port and r.b_port + 1 or r.b_port
            if bp then sock:sendto(pkt, "127.0.0.1", bp) end
        else
            if not rtcp then r.b_port = r.b_port or port end
            local list = rtcp and r.seen.rtcp_b2a or r.seen.b2a
            list[#list + 1] = pkt
            if not rtcp and r.tamper then
                for _, p in ipairs { r.tamper(pkt, #list) } do sock:sendto(p, ip, a_port) end
            else
                sock:sendto(pkt, ip, a_port)
            end
        end
    end
end


-- ep:call's offer goes through media.offer: point its m= port at the
-- relay while `relay` is set (the caller must be symmetric to latch)
local relay
local orig_offer = media.offer
media.offer = function(ep, opts)
    local m, sdp = orig_offer(ep, opts)
    if m and relay and not relay.a_port then
        relay.a_port = tonumber(sdp:match("m=audio (%d+)"))
        sdp = sdp:gsub("m=audio %d+", "m=audio " .. relay.port)
    end
    return m, sdp
end


local function with_relay(fn)
    relay = relay_new()
    local r = relay
    sip.spawn(function()
        while r.running do
            if r.a_port then
                relay_pump(r, r.rtp, false)
                relay_pump(r, r.rtcp, true)
            end
            sip.sleep(0.002)
        end
        r.rtp:close()
        r.rtcp:close()
    end)
    local ok, err = pcall(fn, r)
    relay = nil
    r.running = false
    sip.sleep(0.01)
    if not ok then error(err, 0) end
    return r
end


-- the callee plays a 1000 Hz tone, the caller (through the relay)
-- records one second of it; returns relay, recorded samples, stats
local function tone_call(aopts, bopts, tamper)
    local path = tmpwav()
    local res = {}
    run(function()
        with_relay(function(r)
            r.tamper = tamper
            res.seen = r.seen
            local a, b, uri = pair()
            b:on("INVITE", function(call)
                local o = { media = true }
                for k, v in pairs(bopts) do o[k] = v end
                assert(call:answer(o))
                res.callee_sdp = call.local_sdp
                call:play { tone = 1000, duration = 1.4 }
                res.callee = call.media_stats
                call:wait_hangup(3)
            end)
            local o = { media = true, symmetric = true, timeout = 5 }
            for k, v in pairs(aopts) do o[k] = v end
            local call = assert(a:call(uri, o))
            res.dur = call:record(path, { max = 1.2 })
            local t0 = sip.now()
            while not res.callee and sip.now() - t0 < 2 do sip.sleep(0.05) end
            res.caller = call.media_stats
            call:hangup()
        end)
    end, 8)
    local samples, rate = h.read_wav(path)
    os.remove(path)
    assert.equal(8000, rate)
    res.freq = h.frequency(samples, rate, 1601, #samples)
    return res
end


-- payload of an RTP packet (12-byte header, no CSRC/extension here)
local function payload(pkt, taglen)
    return pkt:sub(RTP_HDR + 1, #pkt - (taglen or 0))
end


-- true when the payload repeats with period 8 (PCMU of 1000 Hz at 8 kHz)
local function periodic(p)
    if #p < 64 then return false end
    local same, values = 0, {}
    for i = 1, #p - 8 do
        if p:byte(i) == p:byte(i + 8) then same = same + 1 end
        values[p:byte(i)] = true
    end
    local distinct = 0
    for _ in pairs(values) do distinct = distinct + 1 end
    return same >= 0.9 * (#p - 8) and distinct >= 3     -- silence is constant
end


-- the SRTP key the far end sends with (from its SDP's a=crypto line)
local function sdp_key(sdp)
    local tag, suite, line = sdp:match("a=crypto:(%d+) (%S+) (inline:%S+)")
    local _, s, key = assert(core.srtp_sdes_parse(tag .. " " .. suite .. " " .. line))
    return s, key
end


describe("SRTP calls", function()
    after_each(function()
        collectgarbage()
        collectgarbage()
        local st = h.stats()
        assert.equal(0, st.tasks)
        assert.equal(0, st.waiting)
        assert.equal(0, core.media_count())
    end)

    it_socket("carries a tone over SRTP: recorded at 1000 Hz, no plaintext on the wire", function()
        -- control: the same call in plain RTP shows the tone on the wire
        local plain = tone_call({}, {})
        local tones = 0
        for _, pkt in ipairs(plain.seen.b2a) do
            if periodic(payload(pkt)) then tones = tones + 1 end
        end
        assert.is_false(plain.caller.srtp)
        assert.is_false(plain.caller.srtp_warm)
        assert.is_true(math.abs(plain.freq - 1000) < 20, "plain frequency " .. plain.freq)

        local res = tone_call({ srtp = "mandatory" }, { srtp = "mandatory" })
        assert.equal(S80, res.caller.srtp)
        assert.equal(S80, res.callee.srtp)
        assert.matches("m=audio %d+ RTP/SAVP", res.callee_sdp)
        assert.is_true(math.abs(res.freq - 1000) < 20, "frequency " .. res.freq)
        assert.is_true(res.dur > 1.1, "duration " .. tostring(res.dur))
        assert.equal(0, res.caller.srtp_fail)
        assert.equal(0, res.caller.rx_dropped)
        -- libsrtp2's per-packet state found and read ahead (srtp.c, Warming)
        assert.is_true(res.caller.srtp_warm)
        assert.is_true(res.callee.srtp_warm)
        assert.is_true(res.caller.rx_packets >= 60, "rx " .. res.caller.rx_packets)
        -- tx_bytes counts payload, not the tag
        assert.equal(res.callee.tx_packets * FRAME, res.callee.tx_bytes)

        -- on the wire: 160 bytes of ciphertext + 10-byte tag, no tone
        local wire = res.seen.b2a
        assert.is_true(#wire >= 60, "packets seen " .. #wire)
        local suite, key = sdp_key(res.callee_sdp)
        assert.equal(S80, suite)
        local rx = assert(core.srtp_session(suite, key, false))
        local decrypted = 0
        for _, pkt in ipairs(wire) do
            assert.equal(RTP_HDR + FRAME + 10, #pkt)
            assert.is_false(periodic(payload(pkt, 10)))
            -- the SDP's key opens it: the plaintext is the tone
            local clear = assert(rx:unprotect(pkt))
            if periodic(payload(clear)) then decrypted = decrypted + 1 end
        end
        rx:close()
        assert.is_true(decrypted >= 50, "decrypted tone frames " .. decrypted)
        -- and the same check finds the tone in the plain control run
        assert.is_true(tones >= 50, "plain tone frames " .. tones)
    end)

    it("refuses mandatory against off with 488, both directions", function()
        run(function()
            for _, case in ipairs { { "mandatory", "off" }, { "off", "mandatory" } } do
                local a, b, uri = pair()
                local res
                b:on("INVITE", function(call)
                    res = { call:answer { media = true, srtp = case[2] } }
                end)
                local r = { a:call(uri, { media = true, srtp = case[1], timeout = 5 }) }
                assert.same({ nil, "488 Not Acceptable Here", 488 }, r)
                assert.same({ nil, "488 Not Acceptable Here", 488 }, res)
                a:close()
                b:close()
            end
        end, 6)
    end)

    it("hangs up with 488 when a mandatory offer is answered in plain RTP", function()
        local hung
        run(function()
            local a, b, uri = pair { srtp = "mandatory" }  -- endpoint default
            b:on("INVITE", function(call)
                local offer = call.remote_sdp
                assert.matches("m=audio %d+ RTP/SAVP", offer)
                local plain = offer:gsub("RTP/SAVP", "RTP/AVP"):gsub("a=crypto:[^\r\n]*\r\n", "")
                assert(call:answer { body = plain })
                hung = call:wait_hangup(3)
            end)
            local r = { a:call(uri, { media = true, timeout = 5 }) }
            assert.same({ nil, "488 Not Acceptable Here", 488 }, r)
            sip.sleep(0.2)
        end, 6)
        assert.truthy(hung)
    end)

    it("offers RTP/AVP with a=crypto when optional: off answers plain, optional SRTP", function()
        run(function()
            for _, case in ipairs { { "optional", "off", false }, { "off", "optional", false },
                                    { "optional", "optional", S80 },
                                    { "optional", "mandatory", S80 } } do
                local a, b, uri = pair()
                local callee
                b:on("INVITE", function(call)
                    if case[1] == "optional" then
                        assert.matches("m=audio %d+ RTP/AVP .*a=crypto:1 " .. S80
                                       .. ".*a=crypto:2 " .. S32, call.remote_sdp)
                    end
                    assert(call:answer { media = true, srtp = case[2] })
                    if case[3] then
                        assert.matches("a=crypto:1 " .. S80, call.local_sdp)
                    else
                        assert.not_matches("a=crypto", call.local_sdp)
                    end
                    call:play { tone = 500, duration = 0.4 }
                    callee = call.media_stats
                    call:wait_hangup(3)
                end)
                local call = assert(a:call(uri, { media = true, srtp = case[1], timeout = 5 }))
                sip.sleep(0.5)
                local st = call.media_stats
                assert.equal(case[3], st.srtp)
                assert.equal(case[3], callee.srtp)
                assert.is_true(st.rx_packets >= 15, "rx " .. st.rx_packets)
                assert.equal(0, st.srtp_fail)
                assert.equal(0, st.rx_dropped)
                call:hangup()
                sip.sleep(0.05)
                a:close()
                b:close()
            end
        end, 10)
    end)

    it_socket("drops and counts tampered and replayed SRTP packets", function()
        local tampered, replayed = {}, 0
        local res = tone_call({ srtp = "mandatory" }, { srtp = "mandatory" }, function(pkt, n)
            if n % 10 == 5 and #tampered < 5 then
                tampered[#tampered + 1] = n
                local i = RTP_HDR + 20     -- one bit of the ciphertext
                return pkt:sub(1, i - 1) .. string.char(pkt:byte(i) ~ 0x80) .. pkt:sub(i + 1)
            elseif n == 30 then
                replayed = replayed + 1
                return pkt, pkt            -- the same packet twice
            end
            return pkt
        end)
        assert.equal(5, #tampered)
        assert.equal(1, replayed)
        assert.equal(5, res.caller.srtp_fail)
        assert.equal(1, res.caller.srtp_replay)
        -- neither reached RTP: not counted as received, not dropped there
        assert.equal(0, res.caller.rx_dropped)
        assert.is_true(math.abs(res.freq - 1000) < 20, "frequency " .. res.freq)
    end)

    it_socket("negotiates AES_CM_128_HMAC_SHA1_32 when it is the only suite offered", function()
        local res = tone_call({ srtp = "mandatory", srtp_suites = { S32 } }, { srtp = "mandatory" })
        assert.equal(S32, res.caller.srtp)
        assert.equal(S32, res.callee.srtp)
        assert.matches("a=crypto:1 " .. S32 .. " inline:", res.callee_sdp)
        assert.not_matches(S80, res.callee_sdp)
        assert.is_true(math.abs(res.freq - 1000) < 20, "frequency " .. res.freq)
        -- a 4-byte tag on the wire, both ways
        for _, dir in ipairs { "b2a", "a2b" } do
            assert.is_true(#res.seen[dir] >= 20, dir)
            for _, pkt in ipairs(res.seen[dir]) do assert.equal(RTP_HDR + FRAME + 4, #pkt) end
        end
        -- and with no common suite: 488
        run(function()
            local a, b, uri = pair()
            b:on("INVITE", function(call)
                call:answer { media = true, srtp = "mandatory", srtp_suites = { S80 } }
            end)
            assert.same({ nil, "488 Not Acceptable Here", 488 },
                        { a:call(uri, { media = true, srtp = "optional", srtp_suites = { S32 },
                                        timeout = 5 }) })
        end, 5)
    end)

    it("raises on bad srtp option values, naming the option and the value", function()
        assert.has_error(function()
            sip.endpoint { listen = { "udp:127.0.0.1:0" }, srtp = "always" }
        end, [[bad option 'srtp' ("off", "optional" or "mandatory" expected, got "always")]])
        assert.has_error(function()
            sip.endpoint { listen = { "udp:127.0.0.1:0" }, srtp_suites = { "AES_256_CM" } }
        end)
        run(function()
            local a, _, uri = pair()
            local ok, err = pcall(a.call, a, uri, { media = true, srtp = true })
            assert.is_false(ok)
            assert.matches("bad option 'srtp'.*got true", err)
            ok, err = pcall(a.call, a, uri, { media = true, srtp = "yes" })
            assert.is_false(ok)
            assert.matches([[bad option 'srtp'.*got "yes"]], err)
            ok, err = pcall(a.call, a, uri, { media = true, srtp_suites = { "F8_128_HMAC_SHA1_80" } })
            assert.is_false(ok)
            assert.matches("bad option 'srtp_suites'.*F8_128_HMAC_SHA1_80", err)
            ok, err = pcall(a.call, a, uri, { media = true, srtp_suites = { {} } })
            assert.is_false(ok)
            assert.matches("bad option 'srtp_suites'.*table", err)
            ok, err = pcall(a.call, a, uri, { media = true, srtp_suites = {} })
            assert.is_false(ok)
            assert.matches("bad option 'srtp_suites'", err)
        end, 5)
    end)

    it_socket("protects RTCP as SRTCP (libre's first report comes after 5 s)", function()
        local wire, caller, callee_sdp
        run(function()
            with_relay(function(r)
                local a, b, uri = pair()
                b:on("INVITE", function(call)
                    assert(call:answer { media = true, srtp = "mandatory" })
                    callee_sdp = call.local_sdp
                    call:wait_hangup(8)
                end)
                local call = assert(a:call(uri, { media = true, srtp = "mandatory", symmetric = true,
                                                  timeout = 5 }))
                local t0 = sip.now()
                while #r.seen.rtcp_b2a == 0 and sip.now() - t0 < 6.5 do sip.sleep(0.1) end
                sip.sleep(0.1)
                wire = r.seen.rtcp_b2a
                caller = call.media_stats
                call:hangup()
            end)
        end, 10)
        assert.is_true(#wire >= 1, "no RTCP seen")
        local suite, key = sdp_key(callee_sdp)
        local rx = assert(core.srtp_session(suite, key, false))
        for _, pkt in ipairs(wire) do
            -- not RTCP as sent: an SRTCP trailer (E flag, index) and tag
            local clear = assert(rx:unprotect_rtcp(pkt))
            assert.equal(#clear + 4 + 10, #pkt)
            assert.equal(0x80, pkt:byte(#pkt - 13) & 0x80)    -- E: encrypted
            local v, pt = clear:byte(1), clear:byte(2)
            assert.equal(2, v >> 6)
            assert.is_true(pt == 200 or pt == 201, "RTCP type " .. pt)
            -- the compound's SDES CNAME is encrypted on the wire
            assert.matches("luasip", clear, 1, true)
            assert.not_matches("luasip", pkt, 1, true)
        end
        rx:close()
        -- the caller's libre got them through unprotect_rtcp
        assert.equal(0, caller.srtcp_fail)
    end)

    it("keeps the sessions on a re-offer with the same key and re-keys on a new one", function()
        local function crypto(sdp)
            local t = {}
            for l in sdp:gmatch("a=crypto:([^\r\n]*)") do t[#t + 1] = l end
            return t
        end
        run(function()
            local a = core.media("127.0.0.1", 10000, 20000, { "PCMU" }, false, true, "mandatory")
            local b = core.media("127.0.0.1", 10000, 20000, { "PCMU" }, false, true, "mandatory",
                                 { S32 })
            local offer = a:offer()
            assert.equal(2, #crypto(offer))
            local answer = assert(b:answer(offer))
            assert.matches("^2 " .. S32, crypto(answer)[1])      -- b allows _32 only
            assert(a:set_answer(answer))
            assert(a:start())
            assert(b:start())
            sip.sleep(0.3)

            -- a re-offer repeats the line in use; the same answer comes back
            local offer2 = a:offer()
            assert.same({ crypto(offer)[2] }, crypto(offer2))
            local answer2 = assert(b:answer(offer2))
            assert.same(crypto(answer), crypto(answer2))
            assert(a:set_answer(answer2))
            local a1, b1 = a:stats(), b:stats()
            sip.sleep(0.3)
            local a2, b2 = a:stats(), b:stats()
            for _, st in ipairs { a2, b2 } do
                assert.equal(S32, st.srtp)
                assert.equal(0, st.srtp_fail)
                assert.equal(0, st.srtp_replay)
            end
            assert.is_true(a2.rx_packets - a1.rx_packets >= 10)
            assert.is_true(b2.rx_packets - b1.rx_packets >= 10)

            -- a re-offer with another key (as if a had re-keyed): b answers
            -- with a fresh key of its own and expects the new one from a
            local line = assert(core.srtp_sdes_make(2, S32))
            local offer3 = offer2:gsub("a=crypto:[^\r\n]*", "a=crypto:" .. line)
            local answer3 = assert(b:answer(offer3))
            assert.matches("^2 " .. S32, crypto(answer3)[1])
            assert.not_equal(crypto(answer)[1], crypto(answer3)[1])
            assert(a:set_answer(answer3))
            sip.sleep(0.3)
            local a3, b3 = a:stats(), b:stats()
            -- a follows b's new key; b rejects a's packets, still under the old key.
            -- A packet b sent under its new key before a applied the answer
            -- can fail at a (on a loaded machine a tick falls in between).
            assert.is_true(a3.srtp_fail - a2.srtp_fail <= 2, "a srtp_fail " .. a3.srtp_fail)
            assert.is_true(a3.rx_packets - a2.rx_packets >= 10)
            assert.is_true(b3.srtp_fail >= 10, "b srtp_fail " .. b3.srtp_fail)
            assert.is_true(b3.rx_packets - b2.rx_packets <= 1)
            a:close()
            b:close()
        end, 5)
    end)

    it("runs early media over SRTP (183 with SDP, then 200)", function()
        local early
        run(function()
            local a, b, uri = pair({ srtp = "mandatory" }, { srtp = "mandatory" })
            b:on("INVITE", function(call)
                assert(call:progress { media = true })
                call:play { tone = 800, duration = 0.4 }
                assert(call:answer { media = true })
                call:wait_hangup(3)
            end)
            local call = assert(a:call(uri, { media = true, timeout = 5,
                on_progress = function(c) early = c.remote_sdp end }))
            local st = call.media_stats
            assert.equal(S80, st.srtp)
            assert.is_true(st.rx_packets >= 15, "rx " .. st.rx_packets)
            assert.equal(0, st.srtp_fail)
            assert.equal(0, st.rx_dropped)
            call:hangup()
        end, 5)
        assert.matches("m=audio %d+ RTP/SAVP 0.*a=crypto:1 " .. S80, early)
    end)

    it("skips malformed or unknown a=crypto lines and takes the first usable one", function()
        run(function()
            local good = assert(core.srtp_sdes_make(7, S80))
            local bad = {
                "1 AES_CM_128_HMAC_SHA1_80 inline:!!!!notbase64!!!!",
                "2 AES_CM_128_HMAC_SHA1_80 inline:c2hvcnQ",                 -- short key
                "3 AES_256_CM_HMAC_SHA1_80 inline:" .. ("QUJD"):rep(15),   -- unknown suite
                "x AES_CM_128_HMAC_SHA1_32",
                ("9"):rep(3000),
                "",
            }
            local function offer(proto, lines)
                local t = { "v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "c=IN IP4 127.0.0.1", "t=0 0",
                            "m=audio 40000 " .. proto .. " 0", "a=rtpmap:0 PCMU/8000" }
                for _, l in ipairs(lines) do t[#t + 1] = "a=crypto:" .. l end
                t[#t + 1] = ""
                return table.concat(t, "\r\n")
            end
            local function answer(pol, o)
                local m = core.media("127.0.0.1", 10000, 20000, { "PCMU" }, false, true, pol)
                local r = { m:answer(o) }
                local st = m:stats()
                m:close()
                return r, st
            end
            -- nothing usable: 488 when SRTP is required, plain when optional
            assert.same({ nil, "488 Not Acceptable Here", 488 }, (answer("mandatory", offer("RTP/SAVP", bad))))
            assert.same({ nil, "488 Not Acceptable Here", 488 }, (answer("optional", offer("RTP/SAVP", bad))))
            local r, st = answer("optional", offer("RTP/AVP", bad))
            assert.matches("m=audio %d+ RTP/AVP 0", r[1])
            assert.not_matches("a=crypto", r[1])
            assert.is_false(st.srtp)
            -- the usable line after the bad ones is taken, with its tag
            local lines = {}
            for _, l in ipairs(bad) do lines[#lines + 1] = l end
            lines[#lines + 1] = good
            r, st = answer("mandatory", offer("RTP/SAVP", lines))
            assert.matches("m=audio %d+ RTP/SAVP 0", r[1])
            assert.matches("a=crypto:7 " .. S80 .. " inline:", r[1])
            assert.equal(S80, st.srtp)
        end, 5)
    end)
end)
