/*
 * test_e2e.c - end-to-end tests: real `imbox` processes on loopback, real
 * gRPC calls (services/client/rpc_client.h), CUnit basic interface.
 *
 * Two fixtures run the same test functions (the global F points at the
 * fixture of the running suite):
 *
 *   serve    one `imbox serve --listen 127.0.0.1:P --data-dir D --shards 4`
 *   cluster  three `imbox shard --index I --count 3 --listen tcp://...` and
 *            one `imbox gateway --listen 127.0.0.1:P --shards tcp://...,...`
 *
 * Tokens come from `imbox token --uid U --ttl 3600 --data-dir DIR` (the last
 * line of its stdout), DIR being where the serving process keeps
 * auth.secret. The binary is $IMBOX_BIN.
 *
 * Hygiene: ports are picked free (bind 127.0.0.1:0, getsockname, close);
 * every fixture lives in a mkdtemp directory (with the processes' logs,
 * shown when a suite fails) that is removed afterwards (set
 * IMBOX_E2E_KEEP=1 to keep it); every process runs in its own process group
 * with PR_SET_PDEATHSIG, and is stopped (SIGTERM, then SIGKILL after a
 * bounded wait) by the suite cleanup, by an atexit handler and by a
 * SIGINT/SIGTERM/SIGHUP handler, so that a failed assertion or an
 * interrupted run leaves nothing running and no directory behind (only a
 * SIGKILL of the test leaves its directories; PDEATHSIG still ends the
 * processes). Readiness is polled (TCP connect for shards,
 * grpc.health.v1 Check for the gRPC port) with a bound, never slept for,
 * and a process that exits early fails the suite at once.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>

#include <CUnit/Basic.h>

#include "im_cunit.h"

#include "rpc_client.h"

#define S_READY_MS 15000  /* a process must be serving within this */
#define S_STOP_MS 10000   /* SIGTERM must end a process within this */
#define S_CALL_MS 10000   /* deadline of one call */
#define S_SEND_MS 30000   /* deadline of a group Send (50 fsync'ed copies) */
#define S_TOKEN_MS 10000  /* `imbox token` must finish within this */
#define S_MAX_PROCS 4
#define S_MAX_TOKENS 128
#define S_NSHARDS 3

extern char **environ;

/* ------------------------------------------------------------- fixtures */

typedef struct s_proc {
    pid_t pid;          /* 0 when not running */
    char name[32];
    char log[PATH_MAX];
} s_proc;

typedef struct s_token {
    char uid[80];
    char *token;
} s_token;

typedef struct s_fixture {
    const char *name;
    bool cluster;
    char root[512];             /* mkdtemp; "" when not created */
    char secret_dir[PATH_MAX];  /* data dir holding auth.secret */
    char addr[64];              /* the gRPC port: serve or gateway */
    int port;
    int shard_port[S_NSHARDS];
    s_proc procs[S_MAX_PROCS];  /* cluster: shards first, gateway last */
    int nprocs;
    s_token tokens[S_MAX_TOKENS];
    int ntokens;
    unsigned failures_at_init;
} s_fixture;

static s_fixture s_serve = {.name = "serve", .cluster = false};
static s_fixture s_cluster = {.name = "cluster", .cluster = true};
static s_fixture *const s_fixtures[] = {&s_serve, &s_cluster};
static s_fixture *F; /* the fixture of the running suite */

static const char *s_bin;
static char **s_env; /* environ without IMBOX_*: flags only from argv */
static bool s_keep;  /* IMBOX_E2E_KEEP set: leave the directories */

static int64_t s_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t s_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void s_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static void s_note(const char *fmt, ...)
{
    va_list ap;
    fputs("\n    # ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
}

/* A port that was free a moment ago. */
static int s_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof sa;
    int port = -1;
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
        getsockname(fd, (struct sockaddr *)&sa, &len) == 0)
        port = ntohs(sa.sin_port);
    close(fd);
    return port;
}

static bool s_tcp_accepts(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa.sin_port = htons((uint16_t)port);
    bool ok = connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
    close(fd);
    return ok;
}

/*
 * Starts IMBOX_BIN with argv (argv[0] included) in a process group of its
 * own, stdout and stderr appended to `log` (NULL: stdout to out_fd and
 * stderr inherited). Only async-signal-safe calls between fork and exec:
 * this process has gRPC threads.
 */
static pid_t s_spawn(char *const argv[], const char *log, int out_fd)
{
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0) {
        setpgid(0, 0);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127); /* the test died before prctl */
        int in = open("/dev/null", O_RDONLY);
        if (in >= 0)
            dup2(in, 0);
        if (log) {
            int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
            if (fd >= 0) {
                dup2(fd, 1);
                dup2(fd, 2);
            }
        } else {
            dup2(out_fd, 1);
        }
        execve(s_bin, argv, s_env);
        static const char msg[] = "test_e2e: execve of IMBOX_BIN failed\n";
        ssize_t w = write(2, msg, sizeof msg - 1);
        (void)w;
        _exit(127);
    }
    if (pid > 0)
        setpgid(pid, pid); /* also here: no race with the first kill */
    return pid;
}

/* Sends sig to the process group of pid (falls back to the pid alone). */
static void s_signal(pid_t pid, int sig)
{
    if (kill(-pid, sig) != 0)
        kill(pid, sig);
}

/*
 * Sends sig and waits up to wait_ms for the process to exit; then SIGKILL.
 * Returns true when it exited within the wait; *status gets its status.
 */
