"""The seed scenarios of imbox (docs/PROTOCOL.md),
end to end against real processes: offline backlog drained page by page with
piggy-backed acks, a crash before the ack, counts then one conversation, a
group send (also on a 3-shard cluster), retried sends, SIGKILL of a shard
right after an acked Send, and the per-inbox quota.

Run: /usr/bin/python3 -m unittest -v test_seed   (from tests/py; see
imbox_harness.py for IMBOX_BIN / IMBOX_PY_GEN).
"""

import collections
import concurrent.futures
import secrets
import unittest

import grpc

import imbox_harness as h

OK = 0
RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]   # 8
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]                 # 14


def content_of(msg_id):
    return ('content of %s' % msg_id).encode()


def send_many(dep, receiver, senders, per_sender, prefix):
    """Each sender sends per_sender messages to receiver, one Send at a time
    (senders run in parallel). Returns {msg_id: (sender, index, receipt)} and
    {sender: [msg_id in send order]}."""
    def one(sender):
        c = dep.fast_client(sender)
        out = []
        for i in range(per_sender):
            mid = '%s-%s-%03d' % (prefix, sender, i)
            rc = c.send1(mid, receiver, msg_type=i % 4, content=content_of(mid))
            out.append((mid, i, rc))
        return sender, out

    sent, order = {}, {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(senders)) as ex:
        for sender, out in ex.map(one, senders):
            order[sender] = [mid for mid, _, _ in out]
            for mid, i, rc in out:
                sent[mid] = (sender, i, rc)
    return sent, order


