/**
 * @file message.c  Lazy read access to a parsed sip_msg from Lua
 *
 * Requests and responses keep a mem_ref'd struct sip_msg; their __index
 * getters call lsip_msg_index(), which builds only the field asked for
 * from libre's parse (nothing is copied per message ahead of time).
 * Tables built here are plain Lua values owned by the caller.
 */

#include "lsip.h"


static const struct {
	char c;
	const char *name;
} compact[] = {
	{'a', "Accept-Contact"}, {'b', "Referred-By"},
	{'c', "Content-Type"}, {'d', "Request-Disposition"},
	{'e', "Content-Encoding"}, {'f', "From"}, {'i', "Call-ID"},
	{'j', "Reject-Contact"}, {'k', "Supported"}, {'l', "Content-Length"},
	{'m', "Contact"}, {'n', "Identity-Info"}, {'o', "Event"},
	{'r', "Refer-To"}, {'s', "Subject"}, {'t', "To"},
	{'u', "Allow-Events"}, {'v', "Via"}, {'x', "Session-Expires"},
	{'y', "Identity"},
};


/* long form of a header name (compact forms expanded) */
static void hdr_longname(struct pl *out, const struct pl *name)
{
	size_t i;

	*out = *name;
	if (name->l != 1)
		return;

	for (i = 0; i < sizeof(compact) / sizeof(compact[0]); i++) {
		if (compact[i].c == (name->p[0] | 0x20)) {
			pl_set_str(out, compact[i].name);
			return;
		}
	}
}


/* the hash key libre files this header under (its hdr_hash) */
static uint32_t hdr_key(const struct pl *lname)
{
	if (lname->l > 1 && (lname->p[0] | 0x20) == 'x' && lname->p[1] == '-')
		return (uint32_t)SIP_HDR_NONE;

	return hash_joaat_ci(lname->p, lname->l) & 0xfff;
}


struct hdr_match {
	struct pl name;
	lua_State *L;
	int n;
	bool all;
};


static bool hdr_handler(const struct sip_hdr *hdr, const struct sip_msg *msg,
			void *arg)
{
	struct hdr_match *m = arg;
	struct pl lname;
	(void)msg;

	hdr_longname(&lname, &hdr->name);
	if (pl_casecmp(&lname, &m->name))
		return false;

	lsip_pushpl(m->L, &hdr->val);
	if (!m->all)
		return true;

	lua_rawseti(m->L, -2, ++m->n);
	return false;
}


/**
 * Push the value(s) of a header by name, compact forms included
 *
 * @param L    Lua state
 * @param msg  SIP message
 * @param name Header name, any case, long or compact form
 * @param all  Push a list of every value instead of the first
 *
 * @return 1 (nil when absent and !all)
 */
static int push_header(lua_State *L, const struct sip_msg *msg,
		       const char *name, bool all)
{
	struct hdr_match m;
	struct pl pl;
	struct le *le;

	pl_set_str(&pl, name);
	hdr_longname(&m.name, &pl);
	m.L = L;
	m.n = 0;
	m.all = all;

	if (all) {
		/* every value: libre files comma-separated ones one by one */
		lua_newtable(L);
		le = list_head(hash_list(msg->hdrht, hdr_key(&m.name)));
		for (; le; le = le->next)
			(void)hdr_handler(le->data, msg, &m);

		return 1;
	}

	/* the first header line, as written */
	for (le = list_head(&msg->hdrl); le; le = le->next) {
		if (hdr_handler(le->data, msg, &m))
			return 1;
	}

	lua_pushnil(L);
	return 1;
}


