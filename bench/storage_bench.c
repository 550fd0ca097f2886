/*
 * storage_bench - micro-benchmark of one storage shard (storage/st.h).
 *
 *   storage_bench [--dir DIR] [--seconds S] [--appenders LIST] [--drain N]
 *                 [--page P] [--content BYTES]
 *
 *   --dir        where the shards go (default: a fresh ./bench-data-XXXXXX
 *                under the current directory, removed at the end; /tmp may
 *                be tmpfs, where fsync costs nothing). Each phase uses its
 *                own sub-directory and removes it when done.
 *   --seconds    duration of each append phase (default 3)
 *   --appenders  comma-separated concurrency levels (default 1,16,64)
 *   --drain      messages in the inbox that is drained (default 200000;
 *                0 skips the drain phase)
 *   --page       page size of the drain (default 100); a second drain with
 *                page size 1000 (ST_PAGE_MAX) always follows
 *   --content    bytes of content per message (default 100)
 *
 * Phase "append": for each concurrency C, a fresh shard with the default
 * options (sync = true: every st_append() returns only once its message is
 * in an fsync'ed WAL, via group commit), C threads each calling st_append()
 * with ONE put in a loop until time is up. Prints
 *   append appenders=C ops= secs= ops_per_s= mean_us= p99_us= commits=
 *          puts_per_commit= max_batch=
 *
 * Phase "drain": a fresh shard (sync = true), ONE inbox filled with N
 * messages in batches of 1000 puts, then drained as a client does: read a
 * page after the cursor, move the cursor to its last seq, ack up to it,
 * until an empty page. Checks every message is seen exactly once, in order,
 * and that the inbox is empty at the end. Prints
 *   fill msgs= secs= msgs_per_s=
 *   drain page=P msgs= pages= secs= msgs_per_s= read_secs= ack_secs=
 *
 * Exit status: 0 on success, 1 on any engine error (printed with
 * st_code_name() and the engine's message) or failed check, 2 on bad usage.
 */
#include <errno.h>
#include <ftw.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>

#include "st.h"

#define MAX_LEVELS 32
#define MAX_THREADS 4096
#define RECEIVERS 1000
#define FILL_BATCH 1000
#define DRAIN_UID "drain-user"

/* ------------------------------------------------------------ utilities */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb;
    (void)flag;
    (void)ftw;
    if (remove(path) != 0) {
        fprintf(stderr, "storage_bench: remove %s: %s\n", path, strerror(errno));
        return -1;
    }
    return 0;
}

/* rm -rf `path`; a missing path is not an error. */
static int rm_tree(const char *path) {
    struct stat st;
    if (lstat(path, &st) != 0) {
        if (errno == ENOENT) return 0;
        fprintf(stderr, "storage_bench: %s: %s\n", path, strerror(errno));
        return -1;
    }
    return nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS) == 0 ? 0 : -1;
}

static void fail_engine(const char *what, int rc, const st_error *err) {
    fprintf(stderr, "storage_bench: %s: %s: %s\n", what, st_code_name(rc),
            err && err->msg[0] ? err->msg : "(no message)");
}

static const char *fs_name(const char *dir) {
    struct statfs sf;
    if (statfs(dir, &sf) != 0) return "unknown";
    switch ((unsigned long)sf.f_type) {
    case 0xEF53: return "ext4";
    case 0x58465342: return "xfs";
    case 0x9123683E: return "btrfs";
    case 0x01021994: return "tmpfs";
    case 0x794c7630: return "overlayfs";
    default: return "other";
    }
}

/* --------------------------------------------------------- append phase */

typedef struct appender {
    pthread_t tid;
    int id;
    st_shard *shard;
    const char *content;
    size_t content_len;
    pthread_barrier_t *start;
    atomic_bool *stop;
    atomic_int *failed;
    uint64_t ops;
    uint64_t *lat; /* ns per st_append */
    size_t nlat, cap;
    int rc;
    st_error err;
    char errwhat[64];
} appender;

