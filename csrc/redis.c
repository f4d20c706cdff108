/**
 * @file redis.c  A non-blocking Redis client on libre's TCP as "luasip.redis"
 *
 * A redis box points at a struct lsip_redis, which owns the tcp_conn,
 * the receive buffer and the FIFO of requests in flight. Commands are
 * RESP arrays written to the connection (or held in txq until the
 * connection and its prelude, AUTH and SELECT, are done); replies are
 * scanned incrementally as bytes arrive and each complete reply is
 * delivered, in order, as a "reply" event on the token the command was
 * given (or on the box). The box is pinned while an event is due: while
 * connecting and while requests are in flight; an idle connection is not
 * pinned, so an unused client is collected and its socket closed.
 * Handlers emit into Lua, and Lua may run anything there (close the
 * client, send more commands, which may reconnect): they hold a mem
 * reference on the struct and check the connection generation after
 * every emit. Dropping the tcp_conn from inside its own handlers is safe
 * in libre 1.1.0 (tcp.c touches nothing after calling them). Losing the
 * connection fails every request in flight; the next command reconnects.
 */

#include "lsip.h"
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>


enum {
	MAX_DEPTH = 32,                   /* nested arrays in one reply */
	MAX_LINE  = 65536,                /* header or simple string line */
	MAX_BULK  = 512 * 1024 * 1024,    /* Redis' proto-max-bulk-len */
	MAX_ELEMS = 0x7fffffff,           /* elements of one array */
	RX_SIZE   = 4096,
};

/* a reply may not hold more bytes than this */
#define MAX_REPLY ((size_t)MAX_BULK + (64u << 20))


enum redis_state {
	RS_IDLE = 0,     /* no connection; the next command connects */
	RS_CONNECTING,   /* TCP handshake */
	RS_HELLO,        /* prelude (AUTH, SELECT) in flight */
	RS_READY,
	RS_CLOSED,
};


static const char *state_names[] = {
	"idle", "connecting", "connecting", "ready", "closed",
};


/* incremental scanner: where the current reply stands */
struct resp_scan {
	size_t off;                   /* next element, from the reply start */
	uint32_t depth;               /* open arrays */
	int64_t left[MAX_DEPTH];      /* elements still due per open array */
};


/* one request in flight */
struct pending {
	struct le le;
	int ref;                      /* token to emit on; LUA_NOREF: box */
};


struct lsip_redis {
	struct sa peer;
	struct tcp_conn *tc;
	struct mbuf *rx;              /* received, not yet delivered */
	struct mbuf *txq;             /* commands held until ready */
	struct mbuf *hello;           /* prelude commands, encoded */
	struct list pending;          /* FIFO of struct pending */
	struct resp_scan scan;
	uint32_t npending;
	uint32_t nhello;              /* commands in the prelude */
	uint32_t hello_left;          /* prelude replies still due */
	uint32_t gen;                 /* bumped whenever tc changes */
	enum redis_state state;
	int self;                     /* pin while an event is due */
};


static void pending_destructor(void *arg)
{
	struct pending *pe = arg;

	list_unlink(&pe->le);
}


/* never touches Lua: refs are released by the paths that have L */
static void redis_destructor(void *arg)
{
	struct lsip_redis *r = arg;

	r->tc = mem_deref(r->tc);
	list_flush(&r->pending);
	mem_deref(r->rx);
	mem_deref(r->txq);
	mem_deref(r->hello);
}


/* ---------------------------------------------------------------- RESP */


/* strict decimal integer as in RESP headers: -?[0-9]{1,19} */
static bool parse_int(const uint8_t *p, size_t n, int64_t *vp)
{
	uint64_t v = 0;
	bool neg = false;
	size_t i = 0;

	if (n && p[0] == '-') {
		neg = true;
		i = 1;
	}

	if (i == n || n - i > 19)
		return false;

	for (; i < n; i++) {
		if (p[i] < '0' || p[i] > '9')
			return false;
		v = v * 10 + (uint64_t)(p[i] - '0');
	}

	if (v > (uint64_t)INT64_MAX + (neg ? 1 : 0))
		return false;

	*vp = neg ? (int64_t)(0 - v) : (int64_t)v;
	return true;
}


/*
 * One header line at p: type byte, content, CRLF.
 * Returns 1 (content length in *llp), 0 (incomplete) or -1 (malformed).
 */
