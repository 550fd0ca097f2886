/*
 * sh_health.c - see sh_health.h.
 *
 * Everything runs on the one completion-queue thread, so a call's state
 * needs no lock. It waits at most SH_HEALTH_POLL_MS for an event, then
 * looks at ready() and pushes a change to the Watch streams. A call is
 * freed when its batches have completed (refs): a Check has one (its
 * answer, with the receive-close in it), a Watch its receive-close, each
 * message and an error status. Requests armed are freed, not re-armed,
 * once the server shuts down.
 */
#include "sh_health.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/time.h>

#include "im_base.h"
#include "im_health.h"

typedef enum { HC_CHECK, HC_WATCH, HC_OTHER, HC_KINDS } hc_kind;
typedef enum { T_NEW, T_CLOSE, T_SEND, T_MSG } hc_tag_kind;

typedef struct hc_call hc_call;
typedef struct hc_tag {
    hc_call *c;
    hc_tag_kind kind;
} hc_tag;

struct hc_call {
    sh_health *h;
    hc_kind kind;
    grpc_call *call;
    gpr_timespec deadline;
    grpc_call_details details;  /* HC_OTHER */
    grpc_metadata_array md;
    grpc_byte_buffer *payload;
    hc_tag t_new, t_close, t_send, t_msg;
    int refs;
    int cancelled;
    grpc_slice status_details;
    grpc_byte_buffer *out;      /* the message in flight */
    /* Watch */
    bool unknown;               /* SERVICE_UNKNOWN */
    int sent;                   /* the status last sent (0: none yet) */
    bool listed;
    struct hc_call *next, *prev;
};

struct sh_health {
    grpc_server *server;
    grpc_completion_queue *cq;
    void *methods[HC_OTHER];
    bool (*ready)(void *arg);
    void *arg;
    int port;
    pthread_t thread;
    atomic_bool stopping;
    int shutdown_tag;
    hc_call *watches;           /* CQ thread */
};

static const char *const s_paths[HC_OTHER] = {
    "/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch",
};
static const char *const s_names[] = {""};

static void s_free_call(hc_call *c)
{
    if (c->call)
        grpc_call_unref(c->call);
    grpc_call_details_destroy(&c->details);
    grpc_metadata_array_destroy(&c->md);
    if (c->payload)
        grpc_byte_buffer_destroy(c->payload);
    if (c->out)
        grpc_byte_buffer_destroy(c->out);
    grpc_slice_unref(c->status_details);
    free(c);
}

static void s_unref(hc_call *c)
{
    if (--c->refs == 0)
        s_free_call(c);
}

static void s_batch(hc_call *c, grpc_op *ops, size_t n, hc_tag *t)
{
    c->refs++;
    grpc_call_error e = grpc_call_start_batch(c->call, ops, n, t, NULL);
    if (e != GRPC_CALL_OK) {
        fprintf(stderr, "imbox shard: health start_batch = %d: a bug\n", (int)e);
        abort();
    }
}

static grpc_byte_buffer *s_response(int status)
{
    uint8_t b[2];
    im_health_response(status, b);
    grpc_slice sl = grpc_slice_from_copied_buffer((const char *)b, 2);
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&sl, 1);
    grpc_slice_unref(sl);
    return bb;
}

/* Answers with status (and a message of health when health > 0). A Check
 * (unary) gets its receive-close in the same batch. */
static void s_answer(hc_call *c, int code, const char *msg, int health)
{
    grpc_op ops[4];
    memset(ops, 0, sizeof ops);
    size_t n = 0;
    ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[n++].data.send_initial_metadata.count = 0;
    if (health > 0) {
        c->out = s_response(health);
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n++].data.send_message.send_message = c->out;
    }
    c->status_details = grpc_slice_from_static_string(msg);
    ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[n].data.send_status_from_server.status = (grpc_status_code)code;
    ops[n++].data.send_status_from_server.status_details = &c->status_details;
    if (c->kind != HC_WATCH) { /* a Watch's is its own batch */
        ops[n].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
        ops[n++].data.recv_close_on_server.cancelled = &c->cancelled;
    }
    s_batch(c, ops, n, &c->t_send);
}

