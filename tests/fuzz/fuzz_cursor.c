/*
 * fuzz_cursor.c - libFuzzer target of im_cursor_scope (im_auth.h): the
 * cursor a client passes back in Pull, Ack and Subscribe.
 * Invariants:
 *   - a cursor that is accepted for owner "fz-owner" is exactly the one
 *     im_cursor_make writes for that owner, its scope and its seq (nothing
 *     else is accepted: no second form, no forgery), and it is refused for
 *     another owner and with another secret;
 *   - a refused cursor leaves seq 0 and the scope "" and says why;
 *   - round trip: a cursor made from the input's bytes (a seq and a scope)
 *     decodes to them, through im_cursor_scope and im_cursor_parse.
 */
#include <string.h>

#include "fz.h"
#include "im_auth.h"
#include "im_base.h"

#define S_OWNER "fz-owner"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const im_secret key = fz_secret(), other = fz_other_secret();
    char scope[IM_UID_MAX + 1];
    uint64_t seq = 1;
    const char *why = NULL;
    const char *cur = (const char *)data;
    if (im_cursor_scope(&key, S_OWNER, cur, size, &seq, scope, &why) == 0) {
        if (size) {
            char again[IM_CURSOR_MAX];
            FZ_CHECK(im_cursor_make(&key, S_OWNER, scope, seq, again, sizeof again) == 0);
            FZ_CHECK(strlen(again) == size && memcmp(again, data, size) == 0);
            char s2[IM_UID_MAX + 1];
            uint64_t q2;
            FZ_CHECK(im_cursor_scope(&key, "fz-other", cur, size, &q2, s2, NULL) != 0);
            FZ_CHECK(im_cursor_scope(&other, S_OWNER, cur, size, &q2, s2, NULL) != 0);
            FZ_CHECK(q2 == 0 && s2[0] == 0);
        } else {
            FZ_CHECK(seq == 0 && scope[0] == 0);
        }
    } else {
        FZ_CHECK(seq == 0 && scope[0] == 0 && why != NULL);
    }
    /* Round trip: 8 bytes of seq, then the scope up to a NUL. */
    if (size >= 8) {
        uint64_t want = im_get64(data);
        char sender[IM_UID_MAX + 1];
        size_t n = strnlen((const char *)data + 8, size - 8 < IM_UID_MAX ? size - 8 : IM_UID_MAX);
        memcpy(sender, data + 8, n);
        sender[n] = 0;
        char c[IM_CURSOR_MAX];
        if (im_cursor_make(&key, S_OWNER, sender, want, c, sizeof c) == 0) {
            FZ_CHECK(im_cursor_scope(&key, S_OWNER, c, strlen(c), &seq, scope, NULL) == 0);
            FZ_CHECK(seq == want && strcmp(scope, sender) == 0);
            FZ_CHECK(im_cursor_parse(&key, S_OWNER, sender, c, strlen(c), &seq, NULL) == 0);
            FZ_CHECK(seq == want);
            FZ_CHECK(im_cursor_scope(&other, S_OWNER, c, strlen(c), &seq, scope, NULL) != 0);
        } else {
            FZ_CHECK(n && im_uid_check(sender, "sender", NULL, 0) != 0);
        }
    }
    return 0;
}
