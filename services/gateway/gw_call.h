/*
 * gw_call.h - internal to the gateway: one gRPC call's context, the
 * server's state, and the helpers the method files share (names gw__).
 * gw_server.h is the public face; this header is for gw_*.c only.
 *
 * The files, by seam:
 *   gw_server.c   call loop (accept, dispatch, free), replies, lifecycle
 *   gw_check.c    request checks: token, decoding, strings, cursors; the
 *                 hand-off to a shard
 *   gw_send.c     Send: validation, split by shard, receipts
 *   gw_inbox.c    Pull, Ack, Counts
 *   gw_sub.c      Subscribe (live streams), the presence leases, notices
 *   gw_presence.c Presence
 *   gw_health.c   grpc.health.v1.Health, Check and Watch (readiness)
 *   gw_reflect.c  grpc.reflection.v1alpha.ServerReflection (a bidirectional
 *                 stream, no token): the build's descriptor set
 *   gw_tokens.c   the cache of verified tokens (gw_tokens.h; gw__auth's)
 *   gw_jwt.c      JWTs from the app's identity provider (gw_jwt.h; gw__auth's)
 *   gw_tls.c      the listening port's credentials (TLS or plaintext)
 *   gw_metrics.c  the counters' exposition (gw_metrics.h)
 *
 * Threads: a call is started and freed on the completion-queue thread; its
 * reply may be sent from the bus thread (gw_bus.h), exactly once per call.
 */
#ifndef IMBOX_GW_CALL_H
#define IMBOX_GW_CALL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <grpc/grpc.h>
#include <grpc/grpc_security.h>

#include "gw_bus.h"
#include "gw_server.h"
#include "gw_jwt.h"
#include "gw_tokens.h"
#include "im_wire.h"
#include "imbox/internal/v1/shard.pb.h"
#include "imbox/v1/imbox.pb.h"

/* Fixed limits and tunables (the configurable limits are in gw_server.h). */
#define GW_PAGE_DEFAULT 100
#define GW_PAGE_BYTES (3u << 20) /* content per page: under gRPC's 4 MiB */
#define GW_REPLY_MAX (8u << 20)  /* largest shard reply accepted */
#define GW_SHARD_TIMEOUT_MS 5000 /* a shard's commit takes milliseconds */
#define GW_KEEPALIVE_MS 10000    /* keepalive ping after 10 s idle, drop
                                    after 10 s unanswered: a vanished client
                                    is offline within about 20 s */
#define GW_CLIENT_PING_MS 5000   /* clients may keepalive-ping this often */
#define GW_LEASE_MS 3000         /* presence lease; renewed every third */
#define GW_SUB_PAGE 100          /* a stream reads this many messages */
#define GW_SUB_PAGE_BYTES (256u << 10) /* or this much content at a time:
                                    a stream holds at most one such page */
#define GW_MAX_STREAMS 100       /* concurrent calls per connection */
#define GW_MEMORY_QUOTA (256ll << 20) /* gRPC's resource quota */
#define GW_REPLY_BUDGET (64ll << 20) /* unsent Pull, Counts and Subscribe
                                    bytes, all calls together: 300 stalled
                                    Pulls of 3 MiB pages pinned 900 MB */
#define GW_READ_RESERVE (64u << 10) /* a read starts only with this much
                                    budget left: a page has at least one
                                    message of up to 64 KiB */
#define GW_MAX_METADATA (64 << 10) /* request headers per call: browsers
                                    and proxies send cookies of 8..16 KiB;
                                    Envoy's default limit is 60 KiB */
#define GW_ARMED 16              /* calls requested per method: enough for
                                    bursts, each costs one small context */

typedef enum {
    M_SEND, M_PULL, M_ACK, M_COUNTS, M_SUBSCRIBE, M_PRESENCE, M_HEALTH, M_WATCH, M_REFLECT,
    M_GENERIC,
    M_COUNT
} gw_method;


/* Counters for the metrics endpoint (gw_metrics.c), written by the thread
 * that answers a call (CQ or bus thread) with relaxed atomic adds: no lock
 * and no allocation on any call's path. */
