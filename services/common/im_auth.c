/*
 * im_auth.c - secret file, tokens and cursors (formats in im_auth.h).
 *
 * Everything here is a pure function of its arguments and the secret,
 * except im_secret_load_or_create() and im_secret_load(). Buffers that held key material or MAC
 * inputs are wiped with OPENSSL_cleanse() before returning.
 */
#include "im_auth.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#define S_MAC_LEN 32      /* HMAC-SHA256 */
#define S_TAG_LEN 16      /* cursor tag: truncated HMAC-SHA256 */
#define S_EXPIRY_DIGITS 19 /* INT64_MAX has 19 digits */
#define S_CURSOR_VERSION 0x01
#define S_CURSOR_FIXED (1 + 8 + 1 + S_TAG_LEN) /* version, seq, n, tag */
#define S_CURSOR_DOMAIN "imbox-cursor-v1"
/* uid "." expiry "." mac at its longest. */
#define S_TOKEN_RAW_MAX (IM_UID_MAX + 1 + S_EXPIRY_DIGITS + 1 + S_MAC_LEN)

/* RFC 4648 section 5; s_b64_val() is its inverse. */
static const char s_b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* ============================================================ base64url */

static size_t s_b64_len(size_t n)
{
    return n / 3 * 4 + (n % 3 == 0 ? 0 : n % 3 + 1);
}

size_t im_b64url_encode(const uint8_t *in, size_t n, char *out, size_t cap)
{
    assert(in != NULL || n == 0);
    assert(out != NULL || cap == 0);
    if (n > SIZE_MAX / 4 * 3 - 3 || cap < s_b64_len(n) + 1)
        return 0;
    size_t o = 0, i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = s_b64_alphabet[v >> 18 & 63];
        out[o++] = s_b64_alphabet[v >> 12 & 63];
        out[o++] = s_b64_alphabet[v >> 6 & 63];
        out[o++] = s_b64_alphabet[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[o++] = s_b64_alphabet[v >> 18 & 63];
        out[o++] = s_b64_alphabet[v >> 12 & 63];
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[o++] = s_b64_alphabet[v >> 18 & 63];
        out[o++] = s_b64_alphabet[v >> 12 & 63];
        out[o++] = s_b64_alphabet[v >> 6 & 63];
    }
    out[o] = '\0';
    return o;
}

/* The 6-bit value of an alphabet character, or -1. */
static int s_b64_val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

int im_b64url_decode(const char *in, size_t n, uint8_t *out, size_t cap,
                     size_t *outlen)
{
    assert(in != NULL || n == 0);
    assert(outlen != NULL);
    *outlen = 0;
    size_t rem = n % 4;
    if (rem == 1)
        return -1; /* 6 bits cannot make a byte */
    size_t need = n / 4 * 3 + (rem == 0 ? 0 : rem - 1);
    if (need > cap)
        return -1;
    assert(out != NULL || need == 0);
    const unsigned char *p = (const unsigned char *)in;
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        int v = s_b64_val(p[i]);
        if (v < 0)
            return -1;
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (uint8_t)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    if (acc != 0)
        return -1; /* non-zero padding bits: a second spelling of the same bytes */
    assert(o == need);
    *outlen = o;
    return 0;
}

/* =============================================================== secret */

/* fsync of a directory, so that entries created or renamed in it persist. */
static int s_fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    int e = errno;
    close(fd);
    errno = e;
    return rc;
}

/* mkdir -p with mode 0700 for the directories it creates; each one's parent
 * is fsync'ed so the new entry survives a crash. Existing directories are
 * left as they are. */
static int s_mkdirs(const char *dir, char *err, size_t errlen)
{
    char path[PATH_MAX];
    size_t n = strlen(dir);
    if (n == 0 || n >= sizeof path)
        return im_fail(err, errlen, "data dir \"%s\": empty or too long", dir);
    memcpy(path, dir, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (path[i] != '/' && path[i] != '\0')
            continue;
        if (path[i - 1] == '/')
            continue; /* "a//b" or a trailing "/" */
        char c = path[i];
        path[i] = '\0';
        if (mkdir(path, 0700) == 0) {
            /* The parent is everything before the last '/', or ".". */
            char *slash = strrchr(path, '/');
            int rc;
            if (slash == NULL) {
                rc = s_fsync_dir(".");
            } else if (slash == path) {
                rc = s_fsync_dir("/");
            } else {
                *slash = '\0';
                rc = s_fsync_dir(path);
                *slash = '/';
            }
            if (rc != 0)
                return im_fail(err, errlen, "fsync of the parent of %s: %s", path,
                              strerror(errno));
        } else if (errno != EEXIST) {
            return im_fail(err, errlen, "mkdir %s: %s", path, strerror(errno));
        }
        path[i] = c;
    }
    return 0;
}

