-- spec/registrar_spec.lua: the registrar and location service
-- (lua/luasip/registrar.lua, lua/luasip/location.lua), RFC 3261 §10.3,
-- driven over UDP on loopback: ep:request{ method = "REGISTER" } for most
-- cases, a raw LuaSocket UAC where the Call-ID and CSeq must be chosen.
local h = require "spec.helper"
local sip = h.sip
local location = require "luasip.location"
local registrar_mod = require "luasip.registrar"

local has_socket, socket = pcall(require, "socket")

local AOR = "sip:alice@example.com"


local function assert_clean()
    local s = h.stats()
    assert.equal(0, s.tasks)
    assert.equal(0, s.waiting)
    assert.equal(0, s.endpoints)
end


local function tmpfile()
    local p = os.tmpname()
    os.remove(p)
    return p
end


-- a registrar endpoint r (with registrar reg attached) and a client c
local function setup(opts)
    opts = opts or {}
    if opts.open == nil and opts.auth == nil then opts.open = true end
    local r = h.endpoint { user = "registrar" }
    local reg = sip.registrar(opts)
    reg:attach(r)
    local c = h.endpoint { user = "alice" }
    return reg, c, r:uri():gsub("^sip:registrar@", "sip:")
end


-- REGISTER from ep with headers; returns status, response (also on failure)
local function register(c, ruri, headers, aor)
    local resp, err, code, fresp = c:request {
        method = "REGISTER", uri = ruri, to = aor or AOR, from = aor or AOR,
        headers = headers, timeout = 5,
    }
    if resp then return resp.status, resp end
    return code, fresp, err
end


-- "<uri>;expires=N" values of the 200 -> { [uri] = { expires =, q = } }
local function bindings_of(resp)
    local t, n = {}, 0
    for _, c in ipairs(resp.contacts) do
        t[c.uri] = { expires = c.expires, q = c.q, params = c.params }
        n = n + 1
    end
    return t, n
end


local function raw_uac(target) return h.raw_register_uac(target, AOR) end


