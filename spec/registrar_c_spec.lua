-- spec/registrar_c_spec.lua: the registrar's C path (csrc/registrar.c)
-- that answers REGISTERs when the store is luasip.location's memory store.
-- The same REGISTERs, sent raw over UDP, go to a registrar on the C path
-- and to one on the Lua path (a store wrapped in a plain Lua table), and
-- both must answer alike; then what only the C path has: its use, the
-- fall-back to Lua for an auth lookup that waits, on_change from C, the
-- detach by ep:on, expiry timers, the shared nonce-count table.
local h = require "spec.helper"
local sip = h.sip
local core = require "luasip.core"
local location = require "luasip.location"

local has_socket, socket = pcall(require, "socket")

local AOR = "sip:alice@example.com"


local function assert_clean()
    local s = h.stats()
    assert.equal(0, s.tasks)
    assert.equal(0, s.waiting)
    assert.equal(0, s.endpoints)
end


local function raw_uac(target) return h.raw_register_uac(target, AOR) end


-- a location store in a plain table: the registrar takes its Lua path
local function lua_store()
    local mem = location.memory()
    local s = {}
    for _, m in ipairs { "get", "put", "remove", "remove_all", "expire" } do
        s[m] = function(_, ...) return mem[m](mem, ...) end
    end
    return s
end


-- what must be equal in two answers: status, reason and the headers a
-- registrar sets (Contact values with expires compared to +-1 s)
local function summary(code, hdrs, data)
    local t = { code = code, reason = data:match("^SIP/2%.0 %d+ ([^\r\n]*)") }
    for _, name in ipairs { "min-expires", "warning", "unsupported", "path", "www-authenticate" } do
        t[name] = hdrs[name]
    end
    t.contact, t.expires = {}, {}
    for i, c in ipairs(hdrs.contact or {}) do
        t.contact[i] = c:gsub(";expires=(%d+)", function(e)
            t.expires[i] = tonumber(e)
            return ";expires=N"
        end)
    end
    return t
end


local CASES = {
    { call_id = "c1", cseq = 1, expires = 300, contacts = { "<sip:alice@127.0.0.1:1>;q=0.5" } },
    { call_id = "c1", cseq = 2 },                                       -- a query
    { call_id = "c1", cseq = 1, expires = 300, contacts = { "<sip:alice@127.0.0.1:1>" } },  -- CSeq not higher
    { call_id = "c1", cseq = 3, contacts = { "<sip:alice@127.0.0.1:2>;expires=30" } },     -- 423
    { call_id = "c2", cseq = 1, expires = 200, contacts = {
        "<sip:ALICE@127.0.0.1:1;transport=UDP;foo=bar>;q=0.7",
        "<sip:alice@127.0.0.1:3>;+sip.instance=\"<urn:uuid:1>\";reg-id=1;q=1.0;expires=120",
        "<sip:al%69ce@127.0.0.1:1>;q=0.25" } },                         -- same key as :1
    { call_id = "c2", cseq = 2, contacts = { "<sip:alice@127.0.0.1:4?Subject=x&A=b>;Foo=Bar;q=0" } },
    { call_id = "c2", cseq = 3, contacts = { "<sip:alice@127.0.0.1:4?a=b&subject=x>;expires=0" } },
    { call_id = "c3", cseq = 1, expires = 5, contacts = { "*" } },      -- * needs Expires: 0
    { call_id = "c3", cseq = 2, expires = 0, contacts = { "*", "<sip:alice@127.0.0.1:5>" } },
    { call_id = "c3", cseq = 3, expires = "abc", contacts = { "<sip:alice@127.0.0.1:5>" } },
    { call_id = "c3", cseq = 4, contacts = { "<sip:alice@127.0.0.1:5>;q=2" } },
    { call_id = "c3", cseq = 5, contacts = { "<sip:alice@127.0.0.1:5>;expires=1x" } },
    { call_id = "c3", cseq = 6, contacts = { "<sip:@127.0.0.1:5>" } },
    { call_id = "c3", cseq = 7, contacts = { "<sip:alice@127.0.0.1:99999>" } },
    { call_id = "c3", cseq = 8, contacts = { "<sip:alice@127.0.0.1:5>" },
      extra = { "Require: foo, path", "Require: bar" } },
    { call_id = "c3", cseq = 9, contacts = { "<sip:alice@127.0.0.1:6>" },
      extra = { "Path: <sip:p1.example.com;lr>", "Path: <sip:p2.example.com;lr>", "Supported: path" } },
    { call_id = "c3", cseq = 10, to = "tel:+123" },                     -- 416
    { call_id = "c3", cseq = 11, to = "sip:bob@other.example.com", contacts = { "<sip:bob@127.0.0.1:7>" } },
    { call_id = "c4", cseq = 1, expires = 0, contacts = { "*" } },      -- 200, all gone
    { call_id = "c4", cseq = 2 },
}


