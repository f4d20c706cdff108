/**
 * @file srtp.c  SRTP/SRTCP through libsrtp2, SDES (RFC 4568) and policy
 *
 * This is the only file that includes libsrtp2 and the only place where
 * srtp_err_status_t becomes an errno. The media code uses the C API in
 * lsip.h: a struct lsip_srtp is mem_zalloc'd by lsip_srtp_alloc, owned by
 * its caller and released with mem_deref (the destructor calls
 * srtp_dealloc). One session protects one direction: outbound sessions
 * protect with the local key, inbound sessions unprotect with the peer's.
 * None of these functions touch Lua, so they may run inside re_main.
 *
 * The Lua functions core.srtp_* and the "luasip.srtp" type are internal
 * test hooks, not public API: a box points at a struct lsip_srtp, is
 * never pinned (libre never calls back into it) and :close(), __gc and
 * __close share one release path.
 */

#include "lsip.h"
#include <limits.h>
#include <sys/random.h>
#include <srtp2/srtp.h>


enum {
	SDES_B64LEN = 40,      /* base64 of the 30-byte key||salt, no pad */
	RTP_HDRLEN = 12,
	RTCP_HDRLEN = 8,
};


struct lsip_srtp {
	srtp_t ctx;
	bool outbound;
};


static bool srtp_inited;


/* the one mapping of libsrtp2's status codes to errno */
static int srtp_errno(srtp_err_status_t st)
{
	switch (st) {

	case srtp_err_status_ok:           return 0;
	case srtp_err_status_alloc_fail:   return ENOMEM;
	case srtp_err_status_bad_param:    return EINVAL;
	case srtp_err_status_auth_fail:    return EBADMSG;
	case srtp_err_status_bad_mki:      return EBADMSG;
	case srtp_err_status_parse_err:    return EBADMSG;
	case srtp_err_status_replay_fail:  return EALREADY;
	case srtp_err_status_replay_old:   return EALREADY;
	case srtp_err_status_pkt_idx_old:  return EALREADY;
	case srtp_err_status_pkt_idx_adv:  return ERANGE;
	case srtp_err_status_key_expired:  return EKEYEXPIRED;
	case srtp_err_status_no_ctx:       return ENOENT;
	case srtp_err_status_no_such_op:   return ENOSYS;
	case srtp_err_status_algo_fail:    return ENOTSUP;
	case srtp_err_status_cant_check:   return EINVAL;
	case srtp_err_status_terminus:     return EOVERFLOW;
	default:                           return EPROTO;
	}
}


static int suite_policy(srtp_policy_t *pol, const char *suite)
{
	if (!str_cmp(suite, "AES_CM_128_HMAC_SHA1_80")) {
		srtp_crypto_policy_set_aes_cm_128_hmac_sha1_80(&pol->rtp);
		srtp_crypto_policy_set_aes_cm_128_hmac_sha1_80(&pol->rtcp);
	}
	else if (!str_cmp(suite, "AES_CM_128_HMAC_SHA1_32")) {
		/* RFC 4568 6.2.2: SRTCP keeps the 80-bit tag */
		srtp_crypto_policy_set_aes_cm_128_hmac_sha1_32(&pol->rtp);
		srtp_crypto_policy_set_aes_cm_128_hmac_sha1_80(&pol->rtcp);
	}
	else {
		return ENOTSUP;
	}

	return 0;
}


static void srtp_destructor(void *arg)
{
	struct lsip_srtp *s = arg;

	if (s->ctx)
		(void)srtp_dealloc(s->ctx);
}


/**
 * Allocate an SRTP session for one direction (RTP and RTCP)
 *
 * @param sp       Pointer to allocated session (release with mem_deref)
 * @param suite    "AES_CM_128_HMAC_SHA1_80" or "AES_CM_128_HMAC_SHA1_32"
 * @param key      Master key followed by master salt
 * @param keylen   Length of key, must be LSIP_SRTP_KEYLEN (30)
 * @param outbound true to protect (local key), false to unprotect
 *
 * @return 0 if success, otherwise errorcode (ENOTSUP: unknown suite)
 */
