"""The per-sender Send rate limit (docs/PROTOCOL.md "Limits", docs/RELIABILITY.md
"Limits that protect"), beside the per-inbox quota (--max-inbox).

`imbox serve --send-rate 5 --send-burst 10 --max-inbox 12`: a sender's burst
beyond 10 Sends gets RESOURCE_EXHAUSTED with the trailing metadata
`retry-after-ms` and the same wait in the message; nothing of a refused Send
is stored; another sender is unaffected; after the hinted wait the sender's
Sends pass again. A Send to n receivers costs 1 + (n - 1) // 10 tokens. The
inbox quota still answers in the receipt ("inbox full"), not the call.

Run: /usr/bin/python3 -m unittest -v test_rate   (from tests/py).
"""

import re
import time

import grpc

import imbox_harness as h

RATE, BURST, QUOTA = 5, 10, 12
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


class RateTest(h.ImboxTestCase):

    @classmethod
    def setUpClass(cls):
        cls.dep = cls.class_deployment(h.ImboxServer(
            shards=2, extra_args=['--send-rate', str(RATE), '--send-burst', str(BURST),
                                  '--max-inbox', str(QUOTA)]))

    def refused(self, client, msg_id, receivers):
        """Sends, expects the rate refusal; returns the hinted wait in ms."""
        with self.assertRaises(grpc.RpcError) as cm:
            client.send(msg_id, receivers)
        e = cm.exception
        self.assertEqual(e.code(), EXHAUSTED, e.details())
        md = dict(e.trailing_metadata() or ())
        self.assertIn('retry-after-ms', md)
        wait = int(md['retry-after-ms'])
        self.assertGreaterEqual(wait, 1)
        self.assertLessEqual(wait, 1000 * BURST // RATE)
        m = re.search(r'retry after (\d+) ms', e.details())
        self.assertIsNotNone(m, e.details())
        self.assertEqual(int(m.group(1)), wait)
        self.assertIn('send rate', e.details())
        return wait

    def test_burst_refused_others_pass_then_wait(self):
        a, b, c = h.uid('A'), h.uid('B'), h.uid('C')
        ca, cc = self.dep.fast_client(a), self.dep.fast_client(c)
        cb = self.dep.fast_client(b)
        for i in range(BURST):
            ca.send1('a-%d' % i, b)
        wait = self.refused(ca, 'a-over', [b])
        # Nothing of the refused Send is stored.
        self.assertEqual(cb.counts().total, BURST)
        # Another sender is not limited by A's bucket.
        cc.send1('c-0', b)
        # After the hinted wait, A passes again (one token back).
        time.sleep(wait / 1000.0 + 0.02)
        ca.send1('a-over', b)
        ids = [m.msg_id for m in h.drain(cb, page_size=100).messages]
        self.assertEqual(sorted(ids), sorted(['a-%d' % i for i in range(BURST)] +
                                             ['c-0', 'a-over']))

    def test_fan_out_costs_per_ten_receivers(self):
        a = h.uid('F')
        ca = self.dep.fast_client(a)
        rs = [h.uid('r') for _ in range(21)]        # costs 3 tokens
        for i in range(3):
            r = ca.send('f-%d' % i, rs)
            self.assertTrue(all(x.code == 0 for x in r.receipts))
        self.refused(ca, 'f-3', rs)                  # 9 taken, 1 left < 3
        ca.send1('f-one', rs[0])                     # 1 token: passes
        for u in rs[1:3]:
            self.assertEqual(self.dep.fast_client(u).counts().total, 3)

    def test_quota_answers_in_the_receipt(self):
        b = h.uid('Q')
        senders = [self.dep.fast_client(h.uid('S%d' % k)) for k in range(2)]
        for i in range(QUOTA):
            senders[i % 2].send1('q-%d' % i, b)
        r = senders[0].send('q-full', [b])
        self.assertEqual(r.receipts[0].code, EXHAUSTED.value[0])
        self.assertIn('inbox full', r.receipts[0].error)
