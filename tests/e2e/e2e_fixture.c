/*
 * e2e_fixture.c - see e2e_fixture.h. Moved out of test_e2e.c so that every
 * C end-to-end test boots and cleans up its processes the same way.
 */
#include "e2e_fixture.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
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

extern char **environ;

static const char *s_prog = "e2e";
static const char *s_bin;
static char **s_env; /* environ without IMBOX_*: flags only from argv */
static bool s_keep;  /* IMBOX_E2E_KEEP set: leave the directories */
static char *s_wrap[16];    /* IMBOX_TEST_WRAPPER's words, s_wrap[0] a path */
static int s_nwrap;
static e2e_fixture *const *s_fixtures;
static size_t s_nfixtures;

int64_t e2e_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t e2e_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void e2e_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

void e2e_note(const char *fmt, ...)
{
    va_list ap;
    fputs("\n    # ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
}

int e2e_slow(void)
{
    static int slow;
    if (!slow) {
        const char *w = getenv("IMBOX_TEST_WRAPPER"), *f = getenv("IMBOX_TEST_SLOW");
        slow = f && atoi(f) > 0 ? atoi(f) : w && *w ? 20 : 1;
    }
    return slow;
}

/* Splits IMBOX_TEST_WRAPPER into s_wrap, its first word resolved in PATH
 * (execve does not search). False when it has too many words or the
 * program is not found. */
static bool s_wrap_init(void)
{
    const char *w = getenv("IMBOX_TEST_WRAPPER");
    char *copy = w && *w ? strdup(w) : NULL, *save = NULL;
    for (char *t = copy ? strtok_r(copy, " ", &save) : NULL; t; t = strtok_r(NULL, " ", &save)) {
        if (s_nwrap == (int)(sizeof s_wrap / sizeof *s_wrap) - 1)
            return false;
        s_wrap[s_nwrap++] = t;
    }
    if (!s_nwrap || strchr(s_wrap[0], '/'))
        return true;
    const char *path = getenv("PATH");
    for (const char *d = path ? path : "/usr/bin:/bin"; *d;) {
        size_t n = strcspn(d, ":");
        char full[PATH_MAX];
        snprintf(full, sizeof full, "%.*s/%s", (int)n, d, s_wrap[0]);
        if (access(full, X_OK) == 0)
            return (s_wrap[0] = strdup(full)) != NULL;
        d += n + (d[n] == ':');
    }
    return false;
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
    /* Under IMBOX_TEST_WRAPPER: wrapper words, IMBOX_BIN, argv[1..]. */
    char *wrapped[64];
    int k = 0;
    for (int i = 0; i < s_nwrap; i++)
        wrapped[k++] = s_wrap[i];
    wrapped[k++] = (char *)s_bin;
    for (int i = 1; argv[i] && k < 63; i++)
        wrapped[k++] = argv[i];
    wrapped[k] = NULL;
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
        if (s_nwrap)
            execve(s_wrap[0], wrapped, s_env);
        else
            execve(s_bin, argv, s_env);
        static const char msg[] = "e2e: execve of IMBOX_BIN failed\n";
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

bool e2e_stop(e2e_proc *p, int sig, int wait_ms, int *status)
{
    int st = 0;
    bool in_time = false;
    if (p->pid <= 0)
        return true;
    s_signal(p->pid, sig);
    int64_t end = e2e_mono_ms() + wait_ms;
    for (;;) {
        pid_t r = waitpid(p->pid, &st, WNOHANG);
        if (r == p->pid || (r < 0 && errno == ECHILD)) {
            in_time = true;
            break;
        }
        if (e2e_mono_ms() >= end)
            break;
        e2e_sleep_ms(20);
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
static bool s_exited(e2e_proc *p, int *status)
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

void e2e_describe_status(int st, char *buf, size_t cap)
{
    if (WIFEXITED(st))
        snprintf(buf, cap, "exit status %d", WEXITSTATUS(st));
    else if (WIFSIGNALED(st))
        snprintf(buf, cap, "killed by signal %d", WTERMSIG(st));
    else
        snprintf(buf, cap, "status 0x%x", st);
}

void e2e_dump_logs(const e2e_fixture *f)
{
    for (int i = 0; i < f->nprocs; i++) {
        const e2e_proc *p = &f->procs[i];
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

void e2e_fixture_teardown(e2e_fixture *f, int sig, int wait_ms)
{
    for (int i = f->nprocs - 1; i >= 0; i--)
        e2e_stop(&f->procs[i], sig, wait_ms, NULL);
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
    for (size_t i = 0; i < s_nfixtures; i++)
        e2e_fixture_teardown(s_fixtures[i], SIGKILL, 2000);
    free(s_env);
    s_env = NULL;
}

/*
 * Only async-signal-safe work (kill, fork, execve, waitpid): kill the
 * groups, remove the directories with rm -rf, then die of the signal.
 */
static void s_on_signal(int sig)
{
    for (size_t i = 0; i < s_nfixtures; i++) {
        e2e_fixture *f = s_fixtures[i];
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

int e2e_setup(const char *prog, e2e_fixture *const *fixtures, size_t n)
{
    s_prog = prog;
    s_bin = getenv("IMBOX_BIN");
    if (!s_bin || !*s_bin) {
        fprintf(stderr, "%s: set IMBOX_BIN to the imbox binary\n", prog);
        return 2;
    }
    if (access(s_bin, X_OK) != 0) {
        fprintf(stderr, "%s: IMBOX_BIN=%s: %s\n", prog, s_bin,
                strerror(errno));
        return 2;
    }
    const char *keep = getenv("IMBOX_E2E_KEEP");
    s_keep = keep && *keep && strcmp(keep, "0") != 0;
    if (!s_wrap_init()) {
        fprintf(stderr, "%s: IMBOX_TEST_WRAPPER: program not found or too many words\n", prog);
        return 2;
    }
    size_t nenv = 0, k = 0;
    while (environ[nenv])
        nenv++;
    s_env = calloc(nenv + 1, sizeof *s_env);
    if (!s_env)
        return 2;
    for (size_t i = 0; i < nenv; i++)
        if (strncmp(environ[i], "IMBOX_", 6) != 0)
            s_env[k++] = environ[i];
    s_fixtures = fixtures;
    s_nfixtures = n;

    atexit(s_atexit);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = s_on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    return 0;
}

/* Starts one process of f and records it. */
static bool s_launch(e2e_fixture *f, int slot, const char *name,
                     char *const argv[])
{
    e2e_proc *p = &f->procs[slot];
    snprintf(p->name, sizeof p->name, "%s", name);
    snprintf(p->log, sizeof p->log, "%s/%s.log", f->root, name);
    p->pid = s_spawn(argv, p->log, -1);
    if (p->pid < 0) {
        p->pid = 0;
        e2e_note("%s: fork: %s", name, strerror(errno));
        return false;
    }
    return true;
}

/* Fails (with a note) when a process of f has exited. */
static bool s_all_alive(e2e_fixture *f)
{
    for (int i = 0; i < f->nprocs; i++) {
        int st;
        if (f->procs[i].pid > 0 && s_exited(&f->procs[i], &st)) {
            char why[64];
            e2e_describe_status(st, why, sizeof why);
            e2e_note("%s/%s exited early (%s)", f->name, f->procs[i].name,
                     why);
            return false;
        }
    }
    return true;
}

/* Polls the grpc.health.v1 Check of addr until SERVING, within `end`. */
static bool s_wait_serving(e2e_fixture *f, const char *addr, int64_t end)
{
    while (!rpc_health(addr, 500)) {
        if (!s_all_alive(f))
            return false;
        if (e2e_mono_ms() >= end) {
            e2e_note("%s: %s not SERVING within %d ms", f->name, addr,
                     E2E_READY_MS);
            return false;
        }
        e2e_sleep_ms(50);
    }
    return true;
}

bool e2e_fixture_start(e2e_fixture *f, bool fresh)
{
    int ngw = f->cluster ? (f->ngateways > 0 ? f->ngateways : 1) : 1;
    if (ngw > E2E_MAX_GATEWAYS) {
        e2e_note("%s: %d gateways, at most %d", f->name, ngw,
                 E2E_MAX_GATEWAYS);
        return false;
    }
    if (fresh) {
        const char *tmp = getenv("TMPDIR");
        int w = snprintf(f->root, sizeof f->root, "%s/imbox-%s-%s-XXXXXX",
                         tmp && *tmp ? tmp : "/tmp", s_prog, f->name);
        if (w < 0 || (size_t)w >= sizeof f->root || !mkdtemp(f->root)) {
            e2e_note("mkdtemp %s: %s", f->root, strerror(errno));
            f->root[0] = '\0';
            return false;
        }
        f->naddrs = ngw;
        for (int i = 0; i < ngw; i++)
            snprintf(f->addrs[i], sizeof f->addrs[i], "127.0.0.1:%d",
                     s_free_port());
        for (int i = 0; i < E2E_NSHARDS; i++)
            f->shard_port[i] = s_free_port();
        snprintf(f->secret_dir, sizeof f->secret_dir, "%s/%s", f->root,
                 f->cluster ? "gw" : "serve");
    }
    char bin[] = "imbox";
    if (!f->cluster) {
        char cmd[] = "serve", o1[] = "--listen", o2[] = "--data-dir",
             o3[] = "--shards", n[] = "4";
        char *argv[] = {bin, cmd, o1, f->addrs[0], o2, f->secret_dir, o3, n,
                        NULL};
        f->nprocs = 1;
        if (!s_launch(f, 0, "serve", argv))
            return false;
    } else {
        char shards[256] = "", secret[PATH_MAX + 16];
        f->nprocs = 0;
        /* The cluster secret first (`imbox token` creates it in the
         * gateways' directory): a shard needs it and never creates it. */
        char *setup = e2e_make_token("setup", f->secret_dir);
        if (!setup)
            return false;
        free(setup);
        snprintf(secret, sizeof secret, "%s/auth.secret", f->secret_dir);
        for (int i = 0; i < E2E_NSHARDS; i++) {
            char cmd[] = "shard", o1[] = "--index", o2[] = "--count",
                 o3[] = "--listen", o4[] = "--data-dir", o5[] = "--secret-file",
                 idx[16], cnt[16], ep[64], dir[PATH_MAX], name[32];
            snprintf(idx, sizeof idx, "%d", i);
            snprintf(cnt, sizeof cnt, "%d", E2E_NSHARDS);
            snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", f->shard_port[i]);
            snprintf(dir, sizeof dir, "%s/shard-%d", f->root, i);
            snprintf(name, sizeof name, "shard-%d", i);
            char *argv[] = {bin, cmd, o1, idx, o2, cnt, o3, ep, o4, dir,
                            o5, secret, NULL};
            f->nprocs = i + 1;
            if (!s_launch(f, i, name, argv))
                return false;
            size_t l = strlen(shards);
            snprintf(shards + l, sizeof shards - l, "%s%s", i ? "," : "",
                     ep);
        }
        /* The gateways start when every shard accepts connections. */
        int64_t end = e2e_mono_ms() + E2E_READY_MS;
        for (int i = 0; i < E2E_NSHARDS; i++) {
            while (!s_tcp_accepts(f->shard_port[i])) {
                if (!s_all_alive(f))
                    return false;
                if (e2e_mono_ms() >= end) {
                    e2e_note("%s/shard-%d: port %d not listening within %d "
                             "ms", f->name, i, f->shard_port[i],
                             E2E_READY_MS);
                    return false;
                }
                e2e_sleep_ms(50);
            }
        }
        /* One after the other (they read the auth.secret made above). */
        for (int g = 0; g < ngw; g++) {
            char cmd[] = "gateway", o1[] = "--listen", o2[] = "--shards",
                 o3[] = "--data-dir", name[32];
            char *argv[] = {bin, cmd, o1, f->addrs[g], o2, shards, o3,
                            f->secret_dir, NULL};
            if (ngw == 1)
                snprintf(name, sizeof name, "gateway");
            else
                snprintf(name, sizeof name, "gateway-%d", g + 1);
            f->nprocs = E2E_NSHARDS + g + 1;
            if (!s_launch(f, E2E_NSHARDS + g, name, argv))
                return false;
            if (g + 1 < ngw &&
                !s_wait_serving(f, f->addrs[g], e2e_mono_ms() + E2E_READY_MS))
                return false;
        }
    }
    int64_t end = e2e_mono_ms() + E2E_READY_MS;
    for (int i = 0; i < f->naddrs; i++)
        if (!s_wait_serving(f, f->addrs[i], end))
            return false;
    return s_all_alive(f);
}

char *e2e_make_token(const char *uid, const char *dir)
{
    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC) != 0)
        return NULL;
    char bin[] = "imbox", cmd[] = "token", o1[] = "--uid", o2[] = "--ttl",
         ttl[] = "3600", o3[] = "--data-dir", u[128], d[PATH_MAX];
    snprintf(u, sizeof u, "%s", uid);
    snprintf(d, sizeof d, "%s", dir);
    char *argv[] = {bin, cmd, o1, u, o2, ttl, o3, d, NULL};
    e2e_proc p = {.pid = s_spawn(argv, NULL, pfd[1])};
    close(pfd[1]);
    if (p.pid < 0) {
        close(pfd[0]);
        return NULL;
    }
    char out[8192];
    size_t len = 0;
    int64_t end = e2e_mono_ms() + E2E_TOKEN_MS;
    for (;;) {
        int left = (int)(end - e2e_mono_ms());
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
    int64_t now = e2e_mono_ms();
    bool in_time = e2e_stop(&p, 0, (int)(end > now ? end - now : 0) + 100,
                            &st);
    if (!in_time || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        char why[64];
        e2e_describe_status(st, why, sizeof why);
        e2e_note("imbox token --uid %s: %s", uid,
                 in_time ? why : "timed out");
        return NULL;
    }
    while (len && (out[len - 1] == '\n' || out[len - 1] == '\r' ||
                   out[len - 1] == ' '))
        out[--len] = '\0';
    char *last = strrchr(out, '\n');
    last = last ? last + 1 : out;
    if (!*last) {
        e2e_note("imbox token --uid %s printed nothing", uid);
        return NULL;
    }
    return strdup(last);
}

const char *e2e_token_of(e2e_fixture *f, const char *uid)
{
    for (int i = 0; i < f->ntokens; i++)
        if (strcmp(f->tokens[i].uid, uid) == 0)
            return f->tokens[i].token;
    if (f->ntokens == E2E_MAX_TOKENS)
        return NULL;
    char *t = e2e_make_token(uid, f->secret_dir);
    if (!t)
        return NULL;
    e2e_token *e = &f->tokens[f->ntokens++];
    snprintf(e->uid, sizeof e->uid, "%s", uid);
    e->token = t;
    return t;
}

rpc_client *e2e_client(e2e_fixture *f, int i, const char *uid)
{
    CU_ASSERT_FATAL(i >= 0 && i < f->naddrs);
    const char *t = e2e_token_of(f, uid);
    CU_ASSERT_PTR_NOT_NULL_FATAL(t);
    rpc_client *c = rpc_client_new(f->addrs[i], t);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    return c;
}

int e2e_suite_init(e2e_fixture *f)
{
    f->failures_at_init = CU_get_number_of_failures();
    if (!e2e_fixture_start(f, true)) {
        e2e_dump_logs(f);
        e2e_fixture_teardown(f, SIGKILL, 2000);
        return -1;
    }
    return 0;
}

int e2e_suite_cleanup(e2e_fixture *f)
{
    if (CU_get_number_of_failures() != f->failures_at_init)
        e2e_dump_logs(f);
    e2e_fixture_teardown(f, SIGTERM, E2E_STOP_MS);
    return 0;
}

int e2e_run_suites(const e2e_suite *suites, size_t nsuites, const im_cunit_test *tests,
                   size_t ntests)
{
    if (CU_initialize_registry() != CUE_SUCCESS)
        return 2;
    for (size_t s = 0; s < nsuites; s++) {
        CU_pSuite su = CU_add_suite(suites[s].name, suites[s].init, suites[s].clean);
        if (!su)
            return 2;
        for (size_t i = 0; i < ntests; i++)
            if (!CU_add_test(su, tests[i].name, tests[i].fn))
                return 2;
    }
    return im_cunit_run();
}
