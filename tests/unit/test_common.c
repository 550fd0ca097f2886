/*
 * test_common.c - CUnit suite of the shared modules: im_hash.h (routing)
 * and im_auth.h (base64url, the secret file, tokens, cursors).
 *
 * Known values come from outside this code base wherever one exists: RFC
 * 4648 for base64url, the FNV reference vectors for FNV-1a, the jump hash
 * values other implementations publish (ClickHouse's test reference, the
 * Rust crate's doc tests). Values without an outside source (token and
 * cursor strings, im_hash64 of a few uids) were computed once with an
 * independent Python implementation of docs/PROTOCOL.md and are pinned
 * here: a change to any of them breaks every deployed token, cursor or
 * shard assignment, and must fail this suite.
 *
 * Secret-file tests run in fresh temporary directories (removed afterwards);
 * the concurrent-creation test forks.
 *
 * Usage: test_common [test-name]   (no argument: the whole suite)
 * Exit status: 0 when every assertion held, 1 otherwise.
 */
#include "im_auth.h"
#include "im_hash.h"

#include <CUnit/Basic.h>

#include "im_cunit.h"
#include <CUnit/CUnit.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* ============================================================ assertions */

/* loc, HERE and record() are the shared ones of im_cunit.h. */
typedef im_loc loc;
#define HERE IM_HERE
#define record im_cunit_record

#define EXPECT(cond, ...) record(HERE, (cond), __VA_ARGS__)
#define EXPECT_TRUE(cond) record(HERE, (cond), "%s", #cond)
#define EXPECT_U64(got, want)                                                  \
    do {                                                                       \
        uint64_t g_ = (uint64_t)(got), w_ = (uint64_t)(want);                  \
        record(HERE, g_ == w_, "%s == %s (got %" PRIu64 " = 0x%" PRIx64        \
               ", want %" PRIu64 " = 0x%" PRIx64 ")",                          \
               #got, #want, g_, g_, w_, w_);                                   \
    } while (0)
#define EXPECT_I64(got, want)                                                  \
    do {                                                                       \
        int64_t g_ = (int64_t)(got), w_ = (int64_t)(want);                     \
        record(HERE, g_ == w_, "%s == %s (got %" PRId64 ", want %" PRId64 ")", \
               #got, #want, g_, w_);                                           \
    } while (0)
#define EXPECT_STR(got, want)                                                  \
    do {                                                                       \
        const char *g_ = (got), *w_ = (want);                                  \
        record(HERE, g_ && w_ && strcmp(g_, w_) == 0,                          \
               "%s == \"%s\" (got \"%s\")", #got, w_ ? w_ : "(null)",          \
               g_ ? g_ : "(null)");                                            \
    } while (0)

/* ============================================================== helpers */

/* The secret 00 01 02 ... 1f, which the pinned vectors were computed with. */
static im_secret seq_secret(void)
{
    im_secret s;
    for (int i = 0; i < 32; i++)
        s.key[i] = (uint8_t)i;
    return s;
}

static im_secret other_secret(void)
{
    im_secret s;
    for (int i = 0; i < 32; i++)
        s.key[i] = (uint8_t)(0xA5 ^ i);
    return s;
}

/* A token of arbitrary content: b64url(body "." HMAC(secret, body)). Lets
 * the tests sign what im_token_make() would refuse to produce. */
static void sign_raw(const im_secret *s, const char *body, size_t blen,
                     char *out, size_t cap)
{
    uint8_t raw[512];
    CU_ASSERT_FATAL(blen + 1 + 32 <= sizeof raw);
    memcpy(raw, body, blen);
    raw[blen] = '.';
    unsigned len = 0;
    CU_ASSERT_FATAL(HMAC(EVP_sha256(), s->key, 32, raw, blen, raw + blen + 1, &len) != NULL);
    CU_ASSERT_FATAL(im_b64url_encode(raw, blen + 1 + 32, out, cap) > 0);
}

static int verify_str(const im_secret *s, const char *tok, int64_t now,
                      char uid[65], const char **why)
{
    return im_token_verify(s, tok, strlen(tok), now, uid, why);
}

static int cursor_str(const im_secret *s, const char *owner, const char *sender,
                      const char *cur, uint64_t *seq, const char **why)
{
    return im_cursor_parse(s, owner, sender, cur, strlen(cur), seq, why);
}

/* A fresh directory under $TMPDIR (or /tmp); rm_rf() removes it. */
static void make_tmpdir(char *out, size_t cap)
{
    const char *base = getenv("TMPDIR");
    if (!base || !*base)
        base = "/tmp";
    snprintf(out, cap, "%s/imbox-common-XXXXXX", base);
    CU_ASSERT_FATAL(mkdtemp(out) != NULL);
}

static int s_rm(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void rm_rf(const char *dir)
{
    nftw(dir, s_rm, 16, FTW_DEPTH | FTW_PHYS);
}

static void write_file(const char *path, const char *content, size_t n)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    CU_ASSERT_FATAL(fd >= 0);
    CU_ASSERT_FATAL(write(fd, content, n) == (ssize_t)n);
    close(fd);
}

static size_t read_file(const char *path, char *buf, size_t cap)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return 0;
    ssize_t r = read(fd, buf, cap);
    close(fd);
    return r < 0 ? 0 : (size_t)r;
}

/* Names in dir other than "." and "..", joined by spaces into out. */
static int list_dir(const char *dir, char *out, size_t cap)
{
    DIR *d = opendir(dir);
    int n = 0;
    out[0] = '\0';
    if (!d)
        return -1;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        size_t l = strlen(out);
        snprintf(out + l, cap - l, "%s%s", n ? " " : "", e->d_name);
        n++;
    }
    closedir(d);
    return n;
}

/* ============================================================ base64url */

static void check_vector(loc L, const void *bytes, size_t n, const char *want)
{
    char out[256];
    size_t got = im_b64url_encode(bytes, n, out, sizeof out);
    record(L, got == strlen(want) && strcmp(out, want) == 0,
           "encode of %zu bytes: got \"%s\" (%zu), want \"%s\"", n, out, got, want);
    uint8_t back[256];
    size_t blen = 99;
    int rc = im_b64url_decode(want, strlen(want), back, sizeof back, &blen);
    record(L, rc == 0 && blen == n && memcmp(back, bytes, n) == 0,
           "decode of \"%s\": rc %d, %zu bytes, want %zu", want, rc, blen, n);
}

/* 1. RFC 4648 section 10 vectors without padding, section 9's example
 * in the url alphabet, and the two characters that differ from base64. */
