/*
 * gw_health.c - grpc.health.v1.Health, Check and Watch (see gw_call.h),
 * two services with two meanings:
 *   "imbox.v1.Inbox"  SERVING only when the gateway is not stopping and
 *                     reaches every shard: the whole API works;
 *   ""                SERVING while this gateway is not stopping, whatever
 *                     the shards: the gateway itself can take calls. This
 *                     is what a load balancer's readiness asks (Kubernetes'
 *                     probes ask ""): with one shard down, the other
 *                     shards' users must still reach every gateway, so a
 *                     shard's outage must not take all of them out.
 * NOT_SERVING otherwise.
 *
 * Reaching shard i takes both:
 *   - gw_bus_up: its DEALER completed a CURVE handshake and has not
 *     disconnected since (a local shard of `imbox serve` always is);
 *   - shard_ok[i]: the shard's last answer to a HealthOp (shard.proto) was
 *     OK, i.e. its engine is open and takes writes (st_writable). The bus
 *     thread asks every shard at start and on every tick (gw_bus_hooks,
 *     presence_lease_ms / 3: 1 s by default), one probe per shard in flight
 *     at most; a disconnect clears the flag at once, so after a reconnect
 *     the shard counts again only once it has answered a probe.
 *
 * Watch streams (server streaming): the current status at once, then each
 * change, until the client cancels or the server stops (then NOT_SERVING
 * and the stream ends with UNAVAILABLE). An unknown service gets
 * SERVICE_UNKNOWN in the stream, as the API says. A stream holds at most
 * one message in flight (2 bytes) and remembers only what it last sent:
 * a slow reader gets the latest status when its previous message is taken,
 * never a backlog. The registry of streams (gw_watches) has a mutex: the
 * bus thread (probe answers, disconnects), the CQ thread (new streams,
 * sent messages, closes) and gw_stop push changes.
 *
 * References: as a Subscribe stream's (gw_sub.c): the receive-close batch
 * and the final status each hold one from the start, each message batch
 * one more.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/byte_buffer_reader.h>

#include "gw_call.h"
#include "im_health.h"

static const char *const s_names[] = {"", "imbox.v1.Inbox"};

typedef struct gw_watch {
    gw_call *c;
    struct gw_watch *next, *prev;
    bool unknown;          /* asked for a service not served: SERVICE_UNKNOWN */
    int service;           /* else: which one (S_GATEWAY, S_INBOX) */
    int sent;              /* the status last sent (0: none yet) */
    bool sending;          /* a message batch in flight */
    bool listed;           /* in the registry */
    bool status_sent;      /* the final status is sent, or never will be */
    grpc_byte_buffer *out; /* the message in flight */
} gw_watch;

typedef struct gw_watches {
    pthread_mutex_t mu;
    gw_watch *head;
} gw_watches;

typedef struct gw_probe { /* a shard's probe: its callback's argument */
    gw_server *g;
    int shard;
    atomic_bool pending;   /* a probe in flight */
} gw_probe;

enum { S_GATEWAY, S_INBOX }; /* index in s_names */

/* The status of served name k now: any thread. */
static int s_status(gw_server *g, int k)
{
    if (atomic_load(&g->stopping) || !g->shard_ok)
        return IM_HEALTH_NOT_SERVING;
    if (k == S_GATEWAY)
        return IM_HEALTH_SERVING;
    for (int i = 0; i < g->c.nshards; i++)
        if (!atomic_load(&g->shard_ok[i]) || (g->bus && !gw_bus_up(g->bus, i)))
            return IM_HEALTH_NOT_SERVING;
    return IM_HEALTH_SERVING;
}

/* Reads the request of c into its service's index (or IM_HEALTH_*). */
static int s_request(gw_call *c)
{
    if (!c->payload)
        return 0; /* no message: "" */
    grpc_byte_buffer_reader r;
    if (!grpc_byte_buffer_reader_init(&r, c->payload))
        return IM_HEALTH_BAD;
    grpc_slice sl = grpc_byte_buffer_reader_readall(&r);
    grpc_byte_buffer_reader_destroy(&r);
    int k = im_health_service(GRPC_SLICE_START_PTR(sl), GRPC_SLICE_LENGTH(sl), s_names,
                              (int)(sizeof s_names / sizeof s_names[0]));
    grpc_slice_unref(sl);
    return k;
}

