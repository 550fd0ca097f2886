/*
 * im_local.h - an in-process shard, driven by the thread of its caller.
 *
 * `imbox serve` runs the gateway and its shards in one process. Instead of
 * a shard thread behind a ZeroMQ socket (two thread hand-offs per request,
 * and two more per reply), each shard's engine runs on the gateway's bus
 * thread: the bus hands it the same shard.proto request bytes it would send
 * over ZeroMQ, and the shard answers through a sink with the same reply
 * bytes. One wire format, one request handler, one pairing of replies; no
 * hand-off between the request's decoding and its fsync.
 *
 * The contract between a driver (gw_bus) and a shard (sh_service):
 *   - attach() once, before the first request, from the thread that
 *     creates the driver; the sink stays valid until the driver attaches
 *     a zeroed sink (it is going away) or the shard is stopped;
 *   - request() and run() only on the driving thread, never concurrently;
 *     request() handles one request: a read or a refusal is answered at
 *     once (sink.reply inside the call), a write is queued for run();
 *   - run() ends the driver's turn: it commits the turn's writes as one
 *     group commit (one fsync), on the driving thread when they are few,
 *     else on a committer thread of the shard, so that the driver goes on
 *     with the next turn during the fsync; it answers every write finished
 *     so far (sink.reply, then sink.notice for the gateways holding live
 *     streams of the receivers); and it drops lapsed presence leases, so
 *     the driver calls it at least once a second;
 *   - sink.wake() may be called from any thread (the committer finished a
 *     group commit): the driver calls run() soon after;
 *   - sink.reply and sink.notice run on the driving thread, inside
 *     request() or run(), with bytes valid only during the call.
 */
#ifndef IMBOX_IM_LOCAL_H
#define IMBOX_IM_LOCAL_H

#include <stddef.h>
#include <stdint.h>

typedef struct im_local_sink {
    void (*reply)(void *arg, const uint8_t id[8], const uint8_t *body, size_t len);
    void (*notice)(void *arg, const uint8_t *body, size_t len);
    void (*wake)(void *arg);
    void *arg;
} im_local_sink;

typedef struct im_local_shard {
    void *obj; /* NULL: not a local shard */
    void (*attach)(void *obj, const im_local_sink *sink);
    /* ident: the driver's routing id (it keys presence leases at the shard) */
    void (*request)(void *obj, const uint8_t *ident, size_t ident_len, const uint8_t id[8],
                    const uint8_t *body, size_t len);
    void (*run)(void *obj);
} im_local_shard;

#endif
