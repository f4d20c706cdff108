-- demo.lua: two endpoints in one process place and answer a call.
-- Shows the whole API surface of the foundation: an endpoint that
-- answers (ring, answer, wait for BYE), an OPTIONS ping, a MESSAGE, a
-- rejected call, and a call the caller gives up on (CANCEL).
--
--   lua5.4 examples/demo.lua
--
-- Every line printed is one step; the script exits on its own.
local sip = require "luasip"

sip.run(function()
    local alice = assert(sip.endpoint { listen = "udp:127.0.0.1:0", user = "alice" })
    local bob = assert(sip.endpoint { listen = "udp:127.0.0.1:0", user = "bob" })

    bob:on("INVITE", function(call)
        local who = call.uri.user
        print(("bob: INVITE from %s to %s"):format(call.from.uri, who))
        if who == "busy" then return call:reject(486) end
        call:ring()
        if who == "slow" then
            print("bob: slow call ended:", call:wait_hangup(5))
            return
        end
        sip.sleep(0.2)
        assert(call:answer())
        print("bob: answered, waiting for BYE")
        print("bob: call ended by", call:wait_hangup(10), "after", call.duration, "s")
    end)

    bob:on("MESSAGE", function(req)
        print(("bob: MESSAGE %q"):format(req.body))
        req:reply(200)
    end)

    local res = assert(alice:request { method = "OPTIONS", uri = bob:uri() })
    print("alice: OPTIONS ->", res.status, res:header("Allow"))

    res = assert(alice:request { method = "MESSAGE", uri = bob:uri(), body = "hello bob" })
    print("alice: MESSAGE ->", res.status, res.reason)

    local call, err, code = alice:call(bob:uri(), {
        timeout = 5,
        on_progress = function(c) print("alice: progress", c.status) end,
    })
    print("alice: call ->", call and call.state or err)
    sip.sleep(0.5)
    call:hangup()

    local busy = bob:uri():gsub("bob@", "busy@")
    print("alice: call busy ->", select(2, alice:call(busy, { timeout = 5 })))

    local slow = bob:uri():gsub("bob@", "slow@")
    print("alice: call slow, give up after 0.3 s ->", select(2, alice:call(slow, { timeout = 0.3 })))

    sip.sleep(0.2)
    alice:close()
    bob:close()
end)
print("demo done")
