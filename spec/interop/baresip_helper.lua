--- spec/interop/baresip_helper.lua: run Debian's baresip (baresip-core
-- 1.0.0) headless for interop specs: a config directory, free ports, and
-- its ctrl_tcp control socket (netstring-framed JSON).
local h = require "spec.helper"
local sip = h.sip

local b = {}

b.MODDIR = "/usr/lib/baresip/modules"
b.MODULES = { "g711", "ausine", "aufile", "account", "menu", "ctrl_tcp" }

local has_socket, socket = pcall(require, "socket")


--- Why baresip specs cannot run here, or nil. `modules`: the baresip
-- modules the spec loads (default b.MODULES).
function b.missing(modules)
    if not os.execute("command -v baresip >/dev/null 2>&1") then
        return "baresip is not installed (apt-get install baresip-core)"
    end
    if not has_socket then return "LuaSocket is missing (apt-get install lua-socket)" end
    for _, m in ipairs(modules or b.MODULES) do
        if not io.open(b.MODDIR .. "/" .. m .. ".so") then
            return "baresip module " .. m .. ".so not found in " .. b.MODDIR
        end
    end
end


--- A port free for UDP and TCP, with the next one free too (baresip also
-- binds sip_listen's port + 1).
function b.free_ports()
    for _ = 1, 50 do
        local p = h.free_port()
        local socks, ok = {}, p < 65535
        for _, port in ipairs { p, p + 1 } do
            for _, mk in ipairs { socket.udp, socket.tcp } do
                local s = mk()
                socks[#socks + 1] = s
                if not s:setsockname("127.0.0.1", port) then ok = false end
            end
        end
        for _, s in ipairs(socks) do s:close() end
        if ok and h.claim_port(p + 1) then return p end
    end
    error("no free pair of ports")
end


--- Start baresip on config directory `dir` with its own time limit of
-- `secs`: config(sip_port, ctrl_port) returns the config file's text for
-- two pairs of free ports (b.free_ports: no port another spec or process
-- got from h.free_port). A port found free can still be taken by
-- something else before baresip binds it; then baresip logs "Address
-- already in use" and gives up, and this starts it again on other ports.
-- Returns pid, sip_port, ctrl_port once baresip says it is ready; raises
-- after 4 tries, with baresip's log.
function b.start(dir, secs, config)
    local log, out = dir .. "/baresip.log", ""
    for _ = 1, 4 do
        local ports = { b.free_ports(), b.free_ports() }
        b.write(dir .. "/config", config(ports[1], ports[2]))
        local pid = h.spawn_process(("baresip -f %s -t %d"):format(dir, secs), log)
        local dl = os.time() + 6
        repeat
            os.execute("sleep 0.05")
            out = h.readfile(log) or ""
            if out:find("baresip is ready", 1, true) then return pid, ports[1], ports[2] end
        until out:find("Address already in use", 1, true) or not h.alive(pid) or os.time() > dl
        h.kill(pid)
        for _ = 1, 40 do
            if not h.alive(pid) then break end
            os.execute("sleep 0.05")
        end
    end
    error("baresip did not start:\n" .. out)
end


function b.write(path, s)
    local f = assert(io.open(path, "w"))
    f:write(s)
    f:close()
end


--- Wait (yielding) until fn() is truthy or seconds pass; returns its value.
function b.wait_until(fn, seconds)
    local dl = sip.now() + seconds
    repeat
        local v = fn()
        if v then return v end
        sip.sleep(0.05)
    until sip.now() > dl
    return fn()
end


--- The lines of a baresip config file: listen on sip_port, send a sine
-- of `tone` Hz, and take commands on ctrl_port. `extra`: more lines.
-- There is no audio player: Debian's aufile module is a source only (to
-- keep what baresip hears, load sndfile.so: it writes dump-*-dec.wav).
function b.config(sip_port, ctrl_port, tone, extra)
    local lines = {
        "poll_method epoll",
        "sip_listen 127.0.0.1:" .. sip_port,
        "audio_source ausine," .. (tone or 440),
        "ausrc_srate 48000", "ausrc_channels 2",  -- all that ausine makes
        "module_path " .. b.MODDIR,
        "module g711.so", "module ausine.so", "module aufile.so",
        "module_tmp account.so",
        "module_app menu.so", "module_app ctrl_tcp.so",
        "ctrl_tcp_listen 127.0.0.1:" .. ctrl_port,
    }
    for _, l in ipairs(extra or {}) do lines[#lines + 1] = l end
    lines[#lines + 1] = ""
    return table.concat(lines, "\n")
end


--- Connect to baresip's ctrl_tcp: ctl.send(command, params),
-- ctl.expect(plain_pattern, seconds) -> the message, ctl.close().
function b.ctrl_connect(port)
    local c
    local connected = b.wait_until(function()
        c = socket.tcp()
        if c:connect("127.0.0.1", port) then return true end
        c:close()
    end, 5)
    assert(connected, "baresip's ctrl_tcp did not accept a connection")
    c:settimeout(0)
    local ctl = { buf = "" }
    function ctl.send(command, params)
        local js = ('{"command":"%s","params":"%s","token":"t"}'):format(command, params or "")
        assert(c:send(#js .. ":" .. js .. ","))
    end
    -- wait for a message matching pattern (plain), read so far or arriving
    function ctl.expect(pattern, seconds)
        return b.wait_until(function()
            local data, _, partial = c:receive(65536)
            ctl.buf = ctl.buf .. (data or partial or "")
            local i = ctl.buf:find(pattern, 1, true)
            if i then
                local msg = ctl.buf:sub(1, ctl.buf:find(",", i, true) or -1)
                ctl.buf = ctl.buf:sub(#msg + 1)
                return msg
            end
        end, seconds)
    end
    ctl.close = function() c:close() end
    return ctl
end


return b
