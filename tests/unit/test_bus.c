/*
 * test_bus.c - CUnit suite of gw_bus.h, the gateway's connections to the
 * shards. The test plays the shards itself: ROUTER sockets that receive
 * [routing id][packed batch of one request] (im_zmq.h) and answer
 * [routing id][id][reply] (the pairs form, which the bus reads too, as
 * a shard sends a big page) or packed batches.
 *
 * The bus is a CURVE client with the keys of a test secret (im_zmq.h); a
 * TCP fake shard is the CURVE server with the same secret's server key
 * (without a ZAP handler, so it admits any client: sh_zap.h and
 * test_curve.c cover who is admitted).
 *
 * A TCP shard lives in its own ZeroMQ context, as if in its own process:
 * killing it (zmq_ctx_term) returns only when its listener and connections
 * are closed, so the gateway sees a real connection drop and the port can
 * be bound again at once. A monitor on the shard's ROUTER reports finished
 * handshakes, so that tests wait for the connection instead of sleeping.
 *
 * The last test covers the bus's poller (im_zpoll, im_zmq.h) alone.
 *
 * Every wait is an event wait (zmq_poll on the shard's socket or on an
 * eventfd the bus callback writes) bounded by WAIT_MS; nothing is timed.
 * The bus timeout is 60 s in the connection-loss tests, far beyond WAIT_MS,
 * so a loss noticed only by the timeout fails them.
 *
 * Usage: test_bus [test-name]   (no argument: the whole suite)
 * Exit status: 0 when every assertion held, 1 otherwise.
 */
#include "gw_bus.h"

#include "im_cunit.h"
#include "im_wire.h"
#include "im_zmq.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <zmq.h>

/* ============================================================ assertions */

#define EXPECT(cond, ...) im_cunit_record(IM_HERE, (cond), __VA_ARGS__)

#define WAIT_MS 10000          /* bound of every wait for an event */
#define LONG_TIMEOUT_MS 60000  /* bus timeout that a test must not wait for */
#define MAX_ATTEMPTS 100000    /* sends refused while a DEALER connects */

/* The cluster secret of every bus and fake shard here. */
static const im_secret s_secret = {.key = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
                                           17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29,
                                           30, 31, 32}};

/* ======================================================= bus callbacks */

/* What one request's callback got. The callback fills it under mu, then
 * writes efd, which the test polls. */
typedef struct reply {
    int efd;
    pthread_mutex_t mu;
    int calls;
    int status;
    char why[256];
    char body[64];
    size_t len;
} reply;

static void reply_init(reply *r)
{
    memset(r, 0, sizeof *r);
    pthread_mutex_init(&r->mu, NULL);
    r->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    CU_ASSERT_FATAL(r->efd >= 0);
}

static void reply_fini(reply *r)
{
    close(r->efd);
    pthread_mutex_destroy(&r->mu);
}

/* Forgets a finished call, so that r can take the next attempt. */
static void reply_reset(reply *r)
{
    uint64_t v;
    if (read(r->efd, &v, sizeof v) < 0 && errno != EAGAIN)
        perror("eventfd read");
    pthread_mutex_lock(&r->mu);
    r->calls = 0;
    r->status = -1;
    r->why[0] = '\0';
    r->len = 0;
    pthread_mutex_unlock(&r->mu);
}

static void on_reply(void *arg, int status, const char *why, const uint8_t *body, size_t len)
{
    reply *r = arg;
    pthread_mutex_lock(&r->mu);
    r->calls++;
    r->status = status;
    snprintf(r->why, sizeof r->why, "%s", why ? why : "");
    r->len = len < sizeof r->body - 1 ? len : sizeof r->body - 1;
    if (body)
        memcpy(r->body, body, r->len);
    r->body[r->len] = '\0';
    pthread_mutex_unlock(&r->mu);
    uint64_t one = 1;
    if (write(r->efd, &one, sizeof one) < 0)
        perror("eventfd write");
}

/* Snapshot of r, taken under its lock. */
static reply reply_get(reply *r)
{
    pthread_mutex_lock(&r->mu);
    reply copy = *r;
    pthread_mutex_unlock(&r->mu);
    return copy;
}

