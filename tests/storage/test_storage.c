/*
 * test_storage.c - CUnit suite of the shard engine (storage/st.h is the spec).
 *
 * Every test opens a shard in its own fresh temporary directory (removed
 * afterwards), drives it through the public API only, and asserts on the
 * results: returned codes, per-put outputs, what reads return, counts,
 * st_inbox_info, st_stats and the key counts of st_debug_keys(). Time is an
 * injected clock (fx.now) that the tests move by hand; nothing sleeps.
 * Shards run with sync = false except where durability across a restart, or
 * group commit, is what is tested.
 *
 * Usage: test_storage [test-name]   (no argument: the whole suite)
 *        (test_storage --crash-child DIR N and --ack-child DIR N are the
 *        children of two tests)
 * Exit status: 0 when every assertion held, 1 otherwise.
 */
#include "st.h"
#include "st_memo.h"

#include <CUnit/Basic.h>

#include "im_cunit.h"
#include <CUnit/CUnit.h>
#include <rocksdb/c.h>

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ============================================================ assertions */

/* loc, HERE and record() are the shared ones of im_cunit.h. */
typedef im_loc loc;
#define HERE IM_HERE
#define record im_cunit_record

static bool expect_u64(loc L, uint64_t got, uint64_t want, const char *a,
                       const char *b)
{
    return record(L, got == want, "%s == %s (got %" PRIu64 ", want %" PRIu64 ")",
                  a, b, got, want);
}

static bool expect_i64(loc L, int64_t got, int64_t want, const char *a,
                       const char *b)
{
    return record(L, got == want, "%s == %s (got %" PRId64 ", want %" PRId64 ")",
                  a, b, got, want);
}

static bool expect_code(loc L, int got, int want, const char *a, const char *b)
{
    return record(L, got == want, "%s == %s (got %d %s, want %d %s)", a, b, got,
                  st_code_name(got), want, st_code_name(want));
}

static bool expect_true(loc L, bool v, const char *a)
{
    return record(L, v, "%s", a);
}

static bool expect_str(loc L, const char *got, const char *want, const char *a)
{
    bool ok = got != NULL && want != NULL && strcmp(got, want) == 0;
    return record(L, ok, "%s (got \"%s\", want \"%s\")", a,
                  got ? got : "(null)", want ? want : "(null)");
}

static bool expect_mem(loc L, const void *got, size_t glen, const void *want,
                       size_t wlen, const char *a)
{
    bool ok = glen == wlen && (wlen == 0 || (got && memcmp(got, want, wlen) == 0));
    return record(L, ok, "%s (got %zu bytes, want %zu bytes%s)", a, glen, wlen,
                  glen == wlen ? ", contents differ" : "");
}

#define EXPECT_U64_AT(L, a, b) expect_u64(L, (uint64_t)(a), (uint64_t)(b), #a, #b)
#define EXPECT_I64_AT(L, a, b) expect_i64(L, (int64_t)(a), (int64_t)(b), #a, #b)
#define EXPECT_CODE_AT(L, a, b) expect_code(L, (int)(a), (int)(b), #a, #b)
#define EXPECT_TRUE_AT(L, c) expect_true(L, (c) ? true : false, #c)
#define EXPECT_STR_AT(L, a, b) expect_str(L, (a), (b), #a " == " #b)

/* (Spelled out rather than through the _AT forms, so that the message
 * shows the expression as written, not macro-expanded.) */
#define EXPECT_U64(a, b) expect_u64(HERE, (uint64_t)(a), (uint64_t)(b), #a, #b)
#define EXPECT_I64(a, b) expect_i64(HERE, (int64_t)(a), (int64_t)(b), #a, #b)
#define EXPECT_CODE(a, b) expect_code(HERE, (int)(a), (int)(b), #a, #b)
#define EXPECT_TRUE(c) expect_true(HERE, (c) ? true : false, #c)
#define EXPECT_STR(a, b) expect_str(HERE, (a), (b), #a " == " #b)
#define EXPECT_MEM(g, gl, w, wl) expect_mem(HERE, (g), (gl), (w), (wl), #g " == " #w)

/* A refused or failed call: the code, and a message that says why. */
#define EXPECT_ERR(rc, err, want)                                              \
    do {                                                                       \
        EXPECT_CODE((rc), (want));                                             \
        EXPECT_CODE((err).code, (want));                                       \
        EXPECT_TRUE((err).msg[0] != '\0');                                     \
    } while (0)

/* ======================================================= temp directories */

