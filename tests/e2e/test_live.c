/*
 * test_live.c - end-to-end tests of live delivery: Subscribe streams,
 * Presence and Receipt.online, through rpc_client.h against real `imbox`
 * processes (e2e_fixture.h), CUnit basic interface.
 *
 * Two fixtures run the same test functions (F is the running suite's):
 *
 *   serve    one `imbox serve`
 *   cluster  three `imbox shard` and two `imbox gateway`: streams are
 *            opened on the second gateway (S_SUB), messages sent on the
 *            first (S_SND), so that every delivery and every presence
 *            answer crosses gateways. With `serve` both are the one port.
 *
 * The contract under test (proto/imbox/v1/imbox.proto, docs/PROTOCOL.md):
 * a stream first delivers the stored messages after its cursor, then new
 * ones live, in order, never skipping or repeating one; each Delivery's
 * cursor acks up to it; a bad cursor (malformed, forged, another user's,
 * conversation-scoped, beyond the inbox) is INVALID_ARGUMENT and deletes
 * nothing; a uid is online while one of its streams is open and offline
 * within 1 s after the last ended; Receipt.online says whether the receiver
 * had a stream when the message was committed; every stream of a uid gets
 * every message; the call's deadline ends a stream with DEADLINE_EXCEEDED.
 *
 * Waits are bounded polls, never sleeps for a server: a Delivery must come
 * within S_DELIVERY_MS, presence must turn on within S_ONLINE_MS of a
 * stream's start (the contract names no bound: this one is generous) and
 * off within S_OFFLINE_MS of its end (the contract's bound).
 *
 * Every test releases its streams and clients on every path (assertions
 * here are non-fatal, then `goto done`), so that a failing run is still
 * clean under ASan; against a server without live delivery (Subscribe and
 * Presence UNIMPLEMENTED) every test fails at its first stream or presence
 * call, quickly.
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <CUnit/Basic.h>

#include "e2e_fixture.h"
#include "im_auth.h"
#include "im_cunit.h"

#include "rpc_client.h"

#define S_DELIVERY_MS 5000 /* a Delivery must arrive within this */
#define S_ONLINE_MS 5000   /* presence must say online within this */
#define S_OFFLINE_MS 1000  /* ...and offline within this after the end */
#define S_QUIET_MS 300     /* "nothing more comes": no Delivery in this */
#define S_POLL_MS 20       /* presence poll interval */

static e2e_fixture s_serve = {.name = "serve", .cluster = false};
static e2e_fixture s_cluster = {.name = "cluster", .cluster = true,
                                .ngateways = 2};
static e2e_fixture *const s_fixtures[] = {&s_serve, &s_cluster};
static e2e_fixture *F;

#define S_SND 0               /* the gateway messages are sent on */
#define S_SUB (F->naddrs - 1) /* the gateway streams are opened on */

static int s_init_serve(void) { return e2e_suite_init(F = &s_serve); }
static int s_clean_serve(void) { return e2e_suite_cleanup(&s_serve); }
static int s_init_cluster(void) { return e2e_suite_init(F = &s_cluster); }
static int s_clean_cluster(void) { return e2e_suite_cleanup(&s_cluster); }

/* ------------------------------------------------------------- helpers */

/*
 * Sends one message (content = its msg_id, type 7) from c to `to`; true
 * when it was stored (not a duplicate). *online and *t (may be NULL) get
 * the receipt's online flag and send time.
 */
static bool s_send(rpc_client *c, const char *to, const char *id,
                   bool *online, int64_t *t)
{
    rpc_send_result r;
    rpc_error e;
    const char *rcv[] = {to};
    grpc_status_code st = rpc_send(c, id, rcv, 1, 7, id, strlen(id),
                                   E2E_CALL_MS, &r, &e);
    if (st != GRPC_STATUS_OK) {
        e2e_note("send %s: %s: %s", id, rpc_code_name(st), e.details);
        CU_FAIL("send failed");
        return false;
    }
    bool ok = r.n == 1 && r.receipts[0].code == 0 && !r.receipts[0].duplicate;
    if (!ok)
        e2e_note("send %s: receipt %s: %s", id,
                 rpc_code_name(r.n ? r.receipts[0].code : -1),
                 r.n ? r.receipts[0].error : "none");
    CU_ASSERT(ok);
    if (online)
        *online = ok && r.receipts[0].online;
    if (t)
        *t = ok ? r.receipts[0].send_time_ms : 0;
    rpc_send_result_free(&r);
    return ok;
}

