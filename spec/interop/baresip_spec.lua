-- Interop with baresip (Debian's baresip-core 1.0.0, itself on libre
-- 1.1.0) through examples/router.lua: baresip registers as alice with
-- digest auth (the router offers SHA-256 and MD5, MD5 alone to baresip
-- 1.0: its libre gives up on any other algorithm), a luasip caller calls her through the router and baresip
-- answers by itself (answermode=auto); driven over its ctrl_tcp socket,
-- baresip calls a luasip phone registered as bob and a number the router
-- sends to a luasip gateway after a 407 challenge. Signalling is what is
-- asserted (baresip sends a sine tone; its audio: baresip_ivr_spec.lua).
-- baresip runs headless with a config directory made here (no stdio UI,
-- stdin closed) and its own time limit (-t).
local h = require "spec.helper"
local sip = h.sip

local ENV = h.ENV
local b = require "spec.interop.baresip_helper"
local missing, free_ports, write, wait_until, ctrl_connect =
    b.missing, b.free_ports, b.write, b.wait_until, b.ctrl_connect


-- router + baresip (alice) on fresh ports; gateway: host:port for numbers
local function start(gateway)
    local w = {}
    w.rport = free_ports()
    w.dir = os.tmpname()
    os.remove(w.dir)
    assert(os.execute("mkdir -m 700 " .. w.dir))
    w.rlog, w.blog = w.dir .. "/router.log", w.dir .. "/baresip.log"
    write(w.dir .. "/accounts", ("<sip:alice@127.0.0.1:%d>;auth_pass=wonderland;answermode=auto\n")
        :format(w.rport))
    w.router = h.spawn_process(ENV .. ("lua5.4 examples/router.lua %d %s 40"):format(
        w.rport, gateway or "127.0.0.1:9"), w.rlog)
    -- the router must listen before baresip's first REGISTER
    local dl = os.time() + 5
    while not (h.readfile(w.rlog) or ""):match("listening") and os.time() <= dl do
        os.execute("sleep 0.05")
    end
    w.baresip, w.bport, w.cport = b.start(w.dir, 35, function(sip_port, ctrl_port)
        return b.config(sip_port, ctrl_port, 440)
    end)
    return w
end


local function stop(w)
    h.kill(w.baresip)
    h.kill(w.router)
    local out = ("--- router:\n%s--- baresip:\n%s"):format(
        h.readfile(w.rlog) or "", h.readfile(w.blog) or "")
    os.execute("sleep 0.1; rm -rf " .. w.dir)
    return out
end


-- a minimal audio offer; RTP goes to a port nobody reads
local function sdp(port)
    return table.concat({ "v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "c=IN IP4 127.0.0.1",
        "t=0 0", "m=audio " .. port .. " RTP/AVP 0", "a=rtpmap:0 PCMU/8000", "a=sendrecv", "" }, "\r\n")
end