/* Waits (at most WAIT_MS) until r's callback ran. Returns whether it did. */
static bool reply_wait(reply *r)
{
    zmq_pollitem_t it = {.fd = r->efd, .events = ZMQ_POLLIN};
    if (reply_get(r).calls == 0)
        zmq_poll(&it, 1, WAIT_MS);
    return reply_get(r).calls > 0;
}

/* gw_bus_send of a copy of the string body. */
static int bus_send(gw_bus *b, int shard, const char *body, reply *r)
{
    size_t len = strlen(body);
    uint8_t *copy = malloc(len ? len : 1);
    CU_ASSERT_FATAL(copy != NULL);
    memcpy(copy, body, len);
    return gw_bus_send(b, shard, copy, len, on_reply, r);
}

/* ========================================================== fake shards */

typedef struct shard {
    void *ctx;      /* own context (TCP) or the test's (inproc) */
    bool own_ctx;
    void *router;
    void *mon;      /* PAIR reading the ROUTER's handshake events, or NULL */
    char ep[128];   /* the bound endpoint, port resolved */
} shard;

/* A request as the shard received it: [routing id][id][body]. */
typedef struct request {
    zmq_msg_t parts[2];     /* routing id, the packed batch */
    int n;
    uint8_t id[8];          /* its one request */
    const uint8_t *body;
    size_t len;
} request;

/* Binds a shard at ep ("tcp://127.0.0.1:0" picks a port) in a context of
 * its own, with a monitor of its handshakes. */
static bool shard_start(shard *s, const char *ep)
{
    int zero = 0;
    char mon_ep[] = "inproc://test-bus-shard-monitor";
    memset(s, 0, sizeof *s);
    s->ctx = zmq_ctx_new();
    s->own_ctx = true;
    s->router = s->ctx ? zmq_socket(s->ctx, ZMQ_ROUTER) : NULL;
    size_t eplen = sizeof s->ep;
    im_zmq_curve k;
    char why[128];
    int one = 1;
    bool ok = s->router && !im_zmq_curve_derive(&s_secret, &k, why, sizeof why) &&
              !zmq_setsockopt(s->router, ZMQ_CURVE_SERVER, &one, sizeof one) &&
              !zmq_setsockopt(s->router, ZMQ_CURVE_SECRETKEY, k.server_secret, 40) &&
              !zmq_setsockopt(s->router, ZMQ_LINGER, &zero, sizeof zero) &&
              !zmq_socket_monitor(s->router, mon_ep, ZMQ_EVENT_HANDSHAKE_SUCCEEDED) &&
              (s->mon = zmq_socket(s->ctx, ZMQ_PAIR)) != NULL &&
              !zmq_setsockopt(s->mon, ZMQ_LINGER, &zero, sizeof zero) &&
              !zmq_connect(s->mon, mon_ep) && !zmq_bind(s->router, ep) &&
              !zmq_getsockopt(s->router, ZMQ_LAST_ENDPOINT, s->ep, &eplen);
    im_zmq_curve_wipe(&k);
    return EXPECT(ok, "shard at %s: %s", ep, zmq_strerror(errno));
}

/* Closes the shard's sockets; a shard with its own context is then gone
 * with all its connections when this returns. */
static void shard_kill(shard *s)
{
    if (s->router)
        zmq_socket_monitor(s->router, NULL, 0);
    if (s->mon)
        zmq_close(s->mon);
    if (s->router)
        zmq_close(s->router);
    if (s->own_ctx && s->ctx)
        zmq_ctx_term(s->ctx);
    memset(s, 0, sizeof *s);
}

/* Waits (at most WAIT_MS) until a peer finished its handshake with s. */
static bool shard_wait_peer(shard *s)
{
    zmq_pollitem_t it = {.socket = s->mon, .events = ZMQ_POLLIN};
    zmq_msg_t parts[2];
    if (zmq_poll(&it, 1, WAIT_MS) > 0) {
        int n = im_zmq_recv(s->mon, parts, 2);
        im_zmq_close(parts, n, 2);
        if (n > 0)
            return true;
    }
    return EXPECT(false, "no peer connected to %s within %d ms", s->ep, WAIT_MS);
}