static int s_hex_val(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/*
 * Reads the secret file at path. Returns 0; 1 when it does not exist
 * (errno ENOENT); -1 with err filled for any other failure, including a
 * malformed file.
 */
static int s_secret_read(const char *path, im_secret *out, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return 1;
        return im_fail(err, errlen, "%s: %s", path, strerror(errno));
    }
    /* One byte more than a valid file, to see that there is more. */
    char buf[2 * sizeof out->key + 2];
    size_t got = 0;
    while (got < sizeof buf) {
        ssize_t r = read(fd, buf + got, sizeof buf - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = errno;
            close(fd);
            OPENSSL_cleanse(buf, sizeof buf);
            return im_fail(err, errlen, "%s: read: %s", path, strerror(e));
        }
        if (r == 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    bool ok = got == 2 * sizeof out->key + 1 && buf[got - 1] == '\n';
    for (size_t i = 0; ok && i < sizeof out->key; i++) {
        int hi = s_hex_val(buf[2 * i]), lo = s_hex_val(buf[2 * i + 1]);
        if (hi < 0 || lo < 0)
            ok = false;
        else
            out->key[i] = (uint8_t)(hi << 4 | lo);
    }
    OPENSSL_cleanse(buf, sizeof buf);
    if (!ok) {
        OPENSSL_cleanse(out, sizeof *out);
        return im_fail(err, errlen,
                      "%s: malformed (want 64 lowercase hex digits and a newline); "
                      "fix or remove it (removing it invalidates every token and cursor)",
                      path);
    }
    return 0;
}

static int s_write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int s_random(void *buf, size_t n)
{
    uint8_t *p = buf;
    while (n > 0) {
        ssize_t r = getrandom(p, n, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

/*
 * Creates the secret file at path with a fresh secret. Returns 0 when this
 * call created it (*out is the new secret); 1 when the file appeared in the
 * meantime (another process won: the caller reads it); -1 with err.
 */
static int s_secret_create(const char *dir, const char *path, im_secret *out,
                           char *err, size_t errlen)
{
    im_secret fresh;
    uint8_t nonce[8];
    if (s_random(fresh.key, sizeof fresh.key) != 0 || s_random(nonce, sizeof nonce) != 0)
        return im_fail(err, errlen, "getrandom: %s", strerror(errno));

    /* A name no other process uses: pid plus random bytes. */
    char tmp[PATH_MAX];
    int n = snprintf(tmp, sizeof tmp, "%s/.%s.%ld.%02x%02x%02x%02x%02x%02x%02x%02x.tmp",
                     dir, IM_SECRET_FILE, (long)getpid(), nonce[0], nonce[1],
                     nonce[2], nonce[3], nonce[4], nonce[5], nonce[6], nonce[7]);
    if (n < 0 || (size_t)n >= sizeof tmp)
        return im_fail(err, errlen, "data dir \"%s\": path too long", dir);

    char text[2 * sizeof fresh.key + 1];
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < sizeof fresh.key; i++) {
        text[2 * i] = hex[fresh.key[i] >> 4];
        text[2 * i + 1] = hex[fresh.key[i] & 15];
    }
    text[sizeof text - 1] = '\n';

    int rc = -1;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        im_fail(err, errlen, "%s: create: %s", tmp, strerror(errno));
        goto out;
    }
    /* The mode must not depend on the umask of whoever ran first. */
    if (fchmod(fd, 0600) != 0 || s_write_all(fd, text, sizeof text) != 0 ||
        fsync(fd) != 0) {
        int e = errno;
        close(fd);
        unlink(tmp);
        im_fail(err, errlen, "%s: write: %s", tmp, strerror(e));
        goto out;
    }
    if (close(fd) != 0) {
        int e = errno;
        unlink(tmp);
        im_fail(err, errlen, "%s: close: %s", tmp, strerror(e));
        goto out;
    }
    /* link(2), unlike rename(2), never replaces: the first creator wins and
     * nobody ever sees a secret change under them. */
    if (link(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        if (e == EEXIST) {
            rc = 1;
            goto out;
        }
        im_fail(err, errlen, "%s: link: %s", path, strerror(e));
        goto out;
    }
    unlink(tmp);
    if (s_fsync_dir(dir) != 0) {
        im_fail(err, errlen, "%s: fsync: %s", dir, strerror(errno));
        goto out;
    }
    *out = fresh;
    rc = 0;
out:
    OPENSSL_cleanse(&fresh, sizeof fresh);
    OPENSSL_cleanse(text, sizeof text);
    return rc;
}

int im_secret_load_or_create(const char *data_dir, im_secret *out, char *err,
                             size_t errlen)
{
    assert(data_dir != NULL);
    assert(out != NULL);
    memset(out, 0, sizeof *out);
    if (err && errlen > 0)
        err[0] = '\0';

    if (data_dir[0] == '\0')
        return im_fail(err, errlen, "data dir: empty");
    char path[PATH_MAX];
    int n = snprintf(path, sizeof path, "%s/%s", data_dir, IM_SECRET_FILE);
    if (n < 0 || (size_t)n >= sizeof path)
        return im_fail(err, errlen, "data dir \"%s\": path too long", data_dir);

    int rc = s_secret_read(path, out, err, errlen);
    if (rc <= 0)
        return rc;
    if (s_mkdirs(data_dir, err, errlen) != 0)
        return -1;
    rc = s_secret_create(data_dir, path, out, err, errlen);
    if (rc <= 0)
        return rc;
    /* Lost the race: the winner's file was complete before it had a name. */
    rc = s_secret_read(path, out, err, errlen);
    if (rc == 1)
        return im_fail(err, errlen, "%s: vanished while being created", path);
    return rc;
}

int im_secret_load(const char *path, im_secret *out, char *err, size_t errlen)
{
    assert(path != NULL);
    assert(out != NULL);
    memset(out, 0, sizeof *out);
    if (err && errlen > 0)
        err[0] = '\0';
    if (path[0] == '\0')
        return im_fail(err, errlen, "secret file: empty path");
    int rc = s_secret_read(path, out, err, errlen);
    if (rc == 1)
        return im_fail(err, errlen, "%s: no such file (it is never created here: give the "
                                   "cluster's auth.secret, as a gateway created it)", path);
    return rc;
}

/* ================================================================= MACs */

static int s_hmac(const im_secret *s, const uint8_t *msg, size_t n,
                  uint8_t mac[S_MAC_LEN])
{
    unsigned int len = 0;
    if (HMAC(EVP_sha256(), s->key, (int)sizeof s->key, msg, n, mac, &len) == NULL ||
        len != S_MAC_LEN)
        return -1;
    return 0;
}

int im_secret_derive(const im_secret *s, const char *label, uint8_t out[32])
{
    assert(s != NULL && label != NULL && out != NULL);
    if (s_hmac(s, (const uint8_t *)label, strlen(label), out)) {
        OPENSSL_cleanse(out, S_MAC_LEN);
        return -1;
    }
    return 0;
}

static bool s_uid_ok(const char *uid)
{
    return im_uid_check(uid, "uid", NULL, 0) == 0;
}

/* ================================================================ token */

int im_token_make(const im_secret *s, const char *uid, int64_t expiry_unix_s,
                  char *out, size_t cap)
{
    assert(s != NULL);
    assert(out != NULL || cap == 0);
    if (uid == NULL || !s_uid_ok(uid) || expiry_unix_s < 0)
        return -1;
    uint8_t raw[S_TOKEN_RAW_MAX + 1]; /* + 1: snprintf's NUL */
    int n = snprintf((char *)raw, sizeof raw, "%s.%lld.", uid, (long long)expiry_unix_s);
    assert(n > 0 && (size_t)n + S_MAC_LEN <= S_TOKEN_RAW_MAX);
    /* The MAC covers uid "." expiry, without the second dot. */
    int rc = -1;
    if (s_hmac(s, raw, (size_t)n - 1, raw + n) == 0 &&
        s_b64_len((size_t)n + S_MAC_LEN) + 1 <= cap) {
        im_b64url_encode(raw, (size_t)n + S_MAC_LEN, out, cap);
        rc = 0;
    }
    OPENSSL_cleanse(raw, sizeof raw);
    return rc;
}

static int s_token_fail(char uid_out[65], const char **why, const char *reason)
{
    uid_out[0] = '\0';
    if (why)
        *why = reason;
    return -1;
}

int im_token_verify(const im_secret *s, const char *token, size_t len,
                    int64_t now_unix_s, char uid_out[65], const char **why)
{
    int64_t expiry;
    return im_token_verify_until(s, token, len, now_unix_s, uid_out, &expiry, why);
}

int im_token_verify_until(const im_secret *s, const char *token, size_t len,
                          int64_t now_unix_s, char uid_out[65], int64_t *expiry_out,
                          const char **why)
{
    assert(s != NULL);
    assert(token != NULL || len == 0);
    assert(uid_out != NULL);
    assert(expiry_out != NULL);
    *expiry_out = 0;
    if (len > IM_TOKEN_MAX - 1)
        return s_token_fail(uid_out, why, "token: too long");
    /* IM_TOKEN_MAX - 1 chars decode to at most 3/4 of that. */
    uint8_t raw[IM_TOKEN_MAX / 4 * 3];
    size_t n;
    if (im_b64url_decode(token, len, raw, sizeof raw, &n) != 0)
        return s_token_fail(uid_out, why, "token: not base64url");

    /* From the right: mac, ".", digits, ".", uid (at least one byte). */
    if (n < 1 + 1 + 1 + 1 + S_MAC_LEN || raw[n - S_MAC_LEN - 1] != '.')
        return s_token_fail(uid_out, why, "token: malformed");
    size_t dot2 = n - S_MAC_LEN - 1; /* the dot before the MAC */
    size_t e = dot2;                 /* the expiry is raw[e..dot2) */
    while (e > 0 && raw[e - 1] >= '0' && raw[e - 1] <= '9')
        e--;
    size_t digits = dot2 - e;
    if (digits == 0 || digits > S_EXPIRY_DIGITS || e < 2 || raw[e - 1] != '.')
        return s_token_fail(uid_out, why, "token: malformed");
    size_t uid_len = e - 1;

    uint8_t mac[S_MAC_LEN];
    if (s_hmac(s, raw, dot2, mac) != 0)
        return s_token_fail(uid_out, why, "token: cannot compute the MAC");
    int differ = CRYPTO_memcmp(mac, raw + dot2 + 1, S_MAC_LEN);
    OPENSSL_cleanse(mac, sizeof mac);
    if (differ != 0)
        return s_token_fail(uid_out, why, "token: bad signature");

    /* Signed by us, so well-formed unless the secret leaked; check anyway. */
    uint64_t expiry = 0;
    for (size_t i = e; i < dot2; i++) {
        unsigned d = (unsigned)(raw[i] - '0');
        if (expiry > ((uint64_t)INT64_MAX - d) / 10)
            return s_token_fail(uid_out, why, "token: malformed");
        expiry = expiry * 10 + d;
    }
    if (now_unix_s >= (int64_t)expiry)
        return s_token_fail(uid_out, why, "token: expired");

    if (uid_len > IM_UID_MAX || memchr(raw, '\0', uid_len) != NULL)
        return s_token_fail(uid_out, why, "token: invalid uid");
    memcpy(uid_out, raw, uid_len);
    uid_out[uid_len] = '\0';
    if (!s_uid_ok(uid_out))
        return s_token_fail(uid_out, why, "token: invalid uid");
    *expiry_out = (int64_t)expiry;
    return 0;
}

/* =============================================================== cursor */

/* The cursor tag of (owner, sender, seq); seq8 is seq big-endian. */
static int s_cursor_tag(const im_secret *s, const char *owner, const char *sender,
                        const uint8_t seq8[8], uint8_t tag[S_TAG_LEN])
{
    uint8_t msg[sizeof S_CURSOR_DOMAIN + IM_UID_MAX + 1 + IM_UID_MAX + 1 + 8];
    size_t ol = strnlen(owner, IM_UID_MAX + 1), sl = strnlen(sender, IM_UID_MAX + 1);
    if (ol > IM_UID_MAX || sl > IM_UID_MAX)
        return -1; /* no cursor of ours names such a uid */
    size_t n = 0;
    memcpy(msg + n, S_CURSOR_DOMAIN, sizeof S_CURSOR_DOMAIN); /* with its 0x00 */
    n += sizeof S_CURSOR_DOMAIN;
    memcpy(msg + n, owner, ol);
    n += ol;
    msg[n++] = 0;
    memcpy(msg + n, sender, sl);
    n += sl;
    msg[n++] = 0;
    memcpy(msg + n, seq8, 8);
    n += 8;
    uint8_t mac[S_MAC_LEN];
    int rc = s_hmac(s, msg, n, mac);
    memcpy(tag, mac, S_TAG_LEN);
    OPENSSL_cleanse(mac, sizeof mac);
    return rc;
}

static void s_put_u64be(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

static uint64_t s_get_u64be(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

int im_cursor_make(const im_secret *s, const char *owner, const char *sender,
                   uint64_t seq, char *out, size_t cap)
{
    assert(s != NULL);
    assert(out != NULL || cap == 0);
    if (sender == NULL)
        sender = "";
    if (owner == NULL || !s_uid_ok(owner) || (sender[0] != '\0' && !s_uid_ok(sender)))
        return -1;
    size_t sl = strlen(sender), rawn = S_CURSOR_FIXED + sl;
    if (cap < s_b64_len(rawn) + 1)
        return -1;
    uint8_t raw[S_CURSOR_FIXED + IM_UID_MAX];
    raw[0] = S_CURSOR_VERSION;
    s_put_u64be(raw + 1, seq);
    raw[9] = (uint8_t)sl;
    memcpy(raw + 10, sender, sl);
    if (s_cursor_tag(s, owner, sender, raw + 1, raw + 10 + sl) != 0)
        return -1;
    im_b64url_encode(raw, rawn, out, cap);
    return 0;
}

int im_cursor_scope(const im_secret *s, const char *owner, const char *cursor, size_t len,
                    uint64_t *seq, char sender_out[IM_UID_MAX + 1], const char **why)
{
    assert(s != NULL);
    assert(owner != NULL);
    assert(cursor != NULL || len == 0);
    assert(seq != NULL && sender_out != NULL);
    *seq = 0;
    sender_out[0] = '\0';
    if (len == 0)
        return 0;
    uint8_t raw[S_CURSOR_FIXED + IM_UID_MAX];
    size_t n;
    if (len > s_b64_len(sizeof raw) ||
        im_b64url_decode(cursor, len, raw, sizeof raw, &n) != 0 || n < S_CURSOR_FIXED ||
        raw[0] != S_CURSOR_VERSION || n != S_CURSOR_FIXED + (size_t)raw[9]) {
        if (why)
            *why = "cursor: malformed";
        return -1;
    }
    size_t sl = raw[9];
    char sender[IM_UID_MAX + 1];
    memcpy(sender, raw + 10, sl);
    sender[sl] = '\0';
    uint8_t tag[S_TAG_LEN];
    if ((sl && (memchr(sender, 0, sl) || !s_uid_ok(sender))) ||
        s_cursor_tag(s, owner, sender, raw + 1, tag) != 0 ||
        CRYPTO_memcmp(tag, raw + 10 + sl, S_TAG_LEN) != 0) {
        if (why)
            *why = "cursor: not valid for this inbox or conversation";
        return -1;
    }
    *seq = s_get_u64be(raw + 1);
    memcpy(sender_out, sender, sl + 1);
    return 0;
}

int im_cursor_parse(const im_secret *s, const char *owner, const char *sender,
                    const char *cursor, size_t len, uint64_t *seq,
                    const char **why)
{
    char scope[IM_UID_MAX + 1];
    if (sender == NULL)
        sender = "";
    if (im_cursor_scope(s, owner, cursor, len, seq, scope, why) != 0)
        return -1;
    if (len != 0 && strcmp(scope, sender) != 0) { /* "" starts any scope */
        *seq = 0;
        if (why)
            *why = "cursor: not valid for this inbox or conversation";
        return -1;
    }
    return 0;
}
