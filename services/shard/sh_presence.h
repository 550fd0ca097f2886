/*
 * sh_presence.h - which gateways hold live Subscribe streams for this
 * shard's uids. Presence lives with the inbox: the shard that stores a
 * uid's messages knows where to push them.
 *
 * Each entry is a lease: gateway G holds uid U until a time, renewed by G
 * (shard.proto PresenceOp). A gateway that stops renewing (it died, or
 * lost its connection for longer than the lease) is forgotten when the
 * lease lapses. A gateway may also send its whole set (a "full" op): its
 * entries not renewed by that op are dropped at once, which heals any
 * online/offline op lost with a connection.
 *
 * Gateways are known by their ZeroMQ routing id (any bytes, <= 255) and
 * numbered 0, 1, ... in order of first contact; a number stays valid for the
 * life of the table (a gateway that comes back gets its old number).
 *
 * Threads: owned by the shard's socket thread; no locking.
 * Errors: -1 only for out of memory (nothing changed).
 */
#ifndef IMBOX_SH_PRESENCE_H
#define IMBOX_SH_PRESENCE_H

#include <stddef.h>
#include <stdint.h>

#define SH_GATEWAY_ID_MAX 255

typedef struct sh_presence sh_presence;

sh_presence *sh_presence_new(void);            /* NULL when out of memory */
void sh_presence_destroy(sh_presence **p);     /* NULL-safe; sets *p NULL */

/* The number of the gateway with routing id id[0..len) (1..255 bytes),
 * adding it on first contact; -1 when out of memory or len is out of
 * range. */
int sh_presence_gateway(sh_presence *p, const uint8_t *id, size_t len);

/* The routing id of gateway gw (a number given by sh_presence_gateway). */
const uint8_t *sh_presence_gateway_id(const sh_presence *p, int gw, size_t *len);

/* Gateways known so far (numbers are 0..count-1). */
int sh_presence_gateways(const sh_presence *p);

/*
 * One op of gateway gw: sh_presence_begin(), then any number of set/clear,
 * then sh_presence_end(full). With full, gw's entries not set since the
 * begin are dropped.
 */
void sh_presence_begin(sh_presence *p, int gw);
int sh_presence_set(sh_presence *p, int gw, const char *uid, int64_t until_ms);
void sh_presence_clear(sh_presence *p, int gw, const char *uid);
void sh_presence_end(sh_presence *p, int gw, int full);

/* The gateways holding a lease for uid at now_ms, into gws[0..max);
 * returns how many (at most max). */
int sh_presence_holders(const sh_presence *p, const char *uid, int64_t now_ms, int *gws,
                        int max);

/* Drops the leases that lapsed at now_ms. Returns the uids still held. */
size_t sh_presence_expire(sh_presence *p, int64_t now_ms);

#endif