/* {scheme, user, password, host, port, params, headers, raw} */
static void push_uri(lua_State *L, const struct uri *uri,
		     const struct pl *raw)
{
	lua_createtable(L, 0, 8);
	lsip_pushpl(L, &uri->scheme);
	lua_setfield(L, -2, "scheme");
	if (pl_isset(&uri->user)) {
		lsip_pushpl(L, &uri->user);
		lua_setfield(L, -2, "user");
	}
	if (pl_isset(&uri->password)) {
		lsip_pushpl(L, &uri->password);
		lua_setfield(L, -2, "password");
	}
	lsip_pushpl(L, &uri->host);
	lua_setfield(L, -2, "host");
	if (uri->port) {
		lua_pushinteger(L, uri->port);
		lua_setfield(L, -2, "port");
	}
	if (pl_isset(&uri->params)) {
		lsip_pushpl(L, &uri->params);
		lua_setfield(L, -2, "params");
	}
	if (pl_isset(&uri->headers)) {
		lsip_pushpl(L, &uri->headers);
		lua_setfield(L, -2, "headers");
	}
	lsip_pushpl(L, raw);
	lua_setfield(L, -2, "raw");
}


/* From/To: {display, uri, tag, params, user, host, port, raw} */
static void push_taddr(lua_State *L, const struct sip_taddr *a)
{
	lua_createtable(L, 0, 8);
	if (pl_isset(&a->dname)) {
		lsip_pushpl(L, &a->dname);
		lua_setfield(L, -2, "display");
	}
	lsip_pushpl(L, &a->auri);
	lua_setfield(L, -2, "uri");
	if (pl_isset(&a->tag)) {
		lsip_pushpl(L, &a->tag);
		lua_setfield(L, -2, "tag");
	}
	if (pl_isset(&a->params)) {
		lsip_pushpl(L, &a->params);
		lua_setfield(L, -2, "params");
	}
	if (pl_isset(&a->uri.user)) {
		lsip_pushpl(L, &a->uri.user);
		lua_setfield(L, -2, "user");
	}
	lsip_pushpl(L, &a->uri.host);
	lua_setfield(L, -2, "host");
	if (a->uri.port) {
		lua_pushinteger(L, a->uri.port);
		lua_setfield(L, -2, "port");
	}
	lsip_pushpl(L, &a->val);
	lua_setfield(L, -2, "raw");
}


static void push_via(lua_State *L, const struct sip_via *via)
{
	lua_createtable(L, 0, 6);
	lua_pushstring(L, lsip_tpname(via->tp));
	lua_setfield(L, -2, "transport");
	lsip_pushpl(L, &via->sentby);
	lua_setfield(L, -2, "sent_by");
	if (sa_isset(&via->addr, SA_ADDR)) {
		char buf[64];

		re_snprintf(buf, sizeof(buf), "%j", &via->addr);
		lua_pushstring(L, buf);
		lua_setfield(L, -2, "host");
	}
	if (sa_port(&via->addr)) {
		lua_pushinteger(L, sa_port(&via->addr));
		lua_setfield(L, -2, "port");
	}
	lsip_pushpl(L, &via->branch);
	lua_setfield(L, -2, "branch");
	if (pl_isset(&via->params)) {
		lsip_pushpl(L, &via->params);
		lua_setfield(L, -2, "params");
	}
	lsip_pushpl(L, &via->val);
	lua_setfield(L, -2, "raw");
}


/*
 * array of parsed Contact values {display, uri, params, expires, q}; one
 * entry per value, also for "Contact: <a>, <b>" (libre files the split
 * values in the header hash, msg->hdrl only holds whole lines)
 */
