/* sh_service.c - see sh_service.h. */
#include "sh_service.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <zmq.h>

#include "im_base.h"
#include "im_hash.h"
#include "im_local.h"
#include "im_log.h"
#include "im_msg.h"
#include "im_store_op.h"
#include "im_store_reply.h"
#include "im_wire.h"
#include "sh_presence.h"
#include "sh_zap.h"
#include "im_zmq.h"
#include "imbox/internal/v1/shard.pb.h"
#include "imbox/v1/imbox.pb.h"

#define SH_SWEEP_MS (10 * 60 * 1000) /* expiry sweep: cheap, and reads hide
                                        expired messages meanwhile */
#define SH_IDENT_MAX 256             /* ZeroMQ peer identities are <= 255 */
#define SH_RECV_BURST 256            /* requests taken per wake-up before
                                        replies get a turn */
#define SH_LEASE_DEFAULT_MS 3000     /* a PresenceOp without a usable lease */
#define SH_LEASE_MAX_MS 60000
#define SH_PRESENCE_OP_MAX 200000    /* uids in one PresenceOp: a gateway's
                                        whole set on this shard */
#define SH_EXPIRE_EVERY_MS 1000      /* lapsed leases dropped this often */
#define SH_HOLDERS_MAX 64            /* gateways notified per uid */
#define SH_NOTICE_ENTRY_MAX 16384    /* content carried inside a Commit ... */
#define SH_NOTICE_INLINE_MAX (1024 * 1024) /* ... while a Notice is smaller */
#define SH_INLINE_WRITES 4           /* a turn with at most this many writes
                                        commits on its own thread */
#define SH_ZAP_BURST 64              /* handshakes answered per wake-up: a
                                        storm of them cannot starve requests */
#define SH_ALONE_BYTES (16 * 1024)   /* a reply this big travels alone, as a
                                        pair, without a copy (a page) */
#define SH_PAIRS_PEERS 16            /* older gateways remembered (below) */
#define SH_HANDSHAKE_MS 5000         /* a peer that has not finished its
                                        handshake by then is dropped (a
                                        gateway needs milliseconds) */

typedef enum { JOB_STORE = 1, JOB_READ, JOB_ACK, JOB_COUNTS } sh_kind;

/* A turn's replies and notices to one peer, packed (im_zmq.h) into one
 * ZeroMQ message sent when the turn's part ends (s_out_flush). */
typedef struct sh_out {
    uint8_t ident[SH_IDENT_MAX];
    size_t ident_len;
    im_zmq_pack pk;
} sh_out;

/* A request waiting for the engine's writer. Owns copies of everything the
 * engine request points to (the decoded request buffer is reused). */
typedef struct sh_job {
    st_req req;
    sh_kind kind;
    uint8_t ident[SH_IDENT_MAX];
    size_t ident_len;
    uint8_t id[8];
    char uid[ST_UID_MAX + 1];
    char sender[ST_UID_MAX + 1];
    /* JOB_READ: the read (its after raised to the ack's cursor), done at
     * the turn's end while the committer acks (the page lies above the
     * cursor, so it does not wait for the ack; s_turn_end), and the reply
     * holding the page, sent once the ack is done (NULL: it did not
     * encode). */
    imbox_internal_v1_ReadOp read;
    struct sh_job *read_next;   /* the turn's reads to do */
    uint8_t *reply;
    size_t reply_len;
    st_put *puts;
    char *blob;             /* receivers, sender, msg_id, content */
    struct sh_job *next;
} sh_job;

struct sh_service {
    sh_config c;
    st_shard *st;
    void *router;
    sh_zap *zap;            /* the ROUTER's ZAP handler (socket thread's) */
    char endpoint[256];     /* bound, port resolved */
    int efd;
    pthread_t thread;
    atomic_bool stop;
    pthread_mutex_t mu;     /* guards sweep_stop */
    pthread_mutex_t done_mu;  /* guards done */
    sh_job *done;           /* finished jobs, newest first (the engine
                               completes them inside st_run, which the
                               committer may run; the turn answers them) */
    pthread_t sweeper;      /* the expiry sweep waits on the writer: its own
                               thread, not the socket's */
    pthread_cond_t sweep_cv;
    bool sweep_stop, sweeper_started;
    imbox_internal_v1_ShardRequest *in; /* decode scratch (thread-owned) */
    imbox_internal_v1_ShardReply *out;  /* encode scratch (thread-owned) */
    im_buf entries;                     /* page scratch (thread-owned) */
    char (*recv)[ST_UID_MAX + 1];       /* StoreOp.receivers (thread-owned) */
    int nrecv;
    sh_presence *pres;                  /* live streams (thread-owned) */
    im_buf *notices;                    /* per gateway number: Commit entries
                                           of the finished batch */
    im_buf entry;                       /* one Commit's message (thread-owned) */
    int nnotices;
    int64_t next_expire;                /* lapsed leases dropped then */
    size_t held;                        /* leases held at the last check */
    /* Local mode (no endpoint: im_local.h): no socket, no thread of its
     * own; the driver's thread runs it, and replies go to the sink. */
    bool local;
    im_local_sink sink;                 /* set by attach; .wake read under mu */
    /* The committer thread. A turn of more than SH_INLINE_WRITES writes is
     * committed there, so that the turn's thread (the socket thread, or a
     * local shard's driver) takes the next batch and answers the last one
     * during the fsync; a smaller turn is committed on the turn's thread
     * when the committer is idle: a lone Send costs no hand-off. */
    pthread_t committer;
    bool committer_started;
    int commit_efd;                     /* blocking eventfd: "run" */
    pthread_mutex_t run_mu;             /* held by whoever runs st_run */
    atomic_bool commit_stop;
    size_t turn_writes;                 /* submitted in this turn (driver) */
    sh_job *reads, **reads_tail;        /* the turn's Pulls (JOB_READ) */
    /* Socket mode, socket thread's: a request message's frames, and the
     * turn's outboxes (one per peer answered in the turn). */
    zmq_msg_t *parts;
    im_zpoll zp;            /* the ROUTER, efd, the handshakes: ZAP, failures */
    sh_out *outs;
    int nouts, outs_cap;
    /* Gateways of an older release, which send and read only the pairs
     * form: the last message from each of these identities was pairs, and
     * they are answered (notices included) in it. Any packed message takes
     * its sender off; with more older gateways than slots, the oldest
     * entry goes (that gateway then drops what it gets until it sends
     * again: a mixed-release window is short, DEPLOY.md). */
    struct {
        uint8_t ident[SH_IDENT_MAX];
        size_t len;
    } pairs_peers[SH_PAIRS_PEERS];
    int npairs, pairs_next;
    int64_t pairs_logged;   /* monotonic ms of the last warning about them */
};

/* The shard whose turn is running on this thread (its own thread, or the
 * driver's inside request/run): a request it submits to its own engine
 * needs no wake-up, since the turn runs the engine before it ends. */
static _Thread_local sh_service *s_running;

/* A list of uids decoded by callback (PresenceOp, PresenceQuery): at most
 * max are kept; an over-long or NUL-holding one makes `bad`. */
typedef struct sh_uids {
    char (*v)[IM_UID_MAX + 1];
    size_t n, cap, max;
    bool bad;
} sh_uids;

/* The gRPC status of an engine code: the one translation of st_code, here
 * where the engine meets the wire. */