int lsip_srtp_alloc(struct lsip_srtp **sp, const char *suite,
		    const uint8_t *key, size_t keylen, bool outbound)
{
	uint8_t kbuf[LSIP_SRTP_KEYLEN];
	srtp_policy_t pol;
	struct lsip_srtp *s;
	int err;

	if (!sp || !suite || !key || keylen != LSIP_SRTP_KEYLEN)
		return EINVAL;

	if (!srtp_inited)
		return EPROTO;

	memset(&pol, 0, sizeof(pol));
	err = suite_policy(&pol, suite);
	if (err)
		return err;

	s = mem_zalloc(sizeof(*s), srtp_destructor);
	if (!s)
		return ENOMEM;

	/* libsrtp2 derives the session keys in srtp_create: no copy kept */
	memcpy(kbuf, key, sizeof(kbuf));
	pol.ssrc.type = outbound ? ssrc_any_outbound : ssrc_any_inbound;
	pol.key = kbuf;
	pol.window_size = 128;
	pol.allow_repeat_tx = 0;
	pol.next = NULL;
	s->outbound = outbound;

	err = srtp_errno(srtp_create(&s->ctx, &pol));
	memset(kbuf, 0, sizeof(kbuf));
	if (err) {
		s->ctx = NULL;
		mem_deref(s);
		return err;
	}

	*sp = s;
	return 0;
}


/* in place from mb->pos to mb->end; protect grows the mbuf for the tag */
static int transform(struct lsip_srtp *s, struct mbuf *mb, bool rtcp,
		     bool protect)
{
	size_t len, need;
	srtp_err_status_t st;
	uint8_t *p;
	int n, err;

	if (!s || !s->ctx || !mb)
		return EINVAL;

	if (protect != s->outbound)
		return EINVAL;

	len = mbuf_get_left(mb);
	if (len < (size_t)(rtcp ? RTCP_HDRLEN : RTP_HDRLEN))
		return EBADMSG;

	if (len > INT_MAX - SRTP_MAX_TRAILER_LEN)
		return EOVERFLOW;

	if (protect) {
		need = mb->end + SRTP_MAX_TRAILER_LEN;
		if (mb->size < need) {
			err = mbuf_resize(mb, need);
			if (err)
				return err;
		}
	}

	p = mb->buf + mb->pos;
	n = (int)len;
	if (protect)
		st = rtcp ? srtp_protect_rtcp(s->ctx, p, &n)
			  : srtp_protect(s->ctx, p, &n);
	else
		st = rtcp ? srtp_unprotect_rtcp(s->ctx, p, &n)
			  : srtp_unprotect(s->ctx, p, &n);

	err = srtp_errno(st);
	if (err)
		return err;

	mb->end = mb->pos + (size_t)n;
	return 0;
}


/**
 * Protect one RTP packet in place (mb->pos to mb->end); may grow mb
 *
 * @param s  Outbound SRTP session
 * @param mb RTP packet, header at mb->pos
 *
 * @return 0 if success, otherwise errorcode (EALREADY: sequence reused)
 */
int lsip_srtp_protect(struct lsip_srtp *s, struct mbuf *mb)
{
	return transform(s, mb, false, true);
}


/**
 * Unprotect one SRTP packet in place; on success mb->end drops the tag
 *
 * @param s  Inbound SRTP session
 * @param mb SRTP packet, header at mb->pos
 *
 * @return 0 if success, otherwise errorcode (EBADMSG: authentication
 *         failed, EALREADY: replayed or too old)
 */
int lsip_srtp_unprotect(struct lsip_srtp *s, struct mbuf *mb)
{
	return transform(s, mb, false, false);
}


/**
 * Protect one RTCP (compound) packet in place as SRTCP; may grow mb
 *
 * @param s  Outbound SRTP session
 * @param mb RTCP packet, header at mb->pos
 *
 * @return 0 if success, otherwise errorcode
 */
int lsip_srtp_protect_rtcp(struct lsip_srtp *s, struct mbuf *mb)
{
	return transform(s, mb, true, true);
}


