/*
 * rate_cost.c - what the Send rate limit (services/gateway/gw_rate.h) adds
 * to a Send on the completion-queue thread: N checks, as gw_send.c makes
 * them (a coarse monotonic clock read and gw_rate_take), over 1000 active
 * senders. Run under callgrind twice, without and with the checks; the
 * difference over N is the instructions per Send:
 *   valgrind --tool=callgrind build/bin/rate_cost       # loop only
 *   valgrind --tool=callgrind build/bin/rate_cost on    # loop + checks
 */
#include <stdio.h>
#include <time.h>

#include "gw_rate.h"

#define N 100000
#define SENDERS 1000

int main(int argc, char **argv)
{
    (void)argv;
    int on = argc > 1;
    gw_rate *r = gw_rate_new(1000000, 1000000);
    if (!r)
        return 1;
    char uid[32];
    unsigned long taken = 0;
    uint32_t wait_ms;
    for (int i = 0; i < N; i++) {
        snprintf(uid, sizeof uid, "sender-%d", i % SENDERS);
        if (on) {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
            int64_t now = (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
            taken += gw_rate_take(r, uid, 1, now, &wait_ms) == 0;
        }
    }
    printf("%lu taken\n", taken);
    gw_rate_free(r);
    return 0;
}
