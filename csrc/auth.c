/**
 * @file auth.c  SIP digest authentication: client state (replacing
 *               libre's sip/auth.c), credentials, and server helpers
 *
 * This file defines every global symbol of libre's sip/auth.o
 * (sip_auth_alloc, sip_auth_authenticate, sip_auth_encode and
 * sip_auth_reset), so when core.so is linked with libre.a that archive
 * member is never pulled in, and sipsess, sipreg, sipevent and
 * sip_request all answer challenges through this code. Compared with
 * libre 1.1.0 it adds SHA-256 and SHA-512-256 (RFC 7616, RFC 8760:
 * of several challenges for one realm the strongest is answered),
 * quoted-string escaping, a bound on stale=true rounds, and an error
 * instead of an endless resend for a 401/407 without any challenge.
 *
 * Lifetimes: a struct sip_auth belongs to the libre object that
 * allocated it; with aref it holds a reference on its handler argument,
 * which for luasip is a struct lsip_creds. A credentials object owns
 * copies of the user names and passwords, or a registry reference to a
 * Lua function; that reference is released by its destructor, which
 * may run inside re_main or a __gc, never after the Lua state is gone
 * (a sentinel in the registry records that). lsip_auth_handler() calls
 * the function on the main thread, synchronously, under lua_pcall.
 *
 * The server side (challenges, nonces, verification) is Lua
 * (lua/luasip/auth.lua); this file gives it hashes, HMAC, random bytes,
 * base64url and a parser for Digest header values.
 */

#include "lsip.h"
#include <ctype.h>
#include <time.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/core_names.h>
#include <openssl/params.h>


/* libre's private src/sip/sip.h declares this one; sip_request uses it */
int sip_auth_encode(struct mbuf *mb, struct sip_auth *auth, const char *met,
		    const char *uri);


enum {
	CHALL_MAX = 16,   /* challenges considered per response */
	STALE_MAX = 4,    /* stale=true rounds in a row for one nonce use */
	HEX_MAX = 2 * EVP_MAX_MD_SIZE + 1,
};


/* strength grows with the index: RFC 8760 says answer the strongest */
static const struct digest_alg {
	const char *name;
	const EVP_MD *(*md)(void);
} algv[] = {
	{"MD5",         EVP_md5},
	{"SHA-256",     EVP_sha256},
	{"SHA-512-256", EVP_sha512_256},
};


struct sip_auth {
	struct list realml;
	sip_auth_h *authh;
	void *arg;
	bool ref;
	int err;
};


struct realm {
	struct le le;
	char *realm;
	char *nonce;
	char *opaque;       /* NULL when the challenge had none */
	char *user;
	char *pass;
	const struct digest_alg *alg;
	uint32_t nc;
	unsigned stalec;    /* stale=true rounds without a second use */
	enum sip_hdrid hdr;
	bool qop;           /* qop=auth */
	bool alg_named;     /* the challenge named its algorithm */
};


struct chall {
	struct pl scheme;
	struct pl realm;
	struct pl nonce;
	struct pl opaque;
	struct pl stale;
	struct pl algorithm;
	struct pl qop;
	const struct digest_alg *alg;
	enum sip_hdrid hdr;
	bool qop_auth;
};


struct chall_set {
	struct chall v[CHALL_MAX];
	size_t n;
	bool seen;          /* any challenge header at all */
};


struct cred {
	char *realm;        /* NULL: any realm */
	char *user;
	char *pass;
};


struct lsip_creds {
	struct cred *credv;
	size_t credc;
	int fn;             /* function(realm) -> user, password */
};


static bool lua_alive;


/* ---- helpers ---- */


static const struct digest_alg *alg_find(const struct pl *name)
{
	size_t i;

	if (!pl_isset(name))
		return &algv[0];

	for (i = 0; i < sizeof(algv) / sizeof(algv[0]); i++) {
		if (!pl_strcasecmp(name, algv[i].name))
			return &algv[i];
	}

	return NULL;
}


static void hex_encode(char *hex, const uint8_t *p, size_t n)
{
	static const char digits[] = "0123456789abcdef";
	size_t i;

	for (i = 0; i < n; i++) {
		hex[2 * i]     = digits[p[i] >> 4];
		hex[2 * i + 1] = digits[p[i] & 0x0f];
	}
	hex[2 * n] = '\0';
}


/*
 * The algorithm's digest, fetched once: EVP_Digest with the legacy
 * EVP_md5() & co. fetches the implementation on every call (OpenSSL 3)
 */
static EVP_MD *fetched[sizeof(algv) / sizeof(algv[0])];
static EVP_MD_CTX *hash_ctx;


static const EVP_MD *md_of(const struct digest_alg *alg)
{
	size_t i = (size_t)(alg - algv);

	if (!fetched[i])
		fetched[i] = EVP_MD_fetch(NULL, EVP_MD_get0_name(alg->md()),
					  NULL);
	return fetched[i] ? fetched[i] : alg->md();
}


/* hex = H(printf(fmt, ...)); the input is wiped (it may hold a password) */
static int hash_hex(char *hex, const struct digest_alg *alg,
		    const char *fmt, ...)
{
	uint8_t md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	char *s = NULL;
	va_list ap;
	int err;

	va_start(ap, fmt);
	err = re_vsdprintf(&s, fmt, ap);
	va_end(ap);
	if (err)
		return err;

	if (EVP_Digest(s, str_len(s), md, &mdlen, md_of(alg), NULL) != 1)
		err = EPROTO;
	else
		hex_encode(hex, md, mdlen);

	OPENSSL_cleanse(s, str_len(s));
	mem_deref(s);
	return err;
}


/*
 * hex = H(parts[0] ":" parts[1] ":" ...), without printing the input
 * first (the server side hashes three times per check); the context is
 * reset after use, so no part lingers in it
 */
static int hash_parts(char *hex, const struct digest_alg *alg,
		      const struct pl *parts, size_t n)
{
	EVP_MD_CTX *ctx;
	uint8_t md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	bool ok;
	size_t i;

	if (!hash_ctx)
		hash_ctx = EVP_MD_CTX_new();
	ctx = hash_ctx;
	if (!ctx)
		return ENOMEM;

	ok = EVP_DigestInit_ex(ctx, md_of(alg), NULL);
	for (i = 0; ok && i < n; i++) {
		if (i)
			ok = EVP_DigestUpdate(ctx, ":", 1);
		if (ok && parts[i].l)
			ok = EVP_DigestUpdate(ctx, parts[i].p, parts[i].l);
	}
	ok = ok && EVP_DigestFinal_ex(ctx, md, &mdlen);
	(void)EVP_MD_CTX_reset(ctx);
	if (!ok)
		return EPROTO;

	hex_encode(hex, md, mdlen);
	OPENSSL_cleanse(md, sizeof(md));
	return 0;
}


static void str_wipe(char *s)
{
	if (s)
		OPENSSL_cleanse(s, str_len(s));
	mem_deref(s);
}


