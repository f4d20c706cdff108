/**
 * @file srtp_ossl.c  OpenSSL primitives for libsrtp2's AES-ICM-128 and
 *                    HMAC-SHA1
 *
 * Debian 12 builds libsrtp2 2.5 with its NSS crypto backend, which creates
 * an NSS cipher context for every packet (set_iv -> PK11_CreateContext...)
 * and runs HMAC-SHA1 through a fresh PK11 digest: about 11,000
 * instructions per packet, as much as all the rest of a plain call's
 * per-packet work. libsrtp2 lets an application replace the
 * implementation of a cipher or auth type (srtp_replace_cipher_type,
 * srtp_replace_auth_type; the types are declared in srtp2/cipher.h and
 * srtp2/auth.h). This file registers two that keep their OpenSSL state
 * per libsrtp2 cipher/auth instance:
 *
 * - AES-ICM-128 (RFC 3711 4.1.1, a 30-octet key: 16 of AES key and 14 of
 *   salt): the counter blocks (salt XOR iv, then +1 per block) are
 *   encrypted into keystream, which is XORed onto the packet; set_iv only
 *   stores the counter block. (Re-setting the IV of an EVP CTR context per
 *   packet went through OpenSSL 3's parameter machinery: a tenth of the
 *   SRTP cost in perf.) On a CPU with AES-NI the AES-128 key schedule is
 *   kept in the cipher's own state and the blocks are encrypted four at a
 *   time with the AES instructions (OpenSSL's EVP call and its separately
 *   allocated context were a fifth of what was left: perf, 750 SRTP
 *   calls); elsewhere, or with LUASIP_SRTP_NO_AESNI set, one EVP
 *   AES-128-ECB context keyed once does it.
 * - HMAC-SHA1 (RFC 2104): the inner and outer SHA-1 states after the
 *   padded key are computed once (their five words kept per instance);
 *   each packet's hash starts from them in a per-thread SHA_CTX.
 *
 * libsrtp2 still does all of SRTP: key derivation (through this AES-ICM),
 * packet and index handling, replay database, SRTCP. It runs each type's
 * self test before taking it (RFC 3711 B.2 and RFC 2202 vectors below)
 * and tests it against its own type's vectors too; if either fails, its
 * built-in types stay and luasip logs why once.
 *
 * Copyright (C) 2026 luasip authors
 */
#define OPENSSL_SUPPRESS_DEPRECATED   /* SHA1_Init & co: plain struct copy */
#include <stdbool.h>
#include <string.h>
#include <stdlib.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <srtp2/srtp.h>
#include <srtp2/cipher.h>
#include <srtp2/auth.h>
#if defined(__x86_64__) || defined(__i386__)
#include <wmmintrin.h>
#define HAVE_AESNI 1
#endif
#include "lsip.h"


/* AES-ICM-128 */

struct icm {
	EVP_CIPHER_CTX *ctx;        /* AES-128-ECB, or NULL: AES-NI */
	uint8_t rk[11][16];         /* AES-NI: the key schedule */
	uint8_t salt[16];           /* 14 octets of salt, then 0, 0 */
	uint8_t ctr[16];            /* counter block of the next keystream */
	uint8_t ks[16];             /* keystream block in use */
	unsigned int used;          /* its octets already used (16: none) */
};

enum { ICM_CHUNK = 16 };        /* keystream blocks per EVP call (a
				 * G.711 packet: 11) */


/* an instance is one block: libsrtp2's srtp_cipher_t, then our state */
enum { ICM_BLOCK = sizeof(srtp_cipher_t) + sizeof(struct icm) };

static const srtp_cipher_type_t icm_type;


#ifdef HAVE_AESNI
/* AES-NI, unless LUASIP_SRTP_NO_AESNI is set (to test the EVP path) */
static bool aesni(void)
{
	static int have = -1;

	if (have < 0) {
		__builtin_cpu_init();
		have = __builtin_cpu_supports("aes") &&
			!getenv("LUASIP_SRTP_NO_AESNI");
	}

	return have;
}


__attribute__((target("aes,sse2")))
static __m128i expand(__m128i k, __m128i a)
{
	a = _mm_shuffle_epi32(a, 0xff);
	k = _mm_xor_si128(k, _mm_slli_si128(k, 4));
	k = _mm_xor_si128(k, _mm_slli_si128(k, 4));
	k = _mm_xor_si128(k, _mm_slli_si128(k, 4));

	return _mm_xor_si128(k, a);
}


