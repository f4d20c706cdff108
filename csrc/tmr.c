/** @file tmr.c  Timers as a binary heap, replacing libre's sorted list */

/*
 * libre 1.1.0 keeps every timer of a thread in one list sorted by expiry,
 * so tmr_start() walks the list (O(n)). This file defines every global
 * symbol of libre's tmr.o, so when it is linked together with libre.a the
 * archive member is never pulled in. Timers live in a binary min-heap
 * ordered by (expiry, start sequence): insert, cancel and pop are
 * O(log n), and timers with the same expiry fire in start order.
 *
 * Expiries are kept in microseconds (tmr->jfs holds the deadline in us
 * of CLOCK_MONOTONIC, not libre's ms jiffies), so a timer started with a
 * delay of d ms fires d ms after its start, not at the next ms boundary
 * after that; lsip_tmr_start_us() takes a deadline in us (media pacing),
 * and lsip_tmr_next_us() gives loop.c's poll its exact timeout. The ms
 * API (tmr_jiffies, tmr_next_timeout, tmr_get_expire) is unchanged.
 *
 * Lifetimes: the caller owns every struct tmr, as with libre; this file
 * only keeps a pointer to it while it is running (th != NULL), so a
 * running timer must be cancelled before its memory is freed. The heap
 * belongs to the timer list that tmrl_get() returns for the calling
 * thread, that is to libre's main-loop context: the one created by
 * re_thread_init() on that thread, or the global one, shared by the main
 * thread and by threads that use re_thread_enter(). The heap is malloc'd
 * on the first tmr_start() in that context and its address is stored in
 * the context's struct list (head stays NULL, tail holds the heap), which
 * only tmr_poll() and tmr_next_timeout() ever see. It is never freed:
 * each re_thread_init()/re_thread_close() pair that used timers leaves
 * about 3 KB behind. A running timer records its heap in le.list and
 * its slot in le.data, so tmr_cancel() finds the right heap from any
 * context. Like libre there is no locking: a heap may only be touched
 * by its own thread, or by others while they hold the main-loop lock
 * (re_thread_enter()).
 */

#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200112L
#endif

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <re.h>


#define DEBUG_MODULE "tmr"
#define DEBUG_LEVEL 5
#include <re_dbg.h>


enum {
	HEAP_FLOOR = 128,  /**< Heap capacity never goes below [entries] */
	STATUS_MAX = 20,   /**< Earliest timers printed by tmr_status()  */
};


/** One heap slot; key copied from the timer for cache-friendly compares */
struct hent {
	uint64_t jfs;       /**< Expiry [us]                      */
	uint64_t seq;       /**< Start order, breaks ties on jfs  */
	struct tmr *tmr;    /**< The running timer                */
};

/** Binary min-heap of running timers of one main-loop context */
struct theap {
	struct hent *v;     /**< Slots, v[0] is the earliest      */
	size_t n;           /**< Running timers                   */
	size_t cap;         /**< Allocated slots                  */
	uint64_t seq;       /**< Next start sequence number       */
};


/* defined by libre's main.c; returns the calling context's timer list */
extern struct list *tmrl_get(void);

uint32_t lsip_tmr_count(void);
int lsip_tmr_close(void);
uint64_t lsip_tmr_now_us(void);
int64_t lsip_tmr_next_us(void);
void lsip_tmr_start_us(struct tmr *tmr, uint64_t due, tmr_h *th, void *arg);
uint64_t lsip_tmr_expire_us(const struct tmr *tmr);


static struct theap *heap_get(struct list *tmrl, bool create)
{
	struct theap *h;

	if (!tmrl)
		return NULL;

	h = (struct theap *)(void *)tmrl->tail;
	if (h || !create)
		return h;

	h = calloc(1, sizeof(*h));
	if (!h)
		return NULL;

	tmrl->head = NULL;
	tmrl->tail = (struct le *)(void *)h;

	return h;
}


static inline bool hent_before(const struct hent *a, const struct hent *b)
{
	if (a->jfs != b->jfs)
		return a->jfs < b->jfs;

	return a->seq < b->seq;
}


static inline void hent_put(struct theap *h, size_t i, const struct hent *e)
{
	h->v[i] = *e;
	e->tmr->le.data = (void *)(uintptr_t)i;
}


static void sift_up(struct theap *h, size_t i, const struct hent *e)
{
	while (i > 0) {
		const size_t p = (i - 1) / 2;

		if (!hent_before(e, &h->v[p]))
			break;

		hent_put(h, i, &h->v[p]);
		i = p;
	}

	hent_put(h, i, e);
}


static void sift_down(struct theap *h, size_t i, const struct hent *e)
{
	for (;;) {
		size_t c = 2 * i + 1;

		if (c >= h->n)
			break;

		if (c + 1 < h->n && hent_before(&h->v[c + 1], &h->v[c]))
			++c;

		if (!hent_before(&h->v[c], e))
			break;

		hent_put(h, i, &h->v[c]);
		i = c;
	}

	hent_put(h, i, e);
}