static int rm_entry(const char *path, const struct stat *sb, int flag,
                    struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* Creates a fresh directory under $TMPDIR (or /tmp); dir gets its path. */
static bool make_tmpdir(char *dir, size_t size)
{
    const char *tmp = getenv("TMPDIR");
    if (tmp == NULL || tmp[0] == '\0')
        tmp = "/tmp";
    snprintf(dir, size, "%s/imbox-st-XXXXXX", tmp);
    if (mkdtemp(dir) == NULL) {
        record(HERE, false, "mkdtemp(%s): %s", dir, strerror(errno));
        dir[0] = '\0';
        return false;
    }
    return true;
}

/* Removes a directory tree (depth first, never following links). */
static void remove_tree(const char *dir)
{
    if (dir[0] == '\0')
        return;
    int rc = nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    record(HERE, rc == 0, "remove_tree(%s): %s", dir, strerror(errno));
}

/* ================================================================ fixture */

#define T0 INT64_C(1700000000000) /* the injected clock starts here */

/* One test's shard: its directory, its options, its clock. */
typedef struct fx {
    char dir[512];  /* the temporary directory (removed by fx_finish) */
    char path[600]; /* the shard's database directory inside it */
    _Atomic int64_t now;
    st_options opt;
    st_shard *s;
} fx;

static int64_t fx_clock(void *ctx)
{
    return atomic_load((_Atomic int64_t *)ctx);
}

static void set_now(fx *f, int64_t t) { atomic_store(&f->now, t); }

/* Fresh directory and options (defaults, `sync`, the injected clock). The
 * test may change f->opt before fx_open(). */
static bool fx_init(fx *f, bool sync)
{
    memset(f, 0, sizeof *f);
    atomic_init(&f->now, T0);
    st_options_init(&f->opt);
    f->opt.sync = sync;
    f->opt.clock = fx_clock;
    f->opt.clock_ctx = (void *)&f->now;
    if (!make_tmpdir(f->dir, sizeof f->dir))
        return false;
    snprintf(f->path, sizeof f->path, "%s/shard", f->dir);
    return true;
}

#define fx_open(f) fx_open_(HERE, f)
static bool fx_open_(loc L, fx *f)
{
    st_error err;
    memset(&err, 0, sizeof err);
    int rc = st_open(f->path, &f->opt, &f->s, &err);
    if (!record(L, rc == ST_OK && f->s != NULL, "st_open(%s): %d %s: %s",
                f->path, rc, st_code_name(rc), err.msg))
        return false;
    return true;
}

/* fx_init + fx_open. */
#define fx_start(f, sync) (fx_init(f, sync) && fx_open_(HERE, f))

/* Close and open again: what survives is what was durable. */
#define fx_reopen(f) fx_reopen_(HERE, f)
static bool fx_reopen_(loc L, fx *f)
{
    st_close(&f->s);
    EXPECT_TRUE_AT(L, f->s == NULL);
    return fx_open_(L, f);
}

/* Closes the shard (if open) and removes the directory. */
static void fx_finish(fx *f)
{
    st_close(&f->s);
    EXPECT_TRUE(f->s == NULL);
    remove_tree(f->dir);
}

/* ============================================================= operations */

/* A put with its inputs set and its outputs poisoned (so the engine must
 * fill them). */
static st_put mkput(const char *rcv, const char *snd, const char *id,
                    int32_t type, const void *content, size_t len)
{
    st_put p;
    memset(&p, 0, sizeof p);
    p.receiver = rcv;
    p.sender = snd;
    p.msg_id = id;
    p.msg_type = type;
    p.content = content;
    p.content_len = len;
    p.code = 999;
    p.seq = UINT64_MAX;
    p.send_time_ms = -1;
    return p;
}

/* A put with a text content. */
static st_put mkput_s(const char *rcv, const char *snd, const char *id,
                      const char *text)
{
    return mkput(rcv, snd, id, 1, text, strlen(text));
}

/* st_append of n puts; checks the request succeeded (per-put results are
 * the caller's to check). */
#define append_n(f, puts, n) append_n_(HERE, f, puts, n)
static bool append_n_(loc L, fx *f, st_put *puts, size_t n)
{
    st_error err;
    memset(&err, 0, sizeof err);
    int rc = st_append(f->s, puts, n, &err);
    bool ok = EXPECT_CODE_AT(L, rc, ST_OK);
    ok = EXPECT_CODE_AT(L, err.code, ST_OK) && ok;
    return ok;
}

/* Appends one text message; returns the put with its outputs. */
#define append1(f, r, s, id, text) append1_(HERE, f, r, s, id, text)
static st_put append1_(loc L, fx *f, const char *rcv, const char *snd,
                       const char *id, const char *text)
{
    st_put p = mkput_s(rcv, snd, id, text);
    append_n_(L, f, &p, 1);
    return p;
}

/* Appends one new message that must be stored; returns its seq. */
#define append_ok(f, r, s, id, text) append_ok_(HERE, f, r, s, id, text)
static uint64_t append_ok_(loc L, fx *f, const char *rcv, const char *snd,
                           const char *id, const char *text)
{
    st_put p = append1_(L, f, rcv, snd, id, text);
    EXPECT_CODE_AT(L, p.code, ST_OK);
    EXPECT_TRUE_AT(L, !p.duplicate);
    EXPECT_I64_AT(L, p.send_time_ms, atomic_load(&f->now));
    return p.seq;
}

/* st_ack that must succeed; returns how many it deleted. */
#define ack_ok(f, uid, snd, upto) ack_ok_(HERE, f, uid, snd, upto)
static uint64_t ack_ok_(loc L, fx *f, const char *uid, const char *snd,
                        uint64_t upto)
{
    st_error err;
    memset(&err, 0, sizeof err);
    uint64_t deleted = UINT64_MAX;
    int rc = st_ack(f->s, uid, snd, upto, &deleted, &err);
    if (!record(L, rc == ST_OK, "st_ack(%s, %s, %" PRIu64 "): %d %s: %s", uid,
                snd ? snd : "NULL", upto, rc, st_code_name(rc), err.msg))
        return UINT64_MAX;
    return deleted;
}

/* st_inbox_info that must succeed. */
#define inbox(f, uid) inbox_(HERE, f, uid)
static st_inbox inbox_(loc L, fx *f, const char *uid)
{
    st_inbox in;
    st_error err;
    memset(&in, 0xab, sizeof in);
    memset(&err, 0, sizeof err);
    int rc = st_inbox_info(f->s, uid, &in, &err);
    record(L, rc == ST_OK, "st_inbox_info(%s): %d %s: %s", uid, rc,
           st_code_name(rc), err.msg);
    return in;
}

/* One page that must be read successfully. Free it with st_page_free. */
#define read_page(f, uid, snd, after, limit, max_bytes, pg)                    \
    read_page_(HERE, f, uid, snd, after, limit, max_bytes, pg)
static bool read_page_(loc L, fx *f, const char *uid, const char *snd,
                       uint64_t after, uint32_t limit, size_t max_bytes,
                       st_page *pg)
{
    st_error err;
    memset(&err, 0, sizeof err);
    memset(pg, 0, sizeof *pg);
    int rc = st_read(f->s, uid, snd, after, limit, max_bytes, pg, &err);
    return record(L, rc == ST_OK,
                  "st_read(%s, %s, after %" PRIu64 ", limit %u): %d %s: %s", uid,
                  snd ? snd : "NULL", after, limit, rc, st_code_name(rc), err.msg);
}

/* A message copied out of a page. */
typedef struct rmsg {
    uint64_t seq;
    int64_t send_time_ms;
    int32_t msg_type;
    char sender[ST_UID_MAX + 1];
    char msg_id[ST_MSGID_MAX + 1];
    uint8_t *content;
    size_t content_len;
} rmsg;

/* Everything one read_all() saw. */
typedef struct rlist {
    rmsg *v;
    size_t n, cap;
    uint64_t high; /* page.high of the last page */
    unsigned pages; /* st_read calls made */
} rlist;

static void rlist_free(rlist *r)
{
    for (size_t i = 0; i < r->n; i++)
        free(r->v[i].content);
    free(r->v);
    memset(r, 0, sizeof *r);
}

static void rlist_add(rlist *r, const st_msg *m)
{
    if (r->n == r->cap) {
        r->cap = r->cap ? r->cap * 2 : 64;
        r->v = realloc(r->v, r->cap * sizeof *r->v);
        if (r->v == NULL)
            abort();
    }
    rmsg *o = &r->v[r->n++];
    memset(o, 0, sizeof *o);
    o->seq = m->seq;
    o->send_time_ms = m->send_time_ms;
    o->msg_type = m->msg_type;
    snprintf(o->sender, sizeof o->sender, "%s", m->sender ? m->sender : "");
    snprintf(o->msg_id, sizeof o->msg_id, "%s", m->msg_id ? m->msg_id : "");
    o->content_len = m->content_len;
    o->content = malloc(m->content_len + 1);
    if (o->content == NULL)
        abort();
    if (m->content_len)
        memcpy(o->content, m->content, m->content_len);
}

/* Reads the whole inbox (or one conversation with snd != NULL), page by
 * page of `limit`, without acking. Checks that sequences ascend, that
 * `more` is true exactly when the next page is not empty, and that the
 * last read is empty. */
#define read_all(f, uid, snd, out) read_all_(HERE, f, uid, snd, ST_PAGE_MAX, out)
#define read_all_by(f, uid, snd, limit, out) read_all_(HERE, f, uid, snd, limit, out)
static bool read_all_(loc L, fx *f, const char *uid, const char *snd,
                      uint32_t limit, rlist *out)
{
    memset(out, 0, sizeof *out);
    uint64_t after = 0;
    bool prev_more = false;
    for (;;) {
        if (!record(L, out->pages < 100000, "read_all(%s) does not end", uid))
            return false;
        st_page pg;
        if (!read_page_(L, f, uid, snd, after, limit, 0, &pg))
            return false;
        out->pages++;
        out->high = pg.high;
        bool ok = record(L, pg.n <= limit, "page of %zu > limit %u", pg.n, limit);
        if (out->pages > 1)
            ok = record(L, prev_more == (pg.n > 0),
                        "read_all(%s): previous page said more=%d, this page "
                        "after %" PRIu64 " has %zu messages",
                        uid, prev_more, after, pg.n) && ok;
        for (size_t i = 0; i < pg.n; i++) {
            ok = record(L, pg.msgs[i].seq > after,
                        "read_all(%s): seq %" PRIu64 " after %" PRIu64
                        " is not ascending", uid, pg.msgs[i].seq, after) && ok;
            after = pg.msgs[i].seq;
            rlist_add(out, &pg.msgs[i]);
        }
        size_t n = pg.n;
        prev_more = pg.more;
        if (n == 0)
            ok = record(L, !pg.more, "empty page says more") && ok;
        st_page_free(&pg);
        if (!ok)
            return false;
        if (n == 0)
            return true;
    }
}

/* Checks that a read_all() result holds exactly these sequences:
 * expect_seqs(&r, 2, 4, 6). */
#define expect_seqs(r, ...)                                                    \
    expect_seqs_(HERE, r, (const uint64_t[]){__VA_ARGS__},                     \
                 sizeof((const uint64_t[]){__VA_ARGS__}) / sizeof(uint64_t))
static bool expect_seqs_(loc L, const rlist *r, const uint64_t *seqs, size_t n)
{
    if (!record(L, r->n == n, "read %zu messages, want %zu", r->n, n))
        return false;
    for (size_t i = 0; i < n; i++)
        if (!record(L, r->v[i].seq == seqs[i],
                    "message %zu has seq %" PRIu64 ", want %" PRIu64, i,
                    r->v[i].seq, seqs[i]))
            return false;
    return true;
}

/* Checks that a read_all() result holds exactly the sequences lo..hi. */
#define expect_seq_range(r, lo, hi) expect_seq_range_(HERE, r, lo, hi)
static bool expect_seq_range_(loc L, const rlist *r, uint64_t lo, uint64_t hi)
{
    size_t n = hi >= lo ? (size_t)(hi - lo + 1) : 0;
    if (!record(L, r->n == n, "read %zu messages, want %zu (%" PRIu64 "..%" PRIu64
                ")", r->n, n, lo, hi))
        return false;
    for (size_t i = 0; i < n; i++)
        if (!record(L, r->v[i].seq == lo + i,
                    "message %zu has seq %" PRIu64 ", want %" PRIu64, i,
                    r->v[i].seq, lo + i))
            return false;
    return true;
}

/* st_counts that must succeed. Free *out. */
#define counts(f, uid, out, n, total) counts_(HERE, f, uid, out, n, total)
static bool counts_(loc L, fx *f, const char *uid, st_count **out, size_t *n,
                    uint64_t *total)
{
    st_error err;
    memset(&err, 0, sizeof err);
    *out = NULL;
    *n = 999;
    *total = 999;
    int rc = st_counts(f->s, uid, out, n, total, &err);
    return record(L, rc == ST_OK, "st_counts(%s): %d %s: %s", uid, rc,
                  st_code_name(rc), err.msg);
}

/* One expected per-sender count. */
typedef struct want_count {
    const char *sender;
    uint64_t count;
    int64_t last;
} want_count;

/* Checks counts as one path gave them (c, n, t: freed here) against the
 * expected rows (in order) and total. */
static bool counts_match(loc L, const char *how, const char *uid, st_count *c, size_t n,
                         uint64_t t, const want_count *want, size_t nwant, uint64_t total)
{
    bool ok = record(L, t == total, "%s(%s): total %" PRIu64 ", want %" PRIu64, how, uid, t,
                     total);
    ok = record(L, n == nwant, "%s(%s): %zu senders, want %zu", how, uid, n, nwant) && ok;
    if (n == 0)
        ok = EXPECT_TRUE_AT(L, c == NULL) && ok;
    for (size_t i = 0; i < n && i < nwant; i++) {
        ok = record(L, strcmp(c[i].sender, want[i].sender) == 0,
                    "%s(%s)[%zu].sender is \"%s\", want \"%s\"", how, uid, i,
                    c[i].sender, want[i].sender) && ok;
        ok = record(L, c[i].count == want[i].count,
                    "%s(%s)[%zu] (%s).count is %" PRIu64 ", want %" PRIu64,
                    how, uid, i, c[i].sender, c[i].count, want[i].count) && ok;
        ok = record(L, c[i].last_send_time_ms == want[i].last,
                    "%s(%s)[%zu] (%s).last_send_time_ms is %" PRId64
                    ", want %" PRId64, how, uid, i, c[i].sender,
                    c[i].last_send_time_ms, want[i].last) && ok;
    }
    free(c);
    return ok;
}

/* st_counts_read(uid): whether it needs the writer's purge (*purge), and
 * otherwise its counts checked against the expected ones. */
#define expect_counts_read(f, uid, want, n, total, purge)                        \
    expect_counts_read_(HERE, f, uid, want, n, total, purge)
static bool expect_counts_read_(loc L, fx *f, const char *uid, const want_count *want,
                                size_t nwant, uint64_t total, bool *purge)
{
    st_error err;
    memset(&err, 0, sizeof err);
    st_count *c = NULL;
    size_t n = 999;
    uint64_t t = 999;
    int rc = st_counts_read(f->s, uid, &c, &n, &t, purge, &err);
    if (!record(L, rc == ST_OK, "st_counts_read(%s): %d %s: %s", uid, rc, st_code_name(rc),
                err.msg))
        return false;
    if (*purge) /* nothing read */
        return record(L, c == NULL && n == 0 && t == 0,
                      "st_counts_read(%s) needs a purge but read %zu senders", uid, n);
    return counts_match(L, "st_counts_read", uid, c, n, t, want, nwant, total);
}

/* Checks the counts of uid against the expected rows (in order) and total:
 * those read at once (st_counts_read), unless they need the writer's purge
 * first, and those of the writer (st_counts). */
#define expect_counts(f, uid, want, n, total) expect_counts_(HERE, f, uid, want, n, total)
static bool expect_counts_(loc L, fx *f, const char *uid, const want_count *want,
                           size_t nwant, uint64_t total)
{
    bool purge = false;
    bool ok = expect_counts_read_(L, f, uid, want, nwant, total, &purge);
    st_count *c;
    size_t n;
    uint64_t t;
    if (!counts_(L, f, uid, &c, &n, &t))
        return false;
    return counts_match(L, "st_counts", uid, c, n, t, want, nwant, total) && ok;
}

/* Waits for async requests (their `done` increments a counter). */
typedef struct waiter {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
} waiter;

static void waiter_init(waiter *w)
{
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    w->done = 0;
}

static void waiter_destroy(waiter *w)
{
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
}

static void waiter_done(st_req *req)
{
    waiter *w = req->arg;
    pthread_mutex_lock(&w->mu);
    w->done++;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

/* Waits until n requests completed (30 s at most, then it fails). */
static bool waiter_wait(waiter *w, int n)
{
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += 30;
    int rc = 0;
    pthread_mutex_lock(&w->mu);
    while (w->done < n && rc == 0)
        rc = pthread_cond_timedwait(&w->cv, &w->mu, &dl);
    bool ok = w->done >= n;
    pthread_mutex_unlock(&w->mu);
    return record(HERE, ok, "async requests did not complete in 30 s");
}

static void stats(fx *f, st_stats *st)
{
    memset(st, 0xab, sizeof *st);
    st_stats_get(f->s, st);
}

/* =================================================================== tests */

/* 1. Every field of a stored message comes back as appended. */
static void test_append_read_roundtrip(void)
{
    fx f;
    rlist r = {0};
    if (!fx_start(&f, false))
        goto out;

    static const char c1[] = "hello\0world"; /* 11 bytes, one of them 0x00 */
    uint8_t c2[256];
    for (int i = 0; i < 256; i++)
        c2[i] = (uint8_t)i;
    static const char c4[] = {'\0'};

    /* One at a time, the clock moving between appends. */
    st_put p1 = mkput("alice", "bob", "m-1", 7, c1, sizeof c1 - 1);
    append_n(&f, &p1, 1);
    EXPECT_CODE(p1.code, ST_OK);
    EXPECT_TRUE(!p1.duplicate);
    EXPECT_U64(p1.seq, 1);
    EXPECT_I64(p1.send_time_ms, T0);

    set_now(&f, T0 + 5);
    st_put p2 = mkput("alice", "carol", "m-2", -3, c2, sizeof c2);
    append_n(&f, &p2, 1);
    EXPECT_CODE(p2.code, ST_OK);
    EXPECT_TRUE(!p2.duplicate);
    EXPECT_U64(p2.seq, 2);
    EXPECT_I64(p2.send_time_ms, T0 + 5);

    /* Three in one request: consecutive sequences in request order. */
    set_now(&f, T0 + 10);
    st_put b[3] = {
        mkput("alice", "bob", "m-3", 0, NULL, 0),
        mkput("alice", "dave", "m-4", INT32_MAX, c4, sizeof c4),
        mkput("alice", "bob", "m-5", INT32_MIN, "z", 1),
    };
    append_n(&f, b, 3);
    for (int i = 0; i < 3; i++) {
        EXPECT_CODE(b[i].code, ST_OK);
        EXPECT_TRUE(!b[i].duplicate);
        EXPECT_U64(b[i].seq, 3 + i);
        EXPECT_I64(b[i].send_time_ms, T0 + 10);
    }

    struct {
        uint64_t seq;
        int64_t t;
        int32_t type;
        const char *sender, *id;
        const void *content;
        size_t len;
    } want[] = {
        {1, T0, 7, "bob", "m-1", c1, sizeof c1 - 1},
        {2, T0 + 5, -3, "carol", "m-2", c2, sizeof c2},
        {3, T0 + 10, 0, "bob", "m-3", "", 0},
        {4, T0 + 10, INT32_MAX, "dave", "m-4", c4, sizeof c4},
        {5, T0 + 10, INT32_MIN, "bob", "m-5", "z", 1},
    };
    if (read_all(&f, "alice", NULL, &r) && EXPECT_U64(r.n, 5)) {
        for (size_t i = 0; i < 5; i++) {
            EXPECT_U64(r.v[i].seq, want[i].seq);
            EXPECT_I64(r.v[i].send_time_ms, want[i].t);
            EXPECT_I64(r.v[i].msg_type, want[i].type);
            EXPECT_STR(r.v[i].sender, want[i].sender);
            EXPECT_STR(r.v[i].msg_id, want[i].id);
            EXPECT_MEM(r.v[i].content, r.v[i].content_len, want[i].content,
                       want[i].len);
        }
        EXPECT_U64(r.high, 5);
    }

    /* A partial page says there is more. */
    st_page pg;
    if (read_page(&f, "alice", NULL, 0, 2, 0, &pg)) {
        EXPECT_U64(pg.n, 2);
        EXPECT_TRUE(pg.more);
        EXPECT_U64(pg.high, 5);
        if (pg.n == 2) {
            EXPECT_U64(pg.msgs[0].seq, 1);
            EXPECT_U64(pg.msgs[1].seq, 2);
            EXPECT_MEM(pg.msgs[0].content, pg.msgs[0].content_len, c1, sizeof c1 - 1);
        }
        st_page_free(&pg);
    }

    st_inbox in = inbox(&f, "alice");
    EXPECT_U64(in.high, 5);
    EXPECT_U64(in.count, 5);
    EXPECT_U64(in.floor, 0);
    EXPECT_I64(in.last_time_ms, T0 + 10);

    st_inbox none = inbox(&f, "nobody");
    EXPECT_U64(none.high, 0);
    EXPECT_U64(none.count, 0);
    EXPECT_U64(none.floor, 0);
    EXPECT_I64(none.last_time_ms, 0);

    st_stats st;
    stats(&f, &st);
    EXPECT_U64(st.appends, 5);
    EXPECT_U64(st.duplicates, 0);
    EXPECT_U64(st.full, 0);
    EXPECT_U64(st_debug_keys(f.s, 'M'), 5);
out:
    rlist_free(&r);
    fx_finish(&f);
}

/* 2. A restart keeps every durable message and the sequence high-water
 * mark, also once the inbox was emptied. */
static void test_restart_keeps_messages_and_high(void)
{
    fx f;
    rlist r = {0};
    char id[32], text[32];
    if (!fx_start(&f, true))
        goto out;

    for (int i = 1; i <= 10; i++) {
        snprintf(id, sizeof id, "r-%d", i);
        snprintf(text, sizeof text, "payload %d", i);
        EXPECT_U64(append_ok(&f, "alice", "bob", id, text), i);
    }
    if (!fx_reopen(&f))
        goto out;

    if (read_all(&f, "alice", NULL, &r) && expect_seq_range(&r, 1, 10)) {
        for (int i = 1; i <= 10; i++) {
            snprintf(id, sizeof id, "r-%d", i);
            snprintf(text, sizeof text, "payload %d", i);
            EXPECT_STR(r.v[i - 1].msg_id, id);
            EXPECT_STR(r.v[i - 1].sender, "bob");
            EXPECT_MEM(r.v[i - 1].content, r.v[i - 1].content_len, text,
                       strlen(text));
            EXPECT_I64(r.v[i - 1].send_time_ms, T0);
        }
    }
    rlist_free(&r);
    st_inbox in = inbox(&f, "alice");
    EXPECT_U64(in.high, 10);
    EXPECT_U64(in.count, 10);
    /* The dedup index survives too. */
    st_put p = append1(&f, "alice", "bob", "r-3", "retry");
    EXPECT_TRUE(p.duplicate);
    EXPECT_U64(p.seq, 3);
    EXPECT_I64(p.send_time_ms, T0);

    EXPECT_U64(ack_ok(&f, "alice", NULL, 10), 10);
    if (!fx_reopen(&f))
        goto out;

    in = inbox(&f, "alice");
    EXPECT_U64(in.high, 10);
    EXPECT_U64(in.count, 0);
    EXPECT_U64(in.floor, 10);
    EXPECT_I64(in.last_time_ms, T0);
    if (read_all(&f, "alice", NULL, &r)) {
        EXPECT_U64(r.n, 0);
        EXPECT_U64(r.high, 10);
    }
    rlist_free(&r);
    /* The cursor of the last page stays valid after the restart. */
    st_page pg;
    if (read_page(&f, "alice", NULL, 10, 10, 0, &pg)) {
        EXPECT_U64(pg.n, 0);
        EXPECT_TRUE(!pg.more);
        st_page_free(&pg);
    }
    EXPECT_U64(ack_ok(&f, "alice", NULL, 10), 0);

    set_now(&f, T0 + 100);
    EXPECT_U64(append_ok(&f, "alice", "bob", "r-11", "eleven"), 11);
    in = inbox(&f, "alice");
    EXPECT_U64(in.high, 11);
    EXPECT_U64(in.count, 1);
    EXPECT_I64(in.last_time_ms, T0 + 100);

    if (!fx_reopen(&f))
        goto out;
    if (read_all(&f, "alice", NULL, &r) && expect_seq_range(&r, 11, 11))
        EXPECT_STR(r.v[0].msg_id, "r-11");
    EXPECT_U64(st_debug_keys(f.s, 'M'), 1);
out:
    rlist_free(&r);
    fx_finish(&f);
}

/* 3. A cursor taken before a restart acks exactly up to itself after it,
 * also when more messages arrived meanwhile. */
static void test_ack_cursor_across_restart(void)
{
    fx f;
    rlist r = {0};
    char id[32];
    if (!fx_start(&f, true))
        goto out;

    for (int i = 1; i <= 10; i++) {
        snprintf(id, sizeof id, "c-%d", i);
        append_ok(&f, "alice", "bob", id, "x");
    }
    uint64_t cursor = 0;
    st_page pg;
    if (read_page(&f, "alice", NULL, 0, 5, 0, &pg)) {
        EXPECT_U64(pg.n, 5);
        EXPECT_TRUE(pg.more);
        for (size_t i = 0; i < pg.n; i++)
            EXPECT_U64(pg.msgs[i].seq, i + 1);
        if (pg.n)
            cursor = pg.msgs[pg.n - 1].seq;
        st_page_free(&pg);
    }
    EXPECT_U64(cursor, 5);
    if (!fx_reopen(&f))
        goto out;

    for (int i = 11; i <= 15; i++) {
        snprintf(id, sizeof id, "c-%d", i);
        EXPECT_U64(append_ok(&f, "alice", "bob", id, "y"), i);
    }
    EXPECT_U64(ack_ok(&f, "alice", NULL, cursor), 5);
    if (read_all(&f, "alice", NULL, &r) && expect_seq_range(&r, 6, 15)) {
        for (int i = 6; i <= 15; i++) {
            snprintf(id, sizeof id, "c-%d", i);
            EXPECT_STR(r.v[i - 6].msg_id, id);
        }
    }
    st_inbox in = inbox(&f, "alice");
    EXPECT_U64(in.count, 10);
    EXPECT_U64(in.high, 15);
    EXPECT_U64(st_debug_keys(f.s, 'M'), 10);

    /* The same cursor again (a retried Pull) deletes nothing more; the
     * `deleted` output is optional. */
    EXPECT_U64(ack_ok(&f, "alice", NULL, cursor), 0);
    st_error err;
    EXPECT_CODE(st_ack(f.s, "alice", NULL, cursor, NULL, &err), ST_OK);
    EXPECT_U64(inbox(&f, "alice").count, 10);
    /* Acking one more with deleted == NULL and err == NULL works too. */
    EXPECT_CODE(st_ack(f.s, "alice", NULL, 6, NULL, NULL), ST_OK);
    EXPECT_U64(inbox(&f, "alice").count, 9);
out:
    rlist_free(&r);
    fx_finish(&f);
}

/* 4. Draining 1,000 messages the way Pull does (ack the previous cursor,
 * read the next page) sees each message once and leaves nothing. */
static void test_drain_1000_by_pages(void)
{
    enum { N = 1000, PAGE = 100, BATCH = 100 };
    fx f;
    static char ids[N][16];
    static st_put puts[BATCH];
    unsigned char seen[N];
    memset(seen, 0, sizeof seen);
    if (!fx_start(&f, false))
        goto out;

    for (int b = 0; b < N / BATCH; b++) {
        for (int i = 0; i < BATCH; i++) {
            int k = b * BATCH + i;
            snprintf(ids[k], sizeof ids[k], "d%04d", k);
            puts[i] = mkput_s("alice", k % 3 ? "bob" : "carol", ids[k], ids[k]);
        }
        append_n(&f, puts, BATCH);
        for (int i = 0; i < BATCH; i++) {
            EXPECT_CODE(puts[i].code, ST_OK);
            EXPECT_U64(puts[i].seq, b * BATCH + i + 1);
        }
    }
    EXPECT_U64(inbox(&f, "alice").count, N);

    uint64_t cursor = 0;
    int reads = 0, dups = 0, bad = 0;
    for (;;) {
        if (!EXPECT_TRUE(reads < 20))
            break;
        /* Pull(cursor): ack up to the cursor (0 acks nothing), then read. */
        EXPECT_U64(ack_ok(&f, "alice", NULL, cursor), reads == 0 ? 0 : PAGE);
        st_page pg;
        if (!read_page(&f, "alice", NULL, cursor, PAGE, 0, &pg))
            break;
        reads++;
        size_t n = pg.n;
        if (n > 0) {
            EXPECT_U64(n, PAGE);
            EXPECT_TRUE(pg.more == (reads < N / PAGE));
        } else {
            EXPECT_TRUE(!pg.more);
        }
        for (size_t i = 0; i < n; i++) {
            const st_msg *m = &pg.msgs[i];
            int k = -1;
            if (sscanf(m->msg_id, "d%d", &k) != 1 || k < 0 || k >= N) {
                bad++;
                continue;
            }
            if (seen[k]++)
                dups++;
            EXPECT_U64(m->seq, (uint64_t)k + 1);
            EXPECT_MEM(m->content, m->content_len, ids[k], strlen(ids[k]));
        }
        if (n)
            cursor = pg.msgs[n - 1].seq;
        st_page_free(&pg);
        if (n == 0)
            break;
    }
    EXPECT_U64(reads, N / PAGE + 1);
    EXPECT_U64(dups, 0);
    EXPECT_U64(bad, 0);
    int unseen = 0;
    for (int k = 0; k < N; k++)
        unseen += !seen[k];
    EXPECT_U64(unseen, 0);
    EXPECT_U64(cursor, N);

    st_inbox in = inbox(&f, "alice");
    EXPECT_U64(in.count, 0);
    EXPECT_U64(in.high, N);
    EXPECT_U64(in.floor, N);
    st_page pg;
    if (read_page(&f, "alice", NULL, 0, PAGE, 0, &pg)) {
        EXPECT_U64(pg.n, 0);
        EXPECT_TRUE(!pg.more);
        st_page_free(&pg);
    }
    EXPECT_U64(st_debug_keys(f.s, 'M'), 0);
    EXPECT_U64(st_debug_keys(f.s, 'S'), 0);
    EXPECT_U64(st_debug_keys(f.s, 'C'), 0);
    expect_counts(&f, "alice", NULL, 0, 0);
    st_stats st;
    stats(&f, &st);
    EXPECT_U64(st.deleted, N);
    EXPECT_U64(st.appends, N);
    /* Each ack took the page just read from its memo, not from a scan. */
    EXPECT_U64(st.ack_memos, N / PAGE);
out:
    fx_finish(&f);
}

/* 5. Uids that are prefixes of each other are separate inboxes. */
static void test_prefix_uids_isolated(void)
{
    fx f;
    rlist r = {0};
    char id[32];
    static const char *uids[] = {"a", "ab", "abc"};
    const int nmsg[] = {2, 3, 4};
    if (!fx_start(&f, false))
        goto out;

    /* Interleaved appends; msg_ids name their inbox. Within "abc", senders
     * "x" and "xy" also share a prefix. */
    for (int round = 0; round < 4; round++)
        for (int u = 0; u < 3; u++)
            if (round < nmsg[u]) {
                set_now(&f, T0 + 10 * round + u);
                snprintf(id, sizeof id, "%s-%d", uids[u], round + 1);
                EXPECT_U64(append_ok(&f, uids[u], round % 2 ? "xy" : "x", id, id),
                           round + 1);
            }

    for (int u = 0; u < 3; u++) {
        st_inbox in = inbox(&f, uids[u]);
        EXPECT_U64(in.high, nmsg[u]);
        EXPECT_U64(in.count, nmsg[u]);
        if (read_all(&f, uids[u], NULL, &r) && expect_seq_range(&r, 1, nmsg[u]))
            for (int i = 0; i < nmsg[u]; i++) {
                snprintf(id, sizeof id, "%s-%d", uids[u], i + 1);
                EXPECT_STR(r.v[i].msg_id, id);
            }
        rlist_free(&r);
    }
    /* Conversation reads: "x" does not see "xy". */
    if (read_all(&f, "abc", "x", &r) && EXPECT_U64(r.n, 2)) {
        EXPECT_STR(r.v[0].msg_id, "abc-1");
        EXPECT_STR(r.v[1].msg_id, "abc-3");
        EXPECT_STR(r.v[0].sender, "x");
        EXPECT_STR(r.v[1].sender, "x");
    }
    rlist_free(&r);
    if (read_all(&f, "abc", "xy", &r) && EXPECT_U64(r.n, 2)) {
        EXPECT_STR(r.v[0].msg_id, "abc-2");
        EXPECT_STR(r.v[1].msg_id, "abc-4");
    }
    rlist_free(&r);

    want_count wa[] = {{"xy", 1, T0 + 10}, {"x", 1, T0}};
    want_count wab[] = {{"x", 2, T0 + 21}, {"xy", 1, T0 + 11}};
    want_count wabc[] = {{"xy", 2, T0 + 32}, {"x", 2, T0 + 22}};
    expect_counts(&f, "a", wa, 2, 2);
    expect_counts(&f, "ab", wab, 2, 3);
    expect_counts(&f, "abc", wabc, 2, 4);

    /* "ab" cannot ack beyond its own high even though "abc" has seq 4. */
    st_error err;
    uint64_t deleted = 0;
    int rc = st_ack(f.s, "ab", NULL, 4, &deleted, &err);
    EXPECT_ERR(rc, err, ST_ECURSOR);
    rc = st_read(f.s, "ab", NULL, 4, 10, 0, &(st_page){0}, &err);
    EXPECT_ERR(rc, err, ST_ECURSOR);

    /* Ack "ab" fully: "a" and "abc" untouched. */
    EXPECT_U64(ack_ok(&f, "ab", NULL, 3), 3);
    EXPECT_U64(inbox(&f, "ab").count, 0);
    EXPECT_U64(inbox(&f, "a").count, 2);
    EXPECT_U64(inbox(&f, "abc").count, 4);
    expect_counts(&f, "ab", NULL, 0, 0);
    expect_counts(&f, "a", wa, 2, 2);
    expect_counts(&f, "abc", wabc, 2, 4);
    if (read_all(&f, "abc", NULL, &r))
        expect_seq_range(&r, 1, 4);
    rlist_free(&r);
    if (read_all(&f, "a", NULL, &r))
        expect_seq_range(&r, 1, 2);
    rlist_free(&r);
    if (read_all(&f, "ab", NULL, &r))
        EXPECT_U64(r.n, 0);
    rlist_free(&r);
    EXPECT_U64(st_debug_keys(f.s, 'M'), 6);

    /* Conversation ack of "a"/"x" leaves "ab"'s and "abc"'s "x" alone. */
    EXPECT_U64(ack_ok(&f, "a", "x", 2), 1);
    EXPECT_U64(inbox(&f, "abc").count, 4);
    if (read_all(&f, "abc", "x", &r))
        EXPECT_U64(r.n, 2);
    rlist_free(&r);

    /* Dedup keys are not confused by where the separators fall:
     * (a, bc, m) and (ab, c, m) are different. */
    set_now(&f, T0 + 1000);
    EXPECT_U64(append_ok(&f, "a", "bc", "m", "1"), 3);
    st_put p = append1(&f, "ab", "c", "m", "2");
    EXPECT_CODE(p.code, ST_OK);
    EXPECT_TRUE(!p.duplicate);
    EXPECT_U64(p.seq, 4);
out:
    rlist_free(&r);
    fx_finish(&f);
}

/* 6. Idempotent append: (receiver, sender, msg_id) is stored once within
 * the dedup window. */
static void test_dedup(void)
{
    enum { WINDOW = 60000 };
    fx f;
    rlist r = {0};
    waiter w;
    waiter_init(&w);
    if (!fx_init(&f, false))
        goto out;
    f.opt.dedup_window_ms = WINDOW;
    if (!fx_open(&f))
        goto out;

    EXPECT_U64(append_ok(&f, "alice", "bob", "x1", "first"), 1);

    /* A retry: the original result, nothing stored. */
    set_now(&f, T0 + 10);
    st_put p = append1(&f, "alice", "bob", "x1", "retry with other content");
    EXPECT_CODE(p.code, ST_OK);
    EXPECT_TRUE(p.duplicate);
    EXPECT_U64(p.seq, 1);
    EXPECT_I64(p.send_time_ms, T0);
    EXPECT_U64(inbox(&f, "alice").count, 1);
    EXPECT_U64(inbox(&f, "alice").high, 1);
    EXPECT_U64(st_debug_keys(f.s, 'M'), 1);
    if (read_all(&f, "alice", NULL, &r) && EXPECT_U64(r.n, 1))
        EXPECT_MEM(r.v[0].content, r.v[0].content_len, "first", 5);
    rlist_free(&r);

    /* Another sender with the same msg_id is another message; so is the
     * same msg_id to another receiver. */
    EXPECT_U64(append_ok(&f, "alice", "carol", "x1", "carol's"), 2);
    EXPECT_U64(append_ok(&f, "dave", "bob", "x1", "dave's"), 1);

    /* The same put twice in one request. */
    st_put b[2] = {mkput_s("alice", "bob", "y1", "once"),
                   mkput_s("alice", "bob", "y1", "twice")};
    append_n(&f, b, 2);
    EXPECT_CODE(b[0].code, ST_OK);
    EXPECT_CODE(b[1].code, ST_OK);
    EXPECT_TRUE(!b[0].duplicate);
    EXPECT_TRUE(b[1].duplicate);
    EXPECT_U64(b[0].seq, 3);
    EXPECT_U64(b[1].seq, 3);
    EXPECT_I64(b[0].send_time_ms, T0 + 10);
    EXPECT_I64(b[1].send_time_ms, T0 + 10);

    /* The same put in two requests in flight together: the first submitted
     * stores, the second is its duplicate. */
    st_put z[2] = {mkput_s("alice", "bob", "z1", "first z"),
                   mkput_s("alice", "bob", "z1", "second z")};
    st_req q[2];
    memset(q, 0, sizeof q);
    for (int i = 0; i < 2; i++) {
        q[i].type = ST_REQ_APPEND;
        q[i].puts = &z[i];
        q[i].nputs = 1;
        q[i].done = waiter_done;
        q[i].arg = &w;
        q[i].err.code = 999;
    }
    int rc0 = st_submit(f.s, &q[0]);
    int rc1 = st_submit(f.s, &q[1]);
    EXPECT_CODE(rc0, ST_OK);
    EXPECT_CODE(rc1, ST_OK);
    if (rc0 == ST_OK && rc1 == ST_OK && waiter_wait(&w, 2)) {
        EXPECT_CODE(q[0].err.code, ST_OK);
        EXPECT_CODE(q[1].err.code, ST_OK);
        EXPECT_CODE(z[0].code, ST_OK);
        EXPECT_CODE(z[1].code, ST_OK);
        EXPECT_TRUE(!z[0].duplicate);
        EXPECT_TRUE(z[1].duplicate);
        EXPECT_U64(z[0].seq, 4);
        EXPECT_U64(z[1].seq, 4);
        EXPECT_I64(z[1].send_time_ms, z[0].send_time_ms);
    }
    EXPECT_U64(inbox(&f, "alice").count, 4);
    EXPECT_U64(inbox(&f, "alice").high, 4);
    if (read_all(&f, "alice", NULL, &r) && expect_seq_range(&r, 1, 4)) {
        EXPECT_MEM(r.v[2].content, r.v[2].content_len, "once", 4);
        EXPECT_MEM(r.v[3].content, r.v[3].content_len, "first z", 7);
    }
    rlist_free(&r);

    st_stats st;
    stats(&f, &st);
    EXPECT_U64(st.appends, 5);
    EXPECT_U64(st.duplicates, 3);

    /* A late retry after the ack is still a duplicate, and stores nothing. */
    EXPECT_U64(ack_ok(&f, "alice", NULL, 4), 4);
    set_now(&f, T0 + WINDOW / 2);
    p = append1(&f, "alice", "bob", "x1", "late retry");
    EXPECT_CODE(p.code, ST_OK);
    EXPECT_TRUE(p.duplicate);
    EXPECT_U64(p.seq, 1);
    EXPECT_I64(p.send_time_ms, T0);
    EXPECT_U64(inbox(&f, "alice").count, 0);
    EXPECT_U64(inbox(&f, "alice").high, 4);
    if (read_all(&f, "alice", NULL, &r))
        EXPECT_U64(r.n, 0);
    rlist_free(&r);

    /* One dedup key per stored message: alice/bob/x1, alice/carol/x1,
     * dave/bob/x1, alice/bob/y1, alice/bob/z1. */
    uint64_t d0 = st_debug_keys(f.s, 'D');
    EXPECT_U64(d0, 5);

    /* Past the window (for all of them), the same id stores anew... */
    int64_t later = T0 + WINDOW + 1000;
    set_now(&f, later);
    p = append1(&f, "dave", "bob", "x1", "dave's again");
    EXPECT_CODE(p.code, ST_OK);
    EXPECT_TRUE(!p.duplicate);
    EXPECT_U64(p.seq, 2);
    EXPECT_I64(p.send_time_ms, later);
    EXPECT_U64(inbox(&f, "dave").count, 2);

    /* ...and compaction drops the expired dedup keys (only the one just
     * rewritten is within the window). */
    st_error err;
    memset(&err, 0, sizeof err);
    EXPECT_CODE(st_compact(f.s, &err), ST_OK);
    uint64_t d1 = st_debug_keys(f.s, 'D');
    EXPECT_TRUE(d1 < d0);
    EXPECT_U64(d1, 1);
    /* The messages themselves are not touched by compaction. */
    EXPECT_U64(st_debug_keys(f.s, 'M'), 2);
    EXPECT_U64(inbox(&f, "dave").count, 2);

    /* After compaction: alice/bob/x1 stores anew, then dedups again. */
    EXPECT_U64(append_ok(&f, "alice", "bob", "x1", "anew"), 5);
    set_now(&f, later + 1);
    p = append1(&f, "alice", "bob", "x1", "anew retry");
    EXPECT_TRUE(p.duplicate);
    EXPECT_U64(p.seq, 5);
    EXPECT_I64(p.send_time_ms, later);
    EXPECT_U64(st_debug_keys(f.s, 'D'), 2);
    /* The re-stored dave/bob/x1 is within its new window: a duplicate. */
    p = append1(&f, "dave", "bob", "x1", "dave retry");
    EXPECT_TRUE(p.duplicate);
    EXPECT_U64(p.seq, 2);
    EXPECT_U64(inbox(&f, "alice").count, 1);
out:
    rlist_free(&r);
    fx_finish(&f);
    waiter_destroy(&w);
}

/* 7. The inbox quota refuses, per put, what does not fit; nothing else. */
static void test_quota(void)
{
    fx f;
    rlist r = {0};
    char id[32];
    if (!fx_init(&f, false))
        goto out;
    f.opt.max_inbox = 5;
    if (!fx_open(&f))
        goto out;

    for (int i = 1; i <= 5; i++) {
        snprintf(id, sizeof id, "q%d", i);
        EXPECT_U64(append_ok(&f, "alice", "bob", id, "x"), i);
    }
    /* The 6th is refused; the other receivers of the request store. */
    st_put b[3] = {mkput_s("alice", "bob", "q6", "x"),
                   mkput_s("bob", "carol", "q6", "x"),
                   mkput_s("carol", "bob", "q6", "x")};
    append_n(&f, b, 3);
    EXPECT_CODE(b[0].code, ST_EFULL);
    EXPECT_TRUE(b[0].error != NULL && b[0].error[0] != '\0');
    EXPECT_TRUE(!b[0].duplicate);
    for (int i = 1; i < 3; i++) {
        EXPECT_CODE(b[i].code, ST_OK);
        EXPECT_TRUE(!b[i].duplicate);
        EXPECT_U64(b[i].seq, 1);
    }
    st_inbox in = inbox(&f, "alice");
    EXPECT_U64(in.count, 5);
    EXPECT_U64(in.high, 5);
    if (read_all(&f, "alice", NULL, &r))
        expect_seq_range(&r, 1, 5);
    rlist_free(&r);
    EXPECT_U64(inbox(&f, "bob").count, 1);
    EXPECT_U64(inbox(&f, "carol").count, 1);

    /* A duplicate of a stored message is answered even when full. */
    st_put p = append1(&f, "alice", "bob", "q3", "x");
    EXPECT_CODE(p.code, ST_OK);
    EXPECT_TRUE(p.duplicate);
    EXPECT_U64(p.seq, 3);
    EXPECT_I64(p.send_time_ms, T0);

    st_stats st;
    stats(&f, &st);
    EXPECT_U64(st.full, 1);
    EXPECT_U64(st.appends, 7);
    EXPECT_U64(st.duplicates, 1);

    /* After an ack of 2 there is room for 2 (the refused put did not use
     * up a sequence number); the third of the request is refused. */
    EXPECT_U64(ack_ok(&f, "alice", NULL, 2), 2);
    st_put c[3] = {mkput_s("alice", "bob", "q6", "x"),
                   mkput_s("alice", "bob", "q7", "x"),
                   mkput_s("alice", "bob", "q8", "x")};
    append_n(&f, c, 3);
    EXPECT_CODE(c[0].code, ST_OK);
    EXPECT_CODE(c[1].code, ST_OK);
    EXPECT_CODE(c[2].code, ST_EFULL);
    EXPECT_TRUE(c[2].error != NULL && c[2].error[0] != '\0');
    EXPECT_U64(c[0].seq, 6);
    EXPECT_U64(c[1].seq, 7);
    in = inbox(&f, "alice");
    EXPECT_U64(in.count, 5);
    EXPECT_U64(in.high, 7);
    if (read_all(&f, "alice", NULL, &r))
        expect_seqs(&r, 3, 4, 5, 6, 7);
    rlist_free(&r);
    /* The refused q8 is not a duplicate later: it was never stored. */
    EXPECT_U64(ack_ok(&f, "alice", NULL, 3), 1);
    p = append1(&f, "alice", "bob", "q8", "x");
    EXPECT_CODE(p.code, ST_OK);
    EXPECT_TRUE(!p.duplicate);
    EXPECT_U64(p.seq, 8);
    stats(&f, &st);
    EXPECT_U64(st.full, 2);
out:
    rlist_free(&r);
    fx_finish(&f);
}

/* 8. Expired messages are never returned, not counted, and purged. */
static void test_ttl(void)
{
    enum { TTL = 1000 };
    fx f;
    rlist r = {0};
    if (!fx_init(&f, false))
        goto out;
    f.opt.ttl_ms = TTL;
    if (!fx_open(&f))
        goto out;

    append_ok(&f, "alice", "bob", "a1", "old 1");
    append_ok(&f, "alice", "bob", "a2", "old 2");
    append_ok(&f, "alice", "bob", "a3", "old 3");
    append_ok(&f, "dave", "bob", "d1", "old d1");
    append_ok(&f, "dave", "bob", "d2", "old d2");
    set_now(&f, T0 + 800);
    EXPECT_U64(append_ok(&f, "alice", "carol", "a4", "new"), 4);
    EXPECT_U64(append_ok(&f, "dave", "erin", "d3", "new d3"), 3);
    EXPECT_U64(st_debug_keys(f.s, 'M'), 7);

    /* Everything but a4 and d3 is now older than the TTL. */
    set_now(&f, T0 + 1200);
    /* Nothing read dave's inbox since: counted at once, it needs the
     * writer's purge first, and nothing is read. */
    bool dpurge = false;
    want_count wd3[] = {{"erin", 1, T0 + 800}};
    expect_counts_read(&f, "dave", wd3, 1, 1, &dpurge);
    EXPECT_TRUE(dpurge);

    if (read_all(&f, "alice", NULL, &r) && expect_seqs(&r, 4)) {
        EXPECT_STR(r.v[0].msg_id, "a4");
        EXPECT_U64(r.high, 4);
    }
    rlist_free(&r);
    st_page pg;
    if (read_page(&f, "alice", NULL, 0, 2, 0, &pg)) {
        EXPECT_U64(pg.n, 1);
        if (pg.n)
            EXPECT_U64(pg.msgs[0].seq, 4);
        EXPECT_TRUE(!pg.more);
        st_page_free(&pg);
    }
    if (read_all(&f, "alice", "bob", &r))
        EXPECT_U64(r.n, 0);
    rlist_free(&r);
    if (read_all(&f, "alice", "carol", &r))
        expect_seqs(&r, 4);
    rlist_free(&r);

    /* Counts exclude (and purge) alice's expired ones (the reads above may
     * have had them purged already: a read that meets expired rows asks
     * the writer to purge them), and read at once after that they need no
     * purge. */
    want_count wa[] = {{"carol", 1, T0 + 800}};
    bool purge = true;
    expect_counts(&f, "alice", wa, 1, 1);
    expect_counts_read(&f, "alice", wa, 1, 1, &purge);
    EXPECT_TRUE(!purge);
    EXPECT_U64(inbox(&f, "alice").count, 1);

    /* st_expire purges dave's two; alice's are already gone. */
    uint64_t purged = UINT64_MAX;
    st_error err;
    memset(&err, 0, sizeof err);
    EXPECT_CODE(st_expire(f.s, &purged, &err), ST_OK);
    EXPECT_U64(purged, 2);
    EXPECT_U64(st_debug_keys(f.s, 'M'), 2);
    st_stats st;
    stats(&f, &st);
    EXPECT_U64(st.expired, 5);
    EXPECT_U64(st.deleted, 5);
    st_inbox in = inbox(&f, "dave");
    EXPECT_U64(in.count, 1);
    EXPECT_U64(in.high, 3);
    want_count wd[] = {{"erin", 1, T0 + 800}};
    expect_counts(&f, "dave", wd, 1, 1);
    if (read_all(&f, "dave", NULL, &r) && expect_seqs(&r, 3))
        EXPECT_STR(r.v[0].msg_id, "d3");
    rlist_free(&r);

    /* Nothing more to purge; sequences go on from the high-water mark. */
    EXPECT_CODE(st_expire(f.s, &purged, &err), ST_OK);
    EXPECT_U64(purged, 0);
    EXPECT_CODE(st_expire(f.s, NULL, &err), ST_OK);
    EXPECT_U64(append_ok(&f, "dave", "bob", "d4", "newer"), 4);

    /* Later still, the newer ones expire too. */
    set_now(&f, T0 + 1200 + TTL + 1);
    EXPECT_CODE(st_expire(f.s, &purged, &err), ST_OK);
    EXPECT_U64(purged, 3);
    EXPECT_U64(st_debug_keys(f.s, 'M'), 0);
    EXPECT_U64(st_debug_keys(f.s, 'S'), 0);
    EXPECT_U64(st_debug_keys(f.s, 'C'), 0);
    EXPECT_U64(inbox(&f, "alice").count, 0);
    EXPECT_U64(inbox(&f, "dave").count, 0);
    expect_counts(&f, "dave", NULL, 0, 0);
out:
    rlist_free(&r);
    fx_finish(&f);
}

/* 9. Per-sender counts stay exact through partial acks. */
static void test_counts_after_partial_acks(void)
{
    fx f;
    char id[32];
    if (!fx_start(&f, false))
        goto out;

    /* seq: 1 b, 2 c, 3 d, 4 b, 5 d, 6 c, 7 d, 8 b, 9 d (times seq*100). */
    static const char *senders = "bcdbdcdbd";
    for (int i = 0; i < 9; i++) {
        const char *s = senders[i] == 'b' ? "bob" : senders[i] == 'c' ? "carol" : "dave";
        set_now(&f, T0 + 100 * (i + 1));
        snprintf(id, sizeof id, "k%d", i + 1);
        EXPECT_U64(append_ok(&f, "alice", s, id, "x"), i + 1);
    }
    /* Most recent first: dave 900, bob 800, carol 600. */
    want_count w0[] = {{"dave", 4, T0 + 900}, {"bob", 3, T0 + 800},
                       {"carol", 2, T0 + 600}};
    expect_counts(&f, "alice", w0, 3, 9);

    /* Ack up to 6: left are 7 d, 8 b, 9 d; carol is gone. */
    EXPECT_U64(ack_ok(&f, "alice", NULL, 6), 6);
    want_count w1[] = {{"dave", 2, T0 + 900}, {"bob", 1, T0 + 800}};
    expect_counts(&f, "alice", w1, 2, 3);
    EXPECT_U64(inbox(&f, "alice").count, 3);

    /* Ack up to 8: only dave's 9 is left. */
    EXPECT_U64(ack_ok(&f, "alice", NULL, 8), 2);
    want_count w2[] = {{"dave", 1, T0 + 900}};
    expect_counts(&f, "alice", w2, 1, 1);

    /* Acking an older cursor changes nothing. */
    EXPECT_U64(ack_ok(&f, "alice", NULL, 5), 0);
    expect_counts(&f, "alice", w2, 1, 1);

    EXPECT_U64(ack_ok(&f, "alice", NULL, 9), 1);
    expect_counts(&f, "alice", NULL, 0, 0);
    EXPECT_U64(st_debug_keys(f.s, 'C'), 0);

    /* Equal last times are ordered by sender; an unknown inbox has none. */
    set_now(&f, T0 + 5000);
    append_ok(&f, "tie", "zed", "t1", "x");
    append_ok(&f, "tie", "amy", "t2", "x");
    append_ok(&f, "tie", "mia", "t3", "x");
    append_ok(&f, "tie", "amy", "t4", "x");
    want_count wt[] = {{"amy", 2, T0 + 5000}, {"mia", 1, T0 + 5000},
                       {"zed", 1, T0 + 5000}};
    expect_counts(&f, "tie", wt, 3, 4);
    expect_counts(&f, "nobody", NULL, 0, 0);
out:
    fx_finish(&f);
}

/* 10. One conversation: read and ack only that sender's messages. */
static void test_conversation_read_and_ack(void)
{
    fx f;
    rlist r = {0};
    char id[32];
    if (!fx_start(&f, false))
        goto out;

    /* bob: 1 3 5 7 9 11 12; carol: 2 4 6 8 10. */
    static const char *who = "bcbcbcbcbcbb";
    for (int i = 0; i < 12; i++) {
        set_now(&f, T0 + i);
        snprintf(id, sizeof id, "%c%d", who[i], i + 1);
        append_ok(&f, "alice", who[i] == 'b' ? "bob" : "carol", id, id);
    }

    /* Page through bob's by 3. */
    static const uint64_t pages[3][3] = {{1, 3, 5}, {7, 9, 11}, {12, 0, 0}};
    uint64_t after = 0;
    for (int p = 0; p < 4; p++) {
        st_page pg;
        if (!read_page(&f, "alice", "bob", after, 3, 0, &pg))
            break;
        EXPECT_U64(pg.high, 12);
        size_t want_n = p < 2 ? 3 : p == 2 ? 1 : 0;
        EXPECT_U64(pg.n, want_n);
        /* more: bob has more after this page (carol's do not count). */
        EXPECT_TRUE(pg.more == (p < 2));
        for (size_t i = 0; i < pg.n && i < want_n; i++) {
            EXPECT_U64(pg.msgs[i].seq, pages[p][i]);
            EXPECT_STR(pg.msgs[i].sender, "bob");
        }
        if (pg.n)
            after = pg.msgs[pg.n - 1].seq;
        st_page_free(&pg);
    }
    EXPECT_U64(after, 12);
    /* carol's conversation ends at 10 while bob's 11 and 12 follow. */
    if (read_all_by(&f, "alice", "carol", 5, &r))
        expect_seqs(&r, 2, 4, 6, 8, 10);
    rlist_free(&r);

    /* Conversation ack: bob's up to 7 only. */
    EXPECT_U64(ack_ok(&f, "alice", "bob", 7), 4);
    want_count w1[] = {{"bob", 3, T0 + 11}, {"carol", 5, T0 + 9}};
    expect_counts(&f, "alice", w1, 2, 8);
    st_inbox in = inbox(&f, "alice");
    EXPECT_U64(in.count, 8);
    EXPECT_U64(in.high, 12);
    if (read_all(&f, "alice", NULL, &r))
        expect_seqs(&r, 2, 4, 6, 8, 9, 10, 11, 12);
    rlist_free(&r);
    if (read_all(&f, "alice", "carol", &r))
        expect_seqs(&r, 2, 4, 6, 8, 10);
    rlist_free(&r);
    EXPECT_U64(st_debug_keys(f.s, 'M'), 8);
    EXPECT_U64(st_debug_keys(f.s, 'S'), 8);

    /* The same conversation cursor again deletes nothing more; a sender
     * without messages has nothing to delete. */
    EXPECT_U64(ack_ok(&f, "alice", "bob", 7), 0);
    EXPECT_U64(ack_ok(&f, "alice", "zoe", 12), 0);
    EXPECT_U64(ack_ok(&f, "alice", "bob", 0), 0);

    /* carol's all gone; bob's 9 11 12 stay. */
    EXPECT_U64(ack_ok(&f, "alice", "carol", 12), 5);
    want_count w2[] = {{"bob", 3, T0 + 11}};
    expect_counts(&f, "alice", w2, 1, 3);
    if (read_all(&f, "alice", NULL, &r))
        expect_seqs(&r, 9, 11, 12);
    rlist_free(&r);
    if (read_all(&f, "alice", "carol", &r))
        EXPECT_U64(r.n, 0);
    rlist_free(&r);
    EXPECT_U64(inbox(&f, "alice").count, 3);

    /* A whole-inbox ack after conversation acks counts only what is left. */
    EXPECT_U64(ack_ok(&f, "alice", NULL, 11), 2);
    if (read_all(&f, "alice", NULL, &r))
        expect_seqs(&r, 12);
    rlist_free(&r);
    EXPECT_U64(st_debug_keys(f.s, 'M'), 1);
    EXPECT_U64(st_debug_keys(f.s, 'S'), 1);
out:
    rlist_free(&r);
    fx_finish(&f);
}

/* Reads alice's page of `limit` after `after` and drops it: what matters
 * is the memo the read leaves. */
static void read_and_drop(fx *f, uint64_t after, uint32_t limit)
{
    st_page pg;
    if (read_page(f, "alice", NULL, after, limit, 0, &pg))
        st_page_free(&pg);
}

/* The acks that took their rows from a memo so far. */
static uint64_t ack_memos(fx *f)
{
    st_stats st;
    stats(f, &st);
    return st.ack_memos;
}

/* 10b. An ack takes the rows of the page read last from the read's memo
 * only while the memo is still the truth: a conversation ack since the
 * read, a page read from a cursor above the floor, or an ack beyond the
 * page make it read the rows again; either way the counts stay exact. */
static void test_ack_memo_only_while_true(void)
{
    fx f;
    char id[32];
    if (!fx_start(&f, false))
        goto out;
    /* bob 1 4 7 10 ...; carol 2 5 8 11 ...; dave 3 6 9 12 ... (30 in all) */
    static const char *who[3] = {"bob", "carol", "dave"};
    for (int i = 0; i < 30; i++) {
        set_now(&f, T0 + i);
        snprintf(id, sizeof id, "m%d", i + 1);
        append_ok(&f, "alice", who[i % 3], id, id);
    }

    /* Read 1..10, a conversation ack of carol's 2 5 8 inside it, then the
     * whole-inbox ack of the page: the memo lies, so the rows are read
     * again, and only what is left is counted. */
    read_and_drop(&f, 0, 10);
    EXPECT_U64(ack_ok(&f, "alice", "carol", 9), 3);
    EXPECT_U64(ack_ok(&f, "alice", NULL, 10), 7);
    EXPECT_U64(ack_memos(&f), 0);
    want_count w1[] = {{"dave", 7, T0 + 29}, {"carol", 7, T0 + 28}, {"bob", 6, T0 + 27}};
    expect_counts(&f, "alice", w1, 3, 20);

    /* Read 11..20, ack half of it from the memo, then the rest: the memo
     * of the same read serves once, then is gone, and a second read of
     * the rest leaves a memo of its own. */
    read_and_drop(&f, 10, 10);
    EXPECT_U64(ack_ok(&f, "alice", NULL, 15), 5);
    EXPECT_U64(ack_memos(&f), 1);
    read_and_drop(&f, 15, 5);
    EXPECT_U64(ack_ok(&f, "alice", NULL, 20), 5);
    EXPECT_U64(ack_memos(&f), 2);
    want_count w2[] = {{"dave", 4, T0 + 29}, {"carol", 3, T0 + 28}, {"bob", 3, T0 + 27}};
    expect_counts(&f, "alice", w2, 3, 10);

    /* A page read from a cursor above the floor (24: 25..27) does not
     * cover 21..24: an ack up to 27 scans. An ack beyond a page (read
     * 28..29, ack 30) scans too. */
    read_and_drop(&f, 24, 3);
    EXPECT_U64(ack_ok(&f, "alice", NULL, 27), 7);
    read_and_drop(&f, 27, 2);
    EXPECT_U64(ack_ok(&f, "alice", NULL, 30), 3);
    EXPECT_U64(ack_memos(&f), 2);
    expect_counts(&f, "alice", NULL, 0, 0);
    EXPECT_U64(st_debug_keys(f.s, 'M'), 0);
    EXPECT_U64(st_debug_keys(f.s, 'S'), 0);
    EXPECT_U64(st_debug_keys(f.s, 'C'), 0);
out:
    fx_finish(&f);
}

/* 10c. The memo table itself (st_memo.h): what it returns, what it
 * drops, and the generation that keeps a read that raced a clear out. */
static st_msg memo_msg(uint64_t seq, const char *sender)
{
    return (st_msg){.seq = seq, .sender = sender};
}

static void test_memo_table(void)
{
    st_memo *m = st_memo_new();
    if (!EXPECT_TRUE(m != NULL))
        return;
    st_msg page[3] = {memo_msg(5, "bob"), memo_msg(6, "bob"), memo_msg(8, "carol")};

    /* Put, then take: rows, senders and bounds come back; taken once. */
    st_memo_put(m, st_memo_gen(m), "alice", 4, page, 3);
    EXPECT_U64(st_memo_count(m), 1);
    EXPECT_TRUE(st_memo_take(m, "alice", 3, 8) == NULL);  /* 4 is not covered */
    EXPECT_TRUE(st_memo_take(m, "alice", 4, 9) == NULL);  /* 9 is not covered */
    EXPECT_TRUE(st_memo_take(m, "alic", 4, 8) == NULL);   /* another inbox */
    st_memo_page *p = st_memo_take(m, "alice", 6, 8);     /* floor above lo */
    if (EXPECT_TRUE(p != NULL)) {
        EXPECT_U64(p->lo, 4);
        EXPECT_U64(p->hi, 8);
        EXPECT_U64(p->n, 3);
        const char *want[3] = {"bob", "bob", "carol"};
        for (size_t i = 0; i < p->n && i < 3; i++) {
            EXPECT_U64(p->rows[i].seq, page[i].seq);
            EXPECT_MEM(p->senders + p->rows[i].off, p->rows[i].len, want[i], strlen(want[i]));
        }
        st_memo_page_free(p);
    }
    EXPECT_TRUE(st_memo_take(m, "alice", 4, 8) == NULL);
    EXPECT_U64(st_memo_count(m), 0);

    /* A read that took the generation before a clear leaves no memo. */
    uint64_t g = st_memo_gen(m);
    st_memo_clear_uid(m, "zoe");
    st_memo_put(m, g, "alice", 4, page, 3);
    EXPECT_U64(st_memo_count(m), 0);
    /* A clear of alice drops alice's memos only. */
    st_memo_put(m, st_memo_gen(m), "alice", 4, page, 3);
    st_memo_put(m, st_memo_gen(m), "bob", 4, page, 3);
    st_memo_clear_uid(m, "alice");
    EXPECT_U64(st_memo_count(m), 1);
    EXPECT_TRUE(st_memo_take(m, "alice", 4, 8) == NULL);
    p = st_memo_take(m, "bob", 4, 8);
    EXPECT_TRUE(p != NULL);
    st_memo_page_free(p);

    /* Refused: rows not ascending above lo, an empty page, a page over
     * ST_MEMO_BYTES. */
    st_msg bad[2] = {memo_msg(7, "bob"), memo_msg(7, "carol")};
    st_memo_put(m, st_memo_gen(m), "alice", 4, bad, 2);
    st_memo_put(m, st_memo_gen(m), "alice", 7, page, 3);
    st_memo_put(m, st_memo_gen(m), "alice", 4, page, 0);
    EXPECT_U64(st_memo_count(m), 0);
    enum { BIG = 300 };
    static st_msg big[BIG];
    static char names[BIG][ST_UID_MAX + 1];
    for (int i = 0; i < BIG; i++) {
        memset(names[i], 'a' + i % 26, ST_UID_MAX);
        snprintf(names[i], 8, "%06d", i); /* distinct, 64 bytes each */
        names[i][6] = 'x';
        big[i] = memo_msg((uint64_t)i + 1, names[i]);
    }
    st_memo_put(m, st_memo_gen(m), "alice", 0, big, BIG);
    EXPECT_U64(st_memo_count(m), 0);
    st_memo_put(m, st_memo_gen(m), "alice", 0, big, 100); /* 100 x 80 bytes fits */
    EXPECT_U64(st_memo_count(m), 1);

    /* The same (uid, lo) replaces; a full set evicts its oldest. */
    st_memo_put(m, st_memo_gen(m), "alice", 0, page, 3);
    EXPECT_U64(st_memo_count(m), 1);
    p = st_memo_take(m, "alice", 0, 8);
    if (EXPECT_TRUE(p != NULL))
        EXPECT_U64(p->n, 3);
    st_memo_page_free(p);
    for (uint64_t lo = 0; lo < ST_MEMO_WAYS + 1; lo++) {
        st_msg one = memo_msg(lo + 1, "bob");
        st_memo_put(m, st_memo_gen(m), "alice", lo, &one, 1);
    }
    EXPECT_U64(st_memo_count(m), ST_MEMO_WAYS);
    EXPECT_TRUE(st_memo_take(m, "alice", 0, 1) == NULL); /* the oldest went */
    p = st_memo_take(m, "alice", ST_MEMO_WAYS, ST_MEMO_WAYS + 1);
    EXPECT_TRUE(p != NULL);
    st_memo_page_free(p);
    st_memo_clear(m);
    EXPECT_U64(st_memo_count(m), 0);
    st_memo_free(m);
}

/* What a refused call must leave unchanged. */
typedef struct snapshot {
    st_inbox alice;
    uint64_t keys[5];
    st_stats st;
} snapshot;

static const char tables[5] = {'M', 'S', 'C', 'D', 'I'};

static void take_snapshot(fx *f, snapshot *sn)
{
    memset(sn, 0, sizeof *sn);
    sn->alice = inbox(f, "alice");
    for (int i = 0; i < 5; i++)
        sn->keys[i] = st_debug_keys(f->s, tables[i]);
    stats(f, &sn->st);
}

#define expect_unchanged(f, sn, what) expect_unchanged_(HERE, f, sn, what)
static void expect_unchanged_(loc L, fx *f, const snapshot *sn, const char *what)
{
    snapshot now;
    take_snapshot(f, &now);
    record(L, memcmp(&now.alice, &sn->alice, sizeof now.alice) == 0,
           "%s changed alice's inbox (count %" PRIu64 "->%" PRIu64 ", high %" PRIu64
           "->%" PRIu64 ")", what, sn->alice.count, now.alice.count,
           sn->alice.high, now.alice.high);
    for (int i = 0; i < 5; i++)
        record(L, now.keys[i] == sn->keys[i],
               "%s changed the %c keys (%" PRIu64 " -> %" PRIu64 ")", what,
               tables[i], sn->keys[i], now.keys[i]);
    record(L, now.st.appends == sn->st.appends && now.st.duplicates == sn->st.duplicates &&
           now.st.full == sn->st.full && now.st.deleted == sn->st.deleted &&
           now.st.expired == sn->st.expired, "%s changed the stats", what);
}

/* One refused append (a single put); checks the code, the message and that
 * nothing changed. */
#define refuse_put(f, sn, p, what) refuse_put_(HERE, f, sn, p, what)
static void refuse_put_(loc L, fx *f, const snapshot *sn, st_put p, const char *what)
{
    st_error err;
    memset(&err, 0, sizeof err);
    int rc = st_append(f->s, &p, 1, &err);
    record(L, rc == ST_EINVAL && err.code == ST_EINVAL && err.msg[0] != '\0',
           "%s: st_append gave %d %s (err.code %d, \"%s\"), want ST_EINVAL", what,
           rc, st_code_name(rc), err.code, err.msg);
    expect_unchanged_(L, f, sn, what);
}

/* A call other than an append that must be refused with `want`. */
#define refused(f, sn, rc, err, want, what) refused_(HERE, f, sn, rc, &(err), want, what)
static void refused_(loc L, fx *f, const snapshot *sn, int rc, const st_error *err,
                     int want, const char *what)
{
    record(L, rc == want && err->code == want && err->msg[0] != '\0',
           "%s: gave %d %s (err.code %d, \"%s\"), want %s", what, rc,
           st_code_name(rc), err->code, err->msg, st_code_name(want));
    expect_unchanged_(L, f, sn, what);
}

/* 11. Malformed input is refused with ST_EINVAL (or ST_ECURSOR) and a
 * message, and changes nothing. */
static void test_malformed_input_refused(void)
{
    enum { MAXC = 1024 };
    fx f;
    rlist r = {0};
    waiter w;
    waiter_init(&w);
    char long_uid[ST_UID_MAX + 2], max_uid[ST_UID_MAX + 1];
    char long_id[ST_MSGID_MAX + 2], max_id[ST_MSGID_MAX + 1];
    static uint8_t content[MAXC + 1];
    memset(long_uid, 'u', ST_UID_MAX + 1);
    long_uid[ST_UID_MAX + 1] = '\0';
    memset(max_uid, 'u', ST_UID_MAX);
    max_uid[ST_UID_MAX] = '\0';
    memset(long_id, 'i', ST_MSGID_MAX + 1);
    long_id[ST_MSGID_MAX + 1] = '\0';
    memset(max_id, 'i', ST_MSGID_MAX);
    max_id[ST_MSGID_MAX] = '\0';
    memset(content, 'c', sizeof content);

    if (!fx_init(&f, false))
        goto out;
    f.opt.max_content = MAXC;
    if (!fx_open(&f))
        goto out;
    for (int i = 1; i <= 3; i++) {
        char id[8];
        snprintf(id, sizeof id, "ok%d", i);
        append_ok(&f, "alice", "bob", id, "x");
    }
    snapshot sn;
    take_snapshot(&f, &sn);
    EXPECT_U64(sn.alice.count, 3);
    EXPECT_U64(sn.keys[0], 3);

    static const struct {
        const char *uid, *what;
    } bad_uids[] = {
        {"", "empty uid"},
        {NULL, "65-byte uid"}, /* long_uid */
        {"al\x01" "ce", "uid with \\x01"},
        {"al\x1f", "uid with \\x1f"},
        {"tab\there", "uid with a tab"},
        {"new\nline", "uid with a newline"},
        {"del\x7f", "uid with DEL"},
        {"al\xff" "ce", "uid with \\xff"},
        {"\x80" "abc", "uid with a lone continuation byte"},
        {"abc\xe2\x82", "uid with a truncated sequence"},
        {"\xc0\xaf", "uid with an overlong encoding"},
        {"\xed\xa0\x80", "uid with a UTF-16 surrogate"},
        {"\xf4\x90\x80\x80", "uid beyond U+10FFFF"},
    };
    char what[128];
    for (size_t i = 0; i < sizeof bad_uids / sizeof bad_uids[0]; i++) {
        const char *u = bad_uids[i].uid ? bad_uids[i].uid : long_uid;
        st_error err;
        uint64_t deleted;
        st_page pg;
        st_count *c = NULL;
        size_t n = 0;
        uint64_t total = 0;
        st_inbox in;

        snprintf(what, sizeof what, "append to %s", bad_uids[i].what);
        refuse_put(&f, &sn, mkput_s(u, "bob", "bad", "x"), what);
        snprintf(what, sizeof what, "append from %s", bad_uids[i].what);
        refuse_put(&f, &sn, mkput_s("alice", u, "bad", "x"), what);
        { /* the error names the put and its field */
            st_put two[2] = {mkput_s("alice", "bob", "good", "x"), mkput_s("alice", u, "bad", "x")};
            memset(&err, 0, sizeof err);
            EXPECT_CODE(st_append(f.s, two, 2, &err), ST_EINVAL);
            record(HERE, strncmp(err.msg, "puts[1].sender: ", 16) == 0, "%s: \"%s\"", what,
                   err.msg);
            expect_unchanged(&f, &sn, what);
        }

        memset(&err, 0, sizeof err);
        memset(&pg, 0, sizeof pg);
        snprintf(what, sizeof what, "read of %s", bad_uids[i].what);
        refused(&f, &sn, st_read(f.s, u, NULL, 0, 10, 0, &pg, &err), err,
                ST_EINVAL, what);
        EXPECT_U64(pg.n, 0);
        memset(&err, 0, sizeof err);
        snprintf(what, sizeof what, "read of a conversation with %s",
                 bad_uids[i].what);
        refused(&f, &sn, st_read(f.s, "alice", u, 0, 10, 0, &pg, &err), err,
                ST_EINVAL, what);
        memset(&err, 0, sizeof err);
        snprintf(what, sizeof what, "ack of %s", bad_uids[i].what);
        refused(&f, &sn, st_ack(f.s, u, NULL, 0, &deleted, &err), err,
                ST_EINVAL, what);
        memset(&err, 0, sizeof err);
        snprintf(what, sizeof what, "conversation ack with %s", bad_uids[i].what);
        refused(&f, &sn, st_ack(f.s, "alice", u, 3, &deleted, &err), err,
                ST_EINVAL, what);
        memset(&err, 0, sizeof err);
        snprintf(what, sizeof what, "counts of %s", bad_uids[i].what);
        refused(&f, &sn, st_counts(f.s, u, &c, &n, &total, &err), err,
                ST_EINVAL, what);
        free(c);
        memset(&err, 0, sizeof err);
        snprintf(what, sizeof what, "inbox_info of %s", bad_uids[i].what);
        refused(&f, &sn, st_inbox_info(f.s, u, &in, &err), err, ST_EINVAL, what);
    }

    refuse_put(&f, &sn, mkput_s("alice", "bob", "", "x"), "empty msg_id");
    refuse_put(&f, &sn, mkput_s("alice", "bob", long_id, "x"), "129-byte msg_id");
    refuse_put(&f, &sn, mkput("alice", "bob", "big", 1, content, MAXC + 1),
               "content over max_content");
    refuse_put(&f, &sn, mkput("alice", "bob", "null", 1, NULL, 5),
               "NULL content with length 5");

    /* Pages, cursors. */
    st_error err;
    st_page pg;
    uint64_t deleted;
    memset(&err, 0, sizeof err);
    refused(&f, &sn, st_read(f.s, "alice", NULL, 0, 0, 0, &pg, &err), err,
            ST_EINVAL, "page limit 0");
    memset(&err, 0, sizeof err);
    refused(&f, &sn, st_read(f.s, "alice", NULL, 0, ST_PAGE_MAX + 1, 0, &pg, &err),
            err, ST_EINVAL, "page limit 1001");
    memset(&err, 0, sizeof err);
    refused(&f, &sn, st_read(f.s, "alice", NULL, 4, 10, 0, &pg, &err), err,
            ST_ECURSOR, "read after beyond the high-water mark");
    memset(&err, 0, sizeof err);
    refused(&f, &sn, st_read(f.s, "alice", "bob", 4, 10, 0, &pg, &err), err,
            ST_ECURSOR, "conversation read after beyond the high-water mark");
    memset(&err, 0, sizeof err);
    refused(&f, &sn, st_read(f.s, "nobody", NULL, 1, 10, 0, &pg, &err), err,
            ST_ECURSOR, "read after 1 of an inbox that never existed");
    memset(&err, 0, sizeof err);
    refused(&f, &sn, st_ack(f.s, "alice", NULL, 4, &deleted, &err), err,
            ST_ECURSOR, "ack upto beyond the high-water mark");
    memset(&err, 0, sizeof err);
    refused(&f, &sn, st_ack(f.s, "alice", "bob", 4, &deleted, &err), err,
            ST_ECURSOR, "conversation ack upto beyond the high-water mark");
    memset(&err, 0, sizeof err);
    refused(&f, &sn, st_ack(f.s, "alice", NULL, UINT64_MAX, &deleted, &err), err,
            ST_ECURSOR, "ack upto UINT64_MAX");
    memset(&err, 0, sizeof err);
    refused(&f, &sn, st_ack(f.s, "nobody", NULL, 1, &deleted, &err), err,
            ST_ECURSOR, "ack upto 1 of an inbox that never existed");

    /* One malformed put among good ones: the whole request is refused. */
    {
        st_put b[4] = {mkput_s("alice", "bob", "g1", "x"),
                       mkput_s("bob", "carol", "g2", "x"),
                       mkput_s("carol", "bob", "", "x"), /* empty msg_id */
                       mkput_s("dave", "bob", "g4", "x")};
        memset(&err, 0, sizeof err);
        refused(&f, &sn, st_append(f.s, b, 4, &err), err, ST_EINVAL,
                "append with one bad put of four");
        EXPECT_U64(inbox(&f, "bob").high, 0);
        EXPECT_U64(inbox(&f, "carol").high, 0);
        EXPECT_U64(inbox(&f, "dave").high, 0);

        /* The same through st_submit: refused at once, `done` never called. */
        st_req q;
        memset(&q, 0, sizeof q);
        q.type = ST_REQ_APPEND;
        q.puts = b;
        q.nputs = 4;
        q.done = waiter_done;
        q.arg = &w;
        int rc = st_submit(f.s, &q);
        refused(&f, &sn, rc, q.err, ST_EINVAL, "st_submit with one bad put of four");

        st_req a;
        memset(&a, 0, sizeof a);
        a.type = ST_REQ_ACK;
        a.uid = "";
        a.upto = 1;
        a.done = waiter_done;
        a.arg = &w;
        rc = st_submit(f.s, &a);
        refused(&f, &sn, rc, a.err, ST_EINVAL, "st_submit of an ack of an empty uid");
    }

    /* The limits themselves are accepted (and round-trip). */
    uint8_t odd_id[] = {0xff, 0x01, 0x7f, ' ', 'x', 0};
    static const char *good_uids[] = {"zoë", "日本語", "😀"};
    char emoji64[ST_UID_MAX + 1] = "";
    for (int i = 0; i < ST_UID_MAX / 4; i++)
        strcat(emoji64, "😀");
    EXPECT_U64(strlen(emoji64), ST_UID_MAX);
    EXPECT_U64(append_ok(&f, max_uid, max_uid, max_id, "x"), 1);
    EXPECT_U64(append_ok(&f, "alice", "bob", (const char *)odd_id, "odd id"), 4);
    for (int i = 0; i < 3; i++)
        EXPECT_U64(append_ok(&f, good_uids[i], good_uids[(i + 1) % 3], "u", "x"), 1);
    EXPECT_U64(append_ok(&f, emoji64, "bob", "e", "x"), 1);
    st_put p = mkput("alice", "bob", "max", 1, content, MAXC);
    append_n(&f, &p, 1);
    EXPECT_CODE(p.code, ST_OK);
    EXPECT_U64(p.seq, 5);

    if (read_all(&f, max_uid, NULL, &r) && EXPECT_U64(r.n, 1)) {
        EXPECT_STR(r.v[0].sender, max_uid);
        EXPECT_STR(r.v[0].msg_id, max_id);
    }
    rlist_free(&r);
    if (read_all(&f, "😀", "zoë", &r) && EXPECT_U64(r.n, 1))
        EXPECT_STR(r.v[0].sender, "zoë");
    rlist_free(&r);
    if (read_all(&f, "日本語", NULL, &r) && EXPECT_U64(r.n, 1))
        EXPECT_STR(r.v[0].sender, "😀");
    rlist_free(&r);
    if (read_all(&f, "alice", NULL, &r) && expect_seq_range(&r, 1, 5)) {
        EXPECT_STR(r.v[3].msg_id, (const char *)odd_id);
        EXPECT_MEM(r.v[4].content, r.v[4].content_len, content, MAXC);
    }
    rlist_free(&r);
    /* Page limits 1 and ST_PAGE_MAX, a cursor at the high-water mark. */
    if (read_page(&f, "alice", NULL, 0, 1, 0, &pg)) {
        EXPECT_U64(pg.n, 1);
        EXPECT_TRUE(pg.more);
        st_page_free(&pg);
    }
    if (read_page(&f, "alice", NULL, 0, ST_PAGE_MAX, 0, &pg)) {
        EXPECT_U64(pg.n, 5);
        EXPECT_TRUE(!pg.more);
        st_page_free(&pg);
    }
    if (read_page(&f, "alice", NULL, 5, 10, 0, &pg)) {
        EXPECT_U64(pg.n, 0);
        st_page_free(&pg);
    }
    if (read_page(&f, "nobody", NULL, 0, 10, 0, &pg)) {
        EXPECT_U64(pg.n, 0);
        EXPECT_U64(pg.high, 0);
        EXPECT_TRUE(!pg.more);
        st_page_free(&pg);
    }
    EXPECT_U64(ack_ok(&f, "nobody", NULL, 0), 0);

    /* None of the refused st_submit requests ever completed (writes run in
     * order, so they would have by now). */
    pthread_mutex_lock(&w.mu);
    EXPECT_U64(w.done, 0);
    pthread_mutex_unlock(&w.mu);
out:
    rlist_free(&r);
    fx_finish(&f);
    waiter_destroy(&w);
}

/* 12. Concurrent appends are gathered into group commits. */
enum { GC_THREADS = 16, GC_PER = 50, GC_INBOXES = 4 };

typedef struct gc_thread {
    fx *f;
    int t;
    pthread_barrier_t *bar;
    char receiver[16], sender[16];
    char ids[GC_PER][24];
    int rc[GC_PER];
    int code[GC_PER];
    bool dup[GC_PER];
    uint64_t seq[GC_PER];
} gc_thread;

static void *gc_run(void *arg)
{
    gc_thread *g = arg;
    pthread_barrier_wait(g->bar);
    for (int i = 0; i < GC_PER; i++) {
        st_put p = mkput_s(g->receiver, g->sender, g->ids[i], g->ids[i]);
        st_error err;
        g->rc[i] = st_append(g->f->s, &p, 1, &err);
        g->code[i] = p.code;
        g->dup[i] = p.duplicate;
        g->seq[i] = p.seq;
    }
    return NULL;
}

static void test_group_commit(void)
{
    fx f;
    rlist r = {0};
    static gc_thread g[GC_THREADS];
    pthread_t th[GC_THREADS];
    pthread_barrier_t bar;
    pthread_barrier_init(&bar, NULL, GC_THREADS);
    if (!fx_start(&f, true))
        goto out;

    int started = 0;
    for (int t = 0; t < GC_THREADS; t++) {
        memset(&g[t], 0, sizeof g[t]);
        g[t].f = &f;
        g[t].t = t;
        g[t].bar = &bar;
        snprintf(g[t].receiver, sizeof g[t].receiver, "g%d", t % GC_INBOXES);
        snprintf(g[t].sender, sizeof g[t].sender, "s%02d", t);
        for (int i = 0; i < GC_PER; i++)
            snprintf(g[t].ids[i], sizeof g[t].ids[i], "t%02d-%02d", t, i);
        if (pthread_create(&th[t], NULL, gc_run, &g[t]) != 0)
            break;
        started++;
    }
    if (!EXPECT_U64(started, GC_THREADS))
        abort(); /* the barrier would never open */
    for (int t = 0; t < GC_THREADS; t++)
        pthread_join(th[t], NULL);

    /* Every append stored; within an inbox, sequences are distinct and
     * cover 1..200; a thread's own appends get increasing sequences. */
    int bad = 0;
    static unsigned char used[GC_INBOXES][GC_THREADS / GC_INBOXES * GC_PER + 1];
    memset(used, 0, sizeof used);
    const uint64_t per_inbox = GC_THREADS / GC_INBOXES * GC_PER;
    for (int t = 0; t < GC_THREADS; t++)
        for (int i = 0; i < GC_PER; i++) {
            if (g[t].rc[i] != ST_OK || g[t].code[i] != ST_OK || g[t].dup[i] ||
                g[t].seq[i] < 1 || g[t].seq[i] > per_inbox ||
                used[t % GC_INBOXES][g[t].seq[i]]++ ||
                (i > 0 && g[t].seq[i] <= g[t].seq[i - 1])) {
                if (bad++ < 5)
                    record(HERE, false, "thread %d append %d: rc %d code %d dup %d "
                           "seq %" PRIu64, t, i, g[t].rc[i], g[t].code[i],
                           g[t].dup[i], g[t].seq[i]);
            }
        }
    EXPECT_U64(bad, 0);

    for (int u = 0; u < GC_INBOXES; u++) {
        char uid[16];
        snprintf(uid, sizeof uid, "g%d", u);
        st_inbox in = inbox(&f, uid);
        EXPECT_U64(in.count, per_inbox);
        EXPECT_U64(in.high, per_inbox);
        if (read_all(&f, uid, NULL, &r) && expect_seq_range(&r, 1, per_inbox)) {
            /* Each message is the one its append was told about. */
            int mismatch = 0;
            for (size_t k = 0; k < r.n; k++) {
                int t = -1, i = -1;
                if (sscanf(r.v[k].msg_id, "t%d-%d", &t, &i) != 2 || t < 0 ||
                    t >= GC_THREADS || i < 0 || i >= GC_PER ||
                    t % GC_INBOXES != u || g[t].seq[i] != r.v[k].seq ||
                    strcmp(r.v[k].sender, g[t].sender) != 0)
                    mismatch++;
            }
            EXPECT_U64(mismatch, 0);
        }
        rlist_free(&r);
    }

    st_stats st;
    stats(&f, &st);
    EXPECT_U64(st.appends, GC_THREADS * GC_PER);
    EXPECT_TRUE(st.commits >= 1);
    EXPECT_TRUE(st.commits < GC_THREADS * GC_PER);
    EXPECT_TRUE(st.max_batch > 1);
    EXPECT_TRUE(st.max_batch <= f.opt.max_batch);
    fprintf(stderr, "\n    group commit: %d appends in %" PRIu64
            " commits, max batch %" PRIu64 "\n", GC_THREADS * GC_PER,
            st.commits, st.max_batch);

    /* And all of it is durable. */
    if (fx_reopen(&f)) {
        for (int u = 0; u < GC_INBOXES; u++) {
            char uid[16];
            snprintf(uid, sizeof uid, "g%d", u);
            EXPECT_U64(inbox(&f, uid).count, per_inbox);
        }
        EXPECT_U64(st_debug_keys(f.s, 'M'), GC_THREADS * GC_PER);
    }
out:
    pthread_barrier_destroy(&bar);
    fx_finish(&f);
}

/* 13. max_bytes caps a page (but never below one message); `more`. */
static void test_read_max_bytes(void)
{
    fx f;
    static const size_t sizes[] = {300, 100, 100, 100, 500, 50, 50};
    enum { N = sizeof sizes / sizeof sizes[0] };
    static char buf[N][512];
    if (!fx_start(&f, false))
        goto out;
    for (int i = 0; i < N; i++) {
        char id[8];
        snprintf(id, sizeof id, "b%d", i + 1);
        memset(buf[i], 'a' + i, sizes[i]);
        st_put p = mkput("alice", "bob", id, 1, buf[i], sizes[i]);
        append_n(&f, &p, 1);
        EXPECT_U64(p.seq, i + 1);
    }

    static const struct {
        uint64_t after;
        uint32_t limit;
        size_t max_bytes;
        uint64_t first;
        size_t n;
        bool more;
    } cases[] = {
        {0, 100, 250, 1, 1, true},  /* 300 alone is over: still returned */
        {0, 100, 1, 1, 1, true},
        {1, 100, 250, 2, 2, true},  /* 100+100; +100 would be 300 */
        {1, 100, 300, 2, 3, true},  /* exactly the cap */
        {3, 100, 600, 4, 2, true},  /* 100+500 = 600; +50 is over */
        {3, 100, 599, 4, 1, true},
        {4, 100, 100, 5, 1, true},  /* 500 over the cap, first message */
        {5, 100, 1000, 6, 2, false},/* the end of the inbox */
        {5, 100, 100, 6, 2, false}, /* 50+50 exactly the cap, at the end */
        {5, 100, 99, 6, 1, true},
        {0, 100, 0, 1, 7, false},   /* no cap */
        {0, 7, 0, 1, 7, false},     /* limit == what is left */
        {0, 6, 0, 1, 6, true},
        {4, 2, 0, 5, 2, true},
        {5, 2, 0, 6, 2, false},
        {6, 1, 1000, 7, 1, false},
        {7, 10, 10, 0, 0, false},   /* nothing after the last */
        {0, 100, 1200, 1, 7, false},/* the sum of all is 1200 */
        {0, 100, 1199, 1, 6, true},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        st_page pg;
        if (!read_page(&f, "alice", NULL, cases[c].after, cases[c].limit,
                       cases[c].max_bytes, &pg))
            continue;
        size_t sum = 0;
        for (size_t i = 0; i < pg.n; i++)
            sum += pg.msgs[i].content_len;
        record(HERE, pg.n == cases[c].n && pg.more == cases[c].more,
               "case %zu (after %" PRIu64 ", limit %u, max_bytes %zu): n %zu "
               "more %d, want n %zu more %d", c, cases[c].after, cases[c].limit,
               cases[c].max_bytes, pg.n, pg.more, cases[c].n, cases[c].more);
        if (pg.n > 1 && cases[c].max_bytes)
            record(HERE, sum <= cases[c].max_bytes, "case %zu: %zu bytes > cap %zu",
                   c, sum, cases[c].max_bytes);
        for (size_t i = 0; i < pg.n; i++) {
            uint64_t seq = cases[c].first + i;
            record(HERE, pg.msgs[i].seq == seq, "case %zu: msg %zu seq %" PRIu64
                   ", want %" PRIu64, c, i, pg.msgs[i].seq, seq);
            if (seq >= 1 && seq <= N)
                EXPECT_MEM(pg.msgs[i].content, pg.msgs[i].content_len,
                           buf[seq - 1], sizes[seq - 1]);
        }
        EXPECT_U64(pg.high, N);
        st_page_free(&pg);
    }
    /* Empty contents add nothing: a cap of 1 still pages several. */
    append1(&f, "zed", "bob", "e1", "");
    append1(&f, "zed", "bob", "e2", "");
    append1(&f, "zed", "bob", "e3", "x");
    st_page pg;
    if (read_page(&f, "zed", NULL, 0, 100, 1, &pg)) {
        EXPECT_U64(pg.n, 3);
        EXPECT_TRUE(!pg.more);
        st_page_free(&pg);
    }
out:
    fx_finish(&f);
}

/* 14. st_close with requests in flight completes every one of them.
 * Each thread's inbox starts with CL_PRE committed messages; the thread
 * then submits CL_PER appends and one ack of the CL_PRE (so the ack's
 * outcome does not depend on how it is ordered against the appends). */
enum { CL_THREADS = 8, CL_PER = 50, CL_PRE = 10 };

typedef struct cl_thread {
    fx *f;
    char uid[16];
    char ids[CL_PER][16];
    st_put puts[CL_PER];
    st_req reqs[CL_PER + 1]; /* CL_PER appends, then one ack */
    atomic_int calls[CL_PER + 1];
    int submit_rc[CL_PER + 1];
} cl_thread;

static void cl_done(st_req *req)
{
    atomic_fetch_add((atomic_int *)req->arg, 1);
}

static void *cl_run(void *arg)
{
    cl_thread *c = arg;
    for (int i = 0; i <= CL_PER; i++) {
        st_req *q = &c->reqs[i];
        memset(q, 0, sizeof *q);
        if (i < CL_PER) {
            c->puts[i] = mkput_s(c->uid, "bob", c->ids[i], c->ids[i]);
            q->type = ST_REQ_APPEND;
            q->puts = &c->puts[i];
            q->nputs = 1;
        } else {
            q->type = ST_REQ_ACK;
            q->uid = c->uid;
            q->upto = CL_PRE;
            q->deleted = UINT64_MAX;
        }
        q->err.code = 999;
        q->done = cl_done;
        q->arg = &c->calls[i];
        c->submit_rc[i] = st_submit(c->f->s, q);
    }
    return NULL;
}

static void test_close_with_requests_in_flight(void)
{
    fx f;
    rlist r = {0};
    static cl_thread c[CL_THREADS];
    pthread_t th[CL_THREADS];
    int started = 0;
    if (!fx_start(&f, true))
        goto out;

    for (int t = 0; t < CL_THREADS; t++) {
        memset(&c[t], 0, sizeof c[t]);
        c[t].f = &f;
        snprintf(c[t].uid, sizeof c[t].uid, "c%d", t);
        for (int i = 0; i <= CL_PER; i++)
            atomic_init(&c[t].calls[i], 0);
        for (int i = 0; i < CL_PER; i++)
            snprintf(c[t].ids[i], sizeof c[t].ids[i], "c%d-%d", t, i);
        for (int i = 1; i <= CL_PRE; i++) {
            char id[16];
            snprintf(id, sizeof id, "pre%d", i);
            EXPECT_U64(append_ok(&f, c[t].uid, "bob", id, "x"), i);
        }
    }
    for (int t = 0; t < CL_THREADS; t++) {
        if (pthread_create(&th[t], NULL, cl_run, &c[t]) != 0)
            break;
        started++;
    }
    for (int t = 0; t < started; t++)
        pthread_join(th[t], NULL);
    EXPECT_U64(started, CL_THREADS);

    /* Close at once: most requests are still queued or in flight. */
    st_close(&f.s);
    EXPECT_TRUE(f.s == NULL);

    int not_once = 0, submit_failed = 0, failed = 0;
    for (int t = 0; t < started; t++)
        for (int i = 0; i <= CL_PER; i++) {
            if (c[t].submit_rc[i] != ST_OK) {
                submit_failed++;
                continue;
            }
            int calls = atomic_load(&c[t].calls[i]);
            if (calls != 1 && not_once++ < 5)
                record(HERE, false, "thread %d request %d: done called %d times",
                       t, i, calls);
            const st_req *q = &c[t].reqs[i];
            bool ok = q->err.code == ST_OK &&
                      (i == CL_PER ? q->deleted == CL_PRE
                                   : c[t].puts[i].code == ST_OK &&
                                         c[t].puts[i].seq == (uint64_t)i + 1 + CL_PRE);
            if (!ok && failed++ < 5)
                record(HERE, false, "thread %d request %d: err %d %s (%s), "
                       "put code %d seq %" PRIu64 ", deleted %" PRIu64, t, i,
                       q->err.code, st_code_name(q->err.code), q->err.msg,
                       i < CL_PER ? c[t].puts[i].code : 0,
                       i < CL_PER ? c[t].puts[i].seq : 0, q->deleted);
        }
    EXPECT_U64(submit_failed, 0);
    EXPECT_U64(not_once, 0);
    EXPECT_U64(failed, 0);

    /* What was completed is durable: each inbox holds 11..60. */
    if (!fx_open(&f))
        goto out;
    for (int t = 0; t < CL_THREADS; t++) {
        st_inbox in = inbox(&f, c[t].uid);
        EXPECT_U64(in.high, CL_PRE + CL_PER);
        EXPECT_U64(in.count, CL_PER);
        if (read_all(&f, c[t].uid, NULL, &r))
            expect_seq_range(&r, CL_PRE + 1, CL_PRE + CL_PER);
        rlist_free(&r);
    }
out:
    rlist_free(&r);
    fx_finish(&f);
}

/* 15. Writes execute in the order they were submitted (st.h, Threads):
 * an ack submitted right after an append, without waiting for it, sees it;
 * an append submitted after an ack is not deleted by it. */
static void test_writes_in_submission_order(void)
{
    fx f;
    rlist r = {0};
    waiter w;
    waiter_init(&w);
    if (!fx_start(&f, false))
        goto out;

    st_put p1 = mkput_s("alice", "bob", "o1", "x");
    st_put p2 = mkput_s("alice", "bob", "o2", "x");
    st_req q[3];
    memset(q, 0, sizeof q);
    q[0].type = ST_REQ_APPEND; /* seq 1 */
    q[0].puts = &p1;
    q[0].nputs = 1;
    q[1].type = ST_REQ_ACK;    /* deletes seq 1 */
    q[1].uid = "alice";
    q[1].upto = 1;
    q[1].deleted = UINT64_MAX;
    q[2].type = ST_REQ_APPEND; /* seq 2, stays */
    q[2].puts = &p2;
    q[2].nputs = 1;
    int submitted = 0;
    for (int i = 0; i < 3; i++) {
        q[i].err.code = 999;
        q[i].done = waiter_done;
        q[i].arg = &w;
        if (EXPECT_CODE(st_submit(f.s, &q[i]), ST_OK))
            submitted++;
    }
    if (!waiter_wait(&w, submitted))
        goto out;
    EXPECT_CODE(q[0].err.code, ST_OK);
    EXPECT_CODE(p1.code, ST_OK);
    EXPECT_U64(p1.seq, 1);
    EXPECT_CODE(q[1].err.code, ST_OK);
    EXPECT_U64(q[1].deleted, 1);
    EXPECT_CODE(q[2].err.code, ST_OK);
    EXPECT_CODE(p2.code, ST_OK);
    EXPECT_U64(p2.seq, 2);
    if (read_all(&f, "alice", NULL, &r))
        expect_seqs(&r, 2);
    EXPECT_U64(inbox(&f, "alice").count, 1);
out:
    rlist_free(&r);
    fx_finish(&f);
    waiter_destroy(&w);
}

/* Writes raw key/values into a closed shard's database, bypassing st.c
 * (the on-disk format is documented at the top of st.c). */
static bool raw_put(const char *path, const void *k, size_t kn, const void *v,
                    size_t vn)
{
    char *rerr = NULL;
    rocksdb_options_t *o = rocksdb_options_create();
    rocksdb_t *db = rocksdb_open(o, path, &rerr);
    bool ok = record(HERE, rerr == NULL, "rocksdb_open(%s): %s", path,
                     rerr ? rerr : "");
    if (db) {
        rocksdb_writeoptions_t *wo = rocksdb_writeoptions_create();
        rocksdb_put(db, wo, k, kn, v, vn, &rerr);
        ok = record(HERE, rerr == NULL, "rocksdb_put: %s", rerr ? rerr : "") && ok;
        rocksdb_writeoptions_destroy(wo);
        rocksdb_close(db);
    }
    rocksdb_free(rerr);
    rocksdb_options_destroy(o);
    return ok;
}

/* 16. A stored record that does not decode is ST_ECORRUPT, never a crash
 * or a read past its end; a database of another format is refused. */
static void test_corrupt_record_reported(void)
{
    fx f;
    if (!fx_start(&f, true))
        goto out;
    append_ok(&f, "alice", "bob", "k1", "one");
    append_ok(&f, "alice", "bob", "k2", "two");
    append_ok(&f, "alice", "bob", "k3", "three");
    st_close(&f.s);

    /* 'M' "alice" 0x00 u64 seq=2 -> a truncated record. */
    uint8_t key[1 + 5 + 1 + 8] = {'M', 'a', 'l', 'i', 'c', 'e', 0, 0, 0, 0, 0, 0, 0, 0, 2};
    static const uint8_t junk[3] = {1, 0, 0};
    if (!raw_put(f.path, key, sizeof key, junk, sizeof junk) || !fx_open(&f))
        goto out;

    st_page pg;
    st_error err;
    memset(&err, 0, sizeof err);
    int rc = st_read(f.s, "alice", NULL, 0, 10, 0, &pg, &err);
    EXPECT_ERR(rc, err, ST_ECORRUPT);
    EXPECT_U64(pg.n, 0);
    if (rc == ST_OK)
        st_page_free(&pg);
    /* The records around it still read. */
    if (read_page(&f, "alice", NULL, 2, 10, 0, &pg)) {
        EXPECT_U64(pg.n, 1);
        if (pg.n)
            EXPECT_MEM(pg.msgs[0].content, pg.msgs[0].content_len, "three", 5);
        st_page_free(&pg);
    }
    if (read_page(&f, "alice", NULL, 0, 1, 0, &pg)) {
        EXPECT_U64(pg.n, 1);
        st_page_free(&pg);
    }
    /* A record of the right size whose sender length points past its end:
     * 'M' "carl" 0x00 seq 1 -> version 1, time, type, sender_len 200. */
    st_close(&f.s);
    uint8_t key2[1 + 4 + 1 + 8] = {'M', 'c', 'a', 'r', 'l', 0, 0, 0, 0, 0, 0, 0, 0, 1};
    uint8_t rec2[24];
    memset(rec2, 'z', sizeof rec2);
    rec2[0] = 1;
    rec2[13] = 200;
    if (!raw_put(f.path, key2, sizeof key2, rec2, sizeof rec2) || !fx_open(&f))
        goto out;
    memset(&err, 0, sizeof err);
    rc = st_read(f.s, "carl", NULL, 0, 10, 0, &pg, &err);
    EXPECT_ERR(rc, err, ST_ECORRUPT);
    if (rc == ST_OK)
        st_page_free(&pg);
    st_close(&f.s);

    /* A head whose floor is above its last seq (floor + 1 wrapped to 0:
     * found by fuzz_store, a page then went back below the cursor), and
     * one whose last seq has no successor: corrupt, for reads and appends
     * alike. "alice" has seqs 1..3 from above. */
    static const uint8_t ikey[1 + 5 + 1] = {'I', 'a', 'l', 'i', 'c', 'e', 0};
    static const uint64_t heads[2][2] = {{3, UINT64_MAX}, {UINT64_MAX, 0}}; /* high, floor */
    for (int i = 0; i < 2; i++) {
        uint8_t head[33] = {1}; /* the format atop st.c */
        im_put64(head + 1, heads[i][0]);
        im_put64(head + 9, 3); /* count */
        im_put64(head + 17, heads[i][1]);
        if (!raw_put(f.path, ikey, sizeof ikey, head, sizeof head) || !fx_open(&f))
            goto out;
        memset(&err, 0, sizeof err);
        rc = st_read(f.s, "alice", NULL, 2, 10, 0, &pg, &err);
        EXPECT_ERR(rc, err, ST_ECORRUPT);
        if (rc == ST_OK)
            st_page_free(&pg);
        st_inbox in;
        EXPECT_CODE(st_inbox_info(f.s, "alice", &in, &err), ST_ECORRUPT);
        st_put put = mkput("alice", "bob", i ? "k5" : "k4", 1, "x", 1);
        EXPECT_CODE(st_append(f.s, &put, 1, &err), ST_ECORRUPT);
        EXPECT_TRUE(put.code != ST_OK);
        st_close(&f.s);
    }

    /* The format marker 'V' 0x00 of another format. */
    static const uint8_t vkey[2] = {'V', 0};
    if (!raw_put(f.path, vkey, sizeof vkey, "other-format", 12))
        goto out;
    st_shard *s = (st_shard *)&s;
    memset(&err, 0, sizeof err);
    rc = st_open(f.path, &f.opt, &s, &err);
    EXPECT_ERR(rc, err, ST_ECORRUPT);
    EXPECT_TRUE(s == NULL);
    if (rc == ST_OK)
        st_close(&s);
out:
    fx_finish(&f);
}

/* 17. A process that dies right after its appends were acknowledged
 * (no st_close, no destructors) loses none of them. The child is this
 * program run again with "--crash-child DIR N" (a fresh process, not a bare
 * fork of a process with RocksDB threads); it appends N messages one by
 * one with sync = true, prints each acknowledged seq, and _exit()s. */
#define CRASH_N 50

static int crash_child(const char *dir, int n)
{
    st_options o;
    st_options_init(&o);
    o.sync = true;
    st_shard *s = NULL;
    st_error err;
    if (st_open(dir, &o, &s, &err) != ST_OK) {
        fprintf(stderr, "crash child: st_open: %s\n", err.msg);
        _exit(3);
    }
    for (int i = 1; i <= n; i++) {
        char id[16];
        snprintf(id, sizeof id, "x%d", i);
        st_put p = mkput_s("alice", "bob", id, id);
        if (st_append(s, &p, 1, &err) != ST_OK || p.code != ST_OK)
            _exit(4);
        /* Acknowledged: tell the parent, unbuffered. */
        char line[32];
        int len = snprintf(line, sizeof line, "%" PRIu64 "\n", p.seq);
        if (write(STDOUT_FILENO, line, (size_t)len) != len)
            _exit(5);
    }
    _exit(0); /* dies with the shard open */
}

static void test_crash_keeps_acknowledged_appends(void)
{
    fx f;
    rlist r = {0};
    int pfd[2] = {-1, -1};
    if (!fx_init(&f, true))
        goto out;
    if (!EXPECT_TRUE(pipe(pfd) == 0))
        goto out;
    char n[16];
    snprintf(n, sizeof n, "%d", CRASH_N);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(pfd[1], STDOUT_FILENO);
        close(pfd[0]);
        close(pfd[1]);
        execl("/proc/self/exe", "test_storage", "--crash-child", f.path, n,
              (char *)NULL);
        _exit(127);
    }
    close(pfd[1]);
    pfd[1] = -1;
    if (!EXPECT_TRUE(pid > 0))
        goto out;
    /* Read the acknowledged sequences until the child is gone. */
    char buf[4096];
    size_t got = 0;
    ssize_t k;
    while (got < sizeof buf - 1 &&
           (k = read(pfd[0], buf + got, sizeof buf - 1 - got)) > 0)
        got += (size_t)k;
    buf[got] = '\0';
    int status = 0;
    waitpid(pid, &status, 0);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    uint64_t acked = 0;
    for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
        uint64_t seq = strtoull(line, NULL, 10);
        EXPECT_U64(seq, acked + 1);
        acked = seq;
    }
    EXPECT_U64(acked, CRASH_N);

    if (!fx_open(&f))
        goto out;
    EXPECT_U64(inbox(&f, "alice").high, acked);
    EXPECT_U64(inbox(&f, "alice").count, acked);
    if (read_all(&f, "alice", NULL, &r) && expect_seq_range(&r, 1, acked))
        for (size_t i = 0; i < r.n; i++) {
            char id[32];
            snprintf(id, sizeof id, "x%zu", i + 1);
            EXPECT_STR(r.v[i].msg_id, id);
        }
    /* The next append continues the sequence (its time is not checked:
     * the child ran on the real clock, and send times within an inbox
     * never decrease). */
    st_put p = append1(&f, "alice", "bob", "after", "x");
    EXPECT_CODE(p.code, ST_OK);
    EXPECT_U64(p.seq, acked + 1);
out:
    if (pfd[0] >= 0)
        close(pfd[0]);
    if (pfd[1] >= 0)
        close(pfd[1]);
    rlist_free(&r);
    fx_finish(&f);
}

