/*
 * push_core - live delivery (Subscribe) under load, over gRPC, against a
 * running imbox cluster: the machinery behind push_bench (bench/run_push.sh
 * starts a cluster and runs it) and imbox-bench --workload push, both of
 * which only parse flags and print; push_core.h is the interface. Not a
 * test: it measures; it fails (1) when the server broke the contract it
 * checks. The command lines, as push_bench takes them:
 *
 *   push_bench --mode latency --send-addr A --sub-addr B --data-dir D
 *              [--subscribers 100] [--rate 1000] [--seconds 10]
 *              [--content 64] [--ack-every 50] [--server-pids P1,P2,...]
 *              [--max-inflight 4096] [--streams-per-channel 0] [--json]
 *   push_bench --mode idle --sub-addr B --data-dir D
 *              [--subscribers 10000] [--seconds 10] [--gateway-pid P]
 *              [--probe-calls 2000] [--probe-rate 200]
 *              [--streams-per-channel 0] [--json]
 *   push_bench --mode churn --sub-addr B --data-dir D
 *              [--cycles 100000] [--subscribers 100] [--seconds 10]
 *              [--gateway-pid P] [--server-pids P1,P2,...]
 *              [--cancel-at open] [--no-token] [--probe-calls 2000]
 *              [--probe-rate 200] [--json]
 *
 * --data-dir holds the cluster's auth.secret: the bench mints its own
 * tokens, and checks every Delivery cursor with it (im_cursor_scope).
 *
 * latency: K subscribers (fresh uids "pb<run>-s<i>", one Subscribe stream
 * each from the "" cursor on gateway B) are opened and confirmed online
 * with Presence; then one sender sends at a fixed open-loop rate R through
 * gateway A, one receiver per Send, round-robin over the K subscribers,
 * unique msg_ids "pb<run>-<seq>". The content is the intended send time
 * (CLOCK_MONOTONIC ns, 8 bytes little-endian) then padding. A message's
 * push latency is its arrival on the subscriber's stream minus its intended
 * send time (so a stalled server cannot hide behind a generator that waited
 * for it: no coordinated omission). Checked: every Send is OK with one
 * receipt of code 0, online = true, not duplicate; every message whose
 * receipt was OK arrives exactly once, on its receiver's stream, with its
 * own content; each stream's cursors are valid whole-inbox cursors of that
 * subscriber (verified with the secret) with strictly increasing positions,
 * and send_time_ms never decreases. Subscribers ack (Ack with the last
 * cursor) after --ack-every deliveries or --ack-ms (100), one Ack in flight
 * each.
 * At most --max-inflight Sends are outstanding: when the server falls
 * behind, due sends wait (their latency still counts from the schedule)
 * and saturated=1 says the offered rate was not carried.
 * Given --server-pids, the servers' CPU time (utime + stime from
 * /proc/PID/stat) over the send phase is divided by the pushes delivered,
 * and so are their threads' CPU and context switches by kind (gw_cq,
 * gw_bus, zmqbg_io, sh_socket...: bc_threads_put in bench_core.h).
 *
 * idle: K idle Subscribe streams (fresh uids, empty inboxes) on one channel
 * (one HTTP/2 connection); when the connection stops admitting streams (the
 * server's max concurrent streams), the ones still waiting are cancelled
 * and reopened over ceil(rest / limit) more channels, and this is printed.
 * "Open" means Presence says online. The gateway's VmRSS is read before
 * the streams and once they are all open, giving the memory of an idle
 * stream; the gateway's CPU time over a quiet window of --seconds with the
 * streams open and no call running; Health/Check and Send latency is
 * measured on another channel before the streams and while they are open.
 *
 * churn: a long history of Subscribes. --cycles streams in all, at most
 * --subscribers (K) open at once, each for a fresh uid "pb<run>-c<n>" from
 * the "" cursor, cancelled as soon as its initial metadata arrives (the
 * server sends it once the uid's lease is in place at its shard), the next
 * one started when it is gone. Checked: every stream answers and none ends
 * by itself; once the last is gone, Presence says the K last uids offline
 * (offline_after_last_cancel_ms, at most 10 s). --cancel-at start resets
 * each stream right after starting it instead (HEADERS, DATA, RST_STREAM:
 * HTTP/2's "rapid reset"), which a token does not gate: what the gateway
 * holds while it catches up (gateway_rss_peak_kib, VmHWM); with --no-token
 * the streams carry no token at all (the calls are made before a token is
 * read). Measured: the time from a Subscribe's start to its initial
 * metadata (subscribe_*, and its first and last tenth apart: whether it
 * drifts with the history); the servers' CPU per cycle (--server-pids); the
 * gateway's VmRSS before and at each tenth of the cycles (--gateway-pid),
 * and the servers' VmRSS before, after and once --seconds have passed
 * (leases lapse within a few); Health/Check and Send latency before the
 * churn and after it, as in the idle mode.
 *
 * How the generator stays out of the figures: one completion queue and
 * its thread take every completion (no thread per subscriber or per call,
 * no blocking call); in the latency run a second thread only paces the
 * Sends (it sleeps until each one is due with clock_nanosleep and starts
 * it: gRPC's completion-queue wait rounds its deadline up to whole
 * milliseconds, which made sends start up to ~1 ms late at 1,000/s); one
 * channel per role; pacing is open-loop from a schedule, and a late start
 * shows up as send_lag_* instead of lowering the offered load; the
 * generator reports its own CPU time per message (gen_cpu_us_per_msg) and
 * its lag so that a saturated generator is visible. push_* counts from the
 * intended send time (what the open-loop schedule promises), push_start_*
 * from the call's start.
 *
 * Output: key=value lines (or one JSON object with --json) on stdout;
 * notes and errors on stderr. Exit 0, 1 when a check failed or the server
 * could not be driven (Subscribe or Presence refused: UNIMPLEMENTED on a
 * server without live delivery), 2 on a usage error.
 */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>

#include <pb_decode.h>
#include <pb_encode.h>

#include "im_auth.h"
#include "imbox/v1/imbox.pb.h"
#include "bench_core.h"
#include "push_core.h"

/* Tunables (each can be overridden where a flag exists). */
#define PB_SEND_TIMEOUT_MS 10000     /* Send, Ack, Presence, Health deadline */
#define PB_ACK_MS_DEFAULT 100 /* a subscriber acks at least every 100 ms */
#define PB_ACK_SCAN_NS 20000000      /* how often the ack timer is checked */
#define PB_PRESENCE_CHUNK 1000       /* uids per Presence call (the API max) */
#define PB_PRESENCE_EVERY_NS 200000000 /* Presence poll period while opening */
#define PB_STALL_NS 3000000000LL     /* no new stream open for 3 s: stalled */
#define PB_ESTABLISH_S 120.0         /* opening every stream: hard bound */
#define PB_HELD_WAIT_NS 50000       /* a held send looks again after this */
#define PB_DRAIN_S 15.0              /* after the last send: wait for the rest */
#define PB_TEARDOWN_S 5.0            /* cancelled calls must complete by then */
#define PB_MAX_CHANNELS 4096
#define PB_MAX_PIDS 16
#define PB_MAX_MSGS 50000000ULL      /* rate x seconds: 48 bytes each */
#define PB_TOKEN_TTL_S 86400
#define PB_CHURN_STALL_NS 10000000000LL /* churn: no stream opened for 10 s */
#define PB_OFFLINE_S 10.0            /* churn: cancelled uids offline by then */
#define PB_PRESENCE_COUNT 1          /* a Presence that only counts online */

static int64_t s_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* ------------------------------------------------------------- output */

/* Results go to the caller's sink as (key, value) pairs, in order; numbers
 * are already formatted (str = false), strings are not quoted. */
static pb_put_fn s_sink;

static void s_put(const char *key, bool str, const char *fmt, ...)
{
    char val[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(val, sizeof val, fmt, ap);
    va_end(ap);
    s_sink(key, str, val);
}

#define PUT_I(k, v) s_put((k), false, "%" PRId64, (int64_t)(v))
#define PUT_F(k, v, prec) s_put((k), false, "%." #prec "f", (double)(v))
#define PUT_S(k, v) s_put((k), true, "%s", (v))

static const char *s_code_name(int code)
{
    static const char *const names[] = {
        "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
        "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL",
        "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
    };
    return code >= 0 && code <= 16 ? names[code] : "UNKNOWN";
}

static int s_code_index(int code)
{
    return code >= 0 && code <= 16 ? code : GRPC_STATUS_UNKNOWN;
}

/* Percentile by nearest rank of a sorted array, in microseconds. */
static double s_pct_us(const int64_t *v, size_t n, double p)
{
    if (n == 0)
        return 0;
    size_t k = (size_t)((double)n * p / 100.0 + 0.999999);
    if (k < 1)
        k = 1;
    if (k > n)
        k = n;
    return (double)v[k - 1] / 1000.0;
}

static int s_cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* Sorts v[0..n) and puts PREFIX_p50_us ... PREFIX_max_us. */
static void s_put_latency(const char *prefix, int64_t *v, size_t n, bool full)
{
    static const struct {
        const char *name;
        double p;
    } ps[] = {{"p50", 50}, {"p90", 90}, {"p99", 99}, {"p999", 99.9}, {"max", 100}};
    char key[48];
    qsort(v, n, sizeof *v, s_cmp_i64);
    snprintf(key, sizeof key, "%s_n", prefix);
    PUT_I(key, n);
    for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++) {
        if (!full && ps[i].p != 50 && ps[i].p != 99 && ps[i].p != 100)
            continue;
        snprintf(key, sizeof key, "%s_%s_us", prefix, ps[i].name);
        PUT_F(key, s_pct_us(v, n, ps[i].p), 0);
    }
}

/* ------------------------------------------------------- /proc readers */

/* A field of /proc/PID/status in KiB ("VmRSS:", "VmHWM:"), or -1. */
static int64_t s_proc_kib(int pid, const char *field)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    int64_t kib = -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, field, strlen(field))) {
            kib = strtoll(line + strlen(field), NULL, 10);
            break;
        }
    fclose(f);
    return kib;
}

