/* gw_server.c - see gw_server.h. */
#include "gw_server.h"

#include <assert.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/time.h>

#include "gw_bus.h"
#include "im_hash.h"
#include "im_wire.h"
#include "imbox/internal/v1/shard.pb.h"
#include "imbox/v1/imbox.pb.h"

/* Fixed limits and tunables (the configurable limits are in gw_server.h). */
#define GW_PAGE_DEFAULT 100
#define GW_PAGE_BYTES (3u << 20) /* content per page: under gRPC's 4 MiB */
#define GW_REPLY_MAX (8u << 20)  /* largest shard reply accepted */
#define GW_SHARD_TIMEOUT_MS 5000 /* a shard's commit takes milliseconds */
#define GW_ARMED 16              /* calls requested per method: enough for
                                    bursts, each costs one small context */

typedef enum {
    M_SEND, M_PULL, M_ACK, M_COUNTS, M_HEALTH, M_GENERIC, M_COUNT
} gw_method;

static const char *const s_paths[M_GENERIC] = {
    "/imbox.v1.Inbox/Send", "/imbox.v1.Inbox/Pull", "/imbox.v1.Inbox/Ack",
    "/imbox.v1.Inbox/Counts", "/grpc.health.v1.Health/Check",
};

typedef enum { TAG_NEW, TAG_CLOSE, TAG_SEND } gw_tag_kind;

typedef struct gw_call gw_call;
typedef struct gw_tag {
    gw_call *c;
    gw_tag_kind kind;
} gw_tag;

typedef struct gw_receipt {
    int code;
    char error[sizeof(((imbox_v1_Receipt *)0)->error)];
    bool duplicate;
    int64_t send_time_ms;
} gw_receipt;

/* One shard's share of a Send. */
typedef struct gw_part {
    gw_call *c;
    int n;
    int *idx; /* receipt indices, in the order sent to the shard */
} gw_part;

struct gw_call {
    gw_server *g;
    gw_method m;
    grpc_call *call;
    gpr_timespec deadline;
    grpc_metadata_array md;
    grpc_call_details details; /* M_GENERIC */
    grpc_byte_buffer *payload;
    gw_tag t_new, t_close, t_send;
    int refs;                  /* batches in flight (CQ thread only) */
    bool accepted;             /* counted in gw_server.active */
    int cancelled;
    grpc_byte_buffer *resp;
    grpc_slice status_details;
    char uid[IM_UID_MAX + 1];
    /* Send */
    int nrecv;
    char (*receivers)[IM_UID_MAX + 1];
    gw_receipt *receipts;
    gw_part *parts;
    atomic_int parts_left;
    /* Pull */
    char sender[IM_UID_MAX + 1];
};

struct gw_server {
    gw_config c;
    grpc_server *server;
    grpc_completion_queue *cq;
    void *methods[M_GENERIC];
    gw_bus *bus;
    pthread_t thread;
    atomic_bool stopping;
    atomic_int active;        /* calls accepted and not yet freed */
    int shutdown_tag;
    atomic_bool shutdown_done;
    /* scratch, owned by the CQ thread */
    imbox_internal_v1_ShardRequest *shard_req;
    /* scratch, owned by the bus thread (used only in bus callbacks) */
    imbox_internal_v1_ShardReply *shard_reply;
};

/* ------------------------------------------------------------ replies */

static void s_call_free(gw_call *c)
{
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
    grpc_slice_unref(c->status_details);
    if (c->parts)
        for (int i = 0; c->parts[i].c; i++)
            free(c->parts[i].idx);
    free(c->parts);
    free(c->receivers);
    free(c->receipts);
    free(c);
}

/*
 * Answers the call: initial metadata, the message (body, malloc'ed, taken;
 * NULL for none) and the status. Called exactly once per call, from the CQ
 * thread or the bus thread; after it the caller must not touch c.
 */
static void s_respond(gw_call *c, int status, const char *msg, uint8_t *body, size_t len)
{
    grpc_op ops[3];
    memset(ops, 0, sizeof ops);
    int n = 0;
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
    ops[n].data.send_status_from_server.trailing_metadata_count = 0;
    ops[n].data.send_status_from_server.status = (grpc_status_code)status;
    ops[n++].data.send_status_from_server.status_details = &c->status_details;
    grpc_call_error e = grpc_call_start_batch(c->call, ops, (size_t)n, &c->t_send, NULL);
    if (e != GRPC_CALL_OK) {
        fprintf(stderr, "imbox gateway: start_batch(send) = %d: a bug\n", (int)e);
        abort();
    }
}

