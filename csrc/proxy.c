/**
 * @file proxy.c  Stateful proxy (RFC 3261 section 16) as "luasip.forward"
 *
 * req:forward() makes a response context, struct lsip_fwd. It holds a
 * reference on the incoming request (and so on the server transaction
 * the request owns) and owns one struct lsip_branch per target tried;
 * a branch owns its client transaction (sip_request) and its Timer C.
 * The context's box is the response object the script gets back. The
 * box is pinned while a branch can still call back (a 2xx after the
 * decision is relayed all the same); when the last branch has ended the
 * pin is dropped and __gc frees the context. Its destructor derefs the
 * branches, and libre CANCELs a client transaction still pending.
 *
 * Without Lua: in-dialog requests whose top Route is ours follow the
 * Route set (ACK and unmatched CANCEL statelessly, other methods by a
 * context that owns its own server transaction and frees itself when
 * its branch has ended), and responses that match no client transaction
 * but carry our Via on top are relayed to the next Via (RFC 3261 16.7,
 * 2xx retransmissions and answers to stateless relays).
 *
 * Handlers run inside re_main and only record, relay and emit "done";
 * the l_* functions run in the script's task.
 */

#include "lsip.h"


enum {
	FWD_TIMEOUT    = 32000,   /* per branch (ms) */
	BRANCH_HASH    = 256,     /* power of two */
	MAXFWD_DEFAULT = 70,
	TARGETS_MAX    = 64,
	STRIP_MAX      = 16,      /* names / realms a forward leaves out */
};


struct lsip_fwd {
	const struct sip_msg *msg;   /* first: chosen final response */
	const struct sip_msg *rmsg;  /* the request we forward */
	struct lsip_req *req;        /* its request object (NULL in-dialog) */
	struct lsip_ep *ep;
	struct sip *sip;
	struct sip_strans *st;       /* own transaction (in-dialog) */
	struct sip_strans **stp;     /* the transaction we answer on */
	struct list branchl;
	struct mbuf *mb;             /* headers and body after our Via */
	struct mbuf *authh;          /* challenges of the other 401/407 */
	char **targetv;
	size_t targetc;
	size_t next;                 /* next target to start */
	char *nexthop;               /* first Route to send to, or NULL */
	uint64_t hash;               /* loop-detection hash of rmsg */
	uint32_t timeout;            /* per branch (ms) */
	uint16_t scode;              /* decided status */
	char reason[64];
	int self;                    /* pin while libre can call back */
	bool invite;
	bool rr;                     /* add Record-Route */
	bool done;                   /* final decision made */
	bool sent;                   /* a final response went upstream */
	bool cancelled;              /* CANCEL from upstream */
	bool hooked;                 /* our cancel handler is on req */
	bool autonomous;             /* in-dialog: frees itself */
	bool finished;               /* no branch can call back */
	bool quiet;                  /* being created: do not emit */
};


struct lsip_branch {
	struct le le;                /* in fwd->branchl */
	struct le he;                /* in branchv once id is known */
	struct lsip_fwd *fwd;        /* owner */
	struct sip_request *sreq;    /* NULL once libre is done with it */
	const struct sip_msg *resp;  /* final response */
	struct tmr tmr;              /* Timer C */
	char *uri;
	char id[40];                 /* branch parameter of our Via */
	uint64_t hash;
	uint16_t scode;              /* final status (synthesized: 408..) */
	bool final;
};


/* every live branch id this process generated, for loop detection;
 * static buckets, so nothing outlives the last branch */
static struct list branchv[BRANCH_HASH];

/* counters for tests and monitoring (core.proxy_stats) */
static const char *routed_names[] = {"ACK", "BYE", "CANCEL", "INVITE"};
static struct {
	uint64_t routed[5];     /* in-dialog by method; [4]: others */
	uint64_t stray;         /* responses relayed statelessly */
	uint64_t relayed;       /* requests relayed statelessly */
	uint64_t forwarded;     /* response contexts made */
	uint32_t live;          /* contexts a branch can still call */
} stats;


static void fwd_decide(struct lsip_fwd *fwd);
static void fwd_advance(struct lsip_fwd *fwd);
static void tmr_handler(void *arg);


/* ---- hashing, URIs and Routes ---- */


static uint64_t fnv_pl(uint64_t h, const struct pl *pl)
{
	size_t i;

	for (i = 0; pl && pl->p && i < pl->l; i++) {
		h ^= (uint8_t)pl->p[i];
		h *= 0x100000001b3ULL;
	}

	h ^= 0xff;                  /* field separator */
	return h * 0x100000001b3ULL;
}


static bool hash_hdr_handler(const struct sip_hdr *hdr,
			     const struct sip_msg *msg, void *arg)
{
	uint64_t *h = arg;
	(void)msg;

	*h = fnv_pl(*h, &hdr->val);
	return false;
}


/* what makes "the same request" for loop detection (RFC 3261 16.6.8) */
static uint64_t req_hash(const struct sip_msg *msg)
{
	uint64_t h = 0xcbf29ce484222325ULL;
	struct pl num;
	char buf[16];

	h = fnv_pl(h, &msg->ruri);
	h = fnv_pl(h, &msg->from.tag);
	h = fnv_pl(h, &msg->to.tag);
	h = fnv_pl(h, &msg->callid);
	(void)re_snprintf(buf, sizeof(buf), "%u", msg->cseq.num);
	pl_set_str(&num, buf);
	h = fnv_pl(h, &num);
	(void)sip_msg_hdr_apply(msg, true, SIP_HDR_ROUTE, hash_hdr_handler,
				&h);
	(void)sip_msg_hdr_apply(msg, true, SIP_HDR_PROXY_REQUIRE,
				hash_hdr_handler, &h);
	(void)sip_msg_hdr_apply(msg, true, SIP_HDR_PROXY_AUTHORIZATION,
				hash_hdr_handler, &h);

	return h;
}


static enum sip_transp uri_transport(const struct uri *uri)
{
	struct pl tp;

	if (!pl_strcasecmp(&uri->scheme, "sips"))
		return SIP_TRANSP_TLS;
	if (msg_param_decode(&uri->params, "transport", &tp))
		return SIP_TRANSP_UDP;
	if (!pl_strcasecmp(&tp, "tcp"))
		return SIP_TRANSP_TCP;
	if (!pl_strcasecmp(&tp, "tls"))
		return SIP_TRANSP_TLS;
	if (!pl_strcasecmp(&tp, "ws"))
		return SIP_TRANSP_WS;
	if (!pl_strcasecmp(&tp, "wss"))
		return SIP_TRANSP_WSS;

	return SIP_TRANSP_UDP;
}


/* host:port of uri is one of the stack's transports */
static bool uri_local(struct sip *sip, const struct uri *uri)
{
	struct sa sa;

	if (sa_set(&sa, &uri->host,
		   sip_transp_port(uri_transport(uri), uri->port)))
		return false;

	return sip_transp_isladdr(sip, SIP_TRANSP_NONE, &sa);
}


struct route_walk {
	struct sip *sip;
	uint32_t n;          /* Routes seen */
	uint32_t local;      /* leading Routes that are ours */
	uint32_t want;       /* index wanted by route_nth */
	struct pl auri;      /* its URI */
	bool stop;
};


