/**
 * @file call.c  INVITE sessions (sipsess) as "luasip.call"
 *
 * A call box points at a struct lsip_call that owns the sipsess (and,
 * for an incoming call not yet accepted, a holding server transaction
 * that absorbs retransmissions and catches CANCEL). The call is pinned
 * from its start until it is closed (terminal handler or local hangup).
 * Handlers record state and emit events; they never deref the session
 * that calls them. Dropping the session (hangup, close, __gc) lets
 * libre's sipsess destructor finish the job: 486 for an unanswered
 * INVITE, CANCEL for a pending outgoing one, BYE for an established one.
 */

#include "lsip.h"


enum call_state {
	CALL_INCOMING = 0,  /* INVITE received, nothing sent but 100 */
	CALL_RINGING,       /* we sent 18x */
	CALL_CALLING,       /* INVITE sent */
	CALL_EARLY,         /* 18x received */
	CALL_ANSWERED,      /* 200 sent, ACK not yet received */
	CALL_ESTABLISHED,
	CALL_CLOSED,
};


static const char *state_names[] = {
	"incoming", "ringing", "calling", "early", "answered", "established",
	"closed",
};


struct lsip_call {
	const struct sip_msg *msg;   /* first: INVITE in, final resp out */
	struct lsip_ep *ep;
	struct sipsess *sess;
	struct sip_strans *st;       /* holding transaction (incoming) */
	struct mbuf *ldesc;          /* our last SDP */
	struct mbuf *rdesc;          /* their last SDP */
	char *cause;                 /* why it ended */
	char reason[64];             /* final status reason */
	uint64_t t_start, t_answer, t_end;
	enum call_state state;
	uint16_t status;             /* last final/provisional status */
	int err;                     /* errno when cause is "error" */
	int self;                    /* pin until closed */
	bool outgoing;

	/* mid-call offer/answer (see "re-INVITE" below) */
	struct lsip_media *media;    /* call's RTP (ref), NULL: SDP by hand */
	struct sip_request *mreq;    /* our re-INVITE in progress */
	struct sip_dialog *mdlg;     /* its dialog (ref): ACK after hangup */
	struct le mle;               /* in mcalls: media or re-INVITE sent */
	uint32_t ack_cseq;           /* CSeq of our last ACKed re-INVITE */
	int mtoken;                  /* Lua object told the outcome ... */
	bool mwait;                  /* ... while this is set */
	struct tmr evtmr;            /* events from sipsess handlers */
	uint8_t evq[8];              /* queued for evtmr */
	uint8_t nev;
	enum sdp_dir mprev;          /* our direction before the re-INVITE */
	enum {MOD_MEDIA, MOD_BODY, MOD_LATE} mmode;  /* whose offer */
	bool offered;                /* our offer is in a 200: answer in ACK */
	bool held;                   /* as last told to Lua */
};


static const char allow_hdr[] =
	"Allow: INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, MESSAGE, NOTIFY, "
	"REFER\r\n";


static void call_destructor(void *arg)
{
	struct lsip_call *call = arg;

	if (call->st) {
		(void)sip_treply(&call->st, lsip_ep_sip(call->ep), call->msg,
				 480, "Temporarily Unavailable");
		call->st = mem_deref(call->st);
	}

	tmr_cancel(&call->evtmr);
	list_unlink(&call->mle);
	mem_deref(call->mreq);       /* resph is not called after this */
	mem_deref(call->mdlg);
	mem_deref(call->sess);
	mem_deref(call->media);
	mem_deref(call->ldesc);
	mem_deref(call->rdesc);
	mem_deref(call->cause);
	mem_deref((void *)call->msg);
	mem_deref(call->ep);
}


static void modify_done(struct lsip_call *call, uint16_t scode,
			const char *reason, int err);


/* enter CLOSED; returns false if it already was */
static bool call_set_closed(struct lsip_call *call, const char *cause)
{
	if (call->state == CALL_CLOSED)
		return false;

	call->state = CALL_CLOSED;
	call->t_end = tmr_jiffies();
	modify_done(call, 0, "hangup", ECONNRESET);   /* hold() waiting */
	if (!call->cause)
		(void)str_dup(&call->cause, cause);

	return true;
}


/* emit ev on the call; nargs extra values already on the stack */
static void call_emit(struct lsip_call *call, const char *ev, bool unpin)
{
	lua_State *L = lsip_L;

	if (!lsip_push_ref(L, call->self))
		return;

	if (unpin)
		lsip_unpin(L, &call->self);

	lsip_emit(L, ev, 1);
}


static void set_rdesc(struct lsip_call *call, const struct sip_msg *msg)
{
	if (!msg || !mbuf_get_left(msg->mb))
		return;

	mem_deref(call->rdesc);
	call->rdesc = mbuf_alloc(mbuf_get_left(msg->mb));
	if (!call->rdesc)
		return;

	(void)mbuf_write_mem(call->rdesc, mbuf_buf(msg->mb),
			     mbuf_get_left(msg->mb));
	call->rdesc->pos = 0;
}