static void test_b64url_vectors(void)
{
    check_vector(HERE, "", 0, "");
    check_vector(HERE, "f", 1, "Zg");
    check_vector(HERE, "fo", 2, "Zm8");
    check_vector(HERE, "foo", 3, "Zm9v");
    check_vector(HERE, "foob", 4, "Zm9vYg");
    check_vector(HERE, "fooba", 5, "Zm9vYmE");
    check_vector(HERE, "foobar", 6, "Zm9vYmFy");
    check_vector(HERE, "\x14\xfb\x9c\x03\xd9\x7e", 6, "FPucA9l-");
    check_vector(HERE, "\x14\xfb\x9c\x03\xd9", 5, "FPucA9k");
    check_vector(HERE, "\x14\xfb\x9c\x03", 4, "FPucAw");
    check_vector(HERE, "\xfb\xef\xbe", 3, "----");
    check_vector(HERE, "\xff\xff\xff", 3, "____");
    check_vector(HERE, "\xfb\xff", 2, "-_8");
    check_vector(HERE, "\0", 1, "AA");
    check_vector(HERE, "\0\0\0", 3, "AAAA");

    /* Every length 0..200 of every byte value round-trips, with the exact
     * output length. */
    uint8_t in[200], back[200];
    char enc[300];
    for (size_t i = 0; i < sizeof in; i++)
        in[i] = (uint8_t)(i * 37 + 11);
    bool all_ok = true;
    for (size_t n = 0; n <= sizeof in; n++) {
        size_t el = im_b64url_encode(in, n, enc, sizeof enc);
        size_t want = (n * 4 + 2) / 3;
        size_t bl = 0;
        if (el != want || strlen(enc) != want ||
            im_b64url_decode(enc, el, back, sizeof back, &bl) != 0 || bl != n ||
            memcmp(in, back, n) != 0) {
            all_ok = record(HERE, false, "round trip of %zu bytes", n);
            break;
        }
    }
    EXPECT_TRUE(all_ok);

    /* Encode: cap must hold the text and its NUL; out untouched otherwise. */
    char small[8];
    memset(small, 'x', sizeof small);
    EXPECT_U64(im_b64url_encode((const uint8_t *)"foobar", 6, small, 8), 0);
    EXPECT_TRUE(small[0] == 'x');
    char nine[9];
    EXPECT_U64(im_b64url_encode((const uint8_t *)"foobar", 6, nine, 9), 8);
    EXPECT_STR(nine, "Zm9vYmFy");
    EXPECT_U64(im_b64url_encode((const uint8_t *)"f", 1, small, 2), 0);
    EXPECT_U64(im_b64url_encode((const uint8_t *)"f", 1, small, 3), 2);
    EXPECT_U64(im_b64url_encode(NULL, 0, small, 0), 0);
    EXPECT_U64(im_b64url_encode(NULL, 0, small, 1), 0);
    EXPECT_TRUE(small[0] == '\0');

    /* Decode into exactly the right cap, and one less. */
    uint8_t six[6];
    size_t ol = 99;
    EXPECT_I64(im_b64url_decode("Zm9vYmFy", 8, six, 6, &ol), 0);
    EXPECT_U64(ol, 6);
    EXPECT_I64(im_b64url_decode("Zm9vYmFy", 8, six, 5, &ol), -1);
    EXPECT_U64(ol, 0);
    EXPECT_I64(im_b64url_decode("Zm9vYmE", 7, six, 4, &ol), -1);
    EXPECT_I64(im_b64url_decode("Zm9vYmE", 7, six, 5, &ol), 0);
    EXPECT_U64(ol, 5);
    EXPECT_I64(im_b64url_decode("", 0, NULL, 0, &ol), 0);
    EXPECT_U64(ol, 0);
}

static void expect_reject(loc L, const char *in, size_t n)
{
    uint8_t out[64];
    size_t ol = 99;
    int rc = im_b64url_decode(in, n, out, sizeof out, &ol);
    record(L, rc == -1 && ol == 0, "decode of \"%.*s\" (%zu chars) refused (rc %d)",
           (int)n, in, n, rc);
}
#define REJECT(s) expect_reject(HERE, (s), sizeof(s) - 1)

/* 2. Strict decoding: one spelling per byte string. */
static void test_b64url_rejections(void)
{
    /* Padding, in any amount. */
    REJECT("Zg==");
    REJECT("Zg=");
    REJECT("Zm8=");
    REJECT("Zm9v====");
    REJECT("====");
    /* The standard alphabet's two characters. */
    REJECT("FPucA9l+");
    REJECT("FPuc/9l-");
    /* Whitespace anywhere. */
    REJECT(" Zm9v");
    REJECT("Zm9v ");
    REJECT("Zm 9v");
    REJECT("Zm9v\n");
    REJECT("Zm9\tv");
    REJECT("Zm9v\r\n");
    /* A NUL inside the given length. */
    REJECT("Zm\0v");
    /* Lengths 4k+1. */
    REJECT("Z");
    REJECT("Zm9vY");
    REJECT("Zm9vYmFyZ");
    /* Non-zero leftover bits: "Zh" and "Zg" both start with 0x66. */
    REJECT("Zh");
    REJECT("Zm9");  /* valid is "Zm8" */
    REJECT("Zm9vYmF"); /* valid is "Zm9vYmE" */
    REJECT("AB");
    REJECT("AAB");
    REJECT("__");
    REJECT("___");

    /* Every byte value in every position of a 4-char group: exactly the 64
     * alphabet characters pass. */
    int passed = 0;
    for (int pos = 0; pos < 4; pos++) {
        for (int c = 0; c < 256; c++) {
            char in[4] = {'A', 'A', 'A', 'A'};
            in[pos] = (char)c;
            uint8_t out[3];
            size_t ol;
            if (im_b64url_decode(in, 4, out, sizeof out, &ol) == 0)
                passed++;
        }
    }
    EXPECT(passed == 4 * 64, "%d byte values accepted, want %d", passed, 4 * 64);
}

/* ================================================================ tokens */

#define ALICE_TOKEN "YWxpY2UuMTcwMDAwMDAwMC5wASsfNuVKb7REJXHQqnN73UWnCz-9RGufKPw2vxGPcA"

/* 3. make then verify; the format matches an independent implementation. */
static void test_token_roundtrip(void)
{
    im_secret s = seq_secret();
    char tok[IM_TOKEN_MAX], uid[65];
    const char *why = NULL;

    EXPECT_I64(im_token_make(&s, "alice", 1700000000, tok, sizeof tok), 0);
    EXPECT_STR(tok, ALICE_TOKEN);
    memset(uid, 'x', sizeof uid);
    EXPECT_I64(verify_str(&s, tok, 1699999999, uid, &why), 0);
    EXPECT_STR(uid, "alice");
    EXPECT_I64(verify_str(&s, tok, 0, uid, &why), 0);
    EXPECT_I64(verify_str(&s, tok, INT64_MIN, uid, &why), 0);
    EXPECT_I64(verify_str(&s, tok, 1699999999, uid, NULL), 0); /* why may be NULL */

    /* Only token[0..len) is read: no NUL needed. */
    char padded[IM_TOKEN_MAX + 8];
    size_t n = strlen(tok);
    memcpy(padded, tok, n);
    memcpy(padded + n, "garbage", 8);
    EXPECT_I64(im_token_verify(&s, padded, n, 1, uid, &why), 0);
    EXPECT_STR(uid, "alice");

    /* Non-ASCII uids (valid UTF-8) and the longest uid with the longest
     * expiry fit IM_TOKEN_MAX. */
    const char *utf8 = "J\xc3\xbcrgen-\xe6\x97\xa5\xe6\x9c\xac-\xf0\x9f\x98\x80";
    EXPECT_I64(im_token_make(&s, utf8, 2000000000, tok, sizeof tok), 0);
    EXPECT_I64(verify_str(&s, tok, 1, uid, &why), 0);
    EXPECT_STR(uid, utf8);

    char big[65];
    memset(big, 'z', 64);
    big[64] = '\0';
    EXPECT_I64(im_token_make(&s, big, INT64_MAX, tok, sizeof tok), 0);
    EXPECT_U64(strlen(tok), 156);
    EXPECT_I64(verify_str(&s, tok, INT64_MAX - 1, uid, &why), 0);
    EXPECT_STR(uid, big);
    EXPECT_I64(verify_str(&s, tok, INT64_MAX, uid, &why), -1);
    EXPECT_STR(why, "token: expired");

    /* Expiry 0 is a valid (always expired) token. */
    EXPECT_I64(im_token_make(&s, "alice", 0, tok, sizeof tok), 0);
    EXPECT_I64(verify_str(&s, tok, -1, uid, &why), 0);
    EXPECT_I64(verify_str(&s, tok, 0, uid, &why), -1);
    EXPECT_STR(why, "token: expired");
}

