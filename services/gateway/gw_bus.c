/* gw_bus.c - see gw_bus.h. */
#include "gw_bus.h"

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <zmq.h>

#include "im_base.h"
#include "im_local.h"
#include "im_log.h"
#include "im_wire.h"
#include "im_zmq.h"

#define BUS_BUCKETS 4096     /* pending-by-id hash buckets (power of two) */
#define BUS_HWM 100000       /* messages queued per socket before EAGAIN */
#define BUS_LOCAL_RUN_MS 1000 /* local shards run at least this often (leases) */

typedef struct bus_sink { /* a local shard's im_local_sink.arg */
    struct gw_bus *b;
    int shard;
} bus_sink;

typedef struct bus_req {
    int shard;
    uint8_t *body;
    size_t len;
    gw_bus_fn fn;
    void *arg;
    uint64_t id;
    int64_t deadline;
    struct bus_req *next;               /* incoming queue / bucket chain */
    struct bus_req *older, *newer;      /* pending, by deadline */
} bus_req;

struct gw_bus {
    void **dealers;
    void **monitors;         /* PAIR per dealer, reading its DISCONNECTED and
                                HANDSHAKE_SUCCEEDED events */
    atomic_bool *up;         /* per shard: handshake done, not disconnected
                                since (gw_bus_up; a local shard always) */
    char **endpoints;
    int n;
    im_local_shard *local;   /* n entries; .obj NULL for a remote shard */
    bus_req **batch, **btail; /* per shard: this turn's requests (bus thread) */
    zmq_msg_t parts[2 * IM_ZMQ_BATCH_MAX]; /* a reply message's frames */
    bus_sink *sinks;
    int nlocal;
    int timeout_ms;
    gw_bus_hooks hooks;
    uint8_t id[255];         /* routing id (hooks.id, or 1 byte) */
    size_t id_len;
    int efd;
    pthread_t thread;
    pthread_mutex_t mu;      /* guards queue, closing */
    bus_req *queue, *qtail;
    bool closing;
    /* bus-thread state */
    uint64_t next_id;
    bus_req *buckets[BUS_BUCKETS];
    bus_req *oldest, *newest;
    im_zpoll zp;             /* eventfd, dealers, monitors (im_zmq.h) */
};

static void s_pending_add(gw_bus *b, bus_req *r)
{
    bus_req **head = &b->buckets[r->id & (BUS_BUCKETS - 1)];
    r->next = *head;
    *head = r;
    r->older = b->newest;
    r->newer = NULL;
    if (b->newest)
        b->newest->newer = r;
    else
        b->oldest = r;
    b->newest = r;
}

/* Finds and unlinks the pending request with this id (NULL if none). */
static bus_req *s_pending_take(gw_bus *b, uint64_t id)
{
    bus_req **pp = &b->buckets[id & (BUS_BUCKETS - 1)];
    for (; *pp; pp = &(*pp)->next) {
        bus_req *r = *pp;
        if (r->id != id)
            continue;
        *pp = r->next;
        if (r->older)
            r->older->newer = r->newer;
        else
            b->oldest = r->newer;
        if (r->newer)
            r->newer->older = r->older;
        else
            b->newest = r->older;
        return r;
    }
    return NULL;
}

static void s_finish(bus_req *r, int status, const char *why, const uint8_t *reply, size_t len)
{
    r->fn(r->arg, status, why, reply, len);
    free(r->body);
    free(r);
}

static void s_fail(gw_bus *b, bus_req *r, const char *what)
{
    char why[192];
    snprintf(why, sizeof why, "shard %d (%s) %s", r->shard, b->endpoints[r->shard], what);
    s_finish(r, IM_UNAVAILABLE, why, NULL, 0);
}

/* Every bus of the process gets its own monitor endpoints: inproc names are
 * per context, and several buses may share one. */
static atomic_uint s_bus_seq;

/*
 * Sends shard's gathered requests, IM_ZMQ_BATCH_MAX to a message, each
 * message one packed frame (im_zmq.h). A message that cannot go (not
 * connected: DEALERs are ZMQ_IMMEDIATE; or out of memory) fails its
 * requests and the rest of the batch.
 */
