/* gw_jwt.c - JWT verification with libjwt, JWKS keys with jansson and
 * OpenSSL (contract and rules in gw_jwt.h). */
#include "gw_jwt.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <jwt.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/sha.h>

#include "gw_tokens.h"
#include "im_auth.h"
#include "im_base.h"

#define S_SECRET_MIN 32
#define S_SECRET_MAX 4096
#define S_SIG_MAX 1024        /* decoded signature: RSA 8192 is 1024 bytes */
#define S_CONF_STR_MAX 256    /* uid claim, issuer, audience */

typedef struct s_key {
    char kid[GW_JWT_KID_MAX + 1];
    jwt_alg_t alg;            /* JWT_ALG_RS256 or JWT_ALG_ES256 */
    char *pem;                /* SubjectPublicKeyInfo, PEM, NUL-terminated */
    size_t pem_len;
} s_key;

typedef struct s_keys {
    s_key *v;
    int n;
} s_keys;

/* What stat says of the JWKS file; a change means "read it again". */
typedef struct s_filesig {
    bool ok;
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime, ctime;
} s_filesig;

struct gw_jwt {
    uint8_t *secret;          /* HS256, or NULL */
    size_t secret_len;
    char *jwks_path;          /* or NULL */
    s_keys keys;
    s_filesig seen;           /* the file state last read (taken or refused) */
    int64_t next_check_ms;    /* monotonic: no stat before then */
    char *uid_claim, *issuer, *audience;
    gw_tokens *cache;         /* NULL out of memory: every JWT is verified */
};

bool gw_jwt_configured(const gw_jwt_config *c)
{
    return (c->hs256_secret_file && *c->hs256_secret_file) ||
           (c->jwks_file && *c->jwks_file);
}

bool gw_jwt_is_jwt(const char *token, size_t len)
{
    return memchr(token, '.', len) != NULL;
}

/* ---------------------------------------------------------------- files */

/* Reads the whole of path (at most max bytes) into a malloc'ed buffer with
 * a NUL after it. 0, or -1 with err. */
static int s_read_file(const char *path, size_t max, char **out, size_t *len, s_filesig *sig,
                       char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) || !S_ISREG(st.st_mode) || (size_t)st.st_size > max) {
        snprintf(err, errlen, "%s: not a regular file of at most %zu bytes", path, max);
        close(fd);
        return -1;
    }
    if (sig)
        *sig = (s_filesig){true, st.st_dev, st.st_ino, st.st_size, st.st_mtim, st.st_ctim};
    char *buf = malloc(max + 1);
    size_t n = 0;
    ssize_t r = 0;
    while (buf && n <= max && (r = read(fd, buf + n, max + 1 - n)) > 0)
        n += (size_t)r;
    close(fd);
    if (!buf || r < 0 || n > max) {
        snprintf(err, errlen, "%s: %s", path,
                 !buf ? "out of memory" : r < 0 ? strerror(errno) : "grew past its limit");
        free(buf);
        return -1;
    }
    buf[n] = 0;
    *out = buf;
    *len = n;
    return 0;
}

static int s_load_secret(gw_jwt *j, const char *path, char *err, size_t errlen)
{
    char *buf;
    size_t n;
    if (s_read_file(path, S_SECRET_MAX + 2, &buf, &n, NULL, err, errlen))
        return -1;
    if (n && buf[n - 1] == '\n')
        n--;
    if (n && buf[n - 1] == '\r')
        n--;
    if (n < S_SECRET_MIN || n > S_SECRET_MAX) {
        snprintf(err, errlen, "%s: the HS256 secret must be %d..%d bytes, not %zu", path,
                 S_SECRET_MIN, S_SECRET_MAX, n);
        OPENSSL_cleanse(buf, n);
        free(buf);
        return -1;
    }
    j->secret = (uint8_t *)buf;
    j->secret_len = n;
    return 0;
}

/* ----------------------------------------------------------------- JWKS */

static void s_keys_free(s_keys *k)
{
    for (int i = 0; i < k->n; i++)
        free(k->v[i].pem);
    free(k->v);
    *k = (s_keys){0};
}

