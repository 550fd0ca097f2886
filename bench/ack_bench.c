/*
 * ack_bench - what many small acks cost one storage shard, and what they
 * leave behind for the next flush and the next restart.
 *
 *   ack_bench [--dir DIR] [--acks N] [--page P] [--senders S]
 *             [--content BYTES] [--flush-appenders C]
 *
 *   --dir        where the shard goes (default: a fresh ./bench-ack-XXXXXX
 *                under the current directory, removed at the end: /tmp may
 *                be tmpfs)
 *   --acks       acks to make (default 100000)
 *   --page       messages per ack (default 1: one Pull of page 1 each, or
 *                one message pushed to a live stream and acked)
 *   --senders    messages come from this many senders in turn (default 1:
 *                one conversation, the worst case of the first ack code;
 *                give --senders N*P for one sender per message)
 *   --content    bytes of content per message (default 100)
 *   --flush-appenders  appenders during the flush phase (default 16)
 *
 * One receiver gets N*P + P messages (appended in batches of 1000, not
 * timed), then N acks of P messages each are made the way a client drains:
 * read the page after the cursor, ack up to its last seq. Two runs, each
 * in a child process of its own (this program again, so that its peak RSS
 * is its own and a kill is a real one):
 *
 *   crash   fill, acks, then SIGKILL of itself: the acks are only in the
 *           write-ahead log. Then a fresh child reopens the shard (times
 *           st_open, which replays the log), reads the next page (the P
 *           messages left) and exits; its peak RSS is the restart's.
 *   flush   fill, acks, then C threads append durably (sync) to other
 *           inboxes: for 1 s, then during st_flush() (the memtable holding
 *           the acks is written to an SST file), then 0.2 s more. Reports
 *           the flush time and the latency of the appends that started
 *           before the flush and of those that started during it.
 *
 * Prints key=value lines:
 *   acks n= page= senders= secs= acks_per_s= mean_us= p99_us=
 *   restart open_ms= next_page_us= next_page_msgs= peak_rss_mb=
 *   flush flush_ms= appenders= before_appends= before_p50_us= before_p99_us=
 *         before_max_us= during_appends= during_p50_us= during_p99_us=
 *         during_max_us= peak_rss_mb=
 * Exit status: 0, 1 on an engine error or failed check, 2 on bad usage.
 */
#include <errno.h>
#include <ftw.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "st.h"

#define UID "acker"
#define FILL_BATCH 1000
#define MAX_APPENDERS 256

typedef struct cfg {
    uint64_t acks, page, senders, content;
    int appenders;
} cfg;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* The q-quantile (0..1) of v[0..n), sorted in place. */
static uint64_t quantile(uint64_t *v, size_t n, double q)
{
    if (n == 0)
        return 0;
    qsort(v, n, sizeof *v, cmp_u64);
    size_t i = (size_t)(q * (double)(n - 1) + 0.5);
    return v[i];
}

static void die_engine(const char *what, int rc, const st_error *err)
{
    fprintf(stderr, "ack_bench: %s: %s: %s\n", what, st_code_name(rc),
            err && err->msg[0] ? err->msg : "(no message)");
    exit(1);
}

/* A shard whose inbox quota holds the run's messages. */
static st_shard *open_shard(const char *dir, const cfg *c)
{
    st_options o;
    st_options_init(&o);
    uint64_t total = c->acks * c->page + c->page;
    if (o.max_inbox < total)
        o.max_inbox = total;
    st_shard *s = NULL;
    st_error err;
    int rc = st_open(dir, &o, &s, &err);
    if (rc)
        die_engine("st_open", rc, &err);
    return s;
}

