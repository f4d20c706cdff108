--- luasip.redis: a non-blocking Redis client for tasks.
--
--     local redis = require "luasip.redis"
--     local r = assert(redis.connect { host = "127.0.0.1", port = 6379 })
--     assert(r:call("SET", "k", "v"))
--     local v, err, code = r:call("GET", "k")     -- "v"
--
-- The connection is libre TCP driven by the loop (csrc/redis.c); calls
-- yield their task until the reply arrives, and several tasks may have
-- calls in flight on one client at once (pipelining: replies come back
-- in the order the commands were sent). Values: a status reply is its
-- string ("OK"), an integer a Lua integer, a bulk string a Lua string
-- (binary safe), a nil reply `redis.null`, an array a Lua list (an error
-- inside an array, as from EXEC, is `{ err = "ERR ..." }`). A failure is
-- `nil, message, code`: an error reply gives its text ("ERR ...",
-- "WRONGTYPE ...") and `redis.EREPLY`; a lost connection
-- "redis: <reason>" and an errno (ECONNRESET, ECONNREFUSED, ...); a
-- malformed reply "redis: protocol error: ..." and `redis.EPROTO` (the
-- connection is dropped); the timeout `nil, "timeout", ETIMEDOUT`. A
-- lost connection fails every call in flight; the next call reconnects
-- (and repeats AUTH and SELECT first).
-- @module luasip.redis

local core = require "luasip.core"
local sched = require "luasip.sched"

local type, tostring, error, select = type, tostring, error, select
local setmetatable, math_type = setmetatable, math.type
local pack = table.pack
local wait, deadline, remaining = sched.wait, sched.deadline, sched.remaining

local ETIMEDOUT = core.ETIMEDOUT

local _M = {
    _VERSION = core._VERSION,
    --- The value of a nil reply (a NULL light userdata, like cjson.null).
    null = core.redis_null,
    --- Code of an error reply from the server.
    EREPLY = core.EREMOTEIO,
    --- Code of a malformed reply (the connection is dropped).
    EPROTO = core.EPROTO,
}

local DEFAULTS = { host = "127.0.0.1", port = 6379, timeout = 2, db = 0 }

local R = core.methods("luasip.redis")
local settings = setmetatable({}, { __mode = "k" })   -- r -> { timeout = }
local command = R.command


local function opterror(fname, name, what, got)
    error(("%s: %s: %s expected, got %s"):format(fname, name, what, tostring(got)), 3)
end


local function check_timeout(fname, t)
    if type(t) ~= "number" or t ~= t or t < 0 then
        opterror(fname, "timeout", "seconds >= 0", t)
    end
    return t
end


