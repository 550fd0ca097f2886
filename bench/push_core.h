/*
 * push_core.h - live delivery (Subscribe) under load: the machinery that
 * push_bench and imbox-bench --workload push share (push_core.c says how
 * it works and what it checks).
 *
 * pb_run runs one mode against a running imbox (one gateway or two) and
 * hands every figure to put, in order, as it is known: key, whether the
 * value is a string, and the value already formatted (numbers as decimal
 * text, strings unquoted); the last one is "ok". It runs on the calling
 * thread with a completion queue of its own (grpc_init/grpc_shutdown are
 * paired inside), and is not reentrant (one run at a time).
 *
 * Returns 0; 1 when a check failed or the server could not be driven (its
 * reason on stderr and in "error"); 2 when the arguments are unusable.
 */
#ifndef IMBOX_PUSH_CORE_H
#define IMBOX_PUSH_CORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum { PB_LATENCY, PB_IDLE, PB_CHURN } pb_mode;

typedef struct pb_args {
    pb_mode mode;
    const char *send_addr;   /* latency: where Sends go (HOST:PORT) */
    const char *sub_addr;    /* where the Subscribe streams go */
    const char *data_dir;    /* holds the servers' auth.secret */
    uint32_t nsubs;          /* subscribers (streams; churn: open at once) */
    uint64_t cycles;         /* churn: Subscribe-then-cancel cycles in all */
    bool cancel_at_start;    /* churn: cancel each at once, not once open */
    bool no_token;           /* churn, with cancel_at_start: no token sent */
    double rate;             /* latency: Sends/s, open loop */
    double seconds;          /* latency: send phase; idle: quiet window */
    size_t content;          /* bytes per message, at least 8 */
    uint32_t ack_every;      /* a subscriber acks after this many */
    uint32_t ack_ms;         /* ... or after this many ms (0: 100) */
    uint32_t per_channel;    /* streams per channel; 0: one, spread on stall */
    int max_inflight;        /* Sends outstanding at most */
    const int *pids;         /* latency, churn: servers whose CPU (and
                                churn: RSS) is measured */
    int npids;
    int gw_pid;              /* idle, churn: the gateway whose RSS is traced */
    uint32_t probe_calls;    /* idle, churn: Health and Send probes */
    double probe_rate;       /* idle: probes/s */
    const char *run_id;      /* prefix of uids and msg_ids, at most 40
                                characters; NULL: "pb" time and pid */
} pb_args;

typedef void (*pb_put_fn)(const char *key, bool str, const char *val);

int pb_run(const pb_args *a, pb_put_fn put);

/* An insecure channel to addr (HOST:PORT) on a connection of its own (a
 * local subchannel pool), without gRPC's retry machinery; NULL on failure.
 * imbox-bench's channels are made here too. */
struct grpc_channel;
struct grpc_channel *pb_channel(const char *addr);

#endif