static int push_contacts(lua_State *L, const struct sip_msg *msg)
{
	struct le *le;
	int n = 0;

	lua_newtable(L);
	le = list_head(hash_list(msg->hdrht, SIP_HDR_CONTACT));
	for (; le; le = le->next) {
		const struct sip_hdr *hdr = le->data;
		struct sip_addr addr;
		struct pl v;

		if (hdr->id != SIP_HDR_CONTACT)
			continue;

		lua_createtable(L, 0, 5);
		if (!pl_strcmp(&hdr->val, "*")) {
			lua_pushboolean(L, 1);
			lua_setfield(L, -2, "star");
		}
		else if (sip_addr_decode(&addr, &hdr->val)) {
			lua_pushboolean(L, 1);
			lua_setfield(L, -2, "invalid");
		}
		else {
			if (pl_isset(&addr.dname)) {
				lsip_pushpl(L, &addr.dname);
				lua_setfield(L, -2, "display");
			}
			lsip_pushpl(L, &addr.auri);
			lua_setfield(L, -2, "uri");
			if (pl_isset(&addr.params)) {
				lsip_pushpl(L, &addr.params);
				lua_setfield(L, -2, "params");
			}
			if (!msg_param_decode(&addr.params, "expires", &v)) {
				lua_pushinteger(L, pl_u32(&v));
				lua_setfield(L, -2, "expires");
			}
			if (!msg_param_decode(&addr.params, "q", &v)) {
				lua_pushnumber(L, pl_float(&v));
				lua_setfield(L, -2, "q");
			}
		}
		lsip_pushpl(L, &hdr->val);
		lua_setfield(L, -2, "raw");
		lua_rawseti(L, -2, ++n);
	}

	return 1;
}


/* every header: { ["Name"] = { v1, v2 } } in long form, in order */
static int push_all_headers(lua_State *L, const struct sip_msg *msg)
{
	struct le *le;

	lua_newtable(L);
	for (le = list_head(&msg->hdrl); le; le = le->next) {
		const struct sip_hdr *hdr = le->data;
		struct pl lname;

		hdr_longname(&lname, &hdr->name);
		lsip_pushpl(L, &lname);
		lua_pushvalue(L, -1);
		if (lua_rawget(L, -3) == LUA_TNIL) {
			lua_pop(L, 1);
			lua_newtable(L);
			lua_pushvalue(L, -2);
			lua_pushvalue(L, -2);
			lua_rawset(L, -5);
		}
		lsip_pushpl(L, &hdr->val);
		lua_rawseti(L, -2, luaL_len(L, -2) + 1);
		lua_pop(L, 2);
	}

	return 1;
}


/**
 * Push field key of msg
 *
 * @param L   Lua state
 * @param msg SIP message
 * @param key Field name
 *
 * @return 1 if a value was pushed, 0 if key is not a message field
 */
