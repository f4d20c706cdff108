/**
 * @file regex_diff.c  differential test: csrc/regex.c against libre's re_regex
 *
 * Built by `make difftest` (part of `make test`): csrc/regex.c compiled
 * with re_regex renamed to lsip_re_regex, linked with Debian's libre.so,
 * whose re_regex is libre's own. Every call goes to both with the same
 * input and twelve capture slots pre-filled with a sentinel; the return
 * codes and every slot (pointer and length, also after a failed match:
 * both write the captures of a partial attempt) must be equal.
 *
 * Inputs: libre's SIP/URI expressions on real header values, the same
 * values mutated byte by byte, random strings over a SIP alphabet, and
 * random expressions (classes, ranges, negation, "~", escapes,
 * quantifiers) printed into one reused buffer so that the cache by
 * address must notice a changed text.
 *
 *   regex_diff [iterations] [seed]    exit 0: all equal
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <stdbool.h>
#include <re.h>
#include "difftest.h"

int lsip_re_regex(const char *ptr, size_t len, const char *expr, ...);

enum { NPL = 12 };

static const char *exprs[] = {
	";[^;=]+[=]*[^;]*",
	"SIP[  \t\r\n]*/[ \t\r\n]*2.0[ \t\r\n]*/[ \t\r\n]*"
	"[A-Z]+[ \t\r\n]*[^; \t\r\n]+[ \t\r\n]*[^]*",
	"[ \t\r\n]*[^ \t\r\n;/]+[ \t\r\n]*/[ \t\r\n]*[^ \t\r\n;]+",
	"[0-9]+[ \t\r\n]+[^ \t\r\n]+",
	"[?&]1[^=]+=[^&]+",
	"[^ \t\r\n]+ [^ \t\r\n]+ [^\r\n]*[\r]*[\n]1",
	"[^:]+:[^/;? ]+[^;? ]*[^?]*[^]*",
	"[^:]+:[^@:]*[:]*[^@]*@[^/;? ]+[^;? ]*[^?]*[^]*",
	"[^:]+[:]*[0-9]*",
	"[^;]+[^]*",
	"[^]*",
	"[~ \t\r\n<]*[ \t\r\n]*<[^>]+>[^]*",
	"\\[[0-9a-f:]+\\][:]*[0-9]*",
	"[ \t\r\n]*[~;]+[;]*",
	"[0-9]+",
	";[ \t\r\n]*branch[ \t\r\n]*[=]*[ \t\r\n]*[~ \t\r\n;]*",
	"[a-z]+ sip:[^@]+@[0-9.]+",
	"SIP/2.0 [0-9]3 [^\r\n]*",
};

static const char *corpus[] = {
	"sip:service@127.0.0.1:5070",
	"sip:127.0.0.1:20870;lr",
	"sip:[::1]:5060;transport=tcp;lr",
	"sips:alice:secret@example.com:5061;user=phone?subject=hi&x=y",
	"<sip:127.0.0.1:20870;lr;ftag=1234>",
	"\"Alice \\\"A\\\"\" <sip:alice@atlanta.example.com>;tag=1928301774",
	"sipp <sip:sipp@127.0.0.1:20880>;tag=17953SIPpTag001",
	"service <sip:service@127.0.0.1:20870>",
	"SIP/2.0/UDP 127.0.0.1:20880;branch=z9hG4bK-17953-1-0",
	"SIP/2.0/TCP [2001:db8::1]:5060;rport=1234;received=10.0.0.1;branch=z9hG4bKabc",
	"SIP / 2.0 / UDP host.example.com ;branch=z9hG4bK776asdhds",
	"1 INVITE",
	"314159 BYE",
	"application/sdp",
	"multipart/mixed ; boundary=\"abc;def\"",
	"INVITE sip:service@127.0.0.1:5060 SIP/2.0\r\n",
	"SIP/2.0 200 OK\r\n",
	"<sip:a@b>, <sip:c@d;lr>",
	";lr;transport=udp;ttl=1",
	"tel:+1-201-555-0123",
	"sip:%61lice@example.com",
	"?a=1&b=2",
	"",
};

static const char alpha[] =
	"aAbBsSiIpPzZ09:@;?=&<>\"\\/ \t\r\n.,[]-_~^*+%#'!()0123456789";

static unsigned long calls, fails;

