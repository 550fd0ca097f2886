/*
 * sh_health.h - a shard's health port: a tiny gRPC server (C core) that
 * serves only grpc.health.v1.Health, Check and Watch, for the service ""
 * (`imbox shard --health-listen HOST:PORT`; Kubernetes' gRPC probes).
 *
 * The status is SERVING while ready(arg) says so (the shard's engine is
 * open and takes writes: sh_writable), NOT_SERVING otherwise; Check of any
 * other service answers NOT_FOUND, a Watch of one gets SERVICE_UNKNOWN in
 * its stream. A Watch gets the status at once, then each change (the
 * server looks every SH_HEALTH_POLL_MS), one message in flight at most,
 * the latest status only; it ends when the client cancels or the server
 * stops. Any other method answers UNIMPLEMENTED.
 *
 * The port carries no data and takes no token: plaintext on any address,
 * on purpose (a probe cannot send credentials; docs/PROTOCOL.md). Only
 * this service may bind so. SO_REUSEPORT is off, as on the gateway.
 *
 * Threads: one completion-queue thread of its own; ready() is called on
 * it. sh_health_start and sh_health_stop from one controlling thread,
 * between grpc_init and grpc_shutdown.
 */
#ifndef IMBOX_SH_HEALTH_H
#define IMBOX_SH_HEALTH_H

#include <stdbool.h>
#include <stddef.h>

#define SH_HEALTH_POLL_MS 200 /* how often Watch streams look for a change */

typedef struct sh_health sh_health;

/* Binds listen (HOST:PORT; port 0 picks a free one) and starts the thread.
 * NULL with err (the port in use or invalid, out of memory). */
sh_health *sh_health_start(const char *listen, bool (*ready)(void *arg), void *arg, char *err,
                           size_t errlen);

/* The bound port. */
int sh_health_port(const sh_health *h);

/* Ends every call, stops the thread, frees *h and sets it to NULL.
 * NULL-safe. */
void sh_health_stop(sh_health **h);

#endif
