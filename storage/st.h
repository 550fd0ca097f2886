/*
 * st.h - the inbox engine of one storage shard.
 *
 * A shard holds the offline inboxes of the receivers that hash to it, in one
 * RocksDB database at a directory. Each inbox is an ordered log: every stored
 * message gets the next sequence number of its receiver's inbox (1, 2, ...,
 * never reused, even after everything was acked and the process restarted).
 * Readers page through an inbox after a sequence number ("cursor"); an ack up
 * to a sequence number deletes everything up to it, at a cost bounded per
 * message acked that does not grow with the acks before it.
 * The on-disk format is documented at the top of st.c.
 *
 * Durability: st_append() and st_submit(ST_REQ_APPEND) report success only
 * after the message is in an fsync'ed write-ahead log. Appends that arrive
 * while a commit is in flight are gathered into the next commit (group
 * commit: one WriteBatch, one fsync for all of them). Acks are not fsync'ed:
 * an ack lost in a crash only causes a redelivery, which receivers dedup.
 *
 * Threads: every function may be called from any thread, concurrently, except
 * st_close(). Writes are executed by one internal writer thread, in the order
 * they were submitted as far as any one inbox can tell (an ack waits for the
 * commit of earlier appends to its own inbox; acks and appends of different
 * inboxes may complete in another order). Reads run on the caller's thread
 * against the last committed state (a read never sees an append that is not
 * yet durable). The clock (st_options.clock) is also called from RocksDB's
 * background threads, by the dedup compaction filter: it must be
 * thread-safe.
 *
 * Time: a message's send_time_ms is max(clock, the inbox's previous
 * send_time_ms), so times never decrease within an inbox and its expired
 * messages are always its oldest ones. Expired messages still count toward
 * the inbox quota until they are purged (by a read that meets them,
 * st_counts(), or the periodic st_expire()).
 *
 * Errors: functions return ST_OK (0) or a negative st_code and fill the
 * caller's st_error (if not NULL) with the code and a message naming the
 * field or the cause. A refused call changes nothing. st_open() refuses,
 * with one line saying why, a directory it cannot create or lock, a path
 * over ST_DIR_MAX bytes, and a database that is not this format's (another
 * RocksDB database holding data, or a corrupt one). Programmer mistakes
 * (NULL shard, NULL output pointers) are assertions, not error codes.
 *
 * Disk trouble: a write that RocksDB refuses (disk full, I/O error) fails
 * its requests with ST_ENOSPC (no space left) or ST_EIO, and RocksDB then
 * refuses every write until the database is reopened. The writer reopens
 * it by itself, at most once a second, when the file system has room for
 * the memtables' flush again (statvfs), and only when no reader is inside
 * the database at that instant (readers never wait for it: a reopen that
 * finds one tries again at the next round). Every acknowledged write is in
 * the fsync'ed log and survives the reopen; a write that was refused may
 * be stored anyway (its log record was complete but the fsync failed), so
 * a refused Send is retried with the same msg_id. Reads keep working while
 * writes are refused, except during a reopen that failed (ST_EIO until the
 * next one succeeds).
 *
 * Strings: uids, sender uids and msg_ids are NUL-terminated. A uid is 1..64
 * bytes of valid UTF-8 without control characters (so never containing 0x00,
 * which the key layout uses as separator); a msg_id is 1..128 bytes, any
 * bytes but 0x00. Content is (pointer, length), up to 64 KiB, any bytes.
 */
#ifndef IMBOX_ST_H
#define IMBOX_ST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "im_base.h"

/* Result codes. Each maps to one gRPC status at the gateway. */
typedef enum st_code {
    ST_OK = 0,
    ST_EINVAL = -1,     /* malformed input (INVALID_ARGUMENT) */
    ST_EFULL = -2,      /* inbox quota reached (RESOURCE_EXHAUSTED) */
    ST_ECURSOR = -3,    /* cursor beyond anything stored (INVALID_ARGUMENT) */
    ST_EIO = -4,        /* RocksDB failed; nothing was acknowledged (INTERNAL) */
    ST_ECORRUPT = -5,   /* a stored record does not decode (DATA_LOSS) */
    ST_ECLOSED = -6,    /* the shard is closing (UNAVAILABLE) */
    ST_ENOMEM = -7,     /* allocation failed (RESOURCE_EXHAUSTED) */
    ST_ENOSPC = -8,     /* the shard's disk is full: nothing was written
                           (RESOURCE_EXHAUSTED); see "Disk trouble" below */
} st_code;

