/**
 * @file loop.c  libre's main loop and timers as "luasip.timer"
 *
 * There is one loop: re_main() on the thread that opened the module. A
 * timer box points at a struct lsip_timer; the struct is pinned (registry
 * ref to its box) while the timer runs, so the Lua GC cannot collect a
 * timer libre still holds. The timeout handler unpins before emitting, so
 * the script may restart the timer from the event. :close(), __gc and
 * __close share one release path that cancels the tmr.
 */

#include "lsip.h"
#include <time.h>
#include <signal.h>
#include <malloc.h>
#include <errno.h>
#include <sys/epoll.h>


/* libre's main.c: the calling thread's timer list (not in re's headers) */
extern struct list *tmrl_get(void);


enum { TRIM_INTERVAL = 5000, TRIM_MIN = 8 << 20, TRIM_QUIET_TICKS = 7 };


struct lsip_timer {
	struct tmr tmr;
	int self;          /* pin while running */
};


static void timer_destructor(void *arg)
{
	struct lsip_timer *t = arg;

	tmr_cancel(&t->tmr);
}


/* runs inside re_main */
static void timeout_handler(void *arg)
{
	struct lsip_timer *t = arg;
	lua_State *L = lsip_L;

	if (!lsip_push_ref(L, t->self))
		return;

	lsip_unpin(L, &t->self);
	lsip_emit(L, "timer", 1);
}


static struct lsip_timer *timer_check(lua_State *L)
{
	struct lsip_timer **box = lsip_checkbox(L, 1, LSIP_TIMER_MT);

	return *box;
}


/* core.timer() -> timer */
static int l_timer_new(lua_State *L)
{
	struct lsip_timer *t = mem_zalloc(sizeof(*t), timer_destructor);

	if (!t)
		return luaL_error(L, "luasip.timer: out of memory");

	t->self = LUA_NOREF;
	tmr_init(&t->tmr);
	lsip_newbox(L, t, LSIP_TIMER_MT);
	return 1;
}


/* timer:start(seconds) -> true; restarts a running timer */
static int l_timer_start(lua_State *L)
{
	struct lsip_timer *t = timer_check(L);
	lua_Number s = luaL_checknumber(L, 2);

	if (!(s >= 0) || s > 1e9)
		return luaL_error(L, "bad argument #1 to 'start' (seconds "
				  "out of range: %f)", s);
	if (!t)
		return lsip_fail(L, ENOTCONN, "closed");

	if (t->self == LUA_NOREF)
		t->self = lsip_pin(L, 1);

	lsip_tmr_start_us(&t->tmr, lsip_tmr_now_us() + (uint64_t)(s * 1e6 + 0.5),
			  timeout_handler, t);
	lua_pushboolean(L, 1);
	return 1;
}


/* timer:stop() -> true */
static int l_timer_stop(lua_State *L)
{
	struct lsip_timer *t = timer_check(L);

	if (t) {
		tmr_cancel(&t->tmr);
		lsip_unpin(L, &t->self);
	}

	lua_pushboolean(L, 1);
	return 1;
}


/* timer:remaining() -> seconds left, 0 when stopped or due */
static int l_timer_remaining(lua_State *L)
{
	struct lsip_timer *t = timer_check(L);

	lua_pushnumber(L, t ? lsip_tmr_expire_us(&t->tmr) / 1e6 : 0);
	return 1;
}


/* timer:running() -> boolean */
static int l_timer_running(lua_State *L)
{
	struct lsip_timer *t = timer_check(L);

	lua_pushboolean(L, t && tmr_isrunning(&t->tmr));
	return 1;
}


/* :close(), __gc, __close */
static int l_timer_close(lua_State *L)
{
	struct lsip_timer **box = lsip_checkbox(L, 1, LSIP_TIMER_MT);

	if (*box) {
		lsip_unpin(L, &(*box)->self);
		*box = mem_deref(*box);
	}

	return 0;
}


/*
 * libre's only epoll_wait() call, in main.o's fd_poll(), is linked to
 * this wrapper (-Wl,--wrap=epoll_wait), for two things media pacing needs:
 *
 * - A batch: fd_poll() asks for up to fd_setsize events (8192) and runs
 *   every handler before tmr_poll(). After a busy moment thousands of RTP
 *   sockets are ready at once; handling them all took several ms, and
 *   every media timer due meanwhile fired that late. Here at most
 *   EPOLL_BATCH events per poll, then the due timers run. Nothing is
 *   lost: epoll is level triggered and puts the sockets it returned at
 *   the tail of its ready list, so the next poll returns the rest first.
 * - An exact timeout: fd_poll() passes tmr_next_timeout() in whole ms,
 *   so a timer fired up to 1 ms late. The timers keep us deadlines
 *   (tmr.c), and epoll_pwait2() (Linux 5.11) sleeps until the earliest;
 *   where the kernel lacks it, the ms timeout as before.
 */
