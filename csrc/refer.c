/**
 * @file refer.c  Call transfer (RFC 3515 REFER) as "luasip.transfer"
 *                (a REFER we sent) and "luasip.refer" (one we received)
 *
 * Outgoing: core.refer(call, target, headers) sends REFER in the call's
 * dialog and returns a transfer box. The struct holds refs on the dialog
 * and the endpoint (so the stack outlives it), is pinned and listed
 * (xferl) from the REFER until its subscription ends (a failure response
 * or a NOTIFY with Subscription-State: terminated) or :close(). stack.c
 * hands every in-dialog NOTIFY to lsip_refer_notify() first, which
 * matches it to a listed transfer, answers it and emits "notify".
 *
 * Incoming: call.c's sipsess refer handler calls lsip_refer_incoming(),
 * which holds a server transaction (absorbing retransmissions), emits
 * "refer" on the call with a refer box and, when no call:on("refer")
 * listener claimed it, declines with 603 at once (secure default).
 * The box is not pinned: the listener's task owns it, and :close()
 * (task end, __gc) declines an undecided REFER and ends an accepted one
 * with a final NOTIFY. NOTIFYs go out as independent requests holding
 * their own ref on the struct until they complete.
 */

#include "lsip.h"


#define LSIP_XFER_MT   "luasip.transfer"
#define LSIP_REFER_MT  "luasip.refer"

enum { REFER_EXPIRES = 60 };


struct lsip_xfer {
	struct le le;                /* in xferl while NOTIFYs may come */
	struct lsip_ep *ep;          /* ref: keeps the stack */
	struct sip_dialog *dlg;      /* ref: the call's dialog */
	struct sip_request *req;     /* REFER in flight */
	uint32_t id;                 /* REFER CSeq = event id */
	uint16_t status;             /* REFER final response */
	uint16_t nstatus;            /* last sipfrag status */
	char reason[64];
	char nreason[64];
	uint32_t notifies;
	int err;
	int self;                    /* pin while listed */
	bool terminated;             /* final NOTIFY received */
};


struct lsip_refer {
	const struct sip_msg *msg;   /* the REFER */
	struct lsip_ep *ep;
	struct sip_dialog *dlg;
	struct sip_strans *st;       /* until replied */
	uint16_t status;             /* our reply (0: none yet) */
	uint16_t nstatus;            /* last sipfrag we sent */
	uint32_t notifies;
	bool claimed;                /* a listener task owns it */
	bool terminated;             /* final NOTIFY sent */
};


static struct list xferl;


static void xfer_destructor(void *arg)
{
	struct lsip_xfer *x = arg;

	list_unlink(&x->le);
	mem_deref(x->req);
	mem_deref(x->dlg);
	mem_deref(x->ep);
}


static void refer_destructor(void *arg)
{
	struct lsip_refer *r = arg;

	if (r->st)
		(void)sip_treply(&r->st, lsip_ep_sip(r->ep), r->msg, 603,
				 "Decline");
	mem_deref(r->dlg);
	mem_deref((void *)r->msg);
	mem_deref(r->ep);
}


/* Contact for REFER and NOTIFY (both are target refresh requests) */
static int print_contact(struct mbuf *mb, const struct lsip_ep *ep,
			 enum sip_transp tp, const struct sa *src)
{
	struct sip_contact contact;

	sip_contact_set(&contact, lsip_ep_user(ep), src, tp);

	return mbuf_printf(mb, "%H", sip_contact_print, &contact);
}


static int xfer_send_handler(enum sip_transp tp, const struct sa *src,
			     const struct sa *dst, struct mbuf *mb, void *arg)
{
	const struct lsip_xfer *x = arg;
	(void)dst;

	return print_contact(mb, x->ep, tp, src);
}


static int refer_send_handler(enum sip_transp tp, const struct sa *src,
			      const struct sa *dst, struct mbuf *mb,
			      void *arg)
{
	const struct lsip_refer *r = arg;
	(void)dst;

	return print_contact(mb, r->ep, tp, src);
}


/* stop waiting for NOTIFYs; emit ev (pin dropped) */
static void xfer_end(struct lsip_xfer *x, const char *ev)
{
	lua_State *L = lsip_L;

	list_unlink(&x->le);
	if (!lsip_push_ref(L, x->self))
		return;

	lsip_unpin(L, &x->self);
	lsip_emit(L, ev, 1);
}


