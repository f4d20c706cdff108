-- bench/luasip/registrar.lua: the luasip registrar bench/register.sh
-- measures, twin of bench/kamailio/registrar.lua. sip.registrar answers
-- REGISTERs and keeps the bindings in memory (luasip.location's default
-- store). With `auth`, every REGISTER needs digest credentials (MD5, as
-- sipp answers only MD5) checked against a Lua table of users and
-- passwords read from USERS_FILE: the injection file sipp uses, lines
-- "user;password" (other lines are skipped).
--
--   lua5.4 bench/luasip/registrar.lua PORT USERS_FILE auth|noauth
--
-- Prints "listening on sip:registrar@127.0.0.1:PORT (N users, auth)" and
-- serves until it is killed.
local sip = require "luasip"

local port = assert(tonumber(arg[1]), "usage: registrar.lua PORT USERS_FILE auth|noauth")
local file, mode = arg[2], arg[3] or "noauth"
assert(mode == "auth" or mode == "noauth", "mode: auth or noauth expected")

local USERS, n = {}, 0
if mode == "auth" then
    for line in io.lines(file) do
        local user, password = line:match("^([^;]+);([^;]*)")
        if user then USERS[user], n = password, n + 1 end
    end
end

sip.run(function()
    local ep = assert(sip.endpoint { listen = "udp:127.0.0.1:" .. port, user = "registrar" })
    local registrar
    if mode == "auth" then
        registrar = sip.registrar {
            realm = "bench.test",
            auth = function(user) return USERS[user] end,
            digest = { algorithms = { "MD5" } },
        }
    else
        registrar = sip.registrar { open = true }
    end
    registrar:attach(ep)
    print(("listening on %s (%d users, %s)"):format(ep:uri(), n, mode))
    io.stdout:flush()
    while true do sip.sleep(3600) end
end)
