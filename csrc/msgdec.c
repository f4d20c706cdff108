/**
 * @file msgdec.c  SIP message decoding: libre's sip_msg_decode, faster
 *
 * libre 1.1.0 decodes a message's header section one byte at a time
 * through a switch with its whole state (folding, trailing white space,
 * comma-separated values, quotes) checked at every byte: in callgrind
 * about 12,000 instructions per message of its own, a fifth of a proxied
 * call. lsip_msg_decode keeps that state machine, byte for byte the same
 * transitions, but a byte that can only extend the current header name or
 * value (most of them) is passed over in a table-driven run. The structure
 * it builds is libre's: a struct sip_msg with its header list and hash
 * (32 buckets, ids as libre computes them), the same parsed fields (first
 * Via, To, From, CSeq, Content-Type and the cached values) from libre's
 * own decoders, the same errors. `make difftest` compares it with libre's
 * function on real messages, their mutations and random header lines
 * (tools/difftest/msgdec_diff.c).
 *
 * badstart.c's wrapper of sip_msg_decode calls this instead of libre's.
 */

#include "lsip.h"


enum {
	HDR_BUCKETS = 32,
	STARTLINE_MAX = 8192,
};

/* bytes that end a run */
enum {
	S_NAME  = 1,   /* in a name: white space, CR, LF, ':' */
	S_VAL   = 2,   /* in a value: white space, CR, LF, '"' (quotes
			* are counted in every value: the state carries over
			* to the first byte of the next header's value) */
	S_LIST  = 4,   /* in a comma-separated value: also ',' */
};

static uint8_t stop[256];
static bool stop_ready;


static void stop_init(void)
{
	static const char ws[] = " \t\r\n";
	int i;

	for (i = 0; ws[i]; i++)
		stop[(uint8_t)ws[i]] = S_NAME | S_VAL | S_LIST;
	stop[':'] |= S_NAME;
	stop[','] |= S_LIST;
	stop['"'] |= S_VAL | S_LIST;
	stop_ready = true;
}


/*
 * Headers are no mem objects here: libre allocates each one (and each
 * message's hash table) on its own, ten or more mallocs and frees per
 * message. Nothing outside holds a header (sip_msg_hdr() and friends hand
 * out const pointers into the message), so they live in blocks of
 * HDR_BLOCK that the message's destructor gives back to a pool, as it does
 * the cleared hash table: a message in the steady state costs one malloc
 * (the message itself, small enough for glibc's thread cache).
 */
enum {
	HDR_BLOCK = 9,            /* a block fits in glibc's tcache sizes */
	BLOCK_POOL = 512,
	HT_POOL = 64,
};

struct hdr_block {
	struct hdr_block *next;
	uint32_t n;
	struct sip_hdr hdr[HDR_BLOCK];
};

struct msg_box {
	struct sip_msg msg;       /* first: the pointer callers get */
	struct hdr_block *blocks; /* the newest first */
};

static struct hash *ht_pool[HT_POOL];
static uint32_t ht_pooled;
static struct hdr_block *block_pool;
static uint32_t blocks_pooled;


static int ht_get(struct hash **hp)
{
	if (ht_pooled) {
		*hp = ht_pool[--ht_pooled];
		return 0;
	}
	return hash_alloc(hp, HDR_BUCKETS);
}


static void ht_put(struct hash *ht)
{
	if (!ht)
		return;
	hash_clear(ht);           /* unlinks the headers, frees nothing */
	if (ht_pooled < HT_POOL)
		ht_pool[ht_pooled++] = ht;
	else
		mem_deref(ht);
}


static struct hdr_block *block_get(void)
{
	struct hdr_block *b = block_pool;

	if (b) {
		block_pool = b->next;
		--blocks_pooled;
	}
	else {
		b = mem_alloc(sizeof(*b), NULL);
		if (!b)
			return NULL;
	}
	b->next = NULL;
	b->n = 0;
	return b;
}


static void block_put(struct hdr_block *b)
{
	if (blocks_pooled < BLOCK_POOL) {
		b->next = block_pool;
		block_pool = b;
		++blocks_pooled;
	}
	else {
		mem_deref(b);
	}
}


/**
 * Free the pooled header tables and blocks (at exit)
 */
