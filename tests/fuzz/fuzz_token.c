/*
 * fuzz_token.c - libFuzzer target of im_token_verify (im_auth.h): the
 * bearer token of every call, the first bytes a client sends.
 * Invariants:
 *   - a token that verifies is exactly the one im_token_make writes for its
 *     uid and expiry with the secret (nothing else verifies: no second form,
 *     no forgery), its expiry is after now and its uid keeps the uid rule;
 *   - it does not verify with another secret;
 *   - round trip: a token made from the input's first bytes as uid (when
 *     they keep the uid rule) verifies as that uid until its expiry.
 */
#include <string.h>

#include "fz.h"
#include "im_auth.h"
#include "im_base.h"

/* The decimal digits of the expiry in token's text (uid "." expiry "." mac),
 * read back from the base64url form. */
static int64_t s_expiry_of(const uint8_t *data, size_t size)
{
    uint8_t raw[IM_TOKEN_MAX];
    size_t n = 0;
    if (im_b64url_decode((const char *)data, size, raw, sizeof raw, &n))
        return -1;
    const uint8_t *dot = memchr(raw, '.', n);
    if (!dot)
        return -1;
    int64_t e = 0;
    for (const uint8_t *p = dot + 1; p < raw + n && *p != '.'; p++)
        e = e * 10 + (*p - '0');
    return e;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const im_secret key = fz_secret(), other = fz_other_secret();
    char uid[IM_UID_MAX + 1];
    const char *why = NULL;
    int64_t expiry = 0;
    if (im_token_verify_until(&key, (const char *)data, size, FZ_NOW_S, uid, &expiry, &why) ==
        0) {
        FZ_CHECK(expiry > FZ_NOW_S);
        FZ_CHECK(im_uid_check(uid, "uid", NULL, 0) == 0);
        FZ_CHECK(s_expiry_of(data, size) == expiry);
        char again[IM_TOKEN_MAX];
        FZ_CHECK(im_token_make(&key, uid, expiry, again, sizeof again) == 0);
        FZ_CHECK(strlen(again) == size && memcmp(again, data, size) == 0);
        char uid2[IM_UID_MAX + 1];
        FZ_CHECK(im_token_verify(&other, (const char *)data, size, FZ_NOW_S, uid2, NULL) != 0);
        FZ_CHECK(uid2[0] == 0);
    } else {
        FZ_CHECK(uid[0] == 0 && expiry == 0 && why != NULL);
    }
    /* Round trip: the first bytes (up to a NUL, at most a uid) as a uid. */
    char u[IM_UID_MAX + 1];
    size_t n = strnlen((const char *)data, size < IM_UID_MAX ? size : IM_UID_MAX);
    memcpy(u, data, n);
    u[n] = 0;
    if (n && im_uid_check(u, "uid", NULL, 0) == 0) {
        char tok[IM_TOKEN_MAX];
        FZ_CHECK(im_token_make(&key, u, FZ_NOW_S + 60, tok, sizeof tok) == 0);
        FZ_CHECK(im_token_verify(&key, tok, strlen(tok), FZ_NOW_S, uid, NULL) == 0);
        FZ_CHECK(strcmp(uid, u) == 0);
        FZ_CHECK(im_token_verify(&key, tok, strlen(tok), FZ_NOW_S + 60, uid, NULL) != 0);
        FZ_CHECK(im_token_verify(&other, tok, strlen(tok), FZ_NOW_S, uid, NULL) != 0);
    }
    return 0;
}
