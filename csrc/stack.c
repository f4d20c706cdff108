/**
 * @file stack.c  SIP endpoints: struct sip, transports, sipsess socket
 *
 * An endpoint box points at a struct lsip_ep that owns the SIP stack, the
 * session socket and the request listener. The endpoint is pinned from
 * creation until :close(), because libre delivers requests to it at any
 * time. Requests and calls hold a mem_ref on the struct, so the stack
 * outlives every object built on it. :close() stops taking new requests
 * (503 until the stack goes); the stack, its transactions and its ports
 * are freed from the next timer poll once nothing uses them.
 */

#include <ctype.h>
#include "lsip.h"
#include <openssl/ssl.h>
#include <openssl/err.h>


enum {
	CTRANS_HASH = 16384,
	STRANS_HASH = 16384,
	TCONN_HASH  = 1024,
	SESS_HASH   = 16384,
	LADDR_MAX   = 8,
	TEARDOWN_RETRY = 250,  /* [ms] */
	UDP_SOCKBUF = 4 << 20,
};


struct lsip_laddr {
	enum sip_transp tp;
	struct sa sa;
};


struct lsip_ep {
	struct sip *sip;
	struct dnsc *dnsc;
	struct sipsess_sock *sock;
	struct sip_lsnr *lsnr;
	struct sip_lsnr *rlsnr;      /* stray responses (proxy.c) */
	struct tls *tls;
	struct lsip_laddr laddrv[LADDR_MAX];
	size_t laddrc;
	void *udpv[LADDR_MAX];   /* UDP sockets whose buffers are tuned */
	size_t udpc;
	char *user;        /* Contact user part */
	char *from;        /* default From: display + URI */
	char *ua;          /* User-Agent / Server */
	char *supported;   /* option tags the script handles: "a, b" or "" */
	int self;          /* pin until :close() */
	struct tmr teardown;  /* frees the stack soon after :close() */
	bool closed;
	bool proxy;        /* INVITEs arrive as requests (to forward) */
};


/*
 * The last reference to a SIP stack must never be dropped inside one of
 * its own handlers: a lingering session that ends in a transaction's
 * response handler would free the stack, and with it that transaction.
 * A stack whose endpoint is gone waits here, and a timer frees it once
 * nothing else holds it.
 */
static struct list graveyard;
static struct tmr grave_tmr;


static void grave_handler(void *arg)
{
	struct le *le = list_head(&graveyard);
	(void)arg;

	while (le) {
		struct le *next = le->next;
		struct sip *sip = le->data;

		if (mem_nrefs(sip) == 1) {
			list_unlink(le);
			mem_deref(le);
			sip_close(sip, false);  /* libre's two-step close */
			mem_deref(sip);
		}
		le = next;
	}

	if (list_head(&graveyard))
		tmr_start(&grave_tmr, TEARDOWN_RETRY, grave_handler, NULL);
}


/**
 * Free every buried SIP stack now (module unload: no handler is running)
 */
void lsip_stack_close(void)
{
	struct le *le;

	tmr_cancel(&grave_tmr);
	while ((le = list_head(&graveyard))) {
		struct sip *sip = le->data;

		list_unlink(le);
		mem_deref(le);
		/* ends lingering transactions: their owners let go */
		sip_close(sip, true);
		if (mem_nrefs(sip) == 1)
			sip_close(sip, false);
		mem_deref(sip);
	}
}


static void sip_bury(struct sip *sip)
{
	struct le *le;

	if (!sip)
		return;

	le = mem_zalloc(sizeof(*le), NULL);
	if (!le) {
		mem_deref(sip);  /* out of memory: the old, unsafe way */
		return;
	}

	list_append(&graveyard, le, sip);
	if (!tmr_isrunning(&grave_tmr))
		tmr_start(&grave_tmr, 0, grave_handler, NULL);
}


static void ep_destructor(void *arg)
{
	struct lsip_ep *ep = arg;

	tmr_cancel(&ep->teardown);
	mem_deref(ep->lsnr);
	mem_deref(ep->rlsnr);
	mem_deref(ep->sock);
	sip_bury(ep->sip);
	mem_deref(ep->dnsc);
	mem_deref(ep->tls);
	mem_deref(ep->user);
	mem_deref(ep->from);
	mem_deref(ep->ua);
	mem_deref(ep->supported);
}


/**
 * Get the SIP stack of an endpoint
 *
 * @param ep Endpoint
 *
 * @return SIP stack
 */
