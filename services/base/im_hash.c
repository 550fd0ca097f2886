/*
 * im_hash.c - FNV-1a + splitmix64, and the jump consistent hash (im_hash.h).
 */
#include "im_hash.h"

#include <assert.h>
#include <string.h>

#define S_FNV_OFFSET 0xcbf29ce484222325ULL
#define S_FNV_PRIME 0x00000100000001b3ULL

uint64_t im_hash64(const char *s, size_t n)
{
    assert(s != NULL || n == 0);
    const unsigned char *p = (const unsigned char *)s;
    uint64_t x = S_FNV_OFFSET;
    for (size_t i = 0; i < n; i++) {
        x ^= p[i];
        x *= S_FNV_PRIME;
    }
    /* splitmix64 finaliser (Steele, Lea & Flood 2014; constants of Stafford's
     * "Mix13"). */
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

/*
 * The reference implementation from the paper, unchanged: a linear
 * congruential generator seeded by the key draws the next bucket the key
 * would jump to as buckets are added; the last jump below `buckets` wins.
 * The double arithmetic is part of the definition: keep it, or the buckets
 * stop matching every other implementation of the paper's code.
 */
int32_t im_jump_hash(uint64_t key, int32_t buckets)
{
    assert(buckets >= 1);
    int64_t b = -1, j = 0;
    while (j < buckets) {
        b = j;
        key = key * 2862933555777941757ULL + 1;
        j = (int64_t)((double)(b + 1) * ((double)(1LL << 31) / (double)((key >> 33) + 1)));
    }
    return (int32_t)b;
}

int im_shard_of(const char *uid, int nshards)
{
    assert(uid != NULL);
    assert(nshards >= 1);
    return (int)im_jump_hash(im_hash64(uid, strlen(uid)), (int32_t)nshards);
}

uint64_t im_hash_table(uint64_t seed, const void *p, size_t n)
{
    const char *b = p;
    uint64_t h = seed ^ n, w;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        memcpy(&w, b + i, 8);
        h = (h ^ w) * 0xbf58476d1ce4e5b9u;
        h ^= h >> 31;
    }
    w = 0;
    memcpy(&w, b + i, n - i);
    h = (h ^ w) * 0x94d049bb133111ebu;
    h ^= h >> 30; /* the splitmix64 finaliser: every input bit reaches every output bit */
    h *= 0xbf58476d1ce4e5b9u;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebu;
    h ^= h >> 31;
    return h ? h : 1;
}
