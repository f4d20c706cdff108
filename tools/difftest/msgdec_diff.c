/**
 * @file msgdec_diff.c  differential test: csrc/msgdec.c against libre
 *
 * Built by `make difftest` (part of `make test`): csrc/msgdec.c linked with
 * Debian's libre.so. Each input is decoded by libre's sip_msg_decode and
 * by lsip_msg_decode from the same buffer; the return codes, the buffer
 * position after it, every parsed field (start line, Request-URI, first
 * Via, To, From, CSeq, Content-Type, the cached values, byte for byte)
 * and the headers, in the line list and in each hash bucket, in order
 * (name, value, id), must be equal.
 *
 * Inputs: requests and responses as sipp, baresip and luasip send them
 * and RFC 3261's examples (folded lines, compact names, lists, quoted
 * commas, empty values, bare LF, a missing colon, incomplete messages),
 * the same mutated byte by byte, and messages of random header lines.
 *
 *   msgdec_diff [iterations] [seed]    exit 0: all equal
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <stdbool.h>
#include <re.h>
#include "difftest.h"

int lsip_msg_decode(struct sip_msg **msgp, struct mbuf *mb);
void lsip_msgdec_flush(void);

static const char *corpus[] = {
	"INVITE sip:service@127.0.0.1:5060 SIP/2.0\r\n"
	"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-17953-1-0\r\n"
	"From: sipp <sip:sipp@127.0.0.1:5061>;tag=17953SIPpTag001\r\n"
	"To: service <sip:service@127.0.0.1:5060>\r\n"
	"Call-ID: 1-17953@127.0.0.1\r\n"
	"CSeq: 1 INVITE\r\n"
	"Contact: sip:sipp@127.0.0.1:5061\r\n"
	"Max-Forwards: 70\r\n"
	"Subject: Performance Test\r\n"
	"Content-Type: application/sdp\r\n"
	"Content-Length:   129\r\n"
	"\r\n"
	"v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\n",

	"SIP/2.0 200 OK\r\n"
	"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKabc;rport=5060, "
	"SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1-0\r\n"
	"Record-Route: <sip:127.0.0.1:5060;lr;ftag=x>,<sip:10.0.0.1;lr>\r\n"
	"From: sipp <sip:sipp@127.0.0.1:5061>;tag=17953SIPpTag001\r\n"
	"To: <sip:service@127.0.0.1:5060>;tag=abc\r\n"
	"Call-ID: 1-17953@127.0.0.1\r\n"
	"CSeq: 1 INVITE\r\n"
	"Contact: <sip:127.0.0.1:5070;transport=UDP>\r\n"
	"Allow: INVITE, ACK, BYE, CANCEL, OPTIONS\r\n"
	"Supported: replaces,timer\r\n"
	"Content-Length: 0\r\n"
	"\r\n",

	"REGISTER sip:registrar.biloxi.com SIP/2.0\r\n"
	"Via: SIP/2.0/UDP bobspc.biloxi.com:5060;branch=z9hG4bKnashds7\r\n"
	"Max-Forwards: 70\r\n"
	"To: Bob <sip:bob@biloxi.com>\r\n"
	"From: Bob <sip:bob@biloxi.com>;tag=456248\r\n"
	"Call-ID: 843817637684230@998sdasdh09\r\n"
	"CSeq: 1826 REGISTER\r\n"
	"Contact: \"Bob, the Builder\" <sip:bob@192.0.2.4>;q=0.7, "
	"<sip:bob@192.0.2.5>;expires=60\r\n"
	"Contact: *\r\n"
	"Expires: 7200\r\n"
	"Authorization: Digest username=\"bob\", realm=\"biloxi.com\",\r\n"
	" nonce=\"dcd98b\", uri=\"sip:biloxi.com\", response=\"6629fae4\"\r\n"
	"Content-Length: 0\r\n"
	"\r\n",

	"BYE sip:alice@pc33.atlanta.com SIP/2.0\n"
	"v: SIP/2.0/TCP 192.0.2.4;branch=z9hG4bKnashds10\n"
	"f: <sip:bob@biloxi.com>;tag=a6c85cf\n"
	"t: <sip:alice@atlanta.com>;tag=1928301774\n"
	"i: a84b4c76e66710\n"
	"CSeq: 231 BYE\n"
	"l: 0\n"
	"\n",

	"OPTIONS sip:carol@chicago.com SIP/2.0\r\n"
	"Via: SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bKhjhs8ass877\r\n"
	"Max-Forwards: 70\r\n"
	"To: <sip:carol@chicago.com>\r\n"
	"From: Alice <sip:alice@atlanta.com>;tag=1928301774\r\n"
	"Call-ID: a84b4c76e66710\r\n"
	"CSeq: 63104 OPTIONS\r\n"
	"X-Empty:\r\n"
	"X-Spaces:    \r\n"
	"Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>\r\n"
	"Accept: application/sdp, text/plain\r\n"
	"Warning: 399 host \"a, b\", 399 host2 \"c\"\r\n"
	"Subject :  spaced  name \r\n"
	"Content-Type: text/plain ; charset=utf-8\r\n"
	"Content-Length: 0\r\n"
	"\r\n",

	"MESSAGE sip:bob@127.0.0.1 SIP/2.0\r\n"
	"Via: SIP/2.0/UDP 127.0.0.1:1;branch=z9hG4bKrtx1;rport\r\n"
	"Via: SIP/2.0/UDP 127.0.0.1:2;branch=z9hG4bKrtx2\r\n"
	"Max-Forwards: 70\r\n"
	"From: <sip:raw@127.0.0.1>;tag=rtx1\r\n"
	"To: <sip:bob@127.0.0.1>\r\n"
	"Call-ID: rtx1@127.0.0.1\r\n"
	"CSeq: 1 MESSAGE\r\n"
	"Content-Type: text/plain\r\n"
	"Content-Length: 2\r\n\r\nhi",

	"SIP/2.0 180 Ringing\r\n"
	"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1-0\r\n"
	"Missing colon here\r\n"
	"\r\n",

	"SIP/2.0 100 Trying\r\n"
	"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1-0\r\n"
	"Call-ID: incomplete\r\n",

	"ACK sip:bob@127.0.0.1 SIP/2.0\r\n"
	"Via: SIP/2.0/UDP 127.0.0.1:1;branch=z9hG4bKa\r\n"
	"Route: <sip:127.0.0.1:5060;lr>\r\n"
	"Contact: <sip:a@b>,\r\n"
	"Supported: ,timer, ,\r\n"
	"Allow: \"INVITE,ACK\" , BYE\r\n"
	"\tX-Folded: continues\r\n"
	"CSeq: 1 ACK\r\n"
	"\r\n",

	"SIP/2.0 200 OK\r\n"      /* more headers than one block holds */
	"Via: SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b, SIP/2.0/UDP c\r\n"
	"Contact: <sip:1@h>, <sip:2@h>, <sip:3@h>, <sip:4@h>, <sip:5@h>,"
	" <sip:6@h>, <sip:7@h>, <sip:8@h>, <sip:9@h>, <sip:10@h>\r\n"
	"Allow: A, B, C, D, E, F, G, H, I, J, K, L, M, N, O, P, Q\r\n"
	"Supported: a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p\r\n"
	"Call-ID: many\r\nCSeq: 1 REGISTER\r\n"
	"\r\n",

	"SIP/2.0 0 Bad\r\nVia: SIP/2.0/UDP h\r\n\r\n",
	"INVITE  sip:a@b SIP/2.0\r\n\r\n",
	"INVITE sip:a@b SIP/2.0\r\n\r\nVia: x\r\n\r\n",
	"garbage\r\n\r\n",
	"",
};