static void s_respond_errf(gw_call *c, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void s_respond_errf(gw_call *c, int status, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    s_respond(c, status, msg, NULL, 0);
}

/* Encodes msg (with a pre-encoded prefix of repeated-field entries) and
 * answers OK. */
static void s_respond_pb(gw_call *c, const pb_msgdesc_t *fields, const void *msg,
                         const uint8_t *prefix, size_t prefix_len)
{
    uint8_t *out;
    size_t len;
    if (im_pb_encode(fields, msg, prefix, prefix_len, &out, &len)) {
        s_respond(c, IM_INTERNAL, "response does not encode", NULL, 0);
        return;
    }
    s_respond(c, IM_OK, NULL, out, len);
}

/* Decodes a shard reply into the bus thread's scratch, with its entries
 * into *entries (malloc'ed, caller frees). Returns 0 or answers the call
 * with the failure and returns -1. */
static int s_shard_reply(gw_call *c, int status, const char *why, const uint8_t *reply,
                         size_t len, im_bytes_in *entries)
{
    imbox_internal_v1_ShardReply *r = c->g->shard_reply;
    *entries = (im_bytes_in){.max = GW_REPLY_MAX};
    if (status) {
        s_respond(c, status, why, NULL, 0);
        return -1;
    }
    memset(r, 0, sizeof *r);
    r->entries.funcs.decode = im_pb_read_bytes;
    r->entries.arg = entries;
    pb_istream_t is = pb_istream_from_buffer(reply, len);
    if (!pb_decode(&is, imbox_internal_v1_ShardReply_fields, r)) {
        free(entries->p);
        s_respond_errf(c, IM_INTERNAL, "shard reply does not decode: %s", PB_GET_ERROR(&is));
        return -1;
    }
    if (r->code || entries->over) {
        free(entries->p);
        s_respond(c, r->code ? r->code : IM_INTERNAL, r->code ? r->error : "shard reply too large",
                  NULL, 0);
        return -1;
    }
    return 0;
}

/* ----------------------------------------------------------------- auth */

static int64_t s_now_s(void)
{
    return (int64_t)time(NULL);
}

/* Sets c->uid from the authorization metadata, or answers UNAUTHENTICATED. */
static int s_auth(gw_call *c)
{
    static const char bearer[] = "Bearer ";
    const grpc_slice *value = NULL;
    for (size_t i = 0; i < c->md.count; i++)
        if (grpc_slice_str_cmp(c->md.metadata[i].key, "authorization") == 0)
            value = &c->md.metadata[i].value;
    if (!value) {
        s_respond(c, IM_UNAUTHENTICATED, "missing 'authorization: Bearer <token>' metadata",
                  NULL, 0);
        return -1;
    }
    const char *v = (const char *)GRPC_SLICE_START_PTR(*value);
    size_t n = GRPC_SLICE_LENGTH(*value);
    if (n < sizeof bearer - 1 || memcmp(v, bearer, sizeof bearer - 1) != 0) {
        s_respond(c, IM_UNAUTHENTICATED, "authorization: expected 'Bearer <token>'", NULL, 0);
        return -1;
    }
    const char *why = "token: invalid";
    if (im_token_verify(&c->g->c.secret, v + sizeof bearer - 1, n - (sizeof bearer - 1),
                        s_now_s(), c->uid, &why)) {
        s_respond(c, IM_UNAUTHENTICATED, why, NULL, 0);
        return -1;
    }
    return 0;
}

/* Decodes the call's payload into msg; answers INVALID_ARGUMENT on failure. */
static int s_decode(gw_call *c, const pb_msgdesc_t *fields, void *msg, const char *name)
{
    if (!c->payload) {
        s_respond_errf(c, IM_INVALID_ARGUMENT, "%s: missing request message", name);
        return -1;
    }
    grpc_byte_buffer_reader r;
    if (!grpc_byte_buffer_reader_init(&r, c->payload)) {
        s_respond_errf(c, IM_INVALID_ARGUMENT, "%s: unreadable request", name);
        return -1;
    }
    grpc_slice s = grpc_byte_buffer_reader_readall(&r);
    grpc_byte_buffer_reader_destroy(&r);
    const char *why = NULL;
    pb_istream_t is = pb_istream_from_buffer(GRPC_SLICE_START_PTR(s), GRPC_SLICE_LENGTH(s));
    bool ok = im_pb_check_wire(fields, GRPC_SLICE_START_PTR(s), GRPC_SLICE_LENGTH(s), &why) &&
              pb_decode(&is, fields, msg);
    grpc_slice_unref(s);
    if (!ok) {
        s_respond_errf(c, IM_INVALID_ARGUMENT, "%s does not decode: %s", name,
                       why ? why : PB_GET_ERROR(&is));
        return -1;
    }
    return 0;
}

/* Checks a string field decoded by im_pb_read_str; answers on error. */
static int s_str(gw_call *c, const im_str_in *in, const char *field, size_t max, bool utf8)
{
    char msg[160];
    if (im_str_check(in, field, max, utf8, msg, sizeof msg) == 0)
        return 0;
    s_respond(c, IM_INVALID_ARGUMENT, msg, NULL, 0);
    return -1;
}

/* Encodes g->shard_req and sends it to shard; fn(arg) gets the reply. */
static void s_to_shard(gw_call *c, int shard, gw_bus_fn fn, void *arg)
{
    uint8_t *body;
    size_t len;
    if (im_pb_encode(imbox_internal_v1_ShardRequest_fields, c->g->shard_req, NULL, 0, &body,
                     &len)) {
        fn(arg, IM_INTERNAL, "shard request does not encode", NULL, 0);
        return;
    }
    if (gw_bus_send(c->g->bus, shard, body, len, fn, arg))
        fn(arg, IM_UNAVAILABLE, "gateway is stopping", NULL, 0);
}

/* ----------------------------------------------------------------- Send */

static bool s_write_receipts(pb_ostream_t *s, const pb_field_t *f, void *const *arg)
{
    const gw_call *c = *arg;
    imbox_v1_Receipt r;
    for (int i = 0; i < c->nrecv; i++) {
        memset(&r, 0, sizeof r);
        snprintf(r.receiver_uid, sizeof r.receiver_uid, "%s", c->receivers[i]);
        r.code = c->receipts[i].code;
        snprintf(r.error, sizeof r.error, "%s", c->receipts[i].error);
        r.duplicate = c->receipts[i].duplicate;
        r.send_time_ms = c->receipts[i].send_time_ms;
        if (!pb_encode_tag_for_field(s, f) ||
            !pb_encode_submessage(s, imbox_v1_Receipt_fields, &r))
            return false;
    }
    return true;
}

/* One part of a Send is done (any thread): the last one answers. */
static void s_part_done(gw_call *c)
{
    if (atomic_fetch_sub(&c->parts_left, 1) != 1)
        return;
    imbox_v1_SendResponse resp = {0};
    resp.receipts.funcs.encode = s_write_receipts;
    resp.receipts.arg = c;
    s_respond_pb(c, imbox_v1_SendResponse_fields, &resp, NULL, 0);
}

static void s_on_store(void *arg, int status, const char *why, const uint8_t *reply, size_t len)
{
    gw_part *p = arg;
    gw_call *c = p->c;
    imbox_internal_v1_ShardReply *r = c->g->shard_reply;
    const char *fail = why;
    char buf[160];
    if (!status) {
        memset(r, 0, sizeof *r);
        pb_istream_t is = pb_istream_from_buffer(reply, len);
        if (!pb_decode(&is, imbox_internal_v1_ShardReply_fields, r)) {
            status = IM_INTERNAL;
            snprintf(buf, sizeof buf, "shard reply does not decode: %s", PB_GET_ERROR(&is));
            fail = buf;
        } else if (r->code) {
            status = r->code;
            fail = r->error;
        } else if (r->results_count != (pb_size_t)p->n) {
            status = IM_INTERNAL;
            fail = "shard reply has the wrong number of results";
        }
    }
    for (int i = 0; i < p->n; i++) {
        gw_receipt *rc = &c->receipts[p->idx[i]];
        if (status) {
            rc->code = status;
            snprintf(rc->error, sizeof rc->error, "%.*s", (int)sizeof rc->error - 1,
                     fail ? fail : "shard failed");
            continue;
        }
        const imbox_internal_v1_StoreResult *res = &r->results[i];
        rc->code = res->code;
        snprintf(rc->error, sizeof rc->error, "%s", im_receipt_text(res->code));
        rc->duplicate = res->duplicate;
        rc->send_time_ms = res->send_time_ms;
    }
    s_part_done(c);
}

/* SendRequest.receiver_uids, decoded by callback (hostile input: at most
 * IM_RECEIVERS_MAX are kept, each at most IM_UID_MAX bytes; the first
 * problem is remembered with its index so the error can name it). */
typedef struct gw_uids {
    char (*v)[IM_UID_MAX + 1];
    int n;        /* kept */
    int total;    /* seen */
    int bad;      /* index of the first over-long or NUL-holding uid, or -1 */
    size_t bad_len;
} gw_uids;

static bool s_read_uid(pb_istream_t *s, const pb_field_t *f, void **arg)
{
    (void)f;
    gw_uids *u = *arg;
    size_t n = s->bytes_left;
    int i = u->total++;
    if (u->n == IM_RECEIVERS_MAX || n > IM_UID_MAX) {
        if (n > IM_UID_MAX && u->bad < 0) {
            u->bad = i;
            u->bad_len = n;
        }
        return pb_read(s, NULL, n);
    }
    char *dst = u->v[u->n++];
    if (!pb_read(s, (uint8_t *)dst, n))
        return false;
    dst[n] = 0;
    if (memchr(dst, 0, n) && u->bad < 0) {
        u->bad = i;
        u->bad_len = n;
    }
    return true;
}

/* Field checks of a decoded SendRequest; all or nothing. 0 or answers. */
static int s_send_check(gw_call *c, const im_str_in *msg_id, const gw_uids *u,
                        const im_bytes_in *content)
{
    if (msg_id->n == 0 && !msg_id->over) {
        s_respond_errf(c, IM_INVALID_ARGUMENT, "msg_id: empty, must be 1..%d bytes",
                       IM_MSGID_MAX);
        return -1;
    }
    if (s_str(c, msg_id, "msg_id", IM_MSGID_MAX, true))
        return -1;
    const gw_limits *lim = &c->g->c.limits;
    if (u->total == 0 || u->total > lim->max_receivers) {
        s_respond_errf(c, IM_INVALID_ARGUMENT, "receiver_uids: %d receivers, must be 1..%d",
                       u->total, lim->max_receivers);
        return -1;
    }
    if (u->bad >= 0) {
        s_respond_errf(c, IM_INVALID_ARGUMENT,
                       u->bad_len > IM_UID_MAX ? "receiver_uids[%d]: %zu bytes, longer than %d"
                                               : "receiver_uids[%d]: contains a NUL byte",
                       u->bad, u->bad_len, IM_UID_MAX);
        return -1;
    }
    if (content->over) {
        s_respond_errf(c, IM_INVALID_ARGUMENT, "content: %zu bytes, at most %zu", content->over,
                       c->g->c.limits.max_content);
        return -1;
    }
    for (int i = 0; i < u->n; i++) {
        char field[32];
        char msg[160];
        snprintf(field, sizeof field, "receiver_uids[%d]", i);
        if (im_uid_check(u->v[i], field, msg, sizeof msg)) {
            s_respond(c, IM_INVALID_ARGUMENT, msg, NULL, 0);
            return -1;
        }
    }
    return 0;
}

static int s_uid_cmp(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Answers INVALID_ARGUMENT if a receiver is listed twice. */
static int s_send_dups(gw_call *c, const gw_uids *u)
{
    const char **v = malloc((size_t)u->n * sizeof *v);
    if (!v) {
        s_respond(c, IM_RESOURCE_EXHAUSTED, "out of memory", NULL, 0);
        return -1;
    }
    for (int i = 0; i < u->n; i++)
        v[i] = u->v[i];
    qsort(v, (size_t)u->n, sizeof *v, s_uid_cmp);
    for (int i = 1; i < u->n; i++)
        if (strcmp(v[i - 1], v[i]) == 0) {
            s_respond_errf(c, IM_INVALID_ARGUMENT, "receiver_uids: '%s' is listed twice",
                           v[i]);
            free(v);
            return -1;
        }
    free(v);
    return 0;
}

/* StoreOp.receivers of one part, encoded by callback. */
static bool s_write_part_uids(pb_ostream_t *s, const pb_field_t *f, void *const *arg)
{
    const gw_part *p = *arg;
    for (int j = 0; j < p->n; j++) {
        const char *uid = p->c->receivers[p->idx[j]];
        if (!pb_encode_tag_for_field(s, f) || !pb_encode_string(s, (const uint8_t *)uid,
                                                                strlen(uid)))
            return false;
    }
    return true;
}

/* Groups the receivers by shard into c->parts (part k goes to shard
 * part_shard[k]); returns the number of parts, or -1 out of memory. */
static int s_split(gw_call *c, int *part_shard)
{
    int n = c->nrecv, S = c->g->c.nshards, nparts = 0;
    int *shard_of = malloc((size_t)n * sizeof *shard_of);
    int *per = calloc((size_t)S, sizeof *per);
    c->parts = calloc((size_t)S + 1, sizeof *c->parts); /* ends at .c == NULL */
    int rc = shard_of && per && c->parts ? 0 : -1;
    for (int i = 0; i < n && !rc; i++)
        if (per[shard_of[i] = im_shard_of(c->receivers[i], S)]++ == 0)
            nparts++;
    for (int s = 0, k = 0; s < S && !rc; s++) {
        if (!per[s])
            continue;
        gw_part *p = &c->parts[k];
        if (!(p->idx = malloc((size_t)per[s] * sizeof *p->idx))) {
            rc = -1;
            break;
        }
        for (int i = 0; i < n; i++)
            if (shard_of[i] == s)
                p->idx[p->n++] = i;
        p->c = c;
        part_shard[k++] = s;
    }
    free(shard_of);
    free(per);
    return rc ? -1 : nparts;
}

static void s_send(gw_call *c)
{
    gw_server *g = c->g;
    imbox_v1_SendRequest q;
    memset(&q, 0, sizeof q);
    gw_uids u = {.v = malloc(IM_RECEIVERS_MAX * sizeof *u.v), .bad = -1};
    im_bytes_in content = {.max = g->c.limits.max_content};
    char msg_id[IM_MSGID_MAX + 1];
    im_str_in mid = {.p = msg_id, .cap = sizeof msg_id};
    msg_id[0] = 0;
    q.msg_id.funcs.decode = im_pb_read_str;
    q.msg_id.arg = &mid;
    q.receiver_uids.funcs.decode = s_read_uid;
    q.receiver_uids.arg = &u;
    q.content.funcs.decode = im_pb_read_bytes;
    q.content.arg = &content;
    int *part_shard = malloc((size_t)g->c.nshards * sizeof *part_shard);
    if (!u.v || !part_shard) {
        s_respond(c, IM_RESOURCE_EXHAUSTED, "out of memory", NULL, 0);
        goto out;
    }
    if (s_decode(c, imbox_v1_SendRequest_fields, &q, "SendRequest") ||
        s_send_check(c, &mid, &u, &content) || s_send_dups(c, &u))
        goto out;
    c->nrecv = u.n;
    c->receivers = u.v;
    u.v = NULL;
    c->receipts = calloc((size_t)c->nrecv, sizeof *c->receipts);
    int nparts = c->receipts ? s_split(c, part_shard) : -1;
    if (nparts < 0) {
        s_respond(c, IM_RESOURCE_EXHAUSTED, "out of memory", NULL, 0);
        goto out;
    }
    /* Every part is built before any is sent: a reply may arrive (on the
     * bus thread) before the next part goes. */
    atomic_store(&c->parts_left, nparts);
    imbox_internal_v1_ShardRequest *sr = g->shard_req;
    im_bytes_out body = {content.p, content.n};
    for (int i = 0; i < nparts; i++) {
        memset(sr, 0, sizeof *sr);
        sr->has_store = true;
        imbox_internal_v1_StoreOp *op = &sr->store;
        snprintf(op->sender, sizeof op->sender, "%s", c->uid);
        memcpy(op->msg_id, msg_id, mid.n + 1);
        op->msg_type = q.msg_type;
        op->content.funcs.encode = im_pb_write_bytes;
        op->content.arg = &body;
        op->receivers.funcs.encode = s_write_part_uids;
        op->receivers.arg = &c->parts[i];
        s_to_shard(c, part_shard[i], s_on_store, &c->parts[i]);
    }
out:
    free(u.v);
    free(content.p);
    free(part_shard);
}

/* -------------------------------------------------- Pull, Ack, Counts */

static void s_on_pull(void *arg, int status, const char *why, const uint8_t *reply, size_t len)
{
    gw_call *c = arg;
    im_bytes_in entries;
    if (s_shard_reply(c, status, why, reply, len, &entries))
        return;
    const imbox_internal_v1_ShardReply *r = c->g->shard_reply;
    imbox_v1_PullResponse resp = {0};
    if (im_cursor_make(&c->g->c.secret, c->uid, c->sender, r->last_seq, resp.cursor,
                       sizeof resp.cursor)) {
        free(entries.p);
        s_respond(c, IM_INTERNAL, "cursor does not encode", NULL, 0);
        return;
    }
    resp.more = r->more;
    s_respond_pb(c, imbox_v1_PullResponse_fields, &resp, entries.p, entries.n);
    free(entries.p);
}

/* A request's cursor, decoded by callback, then parsed. */
typedef struct gw_cursor {
    char text[IM_CURSOR_MAX];
    im_str_in in;
} gw_cursor;

static void s_cursor_init(gw_cursor *k, pb_callback_t *cb)
{
    k->text[0] = 0;
    k->in = (im_str_in){.p = k->text, .cap = sizeof k->text};
    cb->funcs.decode = im_pb_read_str;
    cb->arg = &k->in;
}

/* Checks and parses a decoded cursor into seq and scope; answers on error. */
static int s_cursor(gw_call *c, const gw_cursor *k, uint64_t *seq, char *scope)
{
    const char *why = "cursor: malformed";
    if (s_str(c, &k->in, "cursor", sizeof k->text - 1, false))
        return -1;
    if (im_cursor_scope(&c->g->c.secret, c->uid, k->text, k->in.n, seq, scope, &why)) {
        s_respond(c, IM_INVALID_ARGUMENT, why, NULL, 0);
        return -1;
    }
    return 0;
}

static void s_pull(gw_call *c)
{
    imbox_v1_PullRequest q = {0};
    gw_cursor k;
    char sender[IM_UID_MAX + 1] = "";
    im_str_in sin = {.p = sender, .cap = sizeof sender};
    s_cursor_init(&k, &q.cursor);
    q.sender_uid.funcs.decode = im_pb_read_str;
    q.sender_uid.arg = &sin;
    if (s_decode(c, imbox_v1_PullRequest_fields, &q, "PullRequest"))
        return;
    unsigned max_page = c->g->c.limits.max_page;
    if (q.page_size > max_page) {
        s_respond_errf(c, IM_INVALID_ARGUMENT, "page_size: %u, at most %u", q.page_size,
                       max_page);
        return;
    }
    char msg[160];
    if (s_str(c, &sin, "sender_uid", IM_UID_MAX, false))
        return;
    if (sender[0] && im_uid_check(sender, "sender_uid", msg, sizeof msg)) {
        s_respond(c, IM_INVALID_ARGUMENT, msg, NULL, 0);
        return;
    }
    uint64_t seq;
    char scope[IM_UID_MAX + 1] = "";
    if (s_cursor(c, &k, &seq, scope))
        return;
    if (k.in.n && strcmp(scope, sender) != 0) {
        s_respond_errf(c, IM_INVALID_ARGUMENT,
                       "cursor: it belongs to %s%s%s, not to this request's sender_uid",
                       scope[0] ? "the conversation with '" : "the whole inbox", scope,
                       scope[0] ? "'" : "");
        return;
    }
    memcpy(c->sender, sender, sizeof c->sender);
    imbox_internal_v1_ShardRequest *sr = c->g->shard_req;
    memset(sr, 0, sizeof *sr);
    sr->has_read = true;
    imbox_internal_v1_ReadOp *op = &sr->read;
    snprintf(op->uid, sizeof op->uid, "%s", c->uid);
    memcpy(op->sender, sender, sizeof sender);
    op->ack_upto = seq;
    op->limit = q.page_size ? q.page_size
                : GW_PAGE_DEFAULT < max_page ? GW_PAGE_DEFAULT : max_page;
    op->max_bytes = GW_PAGE_BYTES;
    s_to_shard(c, im_shard_of(c->uid, c->g->c.nshards), s_on_pull, c);
}

static void s_on_ack(void *arg, int status, const char *why, const uint8_t *reply, size_t len)
{
    gw_call *c = arg;
    im_bytes_in entries;
    if (s_shard_reply(c, status, why, reply, len, &entries))
        return;
    free(entries.p);
    imbox_v1_AckResponse resp = {.deleted = c->g->shard_reply->deleted};
    s_respond_pb(c, imbox_v1_AckResponse_fields, &resp, NULL, 0);
}

static void s_ack(gw_call *c)
{
    imbox_v1_AckRequest q = {0};
    gw_cursor k;
    s_cursor_init(&k, &q.cursor);
    if (s_decode(c, imbox_v1_AckRequest_fields, &q, "AckRequest"))
        return;
    if (k.in.n == 0 && !k.in.over) {
        s_respond(c, IM_INVALID_ARGUMENT, "cursor: empty (pass a Pull response's cursor)",
                  NULL, 0);
        return;
    }
    uint64_t seq;
    char scope[IM_UID_MAX + 1] = "";
    if (s_cursor(c, &k, &seq, scope))
        return;
    imbox_internal_v1_ShardRequest *sr = c->g->shard_req;
    memset(sr, 0, sizeof *sr);
    sr->has_ack = true;
    snprintf(sr->ack.uid, sizeof sr->ack.uid, "%s", c->uid);
    snprintf(sr->ack.sender, sizeof sr->ack.sender, "%s", scope);
    sr->ack.upto = seq;
    s_to_shard(c, im_shard_of(c->uid, c->g->c.nshards), s_on_ack, c);
}

static void s_on_counts(void *arg, int status, const char *why, const uint8_t *reply,
                        size_t len)
{
    gw_call *c = arg;
    im_bytes_in entries;
    if (s_shard_reply(c, status, why, reply, len, &entries))
        return;
    imbox_v1_CountsResponse resp = {.total = c->g->shard_reply->total};
    s_respond_pb(c, imbox_v1_CountsResponse_fields, &resp, entries.p, entries.n);
    free(entries.p);
}

static void s_counts(gw_call *c)
{
    imbox_v1_CountsRequest q = {0};
    if (s_decode(c, imbox_v1_CountsRequest_fields, &q, "CountsRequest"))
        return;
    imbox_internal_v1_ShardRequest *sr = c->g->shard_req;
    memset(sr, 0, sizeof *sr);
    sr->has_counts = true;
    snprintf(sr->counts.uid, sizeof sr->counts.uid, "%s", c->uid);
    s_to_shard(c, im_shard_of(c->uid, c->g->c.nshards), s_on_counts, c);
}

/* grpc.health.v1.Health/Check: SERVING for "" and "imbox.v1.Inbox". */
static void s_health(gw_call *c)
{
    static const char inbox[] = "imbox.v1.Inbox";
    /* HealthCheckRequest { string service = 1; }: "" or one short field */
    char svc[64] = "";
    size_t svcn = 0;
    bool ok = true;
    if (c->payload) {
        grpc_byte_buffer_reader r;
        ok = grpc_byte_buffer_reader_init(&r, c->payload);
        if (ok) {
            grpc_slice s = grpc_byte_buffer_reader_readall(&r);
            grpc_byte_buffer_reader_destroy(&r);
            const uint8_t *p = GRPC_SLICE_START_PTR(s);
            size_t n = GRPC_SLICE_LENGTH(s);
            if (n >= 2 && p[0] == 0x0a && (size_t)p[1] + 2 == n && p[1] < sizeof svc) {
                svcn = p[1];
                for (size_t i = 0; i < svcn; i++)
                    svc[i] = (char)p[2 + i];
            } else if (n != 0) {
                ok = false;
            }
            grpc_slice_unref(s);
        }
    }
    if (!ok) {
        s_respond(c, IM_INVALID_ARGUMENT, "HealthCheckRequest does not decode", NULL, 0);
        return;
    }
    if (svcn != 0 && !(svcn == sizeof inbox - 1 && memcmp(svc, inbox, svcn) == 0)) {
        s_respond(c, IM_NOT_FOUND, "unknown service", NULL, 0);
        return;
    }
    uint8_t *body = malloc(2);
    if (!body) {
        s_respond(c, IM_RESOURCE_EXHAUSTED, "out of memory", NULL, 0);
        return;
    }
    body[0] = 0x08; /* status = SERVING (1) */
    body[1] = 0x01;
    s_respond(c, IM_OK, NULL, body, 2);
}

/* ---------------------------------------------------------- call loop */

static void s_arm(gw_server *g, gw_method m)
{
    gw_call *c = calloc(1, sizeof *c);
    if (!c) {
        fprintf(stderr, "imbox gateway: out of memory arming a call\n");
        return;
    }
    c->g = g;
    c->m = m;
    c->t_new = (gw_tag){c, TAG_NEW};
    c->t_close = (gw_tag){c, TAG_CLOSE};
    c->t_send = (gw_tag){c, TAG_SEND};
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
        fprintf(stderr, "imbox gateway: request_call = %d\n", (int)e);
        s_call_free(c);
    }
}

static void s_on_new(gw_call *c)
{
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    op.data.recv_close_on_server.cancelled = &c->cancelled;
    /* Two batches will complete: receive-close now, send-status later. */
    c->refs = 2;
    if (grpc_call_start_batch(c->call, &op, 1, &c->t_close, NULL) != GRPC_CALL_OK) {
        fprintf(stderr, "imbox gateway: start_batch(close) failed: a bug\n");
        abort();
    }
    if (c->m == M_HEALTH) {
        s_health(c);
        return;
    }
    if (c->m == M_GENERIC) {
        s_respond_errf(c, IM_UNIMPLEMENTED, "%.*s is not implemented",
                       (int)GRPC_SLICE_LENGTH(c->details.method),
                       (const char *)GRPC_SLICE_START_PTR(c->details.method));
        return;
    }
    if (s_auth(c))
        return;
    switch (c->m) {
    case M_SEND: s_send(c); break;
    case M_PULL: s_pull(c); break;
    case M_ACK: s_ack(c); break;
    case M_COUNTS: s_counts(c); break;
    default: assert(!"unreachable");
    }
}

static void *s_main(void *arg)
{
    gw_server *g = arg;
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
                s_call_free(c);
                break;
            }
            c->accepted = true;
            atomic_fetch_add(&g->active, 1);
            if (!atomic_load(&g->stopping))
                s_arm(g, c->m);
            s_on_new(c);
            break;
        case TAG_CLOSE:
        case TAG_SEND:
            if (--c->refs == 0)
                s_call_free(c);
            break;
        }
    }
    return NULL;
}

