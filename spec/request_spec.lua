-- spec/request_spec.lua: out-of-dialog requests (csrc/request.c,
-- csrc/message.c): the fields of an incoming request, req:reply() and
-- what goes back over the wire, and ep:request() on the client side.
-- Raw requests are sent from a LuaSocket UDP socket (Debian's lua-socket
-- ships a Lua 5.4 build), polled from inside the task, so the exact
-- bytes, compact header forms included, are under the spec's control.
local h = require "spec.helper"
local sip = h.sip

local has_socket, socket = pcall(require, "socket")
local NO_SOCKET = "needs lua-socket for Lua 5.4 (apt-get install lua-socket)"


-- a UDP socket on loopback, non-blocking; returns it and its port
local function raw_udp()
    local u = assert(socket.udp())
    assert(u:setsockname("127.0.0.1", 0))
    u:settimeout(0)
    local _, port = u:getsockname()
    return u, tonumber(port)
end


-- the next datagram on u, waiting inside the task (never blocks the loop)
local function recv(u, timeout)
    local deadline = sip.now() + (timeout or 2)
    repeat
        local d = u:receive()
        if d then return d end
        sip.sleep(0.005)
    until sip.now() > deadline
    return nil, "timeout"
end


-- split a raw SIP response: status, reason, headers (lower-case name ->
-- list of values, in order), body
local function parse(raw)
    local head, body = raw:match("^(.-)\r\n\r\n(.*)$")
    assert(head, "no end of headers in: " .. raw)
    local first, rest = head:match("^([^\r\n]*)\r\n(.*)$")
    local status, reason = first:match("^SIP/2%.0 (%d%d%d) (.*)$")
    local headers = {}
    for line in (rest .. "\r\n"):gmatch("(.-)\r\n") do
        local name, value = line:match("^([^:%s]+)%s*:%s*(.*)$")
        assert(name, "bad header line: " .. line)
        name = name:lower()
        headers[name] = headers[name] or {}
        table.insert(headers[name], value)
    end
    return { status = tonumber(status), reason = reason, headers = headers, body = body }
end


local function crlf(lines)
    return table.concat(lines, "\r\n")
end


-- a MESSAGE in compact form (RFC 3261 7.3.3) to port, from a peer at
-- myport; the body is "hello"
local function compact_message(port, myport, branch)
    return crlf {
        "MESSAGE sip:bob@127.0.0.1:" .. port .. ";transport=udp;lr SIP/2.0",
        "v: SIP/2.0/UDP 127.0.0.1:" .. myport .. ";branch=" .. branch .. ";rport",
        "v: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKupstream",
        "Max-Forwards: 70",
        'f: "Alice A" <sip:alice@example.com>;tag=abc123',
        "t: <sip:bob@127.0.0.1>",
        "i: raw-call-1@example.com",
        "CSeq: 42 MESSAGE",
        'm: <sip:alice@127.0.0.1:' .. myport .. '>;expires=60;q=0.5, "B" <sip:b@example.net>',
        "s: hello subject",
        "X-Multi: one",
        "X-Multi: two, three",
        "c: text/plain",
        "l: 5",
        "",
        "hello",
    }
end


-- a free TCP port on loopback with nothing listening on it
local function closed_tcp_port()
    local s = assert(socket.bind("127.0.0.1", 0))
    local _, port = s:getsockname()
    s:close()
    return tonumber(port)
end


