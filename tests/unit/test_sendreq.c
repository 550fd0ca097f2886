/*
 * test_sendreq.c - CUnit suite of gw_sendreq.h: the hand reader of a
 * SendRequest must be an exact subset of the gateway's generic decode
 * (gw__decode: im_pb_scan_wire, groups dropped, pb_decode with gw__send's
 * callbacks im_pb_read_str, gw__read_uid and im_pb_read_bytes, reproduced
 * here step by step). Checked:
 *   - the encoder's form (nanopb's bytes) is accepted, with the generic
 *     path's fields, up to every limit;
 *   - every form it must decline is declined (unknown, repeated or
 *     out-of-order fields, groups, field 0, another wire type, non-minimal
 *     varints, NUL bytes, over-limit sizes, trailing or missing bytes);
 *   - 20,000 random corruptions of a valid request: whenever the reader
 *     accepts, the generic path accepts too and decodes the same request,
 *     with nothing for the checks after it to flag that the reader did not
 *     see (no over-long or NUL-holding field, no uid dropped).
 * Usage: test_sendreq [test-name]; exit status 0 when every assertion held.
 */
#include "gw_sendreq.h"

#include "gw_call.h"
#include "im_cunit.h"
#include "im_wire.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXPECT(cond, ...) im_cunit_record(IM_HERE, (cond), __VA_ARGS__)
#define CONTENT_MAX IM_CONTENT_MAX

static const gw_sendreq_limits LIM = {
    .msg_id_max = IM_MSGID_MAX, .uid_max = IM_UID_MAX,
    .receivers_max = IM_RECEIVERS_MAX, .content_max = CONTENT_MAX,
};

/* --------------------------------------------- a request, by nanopb */

typedef struct spec {
    const char *msg_id;
    const char *const *receivers;
    int nreceivers;
    int32_t msg_type;
    const uint8_t *content;
    size_t content_len;
} spec;

static bool s_write_uids(pb_ostream_t *s, const pb_field_t *f, void *const *arg)
{
    const spec *x = *arg;
    for (int i = 0; i < x->nreceivers; i++)
        if (!pb_encode_tag_for_field(s, f) ||
            !pb_encode_string(s, (const uint8_t *)x->receivers[i], strlen(x->receivers[i])))
            return false;
    return true;
}

/* nanopb's bytes of x (an empty msg_id or content left out, as proto3). */
static size_t s_encode(const spec *x, uint8_t **out)
{
    imbox_v1_SendRequest q = imbox_v1_SendRequest_init_zero;
    im_bytes_out id = {x->msg_id, strlen(x->msg_id)}, c = {x->content, x->content_len};
    if (id.n) {
        q.msg_id.funcs.encode = im_pb_write_bytes;
        q.msg_id.arg = &id;
    }
    q.receiver_uids.funcs.encode = s_write_uids;
    q.receiver_uids.arg = (void *)x;
    q.msg_type = x->msg_type;
    if (c.n) {
        q.content.funcs.encode = im_pb_write_bytes;
        q.content.arg = &c;
    }
    size_t n = 0;
    CU_ASSERT_FATAL(im_pb_encode(imbox_v1_SendRequest_fields, &q, out, &n) == 0);
    return n;
}

/* ------------------------------ the reference: gw__decode, by gw__send */

/* gw__decode's steps with gw__send's callbacks and limits; true when it
 * decodes. */
static bool s_reference(const uint8_t *b, size_t n, gw_send_in *d)
{
    gw__send_in_free(d);
    gw__send_in_init(d, CONTENT_MAX);
    const char *why;
    bool oom;
    bool ok = gw__decode_bytes(imbox_v1_SendRequest_fields, &d->q, b, n, &why, &oom);
    CU_ASSERT_FATAL(!oom);
    return ok;
}

/* The reader's answer (q, its receivers in rows) is the reference's, and
 * the reference saw nothing that the checks after decoding would flag
 * unlike what the reader gives. */
static bool s_same(const gw_sendreq *q, char (*rows)[IM_UID_MAX + 1], const gw_send_in *d)
{
    if (d->mid.n != q->msg_id_len || d->mid.over || d->mid.nul ||
        (q->msg_id_len && memcmp(d->msg_id, q->msg_id, q->msg_id_len) != 0) ||
        d->msg_id[q->msg_id_len] != 0)
        return false;
    if (d->u.n != q->nreceivers || d->u.total != q->nreceivers || d->u.bad != -1 ||
        d->u.oom)
        return false;
    for (int i = 0; i < q->nreceivers; i++)
        if (strcmp(rows[i], d->u.v[i]) != 0)
            return false;
    return d->q.msg_type == q->msg_type && !d->content.over &&
           d->content.n == q->content_len &&
           (!q->content_len || memcmp(d->content.p, q->content, q->content_len) == 0);
}

