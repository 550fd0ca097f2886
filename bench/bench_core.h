/*
 * bench_core.h - the load generator's engine, independent of the system
 * under test: workloads, pacing (closed and open loop), reply checks,
 * latency histograms, server CPU from /proc, the progress line and the
 * report (key=value or JSON).
 *
 * One thread drives everything. A driver speaks to one system (imbox over
 * the gRPC C core, PostgreSQL over libpq, Redis over hiredis) and offers a
 * few asynchronous primitives: it starts an operation and, from its poll
 * function, completes it with bc_done(). The core composes the primitives
 * into the same workloads for every system, so that the figures compare
 * like with like:
 *
 *   send    one message (unique msg_id: every call is a durable store) to
 *           1 receiver, or to K receivers in one call (--group K)
 *   drain   a login storm: R receivers with a backlog each, every one
 *           pulling page after page, each pull acknowledging the page
 *           before it; checks every message is seen exactly once
 *   counts  counts per sender, then one pull of one conversation
 *   noop    the cheapest round trip the system has (the transport ceiling)
 *   mixed   a blend of send, pull and counts (--mix send=8,pull=1,counts=1)
 *   push    imbox only (a driver may leave it NULL): see imbox_bench.c
 *
 * Contract between core and driver:
 *   - The core owns every bc_op: it fills the request part, calls
 *     start(), and the op stays valid until the driver calls bc_done(op)
 *     exactly once (from inside poll(), never from inside start()). An op
 *     whose start() returned -1 is not started: no bc_done() for it.
 *   - The driver fills the result part before bc_done(): status (0 = the
 *     system answered as its contract says), and for BC_PULL the page, for
 *     BC_COUNTS the counts, for BC_SEND one outcome per receiver.
 *   - Strings the driver returns (msg ids, senders, cursors) are copied by
 *     the core inside bc_done(); the driver may free them afterwards.
 *   - The core never calls start() from inside poll() or bc_done(): it
 *     starts new ops once poll() has returned.
 *   - Request strings (receivers, sender, msg_id, cursor, content) stay
 *     valid until bc_done() for that op. The uids are fixed for the whole
 *     run: "<run>-r<i>" (receivers, i < --receivers) and "<run>-s<j>"
 *     (senders, j < --senders), so a driver may cache per-uid state.
 *   - A reply that does not parse is status -1 with status_name
 *     "MALFORMED" (any driver); the core counts errors by status_name.
 */
#ifndef IMBOX_BENCH_CORE_H
#define IMBOX_BENCH_CORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BC_ID_MAX 64       /* msg_id and uid bytes, NUL included */
#define BC_CURSOR_MAX 512  /* opaque cursor bytes, NUL included */
#define BC_GROUP_MAX 100   /* receivers in one group send */
#define BC_PAGE_MAX 1000   /* --page at most (imbox's page_size ceiling) */

typedef enum { BC_SEND, BC_PULL, BC_COUNTS, BC_NOOP, BC_KINDS } bc_kind;

/* Outcome of one receiver of a send. */
typedef enum { BC_STORED, BC_DUPLICATE, BC_REFUSED } bc_stored;

typedef struct bc_entry {        /* one message of a pulled page */
    const char *msg_id;
    const char *sender;
    size_t content_len;
} bc_entry;

typedef struct bc_count {        /* one sender's count */
    const char *sender;
    uint64_t count;
} bc_count;

typedef struct bc_op {
    bc_kind kind;
    /* request (set by the core) */
    const char *receivers[BC_GROUP_MAX]; /* BC_SEND: 1..group; others: [0],
                                    the caller (owner of the inbox) */
    int nreceivers;
    const char *sender;          /* BC_SEND: the sender; BC_PULL: the one
                                    conversation to pull, or NULL for all */
    const char *msg_id;          /* BC_SEND */
    const uint8_t *content;      /* BC_SEND */
    size_t content_len;
    const char *cursor;          /* BC_PULL: "" first, then the previous
                                    page's next_cursor (this acks it) */
    int page;                    /* BC_PULL: max messages */
    /* result (set by the driver before bc_done) */
    int status;                  /* 0 or the system's error code */
    const char *status_name;     /* e.g. "UNAVAILABLE", "pg:40P01"; NULL when 0 */
    bc_stored stored[BC_GROUP_MAX]; /* BC_SEND, per receiver */
    const char *refused_name;    /* BC_SEND: why a receiver was refused (the
                                    first one), e.g. "RESOURCE_EXHAUSTED";
                                    NULL: counted as "REFUSED" */
    const bc_entry *entries;     /* BC_PULL */
    size_t nentries;
    const char *next_cursor;     /* BC_PULL: cursor for the next pull */
    const bc_count *counts;      /* BC_COUNTS */
    size_t ncounts;
    /* core bookkeeping: drivers leave it alone */
    int64_t intended_ns, start_ns;
    void *core;
    struct bc_op *next;
} bc_op;

