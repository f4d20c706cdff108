--- luasip.auth: digest authentication of incoming requests and calls
-- (RFC 3261 section 22, RFC 7616, RFC 8760).
--
-- Requiring it (init.lua does) adds `challenge`, `authenticate` and
-- `require_auth` to incoming requests (`luasip.request`) and calls
-- (`luasip.call`). The client side is the `auth` option of `ep:call` and
-- `ep:request` (C, csrc/auth.c).
--
-- Nonces are stateless and self-signed:
-- `base64url(expiry_ms(8) .. random(12) .. HMAC-SHA256(secret, expiry_ms
-- .. random .. realm))`, so any nonce this process issued for a realm can
-- be checked without a table; the secret comes from OpenSSL's RAND_bytes
-- at load time (or `opts.secret`, shared by several instances). Only the
-- highest nonce count seen per nonce is kept (two generations of at most
-- `max_nonces` entries) to refuse replays.
-- @module luasip.auth

local core = require "luasip.core"

local type, error, tostring, ipairs, pairs = type, error, tostring, ipairs, pairs
local floor = math.floor
local spack, sunpack = string.pack, string.unpack
local hash, hmac, b64, unb64 = core.digest_hash, core.hmac_sha256,
                               core.base64url, core.base64url_decode
local parse, secure_equal = core.digest_parse, core.secure_equal
local wallclock, random = core.wallclock, core.random

local _M = { _VERSION = core._VERSION }

--- Defaults: `nonce_ttl` (seconds a nonce is valid), `algorithms` (offered
-- by `challenge`, in this order; `authenticate` accepts every supported
-- one unless told otherwise), `max_nonces` (nonce counts remembered per
-- generation), `md5_agents` (Lua patterns for User-Agent values of
-- clients that fail on any challenge but MD5; they are offered MD5 alone
-- when MD5 is among the algorithms). libre up to 1.1.0 (baresip 1.0.0,
-- checked) resets its state, then reads every WWW-/Proxy-Authenticate of
-- the response and gives up (ENOSYS) at the first whose algorithm is not
-- MD5, wherever it stands; no order or form of an RFC 8760 multi-algorithm
-- challenge gets through (src/sip/auth.c, auth_handler).
_M.defaults = {
    nonce_ttl = 300,
    algorithms = { "SHA-256", "MD5" },
    max_nonces = 10000,
    md5_agents = { "^baresip v1%." },
}

local ALGS = { ["MD5"] = "MD5", ["SHA-256"] = "SHA-256", ["SHA-512-256"] = "SHA-512-256" }
local ALL_ALGS = { "SHA-512-256", "SHA-256", "MD5" }
local HA1_FIELD = { ["MD5"] = "ha1", ["SHA-256"] = "ha1_sha256", ["SHA-512-256"] = "ha1_sha512_256" }

local SECRET = random(32)

-- request -> { realm = true, ... } whose Proxy-Authorization it consumed
local consumed = setmetatable({}, { __mode = "k" })
_M._secret = SECRET        -- the default nonce key, for the C registrar
local T_LEN, R_LEN, MAC_LEN = 8, 12, 32


-- level 5: badopt < check_opts < build_challenge/verify < method < caller
local function badopt(fname, name, what, got, level)
    error(("bad option '%s' to '%s' (%s expected, got %s)"):format(
        name, fname, what, tostring(got)), level or 5)
end


-- opts shared by challenge and authenticate, checked and defaulted;
-- algorithms default to those offered (offer) or to all (accepted)
local function check_opts(fname, opts, offer)
    if type(opts) ~= "table" then
        error(("bad argument #%d to '%s' (table expected, got %s)"):format(
            fname == "challenge" and 1 or 2, fname, type(opts)), 4)
    end
    local realm = opts.realm
    if type(realm) ~= "string" or realm == "" or realm:find("[%c]") then
        badopt(fname, "realm", "non-empty string without control characters", realm)
    end
    if opts.proxy ~= nil and type(opts.proxy) ~= "boolean" then
        badopt(fname, "proxy", "boolean", opts.proxy)
    end
    local secret = opts.secret or SECRET
    if type(secret) ~= "string" or #secret < 16 then
        badopt(fname, "secret", "string of at least 16 bytes", type(secret))
    end
    local algs = opts.algorithms or (offer and _M.defaults.algorithms or ALL_ALGS)
    if type(algs) ~= "table" or #algs == 0 then
        badopt(fname, "algorithms", 'list of "SHA-256", "MD5", "SHA-512-256"', algs)
    end
    local list = {}
    for i, a in ipairs(algs) do
        local name = type(a) == "string" and ALGS[a:upper()]
        if not name then
            badopt(fname, "algorithms", '"SHA-256", "MD5" or "SHA-512-256" at [' .. i .. "]", a)
        end
        list[i] = name
        list[name] = true
    end
    return realm, opts.proxy or false, secret, list
