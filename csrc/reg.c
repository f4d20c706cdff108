/**
 * @file reg.c  SIP registration client (sipreg) as "luasip.reg"
 *
 * A reg box points at a struct lsip_reg that owns the sipreg and a
 * struct reg_auth, the sip_auth argument of every sipreg it creates
 * (aref = true; it holds the script's credentials). The reg is pinned
 * from creation until :close(), __close, __gc or the endpoint's close:
 * libre refreshes the binding and retries after failures on its own,
 * and calls back at any time. Handlers record the outcome and emit
 * "registered" or "failed"; they never deref the sipreg that calls
 * them. Dropping the sipreg makes libre's destructor send REGISTER with
 * expires=0 and linger until the registrar answers; the reg_auth lives
 * as long as some sipreg holds it, which is how reg_drain() knows that
 * every un-REGISTER has finished.
 */

#include "lsip.h"


enum reg_state {
	REG_REGISTERING = 0,  /* first REGISTER in flight */
	REG_REGISTERED,       /* last REGISTER got 2xx */
	REG_FAILED,           /* last REGISTER failed; libre (or we) retry */
	REG_CLOSED,
};


static const char *state_names[] = {
	"registering", "registered", "failed", "closed",
};


/* aarg of every sipreg of one reg: outlives lingering un-REGISTERs */
struct reg_auth {
	struct lsip_creds *creds;
};


struct lsip_reg {
	struct lsip_ep *ep;
	struct sipreg *reg;
	struct reg_auth *auth;
	struct tmr tmr;             /* our retry (opts.retry) */
	struct mbuf *hdrs;          /* extra headers */
	char *ruri;                 /* registrar (Request-URI) */
	char *aor;                  /* To and From */
	char *display;
	char *cuser;                /* Contact user */
	char *params;               /* extra Contact parameters */
	char reason[64];
	enum reg_state state;
	uint32_t expires;           /* asked for */
	uint32_t granted;           /* by the registrar */
	uint32_t rwait;             /* refresh at this % of granted */
	uint32_t retry;             /* ms; 0: libre's backoff */
	uint32_t count;             /* successful REGISTERs */
	uint16_t status;
	int err;
	int self;                   /* pin until closed */
};


static uint32_t auth_live;      /* struct reg_auth objects alive */
static bool draining;
static struct tmr drain_tmr;


static void auth_destructor(void *arg)
{
	struct reg_auth *auth = arg;

	mem_deref(auth->creds);

	/* the last lingering un-REGISTER is done: end reg_drain()'s loop */
	if (--auth_live == 0 && draining)
		re_cancel();
}


/* sip_auth_h: the credentials of the reg (EAUTH without) */
static int auth_handler(char **user, char **pass, const char *realm,
			void *arg)
{
	struct reg_auth *auth = arg;

	if (!auth->creds)
		return EAUTH;

	return lsip_auth_handler(user, pass, realm, auth->creds);
}


static void reg_destructor(void *arg)
{
	struct lsip_reg *r = arg;

	tmr_cancel(&r->tmr);
	mem_deref(r->reg);          /* un-REGISTER, lingering */
	mem_deref(r->auth);
	mem_deref(r->hdrs);
	mem_deref(r->ruri);
	mem_deref(r->aor);
	mem_deref(r->display);
	mem_deref(r->cuser);
	mem_deref(r->params);
	mem_deref(r->ep);
}


static void reg_emit(struct lsip_reg *r, const char *ev)
{
	lua_State *L = lsip_L;

	if (!lsip_push_ref(L, r->self))
		return;

	lsip_emit(L, ev, 1);
}


static int reg_start(struct lsip_reg *r);
static void resp_handler(int err, const struct sip_msg *msg, void *arg);


/* opts.retry: the failed sipreg is gone; register anew */
static void retry_handler(void *arg)
{
	struct lsip_reg *r = arg;
	int err;

	err = reg_start(r);
	if (err) {
		r->err = err;
		re_snprintf(r->reason, sizeof(r->reason), "%m", err);
		tmr_start(&r->tmr, r->retry, retry_handler, r);
		reg_emit(r, "failed");
	}
}


/* opts.retry: out of libre's handler, drop the sipreg (and its backoff) */
static void drop_handler(void *arg)
{
	struct lsip_reg *r = arg;

	r->reg = mem_deref(r->reg);
	tmr_start(&r->tmr, r->retry, retry_handler, r);
}