/*
 * re-INVITE
 *
 * With media attached (call:_media), the far end's offers are answered
 * by media.c against the running RTP session: a re-INVITE with SDP gets
 * our answer (488 when no codec is common, and nothing changes), one
 * without SDP gets our offer in the 200 and the answer comes in the ACK.
 * An incoming INVITE without SDP works the same way (call:_answer with
 * our offer). Our own re-INVITE (call:_modify) is sent on the session's
 * dialog with a handler of ours, since sipsess reports no failed one.
 * Handlers inside sipsess only queue "update", "hold" and "resume"; a
 * zero timer emits them after libre has sent its reply.
 */


enum call_ev {
	EV_UPDATE = 1,
	EV_HOLD,
	EV_RESUME,
};


static const char *ev_names[] = {"", "update", "hold", "resume"};


static struct list mcalls;   /* calls with media or a re-INVITE sent */


/**
 * Refuse a re-INVITE before sipsess sees it: 491 when it crosses one of
 * ours (RFC 3261 14.2), 488 Not Acceptable Here when its offer has no
 * codec in common with the call's media (libre would answer 488 with an
 * errno text as reason)
 *
 * Runs inside re_main from the endpoint's request listener.
 *
 * @param ep  Endpoint
 * @param msg In-dialog INVITE
 *
 * @return true if it was answered here
 */
bool lsip_call_reinvite(struct lsip_ep *ep, const struct sip_msg *msg)
{
	struct sip *sip = lsip_ep_sip(ep);
	struct le *le;

	for (le = list_head(&mcalls); le; le = le->next) {
		struct lsip_call *call = le->data;

		if (call->ep != ep || !call->sess ||
		    !sip_dialog_cmp(sipsess_dialog(call->sess), msg))
			continue;

		if (call->mreq) {
			(void)sip_treply(NULL, sip, msg, 491,
					 "Request Pending");
			return true;
		}
		if (call->media && mbuf_get_left(msg->mb) &&
		    lsip_media_probe(call->media, msg->mb)) {
			(void)sip_treply(NULL, sip, msg, 488,
					 "Not Acceptable Here");
			return true;
		}
		return false;
	}

	return false;
}


/* the far end's direction as it stated it (libre's rdir is ours) */
static enum sdp_dir remote_dir(const struct lsip_call *call)
{
	enum sdp_dir d = lsip_media_rdir(call->media);

	return (enum sdp_dir)(((d & SDP_RECVONLY) ? SDP_SENDONLY : 0) |
			      ((d & SDP_SENDONLY) ? SDP_RECVONLY : 0));
}


/* held: the far end does not want our audio (sendonly/inactive/0.0.0.0) */
static bool remote_holds(const struct lsip_call *call)
{
	return call->media && !(lsip_media_rdir(call->media) & SDP_SENDONLY);
}


static void ev_handler(void *arg)
{
	struct lsip_call *call = arg;
	lua_State *L = lsip_L;
	uint8_t evq[8];
	uint8_t i, n = call->nev;

	memcpy(evq, call->evq, n);
	call->nev = 0;
	mem_ref(call);                       /* Lua may close the call */
	for (i = 0; i < n && call->state != CALL_CLOSED; i++) {
		if (!lsip_push_ref(L, call->self))
			break;
		lsip_emit(L, ev_names[evq[i]], 1);
	}
	mem_deref(call);
}


static void ev_queue(struct lsip_call *call, enum call_ev ev)
{
	if (call->nev < sizeof(call->evq))
		call->evq[call->nev++] = (uint8_t)ev;
	tmr_start(&call->evtmr, 0, ev_handler, call);
}


/* a remote offer or answer was applied: tell Lua what changed */
static void media_changed(struct lsip_call *call, bool update)
{
	bool held = remote_holds(call);

	if (update)
		ev_queue(call, EV_UPDATE);
	if (held != call->held)
		ev_queue(call, held ? EV_HOLD : EV_RESUME);
	call->held = held;
}


static void set_ldesc(struct lsip_call *call, struct mbuf *desc)
{
	mem_deref(call->ldesc);
	call->ldesc = mem_ref(desc);
}


/* re-INVITE (or a 200 to our INVITE without SDP) with the far end's offer */
static int offer_handler(struct mbuf **descp, const struct sip_msg *msg,
			 void *arg)
{
	struct lsip_call *call = arg;
	struct mbuf *desc = NULL;
	int err;

	if (!call->media) {          /* SDP by hand: our last one */
		set_rdesc(call, msg);
		*descp = mem_ref(call->ldesc);
		return 0;
	}

	if (call->mreq)
		return EBUSY;        /* our own re-INVITE is pending */

	if (!mbuf_get_left(msg->mb)) {
		/* late offer: ours goes in the 200, theirs in the ACK */
		err = lsip_media_offer_mb(call->media, &desc);
		if (err)
			return err;
		call->offered = true;
	}
	else {
		err = lsip_media_update(call->media, msg->mb, &desc);
		/* lsip_call_reinvite() checked the codecs already */
		if (err)
			return err;  /* libre answers 488 */
		set_rdesc(call, msg);
		media_changed(call, msg->req);
	}

	set_ldesc(call, desc);
	*descp = desc;
	return 0;
}