static bool s_stop(s_proc *p, int sig, int wait_ms, int *status)
{
    int st = 0;
    bool in_time = false;
    if (p->pid <= 0)
        return true;
    s_signal(p->pid, sig);
    int64_t end = s_mono_ms() + wait_ms;
    for (;;) {
        pid_t r = waitpid(p->pid, &st, WNOHANG);
        if (r == p->pid || (r < 0 && errno == ECHILD)) {
            in_time = true;
            break;
        }
        if (s_mono_ms() >= end)
            break;
        s_sleep_ms(20);
    }
    if (!in_time) {
        s_signal(p->pid, SIGKILL);
        while (waitpid(p->pid, &st, 0) < 0 && errno == EINTR) {
        }
    }
    kill(-p->pid, SIGKILL); /* anything the process left in its group */
    p->pid = 0;
    if (status)
        *status = st;
    return in_time;
}

/* True (and p->pid cleared, *status set) when p has exited. */
static bool s_exited(s_proc *p, int *status)
{
    if (p->pid <= 0)
        return true;
    pid_t r = waitpid(p->pid, status, WNOHANG);
    if (r == p->pid || (r < 0 && errno == ECHILD)) {
        kill(-p->pid, SIGKILL);
        p->pid = 0;
        return true;
    }
    return false;
}

static void s_describe_status(int st, char *buf, size_t cap)
{
    if (WIFEXITED(st))
        snprintf(buf, cap, "exit status %d", WEXITSTATUS(st));
    else if (WIFSIGNALED(st))
        snprintf(buf, cap, "killed by signal %d", WTERMSIG(st));
    else
        snprintf(buf, cap, "status 0x%x", st);
}

/* Prints the last lines of every log of f to stderr. */
static void s_dump_logs(const s_fixture *f)
{
    for (int i = 0; i < f->nprocs; i++) {
        const s_proc *p = &f->procs[i];
        FILE *in = fopen(p->log, "r");
        if (!in)
            continue;
        static char ring[40][512];
        int n = 0;
        while (fgets(ring[n % 40], sizeof ring[0], in))
            n++;
        fclose(in);
        fprintf(stderr, "\n    ---- %s: last lines of %s ----\n", f->name,
                p->log);
        for (int k = n > 40 ? n - 40 : 0; k < n; k++)
            fprintf(stderr, "    | %s", ring[k % 40]);
    }
}

static int s_rm_entry(const char *path, const struct stat *sb, int flag,
                      struct FTW *ftw)
{
    (void)sb;
    (void)ftw;
    if (flag == FTW_DP)
        rmdir(path);
    else
        unlink(path);
    return 0;
}

/* Kills everything of f and removes its directory. Idempotent. */
static void s_fixture_teardown(s_fixture *f, int sig, int wait_ms)
{
    for (int i = f->nprocs - 1; i >= 0; i--)
        s_stop(&f->procs[i], sig, wait_ms, NULL);
    for (int i = 0; i < f->ntokens; i++) {
        free(f->tokens[i].token);
        f->tokens[i].token = NULL;
    }
    f->ntokens = 0;
    if (f->root[0]) {
        if (s_keep)
            fprintf(stderr, "\n    # kept %s\n", f->root);
        else
            nftw(f->root, s_rm_entry, 16, FTW_DEPTH | FTW_PHYS);
        f->root[0] = '\0';
    }
}

static void s_atexit(void)
{
    for (size_t i = 0; i < sizeof s_fixtures / sizeof s_fixtures[0]; i++)
        s_fixture_teardown(s_fixtures[i], SIGKILL, 2000);
}

/*
 * Only async-signal-safe work (kill, fork, execve, waitpid): kill the
 * groups, remove the directories with rm -rf, then die of the signal.
 */
static void s_on_signal(int sig)
{
    for (size_t i = 0; i < sizeof s_fixtures / sizeof s_fixtures[0]; i++) {
        s_fixture *f = s_fixtures[i];
        for (int k = 0; k < f->nprocs; k++)
            if (f->procs[k].pid > 0)
                kill(-f->procs[k].pid, SIGKILL);
        if (f->root[0] && !s_keep) {
            char rm[] = "rm", rf[] = "-rf", dd[] = "--";
            char *argv[] = {rm, rf, dd, f->root, NULL};
            pid_t pid = fork();
            if (pid == 0) {
                execve("/bin/rm", argv, s_env);
                _exit(127);
            }
            if (pid > 0)
                while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
                }
        }
    }
    signal(sig, SIG_DFL);
    raise(sig);
}

/* Starts one process of f and records it. */
static bool s_launch(s_fixture *f, int slot, const char *name,
                     char *const argv[])
{
    s_proc *p = &f->procs[slot];
    snprintf(p->name, sizeof p->name, "%s", name);
    snprintf(p->log, sizeof p->log, "%s/%s.log", f->root, name);
    p->pid = s_spawn(argv, p->log, -1);
    if (p->pid < 0) {
        p->pid = 0;
        s_note("%s: fork: %s", name, strerror(errno));
        return false;
    }
    return true;
}

/* Fails (with a note) when a process of f has exited. */
static bool s_all_alive(s_fixture *f)
{
    for (int i = 0; i < f->nprocs; i++) {
        int st;
        if (f->procs[i].pid > 0 && s_exited(&f->procs[i], &st)) {
            char why[64];
            s_describe_status(st, why, sizeof why);
            s_note("%s/%s exited early (%s)", f->name, f->procs[i].name,
                   why);
            return false;
        }
    }
    return true;
}

/*
 * Starts the processes of f; fresh: in a new directory on new ports, else
 * (a restart) on the same ones. Returns only when they serve, or false.
 */
