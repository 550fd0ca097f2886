"""Live delivery (Subscribe) and Presence, end to end against real processes:
a push across two gateways of a 3-shard cluster, backlog then live with no
gap, kill -9 of a gateway and resume from the last acked cursor, two streams
for one uid, cancel and deadline, Presence validation, bad Subscribe
cursors and tokens, a stalled subscriber's memory bound on `imbox serve`,
and a silently dead client dropped by server keepalive.

Semantics under test: Subscribe streams the stored messages after the
cursor, then new ones live, in inbox order, never skipping or repeating one
within a stream; each Delivery's cursor is a whole-inbox cursor that acks up
to and including its message; pushed messages stay stored until acked. A
user is online while one of its streams is open on any gateway; offline
within 1 s after a stream ends, within the presence lease (default 3 s) plus
1 s after its gateway dies.

Every wait is bounded (a Subscription collects Deliveries in a background
thread; Presence is polled with a bound). Until Subscribe and Presence are
implemented these tests fail fast with UNIMPLEMENTED.

Run: /usr/bin/python3 -m unittest -v test_live   (from tests/py; see
imbox_harness.py for IMBOX_BIN / IMBOX_PY_GEN). IMBOX_LIVE_STALL_N sets the
message count of the stalled-subscriber test (20000 by default; 100000 for
the full figure), IMBOX_LIVE_STALL_BYTES the content size of each message.
"""

import concurrent.futures
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import grpc

import imbox_harness as h

INVALID = grpc.StatusCode.INVALID_ARGUMENT
UNAUTH = grpc.StatusCode.UNAUTHENTICATED

LEASE_S = 3.0                 # --presence-lease-ms default
KILL_OFFLINE_BOUND_S = LEASE_S + 2.0
END_OFFLINE_BOUND_S = 1.0     # offline after a stream ends (cancel, deadline)
ONLINE_BOUND_S = 5.0          # a new stream makes its user online
DELIVERY_BOUND_S = 20.0       # a few Deliveries arrive
STREAM_END_BOUND_S = 10.0     # an ended/refused stream reports its status
KEEPALIVE_OFFLINE_BOUND_S = 10.0
SEND_TIMEOUT_S = 10.0         # deadline of each Send (a Send is milliseconds)
MAX_PRESENCE = 1000
MAX_CONTENT = 65536

