--- luasip.location_redis: a location store on Redis, shared by processes.
--
--     local store = require("luasip.location_redis").new {
--         host = "127.0.0.1", port = 6379, prefix = "luasip:loc:" }
--     local reg = sip.registrar { store = store, auth = ... }
--
-- Several registrar and proxy processes behind one address see the same
-- bindings. It implements the store interface of `luasip.location`
-- (get, put, remove, remove_all, expire; close, flush), and `update`,
-- which the registrar uses when a store has it: all changes of one
-- REGISTER, with its CSeq check (RFC 3261 10.3 steps 7 and 8), in one
-- server-side script, so registrars in several processes never interleave
-- between check and commit nor see half a REGISTER. Each AOR is one
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


-- KEYS[1] hash; ARGV: now, grace (ms), call_id token ("call_id=<esc>" or
-- ""), cseq, then triples kind ("p" put, "r" remove, "a" remove all),
-- field, value. Refuses everything ("out-of-order") when a live binding
-- it would touch has this Call-ID and a CSeq not lower; else applies all.
local UPDATE_SCRIPT = [[
local key, now, cid, cseq = KEYS[1], tonumber(ARGV[1]), ARGV[3], tonumber(ARGV[4])
local function stale(v)
  local e = tonumber(string.match(v, '^(%S+)'))
  if cid == '' or not e or e <= now then return false end
  if not string.find(' ' .. v .. ' ', ' ' .. cid .. ' ', 1, true) then return false end
  local c = tonumber(string.match(v, ' cseq=(%S+)'))
  return c ~= nil and cseq <= c
end
for i = 5, #ARGV, 3 do
  if ARGV[i] == 'a' then
    for _, v in ipairs(redis.call('HVALS', key)) do
      if stale(v) then return 'out-of-order' end
    end
  else
    local v = redis.call('HGET', key, ARGV[i + 1])
    if v and stale(v) then return 'out-of-order' end
  end
end
for i = 5, #ARGV, 3 do
  if ARGV[i] == 'a' then
    redis.call('DEL', key)
  elseif ARGV[i] == 'r' then
    redis.call('HDEL', key, ARGV[i + 1])
  else
    redis.call('HSET', key, ARGV[i + 1], ARGV[i + 2])
  end
end
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
  redis.call('PEXPIRE', key, math.floor((latest - now) * 1000) + tonumber(ARGV[2]))
end
return 'OK'
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
    return setmetatable({ redis = r, prefix = prefix, sha = {} }, S)
end


-- run a script by SHA once loaded (reloaded after a SCRIPT FLUSH or a
-- restart of the server); name: "put" or "update"
local SCRIPTS = { put = PUT_SCRIPT, update = UPDATE_SCRIPT }

local function run_script(self, name, key, ...)
    local shas = self.sha
    for _ = 1, 2 do
        if not shas[name] then
            local sha, err, code = self.redis:call("SCRIPT", "LOAD", SCRIPTS[name])
            if not sha then return nil, err, code end
            shas[name] = sha
        end
        local v, err, code = self.redis:call("EVALSHA", shas[name], 1, key, ...)
        if v ~= nil then return v end
        if not (code == redis.EREPLY and err:match("^NOSCRIPT")) then return nil, err, code end
        shas[name] = nil
    end
    return nil, "NOSCRIPT after SCRIPT LOAD", redis.EREPLY
end


local function put_script(self, key, field, value, now)
    local v, err, code = run_script(self, "put", key, field, value, num(now), tostring(GRACE_MS))
    if v == nil then return nil, err, code end
    return true
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


local function check_binding(b, where)
    if type(b) ~= "table" or type(b.key) ~= "string" or type(b.expires) ~= "number" then
        error(("bad argument #2 to 'update' (binding with a key and expires expected at %s)"):format(where), 3)
    end
end


--- Apply several changes to aor at once, atomically across processes.
-- Nothing is applied when a live binding that a change touches (every
-- binding for `remove_all`) has `guard.call_id` and a CSeq not lower than
-- `guard.cseq` (RFC 3261 10.3 step 7, checked again where the write
-- happens).
-- @tparam string aor
-- @tparam table ops list of `{ put = binding }`, `{ remove = key }`,
--   `{ remove_all = true }`, applied in order
-- @tparam[opt] table guard `{ call_id =, cseq = }`
-- @return true; false, "out-of-order" when the guard refused; or nil,
--   message, code when Redis fails
function S:update(aor, ops, guard)
    if type(ops) ~= "table" then
        error(("bad argument #2 to 'update' (list of changes expected, got %s)"):format(type(ops)), 2)
    end
    if guard ~= nil and (type(guard) ~= "table" or type(guard.call_id) ~= "string"
            or math.type(guard.cseq) ~= "integer") then
        error("bad argument #3 to 'update' ({ call_id = string, cseq = integer } expected)", 2)
    end
    local args = { num(location.now()), tostring(GRACE_MS),
                   guard and location._encode_fields({}, { call_id = guard.call_id })[1] or "",
                   guard and tostring(guard.cseq) or "0" }
    for i, op in ipairs(ops) do
        local n = #args
        if op.put ~= nil then
            check_binding(op.put, ("[%d].put"):format(i))
            args[n + 1], args[n + 2], args[n + 3] = "p", op.put.key, encode(op.put)
        elseif op.remove ~= nil then
            if type(op.remove) ~= "string" then
                error(("bad argument #2 to 'update' (key expected at [%d].remove, got %s)"):format(
                    i, type(op.remove)), 2)
            end
            args[n + 1], args[n + 2], args[n + 3] = "r", op.remove, ""
        elseif op.remove_all then
            args[n + 1], args[n + 2], args[n + 3] = "a", "", ""
        else
            error(("bad argument #2 to 'update' (put, remove or remove_all expected at [%d])"):format(i), 2)
        end
    end
    local v, err, code = run_script(self, "update", self.prefix .. aor, table.unpack(args))
    if v == nil then return nil, err, code end
    if v == "out-of-order" then return false, v end
    return true
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