static bool s_fixture_start(s_fixture *f, bool fresh)
{
    if (fresh) {
        const char *tmp = getenv("TMPDIR");
        int w = snprintf(f->root, sizeof f->root, "%s/imbox-e2e-%s-XXXXXX",
                         tmp && *tmp ? tmp : "/tmp", f->name);
        if (w < 0 || (size_t)w >= sizeof f->root || !mkdtemp(f->root)) {
            s_note("mkdtemp %s: %s", f->root, strerror(errno));
            f->root[0] = '\0';
            return false;
        }
        f->port = s_free_port();
        for (int i = 0; i < S_NSHARDS; i++)
            f->shard_port[i] = s_free_port();
        snprintf(f->addr, sizeof f->addr, "127.0.0.1:%d", f->port);
        snprintf(f->secret_dir, sizeof f->secret_dir, "%s/%s", f->root,
                 f->cluster ? "gw" : "serve");
    }
    char bin[] = "imbox";
    if (!f->cluster) {
        char cmd[] = "serve", o1[] = "--listen", o2[] = "--data-dir",
             o3[] = "--shards", n[] = "4";
        char *argv[] = {bin, cmd, o1, f->addr, o2, f->secret_dir, o3, n,
                        NULL};
        f->nprocs = 1;
        if (!s_launch(f, 0, "serve", argv))
            return false;
    } else {
        char shards[256] = "";
        f->nprocs = S_NSHARDS + 1;
        for (int i = 0; i < S_NSHARDS; i++) {
            char cmd[] = "shard", o1[] = "--index", o2[] = "--count",
                 o3[] = "--listen", o4[] = "--data-dir", idx[16], cnt[16],
                 ep[64], dir[PATH_MAX], name[32];
            snprintf(idx, sizeof idx, "%d", i);
            snprintf(cnt, sizeof cnt, "%d", S_NSHARDS);
            snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", f->shard_port[i]);
            snprintf(dir, sizeof dir, "%s/shard-%d", f->root, i);
            snprintf(name, sizeof name, "shard-%d", i);
            char *argv[] = {bin, cmd, o1, idx, o2, cnt, o3, ep, o4, dir,
                            NULL};
            if (!s_launch(f, i, name, argv))
                return false;
            size_t l = strlen(shards);
            snprintf(shards + l, sizeof shards - l, "%s%s", i ? "," : "",
                     ep);
        }
        /* The gateway starts when every shard accepts connections. */
        int64_t end = s_mono_ms() + S_READY_MS;
        for (int i = 0; i < S_NSHARDS; i++) {
            while (!s_tcp_accepts(f->shard_port[i])) {
                if (!s_all_alive(f))
                    return false;
                if (s_mono_ms() >= end) {
                    s_note("%s/shard-%d: port %d not listening within %d ms",
                           f->name, i, f->shard_port[i], S_READY_MS);
                    return false;
                }
                s_sleep_ms(50);
            }
        }
        char cmd[] = "gateway", o1[] = "--listen", o2[] = "--shards",
             o3[] = "--data-dir";
        char *argv[] = {bin, cmd, o1, f->addr, o2, shards, o3,
                        f->secret_dir, NULL};
        if (!s_launch(f, S_NSHARDS, "gateway", argv))
            return false;
    }
    int64_t end = s_mono_ms() + S_READY_MS;
    while (!rpc_health(f->addr, 500)) {
        if (!s_all_alive(f))
            return false;
        if (s_mono_ms() >= end) {
            s_note("%s: %s not SERVING within %d ms", f->name, f->addr,
                   S_READY_MS);
            return false;
        }
        s_sleep_ms(50);
    }
    return s_all_alive(f);
}

/*
 * Runs `imbox token --uid uid --ttl 3600 --data-dir dir`; returns its last
 * non-empty stdout line (malloc'ed) or NULL.
 */
static char *s_make_token(const char *uid, const char *dir)
{
    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC) != 0)
        return NULL;
    char bin[] = "imbox", cmd[] = "token", o1[] = "--uid", o2[] = "--ttl",
         ttl[] = "3600", o3[] = "--data-dir", u[128], d[PATH_MAX];
    snprintf(u, sizeof u, "%s", uid);
    snprintf(d, sizeof d, "%s", dir);
    char *argv[] = {bin, cmd, o1, u, o2, ttl, o3, d, NULL};
    s_proc p = {.pid = s_spawn(argv, NULL, pfd[1])};
    close(pfd[1]);
    if (p.pid < 0) {
        close(pfd[0]);
        return NULL;
    }
    char out[8192];
    size_t len = 0;
    int64_t end = s_mono_ms() + S_TOKEN_MS;
    for (;;) {
        int left = (int)(end - s_mono_ms());
        struct pollfd pf = {pfd[0], POLLIN, 0};
        if (left <= 0 || poll(&pf, 1, left) <= 0) {
            if (errno == EINTR && left > 0)
                continue;
            break;
        }
        ssize_t r = read(pfd[0], out + len, sizeof out - 1 - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        len += (size_t)r;
        if (len == sizeof out - 1)
            break;
    }
    close(pfd[0]);
    out[len] = '\0';
    int st = 0;
    bool in_time = s_stop(&p, 0, (int)(end > s_mono_ms() ? end - s_mono_ms()
                                                         : 0) + 100, &st);
    if (!in_time || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        char why[64];
        s_describe_status(st, why, sizeof why);
        s_note("imbox token --uid %s: %s", uid, in_time ? why : "timed out");
        return NULL;
    }
    while (len && (out[len - 1] == '\n' || out[len - 1] == '\r' ||
                   out[len - 1] == ' '))
        out[--len] = '\0';
    char *last = strrchr(out, '\n');
    last = last ? last + 1 : out;
    if (!*last) {
        s_note("imbox token --uid %s printed nothing", uid);
        return NULL;
    }
    return strdup(last);
}