static void xfer_emit(struct lsip_xfer *x, const char *ev)
{
	lua_State *L = lsip_L;

	if (lsip_push_ref(L, x->self))
		lsip_emit(L, ev, 1);
}


static void refer_resp_handler(int err, const struct sip_msg *msg,
			       void *arg)
{
	struct lsip_xfer *x = arg;

	if (!err && msg->scode < 200)
		return;

	x->req = NULL;
	if (err) {
		x->err = err;
		re_snprintf(x->reason, sizeof(x->reason), "%m", err);
		xfer_end(x, "response");
		return;
	}

	x->status = msg->scode;
	(void)pl_strcpy(&msg->reason, x->reason, sizeof(x->reason));

	if (msg->scode >= 300)
		xfer_end(x, "response");
	else
		xfer_emit(x, "response");
}


/*
 * core.refer(call, target, headers) -> transfer | nil, err, code
 * Blind transfer: REFER with Refer-To: <target> in the call's dialog.
 */
static int l_refer_new(lua_State *L)
{
	struct lsip_ep *ep = NULL;
	struct sip_dialog *dlg = lsip_call_dialog(L, 1, &ep);
	const char *target = luaL_checkstring(L, 2);
	struct mbuf *hdrs = NULL;
	struct lsip_xfer *x;
	struct uri u;
	struct pl pl;
	int err;

	pl_set_str(&pl, target);
	if (strpbrk(target, "\r\n<> \"") || uri_decode(&u, &pl) ||
	    !pl_isset(&u.host) ||
	    (pl_strcasecmp(&u.scheme, "sip") &&
	     pl_strcasecmp(&u.scheme, "sips")))
		return luaL_error(L, "bad argument #1 to 'transfer' (SIP URI "
				  "expected, got \"%s\")", target);

	if (!dlg)
		return lsip_fail(L, ENOTCONN, "transfer");

	lsip_headers(&hdrs, L, 3, "transfer");

	x = mem_zalloc(sizeof(*x), xfer_destructor);
	if (!x) {
		mem_deref(hdrs);
		return lsip_fail(L, ENOMEM, "transfer");
	}

	x->self = LUA_NOREF;
	x->ep = mem_ref(ep);
	x->dlg = mem_ref(dlg);
	x->id = sip_dialog_lseq(dlg);   /* the CSeq REFER will carry */

	err = sip_drequestf(&x->req, lsip_ep_sip(ep), true, "REFER", dlg, 0,
			    NULL, xfer_send_handler, refer_resp_handler, x,
			    "Refer-To: <%s>\r\n"
			    "%b"
			    "Content-Length: 0\r\n"
			    "\r\n",
			    target,
			    hdrs ? hdrs->buf : NULL, hdrs ? hdrs->end : 0);
	mem_deref(hdrs);
	if (err) {
		mem_deref(x);
		return lsip_fail(L, err, "transfer");
	}

	list_append(&xferl, &x->le, x);
	lsip_newbox(L, x, LSIP_XFER_MT);
	x->self = lsip_pin(L, -1);
	return 1;
}


/* a listed transfer whose dialog and event id match the NOTIFY */
static struct lsip_xfer *xfer_find(const struct lsip_ep *ep,
				   const struct sip_msg *msg)
{
	const struct sip_hdr *hdr;
	struct sipevent_event se;
	struct le *le;

	hdr = sip_msg_hdr(msg, SIP_HDR_EVENT);
	if (!hdr || sipevent_event_decode(&se, &hdr->val) ||
	    pl_strcasecmp(&se.event, "refer"))
		return NULL;

	for (le = list_head(&xferl); le; le = le->next) {
		struct lsip_xfer *x = le->data;

		if (x->ep != ep || !sip_dialog_cmp(x->dlg, msg))
			continue;
		if (pl_isset(&se.id) && pl_u32(&se.id) != x->id)
			continue;

		return x;
	}

	return NULL;
}


/**
 * Take an in-dialog NOTIFY for a transfer we started (runs in re_main)
 *
 * @param ep  Endpoint that received it
 * @param msg NOTIFY request
 *
 * @return true if it was ours (and answered), false otherwise
 */