/* Receives one request on s (waits at most WAIT_MS): a message of one
 * packed frame holding one record, as the bus sends it. */
static bool shard_recv(shard *s, request *q)
{
    zmq_pollitem_t it = {.socket = s->router, .events = ZMQ_POLLIN};
    q->n = 0;
    if (zmq_poll(&it, 1, WAIT_MS) > 0)
        q->n = im_zmq_recv(s->router, q->parts, 2);
    im_zmq_batch b;
    const uint8_t *id;
    bool ok = q->n == 2 && im_zmq_batch_open(&b, q->parts, 1, q->n, 2) && b.packed &&
              b.count == 1 && im_zmq_batch_next(&b, &id, &q->body, &q->len);
    if (ok)
        memcpy(q->id, id, 8);
    return EXPECT(ok, "request at %s: %d frames, not one packed record", s->ep, q->n);
}

static bool request_is(const request *q, const char *body)
{
    return q->n == 2 && q->len == strlen(body) && memcmp(q->body, body, q->len) == 0;
}

static void request_close(request *q)
{
    im_zmq_close(q->parts, q->n, 2);
    q->n = 0;
}

/* Answers q with body as a pair, under q's id or, when id is not NULL,
 * under *id. */
static void shard_answer(shard *s, request *q, const uint64_t *id, const char *body)
{
    zmq_msg_t *rid = &q->parts[0];
    bool ok = zmq_send(s->router, zmq_msg_data(rid), zmq_msg_size(rid), ZMQ_SNDMORE) >= 0 &&
              zmq_send(s->router, id ? (const void *)id : q->id, 8, ZMQ_SNDMORE) >= 0 &&
              zmq_send(s->router, body, strlen(body), 0) >= 0;
    EXPECT(ok, "answer at %s: %s", s->ep, zmq_strerror(errno));
}

/*
 * Sends body to shard i until s receives it, into q. Until its DEALER has
 * connected the bus refuses at once ("is not connected"; the callback says
 * so and r is reused); no other answer may come meanwhile.
 */
static bool send_until_received(gw_bus *b, int i, shard *s, const char *body, reply *r,
                                request *q)
{
    for (int attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
        reply_reset(r);
        if (!EXPECT(bus_send(b, i, body, r) == 0, "gw_bus_send refused"))
            return false;
        zmq_pollitem_t it[2] = {{.socket = s->router, .events = ZMQ_POLLIN},
                                {.fd = r->efd, .events = ZMQ_POLLIN}};
        if (!EXPECT(zmq_poll(it, 2, WAIT_MS) > 0, "neither delivered nor refused in %d ms",
                    WAIT_MS))
            return false;
        if (it[0].revents & ZMQ_POLLIN)
            return shard_recv(s, q) && EXPECT(request_is(q, body), "shard got another body");
        reply got = reply_get(r);
        if (!EXPECT(got.status == IM_UNAVAILABLE && strstr(got.why, "is not connected"),
                    "refused with %d (%s)", got.status, got.why))
            return false;
    }
    return EXPECT(false, "shard %d never connected", i);
}

/* Waits for r and checks it is the one call, with status and a why or
 * body containing want. */
static void expect_reply(reply *r, int status, const char *want)
{
    if (!EXPECT(reply_wait(r), "no callback within %d ms (want %d, \"%s\")", WAIT_MS, status,
                want))
        return;
    reply got = reply_get(r);
    EXPECT(got.calls == 1, "%d calls", got.calls);
    EXPECT(got.status == status, "status %d, want %d (%s)", got.status, status, got.why);
    const char *text = status == IM_OK ? got.body : got.why;
    EXPECT(strstr(text, want) != NULL, "\"%s\" does not contain \"%s\"", text, want);
}

static gw_bus *new_bus(void *zctx, char **eps, int n, int timeout_ms)
{
    char err[256] = "";
    gw_bus *b = gw_bus_new(zctx, eps, NULL, n, &s_secret, timeout_ms, NULL, err, sizeof err);
    EXPECT(b != NULL, "gw_bus_new: %s", err);
    return b;
}

