/*
 * redis_bench - the Redis peer of imbox-bench: one stream per receiver,
 * driven by the same workloads (bench_core.h), so that the figures compare
 * imbox with the design a team would otherwise build on Redis Streams.
 *
 *   redis-bench --host 127.0.0.1 --port 6379 [--connections N]
 *               [--pipeline D] [--max-connections M] [common flags]
 *
 * The keys of receiver R (L = R's length in decimal: with it a key names
 * exactly one (receiver, msg_id) whatever bytes they hold; {R} is the hash
 * tag, so that a cluster keeps one receiver's keys on one node):
 *   ib:L:{R}:s        the inbox, a stream; entry fields m (msg_id),
 *                     f (sender), c (content); the entry id ("ms-seq",
 *                     given by XADD) is the page order and the cursor
 *   ib:L:{R}:c        a hash: n:SENDER = messages waiting from SENDER,
 *                     t:SENDER = the ms of the newest (Counts)
 *   ib:L:{R}:d:MSGID  the dedup mark, SET NX with a 24 h expiry
 *
 * The scripts (SCRIPT LOAD once, EVALSHA per call; a script runs
 * atomically, and its writes reach the append-only file as one unit):
 *   send      SET NX EX 86400 the dedup mark; if it was there, answer 0
 *             (duplicate); else XADD the message, HINCRBY n:SENDER, HSET
 *             t:SENDER, answer 1. A group send of K receivers is K EVALSHA
 *             pipelined on one connection (one round trip; keys of one
 *             receiver per script, as a cluster needs).
 *   pull      with a cursor: XRANGE - CURSOR (what the cursor acks), XDEL
 *             those entries (only SENDER's with a sender) and HINCRBY -n
 *             each sender's count (HDEL at 0); then the page: XRANGE
 *             (CURSOR + COUNT page. The ack of the previous page and the
 *             read of the next in one script, one round trip. An empty page
 *             returns the request's cursor ("0-0" for "").
 *             One conversation: a filtered scan. The pull reads the
 *             receiver's stream from the cursor in chunks of 256 and keeps
 *             SENDER's entries until the page is full or the stream ends,
 *             and its ack scans everything up to the cursor: the cost
 *             grows with the whole inbox, not with the conversation, and
 *             Redis runs nothing else meanwhile. The alternative, a second
 *             stream per (receiver, sender), would double every send's
 *             writes; imbox keeps a per-sender index for this (its S rows).
 *   counts    HGETALL ib:L:{R}:c, sorted here most recent first.
 *   noop      PING.
 *
 * Durability: the server runs with appendonly yes and appendfsync always
 * (reported and checked at start): Redis writes and fsyncs the append-only
 * file of every command an event-loop turn executed before it sends that
 * turn's replies, so a send is durable before its answer and the calls of
 * one turn share one fsync (Redis's group commit).
 *
 * Where this design does not keep imbox's promises (docs/BENCHMARKS.md
 * says it too): the cursor is a bare stream id, not bound to its owner; no
 * quota per inbox and no expiry of messages; an inbox must fit in memory.
 * The dedup mark outlives the ack, as imbox's does (24 h); its key is
 * (receiver, msg_id) where imbox's is (receiver, sender, msg_id). The ack
 * of a page is fsync'ed like any write (imbox does not fsync acks).
 *
 * Concurrency: one thread; nonblocking hiredis contexts (redisBufferWrite,
 * redisBufferRead, redisGetReplyFromReader) watched with one poll(). A
 * call goes to the connection with the fewest calls in flight, below
 * --pipeline D (default 1: one call per connection, like redis-benchmark
 * -c N; with D > 1 the calls of a connection are pipelined, their replies
 * come back in order). Before the run, --connections N are opened
 * (default: the run's calls at once, peer.h, divided by D, so that
 * connecting is not timed); when every connection is full another is
 * opened (blocking; the count is printed at the end) up to
 * --max-connections or the first refusal, then the call waits. A
 * connection whose oldest reply is past --timeout-ms is dropped and its
 * calls fail as redis:timeout.
 */
#include "peer.h"

#include <errno.h>
#include <inttypes.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <hiredis/hiredis.h>

#define RD_CONNS_DEFAULT_MAX 1024
#define RD_NAMES_MAX 64
#define RD_KEY_MAX 256             /* "ib:" L ":{" R "}:d:" MSGID, all bounded */
#define RD_DEDUP_SECONDS "86400"   /* imbox's dedup window, 24 h */
#define RD_CONNECT_TIMEOUT_S 5
#define RD_OPEN_LOOP_CONNS 64      /* opened before an open-loop run (--rate) */

/* ------------------------------------------------------------- scripts */

static const char s_send_lua[] =
    "if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[4]) then return 0 end\n"
    "local id = redis.call('XADD', KEYS[2], '*', 'm', ARGV[1], 'f', ARGV[2], 'c', ARGV[3])\n"
    "redis.call('HINCRBY', KEYS[3], 'n:' .. ARGV[2], 1)\n"
    "redis.call('HSET', KEYS[3], 't:' .. ARGV[2], string.match(id, '^%d+'))\n"
    "return 1\n";