/* ---------------------------------------------------------- the state */

typedef enum { K_UNARY, K_ST_START, K_ST_IMD, K_ST_MSG, K_ST_STATUS } s_kind;

/* A completion-queue tag: every outstanding batch has one, embedded in the
 * heap object it concerns, alive until the batch's completion. */
typedef struct s_tag {
    s_kind kind;
    void *p;
} s_tag;

typedef enum { M_SEND, M_ACK, M_PRESENCE, M_HEALTH, M_PROBE_SEND, M_COUNT } s_method;

static const char *const s_paths[M_COUNT] = {
    "/imbox.v1.Inbox/Send", "/imbox.v1.Inbox/Ack", "/imbox.v1.Inbox/Presence",
    "/grpc.health.v1.Health/Check", "/imbox.v1.Inbox/Send",
};
static const char *const s_method_names[M_COUNT] = {"send", "ack", "presence", "health",
                                                    "probe_send"};

#define PB_SUBSCRIBE "/imbox.v1.Inbox/Subscribe"

typedef struct s_stream s_stream;

/* One subscriber: a uid with its token, its current stream, what it has
 * received and what it still has to ack. */
typedef struct s_sub {
    uint32_t idx;
    char uid[64];
    char auth[IM_TOKEN_MAX + 8]; /* "Bearer <token>": lives as long as the bench */
    size_t auth_len;
    s_stream *st;                /* NULL when none is open (or it ended) */
    int channel;
    bool online;                 /* Presence said so for the current stream */
    bool any;                    /* has received a Delivery */
    uint64_t last_cseq;          /* position of the last cursor */
    int64_t last_time_ms;
    uint64_t max_seq;            /* highest bench seq received */
    char cursor[IM_CURSOR_MAX];  /* the last Delivery's cursor */
    uint32_t unacked;
    bool ack_inflight;
    int64_t last_ack_ns;
    uint32_t nstreams;           /* its streams not yet freed */
} s_sub;

/* One Subscribe call. Four batches: start (metadata, request, half-close),
 * initial metadata, status, and one RECV_MESSAGE re-armed on completion.
 * Freed when none is pending. */
struct s_stream {
    s_tag t_start, t_imd, t_msg, t_status;
    s_sub *sub;
    grpc_call *call;
    grpc_byte_buffer *req, *msg;
    grpc_metadata md;
    grpc_metadata_array imd, tmd;
    grpc_status_code status;
    grpc_slice details;
    const char *errstr;
    int pending;
    uint64_t cycle;  /* churn: the cycle it serves */
    int64_t open_ns;
    bool cancelled;  /* by us: its end is not an error */
    bool msgs_done;  /* RECV_MESSAGE gave NULL: do not re-arm */
};

/* One unary call: one batch of six ops, one completion. */
typedef struct s_unary {
    s_tag tag;
    s_method method;
    grpc_call *call;
    grpc_byte_buffer *req, *resp;
    grpc_metadata md;
    grpc_metadata_array imd, tmd;
    grpc_status_code status;
    grpc_slice details;
    const char *errstr;
    int64_t start_ns;
    uint64_t arg;   /* Send: the seq; Ack: the subscriber; probes: the index */
    uint32_t *ids;  /* Presence: the subscribers asked about (owned) */
    uint32_t nids;
} s_unary;

/* One message of the latency run. */
typedef struct s_msg {
    int64_t intended_ns, start_ns, receipt_ns, recv_ns;
    uint32_t sub;
    uint8_t delivered;
    bool receipt_ok;
} s_msg;

typedef struct s_probe {
    int64_t *health, *send;  /* latencies from the call's start, ns */
    size_t nhealth, nsend, cap;
    uint64_t errors;
} s_probe;

typedef struct pb {
    /* options */
    pb_mode mode;
    uint64_t cycles;
    bool cancel_at_start; /* churn: reset each stream as soon as it starts */
    bool no_token;        /* churn, with cancel_at_start: no authorization */
    const char *send_addr, *sub_addr, *data_dir;
    uint32_t nsubs;
    double rate, seconds;
    size_t content;
    uint32_t ack_every;
    int64_t ack_ns;        /* --ack-ms */
    uint32_t per_channel; /* 0 = one channel, spread when it stalls */
    int max_inflight;     /* Sends outstanding at most (latency mode) */
    int pids[PB_MAX_PIDS], npids, gw_pid;
    uint32_t probe_calls;
    double probe_rate;

    grpc_completion_queue *cq;
    im_secret secret;
    char run[41];
    grpc_channel *ch_send, *ch_ctl, *ch_sub[PB_MAX_CHANNELS];
    int nch;
    uint32_t *ch_open;        /* streams confirmed open per channel */
    s_sub *subs;
    char sender[64];
    char auth[IM_TOKEN_MAX + 8];
    size_t auth_len;

    int live_streams;
    _Atomic int inflight[M_COUNT]; /* Sends are started by the pacer thread */
    uint32_t online;
    uint32_t detected_limit;
    bool establishing;
    bool fatal;
    char why[512];

    /* latency run */
    s_msg *msgs;
    uint64_t nmsgs;
    _Atomic uint64_t nsent;   /* the pacer's; set before the Send starts */
    uint8_t *payload;
    uint64_t awaiting;        /* receipt OK, not delivered yet */
    uint64_t delivered, dup, unexpected, malformed, wrong_content, cursor_bad,
        order_bad, reordered, receipts_ok, receipt_offline, receipt_dup, receipt_bad,
        ack_calls, ack_deleted, streams_lost, initial_md;
    uint64_t status[M_COUNT][17];
    uint64_t receipt_codes[17];
    uint64_t stream_end[17];

    s_probe *probe;           /* the probe phase running, if any */

    /* churn run */
    int64_t *sub_ns;          /* per cycle: Subscribe to initial metadata */
    uint64_t churn_started, churn_opened;
    int32_t still_online;     /* the last count poll's answer; -1: none yet */
} pb;

/* Records an error that ends the run; later different ones are appended. */
static void s_fatal(pb *b, const char *fmt, ...)
{
    char msg[sizeof b->why];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (strstr(b->why, msg))
        return;
    size_t n = strlen(b->why);
    snprintf(b->why + n, sizeof b->why - n, "%s%s", b->fatal ? "; then " : "", msg);
    b->fatal = true;
}

/* ---------------------------------------------------------- encoding */

typedef bool (*s_enc_fn)(pb_ostream_t *os, const void *arg);

/* Encodes with fn into a new byte buffer (sizing pass, then write). */
static grpc_byte_buffer *s_encode(s_enc_fn fn, const void *arg)
{
    pb_ostream_t sizing = PB_OSTREAM_SIZING;
    if (!fn(&sizing, arg))
        abort(); /* our own requests: cannot fail */
    grpc_slice sl = grpc_slice_malloc(sizing.bytes_written);
    pb_ostream_t os = pb_ostream_from_buffer(GRPC_SLICE_START_PTR(sl), sizing.bytes_written);
    if (!fn(&os, arg))
        abort();
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&sl, 1);
    grpc_slice_unref(sl);
    return bb;
}

static bool s_put_bytes(pb_ostream_t *os, uint32_t tag, const void *p, size_t n)
{
    return n == 0 || (pb_encode_tag(os, PB_WT_STRING, tag) &&
                      pb_encode_string(os, (const pb_byte_t *)p, n));
}

typedef struct s_send_req {
    const char *msg_id, *to;
    const uint8_t *content;
    size_t content_len;
} s_send_req;

static bool s_enc_send(pb_ostream_t *os, const void *arg)
{
    const s_send_req *r = arg;
    return s_put_bytes(os, imbox_v1_SendRequest_msg_id_tag, r->msg_id, strlen(r->msg_id)) &&
           s_put_bytes(os, imbox_v1_SendRequest_receiver_uids_tag, r->to, strlen(r->to)) &&
           pb_encode_tag(os, PB_WT_VARINT, imbox_v1_SendRequest_msg_type_tag) &&
           pb_encode_varint(os, 1) &&
           s_put_bytes(os, imbox_v1_SendRequest_content_tag, r->content, r->content_len);
}

static bool s_enc_cursor(pb_ostream_t *os, const void *arg)
{
    /* AckRequest.cursor and SubscribeRequest.cursor are both field 1. */
    return s_put_bytes(os, imbox_v1_AckRequest_cursor_tag, arg, strlen(arg));
}

typedef struct s_presence_req {
    const pb *b;
    const uint32_t *ids;
    uint32_t n;
} s_presence_req;

static bool s_enc_presence(pb_ostream_t *os, const void *arg)
{
    const s_presence_req *r = arg;
    for (uint32_t i = 0; i < r->n; i++) {
        const char *u = r->b->subs[r->ids[i]].uid;
        if (!pb_encode_tag(os, PB_WT_STRING, imbox_v1_PresenceRequest_uids_tag) ||
            !pb_encode_string(os, (const pb_byte_t *)u, strlen(u)))
            return false;
    }
    return true;
}

/* Decodes bb into dest; false when it does not parse. */
static bool s_decode(grpc_byte_buffer *bb, const pb_msgdesc_t *fields, void *dest)
{
    grpc_byte_buffer_reader r;
    if (!grpc_byte_buffer_reader_init(&r, bb))
        return false;
    grpc_slice all = grpc_byte_buffer_reader_readall(&r);
    grpc_byte_buffer_reader_destroy(&r);
    pb_istream_t is = pb_istream_from_buffer(GRPC_SLICE_START_PTR(all), GRPC_SLICE_LENGTH(all));
    bool ok = pb_decode(&is, fields, dest);
    grpc_slice_unref(all);
    return ok;
}

/* ------------------------------------------------------------ channels */