/* Opening refuses what cannot work; the close of nothing is a no-op. */
static void test_open_errors(void)
{
    char dir[512], file[600];
    st_shard *s = (st_shard *)&s; /* must be set to NULL on failure */
    st_error err;
    if (!make_tmpdir(dir, sizeof dir))
        return;

    /* A regular file where the database directory should be. */
    snprintf(file, sizeof file, "%s/not-a-dir", dir);
    int fd = open(file, O_CREAT | O_WRONLY, 0600);
    EXPECT_TRUE(fd >= 0);
    if (fd >= 0)
        close(fd);
    memset(&err, 0, sizeof err);
    int rc = st_open(file, NULL, &s, &err);
    EXPECT_TRUE(rc < 0);
    EXPECT_CODE(err.code, rc);
    EXPECT_TRUE(err.msg[0] != '\0');
    EXPECT_TRUE(s == NULL);
    st_close(&s);

    /* Another program's RocksDB database: data, but no format marker. */
    snprintf(file, sizeof file, "%s/foreign", dir);
    char *rerr = NULL;
    rocksdb_options_t *ro = rocksdb_options_create();
    rocksdb_options_set_create_if_missing(ro, 1);
    rocksdb_t *db = rocksdb_open(ro, file, &rerr);
    EXPECT_TRUE(db != NULL && rerr == NULL);
    if (db) {
        rocksdb_writeoptions_t *wo = rocksdb_writeoptions_create();
        rocksdb_put(db, wo, "user:1", 6, "x", 1, &rerr);
        EXPECT_TRUE(rerr == NULL);
        rocksdb_writeoptions_destroy(wo);
        rocksdb_close(db);
    }
    rocksdb_free(rerr);
    rocksdb_options_destroy(ro);
    s = (st_shard *)&s;
    memset(&err, 0, sizeof err);
    rc = st_open(file, NULL, &s, &err);
    EXPECT_ERR(rc, err, ST_ECORRUPT);
    EXPECT_TRUE(strstr(err.msg, "not an imbox database") != NULL);
    EXPECT_TRUE(s == NULL);
    if (rc == ST_OK)
        st_close(&s);

    /* A path longer than ST_DIR_MAX: refused before RocksDB sees it. */
    char *longp = malloc(ST_DIR_MAX + 2);
    EXPECT_TRUE(longp != NULL);
    if (longp) {
        memset(longp, 'd', ST_DIR_MAX + 1);
        longp[0] = '/';
        longp[ST_DIR_MAX + 1] = 0;
        s = (st_shard *)&s;
        memset(&err, 0, sizeof err);
        rc = st_open(longp, NULL, &s, &err);
        EXPECT_ERR(rc, err, ST_EINVAL);
        EXPECT_TRUE(s == NULL);
        free(longp);
    }

    /* A configurable limit above the format's ceiling. */
    st_options o;
    st_options_init(&o);
    o.sync = false;
    o.max_content = ST_CONTENT_MAX + 1;
    snprintf(file, sizeof file, "%s/shard", dir);
    s = (st_shard *)&s;
    memset(&err, 0, sizeof err);
    rc = st_open(file, &o, &s, &err);
    EXPECT_ERR(rc, err, ST_EINVAL);
    EXPECT_TRUE(s == NULL);
    if (rc == ST_OK)
        st_close(&s);

    /* The defaults are what st.h says. */
    st_options_init(&o);
    EXPECT_U64(o.max_inbox, 100000);
    EXPECT_I64(o.ttl_ms, INT64_C(30) * 24 * 3600 * 1000);
    EXPECT_I64(o.dedup_window_ms, INT64_C(24) * 3600 * 1000);
    EXPECT_U64(o.max_content, ST_CONTENT_MAX);
    EXPECT_U64(o.max_batch, 4096);
    EXPECT_TRUE(o.sync);

    /* NULL options: the defaults (real clock, sync). */
    snprintf(file, sizeof file, "%s/defaults", dir);
    s = NULL;
    memset(&err, 0, sizeof err);
    rc = st_open(file, NULL, &s, &err);
    EXPECT_CODE(rc, ST_OK);
    if (rc == ST_OK) {
        st_put p = mkput_s("alice", "bob", "d1", "x");
        EXPECT_CODE(st_append(s, &p, 1, &err), ST_OK);
        EXPECT_CODE(p.code, ST_OK);
        EXPECT_U64(p.seq, 1);
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        int64_t wall = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
        EXPECT_TRUE(p.send_time_ms > wall - 60000 && p.send_time_ms <= wall);
        st_close(&s);
    }

    st_close(NULL);
    s = NULL;
    st_close(&s);
    EXPECT_TRUE(s == NULL);
    remove_tree(dir);
}

