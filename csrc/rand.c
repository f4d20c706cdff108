/**
 * @file rand.c  libre's random number API (rand_u32, rand_u64, ...) from
 *               a buffered pool of OpenSSL's CSPRNG
 *
 * libre draws a random 64-bit tag for every SIP message it decodes, and
 * To tags, branches and Call-IDs for what it sends, each through its own
 * RAND_bytes call; with OpenSSL 3 a call costs ~6000 instructions
 * (measured with callgrind: 10% of a REGISTER's cost). Here the bytes
 * come from the same generator, 4 KB at a time. Like tmr.c, this file
 * defines every symbol of libre's rand.o so that the static link never
 * pulls that object in. The pool is per thread and emptied in a forked
 * child.
 */

#include "lsip.h"
#include <pthread.h>
#include <openssl/rand.h>


enum { POOL = 4096 };

static __thread uint8_t pool[POOL];
static __thread size_t left;       /* unused bytes at the pool's end */
static pthread_once_t once = PTHREAD_ONCE_INIT;


static void child(void)
{
	left = 0;          /* the forking thread's pool: never reuse it */
}


static void setup(void)
{
	(void)pthread_atfork(NULL, NULL, child);
}


void rand_bytes(uint8_t *p, size_t size)
{
	if (!p)
		return;
	(void)pthread_once(&once, setup);

	if (size > POOL / 4) {
		if (RAND_bytes(p, (int)size) != 1)
			memset(p, 0, size);   /* as libre: logged there, here 0 */
		return;
	}

	if (size > left) {
		if (RAND_bytes(pool, POOL) != 1) {
			(void)RAND_bytes(p, (int)size);
			return;
		}
		left = POOL;
	}

	memcpy(p, pool + POOL - left, size);
	memset(pool + POOL - left, 0, size);   /* used bytes do not linger */
	left -= size;
}


void rand_init(void)
{
}


uint32_t rand_u32(void)
{
	uint32_t v;

	rand_bytes((uint8_t *)&v, sizeof(v));
	return v;
}


uint16_t rand_u16(void)
{
	return rand_u32() >> 16;
}


uint64_t rand_u64(void)
{
	uint64_t v;

	rand_bytes((uint8_t *)&v, sizeof(v));
	return v;
}


static const char alphanum[] =
	"0123456789"
	"abcdefghijklmnopqrstuvwxyz"
	"ABCDEFGHIJKLMNOPQRSTUVWXYZ";


void rand_str(char *str, size_t size)
{
	size_t i;

	if (!str || !size)
		return;

	--size;
	rand_bytes((uint8_t *)str, size);
	for (i = 0; i < size; i++)
		str[i] = alphanum[((uint8_t)str[i]) % (sizeof(alphanum) - 1)];
	str[size] = '\0';
}


char rand_char(void)
{
	char s[2];

	rand_str(s, sizeof(s));
	return s[0];
}
