/*
 * bench_core.c - the load generator's engine (bench_core.h is the spec).
 *
 * How it works. One thread, one loop (s_loop): start what may be started,
 * then let the driver poll until the next thing is due; the driver calls
 * bc_done() for each completion, which checks the reply at once (the
 * driver's strings are valid only then), records the latency and queues
 * the op; once poll() returns, the loop hands each queued op to the
 * workload's follow() (a drain's next page, a Counts' conversation pull,
 * a fill's retry) or frees it. A workload is two functions: make() fills a
 * fresh op, follow() turns a completed one into its continuation.
 *
 * Pacing:
 *   closed loop  --inflight N ops outstanding; a completion starts the next
 *                (follow-ups reuse their slot); latency from the actual
 *                start.
 *   open loop    --rate R: op n is due at t0 + n/R, whatever happened
 *                before; latency counts from that intended time, so a
 *                server that stalls cannot slow the offered load down and
 *                hide the stall (no coordinated omission). At most
 *                --max-outstanding ops are outstanding: past that due ops
 *                wait (their latency still counts from the schedule) and
 *                saturated=1 says the offered rate was not carried.
 *                latency_from_start_* counts the same calls from their
 *                actual start: without the generator's own start lag.
 *                Starting stops at 2 x the planned time + 5 s (not_started).
 *   fill, drain  untimed fill: as many as BC_FILL_INFLIGHT sends at once;
 *                drain: every receiver's chain of pulls at once.
 *
 * Latency is kept in a log-linear histogram (128 sub-buckets per power of
 * two: a percentile is exact to within 0.8%, the max is exact), so a long
 * run costs no memory per call. Percentiles are by nearest rank over the
 * successful calls.
 *
 * Server CPU (--server-pid P,...): utime + stime + cutime + cstime summed
 * over each pid and all its descendants (found through the ppid field of
 * every /proc/N/stat), read at the start and at the end of the timed
 * window. The children's fields make a child that exits inside the window
 * count too: its parent's cutime grows by its whole life, which together
 * with its utime counted at the start gives exactly its share of the
 * window (PostgreSQL's postmaster reaps its backends).
 */
#include "bench_core.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define BC_MAX_PIDS 16
#define BC_FILL_INFLIGHT 128      /* fill sends outstanding (not timed) */
#define BC_RETRIES 3              /* a fill send or a drain pull, per op */
#define BC_RUN_ID_MAX 40          /* leaves room for "-r<i>" in BC_ID_MAX */
#define BC_DRAIN_BOUND_S 600.0    /* drain without --seconds */
#define BC_TAIL_NS 5000000000LL   /* beyond --timeout-ms for the last calls */
#define BC_BITS_MAX 1000000000ULL /* receivers x backlog bits (125 MB) */
#define BC_CONTENT_MAX 65536

static int64_t s_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int64_t bc_now_ns(void)
{
    return s_ns();
}

static void *s_calloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) {
        fprintf(stderr, "bench: out of memory\n");
        exit(1);
    }
    return p;
}

static char *s_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = s_calloc(1, n);
    memcpy(p, s, n);
    return p;
}

/* ------------------------------------------------------------- output */

/* The report, collected as (key, value) in order and printed at the end as
 * key=value lines or one JSON object. A key put twice keeps its place and
 * takes the new value. */
typedef struct s_kv {
    char key[64];
    char *val;
    bool str;
} s_kv;

static s_kv *s_out;
static size_t s_nout, s_capout;

void bc_put(const char *key, bool str, const char *val)
{
    for (size_t i = 0; i < s_nout; i++)
        if (!strcmp(s_out[i].key, key)) {
            free(s_out[i].val);
            s_out[i].val = s_strdup(val);
            s_out[i].str = str;
            return;
        }
    if (s_nout == s_capout) {
        s_capout = s_capout ? 2 * s_capout : 64;
        s_kv *n = realloc(s_out, s_capout * sizeof *n);
        if (!n) {
            fprintf(stderr, "bench: out of memory\n");
            exit(1);
        }
        s_out = n;
    }
    s_kv *kv = &s_out[s_nout++];
    snprintf(kv->key, sizeof kv->key, "%s", key);
    kv->val = s_strdup(val);
    kv->str = str;
}

void bc_put_int(const char *key, int64_t v)
{
    char b[32];
    snprintf(b, sizeof b, "%" PRId64, v);
    bc_put(key, false, b);
}

void bc_put_str(const char *key, const char *v)
{
    bc_put(key, true, v ? v : "");
}

void bc_put_double(const char *key, double v, int decimals)
{
    char b[64];
    if (!isfinite(v)) {
        bc_put(key, true, "nan");
        return;
    }
    snprintf(b, sizeof b, "%.*f", decimals < 0 ? 0 : decimals > 9 ? 9 : decimals, v);
    bc_put(key, false, b);
}

static void s_json_str(const char *s)
{
    putchar('"');
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            printf("\\%c", *p);
        else if (*p < 0x20)
            printf("\\u%04x", *p);
        else
            putchar(*p);
    }
    putchar('"');
}

static void s_out_clear(void)
{
    for (size_t i = 0; i < s_nout; i++)
        free(s_out[i].val);
    free(s_out);
    s_out = NULL;
    s_nout = s_capout = 0;
}

void bc_print(bool json)
{
    if (!json) {
        for (size_t i = 0; i < s_nout; i++)
            printf("%s=%s\n", s_out[i].key, s_out[i].val);
    } else {
        printf("{");
        for (size_t i = 0; i < s_nout; i++) {
            printf("%s", i ? ", " : "");
            s_json_str(s_out[i].key);
            printf(": ");
            if (s_out[i].str)
                s_json_str(s_out[i].val);
            else
                printf("%s", s_out[i].val);
        }
        printf("}\n");
    }
    fflush(stdout);
    s_out_clear();
}

/* ---------------------------------------------------------- histogram */

/* Log-linear: values below 256 ns have a bucket each; above, each power
 * of two [2^e, 2^(e+1)) is cut into 128 equal buckets. */
#define H_SUB_BITS 7
#define H_SUB (1 << H_SUB_BITS)
#define H_BUCKETS ((64 - H_SUB_BITS + 1) * H_SUB)

typedef struct s_hist {
    uint64_t n;
    int64_t max;
    double sum;
    uint64_t b[H_BUCKETS];
} s_hist;

static int s_hidx(int64_t v)
{
    if (v < 2 * H_SUB)
        return v < 0 ? 0 : (int)v;
    int e = 63 - __builtin_clzll((unsigned long long)v);
    int s = e - H_SUB_BITS;
    return s * H_SUB + (int)((unsigned long long)v >> s);
}

static void s_hadd(s_hist *h, int64_t v)
{
    if (v < 0)
        v = 0;
    h->b[s_hidx(v)]++;
    h->n++;
    h->sum += (double)v;
    if (v > h->max)
        h->max = v;
}

/* The value at percentile p (nearest rank): the middle of its bucket,
 * never above the exact max. */
static int64_t s_hpct(const s_hist *h, double p)
{
    if (!h->n)
        return 0;
    uint64_t k = (uint64_t)ceil((double)h->n * p / 100.0);
    if (k < 1)
        k = 1;
    if (k > h->n)
        k = h->n;
    uint64_t acc = 0;
    for (int i = 0; i < H_BUCKETS; i++) {
        acc += h->b[i];
        if (acc < k)
            continue;
        int64_t lo, hi;
        if (i < 2 * H_SUB) {
            lo = hi = i;
        } else {
            int s = i / H_SUB - 1;
            int64_t m = i - s * H_SUB;
            lo = m << s;
            hi = ((m + 1) << s) - 1;
        }
        int64_t v = lo + (hi - lo) / 2;
        return v > h->max ? h->max : v;
    }
    return h->max;
}

/* PREFIX_n, _p50_us, _p90_us, _p99_us, _p999_us, _max_us, _mean_us. */
static void s_put_hist(const char *prefix, const s_hist *h)
{
    static const struct {
        const char *name;
        double p;
    } ps[] = {{"p50", 50}, {"p90", 90}, {"p99", 99}, {"p999", 99.9}};
    char key[64];
    snprintf(key, sizeof key, "%s_n", prefix);
    bc_put_int(key, (int64_t)h->n);
    for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++) {
        snprintf(key, sizeof key, "%s_%s_us", prefix, ps[i].name);
        bc_put_double(key, (double)s_hpct(h, ps[i].p) / 1e3, 1);
    }
    snprintf(key, sizeof key, "%s_max_us", prefix);
    bc_put_double(key, (double)h->max / 1e3, 1);
    snprintf(key, sizeof key, "%s_mean_us", prefix);
    bc_put_double(key, h->n ? h->sum / (double)h->n / 1e3 : 0, 1);
}

/* ------------------------------------------------------- /proc readers */

typedef struct s_pstat {
    int pid, ppid;
    int64_t own;   /* utime + stime */
    int64_t ticks; /* utime + stime + cutime + cstime */
    bool in;
} s_pstat;

