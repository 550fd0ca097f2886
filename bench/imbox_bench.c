/*
 * imbox_bench.c - imbox-bench: the load generator (bench_core.c) driving
 * imbox over gRPC. Not a test: it measures; it exits 1 when a reply broke
 * the contract (docs/PROTOCOL.md) or the server could not be driven.
 *
 *   imbox-bench --addr HOST:PORT --data-dir DIR [--channels 1]
 *               --workload send|drain|counts|noop|mixed|push|push-idle
 *               [the engine's flags: imbox-bench --help]
 *
 * The driver. One completion queue and one thread (the engine's): every
 * call is asynchronous, a unary batch of six ops with its own tag, spread
 * round-robin over --channels channels (each its own HTTP/2 connection);
 * poll() waits on the queue until the engine's deadline, then takes what
 * else is ready without waiting. The ops, as docs/PROTOCOL.md defines them:
 *
 *   BC_SEND    Inbox/Send {msg_id, receiver_uids, msg_type 1, content} with
 *              the sender's token; one Receipt per receiver, in order, each
 *              naming its receiver: code 0 = stored (or duplicate), else
 *              refused with the code's name
 *   BC_PULL    Inbox/Pull {cursor, page_size, sender_uid} with the owner's
 *              token; every Message must be addressed to the owner
 *   BC_COUNTS  Inbox/Counts {} with the owner's token
 *   BC_NOOP    grpc.health.v1.Health/Check {} without a token: SERVING
 *
 * Tokens are minted from --data-dir's auth.secret (the server's: it must
 * exist) once per uid and cached. Replies are decoded with nanopb into
 * bounded structs (imbox.options) and callbacks bounded here: a page of
 * more than BC_PAGE_MAX + 1 messages, more receipts than receivers or more
 * than IB_COUNTS_MAX senders fail the decode; whatever does not parse is
 * status -1 "MALFORMED", a Message for another receiver "WRONG_RECEIVER".
 * The strings handed to the engine live in this driver's scratch buffers
 * until the next completion (bc_done copies what it keeps).
 *
 * --workload push runs push_core (shared with push_bench): K Subscribe
 * streams on --sub-addr (default --addr), Sends at --rate through --addr,
 * the send-to-push latency from each Send's intended time; push-idle is
 * push_bench's idle mode (K idle streams; RSS per stream of --server-pid's
 * first pid). Both read --seconds, --content, --server-pid and
 * --max-outstanding (the cap on Sends in flight) from the engine's flags.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>

#include <pb_decode.h>
#include <pb_encode.h>

#include "bench_core.h"
#include "im_auth.h"
#include "imbox/v1/imbox.pb.h"
#include "push_core.h"

#define IB_MAX_CHANNELS 256
#define IB_OPEN_WAIT_MS 5000      /* open(): every channel answers Health by then */
#define IB_CLOSE_WAIT_NS 5000000000LL
#define IB_POLL_BATCH 256         /* completions taken per poll() without waiting */
#define IB_COUNTS_MAX 1000000     /* senders in one CountsResponse */
#define IB_TOKEN_TTL_S (8 * 86400) /* longer than the longest run (--seconds) */
#define IB_AUTH_MAX (IM_TOKEN_MAX + 8)

static const char *const s_paths[BC_KINDS] = {
    "/imbox.v1.Inbox/Send", "/imbox.v1.Inbox/Pull", "/imbox.v1.Inbox/Counts",
    "/grpc.health.v1.Health/Check",
};

static const char *s_code_name(int code)
{
    static const char *const names[] = {
        "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
        "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL",
        "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
    };
    return code >= 0 && code <= 16 ? names[code] : "UNKNOWN";
}

/* One unary call in flight: its tag is the struct itself. Kept on a list
 * (to cancel them all at close) and recycled through a free list. */
typedef struct ib_call {
    bc_op *op;                   /* NULL: open()'s Health check */
    grpc_call *call;
    grpc_byte_buffer *req, *resp;
    grpc_metadata md;
    grpc_metadata_array imd, tmd;
    grpc_status_code status;
    grpc_slice details;
    const char *errstr;
    struct ib_call *prev, *next;
} ib_call;

