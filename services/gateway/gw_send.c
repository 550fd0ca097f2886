/* gw_send.c - Send: validation, split by shard, receipts
 * (see gw_call.h). */
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <grpc/byte_buffer_reader.h>

#include "gw_call.h"
#include "gw_rate.h"
#include "gw_sendreq.h"
#include "im_hash.h"

_Static_assert(sizeof(((imbox_internal_v1_StoreOp *)0)->sender) > IM_UID_MAX &&
                   sizeof(((imbox_internal_v1_StoreOp *)0)->msg_id) > IM_MSGID_MAX,
               "StoreOp's strings hold any uid and msg_id: pb_encode would not refuse them");

/* ----------------------------------------------------------------- Send */

/* The bytes of receipt i of c (its fields, without key and length). */
static size_t s_receipt_size(const gw_call *c, int i)
{
    const gw_receipt *r = &c->receipts[i];
    return im_pb_len_size3(imbox_v1_Receipt_receiver_uid_tag, strlen(c->receivers[i])) +
           im_pb_varint_size3(imbox_v1_Receipt_code_tag, (uint64_t)(int64_t)r->code) +
           im_pb_len_size3(imbox_v1_Receipt_error_tag, strlen(r->error)) +
           im_pb_varint_size3(imbox_v1_Receipt_duplicate_tag, r->duplicate) +
           im_pb_varint_size3(imbox_v1_Receipt_online_tag, r->online) +
           im_pb_varint_size3(imbox_v1_Receipt_send_time_ms_tag, (uint64_t)r->send_time_ms);
}

/* Writes receipt i of c as a SendResponse.receipts entry: key, length,
 * fields (the strings are NUL-terminated and within Receipt's bounds). */
static void s_receipt_write(im_pb_out *o, const gw_call *c, int i)
{
    const gw_receipt *r = &c->receipts[i];
    const char *uid = c->receivers[i];
    im_pb_out_head(o, imbox_v1_SendResponse_receipts_tag, s_receipt_size(c, i));
    im_pb_out_len3(o, imbox_v1_Receipt_receiver_uid_tag, uid, strlen(uid));
    im_pb_out_varint3(o, imbox_v1_Receipt_code_tag, (uint64_t)(int64_t)r->code);
    im_pb_out_len3(o, imbox_v1_Receipt_error_tag, r->error, strlen(r->error));
    im_pb_out_varint3(o, imbox_v1_Receipt_duplicate_tag, r->duplicate);
    im_pb_out_varint3(o, imbox_v1_Receipt_online_tag, r->online);
    im_pb_out_varint3(o, imbox_v1_Receipt_send_time_ms_tag, (uint64_t)r->send_time_ms);
}

_Static_assert(sizeof(((gw_receipt *)0)->error) <= sizeof(((imbox_v1_Receipt *)0)->error) &&
                   IM_UID_MAX < sizeof(((imbox_v1_Receipt *)0)->receiver_uid),
               "a receipt's strings fit imbox_v1_Receipt: pb_encode would not cut them");

int gw__send_response(const gw_call *c, uint8_t **out, size_t *len)
{
    size_t total = 0;
    for (int i = 0; i < c->nrecv; i++)
        total += im_pb_len_size(imbox_v1_SendResponse_receipts_tag, s_receipt_size(c, i));
    *out = NULL;
    *len = 0;
    uint8_t *p = malloc(total + 1);
    if (!p)
        return -1;
    im_pb_out o = im_pb_out_of(p, total);
    for (int i = 0; i < c->nrecv; i++)
        s_receipt_write(&o, c, i);
    if (!im_pb_out_full(&o)) {
        free(p); /* cannot happen: the sizes above are the writes' */
        return -1;
    }
    *out = p;
    *len = total;
    return 0;
}

