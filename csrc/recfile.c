/**
 * @file recfile.c  WAV recordings written by a background thread
 *
 * call:record used to write each 20 ms frame with stdio on the loop
 * thread. When the page cache is full of dirty pages the kernel makes a
 * writer wait (balance_dirty_pages), and on the loop thread that wait
 * delays every call's RTP: with 250-1000 calls recording to disk, send
 * intervals of 40-60 ms at p99 where 20 ms is due.
 *
 * Here the loop thread only copies samples into a per-recording block;
 * full blocks go to one writer thread through a mutex-protected FIFO, and
 * the writer does every write(2). Opening stays on the loop thread so a
 * bad path is still an immediate error for the script. Closing hands the
 * last block and a close mark to the writer and waits until the writer
 * has written them, patched the WAV header and closed the file, so the
 * file is complete when call:record returns; that wait is one per
 * recording, at its end, not one per frame.
 *
 * If the disk falls so far behind that more than QUEUE_MAX bytes wait,
 * further blocks of that moment are dropped (counted per recording and
 * in total: core.media_rec_dropped()) rather than growing memory or
 * blocking the loop.
 *
 * Files are plain descriptors, not stdio: glibc keeps every open FILE on
 * one list that each fclose walks, and with a thousand recordings open
 * that walk showed in the loop's profile.
 *
 * Only plain malloc'd memory and descriptors cross the thread boundary;
 * no libre object is touched by the writer.
 *
 * Copyright (C) 2026 luasip authors
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1       /* SCHED_IDLE */
#endif
#include <pthread.h>
#include <sched.h>
#include <fcntl.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include "lsip.h"


enum {
	BLOCK_BYTES = 16000,          /* 1 s of 8 kHz 16-bit mono */
	QUEUE_MAX   = 64 * 1024 * 1024,
	WAV_HDR     = 44,
	RATE        = 8000,
};


struct block {
	struct block *next;
	struct lsip_recfile *r;
	size_t n;                     /* bytes in data */
	bool close;                   /* last block: patch header, close */
	uint8_t data[];
};


struct lsip_recfile {
	int fd;
	struct block *cur;            /* loop thread: block being filled */
	uint64_t bytes;               /* writer: bytes written, header too */
	uint64_t dropped;             /* loop: bytes dropped (queue full) */
	int err;                      /* writer: first error */
	bool done;                    /* writer: closed */
};


static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t work = PTHREAD_COND_INITIALIZER;
static pthread_cond_t done = PTHREAD_COND_INITIALIZER;
static struct block *head, *tail;
static size_t queued;                 /* bytes in the FIFO */
static uint64_t dropped_total;
static bool running, stopping;
static pthread_t writer;


static void put_le32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}


static void wav_header(uint8_t h[WAV_HDR], uint32_t data)
{
	memcpy(h, "RIFF", 4);
	put_le32(h + 4, 36 + data);
	memcpy(h + 8, "WAVEfmt ", 8);
	put_le32(h + 16, 16);
	h[20] = 1; h[21] = 0;             /* PCM */
	h[22] = 1; h[23] = 0;             /* mono */
	put_le32(h + 24, RATE);
	put_le32(h + 28, RATE * 2);
	h[32] = 2; h[33] = 0;             /* block align */
	h[34] = 16; h[35] = 0;            /* bits */
	memcpy(h + 36, "data", 4);
	put_le32(h + 40, data);
}


/* write all of p[0..n) at off (-1: at the file position) */
static int write_all(int fd, const uint8_t *p, size_t n, off_t off)
{
	while (n) {
		ssize_t k = off < 0 ? write(fd, p, n) : pwrite(fd, p, n, off);

		if (k < 0) {
			if (errno == EINTR)
				continue;
			return errno;
		}
		if (k == 0)
			return EIO;
		p += k;
		n -= (size_t)k;
		if (off >= 0)
			off += k;
	}

	return 0;
}


/* writer thread: one block; returns the first error of its file */
static int block_write(struct block *b)
{
	struct lsip_recfile *r = b->r;  /* err, bytes, fd: the writer's */
	uint8_t h[WAV_HDR];
	uint64_t data;
	int err = r->err;

	if (b->n && !err) {
		err = write_all(r->fd, b->data, b->n, -1);
		if (!err)
			r->bytes += b->n;
	}

	if (!b->close)
		return err;

	data = r->bytes > WAV_HDR ? r->bytes - WAV_HDR : 0;
	wav_header(h, data > UINT32_MAX - 36 ? UINT32_MAX - 36
					     : (uint32_t)data);
	if (!err)
		err = write_all(r->fd, h, sizeof(h), 0);
	if (close(r->fd) && !err)
		err = errno;
	r->fd = -1;

	return err;
}


static void *writer_main(void *arg)
{
	struct sched_param sp = {0};
	(void)arg;

	/*
	 * Run only when the loop does not want the CPU: on a core shared with
	 * the loop (taskset, a one-core machine), the writer woken with a
	 * backlog of blocks would otherwise take a whole scheduler slice, some
	 * milliseconds, and every call's next RTP packet would wait for it.
	 */
	(void)pthread_setschedparam(pthread_self(), SCHED_IDLE, &sp);

	pthread_mutex_lock(&lock);
	for (;;) {
		struct block *b;
		int err;

		while (!head && !stopping)
			pthread_cond_wait(&work, &lock);
		if (!head)
			break;                 /* stopping, nothing left */

		b = head;
		head = b->next;
		if (!head)
			tail = NULL;
		queued -= b->n;

		pthread_mutex_unlock(&lock);
		err = block_write(b);
		pthread_mutex_lock(&lock);

		b->r->err = err;
		if (b->close) {
			b->r->done = true;
			pthread_cond_broadcast(&done);
		}
		free(b);
	}
	pthread_mutex_unlock(&lock);

	return NULL;
}


