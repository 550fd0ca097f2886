/*
 * gw_sub.c - Subscribe: live streams, the presence leases that make the
 * shards tell this gateway of new messages, and those notices.
 *
 * A stream is a cursor over its inbox plus "new data up to seq N" notices.
 * It holds at most one page (GW_SUB_PAGE messages, GW_SUB_PAGE_BYTES of
 * content) and one message in flight to the client, whatever the backlog and
 * however slow the client: the next page is read from the shard only when
 * the client has taken the last one (a SEND_MESSAGE completes once gRPC's
 * flow control has taken it). The page and the message in flight are
 * charged to the reply budget (gw_call.h): a stream whose read or message
 * does not fit ends with RESOURCE_EXHAUSTED (the client resubscribes from
 * its last cursor, later).
 *
 * Life of a stream:
 *   1. The uid joins this gateway's registry and a PresenceOp{online: uid}
 *      goes to its shard. Only when the shard has answered (the lease is in
 *      place, so every later commit for uid will be noticed) ...
 *   2. ... is the initial metadata sent (a client that sees it is online),
 *      and the first read acks up to the request's cursor and reads after
 *      it.
 *   3. Pages go out one message at a time, each Delivery with its cursor.
 *      When a page is used up, the next is read if the shard said `more` or
 *      a notice told of a seq past the last one read; else the stream is
 *      idle: no thread, no timer, a notice wakes it. A notice that
 *      carries the very next message (s_take_entry) puts it in the page
 *      without a read.
 *   4. It ends when the client cancels or its deadline passes (TAG_CLOSE);
 *      with UNAVAILABLE when its shard cannot be read or its shard's
 *      connection dropped (notices may have been lost with it: the client
 *      resumes from its last cursor), or when the server stops; with the
 *      first read's status when that fails (INVALID_ARGUMENT for a cursor
 *      beyond the inbox). The uid's last stream here sends
 *      PresenceOp{offline}.
 * Every read goes after the last seq read, so a stream never skips or
 * repeats a message; the lease is in place before the first read, so a
 * message committed after that read began is noticed.
 *
 * Leases: every presence_lease_ms / 3 the bus thread sends each shard the
 * whole set of this gateway's uids on it (PresenceOp full): that renews
 * them, and drops any that an offline op lost with a connection left
 * behind. A gateway that dies stops renewing; its users are offline when
 * the lease lapses at the shard.
 *
 * Threads: one recursive mutex (gw_subs.mu) guards the registry and every
 * stream's state. The CQ thread takes it (new streams, sent messages,
 * closes), and the bus thread (replies, notices, ticks). Batches are
 * started under it (one SEND_MESSAGE in flight per call, as gRPC requires)
 * and presence ops are queued under it (gw_bus_send only queues), so they
 * reach a shard in the order of the registry's changes. Recursive, because
 * a shard request that cannot be queued calls its callback at once.
 *
 * References: a stream's call (gw_call.refs) is kept alive by its batches in
 * flight, its shard requests in flight, and the final status until it is
 * sent or known never to be (the call was cancelled).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gw_call.h"
#include "im_auth.h"
#include "im_hash.h"
#include "im_log.h"

typedef struct gw_uidset gw_uidset;

#define GW_SUB_BUSY "the server holds too many responses that clients have not read: " \
                    "resubscribe later from the last cursor"

typedef struct gw_sub {
    gw_call *c;
    struct gw_sub *next;  /* the uid's other streams here */
    gw_uidset *set;       /* the uid's registry entry while registered */
    int shard;
    uint64_t cursor;      /* the request's: acked by the first read */
    uint64_t fetched;     /* highest seq read: the next read goes after it */
    uint64_t noticed;     /* highest seq a notice told of */
    bool more;            /* the last page said more were waiting */
    bool first_read_done, md_sent, reading, sending, ended, status_sent;
    uint8_t *page;        /* the current page: PullResponse.messages entries */
    size_t page_len, page_off;
    uint64_t *seqs;       /* their seqs */
    size_t nseqs, iseq;
    grpc_byte_buffer *out; /* the message in flight */
    size_t page_charge;   /* reply budget held for page, and for out */
    size_t out_charge;
} gw_sub;