grpc_channel *pb_channel(const char *addr)
{
    grpc_arg args[2];
    memset(args, 0, sizeof args);
    /* Each channel its own connection: channels with equal arguments share
     * subchannels (one TCP connection) by default. */
    args[0].type = GRPC_ARG_INTEGER;
    args[0].key = (char *)GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL;
    args[0].value.integer = 1;
    /* No retry machinery (it buffers every message sent): less client work. */
    args[1].type = GRPC_ARG_INTEGER;
    args[1].key = (char *)GRPC_ARG_ENABLE_RETRIES;
    args[1].value.integer = 0;
    grpc_channel_args ca = {2, args};
    grpc_channel_credentials *creds = grpc_insecure_credentials_create();
    grpc_channel *ch = grpc_channel_create(addr, creds, &ca);
    grpc_channel_credentials_release(creds);
    return ch;
}

static grpc_channel *s_channel(const char *addr)
{
    grpc_channel *ch = pb_channel(addr);
    if (!ch) {
        fprintf(stderr, "push: cannot create a channel to %s\n", addr);
        exit(1);
    }
    return ch;
}

static void s_batch(grpc_call *call, const grpc_op *ops, size_t n, void *tag)
{
    grpc_call_error e = grpc_call_start_batch(call, ops, n, tag, NULL);
    if (e != GRPC_CALL_OK) { /* a refused batch never completes: our bug */
        fprintf(stderr, "push: grpc_call_start_batch refused (%d)\n", (int)e);
        abort();
    }
}

/* ---------------------------------------------------------- unary calls */

/* Starts a unary call; takes ownership of req and ids. auth (may be NULL)
 * must outlive the call. */
static s_unary *s_unary_start(pb *b, grpc_channel *ch, s_method m, const char *auth,
                              size_t auth_len, grpc_byte_buffer *req, uint64_t arg)
{
    s_unary *u = calloc(1, sizeof *u);
    if (!u) {
        fprintf(stderr, "push: out of memory\n");
        exit(1);
    }
    u->tag = (s_tag){K_UNARY, u};
    u->method = m;
    u->req = req;
    u->arg = arg;
    u->details = grpc_empty_slice();
    grpc_metadata_array_init(&u->imd);
    grpc_metadata_array_init(&u->tmd);
    gpr_timespec deadline = gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                                         gpr_time_from_millis(PB_SEND_TIMEOUT_MS, GPR_TIMESPAN));
    u->call = grpc_channel_create_call(ch, NULL, GRPC_PROPAGATE_DEFAULTS, b->cq,
                                       grpc_slice_from_static_string(s_paths[m]), NULL,
                                       deadline, NULL);
    if (auth) {
        u->md.key = grpc_slice_from_static_string("authorization");
        u->md.value = grpc_slice_from_static_buffer(auth, auth_len);
    }
    grpc_op ops[6];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[0].data.send_initial_metadata.count = auth ? 1 : 0;
    ops[0].data.send_initial_metadata.metadata = auth ? &u->md : NULL;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = u->req;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &u->imd;
    ops[4].op = GRPC_OP_RECV_MESSAGE;
    ops[4].data.recv_message.recv_message = &u->resp;
    ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[5].data.recv_status_on_client.trailing_metadata = &u->tmd;
    ops[5].data.recv_status_on_client.status = &u->status;
    ops[5].data.recv_status_on_client.status_details = &u->details;
    ops[5].data.recv_status_on_client.error_string = &u->errstr;
    u->start_ns = s_now();
    s_batch(u->call, ops, 6, &u->tag);
    b->inflight[m]++;
    return u;
}

static void s_unary_free(s_unary *u)
{
    grpc_byte_buffer_destroy(u->req);
    if (u->resp)
        grpc_byte_buffer_destroy(u->resp);
    grpc_metadata_array_destroy(&u->imd);
    grpc_metadata_array_destroy(&u->tmd);
    grpc_slice_unref(u->details);
    gpr_free((void *)u->errstr);
    grpc_call_unref(u->call);
    free(u->ids);
    free(u);
}

/* Status details, or the transport's error string, as a C string. */
static void s_details(grpc_slice d, const char *errstr, char *out, size_t cap)
{
    size_t n = GRPC_SLICE_LENGTH(d);
    const char *src = (const char *)GRPC_SLICE_START_PTR(d);
    if (n == 0 && errstr) {
        src = errstr;
        n = strlen(errstr);
    }
    if (n >= cap)
        n = cap - 1;
    memcpy(out, src, n);
    out[n] = 0;
}

/* --------------------------------------------------------------- acks */

static void s_ack(pb *b, s_sub *s)
{
    grpc_byte_buffer *req = s_encode(s_enc_cursor, s->cursor);
    s_unary_start(b, b->ch_ctl, M_ACK, s->auth, s->auth_len, req, s->idx);
    s->ack_inflight = true;
    s->unacked = 0;
    s->last_ack_ns = s_now();
    b->ack_calls++;
}

static void s_on_ack(pb *b, s_unary *u)
{
    s_sub *s = &b->subs[u->arg];
    s->ack_inflight = false;
    if (u->status != GRPC_STATUS_OK || !u->resp)
        return;
    imbox_v1_AckResponse r = imbox_v1_AckResponse_init_zero;
    if (s_decode(u->resp, imbox_v1_AckResponse_fields, &r))
        b->ack_deleted += r.deleted;
    else
        b->malformed++;
}

/* Acks, for every subscriber with something unacked and no Ack in flight,
 * when --ack-every is reached (all = false) or its --ack-ms are up. */
static void s_ack_scan(pb *b, int64_t now, bool all)
{
    for (uint32_t i = 0; i < b->nsubs; i++) {
        s_sub *s = &b->subs[i];
        if (s->unacked && !s->ack_inflight &&
            (all || now - s->last_ack_ns >= b->ack_ns))
            s_ack(b, s);
    }
}

/* ---------------------------------------------------------- deliveries */

typedef struct s_content {
    int64_t ts;
    size_t len;
} s_content;

static bool s_dec_content(pb_istream_t *is, const pb_field_t *f, void **arg)
{
    (void)f;
    s_content *c = *arg;
    c->len = is->bytes_left;
    uint8_t head[8] = {0};
    size_t k = c->len < 8 ? c->len : 8;
    if (!pb_read(is, head, k) || !pb_read(is, NULL, is->bytes_left))
        return false;
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | head[i];
    c->ts = (int64_t)v;
    return true;
}

static void s_on_delivery(pb *b, s_sub *s, grpc_byte_buffer *bb, int64_t now)
{
    if (b->mode != PB_LATENCY) {
        b->unexpected++; /* a stream of an empty inbox got something */
        return;
    }
    imbox_v1_Delivery d = imbox_v1_Delivery_init_zero;
    s_content c = {0, 0};
    d.message.content.funcs.decode = s_dec_content;
    d.message.content.arg = &c;
    if (!s_decode(bb, imbox_v1_Delivery_fields, &d) || !d.has_message) {
        b->malformed++;
        return;
    }
    /* Whose message: msg_id "<run>-<seq>", sent by us, to this subscriber. */
    size_t rl = strlen(b->run);
    char *end = NULL;
    unsigned long long seq = ULLONG_MAX;
    if (!strncmp(d.message.msg_id, b->run, rl) && d.message.msg_id[rl] == '-') {
        errno = 0;
        seq = strtoull(d.message.msg_id + rl + 1, &end, 10);
        if (errno || !end || *end)
            seq = ULLONG_MAX;
    }
    if (seq >= b->nsent || b->msgs[seq].sub != s->idx || strcmp(d.message.receiver_uid, s->uid) ||
        strcmp(d.message.sender_uid, b->sender)) {
        b->unexpected++;
        return;
    }
    s_msg *m = &b->msgs[seq];
    if (c.len != b->content || c.ts != m->intended_ns)
        b->wrong_content++;
    if (m->delivered) {
        b->dup++;
        if (m->delivered < UINT8_MAX)
            m->delivered++;
    } else {
        m->delivered = 1;
        m->recv_ns = now;
        b->delivered++;
        if (m->receipt_ok)
            b->awaiting--;
    }
    if (s->any && (uint64_t)seq < s->max_seq)
        b->reordered++;
    else
        s->max_seq = seq;

    /* The cursor: a valid whole-inbox cursor of this subscriber, past the
     * previous one; and the stored time never goes back. */
    uint64_t cseq = 0;
    char scope[sizeof d.message.sender_uid]; /* > any uid + NUL (129 > 65) */
    size_t cl = strlen(d.cursor);
    if (cl >= sizeof s->cursor ||
        im_cursor_scope(&b->secret, s->uid, d.cursor, cl, &cseq, scope, NULL) || scope[0]) {
        b->cursor_bad++;
    } else {
        if (s->any && (cseq <= s->last_cseq || d.message.send_time_ms < s->last_time_ms))
            b->order_bad++;
        s->last_cseq = cseq;
        s->last_time_ms = d.message.send_time_ms;
        memcpy(s->cursor, d.cursor, cl + 1);
        s->unacked++;
    }
    s->any = true;
    if (s->unacked >= b->ack_every && !s->ack_inflight)
        s_ack(b, s);
}

/* ------------------------------------------------------------- streams */

