--- luasip.location: location stores for the registrar.
--
-- A location store keeps the bindings of addresses-of-record (RFC 3261
-- §10): which contact URIs an AOR is reachable at, until when. The
-- registrar (`luasip.registrar`) and proxies read and write bindings only
-- through the five methods below, so another backend (Redis, SQL) plugs
-- in by implementing them. **Any method may yield** (it is always called
-- from a task), so a backend may wait on the network; it reports a
-- failure by returning `nil, message`.
--
-- A binding is a plain table:
--
--   * `key`        string: comparison key of the contact URI (two contact
--                  URIs that are equal under RFC 3261 §19.1.4 have the same
--                  key); a store identifies bindings of one AOR by it
--   * `uri`        string: the contact URI as the UA sent it
--   * `params`     string or nil: other contact parameters (";+sip.instance=..."),
--                  echoed in the 200 response
--   * `q`          number or nil: preference 0..1 (nil: not given)
--   * `expires`    number: absolute expiry time, in seconds since the epoch
--                  (`location.now()`), so it survives a restart
--   * `call_id`, `cseq`: of the REGISTER that made or refreshed it
--   * `received`   string: "ip:port" the REGISTER came from
--   * `transport`  string: "udp", "tcp", "tls", "ws"
--   * `path`       list of strings or nil: Path header values (RFC 3327)
--   * `user_agent`, `instance`, `reg_id`: optional, informational
--   * `updated`    number: when it was last written (seconds since the epoch)
--
-- The store owns what it is given: `put` keeps (a copy of) the table and
-- `get` returns tables the caller must not modify.
--
-- The store interface:
--
--   * `store:get(aor)` → list of bindings (possibly expired ones not yet
--     swept; callers filter on `expires`), or `nil, message`
--   * `store:put(aor, binding)` → true (adds, or replaces the binding
--     with the same `key`), or `nil, message`
--   * `store:remove(aor, key)` → true (no error when absent), or `nil, message`
--   * `store:remove_all(aor)` → true, or `nil, message`
--   * `store:expire(now)` → number of bindings removed whose `expires` is
--     `<= now`, or `nil, message`. A backend whose entries expire on
--     their own (Redis TTLs) may just return 0.
--   * optional: `store:flush()`, `store:close()`, `store:count()`
--
-- @module luasip.location

local core = require "luasip.core"
local sched = require "luasip.sched"

local type, pairs, ipairs, tostring, tonumber = type, pairs, ipairs, tostring, tonumber
local error, setmetatable, next = error, setmetatable, next
local concat, sort = table.concat, table.sort
local mono = core.now

local _M = { _VERSION = core._VERSION }


-- wall clock with the monotonic clock's resolution: os.time() is whole
-- seconds; bindings expire on absolute (epoch) times so that a file or a
-- shared backend can outlive the process
local base_wall, base_mono = os.time(), mono()


--- Seconds since the epoch, as a float (the clock bindings expire on).
-- @treturn number
function _M.now()
    return base_wall + (mono() - base_mono)
end


local function copy(b)
    local c = {}
    for k, v in pairs(b) do c[k] = v end
    if type(b.path) == "table" then
        local p = {}
        for i, v in ipairs(b.path) do p[i] = v end
        c.path = p
    end
    return c
end


---------------------------------------------------------------- file format

-- one binding per line: "<aor> field=value field=value ...", every token
-- percent-escaped so that values never contain blanks, '=' or newlines
local function esc(s)
    return (tostring(s):gsub("[%%%s=%c]", function(c)
        return ("%%%02X"):format(c:byte())
    end))
end


local function unesc(s)
    return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end


local NUMERIC = { q = true, expires = true, cseq = true, updated = true, reg_id = true }
local FIELDS = { "key", "uri", "params", "q", "expires", "call_id", "cseq",
                 "received", "transport", "user_agent", "instance", "reg_id",
                 "updated" }

local HEADER = "# luasip location v1"


local function num(v)
    if math.type(v) == "integer" then return ("%d"):format(v) end
    return ("%.17g"):format(v)
end