/* 4. The uid may contain dots, also dots followed by digits: the token is
 * parsed from the right. */
static void test_token_uid_with_dots(void)
{
    im_secret s = seq_secret();
    char tok[IM_TOKEN_MAX], uid[65];
    const char *why = NULL;

    EXPECT_I64(im_token_make(&s, "a.b.c", 42, tok, sizeof tok), 0);
    EXPECT_STR(tok, "YS5iLmMuNDIu8yLZQawDVeUjOQ6rp4y2XyLY1S3rlrGtT24zU2f_YV8");
    EXPECT_I64(verify_str(&s, tok, 41, uid, &why), 0);
    EXPECT_STR(uid, "a.b.c");

    static const char *uids[] = {".", "..", "a.", ".a", "1.2", "a.123", "x.99.",
                                 "9.9.9.9", "0"};
    for (size_t i = 0; i < sizeof uids / sizeof uids[0]; i++) {
        EXPECT_I64(im_token_make(&s, uids[i], 1000, tok, sizeof tok), 0);
        memset(uid, 0, sizeof uid);
        int rc = verify_str(&s, tok, 999, uid, &why);
        EXPECT(rc == 0 && strcmp(uid, uids[i]) == 0, "uid \"%s\": rc %d, got \"%s\"",
               uids[i], rc, uid);
    }
}

/* 5. Expired means now >= expiry. */
static void test_token_expired(void)
{
    im_secret s = seq_secret();
    char tok[IM_TOKEN_MAX], uid[65];
    const char *why = NULL;
    EXPECT_I64(im_token_make(&s, "alice", 1700000000, tok, sizeof tok), 0);
    EXPECT_I64(verify_str(&s, tok, 1699999999, uid, &why), 0);
    EXPECT_I64(verify_str(&s, tok, 1700000000, uid, &why), -1);
    EXPECT_STR(why, "token: expired");
    EXPECT_STR(uid, "");
    EXPECT_I64(verify_str(&s, tok, 1700000001, uid, &why), -1);
    EXPECT_STR(why, "token: expired");
    EXPECT_I64(verify_str(&s, tok, INT64_MAX, uid, &why), -1);
    EXPECT_STR(why, "token: expired");

    /* im_token_verify_until also says until when (0 on failure). */
    int64_t until = -1;
    EXPECT_I64(im_token_verify_until(&s, tok, strlen(tok), 1699999999, uid, &until, &why), 0);
    EXPECT_I64(until, 1700000000);
    EXPECT_STR(uid, "alice");
    EXPECT_I64(im_token_verify_until(&s, tok, strlen(tok), 1700000000, uid, &until, &why), -1);
    EXPECT_I64(until, 0);
    EXPECT_STR(why, "token: expired");
    EXPECT_I64(im_token_make(&s, "bob", INT64_MAX, tok, sizeof tok), 0);
    EXPECT_I64(im_token_verify_until(&s, tok, strlen(tok), 0, uid, &until, &why), 0);
    EXPECT_I64(until, INT64_MAX);
}

/* 6. Every change to any byte of a token makes it fail, whatever the byte
 * (uid, dot, expiry digit, MAC). */
static void test_token_forged(void)
{
    im_secret s = seq_secret();
    char tok[IM_TOKEN_MAX], forged[IM_TOKEN_MAX], uid[65];
    const char *why = NULL;
    EXPECT_I64(im_token_make(&s, "a.lice", 1700000000, tok, sizeof tok), 0);
    uint8_t raw[IM_TOKEN_MAX], copy[IM_TOKEN_MAX];
    size_t n = 0;
    EXPECT_I64(im_b64url_decode(tok, strlen(tok), raw, sizeof raw, &n), 0);
    EXPECT_U64(n, 6 + 1 + 10 + 1 + 32);

    static const uint8_t masks[] = {0x01, 0x02, 0x10, 0x80, 0xff};
    int accepted = 0, tried = 0;
    for (size_t i = 0; i < n; i++) {
        for (size_t m = 0; m < sizeof masks; m++) {
            memcpy(copy, raw, n);
            copy[i] ^= masks[m];
            CU_ASSERT_FATAL(im_b64url_encode(copy, n, forged, sizeof forged) > 0);
            tried++;
            if (verify_str(&s, forged, 1, uid, &why) == 0) {
                accepted++;
                record(HERE, false, "byte %zu ^ 0x%02x accepted as \"%s\"", i,
                       masks[m], uid);
            }
        }
    }
    EXPECT(accepted == 0, "%d of %d forged tokens accepted", accepted, tried);

    /* A flip in the MAC is a bad signature, not a format error. */
    memcpy(copy, raw, n);
    copy[n - 1] ^= 1;
    im_b64url_encode(copy, n, forged, sizeof forged);
    EXPECT_I64(verify_str(&s, forged, 1, uid, &why), -1);
    EXPECT_STR(why, "token: bad signature");
    /* So is a later expiry with the old MAC. */
    memcpy(copy, raw, n);
    copy[7] = '2';
    im_b64url_encode(copy, n, forged, sizeof forged);
    EXPECT_I64(verify_str(&s, forged, 1, uid, &why), -1);
    EXPECT_STR(why, "token: bad signature");

    /* Truncated and extended tokens. */
    for (size_t k = 1; k < n; k++) {
        im_b64url_encode(raw, n - k, forged, sizeof forged);
        if (verify_str(&s, forged, 1, uid, &why) == 0)
            record(HERE, false, "token truncated by %zu bytes accepted", k);
    }
    memcpy(copy, raw, n);
    copy[n] = 0;
    im_b64url_encode(copy, n + 1, forged, sizeof forged);
    EXPECT_I64(verify_str(&s, forged, 1, uid, &why), -1);
}

/* 7. A token of another secret is a bad signature. */
static void test_token_other_secret(void)
{
    im_secret s = seq_secret(), o = other_secret();
    char tok[IM_TOKEN_MAX], uid[65];
    const char *why = NULL;
    EXPECT_I64(im_token_make(&o, "alice", 1700000000, tok, sizeof tok), 0);
    EXPECT_I64(verify_str(&o, tok, 1, uid, &why), 0);
    EXPECT_I64(verify_str(&s, tok, 1, uid, &why), -1);
    EXPECT_STR(why, "token: bad signature");
    EXPECT_STR(uid, "");
    EXPECT_I64(verify_str(&o, ALICE_TOKEN, 1, uid, &why), -1);
    EXPECT_STR(why, "token: bad signature");
}

