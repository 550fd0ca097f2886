/*
 * imbox - the server binary.
 *
 *   imbox serve     standalone: one gateway and S shards in one process,
 *                   the shards driven by the gateway's bus thread (no
 *                   ZeroMQ in between: im_local.h), data under --data-dir
 *   imbox shard     one storage shard on a ZeroMQ tcp:// endpoint (CURVE,
 *                   keys from the cluster secret: --secret-file, required)
 *   imbox gateway   the gRPC API in front of shards on tcp:// endpoints
 *   imbox token     prints a token for a uid (its last line of output)
 *   imbox backup    a backup of a serve's or a shard's data dir, made by the
 *                   running server through DATA_DIR/admin.sock (bk_admin.h),
 *                   or here when it is stopped (bk_backup.h)
 *   imbox restore   a backup into an empty or missing data dir
 *
 * Every flag --some-name also reads the environment variable IMBOX_SOME_NAME
 * (for Kubernetes); the command line wins. SIGTERM or SIGINT stops a server
 * gracefully: calls in flight finish, accepted writes complete, exit 0.
 */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <grpc/grpc.h>
#include <zmq.h>

#include "bk_admin.h"
#include "bk_backup.h"
#include "gw_metrics.h"
#include "gw_server.h"
#include "im_auth.h"
#include "im_log.h"
#include "im_metrics.h"
#include "im_trim.h"
#include "sh_health.h"
#include "sh_metrics.h"
#include "sh_service.h"
#include "st.h"

#define IMBOX_GRACE_MS 3000   /* SIGTERM: calls still running then are cancelled */
#define IMBOX_MAX_SHARDS 1024

typedef struct flag {
    const char *name;  /* without the leading "--" */
    const char *def;   /* NULL = required */
    const char *help;
    const char *val;
} flag;

/* Switches: "--name" alone means 1 (a value still goes as "--name=V"). */
static bool s_switch(const flag *x)
{
    return !strcmp(x->name, "insecure-plaintext");
}

static void s_usage(FILE *f, const char *cmd, const flag *flags)
{
    fprintf(f, "usage: imbox %s", cmd);
    for (const flag *x = flags; x->name; x++)
        fprintf(f, s_switch(x) ? " [--%s]" : x->def ? " [--%s V]" : " --%s V", x->name);
    fprintf(f, "\n");
    for (const flag *x = flags; x->name; x++) {
        char env[64] = "IMBOX_";
        for (size_t i = 0; x->name[i] && i < 50; i++)
            env[6 + i] = x->name[i] == '-' ? '_' : (char)(x->name[i] & ~0x20);
        bool def = x->def && *x->def;
        fprintf(f, "  --%-22s %s (env %s%s%s)\n", x->name, x->help, env,
                def ? ", default " : "", def ? x->def : "");
    }
}

/* Fills flags[].val from the environment, then from argv. Returns 0, or 2
 * after printing a usage error. */
static int s_parse(const char *cmd, flag *flags, int argc, char **argv)
{
    for (flag *x = flags; x->name; x++) {
        char env[64] = "IMBOX_";
        size_t i = 0;
        for (; x->name[i] && i < 50; i++)
            env[6 + i] = x->name[i] == '-' ? '_' : (char)(x->name[i] & ~0x20);
        env[6 + i] = 0;
        const char *v = getenv(env);
        x->val = v && *v ? v : x->def;
    }
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            s_usage(stdout, cmd, flags);
            exit(0);
        }
        if (strncmp(a, "--", 2) != 0) {
            fprintf(stderr, "imbox %s: unexpected argument '%s'\n", cmd, a);
            s_usage(stderr, cmd, flags);
            return 2;
        }
        const char *eq = strchr(a + 2, '=');
        size_t n = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
        flag *x = flags;
        for (; x->name; x++)
            if (strlen(x->name) == n && !strncmp(x->name, a + 2, n))
                break;
        if (!x->name) {
            fprintf(stderr, "imbox %s: unknown flag '%s'\n", cmd, a);
            s_usage(stderr, cmd, flags);
            return 2;
        }
        if (eq) {
            x->val = eq + 1;
        } else if (s_switch(x)) {
            x->val = "1";
        } else if (i + 1 < argc) {
            x->val = argv[++i];
        } else {
            fprintf(stderr, "imbox %s: --%s needs a value\n", cmd, x->name);
            return 2;
        }
    }
    for (flag *x = flags; x->name; x++)
        if (!x->val) {
            fprintf(stderr, "imbox %s: --%s is required\n", cmd, x->name);
            s_usage(stderr, cmd, flags);
            return 2;
        }
    return 0;
}

