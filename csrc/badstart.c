/**
 * @file badstart.c  Requests libre's parser drops: bad start line, version
 *
 * libre 1.1.0 reads a start line whose last word is not exactly "SIP/2.0"
 * as a status line, fails it (status code 0) and drops the datagram, or
 * closes the TCP connection, without a word; a first line without three
 * words makes it wait for more bytes forever. RFC 3261 wants 505 for an
 * unknown version (8.2.2 / 21.5.20) and 400 for a malformed Request-Line,
 * where a response can be routed (18.2.2), and never an answer to ACK.
 *
 * UDP: every SIP UDP socket gets a udp helper that looks at the first line
 * of each datagram before libre's handler. A request with a bad start line
 * or version whose headers give a Via is answered here (to the Via's
 * received/rport address) and consumed; everything else goes on to libre.
 *
 * TCP/TLS (accepted connections): libre frames the stream itself and calls
 * sip_msg_decode() at each message start. A wrapper around that call, live
 * only while libre's SIP receive handler runs for a connection we accepted,
 * looks at a failed message: a bad start line with a routable Via gets its
 * 400/505 on the connection, then libre closes the connection (framing of
 * a message with a bad start line cannot be trusted). A bad first line
 * followed by a complete header block ends libre's endless wait the same
 * way. Finding the sockets and connections needs linker wraps
 * (-Wl,--wrap=...): libre hands out neither its transport sockets nor its
 * connections. udp_listen/tcp_listen are only touched while stack.c adds a
 * transport (lsip_badstart_capture()); tcp_listen's accept handler and
 * tcp_accept's receive handler are swapped for shims that call libre's.
 *
 * "sip/2.0" in lower case is a valid version (RFC 3261 7.1): it is
 * upper-cased in place so libre reads the request.
 */

#include "lsip.h"


enum {
	HELPER_LAYER = 100,   /* above libre's TLS (layer 0) */
};


enum start_kind {
	START_OK,       /* a Request-Line libre reads, or not ours to judge */
	START_CASE,     /* valid, but the version is not upper case         */
	START_BAD,      /* malformed Request-Line: 400                      */
	START_VERSION,  /* well-formed request, unknown version: 505        */
};


int __real_udp_listen(struct udp_sock **usp, const struct sa *local,
		      udp_recv_h *rh, void *arg);
int __real_tcp_listen(struct tcp_sock **tsp, const struct sa *local,
		      tcp_conn_h *ch, void *arg);
int __real_tcp_accept(struct tcp_conn **tcp, struct tcp_sock *ts,
		      tcp_estab_h *eh, tcp_recv_h *rh, tcp_close_h *ch,
		      void *arg);

int __wrap_sip_msg_decode(struct sip_msg **msgp, struct mbuf *mb);
int __wrap_udp_listen(struct udp_sock **usp, const struct sa *local,
		      udp_recv_h *rh, void *arg);
int __wrap_tcp_listen(struct tcp_sock **tsp, const struct sa *local,
		      tcp_conn_h *ch, void *arg);
int __wrap_tcp_accept(struct tcp_conn **tcp, struct tcp_sock *ts,
		      tcp_estab_h *eh, tcp_recv_h *rh, tcp_close_h *ch,
		      void *arg);


static bool capture;              /* stack.c is adding a SIP transport */
static tcp_conn_h *sip_connh;     /* libre's SIP accept handler        */
static tcp_recv_h *sip_recvh;     /* libre's SIP stream handler        */
static int accepting;             /* inside libre's SIP accept handler */
static struct tcp_conn *tcp_next; /* conn whose data comes next        */
static struct tcp_conn *tcp_scope;/* conn libre is decoding now        */


/**
 * Mark the sockets libre creates from now on as SIP transports (or stop)
 *
 * @param on True around sip_transp_add() for UDP, TCP and TLS
 */
void lsip_badstart_capture(bool on)
{
	capture = on;
}


