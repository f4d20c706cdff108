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
#include <stdlib.h>
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
static const char *crypto_why;   /* NULL: OpenSSL primitives installed */


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
static int transform_ctx(srtp_t ctx, struct mbuf *mb, bool rtcp,
			 bool protect)
{
	size_t len, need;
	srtp_err_status_t st;
	uint8_t *p;
	int n, err;

	if (!ctx || !mb)
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
		st = rtcp ? srtp_protect_rtcp(ctx, p, &n)
			  : srtp_protect(ctx, p, &n);
	else
		st = rtcp ? srtp_unprotect_rtcp(ctx, p, &n)
			  : srtp_unprotect(ctx, p, &n);

	err = srtp_errno(st);
	if (err)
		return err;

	mb->end = mb->pos + (size_t)n;
	return 0;
}


static int transform(struct lsip_srtp *s, struct mbuf *mb, bool rtcp,
		     bool protect)
{
	if (!s || protect != s->outbound)
		return EINVAL;

	return transform_ctx(s->ctx, mb, rtcp, protect);
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


/*
 * Media binding (struct lsip_msrtp): SDES offer/answer on one libre
 * sdp_media and per-packet protection through udp helpers on the
 * rtp_sock's RTP and RTCP sockets, so that libre parses RTP and RTCP only
 * after a successful unprotect. The struct is allocated per media when
 * the policy is not "off"; the libsrtp2 sessions and the helpers exist
 * only while SRTP is negotiated. To free a media: lsip_msrtp_detach(),
 * then the rtp_sock (libre's RTCP BYE from its destructor still passes
 * the helpers and goes out as SRTCP; the socket frees the helpers), then
 * the struct.
 *
 * Memory: the struct is about 400 bytes. With the crypto of srtp_ossl.c
 * an SRTP call holds about 5 KB that a plain one does not (bench/
 * RESULTS.md: 42.5 against 37.7 KB per call at 500 calls); with
 * libsrtp2's own (LUASIP_SRTP_BUILTIN=1: Debian builds it on NSS, whose
 * per-stream cipher contexts dominate) each session cost about 30 KiB
 * (mallinfo2), about 60 KiB per call.
 */


enum { NSUITES = 2 };

static const char *const suite_names[NSUITES] = {
	"AES_CM_128_HMAC_SHA1_80",
	"AES_CM_128_HMAC_SHA1_32",
};


struct sdes_key {
	int tag;
	int suite;                         /* index in suite_names */
	uint8_t key[LSIP_SRTP_KEYLEN];
};


/*
 * Warming. An SRTP packet walks libsrtp2's state of its session: srtp_ctx
 * -> stream list -> stream -> session keys -> cipher, auth, key limit,
 * replay window. With hundreds of calls, each touched once per 20 ms,
 * those are some 20 cache lines fetched from memory one after another,
 * each load waiting for the one before (and in a VM, for a nested page
 * walk): perf put most of SRTP's cost there (srtp_stream_list_get alone,
 * two loads, was 2.5% of the server at 500 calls), and rdtsc around
 * srtp_protect/unprotect read 5,000-6,000 cycles per packet there, 1,100
 * in a loop on one warm session. A plan is those lines, found once per
 * direction after the first packet has made its stream; before each
 * packet they are read all at once, independent loads that the CPU
 * overlaps, so the walk that follows finds them in cache (measured:
 * 6,500 -> 4,200 cycles per protect and 5,700 -> 3,300 per unprotect at
 * 500 calls, the reads included). Prefetch instructions issued earlier
 * (when the media clock or epoll named the call next) did nothing
 * measurable here; loads did.
 *
 * libsrtp2 does not export that state's layout; the offsets below are
 * those of its 2.5 series (srtp_priv.h, checked against the disassembly
 * of Debian's 2.5.0: srtp_stream_list_get reads ssrc at 0 and next at
 * 0x70; srtp_protect_mki the replay window at 0x18, the session keys'
 * limit at 0x50). A plan is only built for libsrtp2 2.5.x, and only kept
 * when the stream's SSRC is the packet's and its cipher and auth are
 * ours (srtp_ossl.c, which knows their size); otherwise it is empty. A
 * plan outlives nothing it points to: it is reset whenever a session of
 * its media is replaced or freed. LUASIP_SRTP_NO_WARM=1 turns warming
 * off (to measure it).
 */
enum {
	PF_RANGES = 8,
	PF_LIST_NEXT = 0x70,     /* srtp_stream_ctx_t_: next */
	PF_STREAM_SIZE = 0x80,   /* ... its size (prev at 0x78) */
	PF_STREAM_KEYS = 0x08,   /* session_keys */
	PF_STREAM_WORD = 0x28,   /* rtp_rdbx.bitmask.word */
	PF_KEYS_CIPHER = 0x00,   /* srtp_session_keys_t: rtp_cipher */
	PF_KEYS_AUTH = 0x10,     /* rtp_auth */
	PF_KEYS_LIMIT = 0x50,    /* limit */
	PF_KEYS_SIZE = 0x58,
	PF_LIMIT_SIZE = 0x10,    /* srtp_key_limit_ctx_t */
	PF_WORD_SIZE = 0x10,     /* 128-bit replay window */
	PF_CTX_SIZE = 0x18,      /* srtp_ctx_t_ */
};

/* per range: its address | its size << PF_SHIFT (reads stay inside it) */
typedef uint64_t pf_plan[PF_RANGES];
#define PF_SHIFT 48

/* one direction's plan and the SSRC it was built for (once per SSRC) */
struct pf {
	pf_plan plan;
	uint32_t ssrc;                     /* network order, if set */
	bool set;
};

static bool pf_on;               /* libsrtp2 2.5.x, our crypto, not off */


struct lsip_msrtp {
	/* first: what the udp helpers read for every packet */
	srtp_t tx_ctx, rx_ctx;             /* stx->ctx, srx->ctx, or NULL */
	uint32_t fail, replay, rtcp_fail, tx_err;
	struct pf pf_tx, pf_rx;
	enum lsip_srtp_policy pol;
	unsigned suites;                   /* bit i: suite_names[i] allowed */
	struct sdes_key offered[NSUITES];  /* our lines in a=crypto */
	int noffered;
	struct sdes_key tx, rx;            /* keys of the active sessions */
	struct lsip_srtp *stx, *srx;       /* NULL while plain */
	struct udp_helper *uh_rtp, *uh_rtcp;
	bool active;
};


static int suite_index(const char *name)
{
	int i;

	for (i = 0; i < NSUITES; i++)
		if (!str_cmp(name, suite_names[i]))
			return i;

	return -1;
}


static void pf_add(pf_plan pf, int *n, const void *p, size_t size)
{
	const uint64_t a = (uintptr_t)p;

	if (p && size && size < 4096 && !(a >> PF_SHIFT) && *n < PF_RANGES)
		pf[(*n)++] = a | (uint64_t)size << PF_SHIFT;
}


/* the plan of the stream of ssrc (network order) in ctx; see above */
static void pf_build(pf_plan pf, srtp_t ctx, uint32_t ssrc)
{
	const char *list, *stream, *keys, *cipher, *auth;
	size_t csize, asize;
	int n = 0;

	memset(pf, 0, sizeof(pf_plan));
	if (!ctx)
		return;

	list = *(char *const *)(const void *)ctx;
	stream = list ? *(char *const *)(const void *)(list + PF_LIST_NEXT)
		      : NULL;
	while (stream && *(const uint32_t *)(const void *)stream != ssrc)
		stream = *(char *const *)(const void *)(stream + PF_LIST_NEXT);
	if (!stream)
		return;

	keys = *(char *const *)(const void *)(stream + PF_STREAM_KEYS);
	if (!keys)
		return;
	cipher = *(char *const *)(const void *)(keys + PF_KEYS_CIPHER);
	auth = *(char *const *)(const void *)(keys + PF_KEYS_AUTH);
	csize = lsip_srtp_ossl_cipher_size(cipher);
	asize = lsip_srtp_ossl_auth_size(auth);
	if (!csize || !asize)
		return;

	pf_add(pf, &n, ctx, PF_CTX_SIZE);
	pf_add(pf, &n, list + PF_LIST_NEXT, sizeof(void *));
	pf_add(pf, &n, stream, PF_STREAM_SIZE);
	pf_add(pf, &n, *(char *const *)(const void *)(stream + PF_STREAM_WORD),
	       PF_WORD_SIZE);
	pf_add(pf, &n, keys, PF_KEYS_SIZE);
	pf_add(pf, &n, *(char *const *)(const void *)(keys + PF_KEYS_LIMIT),
	       PF_LIMIT_SIZE);
	pf_add(pf, &n, cipher, csize);
	pf_add(pf, &n, auth, asize);
}


/* read an octet of every line of the plan (the loads overlap) */
static inline void pf_run(const pf_plan pf)
{
	unsigned acc = 0;
	int i;

	for (i = 0; i < PF_RANGES && pf[i]; i++) {
		const volatile uint8_t *p = (const volatile uint8_t *)
			(uintptr_t)(pf[i] & (((uint64_t)1 << PF_SHIFT) - 1));
		const size_t size = (size_t)(pf[i] >> PF_SHIFT);
		size_t off;

		for (off = 0; off < size; off += 64)
			acc += p[off];
		acc += p[size - 1];     /* its last line */
	}
	__asm__ volatile ("" : : "r" (acc));
}


/* after a packet went through: a plan for its SSRC (once per SSRC) */
static inline void pf_check(struct pf *pf, srtp_t ctx, const struct mbuf *mb)
{
	uint32_t ssrc;

	if (!pf_on || mbuf_get_left(mb) < RTP_HDRLEN)
		return;

	memcpy(&ssrc, mbuf_buf(mb) + 8, sizeof(ssrc));
	if (pf->set && ssrc == pf->ssrc)
		return;

	pf_build(pf->plan, ctx, ssrc);
	pf->ssrc = ssrc;
	pf->set = true;
}


/* plans are rebuilt at the next packet of each direction */
static void pf_reset(struct lsip_msrtp *s)
{
	memset(&s->pf_tx, 0, sizeof(s->pf_tx));
	memset(&s->pf_rx, 0, sizeof(s->pf_rx));
}


static void msrtp_deactivate(struct lsip_msrtp *s)
{
	pf_reset(s);
	s->uh_rtp = mem_deref(s->uh_rtp);
	s->uh_rtcp = mem_deref(s->uh_rtcp);
	s->stx = mem_deref(s->stx);
	s->srx = mem_deref(s->srx);
	s->tx_ctx = s->rx_ctx = NULL;
	memset(&s->tx, 0, sizeof(s->tx));
	memset(&s->rx, 0, sizeof(s->rx));
	s->active = false;
}


static void msrtp_destructor(void *arg)
{
	struct lsip_msrtp *s = arg;

	msrtp_deactivate(s);
	memset(s->offered, 0, sizeof(s->offered));
}


/* the udp helpers: run inside re_main for every datagram */
static bool send_rtp(int *err, struct sa *dst, struct mbuf *mb, void *arg)
{
	struct lsip_msrtp *s = arg;

	(void)dst;
	pf_run(s->pf_tx.plan);
	*err = transform_ctx(s->tx_ctx, mb, false, true);
	if (*err)
		++s->tx_err;
	else
		pf_check(&s->pf_tx, s->tx_ctx, mb);

	return false;
}


static bool recv_rtp(struct sa *src, struct mbuf *mb, void *arg)
{
	struct lsip_msrtp *s = arg;
	int err;

	(void)src;
	pf_run(s->pf_rx.plan);
	err = transform_ctx(s->rx_ctx, mb, false, false);
	if (!err) {
		pf_check(&s->pf_rx, s->rx_ctx, mb);
		return false;
	}

	if (err == EALREADY)
		++s->replay;
	else
		++s->fail;

	return true;                       /* dropped */
}


static bool send_rtcp(int *err, struct sa *dst, struct mbuf *mb, void *arg)
{
	struct lsip_msrtp *s = arg;

	(void)dst;
	*err = transform_ctx(s->tx_ctx, mb, true, true);
	if (*err)
		++s->tx_err;

	return false;
}


static bool recv_rtcp(struct sa *src, struct mbuf *mb, void *arg)
{
	struct lsip_msrtp *s = arg;

	(void)src;
	if (!transform_ctx(s->rx_ctx, mb, true, false))
		return false;

	++s->rtcp_fail;
	return true;
}


static bool same_key(const struct sdes_key *a, const struct sdes_key *b)
{
	return a->suite == b->suite && !memcmp(a->key, b->key, sizeof(a->key));
}


/*
 * (re)key: a direction whose key is unchanged keeps its session (and
 * its packet index and replay state); the helpers stay once registered
 */
static int msrtp_activate(struct lsip_msrtp *s, struct rtp_sock *rtp,
			  const struct sdes_key *tx, const struct sdes_key *rx)
{
	struct lsip_srtp *stx = NULL, *srx = NULL;
	const char *suite = suite_names[tx->suite];
	int err = 0;

	if (s->active && same_key(tx, &s->tx))
		stx = mem_ref(s->stx);
	else
		err = lsip_srtp_alloc(&stx, suite, tx->key, sizeof(tx->key),
				      true);
	if (!err && s->active && same_key(rx, &s->rx))
		srx = mem_ref(s->srx);
	else if (!err)
		err = lsip_srtp_alloc(&srx, suite, rx->key, sizeof(rx->key),
				      false);
	if (err)
		goto out;

	if (!s->uh_rtp)
		err = udp_register_helper(&s->uh_rtp, rtp_sock(rtp), 0,
					  send_rtp, recv_rtp, s);
	if (!err && !s->uh_rtcp && rtcp_sock(rtp))
		err = udp_register_helper(&s->uh_rtcp, rtcp_sock(rtp), 0,
					  send_rtcp, recv_rtcp, s);
	if (err)
		goto out;

	mem_deref(s->stx);
	mem_deref(s->srx);
	s->stx = stx;
	s->srx = srx;
	s->tx_ctx = stx->ctx;
	s->rx_ctx = srx->ctx;
	pf_reset(s);
	stx = srx = NULL;
	s->tx = *tx;
	s->rx = *rx;
	s->active = true;

	/* a later re-offer of ours repeats the active line */
	s->offered[0] = *tx;
	s->noffered = 1;

 out:
	mem_deref(stx);
	mem_deref(srx);
	if (err && !s->active)
		msrtp_deactivate(s);

	return err;
}


static int set_line(struct sdp_media *sm, bool replace,
		    const struct sdes_key *k)
{
	char b64[48];
	size_t olen = sizeof(b64);
	int err;

	err = base64_encode(k->key, sizeof(k->key), b64, &olen);
	if (!err)
		err = sdp_media_set_lattr(sm, replace, "crypto",
					  "%d %s inline:%b", k->tag,
					  suite_names[k->suite], b64, olen);

	memset(b64, 0, sizeof(b64));
	return err;
}


/* a fresh key for suite with tag, as lsip_sdes_make */
static int new_key(struct sdes_key *k, int tag, int suite)
{
	char *line = NULL;
	int err;

	k->tag = tag;
	k->suite = suite;
	err = lsip_sdes_make(&line, tag, suite_names[suite], k->key);
	if (line) {
		memset(line, 0, strlen(line));
		mem_deref(line);
	}

	return err;
}


/**
 * Read the srtp options of core.media and allocate the media's state
 *
 * Raises on a bad value, naming the option. Policy "off" allocates
 * nothing (*sp is NULL).
 *
 * @param L   Lua state
 * @param idx Index of the policy ("off", "optional", "mandatory" or nil);
 *            idx + 1: list of suite names or nil (both)
 * @param sp  Returns the state, NULL for "off"
 *
 * @return 0 if success, otherwise errorcode
 */
int lsip_msrtp_new(lua_State *L, int idx, struct lsip_msrtp **sp)
{
	static const char *const pols[] = {
		"off", "optional", "mandatory", NULL
	};
	const char *p = luaL_optstring(L, idx, "off");
	struct lsip_msrtp *s;
	unsigned suites = 0;
	int pi, i, n;

	for (pi = 0; pols[pi] && strcmp(pols[pi], p); pi++)
		;
	if (!pols[pi])
		return luaL_error(L, "bad option 'srtp' (\"off\", \"optional\" "
				  "or \"mandatory\" expected, got \"%s\")", p);

	if (lua_isnoneornil(L, idx + 1)) {
		suites = (1u << NSUITES) - 1;
	}
	else {
		luaL_checktype(L, idx + 1, LUA_TTABLE);
		n = (int)luaL_len(L, idx + 1);
		for (i = 1; i <= n; i++) {
			const char *name;
			int si;

			lua_geti(L, idx + 1, i);
			name = lua_tostring(L, -1);
			si = name ? suite_index(name) : -1;
			if (si < 0)
				return luaL_error(L, "bad option 'srtp_suites' "
						  "(AES_CM_128_HMAC_SHA1_80 or "
						  "_32 expected, got %s)",
						  name ? name :
						  luaL_typename(L, -1));
			lua_pop(L, 1);
			suites |= 1u << si;
		}
		if (!suites)
			return luaL_error(L, "bad option 'srtp_suites' (at "
					  "least one suite expected)");
	}

	*sp = NULL;
	if (pi == LSIP_SRTP_OFF)
		return 0;

	s = mem_zalloc(sizeof(*s), msrtp_destructor);
	if (!s)
		return ENOMEM;

	s->pol = (enum lsip_srtp_policy)pi;
	s->suites = suites;
	*sp = s;
	return 0;
}


/**
 * The m= line's transport for our offers: RTP/SAVP only when mandatory
 *
 * @param s Media SRTP state or NULL
 *
 * @return "RTP/SAVP" or "RTP/AVP"
 */
const char *lsip_msrtp_proto(const struct lsip_msrtp *s)
{
	return s && s->pol == LSIP_SRTP_MANDATORY ? "RTP/SAVP" : "RTP/AVP";
}


/**
 * Let an offer's m=audio line match ours whatever its RTP profile
 *
 * Call with true before decoding an offer and with false after it, so
 * that answers to our offers must use the profile we offered.
 *
 * @param sm    SDP media line
 * @param offer true before decoding an offer, false after
 */
void lsip_msrtp_protos(struct sdp_media *sm, bool offer)
{
	if (offer)
		(void)sdp_media_set_alt_protos(sm, 2, "RTP/AVP", "RTP/SAVP");
	else
		(void)sdp_media_set_alt_protos(sm, 0);
}


/**
 * Put our a=crypto lines on an offer: one per allowed suite, tags 1, 2,
 * fresh keys; a re-offer repeats the lines of the first (or the active
 * line once SRTP runs)
 *
 * @param s  Media SRTP state or NULL (plain)
 * @param sm SDP media line
 *
 * @return 0 if success, otherwise errorcode
 */
int lsip_msrtp_offer(struct lsip_msrtp *s, struct sdp_media *sm)
{
	int i, err = 0;

	if (!s || s->noffered)
		return 0;

	for (i = 0; i < NSUITES && !err; i++) {
		struct sdes_key *k = &s->offered[s->noffered];

		if (!(s->suites & (1u << i)))
			continue;

		err = new_key(k, s->noffered + 1, i);
		if (!err)
			err = set_line(sm, s->noffered == 0, k);
		if (!err)
			++s->noffered;
	}

	if (err) {
		sdp_media_del_lattr(sm, "crypto");
		s->noffered = 0;
	}

	return err;
}


struct pick {
	const struct lsip_msrtp *s;
	bool answer;             /* match against our offered lines */
	struct sdes_key k;
	int offered;             /* index in s->offered */
	bool found;
};


static bool pick_handler(const char *name, const char *value, void *arg)
{
	struct pick *pk = arg;
	char suite[64];
	struct pl pl;
	int i, si;

	(void)name;
	if (!value)
		return false;

	pl_set_str(&pl, value);
	if (lsip_sdes_parse(&pl, &pk->k.tag, suite, sizeof(suite),
			    pk->k.key))
		return false;

	si = suite_index(suite);
	if (si < 0 || !(pk->s->suites & (1u << si)))
		return false;

	pk->k.suite = si;
	if (!pk->answer) {
		pk->found = true;
		return true;
	}

	for (i = 0; i < pk->s->noffered; i++) {
		const struct sdes_key *o = &pk->s->offered[i];

		if (o->tag == pk->k.tag && o->suite == si) {
			pk->offered = i;
			pk->found = true;
			return true;
		}
	}

	return false;
}


/**
 * Answer a decoded offer under the policy: plain, SRTP with the first
 * acceptable a=crypto line (our fresh key, its tag) or refuse
 *
 * @param s   Media SRTP state or NULL (policy off)
 * @param sm  SDP media line, the offer decoded
 * @param rtp RTP socket of the media
 *
 * @return 0 if success, EPROTO if the policy refuses (488), otherwise
 *         errorcode
 */
int lsip_msrtp_answer(struct lsip_msrtp *s, struct sdp_media *sm,
		      struct rtp_sock *rtp)
{
	struct pick pk;
	struct sdes_key tx;
	int r, err;

	memset(&pk, 0, sizeof(pk));
	pk.s = s;
	if (s)
		(void)sdp_media_rattr_apply(sm, "crypto", pick_handler, &pk);

	r = lsip_srtp_negotiate(s ? s->pol : LSIP_SRTP_OFF,
				sdp_media_proto(sm), pk.found);
	if (r == 488) {
		err = EPROTO;
		goto out;
	}

	if (r == 0) {
		if (s) {
			msrtp_deactivate(s);
			sdp_media_del_lattr(sm, "crypto");
			s->noffered = 0;
		}
		err = 0;
		goto out;
	}

	/* the same key again (a re-offer): keep the sessions */
	if (s->active && same_key(&pk.k, &s->rx)) {
		s->tx.tag = pk.k.tag;
		s->offered[0] = s->tx;
		err = set_line(sm, true, &s->tx);
		goto out;
	}

	err = new_key(&tx, pk.k.tag, pk.k.suite);
	if (!err)
		err = msrtp_activate(s, rtp, &tx, &pk.k);
	if (!err)
		err = set_line(sm, true, &tx);
	memset(&tx, 0, sizeof(tx));

 out:
	memset(&pk, 0, sizeof(pk));
	return err;
}


/**
 * Apply the answer to our offer: SRTP with the answered line (its tag
 * names our key), plain, or refuse
 *
 * @param s   Media SRTP state or NULL (we offered plain RTP)
 * @param sm  SDP media line, the answer decoded
 * @param rtp RTP socket of the media
 *
 * @return 0 if success, EPROTO if the answer is not acceptable (no
 *         crypto while mandatory, another profile), otherwise errorcode
 */
int lsip_msrtp_apply(struct lsip_msrtp *s, struct sdp_media *sm,
		     struct rtp_sock *rtp)
{
	struct pick pk;
	int err = 0;

	if (!s)
		return 0;

	/* libre zeroes the port of an answer in another profile */
	if (!sa_port(sdp_media_raddr(sm)))
		return EPROTO;

	memset(&pk, 0, sizeof(pk));
	pk.s = s;
	pk.answer = true;
	(void)sdp_media_rattr_apply(sm, "crypto", pick_handler, &pk);

	if (!pk.found) {
		if (s->pol == LSIP_SRTP_MANDATORY)
			return EPROTO;
		msrtp_deactivate(s);
		return 0;
	}

	if (!s->active || !same_key(&pk.k, &s->rx) ||
	    !same_key(&s->offered[pk.offered], &s->tx)) {
		struct sdes_key tx = s->offered[pk.offered];

		err = msrtp_activate(s, rtp, &tx, &pk.k);
		memset(&tx, 0, sizeof(tx));
	}

	/* re-offers carry the line in use only */
	if (!err)
		err = set_line(sm, true, &s->tx);

	memset(&pk, 0, sizeof(pk));
	return err;
}


/**
 * Hand the udp helpers over to the rtp_sock, which is freed next (at
 * once: the media holds its only reference) and frees them; the state
 * must outlive that, as the helpers still protect the RTCP BYE
 *
 * @param s Media SRTP state or NULL
 */
void lsip_msrtp_detach(struct lsip_msrtp *s)
{
	if (!s)
		return;

	s->uh_rtp = NULL;
	s->uh_rtcp = NULL;
}


/**
 * Add the SRTP fields to the media stats table on top of the stack:
 * srtp (suite name, or false while plain), srtp_fail (RTP packets that
 * failed authentication, dropped), srtp_replay (replayed or too old,
 * dropped), srtcp_fail (RTCP packets dropped), srtp_tx_fail (packets
 * not sent because protecting failed), srtp_warm (both directions' state
 * is read ahead of each packet: see "Warming")
 *
 * @param L Lua state, table on top
 * @param s Media SRTP state or NULL
 */
void lsip_msrtp_stats(lua_State *L, const struct lsip_msrtp *s)
{
	if (s && s->active)
		lua_pushstring(L, suite_names[s->tx.suite]);
	else
		lua_pushboolean(L, 0);
	lua_setfield(L, -2, "srtp");
	lua_pushinteger(L, s ? s->fail : 0);
	lua_setfield(L, -2, "srtp_fail");
	lua_pushinteger(L, s ? s->replay : 0);
	lua_setfield(L, -2, "srtp_replay");
	lua_pushinteger(L, s ? s->rtcp_fail : 0);
	lua_setfield(L, -2, "srtcp_fail");
	lua_pushinteger(L, s ? s->tx_err : 0);
	lua_setfield(L, -2, "srtp_tx_fail");
	lua_pushboolean(L, s && s->pf_tx.plan[0] && s->pf_rx.plan[0]);
	lua_setfield(L, -2, "srtp_warm");
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
 * Shut libsrtp2 down (at lua_close, after every session is freed), so that
 * its crypto kernel is not left allocated when core.so is unloaded
 */
void lsip_srtp_close(void)
{
	if (!srtp_inited)
		return;

	(void)srtp_shutdown();
	srtp_inited = false;
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
		crypto_why = lsip_srtp_ossl_install();
		if (crypto_why && !getenv("LUASIP_SRTP_BUILTIN"))
			re_fprintf(stderr, "luasip: SRTP uses libsrtp2's "
				   "built-in crypto: %s\n", crypto_why);
		/* the layout pf_build knows: libsrtp2 2.5.x */
		pf_on = !crypto_why &&
			(srtp_get_version() & 0xffff0000u) == 0x02050000u &&
			!getenv("LUASIP_SRTP_NO_WARM");
	}

	lsip_setfuncs(L, LSIP_SRTP_MT, methods, meta);
	luaL_setfuncs(L, funcs, 0);

	/* "openssl", or why libsrtp2's own primitives are in use */
	if (crypto_why)
		lua_pushfstring(L, "libsrtp2 (%s)", crypto_why);
	else
		lua_pushliteral(L, "openssl");
	lua_setfield(L, -2, "srtp_crypto");

	lua_pushinteger(L, ENOTSUP);
	lua_setfield(L, -2, "ENOTSUP");
	return 0;
}