static void s_stream_open(pb *b, s_sub *sub, int channel)
{
    s_stream *s = calloc(1, sizeof *s);
    if (!s) {
        fprintf(stderr, "push: out of memory\n");
        exit(1);
    }
    s->t_start = (s_tag){K_ST_START, s};
    s->t_imd = (s_tag){K_ST_IMD, s};
    s->t_msg = (s_tag){K_ST_MSG, s};
    s->t_status = (s_tag){K_ST_STATUS, s};
    s->sub = sub;
    s->details = grpc_empty_slice();
    grpc_metadata_array_init(&s->imd);
    grpc_metadata_array_init(&s->tmd);
    s->req = s_encode(s_enc_cursor, ""); /* SubscribeRequest{cursor: ""} */
    s->open_ns = s_now();
    s->md.key = grpc_slice_from_static_string("authorization");
    s->md.value = grpc_slice_from_static_buffer(sub->auth, sub->auth_len);
    s->call = grpc_channel_create_call(b->ch_sub[channel], NULL, GRPC_PROPAGATE_DEFAULTS, b->cq,
                                       grpc_slice_from_static_string(PB_SUBSCRIBE), NULL,
                                       gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    grpc_op ops[3];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[0].data.send_initial_metadata.count = sub->auth_len ? 1 : 0; /* 0: no token */
    ops[0].data.send_initial_metadata.metadata = &s->md;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = s->req;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    s_batch(s->call, ops, 3, &s->t_start);

    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[0].data.recv_initial_metadata.recv_initial_metadata = &s->imd;
    s_batch(s->call, ops, 1, &s->t_imd);

    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[0].data.recv_status_on_client.trailing_metadata = &s->tmd;
    ops[0].data.recv_status_on_client.status = &s->status;
    ops[0].data.recv_status_on_client.status_details = &s->details;
    ops[0].data.recv_status_on_client.error_string = &s->errstr;
    s_batch(s->call, ops, 1, &s->t_status);

    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_RECV_MESSAGE;
    ops[0].data.recv_message.recv_message = &s->msg;
    s_batch(s->call, ops, 1, &s->t_msg);

    s->pending = 4;
    sub->nstreams++;
    sub->st = s;
    sub->channel = channel;
    sub->online = false;
    b->live_streams++;
}

static void s_stream_cancel(s_stream *s)
{
    s->cancelled = true;
    grpc_call_cancel(s->call, NULL);
    if (s->sub->st == s)
        s->sub->st = NULL;
}

static void s_churn_next(pb *b, s_sub *s);

static void s_stream_done(pb *b, s_stream *s)
{
    if (--s->pending)
        return;
    s_sub *sub = s->sub;
    grpc_byte_buffer_destroy(s->req);
    grpc_metadata_array_destroy(&s->imd);
    grpc_metadata_array_destroy(&s->tmd);
    grpc_slice_unref(s->details);
    gpr_free((void *)s->errstr);
    grpc_call_unref(s->call);
    if (sub->st == s)
        sub->st = NULL;
    free(s);
    b->live_streams--;
    if (--sub->nstreams == 0 && b->mode == PB_CHURN && sub->idx < b->nsubs)
        s_churn_next(b, sub);
}

static void s_on_stream(pb *b, s_tag *t, bool ok)
{
    s_stream *s = t->p;
    switch (t->kind) {
    case K_ST_START:
        break;
    case K_ST_IMD:
        if (ok && !s->cancelled) {
            b->initial_md++;
            if (b->mode == PB_CHURN && s->sub->idx < b->nsubs) {
                b->sub_ns[s->cycle] = s_now() - s->open_ns;
                b->churn_opened++;
                s_stream_cancel(s);
            }
        }
        break;
    case K_ST_MSG:
        if (s->msg) {
            if (!s->cancelled && s->sub->st == s)
                s_on_delivery(b, s->sub, s->msg, s_now());
            grpc_byte_buffer_destroy(s->msg);
            s->msg = NULL;
            if (ok) {
                grpc_op op;
                memset(&op, 0, sizeof op);
                op.op = GRPC_OP_RECV_MESSAGE;
                op.data.recv_message.recv_message = &s->msg;
                s_batch(s->call, &op, 1, &s->t_msg);
                s->pending++;
            }
        }
        break;
    case K_ST_STATUS:
        if (!s->cancelled) {
            char d[256];
            s_details(s->details, s->errstr, d, sizeof d);
            b->stream_end[s_code_index(s->status)]++;
            b->streams_lost++;
            if (s->sub->online && b->online)
                b->online--;
            if (s->sub->online)
                b->ch_open[s->sub->channel]--;
            s->sub->online = false;
            if (b->establishing)
                s_fatal(b, "Subscribe on %s ended while opening: %s (%d) %s", b->sub_addr,
                        s_code_name(s->status), (int)s->status, d);
            else if (b->streams_lost == 1)
                fprintf(stderr, "push: a Subscribe stream ended: %s %s\n",
                        s_code_name(s->status), d);
            if (s->sub->st == s)
                s->sub->st = NULL;
        }
        break;
    default:
        assert(0);
    }
    s_stream_done(b, s);
}

/* ------------------------------------------------------------ presence */

/* Asks Presence about every subscriber of subs[lo..hi) with a stream not
 * yet confirmed. */
static void s_presence_poll(pb *b, uint32_t lo, uint32_t hi)
{
    uint32_t *ids = NULL, n = 0;
    for (uint32_t i = lo; i <= hi; i++) {
        if (i < hi && b->subs[i].st && !b->subs[i].online) {
            if (!ids && !(ids = malloc(PB_PRESENCE_CHUNK * sizeof *ids))) {
                fprintf(stderr, "push: out of memory\n");
                exit(1);
            }
            ids[n++] = i;
        }
        if (n && (n == PB_PRESENCE_CHUNK || i == hi)) {
            s_presence_req r = {b, ids, n};
            s_unary *u = s_unary_start(b, b->ch_ctl, M_PRESENCE, b->auth, b->auth_len,
                                       s_encode(s_enc_presence, &r), 0);
            u->ids = ids;
            u->nids = n;
            ids = NULL;
            n = 0;
        }
    }
}

static void s_on_presence(pb *b, s_unary *u)
{
    char d[256];
    if (u->status != GRPC_STATUS_OK) {
        s_details(u->details, u->errstr, d, sizeof d);
        s_fatal(b, "Presence on %s: %s (%d) %s", b->sub_addr, s_code_name(u->status),
                (int)u->status, d);
        return;
    }
    imbox_v1_PresenceResponse *r = calloc(1, sizeof *r);
    if (!r || !u->resp || !s_decode(u->resp, imbox_v1_PresenceResponse_fields, r) ||
        r->online_count != u->nids) {
        s_fatal(b, "Presence on %s: a malformed answer (%u flags for %u uids)", b->sub_addr,
                r ? (unsigned)r->online_count : 0, (unsigned)u->nids);
        free(r);
        return;
    }
    if (u->arg == PB_PRESENCE_COUNT) {
        b->still_online = 0;
        for (uint32_t i = 0; i < u->nids; i++)
            b->still_online += r->online[i] != 0;
        free(r);
        return;
    }
    for (uint32_t i = 0; i < u->nids; i++) {
        s_sub *s = &b->subs[u->ids[i]];
        if (r->online[i] && s->st && !s->online) {
            s->online = true;
            b->online++;
            b->ch_open[s->channel]++;
        }
    }
    free(r);
}

/* ---------------------------------------------------------- the pump */

static void s_on_send(pb *b, s_unary *u, int64_t now);
static void s_on_probe(pb *b, s_unary *u, int64_t now);

/* Waits for one completion until deadline_ns and handles it. Returns false
 * on timeout. */
static bool s_pump(pb *b, int64_t deadline_ns)
{
    int64_t wait = deadline_ns - s_now();
    gpr_timespec dl = gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                                   gpr_time_from_nanos(wait > 0 ? wait : 0, GPR_TIMESPAN));
    grpc_event ev = grpc_completion_queue_next(b->cq, dl, NULL);
    if (ev.type == GRPC_QUEUE_TIMEOUT)
        return false;
    assert(ev.type == GRPC_OP_COMPLETE);
    s_tag *t = ev.tag;
    if (t->kind != K_UNARY) {
        s_on_stream(b, t, ev.success != 0);
        return true;
    }
    s_unary *u = t->p;
    int64_t now = s_now();
    b->inflight[u->method]--;
    b->status[u->method][s_code_index(u->status)]++;
    switch (u->method) {
    case M_SEND:
        s_on_send(b, u, now);
        break;
    case M_ACK:
        s_on_ack(b, u);
        break;
    case M_PRESENCE:
        s_on_presence(b, u);
        break;
    case M_HEALTH:
    case M_PROBE_SEND:
        s_on_probe(b, u, now);
        break;
    default:
        assert(0);
    }
    s_unary_free(u);
    return true;
}

static int s_inflight(const pb *b)
{
    int n = 0;
    for (int m = 0; m < M_COUNT; m++)
        n += b->inflight[m];
    return n;
}

/* Pumps until now + ns (or a fatal error). */
static void s_idle_for(pb *b, int64_t ns)
{
    int64_t until = s_now() + ns;
    while (!b->fatal && s_now() < until)
        s_pump(b, until);
}

/* ------------------------------------------------------- opening streams */

static void s_channels_to(pb *b, int n)
{
    if (n > PB_MAX_CHANNELS) {
        fprintf(stderr, "push: more than %d channels needed\n", PB_MAX_CHANNELS);
        exit(1);
    }
    while (b->nch < n)
        b->ch_sub[b->nch++] = s_channel(b->sub_addr);
}

/* Opens one stream per subscriber and waits until Presence says every one
 * is online. All go on channel 0 unless --streams-per-channel is given.
 * When no new stream opens for PB_STALL_NS, the connection is taken to be
 * full: the number open on channel 0 is the limit, the others are cancelled
 * and reopened over new channels, that many per channel (once). Bounded by
 * PB_ESTABLISH_S. Returns 0, or -1 with b->why. */
