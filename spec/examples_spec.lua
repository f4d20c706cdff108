-- Every example runs to completion with the public API and says what
-- its header promises.
local h = require "spec.helper"

local ENV = "env LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='build/?.so;;' "

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
end)
