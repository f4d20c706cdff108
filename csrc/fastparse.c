/**
 * @file fastparse.c  fast paths for libre's URI, address and Via decoders
 *
 * libre decodes every Request-URI, To, From and Contact with two or three
 * re_regex calls each, and finds a URI host's address family with
 * inet_pton. In callgrind that was about 7,000 instructions per REGISTER
 * in uri_decode and 6,600 in sip_addr_decode (of 24,000 for the whole
 * sip_msg_decode). Nearly every value on the wire has the plain shape
 *
 *   scheme ":" [ user "@" ] host [ ":" port ] [ ";" params ] [ "?" headers ]
 *   [ display-name ] "<" uri ">" [ params ]     (token display-name)
 *   "SIP/2.0/" transport " " host [ ":" port ] [ ";" params ]     (Via)
 *
 * and for that shape the result of libre's expressions can be read off in
 * one pass. -Wl,--wrap=uri_decode,sip_addr_decode,sip_via_decode sends
 * libre's own calls
 * (sip_msg_decode, sipsess, the dialog code) and ours here; a value of any
 * other shape (IPv6 hosts, quoted display names, passwords, empty parts)
 * goes to libre's function unchanged. The results are libre's to the
 * pointer, empty captures included: `make difftest` compares both on
 * real values, their byte mutations and random strings
 * (tools/difftest/fastparse_diff.c).
 */

#include "lsip.h"
#include <arpa/inet.h>


int __real_uri_decode(struct uri *uri, const struct pl *pl);
int __wrap_uri_decode(struct uri *uri, const struct pl *pl);
int __real_sip_addr_decode(struct sip_addr *addr, const struct pl *pl);
int __wrap_sip_addr_decode(struct sip_addr *addr, const struct pl *pl);
int __real_sip_via_decode(struct sip_via *via, const struct pl *pl);
int __wrap_sip_via_decode(struct sip_via *via, const struct pl *pl);


enum {
	C_SCHEME = 1,        /* alnum "+-." */
	C_HOST   = 2,        /* alnum "-._" */
	C_DIGIT  = 4,
	C_DNAME  = 8,        /* not " \t\r\n<" and not '"' or '\\' */
	C_WS     = 16,       /* " \t\r\n" */
};

static uint8_t ctab[256];
static bool ctab_ready;

/* values decoded by a fast path (make difftest checks it is used) */
unsigned long lsip_fastparse_hits;


static void ctab_init(void)
{
	int c;

	for (c = 0; c < 256; c++) {
		uint8_t f = 0;

		if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
			f |= C_SCHEME | C_HOST;
		if (c >= '0' && c <= '9')
			f |= C_SCHEME | C_HOST | C_DIGIT;
		if (c == '+' || c == '.' || c == '-')
			f |= C_SCHEME;
		if (c == '-' || c == '.' || c == '_')
			f |= C_HOST;
		if (c == ' ' || c == '\t' || c == '\r' || c == '\n')
			f |= C_WS;
		else if (c != '<' && c != '"' && c != '\\')
			f |= C_DNAME;
		ctab[c] = f;
	}
	ctab_ready = true;
}


static inline bool is(uint8_t c, uint8_t f)
{
	return (ctab[c] & f) != 0;
}


/* the address family libre's uri_decode gives host (sa_set on it): only
 * a dotted quad can be an address here (the host has no ':') */
static int host_af(const char *p, size_t l)
{
	char buf[16];
	struct in_addr a;
	size_t i;

	if (l > 15)
		return AF_UNSPEC;
	for (i = 0; i < l; i++) {
		if (!(p[i] == '.' || (p[i] >= '0' && p[i] <= '9')))
			return AF_UNSPEC;
	}
	memcpy(buf, p, l);
	buf[l] = '\0';

	return inet_pton(AF_INET, buf, &a) == 1 ? AF_INET : AF_UNSPEC;
}


/* the plain shape, or false (then libre's function decides) */
static bool uri_fast(struct uri *uri, const struct pl *pl)
{
	const char *p = pl->p, *e = pl->p + pl->l, *s, *q, *at, *h, *x;
	uint32_t port = 0;
	size_t n;

	if (!ctab_ready)
		ctab_init();

	for (s = p; s < e && is(*s, C_SCHEME); s++)
		;
	if (s == p || s == e || *s != ':')
		return false;

	q = s + 1;
	at = memchr(q, '@', e - q);
	memset(uri, 0, sizeof(*uri));
	if (at) {
		/* "[^:]+:[^@:]*[:]*[^@]*@[^/;? ]+[^;? ]*[^?]*[^]*" at
		 * position 0 */
		if (at == q || memchr(q, ':', at - q))
			return false;
		uri->user.p = q;
		uri->user.l = at - q;
		uri->password.p = at;
		h = at + 1;
	}
	else {
		/* "[^:]+:[^/;? ]+[^;? ]*[^?]*[^]*" */
		h = q;
	}

	/* hostport, then "[^:]+[:]*[0-9]*" on it */
	for (x = h; x < e && is(*x, C_HOST); x++)
		;
	if (x == h)
		return false;
	uri->host.p = h;
	uri->host.l = x - h;
	if (x < e && *x == ':') {
		const char *d = ++x;

		for (; x < e && is(*x, C_DIGIT); x++)
			port = port * 10 + (uint32_t)(*x - '0');
		n = x - d;
		if (n < 1 || n > 5)
			return false;
	}
	if (x < e && *x != ';' && *x != '?')
		return false;

	uri->scheme.p = p;
	uri->scheme.l = s - p;
	uri->path.p = x;          /* empty: no '/' after the host */
	uri->params.p = x;
	s = memchr(x, '?', e - x);
	uri->params.l = (s ? s : e) - x;
	uri->headers.p = x + uri->params.l;
	uri->headers.l = e - uri->headers.p;
	uri->port = (uint16_t)port;
	uri->af = host_af(uri->host.p, uri->host.l);

	return true;
}


