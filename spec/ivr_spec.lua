-- spec/ivr_spec.lua: examples/ivr.lua runs as its own process (with a
-- deadline) and luasip callers in this process use it over loopback:
-- a message left as a 1 kHz tone is found in the recorded WAV and heard
-- back (both measured with Goertzel and zero crossings), DTMF drives
-- the menu in each mode (RFC 4733, SIP INFO, in-band), 0 transfers the
-- caller with REFER.
local h = require "spec.helper"
local audio = require "spec.audio_helper"
local sip = h.sip

local ENV = h.ENV
local PROMPTS = "build/prompts"
local LIFETIME = 180                     -- the IVR process exits by itself

local base = os.tmpname()                -- unique; its directory is base .. ".d"
local spool, log, pid, ivr_uri, carol_port = base .. ".d", base .. ".log", nil, nil, nil


local function logtext() return h.readfile(log) or "" end


-- wait (in a task) for pattern in the IVR's log after byte `from`
local function wait_log(pattern, from, seconds)
    local dl = sip.now() + (seconds or 10)
    while true do
        local caps = { logtext():sub(from + 1):match(pattern) }
        if caps[1] then return table.unpack(caps) end
        if sip.now() > dl then
            error(("IVR log has no %q after %d bytes:\n%s"):format(pattern, from, logtext()), 2)
        end
        sip.sleep(0.05)
    end
end


local function dial(ep, mode)
    return assert(ep:call(ivr_uri, { media = true, timeout = 5, telephone_event = mode ~= "inband" }))
end


local function press(call, digit, mode)
    if mode == "inband" then
        assert(call:play { dtmf = digit, duration = 0.15 })
        assert(call:play { silence = 0.1 })
    else
        assert(call:send_dtmf(digit, { mode = mode }))
    end
end


-- press 2, wait for the recording to start, "speak" a tone, end with #;
-- returns the path of the recorded message and its length
local function leave_message(call, mode, from, freq, secs)
    sip.sleep(0.3)
    press(call, "2", mode)
    assert.equal("2", wait_log("ivr: caller chose (%S+)", from))
    wait_log("ivr: recording (%S+)", from, 12)
    assert(call:play { tone = freq, duration = secs })
    press(call, "#", mode)
    local path, len, why = wait_log("ivr: recorded (%S+): ([%d%.]+) s %((%a+)%)", from, 5)
    assert.equal("dtmf", why)
    return path, tonumber(len)
end


local function run(fn, seconds)
    return h.run(function()
        local ok, err = xpcall(fn, debug.traceback)
        sip.sleep(0.05)
        if not ok then error(err, 0) end
    end, seconds)
end


