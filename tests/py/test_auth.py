"""Identity and isolation (docs/PROTOCOL.md "Identity: the token", "The
cursor"): a caller only ever sees and acks its own inbox; a foreign cursor is
INVALID_ARGUMENT and deletes nothing; every kind of bad credential is
UNAUTHENTICATED on every Inbox method and changes nothing; the health check
needs no token.

Run: /usr/bin/python3 -m unittest -v test_auth   (from tests/py).
"""

import os
import time
import unittest

import grpc

import imbox_harness as h

UNAUTH = grpc.StatusCode.UNAUTHENTICATED
INVALID = grpc.StatusCode.INVALID_ARGUMENT


class AuthTest(h.ImboxTestCase):

    @classmethod
    def setUpClass(cls):
        cls.dep = cls.class_deployment(h.ImboxServer(shards=4))

    def setUp(self):
        # C sends 3 messages to A and 2 to B.
        self.a_uid, self.b_uid, self.c_uid = h.uid('A'), h.uid('B'), h.uid('C')
        self.a = self.dep.client(self.a_uid)
        self.b = self.dep.client(self.b_uid)
        c = self.dep.client(self.c_uid)
        self.a_ids = [h.new_msg_id('toA') for _ in range(3)]
        self.b_ids = [h.new_msg_id('toB') for _ in range(2)]
        for mid in self.a_ids:
            c.send1(mid, self.a_uid, content=b'secret for A')
        for mid in self.b_ids:
            c.send1(mid, self.b_uid, content=b'for B')
        self.a_before = self.a.snapshot()
        self.b_before = self.b.snapshot()
        self.assertEqual(self.a_before[0], 3)
        self.assertEqual(self.a_before[2], self.a_ids)
        self.assertEqual(self.b_before[2], self.b_ids)

    def assertUnchanged(self):
        self.assertEqual(self.a.snapshot(), self.a_before, "A's inbox changed")
        self.assertEqual(self.b.snapshot(), self.b_before, "B's inbox changed")

    # ---------------------------------------------------------- isolation

    def test_b_sees_only_its_own_inbox(self):
        page = self.b.pull('', page_size=1000)
        self.assertEqual([m.msg_id for m in page.messages], self.b_ids)
        self.assertEqual({m.receiver_uid for m in page.messages}, {self.b_uid})
        for s in ('', self.c_uid, self.a_uid):
            for m in self.b.pull('', page_size=1000, sender_uid=s).messages:
                self.assertNotIn(m.msg_id, self.a_ids)
                self.assertEqual(m.receiver_uid, self.b_uid)
        counts = self.b.counts()
        self.assertEqual(counts.total, 2)
        self.assertEqual([(s.sender_uid, s.count) for s in counts.senders], [(self.c_uid, 2)])

        # B drains and acks its inbox: A keeps everything.
        res = h.drain(self.b, page_size=1)
        self.assertEqual([m.msg_id for m in res.messages], self.b_ids)
        self.assertEqual(self.b.counts().total, 0)
        self.assertEqual(self.b.ack(page.cursor).deleted, 0)
        self.assertEqual(self.a.snapshot(), self.a_before)

    def test_sender_uid_comes_from_the_token(self):
        page = self.a.pull('')
        self.assertEqual({m.sender_uid for m in page.messages}, {self.c_uid})
        # B sends to A: the message says B, whatever B might wish.
        mid = h.new_msg_id('fromB')
        self.b.send1(mid, self.a_uid)
        m = [m for m in self.a.pull('', page_size=1000).messages if m.msg_id == mid]
        self.assertEqual(len(m), 1)
        self.assertEqual(m[0].sender_uid, self.b_uid)

    def test_a_cursor_of_a_used_by_b_is_invalid_and_deletes_nothing(self):
        a_page = self.a.pull('', page_size=1000)
        a_cursor = a_page.cursor
        a_first = self.a.pull('', page_size=1).cursor
        for cur in (a_cursor, a_first):
            self.assertRpcError(INVALID, self.b.pull, cur)
            self.assertUnchanged()
            self.assertRpcError(INVALID, self.b.pull, cur, page_size=1000)
            self.assertUnchanged()
            self.assertRpcError(INVALID, self.b.pull, cur, sender_uid=self.c_uid)
            self.assertUnchanged()
            self.assertRpcError(INVALID, self.b.ack, cur)
            self.assertUnchanged()
        # A's conversation cursor too.
        a_conv = self.a.pull('', sender_uid=self.c_uid).cursor
        self.assertRpcError(INVALID, self.b.pull, a_conv, sender_uid=self.c_uid)
        self.assertRpcError(INVALID, self.b.ack, a_conv)
        self.assertUnchanged()
        # A cursor of B's own with the same seq number is fine for B and
        # does not touch A.
        self.assertEqual(self.b.ack(self.b.pull('', page_size=1000).cursor).deleted, 2)
        self.assertEqual(self.a.snapshot(), self.a_before)
        # And A's cursor still works for A.
        self.assertEqual(self.a.ack(a_cursor).deleted, 3)

    # ---------------------------------------------------------- bad tokens

    def bad_credentials(self):
        """(name, metadata) pairs that must all be UNAUTHENTICATED."""
        secret = self.dep.secret()
        good = self.a.token
        now = int(time.time())

        other = h.ImboxServer()           # only for its data dir and secret
        self.addCleanup(other.cleanup)
        os.makedirs(other.data_dir)
        foreign = h.cli_token(other.data_dir, self.a_uid)
        self.assertNotEqual(h.read_secret(other.data_dir), secret)

        raw = h.b64url_nopad_decode(good)
        flipped = bytearray(raw)
        flipped[-1] ^= 0x01                                 # one MAC bit
        flipped_first = bytearray(raw)
        flipped_first[-32] ^= 0x80                          # another MAC bit
        u, exp, mac = h.parse_token(good)
        forged_uid = h.b64url_nopad(self.b_uid.encode() + b'.' + str(exp).encode() + b'.' + mac)
        forged_exp = h.b64url_nopad(u.encode() + b'.' + str(exp + 1000).encode() + b'.' + mac)

        def bearer(t):
            return (('authorization', 'Bearer ' + t),)

        return [
            ('no metadata', ()),
            ('empty authorization', (('authorization', ''),)),
            ('Bearer only', (('authorization', 'Bearer '),)),
            ('Bearer garbage', bearer('garbage!!')),
            ('Bearer valid base64 garbage', bearer(h.b64url_nopad(b'x' * 40))),
            ('token without Bearer', (('authorization', good),)),
            ('Basic scheme', (('authorization', 'Basic ' + good),)),
            ('token in another header', (('x-token', 'Bearer ' + good),)),
            ('token of another secret', bearer(foreign)),
            ('expired token', bearer(h.make_token(secret, self.a_uid, now - 10))),
            ('token with expiry 0', bearer(h.make_token(secret, self.a_uid, 0))),
            ('one flipped MAC bit (last)', bearer(h.b64url_nopad(bytes(flipped)))),
            ('one flipped MAC bit (first)', bearer(h.b64url_nopad(bytes(flipped_first)))),
            ('MAC of A on uid B', bearer(forged_uid)),
            ('MAC of A on another expiry', bearer(forged_exp)),
            ('truncated MAC', bearer(h.b64url_nopad(raw[:-1]))),
            ('no MAC', bearer(h.b64url_nopad(self.a_uid.encode() + b'.' +
                                             str(now + 100).encode()))),
            ('MAC of an empty uid', bearer(h.make_token(secret, '', now + 100))),
            ('MAC of a 65-byte uid', bearer(h.make_token(secret, 'u' * 65, now + 100))),
            ('MAC of a uid with a control char',
             bearer(h.make_token(secret, 'bad\x01uid', now + 100))),
            ('MAC of a uid with invalid UTF-8',
             bearer(h.make_token(secret, b'bad\xffuid', now + 100))),
            ('MAC of a non-decimal expiry',
             bearer(h.make_token(secret, self.a_uid, b'12x4567890'))),
            ('MAC of a negative expiry',
             bearer(h.make_token(secret, self.a_uid, b'-' + str(now + 100).encode()))),
            ('MAC of an empty expiry', bearer(h.make_token(secret, self.a_uid, b''))),
        ]

    def test_bad_credentials_are_unauthenticated_for_every_method(self):
        a_cursor = self.a.pull('', page_size=1000).cursor
        calls = {
            'Send': lambda c: c.send(h.new_msg_id('bad'), [self.a_uid, self.b_uid]),
            'Pull': lambda c: c.pull(a_cursor),
            'Pull (conversation)': lambda c: c.pull('', sender_uid=self.c_uid),
            'Ack': lambda c: c.ack(a_cursor),
            'Counts': lambda c: c.counts(),
        }
        ch = self.dep.channel()
        for name, md in self.bad_credentials():
            client = _FixedMetadataClient(ch, md)
            for mname, fn in calls.items():
                with self.subTest(credential=name, method=mname):
                    self.assertRpcError(UNAUTH, fn, client)
        self.assertUnchanged()

    def test_expired_cli_token_is_refused(self):
        t = self.dep.token(self.a_uid, ttl=1)
        u, exp, _ = h.parse_token(t)
        self.assertEqual(u, self.a_uid)
        client = h.Client(self.dep._shared_channel(), t)
        # Bounded poll until the server refuses it (exp + a little slack).
        deadline = time.monotonic() + 10
        while True:
            try:
                client.counts()
            except grpc.RpcError as e:
                self.assertEqual(e.code(), UNAUTH, e.details())
                self.assertGreaterEqual(time.time(), exp - 1)
                break
            self.assertLess(time.monotonic(), deadline, 'a 1 s token still works after 10 s')
            time.sleep(0.1)
        self.assertUnchanged()

    def test_cli_token_format_matches_protocol(self):
        before = int(time.time())
        t = self.dep.token('dotted.uid.with.dots', ttl=3600)
        u, exp, mac = h.parse_token(t)
        self.assertEqual(u, 'dotted.uid.with.dots')
        self.assertTrue(before + 3600 <= exp <= int(time.time()) + 3600 + 1, exp)
        self.assertEqual(h.make_token(self.dep.secret(), u, exp), t)
        self.assertNotIn('=', t)
        # Default TTL: 86400 s.
        out = h.run_cli(['token', '--uid', 'x', '--data-dir', self.dep.data_dir])
        _, exp, _ = h.parse_token(out.strip().splitlines()[-1])
        self.assertTrue(before + 86400 <= exp <= int(time.time()) + 86400 + 1, exp)
        # A dotted uid works end to end, and a Python-made token is accepted.
        dotted = h.Client(self.dep._shared_channel(), t, u)
        self.assertEqual(dotted.counts().total, 0)
        made = h.Client(self.dep._shared_channel(),
                        h.make_token(self.dep.secret(), self.a_uid, int(time.time()) + 60))
        self.assertEqual(made.counts().total, 3)

    def test_health_check_needs_no_token(self):
        ch = self.dep.channel()
        self.assertEqual(h.health_check(ch, timeout=5), h.HEALTH_SERVING)
        # Also with a bad token attached.
        call = ch.unary_unary('/grpc.health.v1.Health/Check',
                              request_serializer=lambda b: b,
                              response_deserializer=lambda b: b)
        self.assertEqual(call(b'', timeout=5, metadata=(('authorization', 'Bearer x'),)),
                         h.HEALTH_SERVING)


class _FixedMetadataClient(h.Client):
    """A Client whose metadata is given as is (possibly none)."""

    def __init__(self, channel, metadata):
        super().__init__(channel, None)
        self.fixed = tuple(metadata)

    @property
    def metadata(self):
        return self.fixed


if __name__ == '__main__':
    unittest.main()
