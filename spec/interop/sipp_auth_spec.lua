-- Interop with sipp (Debian's sip-tester) for INVITE digest authentication:
-- sipp's uac answers luasip's challenges ([authentication], MD5), and
-- luasip's client answers sipp's challenge, checked by sipp's <verifyauth>
-- (spec/fixtures/sipp_uac_auth.xml, spec/fixtures/sipp_uas_auth.xml).
local h = require "spec.helper"
local sip = h.sip

local SIPP = "sipp"
local have_sipp = os.execute("command -v sipp >/dev/null 2>&1")


local function tmp()
    local p = os.tmpname()
    os.remove(p)
    return p
end


-- start sipp in the background; returns a function that waits (yielding)
-- for it to exit and returns its statistics and log
local function sipp(args, seconds)
    local log, stat = tmp(), tmp()
    local pid = h.spawn_process(("%s -i 127.0.0.1 -nostdin -trace_stat -stf %s -timeout %d %s")
        :format(SIPP, stat, seconds, args), log)
    return function()
        local done = h.wait_process(pid, seconds + 5)
        h.kill(pid)
        local st, out = h.sipp_stats(stat), h.readfile(log) or ""
        os.remove(log)
        os.remove(stat)
        assert(done, "sipp did not finish:\n" .. out)
        assert(st, "no sipp statistics:\n" .. out)
        return st, out
    end
end


describe("sipp and luasip digest authentication of INVITE", function()
    if not have_sipp then
        pending("sipp is not installed (apt-get install sip-tester)")
        return
    end

    after_each(function()
        local s = h.stats()
        assert.equal(0, s.tasks)
        assert.equal(0, s.endpoints)
    end)

    it("sipp's uac answers luasip's MD5 challenges: 10 calls, 0 failed", function()
        h.run(function()
            local ep = h.endpoint { user = "service" }
            local results = {}
            ep:on("INVITE", function(call)
                local user, why = call:require_auth({ sipp = "secret" }, {
                    realm = "luasip.test", algorithms = { "MD5" },   -- sipp 3.6: MD5
                })
                results[#results + 1] = user or why
                if user then
                    assert(call:answer())
                    call:wait_hangup(5)
                end
            end)
            local a = ep:addresses()[1]
            local wait = sipp(("%s:%d -sf spec/fixtures/sipp_uac_auth.xml -s service -au sipp -ap secret "
                .. "-p 0 -m 10 -r 20 -recv_timeout 5000"):format(a.host, a.port), 20)
            local st, out = wait()
            assert.equal(10, st["SuccessfulCall(C)"], out)
            assert.equal(0, st["FailedCall(C)"], out)
            local n = { missing = 0, sipp = 0 }
            for _, r in ipairs(results) do n[r] = (n[r] or 0) + 1 end
            assert.same({ missing = 10, sipp = 10 }, n)
        end, 30)
    end)

    it("sipp's uac fails with a wrong password: every second INVITE is challenged again", function()
        h.run(function()
            local ep = h.endpoint { user = "service" }
            local results = {}
            ep:on("INVITE", function(call)
                local user, why = call:require_auth({ sipp = "secret" }, {
                    realm = "luasip.test", algorithms = { "MD5" },
                })
                results[#results + 1] = user or why
                if user then assert(call:answer()); call:wait_hangup(5) end
            end)
            local a = ep:addresses()[1]
            local wait = sipp(("%s:%d -sf spec/fixtures/sipp_uac_auth.xml -s service -au sipp -ap wrong "
                .. "-p 0 -m 3 -r 20 -recv_timeout 2000"):format(a.host, a.port), 15)
            local st, out = wait()
            assert.equal(0, st["SuccessfulCall(C)"], out)
            assert.equal(3, st["FailedCall(C)"], out)
            local n = {}
            for _, r in ipairs(results) do n[r] = (n[r] or 0) + 1 end
            assert.same({ missing = 3, ["wrong password"] = 3 }, n)
        end, 30)
    end)

    it("luasip's client answers sipp's challenge and sipp's verifyauth accepts it", function()
        local port = h.free_port()
        h.run(function()
            local wait = sipp(("-sf spec/fixtures/sipp_uas_auth.xml -p %d -m 4"):format(port), 20)
            local ep = h.endpoint { user = "alice" }
            sip.sleep(0.3)                         -- let sipp bind
            local uri = ("sip:service@127.0.0.1:%d"):format(port)
            for _ = 1, 3 do
                local call, err, code = ep:call(uri, { timeout = 5, auth = { user = "alice", password = "secret" } })
                assert.is_truthy(call, tostring(err) .. " " .. tostring(code))
                assert.equal("established", call.state)
                sip.sleep(0.05)
                call:hangup()
            end
            -- the 4th call: sipp's verifyauth refuses a wrong password
            local call, err, code = ep:call(uri, { timeout = 5, auth = { user = "alice", password = "nope" } })
            assert.is_nil(call)
            assert.equal("403 Forbidden", err)
            assert.equal(403, code)
            local st, out = wait()
            assert.equal(4, st["SuccessfulCall(C)"], out)
            assert.equal(0, st["FailedCall(C)"], out)
        end, 30)
    end)
end)
