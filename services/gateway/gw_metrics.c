/* gw_metrics.c - the gateway's counters (gw_stats of gw_call.h) and their
 * exposition; see gw_metrics.h. */
#include "gw_metrics.h"

#include <stdio.h>
#include <time.h>

#include "gw_call.h"

/* Latency bounds: a Send's fsync is around a millisecond here, a shard's
 * timeout 5 s. */
const double gw_lat_le_us[GW_LAT_N] = {100, 250, 500, 1000, 2500, 5000, 10000, 25000,
                                       50000, 100000, 250000, 500000, 1000000, 5000000};

static const char *const s_method[M_COUNT] = {
    "Send", "Pull", "Ack", "Counts", "Subscribe", "Presence", "Health", "HealthWatch",
    "ServerReflection", "other",
};

static const char *const s_code[GW_CODES] = {
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED",
};

static int64_t s_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Streams: their lifetime is not a latency. */
static bool s_stream(int m)
{
    return m == M_SUBSCRIBE || m == M_WATCH || m == M_REFLECT;
}

void gw__stat_start(gw_call *c)
{
    c->t0_us = s_mono_us();
    if (c->m == M_SUBSCRIBE)
        atomic_fetch_add_explicit(&c->g->stats.streams, 1, memory_order_relaxed);
}

void gw__stat_call(gw_call *c, int status)
{
    gw_stats *s = &c->g->stats;
    unsigned code = (unsigned)status % GW_CODES;
    atomic_fetch_add_explicit(&s->calls[c->m][code], 1, memory_order_relaxed);
    if (s_stream(c->m) || !c->t0_us)
        return;
    int64_t us = s_mono_us() - c->t0_us;
    int i = im_hist_bucket(gw_lat_le_us, GW_LAT_N, (double)us);
    atomic_fetch_add_explicit(&s->lat[c->m][i], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->lat_us[c->m], (uint64_t)us, memory_order_relaxed);
}

#define LOAD(x) atomic_load_explicit(&(x), memory_order_relaxed)

void gw_metrics_render(gw_server *g, im_mtext *t)
{
    gw_stats *s = &g->stats;
    im_mtext_head(t, "imbox_gateway_requests_total", "counter",
                  "gRPC calls answered, by method and status code.");
    for (int m = 0; m < M_COUNT; m++)
        for (int k = 0; k < GW_CODES; k++) {
            uint64_t v = LOAD(s->calls[m][k]);
            /* Every method's OK is always there, so that rates start at 0. */
            if (v || k == 0)
                im_mtext_printf(t, "imbox_gateway_requests_total{method=\"%s\",code=\"%s\"} "
                                "%llu\n", s_method[m], s_code[k], (unsigned long long)v);
        }
    im_mtext_head(t, "imbox_gateway_request_duration_seconds", "histogram",
                  "Unary calls, from acceptance to the answer handed to gRPC.");
    double le[GW_LAT_N];
    for (int i = 0; i < GW_LAT_N; i++)
        le[i] = gw_lat_le_us[i] / 1e6;
    for (int m = 0; m < M_COUNT; m++) {
        if (s_stream(m))
            continue;
        uint64_t counts[GW_LAT_N + 1];
        for (int i = 0; i <= GW_LAT_N; i++)
            counts[i] = LOAD(s->lat[m][i]);
        char labels[48];
        snprintf(labels, sizeof labels, "method=\"%s\"", s_method[m]);
        im_mtext_hist(t, "imbox_gateway_request_duration_seconds", labels, le, GW_LAT_N,
                      counts, (double)LOAD(s->lat_us[m]) / 1e6);
    }
    im_mtext_head(t, "imbox_gateway_subscribe_streams", "gauge",
                  "Subscribe streams open on this gateway.");
    long long streams = LOAD(s->streams);
    im_mtext_printf(t, "imbox_gateway_subscribe_streams %lld\n", streams > 0 ? streams : 0);
    im_mtext_head(t, "imbox_gateway_shard_up", "gauge",
                  "1 when the shard is reachable (connected, CURVE handshake done), else 0.");
    for (int i = 0; i < g->c.nshards; i++)
        im_mtext_printf(t, "imbox_gateway_shard_up{shard=\"%d\"} %d\n", i,
                        g->bus ? gw_bus_up(g->bus, i) : 0);
    im_mtext_head(t, "imbox_gateway_receipts_total", "counter",
                  "Send receipts by code: OK is a message stored (duplicates included), any "
                  "other a refusal.");
    for (int k = 0; k < GW_CODES; k++) {
        uint64_t v = LOAD(s->receipts[k]);
        if (v || k == 0)
            im_mtext_printf(t, "imbox_gateway_receipts_total{code=\"%s\"} %llu\n", s_code[k],
                            (unsigned long long)v);
    }
    im_mtext_head(t, "imbox_gateway_duplicates_total", "counter",
                  "Send receipts answered from the dedup index (msg_id seen before).");
    im_mtext_printf(t, "imbox_gateway_duplicates_total %llu\n",
                    (unsigned long long)LOAD(s->duplicates));
}