/* base64url member `name` of the JWK o, decoded into out[0..cap). 0, or -1. */
static int s_b64_member(json_t *o, const char *name, uint8_t *out, size_t cap, size_t *n)
{
    json_t *v = json_object_get(o, name);
    if (!json_is_string(v))
        return -1;
    return im_b64url_decode(json_string_value(v), json_string_length(v), out, cap, n);
}

/* The public key pk as PEM into k (malloc'ed). 0, or -1. */
static int s_pem_of(EVP_PKEY *pk, s_key *k)
{
    int rc = -1;
    EVP_PKEY_CTX *cx = EVP_PKEY_CTX_new_from_pkey(NULL, pk, NULL);
    BIO *bio = BIO_new(BIO_s_mem());
    char *p;
    if (cx && bio && EVP_PKEY_public_check(cx) == 1 && PEM_write_bio_PUBKEY(bio, pk) == 1) {
        long n = BIO_get_mem_data(bio, &p);
        if (n > 0 && (k->pem = malloc((size_t)n + 1))) {
            memcpy(k->pem, p, (size_t)n);
            k->pem[n] = 0;
            k->pem_len = (size_t)n;
            rc = 0;
        }
    }
    BIO_free(bio);
    EVP_PKEY_CTX_free(cx);
    return rc;
}

/* An EVP_PKEY of type name ("RSA", "EC") from the parameters of b. */
static EVP_PKEY *s_pkey(const char *name, OSSL_PARAM_BLD *b)
{
    EVP_PKEY *pk = NULL;
    OSSL_PARAM *params = OSSL_PARAM_BLD_to_param(b);
    EVP_PKEY_CTX *cx = EVP_PKEY_CTX_new_from_name(NULL, name, NULL);
    if (!params || !cx || EVP_PKEY_fromdata_init(cx) != 1 ||
        EVP_PKEY_fromdata(cx, &pk, EVP_PKEY_PUBLIC_KEY, params) != 1)
        pk = NULL;
    EVP_PKEY_CTX_free(cx);
    OSSL_PARAM_free(params);
    return pk;
}

static int s_rsa_key(json_t *o, s_key *k)
{
    uint8_t n[1025], e[16];
    size_t nl, el;
    if (s_b64_member(o, "n", n, sizeof n, &nl) || s_b64_member(o, "e", e, sizeof e, &el) ||
        nl == 0 || el == 0)
        return -1;
    BIGNUM *bn = BN_bin2bn(n, (int)nl, NULL), *be = BN_bin2bn(e, (int)el, NULL);
    OSSL_PARAM_BLD *b = OSSL_PARAM_BLD_new();
    EVP_PKEY *pk = NULL;
    if (bn && be && b && BN_num_bits(bn) >= 2048 && BN_num_bits(bn) <= 8192 &&
        OSSL_PARAM_BLD_push_BN(b, OSSL_PKEY_PARAM_RSA_N, bn) &&
        OSSL_PARAM_BLD_push_BN(b, OSSL_PKEY_PARAM_RSA_E, be))
        pk = s_pkey("RSA", b);
    int rc = pk ? s_pem_of(pk, k) : -1;
    EVP_PKEY_free(pk);
    OSSL_PARAM_BLD_free(b);
    BN_free(bn);
    BN_free(be);
    return rc;
}

static int s_ec_key(json_t *o, s_key *k)
{
    uint8_t pt[65], x[33], y[33];
    size_t xl, yl;
    json_t *crv = json_object_get(o, "crv");
    if (!json_is_string(crv) || strcmp(json_string_value(crv), "P-256") != 0 ||
        s_b64_member(o, "x", x, sizeof x, &xl) || s_b64_member(o, "y", y, sizeof y, &yl) ||
        xl != 32 || yl != 32)
        return -1;
    pt[0] = 0x04; /* uncompressed point */
    memcpy(pt + 1, x, 32);
    memcpy(pt + 33, y, 32);
    OSSL_PARAM_BLD *b = OSSL_PARAM_BLD_new();
    EVP_PKEY *pk = NULL;
    if (b && OSSL_PARAM_BLD_push_utf8_string(b, OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0) &&
        OSSL_PARAM_BLD_push_octet_string(b, OSSL_PKEY_PARAM_PUB_KEY, pt, sizeof pt))
        pk = s_pkey("EC", b);
    int rc = pk ? s_pem_of(pk, k) : -1;
    EVP_PKEY_free(pk);
    OSSL_PARAM_BLD_free(b);
    return rc;
}

