/* im_cunit.c - see im_cunit.h. */
#include "im_cunit.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <CUnit/Basic.h>

bool im_cunit_record(im_loc L, bool ok, const char *fmt, ...)
{
    char buf[1024] = "";
    if (!ok) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(buf, sizeof buf, fmt, ap);
        va_end(ap);
    }
    CU_assertImplementation(ok ? CU_TRUE : CU_FALSE, (unsigned)L.line, buf, L.file, L.func,
                            CU_FALSE);
    return ok;
}

int im_cunit_run(void)
{
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_ErrorCode rc = CU_basic_run_tests();
    unsigned failed = CU_get_number_of_failures() + CU_get_number_of_tests_failed() +
                      CU_get_number_of_suites_failed();
    CU_cleanup_registry();
    if (rc != CUE_SUCCESS) {
        fprintf(stderr, "CUnit error %d\n", (int)rc);
        return 2;
    }
    return failed ? 1 : 0;
}

int im_cunit_main(const char *suite, const im_cunit_test *tests, size_t n, const char *only)
{
    if (CU_initialize_registry() != CUE_SUCCESS) {
        fprintf(stderr, "CU_initialize_registry: %s\n", CU_get_error_msg());
        return 2;
    }
    CU_pSuite s = CU_add_suite(suite, NULL, NULL);
    if (!s) {
        fprintf(stderr, "CU_add_suite: %s\n", CU_get_error_msg());
        CU_cleanup_registry();
        return 2;
    }
    size_t added = 0;
    for (size_t i = 0; i < n; i++) {
        if (only && strcmp(only, tests[i].name) != 0)
            continue;
        if (!CU_add_test(s, tests[i].name, tests[i].fn)) {
            fprintf(stderr, "CU_add_test: %s\n", CU_get_error_msg());
            CU_cleanup_registry();
            return 2;
        }
        added++;
    }
    if (added == 0) {
        fprintf(stderr, "no test named %s\n", only);
        CU_cleanup_registry();
        return 2;
    }
    return im_cunit_run();
}
