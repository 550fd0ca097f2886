/*
 * fuzz_batch.c - libFuzzer target of the batch framing between gateways and
 * shards (im_zmq_batch_open/_next, im_zmq.h): what a shard checks on every
 * message a gateway sends it (after the routing identity) and a gateway on
 * every message a shard sends it, in both forms (one packed frame, or the
 * pairs of older releases).
 * The input is: first (1 byte: bit 0, a shard's view with an identity
 * frame first) | frames, each  length (2 bytes, little-endian, mod 2048) |
 * bytes. The frames become zmq_msg_t parts as im_zmq_recv leaves them
 * (at most `max` kept, as both callers use).
 * Invariants: a message is accepted exactly when it is one packed frame
 * (IM_ZMQ_PACKED, then 1..IM_ZMQ_BATCH_MAX whole records and nothing
 * after) or 1..IM_ZMQ_BATCH_MAX pairs with 8-byte ids, all kept (checked
 * against a second, independent reading); walking it yields `count`
 * entries, each inside its frame; a packed frame built again from its
 * entries (im_zmq_pack_add) is byte for byte the frame received.
 */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <zmq.h>

#include "fz.h"
#include "im_zmq.h"

#define FZ_MAX_FRAMES (1 + 2 * IM_ZMQ_BATCH_MAX + 4)

/* The packed form read again, the plain way: records, or -1. */
static int s_packed_records(const uint8_t *p, size_t n)
{
    if (n < 1 || p[0] != IM_ZMQ_PACKED)
        return -1;
    size_t at = 1;
    int records = 0;
    while (at < n) {
        if (n - at < 12)
            return -1;
        size_t len = (size_t)p[at + 8] | (size_t)p[at + 9] << 8 | (size_t)p[at + 10] << 16 |
                     (size_t)p[at + 11] << 24;
        at += 12;
        if (len > n - at)
            return -1;
        at += len;
        records++;
    }
    return records >= 1 && records <= IM_ZMQ_BATCH_MAX ? records : -1;
}

static bool s_inside(const zmq_msg_t *m, const uint8_t *p, size_t len)
{
    const uint8_t *b = zmq_msg_data((zmq_msg_t *)m);
    return p >= b && len <= zmq_msg_size(m) && (size_t)(p - b) <= zmq_msg_size(m) - len;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    int first = data[0] & 1;
    int max = first + 2 * IM_ZMQ_BATCH_MAX;
    static zmq_msg_t parts[FZ_MAX_FRAMES];
    int n = 0;
    size_t i = 1;
    while (i + 2 <= size && n < FZ_MAX_FRAMES) {
        size_t len = (size_t)(data[i] | data[i + 1] << 8) % 2048;
        i += 2;
        if (len > size - i)
            len = size - i;
        if (n < max) {
            FZ_CHECK(zmq_msg_init_size(&parts[n], len) == 0);
            if (len)
                memcpy(zmq_msg_data(&parts[n]), data + i, len);
        }
        n++;
        i += len;
    }
    im_zmq_batch b;
    bool ok = im_zmq_batch_open(&b, parts, first, n, max);
    int want = -1; /* entries, or -1: refused */
    if (n <= max && n - first == 1) {
        want = s_packed_records(zmq_msg_data(&parts[first]), zmq_msg_size(&parts[first]));
    } else if (n <= max && n - first >= 2 && (n - first) % 2 == 0) {
        want = (n - first) / 2;
        for (int k = first; want > 0 && k < n; k += 2)
            if (zmq_msg_size(&parts[k]) != 8)
                want = -1;
    }
    FZ_CHECK(ok == (want > 0));
    if (ok) {
        FZ_CHECK(b.count == want && b.count <= IM_ZMQ_BATCH_MAX && b.packed == (n - first == 1));
        im_zmq_pack k = {0};
        const uint8_t *id, *body;
        size_t len;
        int seen = 0;
        while (im_zmq_batch_next(&b, &id, &body, &len)) {
            const zmq_msg_t *idf = &parts[b.packed ? first : first + 2 * seen];
            const zmq_msg_t *bf = &parts[b.packed ? first : first + 2 * seen + 1];
            FZ_CHECK(s_inside(idf, id, 8) && s_inside(bf, body, len));
            if (b.packed)
                FZ_CHECK(im_zmq_pack_add(&k, id, body, len) == 0);
            seen++;
        }
        FZ_CHECK(seen == want);
        if (b.packed)
            FZ_CHECK(k.b.n == zmq_msg_size(&parts[first]) &&
                     memcmp(k.b.p, zmq_msg_data(&parts[first]), k.b.n) == 0);
        im_zmq_pack_free(&k);
    }
    im_zmq_close(parts, n, max);
    return 0;
}
