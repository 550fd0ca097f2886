/* gw_sendreq.c - see gw_sendreq.h. */
#include "gw_sendreq.h"

#include <string.h>

#include "im_wire.h"

/* imbox.proto: SendRequest msg_id = 1, receiver_uids = 2, msg_type = 3,
 * content = 4. One-byte keys. */
#define K_MSG_ID 0x0A    /* field 1, length-delimited */
#define K_RECEIVER 0x12
#define K_MSG_TYPE 0x18  /* field 3, varint */
#define K_CONTENT 0x22

static bool s_has_nul(const uint8_t *p, size_t n)
{
    return n && memchr(p, 0, n) != NULL;
}

/* One receiver at *p (after its key): a one-byte length (a uid is under
 * 128 bytes, so a minimal varint of its length is one byte), then that
 * many bytes, none NUL. */
static bool s_receiver(const uint8_t **p, const uint8_t *end, size_t uid_max)
{
    const uint8_t *q = *p;
    if (q == end || *q >= 0x80 || *q > uid_max)
        return false;
    size_t n = *q++;
    if (n > (size_t)(end - q) || s_has_nul(q, n))
        return false;
    *p = q + n;
    return true;
}

bool gw_sendreq_read(const uint8_t *buf, size_t len, const gw_sendreq_limits *lim,
                     gw_sendreq *q)
{
    memset(q, 0, sizeof *q);
    if (len == 0)
        return true; /* every field absent: pb_decode's empty message */
    const uint8_t *p = buf, *end = buf + len, *at;
    size_t n;
    uint8_t last = 0; /* fields once each, ascending; receivers repeat */
    while (p < end) {
        uint8_t key = *p++;
        if (!im_pb_key_in_order(key, &last, K_RECEIVER))
            return false;
        switch (key) {
        case K_MSG_ID:
            if (!im_pb_read_span(&p, end, &at, &n) || n > lim->msg_id_max || s_has_nul(at, n))
                return false;
            q->msg_id = at;
            q->msg_id_len = n;
            break;
        case K_RECEIVER:
            if (q->nreceivers == lim->receivers_max)
                return false;
            if (!q->nreceivers)
                q->receivers = p - 1;
            if (!s_receiver(&p, end, lim->uid_max))
                return false;
            q->nreceivers++;
            break;
        case K_MSG_TYPE:
            if (!im_pb_read_int32_min(&p, end, &q->msg_type))
                return false;
            break;
        case K_CONTENT:
            if (!im_pb_read_span(&p, end, &at, &n) || n > lim->content_max)
                return false;
            q->content = at;
            q->content_len = n;
            break;
        default:
            return false; /* unknown field, another wire type, a group, field 0 */
        }
    }
    return true;
}

void gw_sendreq_receivers(const gw_sendreq *q, char *rows, size_t stride)
{
    const uint8_t *p = q->receivers;
    for (int i = 0; i < q->nreceivers; i++) {
        size_t n = p[1]; /* key, one-byte length, bytes: as read above */
        char *dst = rows + (size_t)i * stride;
        memcpy(dst, p + 2, n);
        dst[n] = 0;
        p += 2 + n;
    }
}
