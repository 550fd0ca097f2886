/*
 * test_e2e.c - end-to-end tests: real `imbox` processes on loopback, real
 * gRPC calls (services/client/rpc_client.h), CUnit basic interface.
 *
 * Two fixtures (e2e_fixture.h) run the same test functions (the global F
 * points at the fixture of the running suite):
 *
 *   serve    one `imbox serve --listen 127.0.0.1:P --data-dir D --shards 4`
 *   cluster  three `imbox shard --index I --count 3 --listen tcp://...` and
 *            one `imbox gateway --listen 127.0.0.1:P --shards tcp://...,...`
 *
 * Processes, ports, tokens, temp directories and their cleanup are the
 * fixture's (e2e_fixture.h says how).
 */
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include <CUnit/Basic.h>

#include "e2e_fixture.h"
#include "im_cunit.h"

#include "rpc_client.h"

#define S_SEND_MS 30000   /* deadline of a group Send (50 fsync'ed copies) */

static e2e_fixture s_serve = {.name = "serve", .cluster = false};
static e2e_fixture s_cluster = {.name = "cluster", .cluster = true};
static e2e_fixture *const s_fixtures[] = {&s_serve, &s_cluster};
static e2e_fixture *F; /* the fixture of the running suite */

/* A client of F acting as uid. */
static rpc_client *s_client(const char *uid)
{
    return e2e_client(F, 0, uid);
}

static int s_init_serve(void) { return e2e_suite_init(F = &s_serve); }
static int s_clean_serve(void) { return e2e_suite_cleanup(&s_serve); }
static int s_init_cluster(void) { return e2e_suite_init(F = &s_cluster); }
static int s_clean_cluster(void) { return e2e_suite_cleanup(&s_cluster); }

/* ------------------------------------------------------------- helpers */

/* Sends one message to one receiver; asserts a stored (or duplicate)
 * receipt and returns its send_time_ms. */
static int64_t s_send1(rpc_client *c, const char *to, const char *msg_id,
                       int32_t type, const void *content, size_t len,
                       bool want_duplicate)
{
    rpc_send_result r;
    rpc_error e;
    const char *rcv[] = {to};
    EXPECT_OK(rpc_send(c, msg_id, rcv, 1, type, content, len, E2E_CALL_MS, &r,
                       &e),
              e);
    CU_ASSERT_EQUAL_FATAL(r.n, 1);
    if (r.receipts[0].code != 0)
        e2e_note("receipt for %s: %s: %s", to,
               rpc_code_name(r.receipts[0].code), r.receipts[0].error);
    CU_ASSERT_EQUAL(r.receipts[0].code, 0);
    CU_ASSERT_STRING_EQUAL(r.receipts[0].receiver_uid, to);
    CU_ASSERT_EQUAL(r.receipts[0].duplicate, want_duplicate);
    int64_t t = r.receipts[0].send_time_ms;
    rpc_send_result_free(&r);
    return t;
}

static uint64_t s_total(rpc_client *c)
{
    rpc_counts_result r;
    rpc_error e;
    EXPECT_OK(rpc_counts(c, E2E_CALL_MS, &r, &e), e);
    uint64_t t = r.total;
    rpc_counts_result_free(&r);
    return t;
}

/* -------------------------------------------------------------- the tests */

/*
 * A sends 5 messages to B; B drains with page size 2: pages of 2, 2, 1
 * messages and an empty last call; every message once, in order, intact
 * (content with 0x00 and a non-UTF-8 byte), sender_uid from A's token.
 */
