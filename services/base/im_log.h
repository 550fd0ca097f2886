/*
 * im_log.h - structured log lines: one event per line on stderr,
 * `key=value` pairs, for the servers' events (not for the command line's
 * usage errors, which stay plain sentences for humans).
 *
 *   ts=2025-01-31T12:00:00.123Z level=warn src=shard shard=2 msg="dropped a message of 3 frames"
 *
 * Every line has ts (UTC, milliseconds), level (debug, info, warn, error),
 * src (the subsystem: gateway, shard, storage, metrics, imbox) and msg;
 * kv, when given, is put before msg as it is: preformatted key=value pairs
 * whose values need no quoting (numbers, names chosen by the code). msg is
 * quoted when it holds a space, a quote, '=' or is empty; '"' and '\' are
 * escaped and control characters become \n, \t or \xHH, so that one event
 * is one line whatever it holds. A line is at most IM_LOG_LINE bytes (the
 * message is cut) and goes out in one write(2), so lines of several
 * threads never interleave.
 *
 * What a line may hold: never message content, tokens, keys or the
 * secret, and no uids (personal data): counts, shard indexes, error texts
 * of the libraries, file paths of the operator's own configuration.
 *
 * Threads: any; the level is a relaxed atomic read.
 */
#ifndef IMBOX_IM_LOG_H
#define IMBOX_IM_LOG_H

#include <stdbool.h>
#include <stdio.h>

#define IM_LOG_LINE 1024

typedef enum { IM_LOG_DEBUG, IM_LOG_INFO, IM_LOG_WARN, IM_LOG_ERROR } im_log_level;

/* Sets the least level written ("debug", "info", "warn", "error"; default
 * info). 0, or -1 for an unknown name (the level is unchanged). */
int im_log_set_level(const char *name);

/* Whether a line of level lv would be written. */
bool im_log_on(im_log_level lv);

/* Writes one line (see the top); kv may be NULL. */
void im_log(im_log_level lv, const char *src, const char *kv, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* im_log with kv "key=idx" (a shard's index, say). */
#define IM_LOG_IDX(lv, src, key, idx, ...)                                  \
    do {                                                                    \
        char im_kv_[48];                                                    \
        snprintf(im_kv_, sizeof im_kv_, "%s=%d", (key), (int)(idx));        \
        im_log((lv), (src), im_kv_, __VA_ARGS__);                           \
    } while (0)

/* The line im_log would write, into buf (NUL-terminated, without the
 * newline; at most IM_LOG_LINE bytes with it), with ts_ms as its time:
 * for tests. Returns the length. */
int im_log_format(char *buf, long long ts_ms, im_log_level lv, const char *src, const char *kv,
                  const char *msg);

#endif