/* Hard ceilings of the format (im_base.h); configurable limits stay below. */
#define ST_UID_MAX IM_UID_MAX         /* bytes of a uid (receiver or sender) */
#define ST_MSGID_MAX IM_MSGID_MAX     /* bytes of a msg_id */
#define ST_CONTENT_MAX IM_CONTENT_MAX /* bytes of content */
#define ST_PAGE_MAX IM_PAGE_MAX       /* messages per page */
#define ST_DIR_MAX 3900 /* bytes of a data directory's path: PATH_MAX (4096)
                           less room for RocksDB's file names in it */

typedef struct st_error {
    int code;      /* an st_code */
    char msg[192]; /* NUL-terminated, names the field or the cause */
} st_error;

/* Returns a static name for a code ("ST_EFULL"...). */
const char *st_code_name(int code);

/*
 * Checks a uid by the rule of im_uid_check() (im_base.h): ST_OK, or
 * ST_EINVAL with err filled with a message that starts with `field`.
 */
int st_check_uid(const char *uid, const char *field, st_error *err);

/* ---------------------------------------------------------------- options */

typedef int64_t (*st_clock_fn)(void *ctx); /* ms since the Unix epoch */

typedef struct st_options {
    uint64_t max_inbox;         /* messages per inbox (default 100000) */
    int64_t ttl_ms;             /* stored messages expire (default 30 days) */
    int64_t dedup_window_ms;    /* dedup index kept after a write (24 h) */
    uint32_t max_content;       /* bytes (default 64 KiB, <= ST_CONTENT_MAX) */
    uint32_t max_batch;         /* appends per group commit (default 4096) */
    bool sync;                  /* fsync appends (default true; false only
                                   for tests that do not test durability) */
    size_t block_cache_bytes;   /* RocksDB block cache (default 64 MiB) */
    st_clock_fn clock;          /* default: CLOCK_REALTIME */
    void *clock_ctx;
    /* Who executes the writes. NULL (default): the engine's own writer
     * thread. Set (inline mode): no thread; st_submit() queues and calls
     * wake(wake_arg) when the queue was empty, and the owner calls st_run()
     * to execute what is queued on its own thread, `done` callbacks
     * included: no thread hand-off either way. Then one thread at a time
     * may call st_run() and st_close() (the owner, or owners that hand the
     * engine over under a lock of their own, as the shard's socket thread
     * and its committer do), and none of them may call the blocking
     * helpers (st_append, st_ack, st_expire...): another thread may. */
    void (*wake)(void *wake_arg);
    void *wake_arg;
} st_options;

/* Fills *o with the defaults above. */
void st_options_init(st_options *o);

/* --------------------------------------------------------- open and close */

typedef struct st_shard st_shard;

/*
 * Opens (creating if needed) the shard at directory `dir`. `o` may be NULL
 * for the defaults; it is copied. On success *out owns the shard until
 * st_close(). On failure *out is NULL and err says why.
 */
int st_open(const char *dir, const st_options *o, st_shard **out, st_error *err);

/*
 * Stops accepting requests, completes every request already accepted (their
 * callbacks run before this returns), closes the database, frees the shard
 * and sets *s to NULL. NULL or *s == NULL is a no-op.
 */
void st_close(st_shard **s);

/* ---------------------------------------------------------------- writes */

/* One message for one receiver: inputs, then outputs filled by the engine. */
typedef struct st_put {
    const char *receiver;   /* in: inbox owner */
    const char *sender;     /* in: authenticated sender uid */
    const char *msg_id;     /* in: dedup key */
    int32_t msg_type;       /* in */
    const void *content;    /* in: may be NULL when content_len == 0 */
    size_t content_len;     /* in */

    int code;               /* out: ST_OK, ST_EFULL, ST_EIO... */
    const char *error;      /* out: static reason when code != ST_OK */
    bool duplicate;         /* out: already stored within the dedup window */
    uint64_t seq;           /* out: the message's sequence in its inbox */
    int64_t send_time_ms;   /* out: when stored (the original, if duplicate) */
} st_put;

typedef enum st_req_type {
    ST_REQ_APPEND = 1, /* store req->puts (durable when done) */
    ST_REQ_ACK,        /* delete req->uid's messages with seq <= req->upto
                          (only req->sender's when it is not NULL) */
    ST_REQ_EXPIRE,     /* purge req->uid's expired messages (req->deleted) */
    ST_REQ_COUNTS,     /* purge req->uid's expired messages, then count its
                          messages per sender (req->counts, as st_counts) */
} st_req_type;

typedef struct st_count {
    char sender[ST_UID_MAX + 1];
    uint64_t count;
    int64_t last_send_time_ms;
} st_count;

typedef struct st_req st_req;
typedef void (*st_done_fn)(st_req *req);

/*
 * A write request. The caller owns it and everything it points to, and keeps
 * them alive and unchanged from st_submit() until `done` is called.
 */