#define GW_CODES 17   /* gRPC status codes 0..16 */
#define GW_LAT_N 14   /* latency buckets, gw_lat_le_us */
extern const double gw_lat_le_us[GW_LAT_N];
typedef struct gw_stats {
    atomic_uint_least64_t calls[M_COUNT][GW_CODES]; /* by method, status */
    atomic_uint_least64_t lat[M_COUNT][GW_LAT_N + 1]; /* unary calls */
    atomic_uint_least64_t lat_us[M_COUNT];          /* their sum */
    atomic_uint_least64_t receipts[GW_CODES];       /* Send receipts by code */
    atomic_uint_least64_t duplicates;               /* of code 0: duplicates */
    atomic_llong streams;                           /* live Subscribe calls */
} gw_stats;

/* TAG_SEND: the final batch (status; a unary call's receive-close rides in it);
 * TAG_CLOSE: a stream's receive-close; TAG_MD, TAG_MSG: a stream's initial
 * metadata and each of its messages. */
typedef enum { TAG_NEW, TAG_CLOSE, TAG_SEND, TAG_MD, TAG_MSG } gw_tag_kind;

typedef struct gw_call gw_call;
typedef struct gw_tag {
    gw_call *c;
    gw_tag_kind kind;
} gw_tag;

typedef struct gw_receipt {
    int code;
    char error[sizeof(((imbox_v1_Receipt *)0)->error)];
    bool duplicate;
    bool online;
    int64_t send_time_ms;
} gw_receipt;

/* One shard's share of a Send (or a Presence). */
typedef struct gw_part {
    gw_call *c;
    int n;
    int *idx;  /* receipt indices, in the order sent to the shard; NULL when
                  the part is every receiver in order (one shard) */
    int shard; /* where it goes */
} gw_part;

/* The receipt index of part p's j-th uid. */
static inline int gw__part_at(const gw_part *p, int j)
{
    return p->idx ? p->idx[j] : j;
}

struct gw_call {
    gw_server *g;
    gw_method m;
    grpc_call *call;
    gpr_timespec deadline;
    grpc_metadata_array md;
    grpc_call_details details; /* M_GENERIC */
    grpc_byte_buffer *payload;
    gw_tag t_new, t_close, t_send, t_md, t_msg;
    atomic_int refs;           /* what will still call back: batches in
                                  flight, a stream's shard requests; the
                                  call is freed when it drops to 0 */
    bool accepted;             /* counted in gw_server.active */
    int cancelled;
    grpc_byte_buffer *resp;
    grpc_slice status_details;
    grpc_metadata trailer;     /* one trailing metadata when ntrailer */
    int ntrailer;
    char uid[IM_UID_MAX + 1];
    /* Send */
    int nrecv;
    char (*receivers)[IM_UID_MAX + 1];
    gw_receipt *receipts;
    gw_part *parts;
    atomic_int parts_left;
    /* Pull */
    char sender[IM_UID_MAX + 1];
    /* Presence: one flag per uid (in receivers); the first part's failure */
    bool *online;
    int fail;
    char why[192];
    /* Subscribe */
    struct gw_sub *sub;
    /* Health/Watch */
    struct gw_watch *watch;
    size_t charged;            /* reply budget held by resp (gw__respond) */
    /* ServerReflectionInfo: initial metadata sent */
    bool reflect_md;
    int64_t t0_us;             /* accepted (monotonic): latency metric */
};