/**
 * Unprotect one SRTCP packet in place
 *
 * @param s  Inbound SRTP session
 * @param mb SRTCP packet, header at mb->pos
 *
 * @return 0 if success, otherwise errorcode (EBADMSG, EALREADY)
 */
int lsip_srtp_unprotect_rtcp(struct lsip_srtp *s, struct mbuf *mb)
{
	return transform(s, mb, true, false);
}


static bool suite_known(const char *suite)
{
	srtp_policy_t pol;

	return suite_policy(&pol, suite) == 0;
}


static int csprng(uint8_t *buf, size_t len)
{
	ssize_t n;

	while (len) {
		n = getrandom(buf, len, 0);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return errno;
		}
		buf += n;
		len -= (size_t)n;
	}

	return 0;
}


/**
 * Make an SDES crypto attribute value with a fresh key from the CSPRNG
 *
 * @param linep Pointer to allocated line "1 <suite> inline:<base64>",
 *              without "a=crypto:" (release with mem_deref)
 * @param tag   Crypto tag, 0 to 999999999
 * @param suite Crypto suite name
 * @param key   Returns the 30-byte master key and salt
 *
 * @return 0 if success, otherwise errorcode (ENOTSUP: unknown suite)
 */
int lsip_sdes_make(char **linep, int tag, const char *suite,
		   uint8_t key[LSIP_SRTP_KEYLEN])
{
	char b64[SDES_B64LEN + 1];
	size_t olen = sizeof(b64);
	int err;

	if (!linep || !suite || !key || tag < 0 || tag > 999999999)
		return EINVAL;

	if (!suite_known(suite))
		return ENOTSUP;

	err = csprng(key, LSIP_SRTP_KEYLEN);
	if (err)
		return err;

	err = base64_encode(key, LSIP_SRTP_KEYLEN, b64, &olen);
	if (!err)
		err = re_sdprintf(linep, "%d %s inline:%b", tag, suite,
				  b64, olen);

	memset(b64, 0, sizeof(b64));
	if (err)
		memset(key, 0, LSIP_SRTP_KEYLEN);

	return err;
}


static bool is_b64(char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
		(c >= '0' && c <= '9') || c == '+' || c == '/';
}


static bool all_digits(const char *p, size_t n, size_t min, size_t max)
{
	size_t i;

	if (n < min || n > max)
		return false;

	for (i = 0; i < n; i++)
		if (p[i] < '0' || p[i] > '9')
			return false;

	return true;
}


/* inline key-info: key||salt ["|" lifetime] ["|" MKI ":" length] */
static int parse_keyinfo(const char *p, size_t n, uint8_t *key)
{
	const char *end = p + n, *bar, *colon;
	bool lifetime = false, mki = false;
	size_t i, klen, olen = LSIP_SRTP_KEYLEN;
	int err;

	bar = memchr(p, '|', n);
	klen = bar ? (size_t)(bar - p) : n;
	if (klen != SDES_B64LEN)
		return EBADMSG;

	for (i = 0; i < klen; i++)
		if (!is_b64(p[i]))
			return EBADMSG;

	err = base64_decode(p, klen, key, &olen);
	if (err || olen != LSIP_SRTP_KEYLEN)
		return EBADMSG;

	/* accepted and ignored: the lifetime, then the MKI */
	while (bar) {
		const char *f = bar + 1;

		bar = memchr(f, '|', (size_t)(end - f));
		n = (bar ? bar : end) - f;
		colon = memchr(f, ':', n);

		if (mki)
			return EBADMSG;

		if (colon) {
			if (!all_digits(f, colon - f, 1, 9) ||
			    !all_digits(colon + 1, f + n - colon - 1, 1, 3))
				return EBADMSG;
			mki = true;
		}
		else {
			if (lifetime)
				return EBADMSG;
			if (n > 2 && f[0] == '2' && f[1] == '^') {
				f += 2;
				n -= 2;
			}
			if (!all_digits(f, n, 1, 20))
				return EBADMSG;
			lifetime = true;
		}
	}

	return 0;
}


