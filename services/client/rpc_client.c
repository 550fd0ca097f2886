/*
 * rpc_client.c - synchronous unary calls to imbox.v1.Inbox over the gRPC C
 * core, with nanopb for the messages.
 *
 * One call = one grpc_call on the client's channel, with a pluck completion
 * queue of its own (so that calls from several threads never see each
 * other's events) and one batch of six ops:
 *
 *   SEND_INITIAL_METADATA (authorization, when the client has a token)
 *   SEND_MESSAGE, SEND_CLOSE_FROM_CLIENT
 *   RECV_INITIAL_METADATA, RECV_MESSAGE, RECV_STATUS_ON_CLIENT
 *
 * The batch always completes (the call deadline bounds it), after which
 * everything the core handed us is released: the response byte buffer, both
 * metadata arrays, the details slice, the error string, the call, the queue.
 *
 * A Subscribe stream (rpc_stream) is a call with a next-queue of its own
 * and up to three accepted batches at a time, each tagged with the address
 * of its own field of the stream:
 *
 *   t_start   SEND_INITIAL_METADATA, SEND_MESSAGE, SEND_CLOSE_FROM_CLIENT,
 *             RECV_INITIAL_METADATA                       (once, at start)
 *   t_status  RECV_STATUS_ON_CLIENT                        (once, at start)
 *   t_msg     RECV_MESSAGE             (one at a time, by rpc_stream_next)
 *
 * A *_pending flag per tag says whether its batch is accepted and not yet
 * dequeued; rpc_stream_close cancels the call and drains the queue until
 * none is, so no tag outlives the stream and every received buffer is
 * destroyed. The stream is over, for rpc_stream_next, when the status has
 * arrived and no read is pending and either a read returned no message (the
 * server is done) or we stopped reading (cancel, or a Delivery that broke
 * the contract); messages behind a status are still delivered first.
 *
 * Requests are encoded by hand with nanopb's primitives (two passes: size,
 * then write) instead of the generated static structs, so that what the
 * caller gives reaches the server unchanged, over-limit fields included: the
 * server names the field and the limit. Responses are decoded with the
 * generated descriptors; their repeated fields and Message.content are
 * callbacks (imbox.options) that enforce the bounds listed in the header.
 */
#include "rpc_client.h"

#include <assert.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>

#include <pb_decode.h>
#include <pb_encode.h>

#include "imbox/v1/imbox.pb.h"

_Static_assert(sizeof(((imbox_v1_PullResponse *)0)->cursor) <= RPC_CURSOR_CAP,
               "rpc_page.cursor must hold any decoded cursor");
_Static_assert(sizeof(((imbox_v1_Delivery *)0)->cursor) <= RPC_CURSOR_CAP,
               "rpc_delivery.cursor must hold any decoded cursor");
_Static_assert(sizeof(((imbox_v1_Receipt *)0)->receiver_uid) ==
                       sizeof(((rpc_receipt *)0)->receiver_uid) &&
                   sizeof(((imbox_v1_Receipt *)0)->error) ==
                       sizeof(((rpc_receipt *)0)->error) &&
                   sizeof(((imbox_v1_SenderCount *)0)->sender_uid) ==
                       sizeof(((rpc_sender_count *)0)->sender_uid),
               "rpc_client.h strings mirror imbox.options");

/* Reconnect back-off (initial, max): a restarted server is found again
 * within a second or two instead of gRPC's default of up to two minutes. */
#define S_RECONNECT_MIN_MS 100
/* Keepalive while a call is open (a Subscribe stream may be silent for
 * hours): a ping after 20 s without traffic, the connection dropped when it
 * is not answered in 10 s, so a vanished server ends the stream instead of
 * leaving it waiting for ever. The server accepts pings 5 s apart or more. */
#define S_KEEPALIVE_MS 20000
#define S_KEEPALIVE_TIMEOUT_MS 10000
#define S_RECONNECT_MAX_MS 1000

struct rpc_client {
    grpc_channel *channel;
    char *auth;        /* "Bearer <token>", NULL for no metadata */
    size_t auth_len;
};

static pthread_once_t s_init_once = PTHREAD_ONCE_INIT;

static void s_grpc_init(void)
{
    grpc_init();
}

const char *rpc_code_name(int code)
{
    static const char *const names[] = {
        "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
        "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
        "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE",
        "DATA_LOSS", "UNAUTHENTICATED",
    };
    if (code < 0 || code >= (int)(sizeof names / sizeof names[0]))
        return "UNKNOWN";
    return names[code];
}

static grpc_status_code s_fail(rpc_error *err, grpc_status_code code,
                               const char *fmt, ...)
{
    if (err) {
        va_list ap;
        err->code = code;
        va_start(ap, fmt);
        vsnprintf(err->details, sizeof err->details, fmt, ap);
        va_end(ap);
    }
    return code;
}

/* ----------------------------------------------------------- the client */

rpc_client *rpc_client_new(const char *addr, const char *token)
{
    return rpc_client_new_tls(addr, token, NULL);
}

