/*
 * sh_metrics.h - the figures of one or more shards of this process for the
 * metrics endpoint (im_metrics.h), in the Prometheus text format, each
 * series labelled shard="INDEX":
 *
 *   imbox_shard_commit_batch_size{shard}     puts per group commit (one
 *       fsync each): histogram of st_stats.batch_hist
 *   imbox_shard_commit_seconds{shard}        time of a commit's synced
 *       rocksdb_write, the fsync included (histogram)
 *   imbox_shard_messages_stored_total        messages stored (duplicates
 *       and refusals excluded)
 *   imbox_shard_duplicates_total, imbox_shard_inbox_full_total
 *   imbox_shard_acks_total                   ack requests executed
 *   imbox_shard_messages_deleted_total       messages deleted by acks and
 *       expiry; imbox_shard_messages_expired_total of which by expiry
 *   imbox_shard_inbox_messages               messages stored now (gauge;
 *       absent until the first expiry sweep counted them: st_stats)
 *   imbox_shard_rocksdb_memtable_bytes       rocksdb.cur-size-all-mem-tables
 *   imbox_shard_rocksdb_compaction_pending   rocksdb.compaction-pending
 *   imbox_shard_rocksdb_pending_compaction_bytes
 *       rocksdb.estimate-pending-compaction-bytes
 *   imbox_shard_rocksdb_sst_bytes            rocksdb.total-sst-files-size
 *   imbox_shard_rocksdb_live_data_bytes      rocksdb.estimate-live-data-size
 * RocksDB's figures are read at each scrape (rocksdb_property_int).
 *
 * Threads: the metrics thread, while the shards are running. It takes the
 * engine's stats mutex (st_stats_get, held for a copy) and the read side
 * of its database lock: nothing a Send's path waits on for long.
 */
#ifndef IMBOX_SH_METRICS_H
#define IMBOX_SH_METRICS_H

#include "im_metrics.h"
#include "sh_service.h"

void sh_metrics_render(sh_service *const *shards, int n, im_mtext *t);

#endif