static void test_code_names(void)
{
    EXPECT_STR(st_code_name(ST_OK), "ST_OK");
    EXPECT_STR(st_code_name(ST_EINVAL), "ST_EINVAL");
    EXPECT_STR(st_code_name(ST_EFULL), "ST_EFULL");
    EXPECT_STR(st_code_name(ST_ECURSOR), "ST_ECURSOR");
    EXPECT_STR(st_code_name(ST_EIO), "ST_EIO");
    EXPECT_STR(st_code_name(ST_ECORRUPT), "ST_ECORRUPT");
    EXPECT_STR(st_code_name(ST_ECLOSED), "ST_ECLOSED");
    EXPECT_STR(st_code_name(ST_ENOMEM), "ST_ENOMEM");
    EXPECT_STR(st_code_name(ST_ENOSPC), "ST_ENOSPC");
    EXPECT_TRUE(st_code_name(12345) != NULL);
}

/* 20. One group commit touching many inboxes: the batch's overlay grows
 * while a put holds its entries (a realloc that moved them was a
 * use-after-free under ASan, and silent corruption without it). 1000
 * receivers, twice the same msg_id, then a second sender: every inbox ends
 * with exactly two messages, seqs 1 and 2, and the retry is a duplicate. */
static void test_wide_batch(void)
{
    fx f;
    if (!fx_start(&f, false))
        return;
    enum { N = 1000 };
    static char uids[N][16];
    static st_put puts[N];
    for (int round = 0; round < 3; round++) {
        const char *snd = round == 2 ? "other" : "wide";
        for (int i = 0; i < N; i++) {
            snprintf(uids[i], sizeof uids[i], "w%04d", i);
            puts[i] = mkput_s(uids[i], snd, "same-id", "x");
        }
        if (!append_n(&f, puts, N))
            break;
        for (int i = 0; i < N; i++) {
            EXPECT_CODE(puts[i].code, ST_OK);
            EXPECT_TRUE(puts[i].duplicate == (round == 1));
            EXPECT_U64(puts[i].seq, round == 2 ? 2 : 1);
        }
    }
    for (int i = 0; i < N; i += 97) {
        st_inbox h = inbox_(HERE, &f, uids[i]);
        EXPECT_U64(h.count, 2);
        EXPECT_U64(h.high, 2);
    }
    EXPECT_U64(st_debug_keys(f.s, 'M'), 2 * N);
    EXPECT_U64(st_debug_keys(f.s, 'C'), 2 * N);
    fx_finish(&f);
}

