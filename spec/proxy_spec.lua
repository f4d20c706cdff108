-- spec/proxy_spec.lua: the stateful proxy (csrc/proxy.c, lua/luasip/proxy.lua)
-- with caller, proxy and callee endpoints in one process on loopback, plus
-- raw UDP sockets (LuaSocket) where the exact bytes matter.
local h = require "spec.helper"
local sip = h.sip
local proxy = require "luasip.proxy"

local has_socket, socket = pcall(require, "socket")


-- let in-flight ACK/BYE/CANCEL land, then collect unreachable boxes
local function run(fn, seconds) return h.run_settled(fn, seconds, 0.1) end


-- nothing waits, nothing keeps the loop, no response context is live
local function assert_clean()
    local s = h.stats()
    assert.equal(0, s.tasks)
    assert.equal(0, s.waiting)
    assert.equal(0, s.endpoints)
    assert.equal(0, proxy.stats().contexts)
end


-- caller a, proxy p (INVITEs arrive as requests) and n callees
local function setup(n, tp)
    tp = tp or "udp"
    local a = h.endpoint { transports = { tp }, user = "alice" }
    local p = h.endpoint { transports = { tp }, user = "proxy", proxy = true }
    local callees = {}
    for i = 1, n or 1 do
        callees[i] = h.endpoint { transports = { tp }, user = "callee" .. i }
    end
    return a, p, callees
end


