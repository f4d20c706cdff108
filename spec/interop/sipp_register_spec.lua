-- Interop with sipp (Debian's sip-tester): sipp registers unique users
-- against the luasip registrar running in this process, without and with
-- digest authentication (spec/fixtures/sipp_register*.xml).
local h = require "spec.helper"
local sip = h.sip

local SIPP = "sipp"
local have_sipp = os.execute("command -v sipp >/dev/null 2>&1")


local function tmp()
    local p = os.tmpname()
    os.remove(p)
    return p
end


-- run sipp (in the background) against ep's UDP address; yields until it
-- exits; returns its statistics and log
local function sipp(ep, args, seconds)
    local a = ep:addresses()[1]
    local log, stat = tmp(), tmp()
    local pid = h.spawn_process(("%s %s:%d -i 127.0.0.1 -p 0 -nostdin -trace_stat -stf %s "
        .. "-timeout %d -recv_timeout 5000 %s"):format(SIPP, a.host, a.port, stat, seconds, args), log)
    local done = h.wait_process(pid, seconds + 5)
    h.kill(pid)
    local st, out = h.sipp_stats(stat), h.readfile(log) or ""
    os.remove(log)
    os.remove(stat)
    assert(done, "sipp did not finish:\n" .. out)
    assert(st, "no sipp statistics:\n" .. out)
    return st, out
end


describe("sipp registering against luasip.registrar", function()
    if not have_sipp then
        pending("sipp is not installed (apt-get install sip-tester)")
        return
    end

    it("registers 20 unique users ([call_number]), each listed with its expires", function()
        h.run(function()
            local ep = h.endpoint { user = "registrar" }
            local reg = sip.registrar { open = true }
            reg:attach(ep)
            local st, out = sipp(ep, "-sf spec/fixtures/sipp_register.xml -m 20 -r 50", 20)
            assert.equal(20, st["SuccessfulCall(C)"], out)
            assert.equal(0, st["FailedCall(C)"], out)
            for i = 1, 20 do
                local l = reg:lookup(("sip:user%d@example.com"):format(i))
                assert.equal(1, #l, "user" .. i)
                assert.matches("^sip:user" .. i .. "@127%.0%.0%.1:%d+$", l[1].uri)
                assert.equal("sipp", l[1].user_agent)
            end
            assert.same({}, reg:lookup("sip:user21@example.com"))
            reg:close()
        end, 30)
    end)

    it("registers alice and bob with digest authentication, 3 contacts each", function()
        h.run(function()
            local ep = h.endpoint { user = "registrar" }
            local passwords = { alice = "alice-pw", bob = "bob-pw" }
            local reg = sip.registrar {
                realm = "example.com",
                auth = function(user) return passwords[user] end,
                digest = { algorithms = { "MD5" } },      -- sipp 3.6 answers MD5
            }
            reg:attach(ep)
            for _, user in ipairs { "alice", "bob" } do
                local st, out = sipp(ep, ("-sf spec/fixtures/sipp_register_auth.xml -s %s -au %s -ap %s "
                    .. "-m 3 -r 20"):format(user, user, passwords[user]), 20)
                assert.equal(3, st["SuccessfulCall(C)"], out)
                assert.equal(0, st["FailedCall(C)"], out)
                local l = reg:lookup("sip:" .. user .. "@example.com")
                assert.equal(3, #l, user)
                for _, b in ipairs(l) do
                    assert.matches("^sip:" .. user .. "%-%d@127%.0%.0%.1:%d+$", b.uri)
                end
            end
            assert.equal(6, reg.stats.ok)
            reg:close()
        end, 40)
    end)

    it("fails sipp's registrations with a wrong password (a second 401)", function()
        h.run(function()
            local ep = h.endpoint { user = "registrar" }
            local reg = sip.registrar { auth = function() return "right" end,
                                        digest = { algorithms = { "MD5" } } }
            reg:attach(ep)
            local st = sipp(ep, "-sf spec/fixtures/sipp_register_auth.xml -s alice -au alice "
                .. "-ap wrong -m 2 -r 20", 10)
            assert.equal(0, st["SuccessfulCall(C)"])
            assert.equal(2, st["FailedCall(C)"])
            assert.same({}, reg:lookup("sip:alice@example.com"))
            reg:close()
        end, 20)
    end)
end)