struct gw_uidset {
    gw_uidset *next;      /* hash chain */
    gw_sub *subs;
    int shard;
    char uid[IM_UID_MAX + 1];
};

typedef struct gw_subs {
    pthread_mutex_t mu;
    gw_uidset **buckets;
    size_t nbuckets;      /* power of two */
    size_t n;             /* uids registered */
} gw_subs;

/* ------------------------------------------------------------ registry */

int gw__subs_new(gw_server *g)
{
    gw_subs *r = calloc(1, sizeof *r);
    if (!r)
        return -1;
    r->nbuckets = 256;
    if (!(r->buckets = calloc(r->nbuckets, sizeof *r->buckets))) {
        free(r);
        return -1;
    }
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_settype(&a, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_init(&r->mu, &a);
    pthread_mutexattr_destroy(&a);
    g->subs = r;
    return 0;
}

void gw__subs_free(gw_server *g)
{
    gw_subs *r = g->subs;
    if (!r)
        return;
    /* Every stream has ended by now (gw__subs_shutdown): the sets are
     * gone with them. */
    for (size_t i = 0; i < r->nbuckets; i++)
        for (gw_uidset *u = r->buckets[i], *next; u; u = next) {
            next = u->next;
            free(u);
        }
    free(r->buckets);
    pthread_mutex_destroy(&r->mu);
    free(r);
    g->subs = NULL;
}

void gw__sub_free(gw_sub *s)
{
    if (!s)
        return;
    if (s->out)
        grpc_byte_buffer_destroy(s->out);
    if (s->page_charge + s->out_charge)
        gw__budget_give(s->c->g, s->page_charge + s->out_charge);
    free(s->page);
    free(s->seqs);
    free(s);
}

static gw_uidset **s_slot(gw_subs *r, const char *uid)
{
    gw_uidset **pp = &r->buckets[im_hash64(uid, strlen(uid)) & (r->nbuckets - 1)];
    while (*pp && strcmp((*pp)->uid, uid) != 0)
        pp = &(*pp)->next;
    return pp;
}

/* Doubles the buckets when uids outnumber them (best effort). */
static void s_grow(gw_subs *r)
{
    if (r->n < r->nbuckets)
        return;
    size_t nb = 2 * r->nbuckets;
    gw_uidset **v = calloc(nb, sizeof *v);
    if (!v)
        return;
    for (size_t i = 0; i < r->nbuckets; i++)
        for (gw_uidset *u = r->buckets[i], *next; u; u = next) {
            next = u->next;
            size_t b = im_hash64(u->uid, strlen(u->uid)) & (nb - 1);
            u->next = v[b];
            v[b] = u;
        }
    free(r->buckets);
    r->buckets = v;
    r->nbuckets = nb;
}

/* ------------------------------------------------- shard requests */

/* PresenceOp uid lists, encoded by callback. */
typedef struct s_uid_list {
    const char **v;
    size_t n;
} s_uid_list;

static bool s_write_uids(pb_ostream_t *st, const pb_field_t *f, void *const *arg)
{
    const s_uid_list *l = *arg;
    for (size_t i = 0; i < l->n; i++)
        if (!pb_encode_tag_for_field(st, f) ||
            !pb_encode_string(st, (const uint8_t *)l->v[i], strlen(l->v[i])))
            return false;
    return true;
}

/* Sends shard a PresenceOp; fn(arg) gets the answer. */
static void s_presence_op(gw_server *g, int shard, s_uid_list *on, s_uid_list *off, bool full,
                          gw_bus_fn fn, void *arg)
{
    imbox_internal_v1_ShardRequest req;
    memset(&req, 0, sizeof req);
    req.has_presence = true;
    req.presence.lease_ms = (uint32_t)g->c.presence_lease_ms;
    req.presence.full = full;
    if (on) {
        req.presence.online.funcs.encode = s_write_uids;
        req.presence.online.arg = on;
    }
    if (off) {
        req.presence.offline.funcs.encode = s_write_uids;
        req.presence.offline.arg = off;
    }
    gw__send_req(g, shard, &req, fn, arg);
}

/* For presence ops whose answer nobody waits for: a lost one is healed by
 * the next full op or the lease. */
static void s_on_ignored(void *arg, int status, const char *why, const uint8_t *reply,
                         size_t len)
{
    (void)arg, (void)status, (void)why, (void)reply, (void)len;
}

/* ------------------------------------------------------------- streams */

static void s_pump(gw_sub *s);

/* Sends a batch of ops[0..n) on the stream's call with tag t; a refused
 * batch is a bug. */
static void s_batch(gw_sub *s, grpc_op *ops, size_t n, gw_tag *t)
{
    atomic_fetch_add(&s->c->refs, 1);
    grpc_call_error e = grpc_call_start_batch(s->c->call, ops, n, t, NULL);
    if (e != GRPC_CALL_OK) {
        im_log(IM_LOG_ERROR, "gateway", NULL, "start_batch(stream) = %d: a bug", (int)e);
        abort();
    }
}

/* Leaves the registry; the uid's last stream here tells its shard. */
static void s_unregister(gw_server *g, gw_sub *s)
{
    gw_uidset *u = s->set;
    if (!u)
        return;
    s->set = NULL;
    gw_sub **pp = &u->subs;
    while (*pp != s)
        pp = &(*pp)->next;
    *pp = s->next;
    if (u->subs)
        return;
    gw_subs *r = g->subs;
    gw_uidset **slot = s_slot(r, u->uid);
    *slot = u->next;
    r->n--;
    const char *uid = u->uid;
    s_uid_list off = {&uid, 1};
    s_presence_op(g, u->shard, NULL, &off, false, s_on_ignored, NULL);
    free(u);
}

/* Ends the stream from the server's side with status code (once). */
static void s_end(gw_sub *s, int code, const char *msg)
{
    if (s->ended)
        return;
    s->ended = true;
    gw_call *c = s->c;
    s_unregister(c->g, s);
    if (s->status_sent)
        return;
    s->status_sent = true;
    gw__stat_call(c, code);
    grpc_op ops[2];
    memset(ops, 0, sizeof ops);
    size_t n = 0;
    if (!s->md_sent) {
        s->md_sent = true;
        ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
        ops[n++].data.send_initial_metadata.count = 0;
    }
    grpc_slice_unref(c->status_details);
    c->status_details = grpc_slice_from_copied_string(msg ? msg : "");
    ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[n].data.send_status_from_server.status = (grpc_status_code)code;
    ops[n++].data.send_status_from_server.status_details = &c->status_details;
    /* The final status's reference was taken when the call began. */
    grpc_call_error e = grpc_call_start_batch(c->call, ops, n, &c->t_send, NULL);
    if (e != GRPC_CALL_OK) {
        im_log(IM_LOG_ERROR, "gateway", NULL, "start_batch(status) = %d: a bug", (int)e);
        abort();
    }
}

static void s_on_page(void *arg, int status, const char *why, const uint8_t *reply, size_t len)
{
    gw_sub *s = arg;
    gw_call *c = s->c;
    gw_server *g = c->g;
    im_bytes_in entries = {.max = GW_SUB_PAGE_BYTES + GW_SUB_PAGE * 1024};
    int code = gw__shard_decode(g, status, &why, reply, len, &entries);
    const imbox_internal_v1_ShardReply *r = g->shard_reply;
    if (!code && r->seqs_count != r->count) {
        code = IM_INTERNAL;
        why = "shard page has the wrong number of seqs";
    }
    pthread_mutex_lock(&g->subs->mu);
    s->reading = false;
    if (!s->ended && code) {
        s_end(s, code, why);
    } else if (!s->ended) {
        s->first_read_done = true;
        s->more = r->more;
        if (r->last_seq > s->fetched)
            s->fetched = r->last_seq;
        s->seqs = r->count ? malloc(r->count * sizeof *s->seqs) : NULL;
        if (r->count && !s->seqs) {
            s_end(s, IM_RESOURCE_EXHAUSTED, "out of memory");
        } else if (!gw__budget_take(g, entries.n)) {
            s_end(s, IM_RESOURCE_EXHAUSTED, GW_SUB_BUSY);
        } else {
            s->page_charge = entries.n;
            if (r->count)
                memcpy(s->seqs, r->seqs, r->count * sizeof *s->seqs);
            s->nseqs = r->count;
            s->iseq = 0;
            s->page = entries.p;
            s->page_len = entries.n;
            s->page_off = 0;
            entries.p = NULL;
            s_pump(s);
        }
    }
    pthread_mutex_unlock(&g->subs->mu);
    free(entries.p);
    gw__call_unref(c);
}

static void s_read(gw_sub *s)
{
    gw_call *c = s->c;
    if (!gw__budget_room(c->g)) {
        s_end(s, IM_RESOURCE_EXHAUSTED, GW_SUB_BUSY);
        return;
    }
    imbox_internal_v1_ShardRequest req;
    memset(&req, 0, sizeof req);
    req.has_read = true;
    snprintf(req.read.uid, sizeof req.read.uid, "%s", c->uid);
    if (s->first_read_done)
        req.read.after = s->fetched;
    else
        req.read.ack_upto = s->cursor;
    req.read.limit = GW_SUB_PAGE;
    req.read.max_bytes = GW_SUB_PAGE_BYTES;
    s->reading = true;
    s->more = false;
    atomic_fetch_add(&c->refs, 1);
    gw__send_req(c->g, s->shard, &req, s_on_page, s);
}

/* The length of the entry at p[0..n): tag 0x0a (field 1, length-delimited)
 * and a varint length; 0 when malformed. */
static size_t s_entry_len(const uint8_t *p, size_t n)
{
    if (n < 2 || p[0] != 0x0a)
        return 0;
    uint64_t len = 0;
    size_t i = 1;
    for (int shift = 0; i < n && shift < 64; shift += 7) {
        uint8_t b = p[i++];
        len |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80))
            return len <= n - i ? i + (size_t)len : 0;
    }
    return 0;
}