struct sip *lsip_ep_sip(const struct lsip_ep *ep)
{
	return ep ? ep->sip : NULL;
}


/**
 * Get the session socket of an endpoint
 *
 * @param ep Endpoint
 *
 * @return sipsess socket
 */
struct sipsess_sock *lsip_ep_sock(const struct lsip_ep *ep)
{
	return ep ? ep->sock : NULL;
}


/**
 * Get the registry ref of the endpoint's box (LUA_NOREF once closed)
 *
 * @param ep Endpoint
 *
 * @return Reference
 */
int lsip_ep_ref(const struct lsip_ep *ep)
{
	return ep ? ep->self : LUA_NOREF;
}


/**
 * Get the User-Agent of the endpoint (also its Server header)
 *
 * @param ep Endpoint
 *
 * @return User-Agent string
 */
const char *lsip_ep_ua(const struct lsip_ep *ep)
{
	return ep->ua;
}


/**
 * Get the Contact user of the endpoint
 *
 * @param ep Endpoint
 *
 * @return User part
 */
const char *lsip_ep_user(const struct lsip_ep *ep)
{
	return ep->user;
}


/**
 * Check that idx is an open endpoint
 *
 * @param L   Lua state
 * @param idx Stack index
 *
 * @return Endpoint (raises when closed)
 */
struct lsip_ep *lsip_ep_check(lua_State *L, int idx)
{
	struct lsip_ep **box = lsip_checkbox(L, idx, LSIP_EP_MT);

	if (!*box || (*box)->closed)
		luaL_error(L, "luasip.endpoint: endpoint is closed");

	return *box;
}


/**
 * Build the default From URI for this endpoint: sip:user@first-laddr
 *
 * @param ep    Endpoint
 * @param fromp Set to the new string
 * @param user  User part, or NULL for the endpoint's user
 *
 * @return 0 if success, otherwise errorcode
 */
int lsip_ep_from(struct lsip_ep *ep, char **fromp, const char *user)
{
	const struct lsip_laddr *la;

	if (!ep->laddrc)
		return EINVAL;

	if (ep->from && !user)
		return str_dup(fromp, ep->from);

	la = &ep->laddrv[0];
	return re_sdprintf(fromp, "sip:%s@%J", user ? user : ep->user,
			   &la->sa);
}


/* CSeq = 1*DIGIT LWS Method, the number below 2**32 (RFC 3261 8.1.1.5);
 * libre reads it with pl_u32, which wraps */
static bool cseq_ok(const struct sip_msg *msg)
{
	const struct sip_hdr *hdr = sip_msg_hdr(msg, SIP_HDR_CSEQ);
	uint64_t v = 0;
	size_t i = 0;

	if (!hdr)
		return false;

	while (i < hdr->val.l && hdr->val.p[i] == '0')
		++i;
	for (; i < hdr->val.l && hdr->val.p[i] >= '0' &&
		     hdr->val.p[i] <= '9'; i++) {
		v = v * 10 + (uint64_t)(hdr->val.p[i] - '0');
		if (v > 0xffffffffULL)
			return false;
	}

	return true;
}


/*
 * The host and port of a sip:/sips: Request-URI end where libre says they
 * do. libre reads "sip:2001:db8::10" as host "2001" and drops the rest; an
 * IPv6 reference needs its brackets (RFC 3261 25.1, RFC 5118 4.10).
 */
static bool ruri_ok(const struct sip_msg *msg)
{
	const struct uri *u = &msg->uri;
	const char *p, *end = msg->ruri.p + msg->ruri.l;
	size_t digits = 0;

	if (pl_strcasecmp(&u->scheme, "sip") &&
	    pl_strcasecmp(&u->scheme, "sips"))
		return true;

	if (!pl_isset(&u->host) || u->host.p < msg->ruri.p ||
	    u->host.p + u->host.l > end)
		return false;

	p = u->host.p + u->host.l;
	if (u->af == AF_INET6) {
		if (p >= end || *p != ']')
			return false;
		++p;
	}

	if (p < end && *p == ':') {
		uint32_t port = 0;

		for (++p; p < end && *p >= '0' && *p <= '9'; p++) {
			port = port * 10 + (uint32_t)(*p - '0');
			if (++digits > 5)
				return false;
		}
		if (!digits || port > 65535)
			return false;
	}

	return p == end || *p == ';' || *p == '?';
}