static int resp_line(const uint8_t *p, size_t left, size_t *llp)
{
	size_t max = left < MAX_LINE + 3 ? left : MAX_LINE + 3;
	const uint8_t *cr = memchr(p, '\r', max);

	if (!cr)
		return left >= MAX_LINE + 3 ? -1 : 0;

	if (cr == p || memchr(p, '\n', (size_t)(cr - p)))
		return -1;

	if ((size_t)(cr - p) + 1 >= left)
		return 0;

	if (cr[1] != '\n')
		return -1;

	*llp = (size_t)(cr - p) - 1;
	return 1;
}


/*
 * Scan buf (n bytes, starting with a reply) from where the last call
 * stopped. Returns 1 when the reply is complete (its length in *lenp;
 * the scanner is reset for the next one), 0 when more bytes are needed,
 * -1 when the stream is not RESP2.
 */
static int resp_scan(struct resp_scan *s, const uint8_t *buf, size_t n,
		     size_t *lenp)
{
	while (s->off < n) {
		const uint8_t *p = buf + s->off;
		size_t left = n - s->off, ll, len;
		int64_t v = 0;
		int ret;

		ret = resp_line(p, left, &ll);
		if (ret <= 0)
			return ret;

		len = ll + 3;

		switch (p[0]) {

		case '+':
		case '-':
			break;

		case ':':
			if (!parse_int(p + 1, ll, &v))
				return -1;
			break;

		case '$':
			if (!parse_int(p + 1, ll, &v) || v < -1 ||
			    v > MAX_BULK)
				return -1;
			if (v < 0)
				break;
			if (left < len + (size_t)v + 2)
				return 0;
			if (p[len + v] != '\r' || p[len + v + 1] != '\n')
				return -1;
			len += (size_t)v + 2;
			break;

		case '*':
			if (!parse_int(p + 1, ll, &v) || v < -1 ||
			    v > MAX_ELEMS)
				return -1;
			if (v <= 0)
				break;
			if (s->depth >= MAX_DEPTH)
				return -1;
			s->left[s->depth++] = v;
			s->off += len;
			continue;

		default:
			return -1;
		}

		s->off += len;

		/* an element is done: close the arrays it completes */
		while (s->depth && --s->left[s->depth - 1] == 0)
			--s->depth;

		if (!s->depth) {
			*lenp = s->off;
			s->off = 0;
			return 1;
		}
	}

	return 0;
}


static void scan_reset(struct resp_scan *s)
{
	s->off = 0;
	s->depth = 0;
}


/*
 * Push the value at *pp (a complete reply, checked by resp_scan) and
 * advance *pp past it. Stack: +1. Raises only on memory errors.
 */
static void push_value(lua_State *L, const uint8_t **pp,
		       const uint8_t *end)
{
	const uint8_t *p = *pp;
	const uint8_t *cr = memchr(p, '\r', (size_t)(end - p));
	const uint8_t *next = cr + 2;
	size_t ll = (size_t)(cr - p) - 1;
	int64_t i, v = 0;

	switch (p[0]) {

	case '+':
		lua_pushlstring(L, (const char *)p + 1, ll);
		break;

	case '-':
		/* an error inside an array (EXEC): { err = "ERR ..." } */
		lua_createtable(L, 0, 1);
		lua_pushlstring(L, (const char *)p + 1, ll);
		lua_setfield(L, -2, "err");
		break;

	case ':':
		(void)parse_int(p + 1, ll, &v);
		lua_pushinteger(L, (lua_Integer)v);
		break;

	case '$':
		(void)parse_int(p + 1, ll, &v);
		if (v < 0) {
			lua_pushlightuserdata(L, NULL);      /* redis.null */
			break;
		}
		lua_pushlstring(L, (const char *)next, (size_t)v);
		next += v + 2;
		break;

	default:  /* '*' */
		(void)parse_int(p + 1, ll, &v);
		if (v < 0) {
			lua_pushlightuserdata(L, NULL);
			break;
		}
		luaL_checkstack(L, 4, "redis: reply nested too deep");
		lua_createtable(L, v > 1024 ? 1024 : (int)v, 0);
		for (i = 1; i <= v; i++) {
			push_value(L, &next, end);
			lua_rawseti(L, -2, i);
		}
		break;
	}

	*pp = next;
}