/* The token of uid on F (cached per fixture). */
static const char *s_token_of(const char *uid)
{
    for (int i = 0; i < F->ntokens; i++)
        if (strcmp(F->tokens[i].uid, uid) == 0)
            return F->tokens[i].token;
    if (F->ntokens == S_MAX_TOKENS)
        return NULL;
    char *t = s_make_token(uid, F->secret_dir);
    if (!t)
        return NULL;
    s_token *e = &F->tokens[F->ntokens++];
    snprintf(e->uid, sizeof e->uid, "%s", uid);
    e->token = t;
    return t;
}

/* A client of F acting as uid. */
static rpc_client *s_client(const char *uid)
{
    const char *t = s_token_of(uid);
    CU_ASSERT_PTR_NOT_NULL_FATAL(t);
    rpc_client *c = rpc_client_new(F->addr, t);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    return c;
}

static int s_suite_init(s_fixture *f)
{
    F = f;
    f->failures_at_init = CU_get_number_of_failures();
    if (!s_fixture_start(f, true)) {
        s_dump_logs(f);
        s_fixture_teardown(f, SIGKILL, 2000);
        return -1;
    }
    return 0;
}

static int s_suite_cleanup(s_fixture *f)
{
    if (CU_get_number_of_failures() != f->failures_at_init)
        s_dump_logs(f);
    s_fixture_teardown(f, SIGTERM, S_STOP_MS);
    return 0;
}

static int s_init_serve(void) { return s_suite_init(&s_serve); }
static int s_clean_serve(void) { return s_suite_cleanup(&s_serve); }
static int s_init_cluster(void) { return s_suite_init(&s_cluster); }
static int s_clean_cluster(void) { return s_suite_cleanup(&s_cluster); }

/* ------------------------------------------------------------- helpers */

/* Asserts (fatally) that a call returned OK, printing the status if not. */
#define EXPECT_OK(call, e)                                                  \
    do {                                                                    \
        grpc_status_code st_ = (call);                                      \
        if (st_ != GRPC_STATUS_OK)                                          \
            s_note("%s:%d: %s: %s", __FILE__, __LINE__, rpc_code_name(st_), \
                   (e).details);                                            \
        CU_ASSERT_EQUAL_FATAL(st_, GRPC_STATUS_OK);                         \
    } while (0)

/* Asserts that a call returned `code`, printing the status if not. */
#define EXPECT_CODE(call, code, e)                                          \
    do {                                                                    \
        grpc_status_code st_ = (call);                                      \
        if (st_ != (code))                                                  \
            s_note("%s:%d: expected %s, got %s: %s", __FILE__, __LINE__,    \
                   rpc_code_name(code), rpc_code_name(st_), (e).details);   \
        CU_ASSERT_EQUAL(st_, (code));                                       \
    } while (0)

/* Sends one message to one receiver; asserts a stored (or duplicate)
 * receipt and returns its send_time_ms. */
static int64_t s_send1(rpc_client *c, const char *to, const char *msg_id,
                       int32_t type, const void *content, size_t len,
                       bool want_duplicate)
{
    rpc_send_result r;
    rpc_error e;
    const char *rcv[] = {to};
    EXPECT_OK(rpc_send(c, msg_id, rcv, 1, type, content, len, S_CALL_MS, &r,
                       &e),
              e);
    CU_ASSERT_EQUAL_FATAL(r.n, 1);
    if (r.receipts[0].code != 0)
        s_note("receipt for %s: %s: %s", to,
               rpc_code_name(r.receipts[0].code), r.receipts[0].error);
    CU_ASSERT_EQUAL(r.receipts[0].code, 0);
    CU_ASSERT_STRING_EQUAL(r.receipts[0].receiver_uid, to);
    CU_ASSERT_EQUAL(r.receipts[0].duplicate, want_duplicate);
    int64_t t = r.receipts[0].send_time_ms;
    rpc_send_result_free(&r);
    return t;
}

static uint64_t s_total(rpc_client *c)
{
    rpc_counts_result r;
    rpc_error e;
    EXPECT_OK(rpc_counts(c, S_CALL_MS, &r, &e), e);
    uint64_t t = r.total;
    rpc_counts_result_free(&r);
    return t;
}

/* -------------------------------------------------------------- the tests */

/*
 * A sends 5 messages to B; B drains with page size 2: pages of 2, 2, 1
 * messages and an empty last call; every message once, in order, intact
 * (content with 0x00 and a non-UTF-8 byte), sender_uid from A's token.
 */