/*
 * Sends the next message of the page as a Delivery: the page entry is
 * PullResponse field 1 (Message), which is Delivery field 1 too, so the
 * shard's bytes go out as they are, followed by field 2, the cursor.
 */
static void s_send_next(gw_sub *s)
{
    gw_call *c = s->c;
    size_t el = s_entry_len(s->page + s->page_off, s->page_len - s->page_off);
    char cur[IM_CURSOR_MAX];
    if (!el || s->iseq >= s->nseqs ||
        im_cursor_make(&c->g->c.secret, c->uid, "", s->seqs[s->iseq], cur, sizeof cur)) {
        s_end(s, IM_INTERNAL, "shard page does not decode");
        return;
    }
    size_t cl = strlen(cur);
    if (!gw__budget_take(c->g, el + 2 + cl)) {
        s_end(s, IM_RESOURCE_EXHAUSTED, GW_SUB_BUSY);
        return;
    }
    s->out_charge = el + 2 + cl;
    uint8_t *buf = malloc(el + 2 + cl);
    if (!buf) {
        s_end(s, IM_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    memcpy(buf, s->page + s->page_off, el);
    buf[el] = 0x12; /* field 2, length-delimited; a cursor is < 128 bytes */
    buf[el + 1] = (uint8_t)cl;
    memcpy(buf + el + 2, cur, cl);
    grpc_slice sl = grpc_slice_new(buf, el + 2 + cl, free);
    s->out = grpc_raw_byte_buffer_create(&sl, 1);
    grpc_slice_unref(sl);
    s->page_off += el;
    s->iseq++;
    if (s->page_off == s->page_len) { /* used up: copied into messages */
        gw__budget_give(c->g, s->page_charge);
        s->page_charge = 0;
        free(s->page);
        free(s->seqs);
        s->page = NULL;
        s->seqs = NULL;
        s->page_len = s->page_off = s->nseqs = s->iseq = 0;
    }
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_SEND_MESSAGE;
    op.data.send_message.send_message = s->out;
    s->sending = true;
    s_batch(s, &op, 1, &c->t_msg);
}

/* Moves the stream on: the next message, else the next page when one may
 * be waiting, else nothing (idle until a notice). */
static void s_pump(gw_sub *s)
{
    if (s->ended || s->reading || s->sending)
        return;
    if (s->page_off < s->page_len)
        s_send_next(s);
    else if (!s->first_read_done || s->more || s->noticed > s->fetched)
        s_read(s);
}

/* The shard holds the lease: the stream starts. */
static void s_on_online(void *arg, int status, const char *why, const uint8_t *reply,
                        size_t len)
{
    gw_sub *s = arg;
    gw_call *c = s->c;
    int code = gw__shard_decode(c->g, status, &why, reply, len, NULL);
    pthread_mutex_lock(&c->g->subs->mu);
    if (!s->ended && code) {
        s_end(s, code, why);
    } else if (!s->ended) {
        grpc_op op;
        memset(&op, 0, sizeof op);
        op.op = GRPC_OP_SEND_INITIAL_METADATA;
        op.data.send_initial_metadata.count = 0;
        s->md_sent = true;
        s_batch(s, &op, 1, &c->t_md);
        s_pump(s);
    }
    pthread_mutex_unlock(&c->g->subs->mu);
    gw__call_unref(c);
}

/* Joins the registry and asks the shard for the lease (under the lock). */
static int s_register(gw_server *g, gw_sub *s)
{
    gw_subs *r = g->subs;
    gw_call *c = s->c;
    gw_uidset **slot = s_slot(r, c->uid), *u = *slot;
    if (!u) {
        if (!(u = calloc(1, sizeof *u)))
            return -1;
        snprintf(u->uid, sizeof u->uid, "%s", c->uid);
        u->shard = s->shard;
        *slot = u;
        r->n++;
        s_grow(r);
    }
    s->next = u->subs;
    u->subs = s;
    s->set = u;
    const char *uid = c->uid;
    s_uid_list on = {&uid, 1};
    atomic_fetch_add(&c->refs, 1);
    s_presence_op(g, s->shard, &on, NULL, false, s_on_online, s);
    return 0;
}

void gw__subscribe(gw_call *c)
{
    imbox_v1_SubscribeRequest q = {0};
    gw_cursor k;
    gw__cursor_init(&k, &q.cursor);
    if (gw__decode(c, imbox_v1_SubscribeRequest_fields, &q, "SubscribeRequest"))
        return;
    uint64_t seq;
    char scope[IM_UID_MAX + 1] = "";
    if (gw__cursor(c, &k, &seq, scope))
        return;
    if (scope[0]) {
        gw__respond_errf(c, IM_INVALID_ARGUMENT,
                         "cursor: it belongs to the conversation with '%s'; Subscribe takes a "
                         "whole-inbox cursor (from Pull without sender_uid, or a Delivery)",
                         scope);
        return;
    }
    gw_sub *s = calloc(1, sizeof *s);
    if (!s) {
        gw__respond(c, IM_RESOURCE_EXHAUSTED, "out of memory", NULL, 0);
        return;
    }
    gw_server *g = c->g;
    s->c = c;
    s->cursor = s->fetched = seq;
    s->shard = im_shard_of(c->uid, g->c.nshards);
    c->sub = s;
    pthread_mutex_lock(&g->subs->mu);
    if (atomic_load(&g->stopping))
        s_end(s, IM_UNAVAILABLE, "the server is stopping");
    else if (s_register(g, s))
        s_end(s, IM_RESOURCE_EXHAUSTED, "out of memory");
    pthread_mutex_unlock(&g->subs->mu);
}

void gw__sub_sent(gw_call *c, gw_tag_kind kind, bool ok)
{
    gw_sub *s = c->sub;
    pthread_mutex_lock(&c->g->subs->mu);
    if (kind == TAG_MSG) {
        grpc_byte_buffer_destroy(s->out);
        s->out = NULL;
        gw__budget_give(c->g, s->out_charge);
        s->out_charge = 0;
        s->sending = false;
        if (ok)
            s_pump(s);
    }
    pthread_mutex_unlock(&c->g->subs->mu);
}

void gw__sub_closed(gw_call *c)
{
    gw_sub *s = c->sub;
    bool drop = false;
    pthread_mutex_lock(&c->g->subs->mu);
    if (!s->ended) {
        s->ended = true;
        s_unregister(c->g, s);
    }
    if (!s->status_sent) { /* cancelled: no status will ever be sent */
        s->status_sent = true;
        drop = true;
    }
    pthread_mutex_unlock(&c->g->subs->mu);
    if (drop)
        gw__call_unref(c);
}

/* ----------------------------------------------------- bus thread hooks */

/* Calls fn on every stream of the uids on shard (all uids when shard < 0),
 * under the lock; fn may end the stream (and so free its set). */
static void s_each(gw_server *g, int shard, void (*fn)(gw_sub *, void *), void *arg)
{
    gw_subs *r = g->subs;
    for (size_t b = 0; b < r->nbuckets; b++) {
        gw_uidset *u = r->buckets[b];
        while (u) {
            gw_uidset *next = u->next;
            if (shard < 0 || u->shard == shard)
                for (gw_sub *s = u->subs, *sn; s; s = sn) {
                    sn = s->next;
                    fn(s, arg); /* may free u when s was its last stream */
                }
            u = next;
        }
    }
}

static void s_end_unavailable(gw_sub *s, void *why)
{
    s_end(s, IM_UNAVAILABLE, why);
}

void gw__subs_shutdown(gw_server *g)
{
    pthread_mutex_lock(&g->subs->mu);
    s_each(g, -1, s_end_unavailable, "the server is stopping");
    pthread_mutex_unlock(&g->subs->mu);
}

void gw__subs_disconnected(void *arg, int shard)
{
    gw_server *g = arg;
    pthread_mutex_lock(&g->subs->mu);
    s_each(g, shard, s_end_unavailable,
           "the inbox's shard restarted or its connection dropped: subscribe again with the "
           "last cursor");
    pthread_mutex_unlock(&g->subs->mu);
}

/* Renews the leases: each shard gets this gateway's whole set of its uids. */
void gw__subs_tick(void *arg)
{
    gw_server *g = arg;
    gw_subs *r = g->subs;
    pthread_mutex_lock(&r->mu);
    int S = g->c.nshards;
    const char **v = r->n ? malloc(r->n * sizeof *v) : NULL;
    size_t *start = r->n ? calloc((size_t)S + 1, sizeof *start) : NULL;
    if (v && start) {
        /* Counting sort of the uids by shard: start[s] is shard s's first. */
        for (size_t b = 0; b < r->nbuckets; b++)
            for (gw_uidset *u = r->buckets[b]; u; u = u->next)
                start[u->shard + 1]++;
        for (int s = 0; s < S; s++)
            start[s + 1] += start[s];
        size_t *at = calloc((size_t)S, sizeof *at);
        if (at) {
            for (size_t b = 0; b < r->nbuckets; b++)
                for (gw_uidset *u = r->buckets[b]; u; u = u->next)
                    v[start[u->shard] + at[u->shard]++] = u->uid;
            for (int s = 0; s < S; s++) {
                s_uid_list on = {v + start[s], start[s + 1] - start[s]};
                s_presence_op(g, s, &on, NULL, true, s_on_ignored, NULL);
            }
            free(at);
        }
    }
    pthread_mutex_unlock(&r->mu);
    free(v);
    free(start);
}

/*
 * Appends the message seq (one PullResponse entry, e[0..n)) to the stream's
 * page when it is the next one the stream would read: the stream is up to
 * date (its last read message is seq - 1, no read in flight) and the page
 * has room. Else the stream reads it later (the caller bumps `noticed`).
 */
static bool s_take_entry(gw_sub *s, uint64_t seq, const uint8_t *e, size_t n)
{
    if (!e || s->ended || !s->first_read_done || s->reading || seq != s->fetched + 1)
        return false;
    size_t left = s->page_len - s->page_off, nleft = s->nseqs - s->iseq;
    if (nleft >= GW_SUB_PAGE || left + n > GW_SUB_PAGE_BYTES + GW_SUB_PAGE * 1024)
        return false;
    gw_server *g = s->c->g;
    if (left + n > s->page_charge && !gw__budget_take(g, left + n - s->page_charge))
        return false; /* read later, if the budget allows */
    if (left + n > s->page_charge)
        s->page_charge = left + n;
    uint8_t *page = malloc(left + n);
    uint64_t *seqs = malloc((nleft + 1) * sizeof *seqs);
    if (!page || !seqs) {
        free(page);
        free(seqs);
        return false;
    }
    if (s->page_charge > left + n) {
        gw__budget_give(g, s->page_charge - (left + n));
        s->page_charge = left + n;
    }
    if (left) {
        memcpy(page, s->page + s->page_off, left);
        memcpy(seqs, s->seqs + s->iseq, nleft * sizeof *seqs);
    }
    memcpy(page + left, e, n);
    seqs[nleft] = seq;
    free(s->page);
    free(s->seqs);
    s->page = page;
    s->page_len = left + n;
    s->page_off = 0;
    s->seqs = seqs;
    s->nseqs = nleft + 1;
    s->iseq = 0;
    s->fetched = seq;
    return true;
}

/* One Commit of a Notice, decoded: its entry is checked to be exactly one
 * PullResponse entry (the shard's bytes are forwarded as they are). */
static bool s_read_commit(pb_istream_t *st, const pb_field_t *f, void **arg)
{
    (void)f;
    gw_server *g = *arg;
    imbox_internal_v1_Commit cm = imbox_internal_v1_Commit_init_zero;
    im_bytes_in entry = {.max = IM_CONTENT_MAX + 1024};
    cm.entry.funcs.decode = im_pb_read_bytes;
    cm.entry.arg = &entry;
    bool ok = pb_decode(st, imbox_internal_v1_Commit_fields, &cm);
    const uint8_t *e = entry.p;
    if (ok && e && s_entry_len(e, entry.n) != entry.n)
        e = NULL; /* malformed: the stream reads the message instead */
    gw_uidset *u = ok ? *s_slot(g->subs, cm.uid) : NULL;
    for (gw_sub *s = u ? u->subs : NULL, *sn; s; s = sn) {
        sn = s->next;
        if (!s_take_entry(s, cm.seq, e, entry.n) && cm.seq > s->noticed)
            s->noticed = cm.seq;
        s_pump(s);
    }
    free(entry.p);
    return ok;
}

/* A shard's Notice: wakes the streams of the uids it names. */
void gw__subs_notice(void *arg, int shard, const uint8_t *body, size_t len)
{
    gw_server *g = arg;
    imbox_internal_v1_Notice n = imbox_internal_v1_Notice_init_zero;
    n.commits.funcs.decode = s_read_commit;
    n.commits.arg = g;
    pb_istream_t is = pb_istream_from_buffer(body, len);
    pthread_mutex_lock(&g->subs->mu);
    if (!pb_decode(&is, imbox_internal_v1_Notice_fields, &n))
        im_log(IM_LOG_WARN, "gateway", NULL, "notice from shard %d does not decode: %s", shard,
               PB_GET_ERROR(&is));
    pthread_mutex_unlock(&g->subs->mu);
}