typedef struct ib_tok {          /* uid -> "Bearer <token>" */
    char *uid;
    char *auth;
    size_t len;
} ib_tok;

/* Decoded replies (valid until the next completion). */
typedef struct ib_page {
    bc_entry *ents;
    char (*ids)[sizeof(((imbox_v1_Message *)0)->msg_id)];
    char (*snd)[sizeof(((imbox_v1_Message *)0)->sender_uid)];
    size_t n, cap;
    const char *owner;
    size_t wrong;                /* messages addressed to someone else */
    char cursor[sizeof(((imbox_v1_PullResponse *)0)->cursor)];
} ib_page;

typedef struct ib_counts {
    bc_count *cs;
    char (*snd)[sizeof(((imbox_v1_SenderCount *)0)->sender_uid)];
    size_t n, cap;
} ib_counts;

typedef struct ib_receipts {
    bc_op *op;
    int n;
    bool mismatch;               /* a receipt named another receiver */
} ib_receipts;

typedef struct ib {
    /* flags */
    const char *addr, *sub_addr, *data_dir;
    int nch;
    uint32_t subscribers, ack_every, ack_ms, per_channel;
    bool subscribers_set;

    grpc_completion_queue *cq;
    grpc_channel *ch[IB_MAX_CHANNELS];
    int next_ch;
    im_secret secret;
    ib_tok *toks;
    size_t ntoks, captoks;
    ib_call *live, *spare;
    int outstanding;
    bool inited;
    ib_page page;
    ib_counts counts;
    int64_t open_ms;
} ib;

/* ------------------------------------------------------------- tokens */

static uint64_t s_hash(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 0x100000001b3ULL;
    return h;
}

/* The "Bearer <token>" of uid, minted on first use. NULL when the uid
 * cannot have a token (the run stops). */
static const ib_tok *s_auth(ib *b, const char *uid)
{
    if (2 * (b->ntoks + 1) > b->captoks) {
        size_t cap = b->captoks ? 2 * b->captoks : 1024;
        ib_tok *t = calloc(cap, sizeof *t);
        if (!t)
            return NULL;
        for (size_t i = 0; i < b->captoks; i++) {
            if (!b->toks[i].uid)
                continue;
            size_t j = s_hash(b->toks[i].uid) & (cap - 1);
            while (t[j].uid)
                j = (j + 1) & (cap - 1);
            t[j] = b->toks[i];
        }
        free(b->toks);
        b->toks = t;
        b->captoks = cap;
    }
    size_t j = s_hash(uid) & (b->captoks - 1);
    while (b->toks[j].uid) {
        if (!strcmp(b->toks[j].uid, uid))
            return &b->toks[j];
        j = (j + 1) & (b->captoks - 1);
    }
    char tok[IM_TOKEN_MAX], auth[IB_AUTH_MAX];
    if (im_token_make(&b->secret, uid, (int64_t)time(NULL) + IB_TOKEN_TTL_S, tok, sizeof tok)) {
        fprintf(stderr, "imbox-bench: no token for uid '%s'\n", uid);
        return NULL;
    }
    int n = snprintf(auth, sizeof auth, "Bearer %s", tok);
    ib_tok *e = &b->toks[j];
    e->uid = strdup(uid);
    e->auth = strdup(auth);
    if (!e->uid || !e->auth) {
        free(e->uid);
        free(e->auth);
        e->uid = e->auth = NULL;
        return NULL;
    }
    e->len = (size_t)n;
    b->ntoks++;
    return e;
}

/* ----------------------------------------------------------- encoding */

static bool s_put_bytes(pb_ostream_t *os, uint32_t tag, const void *p, size_t n)
{
    return n == 0 || (pb_encode_tag(os, PB_WT_STRING, tag) &&
                      pb_encode_string(os, (const pb_byte_t *)p, n));
}

