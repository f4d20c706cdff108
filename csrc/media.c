/**
 * @file media.c  Per-call RTP audio (G.711, RFC 4733) as "luasip.media"
 *
 * A media box points at a struct lsip_media that owns the RTP socket
 * (RTCP on port+1), the SDP session, the telephone-event state, the
 * player source and the recorder. All per-packet work runs here on
 * libre's loop: the receive handler checks source and payload type,
 * queues audio in a jitter buffer and feeds the digit queue; a tmr paced
 * from a fixed start time plays one 20 ms frame out of the jitter buffer
 * (to the recorder and the echo ring) and sends one frame per tick.
 * Lua sees events only: "played", "dtmf", "recorded" and "closed". The
 * box is pinned from :start() until :close() (the Lua side closes media
 * when its call closes); destructors never touch Lua. Handlers that emit
 * hold a reference, as Lua may close the media from the event.
 */

#include "lsip.h"
#include <ctype.h>
#include <time.h>
#include <rem_au.h>
#include <rem_g711.h>
#include <rem_aufile.h>
#include <rem_autone.h>
#include <rem_dtmf.h>


enum {
	SRATE = 8000,
	PTIME = 20,
	FRAME = SRATE * PTIME / 1000,  /* samples per packet */
	NARR = 64,                     /* arrival times kept for tests */
	ECHO_MAX = SRATE / 2,          /* echo buffer: 500 ms */
	DIGITS_MAX = 64,
	SILENCE_LEVEL = 300,           /* mean |sample| under this */
	IV_BIN_US = 100,               /* interval histograms: 0.1 ms bins */
	IV_BINS = 600,                 /* 0-60 ms, the last bin is ">=" */
};

enum src_type {
	SRC_NONE = 0,
	SRC_FILE,                      /* streamed: files over prompt.c's cap */
	SRC_PROMPT,                    /* from prompt.c's shared samples */
	SRC_TONE,
	SRC_SILENCE,
	SRC_ECHO,
};

enum codec {
	CODEC_PCMU = 0,
	CODEC_PCMA = 8,
};


struct lsip_media {
	struct rtp_sock *rtp;
	struct sdp_session *sdp;
	struct sdp_media *sm;
	struct telev *telev;
	struct lsip_msrtp *srtp;  /* NULL: srtp "off" (srtp.c) */
	struct jbuf *jbuf;        /* received audio, played out per tick */
	struct dtmf_dec *dtmf;    /* in-band detector (no telephone-event) */
	struct sa raddr;          /* where we send, what we accept */
	uint64_t t0;              /* pacing start (us, lsip_tmr_now_us) */
	uint64_t due;             /* next tick (us), while in the ring */
	struct le tick_le;        /* in ring, by due */
	uint64_t ticks;
	uint32_t ts;              /* next audio timestamp */
	uint32_t ev_ts;           /* timestamp of the running event */
	int tx_pt;                /* -1 until negotiated */
	int te_pt;                /* telephone-event pt, -1 if none */
	int codecs[4];            /* allowed: payload types in order */
	int ncodecs;
	bool symmetric, latched, started, marker, ev_active;
	bool rhold;               /* far end offered c=0.0.0.0 (old hold) */
	bool te_tx;               /* telev may have events to send */

	/* player */
	enum src_type src;
	struct aufile *play_af;
	bool play_16k;
	struct lsip_prompt *prompt;
	size_t prompt_pos;             /* next sample */
	struct mbuf *tone;        /* one second of samples, looped */
	uint32_t left;            /* samples left (tone, silence, echo) */
	bool playing;
	int16_t *echo;            /* ring of received samples (SRC_ECHO) */
	uint32_t echo_r, echo_w;

	/* recorder */
	struct lsip_recfile *rec;   /* written by recfile.c's thread */
	struct lsip_recwin recw;    /* where rec's next samples go */
	uint64_t rec_dropped;       /* bytes the writer could not keep */
	uint32_t rec_n, rec_max, sil_n, sil_max;
	struct mbuf *txmb;     /* one RTP packet, reused every frame */
	bool recording;

	/* digits received, oldest first */
	char digits[DIGITS_MAX + 1];
	size_t ndigits;
	int rx_event;

	/* stats */
	uint32_t tx_packets, tx_bytes, rx_packets, rx_bytes, rx_dropped;
	uint32_t rx_ssrc, rx_base_seq, rx_max_seq, rx_cycles;
	bool rx_seen;
	double jitter;            /* in timestamp units (RFC 3550) */
	int64_t last_transit;
	uint64_t arrivals[NARR];  /* us, ring */
	uint32_t narr;
	uint64_t last_tx;         /* us of the last packet sent, 0: none */

	int self;                 /* pin while started */
};


static uint32_t media_count;   /* live media structs, for leak checks */

/* gaps between consecutive packets of one media, summed over all media
 * of the process (bench/media.sh reads them through media_intervals) */
struct ivhist {
	uint64_t n, max;          /* max in us */
	uint32_t bin[IV_BINS + 1];
};
static struct ivhist iv_tx, iv_rx;


static void iv_add(struct ivhist *h, uint64_t gap)
{
	uint64_t k = gap / IV_BIN_US;

	++h->bin[k < IV_BINS ? k : IV_BINS];
	++h->n;
	if (gap > h->max)
		h->max = gap;
}


static uint64_t now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}


static void play_stop(struct lsip_media *m)
{
	m->play_af = mem_deref(m->play_af);
	m->prompt = mem_deref(m->prompt);
	m->tone = mem_deref(m->tone);
	m->src = SRC_NONE;
	m->left = 0;
}


static void ring_remove(struct lsip_media *m);


static void media_destructor(void *arg)
{
	struct lsip_media *m = arg;

	--media_count;
	ring_remove(m);
	play_stop(m);
	mem_deref(m->echo);
	mem_deref(m->txmb);
	(void)lsip_recfile_close(m->rec, &m->recw, NULL);
	mem_deref(m->telev);
	mem_deref(m->jbuf);
	mem_deref(m->dtmf);
	mem_deref(m->sdp);     /* owns sm */
	lsip_msrtp_detach(m->srtp);
	mem_deref(m->rtp);     /* its RTCP BYE still goes out as SRTCP */
	mem_deref(m->srtp);
}


static void media_emit(struct lsip_media *m, const char *ev, int nargs)
{
	lua_State *L = lsip_L;

	if (!lsip_push_ref(L, m->self)) {
		lua_pop(L, nargs);
		return;
	}

	lua_insert(L, -1 - nargs);
	lsip_emit(L, ev, nargs + 1);
}


static void rec_finish(struct lsip_media *m, const char *reason)
{
	lua_State *L = lsip_L;

	if (!m->recording)
		return;

	m->recording = false;
	/* returns once the file is complete on disk (header patched) */
	if (lsip_recfile_close(m->rec, &m->recw, &m->rec_dropped))
		reason = "error";
	m->rec = NULL;
	lua_pushnumber(L, (double)m->rec_n / SRATE);
	lua_pushstring(L, reason);
	media_emit(m, "recorded", 2);
}


static void rec_feed(struct lsip_media *m, const int16_t *s, size_t n)
{
	uint32_t sum = 0;
	size_t i;

	if (!m->recording)
		return;

	if (lsip_recfile_put(m->rec, &m->recw, s, n)) {
		rec_finish(m, "error");
		return;
	}

	m->rec_n += (uint32_t)n;
	if (m->sil_max) {              /* silence_stop: the mean level */
		for (i = 0; i < n; i++)
			sum += (uint32_t)(s[i] < 0 ? -s[i] : s[i]);

		if (n && sum / n < SILENCE_LEVEL)
			m->sil_n += (uint32_t)n;
		else
			m->sil_n = 0;
	}

	if (m->rec_max && m->rec_n >= m->rec_max)
		rec_finish(m, "max");
	else if (m->sil_max && m->sil_n >= m->sil_max)
		rec_finish(m, "silence");
}


