-- spec/redis_spec.lua: the Redis client (csrc/redis.c, lua/luasip/redis.lua)
-- and the location store on it (lua/luasip/location_redis.lua), against a
-- private redis-server on a free loopback port, a fake server made with
-- LuaSocket for malformed replies, and the parser's test hook
-- (core.redis_parse) for fuzzing.
local h = require "spec.helper"
local sip = h.sip
local R = require "spec.redis_helper"
local core = require "luasip.core"
local redis = require "luasip.redis"
local location = require "luasip.location"
local location_redis = require "luasip.location_redis"
local socket = require "socket"


local function assert_clean()
    collectgarbage()
    local s = h.stats()
    assert.equal(0, s.tasks)
    assert.equal(0, s.waiting)
    assert.equal(0, s.endpoints)
end


local null = redis.null


---------------------------------------------------------------- fake server

-- one RESP request (array of bulk strings) at the start of buf
local function parse_request(buf)
    local n, p = buf:match("^%*(%d+)\r\n()")
    if not n then return nil end
    local args = {}
    for i = 1, tonumber(n) do
        local len, q = buf:match("^%$(%d+)\r\n()", p)
        if not len then return nil end
        len = tonumber(len)
        if #buf < q + len + 1 then return nil end
        args[i] = buf:sub(q, q + len - 1)
        p = q + len + 2
    end
    return args, buf:sub(p)
end


