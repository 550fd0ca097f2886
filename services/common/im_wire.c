/* im_wire.c - see im_wire.h. */
#include "im_wire.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int im_buf_reserve(im_buf *b, size_t n)
{
    if (b->n + n <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->n + n)
        cap *= 2;
    uint8_t *q = realloc(b->p, cap);
    if (!q)
        return -1;
    b->p = q;
    b->cap = cap;
    return 0;
}

int im_buf_append(im_buf *b, const void *p, size_t n)
{
    if (im_buf_reserve(b, n))
        return -1;
    if (n)
        memcpy(b->p + b->n, p, n);
    b->n += n;
    return 0;
}

void im_buf_free(im_buf *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

int im_pb_append_submsg(im_buf *b, uint32_t tag, const pb_msgdesc_t *fields, const void *msg)
{
    size_t size;
    if (!pb_get_encoded_size(&size, fields, msg))
        return -1;
    uint8_t head[16];
    pb_ostream_t hs = pb_ostream_from_buffer(head, sizeof head);
    if (!pb_encode_tag(&hs, PB_WT_STRING, tag) || !pb_encode_varint(&hs, size))
        return -1;
    if (im_buf_append(b, head, hs.bytes_written) || im_buf_reserve(b, size))
        return -1;
    size_t at = b->n;
    pb_ostream_t s = pb_ostream_from_buffer(b->p + at, size);
    if (!pb_encode(&s, fields, msg) || s.bytes_written != size)
        return -1;
    b->n = at + size;
    return 0;
}

int im_pb_append_encoded(uint8_t **buf, size_t *len, const pb_msgdesc_t *fields,
                         const void *msg)
{
    size_t size;
    if (!pb_get_encoded_size(&size, fields, msg))
        return -1;
    uint8_t *p = realloc(*buf, *len + size + 1); /* + 1: never realloc(NULL, 0) */
    if (!p)
        return -1;
    *buf = p;
    pb_ostream_t s = pb_ostream_from_buffer(p + *len, size);
    if (!pb_encode(&s, fields, msg) || s.bytes_written != size)
        return -1;
    *len += size;
    return 0;
}

int im_pb_encode(const pb_msgdesc_t *fields, const void *msg, uint8_t **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    uint8_t one[IM_PB_ONE_PASS];
    pb_ostream_t s = pb_ostream_from_buffer(one, sizeof one);
    if (pb_encode(&s, fields, msg)) {
        uint8_t *p = malloc(s.bytes_written + 1); /* + 1: never malloc(0) */
        if (!p)
            return -1;
        memcpy(p, one, s.bytes_written);
        *out = p;
        *len = s.bytes_written;
        return 0;
    }
    /* Too big for one pass (or it fails: the sizing pass fails too). */
    return im_pb_encode_sized(fields, msg, out, len);
}

int im_pb_encode_sized(const pb_msgdesc_t *fields, const void *msg, uint8_t **out,
                       size_t *len)
{
    *out = NULL;
    *len = 0;
    if (im_pb_append_encoded(out, len, fields, msg)) {
        free(*out);
        *out = NULL;
        return -1;
    }
    return 0;
}

void im_pb_out_bytes(im_pb_out *o, const void *p, size_t n)
{
    if (!o->ok || (size_t)(o->end - o->p) < n) {
        o->ok = false;
        return;
    }
    if (n)
        memcpy(o->p, p, n);
    o->p += n;
}

void im_pb_out_len(im_pb_out *o, uint32_t field, const void *p, size_t n)
{
    im_pb_out_head(o, field, n);
    im_pb_out_bytes(o, p, n);
}

void im_pb_out_len3(im_pb_out *o, uint32_t field, const void *p, size_t n)
{
    if (n)
        im_pb_out_len(o, field, p, n);
}

bool im_pb_write_bytes(pb_ostream_t *s, const pb_field_t *f, void *const *arg)
{
    const im_bytes_out *o = *arg;
    if (!o)
        return true;
    return pb_encode_tag_for_field(s, f) && pb_encode_string(s, o->p, o->n);
}

bool im_pb_read_bytes(pb_istream_t *s, const pb_field_t *f, void **arg)
{
    (void)f;
    im_bytes_in *in = *arg;
    if (!in || in->p || in->over)
        PB_RETURN_ERROR(s, "bytes field repeated");
    if (s->bytes_left > in->max) {
        in->over = s->bytes_left;
        return pb_read(s, NULL, s->bytes_left);
    }
    in->n = s->bytes_left;
    in->p = malloc(in->n ? in->n : 1);
    if (!in->p)
        PB_RETURN_ERROR(s, "out of memory");
    return pb_read(s, in->p, in->n);
}

bool im_pb_read_str(pb_istream_t *s, const pb_field_t *f, void **arg)
{
    (void)f;
    im_str_in *in = *arg;
    size_t n = s->bytes_left;
    in->n = 0;
    in->over = 0;
    in->nul = false;
    in->p[0] = 0;
    if (n + 1 > in->cap) {
        in->over = n;
        return pb_read(s, NULL, n);
    }
    if (!pb_read(s, (pb_byte_t *)in->p, n))
        return false;
    in->p[n] = 0;
    in->n = n;
    in->nul = memchr(in->p, 0, n) != NULL;
    return true;
}

int im_str_check(const im_str_in *in, const char *field, size_t max, bool utf8, char *msg,
                 size_t cap)
{
    if (in->over || in->n > max)
        return snprintf(msg, cap, "%s: %zu bytes, at most %zu", field,
                        in->over ? in->over : in->n, max), -1;
    if (in->nul)
        return snprintf(msg, cap, "%s: contains a NUL byte", field), -1;
    if (utf8 && !im_utf8_valid(in->p, in->n))
        return snprintf(msg, cap, "%s: not valid UTF-8", field), -1;
    return 0;
}

/* See im_wire.h. Iterative, with the field numbers of the open groups on
 * a stack of IM_PB_GROUP_DEPTH (protobuf bounds nesting too). */
bool im_pb_skip_group(pb_istream_t *s, uint32_t tag)
{
    uint32_t open[IM_PB_GROUP_DEPTH];
    int depth = 0;
    open[depth++] = tag;
    while (depth) {
        pb_wire_type_t wt;
        uint32_t t;
        bool eof;
        if (!pb_decode_tag(s, &wt, &t, &eof))
            PB_RETURN_ERROR(s, "group not ended");
        if (t == 0)
            PB_RETURN_ERROR(s, "field number 0");
        if (wt == IM_PB_WT_END_GROUP) {
            if (t != open[depth - 1])
                PB_RETURN_ERROR(s, "group ended by another field number");
            depth--;
        } else if (wt == IM_PB_WT_START_GROUP) {
            if (depth == IM_PB_GROUP_DEPTH)
                PB_RETURN_ERROR(s, "groups nested too deep");
            open[depth++] = t;
        } else if (!pb_skip_field(s, wt)) {
            return false;
        }
    }
    return true;
}

bool im_pb_scan_wire(const pb_msgdesc_t *fields, const uint8_t *buf, size_t len,
                     bool *groups, const char **why)
{
    pb_istream_t s = pb_istream_from_buffer(buf, len);
    pb_field_iter_t it;
    bool have = pb_field_iter_begin_const(&it, fields, NULL);
    *groups = false;
    while (s.bytes_left) {
        pb_wire_type_t wt;
        uint32_t tag;
        bool eof;
        if (!pb_decode_tag(&s, &wt, &tag, &eof)) {
            *why = eof ? "truncated field tag" : PB_GET_ERROR(&s);
            return false;
        }
        if (tag == 0) { /* as pb_decode ("zero tag") and protobuf */
            *why = "field number 0";
            return false;
        }
        if (have && pb_field_iter_find(&it, tag)) {
            pb_wire_type_t want;
            switch (PB_LTYPE(it.type)) {
            case PB_LTYPE_BOOL:
            case PB_LTYPE_VARINT:
            case PB_LTYPE_UVARINT:
            case PB_LTYPE_SVARINT:
                want = PB_HTYPE(it.type) == PB_HTYPE_REPEATED && wt == PB_WT_STRING
                           ? PB_WT_STRING /* packed */
                           : PB_WT_VARINT;
                break;
            case PB_LTYPE_FIXED32: want = PB_WT_32BIT; break;
            case PB_LTYPE_FIXED64: want = PB_WT_64BIT; break;
            default: want = PB_WT_STRING; break;
            }
            if (wt != want) {
                *why = "a field has the wrong wire type";
                return false;
            }
        }
        if (wt == IM_PB_WT_START_GROUP) { /* an unknown field's group */
            *groups = true;
            if (!im_pb_skip_group(&s, tag)) {
                *why = PB_GET_ERROR(&s);
                return false;
            }
        } else if (wt == IM_PB_WT_END_GROUP) {
            *why = "end of a group that was not started";
            return false;
        } else if (!pb_skip_field(&s, wt)) {
            *why = PB_GET_ERROR(&s);
            return false;
        }
    }
    return true;
}

bool im_pb_check_wire(const pb_msgdesc_t *fields, const uint8_t *buf, size_t len,
                      const char **why)
{
    bool groups;
    return im_pb_scan_wire(fields, buf, len, &groups, why);
}

size_t im_pb_drop_groups(const uint8_t *buf, size_t len, uint8_t *out)
{
    pb_istream_t s = pb_istream_from_buffer(buf, len);
    size_t n = 0;
    while (s.bytes_left) {
        const uint8_t *at = buf + (len - s.bytes_left);
        pb_wire_type_t wt;
        uint32_t tag;
        bool eof;
        if (!pb_decode_tag(&s, &wt, &tag, &eof))
            break; /* not after a successful im_pb_scan_wire */
        bool ok = wt == IM_PB_WT_START_GROUP ? im_pb_skip_group(&s, tag)
                                              : pb_skip_field(&s, wt);
        if (!ok)
            break;
        const uint8_t *next = buf + (len - s.bytes_left);
        if (wt != IM_PB_WT_START_GROUP) {
            memmove(out + n, at, (size_t)(next - at));
            n += (size_t)(next - at);
        }
    }
    return n;
}

/* See im_wire.h. */
bool im_pb_read_span(const uint8_t **p, const uint8_t *end, const uint8_t **at, size_t *n)
{
    uint64_t v;
    if (!im_pb_read_varint_min(p, end, &v) || v > (uint64_t)(end - *p))
        return false;
    *at = *p;
    *n = (size_t)v;
    *p += v;
    return true;
}

/* See im_wire.h. */
bool im_pb_read_int32_min(const uint8_t **p, const uint8_t *end, int32_t *v)
{
    uint64_t x;
    if (!im_pb_read_varint_min(p, end, &x) || (int64_t)x < INT32_MIN || (int64_t)x > INT32_MAX)
        return false;
    *v = (int32_t)(int64_t)x;
    return true;
}

/* See im_wire.h. */
bool im_pb_read_varint_min(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
    uint64_t x = 0;
    const uint8_t *q = *p;
    for (unsigned shift = 0; q < end && shift < 70; shift += 7) {
        uint8_t b = *q++;
        x |= (uint64_t)(b & 0x7F) << shift;
        if (b & 0x80)
            continue;
        if ((b == 0 && shift) || (shift == 63 && b > 1))
            return false;
        *p = q;
        *v = x;
        return true;
    }
    return false;
}