end


local function qstr(s)
    return (s:gsub('[\\"]', "\\%0"))
end


local function make_nonce(realm, ttl, secret)
    local t = spack(">I8", floor((wallclock() + ttl) * 1000))
    local r = random(R_LEN)
    return b64(t .. r .. hmac(secret, t .. r .. realm))
end


-- derived from the nonce, so it needs no state either
local function opaque_of(nonce, secret)
    return b64(hmac(secret, "opaque:" .. nonce):sub(1, 12))
end


-- "valid", "stale" or nil (not ours, or not for this realm)
local function check_nonce(nonce, realm, secret)
    local raw = unb64(nonce)
    if not raw or #raw ~= T_LEN + R_LEN + MAC_LEN then return nil end
    local tr = raw:sub(1, T_LEN + R_LEN)
    if not secure_equal(raw:sub(T_LEN + R_LEN + 1), hmac(secret, tr .. realm)) then
        return nil
    end
    local expiry = sunpack(">I8", raw)
    return expiry >= wallclock() * 1000 and "valid" or "stale"
end


-- highest nonce count per nonce, two generations of at most max_nonces
-- (kept in C, shared with the C registrar: csrc/auth.c)
local function nc_accept(nonce, nc)
    return core.nonce_accept(nonce, nc, _M.defaults.max_nonces)
end


-- the client of obj (request or call) copes with MD5 challenges only
local function md5_agent(fname, obj, opts)
    local pats = opts.md5_agents
    if pats == nil then pats = _M.defaults.md5_agents end
    if type(pats) ~= "table" then badopt(fname, "md5_agents", "list of Lua patterns", type(pats), 5) end
    if #pats == 0 or not obj then return false end
    local ua = obj:header("User-Agent")
    if not ua then return false end
    for i, p in ipairs(pats) do
        if type(p) ~= "string" then
            badopt(fname, "md5_agents", ("Lua pattern at [%d]"):format(i), type(p), 5)
        end
        if ua:find(p) then return true end
    end
    return false
end