static void digit_push(struct lsip_media *m, char d)
{
	lua_State *L = lsip_L;

	if (m->ndigits < DIGITS_MAX)
		m->digits[m->ndigits++] = d;

	lua_pushlstring(L, &d, 1);
	media_emit(m, "dtmf", 1);
}


static void digit_in(struct lsip_media *m, int code)
{
	if (code < 0 || code > 15)
		return;

	digit_push(m, (char)telev_code2digit(code));
}


/* in-band digit from librem's detector (inside play_out) */
static void dtmf_handler(char digit, void *arg)
{
	struct lsip_media *m = arg;

	digit_push(m, (char)toupper((unsigned char)digit));
}


static void rx_stats(struct lsip_media *m, const struct rtp_header *hdr,
		     size_t len, bool audio)
{
	uint64_t t = now_us();
	int64_t transit, d;
	uint16_t delta;

	++m->rx_packets;
	m->rx_bytes += (uint32_t)len;
	if (m->narr)
		iv_add(&iv_rx, t - m->arrivals[(m->narr - 1) % NARR]);
	m->arrivals[m->narr++ % NARR] = t;

	if (!m->rx_seen || hdr->ssrc != m->rx_ssrc) {
		m->rx_seen = true;
		m->rx_ssrc = hdr->ssrc;
		m->rx_base_seq = m->rx_max_seq = hdr->seq;
		m->rx_cycles = 0;
		m->jitter = 0;
		m->last_transit = (int64_t)(t * SRATE / 1000000) -
			(int64_t)hdr->ts;
		return;
	}

	delta = (uint16_t)(hdr->seq - m->rx_max_seq);
	if (delta && delta < 0x8000) {
		if (hdr->seq < m->rx_max_seq)
			m->rx_cycles += 0x10000;
		m->rx_max_seq = hdr->seq;
	}

	/* an event's packets share one timestamp: no jitter from them */
	if (!audio)
		return;

	/* RFC 3550 A.8 */
	transit = (int64_t)(t * SRATE / 1000000) - (int64_t)hdr->ts;
	d = transit - m->last_transit;
	m->last_transit = transit;
	if (d < 0)
		d = -d;
	m->jitter += (1.0 / 16.0) * ((double)d - m->jitter);
}


/* runs inside re_main */
static void rtp_handler(const struct sa *src, const struct rtp_header *hdr,
			struct mbuf *mb, void *arg)
{
	struct lsip_media *m = arg;
	struct mbuf *frame;
	bool end;
	size_t n;
	int ev;

	if (m->tx_pt < 0)
		goto drop;

	if (m->symmetric && !m->latched) {
		m->raddr = *src;
		m->latched = true;
	}
	else if (!sa_cmp(src, &m->raddr, SA_ALL)) {
		goto drop;
	}

	if (hdr->pt == m->te_pt && m->te_pt >= 0) {
		rx_stats(m, hdr, mbuf_get_left(mb), false);
		if (telev_recv(m->telev, mb, &ev, &end))
			return;
		if (!end) {
			m->rx_event = ev;
			digit_in(m, ev);
		}
		else {
			int prev = m->rx_event;

			m->rx_event = -1;
			if (prev != ev)
				digit_in(m, ev);
		}
		return;
	}

	if (hdr->pt != CODEC_PCMU && hdr->pt != CODEC_PCMA)
		goto drop;
	if (hdr->pt != m->tx_pt)
		goto drop;

	rx_stats(m, hdr, mbuf_get_left(mb), true);

	/* a copy of the payload waits in the jitter buffer for play_out */
	n = mbuf_get_left(mb);
	frame = mbuf_alloc(n ? n : 1);
	if (!frame)
		return;
	(void)mbuf_write_mem(frame, mbuf_buf(mb), n);
	frame->pos = 0;
	(void)jbuf_put(m->jbuf, hdr, frame);
	mem_deref(frame);
	return;

 drop:
	++m->rx_dropped;
}


/* one frame from the jitter buffer to the echo ring and the recorder */
/*
 * G.711 encoding by one table lookup per sample: librem's encoders take a
 * dozen instructions and two branches per sample (callgrind, bench/media.sh:
 * 1,800 instructions per frame, a fifth of a call's per-frame work). The
 * tables are built from librem's own functions, so every byte is theirs.
 */
static uint8_t enc_ulaw[65536], enc_alaw[65536];
static bool enc_ready;


static void enc_init(void)
{
	uint32_t i;

	for (i = 0; i < 65536; i++) {
		int16_t v = (int16_t)(uint16_t)i;

		enc_ulaw[i] = g711_pcm2ulaw(v);
		/* librem negates the sample: -32768 stays negative and
		 * indexes before its A-law table; it encodes as -32767 */
		enc_alaw[i] = g711_pcm2alaw(v == INT16_MIN ? -INT16_MAX : v);
	}
	enc_ready = true;
}


/**
 * The G.711 encoder table: byte for a sample s is table[(uint16_t)s]
 *
 * @param ulaw true: u-law, false: A-law
 *
 * @return 65536 bytes
 */
const uint8_t *lsip_g711_table(bool ulaw)
{
	if (!enc_ready)
		enc_init();
	return ulaw ? enc_ulaw : enc_alaw;
}


static void play_out(struct lsip_media *m)
{
	struct rtp_header hdr;
	int16_t pcm[FRAME * 4];
	struct mbuf *frame;
	void *mem = NULL;
	size_t i, n;

	if (jbuf_get(m->jbuf, &hdr, &mem) || !mem)
		return;

	frame = mem;
	n = mbuf_get_left(frame);
	if (n > sizeof(pcm) / sizeof(pcm[0]))
		n = sizeof(pcm) / sizeof(pcm[0]);
	{
		const uint8_t *b = frame->buf + frame->pos;
		const int16_t *tab = hdr.pt == CODEC_PCMU ? g711_u2l :
			g711_A2l;

		for (i = 0; i < n; i++)
			pcm[i] = tab[b[i]];
	}
	mem_deref(frame);

	if (m->src == SRC_ECHO && m->echo) {
		for (i = 0; i < n; i++) {
			if (m->echo_w - m->echo_r >= ECHO_MAX)
				++m->echo_r;       /* full: drop the oldest */
			m->echo[m->echo_w++ % ECHO_MAX] = pcm[i];
		}
	}

	if (m->te_pt < 0 && m->dtmf)
		dtmf_dec_probe(m->dtmf, pcm, n);  /* may emit "dtmf" */

	if (m->started)
		rec_feed(m, pcm, n);
}


/* RTCP is read by libre (rtcp_stats); nothing to do per report */
static void rtcp_handler(const struct sa *src, struct rtcp_msg *msg,
			 void *arg)
{
	(void)src;
	(void)msg;
	(void)arg;
}


/* fill s[FRAME] from the player, or point *enc at FRAME bytes already
 * encoded for tx_pt (a whole frame of a prompt); returns true when the
 * item ended */
