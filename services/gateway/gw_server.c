/* gw_server.c - the call loop (accept, dispatch, free), replies, and the
 * server's lifecycle; see gw_server.h, and gw_call.h for the other files. */
#include <assert.h>
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include <grpc/grpc_security.h>
#include <grpc/support/time.h>

#include "gw_call.h"
#include "gw_rate.h"
#include "im_log.h"
#include "im_store_reply.h"
#include "im_trim.h"

static const char *const s_paths[M_GENERIC] = {
    "/imbox.v1.Inbox/Send", "/imbox.v1.Inbox/Pull", "/imbox.v1.Inbox/Ack",
    "/imbox.v1.Inbox/Counts", "/imbox.v1.Inbox/Subscribe", "/imbox.v1.Inbox/Presence",
    "/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
};

/* ------------------------------------------------------- reply budget */

/* When this much has been given back since the last trim, the bus
 * thread's next tick (every presence_lease_ms / 3) asks for a trim of the
 * heap: glibc keeps freed memory in its arenas (measured: 938 MB stayed
 * resident after a connection's 300 stalled pages were freed). On a tick,
 * not on every free, as a trim walks every arena. */
#define GW_TRIM_BYTES (1u << 20)
/* The trimmer also trims by itself, measuring every IM_TRIM_PERIOD_MS,
 * when memory that nothing holds grew by IM_TRIM_SLACK since the last trim,
 * whatever freed it: gRPC's calls after a burst of streams (a gateway kept
 * 619 MB resident after 60,000 HTTP/2 rapid resets, 34 MB once trimmed).
 * The trims run on a thread of their own (im_trim.h). */

bool gw__budget_take(gw_server *g, size_t n)
{
    long long used = atomic_load(&g->reply_bytes);
    do {
        if (used + (long long)n > g->c.reply_budget)
            return false;
    } while (!atomic_compare_exchange_weak(&g->reply_bytes, &used, used + (long long)n));
    return true;
}

void gw__budget_give(gw_server *g, size_t n)
{
    atomic_fetch_sub(&g->reply_bytes, (long long)n);
    atomic_fetch_add(&g->untrimmed, (long long)n);
}

/* The bus's tick: the trim (above), then the streams' lease renewal. */
static void s_tick(void *arg)
{
    gw_server *g = arg;
    if (atomic_load(&g->untrimmed) >= GW_TRIM_BYTES) {
        atomic_store(&g->untrimmed, 0);
        im_trim_check(g->trim, true); /* the trimmer also measures by itself */
    }
    gw__subs_tick(arg);
    gw__health_tick(g);
}

const struct im_trim *gw_trimmer(const gw_server *g)
{
    return g->trim;
}

/* The bus's disconnect hook: the streams of the shard end, and the
 * gateway is not ready until the shard answers a probe again. */
static void s_disconnected(void *arg, int shard)
{
    gw__subs_disconnected(arg, shard);
    gw__health_disconnected(arg, shard);
}

bool gw__budget_room(gw_server *g)
{
    return atomic_load(&g->reply_bytes) + GW_READ_RESERVE <= g->c.reply_budget;
}

/* ------------------------------------------------------------ replies */

void gw__call_free(gw_call *c)
{
    if (c->t0_us && c->m == M_SUBSCRIBE)
        atomic_fetch_sub_explicit(&c->g->stats.streams, 1, memory_order_relaxed);
    if (c->accepted)
        atomic_fetch_sub(&c->g->active, 1);
    if (c->call)
        grpc_call_unref(c->call);
    grpc_metadata_array_destroy(&c->md);
    grpc_call_details_destroy(&c->details);
    if (c->payload)
        grpc_byte_buffer_destroy(c->payload);
    if (c->resp)
        grpc_byte_buffer_destroy(c->resp);
    if (c->charged)
        gw__budget_give(c->g, c->charged);
    grpc_slice_unref(c->status_details);
    if (c->ntrailer)
        grpc_slice_unref(c->trailer.value);
    if (c->parts)
        for (int i = 0; c->parts[i].c; i++)
            free(c->parts[i].idx);
    free(c->parts);
    free(c->receivers);
    free(c->receipts);
    free(c->online);
    gw__sub_free(c->sub);
    gw__watch_free(c->watch);
    free(c);
}

