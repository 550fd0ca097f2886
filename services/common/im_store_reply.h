/*
 * im_store_reply.h - the reply to a StoreOp (shard.proto ShardReply holding
 * nothing but results), encoded and decoded by hand: it is on every Send's
 * path, on the shard's thread and on the gateway's bus thread, where nanopb's
 * generic walk of ShardReply (11 fields, a submessage sized before it is
 * written, the whole sized before it is written) cost more than the rest of
 * the reply's handling.
 *
 * Both are exact stand-ins for nanopb: the encoder makes the bytes pb_encode
 * makes of the same struct; the decoder, when it accepts a buffer, leaves
 * the struct as pb_decode does, and it accepts only what the encoder makes
 * (canonical varints, fields in order, nothing else), declining the rest
 * to pb_decode, whose result and errors are the reference.
 *
 * Threads: no state; safe from any thread.
 */
#ifndef IMBOX_IM_STORE_REPLY_H
#define IMBOX_IM_STORE_REPLY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "imbox/internal/v1/shard.pb.h"

/* What pb_decode sets before it reads: every scalar and count of r to its
 * default; not the callbacks, not the arrays past their counts (41 KB:
 * whoever sets a count writes the entries below it in full). */
void im_shard_reply_clear(imbox_internal_v1_ShardReply *r);

/* Whether pb_encode of r writes nothing but r->results: code 0, no error,
 * every other scalar 0, no online or seqs, and `entries_len` (the bytes
 * r's entries callback writes) 0. */
bool im_store_reply_only(const imbox_internal_v1_ShardReply *r, size_t entries_len);

/* Encodes r->results[0..results_count) as a ShardReply into *out (malloc'ed,
 * exact size, caller frees): when im_store_reply_only(r), the bytes
 * pb_encode makes of r. 0, or -1 out of memory (*out NULL). */
int im_store_reply_encode(const imbox_internal_v1_ShardReply *r, uint8_t **out, size_t *len);

/* Decodes buf[0..len) into r when it is a ShardReply of results only in
 * the encoder's form: returns true with r as pb_decode leaves it (its
 * callbacks, which pb_decode keeps, untouched). Returns false for anything
 * else (another field, an unknown one, a non-minimal varint, a value out of
 * its type's range, over 1000 results, truncation); r's fields are then
 * undefined and the caller decodes with pb_decode. */
bool im_store_reply_decode(const uint8_t *buf, size_t len, imbox_internal_v1_ShardReply *r);

#endif