static void test_send_pull(void)
{
    const char *A = "sp-alice", *B = "sp-bob";
    rpc_client *ca = s_client(A), *cb = s_client(B);
    int64_t times[5];
    uint8_t content[5][6];
    int64_t t0 = e2e_wall_ms();
    for (int i = 0; i < 5; i++) {
        char id[32];
        snprintf(id, sizeof id, "sp-%d", i);
        uint8_t c[6] = {'m', (uint8_t)('0' + i), 0x00, 0xff, 'z', '\n'};
        memcpy(content[i], c, sizeof c);
        times[i] = s_send1(ca, B, id, 10 + i, content[i], sizeof content[i],
                           false);
    }
    int64_t t1 = e2e_wall_ms();
    for (int i = 0; i < 5; i++) {
        CU_ASSERT(times[i] >= t0 - 5000 && times[i] <= t1 + 5000);
        if (i)
            CU_ASSERT(times[i] >= times[i - 1]);
    }

    static const size_t sizes[] = {2, 2, 1, 0};
    static const bool more[] = {true, true, false, false};
    char cursor[RPC_CURSOR_CAP] = "";
    int next = 0;
    for (int call = 0; call < 4; call++) {
        rpc_page pg;
        rpc_error e;
        EXPECT_OK(rpc_pull(cb, cursor, 2, NULL, E2E_CALL_MS, &pg, &e), e);
        CU_ASSERT_EQUAL(pg.n, sizes[call]);
        CU_ASSERT_EQUAL(pg.more, more[call]);
        for (size_t k = 0; k < pg.n && next < 5; k++, next++) {
            const rpc_msg *m = &pg.msgs[k];
            char id[32];
            snprintf(id, sizeof id, "sp-%d", next);
            CU_ASSERT_STRING_EQUAL(m->msg_id, id);
            CU_ASSERT_STRING_EQUAL(m->sender_uid, A);
            CU_ASSERT_STRING_EQUAL(m->receiver_uid, B);
            CU_ASSERT_EQUAL(m->send_time_ms, times[next]);
            CU_ASSERT_EQUAL(m->msg_type, 10 + next);
            CU_ASSERT_EQUAL(m->content_len, sizeof content[next]);
            CU_ASSERT(m->content_len == sizeof content[next] &&
                      memcmp(m->content, content[next],
                             sizeof content[next]) == 0);
        }
        if (pg.n) {
            CU_ASSERT(pg.cursor[0] != '\0');
            CU_ASSERT(strcmp(pg.cursor, cursor) != 0);
        } else {
            /* An empty page answers the request's cursor again. */
            CU_ASSERT_STRING_EQUAL(pg.cursor, cursor);
        }
        snprintf(cursor, sizeof cursor, "%s", pg.cursor);
        rpc_page_free(&pg);
    }
    CU_ASSERT_EQUAL(next, 5);
    /* The empty last call acked the last page; A's inbox was never used. */
    CU_ASSERT_EQUAL(s_total(cb), 0);
    CU_ASSERT_EQUAL(s_total(ca), 0);

    /* The cursor of the empty page may be passed again: nothing happens. */
    rpc_page pg;
    rpc_error e;
    EXPECT_OK(rpc_pull(cb, cursor, 2, NULL, E2E_CALL_MS, &pg, &e), e);
    CU_ASSERT_EQUAL(pg.n, 0);
    CU_ASSERT_FALSE(pg.more);
    rpc_page_free(&pg);
    rpc_client_destroy(&ca);
    rpc_client_destroy(&cb);
}

