/*
 * pg_bench - the PostgreSQL peer of imbox-bench: the seeds' offline_msgs
 * table driven by the same workloads (bench_core.h), so that the figures
 * compare imbox with the design a team would otherwise build on PostgreSQL.
 *
 *   pg-bench --conninfo "host=127.0.0.1 port=5432 dbname=postgres user=postgres"
 *            [--connections N] [--max-connections M] [common flags: bench_core.h]
 *
 * The table. The seeds (docs: /work/shared/seeds) define offline_msgs with
 * receiver_uid, msg_id, send_time, sender_uid, msg_type, msg_content; the
 * client pulls page after page and the next page acknowledges (deletes)
 * the one before. Kept as they are, with these changes, each needed to
 * carry imbox's contract:
 *   - id bigserial: the page order and the cursor (the seeds page but do
 *     not say by what; send_time is not unique);
 *   - send_time timestamptz instead of time (a time of day loses the date);
 *   - receiver_uid, sender_uid varchar(64), msg_id varchar(128): imbox's
 *     limits (the seeds say 50 and 70);
 *   - msg_content bytea instead of varchar(1024): imbox's content is bytes,
 *     up to 64 KiB;
 *   - UNIQUE (receiver_uid, msg_id): the dedup key of the seeds' msg_id.
 * Indexes, the fewest that serve every query from an index: the primary
 * key (receiver_uid, id) serves the whole-inbox drain; (receiver_uid,
 * msg_id) is the dedup constraint; (receiver_uid, sender_uid, id) serves
 * Counts and the one-conversation pull (imbox keeps the same per-sender
 * index, its S rows).
 *
 * The statements (prepared once per connection, parameters always bound,
 * results in binary format):
 *   send 1    INSERT ... VALUES ($1..) ON CONFLICT (receiver_uid, msg_id)
 *             DO NOTHING RETURNING id: a row back = stored, none = duplicate
 *   send K    the same as one statement over unnest($1::varchar[]) (the
 *             receivers as one array parameter): one transaction, one
 *             commit for the whole group, RETURNING the receivers stored
 *   pull      WITH acked AS (DELETE ... WHERE receiver_uid = $1 AND
 *             id <= $cursor) SELECT ... WHERE receiver_uid = $1 AND
 *             id > $cursor ORDER BY id LIMIT $page: the ack of the previous
 *             page and the read of the next in one statement (one round
 *             trip, one transaction); with a sender, AND sender_uid = $4 in
 *             both. The cursor is the decimal id of the page's last row; an
 *             empty page returns the request's cursor ("0" for "").
 *   counts    SELECT sender_uid, count(*), max(send_time) ... GROUP BY
 *             sender_uid, most recent first
 *   noop      SELECT 1
 * Every statement is its own transaction; with synchronous_commit = on
 * and fsync = on (the server's settings, reported and checked at start) a
 * commit that wrote anything returns only after its WAL is flushed, so a
 * send is durable before its answer, as in imbox; concurrent commits share
 * a WAL flush (PostgreSQL's own group commit).
 *
 * Where this design does not keep imbox's promises (docs/BENCHMARKS.md
 * says it too): the unique constraint dedups a msg_id only while its row
 * is stored: a retry that arrives after the receiver acked the message is
 * stored and delivered again (imbox remembers msg_ids for 24 h, acked or
 * not); the cursor is a bare id, not bound to its owner (a service in front
 * would have to sign it); no quota per inbox and no expiry. And one cost
 * imbox does not pay: the delete of an acked page is a synchronous commit
 * too (imbox does not fsync acks: a lost ack is a redelivery).
 *
 * Concurrency: one thread; one connection per call in flight, each
 * nonblocking (PQsendQueryPrepared, PQflush, PQconsumeInput, PQisBusy),
 * all watched with one poll(). Before the run, --connections N are opened
 * (default: as many as the run has calls at once, peer.h, so that
 * connecting is not timed); a call finding none idle opens one more
 * (blocking; the count is printed at the end) up to --max-connections or
 * the first refusal, then waits for one. A call past --timeout-ms fails as
 * pg:timeout and its connection is dropped.
 *
 * One connection per call rather than pipelining: a backend runs one
 * statement at a time, so calls pipelined on one connection commit one
 * after the other, each waiting for its own WAL flush; calls on separate
 * connections commit concurrently and share flushes.
 */