/* 8. Garbage: not base64url, wrong structure, and structurally wrong
 * tokens that are correctly signed (the format is checked, not only the
 * MAC). */
static void test_token_garbage(void)
{
    im_secret s = seq_secret();
    char tok[IM_TOKEN_MAX], uid[65];
    const char *why = NULL;

    static const char *not_b64[] = {"Bearer x", "alice.1700000000.xxx", "!!!!",
                                    ALICE_TOKEN "=", "A", " " ALICE_TOKEN,
                                    "YWxpY2U+"};
    for (size_t i = 0; i < sizeof not_b64 / sizeof not_b64[0]; i++) {
        why = NULL;
        int rc = verify_str(&s, not_b64[i], 1, uid, &why);
        EXPECT(rc == -1 && why && strcmp(why, "token: not base64url") == 0,
               "\"%s\": rc %d why \"%s\"", not_b64[i], rc, why ? why : "(null)");
    }

    /* Decodes, but is not uid "." digits "." 32 bytes. */
    static const char *shapes[] = {"", "YWxpY2U", /* "alice" */
                                   "YWxpY2UuMTcwMDAwMDAwMC4",  /* no MAC */
                                   "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        why = NULL;
        int rc = verify_str(&s, shapes[i], 1, uid, &why);
        EXPECT(rc == -1 && why && strcmp(why, "token: malformed") == 0,
               "\"%s\": rc %d why \"%s\"", shapes[i], rc, why ? why : "(null)");
    }

    /* Signed with the right secret, but the expiry is not 1..19 plain
     * digits, or the uid is empty. */
    static const char *bad_bodies[] = {
        "alice.+1700000000", "alice.-1", "alice.", "alice.17e8", "alice. 1",
        "alice.1 ", "alice.0x10",
        "alice.12345678901234567890", "alice.00000000000000000009", /* 20 digits */
        "alice", ".1700000000", "1700000000",
    };
    for (size_t i = 0; i < sizeof bad_bodies / sizeof bad_bodies[0]; i++) {
        sign_raw(&s, bad_bodies[i], strlen(bad_bodies[i]), tok, sizeof tok);
        why = NULL;
        int rc = verify_str(&s, tok, 1, uid, &why);
        EXPECT(rc == -1 && why && strcmp(why, "token: malformed") == 0,
               "signed \"%s\": rc %d why \"%s\"", bad_bodies[i], rc, why ? why : "(null)");
    }
    /* 19 digits, but beyond INT64_MAX. */
    sign_raw(&s, "alice.9999999999999999999", 25, tok, sizeof tok);
    EXPECT_I64(verify_str(&s, tok, 1, uid, &why), -1);
    EXPECT_STR(why, "token: malformed");
    /* 19 digits, exactly INT64_MAX, and a leading zero: fine. */
    sign_raw(&s, "alice.9223372036854775807", 25, tok, sizeof tok);
    EXPECT_I64(verify_str(&s, tok, 1, uid, &why), 0);
    sign_raw(&s, "alice.0000000000000000009", 25, tok, sizeof tok);
    EXPECT_I64(verify_str(&s, tok, 8, uid, &why), 0);
    EXPECT_I64(verify_str(&s, tok, 9, uid, &why), -1);
    EXPECT_STR(why, "token: expired");

    /* Signed with the right secret, but the uid breaks the uid rule. */
    static const struct {
        const char *body;
        size_t len;
    } bad_uids[] = {
        {"a\x01" "b.99", 6},
        {"a\x7f" "b.99", 6},
        {"a\xc2\x80" "b.99", 7},   /* U+0080, a C1 control */
        {"\xff.99", 4},            /* not UTF-8 */
        {"\xc0\xaf.99", 5},        /* overlong */
        {"a\0b.99", 6},            /* NUL inside */
        {"\0.99", 4},
    };
    for (size_t i = 0; i < sizeof bad_uids / sizeof bad_uids[0]; i++) {
        sign_raw(&s, bad_uids[i].body, bad_uids[i].len, tok, sizeof tok);
        why = NULL;
        memset(uid, 'x', sizeof uid);
        int rc = verify_str(&s, tok, 1, uid, &why);
        EXPECT(rc == -1 && why && strcmp(why, "token: invalid uid") == 0 && uid[0] == '\0',
               "bad uid %zu: rc %d why \"%s\"", i, rc, why ? why : "(null)");
    }
    /* A 65-byte uid; 64 bytes is fine. */
    char body[80];
    memset(body, 'z', 65);
    memcpy(body + 65, ".99", 4);
    sign_raw(&s, body, 68, tok, sizeof tok);
    EXPECT_I64(verify_str(&s, tok, 1, uid, &why), -1);
    EXPECT_STR(why, "token: invalid uid");
    sign_raw(&s, body + 1, 67, tok, sizeof tok);
    EXPECT_I64(verify_str(&s, tok, 1, uid, &why), 0);
    EXPECT_U64(strlen(uid), 64);

    /* The helper signs like im_token_make() does. */
    sign_raw(&s, "alice.1700000000", 16, tok, sizeof tok);
    EXPECT_STR(tok, ALICE_TOKEN);
}

/* 9. Oversize tokens are refused before decoding. */
static void test_token_oversize(void)
{
    im_secret s = seq_secret();
    char uid[65];
    const char *why = NULL;
    char huge[4096];
    memset(huge, 'A', sizeof huge);
    EXPECT_I64(im_token_verify(&s, huge, sizeof huge, 1, uid, &why), -1);
    EXPECT_STR(why, "token: too long");
    EXPECT_I64(im_token_verify(&s, huge, IM_TOKEN_MAX, 1, uid, &why), -1);
    EXPECT_STR(why, "token: too long");
    EXPECT_I64(im_token_verify(&s, huge, IM_TOKEN_MAX - 1, 1, uid, &why), -1);
    EXPECT_STR(why, "token: malformed");

    /* A valid token followed by more base64url: too long or bad. */
    char tok[IM_TOKEN_MAX * 2];
    EXPECT_I64(im_token_make(&s, "alice", 1700000000, tok, IM_TOKEN_MAX), 0);
    strcat(tok, "AAAA");
    EXPECT_I64(verify_str(&s, tok, 1, uid, &why), -1);
}

/* 10. make refuses what verify would refuse, and small buffers. */
static void test_token_make_refuses(void)
{
    im_secret s = seq_secret();
    char tok[IM_TOKEN_MAX];
    char u65[66];
    memset(u65, 'u', 65);
    u65[65] = '\0';
    const char *bad[] = {"", u65, "a\x01", "a\x1f", "tab\there", "\x7f", "\xc2\x9f",
                         "\xc3\x28", "\xed\xa0\x80" /* surrogate */, "\xff"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        memset(tok, 'x', sizeof tok);
        int rc = im_token_make(&s, bad[i], 1700000000, tok, sizeof tok);
        EXPECT(rc == -1 && tok[0] == 'x', "bad uid %zu: rc %d", i, rc);
    }
    EXPECT_I64(im_token_make(&s, NULL, 1700000000, tok, sizeof tok), -1);
    EXPECT_I64(im_token_make(&s, "alice", -1, tok, sizeof tok), -1);
    EXPECT_I64(im_token_make(&s, "alice", INT64_MIN, tok, sizeof tok), -1);

    /* "alice.1700000000." + 32 bytes = 49 bytes = 66 chars + NUL. */
    EXPECT_I64(im_token_make(&s, "alice", 1700000000, tok, 66), -1);
    EXPECT_I64(im_token_make(&s, "alice", 1700000000, tok, 67), 0);
    EXPECT_STR(tok, ALICE_TOKEN);
    EXPECT_I64(im_token_make(&s, "alice", 1700000000, NULL, 0), -1);
}

