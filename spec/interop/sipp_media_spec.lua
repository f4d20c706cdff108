-- Interop with sipp's RTP: sipp (Debian's sip-tester 3.6.1, built with
-- RTPSTREAM) calls examples/echo.lua and streams a 1 kHz tone (raw u-law
-- made with sox at test time) with `exec rtp_stream`. What goes over the
-- wire is captured with dumpcap on the loopback: sipp runs on 127.0.0.2
-- so the capture filter sees only this test's packets, whatever else
-- runs on 127.0.0.1. The assertions are on the captured RTP, decoded
-- here: echo.lua's packets go to the port sipp offered, carry PCMU, and
-- hold echo.lua's 880 Hz beep followed by sipp's 1 kHz tone.
-- dumpcap needs root or CAP_NET_RAW; without it the spec is pending.
local h = require "spec.helper"
local audio = require "spec.audio_helper"

local ENV = h.ENV
local SIPP_IP = "127.0.0.2"


local function sh_ok(cmd)
    local ok = os.execute(cmd)
    return ok == true or ok == 0
end


-- why the spec cannot run here, or nil
local function missing(dir)
    for _, tool in ipairs { "sipp", "dumpcap", "sox" } do
        if not sh_ok("command -v " .. tool .. " >/dev/null 2>&1") then
            return tool .. " is not installed (Debian: sip-tester, wireshark-common, sox)"
        end
    end
    if not (io.popen("sipp -v 2>&1"):read("a") or ""):match("RTPSTREAM") then
        return "this sipp is built without RTPSTREAM"
    end
    if not sh_ok(("timeout 5 dumpcap -i lo -P -q -f 'udp and host %s' -a packets:1 -a duration:1 -w %s/probe.pcap"
            .. " >/dev/null 2>&1"):format(SIPP_IP, dir)) then
        return "dumpcap cannot capture on lo (needs root or CAP_NET_RAW)"
    end
end


-- UDP datagrams of a classic pcap file (Ethernet or Linux cooked link)
local function read_pcap(path)
    local s = assert(h.readfile(path), "no capture " .. path)
    local magic = string.unpack("<I4", s, 1)
    assert(magic == 0xa1b2c3d4, ("not a little-endian pcap file (magic %x)"):format(magic))
    local linktype = string.unpack("<I4", s, 21)
    local l2 = ({ [1] = 14, [113] = 16 })[linktype] or error("link type " .. linktype)
    local out, pos = {}, 25
    while pos + 16 <= #s do
        local incl = string.unpack("<I4", s, pos + 8)
        local pkt = s:sub(pos + 16, pos + 15 + incl)
        pos = pos + 16 + incl
        local ip = l2 + 1
        if #pkt >= ip + 28 and pkt:byte(ip) >> 4 == 4 and pkt:byte(ip + 9) == 17 then
            local ihl = (pkt:byte(ip) & 0x0f) * 4
            local udp = ip + ihl
            local sport, dport, ulen = string.unpack(">I2I2I2", pkt, udp)
            out[#out + 1] = {
                src = table.concat({ pkt:byte(ip + 12, ip + 15) }, "."),
                dst = table.concat({ pkt:byte(ip + 16, ip + 19) }, "."),
                sport = sport, dport = dport,
                data = pkt:sub(udp + 8, udp + ulen - 1),
            }
        end
    end
    return out
end


local function ulaw_decode(b)
    b = ~b & 0xff
    local s = ((((b & 0x0f) << 3) + 0x84) << ((b >> 4) & 7)) - 0x84
    return (b & 0x80) ~= 0 and -s or s
end


-- PCMU samples of the RTP packets in udp (in capture order)
local function rtp_samples(pkts)
    local samples, n = {}, 0
    for _, p in ipairs(pkts) do
        local d = p.data
        local off = 13 + (d:byte(1) & 0x0f) * 4
        for i = off, #d do samples[#samples + 1] = ulaw_decode(d:byte(i)) end
        n = n + 1
    end
    return samples, n
end


local function is_rtp(p, pt)
    local d = p.data
    return #d > 12 and d:byte(1) >> 6 == 2 and d:byte(2) & 0x7f == pt
end