#include "peer.h"

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#define PG_CONNS_DEFAULT_MAX 1024 /* above max_connections of any sane server */
#define PG_NAMES_MAX 64           /* distinct error names kept for the report */
#define PG_CURSOR_LEN 24          /* "9223372036854775807" and a NUL */
#define PG_OPEN_LOOP_CONNS 64     /* opened before an open-loop run (--rate) */

/* ------------------------------------------------------------ statements */

static const char *const s_schema =
    "CREATE TABLE IF NOT EXISTS offline_msgs ("
    " id bigserial NOT NULL,"
    " receiver_uid varchar(64) NOT NULL,"
    " msg_id varchar(128) NOT NULL,"
    " send_time timestamptz NOT NULL DEFAULT now(),"
    " sender_uid varchar(64) NOT NULL,"
    " msg_type int NOT NULL DEFAULT 0,"
    " msg_content bytea NOT NULL,"
    " PRIMARY KEY (receiver_uid, id),"
    " UNIQUE (receiver_uid, msg_id));"
    "CREATE INDEX IF NOT EXISTS offline_msgs_conv"
    " ON offline_msgs (receiver_uid, sender_uid, id);";

typedef enum { Q_SEND1, Q_SENDK, Q_PULL, Q_PULL_CONV, Q_COUNTS, Q_NOOP, Q_COUNT } s_query;

static const struct {
    const char *name, *sql;
    int nparams;
} s_queries[Q_COUNT] = {
    [Q_SEND1] = {"send1",
                 "INSERT INTO offline_msgs (receiver_uid, msg_id, sender_uid, msg_content)"
                 " VALUES ($1::varchar, $2::varchar, $3::varchar, $4::bytea)"
                 " ON CONFLICT (receiver_uid, msg_id) DO NOTHING RETURNING id",
                 4},
    [Q_SENDK] = {"sendk",
                 "INSERT INTO offline_msgs (receiver_uid, msg_id, sender_uid, msg_content)"
                 " SELECT r, $2::varchar, $3::varchar, $4::bytea FROM unnest($1::varchar[]) AS r"
                 " ON CONFLICT (receiver_uid, msg_id) DO NOTHING RETURNING receiver_uid",
                 4},
    [Q_PULL] = {"pull",
                "WITH acked AS (DELETE FROM offline_msgs"
                " WHERE receiver_uid = $1::varchar AND id <= $2::bigint)"
                " SELECT id, msg_id, sender_uid, msg_content FROM offline_msgs"
                " WHERE receiver_uid = $1::varchar AND id > $2::bigint"
                " ORDER BY id LIMIT $3::int",
                3},
    [Q_PULL_CONV] = {"pullconv",
                     "WITH acked AS (DELETE FROM offline_msgs"
                     " WHERE receiver_uid = $1::varchar AND sender_uid = $4::varchar"
                     " AND id <= $2::bigint)"
                     " SELECT id, msg_id, sender_uid, msg_content FROM offline_msgs"
                     " WHERE receiver_uid = $1::varchar AND sender_uid = $4::varchar"
                     " AND id > $2::bigint ORDER BY id LIMIT $3::int",
                     4},
    [Q_COUNTS] = {"counts",
                  "SELECT sender_uid, count(*), max(send_time) FROM offline_msgs"
                  " WHERE receiver_uid = $1::varchar GROUP BY sender_uid"
                  " ORDER BY 3 DESC, 1",
                  1},
    [Q_NOOP] = {"noop", "SELECT 1", 0},
};

/* ------------------------------------------------------------ the driver */

typedef struct pg_conn {
    PGconn *pq;
    bc_op *op;          /* the call in flight, NULL when idle */
    s_query q;          /* its statement */
    PGresult *res;      /* its first result, kept until the statement ends */
    bool flushing;      /* output still queued in libpq: also wait for POLLOUT */
    bool broken;        /* failed: never used again, freed by s_sweep() */
    int64_t started_ns; /* when op was sent (its deadline: + timeout_ns) */
} pg_conn;

