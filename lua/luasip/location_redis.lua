--- luasip.location_redis: a location store on Redis, shared by processes.
--
--     local store = require("luasip.location_redis").new {
--         host = "127.0.0.1", port = 6379, prefix = "luasip:loc:" }
--     local reg = sip.registrar { store = store, auth = ... }
--
-- Several registrar and proxy processes behind one address see the same
-- bindings. It implements the store interface of `luasip.location`
-- (get, put, remove, remove_all, expire; close, flush). Each AOR is one
-- Redis hash, `<prefix><aor>`, with one field per binding (the binding's
-- `key`); the value starts with the binding's absolute `expires` and
-- holds the other fields percent-escaped. A put runs one Lua script on
-- the server (atomic: other processes never see half of it) that writes
-- the binding, drops the AOR's expired bindings and sets the key's TTL
-- to its latest expiry, so Redis forgets an AOR by itself once every
-- binding has expired; `expire()` therefore has nothing to do. Expiry
-- times are the callers' clock (`location.now()`, seconds since the
-- epoch): processes sharing a store need synchronised clocks.
--
-- The connection is made on first use (so `new` can run at start-up,
-- outside a task) and remade after a failure; a method that cannot
-- reach Redis returns `nil, message, code` and the registrar answers 500.
-- @module luasip.location_redis

local core = require "luasip.core"
local redis = require "luasip.redis"
local location = require "luasip.location"

local type, tostring, tonumber, ipairs, error = type, tostring, tonumber, ipairs, error
local setmetatable = setmetatable
local concat = table.concat

local _M = { _VERSION = core._VERSION }

local DEFAULTS = { prefix = "luasip:loc:" }

-- milliseconds the key outlives its latest binding
local GRACE_MS = 1000

-- KEYS[1] hash; ARGV: field, value, now, grace (ms)
local PUT_SCRIPT = [[
local key, now = KEYS[1], tonumber(ARGV[3])
redis.call('HSET', key, ARGV[1], ARGV[2])
local all = redis.call('HGETALL', key)
local latest = 0
for i = 1, #all, 2 do
  local e = tonumber(string.match(all[i + 1], '^(%S+)'))
  if not e or e <= now then
    redis.call('HDEL', key, all[i])
  elseif e > latest then
    latest = e
  end
end
if latest > now then
  redis.call('PEXPIRE', key, math.floor((latest - now) * 1000) + tonumber(ARGV[4]))
end
return 1
]]


---------------------------------------------------------------- encoding

local num = location._num


-- "<expires> field=value ... path=v1 path=v2" (location.lua's field coding)
local function encode(b)
    return concat(location._encode_fields({ num(b.expires) }, b, "expires"), " ")
end


local function decode(s)
    local e, rest = s:match("^(%S+)(.*)$")
    local b = { expires = tonumber(e) }
    if not b.expires then return nil end
    location._decode_fields(rest, b)
    if not (b.key and b.uri) then return nil end
    return b
end

_M._encode, _M._decode = encode, decode


---------------------------------------------------------------- store

local S = {}
S.__index = S
S.__name = "luasip.location.redis"


--- A location store on Redis.
-- @tparam[opt] table opts `prefix` (of the keys, default "luasip:loc:"),
--   and the connection options of `luasip.redis.new`: `host`, `port`,
--   `db`, `password`, `user`, `timeout` (seconds per command, default 2)
-- @return store (not connected yet; raises on bad options)
function _M.new(opts)
    if opts ~= nil and type(opts) ~= "table" then
        error(("bad argument #1 to 'new' (table expected, got %s)"):format(type(opts)), 2)
    end
    opts = opts or {}
    local prefix = opts.prefix == nil and DEFAULTS.prefix or opts.prefix
    if type(prefix) ~= "string" then
        error("luasip.location_redis: prefix: string expected, got " .. type(prefix), 2)
    end
    local ok, r = pcall(redis.new, {
        host = opts.host, port = opts.port, db = opts.db, password = opts.password,
        user = opts.user, timeout = opts.timeout,
    })
    if not ok then error(tostring(r):gsub("^luasip%.redis", "luasip.location_redis"), 2) end
    return setmetatable({ redis = r, prefix = prefix }, S)
end


-- the put script, by SHA once loaded (reloaded after a SCRIPT FLUSH or a
-- restart of the server)
local function put_script(self, key, field, value, now)
    for _ = 1, 2 do
        if not self.sha then
            local sha, err, code = self.redis:call("SCRIPT", "LOAD", PUT_SCRIPT)
            if not sha then return nil, err, code end
            self.sha = sha
        end
        local v, err, code = self.redis:call("EVALSHA", self.sha, 1, key, field, value,
                                             num(now), tostring(GRACE_MS))
        if v ~= nil then return true end
        if not (code == redis.EREPLY and err:match("^NOSCRIPT")) then return nil, err, code end
        self.sha = nil
    end
    return nil, "NOSCRIPT after SCRIPT LOAD", redis.EREPLY
end


--- Bindings of aor (expired ones included until the next put drops them).
function S:get(aor)
    local list, err, code = self.redis:call("HGETALL", self.prefix .. aor)
    if not list then return nil, err, code end
    local out = {}
    for i = 2, #list, 2 do
        local b = decode(list[i])
        if b then out[#out + 1] = b end
    end
    return out
end


--- Add or replace the binding of aor with binding.key (atomically).
function S:put(aor, binding)
    if type(binding) ~= "table" or type(binding.key) ~= "string"
            or type(binding.expires) ~= "number" then
        error("bad argument #2 to 'put' (binding with a key and expires expected)", 2)
    end
    local now = location.now()
    return put_script(self, self.prefix .. aor, binding.key, encode(binding), now)
end


--- Remove the binding of aor with this key.
function S:remove(aor, key)
    local n, err, code = self.redis:call("HDEL", self.prefix .. aor, key)
    if not n then return nil, err, code end
    return true
end


--- Remove every binding of aor.
function S:remove_all(aor)
    local n, err, code = self.redis:call("DEL", self.prefix .. aor)
    if not n then return nil, err, code end
    return true
end


--- Nothing to sweep: keys expire in Redis and puts drop expired bindings.
-- @treturn number 0
function S:expire(_)
    return 0
end


--- Nothing is buffered.
function S:flush()
    return true
end


--- Close the connection; the store cannot be used afterwards (its
-- methods return nil, "closed: ...", ENOTCONN).
function S:close()
    self.redis:close()
    return true
end


return _M