static const char *s_get(const flag *flags, const char *name)
{
    for (const flag *x = flags; x->name; x++)
        if (!strcmp(x->name, name))
            return x->val;
    fprintf(stderr, "imbox: internal error: no flag %s\n", name);
    abort();
}

/* Parses a decimal integer in [lo, hi] or exits 2 naming the flag. */
static long long s_int(const flag *flags, const char *name, long long lo, long long hi)
{
    const char *v = s_get(flags, name);
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || end == v || *end || x < lo || x > hi) {
        fprintf(stderr, "imbox: --%s: '%s' is not an integer in %lld..%lld\n", name, v, lo, hi);
        exit(2);
    }
    return x;
}

/* Blocks SIGINT and SIGTERM in this thread and every thread started after,
 * so that only sigwait() in the main thread sees them. */
static sigset_t s_block_signals(void)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    return set;
}

static void s_wait_signal(sigset_t set)
{
    int sig = 0;
    sigwait(&set, &sig);
    im_log(IM_LOG_INFO, "imbox", NULL, "%s received, stopping",
           sig == SIGTERM ? "SIGTERM" : "SIGINT");
}

/* The observability flags of every server command (im_log.h,
 * im_metrics.h). */
#define OBS_FLAGS                                                                    \
    {"log-level", "info", "least level logged: debug, info, warn, error", NULL},     \
    {"metrics-listen", "", "Prometheus endpoint HOST:PORT (GET /metrics; empty: off)", \
     NULL},                                                                          \
    {"metrics-token-file", "", "bearer token scrapes must send (required off loopback)", \
     NULL}

/* Applies --log-level, or exits 2. */
static void s_log_level(const flag *flags)
{
    if (im_log_set_level(s_get(flags, "log-level"))) {
        fprintf(stderr, "imbox: --log-level: '%s' is not debug, info, warn or error\n",
                s_get(flags, "log-level"));
        exit(2);
    }
}

/* What one process exports: its gateway (or NULL), its shards, and its
 * heap trimmer (the gateway's, or a shard process's own). */
typedef struct s_exported {
    gw_server *gw;
    sh_service **shards;
    int nshards;
    const im_trim *trim;
} s_exported;

static void s_render(void *arg, im_mtext *t)
{
    s_exported *e = arg;
    if (e->gw)
        gw_metrics_render(e->gw, t);
    if (e->nshards)
        sh_metrics_render(e->shards, e->nshards, t);
    const im_trim *trim = e->trim ? e->trim : e->gw ? gw_trimmer(e->gw) : NULL;
    if (trim) {
        long n;
        long long bytes;
        im_trim_stats(trim, &n, &bytes);
        im_mtext_head(t, "imbox_heap_trims_total", "counter",
                      "times free heap was given back to the system (malloc_trim)");
        im_mtext_printf(t, "imbox_heap_trims_total %ld\n", n);
        im_mtext_head(t, "imbox_heap_returned_bytes_total", "counter",
                      "bytes of free heap given back (resident memory malloc had not "
                      "handed out, before each trim less after)");
        im_mtext_printf(t, "imbox_heap_returned_bytes_total %lld\n", bytes);
    }
}

/* Starts the metrics endpoint if --metrics-listen is set: 0 (*m NULL when
 * off), or 1 after printing why it cannot start. */
