/*
 * gw_rate.h - the gateway's per-sender Send rate limit: a token bucket per
 * sender uid, in a bounded table.
 *
 * A bucket holds up to `burst` tokens and gains `rate` tokens a second. A
 * Send takes its cost (gw_rate_cost: 1, plus 1 for every 10 receivers after
 * the first 10, so a fan-out costs by its copies but a Send to 1000, the
 * most, still fits a burst of 100 or more) or, when the bucket holds less,
 * is refused with the wait until it would hold enough. A retried Send costs
 * the same as the first (the gateway cannot tell a retry without asking
 * the shard, and a client that retries fast is load all the same). A
 * refused Send takes nothing.
 *
 * Shape: GW_RATE_SETS sets of GW_RATE_WAYS buckets (set-associative, about
 * 1.6 MiB allocated once): memory is bounded whatever the senders. A bucket
 * is found by a hash of the uid (keyed per table, so nobody can aim many
 * uids at one set) and its full uid compared. A new sender takes a free
 * way of its set, else a stale one (a bucket that would be full by now: it
 * carries no history), else, when every way holds a sender that sent within
 * the last burst/rate seconds, the way holding the most tokens. OVERFLOW:
 * the evicted sender later starts again from a full bucket, so the limit
 * fails open by at most one burst per eviction, and only while more than
 * GW_RATE_WAYS senders of one set (16384 buckets in all) are active at
 * once; it never refuses a sender because the table is full.
 *
 * Cost per Send: one hash of the uid, up to GW_RATE_WAYS tag compares, one
 * uid compare, integer arithmetic. No allocation, no lock.
 *
 * Threads: none. A table belongs to one thread: the gateway's is used by
 * the completion-queue thread only (gw__send).
 */
#ifndef IMBOX_GW_RATE_H
#define IMBOX_GW_RATE_H

#include <stdint.h>

#include "im_base.h"

#define GW_RATE_WAYS 4
#define GW_RATE_SETS 4096 /* a power of two */
#define GW_RATE_CAP (GW_RATE_WAYS * GW_RATE_SETS)

typedef struct gw_rate gw_rate;

/* A table for `rate` tokens a second (1..1000000) and buckets of `burst`
 * tokens (1..1000000); NULL out of memory. */
gw_rate *gw_rate_new(uint32_t rate, uint32_t burst);

/* NULL-safe. */
void gw_rate_free(gw_rate *r);

/* The tokens a Send to n receivers costs: 1 + (n - 1) / 10. */
static inline uint32_t gw_rate_cost(int n)
{
    return n <= 1 ? 1u : 1u + (uint32_t)(n - 1) / 10u;
}

/*
 * Takes `cost` tokens from uid's bucket at time now_us (a monotonic clock,
 * microseconds; never decreasing). 0: taken. -1: refused, nothing taken,
 * *retry_ms the wait (>= 1 ms) after which the bucket holds `cost`. A cost
 * above the burst costs the whole burst (it waits for a full bucket).
 */
int gw_rate_take(gw_rate *r, const char *uid, uint32_t cost, int64_t now_us,
                 uint32_t *retry_ms);

typedef struct gw_rate_stats {
    uint64_t taken, refused, evicted; /* Sends let through, refused; active
                                         buckets given to another sender */
    int buckets;                      /* in use, at most GW_RATE_CAP */
} gw_rate_stats;

gw_rate_stats gw_rate_stats_of(const gw_rate *r);

#endif
