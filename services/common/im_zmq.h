/*
 * im_zmq.h - ZeroMQ helpers shared by the shard and the gateway: whole
 * messages, and the CURVE keys of the cluster.
 *
 * CURVE (ZMTP 3.0 with the CurveZMQ handshake, RFC 26) secures every
 * gateway-to-shard connection; there is no way to turn it off. The keys
 * are not configured: both sides derive them from the cluster secret
 * (im_auth.h), so whoever holds auth.secret holds them, and nobody else:
 *   server secret key = HMAC-SHA256(secret, "imbox zmq curve server v1")
 *   client secret key = HMAC-SHA256(secret, "imbox zmq curve client v1")
 *   public keys       = zmq_curve_public() of those (Curve25519)
 * The shard is the CURVE server: its ROUTER has the server secret key, and
 * its ZAP handler (sh_zap.h) admits only the client public key. The gateway
 * is the CURVE client: its DEALERs have the client key pair and expect the
 * server public key, so the gateway authenticates the shard too. A peer
 * without the secret fails the handshake and never reaches the socket.
 * inproc:// endpoints (unit tests) carry no mechanism at all: the options
 * are set, and ignored.
 */
#ifndef IMBOX_IM_ZMQ_H
#define IMBOX_IM_ZMQ_H

#include <poll.h>
#include <stdbool.h>

#include <zmq.h>

#include "im_auth.h"
#include "im_wire.h"

/*
 * The batch framing (shard.proto). One ZeroMQ message between a gateway and
 * a shard (after the shard's routing identity frame) carries 1 to
 * IM_ZMQ_BATCH_MAX requests, or replies and notices, each an 8-byte id and a
 * body, in one of two forms:
 *   packed (what this release sends): one frame,
 *     u8 IM_ZMQ_PACKED | { id (8 bytes) | u32 len (little-endian) | body }...
 *   pairs (what releases before it sent): [id][body][id][body]..., every id
 *     frame 8 bytes.
 * A pair costs ZeroMQ two frames, and CURVE encrypts, authenticates and
 * allocates per frame: packed, a turn's batch is one frame each way.
 */
#define IM_ZMQ_BATCH_MAX 256
#define IM_ZMQ_PACKED 1      /* the packed form's first byte (its version) */
#define IM_ZMQ_RECORD_HEAD 12 /* id and length before each packed body */

/*
 * Receives one whole multipart message from sock without blocking for its
 * first frame. The first `max` frames land in parts[] (the caller closes
 * parts[0..min(n,max)-1]); further frames are discarded, but counted.
 * Returns the number of frames, or 0 when no message was waiting.
 */
int im_zmq_recv(void *sock, zmq_msg_t *parts, int max);

/* Closes parts[0..min(n,max)-1] as filled by im_zmq_recv. */
void im_zmq_close(zmq_msg_t *parts, int n, int max);

/* A received batch being read (im_zmq_batch_open, then _next). */
typedef struct im_zmq_batch {
    bool packed;
    int count;                 /* its requests (replies, notices) */
    const zmq_msg_t *parts;    /* pairs: the frames */
    int next, n;               /* pairs: the next id frame; the end */
    const uint8_t *p, *end;    /* packed: the next record; the end */
} im_zmq_batch;

/*
 * Checks frames first..n-1 of a message im_zmq_recv took (n frames in all,
 * the first `max` kept in parts[]): one packed frame of 1..IM_ZMQ_BATCH_MAX
 * whole records and nothing after the last, or 1..IM_ZMQ_BATCH_MAX whole
 * pairs with 8-byte ids, all kept. Returns false for anything else (the
 * message is dropped whole: there is no id to answer to), else true with
 * *b ready to walk it; b reads from parts, which must stay open meanwhile.
 */
bool im_zmq_batch_open(im_zmq_batch *b, const zmq_msg_t *parts, int first, int n, int max);

/* The next entry of an opened batch (id: 8 bytes, unaligned); false after
 * the last. */
bool im_zmq_batch_next(im_zmq_batch *b, const uint8_t **id, const uint8_t **body, size_t *len);

/* A packed message being built (its frame's bytes in b); all zero is
 * empty. */
typedef struct im_zmq_pack {
    im_buf b;
    int count;
} im_zmq_pack;

/* Appends one record (the body is copied). Returns 0, or -1: out of
 * memory, or a body of 4 GiB or more. */
int im_zmq_pack_add(im_zmq_pack *k, const uint8_t id[8], const void *body, size_t len);

/* Makes *m a frame of buf (malloc'ed, n bytes) without a copy: the frame
 * frees it. Returns 0, or -1 (out of memory) with buf freed. Build every
 * frame of a message before sending its first, so that a failure cannot
 * leave a message half sent. */
