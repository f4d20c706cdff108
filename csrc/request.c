/**
 * @file request.c  Out-of-dialog requests: incoming ("luasip.request")
 *                  and outgoing ("luasip.client_request")
 *
 * An incoming request owns its parsed message and a server transaction
 * created on arrival, so retransmissions are absorbed while the script
 * thinks. It is not pinned: the task that handles it holds the box. If
 * the box is collected (or closed) without a final reply, the destructor
 * answers 500: a request never goes unanswered.
 *
 * An outgoing request is pinned from sending until its final response
 * or error; then its box reads like a response (status, reason, headers).
 */

#include "lsip.h"


struct lsip_req {
	const struct sip_msg *msg;   /* first: shared message getters */
	struct lsip_ep *ep;
	struct sip_strans *st;
	sip_cancel_h *cancelh;       /* set by the proxy, else 487 */
	void *cancel_arg;
	uint16_t status;             /* last status sent, 0 if none */
	bool cancelled;              /* CANCEL received */
};


struct lsip_creq {
	const struct sip_msg *msg;   /* first: final response */
	struct lsip_ep *ep;
	struct sip_request *req;
	struct sip_auth *auth;       /* digest state, NULL without creds */
	struct mbuf *hdrs, *body;    /* kept to re-send after 401/407 */
	char *met, *uri, *from, *to;
	uint64_t tag, cid1, cid2;    /* From tag and Call-ID, kept too */
	uint32_t cseq;
	unsigned authc;              /* authenticated re-sends so far */
	uint16_t provisional;        /* last 1xx status */
	int self;                    /* pin while in flight */
	int err;
	bool done;
};


enum { AUTH_ROUNDS = 5 };  /* re-sends after 401/407, then give up */


static void req_destructor(void *arg)
{
	struct lsip_req *req = arg;

	if (req->status < 200 && req->st)
		(void)sip_treply(&req->st, lsip_ep_sip(req->ep), req->msg,
				 500, "Server Internal Error");

	mem_deref(req->st);
	mem_deref((void *)req->msg);
	mem_deref(req->ep);
}


/* CANCEL matched our transaction: the proxy's handler, else 487 */
static void cancel_handler(void *arg)
{
	struct lsip_req *req = arg;

	req->cancelled = true;
	if (req->cancelh) {
		req->cancelh(req->cancel_arg);
		return;
	}

	if (req->status < 200 && req->st &&
	    !pl_strcmp(&req->msg->met, "INVITE")) {
		(void)sip_treply(&req->st, lsip_ep_sip(req->ep), req->msg,
				 487, "Request Terminated");
		req->status = 487;
	}
}


/**
 * Deliver a new incoming request to Lua as ep event "request"
 *
 * Runs inside re_main.
 *
 * @param ep  Endpoint
 * @param msg Request
 *
 * @return true (the request is taken)
 */
bool lsip_request_incoming(struct lsip_ep *ep, const struct sip_msg *msg)
{
	lua_State *L = lsip_L;
	struct lsip_req *req;
	int err;

	/* REGISTERs of a registrar with an in-memory store: C (registrar.c) */
	if (lsip_registrar_take(ep, msg))
		return true;

	req = mem_zalloc(sizeof(*req), req_destructor);
	if (!req) {
		(void)sip_reply(lsip_ep_sip(ep), msg, 503,
				"Service Unavailable");
		return true;
	}

	req->msg = mem_ref((void *)msg);
	req->ep = mem_ref(ep);
	err = sip_strans_alloc(&req->st, lsip_ep_sip(ep), msg,
			       cancel_handler, req);
	if (err || !lsip_push_ref(L, lsip_ep_ref(ep))) {
		req->status = 503;
		(void)sip_reply(lsip_ep_sip(ep), msg, 503,
				"Service Unavailable");
		mem_deref(req);
		return true;
	}

	lsip_newbox(L, req, LSIP_REQ_MT);         /* ep, req */
	lsip_emit(L, "request", 2);
	return true;
}


/**
 * Check that idx is an incoming request box; NULL once closed
 *
 * @param L   Lua state
 * @param idx Stack index
 *
 * @return Request, or NULL when closed
 */
struct lsip_req *lsip_req_check(lua_State *L, int idx)
{
	struct lsip_req **box = lsip_checkbox(L, idx, LSIP_REQ_MT);

	return *box;
}


/**
 * Get the message, endpoint and server transaction of a request
 *
 * The transaction pointer may be used to reply (sip_strans_reply sets it
 * to NULL after a final response). lsip_req_set_status() records what
 * was sent so the destructor does not answer again.
 *
 * @param req Request
 * @param epp Set to the endpoint (optional)
 * @param stp Set to the address of the server transaction (optional)
 *
 * @return The request message
 */
