/*
 * fuzz_gw_request.c - libFuzzer targets of the public API's requests as the
 * gateway decodes them: the real handler (gw__send, gw__pull, gw__ack,
 * gw__counts, gw__presence, gw__subscribe, gw__health) runs on a call
 * whose payload is the input. Built once per method (FZ_METHOD, a
 * gw_method): fuzz_send, fuzz_pull, fuzz_ack, fuzz_counts, fuzz_presence,
 * fuzz_subscribe, fuzz_health.
 *
 * The seams, by the linker's --wrap (no product code changes): the answer
 * (gw__respond, gw__respond_errf, gw__respond_pb, and grpc_call_start_batch
 * for a stream's status) is recorded instead of sent; a request handed to
 * a shard (gw_bus_send) is kept instead of sent. A Subscribe that passes
 * its checks meets a stopping server (UNAVAILABLE) instead of registering.
 *
 * Invariants:
 *   - every call ends exactly one way: answered once, or handed to shards
 *     (Send and Presence: one request per shard concerned), never both;
 *   - a refusal is INVALID_ARGUMENT (or RESOURCE_EXHAUSTED, out of memory);
 *   - what is handed on agrees with an independent decode of the request
 *     (pb_decode with callbacks of this file): a Send's parts are each in
 *     the gateway's form (im_store_op_read takes them), from the caller,
 *     with the request's msg_id, msg_type and content, and between them
 *     hold each receiver once, on its shard; the receivers and msg_id keep
 *     the rules of PROTOCOL.md (uid rule, distinct, 1..128 bytes of UTF-8);
 *     a Pull, Ack or Subscribe acts on the caller's inbox at the seq and
 *     scope its cursor carries (im_cursor_scope); a Presence asks each uid
 *     of the request once, on its shard;
 *   - a health check answers SERVING only for "" or "imbox.v1.Inbox".
 */
#include <string.h>

#include <grpc/byte_buffer.h>
#include <grpc/grpc.h>

#include "fz.h"
#include "gw_call.h"
#include "im_hash.h"
#include "im_store_op.h"

#define S_OWNER "fz-owner"
#define S_SHARDS 3
#define S_PARTS_MAX 8

/* ------------------------------------------------------------- the seams */

typedef struct sent {
    int shard;
    uint8_t *body;
    size_t len;
} sent;

static int s_answers, s_status;
static sent s_sent[S_PARTS_MAX];
static int s_nsent;

void __wrap_gw__respond(gw_call *c, int status, const char *msg, uint8_t *body, size_t len);
void __wrap_gw__respond(gw_call *c, int status, const char *msg, uint8_t *body, size_t len)
{
    (void)c, (void)len;
    FZ_CHECK(status == 0 || msg != NULL);
    s_answers++;
    s_status = status;
    free(body);
}

void __wrap_gw__respond_errf(gw_call *c, int status, const char *fmt, ...);
void __wrap_gw__respond_errf(gw_call *c, int status, const char *fmt, ...)
{
    (void)c;
    FZ_CHECK(fmt != NULL);
    s_answers++;
    s_status = status;
}

void __wrap_gw__respond_pb(gw_call *c, const pb_msgdesc_t *fields, const void *msg,
                           uint8_t *entries, size_t entries_len);
void __wrap_gw__respond_pb(gw_call *c, const pb_msgdesc_t *fields, const void *msg,
                           uint8_t *entries, size_t entries_len)
{
    (void)c;
    /* gw__respond_pb's contract: it takes the entries */
    FZ_CHECK(im_pb_append_encoded(&entries, &entries_len, fields, msg) == 0);
    free(entries);
    s_answers++;
    s_status = IM_OK;
}

grpc_call_error __wrap_grpc_call_start_batch(grpc_call *call, const grpc_op *ops, size_t nops,
                                             void *tag, void *reserved);
grpc_call_error __wrap_grpc_call_start_batch(grpc_call *call, const grpc_op *ops, size_t nops,
                                             void *tag, void *reserved)
{
    (void)call, (void)tag, (void)reserved;
    for (size_t i = 0; i < nops; i++)
        if (ops[i].op == GRPC_OP_SEND_STATUS_FROM_SERVER) {
            s_answers++;
            s_status = (int)ops[i].data.send_status_from_server.status;
        }
    return GRPC_CALL_OK;
}