enum { EPOLL_BATCH = 32 };

static bool no_pwait2;

int __real_epoll_wait(int epfd, struct epoll_event *events, int maxevents,
		      int timeout);
int __wrap_epoll_wait(int epfd, struct epoll_event *events, int maxevents,
		      int timeout);

int __wrap_epoll_wait(int epfd, struct epoll_event *events, int maxevents,
		      int timeout)
{
	if (maxevents > EPOLL_BATCH)
		maxevents = EPOLL_BATCH;

	if (timeout > 0 && !no_pwait2) {
		const int64_t us = lsip_tmr_next_us();

		if (us >= 0 && us < (int64_t)timeout * 1000) {
			struct timespec ts;
			int n;

			ts.tv_sec  = (time_t)(us / 1000000);
			ts.tv_nsec = (long)(us % 1000000) * 1000;
			n = epoll_pwait2(epfd, events, maxevents, &ts, NULL);
			if (n >= 0 || errno != ENOSYS)
				return n;

			no_pwait2 = true;
		}
	}

	return __real_epoll_wait(epfd, events, maxevents, timeout);
}


static void signal_handler(int sig)
{
	(void)sig;
	re_cancel();
}


/* core.run() -> true | nil, err: runs re_main until core.stop() */
static int l_run(lua_State *L)
{
	int err = re_main(signal_handler);

	if (err)
		return lsip_fail(L, err, "run");

	lua_pushboolean(L, 1);
	return 1;
}


/* core.stop(): make re_main return after the current event */
static int l_stop(lua_State *L)
{
	(void)L;
	re_cancel();
	return 0;
}


/* core.now() -> monotonic seconds (float) */
static int l_now(lua_State *L)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	lua_pushnumber(L, ts.tv_sec + ts.tv_nsec / 1e9);
	return 1;
}


/* core.timers() -> running timers, next timeout (ms, libre semantics) */
static int l_timers(lua_State *L)
{
	lua_pushinteger(L, lsip_tmr_count());
	lua_pushinteger(L, (lua_Integer)tmr_next_timeout(tmrl_get()));
	return 2;
}


/*
 * Heap trimming. A SIP server's memory is mostly transactions that
 * linger 32 s after each call; glibc keeps the freed pages, so the RSS
 * would stay at its peak. While there is traffic (and until the heap
 * settles after it) a timer gives free pages back every few seconds.
 */
static struct {
	struct tmr tmr;
	uint64_t activity;     /* messages since the last tick */
	size_t free_trimmed;   /* free bytes right after the last trim */
	unsigned quiet;        /* ticks without traffic */
} trim;


/*
 * glibc caches the last 7 freed chunks of each small size (its tcache:
 * 64 sizes, 24 to 1032 bytes). malloc_trim() does not empty it, and
 * after a burst those chunks lie all over the peak-sized heap, each
 * keeping its page. So the module holds one set of "plug" chunks,
 * allocated while the heap is small: before the last trim the cached
 * chunks are taken out, the plugs go in their place, and the taken
 * chunks are freed past the full cache, where the trim can release
 * them; then the plugs are taken back (the cache is LIFO).
 */
enum { TCACHE_BINS = 64, TCACHE_COUNT = 7 };

static void *plugs[TCACHE_BINS][TCACHE_COUNT];
static bool plugged;

static size_t tcache_size(int bin)
{
	return 24 + 16 * (size_t)bin;    /* a request that lands in bin */
}


static void plugs_take(void)
{
	int i, j;

	for (i = 0; i < TCACHE_BINS; i++) {
		for (j = 0; j < TCACHE_COUNT; j++)
			plugs[i][j] = malloc(tcache_size(i));
	}
}


