/*
 * fuzz_store.c - libFuzzer target of the records storage/st.c reads back
 * from RocksDB: inbox heads ('I'), messages ('M'), the per-sender index
 * ('S'), counters ('C') and dedup entries ('D'), as a disk, a bug of an
 * older version or a hand-edited database could leave them (the on-disk
 * format is documented atop st.c).
 *
 * The input is a list of rows, each
 *   table (1 byte: taken mod 5 of "IMSCD") | rest length (1 byte) | rest |
 *   value length (2 bytes, little-endian, mod 4096) | value
 * written as the key  table | "u" | 0x00 | rest  (inbox "u"), then, with
 * the engine closed, written straight into its RocksDB database beside the
 * format marker, and the engine opened on it. Every read and write of inbox
 * "u" then runs: st_inbox_info, st_read of the inbox and of sender "s"
 * (pages of 3 and of 100), st_counts, an append of two messages, an ack of
 * the first page and st_expire. The engine decodes only through its
 * public API: no test hook.
 * Invariants (besides ASan/UBSan): every call returns a documented code;
 * a page holds at most its limit, its seqs rise strictly above `after`,
 * each sender is a valid uid and each msg_id a valid msg_id; a page that
 * reports `more` is not empty. The database lives in a directory on
 * /dev/shm (fresh per process); each input first deletes every row by one
 * range deletion, which the engine's reads ignore by design (RANGE
 * TOMBSTONES atop st.c): rows of earlier inputs stay visible to them, as
 * in a database damaged by a range deletion above an inbox's floor. That
 * mix found a head whose floor was UINT64_MAX, so that a read started at
 * floor + 1 = 0, below the cursor.
 */
#include <rocksdb/c.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fz.h"
#include "im_base.h"
#include "st.h"

static char s_dir[64];

/* The engine's clock: just after the seeds' messages were sent (FZ_NOW_S),
 * so that they are live, and every run is the same. */
static int64_t s_clock(void *ctx)
{
    (void)ctx;
    return (int64_t)FZ_NOW_S * 1000 + 60000;
}

static bool s_known(int rc)
{
    return rc == ST_OK || rc == ST_EINVAL || rc == ST_ECURSOR || rc == ST_EIO ||
           rc == ST_ECORRUPT || rc == ST_EFULL || rc == ST_ENOMEM;
}

static void s_cleanup(void)
{
    char cmd[96];
    snprintf(cmd, sizeof cmd, "rm -rf %s", s_dir);
    if (system(cmd) != 0)
        fprintf(stderr, "fuzz_store: could not remove %s\n", s_dir);
}

/* Replaces every row of the database by the marker and the input's rows. */
static bool s_write_rows(const uint8_t *data, size_t size)
{
    rocksdb_options_t *o = rocksdb_options_create();
    rocksdb_options_set_create_if_missing(o, 1);
    rocksdb_options_set_info_log_level(o, 5);
    char *err = NULL;
    rocksdb_t *db = rocksdb_open(o, s_dir, &err);
    if (err) {
        fprintf(stderr, "fuzz_store: open %s: %s\n", s_dir, err);
        abort();
    }
    rocksdb_writebatch_t *wb = rocksdb_writebatch_create();
    static const char lo[1] = {0}, hi[2] = {(char)0xff, (char)0xff};
    rocksdb_writebatch_delete_range(wb, lo, 1, hi, 2);
    rocksdb_writebatch_put(wb, "V", 2, "imbox-st-1", 10); /* 'V' 0x00: the marker */
    static const char tables[] = "IMSCD";
    size_t i = 0;
    while (i + 2 <= size) {
        uint8_t key[3 + 255];
        key[0] = (uint8_t)tables[data[i] % 5];
        key[1] = 'u';
        key[2] = 0;
        size_t kl = data[i + 1];
        i += 2;
        if (i + kl + 2 > size)
            break;
        memcpy(key + 3, data + i, kl);
        i += kl;
        size_t vl = (size_t)(data[i] | data[i + 1] << 8) % 4096;
        i += 2;
        if (vl > size - i)
            vl = size - i;
        rocksdb_writebatch_put(wb, (const char *)key, 3 + kl, (const char *)data + i, vl);
        i += vl;
    }
    rocksdb_writeoptions_t *wo = rocksdb_writeoptions_create();
    rocksdb_write(db, wo, wb, &err);
    FZ_CHECK(err == NULL);
    rocksdb_writeoptions_destroy(wo);
    rocksdb_writebatch_destroy(wb);
    rocksdb_close(db);
    rocksdb_options_destroy(o);
    return true;
}

