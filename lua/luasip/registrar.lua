--- luasip.registrar: a registrar and location service (RFC 3261 §10.3).
--
--     local reg = sip.registrar { auth = function(user, realm) return pw[user] end,
--                                 realm = "example.com" }
--     reg:attach(ep)                     -- or: ep:on("REGISTER", function(req) reg:handle(req) end)
--     local contacts = reg:lookup("sip:alice@example.com")
--
-- Bindings live in a location store (`luasip.location`: in memory by
-- default, optionally persisted to a file; any object with the store
-- interface fits). Store methods may yield, so `handle` and `lookup` must
-- run in a task (request handlers always do).
--
-- With the memory store (the default) the common path is C
-- (csrc/registrar.c, core.registrar_c): an attached endpoint's REGISTERs
-- are answered inside the event loop without a request object or task,
-- and `handle` runs the same C code. It answers exactly as the Lua code
-- below, which serves every other store; `auth` is called for each
-- REGISTER with credentials, and if it needs to wait (a database lookup)
-- the registrar hands that and every later REGISTER to the Lua path.
-- @module luasip.registrar

local core = require "luasip.core"
local sched = require "luasip.sched"
local location = require "luasip.location"
local auth_mod = require "luasip.auth"

local type, tostring, tonumber, error, pairs, ipairs = type, tostring, tonumber, error, pairs, ipairs
local setmetatable = setmetatable
local floor = math.floor
local concat, sort = table.concat, table.sort
local clock = location.now

local _M = { _VERSION = core._VERSION }

local DEFAULTS = {
    min_expires = 60,
    max_expires = 3600,
    default_expires = 3600,
    sweep = 1,
}

-- extensions this registrar supports (Require: -> 420 for the others)
local SUPPORTED = { path = true }

local MAX_EXPIRES_VALUE = 4294967295     -- 2^32-1: RFC 3261 delta-seconds cap


---------------------------------------------------------------- URIs

local function unescape(s)
    return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end


--- Split a SIP URI into its parts; nil, message when it is not one.
-- @tparam string s "sip:user:pw@host:port;params?headers"
-- @treturn table { scheme, user, password, host, port, params = { name = value|true }, headers }
local function parse_uri(s)
    if type(s) ~= "string" then return nil, "not a string" end
    local scheme, rest = s:match("^(%a[%w+.%-]*):(.+)$")
    if not scheme then return nil, "no scheme" end
    scheme = scheme:lower()
    local u = { scheme = scheme }
    if scheme ~= "sip" and scheme ~= "sips" then
        u.opaque = rest
        return u
    end
    local body, headers = rest:match("^([^?]*)%?(.*)$")
    if not body then body = rest end
    u.headers = headers
    local userinfo, hostpart = body:match("^(.*)@([^@]*)$")
    if not userinfo then hostpart = body end
    if userinfo then
        if userinfo == "" then return nil, "empty user" end
        local user, pw = userinfo:match("^([^:]*):(.*)$")
        u.user = unescape(user or userinfo)
        u.password = pw and unescape(pw)
    end
    local host, tail = hostpart:match("^(%[[%x:.]+%])(.*)$")
    if not host then host, tail = hostpart:match("^([%w.%-]+)(.*)$") end
    if not host or host == "" then return nil, "bad host" end
    u.host = host:lower()
    local port, ptail = tail:match("^:(%d+)(.*)$")
    if port then
        u.port = tonumber(port)
        if u.port > 65535 then return nil, "bad port" end
        tail = ptail
    end
    u.params = {}
    if tail ~= "" then
        if tail:sub(1, 1) ~= ";" then return nil, "bad host part" end
        for p in tail:sub(2):gmatch("[^;]+") do
            local k, v = p:match("^([^=]+)=(.*)$")
            if k then u.params[k:lower()] = v else u.params[p:lower()] = true end
        end
    end
    return u
end
_M.parse_uri = parse_uri


--- Canonical address-of-record (RFC 3261 §10.3 step 5): scheme, user
-- (unescaped, case kept) and lower-case host; port, parameters and
-- headers dropped.
-- @tparam string uri
-- @treturn string "sip:alice@example.com", or nil, message
function _M.aor(uri)
    local u, err = parse_uri(uri)
    if not u then return nil, err end
    if not u.host then return nil, "not a SIP URI" end
    if u.user then return u.scheme .. ":" .. u.user .. "@" .. u.host end
    return u.scheme .. ":" .. u.host