int im_zmq_msg_take(zmq_msg_t *m, void *buf, size_t n);

/* Moves the packed frame into *m (im_zmq_msg_take): k is empty afterwards
 * either way. Returns 0, or -1 (out of memory: the records are lost). */
int im_zmq_pack_take(im_zmq_pack *k, zmq_msg_t *m);

/* Sends the packed frame alone (im_zmq_pack_take, then zmq_msg_send with
 * flags): k is empty afterwards whether the send worked or not. Returns 0,
 * or -1 with errno (the records are lost). */
int im_zmq_pack_send(im_zmq_pack *k, void *sock, int flags);

/* Frees what k holds (after a failed build). */
void im_zmq_pack_free(im_zmq_pack *k);

/* ----------------------------------------------------------------- poll */

/*
 * poll(2) over plain fds and ZeroMQ sockets, for the loops of the gateway's
 * bus and the shard's socket thread, without zmq_poll's price: zmq_poll
 * asks every socket its ZMQ_EVENTS before it sleeps and again after, and
 * each ask is two system calls inside libzmq (getpid, its fork check, and
 * a poll of the socket's signaler): 25 per turn for a gateway of 3 shards.
 *
 * Here a socket is reported when its ZMQ_FD became readable (libzmq
 * signals it when the socket's state may have changed), unasked: the
 * caller reads it until EAGAIN, and that last read does what an ask would
 * (it takes libzmq's pending commands, which resets the fd). A socket is
 * asked only when the caller marked it dirty: after sending on it (a send
 * may consume the signal of a message that came meanwhile: libzmq's
 * ZMQ_FD contract) or after leaving messages in it (a receive budget
 * spent). Every socket starts dirty. So a reported socket must be read
 * until EAGAIN, or marked dirty; a report may find nothing to read.
 */
typedef struct im_zpoll {
    int n;
    struct pollfd *pfd;
    void **sock;   /* NULL: a plain fd */
    bool *dirty;
    bool *in;      /* after im_zpoll_wait: readable */
} im_zpoll;

/* n entries, all unused (fd -1) until set. Returns 0, or -1 (memory). */
int im_zpoll_init(im_zpoll *p, int n);
void im_zpoll_free(im_zpoll *p);

/* Entry i is the plain fd (POLLIN; -1: unused). */
void im_zpoll_fd(im_zpoll *p, int i, int fd);

/* Entry i is the ZeroMQ socket (its POLLIN), dirty. Returns 0, or -1 with
 * errno (ZMQ_FD refused). */
int im_zpoll_socket(im_zpoll *p, int i, void *sock);

/* Entry i (a socket) must be asked before the next sleep. */
void im_zpoll_dirty(im_zpoll *p, int i);

/* Waits up to timeout_ms (-1: no limit; 0 when a dirty socket has input)
 * and sets p->in[i] for every entry to read (above). Returns how many, or
 * -1 with errno (EINTR is 0). */
int im_zpoll_wait(im_zpoll *p, long timeout_ms);

/* ----------------------------------------------------------------- CURVE */

#define IM_ZMQ_CURVE_SERVER_LABEL "imbox zmq curve server v1"
#define IM_ZMQ_CURVE_CLIENT_LABEL "imbox zmq curve client v1"
/* The ZAP domain of the shard's ROUTER (ZMQ_ZAP_DOMAIN): a ZAP request
 * naming another domain is refused. */
#define IM_ZMQ_ZAP_DOMAIN "imbox-cluster"

/* The cluster's CURVE keys, Z85-encoded (40 characters and a NUL). Secret
 * keys are key material: wipe with im_zmq_curve_wipe(), never log. */
typedef struct im_zmq_curve {
    char server_public[41], server_secret[41];
    char client_public[41], client_secret[41];
} im_zmq_curve;

/*
 * Derives the keys from the secret (above). Returns 0, or -1 with *out
 * wiped and a reason in err: libzmq built without CURVE (zmq_has("curve")
 * is 0), or a libcrypto failure.
 */
int im_zmq_curve_derive(const im_secret *s, im_zmq_curve *out, char *err, size_t errlen);

/* Makes sock (before bind) a CURVE server with the server secret key, in
 * the ZAP domain IM_ZMQ_ZAP_DOMAIN (and ZMQ_ZAP_ENFORCE_DOMAIN where
 * libzmq has it). Returns 0, or -1 with errno. */
int im_zmq_curve_server(void *sock, const im_zmq_curve *k);

/* Makes sock (before connect) a CURVE client with the client key pair,
 * expecting the server public key. Returns 0, or -1 with errno. */
int im_zmq_curve_client(void *sock, const im_zmq_curve *k);

/* Overwrites every key (the secret ones are what matters). */
void im_zmq_curve_wipe(im_zmq_curve *k);

#endif