static void test_send_pull(void)
{
    const char *A = "sp-alice", *B = "sp-bob";
    rpc_client *ca = s_client(A), *cb = s_client(B);
    int64_t times[5];
    uint8_t content[5][6];
    int64_t t0 = s_wall_ms();
    for (int i = 0; i < 5; i++) {
        char id[32];
        snprintf(id, sizeof id, "sp-%d", i);
        uint8_t c[6] = {'m', (uint8_t)('0' + i), 0x00, 0xff, 'z', '\n'};
        memcpy(content[i], c, sizeof c);
        times[i] = s_send1(ca, B, id, 10 + i, content[i], sizeof content[i],
                           false);
    }
    int64_t t1 = s_wall_ms();
    for (int i = 0; i < 5; i++) {
        CU_ASSERT(times[i] >= t0 - 5000 && times[i] <= t1 + 5000);
        if (i)
            CU_ASSERT(times[i] >= times[i - 1]);
    }

    static const size_t sizes[] = {2, 2, 1, 0};
    static const bool more[] = {true, true, false, false};
    char cursor[RPC_CURSOR_CAP] = "";
    int next = 0;
    for (int call = 0; call < 4; call++) {
        rpc_page pg;
        rpc_error e;
        EXPECT_OK(rpc_pull(cb, cursor, 2, NULL, S_CALL_MS, &pg, &e), e);
        CU_ASSERT_EQUAL(pg.n, sizes[call]);
        CU_ASSERT_EQUAL(pg.more, more[call]);
        for (size_t k = 0; k < pg.n && next < 5; k++, next++) {
            const rpc_msg *m = &pg.msgs[k];
            char id[32];
            snprintf(id, sizeof id, "sp-%d", next);
            CU_ASSERT_STRING_EQUAL(m->msg_id, id);
            CU_ASSERT_STRING_EQUAL(m->sender_uid, A);
            CU_ASSERT_STRING_EQUAL(m->receiver_uid, B);
            CU_ASSERT_EQUAL(m->send_time_ms, times[next]);
            CU_ASSERT_EQUAL(m->msg_type, 10 + next);
            CU_ASSERT_EQUAL(m->content_len, sizeof content[next]);
            CU_ASSERT(m->content_len == sizeof content[next] &&
                      memcmp(m->content, content[next],
                             sizeof content[next]) == 0);
        }
        if (pg.n) {
            CU_ASSERT(pg.cursor[0] != '\0');
            CU_ASSERT(strcmp(pg.cursor, cursor) != 0);
        } else {
            /* An empty page answers the request's cursor again. */
            CU_ASSERT_STRING_EQUAL(pg.cursor, cursor);
        }
        snprintf(cursor, sizeof cursor, "%s", pg.cursor);
        rpc_page_free(&pg);
    }
    CU_ASSERT_EQUAL(next, 5);
    /* The empty last call acked the last page; A's inbox was never used. */
    CU_ASSERT_EQUAL(s_total(cb), 0);
    CU_ASSERT_EQUAL(s_total(ca), 0);

    /* The cursor of the empty page may be passed again: nothing happens. */
    rpc_page pg;
    rpc_error e;
    EXPECT_OK(rpc_pull(cb, cursor, 2, NULL, S_CALL_MS, &pg, &e), e);
    CU_ASSERT_EQUAL(pg.n, 0);
    CU_ASSERT_FALSE(pg.more);
    rpc_page_free(&pg);
    rpc_client_destroy(&ca);
    rpc_client_destroy(&cb);
}

/* Two senders write to R; Counts lists both, most recent first, exact. */
static void test_counts(void)
{
    const char *R = "ct-carol", *S1 = "ct-s1", *S2 = "ct-s2";
    rpc_client *cr = s_client(R), *c1 = s_client(S1), *c2 = s_client(S2);
    int64_t last1 = 0, last2 = 0;
    last1 = s_send1(c1, R, "ct-1a", 1, "one", 3, false);
    last1 = s_send1(c1, R, "ct-1b", 1, "two", 3, false);
    last2 = s_send1(c2, R, "ct-2a", 1, "three", 5, false);
    last2 = s_send1(c2, R, "ct-2b", 1, "four", 4, false);
    last2 = s_send1(c2, R, "ct-2c", 1, "five", 4, false);

    rpc_counts_result r;
    rpc_error e;
    EXPECT_OK(rpc_counts(cr, S_CALL_MS, &r, &e), e);
    CU_ASSERT_EQUAL(r.total, 5);
    CU_ASSERT_EQUAL_FATAL(r.n, 2);
    /* Most recent first; ties by sender uid. */
    bool s2_first = last2 > last1;
    const rpc_sender_count *a = &r.senders[s2_first ? 0 : 1];
    const rpc_sender_count *b = &r.senders[s2_first ? 1 : 0];
    CU_ASSERT_STRING_EQUAL(a->sender_uid, S2);
    CU_ASSERT_EQUAL(a->count, 3);
    CU_ASSERT_EQUAL(a->last_send_time_ms, last2);
    CU_ASSERT_STRING_EQUAL(b->sender_uid, S1);
    CU_ASSERT_EQUAL(b->count, 2);
    CU_ASSERT_EQUAL(b->last_send_time_ms, last1);
    rpc_counts_result_free(&r);

    /* A sender's own Counts is about its own (empty) inbox. */
    CU_ASSERT_EQUAL(s_total(c1), 0);
    rpc_client_destroy(&cr);
    rpc_client_destroy(&c1);
    rpc_client_destroy(&c2);
}

