/*
 * test_shard.c - CUnit suite of sh_service.h's wire: a real shard (engine
 * in a temporary directory, ROUTER on inproc://) and a raw DEALER playing
 * the gateway, so that the framing is checked byte by byte rather than
 * through gw_bus:
 *   - one packed message of several [id][ShardRequest] records is handled
 *     whole: two Stores in one message are answered in one packed message
 *     of two records; a page of 16 KiB or more comes alone as a pair;
 *   - a message that is not a whole batch is dropped (there is no id to
 *     answer), and the shard goes on with the next one;
 *   - a gateway of an older release (the pairs form) is answered in pairs
 *     until it sends a packed message;
 *   - reads are answered by the turn that took them;
 *   - a Pull's read (ReadOp with ack_upto) acks and returns the page above
 *     its cursor, without seqs when skip_seqs asks so.
 * It also drives a local-mode shard (no endpoint, im_local.h) the way the
 * gateway's bus thread does, with a turn bigger than the inline threshold,
 * so that the committer thread commits it, and checks every reply comes
 * back through the sink once run() is called after the wake-up. And the
 * expiry sweeper's writes: its thread submits them and the committer runs
 * them (a sweeper waiting for a writer that never runs would block the
 * shard's stop for ever). And Counts: read at once, or, once a message has
 * expired, purged by the writer first.
 *
 * Every wait is bounded (zmq_poll, or a poll of the sink's eventfd).
 * Usage: test_shard [test-name]; exit status 0 when every assertion held.
 */
#include "sh_service.h"

#include "im_cunit.h"
#include "im_local.h"
#include "im_wire.h"
#include "im_zmq.h"
#include "imbox/internal/v1/shard.pb.h"

#include <errno.h>
#include <ftw.h>
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <zmq.h>

#define EXPECT(cond, ...) im_cunit_record(IM_HERE, (cond), __VA_ARGS__)
#define WAIT_MS 10000

static int s_rm(const char *p, const struct stat *st, int flag, struct FTW *f)
{
    (void)st, (void)flag, (void)f;
    return remove(p);
}

/* ------------------------------------------------------- request bytes */

typedef struct store_args {
    const char *receiver;
} store_args;

static bool s_write_receiver(pb_ostream_t *s, const pb_field_t *f, void *const *arg)
{
    const char *uid = *arg;
    return pb_encode_tag_for_field(s, f) &&
           pb_encode_string(s, (const uint8_t *)uid, strlen(uid));
}

static bool s_write_content(pb_ostream_t *s, const pb_field_t *f, void *const *arg)
{
    const im_buf *b = *arg;
    return pb_encode_tag_for_field(s, f) && pb_encode_string(s, b->p, b->n);
}

/* A StoreOp of msg_id for receiver with content (may be NULL: none),
 * encoded (malloc'ed) into *out. */
static size_t s_store_req_content(const char *receiver, const char *msg_id, const im_buf *content,
                                  uint8_t **out)
{
    imbox_internal_v1_ShardRequest r = imbox_internal_v1_ShardRequest_init_zero;
    r.has_store = true;
    snprintf(r.store.sender, sizeof r.store.sender, "alice");
    snprintf(r.store.msg_id, sizeof r.store.msg_id, "%s", msg_id);
    r.store.receivers.funcs.encode = s_write_receiver;
    r.store.receivers.arg = (void *)receiver;
    if (content) {
        r.store.content.funcs.encode = s_write_content;
        r.store.content.arg = (void *)content;
    }
    size_t n = 0;
    CU_ASSERT_FATAL(im_pb_encode(imbox_internal_v1_ShardRequest_fields, &r, out, &n) ==
                    0);
    return n;
}

static size_t s_store_req(const char *receiver, const char *msg_id, uint8_t **out)
{
    return s_store_req_content(receiver, msg_id, NULL, out);
}