static int s_status(int st_code)
{
    switch (st_code) {
    case ST_OK: return IM_OK;
    case ST_EINVAL:
    case ST_ECURSOR: return IM_INVALID_ARGUMENT;
    case ST_EFULL:
    case ST_ENOSPC:
    case ST_ENOMEM: return IM_RESOURCE_EXHAUSTED;
    case ST_ECORRUPT: return IM_DATA_LOSS;
    case ST_ECLOSED: return IM_UNAVAILABLE;
    default: return IM_INTERNAL;
    }
}

/* ------------------------------------------------------------- replies */

static bool s_write_entries(pb_ostream_t *s, const pb_field_t *f, void *const *arg)
{
    const im_buf *b = *arg;
    if (!b || b->n == 0)
        return true;
    return pb_encode_tag_for_field(s, f) && pb_encode_string(s, b->p, b->n);
}

/* Clears the reply scratch: every scalar and count, not the arrays (41 KB,
 * once per reply: measured), whose entries below their counts are written
 * in full by whoever sets a count. */
static void s_reply_reset(sh_service *sh)
{
    im_shard_reply_clear(sh->out);
    sh->out->entries = (pb_callback_t){0};
    sh->entries.n = 0;
}

/* Sends one message [ident][frame...] to the ROUTER. A peer that is gone
 * (EHOSTUNREACH under ROUTER_MANDATORY) loses it: the gateway has already
 * answered its callers UNAVAILABLE. Only the first frame can fail. */
static bool s_out_ident(sh_service *sh, const sh_out *x)
{
    if (zmq_send(sh->router, x->ident, x->ident_len, ZMQ_SNDMORE | ZMQ_DONTWAIT) >= 0)
        return true;
    if (errno != EHOSTUNREACH)
        IM_LOG_IDX(IM_LOG_ERROR, "shard", "shard", sh->c.index, "replies lost: %s",
                   zmq_strerror(errno));
    return false;
}

/* Sends x's packed replies, if any: [ident][packed frame], the frame
 * built first (im_zmq_msg_take). */
static void s_out_send(sh_service *sh, sh_out *x)
{
    if (!x->pk.count)
        return;
    zmq_msg_t m;
    if (im_zmq_pack_take(&x->pk, &m)) {
        IM_LOG_IDX(IM_LOG_ERROR, "shard", "shard", sh->c.index, "replies lost: out of memory");
        return;
    }
    if (!s_out_ident(sh, x)) {
        zmq_msg_close(&m); /* the peer is gone */
    } else if (zmq_msg_send(&m, sh->router, ZMQ_DONTWAIT) < 0) {
        IM_LOG_IDX(IM_LOG_ERROR, "shard", "shard", sh->c.index, "replies lost: %s",
                   zmq_strerror(errno));
        zmq_msg_close(&m);
    }
}

/* Sends every outbox to its peer. */
static void s_out_flush(sh_service *sh)
{
    for (int o = 0; o < sh->nouts; o++)
        s_out_send(sh, &sh->outs[o]);
    sh->nouts = 0;
}

/* The slot of peer ident among the older gateways (pairs_peers), or -1. */
static int s_peer_pairs(const sh_service *sh, const uint8_t *ident, size_t len)
{
    for (int i = 0; i < sh->npairs; i++)
        if (sh->pairs_peers[i].len == len && !memcmp(sh->pairs_peers[i].ident, ident, len))
            return i;
    return -1;
}

/* Notes the form of a message from peer ident (len <= SH_IDENT_MAX). */
static void s_peer_form(sh_service *sh, const uint8_t *ident, size_t len, bool packed)
{
    int i = s_peer_pairs(sh, ident, len);
    if (i >= 0 && packed) /* upgraded: forget it */
        sh->pairs_peers[i] = sh->pairs_peers[--sh->npairs];
    if (i >= 0 || packed)
        return;
    i = sh->npairs < SH_PAIRS_PEERS ? sh->npairs++ : sh->pairs_next++ % SH_PAIRS_PEERS;
    memcpy(sh->pairs_peers[i].ident, ident, len);
    sh->pairs_peers[i].len = len;
    int64_t now = im_mono_ms();
    if (sh->pairs_logged && now - sh->pairs_logged < 10000)
        return; /* once in 10 s: an evicted gateway comes back per message */
    sh->pairs_logged = now;
    IM_LOG_IDX(IM_LOG_WARN, "shard", "shard", sh->c.index,
               "%d gateway(s) of an older release (pairs framing) connected: answered in "
               "their form until they are upgraded",
               sh->npairs);
}

/* Queues a reply or notice (body malloc'ed, taken) for the peer ident, in
 * the peer's outbox of the turn (a full one is sent at once). A body of
 * SH_ALONE_BYTES or more (a page), and anything to an older gateway, goes
 * at once as a message [id][body] of its own, without a copy, after
 * what the outbox held, so the peer gets them in the order queued.
 * Outboxes are kept for the next turns (as many as peers answered in one
 * turn). */