/* =============================================================== cursors */

/* 11. make then parse, both scopes; the format matches an independent
 * implementation. */
static void test_cursor_roundtrip(void)
{
    im_secret s = seq_secret();
    char cur[IM_CURSOR_MAX];
    uint64_t seq = 99;
    const char *why = NULL;

    EXPECT_I64(im_cursor_make(&s, "alice", "", 5, cur, sizeof cur), 0);
    EXPECT_STR(cur, "AQAAAAAAAAAFAIHaJraUjWC7GDl98jQmFHE");
    EXPECT_I64(im_cursor_make(&s, "alice", NULL, 5, cur, sizeof cur), 0);
    EXPECT_STR(cur, "AQAAAAAAAAAFAIHaJraUjWC7GDl98jQmFHE");
    EXPECT_I64(im_cursor_make(&s, "alice", "bob", 5, cur, sizeof cur), 0);
    EXPECT_STR(cur, "AQAAAAAAAAAFA2JvYvw3zPbTggLyVYvGU5i1jp8");
    EXPECT_I64(im_cursor_make(&s, "alice", "", 0, cur, sizeof cur), 0);
    EXPECT_STR(cur, "AQAAAAAAAAAAAPic-mxaVpApo1QYk896qhA");

    static const uint64_t seqs[] = {0, 1, 2, 255, 256, 100000, UINT64_C(1) << 32,
                                    UINT64_MAX - 1, UINT64_MAX};
    static const char *senders[] = {"", "bob", "b.o.b", "alice"};
    for (size_t i = 0; i < sizeof seqs / sizeof seqs[0]; i++) {
        for (size_t j = 0; j < sizeof senders / sizeof senders[0]; j++) {
            EXPECT_I64(im_cursor_make(&s, "alice", senders[j], seqs[i], cur, sizeof cur), 0);
            /* base64url of 26 + strlen(sender) bytes, no padding */
            EXPECT_U64(strlen(cur), ((26 + strlen(senders[j])) * 4 + 2) / 3);
            seq = 12345;
            int rc = cursor_str(&s, "alice", senders[j], cur, &seq, &why);
            EXPECT(rc == 0 && seq == seqs[i], "seq %" PRIu64 " sender \"%s\": rc %d seq %" PRIu64,
                   seqs[i], senders[j], rc, seq);
        }
    }
    /* NULL and "" are the same scope when parsing too. */
    EXPECT_I64(im_cursor_make(&s, "alice", "", 7, cur, sizeof cur), 0);
    EXPECT_I64(cursor_str(&s, "alice", NULL, cur, &seq, NULL), 0);
    EXPECT_U64(seq, 7);

    /* Buffers and uids. */
    EXPECT_I64(im_cursor_make(&s, "alice", "", 5, cur, 35), -1);
    EXPECT_I64(im_cursor_make(&s, "alice", "", 5, cur, 36), 0);
    EXPECT_I64(im_cursor_make(&s, "", "", 5, cur, sizeof cur), -1);
    EXPECT_I64(im_cursor_make(&s, NULL, "", 5, cur, sizeof cur), -1);
    EXPECT_I64(im_cursor_make(&s, "alice", "b\x01", 5, cur, sizeof cur), -1);
    EXPECT_I64(im_cursor_make(&s, "a\xff", "", 5, cur, sizeof cur), -1);
}

/* 12. A cursor is bound to its owner and its scope. */
static void test_cursor_scope(void)
{
    im_secret s = seq_secret(), o = other_secret();
    char whole[IM_CURSOR_MAX], conv[IM_CURSOR_MAX];
    uint64_t seq;
    const char *why;
    const char *foreign = "cursor: not valid for this inbox or conversation";

    EXPECT_I64(im_cursor_make(&s, "alice", "", 9, whole, sizeof whole), 0);
    EXPECT_I64(im_cursor_make(&s, "alice", "bob", 9, conv, sizeof conv), 0);

    /* Another owner. */
    why = NULL;
    seq = 77;
    EXPECT_I64(cursor_str(&s, "mallory", "", whole, &seq, &why), -1);
    EXPECT_STR(why, foreign);
    EXPECT_U64(seq, 0);
    EXPECT_I64(cursor_str(&s, "mallory", "bob", conv, &seq, &why), -1);
    EXPECT_STR(why, foreign);
    EXPECT_I64(cursor_str(&s, "alice2", "", whole, &seq, &why), -1);
    EXPECT_I64(cursor_str(&s, "bob", "alice", conv, &seq, &why), -1); /* swapped */

    /* A conversation cursor without its sender or with another. */
    EXPECT_I64(cursor_str(&s, "alice", "", conv, &seq, &why), -1);
    EXPECT_STR(why, foreign);
    EXPECT_I64(cursor_str(&s, "alice", NULL, conv, &seq, &why), -1);
    EXPECT_I64(cursor_str(&s, "alice", "carol", conv, &seq, &why), -1);
    EXPECT_STR(why, foreign);
    EXPECT_I64(cursor_str(&s, "alice", "bo", conv, &seq, &why), -1);
    EXPECT_I64(cursor_str(&s, "alice", "bob ", conv, &seq, &why), -1);

    /* And the reverse: a whole-inbox cursor used for a conversation. */
    EXPECT_I64(cursor_str(&s, "alice", "bob", whole, &seq, &why), -1);
    EXPECT_STR(why, foreign);

    /* The separators keep (owner, sender) pairs apart. */
    char ab_c[IM_CURSOR_MAX];
    EXPECT_I64(im_cursor_make(&s, "ab", "c", 9, ab_c, sizeof ab_c), 0);
    EXPECT_I64(cursor_str(&s, "a", "bc", ab_c, &seq, &why), -1);
    EXPECT_I64(cursor_str(&s, "ab", "c", ab_c, &seq, &why), 0);

    /* Another secret. */
    EXPECT_I64(cursor_str(&o, "alice", "", whole, &seq, &why), -1);
    EXPECT_STR(why, foreign);

    /* Another seq with the old tag. */
    uint8_t raw[26 + IM_UID_MAX];
    size_t n;
    EXPECT_I64(im_b64url_decode(whole, strlen(whole), raw, sizeof raw, &n), 0);
    raw[8] = 10;
    char moved[IM_CURSOR_MAX];
    im_b64url_encode(raw, n, moved, sizeof moved);
    EXPECT_I64(cursor_str(&s, "alice", "", moved, &seq, &why), -1);
    EXPECT_STR(why, foreign);
}

/* 13. Every single-byte change of a cursor fails, in the decoded bytes and
 * in the text. */
