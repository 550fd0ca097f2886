/*
 * sh_presence.c - see sh_presence.h.
 *
 * A chained hash table from uid to its holders: (gateway number, lease end,
 * generation). Each op of a gateway starts a new generation of that
 * gateway; a full op then drops the gateway's holders of older generations.
 * Entries with no holder left are freed. Expiry and full ops walk the whole
 * table: both are rare (a full op per gateway per second or so) and cost
 * O(uids held), a few microseconds per thousand.
 */
#include "sh_presence.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "im_hash.h"

typedef struct sp_hold {
    int gw;
    uint32_t gen;
    int64_t until;
} sp_hold;

typedef struct sp_ent {
    struct sp_ent *next;
    sp_hold *h;
    int nh, caph;
    char uid[]; /* NUL-terminated */
} sp_ent;

typedef struct sp_gw {
    uint8_t id[SH_GATEWAY_ID_MAX];
    size_t len;
    uint32_t gen;
} sp_gw;

struct sh_presence {
    sp_ent **buckets;
    size_t nbuckets; /* power of two */
    size_t n;        /* entries */
    sp_gw *gws;
    int ngws, capgws;
};

sh_presence *sh_presence_new(void)
{
    sh_presence *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->nbuckets = 64;
    if (!(p->buckets = calloc(p->nbuckets, sizeof *p->buckets))) {
        free(p);
        return NULL;
    }
    return p;
}

static void s_ent_free(sp_ent *e)
{
    free(e->h);
    free(e);
}

void sh_presence_destroy(sh_presence **pp)
{
    if (!pp || !*pp)
        return;
    sh_presence *p = *pp;
    for (size_t i = 0; i < p->nbuckets; i++)
        for (sp_ent *e = p->buckets[i], *next; e; e = next) {
            next = e->next;
            s_ent_free(e);
        }
    free(p->buckets);
    free(p->gws);
    free(p);
    *pp = NULL;
}

int sh_presence_gateway(sh_presence *p, const uint8_t *id, size_t len)
{
    if (len == 0 || len > SH_GATEWAY_ID_MAX)
        return -1;
    for (int i = 0; i < p->ngws; i++)
        if (p->gws[i].len == len && memcmp(p->gws[i].id, id, len) == 0)
            return i;
    if (p->ngws == p->capgws) {
        int cap = p->capgws ? 2 * p->capgws : 8;
        sp_gw *v = realloc(p->gws, (size_t)cap * sizeof *v);
        if (!v)
            return -1;
        p->gws = v;
        p->capgws = cap;
    }
    sp_gw *g = &p->gws[p->ngws];
    memcpy(g->id, id, len);
    g->len = len;
    g->gen = 0;
    return p->ngws++;
}

const uint8_t *sh_presence_gateway_id(const sh_presence *p, int gw, size_t *len)
{
    *len = p->gws[gw].len;
    return p->gws[gw].id;
}

int sh_presence_gateways(const sh_presence *p)
{
    return p->ngws;
}

static sp_ent **s_slot(const sh_presence *p, const char *uid)
{
    size_t b = im_hash64(uid, strlen(uid)) & (p->nbuckets - 1);
    sp_ent **pp = &p->buckets[b];
    while (*pp && strcmp((*pp)->uid, uid) != 0)
        pp = &(*pp)->next;
    return pp;
}

/* Doubles the buckets when entries outnumber them (best effort: a failed
 * grow only makes chains longer). */
static void s_grow(sh_presence *p)
{
    if (p->n < p->nbuckets)
        return;
    size_t nb = 2 * p->nbuckets;
    sp_ent **v = calloc(nb, sizeof *v);
    if (!v)
        return;
    for (size_t i = 0; i < p->nbuckets; i++)
        for (sp_ent *e = p->buckets[i], *next; e; e = next) {
            next = e->next;
            size_t b = im_hash64(e->uid, strlen(e->uid)) & (nb - 1);
            e->next = v[b];
            v[b] = e;
        }
    free(p->buckets);
    p->buckets = v;
    p->nbuckets = nb;
}

