-- spec/registration_spec.lua: the registration client (csrc/reg.c,
-- lua/luasip/registration.lua) against the luasip registrar in the same
-- process, over UDP on loopback.
local h = require "spec.helper"
local sip = h.sip

local AOR = "sip:alice@example.com"


local function assert_clean()
    local s = h.stats()
    assert.equal(0, s.tasks)
    assert.equal(0, s.waiting)
    assert.equal(0, s.endpoints)
    assert.equal(0, sip.registration.count())
    assert.equal(0, sip.registration.lingering())     -- every un-REGISTER answered
end


-- a client endpoint c, a registrar endpoint r with registrar reg; the
-- REGISTERs r receives are counted in seen.n (and kept in seen)
local function setup(opts, handler)
    opts = opts or {}
    if opts.auth == nil then opts.open = true end
    local c = h.endpoint { user = "alice" }
    local r = h.endpoint { user = "registrar" }
    local reg = sip.registrar(opts)
    local seen = { n = 0 }
    r:on("REGISTER", function(req)
        seen.n = seen.n + 1
        seen[#seen + 1] = { t = sip.now(), contact = req:header("Contact"), cseq = req.cseq,
                            authorization = req:header("Authorization") }
        if handler then return handler(req, reg, seen) end
        reg:handle(req)
    end)
    local ruri = r:uri():gsub("^sip:registrar@", "sip:")
    return c, reg, ruri, seen, r
end


-- close r and let the registrar answer its un-REGISTER before the end
local function finish(r, reg)
    r:close()
    local dl = sip.now() + 2
    while #reg:lookup(AOR) > 0 and sip.now() < dl do sip.sleep(0.01) end
    reg:close()
end


local function wait_until(pred, seconds)
    local dl = sip.now() + (seconds or 2)
    while not pred() do
        if sip.now() > dl then return false end
        sip.sleep(0.02)
    end
    return true
end