/* The next Delivery of s within S_DELIVERY_MS into *d; false (with a note
 * saying how the stream ended, or that it stayed silent) otherwise. */
static bool s_next(rpc_stream *s, rpc_delivery *d, const char *what)
{
    int64_t end = e2e_mono_ms() + S_DELIVERY_MS;
    for (;;) {
        rpc_error e;
        int64_t left = end - e2e_mono_ms();
        rpc_stream_event ev =
            rpc_stream_next(s, left > 0 ? (int)left : 0, d, &e);
        if (ev == RPC_STREAM_DELIVERY)
            return true;
        if (ev == RPC_STREAM_ENDED) {
            e2e_note("%s: the stream ended: %s: %s", what,
                     rpc_code_name(e.code), e.details);
            return false;
        }
        if (left <= 0) {
            e2e_note("%s: no Delivery within %d ms", what, S_DELIVERY_MS);
            return false;
        }
    }
}

/*
 * The next Delivery of s must be message `id` from `sender` to `receiver`
 * (content = id, type 7, and time `t` when t != 0); *d keeps it (free it).
 * False when it did not come or is another one.
 */
static bool s_expect(rpc_stream *s, const char *id, const char *sender,
                     const char *receiver, int64_t t, rpc_delivery *d)
{
    if (!s_next(s, d, id)) {
        CU_FAIL("expected Delivery did not come");
        return false;
    }
    const rpc_msg *m = &d->msg;
    bool ok = strcmp(m->msg_id, id) == 0 &&
              strcmp(m->sender_uid, sender) == 0 &&
              strcmp(m->receiver_uid, receiver) == 0 && m->msg_type == 7 &&
              m->content_len == strlen(id) &&
              memcmp(m->content, id, m->content_len) == 0 &&
              (t == 0 || m->send_time_ms == t) && d->cursor[0] != '\0';
    if (!ok)
        e2e_note("expected %s from %s to %s, got %s from %s to %s "
                 "(type %d, %zu bytes, time %" PRId64 ", cursor '%s')",
                 id, sender, receiver, m->msg_id, m->sender_uid,
                 m->receiver_uid, (int)m->msg_type, m->content_len,
                 m->send_time_ms, d->cursor);
    CU_ASSERT(ok);
    return ok;
}

/* Nothing more within S_QUIET_MS (no repeat, nothing extra). */
static bool s_quiet(rpc_stream *s, const char *what)
{
    rpc_delivery d;
    rpc_error e;
    rpc_stream_event ev = rpc_stream_next(s, S_QUIET_MS, &d, &e);
    if (ev == RPC_STREAM_DELIVERY)
        e2e_note("%s: unexpected Delivery %s", what, d.msg.msg_id);
    else if (ev == RPC_STREAM_ENDED)
        e2e_note("%s: the stream ended: %s: %s", what,
                 rpc_code_name(e.code), e.details);
    rpc_delivery_free(&d);
    CU_ASSERT_EQUAL(ev, RPC_STREAM_IDLE);
    return ev == RPC_STREAM_IDLE;
}

/* Waits up to within_ms for the end of s; its final status, or OK (with a
 * note) when it did not end in time. */
static grpc_status_code s_end(rpc_stream *s, int within_ms, rpc_error *e)
{
    int64_t end = e2e_mono_ms() + within_ms;
    for (;;) {
        rpc_delivery d;
        int64_t left = end - e2e_mono_ms();
        rpc_stream_event ev =
            rpc_stream_next(s, left > 0 ? (int)left : 0, &d, e);
        if (ev == RPC_STREAM_ENDED)
            return (grpc_status_code)e->code;
        if (ev == RPC_STREAM_DELIVERY) {
            e2e_note("unexpected Delivery %s before the end", d.msg.msg_id);
            CU_FAIL("unexpected Delivery");
            rpc_delivery_free(&d);
        }
        if (left <= 0) {
            e2e_note("the stream did not end within %d ms", within_ms);
            return GRPC_STATUS_OK;
        }
    }
}

/*
 * Polls Presence(uid) through c until it answers `want`. For want = true
 * the bound is S_ONLINE_MS from now; for false, S_OFFLINE_MS from `since`
 * (the moment the stream ended): an answer counts when its call started
 * within the bound. False (with a note) on a failed call or a timeout.
 */