/* answer to our offer: 200 to our INVITE, or the ACK after a late offer */
static int answer_handler(const struct sip_msg *msg, void *arg)
{
	struct lsip_call *call = arg;
	int err = 0;

	set_rdesc(call, msg);
	if (!call->offered || !call->media)
		return 0;

	call->offered = false;
	if (mbuf_get_left(msg->mb))
		err = lsip_media_set_answer_mb(call->media, msg->mb);
	else
		err = EPROTO;        /* ACK without the answer we asked for */

	if (!err)
		media_changed(call, call->state == CALL_ESTABLISHED);

	return err;                  /* initial ACK: libre ends the call */
}


static void progress_handler(const struct sip_msg *msg, void *arg)
{
	struct lsip_call *call = arg;

	call->status = msg->scode;
	(void)pl_strcpy(&msg->reason, call->reason, sizeof(call->reason));
	if (msg->scode > 100 && call->state == CALL_CALLING)
		call->state = CALL_EARLY;
	set_rdesc(call, msg);
	call_emit(call, "progress", false);
}


static void estab_handler(const struct sip_msg *msg, void *arg)
{
	struct lsip_call *call = arg;

	if (call->outgoing) {
		mem_deref((void *)call->msg);
		call->msg = mem_ref((void *)msg);
		call->status = msg->scode;
		(void)pl_strcpy(&msg->reason, call->reason,
				sizeof(call->reason));
		call->t_answer = tmr_jiffies();
	}

	call->state = CALL_ESTABLISHED;
	call_emit(call, "established", false);
}


static void info_handler(struct sip *sip, const struct sip_msg *msg,
			 void *arg)
{
	struct lsip_call *call = arg;
	lua_State *L = lsip_L;

	(void)sip_treply(NULL, sip, msg, 200, "OK");

	if (!lsip_push_ref(L, call->self))
		return;

	/* the whole media type, as message.c's content_type */
	lsip_pushpl(L, &msg->ctyp.type);
	if (pl_isset(&msg->ctyp.subtype)) {
		lua_pushliteral(L, "/");
		lsip_pushpl(L, &msg->ctyp.subtype);
		lua_concat(L, 3);
	}
	lua_pushlstring(L, (const char *)mbuf_buf(msg->mb),
			mbuf_get_left(msg->mb));
	lsip_emit(L, "info", 3);
}


/* in-dialog REFER (sipsess checked its CSeq): refer.c decides */
static void refer_handler(struct sip *sip, const struct sip_msg *msg,
			  void *arg)
{
	struct lsip_call *call = arg;
	(void)sip;

	lsip_refer_incoming(call->ep, sipsess_dialog(call->sess), msg,
			    call->self);
}


static void close_handler(int err, const struct sip_msg *msg, void *arg)
{
	struct lsip_call *call = arg;
	const char *cause;

	if (msg && msg->scode >= 300) {
		call->status = msg->scode;
		(void)pl_strcpy(&msg->reason, call->reason,
				sizeof(call->reason));
		mem_deref((void *)call->msg);
		call->msg = mem_ref((void *)msg);
		cause = "rejected";
	}
	else if (err == ECONNRESET) {
		cause = call->state == CALL_ESTABLISHED ||
			call->state == CALL_ANSWERED ? "hangup" : "cancelled";
	}
	else if (err == ETIMEDOUT) {
		cause = "timeout";
	}
	else if (err) {
		cause = "error";
		call->err = err;
		re_snprintf(call->reason, sizeof(call->reason), "%m", err);
	}
	else {
		cause = "hangup";
	}

	if (call_set_closed(call, cause))
		call_emit(call, "closed", true);
}


/* CANCEL before the script accepted: the holding transaction ends */
static void hold_cancel_handler(void *arg)
{
	struct lsip_call *call = arg;

	(void)sip_treply(&call->st, lsip_ep_sip(call->ep), call->msg,
			 487, "Request Terminated");
	call->st = NULL;
	call->status = 487;
	if (call_set_closed(call, "cancelled"))
		call_emit(call, "closed", true);
}


/**
 * Deliver a new incoming INVITE to Lua as ep event "invite"
 *
 * Runs inside re_main. The handler task starts at once; if it has not
 * answered, rung or rejected by the time it first waits, a holding
 * transaction sends 100 Trying and catches CANCEL and retransmissions.
 *
 * @param ep  Endpoint
 * @param msg INVITE
 */
void lsip_call_incoming(struct lsip_ep *ep, const struct sip_msg *msg)
{
	lua_State *L = lsip_L;
	struct lsip_call *call;
	struct sip *sip = lsip_ep_sip(ep);

	call = mem_zalloc(sizeof(*call), call_destructor);
	if (!call || !lsip_push_ref(L, lsip_ep_ref(ep))) {
		(void)sip_treply(NULL, sip, msg, 503, "Service Unavailable");
		mem_deref(call);
		return;
	}

	call->msg = mem_ref((void *)msg);
	call->ep = mem_ref(ep);
	call->state = CALL_INCOMING;
	call->t_start = tmr_jiffies();
	set_rdesc(call, msg);

	lsip_newbox(L, call, LSIP_CALL_MT);       /* ep, call */
	call->self = lsip_pin(L, -1);
	mem_ref(call);                            /* survive the emit */
	lsip_emit(L, "invite", 2);

	if (call->state == CALL_INCOMING && !call->sess) {
		if (!sip_strans_alloc(&call->st, sip, msg,
				      hold_cancel_handler, call))
			(void)sip_treply(&call->st, sip, msg, 100, "Trying");
	}

	mem_deref(call);
}


