/*
 * test_enc.c - CUnit suite of the hand-written codecs on a Send's path,
 * against nanopb's generic pb_encode / pb_decode of the same messages
 * (the reference: the bytes on the wire must not change):
 *   - gw__send_response (gw_call.h): the SendResponse of a Send's receipts;
 *   - gw__store_request (gw_call.h): the ShardRequest holding a StoreOp;
 *   - im_store_reply_encode / _decode (im_store_reply.h): a Store's
 *     ShardReply, and the decoder's refusal of anything else;
 *   - im_pb_encode and im_pb_append_encoded (im_wire.h): one pass or sized
 *     first, alone or appended to a buffer, the same bytes;
 *   - im_msg_append (im_msg.h): a Message entry of a Pull page or a notice,
 *     against im_pb_append_submsg of the struct the shard used to fill.
 * Receipts and results cover errors, duplicates, online, zero fields
 * (proto3 leaves them out), negative numbers (sign-extended) and the
 * largest values.
 *
 * Usage: test_enc [test-name]   (no argument: the whole suite)
 * Exit status: 0 when every assertion held, 1 otherwise.
 */
#include "gw_call.h"
#include "im_msg.h"
#include "im_store_reply.h"

#include "im_cunit.h"

#include <pb_decode.h>
#include <pb_encode.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXPECT(cond, ...) im_cunit_record(IM_HERE, (cond), __VA_ARGS__)
#define EXPECT_I64(got, want)                                                  \
    do {                                                                       \
        int64_t g_ = (int64_t)(got), w_ = (int64_t)(want);                     \
        EXPECT(g_ == w_, "%s == %s (got %" PRId64 ", want %" PRId64 ")", #got, \
               #want, g_, w_);                                                 \
    } while (0)

/* A reproducible xorshift64 stream. */
static uint64_t s_rng = 0x9E3779B97F4A7C15ull;
static uint64_t rnd(void)
{
    s_rng ^= s_rng << 13;
    s_rng ^= s_rng >> 7;
    s_rng ^= s_rng << 17;
    return s_rng;
}

/* A random number of random magnitude (0 .. 2^64 - 1). */
static uint64_t rnd_mag(void)
{
    uint64_t v = rnd();
    return v >> (rnd() % 64);
}

/* nanopb's bytes of msg: sized, then encoded (malloc'ed; *len set). */
static uint8_t *ref_encode(const pb_msgdesc_t *fields, const void *msg, size_t *len)
{
    size_t n;
    CU_ASSERT_FATAL(pb_get_encoded_size(&n, fields, msg));
    uint8_t *p = malloc(n + 1);
    CU_ASSERT_FATAL(p != NULL);
    pb_ostream_t s = pb_ostream_from_buffer(p, n);
    CU_ASSERT_FATAL(pb_encode(&s, fields, msg));
    CU_ASSERT_FATAL(s.bytes_written == n);
    *len = n;
    return p;
}

/* Records whether got[0..gn) and want[0..wn) are the same bytes, naming
 * the first difference. */
static void expect_bytes(im_loc L, const char *what, const uint8_t *got, size_t gn,
                         const uint8_t *want, size_t wn)
{
    size_t i = 0;
    while (i < gn && i < wn && got[i] == want[i])
        i++;
    im_cunit_record(L, gn == wn && i == gn,
                    "%s: %zu bytes, nanopb %zu; first difference at byte %zu", what, gn, wn,
                    i);
}

/* ---------------------------------------------------------- receipts */

/* The receipts' encoding before the hand-written one: a Receipt struct per
 * receipt, encoded by nanopb (gw_send.c's former s_write_receipts). */
static bool ref_write_receipts(pb_ostream_t *s, const pb_field_t *f, void *const *arg)
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

/* A call holding n receivers and receipts (zeroed); free with call_free. */
static gw_call *call_new(int n)
{
    gw_call *c = calloc(1, sizeof *c);
    CU_ASSERT_FATAL(c != NULL);
    c->nrecv = n;
    c->receivers = calloc((size_t)(n ? n : 1), sizeof *c->receivers);
    c->receipts = calloc((size_t)(n ? n : 1), sizeof *c->receipts);
    CU_ASSERT_FATAL(c->receivers && c->receipts);
    return c;
}

static void call_free(gw_call *c)
{
    free(c->receivers);
    free(c->receipts);
    free(c);
}

static void expect_receipts(im_loc L, const gw_call *c)
{
    imbox_v1_SendResponse resp = {0};
    resp.receipts.funcs.encode = ref_write_receipts;
    resp.receipts.arg = (void *)c;
    size_t wn, gn;
    uint8_t *want = ref_encode(imbox_v1_SendResponse_fields, &resp, &wn), *got;
    if (im_cunit_record(L, gw__send_response(c, &got, &gn) == 0, "gw__send_response fails")) {
        expect_bytes(L, "SendResponse", got, gn, want, wn);
        free(got);
    }
    free(want);
}

/* A string of exactly n bytes of UTF-8 (two-byte characters, then 'x'). */
static void fill_text(char *dst, size_t n)
{
    size_t i = 0;
    for (; i + 2 <= n; i += 2) {
        dst[i] = (char)0xC3;
        dst[i + 1] = (char)0xA9; /* é */
    }
    for (; i < n; i++)
        dst[i] = 'x';
    dst[n] = 0;
}

static void test_receipts_cases(void)
{
    gw_call *c = call_new(9);
    /* 0: a plain stored receipt */
    snprintf(c->receivers[0], sizeof c->receivers[0], "bob");
    c->receipts[0].send_time_ms = 1700000000123;
    /* 1: every field zero but the uid (proto3 omits them) */
    snprintf(c->receivers[1], sizeof c->receivers[1], "z");
    /* 2: inbox full, with its text */
    snprintf(c->receivers[2], sizeof c->receivers[2], "carol");
    c->receipts[2].code = IM_RESOURCE_EXHAUSTED;
    snprintf(c->receipts[2].error, sizeof c->receipts[2].error, "%s", IM_TEXT_INBOX_FULL);
    /* 3: a duplicate with its original time */
    snprintf(c->receivers[3], sizeof c->receivers[3], "dave");
    c->receipts[3].duplicate = true;
    c->receipts[3].send_time_ms = 1;
    /* 4: online */
    snprintf(c->receivers[4], sizeof c->receivers[4], "erin");
    c->receipts[4].online = true;
    c->receipts[4].send_time_ms = INT64_MAX;
    /* 5: the longest uid and error (two-byte lengths), UNAVAILABLE */
    fill_text(c->receivers[5], IM_UID_MAX);
    c->receipts[5].code = IM_UNAVAILABLE;
    fill_text(c->receipts[5].error, sizeof c->receipts[5].error - 1);
    /* 6: negative numbers are sign-extended to ten bytes */
    snprintf(c->receivers[6], sizeof c->receivers[6], "neg");
    c->receipts[6].code = -1;
    c->receipts[6].send_time_ms = INT64_MIN;
    /* 7: everything set */
    snprintf(c->receivers[7], sizeof c->receivers[7], "all");
    c->receipts[7].code = INT32_MAX;
    snprintf(c->receipts[7].error, sizeof c->receipts[7].error, "e");
    c->receipts[7].duplicate = c->receipts[7].online = true;
    c->receipts[7].send_time_ms = 127;
    /* 8: an error without a code, a time at a varint boundary */
    snprintf(c->receivers[8], sizeof c->receivers[8], "q");
    snprintf(c->receipts[8].error, sizeof c->receipts[8].error, "why");
    c->receipts[8].send_time_ms = 128;
    expect_receipts(IM_HERE, c);
    for (int i = 0; i < 9; i++) { /* and each alone */
        gw_call *one = call_new(1);
        memcpy(one->receivers[0], c->receivers[i], sizeof c->receivers[i]);
        one->receipts[0] = c->receipts[i];
        expect_receipts(IM_HERE, one);
        call_free(one);
    }
    call_free(c);
    gw_call *none = call_new(0);
    expect_receipts(IM_HERE, none);
    call_free(none);
}

/* Random receipts, up to the most receivers a Send has (the response is
 * then far over IM_PB_ONE_PASS). */
static void test_receipts_random(void)
{
    static const int sizes[] = {1, 2, 3, 16, 100, IM_RECEIVERS_MAX};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        gw_call *c = call_new(sizes[k]);
        for (int i = 0; i < c->nrecv; i++) {
            fill_text(c->receivers[i], 1 + rnd() % IM_UID_MAX);
            gw_receipt *r = &c->receipts[i];
            r->code = rnd() % 3 ? 0 : (int)(rnd() % 17);
            if (r->code && rnd() % 2)
                fill_text(r->error, rnd() % sizeof r->error);
            r->duplicate = rnd() % 2;
            r->online = rnd() % 2;
            r->send_time_ms = rnd() % 4 ? (int64_t)rnd_mag() : 0;
        }
        expect_receipts(IM_HERE, c);
        call_free(c);
    }
}

