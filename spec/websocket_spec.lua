-- SIP over WebSocket (RFC 7118) through libre's ws transport.
-- Tagged #noasan: libre 1.1.0's WebSocket transport leaves a few of its
-- own allocations (768 bytes to ~1 MB per stack) when the stack is freed,
-- which LeakSanitizer reports at exit; the rest of the suite is leak-free.
local h = require "spec.helper"

describe("luasip.endpoint over WebSocket #noasan", function()
    it("answers OPTIONS and carries a call over ws", function()
        h.run(function()
            local a = h.endpoint { user = "a", transports = { "udp", "ws" } }
            local b = h.endpoint { user = "b", transports = { "udp", "ws" } }
            local uri = b:uri("ws")
            assert.matches(";transport=ws$", uri)
            local seen
            b:on("INVITE", function(call)
                seen = call.transport
                assert(call:answer())
                call:wait_hangup(2)
            end)
            local res = assert(a:request { method = "OPTIONS", uri = uri, timeout = 2 })
            assert.equal(200, res.status)
            assert.equal("ws", res.transport)
            local call, err = a:call(uri, { timeout = 2 })
            assert.is_not_nil(call, err)
            assert.equal("established", call.state)
            assert.equal("ws", seen)
            call:hangup()
        end, 6)
    end)
end)