/* final response or error of a REGISTER; runs inside re_main */
static void resp_handler(int err, const struct sip_msg *msg, void *arg)
{
	struct lsip_reg *r = arg;

	r->err = err;
	r->status = msg ? msg->scode : 0;
	if (msg)
		(void)pl_strcpy(&msg->reason, r->reason, sizeof(r->reason));
	else if (err == ETIMEDOUT)
		str_ncpy(r->reason, "timeout", sizeof(r->reason));
	else
		re_snprintf(r->reason, sizeof(r->reason), "%m", err);

	if (!err && msg && msg->scode < 300 && sipreg_registered(r->reg)) {
		r->state = REG_REGISTERED;
		r->granted = sipreg_proxy_expires(r->reg);
		++r->count;
		reg_emit(r, "registered");
		return;
	}

	/* a 2xx that did not keep our contact counts as a failure too */
	if (!err && msg && msg->scode < 300)
		str_ncpy(r->reason, "binding not accepted", sizeof(r->reason));

	r->state = REG_FAILED;
	r->granted = 0;
	if (r->retry)
		tmr_start(&r->tmr, 0, drop_handler, r);

	reg_emit(r, "failed");
}


static int reg_start(struct lsip_reg *r)
{
	int err;

	err = sipreg_register(&r->reg, lsip_ep_sip(r->ep), r->ruri, r->aor,
			      r->display, r->aor, r->expires, r->cuser,
			      NULL, 0, 0, auth_handler, r->auth, true,
			      resp_handler, r, r->params,
			      r->hdrs ? "%b" : NULL,
			      r->hdrs ? r->hdrs->buf : NULL,
			      r->hdrs ? r->hdrs->end : (size_t)0);
	if (err)
		return err;

	return sipreg_set_rwait(r->reg, r->rwait);
}


static int uri_check(lua_State *L, const char *s, const char *field)
{
	struct uri u;
	struct pl pl;

	pl_set_str(&pl, s);
	if (strpbrk(s, "\r\n<>\" ") || uri_decode(&u, &pl) ||
	    !pl_isset(&u.host) ||
	    (pl_strcasecmp(&u.scheme, "sip") &&
	     pl_strcasecmp(&u.scheme, "sips")))
		return luaL_error(L, "luasip.register: %s: SIP URI expected, "
				  "got \"%s\"", field, s);

	return 0;
}


static uint32_t opt_uint(lua_State *L, int idx, const char *field,
			 lua_Integer min, lua_Integer max, lua_Integer def)
{
	lua_Integer v;
	int isint;

	lua_getfield(L, idx, field);
	if (lua_isnil(L, -1)) {
		lua_pop(L, 1);
		return (uint32_t)def;
	}

	v = lua_tointegerx(L, -1, &isint);
	if (!isint || v < min || v > max)
		return luaL_error(L, "luasip.register: %s: integer %d-%d "
				  "expected, got %s", field, (int)min,
				  (int)max, luaL_tolstring(L, -1, NULL));

	lua_pop(L, 1);
	return (uint32_t)v;
}


/*
 * core.register(ep, opts, auth) -> reg | nil, err, code
 *
 * opts: registrar, aor (SIP URIs), display, contact_user,
 * contact_params, expires (s), refresh (% of the granted expiry, 5-95),
 * retry (ms, 0 = libre's backoff), headers; auth: as lsip_creds_alloc().
 * Stack: ep, opts, auth -> ..., reg
 */
static int l_register(lua_State *L)
{
	struct lsip_ep *ep = lsip_ep_check(L, 1);
	const char *ruri, *aor, *display, *cuser, *params;
	struct lsip_creds *creds = NULL;
	struct lsip_reg *r;
	int err;

	luaL_checktype(L, 2, LUA_TTABLE);
	lsip_opt_string(L, 2, "registrar", &ruri);
	lsip_opt_string(L, 2, "aor", &aor);
	lsip_opt_string(L, 2, "display", &display);
	lsip_opt_string(L, 2, "contact_user", &cuser);
	lsip_opt_string(L, 2, "contact_params", &params);
	if (!aor)
		return luaL_error(L, "luasip.register: aor: SIP URI expected, "
				  "got nil");
	if (!ruri)
		return luaL_error(L, "luasip.register: registrar: SIP URI "
				  "expected, got nil");
	uri_check(L, aor, "aor");
	uri_check(L, ruri, "registrar");
	if (display && strpbrk(display, "\r\n\""))
		return luaL_error(L, "luasip.register: display: no quotes or "
				  "CR/LF allowed");
	if (cuser && (!*cuser || strpbrk(cuser, "\r\n<>@:;\" ")))
		return luaL_error(L, "luasip.register: contact_user: user "
				  "part expected, got \"%s\"", cuser);
	if (params && strpbrk(params, "\r\n"))
		return luaL_error(L, "luasip.register: contact_params: no "
				  "CR/LF allowed");

	r = mem_zalloc(sizeof(*r), reg_destructor);
	if (!r)
		return lsip_fail(L, ENOMEM, "register");

	r->self = LUA_NOREF;
	tmr_init(&r->tmr);
	r->ep = mem_ref(ep);
	r->state = REG_REGISTERING;
	r->expires = opt_uint(L, 2, "expires", 1, 0x7fffffff, 3600);
	r->rwait = opt_uint(L, 2, "refresh", 5, 95, 90);
	r->retry = opt_uint(L, 2, "retry", 0, 86400000, 0);

	/* from here on the box owns r: raising frees it through __gc */
	lsip_newbox(L, r, LSIP_REG_MT);

	lua_getfield(L, 2, "headers");
	lsip_headers(&r->hdrs, L, lua_gettop(L), "register");
	lua_pop(L, 1);

	/* may raise: nothing counted in auth_live may wait for the GC */
	err = lsip_creds_alloc(&creds, L, 3, "register");
	if (err)
		goto out;

	r->auth = mem_zalloc(sizeof(*r->auth), auth_destructor);
	if (!r->auth) {
		mem_deref(creds);
		err = ENOMEM;
		goto out;
	}
	++auth_live;
	r->auth->creds = creds;

	err  = str_dup(&r->ruri, ruri);
	err |= str_dup(&r->aor, aor);
	err |= str_dup(&r->cuser, cuser ? cuser : lsip_ep_user(ep));
	if (display)
		err |= str_dup(&r->display, display);
	if (params)
		err |= str_dup(&r->params, *params == ';' ? params + 1 :
			       params);
	if (err) {
		err = ENOMEM;
		goto out;
	}

	err = reg_start(r);

 out:
	if (err) {
		lsip_fail(L, err, "register");
		return 3;
	}

	r->self = lsip_pin(L, -1);
	return 1;
}