static int s_metrics(const flag *flags, const char *cmd, s_exported *e, im_metrics **m)
{
    *m = NULL;
    const char *listen = s_get(flags, "metrics-listen");
    if (!*listen)
        return 0;
    char err[512];
    if (!(*m = im_metrics_start(listen, s_get(flags, "metrics-token-file"), s_render, e, err,
                                sizeof err))) {
        fprintf(stderr, "imbox %s: %s\n", cmd, err);
        return 1;
    }
    im_log(IM_LOG_INFO, "metrics", NULL, "serving GET /metrics on %s", listen);
    return 0;
}

#define ENGINE_FLAGS                                                                 \
    {"max-inbox", "100000", "messages per inbox before RESOURCE_EXHAUSTED", NULL},  \
    {"ttl", "2592000", "seconds a stored message lives (30 days)", NULL},           \
    {"dedup-window", "86400", "seconds a msg_id stays deduplicated (24 h)", NULL}

#define GATEWAY_FLAGS                                                              \
    {"max-receivers", "1000", "receivers per Send (at most 1000)", NULL},         \
    {"max-content", "65536", "bytes of content per message (at most 65536)", NULL}, \
    {"max-page", "1000", "messages per Pull page (at most 1000)", NULL},            \
    {"keepalive-time-ms", "10000", "ping a client idle this long (dead ones go offline)", \
     NULL},                                                                        \
    {"keepalive-timeout-ms", "10000", "drop a client that does not answer a ping", NULL}, \
    {"presence-lease-ms", "3000", "a live stream's lease at its shard (renewed)", NULL}, \
    {"tls-cert", "", "PEM certificate chain: serve gRPC over TLS (with --tls-key)", NULL}, \
    {"tls-key", "", "PEM private key of --tls-cert", NULL},                       \
    {"tls-client-ca", "", "PEM CA certificates: require a client certificate they sign", \
     NULL},                                                                        \
    {"insecure-plaintext", "0", "allow plaintext on a non-loopback --listen", NULL}, \
    {"max-streams", "100", "concurrent calls per client connection", NULL},      \
    {"memory-quota-mb", "256", "MiB gRPC's connection buffers may take in all", NULL}, \
    {"reply-budget-mb", "64", "MiB of responses clients have not read, then "     \
     "RESOURCE_EXHAUSTED", NULL},                                                   \
    {"max-metadata-bytes", "65536", "bytes of request headers per call", NULL},   \
    {"send-rate", "200", "Sends per second per sender (0: no limit)", NULL},       \
    {"send-burst", "400", "Sends a sender may make at once above the rate", NULL}, \
    {"jwt-hs256-secret-file", "", "accept HS256 JWTs signed with this file's secret", \
     NULL},                                                                        \
    {"jwt-jwks-file", "", "accept RS256/ES256 JWTs signed by this JWKS's keys (re-read " \
     "when it changes)", NULL},                                                     \
    {"jwt-uid-claim", "sub", "the JWT claim that holds the uid", NULL},          \
    {"jwt-issuer", "", "if set, a JWT's \"iss\" must be this", NULL},            \
    {"jwt-audience", "", "if set, a JWT's \"aud\" must name this", NULL}