const struct sip_msg *lsip_req_parts(struct lsip_req *req,
				     struct lsip_ep **epp,
				     struct sip_strans ***stp)
{
	if (epp)
		*epp = req->ep;
	if (stp)
		*stp = &req->st;

	return req->msg;
}


/**
 * Record the status sent for a request by another part (proxy, auth)
 *
 * @param req    Request
 * @param status Status sent (>= 200 marks it answered)
 */
void lsip_req_set_status(struct lsip_req *req, uint16_t status)
{
	req->status = status;
}


/**
 * Install the handler a CANCEL of this request calls (NULL: answer 487)
 *
 * @param req     Request
 * @param cancelh Cancel handler, or NULL
 * @param arg     Handler argument
 */
void lsip_req_set_cancel(struct lsip_req *req, sip_cancel_h *cancelh,
			 void *arg)
{
	req->cancelh = cancelh;
	req->cancel_arg = arg;
}


static struct lsip_req *req_check(lua_State *L)
{
	struct lsip_req **box = lsip_checkbox(L, 1, LSIP_REQ_MT);

	return *box;
}


/**
 * Reply to an incoming request
 *
 * req:reply(code, reason?, headers?, body?) -> true | nil, err, code
 */
static int l_req_reply(lua_State *L)
{
	struct lsip_req *req = req_check(L);
	lua_Integer code = luaL_checkinteger(L, 2);
	const char *reason = luaL_optstring(L, 3, NULL);
	struct mbuf *hdrs = NULL, *body = NULL;
	const char *ctype = NULL;
	int err;

	if (code < 100 || code > 699)
		return luaL_error(L, "bad argument #1 to 'reply' (status "
				  "100-699 expected, got %d)", (int)code);
	if (reason && strpbrk(reason, "\r\n"))
		return luaL_error(L, "bad argument #2 to 'reply' (reason "
				  "has CR/LF)");

	/* checked first: lsip_headers() may raise, and would leak the body */
	if (!lua_isnoneornil(L, 5) && lua_type(L, 5) != LUA_TSTRING)
		return luaL_error(L, "reply: body: string expected, got %s",
				  luaL_typename(L, 5));

	err = lsip_headers(&hdrs, L, 4, "reply");
	if (!err)
		err = lsip_body(&body, L, 5, "reply");
	if (err) {
		mem_deref(hdrs);
		return lsip_fail(L, err, "reply");
	}

	if (!req) {
		mem_deref(hdrs);
		mem_deref(body);
		return lsip_fail(L, ENOTCONN, "reply: closed");
	}
	if (req->status >= 200 || !req->st) {
		mem_deref(hdrs);
		mem_deref(body);
		return lsip_fail(L, EALREADY, "reply: already answered");
	}

	if (!reason) {
		lua_getfield(L, LUA_REGISTRYINDEX, "luasip.reasons");
		lua_geti(L, -1, code);
		reason = lua_tostring(L, -1);
		if (!reason)
			reason = code < 200 ? "Trying" : code < 300 ? "OK" :
				"Error";
	}

	if (body && !(hdrs && memmem(hdrs->buf, hdrs->end,
				      "Content-Type:", 13)))
		ctype = "Content-Type: text/plain\r\n";

	err = sip_treplyf(&req->st, NULL, lsip_ep_sip(req->ep), req->msg,
			  false, (uint16_t)code, reason,
			  "%b%s"
			  "Content-Length: %zu\r\n"
			  "\r\n"
			  "%b",
			  hdrs ? hdrs->buf : NULL, hdrs ? hdrs->end : 0,
			  ctype ? ctype : "",
			  body ? body->end : (size_t)0,
			  body ? body->buf : NULL, body ? body->end : 0);

	mem_deref(hdrs);
	mem_deref(body);

	req->status = (uint16_t)code;
	if (err) {
		req->status = 999;  /* transaction gone: never reply again */
		return lsip_fail(L, err, "reply");
	}

	lua_pushboolean(L, 1);
	return 1;
}


/* req.status: last status sent (0 = none yet); req.replied */
static int l_req_getfield(lua_State *L)
{
	struct lsip_req *req = req_check(L);
	const char *key = luaL_checkstring(L, 2);

	if (!req)
		return 0;

	if (!strcmp(key, "replied")) {
		lua_pushboolean(L, req->status >= 200);
		return 1;
	}
	if (!strcmp(key, "status")) {
		lua_pushinteger(L, req->status);
		return 1;
	}
	if (!strcmp(key, "cancelled")) {
		lua_pushboolean(L, req->cancelled);
		return 1;
	}
	if (!strcmp(key, "in_dialog")) {
		lua_pushboolean(L, pl_isset(&req->msg->to.tag));
		return 1;
	}

	return lsip_msg_index(L, req->msg, key);
}


