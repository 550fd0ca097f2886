/*
 * st.c - the inbox engine of one shard on RocksDB. The API is st.h.
 *
 * ON-DISK FORMAT (format version 1, one RocksDB database, default column
 * family). Every key is  TABLE(1 byte) | uid | 0x00 | rest  where uid is the
 * inbox owner (receiver). uids never contain 0x00 (st_check_uid), so the
 * prefix  TABLE | uid | 0x00  identifies one inbox's rows of one table
 * exactly: "ab" and "abc" have the distinct prefixes "Mab\0" and "Mabc\0".
 * The prefix extractor (s_prefix_*) cuts that prefix (for 'D' rows, only
 * ever point-read, the whole key); it feeds the prefix bloom filters of
 * the SST files, and every scan also sets iterate_upper_bound, so a
 * page read touches only its own inbox.
 * Integers are big-endian (keys sort numerically), u = unsigned, i = signed.
 *
 *  'V' 0x00                               -> "imbox-st-1"   format marker
 *  'I' uid 0x00                           -> inbox head, 33 bytes:
 *        u8 version=1 | u64 high | u64 count | u64 floor | i64 last_time_ms
 *        high: highest seq ever assigned (never decreases, so never reused);
 *        count: messages stored; floor: every seq <= floor was deleted by a
 *        whole-inbox ack; last_time_ms: send time of the newest message.
 *  'M' uid 0x00 u64 seq                   -> message record:
 *        u8 version=1 | i64 send_time_ms | i32 msg_type | u8 sender_len |
 *        sender | u8 msg_id_len | msg_id | content (the rest of the value)
 *  'S' uid 0x00 sender 0x00 u64 seq       -> "" (per-sender index of 'M')
 *  'C' uid 0x00 sender                    -> per-sender counter, 17 bytes:
 *        u8 version=1 | u64 count | i64 last_send_time_ms
 *  'D' uid 0x00 sender 0x00 msg_id        -> dedup entry, 17 bytes:
 *        u8 version=1 | u64 seq | i64 send_time_ms
 *
 * Invariants kept by the single writer thread: for every 'M' row there is
 * exactly one 'S' row, counted once in its sender's 'C' row and in the 'I'
 * count; a 'C' row exists only with count > 0. send_time_ms never decreases
 * within an inbox (it is max(clock, last_time_ms)), so the expired messages
 * of an inbox are always a prefix of it.
 *
 * WRITES. One writer thread owns every mutation. It takes everything queued
 * and gathers the appends into one WriteBatch, written with sync (one fsync
 * for all of them: group commit); only then are their callbacks called.
 * Appends in one batch see each other's effects through a per-batch overlay
 * (s_ov) of the 'I', 'C' and 'D' rows they read and modify; the 'I' and 'C'
 * rows come from the writer's cache of committed rows when it holds them
 * (ROW CACHE, below), else from RocksDB. An ack runs at
 * once as its own small WriteBatch, not fsync'ed (a lost ack is only a
 * redelivery, which receivers dedup); if the open batch appends to the
 * ack's inbox, that batch is committed first, so that every inbox sees its
 * writes in submission order.
 *
 * ACKS: DELETIONS WHOSE COST DOES NOT GROW WITH THE ACKS BEFORE THEM. An
 * ack removes 'M' and 'S' rows and rewrites one 'I' row and the 'C' rows of
 * the senders concerned. A whole-inbox ack up to seq N first learns which
 * sender each row in (floor, N] belongs to: from the memo the read of that
 * page left (st_memo.h) when there is one, else by scanning the 'M' rows
 * (the rows the receiver has just read, so their blocks are in the
 * memtable or the OS page cache); then it
 * deletes each run of rows by the cheaper of two means:
 *  - a run of at most ST_ACK_POINT_MAX (8) rows, row by row: the 'M' rows
 *    of an ack of a few messages (a small page, every message pushed to a
 *    live stream), and the 'S' rows of a sender with few messages in it;
 *  - a longer run, by one range deletion: 'M' (floor, N], and a sender's
 *    'S' rows in (floor, N]. A page of 1000 from one sender costs two
 *    entries, not 2000.
 * Measured (docs/BENCHMARKS.md, ack_bench): a point delete costs the ack
 * about 2 us; a range deletion costs little to write but a few us and
 * about 250 bytes at every flush and restart until compaction, so ranges for
 * every ack (100,000 single-message acks: 200,000 ranges) made a restart
 * take 1.2 s and a flush 0.6 s, and points for pages of 50 halved the
 * drain rate. Either way an ack writes at most two entries per message
 * and at most 2/ST_ACK_POINT_MAX range deletions per message.
 * Every range deletion starts above the previous floor and ends at the
 * new one: no two range deletions of a table ever overlap, and all
 * of them lie at or below the floor. RocksDB fragments overlapping ranges
 * pairwise (the first format deleted each sender's 'S' rows from seq 0 on
 * every ack, and 20,000 single-message acks then took 53 s and 7 GB to
 * replay at restart); disjoint ranges cost it O(n log n) at flush and
 * recovery. A conversation ack (one sender) point-deletes the sender's 'S'
 * rows in (floor, N] and the 'M' rows they point to: those are scattered in
 * the inbox, so ranges would not help, and the cost grows with the
 * conversation, not with the inbox.
 *
 * On disk this means a point tombstone (about a key's size) per message
 * acked in small acks, and a few range tombstones per large ack, until
 * compaction drops them; reads seek past them (every scan starts above the
 * floor). Compatibility: the rows and their meaning did not change, so the
 * format marker is still "imbox-st-1" and a database written before opens
 * as it is. Its old range deletions of 'S' rows may lie above the floor
 * (conversation acks used them); the reads that ignore range deletions
 * therefore check that an 'S' row's 'M' row exists before they use it (a
 * conversation ack point-deletes such a stale 'S' row without counting it).
 *
 * EXPIRY. Expired messages are hidden by every read and purged by an ack up
 * to the last expired one (ST_REQ_EXPIRE), lazily when a read meets them and
 * for all inboxes by st_expire(). They are not dropped by a compaction
 * filter, because a filter cannot keep the 'C' and 'I' counts exact. The
 * dedup entries, which no count depends on, are dropped by the compaction
 * filter once their window has passed (and ignored by lookups before that).
 *
 * DISK TROUBLE. A write RocksDB refuses (ENOSPC in the log, or a flush's
 * background error) leaves the database refusing every write, and the C API
 * of RocksDB 7.8 has no DB::Resume, nor does its automatic recovery cover a
 * failed log write (measured: still refused 20 s after space returned). So
 * the writer marks the shard broken and, at the start of a round, at most
 * every ST_REOPEN_MS and once statvfs shows room for the memtables' flush,
 * closes and reopens the database under the write side of `dblock`, taken
 * with trywrlock: a reader inside the database (every public read holds the
 * read side) postpones the reopen to the next round instead of blocking the
 * writer (st_expire holds its read lock while it waits for the writer).
 * Reopening replays the fsync'ed log, so every acknowledged write is kept;
 * a torn last record is dropped (point-in-time recovery). RocksDB's info log
 * is off: Debian's librocksdb is built with assertions, and once the LOG
 * file hit ENOSPC its next line aborted the process (WritableFileWriter
 * asserts on a write after an error; measured on an 8 MiB tmpfs).
 *
 * BACKUP. st_checkpoint() is RocksDB's checkpoint of the open database,
 * under the read side of `dblock` like every public read (so a reopen
 * waits for it): the memtables are flushed first (log_size_for_flush 0),
 * then the live SST files are hard-linked (copied across file systems) and
 * the MANIFEST, OPTIONS and live logs copied into a new directory, which
 * st_open() opens as it is. Every append acknowledged before the call
 * is in it; writes go on meanwhile (the writer never takes `dblock`).
 */
#include "st.h"
#include "st_memo.h"

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <time.h>

#include <rocksdb/c.h>

#include "im_base.h"
#include "im_log.h"

#define ST_FORMAT "imbox-st-1"
#define ST_REC_VERSION 1
#define ST_KEY_MAX (1 + ST_UID_MAX + 1 + ST_UID_MAX + 1 + ST_MSGID_MAX + 8)
#define ST_HEAD_LEN 33
#define ST_CNT_LEN 17
#define ST_DEDUP_LEN 17
#define ST_MSG_FIXED (1 + 8 + 4 + 1 + 1) /* record bytes besides strings */

/* Defaults, with the reason for each. */
#define ST_DEF_MAX_INBOX 100000ULL                 /* API.md limit */
#define ST_DEF_TTL_MS (30LL * 24 * 3600 * 1000)    /* API.md: 30 days */
#define ST_DEF_DEDUP_MS (24LL * 3600 * 1000)       /* PROTOCOL.md: 24 h */
#define ST_DEF_MAX_BATCH 4096u   /* bounds one commit's memory and latency */
#define ST_DEF_CACHE (64u << 20) /* enough for the hot pages of a shard */
#define ST_MEMTABLE_BYTES (16u << 20) /* see st_open */
/* An ack deletes a run of up to this many rows row by row, a longer one
 * with one range deletion (see ACKS; measured in docs/BENCHMARKS.md). */
#define ST_ACK_POINT_MAX 8
/* A shard whose writes were refused tries to reopen its database at most
 * this often (a reopen replays the log and flushes the memtables). */
#define ST_REOPEN_MS 1000
/* ... and only with this much room on its file system besides the
 * memtables' size (the flush's SST files, a new log, the MANIFEST). */
#define ST_REOPEN_SLACK (1u << 20)
#define ST_LOG_HEADER_LEVEL 5 /* rocksdb::HEADER_LEVEL: nothing is logged */

struct st_shard {
    rocksdb_t *db;
    rocksdb_options_t *dbopts;
    rocksdb_block_based_table_options_t *table;
    rocksdb_cache_t *cache;
    rocksdb_slicetransform_t *prefix;
    rocksdb_compactionfilter_t *filter;
    rocksdb_writeoptions_t *wo_sync;   /* appends */
    rocksdb_writeoptions_t *wo_async;  /* acks */
    rocksdb_readoptions_t *ro_get;     /* point reads */
    st_memo *memo;                     /* the last pages read (st_memo.h) */
    st_options o;

    pthread_mutex_t mu;  /* guards the queue, closing and stats */
    pthread_cond_t cv;
    st_req *head, *tail;
    bool closing;
    pthread_t writer;    /* the writer thread, unless o.wake (inline) */
    struct s_writer *inl; /* inline mode: the writer state st_run uses */
    st_stats stats;
    int64_t msg_delta;    /* stored minus deleted since open (under mu) */
    int64_t msg_base;     /* messages at open, as the last sweep counted */

    /* DISK TROUBLE. The read side of dblock is held by every public read
     * while it uses db; the writer takes the write side to reopen it. db is
     * NULL only after a reopen that failed. The rest is the writer's. */
    pthread_rwlock_t dblock;
    char *dir;
    bool broken;          /* RocksDB refuses writes: reopen before writing */
    atomic_bool writable; /* !broken, for st_writable() on any thread */
    int broken_code;      /* ST_ENOSPC or ST_EIO, for requests meanwhile */
    int64_t reopen_at;    /* monotonic ms of the next reopen attempt */
};

/* ------------------------------------------------------------- utilities */