typedef struct pg_drv {
    const char *conninfo;
    int preopen, max_conns;
    pg_conn **conns;     /* every live connection (each allocated alone) */
    int nconns, cap_conns;
    peer_fifo waiting;   /* calls with no idle connection yet */
    peer_fifo failed;    /* calls that failed in start(): completed by poll() */
    struct pollfd *pfd;  /* poll set, rebuilt per poll; pfd_conn maps it back */
    pg_conn **pfd_conn;
    bc_entry *entries;   /* one page, reused: bc_done() copies it */
    size_t cap_entries;
    bc_count *counts;
    size_t cap_counts;
    char cursor[PG_CURSOR_LEN];
    char *names[PG_NAMES_MAX]; /* interned status names ("pg:23505") */
    int nnames;
    bool schema_done;    /* the first connection created the table */
    int64_t timeout_ns;  /* a call's deadline (--timeout-ms) */
    int64_t opened_late; /* connections opened after open() */
    int64_t conn_errors;
    char version[32], fsync[16], sync_commit[16], wal_sync[32], max_connections[16],
        shared_buffers[16];
} pg_drv;

/* The status name for an error: "pg:" and the SQLSTATE when the server
 * sent one, else a fixed name. Interned: the core may keep the pointer. */
static const char *s_name(pg_drv *d, const char *what)
{
    for (int i = 0; i < d->nnames; i++)
        if (strcmp(d->names[i], what) == 0)
            return d->names[i];
    if (d->nnames == PG_NAMES_MAX)
        return "pg:other";
    char *s = strdup(what);
    if (!s)
        return "pg:other";
    d->names[d->nnames++] = s;
    return s;
}

static const char *s_result_name(pg_drv *d, const PGresult *res)
{
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    char buf[16];
    /* A SQLSTATE is 5 characters of [0-9A-Z]: anything else is not one. */
    if (state && strlen(state) == 5 && strspn(state, "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ") == 5) {
        snprintf(buf, sizeof buf, "pg:%s", state);
        return s_name(d, buf);
    }
    return res ? "pg:error" : "pg:connection";
}

/* Runs one statement synchronously (setup only) and checks its status. */
static bool s_exec_ok(PGconn *pq, const char *sql, const char *what)
{
    PGresult *r = PQexec(pq, sql);
    ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    bool ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
    if (!ok)
        fprintf(stderr, "pg-bench: %s: %s", what, PQerrorMessage(pq));
    PQclear(r);
    return ok;
}

/* SHOW name into out (a setting for the report); "?" when it fails. */
static void s_show(PGconn *pq, const char *name, char *out, size_t cap)
{
    char sql[64];
    snprintf(sql, sizeof sql, "SHOW %s", name); /* name: a constant of ours */
    PGresult *r = PQexec(pq, sql);
    const char *v = "?";
    if (r && PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 && PQnfields(r) == 1 &&
        !PQgetisnull(r, 0, 0))
        v = PQgetvalue(r, 0, 0);
    snprintf(out, cap, "%s", v);
    PQclear(r);
}

/* Opens one connection, prepares the statements, makes it nonblocking.
 * The first one also creates the schema and reads the server's settings. */