void gw__call_unref(gw_call *c)
{
    if (atomic_fetch_sub(&c->refs, 1) == 1)
        gw__call_free(c);
}

/*
 * Answers the call: initial metadata, the message (body, malloc'ed, taken;
 * NULL for none) and the status. Called exactly once per call, from the CQ
 * thread or the bus thread; after it the caller must not touch c.
 */
void gw__respond(gw_call *c, int status, const char *msg, uint8_t *body, size_t len)
{
    grpc_op ops[4];
    memset(ops, 0, sizeof ops);
    int n = 0;
    /* What a client may leave unread is charged (gw_call.h). */
    if (body && (c->m == M_PULL || c->m == M_COUNTS)) {
        if (gw__budget_take(c->g, len)) {
            c->charged = len;
        } else {
            free(body);
            body = NULL;
            status = IM_RESOURCE_EXHAUSTED;
            msg = "the server holds too many responses that clients have not read: "
                  "retry later";
        }
    }
    gw__stat_call(c, status);
    ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[n++].data.send_initial_metadata.count = 0;
    if (body) {
        grpc_slice s = grpc_slice_new(body, len, free);
        c->resp = grpc_raw_byte_buffer_create(&s, 1);
        grpc_slice_unref(s);
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n++].data.send_message.send_message = c->resp;
    }
    c->status_details = grpc_slice_from_copied_string(msg ? msg : "");
    ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[n].data.send_status_from_server.trailing_metadata_count = (size_t)c->ntrailer;
    ops[n].data.send_status_from_server.trailing_metadata = c->ntrailer ? &c->trailer : NULL;
    ops[n].data.send_status_from_server.status = (grpc_status_code)status;
    ops[n++].data.send_status_from_server.status_details = &c->status_details;
    if (c->m != M_SUBSCRIBE && c->m != M_WATCH) { /* a stream's is its own batch */
        ops[n].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
        ops[n++].data.recv_close_on_server.cancelled = &c->cancelled;
    }
    grpc_call_error e = grpc_call_start_batch(c->call, ops, (size_t)n, &c->t_send, NULL);
    if (e != GRPC_CALL_OK) {
        im_log(IM_LOG_ERROR, "gateway", NULL, "start_batch(send) = %d: a bug", (int)e);
        abort();
    }
}