/* The GATEWAY_FLAGS into a gateway's config (exits 2 on a bad value). */
static void s_gateway_flags(const flag *flags, gw_config *gc)
{
    gc->limits = (gw_limits){
        .max_receivers = (int)s_int(flags, "max-receivers", 1, IM_RECEIVERS_MAX),
        .max_content = (size_t)s_int(flags, "max-content", 1, IM_CONTENT_MAX),
        .max_page = (unsigned)s_int(flags, "max-page", 1, IM_PAGE_MAX),
    };
    gc->keepalive_time_ms = (int)s_int(flags, "keepalive-time-ms", 100, 3600000);
    gc->keepalive_timeout_ms = (int)s_int(flags, "keepalive-timeout-ms", 100, 3600000);
    gc->presence_lease_ms = (int)s_int(flags, "presence-lease-ms", 300, 60000);
    gc->tls_cert = s_get(flags, "tls-cert");
    gc->tls_key = s_get(flags, "tls-key");
    gc->tls_client_ca = s_get(flags, "tls-client-ca");
    gc->insecure_plaintext = s_int(flags, "insecure-plaintext", 0, 1) != 0;
    gc->max_streams = (int)s_int(flags, "max-streams", 1, 100000);
    gc->memory_quota = s_int(flags, "memory-quota-mb", 16, 1 << 20) << 20;
    gc->reply_budget = s_int(flags, "reply-budget-mb", 1, 1 << 20) << 20;
    gc->max_metadata = (int)s_int(flags, "max-metadata-bytes", 1024, 1 << 20);
    gc->send_rate = (unsigned)s_int(flags, "send-rate", 0, 1000000);
    gc->send_burst = (unsigned)s_int(flags, "send-burst", 1, 1000000);
    gc->jwt = (gw_jwt_config){
        .hs256_secret_file = s_get(flags, "jwt-hs256-secret-file"),
        .jwks_file = s_get(flags, "jwt-jwks-file"),
        .uid_claim = s_get(flags, "jwt-uid-claim"),
        .issuer = s_get(flags, "jwt-issuer"),
        .audience = s_get(flags, "jwt-audience"),
    };
}

static void s_engine_options(const flag *flags, st_options *o)
{
    st_options_init(o);
    o->max_inbox = (uint64_t)s_int(flags, "max-inbox", 1, 1LL << 40);
    o->ttl_ms = s_int(flags, "ttl", 1, 100LL * 365 * 86400) * 1000;
    o->dedup_window_ms = s_int(flags, "dedup-window", 0, 100LL * 365 * 86400) * 1000;
}

static int s_secret(const char *dir, im_secret *s)
{
    char err[256];
    if (im_secret_load_or_create(dir, s, err, sizeof err)) {
        fprintf(stderr, "imbox: %s\n", err);
        return 1;
    }
    return 0;
}

/* The cluster secret from a file that must exist (--secret-file). */
static int s_secret_file(const char *path, im_secret *s)
{
    char err[PATH_MAX + 256];
    if (im_secret_load(path, s, err, sizeof err)) {
        fprintf(stderr, "imbox: --secret-file: %s\n", err);
        return 1;
    }
    return 0;
}

