/**
 * @file lsip.h  luasip: shared declarations of the C core
 *
 * Every csrc/ file includes this header. It declares the metatable names,
 * the main-thread state that libre handlers use to reach Lua, and the
 * helpers every part shares (pins, events, failure tuples). Nothing here
 * knows the internals of one part: parts talk through these helpers.
 */

#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#include <stdarg.h>
#include <string.h>
#include <re.h>
#include <lua.h>
#include <lauxlib.h>

#if LUA_VERSION_NUM < 504
#error "luasip needs Lua 5.4"
#endif


#define LSIP_NAME      "luasip"
#define LSIP_VERSION   "0.1.0"

#define LSIP_TIMER_MT  "luasip.timer"
#define LSIP_EP_MT     "luasip.endpoint"
#define LSIP_REQ_MT    "luasip.request"
#define LSIP_CREQ_MT   "luasip.client_request"
#define LSIP_RESP_MT   "luasip.response"
#define LSIP_CALL_MT   "luasip.call"
#define LSIP_FWD_MT    "luasip.forward"
#define LSIP_REG_MT    "luasip.reg"
#define LSIP_MEDIA_MT  "luasip.media"
#define LSIP_REDIS_MT  "luasip.redis"
#define LSIP_SRTP_MT   "luasip.srtp"


/* main thread; set once at open time, used by every libre handler */
extern lua_State *lsip_L;


/* util.c */
int  lsip_fail(lua_State *L, int err, const char *ctx);
int  lsip_fail_status(lua_State *L, uint16_t scode, const struct pl *reason);
int  lsip_pin(lua_State *L, int idx);
void lsip_unpin(lua_State *L, int *ref);
bool lsip_push_ref(lua_State *L, int ref);
void lsip_emit(lua_State *L, const char *ev, int nargs);
void lsip_pushpl(lua_State *L, const struct pl *pl);
void *lsip_newbox(lua_State *L, void *p, const char *mt);
void *lsip_checkbox(lua_State *L, int idx, const char *mt);
void *lsip_testbox(lua_State *L, int idx, const char *mt);
void lsip_setfuncs(lua_State *L, const char *mt, const luaL_Reg *methods,
		   const luaL_Reg *meta);
int  lsip_opt_string(lua_State *L, int idx, const char *field,
		     const char **out);
int  lsip_headers(struct mbuf **mbp, lua_State *L, int idx,
		  const char *fname);
int  lsip_body(struct mbuf **mbp, lua_State *L, int idx, const char *fname);
const char *lsip_tpname(enum sip_transp tp);

/* message.c */
void lsip_push_msg(lua_State *L, const struct sip_msg *msg, const char *mt);
int  lsip_msg_index(lua_State *L, const struct sip_msg *msg,
		    const char *key);

/* stack.c */
struct lsip_ep;
void lsip_stack_close(void);
struct sip *lsip_ep_sip(const struct lsip_ep *ep);
struct sipsess_sock *lsip_ep_sock(const struct lsip_ep *ep);
struct lsip_ep *lsip_ep_check(lua_State *L, int idx);
int  lsip_ep_ref(const struct lsip_ep *ep);
const char *lsip_ep_user(const struct lsip_ep *ep);
const char *lsip_ep_ua(const struct lsip_ep *ep);
int  lsip_ep_from(struct lsip_ep *ep, char **fromp, const char *user);

/* badstart.c */
void lsip_badstart_capture(bool on);

/* request.c */
struct lsip_req;
bool lsip_request_incoming(struct lsip_ep *ep, const struct sip_msg *msg);
struct lsip_req *lsip_req_check(lua_State *L, int idx);
const struct sip_msg *lsip_req_parts(struct lsip_req *req,
				     struct lsip_ep **epp,
				     struct sip_strans ***stp);
void lsip_req_set_status(struct lsip_req *req, uint16_t status);
void lsip_req_set_cancel(struct lsip_req *req, sip_cancel_h *cancelh,
			 void *arg);

/*
 * auth.c: client credentials for libre's sip_auth (auth.c also replaces
 * libre's sip/auth.c so MD5 and SHA-256 challenges are both answered).
 * A credentials object is mem_zalloc'd and passed as aarg with aref=true.
 */
struct lsip_creds;
int  lsip_creds_alloc(struct lsip_creds **credsp, lua_State *L, int idx,
		      const char *fname);
int  lsip_auth_handler(char **user, char **pass, const char *realm,
		       void *arg);

/* auth.c: server digest for registrar.c (algorithm index: 0 MD5,
 * 1 SHA-256, 2 SHA-512-256) */