/* Fills err (if not NULL) and returns code, so that `return s_err(...)`. */
static int s_err(st_error *err, int code, const char *fmt, ...)
{
    if (err) {
        err->code = code;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return code;
}

static void s_ok(st_error *err)
{
    if (err) {
        err->code = ST_OK;
        err->msg[0] = '\0';
    }
}

/* Translates a RocksDB error string (freeing it) into ST_EIO. */
static int s_rocks_err(st_error *err, const char *what, char *rerr)
{
    s_err(err, ST_EIO, "%s: %s", what, rerr ? rerr : "unknown RocksDB error");
    rocksdb_free(rerr);
    return ST_EIO;
}

/* Whether a RocksDB error says the file system is full. */
static bool s_nospace(const char *rerr)
{
    return rerr && (strstr(rerr, "No space left") || strstr(rerr, "NoSpace") ||
                    strstr(rerr, "space limit"));
}

/* A write RocksDB refused: fills err, marks the shard broken (see DISK
 * TROUBLE) and says so once on stderr. Frees rerr. */
static int s_write_failed(st_shard *s, st_error *err, const char *what, char *rerr);

const char *st_code_name(int code)
{
    switch (code) {
    case ST_OK: return "ST_OK";
    case ST_EINVAL: return "ST_EINVAL";
    case ST_EFULL: return "ST_EFULL";
    case ST_ECURSOR: return "ST_ECURSOR";
    case ST_EIO: return "ST_EIO";
    case ST_ECORRUPT: return "ST_ECORRUPT";
    case ST_ECLOSED: return "ST_ECLOSED";
    case ST_ENOMEM: return "ST_ENOMEM";
    case ST_ENOSPC: return "ST_ENOSPC";
    default: return "ST_UNKNOWN";
    }
}

static int64_t s_default_clock(void *ctx)
{
    (void)ctx;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int s_write_failed(st_shard *s, st_error *err, const char *what, char *rerr)
{
    int code = s_nospace(rerr) ? ST_ENOSPC : ST_EIO;
    if (!s->broken)
        im_log(IM_LOG_ERROR, "storage", NULL, "%s: %s: %s; writes are refused until the "
               "database reopens", s->dir, what, rerr ? rerr : "unknown RocksDB error");
    if (code == ST_ENOSPC)
        s_err(err, code, "%s", IM_TEXT_DISK_FULL);
    else
        s_err(err, code, "%s: %s", what, rerr ? rerr : "unknown RocksDB error");
    rocksdb_free(rerr);
    st_memo_clear(s->memo); /* what was written is unknown: read again */
    if (!s->broken) {
        s->broken = true;
        atomic_store(&s->writable, false);
        s->reopen_at = im_mono_ms() + ST_REOPEN_MS;
    }
    s->broken_code = code;
    return code;
}

/* Public reads hold the read side of dblock while they use the database. */
static int s_rd(st_shard *s, st_error *err)
{
    pthread_rwlock_rdlock(&s->dblock);
    if (s->db)
        return ST_OK;
    pthread_rwlock_unlock(&s->dblock);
    return s_err(err, ST_EIO, "database closed: its reopen after a write error failed; "
                              "retrying every %d ms", ST_REOPEN_MS);
}

static void s_rd_end(st_shard *s)
{
    pthread_rwlock_unlock(&s->dblock);
}

static int64_t s_now(const st_shard *s)
{
    return s->o.clock(s->o.clock_ctx);
}

/* ------------------------------------------------------------ validation */

int st_check_uid(const char *uid, const char *field, st_error *err)
{
    char msg[sizeof err->msg];
    if (im_uid_check(uid, field, msg, sizeof msg) == 0)
        return ST_OK;
    return s_err(err, ST_EINVAL, "%s", msg);
}

static int s_check_put(const st_shard *s, const st_put *p, size_t i, st_error *err)
{
    char msg[sizeof err->msg]; /* the index is formatted on failure only */
    if (im_uid_check(p->receiver, "receiver", msg, sizeof msg) ||
        im_uid_check(p->sender, "sender", msg, sizeof msg))
        return s_err(err, ST_EINVAL, "puts[%zu].%s", i, msg);
    if (!p->msg_id)
        return s_err(err, ST_EINVAL, "puts[%zu].msg_id: missing", i);
    size_t n = strnlen(p->msg_id, ST_MSGID_MAX + 1);
    if (n == 0 || n > ST_MSGID_MAX)
        return s_err(err, ST_EINVAL, "puts[%zu].msg_id: must be 1..%d bytes", i, ST_MSGID_MAX);
    if (p->content_len > s->o.max_content)
        return s_err(err, ST_EINVAL, "puts[%zu].content: %zu bytes, limit %u", i,
                     p->content_len, s->o.max_content);
    if (p->content_len > 0 && !p->content)
        return s_err(err, ST_EINVAL, "puts[%zu].content: NULL with length %zu", i,
                     p->content_len);
    return ST_OK;
}

/* ------------------------------------------------------------------ keys */

/* TABLE | uid | 0x00; returns its length. */
static size_t s_key_prefix(uint8_t *k, char table, const char *uid)
{
    size_t n = strlen(uid);
    k[0] = (uint8_t)table;
    memcpy(k + 1, uid, n);
    k[1 + n] = 0;
    return n + 2;
}

static size_t s_key_msg(uint8_t *k, const char *uid, uint64_t seq)
{
    size_t n = s_key_prefix(k, 'M', uid);
    im_put64(k + n, seq);
    return n + 8;
}

/* 'S' uid 0 sender 0 [seq] (seq appended when with_seq). */
static size_t s_key_sidx(uint8_t *k, const char *uid, const char *sender, uint64_t seq)
{
    size_t n = s_key_prefix(k, 'S', uid);
    size_t m = strlen(sender);
    memcpy(k + n, sender, m);
    k[n + m] = 0;
    im_put64(k + n + m + 1, seq);
    return n + m + 1 + 8;
}

static size_t s_key_cnt(uint8_t *k, const char *uid, const char *sender)
{
    size_t n = s_key_prefix(k, 'C', uid);
    size_t m = strlen(sender);
    memcpy(k + n, sender, m);
    return n + m;
}

static size_t s_key_dedup(uint8_t *k, const char *uid, const char *sender, const char *msg_id)
{
    size_t n = s_key_prefix(k, 'D', uid);
    size_t m = strlen(sender), d = strlen(msg_id);
    memcpy(k + n, sender, m);
    k[n + m] = 0;
    memcpy(k + n + m + 1, msg_id, d);
    return n + m + 1 + d;
}

/* Upper bound of every key starting with k[0..n-1] whose last byte is 0x00:
 * the same bytes with that last 0x00 turned into 0x01. */
static size_t s_key_upper(uint8_t *dst, const uint8_t *k, size_t n)
{
    memcpy(dst, k, n);
    assert(n > 0 && dst[n - 1] == 0);
    dst[n - 1] = 1;
    return n;
}

/* ---------------------------------------------------------------- records */

/* Decodes a head; false when it cannot be one the writer wrote: its floor
 * above its highest seq (reads start at floor + 1), or a highest seq with
 * no successor (the next append's). */
static bool s_head_decode(const uint8_t *v, st_inbox *h)
{
    h->high = im_get64(v + 1);
    h->count = im_get64(v + 9);
    h->floor = im_get64(v + 17);
    h->last_time_ms = (int64_t)im_get64(v + 25);
    return h->floor <= h->high && h->high < UINT64_MAX;
}

static int s_head_corrupt(st_error *err, const char *uid, const st_inbox *h)
{
    return s_err(err, ST_ECORRUPT, "inbox head of '%s': floor %llu, last seq %llu", uid,
                 (unsigned long long)h->floor, (unsigned long long)h->high);
}

static void s_head_encode(uint8_t *v, const st_inbox *h)
{
    v[0] = ST_REC_VERSION;
    im_put64(v + 1, h->high);
    im_put64(v + 9, h->count);
    im_put64(v + 17, h->floor);
    im_put64(v + 25, (uint64_t)h->last_time_ms);
}

/* A decoded 'M' record; strings point into the value, not NUL-terminated. */
typedef struct s_rec {
    int64_t send_time_ms;
    int32_t msg_type;
    const char *sender;
    size_t sender_len;
    const char *msg_id;
    size_t msg_id_len;
    const uint8_t *content;
    size_t content_len;
} s_rec;

/* Every stored byte is checked: a record that does not decode is reported,
 * never read past its end. */
static int s_rec_decode(const uint8_t *v, size_t n, s_rec *r)
{
    if (n < ST_MSG_FIXED || v[0] != ST_REC_VERSION)
        return ST_ECORRUPT;
    r->send_time_ms = (int64_t)im_get64(v + 1);
    r->msg_type = (int32_t)((uint32_t)v[9] << 24 | (uint32_t)v[10] << 16 |
                            (uint32_t)v[11] << 8 | v[12]);
    size_t off = 13;
    r->sender_len = v[off++];
    if (r->sender_len == 0 || r->sender_len > ST_UID_MAX || off + r->sender_len + 1 > n)
        return ST_ECORRUPT;
    r->sender = (const char *)v + off;
    off += r->sender_len;
    r->msg_id_len = v[off++];
    if (r->msg_id_len == 0 || r->msg_id_len > ST_MSGID_MAX || off + r->msg_id_len > n)
        return ST_ECORRUPT;
    r->msg_id = (const char *)v + off;
    /* What st.h promises of them (a sender keeps the uid rule, a msg_id
     * has no NUL): a record that breaks it does not decode (fuzz_store
     * found one: its sender went to the client as an invalid string). */
    if (!im_uid_valid(r->sender, r->sender_len) || memchr(r->msg_id, 0, r->msg_id_len))
        return ST_ECORRUPT;
    off += r->msg_id_len;
    r->content = v + off;
    r->content_len = n - off;
    return ST_OK;
}

static size_t s_rec_encode(uint8_t *v, const st_put *p, int64_t t)
{
    size_t sl = strlen(p->sender), dl = strlen(p->msg_id);
    v[0] = ST_REC_VERSION;
    im_put64(v + 1, (uint64_t)t);
    uint32_t ty = (uint32_t)p->msg_type;
    v[9] = (uint8_t)(ty >> 24), v[10] = (uint8_t)(ty >> 16);
    v[11] = (uint8_t)(ty >> 8), v[12] = (uint8_t)ty;
    size_t off = 13;
    v[off++] = (uint8_t)sl;
    memcpy(v + off, p->sender, sl);
    off += sl;
    v[off++] = (uint8_t)dl;
    memcpy(v + off, p->msg_id, dl);
    off += dl;
    if (p->content_len)
        memcpy(v + off, p->content, p->content_len);
    return off + p->content_len;
}

static bool s_expired(const st_shard *s, int64_t send_time, int64_t now)
{
    return s->o.ttl_ms > 0 && send_time <= now - s->o.ttl_ms;
}

/* ----------------------------------------------- prefix extractor, filter */

/* 'D' rows are only ever read by point lookups, so their "prefix" is the
 * whole key: the SST files' prefix blooms then filter the dedup
 * lookup that every new message makes and that almost always misses. */
static char *s_prefix_transform(void *st, const char *key, size_t len, size_t *dst_len)
{
    (void)st;
    const char *z = len >= 2 ? memchr(key + 1, 0, len - 1) : NULL;
    /* every key is in the domain; should RocksDB call this without asking
     * in_domain, a stray key maps to itself rather than to garbage */
    *dst_len = key[0] == 'D' || !z ? len : (size_t)(z - key) + 1;
    return (char *)key;
}

static unsigned char s_prefix_in_domain(void *st, const char *key, size_t len)
{
    (void)st;
    return len >= 2 && memchr(key + 1, 0, len - 1) != NULL;
}

static unsigned char s_prefix_in_range(void *st, const char *key, size_t len)
{
    (void)st, (void)key, (void)len;
    return 0;
}

static const char *s_prefix_name(void *st)
{
    (void)st;
    return "imbox.inbox_prefix.v2";
}

static void s_noop_destroy(void *st)
{
    (void)st;
}

/* Drops dedup entries whose window has passed; keeps everything else. */
static unsigned char s_filter(void *st, int level, const char *key, size_t klen,
                              const char *val, size_t vlen, char **new_val,
                              size_t *new_vlen, unsigned char *changed)
{
    (void)level, (void)new_val, (void)new_vlen;
    const st_shard *s = st;
    *changed = 0;
    if (klen == 0 || key[0] != 'D' || vlen != ST_DEDUP_LEN)
        return 0;
    int64_t t = (int64_t)im_get64((const uint8_t *)val + 9);
    return t <= s_now(s) - s->o.dedup_window_ms;
}

static const char *s_filter_name(void *st)
{
    (void)st;
    return "imbox.dedup_window.v1";
}

/* RocksDB counts every key comparison in a thread-local perf context by
 * default (PerfLevel kEnableCount), reached through the thread-local's
 * init wrapper at each comparison: measured with callgrind, about a quarter
 * of the instructions of a memtable insert or an iterator step. The engine
 * reads none of those counters, so each thread that enters RocksDB through
 * it (the point reads, the iterators and the writer's rounds below) turns
 * the counting off, once. RocksDB's own flush and compaction threads keep
 * the default: the C API cannot reach them. */
static void s_perf_off(void)
{
    static _Thread_local bool off;
    if (!off) {
        rocksdb_set_perf_level(rocksdb_disable);
        off = true;
    }
}

/* --------------------------------------------------------- point reads */

/* Reads key into buf (exactly want bytes). Returns 1 found, 0 absent, or an
 * error code. */
static int s_get_fixed(st_shard *s, const rocksdb_readoptions_t *ro, const uint8_t *k,
                       size_t kn, uint8_t *buf, size_t want, st_error *err)
{
    s_perf_off();
    char *rerr = NULL;
    size_t vn = 0;
    char *v = rocksdb_get(s->db, ro, (const char *)k, kn, &vn, &rerr);
    if (rerr)
        return s_rocks_err(err, "get", rerr);
    if (!v)
        return 0;
    int rc = 1;
    if (vn != want || (uint8_t)v[0] != ST_REC_VERSION) {
        s_err(err, ST_ECORRUPT, "record of table '%c' has %zu bytes, want %zu", k[0], vn, want);
        rc = ST_ECORRUPT;
    } else {
        memcpy(buf, v, want);
    }
    rocksdb_free(v);
    return rc;
}

static int s_get_head(st_shard *s, const rocksdb_readoptions_t *ro, const char *uid,
                      st_inbox *h, st_error *err)
{
    uint8_t k[ST_KEY_MAX], v[ST_HEAD_LEN];
    size_t kn = s_key_prefix(k, 'I', uid);
    memset(h, 0, sizeof *h);
    int rc = s_get_fixed(s, ro, k, kn, v, sizeof v, err);
    if (rc == 1 && !s_head_decode(v, h))
        return s_head_corrupt(err, uid, h);
    return rc < 0 ? rc : ST_OK;
}

/*
 * RANGE TOMBSTONES. Every read that starts above an inbox's floor ignores
 * range deletions (rocksdb ignore_range_deletions): a read that honours
 * them re-fragments every range deletion in the memtable, which made
 * draining an inbox page by page quadratic (measured: 1000 pages of 100
 * took 6 s, 2000 pages 90 s). This is exact because every range deletion
 * lies at or below its inbox's floor (see ACKS), every scan starts above
 * it, and a page read takes the head and the rows from one snapshot. The
 * one exception, the 'S' range deletions of conversation acks in databases
 * written before, is handled where 'S' rows are read: an index row is used
 * only when its 'M' row exists ('M' rows above the floor are only ever
 * point-deleted). No range deletion covers 'I', 'C' or 'D' rows. Only the
 * diagnostics honour range deletions (S_IT_EXACT).
 */
#define S_IT_TOTAL 1 /* across prefixes (total order seek) */
#define S_IT_EXACT 2 /* honour range deletions */

/*
 * THE BLOCK CACHE holds the blocks of point reads: the 'D' lookup of every
 * Send, the 'I' and 'C' rows that the writer's row cache does not hold,
 * a page read's head. Scans read around it: a page (whole inbox or one
 * conversation, and the point reads of a conversation's rows), the scan of
 * an ack without a memo, Counts' 'C' rows, the expiry sweep. Each reads a
 * block once (a receiver acks what it read, and the next page starts above
 * it), and filling the cache with those blocks cost a drain a fresh
 * allocation (page faults) or an eviction per block: a drain of one
 * 100,000-message inbox at page 100 went from 222,000 to 291,000 msgs/s
 * (medians of 5 alternated rounds, server CPU per page 460 -> 350 us;
 * docs/BENCHMARKS.md). A block that a scan finds in the cache is still
 * used from there.
 */

/* An iterator over [lo, hi) with hi as iterate_upper_bound. The bound must
 * outlive the iterator, so both live in this struct. */
typedef struct s_iter {
    rocksdb_readoptions_t *ro;
    rocksdb_iterator_t *it;
    uint8_t hi[ST_KEY_MAX];
} s_iter;

static void s_iter_open(st_shard *s, s_iter *i, const uint8_t *lo, size_t lon,
                        const uint8_t *hi, size_t hin, int flags,
                        const rocksdb_snapshot_t *snap)
{
    memcpy(i->hi, hi, hin);
    i->ro = rocksdb_readoptions_create();
    rocksdb_readoptions_set_iterate_upper_bound(i->ro, (const char *)i->hi, hin);
    if (flags & S_IT_TOTAL)
        rocksdb_readoptions_set_total_order_seek(i->ro, 1);
    else
        rocksdb_readoptions_set_prefix_same_as_start(i->ro, 1);
    if (!(flags & S_IT_EXACT))
        rocksdb_readoptions_set_ignore_range_deletions(i->ro, 1);
    if (snap)
        rocksdb_readoptions_set_snapshot(i->ro, snap);
    rocksdb_readoptions_set_fill_cache(i->ro, 0); /* THE BLOCK CACHE */
    s_perf_off();
    i->it = rocksdb_create_iterator(s->db, i->ro);
    rocksdb_iter_seek(i->it, (const char *)lo, lon);
}

/* Closes the iterator; returns its error, if any, as ST_EIO. */
static int s_iter_close(s_iter *i, st_error *err)
{
    char *rerr = NULL;
    rocksdb_iter_get_error(i->it, &rerr);
    rocksdb_iter_destroy(i->it);
    rocksdb_readoptions_destroy(i->ro);
    return rerr ? s_rocks_err(err, "iterator", rerr) : ST_OK;
}

/* --------------------------------------------- per-batch overlay (s_ov) */

/* The 'I', 'C' and 'D' rows that one write batch reads and modifies, so that
 * later operations of the batch see the effects of earlier ones. A small
 * open-addressing hash table, rebuilt for each batch. */
#define OV_VAL_MAX 40

typedef struct s_ov_ent {
    uint8_t key[ST_KEY_MAX];
    size_t kn;
    uint8_t val[OV_VAL_MAX];
    size_t vn;    /* 0 = absent */
    bool dirty;   /* write (or delete, if vn == 0) at commit */
    uint64_t acked; /* 'C' rows of an ack: the sender's messages it deletes */
} s_ov_ent;

/* Entries live in chunks that never move, so a pointer returned by
 * s_ov_load stays valid while later loads grow the table (one put holds its
 * 'I' and 'D' entries while it loads its 'C' entry). */
#define OV_CHUNK 256

typedef struct s_ov {
    s_ov_ent **chunks;
    size_t nchunks;
    size_t n;        /* entries in use */
    uint32_t *slots; /* index+1 of an entry, 0 = empty */
    size_t nslots;   /* power of two, at least twice the entries' capacity */
} s_ov;

static s_ov_ent *s_ov_at(const s_ov *ov, size_t i)
{
    return &ov->chunks[i / OV_CHUNK][i % OV_CHUNK];
}

static uint64_t s_hash(const uint8_t *p, size_t n)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 1099511628211ULL;
    return h;
}

static void s_ov_reset(s_ov *ov)
{
    ov->n = 0;
    if (ov->slots)
        memset(ov->slots, 0, ov->nslots * sizeof *ov->slots);
}

static void s_ov_free(s_ov *ov)
{
    for (size_t i = 0; i < ov->nchunks; i++)
        free(ov->chunks[i]);
    free(ov->chunks);
    free(ov->slots);
    memset(ov, 0, sizeof *ov);
}

/* Adds a chunk of entries; doubles the slots when they would be more than
 * half full, rehashing the entries in use. */
static int s_ov_grow(s_ov *ov)
{
    s_ov_ent **ch = realloc(ov->chunks, (ov->nchunks + 1) * sizeof *ch);
    if (!ch)
        return ST_ENOMEM;
    ov->chunks = ch;
    if (!(ch[ov->nchunks] = malloc(OV_CHUNK * sizeof **ch)))
        return ST_ENOMEM;
    size_t cap = (ov->nchunks + 1) * OV_CHUNK;
    if (ov->nslots < cap * 2) {
        size_t nslots = ov->nslots ? ov->nslots : 2 * OV_CHUNK;
        while (nslots < cap * 2)
            nslots *= 2;
        uint32_t *sl = calloc(nslots, sizeof *sl);
        if (!sl) {
            free(ch[ov->nchunks]);
            return ST_ENOMEM;
        }
        free(ov->slots);
        ov->slots = sl;
        ov->nslots = nslots;
        for (size_t i = 0; i < ov->n; i++) {
            const s_ov_ent *e = s_ov_at(ov, i);
            size_t j = s_hash(e->key, e->kn) & (nslots - 1);
            while (sl[j])
                j = (j + 1) & (nslots - 1);
            sl[j] = (uint32_t)i + 1;
        }
    }
    ov->nchunks++;
    return ST_OK;
}

/* ------------------------------------------- the writer's row cache */

/*
 * ROW CACHE. The writer owns every mutation, so it can remember the 'I' and
 * 'C' rows it last read or wrote instead of asking RocksDB again: a message
 * to an inbox it met recently costs one point read (its dedup row) instead
 * of three. An entry holds a row's committed value, or "absent"; it is
 * written only after the write that made it succeeded (the batch's commit,
 * an ack's write), and the whole cache is dropped when a write fails or
 * the database is reopened, so it never holds what the database does not.
 * Nothing else writes these rows (the compaction filter drops only 'D'
 * rows). 4-way set associative, replaced round-robin within a set:
 * RC_SETS * RC_WAYS entries of about 170 bytes (2.7 MB per shard).
 */
#define RC_SETS 4096 /* power of two */
#define RC_WAYS 4
#define RC_KEY_MAX (1 + ST_UID_MAX + 1 + ST_UID_MAX) /* a 'C' key, the longest */

typedef struct s_rc_ent {
    uint8_t kn;               /* 0: empty */
    uint8_t vn;               /* 0: the row is absent */
    uint8_t key[RC_KEY_MAX];
    uint8_t val[ST_HEAD_LEN]; /* the longer of 'I' and 'C' values */
} s_rc_ent;

typedef struct s_rc {
    s_rc_ent *ent;            /* RC_SETS * RC_WAYS; NULL: no cache (no memory) */
    uint8_t *next;            /* per set: the way replaced next */
    uint64_t hits, misses;
} s_rc;

static bool s_rc_key_ok(const uint8_t *k, size_t kn)
{
    return kn <= RC_KEY_MAX && (k[0] == 'I' || k[0] == 'C');
}

static s_rc_ent *s_rc_find(s_rc *rc, uint64_t hash, const uint8_t *k, size_t kn)
{
    s_rc_ent *set = &rc->ent[(hash & (RC_SETS - 1)) * RC_WAYS];
    for (int i = 0; i < RC_WAYS; i++)
        if (set[i].kn == kn && memcmp(set[i].key, k, kn) == 0)
            return &set[i];
    return NULL;
}

/* Records the committed value of key (vn 0: absent). */
static void s_rc_put(s_rc *rc, const uint8_t *k, size_t kn, const uint8_t *v, size_t vn)
{
    if (!rc->ent || !s_rc_key_ok(k, kn) || vn > ST_HEAD_LEN)
        return;
    uint64_t hash = s_hash(k, kn);
    s_rc_ent *e = s_rc_find(rc, hash, k, kn);
    if (!e) {
        size_t set = hash & (RC_SETS - 1);
        e = &rc->ent[set * RC_WAYS + rc->next[set]];
        rc->next[set] = (uint8_t)((rc->next[set] + 1) % RC_WAYS);
        e->kn = (uint8_t)kn;
        memcpy(e->key, k, kn);
    }
    e->vn = (uint8_t)vn;
    memcpy(e->val, v, vn);
}

static void s_rc_clear(s_rc *rc)
{
    if (rc->ent)
        memset(rc->ent, 0, (size_t)RC_SETS * RC_WAYS * sizeof *rc->ent);
}

/* Records every written entry of an overlay whose write succeeded. */
static void s_rc_put_ov(s_rc *rc, const s_ov *ov)
{
    for (size_t i = 0; i < ov->n; i++) {
        const s_ov_ent *e = s_ov_at(ov, i);
        if (e->dirty)
            s_rc_put(rc, e->key, e->kn, e->val, e->vn);
    }
}

/* Finds the entry for key, loading it on first use from the row cache (if
 * rc is not NULL and holds it) or from the database (want = its exact
 * length; then also into rc). Returns it, or NULL with err set. */
static s_ov_ent *s_ov_load(st_shard *s, s_ov *ov, s_rc *rc, const uint8_t *k, size_t kn,
                           size_t want, st_error *err)
{
    if (ov->n == ov->nchunks * OV_CHUNK && s_ov_grow(ov)) {
        s_err(err, ST_ENOMEM, "out of memory");
        return NULL;
    }
    uint64_t hash = s_hash(k, kn);
    size_t j = hash & (ov->nslots - 1);
    for (; ov->slots[j]; j = (j + 1) & (ov->nslots - 1)) {
        s_ov_ent *e = s_ov_at(ov, ov->slots[j] - 1);
        if (e->kn == kn && memcmp(e->key, k, kn) == 0)
            return e;
    }
    s_ov_ent *e = s_ov_at(ov, ov->n);
    memcpy(e->key, k, kn);
    e->kn = kn;
    e->dirty = false;
    e->acked = 0;
    const s_rc_ent *c = rc && rc->ent && s_rc_key_ok(k, kn) ? s_rc_find(rc, hash, k, kn) : NULL;
    if (c && (c->vn == 0 || c->vn == want)) {
        memcpy(e->val, c->val, c->vn);
        e->vn = c->vn;
        rc->hits++;
    } else {
        int got = s_get_fixed(s, s->ro_get, k, kn, e->val, want, err);
        if (got < 0)
            return NULL;
        e->vn = got == 1 ? want : 0;
        if (rc) {
            rc->misses++;
            s_rc_put(rc, k, kn, e->val, e->vn);
        }
    }
    ov->slots[j] = (uint32_t)++ov->n;
    return e;
}

static void s_ov_flush(const s_ov *ov, rocksdb_writebatch_t *wb)
{
    for (size_t i = 0; i < ov->n; i++) {
        const s_ov_ent *e = s_ov_at(ov, i);
        if (!e->dirty)
            continue;
        if (e->vn)
            rocksdb_writebatch_put(wb, (const char *)e->key, e->kn, (const char *)e->val, e->vn);
        else
            rocksdb_writebatch_delete(wb, (const char *)e->key, e->kn);
    }
}

static int s_count_cmp(const void *a, const void *b)
{
    const st_count *x = a, *y = b;
    if (x->last_send_time_ms != y->last_send_time_ms)
        return x->last_send_time_ms > y->last_send_time_ms ? -1 : 1;
    return strcmp(x->sender, y->sender);
}

/* Reads the 'C' rows of inbox uid into *out (malloc'ed, most recent first)
 * with their sum in *total. On error *out is NULL and *n, *total are 0. */
static int s_count_scan(st_shard *s, const char *uid, st_count **out, size_t *n,
                        uint64_t *total, st_error *err)
{
    int rc = ST_OK;
    *out = NULL;
    *n = 0;
    *total = 0;
    uint8_t lo[ST_KEY_MAX], hi[ST_KEY_MAX];
    size_t lon = s_key_prefix(lo, 'C', uid);
    size_t hin = s_key_upper(hi, lo, lon);
    s_iter it;
    size_t cap = 0;
    st_count *v = NULL;
    s_iter_open(s, &it, lo, lon, hi, hin, 0, NULL);
    for (; rocksdb_iter_valid(it.it); rocksdb_iter_next(it.it)) {
        size_t kl, vl;
        const char *kk = rocksdb_iter_key(it.it, &kl);
        const uint8_t *val = (const uint8_t *)rocksdb_iter_value(it.it, &vl);
        size_t sl = kl - lon;
        if (vl != ST_CNT_LEN || sl == 0 || sl > ST_UID_MAX) {
            rc = s_err(err, ST_ECORRUPT, "counter of inbox '%s'", uid);
            break;
        }
        if (*n == cap) {
            cap = cap ? cap * 2 : 16;
            st_count *nv = realloc(v, cap * sizeof *v);
            if (!nv) {
                rc = s_err(err, ST_ENOMEM, "out of memory");
                break;
            }
            v = nv;
        }
        st_count *c = &v[(*n)++];
        memcpy(c->sender, kk + lon, sl);
        c->sender[sl] = 0;
        c->count = im_get64(val + 1);
        c->last_send_time_ms = (int64_t)im_get64(val + 9);
        *total += c->count;
    }
    int irc = s_iter_close(&it, err);
    if (!rc)
        rc = irc;
    if (rc) {
        free(v);
        *n = 0;
        *total = 0;
        return rc;
    }
    if (*n)
        qsort(v, *n, sizeof *v, s_count_cmp);
    *out = v;
    s_ok(err);
    return ST_OK;
}

/* --------------------------------------------------------- the writer */

/* Everything the writer thread owns. The open append batch (ov, wb and the
 * requests in it) is committed when it is full, when an ack concerns one
 * of its inboxes, or at the end of a round. Acks use their own aov/awb. */
typedef struct s_writer {
    st_shard *s;
    s_ov ov;                  /* the open batch's 'I', 'C', 'D' rows */
    rocksdb_writebatch_t *wb; /* the open batch */
    st_req *first, **last;    /* the open batch's requests */
    size_t puts;              /* puts in the open batch */
    uint64_t stored, dups, full;
    int rc;                   /* first error while building the batch */
    st_error err;
    int64_t now;
    s_ov aov;                 /* an ack's 'C' rows */
    s_rc rows;                /* committed 'I' and 'C' rows (ROW CACHE) */
    rocksdb_writebatch_t *awb;
    struct s_acked *acked;    /* an ack's rows (see s_ack_inbox) */
    size_t nacked_max;
    bool memo_hit;            /* the ack took its rows from a memo */
    uint8_t *rec;             /* scratch for one encoded record */
} s_writer;

/* Applies one put to the batch (results into p). */
static int s_apply_put(s_writer *w, st_put *p, int64_t now, st_error *err)
{
    st_shard *s = w->s;
    uint8_t k[ST_KEY_MAX];
    size_t kn = s_key_prefix(k, 'I', p->receiver);
    s_ov_ent *he = s_ov_load(s, &w->ov, &w->rows, k, kn, ST_HEAD_LEN, err);
    if (!he)
        return err->code;
    kn = s_key_dedup(k, p->receiver, p->sender, p->msg_id);
    s_ov_ent *de = s_ov_load(s, &w->ov, NULL, k, kn, ST_DEDUP_LEN, err);
    if (!de)
        return err->code;

    if (de->vn) {
        int64_t t = (int64_t)im_get64(de->val + 9);
        if (t > now - s->o.dedup_window_ms) {
            p->code = ST_OK;
            p->duplicate = true;
            p->seq = im_get64(de->val + 1);
            p->send_time_ms = t;
            return ST_OK;
        }
    }
    st_inbox h = {0};
    if (he->vn && !s_head_decode(he->val, &h))
        return s_head_corrupt(err, p->receiver, &h);
    if (h.count >= s->o.max_inbox) {
        p->code = ST_EFULL;
        p->error = IM_TEXT_INBOX_FULL;
        return ST_OK;
    }
    int64_t t = now > h.last_time_ms ? now : h.last_time_ms;
    h.high++;
    h.count++;
    h.last_time_ms = t;
    s_head_encode(he->val, &h);
    he->vn = ST_HEAD_LEN;
    he->dirty = true;

    de->val[0] = ST_REC_VERSION;
    im_put64(de->val + 1, h.high);
    im_put64(de->val + 9, (uint64_t)t);
    de->vn = ST_DEDUP_LEN;
    de->dirty = true;

    kn = s_key_cnt(k, p->receiver, p->sender);
    s_ov_ent *ce = s_ov_load(s, &w->ov, &w->rows, k, kn, ST_CNT_LEN, err);
    if (!ce)
        return err->code;
    uint64_t cnt = ce->vn ? im_get64(ce->val + 1) : 0;
    ce->val[0] = ST_REC_VERSION;
    im_put64(ce->val + 1, cnt + 1);
    im_put64(ce->val + 9, (uint64_t)t);
    ce->vn = ST_CNT_LEN;
    ce->dirty = true;

    kn = s_key_msg(k, p->receiver, h.high);
    size_t vn = s_rec_encode(w->rec, p, t);
    rocksdb_writebatch_put(w->wb, (const char *)k, kn, (const char *)w->rec, vn);
    kn = s_key_sidx(k, p->receiver, p->sender, h.high);
    rocksdb_writebatch_put(w->wb, (const char *)k, kn, "", 0);

    p->code = ST_OK;
    p->duplicate = false;
    p->seq = h.high;
    p->send_time_ms = t;
    return ST_OK;
}

/* Per-sender tally of the messages an ack deletes, kept in the overlay as
 * the senders' 'C' rows, decremented in place. Returns the sender's entry
 * (its key is 'C' uid 0x00 sender), or NULL with err set. */
static s_ov_ent *s_tally(s_writer *w, const char *uid, const char *sender, size_t sender_len,
                         st_error *err)
{
    uint8_t k[ST_KEY_MAX];
    size_t kn = s_key_prefix(k, 'C', uid);
    memcpy(k + kn, sender, sender_len);
    kn += sender_len;
    s_ov_ent *ce = s_ov_load(w->s, &w->aov, &w->rows, k, kn, ST_CNT_LEN, err);
    if (!ce)
        return NULL;
    uint64_t cnt = ce->vn ? im_get64(ce->val + 1) : 0;
    if (cnt == 0) {
        s_err(err, ST_ECORRUPT, "counter of a stored message's sender is 0");
        return NULL;
    }
    im_put64(ce->val + 1, cnt - 1);
    ce->dirty = true;
    ce->acked++;
    return ce;
}

/* The 'S' key of seq from a sender's 'C' key: 'C' uid 0 sender ->
 * 'S' uid 0 sender 0 seq. */
static size_t s_key_sidx_of_cnt(uint8_t *k, const s_ov_ent *ce, uint64_t seq)
{
    memcpy(k, ce->key, ce->kn);
    k[0] = 'S';
    k[ce->kn] = 0;
    im_put64(k + ce->kn + 1, seq);
    return ce->kn + 9;
}

/* Writes the tallied 'C' rows (a counter that reaches 0 is deleted), and
 * deletes by one range the 'S' rows in [from, upto] of each sender with
 * more than ST_ACK_POINT_MAX of them in this ack (`ranges`; the caller
 * point-deletes the others). */
static void s_tally_flush(s_writer *w, bool ranges, uint64_t from, uint64_t upto)
{
    uint8_t lo[ST_KEY_MAX], hi[ST_KEY_MAX];
    for (size_t i = 0; i < w->aov.n; i++) {
        s_ov_ent *e = s_ov_at(&w->aov, i);
        if (!e->dirty)
            continue;
        if (ranges && e->acked > ST_ACK_POINT_MAX) {
            size_t n = s_key_sidx_of_cnt(lo, e, from);
            s_key_sidx_of_cnt(hi, e, upto + 1);
            rocksdb_writebatch_delete_range(w->awb, (const char *)lo, n, (const char *)hi, n);
        }
        if (im_get64(e->val + 1) == 0)
            e->vn = 0;
    }
    s_ov_flush(&w->aov, w->awb);
}

/* One row a whole-inbox ack deletes. */
typedef struct s_acked {
    uint64_t seq;
    const s_ov_ent *cnt; /* its sender's 'C' entry (entries never move) */
} s_acked;

/* Remembers a row of the ack in w->acked (grown as needed). */
static int s_acked_add(s_writer *w, size_t n, uint64_t seq, const s_ov_ent *cnt,
                       st_error *err)
{
    if (n == w->nacked_max) {
        size_t max = w->nacked_max ? 2 * w->nacked_max : 1024;
        s_acked *v = realloc(w->acked, max * sizeof *v);
        if (!v)
            return s_err(err, ST_ENOMEM, "out of memory");
        w->acked = v;
        w->nacked_max = max;
    }
    w->acked[n] = (s_acked){.seq = seq, .cnt = cnt};
    return ST_OK;
}

/* One row of a whole-inbox ack: its sender's tally, and w->acked[(*n)++]. */
static int s_ack_row(s_writer *w, const char *uid, uint64_t seq, const char *sender,
                     size_t sender_len, uint64_t *n, st_error *err)
{
    const s_ov_ent *ce = s_tally(w, uid, sender, sender_len, err);
    if (!ce)
        return err->code;
    int rc = s_acked_add(w, (size_t)*n, seq, ce, err);
    if (!rc)
        ++*n;
    return rc;
}

/* Whole-inbox ack or expiry of inbox r->uid in (h->floor, upto]: fills the
 * ack batch, raises h->floor and returns the count deleted in *n. A run of
 * more than ST_ACK_POINT_MAX rows (the 'M' rows, or one sender's 'S' rows)
 * goes by one range deletion, shorter ones row by row (see ACKS). */
static int s_ack_inbox(s_writer *w, st_req *r, st_inbox *h, uint64_t upto, int64_t now,
                       uint64_t *n)
{
    st_shard *s = w->s;
    st_error *err = &r->err;
    bool expire = r->type == ST_REQ_EXPIRE;
    uint64_t from = h->floor + 1, last = 0;
    uint8_t lo[ST_KEY_MAX], hi[ST_KEY_MAX];
    size_t lon = s_key_msg(lo, r->uid, from), hin = s_key_msg(hi, r->uid, upto + 1);
    int rc = ST_OK;
    /* The rows of the page the receiver read last, when the read left a
     * memo of them (see st_memo.h); else a scan. */
    st_memo_page *mp = expire ? NULL : st_memo_take(s->memo, r->uid, h->floor, upto);
    if (mp) {
        w->memo_hit = true;
        for (size_t i = 0; i < mp->n && mp->rows[i].seq <= upto; i++) {
            const st_memo_row *row = &mp->rows[i];
            if (row->seq <= h->floor)
                continue;
            rc = s_ack_row(w, r->uid, row->seq, mp->senders + row->off, row->len, n, err);
            if (rc)
                break;
        }
        st_memo_page_free(mp);
        if (rc)
            return rc;
    } else {
        s_iter it;
        s_iter_open(s, &it, lo, lon, hi, hin, 0, NULL);
        for (; rocksdb_iter_valid(it.it); rocksdb_iter_next(it.it)) {
            size_t kl, vl;
            const uint8_t *kk = (const uint8_t *)rocksdb_iter_key(it.it, &kl);
            const uint8_t *v = (const uint8_t *)rocksdb_iter_value(it.it, &vl);
            s_rec rec;
            if (kl != lon || s_rec_decode(v, vl, &rec)) {
                rc = s_err(err, ST_ECORRUPT, "message record of inbox '%s' does not decode",
                           r->uid);
                break;
            }
            if (expire && !s_expired(s, rec.send_time_ms, now))
                break;
            last = im_get64(kk + kl - 8);
            if ((rc = s_ack_row(w, r->uid, last, rec.sender, rec.sender_len, n, err)))
                break;
        }
        int irc = s_iter_close(&it, err);
        if (rc || (rc = irc))
            return rc;
    }
    if (expire)
        upto = last; /* stop before the first live message */
    if (upto < from)
        return ST_OK;
    bool ranges = *n > ST_ACK_POINT_MAX;
    if (ranges) {
        s_key_msg(hi, r->uid, upto + 1);
        rocksdb_writebatch_delete_range(w->awb, (const char *)lo, lon, (const char *)hi, lon);
    }
    for (size_t i = 0; i < *n; i++) {
        const s_acked *a = &w->acked[i];
        size_t kn;
        if (!ranges) {
            kn = s_key_msg(lo, r->uid, a->seq);
            rocksdb_writebatch_delete(w->awb, (const char *)lo, kn);
        }
        if (!ranges || a->cnt->acked <= ST_ACK_POINT_MAX) {
            kn = s_key_sidx_of_cnt(lo, a->cnt, a->seq);
            rocksdb_writebatch_delete(w->awb, (const char *)lo, kn);
        }
    }
    s_tally_flush(w, ranges, from, upto);
    h->floor = upto;
    return ST_OK;
}

/* Conversation ack: sender r->sender's messages in (h->floor, upto], point
 * deletes of their 'S' and 'M' rows. The count deleted goes to *n. */
static int s_ack_conversation(s_writer *w, st_req *r, const st_inbox *h, uint64_t upto,
                              uint64_t *n)
{
    st_shard *s = w->s;
    st_error *err = &r->err;
    uint8_t lo[ST_KEY_MAX], hi[ST_KEY_MAX], k[ST_KEY_MAX];
    size_t lon = s_key_sidx(lo, r->uid, r->sender, h->floor + 1);
    size_t hin = s_key_sidx(hi, r->uid, r->sender, upto + 1);
    int rc = ST_OK;
    s_iter it;
    s_iter_open(s, &it, lo, lon, hi, hin, 0, NULL);
    for (; rocksdb_iter_valid(it.it); rocksdb_iter_next(it.it)) {
        size_t kl;
        const uint8_t *kk = (const uint8_t *)rocksdb_iter_key(it.it, &kl);
        if (kl != lon) {
            rc = s_err(err, ST_ECORRUPT, "sender index of inbox '%s' does not decode", r->uid);
            break;
        }
        rocksdb_writebatch_delete(w->awb, (const char *)kk, kl);
        size_t mk = s_key_msg(k, r->uid, im_get64(kk + kl - 8));
        char *rerr = NULL;
        size_t vl = 0;
        char *v = rocksdb_get(s->db, s->ro_get, (const char *)k, mk, &vl, &rerr);
        if (rerr) {
            rc = s_rocks_err(err, "get", rerr);
            break;
        }
        if (!v)
            continue; /* a stale index row (see ACKS): deleted, not counted */
        rocksdb_free(v);
        rocksdb_writebatch_delete(w->awb, (const char *)k, mk);
        if (!s_tally(w, r->uid, r->sender, strlen(r->sender), err)) {
            rc = err->code;
            break;
        }
        ++*n;
    }
    int irc = s_iter_close(&it, err);
    if (rc || (rc = irc))
        return rc;
    s_tally_flush(w, false, 0, 0);
    return ST_OK;
}

/* Executes one ack or expiry as its own (not fsync'ed) write batch. */
static int s_exec_ack(s_writer *w, st_req *r, int64_t now)
{
    st_shard *s = w->s;
    st_error *err = &r->err;
    st_inbox h;
    int rc = s_get_head(s, s->ro_get, r->uid, &h, err);
    if (rc)
        return rc;
    uint64_t upto = r->type == ST_REQ_EXPIRE ? h.high : r->upto;
    if (upto > h.high) {
        s_err(err, ST_ECURSOR, "cursor: seq %llu is beyond the inbox's last message %llu",
              (unsigned long long)upto, (unsigned long long)h.high);
        return ST_ECURSOR;
    }
    if (upto <= h.floor)
        return ST_OK; /* already acked: a retried cursor deletes nothing */
    s_ov_reset(&w->aov);
    rocksdb_writebatch_clear(w->awb);
    w->memo_hit = false;
    uint64_t n = 0, floor = h.floor;
    rc = r->sender ? s_ack_conversation(w, r, &h, upto, &n) : s_ack_inbox(w, r, &h, upto, now, &n);
    if (rc)
        return rc;
    if (rocksdb_writebatch_count(w->awb) == 0 && h.floor == floor)
        return ST_OK; /* nothing to delete */
    h.count -= n;
    uint8_t hv[ST_HEAD_LEN], k[ST_KEY_MAX];
    s_head_encode(hv, &h);
    size_t kn = s_key_prefix(k, 'I', r->uid);
    rocksdb_writebatch_put(w->awb, (const char *)k, kn, (const char *)hv, sizeof hv);
    char *rerr = NULL;
    rocksdb_write(s->db, s->wo_async, w->awb, &rerr);
    if (rerr) {
        s_rc_clear(&w->rows);
        return s_write_failed(s, err, "ack write", rerr);
    }
    if (r->sender) /* rows above the floor are gone: the memos lie now */
        st_memo_clear_uid(s->memo, r->uid);
    s_rc_put_ov(&w->rows, &w->aov);
    s_rc_put(&w->rows, k, kn, hv, sizeof hv);
    r->deleted = n;
    pthread_mutex_lock(&s->mu);
    s->stats.deleted += n;
    s->msg_delta -= (int64_t)n;
    if (r->type == ST_REQ_EXPIRE)
        s->stats.expired += n;
    else
        s->stats.acks++;
    s->stats.ack_memos += w->memo_hit;
    pthread_mutex_unlock(&s->mu);
    return ST_OK;
}

/* ST_REQ_COUNTS: purges the inbox's expired prefix (an expiry like any
 * other), then reads its counters, on the writer: the service thread that
 * submitted it never waits, and the counts include every earlier write. */
static int s_exec_counts(s_writer *w, st_req *r, int64_t now)
{
    st_req x = {.type = ST_REQ_EXPIRE, .uid = r->uid};
    s_ok(&x.err);
    int rc = s_exec_ack(w, &x, now);
    if (rc) {
        r->err = x.err;
        return rc;
    }
    return s_count_scan(w->s, r->uid, &r->counts, &r->ncounts, &r->total, &r->err);
}

/* Callbacks run on the writer thread: a hand-off to a completion thread
 * was measured slower (one more thread hop per commit makes each append
 * wait longer, so fewer gather per fsync: 22.0k/s against 27.5k/s at 64
 * appenders on 2 cores). */
static void s_complete(st_req *r)
{
    r->done(r);
}

/* Adds an append request to the open batch (opening one if needed). */
static void s_batch_add(s_writer *w, st_req *r)
{
    if (!w->first) {
        s_ov_reset(&w->ov);
        rocksdb_writebatch_clear(w->wb);
        w->last = &w->first;
        w->puts = w->stored = w->dups = w->full = 0;
        w->rc = ST_OK;
        w->now = s_now(w->s);
    }
    r->next_ = NULL;
    *w->last = r;
    w->last = &r->next_;
    w->puts += r->nputs;
    for (size_t i = 0; i < r->nputs && !w->rc; i++) {
        st_put *p = &r->puts[i];
        w->rc = s_apply_put(w, p, w->now, &w->err);
        if (w->rc)
            break;
        if (p->code == ST_EFULL)
            w->full++;
        else if (p->duplicate)
            w->dups++;
        else
            w->stored++;
    }
}

const double st_batch_le[ST_BATCH_BUCKETS] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024};
const double st_commit_le_us[ST_COMMIT_BUCKETS] = {100, 250, 500, 1000, 2500, 5000,
                                                   10000, 25000, 50000, 100000, 250000,
                                                   1000000};

