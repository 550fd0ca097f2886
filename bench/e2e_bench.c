/*
 * e2e_bench - end-to-end load through the gateway, over gRPC, against a
 * running imbox (bench/run_e2e.sh starts one). Not a test: it measures.
 *
 *   e2e_bench --addr HOST:PORT --data-dir DIR [--threads 1,16,64]
 *             [--seconds 3] [--drain 20000] [--page 100] [--content 100]
 *
 * --data-dir is the server's (its auth.secret signs the bench's tokens).
 * Phase "send": T threads, each its own client and sender uid, each calling
 * Send (one receiver among 1000, unique msg_id) and waiting for the
 * receipt, for --seconds. Every receipt must be code 0, not duplicate.
 * Phase "drain": one inbox filled with --drain messages (64 threads, not
 * timed), then drained as a client does: Pull with the previous cursor until
 * an empty page; every message must arrive exactly once.
 * Output lines: `e2e_send threads=T ...`, `e2e_drain page=P ...`.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "im_auth.h"
#include "rpc_client.h"

#define E2E_RECEIVERS 1000
#define E2E_TIMEOUT_MS 30000
#define E2E_MAX_THREADS 256

static double s_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int s_cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

typedef struct worker {
    pthread_t tid;
    int id;
    const char *addr;
    const char *tag;         /* msg_id prefix of this phase */
    char token[IM_TOKEN_MAX];
    const char *fixed_to;    /* drain fill: the one receiver, else NULL */
    uint64_t quota;          /* drain fill: how many to send, else 0 */
    const char *content;
    size_t content_len;
    atomic_bool *stop;
    uint64_t ops;
    double *lat;
    size_t nlat, cap;
    int failed;
    char why[512];
} worker;

static void *s_worker(void *p)
{
    worker *w = p;
    rpc_client *c = rpc_client_new(w->addr, w->token);
    if (!c) {
        w->failed = 1;
        snprintf(w->why, sizeof w->why, "rpc_client_new failed");
        return NULL;
    }
    uint64_t rng = 0x9E3779B97F4A7C15ull * (uint64_t)(w->id + 1);
    char to[32], msg_id[64];
    while (w->quota ? w->ops < w->quota : !atomic_load(w->stop)) {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        if (w->fixed_to)
            snprintf(to, sizeof to, "%s", w->fixed_to);
        else
            snprintf(to, sizeof to, "rcv-%03u", (unsigned)(rng % E2E_RECEIVERS));
        snprintf(msg_id, sizeof msg_id, "%s-%d-%" PRIu64, w->tag, w->id, w->ops);
        const char *rcv[1] = {to};
        rpc_send_result r = {0};
        rpc_error err = {0};
        double t0 = s_now();
        grpc_status_code st = rpc_send(c, msg_id, rcv, 1, 1, w->content, w->content_len,
                                       E2E_TIMEOUT_MS, &r, &err);
        double dt = s_now() - t0;
        if (st != GRPC_STATUS_OK || r.n != 1 || r.receipts[0].code != 0 ||
            r.receipts[0].duplicate) {
            w->failed = 1;
            snprintf(w->why, sizeof w->why, "send %s: status %d (%s), receipt code %d",
                     msg_id, (int)st, err.details, r.n ? r.receipts[0].code : -1);
            rpc_send_result_free(&r);
            break;
        }
        rpc_send_result_free(&r);
        if (w->nlat == w->cap) {
            size_t cap = w->cap ? w->cap * 2 : 4096;
            double *l = realloc(w->lat, cap * sizeof *l);
            if (!l)
                break;
            w->lat = l;
            w->cap = cap;
        }
        w->lat[w->nlat++] = dt;
        w->ops++;
    }
    rpc_client_destroy(&c);
    return NULL;
}

/* Runs n workers (configured by the caller) for `seconds`, or until each
 * has sent its quota. Returns 0, or 1 after printing the first failure. */