-- append the "field=value" tokens of binding b to t (every field but skip)
local function encode_fields(t, b, skip)
    for _, f in ipairs(FIELDS) do
        local v = b[f]
        if v ~= nil and f ~= skip then
            t[#t + 1] = f .. "=" .. (NUMERIC[f] and type(v) == "number" and num(v) or esc(v))
        end
    end
    if type(b.path) == "table" then
        for _, p in ipairs(b.path) do t[#t + 1] = "path=" .. esc(p) end
    end
    return t
end


-- read "field=value" tokens from rest into binding b
local function decode_fields(rest, b)
    for f, v in rest:gmatch("(%w[%w_]*)=(%S*)") do
        v = unesc(v)
        if f == "path" then
            b.path = b.path or {}
            b.path[#b.path + 1] = v
        elseif NUMERIC[f] then
            b[f] = tonumber(v)
        else
            b[f] = v
        end
    end
    return b
end

-- shared with other stores (location_redis) so bindings encode one way
_M._num, _M._encode_fields, _M._decode_fields = num, encode_fields, decode_fields


local function encode_line(aor, b)
    return concat(encode_fields({ esc(aor) }, b), " ")
end


local function decode_line(line)
    local aor, rest = line:match("^(%S+)(.*)$")
    if not aor then return nil end
    local b = decode_fields(rest, {})
    if not (b.key and b.uri and b.expires) then return nil end
    return unesc(aor), b
end


---------------------------------------------------------------- memory

local MEM = {}
MEM.__index = MEM
MEM.__name = "luasip.location.memory"

local open_stores = setmetatable({}, { __mode = "k" })   -- flushed at stop


--- The embedded store: bindings in memory, optionally persisted to a file.
--
-- With `file`, the bindings are loaded from it at creation (expired ones
-- are dropped) and every change is written back atomically (a temporary
-- file renamed over the old one). By default writes are batched: at most
-- `flush` seconds (0.2) after a change, and always when the loop stops
-- (`luasip.run` returns, also after SIGINT/SIGTERM), at `store:close()`
-- and when the store is collected. With `flush = 0` every change is
-- written before the call that made it returns, so before the registrar
-- answers 200. Writing rewrites the whole file: for very many bindings
-- keep the batch delay.
-- @tparam[opt] table opts `file` (path), `flush` (seconds, default 0.2)
-- @return store; raises when the file exists but cannot be read or parsed
function _M.memory(opts)
    if opts ~= nil and type(opts) ~= "table" then
        error("bad argument #1 to 'memory' (table expected, got " .. type(opts) .. ")", 2)
    end
    opts = opts or {}
    local file, flush = opts.file, opts.flush
    if file ~= nil and (type(file) ~= "string" or file == "") then
        error("luasip.location.memory: file: path expected, got " .. tostring(file), 2)
    end
    if flush == nil then flush = 0.2 end
    if type(flush) ~= "number" or flush ~= flush or flush < 0 then
        error("luasip.location.memory: flush: seconds >= 0 expected, got " .. tostring(flush), 2)
    end
    local self = setmetatable({
        aors = {},          -- aor -> { key -> binding }
        n = 0,
        file = file,
        flush_delay = flush,
        dirty = false,
    }, MEM)
    if file then
        local ok, err = self:load()
        if not ok then error("luasip.location.memory: " .. err, 2) end
        open_stores[self] = true
    end
    return self
end


-- read the file (a missing file is an empty store)
function MEM:load()
    local f, err, code = io.open(self.file, "rb")
    if not f then
        if code == 2 then return true end          -- ENOENT: a new store
        return nil, err
    end
    local now, n = _M.now(), 0
    local first = true
    for line in f:lines() do
        if first then
            first = false
            if line ~= HEADER then
                f:close()
                return nil, self.file .. ": not a luasip location file"
            end
        elseif line ~= "" then
            local aor, b = decode_line(line)
            if not aor then
                f:close()
                return nil, self.file .. ": bad line: " .. line:sub(1, 80)
            end
            if b.expires > now then
                local t = self.aors[aor]
                if not t then t = {}; self.aors[aor] = t end
                if not t[b.key] then n = n + 1 end
                t[b.key] = b
            end
        end
    end
    f:close()
    self.n = n
    return true
end


--- Write the bindings to the file now if anything changed.
-- @return true, or nil, message
function MEM:flush()
    if self.timer then self.timer:stop() end
    if not (self.file and self.dirty) then return true end
    local now = _M.now()
    local tmp = self.file .. ".tmp"
    local f, err = io.open(tmp, "wb")
    if not f then return nil, err end
    local out = { HEADER }
    for aor, t in pairs(self.aors) do
        for _, b in pairs(t) do
            if b.expires > now then out[#out + 1] = encode_line(aor, b) end
        end
    end
    out[#out + 1] = ""
    local ok, werr = f:write(concat(out, "\n"))
    if ok then ok, werr = f:close() else f:close() end
    if ok then ok, werr = os.rename(tmp, self.file) end
    if not ok then
        os.remove(tmp)
        return nil, werr
    end
    self.dirty = false
    return true
end


local function changed(self)
    if not self.file then return true end
    self.dirty = true
    if self.flush_delay == 0 then return self:flush() end
    local t = self.timer
    if not t then
        t = core.timer()
        self.timer = t
        -- the store is reached through a weak table: the timer must not
        -- keep a store alive that nobody uses any more
        local weak = setmetatable({ s = self }, { __mode = "v" })
        sched.on(t, "timer", function()
            local s = weak.s
            if s then
                local ok, err = s:flush()
                if not ok then sched.log("location: " .. s.file .. ": " .. tostring(err)) end
            end
        end)
    end
    if not t:running() then t:start(self.flush_delay) end
    return true
end


--- Bindings of aor (see the module description).
function MEM:get(aor)
    local t = self.aors[aor]
    local list = {}
    if t then
        for _, b in pairs(t) do list[#list + 1] = b end
    end
    return list
end


--- Add or replace the binding of aor with binding.key.
function MEM:put(aor, binding)
    if type(binding) ~= "table" or type(binding.key) ~= "string" then
        error("bad argument #2 to 'put' (binding with a key expected)", 2)
    end
    local t = self.aors[aor]
    if not t then t = {}; self.aors[aor] = t end
    if not t[binding.key] then self.n = self.n + 1 end
    t[binding.key] = copy(binding)
    return changed(self)
end


--- Remove the binding of aor with this key.
function MEM:remove(aor, key)
    local t = self.aors[aor]
    if t and t[key] then
        t[key] = nil
        self.n = self.n - 1
        if next(t) == nil then self.aors[aor] = nil end
        return changed(self)
    end
    return true
end


--- Remove every binding of aor.
function MEM:remove_all(aor)
    local t = self.aors[aor]
    if not t then return true end
    for _ in pairs(t) do self.n = self.n - 1 end
    self.aors[aor] = nil
    return changed(self)
end


--- Remove the bindings that expired at `now`; returns how many.
function MEM:expire(now)
    local removed = 0
    for aor, t in pairs(self.aors) do
        for key, b in pairs(t) do
            if b.expires <= now then
                t[key] = nil
                removed = removed + 1
            end
        end
        if next(t) == nil then self.aors[aor] = nil end
    end
    self.n = self.n - removed
    if removed > 0 then changed(self) end
    return removed
end


--- Number of bindings held (expired ones not yet swept included).
function MEM:count()
    return self.n
end


--- The AORs held, sorted.
function MEM:aor_list()
    local list = {}
    for aor in pairs(self.aors) do list[#list + 1] = aor end
    sort(list)
    return list
end


--- Write pending changes and stop the batch timer.
-- @return true, or nil, message
function MEM:close()
    local ok, err = self:flush()
    if self.timer then
        sched.forget(self.timer)
        self.timer:close()
        self.timer = nil
    end
    open_stores[self] = nil
    return ok, err
end


-- collected (at the latest at lua_close): no acknowledged binding is lost
function MEM:__gc()
    if self.file and self.dirty then pcall(MEM.flush, self) end
end


-- the loop stopped (luasip.run returns): write what is pending
local prev_on_stop = sched.on_stop
sched.on_stop = function(...)
    for s in pairs(open_stores) do
        local ok, err = s:flush()
        if not ok then sched.log("location: " .. tostring(s.file) .. ": " .. tostring(err)) end
    end
    if prev_on_stop then return prev_on_stop(...) end
end


return _M
