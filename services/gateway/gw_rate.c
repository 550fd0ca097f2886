/* gw_rate.c - the per-sender Send rate limit (contract in gw_rate.h). */
#include "gw_rate.h"
#include "im_hash.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

_Static_assert((GW_RATE_SETS & (GW_RATE_SETS - 1)) == 0, "sets: a power of two");

#define S_UNIT 1000000 /* a bucket counts millionths of a token */

typedef struct s_bucket {
    int64_t level;  /* millionths of a token at time `at` */
    int64_t at;     /* microseconds */
    char uid[IM_UID_MAX + 1];
} s_bucket;

struct gw_rate {
    int64_t rate;       /* tokens a second = millionths a microsecond */
    int64_t max;        /* burst, in millionths */
    int64_t full_us;    /* an empty bucket is full again after this long */
    uint64_t key;       /* of the hash */
    gw_rate_stats st;
    uint64_t tag[GW_RATE_SETS][GW_RATE_WAYS]; /* hash of the uid, 0: free */
    s_bucket b[GW_RATE_SETS][GW_RATE_WAYS];
};

gw_rate *gw_rate_new(uint32_t rate, uint32_t burst)
{
    assert(rate >= 1 && rate <= 1000000 && burst >= 1 && burst <= 1000000);
    gw_rate *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->rate = rate;
    r->max = (int64_t)burst * S_UNIT;
    r->full_us = r->max / r->rate + 1;
    if (getrandom(&r->key, sizeof r->key, 0) != sizeof r->key) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        r->key = (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15u ^ (uint64_t)ts.tv_sec;
    }
    return r;
}

void gw_rate_free(gw_rate *r)
{
    free(r);
}

/* A bucket's level at now. */
static int64_t s_level(const gw_rate *r, const s_bucket *b, int64_t now)
{
    int64_t dt = now - b->at;
    if (dt <= 0)
        return b->level;
    if (dt >= r->full_us)
        return r->max;
    int64_t l = b->level + dt * r->rate;
    return l < r->max ? l : r->max;
}

/* uid's bucket, made (full) if it has none: see OVERFLOW in gw_rate.h. */
static s_bucket *s_find(gw_rate *r, const char *uid, int64_t now)
{
    size_t n = strlen(uid);
    uint64_t h = im_hash_table(r->key, uid, n); /* never 0: a free way */
    uint64_t *tag = r->tag[h & (GW_RATE_SETS - 1)];
    s_bucket *set = r->b[h & (GW_RATE_SETS - 1)];
    int pick = -1;
    int64_t best = -1;
    for (int w = 0; w < GW_RATE_WAYS; w++) {
        if (tag[w] == h && memcmp(set[w].uid, uid, n + 1) == 0)
            return &set[w];
        if (tag[w] == 0) {
            if (best < INT64_MAX) {
                pick = w;
                best = INT64_MAX;
            }
            continue;
        }
        int64_t l = s_level(r, &set[w], now);
        if (l > best) {
            pick = w;
            best = l;
        }
    }
    if (tag[pick] == 0)
        r->st.buckets++;
    else if (best < r->max)
        r->st.evicted++;
    tag[pick] = h;
    s_bucket *b = &set[pick];
    memcpy(b->uid, uid, n + 1);
    b->level = r->max;
    b->at = now;
    return b;
}

int gw_rate_take(gw_rate *r, const char *uid, uint32_t cost, int64_t now_us,
                 uint32_t *retry_ms)
{
    s_bucket *b = s_find(r, uid, now_us);
    int64_t need = (int64_t)cost * S_UNIT;
    if (need > r->max)
        need = r->max;
    int64_t l = s_level(r, b, now_us);
    b->level = l;
    b->at = now_us > b->at ? now_us : b->at;
    if (l >= need) {
        b->level = l - need;
        r->st.taken++;
        return 0;
    }
    int64_t wait_us = (need - l + r->rate - 1) / r->rate;
    int64_t ms = (wait_us + 999) / 1000;
    *retry_ms = ms < 1 ? 1 : (uint32_t)ms;
    r->st.refused++;
    return -1;
}

gw_rate_stats gw_rate_stats_of(const gw_rate *r)
{
    return r->st;
}
