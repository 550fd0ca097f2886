/*
 * test_curve.c - CUnit suite of the cluster's transport security: the CURVE
 * keys derived from the secret (im_zmq.h) and the shard's ZAP handler
 * (sh_zap.h), against a real shard bound on tcp://127.0.0.1 (a free port)
 * in a context of its own, as `imbox shard` runs:
 *   - the derivation is pinned (known Z85 secret keys for a known secret:
 *     changing it splits a cluster whose processes run two versions), and
 *     each key depends on the secret and on its label;
 *   - a DEALER with the derived client keys is answered;
 *   - a DEALER with a random client key pair (and the right server key), a
 *     DEALER with no security (NULL), and a DEALER holding another secret's
 *     keys all fail the handshake (their monitor reports it) and get no
 *     answer; the shard still answers the right client afterwards;
 *   - the ZAP handler's replies follow RFC 27 byte for byte, for a request
 *     it admits and for each kind it refuses (sent by hand to
 *     inproc://zeromq.zap.01 in the shard's context);
 *   - a second shard in the same context is refused, with a message that
 *     says why (one ZAP handler per context).
 *
 * Every wait is an event wait bounded by WAIT_MS; nothing sleeps.
 * Usage: test_curve [test-name]; exit status 0 when every assertion held.
 */
#include "sh_service.h"

#include "im_cunit.h"
#include "im_wire.h"
#include "im_zmq.h"
#include "imbox/internal/v1/shard.pb.h"

#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <zmq.h>

#define EXPECT(cond, ...) im_cunit_record(IM_HERE, (cond), __VA_ARGS__)
#define WAIT_MS 10000

static const im_secret s_secret = {.key = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
                                           16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28,
                                           29, 30, 31}};

static int s_rm(const char *p, const struct stat *st, int flag, struct FTW *f)
{
    (void)st, (void)flag, (void)f;
    return remove(p);
}

/* ------------------------------------------------------------ fixture */

typedef struct fixture {
    char dir[64];
    void *zctx;
    sh_service *sh;
    char ep[256];
} fixture;