/* ================================================================= tests */

/* Two requests, a and b, on one bus to one fake shard that has received
 * both and not answered yet (the setup of tests 1 and 1b). */
typedef struct pair_fx {
    void *zctx;
    shard s;
    gw_bus *b;
    reply ra, rb;
    request qa, qb;
} pair_fx;

static bool pair_open(pair_fx *f)
{
    memset(f, 0, sizeof *f);
    f->zctx = zmq_ctx_new();
    reply_init(&f->ra);
    reply_init(&f->rb);
    CU_ASSERT_FATAL(f->zctx && shard_start(&f->s, "tcp://127.0.0.1:0"));
    char *eps[] = {f->s.ep};
    f->b = new_bus(f->zctx, eps, 1, LONG_TIMEOUT_MS);
    return f->b && shard_wait_peer(&f->s) &&
           send_until_received(f->b, 0, &f->s, "request-a", &f->ra, &f->qa) &&
           EXPECT(bus_send(f->b, 0, "request-b", &f->rb) == 0, "gw_bus_send b") &&
           shard_recv(&f->s, &f->qb);
}

static void pair_close(pair_fx *f)
{
    gw_bus_destroy(&f->b);
    EXPECT(reply_get(&f->ra).calls == 1 && reply_get(&f->rb).calls == 1,
           "each callback ran once");
    request_close(&f->qa);
    request_close(&f->qb);
    shard_kill(&f->s);
    reply_fini(&f->ra);
    reply_fini(&f->rb);
    zmq_ctx_term(f->zctx);
}

/* 1. Replies pair with their requests by id, whatever their order; a reply
 * with an unknown id and a malformed one are dropped. */
static void test_reply_pairs_by_id(void)
{
    pair_fx f;
    if (pair_open(&f)) {
        EXPECT(request_is(&f.qb, "request-b"), "second request's body");
        uint64_t unknown = 0x7fffffffffffffffULL;
        shard_answer(&f.s, &f.qb, &unknown, "reply-to-nobody");
        zmq_msg_t *rid = &f.qb.parts[0];
        zmq_send(f.s.router, zmq_msg_data(rid), zmq_msg_size(rid), ZMQ_SNDMORE);
        zmq_send(f.s.router, "malformed", 9, 0);
        shard_answer(&f.s, &f.qb, NULL, "reply-b");
        shard_answer(&f.s, &f.qa, NULL, "reply-a");
        expect_reply(&f.rb, IM_OK, "reply-b");
        expect_reply(&f.ra, IM_OK, "reply-a");
    }
    pair_close(&f);
}

/* 1b. A shard answers a turn's requests in one message, notices (id 0)
 * among them: packed (one frame), or as the pairs an older shard sends.
 * Each reply reaches its callback; a broken packed message is dropped
 * whole. */
static void test_batched_replies(void)
{
    for (int packed = 0; packed < 2; packed++) {
        pair_fx f;
        if (pair_open(&f)) {
            static const uint8_t zero[8];
            void *r = f.s.router;
            zmq_msg_t *rid = &f.qb.parts[0];
            bool ok = zmq_send(r, zmq_msg_data(rid), zmq_msg_size(rid), ZMQ_SNDMORE) >= 0;
            if (packed) {
                /* first a packed message cut short: dropped whole, so
                 * reply-b must come from the one after */
                im_zmq_pack k = {0};
                ok = ok && im_zmq_pack_add(&k, f.qb.id, "wrong-b", 7) == 0 &&
                     zmq_send(r, k.b.p, k.b.n - 1, 0) >= 0 &&
                     zmq_send(r, zmq_msg_data(rid), zmq_msg_size(rid), ZMQ_SNDMORE) >= 0;
                im_zmq_pack_free(&k);
                ok = ok && im_zmq_pack_add(&k, f.qb.id, "reply-b", 7) == 0 &&
                     im_zmq_pack_add(&k, zero, "notice", 6) == 0 && /* no hook here */
                     im_zmq_pack_add(&k, f.qa.id, "reply-a", 7) == 0 &&
                     im_zmq_pack_send(&k, r, 0) == 0;
            } else {
                ok = ok && zmq_send(r, f.qb.id, 8, ZMQ_SNDMORE) >= 0 &&
                     zmq_send(r, "reply-b", 7, ZMQ_SNDMORE) >= 0 &&
                     zmq_send(r, zero, 8, ZMQ_SNDMORE) >= 0 && /* a notice: no hook here */
                     zmq_send(r, "notice", 6, ZMQ_SNDMORE) >= 0 &&
                     zmq_send(r, f.qa.id, 8, ZMQ_SNDMORE) >= 0 &&
                     zmq_send(r, "reply-a", 7, 0) >= 0;
            }
            EXPECT(ok, "batched answer (packed %d): %s", packed, zmq_strerror(errno));
            expect_reply(&f.rb, IM_OK, "reply-b");
            expect_reply(&f.ra, IM_OK, "reply-a");
        }
        pair_close(&f);
    }
}

