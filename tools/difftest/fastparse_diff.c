/**
 * @file fastparse_diff.c  differential test: csrc/fastparse.c against libre
 *
 * Built by `make difftest` (part of `make test`): csrc/fastparse.c compiled
 * with its wrappers renamed (lsip_uri_decode, lsip_sip_addr_decode,
 * lsip_sip_via_decode) and its fall-backs bound to Debian's libre.so.
 * Every input goes to both; the return codes and the whole decoded struct
 * (byte for byte, after both were pre-filled with the same garbage: every
 * pointer into the input and every empty capture must be libre's) must be
 * equal.
 *
 * Inputs: URIs, To/From/Contact and Via values seen on the wire (sipp, baresip,
 * luasip, RFC 3261 examples), the same mutated byte by byte, and random
 * strings. The fast path must also have taken a fair share of them (it
 * would pass trivially by always falling back).
 *
 *   fastparse_diff [iterations] [seed]    exit 0: all equal
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <stdbool.h>
#include <re.h>
#include "difftest.h"

int lsip_uri_decode(struct uri *uri, const struct pl *pl);
int lsip_sip_addr_decode(struct sip_addr *addr, const struct pl *pl);
int lsip_sip_via_decode(struct sip_via *via, const struct pl *pl);
extern unsigned long lsip_fastparse_hits;

static const char *corpus[] = {
	"sip:service@127.0.0.1:5070",
	"sip:service@127.0.0.1:5070;transport=udp",
	"sip:127.0.0.1:20870;lr",
	"sip:127.0.0.1:20870;lr;ftag=1234",
	"sip:[::1]:5060;transport=tcp;lr",
	"sips:alice:secret@example.com:5061;user=phone?subject=hi&x=y",
	"sip:alice@atlanta.example.com",
	"sip:bob@biloxi.example.com;transport=tcp?Subject=x",
	"sip:+12125551212@gw.example.com;user=phone",
	"sip:alice@10.0.0.1:65535",
	"sip:alice@10.0.0.1:0",
	"sip:alice@256.1.1.1",
	"sip:alice@1.2.3",
	"sip:a;b@host",
	"sip:host;maddr=x@y",
	"sip:user@host:5060abc",
	"sip:user@host:",
	"sip:@host",
	"sip:host",
	"tel:+1-201-555-0123",
	"sip:%61lice@example.com",
	"sip:alice@example.com?",
	"sip:alice@example.com;",
	"sip:alice@example.com ;lr",
	"SIP:Alice@Example.COM:5060",
	"<sip:127.0.0.1:20870;lr;ftag=1234>",
	"<sip:alice@atlanta.example.com>;tag=1928301774",
	"\"Alice \\\"A\\\"\" <sip:alice@atlanta.example.com>;tag=1928301774",
	"Alice Smith <sip:alice@atlanta.example.com>;tag=88sja8x",
	"sipp <sip:sipp@127.0.0.1:20880>;tag=17953SIPpTag001",
	"service <sip:service@127.0.0.1:20870>",
	"<sip:sipp@127.0.0.1:20880;transport=UDP>;expires=3600;q=0.5",
	" <sip:alice@host>",
	"<sip:alice@host>",
	"<>",
	"<sip:alice@host",
	"sip:alice@host;tag=abc",
	"sip:alice@host;tag=abc<x>",
	";tag=x",
	"*",
	"<sip:alice@[2001:db8::1]:5060>",
	"Bob <sips:bob@biloxi.example.com>",
	"<sip:bob@192.0.2.4;transport=udp>;+sip.instance=\"<urn:uuid:1>\"",
	"SIP/2.0/UDP 127.0.0.1:20880;branch=z9hG4bK-17953-1-0",
	"SIP/2.0/UDP 127.0.0.1:5060;rport=5060;received=10.0.0.1;branch=z9hG4bKa",
	"SIP/2.0/TCP host.example.com;branch=z9hG4bK776asdhds",
	"SIP/2.0/TLS 192.0.2.4:5061",
	"SIP/2.0/WS df7jal23ls0d.invalid;branch=z9hG4bKasudf",
	"SIP/2.0/udp 127.0.0.1:5060;branch=z9hG4bKlower",
	"sip/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKlower",
	"SIP/2.0/TCP [2001:db8::1]:5060;rport=1234;branch=z9hG4bKabc",
	"SIP / 2.0 / UDP host.example.com ;branch=z9hG4bK776asdhds",
	"SIP/2.0/UDP  127.0.0.1:5060;branch=z9hG4bKtwo",
	"SIP/2.0/UDP 127.0.0.1:99999;branch=z9hG4bKbig",
	"SIP/2.0/UDP 127.0.0.1:;branch=z9hG4bKcolon",
	"SIP/2.0/UDP 127.0.0.1:5060 ;branch=z9hG4bKsp",
	"SIP/2.0/UDP 127.0.0.1:5060",
	"SIP/2.0/UDP h",
	"",
};

static const char alpha[] =
	"aAbBsSiIpPzZ09:@;?=&<>\"\\/ \t\r\n.,[]-_~^*+%#'!()0123456789";

static unsigned long calls, fails;

static void report(const char *what, const char *p, size_t l, int ea,
		   int eb)
{
	if (++fails <= 10)
		printf("MISMATCH %s input=\"%.*s\" libre=%d ours=%d\n", what,
		       (int)l, p, ea, eb);
}

static void check(const char *p, size_t l)
{
	struct pl pl = {p, l};
	struct uri ua, ub;
	struct sip_addr aa, ab;
	struct sip_via va, vb;
	int ea, eb;

	memset(&ua, 0xa5, sizeof(ua));
	memset(&ub, 0xa5, sizeof(ub));
	ea = uri_decode(&ua, &pl);
	eb = lsip_uri_decode(&ub, &pl);
	++calls;
	if (ea != eb || memcmp(&ua, &ub, sizeof(ua)))
		report("uri_decode", p, l, ea, eb);

	memset(&aa, 0x5a, sizeof(aa));
	memset(&ab, 0x5a, sizeof(ab));
	ea = sip_addr_decode(&aa, &pl);
	eb = lsip_sip_addr_decode(&ab, &pl);
	++calls;
	if (ea != eb || memcmp(&aa, &ab, sizeof(aa)))
		report("sip_addr_decode", p, l, ea, eb);

	memset(&va, 0x3c, sizeof(va));
	memset(&vb, 0x3c, sizeof(vb));
	ea = sip_via_decode(&va, &pl);
	eb = lsip_sip_via_decode(&vb, &pl);
	++calls;
	if (ea != eb || memcmp(&va, &vb, sizeof(va)))
		report("sip_via_decode", p, l, ea, eb);
}

int main(int argc, char *argv[])
{
	unsigned long iters = argc > 1 ? strtoul(argv[1], NULL, 10) : 300000;
	size_t nc = sizeof(corpus) / sizeof(corpus[0]);
	char buf[256];
	unsigned long it;
	size_t i, l;

	rnd_seed(argc, argv);

	for (i = 0; i < nc; i++)
		check(corpus[i], strlen(corpus[i]));

	for (it = 0; it < iters; it++) {
		if (it % 4 == 3) {            /* random strings */
			l = rnd() % 40;
			for (i = 0; i < l; i++)
				buf[i] = alpha[rnd() % (sizeof(alpha) - 1)];
		}
		else {                        /* mutated real values */
			l = mutate(buf, sizeof(buf), corpus[rnd() % nc],
				   alpha, sizeof(alpha) - 1, 0);
		}
		check(buf, l);
	}

	printf("fastparse_diff: %lu calls, %lu by the fast path, "
	       "%lu mismatches\n", calls, lsip_fastparse_hits, fails);
	if (lsip_fastparse_hits < calls / 6) {
		printf("fastparse_diff: the fast path took too few inputs\n");
		return 1;
	}
	return fails ? 1 : 0;
}