void sh_presence_begin(sh_presence *p, int gw)
{
    p->gws[gw].gen++;
}

int sh_presence_set(sh_presence *p, int gw, const char *uid, int64_t until_ms)
{
    sp_ent **pp = s_slot(p, uid), *e = *pp;
    if (!e) {
        size_t n = strlen(uid) + 1;
        if (!(e = calloc(1, sizeof *e + n)))
            return -1;
        memcpy(e->uid, uid, n);
        *pp = e;
        p->n++;
    }
    sp_hold *h = NULL;
    for (int i = 0; i < e->nh && !h; i++)
        if (e->h[i].gw == gw)
            h = &e->h[i];
    if (!h) {
        if (e->nh == e->caph) {
            int cap = e->caph ? 2 * e->caph : 2;
            sp_hold *v = realloc(e->h, (size_t)cap * sizeof *v);
            if (!v) {
                if (e->nh == 0) { /* just added: take it back */
                    *pp = e->next;
                    p->n--;
                    s_ent_free(e);
                }
                return -1;
            }
            e->h = v;
            e->caph = cap;
        }
        h = &e->h[e->nh++];
        h->gw = gw;
    }
    h->gen = p->gws[gw].gen;
    h->until = until_ms;
    s_grow(p);
    return 0;
}

/* Removes the holders of e for which drop() says so; frees e (unlinking it
 * at *pp) when none is left. Returns whether e is gone. */
static bool s_prune(sh_presence *p, sp_ent **pp, bool (*drop)(const sp_hold *, const void *),
                    const void *arg)
{
    sp_ent *e = *pp;
    int k = 0;
    for (int i = 0; i < e->nh; i++)
        if (!drop(&e->h[i], arg))
            e->h[k++] = e->h[i];
    e->nh = k;
    if (k)
        return false;
    *pp = e->next;
    p->n--;
    s_ent_free(e);
    return true;
}

static bool s_is_gw(const sp_hold *h, const void *arg)
{
    return h->gw == *(const int *)arg;
}

void sh_presence_clear(sh_presence *p, int gw, const char *uid)
{
    sp_ent **pp = s_slot(p, uid);
    if (*pp)
        s_prune(p, pp, s_is_gw, &gw);
}

/* Walks every entry, pruning by drop(). */
static void s_prune_all(sh_presence *p, bool (*drop)(const sp_hold *, const void *),
                        const void *arg)
{
    for (size_t b = 0; b < p->nbuckets; b++)
        for (sp_ent **pp = &p->buckets[b]; *pp;)
            if (!s_prune(p, pp, drop, arg))
                pp = &(*pp)->next;
}

typedef struct sp_stale {
    int gw;
    uint32_t gen;
} sp_stale;

static bool s_is_stale(const sp_hold *h, const void *arg)
{
    const sp_stale *s = arg;
    return h->gw == s->gw && h->gen != s->gen;
}

void sh_presence_end(sh_presence *p, int gw, int full)
{
    if (!full)
        return;
    sp_stale s = {gw, p->gws[gw].gen};
    s_prune_all(p, s_is_stale, &s);
}

int sh_presence_holders(const sh_presence *p, const char *uid, int64_t now_ms, int *gws,
                        int max)
{
    const sp_ent *e = *s_slot(p, uid);
    int n = 0;
    for (int i = 0; e && i < e->nh && n < max; i++)
        if (e->h[i].until > now_ms)
            gws[n++] = e->h[i].gw;
    return n;
}

static bool s_lapsed(const sp_hold *h, const void *arg)
{
    return h->until <= *(const int64_t *)arg;
}

size_t sh_presence_expire(sh_presence *p, int64_t now_ms)
{
    s_prune_all(p, s_lapsed, &now_ms);
    return p->n;
}
