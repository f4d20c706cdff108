/**
 * @file registrar.c  The registrar's common path in C: the in-memory
 *                    location table ("luasip.loc") and REGISTER handling
 *                    (RFC 3261 section 10.3) against it ("luasip.regc")
 *
 * lua/luasip/location.lua's memory store keeps its bindings here and
 * lua/luasip/registrar.lua hands REGISTERs to this file when its store is
 * that store: a REGISTER for an endpoint a registrar is attached to is
 * answered inside re_main, without a Lua request object or task. Lua is
 * called only for what the script provides: the password lookup (each
 * time, in a coroutine of its own: a lookup that needs a task, i.e. would
 * wait, makes the registrar give every later REGISTER to the Lua path),
 * on_change, and the file store's write-back.
 *
 * The rules mirror registrar.lua's R:handle line by line (status codes,
 * reasons, Warning texts, the 200's Contact list): both paths answer the
 * same. Bindings expire on timers of the timer heap (tmr.c).
 */

#include "lsip.h"
#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <time.h>


#define LOC_MT  "luasip.loc"
#define REGC_MT "luasip.regc"
#define REGS_KEY "luasip.registrars"   /* weak: ep box -> regc box */

enum {
	MAX_EXPIRES_VALUE = 4294967295u,
	WANT_MAX = 32,            /* Contact values handled per REGISTER */
	BIND_MAX = 256,           /* bindings answered per AOR */
};


/* ---- clock: location.now() ---- */

static double base_wall, base_mono;

/**
 * Seconds since the epoch with the monotonic clock's resolution (the
 * clock bindings expire on; lua: location.now)
 *
 * @return seconds
 */
static double loc_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	if (!base_wall) {
		base_wall = (double)time(NULL);
		base_mono = ts.tv_sec + ts.tv_nsec / 1e9;
	}
	return base_wall + (ts.tv_sec + ts.tv_nsec / 1e9 - base_mono);
}


/* ---- location table ---- */

struct loc {
	struct hash *ht;      /* aor name -> struct aor (grows, see aor_get) */
	uint32_t naor;        /* AORs in ht */
	uint32_t n;           /* bindings */
	uint32_t expired;     /* removed by timers since the last expire() */
	int changed;          /* Lua function after C-path changes, or ref */
};

struct aor {
	struct le he;
	struct list bl;       /* struct bnd */
	struct loc *loc;
	char *name;
	uint32_t hk;          /* hash_joaat_str(name) */
};

struct bnd {
	struct le le;
	struct tmr tmr;
	struct aor *aor;
	char *key, *uri, *params, *call_id, *received, *transport,
		*user_agent, *instance;
	char **pathv;
	uint32_t pathc;
	double q, expires, updated;
	uint32_t cseq;
	lua_Integer reg_id;
	bool has_q, has_cseq, has_reg_id;
};


static void bnd_destructor(void *arg)
{
	struct bnd *b = arg;
	uint32_t i;

	tmr_cancel(&b->tmr);
	list_unlink(&b->le);
	mem_deref(b->key);
	mem_deref(b->uri);
	mem_deref(b->params);
	mem_deref(b->call_id);
	mem_deref(b->received);
	mem_deref(b->transport);
	mem_deref(b->user_agent);
	mem_deref(b->instance);
	for (i = 0; i < b->pathc; i++)
		mem_deref(b->pathv[i]);
	mem_deref(b->pathv);
}


static void aor_destructor(void *arg)
{
	struct aor *a = arg;

	if (a->he.list) {
		hash_unlink(&a->he);
		--a->loc->naor;
	}
	list_flush(&a->bl);
	mem_deref(a->name);
}


static void loc_destructor(void *arg)
{
	struct loc *loc = arg;

	hash_flush(loc->ht);
	mem_deref(loc->ht);
}


/* the table starts at LOC_BUCKETS and doubles whenever it holds more than
 * two AORs per bucket, up to LOC_BUCKETS_MAX: a registrar with 100000 users
 * must not walk chains of a hundred names per REGISTER */
#define LOC_BUCKETS 1024
#define LOC_BUCKETS_MAX (1u << 22)

struct aor_key {
	uint32_t hk;
	const char *name;
};


static bool aor_cmp(struct le *le, void *arg)
{
	const struct aor *a = le->data;
	const struct aor_key *k = arg;

	return a->hk == k->hk && !strcmp(a->name, k->name);
}


static struct aor *aor_find(const struct loc *loc, const char *name)
{
	struct aor_key k = {hash_joaat_str(name), name};
	struct le *le = hash_lookup(loc->ht, k.hk, aor_cmp, &k);

	return le ? le->data : NULL;
}


/* move every AOR into a table of bsize buckets; on ENOMEM keep the old */
static void loc_rehash(struct loc *loc, uint32_t bsize)
{
	struct hash *ht;
	uint32_t i;

	if (hash_alloc(&ht, bsize))
		return;
	for (i = 0; i < hash_bsize(loc->ht); i++) {
		struct list *lst = hash_list(loc->ht, i);
		struct le *le;

		while ((le = list_head(lst))) {
			struct aor *a = le->data;

			hash_unlink(&a->he);
			hash_append(ht, a->hk, &a->he, a);
		}
	}
	mem_deref(loc->ht);
	loc->ht = ht;
}


static struct aor *aor_get(struct loc *loc, const char *name)
{
	struct aor *a = aor_find(loc, name);
	uint32_t bsize;

	if (a)
		return a;

	a = mem_zalloc(sizeof(*a), aor_destructor);
	if (!a)
		return NULL;
	a->loc = loc;
	if (str_dup(&a->name, name)) {
		mem_deref(a);
		return NULL;
	}
	a->hk = hash_joaat_str(name);
	hash_append(loc->ht, a->hk, &a->he, a);
	++loc->naor;

	bsize = hash_bsize(loc->ht);
	if (loc->naor > 2 * bsize && bsize < LOC_BUCKETS_MAX)
		loc_rehash(loc, bsize * 4);
	return a;
}


static void aor_gc(struct aor *a)
{
	if (a && list_isempty(&a->bl))
		mem_deref(a);
}


static struct bnd *bnd_find(const struct aor *a, const char *key)
{
	struct le *le;

	for (le = a ? list_head(&a->bl) : NULL; le; le = le->next) {
		struct bnd *b = le->data;

		if (!strcmp(b->key, key))
			return b;
	}
	return NULL;
}


/* drop a binding (and its AOR when it was the last) */
static void bnd_drop(struct bnd *b)
{
	struct aor *a = b->aor;

	mem_deref(b);
	--a->loc->n;
	aor_gc(a);
}


static void bnd_timeout(void *arg)
{
	struct bnd *b = arg;
	struct loc *loc = b->aor->loc;

	/* the clock may run a millisecond behind the timer heap */
	if (b->expires > loc_now() + 0.002) {
		tmr_start(&b->tmr, (uint64_t)((b->expires - loc_now()) * 1000)
			  + 1, bnd_timeout, b);
		return;
	}
	++loc->expired;
	bnd_drop(b);
}


static void bnd_arm(struct bnd *b)
{
	double d = (b->expires - loc_now()) * 1000;

	if (d < 0)
		d = 0;
	if (d > 1e12)
		d = 1e12;
	tmr_start(&b->tmr, (uint64_t)d + 1, bnd_timeout, b);
}


/* a new binding of aor a with key (unlinked from nothing yet) */
static struct bnd *bnd_new(struct aor *a, const char *key, size_t keyl)
{
	struct bnd *b = mem_zalloc(sizeof(*b), bnd_destructor);

	if (!b)
		return NULL;
	b->aor = a;
	tmr_init(&b->tmr);
	b->key = mem_alloc(keyl + 1, NULL);
	if (!b->key)
		return mem_deref(b);
	memcpy(b->key, key, keyl);
	b->key[keyl] = '\0';
	return b;
}


/* put b (replacing the binding with its key) */
static void bnd_put(struct aor *a, struct bnd *b)
{
	struct bnd *old = bnd_find(a, b->key);

	if (old)
		mem_deref(old);
	else
		++a->loc->n;
	list_append(&a->bl, &b->le, b);
	bnd_arm(b);
}


/* ---- Lua side of the table (the memory store's get/put/...) ---- */

static struct loc *loc_check(lua_State *L, int idx)
{
	struct loc **box = lsip_checkbox(L, idx, LOC_MT);

	if (!*box)
		luaL_error(L, "location table closed");
	return *box;
}


static void setstr(lua_State *L, const char *field, const char *s)
{
	if (!s)
		return;
	lua_pushstring(L, s);
	lua_setfield(L, -2, field);
}


static void setnum(lua_State *L, const char *field, double v)
{
	if (v == floor(v) && fabs(v) < 9e15)
		lua_pushinteger(L, (lua_Integer)v);
	else
		lua_pushnumber(L, v);
	lua_setfield(L, -2, field);
}


static void push_path(lua_State *L, const struct bnd *b)
{
	uint32_t i;

	if (!b->pathc)
		return;
	lua_createtable(L, (int)b->pathc, 0);
	for (i = 0; i < b->pathc; i++) {
		lua_pushstring(L, b->pathv[i]);
		lua_rawseti(L, -2, i + 1);
	}
	lua_setfield(L, -2, "path");
}


/* the store's binding table */
static void push_bnd(lua_State *L, const struct bnd *b)
{
	lua_createtable(L, 0, 14);
	setstr(L, "key", b->key);
	setstr(L, "uri", b->uri);
	setstr(L, "params", b->params);
	if (b->has_q)
		setnum(L, "q", b->q);
	lua_pushnumber(L, b->expires);
	lua_setfield(L, -2, "expires");
	setstr(L, "call_id", b->call_id);
	if (b->has_cseq)
		setnum(L, "cseq", b->cseq);
	setstr(L, "received", b->received);
	setstr(L, "transport", b->transport);
	setstr(L, "user_agent", b->user_agent);
	setstr(L, "instance", b->instance);
	if (b->has_reg_id) {
		lua_pushinteger(L, b->reg_id);
		lua_setfield(L, -2, "reg_id");
	}
	lua_pushnumber(L, b->updated);
	lua_setfield(L, -2, "updated");
	push_path(L, b);
}