/*
 * Push the Lua values of one complete reply: the value, or nil, the
 * error text and EREMOTEIO for an error reply. Returns how many.
 */
static int push_reply(lua_State *L, const uint8_t *p, size_t len)
{
	if (p[0] == '-') {
		const uint8_t *cr = memchr(p, '\r', len);

		lua_pushnil(L);
		lua_pushlstring(L, (const char *)p + 1, (size_t)(cr - p) - 1);
		lua_pushinteger(L, EREMOTEIO);
		return 3;
	}

	push_value(L, &p, p + len);
	return 1;
}


struct build_arg {
	const uint8_t *p;
	size_t len;
};


/* lua_pcall'd from handlers: a memory error must not cross libre */
static int l_build(lua_State *L)
{
	const struct build_arg *a = lua_touserdata(L, 1);

	lua_pop(L, 1);
	return push_reply(L, a->p, a->len);
}


/* ---------------------------------------------------------- commands */


/*
 * Raise unless the value at idx is a non-empty list of strings/numbers;
 * the message names argument #argn of fname and, inside it, what
 */
static void check_command(lua_State *L, int idx, int argn, const char *fname,
			  const char *what)
{
	lua_Integer i, n;

	if (!lua_istable(L, idx))
		luaL_error(L, "bad argument #%d to '%s' (%s: table expected, "
			   "got %s)", argn, fname, what,
			   luaL_typename(L, idx));

	n = luaL_len(L, idx);
	if (n < 1)
		luaL_error(L, "bad argument #%d to '%s' (%s: non-empty list "
			   "of command words expected)", argn, fname, what);

	for (i = 1; i <= n; i++) {
		int t = lua_geti(L, idx, i);

		if (t != LUA_TSTRING && t != LUA_TNUMBER)
			luaL_error(L, "bad argument #%d to '%s' (%s[%d]: "
				   "string expected, got %s)", argn, fname,
				   what, (int)i, luaL_typename(L, -1));
		lua_pop(L, 1);
	}
}


/* append the RESP array of the checked list at idx (binary safe) */
static int encode_command(struct mbuf *mb, lua_State *L, int idx)
{
	lua_Integer i, n = luaL_len(L, idx);
	int err;

	err = mbuf_printf(mb, "*%zu\r\n", (size_t)n);
	for (i = 1; i <= n && !err; i++) {
		const char *s;
		size_t len;

		lua_geti(L, idx, i);
		s = lua_tolstring(L, -1, &len);     /* numbers: a copy */
		err = mbuf_printf(mb, "$%zu\r\n", len);
		err |= mbuf_write_mem(mb, (const uint8_t *)s, len);
		err |= mbuf_write_str(mb, "\r\n");
		lua_pop(L, 1);
	}

	return err;
}


/* ------------------------------------------------------------ events */


static bool need_pin(const struct lsip_redis *r)
{
	return r->npending > 0 || r->state == RS_CONNECTING ||
		r->state == RS_HELLO;
}


/* pin the box at idx when an event is due (idx 0: only unpin) */
static void pin_update(struct lsip_redis *r, lua_State *L, int idx)
{
	if (need_pin(r)) {
		if (idx && r->self == LUA_NOREF)
			r->self = lsip_pin(L, idx);
	}
	else {
		lsip_unpin(L, &r->self);
	}
}


/* push the object a reply goes to; false if it is gone */
static bool push_target(struct lsip_redis *r, lua_State *L, int ref,
			int boxidx)
{
	if (ref != LUA_NOREF)
		return lsip_push_ref(L, ref);

	if (boxidx) {
		lua_pushvalue(L, boxidx);
		return true;
	}

	return lsip_push_ref(L, r->self);
}


/* fail (and empty) a detached list of requests; emit "reply" on each */
static void fail_list(struct lsip_redis *r, lua_State *L, struct list *lst,
		      int err, const char *msg, bool emit, int boxidx)
{
	struct le *le;

	while ((le = list_head(lst))) {
		struct pending *pe = le->data;
		int ref = pe->ref;

		mem_deref(pe);
		if (emit && push_target(r, L, ref, boxidx)) {
			lua_pushnil(L);
			lua_pushstring(L, msg);
			lua_pushinteger(L, err);
			lsip_emit(L, "reply", 4);
		}
		lsip_unpin(L, &ref);
	}
}


