/*
 * sh_service.h - a storage shard as a service: a ZeroMQ ROUTER in front of
 * one storage engine (st.h), speaking proto/imbox/internal/v1/shard.proto.
 *
 * One thread owns the ROUTER socket. It decodes each request, refuses uids
 * this shard does not own (FAILED_PRECONDITION), runs reads inline and hands
 * writes to the engine's group-commit writer without waiting: many Store
 * requests in flight become one fsync. The engine's completion callbacks
 * queue the finished request and wake the thread through an eventfd polled
 * beside the socket; the thread then sends the reply (replies leave in
 * completion order, paired to requests by their id frame). The socket
 * thread never waits on the writer: Counts (which purges the inbox's expired
 * messages first) is an engine request like the writes, and the periodic
 * expiry sweep runs on a sweeper thread of its own.
 */
#ifndef IMBOX_SH_SERVICE_H
#define IMBOX_SH_SERVICE_H

#include <stddef.h>
#include <stdint.h>

#include "st.h"

typedef struct sh_config {
    int index;              /* this shard's index, 0..count-1 */
    int count;              /* shards in the cluster */
    const char *endpoint;   /* ZeroMQ endpoint to bind: tcp://H:P, inproc://N */
    const char *dir;        /* the engine's directory (created if missing) */
    st_options st;          /* engine options */
    void *zctx;             /* ZeroMQ context; the caller keeps it alive */
    int64_t sweep_ms;       /* expiry sweep period (0 = default 10 min) */
    bool writer_thread;     /* the engine's own writer thread (default:
                               writes run on the socket thread, st_run) */
} sh_config;

typedef struct sh_service sh_service;

/* Opens the engine, binds, starts the thread. NULL on failure, with err. */
sh_service *sh_start(const sh_config *c, char *err, size_t errlen);

/* Stops taking requests, answers every request already accepted, closes the
 * engine and the socket, frees *s and sets it to NULL. */
void sh_stop(sh_service **s);

#endif
