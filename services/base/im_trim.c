/* im_trim.c - see im_trim.h. */
#include "im_trim.h"

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "im_base.h"
#include "im_log.h"

struct im_trim {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    long long threshold;
    int period_ms;
    const char *src;
    /* under mu */
    long long base;   /* slack after the last trim, or at start; -1: unknown */
    bool want, stop;
    long count;
    long long returned;  /* bytes the trims gave back */
};

/* Resident bytes that malloc has not handed out, or -1. */
static long long s_slack(void)
{
    char buf[128];
    int fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = 0;
    long long size, resident;
    if (sscanf(buf, "%lld %lld", &size, &resident) != 2)
        return -1;
    struct mallinfo2 mi = mallinfo2();
    return resident * sysconf(_SC_PAGESIZE) - (long long)(mi.uordblks + mi.hblkhd);
}

static double s_ms_since(const struct timespec *t0)
{
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (double)(t1.tv_sec - t0->tv_sec) * 1e3 + (double)(t1.tv_nsec - t0->tv_nsec) / 1e6;
}

/* Under mu: whether slack (just measured) asks for a trim. */
static bool s_grew(im_trim *t, long long slack)
{
    if (t->base < 0) {
        t->base = slack; /* unknown so far: measure from now */
        return false;
    }
    return slack >= 0 && slack - t->base >= t->threshold;
}

static void *s_main(void *arg)
{
    im_trim *t = arg;
    im_thread_name("im-trim");
    pthread_mutex_lock(&t->mu);
    for (;;) {
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_sec += t->period_ms / 1000;
        until.tv_nsec += (long)(t->period_ms % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        while (!t->want && !t->stop) {
            if (pthread_cond_timedwait(&t->cv, &t->mu, &until) == ETIMEDOUT) {
                pthread_mutex_unlock(&t->mu);
                long long slack = s_slack(); /* mallinfo2 locks arenas: not under mu */
                pthread_mutex_lock(&t->mu);
                t->want = t->want || s_grew(t, slack);
                break;
            }
        }
        if (t->stop)
            break;
        if (!t->want)
            continue;
        pthread_mutex_unlock(&t->mu);
        long long before = s_slack();
        struct timespec t0;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        malloc_trim(0);
        double ms = s_ms_since(&t0);
        long long after = s_slack();
        bool big = before >= 0 && after >= 0 && before - after >= t->threshold;
        im_log(big ? IM_LOG_INFO : IM_LOG_DEBUG, t->src, NULL,
               "gave %lld MB of free heap back to the system in %.1f ms",
               before >= 0 && after >= 0 ? (before - after) >> 20 : 0, ms);
        pthread_mutex_lock(&t->mu);
        t->base = after;
        t->want = false;
        t->count++;
        if (before >= 0 && after >= 0 && before > after)
            t->returned += before - after;
    }
    pthread_mutex_unlock(&t->mu);
    return NULL;
}

im_trim *im_trim_start(long long threshold, int period_ms, const char *src)
{
    im_trim *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->threshold = threshold > 0 ? threshold : 1;
    t->period_ms = period_ms > 0 ? period_ms : 1000;
    t->src = src;
    t->base = s_slack();
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&t->mu, NULL);
    pthread_cond_init(&t->cv, &ca);
    pthread_condattr_destroy(&ca);
    int rc = pthread_create(&t->thread, NULL, s_main, t);
    if (rc) {
        pthread_mutex_destroy(&t->mu);
        pthread_cond_destroy(&t->cv);
        free(t);
        errno = rc;
        return NULL;
    }
    return t;
}

bool im_trim_check(im_trim *t, bool force)
{
    if (!t)
        return false;
    long long slack = force ? 0 : s_slack();
    bool ask = false;
    pthread_mutex_lock(&t->mu);
    if (!t->want && (force || s_grew(t, slack))) {
        t->want = ask = true;
        pthread_cond_signal(&t->cv);
    }
    pthread_mutex_unlock(&t->mu);
    return ask;
}

void im_trim_stats(const im_trim *t, long *trims, long long *returned)
{
    im_trim *m = (im_trim *)t; /* the lock is not part of the value */
    pthread_mutex_lock(&m->mu);
    *trims = m->count;
    *returned = m->returned;
    pthread_mutex_unlock(&m->mu);
}

void im_trim_stop(im_trim **tp)
{
    im_trim *t = *tp;
    if (!t)
        return;
    *tp = NULL;
    pthread_mutex_lock(&t->mu);
    t->stop = true;
    pthread_cond_signal(&t->cv);
    pthread_mutex_unlock(&t->mu);
    pthread_join(t->thread, NULL);
    pthread_mutex_destroy(&t->mu);
    pthread_cond_destroy(&t->cv);
    free(t);
}
