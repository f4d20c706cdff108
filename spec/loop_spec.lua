-- spec/loop_spec.lua: the loop and its tasks (luasip.run/spawn/sleep/now/
-- stop/after), waits with timeouts, task errors, and the C timer heap
-- (csrc/tmr.c, which replaces libre's timer list) through core.timer()
-- objects and core.timers().
local h = require "spec.helper"
local sip = h.sip
local core = require "luasip.core"
local sched = require "luasip.sched"


-- sip.run(fn, ...) guarded by a watchdog timer that does not keep the
-- loop alive (a listener, no handler); returns elapsed seconds and what
-- run returned. Fails if the watchdog had to stop the loop; it fires up
-- to three times, so a broken run() nesting loops fails instead of hanging.
local function bounded_run(seconds, fn, ...)
    local wd = core.timer()
    local fired = 0
    sched.on(wd, "timer", function()
        fired = fired + 1
        sip.stop()
        if fired < 3 then wd:start(0.5) end
    end)
    wd:start(seconds)
    local t0 = sip.now()
    local res = table.pack(sip.run(fn, ...))
    local elapsed = sip.now() - t0
    wd:stop()
    sched.forget(wd)
    wd:close()
    assert(fired == 0, ("run() did not return within %s s"):format(seconds))
    return elapsed, table.unpack(res, 1, res.n)
end


-- collect sched.log lines (task errors) instead of printing them
local saved_log
local function capture_log()
    local lines = {}
    saved_log = saved_log or sched.log
    sched.log = function(m) lines[#lines + 1] = m end
    return lines
end


-- a timer that calls fn(t) in a new task each time it fires
local listened = {}
local function timer_on(fn)
    local t = core.timer()
    sched.on(t, "timer", fn)
    listened[#listened + 1] = t
    return t
end


-- run a Lua chunk in a fresh lua5.4 with only luasip.core loaded; returns
-- its stdout (exact libre semantics need a process without other timers)
local function fresh_lua(code)
    local chunk = ("package.cpath = %q; local core = require 'luasip.core'; %s")
        :format(package.cpath, code)
    local p = assert(io.popen("lua5.4 -e '" .. chunk:gsub("'", "'\\''") .. "' 2>&1", "r"))
    local out = p:read("a")
    local ok = p:close()
    assert(ok, "lua5.4 subprocess failed: " .. out)
    return out
end


describe("luasip.loop", function()
    local before

    before_each(function()
        before = sip.stats()
    end)

    after_each(function()
        if saved_log then
            sched.log = saved_log
            saved_log = nil
        end
        for _, t in ipairs(listened) do
            t:stop()
            sched.forget(t)
        end
        listened = {}
        -- nothing left behind: tasks, waits, keep-alive objects
        local now = sip.stats()
        assert.equal(before.tasks, now.tasks)
        assert.equal(before.waiting, now.waiting)
        assert.equal(before.endpoints, now.endpoints)
    end)

    describe(".run()", function()
        it("returns true at once with no function and nothing to do", function()
            local elapsed, ok = bounded_run(1)
            assert.is_true(ok)
            assert.is_true(elapsed < 0.05)
        end)

        it("passes its extra arguments to the first task", function()
            local got
            bounded_run(1, function(...) got = table.pack(...) end, 1, "two", nil, 4)
            assert.same({ n = 4, 1, "two", nil, 4 }, got)
        end)

        it("returns when the last task ends", function()
            local done = {}
            local elapsed, ok = bounded_run(2, function()
                sip.spawn(function() sip.sleep(0.05); done[#done + 1] = "a" end)
                sip.spawn(function() sip.sleep(0.15); done[#done + 1] = "b" end)
            end)
            assert.is_true(ok)
            assert.same({ "a", "b" }, done)
            assert.is_true(elapsed >= 0.14, "returned early: " .. elapsed)
            assert.is_true(elapsed < 1, "returned late: " .. elapsed)
        end)

        it("keeps running while an endpoint is open and returns once it is closed", function()
            local ep
            local elapsed, ok = bounded_run(2, function()
                ep = assert(sip.endpoint { listen = "udp:127.0.0.1:0" })
                sip.after(0.1, function() ep:close() end)
            end)
            assert.is_true(ok)
            assert.is_true(ep.closed)
            assert.is_true(elapsed >= 0.09, "returned before the close: " .. elapsed)
            assert.is_true(elapsed < 1)
        end)

        it("raises for a first task that is not a function", function()
            assert.has_error(function() sip.run("main") end,
                "bad argument #1 to 'run' (function expected, got string)")
            assert.is_true(bounded_run(1, function() end) < 1)   -- still usable
        end)

        it("raises when called while the loop is running", function()
            local ok, err
            bounded_run(1, function() ok, err = pcall(sip.run, function() end) end)
            assert.is_false(ok)
            assert.matches("luasip.run: already running", err, 1, true)
        end)
    end)

    describe(".spawn()", function()
        it("starts a task that runs after the spawning task yields", function()
            local order = {}
            h.run(function()
                local co = sip.spawn(function(x, y)
                    order[#order + 1] = "child " .. x .. y
                end, "a", "b")
                assert.equal("thread", type(co))
                order[#order + 1] = "parent"
                sip.sleep(0)            -- no yield: still before the child
                order[#order + 1] = "parent again"
                sip.sleep(0.01)
                order[#order + 1] = "parent after wait"
            end, 2)
            assert.same({ "parent", "parent again", "child ab", "parent after wait" }, order)
        end)

        it("runs many tasks concurrently", function()
            h.run(function()
                local done = 0
                for i = 1, 200 do
                    sip.spawn(function() sip.sleep(0.02 + (i % 5) / 1000); done = done + 1 end)
                end
                local t0 = sip.now()
                while done < 200 do sip.sleep(0.01) end
                assert.is_true(sip.now() - t0 < 0.5, "tasks ran one after another")
            end, 3)
        end)

        it("resumes a task that calls a bare coroutine.yield() on the next turn", function()
            h.run(function()
                local steps = 0
                sip.spawn(function()
                    for _ = 1, 3 do coroutine.yield(); steps = steps + 1 end
                end)
                sip.sleep(0.05)
                assert.equal(3, steps)
            end, 2)
        end)

        it("raises for a non-function", function()
            assert.has_error(function() sip.spawn(42) end,
                "bad argument #1 to 'spawn' (function expected, got number)")
        end)
    end)

    describe(".sleep()", function()
        it("suspends the task for the given seconds and returns true", function()
            h.run(function()
                local t0 = sip.now()
                assert.is_true(sip.sleep(0.1))
                local dt = sip.now() - t0
                assert.is_true(dt >= 0.098, "woke early: " .. dt)
                assert.is_true(dt < 0.5, "woke late: " .. dt)
            end, 2)
        end)

        it("wakes concurrent sleepers in the order of their deadlines", function()
            local order = {}
            h.run(function()
                for _, d in ipairs { 0.09, 0.03, 0.06 } do
                    sip.spawn(function() sip.sleep(d); order[#order + 1] = d end)
                end
                sip.sleep(0.15)
            end, 2)
            assert.same({ 0.03, 0.06, 0.09 }, order)
        end)

        it("raises outside a task", function()
            assert.has_error(function() sip.sleep(0.01) end,
                "luasip.sleep: must be called from a task (use luasip.spawn)")
        end)

        it("raises inside a plain coroutine that is not a task", function()
            h.run(function()
                local co = coroutine.wrap(function() return pcall(sip.sleep, 0.01) end)
                local ok, err = co()
                assert.is_false(ok)
                assert.matches("must be called from a task", err, 1, true)
            end, 2)
        end)

        it("raises for a negative, NaN or non-number duration", function()
            h.run(function()
                assert.has_error(function() sip.sleep(-1) end,
                    "bad argument #1 to 'sleep' (non-negative number expected, got -1)")
                assert.has_error(function() sip.sleep("1") end,
                    "bad argument #1 to 'sleep' (non-negative number expected, got 1)")
                assert.has_error(function() sip.sleep(0 / 0) end)
            end, 2)
        end)
    end)

    describe(".now()", function()
        it("is a monotonic clock in seconds that follows libre's jiffies", function()
            h.run(function()
                local a = sip.now()
                assert.equal("number", type(a))
                assert.is_true(math.abs(a - core.jiffies() / 1000) < 0.01)
                sip.sleep(0.05)
                local b = sip.now()
                assert.is_true(b - a >= 0.048 and b - a < 0.5, "advanced " .. (b - a))
            end, 2)
        end)
    end)

    describe(".stop()", function()
        it("makes run() return while tasks still wait and abandons them", function()
            local resumed = false
            local elapsed, ok = bounded_run(3, function()
                sip.spawn(function() sip.sleep(10); resumed = true end)
                sip.spawn(function() sip.sleep(10); resumed = true end)
                sip.sleep(0.05)
                sip.stop()
            end)
            assert.is_true(ok)
            assert.is_false(resumed)
            assert.is_true(elapsed < 1)
            local s = sip.stats()
            assert.equal(0, s.tasks)
            assert.equal(0, s.waiting)
            -- the next run starts clean
            local ran = false
            bounded_run(1, function() sip.sleep(0.01); ran = true end)
            assert.is_true(ran)
        end)

        it("makes run() return when called by the first task before it waits", function()
            local resumed = false
            local elapsed, ok = bounded_run(3, function()
                sip.spawn(function() sip.sleep(2); resumed = true end)
                sip.stop()
            end)
            assert.is_true(ok)
            assert.is_false(resumed)
            assert.is_true(elapsed < 0.5, "run() ignored stop(): " .. elapsed)
        end)
    end)

    describe(".after()", function()
        it("runs the function in a new task after the delay", function()
            local fired_at, slept
            local t0
            local elapsed = bounded_run(2, function()
                t0 = sip.now()
                sip.after(0.05, function()
                    fired_at = sip.now() - t0
                    slept = sip.sleep(0.01)      -- it is a task: it may wait
                end)
            end)
            assert.is_not_nil(fired_at, "after() never fired")
            assert.is_true(fired_at >= 0.048, "fired early: " .. fired_at)
            assert.is_true(slept)
            -- a pending after() keeps run() alive until it has fired
            assert.is_true(elapsed >= 0.058, "run returned early: " .. elapsed)
        end)

        it("does not fire after :stop() and no longer keeps run() alive", function()
            local fired = false
            local elapsed = bounded_run(2, function()
                local t = sip.after(0.1, function() fired = true end)
                sip.sleep(0.02)
                t.stop()
            end)
            assert.is_false(fired)
            assert.is_true(elapsed < 0.09, "run waited for a stopped timer: " .. elapsed)
        end)

        it("fires several timers in deadline order", function()
            local order = {}
            h.run(function()
                sip.after(0.06, function() order[#order + 1] = 3 end)
                sip.after(0.02, function() order[#order + 1] = 1 end)
                sip.after(0.04, function() order[#order + 1] = 2 end)
                sip.after(0, function() order[#order + 1] = 0 end)
                sip.sleep(0.1)
            end, 2)
            assert.same({ 0, 1, 2, 3 }, order)
        end)

        it("raises for bad arguments", function()
            assert.has_error(function() sip.after(-1, function() end) end,
                "bad argument #1 to 'after' (non-negative number expected, got -1)")
            assert.has_error(function() sip.after(1, "x") end,
                "bad argument #2 to 'after' (function expected, got string)")
        end)
    end)

    describe("waits", function()
        it("returns nil, 'timeout', ETIMEDOUT from ep:request when the timeout runs out", function()
            local has_socket, socket = pcall(require, "socket")
            if not has_socket then return pending("needs lua-socket for Lua 5.4") end
            h.run(function()
                local ep = h.endpoint()
                -- our own port with no SIP stack behind it: never answers
                local silent = assert(socket.udp())
                assert(silent:setsockname("127.0.0.1", 0))
                local _, port = silent:getsockname()
                local t0 = sip.now()
                local res, err, code = ep:request { method = "OPTIONS",
                    uri = "sip:nobody@127.0.0.1:" .. port, timeout = 0.2 }
                local dt = sip.now() - t0
                silent:close()
                assert.is_nil(res)
                assert.equal("timeout", err)
                assert.equal(sip.ETIMEDOUT, code)
                assert.is_true(dt >= 0.19 and dt < 0.6, "waited " .. dt)
            end, 3)
        end)

        it("returns the timeout tuple at once for timeout = 0", function()
            h.run(function()
                local a, b = h.endpoint(), h.endpoint()
                local res, err, code = a:request { method = "OPTIONS", uri = b:uri(), timeout = 0 }
                assert.is_nil(res)
                assert.equal("timeout", err)
                assert.equal(sip.ETIMEDOUT, code)
            end, 2)
        end)

        it("raises for a timeout that is not a non-negative number", function()
            h.run(function()
                local a = h.endpoint()
                assert.has_error(function()
                    a:request { method = "OPTIONS", uri = a:uri(), timeout = -1 }
                end, "luasip.request: timeout: non-negative number expected, got -1")
                assert.has_error(function()
                    a:request { method = "OPTIONS", uri = a:uri(), timeout = "soon" }
                end, "luasip.request: timeout: non-negative number expected, got soon")
            end, 2)
        end)

        it("returns 'timeout' from sched.wait and 'busy', EBUSY for a second waiter", function()
            h.run(function()
                local obj = {}
                local second
                sip.spawn(function() second = table.pack(sched.wait(obj, 1, "test")) end)
                sip.sleep(0)
                local t0 = sip.now()
                sip.spawn(function() end)
                assert.equal("timeout", sched.wait(obj, 0.05, "test"))
                assert.is_true(sip.now() - t0 >= 0.048)
                assert.same({ n = 3, nil, "busy", sip.EBUSY }, second)
            end, 2)
        end)

        it("stops the wait timer when an event wakes the task first", function()
            h.run(function()
                local obj = core.timer()      -- any object C emits events for
                local n0 = core.timers()
                local got
                sip.spawn(function() got = table.pack(sched.wait(obj, 5, "test")) end)
                sip.sleep(0)
                sip.sleep(0.001)
                obj:start(0.02)
                sip.sleep(0.05)
                assert.same({ n = 1, "timer" }, got)
                -- the 5 s wait timer is gone; timers left by earlier specs
                -- (lingering transactions) may expire meanwhile, hence <=
                local n1 = core.timers()
                assert.is_true(n1 <= n0, ("timers %d -> %d"):format(n0, n1))
                obj:close()
            end, 2)
        end)
    end)

    describe("task errors", function()
        it("are logged with a traceback while other tasks keep running", function()
            local lines = capture_log()
            local finished = {}
            h.run(function()
                sip.spawn(function() sip.sleep(0.05); finished[#finished + 1] = "sleeper" end)
                sip.spawn(function()
                    local function explode() error("kaboom") end
                    explode()
                end)
                sip.spawn(function()
                    sip.sleep(0.01)
                    error({ code = 7 })         -- not a string
                end)
                sip.sleep(0.1)
                finished[#finished + 1] = "main"
            end, 2)
            assert.same({ "sleeper", "main" }, finished)
            assert.equal(2, #lines)
            assert.matches("^task error: .*kaboom", lines[1])
            assert.matches("stack traceback:", lines[1], 1, true)
            assert.matches("explode", lines[1], 1, true)
            assert.matches("loop_spec.lua:%d+", lines[1])
            assert.matches("^task error: table: ", lines[2])
            assert.matches("stack traceback:", lines[2], 1, true)
        end)

        it("in an after() callback are logged and the loop goes on", function()
            local lines = capture_log()
            local later = false
            h.run(function()
                sip.after(0.01, function() error("timer task failed") end)
                sip.sleep(0.05)
                later = true
            end, 2)
            assert.is_true(later)
            assert.equal(1, #lines)
            assert.matches("timer task failed", lines[1], 1, true)
        end)
    end)
end)


describe("luasip.timer", function()
    after_each(function()
        for _, t in ipairs(listened) do
            t:stop()
            sched.forget(t)
        end
        listened = {}
    end)

    describe(":start()", function()
        it("fires once after the delay with (timer, 'timer')", function()
            h.run(function()
                local calls = {}
                local t
                t = timer_on(function(obj) calls[#calls + 1] = { obj = obj, at = core.jiffies() } end)
                local j0 = core.jiffies()
                assert.is_true(t:start(0.03))
                assert.is_true(t:running())
                sip.sleep(0.1)
                assert.equal(1, #calls)
                assert.equal(t, calls[1].obj)
                assert.is_true(calls[1].at - j0 >= 30, "fired after " .. (calls[1].at - j0) .. " ms")
                assert.is_false(t:running())
                assert.equal(0, t:remaining())
            end, 2)
        end)

        it("fires timers with equal expiry in start order", function()
            h.run(function()
                local order, ts = {}, {}
                for i = 1, 50 do
                    ts[i] = timer_on(function() order[#order + 1] = i end)
                end
                for i = 1, 50 do ts[i]:start(0.02) end   -- one step: same ms
                sip.sleep(0.08)
                local want = {}
                for i = 1, 50 do want[i] = i end
                assert.same(want, order)
            end, 2)
        end)

        it("fires many timers in expiry order, never early", function()
            h.run(function()
                local N = 1000
                local fired, starts, delay = {}, {}, {}
                for i = 1, N do
                    delay[i] = (i * 7919) % 40          -- ms, scattered
                    local t = timer_on(function() fired[#fired + 1] = { i = i, at = core.jiffies() } end)
                    starts[i] = core.jiffies()
                    t:start(delay[i] / 1000)
                end
                sip.sleep(0.15)
                assert.equal(N, #fired)
                local pos = {}
                for k, f in ipairs(fired) do
                    pos[f.i] = k
                    assert.is_true(f.at >= starts[f.i] + delay[f.i],
                        ("timer %d fired %d ms early"):format(f.i, starts[f.i] + delay[f.i] - f.at))
                end
                -- started earlier with a delay no longer: expires no later
                for i = 1, N do
                    for j = i + 1, N do
                        if delay[i] <= delay[j] and pos[i] > pos[j] then
                            error(("timer %d (%d ms) fired after timer %d (%d ms)")
                                :format(i, delay[i], j, delay[j]))
                        end
                    end
                end
            end, 3)
        end)

        it("postpones a running timer when started again", function()
            h.run(function()
                local n, at = 0, nil
                local t = timer_on(function() n = n + 1; at = sip.now() end)
                local t0 = sip.now()
                t:start(0.03)
                t:start(0.1)
                sip.sleep(0.06)
                assert.equal(0, n)
                sip.sleep(0.1)
                assert.equal(1, n)
                assert.is_true(at - t0 >= 0.098)
            end, 2)
        end)

        it("restarts from inside its own handler", function()
            h.run(function()
                local n = 0
                local t
                t = timer_on(function()
                    n = n + 1
                    if n < 3 then assert.is_true(t:start(0.01)) end
                end)
                local t0 = sip.now()
                t:start(0.01)
                sip.sleep(0.15)
                assert.equal(3, n)
                assert.is_false(t:running())
                assert.is_true(sip.now() - t0 >= 0.03)
            end, 2)
        end)

        it("keeps an unreferenced running timer alive until it fires", function()
            h.run(function()
                local n0 = core.timers()
                do
                    local t = core.timer()       -- no Lua reference left
                    t:start(0.05)
                end
                collectgarbage()
                collectgarbage()
                assert.equal(n0 + 1, (core.timers()))  -- not collected
                sip.sleep(0.1)
                assert.equal(n0, (core.timers()))      -- it fired
            end, 2)
        end)

        it("raises for a negative or non-number delay", function()
            local t = core.timer()
            assert.has_error(function() t:start(-1) end)
            assert.has_error(function() t:start("soon") end)
            assert.has_error(function() t:start(0 / 0) end)
            assert.is_false(t:running())
            t:close()
        end)
    end)

    describe(":stop()", function()
        it("cancels a timer so it never fires", function()
            h.run(function()
                local fired = {}
                local a = timer_on(function() fired[#fired + 1] = "a" end)
                local b = timer_on(function() fired[#fired + 1] = "b" end)
                local c = timer_on(function() fired[#fired + 1] = "c" end)
                a:start(0.02); b:start(0.02); c:start(0.02)
                assert.is_true(b:stop())
                assert.is_false(b:running())
                assert.equal(0, b:remaining())
                sip.sleep(0.06)
                assert.same({ "a", "c" }, fired)
            end, 2)
        end)

        it("cancels a due timer from the handler of one that fired first", function()
            h.run(function()
                local fired = {}
                local second
                local first = timer_on(function()
                    fired[#fired + 1] = "first"
                    second:stop()
                end)
                second = timer_on(function() fired[#fired + 1] = "second" end)
                first:start(0.02)
                second:start(0.02)              -- same ms, same poll
                sip.sleep(0.06)
                assert.same({ "first" }, fired)
            end, 2)
        end)

        it("is harmless on a stopped timer", function()
            local t = core.timer()
            assert.is_true(t:stop())
            assert.is_true(t:stop())
            t:close()
        end)
    end)

    describe(":remaining()", function()
        it("reports the seconds left while running and 0 when stopped", function()
            local t = core.timer()
            assert.equal(0, t:remaining())
            t:start(1)
            local r = t:remaining()
            assert.is_true(r > 0.95 and r <= 1.0, "remaining " .. r)
            t:stop()
            assert.equal(0, t:remaining())
            t:close()
        end)
    end)

    describe(":close()", function()
        it("cancels a running timer and makes the object inert", function()
            h.run(function()
                local fired = false
                local t = timer_on(function() fired = true end)
                t:start(0.02)
                t:close()
                t:close()                       -- twice is fine
                assert.is_false(t:running())
                assert.equal(0, t:remaining())
                local ok, err, code = t:start(0.01)
                assert.is_nil(ok)
                assert.matches("^closed", err)
                assert.equal(sip.ENOTCONN, code)
                sip.sleep(0.05)
                assert.is_false(fired)
            end, 2)
        end)

        it("lets the garbage collector take a stopped timer", function()
            local weak = setmetatable({}, { __mode = "v" })
            do
                local t = core.timer()
                t:start(5)
                t:stop()
                weak[1] = t
            end
            collectgarbage()
            collectgarbage()
            assert.is_nil(weak[1])
        end)
    end)

    describe("core.timers()", function()
        it("returns 0, 0 with no timers, then libre's next-timeout in ms", function()
            -- fresh process: no SIP stack, no timer of an earlier spec
            local out = fresh_lua([[
                local function p(tag) print(tag, core.timers()) end
                p("none")
                local a = core.timer(); a:start(1)
                p("one")
                local b = core.timer(); b:start(0.2)
                p("two")
                local c = core.timer(); c:start(0)
                p("due")
                c:stop(); p("undue")
                b:stop(); a:stop()
                p("stopped")
            ]])
            local got = {}
            for tag, n, ms in out:gmatch("(%a+)\t(%d+)\t(%d+)") do
                got[tag] = { tonumber(n), tonumber(ms) }
            end
            assert.same({ 0, 0 }, got.none, out)
            assert.equal(1, got.one[1])
            assert.is_true(got.one[2] > 950 and got.one[2] <= 1000, "one: " .. out)
            assert.equal(2, got.two[1])
            assert.is_true(got.two[2] > 150 and got.two[2] <= 200, "two: " .. out)
            assert.same({ 3, 1 }, got.due)          -- already due
            assert.equal(2, got.undue[1])
            assert.is_true(got.undue[2] > 150 and got.undue[2] <= 200)
            assert.same({ 0, 0 }, got.stopped)
        end)

        it("counts running timers relative to what is already there", function()
            local n0, next0 = core.timers()
            assert.equal(n0 == 0, next0 == 0)
            local t = core.timer()
            t:start(1)
            local n1, next1 = core.timers()
            assert.equal(n0 + 1, n1)
            assert.is_true(next1 >= 1 and next1 <= 1000)
            t:start(0)
            local _, next2 = core.timers()
            assert.equal(1, next2)
            t:close()
            assert.equal(n0, (core.timers()))
        end)

        it("handles 100k timers started then stopped, and closed, back to the baseline", function()
            local n0 = core.timers()
            local ts = {}
            for i = 1, 100000 do
                local t = core.timer()
                t:start(10 + (i % 97) / 10)
                ts[i] = t
            end
            assert.equal(n0 + 100000, (core.timers()))
            -- stop from both ends and the middle: exercises every heap path
            for i = 1, 100000, 3 do ts[i]:stop() end
            for i = 100000, 1, -3 do ts[i]:stop() end
            for i = 1, 100000 do
                if ts[i]:running() then ts[i]:stop() end
            end
            assert.equal(n0, (core.timers()))
            for i = 1, 100000, 2 do ts[i]:start(1) end
            assert.equal(n0 + 50000, (core.timers()))
            for i = 1, 100000 do ts[i]:close() end
            ts = nil
            collectgarbage()
            assert.equal(n0, (core.timers()))
            -- the heap still works afterwards
            h.run(function()
                local fired = false
                local t = timer_on(function() fired = true end)
                t:start(0.01)
                sip.sleep(0.05)
                assert.is_true(fired)
            end, 2)
        end)
    end)
end)