-- A TCP server in a task: respond(conn_number, args) returns the bytes to
-- send (a string, or a list of chunks sent `gap` seconds apart; a chunk
-- `false` closes the connection there).
local function fake_server(respond, gap)
    local srv = assert(socket.bind("127.0.0.1", 0))
    srv:settimeout(0)
    local _, port = srv:getsockname()
    local f = { port = tonumber(port), conns = 0, requests = {}, stopped = false }
    local done = false
    sip.spawn(function()
        local clients = {}
        while not f.stopped do
            local c = srv:accept()
            if c then
                c:settimeout(0)
                c:setoption("tcp-nodelay", true)
                f.conns = f.conns + 1
                clients[#clients + 1] = { sock = c, n = f.conns, buf = "" }
            end
            for i = #clients, 1, -1 do
                local cl = clients[i]
                local data, err, partial = cl.sock:receive(8192)
                cl.buf = cl.buf .. (data or partial or "")
                while err ~= "closed" do
                    local args, rest = parse_request(cl.buf)
                    if not args then break end
                    cl.buf = rest
                    f.requests[#f.requests + 1] = args
                    local out = respond(cl.n, args)
                    if type(out) == "string" then out = { out } end
                    for k, chunk in ipairs(out or {}) do
                        if chunk == false then
                            err = "closed"
                            break
                        end
                        local sent = 0
                        while sent < #chunk do
                            local n, serr, last = cl.sock:send(chunk, sent + 1)
                            if serr == "closed" then err = "closed"; break end
                            sent = n or last or sent
                            if sent < #chunk then sip.sleep(0.001) end
                        end
                        if err == "closed" then break end
                        if gap and k < #out then sip.sleep(gap) end
                    end
                end
                if err == "closed" then
                    cl.sock:close()
                    table.remove(clients, i)
                end
            end
            sip.sleep(0.002)
        end
        for _, cl in ipairs(clients) do cl.sock:close() end
        srv:close()
        done = true
    end)
    function f.stop()
        f.stopped = true
        while not done do sip.sleep(0.005) end
    end
    return f
end


-- every byte its own chunk
local function bytes(s)
    local t = {}
    for i = 1, #s do t[i] = s:sub(i, i) end
    return t
end


---------------------------------------------------------------- parser hook

describe("luasip.redis parser (core.redis_parse)", function()
    local STREAM = table.concat {
        "+OK\r\n",
        "-ERR wrong\r\n",
        ":-9223372036854775808\r\n",
        ":9223372036854775807\r\n",
        "$0\r\n\r\n",
        "$-1\r\n",
        "$5\r\na\0\r\nb\r\n",
        "*-1\r\n",
        "*0\r\n",
        "*3\r\n:1\r\n*2\r\n$1\r\nx\r\n$-1\r\n-ERR inner\r\n",
        "*2\r\n*1\r\n*1\r\n:7\r\n+s\r\n",
    }
    local EXPECTED = {
        { n = 1, "OK" },
        { n = 3, nil, "ERR wrong", core.EREMOTEIO },
        { n = 1, math.mininteger },
        { n = 1, math.maxinteger },
        { n = 1, "" },
        { n = 1, null },
        { n = 1, "a\0\r\nb" },
        { n = 1, null },
        { n = 1, {} },
        { n = 1, { 1, { "x", null }, { err = "ERR inner" } } },
        { n = 1, { { { 7 } }, "s" } },
    }

    it("parses every RESP2 type, nested arrays and nil", function()
        local replies, err, left = core.redis_parse { STREAM }
        assert.is_nil(err)
        assert.equal(0, left)
        assert.same(EXPECTED, replies)
    end)

    it("gives the same replies however the stream is split", function()
        for i = 0, #STREAM do
            local replies, err, left = core.redis_parse { STREAM:sub(1, i), STREAM:sub(i + 1) }
            assert.is_nil(err)
            assert.equal(0, left)
            assert.same(EXPECTED, replies, "split at " .. i)
        end
        local replies = core.redis_parse(bytes(STREAM))
        assert.same(EXPECTED, replies)
        math.randomseed(42)
        for _ = 1, 200 do
            local chunks, p = {}, 1
            while p <= #STREAM do
                local n = math.random(1, 12)
                chunks[#chunks + 1] = STREAM:sub(p, p + n - 1)
                p = p + n
            end
            assert.same(EXPECTED, (core.redis_parse(chunks)))
        end
    end)

    it("reports what is left of an incomplete reply", function()
        local replies, err, left = core.redis_parse { "+OK\r\n*2\r\n:1\r\n$3\r\nab" }
        assert.is_nil(err)
        assert.same({ { n = 1, "OK" } }, replies)
        assert.equal(#"*2\r\n:1\r\n$3\r\nab", left)
    end)

    it("rejects malformed streams", function()
        local bad = {
            "?\r\n", "\r\n", "+a\nb\r\n", "+a\rb\r\n", ":\r\n", ":12a\r\n", ":--1\r\n",
            ":99999999999999999999\r\n", ":9223372036854775808\r\n", "$-2\r\n",
            "$3\r\nabcd\r\n", "$3\r\nabc\n\r", "$x\r\n", "$536870913\r\n", "*-2\r\n",
            "*1\r\n?\r\n", "*2147483648\r\n",
            ("*1\r\n"):rep(33) .. ":1\r\n",                        -- 33 levels deep
            "+" .. ("a"):rep(70000),                                 -- line too long
        }
        for _, s in ipairs(bad) do
            local _, err = core.redis_parse { s }
            assert.equal("redis: protocol error: malformed reply", err, ("%q"):format(s:sub(1, 40)))
            _, err = core.redis_parse(bytes(s))
            assert.equal("redis: protocol error: malformed reply", err, ("%q"):format(s:sub(1, 40)))
        end
        -- 32 levels are fine
        local replies = core.redis_parse { ("*1\r\n"):rep(32) .. ":1\r\n" }
        assert.equal(1, #replies)
    end)

    it("never crashes on random or mutated bytes (fuzz)", function()
        math.randomseed(7)
        local alphabet = "+-:$*\r\n0123456789-ab\0"
        for _ = 1, 3000 do
            local t = {}
            for k = 1, math.random(0, 64) do
                local i = math.random(#alphabet)
                t[k] = math.random(4) == 1 and string.char(math.random(0, 255)) or alphabet:sub(i, i)
            end
            local s = table.concat(t)
            local chunks, p = {}, 1
            while p <= #s do
                local n = math.random(1, 8)
                chunks[#chunks + 1] = s:sub(p, p + n - 1)
                p = p + n
            end
            local replies, err, left = core.redis_parse(chunks)
            assert.is_table(replies)
            assert.is_true(err == nil or type(err) == "string")
            assert.is_number(left)
        end
        -- a valid stream with one byte changed: never a crash, and when
        -- the parser accepts the whole stream it splits it the same way
        -- whatever the chunking
        for _ = 1, 2000 do
            local i = math.random(#STREAM)
            local s = STREAM:sub(1, i - 1) .. string.char(math.random(0, 255)) .. STREAM:sub(i + 1)
            local r1, e1, l1 = core.redis_parse { s }
            local r2, e2, l2 = core.redis_parse(bytes(s))
            assert.equal(e1, e2)
            if not e1 then
                assert.equal(l1, l2)
                assert.equal(#r1, #r2)
            end
        end
    end)
end)


---------------------------------------------------------------- client

describe("luasip.redis", function()
    if not R.available then
        pending("redis-server is not installed (apt-get install redis-server)")
        return
    end

    local srv
    setup(function() srv = R.start() end)
    teardown(function() R.stop(srv) end)
    after_each(assert_clean)

    local function connect(opts)
        opts = opts or {}
        opts.port = opts.port or srv.port
        return assert(redis.connect(opts))
    end

    describe("connect()", function()
        it("connects and answers PING", function()
            h.run(function()
                local r = connect()
                assert.equal("ready", r:state())
                assert.equal("PONG", r:call("PING"))
                r:close()
                assert.equal("closed", r:state())
            end)
        end)

        it("returns nil, 'redis: Connection refused', ECONNREFUSED when nothing listens", function()
            h.run(function()
                local r, err, code = redis.connect { port = R.free_tcp_port() }
                assert.is_nil(r)
                assert.equal("redis: Connection refused", err)
                assert.equal(sip.ECONNREFUSED, code)
            end)
        end)

        it("returns nil, 'timeout', ETIMEDOUT when AUTH is not answered in time", function()
            h.run(function()
                local f = fake_server(function() return nil end)
                local t0 = sip.now()
                local r, err, code = redis.connect { port = f.port, password = "pw", timeout = 0.2 }
                assert.is_nil(r)
                assert.equal("timeout", err)
                assert.equal(sip.ETIMEDOUT, code)
                assert.is_true(sip.now() - t0 < 1)
                sip.sleep(0.05)
                assert.same({ "AUTH", "pw" }, f.requests[1])
                f.stop()
            end)
        end)

        it("authenticates and selects the database on every connection", function()
            h.run(function()
                local admin = connect()
                assert.equal("OK", admin:call("CONFIG", "SET", "requirepass", "s3cret"))
                local bad, err, code = redis.connect { port = srv.port, password = "nope" }
                assert.is_nil(bad)
                assert.matches("^WRONGPASS", err)
                assert.equal(redis.EREPLY, code)
                local r = connect { password = "s3cret", db = 3 }
                assert.equal("OK", r:call("SET", "dbkey", "three"))
                assert.equal("three", admin:call("EVAL", "redis.call('SELECT', 3) return redis.call('GET', 'dbkey')", 0))
                assert.equal(null, admin:call("GET", "dbkey"))      -- admin is on db 0
                -- after a lost connection the next call authenticates and selects again
                local id = r:call("CLIENT", "ID")
                assert.equal(1, admin:call("CLIENT", "KILL", "ID", id))
                sip.sleep(0.05)
                assert.equal("three", r:call("GET", "dbkey"))
                assert.not_equal(id, r:call("CLIENT", "ID"))
                assert.equal("OK", admin:call("CONFIG", "SET", "requirepass", ""))
                r:call("DEL", "dbkey")
                r:close()
                admin:close()
            end)
        end)

        it("raises on bad options and outside a task", function()
            assert.has_error(function() redis.new { port = "x" } end,
                "luasip.redis: port: port number expected, got x")
            assert.has_error(function() redis.new { host = "redis.example.com" } end,
                "luasip.redis: host: IP address expected, got redis.example.com")
            assert.has_error(function() redis.new { db = -1 } end)
            assert.has_error(function() redis.new { timeout = -1 } end)
            assert.has_error(function() redis.new "x" end)
            assert.has_error(function() redis.connect { port = srv.port } end,
                "luasip.redis.connect: must be called from a task (use luasip.spawn)")
            local r = redis.new { port = srv.port }
            assert.has_error(function() r:call("PING") end,
                "luasip.redis.call: must be called from a task (use luasip.spawn)")
            r:close()
        end)
    end)

    describe(":call()", function()
        it("returns each RESP2 type: status, integer, binary-safe bulk, null, nested arrays", function()
            h.run(function()
                local r = connect()
                local bin = "a\0b\r\n$3\r\n*1\r\n" .. string.char(255, 254)
                assert.equal("OK", r:call("SET", "bin", bin))
                assert.equal(bin, r:call("GET", "bin"))
                assert.equal(null, r:call("GET", "no such key"))
                assert.equal(1, r:call("DEL", "bin"))
                assert.equal(5, r:call("INCRBY", "counter", 5))
                assert.equal(42, r:call("INCRBY", 17, 42))              -- numbers are sent as text
                local big = ("x"):rep(1024 * 1024 + 7)
                assert.equal("OK", r:call("SET", "big", big))
                assert.equal(big, r:call("GET", "big"))
                assert.same({}, r:call("LRANGE", "no list", 0, -1))
                assert.same({ 1, { 2, "x", { "deep" } }, null, "y" },
                    r:call("EVAL", "return {1, {2, 'x', {'deep'}}, false, 'y'}", 0))
                assert.same({ "OK", "QUEUED", "QUEUED", { "OK", { err = "ERR value is not an integer or out of range" } } },
                    r:pipeline { { "MULTI" }, { "SET", "s", "x" }, { "INCR", "s" }, { "EXEC" } })
                r:call("DEL", "counter", "17", "big", "s")
                r:close()
            end)
        end)

        it("returns nil, 'ERR ...', EREPLY on an error reply and goes on", function()
            h.run(function()
                local r = connect()
                local v, err, code = r:call("NO-SUCH-COMMAND", "x")
                assert.is_nil(v)
                assert.matches("^ERR unknown command", err)
                assert.equal(redis.EREPLY, code)
                assert.equal(sip.EREMOTEIO, code)
                r:call("SET", "str", "x")
                v, err = r:call("HGET", "str", "f")
                assert.is_nil(v)
                assert.matches("^WRONGTYPE", err)
                assert.equal("PONG", r:call("PING"))
                r:call("DEL", "str")
                r:close()
            end)
        end)

        it("keeps replies in order for many tasks in flight on one connection", function()
            h.run(function()
                local r = connect()
                local left, results, max_pending = 200, {}, 0
                for i = 1, 200 do
                    sip.spawn(function()
                        assert.equal("OK", r:call("SET", "k" .. i, "v" .. i))
                        max_pending = math.max(max_pending, r:pending())
                        results[i] = r:call("GET", "k" .. i)
                        left = left - 1
                    end)
                end
                while left > 0 do sip.sleep(0.01) end
                for i = 1, 200 do assert.equal("v" .. i, results[i]) end
                assert.is_true(max_pending > 10, "pipelined: " .. max_pending)
                local keys = {}
                for i = 1, 200 do keys[i] = "k" .. i end
                assert.equal(200, r:call("DEL", table.unpack(keys)))
                assert.equal(0, r:pending())
                r:close()
            end, 10)
        end)

        it("returns nil, 'timeout', ETIMEDOUT and drops the late reply", function()
            h.run(function()
                local r = connect { timeout = 0.1 }
                local t0 = sip.now()
                local v, err, code = r:call("BLPOP", "empty list", "0.3")
                assert.is_nil(v)
                assert.equal("timeout", err)
                assert.equal(sip.ETIMEDOUT, code)
                assert.is_true(sip.now() - t0 < 0.25)
                -- the BLPOP's nil reply comes later; PING gets its own
                assert.equal("PONG", r:call_list({ "PING" }, 2))
                assert.equal(0, r:pending())
                r:close()
            end)
        end)

        it("fails calls in flight when the connection is lost, then reconnects", function()
            h.run(function()
                local r, admin = connect(), connect()
                local id = r:call("CLIENT", "ID")
                local got
                sip.spawn(function() got = table.pack(r:call("BLPOP", "empty list", 5)) end)
                sip.sleep(0.05)
                assert.equal(1, r:pending())
                assert.equal(1, admin:call("CLIENT", "KILL", "ID", id))
                sip.sleep(0.05)
                assert.same({ n = 3, nil, "redis: connection closed by server", sip.ECONNRESET }, got)
                assert.equal("idle", r:state())
                assert.equal("PONG", r:call("PING"))
                assert.equal("ready", r:state())
                r:close()
                admin:close()
            end)
        end)

        it("fails calls in flight with nil, 'closed: ...', ENOTCONN on :close()", function()
            h.run(function()
                local r = connect()
                local got
                sip.spawn(function() got = table.pack(r:call("BLPOP", "empty list", 5)) end)
                sip.sleep(0.05)
                r:close()
                sip.sleep(0.01)
                assert.equal(3, got.n)
                assert.is_nil(got[1])
                assert.matches("^closed", got[2])
                assert.equal(sip.ENOTCONN, got[3])
                local v, err, code = r:call("PING")
                assert.is_nil(v)
                assert.matches("^closed", err)
                assert.equal(sip.ENOTCONN, code)
            end)
        end)

        it("queues commands made before the connection is up (new() connects on first use)", function()
            h.run(function()
                local r = redis.new { port = srv.port }
                assert.equal("idle", r:state())
                local out = r:pipeline { { "SET", "q", "1" }, { "INCR", "q" }, { "GET", "q" }, { "DEL", "q" } }
                assert.same({ "OK", 2, "2", 1 }, out)
                r:close()
            end)
        end)

        it("delivers events on the object itself with the raw core API", function()
            h.run(function()
                local sched = require "luasip.sched"
                local r = assert(core.redis_connect("127.0.0.1", srv.port))
                assert.equal("connecting", r:state())
                assert.is_true(r:command { "SET", "raw", "x" })
                assert.is_true(r:command { "GET", "raw" })
                assert.is_true(r:command { "NOPE" })
                local evs = {}
                for _ = 1, 4 do evs[#evs + 1] = table.pack(sched.wait(r, 2, "test")) end
                assert.same({
                    { n = 1, "connected" },
                    { n = 2, "reply", "OK" },
                    { n = 2, "reply", "x" },
                    { n = 4, "reply", nil, "ERR unknown command 'NOPE', with args beginning with: ",
                      sip.EREMOTEIO },
                }, evs)
                r:command { "DEL", "raw" }
                assert.equal(1, r:pending())
                r:close()
                assert.equal(0, r:pending())
            end)
        end)

        it("raises on bad arguments", function()
            h.run(function()
                local r = connect()
                assert.has_error(function() r:call() end,
                    "bad argument #1 to 'call' (command name expected, got no value)")
                assert.has_error(function() r:call("SET", "k", {}) end,
                    "bad argument #3 to 'call' (string expected, got table)")
                assert.has_error(function() r:call("SET", nil, "v") end,
                    "bad argument #2 to 'call' (string expected, got nil)")
                assert.has_error(function() r:call_list({ "SET", "k", true }) end,
                    "bad argument #1 to 'command' (command[3]: string expected, got boolean)")
                assert.has_error(function() r:call_list({}) end,
                    "bad argument #1 to 'command' (command: non-empty list of command words expected)")
                assert.has_error(function() r:command("PING") end,
                    "bad argument #1 to 'command' (command: table expected, got string)")
                assert.has_error(function() r:pipeline "PING" end)
                assert.equal("PONG", r:call("PING"))
                r:close()
            end)
        end)

        it("is collected with its connection when unused", function()
            h.run(function()
                local admin = connect()
                local before = admin:call("INFO", "clients"):match("connected_clients:(%d+)")
                local function use()               -- r is unreachable on return
                    local r = connect()
                    assert.equal("PONG", r:call("PING"))
                end
                use()
                sip.sleep(0.01)
                collectgarbage()
                collectgarbage()
                sip.sleep(0.05)
                local after = admin:call("INFO", "clients"):match("connected_clients:(%d+)")
                assert.equal(before, after)
                admin:close()
            end)
        end)
    end)

    describe("malformed replies (fake server)", function()
        it("drop the connection with nil, 'redis: protocol error: ...', EPROTO; the next call reconnects", function()
            h.run(function()
                local f = fake_server(function(conn)
                    if conn == 1 then return "+OK\r\n!garbage\r\n" end
                    return "+OK\r\n"
                end)
                local r = redis.new { port = f.port }
                local res = {}
                local left = 2
                for i = 1, 2 do
                    sip.spawn(function()
                        res[i] = table.pack(r:call("PING"))
                        left = left - 1
                    end)
                end
                while left > 0 do sip.sleep(0.005) end
                -- the first reply came in whole; the second was garbage
                assert.same({ n = 1, "OK" }, res[1])
                assert.same({ n = 3, nil, "redis: protocol error: malformed reply", redis.EPROTO }, res[2])
                assert.equal("OK", r:call("PING"))
                assert.equal(2, f.conns)
                r:close()
                f.stop()
            end)
        end)

        it("parse a reply that arrives one byte at a time", function()
            h.run(function()
                local reply = "*4\r\n$5\r\nhe\r\nl\r\n:-12\r\n*2\r\n$-1\r\n+st\r\n-ERR in array\r\n"
                local f = fake_server(function() return bytes(reply) end, 0.001)
                local r = redis.new { port = f.port, timeout = 5 }
                assert.same({ "he\r\nl", -12, { null, "st" }, { err = "ERR in array" } }, r:call("X"))
                r:close()
                f.stop()
            end)
        end)

        it("never crash on random, cut or mutated replies over TCP (fuzz)", function()
            math.randomseed(11)
            local VALID = {
                "+OK\r\n", ":42\r\n", "$3\r\nabc\r\n", "$-1\r\n", "*2\r\n:1\r\n$1\r\nx\r\n",
                "*3\r\n*1\r\n+a\r\n-ERR e\r\n$0\r\n\r\n", "-ERR bad\r\n",
            }
            h.run(function()
                local f = fake_server(function()
                    -- a reply that may be bad is followed by a close, so
                    -- that one that looks incomplete cannot hang the rest
                    local s = VALID[math.random(#VALID)]
                    local dice, close = math.random(6), true
                    if dice == 1 then                   -- one byte changed
                        local i = math.random(#s)
                        s = s:sub(1, i - 1) .. string.char(math.random(0, 255)) .. s:sub(i + 1)
                    elseif dice == 2 then               -- random bytes
                        local t = {}
                        for k = 1, math.random(1, 20) do t[k] = string.char(math.random(0, 255)) end
                        s = table.concat(t)
                    elseif dice == 3 then               -- cut short
                        s = s:sub(1, math.random(0, #s - 1))
                    else
                        close = false
                    end
                    local chunks, p = {}, 1
                    while p <= #s do
                        local n = math.random(1, 4)
                        chunks[#chunks + 1] = s:sub(p, p + n - 1)
                        p = p + n
                    end
                    if close then chunks[#chunks + 1] = false end
                    return chunks
                end, 0.0005)
                local r = redis.new { port = f.port, timeout = 2 }
                local ok, failed = 0, 0
                for _ = 1, 200 do
                    local v, err, code = r:call("FUZZ")
                    if v ~= nil then
                        ok = ok + 1
                    else
                        failed = failed + 1
                        assert.is_string(err)
                        assert.is_true(math.type(code) == "integer" and code > 0)
                    end
                end
                assert.is_true(ok > 30 and failed > 30, ok .. " ok, " .. failed .. " failed")
                assert.is_true(f.conns > 10)
                r:close()
                f.stop()
            end, 30)
        end)

        it("fail every call in flight when the server closes the connection", function()
            h.run(function()
                local f = fake_server(function(_, args)
                    if args[1] == "QUIT" then return nil end
                    return ":1\r\n"
                end)
                local r = redis.new { port = f.port }
                assert.equal(1, r:call("A"))
                local got = {}
                for i = 1, 3 do
                    sip.spawn(function() got[i] = table.pack(r:call("QUIT")) end)
                end
                sip.sleep(0.05)
                assert.equal(3, r:pending())
                f.stop()                                -- closes the socket
                sip.sleep(0.05)
                for i = 1, 3 do
                    assert.same({ n = 3, nil, "redis: connection closed by server", sip.ECONNRESET }, got[i])
                end
                r:close()
            end)
        end)
    end)
end)


---------------------------------------------------------------- store

describe("luasip.location_redis", function()
    if not R.available then
        pending("redis-server is not installed (apt-get install redis-server)")
        return
    end

    local srv
    setup(function() srv = R.start() end)
    teardown(function() R.stop(srv) end)
    after_each(assert_clean)

    local AOR = "sip:alice@example.com"

    local function binding(key, secs, extra)
        local now = location.now()
        local b = {
            key = key, uri = key, expires = now + secs, call_id = "cid 1=2", cseq = 7,
            received = "127.0.0.1:5060", transport = "udp", updated = now,
        }
        for k, v in pairs(extra or {}) do b[k] = v end
        return b
    end

    it("encodes and decodes every binding field", function()
        local b = binding("sip:a@h", 60, {
            params = ';+sip.instance="<urn:uuid:1 2>";x=y', q = 0.7, path = { "<sip:p1;lr>", "<sip:p 2>" },
            user_agent = "UA/1.0 (x=%y)", instance = "<urn:uuid:1>", reg_id = 2,
        })
        assert.same(b, location_redis._decode(location_redis._encode(b)))
    end)

    it("stores, replaces and removes bindings", function()
        h.run(function()
            local store = location_redis.new { port = srv.port, prefix = "t1:" }
            assert.same({}, store:get(AOR))
            assert.is_true(store:put(AOR, binding("sip:a@1", 60, { q = 0.5 })))
            assert.is_true(store:put(AOR, binding("sip:a@2", 120, { path = { "<sip:p;lr>" } })))
            local l = store:get(AOR)
            table.sort(l, function(x, y) return x.key < y.key end)
            assert.equal(2, #l)
            assert.equal(0.5, l[1].q)
            assert.same({ "<sip:p;lr>" }, l[2].path)
            assert.equal(7, l[2].cseq)
            assert.is_true(store:put(AOR, binding("sip:a@1", 30, { cseq = 8 })))
            l = store:get(AOR)
            assert.equal(2, #l)
            -- the key lives as long as its latest binding (120 s), plus a second
            local r = redis.new { port = srv.port }
            local pttl = r:call("PTTL", "t1:" .. AOR)
            assert.is_true(pttl > 119000 and pttl <= 121000, tostring(pttl))
            assert.is_true(store:remove(AOR, "sip:a@2"))
            assert.is_true(store:remove(AOR, "sip:not-there@x"))
            l = store:get(AOR)
            assert.equal(1, #l)
            assert.equal(8, l[1].cseq)
            assert.is_true(store:remove_all(AOR))
            assert.same({}, store:get(AOR))
            assert.equal(0, r:call("EXISTS", "t1:" .. AOR))
            assert.equal(0, store:expire(location.now()))
            r:close()
            store:close()
        end)
    end)

    it("lets Redis forget expired bindings: a put drops them, the key expires", function()
        h.run(function()
            local store = location_redis.new { port = srv.port, prefix = "t2:" }
            local r = redis.new { port = srv.port }
            assert(store:put(AOR, binding("sip:a@short", 0.2)))
            assert(store:put("sip:bob@example.com", binding("sip:b@1", 0.2)))
            assert(store:put(AOR, binding("sip:a@long", 60)))
            sip.sleep(0.3)
            assert.equal(2, #store:get(AOR))             -- not swept yet (callers filter)
            assert(store:put(AOR, binding("sip:a@long", 60)))
            local l = store:get(AOR)
            assert.equal(1, #l)
            assert.equal("sip:a@long", l[1].key)
            sip.sleep(1.1)                               -- bob's key: 0.2 s + 1 s grace
            assert.equal(0, r:call("EXISTS", "t2:sip:bob@example.com"))
            assert.equal(1, r:call("EXISTS", "t2:" .. AOR))
            store:remove_all(AOR)
            r:close()
            store:close()
        end, 5)
    end)

    it("reloads its script after SCRIPT FLUSH", function()
        h.run(function()
            local store = location_redis.new { port = srv.port, prefix = "t3:" }
            local r = redis.new { port = srv.port }
            assert(store:put(AOR, binding("sip:a@1", 60)))
            assert.equal("OK", r:call("SCRIPT", "FLUSH"))
            assert(store:put(AOR, binding("sip:a@2", 60)))
            assert.equal(2, #store:get(AOR))
            store:remove_all(AOR)
            r:close()
            store:close()
        end)
    end)

    it("returns nil, message when Redis cannot be reached; the registrar answers 500", function()
        local sched = require "luasip.sched"
        local log, logged = sched.log, {}
        sched.log = function(msg) logged[#logged + 1] = msg end
        finally(function() sched.log = log end)
        h.run(function()
            local store = location_redis.new { port = R.free_tcp_port() }
            local l, err, code = store:get(AOR)
            assert.is_nil(l)
            assert.equal("redis: Connection refused", err)
            assert.equal(sip.ECONNREFUSED, code)
            local ep = h.endpoint { user = "registrar" }
            local reg = sip.registrar { open = true, store = store }
            reg:attach(ep)
            local c = h.endpoint { user = "alice" }
            local _, _, status = c:request { method = "REGISTER", uri = ep:uri():gsub("registrar@", ""),
                to = AOR, from = AOR, headers = { Contact = "<sip:alice@127.0.0.1:9>" }, timeout = 5 }
            assert.equal(500, status)
            assert.matches("store get: redis: Connection refused", logged[1], 1, true)
            assert.is_nil(reg:lookup(AOR))
            reg:close()
            store:close()
        end)
    end)

    it("applies an update at once, refusing it all when the CSeq is not higher", function()
        h.run(function()
            local store = location_redis.new { port = srv.port, prefix = "t5:" }
            local guard = { call_id = "cid 1=2", cseq = 7 }
            assert.is_true(store:update(AOR, { { put = binding("sip:a@1", 60) },
                                              { put = binding("sip:a@2", 60) } }, guard))
            assert.equal(2, #store:get(AOR))
            -- the same CSeq again: nothing changes, not even the new binding
            local ok, why = store:update(AOR, { { put = binding("sip:a@3", 60) },
                                               { remove = "sip:a@1" } }, guard)
            assert.is_false(ok)
            assert.equal("out-of-order", why)
            assert.equal(2, #store:get(AOR))
            ok, why = store:update(AOR, { { remove_all = true } }, { call_id = "cid 1=2", cseq = 6 })
            assert.is_false(ok)
            -- another Call-ID, or a higher CSeq, goes through
            assert.is_true(store:update(AOR, { { put = binding("sip:a@3", 60, { call_id = "other" }) } },
                                        { call_id = "other", cseq = 1 }))
            assert.is_true(store:update(AOR, { { remove = "sip:a@1" } }, { call_id = "cid 1=2", cseq = 8 }))
            local keys = {}
            for _, b in ipairs(store:get(AOR)) do keys[#keys + 1] = b.key end
            table.sort(keys)
            assert.same({ "sip:a@2", "sip:a@3" }, keys)
            assert.is_true(store:update(AOR, { { remove_all = true } }, { call_id = "cid 1=2", cseq = 9 }))
            assert.same({}, store:get(AOR))
            assert.has_error(function() store:update(AOR, { { put = { key = 1 } } }) end,
                "bad argument #2 to 'update' (binding with a key and expires expected at [1].put)")
            assert.has_error(function() store:update(AOR, { {} }) end,
                "bad argument #2 to 'update' (put, remove or remove_all expected at [1])")
            store:close()
        end)
    end)

    -- two registrars with their own connections and locks stand for two
    -- processes; a store that sleeps before each write makes their
    -- REGISTERs interleave between step 7 (read, check) and step 8 (write)
    local function slow_store(store, delay)
        return setmetatable({
            put = function(_, ...) sip.sleep(delay); return store:put(...) end,
            update = store.update and function(_, ...) sip.sleep(delay); return store:update(...) end,
        }, { __index = function(_, k)
            local f = store[k]
            if type(f) == "function" then return function(_, ...) return f(store, ...) end end
            return f
        end })
    end

    local function registrars(prefix, delays)
        local out = {}
        for i, delay in ipairs(delays) do
            local ep = h.endpoint { user = "registrar" }
            local store = location_redis.new { port = srv.port, prefix = prefix }
            local reg = sip.registrar { open = true, store = slow_store(store, delay) }
            reg:attach(ep)
            out[i] = { reg = reg, uri = ep:uri():gsub("registrar@", ""), store = store, ep = ep }
        end
        return out
    end

    it("loses no binding when two registrars update one AOR at the same time", function()
        h.run(function()
            local rs = registrars("t6:", { 0.05, 0.05 })
            local c = h.endpoint { user = "alice" }
            local N, done, statuses = 10, 0, {}
            for i = 1, N do
                for j = 1, 2 do
                    sip.spawn(function()
                        local resp, err, code = c:request { method = "REGISTER", uri = rs[j].uri,
                            to = AOR, from = AOR,
                            headers = { Contact = ("<sip:alice@127.0.0.%d:%d>"):format(j, 5000 + i),
                                        Expires = "300" }, timeout = 5 }
                        statuses[#statuses + 1] = resp and resp.status or code or err
                        done = done + 1
                    end)
                end
            end
            local dl = sip.now() + 8
            while done < 2 * N and sip.now() < dl do sip.sleep(0.02) end
            assert.equal(2 * N, done)
            for _, st in ipairs(statuses) do assert.equal(200, st) end
            local l = rs[1].reg:lookup(AOR)
            assert.equal(2 * N, #l)
            assert.same(l, rs[2].reg:lookup(AOR))
            rs[1].store:remove_all(AOR)
            for _, r in ipairs(rs) do r.reg:close(); r.store:close() end
        end, 12)
    end)

    it("never lets an older REGISTER overwrite a newer one from another registrar", function()
        h.run(function()
            local rs = registrars("t7:", { 0.3, 0 })
            -- a raw UDP REGISTER: one UA (Call-ID), a chosen CSeq
            local function register(j, cseq, expires, out)
                sip.spawn(function()
                    local a = rs[j].ep:addresses()[1]
                    local u = assert(socket.udp())
                    assert(u:setpeername(a.host, a.port))
                    u:settimeout(0)
                    local _, lport = u:getsockname()
                    assert(u:send(table.concat({
                        ("REGISTER sip:%s:%d SIP/2.0"):format(a.host, a.port),
                        ("Via: SIP/2.0/UDP 127.0.0.1:%d;branch=z9hG4bKrr%d;rport"):format(lport, cseq),
                        "Max-Forwards: 70",
                        ("From: <%s>;tag=rr%d"):format(AOR, cseq),
                        ("To: <%s>"):format(AOR),
                        "Call-ID: same-ua@x",
                        ("CSeq: %d REGISTER"):format(cseq),
                        "Contact: <sip:alice@127.0.0.1:7000>",
                        "Expires: " .. expires,
                        "Content-Length: 0", "", "" }, "\r\n")))
                    local dl = sip.now() + 4
                    while sip.now() < dl and not out[cseq] do
                        local d = u:receive()
                        local code = d and tonumber(d:match("^SIP/2%.0 (%d+)"))
                        if code and code >= 200 then out[cseq] = code else sip.sleep(0.01) end
                    end
                    u:close()
                end)
            end
            local out = {}
            -- CSeq 1 reaches registrar 1 first and reads an empty AOR;
            -- CSeq 2 reaches registrar 2 while 1 waits to write
            register(1, 1, 100, out)
            sip.sleep(0.1)
            register(2, 2, 200, out)
            local dl = sip.now() + 5
            while not (out[1] and out[2]) and sip.now() < dl do sip.sleep(0.02) end
            assert.equal(200, out[2])
            assert.equal(500, out[1])          -- refused where the write happens
            local l = rs[1].reg:lookup(AOR)
            assert.equal(1, #l)
            assert.equal(2, l[1].cseq)
            assert.is_true(l[1].expires > 150)
            rs[1].store:remove_all(AOR)
            for _, r in ipairs(rs) do r.reg:close(); r.store:close() end
        end, 10)
    end)

    it("shares bindings between registrars with their own connections", function()
        h.run(function()
            local function registrar()
                local ep = h.endpoint { user = "registrar" }
                local store = location_redis.new { port = srv.port, prefix = "t4:" }
                local reg = sip.registrar { open = true, store = store }
                reg:attach(ep)
                return reg, ep:uri():gsub("registrar@", ""), store
            end
            local reg1, uri1, store1 = registrar()
            local reg2, uri2, store2 = registrar()
            local c = h.endpoint { user = "alice" }
            local resp = assert(c:request { method = "REGISTER", uri = uri1, to = AOR, from = AOR,
                headers = { Contact = "<sip:alice@127.0.0.1:7777>;q=0.8", Expires = "300" }, timeout = 5 })
            assert.equal(200, resp.status)
            local l = reg2:lookup(AOR)
            assert.equal(1, #l)
            assert.equal("sip:alice@127.0.0.1:7777", l[1].uri)
            assert.equal(0.8, l[1].q)
            assert.is_true(l[1].expires > 295)
            -- refreshed and removed through the other one
            resp = assert(c:request { method = "REGISTER", uri = uri2, to = AOR, from = AOR,
                headers = { Contact = "<sip:alice@127.0.0.1:7777>", Expires = "0" }, timeout = 5 })
            assert.equal(200, resp.status)
            assert.same({}, reg1:lookup(AOR))
            reg1:close()
            reg2:close()
            store1:close()
            store2:close()
        end)
    end)
end)
