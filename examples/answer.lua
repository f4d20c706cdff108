-- answer.lua: a SIP answering service (signalling only).
-- Answers every INVITE with 200 OK, waits for the caller's BYE, and
-- answers OPTIONS by default. It is the server sipp and bench/ drive.
--
--   lua5.4 examples/answer.lua [port] [seconds]
--
-- Prints "listening on sip:answer@127.0.0.1:PORT" and serves until
-- Ctrl-C, or for `seconds` when given; then prints the number of calls.
local sip = require "luasip"

local port = tonumber(arg[1]) or 5060
local seconds = tonumber(arg[2])
local calls, failed = 0, 0

sip.run(function()
    local ep = assert(sip.endpoint {
        listen = { "udp:127.0.0.1:" .. port, "tcp:127.0.0.1:" .. port },
        user = "answer",
    })

    ep:on("INVITE", function(call)           -- one task per call
        local ok = call:answer { timeout = 10 }
        if not ok then failed = failed + 1; return end
        calls = calls + 1
        call:wait_hangup(3600)                -- BYE from the caller
    end)

    io.stdout:write("listening on ", ep:uri(), "\n")
    io.stdout:flush()

    if seconds then
        sip.sleep(seconds)
        sip.stop()
    end
end)

print(("answered %d calls, %d failed"):format(calls, failed))
