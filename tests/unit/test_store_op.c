/*
 * test_store_op.c - CUnit suite of im_store_op.h: the hand reader of a
 * Store request must be an exact subset of nanopb's pb_decode. Checked:
 *   - the encoder's form (nanopb's bytes, which the gateway's hand encoder
 *     matches: test_enc.c) is accepted, with pb_decode's fields;
 *   - every form it must decline is declined (NUL bytes, limits, unknown,
 *     repeated or out-of-order fields, another operation, trailing bytes);
 *   - 20,000 random corruptions of valid requests: whenever the reader
 *     accepts, pb_decode accepts too and decodes the same request.
 * Usage: test_store_op [test-name]; exit status 0 when every assertion held.
 */
#include "im_store_op.h"

#include "im_cunit.h"
#include "im_wire.h"
#include "imbox/internal/v1/shard.pb.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXPECT(cond, ...) im_cunit_record(IM_HERE, (cond), __VA_ARGS__)
#define UID_MAX 64
#define RECV_MAX 1000
#define CONTENT_MAX 65536

typedef imbox_internal_v1_ShardRequest req_t;

static const im_store_op_limits LIM = {
    .sender_max = sizeof(((req_t *)0)->store.sender) - 1,
    .msg_id_max = sizeof(((req_t *)0)->store.msg_id) - 1,
    .content_max = CONTENT_MAX, .uid_max = UID_MAX, .receivers_max = RECV_MAX,
};

/* --------------------------------------------- a request, by nanopb */

