/**
 * @file util.c  Helpers shared by every part: boxes, pins, events, errors
 *
 * A Lua object is a "box": a full userdata holding one pointer to a
 * mem_zalloc'd C struct. The box never owns libre objects directly; the
 * struct does, and its mem destructor releases them. A pin is a registry
 * reference that keeps the box alive while libre can still call back.
 * lsip_emit() is the only way from C into Lua: it calls the dispatcher
 * installed by lua/luasip/sched.lua, under lua_pcall, on the main thread.
 */

#include "lsip.h"


lua_State *lsip_L;
static int dispatcher_ref = LUA_NOREF;
static int traceback_ref = LUA_NOREF;


/**
 * Push the failure tuple nil, message, code for a libre errno
 *
 * @param L   Lua state
 * @param err Positive errno
 * @param ctx Optional context prefixed to the message
 *
 * @return 3 (number of values pushed)
 */
int lsip_fail(lua_State *L, int err, const char *ctx)
{
	char buf[128];

	lua_pushnil(L);
	if (err == ETIMEDOUT)
		re_snprintf(buf, sizeof(buf), "timeout");
	else
		re_snprintf(buf, sizeof(buf), "%m", err);

	if (ctx)
		lua_pushfstring(L, "%s: %s", ctx, buf);
	else
		lua_pushstring(L, buf);

	lua_pushinteger(L, err);
	return 3;
}


/**
 * Push the failure tuple nil, "486 Busy Here", 486
 *
 * @param L      Lua state
 * @param scode  SIP status code
 * @param reason Reason phrase
 *
 * @return 3 (number of values pushed)
 */
int lsip_fail_status(lua_State *L, uint16_t scode, const struct pl *reason)
{
	char buf[160];

	re_snprintf(buf, sizeof(buf), "%u %r", scode, reason);
	lua_pushnil(L);
	lua_pushstring(L, buf);
	lua_pushinteger(L, scode);
	return 3;
}


/**
 * Take a registry reference to the value at idx
 *
 * @param L   Lua state
 * @param idx Stack index
 *
 * @return Reference, LUA_NOREF for nil
 */
int lsip_pin(lua_State *L, int idx)
{
	lua_pushvalue(L, idx);
	return luaL_ref(L, LUA_REGISTRYINDEX);
}


/**
 * Drop a registry reference and mark it gone; safe to call twice
 *
 * @param L   Lua state
 * @param ref Reference to drop, set to LUA_NOREF
 */
void lsip_unpin(lua_State *L, int *ref)
{
	if (!ref || *ref == LUA_NOREF || *ref == LUA_REFNIL)
		return;

	luaL_unref(L, LUA_REGISTRYINDEX, *ref);
	*ref = LUA_NOREF;
}


/**
 * Push the value behind a reference
 *
 * @param L   Lua state
 * @param ref Reference
 *
 * @return true if pushed, false (nothing pushed) if the ref is gone
 */
bool lsip_push_ref(lua_State *L, int ref)
{
	if (ref == LUA_NOREF || ref == LUA_REFNIL)
		return false;

	lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
	return true;
}


/* stack: msg -> msg .. traceback */
static int traceback(lua_State *L)
{
	const char *msg = lua_tostring(L, 1);

	luaL_traceback(L, L, msg ? msg : "(error object)", 1);
	return 1;
}


/**
 * Deliver an event to the Lua dispatcher: dispatcher(obj, ev, ...)
 *
 * Runs inside re_main (or inside a C function called from Lua); never
 * raises: errors are printed with their traceback and the loop goes on.
 *
 * @param L     Main Lua state
 * @param ev    Event name
 * @param nargs Stack: obj, arg1..argN-1 on top (nargs includes obj)
 */