static int s_status(sh_health *h)
{
    return !atomic_load(&h->stopping) && h->ready(h->arg) ? IM_HEALTH_SERVING
                                                          : IM_HEALTH_NOT_SERVING;
}

/* Sends a Watch its status if it changed and nothing is in flight. */
static void s_pump(hc_call *c, int status)
{
    if (c->unknown)
        status = IM_HEALTH_SERVICE_UNKNOWN;
    if (c->out || c->sent == status)
        return;
    grpc_op ops[2];
    memset(ops, 0, sizeof ops);
    size_t n = 0;
    if (!c->sent) {
        ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
        ops[n++].data.send_initial_metadata.count = 0;
    }
    c->out = s_response(status);
    ops[n].op = GRPC_OP_SEND_MESSAGE;
    ops[n++].data.send_message.send_message = c->out;
    c->sent = status;
    s_batch(c, ops, n, &c->t_msg);
}

static void s_unlist(hc_call *c)
{
    if (!c->listed)
        return;
    c->listed = false;
    if (c->prev)
        c->prev->next = c->next;
    else
        c->h->watches = c->next;
    if (c->next)
        c->next->prev = c->prev;
}

static void s_arm(sh_health *h, hc_kind kind)
{
    hc_call *c = calloc(1, sizeof *c);
    if (!c) {
        fprintf(stderr, "imbox shard: out of memory arming a health call\n");
        return;
    }
    c->h = h;
    c->kind = kind;
    c->t_new = (hc_tag){c, T_NEW};
    c->t_close = (hc_tag){c, T_CLOSE};
    c->t_send = (hc_tag){c, T_SEND};
    c->t_msg = (hc_tag){c, T_MSG};
    c->status_details = grpc_empty_slice();
    grpc_call_details_init(&c->details);
    grpc_metadata_array_init(&c->md);
    grpc_call_error e;
    if (kind == HC_OTHER)
        e = grpc_server_request_call(h->server, &c->call, &c->details, &c->md, h->cq, h->cq,
                                     &c->t_new);
    else
        e = grpc_server_request_registered_call(h->server, h->methods[kind], &c->call,
                                                &c->deadline, &c->md, &c->payload, h->cq,
                                                h->cq, &c->t_new);
    if (e != GRPC_CALL_OK) {
        fprintf(stderr, "imbox shard: health request_call = %d\n", (int)e);
        s_free_call(c);
    }
}

/* The request's service: an index of s_names, or IM_HEALTH_*. */
static int s_service(hc_call *c)
{
    if (!c->payload)
        return 0;
    grpc_byte_buffer_reader r;
    if (!grpc_byte_buffer_reader_init(&r, c->payload))
        return IM_HEALTH_BAD;
    grpc_slice sl = grpc_byte_buffer_reader_readall(&r);
    grpc_byte_buffer_reader_destroy(&r);
    int k = im_health_service(GRPC_SLICE_START_PTR(sl), GRPC_SLICE_LENGTH(sl), s_names, 1);
    grpc_slice_unref(sl);
    return k;
}

static void s_on_new(sh_health *h, hc_call *c)
{
    if (c->kind == HC_OTHER) {
        s_answer(c, GRPC_STATUS_UNIMPLEMENTED, "only grpc.health.v1.Health is served here", 0);
        return;
    }
    int k = s_service(c);
    if (c->kind == HC_CHECK) {
        if (k == IM_HEALTH_BAD)
            s_answer(c, GRPC_STATUS_INVALID_ARGUMENT, "HealthCheckRequest does not decode", 0);
        else if (k == IM_HEALTH_UNKNOWN)
            s_answer(c, GRPC_STATUS_NOT_FOUND, "unknown service", 0);
        else
            s_answer(c, GRPC_STATUS_OK, "", s_status(h));
        return;
    }
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    op.data.recv_close_on_server.cancelled = &c->cancelled;
    s_batch(c, &op, 1, &c->t_close);
    if (k == IM_HEALTH_BAD) {
        s_answer(c, GRPC_STATUS_INVALID_ARGUMENT, "HealthCheckRequest does not decode", 0);
        return;
    }
    c->unknown = k == IM_HEALTH_UNKNOWN;
    c->listed = true;
    c->next = h->watches;
    if (h->watches)
        h->watches->prev = c;
    h->watches = c;
    s_pump(c, s_status(h));
}

