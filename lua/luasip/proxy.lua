--- luasip.proxy: routing methods of incoming requests (csrc/proxy.c).
-- `req:forward()` (stateful, forking, RFC 3261 section 16), `req:relay()`
-- (stateless), `req:redirect()` (3xx) and `req:relay_response()`.
-- init.lua installs them into the luasip.request methods; scripts use
-- them from an `ep:on(...)` handler. On an endpoint made with
-- `proxy = true` INVITEs arrive as requests too.
-- @module luasip.proxy

local core = require "luasip.core"
local sched = require "luasip.sched"
local auth = require "luasip.auth"

local type, tostring, error, ipairs, pairs = type, tostring, error, ipairs, pairs
local wait = sched.wait

local _M = { _VERSION = core._VERSION }

local DEFAULTS = { timeout = 32 }

-- headers forward() needs (long and compact names): never removed
local KEEP = {}
for _, n in ipairs { "via", "v", "from", "f", "to", "t", "call-id", "i", "cseq",
                     "max-forwards", "route", "content-length", "l" } do
    KEEP[n] = true
end
local ECANCELED = core.ECANCELED

-- req -> response context whose failure was not sent upstream yet
local pending = setmetatable({}, { __mode = "k" })

local FWD = core.methods("luasip.forward")
FWD.header = core._msg_header
FWD.header_all = core._msg_header_all


local function argerror(fname, i, what, got)
    error(("bad argument #%d to '%s' (%s expected, got %s)"):format(
        i, fname, what, got), 3)
end


local function opterror(fname, name, what, got)
    error(("bad option '%s' to '%s' (%s expected, got %s)"):format(
        name, fname, what, got), 3)
end


-- targets: "sip:..", { "sip:..", { uri = "sip:.." }, ... } -> list of strings
local function target_list(targets)
    if type(targets) == "string" then return { targets } end
    if type(targets) ~= "table" then
        argerror("forward", 1, "SIP URI or list of targets", type(targets))
    end
    local list = {}
    for i, t in ipairs(targets) do
        if type(t) == "table" then t = t.uri end
        if type(t) ~= "string" then
            argerror("forward", 1, ("SIP URI at targets[%d]"):format(i), type(t))
        end
        list[i] = t
    end
    if #list == 0 then argerror("forward", 1, "at least one target", "none") end
    return list
end