/**
 * Parse an SDES crypto attribute value (RFC 4568 section 9.1)
 *
 * Takes "<tag> <suite> inline:<key||salt>[|lifetime][|MKI:len]
 * [session-params]" without "a=crypto:". Only the first key-param is
 * used; lifetime and MKI are checked and ignored (no MKI in the packets
 * is supported). The only session parameter accepted is WSH=.
 *
 * @param attr   Attribute value
 * @param tag    Returns the tag
 * @param suite  Returns the suite name (also for ENOTSUP)
 * @param suitesz Size of suite buffer
 * @param key    Returns the 30-byte master key and salt
 *
 * @return 0 if success, EBADMSG if malformed (bad base64, short key),
 *         ENOTSUP for an unknown suite or session parameter
 */
int lsip_sdes_parse(const struct pl *attr, int *tag, char *suite,
		    size_t suitesz, uint8_t key[LSIP_SRTP_KEYLEN])
{
	uint8_t kbuf[LSIP_SRTP_KEYLEN];
	char sbuf[64];
	const char *p, *end, *q, *semi;
	unsigned t = 0;
	size_t n;
	int err;

	if (!attr || !tag || !suite || !suitesz || !key)
		return EINVAL;

	p = attr->p;
	end = p + attr->l;
	while (end > p && (end[-1] == ' ' || end[-1] == '\t' ||
			   end[-1] == '\r' || end[-1] == '\n'))
		--end;

	/* tag: 1*9DIGIT, then 1*WSP */
	for (q = p; q < end && *q >= '0' && *q <= '9'; q++)
		t = t * 10 + (unsigned)(*q - '0');
	if (q == p || q - p > 9 || q == end || (*q != ' ' && *q != '\t'))
		return EBADMSG;

	/* crypto-suite */
	while (q < end && (*q == ' ' || *q == '\t'))
		++q;
	for (p = q; q < end && *q != ' ' && *q != '\t'; q++)
		;
	n = (size_t)(q - p);
	if (!n || n >= sizeof(sbuf) || q == end)
		return EBADMSG;
	memcpy(sbuf, p, n);
	sbuf[n] = '\0';
	(void)str_ncpy(suite, sbuf, suitesz);
	if (!suite_known(sbuf))
		return ENOTSUP;

	/* key-params: first one only, "inline:" key-info */
	while (q < end && (*q == ' ' || *q == '\t'))
		++q;
	for (p = q; q < end && *q != ' ' && *q != '\t'; q++)
		;
	n = (size_t)(q - p);
	if (n < 7 || strncasecmp(p, "inline:", 7))
		return EBADMSG;
	semi = memchr(p, ';', n);
	if (semi)
		n = (size_t)(semi - p);
	err = parse_keyinfo(p + 7, n - 7, kbuf);
	if (err)
		goto out;

	/* session-params */
	while (q < end) {
		while (q < end && (*q == ' ' || *q == '\t'))
			++q;
		for (p = q; q < end && *q != ' ' && *q != '\t'; q++)
			;
		n = (size_t)(q - p);
		if (n && !(n > 4 && !strncmp(p, "WSH=", 4))) {
			err = ENOTSUP;
			goto out;
		}
	}

	*tag = (int)t;
	memcpy(key, kbuf, sizeof(kbuf));

 out:
	memset(kbuf, 0, sizeof(kbuf));
	return err;
}


/**
 * Decide an offer's media security under a per-call policy
 *
 * An RTP/AVP offer with a=crypto (best-effort SRTP) is answered with
 * SRTP unless the policy is off. Other transports are not negotiated.
 *
 * @param pol              Policy of the call
 * @param offer_proto      Offered proto: "RTP/AVP" or "RTP/SAVP"
 * @param offer_has_crypto true if the offer has a usable a=crypto
 *
 * @return 0 plain RTP, 1 SRTP, 488 if the policy forbids the offer
 */
int lsip_srtp_negotiate(enum lsip_srtp_policy pol, const char *offer_proto,
			bool offer_has_crypto)
{
	bool savp;

	if (!str_cmp(offer_proto, "RTP/SAVP"))
		savp = true;
	else if (!str_cmp(offer_proto, "RTP/AVP"))
		savp = false;
	else
		return 488;

	switch (pol) {

	case LSIP_SRTP_OFF:
		return savp ? 488 : 0;

	case LSIP_SRTP_OPTIONAL:
		if (savp)
			return offer_has_crypto ? 1 : 488;
		return offer_has_crypto ? 1 : 0;

	case LSIP_SRTP_MANDATORY:
		return offer_has_crypto ? 1 : 488;

	default:
		return 488;
	}
}