describe("luasip.registrar, C path", function()
    after_each(assert_clean)

    it("takes REGISTERs for a memory store only", function()
        local a = sip.registrar { open = true }
        local b = sip.registrar { open = true, store = lua_store() }
        assert.is_userdata(a.c)
        assert.is_nil(b.c)
        a:close()
        b:close()
    end)

    if not has_socket then
        pending("LuaSocket not installed: raw UAC cases skipped")
        return
    end

    it("answers every REGISTER as the Lua path does", function()
        h.run(function()
            local ra = h.endpoint { user = "registrar" }
            local rb = h.endpoint { user = "registrar" }
            local opts = { open = true, domains = { "example.com", "Other.Example.com" } }
            local a = sip.registrar(opts):attach(ra)
            opts.store = lua_store()
            local b = sip.registrar(opts):attach(rb)
            local ua, ub = raw_uac(ra), raw_uac(rb)
            local codes = {}
            for i, case in ipairs(CASES) do
                local sa = summary(ua.register(case))
                local sb = summary(ub.register(case))
                codes[i] = sa.code
                for j, e in ipairs(sb.expires) do
                    assert(math.abs(e - sa.expires[j]) <= 1, "case " .. i .. ": expires")
                end
                sa.expires, sb.expires = nil, nil
                assert.same(sb, sa, "case " .. i)
            end
            -- the cases cover what they are meant to
            assert.same({ 200, 200, 500, 423, 200, 200, 200, 400, 400, 400, 400, 400, 400,
                          400, 420, 200, 416, 200, 200, 200 }, codes)
            -- the C path answered (its counters moved), the Lua one did not
            assert.equal(#CASES, a.stats.requests)
            assert.equal(#CASES, b.stats.requests)
            local req = a.c:stats()
            assert.equal(#CASES, req)
            -- and filed the same bindings
            local function strip(list)
                for _, v in ipairs(list) do v.received, v.expires = nil, nil end
                return list
            end
            for _, aor in ipairs { AOR, "sip:bob@other.example.com" } do
                assert.same(strip(b:lookup(aor)), strip(a:lookup(aor)))
            end
            assert.equal(1, #a:lookup("sip:bob@other.example.com"))
            ua.close()
            ub.close()
            a:close()
            b:close()
        end, 20)
    end)

    it("gives REGISTERs to Lua when the auth lookup waits, and still answers right", function()
        h.run(function()
            local r = h.endpoint { user = "registrar" }
            local looked = 0
            local reg = sip.registrar {
                realm = "example.com",
                auth = function(user)
                    looked = looked + 1
                    sip.sleep(0.01)                 -- a database round trip
                    return user == "alice" and "secret" or nil
                end,
            }
            reg:attach(r)
            local c = h.endpoint { user = "alice" }
            local resp = assert(c:request {
                method = "REGISTER", uri = r:uri():gsub("^sip:registrar@", "sip:"),
                to = AOR, from = AOR, timeout = 5,
                headers = { Contact = "<sip:alice@127.0.0.1:1>" },
                auth = { user = "alice", password = "secret" },
            })
            assert.equal(200, resp.status)
            assert.is_true(reg.c.fallback)
            assert.is_true(looked >= 1)
            assert.equal(1, #reg:lookup(AOR))
            reg:close()
        end, 10)
    end)

    it("issues challenges whose nonce and opaque luasip.auth accepts", function()
        h.run(function()
            local auth = require "luasip.auth"
            local r = h.endpoint { user = "registrar" }
            local reg = sip.registrar { realm = "example.com", auth = function() return "pw" end }
            reg:attach(r)
            local uac = raw_uac(r)
            local code, hdrs = uac.register { call_id = "n", cseq = 1, contacts = { "<sip:alice@127.0.0.1:1>" } }
            assert.equal(401, code)
            assert.equal(2, #hdrs["www-authenticate"])          -- SHA-256 and MD5
            local v = hdrs["www-authenticate"][1]
            assert.matches('^Digest realm="example.com", nonce="[%w_-]+", opaque="[%w_-]+", '
                           .. 'algorithm=SHA%-256, qop="auth"$', v)
            local nonce, opaque = v:match('nonce="([^"]+)", opaque="([^"]+)"')
            local raw = core.base64url_decode(nonce)
            assert.equal(52, #raw)
            assert.equal(core.hmac_sha256(auth._secret, raw:sub(1, 20) .. "example.com"), raw:sub(21))
            assert.equal(core.base64url(core.hmac_sha256(auth._secret, "opaque:" .. nonce):sub(1, 12)), opaque)
            local expiry = string.unpack(">I8", raw)
            assert(math.abs(expiry / 1000 - (core.wallclock() + 300)) < 5)
            uac.close()
            reg:close()
        end, 10)
    end)

    it("calls on_change in a task after a change the C path made", function()
        h.run(function()
            local r = h.endpoint { user = "registrar" }
            local seen = {}
            local reg = sip.registrar {
                open = true,
                on_change = function(aor, bindings)
                    sip.sleep(0.001)                -- it runs in a task
                    seen[#seen + 1] = { aor, #bindings, bindings[1] and bindings[1].uri }
                end,
            }
            reg:attach(r)
            local uac = raw_uac(r)
            assert.equal(200, (uac.register { call_id = "x", cseq = 1, expires = 60,
                                              contacts = { "<sip:alice@127.0.0.1:1>" } }))
            assert.equal(200, (uac.register { call_id = "x", cseq = 2 }))   -- a query: no change
            sip.sleep(0.05)
            assert.same({ { AOR, 1, "sip:alice@127.0.0.1:1" } }, seen)
            uac.close()
            reg:close()
        end, 10)
    end)

    it("leaves REGISTERs to a handler set after attach", function()
        h.run(function()
            local r = h.endpoint { user = "registrar" }
            local reg = sip.registrar { open = true }
            reg:attach(r)
            r:on("REGISTER", function(req) req:reply(403, "Not Here") end)
            local uac = raw_uac(r)
            assert.equal(403, (uac.register { call_id = "y", cseq = 1, contacts = { "<sip:a@127.0.0.1:1>" } }))
            assert.equal(0, (reg.c:stats()))
            uac.close()
            reg:close()
        end, 10)
    end)

    it("answers through reg:handle(req) in a handler of the script's own", function()
        h.run(function()
            local r = h.endpoint { user = "registrar" }
            local reg = sip.registrar { open = true, on_change = function(aor) assert.equal(AOR, aor) end }
            local got = {}
            r:on("REGISTER", function(req)
                local status, bindings = reg:handle(req)
                got[#got + 1] = { status, bindings and #bindings, req.replied }
            end)
            local uac = raw_uac(r)
            assert.equal(200, (uac.register { call_id = "h", cseq = 1, expires = 60,
                                              contacts = { "<sip:alice@127.0.0.1:1>" } }))
            assert.equal(423, (uac.register { call_id = "h", cseq = 2,
                                              contacts = { "<sip:alice@127.0.0.1:1>;expires=5" } }))
            assert.same({ { 200, 1, true }, { 423, nil, true } }, got)
            assert.equal(2, (reg.c:stats()))
            uac.close()
            reg:close()
        end, 10)
    end)

    it("answers a retransmitted REGISTER with its first answer, byte for byte", function()
        -- RFC 3261 17.2.2/17.2.3: a request with the branch and sent-by
        -- of one answered within Timer J gets that answer again and is
        -- not processed again (here it would be refused: CSeq not higher)
        h.run(function()
            local r = h.endpoint { user = "registrar" }
            local reg = sip.registrar { open = true }
            reg:attach(r)
            local uac = raw_uac(r)
            local code1, _, first = uac.register { call_id = "rt", cseq = 1, expires = 300,
                                                   contacts = { "<sip:alice@127.0.0.1:1>" } }
            assert.equal(200, code1)
            assert.equal(1, #reg:lookup(AOR))
            -- a later REGISTER removes the binding
            assert.equal(200, (uac.register { call_id = "rt", cseq = 2, expires = 0,
                                              contacts = { "<sip:alice@127.0.0.1:1>" } }))
            assert.equal(0, #reg:lookup(AOR))
            local code, _, again = uac.retransmit(1)
            assert.equal(200, code)
            assert.equal(first, again)
            assert.equal(0, #reg:lookup(AOR))         -- not applied twice
            local requests = reg.c:stats()
            assert.equal(2, requests)                 -- the retransmission is not one
            uac.close()
            reg:close()
        end, 10)
    end)

    it("answers 503 once closed", function()
        h.run(function()
            local r = h.endpoint { user = "registrar" }
            local reg = sip.registrar { open = true }
            reg:attach(r)
            reg:close()
            local uac = raw_uac(r)
            assert.equal(503, (uac.register { call_id = "z", cseq = 1, contacts = { "<sip:a@127.0.0.1:1>" } }))
            uac.close()
        end, 10)
    end)
end)


describe("luasip.location memory store (C table)", function()
    it("drops bindings on their expiry timers, without a sweep", function()
        h.run(function()
            local s = location.memory()
            assert(s:put(AOR, { key = "k1", uri = "sip:alice@127.0.0.1:1", expires = location.now() + 0.15 }))
            assert(s:put(AOR, { key = "k2", uri = "sip:alice@127.0.0.1:2", expires = location.now() + 60,
                                path = { "<sip:p;lr>" }, q = 0.5, cseq = 3, call_id = "c" }))
            assert.equal(2, s:count())
            sip.sleep(0.4)
            assert.equal(1, s:count())
            local l = s:get(AOR)
            assert.equal(1, #l)
            assert.same({ "<sip:p;lr>" }, l[1].path)
            assert.equal(0.5, l[1].q)
            assert.equal(3, l[1].cseq)
            assert.equal(1, s:expire(location.now()))   -- the timer's removal, counted once
            assert.equal(0, s:expire(location.now()))
            assert.is_true(s:remove(AOR, "k2"))
            assert.same({}, s:aor_list())
        end, 5)
    end)

    it("finds every AOR while its table grows, and after removals", function()
        -- 1024 buckets to start, grown past two AORs per bucket: 20000
        -- AORs cross three growths
        local s = location.memory()
        local N, exp = 20000, location.now() + 600
        for i = 1, N do
            assert(s:put("sip:u" .. i .. "@example.com",
                         { key = "k", uri = "sip:u" .. i .. "@127.0.0.1:" .. (1024 + i % 60000), expires = exp }))
        end
        assert.equal(N, s:count())
        assert.equal(N, #s:aor_list())
        for i = 1, N do
            local l = s:get("sip:u" .. i .. "@example.com")
            assert.equal(1, #l)
            assert.equal("sip:u" .. i .. "@127.0.0.1:" .. (1024 + i % 60000), l[1].uri)
        end
        for i = 1, N, 2 do assert.is_true(s:remove("sip:u" .. i .. "@example.com", "k")) end
        assert.equal(N / 2, s:count())
        assert.equal(N / 2, #s:aor_list())
        assert.same({}, s:get("sip:u1@example.com"))
        assert.equal(1, #s:get("sip:u2@example.com"))
        assert.equal(N / 2, s:expire(exp + 1))
        assert.same({}, s:aor_list())
    end)

    it("raises on a binding without key or uri", function()
        local s = location.memory()
        assert.has_error(function() s:put(AOR, {}) end)
        assert.has_error(function() s:put(AOR, { key = "k", expires = 1 }) end)
    end)
end)


describe("nonce counts", function()
    it("are shared by the C and Lua digest checks", function()
        local n = "nonce-" .. math.random(1e9)
        assert.is_true(core.nonce_accept(n, 1))
        assert.is_false(core.nonce_accept(n, 1))
        assert.is_true(core.nonce_accept(n, 2))
        assert.is_false(core.nonce_accept(n, 1))
    end)
end)
