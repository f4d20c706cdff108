--- luasip.media: RTP audio for calls (G.711, RFC 4733) and IVR primitives.
-- The per-packet work is in csrc/media.c; this file ties a media object
-- to its call (offer/answer through the call's SDP bodies, start on
-- establishment, close when the call closes) and adds the waiting calls
-- `call:play`, `call:record`, `call:collect` and `call:send_dtmf`.
-- @module luasip.media

local core = require "luasip.core"
local sched = require "luasip.sched"

local type, tostring, error, ipairs = type, tostring, error, ipairs
local wait, deadline, remaining, now = sched.wait, sched.deadline, sched.remaining, core.now

local ETIMEDOUT, ECONNRESET, ENOTCONN = core.ETIMEDOUT, core.ECONNRESET, core.ENOTCONN

local _M = {}

local media_of = setmetatable({}, { __mode = "k" })  -- call -> media
local call_ep = setmetatable({}, { __mode = "k" })   -- incoming call -> ep
local ep_ports = setmetatable({}, { __mode = "k" })  -- ep -> { min, max }
local ep_srtp = setmetatable({}, { __mode = "k" })   -- ep -> { policy, suites }
local sdp_cache = setmetatable({}, { __mode = "k" }) -- media -> our answer
local late_of = setmetatable({}, { __mode = "k" })   -- call -> media (late offer)

local DEFAULT_CODECS = { "PCMU", "PCMA" }
local SRTP_POLICIES = { off = true, optional = true, mandatory = true }
local SRTP_SUITES = { AES_CM_128_HMAC_SHA1_80 = true, AES_CM_128_HMAC_SHA1_32 = true }
local DIGITS = "0123456789*#ABCD"


local function argerror(fname, what, got)
    error(("bad argument to '%s' (%s expected, got %s)"):format(fname, what, tostring(got)), 3)
end


