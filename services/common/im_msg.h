/*
 * im_msg.h - an imbox.v1.Message as a repeated entry (a Pull page's, a
 * Subscribe notice's), encoded by hand: the shard writes one per message it
 * reads or pushes, and nanopb's generic walk of Message (a struct of 550
 * bytes filled by copying each string, then sized and encoded field by
 * field) cost it more than reading the message from the engine.
 *
 * An exact stand-in for nanopb: the bytes are those im_pb_append_submsg(b,
 * tag, imbox_v1_Message_fields, &m) makes of the same message, with the
 * strings copied into m as the shard did (cut at the struct's size - 1)
 * and the content set through im_pb_write_bytes (so written even when
 * empty). Checked against it in tests/unit/test_enc.c.
 *
 * Threads: no state; safe from any thread.
 */
#ifndef IMBOX_IM_MSG_H
#define IMBOX_IM_MSG_H

#include <stddef.h>
#include <stdint.h>

#include "im_wire.h"

/* A message to encode; nothing is copied. The strings are NUL-terminated. */
typedef struct im_msg_view {
    const char *msg_id;
    const char *sender_uid;
    const char *receiver_uid;
    int64_t send_time_ms;
    int32_t msg_type;
    const uint8_t *content; /* may be NULL when content_len is 0 */
    size_t content_len;
} im_msg_view;

/* Appends field `tag` holding m (key, length, Message fields) to b.
 * Returns 0, or -1 when out of memory (b is then as it was). */
int im_msg_append(im_buf *b, uint32_t tag, const im_msg_view *m);

#endif
