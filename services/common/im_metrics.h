/*
 * im_metrics.h - the Prometheus endpoint of a server process, and helpers
 * to write the text exposition format (version 0.0.4).
 *
 * Endpoint. One libmicrohttpd daemon with one thread of its own (the
 * "metrics thread": internal polling, at most IM_METRICS_CONNS connections,
 * each dropped after IM_METRICS_IDLE_S idle). It answers GET /metrics with
 * what the render callback writes (Content-Type text/plain;
 * version=0.0.4), any other path 404, any other method 405. The render
 * callback runs on the metrics thread, once per scrape: it reads the
 * owners' counters (relaxed atomics, or a mutex taken only by the scrape
 * and the owner's per-batch bookkeeping), so serving costs the serving
 * threads nothing.
 *
 * Trust boundary. A port is a way in: on a loopback address (127.0.0.0/8,
 * ::1) the endpoint answers anyone who can reach it; on any other address
 * it refuses to start without a token file, and with one, every request
 * must carry `Authorization: Bearer <token>` (compared in constant time,
 * over SHA-256 digests so that the length leaks nothing either) or gets
 * 401. A token file given on loopback is required there too. The token
 * file holds the token on its first line (16..1024 printable bytes;
 * trailing whitespace ignored).
 *
 * What is exported must hold no message content, token, key or uid:
 * labels are method names, status codes and shard indexes only.
 *
 * Threads: im_metrics_start and im_metrics_stop from one controlling
 * thread; the im_mtext helpers on the thread that renders.
 */
#ifndef IMBOX_IM_METRICS_H
#define IMBOX_IM_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define IM_METRICS_CONNS 16  /* concurrent scrapers: Prometheus uses one */
#define IM_METRICS_IDLE_S 10 /* an idle scrape connection is closed */

/* A growing text buffer; on out of memory it stops growing and oom is set
 * (the scrape then answers 500). */
typedef struct im_mtext {
    char *buf;
    size_t len, cap;
    bool oom;
} im_mtext;

void im_mtext_printf(im_mtext *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* "# HELP name help" and "# TYPE name type" (counter, gauge, histogram). */
void im_mtext_head(im_mtext *t, const char *name, const char *type, const char *help);

/* One histogram series: name_bucket{labels,le="..."} (cumulative), name_sum
 * and name_count. le[0..n) are the upper bounds (ascending), counts[0..n]
 * the observations per bucket, not cumulative, counts[n] those above
 * le[n-1] (+Inf). sum is in the unit of le. labels: `k="v"` pairs
 * without braces, or "" for none. */
void im_mtext_hist(im_mtext *t, const char *name, const char *labels, const double *le, int n,
                   const uint64_t *counts, double sum);

/* The bucket of v among n ascending upper bounds le (n when above all). */
static inline int im_hist_bucket(const double *le, int n, double v)
{
    int i = 0;
    while (i < n && v > le[i])
        i++;
    return i;
}

/* Writes the whole exposition into t (metrics thread). */
typedef void (*im_metrics_fn)(void *arg, im_mtext *t);

typedef struct im_metrics im_metrics;

/* Binds listen (HOST:PORT, an IPv4 or IPv6 address, IPv6 in brackets;
 * port 0 picks a free one) and serves. token_file: NULL or "" for none,
 * which is refused (NULL with err) unless the address is loopback. NULL
 * with err on failure (bad address, port in use, unreadable token file). */
im_metrics *im_metrics_start(const char *listen, const char *token_file, im_metrics_fn fn,
                             void *arg, char *err, size_t errlen);

/* The bound port (useful after port 0). */
int im_metrics_port(const im_metrics *m);

/* Stops the thread (a scrape in progress finishes first), frees *m and
 * sets it to NULL. NULL-safe. */
void im_metrics_stop(im_metrics **m);

#endif
