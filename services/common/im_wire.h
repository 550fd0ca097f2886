/*
 * im_wire.h - nanopb glue shared by the services: growable byte buffers,
 * encoding to malloc'ed memory, the helpers of the hand encoders (a Send's
 * messages), bounded callbacks for bytes and string fields, and wire-type
 * checks of what a client sent. Status codes are im_base.h's.
 *
 * Threads: no shared state; every function is safe from any thread.
 */
#ifndef IMBOX_IM_WIRE_H
#define IMBOX_IM_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <pb.h>
#include <pb_decode.h>
#include <pb_common.h>
#include <pb_encode.h>

#include "im_base.h"

/* A growable buffer; zero-initialise, free with im_buf_free. */
typedef struct im_buf {
    uint8_t *p;
    size_t n, cap;
} im_buf;

int im_buf_append(im_buf *b, const void *p, size_t n); /* 0 or -1 (ENOMEM) */
int im_buf_reserve(im_buf *b, size_t n); /* room for n more bytes: 0 or -1 */
void im_buf_free(im_buf *b);

/*
 * Appends field `tag` holding the submessage `msg` (length-delimited) to b,
 * so that a page of entries can be built once and forwarded as raw bytes.
 */
int im_pb_append_submsg(im_buf *b, uint32_t tag, const pb_msgdesc_t *fields, const void *msg);

/*
 * Encodes msg into *out (malloc'ed, exact size plus one byte, caller frees).
 * A message of at most IM_PB_ONE_PASS bytes is encoded once (into the
 * stack); a larger one is sized first, then encoded, so its callbacks run
 * three times: they must give the same bytes each time.
 */
#define IM_PB_ONE_PASS 2048
int im_pb_encode(const pb_msgdesc_t *fields, const void *msg, uint8_t **out, size_t *len);

/* im_pb_encode without the one-pass try, for a message the caller knows
 * to be larger than IM_PB_ONE_PASS (a page): sized, then encoded. */
int im_pb_encode_sized(const pb_msgdesc_t *fields, const void *msg, uint8_t **out,
                       size_t *len);

/*
 * Appends msg's encoding to *buf (malloc'ed, *len bytes; NULL and 0 for
 * none), grown with realloc: protobuf fields may be concatenated, so
 * pre-encoded repeated-field entries followed by the rest of a message are
 * a valid message, in one buffer without copying the entries. Returns 0
 * (*buf and *len updated), or -1 with *buf still the caller's (maybe
 * moved, its first *len bytes intact).
 */
int im_pb_append_encoded(uint8_t **buf, size_t *len, const pb_msgdesc_t *fields,
                         const void *msg);

/*
 * Hand encoding of the hot messages (a Send's), byte for byte what
 * pb_encode makes of the same struct: the size of each field first, then
 * its writer into a buffer of that total size (im_pb_out: a write past the
 * end fails, never overflows; the caller checks ok and that the buffer is
 * full). proto3 leaves a singular field out when it is zero or empty (the
 * *3 forms do that); a callback field, a repeated entry or a submessage
 * that is set is always written. Signed integers (int32, int64) go in as
 * (uint64_t)(int64_t)v: nanopb sign-extends them. Field numbers < 2^28.
 */
static inline size_t im_pb_varint_len(uint64_t v)
{
    size_t n = 1;
    for (; v >= 0x80; v >>= 7)
        n++;
    return n;
}

/* A length-delimited field of n bytes: key, length, bytes. */
static inline size_t im_pb_len_size(uint32_t field, size_t n)
{
    return im_pb_varint_len((uint64_t)field << 3) + im_pb_varint_len(n) + n;
}

/* A proto3 string or bytes field: nothing when empty. */
static inline size_t im_pb_len_size3(uint32_t field, size_t n)
{
    return n ? im_pb_len_size(field, n) : 0;
}

/* A proto3 varint field (int32, int64, uint64, bool): nothing when 0. */
static inline size_t im_pb_varint_size3(uint32_t field, uint64_t v)
{
    return v ? im_pb_varint_len((uint64_t)field << 3) + im_pb_varint_len(v) : 0;
}

typedef struct im_pb_out {
    uint8_t *p, *end; /* next byte, end of the buffer */
    bool ok;          /* false once a write did not fit: later ones do nothing */
} im_pb_out;

static inline im_pb_out im_pb_out_of(uint8_t *buf, size_t n)
{
    return (im_pb_out){buf, buf + n, true};
}

/* Whether o holds exactly what it was sized for: every write fit, none is
 * missing. */
static inline bool im_pb_out_full(const im_pb_out *o)
{
    return o->ok && o->p == o->end;
}

static inline void im_pb_out_varint(im_pb_out *o, uint64_t v)
{
    if (!o->ok || (size_t)(o->end - o->p) < im_pb_varint_len(v)) {
        o->ok = false;
        return;
    }
    for (; v >= 0x80; v >>= 7)
        *o->p++ = (uint8_t)(v | 0x80);
    *o->p++ = (uint8_t)v;
}

/* The key and length of a length-delimited field whose n bytes come next
 * (a submessage's fields, or im_pb_out_bytes). */
static inline void im_pb_out_head(im_pb_out *o, uint32_t field, size_t n)
{
    im_pb_out_varint(o, (uint64_t)field << 3 | PB_WT_STRING);
    im_pb_out_varint(o, n);
}

/* n raw bytes (p may be NULL when n is 0). */
void im_pb_out_bytes(im_pb_out *o, const void *p, size_t n);