static void test_cursor_flips(void)
{
    im_secret s = seq_secret();
    static const char *senders[] = {"", "bob"};
    for (size_t k = 0; k < 2; k++) {
        char cur[IM_CURSOR_MAX], forged[IM_CURSOR_MAX];
        EXPECT_I64(im_cursor_make(&s, "alice", senders[k], 123456789, cur, sizeof cur), 0);
        uint8_t raw[26 + IM_UID_MAX], copy[26 + IM_UID_MAX];
        size_t n = 0;
        EXPECT_I64(im_b64url_decode(cur, strlen(cur), raw, sizeof raw, &n), 0);
        EXPECT_U64(n, 26 + strlen(senders[k])); /* 0x01 seq8 n sender tag16 */
        EXPECT_TRUE(raw[0] == 0x01);

        int accepted = 0;
        for (size_t i = 0; i < n; i++) {
            for (int mask = 1; mask < 256; mask++) {
                memcpy(copy, raw, n);
                copy[i] ^= (uint8_t)mask;
                im_b64url_encode(copy, n, forged, sizeof forged);
                uint64_t seq = 0;
                const char *why = NULL;
                if (cursor_str(&s, "alice", senders[k], forged, &seq, &why) == 0) {
                    accepted++;
                    record(HERE, false, "byte %zu ^ 0x%02x accepted (seq %" PRIu64 ")", i,
                           mask, seq);
                } else if (i == 0 && (why == NULL || strcmp(why, "cursor: malformed") != 0)) {
                    record(HERE, false, "version 0x%02x: why \"%s\"", copy[0],
                           why ? why : "(null)");
                }
            }
        }
        EXPECT(accepted == 0, "%d flipped cursors accepted", accepted);

        /* Every character replaced by every other byte value. */
        size_t len = strlen(cur);
        accepted = 0;
        for (size_t i = 0; i < len; i++) {
            for (int c = 0; c < 256; c++) {
                if (c == (unsigned char)cur[i])
                    continue;
                memcpy(forged, cur, len + 1);
                forged[i] = (char)c;
                uint64_t seq;
                if (im_cursor_parse(&s, "alice", senders[k], forged, len, &seq, NULL) == 0)
                    accepted++;
            }
        }
        EXPECT(accepted == 0, "%d altered cursor strings accepted", accepted);
    }
}

/* 14. The empty cursor is seq 0; anything else must be a whole cursor. */
static void test_cursor_empty_and_malformed(void)
{
    im_secret s = seq_secret();
    uint64_t seq = 42;
    const char *why = NULL;
    EXPECT_I64(im_cursor_parse(&s, "alice", "", "", 0, &seq, &why), 0);
    EXPECT_U64(seq, 0);
    seq = 42;
    EXPECT_I64(im_cursor_parse(&s, "alice", "bob", NULL, 0, &seq, &why), 0);
    EXPECT_U64(seq, 0);

    char cur[IM_CURSOR_MAX + 8];
    EXPECT_I64(im_cursor_make(&s, "alice", "", 5, cur, IM_CURSOR_MAX), 0);
    size_t len = strlen(cur);
    static const char *bad[] = {"A", "AA", "AAAA", "0", "null", "5",
                                "AQAAAAAAAAAFgdomtpSNYLsYOX3yNCYUcQ==",
                                "AQAAAAAAAAAFgdomtpSNYLsYOX3yNCYUc",
                                "AQAAAAAAAAAFgdomtpSNYLsYOX3yNCYUcQA",
                                "AQAAAAAAAAAFgdomtpSNYLsYOX3yNCYUcQAA",
                                "AQAAAAAAAAAFgdomtpSNYLsYOX3yNCYUcR", /* leftover bits */
                                " AQAAAAAAAAAFgdomtpSNYLsYOX3yNCYUc",
                                "AQAAAAAAAAAFgdomtpSNYLsYOX3yNCYU+Q"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        seq = 42;
        why = NULL;
        int rc = cursor_str(&s, "alice", "", bad[i], &seq, &why);
        EXPECT(rc == -1 && seq == 0 && why && strcmp(why, "cursor: malformed") == 0,
               "\"%s\": rc %d why \"%s\"", bad[i], rc, why ? why : "(null)");
    }
    /* A cursor followed by bytes beyond len is read up to len only. */
    strcat(cur, "zz");
    EXPECT_I64(im_cursor_parse(&s, "alice", "", cur, len, &seq, &why), 0);
    EXPECT_U64(seq, 5);
    EXPECT_I64(im_cursor_parse(&s, "alice", "", cur, len + 2, &seq, &why), -1);
    EXPECT_STR(why, "cursor: malformed");
    /* A token is not a cursor. */
    EXPECT_I64(cursor_str(&s, "alice", "", ALICE_TOKEN, &seq, &why), -1);
    EXPECT_STR(why, "cursor: malformed");
}

/* ================================================================ secret */

static bool is_secret_text(const char *buf, size_t n)
{
    if (n != 65 || buf[64] != '\n')
        return false;
    for (int i = 0; i < 64; i++)
        if (!((buf[i] >= '0' && buf[i] <= '9') || (buf[i] >= 'a' && buf[i] <= 'f')))
            return false;
    return true;
}

/* 15. Created once (with its directories), then read back identical. */
static void test_secret_create_and_reload(void)
{
    char tmp[512], dir[600], path[700], err[256];
    make_tmpdir(tmp, sizeof tmp);
    snprintf(dir, sizeof dir, "%s/a/b//c/", tmp);
    snprintf(path, sizeof path, "%s/a/b/c/auth.secret", tmp);

    im_secret s1, s2;
    memset(&s1, 0, sizeof s1);
    err[0] = 'x';
    EXPECT_I64(im_secret_load_or_create(dir, &s1, err, sizeof err), 0);
    EXPECT_STR(err, "");
    static const im_secret zero;
    EXPECT_TRUE(memcmp(&s1, &zero, sizeof zero) != 0);

    struct stat st;
    EXPECT_I64(stat(path, &st), 0);
    EXPECT(S_ISREG(st.st_mode) && (st.st_mode & 07777) == 0600, "mode %o, want 0600",
           (unsigned)(st.st_mode & 07777));
    char sub[700];
    snprintf(sub, sizeof sub, "%s/a/b/c", tmp);
    EXPECT_I64(stat(sub, &st), 0);
    EXPECT((st.st_mode & 07777) == 0700, "dir mode %o, want 0700",
           (unsigned)(st.st_mode & 07777));

    /* The file is the hex of the key, and nothing else is left behind. */
    char text[128];
    size_t n = read_file(path, text, sizeof text);
    EXPECT(is_secret_text(text, n), "file content (%zu bytes) is not 64 hex digits + newline", n);
    char hex[65];
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", s1.key[i]);
    EXPECT_TRUE(n >= 64 && memcmp(text, hex, 64) == 0);
    char names[512];
    EXPECT_I64(list_dir(sub, names, sizeof names), 1);
    EXPECT_STR(names, "auth.secret");

    /* Reloaded: the same secret, the file unchanged. */
    memset(&s2, 0, sizeof s2);
    EXPECT_I64(im_secret_load_or_create(dir, &s2, err, sizeof err), 0);
    EXPECT_TRUE(memcmp(&s1, &s2, sizeof s1) == 0);
    snprintf(dir, sizeof dir, "%s/a/b/c", tmp);
    EXPECT_I64(im_secret_load_or_create(dir, &s2, NULL, 0), 0);
    EXPECT_TRUE(memcmp(&s1, &s2, sizeof s1) == 0);
    char again[128];
    EXPECT_TRUE(read_file(path, again, sizeof again) == n && memcmp(text, again, n) == 0);

    /* Tokens made with one load verify with the other. */
    char tok[IM_TOKEN_MAX], uid[65];
    EXPECT_I64(im_token_make(&s1, "alice", 100, tok, sizeof tok), 0);
    EXPECT_I64(verify_str(&s2, tok, 99, uid, NULL), 0);

    /* A hand-written file (the documented format) is read as is. */
    snprintf(path, sizeof path, "%s/auth.secret", tmp);
    write_file(path, "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n", 65);
    EXPECT_I64(im_secret_load_or_create(tmp, &s2, err, sizeof err), 0);
    im_secret want = seq_secret();
    EXPECT_TRUE(memcmp(&s2, &want, sizeof want) == 0);

    rm_rf(tmp);
}

