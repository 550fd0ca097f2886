/*
 * gw_sendreq.h - an imbox.v1.SendRequest read in place by hand: it is on
 * every Send's path (the completion-queue thread, gw__send), where the
 * generic path (gw__decode: a copy of the payload, im_pb_scan_wire, then
 * pb_decode with a callback per field, the content copied once more) cost
 * more than the rest of the gateway's handling of the request.
 *
 * An exact subset of that path (gw__decode with gw__send's callbacks:
 * im_pb_read_str, gw__read_uid, im_pb_read_bytes): it accepts only the
 * form an encoder writes (nanopb, protobuf's own): msg_id, receiver_uids,
 * msg_type, content, each at most once and in that order, the receivers
 * one after another, minimal varints, msg_type within int32, and nothing
 * the callbacks would flag: no NUL byte in msg_id or a receiver, msg_id at
 * most msg_id_max bytes, each receiver at most uid_max, at most
 * receivers_max of them, content at most content_max. Then it gives what
 * that path would have decoded. Anything else, including every input the
 * generic path refuses, is declined: the caller decodes with gw__decode,
 * whose results and error texts stay the reference. Empty fields are
 * accepted as they come (an empty msg_id or no receiver decode as they
 * would there and fail the same checks after). UTF-8 and the uid rule are
 * not checked here: the checks after decoding do, on either path's output.
 * Treats every byte as hostile: bounds are checked before any read,
 * nothing is allocated.
 *
 * Threads: no state; safe from any thread.
 */
#ifndef IMBOX_GW_SENDREQ_H
#define IMBOX_GW_SENDREQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct gw_sendreq {
    const uint8_t *msg_id, *content; /* into the buffer; not NUL-ended;
                                        NULL when the field is absent */
    size_t msg_id_len, content_len;
    int32_t msg_type;
    int nreceivers;
    const uint8_t *receivers; /* the first receiver's key (nreceivers > 0) */
} gw_sendreq;

typedef struct gw_sendreq_limits {
    size_t msg_id_max;  /* bytes */
    size_t uid_max;     /* bytes of one receiver, < 128 */
    int receivers_max;
    size_t content_max; /* bytes */
} gw_sendreq_limits;

/*
 * Reads buf[0..len) into *q. Returns false, with *q in an undefined state,
 * when the buffer is not in the encoder's form or breaks a limit: then
 * decode it the generic way. The buffer must outlive the use of *q.
 */
bool gw_sendreq_read(const uint8_t *buf, size_t len, const gw_sendreq_limits *lim,
                     gw_sendreq *q);

/*
 * Copies the receivers of an accepted q, NUL-terminated, into rows[0..
 * q->nreceivers) of `stride` bytes each (stride > the limits' uid_max).
 */
void gw_sendreq_receivers(const gw_sendreq *q, char *rows, size_t stride);

#endif
