/* gw_send.c - Send: validation, split by shard, receipts
 * (see gw_call.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gw_call.h"
#include "im_hash.h"

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

/* Answers INVALID_ARGUMENT if a receiver is listed twice. */
static int s_send_dups(gw_call *c, const gw_uids *u)
{
    const char **v = malloc((size_t)u->n * sizeof *v);
    if (!v) {
        gw__respond(c, IM_RESOURCE_EXHAUSTED, "out of memory", NULL, 0);
        return -1;
    }
    for (int i = 0; i < u->n; i++)
        v[i] = u->v[i];
    qsort(v, (size_t)u->n, sizeof *v, s_uid_cmp);
    for (int i = 1; i < u->n; i++)
        if (strcmp(v[i - 1], v[i]) == 0) {
            gw__respond_errf(c, IM_INVALID_ARGUMENT, "receiver_uids: '%s' is listed twice",
                             v[i]);
            free(v);
            return -1;
        }
    free(v);
    return 0;
}

/* StoreOp.receivers of one part, encoded by callback. */
bool gw__write_part_uids(pb_ostream_t *s, const pb_field_t *f, void *const *arg)
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
int gw__split(gw_call *c, int *part_shard)
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

void gw__send(gw_call *c)
{
    gw_server *g = c->g;
    imbox_v1_SendRequest q;
    memset(&q, 0, sizeof q);
    gw_uids u = {.v = malloc(IM_RECEIVERS_MAX * sizeof *u.v), .max = IM_RECEIVERS_MAX,
                 .bad = -1};
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
    int *part_shard = malloc((size_t)g->c.nshards * sizeof *part_shard);
    if (!u.v || !part_shard) {
        gw__respond(c, IM_RESOURCE_EXHAUSTED, "out of memory", NULL, 0);
        goto out;
    }
    if (gw__decode(c, imbox_v1_SendRequest_fields, &q, "SendRequest") ||
        s_send_check(c, &mid, &u, &content) || s_send_dups(c, &u))
        goto out;
    c->nrecv = u.n;
    c->receivers = u.v;
    u.v = NULL;
    c->receipts = calloc((size_t)c->nrecv, sizeof *c->receipts);
    int nparts = c->receipts ? gw__split(c, part_shard) : -1;
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
        snprintf(op->sender, sizeof op->sender, "%s", c->uid);
        memcpy(op->msg_id, msg_id, mid.n + 1);
        op->msg_type = q.msg_type;
        op->content.funcs.encode = im_pb_write_bytes;
        op->content.arg = &body;
        op->receivers.funcs.encode = gw__write_part_uids;
        op->receivers.arg = &c->parts[i];
        gw__to_shard(c, part_shard[i], s_on_store, &c->parts[i]);
    }
out:
    free(u.v);
    free(content.p);
    free(part_shard);
}
