-- Every example runs to completion with the public API and says what
-- its header promises.
local h = require "spec.helper"

local ENV = h.ENV

local function run(cmd)
    local f = assert(io.popen("timeout 20 " .. cmd .. " 2>&1; echo \"rc=$?\""))
    local out = f:read("a")
    f:close()
    return out
end

describe("examples", function()
    it("demo.lua places, rejects and cancels calls and exits", function()
        local out = run(ENV .. "lua5.4 examples/demo.lua")
        assert.matches("alice: OPTIONS %->%s+200", out)
        assert.matches("alice: MESSAGE %->%s+200", out)
        assert.matches("alice: call %->%s+established", out)
        assert.matches("bob: call ended by%s+hangup", out)
        assert.matches("alice: call busy %->%s+486 Busy Here%s+486", out)
        assert.matches("give up after 0.3 s %->%s+timeout", out)
        assert.matches("bob: slow call ended:%s+cancelled", out)
        assert.matches("demo done", out)
        assert.matches("rc=0", out)
        assert.not_matches("task error", out)
    end)

    it("answer.lua listens on the port it is given and stops after its time", function()
        local port = h.free_port()
        local out = run(ENV .. "lua5.4 examples/answer.lua " .. port .. " 0.5")
        assert.matches("listening on sip:answer@127.0.0.1:" .. port, out)
        assert.matches("answered 0 calls, 0 failed", out)
        assert.matches("rc=0", out)
    end)

    it("echo.lua answers with media and echoes the caller's audio back", function()
        local port = h.free_port()
        local out = run(ENV .. "lua5.4 examples/echo.lua " .. port .. " 1")
        assert.matches("echo listening on sip:echo@127.0.0.1:" .. port, out, 1, true)
        local sent, got = out:match("self test: sent (%d+) packets, received (%d+)")
        assert.truthy(sent, out)
        assert.is_true(tonumber(sent) >= 40 and tonumber(got) >= 40, out)
        assert.matches("echo call ended:%s+interrupted%s+#", out)
        assert.matches("echoed 1 calls", out, 1, true)
        assert.matches("rc=0", out)
        assert.not_matches("task error", out)
    end)

    it("ivr.lua listens on the port it is given and stops after its time", function()
        -- what it does with calls: spec/ivr_spec.lua
        local port, spool = h.free_port(), os.tmpname()
        os.remove(spool)                        -- ivr.lua makes the directory
        local out = run(ENV .. "IVR_SPOOL=" .. spool .. " lua5.4 examples/ivr.lua " .. port .. " 0.5")
        os.remove(spool)
        assert.matches("ivr: listening on sip:ivr@127.0.0.1:" .. port, out, 1, true)
        assert.matches("rc=0", out)
        assert.not_matches("task error", out)
    end)

    it("register.lua registers alice with digest auth, finds and removes her", function()
        local port = h.free_port()
        local out = run(ENV .. "lua5.4 examples/register.lua " .. port)
        assert.matches("registered sip:alice@example.com for 3600 s", out, 1, true)
        assert.matches("alice is at sip:phone@127%.0%.0%.1:%d+ %(from udp 127%.0%.0%.1:%d+%)", out)
        assert.matches("unregistered: 0 contacts left", out, 1, true)
        assert.matches("rc=0", out)
        assert.not_matches("task error", out)
    end)

    it("proxy.lua listens on the port it is given and stops after its time", function()
        local port = h.free_port()
        local out = run(ENV .. "lua5.4 examples/proxy.lua " .. port .. " sip:x@127.0.0.1:9 0.5")
        assert.matches("proxy listening on sip:luasip@127.0.0.1:" .. port
            .. ", forwarding to sip:x@127.0.0.1:9", out, 1, true)
        assert.matches("forwarded 0 calls, 0 failed", out)
        assert.matches("rc=0", out)
    end)

    it("router.lua registers with digest auth, routes to bindings and the gateway, 404s the rest", function()
        local port, log, pid = h.free_port(), os.tmpname(), nil
        local ok, err = pcall(h.run, function()
            local phone, caller, gw = h.endpoint { user = "phone" }, h.endpoint(), h.endpoint { user = "gw" }
            for _, ep in ipairs { phone, gw } do
                ep:on("INVITE", function(call) assert(call:answer()); call:wait_hangup(5) end)
            end
            pid = h.spawn_process(ENV .. ("lua5.4 examples/router.lua %d %s 15"):format(
                port, gw:uri():match("@(.*)$")), log)
            local dl = h.sip.now() + 5
            while not (h.readfile(log) or ""):match("listening") and h.sip.now() < dl do h.sip.sleep(0.05) end
            local router, alice = "sip:127.0.0.1:" .. port, "sip:alice@127.0.0.1:" .. port
            local reg = assert(phone:register { registrar = router, aor = "sip:alice@127.0.0.1",
                                                user = "alice", password = "wonderland" })
            assert.is_true(reg:wait(3))
            local bad = assert(caller:register { registrar = router, aor = "sip:bob@127.0.0.1",
                                                 user = "bob", password = "wrong" })
            local code = select(3, bad:wait(3))
            assert.truthy(code == 401 or code == 403, tostring(code))
            assert(caller:call(alice, { timeout = 5 })):hangup()
            assert.same({ nil, "404 Not Found", 404 }, { caller:call(router:gsub(":", ":nobody@", 1), { timeout = 5 }) })
            local number = router:gsub(":", ":0123@", 1)
            assert.equal(407, select(3, caller:call(number, { timeout = 5 })))
            assert(caller:call(number, { timeout = 5, auth = { user = "bob", password = "builder" } })):hangup()
            bad:close()
            reg:close()
            h.sip.sleep(0.2)
        end, 15)
        h.kill(pid)
        local out = h.readfile(log) or ""
        os.remove(log)
        assert(ok, tostring(err) .. "\n" .. out)
        assert.matches("sip:alice@127.0.0.1: 1 contact(s) sip:phone@", out, 1, true)
        assert.matches("call alice -> 1 contact(s): 200 OK", out, 1, true)
        assert.matches("call bob -> gateway 0123: 200 OK", out, 1, true)
        assert.not_matches("task error", out)
    end)
end)