class SeedStandaloneTest(h.ImboxTestCase):
    """Scenarios against one `imbox serve --shards 4`."""

    @classmethod
    def setUpClass(cls):
        cls.dep = cls.class_deployment(h.ImboxServer(shards=4))

    def check_message(self, m, sent, receiver):
        self.assertIn(m.msg_id, sent)
        sender, i, rc = sent[m.msg_id]
        self.assertEqual(m.sender_uid, sender)
        self.assertEqual(m.receiver_uid, receiver)
        self.assertEqual(m.send_time_ms, rc.send_time_ms)
        self.assertEqual(m.msg_type, i % 4)
        self.assertEqual(m.content, content_of(m.msg_id))

    # ------------------------------------------------------------- backlog

    def test_offline_backlog_1050_messages_drained_in_11_pages_and_1_empty_call(self):
        b_uid = h.uid('B')
        senders = [h.uid('S%02d' % k) for k in range(30)]
        sent, order = send_many(self.dep, b_uid, senders, 35, 'backlog')
        self.assertEqual(len(sent), 1050)
        for mid, (_, _, rc) in sent.items():
            self.assertEqual(rc.receiver_uid, b_uid)
            self.assertFalse(rc.duplicate, mid)
            self.assertGreater(rc.send_time_ms, 0)

        b = self.dep.client(b_uid)   # token from the CLI

        # Login with optimisation 1 first: counts per sender, 1 call.
        counts = b.counts()
        self.assertEqual(counts.total, 1050)
        self.assertEqual(sorted(s.sender_uid for s in counts.senders), sorted(senders))
        for s in counts.senders:
            self.assertEqual(s.count, 35, s.sender_uid)
            self.assertEqual(s.last_send_time_ms,
                             max(sent[mid][2].send_time_ms for mid in order[s.sender_uid]))
        lasts = [s.last_send_time_ms for s in counts.senders]
        self.assertEqual(lasts, sorted(lasts, reverse=True),
                         'Counts: most recent last_send_time_ms first')

        # Optimisation 2: drain everything, the next pull acks the previous page.
        res = h.drain(b, page_size=100)
        self.assertEqual(res.calls, 12)
        self.assertEqual(b.calls['Pull'], 12)
        self.assertEqual([len(p.messages) for p in res.pages], [100] * 10 + [50, 0])
        self.assertEqual([p.more for p in res.pages], [True] * 10 + [False, False])
        self.assertEqual(res.duplicates, 0)
        self.assertEqual(len(res.messages), 1050)
        self.assertEqual({m.msg_id for m in res.messages}, set(sent))
        all_ids = [m.msg_id for p in res.pages for m in p.messages]
        self.assertEqual(len(all_ids), len(set(all_ids)), 'a message was delivered twice')

        for n, p in enumerate(res.pages):
            times = [m.send_time_ms for m in p.messages]
            self.assertEqual(times, sorted(times), 'page %d not oldest first' % (n + 1))
        times = [m.send_time_ms for m in res.messages]
        self.assertEqual(times, sorted(times), 'pages not in inbox order')
        for m in res.messages:
            self.check_message(m, sent, b_uid)

        by_sender = collections.defaultdict(list)
        for m in res.messages:
            by_sender[m.sender_uid].append(m.msg_id)
        self.assertEqual(sorted(by_sender), sorted(senders))
        for s in senders:
            self.assertEqual(len(by_sender[s]), 35, s)
            # One sender sent one message at a time: inbox order = send order.
            self.assertEqual(by_sender[s], order[s], s)

        # The empty page gives the request's cursor back.
        self.assertEqual(res.pages[-1].cursor, res.pages[-2].cursor)

        # Everything acked.
        counts = b.counts()
        self.assertEqual(counts.total, 0)
        self.assertEqual(len(counts.senders), 0)
        again = b.pull('')
        self.assertEqual(len(again.messages), 0)
        self.assertFalse(again.more)
        # The cursor of the empty page may be passed again.
        again = b.pull(res.cursor, page_size=100)
        self.assertEqual(len(again.messages), 0)
        self.assertFalse(again.more)

    def test_crash_before_ack_redelivers_the_page_and_client_dedup_hides_it(self):
        b_uid = h.uid('B')
        senders = [h.uid('S%d' % k) for k in range(5)]
        sent, _ = send_many(self.dep, b_uid, senders, 70, 'crash')
        self.assertEqual(len(sent), 350)
        b = self.dep.client(b_uid)

        seen = set()   # the client's local store of shown msg_ids
        p1 = b.pull('', page_size=100)
        p2 = b.pull(p1.cursor, page_size=100)
        p3 = b.pull(p2.cursor, page_size=100)
        for p in (p1, p2, p3):
            self.assertEqual(len(p.messages), 100)
            self.assertTrue(p.more)
            for m in p.messages:
                self.assertNotIn(m.msg_id, seen)
                seen.add(m.msg_id)
                self.check_message(m, sent, b_uid)
        p3_ids = [m.msg_id for m in p3.messages]
        # Pulling page 3 acked pages 1 and 2 only.
        self.assertEqual(b.counts().total, 150)

        # Crash: the cursor of page 3 is lost, page 2's is kept.
        b2 = self.dep.client(b_uid)   # next login
        res = h.drain(b2, page_size=100, cursor=p2.cursor, seen=seen)
        self.assertEqual([m.msg_id for m in res.pages[0].messages], p3_ids,
                         'the re-pull with page 2\'s cursor must return page 3 again')
        self.assertEqual(res.duplicates, 100)
        self.assertEqual([len(p.messages) for p in res.pages], [100, 50, 0])
        self.assertEqual([p.more for p in res.pages], [True, False, False])
        self.assertEqual(res.calls, 3)
        self.assertEqual(len(res.messages), 50)
        for m in res.messages:
            self.check_message(m, sent, b_uid)
        # Every message exactly once as the user sees it.
        self.assertEqual(len(seen), 350)
        self.assertEqual(seen, set(sent))
        self.assertEqual(b2.counts().total, 0)
        self.assertEqual(len(b2.pull('').messages), 0)

    # -------------------------------------------------------- conversation

    def test_counts_then_pull_one_conversation(self):
        b_uid, a1_uid, a2_uid = h.uid('B'), h.uid('zz-A1'), h.uid('aa-A2')
        b = self.dep.client(b_uid)
        a1 = self.dep.client(a1_uid)
        a2 = self.dep.client(a2_uid)

        a1_ids = ['a1-%d-%s' % (i, secrets.token_hex(4)) for i in range(3)]
        a2_ids = ['a2-%d-%s' % (i, secrets.token_hex(4)) for i in range(5)]
        r1 = [a1.send1(mid, b_uid, content=content_of(mid)) for mid in a1_ids]
        # A2 sends last, strictly later in ms, so the Counts order is exact.
        h.wait_clock_past(max(r.send_time_ms for r in r1))
        r2 = [a2.send1(mid, b_uid, content=content_of(mid)) for mid in a2_ids]
        t1 = max(r.send_time_ms for r in r1)
        t2 = max(r.send_time_ms for r in r2)
        self.assertGreater(t2, t1)

        counts = b.counts()
        self.assertEqual([(s.sender_uid, s.count, s.last_send_time_ms) for s in counts.senders],
                         [(a2_uid, 5, t2), (a1_uid, 3, t1)])
        self.assertEqual(counts.total, 8)

        conv = b.pull('', sender_uid=a2_uid)
        self.assertEqual([m.msg_id for m in conv.messages], a2_ids)
        self.assertEqual({m.sender_uid for m in conv.messages}, {a2_uid})
        self.assertEqual([m.send_time_ms for m in conv.messages], [r.send_time_ms for r in r2])
        self.assertFalse(conv.more)

        whole = b.pull('')
        self.assertEqual([m.msg_id for m in whole.messages], a1_ids + a2_ids)

        def unchanged(total=8):
            self.assertEqual(b.counts().total, total)

        # A conversation cursor without its sender_uid, or with another one,
        # and a whole-inbox cursor with a sender_uid: INVALID_ARGUMENT,
        # nothing deleted.
        self.assertRpcError(grpc.StatusCode.INVALID_ARGUMENT, b.pull, conv.cursor)
        unchanged()
        self.assertRpcError(grpc.StatusCode.INVALID_ARGUMENT, b.pull, conv.cursor,
                            sender_uid=a1_uid)
        unchanged()
        self.assertRpcError(grpc.StatusCode.INVALID_ARGUMENT, b.pull, whole.cursor,
                            sender_uid=a2_uid)
        unchanged()
        self.assertEqual([m.msg_id for m in b.pull('').messages], a1_ids + a2_ids)

        # The conversation cursor with its sender acks that conversation only.
        after = b.pull(conv.cursor, sender_uid=a2_uid)
        self.assertEqual(len(after.messages), 0)
        self.assertFalse(after.more)
        counts = b.counts()
        self.assertEqual([(s.sender_uid, s.count, s.last_send_time_ms) for s in counts.senders],
                         [(a1_uid, 3, t1)])
        self.assertEqual(counts.total, 3)
        self.assertEqual([m.msg_id for m in b.pull('').messages], a1_ids)
        self.assertEqual([m.msg_id for m in b.pull('', sender_uid=a1_uid).messages], a1_ids)
        self.assertEqual(len(b.pull('', sender_uid=a2_uid).messages), 0)

        # Still refused after the ack, still deleting nothing.
        self.assertRpcError(grpc.StatusCode.INVALID_ARGUMENT, b.pull, conv.cursor)
        unchanged(3)
        self.assertRpcError(grpc.StatusCode.INVALID_ARGUMENT, b.pull, conv.cursor,
                            sender_uid=a1_uid)
        unchanged(3)
        # Retrying the conversation pull is safe.
        self.assertEqual(len(b.pull(conv.cursor, sender_uid=a2_uid).messages), 0)
        unchanged(3)

    # ---------------------------------------------------------------- group

    def test_group_send_to_200_receivers(self):
        group_send_200(self, self.dep)

    # -------------------------------------------------------------- retries

    def test_retried_send_is_duplicate(self):
        a_uid, b_uid, c_uid = h.uid('A'), h.uid('B'), h.uid('C')
        a = self.dep.client(a_uid)
        b = self.dep.client(b_uid)
        mid = h.new_msg_id('retry')

        first = a.send(mid, [b_uid], msg_type=3, content=b'hello').receipts
        self.assertEqual(len(first), 1)
        self.assertEqual((first[0].receiver_uid, first[0].code, first[0].duplicate),
                         (b_uid, OK, False))
        second = a.send(mid, [b_uid], msg_type=3, content=b'hello').receipts
        self.assertEqual(len(second), 1)
        self.assertEqual((second[0].receiver_uid, second[0].code, second[0].duplicate),
                         (b_uid, OK, True))
        self.assertEqual(second[0].send_time_ms, first[0].send_time_ms)

        page = b.pull('')
        self.assertEqual([m.msg_id for m in page.messages], [mid])
        self.assertEqual(page.messages[0].send_time_ms, first[0].send_time_ms)
        self.assertEqual(page.messages[0].content, b'hello')
        self.assertEqual(b.counts().total, 1)

        # B acks it; a late retry is still a duplicate and delivers nothing.
        ack = b.ack(page.cursor)
        self.assertEqual(ack.deleted, 1)
        self.assertEqual(b.ack(page.cursor).deleted, 0, 'a repeated ack deletes nothing')
        late = a.send(mid, [b_uid], msg_type=3, content=b'hello').receipts
        self.assertEqual((late[0].code, late[0].duplicate, late[0].send_time_ms),
                         (OK, True, first[0].send_time_ms))
        self.assertEqual(b.counts().total, 0)
        self.assertEqual(len(b.pull('').messages), 0)
        self.assertEqual(len(b.pull(page.cursor).messages), 0)

        # Retrying for a group: the receiver that has it is a duplicate, the
        # new one gets it once.
        group = a.send(mid, [b_uid, c_uid], msg_type=3, content=b'hello').receipts
        self.assertEqual([(r.receiver_uid, r.code, r.duplicate) for r in group],
                         [(b_uid, OK, True), (c_uid, OK, False)])
        self.assertEqual(group[0].send_time_ms, first[0].send_time_ms)
        c = self.dep.client(c_uid)
        self.assertEqual([m.msg_id for m in c.pull('').messages], [mid])
        self.assertEqual(len(b.pull('').messages), 0)

        # The same msg_id from another sender is another message.
        other = self.dep.client(h.uid('A2')).send(mid, [b_uid]).receipts
        self.assertEqual((other[0].code, other[0].duplicate), (OK, False))
        self.assertEqual(b.counts().total, 1)