/* Clock ticks (of /proc/PID/stat) in ns. */
static int64_t s_ticks_ns(int64_t ticks)
{
    long hz = sysconf(_SC_CLK_TCK);
    return ticks * (1000000000LL / (hz > 0 ? hz : 100));
}

/* Reads a stat file of /proc (a process's, or a thread's under
 * /proc/PID/task). The comm field may hold spaces and parentheses: fields
 * are counted after the last ')'. Returns 0 or -1. */
static int s_read_stat_at(const char *path, int pid, s_pstat *out)
{
    char buf[2048];
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p)
        return -1;
    /* After ")": state is token 0, ppid 1, utime 11, stime 12, cutime 13,
     * cstime 14. */
    long long v[15] = {0};
    char *save = NULL;
    int i = 0;
    for (char *t = strtok_r(p + 1, " ", &save); t && i < 15; t = strtok_r(NULL, " ", &save), i++)
        v[i] = i ? strtoll(t, NULL, 10) : 0;
    if (i < 15)
        return -1;
    out->pid = pid;
    out->ppid = (int)v[1];
    out->own = v[11] + v[12];
    out->ticks = v[11] + v[12] + v[13] + v[14];
    out->in = false;
    return 0;
}

/* Reads /proc/PID/stat (s_read_stat_at). */
static int s_read_stat(int pid, s_pstat *out)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    return s_read_stat_at(path, pid, out);
}

/* Context switches (voluntary and not) of thread tid of pid so far: each
 * is the thread slept and was woken, or was preempted; 0 if it is gone. */
static int64_t s_task_ctx(int pid, const char *tid)
{
    char sp[96], line[128];
    snprintf(sp, sizeof sp, "/proc/%d/task/%.16s/status", pid, tid);
    FILE *f = fopen(sp, "r");
    if (!f)
        return 0;
    int64_t sum = 0;
    while (fgets(line, sizeof line, f)) {
        const char *v = NULL;
        if (!strncmp(line, "voluntary_ctxt_switches:", 24))
            v = line + 24;
        else if (!strncmp(line, "nonvoluntary_ctxt_switches:", 27))
            v = line + 27;
        if (v)
            sum += strtoll(v, NULL, 10);
    }
    fclose(f);
    return sum;
}

/* Calls fn(arg, pid, tid) for every thread of pid (none if pid is gone). */
static void s_each_task(int pid, void (*fn)(void *arg, int pid, const char *tid), void *arg)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", pid);
    DIR *d = opendir(path);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d)))
        if (isdigit((unsigned char)e->d_name[0]))
            fn(arg, pid, e->d_name);
    closedir(d);
}

static void s_ctx_add(void *arg, int pid, const char *tid)
{
    *(int64_t *)arg += s_task_ctx(pid, tid);
}

/* Context switches of every thread of pid so far; 0 if pid is gone. */
static int64_t s_proc_ctx(int pid)
{
    int64_t sum = 0;
    s_each_task(pid, s_ctx_add, &sum);
    return sum;
}

/* CPU of the process trees rooted at pids, in ns, their threads' context
 * switches, and how many processes they hold. Returns 0, or -1 when a root
 * is gone. */
static int s_tree_cpu(const int *pids, int npids, int64_t *ns, int64_t *ctx, int *nprocs)
{
    size_t n = 0, cap = 256;
    s_pstat *ps = s_calloc(cap, sizeof *ps);
    DIR *d = opendir("/proc");
    if (!d) {
        free(ps);
        return -1;
    }
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!isdigit((unsigned char)e->d_name[0]))
            continue;
        if (n == cap) {
            cap *= 2;
            s_pstat *q = realloc(ps, cap * sizeof *q);
            if (!q) {
                closedir(d);
                free(ps);
                return -1;
            }
            ps = q;
        }
        if (!s_read_stat(atoi(e->d_name), &ps[n]))
            n++;
    }
    closedir(d);
    int found = 0;
    for (int r = 0; r < npids; r++)
        for (size_t i = 0; i < n; i++)
            if (ps[i].pid == pids[r] && !ps[i].in) {
                ps[i].in = true;
                found++;
            }
    int rc = -1;
    bool all = true;
    for (int r = 0; r < npids; r++) {
        bool here = false;
        for (size_t i = 0; i < n; i++)
            here |= ps[i].pid == pids[r];
        all &= here;
    }
    if (all) {
        /* Descendants: mark children of marked processes until stable. */
        for (bool more = true; more;) {
            more = false;
            for (size_t i = 0; i < n; i++) {
                if (ps[i].in)
                    continue;
                for (size_t j = 0; j < n; j++)
                    if (ps[j].in && ps[j].pid == ps[i].ppid) {
                        ps[i].in = more = true;
                        found++;
                        break;
                    }
            }
        }
        int64_t ticks = 0;
        *ctx = 0;
        for (size_t i = 0; i < n; i++)
            if (ps[i].in) {
                ticks += ps[i].ticks;
                *ctx += s_proc_ctx(ps[i].pid);
            }
        *ns = s_ticks_ns(ticks);
        *nprocs = found;
        rc = 0;
    }
    free(ps);
    return rc;
}

int64_t bc_proc_cpu_ns(int pid)
{
    s_pstat ps;
    return s_read_stat(pid, &ps) ? -1 : s_ticks_ns(ps.own);
}