struct gw_server {
    gw_config c;
    grpc_server *server;
    grpc_completion_queue *cq;
    void *methods[M_GENERIC];
    gw_bus *bus;
    pthread_t thread;
    atomic_bool stopping;
    atomic_int active;        /* unary calls accepted and not yet freed */
    int shutdown_tag;
    atomic_bool shutdown_done;
    /* scratch, owned by the CQ thread */
    imbox_internal_v1_ShardRequest *shard_req;
    gw_tokens *tokens;        /* verified tokens (gw__auth; made there) */
    gw_jwt *jwt;              /* JWT verifier (gw__auth), or NULL when none
                                 is configured; made by gw_start */
    struct gw_rate *rate;     /* Send rate limit (gw__send; made there) */
    /* scratch, owned by the bus thread (used only in bus callbacks) */
    imbox_internal_v1_ShardReply *shard_reply;
    char shard_why[192];      /* gw__shard_decode's own failure text */
    struct gw_subs *subs;     /* live streams (gw_sub.c) */
    atomic_llong reply_bytes; /* the reply budget in use (gw__budget_*) */
    atomic_llong untrimmed;   /* given back since the last malloc_trim */
    struct im_trim *trim;     /* gives free heap back (gw_server.c) */
    /* readiness (gw_health.c) */
    atomic_bool *shard_ok;    /* per shard: its last HealthOp answered OK */
    struct gw_probe *probes;  /* per shard: the probe in flight (bus thread) */
    struct gw_watches *watches; /* Watch streams */
    gw_stats stats;           /* the metrics endpoint's (gw_metrics.c) */
};

/* ------------------------------------------------ metrics (gw_metrics.c) */

/* Marks call c accepted (CQ thread): its start time, a live stream. */
void gw__stat_start(gw_call *c);
/* Counts call c answered with status (once per call, by whoever answers). */
void gw__stat_call(gw_call *c, int status);

/* ------------------------------------------------ replies (gw_server.c) */

void gw__call_free(gw_call *c);

/* Drops one reference (any thread); frees the call at the last. */
void gw__call_unref(gw_call *c);

/*
 * Answers the call: initial metadata, the message (body, malloc'ed, taken;
 * NULL for none) and the status. Called exactly once per call, from the CQ
 * thread or the bus thread; after it the caller must not touch c.
 */