def group_send_200(tc, dep):
    """One Send to 200 receivers: 200 receipts in request order, all stored;
    each receiver pulls exactly that message. Returns the receivers."""
    a_uid = h.uid('A')
    a = dep.client(a_uid)
    receivers = [h.uid('G%03d' % k) for k in range(200)]
    mid = h.new_msg_id('group')
    resp = a.send(mid, receivers, msg_type=7, content=b'to the group')
    tc.assertEqual(a.calls['Send'], 1)
    tc.assertEqual([r.receiver_uid for r in resp.receipts], receivers)
    tc.assertEqual([r.code for r in resp.receipts], [OK] * 200,
                   [r.error for r in resp.receipts if r.code != OK][:5])
    tc.assertEqual([r.duplicate for r in resp.receipts], [False] * 200)
    for u, rc in zip(receivers, resp.receipts):
        tc.assertGreater(rc.send_time_ms, 0)
        c = dep.fast_client(u)
        page = c.pull('')
        tc.assertEqual(len(page.messages), 1, u)
        m = page.messages[0]
        tc.assertEqual((m.msg_id, m.sender_uid, m.receiver_uid, m.msg_type, m.content,
                        m.send_time_ms),
                       (mid, a_uid, u, 7, b'to the group', rc.send_time_ms))
        tc.assertFalse(page.more)
        counts = c.counts()
        tc.assertEqual(counts.total, 1)
        tc.assertEqual([(s.sender_uid, s.count) for s in counts.senders], [(a_uid, 1)])
    return receivers