/* mandatory headers of RFC 3261 8.1.1; returns a reason, or NULL if ok */
static const char *msg_invalid(const struct sip_msg *msg)
{
	if (pl_strcmp(&msg->ver, "SIP/2.0"))
		return "Bad SIP Version";
	if (!pl_isset(&msg->via.branch) && !pl_isset(&msg->via.sentby))
		return "Missing Via";
	if (!pl_isset(&msg->from.auri))
		return "Missing or Bad From";
	if (!pl_isset(&msg->to.auri))
		return "Missing or Bad To";
	if (!pl_isset(&msg->callid))
		return "Missing Call-ID";
	if (!pl_isset(&msg->cseq.met) ||
	    !sip_msg_hdr(msg, SIP_HDR_CSEQ))
		return "Missing or Bad CSeq";
	if (!cseq_ok(msg))
		return "Missing or Bad CSeq";
	if (pl_cmp(&msg->cseq.met, &msg->met))
		return "CSeq Method Mismatch";
	if (!ruri_ok(msg))
		return "Bad Request-URI";
	if (pl_isset(&msg->maxfwd) && pl_u32(&msg->maxfwd) == 0 &&
	    msg->maxfwd.p[0] != '0')
		return "Bad Max-Forwards";
	if (pl_isset(&msg->clen) &&
	    pl_u32(&msg->clen) != mbuf_get_left(msg->mb))
		return "Bad Content-Length";

	return NULL;
}


/*
 * Runs inside re_main, before sipsess's own listener (it is registered
 * first). Validates every request; takes out-of-dialog non-INVITE
 * requests and in-dialog requests sipsess does not know.
 */
/*
 * libre's UDP sockets keep the kernel's default receive buffer (~200 KB),
 * which a burst of a few thousand requests overflows; raise it once per
 * socket (the kernel caps it at net.core.rmem_max).
 */
static void udp_tune(struct lsip_ep *ep, const struct sip_msg *msg)
{
	size_t i;

	if (msg->tp != SIP_TRANSP_UDP || !msg->sock)
		return;

	for (i = 0; i < ep->udpc; i++) {
		if (ep->udpv[i] == msg->sock)
			return;
	}

	if (ep->udpc < LADDR_MAX)
		ep->udpv[ep->udpc++] = msg->sock;

	(void)udp_sockbuf_set(msg->sock, UDP_SOCKBUF);
}


/* the next comma-separated token of *rest (trimmed) into t; false at end */
static bool next_token(struct pl *rest, struct pl *t)
{
	while (rest->l) {
		const char *c = pl_strchr(rest, ',');

		t->p = rest->p;
		t->l = c ? (size_t)(c - rest->p) : rest->l;
		pl_advance(rest, c ? (ssize_t)t->l + 1 : (ssize_t)t->l);
		while (t->l && (*t->p == ' ' || *t->p == '\t'))
			pl_advance(t, 1);
		while (t->l && (t->p[t->l - 1] == ' ' || t->p[t->l - 1] == '\t'))
			--t->l;
		if (t->l)
			return true;
	}

	return false;
}


static bool tag_listed(const char *list, const struct pl *tag)
{
	struct pl rest, t;

	pl_set_str(&rest, list);
	while (next_token(&rest, &t)) {
		if (!pl_casecmp(&t, tag))
			return true;
	}

	return false;
}


struct require_ctx {
	const char *supported;
	char list[256];       /* "Unsupported: " value */
	size_t n;
	bool any;
};


static bool require_apply(const struct sip_hdr *hdr, const struct sip_msg *msg,
			  void *arg)
{
	struct require_ctx *rc = arg;
	struct pl rest = hdr->val, t;
	(void)msg;

	while (next_token(&rest, &t)) {
		if (tag_listed(rc->supported, &t))
			continue;

		rc->any = true;
		if (rc->n + t.l + 3 < sizeof(rc->list)) {
			rc->n += (size_t)re_snprintf(rc->list + rc->n,
						     sizeof(rc->list) - rc->n,
						     "%s%r", rc->n ? ", " : "",
						     &t);
		}
	}

	return false;
}


/*
 * RFC 3261 8.2.2.3: a UAS answers 420 (Bad Extension) with Unsupported to
 * a request that Requires an option tag it does not support. Not for ACK
 * and CANCEL (the RFC exempts them), not for REGISTER (the registrar
 * checks Require itself, knowing "path"), not on a proxy endpoint (a
 * proxy forwards Require untouched, RFC 3261 16.6).
 */
