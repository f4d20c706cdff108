-- ivr.lua: a small voice-mail IVR with spoken prompts, RTP audio and
-- DTMF (RFC 4733, SIP INFO or in-band). It answers, plays the menu (any
-- digit interrupts it) and takes one digit: 1 plays back the last message
-- left, 2 records a message (after the tone; it ends on #, 3 s of
-- silence or the maximum length) into a WAV file, 0 transfers the caller
-- with REFER. After three rounds without a choice it says goodbye.
--
--   make prompts && lua5.4 examples/ivr.lua [port] [seconds]
--
-- Environment: IVR_PROMPTS (directory of the prompts, default
-- build/prompts next to this script; a missing prompt is played as a
-- beep), IVR_SPOOL (where messages are written, default /tmp/luasip-ivr),
-- IVR_TRANSFER (SIP URI for 0; unset: the transfer fails), IVR_MAX
-- (longest message in seconds, default 60).
-- Prints "ivr: listening on sip:ivr@127.0.0.1:PORT ..." and one line per
-- event ("ivr: caller chose 2", "ivr: recorded PATH: 1.5 s (dtmf)", ...);
-- serves until Ctrl-C, or for `seconds` when given.
local sip = require "luasip"

local port, seconds = tonumber(arg[1]) or 5060, tonumber(arg[2])
local here = (arg[0] or ""):match("^(.*)/[^/]*$") or "."
local PROMPTS = os.getenv("IVR_PROMPTS") or here .. "/../build/prompts"
local SPOOL = os.getenv("IVR_SPOOL") or "/tmp/luasip-ivr"
local TRANSFER = os.getenv("IVR_TRANSFER")
local MAX = tonumber(os.getenv("IVR_MAX")) or 60
local last, count = nil, 0                      -- the last message left

local function log(fmt, ...)
    print(("ivr: " .. fmt):format(...))
    io.stdout:flush()
end

local function prompt(name)                     -- a file, or a beep
    local path = PROMPTS .. "/" .. name .. ".wav"
    local f = io.open(path)
    if f then f:close(); return path end
    return { tone = 440, duration = 0.3 }
end

local function leave_message(call)
    if call:play(prompt("record")) ~= true then return end
    call:play { tone = 1000, duration = 0.25 }
    call:collect { timeout = 0 }                -- drop digits pressed so far
    count = count + 1
    local path = ("%s/msg-%d-%d.wav"):format(SPOOL, os.time(), count)
    log("recording %s", path)
    local secs, why = call:record(path, { max = MAX, silence_stop = 3, stop_on = "#" })
    log("recorded %s: %.2f s (%s)", path, secs or 0, secs and why or "hangup")
    last = path                                 -- kept also when the caller hung up
    return call:play(prompt("saved"))
end

local function play_last(call)
    if not last then return call:play(prompt("none")) end
    log("playing %s", last)
    return call:play({ prompt("message"), last }, { interrupt = true })
end

local function transfer(call)
    call:play(prompt("transfer"))
    local ok, err, code = false, "IVR_TRANSFER not set", 0
    if TRANSFER then ok, err, code = call:transfer(TRANSFER, { timeout = 30 }) end
    log("transfer to %s: %s", tostring(TRANSFER), ok and "done" or (tostring(err) .. " " .. tostring(code)))
    if not ok then call:play(prompt("failed")) end
    return ok
end

sip.run(function()
    assert(os.execute("mkdir -p '" .. SPOOL:gsub("'", "'\\''") .. "'"))
    local ep = assert(sip.endpoint { listen = { "udp:127.0.0.1:" .. port }, user = "ivr" })
    ep:on("INVITE", function(call)              -- one task per call
        if not call:answer { media = true } then return end
        local rounds = 0
        while call.state == "established" and rounds < 3 do
            local digit, err = call:play_and_collect { prompt = prompt("menu"), max = 1, timeout = 5 }
            log("caller chose %s", digit or err)
            if err == "hangup" then return end
            if digit == "1" then play_last(call)
            elseif digit == "2" then leave_message(call)
            elseif digit == "0" then if transfer(call) then return end
            elseif digit then call:play(prompt("invalid"))
            else rounds = rounds + 1 end
        end
        call:play(prompt("goodbye"))
        call:hangup()
    end)
    log("listening on %s, prompts %s, messages in %s", ep:uri(), PROMPTS, SPOOL)
    if seconds then sip.sleep(seconds); ep:close(); sip.stop() end
end)
