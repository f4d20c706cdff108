-- spec/media_intervals_spec.lua: core.media_intervals, the process-wide
-- histograms of RTP send and arrival intervals bench/media.sh reads
-- (csrc/media.c).
local h = require "spec.helper"
local sip = h.sip
local core = require "luasip.core"


-- median interval (seconds) and total count of a histogram
local function median(hist, bin_us)
    local keys, n = {}, 0
    for k, c in pairs(hist.bins) do keys[#keys + 1] = k; n = n + c end
    table.sort(keys)
    local s = 0
    for _, k in ipairs(keys) do
        s = s + hist.bins[k]
        if s >= n / 2 then return (k + 0.5) * bin_us / 1e6, n end
    end
    return nil, n
end


describe("core.media_intervals", function()
    it("counts 20 ms send and arrival intervals of a call, and resets", function()
        local before, during, after_reset, stats
        h.run(function()
            local a = h.endpoint { user = "alice" }
            local b = h.endpoint { user = "bob", rtp_ports = { 30000, 30999 } }
            b:on("INVITE", function(call)
                assert(call:answer { media = true })
                call:wait_hangup(3)
            end)
            before = core.media_intervals(true)        -- also resets
            local call = assert(a:call(h.uri(b, "bob"), { media = true, timeout = 5 }))
            sip.sleep(1)
            stats = call.media_stats
            during = core.media_intervals(true)
            after_reset = core.media_intervals()
            call:hangup()
        end, 5)
        assert.equal(100, before.bin_us)
        -- two media (caller and callee) each send and receive ~50 packets/s
        local tx_med, tx_n = median(during.tx, during.bin_us)
        local rx_med, rx_n = median(during.rx, during.bin_us)
        assert.equal(during.tx.n, tx_n)
        assert.equal(during.rx.n, rx_n)
        assert.is_true(tx_n >= 70 and tx_n <= 110, "tx intervals " .. tx_n)
        assert.is_true(rx_n >= 70 and rx_n <= 110, "rx intervals " .. rx_n)
        assert.is_true(math.abs(tx_med - 0.020) <= 0.002, "tx median " .. tx_med)
        assert.is_true(math.abs(rx_med - 0.020) <= 0.002, "rx median " .. rx_med)
        assert.is_true(during.tx.max_us >= 19000 and during.tx.max_us < 1e6, "tx max " .. during.tx.max_us)
        assert.is_true(stats.tx_packets >= 40, "tx packets " .. stats.tx_packets)
        -- the reset emptied the histograms; the calls kept running
        assert.is_true(after_reset.tx.n < 10, "after reset " .. after_reset.tx.n)
        local _, n_after = median(after_reset.tx, after_reset.bin_us)
        assert.equal(after_reset.tx.n, n_after)
    end)
end)