static struct block *block_new(struct lsip_recfile *r)
{
	struct block *b = malloc(sizeof(*b) + BLOCK_BYTES);

	if (b) {
		b->next = NULL;
		b->r = r;
		b->n = 0;
		b->close = false;
	}

	return b;
}


/* loop thread: hand b to the writer (or drop its data if far behind) */
static void block_push(struct block *b)
{
	pthread_mutex_lock(&lock);
	if (!b->close && queued + b->n > QUEUE_MAX) {
		b->r->dropped += b->n;
		dropped_total += b->n;
		pthread_mutex_unlock(&lock);
		free(b);
		return;
	}
	queued += b->n;
	if (tail)
		tail->next = b;
	else
		head = b;
	tail = b;
	pthread_cond_signal(&work);
	pthread_mutex_unlock(&lock);
}


/**
 * Create a WAV file for 8 kHz mono 16-bit samples (loop thread)
 *
 * @param rp   Recording (close with lsip_recfile_close)
 * @param w    Its window, set here (see lsip_recfile_put)
 * @param path File name
 *
 * @return 0 if success, otherwise errno of open, or ENOMEM
 */
int lsip_recfile_open(struct lsip_recfile **rp, struct lsip_recwin *w,
		      const char *path)
{
	struct lsip_recfile *r;

	if (!rp || !w || !path)
		return EINVAL;

	if (!running) {
		stopping = false;
		if (pthread_create(&writer, NULL, writer_main, NULL))
			return EAGAIN;
		running = true;
	}

	r = calloc(1, sizeof(*r));
	if (!r)
		return ENOMEM;

	r->cur = block_new(r);
	if (!r->cur) {
		free(r);
		return ENOMEM;
	}

	r->fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (r->fd < 0) {
		int err = errno;

		free(r->cur);
		free(r);
		return err;
	}

	/* placeholder header, written by the writer with the first block */
	wav_header(r->cur->data, 0);
	w->p = r->cur->data + WAV_HDR;
	w->left = BLOCK_BYTES - WAV_HDR;

	*rp = r;
	return 0;
}


/**
 * Append samples that fill the block in the window w (loop thread; the
 * writer does the file I/O): the block goes to the writer, w moves to a
 * new one. lsip_recfile_put() calls this when a frame does not fit.
 *
 * @return 0, or the error the writer met on an earlier block
 */
int lsip_recfile_write(struct lsip_recfile *r, struct lsip_recwin *w,
		       const int16_t *s, size_t n)
{
	const uint8_t *p = (const uint8_t *)s;
	size_t len = n * 2;
	int err;

	if (!r || !w)
		return EINVAL;

	pthread_mutex_lock(&lock);
	err = r->err;
	pthread_mutex_unlock(&lock);
	if (err)
		return err;

	while (len) {
		size_t k = w->left;

		if (k > len)
			k = len;
		memcpy(w->p, p, k);
		w->p += k;
		w->left -= k;
		p += k;
		len -= k;

		if (!w->left) {
			struct block *nb = block_new(r);

			if (!nb)
				return ENOMEM;
			r->cur->n = BLOCK_BYTES;
			block_push(r->cur);
			r->cur = nb;
			w->p = nb->data;
			w->left = BLOCK_BYTES;
		}
	}

	return 0;
}


/**
 * Finish a recording: the writer writes what is left, the WAV header and
 * closes the file; returns once it has (loop thread). Frees r.
 *
 * @param r        Recording
 * @param w        Its window (emptied)
 * @param droppedp Bytes dropped because the writer was far behind (or NULL)
 *
 * @return 0, or the first write/close error
 */
int lsip_recfile_close(struct lsip_recfile *r, struct lsip_recwin *w,
		       uint64_t *droppedp)
{
	struct block *b;
	int err;

	if (!r)
		return 0;

	b = r->cur;
	r->cur = NULL;
	b->n = BLOCK_BYTES - w->left;
	w->p = NULL;
	w->left = 0;
	b->close = true;
	block_push(b);

	pthread_mutex_lock(&lock);
	while (!r->done)
		pthread_cond_wait(&done, &lock);
	err = r->err;
	if (droppedp)
		*droppedp = r->dropped;
	pthread_mutex_unlock(&lock);

	free(r);
	return err;
}


/** Bytes of recordings dropped since start because the disk lagged */
uint64_t lsip_recfile_dropped(void)
{
	uint64_t n;

	pthread_mutex_lock(&lock);
	n = dropped_total;
	pthread_mutex_unlock(&lock);

	return n;
}


/**
 * Stop the writer thread (at lua_close, after every recording closed)
 */
void lsip_recfile_shutdown(void)
{
	if (!running)
		return;

	pthread_mutex_lock(&lock);
	stopping = true;
	pthread_cond_signal(&work);
	pthread_mutex_unlock(&lock);

	(void)pthread_join(writer, NULL);
	running = false;
}