int __wrap_gw_bus_send(gw_bus *b, int shard, uint8_t *body, size_t len, gw_bus_fn fn, void *arg);
int __wrap_gw_bus_send(gw_bus *b, int shard, uint8_t *body, size_t len, gw_bus_fn fn, void *arg)
{
    (void)b, (void)fn, (void)arg;
    FZ_CHECK(shard >= 0 && shard < S_SHARDS && s_nsent < S_PARTS_MAX);
    s_sent[s_nsent++] = (sent){shard, body, len};
    return 0;
}

/* ------------------------------------------ an independent decode of it */

typedef struct ref {
    uint8_t msg_id[IM_MSGID_MAX + 1];
    size_t msg_id_len;
    bool msg_id_big;
    char uids[IM_RECEIVERS_MAX][IM_UID_MAX + 1];
    int nuids;
    bool uids_bad; /* one too long, with a NUL, too many */
    uint8_t cursor[IM_CURSOR_MAX];
    size_t cursor_len;
    bool cursor_big;
    char sender[IM_UID_MAX + 1];
    bool sender_bad;
    uint8_t *content;
    size_t content_len;
} ref;

static ref s_ref;

static bool s_ref_str(pb_istream_t *s, uint8_t *dst, size_t cap, size_t *n, bool *big)
{
    *n = s->bytes_left;
    *big = *n > cap;
    return pb_read(s, *big ? NULL : dst, *n);
}

static bool s_ref_msg_id(pb_istream_t *s, const pb_field_t *f, void **arg)
{
    (void)f, (void)arg;
    return s_ref_str(s, s_ref.msg_id, IM_MSGID_MAX, &s_ref.msg_id_len, &s_ref.msg_id_big);
}

static bool s_ref_cursor(pb_istream_t *s, const pb_field_t *f, void **arg)
{
    (void)f, (void)arg;
    return s_ref_str(s, s_ref.cursor, IM_CURSOR_MAX - 1, &s_ref.cursor_len, &s_ref.cursor_big);
}

static bool s_ref_sender(pb_istream_t *s, const pb_field_t *f, void **arg)
{
    (void)f, (void)arg;
    size_t n;
    bool big;
    if (!s_ref_str(s, (uint8_t *)s_ref.sender, IM_UID_MAX, &n, &big))
        return false;
    s_ref.sender[big ? 0 : n] = 0;
    s_ref.sender_bad = big || strlen(s_ref.sender) != n ||
                       (n && im_uid_check(s_ref.sender, "s", NULL, 0) != 0);
    return true;
}

static bool s_ref_uid(pb_istream_t *s, const pb_field_t *f, void **arg)
{
    (void)f, (void)arg;
    size_t n = s->bytes_left;
    if (s_ref.nuids == IM_RECEIVERS_MAX || n > IM_UID_MAX) {
        s_ref.uids_bad = true;
        return pb_read(s, NULL, n);
    }
    char *u = s_ref.uids[s_ref.nuids++];
    if (!pb_read(s, (uint8_t *)u, n))
        return false;
    u[n] = 0;
    s_ref.uids_bad |= strlen(u) != n || im_uid_check(u, "u", NULL, 0) != 0;
    return true;
}

static bool s_ref_content(pb_istream_t *s, const pb_field_t *f, void **arg)
{
    (void)f, (void)arg;
    if (s_ref.content)
        return false; /* as im_pb_read_bytes: a bytes field repeated */
    s_ref.content_len = s->bytes_left;
    s_ref.content = malloc(s_ref.content_len + 1);
    return s_ref.content && pb_read(s, s_ref.content, s_ref.content_len);
}

/* Wire types right (what the gateway checks first) and pb_decode. */
/* Skips the rest of a group of field number num, opened at nesting level
 * `level` (1 for a group in the message itself), as protobuf does: fields
 * inside are skipped by wire type, groups nest (at most 64 levels, the
 * gateway's bound), and it ends with an end-group tag of the same number.
 * Written apart from im_pb_skip_group; nanopb reads the tags and skips the
 * primitive fields. */