/* Two senders write to R; Counts lists both, most recent first, exact. */
static void test_counts(void)
{
    const char *R = "ct-carol", *S1 = "ct-s1", *S2 = "ct-s2";
    rpc_client *cr = s_client(R), *c1 = s_client(S1), *c2 = s_client(S2);
    int64_t last1 = 0, last2 = 0;
    last1 = s_send1(c1, R, "ct-1a", 1, "one", 3, false);
    last1 = s_send1(c1, R, "ct-1b", 1, "two", 3, false);
    last2 = s_send1(c2, R, "ct-2a", 1, "three", 5, false);
    last2 = s_send1(c2, R, "ct-2b", 1, "four", 4, false);
    last2 = s_send1(c2, R, "ct-2c", 1, "five", 4, false);

    rpc_counts_result r;
    rpc_error e;
    EXPECT_OK(rpc_counts(cr, E2E_CALL_MS, &r, &e), e);
    CU_ASSERT_EQUAL(r.total, 5);
    CU_ASSERT_EQUAL_FATAL(r.n, 2);
    /* Most recent first; ties by sender uid. */
    bool s2_first = last2 > last1;
    const rpc_sender_count *a = &r.senders[s2_first ? 0 : 1];
    const rpc_sender_count *b = &r.senders[s2_first ? 1 : 0];
    CU_ASSERT_STRING_EQUAL(a->sender_uid, S2);
    CU_ASSERT_EQUAL(a->count, 3);
    CU_ASSERT_EQUAL(a->last_send_time_ms, last2);
    CU_ASSERT_STRING_EQUAL(b->sender_uid, S1);
    CU_ASSERT_EQUAL(b->count, 2);
    CU_ASSERT_EQUAL(b->last_send_time_ms, last1);
    rpc_counts_result_free(&r);

    /* A sender's own Counts is about its own (empty) inbox. */
    CU_ASSERT_EQUAL(s_total(c1), 0);
    rpc_client_destroy(&cr);
    rpc_client_destroy(&c1);
    rpc_client_destroy(&c2);
}

/* Ack with a page's cursor deletes exactly that page, once. */
static void test_ack(void)
{
    const char *D = "ak-dave", *S = "ak-sam";
    rpc_client *cd = s_client(D), *cs = s_client(S);
    for (int i = 0; i < 5; i++) {
        char id[32];
        snprintf(id, sizeof id, "ak-%d", i);
        s_send1(cs, D, id, 0, id, strlen(id), false);
    }
    rpc_page pg;
    rpc_error e;
    uint64_t deleted = 99;
    EXPECT_OK(rpc_pull(cd, "", 2, NULL, E2E_CALL_MS, &pg, &e), e);
    CU_ASSERT_EQUAL_FATAL(pg.n, 2);
    CU_ASSERT_STRING_EQUAL(pg.msgs[0].msg_id, "ak-0");
    CU_ASSERT_STRING_EQUAL(pg.msgs[1].msg_id, "ak-1");
    char c1[RPC_CURSOR_CAP];
    snprintf(c1, sizeof c1, "%s", pg.cursor);
    rpc_page_free(&pg);

    EXPECT_OK(rpc_ack(cd, c1, E2E_CALL_MS, &deleted, &e), e);
    CU_ASSERT_EQUAL(deleted, 2);
    deleted = 99;
    EXPECT_OK(rpc_ack(cd, c1, E2E_CALL_MS, &deleted, &e), e);
    CU_ASSERT_EQUAL(deleted, 0);
    CU_ASSERT_EQUAL(s_total(cd), 3);

    /* The acked page is gone: from the start, the next two come. */
    EXPECT_OK(rpc_pull(cd, "", 2, NULL, E2E_CALL_MS, &pg, &e), e);
    CU_ASSERT_EQUAL_FATAL(pg.n, 2);
    CU_ASSERT_STRING_EQUAL(pg.msgs[0].msg_id, "ak-2");
    CU_ASSERT_STRING_EQUAL(pg.msgs[1].msg_id, "ak-3");
    CU_ASSERT_TRUE(pg.more);
    rpc_page_free(&pg);
    /* A retried Pull with an acked cursor is safe: same page, no delete. */
    EXPECT_OK(rpc_pull(cd, c1, 2, NULL, E2E_CALL_MS, &pg, &e), e);
    CU_ASSERT_EQUAL_FATAL(pg.n, 2);
    CU_ASSERT_STRING_EQUAL(pg.msgs[0].msg_id, "ak-2");
    char c2[RPC_CURSOR_CAP];
    snprintf(c2, sizeof c2, "%s", pg.cursor);
    rpc_page_free(&pg);
    CU_ASSERT_EQUAL(s_total(cd), 3);

    EXPECT_OK(rpc_ack(cd, c2, E2E_CALL_MS, &deleted, &e), e);
    CU_ASSERT_EQUAL(deleted, 2);
    CU_ASSERT_EQUAL(s_total(cd), 1);

    /* Bad cursors delete nothing. */
    EXPECT_CODE(rpc_ack(cd, "", E2E_CALL_MS, &deleted, &e),
                GRPC_STATUS_INVALID_ARGUMENT, e);
    EXPECT_CODE(rpc_ack(cd, "not-a-cursor", E2E_CALL_MS, &deleted, &e),
                GRPC_STATUS_INVALID_ARGUMENT, e);
    CU_ASSERT_EQUAL(s_total(cd), 1);
    rpc_client_destroy(&cd);
    rpc_client_destroy(&cs);
}