static bool s_enc_req(pb_ostream_t *os, const bc_op *op)
{
    switch (op->kind) {
    case BC_SEND:
        if (!s_put_bytes(os, imbox_v1_SendRequest_msg_id_tag, op->msg_id, strlen(op->msg_id)))
            return false;
        for (int i = 0; i < op->nreceivers; i++)
            if (!pb_encode_tag(os, PB_WT_STRING, imbox_v1_SendRequest_receiver_uids_tag) ||
                !pb_encode_string(os, (const pb_byte_t *)op->receivers[i],
                                  strlen(op->receivers[i])))
                return false;
        return pb_encode_tag(os, PB_WT_VARINT, imbox_v1_SendRequest_msg_type_tag) &&
               pb_encode_varint(os, 1) &&
               s_put_bytes(os, imbox_v1_SendRequest_content_tag, op->content, op->content_len);
    case BC_PULL:
        return s_put_bytes(os, imbox_v1_PullRequest_cursor_tag, op->cursor,
                           op->cursor ? strlen(op->cursor) : 0) &&
               pb_encode_tag(os, PB_WT_VARINT, imbox_v1_PullRequest_page_size_tag) &&
               pb_encode_varint(os, (uint64_t)op->page) &&
               s_put_bytes(os, imbox_v1_PullRequest_sender_uid_tag, op->sender,
                           op->sender ? strlen(op->sender) : 0);
    default:
        return true; /* CountsRequest and HealthCheckRequest: empty */
    }
}

static grpc_byte_buffer *s_encode(const bc_op *op)
{
    pb_ostream_t sizing = PB_OSTREAM_SIZING;
    if (!s_enc_req(&sizing, op))
        return NULL;
    grpc_slice sl = grpc_slice_malloc(sizing.bytes_written);
    pb_ostream_t os = pb_ostream_from_buffer(GRPC_SLICE_START_PTR(sl), sizing.bytes_written);
    if (!s_enc_req(&os, op)) {
        grpc_slice_unref(sl);
        return NULL;
    }
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&sl, 1);
    grpc_slice_unref(sl);
    return bb;
}

/* ----------------------------------------------------------- decoding */

static bool s_decode(grpc_byte_buffer *bb, const pb_msgdesc_t *fields, void *dest)
{
    grpc_byte_buffer_reader r;
    if (!bb || !grpc_byte_buffer_reader_init(&r, bb))
        return false;
    grpc_slice all = grpc_byte_buffer_reader_readall(&r);
    grpc_byte_buffer_reader_destroy(&r);
    pb_istream_t is = pb_istream_from_buffer(GRPC_SLICE_START_PTR(all), GRPC_SLICE_LENGTH(all));
    bool ok = pb_decode(&is, fields, dest);
    grpc_slice_unref(all);
    return ok;
}

static bool s_dec_len(pb_istream_t *is, const pb_field_t *f, void **arg)
{
    (void)f;
    *(size_t *)*arg = is->bytes_left; /* a repeated bytes field: the last wins */
    return pb_read(is, NULL, is->bytes_left);
}

static bool s_dec_msg(pb_istream_t *is, const pb_field_t *f, void **arg)
{
    (void)f;
    ib_page *pg = *arg;
    if (pg->n == pg->cap)
        PB_RETURN_ERROR(is, "page longer than any page size");
    imbox_v1_Message m = imbox_v1_Message_init_zero;
    size_t clen = 0;
    m.content.funcs.decode = s_dec_len;
    m.content.arg = &clen;
    if (!pb_decode(is, imbox_v1_Message_fields, &m))
        return false;
    size_t i = pg->n++;
    memcpy(pg->ids[i], m.msg_id, sizeof pg->ids[i]);
    memcpy(pg->snd[i], m.sender_uid, sizeof pg->snd[i]);
    pg->ids[i][sizeof pg->ids[i] - 1] = 0;
    pg->snd[i][sizeof pg->snd[i] - 1] = 0;
    pg->ents[i] = (bc_entry){pg->ids[i], pg->snd[i], clen};
    if (strcmp(m.receiver_uid, pg->owner))
        pg->wrong++;
    return true;
}