void lsip_emit(lua_State *L, const char *ev, int nargs)
{
	int base = lua_gettop(L) - nargs + 1;

	if (!lsip_push_ref(L, dispatcher_ref)) {
		lua_pop(L, nargs);
		return;
	}

	lua_insert(L, base);                      /* fn, obj, args */
	lua_pushstring(L, ev);
	lua_insert(L, base + 2);                  /* fn, obj, ev, args */
	lsip_push_ref(L, traceback_ref);
	lua_insert(L, base);                      /* tb, fn, obj, ev, args */

	if (lua_pcall(L, nargs + 1, 0, base)) {
		fprintf(stderr, "luasip: event %s: %s\n", ev,
			lua_tostring(L, -1));
		lua_pop(L, 1);
	}

	lua_pop(L, 1);                            /* tb */
}


/**
 * Push a pointer-length string, or nil when unset
 *
 * @param L  Lua state
 * @param pl String
 */
void lsip_pushpl(lua_State *L, const struct pl *pl)
{
	if (pl && pl->p)
		lua_pushlstring(L, pl->p, pl->l);
	else
		lua_pushnil(L);
}


/**
 * Push a new box holding p with metatable mt
 *
 * @param L  Lua state
 * @param p  C struct (not referenced: the box takes over one reference)
 * @param mt Metatable name
 *
 * @return The box
 */
void *lsip_newbox(lua_State *L, void *p, const char *mt)
{
	void **box = lua_newuserdatauv(L, sizeof(void *), 1);

	*box = p;
	luaL_setmetatable(L, mt);
	return box;
}


/**
 * Check that idx is a box of type mt; the pointer inside may be NULL
 *
 * @param L   Lua state
 * @param idx Stack index
 * @param mt  Metatable name
 *
 * @return Pointer to the box
 */
void *lsip_checkbox(lua_State *L, int idx, const char *mt)
{
	return luaL_checkudata(L, idx, mt);
}


/**
 * Test whether idx is a box of type mt
 *
 * @param L   Lua state
 * @param idx Stack index
 * @param mt  Metatable name
 *
 * @return Pointer to the box, or NULL
 */
void *lsip_testbox(lua_State *L, int idx, const char *mt)
{
	return luaL_testudata(L, idx, mt);
}


/* __index: methods first, then the type's field getter */
static int box_index(lua_State *L)
{
	lua_pushvalue(L, 2);
	if (lua_rawget(L, lua_upvalueindex(1)) != LUA_TNIL)
		return 1;

	lua_pop(L, 1);
	if (lua_isnil(L, lua_upvalueindex(2)))
		return 0;

	lua_pushvalue(L, lua_upvalueindex(2));
	lua_pushvalue(L, 1);
	lua_pushvalue(L, 2);
	lua_call(L, 2, 1);
	return 1;
}


/**
 * Create metatable mt with methods and metamethods
 *
 * If meta has a "__getfield" entry it is called by __index for keys that
 * are not methods. The methods table is also stored in the module table
 * under _methods[mt] so lua/ can extend it (interposing).
 *
 * @param L       Lua state, module table on top
 * @param mt      Metatable name
 * @param methods Methods
 * @param meta    Metamethods (may hold __getfield)
 */
void lsip_setfuncs(lua_State *L, const char *mt, const luaL_Reg *methods,
		   const luaL_Reg *meta)
{
	int getter = 0;

	luaL_newmetatable(L, mt);                 /* mod, mt */
	for (; meta && meta->name; ++meta) {
		if (!strcmp(meta->name, "__getfield")) {
			getter = 1;
			lua_pushcfunction(L, meta->func);
			lua_setfield(L, -2, "__getfield");
			continue;
		}
		lua_pushcfunction(L, meta->func);
		lua_setfield(L, -2, meta->name);
	}

	lua_newtable(L);                          /* mod, mt, methods */
	luaL_setfuncs(L, methods, 0);

	lua_getfield(L, -3, "_methods");          /* mod, mt, m, all */
	lua_pushvalue(L, -2);
	lua_setfield(L, -2, mt);
	lua_pop(L, 1);

	if (getter)
		lua_getfield(L, -2, "__getfield");
	else
		lua_pushnil(L);
	lua_pushcclosure(L, box_index, 2);        /* mod, mt, __index */
	lua_setfield(L, -2, "__index");
	lua_pop(L, 1);
}


