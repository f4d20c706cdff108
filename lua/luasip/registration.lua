--- luasip.registration: keep a binding at a registrar (libre's sipreg).
--
--     local reg = ep:register { registrar = "sip:127.0.0.1:5060",
--                               aor = "sip:alice@example.com",
--                               user = "alice", password = "secret" }
--     assert(reg:wait(5))             -- registered
--     ...
--     reg:close()                     -- REGISTER with expires=0
--
-- The registration runs in the background from `ep:register` on: libre
-- refreshes the binding before it expires (at `refresh` × the expiry the
-- registrar granted, 90 % by default) and, after a failure, retries with
-- its own backoff (a random 50–100 % of 60 s, doubling with each further
-- failure up to 30 min) unless `retry` asks for a fixed interval. Like an
-- endpoint, an open registration stays alive when the script drops it.
-- It ends with `reg:close()`, at the end of a `<close>` scope, when its
-- endpoint is closed, when `luasip.run` returns, or at the latest when
-- the Lua state is closed (`__gc`); each sends an un-REGISTER
-- (expires=0) for a binding that is in place.
-- @module luasip.registration

local core = require "luasip.core"
local sched = require "luasip.sched"

local type, tostring, error, pairs, floor = type, tostring, error, pairs, math.floor
local wait, deadline, remaining = sched.wait, sched.deadline, sched.remaining

local ETIMEDOUT, ENOTCONN = core.ETIMEDOUT, core.ENOTCONN

local _M = {
    _VERSION = core._VERSION,
    --- Seconds `luasip.run` waits, after the loop stopped, for the
    -- registrar to answer the un-REGISTERs of the registrations it closes.
    linger = 2,
}

local DEFAULTS = { expires = 3600, refresh = 0.9 }

local EP = core.methods("luasip.endpoint")
local REG = core.methods("luasip.reg")

local live = {}                                     -- reg -> ep (open regs)
local by_ep = setmetatable({}, { __mode = "k" })    -- ep -> { reg = true }


local function optsfail(field, what, got)
    error(("luasip.register: %s: %s expected, got %s"):format(field, what, tostring(got)), 3)
end


local function is_sip_uri(s)
    return type(s) == "string" and s:match("^[sS][iI][pP][sS]?:[^%s<>\"]+$") ~= nil
end


-- the default registrar: the AOR's domain (host and port)
local function domain_of(aor)
    local scheme, rest = aor:match("^([^:]+):(.*)$")
    rest = rest:match("^[^;?]*")
    local hostport = rest:match("@([^@]*)$") or rest
    return scheme:lower() .. ":" .. hostport
end


local function check(opts)
    local o = {}
    if not is_sip_uri(opts.aor) then optsfail("aor", "SIP URI", opts.aor) end
    o.aor = opts.aor
    if opts.registrar == nil then
        o.registrar = domain_of(opts.aor)
    elseif is_sip_uri(opts.registrar) then
        o.registrar = opts.registrar
    else
        optsfail("registrar", "SIP URI", opts.registrar)
    end
    local expires = opts.expires == nil and DEFAULTS.expires or opts.expires
    if math.type(expires) ~= "integer" and not (type(expires) == "number" and expires == floor(expires))
        or expires < 1 or expires > 0x7fffffff then
        optsfail("expires", "whole seconds >= 1", expires)
    end
    o.expires = floor(expires)
    local refresh = opts.refresh == nil and DEFAULTS.refresh or opts.refresh
    if type(refresh) ~= "number" or not (refresh >= 0.05 and refresh <= 0.95) then
        optsfail("refresh", "fraction 0.05-0.95 of the granted expiry", refresh)
    end
    o.refresh = floor(refresh * 100 + 0.5)
    if opts.retry ~= nil then
        if type(opts.retry) ~= "number" or not (opts.retry >= 0.01 and opts.retry <= 86400) then
            optsfail("retry", "seconds (0.01-86400)", opts.retry)
        end
        o.retry = floor(opts.retry * 1000 + 0.5)
    end
    for _, f in ipairs { "display", "contact_user", "contact_params" } do
        if opts[f] ~= nil and type(opts[f]) ~= "string" then optsfail(f, "string", type(opts[f])) end
        o[f] = opts[f]
    end
    if opts.headers ~= nil and type(opts.headers) ~= "table" then
        optsfail("headers", "table", type(opts.headers))
    end
    o.headers = opts.headers

    -- credentials: user/password, or auth = table/list/function(realm)
    local auth = opts.auth
    if opts.user ~= nil or opts.password ~= nil then
        if auth ~= nil then
            error("luasip.register: give either user/password or auth, not both", 3)
        end
        if type(opts.user) ~= "string" then optsfail("user", "string", type(opts.user)) end
        if type(opts.password) ~= "string" then optsfail("password", "string", type(opts.password)) end
        if opts.realm ~= nil and type(opts.realm) ~= "string" then
            optsfail("realm", "string", type(opts.realm))
        end
        auth = { user = opts.user, password = opts.password, realm = opts.realm }
    end
    return o, auth
end


--- Register this endpoint at a registrar and keep the binding fresh.
-- Returns at once; the registration runs in the background.
-- @tparam table opts
--   `aor` (SIP URI, To and From of the REGISTERs; required),
--   `registrar` (Request-URI; default: the AOR's domain),
--   `expires` (seconds asked for, default 3600),
--   `user` + `password` [+ `realm`], or `auth` (a table { user, password,
--   realm }, a list of them, or function(realm) -> user, password) for
--   digest challenges,
--   `contact_user` (default: the endpoint's user), `contact_params`
--   (";+sip.instance=...", added to the Contact), `display`,
--   `headers` (extra headers of every REGISTER),
--   `refresh` (re-register at this fraction of the granted expiry,
--   0.05-0.95, default 0.9),
--   `retry` (seconds to wait after a failure before registering again;
--   default: libre's backoff, 30-60 s doubling to 30 min. With `retry`
--   the failed registration is dropped and a new one (new Call-ID) is
--   started; if the old binding was in place, libre un-REGISTERs it first)
-- @return reg, or nil, message, code; raises on bad options
function EP.register(ep, opts)
    if type(opts) ~= "table" then
        error(("bad argument #1 to 'register' (table expected, got %s)"):format(type(opts)), 2)
    end
    local o, auth = check(opts)
    local reg, err, code = core.register(ep, o, auth)
    if not reg then return nil, err, code end
    live[reg] = ep
    local set = by_ep[ep]
    if not set then set = {}; by_ep[ep] = set end
    set[reg] = true
    return reg
end


local function failure(reg)
    local status = reg.status
    if status and status > 0 then
        return nil, status .. " " .. (reg.reason or ""), status
    end
    local e = reg.errno
    if e == ETIMEDOUT then return nil, "timeout", ETIMEDOUT end
    return nil, "register: " .. (reg.reason or "failed"), e ~= 0 and e or core.EPROTO
end


--- Wait until the registration is in place.
-- Returns at once when it already is (true) or when its last attempt
-- failed (the failure; libre keeps retrying, and `wait` can be called
-- again after the next attempt, e.g. with `reg:on("registered", fn)`).
-- @tparam[opt] number timeout seconds
-- @return true, or nil, message, code: "403 Forbidden", 403 for a final
--   response; "timeout", ETIMEDOUT; "closed", ENOTCONN
function REG.wait(reg, timeout)
    local dl = deadline(timeout, "luasip.reg:wait")
    if not sched.current() then
        error("luasip.reg:wait: must be called from a task (use luasip.spawn)", 2)
    end
    while true do
        local st = reg.state
        if st == "registered" then return true end
        if st == "failed" then return failure(reg) end
        if st == "closed" then return nil, "closed", ENOTCONN end
        local ev, e2, e3 = wait(reg, remaining(dl), "luasip.reg:wait")
        if ev == nil then return nil, e2, e3 end
        if ev == "timeout" then return nil, "timeout", ETIMEDOUT end
    end
end


--- Run fn(reg) in a new task each time ev happens: "registered" (every
-- successful REGISTER, refreshes included) or "failed".
function REG.on(reg, ev, fn)
    if ev ~= "registered" and ev ~= "failed" then
        error(('bad argument #1 to \'on\' ("registered" or "failed" expected, got %s)'):format(tostring(ev)), 2)
    end
    if type(fn) ~= "function" then
        error(("bad argument #2 to 'on' (function expected, got %s)"):format(type(fn)), 2)
    end
    sched.on(reg, ev, fn)
    return reg
end


local reg_close = REG.close
--- Remove the binding (REGISTER with expires=0, sent in the background)
-- and stop refreshing. Safe to call twice.
-- @return true
function REG.close(reg)
    local ep = live[reg]
    if ep then
        live[reg] = nil
        local set = by_ep[ep]
        if set then set[reg] = nil end
    end
    sched.forget(reg)
    return reg_close(reg)
end


-- closing an endpoint ends its registrations first (their un-REGISTERs
-- still go out: the stack lives until the last of them is answered)
local ep_close = EP.close
function EP.close(ep, ...)
    local set = by_ep[ep]
    if set then
        by_ep[ep] = nil
        for reg in pairs(set) do REG.close(reg) end
    end
    return ep_close(ep, ...)
end


--- Number of open registrations.
function _M.count()
    local n = 0
    for _ in pairs(live) do n = n + 1 end
    return n
end


--- Number of registrations libre still holds: open ones, and closed ones
-- whose un-REGISTER (or last REGISTER) is not answered yet.
function _M.lingering()
    return core.reg_drain(0)
end


--- Close every open registration and wait (at most `linger` seconds,
-- running the loop) until their un-REGISTERs are answered. Called when
-- `luasip.run` returns; only has an effect while the loop is stopped.
-- @return the number of un-REGISTERs still unanswered
function _M.close_all(linger)
    for reg in pairs(live) do REG.close(reg) end
    return core.reg_drain(linger or _M.linger)
end


local prev_on_stop = sched.on_stop
sched.on_stop = function(...)
    _M.close_all()
    if prev_on_stop then return prev_on_stop(...) end
end


return _M