bool lsip_refer_notify(struct lsip_ep *ep, const struct sip_msg *msg)
{
	struct sip *sip = lsip_ep_sip(ep);
	const struct sip_hdr *hdr;
	struct sipevent_substate ss;
	struct lsip_xfer *x;
	struct pl code, reason;

	if (list_isempty(&xferl))
		return false;

	x = xfer_find(ep, msg);
	if (!x)
		return false;

	if (!sip_dialog_rseq_valid(x->dlg, msg)) {
		(void)sip_reply(sip, msg, 500, "Server Internal Error");
		return true;
	}

	hdr = sip_msg_hdr(msg, SIP_HDR_SUBSCRIPTION_STATE);
	if (!hdr || sipevent_substate_decode(&ss, &hdr->val)) {
		(void)sip_reply(sip, msg, 400, "Bad Subscription-State");
		return true;
	}

	/* message/sipfrag: the status line of the new call */
	if (re_regex((const char *)mbuf_buf(msg->mb), mbuf_get_left(msg->mb),
		     "SIP/2.0 [0-9]+ [^\r\n]*", &code, &reason)) {
		(void)sip_reply(sip, msg, 400, "Bad sipfrag");
		return true;
	}

	(void)sip_reply(sip, msg, 200, "OK");

	++x->notifies;
	x->nstatus = pl_u32(&code);
	(void)pl_strcpy(&reason, x->nreason, sizeof(x->nreason));

	if (ss.state == SIPEVENT_TERMINATED) {
		x->terminated = true;
		xfer_end(x, "notify");
	}
	else {
		xfer_emit(x, "notify");
	}

	return true;
}


static struct lsip_xfer *xfer_check(lua_State *L)
{
	struct lsip_xfer **box = lsip_checkbox(L, 1, LSIP_XFER_MT);

	return *box;
}


/* :close(), __gc, __close: stop listening for NOTIFYs and free */
static int l_xfer_close(lua_State *L)
{
	struct lsip_xfer **box = lsip_checkbox(L, 1, LSIP_XFER_MT);

	if (*box) {
		list_unlink(&(*box)->le);
		lsip_unpin(L, &(*box)->self);
		*box = mem_deref(*box);
	}

	return 0;
}


/* state: "pending", "accepted", "failed", "done" */
static const char *xfer_state(const struct lsip_xfer *x)
{
	if (x->terminated)
		return "done";
	if (x->err || x->status >= 300)
		return "failed";
	if (x->status)
		return "accepted";

	return "pending";
}


static int l_xfer_getfield(lua_State *L)
{
	struct lsip_xfer *x = xfer_check(L);
	const char *key = luaL_checkstring(L, 2);

	if (!x) {
		if (!strcmp(key, "state")) {
			lua_pushliteral(L, "closed");
			return 1;
		}
		return 0;
	}

	if (!strcmp(key, "state"))
		lua_pushstring(L, xfer_state(x));
	else if (!strcmp(key, "status"))
		lua_pushinteger(L, x->status);
	else if (!strcmp(key, "reason"))
		lua_pushstring(L, x->reason);
	else if (!strcmp(key, "errno"))
		lua_pushinteger(L, x->err);
	else if (!strcmp(key, "notify_status"))
		lua_pushinteger(L, x->nstatus);
	else if (!strcmp(key, "notify_reason"))
		lua_pushstring(L, x->nreason);
	else if (!strcmp(key, "notifies"))
		lua_pushinteger(L, x->notifies);
	else
		return 0;

	return 1;
}


static void notify_resp_handler(int err, const struct sip_msg *msg,
				void *arg)
{
	struct lsip_refer *r = arg;

	if (!err && msg->scode < 200)
		return;

	mem_deref(r);
}


/* NOTIFY with sipfrag "SIP/2.0 scode reason" (final when scode >= 200) */
static int refer_notify(struct lsip_refer *r, uint16_t scode,
			const char *reason)
{
	char frag[128];
	char state[64];
	int err;

	if (r->terminated)
		return EALREADY;

	re_snprintf(frag, sizeof(frag), "SIP/2.0 %u %s\r\n", scode, reason);
	if (scode >= 200)
		re_snprintf(state, sizeof(state),
			    "terminated;reason=noresource");
	else
		re_snprintf(state, sizeof(state), "active;expires=%u",
			    REFER_EXPIRES);

	err = sip_drequestf(NULL, lsip_ep_sip(r->ep), true, "NOTIFY", r->dlg,
			    0, NULL, refer_send_handler, notify_resp_handler,
			    mem_ref(r),
			    "Event: refer;id=%u\r\n"
			    "Subscription-State: %s\r\n"
			    "Content-Type: message/sipfrag;version=2.0\r\n"
			    "Content-Length: %zu\r\n"
			    "\r\n"
			    "%s",
			    r->msg->cseq.num, state, strlen(frag), frag);
	if (err) {
		mem_deref(r);
		return err;
	}

	++r->notifies;
	r->nstatus = scode;
	r->terminated = scode >= 200;
	return 0;
}


