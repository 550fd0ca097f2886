/*
 * fuzz_sendreq.c - libFuzzer target of a SendRequest as the gateway reads
 * it (gw__send): first the in-place reader (gw_sendreq_read), then the
 * generic decode (gw__decode's steps: im_pb_scan_wire, groups dropped,
 * pb_decode with gw__send's callbacks and limits).
 * Invariants:
 *   - differential: whenever gw_sendreq_read accepts, the generic decode
 *     accepts the same bytes, with the same msg_id, receivers, msg_type and
 *     content, and flags nothing the reader did not (no over-long or
 *     NUL-holding msg_id or receiver, no receiver dropped, content within
 *     its limit) (test_sendreq.c does this on random corruptions; here
 *     libFuzzer steers);
 *   - round trip: a request that the generic decode accepts with nothing
 *     flagged, re-encoded by pb_encode (the encoder's form), is accepted by
 *     gw_sendreq_read with the same fields.
 */
#include <string.h>

#include "fz.h"
#include "gw_call.h"
#include "gw_sendreq.h"
#include "im_wire.h"

#define S_CONTENT_MAX IM_CONTENT_MAX

static const gw_sendreq_limits LIM = {
    .msg_id_max = IM_MSGID_MAX, .uid_max = IM_UID_MAX,
    .receivers_max = IM_RECEIVERS_MAX, .content_max = S_CONTENT_MAX,
};

static gw_send_in s_d;
static char s_rows[IM_RECEIVERS_MAX][IM_UID_MAX + 1];

/* gw__decode's steps with gw__send's callbacks; true when it decodes. */
static bool s_decode(const uint8_t *b, size_t n, gw_send_in *d)
{
    gw__send_in_free(d);
    gw__send_in_init(d, S_CONTENT_MAX);
    const char *why;
    bool oom;
    bool ok = gw__decode_bytes(imbox_v1_SendRequest_fields, &d->q, b, n, &why, &oom);
    FZ_CHECK(!oom);
    return ok;
}

/* Nothing that the checks after decoding would flag beyond the fields. */
static bool s_clean(const gw_send_in *d)
{
    return !d->mid.over && !d->mid.nul && d->u.bad < 0 && !d->u.oom && d->u.n == d->u.total &&
           !d->content.over;
}

/* q (the reader's, its receivers in s_rows) says what d says. */
static void s_check_same(const gw_sendreq *q, const gw_send_in *d)
{
    FZ_CHECK(s_clean(d));
    FZ_CHECK(q->msg_id_len == d->mid.n);
    FZ_CHECK(!q->msg_id_len || memcmp(q->msg_id, d->msg_id, q->msg_id_len) == 0);
    FZ_CHECK(q->nreceivers == d->u.n);
    for (int i = 0; i < d->u.n; i++)
        FZ_CHECK(strcmp(s_rows[i], d->u.v[i]) == 0);
    FZ_CHECK(q->msg_type == d->q.msg_type);
    FZ_CHECK(q->content_len == d->content.n);
    FZ_CHECK(!q->content_len || memcmp(q->content, d->content.p, q->content_len) == 0);
}

static bool s_write_uids(pb_ostream_t *s, const pb_field_t *f, void *const *arg)
{
    const gw_send_in *d = *arg;
    for (int i = 0; i < d->u.n; i++)
        if (!pb_encode_tag_for_field(s, f) ||
            !pb_encode_string(s, (const uint8_t *)d->u.v[i], strlen(d->u.v[i])))
            return false;
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    gw_send_in *d = &s_d;
    gw_sendreq q;
    bool hand = gw_sendreq_read(data, size, &LIM, &q);
    if (hand)
        gw_sendreq_receivers(&q, s_rows[0], sizeof s_rows[0]);
    bool pb = s_decode(data, size, d);
    if (hand) {
        FZ_CHECK(pb);
        s_check_same(&q, d);
    }
    if (!pb || !s_clean(d))
        return 0;
    /* The encoder's form of what the generic decode read: the reader
     * takes it. */
    imbox_v1_SendRequest r = imbox_v1_SendRequest_init_zero;
    im_bytes_out id = {d->msg_id, d->mid.n}, c = {d->content.p, d->content.n};
    r.msg_id.funcs.encode = im_pb_write_bytes;
    r.msg_id.arg = &id;
    r.receiver_uids.funcs.encode = s_write_uids;
    r.receiver_uids.arg = d;
    r.msg_type = d->q.msg_type;
    r.content.funcs.encode = im_pb_write_bytes;
    r.content.arg = &c;
    uint8_t *buf;
    size_t n;
    FZ_CHECK(im_pb_encode(imbox_v1_SendRequest_fields, &r, &buf, &n) == 0);
    FZ_CHECK(gw_sendreq_read(buf, n, &LIM, &q));
    gw_sendreq_receivers(&q, s_rows[0], sizeof s_rows[0]);
    s_check_same(&q, d);
    free(buf);
    return 0;
}