/* KEYS[1] stream, KEYS[2] counts; ARGV[1] cursor or '', ARGV[2] page,
 * ARGV[3] sender or '' (all). */
static const char s_pull_lua[] =
    "local s, h, cur, page, who = KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2]), ARGV[3]\n"
    "local function from(e)\n"
    "  local f = e[2]\n"
    "  for i = 1, #f, 2 do if f[i] == 'f' then return f[i + 1] end end\n"
    "  return ''\n"
    "end\n"
    "local start = '-'\n"
    "if cur ~= '' then\n"
    "  local ids, dec = {}, {}\n"
    "  for _, e in ipairs(redis.call('XRANGE', s, '-', cur)) do\n"
    "    local f = from(e)\n"
    "    if who == '' or f == who then\n"
    "      ids[#ids + 1] = e[1]\n"
    "      dec[f] = (dec[f] or 0) + 1\n"
    "    end\n"
    "  end\n"
    "  for i = 1, #ids, 1000 do\n"
    "    redis.call('XDEL', s, unpack(ids, i, math.min(i + 999, #ids)))\n"
    "  end\n"
    "  for f, n in pairs(dec) do\n"
    "    if redis.call('HINCRBY', h, 'n:' .. f, -n) <= 0 then\n"
    "      redis.call('HDEL', h, 'n:' .. f, 't:' .. f)\n"
    "    end\n"
    "  end\n"
    "  start = '(' .. cur\n"
    "end\n"
    "if who == '' then return redis.call('XRANGE', s, start, '+', 'COUNT', page) end\n"
    "local out = {}\n"
    "while #out < page do\n"
    "  local chunk = redis.call('XRANGE', s, start, '+', 'COUNT', 256)\n"
    "  if #chunk == 0 then break end\n"
    "  for _, e in ipairs(chunk) do\n"
    "    if from(e) == who then\n"
    "      out[#out + 1] = e\n"
    "      if #out == page then break end\n"
    "    end\n"
    "  end\n"
    "  start = '(' .. chunk[#chunk][1]\n"
    "end\n"
    "return out\n";

/* ------------------------------------------------------------ the driver */

typedef enum { R_SEND, R_PULL, R_COUNTS, R_NOOP } s_cmd;

typedef struct s_wait {  /* one reply a connection waits for, in order */
    bc_op *op;
    int64_t started_ns;  /* when op was sent (its deadline: + timeout_ns) */
    int idx;             /* BC_SEND: the receiver */
    s_cmd cmd;
    bool last;           /* op's last reply: its completion */
} s_wait;

typedef struct rd_conn {
    redisContext *rc;
    s_wait *w;           /* a ring of the replies awaited */
    size_t cap, head, n;
    int calls;           /* calls in flight (a group send is one call) */
    bool flushing;       /* output still in hiredis's buffer */
    bool broken;         /* failed: no call is given to it; s_sweep frees it */
} rd_conn;

typedef struct s_cnt {   /* a sender's count while a Counts reply is parsed */
    const char *sender;
    uint64_t n;
    uint64_t t;
} s_cnt;

typedef struct rd_drv {
    const char *host;
    int port, preopen, depth, max_conns;
    char send_sha[41], pull_sha[41];
    rd_conn **conns;
    int nconns, cap_conns;
    peer_fifo waiting, failed;
    struct pollfd *pfd;
    rd_conn **pfd_conn;
    bc_entry *entries;
    size_t cap_entries;
    bc_count *counts;
    s_cnt *cnt, *cnt_t;
    size_t cap_counts;
    char cursor[BC_CURSOR_MAX];
    char *names[RD_NAMES_MAX];
    int nnames;
    int64_t opened_late; /* connections opened after open() */
    int64_t conn_errors;
    int64_t timeout_ns;  /* a call's deadline (--timeout-ms) */
    char version[32], appendonly[16], appendfsync[16];
} rd_drv;

/* "redis:" and the error's first word (ERR, NOSCRIPT, WRONGTYPE...), kept:
 * the core may hold the pointer. */
static const char *s_name(rd_drv *d, const char *prefix, const char *err, size_t len)
{
    char buf[40];
    size_t n = 0;
    while (n < len && n < 16 && ((err[n] >= 'A' && err[n] <= 'Z') || (err[n] >= '0' && err[n] <= '9')))
        n++;
    snprintf(buf, sizeof buf, "%s%.*s", prefix, (int)n, n ? err : "error");
    for (int i = 0; i < d->nnames; i++)
        if (strcmp(d->names[i], buf) == 0)
            return d->names[i];
    if (d->nnames == RD_NAMES_MAX)
        return "redis:other";
    char *s = strdup(buf);
    if (!s)
        return "redis:other";
    d->names[d->nnames++] = s;
    return s;
}

/* ---------------------------------------------------------- connections */

