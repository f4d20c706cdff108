-- spec/auth_spec.lua: digest authentication both ways (csrc/auth.c,
-- lua/luasip/auth.lua): luasip clients answering luasip challenges over
-- loopback, for ep:request (MESSAGE) and ep:call (INVITE), MD5, SHA-256
-- and SHA-512-256, stale nonces, 407, replays and hand-made headers.
local h = require "spec.helper"
local sip = h.sip

local REALM = "luasip.test"
local USERS = { alice = "secret" }
local ALICE = { user = "alice", password = "secret" }


local run = h.run_settled


local function assert_clean()
    local s = h.stats()
    assert.equal(0, s.tasks)
    assert.equal(0, s.waiting)
    assert.equal(0, s.endpoints)
end


local function pair()
    local a = h.endpoint { user = "alice" }
    local b = h.endpoint { user = "bob" }
    return a, b, h.uri(b, "bob")
end


--[[
A server on ep for method (MESSAGE or INVITE) that authenticates every
request and challenges what fails. opts: realm, proxy, algorithms
(offered), accept (accepted), lookup, ttl (number or function(n)),
forbid (403 instead of a new challenge for a wrong password).
Returns a log: n (requests seen), reasons[i] (user name or reason),
authz[i] (the Authorization header as received).
]]
local function serve(ep, method, opts)
    opts = opts or {}
    local log = { n = 0, reasons = {}, authz = {} }
    local hname = opts.proxy and "Proxy-Authorization" or "Authorization"

    local function check(obj)
        log.n = log.n + 1
        local i = log.n
        log.authz[i] = obj:header(hname)
        local user, why = obj:authenticate(opts.lookup or USERS, {
            realm = opts.realm or REALM, proxy = opts.proxy,
            algorithms = opts.accept,
        })
        log.reasons[i] = user or why
        if user then return true end
        local ttl = opts.ttl
        if type(ttl) == "function" then ttl = ttl(i) end
        if why == "wrong password" and opts.forbid then return false, 403 end
        return false, {
            realm = opts.realm or REALM, proxy = opts.proxy,
            algorithms = opts.algorithms, stale = why == "stale",
            nonce_ttl = ttl,
        }
    end

    if method == "INVITE" then
        ep:on("INVITE", function(call)
            local ok, ch = check(call)
            if ok then
                assert(call:answer())
                call:wait_hangup(5)
            elseif ch == 403 then
                call:reject(403)
            else
                assert(call:challenge(ch))
            end
        end)
    else
        ep:on(method, function(req)
            local ok, ch = check(req)
            if ok then return req:reply(200) end
            if ch == 403 then return req:reply(403) end
            assert(req:challenge(ch))
        end)
    end
    return log
end


local function message(a, uri, auth, extra)
    local opts = { method = "MESSAGE", uri = uri, body = "hello", auth = auth, timeout = 3 }
    for k, v in pairs(extra or {}) do opts[k] = v end
    return a:request(opts)
end


