/* gw_presence.c - Presence: whether each uid has a live stream on some
 * gateway, asked of the uids' shards (where the leases live), all shards at
 * once (see gw_call.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gw_call.h"

/* One shard's answer (bus thread); the last part answers the call. A shard
 * that cannot answer fails the call (UNAVAILABLE): "offline" would be a
 * guess. */
static void s_on_query(void *arg, int status, const char *why, const uint8_t *reply,
                       size_t len)
{
    gw_part *p = arg;
    gw_call *c = p->c;
    const imbox_internal_v1_ShardReply *r = c->g->shard_reply;
    status = gw__shard_decode(c->g, status, &why, reply, len, NULL);
    if (!status && r->online_count != (pb_size_t)p->n) {
        status = IM_INTERNAL;
        why = "shard reply has the wrong number of answers";
    }
    if (status && !c->fail) {
        c->fail = status;
        snprintf(c->why, sizeof c->why, "%.*s", (int)sizeof c->why - 1, why ? why : "shard failed");
    }
    for (int i = 0; !status && i < p->n; i++)
        c->online[gw__part_at(p, i)] = r->online[i];
    if (atomic_fetch_sub(&c->parts_left, 1) != 1)
        return;
    if (c->fail) {
        gw__respond(c, c->fail, c->why, NULL, 0);
        return;
    }
    imbox_v1_PresenceResponse resp = imbox_v1_PresenceResponse_init_zero;
    resp.online_count = (pb_size_t)c->nrecv;
    memcpy(resp.online, c->online, (size_t)c->nrecv * sizeof *c->online);
    gw__respond_pb(c, imbox_v1_PresenceResponse_fields, &resp, NULL, 0);
}

void gw__presence(gw_call *c)
{
    gw_server *g = c->g;
    imbox_v1_PresenceRequest q = imbox_v1_PresenceRequest_init_zero;
    gw_uids u = {.max = IM_PRESENCE_MAX, .bad = -1};
    q.uids.funcs.decode = gw__read_uid;
    q.uids.arg = &u;
    if (gw__decode(c, imbox_v1_PresenceRequest_fields, &q, "PresenceRequest") ||
        gw__uids_check(c, &u, "uids", "uids", 0, IM_PRESENCE_MAX))
        goto out;
    if (u.n == 0) {
        imbox_v1_PresenceResponse resp = imbox_v1_PresenceResponse_init_zero;
        gw__respond_pb(c, imbox_v1_PresenceResponse_fields, &resp, NULL, 0);
        goto out;
    }
    c->nrecv = u.n;
    c->receivers = u.v;
    u.v = NULL;
    c->online = calloc((size_t)c->nrecv, sizeof *c->online);
    int nparts = c->online ? gw__split(c) : -1;
    if (nparts < 0) {
        gw__respond(c, IM_RESOURCE_EXHAUSTED, "out of memory", NULL, 0);
        goto out;
    }
    /* Every part is built before any is sent: a reply may arrive (on the
     * bus thread) before the next part goes. */
    atomic_store(&c->parts_left, nparts);
    imbox_internal_v1_ShardRequest *sr = g->shard_req;
    for (int i = 0; i < nparts; i++) {
        memset(sr, 0, sizeof *sr);
        sr->has_query = true;
        sr->query.uids.funcs.encode = gw__write_part_uids;
        sr->query.uids.arg = &c->parts[i];
        gw__to_shard(c, c->parts[i].shard, s_on_query, &c->parts[i]);
    }
out:
    free(u.v);
}