static bool s_wait_presence(rpc_client *c, const char *uid, bool want,
                            int64_t since)
{
    int64_t end = want ? e2e_mono_ms() + S_ONLINE_MS : since + S_OFFLINE_MS;
    for (;;) {
        int64_t started = e2e_mono_ms();
        bool online = !want;
        rpc_error e;
        const char *uids[] = {uid};
        grpc_status_code st =
            rpc_presence(c, uids, 1, E2E_CALL_MS, &online, &e);
        if (st != GRPC_STATUS_OK) {
            e2e_note("presence %s: %s: %s", uid, rpc_code_name(st),
                     e.details);
            CU_FAIL("presence failed");
            return false;
        }
        if (online == want)
            return true;
        if (started >= end) {
            e2e_note("presence %s: still %s %" PRId64 " ms after %s", uid,
                     online ? "online" : "offline",
                     started - (want ? end - S_ONLINE_MS : since),
                     want ? "the stream started" : "the stream ended");
            CU_FAIL("presence did not follow the stream");
            return false;
        }
        e2e_sleep_ms(S_POLL_MS);
    }
}

static rpc_stream *s_subscribe(rpc_client *c, const char *cursor,
                               int timeout_ms)
{
    rpc_error e;
    rpc_stream *s = rpc_subscribe(c, cursor, timeout_ms, &e);
    if (!s)
        e2e_note("subscribe: %s: %s", rpc_code_name(e.code), e.details);
    CU_ASSERT_PTR_NOT_NULL(s);
    return s;
}

static uint64_t s_total(rpc_client *c)
{
    rpc_counts_result r;
    rpc_error e;
    if (rpc_counts(c, E2E_CALL_MS, &r, &e) != GRPC_STATUS_OK) {
        e2e_note("counts: %s: %s", rpc_code_name(e.code), e.details);
        CU_FAIL("counts failed");
        return UINT64_MAX;
    }
    uint64_t t = r.total;
    rpc_counts_result_free(&r);
    return t;
}

/* -------------------------------------------------------------- the tests */

/*
 * (a) A sends 3 to B (B offline: receipts say so); B subscribes from "" and
 * gets the 3; once B is online, A sends 2 more: both receipts say online,
 * and B gets them, in order, and nothing else.
 */
static void test_backlog_then_live(void)
{
    const char *A = "lv-a-alice", *B = "lv-a-bob";
    rpc_client *ca = e2e_client(F, S_SND, A);
    rpc_client *cb = e2e_client(F, S_SUB, B);
    rpc_stream *s = NULL;
    rpc_delivery d[5];
    memset(d, 0, sizeof d);
    int64_t t[5];
    char id[5][16];
    for (int i = 0; i < 5; i++)
        snprintf(id[i], sizeof id[i], "lv-a-%d", i);

    for (int i = 0; i < 3; i++) {
        bool online = true;
        if (!s_send(ca, B, id[i], &online, &t[i]))
            goto done;
        CU_ASSERT_FALSE(online);
    }
    if (!(s = s_subscribe(cb, "", 0)))
        goto done;
    for (int i = 0; i < 3; i++)
        if (!s_expect(s, id[i], A, B, t[i], &d[i]))
            goto done;
    if (!s_wait_presence(ca, B, true, 0))
        goto done;
    for (int i = 3; i < 5; i++) {
        bool online = false;
        if (!s_send(ca, B, id[i], &online, &t[i]))
            goto done;
        CU_ASSERT_TRUE(online);
    }
    for (int i = 3; i < 5; i++)
        if (!s_expect(s, id[i], A, B, t[i], &d[i]))
            goto done;
    s_quiet(s, "after 5");
    for (int i = 1; i < 5; i++)
        CU_ASSERT(strcmp(d[i].cursor, d[i - 1].cursor) != 0);
done:
    for (int i = 0; i < 5; i++)
        rpc_delivery_free(&d[i]);
    rpc_stream_close(&s);
    rpc_client_destroy(&ca);
    rpc_client_destroy(&cb);
}

/*
 * (b) Ack with a Delivery's cursor deletes up to and including it: Pull
 * then returns nothing, Counts is 0; the cursor also starts a later
 * Subscribe, which then has no backlog.
 */
