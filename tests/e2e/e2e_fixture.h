/*
 * e2e_fixture.h - real `imbox` processes on loopback for the C end-to-end
 * tests (test_e2e.c, test_live.c), one fixture per CUnit suite.
 *
 * A fixture is either
 *
 *   serve    one `imbox serve --listen 127.0.0.1:P --data-dir D --shards 4`
 *   cluster  E2E_NSHARDS `imbox shard --index I --count 3 --listen tcp://...`
 *            and `ngateways` (1 when 0) `imbox gateway --listen
 *            127.0.0.1:P --shards tcp://...,...`, all gateways sharing one
 *            data dir (one auth.secret)
 *
 * and addrs[0..naddrs) are its gRPC ports: the serve port, or one per
 * gateway in start order. Tokens come from `imbox token --uid U --ttl 3600
 * --data-dir DIR` (the last line of its stdout), DIR being secret_dir. The
 * binary is $IMBOX_BIN.
 *
 * Hygiene: ports are picked free (bind 127.0.0.1:0, getsockname, close);
 * every fixture lives in a mkdtemp directory (with the processes' logs,
 * shown when a suite fails) that is removed afterwards (set
 * IMBOX_E2E_KEEP=1 to keep it); every process runs in its own process group
 * with PR_SET_PDEATHSIG, and is stopped (SIGTERM, then SIGKILL after a
 * bounded wait) by the suite cleanup, by an atexit handler and by a
 * SIGINT/SIGTERM/SIGHUP handler, so that a failed assertion or an
 * interrupted run leaves nothing running and no directory behind (only a
 * SIGKILL of the test leaves its directories; PDEATHSIG still ends the
 * processes). Readiness is polled (TCP connect for shards,
 * grpc.health.v1 Check for every gRPC port) with a bound, never slept for,
 * and a process that exits early fails the suite at once.
 *
 * IMBOX_TEST_WRAPPER (e.g. "valgrind --error-exitcode=99 ..."), when set,
 * is split at spaces and put in front of every command of IMBOX_BIN (its
 * first word is looked up in PATH); the bounds below are then multiplied
 * by e2e_slow(): IMBOX_TEST_SLOW, 20 by default under a wrapper (a server
 * under valgrind starts about 20 times slower), else 1.
 *
 * Threads: none of this is thread-safe; one test thread.
 */
#ifndef IMBOX_E2E_FIXTURE_H
#define IMBOX_E2E_FIXTURE_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <CUnit/Basic.h>

#include "im_cunit.h"
#include "rpc_client.h"

#define E2E_READY_MS (15000 * e2e_slow()) /* a process must be serving within this */
#define E2E_STOP_MS (10000 * e2e_slow())  /* SIGTERM must end a process within this */
#define E2E_CALL_MS (10000 * e2e_slow())  /* deadline of one call */
#define E2E_TOKEN_MS (10000 * e2e_slow()) /* `imbox token` must finish within this */
#define E2E_NSHARDS 3
#define E2E_MAX_GATEWAYS 2
#define E2E_MAX_PROCS (E2E_NSHARDS + E2E_MAX_GATEWAYS)
#define E2E_MAX_TOKENS 128

typedef struct e2e_proc {
    pid_t pid;          /* 0 when not running */
    char name[32];
    char log[PATH_MAX];
} e2e_proc;

typedef struct e2e_token {
    char uid[80];
    char *token;
} e2e_token;

typedef struct e2e_fixture {
    /* Set by the test file. */
    const char *name;
    bool cluster;
    int ngateways;              /* cluster: gateways (0 means 1) */

    /* Set by e2e_fixture_start. */
    char root[512];             /* mkdtemp; "" when not created */
    char secret_dir[PATH_MAX];  /* data dir holding auth.secret */
    char addrs[E2E_MAX_GATEWAYS][64]; /* gRPC ports: serve, or gateways */
    int naddrs;
    int shard_port[E2E_NSHARDS];
    e2e_proc procs[E2E_MAX_PROCS]; /* cluster: shards first, then gateways */
    int nprocs;
    e2e_token tokens[E2E_MAX_TOKENS];
    int ntokens;
    unsigned failures_at_init;
} e2e_fixture;