static struct lsip_call *call_check(lua_State *L)
{
	struct lsip_call **box = lsip_checkbox(L, 1, LSIP_CALL_MT);

	return *box;
}


/* accept the held INVITE with a provisional or 2xx status */
static int call_accept(struct lsip_call *call, uint16_t scode,
		       const char *reason, struct mbuf *desc,
		       struct mbuf *hdrs)
{
	struct sipsess_sock *sock = lsip_ep_sock(call->ep);
	int err;

	if (!sock)
		return ENOTCONN;

	/* hand over from our holding transaction to sipsess's own */
	call->st = mem_deref(call->st);

	err = sipsess_accept(&call->sess, sock, call->msg, scode, reason,
			     lsip_ep_user(call->ep), "application/sdp", desc,
			     NULL, NULL, false, offer_handler, answer_handler,
			     estab_handler, info_handler, refer_handler,
			     close_handler, call, "%s%b", allow_hdr,
			     hdrs ? hdrs->buf : NULL, hdrs ? hdrs->end : 0);

	return err;
}


static int check_open(lua_State *L, struct lsip_call *call, const char *fn)
{
	if (!call || call->state == CALL_CLOSED) {
		lua_pushnil(L);
		lua_pushfstring(L, "%s: call is closed", fn);
		lua_pushinteger(L, ENOTCONN);
		return 3;
	}

	return 0;
}


/*
 * call:_provisional(code, reason, headers, body) -> true | nil, err, code
 * 180/183 for an incoming call
 */
static int l_call_provisional(lua_State *L)
{
	struct lsip_call *call = call_check(L);
	lua_Integer code = luaL_checkinteger(L, 2);
	const char *reason = luaL_checkstring(L, 3);
	struct mbuf *hdrs = NULL, *body = NULL;
	int n, err;

	if (code < 101 || code > 199)
		return luaL_error(L, "bad argument #1 to 'ring' (status "
				  "101-199 expected, got %d)", (int)code);

	if ((n = check_open(L, call, "ring")))
		return n;
	if (call->outgoing || call->state > CALL_RINGING)
		return lsip_fail(L, EALREADY, "ring");

	lsip_headers(&hdrs, L, 4, "ring");
	lsip_body(&body, L, 5, "ring");

	if (!call->sess) {
		err = call_accept(call, (uint16_t)code, reason, body, hdrs);
	}
	else {
		err = sipsess_progress(call->sess, (uint16_t)code, reason,
				       body, "%b",
				       hdrs ? hdrs->buf : NULL,
				       hdrs ? hdrs->end : 0);
	}

	if (body) {
		mem_deref(call->ldesc);
		call->ldesc = body;
	}
	mem_deref(hdrs);

	if (err)
		return lsip_fail(L, err, "ring");

	call->state = CALL_RINGING;
	call->status = (uint16_t)code;
	lua_pushboolean(L, 1);
	return 1;
}


/* call:_answer(headers, body) -> true | nil, err, code (sends 200) */
static int l_call_answer(lua_State *L)
{
	struct lsip_call *call = call_check(L);
	struct mbuf *hdrs = NULL, *body = NULL;
	int n, err;

	if ((n = check_open(L, call, "answer")))
		return n;
	if (call->outgoing || call->state > CALL_RINGING)
		return lsip_fail(L, EALREADY, "answer");

	lsip_headers(&hdrs, L, 2, "answer");
	lsip_body(&body, L, 3, "answer");

	/* INVITE without SDP: our offer goes in the 200 (answer in ACK) */
	call->offered = body && !call->rdesc;

	if (!call->sess)
		err = call_accept(call, 200, "OK", body, hdrs);
	else
		err = sipsess_answer(call->sess, 200, "OK", body, "%s%b",
				     allow_hdr, hdrs ? hdrs->buf : NULL,
				     hdrs ? hdrs->end : 0);

	if (body) {
		mem_deref(call->ldesc);
		call->ldesc = body;
	}
	mem_deref(hdrs);

	if (err)
		return lsip_fail(L, err, "answer");

	call->state = CALL_ANSWERED;
	call->status = 200;
	call->t_answer = tmr_jiffies();
	lua_pushboolean(L, 1);
	return 1;
}


