-- spec/transfer_spec.lua: blind transfer with REFER (csrc/refer.c,
-- lua/luasip/transfer.lua) between luasip endpoints on loopback: the
-- transferor's call:transfer, the transferee's call:on("refer") and its
-- secure default (603), the sipfrag NOTIFYs in between.
local h = require "spec.helper"
local sip = h.sip


local run = h.run_settled


local cseq = 4000000000

-- send a request in an outgoing call's dialog to its endpoint ep from a
-- raw UDP socket, as the far end would; returns the response status
local function raw_request(ep, call, method, headers, body)
    local socket = require "socket"
    local ltag, rtag = call.from.tag, call.to.tag       -- of the 200 OK
    cseq = cseq + 1
    local lines = {
        ("%s %s SIP/2.0"):format(method, ep:uri()),
        ("Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKraw%d;rport"):format(cseq),
        ("From: <sip:peer@127.0.0.1>;tag=%s"):format(rtag),
        ("To: <%s>;tag=%s"):format(ep:uri(), ltag),
        "Call-ID: " .. call.call_id,
        ("CSeq: %d %s"):format(cseq, method),
        "Contact: <sip:peer@127.0.0.1:9>",
        "Max-Forwards: 70",
    }
    for _, hd in ipairs(headers) do lines[#lines + 1] = hd end
    lines[#lines + 1] = "Content-Length: " .. #body
    local u = assert(socket.udp())
    assert(u:setpeername("127.0.0.1", tonumber(ep:uri():match(":(%d+)$"))))
    u:settimeout(0)
    assert(u:send(table.concat(lines, "\r\n") .. "\r\n\r\n" .. body))
    local dl = sip.now() + 2
    repeat
        local d = u:receive()
        if d then u:close(); return d:match("^SIP/2.0 (%d+)") end
        sip.sleep(0.01)
    until sip.now() > dl
    u:close()
end


-- a (transferor) calls b (transferee); returns a's call, b's call
local function connect(a, b, on_refer)
    local bcall
    b:on("INVITE", function(call)
        bcall = call
        if on_refer then call:on("refer", on_refer) end
        assert(call:answer())
        call:wait_hangup(10)
    end)
    local acall = assert(a:call(h.uri(b, "bob"), { timeout = 5 }))
    return acall, bcall
end


describe("luasip.transfer", function()
    it("transfers a call: REFER, 202, NOTIFY 100 then 200, hangs up", function()
        run(function()
            local a, b, c = h.endpoint { user = "alice" }, h.endpoint { user = "bob" }, h.endpoint { user = "carol" }
            local target, seen = h.uri(c, "carol"), {}
            c:on("INVITE", function(call)
                seen.carol = call.from
                assert(call:answer())
                call:wait_hangup(5)
            end)
            local acall = connect(a, b, function(call, refer)
                seen.target, seen.referred_by, seen.state0 = refer.target, refer.referred_by, refer.state
                seen.refer_method = refer.method
                assert(refer:accept())
                local c2, err, code = b:call(refer.target, { timeout = 5 })
                assert(refer:notify(c2 and 200 or code, c2 and "OK" or err))
                seen.state1 = refer.state
                if c2 then call:hangup(); sip.sleep(0.1); c2:hangup() end
            end)
            local ok, status, reason = acall:transfer(target, {
                timeout = 5, headers = { ["Referred-By"] = "<" .. h.uri(a, "alice") .. ">" } })
            assert.same({ true, 200, "OK" }, { ok, status, reason })
            assert.equal("closed", acall.state)          -- hung up after success
            assert.equal(target, seen.target)
            assert.equal(h.uri(a, "alice"), seen.referred_by)
            assert.equal("REFER", seen.refer_method)
            assert.equal("pending", seen.state0)
            sip.sleep(0.2)
            assert.equal("done", seen.state1)
            assert.truthy(seen.carol, "carol was not called")
        end, 10)
    end)

    it("keeps the call with hangup = false", function()
        run(function()
            local a, b, c = h.endpoint(), h.endpoint(), h.endpoint()
            c:on("INVITE", function(call) assert(call:answer()); call:wait_hangup(5) end)
            local acall = connect(a, b, function(_, refer)
                assert(refer:accept())
                local c2 = assert(b:call(refer.target, { timeout = 5 }))
                assert(refer:notify(200, "OK"))
                sip.sleep(0.2)
                c2:hangup()
            end)
            assert.is_true((acall:transfer(h.uri(c, "carol"), { timeout = 5, hangup = false })))
            assert.equal("established", acall.state)
            acall:hangup()
        end, 10)
    end)

    it("returns nil, '603 Decline', 603 when the far end has no refer listener", function()
        run(function()
            local a, b = h.endpoint(), h.endpoint()
            local acall, bcall = connect(a, b)
            assert.same({ nil, "603 Decline", 603 }, { acall:transfer("sip:carol@127.0.0.1:9", { timeout = 5 }) })
            assert.equal("established", acall.state)
            assert.equal("established", bcall.state)
            acall:hangup()
        end)
    end)

    it("declines a REFER the listener leaves undecided, and takes a reject code", function()
        run(function()
            local a, b = h.endpoint(), h.endpoint()
            local n = 0
            local acall = connect(a, b, function(_, refer)
                n = n + 1
                if n == 2 then assert(refer:reject(403, "Forbidden")) end
            end)
            assert.same({ nil, "603 Decline", 603 }, { acall:transfer("sip:x@127.0.0.1:9", { timeout = 5 }) })
            assert.same({ nil, "403 Forbidden", 403 }, { acall:transfer("sip:x@127.0.0.1:9", { timeout = 5 }) })
            acall:hangup()
        end)
    end)

    it("returns the target's failure from the final NOTIFY: nil, '486 Busy Here', 486", function()
        run(function()
            local a, b, c = h.endpoint(), h.endpoint(), h.endpoint()
            c:on("INVITE", function(call) call:reject(486) end)
            local acall = connect(a, b, function(_, refer)
                assert(refer:accept())
                local c2, err, code = b:call(refer.target, { timeout = 5 })
                assert.is_nil(c2)
                assert(refer:notify(code, (err:gsub("^%d+ ", ""))))
            end)
            assert.same({ nil, "486 Busy Here", 486 }, { acall:transfer(h.uri(c, "carol"), { timeout = 5 }) })
            assert.equal("established", acall.state)
            acall:hangup()
        end)
    end)

    it("ends an accepted REFER whose task ends without a final NOTIFY with 503", function()
        run(function()
            local a, b = h.endpoint(), h.endpoint()
            local acall = connect(a, b, function(_, refer) assert(refer:accept()) end)
            assert.same({ nil, "503 Service Unavailable", 503 },
                        { acall:transfer("sip:x@127.0.0.1:9", { timeout = 5 }) })
            acall:hangup()
        end)
    end)

    it("times out when no final NOTIFY comes: nil, 'timeout', ETIMEDOUT", function()
        run(function()
            local a, b = h.endpoint(), h.endpoint()
            local acall = connect(a, b, function(_, refer)
                assert(refer:accept())
                sip.sleep(1)
                assert.same({ true }, { refer:notify(180, "Ringing") })
            end)
            local t0 = sip.now()
            assert.same({ nil, "timeout", sip.ETIMEDOUT }, { acall:transfer("sip:x@127.0.0.1:9", { timeout = 0.4 }) })
            assert.is_true(sip.now() - t0 < 0.8)
            sip.sleep(0.8)
            acall:hangup()
        end)
    end)

    it("answers bad NOTIFYs of a pending transfer with 400 and takes a good final one", function()
        run(function()
            local a, b = h.endpoint { user = "alice" }, h.endpoint()
            local acall = connect(a, b, function(_, refer)
                assert(refer:accept())
                sip.sleep(3)
            end)
            local result
            sip.spawn(function() result = { acall:transfer("sip:x@127.0.0.1:9", { timeout = 5 }) } end)
            sip.sleep(0.3)
            local function notify(state, body)
                local hs = { "Event: refer", "Content-Type: message/sipfrag;version=2.0" }
                if state then hs[#hs + 1] = "Subscription-State: " .. state end
                return raw_request(a, acall, "NOTIFY", hs, body)
            end
            assert.equal("400", notify("active", "not a status line"))
            assert.equal("400", notify(nil, "SIP/2.0 200 OK\r\n"))
            assert.is_nil(result)                              -- still waiting
            assert.equal("200", notify("terminated;reason=noresource", "SIP/2.0 202 Accepted\r\n"))
            sip.sleep(0.1)
            assert.same({ true, 202, "Accepted" }, result)
        end, 8)
    end)

    it("answers a REFER without exactly one Refer-To with 400, whatever the script", function()
        run(function()
            local a, b = h.endpoint { user = "alice" }, h.endpoint()
            local acall = connect(a, b)
            local seen = 0
            acall:on("refer", function(_, refer) seen = seen + 1; refer:accept() end)
            assert.equal("400", raw_request(a, acall, "REFER", {}, ""))
            assert.equal("400", raw_request(a, acall, "REFER", {
                "Refer-To: <sip:x@127.0.0.1>", "Refer-To: <sip:y@127.0.0.1>" }, ""))
            assert.equal("202", raw_request(a, acall, "REFER", { "Refer-To: <sip:x@127.0.0.1>" }, ""))
            assert.equal(1, seen)
            acall:hangup()
        end)
    end)

    it("raises on a bad target and fails on a call that is not established", function()
        run(function()
            local a, b = h.endpoint(), h.endpoint()
            local acall = connect(a, b)
            assert.has_error(function() acall:transfer(42) end,
                "bad argument to 'transfer' (SIP URI string expected, got number)")
            assert.has_error(function() acall:transfer("sip:a@b>\r\nX: y") end)
            assert.has_error(function() acall:transfer("mailto:x@y") end)
            acall:hangup()
            local ok, _, code = acall:transfer("sip:x@127.0.0.1:9")
            assert.is_nil(ok)
            assert.equal(sip.ENOTCONN, code)
        end)
    end)
end)