struct st_req {
    st_req_type type;
    /* ST_REQ_APPEND */
    st_put *puts;
    size_t nputs;
    /* ST_REQ_ACK */
    const char *uid;
    const char *sender; /* NULL: whole inbox; else one conversation */
    uint64_t upto;      /* 0 acks nothing */
    uint64_t deleted;   /* out: messages this ack deleted */
    /* ST_REQ_COUNTS (uid as above), out: malloc'ed, most recent first;
     * the caller free()s counts (NULL when ncounts == 0) */
    st_count *counts;
    size_t ncounts;
    uint64_t total;

    st_error err;       /* out: request-level result (err.code) */
    st_done_fn done;    /* called exactly once, on the writer thread (in
                           inline mode: the thread in st_run), when
                           the request is complete; must not block long */
    void *arg;          /* for the caller */

    st_req *next_;      /* private to the engine */
};

/*
 * Validates and queues a write. On ST_OK the request was accepted and
 * req->done will be called exactly once (also when the shard closes). On
 * error nothing was queued, `done` is never called, and both the return
 * value and req->err say why (ST_EINVAL for malformed input: then no put of
 * the request is stored, ST_ECLOSED after st_close began).
 *
 * Append outcome: req->err.code is ST_OK when every put has its own result
 * (ST_OK, or ST_EFULL when that inbox is at quota: nothing is dropped
 * silently); ST_EIO when the commit failed (then every put has ST_EIO too).
 * Ack outcome: ST_OK, ST_ECURSOR when upto is beyond the inbox's highest
 * sequence ever assigned (nothing deleted), ST_EIO.
 */
int st_submit(st_shard *s, st_req *req);

/* Inline mode (st_options.wake set): executes every request queued so far
 * on the calling thread, the appends gathered into group commits as the
 * writer thread would, and returns how many it executed. */
size_t st_run(st_shard *s);

/* Synchronous wrappers: submit and wait for completion. */
int st_append(st_shard *s, st_put *puts, size_t n, st_error *err);
int st_ack(st_shard *s, const char *uid, const char *sender, uint64_t upto,
           uint64_t *deleted, st_error *err);

/* ----------------------------------------------------------------- reads */

typedef struct st_msg {
    uint64_t seq;
    int64_t send_time_ms;
    int32_t msg_type;
    const char *sender;  /* NUL-terminated, owned by the page */
    const char *msg_id;  /* NUL-terminated, owned by the page */
    const uint8_t *content;
    size_t content_len;
} st_msg;

typedef struct st_page {
    st_msg *msgs;        /* oldest first */
    size_t n;
    bool more;           /* more messages wait after the last one */
    uint64_t high;       /* highest sequence ever assigned in this inbox */
    void *mem_;          /* private */
} st_page;

/*
 * Reads up to `limit` (1..ST_PAGE_MAX) messages of inbox `uid` with
 * seq > after, oldest first; with `sender` != NULL only that sender's (the
 * cost then grows with that conversation, not with the inbox). `max_bytes`
 * (0 = no limit) caps the summed content size of the page; the first message
 * is always returned. Expired messages are never returned. The page is
 * written to *out and must be freed with st_page_free() on ST_OK (on error
 * it holds nothing). `after` beyond the inbox's highest sequence is
 * ST_ECURSOR.
 */
int st_read(st_shard *s, const char *uid, const char *sender, uint64_t after,
            uint32_t limit, size_t max_bytes, st_page *out, st_error *err);

void st_page_free(st_page *p);

/*
 * Per-sender counts of the messages waiting in inbox `uid`, most recent
 * last_send_time_ms first (ties by sender). *out is malloc'ed (free() it;
 * NULL when *n == 0); *total is the inbox's message count. Expired messages
 * are purged before counting. Waits for the writer (it is ST_REQ_COUNTS);
 * a service thread that must not wait calls st_counts_read, below, and
 * submits ST_REQ_COUNTS itself only when that asks for a purge.
 */
int st_counts(st_shard *s, const char *uid, st_count **out, size_t *n,
              uint64_t *total, st_error *err);

/*
 * The same counts read at once on the calling thread (any thread), when
 * no message of the inbox has expired: the usual case, and then nothing
 * needs the writer. When the inbox's oldest message has expired, *purge is
 * true and nothing is read (ST_OK, *out NULL): count through the writer
 * (st_counts or ST_REQ_COUNTS), which purges first. The counts include
 * every write committed before the call.
 */
int st_counts_read(st_shard *s, const char *uid, st_count **out, size_t *n,
                   uint64_t *total, bool *purge, st_error *err);

/* State of one inbox; all zero for an inbox that never existed. */
typedef struct st_inbox {
    uint64_t high;          /* highest sequence ever assigned */
    uint64_t count;         /* messages stored (acked ones excluded) */
    uint64_t floor;         /* every seq <= floor is deleted */
    int64_t last_time_ms;   /* send time of the newest message ever */
} st_inbox;