/* A length-delimited field, always; its proto3 form, not when empty. */
void im_pb_out_len(im_pb_out *o, uint32_t field, const void *p, size_t n);
void im_pb_out_len3(im_pb_out *o, uint32_t field, const void *p, size_t n);

/* A proto3 varint field: not when 0. */
static inline void im_pb_out_varint3(im_pb_out *o, uint32_t field, uint64_t v)
{
    if (!v)
        return;
    im_pb_out_varint(o, (uint64_t)field << 3 | PB_WT_VARINT);
    im_pb_out_varint(o, v);
}

/* The hand readers' side (im_store_op, im_store_reply): reads at *p
 * (before end) a varint in the minimal form an encoder writes: at most 10
 * bytes, no superfluous zero byte, nothing past 64 bits. Advances *p and
 * returns true, or returns false (then the caller hands the buffer to
 * pb_decode, which is the reference). */
bool im_pb_read_varint_min(const uint8_t **p, const uint8_t *end, uint64_t *v);

/* Reads at *p a length in that minimal form and checks that many bytes
 * follow before end: *at is their start, *n their count, *p moves past
 * them. false as above. */
bool im_pb_read_span(const uint8_t **p, const uint8_t *end, const uint8_t **at, size_t *n);

/* Reads at *p an int32 field's value in the form an encoder writes: a
 * minimal varint of the int32 sign-extended to 64 bits (nanopb truncates a
 * wider one: declined). false as above. */
bool im_pb_read_int32_min(const uint8_t **p, const uint8_t *end, int32_t *v);

/* The hand readers' field order: one-byte keys ascending, each once,
 * except `repeated`, whose entries come one after another. Checks key
 * against the one before (*last, 0 at the start) and makes it *last. */
static inline bool im_pb_key_in_order(uint8_t key, uint8_t *last, uint8_t repeated)
{
    if (key < *last || (key == *last && key != repeated))
        return false;
    *last = key;
    return true;
}

/* Encode side of a bytes/string FT_CALLBACK field: set
 * cb.funcs.encode = im_pb_write_bytes, cb.arg = an im_bytes_out. */
typedef struct im_bytes_out {
    const void *p;
    size_t n;
} im_bytes_out;
bool im_pb_write_bytes(pb_ostream_t *s, const pb_field_t *f, void *const *arg);

/* Decode side: cb.funcs.decode = im_pb_read_bytes, cb.arg = an im_bytes_in
 * with max set; the field's bytes land in malloc'ed p (caller frees). A field
 * longer than max is skipped and its size recorded in `over` (p stays NULL),
 * so the caller can name the field and its size in the error. A field seen
 * twice fails the decode. */
typedef struct im_bytes_in {
    uint8_t *p;
    size_t n;
    size_t max;
    size_t over;
} im_bytes_in;
bool im_pb_read_bytes(pb_istream_t *s, const pb_field_t *f, void **arg);

/* Decode side of a string FT_CALLBACK field from a client: cb.funcs.decode
 * = im_pb_read_str, cb.arg = an im_str_in with p/cap set (cap counts the
 * NUL). The string lands NUL-terminated in p; a longer one is skipped and
 * its size recorded in `over`; `nul` flags an embedded 0x00. Check both
 * before using p (im_str_check). A field seen twice keeps the last value,
 * as protobuf says. */
typedef struct im_str_in {
    char *p;
    size_t cap;
    size_t n;
    size_t over;
    bool nul;
} im_str_in;
bool im_pb_read_str(pb_istream_t *s, const pb_field_t *f, void **arg);

/*
 * Checks that every top-level field of the encoded message buf[0..len) that
 * `fields` knows has the wire type of its declared type (nanopb checks this
 * for static fields but hands a callback field's bytes over whatever wire
 * type arrived). Unknown fields are allowed, as protobuf says, also as
 * groups (wire types 3 and 4) when the group is well formed: nested at most
 * IM_PB_GROUP_DEPTH deep, each ended by its own field number. nanopb
 * cannot skip a group: *groups says whether the message has one, to be
 * taken out by im_pb_drop_groups before pb_decode. Returns true, or false
 * with *why set.
 */
#define IM_PB_WT_START_GROUP ((pb_wire_type_t)3)
#define IM_PB_WT_END_GROUP ((pb_wire_type_t)4)
#define IM_PB_GROUP_DEPTH 64
bool im_pb_scan_wire(const pb_msgdesc_t *fields, const uint8_t *buf, size_t len,
                     bool *groups, const char **why);

/* im_pb_scan_wire without the groups flag. */
bool im_pb_check_wire(const pb_msgdesc_t *fields, const uint8_t *buf, size_t len,
                      const char **why);

/* Skips the rest of a group whose start tag (field number `tag`) was just
 * read from s, nested groups included. false (stream error set) when it is
 * not well formed. */
bool im_pb_skip_group(pb_istream_t *s, uint32_t tag);

/* Copies buf[0..len), a message that passed im_pb_scan_wire, to out (room
 * for len bytes) without its top-level groups. Returns the bytes written. */
size_t im_pb_drop_groups(const uint8_t *buf, size_t len, uint8_t *out);

/* Formats into msg (cap bytes) why the string `field` is unusable: too long
 * (over max bytes), a NUL byte, or (when utf8) not UTF-8. Returns 0 when it
 * is fine. */
int im_str_check(const im_str_in *in, const char *field, size_t max, bool utf8, char *msg,
                 size_t cap);

#endif