static void *append_main(void *p) {
    appender *a = p;
    uint64_t rng = 0x9E3779B97F4A7C15ull * (uint64_t)(a->id + 1);
    char receiver[32], msg_id[48];

    pthread_barrier_wait(a->start);
    while (!atomic_load_explicit(a->stop, memory_order_relaxed)) {
        rng ^= rng << 13; /* xorshift64 */
        rng ^= rng >> 7;
        rng ^= rng << 17;
        snprintf(receiver, sizeof receiver, "user-%03u", (unsigned)(rng % RECEIVERS));
        snprintf(msg_id, sizeof msg_id, "t%d-%" PRIu64, a->id, a->ops);
        st_put put = {
            .receiver = receiver,
            .sender = "bench",
            .msg_id = msg_id,
            .msg_type = 1,
            .content = a->content,
            .content_len = a->content_len,
        };
        uint64_t t0 = now_ns();
        int rc = st_append(a->shard, &put, 1, &a->err);
        uint64_t dt = now_ns() - t0;
        if (rc == ST_OK && put.code != ST_OK) {
            rc = put.code;
            snprintf(a->err.msg, sizeof a->err.msg, "put refused: %s",
                     put.error ? put.error : "(no reason)");
        }
        if (rc == ST_OK && put.duplicate) {
            rc = ST_EINVAL;
            snprintf(a->err.msg, sizeof a->err.msg, "unique msg_id %s reported duplicate",
                     msg_id);
        }
        if (rc != ST_OK) {
            a->rc = rc;
            snprintf(a->errwhat, sizeof a->errwhat, "st_append (thread %d)", a->id);
            atomic_store(a->failed, 1);
            atomic_store(a->stop, true);
            break;
        }
        if (a->nlat == a->cap) {
            size_t cap = a->cap ? 2 * a->cap : 4096;
            uint64_t *l = realloc(a->lat, cap * sizeof *l);
            if (!l) {
                a->rc = ST_ENOMEM;
                snprintf(a->errwhat, sizeof a->errwhat, "latency buffer (thread %d)", a->id);
                snprintf(a->err.msg, sizeof a->err.msg, "out of memory");
                atomic_store(a->failed, 1);
                atomic_store(a->stop, true);
                break;
            }
            a->lat = l;
            a->cap = cap;
        }
        a->lat[a->nlat++] = dt;
        a->ops++;
    }
    return NULL;
}