static char (*s_rows)[IM_UID_MAX + 1];
static gw_send_in *s_ref;

/* Reads b with the reader; when it accepts, expects the reference to
 * agree. Returns whether the reader accepted. */
static bool s_check(const uint8_t *b, size_t n, const char *what)
{
    gw_sendreq q;
    if (!gw_sendreq_read(b, n, &LIM, &q))
        return false;
    gw_sendreq_receivers(&q, s_rows[0], sizeof s_rows[0]);
    bool ref = s_reference(b, n, s_ref);
    EXPECT(ref && s_same(&q, s_rows, s_ref), "%s: accepted, unlike the generic path", what);
    return true;
}

static void s_accepted(const spec *x, const char *what)
{
    uint8_t *b;
    size_t n = s_encode(x, &b);
    EXPECT(s_check(b, n, what), "%s: the encoder's form declined", what);
    free(b);
}

static void s_declined(const uint8_t *b, size_t n, const char *what)
{
    gw_sendreq q;
    EXPECT(!gw_sendreq_read(b, n, &LIM, &q), "%s: accepted", what);
}

static void s_declined_spec(const spec *x, const char *what)
{
    uint8_t *b;
    size_t n = s_encode(x, &b);
    s_declined(b, n, what);
    free(b);
}

/* ---------------------------------------------------------- tests */

static const char *const uids3[] = {"bob", "carol", "dave"};

static void test_accepts_the_encoders_form(void)
{
    uint8_t content[300];
    for (size_t i = 0; i < sizeof content; i++)
        content[i] = (uint8_t)(i * 7); /* NUL bytes too: content is bytes */
    const spec cases[] = {
        {"m-1", uids3, 1, 0, NULL, 0},
        {"m-2", uids3, 3, 7, content, sizeof content},
        {"m-3", uids3, 2, -1, content, 1},
        {"m-4", uids3, 3, INT32_MAX, NULL, 0},
        {"m-5", uids3, 1, INT32_MIN, content, 200},
        {"\xff\xfe", uids3, 1, 0, NULL, 0}, /* not UTF-8: the checks after say so */
        {"m-7", uids3, 0, 0, NULL, 0},      /* no receiver: likewise */
        {"", uids3, 1, 0, NULL, 0},         /* no msg_id: likewise */
        {"", uids3, 0, 0, NULL, 0},         /* the empty message */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char what[32];
        snprintf(what, sizeof what, "case %zu", i);
        s_accepted(&cases[i], what);
    }
    /* hand-made forms an encoder may write: empty fields present */
    static const uint8_t empty_fields[] = {0x0A, 0x00, 0x12, 0x00, 0x18, 0x00, 0x22, 0x00};
    EXPECT(s_check(empty_fields, sizeof empty_fields, "empty fields"), "empty fields declined");
    EXPECT(s_check(NULL, 0, "nothing"), "the empty message declined");
}

static void test_accepts_up_to_the_limits(void)
{
    char id[IM_MSGID_MAX + 1], uid[IM_UID_MAX + 1];
    memset(id, 'm', IM_MSGID_MAX);
    id[IM_MSGID_MAX] = 0;
    memset(uid, 'u', IM_UID_MAX);
    uid[IM_UID_MAX] = 0;
    const char *const one_long[] = {uid};
    uint8_t *content = calloc(CONTENT_MAX, 1);
    const char **many = malloc(IM_RECEIVERS_MAX * sizeof *many);
    CU_ASSERT_FATAL(content && many);
    for (int i = 0; i < IM_RECEIVERS_MAX; i++)
        many[i] = uids3[i % 3]; /* listed twice: the checks after say so */
    s_accepted(&(spec){id, one_long, 1, 1, content, CONTENT_MAX}, "every field at its limit");
    s_accepted(&(spec){"m", many, IM_RECEIVERS_MAX, 1, NULL, 0}, "1000 receivers");
    free(content);
    free(many);
}

