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
-- `get` returns tables the caller must not modify. The memory store keeps
-- the fields listed above only.
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
local error, setmetatable, getmetatable = error, setmetatable, getmetatable
local concat, sort = table.concat, table.sort

local _M = { _VERSION = core._VERSION }


--- Seconds since the epoch, as a float (the clock bindings expire on):
-- the wall clock at load time plus the monotonic clock since (bindings
-- expire on absolute times so that a file or a shared backend can
-- outlive the process). Shared with the C registrar (csrc/registrar.c).
-- @function now
-- @treturn number
_M.now = core.location_now


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
local changed       -- marks a file store dirty; defined below


--- The embedded store: bindings in memory, optionally persisted to a file.
--
-- The bindings live in a C table (csrc/registrar.c) and expire on
-- timers; a registrar whose store is this one answers REGISTERs in C.
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
        c = core.location_table(),
        file = file,
        flush_delay = flush,
        dirty = false,
    }, MEM)
    if file then
        local ok, err = self:load()
        if not ok then error("luasip.location.memory: " .. err, 2) end
        open_stores[self] = true
        -- changes the C registrar makes mark the file dirty too (through
        -- a weak reference: the table must not keep the store alive)
        local weak = setmetatable({ s = self }, { __mode = "v" })
        self.c:on_change(function()
            local s = weak.s
            if s then
                local cok, cerr = changed(s)
                if not cok then sched.log("location: " .. tostring(s.file) .. ": " .. tostring(cerr)) end
            end
        end)
    end
    return self
end


--- The C table of a memory store (for the C registrar), or nil.
function _M._c_of(store)
    if getmetatable(store) == MEM then return store.c end
    return nil
end


-- read the file (a missing file is an empty store)
function MEM:load()
    local f, err, code = io.open(self.file, "rb")
    if not f then
        if code == 2 then return true end          -- ENOENT: a new store
        return nil, err
    end
    local now = _M.now()
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
            if b.expires > now then self.c:put(aor, b) end
        end
    end
    f:close()
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
    local c = self.c
    for _, aor in ipairs(c:aor_list()) do
        for _, b in ipairs(c:get(aor)) do
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


function changed(self)
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
    return self.c:get(aor)
end


--- Add or replace the binding of aor with binding.key.
function MEM:put(aor, binding)
    if type(binding) ~= "table" or type(binding.key) ~= "string" then
        error("bad argument #2 to 'put' (binding with a key expected)", 2)
    end
    self.c:put(aor, binding)
    return changed(self)
end


--- Remove the binding of aor with this key.
function MEM:remove(aor, key)
    if self.c:remove(aor, key) then return changed(self) end
    return true
end


--- Remove every binding of aor.
function MEM:remove_all(aor)
    if self.c:remove_all(aor) > 0 then return changed(self) end
    return true
end


--- Remove the bindings that expired at `now`; returns how many (also
-- those the expiry timers removed since the last call).
function MEM:expire(now)
    local removed = self.c:expire(now)
    if removed > 0 then changed(self) end
    return removed
end


--- Number of bindings held (expired ones not yet removed included).
function MEM:count()
    return self.c:count()
end


--- The AORs held, sorted.
function MEM:aor_list()
    local list = self.c:aor_list()
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