/* call:reject(code, reason?, headers?) -> true | nil, err, code */
static int l_call_reject(lua_State *L)
{
	struct lsip_call *call = call_check(L);
	lua_Integer code = luaL_optinteger(L, 2, 486);
	const char *reason = luaL_optstring(L, 3, NULL);
	struct mbuf *hdrs = NULL;
	struct sip *sip;
	int n, err;

	if (code < 300 || code > 699)
		return luaL_error(L, "bad argument #1 to 'reject' (status "
				  "300-699 expected, got %d)", (int)code);
	if (reason && strpbrk(reason, "\r\n"))
		return luaL_error(L, "bad argument #2 to 'reject' (reason "
				  "has CR/LF)");

	if ((n = check_open(L, call, "reject")))
		return n;
	if (call->outgoing || call->state > CALL_RINGING)
		return lsip_fail(L, EALREADY, "reject");

	lsip_headers(&hdrs, L, 4, "reject");

	if (!reason) {
		lua_getfield(L, LUA_REGISTRYINDEX, "luasip.reasons");
		lua_geti(L, -1, code);
		reason = lua_tostring(L, -1);
		if (!reason)
			reason = "Rejected";
	}
	sip = lsip_ep_sip(call->ep);

	if (call->sess)
		err = sipsess_reject(call->sess, (uint16_t)code, reason,
				     hdrs ? "%b" : NULL,
				     hdrs ? hdrs->buf : NULL,
				     hdrs ? hdrs->end : 0);
	else
		err = sip_treplyf(&call->st, NULL, sip, call->msg, false,
				  (uint16_t)code, reason,
				  "%b%s"
				  "Content-Length: 0\r\n"
				  "\r\n",
				  hdrs ? hdrs->buf : NULL,
				  hdrs ? hdrs->end : 0,
				  code == 405 ? allow_hdr : "");
	mem_deref(hdrs);
	call->st = NULL;

	call->status = (uint16_t)code;
	(void)str_ncpy(call->reason, reason, sizeof(call->reason));
	call_set_closed(call, "rejected");
	lsip_unpin(L, &call->self);

	if (err)
		return lsip_fail(L, err, "reject");

	lua_pushboolean(L, 1);
	return 1;
}


/*
 * call:hangup() -> true
 * BYE when established, CANCEL when our INVITE is pending, 480 for an
 * unanswered incoming call. Safe on a closed call.
 */
static int l_call_hangup(lua_State *L)
{
	struct lsip_call *call = call_check(L);
	const char *cause = "local";

	if (!call || call->state == CALL_CLOSED) {
		lua_pushboolean(L, 1);
		return 1;
	}

	if (!call->outgoing && call->state <= CALL_RINGING) {
		struct sip *sip = lsip_ep_sip(call->ep);

		if (call->sess)
			(void)sipsess_reject(call->sess, 480,
					     "Temporarily Unavailable", NULL);
		else
			(void)sip_treply(&call->st, sip, call->msg, 480,
					 "Temporarily Unavailable");
		call->st = NULL;
		call->status = 480;
	}
	else if (call->outgoing && call->state < CALL_ESTABLISHED) {
		cause = "cancelled";
	}

	call->sess = mem_deref(call->sess);  /* BYE or CANCEL, lingering */
	call_set_closed(call, cause);
	lsip_unpin(L, &call->self);
	lua_pushboolean(L, 1);
	return 1;
}


/* :close(), __gc, __close: hang up if needed, then free */
static int l_call_close(lua_State *L)
{
	struct lsip_call **box = lsip_checkbox(L, 1, LSIP_CALL_MT);

	if (*box) {
		l_call_hangup(L);
		lsip_unpin(L, &(*box)->self);
		*box = mem_deref(*box);
	}

	return 0;
}


/* call:info(ctype, body) -> true | nil, err, code (fire and forget) */
static int l_call_info(lua_State *L)
{
	struct lsip_call *call = call_check(L);
	const char *ctype = luaL_checkstring(L, 2);
	struct mbuf *body = NULL;
	int n, err;

	if ((n = check_open(L, call, "info")))
		return n;
	if (!call->sess || call->state < CALL_ANSWERED)
		return lsip_fail(L, ENOTCONN, "info");

	lsip_body(&body, L, 3, "info");
	err = sipsess_info(call->sess, ctype, body, NULL, NULL);
	mem_deref(body);
	if (err)
		return lsip_fail(L, err, "info");

	lua_pushboolean(L, 1);
	return 1;
}


/*
 * core.call(ep, uri, from, display, headers, body, ctype, auth)
 *   -> call | nil, err, code
 * auth: credentials for 401/407 (see lsip_creds_alloc in auth.c)
 */
