/**
 * @file done.c  Answered non-INVITE requests over UDP, kept as bytes for
 *               their retransmissions
 *
 * RFC 3261 17.2.2 keeps a non-INVITE server transaction "completed" for
 * Timer J (64*T1, 32 s over UDP) so that a retransmitted request gets the
 * same final response again. libre's sip_strans does so with the whole
 * parsed request and a 1 KB reply buffer: about 4 KB per transaction for
 * 32 s. At 15000 REGISTERs/s that was 300 MB of heap, and the allocator
 * and page-fault work that came with it cost a third of the registrar's
 * CPU (bench/register.sh); a proxied call leaves one such transaction per
 * BYE.
 *
 * Where luasip sends a final response to a non-INVITE request over UDP
 * itself (the registrar's C path, proxy.c relaying a response upstream),
 * it sends it without a libre transaction (or ends the one it had) and
 * keeps only the response bytes here, keyed as RFC 3261 17.2.3 matches a
 * request to a server transaction: the top Via's branch and sent-by and
 * the method, and the socket it came in on. stack.c asks here first for
 * every request: a retransmission gets those bytes again and goes no
 * further. Only requests with an RFC 3261 branch are kept; reliable
 * transports have Timer J = 0.
 *
 * Loop thread only.
 *
 * Copyright (C) 2026 luasip authors
 */
#include <stdarg.h>
#include "lsip.h"


enum {
	HASH_SIZE = 1 << 14,          /* freed again when nothing is kept */
	KEEP_MS   = 64 * SIP_T1,      /* Timer J */
	KEY_MAX   = 256,
};


struct done {
	struct le he;                 /* in table, by branch */
	struct le le;                 /* in fifo, oldest first */
	uint64_t expires;             /* tmr_jiffies() */
	uint32_t hash;                /* of the branch */
	const void *sock;             /* the request's socket (compared only) */
	struct sa dst;                /* where the response went */
	uint16_t bl, sl, ml;          /* branch, sent-by, method lengths */
	uint32_t rl;                  /* response bytes */
	char data[];                  /* branch, sent-by, method, response */
};


static void keep(const struct sip_msg *msg, const struct sa *dst,
		 const struct mbuf *mb);

static struct hash *table;
static struct list fifo;
static struct tmr tmr;
static uint64_t resent;


static void destructor(void *arg)
{
	struct done *d = arg;

	hash_unlink(&d->he);
	list_unlink(&d->le);
}


static uint32_t key_hash(const struct sip_msg *msg)
{
	return hash_joaat((const uint8_t *)msg->via.branch.p,
			  msg->via.branch.l);
}


struct key {
	const struct sip_msg *msg;
	uint32_t hash;
};


static bool key_cmp(struct le *le, void *arg)
{
	const struct done *d = le->data;
	const struct key *k = arg;
	const struct sip_msg *msg = k->msg;
	const char *p = d->data;

	return d->hash == k->hash && d->sock == msg->sock &&
		d->bl == msg->via.branch.l && d->sl == msg->via.sentby.l &&
		d->ml == msg->met.l &&
		!memcmp(p, msg->via.branch.p, d->bl) &&
		!memcmp(p + d->bl, msg->via.sentby.p, d->sl) &&
		!memcmp(p + d->bl + d->sl, msg->met.p, d->ml);
}


static void expire(uint64_t now)
{
	struct le *le;

	while ((le = list_head(&fifo))) {
		struct done *d = le->data;

		if (d->expires > now)
			break;
		mem_deref(d);
	}
}


static void timeout(void *arg)
{
	uint64_t now = tmr_jiffies();
	struct le *le;
	(void)arg;

	expire(now);
	le = list_head(&fifo);
	if (le) {
		uint64_t at = ((struct done *)le->data)->expires;

		tmr_start(&tmr, at > now ? at - now : 0, timeout, NULL);
	}
	else {
		table = mem_deref(table);   /* idle: give its buckets back */
	}
}


/* requests a kept entry may match: INVITE too (absorbed, see below) */
static bool matchable(const struct sip_msg *msg)
{
	return msg && msg->req && msg->tp == SIP_TRANSP_UDP &&
		msg->via.branch.l > 7 && msg->via.branch.l <= KEY_MAX &&
		msg->via.sentby.l <= KEY_MAX && msg->met.l <= 32 &&
		!memcmp(msg->via.branch.p, "z9hG4bK", 7) &&
		pl_strcmp(&msg->met, "ACK") && pl_strcmp(&msg->met, "CANCEL");
}


/**
 * Whether a final response to msg may be sent with lsip_done_reply
 *
 * @param msg Request
 *
 * @return true for a non-INVITE, non-ACK, non-CANCEL request over UDP
 *         with an RFC 3261 branch
 */
bool lsip_done_cacheable(const struct sip_msg *msg)
{
	return matchable(msg) && pl_strcmp(&msg->met, "INVITE");
}


/**
 * Send the final response mb to msg without a transaction, and keep its
 * bytes for msg's retransmissions (lsip_done_resend) for Timer J
 *
 * @param sip SIP stack
 * @param msg Request (lsip_done_cacheable)
 * @param dst Where the response goes
 * @param mb  The response, from mb->buf to mb->end
 *
 * @return 0 if sent (keeping it may fail: that costs only the resend)
 */