--- Create a client without connecting: the first call connects. Never
-- yields, so it may run outside a task (a store made at start-up).
-- @tparam[opt] table opts `host` (IP address or "localhost", default
--   "127.0.0.1"), `port` (6379), `timeout` (seconds for connecting and
--   for each call, 2), `db` (SELECT on each connection, 0), `password`
--   (AUTH on each connection), `user` (AUTH user, Redis 6 ACLs)
-- @return client; raises on bad options
function _M.new(opts)
    local fname = "luasip.redis"
    if opts == nil then opts = {} end
    if type(opts) ~= "table" then
        error(("bad argument #1 to 'new' (table expected, got %s)"):format(type(opts)), 2)
    end
    local host = opts.host or DEFAULTS.host
    if host == "localhost" then host = "127.0.0.1" end
    if type(host) ~= "string" then opterror(fname, "host", "IP address", host) end
    local port = opts.port or DEFAULTS.port
    if math_type(port) ~= "integer" or port < 1 or port > 65535 then
        opterror(fname, "port", "port number", port)
    end
    local timeout = check_timeout(fname, opts.timeout or DEFAULTS.timeout)
    local db = opts.db or DEFAULTS.db
    if math_type(db) ~= "integer" or db < 0 then opterror(fname, "db", "integer >= 0", db) end
    local password, user = opts.password, opts.user
    if password ~= nil and type(password) ~= "string" then
        opterror(fname, "password", "string", type(password))
    end
    if user ~= nil and type(user) ~= "string" then opterror(fname, "user", "string", type(user)) end
    if user and not password then opterror(fname, "password", "string (with user)", nil) end

    local prelude = {}
    if password then
        prelude[#prelude + 1] = user and { "AUTH", user, password } or { "AUTH", password }
    end
    if db ~= 0 then prelude[#prelude + 1] = { "SELECT", tostring(db) } end
    local ok, r = pcall(core.redis_new, host, port, prelude)
    if not ok then opterror(fname, "host", "IP address", host) end
    settings[r] = { timeout = timeout }
    return r
end


--- Create a client and wait until it is connected (and AUTH and SELECT
-- succeeded). Must run in a task.
-- @tparam[opt] table opts as for `new`
-- @return client, or nil, message, code ("timeout"; "redis: Connection
--   refused"; an AUTH error such as "WRONGPASS ...")
function _M.connect(opts)
    local r = _M.new(opts)
    if not sched.current() then
        r:close()
        error("luasip.redis.connect: must be called from a task (use luasip.spawn)", 2)
    end
    local ok, err, code = r:connect()
    if not ok then
        r:close()
        return nil, err, code
    end
    local dl = deadline(settings[r].timeout, "luasip.redis.connect")
    while true do
        local st = r:state()
        if st == "ready" then return r end
        local ev, e1, e2 = wait(r, remaining(dl), "luasip.redis.connect")
        if ev == "timeout" then
            r:close()
            return nil, "timeout", ETIMEDOUT
        elseif ev == "closed" then
            r:close()
            return nil, e1, e2
        elseif ev == nil then     -- another task waits on r: impossible here
            r:close()
            return nil, e1, e2
        end
    end
end


-- send one command (a list) and wait for its reply
local function roundtrip(r, args, timeout, fname)
    if not sched.current() then
        error(fname .. ": must be called from a task (use luasip.spawn)", 3)
    end
    local token = {}
    local ok, err, code = command(r, args, token)
    if not ok then return nil, err, code end
    local ev, v, e, c = wait(token, timeout, fname)
    if ev == "reply" then
        if v ~= nil then return v end
        return nil, e, c
    end
    -- timed out: the reply is dropped when it comes; a connection that
    -- did not even come up is given up, so the next call starts afresh
    if r:state() == "connecting" then r:disconnect() end
    return nil, "timeout", ETIMEDOUT
end


--- Send a command and wait for its reply: `r:call("HSET", key, field, value)`.
-- Arguments are strings or numbers. Must run in a task.
-- @return the reply's value (see the module description), or nil,
--   message, code
function R.call(r, ...)
    local n = select("#", ...)
    if n == 0 then error("bad argument #1 to 'call' (command name expected, got no value)", 2) end
    local args = pack(...)
    for i = 1, n do
        local t = type(args[i])
        if t ~= "string" and t ~= "number" then
            error(("bad argument #%d to 'call' (string expected, got %s)"):format(i, t), 2)
        end
    end
    local s = settings[r]
    return roundtrip(r, args, s and s.timeout, "luasip.redis.call")
end


--- Like `call`, with the command as a list and an optional timeout.
-- @tparam table args `{ "HSET", key, field, value }`
-- @tparam[opt] number timeout seconds (default: the client's)
function R.call_list(r, args, timeout)
    local s = settings[r]
    if timeout ~= nil then check_timeout("luasip.redis.call_list", timeout)
    else timeout = s and s.timeout end
    return roundtrip(r, args, timeout, "luasip.redis.call_list")
end


--- Send several commands at once and wait for all replies.
-- @tparam table cmds list of command lists
-- @tparam[opt] number timeout seconds for the whole batch
-- @return list of values in order (an error reply is `{ err = "..." }`,
--   as inside EXEC), or nil, message, code when the connection failed or
--   the time ran out
function R.pipeline(r, cmds, timeout)
    if type(cmds) ~= "table" then
        error(("bad argument #1 to 'pipeline' (table expected, got %s)"):format(type(cmds)), 2)
    end
    local s = settings[r]
    if timeout ~= nil then check_timeout("luasip.redis.pipeline", timeout)
    else timeout = s and s.timeout end
    if not sched.current() then
        error("luasip.redis.pipeline: must be called from a task (use luasip.spawn)", 2)
    end
    local dl = deadline(timeout, "luasip.redis.pipeline")
    local tokens = {}
    for i = 1, #cmds do
        local token = {}
        local ok, err, code = command(r, cmds[i], token)
        if not ok then return nil, err, code end
        tokens[i] = token
    end
    local out = {}
    for i = 1, #tokens do
        local ev, v, e, c = wait(tokens[i], remaining(dl), "luasip.redis.pipeline")
        if ev ~= "reply" then
            if r:state() == "connecting" then r:disconnect() end
            return nil, "timeout", ETIMEDOUT
        end
        if v == nil then
            if c ~= _M.EREPLY then return nil, e, c end
            v = { err = e }
        end
        out[i] = v
    end
    return out
end


--- Seconds each call waits (and connect) from now on.
-- @tparam number timeout
function R.set_timeout(r, timeout)
    check_timeout("luasip.redis.set_timeout", timeout)
    local s = settings[r]
    if not s then s = {}; settings[r] = s end
    s.timeout = timeout
    return r
end


return _M