/* A ReadOp of uid's first 10 (after acking up to ack_upto). */
static size_t s_read_req(const char *uid, uint64_t ack_upto, bool skip_seqs, uint8_t **out)
{
    imbox_internal_v1_ShardRequest r = imbox_internal_v1_ShardRequest_init_zero;
    r.has_read = true;
    snprintf(r.read.uid, sizeof r.read.uid, "%s", uid);
    r.read.limit = 10;
    r.read.max_bytes = 1 << 20;
    r.read.ack_upto = ack_upto;
    r.read.skip_seqs = skip_seqs;
    size_t n = 0;
    CU_ASSERT_FATAL(im_pb_encode(imbox_internal_v1_ShardRequest_fields, &r, out, &n) ==
                    0);
    return n;
}

/* A CountsOp of uid. */
static size_t s_counts_req(const char *uid, uint8_t **out)
{
    imbox_internal_v1_ShardRequest r = imbox_internal_v1_ShardRequest_init_zero;
    r.has_counts = true;
    snprintf(r.counts.uid, sizeof r.counts.uid, "%s", uid);
    size_t n = 0;
    CU_ASSERT_FATAL(im_pb_encode(imbox_internal_v1_ShardRequest_fields, &r, out, &n) ==
                    0);
    return n;
}

static bool s_decode_reply(const uint8_t *p, size_t n, imbox_internal_v1_ShardReply *r)
{
    memset(r, 0, sizeof *r);
    pb_istream_t is = pb_istream_from_buffer(p, n);
    return pb_decode(&is, imbox_internal_v1_ShardReply_fields, r);
}

/* ------------------------------------------------------- socket mode */

typedef struct fixture {
    char dir[64];
    void *zctx;
    sh_service *sh;
    void *dealer;
    imbox_internal_v1_ShardReply *reply;
} fixture;

/* The engine's clock for the sweep test: real time plus an offset, and
 * the distinct threads that read it once the offset is set. */
static atomic_llong s_offset;
static pthread_mutex_t s_clock_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_t s_readers[8];
static int s_nreaders;

static int64_t s_clock(void *ctx)
{
    (void)ctx;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    long long off = atomic_load(&s_offset);
    if (off) {
        pthread_mutex_lock(&s_clock_mu);
        bool seen = false;
        for (int i = 0; i < s_nreaders; i++)
            seen |= pthread_equal(s_readers[i], pthread_self()) != 0;
        if (!seen && s_nreaders < 8)
            s_readers[s_nreaders++] = pthread_self();
        pthread_mutex_unlock(&s_clock_mu);
    }
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000 + off;
}

static int s_readers_seen(void)
{
    pthread_mutex_lock(&s_clock_mu);
    int n = s_nreaders;
    pthread_mutex_unlock(&s_clock_mu);
    return n;
}

static bool s_start_with(fixture *f, const char *endpoint, int64_t sweep_ms, bool test_clock);

static bool s_start(fixture *f, const char *endpoint)
{
    return s_start_with(f, endpoint, 0, false);
}

