/**
 * @file regex.c  libre's re_regex, compiled once per call
 *
 * libre parses every SIP message, URI, address and parameter with
 * re_regex, its small pattern language ("[^:]+:[^@]*@...", each class
 * captured into a struct pl). libre's own version re-reads the expression
 * at every start position it tries and lower-cases every character
 * through the C library's locale call; in callgrind that was a third of
 * all instructions of a proxied call and of a REGISTER. This version
 * reads the expression once into steps (literal bytes and classes held
 * as 256-bit sets) and then tries the start positions. It replaces
 * libre's fmt/regex.o in the static link, like tmr.c (libre's object
 * defines re_regex alone).
 *
 * The language, as libre 1.1.0 implements it (every corner kept):
 *   - outside a class, a byte matches itself, case-insensitively; "\\x"
 *     matches x; "[" starts a class
 *   - "[...]": byte ranges "a-z" and bytes, compared in lower case;
 *     "^" first negates; "~" first negates and makes the class skip
 *     quoted strings and backslash escapes (the quotes of a fully quoted
 *     match are stripped); a "-" that would close a range at the class
 *     end drops the range's first byte
 *   - after "]": "*" (0 or more), "+" (1 or more) or a digit 1-9
 *     (exactly that many); every class fills the next struct pl argument
 *     (NULL: not stored); matching is greedy, without backtracking
 *   - the first start position that matches wins; the match need not
 *     reach the end of the input; empty input never matches a non-empty
 *     expression; a literal that finds the input exhausted ends the
 *     search (ENOENT)
 */

#include "lsip.h"
#include <stdlib.h>
#include <link.h>


enum {
	STEP_MAX = 48,
};

struct step {
	uint8_t tab[256];         /* class: 1 for input bytes matched
				   * (either case); a byte per entry keeps
				   * the scan loop to one load and test */
	uint32_t nmin, nmax;
	uint8_t lit, ulit;        /* literal byte, lower and upper case */
	bool cls;
	bool all;                 /* class matches every byte: "[^]" */
	bool qesc;                /* "~": skip quoted strings, escapes */
};


/* compiled expressions, by a hash of their text (callers such as
 * msg_param_decode print theirs into one stack buffer) */
enum { CACHE = 64, EXPR_MAX = 96 };

struct centry {
	uint32_t gen;             /* bumped when the entry is reused */
	char expr[EXPR_MAX];
	struct step sv[STEP_MAX];
	size_t n;
	size_t ncls;              /* classes among the steps */
	uint32_t hash;
};

enum { PCACHE = 128 };

struct pentry {
	const char *expr;         /* address the expression came from */
	struct centry *ce;
	uint32_t gen;             /* ce->gen when this was set */
	bool ro;                  /* expr lies in a read-only segment */
};

struct rcache {
	struct centry bytext[CACHE];
	struct pentry byptr[PCACHE];
};

static __thread struct rcache *cache;

static uint8_t lower[256];
static bool lower_ready;

/* the read-only PT_LOAD segments of the object holding this code
 * (libre's string literals are there: it is linked in statically) */
enum { RO_MAX = 4 };
static struct { uintptr_t lo, hi; } ro[RO_MAX];
static int nro;


static int phdr_handler(struct dl_phdr_info *info, size_t size, void *arg)
{
	uintptr_t self = (uintptr_t)arg;
	bool mine = false;
	int i;

	(void)size;

	for (i = 0; i < info->dlpi_phnum; i++) {
		const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
		uintptr_t lo = info->dlpi_addr + ph->p_vaddr;

		if (ph->p_type == PT_LOAD && self >= lo &&
		    self < lo + ph->p_memsz)
			mine = true;
	}
	if (!mine)
		return 0;

	for (i = 0; i < info->dlpi_phnum && nro < RO_MAX; i++) {
		const ElfW(Phdr) *ph = &info->dlpi_phdr[i];

		if (ph->p_type != PT_LOAD || (ph->p_flags & PF_W))
			continue;
		ro[nro].lo = info->dlpi_addr + ph->p_vaddr;
		ro[nro].hi = ro[nro].lo + ph->p_memsz;
		++nro;
	}
	return 1;
}


/* true when expr cannot change: it lies in our read-only segments */
static bool expr_ro(const char *expr)
{
	uintptr_t a = (uintptr_t)expr;
	int i;

	for (i = 0; i < nro; i++)
		if (a >= ro[i].lo && a < ro[i].hi)
			return true;
	return false;
}