/*
 * Reads IMBOX_BIN and IMBOX_E2E_KEEP, drops IMBOX_* from the environment of
 * the processes started (flags only from argv), and installs the atexit and
 * signal handlers that clean up the `n` fixtures (which must outlive the
 * program). `prog` names the test in messages. Returns 0, or 2 with a
 * message on stderr.
 */
int e2e_setup(const char *prog, e2e_fixture *const *fixtures, size_t n);

/*
 * Starts the processes of f; fresh: in a new directory on new ports, else
 * (a restart) on the same ones. Returns only when every gRPC port serves,
 * or false (with a note).
 */
bool e2e_fixture_start(e2e_fixture *f, bool fresh);

/* Kills everything of f (sig, then SIGKILL after wait_ms) and removes its
 * directory. Idempotent. */
void e2e_fixture_teardown(e2e_fixture *f, int sig, int wait_ms);

/* CUnit suite init / cleanup bodies: start f fresh (0, or -1 after dumping
 * the logs and tearing down); stop it with SIGTERM, dumping the logs when a
 * test of the suite failed. */
int e2e_suite_init(e2e_fixture *f);
int e2e_suite_cleanup(e2e_fixture *f);

/* One CUnit suite: its name and the init/cleanup that start and stop its
 * fixture (calling e2e_suite_init / e2e_suite_cleanup). */
typedef struct e2e_suite {
    const char *name;
    CU_InitializeFunc init;
    CU_CleanupFunc clean;
} e2e_suite;

/* Registers every one of tests[0..ntests) in each of suites[0..nsuites),
 * runs them (im_cunit_run) and returns the exit code: the same tests
 * against each deployment. */
int e2e_run_suites(const e2e_suite *suites, size_t nsuites, const im_cunit_test *tests,
                   size_t ntests);

/* Prints the last lines of every log of f to stderr. */
void e2e_dump_logs(const e2e_fixture *f);

/*
 * Runs `imbox token --uid uid --ttl 3600 --data-dir dir`; returns its last
 * non-empty stdout line (malloc'ed) or NULL (with a note).
 */
char *e2e_make_token(const char *uid, const char *dir);

/* The token of uid on f (cached per fixture, owned by it), or NULL. */
const char *e2e_token_of(e2e_fixture *f, const char *uid);

/* A client of addrs[i] of f acting as uid (CUnit fatal assertion when it
 * cannot be made). rpc_client_destroy it. */
rpc_client *e2e_client(e2e_fixture *f, int i, const char *uid);

/* Stops p: sig, waits up to wait_ms, then SIGKILL. True when it exited
 * within the wait; *status (may be NULL) gets its wait status. */
bool e2e_stop(e2e_proc *p, int sig, int wait_ms, int *status);

/* "exit status N" / "killed by signal N" */
void e2e_describe_status(int st, char *buf, size_t cap);

int64_t e2e_mono_ms(void);

/* The factor of the bounds above (see IMBOX_TEST_WRAPPER at the top). */
int e2e_slow(void);
int64_t e2e_wall_ms(void);
void e2e_sleep_ms(int ms);

/* A note on stderr, on a line of its own under the running test. */
void e2e_note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Asserts (fatally) that a call returned OK, printing the status if not. */
#define EXPECT_OK(call, e)                                                  \
    do {                                                                    \
        grpc_status_code st_ = (call);                                      \
        if (st_ != GRPC_STATUS_OK)                                          \
            e2e_note("%s:%d: %s: %s", __FILE__, __LINE__,                   \
                     rpc_code_name(st_), (e).details);                      \
        CU_ASSERT_EQUAL_FATAL(st_, GRPC_STATUS_OK);                         \
    } while (0)

/* Asserts that a call returned `code`, printing the status if not. */
#define EXPECT_CODE(call, code, e)                                          \
    do {                                                                    \
        grpc_status_code st_ = (call);                                      \
        if (st_ != (code))                                                  \
            e2e_note("%s:%d: expected %s, got %s: %s", __FILE__, __LINE__,  \
                     rpc_code_name(code), rpc_code_name(st_), (e).details); \
        CU_ASSERT_EQUAL(st_, (code));                                       \
    } while (0)

#endif