static bool route_local_handler(const struct sip_hdr *hdr,
				const struct sip_msg *msg, void *arg)
{
	struct route_walk *w = arg;
	struct sip_addr addr;
	(void)msg;

	if (sip_addr_decode(&addr, &hdr->val) || !uri_local(w->sip, &addr.uri))
		return true;

	++w->local;
	return false;
}


/* number of Routes on top that name this stack (RFC 3261 16.4) */
static uint32_t routes_local(struct sip *sip, const struct sip_msg *msg)
{
	struct route_walk w;

	memset(&w, 0, sizeof(w));
	w.sip = sip;
	(void)sip_msg_hdr_apply(msg, true, SIP_HDR_ROUTE, route_local_handler,
				&w);
	return w.local;
}


static bool route_nth_handler(const struct sip_hdr *hdr,
			      const struct sip_msg *msg, void *arg)
{
	struct route_walk *w = arg;
	struct sip_addr addr;
	(void)msg;

	if (w->n++ != w->want)
		return false;

	if (!sip_addr_decode(&addr, &hdr->val))
		w->auri = addr.auri;

	return true;
}


/* URI of Route number n (0 = top) as a new string, or NULL */
static int route_nth(char **urip, const struct sip_msg *msg, uint32_t n)
{
	struct route_walk w;

	memset(&w, 0, sizeof(w));
	w.want = n;
	*urip = NULL;
	(void)sip_msg_hdr_apply(msg, true, SIP_HDR_ROUTE, route_nth_handler,
				&w);
	if (!pl_isset(&w.auri))
		return 0;

	return pl_strdup(urip, &w.auri);
}


/* ---- building the forwarded request ---- */


/*
 * "name: value\r\n" copied into mb: the same bytes as
 * mbuf_printf(mb, "%r: %r\r\n", name, value) without the formatter,
 * which cost ~700 instructions per header line (a proxied call copies
 * about sixty lines).
 */
static int hdr_line(struct mbuf *mb, const struct pl *name,
		    const struct pl *val)
{
	size_t need = name->l + val->l + 4;
	uint8_t *p;

	if (mb->pos + need > mb->size) {
		int err = mbuf_resize(mb, (mb->pos + need) * 2);
		if (err)
			return err;
	}

	p = mb->buf + mb->pos;
	if (name->l)
		memcpy(p, name->p, name->l);
	p += name->l;
	*p++ = ':';
	*p++ = ' ';
	if (val->l)
		memcpy(p, val->p, val->l);
	p += val->l;
	*p++ = '\r';
	*p++ = '\n';
	mb->pos += need;
	if (mb->end < mb->pos)
		mb->end = mb->pos;
	return 0;
}


/* "name: n\r\n", as mbuf_printf(mb, "name: %zu\r\n", n) would write */
static int num_line(struct mbuf *mb, const char *name, size_t n)
{
	char d[24];
	struct pl nm, val;
	size_t i = sizeof(d);

	do {
		d[--i] = (char)('0' + n % 10);
		n /= 10;
	} while (n);

	pl_set_str(&nm, name);
	val.p = d + i;
	val.l = sizeof(d) - i;
	return hdr_line(mb, &nm, &val);
}


/* the bytes of a pl (none when it is empty) */
static int put_pl(struct mbuf *mb, const struct pl *pl)
{
	return pl->l ? mbuf_write_mem(mb, (const uint8_t *)pl->p, pl->l) : 0;
}


static const struct pl pl_via = PL("Via");
static const struct pl pl_route = PL("Route");


/* the previous hop's Via, with received= and rport= (RFC 3581) */
static int via_received(struct mbuf *mb, const struct sip_msg *msg,
			const struct sip_hdr *hdr)
{
	const struct sip_via *via = &msg->via;
	struct pl head, rest;
	bool rport = false;
	int err;

	head = hdr->val;
	if (via->params.p && via->params.p >= hdr->val.p &&
	    via->params.p <= hdr->val.p + hdr->val.l)
		head.l = via->params.p - hdr->val.p;

	err = mbuf_write_str(mb, "Via: ");
	err |= put_pl(mb, &head);

	rest.p = head.p + head.l;
	rest.l = hdr->val.l - head.l;
	while (rest.l) {
		struct pl prm, name;
		const char *e;

		while (rest.l && (*rest.p == ';' || *rest.p == ' ' ||
				  *rest.p == '\t')) {
			++rest.p;
			--rest.l;
		}
		if (!rest.l)
			break;

		e = memchr(rest.p, ';', rest.l);
		prm.p = rest.p;
		prm.l = e ? (size_t)(e - rest.p) : rest.l;
		rest.p += prm.l;
		rest.l -= prm.l;

		while (prm.l && (prm.p[prm.l - 1] == ' ' ||
				 prm.p[prm.l - 1] == '\t' ||
				 prm.p[prm.l - 1] == '\r' ||
				 prm.p[prm.l - 1] == '\n'))
			--prm.l;

		name = prm;
		e = memchr(prm.p, '=', prm.l);
		if (e)
			name.l = e - prm.p;

		if (!pl_strcasecmp(&name, "received"))
			continue;

		if (!e && !pl_strcasecmp(&name, "rport")) {
			err |= mbuf_printf(mb, ";rport=%u",
					   sa_port(&msg->src));
			rport = true;
			continue;
		}

		err |= mbuf_write_u8(mb, ';');
		err |= put_pl(mb, &prm);
	}

	if (rport || !sa_cmp(&msg->src, &via->addr, SA_ADDR))
		err |= mbuf_printf(mb, ";received=%j", &msg->src);

	err |= mbuf_write_str(mb, "\r\n");
	return err;
}


static int route_line(struct mbuf *mb, const char *route)
{
	struct uri uri;
	struct pl pl, lr;

	pl_set_str(&pl, route);
	if (!uri_decode(&uri, &pl) &&
	    !msg_param_exists(&uri.params, "lr", &lr))
		return mbuf_printf(mb, "Route: <%s>\r\n", route);

	return mbuf_printf(mb, "Route: <%s;lr>\r\n", route);
}


/*
 * What a forward leaves out: headers by name (any case), and the
 * Proxy-Authorization values for realms the script consumed (RFC 3261
 * 22.3: only the proxy of that realm may consume them).
 */
struct fwd_strip {
	const char *namev[STRIP_MAX];
	size_t namec;
	const char *realmv[STRIP_MAX];
	size_t realmc;
};


static bool strip_hdr(const struct fwd_strip *st, const struct sip_hdr *hdr)
{
	struct httpauth_digest_resp resp;
	size_t i;

	if (!st)
		return false;

	for (i = 0; i < st->namec; i++) {
		if (!pl_strcasecmp(&hdr->name, st->namev[i]))
			return true;
	}

	if (!st->realmc || hdr->id != SIP_HDR_PROXY_AUTHORIZATION ||
	    httpauth_digest_response_decode(&resp, &hdr->val))
		return false;

	for (i = 0; i < st->realmc; i++) {
		if (!pl_strcmp(&resp.realm, st->realmv[i]))
			return true;
	}

	return false;
}


/*
 * Everything after our Via: the request's headers in order, its own Via
 * with received/rport, Max-Forwards decremented (70 when absent), our
 * nstrip Routes removed and route (if any) pushed on top of the rest,
 * extra header lines, a fresh Content-Length and the body.
 */