/* A blocking command at setup; its string reply (status or bulk) into out. */
static bool s_setup_str(redisContext *rc, char *out, size_t cap, const char *what, int argc,
                        const char **argv)
{
    redisReply *r = redisCommandArgv(rc, argc, argv, NULL);
    bool ok = r && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS) && r->str;
    if (ok)
        snprintf(out, cap, "%.*s", (int)r->len, r->str);
    else
        fprintf(stderr, "redis-bench: %s: %s\n", what,
                r && r->type == REDIS_REPLY_ERROR && r->str ? r->str : rc->errstr);
    if (r)
        freeReplyObject(r);
    return ok;
}

/* CONFIG GET name: the value, or "?" (CONFIG may be renamed away). */
static void s_config(redisContext *rc, const char *name, char *out, size_t cap)
{
    const char *argv[] = {"CONFIG", "GET", name};
    redisReply *r = redisCommandArgv(rc, 3, argv, NULL);
    snprintf(out, cap, "?");
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 && r->element[1] &&
        r->element[1]->type == REDIS_REPLY_STRING && r->element[1]->str)
        snprintf(out, cap, "%.*s", (int)r->element[1]->len, r->element[1]->str);
    if (r)
        freeReplyObject(r);
}

/* "redis_version:7.0.15" out of INFO server. */
static void s_version(redisContext *rc, char *out, size_t cap)
{
    const char *argv[] = {"INFO", "server"};
    redisReply *r = redisCommandArgv(rc, 2, argv, NULL);
    snprintf(out, cap, "?");
    if (r && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS) && r->str) {
        const char *p = strstr(r->str, "redis_version:");
        if (p) {
            p += strlen("redis_version:");
            size_t n = strcspn(p, "\r\n");
            snprintf(out, cap, "%.*s", (int)(n < 31 ? n : 31), p);
        }
    }
    if (r)
        freeReplyObject(r);
}

static bool s_sha_ok(const char *s)
{
    return strlen(s) == 40 && strspn(s, "0123456789abcdef") == 40;
}

/* Opens one connection (blocking connect, then nonblocking I/O). The first
 * loads the scripts and reads the server's settings. */
static rd_conn *s_conn_open(rd_drv *d)
{
    if (d->nconns == d->max_conns)
        return NULL;
    if (d->nconns == d->cap_conns) {
        int cap = d->cap_conns ? d->cap_conns * 2 : 16;
        rd_conn **v = realloc(d->conns, (size_t)cap * sizeof *v);
        if (v)
            d->conns = v;
        struct pollfd *p = v ? realloc(d->pfd, (size_t)cap * sizeof *p) : NULL;
        if (p)
            d->pfd = p;
        rd_conn **m = p ? realloc(d->pfd_conn, (size_t)cap * sizeof *m) : NULL;
        if (m)
            d->pfd_conn = m;
        if (!m)
            return NULL;
        d->cap_conns = cap;
    }
    struct timeval tv = {RD_CONNECT_TIMEOUT_S, 0};
    redisContext *rc = redisConnectWithTimeout(d->host, d->port, tv);
    if (!rc || rc->err) {
        fprintf(stderr, "redis-bench: connect %s:%d: %s\n", d->host, d->port,
                rc ? rc->errstr : "out of memory");
        if (rc)
            redisFree(rc);
        return NULL;
    }
    bool ok = true;
    if (!d->send_sha[0]) {
        const char *ls[] = {"SCRIPT", "LOAD", s_send_lua};
        const char *lp[] = {"SCRIPT", "LOAD", s_pull_lua};
        ok = s_setup_str(rc, d->send_sha, sizeof d->send_sha, "SCRIPT LOAD send", 3, ls) &&
             s_setup_str(rc, d->pull_sha, sizeof d->pull_sha, "SCRIPT LOAD pull", 3, lp);
        if (ok && (!s_sha_ok(d->send_sha) || !s_sha_ok(d->pull_sha))) {
            fprintf(stderr, "redis-bench: SCRIPT LOAD answered no SHA1\n");
            ok = false;
        }
        if (!ok)
            d->send_sha[0] = '\0';
        s_version(rc, d->version, sizeof d->version);
        s_config(rc, "appendonly", d->appendonly, sizeof d->appendonly);
        s_config(rc, "appendfsync", d->appendfsync, sizeof d->appendfsync);
        if (strcmp(d->appendonly, "yes") != 0 || strcmp(d->appendfsync, "always") != 0)
            fprintf(stderr,
                    "redis-bench: warning: appendonly=%s appendfsync=%s: writes are not "
                    "durable before the answer, the figures do not compare with imbox\n",
                    d->appendonly, d->appendfsync);
    }
    /* From here on, nonblocking: hiredis then takes EAGAIN as "later". */
    int fl = ok ? fcntl(rc->fd, F_GETFL) : -1;
    if (ok && (fl < 0 || fcntl(rc->fd, F_SETFL, fl | O_NONBLOCK) < 0)) {
        perror("redis-bench: fcntl");
        ok = false;
    }
    rd_conn *c = ok ? calloc(1, sizeof *c) : NULL;
    if (!c) {
        redisFree(rc);
        return NULL;
    }
    rc->flags &= ~REDIS_BLOCK;
    c->rc = rc;
    d->conns[d->nconns++] = c;
    return c;
}