/* ------------------------------------------------------ store requests */

/* The request as gw__send built it before: a ShardRequest struct with
 * callbacks, encoded by nanopb. */
static uint8_t *ref_store(const gw_part *p, const gw_store *m, size_t *len)
{
    static imbox_internal_v1_ShardRequest sr;
    memset(&sr, 0, sizeof sr);
    sr.has_store = true;
    imbox_internal_v1_StoreOp *op = &sr.store;
    snprintf(op->sender, sizeof op->sender, "%s", m->sender);
    snprintf(op->msg_id, sizeof op->msg_id, "%s", m->msg_id);
    op->msg_type = m->msg_type;
    im_bytes_out body = {m->content, m->content_len};
    op->content.funcs.encode = im_pb_write_bytes;
    op->content.arg = &body;
    op->receivers.funcs.encode = gw__write_part_uids;
    op->receivers.arg = (void *)p;
    return ref_encode(imbox_internal_v1_ShardRequest_fields, &sr, len);
}

static void expect_store(im_loc L, const gw_part *p, const gw_store *m)
{
    size_t wn, gn;
    uint8_t *want = ref_store(p, m, &wn), *got;
    if (im_cunit_record(L, gw__store_request(p, m, &got, &gn) == 0,
                        "gw__store_request fails")) {
        expect_bytes(L, "ShardRequest", got, gn, want, wn);
        free(got);
    }
    free(want);
}

