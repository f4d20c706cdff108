-- spec/malformed_spec.lua: raw bytes from a LuaSocket client (Debian
-- lua-socket) to an endpoint over UDP and TCP; what comes back on the wire,
-- and that the endpoint still serves a luasip peer afterwards.
--
-- Sockets are non-blocking and polled with luasip.sleep, so the loop runs
-- while the raw client waits. A request with a malformed start line gets
-- 400, one with an unknown SIP version 505 (csrc/badstart.c; libre alone
-- drops both), a TCP connection is closed after either. Requests that
-- parse but lack what RFC 3261 8.1.1 requires get 400 with a reason naming
-- the problem, where a response can be routed.
local h = require "spec.helper"
local sip = h.sip

local has_socket, socket = pcall(require, "socket")

local DROP_WAIT = 0.5        -- seconds of silence that count as a drop
local REPLY_WAIT = 2         -- at most this long for an expected reply

local seq = 0


-- a request with unique branch, tag and Call-ID; t overrides a header
-- (false removes it), t.start the start line, t.body, t.clen
local function req(tp, t)
    t = t or {}
    seq = seq + 1
    local method = t.method or "OPTIONS"
    local hdrs = {
        { "Via", ("SIP/2.0/%s 127.0.0.1:9;branch=z9hG4bKraw%d.%d;rport"):format(
            tp:upper(), seq, os.time()) },
        { "Max-Forwards", "70" },
        { "From", ("<sip:raw@127.0.0.1>;tag=raw%d"):format(seq) },
        { "To", "<sip:bob@127.0.0.1>" },
        { "Call-ID", ("raw%d.%d@127.0.0.1"):format(seq, os.time()) },
        { "CSeq", "1 " .. method },
    }
    local lines = { t.start or (method .. " sip:bob@127.0.0.1 SIP/2.0") }
    for _, hd in ipairs(hdrs) do
        local v = t[hd[1]]
        if v == nil then v = hd[2] end
        if v then lines[#lines + 1] = hd[1] .. ": " .. v end
    end
    local body = t.body or ""
    if t.clen ~= false then
        lines[#lines + 1] = "Content-Length: " .. (t.clen or #body)
    end
    return table.concat(lines, "\r\n") .. "\r\n\r\n" .. body
end


local function addr(ep, tp)
    for _, a in ipairs(ep:addresses()) do
        if a.transport == tp then return a end
    end
    error("no " .. tp .. " address")
end


-- send bytes in one datagram; collect datagrams until the first one
-- (want_reply) or for DROP_WAIT seconds
local function udp_send(ep, bytes, want_reply)
    local a = addr(ep, "udp")
    local u = assert(socket.udp())
    assert(u:setpeername(a.host, a.port))
    u:settimeout(0)
    assert(u:send(bytes))
    local got = {}
    local dl = sip.now() + (want_reply and REPLY_WAIT or DROP_WAIT)
    while sip.now() < dl do
        local d = u:receive()
        if d then
            got[#got + 1] = d
            if want_reply then break end
        else
            sip.sleep(0.01)
        end
    end
    u:close()
    return got
end


-- connect, send each chunk of bytes; read until a full response arrives
-- (want_reply), the peer closes, or DROP_WAIT passes; opts.close closes
-- our side right after sending. Returns received text, peer closed?
local function tcp_send(ep, chunks, want_reply, opts)
    opts = opts or {}
    local a = addr(ep, "tcp")
    local t = assert(socket.tcp())
    t:settimeout(1)                      -- loopback connect completes at once
    assert(t:connect(a.host, a.port))
    t:settimeout(0)
    if type(chunks) == "string" then chunks = { chunks } end
    for i, c in ipairs(chunks) do
        assert(t:send(c))
        if i < #chunks then sip.sleep(0.05) end
    end
    if opts.close then t:close(); return "", false end
    local buf, closed = "", false
    local dl = sip.now() + (want_reply and REPLY_WAIT or DROP_WAIT)
    while sip.now() < dl do
        local d, err, part = t:receive(4096)
        d = d or part
        if d and #d > 0 then buf = buf .. d end
        if err == "closed" then closed = true; break end
        if want_reply and buf:find("\r\n\r\n", 1, true) then break end
        sip.sleep(0.01)
    end
    if opts.keep then return buf, closed, t end
    t:close()
    return buf, closed
end


local function status_line(msg)
    return msg and msg:match("^[^\r\n]*")
end


-- the endpoint still answers an OPTIONS from a luasip peer over tp
local function assert_serves(peer, ep, tp)
    local res, err, code = peer:request { method = "OPTIONS", uri = h.uri(ep, "bob", tp), timeout = 2 }
    assert.is_truthy(res, ("OPTIONS over %s after the bad message: %s %s"):format(
        tp, tostring(err), tostring(code)))
    assert.equal(200, res.status)
end


-- one scenario: endpoint b (udp+tcp) with counting handlers, peer a
local function scenario(fn)
    h.run(function()
        local b = h.endpoint { transports = { "udp", "tcp" }, user = "bob" }
        local a = h.endpoint { transports = { "udp", "tcp" }, user = "alice" }
        local seen = { OPTIONS = 0, INVITE = 0 }
        b:on("OPTIONS", function(r)
            seen.OPTIONS = seen.OPTIONS + 1
            seen.max_forwards = r.max_forwards
            r:reply(200)
        end)
        b:on("INVITE", function(call)
            seen.INVITE = seen.INVITE + 1
            call:reject(486)
        end)
        fn(a, b, seen)
        -- let the last transactions finish and free their objects before
        -- h.run closes the endpoints (see call_spec.lua "teardown")
        sip.sleep(0.05)
        collectgarbage()
        collectgarbage()
    end, 15)
end


-- cases that are routable: the bytes, and the expected status line
local BAD_REQUESTS = {
    { "a missing Call-ID", { ["Call-ID"] = false }, "SIP/2.0 400 Missing Call-ID" },
    { "a missing From", { From = false }, "SIP/2.0 400 Missing or Bad From" },
    { "a missing To", { To = false }, "SIP/2.0 400 Missing or Bad To" },
    { "a missing CSeq", { CSeq = false }, "SIP/2.0 400 Missing or Bad CSeq" },
    { "a CSeq method mismatch", { CSeq = "1 INVITE" }, "SIP/2.0 400 CSeq Method Mismatch" },
    { "a non-numeric Max-Forwards", { ["Max-Forwards"] = "abc" }, "SIP/2.0 400 Bad Max-Forwards" },
    { "an INVITE without From", { method = "INVITE", From = false }, "SIP/2.0 400 Missing or Bad From" },
    { "a CSeq number above 2^32-1", { CSeq = "4294967296 OPTIONS" }, "SIP/2.0 400 Missing or Bad CSeq" },
    { "a 20-digit CSeq number", { CSeq = "36893488147419103232 OPTIONS" }, "SIP/2.0 400 Missing or Bad CSeq" },
    { "an unbracketed IPv6 Request-URI", { start = "OPTIONS sip:2001:db8::10 SIP/2.0" },
      "SIP/2.0 400 Bad Request-URI" },
    { "a Request-URI port that is no number", { start = "OPTIONS sip:bob@127.0.0.1:50x SIP/2.0" },
      "SIP/2.0 400 Bad Request-URI" },
}

-- requests libre's parser drops by itself: bad start line or version
local BAD_START = {
    { "an unknown SIP version", "OPTIONS sip:bob@127.0.0.1 SIP/3.0", "SIP/2.0 505 Version Not Supported" },
    { "a start line of one word", "HELLO", "SIP/2.0 400 Bad Request-Line" },
    { "LWS inside the Request-URI", "OPTIONS sip:bob@127.0.0.1; lr SIP/2.0", "SIP/2.0 400 Bad Request-Line" },
    { "two SP between elements", "OPTIONS  sip:bob@127.0.0.1 SIP/2.0", "SIP/2.0 400 Bad Request-Line" },
    { "SP at the end of the start line", "OPTIONS sip:bob@127.0.0.1 SIP/2.0 ", "SIP/2.0 400 Bad Request-Line" },
    { "a version that is no SIP-Version", "OPTIONS sip:bob@127.0.0.1 HTTP/1.1", "SIP/2.0 400 Bad Request-Line" },
}


describe("malformed input", function()
    before_each(function()
        if not has_socket then
            pending("needs LuaSocket (Debian lua-socket) for the raw client")
        end
    end)

    for _, tp in ipairs { "udp", "tcp" } do
        local send = tp == "udp"
            and function(ep, bytes, want) local d = udp_send(ep, bytes, want); return d[1], #d end
            or function(ep, bytes, want) local d = tcp_send(ep, bytes, want); return d ~= "" and d or nil, d ~= "" and 1 or 0 end

        describe("over " .. tp, function()
            for _, case in ipairs(BAD_REQUESTS) do
                it("answers " .. case[3]:sub(9) .. " to " .. case[1] .. " and goes on serving", function()
                    if not has_socket then return end
                    scenario(function(a, b, seen)
                        local reply = send(b, req(tp, case[2]), true)
                        assert.equal(case[3], status_line(reply))
                        -- the 400 is routed by the request's Via and
                        -- carries its Call-ID and CSeq where present
                        assert.matches("\r\nVia: SIP/2.0/" .. tp:upper(), reply, 1, true)
                        if case[2].CSeq == nil then
                            assert.matches("\r\nCSeq: 1 ", reply, 1, true)
                        end
                        assert.same({ OPTIONS = 0, INVITE = 0 }, { OPTIONS = seen.OPTIONS, INVITE = seen.INVITE })
                        assert_serves(a, b, tp)
                        assert.equal(1, seen.OPTIONS)
                    end)
                end)
            end

            it("drops garbage bytes without a reply", function()
                if not has_socket then return end
                scenario(function(a, b)
                    local reply = send(b, "\1\2\3 garbage \255\254\r\n\r\n", false)
                    assert.is_nil(reply)
                    assert_serves(a, b, tp)
                end)
            end)

            for _, case in ipairs(BAD_START) do
                it("answers " .. case[3]:sub(9) .. " to " .. case[1] .. " and goes on serving", function()
                    if not has_socket then return end
                    scenario(function(a, b, seen)
                        local reply, closed
                        if tp == "udp" then
                            reply = udp_send(b, req(tp, { start = case[2] }), true)[1]
                        else
                            -- the whole answer, then libre closes the stream
                            reply, closed = tcp_send(b, req(tp, { start = case[2] }), false)
                            assert.is_true(closed)
                        end
                        assert.equal(case[3], status_line(reply))
                        assert.matches("\r\nVia: SIP/2.0/" .. tp:upper() .. " 127.0.0.1:9;branch=z9hG4bKraw", reply, 1, true)
                        assert.matches(";received=127.0.0.1", reply, 1, true)
                        assert.matches("\r\nCSeq: 1 OPTIONS\r\n", reply, 1, true)
                        assert.matches("\r\nCall-ID: raw", reply, 1, true)
                        assert.matches("\r\nTo: <sip:bob@127.0.0.1>;tag=", reply, 1, true)
                        local tail = "\r\nContent-Length: 0\r\n\r\n"
                        assert.equal(tail, reply:sub(-#tail))
                        assert.equal(0, seen.OPTIONS)
                        assert_serves(a, b, tp)
                        assert.equal(1, seen.OPTIONS)
                        -- and a raw client gets 200 for a good request
                        assert.equal("SIP/2.0 200 OK", status_line(send(b, req(tp), true)))
                    end)
                end)
            end

            it("never answers an ACK with a bad version or start line", function()
                if not has_socket then return end
                scenario(function(a, b)
                    local reply = send(b, req(tp, { method = "ACK", start = "ACK sip:bob@127.0.0.1 SIP/3.0" }), false)
                    assert.is_nil(reply)
                    reply = send(b, req(tp, { method = "ACK", start = "ACK  sip:bob@127.0.0.1 SIP/2.0" }), false)
                    assert.is_nil(reply)
                    assert_serves(a, b, tp)
                end)
            end)

            it("drops a bad start line without Via or headers", function()
                if not has_socket then return end
                scenario(function(a, b, seen)
                    local reply = send(b, req(tp, { start = "OPTIONS sip:bob@127.0.0.1 SIP/3.0", Via = false }), false)
                    assert.is_nil(reply)
                    reply = send(b, "HELLO\r\n\r\n", false)
                    assert.is_nil(reply)
                    assert.equal(0, seen.OPTIONS)
                    assert_serves(a, b, tp)
                end)
            end)

            it("reads a version in lower case (RFC 3261 7.1: case-insensitive)", function()
                if not has_socket then return end
                scenario(function(_, b, seen)
                    local reply = send(b, req(tp, { start = "OPTIONS sip:bob@127.0.0.1 sip/2.0" }), true)
                    assert.equal("SIP/2.0 200 OK", status_line(reply))
                    assert.equal(1, seen.OPTIONS)
                end)
            end)

            it("drops a request whose From libre cannot parse", function()
                if not has_socket then return end
                scenario(function(a, b, seen)
                    local reply = send(b, req(tp, { From = "no uri here" }), false)
                    assert.is_nil(reply)
                    assert.equal(0, seen.OPTIONS)
                    assert_serves(a, b, tp)
                end)
            end)

            if tp == "udp" then
                it("drops a request without Via: no address to answer to", function()
                    if not has_socket then return end
                    scenario(function(a, b, seen)
                        local reply = send(b, req(tp, { Via = false }), false)
                        assert.is_nil(reply)
                        assert.equal(0, seen.OPTIONS)
                        assert_serves(a, b, tp)
                    end)
                end)
            else
                it("answers 400 Missing Via to a request without Via over its connection", function()
                    if not has_socket then return end
                    scenario(function(a, b, seen)
                        local reply = send(b, req(tp, { Via = false }), true)
                        assert.equal("SIP/2.0 400 Missing Via", status_line(reply))
                        assert.equal(0, seen.OPTIONS)
                        assert_serves(a, b, tp)
                    end)
                end)
            end

            it("never answers a malformed ACK", function()
                if not has_socket then return end
                scenario(function(a, b)
                    local reply = send(b, req(tp, { method = "ACK", From = false }), false)
                    assert.is_nil(reply)
                    assert_serves(a, b, tp)
                end)
            end)

            it("passes a request with Max-Forwards 0 to its handler", function()
                if not has_socket then return end
                scenario(function(_, b, seen)
                    local reply = send(b, req(tp, { ["Max-Forwards"] = "0" }), true)
                    assert.equal("SIP/2.0 200 OK", status_line(reply))
                    assert.equal(1, seen.OPTIONS)
                    assert.equal(0, seen.max_forwards)
                end)
            end)

            it("answers a well-formed raw request with 200", function()
                if not has_socket then return end
                scenario(function(_, b, seen)
                    local reply = send(b, req(tp), true)
                    assert.equal("SIP/2.0 200 OK", status_line(reply))
                    assert.equal(1, seen.OPTIONS)
                end)
            end)
        end)
    end

    describe("over tls", function()
        local has_ssl, ssl = pcall(require, "ssl")
        local dir, pem

        setup(function()
            if not has_ssl then return end
            dir = os.tmpname()
            os.remove(dir)
            assert(os.execute(("mkdir -m 700 %q"):format(dir)))
            pem = dir .. "/ck.pem"
            assert(os.execute(("openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 "
                .. "-days 1 -keyout %q -out %q >/dev/null 2>&1 && cat %q >> %q"):format(
                dir .. "/k.pem", dir .. "/c.pem", dir .. "/k.pem", pem)))
            assert(os.execute(("cat %q >> %q"):format(dir .. "/c.pem", pem)))
        end)

        teardown(function()
            if dir then os.execute(("rm -rf %q"):format(dir)) end
        end)

        -- a LuaSec client: handshake, send, read until the peer closes
        local function tls_send(ep, bytes)
            local a = addr(ep, "tls")
            local t = assert(socket.tcp())
            t:settimeout(1)
            assert(t:connect(a.host, a.port))
            t = assert(ssl.wrap(t, { mode = "client", protocol = "any", verify = "none" }))
            t:settimeout(0)
            local dl = sip.now() + REPLY_WAIT
            while true do
                local ok, err = t:dohandshake()
                if ok then break end
                assert(err == "wantread" or err == "wantwrite", err)
                assert(sip.now() < dl, "TLS handshake timed out")
                sip.sleep(0.01)
            end
            assert(t:send(bytes))
            local buf, closed = "", false
            dl = sip.now() + REPLY_WAIT
            while sip.now() < dl do
                local d, err, part = t:receive(4096)
                d = d or part
                if d and #d > 0 then buf = buf .. d end
                if err == "closed" then closed = true; break end
                sip.sleep(0.01)
            end
            t:close()
            return buf, closed
        end

        it("answers 505 to an unknown version and 400 to a bad start line, then closes", function()
            if not (has_socket and has_ssl) then
                pending("needs LuaSec (Debian lua-sec) for a raw TLS client")
                return
            end
            h.run(function()
                local b = h.endpoint { transports = { "tls" }, user = "bob",
                                       tls = { cert = pem, key = pem, verify = false } }
                local seen = 0
                b:on("OPTIONS", function(r) seen = seen + 1; r:reply(200) end)
                local reply, closed = tls_send(b, req("tls", { start = "OPTIONS sip:bob@127.0.0.1 SIP/3.0" }))
                assert.equal("SIP/2.0 505 Version Not Supported", status_line(reply))
                assert.matches("\r\nVia: SIP/2.0/TLS 127.0.0.1:9;branch=z9hG4bKraw", reply, 1, true)
                assert.is_true(closed)
                reply, closed = tls_send(b, req("tls", { start = "HELLO" }))
                assert.equal("SIP/2.0 400 Bad Request-Line", status_line(reply))
                assert.is_true(closed)
                assert.equal(0, seen)
                sip.sleep(0.05)
            end, 10)
        end)
    end)

    describe("over udp", function()
        it("sends the 505 to the Via's sent-by port when there is no rport (RFC 3261 18.2.2)", function()
            if not has_socket then return end
            scenario(function(a, b)
                local back = assert(socket.udp())
                assert(back:setsockname("127.0.0.1", 0))
                back:settimeout(0)
                local _, port = back:getsockname()
                local bytes = req("udp", { start = "OPTIONS sip:bob@127.0.0.1 SIP/3.0",
                    Via = ("SIP/2.0/UDP 127.0.0.1:%d;branch=z9hG4bKnorport%d"):format(port, os.time()) })
                local direct = udp_send(b, bytes, false)
                local got, dl = nil, sip.now() + REPLY_WAIT
                while not got and sip.now() < dl do
                    got = back:receive()
                    if not got then sip.sleep(0.01) end
                end
                back:close()
                assert.same({}, direct)
                assert.equal("SIP/2.0 505 Version Not Supported", status_line(got))
                assert.matches(("\r\nVia: SIP/2.0/UDP 127.0.0.1:%d;branch=z9hG4bKnorport%%d+\r\n"):format(port), got)
                assert_serves(a, b, "udp")
            end)
        end)

        it("answers 400 Bad Content-Length when the body is shorter than Content-Length", function()
            if not has_socket then return end
            scenario(function(a, b, seen)
                local got = udp_send(b, req("udp", { clen = 100, body = "short" }), true)
                assert.equal("SIP/2.0 400 Bad Content-Length", status_line(got[1]))
                assert.equal(0, seen.OPTIONS)
                assert_serves(a, b, "udp")
            end)
        end)
    end)

    describe("over tcp", function()
        it("waits for the rest of a body shorter than Content-Length, then answers", function()
            if not has_socket then return end
            scenario(function(_, b, seen)
                local msg = req("tcp", { clen = 10, body = "0123456789" })
                local cut = #msg - 4
                local reply = tcp_send(b, { msg:sub(1, cut), msg:sub(cut + 1) }, true)
                assert.equal("SIP/2.0 200 OK", status_line(reply))
                assert.equal(1, seen.OPTIONS)
            end)
        end)

        it("drops a stream truncated mid-message and closed, and goes on serving", function()
            if not has_socket then return end
            scenario(function(a, b, seen)
                local msg = req("tcp", { clen = 100, body = "short" })
                tcp_send(b, msg, false, { close = true })
                tcp_send(b, msg:sub(1, 40), false, { close = true })   -- mid start line
                sip.sleep(0.2)
                assert.equal(0, seen.OPTIONS)
                assert_serves(a, b, "tcp")
                -- and a raw client on a new connection
                local reply = tcp_send(b, req("tcp"), true)
                assert.equal("SIP/2.0 200 OK", status_line(reply))
            end)
        end)

        it("closes the connection on a message without Content-Length", function()
            if not has_socket then return end
            scenario(function(a, b, seen)
                local reply, closed = tcp_send(b, req("tcp", { clen = false }), false)
                assert.equal("", reply)
                assert.is_true(closed)
                assert.equal(0, seen.OPTIONS)
                assert_serves(a, b, "tcp")
            end)
        end)

        it("closes the connection after a 505; a new connection works", function()
            if not has_socket then return end
            scenario(function(_, b, seen)
                local reply, closed = tcp_send(b, req("tcp", { start = "OPTIONS sip:bob@127.0.0.1 SIP/3.0" }), false)
                assert.equal("SIP/2.0 505 Version Not Supported", status_line(reply))
                assert.is_true(closed)
                reply = tcp_send(b, req("tcp"), true)
                assert.equal("SIP/2.0 200 OK", status_line(reply))
                assert.equal(1, seen.OPTIONS)
            end)
        end)

        it("keeps the connection after a 400 and answers the next request on it", function()
            if not has_socket then return end
            scenario(function(_, b, seen)
                local reply, closed, t = tcp_send(b, req("tcp", { ["Call-ID"] = false }), true, { keep = true })
                assert.equal("SIP/2.0 400 Missing Call-ID", status_line(reply))
                assert.is_false(closed)
                assert(t:send(req("tcp")))
                local buf, dl = "", sip.now() + REPLY_WAIT
                while sip.now() < dl and not buf:find("\r\n\r\n", 1, true) do
                    local d, _, part = t:receive(4096)
                    buf = buf .. (d or part or "")
                    sip.sleep(0.01)
                end
                t:close()
                assert.equal("SIP/2.0 200 OK", status_line(buf))
                assert.equal(1, seen.OPTIONS)
            end)
        end)

        it("answers 400 to a bad message and 200 to a good one sent in one segment", function()
            if not has_socket then return end
            scenario(function(_, b, seen)
                local bytes = req("tcp", { To = false }) .. req("tcp")
                local t = assert(socket.tcp())
                local a = addr(b, "tcp")
                t:settimeout(1)
                assert(t:connect(a.host, a.port))
                t:settimeout(0)
                assert(t:send(bytes))
                local buf, dl = "", sip.now() + REPLY_WAIT
                while sip.now() < dl and not buf:find("200 OK", 1, true) do
                    local d, _, part = t:receive(4096)
                    buf = buf .. (d or part or "")
                    sip.sleep(0.01)
                end
                t:close()
                assert.equal("SIP/2.0 400 Missing or Bad To", status_line(buf))
                assert.matches("\r\n\r\nSIP/2.0 200 OK\r\n", buf, 1, true)
                assert.equal(1, seen.OPTIONS)
            end)
        end)
    end)
end)


-- the final responses (status >= 200) the endpoint sends to bytes over tp,
-- within REPLY_WAIT; provisional ones are skipped
local function final_replies(ep, tp, bytes)
    local a = addr(ep, tp)
    local s = assert(tp == "udp" and socket.udp() or socket.tcp())
    if tp == "udp" then
        assert(s:setpeername(a.host, a.port))
    else
        s:settimeout(1)
        assert(s:connect(a.host, a.port))
    end
    s:settimeout(0)
    assert(s:send(bytes))
    local buf, finals, dl = "", {}, sip.now() + REPLY_WAIT
    while sip.now() < dl and #finals == 0 do
        local d, err, part = s:receive(tp == "udp" and nil or 65536)
        d = d or part
        if d and #d > 0 then buf = buf .. d end
        for code in buf:gmatch("SIP/2%.0 (%d%d%d) ") do
            if tonumber(code) >= 200 then finals[#finals + 1] = tonumber(code) end
        end
        if err == "closed" then break end
        sip.sleep(0.01)
    end
    s:close()
    return finals, buf
end


describe("bad SDP in an INVITE", function()
    local function sdp_invite(tp, body)
        local r = req(tp, { method = "INVITE", CSeq = "1 INVITE", body = body })
        return (r:gsub("\r\nContent%-Length:", "\r\nContact: <sip:raw@127.0.0.1:9>\r\n" ..
            "Content-Type: application/sdp\r\nContent-Length:", 1))
    end

    local function media_scenario(fn)
        h.run(function()
            local b = h.endpoint { transports = { "udp", "tcp" }, user = "bob" }
            local a = h.endpoint { transports = { "udp", "tcp" }, user = "alice" }
            local results = {}
            b:on("OPTIONS", function(r) r:reply(200) end)
            b:on("INVITE", function(call)
                results[#results + 1] = { call:answer { media = true, timeout = 2 } }
            end)
            fn(a, b, results)
            sip.sleep(0.05)
            collectgarbage()
            collectgarbage()
        end, 15)
    end

    local GOOD = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    local CASES = {
        { "garbage lines", "v=0\r\nthis is not SDP\r\n\r\n%%%\r\n" },
        { "no m= line", GOOD },
        { "an m= line without a port", GOOD .. "m=audio RTP/AVP 0\r\n" },
        { "only a video stream", GOOD .. "m=video 5000 RTP/AVP 31\r\n" },
        { "a bad c= address", "v=0\r\no=- 1 1 IN IP4 x\r\ns=-\r\nc=IN IP4 999.1.1.1\r\nt=0 0\r\n" ..
          "m=audio 5000 RTP/AVP 0\r\n" },
        { "binary bytes", "v=0\r\n" .. ("\0\1\2\255\254"):rep(40) .. "\r\n" },
        -- ~20 KB: 700 formats and as many attributes (TCP only: UDP
        -- datagrams this big exceed libre's receive buffer)
        { "an oversized offer", GOOD .. "m=audio 5000 RTP/AVP " ..
          (function() local t = {} for i = 1, 700 do t[i] = tostring(96 + i % 30) end return table.concat(t, " ") end)()
          .. "\r\n" .. ("a=fmtp:96 x=" .. ("y"):rep(20) .. "\r\n"):rep(700), "tcp" },
    }

    for _, tp in ipairs { "udp", "tcp" } do
        for _, case in ipairs(CASES) do
            if not case[3] or case[3] == tp then
                it(("answers 488 to %s over %s and goes on serving"):format(case[1], tp), function()
                    if not has_socket then pending("needs LuaSocket"); return end
                    media_scenario(function(a, b, results)
                        local finals, buf = final_replies(b, tp, sdp_invite(tp, case[2]))
                        assert.same({ 488 }, finals, buf:sub(1, 300))
                        assert.equal(1, #results)
                        assert.same({ nil, "488 Not Acceptable Here", 488 }, results[1])
                        assert_serves(a, b, tp)
                    end)
                end)
            end
        end
    end
end)
