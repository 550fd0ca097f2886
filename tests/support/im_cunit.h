/*
 * im_cunit.h - the CUnit runner every C suite shares: register, run
 * verbose, and turn the result into the process exit code that ctest reads.
 */
#ifndef IMBOX_IM_CUNIT_H
#define IMBOX_IM_CUNIT_H

#include <stdbool.h>
#include <stddef.h>

#include <CUnit/CUnit.h>

/* Where an expectation is written, so that helpers report their caller. */
typedef struct im_loc {
    const char *file;
    int line;
    const char *func;
} im_loc;

#define IM_HERE ((im_loc){__FILE__, __LINE__, __func__})

/* Records one CUnit assertion at L; on failure the message (printf-style)
 * says what was seen. Returns ok. */
bool im_cunit_record(im_loc L, bool ok, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

typedef struct im_cunit_test {
    const char *name;
    CU_TestFunc fn;
} im_cunit_test;

/*
 * Runs tests[0..n) as one suite named `suite` (only the test named `only`
 * when it is not NULL) and returns the exit code: 0 all passed, 1 a test
 * failed, 2 CUnit failed or no test is named `only`.
 */
int im_cunit_main(const char *suite, const im_cunit_test *tests, size_t n, const char *only);

/*
 * Runs what is registered (the caller has initialised the registry and
 * added suites), cleans the registry up and returns the exit code: 0 all
 * passed, 1 an assertion, test or suite set-up failed, 2 CUnit failed.
 */
int im_cunit_run(void);

#endif