static void test_store_request(void)
{
    static uint8_t content[IM_CONTENT_MAX];
    for (size_t i = 0; i < sizeof content; i++)
        content[i] = (uint8_t)rnd();
    char sender[IM_UID_MAX + 1], msg_id[IM_MSGID_MAX + 1];
    gw_call *c = call_new(40);
    for (int i = 0; i < c->nrecv; i++)
        fill_text(c->receivers[i], 1 + (size_t)i % IM_UID_MAX);
    fill_text(c->receivers[39], IM_UID_MAX);
    int idx[] = {3, 0, 39, 17};
    gw_part all = {.c = c, .n = c->nrecv, .idx = NULL}, one = {.c = c, .n = 1, .idx = NULL},
            some = {.c = c, .n = 4, .idx = idx};
    static const size_t lens[] = {0, 1, 100, 127, 128, 16383, 16384, IM_CONTENT_MAX};
    static const int32_t types[] = {0, 1, 7, 127, 128, INT32_MAX, -1, INT32_MIN};
    for (size_t k = 0; k < sizeof lens / sizeof lens[0]; k++) {
        fill_text(sender, 1 + k * 9 % IM_UID_MAX);
        fill_text(msg_id, 1 + k * 19 % IM_MSGID_MAX);
        gw_store m = {.sender = sender, .msg_id = msg_id, .msg_type = types[k],
                      .content = content, .content_len = lens[k]};
        expect_store(IM_HERE, &one, &m);
        expect_store(IM_HERE, &some, &m);
        expect_store(IM_HERE, &all, &m);
    }
    /* No content at all (the request had none), the longest strings. */
    fill_text(sender, IM_UID_MAX);
    fill_text(msg_id, IM_MSGID_MAX);
    gw_store m = {.sender = sender, .msg_id = msg_id};
    expect_store(IM_HERE, &one, &m);
    expect_store(IM_HERE, &some, &m);
    call_free(c);
}

/* -------------------------------------------------------- store replies */

static imbox_internal_v1_ShardReply *reply_new(void)
{
    imbox_internal_v1_ShardReply *r = calloc(1, sizeof *r);
    CU_ASSERT_FATAL(r != NULL);
    return r;
}

/* A random StoreResult: each field zero a third of the time. */
static imbox_internal_v1_StoreResult rnd_result(void)
{
    imbox_internal_v1_StoreResult x = {0};
    if (rnd() % 3 == 0) {
        static const int32_t codes[] = {8, 13, 14, -1, INT32_MIN, INT32_MAX, 127, 128};
        x.code = codes[rnd() % 8];
    }
    x.duplicate = rnd() % 3 == 0;
    x.seq = rnd() % 3 ? rnd_mag() : 0;
    x.send_time_ms = rnd() % 3 ? (int64_t)rnd_mag() : 0;
    x.online = rnd() % 3 == 0;
    return x;
}