static void *s_main(void *arg)
{
    sh_health *h = arg;
    im_thread_name("sh-health");
    for (;;) {
        gpr_timespec until = gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                                          gpr_time_from_millis(SH_HEALTH_POLL_MS,
                                                               GPR_TIMESPAN));
        grpc_event ev = grpc_completion_queue_next(h->cq, until, NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN)
            break;
        if (ev.type == GRPC_QUEUE_TIMEOUT) {
            int status = s_status(h);
            for (hc_call *c = h->watches; c; c = c->next)
                s_pump(c, status);
            continue;
        }
        if (ev.tag == &h->shutdown_tag) {
            grpc_completion_queue_shutdown(h->cq);
            continue;
        }
        hc_tag *t = ev.tag;
        hc_call *c = t->c;
        switch (t->kind) {
        case T_NEW:
            if (!ev.success) { /* shutting down */
                s_free_call(c);
                break;
            }
            c->refs = 0;
            if (!atomic_load(&h->stopping))
                s_arm(h, c->kind);
            s_on_new(h, c);
            break;
        case T_MSG:
            grpc_byte_buffer_destroy(c->out);
            c->out = NULL;
            if (ev.success && c->listed)
                s_pump(c, s_status(h));
            s_unref(c);
            break;
        case T_CLOSE:
            s_unlist(c);
            s_unref(c);
            break;
        case T_SEND:
            s_unref(c);
            break;
        }
    }
    return NULL;
}

sh_health *sh_health_start(const char *listen, bool (*ready)(void *arg), void *arg, char *err,
                           size_t errlen)
{
    sh_health *h = calloc(1, sizeof *h);
    if (!h) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    h->ready = ready;
    h->arg = arg;
    /* SO_REUSEPORT off: a second server on a busy port must fail. */
    grpc_arg args[] = {{GRPC_ARG_INTEGER, (char *)"grpc.so_reuseport", {.integer = 0}}};
    grpc_channel_args ca = {1, args};
    h->server = grpc_server_create(&ca, NULL);
    h->cq = grpc_completion_queue_create_for_next(NULL);
    grpc_server_register_completion_queue(h->server, h->cq, NULL);
    for (int k = 0; k < HC_OTHER; k++)
        h->methods[k] = grpc_server_register_method(h->server, s_paths[k], NULL,
                                                    GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER,
                                                    0);
    /* Plaintext on any address: this port carries no data (sh_health.h). */
    grpc_server_credentials *creds = grpc_insecure_server_credentials_create();
    h->port = grpc_server_add_http2_port(h->server, listen, creds);
    grpc_server_credentials_release(creds);
    if (h->port == 0) {
        snprintf(err, errlen, "cannot listen on %s (address in use or invalid)", listen);
        grpc_server_destroy(h->server);
        grpc_completion_queue_shutdown(h->cq);
        while (grpc_completion_queue_next(h->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
               GRPC_QUEUE_SHUTDOWN)
            ;
        grpc_completion_queue_destroy(h->cq);
        free(h);
        return NULL;
    }
    grpc_server_start(h->server);
    for (int k = 0; k < HC_KINDS; k++)
        for (int i = 0; i < 4; i++)
            s_arm(h, (hc_kind)k);
    int rc = pthread_create(&h->thread, NULL, s_main, h);
    if (rc) {
        fprintf(stderr, "imbox shard: health thread: %s\n", strerror(rc));
        abort(); /* calls are armed on a started server: no clean way back */
    }
    return h;
}

int sh_health_port(const sh_health *h)
{
    return h->port;
}

void sh_health_stop(sh_health **hp)
{
    if (!hp || !*hp)
        return;
    sh_health *h = *hp;
    atomic_store(&h->stopping, true);
    /* Nothing to drain: probes are instant, Watch streams end now. */
    grpc_server_shutdown_and_notify(h->server, h->cq, &h->shutdown_tag);
    grpc_server_cancel_all_calls(h->server);
    pthread_join(h->thread, NULL);
    grpc_server_destroy(h->server);
    grpc_completion_queue_destroy(h->cq);
    free(h);
    *hp = NULL;
}