static void s_conn_free(rd_conn *c)
{
    redisFree(c->rc);
    free(c->w);
    free(c);
}

static void s_conn_break(rd_drv *d, rd_conn *c, const char *why)
{
    if (!c->broken) {
        fprintf(stderr, "redis-bench: connection dropped: %s%s%s\n", why, c->rc->err ? ": " : "",
                c->rc->err ? c->rc->errstr : "");
        c->broken = true;
        d->conn_errors++;
    }
}

static void s_sweep(rd_drv *d)
{
    for (int i = 0; i < d->nconns;) {
        rd_conn *c = d->conns[i];
        if (!c->broken || c->n) {
            i++;
            continue;
        }
        s_conn_free(c);
        d->conns[i] = d->conns[--d->nconns];
    }
}

/* The open connection with the fewest calls, below the pipeline depth. */
static rd_conn *s_pick(rd_drv *d)
{
    rd_conn *best = NULL;
    for (int i = 0; i < d->nconns; i++) {
        rd_conn *c = d->conns[i];
        if (!c->broken && c->calls < d->depth && (!best || c->calls < best->calls))
            best = c;
    }
    return best;
}

static bool s_busy(const rd_drv *d)
{
    for (int i = 0; i < d->nconns; i++)
        if (d->conns[i]->n)
            return true;
    return false;
}

/* ------------------------------------------------------------- commands */

/* ib:L:{R}:SUFFIX into buf (suffix "s", "c", or "d:" and a msg_id). */
static bool s_key(char *buf, size_t cap, const char *receiver, const char *suffix,
                  const char *msg_id)
{
    int n = snprintf(buf, cap, "ib:%zu:{%s}:%s%s", strlen(receiver), receiver, suffix,
                     msg_id ? msg_id : "");
    return n > 0 && (size_t)n < cap;
}

static bool s_expect(rd_conn *c, bc_op *op, int idx, s_cmd cmd, int64_t now)
{
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 8;
        s_wait *w = malloc(cap * sizeof *w);
        if (!w)
            return false;
        for (size_t i = 0; i < c->n; i++)
            w[i] = c->w[(c->head + i) % c->cap];
        free(c->w);
        c->w = w;
        c->cap = cap;
        c->head = 0;
    }
    bool last = cmd != R_SEND || idx == op->nreceivers - 1;
    c->w[(c->head + c->n) % c->cap] = (s_wait){op, now, idx, cmd, last};
    c->n++;
    return true;
}

static bool s_flush(rd_conn *c)
{
    int done = 0;
    while (!done) {
        if (redisBufferWrite(c->rc, &done) != REDIS_OK)
            return false;
        if (!done) {
            /* nothing more fits now: poll for POLLOUT */
            c->flushing = true;
            return true;
        }
    }
    c->flushing = false;
    return true;
}

/* Appends op's commands to c and writes what the socket takes. False: the
 * connection broke (nothing of op was accepted as awaited... or some was:
 * the caller fails every awaited op of c). */
static bool s_send(rd_drv *d, rd_conn *c, bc_op *op)
{
    char k1[RD_KEY_MAX], k2[RD_KEY_MAX], k3[RD_KEY_MAX];
    int64_t now = bc_now_ns();
    op->status = 0;
    op->status_name = NULL;
    switch (op->kind) {
    case BC_SEND:
        for (int i = 0; i < op->nreceivers; i++) {
            const char *r = op->receivers[i];
            const char *argv[] = {"EVALSHA", d->send_sha, "3", k1, k2, k3, op->msg_id, op->sender,
                                  op->content_len ? (const char *)op->content : "",
                                  RD_DEDUP_SECONDS};
            size_t len[10];
            bool ok = s_key(k1, sizeof k1, r, "d:", op->msg_id) &&
                      s_key(k2, sizeof k2, r, "s", NULL) && s_key(k3, sizeof k3, r, "c", NULL);
            for (int j = 0; ok && j < 10; j++) /* content (8) is bytes, not a string */
                len[j] = j == 8 ? op->content_len : strlen(argv[j]);
            if (!ok || redisAppendCommandArgv(c->rc, 10, argv, len) != REDIS_OK ||
                !s_expect(c, op, i, R_SEND, now)) {
                /* the replies already awaited end the op (the caller fails
                 * the connection); with none, the caller completes it */
                if (i > 0 && c->n)
                    c->w[(c->head + c->n - 1) % c->cap].last = true;
                return false;
            }
        }
        break;
    case BC_PULL: {
        char page[16];
        snprintf(page, sizeof page, "%d", op->page);
        if (!s_key(k1, sizeof k1, op->receivers[0], "s", NULL) ||
            !s_key(k2, sizeof k2, op->receivers[0], "c", NULL))
            return false;
        const char *argv[] = {"EVALSHA", d->pull_sha, "2", k1, k2,
                              op->cursor ? op->cursor : "", page, op->sender ? op->sender : ""};
        if (redisAppendCommandArgv(c->rc, 8, argv, NULL) != REDIS_OK || !s_expect(c, op, 0, R_PULL, now))
            return false;
        break;
    }
    case BC_COUNTS: {
        if (!s_key(k1, sizeof k1, op->receivers[0], "c", NULL))
            return false;
        const char *argv[] = {"HGETALL", k1};
        if (redisAppendCommandArgv(c->rc, 2, argv, NULL) != REDIS_OK ||
            !s_expect(c, op, 0, R_COUNTS, now))
            return false;
        break;
    }
    case BC_NOOP:
    default: {
        const char *argv[] = {"PING"};
        if (redisAppendCommandArgv(c->rc, 1, argv, NULL) != REDIS_OK || !s_expect(c, op, 0, R_NOOP, now))
            return false;
        break;
    }
    }
    c->calls++;
    return s_flush(c);
}