static void expect_same_results(im_loc L, const imbox_internal_v1_ShardReply *a,
                                const imbox_internal_v1_ShardReply *b)
{
    bool same = a->code == b->code && memcmp(a->error, b->error, sizeof a->error) == 0 &&
                a->results_count == b->results_count && a->count == b->count &&
                a->last_seq == b->last_seq && a->more == b->more && a->deleted == b->deleted &&
                a->total == b->total && a->online_count == b->online_count &&
                a->seqs_count == b->seqs_count;
    for (pb_size_t i = 0; same && i < a->results_count; i++) {
        const imbox_internal_v1_StoreResult *x = &a->results[i], *y = &b->results[i];
        same = x->code == y->code && x->duplicate == y->duplicate && x->seq == y->seq &&
               x->send_time_ms == y->send_time_ms && x->online == y->online;
    }
    im_cunit_record(L, same, "the hand decoder and pb_decode disagree (%u and %u results)",
                    (unsigned)a->results_count, (unsigned)b->results_count);
}

/* Decodes buf by hand into a reply full of junk and by pb_decode: when the
 * hand decoder accepts, pb_decode must too, with the same fields. Returns
 * whether the hand decoder accepted. */
static bool check_decode(im_loc L, const uint8_t *buf, size_t len)
{
    imbox_internal_v1_ShardReply *fast = reply_new(), *ref = reply_new();
    memset(fast, 0xA5, sizeof *fast);
    fast->entries = (pb_callback_t){0};
    bool ok = im_store_reply_decode(buf, len, fast);
    pb_istream_t is = pb_istream_from_buffer(buf, len);
    bool ref_ok = pb_decode(&is, imbox_internal_v1_ShardReply_fields, ref);
    if (ok && im_cunit_record(L, ref_ok, "accepted what pb_decode refuses (%zu bytes)", len))
        expect_same_results(L, fast, ref);
    free(fast);
    free(ref);
    return ok;
}

/* Encodes r by hand and by nanopb; the same bytes, decoded back alike. */
static void expect_reply(im_loc L, const imbox_internal_v1_ShardReply *r)
{
    im_cunit_record(L, im_store_reply_only(r, 0), "not a results-only reply");
    size_t wn, gn;
    uint8_t *want = ref_encode(imbox_internal_v1_ShardReply_fields, r, &wn), *got;
    if (!im_cunit_record(L, im_store_reply_encode(r, &got, &gn) == 0,
                         "im_store_reply_encode fails")) {
        free(want);
        return;
    }
    expect_bytes(L, "ShardReply", got, gn, want, wn);
    im_cunit_record(L, check_decode(L, got, gn), "the hand decoder refuses its encoding");
    imbox_internal_v1_ShardReply *back = reply_new();
    if (im_store_reply_decode(got, gn, back))
        expect_same_results(L, back, r);
    free(back);
    free(got);
    free(want);
}

static void test_reply_cases(void)
{
    imbox_internal_v1_ShardReply *r = reply_new();
    expect_reply(IM_HERE, r); /* no results: empty */
    r->results_count = 1;
    r->results[0].seq = 1;
    r->results[0].send_time_ms = 1700000000123;
    expect_reply(IM_HERE, r); /* a plain stored message */
    r->results[0] = (imbox_internal_v1_StoreResult){0};
    expect_reply(IM_HERE, r); /* every field zero: an empty entry */
    r->results[0] = (imbox_internal_v1_StoreResult){.duplicate = true, .seq = 9,
                                                    .send_time_ms = 5};
    expect_reply(IM_HERE, r); /* a duplicate */
    r->results[0] = (imbox_internal_v1_StoreResult){.seq = UINT64_MAX, .online = true,
                                                    .send_time_ms = INT64_MAX};
    expect_reply(IM_HERE, r); /* online, the largest numbers */
    r->results[0] = (imbox_internal_v1_StoreResult){.code = IM_RESOURCE_EXHAUSTED};
    expect_reply(IM_HERE, r); /* inbox full */
    r->results[0] = (imbox_internal_v1_StoreResult){.code = -2, .send_time_ms = INT64_MIN};
    expect_reply(IM_HERE, r); /* negative: ten-byte varints */
    r->results_count = 1000; /* the most a reply holds */
    for (int i = 0; i < 1000; i++)
        r->results[i] = rnd_result();
    expect_reply(IM_HERE, r);
    for (int k = 0; k < 200; k++) {
        r->results_count = (pb_size_t)(1 + rnd() % 20);
        for (pb_size_t i = 0; i < r->results_count; i++)
            r->results[i] = rnd_result();
        expect_reply(IM_HERE, r);
    }
    free(r);
}