static bool s_start_with(fixture *f, const char *endpoint, int64_t sweep_ms, bool test_clock)
{
    memset(f, 0, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/imbox-test-shard-XXXXXX");
    CU_ASSERT_FATAL(mkdtemp(f->dir) != NULL);
    f->zctx = zmq_ctx_new();
    f->reply = malloc(sizeof *f->reply);
    char err[256] = "", data[96];
    snprintf(data, sizeof data, "%s/s0", f->dir);
    sh_config c = {.index = 0, .count = 1, .endpoint = endpoint, .dir = data,
                   .zctx = f->zctx, .sweep_ms = sweep_ms,
                   .secret = {.key = {7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
                                      7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7}}};
    st_options_init(&c.st);
    if (test_clock)
        c.st.clock = s_clock;
    f->sh = sh_start(&c, err, sizeof err);
    if (!EXPECT(f->sh != NULL, "sh_start: %s", err))
        return false;
    if (!endpoint)
        return true;
    f->dealer = zmq_socket(f->zctx, ZMQ_DEALER);
    int zero = 0;
    zmq_setsockopt(f->dealer, ZMQ_LINGER, &zero, sizeof zero);
    return EXPECT(zmq_connect(f->dealer, endpoint) == 0, "connect: %s", zmq_strerror(errno));
}

static void s_stop(fixture *f)
{
    if (f->dealer)
        zmq_close(f->dealer);
    sh_stop(&f->sh);
    zmq_ctx_term(f->zctx);
    nftw(f->dir, s_rm, 8, FTW_DEPTH | FTW_PHYS);
    free(f->reply);
}

/* Receives one message (bounded wait) into parts; returns its frames. */
static int s_recv(void *sock, zmq_msg_t *parts, int max)
{
    zmq_pollitem_t it = {.socket = sock, .events = ZMQ_POLLIN};
    if (zmq_poll(&it, 1, WAIT_MS) <= 0)
        return 0;
    return im_zmq_recv(sock, parts, max);
}

/* Sends n requests (ids 8 bytes each, bodies) as one message: packed (one
 * frame, what a gateway sends), or as the pairs of older gateways. */
static bool s_send(void *dealer, bool packed, int n, const uint64_t *ids, uint8_t *const *bodies,
                   const size_t *lens)
{
    if (packed) {
        im_zmq_pack k = {0};
        for (int i = 0; i < n; i++)
            if (im_zmq_pack_add(&k, (const uint8_t *)&ids[i], bodies[i], lens[i])) {
                im_zmq_pack_free(&k);
                return false;
            }
        return im_zmq_pack_send(&k, dealer, 0) == 0;
    }
    for (int i = 0; i < n; i++) {
        int more = i + 1 < n ? ZMQ_SNDMORE : 0;
        if (zmq_send(dealer, &ids[i], 8, ZMQ_SNDMORE) != 8 ||
            zmq_send(dealer, bodies[i], lens[i], more) != (int)lens[i])
            return false;
    }
    return true;
}

/* One message from the shard, opened as a batch: up to 8 entries kept. */
typedef struct got {
    zmq_msg_t parts[8];
    int frames, n;
    bool packed;
    uint64_t id[8];
    const uint8_t *body[8];
    size_t len[8];
} got;

/* Receives and opens one message (bounded wait); false when none came or
 * it is not a whole batch. Close with s_got_close. */
static bool s_got(void *dealer, got *g)
{
    memset(g, 0, sizeof *g);
    g->frames = s_recv(dealer, g->parts, 8);
    im_zmq_batch b;
    if (!g->frames || !im_zmq_batch_open(&b, g->parts, 0, g->frames, 8))
        return false;
    g->packed = b.packed;
    const uint8_t *id;
    while (g->n < 8 && im_zmq_batch_next(&b, &id, &g->body[g->n], &g->len[g->n]))
        memcpy(&g->id[g->n++], id, 8);
    return true;
}

static void s_got_close(got *g)
{
    im_zmq_close(g->parts, g->frames, 8);
}

/* A read's reply: id, code 0, count messages up to last_seq, seqs as asked. */
static void s_expect_read(fixture *f, const got *g, int i, uint64_t id, unsigned count,
                          uint64_t last, unsigned seqs, const char *what)
{
    bool ok = s_decode_reply(g->body[i], g->len[i], f->reply);
    EXPECT(g->id[i] == id && ok && f->reply->code == 0 && f->reply->count == count &&
               f->reply->last_seq == last && f->reply->seqs_count == seqs &&
               (!seqs || f->reply->seqs[0] == last - count + 1),
           "%s: id %llu code %d, %u messages up to seq %llu, %u seqs (want %llu: %u up to "
           "%llu, %u seqs)",
           what, (unsigned long long)g->id[i], (int)f->reply->code, (unsigned)f->reply->count,
           (unsigned long long)f->reply->last_seq, (unsigned)f->reply->seqs_count,
           (unsigned long long)id, count, (unsigned long long)last, seqs);
}

static void test_batch_in_one_message(void)
{
    fixture f;
    if (!s_start(&f, "inproc://test-shard-batch")) {
        s_stop(&f);
        return;
    }
    uint8_t *a, *b, *bad, *rd;
    size_t na = s_store_req("bob", "m-1", &a), nb = s_store_req("carol", "m-2", &b);
    size_t nbad = s_store_req("bob", "m-bad", &bad), nrd = s_read_req("bob", 0, false, &rd);
    /* Two Stores in one packed message: one packed answer of two records. */
    uint64_t ids[2] = {1, 2};
    uint8_t *bodies[2] = {a, b};
    size_t lens[2] = {na, nb};
    EXPECT(s_send(f.dealer, true, 2, ids, bodies, lens), "send the batch: %s",
           zmq_strerror(errno));
    got g;
    bool ok = s_got(f.dealer, &g);
    if (EXPECT(ok && g.packed && g.frames == 1 && g.n == 2,
               "one packed reply of two records, got %d frames (packed %d, %d entries)",
               g.frames, g.packed, g.n)) {
        EXPECT(g.id[0] == 1 && g.id[1] == 2, "replies in request order: %llu %llu",
               (unsigned long long)g.id[0], (unsigned long long)g.id[1]);
        for (int i = 0; i < 2; i++) {
            ok = s_decode_reply(g.body[i], g.len[i], f.reply);
            EXPECT(ok && f.reply->code == 0 && f.reply->results_count == 1 &&
                       f.reply->results[0].code == 0 && f.reply->results[0].seq == 1,
                   "record %d: a stored receipt (code %d, %d results)", i,
                   (int)f.reply->code, (int)f.reply->results_count);
        }
    }
    s_got_close(&g);
    /* Not whole batches, each dropped: a last record cut short, a byte
     * after the last record, an unknown first byte, no record, and pairs
     * with a 7-byte id. Nothing stored, no answer. */
    im_zmq_pack k = {0};
    uint64_t id3 = 3;
    CU_ASSERT_FATAL(im_zmq_pack_add(&k, (const uint8_t *)&id3, bad, nbad) == 0);
    size_t fn = k.b.n;
    uint8_t *cut = k.b.p, *longer = malloc(fn + 1), *v2 = malloc(fn);
    CU_ASSERT_FATAL(longer && v2);
    memcpy(longer, cut, fn);
    longer[fn] = 0;
    memcpy(v2, cut, fn);
    v2[0] = IM_ZMQ_PACKED + 1;
    const uint8_t empty = IM_ZMQ_PACKED;
    const uint8_t *broken[] = {cut, longer, v2, &empty};
    size_t nbroken[] = {fn - 1, fn + 1, fn, 1};
    for (int i = 0; i < 4; i++)
        EXPECT(zmq_send(f.dealer, broken[i], nbroken[i], 0) == (int)nbroken[i],
               "send broken message %d", i);
    EXPECT(zmq_send(f.dealer, &id3, 7, ZMQ_SNDMORE) == 7 &&
               zmq_send(f.dealer, bad, nbad, 0) == (int)nbad,
           "send the short-id pair");
    im_zmq_pack_free(&k);
    free(longer);
    free(v2);
    /* The next message is answered, and shows only m-1 stored for bob. */
    uint64_t id4 = 4;
    EXPECT(s_send(f.dealer, true, 1, &id4, &rd, &nrd), "send the read");
    ok = s_got(f.dealer, &g);
    if (EXPECT(ok && g.n == 1, "the read's answer alone (the broken ones dropped), got %d "
                               "frames, %d entries", g.frames, g.n))
        s_expect_read(&f, &g, 0, 4, 1, 1, 1, "read");
    s_got_close(&g);
    /* m-2 (seq 2), then a Pull's read: it acks m-1 (on the committer,
     * while the page is read) and returns m-2 without seqs (none asked).
     * A read from the start then finds m-2 alone: the ack happened. */
    uint8_t *st2, *pull, *again;
    size_t nst2 = s_store_req("bob", "m-2", &st2);
    size_t npull = s_read_req("bob", 1, true, &pull), nagain = s_read_req("bob", 0, false, &again);
    uint8_t *req[3] = {st2, pull, again};
    size_t nreq[3] = {nst2, npull, nagain};
    for (int i = 0; i < 3; i++) {
        uint64_t idk = 5 + (uint64_t)i;
        EXPECT(s_send(f.dealer, true, 1, &idk, &req[i], &nreq[i]), "send request %d", i);
        ok = s_got(f.dealer, &g);
        if (EXPECT(ok && g.n == 1, "request %d: one answer, got %d frames, %d entries", i,
                   g.frames, g.n) && i > 0)
            s_expect_read(&f, &g, 0, idk, 1, 2, i == 1 ? 0 : 1, i == 1 ? "pull" : "read");
        s_got_close(&g);
    }
    /* A page of 16 KiB or more travels alone, as a pair (no copy): ten
     * messages of 2 KiB, then a read of them. */
    im_buf big = {.p = malloc(2048), .n = 2048};
    CU_ASSERT_FATAL(big.p != NULL);
    memset(big.p, 'x', big.n);
    for (int i = 0; i < 10; i++) {
        char mid[16];
        snprintf(mid, sizeof mid, "big-%d", i);
        uint8_t *q;
        size_t nq = s_store_req_content("dave", mid, &big, &q);
        uint64_t idq = 100 + (uint64_t)i;
        EXPECT(s_send(f.dealer, true, 1, &idq, &q, &nq), "send big %d", i);
        free(q);
        ok = s_got(f.dealer, &g);
        EXPECT(ok && g.n == 1 && g.id[0] == idq, "big %d answered", i);
        s_got_close(&g);
    }
    free(big.p);
    uint8_t *page;
    size_t npage = s_read_req("dave", 0, false, &page);
    uint64_t idp = 200;
    EXPECT(s_send(f.dealer, true, 1, &idp, &page, &npage), "send the page's read");
    free(page);
    ok = s_got(f.dealer, &g);
    if (EXPECT(ok && !g.packed && g.frames == 2 && g.n == 1 && g.len[0] >= 20480,
               "the page alone as a pair: %d frames, packed %d, %zu bytes", g.frames,
               g.packed, g.len[0]))
        s_expect_read(&f, &g, 0, 200, 10, 10, 10, "page");
    s_got_close(&g);
    free(st2);
    free(pull);
    free(again);
    free(a);
    free(b);
    free(bad);
    free(rd);
    s_stop(&f);
}

/* -------------------------------------------------------- local mode */

typedef struct sink_state {
    int efd;        /* written by wake (any thread) */
    int replies;    /* on the driving thread */
    int stored;
} sink_state;

static void s_sink_reply(void *arg, const uint8_t id[8], const uint8_t *body, size_t len)
{
    (void)id;
    sink_state *k = arg;
    imbox_internal_v1_ShardReply *r = malloc(sizeof *r);
    if (r && s_decode_reply(body, len, r) && r->code == 0 && r->results_count == 1 &&
        r->results[0].code == 0)
        k->stored++;
    free(r);
    k->replies++;
}

static void s_sink_notice(void *arg, const uint8_t *body, size_t len)
{
    (void)arg, (void)body, (void)len;
}

static void s_sink_wake(void *arg)
{
    sink_state *k = arg;
    uint64_t one = 1;
    if (write(k->efd, &one, sizeof one) < 0)
        perror("eventfd write");
}

static void test_local_committer(void)
{
    enum { N = 40 }; /* well over the inline threshold: the committer's */
    fixture f;
    sink_state k = {.efd = eventfd(0, EFD_CLOEXEC)};
    CU_ASSERT_FATAL(k.efd >= 0);
    if (s_start(&f, NULL)) {
        im_local_shard l = sh_local(f.sh);
        CU_ASSERT_FATAL(l.obj != NULL);
        im_local_sink sink = {s_sink_reply, s_sink_notice, s_sink_wake, &k};
        l.attach(l.obj, &sink);
        static const uint8_t ident[] = {1, 2, 3};
        for (int i = 0; i < N; i++) {
            char msg_id[32], uid[32];
            snprintf(msg_id, sizeof msg_id, "m-%d", i);
            snprintf(uid, sizeof uid, "user-%d", i % 7);
            uint8_t *body, id[8] = {(uint8_t)(i + 1)};
            size_t n = s_store_req(uid, msg_id, &body);
            l.request(l.obj, ident, sizeof ident, id, body, n);
            free(body);
        }
        l.run(l.obj); /* hands the turn to the committer */
        for (int waits = 0; k.replies < N && waits < 100; waits++) {
            struct pollfd p = {.fd = k.efd, .events = POLLIN};
            if (poll(&p, 1, WAIT_MS / 100) > 0) {
                uint64_t v;
                if (read(k.efd, &v, sizeof v) < 0)
                    perror("eventfd read");
            }
            l.run(l.obj); /* answers what the committer finished */
        }
        EXPECT(k.replies == N && k.stored == N, "%d replies, %d stored, want %d", k.replies,
               k.stored, N);
        static const im_local_sink none;
        l.attach(l.obj, &none);
    }
    s_stop(&f);
    close(k.efd);
}

/* The sweeper's purge of an expired message runs on the committer: once
 * the clock is past the message's expiry, the clock is read by the sweeper
 * (finding it) and by a writer (purging it), two threads while the shard
 * is otherwise idle; and the shard then stops. */
static void test_sweep_runs_on_the_committer(void)
{
    fixture f;
    atomic_store(&s_offset, 0);
    s_nreaders = 0;
    if (s_start_with(&f, "inproc://test-shard-sweep", 20, true)) {
        uint8_t *a;
        size_t na = s_store_req("bob", "m-old", &a);
        uint64_t id = 1;
        got g;
        bool ok = s_send(f.dealer, true, 1, &id, &a, &na) && s_got(f.dealer, &g);
        EXPECT(ok && g.n == 1, "the store answered (%d frames)", g.frames);
        s_got_close(&g);
        free(a);
        /* 31 days later: past the default 30-day expiry */
        atomic_store(&s_offset, 31LL * 24 * 3600 * 1000);
        for (int waits = 0; s_readers_seen() < 2 && waits < 500; waits++)
            nanosleep(&(struct timespec){0, 20 * 1000 * 1000}, NULL);
        EXPECT(s_readers_seen() >= 2, "the clock was read by %d thread(s): no purge ran",
               s_readers_seen());
    }
    s_stop(&f); /* returns: no sweep waits on a writer that never runs */
    atomic_store(&s_offset, 0);
}

/* One request (its bytes freed here) as id, packed or in pairs, and its
 * reply decoded into f->reply, which came in the same form; false when no
 * reply of one entry came back within WAIT_MS. */
static bool s_call_as(fixture *f, bool packed, uint64_t id, uint8_t *req, size_t n)
{
    got g;
    bool ok = s_send(f->dealer, packed, 1, &id, &req, &n) && s_got(f->dealer, &g);
    free(req);
    ok = ok && g.n == 1 && g.id[0] == id && g.packed == packed &&
         s_decode_reply(g.body[0], g.len[0], f->reply);
    s_got_close(&g);
    return EXPECT(ok, "request %llu (%s): %d frames, %d entries, id %llu, packed %d",
                  (unsigned long long)id, packed ? "packed" : "pairs", g.frames, g.n,
                  (unsigned long long)g.id[0], g.packed);
}

static bool s_call(fixture *f, uint64_t id, uint8_t *req, size_t n)
{
    return s_call_as(f, true, id, req, n);
}

/* A gateway of an older release sends and reads pairs: two Stores in one
 * message of pairs are answered in pairs (each its own message), and so is
 * everything after, until the same gateway sends a packed message. */
static void test_older_gateway_pairs(void)
{
    fixture f;
    if (!s_start(&f, "inproc://test-shard-pairs")) {
        s_stop(&f);
        return;
    }
    uint8_t *a, *b;
    size_t na = s_store_req("bob", "p-1", &a), nb = s_store_req("bob", "p-2", &b);
    uint64_t ids[2] = {1, 2};
    uint8_t *bodies[2] = {a, b};
    size_t lens[2] = {na, nb};
    EXPECT(s_send(f.dealer, false, 2, ids, bodies, lens), "send two pairs");
    free(a);
    free(b);
    for (int i = 0; i < 2; i++) {
        got g;
        bool ok = s_got(f.dealer, &g);
        ok = ok && !g.packed && g.n == 1 && g.id[0] == ids[i] &&
             s_decode_reply(g.body[0], g.len[0], f.reply) && f.reply->results_count == 1 &&
             f.reply->results[0].code == 0 && f.reply->results[0].seq == (uint64_t)i + 1;
        EXPECT(ok, "store %d answered as a pair (%d frames, packed %d, id %llu)", i,
               g.frames, g.packed, (unsigned long long)g.id[0]);
        s_got_close(&g);
    }
    uint8_t *q;
    size_t n = s_counts_req("bob", &q);
    if (s_call_as(&f, false, 3, q, n))
        EXPECT(f.reply->total == 2, "counts in pairs: total %llu",
               (unsigned long long)f.reply->total);
    n = s_counts_req("bob", &q); /* upgraded: packed both ways from now on */
    if (s_call_as(&f, true, 4, q, n))
        EXPECT(f.reply->total == 2, "counts packed: total %llu",
               (unsigned long long)f.reply->total);
    s_stop(&f);
}

/* Counts over the wire: read and answered at once while nothing expired;
 * once the inbox's message is past its expiry, purged first (the writer's
 * path), so the count is 0, and read at once again after. */
static void test_counts_read_then_purged(void)
{
    fixture f;
    atomic_store(&s_offset, 0);
    if (s_start_with(&f, "inproc://test-shard-counts", 0, true)) {
        uint8_t *q;
        size_t n = s_store_req("bob", "m-old", &q);
        if (s_call(&f, 1, q, n))
            EXPECT(f.reply->code == 0 && f.reply->results_count == 1 &&
                       f.reply->results[0].code == 0,
                   "stored (code %d)", (int)f.reply->code);
        n = s_counts_req("bob", &q);
        if (s_call(&f, 2, q, n))
            EXPECT(f.reply->code == 0 && f.reply->total == 1, "counts: code %d, total %llu",
                   (int)f.reply->code, (unsigned long long)f.reply->total);
        atomic_store(&s_offset, 31LL * 24 * 3600 * 1000); /* past the 30-day expiry */
        for (uint64_t id = 3; id <= 4; id++) {
            n = s_counts_req("bob", &q);
            if (s_call(&f, id, q, n))
                EXPECT(f.reply->code == 0 && f.reply->total == 0,
                       "counts %llu after the expiry: code %d, total %llu",
                       (unsigned long long)id, (int)f.reply->code,
                       (unsigned long long)f.reply->total);
        }
        st_stats st;
        st_stats_get(sh_engine(f.sh), &st);
        EXPECT(st.expired == 1, "the writer purged %llu expired message(s), want 1",
               (unsigned long long)st.expired);
    }
    s_stop(&f);
    atomic_store(&s_offset, 0);
}

static const im_cunit_test tests[] = {
    {"batch_in_one_message", test_batch_in_one_message},
    {"older_gateway_pairs", test_older_gateway_pairs},
    {"local_committer", test_local_committer},
    {"sweep_runs_on_the_committer", test_sweep_runs_on_the_committer},
    {"counts_read_then_purged", test_counts_read_then_purged},
};

int main(int argc, char **argv)
{
    return im_cunit_main("shard", tests, sizeof tests / sizeof tests[0],
                         argc > 1 ? argv[1] : NULL);
}