/* ================================================== acks and tombstones */

/* The point and range deletions in the SST files, after a flush. */
static void tombstones(fx *f, uint64_t *points, uint64_t *ranges)
{
    st_error err;
    memset(&err, 0, sizeof err);
    int rc = st_debug_tombstones(f->s, points, ranges, &err);
    record(HERE, rc == ST_OK, "st_debug_tombstones: %d %s: %s", rc, st_code_name(rc), err.msg);
}

/* Appends n messages to alice, the i-th (from 0) from senders[i % nsenders],
 * msg_ids "<tag><i>", in batches. */
static bool fill_alice(fx *f, const char *tag, int n, const char *const *senders, int nsenders)
{
    enum { BATCH = 250 };
    static char ids[BATCH][24];
    static st_put puts[BATCH];
    for (int b = 0; b < n; b += BATCH) {
        int m = n - b < BATCH ? n - b : BATCH;
        for (int i = 0; i < m; i++) {
            snprintf(ids[i], sizeof ids[i], "%s%d", tag, b + i);
            puts[i] = mkput_s("alice", senders[(b + i) % nsenders], ids[i], ids[i]);
        }
        if (!append_n(f, puts, (size_t)m))
            return false;
        for (int i = 0; i < m; i++)
            if (!EXPECT_CODE(puts[i].code, ST_OK))
                return false;
    }
    return true;
}

