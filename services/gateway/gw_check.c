/* gw_check.c - request checks: token, decoding, strings,
 * cursors; the hand-off to a shard (see gw_call.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <grpc/byte_buffer_reader.h>

#include "gw_call.h"

/* ----------------------------------------------------------------- auth */

static int64_t s_now_s(void)
{
    return (int64_t)time(NULL);
}

/* Sets c->uid from the authorization metadata, or answers UNAUTHENTICATED. */
int gw__auth(gw_call *c)
{
    static const char bearer[] = "Bearer ";
    const grpc_slice *value = NULL;
    int seen = 0;
    for (size_t i = 0; i < c->md.count; i++)
        if (grpc_slice_str_cmp(c->md.metadata[i].key, "authorization") == 0) {
            value = &c->md.metadata[i].value;
            seen++;
        }
    /* Two headers: which one is meant is anyone's guess (a proxy's and the
     * client's, say), so neither is taken. */
    if (seen > 1) {
        gw__respond(c, IM_UNAUTHENTICATED, "more than one 'authorization' metadata entry",
                    NULL, 0);
        return -1;
    }
    if (!value) {
        gw__respond(c, IM_UNAUTHENTICATED, "missing 'authorization: Bearer <token>' metadata",
                    NULL, 0);
        return -1;
    }
    const char *v = (const char *)GRPC_SLICE_START_PTR(*value);
    size_t n = GRPC_SLICE_LENGTH(*value);
    if (n < sizeof bearer - 1 || memcmp(v, bearer, sizeof bearer - 1) != 0) {
        gw__respond(c, IM_UNAUTHENTICATED, "authorization: expected 'Bearer <token>'", NULL, 0);
        return -1;
    }
    /* The cache is the CQ thread's, the only one that runs gw__auth; made at
     * the first call (NULL out of memory: every token is verified). */
    gw_server *g = c->g;
    if (!g->tokens)
        g->tokens = gw_tokens_new();
    const char *why = "token: invalid";
    const char *tok = v + sizeof bearer - 1;
    size_t len = n - (sizeof bearer - 1);
    /* A "." makes it a JWT: an imbox token (base64url) never holds one
     * (gw_jwt.h), so neither verifier sees the other's tokens. */
    int rc = gw_jwt_is_jwt(tok, len)
                 ? gw_jwt_verify(g->jwt, tok, len, s_now_s(), c->uid, &why)
                 : gw_tokens_verify(g->tokens, &g->c.secret, tok, len, s_now_s(), c->uid, &why);
    if (rc) {
        gw__respond(c, IM_UNAUTHENTICATED, why, NULL, 0);
        return -1;
    }
    return 0;
}

/* Decodes the call's payload into msg; answers INVALID_ARGUMENT on failure. */
int gw__decode(gw_call *c, const pb_msgdesc_t *fields, void *msg, const char *name)
{
    if (!c->payload) {
        gw__respond_errf(c, IM_INVALID_ARGUMENT, "%s: missing request message", name);
        return -1;
    }
    grpc_byte_buffer_reader r;
    if (!grpc_byte_buffer_reader_init(&r, c->payload)) {
        gw__respond_errf(c, IM_INVALID_ARGUMENT, "%s: unreadable request", name);
        return -1;
    }
    grpc_slice s = grpc_byte_buffer_reader_readall(&r);
    grpc_byte_buffer_reader_destroy(&r);
    const char *why;
    bool oom;
    bool ok = gw__decode_bytes(fields, msg, GRPC_SLICE_START_PTR(s), GRPC_SLICE_LENGTH(s), &why,
                               &oom);
    grpc_slice_unref(s);
    if (oom) {
        gw__respond_errf(c, IM_RESOURCE_EXHAUSTED, "%s: out of memory", name);
        return -1;
    }
    if (!ok) {
        gw__respond_errf(c, IM_INVALID_ARGUMENT, "%s does not decode: %s", name, why);
        return -1;
    }
    return 0;
}

bool gw__decode_bytes(const pb_msgdesc_t *fields, void *msg, const uint8_t *buf, size_t len,
                      const char **why, bool *oom)
{
    *why = NULL;
    *oom = false;
    bool groups = false;
    if (!im_pb_scan_wire(fields, buf, len, &groups, why))
        return false;
    uint8_t *copy = NULL; /* the request without its unknown groups */
    if (groups) {
        if (!(copy = malloc(len ? len : 1))) {
            *oom = true;
            *why = "out of memory";
            return false;
        }
        len = im_pb_drop_groups(buf, len, copy);
        buf = copy;
    }
    pb_istream_t is = pb_istream_from_buffer(buf, len);
    bool ok = pb_decode(&is, fields, msg);
    if (!ok)
        *why = PB_GET_ERROR(&is); /* nanopb's texts are literals */
    free(copy);
    return ok;
}

