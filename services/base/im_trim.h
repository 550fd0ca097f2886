/*
 * im_trim.h - gives the heap's free memory back to the system, on a thread
 * of its own.
 *
 * glibc keeps what a program frees in its arenas, resident, for the next
 * allocations; it returns little of it by itself. After a burst (thousands
 * of calls that gRPC made and freed, pages read and sent) a server can so
 * stay at its peak for good, near its memory limit. malloc_trim(0) hands
 * the free pages back (measured: a gateway at 619 MB after 60,000 HTTP/2
 * rapid resets went to 34 MB), but it walks every arena and took up to 112
 * ms there: too long for a thread that answers requests, hence the thread.
 *
 *   im_trim *t = im_trim_start(IM_TRIM_SLACK, IM_TRIM_PERIOD_MS, "gateway");
 *   im_trim_check(t, true);    // something big was freed: trim now
 *   im_trim_stop(&t);
 *
 * "Slack" is the process's resident memory less what malloc has handed out
 * (its arenas' chunks in use and its mmapped chunks): free heap, plus what
 * is not heap at all (code, stacks), which a trim leaves. Every period the
 * thread measures the slack and trims when it grew by the threshold since
 * the last trim (or the start); a caller may also ask for a trim at once
 * (force). One trim at a time: an ask while one is pending or under way
 * asks nothing more. Each trim measures the slack again afterwards, so
 * memory that a trim cannot give back does not ask for another. Each trim
 * is logged (how much, how long) under src: at info when it gave back at
 * least the threshold, else at debug.
 *
 * Cost of a measure: mallinfo2() (locks and walks each arena's bins; 0.01%
 * of a busy gateway's CPU samples at one a second) and a read of
 * /proc/self/statm, on the trimmer's thread. Threads: any.
 */
#ifndef IMBOX_IM_TRIM_H
#define IMBOX_IM_TRIM_H

#include <stdbool.h>

/* What a server process runs its trimmer with (a gateway, `imbox shard`). */
#define IM_TRIM_SLACK (32ll << 20)
#define IM_TRIM_PERIOD_MS 1000

typedef struct im_trim im_trim;

/* Starts the trimmer's thread; NULL if it cannot (out of memory, or no
 * thread: errno says). threshold: bytes of slack growth that ask for a
 * trim (> 0); period_ms: how often the thread measures (> 0). src: the log
 * lines' src (a literal: kept, not copied). */
im_trim *im_trim_start(long long threshold, int period_ms, const char *src);

/* Measures now, as the thread does every period: asks for a trim if the
 * slack grew by the threshold since the last one, or if force, unless one
 * is already asked for or under way. Returns at once, true if it asked; t
 * may be NULL (nothing happens: false). */
bool im_trim_check(im_trim *t, bool force);

/* Trims done so far, and the bytes they gave back (the slack before each
 * less after, when it fell): the metrics' imbox_heap_*_total. */
void im_trim_stats(const im_trim *t, long *trims, long long *returned);

/* Stops the thread (a trim under way finishes first) and frees; *t is
 * NULL after, and may be NULL before. */
void im_trim_stop(im_trim **t);

#endif