/* 2. When shard 1's connection drops, its in-flight requests fail at once
 * with UNAVAILABLE, long before the timeout; shard 0's still get answered. */
static void test_disconnect_fails_inflight(void)
{
    enum { N1 = 3 };
    void *zctx = zmq_ctx_new();
    shard s0, s1;
    reply r0, r1[N1];
    request q0 = {.n = 0}, q1[N1] = {{.n = 0}};
    reply_init(&r0);
    for (int i = 0; i < N1; i++)
        reply_init(&r1[i]);
    CU_ASSERT_FATAL(zctx && shard_start(&s0, "tcp://127.0.0.1:0"));
    CU_ASSERT_FATAL(shard_start(&s1, "tcp://127.0.0.1:0"));
    char *eps[] = {s0.ep, s1.ep};
    gw_bus *b = new_bus(zctx, eps, 2, LONG_TIMEOUT_MS);
    bool ready = b && shard_wait_peer(&s0) && shard_wait_peer(&s1) &&
                 send_until_received(b, 0, &s0, "to-shard-0", &r0, &q0) &&
                 send_until_received(b, 1, &s1, "to-shard-1", &r1[0], &q1[0]);
    for (int i = 1; ready && i < N1; i++)
        ready = EXPECT(bus_send(b, 1, "to-shard-1", &r1[i]) == 0, "gw_bus_send") &&
                shard_recv(&s1, &q1[i]);
    if (ready) {
        char ep1[sizeof s1.ep];
        snprintf(ep1, sizeof ep1, "%s", s1.ep);
        for (int i = 0; i < N1; i++)
            request_close(&q1[i]);
        shard_kill(&s1);
        char want[192];
        snprintf(want, sizeof want, "shard 1 (%s) connection lost", ep1);
        for (int i = 0; i < N1; i++)
            expect_reply(&r1[i], IM_UNAVAILABLE, want);
        /* shard 1's failures are all made in one pass: r0 survived it. */
        EXPECT(reply_get(&r0).calls == 0, "shard 0's request failed with shard 1's");
        shard_answer(&s0, &q0, NULL, "reply-0");
        expect_reply(&r0, IM_OK, "reply-0");
    }
    gw_bus_destroy(&b);
    EXPECT(reply_get(&r0).calls == 1, "shard 0's callback ran %d times", reply_get(&r0).calls);
    for (int i = 0; i < N1; i++) {
        EXPECT(reply_get(&r1[i]).calls == 1, "callback %d ran %d times", i,
               reply_get(&r1[i]).calls);
        request_close(&q1[i]);
        reply_fini(&r1[i]);
    }
    request_close(&q0);
    shard_kill(&s0);
    shard_kill(&s1);
    reply_fini(&r0);
    zmq_ctx_term(zctx);
}

/* 3. A shard restarted on the same port: the in-flight request fails at
 * once, the bus reconnects, and the next request is answered. */