/**
 * Deliver an in-dialog REFER to the call's "refer" listeners
 *
 * Runs inside re_main (sipsess's refer handler, after its CSeq check).
 * A REFER without exactly one Refer-To gets 400; one no listener
 * claims gets 603 Decline.
 *
 * @param ep      Endpoint of the call
 * @param dlg     The call's dialog
 * @param msg     REFER request
 * @param callref Registry ref of the call box (LUA_NOREF: gone)
 */
void lsip_refer_incoming(struct lsip_ep *ep, struct sip_dialog *dlg,
			 const struct sip_msg *msg, int callref)
{
	struct sip *sip = lsip_ep_sip(ep);
	lua_State *L = lsip_L;
	struct lsip_refer *r;
	uint32_t n;

	n = sip_msg_hdr_count(msg, SIP_HDR_REFER_TO);
	if (n != 1) {
		(void)sip_reply(sip, msg, 400, n ? "Multiple Refer-To" :
				"Missing Refer-To");
		return;
	}

	r = mem_zalloc(sizeof(*r), refer_destructor);
	if (!r || sip_strans_alloc(&r->st, sip, msg, NULL, NULL)) {
		(void)sip_reply(sip, msg, 500, "Server Internal Error");
		mem_deref(r);
		return;
	}

	r->msg = mem_ref((void *)msg);
	r->ep = mem_ref(ep);
	r->dlg = mem_ref(dlg);

	mem_ref(r);                              /* survive the emit */
	if (lsip_push_ref(L, callref)) {
		lsip_newbox(L, mem_ref(r), LSIP_REFER_MT);  /* call, box */
		lsip_emit(L, "refer", 2);
	}

	if (!r->claimed && r->st) {
		(void)sip_treply(&r->st, sip, msg, 603, "Decline");
		r->st = NULL;
		r->status = 603;
	}

	mem_deref(r);
	mem_deref(r);  /* the box (if any) holds the last ref */
}


static struct lsip_refer *refer_check(lua_State *L)
{
	struct lsip_refer **box = lsip_checkbox(L, 1, LSIP_REFER_MT);

	return *box;
}


static int refer_open(lua_State *L, struct lsip_refer *r, const char *fn)
{
	if (!r) {
		lua_pushnil(L);
		lua_pushfstring(L, "%s: refer is closed", fn);
		lua_pushinteger(L, ENOTCONN);
		return 3;
	}

	return 0;
}


/* refer:_claim(): a listener task owns this REFER (no 603 at once) */
static int l_refer_claim(lua_State *L)
{
	struct lsip_refer *r = refer_check(L);

	if (r)
		r->claimed = true;

	return 0;
}


/* refer:accept() -> true | nil, err, code: 202, then NOTIFY 100 Trying */
static int l_refer_accept(lua_State *L)
{
	struct lsip_refer *r = refer_check(L);
	int n, err;

	if ((n = refer_open(L, r, "accept")))
		return n;
	if (!r->st)
		return lsip_fail(L, EALREADY, "accept");

	err = sip_treply(&r->st, lsip_ep_sip(r->ep), r->msg, 202,
			 "Accepted");
	r->st = NULL;
	r->status = 202;
	if (!err)
		err = refer_notify(r, 100, "Trying");
	if (err)
		return lsip_fail(L, err, "accept");

	lua_pushboolean(L, 1);
	return 1;
}


/* refer:reject(code?, reason?) -> true | nil, err, code (default 603) */
static int l_refer_reject(lua_State *L)
{
	struct lsip_refer *r = refer_check(L);
	lua_Integer code = luaL_optinteger(L, 2, 603);
	const char *reason = luaL_optstring(L, 3, "Decline");
	int n, err;

	if (code < 300 || code > 699)
		return luaL_error(L, "bad argument #1 to 'reject' (status "
				  "300-699 expected, got %d)", (int)code);
	if (strpbrk(reason, "\r\n"))
		return luaL_error(L, "bad argument #2 to 'reject' (reason "
				  "has CR/LF)");
	if ((n = refer_open(L, r, "reject")))
		return n;
	if (!r->st)
		return lsip_fail(L, EALREADY, "reject");

	err = sip_treply(&r->st, lsip_ep_sip(r->ep), r->msg,
			 (uint16_t)code, reason);
	r->st = NULL;
	r->status = (uint16_t)code;
	if (err)
		return lsip_fail(L, err, "reject");

	lua_pushboolean(L, 1);
	return 1;
}