/* Lua test hooks (internal) */


static struct lsip_srtp *srtp_check(lua_State *L)
{
	struct lsip_srtp **box = lsip_checkbox(L, 1, LSIP_SRTP_MT);

	return *box;
}


static const char *suite_arg(lua_State *L, int idx)
{
	return luaL_optstring(L, idx, "AES_CM_128_HMAC_SHA1_80");
}


/* core.srtp_sdes_make([tag], [suite]) -> line, key | nil, err, code */
static int l_sdes_make(lua_State *L)
{
	lua_Integer tag = luaL_optinteger(L, 1, 1);
	const char *suite = suite_arg(L, 2);
	uint8_t key[LSIP_SRTP_KEYLEN];
	char *line = NULL;
	int err;

	if (tag < 0 || tag > 999999999)
		return luaL_argerror(L, 1, "tag out of range");

	err = lsip_sdes_make(&line, (int)tag, suite, key);
	if (err)
		return lsip_fail(L, err, "sdes");

	lua_pushstring(L, line);
	lua_pushlstring(L, (const char *)key, sizeof(key));
	memset(key, 0, sizeof(key));
	mem_deref(line);
	return 2;
}


/* core.srtp_sdes_parse(line) -> tag, suite, key | nil, err, code */
static int l_sdes_parse(lua_State *L)
{
	uint8_t key[LSIP_SRTP_KEYLEN];
	char suite[64];
	struct pl pl;
	size_t len;
	int tag, err;

	pl.p = luaL_checklstring(L, 1, &len);
	pl.l = len;
	err = lsip_sdes_parse(&pl, &tag, suite, sizeof(suite), key);
	if (err)
		return lsip_fail(L, err, "sdes");

	lua_pushinteger(L, tag);
	lua_pushstring(L, suite);
	lua_pushlstring(L, (const char *)key, sizeof(key));
	memset(key, 0, sizeof(key));
	return 3;
}


/* core.srtp_session(suite, key, outbound) -> srtp | nil, err, code */
static int l_session(lua_State *L)
{
	const char *suite = luaL_checkstring(L, 1);
	struct lsip_srtp *s;
	const char *key;
	size_t len;
	int err;

	key = luaL_checklstring(L, 2, &len);
	err = lsip_srtp_alloc(&s, suite, (const uint8_t *)key, len,
			      lua_toboolean(L, 3));
	if (err)
		return lsip_fail(L, err, "srtp");

	lsip_newbox(L, s, LSIP_SRTP_MT);
	return 1;
}


/* core.srtp_pair(line) -> tx, rx: both directions keyed from one line */
static int l_pair(lua_State *L)
{
	struct lsip_srtp *tx = NULL, *rx = NULL;
	uint8_t key[LSIP_SRTP_KEYLEN];
	char suite[64];
	struct pl pl;
	size_t len;
	int tag, err;

	pl.p = luaL_checklstring(L, 1, &len);
	pl.l = len;
	err = lsip_sdes_parse(&pl, &tag, suite, sizeof(suite), key);
	if (!err)
		err = lsip_srtp_alloc(&tx, suite, key, sizeof(key), true);
	if (!err)
		err = lsip_srtp_alloc(&rx, suite, key, sizeof(key), false);
	memset(key, 0, sizeof(key));
	if (err) {
		mem_deref(tx);
		return lsip_fail(L, err, "srtp");
	}

	lsip_newbox(L, tx, LSIP_SRTP_MT);
	lsip_newbox(L, rx, LSIP_SRTP_MT);
	return 2;
}


typedef int (transform_h)(struct lsip_srtp *s, struct mbuf *mb);