static bool s_dec_count(pb_istream_t *is, const pb_field_t *f, void **arg)
{
    (void)f;
    ib_counts *c = *arg;
    imbox_v1_SenderCount sc = imbox_v1_SenderCount_init_zero;
    if (!pb_decode(is, imbox_v1_SenderCount_fields, &sc))
        return false;
    if (c->n == c->cap) {
        if (c->cap >= IB_COUNTS_MAX)
            PB_RETURN_ERROR(is, "too many senders");
        size_t cap = c->cap ? 2 * c->cap : 256;
        bc_count *cs = realloc(c->cs, cap * sizeof *cs);
        if (cs)
            c->cs = cs;
        void *snd = cs ? realloc(c->snd, cap * sizeof *c->snd) : NULL;
        if (!cs || !snd)
            PB_RETURN_ERROR(is, "out of memory");
        c->snd = snd;
        c->cap = cap;
    }
    memcpy(c->snd[c->n], sc.sender_uid, sizeof c->snd[c->n]);
    c->snd[c->n][sizeof c->snd[c->n] - 1] = 0;
    c->cs[c->n].count = sc.count;
    c->n++;
    return true;
}

static bool s_dec_receipt(pb_istream_t *is, const pb_field_t *f, void **arg)
{
    (void)f;
    ib_receipts *x = *arg;
    imbox_v1_Receipt r = imbox_v1_Receipt_init_zero;
    if (x->n >= x->op->nreceivers)
        PB_RETURN_ERROR(is, "more receipts than receivers");
    if (!pb_decode(is, imbox_v1_Receipt_fields, &r))
        return false;
    bc_op *op = x->op;
    int i = x->n++;
    if (strcmp(r.receiver_uid, op->receivers[i]))
        x->mismatch = true;
    if (r.code == 0) {
        op->stored[i] = r.duplicate ? BC_DUPLICATE : BC_STORED;
    } else {
        op->stored[i] = BC_REFUSED;
        if (!op->refused_name)
            op->refused_name = s_code_name(r.code);
    }
    return true;
}

static void s_fail(bc_op *op, const char *name)
{
    op->status = -1;
    op->status_name = name;
}

/* Fills op's result part from the finished call c. */
static void s_result(ib *b, ib_call *c)
{
    bc_op *op = c->op;
    if (c->status != GRPC_STATUS_OK) {
        op->status = (int)c->status;
        op->status_name = s_code_name(c->status);
        return;
    }
    op->status = 0;
    switch (op->kind) {
    case BC_SEND: {
        ib_receipts x = {op, 0, false};
        imbox_v1_SendResponse r = imbox_v1_SendResponse_init_zero;
        r.receipts.funcs.decode = s_dec_receipt;
        r.receipts.arg = &x;
        if (!s_decode(c->resp, imbox_v1_SendResponse_fields, &r) || x.n != op->nreceivers ||
            x.mismatch)
            s_fail(op, "MALFORMED");
        break;
    }
    case BC_PULL: {
        ib_page *pg = &b->page;
        pg->n = 0;
        pg->wrong = 0;
        pg->owner = op->receivers[0];
        imbox_v1_PullResponse r = imbox_v1_PullResponse_init_zero;
        r.messages.funcs.decode = s_dec_msg;
        r.messages.arg = pg;
        if (!s_decode(c->resp, imbox_v1_PullResponse_fields, &r)) {
            s_fail(op, "MALFORMED");
            break;
        }
        if (pg->wrong) {
            s_fail(op, "WRONG_RECEIVER");
            break;
        }
        memcpy(pg->cursor, r.cursor, sizeof pg->cursor);
        pg->cursor[sizeof pg->cursor - 1] = 0;
        op->entries = pg->ents;
        op->nentries = pg->n;
        op->next_cursor = pg->cursor;
        break;
    }
    case BC_COUNTS: {
        ib_counts *cn = &b->counts;
        cn->n = 0;
        imbox_v1_CountsResponse r = imbox_v1_CountsResponse_init_zero;
        r.senders.funcs.decode = s_dec_count;
        r.senders.arg = cn;
        if (!s_decode(c->resp, imbox_v1_CountsResponse_fields, &r)) {
            s_fail(op, "MALFORMED");
            break;
        }
        for (size_t i = 0; i < cn->n; i++)
            cn->cs[i].sender = cn->snd[i];
        op->counts = cn->cs;
        op->ncounts = cn->n;
        break;
    }
    case BC_NOOP: {
        /* HealthCheckResponse{status: SERVING} is the two bytes 08 01. */
        grpc_byte_buffer_reader r;
        bool ok = c->resp && grpc_byte_buffer_reader_init(&r, c->resp);
        if (ok) {
            grpc_slice all = grpc_byte_buffer_reader_readall(&r);
            grpc_byte_buffer_reader_destroy(&r);
            ok = GRPC_SLICE_LENGTH(all) == 2 && GRPC_SLICE_START_PTR(all)[0] == 0x08 &&
                 GRPC_SLICE_START_PTR(all)[1] == 0x01;
            grpc_slice_unref(all);
        }
        if (!ok)
            s_fail(op, "NOT_SERVING");
        break;
    }
    default:
        s_fail(op, "MALFORMED");
    }
}