static bool s_ref_skip_group(pb_istream_t *s, uint32_t num, int level)
{
    for (;;) {
        pb_wire_type_t wt;
        uint32_t t;
        bool eof;
        if (!pb_decode_tag(s, &wt, &t, &eof) || t == 0)
            return false;
        if ((int)wt == 4)
            return t == num;
        if ((int)wt == 3) {
            if (level == 64 || !s_ref_skip_group(s, t, level + 1))
                return false;
        } else if (!pb_skip_field(s, wt)) {
            return false;
        }
    }
}

/* The request without its unknown fields' groups (protobuf skips them; the
 * gateway too), into out: its length, or -1 when a group is not well formed,
 * numbers a known field or field 0, or an end-group comes unopened. */
static long s_ref_strip(const pb_msgdesc_t *fields, const uint8_t *d, size_t n, uint8_t *out)
{
    pb_istream_t s = pb_istream_from_buffer(d, n);
    pb_field_iter_t it;
    bool have = pb_field_iter_begin_const(&it, fields, NULL);
    size_t o = 0;
    while (s.bytes_left) {
        const uint8_t *at = d + (n - s.bytes_left);
        pb_wire_type_t wt;
        uint32_t t;
        bool eof;
        if (!pb_decode_tag(&s, &wt, &t, &eof) || t == 0 || (int)wt == 4)
            return -1;
        if ((int)wt == 3) {
            if ((have && pb_field_iter_find(&it, t)) || !s_ref_skip_group(&s, t, 1))
                return -1;
            continue;
        }
        if (!pb_skip_field(&s, wt))
            return -1;
        const uint8_t *next = d + (n - s.bytes_left);
        memcpy(out + o, at, (size_t)(next - at));
        o += (size_t)(next - at);
    }
    return (long)o;
}

static bool s_ref_decode(const pb_msgdesc_t *fields, void *msg, const uint8_t *d, size_t n)
{
    uint8_t *plain = malloc(n + 1);
    FZ_CHECK(plain);
    long m = s_ref_strip(fields, d, n, plain);
    pb_istream_t is = pb_istream_from_buffer(plain, m < 0 ? 0 : (size_t)m);
    bool ok = m >= 0 && pb_decode(&is, fields, msg);
    free(plain);
    return ok;
}

/* Index of uid in the request's list, or -1. */
static int s_ref_find(const char *uid)
{
    for (int i = 0; i < s_ref.nuids; i++)
        if (strcmp(s_ref.uids[i], uid) == 0)
            return i;
    return -1;
}

static bool s_ref_distinct(void)
{
    for (int i = 0; i < s_ref.nuids; i++)
        if (s_ref_find(s_ref.uids[i]) != i)
            return false;
    return true;
}

/* ------------------------------------------- what was handed to shards */

typedef struct shreq {
    imbox_internal_v1_ShardRequest r;
    char uids[IM_RECEIVERS_MAX][IM_UID_MAX + 1];
    int nuids;
} shreq;

static shreq s_sh;

static bool s_sh_uid(pb_istream_t *s, const pb_field_t *f, void **arg)
{
    (void)f, (void)arg;
    size_t n = s->bytes_left;
    if (s_sh.nuids == IM_RECEIVERS_MAX || n > IM_UID_MAX)
        return false;
    char *u = s_sh.uids[s_sh.nuids++];
    if (!pb_read(s, (uint8_t *)u, n))
        return false;
    u[n] = 0;
    return true;
}

static void s_sh_decode(const sent *x)
{
    memset(&s_sh.r, 0, sizeof s_sh.r);
    s_sh.nuids = 0;
    s_sh.r.query.uids.funcs.decode = s_sh_uid;
    pb_istream_t is = pb_istream_from_buffer(x->body, x->len);
    FZ_CHECK(pb_decode(&is, imbox_internal_v1_ShardRequest_fields, &s_sh.r));
    FZ_CHECK(s_sh.r.has_store + s_sh.r.has_read + s_sh.r.has_ack + s_sh.r.has_counts +
                 s_sh.r.has_presence + s_sh.r.has_query ==
             1);
}