/* __gc / __close / :close() */
static int l_req_close(lua_State *L)
{
	struct lsip_req **box = lsip_checkbox(L, 1, LSIP_REQ_MT);

	*box = mem_deref(*box);
	return 0;
}


/* ---- outgoing ---- */


static void creq_destructor(void *arg)
{
	struct lsip_creq *creq = arg;

	mem_deref(creq->req);
	mem_deref((void *)creq->msg);
	mem_deref(creq->ep);
	mem_deref(creq->auth);
	mem_deref(creq->hdrs);
	mem_deref(creq->body);
	mem_deref(creq->met);
	mem_deref(creq->uri);
	mem_deref(creq->from);
	mem_deref(creq->to);
}


static void resp_handler(int err, const struct sip_msg *msg, void *arg);


/* (re-)send: same Call-ID and From tag every time, CSeq counts up */
static int creq_send(struct lsip_creq *creq)
{
	const struct mbuf *hdrs = creq->hdrs, *body = creq->body;

	return sip_requestf(&creq->req, lsip_ep_sip(creq->ep), true,
			    creq->met, creq->uri, NULL, creq->auth, NULL,
			    resp_handler, creq,
			    "From: <%s>;tag=%016llx\r\n"
			    "To: <%s>\r\n"
			    "Call-ID: %016llx%016llx\r\n"
			    "CSeq: %u %s\r\n"
			    "User-Agent: %s\r\n"
			    "%b%s"
			    "Content-Length: %zu\r\n"
			    "\r\n"
			    "%b",
			    creq->from, creq->tag, creq->to,
			    creq->cid1, creq->cid2, creq->cseq, creq->met,
			    lsip_ep_ua(creq->ep),
			    hdrs ? hdrs->buf : NULL, hdrs ? hdrs->end : 0,
			    body && !(hdrs && memmem(hdrs->buf, hdrs->end,
						     "Content-Type:", 13)) ?
			    "Content-Type: text/plain\r\n" : "",
			    body ? body->end : (size_t)0,
			    body ? body->buf : NULL, body ? body->end : 0);
}


/* runs inside re_main */
static void resp_handler(int err, const struct sip_msg *msg, void *arg)
{
	struct lsip_creq *creq = arg;
	lua_State *L = lsip_L;

	if (!err && msg && msg->scode < 200) {
		creq->provisional = msg->scode;
		if (lsip_push_ref(L, creq->self))
			lsip_emit(L, "progress", 1);
		return;
	}

	creq->req = NULL;    /* libre frees it after this handler */

	/* challenged: answer it with a new CSeq; a refused realm
	 * (EAUTH) or too many rounds deliver the 401/407 as final */
	if (!err && msg && (msg->scode == 401 || msg->scode == 407) &&
	    creq->auth && creq->authc < AUTH_ROUNDS &&
	    !sip_auth_authenticate(creq->auth, msg)) {
		++creq->authc;
		++creq->cseq;
		if (!creq_send(creq))
			return;
	}

	creq->done = true;
	creq->err = err;
	if (!err && msg)
		creq->msg = mem_ref((void *)msg);

	if (!lsip_push_ref(L, creq->self))
		return;

	lsip_unpin(L, &creq->self);
	lsip_emit(L, "response", 1);
}


/*
 * From and To are printed as "<%s>": a value must be one SIP URI, with
 * no CR/LF/NUL (header injection) and no angle brackets
 */
static const char *check_addr(lua_State *L, int idx, const char *field)
{
	const char *s;
	struct uri u;
	struct pl pl;
	size_t n;

	if (lua_isnoneornil(L, idx))
		return NULL;

	s = luaL_checklstring(L, idx, &n);
	pl_set_str(&pl, s);
	if (strlen(s) != n || strpbrk(s, "\r\n<>") ||
	    uri_decode(&u, &pl) || !pl_isset(&u.host))
		luaL_error(L, "luasip.request: %s: SIP URI expected, got "
			   "\"%s\"", field, s);

	return s;
}


/*
 * core.send_request(ep, method, uri, from, to, headers, body, auth)
 *   -> creq | nil, err, code
 * auth: see lsip_creds_alloc(); a 401/407 is answered and the request
 * sent again (CSeq + 1), since sip_requestf does not retry by itself
 */