static int s_establish(pb *b, double *secs)
{
    /* The first poll waits a little: a server that refuses Subscribe says
     * so at once, and that is the error worth reporting. */
    int64_t t0 = s_now(), last_progress = t0, next_poll = t0 + PB_PRESENCE_EVERY_NS / 4;
    uint32_t per = b->per_channel ? b->per_channel : b->nsubs;
    b->establishing = true;
    s_channels_to(b, (int)((b->nsubs + per - 1) / per));
    for (uint32_t i = 0; i < b->nsubs; i++)
        s_stream_open(b, &b->subs[i], (int)(i / per));
    uint32_t seen = 0;
    bool respread = false;
    while (!b->fatal && b->online < b->nsubs) {
        int64_t now = s_now();
        if (b->online > seen) {
            seen = b->online;
            last_progress = now;
        }
        if ((double)(now - t0) / 1e9 > PB_ESTABLISH_S) {
            s_fatal(b, "only %u of %u streams open after %.0f s", b->online, b->nsubs,
                    PB_ESTABLISH_S);
            break;
        }
        if (now - last_progress > PB_STALL_NS && b->inflight[M_PRESENCE] == 0) {
            uint32_t limit = b->ch_open[0];
            if (respread || b->per_channel || limit == 0 || b->nch != 1) {
                s_fatal(b, "stalled at %u of %u streams open (channels: %d)", b->online,
                        b->nsubs, b->nch);
                break;
            }
            respread = true;
            b->detected_limit = limit;
            uint32_t rest = b->nsubs - b->online;
            int more = (int)((rest + limit - 1) / limit);
            fprintf(stderr,
                    "push: one connection stopped at %u open streams (the server's "
                    "max concurrent streams?): reopening the other %u over %d more "
                    "channels\n",
                    limit, rest, more);
            int first = b->nch;
            s_channels_to(b, first + more);
            uint32_t k = 0;
            for (uint32_t i = 0; i < b->nsubs; i++) {
                s_sub *s = &b->subs[i];
                if (s->online)
                    continue;
                if (s->st)
                    s_stream_cancel(s->st);
                s_stream_open(b, s, first + (int)(k++ / limit));
            }
            last_progress = now;
            next_poll = now + PB_PRESENCE_EVERY_NS;
        }
        if (now >= next_poll && b->inflight[M_PRESENCE] == 0) {
            s_presence_poll(b, 0, b->nsubs);
            next_poll = now + PB_PRESENCE_EVERY_NS;
        }
        s_pump(b, next_poll);
    }
    /* On an error, a moment more to hear how the streams ended (the
     * Subscribe status is the useful part when Presence failed first). */
    for (int64_t until = s_now() + 2000000000LL;
         b->fatal && b->live_streams && !b->streams_lost && s_now() < until;)
        s_pump(b, until);
    b->establishing = false;
    *secs = (double)(s_now() - t0) / 1e9;
    if (b->fatal)
        return -1;
    uint32_t per_max = 0;
    for (int c = 0; c < b->nch; c++)
        if (b->ch_open[c] > per_max)
            per_max = b->ch_open[c];
    PUT_I("channels", b->nch);
    PUT_I("streams_per_channel_max", per_max);
    PUT_I("stream_limit_detected", b->detected_limit);
    PUT_F("establish_secs", *secs, 2);
    return 0;
}

/* Opens one stream for the spare subscriber subs[nsubs] and waits (at most
 * 10 s) until Presence says it is online, then closes it: a server that
 * cannot do Subscribe or Presence is found before the long phases.
 * Returns 0, or -1 with b->why. */
static int s_preflight(pb *b)
{
    s_sub *s = &b->subs[b->nsubs];
    s_channels_to(b, 1);
    b->establishing = true;
    s_stream_open(b, s, 0);
    int64_t until = s_now() + 10000000000LL, next_poll = s_now() + PB_PRESENCE_EVERY_NS / 4;
    while (!b->fatal && !s->online && s_now() < until) {
        if (s_now() >= next_poll && !b->inflight[M_PRESENCE]) {
            s_presence_poll(b, b->nsubs, b->nsubs + 1);
            next_poll = s_now() + PB_PRESENCE_EVERY_NS / 4;
        }
        s_pump(b, next_poll < until ? next_poll : until);
    }
    b->establishing = false;
    if (!b->fatal && !s->online)
        s_fatal(b, "a Subscribe stream on %s was not online (Presence) after 10 s", b->sub_addr);
    if (s->st)
        s_stream_cancel(s->st);
    for (int64_t end = s_now() + 2000000000LL;
         (b->live_streams || b->inflight[M_PRESENCE]) && s_now() < end;)
        s_pump(b, end);
    if (s->online) {
        s->online = false;
        b->online--;
        b->ch_open[s->channel]--;
    }
    b->initial_md = 0;
    return b->fatal ? -1 : 0;
}

/* Cancels every call and waits (bounded) until all completed. Returns 0,
 * or -1 when some did not complete in time (then nothing may be freed). */