static bool play_pull(struct lsip_media *m, int16_t *s, const uint8_t **enc)
{
	int16_t buf[FRAME * 2];
	size_t sz, i, n;

	*enc = NULL;
	if (m->src != SRC_PROMPT)
		memset(s, 0, FRAME * 2);

	switch (m->src) {

	case SRC_FILE:
		sz = (m->play_16k ? FRAME * 2 : FRAME) * 2;
		if (aufile_read(m->play_af, (uint8_t *)buf, &sz) || !sz)
			return true;
		n = sz / 2;
		if (m->play_16k) {
			for (i = 0; i + 1 < n; i += 2)
				s[i / 2] = (int16_t)((buf[i] +
						      buf[i + 1]) / 2);
		}
		else {
			memcpy(s, buf, n * 2);
		}
		return false;

	case SRC_PROMPT: {
		const int16_t *pcm = lsip_prompt_pcm(m->prompt, &n);

		if (m->prompt_pos >= n) {
			memset(s, 0, FRAME * 2);
			return true;
		}
		n -= m->prompt_pos;
		if (n >= FRAME && (m->tx_pt == CODEC_PCMU ||
				   m->tx_pt == CODEC_PCMA)) {
			*enc = lsip_prompt_g711(m->prompt,
						m->tx_pt == CODEC_PCMU);
			if (*enc) {
				*enc += m->prompt_pos;
				m->prompt_pos += FRAME;
				return false;
			}
		}
		memset(s, 0, FRAME * 2);
		if (n > FRAME)
			n = FRAME;
		memcpy(s, pcm + m->prompt_pos, n * 2);
		m->prompt_pos += n;
		return false;
	}

	case SRC_TONE:
		n = m->left < FRAME ? m->left : FRAME;
		for (i = 0; i < n; i++) {
			size_t len = m->tone->end / 2;
			size_t pos = (m->tone->pos / 2) % len;

			s[i] = ((int16_t *)(void *)m->tone->buf)[pos];
			m->tone->pos = ((pos + 1) % len) * 2;
		}
		m->left -= (uint32_t)n;
		return m->left == 0;

	case SRC_SILENCE:
		n = m->left < FRAME ? m->left : FRAME;
		m->left -= (uint32_t)n;
		return m->left == 0;

	case SRC_ECHO:
		n = m->left < FRAME ? m->left : FRAME;
		for (i = 0; i < n && m->echo_r != m->echo_w; i++)
			s[i] = m->echo[m->echo_r++ % ECHO_MAX];
		m->left -= (uint32_t)n;
		return m->left == 0;

	default:
		return false;
	}
}


static void send_frame(struct lsip_media *m)
{
	struct mbuf *mb;
	int16_t s[FRAME];
	const uint8_t *enc;
	bool marker = false, ended;
	uint8_t *p;
	size_t i, plen;
	int err;

	ended = play_pull(m, s, &enc);
	if (ended && m->src != SRC_NONE) {
		play_stop(m);
		m->playing = false;
		media_emit(m, "played", 0);    /* Lua may queue or close */
		if (!m->started)
			return;
	}

	/* recvonly/inactive (ours or theirs): the clock runs, nothing sent */
	if (!(sdp_media_dir(m->sm) & SDP_SENDONLY) || m->rhold) {
		m->ts += FRAME;
		m->last_tx = 0;
		return;
	}

	if (!m->txmb) {
		/* room for SRTP's tag, added in place by the send helper */
		m->txmb = mbuf_alloc(RTP_HEADER_SIZE + FRAME + 64);
		if (!m->txmb)
			return;
	}
	mb = m->txmb;
	mb->pos = mb->end = RTP_HEADER_SIZE;

	/* libre's telev_poll fails only when idle with nothing queued, and
	 * stays so until the next telev_send: not polled (its struct is a
	 * cache miss a frame with 1000 calls) until send_dtmf queues more */
	if (m->te_pt >= 0 && m->te_tx &&
	    telev_poll(m->telev, &marker, mb))
		m->te_tx = false;

	if (m->te_pt >= 0 && m->te_tx && mb->end > RTP_HEADER_SIZE) {
		if (marker)
			m->ev_ts = m->ts;
		mb->pos = RTP_HEADER_SIZE;
		plen = mb->end - RTP_HEADER_SIZE;
		err = rtp_send(m->rtp, &m->raddr, false, marker,
			       (uint8_t)m->te_pt, m->ev_ts, mb);
		m->ev_active = true;
	}
	else {
		if (m->ev_active) {
			m->ev_active = false;
			m->marker = true;
		}
		/* encode in place: mbuf_write_u8 per sample cost more than
		 * the rest of the packet (callgrind, bench/media.sh) */
		p = mb->buf + RTP_HEADER_SIZE;
		if (enc) {
			memcpy(p, enc, FRAME);
		}
		else {
			const uint8_t *tab = m->tx_pt == CODEC_PCMU ?
				enc_ulaw : enc_alaw;

			for (i = 0; i < FRAME; i++)
				p[i] = tab[(uint16_t)s[i]];
		}
		mb->pos = RTP_HEADER_SIZE;
		mb->end = RTP_HEADER_SIZE + FRAME;
		plen = FRAME;
		err = rtp_send(m->rtp, &m->raddr, false, m->marker,
			       (uint8_t)m->tx_pt, m->ts, mb);
		m->marker = false;
	}

	if (!err) {
		uint64_t t = now_us();

		if (m->last_tx)
			iv_add(&iv_tx, t - m->last_tx);
		m->last_tx = t;
		++m->tx_packets;
		m->tx_bytes += (uint32_t)plen;   /* payload, no SRTP tag */
	}

	m->ts += FRAME;
}


/*
 * The media clock. Every started media ticks every PTIME from its own t0;
 * a libre timer per media kept 1000 calls in the timer heap, and each
 * tick's pop moved a dozen entries, each write landing in another call's
 * struct tmr (cache misses: heap_remove was 2.5% of the server in perf).
 * All ticks have the same period, so in order of deadline they form a
 * ring: the media just ticked has the latest deadline and goes to the
 * tail, in O(1), touching only the tail it follows (ticked just before).
 * One timer fires at the head's deadline and runs every tick due.
 */
static struct list ring = LIST_INIT;
static struct tmr ring_tmr;

static void tick(struct lsip_media *m);
static void ring_handler(void *arg);


/* the ring's timer at the head's deadline, stopped when the ring is empty */
static void ring_arm(void)
{
	if (ring.head)
		lsip_tmr_start_us(&ring_tmr,
				  ((struct lsip_media *)ring.head->data)->due,
				  ring_handler, NULL);
	else
		tmr_cancel(&ring_tmr);
}


static void ring_handler(void *arg)
{
	const uint64_t now = lsip_tmr_now_us();
	struct le *le;
	(void)arg;

	while ((le = ring.head) != NULL) {
		struct lsip_media *m = le->data;

		if (m->due > now)
			break;
		list_unlink(le);
		tick(m);               /* may close any media, m too */
	}

	ring_arm();
}


/* put m in the ring at deadline due (unlinked first if in it) */
static void ring_put(struct lsip_media *m, uint64_t due)
{
	struct le *le;

	list_unlink(&m->tick_le);
	m->due = due;

	/* the latest deadline (the rule): after the tail */
	le = ring.tail;
	if (!le || ((struct lsip_media *)le->data)->due <= due) {
		list_append(&ring, &m->tick_le, m);
	}
	else {
		/* a new or resynchronised clock: from the head */
		for (le = ring.head; le; le = le->next) {
			if (((struct lsip_media *)le->data)->due > due)
				break;
		}
		list_insert_before(&ring, le, &m->tick_le, m);
	}

	if (ring.head == &m->tick_le)
		ring_arm();
}


