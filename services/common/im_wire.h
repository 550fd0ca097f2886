/*
 * im_wire.h - nanopb glue shared by the services: growable byte buffers,
 * encoding to malloc'ed memory, bounded callbacks for bytes and string
 * fields, and wire-type checks of what a client sent. Status codes are
 * im_base.h's.
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
void im_buf_free(im_buf *b);

/*
 * Appends field `tag` holding the submessage `msg` (length-delimited) to b,
 * so that a page of entries can be built once and forwarded as raw bytes.
 */
int im_pb_append_submsg(im_buf *b, uint32_t tag, const pb_msgdesc_t *fields, const void *msg);

/*
 * Encodes msg into *out (malloc'ed, caller frees) with `prefix` (may be
 * NULL/0) copied in front of it: protobuf fields may be concatenated, so a
 * pre-encoded repeated field plus the rest of a message is a valid message.
 */
int im_pb_encode(const pb_msgdesc_t *fields, const void *msg, const uint8_t *prefix,
                 size_t prefix_len, uint8_t **out, size_t *len);

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
 * type arrived). Unknown fields are allowed, as protobuf says. Returns true,
 * or false with *why set.
 */
bool im_pb_check_wire(const pb_msgdesc_t *fields, const uint8_t *buf, size_t len,
                      const char **why);

/* Formats into msg (cap bytes) why the string `field` is unusable: too long
 * (over max bytes), a NUL byte, or (when utf8) not UTF-8. Returns 0 when it
 * is fine. */
int im_str_check(const im_str_in *in, const char *field, size_t max, bool utf8, char *msg,
                 size_t cap);

#endif