describe("interop with sipp's RTP", function()
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -m 700 " .. dir))
    local why = missing(dir)
    if why then
        pending(why)
        os.execute("rm -rf " .. dir)
        return
    end

    it("echo.lua sends back the 1 kHz tone sipp streams to it (captured and measured)", function()
        local port = h.free_port()
        local elog, slog, stat, cap = dir .. "/echo.log", dir .. "/sipp.log", dir .. "/stat.csv", dir .. "/cap.pcap"
        local scenario = assert(io.popen("pwd")):read("l") .. "/spec/interop/sipp/uac_rtp_stream.xml"
        assert(sh_ok(("sox -n -r 8000 -c 1 -e u-law -t raw %s/tone.ul synth 2 sine 1000 vol 0.5"):format(dir)))
        local echo = h.spawn_process(ENV .. "lua5.4 examples/echo.lua " .. port, elog)
        local dumpcap = h.spawn_process(("dumpcap -i lo -P -q -f 'udp and host %s' -a duration:30 -w %s")
            :format(SIPP_IP, cap), dir .. "/dumpcap.log")
        local ok, err = pcall(function()
            local t0 = os.time()
            repeat os.execute("sleep 0.05") until ((h.readfile(elog) or ""):match("listening")
                and #(h.readfile(cap) or "") >= 24) or os.time() - t0 > 5
            assert.matches("echo listening on sip:echo@127.0.0.1:" .. port, h.readfile(elog) or "", 1, true)
            os.execute("sleep 0.3")                 -- dumpcap is capturing
            local rc = sh_ok(("cd %s && timeout 30 sipp 127.0.0.1:%d -sf %s -s echo -i %s -mi %s -p 0 -m 1 "
                .. "-nostdin -trace_stat -stf %s -timeout 20 -recv_timeout 5000 > %s 2>&1")
                :format(dir, port, scenario, SIPP_IP, SIPP_IP, stat, slog))
            local st = assert(h.sipp_stats(stat), "no sipp statistics\n" .. (h.readfile(slog) or ""))
            assert.equal(1, st["SuccessfulCall(C)"])
            assert.equal(0, st["FailedCall(C)"])
            assert.is_true(rc, "sipp exited with failure")
        end)
        os.execute("sleep 0.3")
        h.kill(dumpcap)
        for _ = 1, 40 do
            if not h.alive(dumpcap) then break end
            os.execute("sleep 0.05")
        end
        h.kill(echo)
        assert(ok, tostring(err) .. "\n" .. (h.readfile(slog) or ""))

        local pkts = read_pcap(cap)
        -- the offer sipp sent: its RTP port
        local offer_port
        for _, p in ipairs(pkts) do
            if p.data:match("^INVITE ") then offer_port = tonumber(p.data:match("m=audio (%d+)")) end
        end
        assert.truthy(offer_port, "no INVITE with SDP captured")
        local to_sipp, from_sipp = {}, {}
        for _, p in ipairs(pkts) do
            if is_rtp(p, 0) then
                if p.src == SIPP_IP then from_sipp[#from_sipp + 1] = p
                elseif p.dst == SIPP_IP then
                    assert.equal(offer_port, p.dport)
                    to_sipp[#to_sipp + 1] = p
                end
            end
        end
        -- sipp streamed its 2 s tone (sanity of the capture and decoder)
        local sent, nsent = rtp_samples(from_sipp)
        assert.is_true(nsent >= 95, "sipp sent " .. nsent .. " packets")
        assert.is_true(audio.tone_seconds(sent, 8000, 1000) >= 1.9)
        -- echo.lua: its beep, then the tone it received
        local heard, nheard = rtp_samples(to_sipp)
        assert.is_true(nheard >= 100, "echo.lua sent " .. nheard .. " packets")
        local beep, beep_at = audio.tone_seconds(heard, 8000, 880)
        local tone, tone_at = audio.tone_seconds(heard, 8000, 1000)
        assert.is_true(beep >= 0.15 and beep <= 0.25, "880 Hz beep for " .. beep .. " s")
        assert.is_true(tone >= 1.8 and tone <= 2.1, "1 kHz echoed for " .. tone .. " s")
        assert.is_true(beep_at < tone_at)
        -- pitch: the median of five 200 ms windows (one frame lost or
        -- repeated by the jitter buffer on a loaded machine moves a
        -- single window by 100 Hz, the median not)
        local fs = {}
        for k = 0, 4 do
            fs[#fs + 1] = audio.frequency(heard, 8000, tone_at + k * 1600, tone_at + (k + 1) * 1600 - 1)
        end
        table.sort(fs)
        assert.near(1000, fs[3], 10)
    end)

    teardown(function() os.execute("rm -rf " .. dir) end)
end)
