/* im_base.c - see im_base.h. */
#include "im_base.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

const char *im_receipt_text(int code)
{
    switch (code) {
    case IM_OK: return "";
    case IM_RESOURCE_EXHAUSTED: return IM_TEXT_INBOX_FULL;
    case IM_INTERNAL: return IM_TEXT_NOT_STORED;
    default: return "the message was not stored";
    }
}

/* Length of the valid UTF-8 sequence at p (n bytes left), 0 if invalid. */
static size_t s_utf8_seq(const uint8_t *p, size_t n, uint32_t *cp)
{
    size_t len;
    uint32_t c, min;
    if (p[0] < 0x80) {
        *cp = p[0];
        return 1;
    } else if ((p[0] & 0xE0) == 0xC0) {
        len = 2, c = p[0] & 0x1F, min = 0x80;
    } else if ((p[0] & 0xF0) == 0xE0) {
        len = 3, c = p[0] & 0x0F, min = 0x800;
    } else if ((p[0] & 0xF8) == 0xF0) {
        len = 4, c = p[0] & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xC0) != 0x80)
            return 0;
        c = c << 6 | (p[i] & 0x3F);
    }
    if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
        return 0; /* overlong, out of range, or a surrogate */
    *cp = c;
    return len;
}

bool im_utf8_valid(const char *p, size_t n)
{
    const uint8_t *u = (const uint8_t *)p;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t len = s_utf8_seq(u + i, n - i, &cp);
        if (len == 0)
            return false;
        i += len;
    }
    return true;
}

int im_fail(char *msg, size_t cap, const char *fmt, ...)
{
    if (msg && cap) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, cap, fmt, ap);
        va_end(ap);
    }
    return -1;
}

int im_uid_check(const char *uid, const char *field, char *msg, size_t cap)
{
    if (!uid)
        return im_fail(msg, cap, "%s: missing", field);
    size_t n = strnlen(uid, IM_UID_MAX + 1);
    if (n == 0)
        return im_fail(msg, cap, "%s: empty (1..%d bytes)", field, IM_UID_MAX);
    if (n > IM_UID_MAX)
        return im_fail(msg, cap, "%s: longer than %d bytes", field, IM_UID_MAX);
    const uint8_t *p = (const uint8_t *)uid;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t len = s_utf8_seq(p + i, n - i, &cp);
        if (len == 0)
            return im_fail(msg, cap, "%s: not valid UTF-8 (byte %zu)", field, i);
        if (cp < 0x20 || (cp >= 0x7F && cp <= 0x9F))
            return im_fail(msg, cap, "%s: control character at byte %zu", field, i);
        i += len;
    }
    return 0;
}

bool im_uid_valid(const char *p, size_t n)
{
    if (n == 0 || n > IM_UID_MAX)
        return false;
    const uint8_t *u = (const uint8_t *)p;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t len = s_utf8_seq(u + i, n - i, &cp);
        if (len == 0 || cp < 0x20 || (cp >= 0x7F && cp <= 0x9F))
            return false;
        i += len;
    }
    return true;
}

void im_copy_str(char *dst, size_t cap, const char *src)
{
    size_t n = strnlen(src, cap - 1);
    memcpy(dst, src, n);
    dst[n] = '\0';
}

int im_read_file(const char *path, size_t max, char **out, size_t *len, char *msg, size_t cap)
{
    *out = NULL;
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f)
        return im_fail(msg, cap, "%s: %s", path, strerror(errno));
    char *p = malloc(max + 1);
    size_t n = p ? fread(p, 1, max + 1, f) : 0;
    bool bad = ferror(f);
    fclose(f);
    if (!p || bad || n == 0 || n > max) {
        free(p);
        if (n > max)
            return im_fail(msg, cap, "%s: larger than %zu bytes", path, max);
        return im_fail(msg, cap, "%s: %s", path,
                       !p ? "out of memory" : bad ? "read error" : "empty file");
    }
    p[n] = '\0';
    *out = p;
    *len = n;
    return 0;
}

void im_put64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

uint64_t im_get64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

int64_t im_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void im_thread_name(const char *fmt, ...)
{
    char name[16]; /* TASK_COMM_LEN */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    pthread_setname_np(pthread_self(), name);
}