/*
 * refer:notify(status, reason) -> true | nil, err, code
 * Progress of the call to the target; status >= 200 ends the
 * subscription.
 */
static int l_refer_notify(lua_State *L)
{
	struct lsip_refer *r = refer_check(L);
	lua_Integer code = luaL_checkinteger(L, 2);
	const char *reason = luaL_optstring(L, 3, "");
	int n, err;

	if (code < 100 || code > 699)
		return luaL_error(L, "bad argument #1 to 'notify' (status "
				  "100-699 expected, got %d)", (int)code);
	if (strpbrk(reason, "\r\n"))
		return luaL_error(L, "bad argument #2 to 'notify' (reason "
				  "has CR/LF)");
	if ((n = refer_open(L, r, "notify")))
		return n;
	if (r->status != 202)
		return lsip_fail(L, EPROTO, "notify");

	err = refer_notify(r, (uint16_t)code, reason);
	if (err)
		return lsip_fail(L, err, "notify");

	lua_pushboolean(L, 1);
	return 1;
}


/*
 * :close(), __gc, __close: an undecided REFER gets 603, an accepted one
 * without a final NOTIFY gets "SIP/2.0 503 Service Unavailable"
 */
static int l_refer_close(lua_State *L)
{
	struct lsip_refer **box = lsip_checkbox(L, 1, LSIP_REFER_MT);
	struct lsip_refer *r = *box;

	if (!r)
		return 0;

	if (r->status == 202 && !r->terminated)
		(void)refer_notify(r, 503, "Service Unavailable");

	*box = mem_deref(r);           /* destructor: 603 if undecided */
	return 0;
}


static int l_refer_getfield(lua_State *L)
{
	struct lsip_refer *r = refer_check(L);
	const char *key = luaL_checkstring(L, 2);
	const struct sip_hdr *hdr;
	struct sip_addr addr;

	if (!r)
		return 0;

	if (!strcmp(key, "target") || !strcmp(key, "referred_by")) {
		hdr = sip_msg_hdr(r->msg, key[0] == 't' ? SIP_HDR_REFER_TO :
				  SIP_HDR_REFERRED_BY);
		if (!hdr)
			return 0;
		if (sip_addr_decode(&addr, &hdr->val))
			lsip_pushpl(L, &hdr->val);
		else
			lsip_pushpl(L, &addr.auri);
		return 1;
	}
	if (!strcmp(key, "status")) {
		lua_pushinteger(L, r->status);
		return 1;
	}
	if (!strcmp(key, "notify_status")) {
		lua_pushinteger(L, r->nstatus);
		return 1;
	}
	if (!strcmp(key, "state")) {
		lua_pushstring(L, r->terminated ? "done" :
			       r->status == 202 ? "accepted" :
			       r->status ? "rejected" : "pending");
		return 1;
	}

	return lsip_msg_index(L, r->msg, key);
}


/**
 * Register core.refer and the luasip.transfer / luasip.refer types
 *
 * @param L Lua state, module table on top
 *
 * @return 0
 */
int lsip_open_refer(lua_State *L)
{
	static const luaL_Reg xmethods[] = {
		{"close", l_xfer_close},
		{NULL, NULL}
	};
	static const luaL_Reg xmeta[] = {
		{"__gc", l_xfer_close},
		{"__close", l_xfer_close},
		{"__getfield", l_xfer_getfield},
		{NULL, NULL}
	};
	static const luaL_Reg rmethods[] = {
		{"_claim", l_refer_claim},
		{"accept", l_refer_accept},
		{"reject", l_refer_reject},
		{"notify", l_refer_notify},
		{"close", l_refer_close},
		{NULL, NULL}
	};
	static const luaL_Reg rmeta[] = {
		{"__gc", l_refer_close},
		{"__close", l_refer_close},
		{"__getfield", l_refer_getfield},
		{NULL, NULL}
	};

	lsip_setfuncs(L, LSIP_XFER_MT, xmethods, xmeta);
	lsip_setfuncs(L, LSIP_REFER_MT, rmethods, rmeta);
	lua_pushcfunction(L, l_refer_new);
	lua_setfield(L, -2, "refer");
	return 0;
}