describe("interop with baresip through examples/router.lua", function()
    local why = missing()
    if why then
        pending(why)
        return
    end

    it("baresip registers as alice with digest auth and answers a call routed to her", function()
        local w = start()
        local ok, err = pcall(h.run, function()
            local ctl = ctrl_connect(w.cport)
            local seen = wait_until(function()
                return (h.readfile(w.rlog) or ""):match("sip:alice@127%.0%.0%.1: 1 contact%(s%) (sip:alice%S*)")
            end, 10)
            assert.truthy(seen, "the router did not see alice register")
            assert.matches("@127.0.0.1:" .. w.bport, seen, 1, true)

            local caller = h.endpoint { user = "carol" }
            -- the router offers SHA-256 and MD5 (RFC 8760 order) to others;
            -- baresip 1.0 (libre 1.1.0), which gives up on any algorithm
            -- but MD5, got MD5 alone and registered
            local _, _, rcode, rresp = caller:request { method = "REGISTER",
                uri = "sip:127.0.0.1:" .. w.rport, to = "sip:alice@127.0.0.1",
                from = "sip:alice@127.0.0.1", headers = { Contact = "<sip:carol@127.0.0.1:9>" },
                timeout = 5 }
            assert.equal(401, rcode)
            local algs = {}
            for i, v in ipairs(rresp:header_all("WWW-Authenticate")) do
                algs[i] = sip.auth.parse(v).algorithm
            end
            assert.same({ "SHA-256", "MD5" }, algs)
            local call, cerr, code = caller:call("sip:alice@127.0.0.1:" .. w.rport,
                                                 { timeout = 10, body = sdp(h.free_port()) })
            assert.truthy(call, ("call failed: %s %s"):format(cerr, code))
            assert.equal(200, call.status)
            assert.matches("m=audio %d+ RTP/AVP", call.remote_sdp)
            assert.truthy(ctl.expect('"CALL_ESTABLISHED"', 5), "baresip did not report the call")
            sip.sleep(0.3)
            call:hangup()
            -- the BYE went through the router (record-routed) to baresip
            assert.truthy(ctl.expect('"CALL_CLOSED"', 5), "baresip did not see the BYE")
            assert.truthy(wait_until(function()
                return (h.readfile(w.rlog) or ""):find("call alice -> 1 contact(s): 200", 1, true)
            end, 2))
            ctl.close()
        end, 30)
        local out = stop(w)
        assert(ok, tostring(err) .. "\n" .. out)
        assert.not_matches("task error", out)
    end)

    it("baresip calls a luasip phone and a gateway number (407) through the router", function()
        local gport = h.free_port()
        local w = start("127.0.0.1:" .. gport)
        local ok, err = pcall(h.run, function()
            local log = {}
            local bob = h.endpoint { user = "bob" }
            local gw = assert(sip.endpoint { listen = "udp:127.0.0.1:" .. gport, user = "gw" })
            for name, ep in pairs { bob = bob, gw = gw } do
                ep:on("INVITE", function(call)
                    log[name] = { uri = call.uri.raw, from = call.from.uri }
                    assert(call:answer { body = sdp(h.free_port()) })
                    log[name].answered = true
                    log[name].ended = call:wait_hangup(10)
                end)
            end
            local reg = assert(bob:register { registrar = "sip:127.0.0.1:" .. w.rport,
                aor = "sip:bob@127.0.0.1", user = "bob", password = "builder" })
            assert.is_true(reg:wait(5))
            local ctl = ctrl_connect(w.cport)
            assert.truthy(wait_until(function()
                return (h.readfile(w.rlog) or ""):find("sip:alice@127.0.0.1: 1 contact", 1, true)
            end, 10), "alice did not register")

            for _, t in ipairs { { "bob", "sip:bob@127.0.0.1:" }, { "gw", "sip:0123@127.0.0.1:" } } do
                local name, uri = t[1], t[2] .. w.rport
                ctl.send("dial", uri)
                assert.truthy(ctl.expect('"CALL_ESTABLISHED"', 10), "baresip: no answer from " .. uri)
                assert.truthy(wait_until(function() return log[name] and log[name].answered end, 2))
                assert.matches("^sip:alice@127%.0%.0%.1", log[name].from)
                sip.sleep(0.3)
                ctl.send("hangup")
                assert.truthy(ctl.expect('"CALL_CLOSED"', 5))
                assert.equal("hangup", wait_until(function() return log[name].ended end, 5))
            end
            assert.equal("sip:0123@127.0.0.1:" .. gport, log.gw.uri)
            local rlog = h.readfile(w.rlog)
            assert.matches("call bob -> 1 contact(s): 200", rlog, 1, true)
            assert.matches("call alice -> gateway 0123: 200", rlog, 1, true)
            ctl.close()
            reg:close()
            sip.sleep(0.2)
            gw:close()
        end, 40)
        local out = stop(w)
        assert(ok, tostring(err) .. "\n" .. out)
        assert.not_matches("task error", out)
    end)
end)