/* 21. Small acks leave no range deletion at all (issue: every single-message
 * ack used to leave two, each sender's 'S' range overlapping all earlier
 * ones, and a restart after 20,000 of them took 53 s and 7 GB). Whole-inbox
 * acks of one message, then conversation acks, on one conversation. */
static void test_small_acks_leave_no_range_deletions(void)
{
    enum { N = 600, SINGLE = 300 };
    static const char *const one[] = {"bob"};
    static const char *const three[] = {"bob", "carol", "dave"};
    fx f;
    rlist r = {0};
    if (!fx_start(&f, false) || !fill_alice(&f, "a", SINGLE, one, 1) ||
        !fill_alice(&f, "b", N - SINGLE, three, 3))
        goto out;
    /* Pull(cursor) with page 1: one whole-inbox ack per message. */
    for (uint64_t seq = 1; seq <= SINGLE; seq++)
        if (!EXPECT_U64(ack_ok(&f, "alice", NULL, seq), 1))
            goto out;
    /* A page of 8 (the most an ack deletes row by row) from three senders:
     * seqs 301..308 (bob 301 304 307, carol 302 305 308, dave 303 306). */
    EXPECT_U64(ack_ok(&f, "alice", NULL, SINGLE + 8), 8);
    /* bob's conversation one message at a time (bob's are i % 3 == 0 of
     * the second fill, seq = 301 + i). */
    uint64_t bob_acked = 0;
    for (uint64_t seq = SINGLE + 9; seq <= N; seq++)
        if ((seq - SINGLE - 1) % 3 == 0)
            bob_acked += ack_ok(&f, "alice", "bob", seq);
    EXPECT_U64(bob_acked, 97); /* seqs 310, 313, ..., 598 */
    /* carol's in one conversation ack (scattered rows: point deletes). */
    EXPECT_U64(ack_ok(&f, "alice", "carol", N), 97);
    uint64_t points = 0, ranges = UINT64_MAX;
    tombstones(&f, &points, &ranges);
    EXPECT_U64(ranges, 0);
    /* Each acked message leaves its 'M' and 'S' point tombstones (and a
     * counter that reached 0 leaves one). */
    uint64_t acked = SINGLE + 8 + 97 + 97;
    EXPECT_TRUE(points >= 2 * acked && points <= 2 * acked + 3);

    /* What is left reads exactly, before and after a restart. */
    for (int pass = 0; pass < 2; pass++) {
        st_inbox in = inbox(&f, "alice");
        EXPECT_U64(in.count, N - acked);
        EXPECT_U64(in.floor, SINGLE + 8);
        if (read_all(&f, "alice", NULL, &r)) {
            EXPECT_U64(r.n, N - acked);
            for (size_t i = 0; i < r.n; i++)
                EXPECT_STR(r.v[i].sender, "dave");
        }
        rlist_free(&r);
        want_count w[] = {{"dave", N - acked, T0}};
        expect_counts(&f, "alice", w, 1, N - acked);
        EXPECT_U64(st_debug_keys(f.s, 'M'), N - acked);
        EXPECT_U64(st_debug_keys(f.s, 'S'), N - acked);
        if (pass == 0 && !fx_reopen(&f))
            break;
    }
out:
    rlist_free(&r);
    fx_finish(&f);
}