static pg_conn *s_conn_open(pg_drv *d)
{
    if (d->nconns == d->max_conns)
        return NULL;
    if (d->nconns == d->cap_conns) {
        int cap = d->cap_conns ? d->cap_conns * 2 : 16;
        pg_conn **v = realloc(d->conns, (size_t)cap * sizeof *v);
        struct pollfd *p = realloc(d->pfd, (size_t)cap * sizeof *p);
        if (p)
            d->pfd = p;
        pg_conn **m = p ? realloc(d->pfd_conn, (size_t)cap * sizeof *m) : NULL;
        if (m)
            d->pfd_conn = m;
        if (v)
            d->conns = v;
        if (!v || !p || !m)
            return NULL;
        d->cap_conns = cap;
    }
    PGconn *pq = PQconnectdb(d->conninfo);
    if (!pq || PQstatus(pq) != CONNECTION_OK) {
        fprintf(stderr, "pg-bench: connect: %s", pq ? PQerrorMessage(pq) : "out of memory\n");
        PQfinish(pq);
        return NULL;
    }
    bool ok = true;
    if (!d->schema_done) {
        /* Quiet the NOTICEs of IF NOT EXISTS on a reused database. */
        ok = s_exec_ok(pq, "SET client_min_messages = warning", "set") &&
             s_exec_ok(pq, s_schema, "create schema");
        s_show(pq, "server_version", d->version, sizeof d->version);
        s_show(pq, "fsync", d->fsync, sizeof d->fsync);
        s_show(pq, "synchronous_commit", d->sync_commit, sizeof d->sync_commit);
        s_show(pq, "wal_sync_method", d->wal_sync, sizeof d->wal_sync);
        s_show(pq, "max_connections", d->max_connections, sizeof d->max_connections);
        s_show(pq, "shared_buffers", d->shared_buffers, sizeof d->shared_buffers);
        if (strcmp(d->fsync, "on") != 0 || strcmp(d->sync_commit, "on") != 0)
            fprintf(stderr,
                    "pg-bench: warning: fsync=%s synchronous_commit=%s: commits are not "
                    "durable before the answer, the figures do not compare with imbox\n",
                    d->fsync, d->sync_commit);
        d->schema_done = ok;
    }
    for (int i = 0; ok && i < Q_COUNT; i++) {
        PGresult *r = PQprepare(pq, s_queries[i].name, s_queries[i].sql, s_queries[i].nparams, NULL);
        ok = r && PQresultStatus(r) == PGRES_COMMAND_OK;
        if (!ok)
            fprintf(stderr, "pg-bench: prepare %s: %s", s_queries[i].name, PQerrorMessage(pq));
        PQclear(r);
    }
    if (ok && PQsetnonblocking(pq, 1) != 0) {
        fprintf(stderr, "pg-bench: nonblocking: %s", PQerrorMessage(pq));
        ok = false;
    }
    pg_conn *c = ok ? calloc(1, sizeof *c) : NULL;
    if (!c) {
        PQfinish(pq);
        return NULL;
    }
    c->pq = pq;
    d->conns[d->nconns++] = c;
    return c;
}

static void s_conn_free(pg_conn *c)
{
    PQclear(c->res);
    PQfinish(c->pq);
    free(c);
}

/* Marks c broken: no call is given to it again; s_sweep() frees it. Freeing
 * is deferred so that a connection in the poll set stays valid while the
 * set is walked. */
static void s_conn_break(pg_drv *d, pg_conn *c, const char *why)
{
    if (!c->broken) {
        const char *m = PQerrorMessage(c->pq);
        int n = (int)strcspn(m, "\n");
        fprintf(stderr, "pg-bench: connection dropped: %s%s%.*s\n", why, n ? ": " : "", n, m);
        c->broken = true;
        d->conn_errors++;
    }
}

/* Frees the broken connections (none has a call in flight). */
static void s_sweep(pg_drv *d)
{
    for (int i = 0; i < d->nconns;) {
        pg_conn *c = d->conns[i];
        if (!c->broken) {
            i++;
            continue;
        }
        s_conn_free(c);
        d->conns[i] = d->conns[--d->nconns];
    }
}

static bool s_busy(const pg_drv *d)
{
    for (int i = 0; i < d->nconns; i++)
        if (d->conns[i]->op)
            return true;
    return false;
}

static pg_conn *s_idle(pg_drv *d)
{
    for (int i = 0; i < d->nconns; i++)
        if (!d->conns[i]->op && !d->conns[i]->broken)
            return d->conns[i];
    return NULL;
}

/* ----------------------------------------------------------- parameters */

/* The receivers as a PostgreSQL array literal {"a","b"}: a value bound to
 * $1, never SQL; every element quoted, '"' and '\' escaped. */