rpc_client *rpc_client_new_tls(const char *addr, const char *token, const rpc_tls *tls)
{
    assert(addr);
    if (tls && !tls->cert_pem != !tls->key_pem)
        return NULL;
    pthread_once(&s_init_once, s_grpc_init);

    rpc_client *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    if (token) {
        c->auth_len = strlen("Bearer ") + strlen(token);
        c->auth = malloc(c->auth_len + 1);
        if (!c->auth) {
            free(c);
            return NULL;
        }
        snprintf(c->auth, c->auth_len + 1, "Bearer %s", token);
        if (!grpc_header_nonbin_value_is_legal(
                grpc_slice_from_static_buffer(c->auth, c->auth_len))) {
            free(c->auth);
            free(c);
            return NULL;
        }
    }

    grpc_arg args[8];
    memset(args, 0, sizeof args);
    args[0].type = GRPC_ARG_INTEGER;
    args[0].key = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
    args[0].value.integer = RPC_RECV_MAX;
    /* A channel of our own subchannels: a server restarted on the same port
     * is not hidden behind another client's back-off. */
    args[1].type = GRPC_ARG_INTEGER;
    args[1].key = GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL;
    args[1].value.integer = 1;
    /* Not GRPC_ARG_MIN_RECONNECT_BACKOFF_MS: gRPC core takes it as the
     * minimum *connect timeout* too, and at 100 ms a handshake on a loaded
     * machine was cut short ("handshaker shutdown", "timed out before
     * receiving SETTINGS frame"). The initial backoff is what reconnects
     * fast; the connect timeout stays gRPC's 20 s. */
    args[2].type = GRPC_ARG_INTEGER;
    args[2].key = GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA; /* keep pinging a silent stream */
    args[2].value.integer = 0;
    args[3].type = GRPC_ARG_INTEGER;
    args[3].key = GRPC_ARG_MAX_RECONNECT_BACKOFF_MS;
    args[3].value.integer = S_RECONNECT_MAX_MS;
    args[4].type = GRPC_ARG_INTEGER;
    args[4].key = GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS;
    args[4].value.integer = S_RECONNECT_MIN_MS;
    args[5].type = GRPC_ARG_INTEGER;
    args[5].key = GRPC_ARG_KEEPALIVE_TIME_MS;
    args[5].value.integer = S_KEEPALIVE_MS;
    args[6].type = GRPC_ARG_INTEGER;
    args[6].key = GRPC_ARG_KEEPALIVE_TIMEOUT_MS;
    args[6].value.integer = S_KEEPALIVE_TIMEOUT_MS;
    grpc_channel_args ca = {7, args};
    if (tls && tls->server_name) {
        args[7].type = GRPC_ARG_STRING;
        args[7].key = GRPC_SSL_TARGET_NAME_OVERRIDE_ARG;
        args[7].value.string = (char *)tls->server_name;
        ca.num_args = 8;
    }

    grpc_channel_credentials *creds;
    if (tls) {
        grpc_ssl_pem_key_cert_pair pair = {tls->key_pem, tls->cert_pem};
        creds = grpc_ssl_credentials_create(tls->ca_pem, tls->cert_pem ? &pair : NULL, NULL,
                                            NULL);
    } else {
        creds = grpc_insecure_credentials_create();
    }
    if (!creds) {
        free(c->auth);
        free(c);
        return NULL;
    }
    c->channel = grpc_channel_create(addr, creds, &ca);
    grpc_channel_credentials_release(creds);
    if (!c->channel) {
        free(c->auth);
        free(c);
        return NULL;
    }
    return c;
}

void rpc_client_destroy(rpc_client **c)
{
    if (!c || !*c)
        return;
    grpc_channel_destroy((*c)->channel);
    free((*c)->auth);
    free(*c);
    *c = NULL;
}

/* ------------------------------------------------------------- one call */

/* Copies a byte buffer (decompressed) into malloc'ed memory. */
static uint8_t *s_buffer_copy(grpc_byte_buffer *bb, size_t *len)
{
    grpc_byte_buffer_reader reader;
    *len = 0;
    if (!grpc_byte_buffer_reader_init(&reader, bb))
        return NULL;
    grpc_slice all = grpc_byte_buffer_reader_readall(&reader);
    grpc_byte_buffer_reader_destroy(&reader);
    size_t n = GRPC_SLICE_LENGTH(all);
    uint8_t *out = malloc(n ? n : 1);
    if (out) {
        memcpy(out, GRPC_SLICE_START_PTR(all), n);
        *len = n;
    }
    grpc_slice_unref(all);
    return out;
}

/* Fills err with a received status: its details, or when they are empty
 * and the status is not OK, the core's error string (e.g. why the
 * connection failed). */
static void s_status_to_error(rpc_error *err, grpc_status_code status,
                              grpc_slice details, const char *error_string)
{
    err->code = status;
    size_t n = GRPC_SLICE_LENGTH(details);
    const char *src = (const char *)GRPC_SLICE_START_PTR(details);
    if (n == 0 && status != GRPC_STATUS_OK && error_string) {
        src = error_string;
        n = strlen(error_string);
    }
    if (n >= sizeof err->details)
        n = sizeof err->details - 1;
    memcpy(err->details, src, n);
    err->details[n] = '\0';
}

/* The authorization metadata of c, in md; the count to send (0 or 1). The
 * value points into c, which outlives every call and stream made from it. */
static size_t s_auth_md(const rpc_client *c, grpc_metadata *md)
{
    memset(md, 0, sizeof *md);
    if (!c->auth)
        return 0;
    md->key = grpc_slice_from_static_string("authorization");
    md->value = grpc_slice_from_static_buffer(c->auth, c->auth_len);
    return 1;
}

/* A deadline timeout_ms from now; 0 = none. */
static gpr_timespec s_deadline(int timeout_ms)
{
    if (timeout_ms == 0)
        return gpr_inf_future(GPR_CLOCK_MONOTONIC);
    return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                        gpr_time_from_millis(timeout_ms, GPR_TIMESPAN));
}

/* Shuts a queue down, drains it and destroys it; every batch on it must
 * have completed and been dequeued. */