/* One Send to 50 receivers (spread over every shard): 50 stored receipts
 * in request order, and every receiver pulls its copy. */
static void test_group_send(void)
{
    enum { N = 50 };
    const char *S = "gr-sender";
    char uids[N][16];
    const char *rcv[N];
    for (int i = 0; i < N; i++) {
        snprintf(uids[i], sizeof uids[i], "gr-r%02d", i);
        rcv[i] = uids[i];
    }
    rpc_client *cs = s_client(S);
    rpc_send_result r;
    rpc_error e;
    static const char body[] = "to all of you";
    EXPECT_OK(rpc_send(cs, "gr-1", rcv, N, 7, body, sizeof body - 1,
                       S_SEND_MS, &r, &e),
              e);
    CU_ASSERT_EQUAL_FATAL(r.n, N);
    for (int i = 0; i < N; i++) {
        if (r.receipts[i].code != 0)
            e2e_note("receipt %d (%s): %s: %s", i, uids[i],
                   rpc_code_name(r.receipts[i].code), r.receipts[i].error);
        CU_ASSERT_EQUAL(r.receipts[i].code, 0);
        CU_ASSERT_STRING_EQUAL(r.receipts[i].receiver_uid, uids[i]);
        CU_ASSERT_FALSE(r.receipts[i].duplicate);
    }
    rpc_send_result_free(&r);
    rpc_client_destroy(&cs);

    for (int i = 0; i < N; i++) {
        rpc_client *c = s_client(uids[i]);
        rpc_page pg;
        EXPECT_OK(rpc_pull(c, "", 10, NULL, E2E_CALL_MS, &pg, &e), e);
        CU_ASSERT_EQUAL(pg.n, 1);
        if (pg.n == 1) {
            CU_ASSERT_STRING_EQUAL(pg.msgs[0].msg_id, "gr-1");
            CU_ASSERT_STRING_EQUAL(pg.msgs[0].sender_uid, S);
            CU_ASSERT_STRING_EQUAL(pg.msgs[0].receiver_uid, uids[i]);
            CU_ASSERT_EQUAL(pg.msgs[0].msg_type, 7);
            CU_ASSERT(pg.msgs[0].content_len == sizeof body - 1 &&
                      memcmp(pg.msgs[0].content, body, sizeof body - 1) == 0);
        }
        CU_ASSERT_FALSE(pg.more);
        rpc_page_free(&pg);
        rpc_client_destroy(&c);
    }
}

/* The same (sender, msg_id) again: duplicate, original time, one copy;
 * also after the receiver acked it (a late retry is not redelivered). */