/* Replies that are not results only: the shard encodes them with nanopb. */
static void test_reply_only(void)
{
    imbox_internal_v1_ShardReply *r = reply_new();
    EXPECT(im_store_reply_only(r, 0), "an empty reply is results-only");
    EXPECT(!im_store_reply_only(r, 1), "entries");
    r->code = IM_INVALID_ARGUMENT;
    EXPECT(!im_store_reply_only(r, 0), "code");
    r->code = 0;
    snprintf(r->error, sizeof r->error, "x");
    EXPECT(!im_store_reply_only(r, 0), "error");
    r->error[0] = 0;
    r->count = 1;
    EXPECT(!im_store_reply_only(r, 0), "count");
    r->count = 0;
    r->last_seq = 1;
    EXPECT(!im_store_reply_only(r, 0), "last_seq");
    r->last_seq = 0;
    r->more = true;
    EXPECT(!im_store_reply_only(r, 0), "more");
    r->more = false;
    r->deleted = 1;
    EXPECT(!im_store_reply_only(r, 0), "deleted");
    r->deleted = 0;
    r->total = 1;
    EXPECT(!im_store_reply_only(r, 0), "total");
    r->total = 0;
    r->online_count = 1;
    EXPECT(!im_store_reply_only(r, 0), "online");
    r->online_count = 0;
    r->seqs_count = 1;
    EXPECT(!im_store_reply_only(r, 0), "seqs");
    r->seqs_count = 0;
    r->results_count = 3;
    EXPECT(im_store_reply_only(r, 0), "results");
    free(r);
}

/* What the hand decoder must leave to pb_decode. */
static void test_decode_declines(void)
{
    static const struct {
        const char *what;
        uint8_t b[16];
        size_t n;
    } v[] = {
        {"code field", {0x08, 0x05}, 2},
        {"error field", {0x12, 0x01, 'x'}, 3},
        {"entries field", {0x22, 0x00}, 2},
        {"deleted field", {0x40, 0x01}, 2},
        {"zero tag (nanopb: end of message)", {0x1A, 0x00, 0x00}, 3},
        {"results truncated", {0x1A, 0x02, 0x08}, 3},
        {"results length truncated", {0x1A, 0x80}, 2},
        {"length not minimal", {0x1A, 0x80, 0x00}, 3},
        {"unknown subfield", {0x1A, 0x02, 0x10, 0x01}, 4},
        {"subfield wire type", {0x1A, 0x02, 0x21, 0x01}, 4},
        {"subfields out of order", {0x1A, 0x04, 0x20, 0x01, 0x08, 0x01}, 6},
        {"subfield twice", {0x1A, 0x04, 0x20, 0x01, 0x20, 0x02}, 6},
        {"bool 2", {0x1A, 0x02, 0x18, 0x02}, 4},
        {"varint not minimal", {0x1A, 0x03, 0x20, 0x81, 0x00}, 5},
        {"code over int32", {0x1A, 0x06, 0x08, 0x80, 0x80, 0x80, 0x80, 0x08}, 8},
        {"varint past 64 bits",
         {0x1A, 0x0B, 0x20, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x02},
         13},
    };
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++)
        EXPECT(!check_decode(IM_HERE, v[i].b, v[i].n), "accepted: %s", v[i].what);
    /* 1001 results: one over the array */
    size_t n = 2 * 1001;
    uint8_t *b = malloc(n);
    CU_ASSERT_FATAL(b != NULL);
    for (size_t i = 0; i < n; i += 2)
        b[i] = 0x1A, b[i + 1] = 0x00;
    EXPECT(!check_decode(IM_HERE, b, n), "accepted 1001 results");
    EXPECT(check_decode(IM_HERE, b, n - 2), "refused 1000 empty results");
    free(b);
}