static bool require_refused(struct lsip_ep *ep, const struct sip_msg *msg)
{
	struct require_ctx rc;

	if (ep->proxy || !pl_strcmp(&msg->met, "ACK") ||
	    !pl_strcmp(&msg->met, "CANCEL") ||
	    !pl_strcmp(&msg->met, "REGISTER") ||
	    !sip_msg_hdr(msg, SIP_HDR_REQUIRE))
		return false;

	memset(&rc, 0, sizeof(rc));
	rc.supported = ep->supported ? ep->supported : "";
	(void)sip_msg_hdr_apply(msg, true, SIP_HDR_REQUIRE, require_apply,
				&rc);
	if (!rc.any)
		return false;

	(void)sip_replyf(ep->sip, msg, 420, "Bad Extension",
			 "Unsupported: %s\r\n"
			 "Content-Length: 0\r\n"
			 "\r\n", rc.list);
	return true;
}


static bool request_handler(const struct sip_msg *msg, void *arg)
{
	struct lsip_ep *ep = arg;
	const char *bad = msg_invalid(msg);
	bool indialog = pl_isset(&msg->to.tag);

	udp_tune(ep, msg);
	lsip_mem_activity();

	if (bad) {
		if (pl_strcmp(&msg->met, "ACK"))
			(void)sip_reply(ep->sip, msg, 400, bad);
		return true;
	}

	/* a retransmission of a request answered without a transaction */
	if (lsip_done_resend(ep->sip, msg))
		return true;

	/* closed, stack not torn down yet: refuse new work, but let
	 * in-dialog requests reach the calls that outlive :close() */
	if (ep->closed) {
		if (indialog)
			return false;
		if (pl_strcmp(&msg->met, "ACK"))
			(void)sip_reply(ep->sip, msg, 503,
					"Service Unavailable");
		return true;
	}

	/* NOTIFYs of a transfer we started (refer.c) */
	if (indialog && !pl_strcmp(&msg->met, "NOTIFY") &&
	    lsip_refer_notify(ep, msg))
		return true;

	/* in-dialog requests follow a Route naming us (proxy.c) */
	if (lsip_proxy_incoming(ep, msg, ep->proxy))
		return true;

	if (ep->proxy && !indialog && !pl_strcmp(&msg->met, "INVITE"))
		return lsip_request_incoming(ep, msg);

	if (require_refused(ep, msg))
		return true;

	/* re-INVITE crossing ours (491) or without a common codec (488) */
	if (indialog && !pl_strcmp(&msg->met, "INVITE") &&
	    lsip_call_reinvite(ep, msg))
		return true;

	if (!pl_strcmp(&msg->met, "INVITE") || !pl_strcmp(&msg->met, "ACK") ||
	    !pl_strcmp(&msg->met, "BYE") || !pl_strcmp(&msg->met, "CANCEL"))
		return false;

	if (indialog && (!pl_strcmp(&msg->met, "INFO") ||
			 !pl_strcmp(&msg->met, "REFER")))
		return false;

	return lsip_request_incoming(ep, msg);
}


/* responses no client transaction took; runs inside re_main, before
 * sipsess's listener (which takes every INVITE 2xx) */
static bool response_handler(const struct sip_msg *msg, void *arg)
{
	return lsip_call_response(arg, msg) || lsip_proxy_response(arg, msg);
}


/* new INVITE outside a dialog; runs inside re_main */
static void conn_handler(const struct sip_msg *msg, void *arg)
{
	struct lsip_ep *ep = arg;

	if (ep->closed) {
		(void)sip_treply(NULL, ep->sip, msg, 503,
				 "Service Unavailable");
		return;
	}

	lsip_call_incoming(ep, msg);
}


static int parse_listen(lua_State *L, const char *s, enum sip_transp *tp,
			struct sa *sa, int i)
{
	struct pl scheme, host, port;
	const char *rest;
	char hbuf[64];

	rest = strchr(s, ':');
	if (!rest)
		return luaL_error(L, "luasip.endpoint: listen[%d]: expected "
				  "\"transport:host:port\", got \"%s\"", i, s);