static void s_send_batch(gw_bus *b, int shard, int64_t now)
{
    void *d = b->dealers[shard];
    bus_req *r = b->batch[shard];
    b->batch[shard] = b->btail[shard] = NULL;
    while (r) {
        bus_req *first = r;
        im_zmq_pack k = {0};
        const char *why = NULL;
        for (int n = 0; r && n < IM_ZMQ_BATCH_MAX && !why; r = r->next, n++) {
            if (im_zmq_pack_add(&k, (const uint8_t *)&r->id, r->body, r->len))
                why = "request: out of memory";
            free(r->body);
            r->body = NULL;
        }
        if (why)
            im_zmq_pack_free(&k);
        else if (im_zmq_pack_send(&k, d, ZMQ_DONTWAIT) < 0)
            why = errno == EAGAIN ? "is not connected" : zmq_strerror(errno);
        bus_req *end = why ? NULL : r; /* on failure: the rest fails too */
        for (bus_req *q = first; q != end;) {
            bus_req *next = q->next;
            if (why) {
                s_fail(b, q, why);
            } else {
                q->deadline = now + b->timeout_ms;
                s_pending_add(b, q);
            }
            q = next;
        }
        if (why)
            break;
    }
}

static void s_send_queued(gw_bus *b)
{
    uint64_t v;
    if (read(b->efd, &v, sizeof v) < 0 && errno != EAGAIN)
        im_log(IM_LOG_ERROR, "gateway", NULL, "eventfd: %s", strerror(errno));
    pthread_mutex_lock(&b->mu);
    bus_req *r = b->queue;
    b->queue = b->qtail = NULL;
    pthread_mutex_unlock(&b->mu);
    int64_t now = im_mono_ms();
    while (r) {
        bus_req *next = r->next;
        r->id = ++b->next_id;
        const im_local_shard *l = &b->local[r->shard];
        if (l->obj) {
            /* Pending first: the shard may answer inside the call. */
            r->deadline = now + b->timeout_ms;
            s_pending_add(b, r);
            uint8_t id[8];
            memcpy(id, &r->id, 8);
            uint8_t *body = r->body;
            r->body = NULL;
            l->request(l->obj, b->id, b->id_len, id, body, r->len);
            free(body);
            r = next;
            continue;
        }
        /* Remote: gathered per shard, in queue order, sent below. */
        r->next = NULL;
        if (b->btail[r->shard])
            b->btail[r->shard]->next = r;
        else
            b->batch[r->shard] = r;
        b->btail[r->shard] = r;
        r = next;
    }
    for (int i = 0; i < b->n; i++)
        if (b->batch[i]) {
            s_send_batch(b, i, now);
            im_zpoll_dirty(&b->zp, i + 1); /* a send may eat a reply's signal */
        }
}

/* Takes the replies waiting from shard: batches (im_zmq.h; a shard
 * answers a turn's requests to this gateway in one), id 0 for a notice. A
 * malformed message is dropped whole. */
static void s_recv_replies(gw_bus *b, int shard)
{
    zmq_msg_t *parts = b->parts;
    int n, max = 2 * IM_ZMQ_BATCH_MAX;
    while ((n = im_zmq_recv(b->dealers[shard], parts, max)) > 0) {
        im_zmq_batch in;
        if (!im_zmq_batch_open(&in, parts, 0, n, max))
            im_log(IM_LOG_WARN, "gateway", NULL, "malformed reply from shard %d dropped", shard);
        const uint8_t *id8, *body;
        size_t len;
        while (im_zmq_batch_next(&in, &id8, &body, &len)) {
            uint64_t id;
            memcpy(&id, id8, 8);
            if (id == 0) { /* unasked: a notice */
                if (b->hooks.notice)
                    b->hooks.notice(b->hooks.arg, shard, body, len);
                continue;
            }
            bus_req *r = s_pending_take(b, id);
            if (r) /* else: a late reply to a request that timed out */
                s_finish(r, IM_OK, NULL, body, len);
        }
        im_zmq_close(parts, n, max);
    }
}

/* A local shard's reply (on the bus thread, inside request or run). */
static void s_local_reply(void *arg, const uint8_t id8[8], const uint8_t *body, size_t len)
{
    bus_sink *k = arg;
    uint64_t id;
    memcpy(&id, id8, 8);
    bus_req *r = s_pending_take(k->b, id);
    if (r) /* else: it timed out */
        s_finish(r, IM_OK, NULL, body, len);
}

static void s_local_notice(void *arg, const uint8_t *body, size_t len)
{
    bus_sink *k = arg;
    if (k->b->hooks.notice)
        k->b->hooks.notice(k->b->hooks.arg, k->shard, body, len);
}

static void s_wake(gw_bus *b)
{
    uint64_t one = 1;
    if (write(b->efd, &one, sizeof one) < 0)
        im_log(IM_LOG_ERROR, "gateway", NULL, "eventfd write: %s", strerror(errno));
}