static void lower_init(void)
{
	int i;

	for (i = 0; i < 256; i++)
		lower[i] = (uint8_t)((i >= 'A' && i <= 'Z') ? i + 32 : i);
	(void)dl_iterate_phdr(phdr_handler, (void *)(uintptr_t)lower);
	lower_ready = true;
}


static inline bool in_set(const uint8_t *set, uint8_t c)
{
	return (set[c >> 3] >> (c & 7)) & 1;
}


static inline void set_add(uint8_t *set, uint8_t c)
{
	set[c >> 3] |= (uint8_t)(1u << (c & 7));
}


static inline void lit_set(struct step *s, uint8_t c)
{
	s->lit = lower[c];
	s->ulit = (s->lit >= 'a' && s->lit <= 'z') ?
		(uint8_t)(s->lit - 32) : s->lit;
}


/* expression -> steps; EINVAL when it is malformed */
static int compile(struct step *sv, size_t *np, const char *e)
{
	size_t n = 0;

	while (*e) {
		struct step *s;
		uint8_t lo[64], hi[64], lset[32];
		uint32_t nr = 0;
		bool neg = false, range = false, esc;

		if (n == STEP_MAX)
			return EINVAL;
		s = &sv[n];

		if (*e == '\\') {
			++e;
			if (!*e)
				break;             /* a trailing "\": ignored */
			s->cls = false;
			lit_set(s, (uint8_t)*e++);
			++n;
			continue;
		}
		if (*e != '[') {
			s->cls = false;
			lit_set(s, (uint8_t)*e++);
			++n;
			continue;
		}

		/* a class */
		++e;
		s->cls = true;
		s->qesc = false;
		esc = false;
		for (;;) {
			uint8_t c;

			if (!*e)
				return EINVAL;
			if (*e == '\\' && !esc) {
				esc = true;
				++e;
				continue;
			}
			if (!esc) {
				if (*e == ']') {
					++e;
					break;
				}
				if (*e == '~' && !nr) {
					s->qesc = true;
					neg = true;
					++e;
					continue;
				}
				if (*e == '^' && !nr) {
					neg = true;
					++e;
					continue;
				}
				if (*e == '-' && nr && !range) {
					range = true;
					--nr;
					++e;
					continue;
				}
			}
			esc = false;
			if (nr >= 64)
				return EINVAL;
			c = lower[(uint8_t)*e++];
			hi[nr] = c;
			if (range)
				range = false;
			else
				lo[nr] = c;
			++nr;
		}

		/* a backslash before the quantifier changes nothing */
		if (*e == '\\')
			++e;
		if (*e == '*') {
			s->nmin = 0;
			s->nmax = UINT32_MAX;
		}
		else if (*e == '+') {
			s->nmin = 1;
			s->nmax = UINT32_MAX;
		}
		else if (*e >= '1' && *e <= '9') {
			s->nmin = s->nmax = (uint32_t)(*e - '0');
		}
		else {
			return EINVAL;
		}
		++e;

		memset(lset, 0, sizeof(lset));
		for (uint32_t i = 0; i < nr; i++)
			for (unsigned c = lo[i]; c <= hi[i]; c++)
				set_add(lset, (uint8_t)c);
		if (neg)
			for (unsigned i = 0; i < sizeof(lset); i++)
				lset[i] = (uint8_t)~lset[i];

		/* fold the case here, not per input byte: an input byte
		 * matches when its lower case is in the class */
		s->all = true;
		for (unsigned c = 0; c < 256; c++) {
			s->tab[c] = in_set(lset, lower[c]);
			if (!s->tab[c])
				s->all = false;
		}
		++n;
	}

	*np = n;
	return 0;
}


/* one start position: 0 matched, ENOENT not here, EEXIST stop searching */
static int try_at(const struct step *sv, size_t n, const char *p, size_t l,
		  struct pl **plv)
{
	size_t i, k = 0;