static void s_cq_destroy(grpc_completion_queue *cq, bool pluck)
{
    grpc_completion_queue_shutdown(cq);
    gpr_timespec inf = gpr_inf_future(GPR_CLOCK_REALTIME);
    while ((pluck ? grpc_completion_queue_pluck(cq, NULL, inf, NULL)
                  : grpc_completion_queue_next(cq, inf, NULL))
               .type != GRPC_QUEUE_SHUTDOWN) {
    }
    grpc_completion_queue_destroy(cq);
}

/*
 * Runs one unary call. On return *resp is the response message (malloc'ed,
 * free() it) or NULL when none arrived; err holds the status.
 */
static grpc_status_code s_call(rpc_client *c, const char *method,
                               const uint8_t *req, size_t req_len,
                               int timeout_ms, uint8_t **resp,
                               size_t *resp_len, rpc_error *err)
{
    assert(c && method && (req || req_len == 0) && resp && resp_len);
    assert(timeout_ms > 0);
    *resp = NULL;
    *resp_len = 0;

    grpc_completion_queue *cq = grpc_completion_queue_create_for_pluck(NULL);
    gpr_timespec deadline = s_deadline(timeout_ms);
    grpc_slice method_slice = grpc_slice_from_copied_string(method);
    grpc_call *call =
        grpc_channel_create_call(c->channel, NULL, GRPC_PROPAGATE_DEFAULTS,
                                 cq, method_slice, NULL, deadline, NULL);
    grpc_slice_unref(method_slice);

    grpc_slice req_slice = grpc_slice_from_copied_buffer((const char *)req,
                                                         req_len);
    grpc_byte_buffer *req_bb = grpc_raw_byte_buffer_create(&req_slice, 1);
    grpc_slice_unref(req_slice);

    grpc_metadata md;
    size_t nmd = s_auth_md(c, &md);

    grpc_metadata_array initial_md, trailing_md;
    grpc_metadata_array_init(&initial_md);
    grpc_metadata_array_init(&trailing_md);
    grpc_byte_buffer *resp_bb = NULL;
    grpc_status_code status = GRPC_STATUS_UNKNOWN;
    grpc_slice details = grpc_empty_slice();
    const char *error_string = NULL;

    grpc_op ops[6];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[0].data.send_initial_metadata.count = nmd;
    ops[0].data.send_initial_metadata.metadata = nmd ? &md : NULL;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = req_bb;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &initial_md;
    ops[4].op = GRPC_OP_RECV_MESSAGE;
    ops[4].data.recv_message.recv_message = &resp_bb;
    ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[5].data.recv_status_on_client.trailing_metadata = &trailing_md;
    ops[5].data.recv_status_on_client.status = &status;
    ops[5].data.recv_status_on_client.status_details = &details;
    ops[5].data.recv_status_on_client.error_string = &error_string;

    int tag; /* its address is the tag; alive until plucked below */
    grpc_call_error ce = grpc_call_start_batch(call, ops, 6, &tag, NULL);
    assert(ce == GRPC_CALL_OK); /* a refused batch is a bug here */
    (void)ce;
    grpc_event ev = grpc_completion_queue_pluck(
        cq, &tag, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    assert(ev.type == GRPC_OP_COMPLETE && ev.tag == &tag);
    (void)ev;

    if (resp_bb) {
        *resp = s_buffer_copy(resp_bb, resp_len);
        grpc_byte_buffer_destroy(resp_bb);
    }
    if (err)
        s_status_to_error(err, status, details, error_string);
    grpc_slice_unref(details);
    gpr_free((void *)error_string);
    grpc_metadata_array_destroy(&initial_md);
    grpc_metadata_array_destroy(&trailing_md);
    grpc_byte_buffer_destroy(req_bb);
    grpc_call_unref(call);
    s_cq_destroy(cq, true);
    return status;
}

grpc_status_code rpc_call_raw(rpc_client *c, const char *method,
                              const void *req, size_t req_len, int timeout_ms,
                              uint8_t **resp, size_t *resp_len,
                              rpc_error *err)
{
    return s_call(c, method, req, req_len, timeout_ms, resp, resp_len, err);
}

int rpc_health(const char *addr, int timeout_ms)
{
    rpc_client *c = rpc_client_new(addr, NULL);
    if (!c)
        return 0;
    uint8_t *resp;
    size_t len;
    grpc_status_code st = s_call(c, "/grpc.health.v1.Health/Check", NULL, 0,
                                 timeout_ms, &resp, &len, NULL);
    int ok = st == GRPC_STATUS_OK && len == 2 && resp[0] == 0x08 &&
             resp[1] == 0x01;
    free(resp);
    rpc_client_destroy(&c);
    return ok;
}

/* ------------------------------------------------------ request encoding */

typedef bool (*s_encode_fn)(pb_ostream_t *os, const void *arg);

/* A length-delimited field; proto3 leaves an empty one out. */
static bool s_put_bytes(pb_ostream_t *os, uint32_t tag, const void *p,
                        size_t n)
{
    if (n == 0)
        return true;
    return pb_encode_tag(os, PB_WT_STRING, tag) &&
           pb_encode_string(os, (const pb_byte_t *)p, n);
}

static bool s_put_str(pb_ostream_t *os, uint32_t tag, const char *s)
{
    return s_put_bytes(os, tag, s, s ? strlen(s) : 0);
}

/* A varint field (int32 is sign-extended to 64 bits, as protobuf does). */
static bool s_put_varint(pb_ostream_t *os, uint32_t tag, uint64_t v)
{
    if (v == 0)
        return true;
    return pb_encode_tag(os, PB_WT_VARINT, tag) && pb_encode_varint(os, v);
}

/* Encodes with fn twice: once to size, once into a malloc'ed buffer. */
static uint8_t *s_encode(s_encode_fn fn, const void *arg, size_t *len)
{
    pb_ostream_t sizing = PB_OSTREAM_SIZING;
    if (!fn(&sizing, arg))
        return NULL;
    uint8_t *buf = malloc(sizing.bytes_written ? sizing.bytes_written : 1);
    if (!buf)
        return NULL;
    pb_ostream_t os = pb_ostream_from_buffer(buf, sizing.bytes_written);
    if (!fn(&os, arg)) {
        free(buf);
        return NULL;
    }
    *len = os.bytes_written;
    return buf;
}

/* Runs a call whose request is produced by fn(arg). */
static grpc_status_code s_call_encoded(rpc_client *c, const char *method,
                                       s_encode_fn fn, const void *arg,
                                       int timeout_ms, uint8_t **resp,
                                       size_t *resp_len, rpc_error *err)
{
    size_t len = 0;
    uint8_t *req = s_encode(fn, arg, &len);
    *resp = NULL;
    *resp_len = 0;
    if (!req)
        return s_fail(err, GRPC_STATUS_RESOURCE_EXHAUSTED,
                      "request: out of memory");
    grpc_status_code st = s_call(c, method, req, len, timeout_ms, resp,
                                 resp_len, err);
    free(req);
    if (st == GRPC_STATUS_OK && !*resp)
        st = s_fail(err, GRPC_STATUS_INTERNAL, "response: no message");
    return st;
}

/* Decodes resp into dest with fields; a failure is INTERNAL "response:". */
static grpc_status_code s_decode(const uint8_t *resp, size_t len,
                                 const pb_msgdesc_t *fields, void *dest,
                                 rpc_error *err)
{
    pb_istream_t is = pb_istream_from_buffer(resp, len);
    if (!pb_decode(&is, fields, dest))
        return s_fail(err, GRPC_STATUS_INTERNAL, "response: %s",
                      PB_GET_ERROR(&is));
    return GRPC_STATUS_OK;
}

/* ------------------------------------------------------------------ Send */

typedef struct s_send_args {
    const char *msg_id;
    const char *const *receivers;
    size_t nreceivers;
    int32_t msg_type;
    const void *content;
    size_t content_len;
} s_send_args;

static bool s_encode_send(pb_ostream_t *os, const void *arg)
{
    const s_send_args *a = arg;
    if (!s_put_str(os, imbox_v1_SendRequest_msg_id_tag, a->msg_id))
        return false;
    for (size_t i = 0; i < a->nreceivers; i++) {
        /* Every element of a repeated field is written, empty ones too:
         * the server must see (and refuse) an empty uid. */
        const char *r = a->receivers[i] ? a->receivers[i] : "";
        if (!pb_encode_tag(os, PB_WT_STRING,
                           imbox_v1_SendRequest_receiver_uids_tag) ||
            !pb_encode_string(os, (const pb_byte_t *)r, strlen(r)))
            return false;
    }
    return s_put_varint(os, imbox_v1_SendRequest_msg_type_tag,
                        (uint64_t)(int64_t)a->msg_type) &&
           s_put_bytes(os, imbox_v1_SendRequest_content_tag, a->content,
                       a->content_len);
}

typedef struct s_receipts {
    rpc_receipt *v;
    size_t n, cap; /* cap = receivers sent: one receipt each, no more */
} s_receipts;

static bool s_dec_receipt(pb_istream_t *is, const pb_field_t *field,
                          void **arg)
{
    (void)field;
    s_receipts *x = *arg;
    if (x->n == x->cap)
        PB_RETURN_ERROR(is, "more receipts than receivers");
    imbox_v1_Receipt r = imbox_v1_Receipt_init_zero;
    if (!pb_decode(is, imbox_v1_Receipt_fields, &r))
        return false;
    rpc_receipt *o = &x->v[x->n++];
    memcpy(o->receiver_uid, r.receiver_uid, sizeof o->receiver_uid);
    o->code = r.code;
    memcpy(o->error, r.error, sizeof o->error);
    o->duplicate = r.duplicate;
    o->online = r.online;
    o->send_time_ms = r.send_time_ms;
    return true;
}

grpc_status_code rpc_send(rpc_client *c, const char *msg_id,
                          const char *const *receivers, size_t nreceivers,
                          int32_t msg_type, const void *content,
                          size_t content_len, int timeout_ms,
                          rpc_send_result *out, rpc_error *err)
{
    assert(c && out && (receivers || nreceivers == 0));
    assert(content || content_len == 0);
    memset(out, 0, sizeof *out);
    s_send_args a = {msg_id, receivers, nreceivers, msg_type, content,
                     content_len};
    uint8_t *resp;
    size_t len;
    grpc_status_code st = s_call_encoded(c, "/imbox.v1.Inbox/Send",
                                         s_encode_send, &a, timeout_ms,
                                         &resp, &len, err);
    if (st != GRPC_STATUS_OK) {
        free(resp);
        return st;
    }

    s_receipts x = {NULL, 0, nreceivers};
    if (nreceivers && !(x.v = calloc(nreceivers, sizeof *x.v))) {
        free(resp);
        return s_fail(err, GRPC_STATUS_RESOURCE_EXHAUSTED,
                      "response: out of memory");
    }
    imbox_v1_SendResponse r = imbox_v1_SendResponse_init_zero;
    r.receipts.funcs.decode = s_dec_receipt;
    r.receipts.arg = &x;
    st = s_decode(resp, len, imbox_v1_SendResponse_fields, &r, err);
    free(resp);
    if (st == GRPC_STATUS_OK && x.n != nreceivers)
        st = s_fail(err, GRPC_STATUS_INTERNAL,
                    "response: %zu receipts for %zu receivers", x.n,
                    nreceivers);
    if (st != GRPC_STATUS_OK) {
        free(x.v);
        return st;
    }
    out->receipts = x.v;
    out->n = x.n;
    return GRPC_STATUS_OK;
}

void rpc_send_result_free(rpc_send_result *r)
{
    if (!r)
        return;
    free(r->receipts);
    memset(r, 0, sizeof *r);
}

/* ------------------------------------------------------------------ Pull */

typedef struct s_pull_args {
    const char *cursor;
    uint32_t page_size;
    const char *sender_uid;
} s_pull_args;

static bool s_encode_pull(pb_ostream_t *os, const void *arg)
{
    const s_pull_args *a = arg;
    return s_put_str(os, imbox_v1_PullRequest_cursor_tag, a->cursor) &&
           s_put_varint(os, imbox_v1_PullRequest_page_size_tag,
                        a->page_size) &&
           s_put_str(os, imbox_v1_PullRequest_sender_uid_tag,
                     a->sender_uid);
}

typedef struct s_msgs {
    rpc_msg *v;
    size_t n, cap;
} s_msgs;

static void s_msg_free(rpc_msg *m)
{
    free(m->msg_id);
    free(m->sender_uid);
    free(m->receiver_uid);
    free(m->content);
    memset(m, 0, sizeof *m);
}

/* Doubles the array v of *cap elements of elem bytes (starting at 16, at
 * most max) and returns it; NULL when out of memory (v and *cap are then
 * unchanged). */
static void *s_grow(void *v, size_t *cap, size_t elem, size_t max)
{
    size_t n = *cap ? *cap * 2 : 16;
    if (n > max)
        n = max;
    void *p = realloc(v, n * elem);
    if (p)
        *cap = n;
    return p;
}

/* Message.content: at most RPC_CONTENT_MAX bytes, into the message. */
static bool s_dec_content(pb_istream_t *is, const pb_field_t *field,
                          void **arg)
{
    (void)field;
    rpc_msg *m = *arg;
    size_t n = is->bytes_left;
    if (n > RPC_CONTENT_MAX)
        PB_RETURN_ERROR(is, "content over 65536 bytes");
    uint8_t *b = NULL;
    if (n && !(b = malloc(n)))
        PB_RETURN_ERROR(is, "out of memory");
    if (!pb_read(is, b, n)) {
        free(b);
        return false;
    }
    free(m->content); /* a repeated field occurrence: the last one wins */
    m->content = b;
    m->content_len = n;
    return true;
}

/* Copies the decoded fields of pm into m, whose content the decoder's
 * callback already set; false (and m freed) when out of memory. */
static bool s_msg_fill(rpc_msg *m, const imbox_v1_Message *pm)
{
    m->msg_id = strdup(pm->msg_id);
    m->sender_uid = strdup(pm->sender_uid);
    m->receiver_uid = strdup(pm->receiver_uid);
    if (!m->msg_id || !m->sender_uid || !m->receiver_uid) {
        s_msg_free(m);
        return false;
    }
    m->send_time_ms = pm->send_time_ms;
    m->msg_type = pm->msg_type;
    return true;
}

static bool s_dec_message(pb_istream_t *is, const pb_field_t *field,
                          void **arg)
{
    (void)field;
    s_msgs *x = *arg;
    if (x->n == RPC_PAGE_MAX)
        PB_RETURN_ERROR(is, "more than 1000 messages in a page");
    if (x->n == x->cap) {
        rpc_msg *v = s_grow(x->v, &x->cap, sizeof *v, RPC_PAGE_MAX);
        if (!v)
            PB_RETURN_ERROR(is, "out of memory");
        x->v = v;
    }
    rpc_msg *m = &x->v[x->n];
    memset(m, 0, sizeof *m);
    imbox_v1_Message pm = imbox_v1_Message_init_zero;
    pm.content.funcs.decode = s_dec_content;
    pm.content.arg = m;
    if (!pb_decode(is, imbox_v1_Message_fields, &pm)) {
        s_msg_free(m);
        return false;
    }
    if (!s_msg_fill(m, &pm))
        PB_RETURN_ERROR(is, "out of memory");
    x->n++;
    return true;
}

grpc_status_code rpc_pull(rpc_client *c, const char *cursor,
                          uint32_t page_size, const char *sender_uid,
                          int timeout_ms, rpc_page *out, rpc_error *err)
{
    assert(c && out);
    memset(out, 0, sizeof *out);
    s_pull_args a = {cursor, page_size, sender_uid};
    uint8_t *resp;
    size_t len;
    grpc_status_code st = s_call_encoded(c, "/imbox.v1.Inbox/Pull",
                                         s_encode_pull, &a, timeout_ms,
                                         &resp, &len, err);
    if (st != GRPC_STATUS_OK) {
        free(resp);
        return st;
    }
    s_msgs x = {NULL, 0, 0};
    imbox_v1_PullResponse r = imbox_v1_PullResponse_init_zero;
    r.messages.funcs.decode = s_dec_message;
    r.messages.arg = &x;
    st = s_decode(resp, len, imbox_v1_PullResponse_fields, &r, err);
    free(resp);
    if (st != GRPC_STATUS_OK) {
        for (size_t i = 0; i < x.n; i++)
            s_msg_free(&x.v[i]);
        free(x.v);
        return st;
    }
    out->msgs = x.v;
    out->n = x.n;
    memcpy(out->cursor, r.cursor, sizeof r.cursor); /* NUL-terminated */
    out->more = r.more;
    return GRPC_STATUS_OK;
}

void rpc_page_free(rpc_page *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->n; i++)
        s_msg_free(&p->msgs[i]);
    free(p->msgs);
    memset(p, 0, sizeof *p);
}