static void test_ack_delivery_cursor(void)
{
    const char *A = "lv-b-alice", *B = "lv-b-bob";
    rpc_client *ca = e2e_client(F, S_SND, A);
    rpc_client *cb = e2e_client(F, S_SUB, B);
    rpc_client *cb1 = e2e_client(F, S_SND, B);
    rpc_stream *s = NULL;
    rpc_delivery d1 = {0}, d2 = {0};
    rpc_error e;
    if (!s_send(ca, B, "lv-b-0", NULL, NULL) ||
        !s_send(ca, B, "lv-b-1", NULL, NULL))
        goto done;
    if (!(s = s_subscribe(cb, "", 0)) ||
        !s_expect(s, "lv-b-0", A, B, 0, &d1) ||
        !s_expect(s, "lv-b-1", A, B, 0, &d2))
        goto done;
    rpc_stream_close(&s);

    uint64_t deleted = 99;
    EXPECT_CODE(rpc_ack(cb1, d2.cursor, E2E_CALL_MS, &deleted, &e),
                GRPC_STATUS_OK, e);
    CU_ASSERT_EQUAL(deleted, 2);
    rpc_page pg;
    EXPECT_CODE(rpc_pull(cb1, "", 0, NULL, E2E_CALL_MS, &pg, &e),
                GRPC_STATUS_OK, e);
    CU_ASSERT_EQUAL(pg.n, 0);
    rpc_page_free(&pg);
    CU_ASSERT_EQUAL(s_total(cb1), 0);

    /* The acked cursor again, to Subscribe: no backlog, then live. */
    if (!(s = s_subscribe(cb, d2.cursor, 0)) || !s_quiet(s, "resubscribe"))
        goto done;
    rpc_delivery_free(&d1);
    if (!s_send(ca, B, "lv-b-2", NULL, NULL) ||
        !s_expect(s, "lv-b-2", A, B, 0, &d1))
        goto done;
    EXPECT_CODE(rpc_ack(cb1, d1.cursor, E2E_CALL_MS, &deleted, &e),
                GRPC_STATUS_OK, e);
    CU_ASSERT_EQUAL(deleted, 1);
    CU_ASSERT_EQUAL(s_total(cb1), 0);
done:
    rpc_delivery_free(&d1);
    rpc_delivery_free(&d2);
    rpc_stream_close(&s);
    rpc_client_destroy(&ca);
    rpc_client_destroy(&cb);
    rpc_client_destroy(&cb1);
}

/*
 * (c) Subscribe with a cursor that is malformed, tampered with, another
 * user's, conversation-scoped, or validly signed but beyond anything the
 * inbox stored: INVALID_ARGUMENT, and nothing is deleted.
 */
static void test_bad_cursor(void)
{
    const char *A = "lv-c-alice", *B = "lv-c-bob";
    rpc_client *ca = e2e_client(F, S_SND, A);
    rpc_client *cb = e2e_client(F, S_SUB, B);
    rpc_error e;
    rpc_page pg;
    char own[RPC_CURSOR_CAP] = "", tampered[RPC_CURSOR_CAP] = "",
         foreign[RPC_CURSOR_CAP] = "", scoped[RPC_CURSOR_CAP] = "",
         future[IM_CURSOR_MAX] = "";
    if (!s_send(ca, B, "lv-c-0", NULL, NULL) ||
        !s_send(ca, B, "lv-c-1", NULL, NULL))
        goto done;

    /* Pull never deletes what it returns: these cost nothing. */
    EXPECT_CODE(rpc_pull(cb, "", 1, NULL, E2E_CALL_MS, &pg, &e),
                GRPC_STATUS_OK, e);
    snprintf(own, sizeof own, "%s", pg.cursor);
    rpc_page_free(&pg);
    EXPECT_CODE(rpc_pull(cb, "", 1, A, E2E_CALL_MS, &pg, &e),
                GRPC_STATUS_OK, e);
    snprintf(scoped, sizeof scoped, "%s", pg.cursor);
    rpc_page_free(&pg);
    EXPECT_CODE(rpc_pull(ca, "", 1, NULL, E2E_CALL_MS, &pg, &e),
                GRPC_STATUS_OK, e);
    snprintf(foreign, sizeof foreign, "%s", pg.cursor);
    rpc_page_free(&pg);
    CU_ASSERT(own[0] && scoped[0] && foreign[0]);
    if (strlen(own) > 8) {
        snprintf(tampered, sizeof tampered, "%s", own);
        tampered[8] = tampered[8] == 'A' ? 'B' : 'A';
    }
    im_secret secret;
    char why[256] = "im_cursor_make failed";
    if (im_secret_load_or_create(F->secret_dir, &secret, why, sizeof why) ||
        im_cursor_make(&secret, B, NULL, UINT64_C(1) << 40, future,
                       sizeof future)) {
        e2e_note("cannot forge a future cursor: %s", why);
        CU_FAIL("forge");
    }

    const struct {
        const char *name, *cursor;
    } bad[] = {
        {"malformed", "not-a-cursor"}, {"tampered", tampered},
        {"foreign", foreign},          {"conversation", scoped},
        {"future", future},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (!bad[i].cursor[0])
            continue;
        rpc_stream *s = s_subscribe(cb, bad[i].cursor, 0);
        if (!s)
            continue;
        grpc_status_code st = s_end(s, S_DELIVERY_MS, &e);
        if (st != GRPC_STATUS_INVALID_ARGUMENT)
            e2e_note("%s cursor: %s: %s", bad[i].name, rpc_code_name(st),
                     e.details);
        CU_ASSERT_EQUAL(st, GRPC_STATUS_INVALID_ARGUMENT);
        rpc_stream_close(&s);
    }
    CU_ASSERT_EQUAL(s_total(cb), 2);
done:
    rpc_client_destroy(&ca);
    rpc_client_destroy(&cb);
}

