/**
 * @file core.c  luaopen_luasip_core: libre start-up and the part table
 *
 * libre is initialised once per process, on the thread that first
 * requires the module; that thread runs the loop. Each part registers
 * its functions and types into the module table through its open
 * function (LuaSocket's mod[] walk).
 */

#include "lsip.h"
#include <dlfcn.h>
#include <fcntl.h>
#include <unistd.h>
#define DEBUG_MODULE "luasip"
#define DEBUG_LEVEL 0
#include <re_dbg.h>


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
	{"proxy", lsip_open_proxy},
	{"auth", lsip_open_auth},
	{"reg", lsip_open_reg},
	{"media", lsip_open_media},
	{"redis", lsip_open_redis},
	{"srtp", lsip_open_srtp},
	{"refer", lsip_open_refer},
	{"registrar", lsip_open_registrar},
	{"done", lsip_open_done},
};


static bool inited;


/* __gc of a sentinel in the registry: lua_close() frees libre's tables */
static int l_sentinel_gc(lua_State *L)
{
	(void)L;

	int fd, null;

	if (inited) {
		/* libre lists the sockets it still holds at exit on stderr
		 * ("fd N in use"): not news at lua_close, so mute it */
		dbg_init(DBG_ERR, DBG_NONE);
		lsip_stack_close();
		lsip_prompt_flush();
		lsip_done_flush();
		lsip_msgdec_flush();
		fflush(stderr);
		fd = dup(STDERR_FILENO);
		null = open("/dev/null", O_WRONLY);
		if (fd >= 0 && null >= 0)
			(void)dup2(null, STDERR_FILENO);
		libre_close();
		if (fd >= 0 && null >= 0)
			(void)dup2(fd, STDERR_FILENO);
		if (fd >= 0)
			(void)close(fd);
		if (null >= 0)
			(void)close(null);
		(void)lsip_tmr_close();
		lsip_srtp_close();
		lsip_recfile_shutdown();
		inited = false;
	}

	return 0;
}


/*
 * Keep core.so mapped after lua_close: Lua unloads C modules at exit,
 * and with them the statics that still point at libre's and libsrtp2's
 * process-wide allocations (DNS config, crypto kernel), which a leak
 * checker would then report as lost. libre, once initialised, is not
 * made to be loaded twice anyway.
 */
static void pin_module(void)
{
	Dl_info info;

	if (dladdr((void *)pin_module, &info) && info.dli_fname)
		(void)dlopen(info.dli_fname,
			     RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
}


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
		pin_module();
		lsip_mem_init();

		lua_newuserdatauv(L, 0, 0);
		lua_newtable(L);
		lua_pushcfunction(L, l_sentinel_gc);
		lua_setfield(L, -2, "__gc");
		lua_setmetatable(L, -2);
		lua_setfield(L, LUA_REGISTRYINDEX, "luasip.sentinel");
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
