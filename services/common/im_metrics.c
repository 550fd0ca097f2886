/* im_metrics.c - the Prometheus endpoint (libmicrohttpd) and the text
 * exposition helpers; see im_metrics.h. */
#include "im_metrics.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <microhttpd.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>

#define IM_TOKEN_MIN 16
#define IM_TOKEN_MAXLEN 1024

struct im_metrics {
    struct MHD_Daemon *d;
    im_metrics_fn fn;
    void *arg;
    bool need_token;
    uint8_t token_digest[SHA256_DIGEST_LENGTH]; /* of "Bearer <token>" */
    int port;
};

/* ------------------------------------------------------------ the text */

void im_mtext_printf(im_mtext *t, const char *fmt, ...)
{
    for (int round = 0; round < 2 && !t->oom; round++) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(t->buf ? t->buf + t->len : NULL, t->buf ? t->cap - t->len : 0, fmt,
                          ap);
        va_end(ap);
        if (n < 0) {
            t->oom = true;
            return;
        }
        if (t->buf && t->len + (size_t)n < t->cap) {
            t->len += (size_t)n;
            return;
        }
        size_t cap = t->cap ? t->cap : 4096;
        while (cap <= t->len + (size_t)n)
            cap *= 2;
        char *b = realloc(t->buf, cap);
        if (!b) {
            t->oom = true;
            return;
        }
        t->buf = b;
        t->cap = cap;
    }
}

void im_mtext_head(im_mtext *t, const char *name, const char *type, const char *help)
{
    im_mtext_printf(t, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

void im_mtext_hist(im_mtext *t, const char *name, const char *labels, const double *le, int n,
                   const uint64_t *counts, double sum)
{
    const char *sep = *labels ? "," : "";
    uint64_t cum = 0;
    for (int i = 0; i <= n; i++) {
        cum += counts[i];
        if (i < n)
            im_mtext_printf(t, "%s_bucket{%s%sle=\"%g\"} %llu\n", name, labels, sep, le[i],
                            (unsigned long long)cum);
        else
            im_mtext_printf(t, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, labels, sep,
                            (unsigned long long)cum);
    }
    const char *lb = *labels ? "{" : "", *rb = *labels ? "}" : "";
    im_mtext_printf(t, "%s_sum%s%s%s %.9g\n%s_count%s%s%s %llu\n", name, lb, labels, rb, sum,
                    name, lb, labels, rb, (unsigned long long)cum);
}

/* ------------------------------------------------------------ the endpoint */

static enum MHD_Result s_answer(struct MHD_Connection *conn, unsigned code, const char *body)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(body), (void *)body, MHD_RESPMEM_PERSISTENT);
    if (!r)
        return MHD_NO;
    if (code == MHD_HTTP_METHOD_NOT_ALLOWED)
        MHD_add_response_header(r, "Allow", "GET");
    if (code == MHD_HTTP_UNAUTHORIZED)
        MHD_add_response_header(r, "WWW-Authenticate", "Bearer");
    MHD_add_response_header(r, "Content-Type", "text/plain; charset=utf-8");
    enum MHD_Result ok = MHD_queue_response(conn, code, r);
    MHD_destroy_response(r);
    return ok;
}

static enum MHD_Result s_handle(void *cls, struct MHD_Connection *conn, const char *url,
                                const char *method, const char *version,
                                const char *upload_data, size_t *upload_data_size,
                                void **con_cls)
{
    (void)version;
    (void)upload_data;
    (void)con_cls;
    im_metrics *m = cls;
    /* The answer is queued on the first call, before any request body is
     * read: MHD then closes the connection instead of reading it. */
    *upload_data_size = 0;
    if (m->need_token) {
        const char *a = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Authorization");
        uint8_t d[SHA256_DIGEST_LENGTH];
        SHA256((const unsigned char *)(a ? a : ""), a ? strlen(a) : 0, d);
        if (!a || CRYPTO_memcmp(d, m->token_digest, sizeof d) != 0)
            return s_answer(conn, MHD_HTTP_UNAUTHORIZED, "unauthorized\n");
    }
    if (strcmp(url, "/metrics") != 0)
        return s_answer(conn, MHD_HTTP_NOT_FOUND, "not found: GET /metrics\n");
    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0)
        return s_answer(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed: GET only\n");
    im_mtext t = {0};
    m->fn(m->arg, &t);
    if (t.oom) {
        free(t.buf);
        return s_answer(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
    }
    struct MHD_Response *r = MHD_create_response_from_buffer(t.len, t.buf ? t.buf : "",
                                                             t.buf ? MHD_RESPMEM_MUST_FREE :
                                                                     MHD_RESPMEM_PERSISTENT);
    if (!r) {
        free(t.buf);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", "text/plain; version=0.0.4; charset=utf-8");
    enum MHD_Result ok = MHD_queue_response(conn, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    return ok;
}

/* Parses HOST:PORT ([V6]:PORT) into ss; sets *loopback. 0 or -1. */
static int s_addr(const char *listen, struct sockaddr_storage *ss, bool *loopback)
{
    char host[64];
    const char *colon = strrchr(listen, ':');
    if (!colon || colon == listen)
        return -1;
    size_t hn = (size_t)(colon - listen);
    const char *h = listen;
    if (h[0] == '[' && hn >= 2 && h[hn - 1] == ']') {
        h++;
        hn -= 2;
    }
    if (hn >= sizeof host)
        return -1;
    memcpy(host, h, hn);
    host[hn] = 0;
    char *end;
    errno = 0;
    long port = strtol(colon + 1, &end, 10);
    if (errno || end == colon + 1 || *end || port < 0 || port > 65535)
        return -1;
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *v4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)ss;
    if (!strcmp(host, "localhost"))
        strcpy(host, "127.0.0.1");
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        *loopback = (ntohl(v4->sin_addr.s_addr) >> 24) == 127;
        return 0;
    }
    if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        *loopback = IN6_IS_ADDR_LOOPBACK(&v6->sin6_addr);
        return 0;
    }
    return -1;
}