/* -------------------------------------------------------------- replies */

/* A stream id "ms-seq" into its two numbers; "" (the start) is 0-0. */
static bool s_sid(const char *s, size_t len, uint64_t *ms, uint64_t *seq)
{
    if (len == 0) {
        *ms = *seq = 0;
        return true;
    }
    uint64_t v[2] = {0, 0};
    int part = 0;
    size_t digits = 0;
    for (size_t i = 0; i < len; i++) {
        char ch = s[i];
        if (ch == '-' && part == 0 && digits) {
            part = 1;
            digits = 0;
        } else if (ch >= '0' && ch <= '9' && digits < 19) {
            v[part] = v[part] * 10 + (uint64_t)(ch - '0');
            digits++;
        } else {
            return false;
        }
    }
    if (part != 1 || !digits)
        return false;
    *ms = v[0];
    *seq = v[1];
    return true;
}

static bool s_sid_after(uint64_t ms, uint64_t seq, uint64_t ms0, uint64_t seq0)
{
    return ms > ms0 || (ms == ms0 && seq > seq0);
}

static bool s_is_str(const redisReply *r)
{
    return r && r->type == REDIS_REPLY_STRING && r->str;
}

/* A string reply that is an id or uid: no NUL inside, fits the core. */
static const char *s_id(const redisReply *r)
{
    if (!s_is_str(r) || r->len == 0 || r->len >= BC_ID_MAX || memchr(r->str, '\0', r->len))
        return NULL;
    return r->str; /* hiredis NUL-terminates strings */
}

/* A pull's reply: [[id, [field, value, ...]], ...], ids ascending, after
 * the request's cursor, at most a page. */
static bool s_fill_pull(rd_drv *d, bc_op *op, const redisReply *r)
{
    if (r->type != REDIS_REPLY_ARRAY || r->elements > (size_t)op->page ||
        !peer_grow((void **)&d->entries, &d->cap_entries, r->elements + 1, sizeof *d->entries))
        return false;
    const char *cur = op->cursor ? op->cursor : "";
    uint64_t ms, seq;
    if (!s_sid(cur, strlen(cur), &ms, &seq))
        return false;
    const redisReply *last = NULL;
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *e = r->element[i];
        if (!e || e->type != REDIS_REPLY_ARRAY || e->elements != 2 || !s_is_str(e->element[0]) ||
            !e->element[1] || e->element[1]->type != REDIS_REPLY_ARRAY ||
            e->element[1]->elements % 2)
            return false;
        uint64_t ms1, seq1;
        if (e->element[0]->len >= BC_CURSOR_MAX ||
            !s_sid(e->element[0]->str, e->element[0]->len, &ms1, &seq1) ||
            !s_sid_after(ms1, seq1, ms, seq))
            return false;
        ms = ms1;
        seq = seq1;
        last = e->element[0];
        bc_entry *out = &d->entries[i];
        *out = (bc_entry){0};
        bool content = false;
        const redisReply *f = e->element[1];
        for (size_t j = 0; j < f->elements; j += 2) {
            const redisReply *k = f->element[j], *v = f->element[j + 1];
            if (!s_is_str(k) || !s_is_str(v) || k->len != 1)
                return false;
            if (k->str[0] == 'm')
                out->msg_id = s_id(v);
            else if (k->str[0] == 'f')
                out->sender = s_id(v);
            else if (k->str[0] == 'c') {
                out->content_len = v->len;
                content = true;
            }
        }
        if (!out->msg_id || !out->sender || !content)
            return false;
        if (op->sender && strcmp(op->sender, out->sender) != 0)
            return false; /* another conversation's message */
    }
    if (last)
        snprintf(d->cursor, sizeof d->cursor, "%.*s", (int)last->len, last->str);
    else
        snprintf(d->cursor, sizeof d->cursor, "%s", *cur ? cur : "0-0");
    op->entries = d->entries;
    op->nentries = r->elements;
    op->next_cursor = d->cursor;
    return true;
}

static bool s_u64(const redisReply *r, uint64_t *out)
{
    if (!s_is_str(r) || r->len == 0 || r->len > 19 || strspn(r->str, "0123456789") != r->len)
        return false;
    uint64_t v = 0;
    for (size_t i = 0; i < r->len; i++)
        v = v * 10 + (uint64_t)(r->str[i] - '0');
    *out = v;
    return true;
}

