/*
 * bk_admin.h - the admin socket of a process that owns shard databases
 * (`imbox serve`, `imbox shard`), and its client (`imbox backup`).
 *
 * RocksDB lets one process open a database, and a checkpoint needs the
 * open handle: so the running server makes its own backups, on request.
 * It listens on the Unix socket DATA_DIR/admin.sock, mode 0600 (created
 * under a temporary name, chmod'ed, then renamed into place, so it is
 * never reachable with another mode), and also admits only peers of its
 * own user or root (SO_PEERCRED). A stale admin.sock (a process killed
 * with SIGKILL) is replaced at start: the process holds its databases'
 * locks by then, so no other server can be listening on it; a file of
 * that name that is not a socket is refused. The socket is removed at
 * stop. Paths of any length work (the address goes through
 * /proc/self/fd/N/, the data dir's descriptor).
 *
 * Protocol: one request a connection, one line each way.
 *   request  "checkpoint DIR\n"    DIR absolute, must not exist
 *   answer   "OK kind=K shards=S files=F bytes=B seconds=T\n"
 *            "ERR message\n"
 * A request longer than BK_ADMIN_LINE_MAX, or not complete within
 * BK_ADMIN_IO_MS, is answered ERR and dropped. Requests are served one at
 * a time, on one thread of the server that sleeps in poll(2) otherwise.
 */
#ifndef IMBOX_BK_ADMIN_H
#define IMBOX_BK_ADMIN_H

#include <stddef.h>

#include "bk_backup.h"
#include "st.h"

#define BK_ADMIN_SOCK "admin.sock"
#define BK_ADMIN_LINE_MAX 4200 /* bytes of a request: a path of ST_DIR_MAX and more */
#define BK_ADMIN_IO_MS 5000    /* a client has this long to send its request */

typedef struct bk_admin_config {
    const char *data_dir;     /* where admin.sock goes */
    bk_kind kind;             /* what a backup of this process is */
    st_shard *const *shards;  /* the open engines, shard I at index I; kept
                                 open by the caller until bk_admin_stop() */
    int nshards;
    int index, count;         /* BK_SHARD: which shard of how many */
    const char *secret_path;  /* BK_SERVE: the secret file to back up */
} bk_admin_config;

typedef struct bk_admin bk_admin;

/* Binds DATA_DIR/admin.sock and starts the thread. The config is copied
 * (the strings too). NULL on failure, with a line in err. */
bk_admin *bk_admin_start(const bk_admin_config *c, char *err, size_t errlen);

/* Stops the thread (a backup in progress finishes first), removes the
 * socket, frees *a and sets it to NULL. NULL or *a == NULL is a no-op. */
void bk_admin_stop(bk_admin **a);

#define BK_ADMIN_NOBODY 1 /* bk_admin_call: no server listens */

/*
 * Sends one request line (without its newline) to DATA_DIR/admin.sock and
 * waits for the answer (however long the backup takes). Returns 0 with the
 * answer's line (without newline) in reply; BK_ADMIN_NOBODY when there is
 * no socket or nothing listens on it (the server is stopped); -1 with a
 * line in err otherwise.
 */
int bk_admin_call(const char *data_dir, const char *request, char *reply, size_t replylen,
                  char *err, size_t errlen);

#endif