/* Reads the token file's first line into the digest of "Bearer <token>". */
static int s_token(im_metrics *m, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "--metrics-token-file %s: %s", path, strerror(errno));
        return -1;
    }
    char line[7 + IM_TOKEN_MAXLEN + 2] = "Bearer ";
    char *tok = line + 7;
    bool got = fgets(tok, IM_TOKEN_MAXLEN + 2, f) != NULL;
    fclose(f);
    size_t n = got ? strlen(tok) : 0;
    while (n && (tok[n - 1] == '\n' || tok[n - 1] == '\r' || tok[n - 1] == ' ' ||
                 tok[n - 1] == '\t'))
        tok[--n] = 0;
    bool printable = true;
    for (size_t i = 0; i < n; i++)
        printable = printable && tok[i] > 0x20 && tok[i] < 0x7f;
    if (n < IM_TOKEN_MIN || n > IM_TOKEN_MAXLEN || !printable) {
        snprintf(err, errlen, "--metrics-token-file %s: the first line must be a token of "
                 "%d..%d printable characters without spaces", path, IM_TOKEN_MIN,
                 IM_TOKEN_MAXLEN);
        OPENSSL_cleanse(line, sizeof line);
        return -1;
    }
    SHA256((const unsigned char *)line, 7 + n, m->token_digest);
    OPENSSL_cleanse(line, sizeof line);
    m->need_token = true;
    return 0;
}

im_metrics *im_metrics_start(const char *listen, const char *token_file, im_metrics_fn fn,
                             void *arg, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    bool loopback = false;
    if (!listen || s_addr(listen, &ss, &loopback)) {
        snprintf(err, errlen, "--metrics-listen '%s': not HOST:PORT with a numeric address",
                 listen ? listen : "");
        return NULL;
    }
    bool has_file = token_file && *token_file;
    if (!loopback && !has_file) {
        snprintf(err, errlen, "--metrics-listen %s is not a loopback address: it needs "
                 "--metrics-token-file (scrapes must then send Authorization: Bearer)",
                 listen);
        return NULL;
    }
    im_metrics *m = calloc(1, sizeof *m);
    if (!m) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    m->fn = fn;
    m->arg = arg;
    if (has_file && s_token(m, token_file, err, errlen)) {
        free(m);
        return NULL;
    }
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL;
    if (ss.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    m->d = MHD_start_daemon(flags, 0, NULL, NULL, s_handle, m,
                            MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)IM_METRICS_CONNS,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)IM_METRICS_IDLE_S,
                            MHD_OPTION_END);
    if (!m->d) {
        snprintf(err, errlen, "--metrics-listen %s: cannot serve there (address in use or "
                 "not local)", listen);
        free(m);
        return NULL;
    }
    const union MHD_DaemonInfo *i = MHD_get_daemon_info(m->d, MHD_DAEMON_INFO_BIND_PORT);
    m->port = i ? i->port : 0;
    return m;
}

int im_metrics_port(const im_metrics *m)
{
    return m->port;
}

void im_metrics_stop(im_metrics **mp)
{
    im_metrics *m = *mp;
    if (!m)
        return;
    MHD_stop_daemon(m->d);
    OPENSSL_cleanse(m->token_digest, sizeof m->token_digest);
    free(m);
    *mp = NULL;
}