static char *s_array_literal(const bc_op *op)
{
    size_t n = 3;
    for (int i = 0; i < op->nreceivers; i++)
        n += 3 + 2 * strlen(op->receivers[i]);
    char *s = malloc(n), *p = s;
    if (!s)
        return NULL;
    *p++ = '{';
    for (int i = 0; i < op->nreceivers; i++) {
        if (i)
            *p++ = ',';
        *p++ = '"';
        for (const char *q = op->receivers[i]; *q; q++) {
            if (*q == '"' || *q == '\\')
                *p++ = '\\';
            *p++ = *q;
        }
        *p++ = '"';
    }
    *p++ = '}';
    *p = '\0';
    return s;
}

/* A cursor of ours: "" (from the start) or a decimal id >= 0. */
static bool s_cursor_parse(const char *s, long long *out)
{
    if (!s || !*s) {
        *out = 0;
        return true;
    }
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || v < 0 || s[0] < '0' || s[0] > '9')
        return false;
    *out = v;
    return true;
}

/* Sends op's statement on idle connection c. False: c is broken. */
static bool s_send(pg_conn *c, bc_op *op)
{
    const char *v[4] = {0};
    int len[4] = {0}, fmt[4] = {0};
    char cur[PG_CURSOR_LEN], page[16];
    char *array = NULL;
    s_query q;
    switch (op->kind) {
    case BC_SEND:
        if (op->nreceivers == 1) {
            q = Q_SEND1;
            v[0] = op->receivers[0];
        } else {
            q = Q_SENDK;
            v[0] = array = s_array_literal(op);
            if (!array)
                return false;
        }
        v[1] = op->msg_id;
        v[2] = op->sender;
        /* bytea in binary: the bytes as they are ("" for none: NULL is SQL NULL) */
        v[3] = op->content_len ? (const char *)op->content : "";
        len[3] = (int)op->content_len;
        fmt[3] = 1;
        break;
    case BC_PULL: {
        long long at = 0;
        (void)s_cursor_parse(op->cursor, &at); /* checked by pg_start() */
        q = op->sender ? Q_PULL_CONV : Q_PULL;
        snprintf(cur, sizeof cur, "%lld", at);
        snprintf(page, sizeof page, "%d", op->page);
        v[0] = op->receivers[0];
        v[1] = cur;
        v[2] = page;
        v[3] = op->sender;
        break;
    }
    case BC_COUNTS:
        q = Q_COUNTS;
        v[0] = op->receivers[0];
        break;
    case BC_NOOP:
    default:
        q = Q_NOOP;
        break;
    }
    int rc = PQsendQueryPrepared(c->pq, s_queries[q].name, s_queries[q].nparams, v, len, fmt, 1);
    free(array);
    if (!rc)
        return false;
    int f = PQflush(c->pq);
    if (f < 0)
        return false;
    c->flushing = f == 1;
    c->op = op;
    c->q = q;
    c->started_ns = bc_now_ns();
    return true;
}

/* ------------------------------------------------------------- results */

/* Binary int8 at (row, col), big-endian on the wire. */
static bool s_int8(const PGresult *r, int row, int col, int64_t *out)
{
    if (PQgetisnull(r, row, col) || PQgetlength(r, row, col) != 8)
        return false;
    const unsigned char *p = (const unsigned char *)PQgetvalue(r, row, col);
    uint64_t u = 0;
    for (int i = 0; i < 8; i++)
        u = u << 8 | p[i];
    *out = (int64_t)u;
    return true;
}

/* A binary text value that is an id or uid: no NUL inside, fits the core. */
static const char *s_id(const PGresult *r, int row, int col)
{
    if (PQgetisnull(r, row, col))
        return NULL;
    int n = PQgetlength(r, row, col);
    const char *v = PQgetvalue(r, row, col);
    if (n <= 0 || n >= BC_ID_MAX || memchr(v, '\0', (size_t)n))
        return NULL;
    return v; /* libpq NUL-terminates every value, binary ones too */
}

/* Fills op's result from the statement's result r. False: r is not what
 * the statement returns (the op fails as MALFORMED, bench_core.h). */
