/*
 * peer.c - the helpers the peer drivers share (peer.h is the spec).
 */
#include "peer.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

bool peer_fifo_push(peer_fifo *f, bc_op *op)
{
    if (f->n == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 64;
        bc_op **v = malloc(cap * sizeof *v);
        if (!v)
            return false;
        for (size_t i = 0; i < f->n; i++)
            v[i] = f->v[(f->head + i) % f->cap];
        free(f->v);
        f->v = v;
        f->cap = cap;
        f->head = 0;
    }
    f->v[(f->head + f->n) % f->cap] = op;
    f->n++;
    return true;
}

bc_op *peer_fifo_pop(peer_fifo *f)
{
    if (f->n == 0)
        return NULL;
    bc_op *op = f->v[f->head];
    f->head = (f->head + 1) % f->cap;
    f->n--;
    return op;
}

void peer_fifo_free(peer_fifo *f)
{
    free(f->v);
    memset(f, 0, sizeof *f);
}

bool peer_grow(void **v, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return true;
    size_t n = *cap ? *cap : 64;
    while (n < need)
        n *= 2;
    void *p = realloc(*v, n * elem);
    if (!p)
        return false;
    *v = p;
    *cap = n;
    return true;
}

int peer_calls_at_once(const bc_opts *o, int open_loop_guess)
{
    if (o->rate > 0)
        return open_loop_guess;
    int n = o->inflight;
    bool drain = strcmp(o->workload, "drain") == 0;
    if (drain || strcmp(o->workload, "counts") == 0) {
        /* the fill: one group send per message of every 100 receivers */
        long long blocks = (o->receivers + BC_GROUP_MAX - 1) / BC_GROUP_MAX;
        long long fill = blocks * (long long)o->backlog;
        if (fill > PEER_FILL_CALLS)
            fill = PEER_FILL_CALLS;
        if (fill > n)
            n = (int)fill;
    }
    if (drain && o->receivers > n)
        n = o->receivers;
    return n > 0 ? n : 1;
}

int peer_int_flag(const char *prog, const char *flag, const char *v, int lo, int hi, int *out)
{
    char *end;
    errno = 0;
    long n = v ? strtol(v, &end, 10) : 0;
    if (!v || errno || *end || end == v || n < lo || n > hi) {
        fprintf(stderr, "%s: %s wants an integer in %d..%d\n", prog, flag, lo, hi);
        return -1;
    }
    *out = (int)n;
    return 1;
}