-- a request of a raw UAC at 127.0.0.1:lport to bob at the proxy's addr;
-- branch, From tag and Call-ID from id; extra header lines, then body
local function raw_request(method, addr, lport, id, extra, body)
    local lines = {
        method .. " sip:bob@" .. addr.host .. ":" .. addr.port .. " SIP/2.0",
        "Via: SIP/2.0/UDP 127.0.0.1:" .. lport .. ";branch=z9hG4bK" .. id .. ";rport",
        "Max-Forwards: 70",
        "From: <sip:raw@127.0.0.1>;tag=" .. id,
        "To: <sip:bob@127.0.0.1>",
        "Call-ID: " .. id .. "@127.0.0.1",
        "CSeq: 1 " .. method,
    }
    for _, l in ipairs(extra or {}) do lines[#lines + 1] = l end
    body = body or ""
    lines[#lines + 1] = "Content-Length: " .. #body
    lines[#lines + 1] = ""
    lines[#lines + 1] = body
    return table.concat(lines, "\r\n")
end


-- a callee that rings, answers after `delay` and records how it ended
local function answering(ep, log, name, delay)
    ep:on("INVITE", function(call)
        log[name] = { call = call }
        call:ring()
        if delay then sip.sleep(delay) end
        if call.state == "closed" then
            log[name].ended = call.cause
            return
        end
        local ok, err = call:answer()
        log[name].answered = ok and true or err
        log[name].ended = call:wait_hangup(5)
    end)
end


-- a callee that rings and never answers
local function ringing(ep, log, name)
    ep:on("INVITE", function(call)
        log[name] = { call = call }
        call:ring()
        log[name].ended = call:wait_hangup(5)
    end)
end


local function rejecting(ep, log, name, code, headers)
    ep:on("INVITE", function(call)
        log[name] = { call = call }
        call:reject(code, nil, headers)
        log[name].ended = "rejected"
    end)
end


describe("luasip.proxy", function()
    after_each(assert_clean)

    describe("req:forward()", function()
        for _, tp in ipairs { "udp", "tcp" } do
            it("relays a call over " .. tp .. " and record-routes ACK and BYE through the proxy", function()
                run(function()
                    local a, p, c = setup(1, tp)
                    local log, fresp = {}, nil
                    local before = proxy.stats().routed
                    p:on("INVITE", function(req)
                        fresp = assert(req:forward(h.uri(c[1], "bob", tp), { record_route = true }))
                    end)
                    c[1]:on("INVITE", function(call)
                        log.rr = call:header("Record-Route")
                        log.vias = #call:header_all("Via")
                        log.mf = call.max_forwards
                        log.uri = call.uri.user
                        call:ring()
                        assert(call:answer())
                        log.ended = call:wait_hangup(5)
                    end)
                    local progress = {}
                    local call, err, code = a:call(h.uri(p, "bob", tp), {
                        timeout = 5,
                        on_progress = function(cl) progress[#progress + 1] = cl.status end,
                    })
                    assert.truthy(call, tostring(err) .. " " .. tostring(code))
                    assert.equal(200, fresp.status)
                    assert.is_true(fresp.sent)
                    assert.equal("bob", log.uri)
                    assert.equal(2, log.vias)
                    assert.equal(69, log.mf)
                    local pa = p:addresses()[1]
                    assert.matches("<sip:" .. pa.host .. ":" .. pa.port, log.rr, 1, true)
                    assert.matches(";lr>", log.rr, 1, true)
                    -- our own 100, then the callee's 180 (its 100 stays with us)
                    assert.same({ 100, 180 }, progress)
                    sip.sleep(0.1)
                    assert(call:hangup())
                    sip.sleep(0.2)
                    assert.equal("hangup", log.ended)
                    local after = proxy.stats().routed
                    assert.equal(before.ACK + 1, after.ACK)
                    assert.equal(before.BYE + 1, after.BYE)
                end, 5)
            end)
        end

        it("record-routes twice between UDP and TCP, and routes both ways", function()
            run(function()
                local a = h.endpoint { user = "alice" }
                local p = h.endpoint { user = "proxy", proxy = true, transports = { "udp", "tcp" } }
                local b = h.endpoint { user = "bob", transports = { "tcp" } }
                local log = {}
                local before = proxy.stats().routed
                p:on("INVITE", function(req)
                    req:forward(h.uri(b, "bob", "tcp"), { record_route = true })
                end)
                b:on("INVITE", function(call)
                    log.rr = call:header_all("Record-Route")
                    log.transport = call.transport
                    assert(call:answer())
                    sip.sleep(0.2)
                    call:hangup()          -- BYE from the TCP side
                end)
                local call, err = a:call(h.uri(p, "bob"), { timeout = 5 })
                assert.truthy(call, err)
                assert.equal("tcp", log.transport)
                assert.equal(2, #log.rr)
                assert.matches(";transport=tcp;lr>", log.rr[1], 1, true)
                assert.not_matches("transport=", log.rr[2])
                assert.equal("hangup", call:wait_hangup(3))
                local after = proxy.stats().routed
                assert.equal(before.ACK + 1, after.ACK)
                assert.equal(before.BYE + 1, after.BYE)
            end, 5)
        end)

        it("lets the callee's BYE go back through the proxy to the caller", function()
            run(function()
                local a, p, c = setup(1)
                local before = proxy.stats().routed.BYE
                p:on("INVITE", function(req)
                    req:forward(h.uri(c[1], "bob"), { record_route = true })
                end)
                c[1]:on("INVITE", function(call)
                    assert(call:answer())
                    sip.sleep(0.2)
                    call:hangup()
                end)
                local call = assert(a:call(h.uri(p, "bob"), { timeout = 5 }))
                assert.equal("hangup", call:wait_hangup(3))
                assert.equal(before + 1, proxy.stats().routed.BYE)
            end, 5)
        end)

        it("does not stay in the path without record_route", function()
            run(function()
                local a, p, c = setup(1)
                local log = {}
                local before = proxy.stats().routed
                p:on("INVITE", function(req) req:forward(h.uri(c[1], "bob")) end)
                answering(c[1], log, "bob")
                local call = assert(a:call(h.uri(p, "bob"), { timeout = 5 }))
                assert.is_nil(log.bob.call:header("Record-Route"))
                call:hangup()
                sip.sleep(0.2)
                assert.equal("hangup", log.bob.ended)
                local after = proxy.stats().routed
                assert.equal(before.ACK, after.ACK)
                assert.equal(before.BYE, after.BYE)
            end, 5)
        end)

        it("forks in parallel: the first 200 wins and the other branch is cancelled", function()
            run(function()
                local a, p, c = setup(2)
                local log, fresp = {}, nil
                p:on("INVITE", function(req)
                    fresp = req:forward({ h.uri(c[1], "one"), h.uri(c[2], "two") },
                                        { parallel = true, record_route = true })
                end)
                answering(c[1], log, "one", 0.2)
                ringing(c[2], log, "two")
                local call, err = a:call(h.uri(p, "both"), { timeout = 5 })
                assert.truthy(call, err)
                assert.equal(200, fresp.status)
                assert.equal(2, fresp.branches)
                sip.sleep(0.3)
                assert.equal("cancelled", log.two.ended)
                assert.equal("cancelled", log.two.call.cause)
                call:hangup()
                sip.sleep(0.2)
                assert.equal("hangup", log.one.ended)
            end, 5)
        end)

        it("forks serially: 486 from the first target, the second answers", function()
            run(function()
                local a, p, c = setup(2)
                local log, order = {}, {}
                p:on("INVITE", function(req)
                    local resp = req:forward({ h.uri(c[1], "one"), h.uri(c[2], "two") })
                    order.status = resp.status
                end)
                c[1]:on("INVITE", function(call)
                    order[#order + 1] = "one"
                    call:reject(486)
                end)
                c[2]:on("INVITE", function(call)
                    order[#order + 1] = "two"
                    assert(call:answer())
                    log.ended = call:wait_hangup(5)
                end)
                local call, err = a:call(h.uri(p, "both"), { timeout = 5 })
                assert.truthy(call, err)
                assert.same({ "one", "two", status = 200 }, order)
                call:hangup()
                sip.sleep(0.2)
                assert.equal("hangup", log.ended)
            end, 5)
        end)

        it("returns a failure unsent so the script can route again (failure routing)", function()
            run(function()
                local a, p, c = setup(2)
                local log, seen = {}, {}
                p:on("INVITE", function(req)
                    local resp = assert(req:forward(h.uri(c[1], "one")))
                    seen.first, seen.sent, seen.reason = resp.status, resp.sent, resp.reason
                    seen.header = resp:header("X-Why")
                    assert.is_false(req.replied)
                    resp = assert(req:forward(h.uri(c[2], "two"), { record_route = true }))
                    seen.second = resp.status
                end)
                rejecting(c[1], log, "one", 486, { ["X-Why"] = "busy" })
                answering(c[2], log, "two")
                local progress = {}
                local call, err = a:call(h.uri(p, "x"), {
                    timeout = 5,
                    on_progress = function(cl) progress[#progress + 1] = cl.status end,
                })
                assert.truthy(call, err)
                assert.same({ first = 486, sent = false, reason = "Busy Here",
                              header = "busy", second = 200 }, seen)
                for _, s in ipairs(progress) do assert.is_true(s < 200) end
                call:hangup()
                sip.sleep(0.2)
                assert.equal("hangup", log.two.ended)
            end, 5)
        end)

        it("sends the failure upstream when the handler just returns", function()
            run(function()
                local a, p, c = setup(1)
                local log = {}
                p:on("INVITE", function(req) req:forward(h.uri(c[1], "one")) end)
                rejecting(c[1], log, "one", 486)
                local call, err, code = a:call(h.uri(p, "x"), { timeout = 5 })
                assert.is_nil(call)
                assert.equal("486 Busy Here", err)
                assert.equal(486, code)
            end, 5)
        end)

        it("lets the script answer itself after a failure, or relay it explicitly", function()
            run(function()
                local a, p, c = setup(1)
                local log, relayed = {}, {}
                p:on("INVITE", function(req)
                    local resp = req:forward(h.uri(c[1], "one"))
                    if req.uri.user == "own" then
                        assert(req:reply(480, "Nobody Here"))
                    else
                        relayed[1], relayed[2] = req:relay_response(resp)
                        relayed[3], relayed[4], relayed[5] = req:relay_response(resp)
                    end
                end)
                rejecting(c[1], log, "one", 603)
                local call, err, code = a:call(h.uri(p, "own"), { timeout = 5 })
                assert.is_nil(call)
                assert.equal(480, code)
                assert.equal("480 Nobody Here", err)
                call, err, code = a:call(h.uri(p, "relay"), { timeout = 5 })
                assert.is_nil(call)
                assert.equal(603, code, err)
                assert.is_true(relayed[1])
                assert.is_nil(relayed[3])
                assert.equal(sip.EALREADY, relayed[5])
            end, 5)
        end)

        it("propagates the caller's CANCEL to every pending branch", function()
            run(function()
                local a, p, c = setup(2)
                local log, fresp = {}, nil
                p:on("INVITE", function(req)
                    fresp = req:forward({ h.uri(c[1], "one"), h.uri(c[2], "two") }, { parallel = true })
                end)
                ringing(c[1], log, "one")
                ringing(c[2], log, "two")
                local call, err, code = a:call(h.uri(p, "x"), { timeout = 0.5 })
                assert.is_nil(call)
                assert.equal("timeout", err)
                assert.equal(sip.ETIMEDOUT, code)
                sip.sleep(0.3)
                assert.equal("cancelled", log.one.ended)
                assert.equal("cancelled", log.two.ended)
                assert.equal(487, fresp.status)
                assert.is_true(fresp.cancelled)
                assert.is_true(fresp.sent)
            end, 5)
        end)

        it("answers 408 when a branch times out, and cancels it", function()
            run(function()
                local a, p, c = setup(1)
                local log, fresp = {}, nil
                p:on("INVITE", function(req)
                    fresp = req:forward(h.uri(c[1], "one"), { timeout = 0.3 })
                end)
                ringing(c[1], log, "one")
                local t0 = sip.now()
                local call, err, code = a:call(h.uri(p, "x"), { timeout = 5 })
                assert.is_nil(call)
                assert.equal(408, code, err)
                assert.is_true(sip.now() - t0 < 2)
                assert.equal(408, fresp.status)
                sip.sleep(0.2)
                assert.equal("cancelled", log.one.ended)
            end, 5)
        end)

        it("restarts the timeout on each provisional response (Timer C)", function()
            run(function()
                local a, p, c = setup(1)
                p:on("INVITE", function(req) req:forward(h.uri(c[1], "one"), { timeout = 0.4 }) end)
                c[1]:on("INVITE", function(call)
                    for _ = 1, 3 do
                        call:ring()
                        sip.sleep(0.25)
                    end
                    assert(call:answer())
                    call:wait_hangup(5)
                end)
                local call, err = a:call(h.uri(p, "x"), { timeout = 5 })
                assert.truthy(call, err)
                call:hangup()
            end, 5)
        end)

        it("sends a 6xx at once and cancels the other branches", function()
            run(function()
                local a, p, c = setup(2)
                local log = {}
                p:on("INVITE", function(req)
                    req:forward({ h.uri(c[1], "one"), h.uri(c[2], "two") }, { parallel = true })
                end)
                rejecting(c[1], log, "one", 603)
                ringing(c[2], log, "two")
                local call, err, code = a:call(h.uri(p, "x"), { timeout = 5 })
                assert.is_nil(call)
                assert.equal(603, code, err)
                sip.sleep(0.2)
                assert.equal("cancelled", log.two.ended)
            end, 5)
        end)

        it("picks the lowest class: 3xx over 4xx over 5xx", function()
            run(function()
                local a, p, c = setup(3)
                local log, fresp = {}, nil
                p:on("INVITE", function(req)
                    fresp = req:forward({ h.uri(c[1], "one"), h.uri(c[2], "two"), h.uri(c[3], "three") },
                                        { parallel = true })
                end)
                rejecting(c[1], log, "one", 500)
                rejecting(c[2], log, "two", 404)
                rejecting(c[3], log, "three", 302, { Contact = "<sip:else@127.0.0.1:9>" })
                local call, err, code = a:call(h.uri(p, "x"), { timeout = 5 })
                assert.is_nil(call)
                assert.equal(302, code, err)
                assert.equal(302, fresp.status)
                assert.equal("sip:else@127.0.0.1:9", fresp.contacts[1].uri)
            end, 5)
        end)

        it("gathers the challenges of every 401/407 branch into the one response", function()
            run(function()
                local a, p, c = setup(2)
                p:on("MESSAGE", function(req)
                    req:forward({ h.uri(c[1], "one"), h.uri(c[2], "two") }, { parallel = true })
                end)
                for i, ep in ipairs(c) do
                    ep:on("MESSAGE", function(req)
                        req:reply(407, nil, { ["Proxy-Authenticate"] =
                            ('Digest realm="r%d", nonce="n%d"'):format(i, i) })
                    end)
                end
                local resp, err, code, r = a:request { method = "MESSAGE", uri = h.uri(p, "x"),
                                                        body = "hi", timeout = 5 }
                assert.is_nil(resp)
                assert.equal(407, code, err)
                local ch = r:header_all("Proxy-Authenticate")
                table.sort(ch)
                assert.same({ 'Digest realm="r1", nonce="n1"', 'Digest realm="r2", nonce="n2"' }, ch)
            end, 5)
        end)

        it("forwards non-INVITE requests and their 200 with headers added", function()
            run(function()
                local a, p, c = setup(1)
                local seen = {}
                p:on("OPTIONS", function(req)
                    local resp = req:forward(h.uri(c[1], "one"), { headers = { ["X-Proxy"] = "p1" } })
                    seen.status = resp.status
                end)
                c[1]:on("OPTIONS", function(req)
                    seen.x = req:header("X-Proxy")
                    seen.mf = req.max_forwards
                    req:reply(200, "OK", { ["X-Callee"] = "c1" })
                end)
                local resp, err = a:request { method = "OPTIONS", uri = h.uri(p, "x"), timeout = 5 }
                assert.truthy(resp, err)
                assert.equal(200, resp.status)
                assert.equal("c1", resp:header("X-Callee"))
                assert.same({ status = 200, x = "p1", mf = 69 }, seen)
            end, 5)
        end)

        describe("credentials and removed headers", function()
            local OTHER = 'Digest username="alice", realm="downstream.test", nonce="n1", ' ..
                          'uri="sip:x@127.0.0.1", response="00000000000000000000000000000000"'

            -- a -> p (authenticates realm proxy.test with 407) -> callee;
            -- returns what the callee received
            local function through(fwd_opts)
                local seen = {}
                run(function()
                    local a, p, c = setup(1)
                    p:on("MESSAGE", function(req)
                        local user = req:require_auth({ alice = "secret" },
                                                      { realm = "proxy.test", proxy = true })
                        if not user then return end
                        seen.consumed = sip.auth.consumed_realms(req)
                        local ok, err = pcall(req.forward, req, h.uri(c[1], "one"), fwd_opts)
                        if not ok then seen.error = err; req:reply(500) end
                    end)
                    c[1]:on("MESSAGE", function(req)
                        seen.pa = req:header_all("Proxy-Authorization") or {}
                        seen.secret = req:header("X-Secret")
                        seen.body = req.body
                        req:reply(200)
                    end)
                    local resp, err = a:request { method = "MESSAGE", uri = h.uri(p, "x"),
                        body = "hi", timeout = 5, auth = { user = "alice", password = "secret" },
                        headers = { ["Proxy-Authorization"] = OTHER, ["X-Secret"] = "s" } }
                    seen.status = resp and resp.status or err
                end, 8)
                return seen
            end

            it("consumes the Proxy-Authorization of the realm it checked, forwards the others", function()
                local seen = through(nil)
                assert.equal(200, seen.status)
                assert.same({ "proxy.test" }, seen.consumed)
                assert.same({ OTHER }, seen.pa)
                assert.equal("s", seen.secret)
                assert.equal("hi", seen.body)
            end)

            it("forwards the consumed credentials with keep_credentials = true", function()
                local seen = through { keep_credentials = true }
                assert.equal(200, seen.status)
                assert.equal(2, #seen.pa)
                local realms = {}
                for i, v in ipairs(seen.pa) do realms[i] = v:match('realm="([^"]+)"') end
                table.sort(realms)
                assert.same({ "downstream.test", "proxy.test" }, realms)
            end)

            it("leaves out the headers named in remove_headers (any case)", function()
                local seen = through { remove_headers = { "proxy-authorization", "X-SECRET" } }
                assert.equal(200, seen.status)
                assert.same({}, seen.pa)
                assert.is_nil(seen.secret)
                assert.equal("hi", seen.body)
            end)

            it("raises at once for a bad remove_headers, naming it", function()
                local seen = through { remove_headers = { "Via" } }
                assert.matches("bad option 'remove_headers' to 'forward' %(a header the proxy may remove at %[1%] expected, got Via%)", seen.error)
                seen = through { remove_headers = { 42 } }
                assert.matches("bad option 'remove_headers' to 'forward' %(header name at %[1%] expected, got 42%)", seen.error)
                seen = through { remove_headers = "X-Secret" }
                assert.matches("bad option 'remove_headers' to 'forward' %(list of header names expected, got string%)", seen.error)
            end)
        end)

        it("spirals through itself when the Request-URI changes", function()
            run(function()
                local a, p, c = setup(1)
                local log, hops = {}, {}
                p:on("INVITE", function(req)
                    hops[#hops + 1] = req.uri.user
                    if req.uri.user == "alias" then
                        req:forward(h.uri(p, "bob"))
                    else
                        req:forward(h.uri(c[1], "bob"))
                    end
                end)
                answering(c[1], log, "bob")
                local call, err = a:call(h.uri(p, "alias"), { timeout = 5 })
                assert.truthy(call, err)
                assert.same({ "alias", "bob" }, hops)
                assert.equal(68, log.bob.call.max_forwards)
                call:hangup()
                sip.sleep(0.2)
            end, 5)
        end)

        it("answers 482 Loop Detected to a request that comes back unchanged", function()
            run(function()
                local a, p = setup(0)
                local results = {}
                p:on("INVITE", function(req)
                    local r, err, code = req:forward(h.uri(p, "loop"))
                    results[#results + 1] = r and r.status or code
                end)
                local call, err, code = a:call(h.uri(p, "loop"), { timeout = 5 })
                assert.is_nil(call)
                assert.equal(482, code, err)
            end, 5)
        end)

        it("raises on bad targets and options, naming the value", function()
            run(function()
                local a, p = setup(0)
                local errs = {}
                p:on("OPTIONS", function(req)
                    for _, args in ipairs {
                        { "not a uri" }, { {} }, { 42 }, { { "sip:a@127.0.0.1", 7 } },
                        { "sip:a@127.0.0.1", { timeout = -1 } },
                        { "sip:a@127.0.0.1", { parallel = "yes" } },
                        { "sip:a@127.0.0.1", { route = "http://x" } },
                    } do
                        local ok, e = pcall(req.forward, req, args[1], args[2])
                        errs[#errs + 1] = ok and "no error" or e
                    end
                    req:reply(200)
                end)
                assert(a:request { method = "OPTIONS", uri = h.uri(p, "x"), timeout = 5 })
                assert.matches('SIP URI expected, got "not a uri"', errs[1], 1, true)
                assert.matches("at least one target", errs[2], 1, true)
                assert.matches("SIP URI or list of targets expected, got number", errs[3], 1, true)
                assert.matches("targets[2]", errs[4], 1, true)
                assert.matches("bad option 'timeout'", errs[5], 1, true)
                assert.matches("bad option 'parallel'", errs[6], 1, true)
                assert.matches('bad option \'route\' (SIP URI expected, got "http://x")', errs[7], 1, true)
            end, 5)
        end)

        it("sends the request to the route given, with a Route header", function()
            run(function()
                local a, p, c = setup(2)
                local log = {}
                -- c[2] is the next hop: a second proxy that routes by Request-URI
                local p2 = h.endpoint { user = "p2", proxy = true }
                p:on("INVITE", function(req)
                    req:forward(h.uri(c[1], "bob"), { route = p2:uri() })
                end)
                p2:on("INVITE", function(req)
                    log.route = req:header("Route")
                    log.ruri = req.uri.user
                    req:forward(req.uri.raw)
                end)
                answering(c[1], log, "bob")
                local call, err = a:call(h.uri(p, "bob"), { timeout = 5 })
                assert.truthy(call, err)
                assert.equal("bob", log.ruri)
                assert.matches(";lr>$", log.route)
                assert.equal(3, #log.bob.call:header_all("Via"))
                assert.is_nil(log.bob.call:header("Route"))
                call:hangup()
                sip.sleep(0.2)
            end, 5)
        end)
    end)

    describe("Max-Forwards", function()
        it("answers 483 Too Many Hops when it is 0 and forwards nothing", function()
            if not has_socket then
                pending("needs LuaSocket (Debian lua-socket) for a raw UAC")
                return
            end
            local got = {}
            run(function()
                local _, p, c = setup(1)
                local log, fwd = {}, {}
                p:on("INVITE", function(req)
                    fwd[1], fwd[2], fwd[3] = req:forward(h.uri(c[1], "bob"))
                end)
                ringing(c[1], log, "bob")
                local u, lport, addr = h.raw_udp(p)
                assert(u:send(table.concat({
                    "INVITE sip:bob@" .. addr.host .. ":" .. addr.port .. " SIP/2.0",
                    "Via: SIP/2.0/UDP 127.0.0.1:" .. lport .. ";branch=z9hG4bKmf0;rport",
                    "Max-Forwards: 0",
                    "From: <sip:raw@127.0.0.1>;tag=mf0",
                    "To: <sip:bob@127.0.0.1>",
                    "Call-ID: mf0@127.0.0.1",
                    "CSeq: 1 INVITE",
                    "Contact: <sip:raw@127.0.0.1:" .. lport .. ">",
                    "Content-Length: 0", "", "",
                }, "\r\n")))
                local dl = sip.now() + 1
                while sip.now() < dl and not (got[#got] or ""):match("^SIP/2%.0 [2-6]") do
                    local d = u:receive()
                    if d then got[#got + 1] = d else sip.sleep(0.01) end
                end
                u:close()
                assert.same({ nil, "483 Too Many Hops", 483 }, fwd)
                assert.is_nil(log.bob)
            end, 5)
            assert.matches("^SIP/2%.0 483 Too Many Hops\r\n", got[#got] or "")
        end)
    end)

    describe("retransmissions", function()
        it("answers a retransmitted MESSAGE with the relayed 200 again, without forwarding it twice", function()
            -- csrc/done.c: the final answer to a non-INVITE over UDP is
            -- kept as bytes for Timer J instead of in a libre transaction
            if not has_socket then
                pending("needs LuaSocket (Debian lua-socket) for a raw UAC")
                return
            end
            local got, seen = {}, 0
            run(function()
                local _, p, c = setup(1)
                p:on("MESSAGE", function(req) req:forward(h.uri(c[1], "bob")) end)
                c[1]:on("MESSAGE", function(req)
                    seen = seen + 1
                    req:reply(200, "OK", { ["X-Seen"] = tostring(seen) })
                end)
                local u, lport, addr = h.raw_udp(p)
                local request = raw_request("MESSAGE", addr, lport, "rtx1",
                                            { "Content-Type: text/plain" }, "hi")
                for _ = 1, 2 do
                    assert(u:send(request))
                    got[#got + 1] = h.raw_receive(u, "^SIP/2%.0 [2-6]", 2)
                end
                u:close()
            end, 6)
            assert.equal(1, seen)
            assert.equal(2, #got)
            assert.matches("^SIP/2%.0 200 OK\r\n", got[1])
            assert.matches("\r\nX%-Seen: 1\r\n", got[1])
            assert.equal(got[1], got[2])
            local kept, resent = require("luasip.core").done_stats()
            assert.is_true(kept >= 1)
            assert.is_true(resent >= 1)
        end)
    end)

    describe("retransmissions of an answered INVITE", function()
        it("absorbs the INVITE's late retransmission and relays every 2xx retransmission", function()
            -- csrc/proxy.c: once the 2xx went up, the INVITE server
            -- transaction ends and a bare done.c entry absorbs the INVITE
            if not has_socket then
                pending("needs LuaSocket (Debian lua-socket) for a raw UAC and UAS")
                return
            end
            local socket = require "socket"
            local core = require "luasip.core"
            local invites, oks, absorbed, kept = 0, 0, nil, nil
            run(function()
                local _, p = setup(0)
                local callee = assert(socket.udp())
                assert(callee:setsockname("127.0.0.1", 0))
                callee:settimeout(0)
                local _, cport = callee:getsockname()
                p:on("INVITE", function(req)
                    req:forward("sip:bob@127.0.0.1:" .. cport, { record_route = true })
                end)
                local u, lport, addr = h.raw_udp(p)
                local invite = raw_request("INVITE", addr, lport, "invrtx1",
                                           { "Contact: <sip:raw@127.0.0.1:" .. lport .. ">" })
                local _, resent0 = core.done_stats()
                assert(u:send(invite))
                -- the callee answers 200 twice (a 2xx retransmission)
                local req = h.raw_receive(callee, "^INVITE ", 2)
                assert.is_string(req)
                invites = invites + 1
                local vias = {}
                for line in req:gmatch("[^\r\n]+") do
                    if line:match("^Via:") or line:match("^Record%-Route:") then vias[#vias + 1] = line end
                end
                local ok = table.concat({
                    "SIP/2.0 200 OK",
                    table.concat(vias, "\r\n"),
                    "From: <sip:raw@127.0.0.1>;tag=invrtx1",
                    "To: <sip:bob@127.0.0.1>;tag=callee1",
                    "Call-ID: invrtx1@127.0.0.1",
                    "CSeq: 1 INVITE",
                    "Contact: <sip:bob@127.0.0.1:" .. cport .. ">",
                    "Content-Length: 0", "", "",
                }, "\r\n")
                assert(callee:sendto(ok, addr.host, addr.port))
                assert.is_string(h.raw_receive(u, "^SIP/2%.0 200 ", 2))
                oks = oks + 1
                kept = core.done_stats()
                assert(callee:sendto(ok, addr.host, addr.port))
                if h.raw_receive(u, "^SIP/2%.0 200 ", 2) then oks = oks + 1 end
                -- the caller's INVITE again, late: nothing goes to the callee
                assert(u:send(invite))
                if h.raw_receive(callee, "^INVITE ", 0.5) then invites = invites + 1 end
                local _, resent1 = core.done_stats()
                absorbed = resent1 - resent0
                u:close()
                callee:close()
            end, 10)
            assert.equal(1, invites)
            assert.equal(2, oks)
            assert.is_true(kept >= 1)
            assert.equal(1, absorbed)
        end)
    end)

    describe("req:relay()", function()
        it("relays statelessly to the Request-URI; the response comes back the same way", function()
            if not has_socket then
                pending("needs LuaSocket (Debian lua-socket) for a raw UAC")
                return
            end
            local got = {}
            run(function()
                local _, p, c = setup(1)
                local seen = {}
                local before = proxy.stats()
                p:on("OPTIONS", function(req) seen.relay = { req:relay() } end)
                c[1]:on("OPTIONS", function(req)
                    seen.vias = #req:header_all("Via")
                    seen.top = req.via.sent_by
                    req:reply(200, "OK", { ["X-Callee"] = "yes" })
                end)
                local addr = p:addresses()[1]
                local target = h.uri(c[1], "bob")
                local u = assert(socket.udp())
                assert(u:setsockname("127.0.0.1", 0))
                assert(u:setpeername(addr.host, addr.port))
                u:settimeout(0)
                local _, lport = u:getsockname()
                assert(u:send(table.concat({
                    "OPTIONS " .. target .. " SIP/2.0",
                    "Via: SIP/2.0/UDP 127.0.0.1:" .. lport .. ";branch=z9hG4bKrelay1;rport",
                    "Max-Forwards: 70",
                    "From: <sip:raw@127.0.0.1>;tag=relay1",
                    "To: <" .. target .. ">",
                    "Call-ID: relay1@127.0.0.1",
                    "CSeq: 1 OPTIONS",
                    "Content-Length: 0", "", "",
                }, "\r\n")))
                local dl = sip.now() + 1
                while sip.now() < dl and #got == 0 do
                    local d = u:receive()
                    if d then got[#got + 1] = d else sip.sleep(0.01) end
                end
                u:close()
                assert.same({ true }, seen.relay)
                assert.equal(2, seen.vias)
                assert.equal(addr.host .. ":" .. addr.port, seen.top)
                local after = proxy.stats()
                assert.equal(before.relayed + 1, after.relayed)
                assert.equal(before.stray_responses + 1, after.stray_responses)
            end, 5)
            local r = got[1] or ""
            assert.matches("^SIP/2%.0 200 OK\r\n", r)
            assert.matches("X-Callee: yes", r, 1, true)
            local vias = 0
            for _ in r:gmatch("\nVia:") do vias = vias + 1 end
            assert.equal(1, vias)
            assert.matches("branch=z9hG4bKrelay1", r, 1, true)
        end)
    end)

    describe("req:relay() of an INVITE", function()
        it("relays its CANCEL statelessly on the same branch; the 487 comes back", function()
            if not has_socket then
                pending("needs LuaSocket (Debian lua-socket) for a raw UAC")
                return
            end
            local got = {}
            run(function()
                local _, p, c = setup(1)
                local log = {}
                p:on("INVITE", function(req) assert(req:relay()) end)
                ringing(c[1], log, "bob")
                local addr = p:addresses()[1]
                local target = h.uri(c[1], "bob")
                local u = assert(socket.udp())
                assert(u:setsockname("127.0.0.1", 0))
                assert(u:setpeername(addr.host, addr.port))
                u:settimeout(0)
                local _, lport = u:getsockname()
                local function msg(method, extra)
                    return table.concat({
                        method .. " " .. target .. " SIP/2.0",
                        "Via: SIP/2.0/UDP 127.0.0.1:" .. lport .. ";branch=z9hG4bKsl1;rport",
                        "Max-Forwards: 70",
                        "From: <sip:raw@127.0.0.1>;tag=sl1",
                        "To: <" .. target .. ">" .. (extra or ""),
                        "Call-ID: sl1@127.0.0.1",
                        "CSeq: 1 " .. method,
                        "Contact: <sip:raw@127.0.0.1:" .. lport .. ">",
                        "Content-Length: 0", "", "",
                    }, "\r\n")
                end
                local function collect(secs)
                    local dl = sip.now() + secs
                    while sip.now() < dl do
                        local d = u:receive()
                        if d then got[#got + 1] = d else sip.sleep(0.01) end
                    end
                end
                assert(u:send(msg("INVITE")))
                collect(0.3)
                assert(u:send(msg("CANCEL")))
                collect(0.3)
                local tag
                for _, d in ipairs(got) do
                    if d:match("^SIP/2%.0 487") then tag = d:match("\nTo:[^\r]*;tag=([^;\r]+)") end
                end
                if tag then assert(u:send((msg("ACK", ";tag=" .. tag)))) end
                collect(0.1)
                u:close()
                assert.equal("cancelled", log.bob.ended)
            end, 5)
            local lines = {}
            for _, d in ipairs(got) do
                lines[#lines + 1] = d:match("^[^\r]+") .. " / " .. (d:match("\nCSeq: ([^\r]+)") or "?")
            end
            -- no 100 of our own (stateless); the callee rings at once
            assert.same({ "SIP/2.0 180 Ringing / 1 INVITE",
                          "SIP/2.0 200 OK / 1 CANCEL", "SIP/2.0 487 Request Terminated / 1 INVITE" },
                        lines)
        end)
    end)

    describe("req:redirect()", function()
        it("answers 302 with the contacts, and ep:call follows it when asked", function()
            run(function()
                local a, r, c = setup(1)
                local log = {}
                r:on("INVITE", function(req)
                    assert(req:redirect({ { uri = "sip:nobody@127.0.0.1:9", q = 0.1 },
                                          { uri = h.uri(c[1], "bob"), q = 0.9 } }))
                end)
                answering(c[1], log, "bob")
                local call, err, code = a:call(h.uri(r, "bob"), { timeout = 5 })
                assert.is_nil(call)
                assert.equal(302, code)
                assert.equal("302 Moved Temporarily", err)
                assert.is_nil(log.bob)
                call, err = a:call(h.uri(r, "bob"), { timeout = 5, follow_redirects = 1 })
                assert.truthy(call, err)
                assert.equal("bob", log.bob.call.uri.user)
                call:hangup()
                sip.sleep(0.2)
                assert.equal("hangup", log.bob.ended)
            end, 5)
        end)

        it("stops following at a loop and at the bound", function()
            run(function()
                local a, r = setup(0)
                local r2 = h.endpoint { user = "r2", proxy = true }
                local hits = 0
                r:on("INVITE", function(req) hits = hits + 1; req:redirect(h.uri(r2, "x"), { status = 301 }) end)
                r2:on("INVITE", function(req) hits = hits + 1; req:redirect(h.uri(r, "x")) end)
                local call, err, code = a:call(h.uri(r, "x"), { timeout = 5, follow_redirects = 5 })
                assert.is_nil(call)
                assert.equal(302, code, err)        -- r2's answer: r was tried already
                assert.equal(2, hits)
                hits = 0
                call, err, code = a:call(h.uri(r, "x"), { timeout = 5, follow_redirects = 0 })
                assert.equal(301, code, err)
                assert.equal(1, hits)
            end, 5)
        end)

        it("raises on a bad contact or status", function()
            run(function()
                local a, r = setup(0)
                local errs = {}
                r:on("OPTIONS", function(req)
                    errs[1] = select(2, pcall(req.redirect, req, "nope"))
                    errs[2] = select(2, pcall(req.redirect, req, "sip:a@b", { status = 200 }))
                    errs[3] = select(2, pcall(req.redirect, req, { { uri = "sip:a@b", q = 2 } }))
                    req:reply(200)
                end)
                assert(a:request { method = "OPTIONS", uri = h.uri(r, "x"), timeout = 5 })
                assert.matches('SIP URI at contacts[1] expected, got nope', errs[1], 1, true)
                assert.matches("bad option 'status'", errs[2], 1, true)
                assert.matches("q in 0..1", errs[3], 1, true)
            end, 5)
        end)
    end)
end)