/*
 * (d) Presence (asked by another user, on the other gateway): false, true
 * while B's stream is open (in request order, repeated uids too), false
 * within S_OFFLINE_MS after rpc_stream_cancel ended it.
 */
static void test_presence_follows_stream(void)
{
    const char *A = "lv-d-alice", *B = "lv-d-bob";
    rpc_client *ca = e2e_client(F, S_SND, A);
    rpc_client *cb = e2e_client(F, S_SUB, B);
    rpc_stream *s = NULL;
    rpc_error e;
    bool on[3] = {true, true, true};
    const char *uids[] = {A, B, B};
    EXPECT_CODE(rpc_presence(ca, uids + 1, 1, E2E_CALL_MS, on, &e),
                GRPC_STATUS_OK, e);
    CU_ASSERT_FALSE(on[0]);

    if (!(s = s_subscribe(cb, "", 0)) || !s_wait_presence(ca, B, true, 0))
        goto done;
    memset(on, 0, sizeof on);
    EXPECT_CODE(rpc_presence(ca, uids, 3, E2E_CALL_MS, on, &e),
                GRPC_STATUS_OK, e);
    CU_ASSERT(!on[0] && on[1] && on[2]);

    rpc_stream_cancel(s);
    grpc_status_code st = s_end(s, S_DELIVERY_MS, &e);
    int64_t ended = e2e_mono_ms();
    CU_ASSERT_EQUAL(st, GRPC_STATUS_CANCELLED);
    rpc_stream_close(&s);
    s_wait_presence(ca, B, false, ended);
done:
    rpc_stream_close(&s);
    rpc_client_destroy(&ca);
    rpc_client_destroy(&cb);
}

/* Presence arguments: 1000 uids are fine, 1001 or an invalid one (named
 * by its index) are INVALID_ARGUMENT. */
static void test_presence_arguments(void)
{
    enum { N = 1001 };
    rpc_client *c = e2e_client(F, S_SND, "lv-p-paul");
    static char names[N][16];
    static const char *uids[N];
    static bool on[N];
    rpc_error e;
    for (int i = 0; i < N; i++) {
        snprintf(names[i], sizeof names[i], "lv-p-%d", i);
        uids[i] = names[i];
    }
    EXPECT_CODE(rpc_presence(c, uids, 1000, E2E_CALL_MS, on, &e),
                GRPC_STATUS_OK, e);
    bool any = false;
    for (int i = 0; i < 1000; i++)
        any |= on[i];
    CU_ASSERT_FALSE(any);
    EXPECT_CODE(rpc_presence(c, uids, N, E2E_CALL_MS, on, &e),
                GRPC_STATUS_INVALID_ARGUMENT, e);
    const char *bad[] = {"lv-p-ok", ""};
    EXPECT_CODE(rpc_presence(c, bad, 2, E2E_CALL_MS, on, &e),
                GRPC_STATUS_INVALID_ARGUMENT, e);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.details, "uids[1]"));
    rpc_client_destroy(&c);
}

/*
 * (e) Two streams of B (phone on the subscribe gateway, desktop on the
 * other one) both receive a message sent while B is online; an Ack with
 * one stream's cursor deletes it for both.
 */