void gw__health(gw_call *c)
{
    int k = s_request(c);
    if (k == IM_HEALTH_BAD) {
        gw__respond(c, IM_INVALID_ARGUMENT, "HealthCheckRequest does not decode", NULL, 0);
        return;
    }
    if (k == IM_HEALTH_UNKNOWN) {
        gw__respond(c, IM_NOT_FOUND, "unknown service", NULL, 0);
        return;
    }
    uint8_t *body = malloc(2);
    if (!body) {
        gw__respond(c, IM_RESOURCE_EXHAUSTED, "out of memory", NULL, 0);
        return;
    }
    im_health_response(s_status(c->g, k), body);
    gw__respond(c, IM_OK, NULL, body, 2);
}

/* ------------------------------------------------------------- Watch */

/* Sends w its status if it changed and nothing is in flight; under mu. */
static void s_pump(gw_watch *w)
{
    int status = w->unknown ? IM_HEALTH_SERVICE_UNKNOWN : s_status(w->c->g, w->service);
    if (w->sending || w->status_sent || w->sent == status)
        return;
    gw_call *c = w->c;
    uint8_t b[2];
    im_health_response(status, b);
    grpc_slice sl = grpc_slice_from_copied_buffer((const char *)b, 2);
    w->out = grpc_raw_byte_buffer_create(&sl, 1);
    grpc_slice_unref(sl);
    grpc_op ops[2];
    memset(ops, 0, sizeof ops);
    size_t n = 0;
    if (!w->sent) { /* the first message carries the initial metadata */
        ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
        ops[n++].data.send_initial_metadata.count = 0;
    }
    ops[n].op = GRPC_OP_SEND_MESSAGE;
    ops[n++].data.send_message.send_message = w->out;
    w->sent = status;
    w->sending = true;
    atomic_fetch_add(&c->refs, 1);
    grpc_call_error e = grpc_call_start_batch(c->call, ops, n, &c->t_msg, NULL);
    if (e != GRPC_CALL_OK) {
        fprintf(stderr, "imbox gateway: start_batch(watch) = %d: a bug\n", (int)e);
        abort();
    }
}

static void s_unlist(gw_watches *r, gw_watch *w)
{
    if (!w->listed)
        return;
    w->listed = false;
    if (w->prev)
        w->prev->next = w->next;
    else
        r->head = w->next;
    if (w->next)
        w->next->prev = w->prev;
}

/* Ends w with UNAVAILABLE (the server is stopping); under mu. */
static void s_end(gw_watches *r, gw_watch *w)
{
    s_unlist(r, w);
    if (w->status_sent)
        return;
    w->status_sent = true;
    gw_call *c = w->c;
    grpc_op ops[2];
    memset(ops, 0, sizeof ops);
    size_t n = 0;
    if (!w->sent) { /* no message yet, so no initial metadata either */
        ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
        ops[n++].data.send_initial_metadata.count = 0;
    }
    grpc_slice_unref(c->status_details);
    c->status_details = grpc_slice_from_static_string("the server is stopping");
    ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[n].data.send_status_from_server.status = GRPC_STATUS_UNAVAILABLE;
    ops[n++].data.send_status_from_server.status_details = &c->status_details;
    /* The final status's reference was taken when the call began. */
    grpc_call_error e = grpc_call_start_batch(c->call, ops, n, &c->t_send, NULL);
    if (e != GRPC_CALL_OK) {
        fprintf(stderr, "imbox gateway: start_batch(watch status) = %d: a bug\n", (int)e);
        abort();
    }
}

void gw__watch(gw_call *c)
{
    int k = s_request(c);
    if (k == IM_HEALTH_BAD) {
        gw__respond(c, IM_INVALID_ARGUMENT, "HealthCheckRequest does not decode", NULL, 0);
        return;
    }
    gw_watch *w = calloc(1, sizeof *w);
    if (!w) {
        gw__respond(c, IM_RESOURCE_EXHAUSTED, "out of memory", NULL, 0);
        return;
    }
    w->c = c;
    w->unknown = k == IM_HEALTH_UNKNOWN;
    w->service = w->unknown ? 0 : k;
    c->watch = w;
    gw_watches *r = c->g->watches;
    pthread_mutex_lock(&r->mu);
    if (atomic_load(&c->g->stopping)) {
        s_end(r, w);
    } else {
        w->next = r->head;
        if (r->head)
            r->head->prev = w;
        r->head = w;
        w->listed = true;
        s_pump(w);
    }
    pthread_mutex_unlock(&r->mu);
}

