/*
 * im_store_op.h - a ShardRequest holding one StoreOp, read in place by
 * hand: it is on every Send's path (the shard's turn thread, which in
 * `imbox serve` is the gateway's bus thread), where nanopb's generic decode
 * of ShardRequest (six optional operations set to their defaults, a field
 * search per field) cost more than the rest of the request's handling.
 *
 * An exact subset of pb_decode: it accepts only the form the gateway writes
 * (gw__store_request: the store field alone, its fields once each in
 * ascending order, receivers last, minimal varints, no NUL byte in any
 * string) within the limits below, and then gives what pb_decode would
 * have decoded. Anything else, including every input pb_decode refuses,
 * is declined: the caller decodes with pb_decode, whose result and error
 * texts stay the reference. Treats every byte as hostile: bounds are
 * checked before any read, nothing is allocated.
 *
 * Threads: no state; safe from any thread.
 */
#ifndef IMBOX_IM_STORE_OP_H
#define IMBOX_IM_STORE_OP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct im_store_op {
    const uint8_t *sender, *msg_id, *content; /* into the buffer; not NUL-ended */
    size_t sender_len, msg_id_len, content_len;
    int32_t msg_type;
    int nreceivers;
} im_store_op;

typedef struct im_store_op_limits {
    size_t sender_max, msg_id_max; /* bytes (the .options max_size - 1) */
    size_t content_max;
    size_t uid_max;                /* bytes of one receiver */
    int receivers_max;
} im_store_op_limits;

/*
 * Reads buf[0..len) into *op and the receivers, NUL-terminated, into
 * recv[0..op->nreceivers) (each recv[i] holds uid_max + 1 bytes: recv is
 * an array of rows of that stride). Returns false, with *op and recv in
 * an undefined state, when the buffer is not in the gateway's form or
 * breaks a limit: then decode it with pb_decode.
 */
bool im_store_op_read(const uint8_t *buf, size_t len, const im_store_op_limits *lim,
                      im_store_op *op, char *recv);

#endif