static void ring_remove(struct lsip_media *m)
{
	const bool head = ring.head == &m->tick_le;

	list_unlink(&m->tick_le);
	if (head)
		ring_arm();
}


/* one frame per tick, deadlines from t0 */
static void tick(struct lsip_media *m)
{
	uint64_t now, next;

	mem_ref(m);

	play_out(m);
	if (m->started)
		send_frame(m);

	/* media_emit above may have run Lua that closed us */
	if (!m->started) {
		mem_deref(m);
		return;
	}

	++m->ticks;
	now = lsip_tmr_now_us();
	next = m->t0 + m->ticks * PTIME * 1000;
	if (next + 10 * PTIME * 1000 < now) {
		/* far behind (loop stalled): resynchronise, don't burst */
		m->t0 = now;
		m->ticks = 0;
		next = now;
	}

	ring_put(m, next);
	mem_deref(m);
}


static struct lsip_media *media_check(lua_State *L)
{
	struct lsip_media **box = lsip_checkbox(L, 1, LSIP_MEDIA_MT);

	if (!*box)
		luaL_error(L, "luasip.media: media is closed");

	return *box;
}


static int codec_pt(const char *name)
{
	if (!str_casecmp(name, "PCMU"))
		return CODEC_PCMU;
	if (!str_casecmp(name, "PCMA"))
		return CODEC_PCMA;

	return -1;
}


/*
 * core.media(laddr, min, max, codecs, symmetric, televent, srtp, suites)
 *   -> media | nil, err, code
 * codecs: list of "PCMU"/"PCMA" (raises on others); televent: offer
 * telephone-event (default true); without it digits are detected in-band;
 * srtp: "off" (default), "optional" or "mandatory"; suites: SRTP suites
 * allowed (default both, see srtp.c)
 */
static int l_media_new(lua_State *L)
{
	const char *laddr = luaL_checkstring(L, 1);
	lua_Integer pmin = luaL_optinteger(L, 2, 10000);
	lua_Integer pmax = luaL_optinteger(L, 3, 20000);
	bool symmetric = lua_toboolean(L, 5);
	bool televent = lua_isnoneornil(L, 6) || lua_toboolean(L, 6);
	struct lsip_media *m;
	struct sa ip;
	int i, n, err;

	lua_settop(L, 8);              /* the box goes to 9 */
	if (sa_set_str(&ip, laddr, 0))
		return luaL_error(L, "bad argument #1 to 'media' (IP address "
				  "expected, got \"%s\")", laddr);
	if (pmin < 1024 || pmax > 65534 || pmin + 1 > pmax)
		return luaL_error(L, "bad option 'rtp_ports' (range in "
				  "1024-65535 expected, got %d-%d)",
				  (int)pmin, (int)pmax);
	luaL_checktype(L, 4, LUA_TTABLE);

	m = mem_zalloc(sizeof(*m), media_destructor);
	if (!m)
		return lsip_fail(L, ENOMEM, "media");

	++media_count;
	m->self = LUA_NOREF;
	m->tx_pt = -1;
	m->te_pt = -1;
	m->rx_event = -1;
	m->symmetric = symmetric;
	m->marker = true;
	lsip_newbox(L, m, LSIP_MEDIA_MT);        /* box owns m from here */

	n = (int)luaL_len(L, 4);
	for (i = 1; i <= n; i++) {
		const char *name;
		int pt;

		lua_geti(L, 4, i);
		name = lua_tostring(L, -1);
		pt = name ? codec_pt(name) : -1;
		if (pt < 0)
			return luaL_error(L, "bad option 'codecs' "
					  "(\"PCMU\" or \"PCMA\" expected, "
					  "got %s)",
					  name ? name : luaL_typename(L, -1));
		lua_pop(L, 1);
		if (m->ncodecs < 4)
			m->codecs[m->ncodecs++] = pt;
	}
	if (!m->ncodecs)
		return luaL_error(L, "bad option 'codecs' (at least one codec "
				  "expected)");

	err = lsip_msrtp_new(L, 7, &m->srtp);
	if (err)
		return lsip_fail(L, err, "media: srtp");

	if (!enc_ready)
		enc_init();

	err = rtp_listen(&m->rtp, IPPROTO_UDP, &ip, (uint16_t)pmin,
			 (uint16_t)pmax, true, rtp_handler, rtcp_handler, m);
	if (err)
		return lsip_fail(L, err, "media: rtp_listen");

	err = sdp_session_alloc(&m->sdp, rtp_local(m->rtp));
	if (err)
		return lsip_fail(L, err, "media: sdp");

	err = sdp_media_add(&m->sm, m->sdp, "audio",
			    sa_port(rtp_local(m->rtp)),
			    lsip_msrtp_proto(m->srtp));
	for (i = 0; !err && i < m->ncodecs; i++)
		err = sdp_format_add(NULL, m->sm, false,
				     m->codecs[i] ? "8" : "0",
				     m->codecs[i] ? "PCMA" : "PCMU",
				     SRATE, 1, NULL, NULL, NULL, false, NULL);
	if (!err && televent)
		err = sdp_format_add(NULL, m->sm, false, "101",
				     "telephone-event", SRATE, 1, NULL, NULL,
				     NULL, false, "0-15");
	if (!err)
		err = sdp_media_set_lattr(m->sm, true, "ptime", "%d", PTIME);
	if (!err)
		err = telev_alloc(&m->telev, PTIME);
	if (!err)
		err = jbuf_alloc(&m->jbuf, 1, 10);
	if (!err)
		err = dtmf_dec_alloc(&m->dtmf, SRATE, 1, dtmf_handler, m);
	if (err)
		return lsip_fail(L, err, "media: sdp");

	rtcp_set_srate(m->rtp, SRATE, SRATE);
	return 1;
}


/* media:set_direction("sendrecv"|"sendonly"|"recvonly"|"inactive") */
static int l_media_direction(lua_State *L)
{
	struct lsip_media *m = media_check(L);
	static const char *const names[] = {
		"inactive", "recvonly", "sendonly", "sendrecv", NULL
	};
	static const enum sdp_dir dirs[] = {
		SDP_INACTIVE, SDP_RECVONLY, SDP_SENDONLY, SDP_SENDRECV
	};
	int i = luaL_checkoption(L, 2, NULL, names);

	sdp_media_set_ldir(m->sm, dirs[i]);
	lua_pushboolean(L, 1);
	return 1;
}


static void push_sdp(lua_State *L, struct mbuf *mb)
{
	lua_pushlstring(L, (const char *)mb->buf, mb->end);
	mem_deref(mb);
}


/* media:offer() -> sdp */
static int l_media_offer(lua_State *L)
{
	struct lsip_media *m = media_check(L);
	struct mbuf *mb;
	int err;

	err = lsip_msrtp_offer(m->srtp, m->sm);
	if (!err)
		err = sdp_encode(&mb, m->sdp, true);
	if (err)
		return lsip_fail(L, err, "media: offer");

	push_sdp(L, mb);
	return 1;
}


