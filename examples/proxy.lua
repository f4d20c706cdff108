-- proxy.lua: a stateful proxy in a few lines. Every INVITE is forwarded to
-- one target and record-routed, so the ACK and BYE of the call pass
-- through the proxy as well (luasip routes those by their Route header,
-- without the script). A failure of the target goes back to the caller
-- when the handler returns.
--
--   lua5.4 examples/proxy.lua [port] [target] [seconds]
--
-- Listens on udp:127.0.0.1:port (default 5060), forwards to target
-- (default sip:service@127.0.0.1:5070), stops after `seconds` (default 10)
-- and prints "forwarded N calls, M failed". Try it with sipp:
--   sipp -sf spec/interop/sipp/uas_rr.xml -i 127.0.0.1 -p 5070
--   sipp -sf spec/interop/sipp/uac_rr.xml -i 127.0.0.1 127.0.0.1:5060 -m 10
local sip = require "luasip"

local port = tonumber(arg[1]) or 5060
local target = arg[2] or "sip:service@127.0.0.1:5070"
local seconds = tonumber(arg[3]) or 10

sip.run(function()
    local ep = assert(sip.endpoint { listen = "udp:127.0.0.1:" .. port, proxy = true })
    local forwarded, failed = 0, 0

    ep:on("INVITE", function(req)          -- each INVITE in its own task
        local resp, err = req:forward(target, { record_route = true, timeout = 30 })
        if resp and resp.status < 300 then
            forwarded = forwarded + 1
        else
            failed = failed + 1
            print("failed:", resp and resp.status or err)
        end
    end)

    print("proxy listening on " .. ep:uri() .. ", forwarding to " .. target)
    io.stdout:flush()
    sip.sleep(seconds)
    print(("forwarded %d calls, %d failed"):format(forwarded, failed))
    ep:close()
end)
