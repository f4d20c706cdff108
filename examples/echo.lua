-- echo.lua: an echo service with RTP audio (G.711, RFC 4733 digits).
-- Answers every INVITE with SDP, plays a short beep, then sends back
-- what the caller sends until the caller hangs up or presses #.
--
--   lua5.4 examples/echo.lua [port] [seconds]
--
-- Prints "echo listening on sip:echo@127.0.0.1:PORT", serves until Ctrl-C
-- (or for `seconds` when given; with seconds it also calls itself once
-- as a self test), then prints the number of calls.
local sip = require "luasip"

local port = tonumber(arg[1]) or 5060
local seconds = tonumber(arg[2])
local calls = 0

sip.run(function()
    local ep = assert(sip.endpoint {
        listen = { "udp:127.0.0.1:" .. port },
        user = "echo",
    })

    ep:on("INVITE", function(call)               -- one task per call
        if not call:answer { media = true, codecs = { "PCMU", "PCMA" } } then return end
        calls = calls + 1
        call:play { tone = 880, duration = 0.2 }
        local res, digit = call:play({ echo = 3600 }, { interrupt = "#" })
        print("echo call ended:", res or digit, digit or "")
        call:hangup()
    end)

    print("echo listening on " .. ep:uri())
    io.stdout:flush()

    if seconds then
        -- self test: call ourselves, say something, hear it back
        local me = assert(sip.endpoint { listen = { "udp:127.0.0.1:0" } })
        local call = assert(me:call(ep:uri(), { media = true, timeout = 5 }))
        call:play { tone = 500, duration = seconds }
        local st = call.media_stats
        print(("self test: sent %d packets, received %d"):format(st.tx_packets, st.rx_packets))
        call:send_dtmf("#")
        sip.sleep(0.3)
        call:hangup()
        me:close()
        sip.stop()
    end
end)

print(("echoed %d calls"):format(calls))
