/* im_store_op.c - see im_store_op.h. */
#include "im_store_op.h"

#include <string.h>

#include "im_wire.h"

/* shard.proto: ShardRequest.store = 1; StoreOp sender = 1, msg_id = 2,
 * msg_type = 3, content = 4, receivers = 5. One-byte keys. */
#define K_STORE 0x0A     /* field 1, length-delimited */
#define K_SENDER 0x0A
#define K_MSG_ID 0x12
#define K_MSG_TYPE 0x18  /* field 3, varint */
#define K_CONTENT 0x22
#define K_RECEIVER 0x2A

static bool s_has_nul(const uint8_t *p, size_t n)
{
    return memchr(p, 0, n) != NULL;
}

bool im_store_op_read(const uint8_t *buf, size_t len, const im_store_op_limits *lim,
                      im_store_op *op, char *recv)
{
    const uint8_t *p = buf, *end = buf + len, *at;
    size_t n;
    memset(op, 0, sizeof *op);
    /* the store field alone, spanning the whole buffer */
    if (len == 0 || *p++ != K_STORE || !im_pb_read_span(&p, end, &at, &n) || p != end)
        return false;
    p = at;
    end = at + n;
    uint8_t last = 0; /* fields once each, ascending; receivers repeat */
    while (p < end) {
        uint8_t key = *p++;
        if (!im_pb_key_in_order(key, &last, K_RECEIVER))
            return false;
        if (key == K_MSG_TYPE) {
            if (!im_pb_read_int32_min(&p, end, &op->msg_type))
                return false;
            continue;
        }
        if (!im_pb_read_span(&p, end, &at, &n))
            return false;
        switch (key) {
        case K_SENDER:
            if (n > lim->sender_max || s_has_nul(at, n))
                return false;
            op->sender = at;
            op->sender_len = n;
            break;
        case K_MSG_ID:
            if (n > lim->msg_id_max || s_has_nul(at, n))
                return false;
            op->msg_id = at;
            op->msg_id_len = n;
            break;
        case K_CONTENT:
            if (n > lim->content_max)
                return false;
            op->content = at;
            op->content_len = n;
            break;
        case K_RECEIVER:
            if (op->nreceivers == lim->receivers_max || n > lim->uid_max || s_has_nul(at, n))
                return false;
            char *dst = recv + (size_t)op->nreceivers++ * (lim->uid_max + 1);
            memcpy(dst, at, n);
            dst[n] = 0;
            break;
        default:
            return false;
        }
    }
    return true;
}
