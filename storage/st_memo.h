/* st_memo: the pages the engine read last, so that acking a page does not
 * read its rows a second time (internal to storage/).
 *
 * A whole-inbox ack up to seq N must know the sender of every message it
 * deletes (each sender's count and index rows change). Draining an inbox
 * page by page, the receiver acks exactly the page it read last: the read
 * leaves a memo "the inbox's rows in (lo, hi] are exactly these (seq,
 * sender)", and the ack takes it instead of scanning the rows again.
 *
 * Why a memo stays true: sequence numbers are never reused and appends
 * only add rows above every existing one, so rows in (lo, hi] can only
 * disappear. A whole-inbox ack or an expiry removes a prefix (the rows at
 * or below the new floor, which the taker skips); a conversation ack
 * removes rows anywhere above the floor, so it clears the uid's memos
 * after its write (st_memo_clear_uid), and a read that began before that
 * clear leaves none: the reader takes st_memo_gen() before its snapshot,
 * and st_memo_put() drops the memo if a clear happened since.
 *
 * Bounded: ST_MEMO_SETS x ST_MEMO_WAYS memos of at most ST_MEMO_BYTES each
 * (4 MiB in all); a page that needs more is not memoized, and an ack
 * without a memo scans as before. Thread-safe (one mutex): the reader and
 * the writer are different threads. */
#ifndef IMBOX_ST_MEMO_H
#define IMBOX_ST_MEMO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "st.h"

#define ST_MEMO_SETS 64
#define ST_MEMO_WAYS 4
#define ST_MEMO_BYTES (16 * 1024)

typedef struct st_memo st_memo;

/* One memoized row: its sender is senders[off .. off+len). */
typedef struct st_memo_row {
    uint64_t seq;
    uint32_t off;
    uint8_t len;
} st_memo_row;

/* A memo taken out of the table (st_memo_take); the caller frees it. */
typedef struct st_memo_page {
    uint64_t lo, hi;          /* the inbox's rows in (lo, hi] are rows[] */
    size_t n;
    st_memo_row *rows;        /* ascending seq */
    const char *senders;
} st_memo_page;

st_memo *st_memo_new(void);
void st_memo_free(st_memo *m);

/* The clear generation; a reader takes it before its snapshot. */
uint64_t st_memo_gen(st_memo *m);

/* Records that uid's rows in (lo, msgs[n-1].seq] are exactly msgs[0..n)
 * (seq ascending, all above lo), read under a snapshot taken after
 * st_memo_gen() returned gen. Dropped if a clear happened since, if n is
 * 0, or if it would exceed ST_MEMO_BYTES. Replaces a memo of the same uid
 * and lo; otherwise evicts the oldest of its set when the set is full. */
void st_memo_put(st_memo *m, uint64_t gen, const char *uid, uint64_t lo, const st_msg *msgs,
                 size_t n);

/* Removes and returns a memo of uid that covers (floor, upto] (lo <= floor
 * and upto <= hi), or NULL. Free it with st_memo_page_free. */
st_memo_page *st_memo_take(st_memo *m, const char *uid, uint64_t floor, uint64_t upto);
void st_memo_page_free(st_memo_page *p);

/* Drops uid's memos and bumps the generation (after a write that removed
 * rows above uid's floor). */
void st_memo_clear_uid(st_memo *m, const char *uid);

/* Drops every memo and bumps the generation (a failed write, a reopen). */
void st_memo_clear(st_memo *m);

/* Memos held, for tests. */
size_t st_memo_count(st_memo *m);

#endif