void gw__watch_sent(gw_call *c, bool ok)
{
    gw_watch *w = c->watch;
    gw_watches *r = c->g->watches;
    pthread_mutex_lock(&r->mu);
    grpc_byte_buffer_destroy(w->out);
    w->out = NULL;
    w->sending = false;
    if (ok && w->listed)
        s_pump(w);
    pthread_mutex_unlock(&r->mu);
}

void gw__watch_closed(gw_call *c)
{
    gw_watch *w = c->watch;
    gw_watches *r = c->g->watches;
    bool drop = false;
    pthread_mutex_lock(&r->mu);
    s_unlist(r, w);
    if (!w->status_sent) { /* cancelled: no status will ever be sent */
        w->status_sent = true;
        drop = true;
    }
    pthread_mutex_unlock(&r->mu);
    if (drop)
        gw__call_unref(c);
}

void gw__watch_free(gw_watch *w)
{
    if (!w)
        return;
    if (w->out)
        grpc_byte_buffer_destroy(w->out);
    free(w);
}

/* Pushes the status to every stream (any thread). */
static void s_changed(gw_server *g)
{
    gw_watches *r = g->watches;
    pthread_mutex_lock(&r->mu);
    for (gw_watch *w = r->head; w; w = w->next)
        s_pump(w);
    pthread_mutex_unlock(&r->mu);
}

void gw__health_shutdown(gw_server *g)
{
    s_changed(g); /* stopping: NOT_SERVING to every idle stream */
    gw_watches *r = g->watches;
    pthread_mutex_lock(&r->mu);
    while (r->head)
        s_end(r, r->head);
    pthread_mutex_unlock(&r->mu);
}

/* ------------------------------------------------ probes (bus thread) */

static void s_set_ok(gw_server *g, int shard, bool ok)
{
    if (atomic_exchange(&g->shard_ok[shard], ok) != ok)
        s_changed(g);
}

static void s_on_probe(void *arg, int status, const char *why, const uint8_t *reply, size_t len)
{
    gw_probe *p = arg;
    atomic_store(&p->pending, false);
    bool ok = gw__shard_decode(p->g, status, &why, reply, len, NULL) == 0;
    s_set_ok(p->g, p->shard, ok);
}

void gw__health_tick(gw_server *g)
{
    gw_probe *probes = g->probes;
    for (int i = 0; i < g->c.nshards; i++) {
        if (atomic_exchange(&probes[i].pending, true))
            continue; /* one in flight per shard: it answers or times out */
        uint8_t *body = malloc(2);
        if (!body) {
            atomic_store(&probes[i].pending, false);
            return;
        }
        body[0] = 0x3a; /* ShardRequest.health (7), length-delimited */
        body[1] = 0x00; /* HealthOp {} */
        gw__send_body(g, i, body, 2, s_on_probe, &probes[i]);
    }
}

void gw__health_disconnected(gw_server *g, int shard)
{
    s_set_ok(g, shard, false);
}

int gw__health_new(gw_server *g)
{
    int n = g->c.nshards;
    g->watches = calloc(1, sizeof *g->watches);
    g->shard_ok = calloc((size_t)n, sizeof *g->shard_ok);
    g->probes = calloc((size_t)n, sizeof *g->probes);
    if (!g->watches || !g->shard_ok || !g->probes) {
        gw__health_free(g);
        return -1;
    }
    pthread_mutex_init(&g->watches->mu, NULL);
    for (int i = 0; i < n; i++)
        g->probes[i].g = g, g->probes[i].shard = i;
    return 0;
}

void gw__health_free(gw_server *g)
{
    if (g->watches && g->shard_ok && g->probes)
        pthread_mutex_destroy(&g->watches->mu);
    free(g->watches);
    free(g->shard_ok);
    free(g->probes);
    g->watches = NULL;
    g->shard_ok = NULL;
    g->probes = NULL;
}
