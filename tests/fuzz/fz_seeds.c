/*
 * fz_seeds.c - writes the seed corpora of the fuzz targets into
 * DIR/<target>/ (scripts/fuzz --seeds runs it into tests/fuzz/corpus, where
 * they are committed): a few valid messages of each decoder, made by the
 * product's encoders (nanopb, the hand encoders, im_token_make,
 * im_cursor_make with the fixed secret of fz.h), so that libFuzzer starts
 * from inputs that pass the checks and mutates inward from there.
 * Usage: fz_seeds DIR
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fz.h"
#include "im_auth.h"
#include "im_store_reply.h"
#include "im_wire.h"
#include "imbox/internal/v1/shard.pb.h"
#include "imbox/v1/imbox.pb.h"

static const char *s_dir;

static void s_write(const char *target, const char *name, const void *p, size_t n)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", s_dir, target);
    if (mkdir(path, 0755) != 0 && errno != EEXIST) {
        perror(path);
        exit(1);
    }
    snprintf(path, sizeof path, "%s/%s/%s", s_dir, target, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(p, 1, n, f) != n || fclose(f) != 0) {
        perror(path);
        exit(1);
    }
}

static void s_write_pb(const char *target, const char *name, const pb_msgdesc_t *fields,
                       const void *msg)
{
    uint8_t *out;
    size_t n;
    if (im_pb_encode(fields, msg, &out, &n)) {
        fprintf(stderr, "fz_seeds: %s/%s does not encode\n", target, name);
        exit(1);
    }
    s_write(target, name, out, n);
    free(out);
}

/* A repeated string field from a NULL-ended list. */
static bool s_write_list(pb_ostream_t *s, const pb_field_t *f, void *const *arg)
{
    for (const char *const *v = *arg; *v; v++)
        if (!pb_encode_tag_for_field(s, f) ||
            !pb_encode_string(s, (const uint8_t *)*v, strlen(*v)))
            return false;
    return true;
}

static pb_callback_t s_str(im_bytes_out *o, const char *v)
{
    *o = (im_bytes_out){v, strlen(v)};
    return (pb_callback_t){.funcs.encode = im_pb_write_bytes, .arg = o};
}

static pb_callback_t s_list(const char *const *v)
{
    return (pb_callback_t){.funcs.encode = s_write_list, .arg = (void *)v};
}

static void s_auth(void)
{
    const im_secret key = fz_secret(), other = fz_other_secret();
    char t[IM_TOKEN_MAX];
    im_token_make(&key, "alice", FZ_NOW_S + 3600, t, sizeof t);
    s_write("fuzz_token", "valid", t, strlen(t));
    im_token_make(&key, "bob", FZ_NOW_S - 1, t, sizeof t);
    s_write("fuzz_token", "expired", t, strlen(t));
    im_token_make(&other, "alice", FZ_NOW_S + 3600, t, sizeof t);
    s_write("fuzz_token", "other-secret", t, strlen(t));
    char c[IM_CURSOR_MAX];
    im_cursor_make(&key, "fz-owner", NULL, 5, c, sizeof c);
    s_write("fuzz_cursor", "inbox", c, strlen(c));
    im_cursor_make(&key, "fz-owner", "bob", 1ull << 40, c, sizeof c);
    s_write("fuzz_cursor", "conversation", c, strlen(c));
    im_cursor_make(&key, "someone-else", NULL, 5, c, sizeof c);
    s_write("fuzz_cursor", "other-owner", c, strlen(c));
}