	scheme.p = s;
	scheme.l = rest - s;
	if (!pl_strcasecmp(&scheme, "udp"))
		*tp = SIP_TRANSP_UDP;
	else if (!pl_strcasecmp(&scheme, "tcp"))
		*tp = SIP_TRANSP_TCP;
	else if (!pl_strcasecmp(&scheme, "tls"))
		*tp = SIP_TRANSP_TLS;
	else if (!pl_strcasecmp(&scheme, "ws"))
		*tp = SIP_TRANSP_WS;
	else {
		lua_pushlstring(L, scheme.p, scheme.l);
		return luaL_error(L, "luasip.endpoint: listen[%d]: unknown "
				  "transport \"%s\" in \"%s\"", i,
				  lua_tostring(L, -1), s);
	}

	++rest;
	if (re_regex(rest, strlen(rest), "\\[[0-9a-f:.]+\\]:[0-9]+",
		     &host, &port) &&
	    re_regex(rest, strlen(rest), "[0-9.]+:[0-9]+", &host, &port))
		return luaL_error(L, "luasip.endpoint: listen[%d]: bad "
				  "address in \"%s\" (want ip:port or "
				  "[ipv6]:port)", i, s);

	if (port.p + port.l != rest + strlen(rest) ||
	    (host.p != rest && host.p != rest + 1))
		return luaL_error(L, "luasip.endpoint: listen[%d]: bad "
				  "address in \"%s\"", i, s);

	if (port.l > 5 || pl_u32(&port) > 65535)
		return luaL_error(L, "luasip.endpoint: listen[%d]: port out "
				  "of range in \"%s\"", i, s);

	(void)pl_strcpy(&host, hbuf, sizeof(hbuf));
	if (sa_set_str(sa, hbuf, pl_u32(&port)))
		return luaL_error(L, "luasip.endpoint: listen[%d]: bad IP "
				  "address \"%s\" in \"%s\"", i, hbuf, s);

	return 0;
}


/* tls = { cert=, key=, ca=, verify=true } */
static int setup_tls(lua_State *L, struct lsip_ep *ep, int opt)
{
	const char *cert, *key, *ca;
	bool verify = true;
	SSL_CTX *ctx;
	int err;

	if (ep->tls)
		return 0;

	lua_getfield(L, opt, "tls");
	if (!lua_istable(L, -1))
		return luaL_error(L, "luasip.endpoint: tls listen needs "
				  "tls = { cert = ..., key = ... }");

	lsip_opt_string(L, lua_gettop(L), "cert", &cert);
	lsip_opt_string(L, lua_gettop(L), "key", &key);
	lsip_opt_string(L, lua_gettop(L), "ca", &ca);
	lua_getfield(L, -1, "verify");
	if (!lua_isnil(L, -1))
		verify = lua_toboolean(L, -1);
	lua_pop(L, 1);

	if (!cert)
		return luaL_error(L, "luasip.endpoint: tls.cert: PEM file "
				  "expected, got nil");

	/* libre's tls_alloc() wants cert and key in one file */
	err = tls_alloc(&ep->tls, TLS_METHOD_SSLV23, NULL, NULL);
	if (err) {
		lua_pop(L, 1);
		return err;
	}

	ctx = tls_openssl_context(ep->tls);
	if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
	    SSL_CTX_use_PrivateKey_file(ctx, key ? key : cert,
					SSL_FILETYPE_PEM) != 1 ||
	    SSL_CTX_check_private_key(ctx) != 1) {
		ERR_clear_error();
		lua_pop(L, 1);
		return EINVAL;
	}

	if (ca) {
		err = tls_add_ca(ep->tls, ca);
		if (err) {
			lua_pop(L, 1);
			return err;
		}
	}
	else if (verify) {
		SSL_CTX_set_default_verify_paths(ctx);
	}

	/* libre trusts every peer by default; we verify unless told not to */
	SSL_CTX_set_verify(ctx, verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE,
			   NULL);
	lua_pop(L, 1);
	return 0;
}