int lsip_msg_index(lua_State *L, const struct sip_msg *msg, const char *key)
{
	char buf[64];

	switch (key[0]) {

	case 'b':
		if (!strcmp(key, "body")) {
			lua_pushlstring(L, (const char *)mbuf_buf(msg->mb),
					mbuf_get_left(msg->mb));
			return 1;
		}
		break;

	case 'c':
		if (!strcmp(key, "call_id")) {
			lsip_pushpl(L, &msg->callid);
			return 1;
		}
		if (!strcmp(key, "cseq")) {
			lua_pushinteger(L, msg->cseq.num);
			return 1;
		}
		if (!strcmp(key, "cseq_method")) {
			lsip_pushpl(L, &msg->cseq.met);
			return 1;
		}
		if (!strcmp(key, "contact")) {
			push_contacts(L, msg);
			lua_rawgeti(L, -1, 1);
			return 1;
		}
		if (!strcmp(key, "contacts"))
			return push_contacts(L, msg);
		if (!strcmp(key, "content_type")) {
			lsip_pushpl(L, &msg->ctyp.type);
			if (pl_isset(&msg->ctyp.subtype)) {
				lua_pushliteral(L, "/");
				lsip_pushpl(L, &msg->ctyp.subtype);
				lua_concat(L, 3);
			}
			return 1;
		}
		break;

	case 'f':
		if (!strcmp(key, "from")) {
			push_taddr(L, &msg->from);
			return 1;
		}
		break;

	case 'h':
		if (!strcmp(key, "headers"))
			return push_all_headers(L, msg);
		break;

	case 'm':
		if (!strcmp(key, "method")) {
			lsip_pushpl(L, msg->req ? &msg->met : &msg->cseq.met);
			return 1;
		}
		if (!strcmp(key, "max_forwards")) {
			if (pl_isset(&msg->maxfwd))
				lua_pushinteger(L, pl_u32(&msg->maxfwd));
			else
				lua_pushnil(L);
			return 1;
		}
		break;

	case 'r':
		if (!strcmp(key, "reason")) {
			lsip_pushpl(L, &msg->reason);
			return 1;
		}
		if (!strcmp(key, "raw")) {
			lua_pushlstring(L, (const char *)msg->mb->buf,
					msg->mb->end);
			return 1;
		}
		break;

	case 's':
		if (!strcmp(key, "status")) {
			lua_pushinteger(L, msg->scode);
			return 1;
		}
		if (!strcmp(key, "source")) {
			re_snprintf(buf, sizeof(buf), "%J", &msg->src);
			lua_pushstring(L, buf);
			return 1;
		}
		if (!strcmp(key, "source_ip")) {
			re_snprintf(buf, sizeof(buf), "%j", &msg->src);
			lua_pushstring(L, buf);
			return 1;
		}
		if (!strcmp(key, "source_port")) {
			lua_pushinteger(L, sa_port(&msg->src));
			return 1;
		}
		break;

	case 't':
		if (!strcmp(key, "to")) {
			push_taddr(L, &msg->to);
			return 1;
		}
		if (!strcmp(key, "transport")) {
			lua_pushstring(L, lsip_tpname(msg->tp));
			return 1;
		}
		break;

	case 'u':
		if (!strcmp(key, "uri")) {
			push_uri(L, &msg->uri, &msg->ruri);
			return 1;
		}
		break;

	case 'v':
		if (!strcmp(key, "via")) {
			push_via(L, &msg->via);
			return 1;
		}
		break;
	}

	return 0;
}


/* shared __getfield body: box holds a struct whose first member is msg */
static const struct sip_msg *box_msg(lua_State *L)
{
	void **box = lua_touserdata(L, 1);
	const struct sip_msg **pmsg = box ? *box : NULL;

	return pmsg ? *pmsg : NULL;
}


/* msg:header(name) -> first value or nil */
static int l_msg_header(lua_State *L)
{
	const struct sip_msg *msg = box_msg(L);
	const char *name = luaL_checkstring(L, 2);

	if (!msg)
		return lsip_fail(L, ENOTCONN, "closed");

	return push_header(L, msg, name, false);
}


/* msg:header_all(name) -> { values } */
static int l_msg_header_all(lua_State *L)
{
	const struct sip_msg *msg = box_msg(L);
	const char *name = luaL_checkstring(L, 2);

	if (!msg)
		return lsip_fail(L, ENOTCONN, "closed");

	return push_header(L, msg, name, true);
}


/* __getfield for requests and responses */
static int l_msg_getfield(lua_State *L)
{
	const struct sip_msg *msg = box_msg(L);
	const char *key = lua_tostring(L, 2);

	if (!msg || !key)
		return 0;

	return lsip_msg_index(L, msg, key);
}


/**
 * Register the shared message accessors (used by request.c and call.c)
 *
 * Every box type whose struct starts with "const struct sip_msg *msg"
 * can use core._msg_header, _msg_header_all and _msg_getfield.
 *
 * @param L Lua state, module table on top
 *
 * @return 0
 */
int lsip_open_message(lua_State *L)
{
	lua_pushcfunction(L, l_msg_header);
	lua_setfield(L, -2, "_msg_header");
	lua_pushcfunction(L, l_msg_header_all);
	lua_setfield(L, -2, "_msg_header_all");
	lua_pushcfunction(L, l_msg_getfield);
	lua_setfield(L, -2, "_msg_getfield");
	return 0;
}
