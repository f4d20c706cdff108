-- spec/rockspec_spec.lua: `luarocks make` installs a working luasip into a
-- fresh tree, offline, and `require "luasip"` works from that tree alone.
-- LuaRocks builds through the Makefile into build/rock/ (see the rockspec),
-- so this does not touch build/luasip/core.so used by the other specs.

local ROCKSPEC = "luasip-scm-1.rockspec"


local function quote(s)
    return "'" .. s:gsub("'", "'\\''") .. "'"
end


-- Runs a shell command; returns ok, combined output.
local function run(cmd)
    local p = assert(io.popen(cmd .. " 2>&1", "r"))
    local out = p:read("a")
    local ok, _, code = p:close()
    return ok and code == 0, out
end


local function exists(path)
    local f = io.open(path, "r")
    if f then f:close() end
    return f ~= nil
end


-- The project root: this file is <root>/spec/rockspec_spec.lua.
local function root_dir()
    local src = debug.getinfo(1, "S").source:match("^@(.*)$") or ""
    local dir = src:match("^(.*)/spec/[^/]*$") or "."
    local ok, out = run("cd " .. quote(dir) .. " && pwd")
    assert(ok, out)
    return (out:gsub("\n$", ""))
end


describe("luasip-scm-1.rockspec", function()
    it("installs with luarocks make and loads from the tree alone #noasan",
       function()
        local root = root_dir()
        local base = os.tmpname()           -- reserves the name
        local tree = base .. ".tree"
        finally(function()
            os.execute("rm -rf " .. quote(tree))
            os.remove(base)
        end)

        local ok, out = run("cd " .. quote(root) .. " && timeout 120 "
            .. "luarocks --lua-version=5.4 make --tree=" .. quote(tree)
            .. " " .. ROCKSPEC .. " </dev/null")
        assert(ok, "luarocks make failed:\n" .. out)

        local lmod = tree .. "/share/lua/5.4"
        local cmod = tree .. "/lib/lua/5.4"
        local so = cmod .. "/luasip/core.so"
        assert(exists(lmod .. "/luasip/init.lua"), "no init.lua in " .. lmod)
        assert(exists(so), "no core.so in " .. cmod)

        -- Only luaopen_* may be exported: libre's own symbols stay hidden
        -- (-Wl,--exclude-libs,ALL and -fvisibility=hidden).
        ok, out = run("nm -D --defined-only " .. quote(so)
            .. " | awk '$2 ~ /^[TDBVW]$/ { print $3 }'")
        assert(ok, out)
        local exported = {}
        for sym in out:gmatch("%S+") do
            if not sym:match("^_") then exported[#exported + 1] = sym end
        end
        assert.same({ "luaopen_luasip_core" }, exported)

        -- -E: ignore LUA_PATH/LUA_CPATH/LUA_INIT from the environment.
        local code = ("package.path = %q; package.cpath = %q; "
            .. "local s = require 'luasip'; assert(s._VERSION); "
            .. "io.write(package.searchpath('luasip.core', package.cpath))")
            :format(lmod .. "/?.lua;" .. lmod .. "/?/init.lua",
                    cmod .. "/?.so")
        ok, out = run("cd / && timeout 20 lua5.4 -E -e " .. quote(code))
        assert(ok, "require 'luasip' from the tree failed:\n" .. out)
        assert.equal(so, out)
    end)
end)
