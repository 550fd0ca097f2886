/* gw_send.c - Send: validation, split by shard, receipts
 * (see gw_call.h). */
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gw_call.h"
#include "im_hash.h"

_Static_assert(sizeof(((imbox_internal_v1_StoreOp *)0)->sender) >= IM_UID_MAX + 1,
               "StoreOp.sender holds any uid");

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
        r.online = c->receipts[i].online;
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
    gw__respond_pb(c, imbox_v1_SendResponse_fields, &resp, NULL, 0);
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
        rc->code = res->code;
        snprintf(rc->error, sizeof rc->error, "%s", im_receipt_text(res->code));
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

void gw__send(gw_call *c)
{
    gw_server *g = c->g;
    imbox_v1_SendRequest q;
    memset(&q, 0, sizeof q);
    gw_uids u = {.max = IM_RECEIVERS_MAX, .bad = -1};
    im_bytes_in content = {.max = g->c.limits.max_content};
    char msg_id[IM_MSGID_MAX + 1];
    im_str_in mid = {.p = msg_id, .cap = sizeof msg_id};
    msg_id[0] = 0;
    q.msg_id.funcs.decode = im_pb_read_str;
    q.msg_id.arg = &mid;
    q.receiver_uids.funcs.decode = gw__read_uid;
    q.receiver_uids.arg = &u;
    q.content.funcs.decode = im_pb_read_bytes;
    q.content.arg = &content;
    if (gw__decode(c, imbox_v1_SendRequest_fields, &q, "SendRequest") ||
        s_send_check(c, &mid, &u, &content) || s_send_dups(c, &u))
        goto out;
    c->nrecv = u.n;
    c->receivers = u.v;
    u.v = NULL;
    c->receipts = calloc((size_t)c->nrecv, sizeof *c->receipts);
    int nparts = c->receipts ? gw__split(c) : -1;
    if (nparts < 0) {
        gw__respond(c, IM_RESOURCE_EXHAUSTED, "out of memory", NULL, 0);
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
        memcpy(op->sender, c->uid, strlen(c->uid) + 1); /* fits: _Static_assert */
        memcpy(op->msg_id, msg_id, mid.n + 1);
        op->msg_type = q.msg_type;
        op->content.funcs.encode = im_pb_write_bytes;
        op->content.arg = &body;
        op->receivers.funcs.encode = gw__write_part_uids;
        op->receivers.arg = &c->parts[i];
        gw__to_shard(c, c->parts[i].shard, s_on_store, &c->parts[i]);
    }
out:
    free(u.v);
    free(content.p);
}