static int l_call_new(lua_State *L)
{
	struct lsip_ep *ep = lsip_ep_check(L, 1);
	const char *uri = luaL_checkstring(L, 2);
	const char *from = luaL_optstring(L, 3, NULL);
	const char *display = luaL_optstring(L, 4, NULL);
	const char *ctype = luaL_optstring(L, 7, "application/sdp");
	struct mbuf *hdrs = NULL, *body = NULL;
	struct lsip_creds *creds = NULL;
	struct lsip_call *call = NULL;
	char *dfrom = NULL;
	struct uri u;
	struct pl pl;
	int err;

	/* every string below is printed into the INVITE: no CR/LF/<> */
	pl_set_str(&pl, uri);
	if (strpbrk(uri, "\r\n<> ") ||
	    uri_decode(&u, &pl) || !pl_isset(&u.host) ||
	    (pl_strcasecmp(&u.scheme, "sip") &&
	     pl_strcasecmp(&u.scheme, "sips")))
		return luaL_error(L, "bad argument #1 to 'call' (SIP URI "
				  "expected, got \"%s\")", uri);
	if (from) {
		pl_set_str(&pl, from);
		if (strpbrk(from, "\r\n<> ") ||
		    uri_decode(&u, &pl) || !pl_isset(&u.host))
			return luaL_error(L, "bad option 'from' (SIP URI "
					  "expected, got \"%s\")", from);
	}
	if (display && strpbrk(display, "\r\n\""))
		return luaL_error(L, "bad option 'display' (no quotes or "
				  "CR/LF allowed)");
	if (strpbrk(ctype, "\r\n;") || !strchr(ctype, '/'))
		return luaL_error(L, "bad option 'content_type' (media type "
				  "expected, got \"%s\")", ctype);

	lsip_headers(&hdrs, L, 5, "call");
	lsip_body(&body, L, 6, "call");
	err = lsip_creds_alloc(&creds, L, 8, "call");
	if (err)
		goto out;

	call = mem_zalloc(sizeof(*call), call_destructor);
	if (!call) {
		err = ENOMEM;
		goto out;
	}

	call->self = LUA_NOREF;
	call->ep = mem_ref(ep);
	call->outgoing = true;
	call->state = CALL_CALLING;
	call->t_start = tmr_jiffies();
	call->ldesc = mem_ref(body);

	if (!from) {
		err = lsip_ep_from(ep, &dfrom, NULL);
		if (err)
			goto out;
		from = dfrom;
	}

	err = sipsess_connect(&call->sess, lsip_ep_sock(ep), uri, display,
			      from, lsip_ep_user(ep), NULL, 0, ctype, body,
			      creds ? lsip_auth_handler : NULL, creds, true,
			      offer_handler,
			      answer_handler, progress_handler, estab_handler,
			      info_handler, refer_handler, close_handler, call,
			      "%s%b", allow_hdr,
			      hdrs ? hdrs->buf : NULL, hdrs ? hdrs->end : 0);

 out:
	mem_deref(creds);    /* sipsess's sip_auth holds its own ref */
	mem_deref(dfrom);
	mem_deref(hdrs);
	mem_deref(body);
	if (err) {
		mem_deref(call);
		return lsip_fail(L, err, "call");
	}

	lsip_newbox(L, call, LSIP_CALL_MT);
	call->self = lsip_pin(L, -1);
	return 1;
}


/* call:_media(media | nil): re-INVITE offers are answered by media */
static int l_call_media(lua_State *L)
{
	struct lsip_call *call = call_check(L);
	struct lsip_media *m = NULL;

	if (!lua_isnoneornil(L, 2))
		m = lsip_media_get(L, 2);

	if (call) {
		mem_deref(call->media);
		call->media = mem_ref(m);
		call->held = remote_holds(call);
		if (m && !call->mle.list)
			list_append(&mcalls, &call->mle, call);
	}

	lua_pushboolean(L, 1);
	return 1;
}


static int modify_send_handler(enum sip_transp tp, const struct sa *src,
			       const struct sa *dst, struct mbuf *mb,
			       void *arg)
{
	struct lsip_call *call = arg;
	struct sip_contact contact;
	(void)dst;

	sip_contact_set(&contact, lsip_ep_user(call->ep), src, tp);
	return mbuf_printf(mb, "%H", sip_contact_print, &contact);
}


/* tell the waiting Lua token "modified" (status, reason, errno), once */
static void modify_done(struct lsip_call *call, uint16_t scode,
			const char *reason, int err)
{
	lua_State *L = lsip_L;
	int ref = call->mtoken;

	if (!call->mwait)
		return;

	call->mwait = false;
	if (!lsip_push_ref(L, ref))
		return;

	lsip_unpin(L, &ref);
	lua_pushinteger(L, scode);
	lua_pushstring(L, reason);
	lua_pushinteger(L, err);
	lsip_emit(L, "modified", 4);
}


/* ACK for the 2xx to our re-INVITE (again for each retransmission) */
static int send_ack(struct lsip_call *call, struct mbuf *desc)
{
	return sip_drequestf(NULL, lsip_ep_sip(call->ep), false, "ACK",
			     call->mdlg, call->ack_cseq,
			     NULL, NULL, NULL, NULL,
			     "%s"
			     "Content-Length: %zu\r\n"
			     "\r\n"
			     "%b",
			     desc ? "Content-Type: application/sdp\r\n" : "",
			     desc ? mbuf_get_left(desc) : (size_t)0,
			     desc ? mbuf_buf(desc) : NULL,
			     desc ? mbuf_get_left(desc) : (size_t)0);
}


/**
 * ACK a retransmitted 2xx to one of our re-INVITEs (our ACK was lost)
 *
 * Runs inside re_main from the endpoint's response listener, which sees
 * responses no client transaction took before sipsess's listener does.
 *
 * @param ep  Endpoint
 * @param msg Response
 *
 * @return true if it was ours
 */
bool lsip_call_response(struct lsip_ep *ep, const struct sip_msg *msg)
{
	struct le *le;

	if (msg->scode < 200 || msg->scode > 299 ||
	    pl_strcmp(&msg->cseq.met, "INVITE"))
		return false;

	for (le = list_head(&mcalls); le; le = le->next) {
		struct lsip_call *call = le->data;

		if (call->ep != ep || !call->mdlg ||
		    call->ack_cseq != msg->cseq.num ||
		    !sip_dialog_cmp(call->mdlg, msg))
			continue;

		/* a late offer's ACK carried our answer: the same again */
		(void)send_ack(call, call->mmode == MOD_LATE ?
			       call->ldesc : NULL);
		return true;
	}

	return false;
}


