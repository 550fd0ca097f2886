/*
 * gw_tokens.h - the gateway's cache of verified bearer tokens.
 *
 * Every call carries a token (im_auth.h) whose check costs an HMAC-SHA256
 * and a base64url decode (and libcrypto's allocations). A client sends the
 * same token on every call until it expires, so the gateway remembers the
 * tokens it has verified: a hit costs a hash of the token's bytes and one
 * full compare.
 *
 * Contract (what a hit may and may not do):
 *   - an entry is made only from a successful im_token_verify_until with
 *     this cache's secret: a failure is never remembered;
 *   - a hit needs the exact bytes: the cache keeps each token's full bytes
 *     and compares all of them (the 64-bit hash only picks the slot and
 *     skips the compare when it differs);
 *   - a hit returns the uid only while now < the token's expiry; at or
 *     after it the entry is dropped and the token is verified again, so the
 *     refusal ("token: expired") is the one im_token_verify gives;
 *   - tokens longer than GW_TOKENS_LEN_MAX bytes are never cached (none
 *     verifies: im_token_verify refuses them).
 *
 * Shape: GW_TOKENS_SETS sets of GW_TOKENS_WAYS entries (set-associative),
 * allocated once (about 1 MiB, touched as it fills): memory is bounded
 * whatever the callers send. A new token takes a free or expired way of its
 * set, else evicts the set's ways in turn (round robin).
 *
 * Threads: no locks. A cache belongs to one thread: the gateway's is made
 * and used by the completion-queue thread only (gw__auth), and freed after
 * that thread has been joined (gw_stop).
 *
 * One cache serves one secret: gw_tokens_verify must always be given the
 * same secret.
 *
 * gw_jwt.h keeps a second cache of its own, for JWTs: it calls only
 * gw_tokens_get and gw_tokens_put, with the SHA-256 of a JWT it has
 * verified as the "token", and the JWT's exp plus its leeway as expiry.
 */
#ifndef IMBOX_GW_TOKENS_H
#define IMBOX_GW_TOKENS_H

#include <stddef.h>
#include <stdint.h>

#include "im_auth.h"

#define GW_TOKENS_WAYS 4
#define GW_TOKENS_SETS 1024 /* a power of two */
#define GW_TOKENS_CAP (GW_TOKENS_WAYS * GW_TOKENS_SETS)
#define GW_TOKENS_LEN_MAX (IM_TOKEN_MAX - 1) /* the longest token that verifies */

typedef struct gw_tokens gw_tokens;

/* An empty cache, or NULL out of memory. */
gw_tokens *gw_tokens_new(void);

/* NULL-safe. */
void gw_tokens_free(gw_tokens *t);

/*
 * im_token_verify through the cache: same arguments, same results (0 and
 * uid_out, or -1, uid_out "" and *why), with token[0..len) remembered on
 * success until its expiry. t may be NULL: then it is im_token_verify.
 */
int gw_tokens_verify(gw_tokens *t, const im_secret *s, const char *token, size_t len,
                     int64_t now_unix_s, char uid_out[IM_UID_MAX + 1], const char **why);

/*
 * The two halves, for gw_tokens_verify and the tests. get: 0 and the uid
 * when token[0..len) is cached and now < its expiry, else -1 (an expired
 * entry is dropped). put: remembers a token that the caller has just
 * verified (uid and expiry as im_token_verify_until gave them); ignored
 * when len is 0 or over GW_TOKENS_LEN_MAX.
 */
int gw_tokens_get(gw_tokens *t, const char *token, size_t len, int64_t now_unix_s,
                  char uid_out[IM_UID_MAX + 1]);
void gw_tokens_put(gw_tokens *t, const char *token, size_t len, int64_t expiry_unix_s,
                   const char *uid);

typedef struct gw_tokens_stats {
    uint64_t hits, misses; /* gw_tokens_get's answers */
    int entries;           /* held now, at most GW_TOKENS_CAP */
} gw_tokens_stats;

gw_tokens_stats gw_tokens_stats_of(const gw_tokens *t);

#endif