/* The bucket of v among n ascending upper bounds (n: above them all). */
static int s_bucket(const double *le, int n, double v)
{
    int i = 0;
    while (i < n && v > le[i])
        i++;
    return i;
}

static int64_t s_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Writes the open batch with one fsync, then completes its requests. */
static void s_batch_commit(s_writer *w)
{
    st_shard *s = w->s;
    if (!w->first)
        return;
    int64_t us = 0;
    if (!w->rc && w->stored) {
        s_ov_flush(&w->ov, w->wb);
        char *rerr = NULL;
        int64_t t0 = s_mono_us();
        rocksdb_write(s->db, s->wo_sync, w->wb, &rerr);
        us = s_mono_us() - t0;
        if (rerr)
            w->rc = s_write_failed(s, &w->err, "commit", rerr);
    }
    if (w->rc)
        s_rc_clear(&w->rows); /* the batch's reads may be cached, its writes are not */
    else
        s_rc_put_ov(&w->rows, &w->ov);
    pthread_mutex_lock(&s->mu);
    s->stats.row_hits = w->rows.hits;
    s->stats.row_misses = w->rows.misses;
    if (!w->rc) {
        s->stats.appends += w->stored;
        s->stats.duplicates += w->dups;
        s->stats.full += w->full;
        s->msg_delta += (int64_t)w->stored;
        if (w->stored) {
            s->stats.commits++;
            if (w->puts > s->stats.max_batch)
                s->stats.max_batch = w->puts;
            s->stats.batch_hist[s_bucket(st_batch_le, ST_BATCH_BUCKETS, (double)w->puts)]++;
            s->stats.batch_sum += w->puts;
            s->stats.commit_us_hist[s_bucket(st_commit_le_us, ST_COMMIT_BUCKETS, (double)us)]++;
            s->stats.commit_us_sum += (uint64_t)us;
        }
    }
    pthread_mutex_unlock(&s->mu);
    for (st_req *r = w->first, *next; r; r = next) {
        next = r->next_;
        if (w->rc) {
            r->err = w->err;
            for (size_t i = 0; i < r->nputs; i++) {
                r->puts[i].code = w->rc;
                r->puts[i].error = w->rc == ST_ENOSPC ? IM_TEXT_DISK_FULL : IM_TEXT_NOT_STORED;
                r->puts[i].duplicate = false;
                r->puts[i].seq = 0;
            }
        } else {
            s_ok(&r->err);
        }
        s_complete(r);
    }
    w->first = NULL;
}