static int bench_append(const char *base, int c, double seconds, const char *content,
                        size_t content_len) {
    char dir[PATH_MAX];
    if (snprintf(dir, sizeof dir, "%s/append-%d", base, c) >= (int)sizeof dir) {
        fprintf(stderr, "storage_bench: --dir too long\n");
        return 1;
    }
    if (rm_tree(dir) != 0) return 1;

    st_options o;
    st_options_init(&o); /* sync = true: durable appends, group commit */
    st_shard *s = NULL;
    st_error err = {0};
    int rc = st_open(dir, &o, &s, &err);
    if (rc != ST_OK) {
        fail_engine("st_open", rc, &err);
        return 1;
    }

    appender *as = calloc((size_t)c, sizeof *as);
    pthread_barrier_t start;
    atomic_bool stop = false;
    atomic_int failed = 0;
    int ret = 1, started = 0;
    if (!as || pthread_barrier_init(&start, NULL, (unsigned)c + 1) != 0) {
        fprintf(stderr, "storage_bench: out of memory\n");
        free(as);
        st_close(&s);
        return 1;
    }
    for (int i = 0; i < c; i++) {
        as[i] = (appender){.id = i, .shard = s, .content = content,
                           .content_len = content_len, .start = &start,
                           .stop = &stop, .failed = &failed};
        if (pthread_create(&as[i].tid, NULL, append_main, &as[i]) != 0) {
            fprintf(stderr, "storage_bench: pthread_create failed\n");
            /* the barrier can never be reached: nothing to do but exit */
            exit(1);
        }
        started++;
    }
    pthread_barrier_wait(&start);
    double t0 = now_s();
    /* sleep until the deadline or a failure */
    while (!atomic_load(&stop) && now_s() - t0 < seconds) {
        double left = seconds - (now_s() - t0);
        double step = left < 0.05 ? left : 0.05;
        if (step > 0) {
            struct timespec ts = {0, (long)(step * 1e9)};
            nanosleep(&ts, NULL);
        }
    }
    atomic_store(&stop, true);
    for (int i = 0; i < started; i++) pthread_join(as[i].tid, NULL);
    double secs = now_s() - t0;
    pthread_barrier_destroy(&start);

    st_stats stats;
    st_stats_get(s, &stats);
    st_close(&s);

    if (atomic_load(&failed)) {
        for (int i = 0; i < c; i++)
            if (as[i].rc != ST_OK) fail_engine(as[i].errwhat, as[i].rc, &as[i].err);
        goto out;
    }

    uint64_t ops = 0;
    size_t nlat = 0;
    for (int i = 0; i < c; i++) {
        ops += as[i].ops;
        nlat += as[i].nlat;
    }
    uint64_t *lat = malloc((nlat ? nlat : 1) * sizeof *lat);
    if (!lat) {
        fprintf(stderr, "storage_bench: out of memory\n");
        goto out;
    }
    size_t k = 0;
    double sum = 0;
    for (int i = 0; i < c; i++)
        for (size_t j = 0; j < as[i].nlat; j++) {
            lat[k++] = as[i].lat[j];
            sum += (double)as[i].lat[j];
        }
    qsort(lat, nlat, sizeof *lat, cmp_u64);
    double mean_us = nlat ? sum / (double)nlat / 1e3 : 0;
    double p99_us = nlat ? (double)lat[(size_t)((double)(nlat - 1) * 0.99)] / 1e3 : 0;
    free(lat);

    if (stats.appends != ops) {
        fprintf(stderr, "storage_bench: st_stats appends=%" PRIu64 " but %" PRIu64
                        " appends returned ST_OK\n", stats.appends, ops);
        goto out;
    }
    printf("append appenders=%d ops=%" PRIu64 " secs=%.3f ops_per_s=%.0f mean_us=%.1f "
           "p99_us=%.1f commits=%" PRIu64 " puts_per_commit=%.2f max_batch=%" PRIu64 "\n",
           c, ops, secs, (double)ops / secs, mean_us, p99_us, stats.commits,
           stats.commits ? (double)stats.appends / (double)stats.commits : 0.0,
           stats.max_batch);
    fflush(stdout);
    ret = 0;
out:
    for (int i = 0; i < c; i++) free(as[i].lat);
    free(as);
    if (rm_tree(dir) != 0) ret = 1;
    return ret;
}

/* ------------------------------------------------ async append phase */

/*
 * The shard service's way of using the engine: one thread, C requests in
 * flight (st_submit + callback), no thread per appender. Each callback (on
 * the engine's writer thread) records the latency and submits the next
 * append at once, so exactly C appends are always waiting or committing.
 */
typedef struct aslot {
    st_req req;
    st_put put;
    char receiver[32], msg_id[48];
    uint64_t t0, n;
    int id;
    struct actx *ctx;
} aslot;

typedef struct actx {
    st_shard *shard;
    const char *content;
    size_t content_len;
    atomic_bool stop;
    atomic_int inflight, failed;
    uint64_t ops;          /* writer thread only */
    uint64_t *lat;         /* writer thread only */
    size_t nlat, cap;
    st_error err;
    pthread_mutex_t mu;
    pthread_cond_t cv;
} actx;

static void aslot_prepare(aslot *a)
{
    uint64_t r = 0x9E3779B97F4A7C15ull * (a->n * 1000003u + (uint64_t)a->id + 1);
    snprintf(a->receiver, sizeof a->receiver, "user-%03u", (unsigned)((r >> 17) % RECEIVERS));
    snprintf(a->msg_id, sizeof a->msg_id, "a%d-%" PRIu64, a->id, a->n++);
    a->put = (st_put){.receiver = a->receiver, .sender = "bench", .msg_id = a->msg_id,
                      .msg_type = 1, .content = a->ctx->content,
                      .content_len = a->ctx->content_len};
    a->req.type = ST_REQ_APPEND;
    a->req.puts = &a->put;
    a->req.nputs = 1;
    a->t0 = now_ns();
}