static void trim_all(void)
{
	void *taken[TCACHE_BINS][TCACHE_COUNT];
	int i, j;

	if (!plugged) {
		(void)malloc_trim(0);
		return;
	}

	for (i = 0; i < TCACHE_BINS; i++) {
		for (j = 0; j < TCACHE_COUNT; j++)
			taken[i][j] = malloc(tcache_size(i));
	}
	for (i = 0; i < TCACHE_BINS; i++) {
		for (j = 0; j < TCACHE_COUNT; j++)
			free(plugs[i][j]);
	}
	for (i = 0; i < TCACHE_BINS; i++) {
		for (j = 0; j < TCACHE_COUNT; j++)
			free(taken[i][j]);
	}
	(void)malloc_trim(0);
	plugs_take();
}


/* At start-up, while the heap is small and its pages in use anyway */
void lsip_mem_init(void)
{
	if (plugged)
		return;
	plugs_take();
	plugged = true;
}


static void trim_handler(void *arg)
{
	struct mallinfo2 mi = mallinfo2();
	bool last;
	(void)arg;

	/* tick while there is traffic, and until libre's finished
	 * transactions (64*T1 = 32 s after the last message) are gone */
	if (trim.activity)
		trim.quiet = 0;
	else
		++trim.quiet;
	trim.activity = 0;
	last = trim.quiet >= TRIM_QUIET_TICKS;

	/* The last tick: collect Lua's garbage of the finished calls too.
	 * An idle loop allocates nothing, so Lua's incremental collector
	 * would leave it (strings, tables, coroutine stacks) scattered over
	 * the peak-sized heap, each object pinning a page. */
	if (last && lsip_L) {
		/* twice: objects with finalizers are freed in the second */
		lua_gc(lsip_L, LUA_GCCOLLECT);
		lua_gc(lsip_L, LUA_GCCOLLECT);
		mi = mallinfo2();
	}

	/* trim when much has been freed since the last time, and on the
	 * last tick whatever is left */
	if (last) {
		lsip_msgdec_flush();   /* its pooled header blocks too */
		trim_all();
		trim.free_trimmed = mallinfo2().fordblks;
	}
	else if (mi.fordblks > trim.free_trimmed + TRIM_MIN) {
		(void)malloc_trim(0);
		trim.free_trimmed = mallinfo2().fordblks;
	}
	else if (mi.fordblks < trim.free_trimmed) {
		trim.free_trimmed = mi.fordblks;
	}

	if (!last)
		tmr_start(&trim.tmr, TRIM_INTERVAL, trim_handler, NULL);
}


/**
 * Note SIP traffic; arms the heap-trim timer. Runs inside re_main.
 */
void lsip_mem_activity(void)
{
	++trim.activity;
	if (!tmr_isrunning(&trim.tmr))
		tmr_start(&trim.tmr, TRIM_INTERVAL, trim_handler, NULL);
}


/*
 * core.memory(trim) -> bytes in use, bytes free in the heap, after an
 * optional malloc_trim(0) that gives free pages back to the system
 */
static int l_memory(lua_State *L)
{
	struct mallinfo2 mi;

	if (lua_toboolean(L, 1))
		(void)malloc_trim(0);

	mi = mallinfo2();
	lua_pushinteger(L, (lua_Integer)(mi.uordblks + mi.hblkhd));
	lua_pushinteger(L, (lua_Integer)mi.fordblks);
	return 2;
}


/* core.jiffies() -> libre's millisecond clock */
static int l_jiffies(lua_State *L)
{
	lua_pushinteger(L, (lua_Integer)tmr_jiffies());
	return 1;
}


/**
 * Register the loop functions and the luasip.timer type
 *
 * @param L Lua state, module table on top
 *
 * @return 0
 */
int lsip_open_loop(lua_State *L)
{
	static const luaL_Reg methods[] = {
		{"start", l_timer_start},
		{"stop", l_timer_stop},
		{"remaining", l_timer_remaining},
		{"running", l_timer_running},
		{"close", l_timer_close},
		{NULL, NULL}
	};
	static const luaL_Reg meta[] = {
		{"__gc", l_timer_close},
		{"__close", l_timer_close},
		{NULL, NULL}
	};
	static const luaL_Reg funcs[] = {
		{"timer", l_timer_new},
		{"run", l_run},
		{"stop", l_stop},
		{"now", l_now},
		{"timers", l_timers},
		{"jiffies", l_jiffies},
		{"memory", l_memory},
		{NULL, NULL}
	};

	lsip_setfuncs(L, LSIP_TIMER_MT, methods, meta);
	luaL_setfuncs(L, funcs, 0);
	return 0;
}