/* Whether the open batch appends to inbox uid. */
static bool s_batch_touches(s_writer *w, const char *uid)
{
    if (!w->first || !w->ov.nslots)
        return false;
    uint8_t k[ST_KEY_MAX];
    size_t kn = s_key_prefix(k, 'I', uid);
    size_t j = s_hash(k, kn) & (w->ov.nslots - 1);
    for (; w->ov.slots[j]; j = (j + 1) & (w->ov.nslots - 1)) {
        const s_ov_ent *e = s_ov_at(&w->ov, w->ov.slots[j] - 1);
        if (e->kn == kn && memcmp(e->key, k, kn) == 0)
            return true;
    }
    return false;
}

static int s_open_db(st_shard *s, st_error *err);

/* A broken shard (see DISK TROUBLE) reopens its database when it is time,
 * there is room, and no reader is inside. */
static void s_recover(st_shard *s)
{
    int64_t now = im_mono_ms();
    if (!s->broken || now < s->reopen_at)
        return;
    s->reopen_at = now + ST_REOPEN_MS;
    uint64_t need = ST_REOPEN_SLACK, mem = 0;
    if (s->db && rocksdb_property_int(s->db, "rocksdb.cur-size-all-mem-tables", &mem) == 0)
        need += mem;
    struct statvfs fs;
    if (statvfs(s->dir, &fs) == 0 && (uint64_t)fs.f_bavail * fs.f_frsize < need)
        return; /* still full */
    if (pthread_rwlock_trywrlock(&s->dblock)) {
        s->reopen_at = now; /* a reader is inside: next round */
        return;
    }
    if (s->db)
        rocksdb_close(s->db);
    s->db = NULL;
    st_error err;
    if (s_open_db(s, &err) == ST_OK) {
        s->broken = false;
        atomic_store(&s->writable, true);
        im_log(IM_LOG_INFO, "storage", NULL, "%s: database reopened, writes resume", s->dir);
    } else {
        im_log(IM_LOG_ERROR, "storage", NULL, "%s: reopen failed: %s", s->dir, err.msg);
    }
    pthread_rwlock_unlock(&s->dblock);
}