/* quoted-string body: '"' and '\' escaped */
static int print_qstr(struct re_printf *pf, void *arg)
{
	const char *p = arg;
	int err = 0;

	for (; p && *p && !err; ++p) {
		if (*p == '"' || *p == '\\')
			err = pf->vph("\\", 1, pf->arg);
		if (!err)
			err = pf->vph(p, 1, pf->arg);
	}

	return err;
}


/* copy a quoted-string body without its backslash escapes */
static int pl_unescape_dup(char **dst, const struct pl *pl)
{
	size_t i, n = 0;
	char *s;

	s = mem_alloc(pl->l + 1, NULL);
	if (!s)
		return ENOMEM;

	for (i = 0; i < pl->l; i++) {
		if (pl->p[i] == '\\' && i + 1 < pl->l)
			++i;
		s[n++] = pl->p[i];
	}
	s[n] = '\0';

	*dst = s;
	return 0;
}


static bool is_lws(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}


static bool is_tchar(char c)
{
	return isalnum((unsigned char)c) || (c && strchr("!#$%&'*+-.^_`|~",
							  c));
}


typedef int (param_h)(const struct pl *name, const struct pl *val,
		      bool quoted, void *arg);


/*
 * Decode `scheme name=value, name="quoted", ...` (RFC 7235 auth-param
 * lists); values keep their escapes, quotes are removed
 */
static int param_decode(const struct pl *hval, struct pl *scheme,
			param_h *ph, void *arg)
{
	const char *p = hval->p, *end = hval->p + hval->l;
	struct pl name, val;
	bool quoted;
	int err;

	while (p < end && is_lws(*p))
		++p;
	scheme->p = p;
	while (p < end && is_tchar(*p))
		++p;
	scheme->l = p - scheme->p;
	if (!scheme->l || (p < end && !is_lws(*p)))
		return EBADMSG;

	for (;;) {
		while (p < end && (is_lws(*p) || *p == ','))
			++p;
		if (p >= end)
			return 0;

		name.p = p;
		while (p < end && is_tchar(*p))
			++p;
		name.l = p - name.p;
		while (p < end && is_lws(*p))
			++p;
		if (!name.l || p >= end || *p != '=')
			return EBADMSG;
		++p;
		while (p < end && is_lws(*p))
			++p;

		quoted = p < end && *p == '"';
		if (quoted) {
			val.p = ++p;
			while (p < end && *p != '"') {
				if (*p == '\\' && p + 1 < end)
					++p;
				++p;
			}
			if (p >= end)
				return EBADMSG;
			val.l = p++ - val.p;
		}
		else {
			val.p = p;
			while (p < end && !is_lws(*p) && *p != ',' &&
			       *p != '"')
				++p;
			val.l = p - val.p;
			if (!val.l)
				return EBADMSG;
		}

		while (p < end && is_lws(*p))
			++p;
		if (p < end && *p != ',')
			return EBADMSG;

		err = ph(&name, &val, quoted, arg);
		if (err)
			return err;
	}
}


/* ---- client: libre's sip_auth ---- */


static int dummy_handler(char **user, char **pass, const char *rlm,
			 void *arg)
{
	(void)user;
	(void)pass;
	(void)rlm;
	(void)arg;

	return EAUTH;
}


static void realm_destructor(void *arg)
{
	struct realm *realm = arg;

	list_unlink(&realm->le);
	mem_deref(realm->realm);
	mem_deref(realm->nonce);
	mem_deref(realm->opaque);
	mem_deref(realm->user);
	str_wipe(realm->pass);
}


static void auth_destructor(void *arg)
{
	struct sip_auth *auth = arg;

	if (auth->ref)
		mem_deref(auth->arg);

	list_flush(&auth->realml);
}


static int chall_param(const struct pl *name, const struct pl *val,
		       bool quoted, void *arg)
{
	struct chall *c = arg;
	(void)quoted;

	if (!pl_strcasecmp(name, "realm"))
		c->realm = *val;
	else if (!pl_strcasecmp(name, "nonce"))
		c->nonce = *val;
	else if (!pl_strcasecmp(name, "opaque"))
		c->opaque = *val;
	else if (!pl_strcasecmp(name, "stale"))
		c->stale = *val;
	else if (!pl_strcasecmp(name, "algorithm"))
		c->algorithm = *val;
	else if (!pl_strcasecmp(name, "qop"))
		c->qop = *val;

	return 0;
}


/* does the qop list ("auth,auth-int") hold the token "auth"? */
static bool qop_has_auth(const struct pl *qop)
{
	const char *p = qop->p, *end = qop->p + qop->l;
	struct pl tok;

	while (p < end) {
		while (p < end && (is_lws(*p) || *p == ','))
			++p;
		tok.p = p;
		while (p < end && !is_lws(*p) && *p != ',')
			++p;
		tok.l = p - tok.p;
		if (tok.l && !pl_strcasecmp(&tok, "auth"))
			return true;
	}

	return false;
}


/* collect one WWW-/Proxy-Authenticate; keep the strongest per realm */
static bool chall_handler(const struct sip_hdr *hdr,
			  const struct sip_msg *msg, void *arg)
{
	struct chall_set *set = arg;
	struct chall c;
	size_t i;
	(void)msg;

	set->seen = true;
	memset(&c, 0, sizeof(c));
	c.hdr = hdr->id;

	if (param_decode(&hdr->val, &c.scheme, chall_param, &c) ||
	    pl_strcasecmp(&c.scheme, "Digest") || !c.realm.p || !c.nonce.p)
		return false;

	c.alg = alg_find(&c.algorithm);
	if (!c.alg)
		return false;

	if (c.qop.p) {
		c.qop_auth = qop_has_auth(&c.qop);
		if (!c.qop_auth)
			return false;   /* auth-int only */
	}

	for (i = 0; i < set->n; i++) {
		struct chall *o = &set->v[i];

		if (o->hdr != c.hdr || pl_casecmp(&o->realm, &c.realm))
			continue;

		if (c.alg > o->alg)
			*o = c;
		return false;
	}

	if (set->n < CHALL_MAX)
		set->v[set->n++] = c;

	return false;
}


static bool realm_cmp(struct le *le, void *arg)
{
	struct realm *realm = le->data;
	const struct pl *name = arg;
	char *s = NULL;
	bool eq;

	/* realms are compared unescaped, case-insensitively (as libre) */
	if (pl_unescape_dup(&s, name))
		return false;
	eq = !str_casecmp(s, realm->realm);
	mem_deref(s);

	return eq;
}


