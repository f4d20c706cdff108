-- router.lua: a registrar and a proxy in one endpoint, the core of a small
-- PBX. Users and passwords come from a Lua table. Phones REGISTER with
-- digest auth; a call to a registered user is forked to all of that
-- user's phones at once, a number with the dial-out prefix 0 goes to the
-- gateway (the caller must be one of our users: 407 challenge), anything
-- else gets 404. Calls are record-routed, so ACK and BYE pass through too.
--
--   lua5.4 examples/router.lua [port] [gateway] [seconds]
--
-- Listens on udp and tcp 127.0.0.1:port (default 5060), sends numbers to
-- gateway (host:port, default 127.0.0.1:5080) and stops after `seconds`
-- (default 60). Prints "router listening on sip:router@127.0.0.1:PORT",
-- a line per registration change ("sip:alice@127.0.0.1: 1 contact(s)
-- sip:phone@..."), one per call ("call alice -> 2 contact(s): 200 OK")
-- and at the end "routed N calls, M failed". Try it with two phones
-- (baresip, ...) registering as alice/wonderland and bob/builder to
-- sip:127.0.0.1:5060, calling each other and 0 followed by digits.
local sip = require "luasip"

local port = tonumber(arg[1]) or 5060
local gateway = arg[2] or "127.0.0.1:5080"
local seconds = tonumber(arg[3]) or 60
local USERS = { alice = "wonderland", bob = "builder" }
local REALM, PREFIX = "luasip", "0"
-- RFC 8760: SHA-256 preferred, MD5 too. Phones that give up on any
-- challenge but MD5 (libre 1.1.0: baresip 1.0) are recognised by their
-- User-Agent and offered MD5 alone (luasip.auth defaults.md5_agents).
local ALGS = { "SHA-256", "MD5" }
io.stdout:setvbuf("line")                   -- one line per event, also into a pipe

sip.run(function()
    local ep = assert(sip.endpoint {
        listen = { "udp:127.0.0.1:" .. port, "tcp:127.0.0.1:" .. port },
        user = "router",
        proxy = true,                       -- INVITEs arrive as requests
    })
    local registrar = sip.registrar {
        realm = REALM,
        digest = { algorithms = ALGS },
        auth = function(user) return USERS[user] end,     -- nil: unknown user
        on_change = function(aor, bindings)
            local uris = {}
            for i, b in ipairs(bindings) do uris[i] = b.uri end
            print(("%s: %d contact(s) %s"):format(aor, #uris, table.concat(uris, " ")))
        end,
    }
    registrar:attach(ep)                    -- answers every REGISTER
    local routed, failed = 0, 0

    local function route(req, targets, what)
        local resp, err = req:forward(targets, { parallel = true, record_route = true })
        local ok = resp and resp.status < 300
        if ok then routed = routed + 1 else failed = failed + 1 end
        print(("call %s: %s"):format(what, resp and resp.status .. " " .. resp.reason or err))
    end                                     -- a failure goes upstream on return

    ep:on("INVITE", function(req)
        local user = req.uri.user or ""
        if user:match("^" .. PREFIX .. "%d+$") then
            local who = req:require_auth(USERS, { realm = REALM, algorithms = ALGS, proxy = true })
            if not who then return end      -- 407 sent (or 407 again: wrong password)
            return route(req, "sip:" .. user .. "@" .. gateway, who .. " -> gateway " .. user)
        end
        local targets = {}
        for i, c in ipairs(registrar:lookup(req.uri) or {}) do targets[i] = c.uri end
        if #targets == 0 then
            failed = failed + 1
            print(("call %s: 404 Not Found"):format(user))
            return req:reply(404, "Not Found")
        end
        route(req, targets, ("%s -> %d contact(s)"):format(user, #targets))
    end)

    print("router listening on " .. ep:uri() .. ", gateway " .. gateway)
    sip.sleep(seconds)
    print(("routed %d calls, %d failed"):format(routed, failed))
    registrar:close()
    ep:close()
end)
