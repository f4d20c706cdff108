/**
 * @file prompt.c  WAV prompts decoded once, shared by every call playing them
 *
 * An IVR plays the same few prompts on every call. Streaming each play
 * from its file costs an open, a read per 20 ms frame and a close on the
 * loop thread, per call; with a thousand calls that showed in the loop's
 * profile (glibc's fclose walks the list of every open FILE). Here a
 * prompt is read once into 8 kHz 16-bit samples (16 kHz files are
 * decimated at load, as the player did per frame) and every player holds
 * a reference to the same samples. The samples are also kept G.711-encoded
 * (u-law and A-law, with media.c's tables): a player sending whole frames
 * of a prompt copies bytes instead of encoding every sample of every call.
 *
 * Each play still stat()s the file: a prompt replaced on disk (other
 * inode, size or mtime) is read again, so editing prompts needs no
 * restart; players of the old version finish it. Files over PROMPT_MAX
 * bytes are not cached (lsip_prompt_get returns ENOSPC and the player
 * streams them as before). The cache keeps at most CACHE_MAX bytes (the
 * samples and their encodings), dropping the least recently played
 * prompts first; a dropped
 * prompt lives on until its last player lets go.
 *
 * Loop thread only.
 *
 * Copyright (C) 2026 luasip authors
 */
#include <sys/stat.h>
#include <stdlib.h>
#include "lsip.h"
#include <rem_au.h>
#include <rem_aufile.h>


enum {
	PROMPT_MAX = 4 * 1024 * 1024,  /* file bytes; larger ones stream */
	CACHE_MAX  = 64 * 1024 * 1024, /* bytes kept: samples + G.711 */
	BYTES_PER_SAMPLE = 2 + 2,      /* int16_t, one byte per law */
	HASH_SIZE  = 256,
};


struct lsip_prompt {
	struct le he;                  /* in the hash, by path */
	struct le le;                  /* in the LRU list, oldest first */
	char *path;
	struct stat st;                /* what the samples were read from */
	int16_t *pcm;
	uint8_t *g711[2];              /* u-law, A-law: n bytes each */
	size_t n;                      /* samples */
	bool cached;
};


static struct hash *prompts;
static struct list lru;
static size_t cached_bytes;


static void destructor(void *arg)
{
	struct lsip_prompt *p = arg;

	mem_deref(p->path);
	free(p->pcm);
	free(p->g711[0]);
	free(p->g711[1]);
}


static bool same_file(const struct stat *a, const struct stat *b)
{
	return a->st_dev == b->st_dev && a->st_ino == b->st_ino &&
		a->st_size == b->st_size &&
		a->st_mtim.tv_sec == b->st_mtim.tv_sec &&
		a->st_mtim.tv_nsec == b->st_mtim.tv_nsec;
}


static bool path_cmp(struct le *le, void *arg)
{
	const struct lsip_prompt *p = le->data;

	return 0 == str_cmp(p->path, arg);
}


static void uncache(struct lsip_prompt *p)
{
	if (!p->cached)
		return;

	hash_unlink(&p->he);
	list_unlink(&p->le);
	cached_bytes -= p->n * BYTES_PER_SAMPLE;
	p->cached = false;
	mem_deref(p);
}


/* read the whole file af into p->pcm at 8 kHz */
static int load(struct lsip_prompt *p, struct aufile *af, bool wide)
{
	int16_t buf[320];
	size_t cap = 0;
	int err;

	for (;;) {
		size_t sz = sizeof(buf), k, i;

		err = aufile_read(af, (uint8_t *)buf, &sz);
		if (err)
			return err;
		if (!sz)
			return 0;

		k = wide ? sz / 4 : sz / 2;
		if (p->n + k > cap) {
			int16_t *q;

			cap = cap ? cap * 2 : 8000;
			while (cap < p->n + k)
				cap *= 2;
			q = realloc(p->pcm, cap * sizeof(int16_t));
			if (!q)
				return ENOMEM;
			p->pcm = q;
		}

		if (wide) {
			for (i = 0; i < k; i++)
				p->pcm[p->n + i] = (int16_t)((buf[2 * i] +
							      buf[2 * i + 1]) / 2);
		}
		else {
			memcpy(p->pcm + p->n, buf, k * sizeof(int16_t));
		}
		p->n += k;
	}
}


