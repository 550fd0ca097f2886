/*
 * im_base.h - the vocabulary every layer of imbox shares: the format's
 * ceilings, the status codes, the texts a client reads in a receipt, the
 * uid rule, and big-endian integers. A leaf: it depends on libc only, so
 * the engine (storage/), the shared service modules (services/common/), the
 * gateway and the shard all say the same thing from one definition, and
 * the gateway can know the rules without reaching the engine.
 *
 * Threads: no state; every function is safe from any thread.
 */
#ifndef IMBOX_IM_BASE_H
#define IMBOX_IM_BASE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Ceilings of the formats (API and on disk). Configurable limits may lower
 * them, never raise them. */
#define IM_UID_MAX 64          /* bytes of a uid (receiver or sender) */
#define IM_MSGID_MAX 128       /* bytes of a msg_id */
#define IM_CONTENT_MAX 65536   /* bytes of a message's content */
#define IM_PAGE_MAX 1000       /* messages per page */
#define IM_RECEIVERS_MAX 1000  /* receivers per Send */
#define IM_PRESENCE_MAX 1000   /* uids per Presence call */

/* gRPC status codes, by number, for code that does not include grpc.h. */
enum {
    IM_OK = 0,
    IM_CANCELLED = 1,
    IM_INVALID_ARGUMENT = 3,
    IM_DEADLINE_EXCEEDED = 4,
    IM_NOT_FOUND = 5,
    IM_RESOURCE_EXHAUSTED = 8,
    IM_FAILED_PRECONDITION = 9,
    IM_UNIMPLEMENTED = 12,
    IM_INTERNAL = 13,
    IM_UNAVAILABLE = 14,
    IM_DATA_LOSS = 15,
    IM_UNAUTHENTICATED = 16,
};

/* What a receipt says for a receiver that was not stored, by its code. */
#define IM_TEXT_INBOX_FULL "inbox full: the receiver has reached its quota of stored messages"
#define IM_TEXT_NOT_STORED "storage error: the message was not stored"
#define IM_TEXT_DISK_FULL "disk full: the receiver's shard has no space left; " \
                          "the message was not stored (retry later with the same msg_id)"

/* The receipt text for a per-receiver code ("" for IM_OK); static. */
const char *im_receipt_text(int code);

/* Writes the printf-style message into msg (cap bytes, cut to fit; msg may
 * be NULL or cap 0: nothing written) and returns -1: the error return of
 * every function that reports why into a caller's buffer. */
int im_fail(char *msg, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Whether p[0..n) is valid UTF-8 (no overlongs, surrogates, or > U+10FFFF). */
bool im_utf8_valid(const char *p, size_t n);

/*
 * The one rule for uids: 1..IM_UID_MAX bytes of valid UTF-8 without control
 * characters (C0, DEL, C1), so never 0x00, which the storage keys use as a
 * separator. Returns 0, or -1 with msg (cap bytes, may be NULL) saying why,
 * starting with `field`.
 */
int im_uid_check(const char *uid, const char *field, char *msg, size_t cap);

/* The same rule for p[0..n), not NUL-terminated (a stored record's sender). */
bool im_uid_valid(const char *p, size_t n);

/* Copies src into dst[cap] (cap >= 1), cut at cap - 1 bytes: snprintf's
 * "%s" without the formatting, for the copies on a request's path. */
void im_copy_str(char *dst, size_t cap, const char *src);

/* Reads the file at path whole into *out (malloc'ed, NUL-terminated, its
 * size in *len) when it holds 1..max bytes (a PEM file, a secret). Returns
 * 0, or -1 with msg (cap bytes) saying why, starting with the path. */
int im_read_file(const char *path, size_t max, char **out, size_t *len, char *msg, size_t cap);

/* CLOCK_MONOTONIC in milliseconds: deadlines, timeouts, periods. */
int64_t im_mono_ms(void);

/* Names the calling thread (printf format, cut to the kernel's 15 bytes),
 * so that top -H and /proc/PID/task/TID/comm tell the threads apart. */
void im_thread_name(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Big-endian 64-bit integers (keys sort numerically; wire formats). */
void im_put64(uint8_t *p, uint64_t v);
uint64_t im_get64(const uint8_t *p);

#endif