-- raise unless srtp / srtp_suites are valid option values (level: caller's)
local function check_srtp(srtp, suites, level)
    if srtp ~= nil and not SRTP_POLICIES[srtp] then
        error(('bad option \'srtp\' ("off", "optional" or "mandatory" expected, got %s)'):format(
            type(srtp) == "string" and '"' .. srtp .. '"' or tostring(srtp)), level + 1)
    end
    if suites ~= nil then
        local ok = type(suites) == "table" and #suites > 0
        for _, v in ipairs(type(suites) == "table" and suites or {}) do
            if not SRTP_SUITES[v] then ok = false end
        end
        if not ok then
            local got = { tostring(suites) }
            if type(suites) == "table" then
                got = {}
                for i, v in ipairs(suites) do got[i] = tostring(v) end
            end
            error(("bad option 'srtp_suites' (list of AES_CM_128_HMAC_SHA1_80 / _32 expected, got %s)"):format(
                table.concat(got, ",")), level + 1)
        end
    end
end


--- Record an endpoint's media options (`rtp_ports = { min, max }`,
-- `srtp` and `srtp_suites`: the default of its media calls).
function _M.set_endpoint(ep, opts)
    check_srtp(opts.srtp, opts.srtp_suites, 3)
    if ep and (opts.srtp ~= nil or opts.srtp_suites ~= nil) then
        local suites = opts.srtp_suites and table.move(opts.srtp_suites, 1, #opts.srtp_suites, 1, {})
        ep_srtp[ep] = { opts.srtp, suites }
    end
    local r = opts.rtp_ports
    if r ~= nil then
        if type(r) ~= "table" or math.type(r[1]) ~= "integer" or math.type(r[2]) ~= "integer"
                or r[1] < 1024 or r[2] > 65535 or r[1] >= r[2] then
            error(("bad option 'rtp_ports' ({ min, max } in 1024-65535 expected, got %s)"):format(
                type(r) == "table" and tostring(r[1]) .. "-" .. tostring(r[2]) or tostring(r)), 3)
        end
        if ep then ep_ports[ep] = { r[1], r[2] } end
    end
end


--- Remember which endpoint received an incoming call.
function _M.bind(call, ep)
    call_ep[call] = ep
end


local function local_ip(call, ep, opts)
    if opts.rtp_address then return opts.rtp_address end
    if ep then
        local u = ep:uri()
        local host = u and u:match("@%[?([%x%.:]+)%]?:%d+") or u and u:match("@([%d%.]+)")
        if host then return host end
    end
    local uri = call and call.uri
    local host = type(uri) == "table" and uri.host
    if host and host:match("^%d+%.%d+%.%d+%.%d+$") then return host end
    return "127.0.0.1"
end


local function stop_media(call)
    local m = media_of[call]
    if m then
        media_of[call] = nil
        call:_media(nil)   -- re-INVITEs no longer reach it
        sched.forget(call)
        m:close()          -- wakes a task in play/record/collect
    end
end


-- a media object for call (ep: endpoint for rtp_ports and address)
local function new_media(call, ep, opts)
    local codecs = opts.codecs or DEFAULT_CODECS
    if type(codecs) ~= "table" then argerror("media", "codecs: list of codec names", type(codecs)) end
    local ports = ep and ep_ports[ep] or { 10000, 20000 }
    check_srtp(opts.srtp, opts.srtp_suites, 4)
    local eps = ep and ep_srtp[ep] or {}
    local srtp, suites = opts.srtp, opts.srtp_suites
    if srtp == nil then srtp = eps[1] end
    if suites == nil then suites = eps[2] end
    local m, err, code = core.media(local_ip(call, ep, opts), ports[1], ports[2], codecs,
                                    opts.symmetric and true or false,
                                    opts.telephone_event ~= false, srtp, suites)
    if not m then return nil, err, code end
    if opts.direction then m:set_direction(opts.direction) end
    return m
end


-- SIP INFO application/dtmf-relay (Signal=5) feeds the same digit queue
local function info_digit(call, ctype, body)
    local m = media_of[call]
    if not m or type(ctype) ~= "string" or ctype:lower() ~= "application/dtmf-relay" then return end
    local d = type(body) == "string" and body:match("[Ss]ignal%s*=%s*([0-9%*#A-Da-d])")
    if d then m:push_digit(d) end
end


local function attach(call, m)
    media_of[call] = m
    call:_media(m)         -- re-INVITE offers are answered from m (call.c)
    sched.on(call, "closed", stop_media)
    sched.on(call, "info", info_digit)
end


--- For call:answer{ media = true } and call:progress{ media = true }:
-- the SDP answer to the INVITE's offer (the media is kept on the call).
-- With `late_ok` an INVITE without SDP gets our offer instead (for the
-- 200; call.c applies the answer from the ACK).
-- @return sdp, or nil, message, code (488 when no codec is common)
function _M.answer_sdp(call, opts, late_ok)
    local m = media_of[call]
    if m then return sdp_cache[m] end
    local offer = call.remote_sdp
    if not offer and not late_ok then return nil, "media: INVITE without SDP offer", 488 end
    local err, code
    m, err, code = new_media(call, call_ep[call], opts)
    if not m then return nil, err, code end
    local sdp
    if offer then sdp, err, code = m:answer(offer) else sdp, err, code = m:offer() end
    if not sdp then m:close(); return nil, err, code end
    attach(call, m)
    sdp_cache[m] = sdp
    return sdp
end


--- Start the call's media (after 200/ACK, or with early media).
function _M.start(call)
    local m = media_of[call]
    if m then return m:start() end
    return true
end


--- For ep:call(uri, { media = true }): a media object and its offer.
-- @return media, sdp or nil, message, code
function _M.offer(ep, opts)
    local m, err, code = new_media(nil, ep, opts)
    if not m then return nil, err, code end
    return m, m:offer()
end


--- ep:call{ media = "late" }: the INVITE goes without SDP; the 200's
-- offer is answered from m in the ACK (call.c), before `answered`.
function _M.late(call, m)
    late_of[call] = m
    call:_media(m)
end


--- The outgoing call is established (or early, with SDP in a 18x):
-- apply the answer and start.
-- @return true, or nil, message, code (488: no common codec)
function _M.answered(call, m, early)
    if media_of[call] == m then return true end    -- early media runs
    if late_of[call] == m then                     -- offer came in the 200
        late_of[call] = nil
        if not call.remote_sdp then m:close(); return nil, "media: 200 without SDP offer", 488 end
        attach(call, m)
        return m:start()
    end
    if m.closed then return nil, "media: closed", ENOTCONN end
    local sdp = call.remote_sdp
    local ok, err, code
    if sdp then ok, err, code = m:set_answer(sdp) else ok, err, code = nil, "media: answer without SDP", 488 end
    if not ok then
        if not early then m:close() end           -- the 200 may still do
        return nil, err, code
    end
    attach(call, m)
    return m:start()
end


---------------------------------------------------------------- call methods

local CALL = core.methods("luasip.call")
local call_mt = debug.getregistry()["luasip.call"]


-- call.media_stats: counters of the call's RTP session (or nil)
do
    local idx = call_mt.__index
    local name, getter = debug.getupvalue(idx, 2)
    assert(name ~= nil, "luasip.media: call getter not found")
    debug.setupvalue(idx, 2, function(call, key)
        if key == "media_stats" then
            local m = media_of[call]
            return m and m:stats() or nil
        elseif key == "media" then
            return media_of[call]
        end
        return getter(call, key)
    end)
end

-- media ends with the call however it is closed
for _, name in ipairs { "hangup", "reject", "close" } do
    local orig = CALL[name]
    CALL[name] = function(call, ...)
        stop_media(call)
        return orig(call, ...)
    end
end
for _, name in ipairs { "__gc", "__close" } do
    local orig = call_mt[name]
    call_mt[name] = function(call, ...)
        stop_media(call)
        return orig(call, ...)
    end
end


local function get_media(call, fname)
    local m = media_of[call]
    if not m or m.closed then return nil, fname .. ": call has no media", ENOTCONN end
    return m
end


local function interrupt_set(v)
    if v == nil or v == false then return nil end
    if v == true then return DIGITS end
    if type(v) ~= "string" then argerror("play", "interrupt: digits or true", type(v)) end
    return v:upper()
end


local function pending_interrupt(m, set)
    if not set then return nil end
    local q = m.digits
    for i = 1, #q do
        local d = q:sub(i, i)
        if set:find(d, 1, true) then return d end
    end
end


-- play one item on m; returns true or nil, err, code
local function start_item(m, item)
    if type(item) == "string" then return m:play_file(item) end
    if type(item) ~= "table" then argerror("play", "file name or item table", type(item)) end
    if item.tone then return m:play_tone(item.tone, item.duration or 1) end
    if item.silence then return m:play_silence(item.silence) end
    if item.dtmf then return m:play_tone(item.dtmf, item.duration or 0.1) end
    if item.echo then return m:play_echo(item.echo) end
    argerror("play", "item { tone = } / { silence = } / { dtmf = } / { echo = }", "table")
end


-- expand { dtmf = "123" } into one tone per digit with gaps
local function expand(list)
    local out = {}
    for _, item in ipairs(list) do
        if type(item) == "table" and type(item.dtmf) == "string" and #item.dtmf > 1 then
            for d in item.dtmf:gmatch(".") do
                out[#out + 1] = { dtmf = d, duration = item.duration }
                out[#out + 1] = { silence = item.gap or 0.05 }
            end
        else
            out[#out + 1] = item
        end
    end
    return out
end


--- Play audio to the far end and wait until it has been sent.
-- @param what "file.wav" (8 or 16 kHz mono 16-bit), `{ tone = hz,
--   duration = s }`, `{ dtmf = "123", duration = s }` (in-band tones),
--   `{ silence = s }`, `{ echo = s }` (send back what is received), or a
--   list of those
-- @tparam[opt] table opts `interrupt` (digits, or true for any: stop when
--   one is received; the digit stays queued for `collect`), `timeout`
-- @return true; "interrupted", digit; or nil, message, code ("hangup",
--   "timeout", or why a file cannot be played)
function CALL.play(call, what, opts)
    if opts ~= nil and type(opts) ~= "table" then argerror("play", "options table", type(opts)) end
    opts = opts or {}
    local dl = deadline(opts.timeout, "luasip.play")
    local set = interrupt_set(opts.interrupt)
    local list = what
    if type(what) ~= "table" or what.tone or what.dtmf or what.silence or what.echo then list = { what } end
    list = expand(list)
    local m, err, code = get_media(call, "play")
    if not m then return nil, err, code end
    for _, item in ipairs(list) do
        local d = pending_interrupt(m, set)
        if d then return "interrupted", d end
        local ok
        ok, err, code = start_item(m, item)
        if not ok then return nil, err, code end
        while m.playing do
            d = pending_interrupt(m, set)
            if d then m:stop_play(); return "interrupted", d end
            local ev, e2, e3 = wait(m, remaining(dl), "luasip.play")
            if ev == nil then return nil, e2, e3 end
            if ev == "timeout" then m:stop_play(); return nil, "timeout", ETIMEDOUT end
            if ev == "closed" or m.closed then return nil, "hangup", ECONNRESET end
        end
    end
    return true
end


--- Record what the far end sends into a WAV file (8 kHz mono 16-bit).
-- @tparam string path
-- @tparam[opt] table opts `max` (seconds), `silence_stop` (seconds of
--   silence that end it), `stop_on` (digit that ends it)
-- @return duration (seconds), reason ("max", "silence", "dtmf",
--   "hangup"); or nil, message, code
function CALL.record(call, path, opts)
    if type(path) ~= "string" then argerror("record", "file name", type(path)) end
    if opts ~= nil and type(opts) ~= "table" then argerror("record", "options table", type(opts)) end
    opts = opts or {}
    local stop_on = opts.stop_on
    if stop_on ~= nil and (type(stop_on) ~= "string" or #stop_on ~= 1) then
        argerror("record", "stop_on: one digit", stop_on)
    end
    local m, err, code = get_media(call, "record")
    if not m then return nil, err, code end
    local ok
    ok, err, code = m:record(path, opts.max or 0, opts.silence_stop or 0)
    if not ok then return nil, err, code end
    while true do
        if stop_on then
            local pos = m.digits:find(stop_on, 1, true)
            if pos then
                for _ = 1, pos do m:pop_digit() end
                return m:stop_record("dtmf")
            end
        end
        local ev, a, b = wait(m, nil, "luasip.record")
        if ev == nil then m:stop_record("error"); return nil, a, b end
        if ev == "recorded" then return a, b end
        if ev == "closed" or m.closed then return nil, "hangup", ECONNRESET end
    end
end


--- Collect DTMF digits the far end sends (RFC 4733, in-band when no
-- telephone-event was negotiated, or SIP INFO application/dtmf-relay).
-- @tparam[opt] table opts `max` (digits), `terminator` (digit that ends
--   it, not included), `timeout` (seconds for the whole collection),
--   `inter_digit_timeout` (seconds after each digit)
-- @return digits; or nil, "timeout", ETIMEDOUT, partial;
--   nil, "hangup", ECONNRESET, partial
function CALL.collect(call, opts)
    if opts ~= nil and type(opts) ~= "table" then argerror("collect", "options table", type(opts)) end
    opts = opts or {}
    local max, term, idt = opts.max, opts.terminator, opts.inter_digit_timeout
    if max ~= nil and (math.type(max) ~= "integer" or max < 1) then argerror("collect", "max: integer >= 1", max) end
    if term ~= nil and (type(term) ~= "string" or #term ~= 1) then argerror("collect", "terminator: one digit", term) end
    if idt ~= nil and (type(idt) ~= "number" or idt < 0) then argerror("collect", "inter_digit_timeout: seconds", idt) end
    local dl = deadline(opts.timeout, "luasip.collect")
    local m, err, code = get_media(call, "collect")
    if not m then return nil, err, code end
    local got, idl = {}, nil
    while true do
        local d = m:pop_digit()
        while d do
            if d == term then return table.concat(got) end
            got[#got + 1] = d
            if max and #got >= max then return table.concat(got) end
            if idt then idl = now() + idt end
            d = m:pop_digit()
        end
        local t = remaining(dl)
        if idl then
            local r = remaining(idl)
            if not t or r < t then t = r end
        end
        local ev, e2, e3 = wait(m, t, "luasip.collect")
        if ev == nil then return nil, e2, e3, table.concat(got) end
        if ev == "timeout" then return nil, "timeout", ETIMEDOUT, table.concat(got) end
        if ev == "closed" or m.closed then return nil, "hangup", ECONNRESET, table.concat(got) end
    end
end


--- Play a prompt that digits interrupt, then collect digits.
-- @tparam table opts `prompt` (as for `play`), `interrupt` (default
--   true), and the options of `collect` (`max`, `terminator`, `timeout`
--   counted from the end of the prompt, `inter_digit_timeout`)
-- @return digits, or nil, message, code[, partial] as `collect`
function CALL.play_and_collect(call, opts)
    if type(opts) ~= "table" then argerror("play_and_collect", "options table", type(opts)) end
    if opts.prompt ~= nil then
        local interrupt = opts.interrupt
        if interrupt == nil then interrupt = true end
        local ok, err, code = call:play(opts.prompt, { interrupt = interrupt })
        if not ok then return nil, err, code, "" end
    end
    return call:collect { max = opts.max, terminator = opts.terminator, timeout = opts.timeout,
                          inter_digit_timeout = opts.inter_digit_timeout }
end


--- Send DTMF digits: `mode = "rfc4733"` (default, RTP telephone-events)
-- or "info" (SIP INFO application/dtmf-relay, one per digit).
-- @return true, or nil, message, code
function CALL.send_dtmf(call, digits, opts)
    if type(digits) ~= "string" or not digits:match("^[0-9%*#A-Da-d]+$") then
        argerror("send_dtmf", "DTMF digits", digits)
    end
    local mode = opts and opts.mode or "rfc4733"
    if mode == "info" then
        for d in digits:gmatch(".") do
            local ok, err, code = call:info("application/dtmf-relay",
                                            "Signal=" .. d .. "\r\nDuration=160\r\n")
            if not ok then return nil, err, code end
        end
        return true
    elseif mode ~= "rfc4733" then
        argerror("send_dtmf", 'mode "rfc4733" or "info"', mode)
    end
    local m, err, code = get_media(call, "send_dtmf")
    if not m then return nil, err, code end
    return m:send_dtmf(digits:lower())
end


return _M