static int s_cmp_sender(const void *a, const void *b)
{
    return strcmp(((const s_cnt *)a)->sender, ((const s_cnt *)b)->sender);
}

static int s_cmp_recent(const void *a, const void *b)
{
    const s_cnt *x = a, *y = b;
    if (x->t != y->t)
        return x->t > y->t ? -1 : 1;
    return strcmp(x->sender, y->sender);
}

/* HGETALL of the counts hash: n:SENDER and t:SENDER pairs. */
static bool s_fill_counts(rd_drv *d, bc_op *op, const redisReply *r)
{
    if (r->type != REDIS_REPLY_ARRAY || r->elements % 2)
        return false;
    size_t pairs = r->elements / 2;
    if (!peer_grow((void **)&d->cnt, &d->cap_counts, pairs + 1, sizeof *d->cnt))
        return false;
    /* cnt and cnt_t and counts grow together to cap_counts */
    s_cnt *t = realloc(d->cnt_t, d->cap_counts * sizeof *t);
    if (!t)
        return false;
    d->cnt_t = t;
    bc_count *bc = realloc(d->counts, d->cap_counts * sizeof *bc);
    if (!bc)
        return false;
    d->counts = bc;
    size_t nn = 0, nt = 0;
    for (size_t i = 0; i < r->elements; i += 2) {
        const redisReply *k = r->element[i], *v = r->element[i + 1];
        if (!s_is_str(k) || k->len < 3 || k->str[1] != ':' || (k->str[0] != 'n' && k->str[0] != 't'))
            return false;
        s_cnt c = {.sender = k->str + 2};
        if (k->len - 2 >= BC_ID_MAX || memchr(c.sender, '\0', k->len - 2))
            return false;
        if (k->str[0] == 'n') {
            if (!s_u64(v, &c.n) || c.n == 0)
                return false;
            d->cnt[nn++] = c;
        } else {
            if (!s_u64(v, &c.t))
                return false;
            d->cnt_t[nt++] = c;
        }
    }
    qsort(d->cnt, nn, sizeof *d->cnt, s_cmp_sender);
    qsort(d->cnt_t, nt, sizeof *d->cnt_t, s_cmp_sender);
    for (size_t i = 0, j = 0; i < nn; i++) {
        while (j < nt && strcmp(d->cnt_t[j].sender, d->cnt[i].sender) < 0)
            j++;
        if (j < nt && strcmp(d->cnt_t[j].sender, d->cnt[i].sender) == 0)
            d->cnt[i].t = d->cnt_t[j].t;
    }
    qsort(d->cnt, nn, sizeof *d->cnt, s_cmp_recent);
    for (size_t i = 0; i < nn; i++)
        d->counts[i] = (bc_count){d->cnt[i].sender, d->cnt[i].n};
    op->counts = d->counts;
    op->ncounts = nn;
    return true;
}

/* Completes the reply w with r (NULL: the connection broke, or timed out:
 * the call fails as fail). */
static void s_reply(rd_drv *d, rd_conn *c, s_wait w, redisReply *r, const char *fail)
{
    bc_op *op = w.op;
    bool last = w.last;
    if (!r) {
        if (op->status == 0) {
            op->status = 1;
            op->status_name = fail;
        }
    } else if (r->type == REDIS_REPLY_ERROR) {
        if (op->status == 0) {
            op->status = 1;
            op->status_name = s_name(d, "redis:", r->str ? r->str : "", r->str ? r->len : 0);
        }
    } else if (op->status == 0) {
        bool ok;
        switch (w.cmd) {
        case R_SEND:
            ok = r->type == REDIS_REPLY_INTEGER && (r->integer == 0 || r->integer == 1);
            if (ok)
                op->stored[w.idx] = r->integer ? BC_STORED : BC_DUPLICATE;
            break;
        case R_PULL:
            ok = s_fill_pull(d, op, r);
            break;
        case R_COUNTS:
            ok = s_fill_counts(d, op, r);
            break;
        case R_NOOP:
        default:
            ok = r->type == REDIS_REPLY_STATUS && r->str && strcmp(r->str, "PONG") == 0;
            break;
        }
        if (!ok) {
            op->status = -1;
            op->status_name = "MALFORMED";
        }
    }
    if (last) {
        c->calls--;
        bc_done(op); /* may start calls, on c too */
    }
}

/* Fails every reply c still awaits (the connection broke). */
static void s_conn_fail(rd_drv *d, rd_conn *c, const char *why, int *completed)
{
    s_conn_break(d, c, why);
    while (c->n) {
        s_wait w = c->w[c->head];
        c->head = (c->head + 1) % c->cap;
        c->n--;
        if (w.last)
            (*completed)++;
        s_reply(d, c, w, NULL, strcmp(why, "timeout") == 0 ? "redis:timeout" : "redis:connection");
    }
}