static int s_teardown(pb *b)
{
    for (uint32_t i = 0; i < b->nsubs; i++)
        if (b->subs[i].st)
            s_stream_cancel(b->subs[i].st);
    int64_t until = s_now() + (int64_t)(PB_TEARDOWN_S * 1e9);
    while ((b->live_streams || s_inflight(b)) && s_now() < until)
        s_pump(b, until);
    if (b->live_streams || s_inflight(b)) {
        fprintf(stderr, "push: %d streams and %d calls still open after %.0f s\n",
                b->live_streams, s_inflight(b), PB_TEARDOWN_S);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------- latency mode */

/* Starts Send seq on the pacer thread. The message's fields and nsent are
 * published before the call starts, so the main thread, which may see its
 * delivery before this function returns, finds them. */
static void s_send(pb *b, uint64_t seq, int64_t intended)
{
    s_msg *m = &b->msgs[seq];
    m->sub = (uint32_t)(seq % b->nsubs);
    m->intended_ns = intended;
    char msg_id[64];
    snprintf(msg_id, sizeof msg_id, "%s-%" PRIu64, b->run, seq);
    uint64_t v = (uint64_t)intended;
    for (int i = 0; i < 8; i++, v >>= 8)
        b->payload[i] = (uint8_t)v;
    s_send_req r = {msg_id, b->subs[m->sub].uid, b->payload, b->content};
    grpc_byte_buffer *req = s_encode(s_enc_send, &r);
    m->start_ns = s_now();
    atomic_store(&b->nsent, seq + 1);
    s_unary_start(b, b->ch_send, M_SEND, b->auth, b->auth_len, req, seq);
}

/* The send schedule, on a thread of its own: seq n is due at t0 + n /
 * rate, and the thread sleeps until then with clock_nanosleep (the main
 * thread's completion-queue wait rounds up to whole milliseconds, which
 * made sends start up to ~1 ms late at 1,000/s). At most --max-inflight
 * Sends are outstanding: past that, a due send waits (its latency still
 * counts from the schedule) and is counted in held. Sending stops at
 * stop_ns; whatever is left is not_sent. */
typedef struct s_pacer {
    pb *b;
    int64_t t0, stop_ns;
    double period;
    uint64_t target;
    atomic_bool quit, done;
    uint64_t held;
    int inflight_max;
} s_pacer;

static void s_sleep_until(int64_t ns)
{
    struct timespec ts = {(time_t)(ns / 1000000000LL), (long)(ns % 1000000000LL)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

static void *s_pace(void *arg)
{
    s_pacer *p = arg;
    pb *b = p->b;
    uint64_t n = 0, held_seq = UINT64_MAX;
    while (n < p->target && !atomic_load(&p->quit)) {
        int64_t due = p->t0 + (int64_t)((double)n * p->period);
        int64_t now = s_now();
        if (due > now) {
            s_sleep_until(due);
            now = s_now();
        }
        if (now >= p->stop_ns)
            break;
        if (b->inflight[M_SEND] >= b->max_inflight) {
            if (held_seq != n) {
                held_seq = n;
                p->held++;
            }
            s_sleep_until(now + PB_HELD_WAIT_NS);
            continue;
        }
        s_send(b, n++, due);
        int inflight = b->inflight[M_SEND];
        if (inflight > p->inflight_max)
            p->inflight_max = inflight;
    }
    atomic_store(&p->done, true);
    return NULL;
}

typedef struct s_receipt_dec {
    imbox_v1_Receipt r;
    int n;
} s_receipt_dec;

static bool s_dec_receipt(pb_istream_t *is, const pb_field_t *f, void **arg)
{
    (void)f;
    s_receipt_dec *x = *arg;
    if (x->n++)
        PB_RETURN_ERROR(is, "more receipts than receivers");
    return pb_decode(is, imbox_v1_Receipt_fields, &x->r);
}

static void s_on_send(pb *b, s_unary *u, int64_t now)
{
    s_msg *m = &b->msgs[u->arg];
    m->receipt_ns = now;
    if (u->status != GRPC_STATUS_OK)
        return;
    s_receipt_dec x = {imbox_v1_Receipt_init_zero, 0};
    imbox_v1_SendResponse r = imbox_v1_SendResponse_init_zero;
    r.receipts.funcs.decode = s_dec_receipt;
    r.receipts.arg = &x;
    if (!u->resp || !s_decode(u->resp, imbox_v1_SendResponse_fields, &r) || x.n != 1) {
        b->malformed++;
        return;
    }
    b->receipt_codes[s_code_index(x.r.code)]++;
    if (x.r.code != 0) {
        b->receipt_bad++;
        return;
    }
    if (!x.r.online)
        b->receipt_offline++;
    if (x.r.duplicate)
        b->receipt_dup++;
    b->receipts_ok++;
    m->receipt_ok = true;
    if (!m->delivered)
        b->awaiting++;
}

static void s_put_status_errors(const pb *b, s_method m)
{
    for (int c = 1; c <= 16; c++)
        if (b->status[m][c]) {
            char key[64];
            snprintf(key, sizeof key, "%s_status_%s", s_method_names[m], s_code_name(c));
            PUT_I(key, b->status[m][c]);
        }
}

static int s_run_latency(pb *b)
{
    b->nmsgs = (uint64_t)(b->rate * b->seconds + 0.5);
    if (b->nmsgs == 0 || b->nmsgs > PB_MAX_MSGS) {
        fprintf(stderr, "push: rate x seconds must be 1..%llu\n", PB_MAX_MSGS);
        return 2;
    }
    b->msgs = calloc(b->nmsgs, sizeof *b->msgs);
    b->payload = calloc(1, b->content);
    if (!b->msgs || !b->payload) {
        fprintf(stderr, "push: out of memory\n");
        return 1;
    }
    b->ch_send = s_channel(b->send_addr);
    PUT_S("mode", "latency");
    PUT_S("send_addr", b->send_addr);
    PUT_S("sub_addr", b->sub_addr);
    PUT_I("subscribers", b->nsubs);
    PUT_F("rate_target", b->rate, 0);
    PUT_F("seconds", b->seconds, 1);
    PUT_I("content_bytes", b->content);
    PUT_I("ack_every", b->ack_every);
    PUT_I("ack_ms", b->ack_ns / 1000000);

    double est;
    if (s_establish(b, &est)) {
        PUT_S("error", b->why);
        PUT_I("ok", 0);
        return 1;
    }

    /* The send phase: open loop, paced by s_pace; this thread takes the
     * completions and acks. Sending stops at 2 x --seconds + 5 s. */
    int64_t cpu0[PB_MAX_PIDS], gen0 = bc_self_cpu_ns();
    for (int i = 0; i < b->npids; i++)
        cpu0[i] = bc_proc_cpu_ns(b->pids[i]);
    bc_threads *thr0 = b->npids ? bc_threads_read(b->pids, b->npids) : NULL;
    double period = 1e9 / b->rate;
    int64_t t0 = s_now() + 1000000, next_scan = t0, drain_until = 0;
    s_pacer pacer = {.b = b, .t0 = t0, .period = period, .target = b->nmsgs,
                     .stop_ns = t0 + (int64_t)((2 * b->seconds + 5) * 1e9)};
    atomic_init(&pacer.quit, false);
    atomic_init(&pacer.done, false);
    pthread_t pacer_thread;
    if (pthread_create(&pacer_thread, NULL, s_pace, &pacer)) {
        fprintf(stderr, "push: cannot start the pacer thread\n");
        return 1;
    }
    for (;;) {
        int64_t now = s_now();
        if (now >= next_scan) {
            s_ack_scan(b, now, false);
            next_scan = now + PB_ACK_SCAN_NS;
        }
        if (b->fatal)
            atomic_store(&pacer.quit, true);
        if (atomic_load(&pacer.done)) {
            if (!drain_until)
                drain_until = now + (int64_t)(PB_DRAIN_S * 1e9);
            /* Done when nothing is owed, or nothing can come any more. */
            if ((b->inflight[M_SEND] == 0 && (b->awaiting == 0 || b->live_streams == 0)) ||
                now >= drain_until || b->fatal)
                break;
        }
        int64_t wake = next_scan;
        if (drain_until && drain_until < wake)
            wake = drain_until;
        s_pump(b, wake);
    }
    pthread_join(pacer_thread, NULL);
    uint64_t held = pacer.held;
    int inflight_max = pacer.inflight_max;
    int64_t t_end = s_now(), gen1 = bc_self_cpu_ns();
    bc_threads *thr1 = b->npids ? bc_threads_read(b->pids, b->npids) : NULL;
    int64_t cpu_total = 0;
    bool cpu_ok = b->npids > 0;
    int64_t cpu_each[PB_MAX_PIDS];
    for (int i = 0; i < b->npids; i++) {
        int64_t c1 = bc_proc_cpu_ns(b->pids[i]);
        cpu_each[i] = c1 >= 0 && cpu0[i] >= 0 ? c1 - cpu0[i] : -1;
        if (cpu_each[i] < 0)
            cpu_ok = false;
        else
            cpu_total += cpu_each[i];
    }

    /* Final acks, so the inboxes end empty (not timed, bounded). */
    s_ack_scan(b, s_now(), true);
    int64_t until = s_now() + 3000000000LL;
    while (b->inflight[M_ACK] && s_now() < until) {
        s_pump(b, until);
        s_ack_scan(b, s_now(), true);
    }

    /* Figures. */
    int64_t last_start = 0;
    uint64_t missing = 0;
    int64_t *push = malloc((b->nsent + 1) * sizeof *push);
    int64_t *push_start = malloc((b->nsent + 1) * sizeof *push_start);
    int64_t *receipt = malloc((b->nsent + 1) * sizeof *receipt);
    int64_t *lag = malloc((b->nsent + 1) * sizeof *lag);
    if (!push || !push_start || !receipt || !lag) {
        fprintf(stderr, "push: out of memory\n");
        return 1;
    }
    size_t np = 0, nr = 0, nl = 0;
    for (uint64_t i = 0; i < b->nsent; i++) {
        s_msg *m = &b->msgs[i];
        if (m->start_ns > last_start)
            last_start = m->start_ns;
        lag[nl++] = m->start_ns - m->intended_ns;
        if (m->receipt_ns)
            receipt[nr++] = m->receipt_ns - m->intended_ns;
        if (m->delivered) {
            push_start[np] = m->recv_ns - m->start_ns;
            push[np++] = m->recv_ns - m->intended_ns;
        } else if (m->receipt_ok) {
            missing++;
        }
    }
    double send_secs = (double)(last_start - t0) / 1e9 + period / 1e9;
    double achieved = (double)b->nsent / send_secs;
    PUT_I("sent", b->nsent);
    PUT_I("not_sent", b->nmsgs - b->nsent);
    PUT_F("send_secs", send_secs, 3);
    PUT_F("rate_achieved", achieved, 0);
    PUT_I("sends_inflight_max", inflight_max);
    PUT_I("sends_held_by_inflight_cap", held);
    /* The offered load was not carried: what follows is an overload. */
    PUT_I("saturated", b->nsent < b->nmsgs || held > 0 || achieved < 0.95 * b->rate);
    PUT_I("delivered", b->delivered);
    PUT_F("delivered_per_s", (double)b->delivered / send_secs, 0);
    PUT_F("run_secs", (double)(t_end - t0) / 1e9, 3);
    s_put_latency("push", push, np, true);
    s_put_latency("push_start", push_start, np, false);
    s_put_latency("receipt", receipt, nr, false);
    s_put_latency("send_lag", lag, nl, false);
    free(push);
    free(push_start);
    free(receipt);
    free(lag);

    PUT_I("receipts_ok", b->receipts_ok);
    PUT_I("receipts_offline", b->receipt_offline);
    PUT_I("receipts_duplicate", b->receipt_dup);
    for (int c = 1; c <= 16; c++)
        if (b->receipt_codes[c]) {
            char key[64];
            snprintf(key, sizeof key, "receipt_code_%s", s_code_name(c));
            PUT_I(key, b->receipt_codes[c]);
        }
    s_put_status_errors(b, M_SEND);
    s_put_status_errors(b, M_ACK);
    s_put_status_errors(b, M_PRESENCE);
    PUT_I("ack_calls", b->ack_calls);
    PUT_F("acks_per_push", b->delivered ? (double)b->ack_calls / (double)b->delivered : 0, 2);
    PUT_I("ack_deleted", b->ack_deleted);
    PUT_I("missing", missing);
    PUT_I("deliveries_duplicate", b->dup);
    PUT_I("deliveries_unexpected", b->unexpected);
    PUT_I("deliveries_wrong_content", b->wrong_content);
    PUT_I("responses_malformed", b->malformed);
    PUT_I("cursors_invalid", b->cursor_bad);
    PUT_I("order_violations", b->order_bad);
    PUT_I("reordered_vs_send", b->reordered);
    PUT_I("streams_lost", b->streams_lost);
    for (int c = 0; c <= 16; c++)
        if (b->stream_end[c]) {
            char key[64];
            snprintf(key, sizeof key, "stream_end_%s", s_code_name(c));
            PUT_I(key, b->stream_end[c]);
        }
    if (b->npids) {
        for (int i = 0; i < b->npids; i++) {
            char key[64];
            snprintf(key, sizeof key, "server_cpu_ms_pid%d", b->pids[i]);
            PUT_F(key, cpu_each[i] / 1e6, 0);
        }
        if (cpu_ok) {
            PUT_F("server_cpu_ms", cpu_total / 1e6, 0);
            PUT_F("server_cpu_us_per_push",
                  b->delivered ? (double)cpu_total / 1e3 / (double)b->delivered : 0, 1);
        }
        /* Where it went, by thread kind, and the wake-ups it took. */
        int64_t ctx = bc_threads_put(thr0, thr1, "push", (double)b->delivered);
        if (thr0 && thr1 && b->delivered)
            PUT_F("server_ctx_switches_per_push", (double)ctx / (double)b->delivered, 2);
    }
    bc_threads_free(thr0);
    bc_threads_free(thr1);
    PUT_F("gen_cpu_ms", (gen1 - gen0) / 1e6, 0);
    PUT_F("gen_cpu_us_per_msg", b->nsent ? (double)(gen1 - gen0) / 1e3 / (double)b->nsent : 0,
          1);
    bool ok = !b->fatal && missing == 0 && b->dup == 0 && b->unexpected == 0 &&
              b->wrong_content == 0 && b->malformed == 0 && b->cursor_bad == 0 &&
              b->order_bad == 0 && b->receipt_bad == 0 && b->receipt_offline == 0 &&
              b->receipt_dup == 0 && b->receipts_ok == b->nsent && b->streams_lost == 0 &&
              b->status[M_ACK][0] == b->ack_calls;
    if (b->fatal)
        PUT_S("error", b->why);
    PUT_I("ok", ok);
    return ok ? 0 : 1;
}

/* ---------------------------------------------------------- idle mode */

static void s_on_probe(pb *b, s_unary *u, int64_t now)
{
    s_probe *p = b->probe;
    bool ok = u->status == GRPC_STATUS_OK && u->resp;
    if (ok && u->method == M_HEALTH) {
        /* HealthCheckResponse{status: SERVING} is the two bytes 08 01. */
        grpc_byte_buffer_reader r;
        ok = grpc_byte_buffer_reader_init(&r, u->resp);
        if (ok) {
            grpc_slice all = grpc_byte_buffer_reader_readall(&r);
            grpc_byte_buffer_reader_destroy(&r);
            ok = GRPC_SLICE_LENGTH(all) == 2 && GRPC_SLICE_START_PTR(all)[0] == 0x08 &&
                 GRPC_SLICE_START_PTR(all)[1] == 0x01;
            grpc_slice_unref(all);
        }
    } else if (ok) {
        s_receipt_dec x = {imbox_v1_Receipt_init_zero, 0};
        imbox_v1_SendResponse r = imbox_v1_SendResponse_init_zero;
        r.receipts.funcs.decode = s_dec_receipt;
        r.receipts.arg = &x;
        ok = s_decode(u->resp, imbox_v1_SendResponse_fields, &r) && x.n == 1 && x.r.code == 0;
    }
    if (!p)
        return;
    if (!ok) {
        p->errors++;
        return;
    }
    if (u->method == M_HEALTH)
        p->health[p->nhealth++] = now - u->start_ns;
    else
        p->send[p->nsend++] = now - u->start_ns;
}

/* n Health/Check and n Send calls, one of each every 1/rate s (open loop)
 * on the control channel; latencies from each call's start. */
static void s_probe_run(pb *b, const char *label)
{
    static uint64_t probe_seq;
    s_probe p = {0};
    p.cap = b->probe_calls;
    p.health = malloc((p.cap + 1) * sizeof *p.health);
    p.send = malloc((p.cap + 1) * sizeof *p.send);
    if (!p.health || !p.send) {
        fprintf(stderr, "push: out of memory\n");
        exit(1);
    }
    b->probe = &p;
    double period = 1e9 / b->probe_rate;
    int64_t t0 = s_now(), until = t0 + (int64_t)(period * p.cap) + 15000000000LL;
    uint32_t i = 0;
    uint8_t content[16] = {0};
    char to[64];
    snprintf(to, sizeof to, "%s-sink", b->run);
    while (!b->fatal) {
        int64_t now = s_now(), due = t0 + (int64_t)(period * i);
        if (i < p.cap && due <= now) {
            s_unary_start(b, b->ch_ctl, M_HEALTH, NULL, 0, grpc_raw_byte_buffer_create(NULL, 0),
                          i);
            char msg_id[64];
            snprintf(msg_id, sizeof msg_id, "%s-p%" PRIu64, b->run, probe_seq++);
            s_send_req r = {msg_id, to, content, sizeof content};
            s_unary_start(b, b->ch_ctl, M_PROBE_SEND, b->auth, b->auth_len,
                          s_encode(s_enc_send, &r), i);
            i++;
            continue;
        }
        if ((i == p.cap && !b->inflight[M_HEALTH] && !b->inflight[M_PROBE_SEND]) || now > until)
            break;
        s_pump(b, i < p.cap ? due : until);
    }
    /* Late completions (after the bound) are not counted. */
    b->probe = NULL;
    char key[64];
    snprintf(key, sizeof key, "%s_health", label);
    s_put_latency(key, p.health, p.nhealth, false);
    snprintf(key, sizeof key, "%s_send", label);
    s_put_latency(key, p.send, p.nsend, false);
    snprintf(key, sizeof key, "%s_probe_failed", label); /* refused, wrong or too late */
    PUT_I(key, 2 * (uint64_t)p.cap - p.nhealth - p.nsend);
    free(p.health);
    free(p.send);
}

/* The errors of a run without Sends of its own (idle, churn). */
static void s_put_stream_errors(pb *b)
{
    PUT_I("streams_lost", b->streams_lost);
    PUT_I("deliveries_unexpected", b->unexpected);
    s_put_status_errors(b, M_HEALTH);
    s_put_status_errors(b, M_PROBE_SEND);
    s_put_status_errors(b, M_PRESENCE);
}

/* The last figures of such a run: its error, if any, and ok. Returns the
 * exit code. */
static int s_put_ok(pb *b)
{
    if (b->fatal)
        PUT_S("error", b->why);
    bool ok = !b->fatal && b->streams_lost == 0 && b->unexpected == 0;
    PUT_I("ok", ok);
    return ok ? 0 : 1;
}

static int s_run_idle(pb *b)
{
    PUT_S("mode", "idle");
    PUT_S("sub_addr", b->sub_addr);
    PUT_I("subscribers", b->nsubs);
    if (b->gw_pid)
        PUT_I("gateway_pid", b->gw_pid);
    if (b->nsubs && s_preflight(b))
        goto out;
    int64_t rss0 = -1;
    s_probe_run(b, "base");
    if (b->fatal)
        goto out;
    if (b->gw_pid)
        rss0 = s_proc_kib(b->gw_pid, "VmRSS:"); /* after the probes' connection */

    double est = 0;
    if (b->nsubs && s_establish(b, &est))
        goto out;
    int64_t t_open = s_now();
    PUT_I("streams_with_initial_metadata", b->initial_md);
    s_idle_for(b, 1000000000LL); /* let allocations settle */
    int64_t rss1 = b->gw_pid ? s_proc_kib(b->gw_pid, "VmRSS:") : -1;
    /* A quiet window of --seconds (no call at all): what the open streams
     * cost the gateway by themselves (keepalive, presence lease renewal). */
    int64_t gcpu0 = b->gw_pid ? bc_proc_cpu_ns(b->gw_pid) : -1, q0 = s_now();
    s_idle_for(b, (int64_t)(b->seconds * 1e9));
    int64_t gcpu1 = b->gw_pid ? bc_proc_cpu_ns(b->gw_pid) : -1, quiet = s_now() - q0;
    s_probe_run(b, "idle");
    int64_t held = s_now() - t_open;
    int64_t rss2 = b->gw_pid ? s_proc_kib(b->gw_pid, "VmRSS:") : -1;
    PUT_F("held_secs", held / 1e9, 1);
    if (b->gw_pid) {
        PUT_I("rss_before_kib", rss0);
        PUT_I("rss_open_kib", rss1);
        PUT_I("rss_end_kib", rss2);
        if (b->nsubs && rss0 >= 0 && rss1 >= 0)
            PUT_F("rss_per_stream_kib", (double)(rss1 - rss0) / b->nsubs, 2);
        if (gcpu0 >= 0 && gcpu1 >= 0 && quiet > 0) {
            PUT_F("quiet_secs", quiet / 1e9, 1);
            PUT_F("gateway_cpu_ms_quiet", (gcpu1 - gcpu0) / 1e6, 0);
            PUT_F("gateway_cpu_pct_quiet", 100.0 * (double)(gcpu1 - gcpu0) / (double)quiet, 2);
        }
    }
    s_put_stream_errors(b);
out:
    return s_put_ok(b);
}

/* ---------------------------------------------------------------- run */

static int s_make_auth(const im_secret *sec, const char *uid, char *out, size_t *len)
{
    char tok[IM_TOKEN_MAX];
    if (im_token_make(sec, uid, (int64_t)time(NULL) + PB_TOKEN_TTL_S, tok, sizeof tok))
        return -1;
    *len = (size_t)snprintf(out, IM_TOKEN_MAX + 8, "Bearer %s", tok);
    return 0;
}

/* ---------------------------------------------------------- churn mode */

/* Starts the next cycle on slot s, whose last stream is gone: a fresh uid,
 * its token, a Subscribe from the "" cursor, cancelled as soon as its
 * initial metadata arrives (s_on_stream) or, with cancel_at_start, at once
 * (the client sends HEADERS and DATA, then RST_STREAM). */
static void s_churn_next(pb *b, s_sub *s)
{
    if (b->fatal || b->churn_started == b->cycles)
        return;
    uint64_t n = b->churn_started++;
    snprintf(s->uid, sizeof s->uid, "%.40s-c%" PRIu64, b->run, n);
    if (b->no_token)
        s->auth_len = 0;
    else if (s_make_auth(&b->secret, s->uid, s->auth, &s->auth_len)) {
        s_fatal(b, "cannot make a token for %s", s->uid);
        return;
    }
    s_stream_open(b, s, 0);
    s->st->cycle = n;
    if (b->cancel_at_start) {
        b->churn_opened++;
        s_stream_cancel(s->st);
    }
}

/* Sums the CPU time of the --server-pids; -1 when one cannot be read. */
static int64_t s_servers_cpu_ns(const pb *b)
{
    int64_t sum = 0;
    for (int i = 0; i < b->npids; i++) {
        int64_t ns = bc_proc_cpu_ns(b->pids[i]);
        if (ns < 0)
            return -1;
        sum += ns;
    }
    return sum;
}

/* Puts KEY as the comma-separated VmRSS (KiB) of the --server-pids. */
static void s_put_rss_list(const pb *b, const char *key)
{
    char list[PB_MAX_PIDS * 12 + 1] = "";
    size_t n = 0;
    for (int i = 0; i < b->npids && n < sizeof list; i++)
        n += (size_t)snprintf(list + n, sizeof list - n, "%s%" PRId64, i ? "," : "",
                              s_proc_kib(b->pids[i], "VmRSS:"));
    PUT_S(key, list);
}

/* Waits until Presence says none of the slots' last uids is online, at most
 * PB_OFFLINE_S. Returns the seconds it took, or -1. */
static double s_wait_offline(pb *b)
{
    uint32_t *ids = malloc(b->nsubs * sizeof *ids);
    if (!ids) {
        fprintf(stderr, "push: out of memory\n");
        exit(1);
    }
    for (uint32_t i = 0; i < b->nsubs; i++)
        ids[i] = i;
    int64_t t0 = s_now(), until = t0 + (int64_t)(PB_OFFLINE_S * 1e9);
    double took = -1;
    while (!b->fatal && s_now() < until) {
        b->still_online = -1;
        s_presence_req r = {b, ids, b->nsubs};
        s_unary *u = s_unary_start(b, b->ch_ctl, M_PRESENCE, b->auth, b->auth_len,
                                   s_encode(s_enc_presence, &r), PB_PRESENCE_COUNT);
        u->nids = b->nsubs; /* ids stay ours */
        while (!b->fatal && b->inflight[M_PRESENCE] && s_now() < until)
            s_pump(b, until);
        if (b->still_online == 0) {
            took = (double)(s_now() - t0) / 1e9;
            break;
        }
        s_idle_for(b, 20000000LL);
    }
    free(ids);
    return took;
}

static int s_run_churn(pb *b)
{
    PUT_S("mode", "churn");
    PUT_S("sub_addr", b->sub_addr);
    PUT_I("cycles", b->cycles);
    PUT_I("concurrent", b->nsubs);
    PUT_S("cancel_at", b->cancel_at_start ? "start" : "open");
    PUT_I("token", !b->no_token);
    /* Reset at start, a stream has no latency to keep. */
    if (!b->cancel_at_start && !(b->sub_ns = malloc(b->cycles * sizeof *b->sub_ns))) {
        fprintf(stderr, "push: out of memory\n");
        return 1;
    }
    if (s_preflight(b))
        goto out;
    s_probe_run(b, "base");
    if (b->fatal)
        goto out;
    int64_t trace[11];
    int ntrace = 0;
    if (b->gw_pid)
        trace[ntrace++] = s_proc_kib(b->gw_pid, "VmRSS:");
    if (b->npids)
        s_put_rss_list(b, "servers_rss_before_kib");

    /* The churn: nsubs streams at a time, each a fresh uid, each cancelled
     * once its initial metadata (the lease is in place) has arrived, and
     * its slot's next cycle started once it is gone. A stream that ends by
     * itself is an error (establishing makes it fatal). */
    int64_t cpu0 = s_servers_cpu_ns(b), t0 = s_now(), last = t0;
    uint64_t seen = 0;
    b->establishing = true;
    for (uint32_t i = 0; i < b->nsubs; i++)
        s_churn_next(b, &b->subs[i]);
    while (!b->fatal && (b->live_streams || b->churn_started < b->cycles)) {
        int64_t now = s_now();
        if (b->churn_opened > seen) {
            seen = b->churn_opened;
            last = now;
        } else if (now - last > PB_CHURN_STALL_NS) {
            s_fatal(b, "churn stalled at %" PRIu64 " of %" PRIu64 " Subscribes answered",
                    b->churn_opened, b->cycles);
            break;
        }
        s_pump(b, now + 1000000000LL);
        while (b->gw_pid && ntrace < 11 &&
               b->churn_opened >= (uint64_t)ntrace * b->cycles / 10)
            trace[ntrace++] = s_proc_kib(b->gw_pid, "VmRSS:");
    }
    b->establishing = false;
    int64_t churn_ns = s_now() - t0, cpu1 = s_servers_cpu_ns(b);
    if (b->fatal)
        goto out;
    if (!b->cancel_at_start)
        PUT_I("subscribes_answered", b->churn_opened);
    PUT_F("churn_secs", churn_ns / 1e9, 2);
    PUT_F("cycles_per_sec", (double)b->churn_opened / (churn_ns / 1e9), 0);
    if (cpu0 >= 0 && cpu1 >= 0)
        PUT_F("server_cpu_us_per_cycle", (double)(cpu1 - cpu0) / 1e3 / (double)b->cycles, 1);
    /* Whether the latency drifts with the history: the first and the last
     * tenth apart (s_put_latency sorts, so the whole run last). */
    uint64_t tenth = b->cycles / 10 ? b->cycles / 10 : 1;
    if (!b->cancel_at_start) {
        s_put_latency("subscribe_first10pct", b->sub_ns, tenth, false);
        s_put_latency("subscribe_last10pct", b->sub_ns + (b->cycles - tenth), tenth, false);
        s_put_latency("subscribe", b->sub_ns, b->cycles, true);
    }
    double off = s_wait_offline(b);
    if (off < 0)
        s_fatal(b, "cancelled streams' uids still online after %.0f s", PB_OFFLINE_S);
    else
        PUT_F("offline_after_last_cancel_ms", off * 1e3, 0);
    if (b->gw_pid) {
        char list[11 * 12 + 1] = "";
        size_t n = 0;
        for (int i = 0; i < ntrace; i++)
            n += (size_t)snprintf(list + n, sizeof list - n, "%s%" PRId64, i ? "," : "",
                                  trace[i]);
        PUT_S("gateway_rss_trace_kib", list); /* before, then at each tenth */
    }
    if (b->npids)
        s_put_rss_list(b, "servers_rss_after_kib");
    /* Leases lapse and registries empty within a few seconds: memory that
     * is still held after --seconds is what the history left behind. */
    s_idle_for(b, (int64_t)(b->seconds * 1e9));
    if (b->gw_pid) {
        PUT_I("gateway_rss_settled_kib", s_proc_kib(b->gw_pid, "VmRSS:"));
        PUT_I("gateway_rss_peak_kib", s_proc_kib(b->gw_pid, "VmHWM:")); /* its life's */
    }
    if (b->npids)
        s_put_rss_list(b, "servers_rss_settled_kib");
    s_probe_run(b, "after");
    s_put_stream_errors(b);
out:
    return s_put_ok(b);
}

int pb_run(const pb_args *a, pb_put_fn put)
{
    static pb bench;
    pb *b = &bench;
    memset(b, 0, sizeof *b);
    s_sink = put;
    b->mode = a->mode;
    b->cycles = a->cycles;
    b->cancel_at_start = a->cancel_at_start;
    b->no_token = a->no_token;
    b->send_addr = a->send_addr;
    b->sub_addr = a->sub_addr;
    b->data_dir = a->data_dir;
    b->nsubs = a->nsubs;
    b->rate = a->rate;
    b->seconds = a->seconds;
    b->content = a->content;
    b->ack_every = a->ack_every;
    b->ack_ns = (int64_t)(a->ack_ms ? a->ack_ms : PB_ACK_MS_DEFAULT) * 1000000;
    b->per_channel = a->per_channel;
    b->max_inflight = a->max_inflight;
    b->gw_pid = a->gw_pid;
    b->probe_calls = a->probe_calls;
    b->probe_rate = a->probe_rate;
    if (a->npids > PB_MAX_PIDS) {
        fprintf(stderr, "push: at most %d server pids\n", PB_MAX_PIDS);
        return 2;
    }
    for (int i = 0; i < a->npids; i++)
        b->pids[b->npids++] = a->pids[i];
    bool latency = b->mode == PB_LATENCY, churn = b->mode == PB_CHURN;
    if (!b->sub_addr || !b->data_dir || (latency && !b->send_addr) ||
        (latency && b->nsubs == 0) ||
        (churn && (b->nsubs == 0 || b->nsubs > PB_PRESENCE_CHUNK || b->cycles == 0 ||
                   b->cycles > PB_MAX_MSGS || (b->no_token && !b->cancel_at_start))) ||
        b->content < 8 || b->ack_every < 1 ||
        b->max_inflight < 1 || b->rate <= 0 || b->probe_calls < 1 || b->probe_rate <= 0) {
        fprintf(stderr, "push: bad arguments (the latency mode needs a send address, "
                        "at least 1 subscriber, content of 8 bytes or more; the churn "
                        "mode 1 to %d subscribers and 1 to %llu cycles, and --no-token "
                        "only with --cancel-at start)\n",
                PB_PRESENCE_CHUNK, PB_MAX_MSGS);
        return 2;
    }

    /* The secret must exist: im_secret_load_or_create would make a new one
     * that no server knows. */
    char path[PATH_MAX], err[256];
    snprintf(path, sizeof path, "%s/%s", b->data_dir, IM_SECRET_FILE);
    if (access(path, R_OK)) {
        fprintf(stderr, "push: %s: %s (--data-dir must hold the servers' secret)\n", path,
                strerror(errno));
        return 1;
    }
    if (im_secret_load_or_create(b->data_dir, &b->secret, err, sizeof err)) {
        fprintf(stderr, "push: %s\n", err);
        return 1;
    }

    /* Fresh uids per run: every inbox starts empty. */
    if (a->run_id)
        snprintf(b->run, sizeof b->run, "%s", a->run_id);
    else
        snprintf(b->run, sizeof b->run, "pb%lx%x", (unsigned long)time(NULL),
                 (unsigned)getpid());
    snprintf(b->sender, sizeof b->sender, "%.40s-snd", b->run);
    if (s_make_auth(&b->secret, b->sender, b->auth, &b->auth_len))
        return 1;
    b->subs = calloc(b->nsubs + 1, sizeof *b->subs); /* + the preflight's */
    b->ch_open = calloc(PB_MAX_CHANNELS, sizeof *b->ch_open);
    if (!b->subs || !b->ch_open) {
        fprintf(stderr, "push: out of memory\n");
        free(b->subs);
        free(b->ch_open);
        return 1;
    }
    for (uint32_t i = 0; i <= b->nsubs; i++) {
        s_sub *s = &b->subs[i];
        s->idx = i;
        snprintf(s->uid, sizeof s->uid, "%.40s-s%u", b->run, (unsigned)i);
        if (s_make_auth(&b->secret, s->uid, s->auth, &s->auth_len))
            return 1;
    }

    grpc_init();
    b->cq = grpc_completion_queue_create_for_next(NULL);
    b->ch_ctl = s_channel(b->sub_addr);
    int rc = latency ? s_run_latency(b) : churn ? s_run_churn(b) : s_run_idle(b);
    if (b->fatal)
        fprintf(stderr, "push: %s\n", b->why);
    if (s_teardown(b))
        return rc == 0 ? 1 : rc; /* calls still pending: leave the rest to the exit */
    for (int c = 0; c < b->nch; c++)
        grpc_channel_destroy(b->ch_sub[c]);
    grpc_channel_destroy(b->ch_ctl);
    if (b->ch_send)
        grpc_channel_destroy(b->ch_send);
    grpc_completion_queue_shutdown(b->cq);
    while (grpc_completion_queue_next(b->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
           GRPC_QUEUE_SHUTDOWN) {
    }
    grpc_completion_queue_destroy(b->cq);
    grpc_shutdown();
    free(b->subs);
    free(b->ch_open);
    free(b->msgs);
    free(b->payload);
    free(b->sub_ns);
    return rc;
}