static bool is_token(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		(c >= '0' && c <= '9') || strchr("-.!%*_+`'~", c);
}


/* SIP-Version = "SIP" "/" 1*DIGIT "." 1*DIGIT (case-insensitive) */
static bool is_version(const char *p, size_t n)
{
	size_t i = 4, d;

	if (n < 7 || strncasecmp(p, "SIP/", 4))
		return false;

	for (d = 0; i < n && p[i] >= '0' && p[i] <= '9'; ++i)
		++d;
	if (!d || i >= n || p[i] != '.')
		return false;
	for (++i, d = 0; i < n && p[i] >= '0' && p[i] <= '9'; ++i)
		++d;

	return d && i == n;
}


/*
 * Judge the first line of p[0..n). *linep: length of the line including
 * its line end; *verp: offset of the version. A line that is incomplete,
 * empty (keep-alive) or a status line is START_OK: libre decides.
 */
static enum start_kind start_classify(const char *p, size_t n,
				      size_t *linep, size_t *verp)
{
	const char *lf = memchr(p, '\n', n);
	size_t len, i, sp1 = 0, sp2 = 0;

	if (!lf)
		return START_OK;

	*linep = lf - p + 1;
	len = lf - p;
	while (len && p[len - 1] == '\r')
		--len;

	if (!len || (len >= 4 && !strncasecmp(p, "SIP/", 4)))
		return START_OK;

	for (i = 0; i < len; i++) {
		if (p[i] != ' ')
			continue;
		if (!sp1)
			sp1 = i;
		else if (!sp2)
			sp2 = i;
		else
			return START_BAD;      /* more than two SP */
	}

	if (!sp1 || !sp2 || sp2 == sp1 + 1 || sp2 + 1 == len)
		return START_BAD;

	for (i = 0; i < sp1; i++) {
		if (!is_token(p[i]))
			return START_BAD;
	}
	for (i = sp1 + 1; i < sp2; i++) {
		if ((unsigned char)p[i] <= ' ' || p[i] == 0x7f)
			return START_BAD;
	}

	*verp = sp2 + 1;
	if (!is_version(p + sp2 + 1, len - sp2 - 1))
		return START_BAD;
	if (!memcmp(p + sp2 + 1, "SIP/2.0", 7) && len - sp2 - 1 == 7)
		return START_OK;
	if (!strncasecmp(p + sp2 + 1, "SIP/2.0", 7) && len - sp2 - 1 == 7)
		return START_CASE;

	return START_VERSION;
}


/* end of the header block (after its empty line) at or after the first
 * line's LF, or 0 if it is not all there */
static size_t header_end(const char *p, size_t n, size_t line)
{
	size_t i;

	for (i = line - 1; i < n; i++) {
		size_t j = i + 1;

		if (p[i] != '\n')
			continue;
		while (j < n && p[j] == '\r')
			++j;
		if (j < n && p[j] == '\n')
			return j + 1;
	}

	return 0;
}