static void detach_pending(struct lsip_redis *r, struct list *lst)
{
	struct le *le;

	while ((le = list_head(&r->pending))) {
		list_unlink(le);
		list_append(lst, le, le->data);
	}

	r->npending = 0;
}


static void reset_buffers(struct lsip_redis *r)
{
	mbuf_rewind(r->rx);
	mbuf_rewind(r->txq);
	scan_reset(&r->scan);
	r->hello_left = 0;
}


/*
 * The connection is gone (or dropped): go idle, emit "closed" (msg, err)
 * on the box, then fail every request in flight with nil, msg, err.
 * Runs inside re_main or inside a Lua call; may re-enter Lua.
 */
static void conn_drop(struct lsip_redis *r, int err, const char *msg)
{
	struct list lst = LIST_INIT;
	lua_State *L = lsip_L;
	char buf[160];

	if (!msg) {
		re_snprintf(buf, sizeof(buf), "redis: %m", err);
		msg = buf;
	}

	r->tc = mem_deref(r->tc);
	r->state = RS_IDLE;
	++r->gen;
	reset_buffers(r);
	detach_pending(r, &lst);

	mem_ref(r);
	if (lsip_push_ref(L, r->self)) {
		lua_pushstring(L, msg);
		lua_pushinteger(L, err);
		lsip_emit(L, "closed", 3);
	}
	fail_list(r, L, &lst, err, msg, true, 0);
	pin_update(r, L, 0);
	mem_deref(r);
}


static void send_ready(struct lsip_redis *r)
{
	lua_State *L = lsip_L;
	bool pushed;
	int err = 0;

	r->state = RS_READY;
	if (r->txq->end) {
		r->txq->pos = 0;
		err = tcp_send(r->tc, r->txq);
		mbuf_rewind(r->txq);
	}

	if (err) {
		conn_drop(r, err, NULL);
		return;
	}

	/* unpinned before the event: the script may drop the client there */
	pushed = lsip_push_ref(L, r->self);
	pin_update(r, L, 0);
	if (pushed)
		lsip_emit(L, "connected", 1);
}


/* one complete reply of len bytes at the head of rx */
static void deliver(struct lsip_redis *r, size_t len)
{
	struct pending *pe = list_ledata(list_head(&r->pending));
	const uint8_t *p = mbuf_buf(r->rx);
	lua_State *L = lsip_L;
	struct build_arg a;
	int ref, top;

	if (r->hello_left) {
		char msg[256];

		r->rx->pos += len;
		if (p[0] == '-') {
			const uint8_t *cr = memchr(p, '\r', len);

			re_snprintf(msg, sizeof(msg), "%b", p + 1,
				    (size_t)(cr - p) - 1);
			conn_drop(r, EREMOTEIO, msg);
			return;
		}
		if (--r->hello_left == 0)
			send_ready(r);
		return;
	}

	if (!pe) {
		conn_drop(r, EPROTO, "redis: protocol error: "
			  "reply without a request");
		return;
	}

	ref = pe->ref;
	mem_deref(pe);
	--r->npending;

	top = lua_gettop(L);
	if (push_target(r, L, ref, 0)) {
		a.p = p;
		a.len = len;
		lua_pushcfunction(L, l_build);
		lua_pushlightuserdata(L, &a);
		if (lua_pcall(L, 1, LUA_MULTRET, 0) != LUA_OK) {
			lua_pop(L, 1);
			lua_pushnil(L);
			lua_pushliteral(L, "redis: out of memory");
			lua_pushinteger(L, ENOMEM);
		}
		r->rx->pos += len;
		pin_update(r, L, 0);
		lsip_unpin(L, &ref);             /* the token is on the stack */
		lsip_emit(L, "reply", lua_gettop(L) - top);
	}
	else {
		r->rx->pos += len;
		pin_update(r, L, 0);
		lsip_unpin(L, &ref);
	}
}


/* keep the unparsed tail at the start of rx */
static void rx_compact(struct mbuf *mb)
{
	size_t left = mbuf_get_left(mb);

	if (!left) {
		mbuf_rewind(mb);
		if (mb->size > 65536)
			(void)mbuf_resize(mb, RX_SIZE);
		return;
	}

	if (!mb->pos)
		return;

	memmove(mb->buf, mb->buf + mb->pos, left);
	mb->pos = 0;
	mb->end = left;
}


