/*
 * test_tokens.c - CUnit suite of gw_tokens.h, the gateway's cache of
 * verified tokens: a hit gives the uid that verification gave, never past
 * the token's expiry, only for the exact bytes; a failure is never
 * remembered; memory stays bounded however many tokens come.
 *
 * Whether a call was answered from the cache is read from the cache's
 * counters (gw_tokens_stats_of).
 *
 * Usage: test_tokens [test-name]   (no argument: the whole suite)
 * Exit status: 0 when every assertion held, 1 otherwise.
 */
#include "gw_tokens.h"

#include "im_cunit.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* ============================================================ assertions */

#define EXPECT(cond, ...) im_cunit_record(IM_HERE, (cond), __VA_ARGS__)
#define EXPECT_I64(got, want)                                                  \
    do {                                                                       \
        int64_t g_ = (int64_t)(got), w_ = (int64_t)(want);                     \
        EXPECT(g_ == w_, "%s == %s (got %" PRId64 ", want %" PRId64 ")", #got, \
               #want, g_, w_);                                                 \
    } while (0)
#define EXPECT_STR(got, want)                                                  \
    do {                                                                       \
        const char *g_ = (got), *w_ = (want);                                  \
        EXPECT(g_ && w_ && strcmp(g_, w_) == 0, "%s == \"%s\" (got \"%s\")",   \
               #got, w_ ? w_ : "(null)", g_ ? g_ : "(null)");                  \
    } while (0)

/* ============================================================== helpers */

#define NOW INT64_C(1700000000)

static im_secret secret(uint8_t salt)
{
    im_secret s;
    for (int i = 0; i < 32; i++)
        s.key[i] = (uint8_t)(salt ^ i);
    return s;
}

static void make(const im_secret *s, const char *uid, int64_t expiry, char tok[IM_TOKEN_MAX])
{
    CU_ASSERT_FATAL(im_token_make(s, uid, expiry, tok, IM_TOKEN_MAX) == 0);
}

/* A token of arbitrary content: b64url(body "." HMAC(secret, body)), to sign
 * what im_token_make() refuses to make (a uid that breaks the rule). */
static void sign_raw(const im_secret *s, const char *body, char *out, size_t cap)
{
    uint8_t raw[256];
    size_t blen = strlen(body);
    CU_ASSERT_FATAL(blen + 1 + 32 <= sizeof raw);
    memcpy(raw, body, blen);
    raw[blen] = '.';
    unsigned len = 0;
    CU_ASSERT_FATAL(HMAC(EVP_sha256(), s->key, 32, raw, blen, raw + blen + 1, &len) != NULL);
    CU_ASSERT_FATAL(im_b64url_encode(raw, blen + 1 + 32, out, cap) > 0);
}

static int verify(gw_tokens *t, const im_secret *s, const char *tok, int64_t now,
                  char uid[IM_UID_MAX + 1], const char **why)
{
    *why = NULL;
    strcpy(uid, "garbage");
    return gw_tokens_verify(t, s, tok, strlen(tok), now, uid, why);
}

static gw_tokens_stats stats(const gw_tokens *t)
{
    return gw_tokens_stats_of(t);
}

/* Another base64url digit than c. */
static char other_digit(char c)
{
    return c == 'A' ? 'B' : 'A';
}

/* ================================================================ tests */

/* A hit gives the uid the first verification gave, token by token. */
static void test_hit_same_uid(void)
{
    gw_tokens *t = gw_tokens_new();
    CU_ASSERT_FATAL(t != NULL);
    im_secret s = secret(1);
    char a[IM_TOKEN_MAX], b[IM_TOKEN_MAX], uid[IM_UID_MAX + 1];
    const char *why;
    make(&s, "alice", NOW + 3600, a);
    make(&s, "bob.example", NOW + 60, b);

    EXPECT_I64(verify(t, &s, a, NOW, uid, &why), 0);
    EXPECT_STR(uid, "alice");
    EXPECT_I64(stats(t).misses, 1);
    EXPECT_I64(stats(t).entries, 1);
    EXPECT_I64(verify(t, &s, b, NOW, uid, &why), 0);
    EXPECT_STR(uid, "bob.example");
    EXPECT_I64(stats(t).entries, 2);
    for (int i = 0; i < 3; i++) {
        EXPECT_I64(verify(t, &s, a, NOW + i, uid, &why), 0);
        EXPECT_STR(uid, "alice");
        EXPECT_I64(verify(t, &s, b, NOW + i, uid, &why), 0);
        EXPECT_STR(uid, "bob.example");
    }
    EXPECT_I64(stats(t).hits, 6);
    EXPECT_I64(stats(t).misses, 2);
    EXPECT_I64(stats(t).entries, 2);

    /* The longest token there is (64-byte uid, 19-digit expiry) is cached. */
    char uid64[IM_UID_MAX + 1], big[IM_TOKEN_MAX];
    memset(uid64, 'x', IM_UID_MAX);
    uid64[IM_UID_MAX] = 0;
    make(&s, uid64, INT64_MAX, big);
    EXPECT_I64(strlen(big), GW_TOKENS_LEN_MAX - 3); /* 156 chars */
    EXPECT_I64(verify(t, &s, big, NOW, uid, &why), 0);
    EXPECT_I64(verify(t, &s, big, NOW, uid, &why), 0);
    EXPECT_STR(uid, uid64);
    EXPECT_I64(stats(t).hits, 7);
    gw_tokens_free(t);
}

/* A cached token is refused from its expiry on, with the usual text, and
 * its entry is gone. */
static void test_expired_refused_when_cached(void)
{
    gw_tokens *t = gw_tokens_new();
    CU_ASSERT_FATAL(t != NULL);
    im_secret s = secret(2);
    char tok[IM_TOKEN_MAX], uid[IM_UID_MAX + 1];
    const char *why;
    make(&s, "carol", NOW + 10, tok);

    EXPECT_I64(verify(t, &s, tok, NOW, uid, &why), 0);
    EXPECT_I64(verify(t, &s, tok, NOW + 9, uid, &why), 0); /* last second: a hit */
    EXPECT_STR(uid, "carol");
    EXPECT_I64(stats(t).hits, 1);
    EXPECT_I64(verify(t, &s, tok, NOW + 10, uid, &why), -1);
    EXPECT_STR(why, "token: expired");
    EXPECT_STR(uid, "");
    EXPECT_I64(stats(t).hits, 1);
    EXPECT_I64(stats(t).entries, 0);
    EXPECT_I64(verify(t, &s, tok, NOW + 1000, uid, &why), -1);
    EXPECT_STR(why, "token: expired");
    EXPECT_I64(stats(t).entries, 0);
    /* Going back in time: not cached any more, so verified again (valid). */
    EXPECT_I64(verify(t, &s, tok, NOW, uid, &why), 0);
    EXPECT_I64(stats(t).hits, 1);

    /* The same at the lower level: an entry is trusted while now < expiry. */
    gw_tokens_put(t, "some-token", 10, NOW + 5, "dave");
    EXPECT_I64(gw_tokens_get(t, "some-token", 10, NOW + 4, uid), 0);
    EXPECT_STR(uid, "dave");
    EXPECT_I64(gw_tokens_get(t, "some-token", 10, NOW + 5, uid), -1);
    EXPECT_I64(gw_tokens_get(t, "some-token", 10, NOW + 4, uid), -1); /* dropped */
    gw_tokens_free(t);
}

/* Only the exact bytes hit: one byte changed anywhere, one byte less or
 * more, is a miss (and a real token so changed does not verify). */
static void test_one_byte_differs_no_hit(void)
{
    gw_tokens *t = gw_tokens_new();
    CU_ASSERT_FATAL(t != NULL);
    im_secret s = secret(3);
    char tok[IM_TOKEN_MAX], uid[IM_UID_MAX + 1];
    const char *why;
    make(&s, "erin", NOW + 3600, tok);
    size_t n = strlen(tok);
    EXPECT_I64(verify(t, &s, tok, NOW, uid, &why), 0);

    for (size_t i = 0; i < n; i++) {
        char bad[IM_TOKEN_MAX];
        memcpy(bad, tok, n + 1);
        bad[i] = other_digit(bad[i]);
        const char *want = NULL;
        char want_uid[IM_UID_MAX + 1];
        im_token_verify(&s, bad, n, NOW, want_uid, &want);
        EXPECT(verify(t, &s, bad, NOW, uid, &why) == -1, "byte %zu changed: accepted", i);
        EXPECT(why && want && strcmp(why, want) == 0, "byte %zu: why \"%s\", want \"%s\"", i,
               why ? why : "(null)", want ? want : "(null)");
        EXPECT_STR(uid, "");
    }
    EXPECT_I64(stats(t).hits, 0);
    EXPECT_I64(stats(t).entries, 1);

    /* At the lower level, where no signature stands behind: an entry
     * under any bytes never answers for bytes one off. */
    gw_tokens_put(t, tok, n, NOW + 3600, "mallory");
    EXPECT_I64(gw_tokens_get(t, tok, n, NOW, uid), 0);
    EXPECT_STR(uid, "mallory");
    uint64_t hits = stats(t).hits;
    for (size_t i = 0; i < n; i++)
        for (int bit = 0; bit < 8; bit++) {
            char bad[IM_TOKEN_MAX];
            memcpy(bad, tok, n + 1);
            bad[i] ^= (char)(1 << bit);
            EXPECT(gw_tokens_get(t, bad, n, NOW, uid) == -1, "byte %zu bit %d: a hit", i, bit);
        }
    EXPECT_I64(gw_tokens_get(t, tok, n - 1, NOW, uid), -1);
    char longer[IM_TOKEN_MAX + 1];
    memcpy(longer, tok, n);
    longer[n] = 'A';
    EXPECT_I64(gw_tokens_get(t, longer, n + 1, NOW, uid), -1);
    EXPECT_I64(stats(t).hits, hits);
    gw_tokens_free(t);
}

/* However many tokens come, at most GW_TOKENS_CAP are held; the recent ones
 * hit, the evicted ones verify again. */
static void test_eviction_bounded(void)
{
    gw_tokens *t = gw_tokens_new();
    CU_ASSERT_FATAL(t != NULL);
    im_secret s = secret(4);
    char tok[IM_TOKEN_MAX], uid[IM_UID_MAX + 1], name[32];
    const char *why;
    int over = 0;
    for (int i = 0; i < 3 * GW_TOKENS_CAP; i++) {
        snprintf(name, sizeof name, "user%d", i);
        make(&s, name, NOW + 3600, tok);
        if (verify(t, &s, tok, NOW, uid, &why) != 0 || strcmp(uid, name) != 0)
            over++;
        if (stats(t).entries > GW_TOKENS_CAP)
            over++;
    }
    EXPECT_I64(over, 0);
    EXPECT_I64(stats(t).hits, 0);
    EXPECT_I64(stats(t).misses, 3 * GW_TOKENS_CAP);
    gw_tokens_stats st = stats(t);
    EXPECT(st.entries > GW_TOKENS_CAP / 2 && st.entries <= GW_TOKENS_CAP, "entries %d",
           st.entries);

    /* The last one in is there; every token, evicted or not, still gives
     * its own uid. */
    EXPECT_I64(verify(t, &s, tok, NOW, uid, &why), 0);
    EXPECT_I64(stats(t).hits, 1);
    int wrong = 0;
    for (int i = 0; i < 3 * GW_TOKENS_CAP; i += 7) {
        snprintf(name, sizeof name, "user%d", i);
        make(&s, name, NOW + 3600, tok);
        if (verify(t, &s, tok, NOW, uid, &why) != 0 || strcmp(uid, name) != 0)
            wrong++;
    }
    EXPECT_I64(wrong, 0);
    EXPECT(stats(t).entries <= GW_TOKENS_CAP, "entries %d", stats(t).entries);

    /* Tokens longer than any that verifies are not kept. */
    char huge[GW_TOKENS_LEN_MAX + 2];
    memset(huge, 'A', sizeof huge);
    int before = stats(t).entries;
    gw_tokens_put(t, huge, sizeof huge, NOW + 3600, "x");
    EXPECT_I64(gw_tokens_get(t, huge, sizeof huge, NOW, uid), -1);
    EXPECT_I64(stats(t).entries, before);
    gw_tokens_free(t);
}

/* Every way to fail fails the same as im_token_verify, every time: nothing
 * that failed is remembered. */
static void test_failure_never_cached(void)
{
    gw_tokens *t = gw_tokens_new();
    CU_ASSERT_FATAL(t != NULL);
    im_secret s = secret(5), other = secret(6);
    char forged[IM_TOKEN_MAX], expired[IM_TOKEN_MAX], bad_uid[IM_TOKEN_MAX],
        no_expiry[IM_TOKEN_MAX], long_tok[IM_TOKEN_MAX + 8];
    make(&other, "frank", NOW + 3600, forged); /* another secret's */
    make(&s, "grace", NOW - 1, expired);
    sign_raw(&s, "bad\x01uid.1800000000", bad_uid, sizeof bad_uid);
    sign_raw(&s, "heidi.", no_expiry, sizeof no_expiry);
    memset(long_tok, 'A', IM_TOKEN_MAX);
    long_tok[IM_TOKEN_MAX] = 0;
    const char *cases[] = {forged, expired, bad_uid, no_expiry, long_tok, "", "!!!!", "QUJD"};
    const char *texts[] = {"token: bad signature", "token: expired", "token: invalid uid",
                           "token: malformed", "token: too long", "token: malformed",
                           "token: not base64url", "token: malformed"};
    for (int round = 0; round < 3; round++)
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
            char uid[IM_UID_MAX + 1];
            const char *why;
            EXPECT(verify(t, &s, cases[i], NOW, uid, &why) == -1, "case %zu accepted", i);
            EXPECT(why && strcmp(why, texts[i]) == 0, "case %zu: why \"%s\", want \"%s\"", i,
                   why ? why : "(null)", texts[i]);
            EXPECT_STR(uid, "");
        }
    EXPECT_I64(stats(t).entries, 0);
    EXPECT_I64(stats(t).hits, 0);

    /* A token verified with one secret then shown to a cache with another
     * fails there: a cache is its secret's. */
    gw_tokens *t2 = gw_tokens_new();
    CU_ASSERT_FATAL(t2 != NULL);
    char uid[IM_UID_MAX + 1];
    const char *why;
    EXPECT_I64(verify(t2, &other, forged, NOW, uid, &why), 0);
    EXPECT_STR(uid, "frank");
    EXPECT_I64(stats(t2).entries, 1);
    EXPECT_I64(verify(t, &s, forged, NOW, uid, &why), -1);
    gw_tokens_free(t2);
    gw_tokens_free(t);
}

/* Without a cache (out of memory) it is im_token_verify. */
static void test_no_cache(void)
{
    im_secret s = secret(7);
    char tok[IM_TOKEN_MAX], uid[IM_UID_MAX + 1];
    const char *why;
    make(&s, "ivan", NOW + 5, tok);
    EXPECT_I64(verify(NULL, &s, tok, NOW, uid, &why), 0);
    EXPECT_STR(uid, "ivan");
    EXPECT_I64(verify(NULL, &s, tok, NOW + 5, uid, &why), -1);
    EXPECT_STR(why, "token: expired");
    gw_tokens_free(NULL);
}

/* ================================================================= runner */

static const im_cunit_test tests[] = {
    {"hit_same_uid", test_hit_same_uid},
    {"expired_refused_when_cached", test_expired_refused_when_cached},
    {"one_byte_differs_no_hit", test_one_byte_differs_no_hit},
    {"eviction_bounded", test_eviction_bounded},
    {"failure_never_cached", test_failure_never_cached},
    {"no_cache", test_no_cache},
};

int main(int argc, char **argv)
{
    return im_cunit_main("tokens", tests, sizeof tests / sizeof tests[0],
                         argc > 1 ? argv[1] : NULL);
}
