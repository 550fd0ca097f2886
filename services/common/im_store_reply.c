/* im_store_reply.c - see im_store_reply.h. */
#include "im_store_reply.h"

#include <stdlib.h>
#include <string.h>

#include "im_wire.h"

typedef imbox_internal_v1_ShardReply reply_t;
typedef imbox_internal_v1_StoreResult result_t;

#define S_RESULTS_MAX (sizeof((reply_t *)0)->results / sizeof((reply_t *)0)->results[0])

bool im_store_reply_only(const reply_t *r, size_t entries_len)
{
    return r->code == 0 && r->error[0] == 0 && entries_len == 0 && r->count == 0 &&
           r->last_seq == 0 && !r->more && r->deleted == 0 && r->total == 0 &&
           r->online_count == 0 && r->seqs_count == 0;
}

/* ------------------------------------------------------------- encode */

/* The bytes of one StoreResult (its fields, without key and length). */
static size_t s_result_size(const result_t *x)
{
    return im_pb_varint_size3(imbox_internal_v1_StoreResult_code_tag,
                              (uint64_t)(int64_t)x->code) +
           im_pb_varint_size3(imbox_internal_v1_StoreResult_duplicate_tag, x->duplicate) +
           im_pb_varint_size3(imbox_internal_v1_StoreResult_seq_tag, x->seq) +
           im_pb_varint_size3(imbox_internal_v1_StoreResult_send_time_ms_tag,
                              (uint64_t)x->send_time_ms) +
           im_pb_varint_size3(imbox_internal_v1_StoreResult_online_tag, x->online);
}

/* Writes one StoreResult entry of ShardReply.results: key, length, fields. */
static void s_result_write(im_pb_out *o, const result_t *x)
{
    im_pb_out_head(o, imbox_internal_v1_ShardReply_results_tag, s_result_size(x));
    im_pb_out_varint3(o, imbox_internal_v1_StoreResult_code_tag, (uint64_t)(int64_t)x->code);
    im_pb_out_varint3(o, imbox_internal_v1_StoreResult_duplicate_tag, x->duplicate);
    im_pb_out_varint3(o, imbox_internal_v1_StoreResult_seq_tag, x->seq);
    im_pb_out_varint3(o, imbox_internal_v1_StoreResult_send_time_ms_tag,
                      (uint64_t)x->send_time_ms);
    im_pb_out_varint3(o, imbox_internal_v1_StoreResult_online_tag, x->online);
}

int im_store_reply_encode(const reply_t *r, uint8_t **out, size_t *len)
{
    size_t total = 0;
    for (pb_size_t i = 0; i < r->results_count; i++)
        total += im_pb_len_size(imbox_internal_v1_ShardReply_results_tag,
                                s_result_size(&r->results[i]));
    *out = NULL;
    *len = 0;
    uint8_t *p = malloc(total + 1);
    if (!p)
        return -1;
    im_pb_out o = im_pb_out_of(p, total);
    for (pb_size_t i = 0; i < r->results_count; i++)
        s_result_write(&o, &r->results[i]);
    if (!im_pb_out_full(&o)) {
        free(p); /* cannot happen: the sizes above are the writes' */
        return -1;
    }
    *out = p;
    *len = total;
    return 0;
}

/* ------------------------------------------------------------- decode */

/* Decodes one StoreResult from p[0..n): varint fields with one-byte keys
 * in ascending order, each value within its type. */
static bool s_result(const uint8_t *p, size_t n, result_t *x)
{
    const uint8_t *end = p + n;
    unsigned last = 0;
    *x = (result_t){0};
    while (p < end) {
        uint8_t key = *p++;
        unsigned field = key >> 3;
        uint64_t v;
        if ((key & 0x87) != PB_WT_VARINT || field <= last ||
            !im_pb_read_varint_min(&p, end, &v))
            return false;
        last = field;
        switch (field) {
        case imbox_internal_v1_StoreResult_code_tag:
            if ((int64_t)v < INT32_MIN || (int64_t)v > INT32_MAX)
                return false;
            x->code = (int32_t)(int64_t)v;
            break;
        case imbox_internal_v1_StoreResult_duplicate_tag:
            if (v > 1)
                return false;
            x->duplicate = v;
            break;
        case imbox_internal_v1_StoreResult_seq_tag: x->seq = v; break;
        case imbox_internal_v1_StoreResult_send_time_ms_tag: x->send_time_ms = (int64_t)v; break;
        case imbox_internal_v1_StoreResult_online_tag:
            if (v > 1)
                return false;
            x->online = v;
            break;
        default: return false;
        }
    }
    return true;
}

void im_shard_reply_clear(reply_t *r)
{
    r->code = 0;
    memset(r->error, 0, sizeof r->error);
    r->results_count = 0;
    r->count = 0;
    r->last_seq = 0;
    r->more = false;
    r->deleted = 0;
    r->total = 0;
    r->online_count = 0;
    r->seqs_count = 0;
}

bool im_store_reply_decode(const uint8_t *buf, size_t len, reply_t *r)
{
    static const uint8_t key = imbox_internal_v1_ShardReply_results_tag << 3 | PB_WT_STRING;
    const uint8_t *p = buf, *end = buf + len;
    im_shard_reply_clear(r);
    while (p < end) {
        uint64_t n;
        if (*p++ != key || !im_pb_read_varint_min(&p, end, &n) || n > (uint64_t)(end - p) ||
            r->results_count == S_RESULTS_MAX ||
            !s_result(p, (size_t)n, &r->results[r->results_count]))
            return false;
        r->results_count++;
        p += n;
    }
    return true;
}