/* string in, string out through one of the four transforms */
static int l_transform(lua_State *L, transform_h *th, const char *what)
{
	struct lsip_srtp *s = srtp_check(L);
	struct mbuf *mb;
	const char *pkt;
	size_t len;
	int err;

	pkt = luaL_checklstring(L, 2, &len);
	if (!s)
		return lsip_fail(L, ENOTCONN, "closed");

	mb = mbuf_alloc(len + SRTP_MAX_TRAILER_LEN);
	if (!mb)
		return lsip_fail(L, ENOMEM, what);

	err = mbuf_write_mem(mb, (const uint8_t *)pkt, len);
	mb->pos = 0;
	if (!err)
		err = th(s, mb);
	if (err) {
		mem_deref(mb);
		return lsip_fail(L, err, what);
	}

	lua_pushlstring(L, (const char *)mbuf_buf(mb), mbuf_get_left(mb));
	mem_deref(mb);
	return 1;
}


/* srtp:protect(rtp) -> srtp packet | nil, err, code */
static int l_srtp_protect(lua_State *L)
{
	return l_transform(L, lsip_srtp_protect, "srtp_protect");
}


/* srtp:unprotect(srtp) -> rtp packet | nil, err, code */
static int l_srtp_unprotect(lua_State *L)
{
	return l_transform(L, lsip_srtp_unprotect, "srtp_unprotect");
}


/* srtp:protect_rtcp(rtcp) -> srtcp packet | nil, err, code */
static int l_srtp_protect_rtcp(lua_State *L)
{
	return l_transform(L, lsip_srtp_protect_rtcp, "srtp_protect_rtcp");
}


/* srtp:unprotect_rtcp(srtcp) -> rtcp packet | nil, err, code */
static int l_srtp_unprotect_rtcp(lua_State *L)
{
	return l_transform(L, lsip_srtp_unprotect_rtcp,
			   "srtp_unprotect_rtcp");
}


/* :close(), __gc, __close */
static int l_srtp_close(lua_State *L)
{
	struct lsip_srtp **box = lsip_checkbox(L, 1, LSIP_SRTP_MT);

	*box = mem_deref(*box);
	return 0;
}


/* core.srtp_negotiate(policy, proto, has_crypto) -> 0 | 1 | 488 */
static int l_negotiate(lua_State *L)
{
	static const char *const pols[] = {
		"off", "optional", "mandatory", NULL
	};
	static const enum lsip_srtp_policy vals[] = {
		LSIP_SRTP_OFF, LSIP_SRTP_OPTIONAL, LSIP_SRTP_MANDATORY
	};
	int i = luaL_checkoption(L, 1, NULL, pols);

	lua_pushinteger(L, lsip_srtp_negotiate(vals[i],
					       luaL_checkstring(L, 2),
					       lua_toboolean(L, 3)));
	return 1;
}


/**
 * Initialise libsrtp2 (once) and register the internal srtp test hooks
 *
 * @param L Lua state, module table on top
 *
 * @return 0
 */
int lsip_open_srtp(lua_State *L)
{
	static const luaL_Reg methods[] = {
		{"protect", l_srtp_protect},
		{"unprotect", l_srtp_unprotect},
		{"protect_rtcp", l_srtp_protect_rtcp},
		{"unprotect_rtcp", l_srtp_unprotect_rtcp},
		{"close", l_srtp_close},
		{NULL, NULL}
	};
	static const luaL_Reg meta[] = {
		{"__gc", l_srtp_close},
		{"__close", l_srtp_close},
		{NULL, NULL}
	};
	static const luaL_Reg funcs[] = {
		{"srtp_sdes_make", l_sdes_make},
		{"srtp_sdes_parse", l_sdes_parse},
		{"srtp_session", l_session},
		{"srtp_pair", l_pair},
		{"srtp_negotiate", l_negotiate},
		{NULL, NULL}
	};
	int err;

	if (!srtp_inited) {
		err = srtp_errno(srtp_init());
		if (err)
			return luaL_error(L, "luasip: srtp_init: %s",
					  strerror(err));
		srtp_inited = true;
	}

	lsip_setfuncs(L, LSIP_SRTP_MT, methods, meta);
	luaL_setfuncs(L, funcs, 0);

	lua_pushinteger(L, ENOTSUP);
	lua_setfield(L, -2, "ENOTSUP");
	return 0;
}
