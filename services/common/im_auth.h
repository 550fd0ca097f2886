/*
 * im_auth.h - the server secret, bearer tokens and inbox cursors.
 *
 * One 32-byte secret per deployment signs two things with HMAC-SHA256: the
 * tokens that say who a caller is, and the cursors that say how far a caller
 * has read. Both are strings a client only passes back, never interprets.
 * docs/PROTOCOL.md ("Identity: the token", "The cursor") is the contract;
 * the formats, byte by byte:
 *
 *   secret file  DATA_DIR/auth.secret: 64 lowercase hex digits and "\n"
 *                (65 bytes, mode 0600). Anything else is refused.
 *
 *   token   = b64url( uid "." expiry "." mac )
 *     uid    1..64 bytes, the uid rule of im_uid_check() (im_base.h);
 *            may contain dots
 *     expiry Unix time in seconds, 1..19 ASCII digits, nothing else (no
 *            sign); the token is refused when now >= expiry
 *     mac    HMAC-SHA256(secret, uid "." expiry), 32 raw bytes
 *   Parsed from the right: the last 32 bytes are the MAC, before them a ".",
 *   the digits of the expiry, a "." and the uid.
 *
 *   cursor  = b64url( 0x01 | seq | n | sender | tag )   (26 + n bytes)
 *     seq    u64 big-endian: the last sequence number the page returned
 *     n      1 byte, the length of sender (0..64)
 *     sender the scope: "" for the whole inbox, else the conversation's
 *            sender (an Ack carries nothing but the cursor)
 *     tag    first 16 bytes of HMAC-SHA256(secret,
 *              "imbox-cursor-v1" 0x00 owner 0x00 sender 0x00 seq)
 *            with sender "" for a whole-inbox cursor and seq the same
 *            8 big-endian bytes. uids never contain 0x00, so the input
 *            names one (owner, sender, seq) only.
 *   The empty string is the cursor "from the start" (seq 0).
 *
 *   b64url  RFC 4648 section 5 alphabet (A-Z a-z 0-9 - _), no "=" padding.
 *           Decoding is strict, so each byte string has exactly one
 *           encoding: no padding, no "+" or "/", no whitespace, no length
 *           of the form 4k+1, no non-zero bits left over in the last digit.
 *
 * Ownership: every output goes to a buffer the caller owns; *why strings are
 * static. Nothing is retained between calls.
 *
 * Threads: every function is thread-safe (no shared state) and this module
 * allocates nothing, except im_secret_load_or_create() and im_secret_load(),
 * which do file I/O
 * (libcrypto's HMAC may allocate internally).
 *
 * Errors: functions return 0 or -1. A NULL pointer where a value is
 * required is a programmer mistake (assert). Bad input (a forged token, a
 * malformed file) is -1 with a reason for a human: a static string (*why)
 * or the caller's err buffer.
 */
#ifndef IMBOX_IM_AUTH_H
#define IMBOX_IM_AUTH_H

#include <stddef.h>
#include <stdint.h>

#include "im_base.h"

/* ------------------------------------------------------------ base64url */

/*
 * Encodes in[0..n) into out (NUL-terminated). Returns the length written
 * without the NUL, or 0 when cap cannot hold the encoding and its NUL (then
 * out is left unchanged). in may be NULL when n == 0.
 */
size_t im_b64url_encode(const uint8_t *in, size_t n, char *out, size_t cap);

/*
 * Decodes in[0..n) into out[0..cap) and sets *outlen. Returns 0, or -1 when
 * the input is not strict unpadded base64url (see above) or the decoded
 * bytes do not fit in cap (then *outlen is 0 and out may hold garbage).
 */
int im_b64url_decode(const char *in, size_t n, uint8_t *out, size_t cap,
                     size_t *outlen);

/* --------------------------------------------------------------- secret */

typedef struct im_secret {
    uint8_t key[32];
} im_secret;

#define IM_SECRET_FILE "auth.secret"

/*
 * Reads DATA_DIR/auth.secret into *out. When it does not exist, creates
 * data_dir (like mkdir -p, new directories mode 0700) and the file from 32
 * bytes of getrandom(2), atomically: a temporary file (O_EXCL, 0600) is
 * written and fsync'ed, then link(2)ed to the final name, which fails if the
 * name exists, so when several processes race the first link wins and every
 * other one reads the winner's secret; the directory is fsync'ed.
 * Returns 0, or -1 with a message naming the path and the cause in
 * err[0..errlen) (err may be NULL) and *out zeroed.
 */
int im_secret_load_or_create(const char *data_dir, im_secret *out, char *err,
                             size_t errlen);