static void test_duplicate(void)
{
    const char *S = "dp-sam", *R = "dp-rita";
    rpc_client *cs = s_client(S), *cr = s_client(R);
    int64_t t1 = s_send1(cs, R, "dp-1", 1, "first", 5, false);
    int64_t t2 = s_send1(cs, R, "dp-1", 1, "second", 6, true);
    CU_ASSERT_EQUAL(t2, t1);

    rpc_page pg;
    rpc_error e;
    EXPECT_OK(rpc_pull(cr, "", 10, NULL, E2E_CALL_MS, &pg, &e), e);
    CU_ASSERT_EQUAL_FATAL(pg.n, 1);
    CU_ASSERT_STRING_EQUAL(pg.msgs[0].msg_id, "dp-1");
    CU_ASSERT(pg.msgs[0].content_len == 5 &&
              memcmp(pg.msgs[0].content, "first", 5) == 0);
    CU_ASSERT_EQUAL(pg.msgs[0].send_time_ms, t1);
    char cur[RPC_CURSOR_CAP];
    snprintf(cur, sizeof cur, "%s", pg.cursor);
    rpc_page_free(&pg);
    EXPECT_OK(rpc_pull(cr, cur, 10, NULL, E2E_CALL_MS, &pg, &e), e);
    CU_ASSERT_EQUAL(pg.n, 0);
    rpc_page_free(&pg);
    CU_ASSERT_EQUAL(s_total(cr), 0);

    int64_t t3 = s_send1(cs, R, "dp-1", 1, "third", 5, true);
    CU_ASSERT_EQUAL(t3, t1);
    EXPECT_OK(rpc_pull(cr, "", 10, NULL, E2E_CALL_MS, &pg, &e), e);
    CU_ASSERT_EQUAL(pg.n, 0);
    rpc_page_free(&pg);
    rpc_client_destroy(&cs);
    rpc_client_destroy(&cr);
}

/* B's token cannot read or ack A's messages; bad tokens are refused. */
static void test_isolation(void)
{
    const char *A = "is-alice", *B = "is-bob", *S = "is-sam";
    rpc_client *ca = s_client(A), *cb = s_client(B), *cs = s_client(S);
    s_send1(cs, A, "is-1", 1, "for alice only", 14, false);

    rpc_page pg;
    rpc_error e;
    uint64_t deleted = 0;
    EXPECT_OK(rpc_pull(cb, "", 10, NULL, E2E_CALL_MS, &pg, &e), e);
    CU_ASSERT_EQUAL(pg.n, 0);
    rpc_page_free(&pg);
    CU_ASSERT_EQUAL(s_total(cb), 0);
    /* B asking for A's conversation with S sees only its own inbox. */
    EXPECT_OK(rpc_pull(cb, "", 10, S, E2E_CALL_MS, &pg, &e), e);
    CU_ASSERT_EQUAL(pg.n, 0);
    rpc_page_free(&pg);

    EXPECT_OK(rpc_pull(ca, "", 10, NULL, E2E_CALL_MS, &pg, &e), e);
    CU_ASSERT_EQUAL_FATAL(pg.n, 1);
    CU_ASSERT_STRING_EQUAL(pg.msgs[0].receiver_uid, A);
    char ca_cursor[RPC_CURSOR_CAP];
    snprintf(ca_cursor, sizeof ca_cursor, "%s", pg.cursor);
    rpc_page_free(&pg);

    /* A's cursor is bound to A. */
    EXPECT_CODE(rpc_pull(cb, ca_cursor, 10, NULL, E2E_CALL_MS, &pg, &e),
                GRPC_STATUS_INVALID_ARGUMENT, e);
    EXPECT_CODE(rpc_ack(cb, ca_cursor, E2E_CALL_MS, &deleted, &e),
                GRPC_STATUS_INVALID_ARGUMENT, e);
    CU_ASSERT_EQUAL(deleted, 0);

    /* No token, a malformed one, one signed with another secret. */
    rpc_client *anon = rpc_client_new(F->addrs[0], NULL);
    rpc_client *junk = rpc_client_new(F->addrs[0], "garbage");
    char other[PATH_MAX];
    snprintf(other, sizeof other, "%s/other-secret", F->root);
    char *forged = e2e_make_token(A, other);
    CU_ASSERT_PTR_NOT_NULL(forged);
    rpc_client *cf = forged ? rpc_client_new(F->addrs[0], forged) : NULL;
    rpc_client *bad[] = {anon, junk, cf};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (!bad[i])
            continue;
        EXPECT_CODE(rpc_pull(bad[i], "", 10, NULL, E2E_CALL_MS, &pg, &e),
                    GRPC_STATUS_UNAUTHENTICATED, e);
        EXPECT_CODE(rpc_counts(bad[i], E2E_CALL_MS,
                               &(rpc_counts_result){0}, &e),
                    GRPC_STATUS_UNAUTHENTICATED, e);
        rpc_send_result r;
        const char *to[] = {A};
        EXPECT_CODE(rpc_send(bad[i], "is-bad", to, 1, 0, "x", 1, E2E_CALL_MS,
                             &r, &e),
                    GRPC_STATUS_UNAUTHENTICATED, e);
        EXPECT_CODE(rpc_ack(bad[i], ca_cursor, E2E_CALL_MS, &deleted, &e),
                    GRPC_STATUS_UNAUTHENTICATED, e);
        rpc_client_destroy(&bad[i]);
    }
    free(forged);

    /* Nothing of A's was read away or deleted. */
    CU_ASSERT_EQUAL(s_total(ca), 1);
    rpc_client_destroy(&ca);
    rpc_client_destroy(&cb);
    rpc_client_destroy(&cs);
}