static bool s_fill(pg_drv *d, bc_op *op, s_query q, const PGresult *r)
{
    int rows = PQntuples(r);
    switch (q) {
    case Q_SEND1:
        if (rows > 1 || PQnfields(r) != 1)
            return false;
        op->stored[0] = rows == 1 ? BC_STORED : BC_DUPLICATE;
        return true;
    case Q_SENDK:
        if (rows > op->nreceivers || PQnfields(r) != 1)
            return false;
        for (int i = 0; i < op->nreceivers; i++)
            op->stored[i] = BC_DUPLICATE;
        for (int row = 0; row < rows; row++) {
            const char *who = s_id(r, row, 0);
            int i = 0;
            while (who && i < op->nreceivers && strcmp(op->receivers[i], who) != 0)
                i++;
            if (!who || i == op->nreceivers)
                return false; /* a receiver we did not send */
            op->stored[i] = BC_STORED;
        }
        return true;
    case Q_PULL:
    case Q_PULL_CONV: {
        if (PQnfields(r) != 4 || rows > op->page ||
            !peer_grow((void **)&d->entries, &d->cap_entries, (size_t)rows + 1, sizeof *d->entries))
            return false;
        int64_t last = -1;
        for (int row = 0; row < rows; row++) {
            int64_t id;
            bc_entry *e = &d->entries[row];
            if (!s_int8(r, row, 0, &id) || id <= last || PQgetisnull(r, row, 3))
                return false;
            last = id;
            e->msg_id = s_id(r, row, 1);
            e->sender = s_id(r, row, 2);
            e->content_len = (size_t)PQgetlength(r, row, 3);
            if (!e->msg_id || !e->sender)
                return false;
        }
        long long at;
        if (!s_cursor_parse(op->cursor, &at) || (rows && last <= at))
            return false;
        snprintf(d->cursor, sizeof d->cursor, "%lld", rows ? (long long)last : at);
        op->entries = d->entries;
        op->nentries = (size_t)rows;
        op->next_cursor = d->cursor;
        return true;
    }
    case Q_COUNTS:
        if (PQnfields(r) != 3 ||
            !peer_grow((void **)&d->counts, &d->cap_counts, (size_t)rows + 1, sizeof *d->counts))
            return false;
        for (int row = 0; row < rows; row++) {
            int64_t n;
            d->counts[row].sender = s_id(r, row, 0);
            if (!d->counts[row].sender || !s_int8(r, row, 1, &n) || n <= 0)
                return false;
            d->counts[row].count = (uint64_t)n;
        }
        op->counts = d->counts;
        op->ncounts = (size_t)rows;
        return true;
    case Q_NOOP:
        return rows == 1 && PQnfields(r) == 1;
    default:
        return false;
    }
}

/* The statement on c has ended (PQgetResult gave NULL): complete its op. */
static void s_finish(pg_drv *d, pg_conn *c)
{
    bc_op *op = c->op;
    PGresult *r = c->res;
    c->op = NULL;
    c->res = NULL;
    ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    if (st == PGRES_TUPLES_OK) {
        if (s_fill(d, op, c->q, r)) {
            op->status = 0;
            op->status_name = NULL;
        } else {
            op->status = -1;
            op->status_name = "MALFORMED";
        }
    } else {
        op->status = 1;
        op->status_name = s_result_name(d, r);
    }
    bc_done(op); /* copies the page, which points into r */
    PQclear(r);
}

static void s_fail(bc_op *op, const char *name)
{
    op->status = 1;
    op->status_name = name;
    bc_done(op);
}

/* Fails c's call, if any, and marks c broken. */
static void s_conn_fail(pg_drv *d, pg_conn *c, const char *why, int *completed)
{
    s_conn_break(d, c, why);
    if (c->op) {
        bc_op *op = c->op;
        c->op = NULL;
        PQclear(c->res);
        c->res = NULL;
        s_fail(op, "pg:connection");
        (*completed)++;
    }
}