/* pick the codec and telephone-event from the negotiated formats */
static int negotiate(struct lsip_media *m)
{
	const struct sdp_format *fmt, *te;
	const struct list *lst;
	struct le *le;

	te = sdp_media_rformat(m->sm, "telephone-event");
	m->te_pt = te ? te->pt : -1;
	m->tx_pt = -1;

	lst = sdp_media_format_lst(m->sm, false);
	for (le = list_head(lst); le; le = le->next) {
		fmt = le->data;
		if (!fmt->sup)
			continue;
		/* static types may come without a=rtpmap (RFC 4566 6):
		 * then they have no name and no rate */
		if (fmt->name && (str_casecmp(fmt->name, fmt->pt ? "PCMA" :
					      "PCMU") || fmt->srate != SRATE))
			continue;
		if (fmt->pt == 0 || fmt->pt == 8) {
			m->tx_pt = fmt->pt;
			break;
		}
	}

	if (m->tx_pt < 0)
		return EPROTO;

	if (!m->latched)
		sa_cpy(&m->raddr, sdp_media_raddr(m->sm));

	return 0;
}


/*
 * libre ignores a c= address it cannot read and keeps the previous one
 * (or 0.0.0.0, which would read as hold): refuse such SDP instead. A
 * host name is refused too; we do not resolve media addresses.
 */
static bool conn_lines_ok(const char *s, size_t len)
{
	const char *end = s + len, *eol;
	struct pl line, addr;
	struct sa sa;

	for (; s < end; s = eol + 1) {
		eol = memchr(s, '\n', (size_t)(end - s));
		if (!eol)
			eol = end;
		if (eol - s < 2 || s[0] != 'c' || s[1] != '=')
			continue;
		line.p = s + 2;
		line.l = (size_t)(eol - s - 2);
		if (re_regex(line.p, line.l, "IN IP[46]1 [^ /\r]+", NULL,
			     &addr) || sa_set(&sa, &addr, 0))
			return false;
	}

	return true;
}


static int decode(struct lsip_media *m, const char *s, size_t len,
		  bool offer)
{
	struct mbuf *mb;
	int err;

	if (!conn_lines_ok(s, len))
		return EBADMSG;

	mb = mbuf_alloc(len + 1);
	if (!mb)
		return ENOMEM;

	(void)mbuf_write_mem(mb, (const uint8_t *)s, len);
	mb->pos = 0;
	err = sdp_decode(m->sdp, mb, offer);
	mem_deref(mb);

	return err;
}


/*
 * media:answer(offer) -> sdp | nil, "488 Not Acceptable Here", 488
 * decodes the far end's offer and encodes our answer
 */
static int l_media_answer(lua_State *L)
{
	struct lsip_media *m = media_check(L);
	size_t len;
	const char *s = luaL_checklstring(L, 2, &len);
	struct pl reason = PL("Not Acceptable Here");
	struct mbuf *mb;
	int err;

	lsip_msrtp_protos(m->sm, true);      /* RTP/AVP or RTP/SAVP */
	err = decode(m, s, len, true);
	lsip_msrtp_protos(m->sm, false);
	if (err || negotiate(m) || lsip_msrtp_answer(m->srtp, m->sm, m->rtp))
		return lsip_fail_status(L, 488, &reason);

	err = sdp_encode(&mb, m->sdp, false);
	if (err)
		return lsip_fail(L, err, "media: answer");

	push_sdp(L, mb);
	return 1;
}


/* media:set_answer(sdp) -> true | nil, "488 Not Acceptable Here", 488 */
static int l_media_set_answer(lua_State *L)
{
	struct lsip_media *m = media_check(L);
	size_t len;
	const char *s = luaL_checklstring(L, 2, &len);
	struct pl reason = PL("Not Acceptable Here");

	if (decode(m, s, len, false) || negotiate(m) ||
	    lsip_msrtp_apply(m->srtp, m->sm, m->rtp))
		return lsip_fail_status(L, 488, &reason);

	lua_pushboolean(L, 1);
	return 1;
}


/* media:start() -> true: pin and start sending */
static int l_media_start(lua_State *L)
{
	struct lsip_media *m = media_check(L);

	if (m->tx_pt < 0)
		return lsip_fail(L, EPROTO, "media: not negotiated");

	if (m->self == LUA_NOREF)
		m->self = lsip_pin(L, 1);

	if (!m->started) {
		struct sa rtcp;

		sdp_media_raddr_rtcp(m->sm, &rtcp);
		if (sa_isset(&rtcp, SA_ALL))
			rtcp_start(m->rtp, "luasip", &rtcp);
		m->started = true;
		m->t0 = lsip_tmr_now_us();
		m->ticks = 0;
		ring_put(m, m->t0);
	}

	lua_pushboolean(L, 1);
	return 1;
}


/* media:play_file(path) -> true | nil, err, code */
static int l_media_play_file(lua_State *L)
{
	struct lsip_media *m = media_check(L);
	const char *path = luaL_checkstring(L, 2);
	struct lsip_prompt *prompt = NULL;
	struct aufile_prm prm;
	struct aufile *af = NULL;
	int err;

	err = lsip_prompt_get(&prompt, path, &prm);
	if (err == ENOSPC) {
		/* too large to keep in memory: stream it */
		err = aufile_open(&af, &prm, path, AUFILE_READ);
		if (!err && (prm.fmt != AUFMT_S16LE || prm.channels != 1 ||
			     (prm.srate != 8000 && prm.srate != 16000))) {
			af = mem_deref(af);
			err = ENOTSUP;
		}
	}

	if (err == ENOTSUP) {
		lua_pushnil(L);
		lua_pushfstring(L, "play: %s: unsupported format (%d Hz, "
				"%d channels; 8000 or 16000 Hz mono 16-bit "
				"PCM expected)", path, (int)prm.srate,
				(int)prm.channels);
		lua_pushinteger(L, ENOTSUP);
		return 3;
	}
	if (err) {
		lua_pushnil(L);
		lua_pushfstring(L, "play: %s: %s", path, strerror(err));
		lua_pushinteger(L, err);
		return 3;
	}

	play_stop(m);
	if (prompt) {
		m->prompt = prompt;
		m->prompt_pos = 0;
		m->src = SRC_PROMPT;
	}
	else {
		m->play_af = af;
		m->play_16k = prm.srate == 16000;
		m->src = SRC_FILE;
	}
	m->playing = true;
	lua_pushboolean(L, 1);
	return 1;
}


/* media:play_tone(freq | "digit", seconds) -> true */
static int l_media_play_tone(lua_State *L)
{
	struct lsip_media *m = media_check(L);
	lua_Number secs = luaL_checknumber(L, 3);
	int err;

	if (!(secs >= 0) || secs > 86400)
		return luaL_error(L, "bad option 'duration' (seconds "
				  "expected, got %f)", secs);

	play_stop(m);
	m->tone = mbuf_alloc(SRATE * 2);
	if (!m->tone)
		return lsip_fail(L, ENOMEM, "play");

	if (lua_type(L, 2) == LUA_TSTRING) {
		const char *d = lua_tostring(L, 2);

		if (strlen(d) != 1 || telev_digit2code(d[0]) < 0)
			return luaL_error(L, "bad option 'dtmf' (digit "
					  "expected, got \"%s\")", d);
		err = autone_dtmf(m->tone, SRATE, d[0]);
	}
	else {
		lua_Integer f = luaL_checkinteger(L, 2);

		if (f < 0 || f > 4000)
			return luaL_error(L, "bad option 'tone' (0-4000 Hz "
					  "expected, got %d)", (int)f);
		/* librem's level is in percent of full scale (100 =
		 * 32767); more wraps the int16 samples around */
		err = autone_sine(m->tone, SRATE, (uint32_t)f, 50, 0, 0);
	}
	if (err || m->tone->end < 2) {
		play_stop(m);
		return lsip_fail(L, err ? err : EINVAL, "play");
	}

	m->tone->pos = 0;
	m->left = (uint32_t)(secs * SRATE + 0.5);
	m->src = m->left ? SRC_TONE : SRC_SILENCE;
	m->left = m->left ? m->left : 1;
	m->playing = true;
	lua_pushboolean(L, 1);
	return 1;
}