describe("luasip.request", function()
    local before

    before_each(function()
        before = sip.stats()
    end)

    after_each(function()
        local now = sip.stats()
        assert.equal(before.tasks, now.tasks)
        assert.equal(before.waiting, now.waiting)
        assert.equal(before.endpoints, now.endpoints)
    end)

    describe("fields", function()
        it("parse a raw UDP request written with compact headers", function()
            if not has_socket then return pending(NO_SOCKET) end
            local got
            h.run(function()
                local ep = h.endpoint()
                local port = ep:addresses()[1].port
                local u, myport = raw_udp()
                ep:on("MESSAGE", function(req)
                    got = {
                        method = req.method, uri = req.uri, from = req.from, to = req.to,
                        call_id = req.call_id, cseq = req.cseq, cseq_method = req.cseq_method,
                        via = req.via, contact = req.contact, contacts = req.contacts,
                        body = req.body, content_type = req.content_type,
                        max_forwards = req.max_forwards, headers = req.headers,
                        source = req.source, source_ip = req.source_ip,
                        source_port = req.source_port, transport = req.transport,
                        in_dialog = req.in_dialog,
                        h = {
                            i = req:header("i"), call_id = req:header("Call-ID"),
                            call_id_lc = req:header("call-id"),
                            f = req:header("f"), From = req:header("From"),
                            t = req:header("T"), v = req:header("v"),
                            Via = req:header("Via"), m = req:header("m"),
                            l = req:header("l"), Subject = req:header("Subject"),
                            s = req:header("s"), x = req:header("x-multi"),
                            missing = req:header("X-Missing"),
                        },
                        all = {
                            Via = req:header_all("Via"), v = req:header_all("v"),
                            Contact = req:header_all("Contact"),
                            x = req:header_all("X-Multi"),
                            missing = req:header_all("X-Missing"),
                        },
                        port = port, myport = myport,
                    }
                    req:reply(200)
                end)
                assert(u:sendto(compact_message(port, myport, "z9hG4bKraw1"), "127.0.0.1", port))
                local raw = assert(recv(u))
                assert.equal(200, parse(raw).status)
                u:close()
            end, 3)

            local port, myport = got.port, got.myport
            assert.equal("MESSAGE", got.method)
            assert.equal("sip", got.uri.scheme)
            assert.equal("bob", got.uri.user)
            assert.equal("127.0.0.1", got.uri.host)
            assert.equal(port, got.uri.port)
            assert.equal(";transport=udp;lr", got.uri.params)
            assert.equal("sip:bob@127.0.0.1:" .. port .. ";transport=udp;lr", got.uri.raw)

            assert.equal("Alice A", got.from.display)
            assert.equal("sip:alice@example.com", got.from.uri)
            assert.equal("abc123", got.from.tag)
            assert.equal("alice", got.from.user)
            assert.equal("example.com", got.from.host)
            assert.equal("sip:bob@127.0.0.1", got.to.uri)
            assert.is_nil(got.to.tag)
            assert.is_nil(got.to.display)
            assert.equal("bob", got.to.user)
            assert.equal("127.0.0.1", got.to.host)
            assert.is_false(got.in_dialog)

            assert.equal("raw-call-1@example.com", got.call_id)
            assert.equal(42, got.cseq)
            assert.equal("MESSAGE", got.cseq_method)

            assert.equal("udp", got.via.transport)
            assert.equal("127.0.0.1", got.via.host)
            assert.equal(myport, got.via.port)
            assert.equal("z9hG4bKraw1", got.via.branch)

            -- one Contact line with two values gives two contacts
            assert.equal(2, #got.contacts)
            assert.equal("sip:alice@127.0.0.1:" .. myport, got.contact.uri)
            assert.equal(60, got.contact.expires)
            assert.equal(0.5, got.contact.q)
            assert.equal("B", got.contacts[2].display)
            assert.equal("sip:b@example.net", got.contacts[2].uri)

            assert.equal("hello", got.body)
            assert.equal("text/plain", got.content_type)
            assert.equal(70, got.max_forwards)

            assert.equal("127.0.0.1:" .. myport, got.source)
            assert.equal("127.0.0.1", got.source_ip)
            assert.equal(myport, got.source_port)
            assert.equal("udp", got.transport)

            -- header(): any case, long or compact name; first line as written
            assert.equal("raw-call-1@example.com", got.h.i)
            assert.equal(got.h.i, got.h.call_id)
            assert.equal(got.h.i, got.h.call_id_lc)
            assert.equal('"Alice A" <sip:alice@example.com>;tag=abc123', got.h.f)
            assert.equal(got.h.f, got.h.From)
            assert.equal("<sip:bob@127.0.0.1>", got.h.t)
            assert.equal("SIP/2.0/UDP 127.0.0.1:" .. myport .. ";branch=z9hG4bKraw1;rport", got.h.v)
            assert.equal(got.h.v, got.h.Via)
            assert.equal("5", got.h.l)
            assert.equal("hello subject", got.h.Subject)
            assert.equal(got.h.Subject, got.h.s)
            assert.equal("one", got.h.x)
            assert.is_nil(got.h.missing)

            -- header_all(): every value, split at commas where SIP allows it
            assert.same({ got.h.v, "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKupstream" }, got.all.Via)
            assert.same(got.all.Via, got.all.v)
            assert.same({ "<sip:alice@127.0.0.1:" .. myport .. ">;expires=60;q=0.5",
                '"B" <sip:b@example.net>' }, got.all.Contact)
            assert.same({ "one", "two, three" }, got.all.x)
            assert.same({}, got.all.missing)

            -- headers: long names, values per line in order
            local hd = got.headers
            assert.same({ "raw-call-1@example.com" }, hd["Call-ID"])
            assert.same(got.all.Via, hd.Via)
            assert.same({ "one", "two, three" }, hd["X-Multi"])
            assert.same({ "42 MESSAGE" }, hd.CSeq)
            assert.same({ "hello subject" }, hd.Subject)
            assert.same({ "5" }, hd["Content-Length"])
            assert.is_nil(hd.i)
        end)

        it("reads a TCP request made by ep:request", function()
            local got, ports
            h.run(function()
                local a = h.endpoint { transports = { "tcp" } }
                local b = h.endpoint { transports = { "udp", "tcp" }, user = "carol" }
                a:on("INFO", function(req)
                    got = {
                        transport = req.transport, via = req.via, from = req.from,
                        to = req.to, uri = req.uri, body = req.body,
                        content_type = req.content_type, source_ip = req.source_ip,
                        source_port = req.source_port, cseq_method = req.cseq_method,
                        x = req:header_all("X-List"), line = req:header("X-Line"),
                        call_id = req.call_id, cseq = req.cseq,
                    }
                    req:reply(200)
                end)
                ports = { a = a:addresses()[1].port }
                local res = assert(b:request {
                    method = "INFO", uri = h.uri(a, "dave", "tcp"),
                    from = "sip:carol@example.org", to = "sip:dave@example.org",
                    headers = { ["Content-Type"] = "application/json",
                                ["X-List"] = { "a", "b" }, "X-Line: 7" },
                    body = '{"k":1}', timeout = 2,
                })
                assert.equal(200, res.status)
            end, 3)
            assert.equal("tcp", got.transport)
            assert.equal("tcp", got.via.transport)
            assert.matches("^z9hG4bK", got.via.branch)
            assert.equal("127.0.0.1", got.source_ip)
            assert.is_true(got.source_port > 0)
            assert.equal("sip:carol@example.org", got.from.uri)
            assert.matches("^%x+$", got.from.tag)
            assert.equal("sip:dave@example.org", got.to.uri)
            assert.is_nil(got.to.tag)
            assert.equal("dave", got.uri.user)
            assert.equal(ports.a, got.uri.port)
            assert.equal(";transport=tcp", got.uri.params)
            assert.equal('{"k":1}', got.body)
            assert.equal("application/json", got.content_type)
            assert.same({ "a", "b" }, got.x)
            assert.equal("7", got.line)
            assert.equal("INFO", got.cseq_method)
            assert.is_true(got.cseq >= 1)
            assert.is_true(#got.call_id >= 16)
        end)
    end)

    describe(":reply()", function()
        it("sends status, reason, headers and body that the client sees", function()
            h.run(function()
                local a, b = h.endpoint(), h.endpoint()
                a:on("MESSAGE", function(req)
                    req:reply(202, "Queued For Later", {
                        ["X-Single"] = "one",
                        ["X-Many"] = { "m1", "m2" },
                        "X-Line: raw line",
                    }, "reply body")
                end)
                local res, err = b:request { method = "MESSAGE", uri = a:uri(), body = "x", timeout = 2 }
                assert(res, err)
                assert.equal(202, res.status)
                assert.equal("Queued For Later", res.reason)
                assert.equal("one", res:header("X-Single"))
                assert.same({ "m1", "m2" }, res:header_all("X-Many"))
                assert.equal("raw line", res:header("X-Line"))
                assert.equal("reply body", res.body)
                assert.equal("text/plain", res.content_type)
                assert.equal("10", res:header("Content-Length"))
                assert.matches("^%x+$", res.to.tag)    -- a To tag was added
            end, 2)
        end)

        it("keeps a Content-Type given in the headers", function()
            h.run(function()
                local a, b = h.endpoint(), h.endpoint()
                a:on("MESSAGE", function(req)
                    req:reply(200, "OK", { ["Content-Type"] = "application/pidf+xml" }, "<x/>")
                end)
                local res = assert(b:request { method = "MESSAGE", uri = a:uri(), timeout = 2 })
                assert.equal("application/pidf+xml", res.content_type)
                assert.same({ "application/pidf+xml" }, res:header_all("Content-Type"))
                assert.equal("<x/>", res.body)
            end, 2)
        end)

        it("answers a raw UDP request on the wire: Via with received/rport, To tag, body", function()
            if not has_socket then return pending(NO_SOCKET) end
            local resp
            h.run(function()
                local ep = h.endpoint { user_agent = "WireUA/2" }
                local port = ep:addresses()[1].port
                local u, myport = raw_udp()
                ep:on("MESSAGE", function(req)
                    req:reply(200, "Fine", { ["X-Reply"] = "yes" }, "body!")
                end)
                assert(u:sendto(compact_message(port, myport, "z9hG4bKwire"), "127.0.0.1", port))
                resp = parse(assert(recv(u)))
                resp.myport = myport
                u:close()
            end, 3)
            local hd = resp.headers
            assert.equal(200, resp.status)
            assert.equal("Fine", resp.reason)
            assert.equal(2, #hd.v)                    -- both Vias, compact as sent
            assert.equal("SIP/2.0/UDP 127.0.0.1:" .. resp.myport ..
                ";branch=z9hG4bKwire;rport=" .. resp.myport .. ";received=127.0.0.1", hd.v[1])
            assert.equal("SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKupstream", hd.v[2])
            assert.matches("^<sip:bob@127%.0%.0%.1>;tag=%x+$", hd.t[1])
            assert.same({ '"Alice A" <sip:alice@example.com>;tag=abc123' }, hd.f)
            assert.same({ "raw-call-1@example.com" }, hd.i)
            assert.same({ "42 MESSAGE" }, hd.cseq)
            assert.same({ "yes" }, hd["x-reply"])
            assert.same({ "WireUA/2" }, hd.server)
            assert.same({ "5" }, hd["content-length"])
            assert.equal("body!", resp.body)
        end)

        it("uses the standard reason phrase when none is given", function()
            h.run(function()
                local a, b = h.endpoint(), h.endpoint()
                a:on("MESSAGE", function(req) req:reply(486) end)
                local res, err, code, resp = b:request { method = "MESSAGE", uri = a:uri(), timeout = 2 }
                assert.is_nil(res)
                assert.equal("486 Busy Here", err)
                assert.equal(486, code)
                assert.equal("Busy Here", resp.reason)
            end, 2)
        end)

        it("sends a provisional response before the final one", function()
            local state
            h.run(function()
                local a, b = h.endpoint(), h.endpoint()
                a:on("MESSAGE", function(req)
                    assert(req:reply(180, "Working"))
                    state = { replied = req.replied, status = req.status }
                    sip.sleep(0.05)
                    req:reply(200)
                    state.final = { replied = req.replied, status = req.status }
                end)
                local res = assert(b:request { method = "MESSAGE", uri = a:uri(), timeout = 2 })
                assert.equal(200, res.status)
                assert.equal(180, res.provisional)
            end, 2)
            assert.same({ replied = false, status = 180,
                          final = { replied = true, status = 200 } }, state)
        end)

        it("returns nil, message, EALREADY when replying twice", function()
            local second
            h.run(function()
                local a, b = h.endpoint(), h.endpoint()
                a:on("MESSAGE", function(req)
                    req:reply(200, "First")
                    second = table.pack(req:reply(500, "Second"))
                end)
                local res = assert(b:request { method = "MESSAGE", uri = a:uri(), timeout = 2 })
                assert.equal("First", res.reason)
            end, 2)
            assert.is_nil(second[1])
            assert.matches("already answered", second[2], 1, true)
            assert.equal(sip.EALREADY, second[3])
        end)

        it("answers 500 when an unanswered request is closed", function()
            local after_close
            h.run(function()
                local a, b = h.endpoint(), h.endpoint()
                a:on("MESSAGE", function(req)
                    req:close()
                    after_close = table.pack(req:reply(200))
                end)
                local _, err, code = b:request { method = "MESSAGE", uri = a:uri(), timeout = 2 }
                assert.equal("500 Server Internal Error", err)
                assert.equal(500, code)
            end, 2)
            assert.is_nil(after_close[1])
            assert.equal(sip.ENOTCONN, after_close[3])
        end)

        it("raises for a status code out of range or not an integer", function()
            local errs = {}
            h.run(function()
                local a, b = h.endpoint(), h.endpoint()
                a:on("MESSAGE", function(req)
                    for _, code in ipairs { 99, 700, 0, "abc", 200.5 } do
                        local ok, err = pcall(function() return req:reply(code) end)
                        errs[#errs + 1] = ok and "no error" or err
                    end
                    req:reply(200, "Still Fine")
                end)
                local res = assert(b:request { method = "MESSAGE", uri = a:uri(), timeout = 2 })
                assert.equal("Still Fine", res.reason)
            end, 2)
            assert.equal(5, #errs)
            assert.matches("bad argument #1 to 'reply' (status 100-699 expected, got 99)", errs[1], 1, true)
            assert.matches("status 100-699 expected, got 700", errs[2], 1, true)
            assert.matches("status 100-699 expected, got 0", errs[3], 1, true)
            assert.matches("bad argument #1 to 'reply'", errs[4], 1, true)
            assert.matches("bad argument #1 to 'reply'", errs[5], 1, true)
        end)

        it("raises for CR/LF in the reason or in headers, so nothing is injected", function()
            local errs = {}
            h.run(function()
                local a, b = h.endpoint(), h.endpoint()
                a:on("MESSAGE", function(req)
                    local bad = {
                        { 200, "OK\r\nX-Evil: 1" },
                        { 200, "OK", { ["X-A"] = "a\r\nX-Evil: 1" } },
                        { 200, "OK", { ["X-A"] = { "fine", "b\nX-Evil: 1" } } },
                        { 200, "OK", { ["X-Evil: 1\r\nX-A"] = "a" } },
                        { 200, "OK", { ["X A"] = "a" } },
                        { 200, "OK", { "X-Line: a\r\nX-Evil: 1" } },
                        { 200, "OK", { "no colon here" } },
                        { 200, "OK", "X-A: a" },
                        { 200, "OK", nil, 42 },
                    }
                    for _, args in ipairs(bad) do
                        local ok, err = pcall(function()
                            return req:reply(table.unpack(args, 1, 4))
                        end)
                        errs[#errs + 1] = ok and "no error" or err
                    end
                    req:reply(200, "Clean", { ["X-A"] = "a" })
                end)
                local res = assert(b:request { method = "MESSAGE", uri = a:uri(), timeout = 2 })
                assert.equal("Clean", res.reason)
                assert.equal("a", res:header("X-A"))
                assert.is_nil(res:header("X-Evil"))
            end, 2)
            assert.equal(9, #errs)
            assert.matches("bad argument #2 to 'reply' (reason has CR/LF)", errs[1], 1, true)
            assert.matches("reply: headers: bad value for X-A", errs[2], 1, true)
            assert.matches("reply: headers: bad value for X-A", errs[3], 1, true)
            assert.matches("reply: headers: bad header name", errs[4], 1, true)
            assert.matches("reply: headers: bad header name X A", errs[5], 1, true)
            assert.matches("reply: headers: bad header line", errs[6], 1, true)
            assert.matches("reply: headers: bad header line no colon here", errs[7], 1, true)
            assert.matches("reply: headers: table expected, got string", errs[8], 1, true)
            assert.matches("reply: body: string expected, got number", errs[9], 1, true)
        end)

        it("runs the handler once while UDP retransmissions are absorbed", function()
            if not has_socket then return pending(NO_SOCKET) end
            local calls = 0
            h.run(function()
                local ep = h.endpoint()
                local port = ep:addresses()[1].port
                local u, myport = raw_udp()
                ep:on("MESSAGE", function(req)
                    calls = calls + 1
                    sip.sleep(0.15)
                    req:reply(200, "After Thinking")
                end)
                local msg = compact_message(port, myport, "z9hG4bKretx")
                assert(u:sendto(msg, "127.0.0.1", port))
                sip.sleep(0.05)
                assert(u:sendto(msg, "127.0.0.1", port))     -- retransmission
                local first = parse(assert(recv(u)))
                assert.equal("After Thinking", first.reason)
                assert.is_nil(recv(u, 0.1))                   -- nothing else
                -- a late retransmission gets the final response again
                assert(u:sendto(msg, "127.0.0.1", port))
                local again = parse(assert(recv(u)))
                assert.equal(200, again.status)
                assert.same(first.headers.t, again.headers.t)
                u:close()
            end, 3)
            assert.equal(1, calls)
        end)
    end)
end)


describe("luasip.endpoint", function()
    describe(":request()", function()
        it("sends OPTIONS, MESSAGE and INFO and returns the final response", function()
            local seen = {}
            h.run(function()
                local a, b = h.endpoint { transports = { "udp", "tcp" } }, h.endpoint { transports = { "udp", "tcp" } }
                a:on("request", function(req)
                    seen[#seen + 1] = { req.method, req.body, req:header("X-Test"), req.transport }
                    req:reply(200, req.method .. " done", { ["X-Echo"] = req.body })
                end)
                for i, m in ipairs { "OPTIONS", "MESSAGE", "INFO" } do
                    local tp = i == 2 and "tcp" or "udp"
                    local res, err = b:request { method = m, uri = a:uri(tp),
                        headers = { ["X-Test"] = "t" .. i }, body = "b" .. i, timeout = 2 }
                    assert(res, err)
                    assert.equal(200, res.status)
                    assert.equal(m .. " done", res.reason)
                    assert.equal("b" .. i, res:header("X-Echo"))
                    assert.equal(m, res.cseq_method)
                    assert.is_true(res.done)
                end
            end, 3)
            assert.same({
                { "OPTIONS", "b1", "t1", "udp" },
                { "MESSAGE", "b2", "t2", "tcp" },
                { "INFO", "b3", "t3", "udp" },
            }, seen)
        end)

        it("sends from the endpoint's own UDP port", function()
            local src
            h.run(function()
                local a, b = h.endpoint(), h.endpoint()
                a:on("OPTIONS", function(req) src = req.source_port; req:reply(200) end)
                assert(b:request { method = "OPTIONS", uri = a:uri(), timeout = 2 })
                assert.equal(b:addresses()[1].port, src)
            end, 2)
        end)

        it("returns nil, 'timeout', ETIMEDOUT within the timeout when nobody answers", function()
            if not has_socket then return pending(NO_SOCKET) end
            h.run(function()
                local ep = h.endpoint()
                local u, port = raw_udp()          -- receives, never answers
                local t0 = sip.now()
                local res, err, code = ep:request { method = "OPTIONS",
                    uri = "sip:silent@127.0.0.1:" .. port, timeout = 0.3 }
                local dt = sip.now() - t0
                assert.is_nil(res)
                assert.equal("timeout", err)
                assert.equal(sip.ETIMEDOUT, code)
                assert.is_true(dt >= 0.29 and dt < 0.6, "returned after " .. dt)
                local raw = assert(recv(u, 0.1), "the request never went out")
                assert.matches("^OPTIONS sip:silent@127%.0%.0%.1:" .. port .. " SIP/2%.0\r\n", raw)
                u:close()
            end, 3)
        end)

        it("returns nil, message, ECONNREFUSED for a closed TCP port", function()
            if not has_socket then return pending(NO_SOCKET) end
            h.run(function()
                local ep = h.endpoint { transports = { "tcp" } }
                local port = closed_tcp_port()
                local t0 = sip.now()
                local res, err, code = ep:request { method = "OPTIONS",
                    uri = "sip:nobody@127.0.0.1:" .. port .. ";transport=tcp", timeout = 5 }
                assert.is_nil(res)
                assert.equal(sip.ECONNREFUSED, code)
                assert.matches("^request: ", err)
                assert.is_true(sip.now() - t0 < 1, "took " .. (sip.now() - t0))
            end, 3)
        end)

        it("returns nil, status text, status and the response for a failure", function()
            h.run(function()
                local a, b = h.endpoint(), h.endpoint()
                a:on("MESSAGE", function(req) req:reply(404, "Nobody Here", { ["X-Why"] = "gone" }) end)
                local res, err, code, resp = b:request { method = "MESSAGE", uri = a:uri(), timeout = 2 }
                assert.is_nil(res)
                assert.equal("404 Nobody Here", err)
                assert.equal(404, code)
                assert.equal(404, resp.status)
                assert.equal("gone", resp:header("X-Why"))
            end, 2)
        end)

        it("raises for bad arguments and header injection", function()
            h.run(function()
                local a = h.endpoint()
                local uri = a:uri()
                local function req(opts) return function() a:request(opts) end end
                assert.has_error(req(nil), "bad argument #1 to 'request' (table expected, got nil)")
                assert.has_error(req { method = "options", uri = uri },
                    "luasip.request: method: SIP method expected, got options")
                assert.has_error(req { method = "INVITE", uri = uri },
                    "luasip.request: method: use ep:call() for INVITE")
                assert.has_error(req { method = "OPTIONS", uri = "tel:+123" },
                    "luasip.request: uri: SIP URI expected, got tel:+123")
                assert.has_error(req { method = "OPTIONS", uri = uri .. "\r\nX-Evil: 1" })
                assert.has_error(req { method = "OPTIONS", uri = uri, from = "sip:a@b>\r\nX-Evil: 1" })
                assert.has_error(req { method = "OPTIONS", uri = uri, to = "<sip:x@y>" })
                assert.has_error(req { method = "OPTIONS", uri = uri, from = "not a uri" })
                assert.has_error(req { method = "OPTIONS", uri = uri, headers = { ["X-A"] = "1\r\nX-Evil: 1" } })
                assert.has_error(req { method = "OPTIONS", uri = uri, body = {} })
            end, 2)
            assert.has_error(function()
                local ep = assert(sip.endpoint { listen = "udp:127.0.0.1:0" })
                local ok, err = pcall(ep.request, ep, { method = "OPTIONS", uri = ep:uri() })
                ep:close()
                error(err)
            end, "luasip.request: must be called from a task (use luasip.spawn)")
        end)
    end)
end)