int lsip_done_reply(struct sip *sip, const struct sip_msg *msg,
		    const struct sa *dst, struct mbuf *mb)
{
	int err;

	mb->pos = 0;
	err = sip_send(sip, msg->sock, msg->tp, dst, mb);
	if (err)
		return err;

	keep(msg, dst, mb);
	return 0;
}


/* keep mb, sent to dst as the final answer to msg (lsip_done_cacheable) */
static void keep(const struct sip_msg *msg, const struct sa *dst,
		 const struct mbuf *mb)
{
	uint64_t now = tmr_jiffies();
	struct done *d;
	size_t kl;

	if (!table && hash_alloc(&table, HASH_SIZE))
		return;
	expire(now);

	kl = msg->via.branch.l + msg->via.sentby.l + msg->met.l;
	d = mem_alloc(sizeof(*d) + kl + mb->end, destructor);
	if (!d)
		return;
	memset(d, 0, sizeof(*d));
	d->expires = now + KEEP_MS;
	d->hash = key_hash(msg);
	d->sock = msg->sock;
	d->dst = *dst;
	d->bl = (uint16_t)msg->via.branch.l;
	d->sl = (uint16_t)msg->via.sentby.l;
	d->ml = (uint16_t)msg->met.l;
	d->rl = (uint32_t)mb->end;
	memcpy(d->data, msg->via.branch.p, d->bl);
	memcpy(d->data + d->bl, msg->via.sentby.p, d->sl);
	memcpy(d->data + d->bl + d->sl, msg->met.p, d->ml);
	memcpy(d->data + kl, mb->buf, mb->end);

	hash_append(table, d->hash, &d->he, d);
	list_append(&fifo, &d->le, d);
	if (!tmr_isrunning(&tmr))
		tmr_start(&tmr, KEEP_MS, timeout, NULL);
}


/**
 * Absorb msg's retransmissions for Timer J: an INVITE over UDP whose 2xx
 * has been sent ends its server transaction at once (RFC 6026's Accepted
 * state kept only to swallow late INVITE retransmissions); a bare entry
 * here swallows them instead (lsip_done_resend returns true, sends nothing)
 *
 * @param msg INVITE request
 *
 * @return true if msg can be matched so (UDP, RFC 3261 branch)
 */
bool lsip_done_absorb(const struct sip_msg *msg)
{
	struct mbuf empty;
	struct sa dst;

	if (!matchable(msg))
		return false;

	mbuf_init(&empty);
	sa_init(&dst, AF_UNSPEC);
	keep(msg, &dst, &empty);
	return true;
}


int __real_sip_treplyf(struct sip_strans **stp, struct mbuf **mbp,
		       struct sip *sip, const struct sip_msg *msg,
		       bool rec_route, uint16_t scode, const char *reason,
		       const char *fmt, ...);


/* libre's own sip_treplyf, with the headers and body already printed */
static int real_treplyf(struct sip_strans **stp, struct mbuf **mbp,
			struct sip *sip, const struct sip_msg *msg,
			bool rec_route, uint16_t scode, const char *reason,
			const struct mbuf *extra)
{
	if (!extra)
		return __real_sip_treplyf(stp, mbp, sip, msg, rec_route, scode,
					  reason, NULL);

	return __real_sip_treplyf(stp, mbp, sip, msg, rec_route, scode,
				  reason, "%b", extra->buf, extra->end);
}


/* the final answer of a transaction that ends at once; see below */
static int reply_done(struct sip *sip, const struct sip_msg *msg,
		      bool rec_route, uint16_t scode, const char *reason,
		      const struct mbuf *extra)
{
	struct sip_strans *st = NULL, *own;
	struct mbuf *mb = NULL;
	struct pl rp;
	struct sa dst;
	int err;

	err = sip_strans_alloc(&st, sip, msg, NULL, NULL);
	if (err)
		return err;
	own = st;

	err = real_treplyf(&st, &mb, sip, msg, rec_route, scode, reason,
			   extra);
	if (err)
		return err;               /* libre freed the transaction */

	/* as libre's reply.c: rport when the top Via asks for it */
	sip_reply_addr(&dst, msg,
		       !msg_param_exists(&msg->via.params, "rport", &rp));
	keep(msg, &dst, mb);
	mem_deref(mb);
	mem_deref(own);

	return 0;
}


/*
 * A 2xx to an INVITE over UDP: libre moves the transaction to Accepted
 * (RFC 6026) for Timer L (64*T1) only to absorb retransmitted INVITEs,
 * holding the parsed INVITE and the 2xx; the 2xx's own retransmissions
 * until the ACK are sipsess's. Here the transaction ends at once and a
 * bare entry (no response bytes) absorbs those INVITEs instead.
 */