/* The receiver's N*P + P messages, sender k % S for the k-th. */
static void fill(st_shard *s, const cfg *c)
{
    uint64_t total = c->acks * c->page + c->page;
    static st_put puts[FILL_BATCH];
    static char ids[FILL_BATCH][24], snd[FILL_BATCH][24];
    char *content = malloc(c->content + 1);
    if (!content) {
        fprintf(stderr, "ack_bench: out of memory\n");
        exit(1);
    }
    memset(content, 'c', c->content);
    for (uint64_t b = 0; b < total; b += FILL_BATCH) {
        size_t n = total - b < FILL_BATCH ? (size_t)(total - b) : FILL_BATCH;
        for (size_t i = 0; i < n; i++) {
            snprintf(ids[i], sizeof ids[i], "m%" PRIu64, b + i);
            snprintf(snd[i], sizeof snd[i], "s%" PRIu64, (b + i) % c->senders);
            puts[i] = (st_put){.receiver = UID, .sender = snd[i], .msg_id = ids[i],
                               .msg_type = 1, .content = content,
                               .content_len = c->content};
        }
        st_error err;
        int rc = st_append(s, puts, n, &err);
        if (rc)
            die_engine("fill", rc, &err);
        for (size_t i = 0; i < n; i++)
            if (puts[i].code != ST_OK || puts[i].duplicate) {
                fprintf(stderr, "ack_bench: fill: put %zu: %s\n", i,
                        st_code_name(puts[i].code));
                exit(1);
            }
    }
    free(content);
}

/* N reads of P messages, each followed by the ack of that page. */
static void acks(st_shard *s, const cfg *c)
{
    uint64_t *lat = malloc(c->acks * sizeof *lat);
    if (!lat) {
        fprintf(stderr, "ack_bench: out of memory\n");
        exit(1);
    }
    uint64_t cursor = 0, t0 = now_ns();
    for (uint64_t i = 0; i < c->acks; i++) {
        st_page pg;
        st_error err;
        int rc = st_read(s, UID, NULL, cursor, (uint32_t)c->page, 0, &pg, &err);
        if (rc)
            die_engine("read", rc, &err);
        if (pg.n != c->page) {
            fprintf(stderr, "ack_bench: page %" PRIu64 " has %zu messages\n", i, pg.n);
            exit(1);
        }
        cursor = pg.msgs[pg.n - 1].seq;
        st_page_free(&pg);
        uint64_t a = now_ns(), deleted = 0;
        if ((rc = st_ack(s, UID, NULL, cursor, &deleted, &err)))
            die_engine("ack", rc, &err);
        lat[i] = now_ns() - a;
        if (deleted != c->page) {
            fprintf(stderr, "ack_bench: ack %" PRIu64 " deleted %" PRIu64 "\n", i, deleted);
            exit(1);
        }
    }
    double secs = (double)(now_ns() - t0) / 1e9, sum = 0;
    for (uint64_t i = 0; i < c->acks; i++)
        sum += (double)lat[i];
    printf("acks n=%" PRIu64 " page=%" PRIu64 " senders=%" PRIu64 " secs=%.2f "
           "acks_per_s=%.0f mean_us=%.1f p99_us=%.1f\n",
           c->acks, c->page, c->senders, secs, (double)c->acks / secs,
           sum / (double)c->acks / 1e3, (double)quantile(lat, c->acks, 0.99) / 1e3);
    fflush(stdout);
    free(lat);
}

static double peak_rss_mb(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss / 1024.0;
}

/* ------------------------------------------------------------ the runs */

static int run_crash(const char *dir, const cfg *c)
{
    st_shard *s = open_shard(dir, c);
    fill(s, c);
    acks(s, c);
    kill(getpid(), SIGKILL); /* no st_close: the acks are in the WAL only */
    return 1;
}

static int run_reopen(const char *dir, const cfg *c)
{
    uint64_t t0 = now_ns();
    st_shard *s = open_shard(dir, c);
    double open_ms = (double)(now_ns() - t0) / 1e6;
    st_inbox in;
    st_error err;
    int rc = st_inbox_info(s, UID, &in, &err);
    if (rc)
        die_engine("inbox", rc, &err);
    st_page pg;
    t0 = now_ns();
    if ((rc = st_read(s, UID, NULL, in.floor, (uint32_t)c->page, 0, &pg, &err)))
        die_engine("next page", rc, &err);
    double page_us = (double)(now_ns() - t0) / 1e3;
    bool ok = in.floor == c->acks * c->page && pg.n == c->page &&
              pg.msgs[0].seq == in.floor + 1;
    printf("restart open_ms=%.1f next_page_us=%.1f next_page_msgs=%zu peak_rss_mb=%.1f\n",
           open_ms, page_us, pg.n, peak_rss_mb());
    st_page_free(&pg);
    st_close(&s);
    if (!ok)
        fprintf(stderr, "ack_bench: after the restart floor=%" PRIu64 ", want %" PRIu64 "\n",
                in.floor, c->acks * c->page);
    return ok ? 0 : 1;
}