-- an Authorization header made by hand (for replays and broken ones)
local function make_authz(p)
    local alg = p.alg or "SHA-256"
    local ha1 = sip.auth.ha1(p.user or "alice", p.realm or REALM, p.password or "secret", alg)
    local ha2 = sip.auth.hash(alg, (p.method or "MESSAGE") .. ":" .. (p.digest_uri or p.uri))
    local fields = {
        ('username="%s"'):format(p.user or "alice"),
        ('realm="%s"'):format(p.realm or REALM),
        ('nonce="%s"'):format(p.nonce),
        ('uri="%s"'):format(p.digest_uri or p.uri),
    }
    local response
    if p.qop == false then
        response = sip.auth.hash(alg, ha1 .. ":" .. p.nonce .. ":" .. ha2)
    else
        local cnonce = p.cnonce or "0a4f113b"
        response = sip.auth.hash(alg, table.concat({ ha1, p.nonce, p.nc, cnonce, "auth", ha2 }, ":"))
        fields[#fields + 1] = ('qop=auth, nc=%s, cnonce="%s"'):format(p.nc, cnonce)
    end
    fields[#fields + 1] = ('response="%s"'):format(response)
    fields[#fields + 1] = "algorithm=" .. alg
    if p.opaque then fields[#fields + 1] = ('opaque="%s"'):format(p.opaque) end
    return "Digest " .. table.concat(fields, ", ")
end


-- a 401 for uri: the challenge table of its first WWW-Authenticate
local function get_challenge(a, uri)
    local r, err, code, resp = message(a, uri)
    assert.is_nil(r, "expected a 401")
    assert.equal(401, code, err)
    return assert(sip.auth.parse(resp:header("WWW-Authenticate"))), resp
end


describe("luasip.auth", function()
    after_each(assert_clean)

    describe("helpers", function()
        it("hashes with MD5, SHA-256 and SHA-512-256", function()
            assert.equal("d41d8cd98f00b204e9800998ecf8427e", sip.auth.hash("MD5", ""))
            assert.equal("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
                         sip.auth.hash("SHA-256", "abc"))
            assert.equal("53048e2681941ef99b2e29b76b4c7dabe4c2d0c634fc6d46e0e2f13107e7af23",
                         sip.auth.hash("SHA-512-256", "abc"))
            assert.has_error(function() sip.auth.hash("SHA-1", "abc") end)
        end)

        it("computes the RFC 7616 section 3.9.1 responses", function()
            local user, realm, pass = "Mufasa", "http-auth@example.org", "Circle of Life"
            local nonce = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
            local cnonce = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
            local expect = {
                MD5 = "8ca523f5e9506fed4657c9700eebdbec",
                ["SHA-256"] = "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
            }
            for alg, resp in pairs(expect) do
                local ha1 = sip.auth.ha1(user, realm, pass, alg)
                local ha2 = sip.auth.hash(alg, "GET:/dir/index.html")
                assert.equal(resp, sip.auth.hash(alg, table.concat(
                    { ha1, nonce, "00000001", cnonce, "auth", ha2 }, ":")))
            end
        end)

        it("parses Digest header values with quoted strings and escapes", function()
            local p = sip.auth.parse('Digest realm="a \\"b\\", c", nonce=abc,qop="auth,auth-int" ,'
                                     .. ' Algorithm=SHA-256, stale=TRUE')
            assert.same({ scheme = "Digest", realm = 'a "b", c', nonce = "abc",
                          qop = "auth,auth-int", algorithm = "SHA-256", stale = "TRUE" }, p)
            assert.same({ nil, "malformed" }, { sip.auth.parse('Digest realm="open') })
            assert.same({ nil, "malformed" }, { sip.auth.parse("Digest realm") })
        end)
    end)

    describe("ep:request()", function()
        for _, alg in ipairs { "MD5", "SHA-256", "SHA-512-256" } do
            it("answers a " .. alg .. "-only challenge and is accepted", function()
                run(function()
                    local a, b, uri = pair()
                    local log = serve(b, "MESSAGE", { algorithms = { alg } })
                    local r, err, code = message(a, uri, ALICE)
                    assert.is_truthy(r, tostring(err) .. " " .. tostring(code))
                    assert.equal(200, r.status)
                    assert.equal(2, log.n)
                    assert.same({ "missing", "alice" }, log.reasons)
                    assert.matches("algorithm=" .. alg .. ",", log.authz[2], 1, true)
                    assert.matches("qop=auth, nc=00000001", log.authz[2], 1, true)
                    assert.matches('uri="' .. uri .. '"', log.authz[2], 1, true)
                end)
            end)
        end

        it("answers the strongest of several challenges for one realm (SHA-256 over MD5)", function()
            run(function()
                local a, b, uri = pair()
                -- MD5 listed first on purpose
                local log = serve(b, "MESSAGE", { algorithms = { "MD5", "SHA-256" } })
                local r = assert(message(a, uri, ALICE))
                assert.equal(200, r.status)
                assert.equal(2, log.n)
                assert.matches("algorithm=SHA-256,", log.authz[2], 1, true)
            end)
        end)

        it("sends one challenge per algorithm with qop, opaque and algorithm", function()
            run(function()
                local a, b, uri = pair()
                serve(b, "MESSAGE")
                local ch, resp = get_challenge(a, uri)
                assert.equal(REALM, ch.realm)
                assert.equal("auth", ch.qop)
                assert.equal("SHA-256", ch.algorithm)
                assert.truthy(ch.opaque)
                assert.matches("^[%w_-]+$", ch.nonce)
                local all = resp:header_all("WWW-Authenticate")
                assert.equal(2, #all)
                assert.matches("algorithm=MD5", all[2], 1, true)
                assert.equal("401", tostring(resp.status))
                -- every challenge has a fresh nonce
                local ch2 = get_challenge(a, uri)
                assert.not_equal(ch.nonce, ch2.nonce)
            end)
        end)

        it("offers MD5 alone to User-Agents in md5_agents (libre 1.1.0 gives up on the rest)", function()
            run(function()
                local b = h.endpoint { user = "bob" }
                local uri = h.uri(b, "bob")
                local seen = {}
                b:on("MESSAGE", function(req)
                    local opts = { realm = REALM }
                    if req:header("X-Agents") == "none" then opts.md5_agents = {} end
                    if req:header("X-Agents") == "sha" then
                        opts.md5_agents, opts.algorithms = { "^baresip" }, { "SHA-256" }
                    end
                    if req:header("X-Agents") == "bad" then
                        local ok, e = pcall(req.challenge, req, { realm = REALM, md5_agents = { 1 } })
                        seen.err = e
                        return req:reply(500)
                    end
                    assert(req:challenge(opts))
                end)
                local function offered(ua, extra)
                    local a = h.endpoint { user = "alice", user_agent = ua }
                    local _, _, code, resp = message(a, uri, nil, { headers = extra })
                    a:close()
                    if code ~= 401 then return code end
                    local algs = {}
                    for i, v in ipairs(resp:header_all("WWW-Authenticate")) do
                        algs[i] = sip.auth.parse(v).algorithm
                    end
                    return algs
                end
                assert.same({ "MD5" }, offered("baresip v1.0.0 (x86_64/linux)"))
                assert.same({ "SHA-256", "MD5" }, offered("baresip v2.3.0 (x86_64/linux)"))
                assert.same({ "SHA-256", "MD5" }, offered("luasip-test/1"))
                assert.same({ "SHA-256", "MD5" }, offered("baresip v1.0.0 (x86_64/linux)", { ["X-Agents"] = "none" }))
                -- never MD5 where the script did not allow it
                assert.same({ "SHA-256" }, offered("baresip v1.0.0 (x86_64/linux)", { ["X-Agents"] = "sha" }))
                assert.equal(500, offered("x", { ["X-Agents"] = "bad" }))
                assert.matches("bad option 'md5_agents' to 'challenge' %(Lua pattern at %[1%] expected, got number%)", seen.err)
            end)
        end)

        it("returns nil, '401 Unauthorized', 401 for a wrong password after exactly one retry", function()
            run(function()
                local a, b, uri = pair()
                local log = serve(b, "MESSAGE")
                local r, err, code, resp = message(a, uri, { user = "alice", password = "wrong" })
                assert.is_nil(r)
                assert.equal("401 Unauthorized", err)
                assert.equal(401, code)
                assert.equal(401, resp.status)
                assert.equal(2, log.n)
                assert.same({ "missing", "wrong password" }, log.reasons)
            end)
        end)

        it("returns nil, '403 Forbidden', 403 when the server forbids a wrong password", function()
            run(function()
                local a, b, uri = pair()
                local log = serve(b, "MESSAGE", { forbid = true })
                local r, err, code = message(a, uri, { user = "alice", password = "wrong" })
                assert.is_nil(r)
                assert.equal("403 Forbidden", err)
                assert.equal(403, code)
                assert.equal(2, log.n)
            end)
        end)

        it("returns the 401 at once without credentials", function()
            run(function()
                local a, b, uri = pair()
                local log = serve(b, "MESSAGE")
                local r, err, code = message(a, uri)
                assert.is_nil(r)
                assert.equal("401 Unauthorized", err)
                assert.equal(401, code)
                assert.equal(1, log.n)
            end)
        end)

        it("re-authenticates after stale=true with the same credentials", function()
            run(function()
                local a, b, uri = pair()
                -- the first nonce expires at once, the next one lives
                local log = serve(b, "MESSAGE", { ttl = function(n) return n == 1 and 0 or 300 end })
                local r = assert(message(a, uri, ALICE))
                assert.equal(200, r.status)
                assert.equal(3, log.n)
                assert.same({ "missing", "stale", "alice" }, log.reasons)
            end)
        end)

        it("puts stale=true in the challenge after an expired nonce", function()
            run(function()
                local a, b, uri = pair()
                b:on("MESSAGE", function(req)
                    req:challenge { realm = REALM, stale = true }
                end)
                local _, resp = get_challenge(a, uri)
                for _, v in ipairs(resp:header_all("WWW-Authenticate")) do
                    assert.equal("true", sip.auth.parse(v).stale)
                end
            end)
        end)

        it("gives up on a server that says stale=true forever", function()
            run(function()
                local a, b, uri = pair()
                local log = serve(b, "MESSAGE", { ttl = 0 })
                local r, err, code = message(a, uri, ALICE)
                assert.is_nil(r)
                assert.equal(401, code, err)
                assert.is_true(log.n >= 3 and log.n <= 7, "requests: " .. log.n)
            end)
        end)

        it("answers a 407 with Proxy-Authorization (proxy = true)", function()
            run(function()
                local a, b, uri = pair()
                local log = serve(b, "MESSAGE", { proxy = true })
                local r = assert(message(a, uri, ALICE))
                assert.equal(200, r.status)
                assert.equal(2, log.n)
                assert.matches("^Digest username=\"alice\"", log.authz[2])
                local _, err, code = message(a, uri)
                assert.equal("407 Proxy Authentication Required", err)
                assert.equal(407, code)
            end)
        end)

        it("answers a proxy realm and then a UAS realm from a list of credentials", function()
            run(function()
                local a, b, uri = pair()
                local n = 0
                b:on("MESSAGE", function(req)
                    n = n + 1
                    local pu, pwhy = req:authenticate({ carol = "proxypw" }, { realm = "proxy.test", proxy = true })
                    if not pu then
                        assert.equal("missing", pwhy)
                        return req:challenge { realm = "proxy.test", proxy = true }
                    end
                    local user = req:authenticate(USERS, { realm = REALM })
                    if not user then return req:challenge { realm = REALM } end
                    req:reply(200, "OK", { ["X-User"] = pu .. "+" .. user })
                end)
                local r = assert(message(a, uri, {
                    { realm = "proxy.test", user = "carol", password = "proxypw" },
                    { realm = REALM, user = "alice", password = "secret" },
                }))
                assert.equal(200, r.status)
                assert.equal("carol+alice", r:header("X-User"))
                assert.equal(3, n)
            end)
        end)

        it("asks a credentials function per realm", function()
            run(function()
                local a, b, uri = pair()
                local log = serve(b, "MESSAGE", { realm = "fn.test" })
                local asked = {}
                local r = assert(message(a, uri, function(realm)
                    asked[#asked + 1] = realm
                    if realm == "fn.test" then return "alice", "secret" end
                end))
                assert.equal(200, r.status)
                assert.same({ "fn.test" }, asked)
                assert.equal(2, log.n)
                -- nil from the function: the 401 is final, no retry
                log.n = 0
                local _, err, code = message(a, uri, function() return nil end)
                assert.equal(401, code, err)
                assert.equal(1, log.n)
            end)
        end)

        it("uses the entry without realm as a fallback, and the exact realm first", function()
            run(function()
                local a, b, uri = pair()
                serve(b, "MESSAGE")
                local r = assert(message(a, uri, {
                    { user = "alice", password = "wrong" },
                    { realm = REALM, user = "alice", password = "secret" },
                }))
                assert.equal(200, r.status)
                r = assert(message(a, uri, { { realm = "other", user = "x", password = "y" },
                                             { user = "alice", password = "secret" } }))
                assert.equal(200, r.status)
            end)
        end)

        it("accepts stored HA1 values from lookup, and a lookup that yields", function()
            run(function()
                local a, b, uri = pair()
                local looked = {}
                local function lookup(user, realm)
                    looked[#looked + 1] = user .. "@" .. realm
                    sip.sleep(0.01)         -- a database round trip
                    if user ~= "alice" then return nil end
                    return { ha1 = sip.auth.ha1(user, realm, "secret"),
                             ha1_sha256 = sip.auth.ha1(user, realm, "secret", "SHA-256") }
                end
                for _, alg in ipairs { "MD5", "SHA-256" } do
                    local log = serve(b, "MESSAGE", { lookup = lookup, algorithms = { alg } })
                    local r = assert(message(a, uri, ALICE))
                    assert.equal(200, r.status)
                    assert.same({ "missing", "alice" }, log.reasons)
                end
                assert.same({ "alice@" .. REALM, "alice@" .. REALM }, looked)
                -- an MD5-only store cannot check a SHA-256 answer
                local log = serve(b, "MESSAGE", {
                    lookup = function(user, realm) return { ha1 = sip.auth.ha1(user, realm, "secret") } end,
                    algorithms = { "SHA-256" },
                })
                local _, _, code = message(a, uri, ALICE)
                assert.equal(401, code)
                assert.same({ "missing", "wrong password" }, log.reasons)
            end)
        end)

        it("says 'unknown user' for a user lookup does not know", function()
            run(function()
                local a, b, uri = pair()
                local log = serve(b, "MESSAGE")
                local _, _, code = message(a, uri, { user = "mallory", password = "x" })
                assert.equal(401, code)
                assert.same({ "missing", "unknown user" }, log.reasons)
            end)
        end)

        it("refuses a replayed nonce count: nil, 'replay'", function()
            run(function()
                local a, b, uri = pair()
                local reasons = {}
                b:on("MESSAGE", function(req)
                    local user, why = req:authenticate(USERS, { realm = REALM })
                    reasons[#reasons + 1] = user or why
                    if user then return req:reply(200) end
                    if why == "replay" then return req:reply(403, "Replay") end
                    req:challenge { realm = REALM }
                end)
                local ch = get_challenge(a, uri)
                local function send(nc)
                    local authz = make_authz { uri = uri, nonce = ch.nonce, opaque = ch.opaque, nc = nc }
                    local r, err, code = message(a, uri, nil, { headers = { Authorization = authz } })
                    return r and r.status or code, err
                end
                assert.equal(200, send("00000001"))
                assert.equal(403, send("00000001"))     -- the same header again
                assert.equal(200, send("00000002"))
                assert.equal(403, send("00000002"))
                assert.equal(403, send("00000001"))     -- lower
                assert.equal(200, send("0000000a"))
                assert.same({ "missing", "alice", "replay", "alice", "replay", "replay", "alice" }, reasons)
            end)
        end)

        it("checks nonce, opaque, uri, algorithm and qop of hand-made headers", function()
            run(function()
                local a, b, uri = pair()
                local last
                b:on("MESSAGE", function(req)
                    local user, why = req:authenticate(USERS, { realm = REALM, algorithms = { "SHA-256", "MD5" } })
                    last = user or why
                    if user then return req:reply(200) end
                    req:challenge { realm = REALM }
                end)
                local ch = get_challenge(a, uri)
                local function try(p)
                    p.uri = uri
                    p.nonce = p.nonce or ch.nonce
                    p.opaque = p.opaque or ch.opaque
                    p.nc = p.nc or "00000001"
                    message(a, uri, nil, { headers = { Authorization = make_authz(p) } })
                    return last
                end
                local tampered = ch.nonce:sub(1, -2) .. (ch.nonce:sub(-1) == "A" and "B" or "A")
                assert.equal("bad nonce", try { nonce = tampered })
                assert.equal("bad nonce", try { nonce = "bm90IG91cnM" })
                assert.equal("bad nonce", try { opaque = "nope" })
                assert.equal("uri mismatch", try { digest_uri = "sip:other@127.0.0.1" })
                assert.equal("bad algorithm", try { alg = "SHA-512-256" })
                assert.equal("malformed", try { qop = false })       -- SHA-256 needs qop
                assert.equal("wrong password", try { password = "nope" })
                assert.equal("alice", try { alg = "MD5", qop = false, nc = "00000002" })  -- RFC 2069
                assert.equal("alice", try { alg = "MD5", nc = "00000003" })
                assert.equal("alice", try { nc = "00000004" })
                -- a nonce made for another realm is not valid here
                assert.equal("bad nonce", try { realm = REALM, nonce = (function()
                    local other
                    b:on("OPTIONS", function(req) req:challenge { realm = "elsewhere" } end)
                    local _, _, _, resp = a:request { method = "OPTIONS", uri = uri }
                    other = sip.auth.parse(resp:header("WWW-Authenticate")).nonce
                    return other
                end)() })
            end)
        end)

        it("accepts another digest uri only with check_uri = false", function()
            run(function()
                local a, b, uri = pair()
                local strict = true
                b:on("MESSAGE", function(req)
                    local user, why = req:authenticate(USERS, { realm = REALM, check_uri = strict })
                    if user then return req:reply(200) end
                    if why == "missing" then return req:challenge { realm = REALM } end
                    req:reply(403, why)
                end)
                local ch = get_challenge(a, uri)
                local function send(nc)
                    local authz = make_authz { uri = uri, digest_uri = uri:gsub("^sip:[^@]*@", "sip:"),
                                               nonce = ch.nonce, opaque = ch.opaque, nc = nc }
                    local r, err = message(a, uri, nil, { headers = { Authorization = authz } })
                    return r and "ok" or err
                end
                assert.equal("403 uri mismatch", send("00000001"))
                strict = false
                assert.equal("ok", send("00000002"))
            end)
        end)

        it("raises on bad auth options", function()
            run(function()
                local a, _, uri = pair()
                local function err_of(auth)
                    local ok, e = pcall(a.request, a, { method = "MESSAGE", uri = uri, auth = auth })
                    assert.is_false(ok)
                    return e
                end
                assert.matches("request: auth: table {user=, password=, realm=}, list of them or function expected, got number",
                               err_of(42), 1, true)
                assert.matches("request: auth.password: string expected, got nil", err_of { user = "a" }, 1, true)
                assert.matches("request: auth.user: string expected, got number",
                               err_of { user = 1, password = "x" }, 1, true)
                assert.matches("request: auth.realm: string expected, got boolean",
                               err_of { user = "a", password = "x", realm = true }, 1, true)
                assert.matches("request: auth[2].password: string expected, got number",
                               err_of { ALICE, { user = "b", password = 2 } }, 1, true)
                assert.matches("request: auth[1]: table expected, got string", err_of { "x" }, 1, true)
                local ok, e = pcall(a.call, a, uri, { auth = "alice:secret" })
                assert.is_false(ok)
                assert.matches("call: auth: table", e, 1, true)
            end)
        end)

        it("raises on bad challenge and authenticate arguments", function()
            run(function()
                local a, b, uri = pair()
                local errs = {}
                b:on("MESSAGE", function(req)
                    local function e(fn, ...)
                        local ok, msg = pcall(fn, req, ...)
                        errs[#errs + 1] = ok and "no error" or msg
                    end
                    e(req.challenge)
                    e(req.challenge, {})
                    e(req.challenge, { realm = "x", algorithms = { "SHA-1" } })
                    e(req.challenge, { realm = "x", nonce_ttl = -1 })
                    e(req.challenge, { realm = "x\r\nX-Evil: 1" })
                    e(req.challenge, { realm = "x", proxy = "yes" })
                    e(req.authenticate, nil, { realm = "x" })
                    e(req.authenticate, USERS, nil)
                    e(req.authenticate, USERS, { realm = 5 })
                    req:reply(200)
                end)
                assert(message(a, uri))
                local expect = {
                    "bad argument #1 to 'challenge' (table expected, got nil)",
                    "bad option 'realm' to 'challenge' (non-empty string without control characters expected, got nil)",
                    "bad option 'algorithms' to 'challenge'",
                    "bad option 'nonce_ttl' to 'challenge' (non-negative number expected, got -1)",
                    "bad option 'realm' to 'challenge'",
                    "bad option 'proxy' to 'challenge' (boolean expected, got yes)",
                    "bad argument #1 to 'authenticate' (function or table expected, got nil)",
                    "bad argument #2 to 'authenticate' (table expected, got nil)",
                    "bad option 'realm' to 'authenticate'",
                }
                assert.equal(#expect, #errs)
                for i, m in ipairs(expect) do assert.matches(m, errs[i], 1, true) end
            end)
        end)

        it("challenges and authenticates in one step with require_auth", function()
            run(function()
                local a, b, uri = pair()
                local results = {}
                b:on("MESSAGE", function(req)
                    local user, why = req:require_auth(USERS, { realm = REALM, algorithms = { "MD5" } })
                    results[#results + 1] = user or why
                    if user then req:reply(200) end
                end)
                assert(message(a, uri, ALICE))
                local _, _, code = message(a, uri, { user = "alice", password = "nope" })
                assert.equal(401, code)
                assert.same({ "missing", "alice", "missing", "wrong password" }, results)
            end)
        end)
    end)

    describe("ep:call()", function()
        for _, algs in ipairs { { "MD5" }, { "SHA-256" }, { "MD5", "SHA-256" } } do
            local name = table.concat(algs, "+")
            it("is answered after a " .. name .. " challenge of the INVITE", function()
                run(function()
                    local a, b, uri = pair()
                    local log = serve(b, "INVITE", { algorithms = algs })
                    local call, err, code = a:call(uri, { timeout = 5, auth = ALICE })
                    assert.is_truthy(call, tostring(err) .. " " .. tostring(code))
                    assert.equal("established", call.state)
                    assert.equal(2, log.n)
                    assert.same({ "missing", "alice" }, log.reasons)
                    assert.matches("algorithm=" .. algs[#algs] .. ",", log.authz[2], 1, true)
                    call:hangup()
                end)
            end)
        end

        it("returns nil, '401 Unauthorized', 401 for a wrong password after one retry", function()
            run(function()
                local a, b, uri = pair()
                local log = serve(b, "INVITE")
                local call, err, code = a:call(uri, { timeout = 5, auth = { user = "alice", password = "bad" } })
                assert.is_nil(call)
                assert.equal("401 Unauthorized", err)
                assert.equal(401, code)
                assert.equal(2, log.n)
                assert.same({ "missing", "wrong password" }, log.reasons)
            end)
        end)

        it("returns the 401 without credentials", function()
            run(function()
                local a, b, uri = pair()
                local log = serve(b, "INVITE")
                local call, err, code = a:call(uri, { timeout = 5 })
                assert.is_nil(call)
                assert.equal("401 Unauthorized", err)
                assert.equal(401, code)
                assert.equal(1, log.n)
            end)
        end)

        it("re-authenticates an INVITE after stale=true", function()
            run(function()
                local a, b, uri = pair()
                local log = serve(b, "INVITE", { ttl = function(n) return n == 1 and 0 or 300 end })
                local call = assert(a:call(uri, { timeout = 5, auth = ALICE }))
                assert.same({ "missing", "stale", "alice" }, log.reasons)
                call:hangup()
            end)
        end)

        it("answers a 407 for the INVITE (proxy = true)", function()
            run(function()
                local a, b, uri = pair()
                local log = serve(b, "INVITE", { proxy = true })
                local call = assert(a:call(uri, { timeout = 5, auth = function() return "alice", "secret" end }))
                assert.same({ "missing", "alice" }, log.reasons)
                call:hangup()
                local c2, err, code = a:call(uri, { timeout = 5 })
                assert.is_nil(c2)
                assert.equal("407 Proxy Authentication Required", err)
                assert.equal(407, code)
            end)
        end)

        it("challenges with call:require_auth and closes the challenged call", function()
            run(function()
                local a, b, uri = pair()
                local seen = {}
                b:on("INVITE", function(call)
                    local user, why = call:require_auth(USERS, { realm = REALM })
                    seen[#seen + 1] = { user or why, call.state, call.status }
                    if user then
                        assert(call:answer())
                        call:wait_hangup(5)
                    end
                end)
                local call = assert(a:call(uri, { timeout = 5, auth = ALICE }))
                call:hangup()
                assert.same({ "missing", "closed", 401 }, seen[1])
                assert.same({ "alice", "incoming", 0 }, seen[2])
            end)
        end)
    end)
end)