/* A local shard's sweeper queued a write (any thread). */
static void s_local_wake(void *arg)
{
    s_wake(((bus_sink *)arg)->b);
}

/* Runs the local shards' queued writes: one group commit each. */
static void s_local_run(gw_bus *b)
{
    for (int i = 0; b->nlocal && i < b->n; i++)
        if (b->local[i].obj)
            b->local[i].run(b->local[i].obj);
}

/*
 * Fails every pending request of shard: its connection dropped, and libzmq
 * drops with it whatever that connection had not yet delivered, so none of
 * them can be answered. Walks the deadline list: it is bounded by the
 * in-flight count and a disconnect is rare, whereas a per-shard list would
 * cost every request two more links to maintain on its hot path. Callbacks
 * may call gw_bus_send, which only queues, so `newer` stays valid.
 */
static void s_fail_shard(gw_bus *b, int shard)
{
    bus_req *r = b->oldest;
    while (r) {
        bus_req *newer = r->newer;
        if (r->shard == shard)
            s_fail(b, s_pending_take(b, r->id), "connection lost");
        r = newer;
    }
}

/* Drains shard's monitor. On a disconnect, first takes the replies that
 * arrived before it (they are still readable), then fails the rest. */
static void s_recv_events(gw_bus *b, int shard)
{
    zmq_msg_t parts[2];
    int n;
    while ((n = im_zmq_recv(b->monitors[shard], parts, 2)) > 0) {
        uint16_t event = 0;
        if (n == 2 && zmq_msg_size(&parts[0]) == 6) /* u16 event, u32 value */
            memcpy(&event, zmq_msg_data(&parts[0]), 2);
        im_zmq_close(parts, n, 2);
        if (event & ZMQ_EVENT_HANDSHAKE_SUCCEEDED) {
            atomic_store(&b->up[shard], true);
        }
        if (event & ZMQ_EVENT_DISCONNECTED) {
            atomic_store(&b->up[shard], false);
            s_recv_replies(b, shard);
            s_fail_shard(b, shard);
            if (b->hooks.disconnected)
                b->hooks.disconnected(b->hooks.arg, shard);
        }
    }
}

static void s_expire(gw_bus *b, int64_t now, bool all)
{
    char what[64];
    snprintf(what, sizeof what, "did not answer within %d ms", b->timeout_ms);
    while (b->oldest && (all || b->oldest->deadline <= now)) {
        bus_req *r = s_pending_take(b, b->oldest->id);
        s_fail(b, r, all ? "is unreachable: the gateway is stopping" : what);
    }
}

static void *s_main(void *arg)
{
    gw_bus *b = arg;
    im_thread_name("gw-bus");
    im_zpoll *zp = &b->zp; /* eventfd, dealers, monitors */
    const bool *in = zp->in;
    int64_t next_tick = b->hooks.tick ? im_mono_ms() + b->hooks.tick_ms : INT64_MAX;
    for (;;) {
        int64_t until = next_tick;
        if (b->oldest && b->oldest->deadline < until)
            until = b->oldest->deadline;
        long wait = -1;
        if (until != INT64_MAX) {
            int64_t d = until - im_mono_ms();
            wait = d > 0 ? (long)d : 0;
        }
        if (b->nlocal && (wait < 0 || wait > BUS_LOCAL_RUN_MS))
            wait = BUS_LOCAL_RUN_MS;
        if (im_zpoll_wait(zp, wait) < 0) {
            im_log(IM_LOG_ERROR, "gateway", NULL, "bus poll: %s", zmq_strerror(errno));
            break;
        }
        /* Disconnects before sends, which narrows the race told in gw_bus.h:
         * a request queued meanwhile goes out after the old connection's
         * pending requests were failed, not before. Both read until
         * EAGAIN, as im_zpoll asks. */
        for (int i = 0; i < b->n; i++)
            if (in[b->n + i + 1])
                s_recv_events(b, i);
        for (int i = 0; i < b->n; i++)
            if (in[i + 1])
                s_recv_replies(b, i);
        if (in[0])
            s_send_queued(b);
        /* Everything taken from the queue in this turn is one commit; what
         * comes during its fsync makes the next. */
        s_local_run(b);
        s_expire(b, im_mono_ms(), false);
        if (im_mono_ms() >= next_tick) {
            b->hooks.tick(b->hooks.arg);
            next_tick = im_mono_ms() + b->hooks.tick_ms;
        }
        pthread_mutex_lock(&b->mu);
        bool stop = b->closing && !b->queue;
        pthread_mutex_unlock(&b->mu);
        if (stop)
            break;
    }
    s_expire(b, 0, true);
    return NULL;
}