class SeedClusterTest(h.ImboxTestCase):
    """Scenarios against 3 `imbox shard` + 1 `imbox gateway`."""

    def test_group_send_to_200_receivers_spread_over_3_shards(self):
        dep = self.cluster()
        receivers = group_send_200(self, dep)
        per_shard = collections.Counter(h.shard_of(u, 3) for u in receivers)
        self.assertEqual(set(per_shard), {0, 1, 2}, per_shard)

    def test_kill9_of_a_shard_right_after_acked_sends_loses_nothing(self):
        dep = self.cluster()
        a_uid = h.uid('A')
        a = dep.fast_client(a_uid)
        receivers = h.uids_on_shard('K', 1, 3, 5)
        sent = collections.defaultdict(list)   # receiver -> [(msg_id, receipt)]
        for k in range(50):
            r = receivers[k % 5]
            mid = 'kill-%02d-%s' % (k, secrets.token_hex(4))
            rc = a.send1(mid, r, content=content_of(mid))
            self.assertFalse(rc.duplicate)
            sent[r].append((mid, rc))
        dep.kill9_shard(1)                     # right after the last ack

        # While shard 1 is down its receivers get UNAVAILABLE receipts, and
        # the other shards still work (also checks our shard function).
        on0 = h.uids_on_shard('up', 0, 3, 1)[0]
        on1 = h.uids_on_shard('down', 1, 3, 1)[0]
        down = a.send(h.new_msg_id('down'), [on0, on1], timeout=60).receipts
        self.assertEqual([(r.receiver_uid, r.code) for r in down],
                         [(on0, OK), (on1, UNAVAILABLE)])
        self.assertTrue(down[1].error)
        self.assertRpcError(grpc.StatusCode.UNAVAILABLE, dep.fast_client(receivers[0]).counts,
                            timeout=60)

        dep.restart_shard(1)
        dep.wait_shard_ready(1)

        for r in receivers:
            c = dep.fast_client(r)
            res = h.drain(c, page_size=3)
            self.assertEqual([m.msg_id for m in res.messages], [mid for mid, _ in sent[r]])
            self.assertEqual([m.send_time_ms for m in res.messages],
                             [rc.send_time_ms for _, rc in sent[r]])
            for m in res.messages:
                self.assertEqual((m.sender_uid, m.receiver_uid, m.content),
                                 (a_uid, r, content_of(m.msg_id)))
            self.assertEqual(res.duplicates, 0)
            self.assertEqual(res.calls, 5)     # 10 messages, pages of 3: 4 + 1
            self.assertEqual(c.counts().total, 0)

        # The dedup index survived too: a retry of an acked message is a
        # duplicate with its original time, and delivers nothing.
        r = receivers[4]
        mid, rc = sent[r][-1]
        again = a.send(mid, [r]).receipts[0]
        self.assertEqual((again.code, again.duplicate, again.send_time_ms),
                         (OK, True, rc.send_time_ms))
        self.assertEqual(dep.fast_client(r).counts().total, 0)