/* FIPS-197 AES-128 key expansion */
__attribute__((target("aes,sse2")))
static void aesni_schedule(uint8_t rk[11][16], const uint8_t *key)
{
	__m128i k[11];
	int i;

	k[0]  = _mm_loadu_si128((const __m128i *)(const void *)key);
	k[1]  = expand(k[0], _mm_aeskeygenassist_si128(k[0], 0x01));
	k[2]  = expand(k[1], _mm_aeskeygenassist_si128(k[1], 0x02));
	k[3]  = expand(k[2], _mm_aeskeygenassist_si128(k[2], 0x04));
	k[4]  = expand(k[3], _mm_aeskeygenassist_si128(k[3], 0x08));
	k[5]  = expand(k[4], _mm_aeskeygenassist_si128(k[4], 0x10));
	k[6]  = expand(k[5], _mm_aeskeygenassist_si128(k[5], 0x20));
	k[7]  = expand(k[6], _mm_aeskeygenassist_si128(k[6], 0x40));
	k[8]  = expand(k[7], _mm_aeskeygenassist_si128(k[7], 0x80));
	k[9]  = expand(k[8], _mm_aeskeygenassist_si128(k[8], 0x1b));
	k[10] = expand(k[9], _mm_aeskeygenassist_si128(k[9], 0x36));

	for (i = 0; i < 11; i++)
		_mm_storeu_si128((__m128i *)(void *)rk[i], k[i]);
}


/* out = AES-128(in), nb blocks, four at a time (the rounds pipeline) */
__attribute__((target("aes,sse2")))
static void aesni_ecb(uint8_t rk[11][16], uint8_t *out, const uint8_t *in,
		      unsigned int nb)
{
	__m128i k[11], x0, x1, x2, x3;
	unsigned int b = 0;
	int r;

	for (r = 0; r < 11; r++)
		k[r] = _mm_loadu_si128((const __m128i *)(const void *)rk[r]);

#define LD(i) _mm_xor_si128(_mm_loadu_si128( \
		(const __m128i *)(const void *)(in + 16 * (b + (i)))), k[0])
#define ST(i, x) _mm_storeu_si128((__m128i *)(void *)(out + 16 * (b + (i))), x)
	for (; b + 4 <= nb; b += 4) {
		x0 = LD(0); x1 = LD(1); x2 = LD(2); x3 = LD(3);
		for (r = 1; r < 10; r++) {
			x0 = _mm_aesenc_si128(x0, k[r]);
			x1 = _mm_aesenc_si128(x1, k[r]);
			x2 = _mm_aesenc_si128(x2, k[r]);
			x3 = _mm_aesenc_si128(x3, k[r]);
		}
		ST(0, _mm_aesenclast_si128(x0, k[10]));
		ST(1, _mm_aesenclast_si128(x1, k[10]));
		ST(2, _mm_aesenclast_si128(x2, k[10]));
		ST(3, _mm_aesenclast_si128(x3, k[10]));
	}
	for (; b < nb; b++) {
		x0 = LD(0);
		for (r = 1; r < 10; r++)
			x0 = _mm_aesenc_si128(x0, k[r]);
		ST(0, _mm_aesenclast_si128(x0, k[10]));
	}
#undef LD
#undef ST
}
#else
static bool aesni(void)
{
	return false;
}
#endif


static srtp_err_status_t icm_alloc(srtp_cipher_pointer_t *cp, int key_len,
				   int tag_len)
{
	srtp_cipher_t *c;
	struct icm *st;
	(void)tag_len;

	if (!cp || key_len != SRTP_AES_ICM_128_KEY_LEN_WSALT)
		return srtp_err_status_bad_param;

	c = calloc(1, ICM_BLOCK);
	if (!c)
		return srtp_err_status_alloc_fail;

	st = (struct icm *)(c + 1);
	if (!aesni()) {
		st->ctx = EVP_CIPHER_CTX_new();
		if (!st->ctx) {
			free(c);
			return srtp_err_status_alloc_fail;
		}
	}

	c->type = &icm_type;
	c->state = st;
	c->key_len = key_len;
	c->algorithm = SRTP_AES_ICM_128;
	*cp = c;

	return srtp_err_status_ok;
}