static bool s_start(fixture *f)
{
    memset(f, 0, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/imbox-test-curve-XXXXXX");
    CU_ASSERT_FATAL(mkdtemp(f->dir) != NULL);
    f->zctx = zmq_ctx_new();
    char err[256] = "", data[96];
    snprintf(data, sizeof data, "%s/s0", f->dir);
    sh_config c = {.index = 0, .count = 1, .endpoint = "tcp://127.0.0.1:0", .dir = data,
                   .zctx = f->zctx, .secret = s_secret};
    st_options_init(&c.st);
    f->sh = sh_start(&c, err, sizeof err);
    if (!EXPECT(f->sh != NULL, "sh_start: %s", err))
        return false;
    snprintf(f->ep, sizeof f->ep, "%s", sh_endpoint(f->sh));
    return EXPECT(strncmp(f->ep, "tcp://127.0.0.1:", 16) == 0, "endpoint %s", f->ep);
}

static void s_stop(fixture *f)
{
    sh_stop(&f->sh);
    zmq_ctx_term(f->zctx);
    nftw(f->dir, s_rm, 8, FTW_DEPTH | FTW_PHYS);
}

/* A peer of the shard: a DEALER in the test's own context (a separate
 * process, as far as ZeroMQ is concerned), with a monitor of its
 * handshake outcome. */
typedef struct peer {
    void *ctx, *dealer, *mon;
} peer;

typedef enum { PEER_NULL, PEER_KEYS, PEER_RANDOM_CLIENT } peer_kind;

static bool s_peer_open(peer *p, const char *ep, peer_kind kind, const im_secret *secret)
{
    int zero = 0, one = 1;
    memset(p, 0, sizeof *p);
    p->ctx = zmq_ctx_new();
    p->dealer = zmq_socket(p->ctx, ZMQ_DEALER);
    /* IMMEDIATE, as the gateway's: a message is only queued on a connection
     * whose handshake succeeded, so a refused peer cannot send at all. */
    bool ok = p->dealer && !zmq_setsockopt(p->dealer, ZMQ_LINGER, &zero, sizeof zero) &&
              !zmq_setsockopt(p->dealer, ZMQ_IMMEDIATE, &one, sizeof one);
    if (ok && kind != PEER_NULL) {
        im_zmq_curve k;
        char why[128];
        ok = !im_zmq_curve_derive(secret, &k, why, sizeof why);
        if (ok && kind == PEER_RANDOM_CLIENT) /* right server key, own client key */
            ok = !zmq_curve_keypair(k.client_public, k.client_secret);
        ok = ok && !im_zmq_curve_client(p->dealer, &k);
        im_zmq_curve_wipe(&k);
    }
    char mon_ep[64];
    snprintf(mon_ep, sizeof mon_ep, "inproc://test-curve-peer-%p", (void *)p);
    ok = ok &&
         !zmq_socket_monitor(p->dealer, mon_ep,
                             ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH |
                                 ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                                 ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL |
                                 ZMQ_EVENT_DISCONNECTED) &&
         (p->mon = zmq_socket(p->ctx, ZMQ_PAIR)) != NULL &&
         !zmq_setsockopt(p->mon, ZMQ_LINGER, &zero, sizeof zero) && !zmq_connect(p->mon, mon_ep) &&
         !zmq_connect(p->dealer, ep);
    return EXPECT(ok, "peer: %s", zmq_strerror(errno));
}

static void s_peer_close(peer *p)
{
    if (p->dealer)
        zmq_socket_monitor(p->dealer, NULL, 0);
    if (p->mon)
        zmq_close(p->mon);
    if (p->dealer)
        zmq_close(p->dealer);
    if (p->ctx)
        zmq_ctx_term(p->ctx);
    memset(p, 0, sizeof *p);
}

/* The first handshake outcome the peer's monitor reports (a
 * ZMQ_EVENT_HANDSHAKE_* or DISCONNECTED), with its value; 0 when none
 * came within WAIT_MS. */
static int s_peer_outcome(peer *p, uint32_t *value)
{
    zmq_pollitem_t it = {.socket = p->mon, .events = ZMQ_POLLIN};
    while (zmq_poll(&it, 1, WAIT_MS) > 0) {
        zmq_msg_t parts[2];
        int n = im_zmq_recv(p->mon, parts, 2);
        uint16_t ev = 0;
        if (n == 2 && zmq_msg_size(&parts[0]) == 6) {
            memcpy(&ev, zmq_msg_data(&parts[0]), 2);
            memcpy(value, (uint8_t *)zmq_msg_data(&parts[0]) + 2, 4);
        }
        im_zmq_close(parts, n, 2);
        if (ev)
            return ev;
    }
    return 0;
}

/* Sends a ReadOp for bob under id and waits (WAIT_MS) for its answer.
 * Returns true when an answer with that id came; false at once when there
 * is no connection to send it on. */
static bool s_peer_asks(peer *p, uint64_t id)
{
    imbox_internal_v1_ShardRequest r = imbox_internal_v1_ShardRequest_init_zero;
    r.has_read = true;
    snprintf(r.read.uid, sizeof r.read.uid, "bob");
    r.read.limit = 10;
    r.read.max_bytes = 1 << 20;
    uint8_t *body = NULL;
    size_t n = 0;
    CU_ASSERT_FATAL(im_pb_encode(imbox_internal_v1_ShardRequest_fields, &r, &body,
                                 &n) == 0);
    bool sent = zmq_send(p->dealer, &id, 8, ZMQ_SNDMORE | ZMQ_DONTWAIT) == 8 &&
                zmq_send(p->dealer, body, n, ZMQ_DONTWAIT) == (int)n;
    free(body);
    if (!sent)
        return false;
    zmq_pollitem_t it = {.socket = p->dealer, .events = ZMQ_POLLIN};
    if (zmq_poll(&it, 1, WAIT_MS) <= 0)
        return false;
    zmq_msg_t parts[4];
    int got = im_zmq_recv(p->dealer, parts, 4);
    uint64_t back = 0;
    if (got == 2 && zmq_msg_size(&parts[0]) == 8)
        memcpy(&back, zmq_msg_data(&parts[0]), 8);
    im_zmq_close(parts, got, 4);
    return back == id;
}

/* ---------------------------------------------------------------- tests */

/* Z85 of HMAC-SHA256(bytes 0..31, label), computed independently:
 *   /usr/bin/python3 -c 'import hmac,hashlib; print(hmac.new(bytes(range(32)),
 *     b"imbox zmq curve server v1", hashlib.sha256).hexdigest())'
 * then Z85-encoded (ZeroMQ RFC 32). */
#define Z85_SERVER "*YnPj?l^z%M<6rKW?l3mJfcX?FWTq%tPM<O!]jv8"
#define Z85_CLIENT "J$^.r3d*J9F<RoxTKx0q[0Eb7LTMNM]mcz?}bPuU"

static void test_derive_pinned(void)
{
    im_zmq_curve a, b, c;
    char err[128] = "";
    CU_ASSERT_FATAL(im_zmq_curve_derive(&s_secret, &a, err, sizeof err) == 0);
    EXPECT(strcmp(a.server_secret, Z85_SERVER) == 0, "server secret key changed");
    EXPECT(strcmp(a.client_secret, Z85_CLIENT) == 0, "client secret key changed");
    char pub[41];
    EXPECT(zmq_curve_public(pub, a.server_secret) == 0 && strcmp(pub, a.server_public) == 0,
           "server public key is not the secret key's");
    EXPECT(zmq_curve_public(pub, a.client_secret) == 0 && strcmp(pub, a.client_public) == 0,
           "client public key is not the secret key's");
    EXPECT(strcmp(a.server_public, a.client_public) != 0, "labels give the same key");
    CU_ASSERT_FATAL(im_zmq_curve_derive(&s_secret, &b, err, sizeof err) == 0);
    EXPECT(memcmp(&a, &b, sizeof a) == 0, "the derivation is not a function of the secret");
    im_secret other = s_secret;
    other.key[31] ^= 1;
    CU_ASSERT_FATAL(im_zmq_curve_derive(&other, &c, err, sizeof err) == 0);
    EXPECT(strcmp(a.server_public, c.server_public) != 0 &&
               strcmp(a.client_public, c.client_public) != 0,
           "one bit of the secret does not change the keys");
    im_zmq_curve_wipe(&a);
    for (size_t i = 0; i < sizeof a; i++)
        if (!EXPECT(((uint8_t *)&a)[i] == 0, "wipe left byte %zu", i))
            break;
    im_zmq_curve_wipe(&b);
    im_zmq_curve_wipe(&c);
}

/* The right keys are answered; a random client key pair, no security at
 * all, and another secret's keys are refused at the handshake and get no
 * answer; the right client is still answered afterwards. */
static void test_who_gets_in(void)
{
    fixture f;
    if (!s_start(&f)) {
        s_stop(&f);
        return;
    }
    peer good, rnd, null, alien;
    uint32_t v = 0;
    if (s_peer_open(&good, f.ep, PEER_KEYS, &s_secret)) {
        int ev = s_peer_outcome(&good, &v);
        EXPECT(ev == ZMQ_EVENT_HANDSHAKE_SUCCEEDED, "derived keys: event 0x%x", ev);
        EXPECT(s_peer_asks(&good, 1), "derived keys: no answer");
    }
    if (s_peer_open(&rnd, f.ep, PEER_RANDOM_CLIENT, &s_secret)) {
        int ev = s_peer_outcome(&rnd, &v);
        /* The ZAP handler's "400" travels back in an ERROR command. */
        EXPECT(ev == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH && v == 400,
               "random client key: event 0x%x value %u, want auth failure 400", ev, v);
        EXPECT(!s_peer_asks(&rnd, 2), "random client key: answered");
    }
    if (s_peer_open(&null, f.ep, PEER_NULL, NULL)) {
        int ev = s_peer_outcome(&null, &v);
        /* Which one depends on how far the greeting got when the shard
         * closed: all three are a refusal. */
        EXPECT(ev == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL ||
                   ev == ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL || ev == ZMQ_EVENT_DISCONNECTED,
               "NULL mechanism: event 0x%x, want a failed handshake", ev);
        EXPECT(!s_peer_asks(&null, 3), "NULL mechanism: answered");
    }
    im_secret other = s_secret;
    other.key[0] ^= 0x80;
    if (s_peer_open(&alien, f.ep, PEER_KEYS, &other)) {
        int ev = s_peer_outcome(&alien, &v);
        EXPECT(ev != ZMQ_EVENT_HANDSHAKE_SUCCEEDED && ev != 0,
               "another secret: event 0x%x, want a failed handshake", ev);
        EXPECT(!s_peer_asks(&alien, 4), "another secret: answered");
    }
    EXPECT(s_peer_asks(&good, 5), "derived keys: no answer after the refusals");
    s_peer_close(&good);
    s_peer_close(&rnd);
    s_peer_close(&null);
    s_peer_close(&alien);
    s_stop(&f);
}

/* One ZAP exchange by hand: sends frames[0..n) through a REQ (which adds
 * the delimiter) and checks the six-frame reply. */
static void s_zap_case(void *req, const char *name, const char *const *frames,
                       const size_t *lens, int n, const char *want_id, const char *want_status,
                       const char *want_user)
{
    bool sent = true;
    for (int i = 0; i < n && sent; i++)
        sent = zmq_send(req, frames[i], lens[i], i + 1 < n ? ZMQ_SNDMORE : 0) == (int)lens[i];
    if (!EXPECT(sent, "%s: send: %s", name, zmq_strerror(errno)))
        return;
    zmq_pollitem_t it = {.socket = req, .events = ZMQ_POLLIN};
    if (!EXPECT(zmq_poll(&it, 1, WAIT_MS) > 0, "%s: no ZAP reply", name))
        return;
    zmq_msg_t parts[8];
    int got = im_zmq_recv(req, parts, 8);
    const char *want[6] = {"1.0", want_id, want_status, NULL, want_user, ""};
    if (EXPECT(got == 6, "%s: %d frames, want 6", name, got))
        for (int i = 0; i < 6; i++) {
            if (!want[i]) { /* status text: any, but there */
                EXPECT(zmq_msg_size(&parts[i]) > 0, "%s: empty status text", name);
                continue;
            }
            size_t l = strlen(want[i]);
            EXPECT(zmq_msg_size(&parts[i]) == l && !memcmp(zmq_msg_data(&parts[i]), want[i], l),
                   "%s: frame %d is not \"%s\"", name, i, want[i]);
        }
    im_zmq_close(parts, got, 8);
}

static void test_zap_rfc27(void)
{
    fixture f;
    if (!s_start(&f)) {
        s_stop(&f);
        return;
    }
    im_zmq_curve k;
    char err[128];
    uint8_t key[32], wrong[32];
    CU_ASSERT_FATAL(im_zmq_curve_derive(&s_secret, &k, err, sizeof err) == 0);
    CU_ASSERT_FATAL(zmq_z85_decode(key, k.client_public) != NULL);
    memcpy(wrong, key, 32);
    wrong[5] ^= 1;
    im_zmq_curve_wipe(&k);
    void *req = zmq_socket(f.zctx, ZMQ_REQ);
    int zero = 0;
    CU_ASSERT_FATAL(req && !zmq_setsockopt(req, ZMQ_LINGER, &zero, sizeof zero) &&
                    !zmq_connect(req, "inproc://zeromq.zap.01"));
    const char *dom = IM_ZMQ_ZAP_DOMAIN;
    size_t dl = strlen(dom);
    {
        const char *fr[] = {"1.0", "r-1", dom, "10.0.0.7", "", "CURVE", (const char *)key};
        size_t ln[] = {3, 3, dl, 8, 0, 5, 32};
        s_zap_case(req, "the derived key", fr, ln, 7, "r-1", "200", "gateway");
    }
    {
        const char *fr[] = {"1.0", "r-2", dom, "10.0.0.7", "", "CURVE", (const char *)wrong};
        size_t ln[] = {3, 3, dl, 8, 0, 5, 32};
        s_zap_case(req, "another key", fr, ln, 7, "r-2", "400", "");
    }
    {
        const char *fr[] = {"1.0", "r-3", dom, "10.0.0.7", "", "NULL"};
        size_t ln[] = {3, 3, dl, 8, 0, 4};
        s_zap_case(req, "NULL mechanism", fr, ln, 6, "r-3", "400", "");
    }
    {
        const char *fr[] = {"1.0", "r-4", dom, "10.0.0.7", "", "PLAIN", "gateway", "x"};
        size_t ln[] = {3, 3, dl, 8, 0, 5, 7, 1};
        s_zap_case(req, "PLAIN mechanism", fr, ln, 8, "r-4", "400", "");
    }
    {
        const char *fr[] = {"1.0", "r-5", "other", "10.0.0.7", "", "CURVE", (const char *)key};
        size_t ln[] = {3, 3, 5, 8, 0, 5, 32};
        s_zap_case(req, "another domain", fr, ln, 7, "r-5", "400", "");
    }
    {
        const char *fr[] = {"2.0", "r-6", dom, "10.0.0.7", "", "CURVE", (const char *)key};
        size_t ln[] = {3, 3, dl, 8, 0, 5, 32};
        s_zap_case(req, "version 2.0", fr, ln, 7, "r-6", "400", "");
    }
    {
        const char *fr[] = {"1.0", "r-7", dom, "10.0.0.7", "", "CURVE", (const char *)key, "x"};
        size_t ln[] = {3, 3, dl, 8, 0, 5, 32, 1};
        s_zap_case(req, "two credentials", fr, ln, 8, "r-7", "400", "");
    }
    {
        const char *fr[] = {"1.0", "r-8", dom, "10.0.0.7", "", "CURVE", (const char *)key};
        size_t ln[] = {3, 3, dl, 8, 0, 5, 31};
        s_zap_case(req, "a short key", fr, ln, 7, "r-8", "400", "");
    }
    {
        const char *fr[] = {"1.0"};
        size_t ln[] = {3};
        s_zap_case(req, "one frame", fr, ln, 1, "", "400", "");
    }
    zmq_close(req);
    s_stop(&f);
}

/* A ZeroMQ context holds one ZAP handler: a second shard with an endpoint
 * in it is refused, saying so; the first one is unharmed. */
static void test_one_shard_per_context(void)
{
    fixture f;
    if (!s_start(&f)) {
        s_stop(&f);
        return;
    }
    char err[256] = "", data[96];
    snprintf(data, sizeof data, "%s/s1", f.dir);
    sh_config c = {.index = 0, .count = 1, .endpoint = "tcp://127.0.0.1:0", .dir = data,
                   .zctx = f.zctx, .secret = s_secret};
    st_options_init(&c.st);
    sh_service *second = sh_start(&c, err, sizeof err);
    EXPECT(second == NULL, "a second shard in one context started");
    EXPECT(strstr(err, "context of its own") != NULL, "error \"%s\" does not say why", err);
    sh_stop(&second);
    peer good;
    uint32_t v = 0;
    if (s_peer_open(&good, f.ep, PEER_KEYS, &s_secret))
        EXPECT(s_peer_outcome(&good, &v) == ZMQ_EVENT_HANDSHAKE_SUCCEEDED &&
                   s_peer_asks(&good, 1),
               "the first shard stopped answering");
    s_peer_close(&good);
    s_stop(&f);
}

/* ================================================================= runner */

static const im_cunit_test tests[] = {
    {"derive_pinned", test_derive_pinned},
    {"who_gets_in", test_who_gets_in},
    {"zap_rfc27", test_zap_rfc27},
    {"one_shard_per_context", test_one_shard_per_context},
};

int main(int argc, char **argv)
{
    return im_cunit_main("curve", tests, sizeof tests / sizeof tests[0],
                         argc > 1 ? argv[1] : NULL);
}