--- A function(user_agent) -> true for clients to be offered MD5 alone,
-- under opts.md5_agents (default `defaults.md5_agents`), or nil when
-- there are no such patterns (for the registrar's C path).
function _M.md5_agent_matcher(opts)
    local pats = opts.md5_agents
    if pats == nil then pats = _M.defaults.md5_agents end
    if type(pats) ~= "table" then badopt("registrar", "md5_agents", "list of Lua patterns", type(pats), 4) end
    if #pats == 0 then return nil end
    for i, p in ipairs(pats) do
        if type(p) ~= "string" then
            badopt("registrar", "md5_agents", ("Lua pattern at [%d]"):format(i), type(p), 4)
        end
    end
    return function(ua)
        for _, p in ipairs(pats) do
            if ua:find(p) then return true end
        end
        return false
    end
end


-- status, reason, headers of a challenge to obj (nil: no request known)
local function build_challenge(fname, opts, obj)
    local realm, proxy, secret, algs = check_opts(fname, opts, true)
    if #algs > 1 and algs.MD5 and md5_agent(fname, obj, opts) then algs = { "MD5" } end
    local ttl = opts.nonce_ttl or _M.defaults.nonce_ttl
    if type(ttl) ~= "number" or ttl ~= ttl or ttl < 0 then
        badopt(fname, "nonce_ttl", "non-negative number", ttl, 4)
    end
    if opts.headers ~= nil and type(opts.headers) ~= "table" then
        badopt(fname, "headers", "table", type(opts.headers), 4)
    end
    local nonce = make_nonce(realm, ttl, secret)
    local tail = ('", opaque="%s", algorithm=%%s, qop="auth"%s'):format(
        opaque_of(nonce, secret), opts.stale and ", stale=true" or "")
    local head = ('Digest realm="%s", nonce="%s'):format(qstr(realm), nonce)
    local values = {}
    for i, alg in ipairs(algs) do values[i] = head .. tail:format(alg) end

    local headers = {}
    for k, v in pairs(opts.headers or {}) do headers[k] = v end
    headers[proxy and "Proxy-Authenticate" or "WWW-Authenticate"] = values
    if proxy then
        return 407, opts.reason or "Proxy Authentication Required", headers
    end
    return 401, opts.reason or "Unauthorized", headers
end


-- the credentials check shared by requests and calls
local function verify(obj, lookup, opts, fname)
    local ltype = type(lookup)
    if ltype ~= "function" and ltype ~= "table" then
        error(("bad argument #1 to '%s' (function or table expected, got %s)"):format(
            fname, ltype), 3)
    end
    local realm, proxy, secret, algs = check_opts(fname, opts)

    local values, err = obj:header_all(proxy and "Proxy-Authorization" or "Authorization")
    if not values then return nil, err end
    local cred
    for i = 1, #values do
        local p = parse(values[i])
        if p and p.scheme:lower() == "digest" and p.realm == realm then
            cred = p
            break
        end
    end
    if not cred then return nil, "missing" end

    local user, nonce, uri, response = cred.username, cred.nonce, cred.uri, cred.response
    if not (user and nonce and uri and response) then return nil, "malformed" end
    local alg = ALGS[(cred.algorithm or "MD5"):upper()]
    if not alg or not algs[alg] then return nil, "bad algorithm" end
    local qop, nc, cnonce = cred.qop, cred.nc, cred.cnonce
    local ncv
    if qop then
        if qop:lower() ~= "auth" or not cnonce or not nc or not nc:match("^%x%x%x%x%x%x%x%x$") then
            return nil, "malformed"
        end
        ncv = tonumber(nc, 16)
    elseif alg ~= "MD5" then
        return nil, "malformed"           -- RFC 2069 style is MD5 only
    end

    local state = check_nonce(nonce, realm, secret)
    if not state or (cred.opaque and cred.opaque ~= opaque_of(nonce, secret)) then
        return nil, "bad nonce"
    end
    local ruri = obj.uri
    if not ruri or (uri ~= ruri.raw and opts.check_uri ~= false) then
        return nil, "uri mismatch"
    end

    local known
    if ltype == "function" then known = lookup(user, realm) else known = lookup[user] end
    if known == nil or known == false then return nil, "unknown user" end
    local ha1
    if type(known) == "string" then
        ha1 = hash(alg, user .. ":" .. realm .. ":" .. known)
    elseif type(known) == "table" then
        ha1 = known[HA1_FIELD[alg]]
        if ha1 == nil and type(known.password) == "string" then
            ha1 = hash(alg, user .. ":" .. realm .. ":" .. known.password)
        end
        if type(ha1) ~= "string" then return nil, "wrong password" end
        ha1 = ha1:lower()
    else
        error(("%s: lookup returned %s (password, { ha1 = ... } or nil expected)"):format(
            fname, type(known)), 3)
    end

    local ha2 = hash(alg, obj.method .. ":" .. uri)
    local expect
    if qop then
        expect = hash(alg, ha1 .. ":" .. nonce .. ":" .. nc .. ":" .. cnonce .. ":" .. qop .. ":" .. ha2)
    else
        expect = hash(alg, ha1 .. ":" .. nonce .. ":" .. ha2)
    end
    if not secure_equal(expect, response:lower()) then return nil, "wrong password" end
    -- right password, old nonce: the client may retry at once (stale=true)
    if state == "stale" then return nil, "stale" end
    if ncv and not nc_accept(nonce, ncv) then return nil, "replay" end
    if proxy then
        local set = consumed[obj] or {}
        set[realm] = true
        consumed[obj] = set
    end
    return user
end


local function incoming_call(call, fname)
    local dir = call.direction            -- nil once closed
    if dir and dir ~= "incoming" then
        error(("call:%s: only for incoming calls"):format(fname), 3)
    end
end


--- Realms whose Proxy-Authorization this request passed
-- (`authenticate`/`require_auth` with `proxy = true`); `req:forward`
-- leaves those credentials out (RFC 3261 22.3).
-- @param req an incoming request
-- @treturn table|nil list of realms, nil when none
function _M.consumed_realms(req)
    local set = consumed[req]
    if not set then return nil end
    local list = {}
    for realm in pairs(set) do list[#list + 1] = realm end
    table.sort(list)
    return list
end


--- HA1 for storing credentials instead of passwords:
-- `H(user ":" realm ":" password)` in lowercase hex.
-- @tparam string user
-- @tparam string realm
-- @tparam string password
-- @tparam[opt="MD5"] string alg "MD5", "SHA-256" or "SHA-512-256"
-- @treturn string
function _M.ha1(user, realm, password, alg)
    for i, v in ipairs { user, realm, password } do
        if type(v) ~= "string" then
            error(("bad argument #%d to 'ha1' (string expected, got %s)"):format(i, type(v)), 2)
        end
    end
    return hash(alg or "MD5", user .. ":" .. realm .. ":" .. password)
end


--- Digest hash of a string in lowercase hex.
-- @function hash
-- @tparam string alg "MD5", "SHA-256" or "SHA-512-256"
-- @tparam string s
-- @treturn string
_M.hash = hash

--- Parse a Digest header value into a table (names in lower case, values
-- unquoted, `scheme` = "Digest").
-- @function parse
-- @tparam string value
-- @return table, or nil, "malformed"
_M.parse = parse


local REQ = core.methods("luasip.request")
local CALL = core.methods("luasip.call")


--- Answer the request with 401 (or 407 with `proxy = true`) carrying one
-- WWW-Authenticate (Proxy-Authenticate) per algorithm, qop="auth", a
-- fresh nonce and opaque.
-- @tparam table opts `realm` (required), `proxy` (default false),
--   `algorithms` (default { "SHA-256", "MD5" }), `stale` (true after
--   `authenticate` said "stale"), `nonce_ttl` (seconds, default 300),
--   `headers` (extra headers), `reason`, `secret` (HMAC key shared by
--   several instances; default: random per process)
-- @return true, or nil, message, code
function REQ.challenge(req, opts)
    local status, reason, headers = build_challenge("challenge", opts, req)
    return req:reply(status, reason, headers)
end


--- Check the request's Authorization (Proxy-Authorization with
-- `proxy = true`) for a realm. `lookup(user, realm)` may yield (it runs in
-- the request's task) and returns the password, a table `{ ha1 = hex }`
-- (MD5), `{ ha1_sha256 = hex }` (SHA-256), `{ password = ... }`, or nil
-- for an unknown user; a table `{ [user] = password or {...} }` works too.
-- @tparam function|table lookup
-- @tparam table opts `realm` (required), `proxy`, `algorithms` (accepted;
--   default: all of "SHA-512-256", "SHA-256", "MD5"), `secret`,
--   `check_uri` (default true; false accepts a digest uri other than the
--   Request-URI, as sipp 3.6 sends "sip:host:port")
-- @return the user name, or nil, reason: "missing" (no credentials for the
--   realm), "malformed", "bad algorithm", "bad nonce" (not issued here or
--   for another realm), "uri mismatch", "unknown user", "wrong password",
--   "stale" (right password, expired nonce: challenge with stale = true),
--   "replay" (a nonce count not above the last one seen for that nonce)
function REQ.authenticate(req, lookup, opts)
    return verify(req, lookup, opts, "authenticate")
end


--- `authenticate`, and on failure send the matching `challenge` (with
-- stale = true when the nonce expired).
-- @tparam function|table lookup
-- @tparam table opts as for `challenge` and `authenticate`
-- @return the user name, or nil, reason (the challenge is sent)
function REQ.require_auth(req, lookup, opts)
    local user, why = verify(req, lookup, opts, "require_auth")
    if user then return user end
    local status, reason, headers = build_challenge("require_auth", setmetatable(
        { stale = why == "stale" }, { __index = opts }), req)
    req:reply(status, reason, headers)
    return nil, why
end


--- Reject the incoming INVITE with 401 (407 with `proxy = true`) and a
-- challenge; the call is closed (the caller re-INVITEs with credentials,
-- which arrives as a new call).
-- @tparam table opts as for `req:challenge`
-- @return true, or nil, message, code
function CALL.challenge(call, opts)
    incoming_call(call, "challenge")
    local status, reason, headers = build_challenge("challenge", opts, call)
    return call:reject(status, reason, headers)
end


--- Check the credentials of an incoming INVITE, as `req:authenticate`.
-- @tparam function|table lookup
-- @tparam table opts
-- @return the user name, or nil, reason
function CALL.authenticate(call, lookup, opts)
    incoming_call(call, "authenticate")
    return verify(call, lookup, opts, "authenticate")
end


--- `call:authenticate`, and on failure `call:challenge` (the call is then
-- closed).
-- @tparam function|table lookup
-- @tparam table opts
-- @return the user name, or nil, reason
function CALL.require_auth(call, lookup, opts)
    incoming_call(call, "require_auth")
    local user, why = verify(call, lookup, opts, "require_auth")
    if user then return user end
    local status, reason, headers = build_challenge("require_auth", setmetatable(
        { stale = why == "stale" }, { __index = opts }), call)
    call:reject(status, reason, headers)
    return nil, why
end


return _M