/* Appenders that time every durable append while the flush runs. */
typedef struct sample {
    uint64_t start, ns; /* when the append started, how long it took */
} sample;

typedef struct flusher {
    st_shard *s;
    atomic_bool stop;
    pthread_mutex_t mu;
    sample *v;
    size_t n, cap;
} flusher;

typedef struct appender {
    flusher *f;
    int id;
} appender;

static void *append_main(void *arg)
{
    appender *a = arg;
    flusher *f = a->f;
    char rcv[24], id[32];
    snprintf(rcv, sizeof rcv, "other%d", a->id);
    for (uint64_t i = 0; !atomic_load(&f->stop); i++) {
        snprintf(id, sizeof id, "f%d-%" PRIu64, a->id, i);
        st_put p = {.receiver = rcv, .sender = "sender", .msg_id = id, .msg_type = 1,
                    .content = "flush", .content_len = 5};
        st_error err;
        uint64_t t0 = now_ns();
        int rc = st_append(f->s, &p, 1, &err);
        sample x = {t0, now_ns() - t0};
        if (rc || p.code)
            die_engine("append during the flush", rc ? rc : p.code, &err);
        pthread_mutex_lock(&f->mu);
        if (f->n == f->cap) {
            f->cap = f->cap ? 2 * f->cap : 4096;
            sample *v = realloc(f->v, f->cap * sizeof *v);
            if (!v) {
                fprintf(stderr, "ack_bench: out of memory\n");
                exit(1);
            }
            f->v = v;
        }
        f->v[f->n++] = x;
        pthread_mutex_unlock(&f->mu);
    }
    return NULL;
}

/* Prints the latencies of the appends that started in [from, to). */
static void report_window(const flusher *f, const char *name, uint64_t from, uint64_t to)
{
    uint64_t *lat = malloc((f->n + 1) * sizeof *lat), max = 0;
    size_t n = 0;
    if (!lat) {
        fprintf(stderr, "ack_bench: out of memory\n");
        exit(1);
    }
    for (size_t i = 0; i < f->n; i++)
        if (f->v[i].start >= from && f->v[i].start < to) {
            lat[n++] = f->v[i].ns;
            max = f->v[i].ns > max ? f->v[i].ns : max;
        }
    printf(" %s_appends=%zu %s_p50_us=%.0f %s_p99_us=%.0f %s_max_us=%.0f", name, n, name,
           (double)quantile(lat, n, 0.5) / 1e3, name, (double)quantile(lat, n, 0.99) / 1e3,
           name, (double)max / 1e3);
    free(lat);
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) && errno == EINTR)
        ;
}

/* Appenders run for BASELINE_MS, then the flush, then AFTER_MS more: the
 * appends that started during the flush against those before it. */
#define BASELINE_MS 1000
#define AFTER_MS 200

static int run_flush(const char *dir, const cfg *c)
{
    flusher f = {.s = open_shard(dir, c)};
    pthread_mutex_init(&f.mu, NULL);
    fill(f.s, c);
    acks(f.s, c);
    pthread_t th[MAX_APPENDERS];
    appender ap[MAX_APPENDERS];
    uint64_t t0 = now_ns();
    for (int i = 0; i < c->appenders; i++) {
        ap[i] = (appender){.f = &f, .id = i};
        if (pthread_create(&th[i], NULL, append_main, &ap[i])) {
            fprintf(stderr, "ack_bench: pthread_create failed\n");
            return 1;
        }
    }
    sleep_ms(BASELINE_MS);
    uint64_t f0 = now_ns();
    st_error err;
    int rc = st_flush(f.s, &err);
    uint64_t f1 = now_ns();
    sleep_ms(AFTER_MS);
    atomic_store(&f.stop, true);
    for (int i = 0; i < c->appenders; i++)
        pthread_join(th[i], NULL);
    if (rc)
        die_engine("flush", rc, &err);
    printf("flush flush_ms=%.1f appenders=%d", (double)(f1 - f0) / 1e6, c->appenders);
    report_window(&f, "before", t0, f0);
    report_window(&f, "during", f0, f1);
    printf(" peak_rss_mb=%.1f\n", peak_rss_mb());
    free(f.v);
    st_close(&f.s);
    pthread_mutex_destroy(&f.mu);
    return 0;
}

