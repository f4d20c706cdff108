-- bench/kamailio/proxy.lua: KEMI routing of bench/kamailio/proxy.cfg, the
-- Kamailio twin of examples/proxy.lua: a stateful, record-routing proxy
-- that sends every INVITE to one target (BENCH_TARGET, a SIP URI) and lets
-- in-dialog requests follow their Route set. Retransmissions and CANCEL
-- are matched to their transactions by tm, as luasip matches them in
-- libre's transaction layer.

local TARGET = os.getenv("BENCH_TARGET") or "sip:service@127.0.0.1:5070"


-- SIP request routing (request_route)
function ksr_request_route()
    if KSR.maxfwd.process_maxfwd(70) < 0 then
        KSR.sl.sl_send_reply(483, "Too Many Hops")
        return 1
    end

    if KSR.is_CANCEL() then
        if KSR.tm.t_check_trans() > 0 then KSR.tm.t_relay() end
        return 1
    end

    -- retransmissions of requests being handled
    if not KSR.is_ACK() then
        if KSR.tmx.t_precheck_trans() > 0 then
            KSR.tm.t_check_trans()
            return 1
        end
        if KSR.tm.t_check_trans() == 0 then return 1 end
    end

    -- in-dialog requests: the Route set we record-routed
    if KSR.siputils.has_totag() > 0 then
        if KSR.rr.loose_route() > 0 then
            if KSR.tm.t_relay() < 0 then KSR.sl.sl_reply_error() end
        elseif KSR.is_ACK() then
            if KSR.tm.t_check_trans() > 0 then KSR.tm.t_relay() end
        else
            KSR.sl.sl_send_reply(404, "Not here")
        end
        return 1
    end

    if not KSR.is_INVITE() then
        KSR.sl.sl_send_reply(405, "Method Not Allowed")
        return 1
    end

    KSR.hdr.remove("Route")
    KSR.rr.record_route()
    KSR.pv.sets("$ru", TARGET)
    if KSR.tm.t_relay() < 0 then KSR.sl.sl_reply_error() end
    return 1
end
