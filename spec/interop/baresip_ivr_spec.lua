-- Interop with baresip (Debian's baresip-core 1.0.0) as a caller of
-- examples/ivr.lua: driven over its ctrl_tcp socket, baresip dials the
-- IVR, presses digits with its "sndcode" command (RFC 4733
-- telephone-events), leaves a message (its ausine source: a 440 Hz sine)
-- which is measured in the IVR's WAV file, hears it back (measured in
-- the WAV file baresip's sndfile module writes), and is transferred with
-- REFER to a luasip endpoint; and baresip transferring a call to luasip
-- (its "transfer" command), which takes the REFER with call:on("refer")
-- and NOTIFYs the outcome.
local h = require "spec.helper"
local audio = require "spec.audio_helper"
local b = require "spec.interop.baresip_helper"
local sip = h.sip

local ENV = h.ENV


-- wait (yielding) for pattern in the IVR's log after byte `from`
local function wait_log(path, pattern, from, seconds)
    local dl = sip.now() + (seconds or 10)
    repeat
        local caps = { ((h.readfile(path) or ""):sub(from + 1)):match(pattern) }
        if caps[1] then return table.unpack(caps) end
        sip.sleep(0.05)
    until sip.now() > dl
    error(("no %q in the IVR log:\n%s"):format(pattern, h.readfile(path) or ""), 2)
end


describe("interop with baresip calling examples/ivr.lua", function()
    local why = b.missing()
    if why then
        pending(why)
        return
    end

    it("baresip leaves a message by DTMF, hears it back, and is transferred by REFER", function()
        if not io.open("build/prompts/menu.wav") then assert(os.execute("make -s prompts >/dev/null")) end
        -- with its prompts the IVR sends no 440 Hz beep of its own
        assert(io.open("build/prompts/message.wav"), "no prompts: make prompts")
        local dir = os.tmpname()
        os.remove(dir)
        assert(os.execute("mkdir -m 700 " .. dir))
        local iport, cport = h.free_port(), h.free_port()
        local ilog, blog = dir .. "/ivr.log", dir .. "/baresip.log"
        b.write(dir .. "/accounts", "<sip:alice@127.0.0.1>;regint=0\n")
        local ivr = h.spawn_process(ENV .. ("IVR_SPOOL=%s/spool IVR_TRANSFER=sip:carol@127.0.0.1:%d "
            .. "lua5.4 examples/ivr.lua %d 60"):format(dir, cport, iport), ilog)
        local baresip, _, ctlport = b.start(dir, 55, function(sip_port, ctrl_port)
            return b.config(sip_port, ctrl_port, 440,
                            { "net_interface 127.0.0.1", "module sndfile.so", "snd_path " .. dir })
        end)
        local ivr_uri = "sip:ivr@127.0.0.1:" .. iport
        local message
        local ok, err = pcall(h.run, function()
            local carol = assert(sip.endpoint { listen = "udp:127.0.0.1:" .. cport, user = "carol" })
            local carol_from
            carol:on("INVITE", function(call)
                carol_from = call.from.uri
                assert(call:answer { media = true })
                call:wait_hangup(10)
            end)
            assert(wait_log(ilog, "listening", 0, 5))
            local ctl = b.ctrl_connect(ctlport)

            -- 2: leave a message; baresip's sine is what the IVR records
            ctl.send("dial", ivr_uri)
            assert.truthy(ctl.expect('"CALL_ESTABLISHED"', 10), "baresip: the IVR did not answer")
            sip.sleep(0.5)
            local from = #(h.readfile(ilog) or "")
            ctl.send("sndcode", "2")
            assert.equal("2", wait_log(ilog, "ivr: caller chose (%S+)", from))
            wait_log(ilog, "ivr: recording %S+", from, 12)
            sip.sleep(1.5)
            ctl.send("sndcode", "#")
            local path, reason = wait_log(ilog, "ivr: recorded (%S+): [%d%.]+ s %((%a+)%)", from, 5)
            message = path
            assert.equal("dtmf", reason)
            local samples, rate = audio.read_wav(path)
            local sine = audio.tone_seconds(samples, rate, 440)
            assert.is_true(sine >= 1.2, "440 Hz recorded for " .. sine .. " s")

            -- 1: the message played back to baresip
            from = #(h.readfile(ilog) or "")
            ctl.send("sndcode", "1")
            assert.equal(path, wait_log(ilog, "ivr: playing (%S+)", from))
            sip.sleep(audio.duration("build/prompts/message.wav") + #samples / rate + 0.5)

            -- 0: transfer to carol; baresip takes the REFER and calls her
            from = #(h.readfile(ilog) or "")
            ctl.send("sndcode", "0")
            assert.equal("0", wait_log(ilog, "ivr: caller chose (%S+)", from))
            local result = wait_log(ilog, "ivr: transfer to %S+: ([^\n]+)", from, 20)
            assert.equal("done", result)
            assert.truthy(b.wait_until(function() return carol_from end, 5), "carol got no call")
            assert.matches("^sip:alice@127%.0%.0%.1", carol_from)
            ctl.send("hangup")
            sip.sleep(0.5)
            ctl.close()
            carol:close()
        end, 60)
        h.kill(baresip)
        h.kill(ivr)
        os.execute("sleep 0.3")
        local out = ("--- ivr:\n%s--- baresip:\n%s"):format(h.readfile(ilog) or "", h.readfile(blog) or "")
        -- baresip's sndfile filter wrote what it decoded, one file per call
        local heard = 0
        if ok then
            local ls = io.popen("ls " .. dir .. "/dump-*-dec.wav 2>/dev/null")
            for f in ls:lines() do
                local samples, rate = audio.read_wav(f)
                heard = heard + audio.tone_seconds(samples, rate, 440)
            end
            ls:close()
        end
        os.execute("rm -rf " .. dir)
        assert(ok, tostring(err) .. "\n" .. out)
        assert.not_matches("task error", out)
        assert.is_true(heard >= 1.2, "baresip heard 440 Hz for " .. heard .. " s\n" .. out)
        assert.truthy(message)
    end)
    it("baresip transfers a call to luasip: call:on('refer') accepts, calls the target, NOTIFYs 200", function()
        local dir = os.tmpname()
        os.remove(dir)
        assert(os.execute("mkdir -m 700 " .. dir))
        local blog = dir .. "/baresip.log"
        b.write(dir .. "/accounts", "<sip:alice@127.0.0.1>;regint=0\n")
        local baresip, _, ctlport = b.start(dir, 25, function(sip_port, ctrl_port)
            return b.config(sip_port, ctrl_port, 440, { "net_interface 127.0.0.1" })
        end)
        local seen = {}
        local ok, err = pcall(h.run, function()
            local bob, carol = h.endpoint { user = "bob" }, h.endpoint { user = "carol" }
            carol:on("INVITE", function(call)
                seen.carol_from = call.from.uri
                assert(call:answer { media = true })
                seen.carol_ended = call:wait_hangup(10)
            end)
            bob:on("INVITE", function(call)
                call:on("refer", function(c, refer)
                    seen.target, seen.referred_by = refer.target, refer.referred_by
                    assert(refer:accept())
                    local c2, e, code = bob:call(refer.target, { media = true, timeout = 5 })
                    assert(refer:notify(c2 and 200 or code, c2 and "OK" or e))
                    if c2 then sip.sleep(0.5); c2:hangup() end
                end)
                assert(call:answer { media = true })
                seen.bob_ended = call:wait_hangup(15)
            end)
            local ctl = b.ctrl_connect(ctlport)
            ctl.send("dial", h.uri(bob, "bob"))
            assert.truthy(ctl.expect('"CALL_ESTABLISHED"', 10), "baresip: bob did not answer")
            sip.sleep(0.5)
            ctl.send("transfer", h.uri(carol, "carol"))
            -- baresip hangs up once our final NOTIFY says 200
            assert.truthy(ctl.expect('"CALL_CLOSED"', 10), "baresip kept the call")
            assert.truthy(ctl.expect('"param":"Call transfered"', 2), "baresip closed the call for another reason")
            assert.equal("hangup", b.wait_until(function() return seen.bob_ended end, 5))
            assert.equal("hangup", b.wait_until(function() return seen.carol_ended end, 5))
            ctl.close()
        end, 25)
        h.kill(baresip)
        os.execute("sleep 0.2")
        local out = "--- baresip:\n" .. (h.readfile(blog) or "")
        os.execute("rm -rf " .. dir)
        assert(ok, tostring(err) .. "\n" .. out)
        assert.matches("^sip:carol@127%.0%.0%.1:%d+$", seen.target)
        assert.matches("^sip:bob@127%.0%.0%.1", seen.carol_from)
    end)
end)