static void s_event(rd_drv *d, rd_conn *c, short ev, int *completed)
{
    if (c->flushing && !s_flush(c)) {
        s_conn_fail(d, c, "write", completed);
        return;
    }
    if (!(ev & (POLLIN | POLLERR | POLLHUP)))
        return;
    if (redisBufferRead(c->rc) != REDIS_OK) {
        s_conn_fail(d, c, "read", completed);
        return;
    }
    while (c->n) {
        void *p = NULL;
        if (redisGetReplyFromReader(c->rc, &p) != REDIS_OK) {
            s_conn_fail(d, c, "protocol", completed);
            return;
        }
        if (!p)
            return; /* the rest has not arrived */
        s_wait w = c->w[c->head];
        c->head = (c->head + 1) % c->cap;
        c->n--;
        if (w.last)
            (*completed)++;
        s_reply(d, c, w, p, NULL);
        freeReplyObject(p);
    }
    /* Replies nobody asked for: the stream is out of step. */
    void *p = NULL;
    if (!c->broken && redisGetReplyFromReader(c->rc, &p) == REDIS_OK && p) {
        freeReplyObject(p);
        s_conn_break(d, c, "a reply nobody asked for");
    }
}

/* One more connection while the run goes on (blocking: counted, and said
 * at the end). When the server refuses one, the pool stops growing. */
static rd_conn *s_conn_more(rd_drv *d)
{
    rd_conn *c = s_conn_open(d);
    if (c) {
        d->opened_late++;
    } else {
        fprintf(stderr, "redis-bench: the pool stays at %d connections\n", d->nconns);
        d->max_conns = d->nconns;
    }
    return c;
}

/* Gives waiting calls room on connections, opening more when allowed. */
static void s_dispatch(rd_drv *d, int *completed)
{
    while (d->waiting.n) {
        rd_conn *c = s_pick(d);
        if (!c && d->nconns < d->max_conns) {
            c = s_conn_more(d);
        }
        if (!c) {
            if (s_busy(d))
                return;
            for (bc_op *op; (op = peer_fifo_pop(&d->waiting));) {
                op->status = 1;
                op->status_name = "redis:connection";
                bc_done(op);
                (*completed)++;
            }
            return;
        }
        bc_op *op = peer_fifo_pop(&d->waiting);
        if (!s_send(d, c, op)) {
            bool awaited = false;
            for (size_t i = 0; i < c->n; i++)
                awaited |= c->w[(c->head + i) % c->cap].op == op;
            if (!awaited) {
                op->status = 1;
                op->status_name = "redis:connection";
                bc_done(op);
                (*completed)++;
            }
            s_conn_fail(d, c, "send", completed);
        }
    }
}

/* ------------------------------------------------------ the driver API */

static int rd_open(void *self)
{
    rd_drv *d = self;
    /* Enough connections for the calls in flight, opened now so that
     * connecting is not timed; a run that needs more opens them as it goes. */
    const bc_opts *o = bc_options();
    int n = d->preopen;
    if (!n)
        n = (peer_calls_at_once(o, RD_OPEN_LOOP_CONNS * d->depth) + d->depth - 1) / d->depth;
    if (n > d->max_conns)
        n = d->max_conns;
    d->timeout_ns = (int64_t)(o->timeout_ms > 0 ? o->timeout_ms : 10000) * 1000000;
    for (int i = 0; i < (n > 0 ? n : 1); i++)
        if (!s_conn_open(d))
            return -1;
    return 0;
}

static void rd_close(void *self)
{
    rd_drv *d = self;
    if (d->opened_late)
        fprintf(stderr,
                "redis-bench: %" PRId64 " connections were opened during the run (give --connections)\n",
                d->opened_late);
    for (int i = 0; i < d->nconns; i++)
        s_conn_free(d->conns[i]);
    free(d->conns);
    free(d->pfd);
    free(d->pfd_conn);
    peer_fifo_free(&d->waiting);
    peer_fifo_free(&d->failed);
    free(d->entries);
    free(d->counts);
    free(d->cnt);
    free(d->cnt_t);
    for (int i = 0; i < d->nnames; i++)
        free(d->names[i]);
    memset(d, 0, sizeof *d);
}

static int rd_start(void *self, bc_op *op)
{
    rd_drv *d = self;
    if (op->kind == BC_SEND && (op->nreceivers < 1 || op->nreceivers > BC_GROUP_MAX)) {
        fprintf(stderr, "redis-bench: a send to %d receivers\n", op->nreceivers);
        return -1;
    }
    uint64_t ms, seq;
    if (op->kind == BC_PULL &&
        (op->page <= 0 || !op->cursor || !s_sid(op->cursor, strlen(op->cursor), &ms, &seq))) {
        fprintf(stderr, "redis-bench: a pull of %d messages after cursor \"%s\"\n", op->page,
                op->cursor ? op->cursor : "(null)");
        return -1;
    }
    rd_conn *c = d->waiting.n ? NULL : s_pick(d);
    if (!c && d->waiting.n == 0 && d->nconns < d->max_conns) {
        c = s_conn_more(d);
    }
    if (!c)
        return peer_fifo_push(&d->waiting, op) ? 0 : -1;
    if (s_send(d, c, op))
        return 0;
    /* Never complete from inside start(): the connection's awaited replies
     * (op's among them, or not) fail in the next poll. */
    s_conn_break(d, c, "send");
    bool awaited = false;
    for (size_t i = 0; i < c->n; i++)
        awaited |= c->w[(c->head + i) % c->cap].op == op;
    if (awaited)
        return 0;
    return peer_fifo_push(&d->failed, op) ? 0 : -1;
}

