-- Interop with sipp: re-INVITEs from a real third-party UA against a
-- luasip callee with media (spec/interop/sipp/uac_hold.xml: hold with
-- a=sendonly must be answered recvonly, resume sendrecv, a re-INVITE
-- without SDP gets our offer; uac_late.xml: INVITE without SDP).
-- sipp fails the call when a regexp on our 200's SDP does not match.
local h = require "spec.helper"
local sip = h.sip

local have_sipp = os.execute("command -v sipp >/dev/null 2>&1")


local function tmp()
    local p = os.tmpname()
    os.remove(p)
    return p
end


-- run sipp's scenario xml once against a luasip callee; returns the
-- sipp statistics, the message trace and what the callee saw
local function against_callee(xml)
    local port = h.free_port()
    local slog, stat, msgs = tmp(), tmp(), tmp()
    local seen = { events = {} }
    local ok, err = pcall(h.run, function()
        local ep = h.endpoint { user = "callee", rtp_ports = { 33000, 33999 } }
        local uri = ep:uri()
        ep:on("INVITE", function(call)
            seen.invite_sdp = call.remote_sdp or false
            for _, ev in ipairs { "hold", "resume", "update" } do
                call:on(ev, function(c)
                    seen.events[#seen.events + 1] = ev
                    if ev == "hold" then seen.hold_answer, seen.rdir = c.local_sdp, c.remote_direction end
                end)
            end
            local ok2, e2 = call:answer { media = true, timeout = 5 }
            seen.answered = ok2 and true or e2
            seen.codec = call.media_stats and call.media_stats.codec
            seen.cause = call:wait_hangup(10)
        end)
        local target = uri:match("@([%d%.]+:%d+)")
        local pid = h.spawn_process(("sipp %s -sf %s -s callee -i 127.0.0.1 -p %d -m 1 -nostdin "
            .. "-trace_stat -stf %s -trace_msg -message_file %s -timeout 15 -recv_timeout 5000")
            :format(target, xml, port, stat, msgs), slog)
        local exited = h.wait_process(pid, 15)
        if not exited then h.kill(pid) end
        assert.is_true(exited, "sipp did not finish")
        sip.sleep(0.1)
    end, 20)
    local st, trace = h.sipp_stats(stat), h.readfile(msgs) or ""
    local log = h.readfile(slog) or ""
    for _, f in ipairs { slog, stat, msgs } do os.remove(f) end
    if not ok then error(err, 0) end
    return st, trace, seen, log
end


describe("interop with sipp: re-INVITE", function()
    if not have_sipp then
        pending("sipp is not installed (apt-get install sip-tester)")
        return
    end

    it("answers sipp's a=sendonly re-INVITE with recvonly, resumes with sendrecv, offers in a 200 to a re-INVITE without SDP", function()
        local st, trace, seen, log = against_callee("spec/interop/sipp/uac_hold.xml")
        assert(st, "no sipp statistics: " .. log)
        assert.equal(1, st["SuccessfulCall(C)"], log)
        assert.equal(0, st["FailedCall(C)"], log)
        assert.is_true(seen.answered)
        assert.equal("hangup", seen.cause)
        -- the last "update" is the ACK answering our offer (no-SDP re-INVITE)
        assert.same({ "update", "hold", "update", "resume", "update" }, seen.events)
        assert.equal("sendonly", seen.rdir)
        assert.matches("a=recvonly", seen.hold_answer)
        -- on the wire: the 200 to CSeq 2 (sendonly offer) says recvonly
        local r2
        for chunk in (trace .. "\n-----"):gmatch("message received.-\n%-%-%-%-%-") do
            if chunk:match("\nSIP/2.0 200 ") and chunk:match("\nCSeq: 2 INVITE") then r2 = chunk end
        end
        assert(r2, "no 200 for CSeq 2 in the trace")
        assert.matches("a=recvonly", r2)
        assert.not_matches("a=sendrecv", r2)
    end)

    it("answers sipp's INVITE without SDP with an offer in the 200 and takes the ACK's answer", function()
        local st, _, seen, log = against_callee("spec/interop/sipp/uac_late.xml")
        assert(st, "no sipp statistics: " .. log)
        assert.equal(1, st["SuccessfulCall(C)"], log)
        assert.equal(0, st["FailedCall(C)"], log)
        assert.is_false(seen.invite_sdp)
        assert.is_true(seen.answered)
        assert.equal("PCMU", seen.codec)
        assert.equal("hangup", seen.cause)
    end)


    it("holds and resumes sipp's uas, and ACKs its 200 again when it is repeated", function()
        local port = h.free_port()
        local slog, stat = tmp(), tmp()
        local pid = h.spawn_process(("sipp -sf spec/interop/sipp/uas_hold.xml -i 127.0.0.1 -p %d -m 1 "
            .. "-nostdin -trace_stat -stf %s -timeout 15"):format(port, stat), slog)
        local res = {}
        local ok, err = pcall(h.run, function()
            local ep = h.endpoint { user = "caller", rtp_ports = { 34000, 34999 } }
            sip.sleep(0.3)                         -- let sipp bind
            local call = assert(ep:call(("sip:service@127.0.0.1:%d"):format(port),
                                        { media = true, timeout = 5 }))
            res.hold = { call:hold { timeout = 5 } }
            res.holding = call.holding
            res.answer = call.remote_sdp
            sip.sleep(0.3)                         -- the repeated 200 and our ACK
            res.resume = { call:resume { timeout = 5 } }
            call:hangup()
            res.exited = h.wait_process(pid, 10)
        end, 20)
        h.kill(pid)
        local st, log = h.sipp_stats(stat), h.readfile(slog) or ""
        for _, f in ipairs { slog, stat } do os.remove(f) end
        if not ok then error(err, 0) end
        assert.same({ true }, res.hold)
        assert.is_true(res.holding)
        assert.matches("a=recvonly", res.answer)
        assert.same({ true }, res.resume)
        assert.is_true(res.exited)
        assert(st, "no sipp statistics: " .. log)
        assert.equal(1, st["SuccessfulCall(C)"], log)
        assert.equal(0, st["FailedCall(C)"], log)
    end)


    it("keeps the call after sipp's 488 to a hold and hangs up after its 481", function()
        local port = h.free_port()
        local slog, stat = tmp(), tmp()
        local pid = h.spawn_process(("sipp -sf spec/interop/sipp/uas_refuse.xml -i 127.0.0.1 -p %d -m 1 "
            .. "-nostdin -trace_stat -stf %s -timeout 15"):format(port, stat), slog)
        local res = {}
        local ok, err = pcall(h.run, function()
            local ep = h.endpoint { user = "caller", rtp_ports = { 34000, 34999 } }
            sip.sleep(0.3)                         -- let sipp bind
            local call = assert(ep:call(("sip:service@127.0.0.1:%d"):format(port),
                                        { media = true, timeout = 5 }))
            res.first = { call:hold { timeout = 5 } }
            res.state1, res.holding1 = call.state, call.holding
            res.second = { call:resume { timeout = 5 } }
            res.state2, res.cause = call.state, call.cause
            res.exited = h.wait_process(pid, 10)
        end, 20)
        h.kill(pid)
        local st, log = h.sipp_stats(stat), h.readfile(slog) or ""
        for _, f in ipairs { slog, stat } do os.remove(f) end
        if not ok then error(err, 0) end
        assert.same({ nil, "488 Not Acceptable Here", 488 }, res.first)
        assert.equal("established", res.state1)
        assert.is_false(res.holding1)              -- back to sendrecv
        assert.same({ nil, "481 Call/Transaction Does Not Exist", 481 }, res.second)
        assert.equal("closed", res.state2)
        assert.equal("local", res.cause)
        assert.is_true(res.exited)
        assert(st, "no sipp statistics: " .. log)
        assert.equal(1, st["SuccessfulCall(C)"], log)
        assert.equal(0, st["FailedCall(C)"], log)
    end)
end)