/* Hostile bytes and over-limit requests are refused as a whole. */
static void test_garbage(void)
{
    const char *G = "gb-gary";
    rpc_client *c = s_client(G);
    static const uint8_t junk[] = {0xff, 0xff, 0xff};
    uint8_t *resp;
    size_t len;
    rpc_error e;
    EXPECT_CODE(rpc_call_raw(c, "/imbox.v1.Inbox/Send", junk, sizeof junk,
                             E2E_CALL_MS, &resp, &len, &e),
                GRPC_STATUS_INVALID_ARGUMENT, e);
    free(resp);
    EXPECT_CODE(rpc_call_raw(c, "/imbox.v1.Inbox/Pull", junk, sizeof junk,
                             E2E_CALL_MS, &resp, &len, &e),
                GRPC_STATUS_INVALID_ARGUMENT, e);
    free(resp);
    EXPECT_CODE(rpc_call_raw(c, "/imbox.v1.Inbox/NoSuchMethod", NULL, 0,
                             E2E_CALL_MS, &resp, &len, &e),
                GRPC_STATUS_UNIMPLEMENTED, e);
    free(resp);

    rpc_page pg;
    EXPECT_CODE(rpc_pull(c, "", 1001, NULL, E2E_CALL_MS, &pg, &e),
                GRPC_STATUS_INVALID_ARGUMENT, e);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.details, "page_size"));

    /* One bad receiver makes the whole Send fail and stores nothing. */
    rpc_send_result r;
    const char *to[] = {"gb-ok", ""};
    EXPECT_CODE(rpc_send(c, "gb-1", to, 2, 0, "x", 1, E2E_CALL_MS, &r, &e),
                GRPC_STATUS_INVALID_ARGUMENT, e);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.details, "receiver_uids"));
    rpc_client *ok = s_client("gb-ok");
    CU_ASSERT_EQUAL(s_total(ok), 0);
    rpc_client_destroy(&ok);
    rpc_client_destroy(&c);
}

/*
 * SIGTERM after a Send returned: every process exits 0 within 10 s, and
 * after a restart on the same data the message is still there.
 */