/* ------------------------------------------------------------------- Ack */

static bool s_encode_ack(pb_ostream_t *os, const void *arg)
{
    return s_put_str(os, imbox_v1_AckRequest_cursor_tag, arg);
}

grpc_status_code rpc_ack(rpc_client *c, const char *cursor, int timeout_ms,
                         uint64_t *deleted, rpc_error *err)
{
    assert(c);
    if (deleted)
        *deleted = 0;
    uint8_t *resp;
    size_t len;
    grpc_status_code st = s_call_encoded(c, "/imbox.v1.Inbox/Ack",
                                         s_encode_ack, cursor ? cursor : "",
                                         timeout_ms, &resp, &len, err);
    if (st != GRPC_STATUS_OK) {
        free(resp);
        return st;
    }
    imbox_v1_AckResponse r = imbox_v1_AckResponse_init_zero;
    st = s_decode(resp, len, imbox_v1_AckResponse_fields, &r, err);
    free(resp);
    if (st == GRPC_STATUS_OK && deleted)
        *deleted = r.deleted;
    return st;
}

/* ---------------------------------------------------------------- Counts */

static bool s_encode_empty(pb_ostream_t *os, const void *arg)
{
    (void)os;
    (void)arg;
    return true;
}

typedef struct s_senders {
    rpc_sender_count *v;
    size_t n, cap;
} s_senders;