/* The cursor of the request, as im_cursor_scope reads it: 0 accepted. */
static int s_ref_cursor_scope(const gw_server *g, uint64_t *seq, char *scope)
{
    if (s_ref.cursor_big || memchr(s_ref.cursor, 0, s_ref.cursor_len))
        return -1;
    return im_cursor_scope(&g->c.secret, S_OWNER, (const char *)s_ref.cursor, s_ref.cursor_len,
                           seq, scope, NULL);
}

/* ------------------------------------------------------- the methods */

static void s_check_send(const gw_server *g, const uint8_t *d, size_t n)
{
    imbox_v1_SendRequest q = imbox_v1_SendRequest_init_zero;
    q.msg_id.funcs.decode = s_ref_msg_id;
    q.receiver_uids.funcs.decode = s_ref_uid;
    q.content.funcs.decode = s_ref_content;
    bool ok = s_ref_decode(imbox_v1_SendRequest_fields, &q, d, n);
    if (s_answers) {
        FZ_CHECK(s_nsent == 0);
        FZ_CHECK(s_status == IM_INVALID_ARGUMENT || s_status == IM_RESOURCE_EXHAUSTED);
        return;
    }
    /* Handed on: the request was valid. */
    FZ_CHECK(ok && !s_ref.msg_id_big && s_ref.msg_id_len >= 1);
    FZ_CHECK(!memchr(s_ref.msg_id, 0, s_ref.msg_id_len) &&
             im_utf8_valid((const char *)s_ref.msg_id, s_ref.msg_id_len));
    FZ_CHECK(!s_ref.uids_bad && s_ref.nuids >= 1 && s_ref_distinct());
    FZ_CHECK(s_ref.content_len <= g->c.limits.max_content);
    FZ_CHECK(s_nsent >= 1);
    static int seen[IM_RECEIVERS_MAX];
    memset(seen, 0, sizeof seen);
    static char recv[IM_RECEIVERS_MAX][IM_UID_MAX + 1];
    const im_store_op_limits lim = {.sender_max = 128, .msg_id_max = 256,
                                    .content_max = IM_CONTENT_MAX, .uid_max = IM_UID_MAX,
                                    .receivers_max = IM_RECEIVERS_MAX};
    int total = 0, last_shard = -1;
    for (int i = 0; i < s_nsent; i++) {
        im_store_op op;
        FZ_CHECK(s_sent[i].shard > last_shard); /* one part per shard */
        last_shard = s_sent[i].shard;
        FZ_CHECK(im_store_op_read(s_sent[i].body, s_sent[i].len, &lim, &op, recv[0]));
        FZ_CHECK(op.sender_len == strlen(S_OWNER) && !memcmp(op.sender, S_OWNER, op.sender_len));
        FZ_CHECK(op.msg_id_len == s_ref.msg_id_len &&
                 !memcmp(op.msg_id, s_ref.msg_id, op.msg_id_len));
        FZ_CHECK(op.msg_type == q.msg_type && op.content_len == s_ref.content_len);
        FZ_CHECK(!op.content_len || !memcmp(op.content, s_ref.content, op.content_len));
        for (int j = 0; j < op.nreceivers; j++) {
            int k = s_ref_find(recv[j]);
            FZ_CHECK(k >= 0 && !seen[k]++);
            FZ_CHECK(im_shard_of(recv[j], S_SHARDS) == s_sent[i].shard);
        }
        total += op.nreceivers;
    }
    FZ_CHECK(total == s_ref.nuids);
}

static void s_check_pull(const gw_server *g, const uint8_t *d, size_t n)
{
    imbox_v1_PullRequest q = imbox_v1_PullRequest_init_zero;
    q.cursor.funcs.decode = s_ref_cursor;
    q.sender_uid.funcs.decode = s_ref_sender;
    bool ok = s_ref_decode(imbox_v1_PullRequest_fields, &q, d, n);
    if (s_answers) {
        FZ_CHECK(s_nsent == 0 && s_status == IM_INVALID_ARGUMENT);
        return;
    }
    uint64_t seq;
    char scope[IM_UID_MAX + 1];
    FZ_CHECK(ok && s_nsent == 1 && !s_ref.sender_bad && q.page_size <= g->c.limits.max_page);
    FZ_CHECK(s_ref_cursor_scope(g, &seq, scope) == 0);
    FZ_CHECK(!s_ref.cursor_len || strcmp(scope, s_ref.sender) == 0);
    s_sh_decode(&s_sent[0]);
    const imbox_internal_v1_ReadOp *op = &s_sh.r.read;
    FZ_CHECK(s_sh.r.has_read && strcmp(op->uid, S_OWNER) == 0 && op->ack_upto == seq);
    FZ_CHECK(strcmp(op->sender, s_ref.sender) == 0);
    FZ_CHECK(op->limit >= 1 && op->limit <= g->c.limits.max_page);
    FZ_CHECK(!q.page_size || op->limit == q.page_size);
    FZ_CHECK(s_sent[0].shard == im_shard_of(S_OWNER, S_SHARDS));
}