/* ------------------------------------------------------ tcp handlers */


static void estab_handler(void *arg)
{
	struct lsip_redis *r = arg;
	int err;

	if (!r->nhello) {
		mem_ref(r);
		send_ready(r);
		mem_deref(r);
		return;
	}

	r->state = RS_HELLO;
	r->hello_left = r->nhello;
	r->hello->pos = 0;
	err = tcp_send(r->tc, r->hello);
	if (err)
		conn_drop(r, err, NULL);
}


static void recv_handler(struct mbuf *mb, void *arg)
{
	struct lsip_redis *r = arg;
	const uint32_t gen = r->gen;
	size_t pos = r->rx->pos;
	int err;

	r->rx->pos = r->rx->end;
	err = mbuf_write_mem(r->rx, mbuf_buf(mb), mbuf_get_left(mb));
	r->rx->pos = pos;
	if (err) {
		conn_drop(r, err, NULL);
		return;
	}

	mem_ref(r);
	while (r->gen == gen) {
		size_t len = 0;
		int ret;

		ret = resp_scan(&r->scan, mbuf_buf(r->rx),
				mbuf_get_left(r->rx), &len);
		if (ret < 0) {
			conn_drop(r, EPROTO, "redis: protocol error: "
				  "malformed reply");
			break;
		}
		if (ret == 0) {
			if (mbuf_get_left(r->rx) > MAX_REPLY)
				conn_drop(r, EPROTO, "redis: protocol error: "
					  "reply too large");
			break;
		}

		deliver(r, len);
	}

	if (r->gen == gen)
		rx_compact(r->rx);

	mem_deref(r);
}


static void close_handler(int err, void *arg)
{
	struct lsip_redis *r = arg;

	if (err)
		conn_drop(r, err, NULL);
	else
		conn_drop(r, ECONNRESET, "redis: connection closed by server");
}


static int conn_start(struct lsip_redis *r)
{
	int err, fd, one = 1;

	err = tcp_conn_alloc(&r->tc, &r->peer, estab_handler, recv_handler,
			     close_handler, r);
	if (err)
		return err;

	/* pipelined small commands must not wait for Nagle */
	fd = tcp_conn_fd(r->tc);
	if (fd >= 0)
		(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one,
				 sizeof(one));

	err = tcp_conn_connect(r->tc, &r->peer);
	if (err) {
		r->tc = mem_deref(r->tc);
		return err;
	}

	++r->gen;
	reset_buffers(r);
	r->state = RS_CONNECTING;
	return 0;
}


/* --------------------------------------------------------- Lua API */


static struct lsip_redis *redis_check(lua_State *L)
{
	struct lsip_redis **box = lsip_checkbox(L, 1, LSIP_REDIS_MT);

	return *box;
}


/*
 * core.redis_new(host, port[, prelude]) -> redis (idle: the first
 * command connects); core.redis_connect(...) also starts connecting
 * and returns nil, message, code when that fails at once.
 * prelude: list of commands sent first on every connection (AUTH,
 * SELECT); an error reply to one of them fails the connection.
 */
static int redis_new(lua_State *L, bool connect)
{
	const char *host = luaL_checkstring(L, 1);
	lua_Integer port = luaL_checkinteger(L, 2);
	struct lsip_redis *r;
	lua_Integer i, n = 0;
	struct sa peer;
	int err;

	if (port < 1 || port > 65535)
		return luaL_argerror(L, 2, lua_pushfstring(L, "port out of "
				     "range: %I", port));
	if (sa_set_str(&peer, host, (uint16_t)port))
		return luaL_argerror(L, 1, lua_pushfstring(L, "IP address "
				     "expected, got %s", host));

	if (!lua_isnoneornil(L, 3)) {
		luaL_checktype(L, 3, LUA_TTABLE);
		n = luaL_len(L, 3);
		for (i = 1; i <= n; i++) {
			lua_geti(L, 3, i);
			check_command(L, lua_gettop(L), 3, "redis_new",
				      "prelude");
			lua_pop(L, 1);
		}
	}

	r = mem_zalloc(sizeof(*r), redis_destructor);
	if (!r)
		return luaL_error(L, "luasip.redis: out of memory");

	r->self = LUA_NOREF;
	r->peer = peer;
	r->rx = mbuf_alloc(RX_SIZE);
	r->txq = mbuf_alloc(256);
	r->hello = mbuf_alloc(64);
	err = (r->rx && r->txq && r->hello) ? 0 : ENOMEM;
	for (i = 1; i <= n && !err; i++) {
		lua_geti(L, 3, i);
		err = encode_command(r->hello, L, lua_gettop(L));
		lua_pop(L, 1);
	}
	r->nhello = (uint32_t)n;
	if (err) {
		mem_deref(r);
		return luaL_error(L, "luasip.redis: out of memory");
	}

	lsip_newbox(L, r, LSIP_REDIS_MT);
	if (connect) {
		err = conn_start(r);
		if (err)
			return lsip_fail(L, err, "redis");
		pin_update(r, L, lua_gettop(L));
	}

	return 1;
}