static void test_declines(void)
{
    static const uint8_t unknown[] = {0x0A, 0x01, 'm', 0x28, 0x01};
    s_declined(unknown, sizeof unknown, "an unknown field");
    static const uint8_t order[] = {0x18, 0x01, 0x0A, 0x01, 'm'};
    s_declined(order, sizeof order, "msg_type before msg_id");
    static const uint8_t apart[] = {0x12, 0x01, 'a', 0x18, 0x01, 0x12, 0x01, 'b'};
    s_declined(apart, sizeof apart, "receivers not one after another");
    static const uint8_t id2[] = {0x0A, 0x01, 'm', 0x0A, 0x01, 'n'};
    s_declined(id2, sizeof id2, "msg_id twice");
    static const uint8_t type2[] = {0x18, 0x01, 0x18, 0x02};
    s_declined(type2, sizeof type2, "msg_type twice");
    static const uint8_t content2[] = {0x22, 0x01, 'c', 0x22, 0x01, 'd'};
    s_declined(content2, sizeof content2, "content twice");
    static const uint8_t padded[] = {0x18, 0x81, 0x00};
    s_declined(padded, sizeof padded, "a varint with a superfluous zero byte");
    static const uint8_t padded_len[] = {0x0A, 0x81, 0x00, 'm'};
    s_declined(padded_len, sizeof padded_len, "a length with a superfluous zero byte");
    static const uint8_t padded_uid[] = {0x12, 0x81, 0x00, 'u'};
    s_declined(padded_uid, sizeof padded_uid, "a receiver's length padded");
    static const uint8_t padded_key[] = {0x8A, 0x00, 0x01, 'm'};
    s_declined(padded_key, sizeof padded_key, "a key with a superfluous zero byte");
    static const uint8_t group[] = {0x0A, 0x01, 'm', 0x2B, 0x2C};
    s_declined(group, sizeof group, "a group (field 5)");
    static const uint8_t zero[] = {0x02, 0x00};
    s_declined(zero, sizeof zero, "field 0");
    static const uint8_t wire[] = {0x08, 0x01};
    s_declined(wire, sizeof wire, "msg_id as a varint");
    static const uint8_t wire_type[] = {0x1A, 0x01, 0x01};
    s_declined(wire_type, sizeof wire_type, "msg_type length-delimited (packed)");
    static const uint8_t id_nul[] = {0x0A, 0x03, 'm', 0, 'n'};
    s_declined(id_nul, sizeof id_nul, "a NUL in msg_id");
    static const uint8_t uid_nul[] = {0x12, 0x03, 'u', 0, 'v'};
    s_declined(uid_nul, sizeof uid_nul, "a NUL in a receiver");
    /* msg_type 2^31 (past int32) and 0xFFFFFFFF (nanopb: -1, truncated) */
    static const uint8_t big[] = {0x18, 0x80, 0x80, 0x80, 0x80, 0x08};
    s_declined(big, sizeof big, "msg_type past int32");
    static const uint8_t minus1_32[] = {0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F};
    s_declined(minus1_32, sizeof minus1_32, "msg_type -1 in 32 bits");
    static const uint8_t past64[] = {0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
                                     0xFF, 0xFF, 0xFF, 0xFF, 0x02};
    s_declined(past64, sizeof past64, "a varint past 64 bits");
    static const uint8_t trailing[] = {0x0A, 0x01, 'm', 0x00};
    s_declined(trailing, sizeof trailing, "a zero byte after the fields");
    static const uint8_t trailing_ff[] = {0x0A, 0x01, 'm', 0xFF};
    s_declined(trailing_ff, sizeof trailing_ff, "0xFF after the fields");
    static const uint8_t short_len[] = {0x0A, 0x05, 'm'};
    s_declined(short_len, sizeof short_len, "a length past the end");
    static const uint8_t short_uid[] = {0x12, 0x02, 'u'};
    s_declined(short_uid, sizeof short_uid, "a receiver past the end");
    static const uint8_t no_len[] = {0x0A};
    s_declined(no_len, sizeof no_len, "a key alone");
    static const uint8_t cut_varint[] = {0x18, 0x80};
    s_declined(cut_varint, sizeof cut_varint, "a varint cut");

    /* over the limits, by one */
    char id[IM_MSGID_MAX + 2], uid[IM_UID_MAX + 2];
    memset(id, 'm', IM_MSGID_MAX + 1);
    id[IM_MSGID_MAX + 1] = 0;
    memset(uid, 'u', IM_UID_MAX + 1);
    uid[IM_UID_MAX + 1] = 0;
    const char *const one_long[] = {uid};
    s_declined_spec(&(spec){id, uids3, 1, 0, NULL, 0}, "msg_id over 128 bytes");
    s_declined_spec(&(spec){"m", one_long, 1, 0, NULL, 0}, "a receiver over 64 bytes");
    uint8_t *content = calloc(CONTENT_MAX + 1, 1);
    const char **many = malloc((IM_RECEIVERS_MAX + 1) * sizeof *many);
    CU_ASSERT_FATAL(content && many);
    for (int i = 0; i <= IM_RECEIVERS_MAX; i++)
        many[i] = "r";
    s_declined_spec(&(spec){"m", uids3, 1, 0, content, CONTENT_MAX + 1}, "content over 64 KiB");
    s_declined_spec(&(spec){"m", many, IM_RECEIVERS_MAX + 1, 0, NULL, 0}, "1001 receivers");
    /* the content limit is the reader's caller's (the configured one) */
    gw_sendreq_limits lim = LIM;
    lim.content_max = 3;
    uint8_t *b;
    size_t n = s_encode(&(spec){"m", uids3, 1, 0, content, 4}, &b);
    gw_sendreq q;
    EXPECT(!gw_sendreq_read(b, n, &lim, &q), "content over a configured limit: accepted");
    free(b);
    free(content);
    free(many);

    /* every cut of a request inside a field */
    n = s_encode(&(spec){"m-9", uids3, 3, -5, (const uint8_t *)"hello", 5}, &b);
    int accepted = 0;
    for (size_t cut = 0; cut < n; cut++)
        accepted += s_check(b, cut, "a cut request");
    /* the cuts at field boundaries are whole messages: after msg_id, each
     * receiver and msg_type (and the empty one) */
    EXPECT(accepted == 6, "%d cuts accepted, 6 are whole messages", accepted);
    free(b);
}

