--- luasip: scripting SIP in Lua on libre.
-- `require "luasip"` is the only entry point scripts use. Every handler
-- runs in its own task (a coroutine); waiting calls yield the task and
-- never block the loop.
-- @module luasip

local core = require "luasip.core"
local sched = require "luasip.sched"
local media = require "luasip.media"

local type, tostring, error, select = type, tostring, error, select
local wait, deadline, remaining = sched.wait, sched.deadline, sched.remaining

local _M = {
    _NAME = core._NAME,
    _VERSION = core._VERSION,
}

for k, v in pairs(core) do
    if type(v) == "number" and k:match("^E[A-Z]+$") then _M[k] = v end
end

local ETIMEDOUT = core.ETIMEDOUT

--- Reason phrases of RFC 3261 and friends, by status code.
local REASONS = {
    [100] = "Trying", [180] = "Ringing", [181] = "Call Is Being Forwarded",
    [182] = "Queued", [183] = "Session Progress", [200] = "OK",
    [202] = "Accepted", [204] = "No Notification",
    [300] = "Multiple Choices", [301] = "Moved Permanently",
    [302] = "Moved Temporarily", [305] = "Use Proxy",
    [380] = "Alternative Service", [400] = "Bad Request",
    [401] = "Unauthorized", [402] = "Payment Required", [403] = "Forbidden",
    [404] = "Not Found", [405] = "Method Not Allowed",
    [406] = "Not Acceptable", [407] = "Proxy Authentication Required",
    [408] = "Request Timeout", [410] = "Gone",
    [413] = "Request Entity Too Large", [414] = "Request-URI Too Long",
    [415] = "Unsupported Media Type", [416] = "Unsupported URI Scheme",
    [420] = "Bad Extension", [421] = "Extension Required",
    [423] = "Interval Too Brief", [480] = "Temporarily Unavailable",
    [481] = "Call/Transaction Does Not Exist", [482] = "Loop Detected",
    [483] = "Too Many Hops", [484] = "Address Incomplete",
    [485] = "Ambiguous", [486] = "Busy Here", [487] = "Request Terminated",
    [488] = "Not Acceptable Here", [489] = "Bad Event",
    [491] = "Request Pending", [493] = "Undecipherable",
    [500] = "Server Internal Error", [501] = "Not Implemented",
    [502] = "Bad Gateway", [503] = "Service Unavailable",
    [504] = "Server Time-out", [505] = "Version Not Supported",
    [513] = "Message Too Large", [600] = "Busy Everywhere",
    [603] = "Decline", [604] = "Does Not Exist Anywhere",
    [606] = "Not Acceptable",
}
_M.REASONS = REASONS
debug.getregistry()["luasip.reasons"] = REASONS

-- methods this stack knows; others still get 405 with Allow
local BUILTIN_ALLOW = { "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS" }


local function argerror(fname, i, what, got)
    error(("bad argument #%d to '%s' (%s expected, got %s)"):format(
        i, fname, what, got), 3)
end


local function check_opts(fname, opts, i)
    if opts == nil then return {} end
    if type(opts) ~= "table" then argerror(fname, i or 1, "table", type(opts)) end
    return opts
end


--- Seconds on a monotonic clock (float).
-- @treturn number
_M.now = core.now

--- Start fn(...) as a new task.
-- @tparam function fn
_M.spawn = sched.spawn

--- Run the loop with fn(...) as the first task; returns when `stop()` is
-- called or no task and no open endpoint is left.
-- @tparam[opt] function fn
-- @return true, or nil, message, code
_M.run = sched.run

--- Make `run()` return.
_M.stop = sched.stop


--- Suspend the running task for s seconds.
-- @tparam number s seconds
-- @return true
function _M.sleep(s)
    if type(s) ~= "number" or s ~= s or s < 0 then
        argerror("sleep", 1, "non-negative number", tostring(s))
    end
    if not sched.current() then
        error("luasip.sleep: must be called from a task (use luasip.spawn)", 2)
    end
    wait({}, s, "luasip.sleep")
    return true
end


--- Run fn (in a new task) after s seconds; returns a timer with :stop().
-- @tparam number s seconds
-- @tparam function fn
function _M.after(s, fn)
    if type(s) ~= "number" or s ~= s or s < 0 then
        argerror("after", 1, "non-negative number", tostring(s))
    end
    if type(fn) ~= "function" then argerror("after", 2, "function", type(fn)) end
    local t = core.timer()
    sched.on(t, "timer", function() sched.forget(t); fn() end)
    sched.set_handler(t, function() end)     -- keeps run() alive
    t:start(s)
    local stop = t.stop
    return setmetatable({}, { __index = {
        stop = function() sched.forget(t); return stop(t) end,
    } })