/* Ack with a page's cursor deletes exactly that page, once. */
static void test_ack(void)
{
    const char *D = "ak-dave", *S = "ak-sam";
    rpc_client *cd = s_client(D), *cs = s_client(S);
    for (int i = 0; i < 5; i++) {
        char id[32];
        snprintf(id, sizeof id, "ak-%d", i);
        s_send1(cs, D, id, 0, id, strlen(id), false);
    }
    rpc_page pg;
    rpc_error e;
    uint64_t deleted = 99;
    EXPECT_OK(rpc_pull(cd, "", 2, NULL, S_CALL_MS, &pg, &e), e);
    CU_ASSERT_EQUAL_FATAL(pg.n, 2);
    CU_ASSERT_STRING_EQUAL(pg.msgs[0].msg_id, "ak-0");
    CU_ASSERT_STRING_EQUAL(pg.msgs[1].msg_id, "ak-1");
    char c1[RPC_CURSOR_CAP];
    snprintf(c1, sizeof c1, "%s", pg.cursor);
    rpc_page_free(&pg);

    EXPECT_OK(rpc_ack(cd, c1, S_CALL_MS, &deleted, &e), e);
    CU_ASSERT_EQUAL(deleted, 2);
    deleted = 99;
    EXPECT_OK(rpc_ack(cd, c1, S_CALL_MS, &deleted, &e), e);
    CU_ASSERT_EQUAL(deleted, 0);
    CU_ASSERT_EQUAL(s_total(cd), 3);

    /* The acked page is gone: from the start, the next two come. */
    EXPECT_OK(rpc_pull(cd, "", 2, NULL, S_CALL_MS, &pg, &e), e);
    CU_ASSERT_EQUAL_FATAL(pg.n, 2);
    CU_ASSERT_STRING_EQUAL(pg.msgs[0].msg_id, "ak-2");
    CU_ASSERT_STRING_EQUAL(pg.msgs[1].msg_id, "ak-3");
    CU_ASSERT_TRUE(pg.more);
    rpc_page_free(&pg);
    /* A retried Pull with an acked cursor is safe: same page, no delete. */
    EXPECT_OK(rpc_pull(cd, c1, 2, NULL, S_CALL_MS, &pg, &e), e);
    CU_ASSERT_EQUAL_FATAL(pg.n, 2);
    CU_ASSERT_STRING_EQUAL(pg.msgs[0].msg_id, "ak-2");
    char c2[RPC_CURSOR_CAP];
    snprintf(c2, sizeof c2, "%s", pg.cursor);
    rpc_page_free(&pg);
    CU_ASSERT_EQUAL(s_total(cd), 3);

    EXPECT_OK(rpc_ack(cd, c2, S_CALL_MS, &deleted, &e), e);
    CU_ASSERT_EQUAL(deleted, 2);
    CU_ASSERT_EQUAL(s_total(cd), 1);

    /* Bad cursors delete nothing. */
    EXPECT_CODE(rpc_ack(cd, "", S_CALL_MS, &deleted, &e),
                GRPC_STATUS_INVALID_ARGUMENT, e);
    EXPECT_CODE(rpc_ack(cd, "not-a-cursor", S_CALL_MS, &deleted, &e),
                GRPC_STATUS_INVALID_ARGUMENT, e);
    CU_ASSERT_EQUAL(s_total(cd), 1);
    rpc_client_destroy(&cd);
    rpc_client_destroy(&cs);
}

/* One Send to 50 receivers (spread over every shard): 50 stored receipts
 * in request order, and every receiver pulls its copy. */
static void test_group_send(void)
{
    enum { N = 50 };
    const char *S = "gr-sender";
    char uids[N][16];
    const char *rcv[N];
    for (int i = 0; i < N; i++) {
        snprintf(uids[i], sizeof uids[i], "gr-r%02d", i);
        rcv[i] = uids[i];
    }
    rpc_client *cs = s_client(S);
    rpc_send_result r;
    rpc_error e;
    static const char body[] = "to all of you";
    EXPECT_OK(rpc_send(cs, "gr-1", rcv, N, 7, body, sizeof body - 1,
                       S_SEND_MS, &r, &e),
              e);
    CU_ASSERT_EQUAL_FATAL(r.n, N);
    for (int i = 0; i < N; i++) {
        if (r.receipts[i].code != 0)
            s_note("receipt %d (%s): %s: %s", i, uids[i],
                   rpc_code_name(r.receipts[i].code), r.receipts[i].error);
        CU_ASSERT_EQUAL(r.receipts[i].code, 0);
        CU_ASSERT_STRING_EQUAL(r.receipts[i].receiver_uid, uids[i]);
        CU_ASSERT_FALSE(r.receipts[i].duplicate);
    }
    rpc_send_result_free(&r);
    rpc_client_destroy(&cs);

    for (int i = 0; i < N; i++) {
        rpc_client *c = s_client(uids[i]);
        rpc_page pg;
        EXPECT_OK(rpc_pull(c, "", 10, NULL, S_CALL_MS, &pg, &e), e);
        CU_ASSERT_EQUAL(pg.n, 1);
        if (pg.n == 1) {
            CU_ASSERT_STRING_EQUAL(pg.msgs[0].msg_id, "gr-1");
            CU_ASSERT_STRING_EQUAL(pg.msgs[0].sender_uid, S);
            CU_ASSERT_STRING_EQUAL(pg.msgs[0].receiver_uid, uids[i]);
            CU_ASSERT_EQUAL(pg.msgs[0].msg_type, 7);
            CU_ASSERT(pg.msgs[0].content_len == sizeof body - 1 &&
                      memcmp(pg.msgs[0].content, body, sizeof body - 1) == 0);
        }
        CU_ASSERT_FALSE(pg.more);
        rpc_page_free(&pg);
        rpc_client_destroy(&c);
    }
}

/* The same (sender, msg_id) again: duplicate, original time, one copy;
 * also after the receiver acked it (a late retry is not redelivered). */
