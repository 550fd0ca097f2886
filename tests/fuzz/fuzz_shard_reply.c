/*
 * fuzz_shard_reply.c - libFuzzer target of a ShardReply as the gateway
 * decodes it (gw__shard_decode in gw_server.c, the bus thread): the hand
 * reader of a Store's reply (im_store_reply_decode), else pb_decode, with
 * or without the entries callback (Pull and Subscribe pages).
 * Invariants:
 *   - differential: whenever im_store_reply_decode accepts, pb_decode
 *     accepts the same bytes with the same results and every other field
 *     at its default;
 *   - round trip: a reply that pb_decode accepts and that holds results
 *     only, encoded by hand (im_store_reply_encode) and by pb_encode, gives
 *     the same bytes, which both decoders read back to the same results;
 *   - gw__shard_decode answers 0 only for a reply that pb_decode accepts
 *     (with the same entries callback, or none) with code 0, and then the
 *     results are pb_decode's; with entries, it frees them on failure.
 */
#include <string.h>

#include "fz.h"
#include "gw_call.h"
#include "im_store_reply.h"
#include "im_wire.h"

typedef imbox_internal_v1_ShardReply reply_t;

static reply_t s_hand, s_ref, s_plain, s_back;

static void s_check_results(const reply_t *a, const reply_t *b)
{
    FZ_CHECK(a->results_count == b->results_count);
    for (pb_size_t i = 0; i < a->results_count; i++) {
        const imbox_internal_v1_StoreResult *x = &a->results[i], *y = &b->results[i];
        FZ_CHECK(x->code == y->code && x->duplicate == y->duplicate && x->seq == y->seq &&
                 x->send_time_ms == y->send_time_ms && x->online == y->online);
    }
}

/* pb_decode, with the entries read into *entries, or skipped (NULL). */
static bool s_ref_decode(const uint8_t *b, size_t n, reply_t *r, im_bytes_in *entries)
{
    memset(r, 0, sizeof *r);
    if (entries) {
        r->entries.funcs.decode = im_pb_read_bytes;
        r->entries.arg = entries;
    }
    pb_istream_t is = pb_istream_from_buffer(b, n);
    return pb_decode(&is, imbox_internal_v1_ShardReply_fields, r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    im_bytes_in entries = {.max = GW_REPLY_MAX};
    bool ref = s_ref_decode(data, size, &s_ref, &entries);
    bool plain = s_ref_decode(data, size, &s_plain, NULL);
    if (im_store_reply_decode(data, size, &s_hand)) {
        FZ_CHECK(ref && plain && entries.p == NULL);
        FZ_CHECK(im_store_reply_only(&s_ref, 0));
        s_check_results(&s_hand, &s_ref);
    }
    if (ref && im_store_reply_only(&s_ref, entries.p ? entries.n : 0)) {
        uint8_t *hand, *gen;
        size_t hn, gn;
        s_ref.entries = (pb_callback_t){0};
        FZ_CHECK(im_store_reply_encode(&s_ref, &hand, &hn) == 0);
        FZ_CHECK(im_pb_encode(imbox_internal_v1_ShardReply_fields, &s_ref, &gen, &gn) ==
                 0);
        FZ_CHECK(hn == gn && memcmp(hand, gen, hn) == 0);
        FZ_CHECK(im_store_reply_decode(hand, hn, &s_back));
        s_check_results(&s_back, &s_ref);
        free(hand);
        free(gen);
    }
    free(entries.p);

    /* The gateway's own decode, without entries (Send, Presence) and with. */
    static gw_server g;
    g.shard_reply = &s_back;
    const char *why = NULL;
    int st = gw__shard_decode(&g, 0, &why, data, size, NULL);
    if (st == 0) {
        FZ_CHECK(plain && s_back.code == 0);
        s_check_results(&s_back, &s_plain);
    } else {
        FZ_CHECK(why != NULL);
    }
    im_bytes_in e = {.max = GW_REPLY_MAX};
    st = gw__shard_decode(&g, 0, &why, data, size, &e);
    FZ_CHECK(st == 0 ? ref && s_back.code == 0 && !e.over : e.p == NULL);
    free(e.p);
    return 0;
}