/* Handles poll events ev on busy connection c. */
static void s_event(pg_drv *d, pg_conn *c, short ev, int *completed)
{
    if (c->flushing || (ev & POLLOUT)) {
        int f = PQflush(c->pq);
        if (f < 0) {
            s_conn_fail(d, c, "flush", completed);
            return;
        }
        c->flushing = f == 1;
    }
    if (!(ev & (POLLIN | POLLERR | POLLHUP)))
        return;
    if (!PQconsumeInput(c->pq)) {
        s_conn_fail(d, c, "read", completed);
        return;
    }
    while (c->op && !PQisBusy(c->pq)) {
        PGresult *r = PQgetResult(c->pq);
        if (!r) {
            s_finish(d, c);
            (*completed)++;
            return;
        }
        if (!c->res)
            c->res = r; /* one statement, one result: keep the first */
        else
            PQclear(r);
    }
    if (c->op && PQstatus(c->pq) == CONNECTION_BAD)
        s_conn_fail(d, c, "connection", completed);
}

/* One more connection while the run goes on (blocking: counted, and said
 * at the end). When the server refuses one, the pool stops growing. */
static pg_conn *s_conn_more(pg_drv *d)
{
    pg_conn *c = s_conn_open(d);
    if (c) {
        d->opened_late++;
    } else {
        fprintf(stderr, "pg-bench: the pool stays at %d connections\n", d->nconns);
        d->max_conns = d->nconns;
    }
    return c;
}

/* Gives waiting calls the idle connections, opening more when allowed. */
static void s_dispatch(pg_drv *d, int *completed)
{
    while (d->waiting.n) {
        pg_conn *c = s_idle(d);
        if (!c && d->nconns < d->max_conns) {
            c = s_conn_more(d);
        }
        if (!c) {
            if (s_busy(d))
                return; /* one will finish */
            /* nothing in flight and no connection to be had: fail them */
            for (bc_op *op; (op = peer_fifo_pop(&d->waiting));) {
                s_fail(op, "pg:connection");
                (*completed)++;
            }
            return;
        }
        bc_op *op = peer_fifo_pop(&d->waiting);
        if (!s_send(c, op)) {
            s_conn_break(d, c, "send");
            s_fail(op, "pg:connection");
            (*completed)++;
        }
    }
}

/* ------------------------------------------------------ the driver API */

static int pg_open(void *self)
{
    pg_drv *d = self;
    if (!d->conninfo) {
        fprintf(stderr, "pg-bench: --conninfo is required\n");
        return -1;
    }
    /* One connection per call in flight, opened now so that connecting is
     * not timed; a run that needs more opens them as it goes. */
    const bc_opts *o = bc_options();
    int n = d->preopen ? d->preopen : peer_calls_at_once(o, PG_OPEN_LOOP_CONNS);
    if (n > d->max_conns)
        n = d->max_conns;
    d->timeout_ns = (int64_t)(o->timeout_ms > 0 ? o->timeout_ms : 10000) * 1000000;
    for (int i = 0; i < (n > 0 ? n : 1); i++)
        if (!s_conn_open(d))
            return -1;
    return 0;
}