struct lsip_digest_cfg {
	const char *realm;
	const uint8_t *secret;
	size_t secretl;
	unsigned accept;            /* bit (1 << index) per accepted alg */
	int offer[3];               /* challenge: algorithms, in order */
	int offerc;
	double nonce_ttl;
	uint32_t max_nonces;
	bool check_uri;
	void *mac;                  /* EVP_MAC_CTX keyed with secret */
};
enum lsip_dg {
	LSIP_DG_OK, LSIP_DG_MISSING, LSIP_DG_MALFORMED, LSIP_DG_BADALG,
	LSIP_DG_BADNONCE, LSIP_DG_URI, LSIP_DG_UNKNOWN, LSIP_DG_WRONG,
	LSIP_DG_STALE, LSIP_DG_REPLAY, LSIP_DG_ERROR,
};
/* HA1 (hex) of user for algorithm algi: 0, ENOENT (unknown user),
 * EACCES (no usable secret), other errors */
typedef int (lsip_ha1_h)(char *hex, size_t sz, size_t algi,
			 const char *user, void *arg);
int lsip_digest_challenge(struct mbuf *mb, const struct lsip_digest_cfg *cfg,
			  bool stale);
enum lsip_dg lsip_digest_verify(const struct sip_msg *msg,
				const struct lsip_digest_cfg *cfg,
				lsip_ha1_h *ha1h, void *arg,
				char *user, size_t usersz);
int lsip_digest_ha1(char *hex, size_t sz, size_t algi, const char *user,
		    const char *realm, const char *password, size_t pwl);
int lsip_digest_alg(const char *name);
int lsip_digest_cfg_init(struct lsip_digest_cfg *cfg);
void lsip_digest_cfg_reset(struct lsip_digest_cfg *cfg);
bool lsip_nonce_accept(const char *nonce, uint32_t nc, uint32_t max);
void lsip_nonce_reset(void);

/* registrar.c: REGISTERs answered in C (false: not taken) */
bool lsip_registrar_take(struct lsip_ep *ep, const struct sip_msg *msg);

/* call.c */
void lsip_call_incoming(struct lsip_ep *ep, const struct sip_msg *msg);
struct sip_dialog *lsip_call_dialog(lua_State *L, int idx,
				    struct lsip_ep **epp);

/* refer.c: REFER in a call's dialog, both directions */
void lsip_refer_incoming(struct lsip_ep *ep, struct sip_dialog *dlg,
			 const struct sip_msg *msg, int callref);
bool lsip_refer_notify(struct lsip_ep *ep, const struct sip_msg *msg);
bool lsip_call_reinvite(struct lsip_ep *ep, const struct sip_msg *msg);
bool lsip_call_response(struct lsip_ep *ep, const struct sip_msg *msg);

/* media.c: mid-call offer/answer for call.c (re-INVITE, hold, late offer) */
struct lsip_media;
struct lsip_media *lsip_media_get(lua_State *L, int idx);
int  lsip_media_update(struct lsip_media *m, struct mbuf *offer,
		       struct mbuf **answerp);
int  lsip_media_offer_mb(struct lsip_media *m, struct mbuf **offerp);
int  lsip_media_probe(struct lsip_media *m, struct mbuf *offer);
int  lsip_media_set_answer_mb(struct lsip_media *m, struct mbuf *answer);
enum sdp_dir lsip_media_rdir(const struct lsip_media *m);
enum sdp_dir lsip_media_ldir(const struct lsip_media *m);
void lsip_media_set_ldir(struct lsip_media *m, enum sdp_dir dir);

/* proxy.c */
bool lsip_proxy_incoming(struct lsip_ep *ep, const struct sip_msg *msg,
			 bool proxy);
bool lsip_proxy_response(struct lsip_ep *ep, const struct sip_msg *msg);

/* loop.c */
void lsip_mem_activity(void);

/* tmr.c: libre's timer API as a binary heap */
uint32_t lsip_tmr_count(void);
int lsip_tmr_close(void);
uint64_t lsip_tmr_now_us(void);
int64_t lsip_tmr_next_us(void);
void lsip_tmr_start_us(struct tmr *tmr, uint64_t due, tmr_h *th, void *arg);
uint64_t lsip_tmr_expire_us(const struct tmr *tmr);

/*
 * srtp.c: SRTP/SRTCP via libsrtp2 (one direction per session; release
 * with mem_deref), SDES a=crypto values (RFC 4568) and the per-call
 * policy. Errors are errno values; see srtp.c for the mapping.
 */
enum { LSIP_SRTP_KEYLEN = 30 };      /* master key (16) + salt (14) */
enum lsip_srtp_policy {
	LSIP_SRTP_OFF,
	LSIP_SRTP_OPTIONAL,
	LSIP_SRTP_MANDATORY,
};
struct lsip_srtp;
int lsip_srtp_alloc(struct lsip_srtp **sp, const char *suite,
		    const uint8_t *key, size_t keylen, bool outbound);
int lsip_srtp_protect(struct lsip_srtp *s, struct mbuf *mb);
int lsip_srtp_unprotect(struct lsip_srtp *s, struct mbuf *mb);
int lsip_srtp_protect_rtcp(struct lsip_srtp *s, struct mbuf *mb);
int lsip_srtp_unprotect_rtcp(struct lsip_srtp *s, struct mbuf *mb);
int lsip_sdes_make(char **linep, int tag, const char *suite,
		   uint8_t key[LSIP_SRTP_KEYLEN]);