static int cmd_serve(int argc, char **argv)
{
    flag flags[] = {
        {"listen", "127.0.0.1:50051", "gRPC address HOST:PORT", NULL},
        {"data-dir", "./data", "directory of the shards and auth.secret", NULL},
        /* 1: the shards of `serve` run on the gateway's bus thread, one
         * group commit (one fsync) each per turn, so on one disk more
         * shards split the batch (docs/BENCHMARKS.md). */
        {"shards", "1", "number of shards in this process", NULL},
        ENGINE_FLAGS,
        GATEWAY_FLAGS,
        OBS_FLAGS,
        {0},
    };
    int rc = s_parse("serve", flags, argc, argv);
    if (rc)
        return rc;
    s_log_level(flags);
    int S = (int)s_int(flags, "shards", 1, 64);
    const char *dir = s_get(flags, "data-dir");
    gw_config gc = {.listen = s_get(flags, "listen"), .nshards = S};
    s_gateway_flags(flags, &gc);
    st_options so;
    s_engine_options(flags, &so);
    so.max_content = (uint32_t)gc.limits.max_content;
    sigset_t sigs = s_block_signals();
    im_secret secret;
    if (s_secret(dir, &secret))
        return 1;
    void *zctx = zmq_ctx_new();
    grpc_init();
    sh_service *shards[64] = {0};
    im_local_shard local[64] = {0};
    char err[256];
    gw_server *gw = NULL;
    /* Local shards (no endpoint): the gateway's bus thread drives them
     * (im_local.h), with no ZeroMQ hop in between. */
    for (int i = 0; i < S && !rc; i++) {
        char sdir[PATH_MAX];
        snprintf(sdir, sizeof sdir, "%s/shard-%d", dir, i);
        sh_config c = {.index = i, .count = S, .endpoint = NULL, .dir = sdir, .st = so,
                       .zctx = zctx};
        if (!(shards[i] = sh_start(&c, err, sizeof err))) {
            fprintf(stderr, "imbox serve: %s\n", err);
            rc = 1;
        }
        local[i] = sh_local(shards[i]);
    }
    bk_admin *adm = NULL;
    if (!rc) {
        st_shard *engines[64];
        for (int i = 0; i < S; i++)
            engines[i] = sh_engine(shards[i]);
        char secret_path[PATH_MAX];
        snprintf(secret_path, sizeof secret_path, "%s/%s", dir, IM_SECRET_FILE);
        bk_admin_config ac = {.data_dir = dir, .kind = BK_SERVE, .shards = engines,
                              .nshards = S, .index = -1, .count = -1,
                              .secret_path = secret_path};
        if (!(adm = bk_admin_start(&ac, err, sizeof err))) {
            fprintf(stderr, "imbox serve: %s\n", err);
            rc = 1;
        }
    }
    if (!rc) {
        gc.local = local;
        gc.secret = secret;
        gc.zctx = zctx;
        if (!(gw = gw_start(&gc, err, sizeof err))) {
            fprintf(stderr, "imbox serve: %s\n", err);
            rc = 1;
        }
    }
    s_exported ex = {gw, shards, S, NULL}; /* the gateway's trimmer serves the process */
    im_metrics *metrics = NULL;
    if (!rc)
        rc = s_metrics(flags, "serve", &ex, &metrics);
    if (!rc) {
        im_log(IM_LOG_INFO, "imbox", NULL, "serving imbox.v1.Inbox on %s (%d shards, data in %s)",
               s_get(flags, "listen"), S, dir);
        s_wait_signal(sigs);
    }
    im_metrics_stop(&metrics);
    bk_admin_stop(&adm); /* a backup in progress finishes first */
    for (int i = 0; i < S; i++) /* a sweep needs the bus thread: first */
        sh_quiesce(shards[i]);
    gw_stop(&gw, IMBOX_GRACE_MS);
    for (int i = 0; i < S; i++)
        sh_stop(&shards[i]);
    zmq_ctx_term(zctx);
    grpc_shutdown();
    return rc;
}

/* --health-listen's status: the shard's engine open and taking writes. */
static bool s_shard_ready(void *arg)
{
    return sh_writable(arg);
}

