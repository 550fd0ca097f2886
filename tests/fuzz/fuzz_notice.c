/*
 * fuzz_notice.c - libFuzzer target of a shard's Notice as the gateway
 * decodes it (gw__subs_notice in gw_sub.c, the bus thread): pb_decode of
 * the commits by callback, each Commit's entry bounded and checked to be
 * one PullResponse entry. No stream is registered, so this target checks
 * the decoding only (memory, undefined behaviour, bounded allocation under
 * ASan+UBSan): what a notice does to a stream is e2e_live_c's and
 * py_live's. Its stderr (a line per refused notice) is closed by
 * scripts/fuzz.
 */
#include "fz.h"
#include "gw_call.h"

static gw_server s_g;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    gw_server *g = &s_g;
    if (!g->subs) {
        g->c.nshards = 3;
        FZ_CHECK(gw__subs_new(g) == 0);
    }
    gw__subs_notice(g, 0, data, size);
    return 0;
}
