/*
 * test_uids.c - CUnit suite of gw__read_uid (gw_call.h), the decode
 * callback of a repeated uid field, on hostile input: the list grows as
 * uids come but never past `max` kept, every uid is counted, the first
 * over-long or NUL-holding one is remembered with its index.
 *
 * Usage: test_uids [test-name]   (no argument: the whole suite)
 * Exit status: 0 when every assertion held, 1 otherwise.
 */
#include "gw_call.h"

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

/* The uids a request carries: uid i is "u<i>", except that index `bad`
 * (when >= 0) has `bad_len` bytes of `bad_byte`. */
typedef struct list {
    int n, bad;
    size_t bad_len;
    char bad_byte;
} list;

static bool write_list(pb_ostream_t *s, const pb_field_t *f, void *const *arg)
{
    const list *l = *arg;
    for (int i = 0; i < l->n; i++) {
        char buf[256];
        size_t len;
        if (i == l->bad) {
            memset(buf, l->bad_byte, l->bad_len);
            len = l->bad_len;
        } else {
            len = (size_t)snprintf(buf, sizeof buf, "u%d", i);
        }
        if (!pb_encode_tag_for_field(s, f) || !pb_encode_string(s, (uint8_t *)buf, len))
            return false;
    }
    return true;
}

/* Encodes a SendRequest with list l and decodes it into u (max kept). */
static void roundtrip(const list *l, int max, gw_uids *u)
{
    static uint8_t buf[1 << 20];
    imbox_v1_SendRequest q;
    memset(&q, 0, sizeof q);
    q.receiver_uids.funcs.encode = write_list;
    q.receiver_uids.arg = (void *)l;
    pb_ostream_t os = pb_ostream_from_buffer(buf, sizeof buf);
    CU_ASSERT_FATAL(pb_encode(&os, imbox_v1_SendRequest_fields, &q));

    *u = (gw_uids){.max = max, .bad = -1};
    memset(&q, 0, sizeof q);
    q.receiver_uids.funcs.decode = gw__read_uid;
    q.receiver_uids.arg = u;
    pb_istream_t is = pb_istream_from_buffer(buf, os.bytes_written);
    CU_ASSERT_FATAL(pb_decode(&is, imbox_v1_SendRequest_fields, &q));
}

/* Every kept uid is the one sent, in order. */
static int wrong_uids(const gw_uids *u, int skip)
{
    int wrong = 0;
    for (int i = 0; i < u->n; i++) {
        char want[16];
        snprintf(want, sizeof want, "u%d", i);
        if (i != skip && strcmp(u->v[i], want) != 0)
            wrong++;
    }
    return wrong;
}

static void test_grows_to_fit(void)
{
    int sizes[] = {0, 1, 3, 4, 5, 8, 9, 100, 999, 1000};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        list l = {.n = sizes[k], .bad = -1};
        gw_uids u;
        roundtrip(&l, IM_RECEIVERS_MAX, &u);
        EXPECT(u.n == l.n && u.total == l.n, "%d sent: %d kept, %d seen", l.n, u.n, u.total);
        EXPECT(u.cap >= u.n && u.cap <= IM_RECEIVERS_MAX, "%d sent: cap %d", l.n, u.cap);
        EXPECT(l.n > 0 || u.v == NULL, "nothing sent, yet memory");
        EXPECT_I64(u.bad, -1);
        EXPECT_I64(wrong_uids(&u, -1), 0);
        EXPECT_I64(u.oom, 0);
        free(u.v);
    }
}

/* Past max, uids are counted and not kept; memory stays at max. */
static void test_bounded_by_max(void)
{
    list l = {.n = 5000, .bad = -1};
    gw_uids u;
    roundtrip(&l, 10, &u);
    EXPECT_I64(u.n, 10);
    EXPECT_I64(u.total, 5000);
    EXPECT_I64(u.cap, 10);
    EXPECT_I64(wrong_uids(&u, -1), 0);
    free(u.v);

    roundtrip(&l, IM_RECEIVERS_MAX, &u);
    EXPECT_I64(u.n, IM_RECEIVERS_MAX);
    EXPECT_I64(u.total, 5000);
    EXPECT_I64(u.cap, IM_RECEIVERS_MAX);
    free(u.v);
}

/* The first over-long uid is remembered (kept or not), and a NUL inside. */
static void test_bad_uids(void)
{
    gw_uids u;
    list over = {.n = 7, .bad = 5, .bad_len = IM_UID_MAX + 1, .bad_byte = 'x'};
    roundtrip(&over, IM_RECEIVERS_MAX, &u);
    EXPECT_I64(u.bad, 5);
    EXPECT_I64(u.bad_len, IM_UID_MAX + 1);
    EXPECT_I64(u.n, 6); /* not kept */
    EXPECT_I64(u.total, 7);
    free(u.v);

    list late = {.n = 40, .bad = 30, .bad_len = 200, .bad_byte = 'y'};
    roundtrip(&late, 10, &u); /* beyond max: still seen */
    EXPECT_I64(u.bad, 30);
    EXPECT_I64(u.bad_len, 200);
    EXPECT_I64(u.n, 10);
    free(u.v);

    list nul = {.n = 9, .bad = 6, .bad_len = 3, .bad_byte = 0};
    roundtrip(&nul, IM_RECEIVERS_MAX, &u);
    EXPECT_I64(u.bad, 6);
    EXPECT_I64(u.bad_len, 3);
    EXPECT_I64(u.n, 9);
    EXPECT_I64(wrong_uids(&u, 6), 0);
    free(u.v);
}

static const im_cunit_test tests[] = {
    {"grows_to_fit", test_grows_to_fit},
    {"bounded_by_max", test_bounded_by_max},
    {"bad_uids", test_bad_uids},
};

int main(int argc, char **argv)
{
    return im_cunit_main("uids", tests, sizeof tests / sizeof tests[0],
                         argc > 1 ? argv[1] : NULL);
}