/* Mutated encodings: whatever the hand decoder accepts, pb_decode decodes
 * to the same fields. */
static void test_decode_mutations(void)
{
    imbox_internal_v1_ShardReply *r = reply_new();
    int accepted = 0, total = 0;
    for (int k = 0; k < 3000; k++) {
        r->results_count = (pb_size_t)(1 + rnd() % 4);
        for (pb_size_t i = 0; i < r->results_count; i++)
            r->results[i] = rnd_result();
        uint8_t *buf;
        size_t n;
        CU_ASSERT_FATAL(im_store_reply_encode(r, &buf, &n) == 0);
        uint8_t *m = malloc(n + 2);
        CU_ASSERT_FATAL(m != NULL);
        memcpy(m, buf, n);
        size_t mn = n, at = rnd() % n;
        uint8_t x = (uint8_t)rnd();
        switch (rnd() % 4) {
        case 0: m[at] = x; break;                              /* a byte */
        case 1: m[at] ^= (uint8_t)(1u << (x % 8)); break;      /* a bit */
        case 2: mn = at; break;                                /* truncated */
        default: m[n] = x, m[n + 1] = (uint8_t)rnd(), mn = n + rnd() % 3; /* appended */
        }
        accepted += check_decode(IM_HERE, m, mn);
        total++;
        free(m);
        free(buf);
    }
    EXPECT(accepted > 0 && accepted < total, "%d of %d mutations accepted", accepted, total);
    free(r);
}

/* ----------------------------------------------------------- im_pb_encode */

static bool write_blob(pb_ostream_t *s, const pb_field_t *f, void *const *arg)
{
    const im_bytes_out *o = *arg;
    return pb_encode_tag_for_field(s, f) && pb_encode_string(s, o->p, o->n);
}

/* A message under IM_PB_ONE_PASS and one over it, alone and appended
 * after a prefix: the same bytes as sizing then encoding. */
static void test_encode_passes(void)
{
    static uint8_t blob[3 * IM_PB_ONE_PASS];
    for (size_t i = 0; i < sizeof blob; i++)
        blob[i] = (uint8_t)rnd();
    static const size_t sizes[] = {0, 10, IM_PB_ONE_PASS - 3, IM_PB_ONE_PASS - 2,
                                   IM_PB_ONE_PASS, sizeof blob};
    const uint8_t prefix[] = {0x0A, 0x01, 'p'};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        imbox_internal_v1_Commit m = {.seq = 77};
        snprintf(m.uid, sizeof m.uid, "u%zu", k);
        im_bytes_out o = {blob, sizes[k]};
        m.entry.funcs.encode = write_blob;
        m.entry.arg = &o;
        size_t wn, gn;
        uint8_t *want = ref_encode(imbox_internal_v1_Commit_fields, &m, &wn), *got;
        CU_ASSERT_FATAL(im_pb_encode(imbox_internal_v1_Commit_fields, &m, &got, &gn) == 0);
        expect_bytes(IM_HERE, "Commit", got, gn, want, wn);
        free(got);
        /* The same appended to a malloc'ed buffer holding the prefix. */
        uint8_t *buf = malloc(sizeof prefix);
        CU_ASSERT_FATAL(buf != NULL);
        memcpy(buf, prefix, sizeof prefix);
        size_t bn = sizeof prefix;
        CU_ASSERT_FATAL(im_pb_append_encoded(&buf, &bn, imbox_internal_v1_Commit_fields, &m) ==
                        0);
        EXPECT(bn == sizeof prefix + wn && memcmp(buf, prefix, sizeof prefix) == 0,
               "%zu bytes of content: appended after the prefix", sizes[k]);
        if (bn == sizeof prefix + wn)
            expect_bytes(IM_HERE, "Commit appended", buf + sizeof prefix, wn, want, wn);
        free(buf);
        free(want);
    }
}

/* ------------------------------------------------------ Message entry */

/* Checks im_msg_append of m against the shard's former encoding: the
 * strings copied into an imbox_v1_Message (cut at its sizes), the content
 * through im_pb_write_bytes, im_pb_append_submsg. Both append to a buffer
 * that already holds `before` bytes, which must stay as they are. */