static int build_rest(struct mbuf **mbp, const struct sip_msg *msg,
		      uint32_t nstrip, const char *route,
		      const struct mbuf *hdrs, const struct fwd_strip *st)
{
	uint32_t viac = 0, routec = 0;
	bool maxfwd = false, routed = !route;
	struct mbuf *mb;
	struct le *le;
	int err = 0;

	mb = mbuf_alloc(msg->mb->end + 256 + (hdrs ? hdrs->end : 0));
	if (!mb)
		return ENOMEM;

	for (le = msg->hdrl.head; le; le = le->next) {
		const struct sip_hdr *hdr = le->data;
		uint32_t mf;

		if (strip_hdr(st, hdr))
			continue;

		switch (hdr->id) {

		case SIP_HDR_VIA:
			if (viac++)
				err |= hdr_line(mb, &pl_via, &hdr->val);
			else
				err |= via_received(mb, msg, hdr);
			break;

		case SIP_HDR_MAX_FORWARDS:
			if (maxfwd)
				break;
			maxfwd = true;
			mf = pl_u32(&hdr->val);
			err |= num_line(mb, "Max-Forwards", mf ? mf - 1 : 0);
			break;

		case SIP_HDR_ROUTE:
			if (routec++ < nstrip)
				break;
			if (!routed) {
				err |= route_line(mb, route);
				routed = true;
			}
			err |= hdr_line(mb, &pl_route, &hdr->val);
			break;

		case SIP_HDR_CONTENT_LENGTH:
			break;

		default:
			err |= hdr_line(mb, &hdr->name, &hdr->val);
			break;
		}
	}

	if (!maxfwd)
		err |= num_line(mb, "Max-Forwards", MAXFWD_DEFAULT - 1);
	if (!routed)
		err |= route_line(mb, route);
	if (hdrs)
		err |= mbuf_write_mem(mb, hdrs->buf, hdrs->end);

	err |= num_line(mb, "Content-Length", mbuf_get_left(msg->mb));
	err |= mbuf_write_str(mb, "\r\n");
	err |= mbuf_write_mem(mb, mbuf_buf(msg->mb), mbuf_get_left(msg->mb));
	if (err) {
		mem_deref(mb);
		return ENOMEM;
	}

	mb->pos = 0;
	*mbp = mb;
	return 0;
}


/* ---- upstream ---- */


static void upstream_addr(struct sa *dst, const struct sip_msg *rmsg)
{
	struct pl rp;

	sip_reply_addr(dst, rmsg,
		       !msg_param_exists(&rmsg->via.params, "rport", &rp));
}


/* a response without its top Via (ours), plus extra header lines */
static int resp_encode(struct mbuf **mbp, const struct sip_msg *resp,
		       const struct mbuf *extra)
{
	struct mbuf *mb;
	uint32_t viac = 0;
	struct le *le;
	int err;

	mb = mbuf_alloc(resp->mb->end + (extra ? extra->end : 0) + 64);
	if (!mb)
		return ENOMEM;

	err = mbuf_printf(mb, "SIP/2.0 %u %r\r\n", resp->scode,
			  &resp->reason);
	for (le = resp->hdrl.head; le; le = le->next) {
		const struct sip_hdr *hdr = le->data;

		if (hdr->id == SIP_HDR_VIA && !viac++)
			continue;

		err |= hdr_line(mb, &hdr->name, &hdr->val);
	}

	if (extra)
		err |= mbuf_write_mem(mb, extra->buf, extra->end);
	err |= mbuf_write_str(mb, "\r\n");
	err |= mbuf_write_mem(mb, mbuf_buf(resp->mb),
			      mbuf_get_left(resp->mb));
	if (err) {
		mem_deref(mb);
		return ENOMEM;
	}

	mb->pos = 0;
	*mbp = mb;
	return 0;
}


static void fwd_set_status(struct lsip_fwd *fwd, uint16_t scode)
{
	if (scode < 200)
		return;

	fwd->sent = true;
	if (fwd->req)
		lsip_req_set_status(fwd->req, scode);
}


/* relay a downstream response upstream; 2xx for INVITE even after a
 * final response (each fork's 2xx goes up, RFC 3261 16.7 step 5) */
static int send_upstream(struct lsip_fwd *fwd, const struct sip_msg *resp,
			 const struct mbuf *extra)
{
	const struct sip_msg *rmsg = fwd->rmsg;
	struct mbuf *mb = NULL;
	struct sa dst;
	int err;

	if (!*fwd->stp && !(fwd->invite && resp->scode >= 200 &&
			    resp->scode < 300))
		return EALREADY;

	err = resp_encode(&mb, resp, extra);
	if (err)
		return err;

	upstream_addr(&dst, rmsg);
	if (*fwd->stp && resp->scode >= 200 && lsip_done_cacheable(rmsg)) {
		/* final answer to a non-INVITE over UDP: done.c keeps the
		 * bytes for retransmissions, libre's transaction ends now */
		err = lsip_done_reply(fwd->sip, rmsg, &dst, mb);
		*fwd->stp = mem_deref(*fwd->stp);
	}
	else if (*fwd->stp && fwd->invite && resp->scode >= 200 &&
		 resp->scode < 300 && lsip_done_absorb(rmsg)) {
		/* 2xx to an INVITE over UDP: the server transaction ends now
		 * (the 2xx and its retransmissions are relayed hop by hop
		 * without it, 16.7 step 10); done.c absorbs the INVITE's late
		 * retransmissions for Timer J */
		mb->pos = 0;
		err = sip_send(fwd->sip, rmsg->sock, rmsg->tp, &dst, mb);
		*fwd->stp = mem_deref(*fwd->stp);
	}
	else if (*fwd->stp)
		err = sip_strans_reply(fwd->stp, fwd->sip, rmsg, &dst,
				       resp->scode, mb);
	else
		err = sip_send(fwd->sip, rmsg->sock, rmsg->tp, &dst, mb);

	mem_deref(mb);
	fwd_set_status(fwd, resp->scode);
	return err;
}


/* a response of our own upstream (408, 482, 487, 500 ...) */
static int reply_upstream(struct lsip_fwd *fwd, uint16_t scode,
			  const char *reason)
{
	int err;

	if (!*fwd->stp)
		return EALREADY;

	err = sip_treplyf(fwd->stp, NULL, fwd->sip, fwd->rmsg, false, scode,
			  reason, "%bContent-Length: 0\r\n\r\n",
			  fwd->authh ? fwd->authh->buf : NULL,
			  fwd->authh ? fwd->authh->end : 0);
	fwd_set_status(fwd, scode);
	return err;
}


/* send the decided response upstream (503 goes up as 500, 16.7.6) */
static int fwd_relay(struct lsip_fwd *fwd)
{
	if (fwd->sent)
		return EALREADY;

	if (fwd->msg && fwd->scode != 503)
		return send_upstream(fwd, fwd->msg, fwd->authh);

	if (fwd->scode == 503)
		return reply_upstream(fwd, 500, "Server Internal Error");

	return reply_upstream(fwd, fwd->scode, fwd->reason);
}


/* ---- branches ---- */


static void branch_destructor(void *arg)
{
	struct lsip_branch *b = arg;

	tmr_cancel(&b->tmr);
	list_unlink(&b->he);
	list_unlink(&b->le);
	mem_deref(b->sreq);           /* pending: libre CANCELs it */
	mem_deref((void *)b->resp);
	mem_deref(b->uri);
}


static bool branch_cmp(struct le *le, void *arg)
{
	const struct lsip_branch *b = le->data;

	return 0 == pl_strcmp(arg, b->id);
}


static struct lsip_branch *branch_find(const struct pl *id)
{
	if (!pl_isset(id))
		return NULL;