/* media:play_silence(seconds) -> true */
static int l_media_play_silence(lua_State *L)
{
	struct lsip_media *m = media_check(L);
	lua_Number secs = luaL_checknumber(L, 2);

	if (!(secs >= 0) || secs > 86400)
		return luaL_error(L, "bad option 'silence' (seconds expected, "
				  "got %f)", secs);

	play_stop(m);
	m->left = (uint32_t)(secs * SRATE + 0.5);
	if (!m->left)
		m->left = 1;
	m->src = SRC_SILENCE;
	m->playing = true;
	lua_pushboolean(L, 1);
	return 1;
}


/* media:play_echo(seconds) -> true: send back what is received */
static int l_media_play_echo(lua_State *L)
{
	struct lsip_media *m = media_check(L);
	lua_Number secs = luaL_checknumber(L, 2);

	if (!(secs > 0))
		return luaL_error(L, "bad option 'echo' (seconds expected, "
				  "got %f)", secs);

	if (!m->echo) {
		m->echo = mem_zalloc(ECHO_MAX * sizeof(int16_t), NULL);
		if (!m->echo)
			return lsip_fail(L, ENOMEM, "play");
	}

	play_stop(m);
	m->echo_r = m->echo_w = 0;
	m->left = secs > 86400 ? 86400u * SRATE : (uint32_t)(secs * SRATE);
	if (!m->left)
		m->left = 1;
	m->src = SRC_ECHO;
	m->playing = true;
	lua_pushboolean(L, 1);
	return 1;
}


/* media:stop_play() -> true (no "played" event) */
static int l_media_stop_play(lua_State *L)
{
	struct lsip_media *m = media_check(L);

	play_stop(m);
	m->playing = false;
	lua_pushboolean(L, 1);
	return 1;
}


/* media:record(path, max_s, silence_s) -> true | nil, err, code */
static int l_media_record(lua_State *L)
{
	struct lsip_media *m = media_check(L);
	const char *path = luaL_checkstring(L, 2);
	lua_Number max = luaL_optnumber(L, 3, 0);
	lua_Number sil = luaL_optnumber(L, 4, 0);
	int err;

	if (!(max >= 0) || !(sil >= 0))
		return luaL_error(L, "bad option 'max'/'silence_stop' "
				  "(non-negative seconds expected)");
	if (m->recording)
		return lsip_fail(L, EBUSY, "record");

	err = lsip_recfile_open(&m->rec, &m->recw, path);
	if (err) {
		lua_pushnil(L);
		lua_pushfstring(L, "record: %s: %s", path, strerror(err));
		lua_pushinteger(L, err);
		return 3;
	}

	m->rec_n = m->sil_n = 0;
	m->rec_max = (uint32_t)(max * SRATE);
	m->sil_max = (uint32_t)(sil * SRATE);
	m->recording = true;
	lua_pushboolean(L, 1);
	return 1;
}


/*
 * media:stop_record(reason) -> duration, reason | nil when not recording
 * (also emits "recorded")
 */
static int l_media_stop_record(lua_State *L)
{
	struct lsip_media *m = media_check(L);
	const char *reason = luaL_optstring(L, 2, "stopped");
	double dur = (double)m->rec_n / SRATE;

	if (!m->recording)
		return 0;

	rec_finish(m, reason);
	lua_pushnumber(L, dur);
	lua_pushstring(L, reason);
	return 2;
}


/* media:pop_digit() -> digit | nil */
static int l_media_pop_digit(lua_State *L)
{
	struct lsip_media *m = media_check(L);

	if (!m->ndigits)
		return 0;

	lua_pushlstring(L, m->digits, 1);
	memmove(m->digits, m->digits + 1, --m->ndigits);
	return 1;
}


/* media:push_digit(d) -> true: a digit that came another way (INFO) */
static int l_media_push_digit(lua_State *L)
{
	struct lsip_media *m = media_check(L);
	const char *d = luaL_checkstring(L, 2);

	if (strlen(d) != 1 || telev_digit2code(tolower((unsigned char)*d)) < 0)
		return luaL_error(L, "bad argument #1 to 'push_digit' (DTMF "
				  "digit expected, got \"%s\")", d);

	digit_push(m, (char)toupper((unsigned char)*d));
	lua_pushboolean(L, 1);
	return 1;
}


/* media:send_dtmf(digits) -> true | nil, err, code (RFC 4733) */
static int l_media_send_dtmf(lua_State *L)
{
	struct lsip_media *m = media_check(L);
	const char *s = luaL_checkstring(L, 2);
	const char *p;
	int err = 0;

	for (p = s; *p; p++) {
		if (telev_digit2code(*p) < 0)
			return luaL_error(L, "bad argument #1 to 'send_dtmf' "
					  "(DTMF digits expected, got \"%s\")",
					  s);
	}

	if (m->te_pt < 0)
		return lsip_fail(L, ENOTSUP, "send_dtmf: no telephone-event");

	for (p = s; *p && !err; p++) {
		err = telev_send(m->telev, telev_digit2code(*p), false);
		if (!err)
			err = telev_send(m->telev, telev_digit2code(*p), true);
	}
	m->te_tx = true;
	if (err)
		return lsip_fail(L, err, "send_dtmf");

	lua_pushboolean(L, 1);
	return 1;
}


/* media:stats() -> table */
static int l_media_stats(lua_State *L)
{
	struct lsip_media *m = media_check(L);
	struct rtcp_stats rs;
	uint32_t expected;
	int lost = 0;

	lua_createtable(L, 0, 12);
	lua_pushinteger(L, m->tx_packets);
	lua_setfield(L, -2, "tx_packets");
	lua_pushinteger(L, m->tx_bytes);
	lua_setfield(L, -2, "tx_bytes");
	lua_pushinteger(L, m->rx_packets);
	lua_setfield(L, -2, "rx_packets");
	lua_pushinteger(L, m->rx_bytes);
	lua_setfield(L, -2, "rx_bytes");
	lua_pushinteger(L, m->rx_dropped);
	lua_setfield(L, -2, "rx_dropped");
	lua_pushinteger(L, (lua_Integer)(m->rec_dropped / 2));
	lua_setfield(L, -2, "rec_dropped");     /* samples, see recfile.c */

	if (m->rx_seen) {
		expected = m->rx_cycles + m->rx_max_seq - m->rx_base_seq + 1;
		lost = (int)expected - (int)m->rx_packets;
		if (lost < 0)
			lost = 0;
	}
	lua_pushinteger(L, lost);
	lua_setfield(L, -2, "lost");
	lua_pushnumber(L, m->jitter / SRATE);    /* seconds */
	lua_setfield(L, -2, "jitter");

	if (m->rx_seen && !rtcp_stats(m->rtp, m->rx_ssrc, &rs)) {
		lua_pushinteger(L, rs.tx.lost);
		lua_setfield(L, -2, "remote_lost");
		lua_pushnumber(L, rs.tx.jit / 1e6);
		lua_setfield(L, -2, "remote_jitter");
	}

	lua_pushstring(L, m->tx_pt == 0 ? "PCMU" :
		       m->tx_pt == 8 ? "PCMA" : NULL);
	lua_setfield(L, -2, "codec");
	lua_pushinteger(L, sa_port(rtp_local(m->rtp)));
	lua_setfield(L, -2, "local_port");
	lsip_msrtp_stats(L, m->srtp);
	if (sa_isset(&m->raddr, SA_ALL)) {
		char buf[64];

		re_snprintf(buf, sizeof(buf), "%J", &m->raddr);
		lua_pushstring(L, buf);
		lua_setfield(L, -2, "remote");
	}
	return 1;
}