void lsip_msgdec_flush(void)
{
	struct hdr_block *b;

	while (ht_pooled)
		mem_deref(ht_pool[--ht_pooled]);
	while ((b = block_pool)) {
		block_pool = b->next;
		mem_deref(b);
	}
	blocks_pooled = 0;
}


static void msg_destructor(void *arg)
{
	struct msg_box *box = arg;
	struct hdr_block *b;

	ht_put(box->msg.hdrht);   /* the line list goes with the blocks */
	while ((b = box->blocks)) {
		box->blocks = b->next;
		block_put(b);
	}
	mem_deref(box->msg.sock);
	mem_deref(box->msg.mb);
}


static struct sip_hdr *hdr_new(struct msg_box *box)
{
	struct hdr_block *b = box->blocks;

	if (!b || b->n == HDR_BLOCK) {
		b = block_get();
		if (!b)
			return NULL;
		b->next = box->blocks;
		box->blocks = b;
	}
	return memset(&b->hdr[b->n++], 0, sizeof(struct sip_hdr));
}


/* the header id libre gives a name (unknown and X- names: NONE or a hash
 * that is no known id) */
static enum sip_hdrid name_id(const struct pl *name)
{
	static const enum sip_hdrid compact[26] = {
		['a' - 'a'] = SIP_HDR_ACCEPT_CONTACT,
		['b' - 'a'] = SIP_HDR_REFERRED_BY,
		['c' - 'a'] = SIP_HDR_CONTENT_TYPE,
		['d' - 'a'] = SIP_HDR_REQUEST_DISPOSITION,
		['e' - 'a'] = SIP_HDR_CONTENT_ENCODING,
		['f' - 'a'] = SIP_HDR_FROM,
		['i' - 'a'] = SIP_HDR_CALL_ID,
		['j' - 'a'] = SIP_HDR_REJECT_CONTACT,
		['k' - 'a'] = SIP_HDR_SUPPORTED,
		['l' - 'a'] = SIP_HDR_CONTENT_LENGTH,
		['m' - 'a'] = SIP_HDR_CONTACT,
		['n' - 'a'] = SIP_HDR_IDENTITY_INFO,
		['o' - 'a'] = SIP_HDR_EVENT,
		['r' - 'a'] = SIP_HDR_REFER_TO,
		['s' - 'a'] = SIP_HDR_SUBJECT,
		['t' - 'a'] = SIP_HDR_TO,
		['u' - 'a'] = SIP_HDR_ALLOW_EVENTS,
		['v' - 'a'] = SIP_HDR_VIA,
		['x' - 'a'] = SIP_HDR_SESSION_EXPIRES,
		['y' - 'a'] = SIP_HDR_IDENTITY,
	};
	int c;

	if (!name->l)
		return SIP_HDR_NONE;

	if (name->l > 1) {
		if ((name->p[0] == 'x' || name->p[0] == 'X') &&
		    name->p[1] == '-')
			return SIP_HDR_NONE;
		return (enum sip_hdrid)(hash_joaat_ci(name->p, name->l) &
					0xfff);
	}

	c = name->p[0] | 0x20;
	if (c < 'a' || c > 'z' || !compact[c - 'a'])
		return SIP_HDR_NONE;
	return compact[c - 'a'];
}


/* headers whose value is a comma-separated list (each element is also a
 * header of its own in the hash) */