static bool s_dec_sender(pb_istream_t *is, const pb_field_t *field,
                         void **arg)
{
    (void)field;
    s_senders *x = *arg;
    if (x->n == RPC_SENDERS_MAX)
        PB_RETURN_ERROR(is, "more than 100000 senders");
    if (x->n == x->cap) {
        rpc_sender_count *v = s_grow(x->v, &x->cap, sizeof *v, RPC_SENDERS_MAX);
        if (!v)
            PB_RETURN_ERROR(is, "out of memory");
        x->v = v;
    }
    imbox_v1_SenderCount sc = imbox_v1_SenderCount_init_zero;
    if (!pb_decode(is, imbox_v1_SenderCount_fields, &sc))
        return false;
    rpc_sender_count *o = &x->v[x->n++];
    memcpy(o->sender_uid, sc.sender_uid, sizeof o->sender_uid);
    o->count = sc.count;
    o->last_send_time_ms = sc.last_send_time_ms;
    return true;
}

grpc_status_code rpc_counts(rpc_client *c, int timeout_ms,
                            rpc_counts_result *out, rpc_error *err)
{
    assert(c && out);
    memset(out, 0, sizeof *out);
    uint8_t *resp;
    size_t len;
    grpc_status_code st = s_call_encoded(c, "/imbox.v1.Inbox/Counts",
                                         s_encode_empty, NULL, timeout_ms,
                                         &resp, &len, err);
    if (st != GRPC_STATUS_OK) {
        free(resp);
        return st;
    }
    s_senders x = {NULL, 0, 0};
    imbox_v1_CountsResponse r = imbox_v1_CountsResponse_init_zero;
    r.senders.funcs.decode = s_dec_sender;
    r.senders.arg = &x;
    st = s_decode(resp, len, imbox_v1_CountsResponse_fields, &r, err);
    free(resp);
    if (st != GRPC_STATUS_OK) {
        free(x.v);
        return st;
    }
    out->senders = x.v;
    out->n = x.n;
    out->total = r.total;
    return GRPC_STATUS_OK;
}