/* Completes a request without touching the database (closed, see DISK
 * TROUBLE). */
static void s_refuse(st_shard *s, st_req *r)
{
    s_err(&r->err, s->broken_code, "%s", s->broken_code == ST_ENOSPC ? IM_TEXT_DISK_FULL :
          "database closed: its reopen after a write error failed");
    for (size_t i = 0; r->type == ST_REQ_APPEND && i < r->nputs; i++) {
        r->puts[i].code = s->broken_code;
        r->puts[i].error = s->broken_code == ST_ENOSPC ? IM_TEXT_DISK_FULL : IM_TEXT_NOT_STORED;
    }
    s_complete(r);
}

/* One round, in submission order as far as any inbox can tell: appends
 * gather into the open batch (group commit); an ack runs at once, after
 * committing the open batch only if that batch appends to its inbox. */
static void s_round(s_writer *w, st_req *list)
{
    s_perf_off();
    if (w->s->broken) {
        s_rc_clear(&w->rows); /* what the reopen replays is what counts */
        s_recover(w->s);
    }
    if (!w->s->db) {
        for (st_req *r = list, *next; r; r = next) {
            next = r->next_;
            s_refuse(w->s, r);
        }
        return;
    }
    for (st_req *r = list, *next; r; r = next) {
        next = r->next_;
        if (r->type == ST_REQ_APPEND) {
            if (w->first && w->puts + r->nputs > w->s->o.max_batch)
                s_batch_commit(w);
            s_batch_add(w, r);
            continue;
        }
        if (s_batch_touches(w, r->uid))
            s_batch_commit(w);
        r->deleted = 0;
        s_ok(&r->err);
        if (r->type == ST_REQ_COUNTS)
            s_exec_counts(w, r, s_now(w->s));
        else
            s_exec_ack(w, r, s_now(w->s));
        s_complete(r);
    }
    s_batch_commit(w);
}

