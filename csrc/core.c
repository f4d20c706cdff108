/**
 * @file core.c  luaopen_luasip_core: libre start-up and the part table
 *
 * libre is initialised once per process, on the thread that first
 * requires the module; that thread runs the loop. Each part registers
 * its functions and types into the module table through its open
 * function (LuaSocket's mod[] walk).
 */

#include "lsip.h"


static const struct {
	const char *name;
	int (*open)(lua_State *L);
} parts[] = {
	{"util", lsip_open_util},
	{"loop", lsip_open_loop},
	{"message", lsip_open_message},
	{"stack", lsip_open_stack},
	{"request", lsip_open_request},
	{"call", lsip_open_call},
};


static bool inited;


/**
 * Open the luasip.core module
 *
 * @param L Lua state
 *
 * @return 1 (the module table)
 */
__attribute__((visibility("default")))
int luaopen_luasip_core(lua_State *L)
{
	size_t i;
	int err;

	if (!inited) {
		err = libre_init();
		if (err)
			return luaL_error(L, "luasip: libre_init: %s",
					  strerror(err));
		(void)fd_setsize(8192);
		inited = true;
	}

	lua_newtable(L);
	for (i = 0; i < sizeof(parts) / sizeof(parts[0]); i++)
		parts[i].open(L);

	lua_pushliteral(L, LSIP_NAME);
	lua_setfield(L, -2, "_NAME");
	lua_pushliteral(L, LSIP_VERSION);
	lua_setfield(L, -2, "_VERSION");
	return 1;
}
