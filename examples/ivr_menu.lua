-- ivr_menu.lua: a small IVR with RTP audio and DTMF (RFC 4733).
-- Answers, plays a prompt (a WAV file if given, else a beep) that a digit
-- interrupts, collects one digit: 1 plays a tone back, 2 records a
-- message ended by # (to a new temporary .wav file), anything else
-- says goodbye (three short beeps). Then it hangs up.
--
--   lua5.4 examples/ivr_menu.lua [port] [seconds] [prompt.wav]
--
-- Prints "ivr listening on sip:ivr@127.0.0.1:PORT". With `seconds` it
-- also calls itself once, presses 2, speaks (a tone), presses #, and
-- prints what the IVR recorded; then it exits.
local sip = require "luasip"

local port = tonumber(arg[1]) or 5060
local seconds = tonumber(arg[2])
local prompt = arg[3] or { tone = 440, duration = 1 }
local messages = 0

sip.run(function()
    local ep = assert(sip.endpoint { listen = { "udp:127.0.0.1:" .. port }, user = "ivr" })

    ep:on("INVITE", function(call)
        if not call:answer { media = true } then return end
        local digit, err = call:play_and_collect { prompt = prompt, max = 1, timeout = 5 }
        print("ivr: caller chose", digit or err)
        if digit == "1" then
            call:play { tone = 660, duration = 0.5 }
        elseif digit == "2" then
            call:play { tone = 1000, duration = 0.2 }          -- "speak after the beep"
            messages = messages + 1
            local path = os.tmpname() .. ".wav"
            local secs, why = call:record(path, { max = 30, stop_on = "#" })
            print(("ivr: recorded %s: %.1f s (%s)"):format(path, secs or 0, why or "?"))
        else
            call:play { { tone = 400, duration = 0.1 }, { silence = 0.1 },
                        { tone = 400, duration = 0.1 }, { silence = 0.1 },
                        { tone = 400, duration = 0.1 } }
        end
        call:hangup()
    end)

    print("ivr listening on " .. ep:uri())
    io.stdout:flush()

    if seconds then                             -- self test: leave a message
        local me = assert(sip.endpoint { listen = { "udp:127.0.0.1:0" } })
        local call = assert(me:call(ep:uri(), { media = true, timeout = 5 }))
        sip.sleep(0.2)
        call:send_dtmf("2")
        sip.sleep(0.5)                          -- the beep
        call:play { tone = 500, duration = seconds }
        call:send_dtmf("#")
        print("caller: IVR ended the call:", call:wait_hangup(5))
        me:close()
        sip.stop()
    end
end)
