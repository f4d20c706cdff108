-- Interop with sipp (Debian's sip-tester): its built-in uac scenario
-- against examples/answer.lua, and luasip calling sipp's built-in uas.
local h = require "spec.helper"
local sip = h.sip

local SIPP = "sipp"
local have_sipp = os.execute("command -v sipp >/dev/null 2>&1")

local function tmp()
    local p = os.tmpname()
    os.remove(p)
    return p
end

describe("interop with sipp", function()
    if not have_sipp then
        pending("sipp is not installed (apt-get install sip-tester)")
        return
    end

    it("sipp's uac completes 200 calls against examples/answer.lua with 0 failed", function()
        local port = h.free_port()
        local alog, slog, stat = tmp(), tmp(), tmp()
        local env = h.ENV
        local server = h.spawn_process(env .. "lua5.4 examples/answer.lua " .. port .. " 30", alog)
        local ok, err = pcall(function()
            -- wait until the server says it listens
            local t0 = os.time()
            repeat
                os.execute("sleep 0.05")
            until (h.readfile(alog) or ""):match("listening") or os.time() - t0 > 5
            assert.matches("listening on sip:answer@127.0.0.1:" .. port, h.readfile(alog))
            local rc = os.execute(("timeout 60 %s -sn uac 127.0.0.1:%d -i 127.0.0.1 -p 0 -r 100 -m 200 "
                .. "-nostdin -trace_stat -stf %s -timeout 50 -recv_timeout 5000 > %s 2>&1")
                :format(SIPP, port, stat, slog))
            local st = assert(h.sipp_stats(stat), "no sipp statistics")
            assert.equal(200, st["SuccessfulCall(C)"])
            assert.equal(0, st["FailedCall(C)"])
            assert.is_true(rc == true or rc == 0, "sipp exited with failure")
        end)
        h.kill(server)
        os.execute("sleep 0.1")
        for _, f in ipairs { alog, slog, stat } do os.remove(f) end
        if not ok then error(err, 0) end
    end)

    it("luasip completes 200 calls to sipp's uas", function()
        local port = h.free_port()
        local slog, stat = tmp(), tmp()
        local uas = h.spawn_process(("%s -sn uas -i 127.0.0.1 -p %d -m 200 -nostdin -trace_stat -stf %s"
            .. " -timeout 60"):format(SIPP, port, stat), slog)
        local ok, err = pcall(h.run, function()
            local ep = h.endpoint { user = "luasip" }
            sip.sleep(0.3)                         -- let sipp bind
            local uri = ("sip:service@127.0.0.1:%d"):format(port)
            local done, failed = 0, 0
            local function caller(n)
                for _ = 1, n do
                    local call, e, code = ep:call(uri, { timeout = 5 })
                    if call then
                        assert.equal("established", call.state)
                        call:hangup()
                        done = done + 1
                    else
                        failed = failed + 1
                        print("call failed:", e, code)
                    end
                end
            end
            -- 10 concurrent callers x 20 calls
            local left = 10
            for _ = 1, 10 do
                sip.spawn(function() caller(20); left = left - 1 end)
            end
            while left > 0 do sip.sleep(0.05) end
            assert.equal(200, done)
            assert.equal(0, failed)
            -- sipp exits by itself after 200 calls (-m 200)
            assert.is_true(h.wait_process(uas, 10), "sipp uas did not finish")
        end, 60)
        h.kill(uas)
        local st = h.sipp_stats(stat)
        for _, f in ipairs { slog, stat } do os.remove(f) end
        if not ok then error(err, 0) end
        assert.is_not_nil(st, "no sipp statistics")
        assert.equal(200, st["SuccessfulCall(C)"])
        assert.equal(0, st["FailedCall(C)"])
    end)
end)