/* ----------------------------------------------------------- lifecycle */

static void s_free(gw_server *g)
{
    gw_bus_destroy(&g->bus);
    if (g->server)
        grpc_server_destroy(g->server);
    if (g->cq)
        grpc_completion_queue_destroy(g->cq);
    free(g->shard_req);
    free(g->shard_reply);
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
    if (g->c.shard_timeout_ms <= 0)
        g->c.shard_timeout_ms = GW_SHARD_TIMEOUT_MS;
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
    if (!g->shard_req || !g->shard_reply || c->nshards < 1) {
        snprintf(err, errlen, c->nshards < 1 ? "no shards" : "out of memory");
        s_free(g);
        return NULL;
    }
    g->bus = gw_bus_new(c->zctx, c->shards, c->nshards, g->c.shard_timeout_ms, err, errlen);
    if (!g->bus) {
        s_free(g);
        return NULL;
    }
    /* SO_REUSEPORT off: a second server on a busy port must fail, not share. */
    grpc_arg args[1];
    args[0].type = GRPC_ARG_INTEGER;
    args[0].key = (char *)"grpc.so_reuseport";
    args[0].value.integer = 0;
    grpc_channel_args ca = {1, args};
    g->server = grpc_server_create(&ca, NULL);
    g->cq = grpc_completion_queue_create_for_next(NULL);
    grpc_server_register_completion_queue(g->server, g->cq, NULL);
    for (int m = 0; m < M_GENERIC; m++)
        g->methods[m] = grpc_server_register_method(g->server, s_paths[m], NULL,
                                                    GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER,
                                                    0);
    grpc_server_credentials *creds = grpc_insecure_server_credentials_create();
    int port = grpc_server_add_http2_port(g->server, c->listen, creds);
    grpc_server_credentials_release(creds);
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