end


-- parameters that take part in URI comparison (RFC 3261 §19.1.4)
local CMP_PARAMS = { "maddr", "method", "transport", "ttl", "user" }


--- Comparison key of a contact URI: equal keys for URIs that RFC 3261
-- §19.1.4 says are equal (scheme and host case-insensitive, user and
-- password case-sensitive after unescaping, explicit ports kept, the
-- user/ttl/method/maddr/transport parameters compared, others ignored).
-- @tparam string uri
-- @treturn string key, or nil, message
function _M.contact_key(uri)
    local u, err = parse_uri(uri)
    if not u then return nil, err end
    if not u.host then return u.scheme .. ":" .. u.opaque end
    local t = { u.scheme, ":" }
    if u.user then
        t[#t + 1] = u.user
        if u.password then t[#t + 1] = ":" .. u.password end
        t[#t + 1] = "@"
    end
    t[#t + 1] = u.host
    if u.port then t[#t + 1] = ":" .. u.port end
    for _, p in ipairs(CMP_PARAMS) do
        local v = u.params[p]
        if v ~= nil then
            t[#t + 1] = ";" .. p .. (v == true and "" or "=" .. unescape(v):lower())
        end
    end
    if u.headers and u.headers ~= "" then
        local hs = {}
        for hv in u.headers:gmatch("[^&]+") do
            local k, v = hv:match("^([^=]*)=(.*)$")
            hs[#hs + 1] = (k or hv):lower() .. "=" .. unescape(v or "")
        end
        sort(hs)
        t[#t + 1] = "?" .. concat(hs, "&")
    end
    return concat(t)
end


---------------------------------------------------------------- parsing

-- contact parameters: expires and q are checked and taken out, the rest
-- is kept as written; returns expires, q, rest or nil, nil, nil, why
local function contact_params(params)
    local expires, q
    local rest = {}
    if params and params ~= "" then
        for p in params:gmatch("[^;]+") do
            local k, v = p:match("^%s*([^=%s]+)%s*=%s*(.-)%s*$")
            local name = (k or p:match("^%s*(.-)%s*$")):lower()
            if name == "expires" then
                if not (v and v:match("^%d+$")) then return nil, nil, nil, "Invalid Contact expires" end
                expires = tonumber(v)
            elseif name == "q" then
                -- qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )
                if not (v and (v:match("^0%.?%d?%d?%d?$") or v:match("^1%.?0?0?0?$"))) then
                    return nil, nil, nil, "Invalid Contact q"
                end
                q = tonumber(v)
            elseif name ~= "" then
                rest[#rest + 1] = k and (name .. "=" .. v) or name
            end
        end
    end
    return expires, q, #rest > 0 and (";" .. concat(rest, ";")) or nil
end


local function http_date(t)
    return os.date("!%a, %d %b %Y %H:%M:%S GMT", floor(t))
end


-- seconds left (whole, rounded up so a live binding never shows 0)
local function left(b, now)
    local s = b.expires - now
    if s <= 0 then return 0 end
    return math.ceil(s - 1e-3)
end


local function by_q(a, b)
    local qa, qb = a.q or 1, b.q or 1
    if qa ~= qb then return qa > qb end
    if (a.updated or 0) ~= (b.updated or 0) then return (a.updated or 0) > (b.updated or 0) end
    return a.key < b.key
end


-- live bindings of a list, sorted by q (highest first)
local function live(list, now)
    local out = {}
    for _, b in ipairs(list) do
        if b.expires > now then out[#out + 1] = b end
    end
    sort(out, by_q)
    return out
end


local function contact_value(b, now)
    local v = "<" .. b.uri .. ">" .. (b.params or "") .. ";expires=" .. left(b, now)
    if b.q then v = v .. ";q=" .. (b.q == floor(b.q) and ("%d"):format(b.q) or tostring(b.q)) end
    return v
end


local function has_token(values, token)
    for _, v in ipairs(values) do
        for t in v:gmatch("[^,%s]+") do
            if t:lower() == token then return true end
        end
    end
    return false
end


---------------------------------------------------------------- registrar

local R = {}
R.__index = R
R.__name = "luasip.registrar"


local function check_seconds(opts, name, fname)
    local v = opts[name]
    if v == nil then return DEFAULTS[name] end
    if type(v) ~= "number" or v ~= v or v < 0 or v ~= floor(v) then
        error(("%s: %s: whole number of seconds >= 0 expected, got %s"):format(
            fname, name, tostring(v)), 3)
    end
    return v
end


local STORE_METHODS = { "get", "put", "remove", "remove_all", "expire" }


--- Create a registrar.
-- @tparam table opts
--   `auth` = function(user, realm) -> password (or nil: unknown user; a
--   `{ ha1 = hex }` table works too, see `req:authenticate`; it may yield);
--   required unless `open = true` (accept unauthenticated registrations);
--   the user who authenticates must be the user part of the AOR (To),
--   or the REGISTER gets 403;
--   `digest` (more options for `req:authenticate`/`req:challenge`:
--   `algorithms`, `secret`, `nonce_ttl`);
--   `realm` (default: the host of the AOR being registered);
--   `store` (a location store, default `location.memory()`);
--   `min_expires` (60), `max_expires` (3600), `default_expires` (3600);
--   `domains` (list of host names the registrar serves; others get 404;
--   default: any); `sweep` (seconds between expiry sweeps of the store, 1);
--   `on_change` = function(aor, bindings) called (in the request's task)
--   after each successful change.
-- @return registrar; raises on bad options
function _M.new(opts)
    local fname = "luasip.registrar"
    if type(opts) ~= "table" then
        error(("bad argument #1 to 'registrar' (table expected, got %s)"):format(type(opts)), 2)
    end
    local auth = opts.auth
    if auth ~= nil and type(auth) ~= "function" then
        error(("%s: auth: function expected, got %s"):format(fname, type(auth)), 2)
    end
    if auth == nil and opts.open ~= true then
        error(fname .. ": auth: function expected (or open = true to accept "
              .. "unauthenticated registrations)", 2)
    end
    if opts.realm ~= nil and (type(opts.realm) ~= "string" or opts.realm == "" or opts.realm:find('[\r\n"]')) then
        error(("%s: realm: string expected, got %s"):format(fname, tostring(opts.realm)), 2)
    end
    local store = opts.store
    if store == nil then
        store = location.memory()
    else
        for _, m in ipairs(STORE_METHODS) do
            local ok, f = pcall(function() return store[m] end)
            if not ok or type(f) ~= "function" then
                error(("%s: store: location store expected (no method '%s'), got %s"):format(
                    fname, m, tostring(store)), 2)
            end
        end
    end
    local min = check_seconds(opts, "min_expires", fname)
    local max = check_seconds(opts, "max_expires", fname)
    local def = check_seconds(opts, "default_expires", fname)
    if max < 1 or min > max then
        error(("%s: max_expires: must be >= 1 and >= min_expires (%d), got %d"):format(fname, min, max), 2)
    end
    if def < 1 then
        error(("%s: default_expires: must be >= 1, got %d"):format(fname, def), 2)
    end
    local sweep = opts.sweep == nil and DEFAULTS.sweep or opts.sweep
    if type(sweep) ~= "number" or not (sweep > 0) then
        error(("%s: sweep: seconds > 0 expected, got %s"):format(fname, tostring(sweep)), 2)
    end
    local domains
    if opts.domains ~= nil then
        if type(opts.domains) ~= "table" then
            error(("%s: domains: list of host names expected, got %s"):format(fname, type(opts.domains)), 2)
        end
        domains = {}
        for i, d in ipairs(opts.domains) do
            if type(d) ~= "string" then
                error(("%s: domains[%d]: string expected, got %s"):format(fname, i, type(d)), 2)
            end
            domains[d:lower()] = true
        end
    end
    local digest = {}
    if opts.digest ~= nil then
        if type(opts.digest) ~= "table" then
            error(("%s: digest: table expected, got %s"):format(fname, type(opts.digest)), 2)
        end
        for k, v in pairs(opts.digest) do
            if k ~= "realm" and k ~= "stale" then digest[k] = v end
        end
    end
    if opts.on_change ~= nil and type(opts.on_change) ~= "function" then
        error(("%s: on_change: function expected, got %s"):format(fname, type(opts.on_change)), 2)
    end

    local self = setmetatable({
        store = store,
        auth = auth,
        realm = opts.realm,
        min_expires = min,
        max_expires = max,
        default_expires = math.min(math.max(def, min), max),
        domains = domains,
        digest = digest,
        on_change = opts.on_change,
        sweep = sweep,
        _lstats = { requests = 0, ok = 0, failed = 0, expired = 0 },
        locks = {},
    }, R)
    self.c = self:_c_path(opts, digest)
    -- counts of both paths: the C one answers most REGISTERs of a memory store
    local lstats, c = self._lstats, self.c
    self.stats = setmetatable({}, { __index = function(_, k)
        local v = lstats[k]
        if c and v then
            local req, ok, failed = c:stats()
            v = v + (k == "requests" and req or k == "ok" and ok or k == "failed" and failed or 0)
        end
        return v
    end })
    self:_start_sweep()
    return self
end


-- The C registrar (csrc/registrar.c) for a memory store: REGISTERs of an
-- attached endpoint are answered without a task; nil for other stores or
-- digest options it cannot take (the Lua path then reports them)
function R:_c_path(opts, digest)
    local ctab = location._c_of(self.store)
    if not ctab then return nil end
    local domains
    if self.domains then
        domains = {}
        for d in pairs(self.domains) do domains[#domains + 1] = d end
    end
    local on_change = self.on_change
    local ok, c = pcall(core.registrar_c, ctab, {
        min_expires = self.min_expires,
        max_expires = self.max_expires,
        default_expires = self.default_expires,
        domains = domains,
        realm = self.realm,
        auth = self.auth,
        secret = digest.secret or auth_mod._secret,
        accept = digest.algorithms or { "SHA-512-256", "SHA-256", "MD5" },
        offer = digest.algorithms or auth_mod.defaults.algorithms,
        nonce_ttl = digest.nonce_ttl or auth_mod.defaults.nonce_ttl,
        max_nonces = auth_mod.defaults.max_nonces,
        check_uri = digest.check_uri ~= false,
        -- clients that fail on any challenge but MD5 (luasip.auth md5_agents)
        md5_agent = auth_mod.md5_agent_matcher(digest),
        -- after a change the C path made: on_change in a task of its own
        notify = on_change and function(aor, bindings)
            sched.spawn(on_change, aor, bindings)
        end,
    })
    if not ok then return nil end
    return c
end


-- expiry sweep: a libre timer (it does not keep luasip.run alive) whose
-- event runs store:expire in a task, so a yielding store works
function R:_start_sweep()
    local t = core.timer()
    self.timer = t
    local weak = setmetatable({ r = self }, { __mode = "v" })
    sched.on(t, "timer", function()
        local r = weak.r
        if not r or r.closed then return end
        local ok, n = pcall(r.store.expire, r.store, clock())
        if not ok then
            sched.log("registrar: store:expire: " .. tostring(n))
        elseif type(n) == "number" then
            r._lstats.expired = r._lstats.expired + n
        end
        if not r.closed then t:start(r.sweep) end
    end)
    t:start(self.sweep)
end


--- Stop the expiry sweep and answer further REGISTERs with 503. The
-- store stays open (it may be shared); what it has pending is flushed.
-- @return true
function R:close()
    if self.closed then return true end
    self.closed = true
    if self.timer then
        sched.forget(self.timer)
        self.timer:close()
        self.timer = nil
    end
    if self.c then self.c:close() end
    local ok, flush = pcall(function() return self.store.flush end)
    if ok and type(flush) == "function" then
        local fok, err = pcall(flush, self.store)
        if not fok then sched.log("registrar: store:flush: " .. tostring(err)) end
    end
    return true
end


--- Answer REGISTERs of ep with this registrar.
-- @param ep endpoint
-- @return self
function R:attach(ep)
    ep:on("REGISTER", function(req) self:handle(req) end)
    if self.c then self.c:attach(ep) end     -- answered in C when it can
    return self
end


local function reply(self, req, code, reason, headers)
    if code >= 300 then self._lstats.failed = self._lstats.failed + 1 end
    req:reply(code, reason, headers)
    return code
end


-- the authenticated user, or nil after answering (401 or 403)
local function authenticate(self, req, aor_user, realm)
    local opts = { realm = realm }
    for k, v in pairs(self.digest) do opts[k] = v end
    local user, why = req:authenticate(self.auth, opts)
    if not user then
        -- missing, stale, wrong or replayed credentials: a fresh challenge
        opts.stale = why == "stale"
        if not req.replied then req:challenge(opts) end
        self._lstats.failed = self._lstats.failed + 1
        return nil
    end
    if user ~= aor_user then
        reply(self, req, 403, "Forbidden", {
            Warning = '399 luasip "' .. tostring(user):gsub('[%c"\\]', "?")
                .. ' may not register this address"',
        })
        return nil
    end
    return user
end


-- Per-AOR mutual exclusion: a store may yield between get and put, and
-- two REGISTERs of one AOR must not interleave there (RFC 3261 §10.3
-- steps 7 and 8 check and commit against the bindings they read). A
-- waiter sleeps on a timer of its own; unlock starts it to pass the lock.
local LOCK_TIMEOUT = 10

local function lock(self, aor)
    local q = self.locks[aor]
    if not q then
        self.locks[aor] = {}
        return true
    end
    local t = core.timer()
    q[#q + 1] = t
    local ev = sched.wait(t, LOCK_TIMEOUT, "luasip.registrar")
    t:close()
    if ev == "timer" then return true end
    for i = 1, #q do
        if q[i] == t then
            table.remove(q, i)
            return false
        end
    end
    return true                     -- handed over as the wait ran out
end


local function unlock(self, aor)
    local q = self.locks[aor]
    if not q then return end
    local t = table.remove(q, 1)
    if t then t:start(0) else self.locks[aor] = nil end
end


-- store call that may fail; raises a marked error the handler turns into 500
local STORE_FAIL = {}

local function st(self, method, ...)
    local ok, a, b = pcall(self.store[method], self.store, ...)
    if not ok then error({ STORE_FAIL, method .. ": " .. tostring(a) }) end
    if a == nil then error({ STORE_FAIL, method .. ": " .. tostring(b) }) end
    return a
end


--- Handle a REGISTER (RFC 3261 §10.3) and answer it.
-- @param req incoming REGISTER
-- @return the status sent and, after a 200, the current bindings
--   (as from `lookup`)
function R:handle(req)
    self._lstats.requests = self._lstats.requests + 1
    if req.method ~= "REGISTER" then
        return reply(self, req, 405, "Method Not Allowed", { Allow = "REGISTER" })
    end
    if self.closed then return reply(self, req, 503, "Service Unavailable") end
    local c = self.c
    if c and not c.fallback then
        -- the C path (same rules); nil when the auth lookup needs a task
        local status, bindings, changed, aor = c:handle(req)
        if status then
            self._lstats.requests = self._lstats.requests - 1   -- counted in C
            if status ~= 200 then return status end
            if changed and self.on_change then self.on_change(aor, bindings) end
            return 200, bindings
        end
    end

    -- step 2: extensions
    local required = req:header_all("Require")
    if #required > 0 then
        local bad = {}
        for _, v in ipairs(required) do
            for t in v:gmatch("[^,%s]+") do
                if not SUPPORTED[t:lower()] then bad[#bad + 1] = t end
            end
        end
        if #bad > 0 then
            return reply(self, req, 420, "Bad Extension", { Unsupported = concat(bad, ", ") })
        end
    end

    -- step 5 (done first: auth needs the AOR user): To is the AOR
    local to = req.to
    local tu = parse_uri(to and to.uri)
    if not tu then return reply(self, req, 400, "Bad To Header") end
    if not tu.host then return reply(self, req, 416, "Unsupported URI Scheme") end
    local aor = _M.aor(to.uri)
    if self.domains and not self.domains[tu.host] then
        return reply(self, req, 404, "Not Found")
    end

    -- steps 3 and 4: authentication and authorization
    if self.auth then
        local realm = self.realm or tu.host
        if not authenticate(self, req, tu.user, realm) then return req.status end
    end

    -- step 6: Contact and Expires
    local hexp = req:header("Expires")
    if hexp ~= nil then
        local v = hexp:match("^%s*(%d+)%s*$")
        if not v then return reply(self, req, 400, "Invalid Expires Header") end
        hexp = math.min(tonumber(v), MAX_EXPIRES_VALUE)
    end
    local contacts = req.contacts
    local star = false
    local wanted = {}              -- { uri, key, expires, q, params }
    for _, c in ipairs(contacts) do
        if c.star then
            star = true
        elseif c.invalid or not c.uri then
            return reply(self, req, 400, "Invalid Contact")
        else
            local key = _M.contact_key(c.uri)
            if not key then return reply(self, req, 400, "Invalid Contact URI") end
            local e, q, rest, why = contact_params(c.params)
            if why then return reply(self, req, 400, why) end
            wanted[#wanted + 1] = { uri = c.uri, key = key, expires = e, q = q, params = rest }
        end
    end
    -- a Contact header libre could not split into values at all
    if #contacts == 0 and req:header("Contact") then
        return reply(self, req, 400, "Invalid Contact")
    end

    local call_id, cseq = req.call_id, req.cseq
    if not lock(self, aor) then
        sched.log("registrar: " .. aor .. ": busy for " .. LOCK_TIMEOUT .. " s")
        return reply(self, req, 500, "Server Internal Error", { ["Retry-After"] = "1" })
    end
    local pok, status, result = pcall(self._update, self, req, aor, star, #contacts,
                                      wanted, hexp, call_id, cseq)
    unlock(self, aor)
    if not pok then error(status, 0) end
    if status ~= 200 then return status end
    if result.changed and self.on_change then self.on_change(aor, result.bindings) end
    return 200, result.bindings
end


-- steps 6 to 8 and the answer, under the AOR's lock; never raises for
-- store failures (500)
function R:_update(req, aor, star, ncontacts, wanted, hexp, call_id, cseq)
    local now = clock()
    local ok, res = pcall(function()
        if star then
            if ncontacts > 1 then error({ 400, "Invalid Contact: * with other contacts" }) end
            if hexp ~= 0 then error({ 400, "Invalid Contact: * needs Expires: 0" }) end
            local current = st(self, "get", aor)
            for _, b in ipairs(current) do
                if b.expires > now and b.call_id == call_id and cseq <= b.cseq then
                    error({ 500, "Server Internal Error", "out-of-order REGISTER (CSeq not higher)" })
                end
            end
            if self.store.update then              -- atomic with its check
                if not st(self, "update", aor, { { remove_all = true } },
                          { call_id = call_id, cseq = cseq }) then
                    error({ 500, "Server Internal Error", "out-of-order REGISTER (CSeq not higher)" })
                end
            elseif #current > 0 then st(self, "remove_all", aor) end
            return true
        end

        -- expiry of each contact: parameter, Expires header, default
        for _, w in ipairs(wanted) do
            local e = w.expires or hexp or self.default_expires
            e = math.min(e, MAX_EXPIRES_VALUE)
            if e > 0 and e < self.min_expires then
                if e < 3600 then error({ 423 }) end
                e = self.min_expires
            end
            if e > self.max_expires then e = self.max_expires end
            w.expires = e
        end
        if #wanted == 0 then return false end          -- a query

        -- step 7: compare with the current bindings (tentatively)
        local current = st(self, "get", aor)
        local by_key = {}
        for _, b in ipairs(current) do
            if b.expires > now then by_key[b.key] = b end
        end
        local path = req:header_all("Path")
        if #path == 0 then path = nil end
        local ops, seen = {}, {}
        for _, w in ipairs(wanted) do
            local old = by_key[w.key]
            if old and old.call_id == call_id and cseq <= old.cseq then
                error({ 500, "Server Internal Error", "out-of-order REGISTER (CSeq not higher)" })
            end
            local i = seen[w.key] or (#ops + 1)      -- a repeated contact: last wins
            seen[w.key] = i
            if w.expires == 0 then
                ops[i] = old and { remove = w.key, old = old } or { noop = true }
            else
                ops[i] = { old = old, put = {
                    key = w.key, uri = w.uri, params = w.params, q = w.q,
                    expires = now + w.expires, call_id = call_id, cseq = cseq,
                    received = req.source, transport = req.transport,
                    path = path,
                    user_agent = req:header("User-Agent"),
                    instance = w.params and w.params:match(';%+sip%.instance="?([^";]+)"?'),
                    reg_id = w.params and tonumber(w.params:match(";reg%-id=(%d+)")),
                    updated = now,
                } }
            end
        end

        -- step 8: commit all or nothing; a store with update() checks step
        -- 7 again and commits in one step (registrars in other processes)
        if self.store.update then
            local changes = {}
            for _, op in ipairs(ops) do
                if op.put then changes[#changes + 1] = { put = op.put }
                elseif op.remove then changes[#changes + 1] = { remove = op.remove } end
            end
            if #changes > 0 and not st(self, "update", aor, changes,
                                       { call_id = call_id, cseq = cseq }) then
                error({ 500, "Server Internal Error", "out-of-order REGISTER (CSeq not higher)" })
            end
            return true
        end
        local done = {}
        local cok, cerr = pcall(function()
            for _, op in ipairs(ops) do
                if op.put then st(self, "put", aor, op.put)
                elseif op.remove then st(self, "remove", aor, op.remove) end
                done[#done + 1] = op
            end
        end)
        if not cok then
            for i = #done, 1, -1 do                  -- undo, best effort
                local op = done[i]
                if op.old then pcall(self.store.put, self.store, aor, op.old)
                else pcall(self.store.remove, self.store, aor, op.put.key) end
            end
            error(cerr, 0)
        end
        return true
    end)

    if not ok then
        if type(res) == "table" and res[1] == STORE_FAIL then
            sched.log("registrar: " .. aor .. ": store " .. tostring(res[2]))
            return reply(self, req, 500, "Server Internal Error")
        elseif type(res) == "table" and res[1] == 423 then
            return reply(self, req, 423, "Interval Too Brief",
                         { ["Min-Expires"] = tostring(self.min_expires) })
        elseif type(res) == "table" and type(res[1]) == "number" then
            return reply(self, req, res[1], res[2], res[3] and {
                Warning = '399 luasip "' .. res[3] .. '"' } or nil)
        end
        error(res, 0)
    end
    local changed = res

    -- the answer: every current binding with its expires, and a Date
    local gok, list = pcall(st, self, "get", aor)
    if not gok then
        sched.log("registrar: " .. aor .. ": store " .. tostring(list[2] or list))
        return reply(self, req, 500, "Server Internal Error")
    end
    now = clock()
    local bindings = live(list, now)
    local values = {}
    for i, b in ipairs(bindings) do values[i] = contact_value(b, now) end
    local headers = { Date = http_date(os.time()) }
    if #values > 0 then headers.Contact = values end
    if has_token(req:header_all("Supported"), "path") then
        local p = req:header_all("Path")
        if #p > 0 then headers.Path = p end
    end
    self._lstats.ok = self._lstats.ok + 1
    req:reply(200, "OK", headers)
    return 200, { changed = changed, bindings = self:_export(bindings, now) }
end


function R:_export(bindings, now)
    local out = {}
    for i, b in ipairs(bindings) do
        out[i] = {
            uri = b.uri, q = b.q, expires = left(b, now), path = b.path,
            received = b.received, transport = b.transport,
            instance = b.instance, user_agent = b.user_agent,
            call_id = b.call_id, cseq = b.cseq,
        }
    end
    return out
end


--- Contacts registered for an address, highest q first (then the most
-- recently registered).
-- @tparam string uri an AOR or any SIP URI of it (parameters, port ignored)
-- @return list of { uri, q, expires (seconds left), path, received,
--   transport, instance, user_agent }, possibly empty; or nil, message
--   when the store fails
function R:lookup(uri)
    if type(uri) == "table" and type(uri.raw) == "string" then uri = uri.raw end
    local aor, err = _M.aor(uri)
    if not aor then
        error(("bad argument #1 to 'lookup' (SIP URI expected, got %s)"):format(tostring(uri)), 2)
    end
    if self.c then return self.c:lookup(aor) end
    local ok, list, lerr = pcall(self.store.get, self.store, aor)
    if not ok then return nil, tostring(list) end
    if not list then return nil, lerr end
    local now = clock()
    return self:_export(live(list, now), now)
end


--- The canonical AOR the registrar files `uri` under.
R.aor = function(_, uri) return _M.aor(uri) end

_M.SUPPORTED = SUPPORTED

return _M