	return list_ledata(list_apply(
		&branchv[hash_joaat_pl(id) & (BRANCH_HASH - 1)], true,
		branch_cmp, (void *)id));
}


/* note the branch libre put in the Via it just wrote */
static void branch_set_id(struct lsip_branch *b, const struct mbuf *mb)
{
	struct pl all, id;

	all.p = (const char *)mb->buf;
	all.l = mb->end;
	if (re_regex(all.p, all.l, "\r\nVia: [^\r\n]+;branch=[^;\r\n]+",
		     NULL, &id) || id.l >= sizeof(b->id))
		return;

	list_unlink(&b->he);
	(void)pl_strcpy(&id, b->id, sizeof(b->id));
	list_append(&branchv[hash_joaat_str(b->id) & (BRANCH_HASH - 1)],
		    &b->he, b);
}


/* libre is about to send: record the branch, add Record-Route */
static int send_handler(enum sip_transp tp, const struct sa *src,
			const struct sa *dst, struct mbuf *mb, void *arg)
{
	struct lsip_branch *b = arg;
	struct lsip_fwd *fwd = b->fwd;
	const struct sip_msg *rmsg = fwd->rmsg;
	int err;
	(void)dst;

	branch_set_id(b, mb);
	if (!fwd->rr)
		return 0;

	/* the side facing downstream on top; a second entry when the
	 * request came in on another address or transport (RFC 5658) */
	err = mbuf_printf(mb, "Record-Route: <sip:%J%s;lr>\r\n", src,
			  sip_transp_param(tp));
	if (rmsg->tp != tp || !sa_cmp(&rmsg->dst, src, SA_ALL))
		err |= mbuf_printf(mb, "Record-Route: <sip:%J%s;lr>\r\n",
				   &rmsg->dst, sip_transp_param(rmsg->tp));

	return err;
}


static size_t fwd_pending(const struct lsip_fwd *fwd)
{
	struct le *le;
	size_t n = 0;

	for (le = fwd->branchl.head; le; le = le->next) {
		const struct lsip_branch *b = le->data;

		if (!b->final)
			++n;
	}

	return n;
}


static void fwd_cancel_pending(struct lsip_fwd *fwd)
{
	struct le *le;

	for (le = fwd->branchl.head; le; le = le->next) {
		struct lsip_branch *b = le->data;

		if (!b->final && b->sreq)
			sip_request_cancel(b->sreq);
	}
}


static void fwd_emit_done(struct lsip_fwd *fwd)
{
	lua_State *L = lsip_L;

	if (fwd->quiet || fwd->autonomous || !lsip_push_ref(L, fwd->self))
		return;

	lsip_emit(L, "done", 1);
}


/* done and no branch can call back: drop the pin (or free ourselves) */
static void fwd_check_finished(struct lsip_fwd *fwd)
{
	struct le *le;

	if (!fwd->done || fwd->finished)
		return;

	for (le = fwd->branchl.head; le; le = le->next) {
		const struct lsip_branch *b = le->data;

		if (b->sreq)
			return;
	}

	fwd->finished = true;
	--stats.live;
	if (fwd->autonomous)
		mem_deref(fwd);
	else
		lsip_unpin(lsip_L, &fwd->self);
}


static void fwd_unhook(struct lsip_fwd *fwd)
{
	if (fwd->hooked && fwd->req)
		lsip_req_set_cancel(fwd->req, NULL, NULL);

	fwd->hooked = false;
}


/* the first 2xx decides: cancel the rest */
static void fwd_success(struct lsip_fwd *fwd, const struct sip_msg *resp)
{
	fwd->msg = mem_ref((void *)resp);
	fwd->scode = resp->scode;
	(void)pl_strcpy(&resp->reason, fwd->reason, sizeof(fwd->reason));
	fwd->done = true;
	fwd->next = fwd->targetc;
	fwd_unhook(fwd);
	fwd_cancel_pending(fwd);
	fwd_emit_done(fwd);
}


/* a branch has its final outcome (failure, timeout or error) */
static void branch_final(struct lsip_branch *b)
{
	struct lsip_fwd *fwd = b->fwd;

	tmr_cancel(&b->tmr);
	if (fwd->done)
		return;

	if (b->scode >= 600) {
		fwd->next = fwd->targetc;
		fwd_cancel_pending(fwd);
		fwd_decide(fwd);
		return;
	}

	if (fwd_pending(fwd))
		return;

	fwd_advance(fwd);
}


static void resp_handler(int err, const struct sip_msg *msg, void *arg)
{
	struct lsip_branch *b = arg;
	struct lsip_fwd *fwd = mem_ref(b->fwd);

	if (!err && msg && msg->scode < 200) {
		if (msg->scode > 100 && !b->final && !fwd->done) {
			if (fwd->invite)      /* Timer C restarts */
				tmr_start(&b->tmr, fwd->timeout,
					  tmr_handler, b);
			(void)send_upstream(fwd, msg, NULL);
		}
		goto out;
	}

	/* final: libre frees the request after this handler */
	b->sreq = NULL;

	if (!err && msg && msg->scode < 300) {
		if (fwd->invite || !fwd->sent)
			(void)send_upstream(fwd, msg, NULL);
		if (!b->final) {
			b->final = true;
			b->scode = msg->scode;
			b->resp = mem_ref((void *)msg);
			tmr_cancel(&b->tmr);
		}
		if (!fwd->done)
			fwd_success(fwd, msg);
		goto out;
	}

	if (b->final)            /* timed out before: late failure */
		goto out;

	b->final = true;
	if (msg) {
		b->scode = msg->scode;
		b->resp = mem_ref((void *)msg);
	}
	else {
		b->scode = err == ETIMEDOUT ? 408 : 503;
	}

	branch_final(b);

 out:
	fwd_check_finished(fwd);
	mem_deref(fwd);
}


/* Timer C: give the branch up as 408 and CANCEL it (RFC 3261 16.8) */
static void tmr_handler(void *arg)
{
	struct lsip_branch *b = arg;
	struct lsip_fwd *fwd = mem_ref(b->fwd);

	if (!b->final) {
		b->final = true;
		b->scode = 408;
		if (fwd->invite && b->sreq)
			sip_request_cancel(b->sreq);
		branch_final(b);
	}

	fwd_check_finished(fwd);
	mem_deref(fwd);
}


/* start a branch to uri; on error it is final with 503 at once */
static int branch_start(struct lsip_fwd *fwd, const char *uri)
{
	const char *hop = fwd->nexthop ? fwd->nexthop : uri;
	struct lsip_branch *b;
	struct uri route;
	struct pl pl;
	int err;

	b = mem_zalloc(sizeof(*b), branch_destructor);
	if (!b)
		return ENOMEM;

	b->fwd = fwd;
	b->hash = fwd->hash;
	list_append(&fwd->branchl, &b->le, b);

	err = str_dup(&b->uri, uri);
	if (err)
		goto out;

	pl_set_str(&pl, hop);
	err = uri_decode(&route, &pl);
	if (err)
		goto out;

	err = sip_request(&b->sreq, fwd->sip, true, fwd->rmsg->met.p,
			  (int)fwd->rmsg->met.l, uri, -1, &route, fwd->mb,
			  (size_t)b, send_handler, resp_handler, b);
	if (err)
		goto out;

	tmr_start(&b->tmr, fwd->timeout, tmr_handler, b);

 out:
	if (err) {
		b->final = true;
		b->scode = 503;
	}

	return err;
}