static int cmd_shard(int argc, char **argv)
{
    flag flags[] = {
        {"index", NULL, "this shard's index, 0..count-1", NULL},
        {"count", NULL, "number of shards in the cluster", NULL},
        {"listen", NULL, "ZeroMQ endpoint to bind, tcp://HOST:PORT", NULL},
        {"data-dir", NULL, "the shard's data directory", NULL},
        {"secret-file", NULL, "the cluster secret (a gateway's auth.secret: 64 hex digits "
                              "and a newline; never created here); the shard's CURVE keys "
                              "come from it", NULL},
        {"health-listen", "", "HOST:PORT of a plaintext grpc.health.v1 port (readiness "
                              "probes; no data, no token), empty = none", NULL},
        ENGINE_FLAGS,
        OBS_FLAGS,
        {0},
    };
    int rc = s_parse("shard", flags, argc, argv);
    if (rc)
        return rc;
    s_log_level(flags);
    int count = (int)s_int(flags, "count", 1, IMBOX_MAX_SHARDS);
    int index = (int)s_int(flags, "index", 0, count - 1);
    sigset_t sigs = s_block_signals();
    sh_config c = {.index = index, .count = count, .endpoint = s_get(flags, "listen"),
                   .dir = s_get(flags, "data-dir")};
    s_engine_options(flags, &c.st);
    if (s_secret_file(s_get(flags, "secret-file"), &c.secret))
        return 1;
    c.zctx = zmq_ctx_new();
    char err[256];
    sh_service *sh = sh_start(&c, err, sizeof err);
    memset(&c.secret, 0, sizeof c.secret);
    if (!sh) {
        fprintf(stderr, "imbox shard: %s\n", err);
        zmq_ctx_term(c.zctx);
        return 1;
    }
    st_shard *engine = sh_engine(sh);
    bk_admin_config ac = {.data_dir = c.dir, .kind = BK_SHARD, .shards = &engine,
                          .nshards = 1, .index = index, .count = count};
    bk_admin *adm = bk_admin_start(&ac, err, sizeof err);
    /* Free heap back to the system after bursts (a drain of big pages
     * left 37 MB of it resident; a gateway has its own: gw_start). */
    im_trim *trim = adm ? im_trim_start(IM_TRIM_SLACK, IM_TRIM_PERIOD_MS, "shard") : NULL;
    if (!adm || !trim) {
        if (adm)
            snprintf(err, sizeof err, "cannot start the heap trimmer: %s", strerror(errno));
        fprintf(stderr, "imbox shard: %s\n", err);
        bk_admin_stop(&adm);
        sh_stop(&sh);
        zmq_ctx_term(c.zctx);
        return 1;
    }
    const char *health_listen = s_get(flags, "health-listen");
    sh_health *health = NULL;
    if (*health_listen) {
        grpc_init();
        if (!(health = sh_health_start(health_listen, s_shard_ready, sh, err, sizeof err))) {
            fprintf(stderr, "imbox shard: --health-listen: %s\n", err);
            grpc_shutdown();
            im_trim_stop(&trim);
            bk_admin_stop(&adm);
            sh_stop(&sh);
            zmq_ctx_term(c.zctx);
            return 1;
        }
        im_log(IM_LOG_INFO, "imbox", NULL, "shard health (grpc.health.v1) on %s", health_listen);
    }
    s_exported ex = {NULL, &sh, 1, trim};
    im_metrics *metrics = NULL;
    rc = s_metrics(flags, "shard", &ex, &metrics);
    if (!rc) {
        im_log(IM_LOG_INFO, "imbox", NULL, "shard %d of %d on %s (data in %s)", index, count,
               c.endpoint, c.dir);
        s_wait_signal(sigs);
    }
    im_metrics_stop(&metrics);
    if (health) {
        sh_health_stop(&health);
        grpc_shutdown();
    }
    im_trim_stop(&trim);
    bk_admin_stop(&adm);
    sh_stop(&sh);
    zmq_ctx_term(c.zctx);
    return rc;
}