static int l_redis_new(lua_State *L)
{
	return redis_new(L, false);
}


static int l_redis_connect(lua_State *L)
{
	return redis_new(L, true);
}


/* redis:connect() -> true: start connecting unless connected already */
static int l_connect(lua_State *L)
{
	struct lsip_redis *r = redis_check(L);
	int err;

	if (!r)
		return lsip_fail(L, ENOTCONN, "closed");

	if (r->state == RS_IDLE) {
		err = conn_start(r);
		if (err)
			return lsip_fail(L, err, "redis");
		pin_update(r, L, 1);
	}

	lua_pushboolean(L, 1);
	return 1;
}


/*
 * redis:command({ "HSET", k, f, v }[, token]) -> true | nil, msg, code
 * Queues one request; its reply is emitted as "reply" on token (any
 * value; the box when nil): value, or nil, message, code. Replies come
 * in the order of the commands. Connects first when idle.
 */
static int l_command(lua_State *L)
{
	struct lsip_redis *r = redis_check(L);
	struct pending *pe;
	struct mbuf *mb;
	int err;

	check_command(L, 2, 1, "command", "command");
	if (!r)
		return lsip_fail(L, ENOTCONN, "closed");

	pe = mem_zalloc(sizeof(*pe), pending_destructor);
	mb = mbuf_alloc(64);
	if (!pe || !mb) {
		err = ENOMEM;
		goto out;
	}

	err = encode_command(mb, L, 2);
	if (err)
		goto out;

	if (r->state == RS_IDLE) {
		err = conn_start(r);
		if (err)
			goto out;
	}

	if (r->state == RS_READY) {
		mb->pos = 0;
		err = tcp_send(r->tc, mb);
		if (err) {
			mem_deref(pe);
			mem_deref(mb);
			conn_drop(r, err, NULL);   /* fails the others */
			return lsip_fail(L, err, "redis");
		}
	}
	else {
		err = mbuf_write_mem(r->txq, mb->buf, mb->end);
		if (err)
			goto out;
	}

	pe->ref = lua_isnoneornil(L, 3) ? LUA_NOREF : lsip_pin(L, 3);
	list_append(&r->pending, &pe->le, pe);
	++r->npending;
	pin_update(r, L, 1);
	mem_deref(mb);

	lua_pushboolean(L, 1);
	return 1;

 out:
	mem_deref(pe);
	mem_deref(mb);
	return lsip_fail(L, err, "redis");
}


/* redis:state() -> "idle" | "connecting" | "ready" | "closed" */
static int l_state(lua_State *L)
{
	struct lsip_redis *r = redis_check(L);

	lua_pushstring(L, state_names[r ? r->state : RS_CLOSED]);
	return 1;
}


/* redis:pending() -> requests in flight */
static int l_pending(lua_State *L)
{
	struct lsip_redis *r = redis_check(L);

	lua_pushinteger(L, r ? r->npending : 0);
	return 1;
}


/*
 * redis:disconnect() -> true: drop the connection; requests in flight
 * get nil, "redis: disconnected", ECANCELED; the next command reconnects
 */
static int l_disconnect(lua_State *L)
{
	struct lsip_redis *r = redis_check(L);

	if (r && r->state != RS_IDLE)
		conn_drop(r, ECANCELED, "redis: disconnected");

	lua_pushboolean(L, 1);
	return 1;
}


/* :close() and __close fail requests in flight with the usual nil,
 * "closed: ...", ENOTCONN; __gc (unreachable, or lua_close) emits nothing */