/* Parses the JWKS text[0..n) into out. 0, or -1 with err (out empty). */
static int s_parse_jwks(const char *text, size_t n, s_keys *out, char *err, size_t errlen)
{
    json_error_t je;
    *out = (s_keys){0};
    json_t *root = json_loadb(text, n, JSON_REJECT_DUPLICATES, &je);
    json_t *arr = root ? json_object_get(root, "keys") : NULL;
    if (!root || !json_is_object(root) || !json_is_array(arr)) {
        snprintf(err, errlen, "not a JSON object with a \"keys\" array%s%.80s",
                 root ? "" : ": ", root ? "" : je.text);
        json_decref(root);
        return -1;
    }
    size_t count = json_array_size(arr);
    if (count > GW_JWT_KEYS_MAX) {
        snprintf(err, errlen, "%zu keys, at most %d", count, GW_JWT_KEYS_MAX);
        json_decref(root);
        return -1;
    }
    out->v = calloc(count ? count : 1, sizeof *out->v);
    if (!out->v) {
        snprintf(err, errlen, "out of memory");
        json_decref(root);
        return -1;
    }
    for (size_t i = 0; i < count; i++) {
        json_t *o = json_array_get(arr, i);
        json_t *kty = json_object_get(o, "kty"), *kid = json_object_get(o, "kid");
        json_t *use = json_object_get(o, "use"), *alg = json_object_get(o, "alg");
        if (!json_is_object(o) || !json_is_string(kty)) {
            snprintf(err, errlen, "keys[%zu]: not an object with a \"kty\"", i);
            goto fail;
        }
        bool rsa = strcmp(json_string_value(kty), "RSA") == 0;
        bool ec = strcmp(json_string_value(kty), "EC") == 0;
        const char *want = rsa ? "RS256" : "ES256";
        if ((!rsa && !ec) || (use && !(json_is_string(use) &&
                                       strcmp(json_string_value(use), "sig") == 0)) ||
            (alg && !(json_is_string(alg) && strcmp(json_string_value(alg), want) == 0)))
            continue; /* not a key for RS256 / ES256 signatures: skipped */
        size_t kl = json_is_string(kid) ? json_string_length(kid) : 0;
        if (kl == 0 || kl > GW_JWT_KID_MAX || strlen(json_string_value(kid)) != kl) {
            snprintf(err, errlen, "keys[%zu]: \"kid\" must be a string of 1..%d bytes", i,
                     GW_JWT_KID_MAX);
            goto fail;
        }
        s_key *k = &out->v[out->n];
        memcpy(k->kid, json_string_value(kid), kl + 1);
        for (int m = 0; m < out->n; m++)
            if (strcmp(out->v[m].kid, k->kid) == 0) {
                snprintf(err, errlen, "keys[%zu]: a kid used twice", i);
                goto fail;
            }
        k->alg = rsa ? JWT_ALG_RS256 : JWT_ALG_ES256;
        if (rsa ? s_rsa_key(o, k) : s_ec_key(o, k)) {
            snprintf(err, errlen, "keys[%zu]: not a valid %s public key", i,
                     rsa ? "RSA (2048..8192 bits)" : "EC P-256");
            goto fail;
        }
        out->n++;
    }
    json_decref(root);
    return 0;
fail:
    json_decref(root);
    s_keys_free(out);
    return -1;
}

/* Reads and parses the JWKS file; on success its keys replace j's. */
static int s_load_jwks(gw_jwt *j, char *err, size_t errlen)
{
    char *text;
    size_t n;
    s_filesig sig = {0};
    s_keys keys;
    int rc = s_read_file(j->jwks_path, GW_JWT_JWKS_MAX, &text, &n, &sig, err, errlen);
    if (sig.ok)
        j->seen = sig; /* taken or refused, this state is not read again */
    if (rc)
        return -1;
    char why[256];
    rc = s_parse_jwks(text, n, &keys, why, sizeof why);
    free(text);
    if (rc) {
        snprintf(err, errlen, "%s: %s", j->jwks_path, why);
        return -1;
    }
    s_keys_free(&j->keys);
    j->keys = keys;
    return 0;
}