/* 2xx to our re-INVITE: ACK (with our answer when the 200 offered) */
static int modify_ack(struct lsip_call *call, const struct sip_msg *msg)
{
	struct mbuf *desc = NULL;
	int err = 0, aerr;

	(void)sip_dialog_update(call->mdlg, msg);   /* target refresh */
	set_rdesc(call, msg);

	if (call->mmode == MOD_LATE && mbuf_get_left(msg->mb)) {
		err = lsip_media_update(call->media, msg->mb, &desc);
		if (!err)
			set_ldesc(call, desc);
	}
	else if (call->mmode == MOD_MEDIA && mbuf_get_left(msg->mb)) {
		err = lsip_media_set_answer_mb(call->media, msg->mb);
	}
	else if (call->mmode != MOD_BODY) {
		err = EPROTO;                    /* no SDP where one is due */
	}

	call->ack_cseq = msg->cseq.num;
	aerr = send_ack(call, desc);
	mem_deref(desc);

	if (!err && call->mmode != MOD_BODY)
		media_changed(call, false);

	return err ? err : aerr;
}


static void modify_resp_handler(int err, const struct sip_msg *msg,
				void *arg)
{
	struct lsip_call *call = arg;
	char reason[64] = "";
	uint16_t scode = 0;

	if (!err && msg->scode < 200)
		return;

	if (err) {
		re_snprintf(reason, sizeof(reason), "%m", err);
	}
	else {
		scode = msg->scode;
		(void)pl_strcpy(&msg->reason, reason, sizeof(reason));
	}

	if (call->state == CALL_CLOSED || !call->sess) {
		/* a 2xx is ACKed even so (our BYE went out already) */
		if (scode >= 200 && scode < 300) {
			call->ack_cseq = msg->cseq.num;
			(void)send_ack(call, NULL);
		}
		modify_done(call, scode, reason, err);
		return;
	}

	if (scode >= 200 && scode < 300) {
		err = modify_ack(call, msg);
		if (err) {
			/* the offer or answer in the 200 is unusable */
			scode = 488;
			str_ncpy(reason, "Not Acceptable Here",
				 sizeof(reason));
		}
	}
	else if (call->mmode == MOD_MEDIA) {
		/* refused: the session goes on as before the offer */
		lsip_media_set_ldir(call->media, call->mprev);
	}

	modify_done(call, scode, reason, err);
}


/*
 * call:_modify(direction | nil, body | nil, late, token)
 *   -> true | nil, err, code
 * send a re-INVITE; token gets "modified" (status, reason, errno) at its
 * final response or when the call closes first. Without
 * a body the call's media offers (direction set first: "sendonly" for
 * hold, "sendrecv" to resume); with late, no SDP at all and the 200's
 * offer is answered in the ACK.
 */
static int l_call_modify(lua_State *L)
{
	static const char *const names[] = {
		"inactive", "recvonly", "sendonly", "sendrecv", NULL
	};
	static const enum sdp_dir dirs[] = {
		SDP_INACTIVE, SDP_RECVONLY, SDP_SENDONLY, SDP_SENDRECV
	};
	struct lsip_call *call = call_check(L);
	bool late = lua_toboolean(L, 4);
	struct mbuf *body = NULL;
	int n, err, d = -1;

	if (!lua_isnoneornil(L, 2))
		d = luaL_checkoption(L, 2, NULL, names);

	if ((n = check_open(L, call, "modify")))
		return n;
	if (!call->sess || call->state != CALL_ESTABLISHED)
		return lsip_fail(L, ENOTCONN, "modify");
	if (call->mreq || call->offered)
		return lsip_fail(L, EALREADY, "modify");

	luaL_checktype(L, 5, LUA_TTABLE);
	lsip_body(&body, L, 3, "modify");
	if (!body && !call->media)
		return luaL_error(L, "modify: the call has no media (pass "
				  "an SDP body)");

	call->mmode = body ? MOD_BODY : late ? MOD_LATE : MOD_MEDIA;
	if (call->mmode == MOD_MEDIA) {
		call->mprev = lsip_media_ldir(call->media);
		if (d >= 0)
			lsip_media_set_ldir(call->media, dirs[d]);
		err = lsip_media_offer_mb(call->media, &body);
		if (err) {
			lsip_media_set_ldir(call->media, call->mprev);
			return lsip_fail(L, err, "modify");
		}
	}

	err = sip_drequestf(&call->mreq, lsip_ep_sip(call->ep), true,
			    "INVITE", sipsess_dialog(call->sess), 0, NULL,
			    modify_send_handler, modify_resp_handler, call,
			    "%s%s"
			    "Content-Length: %zu\r\n"
			    "\r\n"
			    "%b",
			    allow_hdr,
			    body ? "Content-Type: application/sdp\r\n" : "",
			    body ? mbuf_get_left(body) : (size_t)0,
			    body ? mbuf_buf(body) : NULL,
			    body ? mbuf_get_left(body) : (size_t)0);
	if (!err) {
		mem_deref(call->mdlg);
		call->mdlg = mem_ref(sipsess_dialog(call->sess));
		if (!call->mle.list)
			list_append(&mcalls, &call->mle, call);
		call->mtoken = lsip_pin(L, 5);
		call->mwait = true;
	}
	if (!err && body)
		set_ldesc(call, body);
	else if (err && call->mmode == MOD_MEDIA)
		lsip_media_set_ldir(call->media, call->mprev);
	mem_deref(body);

	if (err)
		return lsip_fail(L, err, "modify");

	lua_pushboolean(L, 1);
	return 1;
}