/* loc:get(aor) -> list of bindings */
static int l_loc_get(lua_State *L)
{
	struct loc *loc = loc_check(L, 1);
	const struct aor *a = aor_find(loc, luaL_checkstring(L, 2));
	struct le *le;
	int i = 0;

	lua_newtable(L);
	for (le = a ? list_head(&a->bl) : NULL; le; le = le->next) {
		push_bnd(L, le->data);
		lua_rawseti(L, -2, ++i);
	}
	return 1;
}


static int optstr(lua_State *L, int t, const char *field, char **dst)
{
	int err = 0;

	switch (lua_getfield(L, t, field)) {

	case LUA_TNIL:
		break;

	case LUA_TSTRING:
	case LUA_TNUMBER:
		err = str_dup(dst, lua_tostring(L, -1));
		break;

	default:
		lua_pop(L, 1);
		return luaL_error(L, "put: binding.%s: string expected, "
				  "got %s", field, luaL_typename(L, -1));
	}
	lua_pop(L, 1);
	return err;
}


static bool optnum(lua_State *L, int t, const char *field, double *v)
{
	bool ok = false;

	if (lua_getfield(L, t, field) == LUA_TNUMBER) {
		*v = lua_tonumber(L, -1);
		ok = true;
	}
	else if (!lua_isnil(L, -1)) {
		luaL_error(L, "put: binding.%s: number expected, got %s",
			   field, luaL_typename(L, -1));
	}
	lua_pop(L, 1);
	return ok;
}


/* loc:put(aor, binding) -> true */
static int l_loc_put(lua_State *L)
{
	struct loc *loc = loc_check(L, 1);
	const char *name = luaL_checkstring(L, 2);
	struct aor *a;
	struct bnd *b;
	size_t keyl;
	const char *key;
	double v;
	int err = 0;

	luaL_checktype(L, 3, LUA_TTABLE);
	lua_getfield(L, 3, "key");
	key = lua_tolstring(L, -1, &keyl);
	if (lua_type(L, -1) != LUA_TSTRING)
		return luaL_error(L, "bad argument #2 to 'put' (binding with "
				  "a key expected)");
	if (!optnum(L, 3, "expires", &v))
		return luaL_error(L, "put: binding.expires: number expected");

	a = aor_get(loc, name);
	b = a ? bnd_new(a, key, keyl) : NULL;
	if (!b) {
		aor_gc(a);
		return lsip_fail(L, ENOMEM, "put");
	}
	b->expires = v;
	b->has_q = optnum(L, 3, "q", &b->q);
	b->has_cseq = optnum(L, 3, "cseq", &v);
	if (b->has_cseq)
		b->cseq = (uint32_t)v;
	b->has_reg_id = optnum(L, 3, "reg_id", &v);
	if (b->has_reg_id)
		b->reg_id = (lua_Integer)v;
	if (!optnum(L, 3, "updated", &b->updated))
		b->updated = 0;

	err |= optstr(L, 3, "uri", &b->uri);
	err |= optstr(L, 3, "params", &b->params);
	err |= optstr(L, 3, "call_id", &b->call_id);
	err |= optstr(L, 3, "received", &b->received);
	err |= optstr(L, 3, "transport", &b->transport);
	err |= optstr(L, 3, "user_agent", &b->user_agent);
	err |= optstr(L, 3, "instance", &b->instance);

	if (lua_getfield(L, 3, "path") == LUA_TTABLE) {
		lua_Integer i, n = luaL_len(L, -1);

		if (n > 0 && n < 1000) {
			b->pathv = mem_zalloc((size_t)n * sizeof(char *),
					      NULL);
			if (!b->pathv)
				err |= ENOMEM;
			for (i = 1; b->pathv && i <= n; i++) {
				lua_geti(L, -1, i);
				if (lua_type(L, -1) == LUA_TSTRING)
					err |= str_dup(&b->pathv[b->pathc++],
						       lua_tostring(L, -1));
				lua_pop(L, 1);
			}
		}
	}
	lua_pop(L, 1);

	if (err || !b->uri) {
		mem_deref(b);
		aor_gc(a);
		if (!err)
			return luaL_error(L, "put: binding.uri: string "
					  "expected");
		return lsip_fail(L, ENOMEM, "put");
	}

	bnd_put(a, b);
	lua_pushboolean(L, 1);
	return 1;
}


/* loc:remove(aor, key) -> true */
static int l_loc_remove(lua_State *L)
{
	struct loc *loc = loc_check(L, 1);
	struct aor *a = aor_find(loc, luaL_checkstring(L, 2));
	struct bnd *b = bnd_find(a, luaL_checkstring(L, 3));

	lua_pushboolean(L, b != NULL);
	if (b)
		bnd_drop(b);
	return 1;
}


/* loc:remove_all(aor) -> number removed */
static int l_loc_remove_all(lua_State *L)
{
	struct loc *loc = loc_check(L, 1);
	struct aor *a = aor_find(loc, luaL_checkstring(L, 2));
	uint32_t n = a ? list_count(&a->bl) : 0;

	loc->n -= n;
	mem_deref(a);
	lua_pushinteger(L, n);
	return 1;
}


/* loc:expire(now) -> removed (also by the timers since the last call) */
static int l_loc_expire(lua_State *L)
{
	struct loc *loc = loc_check(L, 1);
	double now = luaL_checknumber(L, 2);
	uint32_t i, removed = loc->expired;
	struct le *le, *next;

	loc->expired = 0;
	for (i = 0; i < hash_bsize(loc->ht); i++) {
		for (le = list_head(hash_list(loc->ht, i)); le; le = next) {
			struct aor *a = le->data;
			struct le *ble, *bnext;

			next = le->next;
			for (ble = list_head(&a->bl); ble; ble = bnext) {
				struct bnd *b = ble->data;

				bnext = ble->next;
				if (b->expires <= now) {
					mem_deref(b);
					--loc->n;
					++removed;
				}
			}
			aor_gc(a);
		}
	}

	lua_pushinteger(L, removed);
	return 1;
}


static int l_loc_count(lua_State *L)
{
	lua_pushinteger(L, loc_check(L, 1)->n);
	return 1;
}


/* loc:aor_list() -> unsorted list of AORs */
static int l_loc_aors(lua_State *L)
{
	struct loc *loc = loc_check(L, 1);
	struct le *le;
	uint32_t i;
	int n = 0;

	lua_newtable(L);
	for (i = 0; i < hash_bsize(loc->ht); i++) {
		for (le = list_head(hash_list(loc->ht, i)); le;
		     le = le->next) {
			const struct aor *a = le->data;

			lua_pushstring(L, a->name);
			lua_rawseti(L, -2, ++n);
		}
	}
	return 1;
}


/* loc:on_change(fn|nil): called (no arguments) after each change the C
 * path makes (the file store marks itself dirty) */
static int l_loc_on_change(lua_State *L)
{
	struct loc *loc = loc_check(L, 1);

	lsip_unpin(L, &loc->changed);
	if (!lua_isnoneornil(L, 2)) {
		luaL_checktype(L, 2, LUA_TFUNCTION);
		loc->changed = lsip_pin(L, 2);
	}
	return 0;
}


static int l_loc_gc(lua_State *L)
{
	struct loc **box = lsip_checkbox(L, 1, LOC_MT);
	struct loc *loc = *box;

	if (loc) {
		lsip_unpin(L, &loc->changed);
		hash_flush(loc->ht);     /* also when a registrar holds it */
		loc->n = 0;
	}
	*box = mem_deref(loc);
	return 0;
}


/* core.location_table() -> table */
static int l_loc_new(lua_State *L)
{
	struct loc *loc = mem_zalloc(sizeof(*loc), loc_destructor);

	if (!loc || hash_alloc(&loc->ht, LOC_BUCKETS)) {
		mem_deref(loc);
		return lsip_fail(L, ENOMEM, "location");
	}
	loc->changed = LUA_NOREF;
	lsip_newbox(L, loc, LOC_MT);
	return 1;
}


static int l_loc_now(lua_State *L)
{
	lua_pushnumber(L, loc_now());
	return 1;
}


/* ---- SIP URIs, as registrar.lua's parse_uri ---- */

struct puri {
	struct pl scheme, user, pw, host, port, params, headers;
	bool sip;              /* sip/sips: has a host */
	bool has_user, has_pw, has_headers;
};


static bool is_alpha(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}


static bool is_digit(char c)
{
	return c >= '0' && c <= '9';
}


static bool is_hostc(char c)
{
	return is_alpha(c) || is_digit(c) || c == '.' || c == '-';
}


