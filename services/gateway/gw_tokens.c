/* gw_tokens.c - the cache of verified bearer tokens (contract in
 * gw_tokens.h). */
#include "gw_tokens.h"
#include "im_hash.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

_Static_assert((GW_TOKENS_SETS & (GW_TOKENS_SETS - 1)) == 0, "sets: a power of two");
_Static_assert(GW_TOKENS_LEN_MAX <= UINT8_MAX, "a token's length fits its byte");

typedef struct s_entry {
    int64_t expiry;           /* Unix seconds: trusted while now < expiry */
    char uid[IM_UID_MAX + 1];
    uint8_t len;
    char token[GW_TOKENS_LEN_MAX];
} s_entry;

typedef struct s_set {
    uint64_t tag[GW_TOKENS_WAYS]; /* the hash of the way's token, 0: free */
    unsigned next;                /* the way the next eviction takes */
} s_set;

struct gw_tokens {
    uint64_t hits, misses;
    int entries;
    s_set sets[GW_TOKENS_SETS];
    s_entry e[GW_TOKENS_SETS][GW_TOKENS_WAYS];
};

gw_tokens *gw_tokens_new(void)
{
    return calloc(1, sizeof(gw_tokens)); /* all ways free */
}

void gw_tokens_free(gw_tokens *t)
{
    free(t);
}

/* 64 bits of token[0..n), never 0 (0 marks a free way): im_hash_table.
 * Not cryptographic, nor needs to be: a collision costs a full compare or
 * an eviction, never a wrong answer; and only tokens that verified are
 * ever stored, so nobody without a valid token can fill or flood a set. */
static uint64_t s_hash(const char *p, size_t n)
{
    return im_hash_table(0x9e3779b97f4a7c15u, p, n);
}

static size_t s_set_of(uint64_t h)
{
    return (size_t)(h >> 32) & (GW_TOKENS_SETS - 1);
}

/* The way of set k that holds exactly token[0..len) under hash h, or -1.
 * memcmp need not be constant-time: it runs only after the 64-bit hashes
 * matched, which nobody can arrange for a token they do not have. */
static int s_find(const gw_tokens *t, size_t k, uint64_t h, const char *token, size_t len)
{
    for (int w = 0; w < GW_TOKENS_WAYS; w++) {
        const s_entry *e = &t->e[k][w];
        if (t->sets[k].tag[w] == h && e->len == len && memcmp(e->token, token, len) == 0)
            return w;
    }
    return -1;
}

int gw_tokens_get(gw_tokens *t, const char *token, size_t len, int64_t now_unix_s,
                  char uid_out[IM_UID_MAX + 1])
{
    assert(t != NULL);
    if (len == 0 || len > GW_TOKENS_LEN_MAX) {
        t->misses++;
        return -1;
    }
    uint64_t h = s_hash(token, len);
    size_t k = s_set_of(h);
    int w = s_find(t, k, h, token, len);
    if (w >= 0 && now_unix_s >= t->e[k][w].expiry) {
        t->sets[k].tag[w] = 0; /* expired: verified again, refused there */
        t->entries--;
        w = -1;
    }
    if (w < 0) {
        t->misses++;
        return -1;
    }
    memcpy(uid_out, t->e[k][w].uid, sizeof t->e[k][w].uid);
    t->hits++;
    return 0;
}

/* The way a new token of set k takes: its own if there (a second put), a
 * free one, else the next in turn. */
static int s_victim(gw_tokens *t, size_t k, uint64_t h, const char *token, size_t len)
{
    int w = s_find(t, k, h, token, len);
    if (w >= 0)
        return w;
    s_set *set = &t->sets[k];
    for (w = 0; w < GW_TOKENS_WAYS; w++)
        if (set->tag[w] == 0) {
            t->entries++;
            return w;
        }
    return (int)(set->next++ % GW_TOKENS_WAYS);
}

void gw_tokens_put(gw_tokens *t, const char *token, size_t len, int64_t expiry_unix_s,
                   const char *uid)
{
    assert(t != NULL && uid != NULL);
    size_t ul = strnlen(uid, IM_UID_MAX + 1);
    if (len == 0 || len > GW_TOKENS_LEN_MAX || ul > IM_UID_MAX)
        return;
    uint64_t h = s_hash(token, len);
    size_t k = s_set_of(h);
    int w = s_victim(t, k, h, token, len);
    s_entry *e = &t->e[k][w];
    e->expiry = expiry_unix_s;
    memcpy(e->uid, uid, ul + 1);
    e->len = (uint8_t)len;
    memcpy(e->token, token, len);
    t->sets[k].tag[w] = h;
}

int gw_tokens_verify(gw_tokens *t, const im_secret *s, const char *token, size_t len,
                     int64_t now_unix_s, char uid_out[IM_UID_MAX + 1], const char **why)
{
    if (t && gw_tokens_get(t, token, len, now_unix_s, uid_out) == 0)
        return 0;
    int64_t expiry;
    if (im_token_verify_until(s, token, len, now_unix_s, uid_out, &expiry, why))
        return -1; /* never cached */
    if (t)
        gw_tokens_put(t, token, len, expiry, uid_out);
    return 0;
}

gw_tokens_stats gw_tokens_stats_of(const gw_tokens *t)
{
    return (gw_tokens_stats){t->hits, t->misses, t->entries};
}