int gw_bus_send(gw_bus *b, int shard, uint8_t *body, size_t len, gw_bus_fn fn, void *arg)
{
    bus_req *r = calloc(1, sizeof *r);
    if (!r) {
        free(body);
        return -1;
    }
    r->shard = shard;
    r->body = body;
    r->len = len;
    r->fn = fn;
    r->arg = arg;
    pthread_mutex_lock(&b->mu);
    if (b->closing) {
        pthread_mutex_unlock(&b->mu);
        free(body);
        free(r);
        return -1;
    }
    bool was_empty = !b->queue;
    if (b->qtail)
        b->qtail->next = r;
    else
        b->queue = r;
    b->qtail = r;
    pthread_mutex_unlock(&b->mu);
    /* One wake-up per batch: a queue that was not empty has its wake-up
     * pending already, and the bus takes the whole queue at once. */
    if (was_empty)
        s_wake(b);
    return 0;
}

/* Frees what gw_bus_new got so far (NULL entries were never made). Stopping
 * a monitor that was never started is a no-op in libzmq. */
static void s_free(gw_bus *b)
{
    static const im_local_sink none;
    for (int i = 0; b->local && i < b->n; i++)
        if (b->local[i].obj) /* detach: no wake-up into a freed bus */
            b->local[i].attach(b->local[i].obj, &none);
    for (int i = 0; b->dealers && i < b->n; i++) {
        if (b->dealers[i])
            zmq_socket_monitor(b->dealers[i], NULL, 0);
        if (b->monitors && b->monitors[i])
            zmq_close(b->monitors[i]);
        if (b->dealers[i])
            zmq_close(b->dealers[i]);
        if (b->endpoints)
            free(b->endpoints[i]);
    }
    free(b->dealers);
    free(b->monitors);
    free(b->up);
    free(b->endpoints);
    free(b->local);
    free(b->sinks);
    free(b->batch);
    free(b->btail);
    im_zpoll_free(&b->zp);
    if (b->efd >= 0)
        close(b->efd);
    pthread_mutex_destroy(&b->mu);
    free(b);
}

/* Starts the monitor of dealer i (before it connects, so that no event is
 * missed) and connects b->monitors[i] to it. 0, or -1 with errno. */
static int s_monitor(gw_bus *b, void *zctx, int i)
{
    char ep[64];
    snprintf(ep, sizeof ep, "inproc://imbox-gwbus-%u-%d", atomic_fetch_add(&s_bus_seq, 1), i);
    int zero = 0;
    if (zmq_socket_monitor(b->dealers[i], ep,
                           ZMQ_EVENT_DISCONNECTED | ZMQ_EVENT_HANDSHAKE_SUCCEEDED))
        return -1;
    void *m = b->monitors[i] = zmq_socket(zctx, ZMQ_PAIR);
    if (!m || zmq_setsockopt(m, ZMQ_LINGER, &zero, sizeof zero) || zmq_connect(m, ep))
        return -1;
    return 0;
}

