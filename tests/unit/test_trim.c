/*
 * test_trim.c - CUnit suite of im_trim.h: a check asks for a trim only
 * when the slack (resident memory malloc has not handed out) grew by the
 * threshold, or when forced; the thread measures by itself every period;
 * the trim runs on the trimmer's thread and
 * gives freed heap back (the process's RSS falls); a trim resets the
 * measure, so the memory it gave back asks for nothing more.
 *
 * Under AddressSanitizer malloc is ASan's (its quarantine holds what is
 * freed, and mallinfo2 reports glibc's unused arenas), so the suite checks
 * there only what does not depend on the allocator.
 *
 * Usage: test_trim [test-name]   (no argument: the whole suite)
 * Exit status: 0 when every assertion held, 1 otherwise.
 */
#include "im_trim.h"

#include "im_cunit.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#define ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ASAN 1
#endif
#endif
#ifndef ASAN
#define ASAN 0
#endif

#define EXPECT(cond, ...) im_cunit_record(IM_HERE, (cond), __VA_ARGS__)
#define MB (1ll << 20)
#define CHUNK 8192
#define WAIT_MS 10000 /* a trim of a small test heap takes milliseconds */
#define QUIET_MS 600000 /* a period the tests never reach: only their checks */

static long long rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long long size = 0, resident = -1;
    if (f) {
        if (fscanf(f, "%lld %lld", &size, &resident) != 2)
            resident = -1;
        fclose(f);
    }
    return resident < 0 ? -1 : resident * sysconf(_SC_PAGESIZE);
}

static long count(const im_trim *t)
{
    long n;
    long long bytes;
    im_trim_stats(t, &n, &bytes);
    return n;
}

static long long returned(const im_trim *t)
{
    long n;
    long long bytes;
    im_trim_stats(t, &n, &bytes);
    return bytes;
}

/* Waits, bounded, until t has done n trims; whether it has. */
static bool wait_trims(const im_trim *t, long n)
{
    for (int i = 0; i < WAIT_MS; i++) {
        if (count(t) >= n)
            return true;
        nanosleep(&(struct timespec){0, 1000000}, NULL);
    }
    return count(t) >= n;
}

/* Allocates and touches bytes of heap in small chunks (inside malloc's
 * arena, not mmapped), pins the arena's top with one more chunk so that
 * free cannot shrink the heap by itself, then frees the chunks: resident
 * free heap. Returns the pin (free it last). */
static void *free_heap(long long bytes)
{
    size_t n = (size_t)(bytes / CHUNK);
    char **v = malloc(n * sizeof *v);
    EXPECT(v != NULL, "malloc of the chunk list");
    if (!v)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        v[i] = malloc(CHUNK);
        if (v[i])
            memset(v[i], 0x5a, CHUNK);
    }
    void *pin = malloc(64);
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
    return pin;
}

static void test_null_is_nothing(void)
{
    im_trim *t = NULL;
    EXPECT(!im_trim_check(NULL, true), "a check of no trimmer asks nothing");
    im_trim_stop(&t);
    EXPECT(t == NULL, "stopping no trimmer is a no-op");
}

static void test_quiet_heap_asks_nothing(void)
{
    im_trim *t = im_trim_start(32 * MB, QUIET_MS, "test");
    EXPECT(t != NULL, "the trimmer starts");
    if (!t)
        return;
    /* Under ASan the slack moves with ASan's own memory: nothing to say. */
    for (int i = 0; i < 3 && !ASAN; i++)
        EXPECT(!im_trim_check(t, false), "check %d on a quiet heap asks no trim", i);
    EXPECT(count(t) == 0 || ASAN, "no trim done (got %ld)", count(t));
    im_trim_stop(&t);
    EXPECT(t == NULL, "stopped");
}

static void test_forced_trims_run_on_its_thread(void)
{
    im_trim *t = im_trim_start(32 * MB, QUIET_MS, "test");
    EXPECT(t != NULL, "the trimmer starts");
    if (!t)
        return;
    EXPECT(im_trim_check(t, true), "a forced check asks");
    EXPECT(wait_trims(t, 1), "the trim was done (count %ld)", count(t));
    EXPECT(im_trim_check(t, true), "a forced check after it asks again");
    EXPECT(wait_trims(t, 2), "the second trim was done (count %ld)", count(t));
    im_trim_stop(&t);
}

static void test_freed_heap_goes_back(void)
{
    if (ASAN) {
        EXPECT(true, "skipped under AddressSanitizer");
        return;
    }
    im_trim *t = im_trim_start(32 * MB, QUIET_MS, "test");
    EXPECT(t != NULL, "the trimmer starts");
    if (!t)
        return;
    void *pin = free_heap(96 * MB);
    long long before = rss_bytes();
    EXPECT(im_trim_check(t, false), "96 MB of freed heap asks for a trim");
    EXPECT(wait_trims(t, 1), "the trim was done (count %ld)", count(t));
    long long after = rss_bytes();
    EXPECT(before - after >= 64 * MB, "RSS fell by %lld MB (from %lld to %lld MB)",
           (before - after) / MB, before / MB, after / MB);
    EXPECT(returned(t) >= 64 * MB, "the stats count %lld MB given back", returned(t) / MB);
    /* The measure starts again from the trimmed heap. */
    EXPECT(!im_trim_check(t, false), "nothing freed since: no trim asked");
    free(pin);
    im_trim_stop(&t);
}

static void test_period_measures_by_itself(void)
{
    if (ASAN) {
        EXPECT(true, "skipped under AddressSanitizer");
        return;
    }
    im_trim *t = im_trim_start(32 * MB, 20, "test");
    EXPECT(t != NULL, "the trimmer starts");
    if (!t)
        return;
    void *pin = free_heap(96 * MB);
    long long before = rss_bytes();
    EXPECT(wait_trims(t, 1), "a period found the freed heap and trimmed (count %ld)",
           count(t));
    long long after = rss_bytes();
    EXPECT(before - after >= 64 * MB, "RSS fell by %lld MB", (before - after) / MB);
    free(pin);
    im_trim_stop(&t);
}

static const im_cunit_test tests[] = {
    {"null_is_nothing", test_null_is_nothing},
    {"quiet_heap_asks_nothing", test_quiet_heap_asks_nothing},
    {"forced_trims_run_on_its_thread", test_forced_trims_run_on_its_thread},
    {"freed_heap_goes_back", test_freed_heap_goes_back},
    {"period_measures_by_itself", test_period_measures_by_itself},
};

int main(int argc, char **argv)
{
    return im_cunit_main("trim", tests, sizeof tests / sizeof tests[0],
                         argc > 1 ? argv[1] : NULL);
}