static void test_reconnect_after_restart(void)
{
    void *zctx = zmq_ctx_new();
    shard s;
    reply r1, r2, r3;
    request q = {.n = 0};
    reply_init(&r1);
    reply_init(&r2);
    reply_init(&r3);
    CU_ASSERT_FATAL(zctx && shard_start(&s, "tcp://127.0.0.1:0"));
    char ep[sizeof s.ep];
    snprintf(ep, sizeof ep, "%s", s.ep);
    char *eps[] = {ep};
    gw_bus *b = new_bus(zctx, eps, 1, LONG_TIMEOUT_MS);
    if (b && shard_wait_peer(&s) && send_until_received(b, 0, &s, "before", &r1, &q)) {
        shard_answer(&s, &q, NULL, "answer-before");
        request_close(&q);
        expect_reply(&r1, IM_OK, "answer-before");
        if (EXPECT(bus_send(b, 0, "in-flight", &r2) == 0, "gw_bus_send") &&
            shard_recv(&s, &q)) {
            request_close(&q);
            shard_kill(&s);
            expect_reply(&r2, IM_UNAVAILABLE, "connection lost");
            if (shard_start(&s, ep) && shard_wait_peer(&s) &&
                send_until_received(b, 0, &s, "after", &r3, &q)) {
                shard_answer(&s, &q, NULL, "answer-after");
                expect_reply(&r3, IM_OK, "answer-after");
            }
        }
    }
    gw_bus_destroy(&b);
    request_close(&q);
    shard_kill(&s);
    reply_fini(&r1);
    reply_fini(&r2);
    reply_fini(&r3);
    zmq_ctx_term(zctx);
}

/* 4. As in `imbox serve`: two buses in one context reach an inproc://
 * shard (their monitors need distinct names), and destroying a bus fails
 * what is still pending. */
static void test_inproc_two_buses(void)
{
    void *zctx = zmq_ctx_new();
    shard s = {.ctx = zctx, .own_ctx = false};
    reply ra, rb, rc;
    request qa = {.n = 0}, qb = {.n = 0}, qc = {.n = 0};
    reply_init(&ra);
    reply_init(&rb);
    reply_init(&rc);
    int zero = 0;
    CU_ASSERT_FATAL(zctx && (s.router = zmq_socket(zctx, ZMQ_ROUTER)) != NULL);
    snprintf(s.ep, sizeof s.ep, "inproc://test-bus-shard");
    EXPECT(!zmq_setsockopt(s.router, ZMQ_LINGER, &zero, sizeof zero) &&
               !zmq_bind(s.router, s.ep),
           "bind %s: %s", s.ep, zmq_strerror(errno));
    char *eps[] = {s.ep};
    gw_bus *b1 = new_bus(zctx, eps, 1, LONG_TIMEOUT_MS);
    gw_bus *b2 = new_bus(zctx, eps, 1, LONG_TIMEOUT_MS);
    if (b1 && b2 && send_until_received(b1, 0, &s, "from-1", &ra, &qa) &&
        send_until_received(b2, 0, &s, "from-2", &rb, &qb) &&
        EXPECT(bus_send(b2, 0, "never-answered", &rc) == 0, "gw_bus_send") &&
        shard_recv(&s, &qc)) {
        shard_answer(&s, &qb, NULL, "to-2");
        shard_answer(&s, &qa, NULL, "to-1");
        expect_reply(&ra, IM_OK, "to-1");
        expect_reply(&rb, IM_OK, "to-2");
        gw_bus_destroy(&b2);
        expect_reply(&rc, IM_UNAVAILABLE, "the gateway is stopping");
    }
    gw_bus_destroy(&b1);
    gw_bus_destroy(&b2);
    request_close(&qa);
    request_close(&qb);
    request_close(&qc);
    shard_kill(&s);
    reply_fini(&ra);
    reply_fini(&rb);
    reply_fini(&rc);
    zmq_ctx_term(zctx);
}

/* 5. A bad endpoint fails gw_bus_new after shard 0 was set up (DEALER,
 * monitor, PAIR): all of it is closed, or zmq_ctx_term would hang and
 * ASan would report leaks. */
static void test_new_rejects_bad_endpoint(void)
{
    void *zctx = zmq_ctx_new();
    CU_ASSERT_FATAL(zctx != NULL);
    char ok[] = "tcp://127.0.0.1:1", bad[] = "nonsense://x";
    char *eps[] = {ok, bad};
    char err[256] = "";
    gw_bus *b = gw_bus_new(zctx, eps, NULL, 2, &s_secret, 1000, NULL, err, sizeof err);
    EXPECT(b == NULL, "gw_bus_new accepted %s", bad);
    EXPECT(strstr(err, "shard 1") != NULL, "error \"%s\" does not name shard 1", err);
    gw_bus_destroy(&b);
    zmq_ctx_term(zctx);
}