static int heap_reserve(struct theap *h)
{
	struct hent *v;
	size_t cap;

	if (h->n < h->cap)
		return 0;

	cap = h->cap ? h->cap * 2 : HEAP_FLOOR;
	if (cap > SIZE_MAX / sizeof(*v))
		return ENOMEM;

	v = realloc(h->v, cap * sizeof(*v));
	if (!v)
		return ENOMEM;

	h->v   = v;
	h->cap = cap;

	return 0;
}


static void heap_shrink(struct theap *h)
{
	struct hent *v;
	size_t cap;

	if (h->cap <= HEAP_FLOOR || h->n >= h->cap / 4)
		return;

	cap = h->cap / 2;
	if (cap < HEAP_FLOOR)
		cap = HEAP_FLOOR;

	v = realloc(h->v, cap * sizeof(*v));
	if (!v)
		return;  /* keep the bigger array, nothing lost */

	h->v   = v;
	h->cap = cap;
}


static void heap_remove(struct theap *h, size_t i)
{
	struct tmr *tmr = h->v[i].tmr;
	struct hent last;

	tmr->le.list = NULL;
	tmr->le.data = NULL;

	--h->n;
	if (i < h->n) {
		last = h->v[h->n];

		if (i > 0 && hent_before(&last, &h->v[(i - 1) / 2]))
			sift_up(h, i, &last);
		else
			sift_down(h, i, &last);
	}

	heap_shrink(h);
}


static void tmr_unlink(struct tmr *tmr)
{
	struct theap *h = (struct theap *)(void *)tmr->le.list;
	const uintptr_t i = (uintptr_t)tmr->le.data;

	if (!h || i >= h->n || h->v[i].tmr != tmr) {
		DEBUG_WARNING("timer %p is running but not in a heap"
			      " (copied or corrupt?)\n", (void *)tmr);
		return;
	}

	heap_remove(h, i);
}


/**
 * Poll all timers of a main-loop context: fire every timer that was due
 * when the poll started, earliest first
 *
 * @param tmrl Timer list of the context (from tmrl_get())
 */
void tmr_poll(struct list *tmrl)
{
	const uint64_t jfs = lsip_tmr_now_us();
	struct theap *h = heap_get(tmrl, false);

	if (!h)
		return;

	while (h->n > 0 && h->v[0].jfs <= jfs) {
		struct tmr *tmr = h->v[0].tmr;
		tmr_h *th = tmr->th;
		void *arg = tmr->arg;

		heap_remove(h, 0);
		tmr->th = NULL;

		/* may start, cancel or free any timer, this one too */
		if (th)
			th(arg);
	}
}


/**
 * Get the timer jiffies in milliseconds, from CLOCK_MONOTONIC
 *
 * @return Jiffies in [ms]
 */
uint64_t tmr_jiffies(void)
{
	return lsip_tmr_now_us() / 1000;
}


/**
 * Get the monotonic clock in microseconds (the timers' time base)
 *
 * @return Microseconds of CLOCK_MONOTONIC
 */
uint64_t lsip_tmr_now_us(void)
{
	struct timespec now;

	if (0 != clock_gettime(CLOCK_MONOTONIC, &now)) {
		DEBUG_WARNING("clock_gettime() failed (%m)\n", errno);
		return 0;
	}

	return (uint64_t)now.tv_sec * 1000000 + (uint64_t)now.tv_nsec / 1000;
}


/* us until h's earliest timer, 0 if due, -1 if none */
static int64_t heap_next_us(const struct theap *h)
{
	uint64_t now;

	if (!h || !h->n)
		return -1;

	now = lsip_tmr_now_us();
	if (h->v[0].jfs <= now)
		return 0;
	if (h->v[0].jfs - now > INT64_MAX)
		return INT64_MAX;

	return (int64_t)(h->v[0].jfs - now);
}


/**
 * Get number of milliseconds until the next timer expires
 *
 * @param tmrl Timer list of the context (from tmrl_get())
 *
 * @return Number of [ms] (rounded up), 1 if a timer is already due,
 *         0 if no timers
 */
uint64_t tmr_next_timeout(struct list *tmrl)
{
	const int64_t us = heap_next_us(heap_get(tmrl, false));

	if (us < 0)
		return 0;

	return us <= 1000 ? 1 : ((uint64_t)us + 999) / 1000;
}


/**
 * Get the time until the calling context's next timer expires
 *
 * @return Microseconds, 0 if a timer is due, -1 if no timer runs
 */
int64_t lsip_tmr_next_us(void)
{
	return heap_next_us(heap_get(tmrl_get(), false));
}


/**
 * Print the number of running timers of the calling context and the
 * earliest of them, in expiry order
 *
 * @param pf     Print handler
 * @param unused Unused
 *
 * @return 0 if success, otherwise errorcode
 */