static void s_check_ack(const gw_server *g, const uint8_t *d, size_t n)
{
    imbox_v1_AckRequest q = imbox_v1_AckRequest_init_zero;
    q.cursor.funcs.decode = s_ref_cursor;
    bool ok = s_ref_decode(imbox_v1_AckRequest_fields, &q, d, n);
    if (s_answers) {
        FZ_CHECK(s_nsent == 0 && s_status == IM_INVALID_ARGUMENT);
        return;
    }
    uint64_t seq;
    char scope[IM_UID_MAX + 1];
    FZ_CHECK(ok && s_nsent == 1 && s_ref.cursor_len > 0);
    FZ_CHECK(s_ref_cursor_scope(g, &seq, scope) == 0);
    s_sh_decode(&s_sent[0]);
    FZ_CHECK(s_sh.r.has_ack && strcmp(s_sh.r.ack.uid, S_OWNER) == 0);
    FZ_CHECK(s_sh.r.ack.upto == seq && strcmp(s_sh.r.ack.sender, scope) == 0);
}

static void s_check_counts(const uint8_t *d, size_t n)
{
    imbox_v1_CountsRequest q = imbox_v1_CountsRequest_init_zero;
    bool ok = s_ref_decode(imbox_v1_CountsRequest_fields, &q, d, n);
    if (s_answers) {
        FZ_CHECK(s_nsent == 0 && s_status == IM_INVALID_ARGUMENT && !ok);
        return;
    }
    FZ_CHECK(ok && s_nsent == 1);
    s_sh_decode(&s_sent[0]);
    FZ_CHECK(s_sh.r.has_counts && strcmp(s_sh.r.counts.uid, S_OWNER) == 0);
}

static void s_check_presence(const uint8_t *d, size_t n)
{
    imbox_v1_PresenceRequest q = imbox_v1_PresenceRequest_init_zero;
    q.uids.funcs.decode = s_ref_uid;
    bool ok = s_ref_decode(imbox_v1_PresenceRequest_fields, &q, d, n);
    if (s_answers) {
        FZ_CHECK(s_nsent == 0);
        FZ_CHECK(s_status == IM_INVALID_ARGUMENT || s_status == IM_RESOURCE_EXHAUSTED ||
                 (s_status == IM_OK && ok && !s_ref.uids_bad && s_ref.nuids == 0));
        return;
    }
    FZ_CHECK(ok && !s_ref.uids_bad && s_ref.nuids >= 1 && s_nsent >= 1);
    static int seen[IM_RECEIVERS_MAX];
    memset(seen, 0, sizeof seen);
    int total = 0;
    for (int i = 0; i < s_nsent; i++) {
        s_sh_decode(&s_sent[i]);
        FZ_CHECK(s_sh.r.has_query);
        for (int j = 0; j < s_sh.nuids; j++) {
            FZ_CHECK(im_shard_of(s_sh.uids[j], S_SHARDS) == s_sent[i].shard);
            int k = s_ref_find(s_sh.uids[j]);
            FZ_CHECK(k >= 0);
            seen[k]++;
        }
        total += s_sh.nuids;
    }
    FZ_CHECK(total == s_ref.nuids); /* a uid listed twice is asked twice */
}