void rpc_counts_result_free(rpc_counts_result *r)
{
    if (!r)
        return;
    free(r->senders);
    memset(r, 0, sizeof *r);
}

/* -------------------------------------------------------------- Presence */

typedef struct s_presence_args {
    const char *const *uids;
    size_t n;
} s_presence_args;

static bool s_encode_presence(pb_ostream_t *os, const void *arg)
{
    const s_presence_args *a = arg;
    for (size_t i = 0; i < a->n; i++) {
        /* Empty uids are written too: the server must see (and name) them. */
        const char *u = a->uids[i] ? a->uids[i] : "";
        if (!pb_encode_tag(os, PB_WT_STRING,
                           imbox_v1_PresenceRequest_uids_tag) ||
            !pb_encode_string(os, (const pb_byte_t *)u, strlen(u)))
            return false;
    }
    return true;
}

grpc_status_code rpc_presence(rpc_client *c, const char *const *uids,
                              size_t n, int timeout_ms, bool *online_out,
                              rpc_error *err)
{
    assert(c && (uids || n == 0) && (online_out || n == 0));
    if (n)
        memset(online_out, 0, n * sizeof *online_out);
    s_presence_args a = {uids, n};
    uint8_t *resp;
    size_t len;
    grpc_status_code st = s_call_encoded(c, "/imbox.v1.Inbox/Presence",
                                         s_encode_presence, &a, timeout_ms,
                                         &resp, &len, err);
    if (st != GRPC_STATUS_OK) {
        free(resp);
        return st;
    }
    /* online is a static array (imbox.options max_count): more answers
     * than it holds fail to decode. */
    imbox_v1_PresenceResponse r = imbox_v1_PresenceResponse_init_zero;
    st = s_decode(resp, len, imbox_v1_PresenceResponse_fields, &r, err);
    free(resp);
    if (st == GRPC_STATUS_OK && r.online_count != n)
        st = s_fail(err, GRPC_STATUS_INTERNAL,
                    "response: %u answers for %zu uids",
                    (unsigned)r.online_count, n);
    if (st != GRPC_STATUS_OK)
        return st;
    if (n)
        memcpy(online_out, r.online, n * sizeof *online_out);
    return GRPC_STATUS_OK;
}