static void test_sigterm_restart(void)
{
    const char *S = "rs-sam", *R = "rs-rita";
    rpc_client *cs = s_client(S);
    int64_t t = s_send1(cs, R, "rs-1", 3, "survives", 8, false);

    /* Gateway first (it is the last process), then the shards. */
    for (int i = F->nprocs - 1; i >= 0; i--) {
        e2e_proc *p = &F->procs[i];
        int st = 0;
        int64_t t0 = e2e_mono_ms();
        bool in_time = e2e_stop(p, SIGTERM, E2E_STOP_MS, &st);
        char why[64];
        e2e_describe_status(st, why, sizeof why);
        if (!in_time)
            e2e_note("%s/%s: still running %d ms after SIGTERM", F->name,
                   p->name, E2E_STOP_MS);
        else if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
            e2e_note("%s/%s: SIGTERM gave %s", F->name, p->name, why);
        else
            e2e_note("%s/%s: exited 0 in %" PRId64 " ms", F->name, p->name,
                   e2e_mono_ms() - t0);
        CU_ASSERT_TRUE(in_time);
        CU_ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
    rpc_client_destroy(&cs);

    bool up = e2e_fixture_start(F, false);
    if (!up)
        e2e_dump_logs(F);
    CU_ASSERT_TRUE_FATAL(up);
    rpc_client *cr = s_client(R);
    rpc_page pg;
    rpc_error e;
    EXPECT_OK(rpc_pull(cr, "", 10, NULL, E2E_CALL_MS, &pg, &e), e);
    CU_ASSERT_EQUAL_FATAL(pg.n, 1);
    CU_ASSERT_STRING_EQUAL(pg.msgs[0].msg_id, "rs-1");
    CU_ASSERT_STRING_EQUAL(pg.msgs[0].sender_uid, S);
    CU_ASSERT_EQUAL(pg.msgs[0].send_time_ms, t);
    CU_ASSERT_EQUAL(pg.msgs[0].msg_type, 3);
    CU_ASSERT(pg.msgs[0].content_len == 8 &&
              memcmp(pg.msgs[0].content, "survives", 8) == 0);
    rpc_page_free(&pg);
    rpc_client_destroy(&cr);
}

/*
 * rpc_stream and rpc_presence against whatever the server does: until live
 * delivery lands, Subscribe and Presence answer UNIMPLEMENTED; after, the
 * stream of an empty inbox ends at its deadline, a cancelled one with
 * CANCELLED, one without a token with UNAUTHENTICATED, and uids without a
 * stream are offline. Either way the end is reported once and then again
 * (sticky), and every stream is released (ASan builds check that).
 */
static void test_stream_api(void)
{
    const char *U = "st-ursula";
    rpc_client *c = s_client(U);
    rpc_error e, e2;
    rpc_delivery d;

    /* A deadline: the stream ends by itself, soon after it. */
    int64_t t0 = e2e_mono_ms();
    rpc_stream *s = rpc_subscribe(c, "", 1000, &e);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    CU_ASSERT_EQUAL(rpc_stream_status(s, NULL), GRPC_STATUS_OK);
    rpc_stream_event ev;
    while ((ev = rpc_stream_next(s, 100, &d, &e)) == RPC_STREAM_IDLE &&
           e2e_mono_ms() - t0 < 10000) {
    }
    CU_ASSERT_EQUAL(ev, RPC_STREAM_ENDED);
    CU_ASSERT(e2e_mono_ms() - t0 < 5000);
    if (e.code != GRPC_STATUS_UNIMPLEMENTED &&
        e.code != GRPC_STATUS_DEADLINE_EXCEEDED)
        e2e_note("deadline: %s: %s", rpc_code_name(e.code), e.details);
    CU_ASSERT(e.code == GRPC_STATUS_UNIMPLEMENTED ||
              e.code == GRPC_STATUS_DEADLINE_EXCEEDED);
    CU_ASSERT_PTR_NULL(d.msg.msg_id);
    CU_ASSERT_EQUAL(rpc_stream_next(s, 0, &d, &e2), RPC_STREAM_ENDED);
    CU_ASSERT_EQUAL(e2.code, e.code);
    CU_ASSERT_STRING_EQUAL(e2.details, e.details);
    CU_ASSERT_EQUAL(rpc_stream_status(s, &e2), e.code);
    CU_ASSERT_STRING_EQUAL(e2.details, e.details);
    rpc_stream_close(&s);
    CU_ASSERT_PTR_NULL(s);
    rpc_stream_close(&s);

    /* No deadline, cancelled: ends at once (unless it had ended). */
    s = rpc_subscribe(c, NULL, 0, &e);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    ev = rpc_stream_next(s, 0, &d, &e);
    CU_ASSERT(ev == RPC_STREAM_IDLE ||
              (ev == RPC_STREAM_ENDED &&
               e.code == GRPC_STATUS_UNIMPLEMENTED));
    rpc_stream_cancel(s);
    rpc_stream_cancel(s);
    CU_ASSERT_EQUAL(rpc_stream_next(s, 5000, &d, &e), RPC_STREAM_ENDED);
    if (e.code != GRPC_STATUS_UNIMPLEMENTED &&
        e.code != GRPC_STATUS_CANCELLED)
        e2e_note("cancel: %s: %s", rpc_code_name(e.code), e.details);
    CU_ASSERT(e.code == GRPC_STATUS_UNIMPLEMENTED ||
              e.code == GRPC_STATUS_CANCELLED);
    rpc_stream_close(&s);

    /* Closed while open, never read: close cancels and drains. */
    s = rpc_subscribe(c, "", 0, &e);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    rpc_stream_close(&s);
    CU_ASSERT_PTR_NULL(s);

    /* Without a token. */
    rpc_client *anon = rpc_client_new(F->addrs[0], NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(anon);
    s = rpc_subscribe(anon, "", 5000, &e);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    CU_ASSERT_EQUAL(rpc_stream_next(s, -1, &d, &e), RPC_STREAM_ENDED);
    CU_ASSERT(e.code == GRPC_STATUS_UNIMPLEMENTED ||
              e.code == GRPC_STATUS_UNAUTHENTICATED);
    rpc_stream_close(&s);
    rpc_client_destroy(&anon);

    /* Presence of uids nobody subscribed for; an invalid one. */
    const char *uids[] = {"st-nobody", "st-noone"};
    bool online[2] = {true, true};
    grpc_status_code st = rpc_presence(c, uids, 2, E2E_CALL_MS, online, &e);
    CU_ASSERT(st == GRPC_STATUS_OK || st == GRPC_STATUS_UNIMPLEMENTED);
    CU_ASSERT_FALSE(online[0]);
    CU_ASSERT_FALSE(online[1]);
    const char *bad[] = {"st-nobody", ""};
    online[0] = online[1] = true;
    st = rpc_presence(c, bad, 2, E2E_CALL_MS, online, &e);
    CU_ASSERT(st == GRPC_STATUS_INVALID_ARGUMENT ||
              st == GRPC_STATUS_UNIMPLEMENTED);
    if (st == GRPC_STATUS_INVALID_ARGUMENT)
        CU_ASSERT_PTR_NOT_NULL(strstr(e.details, "uids[1]"));
    CU_ASSERT_FALSE(online[0] || online[1]);
    rpc_client_destroy(&c);
}

/* ------------------------------------------------------------------ main */

static const im_cunit_test s_tests[] = {
    {"send A->B, B drains 5 in pages of 2", test_send_pull},
    {"counts per sender", test_counts},
    {"ack deletes exactly one page, once", test_ack},
    {"group send to 50 receivers", test_group_send},
    {"duplicate send", test_duplicate},
    {"tokens and cursors are bound to their owner", test_isolation},
    {"garbage and over-limit requests", test_garbage},
    {"subscribe and presence report their status", test_stream_api},
    {"SIGTERM, restart, message kept", test_sigterm_restart},
};

int main(void)
{
    setvbuf(stdout, NULL, _IONBF, 0);
    int rc = e2e_setup("test_e2e", s_fixtures,
                       sizeof s_fixtures / sizeof s_fixtures[0]);
    if (rc)
        return rc;
    static const e2e_suite suites[] = {
        {"imbox serve", s_init_serve, s_clean_serve},
        {"imbox shard x3 + gateway", s_init_cluster, s_clean_cluster},
    };
    return e2e_run_suites(suites, 2, s_tests, sizeof s_tests / sizeof s_tests[0]);
}