static int uri_parse(struct puri *u, const struct pl *s)
{
	const char *p = s->p, *end = s->p + s->l, *q, *at = NULL;
	const char *bend;

	memset(u, 0, sizeof(*u));
	if (!s->l || !is_alpha(*p))
		return EBADMSG;
	for (q = p + 1; q < end && (is_alpha(*q) || is_digit(*q) ||
				    *q == '+' || *q == '.' || *q == '-'); q++)
		;
	if (q >= end || *q != ':' || q + 1 >= end)
		return EBADMSG;
	u->scheme.p = p;
	u->scheme.l = q - p;
	p = q + 1;

	if (pl_strcasecmp(&u->scheme, "sip") &&
	    pl_strcasecmp(&u->scheme, "sips")) {
		u->params.p = p;        /* the opaque part */
		u->params.l = end - p;
		return 0;
	}
	u->sip = true;

	bend = memchr(p, '?', end - p);
	if (bend) {
		u->headers.p = bend + 1;
		u->headers.l = end - bend - 1;
		u->has_headers = true;
	}
	else {
		bend = end;
	}

	for (q = p; q < bend; q++)
		if (*q == '@')
			at = q;
	if (at) {
		const char *colon;

		if (at == p)
			return EBADMSG;
		u->has_user = true;
		colon = memchr(p, ':', at - p);
		if (colon) {
			u->user.p = p;
			u->user.l = colon - p;
			u->pw.p = colon + 1;
			u->pw.l = at - colon - 1;
			u->has_pw = true;
		}
		else {
			u->user.p = p;
			u->user.l = at - p;
		}
		p = at + 1;
	}

	q = p;
	if (q < bend && *q == '[') {
		for (++q; q < bend && (isxdigit((unsigned char)*q) ||
				       *q == ':' || *q == '.'); q++)
			;
		if (q >= bend || *q != ']' || q == p + 1)
			return EBADMSG;
		++q;
	}
	else {
		while (q < bend && is_hostc(*q))
			++q;
	}
	if (q == p)
		return EBADMSG;
	u->host.p = p;
	u->host.l = q - p;
	p = q;

	if (p < bend && *p == ':' && p + 1 < bend && is_digit(p[1])) {
		uint32_t port = 0;

		for (q = p + 1; q < bend && is_digit(*q); q++) {
			port = port * 10 + (uint32_t)(*q - '0');
			if (port > 65535)
				return EBADMSG;
		}
		u->port.p = p + 1;
		u->port.l = q - p - 1;
		p = q;
	}
	if (p < bend && *p != ';')
		return EBADMSG;
	u->params.p = p;
	u->params.l = bend - p;
	return 0;
}


static int hexval(char c)
{
	if (is_digit(c))
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}


/* print pl %XX-unescaped, optionally in lower case */
static int mb_unesc(struct mbuf *mb, const struct pl *pl, bool lower)
{
	char buf[128];
	size_t i, n = 0;
	int err = 0;

	for (i = 0; i < pl->l && !err; i++) {
		char c = pl->p[i];

		if (c == '%' && i + 2 < pl->l && hexval(pl->p[i + 1]) >= 0 &&
		    hexval(pl->p[i + 2]) >= 0) {
			c = (char)(hexval(pl->p[i + 1]) << 4 |
				   hexval(pl->p[i + 2]));
			i += 2;
		}
		if (lower && c >= 'A' && c <= 'Z')
			c = (char)(c + 32);
		buf[n++] = c;
		if (n == sizeof(buf)) {
			err = mbuf_write_mem(mb, (uint8_t *)buf, n);
			n = 0;
		}
	}
	return err ? err : mbuf_write_mem(mb, (uint8_t *)buf, n);
}


