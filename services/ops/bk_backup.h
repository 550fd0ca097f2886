/*
 * bk_backup.h - backups of a data directory: their format, making one from
 * open engines (the live process's, or a stopped server's opened here), and
 * restoring one into an empty data directory.
 *
 * A backup is a new directory, mode 0700, written once:
 *
 *   TO/shard-I/        (serve) a RocksDB checkpoint of shard I, I = 0..S-1
 *   TO/shard/          (shard) the checkpoint of the shard's one database
 *   TO/auth.secret     (serve) the data dir's secret, mode 0600: tokens and
 *                      cursors handed out before the backup stay valid
 *   TO/imbox-backup    the manifest, mode 0600, written last (a directory
 *                      without it is an unfinished backup: restore refuses
 *                      it). Text, one "key value" a line:
 *                        imbox-backup 1      format marker and version
 *                        kind serve|shard
 *                        shards S            (serve) the shard count
 *                        index I             (shard, made by the running
 *                        count S              shard: which one it is)
 *                        created_ms T        wall clock when it began
 *
 * Each checkpoint holds every message acknowledged before its shard's
 * checkpoint began (st_checkpoint), so every message acknowledged before
 * the backup began; the shards are checkpointed one after another, not at
 * one instant (each receiver's inbox lives on one shard, so nothing needs
 * that). On the file system of the data the SST files are hard links:
 * such a backup costs little room and time, and is no copy for a lost
 * disk: copy it elsewhere (any tool: it is plain files).
 *
 * Before a backup is complete, its files and directories are fsync'ed, then
 * the manifest is written to a temporary name, fsync'ed, renamed and the
 * directory fsync'ed. A backup that fails removes what it wrote.
 *
 * A restore copies a complete backup (plain copies, never links) into a
 * data directory that is missing or empty, fsyncs every file and directory
 * it wrote, and refuses a backup of the other kind than the one asked
 * (serve or shard), a manifest it does not know, and a non-empty target
 * (nothing is written then). A restore that fails removes what it wrote.
 *
 * Errors: functions return 0, or -1 with one line in err[0..errlen) naming
 * the path and the cause. Threads: no shared state; the engines given to
 * bk_make() may be serving meanwhile.
 */
#ifndef IMBOX_BK_BACKUP_H
#define IMBOX_BK_BACKUP_H

#include <stddef.h>
#include <stdint.h>

#include "st.h"

typedef enum bk_kind {
    BK_SERVE = 1, /* `imbox serve`'s data dir: shard-0..S-1 and auth.secret */
    BK_SHARD = 2, /* `imbox shard`'s data dir: one database */
} bk_kind;

#define BK_MANIFEST "imbox-backup"
#define BK_FORMAT "imbox-backup 1"
#define BK_MAX_SHARDS 64 /* `imbox serve --shards` at most */

/* What a backup or a restore did, for its report. */
typedef struct bk_result {
    bk_kind kind;
    int shards;        /* databases */
    int index, count;  /* shard kind, when known; else -1 */
    uint64_t files;    /* regular files in the backup or restored */
    uint64_t bytes;    /* their sizes (hard links counted in full) */
    double seconds;    /* wall time */
} bk_result;

/* "serve" or "shard"; NULL for anything else. */
const char *bk_kind_name(bk_kind kind);

/* The kind named by s ("serve" or "shard"); 0 for anything else. */
bk_kind bk_kind_parse(const char *s);

/*
 * Writes a backup of the `n` open engines `shards` (shard I's at index I;
 * n == 1 for BK_SHARD) into the new directory `to` (an absolute path whose
 * parent exists; refused if it exists). BK_SERVE copies the secret file at
 * secret_path too; index and count (-1 when unknown) go to a BK_SHARD
 * manifest. *out (may be NULL) gets the report.
 */
int bk_make(st_shard *const *shards, int n, bk_kind kind, int index, int count,
            const char *secret_path, const char *to, bk_result *out, char *err,
            size_t errlen);

/*
 * The backup of a stopped server's data directory: finds its kind (a
 * database in data_dir itself: shard; data_dir/shard-0/ and the following
 * ones: serve), opens its databases (refused, naming the directory, when
 * another process holds one: a server that is running), runs bk_make() and
 * closes them. Opening replays their logs, as a restart does.
 */
int bk_offline(const char *data_dir, const char *to, bk_result *out, char *err, size_t errlen);

/*
 * Restores the backup at `from` into data_dir (created, mode 0700, when
 * missing; refused when not an empty directory) for a server of `kind`
 * (0: the kind the backup's manifest says; else it must say that one).
 */
int bk_restore(const char *from, const char *data_dir, bk_kind kind, bk_result *out, char *err,
               size_t errlen);

#endif