static bool s_sig_eq(const s_filesig *a, const s_filesig *b)
{
    return a->ok == b->ok && a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
           a->mtime.tv_sec == b->mtime.tv_sec && a->mtime.tv_nsec == b->mtime.tv_nsec &&
           a->ctime.tv_sec == b->ctime.tv_sec && a->ctime.tv_nsec == b->ctime.tv_nsec;
}

/* At most once per GW_JWT_RELOAD_MS: re-reads the JWKS if its file changed. */
static void s_maybe_reload(gw_jwt *j)
{
    if (!j->jwks_path)
        return;
    int64_t now = im_mono_ms();
    if (now < j->next_check_ms)
        return;
    j->next_check_ms = now + GW_JWT_RELOAD_MS;
    struct stat st;
    s_filesig sig = {0};
    if (stat(j->jwks_path, &st) == 0)
        sig = (s_filesig){true, st.st_dev, st.st_ino, st.st_size, st.st_mtim, st.st_ctim};
    if (s_sig_eq(&sig, &j->seen))
        return;
    if (!sig.ok) {
        j->seen = sig; /* logged once, until the file is back */
        fprintf(stderr, "imbox gateway: JWKS %s: %s; keeping the %d keys in use\n",
                j->jwks_path, strerror(errno), j->keys.n);
        return;
    }
    char err[PATH_MAX + 256];
    if (s_load_jwks(j, err, sizeof err)) {
        fprintf(stderr, "imbox gateway: JWKS refused, keeping the %d keys in use: %s\n",
                j->keys.n, err);
        return;
    }
    /* Keys changed: what the cache holds was verified with the old ones. */
    gw_tokens_free(j->cache);
    j->cache = gw_tokens_new();
    fprintf(stderr, "imbox gateway: JWKS %s: %d keys\n", j->jwks_path, j->keys.n);
}

/* -------------------------------------------------------------- set-up */

