--- luasip.sched: tasks, waits and the event dispatcher.
-- The only file that resumes coroutines. C delivers events through
-- `dispatch(obj, ev, ...)`; a task waiting on `obj` is queued to run, and
-- the run queue is drained outside any other task (a trampoline), so an
-- event raised synchronously from inside a task never re-enters it.
-- @module luasip.sched

local core = require "luasip.core"

local co_create, co_resume, co_yield = coroutine.create, coroutine.resume, coroutine.yield
local co_running, co_status = coroutine.running, coroutine.status
local traceback, pack, unpack = debug.traceback, table.pack, table.unpack
local now = core.now

local _M = {}

local WAIT = setmetatable({}, { __name = "luasip.wait" })  -- yield sentinel

local tasks = {}        -- co -> task
local ntasks = 0
local waiting = {}      -- obj -> co
local timer_owner = {}  -- timer -> co
-- spare timers for the next wait; weak, so that a full collection (the C
-- core runs one when the loop has been quiet for a while) frees what a
-- burst left here, scattered over the heap. With holes, #timer_pool is
-- still a border: its entry is set, the next one is not.
local timer_pool = setmetatable({}, { __mode = "v" })
local runq, rq_head, rq_tail = {}, 1, 0
local draining = false
local running_loop = false
local stopping = false  -- stop() was called during this run()
local listeners = {}    -- obj -> { ev -> { fn, ... } }
local handlers = {}     -- event source (endpoint) -> function(obj, ev, ...)
local keepalive = {}    -- objects that keep run() going (open endpoints)
local nkeepalive = 0

_M.log = function(msg) io.stderr:write("luasip: ", msg, "\n") end