/* ---- response context ---- */


static void fwd_destructor(void *arg)
{
	struct lsip_fwd *fwd = arg;
	size_t i;

	if (!fwd->finished)
		--stats.live;
	fwd_unhook(fwd);
	list_flush(&fwd->branchl);
	mem_deref(fwd->st);
	for (i = 0; i < fwd->targetc; i++)
		mem_deref(fwd->targetv[i]);
	mem_deref(fwd->targetv);
	mem_deref(fwd->nexthop);
	mem_deref(fwd->mb);
	mem_deref(fwd->authh);
	mem_deref((void *)fwd->msg);
	mem_deref((void *)fwd->rmsg);
	mem_deref(fwd->req);
	mem_deref(fwd->ep);
}


/* reason phrases of the responses we make up ourselves */
static const char *own_reason(uint16_t scode)
{
	switch (scode) {

	case 408: return "Request Timeout";
	case 487: return "Request Terminated";
	case 503: return "Service Unavailable";
	default:  return "Server Internal Error";
	}
}


static int rank(uint16_t scode)
{
	if (scode >= 600)
		return 0;

	/* 408 and 503 say least about the target: last in their class */
	return (scode / 100) * 10 + (scode == 408 || scode == 503 ? 5 : 0);
}


static bool auth_hdr_handler(const struct sip_hdr *hdr,
			     const struct sip_msg *msg, void *arg)
{
	(void)msg;

	return 0 != mbuf_printf(arg, "%r: %r\r\n", &hdr->name, &hdr->val);
}


/* RFC 3261 16.7 step 6: every other challenge joins the chosen one */
static void gather_challenges(struct lsip_fwd *fwd,
			      const struct lsip_branch *best)
{
	struct le *le;

	for (le = fwd->branchl.head; le; le = le->next) {
		const struct lsip_branch *b = le->data;

		if (b == best || !b->resp ||
		    (b->scode != 401 && b->scode != 407))
			continue;

		if (!fwd->authh) {
			fwd->authh = mbuf_alloc(512);
			if (!fwd->authh)
				return;
		}

		(void)sip_msg_hdr_apply(b->resp, true,
					SIP_HDR_WWW_AUTHENTICATE,
					auth_hdr_handler, fwd->authh);
		(void)sip_msg_hdr_apply(b->resp, true,
					SIP_HDR_PROXY_AUTHENTICATE,
					auth_hdr_handler, fwd->authh);
	}
}


/* choose the best final response (RFC 3261 16.7 step 6) */
static void fwd_decide(struct lsip_fwd *fwd)
{
	const struct lsip_branch *best = NULL;
	struct le *le;

	if (fwd->done)
		return;

	for (le = fwd->branchl.head; le; le = le->next) {
		const struct lsip_branch *b = le->data;

		if (!b->final || !b->scode)
			continue;
		if (!best || rank(b->scode) < rank(best->scode))
			best = b;
	}

	fwd->done = true;
	fwd_unhook(fwd);

	if (best && best->resp) {
		fwd->msg = mem_ref((void *)best->resp);
		fwd->scode = best->scode;
		(void)pl_strcpy(&best->resp->reason, fwd->reason,
				sizeof(fwd->reason));
		if (fwd->scode == 401 || fwd->scode == 407)
			gather_challenges(fwd, best);
	}
	else {
		fwd->scode = best ? best->scode : 500;
		(void)str_ncpy(fwd->reason, own_reason(fwd->scode),
			       sizeof(fwd->reason));
	}

	/* nobody decides for an in-dialog request or after a CANCEL */
	if (fwd->autonomous || fwd->cancelled)
		(void)fwd_relay(fwd);

	fwd_emit_done(fwd);
}


/* serial forking: next target when none is pending; else decide */
static void fwd_advance(struct lsip_fwd *fwd)
{
	while (!fwd->done && !fwd->cancelled && fwd->next < fwd->targetc) {
		if (!branch_start(fwd, fwd->targetv[fwd->next++]))
			return;
	}

	if (!fwd->done && !fwd_pending(fwd))
		fwd_decide(fwd);
}


/* CANCEL from upstream (runs inside re_main) */
static void fwd_cancel_handler(void *arg)
{
	struct lsip_fwd *fwd = mem_ref(arg);

	fwd->cancelled = true;
	fwd->next = fwd->targetc;
	fwd_cancel_pending(fwd);

	if (!fwd->done) {
		/* answer at once; the branches' 487s stay with us */
		(void)reply_upstream(fwd, 487, "Request Terminated");
		fwd->done = true;
		fwd->scode = 487;
		(void)str_ncpy(fwd->reason, own_reason(487),
			       sizeof(fwd->reason));
		fwd_unhook(fwd);
		fwd_emit_done(fwd);
	}

	fwd_check_finished(fwd);
	mem_deref(fwd);
}


static int fwd_alloc(struct lsip_fwd **fwdp, struct lsip_ep *ep,
		     const struct sip_msg *msg)
{
	struct lsip_fwd *fwd;

	fwd = mem_zalloc(sizeof(*fwd), fwd_destructor);
	if (!fwd)
		return ENOMEM;

	fwd->self = LUA_NOREF;
	fwd->ep = mem_ref(ep);
	fwd->sip = lsip_ep_sip(ep);
	fwd->rmsg = mem_ref((void *)msg);
	fwd->invite = !pl_strcmp(&msg->met, "INVITE");
	fwd->hash = req_hash(msg);
	fwd->timeout = FWD_TIMEOUT;
	fwd->stp = &fwd->st;
	++stats.forwarded;
	++stats.live;

	*fwdp = fwd;
	return 0;
}


/* start the branches: all at once (parallel) or the first (serial) */
static void fwd_start(struct lsip_fwd *fwd, bool parallel)
{
	if (parallel) {
		while (fwd->next < fwd->targetc)
			(void)branch_start(fwd, fwd->targetv[fwd->next++]);
		if (!fwd_pending(fwd))
			fwd_decide(fwd);
		return;
	}

	fwd_advance(fwd);
}


/* ---- loops and stateless relaying ---- */


struct loop_walk {
	struct sip *sip;
	uint64_t hash;
	bool loop;
};


static bool via_loop_handler(const struct sip_hdr *hdr,
			     const struct sip_msg *msg, void *arg)
{
	struct loop_walk *w = arg;
	const struct lsip_branch *b;
	struct sip_via via;
	struct sa sa;
	(void)msg;

	if (sip_via_decode(&via, &hdr->val))
		return false;

	sa = via.addr;
	if (!sa_port(&sa))
		sa_set_port(&sa, sip_transp_port(via.tp, 0));
	if (!sip_transp_isladdr(w->sip, SIP_TRANSP_NONE, &sa))
		return false;

	b = branch_find(&via.branch);
	if (!b || b->hash != w->hash)
		return false;   /* not ours, or a spiral */

	w->loop = true;
	return true;
}


/* RFC 3261 16.3 item 4: our Via with a branch we made for this request */
static bool is_loop(struct sip *sip, const struct sip_msg *msg,
		    uint64_t hash)
{
	struct loop_walk w;

	w.sip = sip;
	w.hash = hash;
	w.loop = false;
	(void)sip_msg_hdr_apply(msg, true, SIP_HDR_VIA, via_loop_handler, &w);
	return w.loop;
}


