/* im_log.c - structured log lines; see im_log.h. */
#include "im_log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static atomic_int s_level = IM_LOG_INFO;
static const char *const s_names[] = {"debug", "info", "warn", "error"};

int im_log_set_level(const char *name)
{
    for (int i = 0; i < 4; i++)
        if (name && !strcmp(name, s_names[i])) {
            atomic_store_explicit(&s_level, i, memory_order_relaxed);
            return 0;
        }
    return -1;
}

bool im_log_on(im_log_level lv)
{
    return (int)lv >= atomic_load_explicit(&s_level, memory_order_relaxed);
}

/* Appends c to buf[*n] while there is room for it and the terminator. */
static void s_put(char *buf, size_t cap, size_t *n, const char *s, size_t len)
{
    if (*n + len + 1 > cap)
        len = *n + 1 < cap ? cap - 1 - *n : 0;
    memcpy(buf + *n, s, len);
    *n += len;
    buf[*n] = 0;
}

int im_log_format(char *buf, long long ts_ms, im_log_level lv, const char *src, const char *kv,
                  const char *msg)
{
    /* The room of the line: IM_LOG_LINE with the newline, and the closing
     * quote of msg is always kept. */
    const size_t cap = IM_LOG_LINE - 2;
    time_t sec = (time_t)(ts_ms / 1000);
    struct tm tm;
    gmtime_r(&sec, &tm);
    int n0 = snprintf(buf, cap, "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03dZ level=%s src=%s%s%s msg=",
                      tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                      tm.tm_sec, (int)(ts_ms % 1000), s_names[lv & 3], src ? src : "imbox",
                      kv && *kv ? " " : "", kv ? kv : "");
    size_t n = n0 < 0 ? 0 : (size_t)n0 < cap ? (size_t)n0 : cap - 1;
    bool quote = !*msg || strpbrk(msg, " \"=\\") != NULL;
    for (const unsigned char *p = (const unsigned char *)msg; *p && !quote; p++)
        quote = *p < 0x20 || *p == 0x7f;
    if (quote)
        s_put(buf, cap, &n, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)msg; *p; p++) {
        char e[5];
        size_t el = 1;
        e[0] = (char)*p;
        if (*p == '"' || *p == '\\') {
            e[0] = '\\';
            e[1] = (char)*p;
            el = 2;
        } else if (*p == '\n' || *p == '\t') {
            e[0] = '\\';
            e[1] = *p == '\n' ? 'n' : 't';
            el = 2;
        } else if (*p < 0x20 || *p == 0x7f) {
            snprintf(e, sizeof e, "\\x%02x", *p);
            el = 4;
        }
        if (n + el + 1 >= cap) /* cut, whole escapes only */
            break;
        s_put(buf, cap, &n, e, el);
    }
    if (quote) { /* room kept by cap */
        buf[n++] = '"';
        buf[n] = 0;
    }
    return (int)n;
}

void im_log(im_log_level lv, const char *src, const char *kv, const char *fmt, ...)
{
    if (!im_log_on(lv))
        return;
    char msg[IM_LOG_LINE];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    char line[IM_LOG_LINE];
    int n = im_log_format(line, (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000, lv, src, kv,
                          msg);
    line[n++] = '\n';
    /* One write: lines of several threads do not interleave. A failed or
     * short write to stderr has nowhere to be reported. */
    ssize_t w = write(2, line, (size_t)n);
    (void)w;
}