static void s_out_add(sh_service *sh, const uint8_t *ident, size_t ident_len,
                      const uint8_t id[8], uint8_t *body, size_t len)
{
    sh_out *x = NULL;
    for (int o = 0; o < sh->nouts && !x; o++)
        if (sh->outs[o].ident_len == ident_len && !memcmp(sh->outs[o].ident, ident, ident_len))
            x = &sh->outs[o];
    if (!x && sh->nouts == sh->outs_cap) {
        int cap = sh->outs_cap ? 2 * sh->outs_cap : 4;
        sh_out *v = realloc(sh->outs, (size_t)cap * sizeof *v);
        if (!v)
            goto oom;
        memset(v + sh->outs_cap, 0, (size_t)(cap - sh->outs_cap) * sizeof *v);
        sh->outs = v;
        sh->outs_cap = cap;
    }
    if (!x) {
        x = &sh->outs[sh->nouts++];
        memcpy(x->ident, ident, ident_len);
        x->ident_len = ident_len;
    }
    /* asked each time: a gateway may upgrade between two messages of a turn */
    if (len >= SH_ALONE_BYTES || s_peer_pairs(sh, ident, ident_len) >= 0) {
        s_out_send(sh, x);
        zmq_msg_t m;
        if (im_zmq_msg_take(&m, body, len))
            goto lost; /* body freed */
        if (!s_out_ident(sh, x) || zmq_send(sh->router, id, 8, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0 ||
            zmq_msg_send(&m, sh->router, ZMQ_DONTWAIT) < 0)
            zmq_msg_close(&m); /* the peer is gone (or cannot be: see s_out_ident) */
        return;
    }
    int rc = im_zmq_pack_add(&x->pk, id, body, len);
    free(body);
    if (rc)
        goto lost;
    if (x->pk.count == IM_ZMQ_BATCH_MAX)
        s_out_send(sh, x);
    return;
oom:
    free(body);
lost:
    IM_LOG_IDX(IM_LOG_ERROR, "shard", "shard", sh->c.index, "reply lost: out of memory");
}

/* Encodes sh->out (with sh->entries) into *buf (malloc'ed): a Store's
 * reply (results only, the usual one) by hand, any other by nanopb; the
 * same bytes either way (im_store_reply.h). 0 or -1 (out of memory). */
static int s_reply_encode(sh_service *sh, uint8_t **buf, size_t *n)
{
    if (im_store_reply_only(sh->out, sh->entries.n))
        return im_store_reply_encode(sh->out, buf, n);
    sh->out->entries.funcs.encode = s_write_entries;
    sh->out->entries.arg = &sh->entries;
    const pb_msgdesc_t *f = imbox_internal_v1_ShardReply_fields;
    if (sh->entries.n >= IM_PB_ONE_PASS) /* a page: too big for one pass */
        return im_pb_encode_sized(f, sh->out, buf, n);
    return im_pb_encode(f, sh->out, buf, n);
}

/* Sends an encoded reply (owned: freed, or kept by the outbox) to the
 * peer: at once to a local driver, else at the turn's end (s_out_flush). */
static void s_reply_deliver(sh_service *sh, const uint8_t *ident, size_t ident_len,
                            const uint8_t id[8], uint8_t *buf, size_t n)
{
    if (sh->local) {
        if (sh->sink.reply) /* NULL once the driver is gone (sh_stop) */
            sh->sink.reply(sh->sink.arg, id, buf, n);
        free(buf);
        return;
    }
    s_out_add(sh, ident, ident_len, id, buf, n);
}

/* Sends sh->out (with sh->entries) to the peer. A peer that is gone
 * (EHOSTUNREACH under ROUTER_MANDATORY) simply loses its reply: the gateway
 * has already answered its caller UNAVAILABLE. */
static void s_reply_send(sh_service *sh, const uint8_t *ident, size_t ident_len,
                         const uint8_t id[8])
{
    uint8_t *buf;
    size_t n;
    if (s_reply_encode(sh, &buf, &n)) {
        IM_LOG_IDX(IM_LOG_ERROR, "shard", "shard", sh->c.index, "reply does not encode");
        return;
    }
    s_reply_deliver(sh, ident, ident_len, id, buf, n);
}

static void s_reply_error(sh_service *sh, const uint8_t *ident, size_t ident_len,
                          const uint8_t id[8], int code, const char *msg)
{
    s_reply_reset(sh);
    sh->out->code = code;
    im_copy_str(sh->out->error, sizeof sh->out->error, msg);
    s_reply_send(sh, ident, ident_len, id);
}

/* Reads op's page (after op->after) and encodes it as imbox.v1.PullResponse
 * field-1 entries (and each message's seq, unless op->skip_seqs). */
static void s_read_reply(sh_service *sh, const imbox_internal_v1_ReadOp *op)
{
    uint64_t after = op->after;
    st_page pg;
    st_error err;
    const char *uid = op->uid;
    int rc = st_read(sh->st, uid, op->sender[0] ? op->sender : NULL, after, op->limit,
                     op->max_bytes, &pg, &err);
    if (rc) {
        sh->out->code = s_status(rc);
        im_copy_str(sh->out->error, sizeof sh->out->error, err.msg);
        return;
    }
    for (size_t i = 0; i < pg.n; i++) {
        const st_msg *x = &pg.msgs[i];
        im_msg_view m = {x->msg_id, x->sender, uid, x->send_time_ms, x->msg_type,
                         x->content, x->content_len};
        if (im_msg_append(&sh->entries, imbox_v1_PullResponse_messages_tag, &m)) {
            sh->out->code = IM_RESOURCE_EXHAUSTED;
            im_copy_str(sh->out->error, sizeof sh->out->error, "page does not encode (memory)");
            st_page_free(&pg);
            return;
        }
    }
    sh->out->count = (uint32_t)pg.n;
    if (!op->skip_seqs) {
        sh->out->seqs_count = (pb_size_t)pg.n; /* pg.n <= limit <= IM_PAGE_MAX */
        for (size_t i = 0; i < pg.n; i++)
            sh->out->seqs[i] = pg.msgs[i].seq;
    }
    sh->out->last_seq = pg.n ? pg.msgs[pg.n - 1].seq : after;
    sh->out->more = pg.more;
    st_page_free(&pg);
}

/* Encodes a finished ST_REQ_COUNTS as imbox.v1.CountsResponse entries. */
static void s_counts_reply(sh_service *sh, const st_req *r)
{
    if (r->err.code) {
        sh->out->code = s_status(r->err.code);
        im_copy_str(sh->out->error, sizeof sh->out->error, r->err.msg);
        return;
    }
    const st_count *v = r->counts;
    size_t n = r->ncounts;
    imbox_v1_SenderCount c;
    for (size_t i = 0; i < n; i++) {
        memset(&c, 0, sizeof c);
        im_copy_str(c.sender_uid, sizeof c.sender_uid, v[i].sender);
        c.count = v[i].count;
        c.last_send_time_ms = v[i].last_send_time_ms;
        if (im_pb_append_submsg(&sh->entries, imbox_v1_CountsResponse_senders_tag,
                                imbox_v1_SenderCount_fields, &c)) {
            sh->out->code = IM_RESOURCE_EXHAUSTED;
            im_copy_str(sh->out->error, sizeof sh->out->error, "counts do not encode (memory)");
            break;
        }
    }
    sh->out->total = r->total;
}

/* --------------------------------------------------------------- push */

/*
 * A message for p->receiver was stored as p->seq: if gateways hold live
 * streams for it, queue a Commit for each (sent by s_notices_send once the
 * whole batch of finished jobs is answered: one ZeroMQ message per gateway
 * per batch). The Commit carries the message itself while it is at most
 * SH_NOTICE_ENTRY_MAX bytes and the gateway's Notice at most
 * SH_NOTICE_INLINE_MAX, so that a stream that is up to date pushes it
 * without a read round trip; past those, "read up to seq" (the stream
 * reads it, bounded by its page). Returns whether the receiver was online.
 */
static bool s_notice_add(sh_service *sh, const st_put *p)
{
    int gws[SH_HOLDERS_MAX];
    int n = sh_presence_holders(sh->pres, p->receiver, im_mono_ms(), gws, SH_HOLDERS_MAX);
    if (n == 0)
        return false;
    imbox_internal_v1_Commit c = {.seq = p->seq};
    im_copy_str(c.uid, sizeof c.uid, p->receiver);
    im_buf *e = &sh->entry;
    e->n = 0;
    if (p->content_len <= SH_NOTICE_ENTRY_MAX) {
        im_msg_view m = {p->msg_id, p->sender, p->receiver, p->send_time_ms, p->msg_type,
                         p->content, p->content_len};
        if (im_msg_append(e, imbox_v1_PullResponse_messages_tag, &m))
            e->n = 0; /* out of memory: the stream reads it */
    }
    im_bytes_out entry = {e->p, e->n};
    for (int i = 0; i < n; i++) {
        if (gws[i] >= sh->nnotices) {
            int cap = sh_presence_gateways(sh->pres);
            im_buf *v = realloc(sh->notices, (size_t)cap * sizeof *v);
            if (!v)
                continue; /* the stream catches up at its next read */
            memset(v + sh->nnotices, 0, (size_t)(cap - sh->nnotices) * sizeof *v);
            sh->notices = v;
            sh->nnotices = cap;
        }
        im_buf *b = &sh->notices[gws[i]];
        bool inline_ok = e->n && b->n + e->n <= SH_NOTICE_INLINE_MAX;
        c.entry.funcs.encode = inline_ok ? im_pb_write_bytes : NULL;
        c.entry.arg = inline_ok ? &entry : NULL;
        im_pb_append_submsg(b, imbox_internal_v1_Notice_commits_tag,
                            imbox_internal_v1_Commit_fields, &c);
    }
    return true;
}

/* Sends each gateway its Notice: [routing id][8 zero bytes][Commit entries]
 * (a Notice holds nothing but its repeated commits). A gateway that is
 * gone loses it: its streams went with it. */
static void s_notices_send(sh_service *sh)
{
    static const uint8_t zero[8];
    for (int g = 0; g < sh->nnotices; g++) {
        im_buf *b = &sh->notices[g];
        if (b->n == 0)
            continue;
        if (sh->local) { /* one gateway: the driver */
            if (sh->sink.notice)
                sh->sink.notice(sh->sink.arg, b->p, b->n);
            b->n = 0;
            continue;
        }
        size_t idn;
        const uint8_t *idp = sh_presence_gateway_id(sh->pres, g, &idn);
        uint8_t *body = b->p; /* the outbox takes the buffer */
        size_t len = b->n;
        *b = (im_buf){0};
        s_out_add(sh, idp, idn, zero, body, len);
    }
}

/* --------------------------------------------------------- engine jobs */

static void s_job_free(sh_job *j)
{
    free(j->reply);
    free(j->puts);
    free(j->blob);
    free(j->req.counts);
    free(j);
}

static void s_job_done(st_req *r);
static void s_commit_kick(sh_service *sh);

static void s_job_finish(sh_service *sh, sh_job *j)
{
    if (j->kind == JOB_READ && !j->req.err.code && j->reply) {
        s_reply_deliver(sh, j->ident, j->ident_len, j->id, j->reply, j->reply_len);
        j->reply = NULL;
        s_job_free(j);
        return;
    }
    s_reply_reset(sh);
    switch (j->kind) {
    case JOB_STORE:
        if (j->req.err.code == ST_ENOSPC) { /* the receipts' text: disk full */
            sh->out->code = IM_RESOURCE_EXHAUSTED;
            im_copy_str(sh->out->error, sizeof sh->out->error, j->req.err.msg);
            break;
        }
        sh->out->results_count = (pb_size_t)j->req.nputs;
        for (size_t i = 0; i < j->req.nputs; i++) {
            const st_put *p = &j->puts[i];
            imbox_internal_v1_StoreResult *res = &sh->out->results[i];
            res->code = s_status(p->code);
            res->duplicate = p->duplicate;
            res->seq = p->seq;
            res->send_time_ms = p->send_time_ms;
            res->online = p->code == ST_OK && !p->duplicate && s_notice_add(sh, p);
        }
        break;
    case JOB_ACK:
        sh->out->code = s_status(j->req.err.code);
        im_copy_str(sh->out->error, sizeof sh->out->error, j->req.err.msg);
        sh->out->deleted = j->req.deleted;
        break;
    case JOB_READ: /* the ack failed, or the page did not encode */
        sh->out->code = j->req.err.code ? s_status(j->req.err.code) : IM_INTERNAL;
        im_copy_str(sh->out->error, sizeof sh->out->error,
                    j->req.err.code ? j->req.err.msg : "reply does not encode");
        break;
    case JOB_COUNTS:
        s_counts_reply(sh, &j->req);
        break;
    }
    s_reply_send(sh, j->ident, j->ident_len, j->id);
    s_job_free(j);
}

/* Takes the finished jobs and answers them, oldest first. */
static void s_drain_done(sh_service *sh)
{
    pthread_mutex_lock(&sh->done_mu);
    sh_job *list = sh->done;
    sh->done = NULL;
    pthread_mutex_unlock(&sh->done_mu);
    sh_job *rev = NULL;
    while (list) {
        sh_job *n = list->next;
        list->next = rev;
        rev = list;
        list = n;
    }
    while (rev) {
        sh_job *n = rev->next;
        s_job_finish(sh, rev);
        rev = n;
    }
    s_notices_send(sh);
}

/* ------------------------------------------------------------ requests */

/* Refuses a uid that breaks the uid rule or that another shard owns. */
static bool s_owned(sh_service *sh, const char *uid, const uint8_t *ident, size_t ident_len,
                    const uint8_t id[8])
{
    char msg[160];
    if (im_uid_check(uid, "uid", msg, sizeof msg)) {
        s_reply_error(sh, ident, ident_len, id, IM_INVALID_ARGUMENT, msg);
        return false;
    }
    int owner = im_shard_of(uid, sh->c.count);
    if (owner == sh->c.index)
        return true;
    snprintf(msg, sizeof msg, "uid '%.64s' belongs to shard %d, this is shard %d of %d", uid,
             owner, sh->c.index, sh->c.count);
    s_reply_error(sh, ident, ident_len, id, IM_FAILED_PRECONDITION, msg);
    return false;
}

static sh_job *s_job_new(sh_service *sh, sh_kind kind, const uint8_t *ident, size_t ident_len,
                         const uint8_t id[8])
{
    sh_job *j = calloc(1, sizeof *j);
    if (!j)
        return NULL;
    j->kind = kind;
    memcpy(j->ident, ident, ident_len);
    j->ident_len = ident_len;
    memcpy(j->id, id, 8);
    j->req.done = s_job_done;
    j->req.arg = sh;
    return j;
}

/* Submits j to the engine; on refusal answers at once and returns false. */
static bool s_job_submit(sh_service *sh, sh_job *j)
{
    if (st_submit(sh->st, &j->req) == ST_OK) {
        sh->turn_writes++;
        return true;
    }
    s_reply_error(sh, j->ident, j->ident_len, j->id, s_status(j->req.err.code),
                  j->req.err.msg);
    s_job_free(j);
    return false;
}

static void s_store(sh_service *sh, const imbox_internal_v1_StoreOp *op,
                    const im_bytes_in *content, const uint8_t *ident, size_t ident_len,
                    const uint8_t id[8])
{
    if (sh->nrecv == 0) {
        s_reply_error(sh, ident, ident_len, id, IM_INVALID_ARGUMENT, "receivers: empty");
        return;
    }
    for (int i = 0; i < sh->nrecv; i++)
        if (!s_owned(sh, sh->recv[i], ident, ident_len, id))
            return;
    sh_job *j = s_job_new(sh, JOB_STORE, ident, ident_len, id);
    size_t sl = strlen(op->sender) + 1, ml = strlen(op->msg_id) + 1, rl = 0;
    for (int i = 0; i < sh->nrecv; i++)
        rl += strlen(sh->recv[i]) + 1;
    if (j) {
        j->puts = calloc((size_t)sh->nrecv, sizeof *j->puts);
        j->blob = malloc(sl + ml + rl + content->n + 1);
    }
    if (!j || !j->puts || !j->blob) {
        if (j)
            s_job_free(j);
        s_reply_error(sh, ident, ident_len, id, IM_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    char *b = j->blob;
    const char *sender = memcpy(b, op->sender, sl);
    b += sl;
    const char *msg_id = memcpy(b, op->msg_id, ml);
    b += ml;
    const void *body = b;
    if (content->n)
        memcpy(b, content->p, content->n);
    b += content->n;
    for (int i = 0; i < sh->nrecv; i++) {
        size_t n = strlen(sh->recv[i]) + 1;
        st_put *p = &j->puts[i];
        p->receiver = memcpy(b, sh->recv[i], n);
        b += n;
        p->sender = sender;
        p->msg_id = msg_id;
        p->msg_type = op->msg_type;
        p->content = body;
        p->content_len = content->n;
    }
    j->req.type = ST_REQ_APPEND;
    j->req.nputs = (size_t)sh->nrecv;
    j->req.puts = j->puts;
    s_job_submit(sh, j);
}

/* An AckOp (read NULL), or the ack of a ReadOp (JOB_READ, read). */
static void s_ack_job(sh_service *sh, sh_kind kind, const char *uid, const char *sender,
                      uint64_t upto, const uint8_t *ident, size_t ident_len, const uint8_t id[8],
                      const imbox_internal_v1_ReadOp *read)
{
    char msg[160];
    if (sender[0] && im_uid_check(sender, "sender", msg, sizeof msg)) {
        s_reply_error(sh, ident, ident_len, id, IM_INVALID_ARGUMENT, msg);
        return;
    }
    sh_job *j = s_job_new(sh, kind, ident, ident_len, id);
    if (!j) {
        s_reply_error(sh, ident, ident_len, id, IM_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    im_copy_str(j->uid, sizeof j->uid, uid);
    im_copy_str(j->sender, sizeof j->sender, sender);
    j->req.type = ST_REQ_ACK;
    j->req.uid = j->uid;
    j->req.sender = j->sender[0] ? j->sender : NULL;
    j->req.upto = upto;
    if (read) {
        j->read = *read;
        j->read.after = upto > read->after ? upto : read->after;
    }
    if (!s_job_submit(sh, j) || !read)
        return;
    *sh->reads_tail = j; /* read at the turn's end (s_turn_end) */
    sh->reads_tail = &j->read_next;
}

/* Counts are read and answered at once, like a page without an ack, unless
 * a message of the inbox has expired: then they go to the writer, which
 * purges first (the socket thread does not wait for it). */
static void s_counts_job(sh_service *sh, const char *uid, const uint8_t *ident,
                         size_t ident_len, const uint8_t id[8])
{
    st_req r = {.type = ST_REQ_COUNTS, .uid = uid};
    bool purge = false;
    if (st_counts_read(sh->st, uid, &r.counts, &r.ncounts, &r.total, &purge, &r.err) ||
        !purge) {
        s_reply_reset(sh);
        s_counts_reply(sh, &r);
        s_reply_send(sh, ident, ident_len, id);
        free(r.counts);
        return;
    }
    sh_job *j = s_job_new(sh, JOB_COUNTS, ident, ident_len, id);
    if (!j) {
        s_reply_error(sh, ident, ident_len, id, IM_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    im_copy_str(j->uid, sizeof j->uid, uid);
    j->req.type = ST_REQ_COUNTS;
    j->req.uid = j->uid;
    s_job_submit(sh, j);
}

/* A read with an ack acks on the writer (like every write) while it reads
 * above the cursor, and is answered when the ack is done; without an ack
 * it is answered at once. */
static void s_read_op(sh_service *sh, const imbox_internal_v1_ReadOp *op, const uint8_t *ident,
                      size_t ident_len, const uint8_t id[8])
{
    if (!s_owned(sh, op->uid, ident, ident_len, id))
        return;
    if (op->ack_upto) {
        s_ack_job(sh, JOB_READ, op->uid, op->sender, op->ack_upto, ident, ident_len, id, op);
        return;
    }
    s_reply_reset(sh);
    s_read_reply(sh, op);
    s_reply_send(sh, ident, ident_len, id);
}

/* StoreOp.receivers, decoded by callback into sh->recv. The gateway has
 * validated them; anything else talking to this port is refused whole. */
static bool s_read_receiver(pb_istream_t *s, const pb_field_t *f, void **arg)
{
    (void)f;
    sh_service *sh = *arg;
    size_t n = s->bytes_left;
    if (sh->nrecv == IM_RECEIVERS_MAX || n > ST_UID_MAX)
        PB_RETURN_ERROR(s, "too many receivers or a receiver over 64 bytes");
    char *dst = sh->recv[sh->nrecv++];
    if (!pb_read(s, (uint8_t *)dst, n))
        return false;
    dst[n] = 0;
    return true;
}

/* A uid of a PresenceOp or PresenceQuery list, into the sh_uids at *arg. */
static bool s_read_uid_list(pb_istream_t *s, const pb_field_t *f, void **arg)
{
    (void)f;
    sh_uids *u = *arg;
    size_t n = s->bytes_left;
    if (u->n == u->max)
        PB_RETURN_ERROR(s, "too many uids");
    if (n > IM_UID_MAX) {
        u->bad = true;
        return pb_read(s, NULL, n);
    }
    if (u->n == u->cap) {
        size_t cap = u->cap ? 2 * u->cap : 64;
        void *v = realloc(u->v, cap * sizeof *u->v);
        if (!v)
            PB_RETURN_ERROR(s, "out of memory");
        u->v = v;
        u->cap = cap;
    }
    char *dst = u->v[u->n];
    if (!pb_read(s, (uint8_t *)dst, n))
        return false;
    dst[n] = 0;
    if (im_uid_check(dst, "uid", NULL, 0))
        u->bad = true;
    else
        u->n++;
    return true;
}

/* Whether every uid is valid and this shard's; answers otherwise. */
static bool s_uids_ok(sh_service *sh, const sh_uids *u, const uint8_t *ident, size_t ident_len,
                      const uint8_t id[8])
{
    if (u->bad) {
        s_reply_error(sh, ident, ident_len, id, IM_INVALID_ARGUMENT,
                      "uids: one is not a valid uid");
        return false;
    }
    for (size_t i = 0; i < u->n; i++)
        if (!s_owned(sh, u->v[i], ident, ident_len, id))
            return false;
    return true;
}

/* PresenceOp: the sending gateway's live streams (see sh_presence.h). */
static void s_presence_op(sh_service *sh, const imbox_internal_v1_PresenceOp *op,
                          const sh_uids *on, const sh_uids *off, const uint8_t *ident,
                          size_t ident_len, const uint8_t id[8])
{
    if (!s_uids_ok(sh, on, ident, ident_len, id) || !s_uids_ok(sh, off, ident, ident_len, id))
        return;
    int gw = sh_presence_gateway(sh->pres, ident, ident_len);
    if (gw < 0) {
        s_reply_error(sh, ident, ident_len, id, IM_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    int64_t lease = op->lease_ms >= 100 && op->lease_ms <= SH_LEASE_MAX_MS ? op->lease_ms
                                                                         : SH_LEASE_DEFAULT_MS;
    int64_t until = im_mono_ms() + lease;
    sh_presence_begin(sh->pres, gw);
    bool oom = false;
    for (size_t i = 0; i < on->n; i++)
        oom |= sh_presence_set(sh->pres, gw, on->v[i], until) != 0;
    for (size_t i = 0; i < off->n; i++)
        sh_presence_clear(sh->pres, gw, off->v[i]);
    sh_presence_end(sh->pres, gw, op->full && !oom);
    if (oom) {
        s_reply_error(sh, ident, ident_len, id, IM_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    s_reply_reset(sh);
    s_reply_send(sh, ident, ident_len, id);
}

/* PresenceQuery: online flags in request order. */
static void s_presence_query(sh_service *sh, const sh_uids *u, const uint8_t *ident,
                             size_t ident_len, const uint8_t id[8])
{
    if (!s_uids_ok(sh, u, ident, ident_len, id))
        return;
    s_reply_reset(sh);
    int64_t now = im_mono_ms();
    int gw;
    for (size_t i = 0; i < u->n; i++)
        sh->out->online[i] = sh_presence_holders(sh->pres, u->v[i], now, &gw, 1) > 0;
    sh->out->online_count = (pb_size_t)u->n;
    s_reply_send(sh, ident, ident_len, id);
}

/* A Store in the gateway's own form (im_store_op.h), read in place: the
 * same call of s_store as the generic decode below would make. Returns
 * false, having done nothing, for any other request. */
static bool s_store_fast(sh_service *sh, const uint8_t *ident, size_t ident_len,
                         const uint8_t id[8], const uint8_t *body, size_t len)
{
    imbox_internal_v1_StoreOp *op = &sh->in->store;
    const im_store_op_limits lim = {
        .sender_max = sizeof op->sender - 1, .msg_id_max = sizeof op->msg_id - 1,
        .content_max = ST_CONTENT_MAX, .uid_max = ST_UID_MAX,
        .receivers_max = IM_RECEIVERS_MAX,
    };
    im_store_op v;
    if (!im_store_op_read(body, len, &lim, &v, sh->recv[0]))
        return false;
    sh->nrecv = v.nreceivers;
    if (v.sender_len) /* an absent field has no pointer */
        memcpy(op->sender, v.sender, v.sender_len);
    op->sender[v.sender_len] = 0;
    if (v.msg_id_len)
        memcpy(op->msg_id, v.msg_id, v.msg_id_len);
    op->msg_id[v.msg_id_len] = 0;
    op->msg_type = v.msg_type;
    im_bytes_in content = {.p = (uint8_t *)v.content, .n = v.content_len};
    s_store(sh, op, &content, ident, ident_len, id);
    return true;
}

static void s_handle(sh_service *sh, const uint8_t *ident, size_t ident_len, const uint8_t id[8],
                     const uint8_t *body, size_t len)
{
    if (s_store_fast(sh, ident, ident_len, id, body, len))
        return;
    imbox_internal_v1_ShardRequest *in = sh->in;
    memset(in, 0, sizeof *in);
    sh->nrecv = 0;
    im_bytes_in content = {.max = ST_CONTENT_MAX};
    in->store.receivers.funcs.decode = s_read_receiver;
    in->store.receivers.arg = sh;
    in->store.content.funcs.decode = im_pb_read_bytes;
    in->store.content.arg = &content;
    sh_uids on = {.max = SH_PRESENCE_OP_MAX}, off = {.max = SH_PRESENCE_OP_MAX};
    sh_uids query = {.max = IM_PRESENCE_MAX};
    in->presence.online.funcs.decode = s_read_uid_list;
    in->presence.online.arg = &on;
    in->presence.offline.funcs.decode = s_read_uid_list;
    in->presence.offline.arg = &off;
    in->query.uids.funcs.decode = s_read_uid_list;
    in->query.uids.arg = &query;
    pb_istream_t is = pb_istream_from_buffer(body, len);
    if (!pb_decode(&is, imbox_internal_v1_ShardRequest_fields, in) || content.over) {
        char msg[160];
        snprintf(msg, sizeof msg, "request does not decode: %s",
                 content.over ? "content too large" : PB_GET_ERROR(&is));
        s_reply_error(sh, ident, ident_len, id, IM_INVALID_ARGUMENT, msg);
        goto out;
    }
    int ops = in->has_store + in->has_read + in->has_ack + in->has_counts + in->has_presence +
              in->has_query + in->has_health;
    if (ops != 1) {
        s_reply_error(sh, ident, ident_len, id, IM_INVALID_ARGUMENT,
                      "request must hold exactly one operation");
    } else if (in->has_store) {
        s_store(sh, &in->store, &content, ident, ident_len, id);
    } else if (in->has_read) {
        s_read_op(sh, &in->read, ident, ident_len, id);
    } else if (in->has_ack) {
        const imbox_internal_v1_AckOp *op = &in->ack;
        if (s_owned(sh, op->uid, ident, ident_len, id))
            s_ack_job(sh, JOB_ACK, op->uid, op->sender, op->upto, ident, ident_len, id, NULL);
    } else if (in->has_presence) {
        s_presence_op(sh, &in->presence, &on, &off, ident, ident_len, id);
    } else if (in->has_query) {
        s_presence_query(sh, &query, ident, ident_len, id);
    } else if (in->has_health) {
        if (st_writable(sh->st))
            s_reply_error(sh, ident, ident_len, id, IM_OK, "");
        else
            s_reply_error(sh, ident, ident_len, id, IM_UNAVAILABLE,
                          "the shard refuses writes (disk full or database closed)");
    } else if (s_owned(sh, in->counts.uid, ident, ident_len, id)) {
        s_counts_job(sh, in->counts.uid, ident, ident_len, id);
    }
out:
    free(content.p);
    free(on.v);
    free(off.v);
    free(query.v);
}

/* Receives one message: [identity] then a batch of up to IM_ZMQ_BATCH_MAX
 * requests (im_zmq.h; a gateway sends a turn's requests to this shard in
 * one). Malformed framing drops the whole message (there is no id to
 * answer to). Returns the requests handled, -1 for a dropped message, 0
 * when none is waiting. */
static int s_recv_msg(sh_service *sh)
{
    zmq_msg_t *parts = sh->parts;
    int max = 1 + 2 * IM_ZMQ_BATCH_MAX;
    int n = im_zmq_recv(sh->router, parts, max);
    if (n == 0)
        return 0;
    im_zmq_batch in;
    const uint8_t *ident = zmq_msg_data(&parts[0]);
    size_t ident_len = zmq_msg_size(&parts[0]);
    bool ok = ident_len <= SH_IDENT_MAX && im_zmq_batch_open(&in, parts, 1, n, max);
    if (ok) {
        s_peer_form(sh, ident, ident_len, in.packed);
        const uint8_t *id, *body;
        size_t len;
        while (im_zmq_batch_next(&in, &id, &body, &len))
            s_handle(sh, ident, ident_len, id, body, len);
    } else {
        IM_LOG_IDX(IM_LOG_WARN, "shard", "shard", sh->c.index, "dropped a message of %d frames", n);
    }
    im_zmq_close(parts, n, max);
    return ok ? in.count : -1;
}

static void s_sweep(sh_service *sh)
{
    uint64_t purged = 0;
    st_error err;
    if (st_expire(sh->st, &purged, &err))
        IM_LOG_IDX(IM_LOG_ERROR, "shard", "shard", sh->c.index, "expiry sweep: %s", err.msg);
    else if (purged)
        IM_LOG_IDX(IM_LOG_INFO, "shard", "shard", sh->c.index,
                   "purged %llu expired messages", (unsigned long long)purged);
}

/* The sweeper thread: st_expire() every period until sh_stop. */
static void *s_sweep_main(void *arg)
{
    sh_service *sh = arg;
    im_thread_name("sh%d-sweep", sh->c.index);
    int64_t period = sh->c.sweep_ms > 0 ? sh->c.sweep_ms : SH_SWEEP_MS;
    pthread_mutex_lock(&sh->mu);
    while (!sh->sweep_stop) {
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_sec += period / 1000;
        until.tv_nsec += (period % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        int rc = 0;
        while (!sh->sweep_stop && rc != ETIMEDOUT)
            rc = pthread_cond_timedwait(&sh->sweep_cv, &sh->mu, &until);
        if (sh->sweep_stop)
            break;
        pthread_mutex_unlock(&sh->mu);
        s_sweep(sh);
        pthread_mutex_lock(&sh->mu);
    }
    pthread_mutex_unlock(&sh->mu);
    return NULL;
}

static void s_sweeper_stop(sh_service *sh)
{
    if (!sh->sweeper_started)
        return;
    pthread_mutex_lock(&sh->mu);
    sh->sweep_stop = true;
    pthread_cond_signal(&sh->sweep_cv);
    pthread_mutex_unlock(&sh->mu);
    pthread_join(sh->sweeper, NULL);
    sh->sweeper_started = false;
}

/* Wakes the thread waiting on the eventfd fd (the socket thread's or the
 * committer's). */
static void s_kick(sh_service *sh, int fd)
{
    uint64_t one = 1;
    if (write(fd, &one, sizeof one) < 0)
        IM_LOG_IDX(IM_LOG_ERROR, "shard", "shard", sh->c.index,
                   "eventfd write: %s", strerror(errno));
}

static void s_commit_kick(sh_service *sh)
{
    s_kick(sh, sh->commit_efd);
}

/* The end of a turn: commits the writes queued by the turn's requests as
 * one group commit (what arrived while the last commit was being fsync'ed
 * waited in the socket or the driver's queue, so this is the batch), here
 * when they are few and the committer is idle, else on the committer (and
 * always there when the turn holds a Pull's ack: it runs there while the
 * turn's thread reads the page); answers every write finished so far;
 * drops lapsed leases once a second. */
static void s_turn_end(sh_service *sh)
{
    if (sh->turn_writes) {
        if (!sh->reads && sh->turn_writes <= SH_INLINE_WRITES &&
            pthread_mutex_trylock(&sh->run_mu) == 0) {
            st_run(sh->st);
            pthread_mutex_unlock(&sh->run_mu);
        } else {
            s_commit_kick(sh); /* busy, a big batch, or Pulls to read */
        }
    }
    sh->turn_writes = 0;
    /* The Pulls' pages, read and encoded here while the committer acks. */
    for (sh_job *j = sh->reads; j; j = j->read_next) {
        s_reply_reset(sh);
        s_read_reply(sh, &j->read);
        if (s_reply_encode(sh, &j->reply, &j->reply_len))
            j->reply = NULL;
    }
    sh->reads = NULL;
    sh->reads_tail = &sh->reads;
    s_drain_done(sh);
    int64_t now = im_mono_ms();
    if (now >= sh->next_expire) {
        sh->held = sh_presence_expire(sh->pres, now);
        sh->next_expire = now + SH_EXPIRE_EVERY_MS;
    } else if (!sh->held) {
        sh->held = 1; /* a PresenceOp may have come: check at the next turn */
    }
}

static void s_committer_stop(sh_service *sh);

static void *s_main(void *arg)
{
    sh_service *sh = arg;
    im_thread_name("sh%d-socket", sh->c.index);
    s_running = sh;
    im_zpoll *zp = &sh->zp;
    while (!atomic_load(&sh->stop)) {
        /* Asleep unless leases are held: then awake once a second to drop
         * the lapsed ones (a dead gateway's users go offline). */
        long wait = sh->held ? SH_EXPIRE_EVERY_MS : -1;
        if (im_zpoll_wait(zp, wait) < 0) {
            IM_LOG_IDX(IM_LOG_ERROR, "shard", "shard", sh->c.index,
                       "poll: %s", zmq_strerror(errno));
            break;
        }
        uint64_t v; /* a wake-up: the committer finished a round, or sh_stop */
        if (zp->in[1] && read(sh->efd, &v, sizeof v) < 0 && errno != EAGAIN)
            IM_LOG_IDX(IM_LOG_ERROR, "shard", "shard", sh->c.index, "eventfd: %s", strerror(errno));
        if (zp->in[2] || zp->in[3]) { /* handshakes wait */
            sh_zap_serve(sh->zap, SH_ZAP_BURST);
            im_zpoll_dirty(zp, 2); /* it replied, and may have left some */
            im_zpoll_dirty(zp, 3);
        }
        for (int i = 0, k; i < SH_RECV_BURST && (k = s_recv_msg(sh)) != 0; i += k > 0 ? k : 1)
            ;
        s_out_flush(sh); /* the reads' answers go before the commit */
        s_turn_end(sh);
        s_out_flush(sh);
        im_zpoll_dirty(zp, 0); /* read and written every turn */
    }
    /* Every accepted request completes before st_close returns (the
     * committer's round first); answer them while the socket is open. */
    s_committer_stop(sh);
    st_close(&sh->st);
    s_drain_done(sh);
    s_out_flush(sh);
    return NULL;
}

static void s_wake(void *arg)
{
    sh_service *sh = arg;
    if (s_running == sh) /* its own turn: it ends the turn before it sleeps */
        return;
    s_commit_kick(sh); /* the sweeper: the committer runs it */
}

/* Engine callback, inside st_run (this thread, or the committer): queue
 * the job; the turn answers it (s_drain_done). */
static void s_job_done(st_req *r)
{
    sh_service *sh = r->arg;
    sh_job *j = (sh_job *)r; /* req is the first member */
    pthread_mutex_lock(&sh->done_mu);
    j->next = sh->done;
    sh->done = j;
    pthread_mutex_unlock(&sh->done_mu);
}

/* Wakes the thread that answers (the socket thread, or a local shard's
 * driver) after a round of the committer. */
static void s_wake_answerer(sh_service *sh)
{
    if (!sh->local) {
        s_kick(sh, sh->efd);
        return;
    }
    pthread_mutex_lock(&sh->mu);
    im_local_sink k = sh->sink;
    pthread_mutex_unlock(&sh->mu);
    if (k.wake)
        k.wake(k.arg);
}

/* The committer runs what a turn handed over, round after round while more
 * comes, and wakes the answering thread after each. */
static void *s_commit_main(void *arg)
{
    sh_service *sh = arg;
    im_thread_name("sh%d-commit", sh->c.index);
    for (;;) {
        uint64_t v;
        if (read(sh->commit_efd, &v, sizeof v) < 0 && errno != EINTR) {
            IM_LOG_IDX(IM_LOG_ERROR, "shard", "shard", sh->c.index, "eventfd: %s", strerror(errno));
            break;
        }
        if (atomic_load(&sh->commit_stop))
            break;
        pthread_mutex_lock(&sh->run_mu);
        while (st_run(sh->st))
            s_wake_answerer(sh);
        pthread_mutex_unlock(&sh->run_mu);
    }
    return NULL;
}

static void s_committer_stop(sh_service *sh)
{
    if (!sh->committer_started)
        return;
    atomic_store(&sh->commit_stop, true);
    s_commit_kick(sh);
    pthread_join(sh->committer, NULL);
    sh->committer_started = false;
}

/* --------------------------------------------------------- start, stop */

static void s_free(sh_service *sh)
{
    s_sweeper_stop(sh);
    s_committer_stop(sh);
    st_close(&sh->st);
    if (sh->router) {
        sh_zap_unwatch(sh->zap, sh->router);
        zmq_close(sh->router);
    }
    sh_zap_destroy(&sh->zap);
    im_zpoll_free(&sh->zp);
    if (sh->efd >= 0)
        close(sh->efd);
    if (sh->commit_efd >= 0)
        close(sh->commit_efd);
    pthread_cond_destroy(&sh->sweep_cv);
    pthread_mutex_destroy(&sh->mu);
    pthread_mutex_destroy(&sh->run_mu);
    pthread_mutex_destroy(&sh->done_mu);
    im_buf_free(&sh->entries);
    im_buf_free(&sh->entry);
    for (int o = 0; o < sh->outs_cap; o++) /* flushed: no pack is open */
        im_zmq_pack_free(&sh->outs[o].pk);
    free(sh->outs);
    free(sh->parts);
    for (int i = 0; i < sh->nnotices; i++)
        im_buf_free(&sh->notices[i]);
    free(sh->notices);
    sh_presence_destroy(&sh->pres);
    free(sh->in);
    free(sh->out);
    free(sh->recv);
    free(sh);
}

sh_service *sh_start(const sh_config *c, char *err, size_t errlen)
{
    sh_service *sh = calloc(1, sizeof *sh);
    if (!sh) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    sh->c = *c;
    memset(&sh->c.secret, 0, sizeof sh->c.secret); /* keys derive from c */
    sh->efd = sh->commit_efd = -1;
    sh->reads_tail = &sh->reads;
    sh->local = c->endpoint == NULL;
    pthread_mutex_init(&sh->mu, NULL);
    pthread_mutex_init(&sh->run_mu, NULL);
    pthread_mutex_init(&sh->done_mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&sh->sweep_cv, &ca);
    pthread_condattr_destroy(&ca);
    if (c->count < 1 || c->index < 0 || c->index >= c->count) {
        snprintf(err, errlen, "shard index %d out of 0..%d", c->index, c->count - 1);
        s_free(sh);
        return NULL;
    }
    sh->in = malloc(sizeof *sh->in);
    sh->out = malloc(sizeof *sh->out);
    sh->recv = malloc(IM_RECEIVERS_MAX * sizeof *sh->recv);
    sh->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    sh->pres = sh_presence_new();
    if (!sh->in || !sh->out || !sh->recv || sh->efd < 0 || !sh->pres) {
        snprintf(err, errlen, "out of memory or eventfd: %s", strerror(errno));
        s_free(sh);
        return NULL;
    }
    mkdir(c->dir, 0700);
    st_error e;
    st_options o = c->st;
    o.wake = s_wake; /* inline: the engine writes on the socket thread, and */
    o.wake_arg = sh; /* the sweeper's requests wake that thread */
    if (st_open(c->dir, &o, &sh->st, &e)) {
        snprintf(err, errlen, "shard %d: %s", c->index, e.msg);
        s_free(sh);
        return NULL;
    }
    if ((sh->commit_efd = eventfd(0, EFD_CLOEXEC)) < 0 ||
        pthread_create(&sh->committer, NULL, s_commit_main, sh)) {
        snprintf(err, errlen, "shard %d: committer thread", c->index);
        s_free(sh);
        return NULL;
    }
    sh->committer_started = true;
    if (sh->local) {
        if (pthread_create(&sh->sweeper, NULL, s_sweep_main, sh)) {
            snprintf(err, errlen, "shard %d: sweeper thread", c->index);
            s_free(sh);
            return NULL;
        }
        sh->sweeper_started = true;
        return sh;
    }
    /* CURVE keys from the secret; the ZAP handler before the ROUTER, so
     * that no handshake is ever answered without it. */
    im_zmq_curve keys;
    if (im_zmq_curve_derive(&c->secret, &keys, err, errlen) ||
        !(sh->zap = sh_zap_new(c->zctx, keys.client_public, c->index, err, errlen))) {
        im_zmq_curve_wipe(&keys);
        s_free(sh);
        return NULL;
    }
    sh->parts = malloc((1 + 2 * IM_ZMQ_BATCH_MAX) * sizeof *sh->parts);
    sh->router = sh->parts ? zmq_socket(c->zctx, ZMQ_ROUTER) : NULL;
    int one = 1, linger = 1000, hwm = 100000, handshake = SH_HANDSHAKE_MS;
    size_t eplen = sizeof sh->endpoint;
    /* HANDOVER: a gateway that reconnects keeps its routing id (its
     * presence and notices follow it to the new connection). */
    int keyed = sh->router ? im_zmq_curve_server(sh->router, &keys) : -1;
    im_zmq_curve_wipe(&keys);
    if (keyed || sh_zap_watch(sh->zap, sh->router, err, errlen) ||
        zmq_setsockopt(sh->router, ZMQ_ROUTER_MANDATORY, &one, sizeof one) ||
        zmq_setsockopt(sh->router, ZMQ_HANDSHAKE_IVL, &handshake, sizeof handshake) ||
        zmq_setsockopt(sh->router, ZMQ_ROUTER_HANDOVER, &one, sizeof one) ||
        zmq_setsockopt(sh->router, ZMQ_LINGER, &linger, sizeof linger) ||
        zmq_setsockopt(sh->router, ZMQ_SNDHWM, &hwm, sizeof hwm) ||
        zmq_setsockopt(sh->router, ZMQ_RCVHWM, &hwm, sizeof hwm) ||
        zmq_bind(sh->router, c->endpoint) ||
        zmq_getsockopt(sh->router, ZMQ_LAST_ENDPOINT, sh->endpoint, &eplen)) {
        snprintf(err, errlen, "shard %d: bind %s: %s", c->index, c->endpoint,
                 zmq_strerror(errno));
        s_free(sh);
        return NULL;
    }
    if (im_zpoll_init(&sh->zp, 4)) {
        snprintf(err, errlen, "shard %d: out of memory", c->index);
        s_free(sh);
        return NULL;
    }
    im_zpoll_fd(&sh->zp, 1, sh->efd);
    if (im_zpoll_socket(&sh->zp, 0, sh->router) || sh_zap_poll(sh->zap, &sh->zp, 2)) {
        snprintf(err, errlen, "shard %d: ZMQ_FD: %s", c->index, zmq_strerror(errno));
        s_free(sh);
        return NULL;
    }
    int rc = pthread_create(&sh->sweeper, NULL, s_sweep_main, sh);
    if (rc) {
        snprintf(err, errlen, "shard %d: sweeper thread: %s", c->index, strerror(rc));
        s_free(sh);
        return NULL;
    }
    sh->sweeper_started = true;
    rc = pthread_create(&sh->thread, NULL, s_main, sh);
    if (rc) {
        snprintf(err, errlen, "shard %d: thread: %s", c->index, strerror(rc));
        s_free(sh);
        return NULL;
    }
    return sh;
}

/* ---------------------------------------------------------- local mode */

static void s_local_attach(void *obj, const im_local_sink *sink)
{
    sh_service *sh = obj;
    pthread_mutex_lock(&sh->mu);
    sh->sink = *sink;
    pthread_mutex_unlock(&sh->mu);
}

static void s_local_request(void *obj, const uint8_t *ident, size_t ident_len,
                            const uint8_t id[8], const uint8_t *body, size_t len)
{
    sh_service *sh = obj;
    if (ident_len > SH_IDENT_MAX)
        return; /* a driver bug; ZeroMQ ids are <= 255 bytes */
    s_running = sh;
    s_handle(sh, ident, ident_len, id, body, len);
    s_running = NULL;
}

static void s_local_run(void *obj)
{
    sh_service *sh = obj;
    s_running = sh;
    s_turn_end(sh);
    s_running = NULL;
}

bool sh_writable(const sh_service *sh)
{
    return st_writable(sh->st);
}

const char *sh_endpoint(const sh_service *sh)
{
    return sh && !sh->local ? sh->endpoint : NULL;
}

im_local_shard sh_local(sh_service *sh)
{
    im_local_shard l = {0};
    if (sh && sh->local)
        l = (im_local_shard){sh, s_local_attach, s_local_request, s_local_run};
    return l;
}

st_shard *sh_engine(sh_service *sh)
{
    return sh ? sh->st : NULL;
}

void sh_quiesce(sh_service *sh)
{
    if (sh)
        s_sweeper_stop(sh);
}

void sh_stop(sh_service **sp)
{
    if (!sp || !*sp)
        return;
    sh_service *sh = *sp;
    s_sweeper_stop(sh); /* before the socket thread closes the engine */
    if (sh->local) {
        /* The driver is gone: whatever it queued and did not run is
         * executed by st_close, and its replies are dropped. */
        pthread_mutex_lock(&sh->mu);
        sh->sink = (im_local_sink){0};
        pthread_mutex_unlock(&sh->mu);
        s_committer_stop(sh);
        st_close(&sh->st);
        s_drain_done(sh);
        s_free(sh);
        *sp = NULL;
        return;
    }
    atomic_store(&sh->stop, true);
    s_kick(sh, sh->efd);
    pthread_join(sh->thread, NULL);
    s_free(sh);
    *sp = NULL;
}

int sh_index(const sh_service *s)
{
    return s->c.index;
}