static int chall_apply(struct sip_auth *auth, const struct chall *c)
{
	struct realm *realm;
	bool stale;
	int err;

	realm = list_ledata(list_apply(&auth->realml, true, realm_cmp,
				       (void *)&c->realm));
	stale = c->stale.p && !pl_strcasecmp(&c->stale, "true");

	if (!realm) {
		realm = mem_zalloc(sizeof(*realm), realm_destructor);
		if (!realm)
			return ENOMEM;

		list_append(&auth->realml, &realm->le, realm);

		err = pl_unescape_dup(&realm->realm, &c->realm);
		if (!err)
			err = auth->authh(&realm->user, &realm->pass,
					  realm->realm, auth->arg);
		if (err)
			goto out;
	}
	else {
		/* challenged again: our credentials were refused */
		if (!stale) {
			err = EAUTH;
			goto out;
		}

		/* a nonce that served more than one request aged normally;
		 * one refused at its first use over and over is a loop */
		if (realm->nc > 2)
			realm->stalec = 0;
		if (++realm->stalec > STALE_MAX) {
			err = EAUTH;
			goto out;
		}

		realm->nonce  = mem_deref(realm->nonce);
		realm->opaque = mem_deref(realm->opaque);
	}

	realm->hdr = c->hdr;
	realm->alg = c->alg;
	realm->alg_named = c->algorithm.p != NULL;
	realm->qop = c->qop_auth;
	realm->nc = 1;

	err = pl_unescape_dup(&realm->nonce, &c->nonce);
	if (!err && c->opaque.p)
		err = pl_unescape_dup(&realm->opaque, &c->opaque);

 out:
	if (err)
		mem_deref(realm);

	return err;
}


/**
 * Update a SIP authentication state from a 401/407 response
 *
 * Of several challenges for one realm (one per algorithm) the strongest
 * supported one is kept. A realm challenged again fails with EAUTH,
 * unless the challenge says stale=true (the same credentials are used
 * with the new nonce).
 *
 * @param auth SIP Authentication state
 * @param msg  SIP Message
 *
 * @return 0 if success, EAUTH if the credentials were refused, ENOSYS
 *         if no challenge can be answered, otherwise errorcode
 */
int sip_auth_authenticate(struct sip_auth *auth, const struct sip_msg *msg)
{
	struct chall_set *set;
	size_t i;
	int err = 0;

	if (!auth || !msg)
		return EINVAL;

	set = mem_zalloc(sizeof(*set), NULL);
	if (!set)
		return ENOMEM;

	(void)sip_msg_hdr_apply(msg, true, SIP_HDR_WWW_AUTHENTICATE,
				chall_handler, set);
	(void)sip_msg_hdr_apply(msg, true, SIP_HDR_PROXY_AUTHENTICATE,
				chall_handler, set);

	if (!set->n) {
		/* libre 1.1.0 returned 0 here and the request looped */
		err = set->seen ? ENOSYS : EBADMSG;
		goto out;
	}

	for (i = 0; i < set->n && !err; i++)
		err = chall_apply(auth, &set->v[i]);

 out:
	auth->err = err;
	mem_deref(set);
	return err;
}


/**
 * Print Authorization / Proxy-Authorization headers for a request
 *
 * @param mb   Buffer to print to
 * @param auth SIP Authentication state
 * @param met  Request method
 * @param uri  Request URI
 *
 * @return 0 if success, otherwise errorcode
 */
int sip_auth_encode(struct mbuf *mb, struct sip_auth *auth, const char *met,
		    const char *uri)
{
	struct le *le;
	int err = 0;

	if (!mb || !auth || !met || !uri)
		return EINVAL;

	for (le = auth->realml.head; le && !err; le = le->next) {

		struct realm *realm = le->data;
		char ha1[HEX_MAX], ha2[HEX_MAX], resp[HEX_MAX];
		char cnonce[17];
		const char *hname;

		switch (realm->hdr) {

		case SIP_HDR_WWW_AUTHENTICATE:
			hname = "Authorization";
			break;

		case SIP_HDR_PROXY_AUTHENTICATE:
			hname = "Proxy-Authorization";
			break;

		default:
			continue;
		}

		(void)re_snprintf(cnonce, sizeof(cnonce), "%016llx",
				  rand_u64());

		err  = hash_hex(ha1, realm->alg, "%s:%s:%s", realm->user,
				realm->realm, realm->pass);
		err |= hash_hex(ha2, realm->alg, "%s:%s", met, uri);
		if (err)
			break;

		if (realm->qop)
			err = hash_hex(resp, realm->alg,
				       "%s:%s:%08x:%s:auth:%s", ha1,
				       realm->nonce, realm->nc, cnonce, ha2);
		else
			err = hash_hex(resp, realm->alg, "%s:%s:%s", ha1,
				       realm->nonce, ha2);
		OPENSSL_cleanse(ha1, sizeof(ha1));
		if (err)
			break;

		err |= mbuf_printf(mb, "%s: Digest username=\"%H\"", hname,
				   print_qstr, realm->user);
		err |= mbuf_printf(mb, ", realm=\"%H\"", print_qstr,
				   realm->realm);
		err |= mbuf_printf(mb, ", nonce=\"%H\"", print_qstr,
				   realm->nonce);
		err |= mbuf_printf(mb, ", uri=\"%s\"", uri);
		err |= mbuf_printf(mb, ", response=\"%s\"", resp);

		if (realm->alg_named || realm->alg != &algv[0])
			err |= mbuf_printf(mb, ", algorithm=%s",
					   realm->alg->name);

		if (realm->opaque)
			err |= mbuf_printf(mb, ", opaque=\"%H\"", print_qstr,
					   realm->opaque);

		if (realm->qop) {
			err |= mbuf_printf(mb, ", qop=auth, nc=%08x",
					   realm->nc);
			err |= mbuf_printf(mb, ", cnonce=\"%s\"", cnonce);
		}

		++realm->nc;

		err |= mbuf_write_str(mb, "\r\n");
	}

	return err;
}


/**
 * Allocate a SIP authentication state
 *
 * @param authp Pointer to allocated SIP authentication state
 * @param authh Authentication handler (NULL: every challenge fails)
 * @param arg   Handler argument
 * @param ref   True to mem_ref() argument
 *
 * @return 0 if success, otherwise errorcode
 */
int sip_auth_alloc(struct sip_auth **authp, sip_auth_h *authh,
		   void *arg, bool ref)
{
	struct sip_auth *auth;

	if (!authp)
		return EINVAL;

	auth = mem_zalloc(sizeof(*auth), auth_destructor);
	if (!auth)
		return ENOMEM;

	auth->authh = authh ? authh : dummy_handler;
	auth->arg   = ref ? mem_ref(arg) : arg;
	auth->ref   = ref;

	*authp = auth;

	return 0;
}


/**
 * Reset a SIP authentication state (forget every realm)
 *
 * @param auth SIP Authentication state
 */
void sip_auth_reset(struct sip_auth *auth)
{
	if (!auth)
		return;

	list_flush(&auth->realml);
}


/* ---- credentials ---- */


static void creds_destructor(void *arg)
{
	struct lsip_creds *creds = arg;
	size_t i;

	for (i = 0; i < creds->credc; i++) {
		mem_deref(creds->credv[i].realm);
		mem_deref(creds->credv[i].user);
		str_wipe(creds->credv[i].pass);
	}
	mem_deref(creds->credv);

	/* lua_close() may already have run: the ref went with the state */
	if (lua_alive && lsip_L && creds->fn != LUA_NOREF)
		luaL_unref(lsip_L, LUA_REGISTRYINDEX, creds->fn);
}


