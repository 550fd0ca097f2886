/*
 * gw_jwt.h - JSON Web Tokens from the application's own identity provider,
 * accepted by the gateway beside imbox's own tokens (im_auth.h).
 *
 * Which verifier a bearer token goes to (gw__auth): a token that contains
 * a "." is a JWT and goes here; one without is an imbox token. An imbox
 * token is base64url (A-Z a-z 0-9 - _) and never holds a ".", and a JWS in
 * compact form always holds two, so neither can be taken for the other.
 *
 * What a JWT must be, checked in this order (the first failure answers):
 *   - at most GW_JWT_LEN_MAX bytes, exactly three non-empty segments
 *     header "." payload "." signature, each strict unpadded base64url
 *     (im_b64url_decode), header and payload at most GW_JWT_PART_MAX bytes
 *     once decoded; all sizes checked before anything is decoded;
 *   - header: a JSON object without duplicate names, no "crit", "alg" one of
 *       HS256  verified with the --jwt-hs256-secret-file secret only ("kid"
 *              is ignored); refused when no secret file is configured;
 *       RS256, ES256  verified with the JWKS key whose "kid" equals the
 *              header's "kid" (required) and whose type fits the alg (a
 *              JWK of kty RSA for RS256, of kty EC and crv P-256 for ES256,
 *              and the JWK's "alg", when it has one, equal to the token's);
 *     anything else ("none", HS384, RS512, PS256, ...) is refused. So a
 *     public key is never used as an HMAC secret (algorithm confusion) and
 *     an unsigned token never passes;
 *   - the signature, by libjwt (jwt_decode with that one key), whose
 *     decoded alg must again be the header's;
 *   - payload (read only after the signature verified): a JSON object
 *     without duplicate names;
 *       "exp"  required, a number: refused from exp + GW_JWT_LEEWAY_S on;
 *       "nbf"  optional, a number: refused before nbf - GW_JWT_LEEWAY_S;
 *       "iss"  when an issuer is configured: a string equal to it;
 *       "aud"  when an audience is configured: a string equal to it, or an
 *              array holding such a string;
 *       the uid claim ("sub" by default): a string without NUL that passes
 *              the uid rule (im_uid_check).
 *
 * JWKS file: {"keys": [JWK, ...]} (RFC 7517), at most GW_JWT_JWKS_MAX
 * bytes and GW_JWT_KEYS_MAX keys. A JWK of kty RSA (n, e; 2048..8192 bits)
 * or EC (crv P-256, x, y) with a kid is taken, unless its "use" is not
 * "sig" or its "alg" is not RS256 / ES256 (those are skipped, as are other
 * key types). A taken key that does not decode (bad base64url, a point
 * off the curve), a kid used twice, or JSON that does not parse makes the
 * whole file refused. The file is looked at (stat: inode, size, mtime,
 * ctime) at most once a second, on the thread that verifies, and re-read
 * when that changed: a file that parses replaces the keys and empties the
 * cache (a token of a removed kid stops working at once); one that does not
 * keeps the previous keys and is logged once (until the file changes
 * again). At start a JWKS that cannot be read or parsed is an error.
 *
 * HS256 secret file: its bytes, less one trailing "\n" or "\r\n", are the
 * secret; 32..4096 bytes (RFC 7518 3.2: at least the hash's size).
 *
 * Cache: verified JWTs are remembered in a gw_tokens cache of their own
 * (gw_tokens.h), keyed by the SHA-256 of the whole token (a JWT is longer
 * than the cache's keys), until exp + GW_JWT_LEEWAY_S. A hit costs the hash
 * and a clock read; nothing but a verified token is ever stored.
 *
 * Logs (stderr): the JWKS path, key counts and why a file was refused;
 * never a token, a secret or a key.
 *
 * Threads: one gw_jwt is used by one thread (the gateway's completion-queue
 * thread); gw_jwt_new and gw_jwt_free from the controlling thread before
 * and after it runs.
 */
#ifndef IMBOX_GW_JWT_H
#define IMBOX_GW_JWT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "im_base.h"

#define GW_JWT_LEN_MAX 8192      /* bytes of a whole JWT */
#define GW_JWT_PART_MAX 4096     /* bytes of a decoded header or payload */
#define GW_JWT_LEEWAY_S 30       /* clock skew allowed on exp and nbf */
#define GW_JWT_JWKS_MAX (1 << 20) /* bytes of a JWKS file */
#define GW_JWT_KEYS_MAX 64       /* keys taken from a JWKS */
#define GW_JWT_KID_MAX 128       /* bytes of a kid */
#define GW_JWT_RELOAD_MS 1000    /* how often the JWKS file is looked at */

/* NULL or "" fields are not set. */
typedef struct gw_jwt_config {
    const char *hs256_secret_file;
    const char *jwks_file;
    const char *uid_claim; /* NULL or "": "sub" */
    const char *issuer;
    const char *audience;
} gw_jwt_config;

typedef struct gw_jwt gw_jwt;

/* Whether c asks for JWTs at all (a secret file or a JWKS). */
bool gw_jwt_configured(const gw_jwt_config *c);

/* Reads the secret file and the JWKS. NULL with err on failure (a file
 * unreadable, a secret out of 32..4096 bytes, a JWKS refused as above, a
 * uid claim or issuer or audience that is empty or longer than 256 bytes,
 * out of memory). */
gw_jwt *gw_jwt_new(const gw_jwt_config *c, char *err, size_t errlen);

/* NULL-safe; sets *j to NULL. */
void gw_jwt_free(gw_jwt **j);

/* Whether token[0..len) is to be verified as a JWT (it holds a "."). */
bool gw_jwt_is_jwt(const char *token, size_t len);

/*
 * Verifies the JWT token[0..len) (no NUL needed) at now_unix_s. Returns 0
 * and the uid in uid_out; or -1, uid_out "" and *why, a static string that
 * starts with "jwt: " (names the failed check, never echoes the token).
 * j may be NULL: then every JWT is refused ("jwt: JWTs are not accepted
 * here").
 */
int gw_jwt_verify(gw_jwt *j, const char *token, size_t len, int64_t now_unix_s,
                  char uid_out[IM_UID_MAX + 1], const char **why);

#endif