/* 16. A malformed file is refused with a message naming it, and left alone;
 * so is a data dir that cannot hold the file. */
#define LIT(s) {s, sizeof s - 1}

static void test_secret_malformed(void)
{
    char tmp[512], path[700], err[512];
    make_tmpdir(tmp, sizeof tmp);
    snprintf(path, sizeof path, "%s/auth.secret", tmp);
    static const char good[] = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    static const struct {
        const char *text;
        size_t len;
    } bad[] = {
        {"", 0},
        LIT("\n"),
        {good, 64},                                     /* no newline */
        LIT("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n\n"),
        LIT("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\r\n"),
        LIT("000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F\n"),
        LIT("00010203040506070809 a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n"),
        LIT("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1g\n"),
        LIT("00010203040506070809a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n"),
        LIT("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f00\n"),
        LIT("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\0"),
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        write_file(path, bad[i].text, bad[i].len);
        im_secret s;
        memset(&s, 0x5a, sizeof s);
        err[0] = '\0';
        int rc = im_secret_load_or_create(tmp, &s, err, sizeof err);
        static const im_secret zero;
        EXPECT(rc == -1 && strstr(err, "malformed") && strstr(err, path) &&
                   memcmp(&s, &zero, sizeof s) == 0,
               "file %zu: rc %d err \"%s\"", i, rc, err);
        char back[128];
        size_t n = read_file(path, back, sizeof back);
        EXPECT(n == bad[i].len && memcmp(back, bad[i].text, n) == 0,
               "file %zu was changed", i);
    }
    /* err may be NULL, or tiny. */
    EXPECT_I64(im_secret_load_or_create(tmp, &(im_secret){0}, NULL, 0), -1);
    char tiny[4] = "xxx";
    EXPECT_I64(im_secret_load_or_create(tmp, &(im_secret){0}, tiny, sizeof tiny), -1);
    EXPECT_TRUE(strlen(tiny) == 3);

    /* An empty data dir is not "/". */
    err[0] = '\0';
    EXPECT_I64(im_secret_load_or_create("", &(im_secret){0}, err, sizeof err), -1);
    EXPECT_STR(err, "data dir: empty");

    /* auth.secret is a directory; the data dir is a file. */
    unlink(path);
    EXPECT_I64(mkdir(path, 0700), 0);
    EXPECT_I64(im_secret_load_or_create(tmp, &(im_secret){0}, err, sizeof err), -1);
    EXPECT(strstr(err, path) != NULL, "err \"%s\"", err);
    rmdir(path);
    char file[700];
    snprintf(file, sizeof file, "%s/plain", tmp);
    write_file(file, "x", 1);
    err[0] = '\0';
    EXPECT_I64(im_secret_load_or_create(file, &(im_secret){0}, err, sizeof err), -1);
    EXPECT(err[0] != '\0', "no error message");
    snprintf(file, sizeof file, "%s/plain/sub", tmp);
    EXPECT_I64(im_secret_load_or_create(file, &(im_secret){0}, err, sizeof err), -1);

    rm_rf(tmp);
}

/* 17. Processes that start at once on an empty data dir agree on one
 * secret, and leave one file and no temporary files. */
static void test_secret_concurrent_creators(void)
{
    enum { PROCS = 12, ROUNDS = 8 };
    for (int round = 0; round < ROUNDS; round++) {
        char tmp[512], dir[600];
        make_tmpdir(tmp, sizeof tmp);
        snprintf(dir, sizeof dir, "%s/data", tmp);
        int go[2], res[2];
        CU_ASSERT_FATAL(pipe(go) == 0 && pipe(res) == 0);
        pid_t pids[PROCS];
        for (int i = 0; i < PROCS; i++) {
            pids[i] = fork();
            CU_ASSERT_FATAL(pids[i] >= 0);
            if (pids[i] == 0) {
                close(go[1]);
                close(res[0]);
                char c;
                while (read(go[0], &c, 1) < 0 && errno == EINTR) {
                }
                uint8_t msg[33];
                im_secret s;
                char err[256];
                msg[0] = (uint8_t)(im_secret_load_or_create(dir, &s, err, sizeof err) == 0);
                memcpy(msg + 1, s.key, 32);
                if (!msg[0])
                    fprintf(stderr, "child: %s\n", err);
                _exit(write(res[1], msg, sizeof msg) == (ssize_t)sizeof msg ? 0 : 3);
            }
        }
        close(go[0]);
        close(res[1]);
        close(go[1]); /* start them all */
        uint8_t first[33] = {0}, msg[33];
        int got = 0, ok = 0, agree = 0;
        for (;;) {
            size_t have = 0;
            while (have < sizeof msg) {
                ssize_t r = read(res[0], msg + have, sizeof msg - have);
                if (r < 0 && errno == EINTR)
                    continue;
                if (r <= 0)
                    break;
                have += (size_t)r;
            }
            if (have < sizeof msg)
                break;
            if (got == 0)
                memcpy(first, msg, sizeof msg);
            got++;
            ok += msg[0];
            agree += memcmp(msg, first, sizeof msg) == 0;
        }
        close(res[0]);
        for (int i = 0; i < PROCS; i++) {
            int status = 0;
            waitpid(pids[i], &status, 0);
            EXPECT(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child %d status %d", i,
                   status);
        }
        EXPECT(got == PROCS && ok == PROCS && agree == PROCS,
               "round %d: %d answers, %d ok, %d agree", round, got, ok, agree);

        im_secret s;
        EXPECT_I64(im_secret_load_or_create(dir, &s, NULL, 0), 0);
        EXPECT_TRUE(memcmp(s.key, first + 1, 32) == 0);
        char names[512];
        int count = list_dir(dir, names, sizeof names);
        EXPECT(count == 1 && strcmp(names, "auth.secret") == 0, "left in the dir: %s", names);
        rm_rf(tmp);
    }
}

/* ================================================================= hash */