static int s_run(worker *ws, int n, double seconds, atomic_bool *stop, double *secs)
{
    double t0 = s_now();
    for (int i = 0; i < n; i++)
        if (pthread_create(&ws[i].tid, NULL, s_worker, &ws[i])) {
            fprintf(stderr, "e2e_bench: pthread_create failed\n");
            exit(1);
        }
    if (seconds > 0)
        while (s_now() - t0 < seconds) {
            struct timespec ts = {0, 20 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    atomic_store(stop, true);
    for (int i = 0; i < n; i++)
        pthread_join(ws[i].tid, NULL);
    *secs = s_now() - t0;
    for (int i = 0; i < n; i++)
        if (ws[i].failed) {
            fprintf(stderr, "e2e_bench: %s\n", ws[i].why);
            return 1;
        }
    return 0;
}

static int s_token(const im_secret *sec, const char *uid, char *out)
{
    if (im_token_make(sec, uid, (int64_t)time(NULL) + 3600, out, IM_TOKEN_MAX)) {
        fprintf(stderr, "e2e_bench: cannot make a token for %s\n", uid);
        return 1;
    }
    return 0;
}

static int s_bench_send(const char *addr, const im_secret *sec, int threads, double seconds,
                        const char *content, size_t content_len)
{
    worker ws[E2E_MAX_THREADS];
    atomic_bool stop = false;
    static int round;
    char tag[32];
    snprintf(tag, sizeof tag, "s%d", round++);
    for (int i = 0; i < threads; i++) {
        char uid[32];
        ws[i] = (worker){.id = i, .addr = addr, .tag = tag, .content = content,
                         .content_len = content_len, .stop = &stop};
        snprintf(uid, sizeof uid, "sender-%d", i);
        if (s_token(sec, uid, ws[i].token))
            return 1;
    }
    double secs;
    int rc = s_run(ws, threads, seconds, &stop, &secs);
    uint64_t ops = 0;
    size_t nlat = 0;
    for (int i = 0; i < threads; i++) {
        ops += ws[i].ops;
        nlat += ws[i].nlat;
    }
    double *lat = malloc((nlat ? nlat : 1) * sizeof *lat), sum = 0;
    size_t k = 0;
    for (int i = 0; i < threads && lat; i++) {
        for (size_t j = 0; j < ws[i].nlat; j++)
            sum += lat[k++] = ws[i].lat[j];
        free(ws[i].lat);
    }
    if (!rc && lat) {
        qsort(lat, nlat, sizeof *lat, s_cmp);
        printf("e2e_send threads=%d sends=%" PRIu64 " secs=%.3f sends_per_s=%.0f mean_us=%.0f "
               "p99_us=%.0f\n",
               threads, ops, secs, (double)ops / secs, nlat ? sum / (double)nlat * 1e6 : 0,
               nlat ? lat[(size_t)((double)(nlat - 1) * 0.99)] * 1e6 : 0);
        fflush(stdout);
    }
    free(lat);
    return rc;
}

static int s_bench_drain(const char *addr, const im_secret *sec, uint64_t n, uint32_t page,
                         const char *content, size_t content_len)
{
    enum { FILLERS = 64 };
    worker ws[FILLERS];
    atomic_bool stop = false;
    char who[32];
    snprintf(who, sizeof who, "drain-%u", page);
    for (int i = 0; i < FILLERS; i++) {
        ws[i] = (worker){.id = i, .addr = addr, .tag = who, .fixed_to = who,
                         .quota = n / FILLERS + (i < (int)(n % FILLERS)), .content = content,
                         .content_len = content_len, .stop = &stop};
        if (s_token(sec, "filler", ws[i].token))
            return 1;
    }
    double fill_secs;
    int rc = s_run(ws, FILLERS, 0, &stop, &fill_secs);
    for (int i = 0; i < FILLERS; i++)
        free(ws[i].lat);
    if (rc)
        return 1;

    char token[IM_TOKEN_MAX];
    if (s_token(sec, who, token))
        return 1;
    rpc_client *c = rpc_client_new(addr, token);
    char cursor[RPC_CURSOR_CAP] = "";
    uint64_t got = 0, calls = 0;
    double t0 = s_now();
    for (;;) {
        rpc_page pg = {0};
        rpc_error err = {0};
        grpc_status_code st = rpc_pull(c, cursor, page, NULL, E2E_TIMEOUT_MS, &pg, &err);
        calls++;
        if (st != GRPC_STATUS_OK) {
            fprintf(stderr, "e2e_bench: pull: status %d (%s)\n", (int)st, err.details);
            rpc_client_destroy(&c);
            return 1;
        }
        got += pg.n;
        snprintf(cursor, sizeof cursor, "%s", pg.cursor);
        bool empty = pg.n == 0;
        rpc_page_free(&pg);
        if (empty)
            break;
    }
    double secs = s_now() - t0;
    rpc_client_destroy(&c);
    if (got != n) {
        fprintf(stderr, "e2e_bench: drained %" PRIu64 " messages, sent %" PRIu64 "\n", got, n);
        return 1;
    }
    printf("e2e_drain page=%u msgs=%" PRIu64 " calls=%" PRIu64 " secs=%.3f msgs_per_s=%.0f "
           "fill_sends_per_s=%.0f\n",
           page, got, calls, secs, (double)got / secs, (double)n / fill_secs);
    fflush(stdout);
    return 0;
}

int main(int argc, char **argv)
{
    const char *addr = NULL, *dir = NULL, *threads = "1,16,64";
    double seconds = 3;
    uint64_t drain = 20000, content_len = 100;
    uint32_t page = 100;
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--addr"))
            addr = v;
        else if (!strcmp(k, "--data-dir"))
            dir = v;
        else if (!strcmp(k, "--threads"))
            threads = v;
        else if (!strcmp(k, "--seconds"))
            seconds = atof(v);
        else if (!strcmp(k, "--drain"))
            drain = strtoull(v, NULL, 10);
        else if (!strcmp(k, "--page"))
            page = (uint32_t)strtoul(v, NULL, 10);
        else if (!strcmp(k, "--content"))
            content_len = strtoull(v, NULL, 10);
        else
            addr = NULL;
    }
    if (!addr || !dir || seconds <= 0 || page < 1 || page > 1000 || content_len > 65536) {
        fprintf(stderr, "usage: e2e_bench --addr HOST:PORT --data-dir DIR [--threads 1,16,64] "
                        "[--seconds 3] [--drain 20000] [--page 1..1000] [--content BYTES]\n");
        return 2;
    }
    im_secret sec;
    char err[256];
    if (im_secret_load_or_create(dir, &sec, err, sizeof err)) {
        fprintf(stderr, "e2e_bench: %s\n", err);
        return 1;
    }
    char *content = malloc(content_len + 1);
    if (!content)
        return 1;
    memset(content, 'x', content_len);
    int rc = 0;
    char *list = strdup(threads);
    for (char *save = NULL, *t = strtok_r(list, ",", &save); t && !rc;
         t = strtok_r(NULL, ",", &save)) {
        int n = atoi(t);
        if (n < 1 || n > E2E_MAX_THREADS) {
            fprintf(stderr, "e2e_bench: --threads: 1..%d each\n", E2E_MAX_THREADS);
            rc = 2;
            break;
        }
        rc = s_bench_send(addr, &sec, n, seconds, content, content_len);
    }
    if (!rc && drain)
        rc = s_bench_drain(addr, &sec, drain, page, content, content_len);
    free(list);
    free(content);
    return rc;
}