/* raise unless field of the table at idx is a string (or nil, if opt) */
static const char *cred_field(lua_State *L, int idx, const char *field,
			      bool opt, const char *fname, lua_Integer i)
{
	const char *s;

	lua_getfield(L, idx, field);
	if (lua_type(L, -1) == LUA_TSTRING || (opt && lua_isnil(L, -1))) {
		s = lua_tostring(L, -1);
		lua_pop(L, 1);
		return s;    /* still referenced by the table */
	}

	if (i)
		luaL_error(L, "%s: auth[%d].%s: string expected, got %s",
			   fname, (int)i, field, luaL_typename(L, -1));
	else
		luaL_error(L, "%s: auth.%s: string expected, got %s", fname,
			   field, luaL_typename(L, -1));
	return NULL;
}


/* check one { user, password, realm? } table; raises on bad types */
static void cred_check(lua_State *L, int idx, const char *fname,
		       lua_Integer i)
{
	if (!lua_istable(L, idx))
		luaL_error(L, "%s: auth[%d]: table expected, got %s", fname,
			   (int)i, luaL_typename(L, idx));

	(void)cred_field(L, idx, "user", false, fname, i);
	(void)cred_field(L, idx, "password", false, fname, i);
	(void)cred_field(L, idx, "realm", true, fname, i);
}


static int cred_copy(struct cred *cred, lua_State *L, int idx,
		     const char *fname)
{
	const char *realm;
	int err;

	err  = str_dup(&cred->user, cred_field(L, idx, "user", false,
						 fname, 0));
	err |= str_dup(&cred->pass, cred_field(L, idx, "password", false,
						 fname, 0));
	realm = cred_field(L, idx, "realm", true, fname, 0);
	if (realm)
		err |= str_dup(&cred->realm, realm);

	return err ? ENOMEM : 0;
}


/**
 * Build client credentials from a Lua value
 *
 * The value at idx is nil (no credentials: *credsp = NULL), a table
 * { user = "...", password = "...", realm = "optional" }, a list of
 * such tables (one per realm; one without realm matches any), or a
 * function(realm) -> user, password that is called (synchronously, on
 * the main thread, must not yield) when a realm is challenged. Wrong
 * types raise, naming fname and the field. Pass the result to libre as
 * sip_auth_h argument lsip_auth_handler with aref = true, then
 * mem_deref your own reference.
 *
 * @param credsp Set to the new credentials (or NULL for nil)
 * @param L      Lua state
 * @param idx    Stack index of the value
 * @param fname  Function name for error messages ("call", "register")
 *
 * @return 0 if success, otherwise errorcode
 */
int lsip_creds_alloc(struct lsip_creds **credsp, lua_State *L, int idx,
		     const char *fname)
{
	struct lsip_creds *creds;
	lua_Integer i, n = 0;
	bool list = false;
	int err = 0;

	if (!credsp || !L)
		return EINVAL;

	*credsp = NULL;
	idx = lua_absindex(L, idx);

	switch (lua_type(L, idx)) {

	case LUA_TNONE:
	case LUA_TNIL:
		return 0;

	case LUA_TFUNCTION:
		break;

	case LUA_TTABLE:
		n = luaL_len(L, idx);
		list = n > 0;
		if (!list) {
			cred_check(L, idx, fname, 0);
			n = 1;
			break;
		}
		for (i = 1; i <= n; i++) {
			lua_geti(L, idx, i);
			cred_check(L, lua_gettop(L), fname, i);
			lua_pop(L, 1);
		}
		break;

	default:
		return luaL_error(L, "%s: auth: table {user=, password=, "
				  "realm=}, list of them or function "
				  "expected, got %s", fname,
				  luaL_typename(L, idx));
	}

	/* no raising from here on: everything was checked */
	creds = mem_zalloc(sizeof(*creds), creds_destructor);
	if (!creds)
		return ENOMEM;

	creds->fn = LUA_NOREF;

	if (lua_isfunction(L, idx)) {
		lua_pushvalue(L, idx);
		creds->fn = luaL_ref(L, LUA_REGISTRYINDEX);
		goto out;
	}

	creds->credv = mem_zalloc((size_t)n * sizeof(*creds->credv), NULL);
	if (!creds->credv) {
		err = ENOMEM;
		goto out;
	}

	for (i = 1; i <= n && !err; i++) {
		if (list)
			lua_geti(L, idx, i);
		else
			lua_pushvalue(L, idx);

		err = cred_copy(&creds->credv[creds->credc++], L,
				lua_gettop(L), fname);
		lua_pop(L, 1);
	}

 out:
	if (err)
		mem_deref(creds);
	else
		*credsp = creds;

	return err;
}


/* call the credentials function on the main thread: fn(realm) */
static int creds_call(struct lsip_creds *creds, char **user, char **pass,
		      const char *realm)
{
	lua_State *L = lsip_L;
	int top, err = EAUTH;

	if (!L || !lua_alive || !lua_checkstack(L, 4))
		return EAUTH;

	top = lua_gettop(L);
	lua_rawgeti(L, LUA_REGISTRYINDEX, creds->fn);
	lua_pushstring(L, realm);

	if (lua_pcall(L, 1, 2, 0)) {
		fprintf(stderr, "luasip: auth: credentials function: %s\n",
			lua_tostring(L, -1));
		goto out;
	}

	if (lua_type(L, -2) == LUA_TSTRING && lua_type(L, -1) == LUA_TSTRING) {
		err  = str_dup(user, lua_tostring(L, -2));
		err |= str_dup(pass, lua_tostring(L, -1));
		if (err) {
			*user = mem_deref(*user);
			*pass = mem_deref(*pass);
			err = ENOMEM;
		}
	}
	else if (!lua_isnil(L, -2)) {
		fprintf(stderr, "luasip: auth: credentials function for "
			"realm \"%s\": user, password expected, got %s, %s\n",
			realm, luaL_typename(L, -2), luaL_typename(L, -1));
	}

 out:
	lua_settop(L, top);
	return err;
}


/**
 * Credentials for a challenged realm (libre's sip_auth_h)
 *
 * Runs inside re_main (from sipsess, sipreg, sip_request handlers). A
 * table entry with the same realm wins over one without realm.
 *
 * @param user  Set to a new string with the user name
 * @param pass  Set to a new string with the password
 * @param realm Challenged realm
 * @param arg   struct lsip_creds (may be NULL)
 *
 * @return 0 if success, EAUTH if there are no credentials for realm
 */
int lsip_auth_handler(char **user, char **pass, const char *realm,
		      void *arg)
{
	struct lsip_creds *creds = arg;
	const struct cred *any = NULL, *cred = NULL;
	size_t i;
	int err;

	if (!creds || !user || !pass || !realm)
		return EAUTH;

	if (creds->fn != LUA_NOREF)
		return creds_call(creds, user, pass, realm);

	for (i = 0; i < creds->credc && !cred; i++) {
		const struct cred *c = &creds->credv[i];

		if (!c->realm && !any)
			any = c;
		else if (c->realm && !strcmp(c->realm, realm))
			cred = c;
	}
	if (!cred)
		cred = any;
	if (!cred)
		return EAUTH;

	err  = str_dup(user, cred->user);
	err |= str_dup(pass, cred->pass);
	if (err) {
		*user = mem_deref(*user);
		*pass = mem_deref(*pass);
		return ENOMEM;
	}

	return 0;
}