void gw__respond(gw_call *c, int status, const char *msg, uint8_t *body, size_t len);
void gw__respond_errf(gw_call *c, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Encodes msg after `entries` (pre-encoded repeated-field entries,
 * malloc'ed, taken; NULL and 0 for none) and answers OK. */
void gw__respond_pb(gw_call *c, const pb_msgdesc_t *fields, const void *msg,
                    uint8_t *entries, size_t entries_len);

/* Decodes a shard reply into the bus thread's scratch (g->shard_reply),
 * with its entries into *entries when not NULL (max set by the caller;
 * malloc'ed, the caller frees). Returns 0, or the failure's status with
 * *why: the bus's own (status, passed in), the reply not decoding, the
 * shard's code and error, or entries over their max (then freed). */
int gw__shard_decode(gw_server *g, int status, const char **why, const uint8_t *reply,
                     size_t len, im_bytes_in *entries);

/* Decodes a shard reply into the bus thread's scratch, with its entries
 * into *entries (malloc'ed, caller frees). Returns 0 or answers the call
 * with the failure and returns -1. */
int gw__shard_reply(gw_call *c, int status, const char *why, const uint8_t *reply, size_t len,
                    im_bytes_in *entries);

/*
 * The reply budget: bytes of Pull, Counts and Subscribe responses that are
 * built and not yet taken by their clients (a client that does not read
 * keeps its response in the server, gRPC flow control holding it back), all
 * calls together, at most gw_config.reply_budget. A Pull or Counts response
 * is charged when it is built and given back when its call is freed (the
 * send completed or the call ended); a stream's page when it is read from
 * the shard, and given back when it is used up or the stream ends. A read
 * that finds the budget spent answers RESOURCE_EXHAUSTED before asking the
 * shard, and a response that does not fit is replaced by that status.
 * Any thread (atomics).
 */
/* Charges n bytes if they fit; false (nothing charged) if not. */
bool gw__budget_take(gw_server *g, size_t n);
/* Gives n charged bytes back; once 1 MiB has come back, the bus thread's
 * next tick has the freed memory given back to the system (im_trim.h). */
void gw__budget_give(gw_server *g, size_t n);
/* Whether a new read may start (GW_READ_RESERVE left). */
bool gw__budget_room(gw_server *g);

/* The listening port's credentials (gw_tls.c): TLS from the config's PEM
 * files, checked (readable, a key matching its certificate), or plaintext
 * (refused on a non-loopback address unless insecure_plaintext). NULL with
 * err. The caller releases them. */
grpc_server_credentials *gw__listen_creds(const gw_config *c, char *err, size_t errlen);

/* --------------------------------------------- request checks (gw_check.c) */

/* Sets c->uid from the authorization metadata (exactly one entry), or
 * answers UNAUTHENTICATED. */
int gw__auth(gw_call *c);

/* Decodes the call's payload into msg; answers INVALID_ARGUMENT on failure. */
int gw__decode(gw_call *c, const pb_msgdesc_t *fields, void *msg, const char *name);

/* gw__decode's work on bytes: unknown groups dropped (as protobuf skips
 * them), then pb_decode. true, or false with *why (a static text) and *oom
 * set when memory ran out. The reference of the hand readers' tests. */
bool gw__decode_bytes(const pb_msgdesc_t *fields, void *msg, const uint8_t *buf, size_t len,
                      const char **why, bool *oom);

/* Checks a string field decoded by im_pb_read_str; answers on error. */
int gw__str(gw_call *c, const im_str_in *in, const char *field, size_t max, bool utf8);

/* A repeated uid field decoded by callback gw__read_uid (hostile input: at
 * most `max` are kept, each at most IM_UID_MAX bytes; the first problem is
 * remembered with its index so that the error can name it). Start it as
 * {.max = M, .bad = -1}: v grows as uids come (malloc'ed; the caller frees
 * it, or hands it on). */
typedef struct gw_uids {
    char (*v)[IM_UID_MAX + 1]; /* the kept ones; room for cap */
    int cap;
    int max;
    int n;        /* kept */
    int total;    /* seen */
    int bad;      /* index of the first over-long or NUL-holding uid, or -1 */
    size_t bad_len;
    bool oom;     /* v could not grow: gw__uids_check answers "out of memory" */
} gw_uids;
bool gw__read_uid(pb_istream_t *s, const pb_field_t *f, void **arg);

/* A SendRequest as gw__send decodes it the generic way: nanopb's struct,
 * whose callbacks fill the rest (the msg_id, the receivers up to 1000, the
 * content up to max_content bytes). gw__send_in_init readies it, after
 * which it must not move; gw__send_in_free frees what a decode allocated. */
typedef struct gw_send_in {
    imbox_v1_SendRequest q;
    char msg_id[IM_MSGID_MAX + 1];
    im_str_in mid;
    gw_uids u;
    im_bytes_in content;
} gw_send_in;
void gw__send_in_init(gw_send_in *in, size_t max_content);
void gw__send_in_free(gw_send_in *in);

/* Checks a decoded uid list: min..max of them, each by the uid rule.
 * Answers INVALID_ARGUMENT naming field[i] (and `noun` for the count), or
 * RESOURCE_EXHAUSTED if the list could not be kept (out of memory). */
int gw__uids_check(gw_call *c, const gw_uids *u, const char *field, const char *noun, int min,
                   int max);

typedef struct gw_cursor {
    char text[IM_CURSOR_MAX];
    im_str_in in;
} gw_cursor;

/* Points the request's cursor field at k (decoded by callback). */
void gw__cursor_init(gw_cursor *k, pb_callback_t *cb);

/* Checks and parses a decoded cursor into seq and scope; answers on error. */
int gw__cursor(gw_call *c, const gw_cursor *k, uint64_t *seq, char *scope);

/* Encodes g->shard_req and sends it to shard; fn(arg) gets the reply. */
void gw__to_shard(gw_call *c, int shard, gw_bus_fn fn, void *arg);

/* Sends an encoded ShardRequest (body malloc'ed, taken) to shard; from any
 * thread. fn(arg) gets the reply, or a failure, exactly once. */
void gw__send_body(gw_server *g, int shard, uint8_t *body, size_t len, gw_bus_fn fn,
                   void *arg);

/* Encodes req and sends it to shard; from any thread. fn(arg) gets the
 * reply, or a failure, exactly once. */
void gw__send_req(gw_server *g, int shard, const imbox_internal_v1_ShardRequest *req,
                  gw_bus_fn fn, void *arg);

/* ------------------------------------------- methods (one file per family) */

void gw__send(gw_call *c);   /* gw_send.c */

/* Encodes the SendResponse of c's receipts (c->receivers[i] with
 * c->receipts[i], i < c->nrecv) into *out (malloc'ed, exact size, caller
 * frees) by hand, in one pass: the bytes pb_encode makes of the same
 * imbox_v1_SendResponse (proto3: zero and empty fields left out). 0, or -1
 * out of memory. */
int gw__send_response(const gw_call *c, uint8_t **out, size_t *len);

/* What a Send stores: the StoreOp's fields but the receivers (a part's).
 * Strings NUL-terminated, within StoreOp's bounds (a checked request's). */
typedef struct gw_store {
    const char *sender;
    const char *msg_id;
    int32_t msg_type;
    const uint8_t *content; /* may be NULL when content_len is 0 */
    size_t content_len;
} gw_store;

/* Encodes the ShardRequest that stores m for part p's receivers into *out
 * (malloc'ed, exact size, caller frees) by hand, in one pass (content
 * copied once): the bytes pb_encode makes of a ShardRequest whose store is
 * m with content by im_pb_write_bytes and receivers by gw__write_part_uids.
 * 0, or -1 out of memory. */
int gw__store_request(const gw_part *p, const gw_store *m, uint8_t **out, size_t *len);

/* Groups c->receivers[0..nrecv) (nrecv >= 1) by shard into c->parts, in
 * ascending shard order, ended by a part with .c NULL; receivers that all
 * go to one shard make one part with idx NULL. Returns the number of parts,
 * or -1 out of memory. */
int gw__split(gw_call *c);

/* Encode callback of a repeated uid field: the uids of the gw_part at
 * *arg. */
bool gw__write_part_uids(pb_ostream_t *s, const pb_field_t *f, void *const *arg);
void gw__pull(gw_call *c);   /* gw_inbox.c */
void gw__ack(gw_call *c);
void gw__counts(gw_call *c);
void gw__presence(gw_call *c); /* gw_presence.c */
void gw__health(gw_call *c);   /* gw_health.c */

/* ------------------------------------------ readiness, Watch (gw_health.c) */

void gw__watch(gw_call *c);
int gw__health_new(gw_server *g);   /* 0, or -1 out of memory */
void gw__health_free(gw_server *g); /* after the bus is destroyed */
/* Bus thread: asks every shard whether it takes writes (a HealthOp); its
 * answer, and a disconnect, update the status and the Watch streams. */
void gw__health_tick(gw_server *g);
void gw__health_disconnected(gw_server *g, int shard);
/* The server is stopping: NOT_SERVING, then every Watch ends. */
void gw__health_shutdown(gw_server *g);
/* Completions of a Watch stream (CQ thread): a message sent; the call
 * over (cancelled, deadline, or ended). */
void gw__watch_sent(gw_call *c, bool ok);
void gw__watch_closed(gw_call *c);
void gw__watch_free(struct gw_watch *w); /* with the call; NULL-safe */

/* gw_reflect.c: a reflection stream (M_REFLECT) starts with its first
 * request in c->payload, holding one reference besides its receive-close;
 * each of its TAG_MSG completions goes to gw__reflect_next (CQ thread),
 * after which the caller drops that batch's reference. */
void gw__reflect(gw_call *c);
void gw__reflect_next(gw_call *c, bool ok);

/* ------------------------------------------------------ streams (gw_sub.c) */

void gw__subscribe(gw_call *c);

/* The registry of live streams and the bus hooks that serve it. */
int gw__subs_new(gw_server *g);       /* 0, or -1 out of memory */
void gw__subs_free(gw_server *g);     /* after the bus is destroyed */
void gw__subs_notice(void *g, int shard, const uint8_t *body, size_t len);
void gw__subs_tick(void *g);
void gw__subs_disconnected(void *g, int shard);

/* Ends every stream with UNAVAILABLE (the server is stopping). */
void gw__subs_shutdown(gw_server *g);

/* Completions of a stream's batches (CQ thread): TAG_MD, TAG_MSG, and
 * TAG_CLOSE (the call is over: cancelled, deadline, or ended). */
void gw__sub_sent(gw_call *c, gw_tag_kind kind, bool ok);
void gw__sub_closed(gw_call *c);
void gw__sub_free(struct gw_sub *s); /* with the call; NULL-safe */

#endif