static void test_duplicate(void)
{
    const char *S = "dp-sam", *R = "dp-rita";
    rpc_client *cs = s_client(S), *cr = s_client(R);
    int64_t t1 = s_send1(cs, R, "dp-1", 1, "first", 5, false);
    int64_t t2 = s_send1(cs, R, "dp-1", 1, "second", 6, true);
    CU_ASSERT_EQUAL(t2, t1);

    rpc_page pg;
    rpc_error e;
    EXPECT_OK(rpc_pull(cr, "", 10, NULL, S_CALL_MS, &pg, &e), e);
    CU_ASSERT_EQUAL_FATAL(pg.n, 1);
    CU_ASSERT_STRING_EQUAL(pg.msgs[0].msg_id, "dp-1");
    CU_ASSERT(pg.msgs[0].content_len == 5 &&
              memcmp(pg.msgs[0].content, "first", 5) == 0);
    CU_ASSERT_EQUAL(pg.msgs[0].send_time_ms, t1);
    char cur[RPC_CURSOR_CAP];
    snprintf(cur, sizeof cur, "%s", pg.cursor);
    rpc_page_free(&pg);
    EXPECT_OK(rpc_pull(cr, cur, 10, NULL, S_CALL_MS, &pg, &e), e);
    CU_ASSERT_EQUAL(pg.n, 0);
    rpc_page_free(&pg);
    CU_ASSERT_EQUAL(s_total(cr), 0);

    int64_t t3 = s_send1(cs, R, "dp-1", 1, "third", 5, true);
    CU_ASSERT_EQUAL(t3, t1);
    EXPECT_OK(rpc_pull(cr, "", 10, NULL, S_CALL_MS, &pg, &e), e);
    CU_ASSERT_EQUAL(pg.n, 0);
    rpc_page_free(&pg);
    rpc_client_destroy(&cs);
    rpc_client_destroy(&cr);
}

/* B's token cannot read or ack A's messages; bad tokens are refused. */
static void test_isolation(void)
{
    const char *A = "is-alice", *B = "is-bob", *S = "is-sam";
    rpc_client *ca = s_client(A), *cb = s_client(B), *cs = s_client(S);
    s_send1(cs, A, "is-1", 1, "for alice only", 14, false);

    rpc_page pg;
    rpc_error e;
    uint64_t deleted = 0;
    EXPECT_OK(rpc_pull(cb, "", 10, NULL, S_CALL_MS, &pg, &e), e);
    CU_ASSERT_EQUAL(pg.n, 0);
    rpc_page_free(&pg);
    CU_ASSERT_EQUAL(s_total(cb), 0);
    /* B asking for A's conversation with S sees only its own inbox. */
    EXPECT_OK(rpc_pull(cb, "", 10, S, S_CALL_MS, &pg, &e), e);
    CU_ASSERT_EQUAL(pg.n, 0);
    rpc_page_free(&pg);

    EXPECT_OK(rpc_pull(ca, "", 10, NULL, S_CALL_MS, &pg, &e), e);
    CU_ASSERT_EQUAL_FATAL(pg.n, 1);
    CU_ASSERT_STRING_EQUAL(pg.msgs[0].receiver_uid, A);
    char ca_cursor[RPC_CURSOR_CAP];
    snprintf(ca_cursor, sizeof ca_cursor, "%s", pg.cursor);
    rpc_page_free(&pg);

    /* A's cursor is bound to A. */
    EXPECT_CODE(rpc_pull(cb, ca_cursor, 10, NULL, S_CALL_MS, &pg, &e),
                GRPC_STATUS_INVALID_ARGUMENT, e);
    EXPECT_CODE(rpc_ack(cb, ca_cursor, S_CALL_MS, &deleted, &e),
                GRPC_STATUS_INVALID_ARGUMENT, e);
    CU_ASSERT_EQUAL(deleted, 0);

    /* No token, a malformed one, one signed with another secret. */
    rpc_client *anon = rpc_client_new(F->addr, NULL);
    rpc_client *junk = rpc_client_new(F->addr, "garbage");
    char other[PATH_MAX];
    snprintf(other, sizeof other, "%s/other-secret", F->root);
    char *forged = s_make_token(A, other);
    CU_ASSERT_PTR_NOT_NULL(forged);
    rpc_client *cf = forged ? rpc_client_new(F->addr, forged) : NULL;
    rpc_client *bad[] = {anon, junk, cf};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (!bad[i])
            continue;
        EXPECT_CODE(rpc_pull(bad[i], "", 10, NULL, S_CALL_MS, &pg, &e),
                    GRPC_STATUS_UNAUTHENTICATED, e);
        EXPECT_CODE(rpc_counts(bad[i], S_CALL_MS,
                               &(rpc_counts_result){0}, &e),
                    GRPC_STATUS_UNAUTHENTICATED, e);
        rpc_send_result r;
        const char *to[] = {A};
        EXPECT_CODE(rpc_send(bad[i], "is-bad", to, 1, 0, "x", 1, S_CALL_MS,
                             &r, &e),
                    GRPC_STATUS_UNAUTHENTICATED, e);
        EXPECT_CODE(rpc_ack(bad[i], ca_cursor, S_CALL_MS, &deleted, &e),
                    GRPC_STATUS_UNAUTHENTICATED, e);
        rpc_client_destroy(&bad[i]);
    }
    free(forged);

    /* Nothing of A's was read away or deleted. */
    CU_ASSERT_EQUAL(s_total(ca), 1);
    rpc_client_destroy(&ca);
    rpc_client_destroy(&cb);
    rpc_client_destroy(&cs);
}

