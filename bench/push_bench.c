/*
 * push_bench - live delivery (Subscribe) under load, over gRPC, against a
 * running imbox cluster (bench/run_push.sh starts one). The flags and the
 * output; the machinery, its checks and what each figure means are in
 * push_core.c, which imbox-bench --workload push shares.
 *
 *   push_bench --mode latency --send-addr A --sub-addr B --data-dir D
 *              [--subscribers 100] [--rate 1000] [--seconds 10]
 *              [--content 64] [--ack-every 50] [--ack-ms 100]
 *              [--server-pids P1,P2,...]
 *              [--max-inflight 4096] [--streams-per-channel 0] [--json]
 *   push_bench --mode idle --sub-addr B --data-dir D
 *              [--subscribers 10000] [--seconds 10] [--gateway-pid P]
 *              [--probe-calls 2000] [--probe-rate 200]
 *              [--streams-per-channel 0] [--json]
 *   push_bench --mode churn --sub-addr B --data-dir D
 *              [--cycles 100000] [--subscribers 100] [--seconds 10]
 *              [--gateway-pid P] [--server-pids P1,P2,...]
 *              [--cancel-at open] [--no-token] [--probe-calls 2000]
 *              [--probe-rate 200] [--json]
 *
 * Output: key=value lines (or one JSON object with --json) on stdout;
 * notes and errors on stderr. Exit 0, 1 when a check failed or the server
 * could not be driven, 2 on a usage error.
 */
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_core.h"
#include "push_core.h"

#define PB_MAX_PIDS 16

static void s_usage(FILE *f)
{
    fprintf(f,
            "usage: push_bench --mode latency --send-addr A --sub-addr B --data-dir D\n"
            "                  [--subscribers 100] [--rate 1000] [--seconds 10] [--content 64]\n"
            "                  [--ack-every 50] [--ack-ms 100] [--server-pids P1,P2]\n"
            "                  [--max-inflight 4096]\n"
            "                  [--streams-per-channel N] [--json]\n"
            "       push_bench --mode idle --sub-addr B --data-dir D [--subscribers 10000]\n"
            "                  [--seconds 10] [--gateway-pid P] [--probe-calls 2000]\n"
            "                  [--probe-rate 200] [--streams-per-channel N] [--json]\n"
            "       push_bench --mode churn --sub-addr B --data-dir D [--cycles 100000]\n"
            "                  [--subscribers 100] [--seconds 10] [--gateway-pid P]\n"
            "                  [--server-pids P1,P2] [--cancel-at open|start] [--no-token]\n"
            "                  [--probe-calls 2000] [--probe-rate 200] [--json]\n");
}

static double s_num(const char *flag, const char *v, double lo, double hi)
{
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || end == v || *end || !(x >= lo && x <= hi)) {
        fprintf(stderr, "push_bench: %s: '%s' is not a number in %g..%g\n", flag, v, lo, hi);
        exit(2);
    }
    return x;
}

int main(int argc, char **argv)
{
    pb_args a = {
        .nsubs = UINT32_MAX,
        .rate = 1000,
        .seconds = 10,
        .content = 64,
        .ack_every = 50,
        .probe_calls = 2000,
        .probe_rate = 200,
        .max_inflight = 4096,
        .cycles = 100000,
    };
    int pids[PB_MAX_PIDS];
    const char *mode = NULL, *pidlist = NULL;
    bool json = false;
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        if (!strcmp(f, "--help") || !strcmp(f, "-h")) {
            s_usage(stdout);
            return 0;
        }
        if (!strcmp(f, "--json")) {
            json = true;
            continue;
        }
        if (!strcmp(f, "--no-token")) {
            a.no_token = true;
            continue;
        }
        if (i + 1 >= argc) {
            s_usage(stderr);
            return 2;
        }
        const char *v = argv[++i];
        if (!strcmp(f, "--mode"))
            mode = v;
        else if (!strcmp(f, "--send-addr"))
            a.send_addr = v;
        else if (!strcmp(f, "--sub-addr"))
            a.sub_addr = v;
        else if (!strcmp(f, "--data-dir"))
            a.data_dir = v;
        else if (!strcmp(f, "--subscribers"))
            a.nsubs = (uint32_t)s_num(f, v, 0, 1000000);
        else if (!strcmp(f, "--rate"))
            a.rate = s_num(f, v, 0.001, 10000000);
        else if (!strcmp(f, "--seconds"))
            a.seconds = s_num(f, v, 0, 86400);
        else if (!strcmp(f, "--content"))
            a.content = (size_t)s_num(f, v, 8, 65536);
        else if (!strcmp(f, "--ack-every"))
            a.ack_every = (uint32_t)s_num(f, v, 1, 1000000);
        else if (!strcmp(f, "--ack-ms"))
            a.ack_ms = (uint32_t)s_num(f, v, 1, 3600000);
        else if (!strcmp(f, "--max-inflight"))
            a.max_inflight = (int)s_num(f, v, 1, 1000000);
        else if (!strcmp(f, "--streams-per-channel"))
            a.per_channel = (uint32_t)s_num(f, v, 0, 1000000);
        else if (!strcmp(f, "--cancel-at")) {
            if (strcmp(v, "open") && strcmp(v, "start")) {
                fprintf(stderr, "push_bench: --cancel-at is open or start, not '%s'\n", v);
                return 2;
            }
            a.cancel_at_start = !strcmp(v, "start");
        } else if (!strcmp(f, "--cycles"))
            a.cycles = (uint64_t)s_num(f, v, 1, 50000000);
        else if (!strcmp(f, "--gateway-pid"))
            a.gw_pid = (int)s_num(f, v, 1, INT_MAX);
        else if (!strcmp(f, "--probe-calls"))
            a.probe_calls = (uint32_t)s_num(f, v, 1, 10000000);
        else if (!strcmp(f, "--probe-rate"))
            a.probe_rate = s_num(f, v, 0.001, 1000000);
        else if (!strcmp(f, "--server-pids"))
            pidlist = v;
        else {
            fprintf(stderr, "push_bench: unknown flag %s\n", f);
            s_usage(stderr);
            return 2;
        }
    }
    if (!mode || (strcmp(mode, "latency") && strcmp(mode, "idle") && strcmp(mode, "churn")) ||
        !a.sub_addr || !a.data_dir || (!strcmp(mode, "latency") && !a.send_addr)) {
        s_usage(stderr);
        return 2;
    }
    a.mode = !strcmp(mode, "latency") ? PB_LATENCY : !strcmp(mode, "idle") ? PB_IDLE : PB_CHURN;
    if (a.nsubs == UINT32_MAX)
        a.nsubs = a.mode == PB_IDLE ? 10000 : 100;
    if (a.mode != PB_IDLE && (a.nsubs == 0 || (a.mode == PB_CHURN && a.nsubs > 1000))) {
        fprintf(stderr, "push_bench: --subscribers must be at least 1 (churn: at most 1000)\n");
        return 2;
    }
    if (pidlist) {
        char buf[512], *save = NULL;
        snprintf(buf, sizeof buf, "%s", pidlist);
        for (char *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
            if (a.npids == PB_MAX_PIDS) {
                fprintf(stderr, "push_bench: at most %d --server-pids\n", PB_MAX_PIDS);
                return 2;
            }
            pids[a.npids++] = (int)s_num("--server-pids", t, 1, INT_MAX);
        }
        a.pids = pids;
    }
    int rc = pb_run(&a, bc_put);
    if (rc != 2)
        bc_print(json);
    return rc;
}