gw_bus *gw_bus_new(void *zctx, char *const *endpoints, const im_local_shard *local, int n,
                   const im_secret *secret, int timeout_ms, const gw_bus_hooks *hooks,
                   char *err, size_t errlen)
{
    assert(secret != NULL);
    gw_bus *b = calloc(1, sizeof *b);
    if (!b) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&b->mu, NULL);
    b->n = n;
    b->timeout_ms = timeout_ms;
    if (hooks) {
        b->hooks = *hooks;
        if (hooks->id_len > sizeof b->id || (hooks->tick && hooks->tick_ms <= 0)) {
            snprintf(err, errlen, "bus hooks: routing id of 1..255 bytes, tick_ms > 0");
            pthread_mutex_destroy(&b->mu);
            free(b);
            return NULL;
        }
        if (hooks->id) {
            memcpy(b->id, hooks->id, hooks->id_len);
            b->hooks.id = b->id;
            b->id_len = hooks->id_len;
        }
    }
    if (!b->id_len) { /* a local shard keys presence by it */
        b->id[0] = 1;
        b->id_len = 1;
    }
    b->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    b->dealers = calloc((size_t)n, sizeof *b->dealers);
    b->monitors = calloc((size_t)n, sizeof *b->monitors);
    b->up = calloc((size_t)n, sizeof *b->up);
    b->endpoints = calloc((size_t)n, sizeof *b->endpoints);
    b->local = calloc((size_t)n, sizeof *b->local);
    b->sinks = calloc((size_t)n, sizeof *b->sinks);
    b->batch = calloc((size_t)n, sizeof *b->batch);
    b->btail = calloc((size_t)n, sizeof *b->btail);
    if (b->efd < 0 || !b->dealers || !b->monitors || !b->up || !b->endpoints || !b->local ||
        !b->sinks || !b->batch || !b->btail) {
        snprintf(err, errlen, "out of memory or eventfd");
        s_free(b);
        return NULL;
    }
    int one = 1, zero = 0, hwm = BUS_HWM, ivl = 100, ivl_max = 1000;
    im_zmq_curve keys;
    bool keyed = false;
    for (int i = 0; i < n; i++) {
        b->endpoints[i] = strdup(local && local[i].obj ? "local" : endpoints[i]);
        if (local && local[i].obj) {
            b->local[i] = local[i];
            b->sinks[i] = (bus_sink){b, i};
            im_local_sink sink = {s_local_reply, s_local_notice, s_local_wake, &b->sinks[i]};
            local[i].attach(local[i].obj, &sink);
            atomic_store(&b->up[i], true);
            b->nlocal++;
            atomic_store(&b->up[i], 1);
            if (!b->endpoints[i]) {
                snprintf(err, errlen, "out of memory");
                s_free(b);
                return NULL;
            }
            continue;
        }
        if (!keyed && im_zmq_curve_derive(secret, &keys, err, errlen)) {
            s_free(b);
            return NULL;
        }
        keyed = true;
        void *d = b->dealers[i] = zmq_socket(zctx, ZMQ_DEALER);
        if (!b->endpoints[i] || !d || im_zmq_curve_client(d, &keys) ||
            zmq_setsockopt(d, ZMQ_IMMEDIATE, &one, sizeof one) ||
            (b->hooks.id &&
             zmq_setsockopt(d, ZMQ_ROUTING_ID, b->hooks.id, b->hooks.id_len)) ||
            zmq_setsockopt(d, ZMQ_LINGER, &zero, sizeof zero) ||
            zmq_setsockopt(d, ZMQ_SNDHWM, &hwm, sizeof hwm) ||
            zmq_setsockopt(d, ZMQ_RCVHWM, &hwm, sizeof hwm) ||
            zmq_setsockopt(d, ZMQ_RECONNECT_IVL, &ivl, sizeof ivl) ||
            zmq_setsockopt(d, ZMQ_RECONNECT_IVL_MAX, &ivl_max, sizeof ivl_max) ||
            s_monitor(b, zctx, i) || zmq_connect(d, endpoints[i])) {
            snprintf(err, errlen, "shard %d: connect %s: %s", i, endpoints[i],
                     zmq_strerror(errno));
            im_zmq_curve_wipe(&keys);
            s_free(b);
            return NULL;
        }
    }
    if (keyed) /* the DEALERs keep their copies */
        im_zmq_curve_wipe(&keys);
    if (im_zpoll_init(&b->zp, 2 * n + 1)) {
        snprintf(err, errlen, "out of memory");
        s_free(b);
        return NULL;
    }
    im_zpoll_fd(&b->zp, 0, b->efd);
    for (int i = 0; i < n; i++)
        if (b->dealers[i] && (im_zpoll_socket(&b->zp, i + 1, b->dealers[i]) ||
                              im_zpoll_socket(&b->zp, n + i + 1, b->monitors[i]))) {
            snprintf(err, errlen, "shard %d: ZMQ_FD: %s", i, zmq_strerror(errno));
            s_free(b);
            return NULL;
        }
    int rc = pthread_create(&b->thread, NULL, s_main, b);
    if (rc) {
        snprintf(err, errlen, "bus thread: %s", strerror(rc));
        s_free(b);
        return NULL;
    }
    return b;
}

void gw_bus_destroy(gw_bus **bp)
{
    if (!bp || !*bp)
        return;
    gw_bus *b = *bp;
    pthread_mutex_lock(&b->mu);
    b->closing = true;
    pthread_mutex_unlock(&b->mu);
    s_wake(b);
    pthread_join(b->thread, NULL);
    s_free(b);
    *bp = NULL;
}

bool gw_bus_up(gw_bus *b, int shard)
{
    return atomic_load(&b->up[shard]);
}