/* ---- server helpers for lua/luasip/auth.lua ---- */


/* core.digest_hash(alg, s) -> lowercase hex */
static int l_digest_hash(lua_State *L)
{
	const char *name = luaL_checkstring(L, 1);
	size_t n;
	const char *s = luaL_checklstring(L, 2, &n);
	const struct digest_alg *alg;
	uint8_t md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	char hex[HEX_MAX];
	struct pl pl;

	pl_set_str(&pl, name);
	alg = *name ? alg_find(&pl) : NULL;
	if (!alg)
		return luaL_error(L, "bad argument #1 to 'digest_hash' (MD5, "
				  "SHA-256 or SHA-512-256 expected, got "
				  "\"%s\")", name);

	if (EVP_Digest(s, n, md, &mdlen, alg->md(), NULL) != 1)
		return lsip_fail(L, EPROTO, "digest_hash");

	hex_encode(hex, md, mdlen);
	lua_pushstring(L, hex);
	return 1;
}


/* core.hmac_sha256(key, s) -> 32 raw bytes */
static int l_hmac_sha256(lua_State *L)
{
	size_t kl, n;
	const char *key = luaL_checklstring(L, 1, &kl);
	const char *s = luaL_checklstring(L, 2, &n);
	uint8_t md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;

	if (!HMAC(EVP_sha256(), key, (int)kl, (const uint8_t *)s, n, md,
		  &mdlen))
		return lsip_fail(L, EPROTO, "hmac_sha256");

	lua_pushlstring(L, (const char *)md, mdlen);
	return 1;
}


/* core.random(n) -> n bytes from OpenSSL's CSPRNG (1..1024) */
static int l_random(lua_State *L)
{
	lua_Integer n = luaL_checkinteger(L, 1);
	uint8_t buf[1024];

	if (n < 1 || n > (lua_Integer)sizeof(buf))
		return luaL_error(L, "bad argument #1 to 'random' (1-1024 "
				  "expected, got %d)", (int)n);

	if (RAND_bytes(buf, (int)n) != 1)
		return lsip_fail(L, EPROTO, "random");

	lua_pushlstring(L, (const char *)buf, (size_t)n);
	return 1;
}


/* core.secure_equal(a, b) -> boolean, in time independent of content */
static int l_secure_equal(lua_State *L)
{
	size_t al, bl;
	const char *a = luaL_checklstring(L, 1, &al);
	const char *b = luaL_checklstring(L, 2, &bl);

	lua_pushboolean(L, al == bl && !CRYPTO_memcmp(a, b, al));
	return 1;
}


static const char b64url[] =
	"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";


/* core.base64url(s) -> unpadded base64url (RFC 4648 section 5) */
static int l_base64url(lua_State *L)
{
	size_t n, i;
	const uint8_t *s = (const uint8_t *)luaL_checklstring(L, 1, &n);
	luaL_Buffer b;

	luaL_buffinit(L, &b);
	for (i = 0; i + 2 < n; i += 3) {
		uint32_t v = s[i] << 16 | s[i + 1] << 8 | s[i + 2];

		luaL_addchar(&b, b64url[v >> 18]);
		luaL_addchar(&b, b64url[(v >> 12) & 63]);
		luaL_addchar(&b, b64url[(v >> 6) & 63]);
		luaL_addchar(&b, b64url[v & 63]);
	}
	if (n - i == 1) {
		luaL_addchar(&b, b64url[s[i] >> 2]);
		luaL_addchar(&b, b64url[(s[i] & 3) << 4]);
	}
	else if (n - i == 2) {
		uint32_t v = s[i] << 8 | s[i + 1];

		luaL_addchar(&b, b64url[v >> 10]);
		luaL_addchar(&b, b64url[(v >> 4) & 63]);
		luaL_addchar(&b, b64url[(v << 2) & 63]);
	}

	luaL_pushresult(&b);
	return 1;
}


/* core.base64url_decode(s) -> bytes, or nil for anything malformed */
static int l_base64url_decode(lua_State *L)
{
	size_t n, i;
	const char *s = luaL_checklstring(L, 1, &n);
	uint32_t v = 0;
	int bits = 0;
	luaL_Buffer b;

	if (n % 4 == 1)
		return 0;

	luaL_buffinit(L, &b);
	for (i = 0; i < n; i++) {
		const char *p = s[i] ? strchr(b64url, s[i]) : NULL;

		if (!p)
			return 0;

		v = v << 6 | (uint32_t)(p - b64url);
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			luaL_addchar(&b, (char)((v >> bits) & 0xff));
		}
	}

	/* leftover bits of the last character must be zero */
	if (v & ((1u << bits) - 1))
		return 0;

	luaL_pushresult(&b);
	return 1;
}


static int push_param(const struct pl *name, const struct pl *val,
		      bool quoted, void *arg)
{
	lua_State *L = arg;
	luaL_Buffer b;
	size_t i;

	/* names in lower case; the first of a repeated name wins */
	luaL_buffinit(L, &b);
	for (i = 0; i < name->l; i++)
		luaL_addchar(&b, (char)tolower((unsigned char)name->p[i]));
	luaL_pushresult(&b);                      /* t, name */

	lua_pushvalue(L, -1);
	if (lua_rawget(L, -3) != LUA_TNIL) {
		lua_pop(L, 2);
		return 0;
	}
	lua_pop(L, 1);

	luaL_buffinit(L, &b);
	for (i = 0; i < val->l; i++) {
		if (quoted && val->p[i] == '\\' && i + 1 < val->l)
			++i;
		luaL_addchar(&b, val->p[i]);
	}
	luaL_pushresult(&b);                      /* t, name, value */
	lua_rawset(L, -3);
	return 0;
}


/*
 * core.digest_parse(value) -> { scheme = "Digest", username = ..., ... }
 * (names lower case, values unquoted) | nil, "malformed"
 */
static int l_digest_parse(lua_State *L)
{
	size_t n;
	const char *s = luaL_checklstring(L, 1, &n);
	struct pl hval, scheme;

	hval.p = s;
	hval.l = n;

	lua_createtable(L, 0, 12);
	if (param_decode(&hval, &scheme, push_param, L)) {
		lua_pushnil(L);
		lua_pushliteral(L, "malformed");
		return 2;
	}

	lsip_pushpl(L, &scheme);
	lua_setfield(L, -2, "scheme");
	return 1;
}


/* core.wallclock() -> seconds since the epoch (float, CLOCK_REALTIME) */
static int l_wallclock(lua_State *L)
{
	struct timespec ts;

	(void)clock_gettime(CLOCK_REALTIME, &ts);
	lua_pushnumber(L, (lua_Number)ts.tv_sec + ts.tv_nsec / 1e9);
	return 1;
}


/* __gc of the sentinel: from here on the registry is going away */
static int l_sentinel_gc(lua_State *L)
{
	(void)L;

	lua_alive = false;
	return 0;
}


/**
 * Register the digest helpers (core.digest_hash, hmac_sha256, random,
 * secure_equal, base64url, base64url_decode, digest_parse, wallclock)
 *
 * @param L Lua state, module table on top
 *
 * @return 0
 */
static int l_nonce_accept(lua_State *L);