void gw__respond_errf(gw_call *c, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

void gw__respond_errf(gw_call *c, int status, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    gw__respond(c, status, msg, NULL, 0);
}

/* Encodes msg after `entries` (pre-encoded repeated-field entries,
 * malloc'ed, taken; NULL and 0 for none) and answers OK. */
void gw__respond_pb(gw_call *c, const pb_msgdesc_t *fields, const void *msg,
                    uint8_t *entries, size_t entries_len)
{
    if (im_pb_append_encoded(&entries, &entries_len, fields, msg)) {
        free(entries);
        gw__respond(c, IM_INTERNAL, "response does not encode", NULL, 0);
        return;
    }
    gw__respond(c, IM_OK, NULL, entries, entries_len);
}

/* Decodes a shard reply into the bus thread's scratch, with its entries
 * into *entries (malloc'ed, caller frees): see gw_call.h. Returns 0, or
 * the failure's status with *why; answers nothing. */
int gw__shard_decode(gw_server *g, int status, const char **why, const uint8_t *reply,
                     size_t len, im_bytes_in *entries)
{
    if (status)
        return status;
    imbox_internal_v1_ShardReply *r = g->shard_reply;
    /* pb_decode sets every field to its default (an array's count to 0,
     * each new entry whole) but leaves callbacks: no memset of 41 KB */
    r->entries = (pb_callback_t){0};
    if (entries) {
        r->entries.funcs.decode = im_pb_read_bytes;
        r->entries.arg = entries;
    } else if (im_store_reply_decode(reply, len, r)) {
        return 0; /* a Store's reply (results only): as pb_decode, faster */
    }
    pb_istream_t is = pb_istream_from_buffer(reply, len);
    if (!pb_decode(&is, imbox_internal_v1_ShardReply_fields, r)) {
        snprintf(g->shard_why, sizeof g->shard_why, "shard reply does not decode: %s",
                 PB_GET_ERROR(&is));
        *why = g->shard_why;
        status = IM_INTERNAL;
    } else if (r->code < 0 || r->code > IM_UNAUTHENTICATED) {
        *why = "shard reply has a code that is not a gRPC status";
        status = IM_INTERNAL;
    } else if (r->code) {
        *why = r->error;
        status = r->code;
    } else if (entries && entries->over) {
        *why = "shard reply too large";
        status = IM_INTERNAL;
    }
    if (status && entries) {
        free(entries->p);
        entries->p = NULL;
    }
    return status;
}

int gw__shard_reply(gw_call *c, int status, const char *why, const uint8_t *reply,
                    size_t len, im_bytes_in *entries)
{
    *entries = (im_bytes_in){.max = GW_REPLY_MAX};
    status = gw__shard_decode(c->g, status, &why, reply, len, entries);
    if (status) {
        gw__respond(c, status, why, NULL, 0);
        return -1;
    }
    return 0;
}

/* ---------------------------------------------------------- call loop */

static void s_arm(gw_server *g, gw_method m)
{
    gw_call *c = calloc(1, sizeof *c);
    if (!c) {
        im_log(IM_LOG_ERROR, "gateway", NULL, "out of memory arming a call");
        return;
    }
    c->g = g;
    c->m = m;
    c->t_new = (gw_tag){c, TAG_NEW};
    c->t_close = (gw_tag){c, TAG_CLOSE};
    c->t_send = (gw_tag){c, TAG_SEND};
    c->t_md = (gw_tag){c, TAG_MD};
    c->t_msg = (gw_tag){c, TAG_MSG};
    c->status_details = grpc_empty_slice();
    grpc_metadata_array_init(&c->md);
    grpc_call_details_init(&c->details);
    grpc_call_error e;
    if (m == M_GENERIC)
        e = grpc_server_request_call(g->server, &c->call, &c->details, &c->md, g->cq, g->cq,
                                     &c->t_new);
    else
        e = grpc_server_request_registered_call(g->server, g->methods[m], &c->call,
                                                &c->deadline, &c->md, &c->payload, g->cq,
                                                g->cq, &c->t_new);
    if (e != GRPC_CALL_OK) {
        im_log(IM_LOG_ERROR, "gateway", NULL, "request_call = %d", (int)e);
        gw__call_free(c);
    }
}

static void s_on_new(gw_call *c)
{
    /* A unary call's receive-close rides in its answer's batch (one
     * completion per call, gw__respond); a stream learns of its end (cancel,
     * deadline) from a batch of its own, started now. */
    bool stream = c->m == M_SUBSCRIBE || c->m == M_WATCH || c->m == M_REFLECT;
    atomic_store(&c->refs, stream ? 2 : 1);
    if (stream) {
        grpc_op op;
        memset(&op, 0, sizeof op);
        op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
        op.data.recv_close_on_server.cancelled = &c->cancelled;
        if (grpc_call_start_batch(c->call, &op, 1, &c->t_close, NULL) != GRPC_CALL_OK) {
            im_log(IM_LOG_ERROR, "gateway", NULL, "start_batch(close) failed: a bug");
            abort();
        }
    }
    if (c->m == M_HEALTH) {
        gw__health(c);
        return;
    }
    if (c->m == M_WATCH) {
        gw__watch(c);
        return;
    }
    if (c->m == M_REFLECT) { /* no token: it describes the public API */
        gw__reflect(c);
        return;
    }
    if (c->m == M_GENERIC) {
        gw__respond_errf(c, IM_UNIMPLEMENTED, "%.*s is not implemented",
                         (int)GRPC_SLICE_LENGTH(c->details.method),
                         (const char *)GRPC_SLICE_START_PTR(c->details.method));
        return;
    }
    if (gw__auth(c))
        return;
    switch (c->m) {
    case M_SEND: gw__send(c); break;
    case M_PULL: gw__pull(c); break;
    case M_ACK: gw__ack(c); break;
    case M_COUNTS: gw__counts(c); break;
    case M_SUBSCRIBE: gw__subscribe(c); break;
    case M_PRESENCE: gw__presence(c); break;
    default: assert(!"unreachable");
    }
}

static void *s_main(void *arg)
{
    gw_server *g = arg;
    im_thread_name("gw-cq");
    for (;;) {
        grpc_event ev = grpc_completion_queue_next(g->cq, gpr_inf_future(GPR_CLOCK_REALTIME),
                                                   NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN)
            break;
        if (ev.type != GRPC_OP_COMPLETE)
            continue;
        if (ev.tag == &g->shutdown_tag) {
            atomic_store(&g->shutdown_done, true);
            grpc_completion_queue_shutdown(g->cq);
            continue;
        }
        gw_tag *t = ev.tag;
        gw_call *c = t->c;
        switch (t->kind) {
        case TAG_NEW:
            if (!ev.success) { /* the server is shutting down */
                gw__call_free(c);
                break;
            }
            /* Streams last: a stop does not wait for them to end (it
             * ends them), so they are not counted as active. */
            if (c->m != M_SUBSCRIBE && c->m != M_WATCH && c->m != M_REFLECT) {
                c->accepted = true;
                atomic_fetch_add(&g->active, 1);
            }
            if (!atomic_load(&g->stopping))
                s_arm(g, c->m);
            gw__stat_start(c);
            s_on_new(c);
            break;
        case TAG_CLOSE:
            if (c->sub)
                gw__sub_closed(c);
            if (c->watch)
                gw__watch_closed(c);
            gw__call_unref(c);
            break;
        case TAG_SEND:
            gw__call_unref(c);
            break;
        case TAG_MD:
        case TAG_MSG:
            if (c->m == M_WATCH)
                gw__watch_sent(c, ev.success != 0);
            else if (c->m == M_REFLECT)
                gw__reflect_next(c, ev.success != 0);
            else
                gw__sub_sent(c, t->kind, ev.success != 0);
            gw__call_unref(c);
            break;
        }
    }
    return NULL;
}

/* ----------------------------------------------------------- lifecycle */

/*
 * Debian builds abseil without NDEBUG, so every absl::Mutex that gRPC core
 * locks also runs abseil's deadlock detector (a graph of lock orders with
 * stack traces): measured at 5% of the completion-queue thread's CPU under
 * Send. Switch it off (OnDeadlockCycle::kIgnore = 0) if this abseil has the
 * switch; looked up at run time, so another abseil build only misses it.
 */
static void s_absl_quiet(void)
{
    static const char *const names[] = {
        "_ZN4absl7debian329SetMutexDeadlockDetectionModeENS0_15OnDeadlockCycleE",
        "_ZN4absl29SetMutexDeadlockDetectionModeENS_15OnDeadlockCycleE",
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        void *f = dlsym(RTLD_DEFAULT, names[i]);
        if (f) {
            ((void (*)(int))f)(0);
            return;
        }
    }
}

static void s_free(gw_server *g)
{
    gw_bus_destroy(&g->bus);
    im_trim_stop(&g->trim); /* after the bus, whose ticks use it */
    gw__subs_free(g);
    gw__health_free(g);
    if (g->server)
        grpc_server_destroy(g->server);
    if (g->cq)
        grpc_completion_queue_destroy(g->cq);
    free(g->shard_req);
    free(g->shard_reply);
    gw_tokens_free(g->tokens);
    gw_jwt_free(&g->jwt);
    gw_rate_free(g->rate);
    free(g);
}

gw_server *gw_start(const gw_config *c, char *err, size_t errlen)
{
    gw_server *g = calloc(1, sizeof *g);
    if (!g) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    g->c = *c;
    s_absl_quiet();
    if (g->c.shard_timeout_ms <= 0)
        g->c.shard_timeout_ms = GW_SHARD_TIMEOUT_MS;
    if (g->c.keepalive_time_ms <= 0)
        g->c.keepalive_time_ms = GW_KEEPALIVE_MS;
    if (g->c.keepalive_timeout_ms <= 0)
        g->c.keepalive_timeout_ms = GW_KEEPALIVE_MS;
    if (g->c.presence_lease_ms <= 0)
        g->c.presence_lease_ms = GW_LEASE_MS;
    if (g->c.max_streams <= 0)
        g->c.max_streams = GW_MAX_STREAMS;
    if (g->c.memory_quota <= 0)
        g->c.memory_quota = GW_MEMORY_QUOTA;
    if (g->c.reply_budget <= 0)
        g->c.reply_budget = GW_REPLY_BUDGET;
    if (g->c.max_metadata <= 0)
        g->c.max_metadata = GW_MAX_METADATA;
    gw_limits *lim = &g->c.limits;
    lim->max_receivers = lim->max_receivers ? lim->max_receivers : IM_RECEIVERS_MAX;
    lim->max_content = lim->max_content ? lim->max_content : IM_CONTENT_MAX;
    lim->max_page = lim->max_page ? lim->max_page : IM_PAGE_MAX;
    if (lim->max_receivers < 1 || lim->max_receivers > IM_RECEIVERS_MAX ||
        lim->max_content > IM_CONTENT_MAX || lim->max_page > IM_PAGE_MAX) {
        snprintf(err, errlen, "limits: receivers 1..%d, content 0..%d, page 1..%d",
                 IM_RECEIVERS_MAX, IM_CONTENT_MAX, IM_PAGE_MAX);
        free(g);
        return NULL;
    }
    g->shard_req = malloc(sizeof *g->shard_req);
    g->shard_reply = malloc(sizeof *g->shard_reply);
    if (!g->shard_req || !g->shard_reply || c->nshards < 1 || gw__subs_new(g) ||
        gw__health_new(g)) {
        snprintf(err, errlen, c->nshards < 1 ? "no shards" : "out of memory");
        s_free(g);
        return NULL;
    }
    if (gw_jwt_configured(&c->jwt) && !(g->jwt = gw_jwt_new(&c->jwt, err, errlen))) {
        s_free(g);
        return NULL;
    }
    /* This gateway's routing id at the shards: random, so that a
     * restarted gateway is a new one (its old leases lapse). */
    uint8_t id[16];
    if (getrandom(id, sizeof id, 0) != (ssize_t)sizeof id) {
        snprintf(err, errlen, "getrandom: %s", strerror(errno));
        s_free(g);
        return NULL;
    }
    id[0] |= 1; /* ZeroMQ reserves routing ids that start with 0 */
    if (!(g->trim = im_trim_start(IM_TRIM_SLACK, IM_TRIM_PERIOD_MS, "gateway"))) {
        snprintf(err, errlen, "cannot start the heap trimmer: %s", strerror(errno));
        s_free(g);
        return NULL;
    }
    gw_bus_hooks hooks = {
        .id = id, .id_len = sizeof id,
        .notice = gw__subs_notice,
        .tick = s_tick, .tick_ms = g->c.presence_lease_ms / 3,
        .disconnected = s_disconnected,
        .arg = g,
    };
    g->bus = gw_bus_new(c->zctx, c->shards, c->local, c->nshards, &c->secret,
                        g->c.shard_timeout_ms, &hooks, err, errlen);
    if (!g->bus) {
        s_free(g);
        return NULL;
    }
    gw__health_tick(g); /* ready as soon as the shards say so, not a tick later */
    /* SO_REUSEPORT off: a second server on a busy port must fail, not
     * share. Keepalive: a client whose network vanished (no FIN) is pinged
     * and dropped, so its streams end and it goes offline; pings go out
     * also on connections without data (an idle stream is all data-less),
     * and clients may ping every GW_CLIENT_PING_MS. Memory: at most
     * max_streams calls per connection, gRPC's buffers within the quota,
     * and request headers up to max_metadata (gw_config). */
    grpc_resource_quota *quota = grpc_resource_quota_create("imbox-gateway");
    grpc_resource_quota_resize(quota, (size_t)g->c.memory_quota);
    grpc_arg args[] = {
        {GRPC_ARG_INTEGER, (char *)"grpc.so_reuseport", {.integer = 0}},
        {GRPC_ARG_INTEGER, (char *)GRPC_ARG_KEEPALIVE_TIME_MS,
         {.integer = g->c.keepalive_time_ms}},
        {GRPC_ARG_INTEGER, (char *)GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
         {.integer = g->c.keepalive_timeout_ms}},
        {GRPC_ARG_INTEGER, (char *)GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, {.integer = 1}},
        {GRPC_ARG_INTEGER, (char *)GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, {.integer = 0}},
        {GRPC_ARG_INTEGER, (char *)GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
         {.integer = GW_CLIENT_PING_MS}},
        {GRPC_ARG_INTEGER, (char *)GRPC_ARG_MAX_CONCURRENT_STREAMS,
         {.integer = g->c.max_streams}},
        {GRPC_ARG_INTEGER, (char *)GRPC_ARG_MAX_METADATA_SIZE, {.integer = g->c.max_metadata}},
        {GRPC_ARG_POINTER, (char *)GRPC_ARG_RESOURCE_QUOTA,
         {.pointer = {quota, grpc_resource_quota_arg_vtable()}}},
    };
    grpc_channel_args ca = {sizeof args / sizeof args[0], args};
    g->server = grpc_server_create(&ca, NULL);
    grpc_resource_quota_unref(quota); /* the server holds its own */
    g->cq = grpc_completion_queue_create_for_next(NULL);
    grpc_server_register_completion_queue(g->server, g->cq, NULL);
    for (int m = 0; m < M_GENERIC; m++)
        g->methods[m] = grpc_server_register_method(g->server, s_paths[m], NULL,
                                                    GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER,
                                                    0);
    grpc_server_credentials *creds = gw__listen_creds(&g->c, err, errlen);
    int port = creds ? grpc_server_add_http2_port(g->server, c->listen, creds) : 0;
    if (creds)
        grpc_server_credentials_release(creds);
    if (!creds) {
        grpc_server_destroy(g->server);
        g->server = NULL;
        s_free(g);
        return NULL;
    }
    if (port == 0) {
        snprintf(err, errlen, "cannot listen on %s (address in use or invalid)", c->listen);
        grpc_server_destroy(g->server);
        g->server = NULL;
        s_free(g);
        return NULL;
    }
    grpc_server_start(g->server);
    for (int m = 0; m < M_COUNT; m++)
        for (int i = 0; i < GW_ARMED; i++)
            s_arm(g, (gw_method)m);
    int rc = pthread_create(&g->thread, NULL, s_main, g);
    if (rc) {
        snprintf(err, errlen, "gateway thread: %s", strerror(rc));
        abort(); /* calls are armed on a started server: no clean way back */
    }
    return g;
}

void gw_stop(gw_server **gp, int grace_ms)
{
    if (!gp || !*gp)
        return;
    gw_server *g = *gp;
    atomic_store(&g->stopping, true);
    gw__subs_shutdown(g);
    gw__health_shutdown(g);
    grpc_server_shutdown_and_notify(g->server, g->cq, &g->shutdown_tag);
    /* The shutdown tag comes when every call is done and every connection
     * closed; a client may keep an idle connection open for ever. So once
     * no call is in flight (or the grace period is over), cancel: that
     * ends the remaining calls and drops the idle connections. */
    struct timespec step = {0, 20 * 1000 * 1000};
    bool cancelled = false;
    for (int waited = 0;; waited += 20) {
        if (atomic_load(&g->shutdown_done))
            break;
        if (!cancelled && (atomic_load(&g->active) == 0 || waited >= grace_ms)) {
            grpc_server_cancel_all_calls(g->server);
            cancelled = true;
        }
        nanosleep(&step, NULL);
    }
    pthread_join(g->thread, NULL);
    s_free(g);
    *gp = NULL;
}