static void aslot_retire(actx *x)
{
    pthread_mutex_lock(&x->mu);
    if (atomic_fetch_sub(&x->inflight, 1) == 1)
        pthread_cond_signal(&x->cv);
    pthread_mutex_unlock(&x->mu);
}

static void aslot_done(st_req *r)
{
    aslot *a = r->arg;
    actx *x = a->ctx;
    uint64_t dt = now_ns() - a->t0;
    if (r->err.code != ST_OK || a->put.code != ST_OK || a->put.duplicate) {
        x->err = r->err;
        if (r->err.code == ST_OK)
            snprintf(x->err.msg, sizeof x->err.msg, "put code %d duplicate %d", a->put.code,
                     a->put.duplicate);
        atomic_store(&x->failed, 1);
        atomic_store(&x->stop, true);
    } else {
        if (x->nlat == x->cap) {
            size_t cap = x->cap ? 2 * x->cap : 65536;
            uint64_t *l = realloc(x->lat, cap * sizeof *l);
            if (l) {
                x->lat = l;
                x->cap = cap;
            }
        }
        if (x->nlat < x->cap)
            x->lat[x->nlat++] = dt;
        x->ops++;
    }
    if (!atomic_load(&x->stop)) {
        aslot_prepare(a);
        if (st_submit(x->shard, &a->req) == ST_OK)
            return;
        atomic_store(&x->failed, 1);
    }
    aslot_retire(x);
}