/*
 * Relay msg statelessly to hop (RFC 3261 16.11): the branch is derived
 * from the request's own, so a retransmission (and the CANCEL of a
 * relayed INVITE) takes the same branch. Host names go through libre's
 * resolver with a fresh branch.
 */
static int stateless_send(struct sip *sip, const struct sip_msg *msg,
			  uint32_t nstrip, const char *hop)
{
	struct mbuf *rest = NULL, *mb = NULL;
	enum sip_transp tp;
	struct sa dst, laddr;
	struct uri uri;
	struct pl pl, maddr;
	uint64_t h;
	int err;

	pl_set_str(&pl, hop);
	err = uri_decode(&uri, &pl);
	if (err)
		return err;

	err = build_rest(&rest, msg, nstrip, NULL, NULL, NULL);
	if (err)
		return err;

	tp = uri_transport(&uri);
	if (msg_param_decode(&uri.params, "maddr", &maddr))
		maddr = uri.host;

	if (sa_set(&dst, &maddr, sip_transp_port(tp, uri.port))) {
		err = sip_request(NULL, sip, false, msg->met.p,
				  (int)msg->met.l, msg->ruri.p,
				  (int)msg->ruri.l, &uri, rest, 0, NULL,
				  NULL, NULL);
		goto out;
	}

	err = sip_transp_laddr(sip, &laddr, tp, &dst);
	if (err)
		goto out;

	h = fnv_pl(0xcbf29ce484222325ULL, &msg->via.branch);
	h = fnv_pl(h, &msg->via.sentby);
	h = fnv_pl(h, &msg->ruri);

	mb = mbuf_alloc(rest->end + 256);
	if (!mb) {
		err = ENOMEM;
		goto out;
	}

	err = mbuf_printf(mb, "%r %r SIP/2.0\r\n"
			  "Via: SIP/2.0/%s %J;branch=z9hG4bK%016llx;rport\r\n"
			  "%b",
			  &msg->met, &msg->ruri, sip_transp_name(tp), &laddr,
			  (unsigned long long)h, rest->buf, rest->end);
	if (err)
		goto out;

	mb->pos = 0;
	err = sip_send(sip, NULL, tp, &dst, mb);

 out:
	mem_deref(rest);
	mem_deref(mb);
	return err;
}


/* where a request goes after our Routes: next Route or Request-URI */
static int next_hop(char **hopp, const struct sip_msg *msg, uint32_t nstrip)
{
	int err;

	err = route_nth(hopp, msg, nstrip);
	if (err || *hopp)
		return err;

	return pl_strdup(hopp, &msg->ruri);
}


static bool hop_local(struct sip *sip, const char *hop)
{
	struct uri uri;
	struct pl pl;

	pl_set_str(&pl, hop);
	return !uri_decode(&uri, &pl) && uri_local(sip, &uri);
}


/**
 * Route a request through this endpoint without Lua (RFC 3261 16.4)
 *
 * Takes in-dialog requests whose top Route is ours (and, on a proxy
 * endpoint, a CANCEL that matched no transaction). ACK and CANCEL are
 * relayed statelessly, other methods statefully. Runs inside re_main.
 *
 * @param ep    Endpoint
 * @param msg   Request
 * @param proxy True if the endpoint is a proxy
 *
 * @return true if the request was taken
 */
bool lsip_proxy_incoming(struct lsip_ep *ep, const struct sip_msg *msg,
			 bool proxy)
{
	struct sip *sip = lsip_ep_sip(ep);
	bool ack = !pl_strcmp(&msg->met, "ACK");
	bool cancel = !pl_strcmp(&msg->met, "CANCEL");
	struct lsip_fwd *fwd = NULL;
	char *hop = NULL;
	uint32_t nstrip;
	size_t i;
	int err;

	if (!pl_isset(&msg->to.tag) && !(proxy && cancel))
		return false;

	nstrip = routes_local(sip, msg);
	if (!nstrip && !(proxy && cancel))
		return false;

	if (next_hop(&hop, msg, nstrip) || hop_local(sip, hop)) {
		mem_deref(hop);
		return false;          /* for us after all */
	}

	for (i = 0; i < 4; i++) {
		if (!pl_strcmp(&msg->met, routed_names[i]))
			break;
	}
	++stats.routed[i];

	if (pl_isset(&msg->maxfwd) && pl_u32(&msg->maxfwd) == 0) {
		if (!ack)
			(void)sip_reply(sip, msg, 483, "Too Many Hops");
		goto out;
	}

	if (ack || cancel) {
		(void)stateless_send(sip, msg, nstrip, hop);
		goto out;
	}

	err = fwd_alloc(&fwd, ep, msg);
	if (!err)
		err = sip_strans_alloc(&fwd->st, sip, msg,
				       fwd_cancel_handler, fwd);
	if (!err) {
		fwd->autonomous = true;
		fwd->targetv = mem_zalloc(sizeof(char *), NULL);
		err = fwd->targetv ? pl_strdup(&fwd->targetv[0], &msg->ruri)
			: ENOMEM;
	}
	if (!err) {
		fwd->targetc = 1;
		err = route_nth(&fwd->nexthop, msg, nstrip);
	}
	if (!err)
		err = build_rest(&fwd->mb, msg, nstrip, NULL, NULL, NULL);
	if (err) {
		if (fwd && fwd->st)
			(void)sip_treply(&fwd->st, sip, msg, 500,
					 "Server Internal Error");
		else
			(void)sip_reply(sip, msg, 500,
					"Server Internal Error");
		mem_deref(fwd);
		goto out;
	}

	if (fwd->invite)
		(void)sip_treply(&fwd->st, sip, msg, 100, "Trying");

	/* the context holds itself until fwd_check_finished() */
	mem_ref(fwd);
	fwd_start(fwd, false);
	fwd_check_finished(fwd);
	mem_deref(fwd);

 out:
	mem_deref(hop);
	return true;
}


struct via_walk {
	uint32_t n;
	const struct sip_hdr *hdr;
};


static bool second_via_handler(const struct sip_hdr *hdr,
			       const struct sip_msg *msg, void *arg)
{
	struct via_walk *w = arg;
	(void)msg;

	if (w->n++ != 1)
		return false;

	w->hdr = hdr;
	return true;
}


/**
 * Relay a response that matched no client transaction (RFC 3261 16.7:
 * handled as a stateless proxy): our Via is removed and the response
 * goes to the next Via. Runs inside re_main.
 *
 * @param ep  Endpoint
 * @param msg Response
 *
 * @return true if the response was ours to relay
 */
bool lsip_proxy_response(struct lsip_ep *ep, const struct sip_msg *msg)
{
	struct sip *sip = lsip_ep_sip(ep);
	struct mbuf *mb = NULL;
	struct via_walk w;
	struct sip_via via;
	struct sa sa, dst;
	struct pl pl;
	uint16_t port;

	if (sip_msg_hdr_count(msg, SIP_HDR_VIA) < 2)
		return false;

	sa = msg->via.addr;
	if (!sa_port(&sa))
		sa_set_port(&sa, sip_transp_port(msg->via.tp, 0));
	if (!sip_transp_isladdr(sip, SIP_TRANSP_NONE, &sa))
		return false;

	memset(&w, 0, sizeof(w));
	(void)sip_msg_hdr_apply(msg, true, SIP_HDR_VIA, second_via_handler,
				&w);
	if (!w.hdr || sip_via_decode(&via, &w.hdr->val))
		return true;            /* ours, but nowhere to go */

	port = sa_port(&via.addr);
	if (!msg_param_decode(&via.params, "rport", &pl) && pl_u32(&pl))
		port = pl_u32(&pl);
	port = sip_transp_port(via.tp, port);

	if (msg_param_decode(&via.params, "received", &pl) ||
	    sa_set(&dst, &pl, port)) {
		dst = via.addr;
		sa_set_port(&dst, port);
	}

	if (!sa_isset(&dst, SA_ALL) || resp_encode(&mb, msg, NULL))
		return true;

	(void)sip_send(sip, NULL, via.tp, &dst, mb);
	mem_deref(mb);
	++stats.stray;
	return true;
}