static void test_two_streams(void)
{
    const char *A = "lv-e-alice", *B = "lv-e-bob";
    rpc_client *ca = e2e_client(F, S_SND, A);
    rpc_client *phone = e2e_client(F, S_SUB, B);
    rpc_client *desk = e2e_client(F, S_SND, B);
    rpc_stream *s1 = NULL, *s2 = NULL;
    rpc_delivery d1 = {0}, d2 = {0};
    rpc_error e;
    bool online = false;
    if (!(s1 = s_subscribe(phone, "", 0)) ||
        !(s2 = s_subscribe(desk, "", 0)) || !s_wait_presence(ca, B, true, 0))
        goto done;
    if (!s_send(ca, B, "lv-e-0", &online, NULL))
        goto done;
    CU_ASSERT_TRUE(online);
    if (!s_expect(s1, "lv-e-0", A, B, 0, &d1) ||
        !s_expect(s2, "lv-e-0", A, B, 0, &d2))
        goto done;
    uint64_t deleted = 0;
    EXPECT_CODE(rpc_ack(desk, d2.cursor, E2E_CALL_MS, &deleted, &e),
                GRPC_STATUS_OK, e);
    CU_ASSERT_EQUAL(deleted, 1);
    CU_ASSERT_EQUAL(s_total(phone), 0);
    s_quiet(s1, "phone");
    s_quiet(s2, "desktop");
done:
    rpc_delivery_free(&d1);
    rpc_delivery_free(&d2);
    rpc_stream_close(&s1);
    rpc_stream_close(&s2);
    rpc_client_destroy(&ca);
    rpc_client_destroy(&phone);
    rpc_client_destroy(&desk);
}

/*
 * (f) A stream with an 800 ms deadline delivers the backlog, then ends with
 * DEADLINE_EXCEEDED, not before the deadline and not long after; B is then
 * offline within S_OFFLINE_MS.
 */
static void test_stream_deadline(void)
{
    const char *A = "lv-f-alice", *B = "lv-f-bob";
    enum { DEADLINE_MS = 800 };
    rpc_client *ca = e2e_client(F, S_SND, A);
    rpc_client *cb = e2e_client(F, S_SUB, B);
    rpc_stream *s = NULL;
    rpc_delivery d = {0};
    rpc_error e;
    if (!s_send(ca, B, "lv-f-0", NULL, NULL))
        goto done;
    int64_t t0 = e2e_mono_ms();
    if (!(s = s_subscribe(cb, "", DEADLINE_MS)) ||
        !s_expect(s, "lv-f-0", A, B, 0, &d))
        goto done;
    grpc_status_code st = s_end(s, DEADLINE_MS + S_DELIVERY_MS, &e);
    int64_t ended = e2e_mono_ms();
    if (st != GRPC_STATUS_DEADLINE_EXCEEDED)
        e2e_note("deadline: %s: %s", rpc_code_name(st), e.details);
    CU_ASSERT_EQUAL(st, GRPC_STATUS_DEADLINE_EXCEEDED);
    CU_ASSERT(ended - t0 >= DEADLINE_MS - 50);
    CU_ASSERT(ended - t0 < DEADLINE_MS + 3000);
    rpc_stream_close(&s);
    s_wait_presence(ca, B, false, ended);
done:
    rpc_delivery_free(&d);
    rpc_stream_close(&s);
    rpc_client_destroy(&ca);
    rpc_client_destroy(&cb);
}

/* ------------------------------------------------------------------ main */

static const im_cunit_test s_tests[] = {
    {"(a) backlog, then live; receipts say online", test_backlog_then_live},
    {"(b) ack with a delivery cursor", test_ack_delivery_cursor},
    {"(c) bad cursors are INVALID_ARGUMENT", test_bad_cursor},
    {"(d) presence follows the stream", test_presence_follows_stream},
    {"presence arguments", test_presence_arguments},
    {"(e) two streams of one uid both deliver", test_two_streams},
    {"(f) stream deadline", test_stream_deadline},
};

int main(void)
{
    setvbuf(stdout, NULL, _IONBF, 0);
    int rc = e2e_setup("test_live", s_fixtures,
                       sizeof s_fixtures / sizeof s_fixtures[0]);
    if (rc)
        return rc;
    static const e2e_suite suites[] = {
        {"imbox serve", s_init_serve, s_clean_serve},
        {"imbox shard x3 + gateway x2", s_init_cluster, s_clean_cluster},
    };
    return e2e_run_suites(suites, 2, s_tests, sizeof s_tests / sizeof s_tests[0]);
}