/* 22. Large acks delete by ranges, never more than one for 'M' and one per
 * sender for 'S' per ack, and each starts above the previous floor (the
 * drain reads back exactly, with no stale row resurfacing). */
static void test_large_acks_use_disjoint_ranges(void)
{
    enum { N = 3000, PAGE = 100, SENDERS = 3 };
    static const char *const three[] = {"bob", "carol", "dave"};
    fx f;
    rlist r = {0};
    if (!fx_start(&f, false) || !fill_alice(&f, "c", N, three, SENDERS))
        goto out;
    int acks = 0;
    for (uint64_t upto = PAGE; upto <= N - PAGE; upto += PAGE, acks++) {
        if (!EXPECT_U64(ack_ok(&f, "alice", NULL, upto), PAGE))
            goto out;
        st_page pg;
        if (read_page(&f, "alice", NULL, upto, 1, 0, &pg)) {
            EXPECT_U64(pg.n, 1);
            if (pg.n)
                EXPECT_U64(pg.msgs[0].seq, upto + 1);
            st_page_free(&pg);
        }
    }
    uint64_t points = UINT64_MAX, ranges = 0;
    tombstones(&f, &points, &ranges);
    EXPECT_TRUE(ranges >= (uint64_t)acks && ranges <= (uint64_t)acks * (1 + SENDERS));
    EXPECT_U64(points, 0);
    if (read_all(&f, "alice", NULL, &r))
        expect_seq_range(&r, N - PAGE + 1, N);
    rlist_free(&r);
    for (int i = 0; i < SENDERS; i++)
        if (read_all(&f, "alice", three[i], &r)) {
            EXPECT_TRUE(r.n >= PAGE / SENDERS && r.n <= PAGE / SENDERS + 1);
            for (size_t j = 0; j < r.n; j++)
                EXPECT_TRUE(r.v[j].seq > N - PAGE);
            rlist_free(&r);
        }
    EXPECT_U64(st_debug_keys(f.s, 'S'), PAGE);
out:
    rlist_free(&r);
    fx_finish(&f);
}

/* 23. A process killed after many single-message acks (nothing flushed,
 * no st_close: the acks are only in the write-ahead log) reopens with the
 * exact state. The child is this program run again with
 * "--ack-child DIR N": it appends N messages, acks them one by one, prints
 * "acked" and _exit()s. */
#define ACK_CHILD_N 3000

static int ack_child(const char *dir, int n)
{
    st_options o;
    st_options_init(&o);
    st_shard *s = NULL;
    st_error err;
    if (st_open(dir, &o, &s, &err) != ST_OK) {
        fprintf(stderr, "ack child: st_open: %s\n", err.msg);
        _exit(3);
    }
    enum { BATCH = 500 };
    static char ids[BATCH][16];
    static st_put puts[BATCH];
    for (int b = 0; b < n; b += BATCH) {
        for (int i = 0; i < BATCH; i++) {
            snprintf(ids[i], sizeof ids[i], "k%d", b + i);
            puts[i] = mkput_s("alice", "bob", ids[i], "x");
        }
        if (st_append(s, puts, BATCH, &err) != ST_OK)
            _exit(4);
    }
    for (int seq = 1; seq <= n; seq++) {
        uint64_t deleted = 0;
        if (st_ack(s, "alice", NULL, (uint64_t)seq, &deleted, &err) != ST_OK || deleted != 1)
            _exit(5);
    }
    if (write(STDOUT_FILENO, "acked\n", 6) != 6)
        _exit(6);
    _exit(0); /* dies with the shard open */
}

static void test_reopen_after_many_small_acks(void)
{
    fx f;
    if (!fx_init(&f, true))
        goto out;
    char n[16], buf[16] = {0};
    snprintf(n, sizeof n, "%d", ACK_CHILD_N);
    int pfd[2];
    if (!EXPECT_TRUE(pipe(pfd) == 0))
        goto out;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(pfd[1], STDOUT_FILENO);
        close(pfd[0]);
        close(pfd[1]);
        execl("/proc/self/exe", "test_storage", "--ack-child", f.path, n, (char *)NULL);
        _exit(127);
    }
    close(pfd[1]);
    ssize_t got = pid > 0 ? read(pfd[0], buf, sizeof buf - 1) : -1;
    close(pfd[0]);
    int status = 0;
    if (pid > 0)
        waitpid(pid, &status, 0);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    EXPECT_TRUE(got == 6 && strcmp(buf, "acked\n") == 0);
    if (!fx_open(&f))
        goto out;
    st_inbox in = inbox(&f, "alice");
    EXPECT_U64(in.high, ACK_CHILD_N);
    EXPECT_U64(in.floor, ACK_CHILD_N);
    EXPECT_U64(in.count, 0);
    expect_counts(&f, "alice", NULL, 0, 0);
    EXPECT_U64(st_debug_keys(f.s, 'M'), 0);
    EXPECT_U64(st_debug_keys(f.s, 'S'), 0);
    EXPECT_U64(st_debug_keys(f.s, 'C'), 0);
    uint64_t points = 0, ranges = UINT64_MAX;
    tombstones(&f, &points, &ranges);
    EXPECT_U64(ranges, 0);
    /* The sequence goes on (the child ran on the real clock, so the send
     * time is not checked); a retried ack deletes nothing. */
    st_put p = append1(&f, "alice", "bob", "after", "x");
    EXPECT_CODE(p.code, ST_OK);
    EXPECT_U64(p.seq, ACK_CHILD_N + 1);
    EXPECT_U64(ack_ok(&f, "alice", NULL, ACK_CHILD_N), 0);
out:
    fx_finish(&f);
}

/* 24. A database written by the first ack code opens and works: its
 * conversation acks range-deleted the sender's 'S' rows from seq 0, above
 * the floor. Written here by hand, as that code did: bob 1..5, carol 6..7,
 * then bob's conversation acked up to 3. */
static void test_old_conversation_ack_ranges(void)
{
    fx f;
    rlist r = {0};
    if (!fx_start(&f, true))
        goto out;
    for (int i = 1; i <= 7; i++) {
        char id[8];
        snprintf(id, sizeof id, "m%d", i);
        set_now(&f, T0 + i);
        append_ok(&f, "alice", i <= 5 ? "bob" : "carol", id, id);
    }
    st_close(&f.s);

    char *rerr = NULL;
    rocksdb_options_t *o = rocksdb_options_create();
    rocksdb_t *db = rocksdb_open(o, f.path, &rerr);
    if (!record(HERE, rerr == NULL, "rocksdb_open: %s", rerr ? rerr : "")) {
        rocksdb_free(rerr);
        rocksdb_options_destroy(o);
        goto out;
    }
    rocksdb_writebatch_t *wb = rocksdb_writebatch_create();
    /* 'S' "alice" 0 "bob" 0 u64: [seq 0, seq 4) */
    uint8_t lo[20] = {'S', 'a', 'l', 'i', 'c', 'e', 0, 'b', 'o', 'b', 0};
    uint8_t hi[20];
    memcpy(hi, lo, sizeof hi);
    hi[18] = 4;
    rocksdb_writebatch_delete_range(wb, (char *)lo, 19, (char *)hi, 19);
    for (uint8_t seq = 1; seq <= 3; seq++) {
        uint8_t mk[15] = {'M', 'a', 'l', 'i', 'c', 'e', 0, 0, 0, 0, 0, 0, 0, 0, seq};
        rocksdb_writebatch_delete(wb, (char *)mk, sizeof mk);
    }
    /* bob's counter 5 -> 2 (last time T0 + 5), alice's head count 7 -> 4. */
    uint8_t ck[10] = {'C', 'a', 'l', 'i', 'c', 'e', 0, 'b', 'o', 'b'};
    uint8_t cv[17] = {1, 0, 0, 0, 0, 0, 0, 0, 2};
    for (int i = 0; i < 8; i++)
        cv[9 + i] = (uint8_t)((uint64_t)(T0 + 5) >> (56 - 8 * i));
    rocksdb_writebatch_put(wb, (char *)ck, sizeof ck, (char *)cv, sizeof cv);
    uint8_t ik[7] = {'I', 'a', 'l', 'i', 'c', 'e', 0};
    uint8_t iv[33] = {1, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 4};
    for (int i = 0; i < 8; i++)
        iv[25 + i] = (uint8_t)((uint64_t)(T0 + 7) >> (56 - 8 * i));
    rocksdb_writebatch_put(wb, (char *)ik, sizeof ik, (char *)iv, sizeof iv);
    rocksdb_writeoptions_t *wo = rocksdb_writeoptions_create();
    rocksdb_write(db, wo, wb, &rerr);
    record(HERE, rerr == NULL, "rocksdb_write: %s", rerr ? rerr : "");
    rocksdb_free(rerr);
    rocksdb_writeoptions_destroy(wo);
    rocksdb_writebatch_destroy(wb);
    rocksdb_close(db);
    rocksdb_options_destroy(o);
    if (!fx_open(&f))
        goto out;

    if (read_all(&f, "alice", "bob", &r))
        expect_seqs(&r, 4, 5);
    rlist_free(&r);
    /* The stale index rows 1..3 are not counted again. */
    EXPECT_U64(ack_ok(&f, "alice", "bob", 5), 2);
    want_count w[] = {{"carol", 2, T0 + 7}};
    expect_counts(&f, "alice", w, 1, 2);
    if (read_all(&f, "alice", NULL, &r))
        expect_seqs(&r, 6, 7);
    rlist_free(&r);
    EXPECT_U64(ack_ok(&f, "alice", NULL, 7), 2);
    EXPECT_U64(inbox(&f, "alice").count, 0);
    EXPECT_U64(st_debug_keys(f.s, 'S'), 0);
    EXPECT_U64(st_debug_keys(f.s, 'C'), 0);
out:
    rlist_free(&r);
    fx_finish(&f);
}