/* p->g711[] from p->pcm */
static int encode(struct lsip_prompt *p)
{
	int law;
	size_t i;

	for (law = 0; law < 2; law++) {
		const uint8_t *tab = lsip_g711_table(law == 0);

		p->g711[law] = malloc(p->n ? p->n : 1);
		if (!p->g711[law])
			return ENOMEM;
		for (i = 0; i < p->n; i++)
			p->g711[law][i] = tab[(uint16_t)p->pcm[i]];
	}
	return 0;
}


/**
 * Get the samples of a WAV prompt (8 or 16 kHz mono 16-bit PCM)
 *
 * @param pp   Prompt, 8 kHz samples in (*pp)->pcm (mem_deref when done)
 * @param path File name
 * @param prm  Format found in the file (set when ENOTSUP is returned)
 *
 * @return 0 if success; ENOTSUP for another format; ENOSPC for a file
 *         too large to cache (stream it instead); errno of stat/open/read
 */
int lsip_prompt_get(struct lsip_prompt **pp, const char *path,
		    struct aufile_prm *prm)
{
	struct lsip_prompt *p;
	struct aufile *af;
	struct stat st;
	int err;

	if (!pp || !path || !prm)
		return EINVAL;

	if (stat(path, &st))
		return errno;

	if (!prompts) {
		err = hash_alloc(&prompts, HASH_SIZE);
		if (err)
			return err;
	}

	p = list_ledata(hash_lookup(prompts, hash_joaat_str(path),
				    path_cmp, (void *)path));
	if (p && same_file(&p->st, &st)) {
		list_unlink(&p->le);           /* most recently played */
		list_append(&lru, &p->le, p);
		*pp = mem_ref(p);
		return 0;
	}
	if (p)
		uncache(p);                    /* changed on disk */

	if (!S_ISREG(st.st_mode))
		return S_ISDIR(st.st_mode) ? EISDIR : EINVAL;
	if (st.st_size > PROMPT_MAX)
		return ENOSPC;

	err = aufile_open(&af, prm, path, AUFILE_READ);
	if (err)
		return err;

	if (prm->fmt != AUFMT_S16LE || prm->channels != 1 ||
	    (prm->srate != 8000 && prm->srate != 16000)) {
		mem_deref(af);
		return ENOTSUP;
	}

	p = mem_zalloc(sizeof(*p), destructor);
	if (!p) {
		mem_deref(af);
		return ENOMEM;
	}
	p->st = st;
	err = str_dup(&p->path, path);
	if (!err)
		err = load(p, af, prm->srate == 16000);
	if (!err)
		err = encode(p);
	mem_deref(af);
	if (err) {
		mem_deref(p);
		return err;
	}

	/* the cache's reference; the oldest go while over CACHE_MAX */
	hash_append(prompts, hash_joaat_str(path), &p->he, p);
	list_append(&lru, &p->le, p);
	p->cached = true;
	cached_bytes += p->n * BYTES_PER_SAMPLE;
	while (cached_bytes > CACHE_MAX && lru.head &&
	       lru.head->data != p)
		uncache(lru.head->data);

	*pp = mem_ref(p);
	return 0;
}


/**
 * A prompt's samples G.711-encoded (u-law or A-law), n bytes
 *
 * @param p    Prompt
 * @param ulaw true: u-law (PCMU), false: A-law (PCMA)
 *
 * @return the encoded samples (lsip_prompt_pcm's count), or NULL
 */
const uint8_t *lsip_prompt_g711(const struct lsip_prompt *p, bool ulaw)
{
	return p ? p->g711[ulaw ? 0 : 1] : NULL;
}


/** Samples (8 kHz) of a prompt and their number */
const int16_t *lsip_prompt_pcm(const struct lsip_prompt *p, size_t *np)
{
	*np = p ? p->n : 0;
	return p ? p->pcm : NULL;
}


/** Drop the cache (players keep their prompts); at lua_close */
void lsip_prompt_flush(void)
{
	while (lru.head)
		uncache(lru.head->data);

	prompts = mem_deref(prompts);
	cached_bytes = 0;
}