int st_inbox_info(st_shard *s, const char *uid, st_inbox *out, st_error *err);

/* ------------------------------------------------------------ maintenance */

/*
 * Purges every expired message of every inbox (counts stay exact). Meant to
 * be called periodically by the service (reads already hide expired ones and
 * purge them lazily). *purged (may be NULL) gets how many were deleted.
 */
int st_expire(st_shard *s, uint64_t *purged, st_error *err);

/* Compacts the whole database (runs the dedup-window compaction filter). */
int st_compact(st_shard *s, st_error *err);

/*
 * Writes the memtables to SST files and waits for it (RocksDB flush), so
 * that a restart has no write-ahead log to replay. For tools, benchmarks
 * and tests; the engine needs no explicit flush.
 */
int st_flush(st_shard *s, st_error *err);

/*
 * Writes a consistent copy of the database into directory `dir` (RocksDB
 * checkpoint), which must not exist; its parent must. Every append
 * acknowledged before the call is in the copy; the shard keeps serving
 * meanwhile. On the same file system the SST files are hard links
 * (immutable files: no bytes copied, but no second copy on the disk
 * either), elsewhere they are copied. The copy opens with st_open().
 */
int st_checkpoint(st_shard *s, const char *dir, st_error *err);

#define ST_BATCH_BUCKETS 11  /* puts per commit: 1, 2, 4 .. 1024 */
#define ST_COMMIT_BUCKETS 12 /* commit time: 100 us .. 1 s */
extern const double st_batch_le[ST_BATCH_BUCKETS];
extern const double st_commit_le_us[ST_COMMIT_BUCKETS];

typedef struct st_stats {
    uint64_t appends;      /* puts stored (duplicates excluded) */
    uint64_t duplicates;   /* puts answered from the dedup index */
    uint64_t full;         /* puts refused by the inbox quota */
    uint64_t commits;      /* group commits (one fsync each when sync) */
    uint64_t max_batch;    /* most puts in one commit */
    uint64_t acks;         /* ack requests executed */
    uint64_t deleted;      /* messages deleted by acks and expiry */
    uint64_t expired;      /* of which by expiry */
    uint64_t row_hits;     /* 'I'/'C' reads the writer's row cache answered */
    uint64_t row_misses;   /* ... and those it read from RocksDB */
    uint64_t ack_memos;    /* whole-inbox acks that took their rows from
                              the last read's memo instead of a scan */
    /* For metrics. batch_hist[i]: commits of at most st_batch_le[i] puts
     * (not cumulative; [ST_BATCH_BUCKETS]: more), batch_sum their puts;
     * commit_us_hist likewise for the microseconds the synced
     * rocksdb_write of a commit took (st_commit_le_us), commit_us_sum. */
    uint64_t batch_hist[ST_BATCH_BUCKETS + 1];
    uint64_t batch_sum;
    uint64_t commit_us_hist[ST_COMMIT_BUCKETS + 1];
    uint64_t commit_us_sum;
    /* Messages stored in the shard now (acked and expired ones gone):
     * counted from the inbox heads by each expiry sweep (st_expire) and
     * kept up to date by the writes since; messages_known is false until
     * the first sweep. */
    bool messages_known;
    uint64_t messages;
} st_stats;

void st_stats_get(st_shard *s, st_stats *out);

/* RocksDB's integer property `name` (rocksdb_property_int: e.g.
 * "rocksdb.cur-size-all-mem-tables") into *out; 0, or -1 when RocksDB
 * has no such property or the database is closed (DISK TROUBLE). Any
 * thread: a read. */
int st_property(st_shard *s, const char *name, uint64_t *out);

/*
 * Whether the shard takes writes now: its database is open and not broken
 * (see DISK TROUBLE in st.c: after a write RocksDB refused, false until the
 * writer has reopened the database). Any thread; a snapshot that may change
 * at once. Readiness probes answer it.
 */
bool st_writable(st_shard *s);

/*
 * Diagnostics for tests and tools: the number of live keys of one table of
 * the format ('M' messages, 'S' sender index, 'C' counters, 'D' dedup,
 * 'I' inbox heads). A full scan: not for the serving path.
 */
uint64_t st_debug_keys(st_shard *s, char table);

/*
 * Diagnostics for tests and tools: flushes the memtables (st_flush), then
 * reports the deletions held in the live SST files, from RocksDB's own
 * table properties: *deletes point deletions, *range_deletes range
 * deletion fragments (nested, overlapping ranges fragment into many).
 */
int st_debug_tombstones(st_shard *s, uint64_t *deletes, uint64_t *range_deletes,
                        st_error *err);

#endif
