--- spec/redis_helper.lua: a private redis-server for the Redis specs.
-- `R.available` is false when Debian's redis-server is not installed
-- (the specs are then pending). `R.start()` runs
-- `redis-server --port <free> --save '' --appendonly no --bind 127.0.0.1`
-- and waits (at most `seconds`, default 5) until it accepts connections;
-- `R.stop(srv)` ends that process by its PID. Both block briefly and run
-- outside the luasip loop (setup/teardown).
local h = require "spec.helper"
local socket = require "socket"

local R = {}

R.available = os.execute("command -v redis-server >/dev/null 2>&1") and true or false


local function accepting(port)
    local c = socket.tcp()
    c:settimeout(0.2)
    local ok = c:connect("127.0.0.1", port)
    c:close()
    return ok ~= nil
end


--- A TCP port on 127.0.0.1 that was free a moment ago.
function R.free_tcp_port()
    local s = assert(socket.bind("127.0.0.1", 0))
    local _, port = s:getsockname()
    s:close()
    return assert(tonumber(port))
end


--- Start redis-server; returns { pid =, port =, log = }. A port taken
-- between the check and the bind costs one more try, on another port.
function R.start(seconds, extra)
    local out
    for _ = 1, 3 do
        local port = R.free_tcp_port()
        local log = os.tmpname()
        local pid = h.spawn_process(("redis-server --port %d --save '' --appendonly no "
            .. "--bind 127.0.0.1 --loglevel warning %s"):format(port, extra or ""), log)
        local srv = { pid = pid, port = port, log = log }
        local dl = socket.gettime() + (seconds or 5)
        while socket.gettime() < dl and h.alive(pid) do
            if accepting(port) then return srv end
            socket.sleep(0.02)
        end
        out = h.readfile(log) or ""
        R.stop(srv)
    end
    error("redis-server did not start:\n" .. out, 2)
end


--- Stop a process this spec started: SIGTERM, then SIGKILL after 3 s.
function R.stop_pid(pid)
    if not pid then return end
    h.kill(pid)
    local dl = socket.gettime() + 3
    while h.alive(pid) and socket.gettime() < dl do socket.sleep(0.02) end
    if h.alive(pid) then os.execute("kill -9 " .. pid .. " 2>/dev/null") end
end


--- Stop the server started by R.start.
function R.stop(srv)
    if not srv then return end
    R.stop_pid(srv.pid)
    os.remove(srv.log)
end


return R
