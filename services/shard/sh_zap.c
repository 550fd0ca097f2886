/* sh_zap.c - see sh_zap.h. */
#include "sh_zap.h"

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <zmq.h>

#include "im_base.h"
#include "im_log.h"
#include "im_zmq.h"

#define S_FRAMES_MAX 8      /* 6 + one credential frame, and one more to see
                               that there are too many */
#define S_REQUEST_ID_MAX 255 /* libzmq's ids are short; a longer one is not
                                echoed */

struct sh_zap {
    void *rep;
    void *ctx;
    void *mon;              /* PAIR: the ROUTER's failed handshakes */
    uint8_t client_key[32];
    int index;
    uint64_t refused;       /* since the last log line */
    int64_t next_log_ms;    /* a line may be written from then on */
    char last_why[64];      /* the latest failure's kind */
    char last_addr[64];     /* and its address */
};

static bool s_is(const zmq_msg_t *m, const char *text)
{
    size_t n = strlen(text);
    return zmq_msg_size((zmq_msg_t *)m) == n && memcmp(zmq_msg_data((zmq_msg_t *)m), text, n) == 0;
}

/* Copies a frame as printable text (others as '?'), for a log line. */
static void s_printable(char *dst, size_t cap, zmq_msg_t *m)
{
    const uint8_t *p = zmq_msg_data(m);
    size_t n = zmq_msg_size(m), i = 0;
    for (; i < n && i + 1 < cap; i++)
        dst[i] = p[i] >= 0x20 && p[i] < 0x7f ? (char)p[i] : '?';
    dst[i] = '\0';
}

/* The reason a request is refused, or NULL when it is admitted. */
static const char *s_check(sh_zap *z, zmq_msg_t *f, int n)
{
    if (n < 6 || n > 7 || !s_is(&f[0], "1.0") || zmq_msg_size(&f[1]) > S_REQUEST_ID_MAX)
        return "malformed ZAP request";
    if (!s_is(&f[2], IM_ZMQ_ZAP_DOMAIN))
        return "unknown ZAP domain";
    if (!s_is(&f[5], "CURVE"))
        return "not CURVE";
    if (n != 7 || zmq_msg_size(&f[6]) != sizeof z->client_key ||
        CRYPTO_memcmp(zmq_msg_data(&f[6]), z->client_key, sizeof z->client_key) != 0)
        return "unknown client key";
    return NULL;
}

/* Counts one failed handshake and writes the line when it is due. */
static void s_log(sh_zap *z, const char *why, zmq_msg_t *addr)
{
    z->refused++;
    snprintf(z->last_why, sizeof z->last_why, "%s", why);
    if (addr)
        s_printable(z->last_addr, sizeof z->last_addr, addr);
    else
        z->last_addr[0] = '\0';
    int64_t now = im_mono_ms();
    if (now < z->next_log_ms)
        return;
    IM_LOG_IDX(IM_LOG_WARN, "shard", "shard", z->index,
               "refused %llu unauthenticated peer(s) in the last %d s (last on %s: %s)",
               (unsigned long long)z->refused, SH_ZAP_LOG_EVERY_MS / 1000,
               z->last_addr[0] ? z->last_addr : "?", z->last_why);
    z->refused = 0;
    z->next_log_ms = now + SH_ZAP_LOG_EVERY_MS;
}

/* Reads one monitor event. Returns false when none was waiting. */
static bool s_event(sh_zap *z)
{
    zmq_msg_t f[2];
    int n = im_zmq_recv(z->mon, f, 2);
    if (n == 0)
        return false;
    uint16_t ev = 0;
    uint32_t value = 0;
    if (n == 2 && zmq_msg_size(&f[0]) == 6) {
        memcpy(&ev, zmq_msg_data(&f[0]), 2);
        memcpy(&value, (uint8_t *)zmq_msg_data(&f[0]) + 2, 4);
    }
    char why[64];
    if (ev == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH)
        snprintf(why, sizeof why, "not admitted by the ZAP handler (%u)", (unsigned)value);
    else if (ev == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL)
        snprintf(why, sizeof why, "handshake refused (ZMTP/CURVE error 0x%x)", (unsigned)value);
    else
        snprintf(why, sizeof why, "handshake failed (errno %u)", (unsigned)value);
    if (ev)
        s_log(z, why, n == 2 ? &f[1] : NULL);
    im_zmq_close(f, n, 2);
    return true;
}