/* media:_arrivals() -> list of the last inter-arrival gaps (seconds) */
static int l_media_arrivals(lua_State *L)
{
	struct lsip_media *m = media_check(L);
	uint32_t n = m->narr < NARR ? m->narr : NARR;
	uint32_t i, first = m->narr - n;

	lua_createtable(L, (int)n, 0);
	for (i = 1; i < n; i++) {
		uint64_t a = m->arrivals[(first + i - 1) % NARR];
		uint64_t b = m->arrivals[(first + i) % NARR];

		lua_pushnumber(L, (double)(b - a) / 1e6);
		lua_rawseti(L, -2, (lua_Integer)i);
	}
	return 1;
}


/* media.playing, media.recording, media.port, media.digits */
static int l_media_getfield(lua_State *L)
{
	struct lsip_media **box = lsip_checkbox(L, 1, LSIP_MEDIA_MT);
	struct lsip_media *m = *box;
	const char *key = luaL_checkstring(L, 2);

	if (!strcmp(key, "closed")) {
		lua_pushboolean(L, m == NULL);
		return 1;
	}
	if (!m)
		return 0;

	if (!strcmp(key, "playing")) {
		lua_pushboolean(L, m->playing);
		return 1;
	}
	if (!strcmp(key, "recording")) {
		lua_pushboolean(L, m->recording);
		return 1;
	}
	if (!strcmp(key, "port")) {
		lua_pushinteger(L, sa_port(rtp_local(m->rtp)));
		return 1;
	}
	if (!strcmp(key, "digits")) {
		lua_pushlstring(L, m->digits, m->ndigits);
		return 1;
	}

	return 0;
}


/* __gc: free without events (the dispatcher may be gone) */
static int l_media_gc(lua_State *L)
{
	struct lsip_media **box = lsip_checkbox(L, 1, LSIP_MEDIA_MT);

	if (*box) {
		(*box)->recording = false;
		lsip_unpin(L, &(*box)->self);
		*box = mem_deref(*box);
	}

	return 0;
}


/* :close(), __close: stop, emit "recorded"/"closed" to a waiter, free */
static int l_media_close(lua_State *L)
{
	struct lsip_media **box = lsip_checkbox(L, 1, LSIP_MEDIA_MT);
	struct lsip_media *m = *box;

	if (!m)
		return 0;

	mem_ref(m);
	ring_remove(m);
	m->started = false;
	play_stop(m);
	m->playing = false;
	rec_finish(m, "hangup");

	if (m->self != LUA_NOREF) {
		lua_pushvalue(L, 1);
		lsip_emit(L, "closed", 1);
		lsip_unpin(L, &m->self);
	}

	if (*box == m)
		*box = mem_deref(m);
	mem_deref(m);
	return 0;
}


/*
 * Mid-call offer/answer for call.c (re-INVITE, hold/resume, late offer).
 * These run inside re_main from sipsess handlers; they never touch Lua.
 * The RTP socket, pacing and SSRC stay: only the far end's address,
 * codec and direction follow the new SDP.
 */


/* the first G.711 format the far end offered that we allow, or -1 */
static int common_codec(const struct sdp_media *sm)
{
	const struct sdp_format *fmt;
	struct le *le;

	le = list_head(sdp_media_format_lst(sm, false));
	for (; le; le = le->next) {
		fmt = le->data;
		if (!fmt->sup || fmt->srate != SRATE)
			continue;
		if (fmt->pt == CODEC_PCMU && !str_casecmp(fmt->name, "PCMU"))
			return fmt->pt;
		if (fmt->pt == CODEC_PCMA && !str_casecmp(fmt->name, "PCMA"))
			return fmt->pt;
	}

	return -1;
}


/* decode offer into a scratch session with our formats: 0 if usable */
static int probe_offer(const struct lsip_media *m, struct mbuf *offer)
{
	struct sdp_session *sess = NULL;
	struct sdp_media *sm = NULL;
	const struct sdp_format *fmt;
	size_t pos = offer->pos;
	struct le *le;
	int err;

	err = sdp_session_alloc(&sess, rtp_local(m->rtp));
	if (!err)
		err = sdp_media_add(&sm, sess, "audio",
				    sa_port(rtp_local(m->rtp)),
				    sdp_media_proto(m->sm));
	le = list_head(sdp_media_format_lst(m->sm, true));
	for (; !err && le; le = le->next) {
		fmt = le->data;
		err = sdp_format_add(NULL, sm, false, fmt->id, fmt->name,
				     fmt->srate, fmt->ch, NULL, NULL, NULL,
				     false, fmt->params ? "%s" : NULL,
				     fmt->params);
	}
	if (!err)
		err = sdp_decode(sess, offer, true);
	offer->pos = pos;
	if (!err && common_codec(sm) < 0)
		err = EPROTO;

	mem_deref(sess);
	return err;
}


/**
 * Check a re-offer without applying it
 *
 * @param m     Media
 * @param offer SDP offer (pos kept)
 *
 * @return 0 if a codec is common, otherwise errorcode
 */
int lsip_media_probe(struct lsip_media *m, struct mbuf *offer)
{
	if (!m || !offer)
		return EINVAL;

	if (!conn_lines_ok((const char *)mbuf_buf(offer),
			   mbuf_get_left(offer)))
		return EBADMSG;

	return probe_offer(m, offer);
}


/* after a new remote SDP: follow address, RTCP peer, old-style hold */
static void follow_remote(struct lsip_media *m, const struct sa *prev)
{
	const struct sa *ra = sdp_media_raddr(m->sm);
	struct sa rtcp;

	/* 0.0.0.0, :: or port 0: nowhere to send to */
	m->rhold = !sa_isset(ra, SA_ALL);
	if (sa_cmp(prev, ra, SA_ALL))
		return;

	/* the far end moved: send there, re-latch, restart the jbuf */
	m->latched = false;
	sa_cpy(&m->raddr, ra);
	jbuf_flush(m->jbuf);
	if (m->started && !m->rhold) {
		sdp_media_raddr_rtcp(m->sm, &rtcp);
		if (sa_isset(&rtcp, SA_ALL))
			rtcp_start(m->rtp, "luasip", &rtcp);
	}
}


/*
 * SRTP on re-offers: the same steps as for the first offer/answer; the
 * re-offer's a=crypto is checked against the running keys (srtp.c keeps
 * the sessions on the same key, re-keys on a new one). probe_offer()
 * matches the line by the profile in use only, so a plain re-offer in an
 * SRTP call (or the reverse) gets 488 before anything changes.
 */


/**
 * Apply the far end's new offer (re-INVITE) and encode our answer
 *
 * Nothing changes when no codec is common (the caller answers 488).
 * c=0.0.0.0 (RFC 2543 hold) stops sending like a=sendonly/inactive.
 *
 * @param m       Media
 * @param offer   SDP offer (read from its pos, pos kept)
 * @param answerp Our answer
 *
 * @return 0 if success, EPROTO if no codec is common, otherwise errorcode
 */