/* Checks a string field decoded by im_pb_read_str; answers on error. */
int gw__str(gw_call *c, const im_str_in *in, const char *field, size_t max, bool utf8)
{
    char msg[160];
    if (im_str_check(in, field, max, utf8, msg, sizeof msg) == 0)
        return 0;
    gw__respond(c, IM_INVALID_ARGUMENT, msg, NULL, 0);
    return -1;
}

#define S_UIDS_FIRST 4 /* room of a uid list at its first uid: most are short */

/* Makes room in u->v for one more uid (u->n < u->max): doubles it, up to
 * max. 0, or -1 with u->oom set. */
static int s_uids_grow(gw_uids *u)
{
    if (u->n < u->cap)
        return 0;
    int cap = u->cap ? 2 * u->cap : S_UIDS_FIRST;
    if (cap > u->max)
        cap = u->max;
    void *v = realloc(u->v, (size_t)cap * sizeof *u->v);
    if (!v) {
        u->oom = true;
        return -1;
    }
    u->v = v;
    u->cap = cap;
    return 0;
}

/* Decode callback of a repeated uid field into the gw_uids at *arg. */
bool gw__read_uid(pb_istream_t *s, const pb_field_t *f, void **arg)
{
    (void)f;
    gw_uids *u = *arg;
    size_t n = s->bytes_left;
    int i = u->total++;
    if (u->n == u->max || n > IM_UID_MAX || s_uids_grow(u)) {
        if (n > IM_UID_MAX && u->bad < 0) {
            u->bad = i;
            u->bad_len = n;
        }
        return pb_read(s, NULL, n);
    }
    char *dst = u->v[u->n++];
    if (!pb_read(s, (uint8_t *)dst, n))
        return false;
    dst[n] = 0;
    if (memchr(dst, 0, n) && u->bad < 0) {
        u->bad = i;
        u->bad_len = n;
    }
    return true;
}

int gw__uids_check(gw_call *c, const gw_uids *u, const char *field, const char *noun, int min,
                   int max)
{
    if (u->oom) {
        gw__respond(c, IM_RESOURCE_EXHAUSTED, "out of memory", NULL, 0);
        return -1;
    }
    if (u->total < min || u->total > max) {
        gw__respond_errf(c, IM_INVALID_ARGUMENT, "%s: %d %s, must be %d..%d", field, u->total,
                         noun, min, max);
        return -1;
    }
    if (u->bad >= 0) {
        gw__respond_errf(c, IM_INVALID_ARGUMENT,
                         u->bad_len > IM_UID_MAX ? "%s[%d]: %zu bytes, longer than %d"
                                                 : "%s[%d]: contains a NUL byte",
                         field, u->bad, u->bad_len, IM_UID_MAX);
        return -1;
    }
    for (int i = 0; i < u->n; i++) {
        if (im_uid_check(u->v[i], field, NULL, 0) == 0)
            continue; /* the usual case: no name to format */
        char name[48], msg[160];
        snprintf(name, sizeof name, "%s[%d]", field, i);
        im_uid_check(u->v[i], name, msg, sizeof msg);
        gw__respond(c, IM_INVALID_ARGUMENT, msg, NULL, 0);
        return -1;
    }
    return 0;
}

void gw__send_body(gw_server *g, int shard, uint8_t *body, size_t len, gw_bus_fn fn,
                   void *arg)
{
    if (gw_bus_send(g->bus, shard, body, len, fn, arg))
        fn(arg, IM_UNAVAILABLE, "gateway is stopping", NULL, 0);
}

void gw__send_req(gw_server *g, int shard, const imbox_internal_v1_ShardRequest *req,
                  gw_bus_fn fn, void *arg)
{
    uint8_t *body;
    size_t len;
    if (im_pb_encode(imbox_internal_v1_ShardRequest_fields, req, &body, &len)) {
        fn(arg, IM_INTERNAL, "shard request does not encode", NULL, 0);
        return;
    }
    gw__send_body(g, shard, body, len, fn, arg);
}

void gw__to_shard(gw_call *c, int shard, gw_bus_fn fn, void *arg)
{
    gw__send_req(c->g, shard, c->g->shard_req, fn, arg);
}

void gw__cursor_init(gw_cursor *k, pb_callback_t *cb)
{
    k->text[0] = 0;
    k->in = (im_str_in){.p = k->text, .cap = sizeof k->text};
    cb->funcs.decode = im_pb_read_str;
    cb->arg = &k->in;
}

/* Checks and parses a decoded cursor into seq and scope; answers on error. */
int gw__cursor(gw_call *c, const gw_cursor *k, uint64_t *seq, char *scope)
{
    const char *why = "cursor: malformed";
    if (gw__str(c, &k->in, "cursor", sizeof k->text - 1, false))
        return -1;
    if (im_cursor_scope(&c->g->c.secret, c->uid, k->text, k->in.n, seq, scope, &why)) {
        gw__respond(c, IM_INVALID_ARGUMENT, why, NULL, 0);
        return -1;
    }
    return 0;
}