static void s_public(void)
{
    const im_secret key = fz_secret();
    char inbox[IM_CURSOR_MAX], conv[IM_CURSOR_MAX];
    im_cursor_make(&key, "fz-owner", NULL, 3, inbox, sizeof inbox);
    im_cursor_make(&key, "fz-owner", "bob", 7, conv, sizeof conv);
    im_bytes_out a, b, c;

    static const char *const rcv[] = {"alice", "bob", "carol", "dave", NULL};
    imbox_v1_SendRequest s = imbox_v1_SendRequest_init_zero;
    s.msg_id = s_str(&a, "m-1");
    s.receiver_uids = s_list(rcv);
    s.msg_type = 7;
    s.content = s_str(&b, "hello");
    s_write_pb("fuzz_send", "group", imbox_v1_SendRequest_fields, &s);
    s_write_pb("fuzz_sendreq", "group", imbox_v1_SendRequest_fields, &s);
    static const char *const one[] = {"alice", NULL};
    s.receiver_uids = s_list(one);
    s.msg_type = -1;
    s_write_pb("fuzz_send", "one", imbox_v1_SendRequest_fields, &s);
    s_write_pb("fuzz_sendreq", "one", imbox_v1_SendRequest_fields, &s);

    imbox_v1_PullRequest p = imbox_v1_PullRequest_init_zero;
    s_write_pb("fuzz_pull", "empty", imbox_v1_PullRequest_fields, &p);
    p.cursor = s_str(&a, inbox);
    p.page_size = 10;
    s_write_pb("fuzz_pull", "inbox", imbox_v1_PullRequest_fields, &p);
    p.cursor = s_str(&a, conv);
    p.sender_uid = s_str(&c, "bob");
    s_write_pb("fuzz_pull", "conversation", imbox_v1_PullRequest_fields, &p);

    imbox_v1_AckRequest k = imbox_v1_AckRequest_init_zero;
    k.cursor = s_str(&a, inbox);
    s_write_pb("fuzz_ack", "inbox", imbox_v1_AckRequest_fields, &k);
    k.cursor = s_str(&a, conv);
    s_write_pb("fuzz_ack", "conversation", imbox_v1_AckRequest_fields, &k);

    s_write("fuzz_counts", "empty", "", 0);
    s_write("fuzz_counts", "unknown-field", "\x08\x01", 2);

    imbox_v1_SubscribeRequest u = imbox_v1_SubscribeRequest_init_zero;
    s_write_pb("fuzz_subscribe", "empty", imbox_v1_SubscribeRequest_fields, &u);
    u.cursor = s_str(&a, inbox);
    s_write_pb("fuzz_subscribe", "inbox", imbox_v1_SubscribeRequest_fields, &u);

    imbox_v1_PresenceRequest q = imbox_v1_PresenceRequest_init_zero;
    q.uids = s_list(rcv);
    s_write_pb("fuzz_presence", "four", imbox_v1_PresenceRequest_fields, &q);

    s_write("fuzz_health", "empty", "", 0);
    s_write("fuzz_health", "inbox", "\x0a\x0eimbox.v1.Inbox", 16);
    s_write("fuzz_health", "unknown", "\x0a\x03" "foo", 5);
}