int lsip_media_update(struct lsip_media *m, struct mbuf *offer,
		      struct mbuf **answerp)
{
	struct sa prev;
	enum sdp_dir ldir;
	size_t pos;
	int err;

	if (!m || !offer || !answerp)
		return EINVAL;

	err = probe_offer(m, offer);
	if (err)
		return err;

	if (!conn_lines_ok((const char *)mbuf_buf(offer),
			   mbuf_get_left(offer)))
		return EBADMSG;

	sa_cpy(&prev, sdp_media_raddr(m->sm));
	pos = offer->pos;
	lsip_msrtp_protos(m->sm, true);
	err = sdp_decode(m->sdp, offer, true);
	lsip_msrtp_protos(m->sm, false);
	offer->pos = pos;
	if (!err)
		err = negotiate(m);
	if (!err && lsip_msrtp_answer(m->srtp, m->sm, m->rtp))
		err = EPROTO;
	if (err)
		return err;

	follow_remote(m, &prev);

	/* answer recvonly/inactive to c=0.0.0.0, as to a=sendonly */
	ldir = sdp_media_ldir(m->sm);
	if (m->rhold)
		sdp_media_set_ldir(m->sm, ldir & SDP_RECVONLY);
	err = sdp_encode(answerp, m->sdp, false);
	sdp_media_set_ldir(m->sm, ldir);

	return err;
}


/**
 * Encode an offer from the media's current state (late offer, re-INVITE)
 *
 * @param m      Media
 * @param offerp SDP offer
 *
 * @return 0 if success, otherwise errorcode
 */
int lsip_media_offer_mb(struct lsip_media *m, struct mbuf **offerp)
{
	int err;

	if (!m || !offerp)
		return EINVAL;

	err = lsip_msrtp_offer(m->srtp, m->sm);
	if (err)
		return err;

	return sdp_encode(offerp, m->sdp, true);
}


/**
 * Apply the answer to our offer (200 to a re-INVITE, ACK after a late
 * offer); on error the media is left negotiated as before if it was
 *
 * @param m      Media
 * @param answer SDP answer (pos kept)
 *
 * @return 0 if success, EPROTO if no codec is common, otherwise errorcode
 */
int lsip_media_set_answer_mb(struct lsip_media *m, struct mbuf *answer)
{
	struct sa prev;
	size_t pos;
	int err;

	if (!m || !answer)
		return EINVAL;

	sa_cpy(&prev, sdp_media_raddr(m->sm));
	pos = answer->pos;
	err = sdp_decode(m->sdp, answer, false);
	answer->pos = pos;
	if (!err)
		err = negotiate(m);
	if (!err && lsip_msrtp_apply(m->srtp, m->sm, m->rtp))
		err = EPROTO;
	if (err)
		return err;

	follow_remote(m, &prev);
	return 0;
}


/**
 * The direction the far end last stated, seen from our side (libre's
 * rdir: SDP_SENDONLY means we may send only); c=0.0.0.0 takes sending
 *
 * @param m Media
 *
 * @return Direction
 */
enum sdp_dir lsip_media_rdir(const struct lsip_media *m)
{
	enum sdp_dir d;

	if (!m)
		return SDP_INACTIVE;

	d = sdp_media_rdir(m->sm);
	return m->rhold ? (enum sdp_dir)(d & SDP_RECVONLY) : d;
}


/**
 * Our local direction (sendonly or inactive while we hold the far end)
 *
 * @param m Media
 *
 * @return Direction
 */
enum sdp_dir lsip_media_ldir(const struct lsip_media *m)
{
	return m ? sdp_media_ldir(m->sm) : SDP_INACTIVE;
}


/**
 * Set our local direction (hold: sendonly, resume: sendrecv)
 *
 * @param m   Media
 * @param dir Direction
 */
void lsip_media_set_ldir(struct lsip_media *m, enum sdp_dir dir)
{
	if (m)
		sdp_media_set_ldir(m->sm, dir);
}


/**
 * The media struct of a luasip.media box (NULL if closed)
 *
 * @param L   Lua state
 * @param idx Stack index of the box (raises if it is no media)
 *
 * @return Media, not referenced
 */
struct lsip_media *lsip_media_get(lua_State *L, int idx)
{
	struct lsip_media **box = lsip_checkbox(L, idx, LSIP_MEDIA_MT);

	return *box;
}


/* core.media_count() -> live media objects (closed ones are freed) */
static int l_media_count(lua_State *L)
{
	lua_pushinteger(L, media_count);
	return 1;
}


static void push_iv(lua_State *L, struct ivhist *h, const char *name)
{
	int k;

	lua_createtable(L, 0, 3);
	lua_pushinteger(L, (lua_Integer)h->n);
	lua_setfield(L, -2, "n");
	lua_pushinteger(L, (lua_Integer)h->max);
	lua_setfield(L, -2, "max_us");
	lua_newtable(L);
	for (k = 0; k <= IV_BINS; k++) {
		if (!h->bin[k])
			continue;
		lua_pushinteger(L, h->bin[k]);
		lua_rawseti(L, -2, k);
	}
	lua_setfield(L, -2, "bins");
	lua_setfield(L, -2, name);
}


/*
 * core.media_intervals([reset]) -> { bin_us =, tx = { n =, max_us =,
 * bins = { [k] = count } }, rx = ... }: gaps between consecutive packets
 * sent (tx, taken after each send) and received (rx, at the receive
 * handler) by each media, summed over all media since the last reset;
 * bin k counts gaps in [k, k + 1) * bin_us, the last bin all longer ones
 */
static int l_media_intervals(lua_State *L)
{
	lua_createtable(L, 0, 3);
	lua_pushinteger(L, IV_BIN_US);
	lua_setfield(L, -2, "bin_us");
	push_iv(L, &iv_tx, "tx");
	push_iv(L, &iv_rx, "rx");
	if (lua_toboolean(L, 1)) {
		memset(&iv_tx, 0, sizeof(iv_tx));
		memset(&iv_rx, 0, sizeof(iv_rx));
	}
	return 1;
}


/**
 * Register core.media and the luasip.media type
 *
 * @param L Lua state, module table on top
 *
 * @return 0
 */
int lsip_open_media(lua_State *L)
{
	static const luaL_Reg methods[] = {
		{"offer", l_media_offer},
		{"answer", l_media_answer},
		{"set_answer", l_media_set_answer},
		{"set_direction", l_media_direction},
		{"start", l_media_start},
		{"play_file", l_media_play_file},
		{"play_tone", l_media_play_tone},
		{"play_silence", l_media_play_silence},
		{"play_echo", l_media_play_echo},
		{"stop_play", l_media_stop_play},
		{"record", l_media_record},
		{"stop_record", l_media_stop_record},
		{"pop_digit", l_media_pop_digit},
		{"push_digit", l_media_push_digit},
		{"send_dtmf", l_media_send_dtmf},
		{"stats", l_media_stats},
		{"_arrivals", l_media_arrivals},
		{"close", l_media_close},
		{NULL, NULL}
	};
	static const luaL_Reg meta[] = {
		{"__gc", l_media_gc},
		{"__close", l_media_close},
		{"__getfield", l_media_getfield},
		{NULL, NULL}
	};

	lsip_setfuncs(L, LSIP_MEDIA_MT, methods, meta);
	lua_pushcfunction(L, l_media_new);
	lua_setfield(L, -2, "media");
	lua_pushcfunction(L, l_media_count);
	lua_setfield(L, -2, "media_count");
	lua_pushcfunction(L, l_media_intervals);
	lua_setfield(L, -2, "media_intervals");
	return 0;
}