static void pg_close(void *self)
{
    pg_drv *d = self;
    if (d->opened_late)
        fprintf(stderr,
                "pg-bench: %" PRId64 " connections were opened during the run (give --connections)\n",
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
    for (int i = 0; i < d->nnames; i++)
        free(d->names[i]);
    memset(d, 0, sizeof *d);
}

static int pg_start(void *self, bc_op *op)
{
    pg_drv *d = self;
    if (op->kind == BC_SEND && (op->nreceivers < 1 || op->nreceivers > BC_GROUP_MAX)) {
        fprintf(stderr, "pg-bench: a send to %d receivers\n", op->nreceivers);
        return -1;
    }
    long long at;
    if (op->kind == BC_PULL && (op->page <= 0 || !s_cursor_parse(op->cursor, &at))) {
        fprintf(stderr, "pg-bench: a pull of %d messages after cursor \"%s\"\n", op->page,
                op->cursor ? op->cursor : "(null)");
        return -1;
    }
    pg_conn *c = d->waiting.n ? NULL : s_idle(d);
    if (!c && d->waiting.n == 0 && d->nconns < d->max_conns) {
        c = s_conn_more(d);
    }
    if (!c)
        return peer_fifo_push(&d->waiting, op) ? 0 : -1;
    if (s_send(c, op))
        return 0;
    s_conn_break(d, c, "send");
    return peer_fifo_push(&d->failed, op) ? 0 : -1; /* completed by poll() */
}

/* Fails the calls past their deadline (--timeout-ms) and drops their
 * connections (the statement may still be running: the connection cannot
 * be reused). Returns the earliest deadline still pending (or limit). */
static int64_t s_expire(pg_drv *d, int64_t now, int64_t limit, int *completed)
{
    for (int i = 0; i < d->nconns; i++) {
        pg_conn *c = d->conns[i];
        if (!c->op || c->broken)
            continue;
        int64_t due = c->started_ns + d->timeout_ns;
        if (due <= now) {
            s_conn_break(d, c, "timeout");
            bc_op *op = c->op;
            c->op = NULL;
            s_fail(op, "pg:timeout");
            (*completed)++;
        } else if (due < limit) {
            limit = due;
        }
    }
    return limit;
}

static int pg_poll(void *self, int64_t deadline_ns)
{
    pg_drv *d = self;
    int completed = 0;
    for (bc_op *op; (op = peer_fifo_pop(&d->failed));) {
        s_fail(op, "pg:connection");
        completed++;
    }
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
            pg_conn *c = d->conns[i];
            if (!c->op)
                continue;
            d->pfd[n] = (struct pollfd){.fd = PQsocket(c->pq),
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
            perror("pg-bench: poll");
            return -1;
        }
        for (int k = 0; k < n; k++) {
            short ev = d->pfd[k].revents;
            pg_conn *c = d->pfd_conn[k];
            if (ev && c->op && !c->broken)
                s_event(d, c, ev, &completed);
        }
        if (completed)
            return 0;
        if (n == 0 && bc_now_ns() >= deadline_ns)
            return 0;
    }
}

static void pg_report(void *self)
{
    pg_drv *d = self;
    bc_put_str("pg_server_version", d->version);
    bc_put_str("pg_fsync", d->fsync);
    bc_put_str("pg_synchronous_commit", d->sync_commit);
    bc_put_str("pg_wal_sync_method", d->wal_sync);
    bc_put_str("pg_max_connections", d->max_connections);
    bc_put_str("pg_shared_buffers", d->shared_buffers);
    bc_put_int("pg_connections", d->nconns);
    bc_put_int("pg_conn_errors", d->conn_errors);
    bc_put_int("pg_connections_opened_late", d->opened_late);
}

/* ------------------------------------------------------------------ main */

static int s_extra(const char *flag, const char *value, void *ctx)
{
    pg_drv *d = ctx;
    if (strcmp(flag, "--conninfo") == 0) {
        if (!value) {
            fprintf(stderr, "pg-bench: --conninfo wants a libpq connection string\n");
            return -1;
        }
        d->conninfo = value;
        return 1;
    }
    if (strcmp(flag, "--connections") == 0)
        return peer_int_flag("pg-bench", flag, value, 1, 100000, &d->preopen);
    if (strcmp(flag, "--max-connections") == 0)
        return peer_int_flag("pg-bench", flag, value, 1, 100000, &d->max_conns);
    return 0;
}

int main(int argc, char **argv)
{
    pg_drv d = {.max_conns = PG_CONNS_DEFAULT_MAX};
    bc_driver drv = {
        .name = "postgres",
        .self = &d,
        .open = pg_open,
        .close = pg_close,
        .start = pg_start,
        .poll = pg_poll,
        .report = pg_report,
    };
    int rc = bc_main(argc, argv, &drv, s_extra, &d,
                     "  --conninfo \"host=H port=P dbname=D user=U\"  (libpq)\n"
                     "  --connections N      opened at start (default 1; give --inflight)\n"
                     "  --max-connections M  opened at most, more on demand (default 1024)\n");
    return rc;
}