int __real_sip_dialog_update(struct sip_dialog *dlg,
			     const struct sip_msg *msg);
int __wrap_sip_dialog_update(struct sip_dialog *dlg,
			     const struct sip_msg *msg);


/**
 * Refuse libre's own following of a 3xx (the Makefile links with
 * -Wl,--wrap=sip_dialog_update)
 *
 * sipsess_connect() sends the INVITE again to the first Contact of a 3xx
 * by itself, up to 16 times and without loop detection. In luasip a 3xx
 * is the final answer of the call; ep:call's follow_redirects (bounded,
 * with loop detection) or the script decides where to go next. Every
 * other caller (target refresh by requests and 2xx) goes through.
 *
 * @param dlg SIP dialog
 * @param msg Request or response
 *
 * @return 0 if success, otherwise errorcode
 */
int __wrap_sip_dialog_update(struct sip_dialog *dlg,
			     const struct sip_msg *msg)
{
	if (msg && !msg->req && msg->scode >= 300 && msg->scode < 400)
		return EPERM;

	return __real_sip_dialog_update(dlg, msg);
}


/* ---- Lua ---- */


static struct lsip_fwd *fwd_check(lua_State *L, int idx)
{
	struct lsip_fwd **box = lsip_checkbox(L, idx, LSIP_FWD_MT);

	return *box;
}


/* targets at idx: a list of SIP URI strings (checked) */
static int get_targets(lua_State *L, struct lsip_fwd *fwd, int idx)
{
	lua_Integer i, n;

	luaL_checktype(L, idx, LUA_TTABLE);
	n = luaL_len(L, idx);
	if (n < 1 || n > TARGETS_MAX)
		return luaL_error(L, "bad argument #1 to 'forward' (1 to %d "
				  "targets expected, got %d)", TARGETS_MAX,
				  (int)n);

	fwd->targetv = mem_zalloc(n * sizeof(char *), NULL);
	if (!fwd->targetv)
		return ENOMEM;

	for (i = 1; i <= n; i++) {
		const char *s;
		struct uri uri;
		struct pl pl;
		size_t len;

		lua_geti(L, idx, i);
		s = lua_tolstring(L, -1, &len);
		pl_set_str(&pl, s ? s : "");
		if (!s || strlen(s) != len || strpbrk(s, " \t\r\n<>") ||
		    uri_decode(&uri, &pl) || !pl_isset(&uri.host) ||
		    pl_strcasecmp(&uri.scheme, "sip"))
			return luaL_error(L, "bad argument #1 to 'forward' "
					  "(SIP URI expected, got %s%s%s)",
					  s ? "\"" : "",
					  s ? s : luaL_typename(L, -1),
					  s ? "\"" : "");

		if (str_dup(&fwd->targetv[fwd->targetc], s))
			return ENOMEM;
		++fwd->targetc;
		lua_pop(L, 1);
	}

	return 0;
}


/* a list of strings at idx (nil: none) into v; raises naming the option */
static size_t get_strings(lua_State *L, int idx, const char **v,
			  const char *opt)
{
	lua_Integer i, n;

	if (lua_isnoneornil(L, idx))
		return 0;

	luaL_checktype(L, idx, LUA_TTABLE);
	n = luaL_len(L, idx);
	if (n > STRIP_MAX)
		luaL_error(L, "bad option '%s' (at most %d names expected, "
			   "got %d)", opt, STRIP_MAX, (int)n);

	for (i = 1; i <= n; i++) {
		lua_geti(L, idx, i);
		v[i - 1] = lua_tostring(L, -1);
		if (lua_type(L, -1) != LUA_TSTRING)
			luaL_error(L, "bad option '%s' (string expected at "
				   "[%d], got %s)", opt, (int)i,
				   luaL_typename(L, -1));
		lua_pop(L, 1);  /* the table keeps the string */
	}

	return (size_t)n;
}


/*
 * core.proxy_forward(req, targets, record_route, parallel, timeout,
 *                    headers, route, remove, realms) -> fwd | nil, err, code
 * Starts forwarding; the task waits for event "done" on fwd. remove:
 * header names left out; realms: Proxy-Authorization realms consumed.
 */
static int l_forward(lua_State *L)
{
	struct lsip_req *req = lsip_req_check(L, 1);
	bool rr = lua_toboolean(L, 3);
	bool parallel = lua_toboolean(L, 4);
	lua_Number timeout = luaL_optnumber(L, 5, FWD_TIMEOUT / 1000.0);
	const char *route = luaL_optstring(L, 7, NULL);
	struct fwd_strip st;
	struct mbuf *hdrs = NULL;
	struct sip_strans **stp;
	const struct sip_msg *msg;
	struct lsip_fwd *fwd;
	struct lsip_ep *ep;
	uint32_t nstrip;
	struct uri ru;
	struct pl pl;
	int err;

	if (!(timeout > 0) || timeout > 86400)
		return luaL_error(L, "bad option 'timeout' (positive number "
				  "of seconds expected, got %f)", timeout);
	st.namec = get_strings(L, 8, st.namev, "remove_headers");
	st.realmc = get_strings(L, 9, st.realmv, "consumed realms");
	if (route) {
		pl_set_str(&pl, route);
		if (strpbrk(route, " \t\r\n<>") || uri_decode(&ru, &pl) ||
		    pl_strcasecmp(&ru.scheme, "sip"))
			return luaL_error(L, "bad option 'route' (SIP URI "
					  "expected, got \"%s\")", route);
	}

	if (!req)
		return lsip_fail(L, ENOTCONN, "forward: closed");

	msg = lsip_req_parts(req, &ep, &stp);
	if (!*stp)
		return lsip_fail(L, EALREADY, "forward: already answered");
	if (!pl_strcmp(&msg->met, "ACK") || !pl_strcmp(&msg->met, "CANCEL"))
		return lsip_fail(L, EINVAL, "forward: hop-by-hop request");

	err = fwd_alloc(&fwd, ep, msg);
	if (err)
		return lsip_fail(L, err, "forward");

	lsip_newbox(L, fwd, LSIP_FWD_MT);         /* ..., fwd */
	fwd->req = mem_ref(req);
	fwd->stp = stp;
	fwd->rr = rr;
	fwd->timeout = (uint32_t)(timeout * 1000.0);
	if (!fwd->timeout)
		fwd->timeout = 1;

	err = get_targets(L, fwd, 2);
	if (err)
		return lsip_fail(L, err, "forward");
	lsip_headers(&hdrs, L, 6, "forward");

	if (pl_isset(&msg->maxfwd) && pl_u32(&msg->maxfwd) == 0) {
		mem_deref(hdrs);
		(void)reply_upstream(fwd, 483, "Too Many Hops");
		lua_pushnil(L);
		lua_pushliteral(L, "483 Too Many Hops");
		lua_pushinteger(L, 483);
		return 3;
	}

	if (is_loop(fwd->sip, msg, fwd->hash)) {
		mem_deref(hdrs);
		(void)reply_upstream(fwd, 482, "Loop Detected");
		lua_pushnil(L);
		lua_pushliteral(L, "482 Loop Detected");
		lua_pushinteger(L, 482);
		return 3;
	}

	nstrip = routes_local(fwd->sip, msg);
	err = route ? str_dup(&fwd->nexthop, route)
		: route_nth(&fwd->nexthop, msg, nstrip);
	if (!err)
		err = build_rest(&fwd->mb, msg, nstrip, route, hdrs, &st);
	mem_deref(hdrs);
	if (err)
		return lsip_fail(L, err, "forward");

	if (fwd->invite)
		(void)sip_treply(stp, fwd->sip, msg, 100, "Trying");

	fwd->self = lsip_pin(L, -1);
	lsip_req_set_cancel(req, fwd_cancel_handler, fwd);
	fwd->hooked = true;

	fwd->quiet = true;
	fwd_start(fwd, parallel);
	fwd->quiet = false;
	fwd_check_finished(fwd);

	return 1;
}


