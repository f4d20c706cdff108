-- Two router processes sharing one Redis: spec/fixtures/redis_router.lua
-- runs a registrar on luasip.location_redis in each of two separate
-- lua5.4 processes (A and B, each on its own UDP port), both on a private
-- redis-server. A phone in this process registers through A; B finds the
-- binding (MESSAGE lookup) and forwards an INVITE to it; a de-registration
-- through B is seen by A; a restarted router still knows the binding.
local h = require "spec.helper"
local sip = h.sip
local R = require "spec.redis_helper"
local socket = require "socket"

-- the routers' host, any port; each test registers its own user
local function aor(user) return "sip:" .. user .. "@127.0.0.1" end


-- start a router process; wait (blocking, outside the loop) until ready
local function start_router(redis_port)
    local port = h.free_port()
    local log = os.tmpname()
    local pid = h.spawn_process(h.ENV .. ("lua5.4 spec/fixtures/redis_router.lua %d %d %s")
        :format(port, redis_port, "spec:loc:"), log)
    local rt = { pid = pid, port = port, log = log }
    local dl = socket.gettime() + 10
    while socket.gettime() < dl and h.alive(pid) do
        if (h.readfile(log) or ""):match("ready") then return rt end
        socket.sleep(0.02)
    end
    local out = h.readfile(log) or ""
    R.stop_pid(pid)
    os.remove(log)
    error("router did not start:\n" .. out, 2)
end


local function stop_router(rt)
    if not rt then return "" end
    R.stop_pid(rt.pid)
    local out = h.readfile(rt.log) or ""
    os.remove(rt.log)
    return out
end


local function router_uri(rt, user)
    return ("sip:%s127.0.0.1:%d"):format(user and (user .. "@") or "", rt.port)
end


-- REGISTER contact for user's AOR through router rt; returns the status
local function register(c, rt, user, contact, expires)
    local resp, err, code = c:request {
        method = "REGISTER", uri = router_uri(rt), to = aor(user), from = aor(user),
        headers = { Contact = "<" .. contact .. ">", Expires = tostring(expires) }, timeout = 5,
    }
    return resp and resp.status or code, err
end


-- MESSAGE to user through rt: status, body
local function lookup(c, rt, user)
    local resp, err, code, fresp = c:request {
        method = "MESSAGE", uri = router_uri(rt, user),
        headers = { ["Content-Type"] = "text/plain" }, body = "where are you?", timeout = 5,
    }
    if resp then return resp.status, resp.body end
    return code, fresp and fresp.body, err
end


describe("two router processes sharing Redis", function()
    if not R.available then
        pending("redis-server is not installed (apt-get install redis-server)")
        return
    end

    local srv, a, b
    setup(function()
        srv = R.start()
        a = start_router(srv.port)
        b = start_router(srv.port)
    end)
    teardown(function()
        stop_router(a)
        stop_router(b)
        R.stop(srv)
    end)

    it("finds through B the binding registered through A", function()
        h.run(function()
            local phone = h.endpoint { user = "alice" }
            local c = h.endpoint { user = "client" }
            assert.equal(200, register(phone, a, "alice", phone:uri(), 60))
            local status, body = lookup(c, b, "alice")
            assert.equal(200, status)
            assert.equal(phone:uri(), body)
            assert.equal(404, (lookup(c, b, "nobody")))
            status, body = lookup(c, a, "alice")
            assert.equal(200, status)
            assert.equal(phone:uri(), body)
        end, 10)
    end)

    it("forwards through B an INVITE to the contact registered through A", function()
        h.run(function()
            local phone = h.endpoint { user = "carol" }
            local answered, hung_up = false, nil
            phone:on("INVITE", function(call)
                answered = true
                assert(call:answer())
                hung_up = call:wait_hangup(5)
            end)
            assert.equal(200, register(phone, a, "carol", phone:uri(), 60))
            local caller = h.endpoint { user = "bob" }
            local call = assert(caller:call(router_uri(b, "carol"), { timeout = 5 }))
            assert.is_true(answered)
            assert.equal("established", call.state)
            call:hangup()
            local dl = sip.now() + 3
            while not hung_up and sip.now() < dl do sip.sleep(0.02) end
            assert.equal("hangup", hung_up)
        end, 15)
    end)

    it("forgets through A a binding removed through B", function()
        h.run(function()
            local phone = h.endpoint { user = "dave" }
            local c = h.endpoint { user = "client" }
            assert.equal(200, register(phone, a, "dave", phone:uri(), 60))
            assert.equal(200, (lookup(c, a, "dave")))
            assert.equal(200, register(phone, b, "dave", phone:uri(), 0))
            assert.equal(404, (lookup(c, a, "dave")))
            assert.equal(404, (lookup(c, b, "dave")))
        end, 10)
    end)

    it("keeps bindings when a router process restarts", function()
        local uri
        h.run(function()
            local phone = h.endpoint { user = "erin" }
            uri = phone:uri()
            assert.equal(200, register(phone, a, "erin", uri, 60))
        end, 10)
        stop_router(b)
        b = start_router(srv.port)
        h.run(function()
            local c = h.endpoint { user = "client" }
            local status, body = lookup(c, b, "erin")
            assert.equal(200, status)
            assert.equal(uri, body)
        end, 10)
    end)
end)