/* Random corruptions: flips, truncations, insertions, a byte set. The
 * reader may decline what the generic path accepts, never the other way
 * round. */
static void test_corruptions_never_widen(void)
{
    uint8_t content[64];
    for (size_t i = 0; i < sizeof content; i++)
        content[i] = (uint8_t)('a' + i % 26);
    spec x = {"msg-17", uids3, 3, 5, content, sizeof content};
    uint8_t *good;
    size_t n = s_encode(&x, &good);
    uint8_t *b = malloc(n + 8);
    CU_ASSERT_FATAL(b != NULL);
    unsigned seed = 4242;
    int accepted = 0, ok = 0;
    for (int round = 0; round < 20000; round++) {
        memcpy(b, good, n);
        size_t m = n;
        seed = seed * 1103515245u + 12345u;
        int kind = (int)(seed >> 16) % 4;
        size_t at = (seed >> 4) % n;
        if (kind == 0)
            b[at] ^= (uint8_t)(1u << ((seed >> 24) % 8));
        else if (kind == 1)
            m = at;
        else if (kind == 2) {
            memmove(b + at + 1, b + at, n - at);
            b[at] = (uint8_t)(seed >> 8);
            m = n + 1;
        } else
            b[at] = (uint8_t)(seed >> 8);
        gw_sendreq q;
        if (gw_sendreq_read(b, m, &LIM, &q)) {
            accepted++;
            gw_sendreq_receivers(&q, s_rows[0], sizeof s_rows[0]);
            if (s_reference(b, m, s_ref) && s_same(&q, s_rows, s_ref))
                ok++;
        }
    }
    EXPECT(ok == accepted, "%d of %d accepted corruptions decode the same the generic way",
           ok, accepted);
    EXPECT(accepted > 1000, "only %d corruptions accepted: the test tests little", accepted);
    free(b);
    free(good);
}

static const im_cunit_test tests[] = {
    {"accepts_the_encoders_form", test_accepts_the_encoders_form},
    {"accepts_up_to_the_limits", test_accepts_up_to_the_limits},
    {"declines", test_declines},
    {"corruptions_never_widen", test_corruptions_never_widen},
};

int main(int argc, char **argv)
{
    s_rows = calloc(IM_RECEIVERS_MAX, sizeof s_rows[0]);
    s_ref = calloc(1, sizeof *s_ref);
    int rc = s_rows && s_ref ? im_cunit_main("sendreq", tests, sizeof tests / sizeof tests[0],
                                             argc > 1 ? argv[1] : NULL)
                             : 1;
    free(s_rows);
    if (s_ref)
        gw__send_in_free(s_ref);
    free(s_ref);
    return rc;
}