/**
 * Decode a URI: libre's uri_decode, with a fast path for the plain shape
 *
 * @param uri URI object
 * @param pl  Text to decode
 *
 * @return 0 if success, otherwise errorcode
 */
int __wrap_uri_decode(struct uri *uri, const struct pl *pl)
{
	if (uri && pl && pl->p && uri_fast(uri, pl)) {
		++lsip_fastparse_hits;
		return 0;
	}

	return __real_uri_decode(uri, pl);
}


/**
 * Decode a SIP address (name-addr or addr-spec): libre's sip_addr_decode,
 * with a fast path for a token or no display name, or no '<' at all
 *
 * @param addr SIP Address object
 * @param pl   Text to decode
 *
 * @return 0 if success, otherwise errorcode
 */
int __wrap_sip_addr_decode(struct sip_addr *addr, const struct pl *pl)
{
	const char *p, *e, *x, *lt, *gt;
	int err;

	if (!addr || !pl || !pl->p || !pl->l)
		return __real_sip_addr_decode(addr, pl);

	if (!ctab_ready)
		ctab_init();

	p = pl->p;
	e = p + pl->l;
	lt = memchr(p, '<', pl->l);
	memset(addr, 0, sizeof(*addr));

	if (lt) {
		/* "[~ \t\r\n<]*[ \t\r\n]*<[^>]+>[^]*" at position 0 */
		for (x = p; x < e && is(*x, C_DNAME); x++)
			;
		addr->dname.p = x > p ? p : NULL;
		addr->dname.l = x - p;
		for (; x < e && is(*x, C_WS); x++)
			;
		if (x != lt || lt + 1 == e || lt[1] == '>')
			return __real_sip_addr_decode(addr, pl);
		gt = memchr(lt + 1, '>', e - lt - 1);
		if (!gt)
			return __real_sip_addr_decode(addr, pl);
		addr->auri.p = lt + 1;
		addr->auri.l = gt - lt - 1;
		if (gt + 1 < e) {
			addr->params.p = gt + 1;
			addr->params.l = e - gt - 1;
		}
	}
	else {
		/* "[^;]+[^]*" (the first expression cannot match) */
		if (*p == ';')
			return __real_sip_addr_decode(addr, pl);
		x = memchr(p, ';', pl->l);
		addr->auri.p = p;
		addr->auri.l = (x ? x : e) - p;
		addr->params.p = p + addr->auri.l;
		addr->params.l = e - addr->params.p;
	}

	err = __wrap_uri_decode(&addr->uri, &addr->auri);
	if (err)
		memset(addr, 0, sizeof(*addr));
	else
		++lsip_fastparse_hits;

	return err;
}


/* "SIP/2.0/" transport SP host [":" port] [";" params], or false */
static bool via_fast(struct sip_via *via, const struct pl *pl,
		     struct pl *host, struct pl *port)
{
	const char *p = pl->p, *e = pl->p + pl->l, *t, *x, *h;
	struct pl tr;
	size_t n;

	if (pl->l < 12 || memcmp(p, "SIP/2.0/", 8))
		return false;

	for (t = x = p + 8; x < e && ((*x | 0x20) >= 'a' &&
				      (*x | 0x20) <= 'z'); x++)
		;
	if (x == t || x + 1 >= e || *x != ' ')
		return false;
	tr.p = t;
	tr.l = x - t;

	/* sent-by "[^; \t\r\n]+", then "[^:]+[:]*[0-9]*" on it */
	for (h = ++x; x < e && is(*x, C_HOST); x++)
		;
	if (x == h)
		return false;
	host->p = h;
	host->l = x - h;
	port->p = NULL;
	port->l = 0;
	if (x < e && *x == ':') {
		port->p = ++x;
		for (; x < e && is(*x, C_DIGIT); x++)
			;
		n = x - port->p;
		if (n < 1 || n > 5)
			return false;
		port->l = n;
	}
	if (x < e && *x != ';')
		return false;

	via->sentby.p = h;
	via->sentby.l = x - h;
	via->params.p = x;
	via->params.l = e - x;
	if (!pl_strcmp(&tr, "TCP"))
		via->tp = SIP_TRANSP_TCP;
	else if (!pl_strcmp(&tr, "TLS"))
		via->tp = SIP_TRANSP_TLS;
	else if (!pl_strcmp(&tr, "UDP"))
		via->tp = SIP_TRANSP_UDP;
	else
		via->tp = SIP_TRANSP_NONE;

	return true;
}


/**
 * Decode a Via header value: libre's sip_via_decode, with a fast path
 * for "SIP/2.0/TRANSPORT host[:port][;params]"
 *
 * @param via Via object
 * @param pl  Header value
 *
 * @return 0 if success (the branch parameter found), otherwise errorcode
 */
int __wrap_sip_via_decode(struct sip_via *via, const struct pl *pl)
{
	struct pl host, port;

	if (!via || !pl || !pl->p)
		return __real_sip_via_decode(via, pl);

	if (!ctab_ready)
		ctab_init();

	if (!via_fast(via, pl, &host, &port))
		return __real_sip_via_decode(via, pl);

	/* as libre: the address of the host part, then the port */
	sa_init(&via->addr, AF_INET);
	(void)sa_set(&via->addr, &host, 0);
	if (pl_isset(&port))
		sa_set_port(&via->addr, (uint16_t)pl_u32(&port));
	via->val = *pl;
	++lsip_fastparse_hits;

	return msg_param_decode(&via->params, "branch", &via->branch);
}