static void s_internal(void)
{
    im_bytes_out a, b, c;
    static const char *const rcv[] = {"alice", "bob", NULL};
    imbox_internal_v1_ShardRequest r = imbox_internal_v1_ShardRequest_init_zero;
    r.has_store = true;
    snprintf(r.store.sender, sizeof r.store.sender, "fz-owner");
    snprintf(r.store.msg_id, sizeof r.store.msg_id, "m-1");
    r.store.msg_type = 3;
    r.store.content = s_str(&a, "hello");
    r.store.receivers = s_list(rcv);
    s_write_pb("fuzz_shard_request", "store", imbox_internal_v1_ShardRequest_fields, &r);
    memset(&r, 0, sizeof r);
    r.has_read = true;
    snprintf(r.read.uid, sizeof r.read.uid, "alice");
    r.read.ack_upto = 4;
    r.read.limit = 100;
    r.read.max_bytes = 1 << 20;
    s_write_pb("fuzz_shard_request", "read", imbox_internal_v1_ShardRequest_fields, &r);
    memset(&r, 0, sizeof r);
    r.has_ack = true;
    snprintf(r.ack.uid, sizeof r.ack.uid, "alice");
    snprintf(r.ack.sender, sizeof r.ack.sender, "bob");
    r.ack.upto = 9;
    s_write_pb("fuzz_shard_request", "ack", imbox_internal_v1_ShardRequest_fields, &r);
    memset(&r, 0, sizeof r);
    r.has_presence = true;
    r.presence.online = s_list(rcv);
    s_write_pb("fuzz_shard_request", "presence", imbox_internal_v1_ShardRequest_fields, &r);
    memset(&r, 0, sizeof r);
    r.has_query = true;
    r.query.uids = s_list(rcv);
    s_write_pb("fuzz_shard_request", "query", imbox_internal_v1_ShardRequest_fields, &r);

    static imbox_internal_v1_ShardReply y;
    memset(&y, 0, sizeof y);
    y.results_count = 2;
    y.results[0] = (imbox_internal_v1_StoreResult){.seq = 12, .send_time_ms = 1700000000000};
    y.results[1] = (imbox_internal_v1_StoreResult){.duplicate = true, .seq = 3, .online = true};
    uint8_t *out;
    size_t n;
    if (im_store_reply_encode(&y, &out, &n))
        exit(1);
    s_write("fuzz_shard_reply", "results", out, n);
    free(out);
    memset(&y, 0, sizeof y);
    y.code = 5;
    snprintf(y.error, sizeof y.error, "uid not owned by this shard");
    s_write_pb("fuzz_shard_reply", "error", imbox_internal_v1_ShardReply_fields, &y);
    memset(&y, 0, sizeof y);
    y.entries = s_str(&b, "\x0a\x05\x0a\x03" "bob");
    y.last_seq = 5;
    y.more = true;
    y.online_count = 1;
    y.online[0] = true;
    s_write_pb("fuzz_shard_reply", "page", imbox_internal_v1_ShardReply_fields, &y);

    /* A Notice of two commits, the first with its entry. */
    uint8_t cm[256], nt[512];
    pb_ostream_t s = pb_ostream_from_buffer(cm, sizeof cm);
    imbox_internal_v1_Commit k = imbox_internal_v1_Commit_init_zero;
    snprintf(k.uid, sizeof k.uid, "alice");
    k.seq = 4;
    k.entry = s_str(&c, "\x0a\x07\x0a\x03" "bob\x10\x04");
    pb_encode(&s, imbox_internal_v1_Commit_fields, &k);
    size_t n1 = s.bytes_written;
    pb_ostream_t o = pb_ostream_from_buffer(nt, sizeof nt);
    pb_encode_tag(&o, PB_WT_STRING, 1);
    pb_encode_string(&o, cm, n1);
    k.entry = (pb_callback_t){0};
    k.seq = 5;
    s = pb_ostream_from_buffer(cm, sizeof cm);
    pb_encode(&s, imbox_internal_v1_Commit_fields, &k);
    pb_encode_tag(&o, PB_WT_STRING, 1);
    pb_encode_string(&o, cm, s.bytes_written);
    s_write("fuzz_notice", "two-commits", nt, o.bytes_written);
}

/* ------------------------------------------------ framing and records */

static size_t s_frame(uint8_t *out, const void *p, size_t n)
{
    out[0] = (uint8_t)(n & 0xff);
    out[1] = (uint8_t)(n >> 8);
    memcpy(out + 2, p, n);
    return 2 + n;
}

static void s_batch(void)
{
    uint8_t b[256];
    size_t n = 0;
    b[n++] = 1; /* a shard's view: the routing identity first */
    n += s_frame(b + n, "\x01gateway-identity", 17);
    n += s_frame(b + n, "\x00\x00\x00\x00\x00\x00\x00\x01", 8);
    n += s_frame(b + n, "\x22\x02\x0a\x00", 4);
    s_write("fuzz_batch", "shard", b, n);
    n = 0;
    b[n++] = 0; /* a gateway's view: a reply and a notice */
    n += s_frame(b + n, "\x00\x00\x00\x00\x00\x00\x00\x01", 8);
    n += s_frame(b + n, "", 0);
    n += s_frame(b + n, "\x00\x00\x00\x00\x00\x00\x00\x00", 8);
    n += s_frame(b + n, "\x0a\x05\x0a\x01u\x10\x01", 7);
    s_write("fuzz_batch", "gateway", b, n);
    /* The packed form (IM_ZMQ_PACKED, then id | u32 length | body records):
     * a shard's view of two requests, a gateway's of a reply and a notice. */
    static const uint8_t two[] = {1, 0, 0, 0, 0, 0, 0, 0, 1, 4, 0, 0, 0, 0x22, 2, 0x0a, 0,
                                  0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0};
    n = 0;
    b[n++] = 1;
    n += s_frame(b + n, "\x01gateway-identity", 17);
    n += s_frame(b + n, two, sizeof two);
    s_write("fuzz_batch", "shard-packed", b, n);
    static const uint8_t reply[] = {1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0,
                                    0, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0x0a, 5, 0x0a, 1,
                                    'u', 0x10, 1};
    n = 0;
    b[n++] = 0;
    n += s_frame(b + n, reply, sizeof reply);
    s_write("fuzz_batch", "gateway-packed", b, n);
}

