/*
 * rpc_client.h - a small synchronous gRPC client for imbox.v1.Inbox.
 *
 * Built on the gRPC C core (1.51) and nanopb, for the `imboxctl` tool and
 * the end-to-end tests. Every unary call is blocking: it creates a call on
 * the client's channel with its own pluck completion queue, runs one batch
 * (send metadata + request + half-close, receive metadata + response +
 * status) and waits for it; the deadline bounds the wait. Subscribe, the one
 * server stream, is an rpc_stream read one Delivery at a time with a bounded
 * wait (see "Subscribe" below). The wire contract is
 * proto/imbox/v1/imbox.proto and docs/PROTOCOL.md.
 *
 * Identity: a client made with a token sends `authorization: Bearer <token>`
 * with every call; with a NULL token it sends no metadata (for tests that
 * check UNAUTHENTICATED, and for the health check).
 *
 * Results: each RPC returns the call's grpc_status_code (GRPC_STATUS_OK = 0)
 * and, when `err` is not NULL, fills it with the same code and the status
 * details (NUL-terminated, truncated to fit). A response that does not
 * decode, or breaks the contract (more receipts than receivers, content over
 * 64 KiB...), is reported as GRPC_STATUS_INTERNAL with details starting with
 * "response:". On any status other than OK the output struct is left empty
 * (zeroed) and needs no free; on OK it is owned by the caller until its
 * *_free function, which also zeroes it (calling it twice is harmless).
 *
 * Bounds: the decoder accepts at most 16 MiB per response or Delivery (gRPC
 * receive limit), 1000 messages per page, 64 KiB of content per message, one
 * receipt per receiver sent, 100,000 senders per Counts answer, 1024 answers
 * per Presence (and exactly one per uid asked), and uses static buffers (from
 * proto/imbox/v1/imbox.options) for every other string. Requests are encoded
 * as given, with no client-side limit, so that the server is the one to
 * judge them.
 *
 * Threads: grpc_init() runs once (pthread_once) on the first rpc_client_new
 * or rpc_health; grpc_shutdown() is never called. A client may be used by
 * several threads at once (each call and each stream has its own completion
 * queue); it must not be destroyed while a call on it is running or a
 * stream made from it is not yet closed.
 *
 * Programmer mistakes (NULL client, NULL output pointer, timeout <= 0 where
 * a deadline is required) are assertions.
 */
#ifndef IMBOX_RPC_CLIENT_H
#define IMBOX_RPC_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <grpc/status.h>

/* Contract bounds the decoder enforces (docs/PROTOCOL.md, Limits). */
#define RPC_PAGE_MAX 1000                   /* messages per Pull page */
#define RPC_CONTENT_MAX 65536               /* bytes of content per message */
#define RPC_CURSOR_CAP 256                  /* bytes of a cursor + NUL, at
                                               least imbox.options' bound */
#define RPC_SENDERS_MAX 100000              /* senders per Counts answer: each
                                               has >= 1 waiting message, and
                                               an inbox holds 100,000 */
#define RPC_RECV_MAX (16 * 1024 * 1024)     /* bytes per response: a full page
                                               is < 4 MiB of content + 1000 x
                                               ~600 bytes of other fields */

typedef struct rpc_client rpc_client;

typedef struct rpc_error {
    int code;           /* a grpc_status_code */
    char details[256];  /* status details, NUL-terminated, maybe truncated */
} rpc_error;

/* Static name of a status code ("INVALID_ARGUMENT"...); codes outside
 * 0..16 give "UNKNOWN". */
const char *rpc_code_name(int code);

/*
 * Makes a client for the server at `addr` ("host:port", any gRPC target)
 * with a plaintext channel (rpc_client_new_tls for TLS). `token` may be
 * NULL (no metadata); it is copied. Returns NULL when out of memory or
 * when the token holds bytes that are not legal in a metadata value. The
 * channel connects lazily: an unreachable server shows up as UNAVAILABLE
 * on the first call.
 * While a call is open the channel sends keepalive pings after 20 s without
 * traffic and drops a connection whose ping is not answered in 10 s, so a
 * stream to a server whose network vanished ends (UNAVAILABLE) instead of
 * waiting for ever.
 */
rpc_client *rpc_client_new(const char *addr, const char *token);

/* Transport security of a client: TLS, the server's certificate verified
 * (chain and name), optionally with a client certificate (mutual TLS).
 * The strings are PEM text (not file names), copied by gRPC. */
typedef struct rpc_tls {
    const char *ca_pem;      /* CA certificates that must sign the server's;
                                NULL: gRPC's default roots */
    const char *cert_pem;    /* client certificate chain, or NULL */
    const char *key_pem;     /* its private key: both or neither */
    const char *server_name; /* the name the server's certificate must carry,
                                instead of addr's host; NULL: addr's host */
} rpc_tls;

/* As rpc_client_new, over TLS when `tls` is not NULL. Also NULL when only
 * one of cert_pem and key_pem is given. A certificate that does not verify
 * shows up as UNAVAILABLE on the first call, as an unreachable server. */
