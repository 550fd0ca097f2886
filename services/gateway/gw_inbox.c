/* gw_inbox.c - Pull, Ack and Counts: one shard request each
 * (see gw_call.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gw_call.h"
#include "im_auth.h"
#include "im_hash.h"

/* -------------------------------------------------- Pull, Ack, Counts */

/* A read with the reply budget spent (gw_call.h) answers RESOURCE_EXHAUSTED
 * before the shard is asked: nothing is acked. */
static int s_busy(gw_call *c)
{
    if (gw__budget_room(c->g))
        return 0;
    gw__respond(c, IM_RESOURCE_EXHAUSTED, "the server holds too many responses that clients "
                "have not read: retry later", NULL, 0);
    return -1;
}

static void s_on_pull(void *arg, int status, const char *why, const uint8_t *reply, size_t len)
{
    gw_call *c = arg;
    im_bytes_in entries;
    if (gw__shard_reply(c, status, why, reply, len, &entries))
        return;
    const imbox_internal_v1_ShardReply *r = c->g->shard_reply;
    imbox_v1_PullResponse resp = {0};
    if (im_cursor_make(&c->g->c.secret, c->uid, c->sender, r->last_seq, resp.cursor,
                       sizeof resp.cursor)) {
        free(entries.p);
        gw__respond(c, IM_INTERNAL, "cursor does not encode", NULL, 0);
        return;
    }
    resp.more = r->more;
    gw__respond_pb(c, imbox_v1_PullResponse_fields, &resp, entries.p, entries.n);
}

/* A request's cursor, decoded by callback, then parsed. */
void gw__pull(gw_call *c)
{
    imbox_v1_PullRequest q = {0};
    gw_cursor k;
    char sender[IM_UID_MAX + 1] = "";
    im_str_in sin = {.p = sender, .cap = sizeof sender};
    gw__cursor_init(&k, &q.cursor);
    q.sender_uid.funcs.decode = im_pb_read_str;
    q.sender_uid.arg = &sin;
    if (gw__decode(c, imbox_v1_PullRequest_fields, &q, "PullRequest"))
        return;
    unsigned max_page = c->g->c.limits.max_page;
    if (q.page_size > max_page) {
        gw__respond_errf(c, IM_INVALID_ARGUMENT, "page_size: %u, at most %u", q.page_size,
                         max_page);
        return;
    }
    char msg[160];
    if (gw__str(c, &sin, "sender_uid", IM_UID_MAX, false))
        return;
    if (sender[0] && im_uid_check(sender, "sender_uid", msg, sizeof msg)) {
        gw__respond(c, IM_INVALID_ARGUMENT, msg, NULL, 0);
        return;
    }
    uint64_t seq;
    char scope[IM_UID_MAX + 1] = "";
    if (gw__cursor(c, &k, &seq, scope))
        return;
    if (k.in.n && strcmp(scope, sender) != 0) {
        gw__respond_errf(c, IM_INVALID_ARGUMENT,
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
    im_copy_str(op->uid, sizeof op->uid, c->uid);
    memcpy(op->sender, sender, sizeof sender);
    op->ack_upto = seq;
    op->limit = q.page_size ? q.page_size
                : GW_PAGE_DEFAULT < max_page ? GW_PAGE_DEFAULT : max_page;
    op->max_bytes = GW_PAGE_BYTES;
    op->skip_seqs = true;
    if (s_busy(c))
        return;
    gw__to_shard(c, im_shard_of(c->uid, c->g->c.nshards), s_on_pull, c);
}

static void s_on_ack(void *arg, int status, const char *why, const uint8_t *reply, size_t len)
{
    gw_call *c = arg;
    im_bytes_in entries;
    if (gw__shard_reply(c, status, why, reply, len, &entries))
        return;
    free(entries.p);
    imbox_v1_AckResponse resp = {.deleted = c->g->shard_reply->deleted};
    gw__respond_pb(c, imbox_v1_AckResponse_fields, &resp, NULL, 0);
}

void gw__ack(gw_call *c)
{
    imbox_v1_AckRequest q = {0};
    gw_cursor k;
    gw__cursor_init(&k, &q.cursor);
    if (gw__decode(c, imbox_v1_AckRequest_fields, &q, "AckRequest"))
        return;
    if (k.in.n == 0 && !k.in.over) {
        gw__respond(c, IM_INVALID_ARGUMENT, "cursor: empty (pass a Pull response's cursor)",
                    NULL, 0);
        return;
    }
    uint64_t seq;
    char scope[IM_UID_MAX + 1] = "";
    if (gw__cursor(c, &k, &seq, scope))
        return;
    imbox_internal_v1_ShardRequest *sr = c->g->shard_req;
    memset(sr, 0, sizeof *sr);
    sr->has_ack = true;
    im_copy_str(sr->ack.uid, sizeof sr->ack.uid, c->uid);
    im_copy_str(sr->ack.sender, sizeof sr->ack.sender, scope);
    sr->ack.upto = seq;
    gw__to_shard(c, im_shard_of(c->uid, c->g->c.nshards), s_on_ack, c);
}

static void s_on_counts(void *arg, int status, const char *why, const uint8_t *reply,
                        size_t len)
{
    gw_call *c = arg;
    im_bytes_in entries;
    if (gw__shard_reply(c, status, why, reply, len, &entries))
        return;
    imbox_v1_CountsResponse resp = {.total = c->g->shard_reply->total};
    gw__respond_pb(c, imbox_v1_CountsResponse_fields, &resp, entries.p, entries.n);
}

void gw__counts(gw_call *c)
{
    imbox_v1_CountsRequest q = {0};
    if (gw__decode(c, imbox_v1_CountsRequest_fields, &q, "CountsRequest"))
        return;
    imbox_internal_v1_ShardRequest *sr = c->g->shard_req;
    memset(sr, 0, sizeof *sr);
    sr->has_counts = true;
    im_copy_str(sr->counts.uid, sizeof sr->counts.uid, c->uid);
    if (s_busy(c))
        return;
    gw__to_shard(c, im_shard_of(c->uid, c->g->c.nshards), s_on_counts, c);
}

/* grpc.health.v1.Health/Check: SERVING for "" and "imbox.v1.Inbox". */