static size_t s_be(uint8_t *p, uint64_t v, int bytes)
{
    for (int i = bytes - 1; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
    return (size_t)bytes;
}

/* One row of fuzz_store's input: table index in "IMSCD", key rest, value. */
static size_t s_row(uint8_t *out, int table, const void *rest, size_t rl, const void *v,
                    size_t vl)
{
    size_t n = 0;
    out[n++] = (uint8_t)table;
    out[n++] = (uint8_t)rl;
    memcpy(out + n, rest, rl);
    n += rl;
    n += s_frame(out + n, v, vl);
    return n;
}

/* Inbox "u" as the engine writes it (format of st.c): two messages from
 * "s", the second acked by nobody, with their index, counter and dedup
 * rows. Sent at FZ_NOW_S. */
static void s_store(void)
{
    uint8_t in[1024], key[64], val[64];
    size_t n = 0, k, v;
    int64_t t = (int64_t)FZ_NOW_S * 1000;
    v = 0; /* 'I': version | high | count | floor | last_time_ms */
    val[v++] = 1;
    v += s_be(val + v, 2, 8);
    v += s_be(val + v, 2, 8);
    v += s_be(val + v, 0, 8);
    v += s_be(val + v, (uint64_t)t, 8);
    n += s_row(in + n, 0, "", 0, val, v);
    for (uint64_t seq = 1; seq <= 2; seq++) {
        char id[8];
        snprintf(id, sizeof id, "m%llu", (unsigned long long)seq);
        k = s_be(key, seq, 8); /* 'M': seq -> version | time | type | sender | id | content */
        v = 0;
        val[v++] = 1;
        v += s_be(val + v, (uint64_t)t, 8);
        v += s_be(val + v, 0, 4);
        val[v++] = 1;
        val[v++] = 's';
        val[v++] = (uint8_t)strlen(id);
        memcpy(val + v, id, strlen(id));
        v += strlen(id);
        memcpy(val + v, "hello", 5);
        v += 5;
        n += s_row(in + n, 1, key, k, val, v);
        k = 0; /* 'S': sender 0x00 seq -> "" */
        key[k++] = 's';
        key[k++] = 0;
        k += s_be(key + k, seq, 8);
        n += s_row(in + n, 2, key, k, "", 0);
        k = 0; /* 'D': sender 0x00 msg_id -> version | seq | time */
        key[k++] = 's';
        key[k++] = 0;
        memcpy(key + k, id, strlen(id));
        k += strlen(id);
        v = 0;
        val[v++] = 1;
        v += s_be(val + v, seq, 8);
        v += s_be(val + v, (uint64_t)t, 8);
        n += s_row(in + n, 4, key, k, val, v);
    }
    v = 0; /* 'C': sender -> version | count | last_send_time_ms */
    val[v++] = 1;
    v += s_be(val + v, 2, 8);
    v += s_be(val + v, (uint64_t)t, 8);
    n += s_row(in + n, 3, "s", 1, val, v);
    s_write("fuzz_store", "two-messages", in, n);
    s_write("fuzz_store", "empty", "", 0);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: fz_seeds DIR\n");
        return 2;
    }
    s_dir = argv[1];
    mkdir(s_dir, 0755);
    s_auth();
    s_public();
    s_internal();
    s_batch();
    s_store();
    return 0;
}