static int redis_release(lua_State *L, bool emit)
{
	struct lsip_redis **box = lsip_checkbox(L, 1, LSIP_REDIS_MT);
	struct lsip_redis *r = *box;
	struct list lst = LIST_INIT;
	char msg[96];

	if (!r)
		return 0;

	re_snprintf(msg, sizeof(msg), "closed: %m", ENOTCONN);
	*box = NULL;
	r->state = RS_CLOSED;
	++r->gen;
	r->tc = mem_deref(r->tc);
	detach_pending(r, &lst);
	lsip_unpin(L, &r->self);
	fail_list(r, L, &lst, ENOTCONN, msg, emit, 1);
	mem_deref(r);
	return 0;
}


static int l_close(lua_State *L)
{
	redis_release(L, true);
	lua_pushboolean(L, 1);
	return 1;
}


static int l_gc(lua_State *L)
{
	return redis_release(L, false);
}


/*
 * core.redis_parse(chunks) -> replies, err, left: a test hook that runs
 * the scanner and the value builder over a byte stream given in chunks
 * (as they would arrive from TCP). replies is a list of table.pack'd
 * results; err is the protocol error message (nil if none); left is the
 * count of bytes of an incomplete last reply.
 */
static int l_redis_parse(lua_State *L)
{
	struct resp_scan s;
	lua_Integer i, n;
	struct mbuf *mb;
	int nrep = 0;
	const char *perr = NULL;

	luaL_checktype(L, 1, LUA_TTABLE);
	n = luaL_len(L, 1);
	mb = mbuf_alloc(RX_SIZE);
	if (!mb)
		return luaL_error(L, "redis_parse: out of memory");

	memset(&s, 0, sizeof(s));
	lua_newtable(L);                          /* chunks, replies */
	for (i = 1; i <= n && !perr; i++) {
		size_t len, pos = mb->pos;
		const char *c;

		lua_geti(L, 1, i);
		c = lua_tolstring(L, -1, &len);
		mb->pos = mb->end;
		if (c)
			(void)mbuf_write_mem(mb, (const uint8_t *)c, len);
		mb->pos = pos;
		lua_pop(L, 1);

		for (;;) {
			size_t rlen = 0;
			int ret, top, k;

			ret = resp_scan(&s, mbuf_buf(mb), mbuf_get_left(mb),
					&rlen);
			if (ret < 0)
				perr = "redis: protocol error: "
					"malformed reply";
			if (ret <= 0)
				break;

			lua_createtable(L, 3, 1);     /* replies, r */
			top = lua_gettop(L);
			k = push_reply(L, mbuf_buf(mb), rlen);
			lua_pushinteger(L, k);
			lua_setfield(L, top, "n");
			for (; k > 0; --k)
				lua_rawseti(L, top, k);
			mb->pos += rlen;
			lua_rawseti(L, -2, ++nrep);
		}
		rx_compact(mb);
	}

	if (perr)
		lua_pushstring(L, perr);
	else
		lua_pushnil(L);
	lua_pushinteger(L, (lua_Integer)mbuf_get_left(mb));
	mem_deref(mb);
	return 3;
}


/**
 * Register the luasip.redis type, core.redis_new, core.redis_connect,
 * core.redis_null (the nil of a reply, a NULL light userdata) and
 * core.EREMOTEIO (the code of an error reply)
 *
 * @param L Lua state, module table on top
 *
 * @return 0
 */
int lsip_open_redis(lua_State *L)
{
	static const luaL_Reg methods[] = {
		{"command", l_command},
		{"connect", l_connect},
		{"disconnect", l_disconnect},
		{"state", l_state},
		{"pending", l_pending},
		{"close", l_close},
		{NULL, NULL}
	};
	static const luaL_Reg meta[] = {
		{"__gc", l_gc},
		{"__close", l_close},
		{NULL, NULL}
	};
	static const luaL_Reg funcs[] = {
		{"redis_new", l_redis_new},
		{"redis_connect", l_redis_connect},
		{"redis_parse", l_redis_parse},
		{NULL, NULL}
	};

	lsip_setfuncs(L, LSIP_REDIS_MT, methods, meta);
	luaL_setfuncs(L, funcs, 0);

	lua_pushlightuserdata(L, NULL);
	lua_setfield(L, -2, "redis_null");
	lua_pushinteger(L, EREMOTEIO);
	lua_setfield(L, -2, "EREMOTEIO");
	return 0;
}
