-- spec/hold_spec.lua: mid-call media changes between two luasip endpoints
-- in one process over UDP (csrc/call.c re-INVITE, csrc/media.c
-- lsip_media_update, lua/luasip/modify.lua): hold and resume from either
-- side measured by RTP counters, a far end moving its RTP port, 488 to a
-- re-offer without a common codec, and late offers (INVITE and re-INVITE
-- without SDP).
local h = require "spec.helper"
local sip = h.sip
local core = require "luasip.core"


local run = h.run_settled


local function pair()
    local a = h.endpoint { user = "alice" }
    local b = h.endpoint { user = "bob", rtp_ports = { 31000, 31999 } }
    return a, b, h.uri(b, "bob")
end


-- RTP packets call received during the next `secs` seconds
local function rx_during(call, secs)
    local before = call.media_stats.rx_packets
    sip.sleep(secs)
    return call.media_stats.rx_packets - before
end


-- the a=<direction> line of an SDP body
local function sdp_dir(sdp)
    return sdp and (sdp:match("a=(sendrecv)") or sdp:match("a=(sendonly)")
        or sdp:match("a=(recvonly)") or sdp:match("a=(inactive)"))
end


describe("luasip.call re-INVITE", function()
    after_each(function()
        collectgarbage()
        collectgarbage()
        local st = h.stats()
        assert.equal(0, st.tasks)
        assert.equal(0, st.waiting)
        assert.equal(0, core.media_count())
    end)

    describe(":hold() / :resume()", function()
        it("caller holds: callee sees 'hold', answers recvonly and stops sending; resume restarts it", function()
            local events, b_state = {}, {}
            run(function()
                local a, b, uri = pair()
                b:on("INVITE", function(call)
                    call:on("hold", function(c)
                        events[#events + 1] = "hold"
                        b_state.held, b_state.rdir = c.held, c.remote_direction
                        b_state.answer = c.local_sdp
                    end)
                    call:on("resume", function(c)
                        events[#events + 1] = "resume"
                        b_state.held2, b_state.rdir2 = c.held, c.remote_direction
                    end)
                    assert(call:answer { media = true })
                    call:wait_hangup(5)
                end)
                local call = assert(a:call(uri, { media = true, timeout = 5 }))
                assert.is_true(rx_during(call, 0.3) >= 8)
                assert.is_false(call.held)
                assert.equal("sendrecv", call.remote_direction)

                assert.is_true(call:hold { timeout = 3 })
                assert.is_true(call.holding)
                assert.equal("sendonly", sdp_dir(call.local_sdp))
                assert.equal("recvonly", sdp_dir(call.remote_sdp))
                assert.equal("recvonly", call.remote_direction)
                assert.is_false(call.held)        -- we hold; they don't
                sip.sleep(0.1)                    -- packets in flight
                assert.equal(0, rx_during(call, 0.5))
                assert.same({ "hold" }, events)
                assert.is_true(b_state.held)
                assert.equal("sendonly", b_state.rdir)
                assert.equal("recvonly", sdp_dir(b_state.answer))

                assert.is_true(call:resume { timeout = 3 })
                assert.is_false(call.holding)
                assert.equal("sendrecv", sdp_dir(call.remote_sdp))
                sip.sleep(0.1)
                assert.is_true(rx_during(call, 0.4) >= 12)
                assert.same({ "hold", "resume" }, events)
                assert.is_false(b_state.held2)
                assert.equal("sendrecv", b_state.rdir2)
                call:hangup()
            end, 8)
        end)

        it("callee holds (a=inactive): the caller's counters stop on both sides, tone comes back after resume", function()
            local path = os.tmpname() .. ".wav"
            local held_seen, b_rx_hold
            run(function()
                local a, b, uri = pair()
                b:on("INVITE", function(call)
                    assert(call:answer { media = true })
                    sip.sleep(0.2)
                    assert.is_true(call:hold { direction = "inactive", timeout = 3 })
                    sip.sleep(0.1)
                    b_rx_hold = rx_during(call, 0.5)
                    assert.is_true(call:resume { timeout = 3 })
                    call:play { tone = 1000, duration = 1.5 }
                    call:wait_hangup(5)
                end)
                local call = assert(a:call(uri, { media = true, timeout = 5 }))
                call:on("hold", function(c) held_seen = c.remote_direction end)
                -- wait for the hold, check we send nothing while held
                local t0 = sip.now()
                while not call.held and sip.now() - t0 < 2 do sip.sleep(0.02) end
                assert.is_true(call.held)
                assert.equal("inactive", call.remote_direction)
                local tx = call.media_stats.tx_packets
                sip.sleep(0.3)
                assert.equal(tx, call.media_stats.tx_packets)
                while call.held and sip.now() - t0 < 3 do sip.sleep(0.02) end
                assert.is_false(call.held)
                sip.sleep(0.3)
                assert(call:record(path, { max = 1 }))
                call:hangup()
            end, 10)
            assert.equal("inactive", held_seen)
            assert.equal(0, b_rx_hold)
            local samples, rate = h.read_wav(path)
            os.remove(path)
            assert.is_true(#samples >= 7900, "samples " .. #samples)
            local f = h.frequency(samples, rate, 801, #samples)
            assert.is_true(math.abs(f - 1000) < 20, "frequency " .. f)
        end)

        it("holds and resumes an SRTP call: same keys, the tone decodes after resume", function()
            local path = os.tmpname() .. ".wav"
            local st, answer2
            run(function()
                local a, b, uri = pair()
                b:on("INVITE", function(call)
                    assert(call:answer { media = true, srtp = "mandatory" })
                    call:on("resume", function(c) answer2 = c.local_sdp end)
                    local t0 = sip.now()
                    while not answer2 and sip.now() - t0 < 4 do sip.sleep(0.02) end
                    call:play { tone = 1000, duration = 1.5 }
                    call:wait_hangup(5)
                end)
                local call = assert(a:call(uri, { media = true, srtp = "mandatory", timeout = 5 }))
                local key = call.local_sdp:match("a=crypto:(%d+ %S+ inline:%S+)")
                assert.is_string(key)
                assert.is_true(call:hold { timeout = 3 })
                assert.matches("RTP/SAVP", call.local_sdp, 1, true)
                assert.equal("recvonly", sdp_dir(call.remote_sdp))
                assert.is_truthy(call.remote_sdp:match("a=crypto:"))
                sip.sleep(0.1)
                assert.equal(0, rx_during(call, 0.4))
                assert.is_true(call:resume { timeout = 3 })
                -- the re-offer repeats the line in use
                assert.equal(key, call.local_sdp:match("a=crypto:(%d+ %S+ inline:%S+)"))
                sip.sleep(0.3)
                assert(call:record(path, { max = 1 }))
                st = call.media_stats
                call:hangup()
            end, 10)
            assert.is_string(st.srtp)
            assert.equal(0, st.srtp_fail)
            assert.is_truthy(answer2 and answer2:match("a=crypto:"))
            local samples, rate = h.read_wav(path)
            os.remove(path)
            assert.is_true(#samples >= 7900, "samples " .. #samples)
            local f = h.frequency(samples, rate, 801, #samples)
            assert.is_true(math.abs(f - 1000) < 20, "frequency " .. f)
        end)

        it("refuses a plain re-offer in a mandatory SRTP call with 488, the call goes on", function()
            local res
            run(function()
                local a, b, uri = pair()
                b:on("INVITE", function(call)
                    assert(call:answer { media = true, srtp = "mandatory" })
                    call:wait_hangup(5)
                end)
                local call = assert(a:call(uri, { media = true, srtp = "mandatory", timeout = 5 }))
                local plain = call.local_sdp:gsub("RTP/SAVP", "RTP/AVP"):gsub("a=crypto:[^\r\n]*\r?\n", "")
                assert.is_falsy(plain:match("crypto"))
                res = { call:modify { body = plain, timeout = 3 } }
                sip.sleep(0.1)
                assert.is_true(rx_during(call, 0.3) >= 8)
                assert.equal(0, call.media_stats.srtp_fail)
                call:hangup()
            end, 8)
            assert.same({ nil, "488 Not Acceptable Here", 488 }, res)
        end)

        it("treats c=0.0.0.0 from the far end as hold and answers recvonly", function()
            local got = {}
            run(function()
                local a, b, uri = pair()
                b:on("INVITE", function(call)
                    assert(call:answer { media = true })
                    call:on("hold", function(c) got.held, got.rdir = c.held, c.remote_direction end)
                    call:wait_hangup(5)
                end)
                local call = assert(a:call(uri, { media = true, timeout = 5 }))
                -- our own SDP, old-style hold: connection address 0.0.0.0
                local sdp = call.local_sdp:gsub("c=IN IP4 [%d%.]+", "c=IN IP4 0.0.0.0")
                assert.is_true(call:modify { body = sdp, timeout = 3 })
                assert.equal("recvonly", sdp_dir(call.remote_sdp))
                sip.sleep(0.1)
                assert.is_true(got.held)
                assert.equal("sendonly", got.rdir)
                call:hangup()
            end, 6)
        end)

        it("returns nil, '491 Request Pending', 491 on both sides when re-INVITEs cross", function()
            local bres
            run(function()
                local a, b, uri = pair()
                local bcall
                b:on("INVITE", function(call)
                    bcall = call
                    assert(call:answer { media = true })
                    call:wait_hangup(5)
                end)
                local call = assert(a:call(uri, { media = true, timeout = 5 }))
                sip.sleep(0.05)
                -- b's hold runs when ours yields, before anything arrives
                local done = false
                sip.spawn(function()
                    bres = { bcall:hold { timeout = 3 } }
                    done = true
                end)
                local res = { call:hold { timeout = 3 } }
                while not done do sip.sleep(0.01) end
                -- both re-INVITEs were on the wire before either arrived
                assert.same({ nil, "491 Request Pending", 491 }, res)
                assert.is_false(call.holding)    -- refused: as before
                assert.is_false(call.modifying)
                assert.is_true(rx_during(call, 0.3) >= 8)
                -- a later try goes through
                assert.is_true(call:hold { timeout = 3 })
                assert.is_true(bcall.held)
                call:hangup()
            end, 6)
            assert.same({ nil, "491 Request Pending", 491 }, bres)
        end)

        it("works while another task waits on the call; a second hold at once is nil, EALREADY", function()
            local waited
            run(function()
                local a, b, uri = pair()
                b:on("INVITE", function(call)
                    assert(call:answer { media = true })
                    call:wait_hangup(5)
                end)
                local call = assert(a:call(uri, { media = true, timeout = 5 }))
                sip.spawn(function() waited = { call:wait(0.5) } end)
                sip.sleep(0.01)
                local second
                sip.spawn(function() second = { call:hold { timeout = 1 } } end)
                assert.is_true(call:hold { timeout = 1 })
                assert.same({ nil, "modify: Operation already in progress", sip.EALREADY }, second)
                assert.is_true(call.holding)
                assert.is_false(call.modifying)
                sip.sleep(0.55)
                call:hangup()
            end, 5)
            assert.same({ nil, "timeout", sip.ETIMEDOUT }, waited)
        end)

        it("returns nil, 'hangup', ECONNRESET when the call ends during the re-INVITE", function()
            local res
            run(function()
                local a, b, uri = pair()
                b:on("INVITE", function(call)
                    assert(call:answer { media = true })
                    call:wait_hangup(5)
                end)
                local call = assert(a:call(uri, { media = true, timeout = 5 }))
                -- runs once hold() has sent the re-INVITE and yields
                sip.spawn(function() call:hangup() end)
                res = { call:hold { timeout = 2 } }
                assert.equal("local", call.cause)
            end, 5)
            assert.same({ nil, "hangup", sip.ECONNRESET }, res)
        end)

        it("raises on a bad direction and returns nil, ENOTCONN on a closed call", function()
            run(function()
                local a, b, uri = pair()
                b:on("INVITE", function(call)
                    assert(call:answer { media = true })
                    call:wait_hangup(5)
                end)
                local call = assert(a:call(uri, { media = true, timeout = 5 }))
                assert.has_error(function() call:hold { direction = "sideways" } end,
                    "bad argument #1 to 'hold' (direction \"sendonly\" or \"inactive\" expected, got sideways)")
                assert.has_error(function() call:modify { direction = 5 } end)
                call:hangup()
                local ok, err, code = call:resume()
                assert.is_nil(ok)
                assert.matches("closed", err)
                assert.equal(sip.ENOTCONN, code)
            end, 5)
        end)
    end)

    describe("far-end offers", function()
        it("follows the far end to a new RTP port", function()
            local m2_rx
            run(function()
                local a, b, uri = pair()
                local moved = false
                b:on("INVITE", function(call)
                    assert(call:answer { media = true })
                    call:on("update", function() moved = true end)
                    call:wait_hangup(5)
                end)
                local call = assert(a:call(uri, { media = true, timeout = 5 }))
                local old = call.media_stats.local_port
                -- a second RTP socket of ours, offered in a re-INVITE
                local m2 = assert(core.media("127.0.0.1", 32000, 32999, { "PCMU" }, false, true))
                assert.are_not.equal(old, m2.port)
                assert.is_true(call:modify { body = m2:offer(), timeout = 3 })
                assert(m2:set_answer(call.remote_sdp))
                assert(m2:start())
                sip.sleep(0.5)
                m2_rx = m2:stats().rx_packets
                assert.is_true(moved)
                -- the far end now sends to m2 only
                local before = call.media_stats.rx_packets
                sip.sleep(0.3)
                assert.is_true(m2:stats().rx_packets - m2_rx >= 8)
                assert.equal(before, call.media_stats.rx_packets)
                m2:close()
                call:hangup()
            end, 6)
            assert.is_true(m2_rx >= 15, "rx at the new port " .. tostring(m2_rx))
        end)

        it("answers 488 to a re-offer without a common codec and the call goes on", function()
            run(function()
                local a, b, uri = pair()
                local bcall
                b:on("INVITE", function(call)
                    bcall = call
                    assert(call:answer { media = true })
                    call:wait_hangup(5)
                end)
                local call = assert(a:call(uri, { media = true, timeout = 5 }))
                local sdp = call.local_sdp:gsub("m=audio (%d+) RTP/AVP [^\r\n]*", "m=audio %1 RTP/AVP 9")
                    :gsub("a=rtpmap:[^\r\n]*\r\n", ""):gsub("a=fmtp:[^\r\n]*\r\n", "")
                sdp = sdp:gsub("(m=audio[^\r\n]*\r\n)", "%1a=rtpmap:9 G722/8000\r\n")
                local ok, err, code = call:modify { body = sdp, timeout = 3 }
                assert.is_nil(ok)
                assert.equal(488, code)
                assert.equal("488 Not Acceptable Here", err)
                assert.equal("established", call.state)
                assert.equal("established", bcall.state)
                assert.equal("PCMU", bcall.media_stats.codec)
                assert.is_true(rx_during(call, 0.3) >= 8)
                assert.is_true(rx_during(bcall, 0.3) >= 8)
                call:hangup()
            end, 6)
        end)

        it("answers a re-INVITE without SDP with an offer in the 200 and takes the answer from the ACK", function()
            local got = {}
            run(function()
                local a, b, uri = pair()
                b:on("INVITE", function(call)
                    assert(call:answer { media = true })
                    got.invite_sdp = call.remote_sdp
                    call:on("hold", function(c) got.held = c.held end)
                    call:wait_hangup(5)
                end)
                local call = assert(a:call(uri, { media = true, timeout = 5 }))
                -- hold by answer: our ACK answers their offer with sendonly
                call.media:set_direction("sendonly")
                assert.is_true(call:modify { late = true, timeout = 3 })
                assert.equal("sendrecv", sdp_dir(call.remote_sdp))   -- their offer
                assert.equal("sendonly", sdp_dir(call.local_sdp))    -- our answer
                sip.sleep(0.1)
                assert.is_true(got.held)
                assert.equal(0, rx_during(call, 0.4))
            end, 6)
        end)
    end)

    describe("late offer", function()
        it("answers an INVITE without SDP with an offer in the 200, the answer in the ACK; audio flows", function()
            local path = os.tmpname() .. ".wav"
            local got = {}
            run(function()
                local a, b, uri = pair()
                b:on("INVITE", function(call)
                    got.invite_sdp = call.remote_sdp or false
                    assert(call:answer { media = true })
                    got.offer, got.answer = call.local_sdp, call.remote_sdp
                    got.codec = call.media_stats.codec
                    assert(call:record(path, { max = 1 }))
                    call:wait_hangup(5)
                end)
                local call = assert(a:call(uri, { media = "late", codecs = { "PCMA" }, timeout = 5 }))
                assert.equal("PCMA", call.media_stats.codec)
                assert.is_true(call:play { tone = 1000, duration = 1.5 })
                assert.is_true(call.media_stats.rx_packets >= 50)
                call:hangup()
            end, 8)
            assert.is_false(got.invite_sdp)
            assert.matches("m=audio %d+ RTP/AVP 0 8", got.offer)
            assert.matches("m=audio %d+ RTP/AVP 8", got.answer)
            assert.equal("PCMA", got.codec)
            local samples, rate = h.read_wav(path)
            os.remove(path)
            assert.is_true(#samples >= 7900, "samples " .. #samples)
            local f = h.frequency(samples, rate, 801, #samples)
            assert.is_true(math.abs(f - 1000) < 20, "frequency " .. f)
        end)
    end)
end)
