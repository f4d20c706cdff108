-- spec/srtp_crypto_spec.lua: libsrtp2 with luasip's OpenSSL AES-ICM-128
-- and HMAC-SHA1 (csrc/srtp_ossl.c) protects exactly as libsrtp2 with its
-- own built-in crypto (Debian's: NSS), with AES-NI or through EVP. The
-- same packets are protected in this process and in a child started with
-- LUASIP_SRTP_BUILTIN=1 (which keeps libsrtp2's own types); the bytes
-- must be equal, and libsrtp2's published test vector must come out of
-- both.
local core = require "luasip.core"

local h = require "spec.helper"
local ENV = h.ENV

-- the packets, protected with a fixed key, as hex lines; runs here and in
-- the child (the same source: string.dump would do too, this is plainer)
local PROGRAM = [==[
local core = require "luasip.core"
local key = ("\225\249\122\013\062\001\139\224\214\079\163\044\006\222\065\057"
          .. "\014\198\117\173\073\138\254\235\182\150\011\058\171\230")
local function hex(s) return (s:gsub(".", function(c) return ("%02x"):format(c:byte()) end)) end
local out = { core.srtp_crypto }
for _, suite in ipairs { "AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32" } do
    local tx = assert(core.srtp_session(suite, key, true))
    -- RTP: payload sizes 0..400, sequence numbers across the 16-bit wrap
    -- (so the rollover counter enters the IV and the tag)
    local seq = 65500
    for i = 0, 80 do
        local pt = string.rep(string.char(i % 256), (i * 37) % 401)
        local hdr = string.pack(">BBI2I4I4", 0x80, 0, seq, 160 * i, 0xcafebabe)
        out[#out + 1] = hex(assert(tx:protect(hdr .. pt)))
        seq = (seq + 1) % 65536
    end
    -- RTCP: a receiver report and an SDES, several times (SRTCP index)
    for i = 1, 20 do
        local rr = string.pack(">BBI2I4", 0x80, 201, 1, 0xcafebabe)
        local sdes = string.pack(">BBI2I4BBc6BB", 0x81, 202, 3, 0xcafebabe, 1, 6, "luasip", 0, 0)
        out[#out + 1] = hex(assert(tx:protect_rtcp(rr .. sdes .. string.rep("x", i))))
    end
end
-- libsrtp2's own known answer (test/srtp_driver.c srtp_validate)
local tx = assert(core.srtp_session("AES_CM_128_HMAC_SHA1_80", key, true))
out[#out + 1] = hex(assert(tx:protect(string.pack(">BBI2I4I4", 0x80, 0x0f, 0x1234, 0xdecafbad, 0xcafebabe)
                                       .. string.rep("\171", 16))))
return out
]==]


local function run_here()
    return assert(load(PROGRAM, "=srtp_program"))()
end


local function run_child(env)
    local path = os.tmpname()
    local f = assert(io.open(path, "w"))
    f:write((PROGRAM:gsub("\nreturn out\n$", "\nio.write(table.concat(out, \"\\n\"), \"\\n\")\n")))
    f:close()
    -- a deadline: a child that hangs fails the spec instead of the suite
    local p = assert(io.popen("timeout 60 " .. ENV .. env .. " lua5.4 " .. path .. " 2>&1"))
    local lines = {}
    for l in p:lines() do lines[#lines + 1] = l end
    p:close()
    os.remove(path)
    return lines
end


describe("SRTP crypto", function()
    it("uses the OpenSSL primitives by default", function()
        assert.equal("openssl", core.srtp_crypto)
    end)

    it("protects RTP and RTCP byte for byte as libsrtp2's built-in crypto", function()
        local mine = run_here()
        local theirs = run_child("LUASIP_SRTP_BUILTIN=1")
        assert.equal("libsrtp2 (LUASIP_SRTP_BUILTIN is set)", theirs[1])
        assert.equal(#mine, #theirs)
        assert.is_true(#mine > 200)
        for i = 2, #mine do
            assert.equal(theirs[i], mine[i], "packet " .. i)
        end
        -- and a child on the default agrees with both, and one whose
        -- AES goes through OpenSSL's EVP instead of AES-NI instructions
        local again = run_child("")
        assert.equal("openssl", again[1])
        assert.same(mine, again)
        local evp = run_child("LUASIP_SRTP_NO_AESNI=1")
        assert.equal("openssl", evp[1])
        assert.same(mine, evp)
    end)

    it("gives libsrtp2's published test vector", function()
        local mine = run_here()
        assert.equal("800f1234decafbadcafebabe4e55dc4ce79978d88ca4d215949d2402b78d6acc99ea179b8dbb",
                     mine[#mine])
    end)

    it("round-trips through an independent session and refuses a changed tag", function()
        local key = string.rep("\7", 30)
        local tx = assert(core.srtp_session("AES_CM_128_HMAC_SHA1_80", key, true))
        local rx = assert(core.srtp_session("AES_CM_128_HMAC_SHA1_80", key, false))
        local p = string.pack(">BBI2I4I4", 0x80, 0, 7, 160, 42) .. string.rep("a", 160)
        local s = assert(tx:protect(p))
        assert.not_equal(p:sub(13), s:sub(13, #p))
        assert.equal(p, assert(rx:unprotect(s)))
        local bad = s:sub(1, -2) .. string.char((s:byte(-1) + 1) % 256)
        local r, err = rx:unprotect(bad)
        assert.is_nil(r)
        assert.is_string(err)
    end)
end)
