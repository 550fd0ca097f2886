/*
 * fz.h - what the libFuzzer targets of tests/fuzz share: the invariant
 * check (a broken invariant aborts, which libFuzzer reports as a crash with
 * the input that broke it) and the fixed secret the tokens and cursors of
 * the seed corpora are made with (tests/fuzz/fz_seeds.c).
 */
#ifndef IMBOX_FZ_H
#define IMBOX_FZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "im_auth.h"

/* Aborts with file, line and the broken invariant. */
#define FZ_CHECK(cond)                                                                  \
    do {                                                                                \
        if (!(cond)) {                                                                  \
            fprintf(stderr, "%s:%d: invariant broken: %s\n", __FILE__, __LINE__, #cond); \
            abort();                                                                    \
        }                                                                               \
    } while (0)

/* The secret of the fuzz targets and their seeds: bytes 0, 1, ..., 31. */
static inline im_secret fz_secret(void)
{
    im_secret s;
    for (int i = 0; i < 32; i++)
        s.key[i] = (uint8_t)i;
    return s;
}

/* Another secret: nothing made with fz_secret() may verify with it. */
static inline im_secret fz_other_secret(void)
{
    im_secret s = fz_secret();
    s.key[31] ^= 0x80;
    return s;
}

/* The time the targets verify tokens at (seed tokens expire after it). */
#define FZ_NOW_S 1700000000

/* libFuzzer's entry point, declared for -Wmissing-prototypes. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#endif
