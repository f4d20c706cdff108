-- spec/media_spec.lua: RTP audio between two endpoints in one process
-- (csrc/media.c, lua/luasip/media.lua): offer/answer, tones recorded and
-- measured, RFC 4733 digits, source filtering and send pacing.
local h = require "spec.helper"
local sip = h.sip

local has_socket, socket = pcall(require, "socket")


local run = h.run_settled


local function pair()
    local a = h.endpoint { user = "alice" }
    local b = h.endpoint { user = "bob", rtp_ports = { 30000, 30999 } }
    return a, b, h.uri(b, "bob")
end


local read_wav, frequency = h.read_wav, h.frequency


local function tmpwav()
    local p = os.tmpname()
    os.remove(p)
    return p .. ".wav"
end



-- write 16-bit PCM samples (a string) as a WAV file
local function write_wav_data(path, rate, channels, data)
    local f = assert(io.open(path, "wb"))
    f:write("RIFF", string.pack("<I4", 36 + #data), "WAVE",
            "fmt ", string.pack("<I4I2I2I4I4I2I2", 16, 1, channels, rate,
                                rate * 2 * channels, 2 * channels, 16),
            "data", string.pack("<I4", #data), data)
    f:close()
end


-- write a 16-bit PCM WAV of a sine (channels copies of each sample)
local function write_wav(path, rate, channels, hz, seconds)
    local n = math.floor(rate * seconds)
    local parts = {}
    for i = 0, n - 1 do
        local v = math.floor(12000 * math.sin(2 * math.pi * hz * i / rate))
        parts[#parts + 1] = string.pack("<i2", v):rep(channels)
    end
    write_wav_data(path, rate, channels, table.concat(parts))
end


-- root mean square of samples[i..j]
local function rms(samples, i, j)
    local sum = 0
    for k = i, j do sum = sum + samples[k] * samples[k] end
    return math.sqrt(sum / (j - i + 1))
end


describe("luasip.media", function()
    -- every call's media is closed and freed with its call
    after_each(function()
        collectgarbage()
        collectgarbage()
        local st = h.stats()
        assert.equal(0, st.tasks)
        assert.equal(0, st.waiting)
        assert.equal(0, require("luasip.core").media_count())
    end)

    it("records the 1000 Hz tone the caller plays, at 1000 Hz", function()
        local path = tmpwav()
        local dur, reason
        run(function()
            local a, b, uri = pair()
            b:on("INVITE", function(call)
                assert(call:answer { media = true })
                local p = call.media_stats.local_port
                assert.is_true(p >= 30000 and p <= 30999, "port " .. p)
                dur, reason = call:record(path, { max = 1 })
                call:wait_hangup(3)
            end)
            local call = assert(a:call(uri, { media = true, timeout = 5 }))
            assert.equal("PCMU", call.media_stats.codec)
            assert.is_true(call:play({ { tone = 1000, duration = 1.5 } }))
            local st = call.media_stats
            assert.is_true(st.tx_packets >= 70, "tx " .. st.tx_packets)
            call:hangup()
            assert.is_nil(call.media_stats)
        end, 6)
        assert.equal("max", reason)
        assert.is_true(math.abs(dur - 1) < 0.05, "duration " .. tostring(dur))
        local samples, rate = read_wav(path)
        os.remove(path)
        assert.equal(8000, rate)
        assert.is_true(#samples >= 7900, "samples " .. #samples)
        local f = frequency(samples, rate, 801, #samples)
        assert.is_true(math.abs(f - 1000) < 20, "frequency " .. f)
        local peak = 0
        for i = 801, #samples do peak = math.max(peak, math.abs(samples[i])) end
        assert.is_true(peak > 1000, "peak " .. peak)
    end)

    it("delivers RFC 4733 digits to collect() on the other side", function()
        local got, got2, e2, partial
        run(function()
            local a, b, uri = pair()
            b:on("INVITE", function(call)
                assert(call:answer { media = true })
                got = call:collect { terminator = "#", timeout = 3 }
                got2, e2, _, partial = call:collect { max = 4, timeout = 0.5 }
                call:wait_hangup(3)
            end)
            local call = assert(a:call(uri, { media = true, timeout = 5 }))
            sip.sleep(0.1)
            assert.is_true(call:send_dtmf("1234#9*"))
            sip.sleep(1.8)
            call:hangup()
        end, 6)
        assert.equal("1234", got)
        assert.is_nil(got2)
        assert.equal("timeout", e2)
        assert.equal("9*", partial)
    end)

    it("answers with the offerer's first allowed codec", function()
        run(function()
            local a, b, uri = pair()
            b:on("INVITE", function(call)
                assert(call:answer { media = true, codecs = { "PCMA", "PCMU" } })
                assert.equal("PCMU", call.media_stats.codec)
                call:wait_hangup(3)
            end)
            local call = assert(a:call(uri, { media = true, codecs = { "PCMU", "PCMA" }, timeout = 5 }))
            assert.equal("PCMU", call.media_stats.codec)
            call:hangup()
        end, 5)
    end)

    it("rejects an offer without a common codec: nil, '488 Not Acceptable Here', 488", function()
        local res
        run(function()
            local a, b, uri = pair()
            b:on("INVITE", function(call)
                res = { call:answer { media = true, codecs = { "PCMU" } } }
            end)
            local r = { a:call(uri, { media = true, codecs = { "PCMA" }, timeout = 5 }) }
            assert.same({ nil, "488 Not Acceptable Here", 488 }, r)
        end, 5)
        assert.same({ nil, "488 Not Acceptable Here", 488 }, res)
    end)

    it("returns nil, message from play() of a missing file", function()
        run(function()
            local a, b, uri = pair()
            b:on("INVITE", function(call)
                assert(call:answer { media = true })
                call:wait_hangup(3)
            end)
            local call = assert(a:call(uri, { media = true, timeout = 5 }))
            local ok, err, code = call:play("/nonexistent/prompt.wav")
            assert.is_nil(ok)
            assert.matches("/nonexistent/prompt.wav", err, 1, true)
            assert.equal(2, code)  -- ENOENT
            assert.has_error(function() call:play({ { bogus = 1 } }) end)
            -- the call goes on
            assert.is_true(call:play { silence = 0.1 })
            call:hangup()
        end, 5)
    end)

    it("plays interrupted by a digit and returns 'interrupted', digit", function()
        local r
        run(function()
            local a, b, uri = pair()
            b:on("INVITE", function(call)
                assert(call:answer { media = true })
                r = { call:play({ { tone = 440, duration = 3 } }, { interrupt = "5" }) }
                r[3] = call:collect { max = 1, timeout = 1 }
                call:wait_hangup(3)
            end)
            local call = assert(a:call(uri, { media = true, timeout = 5 }))
            sip.sleep(0.3)
            call:send_dtmf("5")
            sip.sleep(0.5)
            call:hangup()
        end, 5)
        assert.same({ "interrupted", "5", "5" }, r)
    end)

    it("returns nil, 'hangup' from play() when the far end hangs up", function()
        local r
        run(function()
            local a, b, uri = pair()
            b:on("INVITE", function(call)
                assert(call:answer { media = true })
                r = { call:play { tone = 440, duration = 5 } }
            end)
            local call = assert(a:call(uri, { media = true, timeout = 5 }))
            sip.sleep(0.3)
            call:hangup()
            sip.sleep(0.3)
        end, 5)
        assert.same({ nil, "hangup", sip.ECONNRESET }, r)
    end)

    it("stops recording on the stop_on digit", function()
        local path, dur, reason = tmpwav(), nil, nil
        run(function()
            local a, b, uri = pair()
            b:on("INVITE", function(call)
                assert(call:answer { media = true })
                dur, reason = call:record(path, { max = 5, stop_on = "#" })
                call:wait_hangup(3)
            end)
            local call = assert(a:call(uri, { media = true, timeout = 5 }))
            sip.sleep(0.5)
            call:send_dtmf("#")
            sip.sleep(0.4)
            call:hangup()
        end, 5)
        os.remove(path)
        assert.equal("dtmf", reason)
        assert.is_true(dur > 0.3 and dur < 1, "duration " .. tostring(dur))
    end)

    it("plays a 16 kHz WAV file at the right pitch and refuses stereo", function()
        local src, stereo, path = tmpwav(), tmpwav(), tmpwav()
        write_wav(src, 16000, 1, 1000, 1.2)
        write_wav(stereo, 8000, 2, 1000, 0.2)
        local dur
        run(function()
            local a, b, uri = pair()
            b:on("INVITE", function(call)
                assert(call:answer { media = true, codecs = { "PCMA" } })
                dur = call:record(path, { max = 1 })
                call:wait_hangup(3)
            end)
            local call = assert(a:call(uri, { media = true, timeout = 5 }))
            assert.equal("PCMA", call.media_stats.codec)
            local ok, err = call:play(stereo)
            assert.is_nil(ok)
            assert.matches("unsupported format", err, 1, true)
            assert.is_true(call:play(src))
            sip.sleep(0.1)
            call:hangup()
        end, 6)
        local samples, rate = read_wav(path)
        for _, p in ipairs { src, stereo, path } do os.remove(p) end
        assert.is_true(dur > 0.9, "duration " .. tostring(dur))
        local f = frequency(samples, rate, 801, #samples - 400)
        assert.is_true(math.abs(f - 1000) < 20, "frequency " .. f)
        -- a sine of amplitude 12000: the prompt's A-law bytes decode to it
        local level = rms(samples, 801, #samples - 400)
        assert.is_true(math.abs(level - 12000 / math.sqrt(2)) < 600, "level " .. level)
    end)

    it("plays a prompt again with its new content once the file changed", function()
        -- csrc/prompt.c keeps prompts in memory; a file rewritten on
        -- disk must be read again, not served from the cache
        local src, path = tmpwav(), tmpwav()
        write_wav(src, 8000, 1, 600, 1.0)
        local dur
        run(function()
            local a, b, uri = pair()
            b:on("INVITE", function(call)
                assert(call:answer { media = true })
                dur = call:record(path, { max = 2.4 })
                call:wait_hangup(3)
            end)
            local call = assert(a:call(uri, { media = true, timeout = 5 }))
            assert.is_true(call:play(src))
            write_wav(src, 16000, 1, 1000, 1.2)
            assert.is_true(call:play(src))
            call:hangup()
        end, 8)
        local samples, rate = read_wav(path)
        for _, p in ipairs { src, path } do os.remove(p) end
        assert.is_true(dur > 2, "duration " .. tostring(dur))
        local f1 = frequency(samples, rate, 0.2 * rate, 0.8 * rate)
        local f2 = frequency(samples, rate, 1.4 * rate, 2.0 * rate)
        assert.is_true(math.abs(f1 - 600) < 20, "first play at " .. f1)
        assert.is_true(math.abs(f2 - 1000) < 20, "second play at " .. f2)
        -- the prompt's u-law bytes decode to a sine of amplitude 12000
        local level = rms(samples, math.floor(0.2 * rate), math.floor(0.8 * rate))
        assert.is_true(math.abs(level - 12000 / math.sqrt(2)) < 600, "level " .. level)
    end)

    it("streams a WAV file too large for the prompt cache", function()
        -- over csrc/prompt.c's PROMPT_MAX (4 MB): played from the file
        local src, path = tmpwav(), tmpwav()
        local period = {}
        for i = 0, 15 do   -- 1000 Hz at 16 kHz: 16 samples a period
            period[#period + 1] = string.pack("<i2",
                math.floor(12000 * math.sin(2 * math.pi * i / 16)))
        end
        local data = table.concat(period):rep(16000 / 16 * 140)  -- 140 s
        write_wav_data(src, 16000, 1, data)
        assert.is_true(#data > 4 * 1024 * 1024)
        local dur
        run(function()
            local a, b, uri = pair()
            b:on("INVITE", function(call)
                assert(call:answer { media = true })
                dur = call:record(path, { max = 1 })
                call:wait_hangup(3)
            end)
            local call = assert(a:call(uri, { media = true, timeout = 5 }))
            sip.spawn(function() call:play(src) end)
            sip.sleep(1.2)
            call:hangup()
        end, 6)
        local samples, rate = read_wav(path)
        for _, p in ipairs { src, path } do os.remove(p) end
        assert.is_true(dur > 0.9, "duration " .. tostring(dur))
        local fr = frequency(samples, rate, 801, #samples - 400)
        assert.is_true(math.abs(fr - 1000) < 20, "frequency " .. fr)
    end)

    it("returns nil, 'timeout', ETIMEDOUT from collect() with nothing sent", function()
        run(function()
            local a, b, uri = pair()
            b:on("INVITE", function(call)
                assert(call:answer { media = true })
                call:wait_hangup(3)
            end)
            local call = assert(a:call(uri, { media = true, timeout = 5 }))
            assert.same({ nil, "timeout", sip.ETIMEDOUT, "" },
                        { call:collect { max = 2, timeout = 0.2 } })
            assert.has_error(function() call:collect { max = 0 } end)
            call:hangup()
            assert.same({ nil, "collect: call has no media", sip.ENOTCONN },
                        { call:collect { max = 1 } })
        end, 5)
    end)

    it("refuses bad rtp_ports and codec names", function()
        assert.has_error(function() sip.endpoint { listen = { "udp:127.0.0.1:0" }, rtp_ports = { 5, 2 } } end)
        run(function()
            local a, b, uri = pair()
            assert.has_error(function() a:call(uri, { media = true, codecs = { "G729" } }) end)
        end, 5)
    end)

    it("detects in-band digits when telephone-event is not negotiated", function()
        local got
        run(function()
            local a, b, uri = pair()
            b:on("INVITE", function(call)
                assert(call:answer { media = true })
                got = { call:collect { max = 3, timeout = 3 } }
                call:wait_hangup(3)
            end)
            local call = assert(a:call(uri, { media = true, telephone_event = false, timeout = 5 }))
            assert.not_matches("telephone%-event", call.local_sdp)
            local ok, err = call:send_dtmf("1")
            assert.is_nil(ok)
            assert.matches("no telephone-event", err, 1, true)
            assert.is_true(call:play { dtmf = "19#", duration = 0.1 })
            sip.sleep(0.3)
            call:hangup()
        end, 6)
        assert.same({ "19#" }, got)
    end)

    it("stops recording after silence_stop seconds of silence", function()
        local dur, reason
        local path = tmpwav()
        run(function()
            local a, b, uri = pair()
            b:on("INVITE", function(call)
                assert(call:answer { media = true })
                dur, reason = call:record(path, { max = 5, silence_stop = 0.4 })
                call:wait_hangup(3)
            end)
            local call = assert(a:call(uri, { media = true, timeout = 5 }))
            assert.is_true(call:play { tone = 600, duration = 0.6 })
            sip.sleep(0.8)
            call:hangup()
        end, 6)
        os.remove(path)
        assert.equal("silence", reason)
        assert.is_true(dur > 0.8 and dur < 1.4, "duration " .. tostring(dur))
    end)

    it("play_and_collect() keeps the digit that cut the prompt short", function()
        local got
        run(function()
            local a, b, uri = pair()
            b:on("INVITE", function(call)
                assert(call:answer { media = true })
                got = { call:play_and_collect { prompt = { tone = 440, duration = 3 }, max = 2, timeout = 2 } }
                call:wait_hangup(3)
            end)
            local call = assert(a:call(uri, { media = true, timeout = 5 }))
            sip.sleep(0.2)
            call:send_dtmf("42")
            sip.sleep(0.8)
            call:hangup()
        end, 6)
        assert.same({ "42" }, got)
    end)

    it("latches to the first RTP source with symmetric = true", function()
        local core = require "luasip.core"   -- the media objects themselves
        run(function()
            for _, symmetric in ipairs { true, false } do
                local a = core.media("127.0.0.1", 10000, 20000, { "PCMU" })
                local b = core.media("127.0.0.1", 10000, 20000, { "PCMU" }, symmetric)
                -- a's offer says port 9: only latching finds the real port
                local offer = a:offer():gsub("m=audio %d+", "m=audio 9")
                assert(a:set_answer(assert(b:answer(offer))))
                assert(a:start())
                assert(b:start())
                sip.sleep(0.3)
                local rx = a:stats().rx_packets
                if symmetric then
                    assert.is_true(rx >= 10, "a rx " .. rx)
                    assert.equal("127.0.0.1:" .. a.port, b:stats().remote)
                else
                    assert.equal(0, rx)
                    assert.is_true(b:stats().rx_dropped >= 10)
                end
                a:close()
                b:close()
            end
        end, 5)
    end)

    it("collects digits sent as SIP INFO (send_dtmf mode = 'info')", function()
        local got
        run(function()
            local a, b, uri = pair()
            b:on("INVITE", function(call)
                assert(call:answer { media = true })
                got = { call:collect { max = 3, timeout = 2 } }
                call:wait_hangup(3)
            end)
            local call = assert(a:call(uri, { media = true, timeout = 5 }))
            assert.is_true(call:send_dtmf("7*#", { mode = "info" }))
            sip.sleep(0.3)
            call:hangup()
        end, 5)
        assert.same({ "7*#" }, got)
    end)

    it("sends nothing in a direction the SDP does not allow", function()
        local callee_stats
        run(function()
            local a, b, uri = pair()
            b:on("INVITE", function(call)
                assert(call:answer { media = true, direction = "recvonly" })
                assert.matches("a=recvonly", call.local_sdp)
                sip.sleep(0.4)
                callee_stats = call.media_stats
                call:wait_hangup(3)
            end)
            local call = assert(a:call(uri, { media = true, timeout = 5 }))
            sip.sleep(0.5)
            assert.equal(0, call.media_stats.rx_packets)
            call:hangup()
        end, 5)
        assert.equal(0, callee_stats.tx_packets)
        assert.is_true(callee_stats.rx_packets >= 10, "rx " .. callee_stats.rx_packets)
    end)

    local it_socket = has_socket and it or pending
    it_socket("ignores RTP from another source than the SDP's", function()
        local path = tmpwav()
        local before, after
        run(function()
            local a, b, uri = pair()
            local callee
            b:on("INVITE", function(call)
                callee = call
                assert(call:answer { media = true })
                call:record(path, { max = 0.6 })
                call:wait_hangup(3)
            end)
            local call = assert(a:call(uri, { media = true, timeout = 5 }))
            sip.sleep(0.1)
            before = callee.media_stats
            local u = assert(socket.udp())
            assert(u:setsockname("127.0.0.1", 0))
            -- PCMU packet full of a loud square wave, right ssrc-less junk
            local pkt = string.pack(">BBI2I4I4", 0x80, 0, 1, 160, 0x1234) .. ("\0\255"):rep(80)
            for _ = 1, 20 do u:sendto(pkt, "127.0.0.1", before.local_port) end
            u:close()
            sip.sleep(0.1)
            after = callee.media_stats
            sip.sleep(0.6)
            call:hangup()
        end, 5)
        assert.equal(20, after.rx_dropped - before.rx_dropped)
        local samples = read_wav(path)
        os.remove(path)
        local peak = 0
        for i = 1, #samples do peak = math.max(peak, math.abs(samples[i])) end
        assert.is_true(peak < 100, "silence expected, peak " .. peak)
    end)

    it_socket("ignores RTP with a payload type the SDP did not negotiate, and runts", function()
        local st0, st1, st2
        run(function()
            local core = require "luasip.core"
            local u = assert(socket.udp())
            assert(u:setsockname("127.0.0.1", 0))
            local _, uport = u:getsockname()
            local m = assert(core.media("127.0.0.1", 10000, 20000, { "PCMU" }, false, true))
            local offer = table.concat({
                "v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "c=IN IP4 127.0.0.1", "t=0 0",
                "m=audio " .. uport .. " RTP/AVP 0 101", "a=rtpmap:101 telephone-event/8000",
                "a=sendrecv", "" }, "\r\n")
            assert(m:answer(offer))
            assert(m:start())
            st0 = m:stats()
            local function rtp(pt, seq) return string.pack(">BBI2I4I4", 0x80, pt, seq, seq * 160, 0x4321) .. ("\255"):rep(160) end
            -- from the SDP's address: PCMA (8) and 99 were not negotiated
            for i = 1, 10 do u:sendto(rtp(8, i), "127.0.0.1", st0.local_port) end
            for i = 11, 20 do u:sendto(rtp(99, i), "127.0.0.1", st0.local_port) end
            u:sendto("\128\0", "127.0.0.1", st0.local_port)          -- 2-byte runt
            sip.sleep(0.2)
            st1 = m:stats()
            for i = 21, 30 do u:sendto(rtp(0, i), "127.0.0.1", st0.local_port) end
            sip.sleep(0.2)
            st2 = m:stats()
            u:close()
            m:close()
        end, 5)
        assert.equal(0, st1.rx_packets - st0.rx_packets)
        assert.is_true(st1.rx_dropped - st0.rx_dropped >= 20, "dropped " .. st1.rx_dropped - st0.rx_dropped)
        assert.equal(10, st2.rx_packets - st1.rx_packets)      -- PCMU still flows
    end)

    it("sends one packet every 20 ms (median inter-arrival)", function()
        local gaps
        run(function()
            local a, b, uri = pair()
            local callee
            b:on("INVITE", function(call)
                callee = call
                assert(call:answer { media = true })
                call:wait_hangup(3)
            end)
            local call = assert(a:call(uri, { media = true, timeout = 5 }))
            sip.sleep(1.3)
            gaps = callee.media:_arrivals()
            call:hangup()
        end, 5)
        assert.is_true(#gaps >= 50, "gaps " .. #gaps)
        table.sort(gaps)
        local median = gaps[#gaps // 2]
        assert.is_true(math.abs(median - 0.020) < 0.002, "median " .. median)
        local sum = 0
        for _, g in ipairs(gaps) do sum = sum + g end
        assert.is_true(math.abs(sum / #gaps - 0.020) < 0.004, "mean " .. sum / #gaps)
    end)

    it("sends 183 with SDP and early media from progress{ media = true }", function()
        local early
        run(function()
            local a, b, uri = pair()
            b:on("INVITE", function(call)
                assert(call:progress { media = true })
                call:play { tone = 800, duration = 0.3 }
                assert(call:answer { media = true })
                call:wait_hangup(3)
            end)
            local call = assert(a:call(uri, { media = true, timeout = 5,
                on_progress = function(c) early = c.remote_sdp end }))
            -- the caller received the early tone (0.3 s = 15 packets)
            local st = call.media_stats
            assert.is_true(st.rx_packets >= 12, "rx " .. st.rx_packets)
            assert.equal(0, st.rx_dropped)
            call:hangup()
        end, 5)
        assert.matches("m=audio %d+ RTP/AVP 0", early)
    end)
end)