static int add_transport(lua_State *L, struct lsip_ep *ep, int opt,
			 const char *s, int i)
{
	enum sip_transp tp = SIP_TRANSP_NONE;
	struct sa sa, laddr;
	int err;

	parse_listen(L, s, &tp, &sa, i);

	if (ep->laddrc >= LADDR_MAX)
		return luaL_error(L, "luasip.endpoint: listen: at most %d "
				  "addresses", LADDR_MAX);

	switch (tp) {

	case SIP_TRANSP_TLS:
		err = setup_tls(L, ep, opt);
		if (err)
			return err;
		lsip_badstart_capture(true);
		err = sip_transp_add(ep->sip, tp, &sa, ep->tls);
		lsip_badstart_capture(false);
		break;

	case SIP_TRANSP_WS:
		err = sip_transp_add_websock(ep->sip, tp, &sa, true, NULL);
		break;

	default:
		lsip_badstart_capture(true);
		err = sip_transp_add(ep->sip, tp, &sa);
		lsip_badstart_capture(false);
		break;
	}

	if (err)
		return err;

	/* the newest transport of this kind is last; libre returns the
	 * first match, so a second listen of one kind reports its own
	 * port only when it was not 0 */
	if (sip_transp_laddr(ep->sip, &laddr, tp, &sa) || !sa_port(&laddr) ||
	    (sa_port(&sa) && sa_port(&sa) != sa_port(&laddr)))
		laddr = sa;

	ep->laddrv[ep->laddrc].tp = tp;
	ep->laddrv[ep->laddrc].sa = laddr;
	++ep->laddrc;
	return 0;
}


/*
 * dns = nil (the system's resolvers), false (none: host names fail), or
 * { "ip:port", ... }. libre needs a DNS client for host names in URIs and
 * for its WebSocket client.
 */
static int setup_dns(lua_State *L, struct lsip_ep *ep, int opt)
{
	struct sa srvv[8];
	uint32_t srvc = 0, i;
	char domain[64];
	int err = 0;

	lua_getfield(L, opt, "dns");
	if (lua_isnil(L, -1)) {
		srvc = sizeof(srvv) / sizeof(srvv[0]);
		if (dns_srv_get(domain, sizeof(domain), srvv, &srvc))
			srvc = 0;
	}
	else if (lua_istable(L, -1)) {
		lua_Integer n = luaL_len(L, -1);

		for (i = 1; i <= n && srvc < 8; i++) {
			const char *s;

			lua_geti(L, -1, i);
			s = lua_tostring(L, -1);
			if (!s || sa_decode(&srvv[srvc], s, strlen(s)))
				return luaL_error(L, "luasip.endpoint: dns[%d]: "
						  "\"ip:port\" expected, got "
						  "%s", (int)i,
						  s ? s : luaL_typename(L, -1));
			++srvc;
			lua_pop(L, 1);
		}
	}
	else if (lua_toboolean(L, -1)) {
		return luaL_error(L, "luasip.endpoint: dns: false or list of "
				  "\"ip:port\" expected, got %s",
				  luaL_typename(L, -1));
	}
	lua_pop(L, 1);

	err = dnsc_alloc(&ep->dnsc, NULL, srvv, srvc);
	return err;
}


/* opts.supported: nil or a list of option tags (RFC 3261 token) */
static void supported_check(lua_State *L, int opt)
{
	lua_Integer i, n;

	lua_getfield(L, opt, "supported");
	if (lua_isnil(L, -1)) {
		lua_pop(L, 1);
		return;
	}
	if (!lua_istable(L, -1))
		luaL_error(L, "luasip.endpoint: supported: list of option "
			   "tags expected, got %s", luaL_typename(L, -1));
	n = luaL_len(L, -1);
	for (i = 1; i <= n; i++) {
		const char *t;
		size_t k, len;

		if (lua_geti(L, -1, i) != LUA_TSTRING)
			luaL_error(L, "luasip.endpoint: supported[%d]: string "
				   "expected, got %s", (int)i,
				   luaL_typename(L, -1));
		t = lua_tolstring(L, -1, &len);
		for (k = 0; k < len; k++) {
			if (!isalnum((unsigned char)t[k]) &&
			    !strchr("-.!%*_+`'~", t[k]))
				break;
		}
		if (!len || k < len || len > 64)
			luaL_error(L, "luasip.endpoint: supported[%d]: not an "
				   "option tag: \"%s\"", (int)i, t);
		lua_pop(L, 1);
	}
	lua_pop(L, 1);
}


/* the checked opts.supported as "a, b" ("" when none) */
static int supported_join(lua_State *L, int opt, char **strp)
{
	struct mbuf *mb = mbuf_alloc(64);
	lua_Integer i, n = 0;
	int err = mb ? 0 : ENOMEM;

	lua_getfield(L, opt, "supported");
	if (lua_istable(L, -1))
		n = luaL_len(L, -1);
	for (i = 1; !err && i <= n; i++) {
		lua_geti(L, -1, i);
		err = mbuf_printf(mb, "%s%s", i > 1 ? ", " : "",
				  lua_tostring(L, -1));
		lua_pop(L, 1);
	}
	lua_pop(L, 1);
	if (!err) {
		mb->pos = 0;
		err = mbuf_strdup(mb, strp, mb->end);
	}
	mem_deref(mb);
	return err;
}


