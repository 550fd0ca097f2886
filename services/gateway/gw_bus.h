/*
 * gw_bus.h - the gateway's connections to the shards: one ZeroMQ DEALER per
 * shard, owned by one bus thread.
 *
 * Any thread hands a request to gw_bus_send(); the bus thread frames it
 * with an id (the packed batch of im_zmq.h, shard.proto: a turn's requests
 * to one shard in one frame), sends it, and pairs the reply by id, so many
 * requests are in flight per shard and replies may come in any order. Each
 * accepted request's callback runs exactly once, on the bus thread: with the
 * reply, or with UNAVAILABLE and why:
 *   - "is not connected": the shard has no connection when the request is
 *     sent (DEALERs are ZMQ_IMMEDIATE, so a dead shard fails fast instead
 *     of queueing; they reconnect every 100..1000 ms);
 *   - "connection lost": the shard's TCP connection dropped (shard killed
 *     or restarted) while the request was in flight. Each DEALER has a
 *     zmq_socket_monitor for ZMQ_EVENT_DISCONNECTED, read through a PAIR
 *     that the bus thread polls beside the DEALERs; on the event, replies
 *     already received are delivered and every other pending request of
 *     that shard fails at once, since the lost connection took them along;
 *   - "did not answer within N ms": the timeout, still the only detection
 *     of a shard that is connected but stuck, and of any loss over inproc://
 *     (libzmq reports no disconnects there; `imbox serve` shards live and
 *     die with the gateway's process, so that costs nothing);
 *   - "is unreachable: the gateway is stopping": gw_bus_destroy.
 * A late reply after a failure is dropped.
 *
 * Up: the same monitor reports ZMQ_EVENT_HANDSHAKE_SUCCEEDED (the CURVE
 * handshake with the shard completed, so the peer holds the cluster
 * secret); a shard is up from that event until its next DISCONNECTED
 * (gw_bus_up, readable from any thread; a local shard is always up). The
 * gateway's readiness builds on it (gw_health.c).
 *
 * A known race: the monitor reports asynchronously, so a request sent on a
 * new connection just before the old connection's DISCONNECTED event is
 * read (a reconnect, >= 100 ms, must fit in between) is failed too,
 * spuriously. That is harmless: UNAVAILABLE is retryable, and Send is
 * idempotent by msg_id (a retry of a stored message answers duplicate; it
 * is not stored twice). Likewise a request that the shard executed before
 * the drop is reported UNAVAILABLE; a retry settles it.
 *
 * Hooks (optional, gw_bus_hooks): the gateway's routing id is set on every
 * DEALER, so a shard knows this gateway across reconnects; an unasked
 * message from a shard (id 0: a Notice of shard.proto) goes to `notice`;
 * `tick` runs every tick_ms; `disconnected` runs when a shard's connection
 * drops (after its requests were failed). All run on the bus thread, may
 * call gw_bus_send, and must not block.
 *
 * Wake-up: other threads push onto a mutex-protected queue and write an
 * eventfd that the bus thread polls beside its sockets, only when the queue
 * was empty (the bus takes the whole queue per wake-up), so an idle bus
 * sleeps in zmq_poll (no busy polling), a request costs no timer tick, and
 * a burst costs one wake-up.
 *
 * Local shards (im_local.h; `imbox serve`): a shard given as local has no
 * DEALER: the bus thread hands it the same request bytes, and after taking
 * its queue runs the local shards (each turn's writes are one group commit:
 * on the bus thread when they are few, else on the shard's committer,
 * whose wake-up brings the bus back to answer them) and pairs their replies
 * like a DEALER's, by id. Their notices go to hooks.notice. The thread
 * hand-offs of a lone Send in serve are then two: completion-queue thread
 * to bus thread, and the answer's completion back. A local shard never
 * disconnects; the timeout still applies.
 */
#ifndef IMBOX_GW_BUS_H
#define IMBOX_GW_BUS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "im_auth.h"
#include "im_local.h"

typedef struct gw_bus gw_bus;

/* status: 0 with the reply body (valid only during the call), or a gRPC
 * status code (UNAVAILABLE) with why. */
typedef void (*gw_bus_fn)(void *arg, int status, const char *why, const uint8_t *reply,
                          size_t len);

typedef struct gw_bus_hooks {
    const uint8_t *id;  /* routing id of every DEALER (1..255 bytes, first
                           byte not 0), or NULL for ZeroMQ's own */
    size_t id_len;
    void (*notice)(void *arg, int shard, const uint8_t *body, size_t len);
    void (*tick)(void *arg);
    int tick_ms;        /* > 0 with tick */
    void (*disconnected)(void *arg, int shard);
    void *arg;
} gw_bus_hooks;

/* Connects to endpoints[0..n-1] (shard i at endpoints[i]), or drives
 * shard i in process when local is not NULL and local[i].obj is set (then
 * endpoints[i] is ignored and the shard is attached now); hooks may be NULL
 * (it is copied, id included). Every DEALER is a CURVE client with the
 * keys derived from the cluster secret (im_zmq.h): a shard that does not
 * hold the same secret never completes a handshake, so its requests fail
 * "is not connected". NULL on error. */
gw_bus *gw_bus_new(void *zctx, char *const *endpoints, const im_local_shard *local, int n,
                   const im_secret *secret, int timeout_ms, const gw_bus_hooks *hooks,
                   char *err, size_t errlen);

/* Queues body (malloc'ed; the bus takes it and frees it) for shard. Returns
 * 0 (fn will be called once) or -1 when the bus is closing (fn is never
 * called; body is freed). */
int gw_bus_send(gw_bus *b, int shard, uint8_t *body, size_t len, gw_bus_fn fn, void *arg);

/* Whether shard is up (see Up above). Any thread; a snapshot. */
bool gw_bus_up(gw_bus *b, int shard);

/* Fails what is pending with UNAVAILABLE, stops the thread, frees *b. */
void gw_bus_destroy(gw_bus **b);

#endif