static int check(const char *p, size_t l, const char *expr)
{
	struct pl a[NPL], b[NPL];
	int ea, eb, i;
	static const char sent[] = "sentinel";

	for (i = 0; i < NPL; i++) {
		a[i].p = b[i].p = sent;
		a[i].l = b[i].l = 77;
	}
	ea = re_regex(p, l, expr, &a[0], &a[1], &a[2], &a[3], &a[4], &a[5],
		      &a[6], &a[7], &a[8], &a[9], &a[10], &a[11]);
	eb = lsip_re_regex(p, l, expr, &b[0], &b[1], &b[2], &b[3], &b[4],
			   &b[5], &b[6], &b[7], &b[8], &b[9], &b[10], &b[11]);
	++calls;

	bool same = (ea == 0) == (eb == 0);
	for (i = 0; i < NPL && same; i++)
		same = a[i].p == b[i].p && a[i].l == b[i].l;
	if (same)
		return 0;

	if (++fails <= 10) {
		printf("MISMATCH expr=\"%s\" input=\"%.*s\" libre=%d ours=%d\n",
		       expr, (int)l, p, ea, eb);
		for (i = 0; i < NPL; i++)
			printf("  [%d] libre=%ld/%zu ours=%ld/%zu\n", i,
			       a[i].p == sent ? -1 : (long)(a[i].p - p), a[i].l,
			       b[i].p == sent ? -1 : (long)(b[i].p - p), b[i].l);
	}
	return 1;
}

/* a random well-formed expression in libre's language. Malformed ones
 * (a class without quantifier, "[]") are left out: libre matches up to
 * the fault and may fill captures before returning EINVAL, csrc/regex.c
 * returns EINVAL at once; libre's callers pass none. */
static void rand_expr(char *e, size_t cap)
{
	static const char *cls[] = {
		"a-z", "A-Z", "0-9", "^:", "~;", "^ \t\r\n", "~ \t\r\n<",
		"0-9a-f:", "^@;?", "\\]", "a-", "^", "Z", "-z", "^A-Fx-", ":",
		"\"", "\\\\", "~", "^>", "a\\-z", "=&"
	};
	static const char *q[] = { "*", "+", "1", "2", "9", "*", "+" };
	static const char *lit[] = { "a", "S", ":", "@", ";", "\\[", "\\.",
		" ", "=", "<", "\\]", "/", "2.0", "z" };
	size_t n = 1 + rnd() % 6, i, o = 0;

	e[0] = '\0';
	for (i = 0; i < n && o + 24 < cap; i++) {
		if (rnd() % 3)
			o += (size_t)snprintf(e + o, cap - o, "[%s]%s",
					      cls[rnd() % 22], q[rnd() % 7]);
		else
			o += (size_t)snprintf(e + o, cap - o, "%s",
					      lit[rnd() % 14]);
	}
}

int main(int argc, char *argv[])
{
	unsigned long iters = argc > 1 ? strtoul(argv[1], NULL, 10) : 300000;
	size_t ne = sizeof(exprs) / sizeof(exprs[0]);
	size_t nc = sizeof(corpus) / sizeof(corpus[0]);
	char buf[256], ebuf[128];
	unsigned long it;
	size_t i, j, l;

	rnd_seed(argc, argv);

	for (i = 0; i < ne; i++)
		for (j = 0; j < nc; j++)
			check(corpus[j], strlen(corpus[j]), exprs[i]);

	for (it = 0; it < iters; it++) {
		switch (it % 4) {

		case 0:
		case 1:     /* libre's expressions, mutated real values */
			l = mutate(buf, sizeof(buf), corpus[rnd() % nc], alpha,
				   sizeof(alpha) - 1, 0);
			check(buf, l, exprs[rnd() % ne]);
			break;

		case 2:     /* random strings */
			l = rnd() % 40;
			for (i = 0; i < l; i++)
				buf[i] = alpha[rnd() % (sizeof(alpha) - 1)];
			check(buf, l, exprs[rnd() % ne]);
			break;

		default:    /* random expressions, one reused buffer */
			rand_expr(ebuf, sizeof(ebuf));
			l = mutate(buf, sizeof(buf), corpus[rnd() % nc], alpha,
				   sizeof(alpha) - 1, 0);
			check(buf, l, ebuf);
			break;
		}
	}

	printf("regex_diff: %lu calls, %lu mismatches\n", calls, fails);
	return fails ? 1 : 0;
}