describe("luasip.reg", function()
    after_each(assert_clean)

    describe("ep:register()", function()
        it("registers in the background; wait() returns true once registered", function()
            h.run(function()
                local c, reg, ruri = setup()
                local r = assert(c:register { registrar = ruri, aor = AOR, expires = 600 })
                assert.equal("registering", r.state)
                assert.is_false(r.registered)
                assert.is_true(r:wait(2))
                assert.equal("registered", r.state)
                assert.is_true(r.registered)
                assert.equal(200, r.status)
                assert.equal("OK", r.reason)
                assert.equal(600, r.expires)
                assert.equal(AOR, r.aor)
                local l = reg:lookup(AOR)
                assert.equal(1, #l)
                assert.matches("^sip:alice@127%.0%.0%.1:%d+$", l[1].uri)
                assert.is_true(r:wait(0))               -- at once when registered
                finish(r, reg)
            end)
        end)

        it("registers and unregisters over TCP", function()
            h.run(function()
                local c = h.endpoint { user = "alice", transports = { "tcp" } }
                local r = h.endpoint { user = "registrar", transports = { "tcp" } }
                local reg = sip.registrar { open = true }
                reg:attach(r)
                local rg = assert(c:register { registrar = r:uri("tcp"), aor = AOR, expires = 300 })
                assert.is_true(rg:wait(2))
                assert.equal(300, rg.expires)
                local l = reg:lookup(AOR)
                assert.equal(1, #l)
                assert.equal("tcp", l[1].transport)
                assert.matches(";transport=tcp$", l[1].uri)
                finish(rg, reg)
            end)
        end)

        it("reports the expiry the registrar granted", function()
            h.run(function()
                local c, reg, ruri = setup { max_expires = 300 }
                local r = assert(c:register { registrar = ruri, aor = AOR, expires = 3600 })
                assert.is_true(r:wait(2))
                assert.equal(300, r.expires)
                finish(r, reg)
            end)
        end)

        it("uses Min-Expires after a 423 (libre retries by itself)", function()
            h.run(function()
                local c, reg, ruri, seen = setup { min_expires = 120 }
                local r = assert(c:register { registrar = ruri, aor = AOR, expires = 30 })
                assert.is_true(r:wait(2))
                assert.equal(120, r.expires)
                assert.equal(2, seen.n)
                assert.matches("expires=120", seen[2].contact)
                finish(r, reg)
            end)
        end)

        it("sends contact_user, contact_params and extra headers", function()
            h.run(function()
                local c, reg, ruri, seen = setup()
                local r = assert(c:register { registrar = ruri, aor = AOR, contact_user = "desk",
                    contact_params = '+sip.instance="<urn:uuid:00000000-0000-1000-8000-000000000001>"',
                    headers = { ["X-Device"] = "desk phone" } })
                assert.is_true(r:wait(2))
                assert.matches("^<sip:desk@127%.0%.0%.1:%d+>;expires=3600;%+sip%.instance=", seen[1].contact)
                assert.equal("<urn:uuid:00000000-0000-1000-8000-000000000001>", reg:lookup(AOR)[1].instance)
                finish(r, reg)
            end)
        end)

        it("raises on bad options, naming them", function()
            h.run(function()
                local c = h.endpoint {}
                assert.has_error(function() c:register {} end,
                    "luasip.register: aor: SIP URI expected, got nil")
                assert.has_error(function() c:register { aor = "alice" } end,
                    "luasip.register: aor: SIP URI expected, got alice")
                assert.has_error(function() c:register { aor = AOR, registrar = "http://x" } end,
                    "luasip.register: registrar: SIP URI expected, got http://x")
                assert.has_error(function() c:register { aor = AOR, expires = 0 } end,
                    "luasip.register: expires: whole seconds >= 1 expected, got 0")
                assert.has_error(function() c:register { aor = AOR, refresh = 1 } end)
                assert.has_error(function() c:register { aor = AOR, user = "a" } end,
                    "luasip.register: password: string expected, got nil")
                assert.has_error(function() c:register { aor = AOR, auth = 42 } end)
                assert.has_error(function() c:register { aor = AOR, headers = { "bad\r\nline" } } end)
                assert.has_error(function() c:register "x" end)
                assert.equal(0, sip.registration.count())
            end)
        end)
    end)

    describe("refresh", function()
        it("re-registers before the granted expiry runs out", function()
            h.run(function()
                local c, reg, ruri, seen = setup { min_expires = 1 }
                local r = assert(c:register { registrar = ruri, aor = AOR, expires = 2 })
                assert.is_true(r:wait(2))
                local refreshed = 0
                r:on("registered", function() refreshed = refreshed + 1 end)
                assert.is_true(wait_until(function() return seen.n >= 2 end, 3))
                -- libre refreshes at 90 % of the 2 s granted
                local dt = seen[2].t - seen[1].t
                assert.is_true(dt > 1.5 and dt < 2.0, "refresh after " .. dt .. " s")
                assert.is_true(seen[2].cseq > seen[1].cseq)
                sip.sleep(0.05)
                assert.equal(1, refreshed)
                assert.equal(2, r.count)
                -- the binding never lapsed
                sip.sleep(0.5)
                assert.equal(1, #reg:lookup(AOR))
                finish(r, reg)
            end, 6)
        end)

        it("refreshes earlier with refresh = 0.5", function()
            h.run(function()
                local c, reg, ruri, seen = setup { min_expires = 1 }
                local r = assert(c:register { registrar = ruri, aor = AOR, expires = 2, refresh = 0.5 })
                assert.is_true(r:wait(2))
                assert.is_true(wait_until(function() return seen.n >= 2 end, 3))
                local dt = seen[2].t - seen[1].t
                assert.is_true(dt > 0.8 and dt < 1.3, "refresh after " .. dt .. " s")
                finish(r, reg)
            end, 6)
        end)
    end)

    describe("unregistering", function()
        it("reg:close() removes the binding (expires=0)", function()
            h.run(function()
                local c, reg, ruri, seen = setup()
                local r = assert(c:register { registrar = ruri, aor = AOR })
                assert.is_true(r:wait(2))
                assert.equal(1, #reg:lookup(AOR))
                assert.is_true(r:close())
                assert.is_true(r:close())               -- twice is fine
                assert.equal("closed", r.state)
                assert.is_false(r.registered)
                assert.same({ nil, "closed", sip.ENOTCONN }, { r:wait(1) })
                assert.is_true(wait_until(function() return #reg:lookup(AOR) == 0 end))
                assert.matches(";expires=0", seen[#seen].contact)
                reg:close()
            end)
        end)

        it("a <close> variable unregisters when its scope ends", function()
            h.run(function()
                local c, reg, ruri = setup()
                do
                    local r <close> = assert(c:register { registrar = ruri, aor = AOR })
                    assert.is_true(r:wait(2))
                end
                assert.is_true(wait_until(function() return #reg:lookup(AOR) == 0 end))
                reg:close()
            end)
        end)

        it("closing the endpoint unregisters", function()
            h.run(function()
                local c, reg, ruri = setup()
                local r = assert(c:register { registrar = ruri, aor = AOR })
                assert.is_true(r:wait(2))
                c:close()
                assert.equal("closed", r.state)
                assert.is_true(wait_until(function() return #reg:lookup(AOR) == 0 end))
                reg:close()
            end)
        end)

        it("the end of luasip.run unregisters and waits for the answer", function()
            local reg, c, r, got
            sip.run(function()
                c = assert(sip.endpoint { listen = "udp:127.0.0.1:0", user = "alice" })
                r = assert(sip.endpoint { listen = "udp:127.0.0.1:0", user = "registrar" })
                reg = sip.registrar { open = true }
                reg:attach(r)
                local rg = assert(c:register { registrar = r:uri(), aor = AOR })
                got = rg:wait(2)
                sip.stop()                              -- rg still open
            end)
            assert.is_true(got)
            assert.equal(0, sip.registration.count())
            -- the registrar answered the un-REGISTER while run() returned
            sip.run(function()
                assert.same({}, reg:lookup(AOR))
                reg:close()
                c:close()
                r:close()
            end)
        end)
    end)

    describe("digest authentication", function()
        local PASSWORDS = { alice = "secret" }
        local function lookup(user) return PASSWORDS[user] end

        it("answers the registrar's challenge with user and password", function()
            h.run(function()
                local c, reg, ruri, seen = setup { auth = lookup }
                local r = assert(c:register { registrar = ruri, aor = AOR, user = "alice", password = "secret" })
                assert.is_true(r:wait(2))
                assert.equal(2, seen.n)
                assert.is_nil(seen[1].authorization)
                assert.matches('^Digest .*username="alice"', seen[2].authorization)
                assert.equal(1, #reg:lookup(AOR))
                finish(r, reg)
            end)
        end)

        it("refreshes and unregisters with the same credentials", function()
            h.run(function()
                local c, reg, ruri, seen = setup { auth = lookup, min_expires = 1 }
                local r = assert(c:register { registrar = ruri, aor = AOR, expires = 1,
                    auth = function(realm) return "alice", "secret" end })
                assert.is_true(r:wait(2))
                assert.is_true(wait_until(function() return r.count >= 2 end, 3))
                assert.equal("registered", r.state)
                finish(r, reg)
                assert.matches(";expires=0", seen[#seen].contact)
                assert.is_not_nil(seen[#seen].authorization)
            end, 6)
        end)

        it("fails with nil, '401 Unauthorized', 401 for a wrong password", function()
            h.run(function()
                local c, reg, ruri = setup { auth = lookup }
                local r = assert(c:register { registrar = ruri, aor = AOR, user = "alice", password = "nope" })
                assert.same({ nil, "401 Unauthorized", 401 }, { r:wait(2) })
                assert.equal("failed", r.state)
                assert.same({}, reg:lookup(AOR))
                r:close()
                reg:close()
            end)
        end)

        it("fails with 401 without credentials", function()
            h.run(function()
                local c, reg, ruri = setup { auth = lookup }
                local r = assert(c:register { registrar = ruri, aor = AOR })
                assert.same({ nil, "401 Unauthorized", 401 }, { r:wait(2) })
                r:close()
                reg:close()
            end)
        end)

        it("fails with 403 when the credentials are for another user", function()
            h.run(function()
                local c, reg, ruri = setup { auth = lookup }
                local r = assert(c:register { registrar = ruri, aor = "sip:bob@example.com",
                                              user = "alice", password = "secret" })
                assert.same({ nil, "403 Forbidden", 403 }, { r:wait(2) })
                r:close()
                reg:close()
            end)
        end)
    end)

    describe("failures", function()
        it("wait() returns nil, '403 Forbidden', 403", function()
            h.run(function()
                local c, reg, ruri = setup({}, function(req) req:reply(403, "Forbidden") end)
                local r = assert(c:register { registrar = ruri, aor = AOR })
                local ok, err, code = r:wait(2)
                assert.is_nil(ok)
                assert.equal("403 Forbidden", err)
                assert.equal(403, code)
                assert.equal("failed", r.state)
                assert.is_false(r.registered)
                assert.equal(403, r.status)
                -- asked again: the same failure at once
                assert.same({ nil, "403 Forbidden", 403 }, { r:wait(0) })
                r:close()
                reg:close()
            end)
        end)

        it("wait() returns nil, 'timeout', ETIMEDOUT while the registrar does not answer", function()
            h.run(function()
                local release = false
                local c, reg, ruri = setup({}, function(req)
                    while not release do sip.sleep(0.02) end
                    req:reply(503, "Service Unavailable")
                end)
                local r = assert(c:register { registrar = ruri, aor = AOR })
                local t0 = sip.now()
                assert.same({ nil, "timeout", sip.ETIMEDOUT }, { r:wait(0.3) })
                assert.is_true(sip.now() - t0 >= 0.29)
                assert.equal("registering", r.state)
                -- closed with the REGISTER in flight: libre lingers until
                -- its answer, then lets go (no un-REGISTER: never registered)
                r:close()
                release = true
                assert.is_true(wait_until(function() return sip.registration.lingering() == 0 end))
                reg:close()
            end)
        end)

        it("retries after `retry` seconds instead of libre's backoff", function()
            h.run(function()
                local c, reg, ruri, seen = setup({}, function(req, reg, seen)
                    if seen.n == 1 then return req:reply(503, "Service Unavailable") end
                    reg:handle(req)
                end)
                local r = assert(c:register { registrar = ruri, aor = AOR, retry = 0.3 })
                assert.same({ nil, "503 Service Unavailable", 503 }, { r:wait(2) })
                local t0 = sip.now()
                local done
                r:on("registered", function() done = sip.now() end)
                assert.is_true(wait_until(function() return done end, 2))
                assert.is_true(done - t0 > 0.25 and done - t0 < 1, "retried after " .. (done - t0))
                assert.is_true(r:wait(0))
                assert.equal(1, #reg:lookup(AOR))
                finish(r, reg)
            end)
        end)
    end)
end)