/* ------------------------------------------------------------- Subscribe */

struct rpc_stream {
    grpc_completion_queue *cq;   /* for_next, this stream's batches only */
    grpc_call *call;
    grpc_metadata md;            /* points into the client's token */
    grpc_byte_buffer *req_bb;    /* alive until t_start is dequeued */
    grpc_metadata_array initial_md, trailing_md;
    grpc_byte_buffer *recv_bb;   /* filled by the t_msg batch */
    grpc_status_code status;     /* filled by the t_status batch */
    grpc_slice details;
    const char *error_string;

    /* The tags: only their addresses matter. */
    char t_start, t_status, t_msg;
    bool start_pending, status_pending, msg_pending;

    bool read_done;              /* a read returned no message */
    bool failed;                 /* a Delivery broke the contract: `final`
                                    is our verdict, not the server's */
    bool ended;                  /* ENDED was returned; `final` is set */
    atomic_bool cancelled;       /* rpc_stream_cancel was called */
    rpc_error final;
};

static bool s_encode_subscribe(pb_ostream_t *os, const void *arg)
{
    return s_put_str(os, imbox_v1_SubscribeRequest_cursor_tag, arg);
}

rpc_stream *rpc_subscribe(rpc_client *c, const char *cursor, int timeout_ms,
                          rpc_error *err)
{
    assert(c && timeout_ms >= 0);
    size_t len = 0;
    uint8_t *req = s_encode(s_encode_subscribe, cursor ? cursor : "", &len);
    rpc_stream *s = req ? calloc(1, sizeof *s) : NULL;
    if (!s) {
        free(req);
        s_fail(err, GRPC_STATUS_RESOURCE_EXHAUSTED,
               "request: out of memory");
        return NULL;
    }
    atomic_init(&s->cancelled, false);
    s->status = GRPC_STATUS_UNKNOWN;
    s->details = grpc_empty_slice();
    grpc_metadata_array_init(&s->initial_md);
    grpc_metadata_array_init(&s->trailing_md);

    s->cq = grpc_completion_queue_create_for_next(NULL);
    grpc_slice method = grpc_slice_from_static_string(
        "/imbox.v1.Inbox/Subscribe");
    s->call = grpc_channel_create_call(c->channel, NULL,
                                       GRPC_PROPAGATE_DEFAULTS, s->cq,
                                       method, NULL, s_deadline(timeout_ms),
                                       NULL);
    grpc_slice req_slice = grpc_slice_from_copied_buffer((const char *)req,
                                                         len);
    free(req);
    s->req_bb = grpc_raw_byte_buffer_create(&req_slice, 1);
    grpc_slice_unref(req_slice);
    size_t nmd = s_auth_md(c, &s->md);

    grpc_op ops[4];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[0].data.send_initial_metadata.count = nmd;
    ops[0].data.send_initial_metadata.metadata = nmd ? &s->md : NULL;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = s->req_bb;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &s->initial_md;
    grpc_call_error ce = grpc_call_start_batch(s->call, ops, 4, &s->t_start,
                                               NULL);
    assert(ce == GRPC_CALL_OK); /* a refused batch is a bug here */
    s->start_pending = true;

    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[0].data.recv_status_on_client.trailing_metadata = &s->trailing_md;
    ops[0].data.recv_status_on_client.status = &s->status;
    ops[0].data.recv_status_on_client.status_details = &s->details;
    ops[0].data.recv_status_on_client.error_string = &s->error_string;
    ce = grpc_call_start_batch(s->call, ops, 1, &s->t_status, NULL);
    assert(ce == GRPC_CALL_OK);
    (void)ce;
    s->status_pending = true;
    return s;
}

void rpc_delivery_free(rpc_delivery *d)
{
    if (!d)
        return;
    s_msg_free(&d->msg);
    memset(d, 0, sizeof *d);
}

/* Decodes one Delivery (untrusted bytes) into out; OK, or the status that
 * ends the stream (out is then zeroed). */
static grpc_status_code s_decode_delivery(grpc_byte_buffer *bb,
                                          rpc_delivery *out, rpc_error *err)
{
    grpc_byte_buffer_reader reader;
    if (!grpc_byte_buffer_reader_init(&reader, bb))
        return s_fail(err, GRPC_STATUS_INTERNAL,
                      "response: undecompressable Delivery");
    grpc_slice all = grpc_byte_buffer_reader_readall(&reader);
    grpc_byte_buffer_reader_destroy(&reader);

    imbox_v1_Delivery d = imbox_v1_Delivery_init_zero;
    d.message.content.funcs.decode = s_dec_content;
    d.message.content.arg = &out->msg;
    pb_istream_t is = pb_istream_from_buffer(GRPC_SLICE_START_PTR(all),
                                             GRPC_SLICE_LENGTH(all));
    grpc_status_code st = GRPC_STATUS_OK;
    if (!pb_decode(&is, imbox_v1_Delivery_fields, &d))
        st = s_fail(err, GRPC_STATUS_INTERNAL, "response: %s",
                    PB_GET_ERROR(&is));
    else if (!d.has_message)
        st = s_fail(err, GRPC_STATUS_INTERNAL,
                    "response: Delivery without message");
    else if (!d.cursor[0])
        st = s_fail(err, GRPC_STATUS_INTERNAL,
                    "response: Delivery without cursor");
    else if (!s_msg_fill(&out->msg, &d.message))
        st = s_fail(err, GRPC_STATUS_RESOURCE_EXHAUSTED,
                    "response: out of memory");
    grpc_slice_unref(all);
    if (st != GRPC_STATUS_OK) {
        rpc_delivery_free(out);
        return st;
    }
    memcpy(out->cursor, d.cursor, sizeof d.cursor); /* NUL-terminated */
    return GRPC_STATUS_OK;
}