/**
 * Read an optional string field of the options table at idx
 *
 * @param L     Lua state
 * @param idx   Options table index (absolute)
 * @param field Field name
 * @param out   Set to the string (kept alive by the table) or NULL
 *
 * @return 0 (raises on a wrong type)
 */
int lsip_opt_string(lua_State *L, int idx, const char *field,
		    const char **out)
{
	*out = NULL;
	if (lua_isnoneornil(L, idx))
		return 0;

	lua_getfield(L, idx, field);
	if (!lua_isnil(L, -1)) {
		if (lua_type(L, -1) != LUA_TSTRING)
			return luaL_error(L, "bad option '%s' (string "
					  "expected, got %s)", field,
					  luaL_typename(L, -1));
		*out = lua_tostring(L, -1);
	}
	lua_pop(L, 1);
	return 0;
}


static bool hdr_safe(const char *s, size_t n, bool name)
{
	size_t i;

	if (!n && name)
		return false;

	for (i = 0; i < n; i++) {
		unsigned char c = s[i];

		if (c == '\r' || c == '\n' || c == 0)
			return false;
		if (name && (c <= ' ' || c == ':' || c >= 0x7f))
			return false;
	}

	return true;
}


/**
 * Print a Lua table of extra headers into a new mbuf, "Name: value\r\n"
 *
 * Accepts { Name = "v" }, { Name = { "v1", "v2" } } and an array of
 * "Name: value" strings. CR/LF in names or values raise: a script cannot
 * inject header lines.
 *
 * @param mbp   Set to the new mbuf (NULL when there is nothing)
 * @param L     Lua state
 * @param idx   Index of the table (absolute), nil allowed
 * @param fname Function name for error messages
 *
 * @return 0 if success, otherwise errorcode
 */
int lsip_headers(struct mbuf **mbp, lua_State *L, int idx,
		 const char *fname)
{
	struct mbuf *mb;
	int err = 0;

	*mbp = NULL;
	if (lua_isnoneornil(L, idx))
		return 0;
	if (!lua_istable(L, idx))
		return luaL_error(L, "%s: headers: table expected, got %s",
				  fname, luaL_typename(L, idx));

	mb = mbuf_alloc(256);
	if (!mb)
		return ENOMEM;

	lua_pushnil(L);
	while (lua_next(L, idx)) {
		size_t kl, vl;
		const char *k, *v;

		if (lua_type(L, -2) == LUA_TNUMBER) {
			v = lua_tolstring(L, -1, &vl);
			if (!v || !hdr_safe(v, vl, false) ||
			    !memchr(v, ':', vl)) {
				mem_deref(mb);
				return luaL_error(L, "%s: headers: bad header "
						  "line %s", fname,
						  luaL_tolstring(L, -1, NULL));
			}
			err |= mbuf_printf(mb, "%b\r\n", v, vl);
			lua_pop(L, 1);
			continue;
		}

		k = lua_tolstring(L, -2, &kl);
		if (lua_type(L, -2) != LUA_TSTRING || !hdr_safe(k, kl, true)) {
			mem_deref(mb);
			return luaL_error(L, "%s: headers: bad header name %s",
					  fname, luaL_tolstring(L, -2, NULL));
		}

		if (lua_istable(L, -1)) {
			lua_Integer i, n = luaL_len(L, -1);

			for (i = 1; i <= n; i++) {
				lua_geti(L, -1, i);
				v = lua_tolstring(L, -1, &vl);
				if (!v || !hdr_safe(v, vl, false)) {
					mem_deref(mb);
					return luaL_error(L, "%s: headers: "
							  "bad value for %s",
							  fname, k);
				}
				err |= mbuf_printf(mb, "%b: %b\r\n",
						   k, kl, v, vl);
				lua_pop(L, 1);
			}
		}
		else {
			v = lua_tolstring(L, -1, &vl);
			if (!v || !hdr_safe(v, vl, false)) {
				mem_deref(mb);
				return luaL_error(L, "%s: headers: bad value "
						  "for %s", fname, k);
			}
			err |= mbuf_printf(mb, "%b: %b\r\n", k, kl, v, vl);
		}
		lua_pop(L, 1);
	}

	if (err) {
		mem_deref(mb);
		return err;
	}

	mb->pos = 0;
	*mbp = mb;
	return 0;
}