int lsip_open_auth(lua_State *L)
{
	static const luaL_Reg funcs[] = {
		{"digest_hash", l_digest_hash},
		{"hmac_sha256", l_hmac_sha256},
		{"random", l_random},
		{"secure_equal", l_secure_equal},
		{"base64url", l_base64url},
		{"base64url_decode", l_base64url_decode},
		{"digest_parse", l_digest_parse},
		{"wallclock", l_wallclock},
		{"nonce_accept", l_nonce_accept},
		{NULL, NULL}
	};

	luaL_setfuncs(L, funcs, 0);

	/* once per state; finalized after every box created later */
	if (lua_getfield(L, LUA_REGISTRYINDEX, "luasip.auth.sentinel") ==
	    LUA_TNIL) {
		lua_newuserdatauv(L, 0, 0);       /* mod, nil, ud */
		lua_newtable(L);
		lua_pushcfunction(L, l_sentinel_gc);
		lua_setfield(L, -2, "__gc");
		lua_setmetatable(L, -2);
		lua_setfield(L, LUA_REGISTRYINDEX, "luasip.auth.sentinel");
		lua_alive = true;
	}
	lua_pop(L, 1);

	return 0;
}


/* ---- server digest in C (csrc/registrar.c's fast path) ---- */


/*
 * Highest nonce count seen per nonce, two generations of at most max
 * entries each (shared with lua/luasip/auth.lua through
 * core.nonce_accept, so a nonce is never accepted twice whichever path
 * checks it).
 */
struct ncent {
	struct le he;
	char nonce[80];
	uint32_t nc;
};

static struct hash *nc_new, *nc_old;
static uint32_t nc_count;


static bool nc_cmp(struct le *le, void *arg)
{
	const struct ncent *e = le->data;

	return !strcmp(e->nonce, arg);
}


static struct ncent *nc_find(struct hash *h, const char *nonce)
{
	struct le *le;

	if (!h)
		return NULL;
	le = hash_lookup(h, hash_joaat_str(nonce), nc_cmp, (void *)nonce);
	return le ? le->data : NULL;
}


static void nc_flush(struct hash **hp)
{
	if (*hp)
		hash_flush(*hp);
	*hp = mem_deref(*hp);
}


/**
 * Accept nonce count nc for nonce unless an equal or higher one was seen
 *
 * @param nonce Nonce (longer ones than 79 bytes are never accepted)
 * @param nc    Nonce count
 * @param max   Entries per generation
 *
 * @return true if accepted (and remembered)
 */
bool lsip_nonce_accept(const char *nonce, uint32_t nc, uint32_t max)
{
	struct ncent *e = nc_find(nc_new, nonce);
	struct ncent *old = e ? NULL : nc_find(nc_old, nonce);

	if (str_len(nonce) >= sizeof(e->nonce))
		return false;
	if ((e && nc <= e->nc) || (old && nc <= old->nc))
		return false;
	if (e) {
		e->nc = nc;
		return true;
	}

	if (!nc_new && hash_alloc(&nc_new, 4096))
		return false;
	if (++nc_count > max) {
		nc_flush(&nc_old);
		nc_old = nc_new;
		nc_new = NULL;
		nc_count = 1;
		if (hash_alloc(&nc_new, 4096))
			return false;
	}

	e = mem_zalloc(sizeof(*e), NULL);
	if (!e)
		return false;
	str_ncpy(e->nonce, nonce, sizeof(e->nonce));
	e->nc = nc;
	hash_append(nc_new, hash_joaat_str(nonce), &e->he, e);
	return true;
}


/**
 * Forget every nonce count and free the cached digest objects (at
 * lua_close: the module's statics go away with it)
 */
void lsip_nonce_reset(void)
{
	size_t i;

	nc_flush(&nc_new);
	nc_flush(&nc_old);
	nc_count = 0;
	for (i = 0; i < sizeof(fetched) / sizeof(fetched[0]); i++) {
		EVP_MD_free(fetched[i]);
		fetched[i] = NULL;
	}
	EVP_MD_CTX_free(hash_ctx);
	hash_ctx = NULL;
}


/* core.nonce_accept(nonce, nc, max) -> boolean */
static int l_nonce_accept(lua_State *L)
{
	const char *nonce = luaL_checkstring(L, 1);
	lua_Integer nc = luaL_checkinteger(L, 2);
	lua_Integer max = luaL_optinteger(L, 3, 10000);

	lua_pushboolean(L, nc >= 0 && nc <= UINT32_MAX && max > 0 &&
			lsip_nonce_accept(nonce, (uint32_t)nc,
					  (uint32_t)max));
	return 1;
}


static void b64url_enc(char *out, const uint8_t *s, size_t n)
{
	size_t i;

	for (i = 0; i + 2 < n; i += 3) {
		uint32_t v = s[i] << 16 | s[i + 1] << 8 | s[i + 2];

		*out++ = b64url[v >> 18];
		*out++ = b64url[(v >> 12) & 63];
		*out++ = b64url[(v >> 6) & 63];
		*out++ = b64url[v & 63];
	}
	if (n - i == 1) {
		*out++ = b64url[s[i] >> 2];
		*out++ = b64url[(s[i] & 3) << 4];
	}
	else if (n - i == 2) {
		uint32_t v = s[i] << 8 | s[i + 1];

		*out++ = b64url[v >> 10];
		*out++ = b64url[(v >> 4) & 63];
		*out++ = b64url[(v << 2) & 63];
	}
	*out = '\0';
}


/* decoded length, or -1 when malformed */
static int b64url_dec(uint8_t *out, size_t outsz, const struct pl *s)
{
	uint32_t v = 0;
	int bits = 0;
	size_t i, n = 0;

	if (s->l % 4 == 1)
		return -1;
	for (i = 0; i < s->l; i++) {
		const char *p = s->p[i] ? strchr(b64url, s->p[i]) : NULL;

		if (!p)
			return -1;
		v = v << 6 | (uint32_t)(p - b64url);
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			if (n >= outsz)
				return -1;
			out[n++] = (uint8_t)((v >> bits) & 0xff);
		}
	}
	if (v & ((1u << bits) - 1))
		return -1;

	return (int)n;
}


enum { T_LEN = 8, R_LEN = 12, MAC_LEN = 32, NONCE_RAW = 52 };