/* core.endpoint(opts) -> ep | nil, err, code */
static int l_endpoint_new(lua_State *L)
{
	struct lsip_ep *ep;
	const char *ua, *user, *from;
	lua_Integer i, n;
	int err, opt = 1;
	bool proxy;

	luaL_checktype(L, opt, LUA_TTABLE);
	lsip_opt_string(L, opt, "user_agent", &ua);
	if (ua && (strpbrk(ua, "\r\n") || !*ua))
		return luaL_error(L, "luasip.endpoint: user_agent: no CR/LF "
				  "allowed, got \"%s\"", ua);
	lsip_opt_string(L, opt, "user", &user);
	lsip_opt_string(L, opt, "from", &from);
	lua_getfield(L, opt, "proxy");
	proxy = lua_toboolean(L, -1);
	lua_pop(L, 1);
	supported_check(L, opt);

	lua_getfield(L, opt, "listen");
	if (lua_type(L, -1) == LUA_TSTRING) {
		lua_createtable(L, 1, 0);
		lua_insert(L, -2);
		lua_rawseti(L, -2, 1);
	}
	if (!lua_istable(L, -1))
		return luaL_error(L, "luasip.endpoint: listen: table of "
				  "\"transport:ip:port\" expected, got %s",
				  luaL_typename(L, -1));
	n = luaL_len(L, -1);
	if (n < 1)
		return luaL_error(L, "luasip.endpoint: listen: at least one "
				  "address expected");
	for (i = 1; i <= n; i++) {
		if (lua_geti(L, -1, i) != LUA_TSTRING)
			return luaL_error(L, "luasip.endpoint: listen[%d]: "
					  "string expected, got %s", (int)i,
					  luaL_typename(L, -1));
		lua_pop(L, 1);
	}

	ep = mem_zalloc(sizeof(*ep), ep_destructor);
	if (!ep)
		return lsip_fail(L, ENOMEM, "endpoint");

	ep->self = LUA_NOREF;
	ep->proxy = proxy;
	lsip_newbox(L, ep, LSIP_EP_MT);           /* opts, listen, box */

	err = str_dup(&ep->user, user ? user : "luasip");
	if (!err && from)
		err = str_dup(&ep->from, from);
	if (err)
		goto out;

	err = str_dup(&ep->ua, ua ? ua : LSIP_NAME "/" LSIP_VERSION);
	if (!err)
		err = supported_join(L, opt, &ep->supported);
	if (err)
		goto out;

	err = setup_dns(L, ep, opt);
	if (err)
		goto out;

	err = sip_alloc(&ep->sip, ep->dnsc, CTRANS_HASH, STRANS_HASH, TCONN_HASH,
			ep->ua, NULL, NULL);
	if (err)
		goto out;

	/* ours first: it validates before sipsess sees anything */
	err = sip_listen(&ep->lsnr, ep->sip, true, request_handler, ep);
	if (!err)
		err = sip_listen(&ep->rlsnr, ep->sip, false, response_handler,
				 ep);
	if (err)
		goto out;

	err = sipsess_listen(&ep->sock, ep->sip, SESS_HASH, conn_handler, ep);
	if (err)
		goto out;

	for (i = 1; i <= n; i++) {
		lua_geti(L, -2, i);
		err = add_transport(L, ep, opt, lua_tostring(L, -1), (int)i);
		if (err) {
			const char *s = lua_tostring(L, -1);

			lua_settop(L, 0);
			lsip_fail(L, err, NULL);
			lua_pushfstring(L, "endpoint: listen \"%s\": %s", s,
					lua_tostring(L, 2));
			lua_replace(L, 2);
			return 3;
		}
		lua_pop(L, 1);
	}

	ep->self = lsip_pin(L, -1);
	return 1;

 out:
	return lsip_fail(L, err, "endpoint");
}


/*
 * Runs from the loop's timer poll after :close(), never inside one of the
 * stack's own socket handlers. When nothing built on the endpoint is left
 * (requests, responses and calls hold a ref on it; sessions and
 * registrations on the stack), free the stack now: its transports and
 * transactions go and its ports can be bound again. Otherwise look
 * again a little later (the endpoint's __gc cancels this).
 */