static void push_desc(lua_State *L, const struct mbuf *mb)
{
	if (mb)
		lua_pushlstring(L, (const char *)mb->buf, mb->end);
	else
		lua_pushnil(L);
}


/**
 * The dialog of an established call, for requests inside it (refer.c)
 *
 * @param L   Lua state
 * @param idx Stack index of a luasip.call (raises on another type)
 * @param epp Set to the call's endpoint
 *
 * @return The dialog, or NULL if the call is closed or not established
 */
struct sip_dialog *lsip_call_dialog(lua_State *L, int idx,
				    struct lsip_ep **epp)
{
	struct lsip_call **box = lsip_checkbox(L, idx, LSIP_CALL_MT);
	struct lsip_call *call = *box;

	if (!call || !call->sess || call->state != CALL_ESTABLISHED)
		return NULL;

	*epp = call->ep;
	return sipsess_dialog(call->sess);
}


/* fields: state, cause, status, reason, duration, ... then message */
static int l_call_getfield(lua_State *L)
{
	struct lsip_call *call = call_check(L);
	const char *key = luaL_checkstring(L, 2);
	uint64_t end;

	if (!call) {
		if (!strcmp(key, "state")) {
			lua_pushliteral(L, "closed");
			return 1;
		}
		return 0;
	}

	if (!strcmp(key, "state")) {
		lua_pushstring(L, state_names[call->state]);
		return 1;
	}
	if (!strcmp(key, "cause")) {
		lua_pushstring(L, call->cause);
		return 1;
	}
	if (!strcmp(key, "status")) {
		lua_pushinteger(L, call->status);
		return 1;
	}
	if (!strcmp(key, "reason")) {
		lua_pushstring(L, call->reason);
		return 1;
	}
	if (!strcmp(key, "errno")) {
		lua_pushinteger(L, call->err);
		return 1;
	}
	if (!strcmp(key, "direction")) {
		lua_pushstring(L, call->outgoing ? "outgoing" : "incoming");
		return 1;
	}
	if (!strcmp(key, "duration")) {
		end = call->t_end ? call->t_end : tmr_jiffies();
		lua_pushnumber(L, call->t_answer ?
			       (end - call->t_answer) / 1000.0 : 0.0);
		return 1;
	}
	if (!strcmp(key, "age")) {
		end = call->t_end ? call->t_end : tmr_jiffies();
		lua_pushnumber(L, (end - call->t_start) / 1000.0);
		return 1;
	}
	if (!strcmp(key, "remote_sdp")) {
		push_desc(L, call->rdesc);
		return 1;
	}
	if (!strcmp(key, "local_sdp")) {
		push_desc(L, call->ldesc);
		return 1;
	}
	if (!strcmp(key, "held")) {
		lua_pushboolean(L, remote_holds(call));
		return 1;
	}
	if (!strcmp(key, "remote_direction")) {
		if (!call->media)
			return 0;
		lua_pushstring(L, sdp_dir_name(remote_dir(call)));
		return 1;
	}
	if (!strcmp(key, "holding")) {
		lua_pushboolean(L, call->media &&
				!(lsip_media_ldir(call->media) &
				  SDP_RECVONLY));
		return 1;
	}
	if (!strcmp(key, "modifying")) {
		lua_pushboolean(L, call->mreq != NULL);
		return 1;
	}
	if (!strcmp(key, "call_id") && call->sess) {
		lua_pushstring(L, sip_dialog_callid(
				       sipsess_dialog(call->sess)));
		return 1;
	}
	if (!call->msg)
		return 0;

	return lsip_msg_index(L, call->msg, key);
}


/**
 * Register core.call and the luasip.call type
 *
 * @param L Lua state, module table on top
 *
 * @return 0
 */
int lsip_open_call(lua_State *L)
{
	static const luaL_Reg methods[] = {
		{"_provisional", l_call_provisional},
		{"_answer", l_call_answer},
		{"reject", l_call_reject},
		{"hangup", l_call_hangup},
		{"info", l_call_info},
		{"_media", l_call_media},
		{"_modify", l_call_modify},
		{"close", l_call_close},
		{NULL, NULL}
	};
	static const luaL_Reg meta[] = {
		{"__gc", l_call_close},
		{"__close", l_call_close},
		{"__getfield", l_call_getfield},
		{NULL, NULL}
	};

	lsip_setfuncs(L, LSIP_CALL_MT, methods, meta);
	lua_pushcfunction(L, l_call_new);
	lua_setfield(L, -2, "call");
	return 0;
}