rpc_client *rpc_client_new_tls(const char *addr, const char *token, const rpc_tls *tls);

/* Destroys the client (its channel) and sets *c to NULL; NULL or *c == NULL
 * is a no-op. */
void rpc_client_destroy(rpc_client **c);

/* ------------------------------------------------------------------ Send */

typedef struct rpc_receipt {
    char receiver_uid[129];
    int32_t code;         /* gRPC code for this receiver, 0 = stored */
    char error[160];      /* reason when code != 0 */
    bool duplicate;
    bool online;
    int64_t send_time_ms;
} rpc_receipt;

typedef struct rpc_send_result {
    rpc_receipt *receipts; /* one per receiver, in request order; malloc'ed */
    size_t n;
} rpc_send_result;

/*
 * Send: stores message `msg_id` (`content` of `content_len` bytes, may be
 * NULL when 0) for the `nreceivers` uids of `receivers`. On OK, `out` holds
 * exactly `nreceivers` receipts (a server answering another number is
 * INTERNAL "response: ...").
 */
grpc_status_code rpc_send(rpc_client *c, const char *msg_id,
                          const char *const *receivers, size_t nreceivers,
                          int32_t msg_type, const void *content,
                          size_t content_len, int timeout_ms,
                          rpc_send_result *out, rpc_error *err);
void rpc_send_result_free(rpc_send_result *r);

/* ------------------------------------------------------------------ Pull */

typedef struct rpc_msg {
    char *msg_id;         /* NUL-terminated, owned by the page */
    char *sender_uid;     /* NUL-terminated, owned by the page */
    char *receiver_uid;   /* NUL-terminated, owned by the page */
    int64_t send_time_ms;
    int32_t msg_type;
    uint8_t *content;     /* owned by the page; NULL when content_len == 0 */
    size_t content_len;
} rpc_msg;

typedef struct rpc_page {
    rpc_msg *msgs;        /* oldest first; malloc'ed, NULL when n == 0 */
    size_t n;
    char cursor[RPC_CURSOR_CAP]; /* pass to the next rpc_pull (acks it) */
    bool more;            /* more messages wait after this page */
} rpc_page;

/*
 * Pull: acks everything up to `cursor` (NULL or "" = nothing, from the
 * start), then returns the next page of up to `page_size` messages (0 = the
 * server's default). `sender_uid` (NULL or "" = whole inbox) limits the
 * page to one conversation.
 */
grpc_status_code rpc_pull(rpc_client *c, const char *cursor,
                          uint32_t page_size, const char *sender_uid,
                          int timeout_ms, rpc_page *out, rpc_error *err);
void rpc_page_free(rpc_page *p);

/* ------------------------------------------------------------------- Ack */

/* Ack: deletes everything up to `cursor`; *deleted (may be NULL) gets how
 * many messages this call removed (0 on error). */
grpc_status_code rpc_ack(rpc_client *c, const char *cursor, int timeout_ms,
                         uint64_t *deleted, rpc_error *err);

/* ---------------------------------------------------------------- Counts */

typedef struct rpc_sender_count {
    char sender_uid[129];
    uint64_t count;
    int64_t last_send_time_ms;
} rpc_sender_count;

typedef struct rpc_counts_result {
    rpc_sender_count *senders; /* most recent first; malloc'ed, NULL if n==0 */
    size_t n;
    uint64_t total;
} rpc_counts_result;

grpc_status_code rpc_counts(rpc_client *c, int timeout_ms,
                            rpc_counts_result *out, rpc_error *err);
void rpc_counts_result_free(rpc_counts_result *r);

/* -------------------------------------------------------------- Presence */

/*
 * Presence: whether each of the `n` uids has a live Subscribe stream on any
 * gateway. On OK, online_out[i] (room for n bools) answers uids[i]; a server
 * answering another number of values is INTERNAL "response: ...". On any
 * other status online_out[0..n) is all false. The uids are sent as given
 * (NULL as ""): the server refuses an invalid one or more than 1000 with
 * INVALID_ARGUMENT.
 */
grpc_status_code rpc_presence(rpc_client *c, const char *const *uids,
                              size_t n, int timeout_ms, bool *online_out,
                              rpc_error *err);

/* ------------------------------------------------------------- Subscribe */

/*
 * Subscribe is a server stream: the stored messages of the caller's inbox
 * after the cursor, then new ones live as they are committed, one Delivery
 * each. It never ends by itself; a cancel, the call's deadline or the
 * server's shutdown ends it, and so does an error status such as
 * INVALID_ARGUMENT (bad cursor) or UNAUTHENTICATED, which arrives as the
 * stream's final status, not from rpc_subscribe.
 *
 * An rpc_stream is one Subscribe call with a completion queue of its own.
 * Three batches are accepted over its life, each with its own tag inside
 * the stream: the start (metadata, request, half-close, initial metadata),
 * the final status (started at once, so that the end is noticed while no
 * read is pending), and at most one RECV_MESSAGE at a time. A read that
 * rpc_stream_next stopped waiting for stays pending and is picked up by the
 * next call: no Delivery is lost or repeated between calls.
 *
 * Threads: one thread at a time calls rpc_stream_next / rpc_stream_close
 * on a stream; rpc_stream_cancel may be called from any thread at any time
 * before rpc_stream_close (it is not async-signal-safe: from a signal
 * handler, set a flag and cancel from the thread that reads).
 */