/* Reads one request and answers it. Returns false when none was waiting. */
static bool s_serve_one(sh_zap *z)
{
    zmq_msg_t f[S_FRAMES_MAX];
    int n = im_zmq_recv(z->rep, f, S_FRAMES_MAX);
    if (n == 0)
        return false;
    int kept = n < S_FRAMES_MAX ? n : S_FRAMES_MAX;
    const char *why = s_check(z, f, n); /* logged by s_event, as AUTH */
    bool echo = kept >= 2 && zmq_msg_size(&f[1]) <= S_REQUEST_ID_MAX;
    const char *status = why ? "400" : "200", *text = why ? why : "OK";
    const char *user = why ? "" : "gateway";
    /* A REP must answer before it reads again: every frame is sent. */
    bool ok = zmq_send(z->rep, "1.0", 3, ZMQ_SNDMORE) >= 0 &&
              zmq_send(z->rep, echo ? zmq_msg_data(&f[1]) : "", echo ? zmq_msg_size(&f[1]) : 0,
                       ZMQ_SNDMORE) >= 0 &&
              zmq_send(z->rep, status, 3, ZMQ_SNDMORE) >= 0 &&
              zmq_send(z->rep, text, strlen(text), ZMQ_SNDMORE) >= 0 &&
              zmq_send(z->rep, user, strlen(user), ZMQ_SNDMORE) >= 0 &&
              zmq_send(z->rep, "", 0, 0) >= 0;
    if (!ok)
        IM_LOG_IDX(IM_LOG_ERROR, "shard", "shard", z->index, "ZAP reply: %s", zmq_strerror(errno));
    im_zmq_close(f, n, S_FRAMES_MAX);
    return true;
}

sh_zap *sh_zap_new(void *zctx, const char *client_public, int index, char *err,
                   size_t errlen)
{
    sh_zap *z = calloc(1, sizeof *z);
    if (!z) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    z->index = index;
    z->ctx = zctx;
    if (strlen(client_public) != 40 || !zmq_z85_decode(z->client_key, client_public)) {
        snprintf(err, errlen, "ZAP handler: the client key is not Z85");
        free(z);
        return NULL;
    }
    int zero = 0;
    z->rep = zmq_socket(zctx, ZMQ_REP);
    if (!z->rep || zmq_setsockopt(z->rep, ZMQ_LINGER, &zero, sizeof zero) ||
        zmq_bind(z->rep, SH_ZAP_ENDPOINT)) {
        snprintf(err, errlen, "ZAP handler: bind %s: %s%s", SH_ZAP_ENDPOINT,
                 zmq_strerror(errno),
                 errno == EADDRINUSE ? " (this ZeroMQ context has a ZAP handler already: "
                                       "each shard needs a context of its own)" : "");
        sh_zap_destroy(&z);
        return NULL;
    }
    return z;
}

int sh_zap_watch(sh_zap *z, void *router, char *err, size_t errlen)
{
    int zero = 0;
    if (zmq_socket_monitor(router, SH_ZAP_MONITOR,
                           ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL |
                               ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                               ZMQ_EVENT_HANDSHAKE_FAILED_AUTH) ||
        !(z->mon = zmq_socket(z->ctx, ZMQ_PAIR)) ||
        zmq_setsockopt(z->mon, ZMQ_LINGER, &zero, sizeof zero) ||
        zmq_connect(z->mon, SH_ZAP_MONITOR)) {
        snprintf(err, errlen, "handshake monitor: %s", zmq_strerror(errno));
        return -1;
    }
    return 0;
}

int sh_zap_poll(sh_zap *z, im_zpoll *p, int first)
{
    if (im_zpoll_socket(p, first, z->rep))
        return -1;
    return z->mon ? im_zpoll_socket(p, first + 1, z->mon) : 0;
}

int sh_zap_serve(sh_zap *z, int max)
{
    int n = 0, k = 0;
    while (n < max && s_serve_one(z))
        n++;
    while (z->mon && k < max && s_event(z))
        k++;
    return n + k;
}

void sh_zap_unwatch(sh_zap *z, void *router)
{
    if (z && z->mon) {
        zmq_socket_monitor(router, NULL, 0);
        zmq_close(z->mon);
        z->mon = NULL;
    }
}

void sh_zap_destroy(sh_zap **zp)
{
    if (!zp || !*zp)
        return;
    sh_zap *z = *zp;
    if (z->mon)
        zmq_close(z->mon);
    if (z->rep)
        zmq_close(z->rep);
    OPENSSL_cleanse(z->client_key, sizeof z->client_key);
    free(z);
    *zp = NULL;
}