static int cmd_gateway(int argc, char **argv)
{
    flag flags[] = {
        {"listen", "127.0.0.1:50051", "gRPC address HOST:PORT", NULL},
        {"shards", NULL, "shard endpoints in index order, tcp://H:P,tcp://H:P,...", NULL},
        {"data-dir", "./data", "directory holding auth.secret", NULL},
        {"secret-file", "", "the cluster secret, instead of DATA_DIR/auth.secret (must "
                            "exist: never created)", NULL},
        {"shard-timeout-ms", "5000", "UNAVAILABLE when a shard has not answered by then",
         NULL},
        GATEWAY_FLAGS,
        OBS_FLAGS,
        {0},
    };
    int rc = s_parse("gateway", flags, argc, argv);
    if (rc)
        return rc;
    s_log_level(flags);
    int timeout = (int)s_int(flags, "shard-timeout-ms", 1, 600000);
    char *list = strdup(s_get(flags, "shards"));
    char *eps[IMBOX_MAX_SHARDS];
    int S = 0;
    for (char *save = NULL, *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (S == IMBOX_MAX_SHARDS) {
            fprintf(stderr, "imbox gateway: more than %d shards\n", IMBOX_MAX_SHARDS);
            free(list);
            return 2;
        }
        eps[S++] = t;
    }
    if (S == 0) {
        fprintf(stderr, "imbox gateway: --shards lists no endpoint\n");
        free(list);
        return 2;
    }
    sigset_t sigs = s_block_signals();
    gw_config gc = {.listen = s_get(flags, "listen"), .shards = eps, .nshards = S,
                    .zctx = zmq_ctx_new(), .shard_timeout_ms = timeout};
    s_gateway_flags(flags, &gc);
    const char *secret_file = s_get(flags, "secret-file");
    if (*secret_file ? s_secret_file(secret_file, &gc.secret)
                     : s_secret(s_get(flags, "data-dir"), &gc.secret)) {
        free(list);
        return 1;
    }
    grpc_init();
    char err[256];
    gw_server *gw = gw_start(&gc, err, sizeof err);
    if (!gw) {
        fprintf(stderr, "imbox gateway: %s\n", err);
        rc = 1;
    } else {
        s_exported ex = {gw, NULL, 0, NULL};
        im_metrics *metrics = NULL;
        rc = s_metrics(flags, "gateway", &ex, &metrics);
        if (!rc) {
            im_log(IM_LOG_INFO, "imbox", NULL, "gateway on %s in front of %d shards", gc.listen,
                   S);
            s_wait_signal(sigs);
        }
        im_metrics_stop(&metrics);
        gw_stop(&gw, IMBOX_GRACE_MS);
    }
    zmq_ctx_term(gc.zctx);
    grpc_shutdown();
    free(list);
    return rc;
}

static int cmd_token(int argc, char **argv)
{
    flag flags[] = {
        {"uid", NULL, "the user id the token stands for", NULL},
        {"ttl", "86400", "seconds the token stays valid", NULL},
        {"data-dir", "./data", "directory holding auth.secret", NULL},
        {0},
    };
    int rc = s_parse("token", flags, argc, argv);
    if (rc)
        return rc;
    long long ttl = s_int(flags, "ttl", 1, 10LL * 365 * 86400);
    im_secret secret;
    if (s_secret(s_get(flags, "data-dir"), &secret))
        return 1;
    char tok[IM_TOKEN_MAX];
    if (im_token_make(&secret, s_get(flags, "uid"), (int64_t)time(NULL) + ttl, tok, sizeof tok)) {
        fprintf(stderr, "imbox token: invalid uid '%s' (1..64 bytes of UTF-8, no control "
                        "characters)\n", s_get(flags, "uid"));
        return 2;
    }
    printf("%s\n", tok);
    return 0;
}

static void s_backup_report(const char *verb, const char *dir, const char *how,
                            const bk_result *r)
{
    printf("imbox %s: %s of an imbox %s, %d shard%s, %llu files, %llu bytes, %.3f s%s\n",
           verb, dir, bk_kind_name(r->kind), r->shards, r->shards == 1 ? "" : "s",
           (unsigned long long)r->files, (unsigned long long)r->bytes, r->seconds, how);
}

