/* im_zmq.c - see im_zmq.h. */
#include "im_zmq.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

/* ZMQ_ZAP_ENFORCE_DOMAIN is a DRAFT option of libzmq 4.3 (not in the
 * stable zmq.h). Where the library has it, a NULL-mechanism peer is refused
 * for want of a ZAP handler's yes too; where it has not, the option is
 * refused with EINVAL and nothing changes: a CURVE server refuses any
 * other mechanism in the greeting anyway. */
#define S_ZAP_ENFORCE_DOMAIN 93

int im_zpoll_init(im_zpoll *p, int n)
{
    *p = (im_zpoll){.n = n};
    p->pfd = calloc((size_t)n, sizeof *p->pfd);
    p->sock = calloc((size_t)n, sizeof *p->sock);
    p->dirty = calloc((size_t)n, sizeof *p->dirty);
    p->in = calloc((size_t)n, sizeof *p->in);
    if (!p->pfd || !p->sock || !p->dirty || !p->in) {
        im_zpoll_free(p);
        return -1;
    }
    for (int i = 0; i < n; i++)
        p->pfd[i].fd = -1;
    return 0;
}

void im_zpoll_free(im_zpoll *p)
{
    free(p->pfd);
    free(p->sock);
    free(p->dirty);
    free(p->in);
    *p = (im_zpoll){0};
}

void im_zpoll_fd(im_zpoll *p, int i, int fd)
{
    p->pfd[i] = (struct pollfd){.fd = fd, .events = POLLIN};
    p->sock[i] = NULL;
}

int im_zpoll_socket(im_zpoll *p, int i, void *sock)
{
    int fd;
    size_t len = sizeof fd;
    if (zmq_getsockopt(sock, ZMQ_FD, &fd, &len))
        return -1;
    p->pfd[i] = (struct pollfd){.fd = fd, .events = POLLIN};
    p->sock[i] = sock;
    p->dirty[i] = true;
    return 0;
}

void im_zpoll_dirty(im_zpoll *p, int i)
{
    p->dirty[i] = true;
}

/* Whether socket i has input now (which also resets its ZMQ_FD). */
static bool s_zpoll_ask(im_zpoll *p, int i)
{
    int ev = 0;
    size_t len = sizeof ev;
    if (zmq_getsockopt(p->sock[i], ZMQ_EVENTS, &ev, &len))
        return true; /* let the caller's receive report it */
    return (ev & ZMQ_POLLIN) != 0;
}

int im_zpoll_wait(im_zpoll *p, long timeout_ms)
{
    int ready = 0;
    for (int i = 0; i < p->n; i++) {
        p->in[i] = false;
        if (p->sock[i] && p->dirty[i]) {
            p->dirty[i] = false;
            if (s_zpoll_ask(p, i)) {
                p->in[i] = true;
                ready++;
            }
        }
    }
    int rc = poll(p->pfd, (nfds_t)p->n, ready ? 0 : (int)timeout_ms);
    if (rc < 0 && errno != EINTR)
        return -1;
    /* A socket whose fd fired is reported without asking: the caller
     * reads it until EAGAIN, and that last read does what the ask would
     * (takes libzmq's pending commands and resets the fd). */
    for (int i = 0; rc > 0 && i < p->n; i++)
        if (!p->in[i] && (p->pfd[i].revents & (POLLIN | POLLERR | POLLHUP)))
            p->in[i] = true, ready++;
    return ready;
}

int im_zmq_recv(void *sock, zmq_msg_t *parts, int max)
{
    int n = 0, more = 1;
    while (more) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        /* Later frames of a multipart message are already there: ZeroMQ
         * delivers multipart messages atomically. */
        if (zmq_msg_recv(&m, sock, n == 0 ? ZMQ_DONTWAIT : 0) < 0) {
            zmq_msg_close(&m);
            break;
        }
        more = zmq_msg_more(&m);
        if (n < max)
            parts[n] = m;
        else
            zmq_msg_close(&m);
        n++;
    }
    return n;
}

void im_zmq_close(zmq_msg_t *parts, int n, int max)
{
    for (int i = 0; i < n && i < max; i++)
        zmq_msg_close(&parts[i]);
}

bool im_zmq_batch_ok(const zmq_msg_t *parts, int first, int n, int max)
{
    int frames = n - first;
    if (first < 0 || n > max || frames < 2 || frames % 2 || frames > 2 * IM_ZMQ_BATCH_MAX)
        return false;
    for (int i = first; i < n; i += 2)
        if (zmq_msg_size(&parts[i]) != 8)
            return false;
    return true;
}

/* One key pair: Z85 of the derived secret key, and its public key. */
static int s_curve_pair(const im_secret *s, const char *label, char pub[41], char sec[41])
{
    uint8_t raw[32];
    int rc = im_secret_derive(s, label, raw) || !zmq_z85_encode(sec, raw, sizeof raw) ||
             zmq_curve_public(pub, sec) ? -1 : 0;
    OPENSSL_cleanse(raw, sizeof raw);
    return rc;
}

int im_zmq_curve_derive(const im_secret *s, im_zmq_curve *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    if (!zmq_has("curve")) {
        snprintf(err, errlen, "this libzmq has no CURVE security (zmq_has(\"curve\") is 0)");
        return -1;
    }
    if (s_curve_pair(s, IM_ZMQ_CURVE_SERVER_LABEL, out->server_public, out->server_secret) ||
        s_curve_pair(s, IM_ZMQ_CURVE_CLIENT_LABEL, out->client_public, out->client_secret)) {
        im_zmq_curve_wipe(out);
        snprintf(err, errlen, "deriving the CURVE keys failed");
        return -1;
    }
    return 0;
}

int im_zmq_curve_server(void *sock, const im_zmq_curve *k)
{
    int one = 1;
    if (zmq_setsockopt(sock, ZMQ_CURVE_SERVER, &one, sizeof one) ||
        zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, k->server_secret, 40) ||
        zmq_setsockopt(sock, ZMQ_ZAP_DOMAIN, IM_ZMQ_ZAP_DOMAIN, strlen(IM_ZMQ_ZAP_DOMAIN)))
        return -1;
    if (zmq_setsockopt(sock, S_ZAP_ENFORCE_DOMAIN, &one, sizeof one) && errno != EINVAL)
        return -1;
    return 0;
}

int im_zmq_curve_client(void *sock, const im_zmq_curve *k)
{
    if (zmq_setsockopt(sock, ZMQ_CURVE_SERVERKEY, k->server_public, 40) ||
        zmq_setsockopt(sock, ZMQ_CURVE_PUBLICKEY, k->client_public, 40) ||
        zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, k->client_secret, 40))
        return -1;
    return 0;
}

void im_zmq_curve_wipe(im_zmq_curve *k)
{
    OPENSSL_cleanse(k, sizeof *k);
}