--- Forward the request statefully and wait for the best final response.
-- INVITE gets 100 Trying at once; Max-Forwards 0 is answered 483 and a
-- loop 482. Provisional responses (but 100) and every 2xx go upstream as
-- they arrive; a failure is returned to the script before it is sent,
-- so it can try elsewhere (`req:forward` again), answer itself
-- (`req:reply`), or send it (`req:relay_response(resp)`, or simply
-- return: the request's finalizer sends it).
-- @tparam string|table targets a SIP URI or a list (strings or {uri=})
-- Proxy-Authorization credentials for a realm the script checked with
-- `req:authenticate{ proxy = true }` (or `require_auth`) are consumed:
-- left out of the forwarded request (RFC 3261 22.3); those for other
-- realms go on.
-- @tparam[opt] table opts `record_route` (bool), `parallel` (bool: fork
--   to all at once; default serial, in order), `timeout` (seconds per
--   branch, default 32; for INVITE restarted by each provisional, like
--   Timer C), `headers` (added), `route` (next hop URI, pushed as Route),
--   `remove_headers` (list of header names left out, e.g.
--   `{ "Proxy-Authorization" }`; not Via, From, To, Call-ID, CSeq,
--   Max-Forwards, Route or Content-Length), `keep_credentials` (true:
--   forward the consumed Proxy-Authorization too)
-- @return response (`status`, `reason`, `headers`, `:header()`,
--   `contacts`, `sent` = true once it went upstream, `cancelled`), or
--   nil, message, code (483/482 already answered; "cancelled" when the
--   caller cancelled before; errors)
function _M.forward(req, targets, opts)
    local list = target_list(targets)
    if opts == nil then opts = DEFAULTS end
    if type(opts) ~= "table" then argerror("forward", 2, "table", type(opts)) end
    local timeout = opts.timeout or DEFAULTS.timeout
    if type(timeout) ~= "number" or timeout ~= timeout or timeout <= 0 then
        opterror("forward", "timeout", "positive number", tostring(timeout))
    end
    for _, k in ipairs { "record_route", "parallel", "keep_credentials" } do
        local v = opts[k]
        if v ~= nil and type(v) ~= "boolean" then opterror("forward", k, "boolean", type(v)) end
    end
    if opts.route ~= nil and type(opts.route) ~= "string" then
        opterror("forward", "route", "SIP URI", type(opts.route))
    end
    if opts.headers ~= nil and type(opts.headers) ~= "table" then
        opterror("forward", "headers", "table", type(opts.headers))
    end
    local remove = opts.remove_headers
    if remove ~= nil then
        if type(remove) ~= "table" then opterror("forward", "remove_headers", "list of header names", type(remove)) end
        for i, name in ipairs(remove) do
            if type(name) ~= "string" or not name:match("^[%w%-%.!%%%*_%+`'~]+$") then
                opterror("forward", "remove_headers", ("header name at [%d]"):format(i), tostring(name))
            end
            if KEEP[name:lower()] then
                opterror("forward", "remove_headers", ("a header the proxy may remove at [%d]"):format(i), name)
            end
        end
    end
    if not sched.current() then
        error("luasip.forward: must be called from a task (use luasip.spawn)", 2)
    end
    if req.cancelled then return nil, "cancelled", ECANCELED end

    local realms = not opts.keep_credentials and auth.consumed_realms(req) or nil
    pending[req] = nil
    local fwd, err, code = core.proxy_forward(req, list, opts.record_route,
        opts.parallel, timeout, opts.headers, opts.route, remove, realms)
    if not fwd then return nil, err, code end
    while not fwd.done do
        local ev, e2, e3 = wait(fwd, nil, "luasip.forward")
        if ev == nil then return nil, e2, e3 end
    end
    if not fwd.sent then pending[req] = fwd end
    return fwd
end


--- Send the response req:forward() returned upstream (a failure the
-- script decided not to handle otherwise).
-- @param resp the response object from req:forward()
-- @return true, or nil, message, code (EALREADY once answered)
function _M.relay_response(req, resp)
    local ok, err, code = core.proxy_relay_response(req, resp)
    if ok then pending[req] = nil end
    return ok, err, code
end


--- Relay the request statelessly (RFC 3261 16.11) to its next Route or
-- Request-URI: no forking, no waiting; responses go back the same way.
-- Retransmissions reach the script again and are relayed the same way.
-- @return true, or nil, message, code (483 is answered)
function _M.relay(req)
    return core.proxy_relay(req)
end


local function qvalue(q)
    local s = ("%.3f"):format(q):gsub("0+$", ""):gsub("%.$", "")
    return s
end


--- Answer with a redirection (3xx) listing contacts.
-- @tparam string|table contacts a SIP URI, or a list of URIs or
--   { uri =, q =, expires = }
-- @tparam[opt] table opts `status` (300-399, default 302), `reason`, `headers`
-- @return true, or nil, message, code
function _M.redirect(req, contacts, opts)
    if type(contacts) == "string" or (type(contacts) == "table" and contacts.uri) then
        contacts = { contacts }
    end
    if type(contacts) ~= "table" then
        argerror("redirect", 1, "SIP URI or list of contacts", type(contacts))
    end
    if opts ~= nil and type(opts) ~= "table" then argerror("redirect", 2, "table", type(opts)) end
    opts = opts or {}
    local status = opts.status or 302
    if math.type(status) ~= "integer" or status < 300 or status > 399 then
        opterror("redirect", "status", "integer 300-399", tostring(status))
    end
    local values = {}
    for i, c in ipairs(contacts) do
        local uri, q, expires = c, nil, nil
        if type(c) == "table" then uri, q, expires = c.uri, c.q, c.expires end
        if type(uri) ~= "string" or not uri:match("^sips?:[^%s<>\"]+$") then
            argerror("redirect", 1, ("SIP URI at contacts[%d]"):format(i), tostring(uri))
        end
        local v = "<" .. uri .. ">"
        if q ~= nil then
            if type(q) ~= "number" or q < 0 or q > 1 then
                argerror("redirect", 1, ("q in 0..1 at contacts[%d]"):format(i), tostring(q))
            end
            v = v .. ";q=" .. qvalue(q)
        end
        if expires ~= nil then
            if math.type(expires) ~= "integer" or expires < 0 then
                argerror("redirect", 1, ("expires >= 0 at contacts[%d]"):format(i), tostring(expires))
            end
            v = v .. ";expires=" .. expires
        end
        values[i] = v
    end
    if #values == 0 then argerror("redirect", 1, "at least one contact", "none") end
    local headers = {}
    if opts.headers ~= nil then
        if type(opts.headers) ~= "table" then
            opterror("redirect", "headers", "table", type(opts.headers))
        end
        for k, v in pairs(opts.headers) do headers[k] = v end
    end
    headers.Contact = values
    return req:reply(status, opts.reason, headers)
end


--- Counters: `routed` (in-dialog requests that followed a Route through
-- us, by method), `stray_responses`, `relayed`, `forwarded` and
-- `contexts` (response contexts a branch can still call back).
-- @treturn table
_M.stats = core.proxy_stats


--- Install the methods into luasip.request and chain the request
-- finalizer: a failure returned by forward() and not handled otherwise
-- goes upstream when the handler returns (500 if it raised).
-- @tparam table REQ the luasip.request methods table
function _M.install(REQ)
    REQ.forward = _M.forward
    REQ.relay = _M.relay
    REQ.redirect = _M.redirect
    REQ.relay_response = _M.relay_response
    local finalize = sched.finalizers["luasip.request"]
    sched.finalizers["luasip.request"] = function(req, ok)
        local fwd = pending[req]
        if fwd then
            pending[req] = nil
            if ok and not req.replied then core.proxy_relay_response(req, fwd) end
        end
        if finalize then return finalize(req, ok) end
    end
end


return _M