static bool list_id(enum sip_hdrid id)
{
	switch (id) {

	case SIP_HDR_ACCEPT:
	case SIP_HDR_ACCEPT_CONTACT:
	case SIP_HDR_ACCEPT_ENCODING:
	case SIP_HDR_ACCEPT_LANGUAGE:
	case SIP_HDR_ACCEPT_RESOURCE_PRIORITY:
	case SIP_HDR_ALERT_INFO:
	case SIP_HDR_ALLOW:
	case SIP_HDR_ALLOW_EVENTS:
	case SIP_HDR_AUTHENTICATION_INFO:
	case SIP_HDR_CALL_INFO:
	case SIP_HDR_CONTACT:
	case SIP_HDR_CONTENT_ENCODING:
	case SIP_HDR_CONTENT_LANGUAGE:
	case SIP_HDR_ERROR_INFO:
	case SIP_HDR_HISTORY_INFO:
	case SIP_HDR_IN_REPLY_TO:
	case SIP_HDR_P_ASSERTED_IDENTITY:
	case SIP_HDR_P_ASSOCIATED_URI:
	case SIP_HDR_P_EARLY_MEDIA:
	case SIP_HDR_P_MEDIA_AUTHORIZATION:
	case SIP_HDR_P_PREFERRED_IDENTITY:
	case SIP_HDR_P_REFUSED_URI_LIST:
	case SIP_HDR_P_VISITED_NETWORK_ID:
	case SIP_HDR_PATH:
	case SIP_HDR_PERMISSION_MISSING:
	case SIP_HDR_PROXY_REQUIRE:
	case SIP_HDR_REASON:
	case SIP_HDR_RECORD_ROUTE:
	case SIP_HDR_REJECT_CONTACT:
	case SIP_HDR_REQUEST_DISPOSITION:
	case SIP_HDR_REQUIRE:
	case SIP_HDR_RESOURCE_PRIORITY:
	case SIP_HDR_ROUTE:
	case SIP_HDR_SECURITY_CLIENT:
	case SIP_HDR_SECURITY_SERVER:
	case SIP_HDR_SECURITY_VERIFY:
	case SIP_HDR_SERVICE_ROUTE:
	case SIP_HDR_SUPPORTED:
	case SIP_HDR_TRIGGER_CONSENT:
	case SIP_HDR_UNSUPPORTED:
	case SIP_HDR_VIA:
	case SIP_HDR_WARNING:
		return true;

	default:
		return false;
	}
}


/*
 * One header (or list element): `hashed` puts it in the hash (an element,
 * or a whole value that is no list), `listed` in the line list. Via and
 * Route are the exception: each element goes in both, the whole line in
 * neither. Then the fields libre caches are filled.
 */
static int hdr_put(struct sip_msg *msg, const struct pl *name,
		   enum sip_hdrid id, const char *p, ptrdiff_t l, bool hashed,
		   bool listed)
{
	struct sip_hdr *hdr;
	int err = 0;

	if (id == SIP_HDR_VIA || id == SIP_HDR_ROUTE) {
		if (!hashed)
			return 0;       /* a whole line: neither, no field */
		listed = true;
	}

	hdr = hdr_new((struct msg_box *)msg);
	if (!hdr)
		return ENOMEM;

	hdr->name = *name;
	hdr->val.p = p;
	hdr->val.l = l > 0 ? (size_t)l : 0;
	hdr->id = id;

	if (hashed)
		hash_append(msg->hdrht, id, &hdr->he, hdr);
	if (listed)
		list_append(&msg->hdrl, &hdr->le, hdr);

	switch (id) {

	case SIP_HDR_VIA:
		if (hashed && !pl_isset(&msg->via.sentby))
			err = sip_via_decode(&msg->via, &hdr->val);
		break;

	case SIP_HDR_TO:
	case SIP_HDR_FROM: {
		struct sip_taddr *ta = id == SIP_HDR_TO ? &msg->to :
			&msg->from;

		err = sip_addr_decode((struct sip_addr *)ta, &hdr->val);
		if (err)
			break;
		(void)msg_param_decode(&ta->params, "tag", &ta->tag);
		ta->val = hdr->val;
		break;
	}

	case SIP_HDR_CALL_ID:
		msg->callid = hdr->val;
		break;

	case SIP_HDR_CSEQ:
		err = sip_cseq_decode(&msg->cseq, &hdr->val);
		break;

	case SIP_HDR_MAX_FORWARDS:
		msg->maxfwd = hdr->val;
		break;

	case SIP_HDR_CONTENT_TYPE:
		err = msg_ctype_decode(&msg->ctyp, &hdr->val);
		break;

	case SIP_HDR_CONTENT_LENGTH:
		msg->clen = hdr->val;
		break;

	case SIP_HDR_EXPIRES:
		msg->expires = hdr->val;
		break;

	default:
		break;
	}

	return err;
}


/* the header section from p: 0 at its end (*endp after the empty line),
 * ENODATA if it does not end before e */