static int s_conf_str(const char *v, const char *dflt, char **out, const char *flag, char *err,
                      size_t errlen)
{
    if (!v || !*v) {
        if (!dflt)
            return 0;
        v = dflt;
    }
    if (strlen(v) > S_CONF_STR_MAX) {
        snprintf(err, errlen, "%s: longer than %d bytes", flag, S_CONF_STR_MAX);
        return -1;
    }
    if (!(*out = strdup(v))) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

gw_jwt *gw_jwt_new(const gw_jwt_config *c, char *err, size_t errlen)
{
    gw_jwt *j = calloc(1, sizeof *j);
    if (!j) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if (s_conf_str(c->uid_claim, "sub", &j->uid_claim, "--jwt-uid-claim", err, errlen) ||
        s_conf_str(c->issuer, NULL, &j->issuer, "--jwt-issuer", err, errlen) ||
        s_conf_str(c->audience, NULL, &j->audience, "--jwt-audience", err, errlen))
        goto fail;
    if (c->hs256_secret_file && *c->hs256_secret_file &&
        s_load_secret(j, c->hs256_secret_file, err, errlen))
        goto fail;
    if (c->jwks_file && *c->jwks_file) {
        if (!(j->jwks_path = strdup(c->jwks_file))) {
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
        if (s_load_jwks(j, err, errlen))
            goto fail;
        j->next_check_ms = im_mono_ms() + GW_JWT_RELOAD_MS;
    }
    j->cache = gw_tokens_new();
    return j;
fail:
    gw_jwt_free(&j);
    return NULL;
}

void gw_jwt_free(gw_jwt **jp)
{
    gw_jwt *j = *jp;
    if (!j)
        return;
    if (j->secret)
        OPENSSL_cleanse(j->secret, j->secret_len);
    free(j->secret);
    free(j->jwks_path);
    s_keys_free(&j->keys);
    free(j->uid_claim);
    free(j->issuer);
    free(j->audience);
    gw_tokens_free(j->cache);
    free(j);
    *jp = NULL;
}

/* -------------------------------------------------------------- verify */

/* A strict JSON object from base64url seg[0..n): NULL if it is not one. */
static json_t *s_json_part(const char *seg, size_t n)
{
    uint8_t buf[GW_JWT_PART_MAX];
    size_t len;
    if (im_b64url_decode(seg, n, buf, sizeof buf, &len))
        return NULL;
    json_t *o = json_loadb((const char *)buf, len, JSON_REJECT_DUPLICATES, NULL);
    if (o && !json_is_object(o)) {
        json_decref(o);
        o = NULL;
    }
    return o;
}

/* A NumericDate claim: 0 and *out, -1 when absent or not a finite number
 * in range. */
static int s_date(json_t *payload, const char *name, int64_t *out)
{
    json_t *v = json_object_get(payload, name);
    if (json_is_integer(v)) {
        *out = (int64_t)json_integer_value(v);
        return 0;
    }
    if (json_is_real(v)) {
        double d = json_real_value(v);
        if (isfinite(d) && d > -1e15 && d < 1e15) {
            *out = (int64_t)floor(d);
            return 0;
        }
    }
    return -1;
}

static bool s_str_eq(json_t *v, const char *want)
{
    return json_is_string(v) && json_string_length(v) == strlen(want) &&
           memcmp(json_string_value(v), want, json_string_length(v)) == 0;
}

/* The claims of a verified payload; 0 and uid_out, or -1 with *why. */
static int s_claims(const gw_jwt *j, json_t *p, int64_t now, char uid_out[IM_UID_MAX + 1],
                    int64_t *until, const char **why)
{
    int64_t exp, nbf;
    if (s_date(p, "exp", &exp)) {
        *why = "jwt: no \"exp\" claim (a number) in the payload";
        return -1;
    }
    if (exp > INT64_MAX - GW_JWT_LEEWAY_S || now >= exp + GW_JWT_LEEWAY_S) {
        *why = exp > INT64_MAX - GW_JWT_LEEWAY_S ? "jwt: \"exp\" out of range" : "jwt: expired";
        return -1;
    }
    if (json_object_get(p, "nbf")) {
        if (s_date(p, "nbf", &nbf)) {
            *why = "jwt: \"nbf\" is not a number";
            return -1;
        }
        if (nbf > GW_JWT_LEEWAY_S && now < nbf - GW_JWT_LEEWAY_S) {
            *why = "jwt: not valid yet (\"nbf\")";
            return -1;
        }
    }
    if (j->issuer && !s_str_eq(json_object_get(p, "iss"), j->issuer)) {
        *why = "jwt: \"iss\" is not the configured issuer";
        return -1;
    }
    if (j->audience) {
        json_t *aud = json_object_get(p, "aud");
        bool ok = s_str_eq(aud, j->audience);
        for (size_t i = 0; !ok && json_is_array(aud) && i < json_array_size(aud); i++)
            ok = s_str_eq(json_array_get(aud, i), j->audience);
        if (!ok) {
            *why = "jwt: \"aud\" does not name the configured audience";
            return -1;
        }
    }
    json_t *u = json_object_get(p, j->uid_claim);
    size_t ul = json_is_string(u) ? json_string_length(u) : 0;
    if (!json_is_string(u) || ul > IM_UID_MAX || strlen(json_string_value(u)) != ul ||
        im_uid_check(json_string_value(u), "uid", NULL, 0)) {
        *why = !json_is_string(u) ? "jwt: the uid claim is missing or not a string"
                                  : "jwt: the uid claim is not a valid uid";
        return -1;
    }
    memcpy(uid_out, json_string_value(u), ul + 1);
    *until = exp + GW_JWT_LEEWAY_S;
    return 0;
}

/* The key of header h for j: alg, and the key's bytes. 0, or -1 with why. */
static int s_pick_key(const gw_jwt *j, json_t *h, jwt_alg_t *alg, const unsigned char **key,
                      size_t *key_len, const char **why)
{
    json_t *a = json_object_get(h, "alg"), *kid = json_object_get(h, "kid");
    if (json_object_get(h, "crit")) {
        *why = "jwt: a \"crit\" header is not supported";
        return -1;
    }
    if (s_str_eq(a, "HS256")) {
        if (!j->secret) {
            *why = "jwt: HS256 is not accepted here (no HS256 secret configured)";
            return -1;
        }
        *alg = JWT_ALG_HS256;
        *key = j->secret;
        *key_len = j->secret_len;
        return 0;
    }
    if (!s_str_eq(a, "RS256") && !s_str_eq(a, "ES256")) {
        *why = "jwt: \"alg\" must be HS256, RS256 or ES256";
        return -1;
    }
    *alg = s_str_eq(a, "RS256") ? JWT_ALG_RS256 : JWT_ALG_ES256;
    if (!json_is_string(kid)) {
        *why = "jwt: RS256 and ES256 tokens need a \"kid\" header";
        return -1;
    }
    for (int i = 0; i < j->keys.n; i++) {
        const s_key *k = &j->keys.v[i];
        if (s_str_eq(kid, k->kid) && k->alg == *alg) {
            *key = (const unsigned char *)k->pem;
            *key_len = k->pem_len;
            return 0;
        }
    }
    *why = "jwt: no key in the JWKS with this \"kid\" for this \"alg\"";
    return -1;
}

/* The checks of gw_jwt.h on a token not in the cache. */
static int s_verify(gw_jwt *j, const char *token, size_t len, int64_t now,
                    char uid_out[IM_UID_MAX + 1], int64_t *until, const char **why)
{
    const char *d1 = memchr(token, '.', len);
    const char *d2 = d1 ? memchr(d1 + 1, '.', len - (size_t)(d1 + 1 - token)) : NULL;
    const char *end = token + len;
    if (!d1 || !d2 || memchr(d2 + 1, '.', (size_t)(end - d2 - 1)) || d1 == token ||
        d2 == d1 + 1 || d2 + 1 == end) {
        *why = "jwt: not three non-empty parts header.payload.signature";
        return -1;
    }
    size_t hl = (size_t)(d1 - token), pl = (size_t)(d2 - d1 - 1), sl = (size_t)(end - d2 - 1);
    uint8_t sig[S_SIG_MAX];
    size_t n;
    /* Sizes first (base64url is 4 chars per 3 bytes), then strictness. */
    if (hl > GW_JWT_PART_MAX / 3 * 4 + 3 || pl > GW_JWT_PART_MAX / 3 * 4 + 3 ||
        sl > S_SIG_MAX / 3 * 4 + 3 || im_b64url_decode(d2 + 1, sl, sig, sizeof sig, &n)) {
        *why = "jwt: a part is too long or not strict base64url";
        return -1;
    }
    json_t *h = s_json_part(token, hl);
    if (!h) {
        *why = "jwt: the header is not a JSON object (strict base64url, no duplicate names)";
        return -1;
    }
    jwt_alg_t alg;
    const unsigned char *key;
    size_t key_len;
    int rc = s_pick_key(j, h, &alg, &key, &key_len, why);
    json_decref(h);
    if (rc)
        return -1;
    /* libjwt wants a NUL-terminated token. */
    char *copy = malloc(len + 1);
    jwt_t *jwt = NULL;
    if (!copy) {
        *why = "jwt: out of memory";
        return -1;
    }
    memcpy(copy, token, len);
    copy[len] = 0;
    rc = jwt_decode(&jwt, copy, key, (int)key_len);
    free(copy);
    if (rc || !jwt || jwt_get_alg(jwt) != alg) {
        jwt_free(jwt);
        *why = "jwt: bad signature";
        return -1;
    }
    jwt_free(jwt);
    json_t *p = s_json_part(d1 + 1, pl);
    if (!p) {
        *why = "jwt: the payload is not a JSON object (no duplicate names)";
        return -1;
    }
    rc = s_claims(j, p, now, uid_out, until, why);
    json_decref(p);
    return rc;
}

int gw_jwt_verify(gw_jwt *j, const char *token, size_t len, int64_t now_unix_s,
                  char uid_out[IM_UID_MAX + 1], const char **why)
{
    const char *dummy;
    if (!why)
        why = &dummy;
    uid_out[0] = 0;
    if (!j) {
        *why = "jwt: JWTs are not accepted here";
        return -1;
    }
    if (len > GW_JWT_LEN_MAX) {
        *why = "jwt: too long";
        return -1;
    }
    s_maybe_reload(j);
    uint8_t digest[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)token, len, digest);
    if (j->cache && gw_tokens_get(j->cache, (const char *)digest, sizeof digest, now_unix_s,
                                  uid_out) == 0)
        return 0;
    int64_t until;
    if (s_verify(j, token, len, now_unix_s, uid_out, &until, why)) {
        uid_out[0] = 0;
        return -1;
    }
    if (j->cache)
        gw_tokens_put(j->cache, (const char *)digest, sizeof digest, until, uid_out);
    return 0;
}