/* -------------------------------------------------------------- calls */

static void s_call_free(ib *b, ib_call *c)
{
    if (c->req)
        grpc_byte_buffer_destroy(c->req);
    if (c->resp)
        grpc_byte_buffer_destroy(c->resp);
    grpc_metadata_array_destroy(&c->imd);
    grpc_metadata_array_destroy(&c->tmd);
    grpc_slice_unref(c->details);
    gpr_free((void *)c->errstr);
    if (c->call)
        grpc_call_unref(c->call);
    if (c->prev)
        c->prev->next = c->next;
    else if (b->live == c)
        b->live = c->next;
    if (c->next)
        c->next->prev = c->prev;
    memset(c, 0, sizeof *c);
    c->next = b->spare;
    b->spare = c;
}

/* Starts op on the next channel (op NULL: Health on channel ch). */
static int s_call_start(ib *b, bc_op *op, int ch, int timeout_ms)
{
    bc_kind kind = op ? op->kind : BC_NOOP;
    const ib_tok *auth = NULL;
    if (kind != BC_NOOP) {
        auth = s_auth(b, kind == BC_SEND ? op->sender : op->receivers[0]);
        if (!auth)
            return -1;
    }
    ib_call *c = b->spare;
    if (c)
        b->spare = c->next;
    else if (!(c = calloc(1, sizeof *c))) {
        fprintf(stderr, "imbox-bench: out of memory\n");
        return -1;
    }
    memset(c, 0, sizeof *c);
    c->op = op;
    c->details = grpc_empty_slice();
    grpc_metadata_array_init(&c->imd);
    grpc_metadata_array_init(&c->tmd);
    c->next = b->live;
    if (b->live)
        b->live->prev = c;
    b->live = c;
    c->req = op ? s_encode(op) : grpc_raw_byte_buffer_create(NULL, 0);
    if (!c->req) {
        fprintf(stderr, "imbox-bench: a request did not encode\n");
        s_call_free(b, c);
        return -1;
    }
    gpr_timespec deadline = gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                                         gpr_time_from_millis(timeout_ms, GPR_TIMESPAN));
    c->call = grpc_channel_create_call(b->ch[ch], NULL, GRPC_PROPAGATE_DEFAULTS, b->cq,
                                       grpc_slice_from_static_string(s_paths[kind]), NULL,
                                       deadline, NULL);
    if (auth) {
        c->md.key = grpc_slice_from_static_string("authorization");
        c->md.value = grpc_slice_from_static_buffer(auth->auth, auth->len);
    }
    grpc_op ops[6];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[0].data.send_initial_metadata.count = auth ? 1 : 0;
    ops[0].data.send_initial_metadata.metadata = auth ? &c->md : NULL;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = c->req;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &c->imd;
    ops[4].op = GRPC_OP_RECV_MESSAGE;
    ops[4].data.recv_message.recv_message = &c->resp;
    ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[5].data.recv_status_on_client.trailing_metadata = &c->tmd;
    ops[5].data.recv_status_on_client.status = &c->status;
    ops[5].data.recv_status_on_client.status_details = &c->details;
    ops[5].data.recv_status_on_client.error_string = &c->errstr;
    grpc_call_error e = grpc_call_start_batch(c->call, ops, 6, c, NULL);
    if (e != GRPC_CALL_OK) { /* a refused batch never completes: our bug */
        fprintf(stderr, "imbox-bench: grpc_call_start_batch refused (%d)\n", (int)e);
        abort();
    }
    b->outstanding++;
    return 0;
}