/* The bus's poller (im_zpoll, im_zmq.h) over an inproc PAIR and an
 * eventfd: a message wakes it, a drained socket does not, a socket marked
 * dirty after a send is asked before the poller sleeps (the send may have
 * eaten the signal of a message that came meanwhile), and a plain fd is
 * reported as such. */
static void test_zpoll(void)
{
    void *zctx = zmq_ctx_new();
    CU_ASSERT_FATAL(zctx != NULL);
    void *a = zmq_socket(zctx, ZMQ_PAIR), *b = zmq_socket(zctx, ZMQ_PAIR);
    int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    CU_ASSERT_FATAL(a && b && efd >= 0 && zmq_bind(a, "inproc://zpoll") == 0 &&
                    zmq_connect(b, "inproc://zpoll") == 0);
    im_zpoll p;
    CU_ASSERT_FATAL(im_zpoll_init(&p, 3) == 0);
    CU_ASSERT_FATAL(im_zpoll_socket(&p, 0, b) == 0);
    im_zpoll_fd(&p, 1, efd); /* entry 2 stays unused (fd -1) */

    EXPECT(im_zpoll_wait(&p, 0) == 0 && !p.in[0] && !p.in[1] && !p.in[2],
           "nothing waits: nothing reported");
    char buf[8];
    for (int round = 0; round < 3; round++) {
        EXPECT(zmq_send(a, "x", 1, 0) == 1, "send to b");
        int n = im_zpoll_wait(&p, WAIT_MS);
        EXPECT(n == 1 && p.in[0] && !p.in[1], "round %d: b reported (%d ready)", round, n);
        int got = 0;
        while (zmq_recv(b, buf, sizeof buf, ZMQ_DONTWAIT) == 1)
            got++;
        EXPECT(got == 1, "round %d: one message (%d)", round, got);
        EXPECT(im_zpoll_wait(&p, 0) == 0 && !p.in[0], "round %d: drained b not reported",
               round);
    }
    /* A message comes, then b sends: the send may take in the signal of
     * the message; dirty, b is asked before the poller sleeps. */
    EXPECT(zmq_send(a, "y", 1, 0) == 1 && zmq_send(b, "z", 1, 0) == 1, "cross sends");
    im_zpoll_dirty(&p, 0);
    EXPECT(im_zpoll_wait(&p, WAIT_MS) == 1 && p.in[0], "b's message after its send");
    EXPECT(zmq_recv(b, buf, sizeof buf, ZMQ_DONTWAIT) == 1 && buf[0] == 'y', "y received");
    EXPECT(zmq_recv(a, buf, sizeof buf, ZMQ_DONTWAIT) == 1 && buf[0] == 'z', "z received");
    uint64_t one = 1;
    EXPECT(write(efd, &one, sizeof one) == 8, "eventfd write");
    EXPECT(im_zpoll_wait(&p, WAIT_MS) == 1 && p.in[1] && !p.in[0], "the eventfd reported");
    im_zpoll_free(&p);
    close(efd);
    zmq_close(a);
    zmq_close(b);
    zmq_ctx_term(zctx);
}

/* ================================================================= runner */

static const im_cunit_test tests[] = {
    {"reply_pairs_by_id", test_reply_pairs_by_id},
    {"batched_replies", test_batched_replies},
    {"disconnect_fails_inflight", test_disconnect_fails_inflight},
    {"reconnect_after_restart", test_reconnect_after_restart},
    {"inproc_two_buses", test_inproc_two_buses},
    {"new_rejects_bad_endpoint", test_new_rejects_bad_endpoint},
    {"zpoll", test_zpoll},
};

int main(int argc, char **argv)
{
    return im_cunit_main("bus", tests, sizeof tests / sizeof tests[0],
                         argc > 1 ? argv[1] : NULL);
}
