-- Interop with baresip's SRTP (Debian's baresip-core 1.0.0, its srtp
-- module with mediaenc=srtp-mand, SDES): a luasip caller with
-- srtp = "mandatory" calls baresip, which answers by itself; each side
-- plays a tone (baresip ausine 440 Hz, luasip 1000 Hz) and records the
-- other: both recordings must hold the far end's tone, so both sides
-- decrypted what the other protected.
local h = require "spec.helper"
local sip = h.sip

local b = require "spec.interop.baresip_helper"

local MODULES = { "g711", "ausine", "aufile", "account", "menu", "srtp", "sndfile" }
local write = b.write


describe("SRTP interop with baresip", function()
    local why = b.missing(MODULES)
    if why then
        pending(why)
        return
    end

    it("exchanges tones over SRTP with baresip (mediaenc=srtp-mand)", function()
        local dir = os.tmpname()
        os.remove(dir)
        assert(os.execute("mkdir -m 700 " .. dir))
        local log, rec = dir .. "/baresip.log", dir .. "/rec.wav"
        write(dir .. "/accounts", "<sip:alice@127.0.0.1>;regint=0;mediaenc=srtp-mand;answermode=auto\n")
        local pid, port = b.start(dir, 20, function(sip_port)
            return table.concat({
                "poll_method epoll",
                "sip_listen 127.0.0.1:" .. sip_port,
                "audio_source ausine,440",
                "ausrc_srate 48000", "ausrc_channels 2",  -- all that ausine makes
                "module_path " .. b.MODDIR,
                "module g711.so", "module ausine.so", "module aufile.so", "module srtp.so",
                "module sndfile.so", "snd_path " .. dir,   -- dumps decoded audio
                "module_tmp account.so", "module_app menu.so",
                "" }, "\n")
        end)
        local st, answer, dur
        local ok, err = pcall(h.run, function()
            local ep = h.endpoint { user = "carol" }
            local call, cerr, code = ep:call("sip:alice@127.0.0.1:" .. port,
                                             { media = true, srtp = "mandatory", symmetric = true, timeout = 10 })
            assert.truthy(call, ("call failed: %s %s"):format(cerr, code))
            answer = call.remote_sdp
            sip.spawn(function() call:play { tone = 1000, duration = 2 } end)
            dur = call:record(rec, { max = 1.5 })
            sip.sleep(0.3)
            st = call.media_stats
            call:hangup()
            sip.sleep(0.5)
        end, 20)
        h.kill(pid)
        os.execute("sleep 0.2")
        local out = h.readfile(log) or ""
        assert(ok, tostring(err) .. "\n--- baresip:\n" .. out)

        -- baresip authenticated every SRTP and SRTCP packet of ours,
        -- the RTCP BYE sent when our media closes included
        assert.not_matches("failed to decrypt", out)
        assert.matches("SRTP is Enabled", out, 1, true)

        -- the SDES answer, and what we received (baresip's 440 Hz)
        assert.matches("m=audio %d+ RTP/SAVP", answer)
        assert.matches("a=crypto:%d AES_CM_128_HMAC_SHA1_%d%d inline:", answer)
        assert.truthy(st.srtp, "no SRTP negotiated")
        assert.equal(0, st.srtp_fail)
        assert.is_true(st.rx_packets >= 60, "rx " .. st.rx_packets)
        assert.is_true(dur > 1.4, "duration " .. tostring(dur))
        local samples, rate = h.read_wav(rec)
        local f = h.frequency(samples, rate, 1601, #samples)
        assert.is_true(math.abs(f - 440) < 15, "luasip heard " .. f .. " Hz\n" .. out)

        -- what baresip decrypted and decoded (sndfile's dump, our 1000 Hz)
        local ls = io.popen("ls " .. dir .. "/dump-*-dec.wav 2>/dev/null")
        local dump = ls:read("l")
        ls:close()
        assert.truthy(dump, "baresip's sndfile wrote no dump\n" .. out)
        local bs, brate = h.read_wav(dump)
        assert.is_true(#bs >= brate, "baresip played " .. #bs .. " samples\n" .. out)
        local bf = h.frequency(bs, brate, brate // 2, #bs - brate // 5)
        assert.is_true(math.abs(bf - 1000) < 25, "baresip heard " .. bf .. " Hz\n" .. out)
        os.execute("rm -rf " .. dir)
    end)
end)
