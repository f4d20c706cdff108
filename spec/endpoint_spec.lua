-- spec/endpoint_spec.lua: luasip.endpoint (csrc/stack.c and the endpoint
-- part of lua/luasip/init.lua): listen parsing and its errors, real
-- ports, IPv6, several endpoints, close, and the default answers and
-- handler dispatch of ep:on(). Every exchange goes over loopback sockets.
local h = require "spec.helper"
local sip = h.sip
local sched = require "luasip.sched"


local function raises(opts, pattern)
    local ok, err = pcall(sip.endpoint, opts)
    assert.is_false(ok, "no error for " .. tostring(opts and opts.listen))
    assert.matches(pattern, err, 1, true)
end


-- collect sched.log lines instead of printing them
local saved_log
local function capture_log()
    local lines = {}
    saved_log = saved_log or sched.log
    sched.log = function(m) lines[#lines + 1] = m end
    return lines
end


local function set_of(list)
    local s = {}
    for item in list:gmatch("[^,%s]+") do s[item] = true end
    return s
end


describe("luasip.endpoint", function()
    local before

    before_each(function()
        before = sip.stats()
    end)

    after_each(function()
        if saved_log then
            sched.log = saved_log
            saved_log = nil
        end
        local now = sip.stats()
        assert.equal(before.tasks, now.tasks)
        assert.equal(before.waiting, now.waiting)
        assert.equal(before.endpoints, now.endpoints)
    end)

    describe("luasip.endpoint()", function()
        it("raises naming listen[i] and the value for an unknown transport", function()
            raises({ listen = { "sctp:1.2.3.4:5060" } },
                'luasip.endpoint: listen[1]: unknown transport "sctp" in "sctp:1.2.3.4:5060"')
            raises({ listen = { "udp:127.0.0.1:0", "quic:127.0.0.1:0" } },
                'luasip.endpoint: listen[2]: unknown transport "quic" in "quic:127.0.0.1:0"')
        end)

        it("raises for a port out of range", function()
            raises({ listen = "udp:127.0.0.1:70000" },
                'luasip.endpoint: listen[1]: port out of range in "udp:127.0.0.1:70000"')
            raises({ listen = "tcp:127.0.0.1:123456" },
                'luasip.endpoint: listen[1]: port out of range in "tcp:127.0.0.1:123456"')
            raises({ listen = "udp:127.0.0.1:-1" },
                'luasip.endpoint: listen[1]: bad address in "udp:127.0.0.1:-1"')
        end)

        it("raises for a bad IP address or a host name", function()
            raises({ listen = "udp:1.2.3.999:5060" },
                'luasip.endpoint: listen[1]: bad IP address "1.2.3.999" in "udp:1.2.3.999:5060"')
            raises({ listen = "udp:localhost:5060" },
                'luasip.endpoint: listen[1]: bad address in "udp:localhost:5060"')
            raises({ listen = "udp:127.0.0.1" },
                'luasip.endpoint: listen[1]: bad address in "udp:127.0.0.1"')
            raises({ listen = "udp" },
                'luasip.endpoint: listen[1]: expected "transport:host:port", got "udp"')
        end)

        it("raises for arguments of the wrong type", function()
            assert.has_error(function() sip.endpoint("udp:127.0.0.1:0") end,
                "bad argument #1 to 'endpoint' (table expected, got string)")
            raises({ listen = 5060 },
                'luasip.endpoint: listen: table of "transport:ip:port" expected, got number')
            raises({}, 'luasip.endpoint: listen: table of "transport:ip:port" expected, got nil')
            raises({ listen = {} }, "luasip.endpoint: listen: at least one address expected")
            raises({ listen = { "udp:127.0.0.1:0", 5060 } },
                "luasip.endpoint: listen[2]: string expected, got number")
            raises({ listen = "udp:127.0.0.1:0", user = 5 },
                "bad option 'user' (string expected, got number)")
            raises({ listen = "udp:127.0.0.1:0", user_agent = {} },
                "bad option 'user_agent' (string expected, got table)")
        end)

        it("raises for a tls listen without certificate options", function()
            raises({ listen = "tls:127.0.0.1:0" }, "luasip.endpoint: tls listen needs tls = {")
        end)

        it("binds port 0 to real ports that addresses() and uri() report", function()
            h.run(function()
                local ep = h.endpoint { transports = { "udp", "tcp" }, user = "alice" }
                local a = ep:addresses()
                assert.equal(2, #a)
                assert.equal("udp", a[1].transport)
                assert.equal("tcp", a[2].transport)
                for _, x in ipairs(a) do
                    assert.equal("127.0.0.1", x.host)
                    assert.is_true(math.type(x.port) == "integer" and x.port > 0 and x.port < 65536)
                end
                assert.equal("sip:alice@127.0.0.1:" .. a[1].port, a[1].uri)
                assert.equal("sip:alice@127.0.0.1:" .. a[2].port .. ";transport=tcp", a[2].uri)
                assert.equal(a[1].uri, ep:uri())
                assert.equal(a[1].uri, ep:uri("udp"))
                assert.equal(a[2].uri, ep:uri("tcp"))
                assert.is_nil(ep:uri("tls"))
                assert.equal("alice", ep.user)
                assert.is_false(ep.closed)

                -- the reported ports are the live ones
                local peer = h.endpoint { transports = { "udp", "tcp" } }
                for _, x in ipairs(a) do
                    local res, err = peer:request { method = "OPTIONS", uri = x.uri, timeout = 2 }
                    assert(res, x.uri .. ": " .. tostring(err))
                    assert.equal(200, res.status)
                    assert.equal(x.transport, res:header("Via"):match("^SIP/2%.0/(%a+)"):lower())
                end
            end, 5)
        end)

        it("accepts listen as a single string", function()
            h.run(function()
                local ep = assert(sip.endpoint { listen = "tcp:127.0.0.1:0" })
                assert.equal(1, #ep:addresses())
                assert.equal("tcp", ep:addresses()[1].transport)
                ep:close()
            end, 2)
        end)

        it("listens on IPv6 [::1]", function()
            local ok = true
            h.run(function()
                local a = sip.endpoint { listen = { "udp:[::1]:0", "tcp:[::1]:0" } }
                if not a then ok = false; return end
                local b = assert(sip.endpoint { listen = { "udp:[::1]:0", "tcp:[::1]:0" } })
                local addr = a:addresses()
                assert.equal("::1", addr[1].host)
                assert.is_true(addr[1].port > 0)
                assert.equal("sip:luasip@[::1]:" .. addr[1].port, a:uri("udp"))
                assert.equal("sip:luasip@[::1]:" .. addr[2].port .. ";transport=tcp", a:uri("tcp"))
                local seen = {}
                a:on("OPTIONS", function(req)
                    seen[#seen + 1] = req.source_ip .. " " .. req.transport
                    req:reply(200)
                end)
                for _, tp in ipairs { "udp", "tcp" } do
                    local res, err = b:request { method = "OPTIONS", uri = a:uri(tp), timeout = 2 }
                    assert(res, err)
                    assert.equal(200, res.status)
                end
                assert.same({ "::1 udp", "::1 tcp" }, seen)
                a:close()
                b:close()
            end, 5)
            if not ok then pending("no IPv6 loopback ([::1]) on this machine") end
        end)

        it("runs several endpoints in one process", function()
            h.run(function()
                local eps, ports = {}, {}
                for i = 1, 4 do
                    eps[i] = h.endpoint { transports = { "udp", "tcp" }, user = "ep" .. i }
                    for _, a in ipairs(eps[i]:addresses()) do
                        assert.is_nil(ports[a.transport .. a.port], "port reused")
                        ports[a.transport .. a.port] = true
                    end
                    local me = i
                    eps[i]:on("MESSAGE", function(req)
                        req:reply(200, "OK", { ["X-Me"] = tostring(me) })
                    end)
                end
                local n = 0
                for i = 1, 4 do
                    for j = 1, 4 do
                        if i ~= j then
                            local tp = (i + j) % 2 == 0 and "udp" or "tcp"
                            local res, err = eps[i]:request { method = "MESSAGE",
                                uri = eps[j]:uri(tp), body = "hi", timeout = 2 }
                            assert(res, err)
                            assert.equal(tostring(j), res:header("X-Me"))
                            n = n + 1
                        end
                    end
                end
                assert.equal(12, n)
            end, 8)
        end)

        it("returns nil, message, EADDRINUSE for a port already in use", function()
            h.run(function()
                local a = h.endpoint { transports = { "udp", "tcp" } }
                local up, tp = a:addresses()[1].port, a:addresses()[2].port
                local listen = "udp:127.0.0.1:" .. up
                local ep, err, code = sip.endpoint { listen = listen }
                assert.is_nil(ep)
                assert.equal(('endpoint: listen "%s": Address already in use'):format(listen), err)
                assert.equal(sip.EADDRINUSE, code)
                ep, err, code = sip.endpoint { listen = { "udp:127.0.0.1:0", "tcp:127.0.0.1:" .. tp } }
                assert.is_nil(ep)
                assert.matches('listen "tcp:127.0.0.1:' .. tp .. '"', err, 1, true)
                assert.equal(sip.EADDRINUSE, code)
            end, 2)
        end)

        it("sends its user_agent as User-Agent on requests and Server on replies", function()
            h.run(function()
                local a = h.endpoint { user_agent = "probe-ua/1.0" }
                local b = h.endpoint { user_agent = "server-ua/2.0" }
                local seen
                b:on("MESSAGE", function(req)
                    seen = req:header("User-Agent")
                    req:reply(200)
                end)
                local res = assert(a:request { method = "MESSAGE", uri = b:uri(), body = "x" })
                assert.equal("probe-ua/1.0", seen)
                assert.equal("server-ua/2.0", res:header("Server"))
            end, 3)
        end)

        it("raises for a user_agent with CR/LF", function()
            assert.has_error(function()
                sip.endpoint { listen = "udp:127.0.0.1:0", user_agent = "x\r\nX-Evil: 1" }
            end, 'luasip.endpoint: user_agent: no CR/LF allowed, got "x\r\nX-Evil: 1"')
        end)
    end)

    describe(":close()", function()
        it("frees its ports by the next loop turn so they can be bound again", function()
            h.run(function()
                local peer = h.endpoint { transports = { "udp", "tcp" } }
                local a = assert(sip.endpoint { listen = { "udp:127.0.0.1:0", "tcp:127.0.0.1:0" } })
                -- it has answered over UDP and over a TCP connection
                for _, tp in ipairs { "udp", "tcp" } do
                    local res = assert(peer:request { method = "OPTIONS", uri = a:uri(tp), timeout = 2 })
                    assert.equal(200, res.status)
                end
                local up, tp = a:addresses()[1].port, a:addresses()[2].port
                assert.is_true(a:close())
                assert.is_true(a.closed)
                sip.sleep(0.01)
                local b, err = sip.endpoint { listen = { "udp:127.0.0.1:" .. up, "tcp:127.0.0.1:" .. tp } }
                assert(b, err)
                -- and the new endpoint serves on them
                b:on("OPTIONS", function(req) req:reply(200, "New") end)
                for _, tp_ in ipairs { "udp", "tcp" } do
                    local res, rerr = peer:request { method = "OPTIONS", uri = b:uri(tp_), timeout = 2 }
                    assert(res, rerr)
                    assert.equal("New", res.reason)
                end
                b:close()
            end, 5)
        end)

        it("keeps its ports while a response object built on it is alive", function()
            h.run(function()
                local peer = h.endpoint()
                local a = assert(sip.endpoint { listen = "udp:127.0.0.1:0" })
                local res = assert(a:request { method = "OPTIONS", uri = peer:uri(), timeout = 2 })
                local listen = "udp:127.0.0.1:" .. a:addresses()[1].port
                a:close()
                sip.sleep(0.05)
                local b, _, code = sip.endpoint { listen = listen }
                assert.is_nil(b)
                assert.equal(sip.EADDRINUSE, code)
                assert.equal(200, res.status)       -- still readable
                res:close()
                local t0 = sip.now()
                repeat
                    sip.sleep(0.05)
                    b = sip.endpoint { listen = listen }
                until b or sip.now() - t0 > 2
                assert(b, "port still bound 2 s after the response was closed")
                b:close()
            end, 4)
        end)

        it("stops answering: a request to a closed endpoint gets no response", function()
            h.run(function()
                local peer = h.endpoint()
                local a = assert(sip.endpoint { listen = "udp:127.0.0.1:0" })
                local uri = a:uri()
                a:close()
                sip.sleep(0.01)
                local res, err, code = peer:request { method = "OPTIONS", uri = uri, timeout = 0.3 }
                assert.is_nil(res)
                assert.equal("timeout", err)
                assert.equal(sip.ETIMEDOUT, code)
            end, 3)
        end)

        it("answers 503 to new requests while its stack is still in use", function()
            h.run(function()
                local peer = h.endpoint()
                local a = assert(sip.endpoint { listen = "udp:127.0.0.1:0" })
                local res = assert(a:request { method = "OPTIONS", uri = peer:uri(), timeout = 2 })
                a:close()
                sip.sleep(0.01)
                local r, err, code = peer:request { method = "MESSAGE", uri = a:uri(), timeout = 2 }
                assert.is_nil(r)
                assert.equal("503 Service Unavailable", err)
                assert.equal(503, code)
                res:close()
            end, 3)
        end)

        it("is idempotent and later use raises 'endpoint is closed'", function()
            h.run(function()
                local a = assert(sip.endpoint { listen = "udp:127.0.0.1:0" })
                assert.is_true(a:close())
                assert.is_true(a:close())
                assert.has_error(function() a:on("MESSAGE", function() end) end,
                    "luasip.endpoint: endpoint is closed")
                assert.has_error(function()
                    a:request { method = "OPTIONS", uri = "sip:x@127.0.0.1:5060", timeout = 1 }
                end, "luasip.endpoint: endpoint is closed")
            end, 2)
        end)
    end)

    describe(":on()", function()
        it("answers OPTIONS with 200, Allow, Accept and Supported when no handler is set", function()
            h.run(function()
                local a, b = h.endpoint { user_agent = "SpecUA/1.0" }, h.endpoint()
                local res, err = b:request { method = "OPTIONS", uri = a:uri(), timeout = 2 }
                assert(res, err)
                assert.equal(200, res.status)
                assert.equal("OK", res.reason)
                local allow = set_of(res:header("Allow"))
                for _, m in ipairs { "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS" } do
                    assert.is_true(allow[m], "Allow lacks " .. m)
                end
                assert.is_nil(allow.MESSAGE)
                assert.equal("application/sdp", res:header("Accept"))
                assert.is_string(res:header("Supported"))
                assert.equal("SpecUA/1.0", res:header("Server"))
                -- a method with a handler is allowed from then on
                a:on("MESSAGE", function(req) req:reply(200) end)
                res = assert(b:request { method = "OPTIONS", uri = a:uri(), timeout = 2 })
                assert.is_true(set_of(res:header("Allow")).MESSAGE)
            end, 3)
        end)

        it("answers 420 with Unsupported to a Require it does not support (RFC 3261 8.2.2.3)", function()
            h.run(function()
                local a = h.endpoint { supported = { "foo" } }
                local b = h.endpoint()
                local seen = {}
                a:on("MESSAGE", function(req) seen[#seen + 1] = req:header("Require"); req:reply(200) end)
                a:on("INVITE", function(call) seen[#seen + 1] = "INVITE"; call:reject(486) end)
                -- OPTIONS lists what the script declared
                local res = assert(b:request { method = "OPTIONS", uri = a:uri(), timeout = 2 })
                assert.equal("foo", res:header("Supported"))
                -- a tag the endpoint supports passes, any other one is refused
                res = assert(b:request { method = "MESSAGE", uri = a:uri(), body = "x",
                                         headers = { Require = "foo" }, timeout = 2 })
                assert.equal(200, res.status)
                local r, err, code, resp = b:request { method = "MESSAGE", uri = a:uri(), body = "x",
                                                       headers = { Require = "FOO, 100rel ,bar" }, timeout = 2 }
                assert.is_nil(r)
                assert.equal(420, code, err)
                assert.equal("Bad Extension", resp.reason)
                assert.equal("100rel, bar", resp:header("Unsupported"))
                -- an INVITE requiring 100rel never reaches the script
                local call, cerr, ccode = b:call(a:uri(), { headers = { Require = "100rel" }, timeout = 2 })
                assert.is_nil(call)
                assert.equal(420, ccode, cerr)
                assert.same({ "foo" }, seen)
                -- and without it the same endpoint goes on answering
                call, cerr, ccode = b:call(a:uri(), { timeout = 2 })
                assert.is_nil(call)
                assert.equal(486, ccode, cerr)
                assert.same({ "foo", "INVITE" }, seen)
            end, 5)
        end)

        it("leaves Require alone on a proxy endpoint (a proxy forwards it)", function()
            h.run(function()
                local a = h.endpoint { proxy = true }
                local b = h.endpoint()
                a:on("MESSAGE", function(req) req:reply(202) end)
                local res = assert(b:request { method = "MESSAGE", uri = a:uri(), body = "x",
                                               headers = { Require = "100rel" }, timeout = 2 })
                assert.equal(202, res.status)
                res = assert(b:request { method = "OPTIONS", uri = a:uri(), timeout = 2 })
                assert.equal("", res:header("Supported"))
            end, 3)
        end)

        it("raises on a bad supported option naming it", function()
            assert.has_error(function() sip.endpoint { listen = "udp:127.0.0.1:0", supported = "path" } end,
                'luasip.endpoint: supported: list of option tags expected, got string')
            assert.has_error(function() sip.endpoint { listen = "udp:127.0.0.1:0", supported = { "path", "a b" } } end,
                'luasip.endpoint: supported[2]: not an option tag: "a b"')
        end)

        it("answers an unknown method with nil, '405 Method Not Allowed', 405 and Allow", function()
            h.run(function()
                local a, b = h.endpoint(), h.endpoint()
                local res, err, code, resp = b:request { method = "FOO", uri = a:uri(), timeout = 2 }
                assert.is_nil(res)
                assert.equal("405 Method Not Allowed", err)
                assert.equal(405, code)
                assert.equal(405, resp.status)
                assert.is_true(set_of(resp:header("Allow")).OPTIONS)
                assert.is_nil(set_of(resp:header("Allow")).FOO)
            end, 2)
        end)

        it("answers MESSAGE with 405 when no handler is set", function()
            h.run(function()
                local a, b = h.endpoint { transports = { "tcp" } }, h.endpoint { transports = { "tcp" } }
                local res, err, code = b:request { method = "MESSAGE", uri = a:uri("tcp"), body = "x", timeout = 2 }
                assert.is_nil(res)
                assert.equal("405 Method Not Allowed", err)
                assert.equal(405, code)
            end, 2)
        end)

        it("hands every request without its own handler to on('request')", function()
            h.run(function()
                local a, b = h.endpoint(), h.endpoint()
                local seen = {}
                a:on("request", function(req)
                    seen[#seen + 1] = req.method
                    req:reply(202, "Caught " .. req.method)
                end)
                a:on("INFO", function(req) req:reply(200, "Info handler") end)
                for _, m in ipairs { "MESSAGE", "PUBLISH", "OPTIONS", "FOO", "INFO" } do
                    local res, err = b:request { method = m, uri = a:uri(), timeout = 2 }
                    assert(res, err)
                    if m == "INFO" then
                        assert.equal("Info handler", res.reason)
                    else
                        assert.equal(202, res.status)
                        assert.equal("Caught " .. m, res.reason)
                    end
                end
                assert.same({ "MESSAGE", "PUBLISH", "OPTIONS", "FOO" }, seen)
                -- removing handlers brings the default answers back
                a:on("request", nil)
                a:on("INFO", nil)
                local _, _, code = b:request { method = "INFO", uri = a:uri(), timeout = 2 }
                assert.equal(405, code)
                assert.equal(200, assert(b:request { method = "OPTIONS", uri = a:uri(), timeout = 2 }).status)
            end, 3)
        end)

        it("answers 500 when the handler raises, logs it, and keeps serving", function()
            local lines = capture_log()
            h.run(function()
                local a, b = h.endpoint(), h.endpoint()
                a:on("MESSAGE", function(req)
                    if req.body == "boom" then error("handler exploded") end
                    req:reply(200)
                end)
                local res, err, code = b:request { method = "MESSAGE", uri = a:uri(), body = "boom", timeout = 2 }
                assert.is_nil(res)
                assert.equal("500 Server Internal Error", err)
                assert.equal(500, code)
                res = assert(b:request { method = "MESSAGE", uri = a:uri(), body = "fine", timeout = 2 })
                assert.equal(200, res.status)
            end, 3)
            assert.equal(1, #lines)
            assert.matches("handler exploded", lines[1], 1, true)
            assert.matches("stack traceback:", lines[1], 1, true)
        end)

        it("answers 500 with a Warning when the handler returns without replying", function()
            h.run(function()
                local a, b = h.endpoint(), h.endpoint()
                a:on("MESSAGE", function() end)
                local res, err, code, resp = b:request { method = "MESSAGE", uri = a:uri(), timeout = 2 }
                assert.is_nil(res)
                assert.equal("500 Server Internal Error", err)
                assert.equal(500, code)
                assert.matches("handler returned without a reply", resp:header("Warning"), 1, true)
            end, 2)
        end)

        it("runs each request in its own task", function()
            h.run(function()
                local a, b = h.endpoint(), h.endpoint()
                a:on("MESSAGE", function(req)
                    if req.body == "slow" then sip.sleep(0.2) end
                    req:reply(200, "OK " .. req.body)
                end)
                local order = {}
                for _, body in ipairs { "slow", "fast" } do
                    sip.spawn(function()
                        local res = assert(b:request { method = "MESSAGE", uri = a:uri(), body = body, timeout = 2 })
                        order[#order + 1] = res.reason
                    end)
                end
                local t0 = sip.now()
                while #order < 2 and sip.now() - t0 < 2 do sip.sleep(0.01) end
                assert.same({ "OK fast", "OK slow" }, order)
            end, 3)
        end)

        it("uses the endpoint's from option as the default From", function()
            h.run(function()
                local a = h.endpoint()
                local b = h.endpoint { from = "sip:robot@example.com" }
                local from
                a:on("MESSAGE", function(req) from = req.from; req:reply(200) end)
                assert(b:request { method = "MESSAGE", uri = a:uri(), timeout = 2 })
                assert.equal("sip:robot@example.com", from.uri)
                assert.is_string(from.tag)
            end, 2)
        end)

        it("returns the endpoint and raises for bad arguments", function()
            h.run(function()
                local a = h.endpoint()
                assert.equal(a, a:on("MESSAGE", function() end))
                assert.has_error(function() a:on("message", function() end) end,
                    'bad argument #1 to \'on\' (method name ("INVITE", "OPTIONS", ... or "request") expected, got message)')
                assert.has_error(function() a:on(42, function() end) end,
                    'bad argument #1 to \'on\' (method name ("INVITE", "OPTIONS", ... or "request") expected, got 42)')
                assert.has_error(function() a:on("MESSAGE", "reply") end,
                    "bad argument #2 to 'on' (function expected, got string)")
            end, 2)
        end)
    end)
end)
