/*
 * im_hash.h - which shard owns a receiver's inbox.
 *
 * A receiver's shard is  im_jump_hash(im_hash64(uid), S)  for S shards. Every
 * process that routes (the gateway, `imbox serve`, tools) must compute the
 * same answer forever: messages already stored would otherwise become
 * unreachable. So both functions are pinned by known values in
 * tests/unit/test_common.c, and changing either is a data migration.
 *
 *   im_hash64     64-bit FNV-1a over the bytes, then the splitmix64
 *                 finaliser. FNV-1a alone avalanches poorly (uids that
 *                 differ in one character give related hashes); the
 *                 finaliser makes every input bit reach every output bit,
 *                 so "u1", "u2", ... spread evenly over the shards.
 *   im_jump_hash  Lamping & Veach, "A Fast, Minimal Memory, Consistent Hash
 *                 Algorithm" (2014): going from S to S+1 buckets moves only
 *                 the keys that land in the new bucket, about 1/(S+1) of them.
 *
 * Threads: pure functions, no state, no allocation; call from anywhere.
 * Errors: none; a bucket count below 1 is a programmer mistake (assert).
 */
#ifndef IMBOX_IM_HASH_H
#define IMBOX_IM_HASH_H

#include <stddef.h>
#include <stdint.h>

/* FNV-1a 64 of s[0..n) followed by the splitmix64 finaliser. s may be NULL
 * when n == 0. */
uint64_t im_hash64(const char *s, size_t n);

/* The bucket of `key` among `buckets` (>= 1): a value in [0, buckets). */
int32_t im_jump_hash(uint64_t key, int32_t buckets);

/* The shard (in [0, nshards), nshards >= 1) of the NUL-terminated uid. */
int im_shard_of(const char *uid, int nshards);

/*
 * For in-memory tables only (the gateway's token cache and Send rate
 * buckets), never for routing: 64 bits of p[0..n) (8 bytes at a time,
 * then the splitmix64 finaliser) mixed with `seed`, never 0 (0 can mark
 * a free slot). Not cryptographic; a random seed keeps an outsider from
 * choosing keys that collide. Free to change between releases.
 */
uint64_t im_hash_table(uint64_t seed, const void *p, size_t n);

#endif
