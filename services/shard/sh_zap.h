/*
 * sh_zap.h - the shard's ZAP handler: who may talk to the shard's ROUTER.
 *
 * libzmq asks a ZAP handler (ZeroMQ Authentication Protocol, RFC 27) about
 * every peer that completes a security handshake with a socket that has a
 * ZAP domain; without a handler its CURVE server admits ANY client key,
 * so this handler is what makes the cluster secret necessary (im_zmq.h says
 * how the keys come from it). It admits a peer when, and only when,
 *   - the request is well formed: version "1.0", a request id, domain,
 *     address, routing id, mechanism, credentials (frame counts and sizes
 *     checked; every byte is treated as hostile);
 *   - the domain is IM_ZMQ_ZAP_DOMAIN and the mechanism is "CURVE";
 *   - the credentials are one 32-byte frame equal to the client public key
 *     derived from the secret.
 * Anything else gets status "400" (a request too broken to carry a request
 * id is still answered, with an empty one, since a REP must reply).
 *
 * The wire (RFC 27; the REP socket strips the delimiter):
 *   request  "1.0" | request id | domain | address | routing id |
 *            mechanism | credentials...
 *   reply    "1.0" | request id (echoed) | "200" or "400" | status text |
 *            user id ("gateway" when admitted, else "") | metadata ("")
 *
 * The handler is a REP socket bound to inproc://zeromq.zap.01, the one
 * endpoint libzmq asks, in the context of the socket it protects: one
 * handler per ZeroMQ context. sh_zap_new fails with a clear message when
 * the context has one already, so each shard with an endpoint needs a
 * context of its own (as `imbox shard`, one shard per process, has).
 *
 * The log: a peer can also fail before anything reaches this handler (a
 * NULL or PLAIN greeting, a HELLO sealed for another server key: a gateway
 * with another secret). So the handler also watches the ROUTER with a
 * socket monitor (a PAIR on inproc://imbox-shard-handshakes, also one per
 * context) for every failed handshake (ZMQ_EVENT_HANDSHAKE_FAILED_*: its
 * own refusals arrive there as AUTH), and logs them: at most one line per
 * SH_ZAP_LOG_EVERY_MS, with the count since the last line and the last
 * failure's kind and address, never with key material.
 *
 * Threads: both sockets belong to the shard's socket thread, which polls
 * them (sh_zap_poll) beside its ROUTER and calls sh_zap_serve() with a
 * bound: a storm of handshakes costs it a bounded slice of each turn (the
 * CURVE cryptography itself runs on libzmq's I/O thread), and requests
 * keep their turns.
 */
#ifndef IMBOX_SH_ZAP_H
#define IMBOX_SH_ZAP_H

#include <stddef.h>

#include <zmq.h>

#include "im_zmq.h"

#define SH_ZAP_ENDPOINT "inproc://zeromq.zap.01"
#define SH_ZAP_MONITOR "inproc://imbox-shard-handshakes"
#define SH_ZAP_LOG_EVERY_MS 10000

typedef struct sh_zap sh_zap;

/* Binds the handler in zctx, admitting the Z85 client public key
 * client_public (40 characters); `index` names the shard in log lines.
 * NULL with err on failure (a context that has a handler already, a key
 * that is not Z85). */
sh_zap *sh_zap_new(void *zctx, const char *client_public, int index, char *err,
                   size_t errlen);

/* Starts watching router's handshakes (before it binds). Returns 0, or -1
 * with err. */
int sh_zap_watch(sh_zap *z, void *router, char *err, size_t errlen);

/* Puts the handler and the monitor at entries first and first + 1 of p
 * (im_zmq.h). Returns 0, or -1 with errno. */
int sh_zap_poll(sh_zap *z, im_zpoll *p, int first);

/* Answers up to max waiting requests and reads up to max handshake
 * events, without blocking; returns how many of both it handled. */
int sh_zap_serve(sh_zap *z, int max);

/* Stops watching (before router closes). */
void sh_zap_unwatch(sh_zap *z, void *router);

/* Closes the socket, frees *z, sets it to NULL. NULL is fine. */
void sh_zap_destroy(sh_zap **z);

#endif