int lsip_sdes_parse(const struct pl *attr, int *tag, char *suite,
		    size_t suitesz, uint8_t key[LSIP_SRTP_KEYLEN]);
int lsip_srtp_negotiate(enum lsip_srtp_policy pol, const char *offer_proto,
			bool offer_has_crypto);
/* recfile.c: WAV recordings written by a background thread */
struct lsip_recfile;
/* The free part of the block a recording fills, kept by its owner: a
 * frame that fits is a memcpy that touches no recfile memory (those were
 * two cache misses per frame with 1000 calls) */
struct lsip_recwin {
	uint8_t *p;
	size_t left;
};
int lsip_recfile_open(struct lsip_recfile **rp, struct lsip_recwin *w,
		      const char *path);
int lsip_recfile_write(struct lsip_recfile *r, struct lsip_recwin *w,
		       const int16_t *s, size_t n);
int lsip_recfile_close(struct lsip_recfile *r, struct lsip_recwin *w,
		       uint64_t *droppedp);

/* Append n samples: a copy into w, or lsip_recfile_write() when they
 * fill the block (which also returns the writer's error, if any) */
static inline int lsip_recfile_put(struct lsip_recfile *r,
				   struct lsip_recwin *w,
				   const int16_t *s, size_t n)
{
	if (n * 2 < w->left) {
		memcpy(w->p, s, n * 2);
		w->p += n * 2;
		w->left -= n * 2;
		return 0;
	}

	return lsip_recfile_write(r, w, s, n);
}
uint64_t lsip_recfile_dropped(void);
void lsip_recfile_shutdown(void);
/* done.c: answers to non-INVITE requests over UDP kept for Timer J */
bool lsip_done_cacheable(const struct sip_msg *msg);
int lsip_done_reply(struct sip *sip, const struct sip_msg *msg,
		    const struct sa *dst, struct mbuf *mb);
bool lsip_done_resend(struct sip *sip, const struct sip_msg *msg);
bool lsip_done_absorb(const struct sip_msg *msg);

/* msgdec.c */
int lsip_msg_decode(struct sip_msg **msgp, struct mbuf *mb);
void lsip_msgdec_flush(void);
uint32_t lsip_done_count(uint64_t *resentp);
void lsip_done_flush(void);
int lsip_open_done(lua_State *L);
/* prompt.c: WAV prompts read once and shared by their players */
struct lsip_prompt;
struct aufile_prm;
int lsip_prompt_get(struct lsip_prompt **pp, const char *path,
		    struct aufile_prm *prm);
const int16_t *lsip_prompt_pcm(const struct lsip_prompt *p, size_t *np);
const uint8_t *lsip_prompt_g711(const struct lsip_prompt *p, bool ulaw);

/* media.c */
const uint8_t *lsip_g711_table(bool ulaw);
void lsip_prompt_flush(void);
/* srtp_ossl.c: OpenSSL AES-ICM-128 and HMAC-SHA1 for libsrtp2 */
const char *lsip_srtp_ossl_install(void);
size_t lsip_srtp_ossl_cipher_size(const void *c);
size_t lsip_srtp_ossl_auth_size(const void *a);
/* srtp.c: SRTP of one media line (NULL: policy off); see srtp.c */
struct lsip_msrtp;
int lsip_msrtp_new(lua_State *L, int idx, struct lsip_msrtp **sp);
const char *lsip_msrtp_proto(const struct lsip_msrtp *s);
void lsip_msrtp_protos(struct sdp_media *sm, bool offer);
int lsip_msrtp_offer(struct lsip_msrtp *s, struct sdp_media *sm);
int lsip_msrtp_answer(struct lsip_msrtp *s, struct sdp_media *sm,
		      struct rtp_sock *rtp);
int lsip_msrtp_apply(struct lsip_msrtp *s, struct sdp_media *sm,
		     struct rtp_sock *rtp);
void lsip_msrtp_stats(lua_State *L, const struct lsip_msrtp *s);
void lsip_msrtp_detach(struct lsip_msrtp *s);

/* one open function per part, called by core.c with the module on top */
int lsip_open_util(lua_State *L);
int lsip_open_loop(lua_State *L);
void lsip_mem_init(void);          /* loop.c, once, at module load */
int lsip_open_message(lua_State *L);
int lsip_open_stack(lua_State *L);
int lsip_open_request(lua_State *L);
int lsip_open_call(lua_State *L);
int lsip_open_proxy(lua_State *L);
int lsip_open_auth(lua_State *L);
int lsip_open_reg(lua_State *L);
int lsip_open_media(lua_State *L);
int lsip_open_redis(lua_State *L);
int lsip_open_srtp(lua_State *L);
void lsip_srtp_close(void);       /* srtp.c, at lua_close (core.c) */
int lsip_open_refer(lua_State *L);
int lsip_open_registrar(lua_State *L);