static gpr_timespec s_deadline(int64_t deadline_ns)
{
    int64_t wait = deadline_ns - bc_now_ns();
    return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                        gpr_time_from_nanos(wait > 0 ? wait : 0, GPR_TIMESPAN));
}

/* ------------------------------------------------------------- driver */

static int s_grpc_close(ib *b);

static int s_start(void *self, bc_op *op)
{
    ib *b = self;
    int ch = b->next_ch;
    b->next_ch = (b->next_ch + 1) % b->nch;
    return s_call_start(b, op, ch, bc_options()->timeout_ms);
}

/* Handles one event; returns the finished call's status, or -1. */
static int s_event(ib *b, grpc_event ev, bool deliver)
{
    if (ev.type != GRPC_OP_COMPLETE)
        return -1;
    ib_call *c = ev.tag;
    b->outstanding--;
    if (!ev.success && c->status == GRPC_STATUS_OK)
        c->status = GRPC_STATUS_UNKNOWN; /* the batch failed as a whole */
    int st = (int)c->status;
    if (c->op && deliver) {
        s_result(b, c);
        bc_done(c->op);
    } else if (!c->op && st != GRPC_STATUS_OK) {
        char d[256];
        size_t n = GRPC_SLICE_LENGTH(c->details);
        if (n == 0 && c->errstr)
            snprintf(d, sizeof d, "%s", c->errstr);
        else
            snprintf(d, sizeof d, "%.*s", (int)(n < 255 ? n : 255),
                     (const char *)GRPC_SLICE_START_PTR(c->details));
        fprintf(stderr, "imbox-bench: Health/Check on %s: %s %s\n", b->addr, s_code_name(st), d);
    } else if (!c->op) {
        bc_op probe = {.kind = BC_NOOP};
        c->op = &probe;
        s_result(b, c);
        c->op = NULL;
        if (probe.status) {
            fprintf(stderr, "imbox-bench: Health/Check on %s: not SERVING\n", b->addr);
            st = -2;
        }
    }
    s_call_free(b, c);
    return st;
}

static int s_poll(void *self, int64_t deadline_ns)
{
    ib *b = self;
    grpc_event ev = grpc_completion_queue_next(b->cq, s_deadline(deadline_ns), NULL);
    if (ev.type == GRPC_QUEUE_TIMEOUT)
        return 0;
    if (ev.type != GRPC_OP_COMPLETE)
        return -1;
    s_event(b, ev, true);
    for (int i = 0; i < IB_POLL_BATCH; i++) {
        ev = grpc_completion_queue_next(b->cq, gpr_inf_past(GPR_CLOCK_MONOTONIC), NULL);
        if (ev.type != GRPC_OP_COMPLETE)
            break;
        s_event(b, ev, true);
    }
    return 0;
}

static void s_close(void *self)
{
    ib *b = self;
    if (b->inited && s_grpc_close(b))
        return;
    for (size_t i = 0; i < b->captoks; i++) {
        free(b->toks[i].uid);
        free(b->toks[i].auth);
    }
    free(b->toks);
    free(b->page.ents);
    free(b->page.ids);
    free(b->page.snd);
    free(b->counts.cs);
    free(b->counts.snd);
    memset(&b->page, 0, sizeof b->page);
    memset(&b->counts, 0, sizeof b->counts);
    b->toks = NULL;
    b->ntoks = b->captoks = 0;
}

/* Cancels what is left, then tears gRPC down. Returns -1 when calls did
 * not end (then nothing may be freed). */