static srtp_err_status_t icm_dealloc(srtp_cipher_pointer_t c)
{
	struct icm *st;

	if (!c)
		return srtp_err_status_bad_param;

	st = c->state;
	if (st->ctx)
		EVP_CIPHER_CTX_free(st->ctx);
	OPENSSL_cleanse(c, ICM_BLOCK);
	free(c);

	return srtp_err_status_ok;
}


static srtp_err_status_t icm_init(void *state, const uint8_t *key)
{
	struct icm *st = state;

	memcpy(st->salt, key + SRTP_AES_128_KEY_LEN, SRTP_SALT_LEN);
	st->salt[14] = st->salt[15] = 0;
	st->used = sizeof(st->ks);

#ifdef HAVE_AESNI
	if (!st->ctx) {
		aesni_schedule(st->rk, key);
		return srtp_err_status_ok;
	}
#endif
	if (1 != EVP_EncryptInit_ex(st->ctx, EVP_aes_128_ecb(), NULL, key,
				    NULL) ||
	    1 != EVP_CIPHER_CTX_set_padding(st->ctx, 0))
		return srtp_err_status_init_fail;

	return srtp_err_status_ok;
}


static srtp_err_status_t icm_set_iv(void *state, uint8_t *iv,
				    srtp_cipher_direction_t dir)
{
	struct icm *st = state;
	int i;
	(void)dir;

	for (i = 0; i < 16; i++)
		st->ctr[i] = st->salt[i] ^ iv[i];
	st->used = sizeof(st->ks);

	return srtp_err_status_ok;
}


/* the 128-bit big-endian counter + 1, as OpenSSL's CTR mode counts (an
 * SRTP counter starts with its low 16 bits 0: the carry never runs) */
static inline void ctr_inc(uint8_t *c)
{
	int i = 14;

	if (++c[15] != 0)
		return;
	while (i >= 0 && ++c[i] == 0)
		--i;
}


/* buf[0..n) ^= ks[0..n), eight octets at a time */
static inline void xor_into(uint8_t *buf, const uint8_t *ks, unsigned int n)
{
	unsigned int i = 0;
	uint64_t a, b;

	for (; i + 8 <= n; i += 8) {
		memcpy(&a, buf + i, 8);
		memcpy(&b, ks + i, 8);
		a ^= b;
		memcpy(buf + i, &a, 8);
	}
	for (; i < n; i++)
		buf[i] ^= ks[i];
}


/* out = AES-128-ECB(in), nb blocks: AES-NI or the EVP context */
static bool ecb(struct icm *st, uint8_t *out, const uint8_t *in,
		unsigned int nb)
{
	int n;

#ifdef HAVE_AESNI
	if (!st->ctx) {
		aesni_ecb(st->rk, out, in, nb);
		return true;
	}
#endif
	return 1 == EVP_EncryptUpdate(st->ctx, out, &n, in, (int)(nb * 16)) &&
		n == (int)(nb * 16);
}


/* counter mode: encrypting and decrypting are the same XOR */
static srtp_err_status_t icm_crypt(void *state, uint8_t *buf,
				   unsigned int *len)
{
	struct icm *st = state;
	uint8_t in[ICM_CHUNK * 16], ks[ICM_CHUNK * 16];
	unsigned int left = *len, nb, b, k;

	/* what the last block of the previous call left */
	while (left && st->used < sizeof(st->ks)) {
		*buf++ ^= st->ks[st->used++];
		--left;
	}

	while (left) {
		nb = (left + 15) / 16;
		if (nb > ICM_CHUNK)
			nb = ICM_CHUNK;
		for (b = 0; b < nb; b++) {
			memcpy(in + 16 * b, st->ctr, 16);
			ctr_inc(st->ctr);
		}
		if (!ecb(st, ks, in, nb))
			return srtp_err_status_cipher_fail;

		k = left < nb * 16 ? left : nb * 16;
		xor_into(buf, ks, k);
		buf += k;
		left -= k;

		/* a block only partly used is kept for the next call */
		if (k % 16) {
			memcpy(st->ks, ks + (k / 16) * 16, 16);
			st->used = k % 16;
		}
	}

	return srtp_err_status_ok;
}


