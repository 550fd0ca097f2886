/*
 * gw_server.h - the gateway: the public gRPC API (imbox.v1.Inbox and
 * grpc.health.v1.Health: Check and Watch, gw_health.c) on the gRPC C core,
 * in front of the shards.
 *
 * Request path. One completion-queue thread accepts calls (registered
 * methods, payload delivered with the call), authenticates the token,
 * decodes and validates the request, and hands it to the bus (gw_bus.h) for
 * the receiver's shard: a multi-receiver Send is split by shard and sent to
 * all of them at once. The bus thread gets the shard replies and answers the
 * call itself (grpc_call_start_batch may be called from any thread), so no
 * thread ever waits for a shard and no cross-thread wake-up of the
 * completion queue is needed. The completion-queue thread frees a call when
 * its batches have completed (a unary call has one: its answer, with the
 * receive-close in it; a stream, its messages and its receive-close). In
 * `imbox serve` the shards run in process, driven by the bus thread
 * (gw_config.local, im_local.h).
 *
 * Threads: gw_start and gw_stop from one controlling thread.
 */
#ifndef IMBOX_GW_SERVER_H
#define IMBOX_GW_SERVER_H

#include <stdbool.h>
#include <stddef.h>

#include "gw_jwt.h"
#include "im_auth.h"
#include "im_local.h"

/* Request limits; 0 = the default, which is also the ceiling the formats
 * allow (IM_RECEIVERS_MAX, IM_CONTENT_MAX, IM_PAGE_MAX of im_base.h). */

typedef struct gw_limits {
    int max_receivers;        /* 1..IM_RECEIVERS_MAX */
    size_t max_content;       /* 0..IM_CONTENT_MAX */
    unsigned max_page;        /* 1..IM_PAGE_MAX */
} gw_limits;

typedef struct gw_config {
    const char *listen;        /* HOST:PORT */
    char *const *shards;       /* ZeroMQ endpoints, shard i at shards[i] */
    const im_local_shard *local; /* or NULL; shard i runs in process on the
                                  bus thread when local[i].obj is set
                                  (imbox serve; gw_bus.h) */
    int nshards;
    im_secret secret;          /* tokens, cursors, and the CURVE keys of the
                                  shard connections (im_zmq.h) */
    void *zctx;                /* ZeroMQ context; the caller keeps it alive */
    int shard_timeout_ms;      /* 0 = default 5000 */
    gw_limits limits;          /* zero fields = defaults */
    int keepalive_time_ms;     /* ping a client after this long without
                                  activity (0 = default 10000) */
    int keepalive_timeout_ms;  /* drop it when the ping is not answered in
                                  this long (0 = default 10000) */
    int presence_lease_ms;     /* a live stream's lease at its shard,
                                  renewed every third of it (0 = 3000) */
    /* TLS (gw_tls.c): PEM files; NULL or "" = none. Without tls_cert the
     * port is plaintext, refused on an address that is not loopback unless
     * insecure_plaintext. tls_client_ca: mutual TLS, a client certificate
     * signed by one of its CAs is required. */
    const char *tls_cert;
    const char *tls_key;
    const char *tls_client_ca;
    bool insecure_plaintext;
    /* Memory (gw_budget in gw_call.h): 0 = the default */
    int max_streams;           /* concurrent calls per HTTP/2 connection
                                  (default 100) */
    long long memory_quota;    /* bytes gRPC's buffers may take, all
                                  connections together (default 256 MiB) */
    long long reply_budget;    /* bytes of responses sent and not yet taken
                                  by their clients, all calls together
                                  (default 64 MiB): past it a read answers
                                  RESOURCE_EXHAUSTED */
    int max_metadata;          /* bytes of request headers per call
                                  (default 64 KiB) */
    unsigned send_rate;        /* Send tokens a second per sender (gw_rate.h;
                                  0 = no limit) */
    unsigned send_burst;       /* tokens a sender's bucket holds (0 = twice
                                  send_rate) */
    gw_jwt_config jwt;         /* JWTs beside imbox tokens (gw_jwt.h);
                                  zero = imbox tokens only */
} gw_config;

typedef struct gw_server gw_server;

/* Binds and starts serving. NULL on failure with err (port in use, a
 * limit above its ceiling, a TLS file unreadable or not matching, plaintext
 * on a non-loopback address without insecure_plaintext, a JWT secret file
 * or JWKS refused). */
gw_server *gw_start(const gw_config *c, char *err, size_t errlen);

/* Graceful stop: refuses new calls, lets the calls in flight finish (those
 * still running after grace_ms are cancelled), then frees *g. */
void gw_stop(gw_server **g, int grace_ms);

/* The gateway's heap trimmer (im_trim.h: one per process that runs a
 * gateway), for its figures; valid until gw_stop. */
struct im_trim;
const struct im_trim *gw_trimmer(const gw_server *g);

#endif
