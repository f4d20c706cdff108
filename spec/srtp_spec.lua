-- spec/srtp_spec.lua: SRTP/SRTCP through libsrtp2, SDES lines and the
-- per-call SRTP policy, driven through the internal core.srtp_* hooks
-- (no network: packets are built here and passed as strings).
local core = require "luasip.core"
local sip = require "luasip"

local SUITES = {
    AES_CM_128_HMAC_SHA1_80 = 10,   -- SRTP auth tag bytes
    AES_CM_128_HMAC_SHA1_32 = 4,
}
local SRTCP_TRAILER = 4 + 10        -- E|index + 80-bit tag (both suites)

-- a 160-byte payload whose pattern must not survive encryption
local PATTERN = ("luasip-plaintext-"):rep(10):sub(1, 160)


local function rtp(seq, payload, ssrc)
    -- V=2, PT 0 (PCMU), seq, timestamp, SSRC
    return string.pack(">BBI2I4I4", 0x80, 0, seq, seq * 160,
                       ssrc or 0x11223344) .. (payload or PATTERN)
end


local function rtcp_sr(ssrc, extra)
    -- SR with no report blocks: 8-byte header + 20 bytes sender info,
    -- optionally followed by an APP packet carrying `extra`
    local sr = string.pack(">BBI2I4I4I4I4I4I4", 0x80, 200, 6,
                           ssrc or 0x11223344, 1, 2, 3, 4, 5)
    if extra then
        assert(#extra % 4 == 0)
        sr = sr .. string.pack(">BBI2I4c4", 0x80, 204, 2 + #extra // 4,
                               ssrc or 0x11223344, "TEST") .. extra
    end
    return sr
end


local function flip(s, i)
    return s:sub(1, i - 1) .. string.char(s:byte(i) ~ 0x01) .. s:sub(i + 1)
end


local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local function b64(s)
    local out = {}
    for i = 1, #s, 3 do
        local a, b, c = s:byte(i, i + 2)
        local n = a * 65536 + (b or 0) * 256 + (c or 0)
        for k = 3, 0, -1 do
            local v = (n >> (6 * k)) & 63
            out[#out + 1] = B64:sub(v + 1, v + 1)
        end
        if not c then out[#out] = "=" end
        if not b then out[#out - 1] = "=" end
    end
    return table.concat(out)
end


local function pair(suite)
    local line = assert(core.srtp_sdes_make(1, suite))
    return assert(core.srtp_pair(line))
end


describe("luasip.srtp #srtp", function()
    describe("protect/unprotect (RTP)", function()
        for suite, tag in pairs(SUITES) do
            it("round-trips RTP packets with " .. suite, function()
                local tx, rx = pair(suite)
                for seq = 1, 20 do
                    local p = rtp(seq)
                    local s = assert(tx:protect(p))
                    assert.equal(#p + tag, #s)
                    assert.equal(p:sub(1, 12), s:sub(1, 12))
                    assert.equal(p, assert(rx:unprotect(s)))
                end
                tx:close()
                rx:close()
            end)
        end

        it("leaves no plaintext in the protected packet", function()
            for suite in pairs(SUITES) do
                local tx, rx = pair(suite)
                local p = rtp(7)
                assert.truthy(p:find(PATTERN, 1, true))
                local s = assert(tx:protect(p))
                assert.is_nil(s:find(PATTERN, 1, true))
                assert.is_nil(s:find(PATTERN:sub(1, 17), 1, true))
                assert.equal(p, rx:unprotect(s))
            end
        end)

        it("returns nil, err, EBADMSG for a tampered packet", function()
            local tx, rx = pair()
            local s = assert(tx:protect(rtp(1)))
            local ok, err, code = rx:unprotect(flip(s, 30))
            assert.is_nil(ok)
            assert.is_string(err)
            assert.equal(sip.EBADMSG, code)
            -- a tampered tag fails too; the genuine packet still passes
            assert.same({ nil, err, sip.EBADMSG },
                        { rx:unprotect(flip(s, #s)) })
            assert.equal(rtp(1), rx:unprotect(s))
        end)

        it("returns nil, err, EBADMSG under the wrong key", function()
            local tx = pair()
            local _, rx2 = pair()
            local ok, _, code = rx2:unprotect(assert(tx:protect(rtp(1))))
            assert.is_nil(ok)
            assert.equal(sip.EBADMSG, code)
        end)

        it("returns nil, err, EALREADY for a replayed packet", function()
            local tx, rx = pair("AES_CM_128_HMAC_SHA1_32")
            local s = assert(tx:protect(rtp(5)))
            assert.truthy(rx:unprotect(s))
            local ok, err, code = rx:unprotect(s)
            assert.is_nil(ok)
            assert.is_string(err)
            assert.equal(sip.EALREADY, code)
        end)

        it("returns nil, err, EALREADY when a sequence is reused", function()
            local tx = pair()
            assert.truthy(tx:protect(rtp(9)))
            local ok, _, code = tx:protect(rtp(9))
            assert.is_nil(ok)
            assert.equal(sip.EALREADY, code)
        end)

        it("returns nil, err, EINVAL in the wrong direction", function()
            local tx, rx = pair()
            local s = assert(tx:protect(rtp(1)))
            assert.equal(sip.EINVAL, select(3, rx:protect(rtp(1))))
            assert.equal(sip.EINVAL, select(3, tx:unprotect(s)))
        end)

        it("returns nil, err, EBADMSG for a runt packet", function()
            local tx, rx = pair()
            assert.equal(sip.EBADMSG, select(3, tx:protect("\x80\0\0\1")))
            assert.equal(sip.EBADMSG, select(3, rx:unprotect("")))
        end)

        it("returns nil, 'closed: ...', ENOTCONN once closed", function()
            local tx = pair()
            tx:close()
            tx:close()
            local ok, err, code = tx:protect(rtp(1))
            assert.is_nil(ok)
            assert.matches("^closed", err)
            assert.equal(sip.ENOTCONN, code)
        end)
    end)

    describe("protect_rtcp/unprotect_rtcp (SRTCP)", function()
        for suite in pairs(SUITES) do
            it("round-trips RTCP packets with " .. suite, function()
                local tx, rx = pair(suite)
                for i = 1, 5 do
                    local p = rtcp_sr(0x11223344 + i)
                    local s = assert(tx:protect_rtcp(p))
                    assert.equal(#p + SRTCP_TRAILER, #s)
                    assert.equal(p, assert(rx:unprotect_rtcp(s)))
                end
            end)
        end

        it("leaves no plaintext in the protected packet", function()
            local tx, rx = pair()
            local p = rtcp_sr(1, PATTERN)
            local s = assert(tx:protect_rtcp(p))
            assert.is_nil(s:find(PATTERN:sub(1, 17), 1, true))
            assert.equal(p, rx:unprotect_rtcp(s))
        end)

        it("returns nil, err, EBADMSG for a tampered packet", function()
            local tx, rx = pair("AES_CM_128_HMAC_SHA1_32")
            local s = assert(tx:protect_rtcp(rtcp_sr()))
            local ok, err, code = rx:unprotect_rtcp(flip(s, 12))
            assert.is_nil(ok)
            assert.is_string(err)
            assert.equal(sip.EBADMSG, code)
        end)

        it("returns nil, err, EALREADY for a replayed packet", function()
            local tx, rx = pair()
            local s = assert(tx:protect_rtcp(rtcp_sr()))
            assert.truthy(rx:unprotect_rtcp(s))
            local ok, _, code = rx:unprotect_rtcp(s)
            assert.is_nil(ok)
            assert.equal(sip.EALREADY, code)
        end)
    end)

    describe("SDES a=crypto", function()
        for suite in pairs(SUITES) do
            it("round-trips a generated " .. suite .. " line", function()
                local line, key = assert(core.srtp_sdes_make(7, suite))
                assert.equal(30, #key)
                assert.matches("^7 " .. suite .. " inline:[%w+/]+$", line)
                assert.equal("7 " .. suite .. " inline:" .. b64(key), line)
                local tag, s, k = assert(core.srtp_sdes_parse(line))
                assert.equal(7, tag)
                assert.equal(suite, s)
                assert.equal(key, k)
            end)
        end

        it("makes keys from a CSPRNG: different on every call", function()
            local seen = {}
            for _ = 1, 64 do
                local line, key = assert(core.srtp_sdes_make())
                assert.is_nil(seen[key])
                assert.is_nil(seen[line])
                seen[key], seen[line] = true, true
                assert.not_equal(("\0"):rep(30), key)
            end
        end)

        it("keys a session pair from a parsed line", function()
            local line, key = assert(core.srtp_sdes_make(1))
            local _, suite, k = assert(core.srtp_sdes_parse(line))
            local tx = assert(core.srtp_session(suite, key, true))
            local rx = assert(core.srtp_session(suite, k, false))
            assert.equal(rtp(3), rx:unprotect(tx:protect(rtp(3))))
        end)

        it("accepts and ignores lifetime, MKI and WSH", function()
            local key = ("k"):rep(30)
            local base = "1 AES_CM_128_HMAC_SHA1_80 inline:" .. b64(key)
            for _, tail in ipairs {
                "|2^20", "|1048576", "|1:4", "|2^31|1:4",
                "|2^20|1:4;inline:" .. b64(("x"):rep(30)) .. "|2^20|2:4",
                " WSH=64", "|2^20 WSH=128\r\n",
            } do
                local tag, suite, k = core.srtp_sdes_parse(base .. tail)
                assert.equal(1, tag, tail)
                assert.equal("AES_CM_128_HMAC_SHA1_80", suite)
                assert.equal(key, k)
            end
            local tag, suite, k = core.srtp_sdes_parse(
                "42\t AES_CM_128_HMAC_SHA1_32  inline:" .. b64(key))
            assert.equal(42, tag)
            assert.equal("AES_CM_128_HMAC_SHA1_32", suite)
            assert.equal(key, k)
        end)

        it("returns nil, err, EBADMSG for malformed lines", function()
            local good = b64(("k"):rep(30))
            local bad = {
                "",
                "1",
                "1 AES_CM_128_HMAC_SHA1_80",
                "x AES_CM_128_HMAC_SHA1_80 inline:" .. good,
                "1234567890 AES_CM_128_HMAC_SHA1_80 inline:" .. good,
                "1 AES_CM_128_HMAC_SHA1_80 " .. good,
                "1 AES_CM_128_HMAC_SHA1_80 uri:" .. good,
                -- wrong base64 (bad characters, same length)
                "1 AES_CM_128_HMAC_SHA1_80 inline:" .. good:sub(1, 36)
                    .. "!@#$",
                "1 AES_CM_128_HMAC_SHA1_80 inline:" .. ("*"):rep(40),
                -- short keys
                "1 AES_CM_128_HMAC_SHA1_80 inline:" .. b64(("k"):rep(29)),
                "1 AES_CM_128_HMAC_SHA1_80 inline:" .. b64(("k"):rep(16)),
                "1 AES_CM_128_HMAC_SHA1_80 inline:",
                -- too long
                "1 AES_CM_128_HMAC_SHA1_80 inline:" .. b64(("k"):rep(33)),
                -- bad lifetime / MKI
                "1 AES_CM_128_HMAC_SHA1_80 inline:" .. good .. "|",
                "1 AES_CM_128_HMAC_SHA1_80 inline:" .. good .. "|2^x",
                "1 AES_CM_128_HMAC_SHA1_80 inline:" .. good .. "|1:4|2^20",
                "1 AES_CM_128_HMAC_SHA1_80 inline:" .. good .. "|1:1234",
            }
            for _, line in ipairs(bad) do
                local ok, err, code = core.srtp_sdes_parse(line)
                assert.is_nil(ok, line)
                assert.is_string(err)
                assert.equal(sip.EBADMSG, code, line)
            end
            assert.equal(sip.EBADMSG, select(3, core.srtp_pair(bad[8])))
        end)

        it("returns nil, err, ENOTSUP for unknown suites", function()
            local good = b64(("k"):rep(30))
            for _, line in ipairs {
                "1 AES_256_CM_HMAC_SHA1_80 inline:" .. good,
                "1 F8_128_HMAC_SHA1_80 inline:" .. good,
                "1 aes_cm_128_hmac_sha1_80 inline:" .. good,
                "1 AES_CM_128_HMAC_SHA1_80 inline:" .. good
                    .. " UNENCRYPTED_SRTP",
            } do
                local ok, _, code = core.srtp_sdes_parse(line)
                assert.is_nil(ok, line)
                assert.equal(sip.ENOTSUP, code, line)
            end
            assert.equal(sip.ENOTSUP,
                         select(3, core.srtp_sdes_make(1, "NULL_HMAC")))
            assert.equal(sip.ENOTSUP, select(3, core.srtp_session(
                "AES_256_CM_HMAC_SHA1_80", ("k"):rep(30), true)))
        end)

        it("returns nil, err, EINVAL for a key that is not 30 bytes",
           function()
            local ok, _, code = core.srtp_session("AES_CM_128_HMAC_SHA1_80",
                                                  ("k"):rep(16), true)
            assert.is_nil(ok)
            assert.equal(sip.EINVAL, code)
        end)
    end)

    describe("srtp_negotiate()", function()
        -- policy, offered proto, offer has a=crypto -> result
        local matrix = {
            { "off", "RTP/AVP", false, 0 },
            { "off", "RTP/AVP", true, 0 },
            { "off", "RTP/SAVP", true, 488 },
            { "off", "RTP/SAVP", false, 488 },
            { "optional", "RTP/AVP", false, 0 },
            { "optional", "RTP/AVP", true, 1 },
            { "optional", "RTP/SAVP", true, 1 },
            { "optional", "RTP/SAVP", false, 488 },
            { "mandatory", "RTP/AVP", false, 488 },
            { "mandatory", "RTP/AVP", true, 1 },
            { "mandatory", "RTP/SAVP", true, 1 },
            { "mandatory", "RTP/SAVP", false, 488 },
            { "optional", "UDP/TLS/RTP/SAVP", true, 488 },
            { "off", "udp", false, 488 },
        }
        for _, row in ipairs(matrix) do
            local pol, proto, crypto, want = table.unpack(row)
            it(("returns %d for %s with %s%s"):format(want, pol, proto,
                crypto and " + a=crypto" or ""), function()
                assert.equal(want, core.srtp_negotiate(pol, proto, crypto))
            end)
        end

        it("raises on an unknown policy", function()
            assert.has_error(function()
                core.srtp_negotiate("sometimes", "RTP/AVP", false)
            end)
        end)
    end)
end)
