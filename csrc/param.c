/**
 * @file param.c  libre's msg_param_decode and msg_param_exists, matched
 *                by hand
 *
 * libre finds every header parameter (branch, tag, rport, expires, ...)
 * by printing an expression with the name (";[ \t\r\n]*NAME[ \t\r\n]*=
 * [ \t\r\n]*[~ \t\r\n;]+") and running re_regex on it: the printing alone
 * costs more than the match. Several run per SIP message. These do the
 * same match directly, with the same result in every case (regex.c
 * describes the rules: first ';' where the rest matches, greedy, no
 * backtracking, an input that runs out inside the name ends the search).
 * A name holding '[' or '\' (an expression, not a name) takes libre's
 * way. This file replaces libre's msg/param.o in the static link (it
 * defines both of its symbols).
 */

#include "lsip.h"


static inline bool is_ws(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}


static inline char lc(char c)
{
	return (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
}


static bool plain(const char *name)
{
	for (; *name; ++name)
		if (*name == '[' || *name == '\\')
			return false;
	return true;
}


/*
 * at ';' p: whitespace, then name; returns the end of the name, NULL on
 * a mismatch (try the next ';'), or end + 1 when the input ran out
 * inside the name (stop)
 */
static const char *match_name(const char *p, const char *end,
			      const char *name, const char **ws)
{
	const char *q = p + 1;

	while (q < end && is_ws(*q))
		++q;
	*ws = q;
	for (; *name; ++name, ++q) {
		if (q == end)
			return end + 1;
		if (lc(*q) != lc(*name))
			return NULL;
	}
	return q;
}


/**
 * Decode the value of parameter name in a parameter list
 *
 * @param pl   Parameter list (";a=b;c")
 * @param name Parameter name
 * @param val  Set to the value (quotes of a quoted value removed)
 *
 * @return 0 if found, ENOENT if not, EINVAL on bad arguments
 */
int msg_param_decode(const struct pl *pl, const char *name, struct pl *val)
{
	const char *p, *end;

	if (!pl || !name || !val)
		return EINVAL;

	if (!plain(name)) {
		char expr[128];
		struct pl v;

		(void)re_snprintf(expr, sizeof(expr),
				  ";[ \t\r\n]*%s[ \t\r\n]*=[ \t\r\n]*"
				  "[~ \t\r\n;]+", name);
		if (re_regex(pl->p, pl->l, expr, NULL, NULL, NULL, &v))
			return ENOENT;
		*val = v;
		return 0;
	}

	if (!pl->p)
		return ENOENT;
	end = pl->p + pl->l;

	for (p = pl->p; p < end; ++p) {
		const char *q, *ws, *v;
		bool quote = false, esc = false;
		size_t n;

		p = memchr(p, ';', (size_t)(end - p));
		if (!p)
			break;

		q = match_name(p, end, name, &ws);
		if (!q)
			continue;
		if (q > end)
			return ENOENT;

		while (q < end && is_ws(*q))
			++q;
		if (q == end)
			return ENOENT;          /* '=' with the input used up */
		if (*q != '=')
			continue;
		++q;
		while (q < end && is_ws(*q))
			++q;

		/* the value: up to an unquoted blank or ';' */
		for (v = q; q < end; ++q) {
			if (esc) {
				esc = false;
				continue;
			}
			if (*q == '\\') {
				esc = true;
				continue;
			}
			if (*q == '"') {
				quote = !quote;
				continue;
			}
			if (quote)
				continue;
			if (is_ws(*q) || *q == ';')
				break;
		}
		n = (size_t)(q - v);
		if (n > 1 && v[0] == '"' && v[n - 1] == '"') {
			++v;
			n -= 2;
		}
		if (!n)
			continue;
		val->p = v;
		val->l = n;
		return 0;
	}

	return ENOENT;
}


/**
 * Check that parameter name is in a parameter list
 *
 * @param pl   Parameter list
 * @param name Parameter name
 * @param val  Set to the parameter, from its ';' to the end of its name
 *
 * @return 0 if found, ENOENT if not, EINVAL on bad arguments
 */
int msg_param_exists(const struct pl *pl, const char *name, struct pl *val)
{
	const char *p, *end;

	if (!pl || !name || !val)
		return EINVAL;

	if (!plain(name)) {
		struct pl v1, v2;
		char xpr[128];

		(void)re_snprintf(xpr, sizeof(xpr),
				  ";[ \t\r\n]*%s[ \t\r\n;=]*", name);
		if (re_regex(pl->p, pl->l, xpr, &v1, &v2))
			return ENOENT;
		if (!v2.l && v2.p < pl->p + pl->l)
			return ENOENT;
		val->p = v1.p - 1;
		val->l = v2.p - val->p;
		return 0;
	}

	if (!pl->p)
		return ENOENT;
	end = pl->p + pl->l;

	for (p = pl->p; p < end; ++p) {
		const char *q, *ws, *t;

		(void)ws;

		p = memchr(p, ';', (size_t)(end - p));
		if (!p)
			break;

		q = match_name(p, end, name, &ws);
		if (!q)
			continue;
		if (q > end)
			return ENOENT;

		/* the first match decides: a longer name ends the search */
		for (t = q; t < end && (is_ws(*t) || *t == ';' || *t == '=');)
			++t;
		if (t == q && q < end)
			return ENOENT;

		val->p = p;
		val->l = (size_t)(q - p);
		return 0;
	}

	return ENOENT;
}