/* One part of a Send is done (any thread): the last one answers. */
static void s_part_done(gw_call *c)
{
    if (atomic_fetch_sub(&c->parts_left, 1) != 1)
        return;
    uint64_t dups = 0;
    for (int i = 0; i < c->nrecv; i++) { /* codes are 0..16 (s_on_store) */
        unsigned code = (unsigned)c->receipts[i].code % GW_CODES;
        atomic_fetch_add_explicit(&c->g->stats.receipts[code], 1, memory_order_relaxed);
        dups += !code && c->receipts[i].duplicate;
    }
    if (dups)
        atomic_fetch_add_explicit(&c->g->stats.duplicates, dups, memory_order_relaxed);
    uint8_t *body;
    size_t len;
    if (gw__send_response(c, &body, &len)) {
        gw__respond(c, IM_INTERNAL, "response does not encode", NULL, 0);
        return;
    }
    gw__respond(c, IM_OK, NULL, body, len);
}

static void s_on_store(void *arg, int status, const char *why, const uint8_t *reply, size_t len)
{
    gw_part *p = arg;
    gw_call *c = p->c;
    const imbox_internal_v1_ShardReply *r = c->g->shard_reply;
    const char *fail = why;
    status = gw__shard_decode(c->g, status, &fail, reply, len, NULL);
    if (!status && r->results_count != (pb_size_t)p->n) {
        status = IM_INTERNAL;
        fail = "shard reply has the wrong number of results";
    }
    for (int i = 0; i < p->n; i++) {
        gw_receipt *rc = &c->receipts[gw__part_at(p, i)];
        if (status) {
            rc->code = status;
            snprintf(rc->error, sizeof rc->error, "%.*s", (int)sizeof rc->error - 1,
                     fail ? fail : "shard failed");
            continue;
        }
        const imbox_internal_v1_StoreResult *res = &r->results[i];
        /* a client sees gRPC codes only, whatever a shard sends */
        rc->code = res->code >= 0 && res->code <= IM_UNAUTHENTICATED ? res->code : IM_INTERNAL;
        im_copy_str(rc->error, sizeof rc->error, im_receipt_text(res->code));
        rc->duplicate = res->duplicate;
        rc->online = res->online;
        rc->send_time_ms = res->send_time_ms;
    }
    s_part_done(c);
}

/* Field checks of a decoded SendRequest; all or nothing. 0 or answers. */
static int s_send_check(gw_call *c, const im_str_in *msg_id, const gw_uids *u,
                        const im_bytes_in *content)
{
    if (msg_id->n == 0 && !msg_id->over) {
        gw__respond_errf(c, IM_INVALID_ARGUMENT, "msg_id: empty, must be 1..%d bytes",
                         IM_MSGID_MAX);
        return -1;
    }
    if (gw__str(c, msg_id, "msg_id", IM_MSGID_MAX, true))
        return -1;
    if (gw__uids_check(c, u, "receiver_uids", "receivers", 1, c->g->c.limits.max_receivers))
        return -1;
    if (content->over) {
        gw__respond_errf(c, IM_INVALID_ARGUMENT, "content: %zu bytes, at most %zu", content->over,
                         c->g->c.limits.max_content);
        return -1;
    }
    return 0;
}