/* ---------------------------------------------------------- the driver */

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

/* Runs this program again as `--run NAME DIR` with the same settings and
 * waits for it; returns its exit status (128 + signal when killed). */
static int child(char *self, const char *run, const char *dir, char **argv, int argc)
{
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        char *args[64];
        int k = 0;
        args[k++] = self;
        args[k++] = "--run";
        args[k++] = (char *)run;
        args[k++] = (char *)dir;
        for (int i = 1; i < argc && k < 63; i++)
            args[k++] = argv[i];
        args[k] = NULL;
        execv("/proc/self/exe", args);
        _exit(127);
    }
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) < 0)
        return 1;
    return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status);
}

static void usage(void)
{
    fprintf(stderr, "usage: ack_bench [--dir DIR] [--acks N] [--page P] [--senders S] "
                    "[--content BYTES] [--flush-appenders C]\n");
    exit(2);
}

static uint64_t parse_u64(const char *v, uint64_t lo, uint64_t hi)
{
    char *end;
    errno = 0;
    unsigned long long x = strtoull(v ? v : "", &end, 10);
    if (!v || errno || end == v || *end || x < lo || x > hi)
        usage();
    return x;
}

int main(int argc, char **argv)
{
    cfg c = {.acks = 100000, .page = 1, .senders = 1, .content = 100, .appenders = 16};
    const char *dir = NULL, *run = NULL;
    int first = 1;
    if (argc >= 4 && strcmp(argv[1], "--run") == 0) {
        run = argv[2];
        dir = argv[3];
        first = 4;
    }
    for (int i = first; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--dir")) {
            if (!run) /* a phase's directory is the one `--run` names */
                dir = v;
        }
        else if (!strcmp(a, "--acks"))
            c.acks = parse_u64(v, 1, 10000000);
        else if (!strcmp(a, "--page"))
            c.page = parse_u64(v, 1, ST_PAGE_MAX);
        else if (!strcmp(a, "--senders"))
            c.senders = parse_u64(v, 1, UINT32_MAX);
        else if (!strcmp(a, "--content"))
            c.content = parse_u64(v, 0, ST_CONTENT_MAX);
        else if (!strcmp(a, "--flush-appenders"))
            c.appenders = (int)parse_u64(v, 0, MAX_APPENDERS);
        else
            usage();
        i++;
    }
    if (run) {
        if (!strcmp(run, "crash"))
            return run_crash(dir, &c);
        if (!strcmp(run, "reopen"))
            return run_reopen(dir, &c);
        if (!strcmp(run, "flush"))
            return run_flush(dir, &c);
        usage();
    }

    char base[4096], sub[4200];
    if (dir) {
        snprintf(base, sizeof base, "%s", dir);
        if (mkdir(base, 0755) && errno != EEXIST) {
            fprintf(stderr, "ack_bench: mkdir %s: %s\n", base, strerror(errno));
            return 1;
        }
    } else if (!mkdtemp(strcpy(base, "./bench-ack-XXXXXX"))) {
        fprintf(stderr, "ack_bench: mkdtemp: %s\n", strerror(errno));
        return 1;
    }
    int rc = 0;
    snprintf(sub, sizeof sub, "%s/crash", base);
    int st = child(argv[0], "crash", sub, argv, argc);
    if (st != 128 + SIGKILL) {
        fprintf(stderr, "ack_bench: the crash run ended with status %d\n", st);
        rc = 1;
    } else if (child(argv[0], "reopen", sub, argv, argc)) {
        rc = 1;
    }
    nftw(sub, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    snprintf(sub, sizeof sub, "%s/flush", base);
    if (!rc && child(argv[0], "flush", sub, argv, argc))
        rc = 1;
    nftw(sub, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    if (!dir)
        rmdir(base);
    return rc;
}