static void s_check_subscribe(const gw_server *g, const uint8_t *d, size_t n)
{
    imbox_v1_SubscribeRequest q = imbox_v1_SubscribeRequest_init_zero;
    q.cursor.funcs.decode = s_ref_cursor;
    bool ok = s_ref_decode(imbox_v1_SubscribeRequest_fields, &q, d, n);
    FZ_CHECK(s_nsent == 0);
    if (s_status == IM_UNAVAILABLE) { /* passed its checks: the server is stopping */
        uint64_t seq;
        char scope[IM_UID_MAX + 1];
        FZ_CHECK(ok && s_ref_cursor_scope(g, &seq, scope) == 0 && scope[0] == 0);
    } else {
        FZ_CHECK(s_status == IM_INVALID_ARGUMENT);
    }
}

static void s_check_health(const uint8_t *d, size_t n)
{
    FZ_CHECK(s_nsent == 0);
    if (s_status == IM_OK) {
        /* HealthCheckRequest { string service = 1; } decodes (its unknown
         * groups dropped) and names "" or "imbox.v1.Inbox" (the last one
         * wins). SubscribeRequest has the same shape: one string, field 1. */
        imbox_v1_SubscribeRequest q = imbox_v1_SubscribeRequest_init_zero;
        q.cursor.funcs.decode = s_ref_cursor;
        FZ_CHECK(s_ref_decode(imbox_v1_SubscribeRequest_fields, &q, d, n));
        FZ_CHECK(!s_ref.cursor_big);
        FZ_CHECK(s_ref.cursor_len == 0 ||
                 (s_ref.cursor_len == 14 && !memcmp(s_ref.cursor, "imbox.v1.Inbox", 14)));
    } else
        FZ_CHECK(s_status == IM_NOT_FOUND || s_status == IM_INVALID_ARGUMENT);
}

/* ----------------------------------------------------------------- run */

static gw_server s_g;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    gw_server *g = &s_g;
    if (!g->shard_req) {
        g->c.nshards = S_SHARDS;
        g->c.secret = fz_secret();
        g->c.limits = (gw_limits){IM_RECEIVERS_MAX, IM_CONTENT_MAX, IM_PAGE_MAX};
        g->c.reply_budget = 64 << 20; /* gw_start's default; no send rate table */
        g->shard_req = malloc(sizeof *g->shard_req);
        FZ_CHECK(g->shard_req && gw__subs_new(g) == 0);
        atomic_store(&g->stopping, true);
    }
    gw_call c;
    memset(&c, 0, sizeof c);
    c.g = g;
    c.m = FZ_METHOD;
    snprintf(c.uid, sizeof c.uid, "%s", S_OWNER);
    grpc_slice sl = grpc_slice_from_copied_buffer((const char *)data, size);
    c.payload = grpc_raw_byte_buffer_create(&sl, 1);
    grpc_slice_unref(sl);
    c.status_details = grpc_empty_slice();
    s_answers = 0;
    s_status = -1;
    s_nsent = 0;
    free(s_ref.content);
    memset(&s_ref, 0, sizeof s_ref);

    switch (FZ_METHOD) {
    case M_SEND: gw__send(&c); break;
    case M_PULL: gw__pull(&c); break;
    case M_ACK: gw__ack(&c); break;
    case M_COUNTS: gw__counts(&c); break;
    case M_PRESENCE: gw__presence(&c); break;
    case M_SUBSCRIBE: gw__subscribe(&c); break;
    default: gw__health(&c); break;
    }
    FZ_CHECK(s_answers + (s_nsent > 0) == 1);
    switch (FZ_METHOD) {
    case M_SEND: s_check_send(g, data, size); break;
    case M_PULL: s_check_pull(g, data, size); break;
    case M_ACK: s_check_ack(g, data, size); break;
    case M_COUNTS: s_check_counts(data, size); break;
    case M_PRESENCE: s_check_presence(data, size); break;
    case M_SUBSCRIBE: s_check_subscribe(g, data, size); break;
    default: s_check_health(data, size); break;
    }

    /* What gw__call_free would free of this call. */
    for (int i = 0; i < s_nsent; i++)
        free(s_sent[i].body);
    for (gw_part *p = c.parts; p && p->c; p++)
        free(p->idx);
    free(c.parts);
    free(c.receivers);
    free(c.receipts);
    free(c.online);
    gw__sub_free(c.sub);
    grpc_slice_unref(c.status_details);
    grpc_byte_buffer_destroy(c.payload);
    return 0;
}