/* the response, routed like RFC 3261 18.2.2 and RFC 3581 */
static int reply_print(struct mbuf *mb, const struct sip_msg *msg,
		       uint16_t scode, const char *reason, bool *rportp)
{
	struct le *le;
	bool first = true;
	int err;

	err = mbuf_printf(mb, "SIP/2.0 %u %s\r\n", scode, reason);

	for (le = msg->hdrl.head; le && !err; le = le->next) {
		const struct sip_hdr *hdr = le->data;
		struct pl rp;

		switch (hdr->id) {

		case SIP_HDR_VIA:
			err = mbuf_printf(mb, "%r: ", &hdr->name);
			if (!first) {
				err |= mbuf_printf(mb, "%r\r\n", &hdr->val);
				break;
			}
			first = false;

			/* a bare ;rport gets the source port, and then
			 * ;received always */
			if (!msg_param_exists(&msg->via.params, "rport",
					      &rp)) {
				err |= mbuf_write_pl_skip(mb, &hdr->val, &rp);
				err |= mbuf_printf(mb, ";rport=%u",
						   sa_port(&msg->src));
				*rportp = true;
			}
			else {
				err |= mbuf_write_pl(mb, &hdr->val);
			}

			if (*rportp ||
			    !sa_cmp(&msg->src, &msg->via.addr, SA_ADDR))
				err |= mbuf_printf(mb, ";received=%j",
						   &msg->src);
			err |= mbuf_write_str(mb, "\r\n");
			break;

		case SIP_HDR_TO:
			err = mbuf_printf(mb, "%r: %r", &hdr->name, &hdr->val);
			if (!pl_isset(&msg->to.tag))
				err |= mbuf_printf(mb, ";tag=%016llx",
						   rand_u64());
			err |= mbuf_write_str(mb, "\r\n");
			break;

		case SIP_HDR_FROM:
		case SIP_HDR_CALL_ID:
		case SIP_HDR_CSEQ:
			err = mbuf_printf(mb, "%r: %r\r\n", &hdr->name,
					  &hdr->val);
			break;

		default:
			break;
		}
	}

	err |= mbuf_write_str(mb, "Content-Length: 0\r\n\r\n");
	mb->pos = 0;

	return err;
}


/*
 * Build the answer to the message at p[0..n) whose first line (line
 * bytes, version at ver) is bad. Returns ENODATA while the header block
 * is incomplete, EBADMSG when nothing can be answered (no Via, an ACK,
 * headers libre cannot read), else 0 with *mbp and *dst set.
 */
static int reply_make(struct mbuf **mbp, struct sa *dst, const char *p,
		      size_t n, size_t line, enum start_kind kind,
		      enum sip_transp tp, const struct sa *src)
{
	static const char fake[] = "OPTIONS sip:invalid SIP/2.0\r\n";
	struct sip_msg *msg = NULL;
	struct mbuf *hb, *mb = NULL;
	size_t end = header_end(p, n, line);
	bool rport = false;
	int err;

	if (!end)
		return ENODATA;

	if (n >= 4 && !memcmp(p, "ACK ", 4))
		return EBADMSG;

	/* libre reads the headers under a start line it accepts */
	hb = mbuf_alloc(sizeof(fake) + end - line);
	if (!hb)
		return ENOMEM;
	err = mbuf_write_str(hb, fake);
	err |= mbuf_write_mem(hb, (const uint8_t *)p + line, end - line);
	if (err)
		goto out;
	hb->pos = 0;

	if (lsip_msg_decode(&msg, hb)) {
		err = EBADMSG;
		goto out;
	}

	if (!pl_isset(&msg->via.sentby) || !pl_strcmp(&msg->cseq.met, "ACK")) {
		err = EBADMSG;
		goto out;
	}

	msg->src = *src;
	msg->tp = tp;

	mb = mbuf_alloc(512);
	if (!mb) {
		err = ENOMEM;
		goto out;
	}

	err = reply_print(mb, msg, kind == START_VERSION ? 505 : 400,
			  kind == START_VERSION ? "Version Not Supported" :
			  "Bad Request-Line", &rport);
	if (err)
		goto out;

	sip_reply_addr(dst, msg, rport);
	*mbp = mb;
	mb = NULL;

 out:
	mem_deref(mb);
	mem_deref(msg);
	mem_deref(hb);
	return err;
}


static void version_upcase(char *p, size_t ver)
{
	memcpy(p + ver, "SIP", 3);
}


/* UDP: one datagram, one message; answer and consume bad requests */
static bool udp_helper_recv(struct sa *src, struct mbuf *mb, void *arg)
{
	struct udp_sock *us = arg;
	char *p = (char *)mbuf_buf(mb);
	size_t n = mbuf_get_left(mb), line = 0, ver = 0;
	enum start_kind kind = start_classify(p, n, &line, &ver);
	struct mbuf *rmb = NULL;
	struct sa dst;

	switch (kind) {

	case START_OK:
		return false;

	case START_CASE:
		version_upcase(p, ver);
		return false;

	default:
		break;
	}

	/* nothing to answer: libre drops it (or reads its STUN) */
	if (reply_make(&rmb, &dst, p, n, line, kind, SIP_TRANSP_UDP, src))
		return false;

	lsip_mem_activity();
	(void)udp_send(us, &dst, rmb);
	mem_deref(rmb);

	return true;
}


