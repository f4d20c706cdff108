-- register.lua: a registrar and a phone in one process.
-- The registrar answers REGISTERs on one endpoint and asks for digest
-- authentication; a second endpoint (the phone) registers alice with her
-- password. The registrar's location service then knows where alice is,
-- and closing the registration (REGISTER with expires=0) forgets it.
--
--   lua5.4 examples/register.lua [port]
--
-- Prints "registered sip:alice@example.com for 3600 s", then
-- "alice is at sip:phone@127.0.0.1:PORT (from udp 127.0.0.1:PORT)",
-- then "unregistered: 0 contacts left", and exits.
local sip = require "luasip"

local port = tonumber(arg[1]) or 5060
local PASSWORDS = { alice = "wonderland" }
local AOR = "sip:alice@example.com"

sip.run(function()
    local server = assert(sip.endpoint {
        listen = "udp:127.0.0.1:" .. port, user = "registrar" })
    local registrar = sip.registrar {
        realm = "example.com",
        auth = function(user) return PASSWORDS[user] end,   -- nil: unknown
    }
    registrar:attach(server)                 -- answers every REGISTER

    local phone = assert(sip.endpoint { listen = "udp:127.0.0.1:0", user = "phone" })
    local reg = assert(phone:register {
        registrar = "sip:127.0.0.1:" .. port, aor = AOR,
        user = "alice", password = PASSWORDS.alice,
    })
    local ok, err, code = reg:wait(5)         -- 401, then 200
    if not ok then
        print("registration failed:", err, code)
    else
        print(("registered %s for %d s"):format(reg.aor, reg.expires))
        for _, c in ipairs(registrar:lookup(AOR)) do
            print(("alice is at %s (from %s %s)"):format(c.uri, c.transport, c.received))
        end
    end

    reg:close()                              -- REGISTER with expires=0
    sip.sleep(0.1)
    print(("unregistered: %d contacts left"):format(#registrar:lookup(AOR)))

    registrar:close()
    phone:close()
    server:close()
end)