int64_t bc_self_cpu_ns(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ((int64_t)ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000000LL +
           ((int64_t)ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000LL;
}

/* ---------------------------------------------------- threads by kind */

#define BC_KINDS_MAX 64

struct bc_threads {
    int n;
    struct {
        char kind[24];
        int64_t ns, ctx;
    } k[BC_KINDS_MAX];
};

/* The kind of a thread named comm (see bench_core.h). */
static void s_thread_kind(const char *comm, char *kind, size_t len)
{
    size_t n = 0;
    for (const char *p = comm; *p && *p != '\n' && n + 1 < len; p++) {
        if (isdigit((unsigned char)*p))
            continue;
        if (isalpha((unsigned char)*p))
            kind[n++] = (char)tolower((unsigned char)*p);
        else if (n && kind[n - 1] != '_')
            kind[n++] = '_';
    }
    while (n && kind[n - 1] == '_')
        n--;
    kind[n] = 0;
    if (!n)
        snprintf(kind, len, "other");
}

/* Adds one thread's figures (pid's task tid) to the bc_threads arg under
 * its kind (an s_each_task callback). */
static void s_thread_add(void *arg, int pid, const char *tid)
{
    bc_threads *t = arg;
    char path[96], comm[64] = "", kind[24];
    snprintf(path, sizeof path, "/proc/%d/task/%.16s/comm", pid, tid);
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    bool named = fgets(comm, sizeof comm, f) != NULL;
    fclose(f);
    if (!named)
        return;
    s_thread_kind(comm, kind, sizeof kind);
    snprintf(path, sizeof path, "/proc/%d/task/%.16s/stat", pid, tid);
    s_pstat st;
    if (s_read_stat_at(path, pid, &st))
        return;
    int64_t ctx = s_task_ctx(pid, tid);
    int k = 0;
    while (k < t->n && strcmp(t->k[k].kind, kind))
        k++;
    if (k == t->n) {
        if (t->n == BC_KINDS_MAX)
            k = t->n - 1; /* the last kind takes the rest */
        else
            snprintf(t->k[t->n++].kind, sizeof t->k[0].kind, "%s", kind);
    }
    t->k[k].ns += s_ticks_ns(st.own);
    t->k[k].ctx += ctx;
}

bc_threads *bc_threads_read(const int *pids, int npids)
{
    bc_threads *t = calloc(1, sizeof *t);
    for (int i = 0; t && i < npids; i++)
        s_each_task(pids[i], s_thread_add, t);
    return t;
}

int64_t bc_threads_put(const bc_threads *before, const bc_threads *after, const char *unit,
                       double units)
{
    if (!before || !after || units <= 0)
        return 0;
    int64_t ctx_all = 0;
    for (int i = 0; i < after->n; i++) {
        int64_t ns = after->k[i].ns, ctx = after->k[i].ctx;
        for (int j = 0; j < before->n; j++)
            if (!strcmp(before->k[j].kind, after->k[i].kind)) {
                ns -= before->k[j].ns;
                ctx -= before->k[j].ctx;
                break;
            }
        ns = ns > 0 ? ns : 0; /* a thread of the kind ended meanwhile */
        ctx = ctx > 0 ? ctx : 0;
        ctx_all += ctx;
        if (!ns && !ctx)
            continue;
        char key[96];
        snprintf(key, sizeof key, "thread_%s_cpu_us_per_%s", after->k[i].kind, unit);
        bc_put_double(key, (double)ns / 1e3 / units, 1);
        snprintf(key, sizeof key, "thread_%s_ctx_per_%s", after->k[i].kind, unit);
        bc_put_double(key, (double)ctx / units, 2);
    }
    return ctx_all;
}

void bc_threads_free(bc_threads *t)
{
    free(t);
}

/* ------------------------------------------------------------- state */

typedef enum { W_SEND, W_DRAIN, W_COUNTS, W_NOOP, W_MIXED, W_CUSTOM } s_work;
typedef enum { R_WORK, R_FILL, R_FOLLOW } s_role;

/* The checks, each a counter; any non-zero one fails the run. */
typedef enum {
    K_SEND_DUPLICATE,   /* a fresh msg_id answered "duplicate" */
    K_SEND_SHAPE,       /* a send op came back without its receivers */
    K_PULL_OVERSIZE,    /* more entries than the page asked for */
    K_PULL_UNEXPECTED,  /* a message that is not ours for this inbox */
    K_PULL_CONTENT,     /* a message whose content length is not --content */
    K_PULL_DUPLICATE,   /* seen twice without a retried page */
    K_CURSOR,           /* no cursor, or one longer than BC_CURSOR_MAX */
    K_COUNTS,           /* Counts differ from what the fill stored */
    K_CONVERSATION,     /* a conversation pull differs from the fill */
    K_DRAIN_MISSING,    /* filled messages a drain never saw */
    K_DRAIN_GAVE_UP,    /* receivers whose pulls failed BC_RETRIES times */
    K_COUNT
} s_check;

static const char *const s_check_names[K_COUNT] = {
    "send_duplicate", "send_shape",   "pull_oversize", "pull_unexpected",
    "pull_content",   "pull_duplicate", "cursor",      "counts",
    "conversation",   "drain_missing", "drain_gave_up",
};

typedef struct s_op {
    bc_op op;          /* first: bc_done receives &op */
    s_role role;
    int rcv;           /* pull, counts: the receiver; send: the first one */
    uint64_t seq;      /* send: the message number; fill: k */
    int tries;
    bool call_ok;      /* the driver's status was 0 (checks aside) */
    char msg_id[BC_ID_MAX];
    char *cursor;      /* owned copy behind op.cursor (NULL: "") */
} s_op;

typedef struct s_rcv {
    char *cursor;      /* the last page's cursor (NULL: "") */
    uint64_t *seen;    /* drain, counts: bit k = "<run>-f<k>" was seen */
    uint32_t nseen;
    uint8_t retries;   /* consecutive failed pulls */
    bool busy;         /* a pull of this inbox is outstanding */
    bool retried;      /* a pull of it failed and went again */
} s_rcv;

typedef struct s_err {
    char name[48];
    uint64_t n;
} s_err;

#define S_ERRS_MAX 32

typedef struct s_core {
    bc_opts o;
    bc_driver *d;
    s_work work;
    int pids[BC_MAX_PIDS];
    int mix[BC_KINDS];     /* weights by kind (mixed) */
    int mix_total;
    bool rate_set, inflight_set, count_set, receivers_set, backlog_set;

    char (*ruid)[BC_ID_MAX];
    char (*suid)[BC_ID_MAX];
    s_rcv *rcv;
    uint8_t *content;
    uint64_t rng;

    /* phase */
    bool timed;            /* completions count in the figures */
    bool open;             /* latency from intended_ns */
    s_op *done_head, **done_tail;
    s_op *free_ops;
    int outstanding, outstanding_max;
    bool fatal;
    char why[512];

    /* work state */
    uint64_t nsend;        /* send and mixed: msg_ids given */
    uint32_t *seq_rcv;     /* mixed: first receiver of each send */
    uint64_t *seq_seen;    /* mixed: send n seen by a pull */
    uint64_t seq_cap;
    uint64_t rr;           /* round-robin receiver position */
    uint64_t fill_k, fill_b, fill_blocks, fill_done, fill_msgs;
    int fill_group;
    int next_rcv;          /* drain: receivers started */
    uint32_t *stamp;       /* counts: senders listed, by generation */
    uint32_t gen;

    /* figures */
    uint64_t calls, calls_ok, msgs_stored, msgs_pulled;
    uint64_t kcalls[BC_KINDS], kok[BC_KINDS];
    s_hist lat, klat[BC_KINDS], lag;
    s_hist lat_start;      /* open loop: from each call's actual start */
    s_err errs[S_ERRS_MAX];
    int nerrs;
    uint64_t errors, fill_errors;
    uint64_t checks[K_COUNT];
    uint64_t drain_pages, drain_pulls, drain_dups_redelivered, mix_pull_as_send;
    uint64_t scheduled, not_started, held;
    int64_t t0, t_last_start, t_last_done;

    /* progress line */
    bool tty, progressed;
    int64_t next_tick;
    uint64_t tick_calls;
} s_core;

static s_core *C; /* the one run (bc_done and bc_options reach it) */

const bc_opts *bc_options(void)
{
    return C ? &C->o : NULL;
}

static void s_fatal(const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (strstr(C->why, msg))
        return;
    size_t n = strlen(C->why);
    snprintf(C->why + n, sizeof C->why - n, "%s%s", C->fatal ? "; then " : "", msg);
    C->fatal = true;
}

static uint64_t s_rand(void)
{
    uint64_t x = C->rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return C->rng = x;
}

static void s_error(const char *prefix, const char *name, int status)
{
    char key[48];
    if (name && *name)
        snprintf(key, sizeof key, "%s%s", prefix, name);
    else
        snprintf(key, sizeof key, "%sstatus_%d", prefix, status);
    for (char *p = key; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '_' && *p != ':' && *p != '-')
            *p = '_';
    C->errors++;
    for (int i = 0; i < C->nerrs; i++)
        if (!strcmp(C->errs[i].name, key)) {
            C->errs[i].n++;
            return;
        }
    /* The last slot collects every name beyond the table. */
    if (C->nerrs == S_ERRS_MAX) {
        C->errs[S_ERRS_MAX - 1].n++;
        return;
    }
    s_err *e = &C->errs[C->nerrs++];
    snprintf(e->name, sizeof e->name, "%s", C->nerrs == S_ERRS_MAX ? "other" : key);
    e->n++;
}

/* Parses "<run>-<tag><n>" (tag a letter, or 0 for none) into n < lim. */
static bool s_parse_id(const char *id, char tag, uint64_t lim, uint64_t *n)
{
    if (!id)
        return false;
    size_t rl = strlen(C->o.run_id);
    if (strncmp(id, C->o.run_id, rl) || id[rl] != '-')
        return false;
    const char *p = id + rl + 1;
    if (tag && *p++ != tag)
        return false;
    if (!isdigit((unsigned char)*p) || (*p == '0' && p[1]))
        return false;
    uint64_t v = 0;
    for (; *p; p++) {
        if (!isdigit((unsigned char)*p) || v > (UINT64_MAX - 9) / 10)
            return false;
        v = v * 10 + (uint64_t)(*p - '0');
    }
    if (v >= lim)
        return false;
    *n = v;
    return true;
}

static void s_set_cursor(char **dst, const char *src)
{
    free(*dst);
    *dst = src && *src ? s_strdup(src) : NULL;
}

static uint64_t s_expected(int j)
{
    uint64_t M = (uint64_t)C->o.backlog, S = (uint64_t)C->o.senders;
    return M / S + ((uint64_t)j < M % S);
}

/* --------------------------------------------------------- completions */

/* Checks a page's entries for receiver r. Fill messages ("<run>-f<k>")
 * go to the receiver's bitset (drain, counts), sent ones ("<run>-<n>") to
 * the run's (mixed). conv >= 0: every entry must be from that sender.
 * Returns false when a check failed. */
static bool s_check_page(s_op *o, int conv)
{
    bc_op *op = &o->op;
    s_rcv *rv = &C->rcv[o->rcv];
    bool ok = true;
    if (op->nentries > (size_t)op->page || (op->nentries && !op->entries)) {
        C->checks[K_PULL_OVERSIZE]++;
        return false;
    }
    for (size_t i = 0; i < op->nentries; i++) {
        const bc_entry *e = &op->entries[i];
        uint64_t n;
        if (e->content_len != C->o.content) {
            C->checks[K_PULL_CONTENT]++;
            ok = false;
        }
        if (C->work == W_MIXED) {
            if (!s_parse_id(e->msg_id, 0, C->nsend, &n) || !e->sender ||
                strcmp(e->sender, C->suid[n % (uint64_t)C->o.senders]) ||
                ((uint64_t)o->rcv + (uint64_t)C->o.receivers - C->seq_rcv[n]) %
                        (uint64_t)C->o.receivers >=
                    (uint64_t)C->o.group) {
                C->checks[K_PULL_UNEXPECTED]++;
                ok = false;
                continue;
            }
            /* A group send is one msg_id in several inboxes: the bit is
             * per (send, receiver offset). */
            uint64_t bit = n * (uint64_t)C->o.group +
                           ((uint64_t)o->rcv + (uint64_t)C->o.receivers - C->seq_rcv[n]) %
                               (uint64_t)C->o.receivers;
            if (C->seq_seen[bit / 64] >> (bit % 64) & 1) {
                C->checks[K_PULL_DUPLICATE]++;
                ok = false;
            } else {
                C->seq_seen[bit / 64] |= 1ULL << (bit % 64);
                C->msgs_pulled++;
            }
            continue;
        }
        if (!s_parse_id(e->msg_id, 'f', (uint64_t)C->o.backlog, &n) || !e->sender ||
            strcmp(e->sender, C->suid[n % (uint64_t)C->o.senders]) ||
            (conv >= 0 && n % (uint64_t)C->o.senders != (uint64_t)conv)) {
            C->checks[conv >= 0 ? K_CONVERSATION : K_PULL_UNEXPECTED]++;
            ok = false;
            continue;
        }
        if (C->work != W_DRAIN)
            continue;
        if (rv->seen[n / 64] >> (n % 64) & 1) {
            if (rv->retried) {
                C->drain_dups_redelivered++; /* after a retried page: deduped */
            } else {
                C->checks[K_PULL_DUPLICATE]++;
                ok = false;
            }
        } else {
            rv->seen[n / 64] |= 1ULL << (n % 64);
            rv->nseen++;
            C->msgs_pulled++;
        }
    }
    /* An empty page may leave the cursor as it was (NULL). */
    if ((!op->next_cursor && op->nentries) ||
        (op->next_cursor && strlen(op->next_cursor) >= BC_CURSOR_MAX)) {
        C->checks[K_CURSOR]++;
        return false;
    }
    return ok;
}

/* Counts of receiver r against the fill; stores the conversation to pull
 * (the first sender listed) in o->seq, or UINT64_MAX. */
static bool s_check_counts(s_op *o)
{
    bc_op *op = &o->op;
    o->seq = UINT64_MAX;
    if (C->work == W_MIXED) {
        bool ok = op->ncounts == 0 || op->counts;
        for (size_t i = 0; ok && i < op->ncounts; i++) {
            uint64_t j;
            ok = s_parse_id(op->counts[i].sender, 's', (uint64_t)C->o.senders, &j) &&
                 op->counts[i].count > 0;
        }
        if (!ok)
            C->checks[K_COUNTS]++;
        return ok;
    }
    uint64_t want = (uint64_t)(C->o.senders < C->o.backlog ? C->o.senders : C->o.backlog);
    bool ok = op->ncounts == want && (op->ncounts == 0 || op->counts);
    if (++C->gen == 0) {
        memset(C->stamp, 0, (size_t)C->o.senders * sizeof *C->stamp);
        C->gen = 1;
    }
    for (size_t i = 0; ok && i < op->ncounts; i++) {
        uint64_t j;
        ok = s_parse_id(op->counts[i].sender, 's', (uint64_t)C->o.senders, &j) &&
             C->stamp[j] != C->gen && op->counts[i].count == s_expected((int)j);
        if (ok)
            C->stamp[j] = C->gen;
        if (ok && i == 0)
            o->seq = j;
    }
    if (!ok)
        C->checks[K_COUNTS]++;
    return ok;
}

void bc_done(bc_op *op)
{
    s_op *o = op->core;
    int64_t now = s_ns();
    bool ok = op->status == 0;
    C->outstanding--;
    C->t_last_done = now;

    if (o->role == R_FILL) {
        bool stored = ok;
        for (int i = 0; stored && i < op->nreceivers; i++)
            stored = op->stored[i] == BC_STORED || (o->tries && op->stored[i] == BC_DUPLICATE);
        if (!stored) {
            C->fill_errors++;
            if (o->tries >= BC_RETRIES)
                s_fatal("fill: %s failed %d times (%s)", o->msg_id, o->tries + 1,
                        !ok ? (op->status_name ? op->status_name : "error")
                            : op->refused_name ? op->refused_name : "not stored");
            o->tries++;
            o->seq |= 1ULL << 63; /* retry */
        } else {
            C->fill_done += (uint64_t)op->nreceivers;
        }
        goto queue;
    }

    bool good = ok;
    if (!ok) {
        if (C->timed)
            s_error("", op->status_name, op->status);
    } else if (op->kind == BC_SEND) {
        for (int i = 0; i < op->nreceivers; i++)
            if (op->stored[i] == BC_REFUSED) {
                if (good && C->timed)
                    s_error("receipt_", op->refused_name ? op->refused_name : "REFUSED", 0);
                good = false;
            } else if (op->stored[i] == BC_DUPLICATE) {
                if (good)
                    C->checks[K_SEND_DUPLICATE]++;
                good = false;
            } else if (op->stored[i] != BC_STORED) {
                C->checks[K_SEND_SHAPE]++;
                good = false;
            }
        if (good)
            C->msgs_stored += (uint64_t)op->nreceivers;
    } else if (op->kind == BC_PULL) {
        good = s_check_page(o, o->role == R_FOLLOW ? (int)o->seq : -1);
        if (good && o->role == R_FOLLOW) {
            uint64_t want = s_expected((int)o->seq);
            if (want > (uint64_t)op->page)
                want = (uint64_t)op->page;
            if (op->nentries != want) {
                C->checks[K_CONVERSATION]++;
                good = false;
            }
        }
        /* The page was taken (even if a check failed on it): the next
         * pull acks it. */
        if (o->role == R_WORK && op->next_cursor && strlen(op->next_cursor) < BC_CURSOR_MAX)
            s_set_cursor(&C->rcv[o->rcv].cursor, op->next_cursor);
        if (C->work == W_DRAIN) {
            C->drain_pulls++;
            if (good && op->nentries)
                C->drain_pages++;
        }
    } else if (op->kind == BC_COUNTS) {
        good = s_check_counts(o);
    }
    if (op->kind == BC_PULL)
        C->rcv[o->rcv].busy = false;
    o->call_ok = ok;
    o->tries = good ? 0 : o->tries + 1;
    if (C->timed) {
        C->calls++;
        C->kcalls[op->kind]++;
        C->tick_calls++;
        if (good) {
            bool scheduled = C->open && o->role != R_FOLLOW;
            int64_t from = scheduled ? op->intended_ns : op->start_ns;
            C->calls_ok++;
            C->kok[op->kind]++;
            s_hadd(&C->lat, now - from);
            s_hadd(&C->klat[op->kind], now - from);
            if (scheduled)
                s_hadd(&C->lat_start, now - op->start_ns);
        }
    }
    /* The result fields are the driver's: nothing of them may survive. */
    op->entries = NULL;
    op->counts = NULL;
    op->next_cursor = NULL;
    op->status_name = op->refused_name = NULL;
    op->status = (int)good - 1; /* follow() reads it: 0 good, -1 not */

queue:
    op->next = NULL;
    *C->done_tail = o;
    C->done_tail = (s_op **)&o->op.next;
}

/* -------------------------------------------------------------- ops */

static s_op *s_op_new(void)
{
    s_op *o = C->free_ops;
    if (o)
        C->free_ops = (s_op *)o->op.next;
    else
        o = s_calloc(1, sizeof *o);
    char *cur = o->cursor;
    memset(o, 0, sizeof *o);
    o->cursor = cur;
    o->op.core = o;
    return o;
}

static void s_op_free(s_op *o)
{
    free(o->cursor);
    o->cursor = NULL;
    o->op.next = (bc_op *)C->free_ops;
    C->free_ops = o;
}

/* Clears the result part before a (re)start. */
static void s_op_reset(s_op *o)
{
    bc_op *op = &o->op;
    op->status = 0;
    op->status_name = op->refused_name = NULL;
    op->entries = NULL;
    op->nentries = 0;
    op->next_cursor = NULL;
    op->counts = NULL;
    op->ncounts = 0;
    for (int i = 0; i < BC_GROUP_MAX; i++)
        op->stored[i] = (bc_stored)-1;
}

static int s_start(s_op *o, int64_t intended)
{
    s_op_reset(o);
    o->op.start_ns = s_ns();
    o->op.intended_ns = intended ? intended : o->op.start_ns;
    if (C->d->start(C->d->self, &o->op)) {
        s_fatal("%s: an op could not be started", C->d->name);
        s_op_free(o);
        return -1;
    }
    C->outstanding++;
    if (C->outstanding > C->outstanding_max)
        C->outstanding_max = C->outstanding;
    if (C->timed)
        C->t_last_start = o->op.start_ns;
    return 0;
}

static void s_make_pull(s_op *o, int r, int conv)
{
    bc_op *op = &o->op;
    op->kind = BC_PULL;
    o->rcv = r;
    op->receivers[0] = C->ruid[r];
    op->nreceivers = 1;
    op->sender = conv >= 0 ? C->suid[conv] : NULL;
    s_set_cursor(&o->cursor, conv >= 0 ? NULL : C->rcv[r].cursor);
    op->cursor = o->cursor ? o->cursor : "";
    op->page = C->o.page;
    if (conv < 0)
        C->rcv[r].busy = true;
}

static int s_pick_rcv(void)
{
    if (C->o.random)
        return (int)(s_rand() % (uint64_t)C->o.receivers);
    return (int)(C->rr++ % (uint64_t)C->o.receivers);
}

static void s_grow_seq(uint64_t n)
{
    if (n < C->seq_cap)
        return;
    uint64_t cap = C->seq_cap ? C->seq_cap * 2 : 65536;
    while (cap <= n)
        cap *= 2;
    uint32_t *r = realloc(C->seq_rcv, cap * sizeof *r);
    uint64_t words = (cap * (uint64_t)C->o.group + 63) / 64;
    uint64_t *s = r ? realloc(C->seq_seen, words * sizeof *s) : NULL;
    if (!r || !s) {
        fprintf(stderr, "bench: out of memory\n");
        exit(1);
    }
    uint64_t old = C->seq_cap ? (C->seq_cap * (uint64_t)C->o.group + 63) / 64 : 0;
    memset(s + old, 0, (words - old) * sizeof *s);
    C->seq_rcv = r;
    C->seq_seen = s;
    C->seq_cap = cap;
}

static void s_make_send(s_op *o)
{
    bc_op *op = &o->op;
    uint64_t n = C->nsend++;
    int K = C->o.group, R = C->o.receivers;
    int base = C->o.random ? (int)(s_rand() % (uint64_t)R)
                           : (int)((n * (uint64_t)K) % (uint64_t)R);
    op->kind = BC_SEND;
    o->seq = n;
    o->rcv = base;
    for (int i = 0; i < K; i++)
        op->receivers[i] = C->ruid[(base + i) % R];
    op->nreceivers = K;
    op->sender = C->suid[C->o.random ? s_rand() % (uint64_t)C->o.senders
                                     : n % (uint64_t)C->o.senders];
    if (C->work == W_MIXED) {
        /* The sender of send n is n % S, so a pull can check it. */
        op->sender = C->suid[n % (uint64_t)C->o.senders];
        s_grow_seq(n);
        C->seq_rcv[n] = (uint32_t)base;
    }
    snprintf(o->msg_id, sizeof o->msg_id, "%s-%" PRIu64, C->o.run_id, n);
    op->msg_id = o->msg_id;
    op->content = C->content;
    op->content_len = C->o.content;
}

/* make(): fills a fresh op; false when nothing is to be started now. */
static bool s_make(s_op *o)
{
    o->role = R_WORK;
    switch (C->work) {
    case W_SEND:
        s_make_send(o);
        return true;
    case W_NOOP:
        o->op.kind = BC_NOOP;
        return true;
    case W_COUNTS: {
        int r = s_pick_rcv();
        o->op.kind = BC_COUNTS;
        o->rcv = r;
        o->op.receivers[0] = C->ruid[r];
        o->op.nreceivers = 1;
        return true;
    }
    case W_DRAIN:
        if (C->next_rcv >= C->o.receivers)
            return false;
        s_make_pull(o, C->next_rcv++, -1);
        return true;
    case W_MIXED: {
        int64_t w = (int64_t)(s_rand() % (uint64_t)C->mix_total);
        bc_kind k = BC_SEND;
        for (int i = 0; i < BC_KINDS; i++) {
            if (w < C->mix[i]) {
                k = (bc_kind)i;
                break;
            }
            w -= C->mix[i];
        }
        if (k == BC_PULL) {
            /* One pull per inbox at a time: two with the same cursor would
             * return the same page. */
            int R = C->o.receivers, r = s_pick_rcv();
            for (int i = 0; i < R && C->rcv[r].busy; i++)
                r = (r + 1) % R;
            if (C->rcv[r].busy) {
                C->mix_pull_as_send++;
                k = BC_SEND;
            } else {
                s_make_pull(o, r, -1);
                return true;
            }
        }
        if (k == BC_SEND) {
            s_make_send(o);
        } else if (k == BC_COUNTS) {
            int r = s_pick_rcv();
            o->op.kind = BC_COUNTS;
            o->rcv = r;
            o->op.receivers[0] = C->ruid[r];
            o->op.nreceivers = 1;
        } else {
            o->op.kind = BC_NOOP;
        }
        return true;
    }
    default:
        return false;
    }
}

/* follow(): what a completed op becomes: true to start it again as is
 * (refilled), false to free it. */
static bool s_follow(s_op *o)
{
    bc_op *op = &o->op;
    bool good = op->status == 0;
    if (C->work == W_COUNTS && op->kind == BC_COUNTS && good && o->seq != UINT64_MAX) {
        o->role = R_FOLLOW;
        s_make_pull(o, o->rcv, (int)o->seq);
        return true;
    }
    if (C->work == W_DRAIN && op->kind == BC_PULL) {
        s_rcv *rv = &C->rcv[o->rcv];
        if (o->call_ok) {
            rv->retries = 0;
            if (op->nentries == 0) {
                return false; /* the empty page acked the last one */
            }
        } else if (++rv->retries > BC_RETRIES) {
            C->checks[K_DRAIN_GAVE_UP]++;
            return false;
        } else {
            rv->retried = true; /* the same cursor again */
        }
        s_make_pull(o, o->rcv, -1);
        return true;
    }
    return false;
}

/* ------------------------------------------------------------ the fill */

/* Every receiver gets --backlog messages "<run>-f<k>", message k from
 * sender k % S, sent as group sends of up to BC_GROUP_MAX receivers (the
 * same msg_id in every inbox of the group). */
static bool s_make_fill(s_op *o)
{
    if (C->fill_k >= (uint64_t)C->o.backlog)
        return false;
    bc_op *op = &o->op;
    int G = C->fill_group, R = C->o.receivers;
    int base = (int)C->fill_b * G;
    o->role = R_FILL;
    o->seq = C->fill_k;
    o->rcv = base;
    op->kind = BC_SEND;
    op->nreceivers = base + G <= R ? G : R - base;
    for (int i = 0; i < op->nreceivers; i++)
        op->receivers[i] = C->ruid[base + i];
    op->sender = C->suid[C->fill_k % (uint64_t)C->o.senders];
    snprintf(o->msg_id, sizeof o->msg_id, "%s-f%" PRIu64, C->o.run_id, C->fill_k);
    op->msg_id = o->msg_id;
    op->content = C->content;
    op->content_len = C->o.content;
    if (++C->fill_b == C->fill_blocks) {
        C->fill_b = 0;
        C->fill_k++;
    }
    return true;
}

/* ------------------------------------------------------------- the loop */

typedef enum { P_FILL, P_CLOSED, P_OPEN, P_DRAIN } s_pace;

static void s_progress(int64_t now, const char *what)
{
    if (!C->tty || now < C->next_tick)
        return;
    double el = (double)(now - C->t0) / 1e9;
    if (!strcmp(what, "fill"))
        fprintf(stderr, "\rbench: fill %" PRIu64 "/%" PRIu64 " messages   ", C->fill_done,
                C->fill_msgs);
    else
        fprintf(stderr,
                "\rbench: %s %5.1f s  %" PRIu64 " calls  %" PRIu64 "/s  errors %" PRIu64
                "  outstanding %d   ",
                what, el, C->calls, C->tick_calls, C->errors, C->outstanding);
    C->tick_calls = 0;
    C->progressed = true;
    C->next_tick = now + 1000000000LL;
}

/* Runs one phase until its work is done and nothing is outstanding.
 * Returns 0, or -1 on a fatal error (C->why). */
static int s_loop(s_pace pace, const char *what)
{
    const bc_opts *o = &C->o;
    int cap = pace == P_FILL ? BC_FILL_INFLIGHT
              : pace == P_OPEN ? o->max_outstanding
              : pace == P_DRAIN ? o->receivers
                                : o->inflight;
    if (C->d->max_outstanding > 0 && cap > C->d->max_outstanding)
        cap = C->d->max_outstanding;
    C->timed = pace != P_FILL;
    C->open = pace == P_OPEN;
    C->outstanding_max = 0;
    C->scheduled = 0;
    C->t0 = s_ns() + (pace == P_OPEN ? 1000000 : 0);
    C->next_tick = C->t0 + 1000000000LL;
    int64_t stop = 0, bound = 0;
    double period = pace == P_OPEN ? 1e9 / o->rate : 0;
    uint64_t total = 0, n = 0, held_seq = UINT64_MAX;
    if (pace == P_OPEN) {
        total = o->count ? o->count : (uint64_t)(o->rate * o->seconds + 0.5);
        stop = C->t0 + (int64_t)((2.0 * (double)total / o->rate + 5.0) * 1e9);
    } else if (pace == P_CLOSED) {
        stop = o->count ? 0 : C->t0 + (int64_t)(o->seconds * 1e9);
    } else if (pace == P_DRAIN) {
        bound = C->t0 + (int64_t)((o->seconds_set ? o->seconds : BC_DRAIN_BOUND_S) * 1e9);
    }
    bool starting = true;
    int64_t tail_until = 0;
    for (;;) {
        int64_t now = s_ns();
        /* Completions: continue them or free them. */
        while (C->done_head) {
            s_op *d = C->done_head;
            C->done_head = (s_op *)d->op.next;
            if (!C->done_head)
                C->done_tail = &C->done_head;
            bool again = false;
            if (!C->fatal) {
                if (d->role == R_FILL)
                    again = d->seq >> 63;
                else
                    again = s_follow(d);
            }
            if (d->role == R_FILL && again) {
                d->seq &= ~(1ULL << 63);
                s_op_reset(d);
            }
            if (again)
                s_start(d, 0);
            else
                s_op_free(d);
        }
        if (C->fatal)
            starting = false;
        if (pace == P_DRAIN && now >= bound && starting) {
            s_fatal("drain: not finished after %.0f s", (double)(bound - C->t0) / 1e9);
            starting = false;
        }
        /* New ops. */
        bool capped = false;
        if (starting && pace == P_OPEN) {
            if (n < total && now >= stop) {
                C->not_started = total - n;
                total = n;
            }
            while (n < total) {
                int64_t due = C->t0 + (int64_t)((double)n * period);
                if (due > now)
                    break;
                if (C->outstanding >= cap) {
                    capped = true;
                    if (held_seq != n) {
                        held_seq = n;
                        C->held++;
                    }
                    break;
                }
                s_op *x = s_op_new();
                s_make(x);
                if (s_start(x, due))
                    break;
                s_hadd(&C->lag, x->op.start_ns - due);
                n++;
            }
            if (n == total)
                starting = false;
        } else if (starting) {
            if (pace == P_CLOSED &&
                ((o->count && C->scheduled >= o->count) || (!o->count && now >= stop)))
                starting = false;
            while (starting && C->outstanding < cap) {
                if (pace == P_CLOSED && o->count && C->scheduled >= o->count) {
                    starting = false;
                    break;
                }
                s_op *x = s_op_new();
                if (!(pace == P_FILL ? s_make_fill(x) : s_make(x))) {
                    s_op_free(x);
                    if (pace != P_CLOSED)
                        starting = false; /* the rest are continuations */
                    break;
                }
                if (s_start(x, 0))
                    break;
                C->scheduled++;
            }
        }
        if (!starting && C->outstanding == 0 && !C->done_head)
            break;
        if (!starting && !tail_until)
            tail_until = now + (int64_t)o->timeout_ms * 1000000 + BC_TAIL_NS;
        if (tail_until && now >= tail_until && pace != P_DRAIN && pace != P_FILL) {
            s_fatal("%d calls still outstanding %d ms after the last start", C->outstanding,
                    o->timeout_ms + (int)(BC_TAIL_NS / 1000000));
            break;
        }
        s_progress(now, what);
        /* Wait for a completion, the next due op or the next tick. */
        int64_t wake = now + 1000000000LL;
        if (C->tty && C->next_tick < wake)
            wake = C->next_tick;
        if (starting && pace == P_OPEN && !capped) {
            int64_t due = C->t0 + (int64_t)((double)n * period);
            if (due < wake)
                wake = due;
        }
        if (starting && pace == P_CLOSED && !o->count && stop < wake)
            wake = stop;
        if (tail_until && tail_until < wake)
            wake = tail_until;
        if (pace == P_DRAIN && bound < wake)
            wake = bound;
        if (C->done_head)
            wake = now;
        if (C->d->poll(C->d->self, wake)) {
            s_fatal("%s: poll failed", C->d->name);
            starting = false;
            if (C->outstanding)
                break;
        }
    }
    if (pace == P_OPEN)
        C->scheduled = n;
    if (C->progressed) {
        fputc('\n', stderr);
        C->progressed = false;
    }
    return C->fatal ? -1 : 0;
}

/* --------------------------------------------------------------- usage */

static void s_usage(FILE *f, const char *prog, const char *extra)
{
    fprintf(f,
            "usage: %s [driver flags] --workload send|drain|counts|noop|mixed%s\n"
            "  pacing:  --inflight N (closed loop, default 16) | --rate R (open loop, calls/s)\n"
            "           --max-outstanding N (open loop cap, 4096)  --timeout-ms MS (10000)\n"
            "  length:  --seconds S (default 5; drain: its bound, 600) | --count N (calls)\n"
            "  users:   --receivers R (send, mixed 1000; drain, counts 100)\n"
            "           --senders S (10)  --pick rr|random (rr)  --run-id ID\n"
            "  payload: --content BYTES (100)  --group K (1)  --page P (100)\n"
            "           --backlog M (drain 1000, counts 100)  --mix send=8,pull=1,counts=1\n"
            "  report:  --server-pid P[,P...]  --json\n",
            prog, extra && *extra ? "|..." : "");
    if (extra && *extra)
        fprintf(f, "%s", extra);
}

static int s_num(const char *flag, const char *v, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    if (!v) {
        fprintf(stderr, "bench: %s needs a value\n", flag);
        return -1;
    }
    double x = strtod(v, &end);
    if (errno || end == v || *end || !(x >= lo && x <= hi)) {
        fprintf(stderr, "bench: %s: '%s' is not a number in %g..%g\n", flag, v ? v : "",
                lo, hi);
        return -1;
    }
    *out = x;
    return 0;
}

static int s_parse_mix(s_core *c, const char *v)
{
    static const char *const names[BC_KINDS] = {"send", "pull", "counts", "noop"};
    char buf[256];
    snprintf(buf, sizeof buf, "%s", v);
    memset(c->mix, 0, sizeof c->mix);
    c->mix_total = 0;
    char *save = NULL;
    for (char *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(t, '=');
        int k = -1;
        double w;
        if (eq) {
            *eq = 0;
            for (int i = 0; i < BC_KINDS; i++)
                if (!strcmp(t, names[i]))
                    k = i;
        }
        if (k < 0 || s_num("--mix", eq + 1, 0, 1000000, &w))
            return -1;
        c->mix[k] = (int)w;
        c->mix_total += (int)w;
    }
    return c->mix_total > 0 ? 0 : -1;
}

static int s_parse(s_core *c, int argc, char **argv, bc_extra_fn extra, void *ctx,
                   const char *usage_extra)
{
    bc_opts *o = &c->o;
    double x;
    const char *pids = NULL, *pick = NULL;
    for (int i = 1; i < argc; i++) {
        char flag[64];
        const char *a = argv[i], *v = NULL;
        const char *eq = strncmp(a, "--", 2) ? NULL : strchr(a, '=');
        if (eq && (size_t)(eq - a) < sizeof flag) {
            memcpy(flag, a, (size_t)(eq - a));
            flag[eq - a] = 0;
            a = flag;
            v = eq + 1;
        }
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            s_usage(stdout, argv[0], usage_extra);
            return 1;
        }
        if (!strcmp(a, "--json")) {
            o->json = true;
            continue;
        }
        bool inline_v = v != NULL;
        if (!v)
            v = i + 1 < argc ? argv[i + 1] : NULL;
        int took = 1;
#define NUM(lo, hi) (s_num(a, v, (lo), (hi), &x) ? -1 : 0)
        if (!strcmp(a, "--workload"))
            o->workload = v;
        else if (!strcmp(a, "--inflight"))
            took = NUM(1, 1000000) ? -1 : (o->inflight = (int)x, c->inflight_set = true, 1);
        else if (!strcmp(a, "--rate"))
            took = NUM(0.001, 1e8) ? -1 : (o->rate = x, c->rate_set = true, 1);
        else if (!strcmp(a, "--max-outstanding"))
            took = NUM(1, 1000000) ? -1 : (o->max_outstanding = (int)x, 1);
        else if (!strcmp(a, "--timeout-ms"))
            took = NUM(1, 3600000) ? -1 : (o->timeout_ms = (int)x, 1);
        else if (!strcmp(a, "--seconds"))
            took = NUM(0.001, 86400 * 7) ? -1 : (o->seconds = x, o->seconds_set = true, 1);
        else if (!strcmp(a, "--count"))
            took = NUM(1, 1e12) ? -1 : (o->count = (uint64_t)x, c->count_set = true, 1);
        else if (!strcmp(a, "--receivers"))
            took = NUM(1, 10000000) ? -1 : (o->receivers = (int)x, c->receivers_set = true, 1);
        else if (!strcmp(a, "--senders"))
            took = NUM(1, 10000000) ? -1 : (o->senders = (int)x, 1);
        else if (!strcmp(a, "--content"))
            took = NUM(0, BC_CONTENT_MAX) ? -1 : (o->content = (size_t)x, 1);
        else if (!strcmp(a, "--group"))
            took = NUM(1, BC_GROUP_MAX) ? -1 : (o->group = (int)x, 1);
        else if (!strcmp(a, "--page"))
            took = NUM(1, BC_PAGE_MAX) ? -1 : (o->page = (int)x, 1);
        else if (!strcmp(a, "--backlog"))
            took = NUM(1, 100000000) ? -1 : (o->backlog = (int)x, c->backlog_set = true, 1);
        else if (!strcmp(a, "--pick"))
            pick = v;
        else if (!strcmp(a, "--mix"))
            took = v && !s_parse_mix(c, v) ? 1 : (fprintf(stderr, "bench: --mix: '%s' is not "
                                                          "kind=weight,... (send, pull, counts, "
                                                          "noop)\n", v ? v : ""), -1);
        else if (!strcmp(a, "--server-pid") || !strcmp(a, "--server-pids"))
            pids = v;
        else if (!strcmp(a, "--run-id"))
            o->run_id = v;
        else
            took = extra ? extra(a, v, ctx) : 0;
#undef NUM
        if (took == 0) {
            fprintf(stderr, "bench: unknown flag %s\n", argv[i]);
            s_usage(stderr, argv[0], usage_extra);
            return 2;
        }
        if (took < 0)
            return 2;
        if (!v) {
            fprintf(stderr, "bench: %s needs a value\n", a);
            return 2;
        }
        if (!inline_v)
            i++;
    }
    if (pick && strcmp(pick, "rr") && strcmp(pick, "random")) {
        fprintf(stderr, "bench: --pick is rr or random\n");
        return 2;
    }
    o->random = pick && !strcmp(pick, "random");
    if (pids) {
        char buf[512];
        snprintf(buf, sizeof buf, "%s", pids);
        char *save = NULL;
        for (char *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
            if (o->npids == BC_MAX_PIDS) {
                fprintf(stderr, "bench: at most %d --server-pid\n", BC_MAX_PIDS);
                return 2;
            }
            if (s_num("--server-pid", t, 1, INT_MAX, &x))
                return 2;
            c->pids[o->npids++] = (int)x;
        }
        o->pids = c->pids;
    }
    return 0;
}

/* Checks the flags against the workload and fills in the defaults. */
static int s_validate(s_core *c)
{
    bc_opts *o = &c->o;
    static const char *const names[] = {"send", "drain", "counts", "noop", "mixed"};
    c->work = W_CUSTOM;
    for (int i = 0; i < 5; i++)
        if (!strcmp(o->workload, names[i]))
            c->work = (s_work)i;
    bool small = c->work == W_DRAIN || c->work == W_COUNTS;
    if (!c->receivers_set)
        o->receivers = small ? 100 : 1000;
    if (!c->backlog_set)
        o->backlog = c->work == W_DRAIN ? 1000 : 100;
    if (c->rate_set && c->inflight_set) {
        fprintf(stderr, "bench: --inflight (closed loop) or --rate (open loop), not both\n");
        return 2;
    }
    if (c->count_set && o->seconds_set && c->work != W_CUSTOM) {
        fprintf(stderr, "bench: --seconds or --count, not both\n");
        return 2;
    }
    if (c->work == W_DRAIN && (c->rate_set || c->count_set)) {
        fprintf(stderr, "bench: drain runs every receiver's pulls at once, until empty: "
                        "no --rate, no --count (--seconds bounds it)\n");
        return 2;
    }
    if (o->group > o->receivers) {
        fprintf(stderr, "bench: --group %d is more than --receivers %d\n", o->group,
                o->receivers);
        return 2;
    }
    if (small && (uint64_t)o->receivers * (uint64_t)o->backlog > BC_BITS_MAX) {
        fprintf(stderr, "bench: --receivers x --backlog is at most %llu\n",
                (unsigned long long)BC_BITS_MAX);
        return 2;
    }
    if (c->work == W_MIXED && !c->mix_total)
        s_parse_mix(c, "send=8,pull=1,counts=1");
    if (o->run_id) {
        size_t n = strlen(o->run_id);
        bool good = n >= 1 && n <= BC_RUN_ID_MAX;
        for (size_t i = 0; good && i < n; i++)
            good = isalnum((unsigned char)o->run_id[i]) || strchr("_.", o->run_id[i]);
        if (!good) {
            fprintf(stderr, "bench: --run-id: 1..%d characters of [A-Za-z0-9_.]\n",
                    BC_RUN_ID_MAX);
            return 2;
        }
    }
    if (!c->rate_set)
        o->rate = 0;
    return 0;
}

/* ------------------------------------------------------------- report */

static void s_put_head(s_core *c)
{
    const bc_opts *o = &c->o;
    bc_put_str("driver", c->d->name);
    bc_put_str("workload", o->workload);
    bc_put_str("run_id", o->run_id);
    if (c->work == W_CUSTOM)
        return;
    bc_put_str("loop", o->rate > 0 ? "open" : "closed");
    if (o->rate > 0) {
        bc_put_double("rate_target", o->rate, 0);
        bc_put_int("max_outstanding", o->max_outstanding);
    } else if (c->work != W_DRAIN) {
        bc_put_int("inflight", o->inflight);
    }
    if (c->work != W_DRAIN) {
        if (o->count)
            bc_put_int("count_target", (int64_t)o->count);
        else
            bc_put_double("seconds_target", o->seconds, 1);
    }
    if (c->work != W_NOOP) {
        bc_put_int("receivers", o->receivers);
        bc_put_int("senders", o->senders);
        bc_put_str("pick", o->random ? "random" : "rr");
    }
    if (c->work == W_SEND || c->work == W_MIXED || c->work == W_DRAIN || c->work == W_COUNTS)
        bc_put_int("content_bytes", (int64_t)o->content);
    if (c->work == W_SEND || c->work == W_MIXED)
        bc_put_int("group", o->group);
    if (c->work != W_SEND && c->work != W_NOOP)
        bc_put_int("page", o->page);
    if (c->work == W_DRAIN || c->work == W_COUNTS)
        bc_put_int("backlog", o->backlog);
    if (c->work == W_MIXED) {
        char m[128];
        snprintf(m, sizeof m, "send=%d,pull=%d,counts=%d,noop=%d", c->mix[BC_SEND],
                 c->mix[BC_PULL], c->mix[BC_COUNTS], c->mix[BC_NOOP]);
        bc_put_str("mix", m);
    }
}

static void s_put_figures(s_core *c, int64_t cpu_ns, int64_t ctx, bool cpu_ok, int nprocs,
                          int64_t gen_ns)
{
    static const char *const kind[BC_KINDS] = {"send", "pull", "counts", "noop"};
    const bc_opts *o = &c->o;
    double el = (double)(c->t_last_done > c->t0 ? c->t_last_done - c->t0 : 0) / 1e9;
    bc_put_double("elapsed_s", el, 3);
    bc_put_int("calls", (int64_t)c->calls);
    bc_put_int("calls_ok", (int64_t)c->calls_ok);
    bc_put_double("calls_per_s", el > 0 ? (double)c->calls_ok / el : 0, 0);
    if (c->work == W_SEND || c->work == W_MIXED) {
        bc_put_int("msgs_stored", (int64_t)c->msgs_stored);
        bc_put_double("msgs_stored_per_s", el > 0 ? (double)c->msgs_stored / el : 0, 0);
    }
    if (c->work == W_MIXED)
        bc_put_int("msgs_pulled", (int64_t)c->msgs_pulled);
    if (c->work == W_DRAIN) {
        uint64_t want = (uint64_t)o->receivers * (uint64_t)o->backlog;
        bc_put_int("drain_msgs_expected", (int64_t)want);
        bc_put_int("drain_msgs_seen", (int64_t)c->msgs_pulled);
        bc_put_double("drain_msgs_per_s", el > 0 ? (double)c->msgs_pulled / el : 0, 0);
        bc_put_int("drain_pages", (int64_t)c->drain_pages);
        bc_put_int("drain_pulls", (int64_t)c->drain_pulls);
        bc_put_double("drain_pages_per_s", el > 0 ? (double)c->drain_pages / el : 0, 0);
        bc_put_int("drain_missing", (int64_t)c->checks[K_DRAIN_MISSING]);
        bc_put_int("drain_duplicates", (int64_t)c->checks[K_PULL_DUPLICATE]);
        bc_put_int("drain_redelivered", (int64_t)c->drain_dups_redelivered);
    }
    s_put_hist("latency", &c->lat);
    int kinds = 0;
    for (int k = 0; k < BC_KINDS; k++)
        kinds += c->kcalls[k] > 0;
    if (kinds > 1)
        for (int k = 0; k < BC_KINDS; k++) {
            if (!c->kcalls[k])
                continue;
            char key[64];
            snprintf(key, sizeof key, "%s_calls", kind[k]);
            bc_put_int(key, (int64_t)c->kcalls[k]);
            snprintf(key, sizeof key, "%s_latency", kind[k]);
            s_put_hist(key, &c->klat[k]);
        }
    if (c->work == W_MIXED)
        bc_put_int("mix_pull_as_send", (int64_t)c->mix_pull_as_send);
    if (o->rate > 0) {
        double period = 1e9 / o->rate;
        double secs = (double)(c->t_last_start - c->t0 + (int64_t)period) / 1e9;
        double achieved = secs > 0 ? (double)c->scheduled / secs : 0;
        bc_put_int("calls_scheduled", (int64_t)c->scheduled);
        bc_put_int("not_started", (int64_t)c->not_started);
        bc_put_double("rate_achieved", achieved, 0);
        bc_put_int("held_by_cap", (int64_t)c->held);
        bc_put_int("saturated", c->not_started > 0 || c->held > 0 || achieved < 0.95 * o->rate);
        bc_put_double("start_lag_p50_us", (double)s_hpct(&c->lag, 50) / 1e3, 1);
        bc_put_double("start_lag_p99_us", (double)s_hpct(&c->lag, 99) / 1e3, 1);
        bc_put_double("start_lag_max_us", (double)c->lag.max / 1e3, 1);
        /* The server's share: latency_* counts from the intended time and
         * so includes the generator's own start lag; this does not. */
        s_put_hist("latency_from_start", &c->lat_start);
    }
    bc_put_int("outstanding_max", c->outstanding_max);
    bc_put_int("errors", (int64_t)c->errors);
    for (int i = 0; i < c->nerrs; i++) {
        char key[64];
        snprintf(key, sizeof key, "error_%s", c->errs[i].name);
        bc_put_int(key, (int64_t)c->errs[i].n);
    }
    uint64_t checks = 0;
    for (int k = 0; k < K_COUNT; k++)
        checks += c->checks[k];
    bc_put_int("checks_failed", (int64_t)checks);
    for (int k = 0; k < K_COUNT; k++)
        if (c->checks[k]) {
            char key[64];
            snprintf(key, sizeof key, "check_%s", s_check_names[k]);
            bc_put_int(key, (int64_t)c->checks[k]);
        }
    if (o->npids) {
        char list[256] = "";
        for (int i = 0; i < o->npids; i++)
            snprintf(list + strlen(list), sizeof list - strlen(list), "%s%d", i ? "," : "",
                     o->pids[i]);
        bc_put_str("server_pids", list);
        if (cpu_ok) {
            bc_put_int("server_procs", nprocs);
            bc_put_double("server_cpu_ms", (double)cpu_ns / 1e6, 0);
            bc_put_double("server_cpu_us_per_call",
                          c->calls_ok ? (double)cpu_ns / 1e3 / (double)c->calls_ok : 0, 1);
            bc_put_double("server_ctx_switches_per_call",
                          c->calls_ok ? (double)ctx / (double)c->calls_ok : 0, 2);
            if (c->work == W_DRAIN)
                bc_put_double("server_cpu_us_per_msg",
                              c->msgs_pulled ? (double)cpu_ns / 1e3 / (double)c->msgs_pulled : 0,
                              2);
        }
    }
    bc_put_double("gen_cpu_ms", (double)gen_ns / 1e6, 0);
    bc_put_double("gen_cpu_us_per_call",
                  c->calls ? (double)gen_ns / 1e3 / (double)c->calls : 0, 1);
}

/* ---------------------------------------------------------------- main */

static int s_run(s_core *c)
{
    bc_opts *o = &c->o;
    if (c->work == W_DRAIN || c->work == W_COUNTS) {
        uint64_t words = ((uint64_t)o->backlog + 63) / 64;
        for (int r = 0; c->work == W_DRAIN && r < o->receivers; r++)
            c->rcv[r].seen = s_calloc(words, sizeof(uint64_t));
        c->fill_group = o->receivers < BC_GROUP_MAX ? o->receivers : BC_GROUP_MAX;
        c->fill_blocks = ((uint64_t)o->receivers + (uint64_t)c->fill_group - 1) /
                         (uint64_t)c->fill_group;
        c->fill_msgs = (uint64_t)o->receivers * (uint64_t)o->backlog;
        int64_t f0 = s_ns();
        if (s_loop(P_FILL, "fill"))
            return -1;
        bc_put_int("fill_msgs", (int64_t)c->fill_done);
        bc_put_double("fill_s", (double)(s_ns() - f0) / 1e9, 3);
        if (c->fill_errors)
            bc_put_int("fill_retried", (int64_t)c->fill_errors);
    }
    int64_t cpu0 = 0, cpu1 = 0, ctx0 = 0, ctx1 = 0, gen0, gen1;
    int nprocs = 0;
    bool cpu_ok = o->npids > 0;
    if (cpu_ok && s_tree_cpu(o->pids, o->npids, &cpu0, &ctx0, &nprocs)) {
        s_fatal("--server-pid: no such process");
        return -1;
    }
    bc_threads *thr0 = cpu_ok ? bc_threads_read(o->pids, o->npids) : NULL;
    gen0 = bc_self_cpu_ns();
    s_pace pace = c->work == W_DRAIN ? P_DRAIN : o->rate > 0 ? P_OPEN : P_CLOSED;
    s_loop(pace, o->workload);
    gen1 = bc_self_cpu_ns();
    bc_threads *thr1 = cpu_ok ? bc_threads_read(o->pids, o->npids) : NULL;
    if (cpu_ok && s_tree_cpu(o->pids, o->npids, &cpu1, &ctx1, &nprocs))
        cpu_ok = false;
    if (c->work == W_DRAIN) {
        for (int r = 0; r < o->receivers; r++)
            c->checks[K_DRAIN_MISSING] += (uint64_t)o->backlog - c->rcv[r].nseen;
    }
    s_put_figures(c, cpu1 - cpu0, ctx1 - ctx0, cpu_ok, nprocs, gen1 - gen0);
    if (cpu_ok) /* the servers' own threads by kind (not their children's) */
        bc_threads_put(thr0, thr1, "call", (double)c->calls_ok);
    bc_threads_free(thr0);
    bc_threads_free(thr1);
    return c->fatal ? -1 : 0;
}

int bc_main(int argc, char **argv, bc_driver *d, bc_extra_fn parse_extra, void *ctx,
            const char *usage_extra)
{
    static s_core core;
    s_core *c = &core;
    C = c;
    c->d = d;
    c->done_tail = &c->done_head;
    bc_opts *o = &c->o;
    o->workload = "send";
    o->inflight = 16;
    o->max_outstanding = 4096;
    o->seconds = 5;
    o->senders = 10;
    o->content = 100;
    o->group = 1;
    o->page = 100;
    o->timeout_ms = 10000;
    int rc = s_parse(c, argc, argv, parse_extra, ctx, usage_extra);
    if (rc)
        return rc == 1 ? 0 : rc;
    if ((rc = s_validate(c)))
        return rc;
    char run[BC_RUN_ID_MAX + 1];
    if (!o->run_id) {
        snprintf(run, sizeof run, "b%lx%x", (unsigned long)time(NULL), (unsigned)getpid());
        o->run_id = run;
    }
    c->rng = 0x9E3779B97F4A7C15ULL ^ ((uint64_t)time(NULL) << 20) ^ (uint64_t)getpid();
    c->tty = isatty(STDERR_FILENO);

    if (c->work != W_CUSTOM && c->work != W_NOOP) {
        c->ruid = s_calloc((size_t)o->receivers, sizeof *c->ruid);
        c->suid = s_calloc((size_t)o->senders, sizeof *c->suid);
        c->rcv = s_calloc((size_t)o->receivers, sizeof *c->rcv);
        c->stamp = s_calloc((size_t)o->senders, sizeof *c->stamp);
        for (int i = 0; i < o->receivers; i++)
            snprintf(c->ruid[i], BC_ID_MAX, "%s-r%d", o->run_id, i);
        for (int i = 0; i < o->senders; i++)
            snprintf(c->suid[i], BC_ID_MAX, "%s-s%d", o->run_id, i);
        c->content = s_calloc(1, o->content);
        for (size_t i = 0; i < o->content; i++)
            c->content[i] = (uint8_t)('a' + i % 26);
    }

    s_put_head(c);
    bool opened = false;
    if (d->open(d->self)) {
        s_fatal("%s: could not open (see above)", d->name);
        rc = 1;
    } else {
        opened = true;
        if (c->work == W_CUSTOM) {
            rc = d->custom ? d->custom(d->self, o->workload) : -2;
            if (rc == -2) {
                fprintf(stderr, "bench: unknown workload '%s'\n", o->workload);
                rc = 2;
            }
        } else {
            if (d->report)
                d->report(d->self);
            rc = s_run(c) ? 1 : 0;
            if (d->report) /* again: the run's own figures (a key keeps its place) */
                d->report(d->self);
        }
    }
    if (rc != 2) {
        if (c->work != W_CUSTOM || c->fatal) {
            uint64_t checks = 0;
            for (int k = 0; k < K_COUNT; k++)
                checks += c->checks[k];
            bool ok = !c->fatal && !c->errors && !checks && rc == 0;
            if (c->fatal)
                bc_put_str("error", c->why);
            bc_put_int("ok", ok);
            rc = ok ? 0 : 1;
        }
        bc_print(o->json);
        if (c->fatal)
            fprintf(stderr, "bench: %s\n", c->why);
    } else {
        s_out_clear(); /* usage: no report */
    }
    if (opened && d->close)
        d->close(d->self);
    while (c->free_ops) {
        s_op *x = c->free_ops;
        c->free_ops = (s_op *)x->op.next;
        free(x->cursor);
        free(x);
    }
    if (c->rcv)
        for (int r = 0; r < o->receivers; r++) {
            free(c->rcv[r].cursor);
            free(c->rcv[r].seen);
        }
    free(c->rcv);
    free(c->ruid);
    free(c->suid);
    free(c->stamp);
    free(c->content);
    free(c->seq_rcv);
    free(c->seq_seen);
    C = NULL;
    return rc;
}