static void teardown_handler(void *arg)
{
	struct lsip_ep *ep = arg;

	if (!ep->sip)
		return;

	if (mem_nrefs(ep) > 1 || mem_nrefs(ep->sip) > 1) {
		tmr_start(&ep->teardown, TEARDOWN_RETRY, teardown_handler,
			  ep);
		return;
	}

	ep->lsnr = mem_deref(ep->lsnr);
	ep->sip = mem_deref(ep->sip);
}


/* ep:close(): stop listening; calls and requests in flight finish */
static int l_ep_close(lua_State *L)
{
	struct lsip_ep **box = lsip_checkbox(L, 1, LSIP_EP_MT);
	struct lsip_ep *ep = *box;

	if (ep && !ep->closed) {
		ep->closed = true;
		/*
		 * No sipsess_close_all(): calls own their sessions and would
		 * free them a second time. No sip_transp_flush(): this often
		 * runs inside libre's TCP receive handler, and a connection
		 * that a transaction still references would be freed twice.
		 * The stack and its ports go at the next timer poll when
		 * nothing uses them (teardown_handler), else with the last
		 * user.
		 */
		ep->sock = mem_deref(ep->sock);
		ep->rlsnr = mem_deref(ep->rlsnr);
		lsip_unpin(L, &ep->self);
		tmr_start(&ep->teardown, 0, teardown_handler, ep);
	}

	lua_pushboolean(L, 1);
	return 1;
}


/* __gc: the struct lives on while requests and calls reference it */
static int l_ep_gc(lua_State *L)
{
	struct lsip_ep **box = lsip_checkbox(L, 1, LSIP_EP_MT);

	if (*box) {
		lsip_unpin(L, &(*box)->self);
		*box = mem_deref(*box);
	}

	return 0;
}


/* ep:addresses() -> { {transport=, host=, port=, uri=}, ... } */
static int l_ep_addresses(lua_State *L)
{
	struct lsip_ep **box = lsip_checkbox(L, 1, LSIP_EP_MT);
	struct lsip_ep *ep = *box;
	size_t i;

	lua_newtable(L);
	for (i = 0; ep && i < ep->laddrc; i++) {
		const struct lsip_laddr *la = &ep->laddrv[i];
		char buf[160];

		lua_createtable(L, 0, 4);
		lua_pushstring(L, lsip_tpname(la->tp));
		lua_setfield(L, -2, "transport");
		re_snprintf(buf, sizeof(buf), "%j", &la->sa);
		lua_pushstring(L, buf);
		lua_setfield(L, -2, "host");
		lua_pushinteger(L, sa_port(&la->sa));
		lua_setfield(L, -2, "port");
		/* libre 1.1.0 cannot route to sips: URIs (ENOSYS), so TLS
		 * is sip:...;transport=tls */
		if (la->tp == SIP_TRANSP_UDP)
			re_snprintf(buf, sizeof(buf), "sip:%s@%J", ep->user,
				    &la->sa);
		else
			re_snprintf(buf, sizeof(buf),
				    "sip:%s@%J;transport=%s", ep->user,
				    &la->sa, lsip_tpname(la->tp));
		lua_pushstring(L, buf);
		lua_setfield(L, -2, "uri");
		lua_rawseti(L, -2, (lua_Integer)i + 1);
	}

	return 1;
}


/* ep.closed, ep.user */
static int l_ep_getfield(lua_State *L)
{
	struct lsip_ep **box = lsip_checkbox(L, 1, LSIP_EP_MT);
	const char *key = luaL_checkstring(L, 2);

	if (!strcmp(key, "closed")) {
		lua_pushboolean(L, !*box || (*box)->closed);
		return 1;
	}
	if (!strcmp(key, "user") && *box) {
		lua_pushstring(L, (*box)->user);
		return 1;
	}

	return 0;
}


/**
 * Register core.endpoint and the luasip.endpoint type
 *
 * @param L Lua state, module table on top
 *
 * @return 0
 */
int lsip_open_stack(lua_State *L)
{
	static const luaL_Reg methods[] = {
		{"close", l_ep_close},
		{"addresses", l_ep_addresses},
		{NULL, NULL}
	};
	static const luaL_Reg meta[] = {
		{"__gc", l_ep_gc},
		{"__getfield", l_ep_getfield},
		{NULL, NULL}
	};

	lsip_setfuncs(L, LSIP_EP_MT, methods, meta);
	lua_pushcfunction(L, l_endpoint_new);
	lua_setfield(L, -2, "endpoint");
	return 0;
}