/* Starts the next read. A read refused by the core happens only once the
 * call is over (its status arrived): there is nothing more to read. */
static void s_stream_read(rpc_stream *s)
{
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_MESSAGE;
    op.data.recv_message.recv_message = &s->recv_bb;
    grpc_call_error ce = grpc_call_start_batch(s->call, &op, 1, &s->t_msg,
                                               NULL);
    if (ce == GRPC_CALL_OK) {
        s->msg_pending = true;
        return;
    }
    assert(!s->status_pending); /* else a bug: two reads at once */
    s->read_done = true;
}

/* Marks the dequeued batch of tag as done; returns the received buffer
 * (ours to destroy) when it was a read that got a message. */
static grpc_byte_buffer *s_stream_done(rpc_stream *s, void *tag)
{
    if (tag == &s->t_start) {
        s->start_pending = false;
        grpc_byte_buffer_destroy(s->req_bb);
        s->req_bb = NULL;
    } else if (tag == &s->t_status) {
        s->status_pending = false;
    } else {
        assert(tag == &s->t_msg);
        s->msg_pending = false;
        grpc_byte_buffer *bb = s->recv_bb;
        s->recv_bb = NULL;
        if (!bb)
            s->read_done = true; /* the server is done, or the call is */
        return bb;
    }
    return NULL;
}

rpc_stream_event rpc_stream_next(rpc_stream *s, int wait_ms,
                                 rpc_delivery *out, rpc_error *err)
{
    assert(s && out);
    memset(out, 0, sizeof *out);
    gpr_timespec deadline =
        wait_ms < 0 ? gpr_inf_future(GPR_CLOCK_MONOTONIC)
                    : gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                                   gpr_time_from_millis(wait_ms,
                                                        GPR_TIMESPAN));
    while (!s->ended) {
        bool stopping = s->failed || atomic_load(&s->cancelled);
        if (!s->status_pending && !s->msg_pending &&
            (s->read_done || stopping)) {
            if (!s->failed) {
                s_status_to_error(&s->final, s->status, s->details,
                                  s->error_string);
                if (s->status == GRPC_STATUS_OK)
                    s_fail(&s->final, GRPC_STATUS_INTERNAL,
                           "response: stream ended with OK");
            }
            s->ended = true;
            break;
        }
        if (!s->msg_pending && !s->read_done && !stopping) {
            s_stream_read(s);
            continue;
        }
        grpc_event ev = grpc_completion_queue_next(s->cq, deadline, NULL);
        if (ev.type == GRPC_QUEUE_TIMEOUT)
            return RPC_STREAM_IDLE;
        assert(ev.type == GRPC_OP_COMPLETE);
        grpc_byte_buffer *bb = s_stream_done(s, ev.tag);
        if (!bb)
            continue;
        grpc_status_code st = GRPC_STATUS_OK;
        if (!atomic_load(&s->cancelled))
            st = s_decode_delivery(bb, out, &s->final);
        grpc_byte_buffer_destroy(bb);
        if (atomic_load(&s->cancelled)) {
            rpc_delivery_free(out); /* cancelled meanwhile: not delivered */
            continue;
        }
        if (st == GRPC_STATUS_OK)
            return RPC_STREAM_DELIVERY;
        s->failed = true; /* s->final holds why; stop the server too */
        grpc_call_cancel(s->call, NULL);
    }
    if (err)
        *err = s->final;
    return RPC_STREAM_ENDED;
}

void rpc_stream_cancel(rpc_stream *s)
{
    assert(s);
    atomic_store(&s->cancelled, true);
    grpc_call_cancel(s->call, NULL);
}

grpc_status_code rpc_stream_status(const rpc_stream *s, rpc_error *err)
{
    assert(s);
    rpc_error ok = {GRPC_STATUS_OK, ""};
    const rpc_error *e = s->ended ? &s->final : &ok;
    if (err)
        *err = *e;
    return (grpc_status_code)e->code;
}

void rpc_stream_close(rpc_stream **sp)
{
    if (!sp || !*sp)
        return;
    rpc_stream *s = *sp;
    if (s->start_pending || s->status_pending || s->msg_pending)
        grpc_call_cancel(s->call, NULL); /* so that they complete now */
    while (s->start_pending || s->status_pending || s->msg_pending) {
        grpc_event ev = grpc_completion_queue_next(
            s->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        assert(ev.type == GRPC_OP_COMPLETE);
        grpc_byte_buffer *bb = s_stream_done(s, ev.tag);
        if (bb)
            grpc_byte_buffer_destroy(bb);
    }
    assert(!s->req_bb); /* freed when the start batch was dequeued */
    grpc_metadata_array_destroy(&s->initial_md);
    grpc_metadata_array_destroy(&s->trailing_md);
    grpc_slice_unref(s->details);
    gpr_free((void *)s->error_string);
    grpc_call_unref(s->call);
    s_cq_destroy(s->cq, false);
    free(s);
    *sp = NULL;
}