local function get_timer()
    local t = timer_pool[#timer_pool]
    if t then
        timer_pool[#timer_pool] = nil
        return t
    end
    return core.timer()
end


local function put_timer(t)
    t:stop()
    timer_owner[t] = nil
    if #timer_pool < 256 then timer_pool[#timer_pool + 1] = t else t:close() end
end


local function push(co, ...)
    rq_tail = rq_tail + 1
    runq[rq_tail] = pack(co, ...)
end


-- wake the task blocked in wait(): it returns ev, ...
local function wake(task, ...)
    local obj = task.wobj
    if obj == nil then return end
    waiting[obj] = nil
    task.wobj = nil
    if task.wtimer then
        put_timer(task.wtimer)
        task.wtimer = nil
    end
    push(task.co, ...)
end


local function cleanup(task, ok)
    local owned = task.owned
    if owned then
        for i = #owned, 1, -1 do
            local obj = owned[i]
            local fin = obj and _M.finalizers[getmetatable(obj) and getmetatable(obj).__name]
            if fin then
                local fok, ferr = pcall(fin, obj, ok)
                if not fok then _M.log("cleanup: " .. tostring(ferr)) end
            end
        end
    end
end


local function finish(task, ok, err)
    tasks[task.co] = nil
    ntasks = ntasks - 1
    if task.wobj ~= nil then
        waiting[task.wobj] = nil
        task.wobj = nil
    end
    if task.wtimer then put_timer(task.wtimer); task.wtimer = nil end
    if not ok then
        _M.log("task error: " .. traceback(task.co, tostring(err)))
    end
    cleanup(task, ok)
    if task.on_exit then task.on_exit(ok, err) end
end


local function step(co, ...)
    local task = tasks[co]
    if not task or co_status(co) ~= "suspended" then return end
    local res = pack(co_resume(co, ...))
    if co_status(co) == "dead" then
        finish(task, res[1], res[2])
    elseif res[2] ~= WAIT then
        -- a bare coroutine.yield() inside a task: resume it on the next turn
        push(co)
    end
end


local function check_idle()
    if running_loop and ntasks == 0 and nkeepalive == 0 then
        core.stop()
    end
end


--- Run queued tasks until the queue is empty (re-entrant calls return).
function _M.drain()
    if draining then return end
    draining = true
    while rq_head <= rq_tail do
        local item = runq[rq_head]
        runq[rq_head] = nil
        rq_head = rq_head + 1
        local ok, err = pcall(step, unpack(item, 1, item.n))
        if not ok then _M.log("scheduler: " .. tostring(err)) end
    end
    rq_head, rq_tail = 1, 0
    draining = false
    check_idle()
end


--- Start fn(...) as a new task; it runs on the next scheduler turn (at once
-- when called from an event handler or outside a task).
-- @tparam function fn task body
-- @return the task's coroutine
function _M.spawn(fn, ...)
    if type(fn) ~= "function" then
        error("bad argument #1 to 'spawn' (function expected, got " .. type(fn) .. ")", 2)
    end
    local co = co_create(fn)
    local task = { co = co }
    tasks[co] = task
    ntasks = ntasks + 1
    push(co, ...)
    _M.drain()
    return co
end


--- Spawn a task that owns obj: when the task ends, obj's finalizer runs.
function _M.spawn_owner(obj, fn, ...)
    local co = co_create(fn)
    local task = { co = co, owned = { obj } }
    tasks[co] = task
    ntasks = ntasks + 1
    push(co, obj, ...)
    _M.drain()
    return co
end


--- The running task, or nil outside a task.
function _M.current()
    return tasks[co_running()]
end


--- Make the running task own obj (its finalizer runs when the task ends).
function _M.own(obj)
    local task = tasks[co_running()]
    if task then
        local owned = task.owned
        if not owned then owned = {}; task.owned = owned end
        owned[#owned + 1] = obj
    end
end


--- Give up ownership of obj (it outlives the running task).
function _M.disown(obj)
    local task = tasks[co_running()]
    local owned = task and task.owned
    if owned then
        for i = #owned, 1, -1 do
            if owned[i] == obj then table.remove(owned, i) end
        end
    end
end


--- Block the running task until an event arrives for obj, or timeout.
-- @param obj the object to wait on (one waiter per object)
-- @tparam[opt] number timeout seconds
-- @tparam string fname caller name for the error message
-- @return ev, ... from the event; "timeout" when it ran out;
--   nil, "busy", EBUSY when another task waits on obj
function _M.wait(obj, timeout, fname)
    local co = co_running()
    local task = tasks[co]
    if not task then
        error((fname or "wait") .. ": must be called from a task (use luasip.spawn)", 3)
    end
    if waiting[obj] then return nil, "busy", core.EBUSY end
    if timeout then
        if timeout <= 0 then return "timeout" end
        local t = get_timer()
        timer_owner[t] = co
        task.wtimer = t
        t:start(timeout)
    end
    waiting[obj] = co
    task.wobj = obj
    return co_yield(WAIT)
end


--- Seconds left until deadline (nil = none), never negative.
function _M.remaining(deadline)
    if not deadline then return nil end
    local r = deadline - now()
    return r > 0 and r or 0
end


--- Check a timeout argument; returns the absolute deadline or nil.
function _M.deadline(timeout, fname)
    if timeout == nil then return nil end
    if type(timeout) ~= "number" or timeout ~= timeout or timeout < 0 then
        error(("%s: timeout: non-negative number expected, got %s"):format(
            fname, tostring(timeout)), 3)
    end
    return now() + timeout
end


--- Register fn to run (in a new task) each time obj emits ev.
function _M.on(obj, ev, fn)
    local l = listeners[obj]
    if not l then l = {}; listeners[obj] = l end
    local list = l[ev]
    if not list then list = {}; l[ev] = list end
    list[#list + 1] = fn
end


--- Route events from source objects (endpoints) to fn(obj, ev, ...).
function _M.set_handler(obj, fn)
    handlers[obj] = fn
    if fn and not keepalive[obj] then
        keepalive[obj] = true
        nkeepalive = nkeepalive + 1
    elseif not fn and keepalive[obj] then
        keepalive[obj] = nil
        nkeepalive = nkeepalive - 1
    end
end


--- Forget everything about obj (it is closed).
function _M.forget(obj)
    listeners[obj] = nil
    _M.set_handler(obj, nil)
end


-- the dispatcher C calls for every event
local function dispatch(obj, ev, ...)
    -- a wait timer wakes its task; any other timer (luasip.after, a
    -- script's core.timer()) goes to its handler and listeners below
    local co = ev == "timer" and timer_owner[obj]
    if co then
        timer_owner[obj] = nil
        local task = tasks[co]
        if task and task.wtimer == obj then
            task.wtimer = nil
            wake(task, "timeout")
            put_timer(obj)
        end
    else
        local h = handlers[obj]
        if h then h(obj, ev, ...) end
        local wco = waiting[obj]
        if wco then wake(tasks[wco], ev, ...) end
        local l = listeners[obj]
        local list = l and l[ev]
        if list then
            for i = 1, #list do
                local fn = list[i]
                local c = co_create(fn)
                tasks[c] = { co = c }
                ntasks = ntasks + 1
                push(c, obj, ...)
            end
        end
    end
    _M.drain()
end

core.set_dispatcher(dispatch)


--- Run the loop: fn(...) is the first task. Returns when stop() is called
-- or nothing is left (no task, no open endpoint).
function _M.run(fn, ...)
    if running_loop then error("luasip.run: already running", 2) end
    if fn ~= nil and type(fn) ~= "function" then
        error("bad argument #1 to 'run' (function expected, got " .. type(fn) .. ")", 2)
    end
    -- the first task runs before re_main starts: a run() or stop() it
    -- makes must already see the loop as running
    running_loop, stopping = true, false
    if fn ~= nil then _M.spawn(fn, ...) end
    local ok, err, code = true, nil, nil
    if not stopping and (ntasks > 0 or nkeepalive > 0) then
        ok, err, code = core.run()
    end
    running_loop, stopping = false, false
    if _M.on_stop then _M.on_stop() end
    -- abandon what is left: owned objects are finalized as on error
    for co, task in pairs(tasks) do
        finish(task, true)
        tasks[co] = nil
    end
    ntasks = 0
    if not ok then return nil, err, code end
    return true
end


--- Make run() return after the current event.
function _M.stop()
    stopping = true        -- re_cancel() before re_main() would be lost
    core.stop()
end


--- Counters for tests: tasks, waiting objects, open endpoints.
function _M.stats()
    local nw = 0
    for _ in pairs(waiting) do nw = nw + 1 end
    return { tasks = ntasks, waiting = nw, endpoints = nkeepalive }
end


_M.finalizers = {}
_M.WAIT = WAIT

return _M