/*
 * Reads the secret file at path (the format above; the mode is not
 * checked) into *out. Never creates it: a process that only holds the
 * cluster's secret (a shard, or a gateway given --secret-file) must not
 * invent one. Returns 0, or -1 with a message naming the path and the
 * cause (missing, unreadable, malformed) in err[0..errlen) (err may be
 * NULL) and *out zeroed.
 */
int im_secret_load(const char *path, im_secret *out, char *err, size_t errlen);

/*
 * Derives 32 bytes for one purpose from the secret: HMAC-SHA256(secret,
 * label), the label naming the purpose and its version (domain separation:
 * two labels give independent keys, and none of them reveals the secret or
 * a token's MAC, whose inputs hold a "." and digits that no label has).
 * Returns 0, or -1 (out zeroed) when libcrypto fails.
 */
int im_secret_derive(const im_secret *s, const char *label, uint8_t out[32]);

/* ---------------------------------------------------------------- token */

/* A buffer of IM_TOKEN_MAX chars holds any token and its NUL (the longest
 * is 156 chars: a 64-byte uid and a 19-digit expiry). */
#define IM_TOKEN_MAX 160

/*
 * Writes the token of uid valid until expiry_unix_s into out. Returns 0, or
 * -1 (out unchanged) when the uid breaks the uid rule, expiry_unix_s < 0, or
 * cap is too small (IM_TOKEN_MAX is always enough).
 */
int im_token_make(const im_secret *s, const char *uid, int64_t expiry_unix_s,
                  char *out, size_t cap);

/*
 * Checks token[0..len) (no NUL needed) at time now_unix_s. Returns 0 and
 * copies the uid, NUL-terminated, into uid_out; or -1, uid_out = "", and
 * *why (why may be NULL) set to one of
 *   "token: too long"          len > IM_TOKEN_MAX - 1
 *   "token: not base64url"
 *   "token: malformed"         not uid "." digits "." 32 bytes
 *   "token: bad signature"     forged, or made with another secret
 *   "token: expired"           now_unix_s >= expiry
 *   "token: invalid uid"       signed, but the uid breaks the uid rule
 * The MAC is compared in constant time and checked before anything it
 * covers is interpreted.
 */
int im_token_verify(const im_secret *s, const char *token, size_t len,
                    int64_t now_unix_s, char uid_out[65], const char **why);

/*
 * As im_token_verify, and on success also sets *expiry_out to the token's
 * expiry (Unix seconds, > now_unix_s): a caller that caches the answer (the
 * gateway, gw_tokens.h) must stop trusting it from then on. On failure
 * *expiry_out is 0.
 */
int im_token_verify_until(const im_secret *s, const char *token, size_t len,
                          int64_t now_unix_s, char uid_out[65], int64_t *expiry_out,
                          const char **why);

/* --------------------------------------------------------------- cursor */

/* A buffer of IM_CURSOR_MAX chars holds any cursor and its NUL: a cursor is
 * base64url of 26 + n bytes (n = the scope's sender length, 0..64), so 35 to
 * 120 characters. */
#define IM_CURSOR_MAX 128

/*
 * Writes the cursor of position seq in owner's inbox into out: the whole
 * inbox when sender is NULL or "", else the conversation with sender. The
 * cursor carries its scope (the sender) so that an Ack, which has nothing
 * but the cursor, acks the right scope. Returns 0, or -1 (out unchanged)
 * when owner or a non-empty sender breaks the uid rule or cap is too small
 * (IM_CURSOR_MAX is always enough).
 */
int im_cursor_make(const im_secret *s, const char *owner, const char *sender,
                   uint64_t seq, char *out, size_t cap);

/*
 * Decodes cursor[0..len) of owner's inbox: sets *seq and copies its scope
 * into sender_out ("" for the whole inbox). The empty cursor (len 0) is
 * seq 0 of the whole inbox. Returns 0, or -1 with *seq = 0, sender_out = ""
 * and *why (why may be NULL) set to
 *   "cursor: malformed"   not base64url of 0x01 | seq8 | n | sender | tag16
 *   "cursor: not valid for this inbox or conversation"
 *                         the tag does not match: another owner, another
 *                         secret, or forged
 * Whether seq is beyond what the inbox ever stored is the shard's to say
 * (it answers INVALID_ARGUMENT).
 */
int im_cursor_scope(const im_secret *s, const char *owner, const char *cursor, size_t len,
                    uint64_t *seq, char sender_out[IM_UID_MAX + 1], const char **why);

/*
 * As im_cursor_scope, and the cursor's scope must also be `sender` (NULL or
 * "" = the whole inbox), else -1 with "cursor: not valid for this inbox or
 * conversation". The empty cursor starts any scope.
 */
int im_cursor_parse(const im_secret *s, const char *owner, const char *sender,
                    const char *cursor, size_t len, uint64_t *seq,
                    const char **why);

#endif
