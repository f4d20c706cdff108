-- bench/kamailio/registrar.lua: KEMI routing of bench/kamailio/registrar.cfg,
-- the Kamailio twin of bench/luasip/registrar.lua: every REGISTER is saved
-- into usrloc (in memory). With BENCH_AUTH=1 it needs digest credentials
-- for realm "bench.test" (401 challenge with qop=auth, MD5), checked
-- against a Lua table of users and passwords read at start from
-- BENCH_USERS: the injection file sipp uses, lines "user;password;..."
-- (other lines are skipped). The authenticated user must be the user of
-- To (checks = 1), as luasip's registrar requires (else 403).

local AUTH = os.getenv("BENCH_AUTH") == "1"
local REALM = "bench.test"
local USERS = {}

if AUTH then
    local path = os.getenv("BENCH_USERS")
    local f = assert(io.open(assert(path, "BENCH_USERS is not set"), "r"))
    for line in f:lines() do
        local user, password = line:match("^([^;]+);([^;]*)")
        if user then USERS[user] = password end
    end
    f:close()
end


-- SIP request routing (request_route)
function ksr_request_route()
    if KSR.maxfwd.process_maxfwd(70) < 0 then
        KSR.sl.sl_send_reply(483, "Too Many Hops")
        return 1
    end
    if not KSR.is_REGISTER() then
        KSR.sl.sl_send_reply(405, "Method Not Allowed")
        return 1
    end
    if AUTH then
        local user = KSR.pv.get("$au")          -- from Authorization, or nil
        local password = user and USERS[user]
        -- flags 0: plain password; checks 1: user must match To's user
        if not password or KSR.auth.pv_auth_check(REALM, password, 0, 1) < 0 then
            KSR.auth.auth_challenge(REALM, 1)     -- 401, qop=auth
            return 1
        end
    end
    if KSR.registrar.save("location", 0) < 0 then KSR.sl.sl_reply_error() end
    return 1
end