static uint64_t splitmix_fin(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

/* 18. FNV-1a reference vectors under the finaliser, and pinned values. */
static void test_hash64_known(void)
{
    EXPECT_U64(im_hash64("", 0), splitmix_fin(0xcbf29ce484222325ULL));
    EXPECT_U64(im_hash64(NULL, 0), splitmix_fin(0xcbf29ce484222325ULL));
    EXPECT_U64(im_hash64("", 0), 0xf52a15e9a9b5e89bULL);
    /* FNV-1a 64 test vectors (Fowler, Noll, Vo): "a", "foobar". */
    EXPECT_U64(im_hash64("a", 1), splitmix_fin(0xaf63dc4c8601ec8cULL));
    EXPECT_U64(im_hash64("foobar", 6), splitmix_fin(0x85944171f73967e8ULL));
    /* Pinned. */
    EXPECT_U64(im_hash64("a", 1), 0x02c0bdbf481420f8ULL);
    EXPECT_U64(im_hash64("alice", 5), 0xc5d1556d66774a5cULL);
    EXPECT_U64(im_hash64("bob", 3), 0x6e8572d08b268decULL);
    EXPECT_U64(im_hash64("u0", 2), 0x36c69dda1869ce5fULL);
    EXPECT_U64(im_hash64("u99999", 6), 0x96cb8c47affeb7e1ULL);
    EXPECT_U64(im_hash64("foobar", 6), 0x404da9e3b74078c2ULL);
    /* Length, not NUL, ends the input. */
    EXPECT_TRUE(im_hash64("a\0b", 3) != im_hash64("a", 1));
    EXPECT_U64(im_hash64("alice-and-more", 5), im_hash64("alice", 5));
}

/* 19. Jump hash values published with other implementations of the
 * paper's code (ClickHouse 00580_consistent_hashing_functions, the Rust
 * jump-consistent-hash doc tests), and key 0. */
static void test_jump_known(void)
{
    EXPECT_I64(im_jump_hash(1, 1), 0);
    EXPECT_I64(im_jump_hash(42, 57), 43);
    EXPECT_I64(im_jump_hash(256, 1024), 520);
    EXPECT_I64(im_jump_hash(3735883980ULL, 1), 0);
    EXPECT_I64(im_jump_hash(3735883980ULL, 666), 361);
    EXPECT_I64(im_jump_hash(16045690984833335023ULL, 255), 237);
    EXPECT_I64(im_jump_hash(1, 60), 55);
    EXPECT_I64(im_jump_hash(2, 60), 46);
    EXPECT_I64(im_jump_hash(0, 60), 0);
    /* Pinned with the reference algorithm. */
    EXPECT_I64(im_jump_hash(1, 10), 6);
    EXPECT_I64(im_jump_hash(1, 1000), 549);
    EXPECT_I64(im_jump_hash(0xdeadbeefULL, 1000), 285);
    EXPECT_I64(im_jump_hash(UINT64_MAX, 100), 92);

    int bad = 0;
    for (int32_t b = 1; b <= 5000; b++)
        bad += im_jump_hash(0, b) != 0;
    EXPECT_I64(im_jump_hash(0, INT32_MAX), 0);
    EXPECT(bad == 0, "key 0 left bucket 0 for %d bucket counts", bad);
    bad = 0;
    for (uint64_t k = 0; k < 10000; k++)
        bad += im_jump_hash(k * 0x9e3779b97f4a7c15ULL, 1) != 0;
    EXPECT(bad == 0, "%d keys not in the only bucket", bad);

    /* The shard of a uid, pinned for 1, 2, 4, 8, 16 shards. */
    static const struct {
        const char *uid;
        int shard[5];
    } pins[] = {
        {"alice", {0, 1, 2, 5, 5}},
        {"bob", {0, 0, 2, 2, 2}},
        {"carol", {0, 1, 1, 5, 12}},
        {"u0", {0, 0, 3, 4, 10}},
    };
    for (size_t i = 0; i < sizeof pins / sizeof pins[0]; i++)
        for (int j = 0; j < 5; j++) {
            int got = im_shard_of(pins[i].uid, 1 << j);
            EXPECT(got == pins[i].shard[j], "im_shard_of(\"%s\", %d) = %d, want %d",
                   pins[i].uid, 1 << j, got, pins[i].shard[j]);
        }
}

/* 20. Going from S to S+1 buckets moves keys only into the new bucket, and
 * about 1/(S+1) of them. */
static void test_jump_stability(void)
{
    enum { KEYS = 10000, MAXS = 64 };
    int moved_wrong = 0, out_of_range = 0, moved_far = 0;
    for (int32_t S = 1; S < MAXS; S++) {
        int moved = 0;
        for (int i = 0; i < KEYS; i++) {
            char uid[16];
            int n = snprintf(uid, sizeof uid, "u%d", i);
            uint64_t k = im_hash64(uid, (size_t)n);
            int32_t a = im_jump_hash(k, S), b = im_jump_hash(k, S + 1);
            if (a < 0 || a >= S || b < 0 || b > S)
                out_of_range++;
            if (a != b) {
                moved++;
                if (b != S)
                    moved_wrong++;
            }
        }
        double want = (double)KEYS / (S + 1);
        if (moved < want * 0.8 || moved > want * 1.2)
            moved_far++;
    }
    EXPECT(out_of_range == 0, "%d results out of range", out_of_range);
    EXPECT(moved_wrong == 0, "%d keys moved between old buckets", moved_wrong);
    EXPECT(moved_far == 0, "%d bucket counts moved far from 1/(S+1) of the keys", moved_far);
}

/* 21. 100,000 uids over 4 shards: each gets 23%..27%. */
static void test_shard_distribution(void)
{
    enum { N = 100000, S = 4 };
    int count[S] = {0};
    for (int i = 0; i < N; i++) {
        char uid[16];
        snprintf(uid, sizeof uid, "u%d", i);
        int sh = im_shard_of(uid, S);
        CU_ASSERT_FATAL(sh >= 0 && sh < S);
        count[sh]++;
    }
    for (int i = 0; i < S; i++)
        EXPECT(count[i] >= N * 23 / 100 && count[i] <= N * 27 / 100,
               "shard %d holds %d of %d uids", i, count[i], N);
    /* Pinned: the exact split, so a change of hashing is noticed here too. */
    EXPECT_I64(count[0], 25040);
    EXPECT_I64(count[1], 24965);
    EXPECT_I64(count[2], 24993);
    EXPECT_I64(count[3], 25002);
}

/* ================================================================= runner */

static const im_cunit_test tests[] = {
    {"b64url_vectors", test_b64url_vectors},
    {"b64url_rejections", test_b64url_rejections},
    {"token_roundtrip", test_token_roundtrip},
    {"token_uid_with_dots", test_token_uid_with_dots},
    {"token_expired", test_token_expired},
    {"token_forged", test_token_forged},
    {"token_other_secret", test_token_other_secret},
    {"token_garbage", test_token_garbage},
    {"token_oversize", test_token_oversize},
    {"token_make_refuses", test_token_make_refuses},
    {"cursor_roundtrip", test_cursor_roundtrip},
    {"cursor_scope", test_cursor_scope},
    {"cursor_flips", test_cursor_flips},
    {"cursor_empty_and_malformed", test_cursor_empty_and_malformed},
    {"secret_create_and_reload", test_secret_create_and_reload},
    {"secret_malformed", test_secret_malformed},
    {"secret_concurrent_creators", test_secret_concurrent_creators},
    {"hash64_known", test_hash64_known},
    {"jump_known", test_jump_known},
    {"jump_stability", test_jump_stability},
    {"shard_distribution", test_shard_distribution},
};

int main(int argc, char **argv)
{
    return im_cunit_main("common", tests, sizeof tests / sizeof tests[0],
                         argc > 1 ? argv[1] : NULL);
}