static const char alpha[] =
	"aAvViI:;,\"<>@ \t\r\n\r\n\r\n.=-_0123456789xX";

static const char *lines[] = {
	"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1",
	"v: SIP/2.0/TCP h;branch=z9hG4bK2, SIP/2.0/UDP g",
	"To: <sip:a@b>;tag=1", "t: sip:a@b", "From: A <sip:a@b>;tag=2",
	"f:<sip:x@y>", "Call-ID: abc", "i: x", "CSeq: 1 INVITE", "CSeq: x",
	"Contact: <sip:a@b>, <sip:c@d>", "m: *", "Route: <sip:r;lr>",
	"Record-Route: <sip:r1;lr>,<sip:r2;lr>", "Max-Forwards: 70",
	"Expires: 60", "Content-Length: 0", "l: 10", "Content-Type: a/b",
	"c: application/sdp", "Supported: a, b", "k: timer",
	"X-Custom: \"q,q\", r", "Allow: A,B,,C", " folded", "\tfolded",
	"NoColon", ":novalue", "Empty:", "Spaced  :  v  ", "Warning: ,",
};

static unsigned long calls, fails, decoded;

static bool pl_same(const struct pl *a, const struct pl *b)
{
	return a->p == b->p && a->l == b->l;
}

static bool hdr_same(const struct sip_hdr *a, const struct sip_hdr *b)
{
	return pl_same(&a->name, &b->name) && pl_same(&a->val, &b->val) &&
		a->id == b->id;
}

