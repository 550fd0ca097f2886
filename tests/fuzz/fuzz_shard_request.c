/*
 * fuzz_shard_request.c - libFuzzer target of a ShardRequest as the shard
 * decodes it (sh_service.c s_handle): first the in-place reader of a Store
 * (im_store_op_read), then nanopb's pb_decode with bounded callbacks for
 * the content and the uid lists, as the shard sets them.
 * Invariants:
 *   - differential: whenever im_store_op_read accepts, pb_decode accepts
 *     the same bytes as a Store and nothing else, with the same sender,
 *     msg_id, msg_type, content and receivers (test_store_op.c does this
 *     on random corruptions; here libFuzzer steers);
 *   - round trip: a Store that pb_decode accepts within the limits (no NUL
 *     in a receiver) re-encoded by pb_encode (the encoder's form, which the
 *     gateway's hand encoder matches byte for byte: test_enc.c) is accepted
 *     by im_store_op_read with the same fields.
 */
#include <string.h>

#include "fz.h"
#include "im_base.h"
#include "im_store_op.h"
#include "im_wire.h"
#include "imbox/internal/v1/shard.pb.h"

typedef imbox_internal_v1_ShardRequest req_t;

#define S_UID_MAX IM_UID_MAX
#define S_RECV_MAX IM_RECEIVERS_MAX

static const im_store_op_limits LIM = {
    .sender_max = sizeof(((req_t *)0)->store.sender) - 1,
    .msg_id_max = sizeof(((req_t *)0)->store.msg_id) - 1,
    .content_max = IM_CONTENT_MAX, .uid_max = S_UID_MAX, .receivers_max = S_RECV_MAX,
};

typedef struct decoded {
    req_t r;
    im_bytes_in content;
    char recv[S_RECV_MAX][S_UID_MAX + 1];
    size_t recv_len[S_RECV_MAX];
    int nrecv;
    bool recv_nul;
    int uids; /* uids of the presence ops and query, counted */
} decoded;

static decoded s_d;
static char s_recv[S_RECV_MAX][S_UID_MAX + 1];

/* The Store's receivers: at most S_RECV_MAX, each at most S_UID_MAX bytes
 * (the shard's s_read_receiver refuses the rest, so does this). */
static bool s_read_receiver(pb_istream_t *s, const pb_field_t *f, void **arg)
{
    (void)f;
    decoded *d = *arg;
    size_t n = s->bytes_left;
    if (d->nrecv == S_RECV_MAX || n > S_UID_MAX)
        PB_RETURN_ERROR(s, "too many receivers or a receiver too long");
    char *dst = d->recv[d->nrecv];
    if (!pb_read(s, (uint8_t *)dst, n))
        return false;
    dst[n] = 0;
    d->recv_nul |= memchr(dst, 0, n) != NULL;
    d->recv_len[d->nrecv++] = n;
    return true;
}

/* A presence op's or query's uid list: read and counted. */
static bool s_read_uid(pb_istream_t *s, const pb_field_t *f, void **arg)
{
    (void)f;
    decoded *d = *arg;
    uint8_t buf[S_UID_MAX];
    size_t n = s->bytes_left;
    if (n > S_UID_MAX)
        PB_RETURN_ERROR(s, "uid too long");
    d->uids++;
    return pb_read(s, buf, n);
}

static bool s_decode(const uint8_t *b, size_t n, decoded *d)
{
    memset(&d->r, 0, sizeof d->r);
    free(d->content.p);
    d->content = (im_bytes_in){.max = IM_CONTENT_MAX};
    d->nrecv = 0;
    d->recv_nul = false;
    d->uids = 0;
    d->r.store.receivers.funcs.decode = s_read_receiver;
    d->r.store.receivers.arg = d;
    d->r.store.content.funcs.decode = im_pb_read_bytes;
    d->r.store.content.arg = &d->content;
    d->r.presence.online.funcs.decode = s_read_uid;
    d->r.presence.online.arg = d;
    d->r.presence.offline.funcs.decode = s_read_uid;
    d->r.presence.offline.arg = d;
    d->r.query.uids.funcs.decode = s_read_uid;
    d->r.query.uids.arg = d;
    pb_istream_t is = pb_istream_from_buffer(b, n);
    return pb_decode(&is, imbox_internal_v1_ShardRequest_fields, &d->r) && !d->content.over;
}

static bool s_only_store(const req_t *r)
{
    return r->has_store && !r->has_read && !r->has_ack && !r->has_counts && !r->has_presence &&
           !r->has_query && !r->has_health;
}

/* op (the hand reader's) says what d (pb_decode's) says. */
static void s_check_same(const im_store_op *op, const decoded *d)
{
    const imbox_internal_v1_StoreOp *s = &d->r.store;
    FZ_CHECK(op->sender_len == strlen(s->sender));
    FZ_CHECK(!op->sender_len || memcmp(op->sender, s->sender, op->sender_len) == 0);
    FZ_CHECK(op->msg_id_len == strlen(s->msg_id));
    FZ_CHECK(!op->msg_id_len || memcmp(op->msg_id, s->msg_id, op->msg_id_len) == 0);
    FZ_CHECK(op->msg_type == s->msg_type);
    FZ_CHECK(op->content_len == d->content.n);
    FZ_CHECK(!op->content_len || memcmp(op->content, d->content.p, op->content_len) == 0);
    FZ_CHECK(op->nreceivers == d->nrecv);
    for (int i = 0; i < d->nrecv; i++)
        FZ_CHECK(strlen(s_recv[i]) == d->recv_len[i] && strcmp(s_recv[i], d->recv[i]) == 0);
}

static bool s_write_recv(pb_ostream_t *s, const pb_field_t *f, void *const *arg)
{
    const decoded *d = *arg;
    for (int i = 0; i < d->nrecv; i++)
        if (!pb_encode_tag_for_field(s, f) ||
            !pb_encode_string(s, (const uint8_t *)d->recv[i], d->recv_len[i]))
            return false;
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    decoded *d = &s_d;
    im_store_op op;
    bool hand = im_store_op_read(data, size, &LIM, &op, s_recv[0]);
    bool pb = s_decode(data, size, d);
    if (hand) {
        FZ_CHECK(pb && s_only_store(&d->r));
        s_check_same(&op, d);
    }
    if (!pb || !s_only_store(&d->r) || d->recv_nul)
        return 0;
    /* The encoder's form of what pb_decode read: the hand reader takes it. */
    req_t r = d->r;
    im_bytes_out c = {d->content.p, d->content.n};
    r.store.content.funcs.encode = im_pb_write_bytes;
    r.store.content.arg = &c;
    r.store.receivers.funcs.encode = s_write_recv;
    r.store.receivers.arg = d;
    uint8_t *buf;
    size_t n;
    FZ_CHECK(im_pb_encode(imbox_internal_v1_ShardRequest_fields, &r, &buf, &n) == 0);
    FZ_CHECK(im_store_op_read(buf, n, &LIM, &op, s_recv[0]));
    s_check_same(&op, d);
    free(buf);
    return 0;
}