static double wallclock(void)
{
	struct timespec ts;

	(void)clock_gettime(CLOCK_REALTIME, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}


/*
 * HMAC-SHA256 with the configuration's key (RFC 2104): the inner and
 * outer hash states after the padded key are computed once, each MAC
 * copies them (OpenSSL 3's one-shot HMAC() fetches and keys anew, and
 * re-initialising an EVP_MAC context re-hashes the key: twice the cost)
 */
struct lsip_mac {
	EVP_MD_CTX *in, *out, *tmp;
};


static bool mac(uint8_t out[MAC_LEN], const struct lsip_digest_cfg *cfg,
		const uint8_t *a, size_t al, const uint8_t *b, size_t bl)
{
	struct lsip_mac *m = cfg->mac;
	uint8_t inner[EVP_MAX_MD_SIZE];
	unsigned int n = 0;

	if (!m)
		return false;

	return EVP_MD_CTX_copy_ex(m->tmp, m->in) &&
		EVP_DigestUpdate(m->tmp, a, al) &&
		(!bl || EVP_DigestUpdate(m->tmp, b, bl)) &&
		EVP_DigestFinal_ex(m->tmp, inner, &n) &&
		EVP_MD_CTX_copy_ex(m->tmp, m->out) &&
		EVP_DigestUpdate(m->tmp, inner, n) &&
		EVP_DigestFinal_ex(m->tmp, out, &n) && n == MAC_LEN;
}


/**
 * Key the configuration's MAC with cfg->secret (once)
 *
 * @param cfg Digest configuration
 *
 * @return 0 if success, otherwise errorcode
 */
int lsip_digest_cfg_init(struct lsip_digest_cfg *cfg)
{
	const EVP_MD *md = md_of(&algv[1]);     /* SHA-256 */
	uint8_t key[64], pad[64];
	struct lsip_mac *m;
	unsigned int kl = 0;
	size_t i;
	bool ok;

	memset(key, 0, sizeof(key));
	if (cfg->secretl > sizeof(key)) {
		if (EVP_Digest(cfg->secret, cfg->secretl, key, &kl, md,
			       NULL) != 1)
			return EPROTO;
	}
	else {
		memcpy(key, cfg->secret, cfg->secretl);
	}

	m = mem_zalloc(sizeof(*m), NULL);
	if (!m)
		return ENOMEM;
	m->in = EVP_MD_CTX_new();
	m->out = EVP_MD_CTX_new();
	m->tmp = EVP_MD_CTX_new();

	for (i = 0; i < sizeof(pad); i++)
		pad[i] = key[i] ^ 0x36;
	ok = m->in && m->out && m->tmp &&
		EVP_DigestInit_ex(m->in, md, NULL) &&
		EVP_DigestUpdate(m->in, pad, sizeof(pad));
	for (i = 0; i < sizeof(pad); i++)
		pad[i] = key[i] ^ 0x5c;
	ok = ok && EVP_DigestInit_ex(m->out, md, NULL) &&
		EVP_DigestUpdate(m->out, pad, sizeof(pad));
	OPENSSL_cleanse(key, sizeof(key));
	OPENSSL_cleanse(pad, sizeof(pad));

	cfg->mac = m;
	if (!ok) {
		lsip_digest_cfg_reset(cfg);
		return EPROTO;
	}
	return 0;
}


/**
 * Release the configuration's MAC state
 *
 * @param cfg Digest configuration
 */
void lsip_digest_cfg_reset(struct lsip_digest_cfg *cfg)
{
	struct lsip_mac *m = cfg->mac;

	if (!m)
		return;
	EVP_MD_CTX_free(m->in);
	EVP_MD_CTX_free(m->out);
	EVP_MD_CTX_free(m->tmp);
	mem_deref(m);
	cfg->mac = NULL;
}


/* opaque_of(nonce) of auth.lua: b64(hmac(secret, "opaque:" .. nonce)[1..12]) */
static void opaque_of(char out[20], const struct lsip_digest_cfg *cfg,
		      const char *nonce, size_t noncel)
{
	uint8_t md[MAC_LEN], buf[7 + 80];

	memset(md, 0, sizeof(md));
	if (noncel <= 80) {
		memcpy(buf, "opaque:", 7);
		memcpy(buf + 7, nonce, noncel);
		if (!mac(md, cfg, buf, 7 + noncel, NULL, 0))
			memset(md, 0, sizeof(md));
	}
	b64url_enc(out, md, 12);
}


static bool nonce_mac(uint8_t out[MAC_LEN], const struct lsip_digest_cfg *cfg,
		      const uint8_t *tr)
{
	uint8_t buf[T_LEN + R_LEN + 256];
	size_t rl = str_len(cfg->realm);

	if (rl > 256)
		return false;
	memcpy(buf, tr, T_LEN + R_LEN);
	memcpy(buf + T_LEN + R_LEN, cfg->realm, rl);
	return mac(out, cfg, buf, T_LEN + R_LEN + rl, NULL, 0);
}


/**
 * Append challenge headers (one per algorithm of cfg->offer, in order)
 *
 * @param mb    Buffer
 * @param cfg   Digest configuration
 * @param stale Add stale=true
 *
 * @return 0 if success, otherwise errorcode
 */
int lsip_digest_challenge(struct mbuf *mb, const struct lsip_digest_cfg *cfg,
			  bool stale)
{
	uint8_t raw[NONCE_RAW];
	uint64_t exp = (uint64_t)((wallclock() + cfg->nonce_ttl) * 1000);
	char nonce[80], opaque[20];
	int i, err = 0;

	for (i = 0; i < T_LEN; i++)
		raw[i] = (uint8_t)(exp >> (8 * (T_LEN - 1 - i)));
	rand_bytes(raw + T_LEN, R_LEN);         /* rand.c: OpenSSL, pooled */
	if (!nonce_mac(raw + T_LEN + R_LEN, cfg, raw))
		return EPROTO;
	b64url_enc(nonce, raw, NONCE_RAW);
	opaque_of(opaque, cfg, nonce, strlen(nonce));

	for (i = 0; i < cfg->offerc && !err; i++)
		err = mbuf_printf(mb, "WWW-Authenticate: Digest realm=\"%H\", "
				  "nonce=\"%s\", opaque=\"%s\", algorithm=%s, "
				  "qop=\"auth\"%s\r\n", print_qstr, cfg->realm,
				  nonce, opaque, algv[cfg->offer[i]].name,
				  stale ? ", stale=true" : "");
	return err;
}


struct dcred {
	struct pl username, realm, nonce, uri, response, algorithm, qop,
		nc, cnonce, opaque;
	bool uq;             /* username was quoted (may hold escapes) */
	bool rq;             /* realm likewise */
};


static int dcred_param(const struct pl *name, const struct pl *val,
		       bool quoted, void *arg)
{
	struct dcred *c = arg;
	struct pl *dst = NULL;

	if (!pl_strcasecmp(name, "username")) {
		dst = &c->username;
		if (!pl_isset(dst))
			c->uq = quoted;
	}
	else if (!pl_strcasecmp(name, "realm")) {
		dst = &c->realm;
		if (!pl_isset(dst))
			c->rq = quoted;
	}
	else if (!pl_strcasecmp(name, "nonce"))     dst = &c->nonce;
	else if (!pl_strcasecmp(name, "uri"))       dst = &c->uri;
	else if (!pl_strcasecmp(name, "response"))  dst = &c->response;
	else if (!pl_strcasecmp(name, "algorithm")) dst = &c->algorithm;
	else if (!pl_strcasecmp(name, "qop"))       dst = &c->qop;
	else if (!pl_strcasecmp(name, "nc"))        dst = &c->nc;
	else if (!pl_strcasecmp(name, "cnonce"))    dst = &c->cnonce;
	else if (!pl_strcasecmp(name, "opaque"))    dst = &c->opaque;

	if (dst && !pl_isset(dst)) {
		/* an empty quoted value is set, but empty */
		dst->p = val->p ? val->p : "";
		dst->l = val->l;
	}
	return 0;
}


/* unescaped copy of a (quoted) value into buf; false when too long */
static bool unq(char *buf, size_t sz, const struct pl *v, bool quoted)
{
	size_t i, n = 0;

	for (i = 0; i < v->l; i++) {
		if (quoted && v->p[i] == '\\' && i + 1 < v->l)
			++i;
		if (n + 1 >= sz)
			return false;
		buf[n++] = v->p[i];
	}
	buf[n] = '\0';
	return true;
}


static bool is_hex8(const struct pl *pl)
{
	size_t i;

	if (pl->l != 8)
		return false;
	for (i = 0; i < 8; i++)
		if (!isxdigit((unsigned char)pl->p[i]))
			return false;
	return true;
}


/**
 * Check the Authorization of a request (auth.lua's verify, in C)
 *
 * @param msg    Request
 * @param cfg    Digest configuration
 * @param ha1h   Called with the user for the HA1 of alg
 * @param arg    Handler argument
 * @param user   Set to the authenticated user (buffer of usersz)
 * @param usersz Size of user
 *
 * @return LSIP_DG_OK, or why not
 */
enum lsip_dg lsip_digest_verify(const struct sip_msg *msg,
				const struct lsip_digest_cfg *cfg,
				lsip_ha1_h *ha1h, void *arg,
				char *user, size_t usersz)
{
	const struct digest_alg *alg;
	struct dcred c;
	struct le *le;
	struct pl scheme;
	char realm[256], ha1[HEX_MAX], ha2[HEX_MAX], expect[HEX_MAX];
	char nonce[80], opaque[20];
	uint8_t raw[NONCE_RAW + 4], mac[MAC_LEN];
	uint64_t exp = 0;
	bool found = false, stale;
	uint32_t ncv = 0;
	int i, n, err;
	size_t algi;

	for (le = list_head(&msg->hdrl); le; le = le->next) {
		const struct sip_hdr *hdr = le->data;

		if (hdr->id != SIP_HDR_AUTHORIZATION)
			continue;
		memset(&c, 0, sizeof(c));
		if (param_decode(&hdr->val, &scheme, dcred_param, &c))
			continue;
		if (pl_strcasecmp(&scheme, "digest") || !pl_isset(&c.realm))
			continue;
		if (!unq(realm, sizeof(realm), &c.realm, c.rq) ||
		    strcmp(realm, cfg->realm))
			continue;
		found = true;
		break;
	}
	if (!found)
		return LSIP_DG_MISSING;

	if (!pl_isset(&c.username) || !pl_isset(&c.nonce) ||
	    !pl_isset(&c.uri) || !pl_isset(&c.response))
		return LSIP_DG_MALFORMED;
	if (!unq(user, usersz, &c.username, c.uq))
		return LSIP_DG_MALFORMED;

	alg = pl_isset(&c.algorithm) ? alg_find(&c.algorithm) : &algv[0];
	if (!alg)
		return LSIP_DG_BADALG;
	algi = (size_t)(alg - algv);
	if (!(cfg->accept & (1u << algi)))
		return LSIP_DG_BADALG;

	if (pl_isset(&c.qop)) {
		if (pl_strcasecmp(&c.qop, "auth") || !pl_isset(&c.cnonce) ||
		    !is_hex8(&c.nc))
			return LSIP_DG_MALFORMED;
		ncv = pl_x32(&c.nc);
	}
	else if (algi != 0) {
		return LSIP_DG_MALFORMED;
	}

	/* the nonce: ours, for this realm, and when it expires */
	n = b64url_dec(raw, sizeof(raw), &c.nonce);
	if (n != NONCE_RAW || !nonce_mac(mac, cfg, raw) ||
	    CRYPTO_memcmp(mac, raw + T_LEN + R_LEN, MAC_LEN))
		return LSIP_DG_BADNONCE;
	if (c.nonce.l >= sizeof(nonce))
		return LSIP_DG_BADNONCE;
	pl_strcpy(&c.nonce, nonce, sizeof(nonce));
	if (pl_isset(&c.opaque)) {
		opaque_of(opaque, cfg, nonce, c.nonce.l);
		if (pl_strcmp(&c.opaque, opaque))
			return LSIP_DG_BADNONCE;
	}
	for (i = 0; i < T_LEN; i++)
		exp = exp << 8 | raw[i];
	stale = (double)exp < wallclock() * 1000;

	if (cfg->check_uri && pl_cmp(&c.uri, &msg->ruri))
		return LSIP_DG_URI;

	err = ha1h(ha1, sizeof(ha1), algi, user, arg);
	if (err == ENOENT)
		return LSIP_DG_UNKNOWN;
	if (err == EACCES)
		return LSIP_DG_WRONG;
	if (err)
		return LSIP_DG_ERROR;

	{
		struct pl pv[6];

		pv[0] = msg->met;
		pv[1] = c.uri;
		if (hash_parts(ha2, alg, pv, 2))
			return LSIP_DG_ERROR;
		pl_set_str(&pv[0], ha1);
		pv[1] = c.nonce;
		if (pl_isset(&c.qop)) {
			pv[2] = c.nc;
			pv[3] = c.cnonce;
			pv[4] = c.qop;
			pl_set_str(&pv[5], ha2);
			err = hash_parts(expect, alg, pv, 6);
		}
		else {
			pl_set_str(&pv[2], ha2);
			err = hash_parts(expect, alg, pv, 3);
		}
	}
	OPENSSL_cleanse(ha1, sizeof(ha1));
	if (err)
		return LSIP_DG_ERROR;

	if (c.response.l != strlen(expect))
		return LSIP_DG_WRONG;
	for (i = 0; i < (int)c.response.l; i++)
		if (tolower((unsigned char)c.response.p[i]) != expect[i])
			return LSIP_DG_WRONG;

	if (stale)
		return LSIP_DG_STALE;
	if (pl_isset(&c.qop) && !lsip_nonce_accept(nonce, ncv, cfg->max_nonces))
		return LSIP_DG_REPLAY;

	return LSIP_DG_OK;
}


/**
 * HA1 of user:realm:password for algorithm index algi into hex
 *
 * @return 0 if success, otherwise errorcode
 */
int lsip_digest_ha1(char *hex, size_t sz, size_t algi, const char *user,
		    const char *realm, const char *password, size_t pwl)
{
	struct pl pv[3];

	if (sz < HEX_MAX || algi >= sizeof(algv) / sizeof(algv[0]))
		return EINVAL;

	pl_set_str(&pv[0], user);
	pl_set_str(&pv[1], realm);
	pv[2].p = password;
	pv[2].l = pwl;
	return hash_parts(hex, &algv[algi], pv, 3);
}


/**
 * Index of a digest algorithm name ("MD5", "SHA-256", "SHA-512-256")
 *
 * @return index, or -1
 */
int lsip_digest_alg(const char *name)
{
	struct pl pl;
	const struct digest_alg *alg;

	pl_set_str(&pl, name);
	if (!pl.l)
		return -1;
	alg = alg_find(&pl);
	return alg ? (int)(alg - algv) : -1;
}
