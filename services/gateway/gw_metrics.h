/*
 * gw_metrics.h - a gateway's figures for the metrics endpoint (im_metrics.h),
 * in the Prometheus text format:
 *
 *   imbox_gateway_requests_total{method,code}     calls answered (counter)
 *   imbox_gateway_request_duration_seconds{method} unary calls, from
 *       acceptance to the answer being handed to gRPC (histogram; a
 *       Subscribe stream's life is not a latency and is left out)
 *   imbox_gateway_subscribe_streams               live Subscribe calls (gauge)
 *   imbox_gateway_shard_up{shard}                 1 when the shard is
 *       reachable (gw_bus_up), else 0 (gauge)
 *   imbox_gateway_receipts_total{code}            Send receipts by code:
 *       code="OK" is a message stored (duplicates included), any other a
 *       refusal (counter)
 *   imbox_gateway_duplicates_total                receipts answered from
 *       the dedup index (counter)
 *
 * Labels are method names, status code names and shard indexes: never a
 * uid or anything a client sent.
 *
 * Threads: gw_metrics_render on the metrics thread, between gw_start and
 * gw_stop; it reads relaxed atomics only.
 */
#ifndef IMBOX_GW_METRICS_H
#define IMBOX_GW_METRICS_H

#include "gw_server.h"
#include "im_metrics.h"

void gw_metrics_render(gw_server *g, im_mtext *t);

#endif