	for (i = 0; i < n; i++) {
		const struct step *s = &sv[i];
		uint32_t nm = 0;
		struct pl m;

		if (!s->cls) {
			if (!l)
				return EEXIST;
			if ((uint8_t)*p != s->lit && (uint8_t)*p != s->ulit)
				return ENOENT;
			++p;
			--l;
			continue;
		}

		m.p = p;
		if (s->all && !s->qesc) {
			nm = l < s->nmax ? (uint32_t)l : s->nmax;
			p += nm;
			l -= nm;
		}
		else if (!s->qesc) {
			const uint8_t *q = (const uint8_t *)p;
			const uint8_t *end = q + (l < s->nmax ? l : s->nmax);

			while (q < end && s->tab[*q])
				++q;
			nm = (uint32_t)(q - (const uint8_t *)p);
			p = (const char *)q;
			l -= nm;
		}
		else {
			bool quote = false, esc = false;

			for (; l && nm < s->nmax; ++nm, ++p, --l) {
				if (esc) {
					esc = false;
					continue;
				}
				if (*p == '\\') {
					esc = true;
					continue;
				}
				if (*p == '"') {
					quote = !quote;
					continue;
				}
				if (quote)
					continue;
				if (!s->tab[(uint8_t)*p])
					break;
			}
		}
		m.l = p - m.p;

		if (s->qesc && m.l > 1 && m.p[0] == '"' && m.p[m.l - 1] == '"') {
			++m.p;
			m.l -= 2;
			nm -= 2;
		}
		if (nm < s->nmin || nm > s->nmax)
			return ENOENT;
		if (plv[k])
			*plv[k] = m;
		++k;
	}

	return 0;
}


/**
 * Parse a string with libre's basic regular expressions
 *
 * @param ptr  String to parse
 * @param len  Length of string
 * @param expr Expression; one struct pl pointer follows per class
 *
 * @return 0 if success, otherwise errorcode
 */
int re_regex(const char *ptr, size_t len, const char *expr, ...)
{
	struct step svbuf[STEP_MAX];
	const struct step *sv = svbuf;
	struct pl *plv[STEP_MAX];
	size_t n = 0, ncls = 0, i, k = 0, el;
	struct centry *ce = NULL;
	struct pentry *pe = NULL;
	uint32_t h;
	va_list ap;
	int err;

	if (!ptr || !expr)
		return EINVAL;
	if (!lower_ready)
		lower_init();

	/* libre passes string literals: the expression's address finds
	 * its entry without hashing the text. A literal in a read-only
	 * segment cannot change; elsewhere (a caller printing expressions
	 * into one buffer) strcmp confirms the text. gen notices that the
	 * entry was reused for another expression. */
	if (!cache)
		cache = calloc(1, sizeof(*cache));   /* per thread */
	if (cache) {
		pe = &cache->byptr[((uintptr_t)expr >> 3) % PCACHE];
		if (pe->expr == expr && pe->ce && pe->gen == pe->ce->gen &&
		    (pe->ro || !strcmp(pe->ce->expr, expr))) {
			sv = pe->ce->sv;
			n = pe->ce->n;
			ncls = pe->ce->ncls;
			goto compiled;
		}
	}

	for (el = 0, h = 2166136261u; expr[el]; el++)
		h = (h ^ (uint8_t)expr[el]) * 16777619u;
	if (el < EXPR_MAX && cache)
		ce = &cache->bytext[(h ^ (h >> 16)) % CACHE];
	if (ce && ce->hash == h && ce->n && !memcmp(ce->expr, expr, el + 1)) {
		sv = ce->sv;
		n = ce->n;
		ncls = ce->ncls;
	}
	else {
		err = compile(svbuf, &n, expr);
		if (err)
			return err;
		for (i = 0; i < n; i++)
			ncls += svbuf[i].cls;
		if (ce) {
			memcpy(ce->expr, expr, el + 1);
			memcpy(ce->sv, svbuf, n * sizeof(svbuf[0]));
			ce->n = n;
			ce->ncls = ncls;
			ce->hash = h;
			++ce->gen;
		}
	}
	if (pe) {
		pe->expr = expr;
		pe->ce = (ce && ce->n) ? ce : NULL;
		pe->gen = pe->ce ? pe->ce->gen : 0;
		pe->ro = expr_ro(expr);
	}

 compiled:
	if (!n)
		return 0;

	va_start(ap, expr);
	for (k = 0; k < ncls; k++)
		plv[k] = va_arg(ap, struct pl *);
	va_end(ap);

	/* a literal first step: only where its byte (either case) is */
	if (!sv[0].cls) {
		uint8_t a = sv[0].lit;
		uint8_t b = sv[0].ulit;
		const char *p = ptr, *end = ptr + len;

		while (p < end) {
			if (a == b) {
				p = memchr(p, a, (size_t)(end - p));
				if (!p)
					break;
			}
			else if ((uint8_t)*p != a && (uint8_t)*p != b) {
				++p;
				continue;
			}
			err = try_at(sv, n, p, (size_t)(end - p), plv);
			if (err != ENOENT)
				return err ? ENOENT : 0;
			++p;
		}
		return ENOENT;
	}

	for (i = 0; i < len; i++) {
		err = try_at(sv, n, ptr + i, len - i, plv);
		if (err != ENOENT)
			return err ? ENOENT : 0;
	}

	return ENOENT;
}
