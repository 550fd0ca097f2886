/* sh_metrics.c - the shards' figures for the metrics endpoint; see
 * sh_metrics.h. */
#include "sh_metrics.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

#include "st.h"

typedef struct s_shard {
    int index;
    st_stats st;
    st_shard *engine;
} s_shard;

static void s_counter(im_mtext *t, const s_shard *v, int n, const char *name, const char *help,
                      size_t off)
{
    im_mtext_head(t, name, "counter", help);
    for (int i = 0; i < n; i++)
        im_mtext_printf(t, "%s{shard=\"%d\"} %llu\n", name, v[i].index,
                        (unsigned long long)*(const uint64_t *)((const char *)&v[i].st + off));
}

static void s_property(im_mtext *t, const s_shard *v, int n, const char *name,
                       const char *help, const char *prop)
{
    im_mtext_head(t, name, "gauge", help);
    for (int i = 0; i < n; i++) {
        uint64_t x;
        if (st_property(v[i].engine, prop, &x) == 0)
            im_mtext_printf(t, "%s{shard=\"%d\"} %llu\n", name, v[i].index,
                            (unsigned long long)x);
    }
}

void sh_metrics_render(sh_service *const *shards, int n, im_mtext *t)
{
    s_shard *v = calloc((size_t)(n > 0 ? n : 1), sizeof *v);
    if (!v) {
        t->oom = true;
        return;
    }
    for (int i = 0; i < n; i++) {
        v[i].index = sh_index(shards[i]);
        v[i].engine = sh_engine(shards[i]);
        st_stats_get(v[i].engine, &v[i].st);
    }
    char labels[32];
    im_mtext_head(t, "imbox_shard_commit_batch_size", "histogram",
                  "Puts per group commit (one fsync each).");
    for (int i = 0; i < n; i++) {
        snprintf(labels, sizeof labels, "shard=\"%d\"", v[i].index);
        im_mtext_hist(t, "imbox_shard_commit_batch_size", labels, st_batch_le,
                      ST_BATCH_BUCKETS, v[i].st.batch_hist, (double)v[i].st.batch_sum);
    }
    im_mtext_head(t, "imbox_shard_commit_seconds", "histogram",
                  "Time of a group commit's synced RocksDB write, fsync included.");
    double le[ST_COMMIT_BUCKETS];
    for (int j = 0; j < ST_COMMIT_BUCKETS; j++)
        le[j] = st_commit_le_us[j] / 1e6;
    for (int i = 0; i < n; i++) {
        snprintf(labels, sizeof labels, "shard=\"%d\"", v[i].index);
        im_mtext_hist(t, "imbox_shard_commit_seconds", labels, le, ST_COMMIT_BUCKETS,
                      v[i].st.commit_us_hist, (double)v[i].st.commit_us_sum / 1e6);
    }
    s_counter(t, v, n, "imbox_shard_messages_stored_total",
              "Messages stored (duplicates and refusals excluded).",
              offsetof(st_stats, appends));
    s_counter(t, v, n, "imbox_shard_duplicates_total",
              "Puts answered from the dedup index (msg_id seen before).",
              offsetof(st_stats, duplicates));
    s_counter(t, v, n, "imbox_shard_inbox_full_total",
              "Puts refused because the inbox was full.", offsetof(st_stats, full));
    s_counter(t, v, n, "imbox_shard_acks_total", "Ack requests executed (a Pull's cursor "
              "included).", offsetof(st_stats, acks));
    s_counter(t, v, n, "imbox_shard_ack_memos_total", "Whole-inbox acks that took their "
              "rows from the page read last instead of reading them again.",
              offsetof(st_stats, ack_memos));
    s_counter(t, v, n, "imbox_shard_messages_deleted_total",
              "Messages deleted by acks and expiry.", offsetof(st_stats, deleted));
    s_counter(t, v, n, "imbox_shard_messages_expired_total",
              "Messages deleted by expiry.", offsetof(st_stats, expired));
    im_mtext_head(t, "imbox_shard_inbox_messages", "gauge",
                  "Messages stored in the shard now (known after the first expiry sweep).");
    for (int i = 0; i < n; i++)
        if (v[i].st.messages_known)
            im_mtext_printf(t, "imbox_shard_inbox_messages{shard=\"%d\"} %llu\n", v[i].index,
                            (unsigned long long)v[i].st.messages);
    s_property(t, v, n, "imbox_shard_rocksdb_memtable_bytes",
               "RocksDB rocksdb.cur-size-all-mem-tables.", "rocksdb.cur-size-all-mem-tables");
    s_property(t, v, n, "imbox_shard_rocksdb_compaction_pending",
               "RocksDB rocksdb.compaction-pending (1: a compaction is due).",
               "rocksdb.compaction-pending");
    s_property(t, v, n, "imbox_shard_rocksdb_pending_compaction_bytes",
               "RocksDB rocksdb.estimate-pending-compaction-bytes.",
               "rocksdb.estimate-pending-compaction-bytes");
    s_property(t, v, n, "imbox_shard_rocksdb_sst_bytes",
               "RocksDB rocksdb.total-sst-files-size.", "rocksdb.total-sst-files-size");
    s_property(t, v, n, "imbox_shard_rocksdb_live_data_bytes",
               "RocksDB rocksdb.estimate-live-data-size.", "rocksdb.estimate-live-data-size");
    free(v);
}