static int headers(struct sip_msg *msg, const char *p, const char *e,
		   const char **endp)
{
	struct pl name = PL_INIT;
	const char *v = NULL;      /* the line's value */
	const char *cv = NULL;     /* the current list element */
	enum sip_hdrid id = SIP_HDR_NONE;
	bool comsep = false, quote = false, eoh;
	uint32_t ws = 0, lf = 0;
	int err;

	for (; p < e; p++) {
		uint8_t c = (uint8_t)*p;

		eoh = false;
		if (c == ' ' || c == '\t') {
			lf = 0;            /* folded line */
			++ws;
			continue;
		}
		if (c == '\r') {
			++ws;
			continue;
		}
		if (c == '\n') {
			++ws;
			if (!lf++)
				continue;
			eoh = true;        /* an empty line */
			++p;
		}

		if (lf || (!eoh && c == ',' && comsep && !quote)) {
			if (!name.l)
				return EBADMSG;

			err = hdr_put(msg, &name, id, cv ? cv : p,
				      cv ? p - cv - (ptrdiff_t)ws : 0, true,
				      cv == v && lf);
			if (err)
				return err;

			if (!lf) {         /* the next element */
				cv = NULL;
				continue;
			}

			if (cv != v) {     /* the whole line of a list */
				err = hdr_put(msg, &name, id, v ? v : p,
					      v ? p - v - (ptrdiff_t)ws : 0,
					      false, true);
				if (err)
					return err;
			}

			if (eoh) {
				*endp = p;
				return 0;
			}

			comsep = false;
			name.p = NULL;
			cv = v = NULL;
			lf = 0;
		}

		if (!name.p) {
			name.p = p;
			name.l = 0;
			ws = 0;
		}

		if (!name.l) {
			if (c != ':') {
				ws = 0;
				/* the rest of the name */
				while (p + 1 < e && !(stop[(uint8_t)p[1]] &
						      S_NAME))
					++p;
				continue;
			}

			name.l = p - name.p > (ptrdiff_t)ws ?
				(size_t)(p - name.p - ws) : 0;
			if (!name.l)
				return EBADMSG;

			id = name_id(&name);
			comsep = list_id(id);
			continue;
		}

		if (!cv) {
			quote = false;
			cv = p;
		}
		if (!v)
			v = p;
		if (c == '"')
			quote = !quote;
		ws = 0;

		/* the rest of the value up to white space or a quote (a
		 * list: up to a comma too) */
		{
			const uint8_t m = comsep ? S_LIST : S_VAL;

			while (p + 1 < e && !(stop[(uint8_t)p[1]] & m))
				++p;
		}
	}

	return ENODATA;
}


/**
 * Decode a SIP message from mb's position (libre's sip_msg_decode)
 *
 * @param msgp The message, on success
 * @param mb   Buffer; its position is moved to the body
 *
 * @return 0 if success, ENODATA if the header section is incomplete,
 *         EBADMSG if malformed, or an error of a header's decoder
 */
int lsip_msg_decode(struct sip_msg **msgp, struct mbuf *mb)
{
	struct pl x, y, z, e;
	struct sip_msg *msg;
	const char *p, *end = NULL;
	size_t l;
	int err;

	if (!msgp || !mb)
		return EINVAL;

	if (!stop_ready)
		stop_init();

	p = (const char *)mbuf_buf(mb);
	l = mbuf_get_left(mb);

	/* no start line yet: more may come on a stream, unless 8 KB came */
	if (re_regex(p, l, "[^ \t\r\n]+ [^ \t\r\n]+ [^\r\n]*[\r]*[\n]1",
		     &x, &y, &z, NULL, &e) || x.p != p)
		return l > STARTLINE_MAX ? EBADMSG : ENODATA;

	msg = mem_zalloc(sizeof(struct msg_box), msg_destructor);
	if (!msg)
		return ENOMEM;

	err = ht_get(&msg->hdrht);
	if (err)
		goto out;

	msg->tag = rand_u64();
	msg->mb = mem_ref(mb);
	msg->req = !pl_strcmp(&z, "SIP/2.0");

	if (msg->req) {
		msg->met = x;
		msg->ruri = y;
		msg->ver = z;
		if (uri_decode(&msg->uri, &y)) {
			err = EBADMSG;
			goto out;
		}
	}
	else {
		msg->ver = x;
		msg->scode = pl_u32(&y);
		msg->reason = z;
		if (!msg->scode) {
			err = EBADMSG;
			goto out;
		}
	}

	err = headers(msg, e.p + e.l, p + l, &end);

 out:
	if (err) {
		mem_deref(msg);
		return err;
	}

	mb->pos = end - (const char *)mb->buf;
	*msgp = msg;
	return 0;
}