static struct lsip_reg *reg_check(lua_State *L)
{
	struct lsip_reg **box = lsip_checkbox(L, 1, LSIP_REG_MT);

	return *box;
}


/* :close(), __close, __gc: un-REGISTER (libre lingers) and free */
static int l_reg_close(lua_State *L)
{
	struct lsip_reg **box = lsip_checkbox(L, 1, LSIP_REG_MT);

	if (*box) {
		lsip_unpin(L, &(*box)->self);
		*box = mem_deref(*box);
	}

	lua_pushboolean(L, 1);
	return 1;
}


/* state, status, reason, expires, registered, errno, aor, registrar... */
static int l_reg_getfield(lua_State *L)
{
	struct lsip_reg *r = reg_check(L);
	const char *key = luaL_checkstring(L, 2);

	if (!strcmp(key, "state")) {
		lua_pushstring(L, state_names[r ? r->state : REG_CLOSED]);
		return 1;
	}
	if (!strcmp(key, "registered")) {
		lua_pushboolean(L, r && r->state == REG_REGISTERED);
		return 1;
	}
	if (!r)
		return 0;

	if (!strcmp(key, "status")) {
		lua_pushinteger(L, r->status);
		return 1;
	}
	if (!strcmp(key, "reason")) {
		if (r->reason[0])
			lua_pushstring(L, r->reason);
		else
			lua_pushnil(L);
		return 1;
	}
	if (!strcmp(key, "expires")) {
		lua_pushinteger(L, r->granted);
		return 1;
	}
	if (!strcmp(key, "errno")) {
		lua_pushinteger(L, r->err);
		return 1;
	}
	if (!strcmp(key, "count")) {
		lua_pushinteger(L, r->count);
		return 1;
	}
	if (!strcmp(key, "aor")) {
		lua_pushstring(L, r->aor);
		return 1;
	}
	if (!strcmp(key, "registrar")) {
		lua_pushstring(L, r->ruri);
		return 1;
	}
	return 0;
}


static void drain_timeout(void *arg)
{
	(void)arg;
	re_cancel();
}


/*
 * core.reg_drain(seconds) -> registrations still alive or lingering
 *
 * Runs the loop until every closed registration's un-REGISTER has been
 * answered (or timed out), at most `seconds`. Only for when the loop is
 * not running (luasip.run has returned); returns at once otherwise.
 */
static int l_reg_drain(lua_State *L)
{
	lua_Number s = luaL_checknumber(L, 1);

	if (auth_live > 0 && s > 0) {
		draining = true;
		tmr_start(&drain_tmr, (uint64_t)(s * 1000.0), drain_timeout,
			  NULL);
		(void)re_main(NULL);
		tmr_cancel(&drain_tmr);
		draining = false;
	}

	lua_pushinteger(L, auth_live);
	return 1;
}


/**
 * Register core.register, core.reg_drain and the luasip.reg type
 *
 * @param L Lua state, module table on top
 *
 * @return 0
 */
int lsip_open_reg(lua_State *L)
{
	static const luaL_Reg methods[] = {
		{"close", l_reg_close},
		{NULL, NULL}
	};
	static const luaL_Reg meta[] = {
		{"__gc", l_reg_close},
		{"__close", l_reg_close},
		{"__getfield", l_reg_getfield},
		{NULL, NULL}
	};

	tmr_init(&drain_tmr);
	lsip_setfuncs(L, LSIP_REG_MT, methods, meta);
	lua_pushcfunction(L, l_register);
	lua_setfield(L, -2, "register");
	lua_pushcfunction(L, l_reg_drain);
	lua_setfield(L, -2, "reg_drain");
	return 0;
}
