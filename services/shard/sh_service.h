/*
 * sh_service.h - a storage shard as a service: a ZeroMQ ROUTER in front of
 * one storage engine (st.h), speaking proto/imbox/internal/v1/shard.proto.
 *
 * One thread owns the ROUTER socket and runs the engine's writes too (the
 * engine's inline mode, st_run): each turn it takes every request waiting
 * in the socket (up to a burst; a message holds many), runs reads at once
 * and sends their answers, queues the writes, executes them as one group
 * commit (one fsync for all the Stores of the turn), and sends the replies
 * (paired to requests by their id frame) and the notices, one message per
 * gateway. A turn of more than a few writes is committed on a committer
 * thread instead, so that the socket thread answers the last batch and
 * takes the next during the fsync; the committer wakes it after each
 * round (an eventfd), and whoever runs the engine holds a mutex. What arrives during an fsync waits in
 * the socket and makes the next turn's batch, as in Redis's event loop: no
 * thread hand-off before or after a write (measured against a writer
 * thread of its own in docs/BENCHMARKS.md). The periodic expiry sweep runs
 * on a sweeper thread of its own, which submits to the engine and wakes
 * this one through an eventfd polled beside the socket.
 *
 * Security: the ROUTER is a CURVE server with keys derived from the
 * cluster secret (im_zmq.h), and the socket thread also answers the ZAP
 * handler's socket (sh_zap.h), which admits only the gateways' key: a peer
 * without the secret never gets a request in. There is no way to turn
 * this off.
 *
 * Local mode (endpoint NULL; `imbox serve`): no socket. The shard is driven
 * through sh_local() (im_local.h) by the thread of its caller, the
 * gateway's bus thread, with the same request and reply bytes. A turn of a
 * few writes commits on that thread (no hand-off: a lone Send's path); a
 * bigger one goes to a committer thread of the shard, so that the driver
 * answers the last batch and takes the next one during the fsync, as a
 * gateway and a shard process do. Whoever runs the engine holds a mutex,
 * so the engine still has one writer at a time.
 */
#ifndef IMBOX_SH_SERVICE_H
#define IMBOX_SH_SERVICE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "im_auth.h"
#include "im_local.h"
#include "st.h"

typedef struct sh_config {
    int index;              /* this shard's index, 0..count-1 */
    int count;              /* shards in the cluster */
    const char *endpoint;   /* ZeroMQ endpoint to bind: tcp://H:P, inproc://N;
                               NULL for local mode */
    const char *dir;        /* the engine's directory (created if missing) */
    st_options st;          /* engine options */
    void *zctx;             /* ZeroMQ context; the caller keeps it alive.
                               With an endpoint the shard binds its ZAP
                               handler in it (sh_zap.h): one such shard
                               per context */
    im_secret secret;       /* the cluster secret: with an endpoint, the
                               CURVE keys come from it (im_zmq.h) */
    int64_t sweep_ms;       /* expiry sweep period (0 = default 10 min) */
} sh_config;

typedef struct sh_service sh_service;

/* Opens the engine, binds, starts the thread. NULL on failure, with err. */
sh_service *sh_start(const sh_config *c, char *err, size_t errlen);

/* The bound endpoint with its port resolved (tcp://127.0.0.1:0 binds a
 * free port), owned by *s; NULL for a local shard. */
const char *sh_endpoint(const sh_service *s);

/* Whether the shard is ready: its engine open and taking writes
 * (st_writable). Any thread, until sh_stop. A gateway asks the same
 * through shard.proto's HealthOp. */
bool sh_writable(const sh_service *s);

/* A local shard's handle for its driver (im_local.h); {NULL} for a shard
 * with an endpoint. */
im_local_shard sh_local(sh_service *s);

/* The shard's index, and its engine, owned by *s until sh_stop(), for what
 * the engine allows from any thread besides the service's own work
 * (st_checkpoint: the admin socket's backups, bk_admin.h; st_stats_get and
 * st_property: metrics, sh_metrics.h). */
int sh_index(const sh_service *s);
st_shard *sh_engine(sh_service *s);

/* Stops the expiry sweeper, waiting for a sweep in progress. A local
 * shard's sweep needs its driver running: call this before stopping the
 * driver. Idempotent; sh_stop does it too. */
void sh_quiesce(sh_service *s);

/* Stops taking requests, answers every request already accepted, closes the
 * engine and the socket, frees *s and sets it to NULL. A local shard is
 * stopped after its driver: what the driver queued and did not run is
 * executed, and its replies are dropped. */
void sh_stop(sh_service **s);

#endif
