/**
 * @file difftest.h  what the differential tests share
 *
 * A seeded xorshift generator (a run is repeatable from its seed) and byte
 * mutations of corpus values. Header only: each test is one program.
 */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng;


static uint32_t rnd(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (uint32_t)(rng >> 11);
}


/* the seed: argv[2] if given */
static void rnd_seed(int argc, char *argv[])
{
	rng = argc > 2 ? strtoull(argv[2], NULL, 10) : 0x9e3779b97f4a7c15ull;
	if (!rng)
		rng = 1;
}


/* src copied into buf (at most cap - 1 bytes), then min to min + 3 bytes
 * replaced, inserted or deleted at random, new bytes taken from alpha
 * (n bytes); returns the length */
static size_t mutate(char *buf, size_t cap, const char *src,
		     const char *alpha, size_t n, unsigned min)
{
	size_t l = strlen(src), k, i;

	if (l >= cap)
		l = cap - 1;
	memcpy(buf, src, l);
	k = min + rnd() % 4;
	for (i = 0; i < k; i++) {
		size_t at = l ? rnd() % (l + 1) : 0;
		char c = alpha[rnd() % n];

		switch (rnd() % 3) {

		case 0:      /* replace */
			if (at < l)
				buf[at] = c;
			break;

		case 1:      /* insert */
			if (l + 1 < cap) {
				memmove(buf + at + 1, buf + at, l - at);
				buf[at] = c;
				++l;
			}
			break;

		default:     /* delete */
			if (at < l) {
				memmove(buf + at, buf + at + 1, l - at - 1);
				--l;
			}
			break;
		}
	}
	return l;
}
