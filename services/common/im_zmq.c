/* im_zmq.c - see im_zmq.h. */
#include "im_zmq.h"

#include <errno.h>
#include <stdint.h>
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

static uint32_t s_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

bool im_zmq_batch_open(im_zmq_batch *b, const zmq_msg_t *parts, int first, int n, int max)
{
    *b = (im_zmq_batch){0};
    int frames = n - first;
    if (first < 0 || n > max || frames < 1)
        return false;
    if (frames == 1) {
        const uint8_t *p = zmq_msg_data((zmq_msg_t *)&parts[first]);
        size_t size = zmq_msg_size(&parts[first]);
        if (size < 1 || p[0] != IM_ZMQ_PACKED)
            return false;
        const uint8_t *q = p + 1, *end = p + size;
        int count = 0;
        while (q < end) {
            if ((size_t)(end - q) < IM_ZMQ_RECORD_HEAD || ++count > IM_ZMQ_BATCH_MAX)
                return false;
            uint32_t len = s_le32(q + 8);
            q += IM_ZMQ_RECORD_HEAD;
            if (len > (size_t)(end - q))
                return false;
            q += len;
        }
        if (count == 0)
            return false;
        *b = (im_zmq_batch){.packed = true, .count = count, .p = p + 1, .end = end};
        return true;
    }
    if (frames % 2 || frames > 2 * IM_ZMQ_BATCH_MAX)
        return false;
    for (int i = first; i < n; i += 2)
        if (zmq_msg_size(&parts[i]) != 8)
            return false;
    *b = (im_zmq_batch){.count = frames / 2, .parts = parts, .next = first, .n = n};
    return true;
}

bool im_zmq_batch_next(im_zmq_batch *b, const uint8_t **id, const uint8_t **body, size_t *len)
{
    if (b->packed) {
        if (b->p >= b->end)
            return false;
        *id = b->p;
        *len = s_le32(b->p + 8);
        *body = b->p + IM_ZMQ_RECORD_HEAD;
        b->p += IM_ZMQ_RECORD_HEAD + *len;
        return true;
    }
    if (b->next >= b->n)
        return false;
    zmq_msg_t *m = (zmq_msg_t *)&b->parts[b->next];
    *id = zmq_msg_data(m);
    *body = zmq_msg_data(m + 1);
    *len = zmq_msg_size(m + 1);
    b->next += 2;
    return true;
}

int im_zmq_pack_add(im_zmq_pack *k, const uint8_t id[8], const void *body, size_t len)
{
    im_buf *b = &k->b;
    if (len > UINT32_MAX || im_buf_reserve(b, (b->n ? 0 : 1) + IM_ZMQ_RECORD_HEAD + len))
        return -1;
    if (b->n == 0)
        b->p[b->n++] = IM_ZMQ_PACKED;
    uint8_t *q = b->p + b->n;
    memcpy(q, id, 8);
    q[8] = (uint8_t)len;
    q[9] = (uint8_t)(len >> 8);
    q[10] = (uint8_t)(len >> 16);
    q[11] = (uint8_t)(len >> 24);
    if (len)
        memcpy(q + IM_ZMQ_RECORD_HEAD, body, len);
    b->n += IM_ZMQ_RECORD_HEAD + len;
    k->count++;
    return 0;
}

static void s_free_buf(void *data, void *hint)
{
    (void)hint;
    free(data);
}

int im_zmq_msg_take(zmq_msg_t *m, void *buf, size_t n)
{
    if (zmq_msg_init_data(m, buf, n, s_free_buf, NULL) == 0)
        return 0;
    free(buf);
    return -1;
}

int im_zmq_pack_take(im_zmq_pack *k, zmq_msg_t *m)
{
    uint8_t *p = k->b.p;
    size_t n = k->b.n;
    *k = (im_zmq_pack){0};
    return im_zmq_msg_take(m, p, n);
}

int im_zmq_pack_send(im_zmq_pack *k, void *sock, int flags)
{
    zmq_msg_t m;
    if (im_zmq_pack_take(k, &m))
        return -1;
    if (zmq_msg_send(&m, sock, flags) < 0) {
        int e = errno;
        zmq_msg_close(&m);
        errno = e;
        return -1;
    }
    return 0;
}

void im_zmq_pack_free(im_zmq_pack *k)
{
    im_buf_free(&k->b);
    k->count = 0;
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
