/*
 * fuzz_batch.c - libFuzzer target of the batch framing between gateways and
 * shards (im_zmq_batch_ok, im_zmq.h): the frame count and id sizes a shard
 * checks on every message a gateway sends it (after the routing identity)
 * and a gateway on every message a shard sends it.
 * The input is: first (1 byte: bit 0, a shard's view with an identity
 * frame first) | frames, each  length (2 bytes, little-endian, mod 2048) |
 * bytes. The frames become zmq_msg_t parts as im_zmq_recv leaves them
 * (at most `max` kept, as both callers use).
 * Invariants: an accepted message is 1..IM_ZMQ_BATCH_MAX pairs, every id
 * exactly 8 bytes, all frames kept; reading every pair's id and body (as
 * the callers do) stays in bounds; a message of exactly those properties
 * is accepted (the framing refuses nothing valid).
 */
#include <stdbool.h>
#include <string.h>

#include <zmq.h>

#include "fz.h"
#include "im_zmq.h"

#define FZ_MAX_FRAMES (1 + 2 * IM_ZMQ_BATCH_MAX + 4)

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
    bool ok = im_zmq_batch_ok(parts, first, n, max);
    bool want = n <= max && n - first >= 2 && (n - first) % 2 == 0;
    for (int k = first; want && k < n; k += 2)
        want = zmq_msg_size(&parts[k]) == 8;
    FZ_CHECK(ok == want);
    if (ok) {
        FZ_CHECK((n - first) / 2 <= IM_ZMQ_BATCH_MAX);
        uint64_t sum = 0;
        for (int k = first; k < n; k += 2) {
            uint64_t id;
            memcpy(&id, zmq_msg_data(&parts[k]), 8);
            const uint8_t *body = zmq_msg_data(&parts[k + 1]);
            size_t blen = zmq_msg_size(&parts[k + 1]);
            sum += id + (blen ? body[0] + body[blen - 1] : 0);
        }
        (void)sum;
    }
    im_zmq_close(parts, n, max);
    return 0;
}