/* RFC 3711 B.2: session key 2B7E...4F3C, salt F0F1...FCFD, IV 0 */
static const uint8_t icm_key[30] = {
	0x2b, 0x7e, 0x15, 0x16, 0x28, 0xae, 0xd2, 0xa6,
	0xab, 0xf7, 0x15, 0x88, 0x09, 0xcf, 0x4f, 0x3c,
	0xf0, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7,
	0xf8, 0xf9, 0xfa, 0xfb, 0xfc, 0xfd
};
static uint8_t icm_idx[16];
static const uint8_t icm_plain[32];
static const uint8_t icm_cipher[32] = {
	0xe0, 0x3e, 0xad, 0x09, 0x35, 0xc9, 0x5e, 0x80,
	0xe1, 0x66, 0xb1, 0x6d, 0xd9, 0x2b, 0x4e, 0xb4,
	0xd2, 0x35, 0x13, 0x16, 0x2b, 0x02, 0xd0, 0xf7,
	0x2a, 0x43, 0xa2, 0xfe, 0x4a, 0x5f, 0x97, 0xab
};
static const srtp_cipher_test_case_t icm_test = {
	SRTP_AES_ICM_128_KEY_LEN_WSALT, icm_key, icm_idx,
	sizeof(icm_plain), icm_plain, sizeof(icm_cipher), icm_cipher,
	0, NULL, 0, NULL
};

static const srtp_cipher_type_t icm_type = {
	icm_alloc, icm_dealloc, icm_init, NULL, icm_crypt, icm_crypt,
	icm_set_iv, NULL, "AES-128 integer counter mode (OpenSSL, luasip)",
	&icm_test, SRTP_AES_ICM_128
};


/* HMAC-SHA1 */

/* the keyed part is the SHA-1 state after one block (the padded key): its
 * five words; a packet's hash runs in a per-thread SHA_CTX, as libsrtp2
 * starts, updates and finishes an auth within one protect or unprotect
 * (the per-call state is then two lines instead of six: srtp.c reads it
 * ahead of each packet) */
struct hmac {
	uint32_t inner[5], outer[5];
};

static _Thread_local SHA_CTX hmac_run;

/* an instance is one block: libsrtp2's srtp_auth_t, then our state */
enum { HMAC_BLOCK = sizeof(srtp_auth_t) + sizeof(struct hmac) };


static const srtp_auth_type_t hmac_type;


static srtp_err_status_t hmac_alloc(srtp_auth_pointer_t *ap, int key_len,
				    int out_len)
{
	srtp_auth_t *a;

	if (!ap || key_len < 0 || key_len > SHA_CBLOCK ||
	    out_len < 1 || out_len > SHA_DIGEST_LENGTH)
		return srtp_err_status_bad_param;

	a = calloc(1, HMAC_BLOCK);
	if (!a)
		return srtp_err_status_alloc_fail;

	a->type = &hmac_type;
	a->state = a + 1;
	a->out_len = out_len;
	a->key_len = key_len;
	a->prefix_len = 0;
	*ap = a;

	return srtp_err_status_ok;
}


static srtp_err_status_t hmac_dealloc(srtp_auth_pointer_t a)
{
	if (!a)
		return srtp_err_status_bad_param;

	OPENSSL_cleanse(a, HMAC_BLOCK);
	free(a);

	return srtp_err_status_ok;
}


static void midstate_save(uint32_t h[5], const SHA_CTX *c)
{
	h[0] = c->h0; h[1] = c->h1; h[2] = c->h2; h[3] = c->h3; h[4] = c->h4;
}


/* c = SHA-1 after one 64-octet block that left the state h */
static void midstate_load(SHA_CTX *c, const uint32_t h[5])
{
	c->h0 = h[0]; c->h1 = h[1]; c->h2 = h[2]; c->h3 = h[3]; c->h4 = h[4];
	c->Nl = SHA_CBLOCK * 8;
	c->Nh = 0;
	c->num = 0;
}


static srtp_err_status_t hmac_init(void *state, const uint8_t *key,
				   int key_len)
{
	struct hmac *st = state;
	uint8_t ipad[SHA_CBLOCK], opad[SHA_CBLOCK];
	SHA_CTX ctx;
	int i;

	if (key_len < 0 || key_len > SHA_CBLOCK)
		return srtp_err_status_bad_param;

	for (i = 0; i < SHA_CBLOCK; i++) {
		uint8_t k = i < key_len ? key[i] : 0;

		ipad[i] = k ^ 0x36;
		opad[i] = k ^ 0x5c;
	}

	SHA1_Init(&ctx);
	SHA1_Update(&ctx, ipad, sizeof(ipad));
	midstate_save(st->inner, &ctx);
	SHA1_Init(&ctx);
	SHA1_Update(&ctx, opad, sizeof(opad));
	midstate_save(st->outer, &ctx);
	OPENSSL_cleanse(&ctx, sizeof(ctx));
	OPENSSL_cleanse(ipad, sizeof(ipad));
	OPENSSL_cleanse(opad, sizeof(opad));

	return srtp_err_status_ok;
}


