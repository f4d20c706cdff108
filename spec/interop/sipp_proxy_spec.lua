-- Interop with sipp through the proxy: sipp uac -> examples/proxy.lua ->
-- sipp uas. The scenarios in spec/interop/sipp/ are sipp's built-in uac
-- and uas with route sets: the uas copies Record-Route into its 180/200,
-- the uac sends ACK and BYE with [routes] to the callee's Contact, so the
-- proxy must route them by their Route header (and relay the answers).
local h = require "spec.helper"

local SIPP = "sipp"
local have_sipp = os.execute("command -v sipp >/dev/null 2>&1")
local ENV = h.ENV
local CALLS = 200

local function tmp()
    local p = os.tmpname()
    os.remove(p)
    return p
end


-- wait (outside the loop) until file f contains pattern, or seconds pass
local function wait_for(f, pattern, seconds)
    local t0 = os.time()
    repeat
        os.execute("sleep 0.05")
    until (h.readfile(f) or ""):match(pattern) or os.time() - t0 > seconds
    return (h.readfile(f) or ""):match(pattern)
end


describe("interop with sipp through the proxy", function()
    if not have_sipp then
        pending("sipp is not installed (apt-get install sip-tester)")
        return
    end

    it("sipp uac -> examples/proxy.lua -> sipp uas: " .. CALLS .. " calls, 0 failed", function()
        local uport, pport = h.free_port(), h.free_port()
        while pport == uport do pport = h.free_port() end
        local plog, ulog, clog, ustat, cstat = tmp(), tmp(), tmp(), tmp(), tmp()
        local uas = h.spawn_process(("%s -sf spec/interop/sipp/uas_rr.xml -i 127.0.0.1 -p %d -m %d "
            .. "-nostdin -trace_stat -stf %s -timeout 60"):format(SIPP, uport, CALLS, ustat), ulog)
        local px = h.spawn_process(("%slua5.4 examples/proxy.lua %d sip:service@127.0.0.1:%d 12")
            :format(ENV, pport, uport), plog)
        local ok, err = pcall(function()
            assert.truthy(wait_for(plog, "listening", 5), "proxy did not start: " .. (h.readfile(plog) or ""))
            local rc = os.execute(("timeout 60 %s -sf spec/interop/sipp/uac_rr.xml 127.0.0.1:%d "
                .. "-i 127.0.0.1 -p 0 -r 100 -m %d -nostdin -trace_stat -stf %s -timeout 50 "
                .. "-recv_timeout 5000 > %s 2>&1"):format(SIPP, pport, CALLS, cstat, clog))
            local st = assert(h.sipp_stats(cstat), "no sipp uac statistics")
            assert.equal(CALLS, st["SuccessfulCall(C)"])
            assert.equal(0, st["FailedCall(C)"])
            assert.is_true(rc == true or rc == 0, "sipp uac exited with failure")
            -- the uas saw every ACK and BYE (they are not optional there)
            assert.truthy(wait_for(plog, "forwarded %d+ calls", 15), "proxy did not finish")
            assert.matches(("forwarded %d calls, 0 failed"):format(CALLS), h.readfile(plog))
            local deadline = os.time() + 10
            while h.alive(uas) and os.time() < deadline do os.execute("sleep 0.1") end
            local us = assert(h.sipp_stats(ustat), "no sipp uas statistics")
            assert.equal(CALLS, us["SuccessfulCall(C)"])
            assert.equal(0, us["FailedCall(C)"])
            assert.not_matches("task error", h.readfile(plog))
        end)
        h.kill(px)
        h.kill(uas)
        os.execute("sleep 0.1")
        for _, f in ipairs { plog, ulog, clog, ustat, cstat } do os.remove(f) end
        if not ok then error(err, 0) end
    end)
end)