static void s_check_page(const st_page *p, uint64_t after, uint32_t limit)
{
    FZ_CHECK(p->n <= limit);
    FZ_CHECK(!p->more || p->n > 0 || after < p->high);
    uint64_t last = after;
    for (size_t k = 0; k < p->n; k++) {
        const st_msg *m = &p->msgs[k];
        FZ_CHECK(m->seq > last);
        last = m->seq;
        FZ_CHECK(m->sender && im_uid_check(m->sender, "sender", NULL, 0) == 0);
        FZ_CHECK(m->msg_id && strlen(m->msg_id) >= 1 && strlen(m->msg_id) <= IM_MSGID_MAX);
        FZ_CHECK(m->content_len == 0 || m->content != NULL);
    }
}

static void s_read(st_shard *sh, const char *sender, uint64_t after, uint32_t limit)
{
    st_page p;
    st_error err;
    int rc = st_read(sh, "u", sender, after, limit, 0, &p, &err);
    FZ_CHECK(s_known(rc));
    if (rc == ST_OK) {
        s_check_page(&p, after, limit);
        st_page_free(&p);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!s_dir[0]) {
        snprintf(s_dir, sizeof s_dir, "/dev/shm/imbox-fuzz-store-%ld", (long)getpid());
        atexit(s_cleanup);
    }
    s_write_rows(data, size);
    st_options o;
    st_options_init(&o);
    o.sync = false;
    o.block_cache_bytes = 1 << 20;
    o.clock = s_clock;
    st_shard *sh = NULL;
    st_error err;
    int rc = st_open(s_dir, &o, &sh, &err);
    FZ_CHECK(s_known(rc));
    if (rc != ST_OK)
        return 0;
    st_inbox info;
    FZ_CHECK(s_known(st_inbox_info(sh, "u", &info, &err)));
    s_read(sh, NULL, 0, 3);
    s_read(sh, NULL, 0, 100);
    s_read(sh, "s", 0, 100);
    st_count *counts = NULL;
    size_t n = 0;
    uint64_t total = 0;
    rc = st_counts(sh, "u", &counts, &n, &total, &err);
    FZ_CHECK(s_known(rc));
    for (size_t k = 0; rc == ST_OK && k < n; k++)
        FZ_CHECK(counts[k].count > 0);
    free(counts);
    st_put puts[2] = {
        {.receiver = "u", .sender = "s", .msg_id = "fz-1", .content = (const uint8_t *)"x",
         .content_len = 1},
        {.receiver = "u", .sender = "t", .msg_id = "fz-2"},
    };
    FZ_CHECK(s_known(st_append(sh, puts, 2, &err)));
    st_page p;
    if (st_read(sh, "u", NULL, 0, 3, 0, &p, &err) == ST_OK) {
        uint64_t upto = p.n ? p.msgs[p.n - 1].seq : 0;
        st_page_free(&p);
        uint64_t deleted = 0;
        if (upto)
            FZ_CHECK(s_known(st_ack(sh, "u", NULL, upto, &deleted, &err)));
        s_read(sh, NULL, upto, 100);
    }
    uint64_t purged = 0;
    FZ_CHECK(s_known(st_expire(sh, &purged, &err)));
    st_close(&sh);
    return 0;
}