typedef struct bc_driver {
    const char *name;            /* "imbox", "postgres", "redis" */
    void *self;
    /* Connects (after the flags are parsed, before the workload); prints
     * why and returns -1 when the system cannot be reached. */
    int (*open)(void *self);
    void (*close)(void *self);
    /* Starts op; returns 0, or -1 when it cannot even be started (the run
     * stops with the message the driver printed). */
    int (*start)(void *self, bc_op *op);
    /* Waits until at least one op completes or deadline_ns (CLOCK_MONOTONIC)
     * passes, calling bc_done() for every completed op. Returns 0 or -1.
     * Also called with no op outstanding (open loop, between two starts):
     * then it just waits until deadline_ns. */
    int (*poll)(void *self, int64_t deadline_ns);
    /* Optional (NULL: none): what the driver wants in the report, as
     * bc_put_* calls, e.g. the server's own settings; called before the
     * timed run and again after it (a key put twice keeps its place). */
    void (*report)(void *self);
    /* Optional: runs a workload the core does not know (imbox's "push"),
     * returning an exit code; NULL or a return of -2: unknown workload.
     * It puts its figures (ok included) with bc_put_*; the core prints them
     * after its own header lines. open() has been called before it. */
    int (*custom)(void *self, const char *workload);
    /* Most ops the driver can have outstanding at once (e.g. its number of
     * connections when each runs one query at a time); 0: no limit of its
     * own. The core never starts more. */
    int max_outstanding;
} bc_driver;

/* Called by a driver for each completed op, from inside poll(). */
void bc_done(bc_op *op);

/* Report lines a driver may add from report() or custom(). */
void bc_put_int(const char *key, int64_t v);
void bc_put_str(const char *key, const char *v);
void bc_put_double(const char *key, double v, int decimals);
/* The same with the value already formatted: str says whether JSON quotes
 * it (push_core's put function, pb_put_fn, has this shape). A key put twice
 * keeps its place and takes the new value. */
void bc_put(const char *key, bool str, const char *val);

/* Prints what was put (key=value lines, or one JSON object) and forgets it;
 * bc_main calls it, a tool of its own (push_bench) may too. */
void bc_print(bool json);

/* utime + stime of pid (from /proc/PID/stat), and of this process, in
 * ns; -1 when pid is gone. */
int64_t bc_proc_cpu_ns(int pid);
int64_t bc_self_cpu_ns(void);

/* The CPU time and context switches of every thread of pids (not their
 * children), summed by kind: a thread's name (/proc/PID/task/TID/comm)
 * lower-cased, digits dropped, anything else but letters made one '_'
 * ("sh0-socket" and "sh2-socket" are "sh_socket", "ZMQbg/IO/0" is
 * "zmqbg_io"). bc_threads_read takes a snapshot (NULL: out of memory);
 * bc_threads_put puts, for each kind that used CPU or switched between
 * two snapshots, "thread_KIND_cpu_us_per_UNIT" and
 * "thread_KIND_ctx_per_UNIT" (divided by units), and returns the context
 * switches of all of them. A thread that ended between the snapshots is
 * not counted (its process's figure still is). */
typedef struct bc_threads bc_threads;
bc_threads *bc_threads_read(const int *pids, int npids);
int64_t bc_threads_put(const bc_threads *before, const bc_threads *after, const char *unit,
                       double units);
void bc_threads_free(bc_threads *t);

/* CLOCK_MONOTONIC in ns. */
int64_t bc_now_ns(void);

/* The common flags, parsed by bc_main; valid from open() on (custom
 * workloads read their rate, seconds, content and pids here). */
typedef struct bc_opts {
    const char *workload;
    int inflight;          /* closed loop: ops outstanding (default 16) */
    double rate;           /* open loop: calls/s; 0 = closed loop */
    int max_outstanding;   /* open loop: cap on outstanding ops (4096) */
    double seconds;        /* timed window (default 5; drain: its bound) */
    bool seconds_set;      /* --seconds was given */
    uint64_t count;        /* --count: calls to start instead; 0 = by time */
    int receivers, senders;
    size_t content;        /* bytes per message (default 100) */
    int group, page, backlog;
    bool random;           /* --pick random (default rr: round-robin) */
    int timeout_ms;        /* --timeout-ms: a driver's deadline per call
                              (default 10000) */
    const char *run_id;    /* prefix of uids and msg_ids */
    const int *pids;       /* --server-pid */
    int npids;
    bool json;
} bc_opts;
const bc_opts *bc_options(void);

/*
 * The command line every driver's main() hands to the core: bc_main parses
 * the common flags (below), leaves the driver's own flags to parse_extra,
 * runs the workload and prints the report. Returns the process exit code:
 * 0, 1 when a check failed or the system could not be driven, 2 on usage.
 *
 *   --workload send|drain|counts|noop|mixed  --inflight N (closed loop)
 *   --rate R (open loop: R calls/s, latency from the intended start)
 *   --max-outstanding N (open loop cap)  --timeout-ms MS
 *   --seconds S | --count N   --receivers R  --senders S  --content BYTES
 *   --group K  --page P  --backlog M (drain, counts: messages per receiver)
 *   --pick rr|random  --mix send=8,pull=1,counts=1  --server-pid P[,P...]
 *   --json  --run-id ID (prefix of uids and msg_ids; default: time and pid)
 *
 * parse_extra(flag, value, ctx) is called for a flag the core does not
 * know; driver flags always take a value (value is NULL when the command
 * line ends after the flag). It returns 1 when it took the flag, 0 when
 * the flag is unknown, -1 (after printing why) when the value is bad.
 */
typedef int (*bc_extra_fn)(const char *flag, const char *value, void *ctx);
int bc_main(int argc, char **argv, bc_driver *d, bc_extra_fn parse_extra, void *ctx,
            const char *usage_extra);

#endif