end


---------------------------------------------------------------- endpoint

local EP = core.methods("luasip.endpoint")
local eps = setmetatable({}, { __mode = "k" })  -- ep -> { handlers = {} }


local function allow_list(state)
    local seen, list = {}, {}
    for _, m in ipairs(BUILTIN_ALLOW) do seen[m] = true; list[#list + 1] = m end
    for m in pairs(state.handlers) do
        if m:match("^%u+$") and not seen[m] then seen[m] = true; list[#list + 1] = m end
    end
    table.sort(list)
    return table.concat(list, ", ")
end


-- default answers for requests no handler took
local function default_reply(state, req)
    local method = req.method
    if method == "OPTIONS" then
        return req:reply(200, "OK", {
            Allow = allow_list(state),
            Accept = "application/sdp",
            Supported = state.supported,
        })
    end
    return req:reply(405, "Method Not Allowed", { Allow = allow_list(state) })
end


local function ep_event(ep, ev, obj)
    local state = eps[ep]
    if not state then return end
    if ev == "request" then
        local fn = state.handlers[obj.method] or state.handlers.request
        if fn then
            sched.spawn_owner(obj, fn)
        else
            default_reply(state, obj)
            obj:close()
        end
    elseif ev == "invite" then
        local fn = state.handlers.INVITE
        if fn then
            media.bind(obj, ep)
            sched.spawn_owner(obj, fn)
        else
            obj:reject(405, "Method Not Allowed", { Allow = allow_list(state) })
            obj:close()
        end
    end
end


-- unreplied requests when their task ends: 500 on error, default otherwise
sched.finalizers["luasip.request"] = function(req, ok)
    if not req.replied and req.status ~= 999 then
        if ok then
            req:reply(500, "Server Internal Error", { Warning = '399 luasip "handler returned without a reply"' })
        else
            req:reply(500, "Server Internal Error")
        end
    end
end


--- Create an endpoint: a SIP stack with its transports.
-- @tparam table opts `listen` (string or list of "udp|tcp|tls|ws:ip:port",
--   port 0 picks a free port), `user` (Contact user, default "luasip"),
--   `from` (default From URI), `user_agent`, `tls` = { cert, key, ca,
--   verify (default true) }, `proxy` (true: INVITEs arrive as requests,
--   to `req:forward()`, instead of calls), `rtp_ports` ({ min, max } for
--   media calls, default { 10000, 20000 }), `srtp` and `srtp_suites`
--   (defaults of the endpoint's media calls, see EP.call), `supported`
--   (option tags the script itself handles, e.g. { "path" }: listed in
--   Supported of OPTIONS answers; a request whose Require names any other
--   tag gets 420 Bad Extension with Unsupported, RFC 3261 8.2.2.3, except
--   on a proxy endpoint, which forwards Require untouched)
-- @return endpoint, or nil, message, code
function _M.endpoint(opts)
    if type(opts) ~= "table" then argerror("endpoint", 1, "table", type(opts)) end
    media.set_endpoint(nil, opts)             -- rtp_ports
    local ep, err, code = core.endpoint(opts)
    if not ep then return nil, err, code end
    media.set_endpoint(ep, opts)
    eps[ep] = { handlers = {}, supported = table.concat(opts.supported or {}, ", ") }
    sched.set_handler(ep, ep_event)
    return ep
end


--- Handle requests: `ep:on("INVITE", function(call) ... end)`,
-- `ep:on("OPTIONS", function(req) ... end)`, `ep:on("request", fn)` for
-- every method without its own handler. Each request runs in a new task.
-- @tparam string method SIP method (upper case) or "request"
-- @tparam function fn handler, or nil to remove
-- @return ep
function EP.on(ep, method, fn)
    local state = eps[ep]
    if not state then error("luasip.endpoint: endpoint is closed", 2) end
    if type(method) ~= "string" or not (method == "request" or method:match("^[%u%-]+$")) then
        argerror("on", 1, 'method name ("INVITE", "OPTIONS", ... or "request")', tostring(method))
    end
    if fn ~= nil and type(fn) ~= "function" then argerror("on", 2, "function", type(fn)) end
    state.handlers[method] = fn
    if method == "REGISTER" then core.registrar_detach(ep) end   -- a new handler decides
    return ep
end


local ep_close = EP.close
--- Close the endpoint: stop listening and leave run() free to return.
function EP.close(ep)
    sched.forget(ep)
    eps[ep] = nil
    return ep_close(ep)
end


--- The endpoint's first SIP URI for a transport ("udp" by default).
-- @tparam[opt] string transport
-- @treturn string|nil
function EP.uri(ep, transport)
    for _, a in ipairs(ep:addresses()) do
        if not transport or a.transport == transport then return a.uri end
    end
    return nil
end


--- Send an out-of-dialog request and wait for its final response.
-- @tparam table opts `method`, `uri`, `from`, `to`, `headers`, `body`,
--   `timeout` (seconds, default 32), `auth` (digest credentials, as for
--   `ep:call`; a 401/407 is answered once per realm, a refused one is the
--   final response)
-- @return response (fields status, reason, headers, body, `:header(name)`),
--   or nil, message, code (code = SIP status >= 300 or errno); after a
--   final failure response the response is the 4th value:
--   nil, "405 Method Not Allowed", 405, response
function EP.request(ep, opts)
    if type(opts) ~= "table" then argerror("request", 1, "table", type(opts)) end
    local method, uri = opts.method, opts.uri
    if type(method) ~= "string" or not method:match("^[%u%-]+$") then
        error(("luasip.request: method: SIP method expected, got %s"):format(tostring(method)), 2)
    end
    if method == "INVITE" or method == "ACK" or method == "CANCEL" then
        error("luasip.request: method: use ep:call() for " .. method, 2)
    end
    if type(uri) ~= "string" or not uri:match("^sips?:[^%s]+$") then
        error(("luasip.request: uri: SIP URI expected, got %s"):format(tostring(uri)), 2)
    end
    local dl = deadline(opts.timeout or 32, "luasip.request")
    if not sched.current() then
        error("luasip.request: must be called from a task (use luasip.spawn)", 2)
    end
    local creq, err, code = core.send_request(ep, method, uri, opts.from, opts.to,
                                              opts.headers, opts.body, opts.auth)
    if not creq then return nil, err, code end
    while not creq.done do
        local ev = wait(creq, remaining(dl), "luasip.request")
        if ev == "timeout" then
            creq:close()
            return nil, "timeout", ETIMEDOUT
        end
    end
    local ok, rerr, rcode = creq:result()
    if not ok then return nil, rerr, rcode end
    local status = creq.status
    if status >= 300 then    -- the response rides along (Allow, Warning)
        return nil, status .. " " .. (creq.reason or ""), status, creq
    end
    return creq
end


local RESP = core.methods("luasip.client_request")
RESP.header = core._msg_header
RESP.header_all = core._msg_header_all

local REQ = core.methods("luasip.request")
REQ.header = core._msg_header
REQ.header_all = core._msg_header_all
require("luasip.proxy").install(REQ)  -- forward, relay, redirect (luasip.proxy)


---------------------------------------------------------------- calls

local CALL = core.methods("luasip.call")
CALL.header = core._msg_header
CALL.header_all = core._msg_header_all


-- calls whose task ends: incoming unanswered -> 500 (error) / 480, others hang up
sched.finalizers["luasip.call"] = function(call, ok)
    local st = call.state
    if st == "closed" then return end
    if call.direction == "incoming" and (st == "incoming" or st == "ringing") then
        if ok then call:reject(480, "Temporarily Unavailable")
        else call:reject(500, "Server Internal Error") end
    else
        call:hangup()
    end
end


local function closed_result(call)
    local cause = call.cause
    if cause == "rejected" then
        return nil, call.status .. " " .. (call.reason or ""), call.status
    elseif cause == "cancelled" then
        return nil, "cancelled", core.ECANCELED
    elseif cause == "timeout" then
        return nil, "timeout", ETIMEDOUT
    elseif cause == "hangup" then
        return nil, "hangup", core.ECONNRESET
    elseif cause == "error" and call.errno > 0 then
        -- transport failure (TLS handshake, connection refused, ...)
        return nil, "call: " .. call.reason, call.errno
    end
    return nil, cause or "closed", core.ENOTCONN
end


-- best Contact of a 3xx answer not tried yet (highest q, then first)
local function redirect_target(call, tried)
    if call.cause ~= "rejected" or call.status < 300 or call.status > 399 then return nil end
    local best, bestq
    for _, c in ipairs(call.contacts or {}) do
        local u = c.uri
        if u and u:match("^sips?:") and not tried[u] and (c.q or 1) > (bestq or -1) then
            best, bestq = u, c.q or 1
        end
    end
    return best
end


--- Place a call and wait until it is answered.
-- @tparam string uri SIP URI to call
-- @tparam[opt] table opts `from`, `display`, `headers`, `body` (SDP offer),
--   `content_type`, `timeout` (seconds; CANCEL when it runs out),
--   `on_progress` (function(call, status) for each provisional response),
--   `auth` (digest credentials for 401/407: `{ user =, password =,
--   realm = }`, a list of those, or function(realm) -> user, password),
--   `follow_redirects` (n: on a 3xx call its best Contact not yet tried,
--   at most n times; default 0), `media` (true: offer RTP audio and run
--   it from the answer on, see luasip.media; "late": INVITE without SDP,
--   the 200's offer is answered in the ACK), `codecs` (with media:
--   { "PCMU", "PCMA" } in order of preference), `symmetric` (latch RTP
--   to the first source), `direction` ("sendrecv", ...),
--   `telephone_event` (false: no RFC 4733, digits detected in-band),
--   `srtp` ("off" default, "optional": RTP/AVP with a=crypto,
--   "mandatory": RTP/SAVP), `srtp_suites` (list of
--   "AES_CM_128_HMAC_SHA1_80" / "_32" to offer, default both)
-- @return call, or nil, message, code (code: SIP status or errno;
--   488 when the answer has no codec we allow)
function EP.call(ep, uri, opts)
    if type(uri) ~= "string" then argerror("call", 1, "SIP URI string", type(uri)) end
    opts = check_opts("call", opts, 2)
    local dl = deadline(opts.timeout, "luasip.call")
    local redirects, tried = opts.follow_redirects or 0, { [uri] = true }
    if math.type(redirects) ~= "integer" or redirects < 0 then
        argerror("call", 2, "follow_redirects: integer >= 0", tostring(redirects))
    end
    if not sched.current() then
        error("luasip.call: must be called from a task (use luasip.spawn)", 2)
    end
    local m, body = nil, opts.body
    if opts.media then                          -- luasip.media: SDP offer
        local merr, mcode
        m, merr, mcode = media.offer(ep, opts)
        if not m then return nil, merr, mcode end
        body = merr
        if opts.media == "late" then body = nil end  -- offer comes in the 200
    end
    ::dial::
    local call, err, code = core.call(ep, uri, opts.from, opts.display,
                                      opts.headers, body, opts.content_type,
                                      opts.auth)
    if not call then
        if m then m:close() end
        return nil, err, code
    end
    sched.own(call)
    if m and opts.media == "late" then media.late(call, m) end
    if opts.on_progress then sched.on(call, "progress", opts.on_progress) end
    while true do
        local st = call.state
        if st == "early" and m and call.remote_sdp and not call.media then
            media.answered(call, m, true)      -- early media (183 with SDP)
        end
        if st == "established" then
            if m then
                local ok, merr, mcode = media.answered(call, m)
                if not ok then call:hangup(); return nil, merr, mcode end
            end
            return call
        end
        if st == "closed" then
            sched.disown(call)
            local nxt = redirects > 0 and redirect_target(call, tried)
            if nxt then
                redirects, uri, tried[nxt] = redirects - 1, nxt, true
                goto dial
            end
            if m then m:close() end
            return closed_result(call)
        end
        local ev = wait(call, remaining(dl), "luasip.call")
        if ev == "timeout" then
            if m then m:close() end
            call:hangup()                      -- CANCEL
            sched.disown(call)
            return nil, "timeout", ETIMEDOUT
        end
    end
end


--- Send 180 Ringing (or another 1xx) for an incoming call.
-- @tparam[opt] table opts `status` (default 180), `reason`, `headers`, `body`
-- @return true, or nil, message, code
function CALL.ring(call, opts)
    opts = check_opts("ring", opts)
    local status = opts.status or 180
    return call:_provisional(status, opts.reason or REASONS[status] or "Ringing",
                             opts.headers, opts.body)
end


--- Send 183 Session Progress (with an SDP body for early media).
-- @tparam[opt] table opts `headers`, `body`, or `media = true` (and
--   `codecs`, `srtp`, ... as `answer`) to answer the offer and start
--   early media
-- @return true, or nil, message, code
function CALL.progress(call, opts)
    opts = check_opts("progress", opts)
    local body = opts.body
    if opts.media then                          -- early media (luasip.media)
        local err, code
        body, err, code = media.answer_sdp(call, opts)
        if not body then return nil, err, code end
    end
    local ok, err, code = call:_provisional(183, opts.reason or "Session Progress", opts.headers, body)
    if ok and opts.media then media.start(call) end
    return ok, err, code
end


--- Answer an incoming call with 200 OK and wait for the ACK.
-- @tparam[opt] table opts `body` (SDP answer), `headers`, `timeout`
--   (seconds to wait for the ACK, default 32), `media` (true: answer the
--   INVITE's SDP offer with RTP audio and start it when established; an
--   offer without a common codec gets 488; an INVITE without SDP gets our
--   offer in the 200 and the ACK's answer), `codecs` ({ "PCMU", "PCMA" }:
--   allowed, the offerer's order decides), `symmetric`, `direction`,
--   `srtp` ("off", "optional", "mandatory": the offer's SRTP must fit
--   or the call gets 488), `srtp_suites`
-- @return call, or nil, message, code ("hangup"/"cancelled"/"timeout")
function CALL.answer(call, opts)
    opts = check_opts("answer", opts)
    local dl = deadline(opts.timeout or 32, "luasip.answer")
    if not sched.current() then
        error("luasip.answer: must be called from a task (use luasip.spawn)", 2)
    end
    local body = opts.body
    if opts.media then                          -- SDP answer (luasip.media)
        local merr, mcode                       -- (our offer: INVITE w/o SDP)
        body, merr, mcode = media.answer_sdp(call, opts, true)
        if not body then
            if mcode == 488 then call:reject(488, "Not Acceptable Here") end
            return nil, merr, mcode
        end
    end
    local ok, err, code = call:_answer(opts.headers, body)
    if not ok then
        if call.state == "closed" then return closed_result(call) end
        return nil, err, code
    end
    while true do
        local st = call.state
        if st == "established" then
            if opts.media then media.start(call) end
            return call
        end
        if st == "closed" then return closed_result(call) end
        local ev = wait(call, remaining(dl), "luasip.answer")
        if ev == "timeout" then return nil, "timeout", ETIMEDOUT end
    end
end


--- Wait until the call ends (far-end BYE, CANCEL, or a local hangup).
-- @tparam[opt] number timeout seconds
-- @return cause ("hangup", "cancelled", "local", ...), or nil, "timeout", ETIMEDOUT
function CALL.wait_hangup(call, timeout)
    local dl = deadline(timeout, "luasip.wait_hangup")
    while call.state ~= "closed" do
        local ev, e2, e3 = wait(call, remaining(dl), "luasip.wait_hangup")
        if ev == nil then return nil, e2, e3 end
        if ev == "timeout" then return nil, "timeout", ETIMEDOUT end
    end
    return call.cause
end


--- Wait for the next event on the call ("progress", "established",
-- "info", "update", "hold", "resume", "closed"); returns the event name
-- and its values.
-- @tparam[opt] number timeout seconds
function CALL.wait(call, timeout)
    local dl = deadline(timeout, "luasip.wait")
    if call.state == "closed" then return "closed" end
    local ev, a, b = wait(call, remaining(dl), "luasip.wait")
    if ev == "timeout" then return nil, "timeout", ETIMEDOUT end
    return ev, a, b
end


--- Run fn(call, ...) in a new task for every event ev ("progress",
-- "established", "info", "closed"; "update", "hold", "resume" when the
-- far end re-INVITEs, see luasip.modify).
function CALL.on(call, ev, fn)
    if type(ev) ~= "string" then argerror("on", 1, "event name", type(ev)) end
    if type(fn) ~= "function" then argerror("on", 2, "function", type(fn)) end
    sched.on(call, ev, fn)
    return call
end


--- Keep the call alive after the task that made or received it ends.
function CALL.detach(call)
    sched.disown(call)
    return call
end


-- call:transfer(target) and call:on("refer", fn) (see luasip.transfer)
require "luasip.transfer"
-- call:hold(), call:resume(), call:modify{} (see luasip.modify)
require "luasip.modify"


--- Digest authentication: req/call `:challenge`, `:authenticate`,
-- `:require_auth` (installed on load) and helpers (see luasip.auth).
_M.auth = require "luasip.auth"


--- Counters for tests: running tasks, waits, open endpoints, live timers.
function _M.stats()
    local s = sched.stats()
    s.timers = core.timers()
    return s
end


---------------------------------------------------------------- registration

--- A registrar and location service: `sip.registrar{ auth = fn, realm = }`
-- (see luasip.registrar).
_M.registrar = require("luasip.registrar").new

--- Location stores for the registrar: `sip.location.memory{ file = }`
-- (see luasip.location).
_M.location = require "luasip.location"

-- ep:register{...}, reg:wait(), reg:close() (see luasip.registration).
-- Loaded last: at the end of run() it un-REGISTERs before the location
-- stores write their files.
_M.registration = require "luasip.registration"


return _M