static int s_grpc_close(ib *b)
{
    /* Calls the engine gave up on: cancel, and wait (bounded) until they
     * completed, so that nothing is freed under gRPC. */
    for (ib_call *c = b->live; c; c = c->next)
        grpc_call_cancel(c->call, NULL);
    int64_t until = bc_now_ns() + IB_CLOSE_WAIT_NS;
    while (b->outstanding && bc_now_ns() < until) {
        grpc_event ev = grpc_completion_queue_next(b->cq, s_deadline(until), NULL);
        if (ev.type == GRPC_OP_COMPLETE)
            s_event(b, ev, false);
    }
    if (b->outstanding) {
        fprintf(stderr, "imbox-bench: %d calls did not end: leaving them to the exit\n",
                b->outstanding);
        return -1;
    }
    for (int i = 0; i < b->nch; i++)
        if (b->ch[i])
            grpc_channel_destroy(b->ch[i]);
    grpc_completion_queue_shutdown(b->cq);
    while (grpc_completion_queue_next(b->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
           GRPC_QUEUE_SHUTDOWN) {
    }
    grpc_completion_queue_destroy(b->cq);
    grpc_shutdown();
    b->inited = false;
    memset(b->ch, 0, sizeof b->ch);
    while (b->spare) {
        ib_call *c = b->spare;
        b->spare = c->next;
        free(c);
    }
    return 0;
}

/* Loads the secret, opens the channels and checks that each one answers
 * Health/Check SERVING within IB_OPEN_WAIT_MS. */
static int s_open(void *self)
{
    ib *b = self;
    char path[PATH_MAX], err[256];
    snprintf(path, sizeof path, "%s/%s", b->data_dir, IM_SECRET_FILE);
    /* It must exist: im_secret_load_or_create would make a new one that
     * no server knows. */
    if (access(path, R_OK)) {
        fprintf(stderr, "imbox-bench: %s: %s (--data-dir must hold the server's secret)\n",
                path, strerror(errno));
        return -1;
    }
    if (im_secret_load_or_create(b->data_dir, &b->secret, err, sizeof err)) {
        fprintf(stderr, "imbox-bench: %s\n", err);
        return -1;
    }
    ib_page *pg = &b->page;
    pg->cap = BC_PAGE_MAX + 1; /* one more than any page: the engine flags it */
    pg->ents = calloc(pg->cap, sizeof *pg->ents);
    pg->ids = calloc(pg->cap, sizeof *pg->ids);
    pg->snd = calloc(pg->cap, sizeof *pg->snd);
    if (!pg->ents || !pg->ids || !pg->snd) {
        fprintf(stderr, "imbox-bench: out of memory\n");
        s_close(b);
        return -1;
    }
    grpc_init();
    b->inited = true;
    b->cq = grpc_completion_queue_create_for_next(NULL);
    for (int i = 0; i < b->nch; i++)
        if (!(b->ch[i] = pb_channel(b->addr))) {
            fprintf(stderr, "imbox-bench: cannot create a channel to %s\n", b->addr);
            s_close(b);
            return -1;
        }
    int64_t t0 = bc_now_ns();
    for (int i = 0; i < b->nch; i++)
        if (s_call_start(b, NULL, i, IB_OPEN_WAIT_MS)) {
            s_close(b);
            return -1;
        }
    int bad = 0;
    while (b->outstanding) {
        grpc_event ev =
            grpc_completion_queue_next(b->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        bad += s_event(b, ev, false) != 0;
    }
    b->open_ms = (bc_now_ns() - t0) / 1000000;
    if (bad)
        s_close(b);
    return bad ? -1 : 0;
}

static void s_report(void *self)
{
    ib *b = self;
    bc_put_str("addr", b->addr);
    bc_put_int("channels", b->nch);
}

/* ---------------------------------------------------------- push modes */

static int s_custom(void *self, const char *workload)
{
    ib *b = self;
    const bc_opts *o = bc_options();
    bool latency = !strcmp(workload, "push");
    if (!latency && strcmp(workload, "push-idle"))
        return -2;
    pb_args a = {
        .mode = latency ? PB_LATENCY : PB_IDLE,
        .send_addr = b->addr,
        .sub_addr = b->sub_addr ? b->sub_addr : b->addr,
        .data_dir = b->data_dir,
        .nsubs = b->subscribers_set ? b->subscribers : latency ? 100 : 10000,
        .rate = o->rate > 0 ? o->rate : 1000,
        .seconds = o->seconds,
        .content = o->content,
        .ack_every = b->ack_every,
        .ack_ms = b->ack_ms,
        .per_channel = b->per_channel,
        .max_inflight = o->max_outstanding,
        .pids = o->pids,
        .npids = latency ? o->npids : 0,
        .gw_pid = !latency && o->npids ? o->pids[0] : 0,
        .probe_calls = 2000,
        .probe_rate = 200,
        .run_id = o->run_id,
    };
    if (o->content < 8) {
        fprintf(stderr, "imbox-bench: push needs --content 8 or more (it carries the time)\n");
        return 2;
    }
    if (latency && o->count) {
        fprintf(stderr, "imbox-bench: push runs --rate for --seconds (no --count)\n");
        return 2;
    }
    return pb_run(&a, bc_put); /* values come formatted: kept exactly */
}

/* -------------------------------------------------------------- flags */

static int s_flag(const char *flag, const char *v, void *ctx)
{
    ib *b = ctx;
    if (!v)
        return strcmp(flag, "--addr") && strcmp(flag, "--data-dir") &&
                       strcmp(flag, "--channels") && strcmp(flag, "--sub-addr") &&
                       strcmp(flag, "--subscribers") && strcmp(flag, "--ack-every") &&
                       strcmp(flag, "--ack-ms") && strcmp(flag, "--streams-per-channel")
                   ? 0
                   : 1; /* the engine says a value is missing */
    char *end;
    long n = 0;
    bool numeric = strcmp(flag, "--addr") && strcmp(flag, "--data-dir") &&
                   strcmp(flag, "--sub-addr");
    if (numeric) {
        errno = 0;
        n = strtol(v, &end, 10);
        if (errno || end == v || *end || n < 0 || n > 10000000) {
            fprintf(stderr, "imbox-bench: %s: '%s' is not a count\n", flag, v);
            return -1;
        }
    }
    if (!strcmp(flag, "--addr"))
        b->addr = v;
    else if (!strcmp(flag, "--data-dir"))
        b->data_dir = v;
    else if (!strcmp(flag, "--sub-addr"))
        b->sub_addr = v;
    else if (!strcmp(flag, "--channels")) {
        if (n < 1 || n > IB_MAX_CHANNELS) {
            fprintf(stderr, "imbox-bench: --channels is 1..%d\n", IB_MAX_CHANNELS);
            return -1;
        }
        b->nch = (int)n;
    } else if (!strcmp(flag, "--subscribers")) {
        b->subscribers = (uint32_t)n;
        b->subscribers_set = true;
    } else if (!strcmp(flag, "--ack-every")) {
        if (n < 1) {
            fprintf(stderr, "imbox-bench: --ack-every is at least 1\n");
            return -1;
        }
        b->ack_every = (uint32_t)n;
    } else if (!strcmp(flag, "--ack-ms")) {
        if (n < 1 || n > 3600000) {
            fprintf(stderr, "imbox-bench: --ack-ms is 1..3600000\n");
            return -1;
        }
        b->ack_ms = (uint32_t)n;
    } else if (!strcmp(flag, "--streams-per-channel"))
        b->per_channel = (uint32_t)n;
    else
        return 0;
    return 1;
}

static const char s_usage[] =
    "imbox: --addr HOST:PORT (127.0.0.1:50051)  --data-dir DIR (./data: holds auth.secret)\n"
    "       --channels N (1: HTTP/2 connections, calls spread round-robin)\n"
    "  --workload push: K Subscribe streams on --sub-addr (default --addr), Sends at\n"
    "       --rate (1000) for --seconds through --addr, send-to-push latency;\n"
    "       --subscribers K (100)  --ack-every N (50)  --ack-ms MS (100)\n"
    "       --streams-per-channel N\n"
    "  --workload push-idle: K (10000) idle streams, RSS per stream of the first\n"
    "       --server-pid, Health and Send latency beside them\n";

int main(int argc, char **argv)
{
    static ib b;
    b.addr = "127.0.0.1:50051";
    b.data_dir = "./data";
    b.nch = 1;
    b.ack_every = 50;
    bc_driver d = {
        .name = "imbox",
        .self = &b,
        .open = s_open,
        .close = s_close,
        .start = s_start,
        .poll = s_poll,
        .report = s_report,
        .custom = s_custom,
    };
    return bc_main(argc, argv, &d, s_flag, &b, s_usage);
}