static int s_writer_init(s_writer *w, st_shard *s)
{
    memset(w, 0, sizeof *w);
    w->s = s;
    w->wb = rocksdb_writebatch_create();
    w->awb = rocksdb_writebatch_create();
    w->rec = malloc(ST_MSG_FIXED + ST_UID_MAX + ST_MSGID_MAX + ST_CONTENT_MAX);
    w->rows.ent = calloc((size_t)RC_SETS * RC_WAYS, sizeof *w->rows.ent); /* NULL: no cache */
    w->rows.next = w->rows.ent ? calloc(RC_SETS, 1) : NULL;
    if (!w->rows.next) {
        free(w->rows.ent);
        w->rows.ent = NULL;
    }
    return w->rec ? 0 : -1;
}

static void s_writer_fini(s_writer *w)
{
    s_ov_free(&w->ov);
    s_ov_free(&w->aov);
    free(w->rows.ent);
    free(w->rows.next);
    free(w->acked);
    free(w->rec);
    if (w->wb)
        rocksdb_writebatch_destroy(w->wb);
    if (w->awb)
        rocksdb_writebatch_destroy(w->awb);
}

/* Takes the whole queue (NULL when empty). */
static st_req *s_take(st_shard *s)
{
    pthread_mutex_lock(&s->mu);
    st_req *list = s->head;
    s->head = s->tail = NULL;
    pthread_mutex_unlock(&s->mu);
    return list;
}

size_t st_run(st_shard *s)
{
    assert(s->inl && "st_run: the shard has its own writer thread");
    size_t n = 0;
    st_req *list = s_take(s);
    for (st_req *r = list; r; r = r->next_)
        n++;
    if (list)
        s_round(s->inl, list);
    return n;
}

static void *s_writer_main(void *arg)
{
    st_shard *s = arg;
    im_thread_name("st-writer");
    s_writer w;
    int rc = s_writer_init(&w, s);
    assert(rc == 0 && "out of memory at writer start");
    (void)rc;
    for (;;) {
        pthread_mutex_lock(&s->mu);
        while (!s->head && !s->closing)
            pthread_cond_wait(&s->cv, &s->mu);
        st_req *list = s->head;
        s->head = s->tail = NULL;
        bool closing = s->closing;
        pthread_mutex_unlock(&s->mu);
        if (!list && closing)
            break;
        s_round(&w, list);
    }
    s_writer_fini(&w);
    return NULL;
}

/* ------------------------------------------------------- open and close */

void st_options_init(st_options *o)
{
    memset(o, 0, sizeof *o);
    o->max_inbox = ST_DEF_MAX_INBOX;
    o->ttl_ms = ST_DEF_TTL_MS;
    o->dedup_window_ms = ST_DEF_DEDUP_MS;
    o->max_content = ST_CONTENT_MAX;
    o->max_batch = ST_DEF_MAX_BATCH;
    o->sync = true;
    o->block_cache_bytes = ST_DEF_CACHE;
    o->clock = s_default_clock;
}