class QuotaTest(h.ImboxTestCase):

    def test_full_inbox_is_resource_exhausted_in_the_receipt(self):
        dep = self.serve(shards=4, extra_args=['--max-inbox', '5'])
        a = dep.client(h.uid('A'))
        b_uid = h.uid('B')
        ids = [h.new_msg_id('q%d' % k) for k in range(6)]
        receipts = [a.send(mid, [b_uid]).receipts for mid in ids]
        for rs in receipts:
            self.assertEqual(len(rs), 1)
            self.assertEqual(rs[0].receiver_uid, b_uid)
        self.assertEqual([rs[0].code for rs in receipts], [OK] * 5 + [RESOURCE_EXHAUSTED])
        self.assertTrue(receipts[5][0].error, 'a failed receipt carries an error text')
        self.assertFalse(receipts[5][0].duplicate)

        b = dep.client(b_uid)
        self.assertEqual(b.counts().total, 5)
        page = b.pull('', page_size=1000)
        self.assertEqual([m.msg_id for m in page.messages], ids[:5])

        # Another receiver of the same Send is not affected by B's quota.
        c_uid = h.uid('C')
        mixed = a.send(h.new_msg_id('q-mixed'), [b_uid, c_uid]).receipts
        self.assertEqual([(r.receiver_uid, r.code) for r in mixed],
                         [(b_uid, RESOURCE_EXHAUSTED), (c_uid, OK)])
        self.assertEqual(b.counts().total, 5)

        # Once B acks, the sender's retry with the same msg_id is stored.
        self.assertEqual(b.ack(page.cursor).deleted, 5)
        retry = a.send(ids[5], [b_uid]).receipts[0]
        self.assertEqual((retry.code, retry.duplicate), (OK, False))
        self.assertEqual([m.msg_id for m in b.pull('').messages], [ids[5]])


class ProcessTest(h.ImboxTestCase):

    def test_sigterm_exits_0(self):
        dep = self.serve(shards=4)
        a = dep.client(h.uid('A'))
        a.send1(h.new_msg_id(), h.uid('B'))
        self.assertEqual(dep.proc.terminate(grace_s=15), 0)

    def test_kill9_of_serve_after_acked_sends_loses_nothing(self):
        dep = self.serve(shards=4)
        a = dep.fast_client(h.uid('A'))
        b_uid = h.uid('B')
        ids = [h.new_msg_id('k%d' % k) for k in range(20)]
        for mid in ids:
            a.send1(mid, b_uid, content=content_of(mid))
        dep.proc.kill9()
        dep.stop()
        dep.start()                            # same data dir, new port
        b = dep.client(b_uid)
        res = h.drain(b, page_size=7)
        self.assertEqual([m.msg_id for m in res.messages], ids)
        self.assertEqual([m.content for m in res.messages], [content_of(i) for i in ids])
        self.assertEqual(res.calls, 4)
        self.assertEqual(b.counts().total, 0)


if __name__ == '__main__':
    unittest.main()