/* Inline mode (st_options.wake): no writer thread. st_submit only queues
 * (wake once per empty-to-non-empty), st_run executes the whole queue on
 * the calling thread as one round (group commit, submission order, every
 * done once, on this thread), a blocking helper from another thread works
 * by waking the owner, and st_close completes what is still queued. */
#define IW_N 40

typedef struct iw_ctx {
    atomic_int wakes;
    int calls[IW_N + 2];
    bool other_thread;
    pthread_t owner;
} iw_ctx;

static void iw_wake(void *arg)
{
    atomic_fetch_add(&((iw_ctx *)arg)->wakes, 1);
}

typedef struct iw_req {
    st_req req; /* first */
    iw_ctx *ctx;
    int i;
    st_put put;
    char id[16];
} iw_req;

static void iw_done(st_req *r)
{
    iw_req *q = (iw_req *)r;
    q->ctx->calls[q->i]++;
    if (!pthread_equal(pthread_self(), q->ctx->owner))
        q->ctx->other_thread = true;
}

static void iw_append(iw_ctx *c, iw_req *q, int i, const char *uid, const char *id_prefix)
{
    memset(q, 0, sizeof *q);
    q->ctx = c;
    q->i = i;
    snprintf(q->id, sizeof q->id, "%s%d", id_prefix, i);
    q->put = (st_put){.receiver = uid, .sender = i % 2 ? "bob" : "carol", .msg_id = q->id,
                      .content = "x", .content_len = 1};
    q->req = (st_req){.type = ST_REQ_APPEND, .puts = &q->put, .nputs = 1, .done = iw_done};
}

static int64_t iw_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

typedef struct iw_blocker {
    fx *f;
    int rc;
    uint64_t seq;
    atomic_bool finished;
} iw_blocker;

static void *iw_block_run(void *arg)
{
    iw_blocker *b = arg;
    st_put p = {.receiver = "iw", .sender = "dave", .msg_id = "blocking", .content = "y",
                .content_len = 1};
    st_error err;
    b->rc = st_append(b->f->s, &p, 1, &err);
    b->seq = p.seq;
    atomic_store(&b->finished, true);
    return NULL;
}

static void test_inline_writes(void)
{
    fx f;
    rlist r = {0};
    static iw_ctx c;
    static iw_req q[IW_N + 2];
    memset(&c, 0, sizeof c);
    atomic_init(&c.wakes, 0);
    c.owner = pthread_self();
    if (!fx_init(&f, true))
        return;
    f.opt.wake = iw_wake;
    f.opt.wake_arg = &c;
    if (!fx_open(&f))
        goto out;

    /* 20 appends, an ack of the first 10, 20 more, counts: queued only. */
    for (int i = 0; i < IW_N; i++) {
        iw_append(&c, &q[i], i, "iw", "m");
        if (i == IW_N / 2) {
            q[IW_N] = (iw_req){.ctx = &c, .i = IW_N};
            q[IW_N].req = (st_req){.type = ST_REQ_ACK, .uid = "iw", .upto = 10, .done = iw_done};
            EXPECT_CODE(st_submit(f.s, &q[IW_N].req), ST_OK);
        }
        EXPECT_CODE(st_submit(f.s, &q[i].req), ST_OK);
    }
    q[IW_N + 1] = (iw_req){.ctx = &c, .i = IW_N + 1};
    q[IW_N + 1].req = (st_req){.type = ST_REQ_COUNTS, .uid = "iw", .done = iw_done};
    EXPECT_CODE(st_submit(f.s, &q[IW_N + 1].req), ST_OK);
    EXPECT_I64(atomic_load(&c.wakes), 1);
    int early = 0;
    for (int i = 0; i < IW_N + 2; i++)
        early += c.calls[i];
    EXPECT_I64(early, 0);

    EXPECT_U64(st_run(f.s), IW_N + 2);
    EXPECT_U64(st_run(f.s), 0);
    int not_once = 0;
    for (int i = 0; i < IW_N + 2; i++)
        not_once += c.calls[i] != 1;
    EXPECT_I64(not_once, 0);
    EXPECT_TRUE(!c.other_thread);
    for (int i = 0; i < IW_N; i++)
        if (!EXPECT_U64(q[i].put.seq, (uint64_t)i + 1) || !EXPECT_CODE(q[i].put.code, ST_OK))
            break;
    EXPECT_CODE(q[IW_N].req.err.code, ST_OK);
    EXPECT_U64(q[IW_N].req.deleted, 10);
    EXPECT_U64(q[IW_N + 1].req.total, IW_N - 10);
    free(q[IW_N + 1].req.counts);
    st_stats st;
    stats(&f, &st);
    EXPECT_U64(st.appends, IW_N);
    EXPECT_TRUE(st.commits >= 1 && st.commits <= 2); /* the ack splits the batch */

    /* A blocking append from another thread: it wakes this one. */
    static iw_blocker b;
    memset(&b, 0, sizeof b);
    b.f = &f;
    atomic_init(&b.finished, false);
    int wakes = atomic_load(&c.wakes);
    pthread_t th;
    if (!EXPECT_I64(pthread_create(&th, NULL, iw_block_run, &b), 0))
        goto out;
    int64_t until = iw_now_ms() + 10000;
    while (!atomic_load(&b.finished) && iw_now_ms() < until) {
        if (atomic_load(&c.wakes) > wakes)
            st_run(f.s);
        sched_yield();
    }
    bool finished = atomic_load(&b.finished);
    EXPECT_TRUE(finished);
    if (!finished) { /* unblock it before failing out */
        while (!atomic_load(&b.finished))
            st_run(f.s);
    }
    pthread_join(th, NULL);
    EXPECT_CODE(b.rc, ST_OK);
    EXPECT_U64(b.seq, IW_N + 1);

    /* Queued, never run: st_close completes them, and they are durable. */
    memset(c.calls, 0, sizeof c.calls);
    for (int i = 0; i < 5; i++) {
        iw_append(&c, &q[i], i, "iw2", "late");
        EXPECT_CODE(st_submit(f.s, &q[i].req), ST_OK);
    }
    st_close(&f.s);
    for (int i = 0; i < 5; i++)
        EXPECT_I64(c.calls[i], 1);
    f.opt.wake = NULL; /* reopen with a writer thread: same data */
    if (!fx_open(&f))
        goto out;
    EXPECT_U64(inbox(&f, "iw").count, IW_N + 1 - 10);
    if (read_all(&f, "iw2", NULL, &r))
        expect_seq_range(&r, 1, 5);
out:
    rlist_free(&r);
    fx_finish(&f);
}

/* 26. The writer's row cache ('I' and 'C' rows, ROW CACHE in st.c) never
 * disagrees with the database: a random mix of batched appends, whole-inbox
 * and conversation acks (counters that reach 0 and come back) against a
 * model, checked through st_counts and st_inbox_info after every step and
 * again after each reopen (which starts with an empty cache); the cache
 * must have answered most of the appends' reads. */
#define RC_INBOXES 4
#define RC_SENDERS 3
typedef struct rc_model {
    uint64_t high, floor;
    int nalive;
    struct { uint64_t seq; int sender; } alive[4096];
    uint64_t cnt[RC_SENDERS];
    int64_t last[RC_SENDERS];
} rc_model;

static uint32_t rc_rand(uint32_t *x)
{
    *x = *x * 1103515245u + 12345u;
    return *x >> 8;
}

static bool rc_check(fx *f, const rc_model *m, const char *const *uids,
                     const char *const *senders, int step)
{
    bool ok = true;
    for (int i = 0; i < RC_INBOXES && ok; i++) {
        st_inbox in = inbox(f, uids[i]);
        ok = EXPECT_U64(in.high, m[i].high) && EXPECT_U64(in.count, m[i].nalive);
        st_count *c = NULL;
        size_t n = 0;
        uint64_t total = 0;
        st_error err;
        ok = EXPECT_CODE(st_counts(f->s, uids[i], &c, &n, &total, &err), ST_OK) && ok;
        ok = EXPECT_U64(total, m[i].nalive) && ok;
        size_t want = 0;
        for (int j = 0; j < RC_SENDERS; j++) {
            if (!m[i].cnt[j])
                continue;
            want++;
            bool seen = false;
            for (size_t k = 0; k < n; k++) {
                if (strcmp(c[k].sender, senders[j]) == 0) {
                    seen = true;
                    ok = EXPECT_U64(c[k].count, m[i].cnt[j]) && ok;
                    ok = EXPECT_I64(c[k].last_send_time_ms, m[i].last[j]) && ok;
                }
            }
            ok = EXPECT_TRUE(seen) && ok;
        }
        ok = EXPECT_U64(n, want) && ok;
        free(c);
    }
    if (!ok)
        record(HERE, false, "row cache: the model and the shard differ at step %d", step);
    return ok;
}

static void test_row_cache_matches_database(void)
{
    static const char *const uids[RC_INBOXES] = {"r0", "r1", "r2", "r3"};
    static const char *const senders[RC_SENDERS] = {"s0", "s1", "s2"};
    fx f;
    rc_model *m = calloc(RC_INBOXES, sizeof *m);
    char ids[8][32];
    uint32_t x = 12345;
    int next_id = 0;
    if (!EXPECT_TRUE(m != NULL) || !fx_start(&f, false))
        goto out;
    for (int step = 0; step < 1500; step++) {
        set_now(&f, T0 + step);
        uint32_t op = rc_rand(&x) % 10;
        int i = (int)(rc_rand(&x) % RC_INBOXES);
        rc_model *b = &m[i];
        if (op < 6) { /* a batch of 1..8 puts */
            st_put puts[8];
            int np = 1 + (int)(rc_rand(&x) % 8);
            int who[8], to[8];
            for (int k = 0; k < np; k++) {
                to[k] = (int)(rc_rand(&x) % RC_INBOXES);
                who[k] = (int)(rc_rand(&x) % RC_SENDERS);
                snprintf(ids[k], sizeof ids[k], "m%d", next_id++);
                puts[k] = mkput(uids[to[k]], senders[who[k]], ids[k], 1, "x", 1);
            }
            if (!append_n(&f, puts, (size_t)np))
                goto out;
            for (int k = 0; k < np; k++) {
                rc_model *t = &m[to[k]];
                if (!EXPECT_CODE(puts[k].code, ST_OK) || !EXPECT_U64(puts[k].seq, t->high + 1) ||
                    !EXPECT_TRUE(t->nalive < 4096))
                    goto out;
                t->high++;
                t->alive[t->nalive].seq = t->high;
                t->alive[t->nalive++].sender = who[k];
                t->cnt[who[k]]++;
                t->last[who[k]] = T0 + step;
            }
        } else if (b->high > b->floor) {
            uint64_t upto = b->floor + 1 + rc_rand(&x) % (b->high - b->floor);
            int snd = op < 8 ? -1 : (int)(rc_rand(&x) % RC_SENDERS); /* whole inbox, or one */
            uint64_t want = 0;
            int kept = 0;
            for (int k = 0; k < b->nalive; k++) {
                if (b->alive[k].seq <= upto && (snd < 0 || b->alive[k].sender == snd)) {
                    want++;
                    if (--b->cnt[b->alive[k].sender] == 0)
                        b->last[b->alive[k].sender] = 0;
                } else {
                    b->alive[kept++] = b->alive[k];
                }
            }
            b->nalive = kept;
            if (snd < 0)
                b->floor = upto;
            if (!EXPECT_U64(ack_ok(&f, uids[i], snd < 0 ? NULL : senders[snd], upto), want))
                goto out;
        }
        if (!rc_check(&f, m, uids, senders, step))
            goto out;
        if (step % 500 == 499) {
            st_stats st; /* per open: the cache answered most reads */
            st_stats_get(f.s, &st);
            if (!EXPECT_TRUE(st.row_hits > 2 * st.row_misses) || !fx_reopen(&f) ||
                !rc_check(&f, m, uids, senders, step))
                goto out;
        }
    }
out:
    free(m);
    fx_finish(&f);
}

/* RocksDB's figure of the bytes in the shard's block cache. */
static uint64_t cache_usage(fx *f)
{
    uint64_t v = 0;
    EXPECT_TRUE(st_property(f->s, "rocksdb.block-cache-usage", &v) == 0);
    return v;
}

/* The block cache keeps what point reads read, not what scans read once:
 * pages (whole inbox and one conversation), the scan of an ack without a
 * memo and Counts leave it as it was, while a Send's dedup lookup fills
 * it. 200 messages of 2 KiB of incompressible content are about 400 KiB
 * of data blocks. */
static void test_scans_leave_block_cache(void)
{
    enum { N = 200, LEN = 2048, ROOM = 48 * 1024 };
    static const char *const two[] = {"bob", "carol"};
    static char content[N][LEN];
    static char ids[N][16];
    static st_put puts[N];
    fx f;
    st_page pg;
    memset(&pg, 0, sizeof pg);
    uint32_t x = 777;
    if (!fx_start(&f, false))
        goto out;
    for (int i = 0; i < N; i++) {
        for (int k = 0; k < LEN; k++)
            content[i][k] = (char)rc_rand(&x);
        snprintf(ids[i], sizeof ids[i], "c%d", i);
        puts[i] = mkput("alice", two[i % 2], ids[i], 1, content[i], LEN);
    }
    if (!append_n(&f, puts, N))
        goto out;
    st_error err;
    memset(&err, 0, sizeof err);
    if (!EXPECT_CODE(st_flush(f.s, &err), ST_OK)) /* the rows into SST files */
        goto out;
    uint64_t u0 = cache_usage(&f);
    if (!read_page(&f, "alice", NULL, 0, 100, 0, &pg) || !EXPECT_U64(pg.n, 100))
        goto out;
    st_page_free(&pg);
    if (!read_page(&f, "alice", "carol", 0, 100, 0, &pg) || !EXPECT_U64(pg.n, 100))
        goto out;
    st_page_free(&pg);
    EXPECT_U64(ack_ok(&f, "alice", NULL, 150), 150); /* no memo covers 150 */
    want_count w[] = {{"bob", 25, T0}, {"carol", 25, T0}};
    expect_counts(&f, "alice", w, 2, 50);
    uint64_t u1 = cache_usage(&f);
    record(HERE, u1 < u0 + ROOM, "scans filled the block cache: %" PRIu64 " -> %" PRIu64 " bytes",
           u0, u1);
    st_put again = mkput("alice", "bob", ids[198], 1, content[198], LEN);
    if (append_n(&f, &again, 1) && EXPECT_CODE(again.code, ST_OK))
        EXPECT_TRUE(again.duplicate);
    uint64_t u2 = cache_usage(&f);
    record(HERE, u2 > u1, "a dedup lookup left the block cache as it was: %" PRIu64 " bytes", u2);
out:
    st_page_free(&pg);
    fx_finish(&f);
}

/* ================================================================= runner */

static const im_cunit_test tests[] = {
    {"append_read_roundtrip", test_append_read_roundtrip},
    {"restart_keeps_messages_and_high", test_restart_keeps_messages_and_high},
    {"ack_cursor_across_restart", test_ack_cursor_across_restart},
    {"drain_1000_by_pages", test_drain_1000_by_pages},
    {"scans_leave_block_cache", test_scans_leave_block_cache},
    {"prefix_uids_isolated", test_prefix_uids_isolated},
    {"dedup", test_dedup},
    {"quota", test_quota},
    {"ttl", test_ttl},
    {"counts_after_partial_acks", test_counts_after_partial_acks},
    {"conversation_read_and_ack", test_conversation_read_and_ack},
    {"ack_memo_only_while_true", test_ack_memo_only_while_true},
    {"memo_table", test_memo_table},
    {"malformed_input_refused", test_malformed_input_refused},
    {"group_commit", test_group_commit},
    {"read_max_bytes", test_read_max_bytes},
    {"close_with_requests_in_flight", test_close_with_requests_in_flight},
    {"writes_in_submission_order", test_writes_in_submission_order},
    {"corrupt_record_reported", test_corrupt_record_reported},
    {"crash_keeps_acknowledged_appends", test_crash_keeps_acknowledged_appends},
    {"open_errors", test_open_errors},
    {"code_names", test_code_names},
    {"wide_batch", test_wide_batch},
    {"small_acks_leave_no_range_deletions", test_small_acks_leave_no_range_deletions},
    {"large_acks_use_disjoint_ranges", test_large_acks_use_disjoint_ranges},
    {"reopen_after_many_small_acks", test_reopen_after_many_small_acks},
    {"old_conversation_ack_ranges", test_old_conversation_ack_ranges},
    {"inline_writes", test_inline_writes},
    {"row_cache_matches_database", test_row_cache_matches_database},
};

int main(int argc, char **argv)
{
    if (argc == 4 && strcmp(argv[1], "--crash-child") == 0)
        return crash_child(argv[2], atoi(argv[3]));
    if (argc == 4 && strcmp(argv[1], "--ack-child") == 0)
        return ack_child(argv[2], atoi(argv[3]));
    return im_cunit_main("storage", tests, sizeof tests / sizeof tests[0],
                         argc > 1 ? argv[1] : NULL);
}