static int bench_append_async(const char *base, int c, double seconds, const char *content,
                              size_t content_len)
{
    char dir[PATH_MAX];
    if (snprintf(dir, sizeof dir, "%s/async-%d", base, c) >= (int)sizeof dir ||
        rm_tree(dir) != 0)
        return 1;
    st_options o;
    st_options_init(&o);
    actx x = {.content = content, .content_len = content_len};
    pthread_mutex_init(&x.mu, NULL);
    pthread_cond_init(&x.cv, NULL);
    int rc = st_open(dir, &o, &x.shard, &x.err);
    if (rc != ST_OK) {
        fail_engine("st_open", rc, &x.err);
        return 1;
    }
    aslot *slots = calloc((size_t)c, sizeof *slots);
    if (!slots) {
        st_close(&x.shard);
        return 1;
    }
    double t0 = now_s();
    for (int i = 0; i < c; i++) {
        slots[i].id = i;
        slots[i].ctx = &x;
        slots[i].req.done = aslot_done;
        slots[i].req.arg = &slots[i];
        aslot_prepare(&slots[i]);
        atomic_fetch_add(&x.inflight, 1);
        if (st_submit(x.shard, &slots[i].req) != ST_OK) {
            atomic_fetch_sub(&x.inflight, 1);
            atomic_store(&x.failed, 1);
            break;
        }
    }
    while (!atomic_load(&x.stop) && now_s() - t0 < seconds) {
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    atomic_store(&x.stop, true);
    pthread_mutex_lock(&x.mu);
    while (atomic_load(&x.inflight) > 0)
        pthread_cond_wait(&x.cv, &x.mu);
    pthread_mutex_unlock(&x.mu);
    double secs = now_s() - t0;
    st_stats stats;
    st_stats_get(x.shard, &stats);
    st_close(&x.shard);
    int ret = 1;
    if (atomic_load(&x.failed)) {
        fail_engine("async append", x.err.code ? x.err.code : ST_EIO, &x.err);
    } else {
        double sum = 0;
        for (size_t i = 0; i < x.nlat; i++)
            sum += (double)x.lat[i];
        qsort(x.lat, x.nlat, sizeof *x.lat, cmp_u64);
        printf("append_async inflight=%d ops=%" PRIu64 " secs=%.3f ops_per_s=%.0f mean_us=%.1f "
               "p99_us=%.1f commits=%" PRIu64 " puts_per_commit=%.2f max_batch=%" PRIu64 "\n",
               c, x.ops, secs, (double)x.ops / secs, x.nlat ? sum / (double)x.nlat / 1e3 : 0,
               x.nlat ? (double)x.lat[(size_t)((double)(x.nlat - 1) * 0.99)] / 1e3 : 0,
               stats.commits, stats.commits ? (double)stats.appends / (double)stats.commits : 0,
               stats.max_batch);
        fflush(stdout);
        ret = stats.appends == x.ops ? 0 : 1;
    }
    free(x.lat);
    free(slots);
    pthread_cond_destroy(&x.cv);
    pthread_mutex_destroy(&x.mu);
    if (rm_tree(dir) != 0)
        ret = 1;
    return ret;
}

/* ---------------------------------------------------------- drain phase */

static int fill_inbox(st_shard *s, uint64_t n, const char *content, size_t content_len) {
    st_put *puts = calloc(FILL_BATCH, sizeof *puts);
    char(*ids)[24] = calloc(FILL_BATCH, sizeof *ids);
    if (!puts || !ids) {
        fprintf(stderr, "storage_bench: out of memory\n");
        free(puts);
        free(ids);
        return 1;
    }
    int ret = 1;
    double t0 = now_s();
    for (uint64_t done = 0; done < n;) {
        size_t b = n - done < FILL_BATCH ? (size_t)(n - done) : FILL_BATCH;
        for (size_t i = 0; i < b; i++) {
            snprintf(ids[i], sizeof ids[i], "d%" PRIu64, done + i);
            puts[i] = (st_put){.receiver = DRAIN_UID, .sender = "bench", .msg_id = ids[i],
                               .msg_type = 1, .content = content,
                               .content_len = content_len};
        }
        st_error err = {0};
        int rc = st_append(s, puts, b, &err);
        if (rc != ST_OK) {
            fail_engine("st_append (fill)", rc, &err);
            goto out;
        }
        for (size_t i = 0; i < b; i++) {
            if (puts[i].code != ST_OK) {
                err.code = puts[i].code;
                snprintf(err.msg, sizeof err.msg, "put %" PRIu64 ": %s", done + i,
                         puts[i].error ? puts[i].error : "(no reason)");
                fail_engine("st_append (fill)", puts[i].code, &err);
                goto out;
            }
            if (puts[i].duplicate || puts[i].seq != done + i + 1) {
                fprintf(stderr, "storage_bench: fill: put %" PRIu64 " got seq %" PRIu64
                                " duplicate=%d, expected seq %" PRIu64 "\n",
                        done + i, puts[i].seq, (int)puts[i].duplicate, done + i + 1);
                goto out;
            }
        }
        done += b;
    }
    double secs = now_s() - t0;
    printf("fill msgs=%" PRIu64 " batch=%d secs=%.3f msgs_per_s=%.0f\n", n, FILL_BATCH, secs,
           (double)n / secs);
    fflush(stdout);
    ret = 0;
out:
    free(puts);
    free(ids);
    return ret;
}

static int bench_drain(const char *base, uint64_t n, uint32_t page_size, const char *content,
                       size_t content_len) {
    char dir[PATH_MAX];
    if (snprintf(dir, sizeof dir, "%s/drain-%u", base, page_size) >= (int)sizeof dir) {
        fprintf(stderr, "storage_bench: --dir too long\n");
        return 1;
    }
    if (rm_tree(dir) != 0) return 1;

    st_options o;
    st_options_init(&o); /* sync stays true */
    if (o.max_inbox < n) o.max_inbox = n; /* one inbox holds all N */
    st_shard *s = NULL;
    st_error err = {0};
    int rc = st_open(dir, &o, &s, &err);
    if (rc != ST_OK) {
        fail_engine("st_open", rc, &err);
        return 1;
    }

    int ret = 1;
    uint8_t *seen = calloc(n ? n : 1, 1);
    if (!seen) {
        fprintf(stderr, "storage_bench: out of memory\n");
        goto out;
    }
    if (fill_inbox(s, n, content, content_len) != 0) goto out;

    uint64_t cursor = 0, got = 0, pages = 0;
    double read_secs = 0, ack_secs = 0;
    bool last_more = false;
    double t0 = now_s();
    /* Bounded: every non-empty page advances the cursor by >= 1. */
    for (uint64_t iter = 0; iter <= n + 1; iter++) {
        st_page page;
        double a = now_s();
        rc = st_read(s, DRAIN_UID, NULL, cursor, page_size, 0, &page, &err);
        double b = now_s();
        read_secs += b - a;
        if (rc != ST_OK) {
            fail_engine("st_read", rc, &err);
            goto out;
        }
        if (page.n == 0) {
            st_page_free(&page);
            break;
        }
        if (page.n > page_size) {
            fprintf(stderr, "storage_bench: page of %zu > limit %u\n", page.n, page_size);
            st_page_free(&page);
            goto out;
        }
        for (size_t i = 0; i < page.n; i++) {
            const st_msg *m = &page.msgs[i];
            uint64_t idx = UINT64_MAX;
            if (m->msg_id && m->msg_id[0] == 'd') idx = strtoull(m->msg_id + 1, NULL, 10);
            if (m->seq <= cursor || idx >= n || seen[idx] || m->seq != idx + 1 ||
                m->content_len != content_len ||
                (content_len && memcmp(m->content, content, content_len) != 0) ||
                strcmp(m->sender, "bench") != 0) {
                fprintf(stderr, "storage_bench: drain: unexpected message seq=%" PRIu64
                                " msg_id=%s after cursor %" PRIu64 " (seen before: %d)\n",
                        m->seq, m->msg_id ? m->msg_id : "(null)", cursor,
                        idx < n ? (int)seen[idx] : -1);
                st_page_free(&page);
                goto out;
            }
            seen[idx] = 1;
            cursor = m->seq;
        }
        size_t page_n = page.n;
        got += page_n;
        pages++;
        last_more = page.more;
        st_page_free(&page);

        uint64_t deleted = 0;
        a = now_s();
        rc = st_ack(s, DRAIN_UID, NULL, cursor, &deleted, &err);
        ack_secs += now_s() - a;
        if (rc != ST_OK) {
            fail_engine("st_ack", rc, &err);
            goto out;
        }
        if (deleted != page_n) {
            fprintf(stderr, "storage_bench: ack up to %" PRIu64 " deleted %" PRIu64
                            ", the page had %zu\n", cursor, deleted, page_n);
            goto out;
        }
    }
    double secs = now_s() - t0;

    if (got != n || last_more) {
        fprintf(stderr, "storage_bench: drain saw %" PRIu64 " of %" PRIu64
                        " messages (last page more=%d)\n", got, n, (int)last_more);
        goto out;
    }
    for (uint64_t i = 0; i < n; i++)
        if (!seen[i]) {
            fprintf(stderr, "storage_bench: drain never saw d%" PRIu64 "\n", i);
            goto out;
        }
    st_inbox info;
    rc = st_inbox_info(s, DRAIN_UID, &info, &err);
    if (rc != ST_OK) {
        fail_engine("st_inbox_info", rc, &err);
        goto out;
    }
    if (info.count != 0 || info.high != n) {
        fprintf(stderr, "storage_bench: after drain count=%" PRIu64 " high=%" PRIu64
                        ", expected count 0, high %" PRIu64 "\n",
                info.count, info.high, n);
        goto out;
    }
    printf("drain page=%u msgs=%" PRIu64 " pages=%" PRIu64 " secs=%.3f msgs_per_s=%.0f "
           "read_secs=%.3f ack_secs=%.3f\n",
           page_size, got, pages, secs, secs > 0 ? (double)got / secs : 0.0, read_secs,
           ack_secs);
    fflush(stdout);
    ret = 0;
out:
    free(seen);
    st_close(&s);
    if (rm_tree(dir) != 0) ret = 1;
    return ret;
}

/* ------------------------------------------------------------------ main */

static void usage(const char *argv0) {
    fprintf(stderr,
            "usage: %s [--dir DIR] [--seconds S] [--appenders LIST] [--drain N]\n"
            "          [--page P] [--content BYTES]\n",
            argv0);
}

static bool parse_u64(const char *v, uint64_t *out) {
    char *end;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    if (errno || end == v || *end || v[0] == '-') return false;
    *out = x;
    return true;
}

int main(int argc, char **argv) {
    const char *dir = NULL;
    double seconds = 3.0;
    const char *levels_arg = "1,16,64";
    uint64_t drain = 200000, page = 100, content_len = 100;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(argv[0]);
            return 0;
        }
        const char *v = i + 1 < argc ? argv[++i] : NULL;
        bool ok = v != NULL;
        if (!ok) {
        } else if (strcmp(a, "--dir") == 0) {
            dir = v;
        } else if (strcmp(a, "--seconds") == 0) {
            char *end;
            seconds = strtod(v, &end);
            ok = *end == 0 && seconds > 0 && seconds <= 3600;
        } else if (strcmp(a, "--appenders") == 0) {
            levels_arg = v;
        } else if (strcmp(a, "--drain") == 0) {
            ok = parse_u64(v, &drain) && drain <= 100000000;
        } else if (strcmp(a, "--page") == 0) {
            ok = parse_u64(v, &page) && page >= 1 && page <= ST_PAGE_MAX;
        } else if (strcmp(a, "--content") == 0) {
            ok = parse_u64(v, &content_len) && content_len <= ST_CONTENT_MAX;
        } else {
            ok = false;
        }
        if (!ok) {
            fprintf(stderr, "storage_bench: bad option %s %s\n", a, v ? v : "");
            usage(argv[0]);
            return 2;
        }
    }

    int levels[MAX_LEVELS], nlevels = 0;
    for (const char *p = levels_arg; *p;) {
        char *end;
        long c = strtol(p, &end, 10);
        if (end == p || c < 1 || c > MAX_THREADS || nlevels == MAX_LEVELS ||
            (*end && *end != ',')) {
            fprintf(stderr, "storage_bench: bad --appenders %s (1..%d each, up to %d)\n",
                    levels_arg, MAX_THREADS, MAX_LEVELS);
            return 2;
        }
        levels[nlevels++] = (int)c;
        p = *end ? end + 1 : end;
    }

    char tmpdir[PATH_MAX];
    bool own_dir = false;
    if (!dir) {
        snprintf(tmpdir, sizeof tmpdir, "./bench-data-XXXXXX");
        if (!mkdtemp(tmpdir)) {
            fprintf(stderr, "storage_bench: mkdtemp: %s\n", strerror(errno));
            return 1;
        }
        dir = tmpdir;
        own_dir = true;
    } else {
        struct stat st;
        if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
            fprintf(stderr, "storage_bench: mkdir %s: %s\n", dir, strerror(errno));
            return 1;
        }
        if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
            fprintf(stderr, "storage_bench: --dir %s is not a directory\n", dir);
            return 1;
        }
    }

    char *content = malloc(content_len ? content_len : 1);
    if (!content) {
        fprintf(stderr, "storage_bench: out of memory\n");
        return 1;
    }
    for (uint64_t i = 0; i < content_len; i++) content[i] = (char)('a' + i % 26);

    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    const char *fs = fs_name(dir);
    printf("config dir=%s fs=%s nproc=%ld seconds=%g appenders=%s drain=%" PRIu64
           " page=%" PRIu64 " content=%" PRIu64 "\n",
           dir, fs, ncpu, seconds, levels_arg, drain, page, content_len);
    if (strcmp(fs, "tmpfs") == 0)
        fprintf(stderr, "storage_bench: warning: %s is tmpfs, fsync costs nothing\n", dir);
    fflush(stdout);

    int rc = 0;
    for (int i = 0; i < nlevels && rc == 0; i++)
        rc = bench_append(dir, levels[i], seconds, content, (size_t)content_len);
    for (int i = 0; i < nlevels && rc == 0; i++)
        rc = bench_append_async(dir, levels[i], seconds, content, (size_t)content_len);
    if (rc == 0 && drain > 0) {
        rc = bench_drain(dir, drain, (uint32_t)page, content, (size_t)content_len);
        if (rc == 0 && page != ST_PAGE_MAX)
            rc = bench_drain(dir, drain, ST_PAGE_MAX, content, (size_t)content_len);
    }

    free(content);
    if (own_dir && rm_tree(dir) != 0) rc = 1;
    return rc == 0 ? 0 : 1;
}