/* Fails every call of a connection whose oldest reply is past its deadline
 * (--timeout-ms): replies come in order, so the later ones wait behind it.
 * Returns the earliest deadline still pending (or limit). */
static int64_t s_expire(rd_drv *d, int64_t now, int64_t limit, int *completed)
{
    for (int i = 0; i < d->nconns; i++) {
        rd_conn *c = d->conns[i];
        if (!c->n || c->broken)
            continue;
        int64_t due = c->w[c->head].started_ns + d->timeout_ns;
        if (due <= now)
            s_conn_fail(d, c, "timeout", completed);
        else if (due < limit)
            limit = due;
    }
    return limit;
}

static int rd_poll(void *self, int64_t deadline_ns)
{
    rd_drv *d = self;
    int completed = 0;
    for (bc_op *op; (op = peer_fifo_pop(&d->failed));) {
        op->status = 1;
        op->status_name = "redis:connection";
        bc_done(op);
        completed++;
    }
    for (int i = 0; i < d->nconns; i++)
        if (d->conns[i]->broken && d->conns[i]->n)
            s_conn_fail(d, d->conns[i], "broken", &completed);
    for (;;) {
        s_sweep(d);
        s_dispatch(d, &completed);
        int64_t now = bc_now_ns();
        int64_t until = s_expire(d, now, deadline_ns, &completed);
        if (completed)
            return 0;
        s_sweep(d);
        int n = 0;
        for (int i = 0; i < d->nconns; i++) {
            rd_conn *c = d->conns[i];
            if (!c->n || c->broken)
                continue;
            d->pfd[n] = (struct pollfd){.fd = c->rc->fd,
                                        .events = (short)(POLLIN | (c->flushing ? POLLOUT : 0))};
            d->pfd_conn[n++] = c;
        }
        if (deadline_ns <= now)
            return 0;
        /* Nothing in flight (an open loop between two starts): just wait. */
        int ms = (int)((until - now + 999999) / 1000000);
        int rc = poll(n ? d->pfd : NULL, (nfds_t)n, ms);
        if (rc < 0) {
            if (errno == EINTR)
                continue;
            perror("redis-bench: poll");
            return -1;
        }
        for (int k = 0; k < n; k++) {
            short ev = d->pfd[k].revents;
            rd_conn *c = d->pfd_conn[k];
            if (ev && c->n && !c->broken)
                s_event(d, c, ev, &completed);
        }
        if (completed)
            return 0;
    }
}

static void rd_report(void *self)
{
    rd_drv *d = self;
    bc_put_str("redis_version", d->version);
    bc_put_str("redis_appendonly", d->appendonly);
    bc_put_str("redis_appendfsync", d->appendfsync);
    bc_put_int("redis_connections", d->nconns);
    bc_put_int("redis_pipeline", d->depth);
    bc_put_int("redis_conn_errors", d->conn_errors);
    bc_put_int("redis_connections_opened_late", d->opened_late);
}

/* ------------------------------------------------------------------ main */

static int s_extra(const char *flag, const char *value, void *ctx)
{
    rd_drv *d = ctx;
    if (strcmp(flag, "--host") == 0) {
        if (!value) {
            fprintf(stderr, "redis-bench: --host wants a host name or address\n");
            return -1;
        }
        d->host = value;
        return 1;
    }
    if (strcmp(flag, "--port") == 0)
        return peer_int_flag("redis-bench", flag, value, 1, 65535, &d->port);
    if (strcmp(flag, "--connections") == 0)
        return peer_int_flag("redis-bench", flag, value, 1, 100000, &d->preopen);
    if (strcmp(flag, "--pipeline") == 0)
        return peer_int_flag("redis-bench", flag, value, 1, 100000, &d->depth);
    if (strcmp(flag, "--max-connections") == 0)
        return peer_int_flag("redis-bench", flag, value, 1, 100000, &d->max_conns);
    return 0;
}

int main(int argc, char **argv)
{
    rd_drv d = {.host = "127.0.0.1", .port = 6379, .depth = 1,
                .max_conns = RD_CONNS_DEFAULT_MAX};
    bc_driver drv = {
        .name = "redis",
        .self = &d,
        .open = rd_open,
        .close = rd_close,
        .start = rd_start,
        .poll = rd_poll,
        .report = rd_report,
    };
    return bc_main(argc, argv, &drv, s_extra, &d,
                   "  --host H --port P     the Redis server (default 127.0.0.1 6379)\n"
                   "  --connections N       opened at start (default 1; give --inflight)\n"
                   "  --pipeline D          calls in flight per connection (default 1)\n"
                   "  --max-connections M   opened at most, more on demand (default 1024)\n");
}
