--- luasip.transfer: blind call transfer with REFER (RFC 3515).
-- `call:transfer(target)` sends REFER in the call's dialog and waits for
-- the 202 and the final NOTIFY (message/sipfrag) telling how the call to
-- the target went. The other direction: a REFER received in a call is
-- declined (603) unless the script takes it with
-- `call:on("refer", function(call, refer) ... end)`; the listener's task
-- owns the refer object (see `refer:accept`, `refer:reject`,
-- `refer:notify`). The SIP work is in csrc/refer.c.
--
-- A refer object has the fields `target` (the Refer-To URI),
-- `referred_by`, `state` ("pending", "accepted", "rejected", "done"),
-- `status` and the REFER's own (`headers`, `from`, ...), and the methods
-- `refer:accept()` (202 Accepted, then NOTIFY "100 Trying"),
-- `refer:reject([code[, reason]])` (default 603 Decline),
-- `refer:notify(status[, reason])` (how the call to the target goes; a
-- status >= 200 is the final NOTIFY) and `refer:close()`. Each returns
-- true or nil, message, code.
-- @module luasip.transfer

local core = require "luasip.core"
local sched = require "luasip.sched"

local type, tostring, error = type, tostring, error
local wait, deadline, remaining = sched.wait, sched.deadline, sched.remaining
local ETIMEDOUT = core.ETIMEDOUT

local _M = {}

local CALL = core.methods("luasip.call")


local function argerror(fname, what, got)
    error(("bad argument to '%s' (%s expected, got %s)"):format(fname, what, tostring(got)), 3)
end


--- Blind transfer: ask the far end to call `target` (REFER), wait for
-- the outcome and, when it succeeded, hang up.
-- @tparam string target SIP URI the far end should call
-- @tparam[opt] table opts `timeout` (seconds for the whole transfer,
--   default 32), `headers` (extra REFER headers, e.g. Referred-By),
--   `hangup` (false: keep the call after a successful transfer)
-- @return true, status, reason (the final sipfrag, e.g. 200, "OK");
--   or nil, message, code: the REFER's failure response ("603 Decline",
--   603), the target call's failure ("486 Busy Here", 486), "timeout"
--   (ETIMEDOUT) or ENOTCONN when the call is not established
function CALL.transfer(call, target, opts)
    if type(target) ~= "string" then argerror("transfer", "SIP URI string", type(target)) end
    if opts ~= nil and type(opts) ~= "table" then argerror("transfer", "options table", type(opts)) end
    opts = opts or {}
    local dl = deadline(opts.timeout or 32, "luasip.transfer")
    if not sched.current() then
        error("luasip.transfer: must be called from a task (use luasip.spawn)", 2)
    end
    local x, err, code = core.refer(call, target, opts.headers)
    if not x then return nil, err, code end
    sched.own(x)
    while true do
        local st = x.state
        if st == "failed" then
            local status, errno, reason = x.status, x.errno, x.reason
            x:close()
            if status >= 300 then return nil, status .. " " .. reason, status end
            return nil, "transfer: " .. reason, errno
        elseif st == "done" then
            local status, reason = x.notify_status, x.notify_reason
            x:close()
            if status < 200 or status >= 300 then return nil, status .. " " .. reason, status end
            if opts.hangup ~= false then call:hangup() end
            return true, status, reason
        end
        local ev = wait(x, remaining(dl), "luasip.transfer")
        if ev == "timeout" then
            x:close()
            return nil, "timeout", ETIMEDOUT
        end
    end
end


-- call:on("refer", fn): the listener's task owns the refer object, so a
-- REFER it neither accepts nor rejects is declined when the task ends
local call_on = CALL.on
function CALL.on(call, ev, fn)
    if ev == "refer" and type(fn) == "function" then
        return call_on(call, ev, function(c, refer, ...)
            refer:_claim()
            sched.own(refer)
            return fn(c, refer, ...)
        end)
    end
    return call_on(call, ev, fn)
end


sched.finalizers["luasip.refer"] = function(refer) refer:close() end
sched.finalizers["luasip.transfer"] = function(x) x:close() end


return _M
