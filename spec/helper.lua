--- spec/helper.lua: run a scenario inside luasip's loop with a deadline.
-- Specs `require "spec.helper"`; nothing here is global.
local sip = require "luasip"
local sched = require "luasip.sched"

local h = { sip = sip }

--- Run fn(...) as the first task of a fresh loop; fail the spec if it
-- raises (with the task's traceback) or if `seconds` pass first.
-- Endpoints created through h.endpoint are closed at the end.
function h.run(fn, seconds, ...)
    seconds = seconds or 5
    local err, finished, timed_out
    local args = table.pack(...)
    local opened = {}
    h._opened = opened
    local watchdog
    sip.run(function()
        watchdog = sip.after(seconds, function()
            timed_out = true
            sip.stop()
        end)
        local ok, e = xpcall(fn, debug.traceback, table.unpack(args, 1, args.n))
        if not ok then err = e end
        finished = true
        for _, ep in ipairs(opened) do
            if not ep.closed then ep:close() end
        end
        watchdog.stop()
        sip.stop()
    end)
    h._opened = nil
    if err then error(err, 0) end
    if timed_out and not finished then
        error(("scenario did not finish within %s s"):format(seconds), 0)
    end
    return true
end


--- h.run, then let the loop settle: after fn returns (or fails) the scenario
-- sleeps `settle` seconds (default 0.05) so BYEs, ACKs and media teardown go out, and collects garbage
-- twice so after_each checks see every object the scenario dropped.
function h.run_settled(fn, seconds, settle)
    return h.run(function()
        local ok, err = xpcall(fn, debug.traceback)
        sip.sleep(settle or 0.05)
        collectgarbage()
        collectgarbage()
        if not ok then error(err, 0) end
    end, seconds)
end

--- A raw UDP UAC for registrar specs, sending REGISTERs whose Call-ID and
-- CSeq the spec chooses (which ep:request would not let it do), over a
-- LuaSocket socket to target's first address. uac.register{call_id=,
-- cseq=, aor= (or to=, default aor), contacts={...}, expires=, extra={lines}}
-- waits (sleeping in the loop) up to 3 s for the final response and returns
-- code, headers (lower-case name -> {values}), raw text.
-- uac.retransmit(i) sends the i-th REGISTER again, byte for byte (a UDP
-- retransmission: same branch), and waits for its final response.
function h.raw_register_uac(target, aor)
    local u, lport, addr = h.raw_udp(target)
    local n = 0
    local uac, sent = {}, {}
    local function final()
        local dl = sip.now() + 3
        while sip.now() < dl do
            local data = u:receive()
            if data then
                local code = tonumber(data:match("^SIP/2%.0 (%d+)"))
                if code and code >= 200 then
                    local hdrs = {}
                    for name, value in data:gmatch("\r\n([%w%-]+):%s*([^\r\n]*)") do
                        name = name:lower()
                        hdrs[name] = hdrs[name] or {}
                        table.insert(hdrs[name], value)
                    end
                    return code, hdrs, data
                end
            else
                sip.sleep(0.005)
            end
        end
        error("no final response from the registrar")
    end
    function uac.register(o)
        n = n + 1
        local to = o.aor or o.to or aor
        local lines = {
            ("REGISTER sip:%s:%d SIP/2.0"):format(addr.host, addr.port),
            ("Via: SIP/2.0/UDP 127.0.0.1:%d;branch=z9hG4bKraw%d%d;rport"):format(
                lport, n, math.random(1e6)),
            "Max-Forwards: 70",
            ("From: <%s>;tag=raw%d-%d"):format(to, lport, n),
            ("To: <%s>"):format(to),
            "Call-ID: " .. o.call_id,
            ("CSeq: %d REGISTER"):format(o.cseq),
        }
        for _, v in ipairs(o.contacts or {}) do lines[#lines + 1] = "Contact: " .. v end
        if o.expires then lines[#lines + 1] = "Expires: " .. o.expires end
        for _, l in ipairs(o.extra or {}) do lines[#lines + 1] = l end
        lines[#lines + 1] = "Content-Length: 0"
        lines[#lines + 1] = ""
        lines[#lines + 1] = ""
        sent[n] = table.concat(lines, "\r\n")
        assert(u:send(sent[n]))
        return final()
    end
    function uac.retransmit(i)
        assert(u:send(assert(sent[i], "no such request")))
        return final()
    end
    function uac.close() u:close() end
    return uac
end

--- A LuaSocket UDP socket on 127.0.0.1, connected to the first address
-- of endpoint ep and non-blocking; returns it, its local port and that
-- address ({host=, port=}). For specs that write SIP by hand.
function h.raw_udp(ep)
    local socket = require "socket"
    local addr = ep:addresses()[1]
    local u = assert(socket.udp())
    assert(u:setsockname("127.0.0.1", 0))
    assert(u:setpeername(addr.host, addr.port))
    u:settimeout(0)
    local _, lport = u:getsockname()
    return u, lport, addr
end


--- The next datagram on raw socket u that matches Lua pattern pat,
-- waiting (sleeping in the loop) up to `seconds`; nil if none came.
-- Datagrams that do not match are passed to `other`, if given.
function h.raw_receive(u, pat, seconds, other)
    local dl = sip.now() + seconds
    while sip.now() < dl do
        local d = u:receive()
        if d then
            if d:match(pat) then return d end
            if other then other(d) end
        else
            sip.sleep(0.005)
        end
    end
end


--- An endpoint on loopback with port 0 for each transport given
-- (default udp), closed when the scenario ends.
function h.endpoint(opts)
    opts = opts or {}
    local listen = {}
    for _, tp in ipairs(opts.transports or { "udp" }) do
        listen[#listen + 1] = tp .. ":" .. (opts.host or "127.0.0.1") .. ":0"
    end
    local o = { listen = listen }
    for k, v in pairs(opts) do
        if k ~= "transports" and k ~= "host" then o[k] = v end
    end
    local ep = assert(sip.endpoint(o))
    if h._opened then h._opened[#h._opened + 1] = ep end
    return ep
end


--- The URI of ep for transport tp with another user part.
function h.uri(ep, user, tp)
    local u = assert(ep:uri(tp), "no " .. tostring(tp) .. " address")
    return (u:gsub("^(sips?:)[^@]*@", "%1" .. user .. "@"))
end


--- Scheduler counters (tasks, waiting, endpoints).
h.stats = sched.stats

-- h.free_port's range: from 21000 (above luasip's default RTP ports,
-- 10000-20000) to below the kernel's ephemeral range, which every bind to
-- port 0 and every outgoing connection draws from
local PORT_LO, PORT_HI = 21000, 32767
do
    local f = io.open("/proc/sys/net/ipv4/ip_local_port_range")
    local lo = f and tonumber((f:read("l") or ""):match("^(%d+)"))
    if f then f:close() end
    if lo then PORT_HI = lo - 1 end
end
local handed = {}

--- A port on 127.0.0.1 free for UDP and TCP a moment ago, for a process
-- a spec starts (or an endpoint it listens with). Taken outside the
-- kernel's ephemeral range: a port that range gave out (as bind to port 0
-- did here before) could be given again, to any socket the suite or its
-- children open, before the process it was meant for bound it; baresip
-- then failed with "Address already in use" once in CI. Never the same
-- port twice in one run.
function h.free_port()
    local socket = require "socket"
    if PORT_HI - PORT_LO < 1000 then     -- no room below: as before
        local u = assert(socket.udp())
        assert(u:setsockname("127.0.0.1", 0))
        local _, port = u:getsockname()
        u:close()
        return assert(tonumber(port))
    end
    for _ = 1, 1000 do
        local p = math.random(PORT_LO, PORT_HI)
        if not handed[p] then
            local u, t = assert(socket.udp()), assert(socket.tcp())
            local ok = u:setsockname("127.0.0.1", p) and t:bind("127.0.0.1", p)
            u:close()
            t:close()
            if ok then
                handed[p] = true
                return p
            end
        end
    end
    error(("no free port in %d-%d"):format(PORT_LO, PORT_HI))
end


--- Mark port p as handed out (a process will bind it too); false if it
-- already was.
function h.claim_port(p)
    if handed[p] then return false end
    handed[p] = true
    return true
end


--- "env LUA_PATH_5_4='..' LUA_CPATH_5_4='..' ", the prefix of a shell
-- command that runs a child lua5.4 on the modules this busted run uses:
-- lua/ and build/, or build-asan/ under `make test-asan` (busted's
-- --cpath), so that child processes are checked by the same build.
h.ENV = ("env LUA_PATH_5_4='%s' LUA_CPATH_5_4='%s' "):format(package.path, package.cpath)


--- Start a shell command in the background; returns its PID.
-- Output goes to `log`. The caller stops it with h.kill(pid).
function h.spawn_process(cmd, log)
    local f = assert(io.popen(("exec %s > %s 2>&1 < /dev/null & echo $!"):format(cmd, log or "/dev/null")))
    local pid = tonumber(f:read("l"))
    f:close()
    return assert(pid, "could not start: " .. cmd)
end


--- True while process pid is alive (not yet reaped counts as dead).
function h.alive(pid)
    local f = io.open("/proc/" .. pid .. "/stat")
    if not f then return false end
    local st = f:read("l") or ""
    f:close()
    return not st:match("^%d+ %b() Z")
end


--- Wait (yielding the task) until pid exits or `seconds` pass.
function h.wait_process(pid, seconds)
    local dl = sip.now() + seconds
    while h.alive(pid) do
        if sip.now() > dl then return false end
        sip.sleep(0.05)
    end
    return true
end


--- Stop a process this spec started (by PID only).
function h.kill(pid)
    if pid and h.alive(pid) then os.execute("kill " .. pid .. " 2>/dev/null") end
end


--- Read a whole file (or nil).
function h.readfile(path)
    local f = io.open(path, "rb")
    if not f then return nil end
    local s = f:read("a")
    f:close()
    return s
end


--- Parse the last line of a sipp -trace_stat CSV into a table.
function h.sipp_stats(path)
    local s = h.readfile(path)
    if not s then return nil end
    local lines = {}
    for l in s:gmatch("[^\n]+") do lines[#lines + 1] = l end
    if #lines < 2 then return nil end
    local names, vals, t = {}, {}, {}
    for v in lines[1]:gmatch("([^;]*);") do names[#names + 1] = v end
    for v in lines[#lines]:gmatch("([^;]*);") do vals[#vals + 1] = v end
    for i, n in ipairs(names) do t[n] = tonumber(vals[i]) or vals[i] end
    return t
end



-- audio measurements (spec/audio_helper.lua), also as h.read_wav and
-- h.frequency(samples, rate, from, to)
h.audio = require "spec.audio_helper"
h.read_wav = h.audio.read_wav
h.frequency = h.audio.frequency

return h
