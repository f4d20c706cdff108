-- luasip-scm-1.rockspec: install from a checkout, offline:
--   luarocks --lua-version=5.4 make luasip-scm-1.rockspec
--
-- build.type is "make", not "builtin": core.so links Debian's static PIC
-- libre.a and librem.a so that csrc/tmr.c replaces libre's timers, and it
-- must hide their symbols with -Wl,--exclude-libs,ALL (see the Makefile).
-- builtin can name an archive (libraries = { ":libre.a" } gives -l:libre.a)
-- but has no per-module linker flags, so it cannot pass --exclude-libs;
-- it would also list csrc/*.c a second time. The Makefile is the one
-- place that says how core.so is built; this file hands it LuaRocks'
-- variables and the external dependencies' paths. `make install` copies
-- lua/luasip/**.lua, so new Lua modules need no change here.
rockspec_format = "3.0"
package = "luasip"
version = "scm-1"

source = {
    url = "git+https://example.invalid/luasip.git",
}

description = {
    summary = "Scriptable SIP for Lua 5.4 on top of libre",
    detailed = [[
luasip wraps libre (SIP transactions, dialogs, INVITE sessions,
registration, events, RTP) for Lua 5.4 scripts, with coroutine-based
calls that look blocking but never block the event loop.
]],
}

dependencies = {
    "lua >= 5.4, < 5.5",
}

external_dependencies = {
    LIBRE = { header = "re/re.h", library = "re" },
    LIBREM = { header = "rem/rem.h", library = "rem" },
    SRTP2 = { header = "srtp2/srtp.h", library = "srtp2" },
    OPENSSL = { header = "openssl/ssl.h", library = "ssl" },
    ZLIB = { header = "zlib.h", library = "z" },
}

build = {
    type = "make",
    -- build/rock/ keeps LuaRocks' objects (built with its CFLAGS) apart
    -- from the developer's build/luasip/core.so.
    build_variables = {
        CC = "$(CC)",
        CFLAGS = "$(CFLAGS)",
        LIBFLAG = "$(LIBFLAG)",
        LUA_INCDIR = "$(LUA_INCDIR)",
        PKG_CFLAGS = "-I$(LIBRE_INCDIR)/re -I$(LIBREM_INCDIR)/rem "
            .. "-I$(SRTP2_INCDIR)",
        LIBRE_LIBDIR = "$(LIBRE_LIBDIR)",
        LIBREM_LIBDIR = "$(LIBREM_LIBDIR)",
        LDFLAGS = "-L$(SRTP2_LIBDIR) -L$(OPENSSL_LIBDIR) -L$(ZLIB_LIBDIR)",
        BUILD = "build/rock",
    },
    install_variables = {
        BUILD = "build/rock",
        LUA_LIBDIR = "$(LIBDIR)",
        LUA_SHAREDIR = "$(LUADIR)",
        LIBRE_LIBDIR = "$(LIBRE_LIBDIR)",
        LIBREM_LIBDIR = "$(LIBREM_LIBDIR)",
    },
}