describe("luasip.registrar", function()
    after_each(assert_clean)

    describe("creation", function()
        it("raises without auth unless open = true", function()
            assert.has_error(function() sip.registrar {} end,
                "luasip.registrar: auth: function expected (or open = true to accept "
                .. "unauthenticated registrations)")
            local r = sip.registrar { open = true }
            assert.is_table(r)
            r:close()
        end)

        it("raises on bad options, naming them", function()
            assert.has_error(function() sip.registrar { auth = "x" } end,
                "luasip.registrar: auth: function expected, got string")
            assert.has_error(function() sip.registrar { open = true, min_expires = -1 } end,
                "luasip.registrar: min_expires: whole number of seconds >= 0 expected, got -1")
            assert.has_error(function() sip.registrar { open = true, min_expires = 100, max_expires = 50 } end)
            assert.has_error(function() sip.registrar { open = true, store = {} } end)
            assert.has_error(function() sip.registrar "x" end)
        end)
    end)

    describe("canonical AOR and contact keys", function()
        it("drops port and parameters and lower-cases the host", function()
            assert.equal("sip:alice@example.com", registrar_mod.aor("sip:alice@EXAMPLE.Com:5060;transport=udp"))
            assert.equal("sip:Alice@example.com", registrar_mod.aor("sip:%41lice@example.com"))
            assert.equal("sips:bob@h", registrar_mod.aor("SIPS:bob@H"))
            assert.is_nil(registrar_mod.aor("nonsense"))
        end)

        it("compares contact URIs as RFC 3261 19.1.4 says", function()
            local k = registrar_mod.contact_key
            assert.equal(k("sip:a@H.example;Transport=UDP"), k("SIP:a@h.example;transport=udp;foo=1"))
            assert.not_equal(k("sip:a@h"), k("sip:a@h:5060"))
            assert.not_equal(k("sip:a@h"), k("sip:A@h"))
            assert.equal(k("sip:%61@h"), k("sip:a@h"))
            assert.not_equal(k("sip:a@h;transport=tcp"), k("sip:a@h"))
        end)
    end)

    describe(":handle()", function()
        it("adds a binding and lists it with expires and a Date header", function()
            h.run(function()
                local reg, c, ruri = setup()
                local status, resp = register(c, ruri, { Contact = "<sip:alice@127.0.0.1:5555>", Expires = "300" })
                assert.equal(200, status)
                local b, n = bindings_of(resp)
                assert.equal(1, n)
                assert.equal(300, b["sip:alice@127.0.0.1:5555"].expires)
                assert.matches("^%a%a%a, %d%d %a%a%a %d%d%d%d %d%d:%d%d:%d%d GMT$", resp:header("Date"))
                local l = reg:lookup(AOR)
                assert.equal(1, #l)
                assert.equal("sip:alice@127.0.0.1:5555", l[1].uri)
                assert.is_true(l[1].expires > 298 and l[1].expires <= 300)
                assert.equal("udp", l[1].transport)
                assert.matches("^127%.0%.0%.1:%d+$", l[1].received)
                reg:close()
            end)
        end)

        it("refreshes a binding and honours a per-contact expires parameter", function()
            h.run(function()
                local reg, c, ruri = setup()
                assert.equal(200, register(c, ruri, { Contact = "<sip:alice@127.0.0.1:5555>", Expires = "300" }))
                local status, resp = register(c, ruri, {
                    Contact = "<sip:alice@127.0.0.1:5555>;expires=120", Expires = "900" })
                assert.equal(200, status)
                local b, n = bindings_of(resp)
                assert.equal(1, n)
                assert.equal(120, b["sip:alice@127.0.0.1:5555"].expires)
                assert.equal(120, reg:lookup(AOR)[1].expires)
                reg:close()
            end)
        end)

        it("uses default_expires without Expires and shortens to max_expires", function()
            h.run(function()
                local reg, c, ruri = setup { default_expires = 600, max_expires = 1000 }
                local _, resp = register(c, ruri, { Contact = "<sip:alice@127.0.0.1:1>" })
                assert.equal(600, bindings_of(resp)["sip:alice@127.0.0.1:1"].expires)
                _, resp = register(c, ruri, { Contact = "<sip:alice@127.0.0.1:2>", Expires = "99999999999" })
                local b, n = bindings_of(resp)
                assert.equal(2, n)
                assert.equal(1000, b["sip:alice@127.0.0.1:2"].expires)
                reg:close()
            end)
        end)

        it("answers a REGISTER without Contact with the current bindings", function()
            h.run(function()
                local reg, c, ruri = setup()
                assert.equal(200, register(c, ruri, { Contact = "<sip:alice@127.0.0.1:1>", Expires = "300" }))
                local status, resp = register(c, ruri, nil)
                assert.equal(200, status)
                local _, n = bindings_of(resp)
                assert.equal(1, n)
                -- no bindings: 200 without Contact
                status, resp = register(c, ruri, nil, "sip:nobody@example.com")
                assert.equal(200, status)
                assert.is_nil(resp:header("Contact"))
                reg:close()
            end)
        end)

        it("removes a binding with expires=0 and with Expires: 0", function()
            h.run(function()
                local reg, c, ruri = setup()
                assert.equal(200, register(c, ruri, { "Contact: <sip:alice@127.0.0.1:1>, <sip:alice@127.0.0.1:2>, <sip:alice@127.0.0.1:3>", Expires = "300" }))
                assert.equal(3, #reg:lookup(AOR))
                local status, resp = register(c, ruri, { Contact = "<sip:alice@127.0.0.1:1>;expires=0" })
                assert.equal(200, status)
                local b, n = bindings_of(resp)
                assert.equal(2, n)
                assert.is_nil(b["sip:alice@127.0.0.1:1"])
                status, resp = register(c, ruri, { Contact = "<sip:alice@127.0.0.1:2>", Expires = "0" })
                assert.equal(200, status)
                b, n = bindings_of(resp)
                assert.equal(1, n)
                assert.is_not_nil(b["sip:alice@127.0.0.1:3"])
                -- removing what is not there is fine
                assert.equal(200, register(c, ruri, { Contact = "<sip:alice@127.0.0.1:9>", Expires = "0" }))
                assert.equal(1, #reg:lookup(AOR))
                reg:close()
            end)
        end)

        it("removes every binding with Contact: * and Expires: 0", function()
            h.run(function()
                local reg, c, ruri = setup()
                assert.equal(200, register(c, ruri, { "Contact: <sip:alice@127.0.0.1:1>, <sip:alice@127.0.0.1:2>", Expires = "300" }))
                assert.equal(200, register(c, ruri, { Contact = "<sip:alice@127.0.0.1:3>", Expires = "300" }, "sip:bob@example.com"))
                local status, resp = register(c, ruri, { Contact = "*", Expires = "0" })
                assert.equal(200, status)
                assert.is_nil(resp:header("Contact"))
                assert.same({}, reg:lookup(AOR))
                assert.equal(1, #reg:lookup("sip:bob@example.com"))    -- other AORs untouched
                reg:close()
            end)
        end)

        it("answers 400 to * without Expires: 0 or with other contacts", function()
            h.run(function()
                local reg, c, ruri = setup()
                assert.equal(200, register(c, ruri, { Contact = "<sip:alice@127.0.0.1:1>", Expires = "300" }))
                assert.equal(400, register(c, ruri, { Contact = "*" }))
                assert.equal(400, register(c, ruri, { Contact = "*", Expires = "60" }))
                assert.equal(400, register(c, ruri, { "Contact: *", "Contact: <sip:alice@127.0.0.1:2>", Expires = "0" }))
                assert.equal(1, #reg:lookup(AOR))
                reg:close()
            end)
        end)

        it("answers 423 with Min-Expires to a too brief interval and changes nothing", function()
            h.run(function()
                local reg, c, ruri = setup { min_expires = 60 }
                local status, resp = register(c, ruri, { Contact = "<sip:alice@127.0.0.1:1>", Expires = "30" })
                assert.equal(423, status)
                assert.equal("Interval Too Brief", resp.reason)
                assert.equal("60", resp:header("Min-Expires"))
                -- one brief contact fails the whole request
                status = register(c, ruri, { "Contact: <sip:alice@127.0.0.1:2>, <sip:alice@127.0.0.1:3>;expires=5", Expires = "300" })
                assert.equal(423, status)
                assert.same({}, reg:lookup(AOR))
                assert.equal(200, register(c, ruri, { Contact = "<sip:alice@127.0.0.1:1>", Expires = "60" }))
                reg:close()
            end)
        end)

        it("answers 400 to a malformed Expires, Contact expires, q or Contact", function()
            h.run(function()
                local reg, c, ruri = setup()
                assert.equal(400, register(c, ruri, { Contact = "<sip:alice@127.0.0.1:1>", Expires = "soon" }))
                assert.equal(400, register(c, ruri, { Contact = "<sip:alice@127.0.0.1:1>;expires=abc" }))
                assert.equal(400, register(c, ruri, { Contact = "<sip:alice@127.0.0.1:1>;expires=-5" }))
                assert.equal(400, register(c, ruri, { Contact = "<sip:alice@127.0.0.1:1>;q=2" }))
                assert.equal(400, register(c, ruri, { Contact = "<sip:alice@127.0.0.1:1>;q=0.12345" }))
                assert.equal(400, register(c, ruri, { Contact = "<sip:alice@127.0.0.1:1" }))
                assert.equal(400, register(c, ruri, { Contact = "<sip:@@>" }))
                assert.same({}, reg:lookup(AOR))
                reg:close()
            end)
        end)

        it("returns lookup results by q, highest first", function()
            h.run(function()
                local reg, c, ruri = setup()
                assert.equal(200, register(c, ruri, {
                    "Contact: <sip:alice@127.0.0.1:1>;q=0.1, <sip:alice@127.0.0.1:2>;q=0.9",
                    "Contact: <sip:alice@127.0.0.1:3>;q=0.5, <sip:alice@127.0.0.1:4>",
                    Expires = "300" }))
                local l = reg:lookup("sip:alice@EXAMPLE.com:5060;transport=udp")
                local uris = {}
                for i, b in ipairs(l) do uris[i] = b.uri end
                -- no q is q=1 (RFC 3261 highest preference for unspecified)
                assert.same({ "sip:alice@127.0.0.1:4", "sip:alice@127.0.0.1:2",
                              "sip:alice@127.0.0.1:3", "sip:alice@127.0.0.1:1" }, uris)
                assert.equal(0.9, l[2].q)
                assert.is_nil(l[1].q)
                reg:close()
            end)
        end)

        it("files registrations under the canonical AOR of To", function()
            h.run(function()
                local reg, c, ruri = setup()
                assert.equal(200, register(c, ruri, { Contact = "<sip:alice@127.0.0.1:1>", Expires = "300" },
                                           "sip:alice@Example.COM:5060;user=ip"))
                assert.equal(1, #reg:lookup(AOR))
                assert.equal(1, #reg:lookup("sip:alice@example.com"))
                assert.same({}, reg:lookup("sip:Alice@example.com"))   -- user part is case-sensitive
                reg:close()
            end)
        end)

        it("answers 420 with Unsupported to an unknown Require and stores Path", function()
            h.run(function()
                local reg, c, ruri = setup()
                local status, resp = register(c, ruri, {
                    Contact = "<sip:alice@127.0.0.1:1>", Require = "foo, path", Expires = "300" })
                assert.equal(420, status)
                assert.equal("foo", resp:header("Unsupported"))
                status, resp = register(c, ruri, {
                    Contact = "<sip:alice@127.0.0.1:1>", Require = "path", Supported = "path",
                    Path = "<sip:edge.example.com;lr>", Expires = "300" })
                assert.equal(200, status)
                assert.equal("<sip:edge.example.com;lr>", resp:header("Path"))
                assert.same({ "<sip:edge.example.com;lr>" }, reg:lookup(AOR)[1].path)
                reg:close()
            end)
        end)

        it("answers 404 for a domain it does not serve", function()
            h.run(function()
                local reg, c, ruri = setup { domains = { "example.com" } }
                assert.equal(200, register(c, ruri, { Contact = "<sip:alice@127.0.0.1:1>" }))
                assert.equal(404, register(c, ruri, { Contact = "<sip:alice@127.0.0.1:1>" }, "sip:alice@other.org"))
                reg:close()
            end)
        end)

        it("echoes other contact parameters and keeps them per binding", function()
            h.run(function()
                local reg, c, ruri = setup()
                local _, resp = register(c, ruri, {
                    Contact = '<sip:alice@127.0.0.1:1;transport=udp>;+sip.instance="<urn:uuid:1234>";reg-id=1;q=0.5',
                    Expires = "300" })
                local v = resp:header("Contact")
                assert.matches('<sip:alice@127.0.0.1:1;transport=udp>;%+sip%.instance="<urn:uuid:1234>";reg%-id=1;expires=300;q=0.5', v)
                assert.equal("<urn:uuid:1234>", reg:lookup(AOR)[1].instance)
                reg:close()
            end)
        end)
    end)

    describe("authentication", function()
        local PASSWORDS = { alice = "secret", bob = "hunter2" }
        local function lookup(user, realm)
            assert.equal("example.com", realm)
            return PASSWORDS[user]
        end

        it("challenges a REGISTER without credentials with 401", function()
            h.run(function()
                local reg, c, ruri = setup { auth = lookup }
                local status, resp = register(c, ruri, { Contact = "<sip:alice@127.0.0.1:1>" })
                assert.equal(401, status)
                assert.matches('realm="example.com"', resp:header("WWW-Authenticate"))
                assert.same({}, reg:lookup(AOR))
                reg:close()
            end)
        end)

        it("accepts the AOR's user with the right password", function()
            h.run(function()
                local reg, c, ruri = setup { auth = lookup }
                local resp, err = c:request { method = "REGISTER", uri = ruri, to = AOR, from = AOR,
                    headers = { Contact = "<sip:alice@127.0.0.1:1>" },
                    auth = { user = "alice", password = "secret" }, timeout = 5 }
                assert.is_not_nil(resp, err)
                assert.equal(200, resp.status)
                assert.equal(1, #reg:lookup(AOR))
                reg:close()
            end)
        end)

        it("answers a wrong password with a new 401 and changes nothing", function()
            h.run(function()
                local reg, c, ruri = setup { auth = lookup }
                local resp, err, code = c:request { method = "REGISTER", uri = ruri, to = AOR, from = AOR,
                    headers = { Contact = "<sip:alice@127.0.0.1:1>" },
                    auth = { user = "alice", password = "wrong" }, timeout = 5 }
                assert.is_nil(resp)
                assert.equal(401, code, err)
                assert.same({}, reg:lookup(AOR))
                reg:close()
            end)
        end)

        it("answers 403 when the user registers someone else's AOR", function()
            h.run(function()
                local reg, c, ruri = setup { auth = lookup }
                local resp, _, code = c:request { method = "REGISTER", uri = ruri,
                    to = "sip:bob@example.com", from = AOR,
                    headers = { Contact = "<sip:alice@127.0.0.1:1>" },
                    auth = { user = "alice", password = "secret" }, timeout = 5 }
                assert.is_nil(resp)
                assert.equal(403, code)
                assert.same({}, reg:lookup("sip:bob@example.com"))
                reg:close()
            end)
        end)

        it("uses the configured realm", function()
            h.run(function()
                local reg, c, ruri = setup { auth = function(u, realm)
                    assert.equal("corp", realm)
                    return PASSWORDS[u]
                end, realm = "corp" }
                local _, resp = register(c, ruri, { Contact = "<sip:alice@127.0.0.1:1>" })
                assert.matches('realm="corp"', resp:header("WWW-Authenticate"))
                local ok = c:request { method = "REGISTER", uri = ruri, to = AOR, from = AOR,
                    headers = { Contact = "<sip:alice@127.0.0.1:1>" },
                    auth = { user = "alice", password = "secret" }, timeout = 5 }
                assert.is_not_nil(ok)
                reg:close()
            end)
        end)
    end)

    describe("Call-ID and CSeq ordering (RFC 3261 10.3 step 7)", function()
        if not has_socket then
            pending("needs LuaSocket (Debian lua-socket) for a raw UAC")
            return
        end

        it("answers 500 to the same Call-ID with a CSeq not higher, 200 otherwise", function()
            h.run(function()
                local reg, _, _ = setup()
                local r = h._opened[1]
                local uac = raw_uac(r)
                local C = "<sip:alice@127.0.0.1:7000>"
                assert.equal(200, uac.register { call_id = "cid-1", cseq = 5, contacts = { C }, expires = 300 })
                assert.equal(500, uac.register { call_id = "cid-1", cseq = 5, contacts = { C }, expires = 100 })
                assert.equal(500, uac.register { call_id = "cid-1", cseq = 4, contacts = { C }, expires = 100 })
                assert.is_true(reg:lookup(AOR)[1].expires > 290)   -- unchanged
                -- a removal out of order fails too
                assert.equal(500, uac.register { call_id = "cid-1", cseq = 3, contacts = { C }, expires = 0 })
                assert.equal(1, #reg:lookup(AOR))
                -- higher CSeq: updated
                assert.equal(200, uac.register { call_id = "cid-1", cseq = 6, contacts = { C }, expires = 100 })
                assert.equal(100, reg:lookup(AOR)[1].expires)
                -- another Call-ID (a rebooted UA) may use any CSeq
                assert.equal(200, uac.register { call_id = "cid-2", cseq = 1, contacts = { C }, expires = 200 })
                assert.equal(200, reg:lookup(AOR)[1].expires)
                -- Contact: * obeys the same rule, per binding
                local code = uac.register { call_id = "cid-2", cseq = 1, contacts = { "*" }, expires = 0 }
                assert.equal(500, code)
                assert.equal(1, #reg:lookup(AOR))
                assert.equal(200, uac.register { call_id = "cid-2", cseq = 2, contacts = { "*" }, expires = 0 })
                assert.same({}, reg:lookup(AOR))
                uac.close()
                reg:close()
            end)
        end)

        it("commits all contacts of a request or none", function()
            h.run(function()
                local reg = setup()
                local uac = raw_uac(h._opened[1])
                assert.equal(200, uac.register { call_id = "cid-a", cseq = 10,
                    contacts = { "<sip:alice@127.0.0.1:1>" }, expires = 300 })
                -- the second contact is fine, the first is out of order: nothing changes
                assert.equal(500, uac.register { call_id = "cid-a", cseq = 9,
                    contacts = { "<sip:alice@127.0.0.1:2>", "<sip:alice@127.0.0.1:1>" }, expires = 300 })
                local l = reg:lookup(AOR)
                assert.equal(1, #l)
                assert.equal("sip:alice@127.0.0.1:1", l[1].uri)
                uac.close()
                reg:close()
            end)
        end)

        it("serializes REGISTERs of one AOR when the store yields", function()
            -- a store whose every method takes 50 ms (as a network backend)
            local mem = location.memory()
            local slow = {}
            for _, m in ipairs { "get", "put", "remove", "remove_all", "expire" } do
                slow[m] = function(_, ...)
                    sip.sleep(0.05)
                    return mem[m](mem, ...)
                end
            end
            h.run(function()
                local reg = setup { store = slow }
                local r = h._opened[1]
                local codes = {}
                local left = 2
                for i = 1, 2 do
                    sip.spawn(function()
                        local uac = raw_uac(r)
                        codes[i] = uac.register { call_id = "same", cseq = 1, expires = 300,
                                                  contacts = { "<sip:alice@127.0.0.1:" .. i .. ">" } }
                        uac.close()
                        left = left - 1
                    end)
                end
                while left > 0 do sip.sleep(0.01) end
                table.sort(codes)
                -- the second saw the first's binding: same Call-ID, CSeq not higher
                assert.same({ 200, 200 }, codes)
                local l = reg:lookup(AOR)
                assert.equal(2, #l)
                -- the same contact twice with one CSeq: the second is refused
                left = 2
                for i = 1, 2 do
                    sip.spawn(function()
                        local uac = raw_uac(r)
                        codes[i] = uac.register { call_id = "other", cseq = 7, expires = 300,
                                                  contacts = { "<sip:alice@127.0.0.1:9>" } }
                        uac.close()
                        left = left - 1
                    end)
                end
                while left > 0 do sip.sleep(0.01) end
                table.sort(codes)
                assert.same({ 200, 500 }, codes)
                reg:close()
            end)
        end)

        it("sends the 200 Contact list with one value per binding", function()
            h.run(function()
                local reg = setup()
                local uac = raw_uac(h._opened[1])
                local code, hdrs = uac.register { call_id = "x", cseq = 1, expires = 300,
                    contacts = { "<sip:alice@127.0.0.1:1>;q=0.2", "<sip:alice@127.0.0.1:2>;q=0.7" } }
                assert.equal(200, code)
                assert.same({ "<sip:alice@127.0.0.1:2>;expires=300;q=0.7",
                              "<sip:alice@127.0.0.1:1>;expires=300;q=0.2" }, hdrs.contact)
                assert.equal(1, #hdrs.date)
                uac.close()
                reg:close()
            end)
        end)
    end)

    describe("expiry", function()
        it("drops a binding when it expires, in lookups at once and from the store by the sweep", function()
            h.run(function()
                local store = location.memory()
                local reg, c, ruri = setup { min_expires = 1, store = store, sweep = 0.2 }
                assert.equal(200, register(c, ruri, { Contact = "<sip:alice@127.0.0.1:1>", Expires = "1" }))
                assert.equal(200, register(c, ruri, { Contact = "<sip:alice@127.0.0.1:2>", Expires = "60" }))
                assert.equal(2, store:count())
                sip.sleep(0.7)
                assert.equal(2, #reg:lookup(AOR))
                sip.sleep(0.4)                       -- 1.1 s after the REGISTER
                local l = reg:lookup(AOR)
                assert.equal(1, #l)
                assert.equal("sip:alice@127.0.0.1:2", l[1].uri)
                sip.sleep(0.3)
                assert.equal(1, store:count())       -- swept
                local _, resp = register(c, ruri, nil)
                local _, n = bindings_of(resp)
                assert.equal(1, n)
                reg:close()
            end, 5)
        end)
    end)

    describe("persistence", function()
        it("keeps bindings across a restart with a file store", function()
            local file = tmpfile()
            finally(function() os.remove(file); os.remove(file .. ".tmp") end)
            h.run(function()
                local reg, c, ruri = setup { min_expires = 1, store = location.memory { file = file } }
                assert.equal(200, register(c, ruri, { Contact = "<sip:alice@127.0.0.1:1>;q=0.5", Expires = "300" }))
                assert.equal(200, register(c, ruri, { Contact = "<sip:bob@127.0.0.1:2>", Expires = "1",
                                                      Path = "<sip:p1;lr>" }, "sip:bob@example.com"))
                reg:close()                 -- flushes the store
            end)
            -- a new process would load the file: a new store and registrar
            h.run(function()
                local reg = sip.registrar { open = true, store = location.memory { file = file } }
                local l = reg:lookup(AOR)
                assert.equal(1, #l)
                assert.equal("sip:alice@127.0.0.1:1", l[1].uri)
                assert.equal(0.5, l[1].q)
                assert.is_true(l[1].expires > 290)
                assert.same({ "<sip:p1;lr>" }, reg:lookup("sip:bob@example.com")[1].path)
                sip.sleep(1.1)
                assert.same({}, reg:lookup("sip:bob@example.com"))
                reg:close()
            end)
            -- expired bindings are not loaded
            h.run(function()
                local store = location.memory { file = file }
                assert.equal(1, store:count())
            end)
        end)

        it("writes pending changes when luasip.run returns", function()
            local file = tmpfile()
            finally(function() os.remove(file) end)
            h.run(function()
                local store = location.memory { file = file, flush = 60 }
                assert(store:put(AOR, { key = "k", uri = "sip:alice@127.0.0.1:1",
                                        expires = location.now() + 300 }))
                assert.is_nil(h.readfile(file))        -- batched: not yet
            end)
            assert.matches("sip:alice@127.0.0.1:1", h.readfile(file), 1, true)
            local again = location.memory { file = file }
            assert.equal("sip:alice@127.0.0.1:1", again:get(AOR)[1].uri)
        end)

        it("writes before answering with flush = 0", function()
            local file = tmpfile()
            finally(function() os.remove(file) end)
            h.run(function()
                local reg, c, ruri = setup { store = location.memory { file = file, flush = 0 } }
                assert.equal(200, register(c, ruri, { Contact = "<sip:alice@127.0.0.1:1>", Expires = "300" }))
                local s = h.readfile(file)
                assert.matches("^# luasip location v1\n", s)
                assert.matches("sip:alice@127.0.0.1:1", s, 1, true)
                reg:close()
            end)
        end)

        it("writes batched changes within the flush delay", function()
            local file = tmpfile()
            finally(function() os.remove(file) end)
            h.run(function()
                local store = location.memory { file = file, flush = 0.1 }
                local reg, c, ruri = setup { store = store }
                assert.equal(200, register(c, ruri, { Contact = "<sip:alice@127.0.0.1:1>", Expires = "300" }))
                sip.sleep(0.3)
                assert.matches("sip:alice@127.0.0.1:1", h.readfile(file), 1, true)
                assert.equal(200, register(c, ruri, { Contact = "*", Expires = "0" }))
                sip.sleep(0.3)
                assert.not_matches("sip:alice", h.readfile(file), 1, true)
                reg:close()
                store:close()
            end)
        end)

        it("raises on a file that is not a location file", function()
            local file = tmpfile()
            finally(function() os.remove(file) end)
            local f = assert(io.open(file, "w"))
            f:write("hello\n")
            f:close()
            assert.has_error(function() location.memory { file = file } end)
        end)
    end)
end)