static int cmd_backup(int argc, char **argv)
{
    flag flags[] = {
        {"data-dir", NULL, "the data directory of an `imbox serve` or of one `imbox shard`",
         NULL},
        {"to", NULL, "the backup's directory, new (on the same file system its SST files "
                     "are hard links: copy it to another disk)", NULL},
        {0},
    };
    int rc = s_parse("backup", flags, argc, argv);
    if (rc)
        return rc;
    const char *dir = s_get(flags, "data-dir");
    const char *to = s_get(flags, "to");
    char abs[PATH_MAX + 16], cwd[PATH_MAX];
    if (to[0] != '/' && !getcwd(cwd, sizeof cwd)) {
        fprintf(stderr, "imbox backup: getcwd: %s\n", strerror(errno));
        return 1;
    }
    /* The server resolves the path, in its own working directory. */
    if (snprintf(abs, sizeof abs, "%s%s%s", to[0] == '/' ? "" : cwd, to[0] == '/' ? "" : "/",
                 to) >= PATH_MAX) {
        fprintf(stderr, "imbox backup: --to: path too long\n");
        return 2;
    }
    struct stat st;
    if (!lstat(abs, &st)) {
        fprintf(stderr, "imbox backup: %s exists: a backup goes into a new directory\n", abs);
        return 1;
    }
    char req[PATH_MAX + 32], reply[512], err[PATH_MAX + 512];
    snprintf(req, sizeof req, "checkpoint %s", abs);
    int r = bk_admin_call(dir, req, reply, sizeof reply, err, sizeof err);
    if (r == 0) {
        if (strncmp(reply, "OK ", 3)) {
            fprintf(stderr, "imbox backup: the server refused: %s\n",
                    strncmp(reply, "ERR ", 4) ? reply : reply + 4);
            return 1;
        }
        printf("imbox backup: %s made by the running server: %s\n", abs, reply + 3);
        return 0;
    }
    if (r < 0) {
        fprintf(stderr, "imbox backup: %s\n", err);
        return 1;
    }
    bk_result res;
    if (bk_offline(dir, abs, &res, err, sizeof err)) {
        fprintf(stderr, "imbox backup: %s\n", err);
        return 1;
    }
    s_backup_report("backup", abs, " (the server was stopped)", &res);
    return 0;
}

static int cmd_restore(int argc, char **argv)
{
    flag flags[] = {
        {"from", NULL, "a backup made by `imbox backup`", NULL},
        {"data-dir", NULL, "the data directory to fill: missing or empty", NULL},
        {"kind", "", "serve or shard: checked against the backup (default: the "
                     "backup's own)", NULL},
        {0},
    };
    int rc = s_parse("restore", flags, argc, argv);
    if (rc)
        return rc;
    const char *kind_name = s_get(flags, "kind");
    bk_kind kind = *kind_name ? bk_kind_parse(kind_name) : (bk_kind)0;
    if (*kind_name && !kind) {
        fprintf(stderr, "imbox restore: --kind: '%s' is neither serve nor shard\n",
                s_get(flags, "kind"));
        return 2;
    }
    char err[PATH_MAX + 512];
    bk_result r;
    if (bk_restore(s_get(flags, "from"), s_get(flags, "data-dir"), kind, &r, err, sizeof err)) {
        fprintf(stderr, "imbox restore: %s\n", err);
        return 1;
    }
    s_backup_report("restore", s_get(flags, "data-dir"), "", &r);
    if (r.kind == BK_SHARD && r.index >= 0)
        printf("imbox restore: it is shard %d of %d: start it with --index %d --count %d\n",
               r.index, r.count, r.index, r.count);
    return 0;
}

int main(int argc, char **argv)
{
    static const struct {
        const char *name;
        int (*fn)(int, char **);
        const char *help;
    } cmds[] = {
        {"serve", cmd_serve, "standalone server: gateway + shards in one process"},
        {"shard", cmd_shard, "one storage shard (cluster)"},
        {"gateway", cmd_gateway, "the gRPC gateway in front of shards (cluster)"},
        {"token", cmd_token, "print a token for a uid"},
        {"backup", cmd_backup, "back up a serve's or a shard's data dir (live or stopped)"},
        {"restore", cmd_restore, "restore a backup into an empty data dir"},
    };
    if (argc >= 2)
        for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
            if (!strcmp(argv[1], cmds[i].name))
                return cmds[i].fn(argc - 2, argv + 2);
    FILE *f = argc >= 2 && strcmp(argv[1], "--help") && strcmp(argv[1], "help") ? stderr : stdout;
    fprintf(f, "usage: imbox COMMAND [flags]   (imbox COMMAND --help for its flags)\n");
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
        fprintf(f, "  %-8s %s\n", cmds[i].name, cmds[i].help);
    return f == stdout ? 0 : 2;
}
