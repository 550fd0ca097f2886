/*
 * peer.h - what the two peer drivers (pg_bench.c, redis_bench.c) share:
 * a queue of calls, a growable array, the number of calls a run has at
 * once (so that connections are opened before it, not during it), and
 * their flags' integer parsing. Not a driver: each driver owns its
 * connections and speaks its own protocol.
 */
#ifndef IMBOX_BENCH_PEER_H
#define IMBOX_BENCH_PEER_H

#include "bench_core.h"

#include <stdbool.h>
#include <stddef.h>

/* Calls in flight at once when the workload's own calls outnumber
 * --inflight: the fill before a drain or counts run (bench_core.c sends
 * as many as 128 at once, untimed) and the drain (every receiver pulls at
 * once). A guess that is short only costs a blocking connect later. */
#define PEER_FILL_CALLS 128

/* A growable ring of calls, oldest first. Zeroed = empty. */
typedef struct peer_fifo {
    bc_op **v;
    size_t cap, head, n;
} peer_fifo;

/* Appends op; false when out of memory (op is not queued). */
bool peer_fifo_push(peer_fifo *f, bc_op *op);
/* The oldest call, removed; NULL when empty. */
bc_op *peer_fifo_pop(peer_fifo *f);
void peer_fifo_free(peer_fifo *f);

/* Makes *v hold at least need elements of elem bytes (doubling); false
 * when out of memory (*v and *cap unchanged). */
bool peer_grow(void **v, size_t *cap, size_t need, size_t elem);

/* The most calls the run described by o has in flight at once (closed
 * loop; an open loop returns open_loop_guess). */
int peer_calls_at_once(const bc_opts *o, int open_loop_guess);

/* A driver flag's integer in lo..hi into *out: parse_extra's answer (1
 * taken, -1 bad value, after printing why with prog's name). */
int peer_int_flag(const char *prog, const char *flag, const char *v, int lo, int hi, int *out);

#endif