static bool list_same(const struct list *a, const struct list *b)
{
	const struct le *x = list_head(a), *y = list_head(b);

	for (; x && y; x = x->next, y = y->next)
		if (!hdr_same(x->data, y->data))
			return false;
	return !x && !y;
}

static const char *msg_diff(const struct sip_msg *a, const struct sip_msg *b)
{
	uint32_t i;

#define SAME_PL(f) if (!pl_same(&a->f, &b->f)) return #f
#define SAME_MEM(f) if (memcmp(&a->f, &b->f, sizeof(a->f))) return #f
	SAME_PL(ver); SAME_PL(met); SAME_PL(ruri); SAME_MEM(uri);
	SAME_PL(reason); SAME_MEM(via); SAME_MEM(to); SAME_MEM(from);
	SAME_MEM(cseq); SAME_MEM(ctyp); SAME_PL(callid); SAME_PL(maxfwd);
	SAME_PL(expires); SAME_PL(clen);
	if (a->scode != b->scode) return "scode";
	if (a->req != b->req) return "req";
	if (a->mb != b->mb) return "mb";
	if (!list_same(&a->hdrl, &b->hdrl)) return "hdrl";
	if (hash_bsize(a->hdrht) != hash_bsize(b->hdrht)) return "hash size";
	for (i = 0; i < hash_bsize(a->hdrht); i++) {
		if (!list_same(hash_list(a->hdrht, i), hash_list(b->hdrht, i)))
			return "hash bucket";
	}
	return NULL;
}

static void check(const char *p, size_t l)
{
	struct mbuf *mb = mbuf_alloc(l + 1);
	struct sip_msg *a = NULL, *b = NULL;
	size_t pa, pb;
	const char *why = NULL;
	int ea, eb;

	(void)mbuf_write_mem(mb, (const uint8_t *)p, l);
	mb->pos = 0;
	ea = sip_msg_decode(&a, mb);
	pa = mb->pos;
	mb->pos = 0;
	eb = lsip_msg_decode(&b, mb);
	pb = mb->pos;
	++calls;

	if (ea != eb)
		why = "return code";
	else if (pa != pb)
		why = "position";
	else if (!ea && (why = msg_diff(a, b)) == NULL)
		++decoded;

	if (why && ++fails <= 10)
		printf("MISMATCH (%s) libre=%d ours=%d input=\"%.*s\"\n", why,
		       ea, eb, (int)l, p);

	mem_deref(a);
	mem_deref(b);
	mem_deref(mb);
}

static size_t random_msg(char *buf, size_t cap)
{
	size_t nl = sizeof(lines) / sizeof(lines[0]);
	int n = rnd() % 12, i;
	size_t l;

	l = (size_t)snprintf(buf, cap, "%s", rnd() % 2 ?
			     "INVITE sip:a@127.0.0.1 SIP/2.0\r\n" :
			     "SIP/2.0 200 OK\r\n");
	for (i = 0; i < n && l + 100 < cap; i++)
		l += (size_t)snprintf(buf + l, cap - l, "%s%s",
				      lines[rnd() % nl],
				      rnd() % 8 ? "\r\n" : "\n");
	if (rnd() % 6 && l + 3 < cap)
		l += (size_t)snprintf(buf + l, cap - l, "\r\n");
	return l;
}

int main(int argc, char *argv[])
{
	unsigned long iters = argc > 1 ? strtoul(argv[1], NULL, 10) : 200000;
	size_t nc = sizeof(corpus) / sizeof(corpus[0]);
	char buf[2048];
	unsigned long it;
	size_t i, l;

	rnd_seed(argc, argv);

	for (i = 0; i < nc; i++)
		check(corpus[i], strlen(corpus[i]));
	{
		/* no start line within 8 KB and more */
		static char big[9000];

		for (i = 0; i < sizeof(big); i++)
			big[i] = alpha[i % (sizeof(alpha) - 1)] == '\n' ?
				'x' : alpha[i % (sizeof(alpha) - 1)];
		check(big, 8192);
		check(big, sizeof(big));
	}

	for (it = 0; it < iters; it++) {
		if (it % 3 == 2)
			l = random_msg(buf, sizeof(buf));
		else
			l = mutate(buf, sizeof(buf), corpus[rnd() % nc],
				   alpha, sizeof(alpha) - 1, 1);
		check(buf, l);
	}

	lsip_msgdec_flush();
	printf("msgdec_diff: %lu messages, %lu decoded alike, "
	       "%lu mismatches\n", calls, decoded, fails);
	if (decoded < calls / 4) {
		printf("msgdec_diff: too few messages decoded\n");
		return 1;
	}
	return fails ? 1 : 0;
}