/* core.proxy_relay(req) -> true | nil, err, code (stateless) */
static int l_relay(lua_State *L)
{
	struct lsip_req *req = lsip_req_check(L, 1);
	struct sip_strans **stp;
	const struct sip_msg *msg;
	struct lsip_ep *ep;
	struct sip *sip;
	char *hop = NULL;
	uint32_t nstrip;
	int err;

	if (!req)
		return lsip_fail(L, ENOTCONN, "relay: closed");

	msg = lsip_req_parts(req, &ep, &stp);
	if (!*stp)
		return lsip_fail(L, EALREADY, "relay: already answered");

	sip = lsip_ep_sip(ep);
	if (pl_isset(&msg->maxfwd) && pl_u32(&msg->maxfwd) == 0) {
		(void)sip_treply(stp, sip, msg, 483, "Too Many Hops");
		lsip_req_set_status(req, 483);
		lua_pushnil(L);
		lua_pushliteral(L, "483 Too Many Hops");
		lua_pushinteger(L, 483);
		return 3;
	}

	nstrip = routes_local(sip, msg);
	err = next_hop(&hop, msg, nstrip);
	if (err)
		return lsip_fail(L, err, "relay");
	if (hop_local(sip, hop)) {
		mem_deref(hop);
		lua_pushnil(L);
		lua_pushliteral(L, "relay: the next hop is this endpoint");
		lua_pushinteger(L, ELOOP);
		return 3;
	}

	err = stateless_send(sip, msg, nstrip, hop);
	mem_deref(hop);
	if (err)
		return lsip_fail(L, err, "relay");

	++stats.relayed;

	/* stateless: retransmissions pass through again */
	*stp = mem_deref(*stp);
	lsip_req_set_status(req, 999);
	lua_pushboolean(L, 1);
	return 1;
}


/* core.proxy_relay_response(req, fwd) -> true | nil, err, code */
static int l_relay_response(lua_State *L)
{
	struct lsip_req *req = lsip_req_check(L, 1);
	struct lsip_fwd *fwd = fwd_check(L, 2);
	int err;

	if (!req || !fwd)
		return lsip_fail(L, ENOTCONN, "relay_response: closed");
	if (fwd->req != req)
		return luaL_error(L, "bad argument #1 to 'relay_response' "
				  "(a response to this request expected)");
	if (!fwd->done)
		return lsip_fail(L, EINPROGRESS, "relay_response");
	if (fwd->sent || !*fwd->stp)
		return lsip_fail(L, EALREADY, "relay_response");

	err = fwd_relay(fwd);
	if (err)
		return lsip_fail(L, err, "relay_response");

	lua_pushboolean(L, 1);
	return 1;
}


/* done, sent, cancelled, branches, status, reason, then the response */
static int l_fwd_getfield(lua_State *L)
{
	struct lsip_fwd *fwd = fwd_check(L, 1);
	const char *key = luaL_checkstring(L, 2);

	if (!fwd)
		return 0;

	if (!strcmp(key, "done")) {
		lua_pushboolean(L, fwd->done);
		return 1;
	}
	if (!strcmp(key, "sent")) {
		lua_pushboolean(L, fwd->sent);
		return 1;
	}
	if (!strcmp(key, "cancelled")) {
		lua_pushboolean(L, fwd->cancelled);
		return 1;
	}
	if (!strcmp(key, "branches")) {
		lua_pushinteger(L, list_count(&fwd->branchl));
		return 1;
	}
	if (!fwd->done)
		return 0;
	if (!strcmp(key, "status")) {
		lua_pushinteger(L, fwd->scode);
		return 1;
	}
	if (!strcmp(key, "reason")) {
		lua_pushstring(L, fwd->reason);
		return 1;
	}
	if (!fwd->msg) {
		if (!strcmp(key, "headers") || !strcmp(key, "contacts")) {
			lua_newtable(L);
			return 1;
		}
		return 0;
	}

	return lsip_msg_index(L, fwd->msg, key);
}


/* core.proxy_stats() -> { routed = { ACK = n, ... }, stray_responses,
 * relayed, forwarded, contexts } */
static int l_stats(lua_State *L)
{
	size_t i;

	lua_createtable(L, 0, 5);
	lua_createtable(L, 0, 5);
	for (i = 0; i < 5; i++) {
		lua_pushinteger(L, (lua_Integer)stats.routed[i]);
		lua_setfield(L, -2, i < 4 ? routed_names[i] : "other");
	}
	lua_setfield(L, -2, "routed");
	lua_pushinteger(L, (lua_Integer)stats.stray);
	lua_setfield(L, -2, "stray_responses");
	lua_pushinteger(L, (lua_Integer)stats.relayed);
	lua_setfield(L, -2, "relayed");
	lua_pushinteger(L, (lua_Integer)stats.forwarded);
	lua_setfield(L, -2, "forwarded");
	lua_pushinteger(L, stats.live);
	lua_setfield(L, -2, "contexts");
	return 1;
}


/* __gc: a pinned context is not collected; at lua_close it is */
static int l_fwd_gc(lua_State *L)
{
	struct lsip_fwd **box = lsip_checkbox(L, 1, LSIP_FWD_MT);

	if (*box) {
		lsip_unpin(L, &(*box)->self);
		*box = mem_deref(*box);
	}

	return 0;
}


/**
 * Register the proxy functions and the luasip.forward type
 *
 * @param L Lua state, module table on top
 *
 * @return 0
 */
int lsip_open_proxy(lua_State *L)
{
	static const luaL_Reg methods[] = {
		{NULL, NULL}
	};
	static const luaL_Reg meta[] = {
		{"__gc", l_fwd_gc},
		{"__getfield", l_fwd_getfield},
		{NULL, NULL}
	};

	lsip_setfuncs(L, LSIP_FWD_MT, methods, meta);
	lua_pushcfunction(L, l_forward);
	lua_setfield(L, -2, "proxy_forward");
	lua_pushcfunction(L, l_relay);
	lua_setfield(L, -2, "proxy_relay");
	lua_pushcfunction(L, l_relay_response);
	lua_setfield(L, -2, "proxy_relay_response");
	lua_pushcfunction(L, l_stats);
	lua_setfield(L, -2, "proxy_stats");
	return 0;
}