/* Hostile bytes and over-limit requests are refused as a whole. */
static void test_garbage(void)
{
    const char *G = "gb-gary";
    rpc_client *c = s_client(G);
    static const uint8_t junk[] = {0xff, 0xff, 0xff};
    uint8_t *resp;
    size_t len;
    rpc_error e;
    EXPECT_CODE(rpc_call_raw(c, "/imbox.v1.Inbox/Send", junk, sizeof junk,
                             S_CALL_MS, &resp, &len, &e),
                GRPC_STATUS_INVALID_ARGUMENT, e);
    free(resp);
    EXPECT_CODE(rpc_call_raw(c, "/imbox.v1.Inbox/Pull", junk, sizeof junk,
                             S_CALL_MS, &resp, &len, &e),
                GRPC_STATUS_INVALID_ARGUMENT, e);
    free(resp);
    EXPECT_CODE(rpc_call_raw(c, "/imbox.v1.Inbox/NoSuchMethod", NULL, 0,
                             S_CALL_MS, &resp, &len, &e),
                GRPC_STATUS_UNIMPLEMENTED, e);
    free(resp);

    rpc_page pg;
    EXPECT_CODE(rpc_pull(c, "", 1001, NULL, S_CALL_MS, &pg, &e),
                GRPC_STATUS_INVALID_ARGUMENT, e);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.details, "page_size"));

    /* One bad receiver makes the whole Send fail and stores nothing. */
    rpc_send_result r;
    const char *to[] = {"gb-ok", ""};
    EXPECT_CODE(rpc_send(c, "gb-1", to, 2, 0, "x", 1, S_CALL_MS, &r, &e),
                GRPC_STATUS_INVALID_ARGUMENT, e);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.details, "receiver_uids"));
    rpc_client *ok = s_client("gb-ok");
    CU_ASSERT_EQUAL(s_total(ok), 0);
    rpc_client_destroy(&ok);
    rpc_client_destroy(&c);
}

/*
 * SIGTERM after a Send returned: every process exits 0 within 10 s, and
 * after a restart on the same data the message is still there.
 */
static void test_sigterm_restart(void)
{
    const char *S = "rs-sam", *R = "rs-rita";
    rpc_client *cs = s_client(S);
    int64_t t = s_send1(cs, R, "rs-1", 3, "survives", 8, false);

    /* Gateway first (it is the last process), then the shards. */
    for (int i = F->nprocs - 1; i >= 0; i--) {
        s_proc *p = &F->procs[i];
        int st = 0;
        int64_t t0 = s_mono_ms();
        bool in_time = s_stop(p, SIGTERM, S_STOP_MS, &st);
        char why[64];
        s_describe_status(st, why, sizeof why);
        if (!in_time)
            s_note("%s/%s: still running %d ms after SIGTERM", F->name,
                   p->name, S_STOP_MS);
        else if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
            s_note("%s/%s: SIGTERM gave %s", F->name, p->name, why);
        else
            s_note("%s/%s: exited 0 in %" PRId64 " ms", F->name, p->name,
                   s_mono_ms() - t0);
        CU_ASSERT_TRUE(in_time);
        CU_ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
    rpc_client_destroy(&cs);

    bool up = s_fixture_start(F, false);
    if (!up)
        s_dump_logs(F);
    CU_ASSERT_TRUE_FATAL(up);
    rpc_client *cr = s_client(R);
    rpc_page pg;
    rpc_error e;
    EXPECT_OK(rpc_pull(cr, "", 10, NULL, S_CALL_MS, &pg, &e), e);
    CU_ASSERT_EQUAL_FATAL(pg.n, 1);
    CU_ASSERT_STRING_EQUAL(pg.msgs[0].msg_id, "rs-1");
    CU_ASSERT_STRING_EQUAL(pg.msgs[0].sender_uid, S);
    CU_ASSERT_EQUAL(pg.msgs[0].send_time_ms, t);
    CU_ASSERT_EQUAL(pg.msgs[0].msg_type, 3);
    CU_ASSERT(pg.msgs[0].content_len == 8 &&
              memcmp(pg.msgs[0].content, "survives", 8) == 0);
    rpc_page_free(&pg);
    rpc_client_destroy(&cr);
}

/* ------------------------------------------------------------------ main */

static const im_cunit_test s_tests[] = {
    {"send A->B, B drains 5 in pages of 2", test_send_pull},
    {"counts per sender", test_counts},
    {"ack deletes exactly one page, once", test_ack},
    {"group send to 50 receivers", test_group_send},
    {"duplicate send", test_duplicate},
    {"tokens and cursors are bound to their owner", test_isolation},
    {"garbage and over-limit requests", test_garbage},
    {"SIGTERM, restart, message kept", test_sigterm_restart},
};

int main(void)
{
    setvbuf(stdout, NULL, _IONBF, 0);
    s_bin = getenv("IMBOX_BIN");
    if (!s_bin || !*s_bin) {
        fprintf(stderr, "test_e2e: set IMBOX_BIN to the imbox binary\n");
        return 2;
    }
    if (access(s_bin, X_OK) != 0) {
        fprintf(stderr, "test_e2e: IMBOX_BIN=%s: %s\n", s_bin,
                strerror(errno));
        return 2;
    }
    const char *keep = getenv("IMBOX_E2E_KEEP");
    s_keep = keep && *keep && strcmp(keep, "0") != 0;
    size_t n = 0, k = 0;
    while (environ[n])
        n++;
    s_env = calloc(n + 1, sizeof *s_env);
    if (!s_env)
        return 2;
    for (size_t i = 0; i < n; i++)
        if (strncmp(environ[i], "IMBOX_", 6) != 0)
            s_env[k++] = environ[i];

    atexit(s_atexit);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = s_on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (CU_initialize_registry() != CUE_SUCCESS)
        return 2;
    CU_pSuite serve = CU_add_suite("imbox serve", s_init_serve,
                                   s_clean_serve);
    CU_pSuite cluster = CU_add_suite("imbox shard x3 + gateway",
                                     s_init_cluster, s_clean_cluster);
    if (!serve || !cluster)
        return 2;
    for (size_t i = 0; i < sizeof s_tests / sizeof s_tests[0]; i++) {
        if (!CU_add_test(serve, s_tests[i].name, s_tests[i].fn) ||
            !CU_add_test(cluster, s_tests[i].name, s_tests[i].fn))
            return 2;
    }
    int rc = im_cunit_run();
    free(s_env);
    return rc;
}