static int s_uid_cmp(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

#define S_DUPS_STACK 16 /* receivers sorted on the stack; more: malloc */

/* Answers INVALID_ARGUMENT if a receiver is listed twice (naming the first
 * in byte order of those that are). */
static int s_send_dups(gw_call *c, const gw_uids *u)
{
    if (u->n < 2)
        return 0;
    const char *stack[S_DUPS_STACK];
    const char **v = u->n <= S_DUPS_STACK ? stack : malloc((size_t)u->n * sizeof *v);
    if (!v) {
        gw__respond(c, IM_RESOURCE_EXHAUSTED, "out of memory", NULL, 0);
        return -1;
    }
    for (int i = 0; i < u->n; i++)
        v[i] = u->v[i];
    qsort(v, (size_t)u->n, sizeof *v, s_uid_cmp);
    int rc = 0;
    for (int i = 1; i < u->n && !rc; i++)
        if (strcmp(v[i - 1], v[i]) == 0) {
            gw__respond_errf(c, IM_INVALID_ARGUMENT, "receiver_uids: '%s' is listed twice",
                             v[i]);
            rc = -1;
        }
    if (v != stack)
        free(v);
    return rc;
}

/* StoreOp.receivers of one part, encoded by callback. */
bool gw__write_part_uids(pb_ostream_t *s, const pb_field_t *f, void *const *arg)
{
    const gw_part *p = *arg;
    for (int j = 0; j < p->n; j++) {
        const char *uid = p->c->receivers[gw__part_at(p, j)];
        if (!pb_encode_tag_for_field(s, f) || !pb_encode_string(s, (const uint8_t *)uid,
                                                                strlen(uid)))
            return false;
    }
    return true;
}

/* The bytes of part p's StoreOp (its fields, without key and length).
 * content and receivers are callback fields in the generated struct: nanopb
 * writes them even when empty. */
static size_t s_store_size(const gw_part *p, const gw_store *m)
{
    size_t n = im_pb_len_size3(imbox_internal_v1_StoreOp_sender_tag, strlen(m->sender)) +
               im_pb_len_size3(imbox_internal_v1_StoreOp_msg_id_tag, strlen(m->msg_id)) +
               im_pb_varint_size3(imbox_internal_v1_StoreOp_msg_type_tag,
                                  (uint64_t)(int64_t)m->msg_type) +
               im_pb_len_size(imbox_internal_v1_StoreOp_content_tag, m->content_len);
    for (int j = 0; j < p->n; j++)
        n += im_pb_len_size(imbox_internal_v1_StoreOp_receivers_tag,
                            strlen(p->c->receivers[gw__part_at(p, j)]));
    return n;
}

/* Writes ShardRequest.store: key, length n, the StoreOp's fields. */
static void s_store_write(im_pb_out *o, const gw_part *p, const gw_store *m, size_t n)
{
    im_pb_out_head(o, imbox_internal_v1_ShardRequest_store_tag, n);
    im_pb_out_len3(o, imbox_internal_v1_StoreOp_sender_tag, m->sender, strlen(m->sender));
    im_pb_out_len3(o, imbox_internal_v1_StoreOp_msg_id_tag, m->msg_id, strlen(m->msg_id));
    im_pb_out_varint3(o, imbox_internal_v1_StoreOp_msg_type_tag, (uint64_t)(int64_t)m->msg_type);
    im_pb_out_len(o, imbox_internal_v1_StoreOp_content_tag, m->content, m->content_len);
    for (int j = 0; j < p->n; j++) {
        const char *uid = p->c->receivers[gw__part_at(p, j)];
        im_pb_out_len(o, imbox_internal_v1_StoreOp_receivers_tag, uid, strlen(uid));
    }
}

int gw__store_request(const gw_part *p, const gw_store *m, uint8_t **out, size_t *len)
{
    size_t n = s_store_size(p, m);
    size_t total = im_pb_len_size(imbox_internal_v1_ShardRequest_store_tag, n);
    *out = NULL;
    *len = 0;
    uint8_t *b = malloc(total + 1);
    if (!b)
        return -1;
    im_pb_out o = im_pb_out_of(b, total);
    s_store_write(&o, p, m, n);
    if (!im_pb_out_full(&o)) {
        free(b); /* cannot happen: the sizes above are the writes' */
        return -1;
    }
    *out = b;
    *len = total;
    return 0;
}

/* gw__split when the receivers span several shards (the first `same` are
 * known to be on shard s0): one part per shard, each with its receipt
 * indices. */
static int s_split_many(gw_call *c, int s0, int same)
{
    int n = c->nrecv, S = c->g->c.nshards, nparts = 0;
    int *shard_of = malloc(((size_t)n + (size_t)S) * sizeof *shard_of);
    if (!shard_of)
        return -1;
    int *per = shard_of + n; /* receivers per shard */
    memset(per, 0, (size_t)S * sizeof *per);
    for (int i = 0; i < n; i++) {
        int s = i < same ? s0 : im_shard_of(c->receivers[i], S);
        if (per[shard_of[i] = s]++ == 0)
            nparts++;
    }
    int rc = (c->parts = calloc((size_t)nparts + 1, sizeof *c->parts)) ? 0 : -1;
    for (int s = 0, k = 0; s < S && !rc; s++) {
        if (!per[s])
            continue;
        gw_part *p = &c->parts[k++];
        if (!(p->idx = malloc((size_t)per[s] * sizeof *p->idx))) {
            rc = -1;
            break;
        }
        for (int i = 0; i < n; i++)
            if (shard_of[i] == s)
                p->idx[p->n++] = i;
        p->shard = s;
        p->c = c; /* last: gw__call_free frees the idx of parts up to .c NULL */
    }
    free(shard_of);
    return rc ? -1 : nparts;
}

/* Groups the receivers by shard into c->parts (see gw_call.h): the usual
 * Send (its receivers on one shard) costs one allocation. */
int gw__split(gw_call *c)
{
    int n = c->nrecv, S = c->g->c.nshards;
    assert(n >= 1);
    int s0 = im_shard_of(c->receivers[0], S), i = 1;
    while (i < n && im_shard_of(c->receivers[i], S) == s0)
        i++;
    if (i < n)
        return s_split_many(c, s0, i);
    if (!(c->parts = calloc(2, sizeof *c->parts)))
        return -1;
    c->parts[0] = (gw_part){.c = c, .n = n, .idx = NULL, .shard = s0};
    return 1;
}

/* The sender's rate limit (gw_rate.h): 0, or answers RESOURCE_EXHAUSTED
 * with the wait in the trailing metadata `retry-after-ms` and the message. */
static int s_send_rate(gw_call *c, int nrecv)
{
    gw_server *g = c->g;
    if (!g->c.send_rate)
        return 0;
    if (!g->rate) {
        unsigned burst = g->c.send_burst ? g->c.send_burst : 2 * g->c.send_rate;
        if (!(g->rate = gw_rate_new(g->c.send_rate, burst))) {
            gw__respond(c, IM_RESOURCE_EXHAUSTED, "out of memory", NULL, 0);
            return -1;
        }
    }
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    int64_t now = (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
    uint32_t wait_ms;
    uint32_t cost = gw_rate_cost(nrecv);
    if (gw_rate_take(g->rate, c->uid, cost, now, &wait_ms) == 0)
        return 0;
    char v[16];
    snprintf(v, sizeof v, "%u", wait_ms);
    c->trailer.key = grpc_slice_from_static_string("retry-after-ms");
    c->trailer.value = grpc_slice_from_copied_string(v);
    c->ntrailer = 1;
    gw__respond_errf(c, IM_RESOURCE_EXHAUSTED,
                     "send rate: this sender is over %u Sends per second (burst %u); "
                     "retry after %u ms", g->c.send_rate,
                     g->c.send_burst ? g->c.send_burst : 2 * g->c.send_rate, wait_ms);
    return -1;
}

/* The call's payload as one span: in place when gRPC holds it in one
 * uncompressed slice (a usual request), else read into *own (the caller
 * unrefs it). false when there is none or it is compressed: the generic
 * path then answers as it always did. */
static bool s_payload(gw_call *c, grpc_slice *own, const uint8_t **buf, size_t *len)
{
    grpc_byte_buffer *b = c->payload;
    if (!b || b->type != GRPC_BB_RAW || b->data.raw.compression != GRPC_COMPRESS_NONE)
        return false;
    const grpc_slice_buffer *sb = &b->data.raw.slice_buffer;
    if (sb->count == 0) {
        *buf = NULL;
        *len = 0;
        return true;
    }
    if (sb->count == 1) { /* the bytes stay the payload's, c's until freed */
        *buf = GRPC_SLICE_START_PTR(sb->slices[0]);
        *len = GRPC_SLICE_LENGTH(sb->slices[0]);
        return true;
    }
    grpc_byte_buffer_reader r;
    if (!grpc_byte_buffer_reader_init(&r, b))
        return false;
    *own = grpc_byte_buffer_reader_readall(&r);
    grpc_byte_buffer_reader_destroy(&r);
    *buf = GRPC_SLICE_START_PTR(*own); /* *own's storage: an inlined slice's bytes */
    *len = GRPC_SLICE_LENGTH(*own);
    return true;
}

/* Decodes a SendRequest by gw_sendreq_read: exactly what gw__decode would
 * put in *in (its content.p left NULL: the content's bytes are *body, in
 * buf). false when declined (nothing is changed: decode it with
 * gw__decode). */
static bool s_send_fast(const uint8_t *buf, size_t len, gw_send_in *in, const uint8_t **body)
{
    const gw_sendreq_limits lim = {.msg_id_max = in->mid.cap - 1, .uid_max = IM_UID_MAX,
                                   .receivers_max = in->u.max,
                                   .content_max = in->content.max};
    gw_sendreq q;
    if (!gw_sendreq_read(buf, len, &lim, &q))
        return false;
    gw_uids *u = &in->u;
    if (q.nreceivers) { /* one allocation of the exact size */
        if (!(u->v = malloc((size_t)q.nreceivers * sizeof *u->v)))
            return false; /* gw__decode's answer: out of memory, most likely */
        gw_sendreq_receivers(&q, u->v[0], sizeof *u->v);
    }
    u->cap = u->n = u->total = q.nreceivers;
    if (q.msg_id_len)
        memcpy(in->msg_id, q.msg_id, q.msg_id_len);
    in->msg_id[q.msg_id_len] = 0;
    in->mid.n = q.msg_id_len;
    in->q.msg_type = q.msg_type;
    in->content.n = q.content_len;
    *body = q.content;
    return true;
}

void gw__send_in_init(gw_send_in *in, size_t max_content)
{
    memset(in, 0, sizeof *in);
    in->mid = (im_str_in){.p = in->msg_id, .cap = sizeof in->msg_id};
    in->u = (gw_uids){.max = IM_RECEIVERS_MAX, .bad = -1};
    in->content = (im_bytes_in){.max = max_content};
    in->q.msg_id.funcs.decode = im_pb_read_str;
    in->q.msg_id.arg = &in->mid;
    in->q.receiver_uids.funcs.decode = gw__read_uid;
    in->q.receiver_uids.arg = &in->u;
    in->q.content.funcs.decode = im_pb_read_bytes;
    in->q.content.arg = &in->content;
}

void gw__send_in_free(gw_send_in *in)
{
    free(in->u.v);
    in->u.v = NULL;
    free(in->content.p);
    in->content.p = NULL;
}

void gw__send(gw_call *c)
{
    gw_server *g = c->g;
    gw_send_in in;
    gw__send_in_init(&in, g->c.limits.max_content);
    /* The hand reader first; what it declines goes the generic way, whose
     * answers stay the reference. Either way the same checks follow. */
    grpc_slice own = grpc_empty_slice();
    const uint8_t *req, *bytes = NULL; /* the content's (the payload's, when fast) */
    size_t req_len;
    bool fast = s_payload(c, &own, &req, &req_len) && s_send_fast(req, req_len, &in, &bytes);
    if ((!fast && gw__decode(c, imbox_v1_SendRequest_fields, &in.q, "SendRequest")) ||
        s_send_check(c, &in.mid, &in.u, &in.content) || s_send_dups(c, &in.u) ||
        s_send_rate(c, in.u.n))
        goto out;
    if (!fast)
        bytes = in.content.p;
    c->nrecv = in.u.n;
    c->receivers = in.u.v;
    in.u.v = NULL;
    c->receipts = calloc((size_t)c->nrecv, sizeof *c->receipts);
    int nparts = c->receipts ? gw__split(c) : -1;
    if (nparts < 0) {
        gw__respond(c, IM_RESOURCE_EXHAUSTED, "out of memory", NULL, 0);
        goto out;
    }
    /* Every part is built before any is sent: a reply may arrive (on the
     * bus thread) before the next part goes. gw__store_request copies the
     * content: bytes (maybe the payload's, c's) are not needed after. */
    atomic_store(&c->parts_left, nparts);
    gw_store m = {.sender = c->uid, .msg_id = in.msg_id, .msg_type = in.q.msg_type,
                  .content = bytes, .content_len = in.content.n};
    for (int i = 0; i < nparts; i++) {
        uint8_t *body;
        size_t len;
        gw_part *p = &c->parts[i];
        if (gw__store_request(p, &m, &body, &len))
            s_on_store(p, IM_INTERNAL, "shard request does not encode", NULL, 0);
        else
            gw__send_body(g, p->shard, body, len, s_on_store, p);
    }
out:
    gw__send_in_free(&in);
    grpc_slice_unref(own);
}