static int l_send_request(lua_State *L)
{
	struct lsip_ep *ep = lsip_ep_check(L, 1);
	const char *method = luaL_checkstring(L, 2);
	const char *uri = luaL_checkstring(L, 3);
	const char *from = check_addr(L, 4, "from");
	const char *to = check_addr(L, 5, "to");
	struct lsip_creds *creds = NULL;
	struct lsip_creq *creq, **box;
	int err;

	creq = mem_zalloc(sizeof(*creq), creq_destructor);
	if (!creq)
		return lsip_fail(L, ENOMEM, "request");

	creq->self = LUA_NOREF;
	creq->ep = mem_ref(ep);

	/* these may raise: creq is in a box already, __gc frees it */
	box = lsip_newbox(L, creq, LSIP_CREQ_MT);
	err = lsip_headers(&creq->hdrs, L, 6, "request");
	if (!err)
		err = lsip_body(&creq->body, L, 7, "request");
	if (!err)
		err = lsip_creds_alloc(&creds, L, 8, "request");
	if (!err && creds)
		err = sip_auth_alloc(&creq->auth, lsip_auth_handler, creds,
				     true);
	mem_deref(creds);
	if (err)
		goto out;

	err  = str_dup(&creq->met, method);
	err |= str_dup(&creq->uri, uri);
	err |= str_dup(&creq->to, to ? to : uri);
	if (from)
		err |= str_dup(&creq->from, from);
	else
		err |= lsip_ep_from(ep, &creq->from, NULL);
	if (err)
		goto out;

	creq->tag  = rand_u64();
	creq->cid1 = rand_u64();
	creq->cid2 = rand_u64();
	creq->cseq = (rand_u32() & 0x7fff) + 1;

	err = creq_send(creq);

 out:
	if (err) {
		*box = mem_deref(creq);
		return lsip_fail(L, err, "request");
	}

	creq->self = lsip_pin(L, -1);
	return 1;
}


static struct lsip_creq *creq_check(lua_State *L)
{
	struct lsip_creq **box = lsip_checkbox(L, 1, LSIP_CREQ_MT);

	return *box;
}


/* creq:result() -> true | nil, err, code  (once done) */
static int l_creq_result(lua_State *L)
{
	struct lsip_creq *creq = creq_check(L);

	if (!creq)
		return lsip_fail(L, ENOTCONN, "request: closed");
	if (!creq->done)
		return lsip_fail(L, EINPROGRESS, "request");
	if (creq->err)
		return lsip_fail(L, creq->err, "request");

	lua_pushboolean(L, 1);
	return 1;
}


/* creq.done, creq.provisional, then response fields */
static int l_creq_getfield(lua_State *L)
{
	struct lsip_creq *creq = creq_check(L);
	const char *key = luaL_checkstring(L, 2);

	if (!creq)
		return 0;

	if (!strcmp(key, "done")) {
		lua_pushboolean(L, creq->done);
		return 1;
	}
	if (!strcmp(key, "provisional")) {
		lua_pushinteger(L, creq->provisional);
		return 1;
	}
	if (!creq->msg)
		return 0;

	return lsip_msg_index(L, creq->msg, key);
}


/* :close(), __gc: abandon (a pending transaction is dropped) */
static int l_creq_close(lua_State *L)
{
	struct lsip_creq **box = lsip_checkbox(L, 1, LSIP_CREQ_MT);

	if (*box) {
		lsip_unpin(L, &(*box)->self);
		*box = mem_deref(*box);
	}

	return 0;
}


/**
 * Register luasip.request, luasip.client_request and core.send_request
 *
 * @param L Lua state, module table on top
 *
 * @return 0
 */
int lsip_open_request(lua_State *L)
{
	static const luaL_Reg req_methods[] = {
		{"reply", l_req_reply},
		{"close", l_req_close},
		{NULL, NULL}
	};
	static const luaL_Reg req_meta[] = {
		{"__gc", l_req_close},
		{"__close", l_req_close},
		{"__getfield", l_req_getfield},
		{NULL, NULL}
	};
	static const luaL_Reg creq_methods[] = {
		{"result", l_creq_result},
		{"close", l_creq_close},
		{NULL, NULL}
	};
	static const luaL_Reg creq_meta[] = {
		{"__gc", l_creq_close},
		{"__close", l_creq_close},
		{"__getfield", l_creq_getfield},
		{NULL, NULL}
	};

	lsip_setfuncs(L, LSIP_REQ_MT, req_methods, req_meta);
	lsip_setfuncs(L, LSIP_CREQ_MT, creq_methods, creq_meta);
	lua_pushcfunction(L, l_send_request);
	lua_setfield(L, -2, "send_request");
	return 0;
}