typedef struct spec {
    const char *sender, *msg_id;
    int32_t msg_type;
    const uint8_t *content;
    size_t content_len;
    const char *const *receivers;
    int nreceivers;
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

static size_t s_encode(const spec *x, uint8_t **out)
{
    req_t r = imbox_internal_v1_ShardRequest_init_zero;
    r.has_store = true;
    snprintf(r.store.sender, sizeof r.store.sender, "%s", x->sender);
    snprintf(r.store.msg_id, sizeof r.store.msg_id, "%s", x->msg_id);
    r.store.msg_type = x->msg_type;
    im_bytes_out c = {x->content, x->content_len};
    if (x->content_len) {
        r.store.content.funcs.encode = im_pb_write_bytes;
        r.store.content.arg = &c;
    }
    r.store.receivers.funcs.encode = s_write_uids;
    r.store.receivers.arg = (void *)x;
    size_t n = 0;
    CU_ASSERT_FATAL(im_pb_encode(imbox_internal_v1_ShardRequest_fields, &r, out, &n) ==
                    0);
    return n;
}

/* ------------------------------------------ the reference: pb_decode */

typedef struct decoded {
    req_t r;
    im_bytes_in content;
    char recv[RECV_MAX][UID_MAX + 1];
    int nrecv;
    bool bad_recv;
} decoded;

static bool s_read_uid(pb_istream_t *s, const pb_field_t *f, void **arg)
{
    (void)f;
    decoded *d = *arg;
    size_t n = s->bytes_left;
    if (d->nrecv == RECV_MAX || n > UID_MAX)
        PB_RETURN_ERROR(s, "too many receivers or a receiver over 64 bytes");
    char *dst = d->recv[d->nrecv++];
    if (!pb_read(s, (uint8_t *)dst, n))
        return false;
    dst[n] = 0;
    return true;
}

/* pb_decode as the shard's generic path does it; true when it accepts a
 * Store and nothing else. */
static bool s_reference(const uint8_t *b, size_t n, decoded *d)
{
    memset(d, 0, sizeof *d);
    d->content.max = CONTENT_MAX;
    d->r.store.receivers.funcs.decode = s_read_uid;
    d->r.store.receivers.arg = d;
    d->r.store.content.funcs.decode = im_pb_read_bytes;
    d->r.store.content.arg = &d->content;
    pb_istream_t is = pb_istream_from_buffer(b, n);
    bool ok = pb_decode(&is, imbox_internal_v1_ShardRequest_fields, &d->r) &&
              !d->content.over && d->r.has_store &&
              d->r.has_read + d->r.has_ack + d->r.has_counts + d->r.has_presence +
                      d->r.has_query ==
                  0;
    return ok;
}

static bool s_same_uids(char (*recv)[UID_MAX + 1], const decoded *d)
{
    for (int i = 0; i < d->nrecv; i++)
        if (strcmp(recv[i], d->recv[i]) != 0)
            return false;
    return true;
}

/* The reader's answer agrees with the reference's. */
static bool s_same(const im_store_op *op, char (*recv)[UID_MAX + 1], const decoded *d)
{
    const imbox_internal_v1_StoreOp *s = &d->r.store;
    return op->sender_len == strlen(s->sender) &&
           (!op->sender_len || !memcmp(op->sender, s->sender, op->sender_len)) &&
           op->msg_id_len == strlen(s->msg_id) &&
           (!op->msg_id_len || !memcmp(op->msg_id, s->msg_id, op->msg_id_len)) &&
           op->msg_type == s->msg_type && op->content_len == d->content.n &&
           (!op->content_len || !memcmp(op->content, d->content.p, op->content_len)) &&
           op->nreceivers == d->nrecv && s_same_uids(recv, d);
}

static char (*s_recv)[UID_MAX + 1];
static decoded *s_ref;

static bool s_check(const uint8_t *b, size_t n, const char *what)
{
    im_store_op op;
    memset(s_recv, 0, RECV_MAX * sizeof s_recv[0]);
    bool fast = im_store_op_read(b, n, &LIM, &op, s_recv[0]);
    bool ref = s_reference(b, n, s_ref);
    if (fast)
        return EXPECT(ref && s_same(&op, s_recv, s_ref), "%s: accepted, unlike pb_decode", what);
    free(s_ref->content.p);
    s_ref->content.p = NULL;
    return fast;
}

/* ---------------------------------------------------------- tests */

static const char *const uids3[] = {"bob", "carol", "dave"};

static void test_accepts_the_encoders_form(void)
{
    uint8_t content[300];
    for (size_t i = 0; i < sizeof content; i++)
        content[i] = (uint8_t)(i * 7);
    const spec cases[] = {
        {"alice", "m-1", 0, NULL, 0, uids3, 1},
        {"alice", "m-2", 7, content, sizeof content, uids3, 3},
        {"alice", "m-3", -1, content, 1, uids3, 2},
        {"alice", "m-4", INT32_MAX, NULL, 0, uids3, 3},
        {"alice", "m-5", INT32_MIN, content, 200, uids3, 0},
        {"", "", 0, NULL, 0, uids3, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint8_t *b;
        size_t n = s_encode(&cases[i], &b);
        char what[32];
        snprintf(what, sizeof what, "case %zu", i);
        EXPECT(s_check(b, n, what), "case %zu: the encoder's form declined", i);
        free(s_ref->content.p);
        free(b);
    }
}

/* Expects buf to be declined. */
static void s_declined(const uint8_t *b, size_t n, const char *what)
{
    im_store_op op;
    EXPECT(!im_store_op_read(b, n, &LIM, &op, s_recv[0]), "%s: accepted", what);
}

static void test_declines(void)
{
    /* store { sender "a\0b" } */
    static const uint8_t nul[] = {0x0A, 0x05, 0x0A, 0x03, 'a', 0, 'b'};
    s_declined(nul, sizeof nul, "a NUL in the sender");
    /* store { msg_id "m", sender "a" }: out of order */
    static const uint8_t order[] = {0x0A, 0x06, 0x12, 0x01, 'm', 0x0A, 0x01, 'a'};
    s_declined(order, sizeof order, "fields out of order");
    static const uint8_t twice[] = {0x0A, 0x06, 0x0A, 0x01, 'a', 0x0A, 0x01, 'b'};
    s_declined(twice, sizeof twice, "the sender twice");
    static const uint8_t unknown[] = {0x0A, 0x02, 0x30, 0x01};
    s_declined(unknown, sizeof unknown, "an unknown field");
    static const uint8_t trailing[] = {0x0A, 0x00, 0x00};
    s_declined(trailing, sizeof trailing, "bytes after the store");
    static const uint8_t other_op[] = {0x0A, 0x00, 0x12, 0x00};
    s_declined(other_op, sizeof other_op, "a read beside the store");
    static const uint8_t not_store[] = {0x12, 0x00};
    s_declined(not_store, sizeof not_store, "a read alone");
    static const uint8_t short_len[] = {0x0A, 0x05, 0x0A, 0x01};
    s_declined(short_len, sizeof short_len, "a length past the end");
    /* msg_type 2^31: varint 80 80 80 80 08 */
    static const uint8_t big[] = {0x0A, 0x06, 0x18, 0x80, 0x80, 0x80, 0x80, 0x08};
    s_declined(big, sizeof big, "msg_type past int32");
    static const uint8_t padded[] = {0x0A, 0x03, 0x18, 0x81, 0x00};
    s_declined(padded, sizeof padded, "a varint with a superfluous zero byte");
    s_declined(NULL, 0, "nothing");
    /* a receiver of 65 bytes; 1001 receivers; a sender of 129 bytes */
    char long_uid[UID_MAX + 2];
    memset(long_uid, 'u', UID_MAX + 1);
    long_uid[UID_MAX + 1] = 0;
    const char *const one_long[] = {long_uid};
    spec x = {"alice", "m", 0, NULL, 0, one_long, 1};
    uint8_t *b;
    size_t n = s_encode(&x, &b);
    s_declined(b, n, "a receiver over 64 bytes");
    free(b);
    const char **many = malloc((RECV_MAX + 1) * sizeof *many);
    CU_ASSERT_FATAL(many != NULL);
    for (int i = 0; i <= RECV_MAX; i++)
        many[i] = "r";
    x = (spec){"alice", "m", 0, NULL, 0, many, RECV_MAX + 1};
    n = s_encode(&x, &b);
    s_declined(b, n, "1001 receivers");
    free(b);
    x.nreceivers = RECV_MAX;
    n = s_encode(&x, &b);
    EXPECT(s_check(b, n, "1000 receivers"), "1000 receivers declined");
    free(s_ref->content.p);
    free(b);
    free(many);
}

/* Random corruptions: flips, truncations, insertions. The reader may
 * decline what pb_decode accepts, never the other way round. */
static void test_corruptions_never_widen(void)
{
    uint8_t content[64];
    memset(content, 'c', sizeof content);
    spec x = {"alice", "msg-17", 5, content, sizeof content, uids3, 3};
    uint8_t *good;
    size_t n = s_encode(&x, &good);
    uint8_t *b = malloc(n + 8);
    CU_ASSERT_FATAL(b != NULL);
    unsigned seed = 12345;
    int accepted = 0, ok = 0;
    for (int round = 0; round < 20000; round++) {
        memcpy(b, good, n);
        size_t m = n;
        seed = seed * 1103515245u + 12345u;
        int kind = (int)(seed >> 16) % 3;
        size_t at = (seed >> 4) % n;
        if (kind == 0)
            b[at] ^= (uint8_t)(1u << ((seed >> 24) % 8));
        else if (kind == 1)
            m = at;
        else {
            memmove(b + at + 1, b + at, n - at);
            b[at] = (uint8_t)(seed >> 8);
            m = n + 1;
        }
        im_store_op op;
        if (im_store_op_read(b, m, &LIM, &op, s_recv[0])) {
            accepted++;
            if (s_reference(b, m, s_ref) && s_same(&op, s_recv, s_ref))
                ok++;
            free(s_ref->content.p);
        }
    }
    EXPECT(ok == accepted, "%d of %d accepted corruptions decode the same with pb_decode",
           ok, accepted);
    free(b);
    free(good);
}

static const im_cunit_test tests[] = {
    {"accepts_the_encoders_form", test_accepts_the_encoders_form},
    {"declines", test_declines},
    {"corruptions_never_widen", test_corruptions_never_widen},
};

int main(int argc, char **argv)
{
    s_recv = calloc(RECV_MAX, sizeof s_recv[0]);
    s_ref = calloc(1, sizeof *s_ref);
    int rc = s_recv && s_ref ? im_cunit_main("store_op", tests, sizeof tests / sizeof tests[0],
                                             argc > 1 ? argv[1] : NULL)
                             : 1;
    free(s_recv);
    free(s_ref);
    return rc;
}
