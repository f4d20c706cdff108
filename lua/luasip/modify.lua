--- luasip.modify: mid-call changes of an established call's media.
-- `call:hold()`, `call:resume()` and `call:modify{}` send a re-INVITE and
-- wait for its final response. The far end's re-INVITEs are answered in C
-- (csrc/call.c with csrc/media.c) against the running RTP session; the
-- call then emits "update" for every new offer, and "hold" / "resume"
-- when the far end stops or starts wanting our audio (a=sendonly,
-- a=inactive or c=0.0.0.0, RFC 3264 section 8.4). `call.held`,
-- `call.holding` and `call.remote_direction` show the current state.
-- @module luasip.modify

local core = require "luasip.core"
local sched = require "luasip.sched"

local type, tostring, error = type, tostring, error
local wait, deadline, remaining = sched.wait, sched.deadline, sched.remaining

local ETIMEDOUT, ECONNRESET = core.ETIMEDOUT, core.ECONNRESET

local _M = {}

local CALL = core.methods("luasip.call")

local DIRECTIONS = { sendrecv = true, sendonly = true, recvonly = true, inactive = true }


local function argerror(fname, what, got, level)
    error(("bad argument #1 to '%s' (%s expected, got %s)"):format(fname, what, tostring(got)), level or 3)
end


-- send the re-INVITE and wait for "modified" (status, reason, errno)
local function reinvite(call, fname, dir, body, opts)
    if opts ~= nil and type(opts) ~= "table" then argerror(fname, "options table", type(opts), 4) end
    opts = opts or {}
    local dl = deadline(opts.timeout or 32, "luasip." .. fname)
    if not sched.current() then
        error("luasip." .. fname .. ": must be called from a task (use luasip.spawn)", 3)
    end
    -- the outcome comes to a token of its own: another task may be
    -- waiting on the call itself (wait_hangup, play, ...)
    local token = {}
    local ok, err, code = call:_modify(dir, body, opts.late, token)
    if not ok then return nil, err, code end
    while true do
        local ev, status, reason, errno = wait(token, remaining(dl), "luasip." .. fname)
        if ev == "modified" then
            if status >= 200 and status < 300 then return true end
            if errno == ECONNRESET then return nil, "hangup", ECONNRESET end
            -- RFC 3261 14.1: 481, 408 and a transaction timeout end the dialog
            if status == 481 or status == 408 or errno == ETIMEDOUT then call:hangup() end
            if status == 0 then return nil, fname .. ": " .. tostring(reason), errno end
            return nil, status .. " " .. tostring(reason), status
        end
        if ev == "timeout" then return nil, "timeout", ETIMEDOUT end
    end
end


--- Put the far end on hold: re-INVITE with a=sendonly (RFC 3264 8.4; our
-- audio, music on hold say, still goes out) and wait for the answer.
-- @tparam[opt] table opts `direction` ("sendonly", default, or
--   "inactive"), `timeout` (seconds, default 32)
-- @return true; or nil, message, code (SIP status of a refusal, e.g.
--   nil, "488 Not Acceptable Here", 488, after which the call goes on as
--   before; nil, "491 Request Pending", 491 when the far end re-INVITEd
--   at the same time, try again later; "timeout"; "hangup")
function CALL.hold(call, opts)
    local dir = type(opts) == "table" and opts.direction or "sendonly"
    if dir ~= "sendonly" and dir ~= "inactive" then
        argerror("hold", 'direction "sendonly" or "inactive"', dir)
    end
    return reinvite(call, "hold", dir, nil, opts)
end


--- Take the far end off hold: re-INVITE with a=sendrecv.
-- @tparam[opt] table opts `timeout` (seconds, default 32)
-- @return true, or nil, message, code as `hold`
function CALL.resume(call, opts)
    return reinvite(call, "resume", "sendrecv", nil, opts)
end


--- Send a re-INVITE: the call's media offers again (with `direction`),
-- or `body` is sent as the SDP offer of a call without luasip media, or
-- with `late = true` no SDP goes out and the media answers the 200's
-- offer in the ACK.
-- @tparam[opt] table opts `direction` ("sendrecv", "sendonly",
--   "recvonly", "inactive"), `body` (SDP), `late`, `timeout` (default 32)
-- @return true, or nil, message, code as `hold`
function CALL.modify(call, opts)
    if opts ~= nil and type(opts) ~= "table" then argerror("modify", "options table", type(opts)) end
    opts = opts or {}
    if opts.direction ~= nil and not DIRECTIONS[opts.direction] then
        argerror("modify", 'direction "sendrecv", "sendonly", "recvonly" or "inactive"', opts.direction)
    end
    if opts.body ~= nil and type(opts.body) ~= "string" then argerror("modify", "body: SDP string", type(opts.body)) end
    return reinvite(call, "modify", opts.direction, opts.body, opts)
end


--- Alias of `modify`.
CALL.reinvite = CALL.modify


return _M