static srtp_err_status_t hmac_start(void *state)
{
	midstate_load(&hmac_run, ((const struct hmac *)state)->inner);
	return srtp_err_status_ok;
}


static srtp_err_status_t hmac_update(void *state, const uint8_t *buf,
				     int len)
{
	(void)state;
	if (len < 0)
		return srtp_err_status_bad_param;

	SHA1_Update(&hmac_run, buf, (size_t)len);
	return srtp_err_status_ok;
}


static srtp_err_status_t hmac_compute(void *state, const uint8_t *buf,
				      int len, int tag_len, uint8_t *tag)
{
	struct hmac *st = state;
	uint8_t d[SHA_DIGEST_LENGTH];
	SHA_CTX outer;

	if (len < 0 || tag_len < 1 || tag_len > SHA_DIGEST_LENGTH)
		return srtp_err_status_bad_param;

	SHA1_Update(&hmac_run, buf, (size_t)len);
	SHA1_Final(d, &hmac_run);
	midstate_load(&outer, st->outer);
	SHA1_Update(&outer, d, sizeof(d));
	SHA1_Final(d, &outer);
	memcpy(tag, d, (size_t)tag_len);

	return srtp_err_status_ok;
}


/* RFC 2202 test case 1 */
static const uint8_t hmac_key[20] = {
	0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b,
	0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b
};
static const uint8_t hmac_data[8] = "Hi There";
static const uint8_t hmac_tag[20] = {
	0xb6, 0x17, 0x31, 0x86, 0x55, 0x05, 0x72, 0x64, 0xe2, 0x8b,
	0xc0, 0xb6, 0xfb, 0x37, 0x8c, 0x8e, 0xf1, 0x46, 0xbe, 0x00
};
static const srtp_auth_test_case_t hmac_test = {
	sizeof(hmac_key), hmac_key, sizeof(hmac_data), hmac_data,
	sizeof(hmac_tag), hmac_tag, NULL
};

static const srtp_auth_type_t hmac_type = {
	hmac_alloc, hmac_dealloc, hmac_init, hmac_compute, hmac_update,
	hmac_start, "HMAC-SHA1 (OpenSSL, luasip)", &hmac_test, SRTP_HMAC_SHA1
};


/**
 * The memory one of our cipher instances occupies (its srtp_cipher_t and
 * state are one block), for srtp.c's warming
 *
 * @param c An srtp_cipher_t of libsrtp2's
 *
 * @return Its size in octets, or 0 if it is not an AES-ICM of this file
 */
size_t lsip_srtp_ossl_cipher_size(const void *c)
{
	const srtp_cipher_t *ci = c;

	return ci && ci->type == &icm_type ? ICM_BLOCK : 0;
}


/**
 * The memory one of our auth instances occupies (srtp_auth_t and state in
 * one block), for srtp.c's warming
 *
 * @param a An srtp_auth_t of libsrtp2's
 *
 * @return Its size in octets, or 0 if it is not an HMAC-SHA1 of this file
 */
size_t lsip_srtp_ossl_auth_size(const void *a)
{
	const srtp_auth_t *au = a;

	return au && au->type == &hmac_type ? HMAC_BLOCK : 0;
}


/**
 * Give libsrtp2 the OpenSSL AES-ICM-128 and HMAC-SHA1 (after srtp_init)
 *
 * @return NULL if both were taken, else what libsrtp2 refused and why
 */
const char *lsip_srtp_ossl_install(void)
{
	srtp_err_status_t st;

	if (getenv("LUASIP_SRTP_BUILTIN"))
		return "LUASIP_SRTP_BUILTIN is set";

	st = srtp_replace_cipher_type(&icm_type, SRTP_AES_ICM_128);
	if (st)
		return "AES-ICM-128 refused (self test failed)";

	st = srtp_replace_auth_type(&hmac_type, SRTP_HMAC_SHA1);
	if (st)
		return "HMAC-SHA1 refused (self test failed)";

	return NULL;
}