static void expect_msg(im_loc L, const im_msg_view *m, size_t before)
{
    imbox_v1_Message r;
    memset(&r, 0, sizeof r);
    snprintf(r.msg_id, sizeof r.msg_id, "%s", m->msg_id);
    snprintf(r.sender_uid, sizeof r.sender_uid, "%s", m->sender_uid);
    snprintf(r.receiver_uid, sizeof r.receiver_uid, "%s", m->receiver_uid);
    r.send_time_ms = m->send_time_ms;
    r.msg_type = m->msg_type;
    im_bytes_out content = {m->content, m->content_len};
    r.content.funcs.encode = im_pb_write_bytes;
    r.content.arg = &content;
    im_buf want = {0}, got = {0};
    for (size_t i = 0; i < before; i++) {
        uint8_t b = (uint8_t)i;
        CU_ASSERT_FATAL(im_buf_append(&want, &b, 1) == 0 && im_buf_append(&got, &b, 1) == 0);
    }
    CU_ASSERT_FATAL(im_pb_append_submsg(&want, imbox_v1_PullResponse_messages_tag,
                                        imbox_v1_Message_fields, &r) == 0);
    if (im_cunit_record(L, im_msg_append(&got, imbox_v1_PullResponse_messages_tag, m) == 0,
                        "im_msg_append fails"))
        expect_bytes(L, "Message entry", got.p, got.n, want.p, want.n);
    im_buf_free(&want);
    im_buf_free(&got);
}

static void test_msg_cases(void)
{
    static char longest[IM_MSGID_MAX + 1], uid[IM_UID_MAX + 1], over[400];
    static uint8_t blob[70000];
    fill_text(longest, IM_MSGID_MAX);
    fill_text(uid, IM_UID_MAX);
    memset(over, 'o', sizeof over - 1); /* longer than any field: cut as before */
    for (size_t i = 0; i < sizeof blob; i++)
        blob[i] = (uint8_t)rnd();
    const im_msg_view cases[] = {
        {"m", "a", "b", 1700000000000, 0, (const uint8_t *)"hi", 2},
        {"m", "a", "b", 0, 0, NULL, 0},                 /* zeros and no content */
        {"", "", "", 0, 0, NULL, 0},                    /* empty strings */
        {"m", "a", "b", -1, -1, blob, 1},               /* negatives: 10 bytes */
        {"m", "a", "b", INT64_MIN, INT32_MIN, blob, 127},
        {"m", "a", "b", INT64_MAX, INT32_MAX, blob, 128}, /* a 2-byte length */
        {longest, uid, uid, 1, 7, blob, 16384},
        {longest, uid, uid, 1, 7, blob, sizeof blob},   /* a 3-byte length */
        {over, over, over, 5, 5, blob, 3},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        expect_msg(IM_HERE, &cases[i], 0);
        expect_msg(IM_HERE, &cases[i], i * 1000); /* after earlier entries */
    }
}

static void test_msg_random(void)
{
    static char id[IM_MSGID_MAX + 1], from[IM_UID_MAX + 1], to[IM_UID_MAX + 1];
    static uint8_t blob[20000];
    for (int k = 0; k < 20000; k++) {
        fill_text(id, rnd() % (IM_MSGID_MAX + 1));
        fill_text(from, rnd() % (IM_UID_MAX + 1));
        fill_text(to, rnd() % (IM_UID_MAX + 1));
        size_t n = rnd() % 4 ? rnd() % 300 : rnd() % sizeof blob;
        for (size_t i = 0; i < n; i++)
            blob[i] = (uint8_t)rnd();
        im_msg_view m = {id, from, to, rnd() % 3 ? (int64_t)rnd_mag() : 0,
                         rnd() % 3 ? (int32_t)rnd_mag() : 0, n ? blob : NULL, n};
        expect_msg(IM_HERE, &m, rnd() % 64);
    }
}

static const im_cunit_test tests[] = {
    {"msg_cases", test_msg_cases},
    {"msg_random", test_msg_random},
    {"receipts_cases", test_receipts_cases},
    {"receipts_random", test_receipts_random},
    {"store_request", test_store_request},
    {"reply_cases", test_reply_cases},
    {"reply_only", test_reply_only},
    {"decode_declines", test_decode_declines},
    {"decode_mutations", test_decode_mutations},
    {"encode_passes", test_encode_passes},
};

int main(int argc, char **argv)
{
    return im_cunit_main("enc", tests, sizeof tests / sizeof tests[0],
                         argc > 1 ? argv[1] : NULL);
}