int __wrap_udp_listen(struct udp_sock **usp, const struct sa *local,
		      udp_recv_h *rh, void *arg)
{
	int err = __real_udp_listen(usp, local, rh, arg);

	/* the socket owns the helper; the helper's arg is the socket */
	if (!err && capture)
		err = udp_register_helper(NULL, *usp, HELPER_LAYER, NULL,
					  udp_helper_recv, *usp);

	return err;
}


/* last helper before libre's stream handler: say which conn it is */
static bool tcp_helper_recv(int *err, struct mbuf *mb, bool *estab,
			    void *arg)
{
	(void)err;
	(void)mb;
	(void)estab;

	tcp_next = arg;
	return false;
}


static void sip_recv_shim(struct mbuf *mb, void *arg)
{
	struct tcp_conn *saved = tcp_scope;

	tcp_scope = tcp_next;
	tcp_next = NULL;
	sip_recvh(mb, arg);
	tcp_scope = saved;
}


static void sip_conn_shim(const struct sa *peer, void *arg)
{
	++accepting;
	sip_connh(peer, arg);
	--accepting;
}


int __wrap_tcp_listen(struct tcp_sock **tsp, const struct sa *local,
		      tcp_conn_h *ch, void *arg)
{
	if (capture && ch && (!sip_connh || sip_connh == ch)) {
		sip_connh = ch;
		ch = sip_conn_shim;
	}

	return __real_tcp_listen(tsp, local, ch, arg);
}


int __wrap_tcp_accept(struct tcp_conn **tcp, struct tcp_sock *ts,
		      tcp_estab_h *eh, tcp_recv_h *rh, tcp_close_h *ch,
		      void *arg)
{
	bool ours = accepting && rh && (!sip_recvh || sip_recvh == rh);
	int err;

	if (ours) {
		sip_recvh = rh;
		rh = sip_recv_shim;
	}

	err = __real_tcp_accept(tcp, ts, eh, rh, ch, arg);

	/* the connection owns the helper; its arg is the connection */
	if (!err && ours)
		err = tcp_register_helper(NULL, *tcp, HELPER_LAYER, NULL,
					  NULL, tcp_helper_recv, *tcp);

	return err;
}


/* a message libre could not decode on a connection we accepted */
static int tcp_failed(struct sip_msg **msgp, struct mbuf *mb, int err)
{
	char *p = (char *)mbuf_buf(mb);
	size_t n = mbuf_get_left(mb), line = 0, ver = 0;
	enum start_kind kind = start_classify(p, n, &line, &ver);
	struct mbuf *rmb = NULL;
	struct sa dst, peer;
	int rerr;

	switch (kind) {

	case START_OK:
		return err;

	case START_CASE:
		version_upcase(p, ver);
		return lsip_msg_decode(msgp, mb);

	default:
		break;
	}

	if (tcp_conn_peer_get(tcp_scope, &peer))
		return EBADMSG;

	rerr = reply_make(&rmb, &dst, p, n, line, kind, SIP_TRANSP_TCP,
			  &peer);
	if (rerr == ENODATA)
		return err;

	if (!rerr) {
		lsip_mem_activity();
		(void)tcp_send(tcp_scope, rmb);
		mem_deref(rmb);
	}

	/* libre closes the connection */
	return EBADMSG;
}


int __wrap_sip_msg_decode(struct sip_msg **msgp, struct mbuf *mb)
{
	int err = lsip_msg_decode(msgp, mb);

	if (!err || !tcp_scope || !mb || err == ENOMEM)
		return err;

	return tcp_failed(msgp, mb, err);
}