/**
 * Copy an optional string body into a new mbuf
 *
 * @param mbp   Set to the new mbuf (NULL for nil)
 * @param L     Lua state
 * @param idx   Index of the body
 * @param fname Function name for error messages
 *
 * @return 0 if success, otherwise errorcode
 */
int lsip_body(struct mbuf **mbp, lua_State *L, int idx, const char *fname)
{
	const char *s;
	size_t n;

	*mbp = NULL;
	if (lua_isnoneornil(L, idx))
		return 0;
	if (lua_type(L, idx) != LUA_TSTRING)
		return luaL_error(L, "%s: body: string expected, got %s",
				  fname, luaL_typename(L, idx));

	s = lua_tolstring(L, idx, &n);
	*mbp = mbuf_alloc(n ? n : 1);
	if (!*mbp)
		return ENOMEM;

	(void)mbuf_write_mem(*mbp, (const uint8_t *)s, n);
	(*mbp)->pos = 0;
	return 0;
}


/**
 * Lowercase name of a SIP transport
 *
 * @param tp Transport
 *
 * @return "udp", "tcp", "tls", "ws", "wss"
 */
const char *lsip_tpname(enum sip_transp tp)
{
	switch (tp) {

	case SIP_TRANSP_UDP: return "udp";
	case SIP_TRANSP_TCP: return "tcp";
	case SIP_TRANSP_TLS: return "tls";
	case SIP_TRANSP_WS:  return "ws";
	case SIP_TRANSP_WSS: return "wss";
	default:             return "none";
	}
}


/* core.set_dispatcher(fn) */
static int l_set_dispatcher(lua_State *L)
{
	luaL_checktype(L, 1, LUA_TFUNCTION);
	lsip_unpin(L, &dispatcher_ref);
	dispatcher_ref = lsip_pin(L, 1);
	return 0;
}


/* core.methods(mt) -> methods table of a C type (for interposing) */
static int l_methods(lua_State *L)
{
	luaL_checkstring(L, 1);
	lua_getfield(L, lua_upvalueindex(1), "_methods");
	lua_pushvalue(L, 1);
	lua_rawget(L, -2);
	return 1;
}


/**
 * Register util functions: set_dispatcher, methods, errno constants
 *
 * @param L Lua state, module table on top
 *
 * @return 0
 */
int lsip_open_util(lua_State *L)
{
	static const struct { const char *name; int val; } errs[] = {
		{"ETIMEDOUT", ETIMEDOUT}, {"ECONNREFUSED", ECONNREFUSED},
		{"ECONNRESET", ECONNRESET}, {"ENOTCONN", ENOTCONN},
		{"EBUSY", EBUSY}, {"EINVAL", EINVAL}, {"ENOMEM", ENOMEM},
		{"ECANCELED", ECANCELED}, {"EPROTO", EPROTO},
		{"ENOENT", ENOENT}, {"EADDRINUSE", EADDRINUSE},
		{"EALREADY", EALREADY}, {"EBADMSG", EBADMSG},
		{"EAUTH", EACCES}, {"EACCES", EACCES},
		{"EHOSTUNREACH", EHOSTUNREACH},
	};
	size_t i;

	lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
	lsip_L = lua_tothread(L, -1);
	lua_pop(L, 1);

	lua_pushcfunction(L, traceback);
	traceback_ref = luaL_ref(L, LUA_REGISTRYINDEX);

	lua_newtable(L);
	lua_setfield(L, -2, "_methods");

	lua_pushcfunction(L, l_set_dispatcher);
	lua_setfield(L, -2, "set_dispatcher");
	lua_pushvalue(L, -1);
	lua_pushcclosure(L, l_methods, 1);
	lua_setfield(L, -2, "methods");

	for (i = 0; i < sizeof(errs) / sizeof(errs[0]); i++) {
		lua_pushinteger(L, errs[i].val);
		lua_setfield(L, -2, errs[i].name);
	}

	return 0;
}
