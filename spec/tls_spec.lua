-- spec/tls_spec.lua: calls over TLS between two endpoints in one process,
-- with self-signed certificates made by openssl(1) at test time in a
-- temporary directory that is removed afterwards.
local h = require "spec.helper"
local sip = h.sip

local dir                    -- temp directory holding the PEM files
local C, K                   -- the certificate both ends use, its key
local CK                     -- C and K in one PEM file
local C2                     -- an unrelated self-signed certificate
local files = {}


local function sh(cmd)
    local ok, how, code = os.execute(cmd)
    assert(ok, ("%s: %s %s"):format(cmd, tostring(how), tostring(code)))
end


local function selfsigned(name)
    local cert, key = dir .. "/" .. name .. ".crt", dir .. "/" .. name .. ".key"
    sh(("openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 "
        .. "-addext subjectAltName=IP:127.0.0.1 -days 1 -keyout %q -out %q "
        .. ">/dev/null 2>&1"):format(key, cert))
    files[#files + 1], files[#files + 2] = cert, key
    return cert, key
end


-- libre 1.1.0 cannot send to a sips: URI (sip_request() returns ENOSYS
-- for a route scheme other than sip), so calls go to sip:...;transport=tls
local function tls_uri(ep, user)
    local a = ep:addresses()[1]
    assert.equal("tls", a.transport)
    return ("sip:%s@%s:%d;transport=tls"):format(user, a.host, a.port)
end


-- callee b (trusts C) and caller a with a_tls; b answers, waits for BYE
local function tls_pair(a_tls)
    local b = h.endpoint { transports = { "tls" }, user = "bob",
                           tls = { cert = CK, key = CK, ca = C } }
    local a = h.endpoint { transports = { "tls" }, user = "alice", tls = a_tls }
    local seen = {}
    b:on("INVITE", function(call)
        seen.transport = call.transport
        seen.uri = call.uri
        assert(call:answer())
        seen.ended = call:wait_hangup(5)
        call:close()
    end)
    return a, b, seen
end


-- let the BYE land and free the call boxes before h.run closes the
-- endpoints (see the "teardown" specs in call_spec.lua)
local function settle()
    sip.sleep(0.1)
    collectgarbage()
    collectgarbage()
end


describe("luasip TLS", function()
    setup(function()
        dir = os.tmpname()
        os.remove(dir)
        sh(("mkdir -m 700 %q"):format(dir))
        C, K = selfsigned("a")
        C2 = selfsigned("b")
        CK = dir .. "/a.pem"
        sh(("cat %q %q > %q"):format(C, K, CK))
        files[#files + 1] = CK
    end)

    teardown(function()
        for _, f in ipairs(files) do os.remove(f) end
        assert(os.remove(dir))
    end)

    it("listens with cert and key in separate PEM files", function()
        h.run(function()
            local ep, err, code = sip.endpoint {
                listen = "tls:127.0.0.1:0",
                tls = { cert = C, key = K, ca = C },
            }
            assert.is_truthy(ep, ("%s %s"):format(tostring(err), tostring(code)))
            local a = ep:addresses()[1]
            assert.equal("tls", a.transport)
            assert.is_true(a.port > 0)
            ep:close()
        end, 2)
    end)

    it("places and answers a call when both ends trust the certificate", function()
        h.run(function()
            local a, b, seen = tls_pair { cert = CK, key = CK, ca = C }
            local call, err, code = a:call(tls_uri(b, "bob"), { timeout = 5 })
            assert.is_truthy(call, ("%s %s"):format(tostring(err), tostring(code)))
            assert.equal("established", call.state)
            assert.equal("tls", call.transport)
            assert.equal("tls", seen.transport)
            assert.equal("bob", seen.uri.user)
            sip.sleep(0.1)
            call:close()
            settle()
            assert.equal("hangup", seen.ended)
        end, 10)
    end)

    it("returns nil, 'call: Protocol error', EPROTO when the caller does not trust the callee", function()
        h.run(function()
            -- a presents C (which b trusts) but trusts only C2
            local a, b, seen = tls_pair { cert = CK, key = CK, ca = C2 }
            local t0 = sip.now()
            local call, err, code = a:call(tls_uri(b, "bob"), { timeout = 5 })
            assert.is_nil(call)
            assert.equal("call: Protocol error", err)
            assert.equal(sip.EPROTO, code)
            assert.is_true(sip.now() - t0 < 2, "fails at the handshake")
            assert.is_nil(seen.transport)      -- b never saw the INVITE
            settle()
        end, 10)
    end)

    it("connects with verify = false despite an untrusted certificate", function()
        h.run(function()
            local a, b, seen = tls_pair { cert = CK, key = CK, ca = C2, verify = false }
            local call, err, code = a:call(tls_uri(b, "bob"), { timeout = 5 })
            assert.is_truthy(call, ("%s %s"):format(tostring(err), tostring(code)))
            assert.equal("established", call.state)
            assert.equal("tls", seen.transport)
            call:close()
            settle()
            assert.equal("hangup", seen.ended)
        end, 10)
    end)

    it("raises on a tls listener without tls options", function()
        assert.has_error(function()
            sip.endpoint { listen = "tls:127.0.0.1:0" }
        end, "luasip.endpoint: tls listen needs tls = { cert = ..., key = ... }")
    end)
end)