static void s_free(st_shard *s)
{
    if (s->db)
        rocksdb_close(s->db);
    if (s->dbopts)
        rocksdb_options_destroy(s->dbopts);
    if (s->table)
        rocksdb_block_based_options_destroy(s->table);
    if (s->cache)
        rocksdb_cache_destroy(s->cache);
    /* The options own the prefix extractor once set; the filter is ours. */
    if (s->filter)
        rocksdb_compactionfilter_destroy(s->filter);
    if (s->wo_sync)
        rocksdb_writeoptions_destroy(s->wo_sync);
    if (s->wo_async)
        rocksdb_writeoptions_destroy(s->wo_async);
    if (s->ro_get)
        rocksdb_readoptions_destroy(s->ro_get);
    st_memo_free(s->memo);
    free(s->dir);
    pthread_rwlock_destroy(&s->dblock);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

static int s_check_format(st_shard *s, st_error *err)
{
    static const uint8_t key[2] = {'V', 0};
    char *rerr = NULL;
    size_t vn = 0;
    char *v = rocksdb_get(s->db, s->ro_get, (const char *)key, 2, &vn, &rerr);
    if (rerr)
        return s_rocks_err(err, "format marker", rerr);
    if (v) {
        int ok = vn == strlen(ST_FORMAT) && memcmp(v, ST_FORMAT, vn) == 0;
        rocksdb_free(v);
        if (!ok)
            return s_err(err, ST_ECORRUPT, "not an %s database", ST_FORMAT);
        return ST_OK;
    }
    /* No marker: a new database, or another program's, which holds keys. */
    rocksdb_iterator_t *it = rocksdb_create_iterator(s->db, s->ro_get);
    rocksdb_iter_seek_to_first(it);
    bool foreign = rocksdb_iter_valid(it);
    rocksdb_iter_destroy(it);
    if (foreign)
        return s_err(err, ST_ECORRUPT, "not an imbox database: it holds data but no %s marker",
                     ST_FORMAT);
    rocksdb_put(s->db, s->wo_sync, (const char *)key, 2, ST_FORMAT, strlen(ST_FORMAT), &rerr);
    return rerr ? s_rocks_err(err, "format marker", rerr) : ST_OK;
}

/* Opens s->db at s->dir with s->dbopts and checks the format (st_open,
 * and the reopen of a broken shard). On failure s->db is NULL. */
static int s_open_db(st_shard *s, st_error *err)
{
    char *rerr = NULL;
    s_perf_off(); /* the log's replay runs on this thread */
    s->db = rocksdb_open(s->dbopts, s->dir, &rerr);
    if (rerr) {
        s_err(err, ST_EIO, "cannot open the database in %.80s%s: %s", s->dir,
              strlen(s->dir) > 80 ? "..." : "", rerr);
        rocksdb_free(rerr);
        s->db = NULL;
        return ST_EIO;
    }
    int rc = s_check_format(s, err);
    if (rc) {
        rocksdb_close(s->db);
        s->db = NULL;
    }
    return rc;
}

int st_open(const char *dir, const st_options *o, st_shard **out, st_error *err)
{
    assert(dir && out);
    *out = NULL;
    st_shard *s = calloc(1, sizeof *s);
    if (!s)
        return s_err(err, ST_ENOMEM, "out of memory");
    if (o)
        s->o = *o;
    else
        st_options_init(&s->o);
    if (!s->o.clock)
        s->o.clock = s_default_clock;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    pthread_rwlock_init(&s->dblock, NULL);
    size_t dirlen = strlen(dir);
    if (dirlen == 0 || dirlen > ST_DIR_MAX) {
        s_err(err, ST_EINVAL, "data directory: path of %zu bytes, must be 1..%d", dirlen,
              ST_DIR_MAX);
        s_free(s);
        return ST_EINVAL;
    }
    if (!(s->dir = strdup(dir))) {
        s_free(s);
        return s_err(err, ST_ENOMEM, "out of memory");
    }
    if (s->o.max_content > ST_CONTENT_MAX || s->o.max_batch == 0 || s->o.max_inbox == 0 ||
        s->o.dedup_window_ms < 0 || s->o.ttl_ms < 0) {
        s_err(err, ST_EINVAL, "options: max_content <= %d, max_batch and max_inbox > 0, "
                              "windows >= 0", ST_CONTENT_MAX);
        s_free(s);
        return ST_EINVAL;
    }

    s->dbopts = rocksdb_options_create();
    rocksdb_options_set_create_if_missing(s->dbopts, 1);
    rocksdb_options_set_info_log_level(s->dbopts, ST_LOG_HEADER_LEVEL); /* DISK TROUBLE */
    rocksdb_options_increase_parallelism(s->dbopts, 2);
    s->prefix = rocksdb_slicetransform_create(NULL, s_noop_destroy, s_prefix_transform,
                                              s_prefix_in_domain, s_prefix_in_range,
                                              s_prefix_name);
    rocksdb_options_set_prefix_extractor(s->dbopts, s->prefix);
    /* Small memtables: the flush of a full one runs on a background thread
     * (the other core) while the writer fills the next. RocksDB's default
     * memtable, one skiplist. A memtable hashed by prefix (table and uid:
     * a message's five rows in five small skiplists of their inboxes) was
     * used before and measured again on 2026-12-01 (docs/BENCHMARKS.md,
     * "The memtable, measured again"): its inserts and point reads are
     * cheaper, but its flush must first copy the whole memtable into one
     * sorted skiplist, on the other core: 10.6 us of the flush thread's CPU
     * per Send against 2.6, and 15% more server CPU per Send in all, with
     * many receivers; the expiry sweep's total-order scan paid the same
     * copy. The hashed one restarted faster after 100,000 single acks
     * (53 ms against 460 ms, peak RSS 16 against 32 MB) and drained one
     * huge inbox 5 to 10% faster; sends to many inboxes and drains of many
     * small ones are the common case. Each new memtable's pages are first
     * touched as it fills (no bucket array or memtable bloom made up
     * front: fresh pages there stalled the commit that filled the last
     * memtable for 10 to 25 ms). The memtable is not on disk: the format
     * does not change. */
    rocksdb_options_set_write_buffer_size(s->dbopts, ST_MEMTABLE_BYTES);
    rocksdb_options_set_allow_concurrent_memtable_write(s->dbopts, 0);
    rocksdb_options_set_max_write_buffer_number(s->dbopts, 4);
    s->table = rocksdb_block_based_options_create();
    rocksdb_block_based_options_set_filter_policy(s->table,
                                                  rocksdb_filterpolicy_create_bloom(10));
    s->cache = rocksdb_cache_create_lru(s->o.block_cache_bytes);
    rocksdb_block_based_options_set_block_cache(s->table, s->cache);
    rocksdb_options_set_block_based_table_factory(s->dbopts, s->table);
    s->filter = rocksdb_compactionfilter_create(s, s_noop_destroy, s_filter, s_filter_name);
    rocksdb_options_set_compaction_filter(s->dbopts, s->filter);

    s->wo_sync = rocksdb_writeoptions_create();
    rocksdb_writeoptions_set_sync(s->wo_sync, s->o.sync);
    s->wo_async = rocksdb_writeoptions_create();
    s->ro_get = rocksdb_readoptions_create(); /* 'I', 'C', 'D': never range-deleted */
    rocksdb_readoptions_set_ignore_range_deletions(s->ro_get, 1);
    if (!(s->memo = st_memo_new())) {
        s_free(s);
        return s_err(err, ST_ENOMEM, "out of memory");
    }

    int rc = s_open_db(s, err);
    if (rc) {
        s_free(s);
        return rc;
    }
    atomic_store(&s->writable, true);
    if (s->o.wake) {
        if (!(s->inl = malloc(sizeof *s->inl)) || s_writer_init(s->inl, s)) {
            if (s->inl)
                s_writer_fini(s->inl);
            free(s->inl);
            s->inl = NULL;
            s_free(s);
            return s_err(err, ST_ENOMEM, "out of memory");
        }
    } else if ((rc = pthread_create(&s->writer, NULL, s_writer_main, s))) {
        s_err(err, ST_ENOMEM, "writer thread: %s", strerror(rc));
        s_free(s);
        return ST_ENOMEM;
    }
    s_ok(err);
    *out = s;
    return ST_OK;
}

void st_close(st_shard **sp)
{
    if (!sp || !*sp)
        return;
    st_shard *s = *sp;
    pthread_mutex_lock(&s->mu);
    s->closing = true;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    if (s->inl) { /* every accepted request completes, here */
        while (st_run(s))
            ;
        s_writer_fini(s->inl);
        free(s->inl);
    } else {
        pthread_join(s->writer, NULL);
    }
    s_free(s);
    *sp = NULL;
}

/* --------------------------------------------------------------- submit */

int st_submit(st_shard *s, st_req *r)
{
    assert(s && r && r->done);
    st_error *err = &r->err;
    s_ok(err);
    switch (r->type) {
    case ST_REQ_APPEND:
        if (r->nputs == 0 || !r->puts)
            return s_err(err, ST_EINVAL, "puts: empty append");
        for (size_t i = 0; i < r->nputs; i++)
            if (s_check_put(s, &r->puts[i], i, err))
                return ST_EINVAL;
        for (size_t i = 0; i < r->nputs; i++) {
            r->puts[i].code = ST_OK;
            r->puts[i].error = NULL;
            r->puts[i].duplicate = false;
            r->puts[i].seq = 0;
            r->puts[i].send_time_ms = 0;
        }
        break;
    case ST_REQ_ACK:
    case ST_REQ_EXPIRE:
    case ST_REQ_COUNTS:
        if (st_check_uid(r->uid, "uid", err))
            return ST_EINVAL;
        if (r->sender && st_check_uid(r->sender, "sender", err))
            return ST_EINVAL;
        if (r->type != ST_REQ_ACK)
            r->sender = NULL;
        r->counts = NULL;
        r->ncounts = 0;
        r->total = 0;
        break;
    default:
        return s_err(err, ST_EINVAL, "request type %d unknown", (int)r->type);
    }
    r->next_ = NULL;
    pthread_mutex_lock(&s->mu);
    if (s->closing) {
        pthread_mutex_unlock(&s->mu);
        return s_err(err, ST_ECLOSED, "shard is closing");
    }
    bool was_empty = !s->head;
    if (s->tail)
        s->tail->next_ = r;
    else
        s->head = r;
    s->tail = r;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    if (was_empty && s->o.wake)
        s->o.wake(s->o.wake_arg);
    return ST_OK;
}

/* A request waited on by the submitting thread. */
typedef struct s_waiter {
    st_req req;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool done;
} s_waiter;

static void s_waiter_done(st_req *r)
{
    s_waiter *wt = r->arg;
    pthread_mutex_lock(&wt->mu);
    wt->done = true;
    pthread_cond_signal(&wt->cv);
    pthread_mutex_unlock(&wt->mu);
}

static int s_submit_wait(st_shard *s, s_waiter *wt, st_error *err)
{
    wt->req.done = s_waiter_done;
    wt->req.arg = wt;
    wt->done = false;
    pthread_mutex_init(&wt->mu, NULL);
    pthread_cond_init(&wt->cv, NULL);
    int rc = st_submit(s, &wt->req);
    if (rc == ST_OK) {
        pthread_mutex_lock(&wt->mu);
        while (!wt->done)
            pthread_cond_wait(&wt->cv, &wt->mu);
        pthread_mutex_unlock(&wt->mu);
        rc = wt->req.err.code;
    }
    pthread_cond_destroy(&wt->cv);
    pthread_mutex_destroy(&wt->mu);
    if (err)
        *err = wt->req.err;
    return rc;
}

int st_append(st_shard *s, st_put *puts, size_t n, st_error *err)
{
    s_waiter wt = {.req = {.type = ST_REQ_APPEND, .puts = puts, .nputs = n}};
    return s_submit_wait(s, &wt, err);
}

int st_ack(st_shard *s, const char *uid, const char *sender, uint64_t upto,
           uint64_t *deleted, st_error *err)
{
    s_waiter wt = {.req = {.type = ST_REQ_ACK, .uid = uid, .sender = sender, .upto = upto}};
    int rc = s_submit_wait(s, &wt, err);
    if (deleted)
        *deleted = rc == ST_OK ? wt.req.deleted : 0;
    return rc;
}

static int s_expire_inbox(st_shard *s, const char *uid, uint64_t *purged, st_error *err)
{
    s_waiter wt = {.req = {.type = ST_REQ_EXPIRE, .uid = uid}};
    int rc = s_submit_wait(s, &wt, err);
    if (purged)
        *purged = rc == ST_OK ? wt.req.deleted : 0;
    return rc;
}

/* ----------------------------------------------------------------- reads */

/* A page's messages live in chunks of at least S_CHUNK bytes, chained
 * through p->mem_ (one malloc per chunk, not per message). */
#define S_CHUNK (64 * 1024)
typedef struct s_chunk {
    struct s_chunk *next;
    size_t used, cap;
    char data[];
} s_chunk;

void st_page_free(st_page *p)
{
    if (!p)
        return;
    for (s_chunk *c = p->mem_, *next; c; c = next) {
        next = c->next;
        free(c);
    }
    free(p->msgs);
    memset(p, 0, sizeof *p);
}

/* n bytes for a message of p, from its newest chunk or a new one. */
static char *s_page_alloc(st_page *p, size_t n)
{
    s_chunk *c = p->mem_;
    if (!c || c->cap - c->used < n) {
        size_t cap = n > S_CHUNK ? n : S_CHUNK;
        s_chunk *f = malloc(sizeof *f + cap);
        if (!f)
            return NULL;
        *f = (s_chunk){.next = c, .cap = cap};
        p->mem_ = c = f;
    }
    char *b = c->data + c->used;
    c->used += n;
    return b;
}

/* Copies a record into one block: sender\0 msg_id\0 content. */
static int s_page_add(st_page *p, uint64_t seq, const s_rec *r)
{
    char *b = s_page_alloc(p, r->sender_len + r->msg_id_len + 2 + r->content_len);
    if (!b)
        return ST_ENOMEM;
    st_msg *m = &p->msgs[p->n++];
    m->seq = seq;
    m->send_time_ms = r->send_time_ms;
    m->msg_type = r->msg_type;
    memcpy(b, r->sender, r->sender_len);
    b[r->sender_len] = 0;
    m->sender = b;
    b += r->sender_len + 1;
    memcpy(b, r->msg_id, r->msg_id_len);
    b[r->msg_id_len] = 0;
    m->msg_id = b;
    b += r->msg_id_len + 1;
    if (r->content_len)
        memcpy(b, r->content, r->content_len);
    m->content = (const uint8_t *)b;
    m->content_len = r->content_len;
    return ST_OK;
}

static void s_expire_done(st_req *r)
{
    free(r);
}

/* Fire-and-forget purge of an inbox's expired prefix, after a read met it. */
static void s_expire_later(st_shard *s, const char *uid)
{
    size_t n = strlen(uid);
    st_req *r = calloc(1, sizeof *r + n + 1);
    if (!r)
        return; /* the sweep will do it */
    char *u = (char *)(r + 1);
    memcpy(u, uid, n + 1);
    r->type = ST_REQ_EXPIRE;
    r->uid = u;
    r->done = s_expire_done;
    if (st_submit(s, r))
        free(r);
}

/* Decodes the record v of seq into the page unless it is expired; returns
 * 1 added, 0 skipped, or an error. */
static int s_page_take(st_shard *s, st_page *p, uint64_t seq, const uint8_t *v, size_t vn,
                       int64_t now, size_t *bytes, size_t max_bytes, st_error *err)
{
    s_rec r;
    if (s_rec_decode(v, vn, &r))
        return s_err(err, ST_ECORRUPT, "message %llu does not decode",
                     (unsigned long long)seq);
    if (s_expired(s, r.send_time_ms, now))
        return 0;
    if (max_bytes && p->n > 0 && *bytes + r.content_len > max_bytes)
        return 2; /* does not fit: the page ends before it */
    if (s_page_add(p, seq, &r))
        return s_err(err, ST_ENOMEM, "out of memory");
    *bytes += r.content_len;
    return 1;
}

static int s_read(st_shard *s, const char *uid, const char *sender, uint64_t after,
                  uint32_t limit, size_t max_bytes, st_page *out, st_error *err)
{
    assert(s && out);
    memset(out, 0, sizeof *out);
    if (st_check_uid(uid, "uid", err))
        return ST_EINVAL;
    if (sender && st_check_uid(sender, "sender", err))
        return ST_EINVAL;
    if (limit == 0 || limit > ST_PAGE_MAX)
        return s_err(err, ST_EINVAL, "limit: %u, must be 1..%d", limit, ST_PAGE_MAX);
    /* One snapshot for the head and the rows (see RANGE TOMBSTONES). */
    uint64_t gen = st_memo_gen(s->memo); /* before the snapshot (st_memo.h) */
    const rocksdb_snapshot_t *snap = rocksdb_create_snapshot(s->db);
    rocksdb_readoptions_t *ro = rocksdb_readoptions_create();
    rocksdb_readoptions_set_snapshot(ro, snap);
    rocksdb_readoptions_set_ignore_range_deletions(ro, 1);
    st_inbox h;
    int rc = s_get_head(s, ro, uid, &h, err);
    if (!rc && after > h.high)
        rc = s_err(err, ST_ECURSOR, "cursor: seq %llu is beyond the inbox's last message %llu",
                   (unsigned long long)after, (unsigned long long)h.high);
    if (!rc && !(out->msgs = malloc(limit * sizeof *out->msgs)))
        rc = s_err(err, ST_ENOMEM, "out of memory");
    if (rc) {
        rocksdb_readoptions_destroy(ro);
        rocksdb_release_snapshot(s->db, snap);
        return rc;
    }
    out->high = h.high;
    uint64_t from = (after > h.floor ? after : h.floor) + 1;
    rocksdb_readoptions_set_fill_cache(ro, 0); /* the rows: THE BLOCK CACHE */

    int64_t now = s_now(s);
    size_t bytes = 0, expired = 0;
    uint8_t lo[ST_KEY_MAX], hi[ST_KEY_MAX], k[ST_KEY_MAX];
    s_iter it;
    if (!sender) {
        size_t lon = s_key_msg(lo, uid, from);
        size_t hin = s_key_upper(hi, lo, lon - 8);
        s_iter_open(s, &it, lo, lon, hi, hin, 0, snap);
        for (; rocksdb_iter_valid(it.it); rocksdb_iter_next(it.it)) {
            size_t kl, vl;
            const uint8_t *kk = (const uint8_t *)rocksdb_iter_key(it.it, &kl);
            const uint8_t *v = (const uint8_t *)rocksdb_iter_value(it.it, &vl);
            if (out->n == limit) {
                out->more = true;
                break;
            }
            if (kl != lon) {
                rc = s_err(err, ST_ECORRUPT, "message key of inbox '%s'", uid);
                break;
            }
            int t = s_page_take(s, out, im_get64(kk + kl - 8), v, vl, now, &bytes, max_bytes, err);
            if (t < 0) {
                rc = t;
                break;
            }
            if (t == 0)
                expired++;
            if (t == 2) {
                out->more = true;
                break;
            }
        }
    } else {
        size_t lon = s_key_sidx(lo, uid, sender, from);
        size_t hin = s_key_upper(hi, lo, lon - 8);
        s_iter_open(s, &it, lo, lon, hi, hin, 0, snap);
        for (; rocksdb_iter_valid(it.it); rocksdb_iter_next(it.it)) {
            size_t kl;
            const uint8_t *kk = (const uint8_t *)rocksdb_iter_key(it.it, &kl);
            if (out->n == limit) {
                out->more = true;
                break;
            }
            if (kl != lon) {
                rc = s_err(err, ST_ECORRUPT, "sender index of inbox '%s'", uid);
                break;
            }
            uint64_t seq = im_get64(kk + kl - 8);
            size_t mk = s_key_msg(k, uid, seq);
            char *rerr = NULL;
            size_t vl = 0;
            char *v = rocksdb_get(s->db, ro, (const char *)k, mk, &vl, &rerr);
            if (rerr) {
                rc = s_rocks_err(err, "get", rerr);
                break;
            }
            if (!v)
                continue; /* acked between the index scan and this get */
            int t = s_page_take(s, out, seq, (const uint8_t *)v, vl, now, &bytes, max_bytes, err);
            rocksdb_free(v);
            if (t < 0) {
                rc = t;
                break;
            }
            if (t == 0)
                expired++;
            if (t == 2) {
                out->more = true;
                break;
            }
        }
    }
    int irc = s_iter_close(&it, err);
    rocksdb_readoptions_destroy(ro);
    rocksdb_release_snapshot(s->db, snap);
    if (!rc)
        rc = irc;
    if (rc) {
        st_page_free(out);
        return rc;
    }
    if (expired)
        s_expire_later(s, uid);
    else if (!sender) /* every row in (from - 1, last] is in the page */
        st_memo_put(s->memo, gen, uid, from - 1, out->msgs, out->n);
    s_ok(err);
    return ST_OK;
}

int st_read(st_shard *s, const char *uid, const char *sender, uint64_t after,
            uint32_t limit, size_t max_bytes, st_page *out, st_error *err)
{
    assert(s && out);
    memset(out, 0, sizeof *out);
    int rc = s_rd(s, err);
    if (rc)
        return rc;
    rc = s_read(s, uid, sender, after, limit, max_bytes, out, err);
    s_rd_end(s);
    return rc;
}

int st_inbox_info(st_shard *s, const char *uid, st_inbox *out, st_error *err)
{
    assert(s && out);
    memset(out, 0, sizeof *out);
    if (st_check_uid(uid, "uid", err))
        return ST_EINVAL;
    int rc = s_rd(s, err);
    if (rc)
        return rc;
    rc = s_get_head(s, s->ro_get, uid, out, err);
    s_rd_end(s);
    if (!rc)
        s_ok(err);
    return rc;
}

/* Whether the oldest stored message of an inbox has expired (one seek). */
static int s_oldest_expired(st_shard *s, const char *uid, const st_inbox *h, bool *yes,
                            st_error *err)
{
    uint8_t lo[ST_KEY_MAX], hi[ST_KEY_MAX];
    size_t lon = s_key_msg(lo, uid, h->floor + 1);
    size_t hin = s_key_upper(hi, lo, lon - 8);
    s_iter it;
    *yes = false;
    s_iter_open(s, &it, lo, lon, hi, hin, 0, NULL);
    if (rocksdb_iter_valid(it.it)) {
        size_t vl;
        const uint8_t *v = (const uint8_t *)rocksdb_iter_value(it.it, &vl);
        s_rec r;
        if (s_rec_decode(v, vl, &r) == ST_OK)
            *yes = s_expired(s, r.send_time_ms, s_now(s));
    }
    return s_iter_close(&it, err);
}


int st_counts(st_shard *s, const char *uid, st_count **out, size_t *n, uint64_t *total,
              st_error *err)
{
    assert(s && out && n && total);
    s_waiter wt = {.req = {.type = ST_REQ_COUNTS, .uid = uid}};
    int rc = s_submit_wait(s, &wt, err);
    *out = wt.req.counts;
    *n = wt.req.ncounts;
    *total = wt.req.total;
    return rc;
}

int st_counts_read(st_shard *s, const char *uid, st_count **out, size_t *n, uint64_t *total,
                   bool *purge, st_error *err)
{
    assert(s && out && n && total && purge);
    *out = NULL;
    *n = 0;
    *total = 0;
    *purge = false;
    if (st_check_uid(uid, "uid", err))
        return ST_EINVAL;
    int rc = s_rd(s, err);
    if (rc)
        return rc;
    st_inbox h;
    rc = s_get_head(s, s->ro_get, uid, &h, err);
    if (!rc && h.count)
        rc = s_oldest_expired(s, uid, &h, purge, err);
    if (!rc && !*purge)
        rc = s_count_scan(s, uid, out, n, total, err);
    s_rd_end(s);
    if (!rc)
        s_ok(err);
    return rc;
}

/* ---------------------------------------------------------- maintenance */

int st_expire(st_shard *s, uint64_t *purged, st_error *err)
{
    assert(s);
    uint64_t total = 0;
    static const uint8_t lo[1] = {'I'}, hi[1] = {'J'};
    s_iter it;
    if (purged)
        *purged = 0;
    int rc = s_rd(s, err); /* held while waiting for the writer: DISK TROUBLE */
    if (rc)
        return rc;
    /* The messages of the shard: the heads' counts as the iterator sees
     * them, minus the writes counted before it opened (so within the
     * writes of that instant). */
    uint64_t heads = 0;
    pthread_mutex_lock(&s->mu);
    int64_t delta0 = s->msg_delta;
    pthread_mutex_unlock(&s->mu);
    s_iter_open(s, &it, lo, 1, hi, 1, S_IT_TOTAL, NULL);
    for (; rocksdb_iter_valid(it.it) && !rc; rocksdb_iter_next(it.it)) {
        size_t kl, vl;
        const char *kk = rocksdb_iter_key(it.it, &kl);
        const uint8_t *v = (const uint8_t *)rocksdb_iter_value(it.it, &vl);
        if (kl < 3 || kl - 2 > ST_UID_MAX || vl != ST_HEAD_LEN) {
            rc = s_err(err, ST_ECORRUPT, "inbox head key of %zu bytes", kl);
            break;
        }
        char uid[ST_UID_MAX + 1];
        memcpy(uid, kk + 1, kl - 2);
        uid[kl - 2] = 0;
        st_inbox h;
        if (!s_head_decode(v, &h)) {
            rc = s_head_corrupt(err, uid, &h);
            break;
        }
        heads += h.count;
        bool old = false;
        uint64_t n = 0;
        if (h.count && !(rc = s_oldest_expired(s, uid, &h, &old, err)) && old)
            rc = s_expire_inbox(s, uid, &n, err);
        total += n;
    }
    int irc = s_iter_close(&it, err);
    s_rd_end(s);
    if (!rc)
        rc = irc;
    if (!rc) {
        pthread_mutex_lock(&s->mu);
        s->msg_base = (int64_t)heads - delta0;
        s->stats.messages_known = true;
        pthread_mutex_unlock(&s->mu);
    }
    if (purged)
        *purged = total;
    if (!rc)
        s_ok(err);
    return rc;
}

int st_compact(st_shard *s, st_error *err)
{
    assert(s);
    int rc = s_rd(s, err);
    if (rc)
        return rc;
    rocksdb_compact_range(s->db, NULL, 0, NULL, 0);
    s_rd_end(s);
    s_ok(err);
    return ST_OK;
}

int st_flush(st_shard *s, st_error *err)
{
    assert(s);
    int rc = s_rd(s, err);
    if (rc)
        return rc;
    rocksdb_flushoptions_t *fo = rocksdb_flushoptions_create();
    rocksdb_flushoptions_set_wait(fo, 1);
    char *rerr = NULL;
    rocksdb_flush(s->db, fo, &rerr);
    rocksdb_flushoptions_destroy(fo);
    s_rd_end(s);
    if (rerr)
        return s_rocks_err(err, "flush", rerr);
    s_ok(err);
    return ST_OK;
}

bool st_writable(st_shard *s)
{
    return atomic_load(&s->writable);
}

void st_stats_get(st_shard *s, st_stats *out)
{
    assert(s && out);
    pthread_mutex_lock(&s->mu);
    *out = s->stats;
    int64_t m = s->msg_base + s->msg_delta;
    out->messages = m > 0 ? (uint64_t)m : 0;
    pthread_mutex_unlock(&s->mu);
}

int st_property(st_shard *s, const char *name, uint64_t *out)
{
    assert(s && name && out);
    *out = 0;
    if (s_rd(s, NULL))
        return -1;
    int rc = s->db && rocksdb_property_int(s->db, name, out) == 0 ? 0 : -1;
    s_rd_end(s);
    return rc;
}

uint64_t st_debug_keys(st_shard *s, char table)
{
    assert(s);
    uint8_t lo[1] = {(uint8_t)table}, hi[1] = {(uint8_t)(table + 1)};
    s_iter it;
    uint64_t n = 0;
    if (s_rd(s, NULL))
        return 0;
    s_iter_open(s, &it, lo, 1, hi, 1, S_IT_TOTAL | S_IT_EXACT, NULL);
    for (; rocksdb_iter_valid(it.it); rocksdb_iter_next(it.it))
        n++;
    s_iter_close(&it, NULL);
    s_rd_end(s);
    return n;
}

/* The number after `name` in RocksDB's "k1=v1; k2=v2" property text. */
static uint64_t s_prop_u64(const char *text, const char *name)
{
    const char *p = strstr(text, name);
    return p ? strtoull(p + strlen(name), NULL, 10) : 0;
}

int st_checkpoint(st_shard *s, const char *dir, st_error *err)
{
    assert(s && dir);
    int rc = s_rd(s, err);
    if (rc)
        return rc;
    char *rerr = NULL;
    rocksdb_checkpoint_t *cp = rocksdb_checkpoint_object_create(s->db, &rerr);
    if (!rerr)
        rocksdb_checkpoint_create(cp, dir, 0 /* flush the memtables first */, &rerr);
    if (cp)
        rocksdb_checkpoint_object_destroy(cp);
    s_rd_end(s);
    if (rerr)
        return s_rocks_err(err, "checkpoint", rerr);
    s_ok(err);
    return ST_OK;
}

int st_debug_tombstones(st_shard *s, uint64_t *deletes, uint64_t *range_deletes,
                        st_error *err)
{
    assert(s && deletes && range_deletes);
    *deletes = *range_deletes = 0;
    int rc = st_flush(s, err);
    if (rc)
        return rc;
    if ((rc = s_rd(s, err)))
        return rc;
    char *p = rocksdb_property_value(s->db, "rocksdb.aggregated-table-properties");
    s_rd_end(s);
    if (!p)
        return s_err(err, ST_EIO, "no aggregated-table-properties");
    /* RocksDB's "# deletions" counts the range deletions too. */
    uint64_t all = s_prop_u64(p, "# deletions=");
    *range_deletes = s_prop_u64(p, "# range deletions=");
    *deletes = all >= *range_deletes ? all - *range_deletes : 0;
    rocksdb_free(p);
    return ST_OK;
}