static int accept_done(struct sip_strans **stp, struct mbuf **mbp,
		       struct sip *sip, const struct sip_msg *msg,
		       bool rec_route, uint16_t scode, const char *reason,
		       const struct mbuf *extra)
{
	struct sip_strans *own = *stp;
	int err;

	err = real_treplyf(stp, mbp, sip, msg, rec_route, scode, reason,
			   extra);
	if (err)
		return err;               /* libre freed the transaction */

	(void)lsip_done_absorb(msg);
	mem_deref(own);

	return 0;
}


int __real_sip_treply(struct sip_strans **stp, struct sip *sip,
		      const struct sip_msg *msg, uint16_t scode,
		      const char *reason);
int __wrap_sip_treply(struct sip_strans **stp, struct sip *sip,
		      const struct sip_msg *msg, uint16_t scode,
		      const char *reason);
int __wrap_sip_treplyf(struct sip_strans **stp, struct mbuf **mbp,
		       struct sip *sip, const struct sip_msg *msg,
		       bool rec_route, uint16_t scode, const char *reason,
		       const char *fmt, ...);

/*
 * -Wl,--wrap=sip_treply,sip_treplyf: final answers libre or we send
 * without asking for the transaction (stp and mbp NULL: sipsess's 200 to
 * a BYE, its 481s) go out through a transaction as before, which then
 * ends at once; done.c keeps the bytes for retransmissions.
 * sip_strans_reply hands a final transaction to its Timer J (*stp = NULL),
 * so reply_done keeps the pointer aside to end it; on an error libre has
 * freed it. Other calls go on to libre unchanged (sip_treplyf's variable
 * arguments are formatted here first: the same printer, the same bytes).
 */
int __wrap_sip_treply(struct sip_strans **stp, struct sip *sip,
		      const struct sip_msg *msg, uint16_t scode,
		      const char *reason)
{
	if (stp || scode < 200 || !sip || !reason ||
	    !lsip_done_cacheable(msg))
		return __real_sip_treply(stp, sip, msg, scode, reason);

	return reply_done(sip, msg, false, scode, reason, NULL);
}


int __wrap_sip_treplyf(struct sip_strans **stp, struct mbuf **mbp,
		       struct sip *sip, const struct sip_msg *msg,
		       bool rec_route, uint16_t scode, const char *reason,
		       const char *fmt, ...)
{
	struct mbuf *extra = NULL;
	va_list ap;
	int err;

	if (fmt) {
		extra = mbuf_alloc(256);
		if (!extra)
			return ENOMEM;
		va_start(ap, fmt);
		err = mbuf_vprintf(extra, fmt, ap);
		va_end(ap);
		if (err) {
			mem_deref(extra);
			return err;
		}
	}

	if (!stp && !mbp && scode >= 200 && sip && reason &&
	    lsip_done_cacheable(msg))
		err = reply_done(sip, msg, rec_route, scode, reason, extra);
	else if (stp && *stp && scode >= 200 && scode < 300 &&
		 matchable(msg) && !pl_strcmp(&msg->met, "INVITE"))
		err = accept_done(stp, mbp, sip, msg, rec_route, scode, reason,
				  extra);
	else
		err = real_treplyf(stp, mbp, sip, msg, rec_route, scode,
				   reason, extra);

	mem_deref(extra);
	return err;
}


/**
 * Answer a retransmission of a request answered by lsip_done_reply
 *
 * @param sip SIP stack
 * @param msg Incoming request
 *
 * @return true if msg was one (its response has been sent again)
 */
bool lsip_done_resend(struct sip *sip, const struct sip_msg *msg)
{
	struct done *d;
	struct mbuf mb;
	struct key k;

	if (!table || !fifo.head || !matchable(msg))
		return false;

	k.msg = msg;
	k.hash = key_hash(msg);
	d = list_ledata(hash_lookup(table, k.hash, key_cmp, &k));
	if (!d || d->expires <= tmr_jiffies())
		return false;

	++resent;

	/* an INVITE answered 2xx: absorbed (RFC 6026 Accepted state; the
	 * 2xx itself is retransmitted by sipsess until the ACK) */
	if (!d->rl)
		return true;

	mbuf_init(&mb);
	mb.buf = (uint8_t *)d->data + d->bl + d->sl + d->ml;
	mb.size = mb.end = d->rl;
	(void)sip_send(sip, msg->sock, msg->tp, &d->dst, &mb);

	return true;
}


/**
 * Responses kept and retransmissions answered
 *
 * @param resentp Retransmissions answered or absorbed since start (or NULL)
 *
 * @return responses kept now
 */
uint32_t lsip_done_count(uint64_t *resentp)
{
	if (resentp)
		*resentp = resent;

	return list_count(&fifo);
}


/** Drop everything kept (lua_close) */
void lsip_done_flush(void)
{
	tmr_cancel(&tmr);
	list_flush(&fifo);
	table = mem_deref(table);
}


/* core.done_stats() -> responses kept now, retransmissions answered */
static int l_done_stats(lua_State *L)
{
	uint64_t n;

	lua_pushinteger(L, (lua_Integer)lsip_done_count(&n));
	lua_pushinteger(L, (lua_Integer)n);
	return 2;
}


int lsip_open_done(lua_State *L)
{
	lua_pushcfunction(L, l_done_stats);
	lua_setfield(L, -2, "done_stats");
	return 0;
}