typedef struct rpc_stream rpc_stream;

typedef struct rpc_delivery {
    rpc_msg msg;                 /* its strings and content are owned by the
                                    delivery */
    char cursor[RPC_CURSOR_CAP]; /* Ack with it: deletes up to and including
                                    this message; never empty */
} rpc_delivery;

/* Frees what a delivery owns and zeroes it; calling it twice, or on a zeroed
 * delivery, is harmless. */
void rpc_delivery_free(rpc_delivery *d);

/*
 * Starts Subscribe(cursor) (NULL or "" = from the start; a non-empty cursor
 * first acks everything up to it, as Pull does) with the client's token.
 * timeout_ms is the deadline of the whole stream, 0 = none (it then lives
 * until cancelled or until the server ends it). Returns the stream, owned
 * by the caller until rpc_stream_close, or NULL (err RESOURCE_EXHAUSTED)
 * only when out of memory. Everything else, an unreachable server included,
 * shows up as the final status from rpc_stream_next.
 */
rpc_stream *rpc_subscribe(rpc_client *c, const char *cursor, int timeout_ms,
                          rpc_error *err);

/* What rpc_stream_next has to say. */
typedef enum rpc_stream_event {
    RPC_STREAM_DELIVERY = 1, /* *out holds the next Delivery */
    RPC_STREAM_IDLE,         /* none within wait_ms; the stream is still
                                open: call again */
    RPC_STREAM_ENDED,        /* the stream is over: *err (and
                                rpc_stream_status) holds its final status */
} rpc_stream_event;

/*
 * Waits up to wait_ms (0 = only what has already arrived, < 0 = no limit)
 * for the next Delivery, in stream order.
 *
 * DELIVERY: *out is owned by the caller until rpc_delivery_free; err is
 *   untouched.
 * IDLE: nothing arrived in time (or the stream is ending and its status
 *   has not arrived in time); *out is zeroed.
 * ENDED: *out is zeroed; err gets the final status, which is never OK: a
 *   server that ends the stream with OK broke the contract ("never ends by
 *   itself") and that is reported as INTERNAL "response: stream ended
 *   with OK". CANCELLED after rpc_stream_cancel (unless the stream had
 *   already ended otherwise), DEADLINE_EXCEEDED at the call's deadline,
 *   UNAVAILABLE when the server went away, INTERNAL "response: ..." when a
 *   Delivery did not decode or broke the contract (no message, no cursor,
 *   content over 64 KiB), RESOURCE_EXHAUSTED "response: out of memory"
 *   when a Delivery could not be stored: in these last two cases the
 *   stream is cancelled and nothing further is delivered. Every later call
 *   returns ENDED again with the same status.
 *
 * After rpc_stream_cancel no further Delivery is returned, even one already
 * received: it was not shown, so it was not acked, and it stays stored.
 */
rpc_stream_event rpc_stream_next(rpc_stream *s, int wait_ms,
                                 rpc_delivery *out, rpc_error *err);

/*
 * Asks the stream to end (grpc_call_cancel): the next rpc_stream_next calls
 * reach ENDED (CANCELLED) promptly. Idempotent; harmless after the end.
 */
void rpc_stream_cancel(rpc_stream *s);

/*
 * The final status once rpc_stream_next returned ENDED (copied into err when
 * not NULL); GRPC_STATUS_OK while the stream has not been seen to end.
 */
grpc_status_code rpc_stream_status(const rpc_stream *s, rpc_error *err);

/*
 * Cancels the stream if it has not ended, waits for every accepted batch to
 * complete (promptly, after a cancel), releases everything and sets *s to
 * NULL; NULL or *s == NULL is a no-op. Deliveries already returned stay
 * valid (the caller owns them).
 */
void rpc_stream_close(rpc_stream **s);

/* ------------------------------------------------------------ raw calls */

/*
 * Calls `method` ("/imbox.v1.Inbox/Send"...) with `req_len` bytes at `req`
 * as the request message, unchecked (for tests that send hostile bytes),
 * with the client's token. On return (any status) *resp is a malloc'ed copy
 * of the response message (free() it), or NULL with *resp_len 0 when none
 * arrived.
 */
grpc_status_code rpc_call_raw(rpc_client *c, const char *method,
                              const void *req, size_t req_len, int timeout_ms,
                              uint8_t **resp, size_t *resp_len,
                              rpc_error *err);

/*
 * Standard health check: /grpc.health.v1.Health/Check with an empty request
 * on a fresh channel to `addr`, no token. Returns 1 when the server answers
 * OK with exactly the bytes 08 01 (status SERVING), else 0. Never blocks
 * much longer than timeout_ms.
 */
int rpc_health(const char *addr, int timeout_ms);

#endif