describe("examples/ivr.lua", function()
    lazy_setup(function()
        if not io.open(PROMPTS .. "/menu.wav") then
            assert(os.execute("make -s prompts >/dev/null"), "make prompts failed")
        end
        assert(os.execute("mkdir -p " .. spool))
        local port = h.free_port()
        carol_port = h.free_port()
        ivr_uri = "sip:ivr@127.0.0.1:" .. port
        pid = h.spawn_process(ENV .. ("IVR_SPOOL=%s IVR_TRANSFER=sip:carol@127.0.0.1:%d IVR_MAX=20 "
            .. "lua5.4 examples/ivr.lua %d %d"):format(spool, carol_port, port, LIFETIME), log)
        local socket = require "socket"
        local dl = socket.gettime() + 5
        while not logtext():match("listening") and socket.gettime() < dl do socket.sleep(0.05) end
        assert.matches("ivr: listening on " .. ivr_uri, logtext(), 1, true)
    end)

    lazy_teardown(function()
        h.kill(pid)
        local out = logtext()
        os.execute("rm -rf " .. spool)
        os.remove(log)
        os.remove(base)
        assert.not_matches("task error", out)
    end)

    it("records a message spoken as a 1 kHz tone and plays it back (RFC 4733)", function()
        run(function()
            local from = #logtext()
            local ep = h.endpoint { user = "alice" }
            local call = dial(ep, "rfc4733")
            local path, len = leave_message(call, "rfc4733", from, 1000, 1.5)
            assert.equal(spool, path:match("^(.*)/[^/]+$"))
            -- the WAV holds the tone: ~1.5 s where 1 kHz carries the energy
            local samples, rate = audio.read_wav(path)
            assert.equal(8000, rate)
            assert.is_true(len >= 1.4 and len < 4, tostring(len))
            local toned, first = audio.tone_seconds(samples, rate, 1000)
            assert.is_true(toned >= 1.3 and toned <= 1.6, "1 kHz for " .. toned .. " s")
            assert.near(1000, audio.frequency(samples, rate, first, first + 8000), 15)
            assert.is_true(audio.tone_seconds(samples, rate, 500) < 0.1)
            call:hangup()

            -- a new call: 1 plays the last message back; what we hear has it
            from = #logtext()
            call = dial(ep, "rfc4733")
            sip.sleep(0.3)
            press(call, "1", "rfc4733")
            assert.equal(path, wait_log("ivr: playing (%S+)", from))
            local heard = base .. ".heard.wav"
            local secs = assert(call:record(heard, {
                max = audio.duration(PROMPTS .. "/message.wav") + 1.5 + 1.5 }))
            call:hangup()
            samples, rate = audio.read_wav(heard)
            os.remove(heard)
            assert.is_true(secs >= 3)
            toned, first = audio.tone_seconds(samples, rate, 1000)
            assert.is_true(toned >= 1.3 and toned <= 1.6, "heard 1 kHz for " .. toned .. " s")
            assert.near(1000, audio.frequency(samples, rate, first, first + 8000), 15)
        end, 40)
    end)

    for _, mode in ipairs { "info", "inband" } do
        it("takes its menu choice and the # ending a message as " .. mode .. " DTMF", function()
            run(function()
                local from = #logtext()
                local ep = h.endpoint()
                local call = dial(ep, mode)
                local path = leave_message(call, mode, from, 500, 0.8)
                local samples, rate = audio.read_wav(path)
                local toned = audio.tone_seconds(samples, rate, 500)
                assert.is_true(toned >= 0.6 and toned <= 0.9, "500 Hz for " .. toned .. " s")
                -- back in the menu: the next choice is taken too
                from = #logtext()
                press(call, "9", mode)
                assert.equal("9", wait_log("ivr: caller chose (%S+)", from, 10))
                call:hangup()
            end, 40)
        end)
    end

    it("transfers the caller on 0: REFER accepted, caller reaches carol, IVR hangs up", function()
        run(function()
            local carol = assert(sip.endpoint { listen = "udp:127.0.0.1:" .. carol_port, user = "carol" })
            local got
            carol:on("INVITE", function(c)
                got = c.from
                assert(c:answer())
                c:wait_hangup(5)
            end)
            local from = #logtext()
            local ep = h.endpoint { user = "alice" }
            local refer_target
            local call = dial(ep)
            call:on("refer", function(_, refer)
                refer_target = refer.target
                assert(refer:accept())
                local c2, err, code = ep:call(refer.target, { timeout = 5 })
                assert(refer:notify(c2 and 200 or code, c2 and "OK" or err))
                if c2 then sip.sleep(0.3); c2:hangup() end
            end)
            sip.sleep(0.3)
            press(call, "0")
            assert.equal("hangup", call:wait_hangup(15))        -- the IVR's BYE
            assert.equal("sip:carol@127.0.0.1:" .. carol_port, refer_target)
            assert.truthy(got, "carol got no call")
            assert.equal("done", wait_log("ivr: transfer to %S+: (%a+)", from))
            sip.sleep(0.5)
            carol:close()
        end, 30)
    end)

    it("stays in the menu when the caller declines the REFER (603)", function()
        run(function()
            local from = #logtext()
            local call = dial(h.endpoint())
            sip.sleep(0.3)
            press(call, "0")
            assert.equal("603 Decline 603", wait_log("ivr: transfer to %S+: ([^\n]+)", from, 15))
            assert.equal("established", call.state)
            call:hangup()
        end, 30)
    end)
end)