STALL_N = int(os.environ.get('IMBOX_LIVE_STALL_N', '20000'))
# ~60 MiB of content in all, so that a server buffering every Delivery for
# the stalled stream grows far beyond the bound, while storing the messages
# alone grows it by ~30 MB (measured on `imbox serve --shards 2`).
STALL_BYTES = int(os.environ.get('IMBOX_LIVE_STALL_BYTES',
                                 str(max(64, min(MAX_CONTENT, (60 << 20) // max(1, STALL_N))))))
STALL_GROWTH_LIMIT = 50 << 20
STALL_LANES = 32
# A client window as small as grpcio allows: the stalled client itself must
# not soak up the stream.
STALL_CHANNEL_OPTIONS = [
    ('grpc.http2.lookahead_bytes', 1024),
    ('grpc.http2.bdp_probe', 0),
]


def content_of(mid, size=None):
    base = ('content of %s' % mid).encode()
    if size is None:
        return base
    return (base + b'.' * size)[:size]


class Sent:
    """One message as sent and as its receipt reported it."""

    def __init__(self, msg_id, sender, receiver, msg_type, content, receipt):
        self.msg_id = msg_id
        self.sender = sender
        self.receiver = receiver
        self.msg_type = msg_type
        self.content = content
        self.receipt = receipt


class LiveTestCase(h.ImboxTestCase):
    """Helpers shared by the live tests; `dep` is the deployment."""

    dep = None

    def send_seq(self, client, receiver, prefix, n, online=None, msg_type=None, size=None):
        """n Sends, one at a time (inbox order = this order). Every receipt
        must be code 0, not a duplicate, for `receiver`; with online set,
        receipt.online must equal it."""
        out = []
        for i in range(n):
            mid = '%s-%03d-%s' % (prefix, i, secrets.token_hex(3))
            mt = i % 5 if msg_type is None else msg_type
            content = content_of(mid, size)
            rc = client.send1(mid, receiver, msg_type=mt, content=content,
                              timeout=SEND_TIMEOUT_S)
            self.assertEqual(rc.receiver_uid, receiver)
            self.assertFalse(rc.duplicate, mid)
            self.assertGreater(rc.send_time_ms, 0)
            if online is not None:
                self.assertEqual(rc.online, online, 'receipt.online of %s: %s' % (mid, rc))
            out.append(Sent(mid, client.uid, receiver, mt, content, rc))
        return out

    def assertDeliveries(self, deliveries, sent, first_seq):
        """deliveries are exactly `sent`, in order, each field exact, with
        cursors of consecutive seqs from first_seq (whole-inbox cursors of the
        receiver, docs/PROTOCOL.md "The cursor")."""
        self.assertEqual([d.message.msg_id for d in deliveries], [s.msg_id for s in sent])
        secret = self.dep.secret()
        for k, (d, s) in enumerate(zip(deliveries, sent)):
            m = d.message
            self.assertEqual(m.msg_id, s.msg_id)
            self.assertEqual(m.sender_uid, s.sender, s.msg_id)
            self.assertEqual(m.receiver_uid, s.receiver, s.msg_id)
            self.assertEqual(m.msg_type, s.msg_type, s.msg_id)
            self.assertEqual(m.content, s.content, s.msg_id)
            self.assertEqual(m.send_time_ms, s.receipt.send_time_ms, s.msg_id)
            self.assertEqual(h.parse_cursor(d.cursor)[:3], (1, first_seq + k, b''),
                             'Delivery cursor of %s' % s.msg_id)
            self.assertEqual(d.cursor, h.make_cursor(secret, s.receiver, first_seq + k),
                             'Delivery cursor of %s' % s.msg_id)

    def assertStreamEnds(self, sub, code, bound_s=STREAM_END_BOUND_S):
        got = sub.wait_done(bound_s)
        self.assertEqual(got, code, 'stream ended with %s %r' % (got, sub.details))
        return sub.details or ''


# ------------------------------------------------- 3 shards + 2 gateways

class LiveClusterTest(LiveTestCase):
    """One cluster of 3 `imbox shard` + 2 `imbox gateway` for the class;
    every test uses fresh uids."""

    @classmethod
    def setUpClass(cls):
        cls.dep = cls.class_deployment(h.ImboxCluster(nshards=3, ngateways=2))

    def test_push_across_gateways_exact_fields_then_ack_leaves_nothing(self):
        dep = self.dep
        a_uid, b_uid = h.uid('A'), h.uid('B')
        # A's token from the CLI: sender_uid must come from it.
        a = h.Client(dep.gateway_channel(0), dep.token(a_uid), a_uid)
        b_gw2 = dep.gw_client(1, b_uid)
        b_gw1 = dep.gw_client(0, b_uid)

        sub = self.subscribe(b_gw2)
        h.wait_presence(a, b_uid, True, ONLINE_BOUND_S)   # asked on gateway 1

        # Small messages ride inside the shard's notice; the 64 KiB one does
        # not (over 16 KiB: the stream reads it), between them.
        kinds = [(0, b''), (-1, b'\x00\x01\x02\xff' * 8), (2 ** 31 - 1, b'x' * MAX_CONTENT)]
        sent = []
        for i in range(20):
            mid = 'push-%02d-%s' % (i, secrets.token_hex(4))
            mt, content = kinds[i] if i < len(kinds) else (i, content_of(mid))
            rc = a.send1(mid, b_uid, msg_type=mt, content=content, timeout=SEND_TIMEOUT_S)
            self.assertEqual(rc.receiver_uid, b_uid)
            self.assertFalse(rc.duplicate)
            self.assertTrue(rc.online, 'B is subscribed on gateway 2: %s' % rc)
            sent.append(Sent(mid, a_uid, b_uid, mt, content, rc))

        ds = sub.wait_for(20, DELIVERY_BOUND_S)
        self.assertDeliveries(ds, sent, 1)
        self.assertFalse(sub.done, 'the stream must stay open: %s' % (sub.status(),))

        ack = b_gw1.ack(ds[-1].cursor)
        self.assertEqual(ack.deleted, 20)
        page = b_gw1.pull('')
        self.assertEqual(list(page.messages), [])
        self.assertFalse(page.more)
        self.assertEqual(b_gw2.counts().total, 0)
        self.assertEqual(len(sub), 20, 'nothing more was pushed')

        sub.cancel()
        self.assertStreamEnds(sub, grpc.StatusCode.CANCELLED)

    def test_backlog_then_live_with_no_gap_and_no_duplicate(self):
        dep = self.dep
        a_uid, b_uid = h.uid('A'), h.uid('B')
        a = dep.gw_client(0, a_uid)
        b = dep.gw_client(1, b_uid)

        sent = self.send_seq(a, b_uid, 'backlog', 50, online=False)

        # 200 more from a racing thread while B subscribes.
        racer_out, racer_err = [], []

        def racer():
            try:
                ra = dep.gw_client(0, a_uid)
                for i in range(50, 250):
                    mid = 'race-%03d-%s' % (i, secrets.token_hex(3))
                    content = content_of(mid)
                    rc = ra.send1(mid, b_uid, msg_type=i % 5, content=content,
                                  timeout=SEND_TIMEOUT_S)
                    racer_out.append(Sent(mid, a_uid, b_uid, i % 5, content, rc))
            except BaseException as e:  # noqa: BLE001 - reported below
                racer_err.append(e)

        t = threading.Thread(target=racer, daemon=True)
        t.start()
        sub = self.subscribe(b)
        t.join(120)
        self.assertFalse(t.is_alive(), 'the racing sender did not finish in 120 s')
        self.assertEqual(racer_err, [])
        sent += racer_out
        self.assertEqual(len(sent), 250)
        for s in sent:
            self.assertEqual(s.receipt.code, 0)
            self.assertFalse(s.receipt.duplicate)

        ds = sub.wait_for(250, 60)
        self.assertDeliveries(ds, sent, 1)

        # A sentinel sent once B is surely online must come right after msg
        # 249: no late duplicate or stray Delivery in between.
        h.wait_presence(a, b_uid, True, ONLINE_BOUND_S)
        last = self.send_seq(a, b_uid, 'sentinel', 1, online=True)
        ds = sub.wait_for(251, DELIVERY_BOUND_S)
        self.assertDeliveries(ds, sent + last, 1)
        self.assertEqual(len(sub), 251)

    def test_two_streams_of_one_uid_both_receive_and_one_ack_deletes_for_both(self):
        dep = self.dep
        a_uid, b_uid = h.uid('A'), h.uid('B')
        a = dep.gw_client(0, a_uid)
        b_gw1, b_gw2 = dep.gw_client(0, b_uid), dep.gw_client(1, b_uid)

        phone = self.subscribe(b_gw1)
        desktop = self.subscribe(b_gw2)
        h.wait_presence(a, b_uid, True, ONLINE_BOUND_S)
        sent = self.send_seq(a, b_uid, 'both', 3, online=True)

        d1 = phone.wait_for(3, DELIVERY_BOUND_S)
        d2 = desktop.wait_for(3, DELIVERY_BOUND_S)
        self.assertDeliveries(d1, sent, 1)
        self.assertDeliveries(d2, sent, 1)

        self.assertEqual(b_gw1.ack(d1[-1].cursor).deleted, 3)
        page = b_gw2.pull('')
        self.assertEqual(list(page.messages), [])
        self.assertFalse(page.more)
        self.assertEqual(b_gw2.counts().total, 0)
        # The other stream's cursor acks nothing more.
        self.assertEqual(b_gw2.ack(d2[-1].cursor).deleted, 0)

        # One stream ends: B stays online through the other, which still gets
        # every message. (A check that something does NOT happen: it needs
        # the time in which it would have happened.)
        phone.cancel()
        self.assertStreamEnds(phone, grpc.StatusCode.CANCELLED)
        time.sleep(END_OFFLINE_BOUND_S + 0.25)
        self.assertEqual(a.presence([b_uid]), [True])
        more = self.send_seq(a, b_uid, 'desk', 2, online=True)
        self.assertDeliveries(desktop.wait_for(5, DELIVERY_BOUND_S), sent + more, 1)
        self.assertEqual(len(phone), 3)

    def test_deadline_ends_the_stream_then_offline_and_cancel_then_offline(self):
        dep = self.dep
        a_uid, b_uid = h.uid('A'), h.uid('B')
        a = dep.gw_client(0, a_uid)
        b = dep.gw_client(1, b_uid)

        sub = self.subscribe(b, timeout=2.0)
        h.wait_presence(a, b_uid, True, ONLINE_BOUND_S)
        self.assertStreamEnds(sub, grpc.StatusCode.DEADLINE_EXCEEDED, 2.0 + 5.0)
        self.assertGreaterEqual(sub.ended_at - sub.started_at, 1.9,
                                'the stream ended before its deadline')
        h.wait_presence(a, b_uid, False, END_OFFLINE_BOUND_S)

        sub = self.subscribe(b)
        h.wait_presence(a, b_uid, True, ONLINE_BOUND_S)
        sub.cancel()
        self.assertStreamEnds(sub, grpc.StatusCode.CANCELLED)
        h.wait_presence(a, b_uid, False, END_OFFLINE_BOUND_S)

        # Offline: stored, not pushed.
        sent = self.send_seq(a, b_uid, 'after-cancel', 2, online=False)
        page = dep.gw_client(0, b_uid).pull('')
        self.assertEqual([m.msg_id for m in page.messages], [s.msg_id for s in sent])
        self.assertEqual([m.send_time_ms for m in page.messages],
                         [s.receipt.send_time_ms for s in sent])
        self.assertEqual(len(sub), 0)

    def test_presence_validation_and_order(self):
        dep = self.dep
        c = dep.gw_client(0, h.uid('C'))

        details = self.assertRpcError(INVALID, c.presence,
                                      ['u%d' % i for i in range(MAX_PRESENCE + 1)])
        self.assertIn('uids', details)
        self.assertEqual(c.presence(['u%d-%s' % (i, secrets.token_hex(2))
                                     for i in range(MAX_PRESENCE)]), [False] * MAX_PRESENCE)

        ok = h.uid('ok')
        self.assertIn('uids[2]', self.assertRpcError(INVALID, c.presence, [ok, ok, '']))
        self.assertIn('uids[0]', self.assertRpcError(INVALID, c.presence, ['u' * 65]))
        for ch in ('\x00', '\x01', '\x1f', '\t', '\x7f', '\u0085', '\u009f'):
            with self.subTest(char=repr(ch)):
                self.assertIn('uids[1]', self.assertRpcError(
                    INVALID, c.presence, [ok, 'ctl%sx' % ch, ok]))
        # Invalid UTF-8 (python protobuf will not serialise it).
        raw = h.field_len(1, ok) + h.field_len(1, b'bad\xff\xfeuid')
        self.assertIn('uids[1]', self.assertRpcError(INVALID, c.raw, 'Presence', raw))
        # 64 bytes is a valid uid.
        self.assertEqual(c.presence(['u' * 64]), [False])

        # Any authenticated caller; without a token: UNAUTHENTICATED.
        anon = h.Client(dep.gateway_channel(0), None)
        self.assertRpcError(UNAUTH, anon.presence, [ok])
        forged = h.Client(dep.gateway_channel(1), h.make_token(os.urandom(32), ok, 2 ** 40))
        self.assertRpcError(UNAUTH, forged.presence, [ok])

        # Order kept with duplicates and mixed online/offline uids, on both
        # gateways.
        on1, on2 = h.uid('on1'), h.uid('on2')
        off1, off2 = h.uid('off1'), h.uid('off2')
        self.subscribe(dep.gw_client(1, on1))
        self.subscribe(dep.gw_client(0, on2))
        h.wait_presence(c, on1, True, ONLINE_BOUND_S)
        h.wait_presence(c, on2, True, ONLINE_BOUND_S)
        ask = [on1, off1, on1, off2, on2, off1, on2, on1, off2]
        want = [True, False, True, False, True, False, True, True, False]
        for g in (0, 1):
            with self.subTest(gateway=g + 1):
                self.assertEqual(dep.gw_client(g, off1).presence(ask), want)

    def test_subscribe_refuses_conversation_forged_foreign_future_cursors_and_bad_tokens(self):
        dep = self.dep
        secret = dep.secret()
        b_uid, a1_uid, a2_uid = h.uid('B'), h.uid('A1'), h.uid('A2')
        a1, a2 = dep.gw_client(0, a1_uid), dep.gw_client(1, a2_uid)
        b = dep.gw_client(1, b_uid)
        sent = []
        for k in range(2):
            sent += self.send_seq(a1, b_uid, 'a1-%d' % k, 1)
            sent += self.send_seq(a2, b_uid, 'a2-%d' % k, 1)

        conv = b.pull('', sender_uid=a1_uid)
        self.assertEqual(len(conv.messages), 2)
        self.assertEqual(h.parse_cursor(conv.cursor)[2], a1_uid.encode())
        whole = h.make_cursor(secret, b_uid, 1)
        bad = [
            ('conversation cursor', conv.cursor),
            ('forged (other secret)', h.make_cursor(os.urandom(32), b_uid, 1)),
            ('foreign (another owner)', h.make_cursor(secret, a1_uid, 1)),
            ('future seq', h.make_cursor(secret, b_uid, 5)),
            ('tag of zeros', h.b64url_nopad(h.b64url_nopad_decode(whole)[:-16] + b'\x00' * 16)),
            ('version 2', h.make_cursor(secret, b_uid, 1, version=2)),
            ('truncated', h.b64url_nopad(h.b64url_nopad_decode(whole)[:-1])),
            ('not base64url', 'not a cursor!'),
        ]
        for name, cur in bad:
            with self.subTest(cursor=name):
                sub = self.subscribe(b, cur)
                self.assertStreamEnds(sub, INVALID)
                self.assertEqual(len(sub), 0)
        self.assertEqual(b.counts().total, 4, 'a refused cursor deleted something')

        # Tokens.
        for name, md in [
                ('no token', ()),
                ('not Bearer', (('authorization', 'Basic ' + dep.fast_token(b_uid)),)),
                ('forged', (('authorization', 'Bearer ' + h.make_token(
                    os.urandom(32), b_uid, int(time.time()) + 3600)),)),
                ('expired', (('authorization', 'Bearer ' + h.make_token(
                    secret, b_uid, int(time.time()) - 10)),))]:
            with self.subTest(token=name):
                sub = self.subscribe(b, '', metadata=md)
                self.assertStreamEnds(sub, UNAUTH)
                self.assertEqual(len(sub), 0)
        self.assertEqual(b.counts().total, 4)

        # A whole-inbox cursor from Pull: acks up to it, then the rest.
        first = b.pull('', page_size=1)
        self.assertEqual(h.cursor_seq(first.cursor), 1)
        sub = self.subscribe(b, first.cursor)
        self.assertDeliveries(sub.wait_for(3, DELIVERY_BOUND_S), sent[1:], 2)
        self.assertEqual(b.counts().total, 3)


# ----------------------------------------------------- gateway kill -9

class LiveGatewayKillTest(LiveTestCase):

    def test_kill9_of_the_gateway_offline_within_lease_and_resume_from_last_ack(self):
        dep = self.dep = self.cluster(nshards=3, ngateways=2)
        a_uid, b_uid = h.uid('A'), h.uid('B')
        a = dep.gw_client(0, a_uid)
        b_gw1 = dep.gw_client(0, b_uid)

        sub = self.subscribe(dep.gw_client(1, b_uid))
        h.wait_presence(a, b_uid, True, ONLINE_BOUND_S)
        batch1 = self.send_seq(a, b_uid, 'k1', 5, online=True)
        ds = sub.wait_for(5, DELIVERY_BOUND_S)
        self.assertDeliveries(ds, batch1, 1)
        acked = ds[2].cursor
        self.assertEqual(b_gw1.ack(acked).deleted, 3)

        dep.kill9_gateway(1)
        t_kill = time.monotonic()
        self.assertStreamEnds(sub, grpc.StatusCode.UNAVAILABLE)
        # Sent within the lease: stored whatever receipt.online says.
        batch2 = self.send_seq(a, b_uid, 'k2', 3)
        h.wait_presence(a, b_uid, False,
                        max(0.0, t_kill + KILL_OFFLINE_BOUND_S - time.monotonic()))
        batch3 = self.send_seq(a, b_uid, 'k3', 4, online=False)
        waiting = batch1[3:] + batch2 + batch3          # seqs 4..12

        # Resume on gateway 1 while gateway 2 is down.
        s1 = self.subscribe(b_gw1, acked)
        self.assertDeliveries(s1.wait_for(len(waiting), DELIVERY_BOUND_S), waiting, 4)
        s1.cancel()
        self.assertStreamEnds(s1, grpc.StatusCode.CANCELLED)
        h.wait_presence(a, b_uid, False, END_OFFLINE_BOUND_S)

        # Gateway 2 again, same cursor: the same backlog (nothing acked
        # since), then live.
        dep.restart_gateway(1)
        b_gw2 = dep.gw_client(1, b_uid)
        s2 = self.subscribe(b_gw2, acked)
        self.assertDeliveries(s2.wait_for(len(waiting), DELIVERY_BOUND_S), waiting, 4)
        h.wait_presence(a, b_uid, True, ONLINE_BOUND_S)
        batch4 = self.send_seq(a, b_uid, 'k4', 3, online=True)
        ds = s2.wait_for(len(waiting) + 3, DELIVERY_BOUND_S)
        self.assertDeliveries(ds, waiting + batch4, 4)

        self.assertEqual(b_gw2.ack(ds[-1].cursor).deleted, len(waiting) + 3)
        self.assertEqual(list(b_gw1.pull('').messages), [])


# ------------------------------------------------------------ imbox serve

class LiveServeTest(LiveTestCase):

    def test_stalled_subscriber_bounded_memory_then_everything_in_order(self):
        dep = self.dep = self.serve(shards=2)
        n, size = STALL_N, STALL_BYTES
        b_uid = h.uid('B')
        stalled = h.Client(dep.channel(options=STALL_CHANNEL_OPTIONS),
                           dep.fast_token(b_uid), b_uid)
        sub = self.subscribe(stalled, read=False)      # never read for now
        watcher = dep.fast_client(h.uid('W'))
        h.wait_presence(watcher, b_uid, True, ONLINE_BOUND_S)

        rss0, hwm0 = dep.proc.rss(), dep.proc.hwm()
        senders = [h.uid('S%02d' % k) for k in range(STALL_LANES)]

        stop = threading.Event()
        send_deadline = time.monotonic() + 60.0 + n / 200.0

        def lane(k):
            """Lane k sends messages k, k+LANES, ... one at a time: within a
            lane, inbox order = send order. The first failure stops every
            lane (a server that blocks Sends must not make this run for
            hours)."""
            c = dep.fast_client(senders[k])
            out = []
            try:
                for i in range(k, n, STALL_LANES):
                    if stop.is_set():
                        return out
                    if time.monotonic() > send_deadline:
                        raise AssertionError('sending %d messages took too long' % n)
                    mid = 'st-%06d' % i
                    rc = c.send1(mid, b_uid, msg_type=i % 7, content=content_of(mid, size),
                                 timeout=SEND_TIMEOUT_S)
                    out.append((i, rc))
                return out
            except BaseException:
                stop.set()
                raise

        t0 = time.monotonic()
        receipts = {}
        with concurrent.futures.ThreadPoolExecutor(max_workers=STALL_LANES) as ex:
            for out in ex.map(lane, range(STALL_LANES)):
                for i, rc in out:
                    receipts[i] = rc
        send_s = time.monotonic() - t0
        self.assertEqual(len(receipts), n)
        rss1, hwm1 = dep.proc.rss(), dep.proc.hwm()
        growth = rss1 - rss0
        sys_note = ('%d messages of %d bytes sent in %.1f s; server VmRSS %.1f -> %.1f MB '
                    '(+%.1f MB), VmHWM %.1f -> %.1f MB' % (
                        n, size, send_s, rss0 / 2 ** 20, rss1 / 2 ** 20, growth / 2 ** 20,
                        hwm0 / 2 ** 20, hwm1 / 2 ** 20))
        sys.stderr.write('\n[%s] ' % sys_note)
        if dep.proc.sanitized():
            sys.stderr.write('[ASan build: RSS holds its quarantine, bound not checked] ')
        else:
            self.assertLess(growth, STALL_GROWTH_LIMIT, sys_note)
        if sub.call.done():     # code() would block on a live call
            self.fail('the stalled stream was ended: %s %r' % (
                sub.call.code(), sub.call.details()))

        # Now read: all n, in inbox order, each once.
        sub.start()
        ds = sub.wait_for(n, max(60.0, n / 500.0))
        ids = [d.message.msg_id for d in ds]
        self.assertEqual(len(set(ids)), n, 'a message was delivered twice')
        self.assertEqual(set(ids), {'st-%06d' % i for i in range(n)})
        self.assertEqual([h.cursor_seq(d.cursor) for d in ds], list(range(1, n + 1)))
        pos = {mid: k for k, mid in enumerate(ids)}
        for k in range(STALL_LANES):
            lane_pos = [pos['st-%06d' % i] for i in range(k, n, STALL_LANES)]
            self.assertEqual(lane_pos, sorted(lane_pos), 'lane %d out of order' % k)
        for d in ds:
            i = int(d.message.msg_id[3:])
            m = d.message
            self.assertEqual((m.sender_uid, m.receiver_uid, m.msg_type, m.send_time_ms),
                             (senders[i % STALL_LANES], b_uid, i % 7, receipts[i].send_time_ms))
            self.assertEqual(m.content, content_of(m.msg_id, size))
        offline = sorted(i for i, rc in receipts.items() if not rc.online)
        self.assertEqual(len(offline), 0, 'receipt.online false while B was subscribed, '
                         'e.g. messages %s' % offline[:10])

        # The last Delivery's cursor acks all n (also making room under the
        # 100000-message inbox quota); nothing after the n: a sentinel comes
        # next.
        self.assertEqual(dep.fast_client(b_uid).ack(ds[-1].cursor).deleted, n)
        last = self.send_seq(watcher, b_uid, 'sentinel', 1, online=True)
        ds = sub.wait_for(n + 1, DELIVERY_BOUND_S)
        self.assertEqual(ds[-1].message.msg_id, last[0].msg_id)
        self.assertEqual(h.cursor_seq(ds[-1].cursor), n + 1)
        self.assertEqual(len(sub), n + 1)

    def test_silently_dead_client_is_dropped_by_keepalive_and_loses_nothing(self):
        dep = self.dep = self.serve(shards=1, extra_args=[
            '--keepalive-time-ms', '1000', '--keepalive-timeout-ms', '1000'])
        a_uid, b_uid = h.uid('A'), h.uid('B')
        a = dep.fast_client(a_uid)                  # direct
        b_direct = dep.fast_client(b_uid)           # direct
        relay = self.relay(dep.port)
        b_relayed = h.Client(dep.channel(relay.port), dep.fast_token(b_uid), b_uid)

        sub = self.subscribe(b_relayed)
        h.wait_presence(a, b_uid, True, ONLINE_BOUND_S)
        self.assertEqual(relay.connections, 1)
        before = self.send_seq(a, b_uid, 'ka0', 2, online=True)
        self.assertDeliveries(sub.wait_for(2, DELIVERY_BOUND_S), before, 1)

        relay.freeze()            # the network vanishes: no FIN, no RST
        t_freeze = time.monotonic()
        during = self.send_seq(a, b_uid, 'ka1', 3)     # stored; pushed into the void
        h.wait_presence(a, b_uid, False,
                        max(0.0, t_freeze + KEEPALIVE_OFFLINE_BOUND_S - time.monotonic()))
        sys.stderr.write('\n[offline %.1f s after the freeze] ' % (time.monotonic() - t_freeze))
        after = self.send_seq(a, b_uid, 'ka2', 2, online=False)

        # Nothing was acked: a later Pull (direct) gets all of them.
        page = b_direct.pull('', page_size=100)
        self.assertEqual([m.msg_id for m in page.messages],
                         [s.msg_id for s in before + during + after])
        self.assertEqual([m.send_time_ms for m in page.messages],
                         [s.receipt.send_time_ms for s in before + during + after])
        self.assertFalse(page.more)
        self.assertEqual(len(sub), 2)

    def test_imboxctl_watch_shows_backlog_then_live_acks_and_dedups(self):
        """The reference client's live view, as a person runs it: backlog,
        then live messages, each shown once, acked as shown; SIGTERM stops it
        cleanly (exit 0) and leaves nothing waiting."""
        dep = self.dep = self.serve(shards=1)
        a_uid, b_uid = h.uid('A'), h.uid('B')
        a, b = dep.fast_client(a_uid), dep.fast_client(b_uid)
        sent = self.send_seq(a, b_uid, 'w0', 2)          # backlog
        home = tempfile.mkdtemp(prefix='imbox-watch-')
        self.addCleanup(shutil.rmtree, home, True)
        ctl = os.path.join(os.path.dirname(h.IMBOX_BIN), 'imboxctl')
        env = dict(os.environ, HOME=home, IMBOX_ADDR='127.0.0.1:%d' % dep.port,
                   IMBOX_TOKEN=dep.token(b_uid))
        w = subprocess.Popen([ctl, 'watch'], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        self.addCleanup(lambda: w.poll() is None and os.killpg(w.pid, signal.SIGKILL))
        lines, got = [], threading.Event()

        def read():
            for raw in w.stdout:
                lines.append(raw.decode('utf-8', 'replace').rstrip('\n'))
                if sum(' w1-' in x for x in lines) == 2:
                    got.set()
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        h.wait_presence(a, b_uid, True, ONLINE_BOUND_S)
        sent += self.send_seq(a, b_uid, 'w1', 2, online=True)    # live
        self.assertTrue(got.wait(DELIVERY_BOUND_S), 'watch showed: %r' % lines)
        os.killpg(w.pid, signal.SIGTERM)
        self.assertEqual(w.wait(timeout=10), 0, 'watch exit status; output %r' % lines)
        # The process is gone, but its last lines may still be in the pipe:
        # the reader ends at EOF (it missed the summary line once in CI).
        reader.join(10)
        self.assertFalse(reader.is_alive(), 'watch output not closed: %r' % lines)
        shown = [x for x in lines if x.startswith('[')]
        self.assertEqual([x.split()[2].rstrip(':') for x in shown], [m.msg_id for m in sent])
        self.assertTrue(all(x.split()[1] == a_uid for x in shown), shown)
        self.assertIn('4 shown, 0 duplicates hidden', lines[-1])
        self.assertEqual(b.counts().total, 0, 'watch acks what it shows')
        h.wait_presence(a, b_uid, False, 1.0)
        with open(os.path.join(home, '.imboxctl-seen')) as f:
            seen = f.read()
        for m in sent:
            self.assertIn(m.msg_id, seen)


if __name__ == '__main__':
    unittest.main()