static int mb_lower(struct mbuf *mb, const struct pl *pl)
{
	char buf[128];
	size_t i, n = 0;
	int err = 0;

	for (i = 0; i < pl->l && !err; i++) {
		char c = pl->p[i];

		buf[n++] = (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
		if (n == sizeof(buf)) {
			err = mbuf_write_mem(mb, (uint8_t *)buf, n);
			n = 0;
		}
	}
	return err ? err : mbuf_write_mem(mb, (uint8_t *)buf, n);
}


/* AOR: scheme:user@host (user unescaped, scheme and host lower case) */
static int aor_print(struct mbuf *mb, const struct puri *u)
{
	int err = mb_lower(mb, &u->scheme);

	err |= mbuf_write_u8(mb, ':');
	if (u->has_user) {
		err |= mb_unesc(mb, &u->user, false);
		err |= mbuf_write_u8(mb, '@');
	}
	err |= mb_lower(mb, &u->host);
	return err;
}


/* the last value of URI parameter name (lower-case name), as Lua's table */
static bool uparam(const struct pl *params, const char *name, struct pl *val,
		   bool *flag)
{
	const char *p = params->p, *end = params->p + params->l;
	bool found = false;

	while (p < end) {
		const char *s, *e, *eq;
		struct pl k;

		while (p < end && *p == ';')
			++p;
		if (p >= end)
			break;
		s = p;
		e = memchr(p, ';', end - p);
		if (!e)
			e = end;
		p = e;
		eq = memchr(s, '=', e - s);
		k.p = s;
		k.l = (eq && eq > s ? eq : e) - s;
		if (eq == s) {          /* "=x": Lua's [^=]+ fails: a flag */
			k.l = e - s;
		}
		if (!pl_strcasecmp(&k, name)) {
			found = true;
			if (eq && eq > s) {
				val->p = eq + 1;
				val->l = e - eq - 1;
				*flag = false;
			}
			else {
				*flag = true;
			}
		}
	}
	return found;
}


static const char *const cmp_params[] = {
	"maddr", "method", "transport", "ttl", "user"
};


struct hv {
	struct pl k, v;
};


static int bytes_cmp(const struct pl *a, const struct pl *b, bool nocase)
{
	size_t i, n = a->l < b->l ? a->l : b->l;

	for (i = 0; i < n; i++) {
		int x = (unsigned char)a->p[i], y = (unsigned char)b->p[i];

		if (nocase) {
			x = tolower(x);
			y = tolower(y);
		}
		if (x != y)
			return x - y;
	}
	return a->l < b->l ? -1 : a->l > b->l;
}


/* order of the printed "k=v" pieces (by lower-case key, then value) */
static int hv_cmp(const void *a, const void *b)
{
	const struct hv *x = a, *y = b;
	int r = bytes_cmp(&x->k, &y->k, true);

	return r ? r : bytes_cmp(&x->v, &y->v, false);
}


/* comparison key of a contact URI (registrar.lua's contact_key) */
static int key_print(struct mbuf *mb, const struct puri *u)
{
	size_t i;
	int err;

	err = mb_lower(mb, &u->scheme);
	err |= mbuf_write_u8(mb, ':');
	if (!u->sip)
		return err | mbuf_write_pl(mb, &u->params);

	if (u->has_user) {
		err |= mb_unesc(mb, &u->user, false);
		if (u->has_pw) {
			err |= mbuf_write_u8(mb, ':');
			err |= mb_unesc(mb, &u->pw, false);
		}
		err |= mbuf_write_u8(mb, '@');
	}
	err |= mb_lower(mb, &u->host);
	if (pl_isset(&u->port)) {
		/* Lua prints tonumber(port): no leading zeros */
		err |= mbuf_printf(mb, ":%u", pl_u32(&u->port));
	}
	for (i = 0; i < sizeof(cmp_params) / sizeof(cmp_params[0]); i++) {
		struct pl v;
		bool flag;

		if (!uparam(&u->params, cmp_params[i], &v, &flag))
			continue;
		err |= mbuf_printf(mb, ";%s", cmp_params[i]);
		if (!flag) {
			err |= mbuf_write_u8(mb, '=');
			err |= mb_unesc(mb, &v, true);
		}
	}
	if (u->has_headers && u->headers.l) {
		struct hv hv[16];
		size_t n = 0;
		const char *p = u->headers.p, *end = p + u->headers.l;

		while (p < end) {
			const char *e = memchr(p, '&', end - p), *eq;

			if (!e)
				e = end;
			if (e > p) {
				if (n == 16)
					return EOVERFLOW;
				eq = memchr(p, '=', e - p);
				hv[n].k.p = p;
				hv[n].k.l = (eq ? eq : e) - p;
				hv[n].v.p = eq ? eq + 1 : e;
				hv[n].v.l = eq ? (size_t)(e - eq - 1) : 0;
				++n;
			}
			p = e + 1;
		}
		qsort(hv, n, sizeof(hv[0]), hv_cmp);
		err |= mbuf_write_u8(mb, '?');
		for (i = 0; i < n; i++) {
			if (i)
				err |= mbuf_write_u8(mb, '&');
			err |= mb_lower(mb, &hv[i].k);
			err |= mbuf_write_u8(mb, '=');
			err |= mb_unesc(mb, &hv[i].v, false);
		}
	}
	return err;
}


/* ---- REGISTER ---- */

struct regc {
	struct loc *loc;
	char **domv;              /* lower case; NULL: any */
	size_t domc;
	char *realm;              /* NULL: the AOR's host */
	struct lsip_digest_cfg dg;
	char *secret;
	uint32_t min, max, def;
	int auth;                 /* lookup function, LUA_NOREF: open */
	int notify;               /* function(aor, bindings) after changes */
	int md5agent;             /* function(user_agent): MD5-only client */
	int thread;               /* coroutine the lookups run in */
	uint64_t requests, ok, failed;
	bool fallback;            /* a lookup needed a task: Lua path */
	bool closed;
};

struct want {
	struct pl uri;            /* as written */
	struct pl key;            /* into kbuf */
	struct pl rest;           /* other params, into kbuf */
	uint64_t expires;
	double q;
	bool has_exp, has_q, has_rest;
};

struct rctx {
	struct regc *r;
	const struct sip_msg *msg;
	struct sip *sip;
	struct sip_strans *own;   /* the transaction (hook path) */
	struct sip_strans **stp;
	struct lsip_req *req;     /* req:handle path */
	lua_State *L;             /* thread to call Lua on */
	const char *ua;           /* Server header, or NULL */
	uint16_t status;
	bool fallback;
	bool changed;
	char aor[512];
};


static struct mbuf *hb;           /* response headers, reused */
static struct mbuf *kb;           /* keys and params, reused */


static void regc_destructor(void *arg)
{
	struct regc *r = arg;
	size_t i;

	for (i = 0; i < r->domc; i++)
		mem_deref(r->domv[i]);
	mem_deref(r->domv);
	mem_deref(r->realm);
	if (r->secret)
		memset(r->secret, 0, r->dg.secretl);
	mem_deref(r->secret);
	lsip_digest_cfg_reset(&r->dg);
	mem_deref(r->loc);
}


static int write_u(struct mbuf *mb, uint64_t v, unsigned base, int width)
{
	static const char digits[] = "0123456789abcdef";
	char buf[24];
	int n = 0;

	do {
		buf[sizeof(buf) - 1 - n++] = digits[v % base];
		v /= base;
	} while (v || n < width);
	return mbuf_write_mem(mb, (uint8_t *)buf + sizeof(buf) - n, n);
}


static int write_hdr(struct mbuf *mb, const struct sip_hdr *hdr)
{
	int err = mbuf_write_pl(mb, &hdr->name);

	err |= mbuf_write_mem(mb, (const uint8_t *)": ", 2);
	err |= mbuf_write_pl(mb, &hdr->val);
	return err;
}


/*
 * The response to msg, as libre's sip_treplyf writes it (status line,
 * Via with rport/received, To with a tag, From, Call-ID, CSeq, Server)
 * but with plain copies instead of formatted printing; then the headers
 * in hb. Sets *rportp as sip_reply_addr wants it.
 */
static int resp_build(struct mbuf *mb, const struct rctx *c, uint16_t code,
		      const char *reason, bool *rportp)
{
	const struct sip_msg *msg = c->msg;
	struct le *le;
	uint32_t viac = 0;
	int err;

	err = mbuf_write_str(mb, "SIP/2.0 ");
	err |= write_u(mb, code, 10, 1);
	err |= mbuf_write_u8(mb, ' ');
	err |= mbuf_write_str(mb, reason);
	err |= mbuf_write_str(mb, "\r\n");

	for (le = msg->hdrl.head; le; le = le->next) {
		const struct sip_hdr *hdr = le->data;
		struct pl rp;
		char ip[64];

		switch (hdr->id) {

		case SIP_HDR_VIA:
			err |= mbuf_write_pl(mb, &hdr->name);
			err |= mbuf_write_mem(mb, (const uint8_t *)": ", 2);
			if (viac++) {
				err |= mbuf_write_pl(mb, &hdr->val);
				err |= mbuf_write_str(mb, "\r\n");
				break;
			}
			if (!msg_param_exists(&msg->via.params, "rport", &rp)) {
				err |= mbuf_write_pl_skip(mb, &hdr->val, &rp);
				err |= mbuf_write_str(mb, ";rport=");
				err |= write_u(mb, sa_port(&msg->src), 10, 1);
				*rportp = true;
			}
			else {
				err |= mbuf_write_pl(mb, &hdr->val);
			}
			if (*rportp || !sa_cmp(&msg->src, &msg->via.addr,
					       SA_ADDR)) {
				err |= sa_ntop(&msg->src, ip, sizeof(ip));
				err |= mbuf_write_str(mb, ";received=");
				err |= mbuf_write_str(mb, ip);
			}
			err |= mbuf_write_str(mb, "\r\n");
			break;

		case SIP_HDR_TO:
			err |= write_hdr(mb, hdr);
			if (!pl_isset(&msg->to.tag) && code > 100) {
				err |= mbuf_write_str(mb, ";tag=");
				err |= write_u(mb, msg->tag, 16, 16);
			}
			err |= mbuf_write_str(mb, "\r\n");
			break;

		case SIP_HDR_FROM:
		case SIP_HDR_CALL_ID:
		case SIP_HDR_CSEQ:
			err |= write_hdr(mb, hdr);
			err |= mbuf_write_str(mb, "\r\n");
			break;

		default:
			break;
		}
	}

	if (c->ua) {
		err |= mbuf_write_str(mb, "Server: ");
		err |= mbuf_write_str(mb, c->ua);
		err |= mbuf_write_str(mb, "\r\n");
	}
	err |= mbuf_write_mem(mb, hb->buf, hb->end);
	err |= mbuf_write_str(mb, "Content-Length: 0\r\n\r\n");
	mb->pos = 0;
	return err;
}


/* send the answer; the headers are in hb (possibly empty) */
static uint16_t reply(struct rctx *c, uint16_t code, const char *reason)
{
	struct mbuf *mb;
	struct sa dst;
	bool rport = false;
	int err;

	if (code >= 300)
		++c->r->failed;

	/* over UDP without a libre transaction: done.c keeps the bytes */
	if (!c->stp && lsip_done_cacheable(c->msg)) {
		mb = mbuf_alloc(512 + hb->end);
		err = mb ? resp_build(mb, c, code, reason, &rport) : ENOMEM;
		if (!err) {
			sip_reply_addr(&dst, c->msg, rport);
			err = lsip_done_reply(c->sip, c->msg, &dst, mb);
		}
		mem_deref(mb);
		c->status = err ? 999 : code;
		return code;
	}

	if (!c->stp) {
		err = sip_strans_alloc(&c->own, c->sip, c->msg, NULL, NULL);
		if (err) {
			(void)sip_reply(c->sip, c->msg, 503,
					"Service Unavailable");
			c->status = 503;
			return 503;
		}
		c->stp = &c->own;
	}

	mb = mbuf_alloc(512 + hb->end);
	err = mb ? resp_build(mb, c, code, reason, &rport) : ENOMEM;
	if (!err) {
		sip_reply_addr(&dst, c->msg, rport);
		err = sip_strans_reply(c->stp, c->sip, c->msg, &dst, code, mb);
	}
	mem_deref(mb);
	if (err)
		*c->stp = mem_deref(*c->stp);

	c->status = err ? 999 : code;
	if (c->req)
		lsip_req_set_status(c->req, c->status);
	return code;
}


static uint16_t reply_warn(struct rctx *c, uint16_t code, const char *reason,
			   const char *warning)
{
	mbuf_rewind(hb);
	(void)mbuf_printf(hb, "Warning: 399 luasip \"%s\"\r\n", warning);
	return reply(c, code, reason);
}


static uint16_t reply_plain(struct rctx *c, uint16_t code, const char *reason)
{
	mbuf_rewind(hb);
	return reply(c, code, reason);
}


/* Lua's "[^,%s]+" tokens of every value of header id: fn per token */
typedef bool (tok_h)(const struct pl *tok, void *arg);

static bool hdr_tokens(const struct sip_msg *msg, enum sip_hdrid id,
		       tok_h *th, void *arg)
{
	struct le *le;

	for (le = list_head(hash_list(msg->hdrht, id)); le; le = le->next) {
		const struct sip_hdr *hdr = le->data;
		const char *p, *end;

		if (hdr->id != id)
			continue;
		p = hdr->val.p;
		end = p + hdr->val.l;
		while (p < end) {
			struct pl t;

			while (p < end && (*p == ',' || isspace((unsigned char)*p)))
				++p;
			t.p = p;
			while (p < end && *p != ',' && !isspace((unsigned char)*p))
				++p;
			t.l = p - t.p;
			if (t.l && th(&t, arg))
				return true;
		}
	}
	return false;
}


static bool unsupported(const struct pl *tok, void *arg)
{
	struct mbuf *mb = arg;

	if (!pl_strcasecmp(tok, "path"))
		return false;
	if (mb->end)
		(void)mbuf_write_str(mb, ", ");
	(void)mbuf_write_pl(mb, tok);
	return false;
}


static bool is_path(const struct pl *tok, void *arg)
{
	(void)arg;
	return !pl_strcasecmp(tok, "path");
}


/* first header line of id, as written */
static const struct sip_hdr *hdr_first(const struct sip_msg *msg,
				       enum sip_hdrid id)
{
	struct le *le;

	for (le = list_head(&msg->hdrl); le; le = le->next) {
		const struct sip_hdr *hdr = le->data;

		if (hdr->id == id)
			return hdr;
	}
	return NULL;
}


static void trim(struct pl *pl)
{
	while (pl->l && isspace((unsigned char)pl->p[0])) {
		++pl->p;
		--pl->l;
	}
	while (pl->l && isspace((unsigned char)pl->p[pl->l - 1]))
		--pl->l;
}


static bool all_digits(const struct pl *pl)
{
	size_t i;

	if (!pl->l)
		return false;
	for (i = 0; i < pl->l; i++)
		if (!is_digit(pl->p[i]))
			return false;
	return true;
}


static uint64_t sat_u32(const struct pl *pl)
{
	uint64_t v = 0;
	size_t i;

	for (i = 0; i < pl->l; i++) {
		v = v * 10 + (uint64_t)(pl->p[i] - '0');
		if (v > MAX_EXPIRES_VALUE)
			return MAX_EXPIRES_VALUE;
	}
	return v;
}


/* qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] ), as the
 * Lua patterns accept it ("0", "0.", "05" are taken too) */
static bool qvalue(const struct pl *v, double *q)
{
	size_t i = 1, nd = 0;
	char buf[8];

	if (!v->l || v->l > 5 || (v->p[0] != '0' && v->p[0] != '1'))
		return false;
	if (i < v->l && v->p[i] == '.')
		++i;
	for (; i < v->l; i++, nd++) {
		if (!is_digit(v->p[i]) || nd >= 3)
			return false;
		if (v->p[0] == '1' && v->p[i] != '0')
			return false;
	}
	/* "0" then "." optional: "0" + up to 3 digits also matches */
	memcpy(buf, v->p, v->l);
	buf[v->l] = '\0';
	*q = strtod(buf, NULL);
	return true;
}


/*
 * contact parameters (registrar.lua's contact_params): expires and q
 * taken out, the rest appended to kb as ";a;b=c"; returns a reason on
 * error
 */
static const char *contact_params(const struct pl *params, struct want *w)
{
	const char *p = params->p, *end = params->p + params->l;
	size_t start = kb->end;

	while (p < end) {
		const char *e = memchr(p, ';', end - p), *eq;
		struct pl item, k, v;

		if (!e)
			e = end;
		item.p = p;
		item.l = e - p;
		p = e + 1;
		if (!item.l)
			continue;

		eq = memchr(item.p, '=', item.l);
		k.p = item.p;
		k.l = (eq ? eq : item.p + item.l) - item.p;
		trim(&k);
		if (eq) {
			v.p = eq + 1;
			v.l = item.p + item.l - v.p;
			trim(&v);
		}
		/* Lua: k must be non-empty without blanks, else the whole
		 * trimmed item is the name */
		if (eq && (!k.l || memchr(k.p, ' ', k.l) ||
			   memchr(k.p, '\t', k.l))) {
			k = item;
			trim(&k);
			eq = NULL;
		}

		if (!pl_strcasecmp(&k, "expires")) {
			if (!eq || !all_digits(&v))
				return "Invalid Contact expires";
			w->expires = sat_u32(&v);
			w->has_exp = true;
		}
		else if (!pl_strcasecmp(&k, "q")) {
			if (!eq || !qvalue(&v, &w->q))
				return "Invalid Contact q";
			w->has_q = true;
		}
		else if (k.l) {
			(void)mbuf_write_u8(kb, ';');
			(void)mb_lower(kb, &k);
			if (eq) {
				(void)mbuf_write_u8(kb, '=');
				(void)mbuf_write_pl(kb, &v);
			}
		}
	}

	if (kb->end > start) {
		w->has_rest = true;
		w->rest.p = (const char *)(uintptr_t)start;   /* offset */
		w->rest.l = kb->end - start;
	}
	return NULL;
}


/* ---- password lookup: the script's function, in a coroutine ---- */

struct lookup {
	struct rctx *c;
	const char *realm;
	bool yield;               /* needs a task: Lua path */
};


/*
 * Is the client one that copes with MD5 challenges only (luasip.auth's
 * md5_agents patterns, matched in Lua: called only when the REGISTER has
 * a User-Agent and several algorithms are offered)
 */
static bool md5_agent(struct rctx *c)
{
	struct regc *r = c->r;
	const struct sip_hdr *ua;
	lua_State *L = c->L;
	int top = lua_gettop(L);
	bool yes;

	if (r->md5agent == LUA_NOREF || r->dg.offerc < 2)
		return false;
	ua = sip_msg_hdr(c->msg, SIP_HDR_USER_AGENT);
	if (!ua || !lsip_push_ref(L, r->md5agent))
		return false;
	lua_pushlstring(L, ua->val.p, ua->val.l);
	yes = lua_pcall(L, 1, 1, 0) == LUA_OK && lua_toboolean(L, -1);
	lua_settop(L, top);
	return yes;
}


static void md5_only(struct lsip_digest_cfg *cfg)
{
	int md5 = lsip_digest_alg("MD5");
	int i;

	for (i = 0; i < cfg->offerc; i++) {
		if (cfg->offer[i] == md5) {
			cfg->offer[0] = md5;
			cfg->offerc = 1;
			return;
		}
	}
}


static int ha1_handler(char *hex, size_t sz, size_t algi, const char *user,
		       void *arg)
{
	static const char *const fields[] = {
		"ha1", "ha1_sha256", "ha1_sha512_256"
	};
	struct lookup *lk = arg;
	struct regc *r = lk->c->r;
	lua_State *L = lk->c->L, *co;
	int top = lua_gettop(L), status, nres = 0, err = 0;
	size_t n;
	const char *s;

	/* hook path (inside re_main, on the main thread, not in a task):
	 * sched.wait and friends refuse at once ("must be called from a
	 * task"), a bare yield fails: a plain call is safe */
	if (!lk->c->req) {
		if (!lsip_push_ref(L, r->auth))
			return EPROTO;
		lua_pushstring(L, user);
		lua_pushstring(L, lk->realm);
		status = lua_pcall(L, 2, 1, 0);
		co = L;
		nres = 1;
		goto result;
	}

	/* req:handle path, inside a task: in a coroutine that is not a
	 * task, for the same reason */
	if (!lsip_push_ref(L, r->thread) || lua_type(L, -1) != LUA_TTHREAD ||
	    lua_status(lua_tothread(L, -1)) != LUA_OK ||
	    lua_gettop(lua_tothread(L, -1)) != 0) {
		lua_settop(L, top);
		lsip_unpin(L, &r->thread);
		lua_newthread(L);
		r->thread = lsip_pin(L, -1);
	}
	co = lua_tothread(L, -1);

	lsip_push_ref(co, r->auth);
	lua_pushstring(co, user);
	lua_pushstring(co, lk->realm);
	status = lua_resume(co, L, 2, &nres);

 result:
	if (status == LUA_YIELD) {
		lk->yield = true;
		err = EAGAIN;
		goto drop;
	}
	if (status != LUA_OK) {
		s = lua_tostring(co, -1);
		if (s && (strstr(s, "must be called from a task") ||
			  strstr(s, "attempt to yield")))
			lk->yield = true;
		else
			re_fprintf(stderr, "luasip.registrar: auth: %s\n",
				   s ? s : "error");
		err = EAGAIN;
		goto drop;
	}

	switch (nres ? lua_type(co, -nres) : LUA_TNIL) {

	case LUA_TNIL:
		err = ENOENT;
		break;

	case LUA_TBOOLEAN:
		err = lua_toboolean(co, -nres) ? EPROTO : ENOENT;
		break;

	case LUA_TSTRING:
		s = lua_tolstring(co, -nres, &n);
		err = lsip_digest_ha1(hex, sz, algi, user, lk->realm, s, n);
		break;

	case LUA_TTABLE:
		lua_getfield(co, -nres, fields[algi]);
		if (lua_isnil(co, -1)) {
			lua_pop(co, 1);
			lua_getfield(co, -nres, "password");
			if (lua_type(co, -1) == LUA_TSTRING) {
				s = lua_tolstring(co, -1, &n);
				err = lsip_digest_ha1(hex, sz, algi, user,
						      lk->realm, s, n);
				break;
			}
			err = EACCES;
			break;
		}
		if (lua_type(co, -1) != LUA_TSTRING) {
			err = EACCES;
			break;
		}
		s = lua_tolstring(co, -1, &n);
		if (n + 1 > sz) {
			err = EACCES;
			break;
		}
		for (size_t i = 0; i <= n; i++)
			hex[i] = (char)tolower((unsigned char)s[i]);
		break;

	default:
		re_fprintf(stderr, "luasip.registrar: auth returned %s "
			   "(password, { ha1 = ... } or nil expected)\n",
			   luaL_typename(co, -nres));
		err = EPROTO;
		break;
	}
	if (co != L)
		lua_settop(co, 0);
	lua_settop(L, top);
	return err;

 drop:
	/* a coroutine that failed or is suspended is not reused */
	lua_settop(L, top);
	if (co != L)
		lsip_unpin(L, &r->thread);
	return err;
}


/* Warning text of a 403: the user with control chars, '"', '\' -> '?' */
static uint16_t forbidden(struct rctx *c, const char *user)
{
	char buf[300];
	size_t i;

	for (i = 0; user[i] && i + 1 < sizeof(buf); i++) {
		unsigned char ch = (unsigned char)user[i];

		buf[i] = (ch < 32 || ch == 127 || ch == '"' || ch == '\\') ?
			'?' : (char)ch;
	}
	buf[i] = '\0';
	mbuf_rewind(hb);
	(void)mbuf_printf(hb, "Warning: 399 luasip \"%s may not register "
			  "this address\"\r\n", buf);
	return reply(c, 403, "Forbidden");
}


/* steps 3 and 4; false after answering (or when falling back) */
static bool authenticate(struct rctx *c, const struct puri *tu,
			 const char *realm)
{
	struct regc *r = c->r;
	struct lookup lk = { c, realm, false };
	char user[256], aor_user[256];
	struct lsip_digest_cfg cfg = r->dg;
	enum lsip_dg res;
	struct mbuf mbv;

	cfg.realm = realm;
	res = lsip_digest_verify(c->msg, &cfg, ha1_handler, &lk, user,
				 sizeof(user));
	if (lk.yield) {
		c->fallback = true;
		return false;
	}
	if (res == LSIP_DG_ERROR) {
		reply_plain(c, 500, "Server Internal Error");
		return false;
	}
	if (res != LSIP_DG_OK) {
		if (md5_agent(c))
			md5_only(&cfg);
		mbuf_rewind(hb);
		if (lsip_digest_challenge(hb, &cfg, res == LSIP_DG_STALE)) {
			reply_plain(c, 500, "Server Internal Error");
			return false;
		}
		reply(c, 401, "Unauthorized");
		return false;
	}

	/* the authenticated user must be the AOR's (unescaped) user */
	mbuf_init(&mbv);
	mbv.buf = (uint8_t *)aor_user;
	mbv.size = sizeof(aor_user) - 1;
	if (!tu->has_user || mb_unesc(&mbv, &tu->user, false)) {
		forbidden(c, user);
		return false;
	}
	aor_user[mbv.end] = '\0';
	if (strlen(aor_user) != mbv.end || strcmp(aor_user, user)) {
		forbidden(c, user);
		return false;
	}
	return true;
}


static int by_q(const void *a, const void *b)
{
	const struct bnd *x = *(struct bnd *const *)a;
	const struct bnd *y = *(struct bnd *const *)b;
	double qa = x->has_q ? x->q : 1, qb = y->has_q ? y->q : 1;

	if (qa != qb)
		return qa > qb ? -1 : 1;
	if (x->updated != y->updated)
		return x->updated > y->updated ? -1 : 1;
	return strcmp(x->key, y->key);
}


/* live bindings of a, sorted (registrar.lua's live) */
static size_t live(struct bnd **v, size_t max, const struct aor *a,
		   double now)
{
	struct le *le;
	size_t n = 0;

	for (le = a ? list_head(&a->bl) : NULL; le && n < max; le = le->next) {
		struct bnd *b = le->data;

		if (b->expires > now)
			v[n++] = b;
	}
	qsort(v, n, sizeof(*v), by_q);
	return n;
}


static lua_Integer left(const struct bnd *b, double now)
{
	double s = b->expires - now;

	return s <= 0 ? 0 : (lua_Integer)ceil(s - 1e-3);
}


/* Lua's tostring of a number with a fraction: %.14g */
static int print_q(struct re_printf *pf, void *arg)
{
	const double *q = arg;
	char buf[32];

	if (*q == floor(*q))
		(void)snprintf(buf, sizeof(buf), "%d", (int)*q);
	else
		(void)snprintf(buf, sizeof(buf), "%.14g", *q);
	return re_hprintf(pf, "%s", buf);
}


/* bindings as lookup() returns them (registrar.lua's _export) */
static void push_export(lua_State *L, struct bnd **v, size_t n, double now)
{
	size_t i;

	lua_createtable(L, (int)n, 0);
	for (i = 0; i < n; i++) {
		const struct bnd *b = v[i];

		lua_createtable(L, 0, 10);
		setstr(L, "uri", b->uri);
		if (b->has_q)
			setnum(L, "q", b->q);
		lua_pushinteger(L, left(b, now));
		lua_setfield(L, -2, "expires");
		push_path(L, b);
		setstr(L, "received", b->received);
		setstr(L, "transport", b->transport);
		setstr(L, "instance", b->instance);
		setstr(L, "user_agent", b->user_agent);
		setstr(L, "call_id", b->call_id);
		if (b->has_cseq)
			setnum(L, "cseq", b->cseq);
		lua_rawseti(L, -2, (lua_Integer)i + 1);
	}
}


static int pl_dupz(char **dst, const struct pl *pl)
{
	return pl_strdup(dst, pl);
}


/* ";+sip.instance=" value (registrar.lua: ';%+sip%.instance="?([^";]+)"?') */
static int instance_of(char **dst, const char *params)
{
	const char *p = params ? strstr(params, ";+sip.instance=") : NULL;
	struct pl v;

	if (!p)
		return 0;
	p += 15;
	if (*p == '"')
		++p;
	v.p = p;
	while (*p && *p != '"' && *p != ';')
		++p;
	v.l = p - v.p;
	return v.l ? pl_dupz(dst, &v) : 0;
}


static bool reg_id_of(const char *params, lua_Integer *id)
{
	const char *p = params ? strstr(params, ";reg-id=") : NULL;

	if (!p || !is_digit(p[8]))
		return false;
	*id = strtoll(p + 8, NULL, 10);
	return true;
}


static int path_copy(struct bnd *b, const struct sip_msg *msg)
{
	struct le *le;
	uint32_t n = 0;

	for (le = list_head(hash_list(msg->hdrht, SIP_HDR_PATH)); le;
	     le = le->next)
		if (((struct sip_hdr *)le->data)->id == SIP_HDR_PATH)
			++n;
	if (!n)
		return 0;
	b->pathv = mem_zalloc(n * sizeof(char *), NULL);
	if (!b->pathv)
		return ENOMEM;
	for (le = list_head(hash_list(msg->hdrht, SIP_HDR_PATH)); le;
	     le = le->next) {
		const struct sip_hdr *hdr = le->data;

		if (hdr->id != SIP_HDR_PATH)
			continue;
		if (pl_dupz(&b->pathv[b->pathc++], &hdr->val))
			return ENOMEM;
	}
	return 0;
}


static const char *const tpnames[] = {"udp", "tcp", "tls", "ws", "wss"};


/* "ip:port" ("[ip]:port" for IPv6) as req.source prints it */
static int source_dup(char **dst, const struct sa *sa)
{
	char ip[64], buf[80];
	bool v6 = sa_af(sa) == AF_INET6;

	if (sa_af(sa) == AF_INET) {
		uint32_t a = sa_in(sa);
		char *p = buf;
		int i;

		for (i = 3; i >= 0; i--) {
			unsigned o = (a >> (8 * i)) & 0xff;

			if (o >= 100)
				*p++ = (char)('0' + o / 100);
			if (o >= 10)
				*p++ = (char)('0' + o / 10 % 10);
			*p++ = (char)('0' + o % 10);
			*p++ = i ? '.' : ':';
		}
		{
			char d[8];
			int n = 0;
			unsigned port = sa_port(sa);

			do {
				d[n++] = (char)('0' + port % 10);
				port /= 10;
			} while (port);
			while (n)
				*p++ = d[--n];
			*p = '\0';
		}
		return str_dup(dst, buf);
	}

	if (sa_ntop(sa, ip, sizeof(ip)))
		return re_sdprintf(dst, "%J", sa);
	(void)snprintf(buf, sizeof(buf), "%s%s%s:%u", v6 ? "[" : "", ip,
		       v6 ? "]" : "", sa_port(sa));
	return str_dup(dst, buf);
}


/*
 * Handle one REGISTER (registrar.lua's R:handle and R:_update); answers
 * it unless c->fallback is set on return
 */
static uint16_t reg_process(struct rctx *c)
{
	struct regc *r = c->r;
	const struct sip_msg *msg = c->msg;
	struct want wv[WANT_MAX];
	struct bnd *bv[BIND_MAX];
	struct mbuf amb;
	struct puri tu;
	const struct sip_hdr *hexp_hdr;
	uint64_t hexp = 0;
	bool has_hexp = false, star = false;
	size_t ncontacts = 0, nw = 0, i, nb;
	struct le *le;
	struct aor *a;
	double now;
	static char date[64];
	static time_t date_t;
	char host[256];
	const char *realm;
	time_t t;
	struct tm tm;

	++r->requests;
	c->changed = false;
	if (r->closed)
		return reply_plain(c, 503, "Service Unavailable");

	/* step 2: extensions */
	mbuf_rewind(kb);
	(void)hdr_tokens(msg, SIP_HDR_REQUIRE, unsupported, kb);
	if (kb->end) {
		mbuf_rewind(hb);
		(void)mbuf_printf(hb, "Unsupported: %b\r\n", kb->buf, kb->end);
		return reply(c, 420, "Bad Extension");
	}

	/* step 5: To is the AOR */
	if (uri_parse(&tu, &msg->to.auri))
		return reply_plain(c, 400, "Bad To Header");
	if (!tu.sip)
		return reply_plain(c, 416, "Unsupported URI Scheme");
	mbuf_init(&amb);
	amb.buf = (uint8_t *)c->aor;
	amb.size = sizeof(c->aor) - 1;
	if (aor_print(&amb, &tu) || tu.host.l >= sizeof(host))
		return reply_plain(c, 400, "Bad To Header");
	c->aor[amb.end] = '\0';
	for (i = 0; i < tu.host.l; i++)
		host[i] = (char)tolower((unsigned char)tu.host.p[i]);
	host[i] = '\0';
	if (r->domv) {
		bool ok = false;

		for (i = 0; i < r->domc && !ok; i++)
			ok = !strcmp(r->domv[i], host);
		if (!ok)
			return reply_plain(c, 404, "Not Found");
	}

	/* steps 3 and 4 */
	if (r->auth != LUA_NOREF) {
		realm = r->realm ? r->realm : host;
		if (!authenticate(c, &tu, realm))
			return c->status;
	}

	/* step 6: Contact and Expires */
	hexp_hdr = hdr_first(msg, SIP_HDR_EXPIRES);
	if (hexp_hdr) {
		struct pl v = hexp_hdr->val;

		trim(&v);
		if (!all_digits(&v))
			return reply_plain(c, 400, "Invalid Expires Header");
		hexp = sat_u32(&v);
		has_hexp = true;
	}

	mbuf_rewind(kb);
	le = list_head(hash_list(msg->hdrht, SIP_HDR_CONTACT));
	for (; le; le = le->next) {
		const struct sip_hdr *hdr = le->data;
		struct sip_addr addr;
		struct puri cu;
		struct want *w;
		const char *why;
		size_t kstart;

		if (hdr->id != SIP_HDR_CONTACT)
			continue;
		++ncontacts;
		if (!pl_strcmp(&hdr->val, "*")) {
			star = true;
			continue;
		}
		if (sip_addr_decode(&addr, &hdr->val) || !pl_isset(&addr.auri))
			return reply_plain(c, 400, "Invalid Contact");
		if (nw == WANT_MAX)
			return reply_plain(c, 400, "Invalid Contact: too many");
		w = &wv[nw];
		memset(w, 0, sizeof(*w));
		w->uri = addr.auri;
		kstart = kb->end;
		if (uri_parse(&cu, &addr.auri) || key_print(kb, &cu))
			return reply_plain(c, 400, "Invalid Contact URI");
		w->key.p = (const char *)(uintptr_t)kstart;
		w->key.l = kb->end - kstart;
		why = contact_params(&addr.params, w);
		if (why)
			return reply_plain(c, 400, why);
		++nw;
	}
	if (!ncontacts && hdr_first(msg, SIP_HDR_CONTACT))
		return reply_plain(c, 400, "Invalid Contact");
	/* offsets into kb -> pointers (kb no longer grows) */
	for (i = 0; i < nw; i++) {
		wv[i].key.p = (const char *)kb->buf + (uintptr_t)wv[i].key.p;
		if (wv[i].has_rest)
			wv[i].rest.p = (const char *)kb->buf +
				(uintptr_t)wv[i].rest.p;
	}

	now = loc_now();
	a = aor_find(r->loc, c->aor);

	if (star) {
		if (ncontacts > 1)
			return reply_plain(c, 400, "Invalid Contact: * with "
					   "other contacts");
		if (!has_hexp || hexp != 0)
			return reply_plain(c, 400, "Invalid Contact: * needs "
					   "Expires: 0");
		for (le = a ? list_head(&a->bl) : NULL; le; le = le->next) {
			const struct bnd *b = le->data;

			if (b->expires > now && b->call_id && b->has_cseq &&
			    !pl_strcmp(&msg->callid, b->call_id) &&
			    msg->cseq.num <= b->cseq)
				return reply_warn(c, 500, "Server Internal "
						  "Error", "out-of-order "
						  "REGISTER (CSeq not higher)");
		}
		if (a) {
			r->loc->n -= list_count(&a->bl);
			mem_deref(a);
			a = NULL;
		}
		c->changed = true;
	}
	else {
		for (i = 0; i < nw; i++) {
			struct want *w = &wv[i];
			uint64_t e = w->has_exp ? w->expires : has_hexp ?
				hexp : r->def;

			if (e > MAX_EXPIRES_VALUE)
				e = MAX_EXPIRES_VALUE;
			if (e > 0 && e < r->min) {
				if (e < 3600) {
					mbuf_rewind(hb);
					(void)mbuf_printf(hb, "Min-Expires: "
							  "%u\r\n", r->min);
					return reply(c, 423,
						     "Interval Too Brief");
				}
				e = r->min;
			}
			if (e > r->max)
				e = r->max;
			w->expires = e;
		}

		/* step 7: check every contact before changing anything */
		for (i = 0; i < nw; i++) {
			struct bnd *old = NULL;
			char *key = (char *)wv[i].key.p;
			char save = key[wv[i].key.l];

			key[wv[i].key.l] = '\0';
			old = bnd_find(a, key);
			key[wv[i].key.l] = save;
			if (old && old->expires > now && old->call_id &&
			    old->has_cseq &&
			    !pl_strcmp(&msg->callid, old->call_id) &&
			    msg->cseq.num <= old->cseq)
				return reply_warn(c, 500, "Server Internal "
						  "Error", "out-of-order "
						  "REGISTER (CSeq not higher)");
		}

		/* step 8: commit (a repeated contact: the last wins) */
		for (i = 0; i < nw; i++) {
			struct want *w = &wv[i];
			const struct sip_hdr *ua;
			struct bnd *b, *old;
			size_t j;
			bool later = false;
			int err = 0;

			for (j = i + 1; j < nw && !later; j++)
				later = !pl_cmp(&wv[j].key, &w->key);
			if (later)
				continue;

			if (!w->expires) {
				char *key = (char *)w->key.p;
				char save = key[w->key.l];

				key[w->key.l] = '\0';
				old = bnd_find(a, key);
				key[w->key.l] = save;
				if (old && old->expires > now) {
					mem_deref(old);
					--r->loc->n;
					c->changed = true;
				}
				continue;
			}

			if (!a)
				a = aor_get(r->loc, c->aor);
			b = a ? bnd_new(a, w->key.p, w->key.l) : NULL;
			if (!b) {
				aor_gc(a);
				return reply_plain(c, 500, "Server Internal "
						   "Error");
			}
			b->expires = now + (double)w->expires;
			b->updated = now;
			b->has_q = w->has_q;
			b->q = w->q;
			b->cseq = msg->cseq.num;
			b->has_cseq = true;
			err |= pl_dupz(&b->uri, &w->uri);
			if (w->has_rest)
				err |= pl_dupz(&b->params, &w->rest);
			err |= pl_dupz(&b->call_id, &msg->callid);
			err |= source_dup(&b->received, &msg->src);
			err |= str_dup(&b->transport,
				       (size_t)msg->tp < 5 ?
				       tpnames[msg->tp] : "udp");
			ua = hdr_first(msg, SIP_HDR_USER_AGENT);
			if (ua)
				err |= pl_dupz(&b->user_agent, &ua->val);
			err |= instance_of(&b->instance, b->params);
			b->has_reg_id = reg_id_of(b->params, &b->reg_id);
			err |= path_copy(b, msg);
			if (err) {
				mem_deref(b);
				aor_gc(a);
				return reply_plain(c, 500, "Server Internal "
						   "Error");
			}
			bnd_put(a, b);
			c->changed = true;
		}
		if (a && list_isempty(&a->bl)) {
			mem_deref(a);
			a = NULL;
		}
		/* as registrar.lua: any contact given counts as a change */
		c->changed = nw > 0;
	}

	if (c->changed && r->loc->changed != LUA_NOREF) {
		lua_State *L = c->L;
		int top = lua_gettop(L);

		if (lsip_push_ref(L, r->loc->changed) &&
		    lua_pcall(L, 0, 0, 0))
			re_fprintf(stderr, "luasip.registrar: store: %s\n",
				   lua_tostring(L, -1));
		lua_settop(L, top);
		a = aor_find(r->loc, c->aor);
	}

	/* the answer: every current binding with its expires, and a Date */
	now = loc_now();
	nb = live(bv, BIND_MAX, a, now);
	mbuf_rewind(hb);
	t = time(NULL);
	if (t != date_t) {                      /* one strftime a second */
		gmtime_r(&t, &tm);
		strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S GMT", &tm);
		date_t = t;
	}
	(void)mbuf_write_str(hb, "Date: ");
	(void)mbuf_write_str(hb, date);
	(void)mbuf_write_str(hb, "\r\n");
	for (i = 0; i < nb; i++) {
		const struct bnd *b = bv[i];

		(void)mbuf_write_str(hb, "Contact: <");
		(void)mbuf_write_str(hb, b->uri);
		(void)mbuf_write_u8(hb, '>');
		if (b->params)
			(void)mbuf_write_str(hb, b->params);
		(void)mbuf_write_str(hb, ";expires=");
		(void)write_u(hb, (uint64_t)left(b, now), 10, 1);
		if (b->has_q)
			(void)mbuf_printf(hb, ";q=%H", print_q, &b->q);
		(void)mbuf_write_str(hb, "\r\n");
	}
	if (hdr_tokens(msg, SIP_HDR_SUPPORTED, is_path, NULL)) {
		for (le = list_head(hash_list(msg->hdrht, SIP_HDR_PATH)); le;
		     le = le->next) {
			const struct sip_hdr *hdr = le->data;

			if (hdr->id == SIP_HDR_PATH)
				(void)mbuf_printf(hb, "Path: %r\r\n",
						  &hdr->val);
		}
	}
	++r->ok;
	return reply(c, 200, "OK");
}


/* ---- Lua API: core.registrar_c(loc, opts) ---- */

static struct regc *regc_check(lua_State *L, int idx)
{
	struct regc **box = lsip_checkbox(L, idx, REGC_MT);

	if (!*box)
		luaL_error(L, "registrar closed");
	return *box;
}


static uint32_t opt_u32(lua_State *L, int t, const char *field)
{
	lua_Integer v;

	lua_getfield(L, t, field);
	v = luaL_checkinteger(L, -1);
	lua_pop(L, 1);
	if (v < 0 || v > (lua_Integer)MAX_EXPIRES_VALUE)
		luaL_error(L, "registrar_c: %s: out of range", field);
	return (uint32_t)v;
}


/*
 * core.registrar_c(loc, opts) -> regc. opts (checked by registrar.lua):
 * min_expires, max_expires, default_expires, domains (list, lower case)
 * or nil, realm or nil, auth (function) or nil, secret (string),
 * accept (list of algorithm names), offer (list), nonce_ttl,
 * max_nonces, check_uri (boolean), notify (function(aor, bindings)) or nil
 */
static int l_regc_new(lua_State *L)
{
	struct loc **lbox = lsip_checkbox(L, 1, LOC_MT);
	struct regc *r;
	lua_Integer i, n;
	size_t sl;
	const char *s;
	int err = 0;

	luaL_checktype(L, 2, LUA_TTABLE);
	if (!*lbox)
		return luaL_error(L, "registrar_c: location table closed");

	r = mem_zalloc(sizeof(*r), regc_destructor);
	if (!r)
		return lsip_fail(L, ENOMEM, "registrar");
	r->auth = r->notify = r->thread = r->md5agent = LUA_NOREF;
	r->loc = mem_ref(*lbox);
	lsip_newbox(L, r, REGC_MT);           /* owns r from here */

	r->min = opt_u32(L, 2, "min_expires");
	r->max = opt_u32(L, 2, "max_expires");
	r->def = opt_u32(L, 2, "default_expires");

	if (lua_getfield(L, 2, "domains") == LUA_TTABLE) {
		n = luaL_len(L, -1);
		r->domv = mem_zalloc((size_t)(n + 1) * sizeof(char *), NULL);
		if (!r->domv)
			return lsip_fail(L, ENOMEM, "registrar");
		for (i = 1; i <= n; i++) {
			lua_geti(L, -1, i);
			err |= str_dup(&r->domv[r->domc++],
				       luaL_checkstring(L, -1));
			lua_pop(L, 1);
		}
	}
	lua_pop(L, 1);

	if (lua_getfield(L, 2, "realm") == LUA_TSTRING)
		err |= str_dup(&r->realm, lua_tostring(L, -1));
	lua_pop(L, 1);

	lua_getfield(L, 2, "secret");
	s = luaL_checklstring(L, -1, &sl);
	r->secret = mem_alloc(sl + 1, NULL);
	if (r->secret) {
		memcpy(r->secret, s, sl);
		r->dg.secret = (const uint8_t *)r->secret;
		r->dg.secretl = sl;
		err |= lsip_digest_cfg_init(&r->dg);
	}
	else {
		err |= ENOMEM;
	}
	lua_pop(L, 1);

	lua_getfield(L, 2, "accept");
	luaL_checktype(L, -1, LUA_TTABLE);
	n = luaL_len(L, -1);
	for (i = 1; i <= n; i++) {
		int a;

		lua_geti(L, -1, i);
		a = lsip_digest_alg(luaL_checkstring(L, -1));
		if (a < 0)
			return luaL_error(L, "registrar_c: accept: bad "
					  "algorithm");
		r->dg.accept |= 1u << a;
		lua_pop(L, 1);
	}
	lua_pop(L, 1);

	lua_getfield(L, 2, "offer");
	luaL_checktype(L, -1, LUA_TTABLE);
	n = luaL_len(L, -1);
	for (i = 1; i <= n && r->dg.offerc < 3; i++) {
		int a;

		lua_geti(L, -1, i);
		a = lsip_digest_alg(luaL_checkstring(L, -1));
		if (a < 0)
			return luaL_error(L, "registrar_c: offer: bad "
					  "algorithm");
		r->dg.offer[r->dg.offerc++] = a;
		lua_pop(L, 1);
	}
	lua_pop(L, 1);

	lua_getfield(L, 2, "nonce_ttl");
	r->dg.nonce_ttl = luaL_checknumber(L, -1);
	lua_pop(L, 1);
	lua_getfield(L, 2, "max_nonces");
	r->dg.max_nonces = (uint32_t)luaL_optinteger(L, -1, 10000);
	lua_pop(L, 1);
	lua_getfield(L, 2, "check_uri");
	r->dg.check_uri = lua_isnil(L, -1) || lua_toboolean(L, -1);
	lua_pop(L, 1);

	if (lua_getfield(L, 2, "auth") == LUA_TFUNCTION)
		r->auth = lsip_pin(L, -1);
	lua_pop(L, 1);
	if (lua_getfield(L, 2, "notify") == LUA_TFUNCTION)
		r->notify = lsip_pin(L, -1);
	lua_pop(L, 1);
	if (lua_getfield(L, 2, "md5_agent") == LUA_TFUNCTION)
		r->md5agent = lsip_pin(L, -1);
	lua_pop(L, 1);

	if (err)
		return lsip_fail(L, ENOMEM, "registrar");

	return 1;
}


/* regc:attach(ep): REGISTERs of ep are answered here */
static int l_regc_attach(lua_State *L)
{
	regc_check(L, 1);
	lsip_ep_check(L, 2);

	lua_getfield(L, LUA_REGISTRYINDEX, REGS_KEY);
	lua_pushvalue(L, 2);
	lua_pushvalue(L, 1);
	lua_rawset(L, -3);
	lua_pushvalue(L, 1);
	return 1;
}


/* core.registrar_detach(ep): REGISTERs of ep go to its Lua handler */
static int l_regc_detach(lua_State *L)
{
	(void)lsip_checkbox(L, 1, LSIP_EP_MT);

	lua_getfield(L, LUA_REGISTRYINDEX, REGS_KEY);
	lua_pushvalue(L, 1);
	lua_pushnil(L);
	lua_rawset(L, -3);
	return 0;
}


static void push_bindings(lua_State *L, struct regc *r, const char *aor)
{
	struct bnd *bv[BIND_MAX];
	double now = loc_now();
	size_t n = live(bv, BIND_MAX, aor_find(r->loc, aor), now);

	push_export(L, bv, n, now);
}


/*
 * regc:handle(req) -> status[, bindings, changed, aor] (answered), or
 * nil when the request needs the Lua path (nothing was sent)
 */
static int l_regc_handle(lua_State *L)
{
	struct regc *r = regc_check(L, 1);
	struct lsip_req *req = lsip_req_check(L, 2);
	struct rctx c;
	struct lsip_ep *ep;

	if (!req)
		return luaL_error(L, "handle: request closed");
	if (r->fallback)
		return 0;

	memset(&c, 0, sizeof(c));
	c.r = r;
	c.req = req;
	c.L = L;
	c.msg = lsip_req_parts(req, &ep, &c.stp);
	c.sip = lsip_ep_sip(ep);
	c.ua = lsip_ep_ua(ep);
	if (!*c.stp)
		return lsip_fail(L, EALREADY, "handle: already answered");

	(void)reg_process(&c);
	if (c.fallback) {
		r->fallback = true;
		return 0;
	}
	lua_pushinteger(L, c.status == 999 ? 500 : c.status);
	if (c.status != 200)
		return 1;
	push_bindings(L, r, c.aor);
	lua_pushboolean(L, c.changed);
	lua_pushstring(L, c.aor);
	return 4;
}


/* regc:stats() -> requests, ok, failed */
static int l_regc_stats(lua_State *L)
{
	struct regc *r = regc_check(L, 1);

	lua_pushinteger(L, (lua_Integer)r->requests);
	lua_pushinteger(L, (lua_Integer)r->ok);
	lua_pushinteger(L, (lua_Integer)r->failed);
	return 3;
}


/* regc:lookup(aor) -> bindings as registrar:lookup returns them */
static int l_regc_lookup(lua_State *L)
{
	struct regc *r = regc_check(L, 1);

	push_bindings(L, r, luaL_checkstring(L, 2));
	return 1;
}


/* regc.fallback: true once the Lua path answers every REGISTER */
static int l_regc_getfield(lua_State *L)
{
	struct regc **box = lsip_checkbox(L, 1, REGC_MT);
	const char *key = luaL_checkstring(L, 2);

	if (!strcmp(key, "fallback")) {
		lua_pushboolean(L, !*box || (*box)->fallback);
		return 1;
	}
	return 0;
}


/* regc:close(): later REGISTERs get 503 (the table stays) */
static int l_regc_close(lua_State *L)
{
	struct regc **box = lsip_checkbox(L, 1, REGC_MT);

	if (*box)
		(*box)->closed = true;
	return 0;
}


static int l_regc_gc(lua_State *L)
{
	struct regc **box = lsip_checkbox(L, 1, REGC_MT);
	struct regc *r = *box;

	if (r) {
		lsip_unpin(L, &r->auth);
		lsip_unpin(L, &r->notify);
		lsip_unpin(L, &r->thread);
		lsip_unpin(L, &r->md5agent);
	}
	*box = mem_deref(r);
	return 0;
}


/**
 * Answer a REGISTER in C when a registrar is attached to ep
 *
 * Runs inside re_main, for requests lsip_request_incoming is about to
 * give to Lua.
 *
 * @param ep  Endpoint
 * @param msg Request
 *
 * @return true if answered, false to go on (no registrar, or the Lua path)
 */
bool lsip_registrar_take(struct lsip_ep *ep, const struct sip_msg *msg)
{
	lua_State *L = lsip_L;
	struct regc **box, *r;
	struct rctx c;
	int top;

	if (pl_strcmp(&msg->met, "REGISTER") || !L)
		return false;

	top = lua_gettop(L);
	if (lua_getfield(L, LUA_REGISTRYINDEX, REGS_KEY) != LUA_TTABLE ||
	    !lsip_push_ref(L, lsip_ep_ref(ep))) {
		lua_settop(L, top);
		return false;
	}
	lua_rawget(L, -2);
	box = lsip_testbox(L, -1, REGC_MT);
	r = box ? *box : NULL;
	if (!r || r->fallback || r->closed) {
		lua_settop(L, top);
		return false;
	}
	mem_ref(r);
	lua_settop(L, top);

	memset(&c, 0, sizeof(c));
	c.r = r;
	c.msg = msg;
	c.L = L;
	c.ua = lsip_ep_ua(ep);
	c.sip = lsip_ep_sip(ep);
	(void)reg_process(&c);
	mem_deref(c.own);

	if (c.fallback) {
		r->fallback = true;
		mem_deref(r);
		return false;
	}

	if (c.status == 200 && c.changed && r->notify != LUA_NOREF &&
	    lsip_push_ref(L, r->notify)) {
		lua_pushstring(L, c.aor);
		push_bindings(L, r, c.aor);
		if (lua_pcall(L, 2, 0, 0))
			re_fprintf(stderr, "luasip.registrar: on_change: %s\n",
				   lua_tostring(L, -1));
		lua_settop(L, top);
	}

	mem_deref(r);
	return true;
}


/* __gc of the sentinel (at lua_close, after every box): free the buffers */
static int l_sentinel_gc(lua_State *L)
{
	(void)L;
	hb = mem_deref(hb);
	kb = mem_deref(kb);
	lsip_nonce_reset();
	return 0;
}


/**
 * Register core.location_table, core.location_now and core.registrar_c
 *
 * @param L Lua state, module table on top
 *
 * @return 0
 */
int lsip_open_registrar(lua_State *L)
{
	static const luaL_Reg loc_methods[] = {
		{"get", l_loc_get},
		{"put", l_loc_put},
		{"remove", l_loc_remove},
		{"remove_all", l_loc_remove_all},
		{"expire", l_loc_expire},
		{"count", l_loc_count},
		{"aor_list", l_loc_aors},
		{"on_change", l_loc_on_change},
		{NULL, NULL}
	};
	static const luaL_Reg loc_meta[] = {
		{"__gc", l_loc_gc},
		{NULL, NULL}
	};
	static const luaL_Reg regc_methods[] = {
		{"attach", l_regc_attach},
		{"handle", l_regc_handle},
		{"stats", l_regc_stats},
		{"lookup", l_regc_lookup},
		{"close", l_regc_close},
		{NULL, NULL}
	};
	static const luaL_Reg regc_meta[] = {
		{"__gc", l_regc_gc},
		{"__getfield", l_regc_getfield},
		{NULL, NULL}
	};
	static const luaL_Reg funcs[] = {
		{"location_table", l_loc_new},
		{"location_now", l_loc_now},
		{"registrar_c", l_regc_new},
		{"registrar_detach", l_regc_detach},
		{NULL, NULL}
	};

	if (!hb)
		hb = mbuf_alloc(1024);
	if (!kb)
		kb = mbuf_alloc(1024);
	if (!hb || !kb)
		return luaL_error(L, "registrar: out of memory");

	lsip_setfuncs(L, LOC_MT, loc_methods, loc_meta);
	lsip_setfuncs(L, REGC_MT, regc_methods, regc_meta);

	/* once per state; finalized after every box created later */
	if (lua_getfield(L, LUA_REGISTRYINDEX, "luasip.registrar.sentinel") ==
	    LUA_TNIL) {
		lua_newuserdatauv(L, 0, 0);
		lua_newtable(L);
		lua_pushcfunction(L, l_sentinel_gc);
		lua_setfield(L, -2, "__gc");
		lua_setmetatable(L, -2);
		lua_setfield(L, LUA_REGISTRYINDEX,
			     "luasip.registrar.sentinel");
	}
	lua_pop(L, 1);

	if (lua_getfield(L, LUA_REGISTRYINDEX, REGS_KEY) != LUA_TTABLE) {
		lua_pop(L, 1);
		lua_newtable(L);
		lua_createtable(L, 0, 1);
		lua_pushliteral(L, "k");
		lua_setfield(L, -2, "__mode");
		lua_setmetatable(L, -2);
		lua_setfield(L, LUA_REGISTRYINDEX, REGS_KEY);
	}
	else {
		lua_pop(L, 1);
	}

	luaL_setfuncs(L, funcs, 0);
	return 0;
}