int tmr_status(struct re_printf *pf, void *unused)
{
	const struct theap *h = heap_get(tmrl_get(), false);
	size_t cand[STATUS_MAX + 2];
	size_t ncand = 0;
	uint32_t shown = 0;
	int err;

	(void)unused;

	if (!h || !h->n)
		return 0;

	err = re_hprintf(pf, "Timers (%u):\n", (uint32_t)h->n);

	/* the k smallest of a heap: best-first walk from the root */
	cand[ncand++] = 0;
	while (ncand > 0 && shown < STATUS_MAX) {
		const struct tmr *tmr;
		size_t best = 0, i, j;

		for (j = 1; j < ncand; ++j) {
			if (hent_before(&h->v[cand[j]], &h->v[cand[best]]))
				best = j;
		}

		i = cand[best];
		cand[best] = cand[--ncand];

		tmr = h->v[i].tmr;
		err |= re_hprintf(pf, "  %p: th=%p expire=%llums\n",
				  tmr, tmr->th,
				  (unsigned long long)tmr_get_expire(tmr));
		++shown;

		for (j = 2 * i + 1; j <= 2 * i + 2 && j < h->n; ++j)
			cand[ncand++] = j;
	}

	if (h->n > shown)
		err |= re_hprintf(pf, "    (%u more not shown)\n",
				  (uint32_t)h->n - shown);

	return err;
}


/**
 * Print timer debug info to stderr
 */
void tmr_debug(void)
{
	if (lsip_tmr_count())
		(void)re_fprintf(stderr, "%H", tmr_status, NULL);
}


/**
 * Initialise a timer object
 *
 * @param tmr Timer to initialise
 */
void tmr_init(struct tmr *tmr)
{
	if (!tmr)
		return;

	memset(tmr, 0, sizeof(*tmr));
}


/**
 * Start a timer; restarts it if running, cancels it if th is NULL
 *
 * @param tmr   Timer to start
 * @param delay Timer delay in [ms]
 * @param th    Timeout handler
 * @param arg   Handler argument
 */
void tmr_start(struct tmr *tmr, uint64_t delay, tmr_h *th, void *arg)
{
	uint64_t now;

	if (!tmr || !th) {
		lsip_tmr_start_us(tmr, 0, NULL, NULL);
		return;
	}

	now = lsip_tmr_now_us();
	if (delay > (UINT64_MAX - now) / 1000)
		lsip_tmr_start_us(tmr, UINT64_MAX, th, arg);
	else
		lsip_tmr_start_us(tmr, now + delay * 1000, th, arg);
}


/**
 * Start a timer that expires at a deadline; restarts it if running,
 * cancels it if th is NULL
 *
 * @param tmr Timer to start
 * @param due Deadline in [us] of lsip_tmr_now_us()'s clock (a deadline
 *            already past fires at the next tmr_poll)
 * @param th  Timeout handler
 * @param arg Handler argument
 */
void lsip_tmr_start_us(struct tmr *tmr, uint64_t due, tmr_h *th, void *arg)
{
	struct theap *h;
	struct hent e;

	if (!tmr)
		return;

	if (tmr->th)
		tmr_unlink(tmr);

	tmr->th  = th;
	tmr->arg = arg;

	if (!th)
		return;

	h = heap_get(tmrl_get(), true);
	if (!h || heap_reserve(h)) {
		DEBUG_WARNING("start: out of memory, timer %p not started\n",
			      (void *)tmr);
		tmr->th = NULL;
		return;
	}

	tmr->jfs = due;

	e.jfs = tmr->jfs;
	e.seq = h->seq++;
	e.tmr = tmr;

	tmr->le.list = (struct list *)(void *)h;
	++h->n;
	sift_up(h, h->n - 1, &e);
}


/**
 * Cancel an active timer; no-op if it is not running
 *
 * @param tmr Timer to cancel
 */
void tmr_cancel(struct tmr *tmr)
{
	tmr_start(tmr, 0, NULL, NULL);
}


/**
 * Get the time left until timer expires
 *
 * @param tmr Timer object
 *
 * @return Time in [ms] until expiration (rounded up), 0 if not running
 *         or due
 */
uint64_t tmr_get_expire(const struct tmr *tmr)
{
	return (lsip_tmr_expire_us(tmr) + 999) / 1000;
}


/**
 * Get the time left until a timer expires, in microseconds
 *
 * @param tmr Timer object
 *
 * @return Time in [us] until expiration, 0 if not running or due
 */
uint64_t lsip_tmr_expire_us(const struct tmr *tmr)
{
	uint64_t now;

	if (!tmr || !tmr->th)
		return 0;

	now = lsip_tmr_now_us();

	return (tmr->jfs > now) ? tmr->jfs - now : 0;
}


/**
 * Get the number of running timers of the calling context
 *
 * @return Number of running timers
 */
uint32_t lsip_tmr_count(void)
{
	const struct theap *h = heap_get(tmrl_get(), false);

	return h ? (uint32_t)h->n : 0;
}


/**
 * Free the calling context's heap (at module unload: nothing runs after)
 *
 * @return 0
 */
int lsip_tmr_close(void)
{
	struct list *tmrl = tmrl_get();
	struct theap *h = heap_get(tmrl, false);

	if (!h)
		return 0;

	/* timers still running belong to objects nobody will run again */
	free(h->v);
	free(h);
	tmrl->tail = NULL;
	return 0;
}
