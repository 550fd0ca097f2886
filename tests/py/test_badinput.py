"""Bad input (docs/PROTOCOL.md "Limits", "Status codes", "The cursor"):
every case has one exact status code, and is followed by a check that the
target inbox is unchanged (Counts, and a Pull from "" with page_size 1000
returning the same msg_ids as before). Field errors must name the field.

Each test gets a fresh receiver B holding 3 messages from A; B (and any other
receiver named in the bad request) is the inbox a wrongly accepted request
would change.

Run: /usr/bin/python3 -m unittest -v test_badinput   (from tests/py).
"""

import os
import struct
import unittest

import grpc

import imbox_harness as h
from imbox_harness import pb, field_len, field_varint, varint

INVALID = grpc.StatusCode.INVALID_ARGUMENT
UNAUTH = grpc.StatusCode.UNAUTHENTICATED
UNIMPL = grpc.StatusCode.UNIMPLEMENTED


B64URL = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'


def flip_char(s, i):
    """s with character i replaced by the base64url digit whose value
    differs in its highest bit: always a data bit, also in the last digit."""
    return s[:i] + B64URL[B64URL.index(s[i]) ^ 0x20] + s[i + 1:]


class BadInputTest(h.ImboxTestCase):

    @classmethod
    def setUpClass(cls):
        cls.dep = cls.class_deployment(h.ImboxServer(shards=4))

    def setUp(self):
        self.a_uid, self.b_uid = h.uid('A'), h.uid('B')
        self.a = self.dep.client(self.a_uid)
        self.b = self.dep.fast_client(self.b_uid)
        self.ids = [h.new_msg_id('pre%d' % k) for k in range(3)]
        for mid in self.ids:
            self.a.send1(mid, self.b_uid, content=b'before')
        self.before = self.b.snapshot()
        self.assertEqual(self.before[0], 3)
        self.assertEqual(self.before[2], self.ids)
        page = self.b.pull('', page_size=1000)
        self.b_cursor = page.cursor                         # seq 3, B's own
        self.b_cursor1 = self.b.pull('', page_size=1).cursor  # seq 1

    # ----------------------------------------------------------- helpers

    def assertUnchanged(self, *others):
        self.assertEqual(self.b.snapshot(), self.before, "B's inbox changed")
        for u in others:
            c = self.dep.fast_client(u)
            self.assertEqual(c.counts().total, 0, '%r got something' % u)

    def case(self, code, fn, *args, field=None, limits=(), others=(), **kw):
        """fn(*args, **kw) fails with `code`; the status message names
        `field` (and one of `limits`, when given); B and `others` are
        unchanged."""
        details = self.assertRpcError(code, fn, *args, **kw)
        if field is not None:
            self.assertIn(field, details, 'the status message must name the field')
        if limits:
            self.assertTrue(any(l in details for l in limits),
                            'the status message %r must name the limit %s' % (details, limits))
        self.assertUnchanged(*others)
        return details

    def send(self, msg_id='m-ok', receivers=None, content=b'', **kw):
        if receivers is None:
            receivers = [self.b_uid]
        return self.a.send(msg_id, receivers, content=content, **kw)

    # --------------------------------------------------------------- Send

    def test_send_empty_msg_id(self):
        self.case(INVALID, self.send, '', field='msg_id')

    def test_send_msg_id_129_bytes(self):
        self.case(INVALID, self.send, 'm' * 129, field='msg_id', limits=('128',))

    def test_send_msg_id_129_bytes_multibyte(self):
        # 43 x 3-byte characters = 129 bytes (43 characters).
        self.case(INVALID, self.send, '\u20ac' * 43, field='msg_id', limits=('128',))

    def test_send_msg_id_1000_bytes(self):
        self.case(INVALID, self.send, 'm' * 1000, field='msg_id')

    def test_send_msg_id_with_a_nul_is_refused(self):
        # PROTOCOL.md, Limits: msg_id is valid UTF-8 without a NUL byte. It
        # used to truncate silently, so "m\0a" and "m\0b" were one message.
        tail = '-' + os.urandom(4).hex()
        x = h.uid('X')
        for mid in ('nul\x00a' + tail, 'nul\x00b' + tail, '\x00', 'nul\x00'):
            with self.subTest(msg_id=repr(mid)):
                self.case(INVALID, self.send, mid, field='msg_id')
                self.case(INVALID, self.send, mid, [x, self.b_uid], field='msg_id',
                          others=(x,))
        # The clean prefix is still a new message afterwards.
        r = self.send('nul' + tail, [x]).receipts[0]
        self.assertEqual((r.code, r.duplicate), (0, False))

    def test_send_msg_id_invalid_utf8(self):
        # msg_id is a proto3 string: invalid UTF-8 must not be stored (a
        # Python receiver could not even parse its Pull response).
        raw = (field_len(1, b'bad\xff\xfeid') + field_len(2, self.b_uid) +
               field_len(4, b'x'))
        self.case(INVALID, self.a.raw, 'Send', raw)

    def test_send_no_receivers(self):
        self.case(INVALID, self.send, receivers=[], field='receiver_uids')

    def test_send_empty_receiver_uid(self):
        x = h.uid('X')
        self.case(INVALID, self.send, receivers=[self.b_uid, '', x], field='receiver_uids',
                  others=(x,))

    def test_send_receiver_uid_65_bytes(self):
        self.case(INVALID, self.send, receivers=[self.b_uid, 'u' * 65],
                  field='receiver_uids', limits=('64',))

    def test_send_receiver_uid_65_bytes_multibyte(self):
        # 32 x 2 bytes + 1 = 65 bytes in 33 characters.
        self.case(INVALID, self.send, receivers=[self.b_uid, '\u00e9' * 32 + 'x'],
                  field='receiver_uids', limits=('64',))

    def test_send_receiver_uid_200_bytes(self):
        self.case(INVALID, self.send, receivers=[self.b_uid, 'u' * 200],
                  field='receiver_uids')

    def test_send_receiver_uid_with_control_chars(self):
        for ch in ('\x01', '\x1f', '\t', '\n', '\x7f', '\u0080', '\u0085', '\u009f'):
            with self.subTest(char=repr(ch)):
                x = 'ctl%sx' % ch
                self.case(INVALID, self.send, h.new_msg_id(), [self.b_uid, x],
                          field='receiver_uids')

    def test_send_receiver_uid_with_nul_is_not_another_uid(self):
        # "B\0" must not be taken for "B" (C strings end at the NUL).
        for u in (self.b_uid + '\x00', self.b_uid + '\x00tail', '\x00' + self.b_uid):
            with self.subTest(uid=repr(u)):
                self.case(INVALID, self.send, h.new_msg_id(), [u], field='receiver_uids')

    def test_send_receiver_uid_invalid_utf8(self):
        # Python protobuf refuses to serialise it: build the request by hand.
        raw = (field_len(1, h.new_msg_id()) + field_len(2, self.b_uid) +
               field_len(2, b'bad\xff\xfeuid') + field_varint(3, 1) + field_len(4, b'x'))
        self.case(INVALID, self.a.raw, 'Send', raw)

    def test_send_receiver_uid_overlong_utf8(self):
        # An overlong encoding of "/" (0xC0 0xAF) is not valid UTF-8.
        raw = field_len(1, h.new_msg_id()) + field_len(2, b'\xc0\xaf' + self.b_uid.encode())
        self.case(INVALID, self.a.raw, 'Send', raw)

    def test_send_duplicate_receivers(self):
        self.case(INVALID, self.send, receivers=[self.b_uid, self.b_uid],
                  field='receiver_uids')

    def test_send_duplicate_receivers_not_adjacent(self):
        x = h.uid('X')
        self.case(INVALID, self.send, receivers=[x, self.b_uid, h.uid('Y'), x],
                  field='receiver_uids', others=(x,))

    def test_send_1001_receivers(self):
        others = [h.uid('R%04d' % k) for k in range(1000)]
        self.case(INVALID, self.send, receivers=[self.b_uid] + others,
                  field='receiver_uids', limits=('1000',), others=(others[0], others[-1]))

    def test_send_1025_receivers(self):
        others = [h.uid('R%04d' % k) for k in range(1024)]
        self.case(INVALID, self.send, receivers=[self.b_uid] + others,
                  field='receiver_uids', others=(others[0], others[-1]))

    def test_send_content_65537_bytes(self):
        self.case(INVALID, self.send, content=b'c' * 65537, field='content',
                  limits=('65536', '64 KiB', '64KiB'))

    def test_send_content_200_kib(self):
        self.case(INVALID, self.send, content=b'c' * (200 << 10), field='content')

    def test_send_request_over_4_mib(self):
        # gRPC's own limit on a request (PROTOCOL.md, Limits).
        self.case(grpc.StatusCode.RESOURCE_EXHAUSTED, self.send, content=b'c' * (5 << 20))

    def test_send_invalid_field_stores_nothing_for_the_valid_receivers(self):
        # All or nothing: B is valid, the second receiver is not.
        self.case(INVALID, self.send, 'all-or-nothing', [self.b_uid, 'u' * 65],
                  field='receiver_uids')
        # The msg_id was not burnt either: the corrected request stores it.
        r = self.send('all-or-nothing', [self.b_uid]).receipts[0]
        self.assertEqual((r.code, r.duplicate), (0, False))

    # --------------------------------------------------------------- Pull

    def test_pull_page_size_1001(self):
        self.case(INVALID, self.b.pull, '', page_size=1001, field='page_size',
                  limits=('1000',))
        self.case(INVALID, self.b.pull, self.b_cursor, page_size=1001, field='page_size')

    def test_pull_page_size_max_uint32(self):
        self.case(INVALID, self.b.pull, self.b_cursor, page_size=0xffffffff,
                  field='page_size')

    def test_pull_garbage_cursor(self):
        self.case(INVALID, self.b.pull, '!!!', field='cursor')

    def test_pull_cursor_wrong_length(self):
        good = h.b64url_nopad_decode(self.b_cursor)
        self.assertEqual(len(good), 26)     # whole-inbox cursor: n = 0
        for n in (1, 8, 9, 10, 25, 27, 32):
            with self.subTest(decoded_bytes=n):
                c = h.b64url_nopad((good * 2)[:n])
                self.case(INVALID, self.b.pull, c, field='cursor')

    def test_pull_cursor_one_flipped_character(self):
        # Every position: the version byte, the seq and the tag.
        for i in range(len(self.b_cursor)):
            with self.subTest(position=i):
                self.case(INVALID, self.b.pull, flip_char(self.b_cursor, i), field='cursor')

    def test_pull_cursor_forged_tag(self):
        # Right version and a seq that exists, tag all zeros / all ones.
        for tag in (b'\x00' * 16, b'\xff' * 16):
            with self.subTest(tag=tag[:1]):
                c = h.b64url_nopad(b'\x01' + struct.pack('>Q', 2) + b'\x00' + tag)
                self.case(INVALID, self.b.pull, c, field='cursor')

    def test_pull_cursor_bad_sender_length(self):
        # n claims more (or fewer) sender bytes than the cursor holds.
        v, seq, sender, tag = h.parse_cursor(self.b_cursor)
        for n in (1, 16, 200, 255):
            with self.subTest(n=n):
                raw = bytes([v]) + struct.pack('>Q', seq) + bytes([n]) + tag
                self.case(INVALID, self.b.pull, h.b64url_nopad(raw), field='cursor')
        conv = self.b.pull('', sender_uid=self.a_uid).cursor
        v, seq, sender, tag = h.parse_cursor(conv)
        raw = bytes([v]) + struct.pack('>Q', seq) + bytes([0]) + sender + tag
        self.case(INVALID, self.b.pull, h.b64url_nopad(raw), field='cursor')
        self.case(INVALID, self.b.ack, h.b64url_nopad(raw), field='cursor')

    def test_conversation_cursor_with_another_embedded_sender(self):
        # Take B's conversation cursor for A and write another sender into it
        # (the tag still names A): refused by Pull and by Ack.
        conv = self.b.pull('', sender_uid=self.a_uid).cursor
        v, seq, sender, tag = h.parse_cursor(conv)
        self.assertEqual(sender, self.a_uid.encode())
        for other in (h.uid('Z').encode(), sender[:-1] + b'Z', b''):
            raw = bytes([v]) + struct.pack('>Q', seq) + bytes([len(other)]) + other + tag
            c = h.b64url_nopad(raw)
            with self.subTest(sender=other):
                self.case(INVALID, self.b.ack, c, field='cursor')
                self.case(INVALID, self.b.pull, c, sender_uid=other.decode(), field='cursor')
                self.case(INVALID, self.b.pull, c, sender_uid=self.a_uid, field='cursor')

    def test_whole_inbox_cursor_made_into_a_conversation_cursor(self):
        # The whole-inbox tag with A written in as the sender.
        v, seq, _, tag = h.parse_cursor(self.b_cursor)
        a = self.a_uid.encode()
        c = h.b64url_nopad(bytes([v]) + struct.pack('>Q', seq) + bytes([len(a)]) + a + tag)
        self.case(INVALID, self.b.ack, c, field='cursor')
        self.case(INVALID, self.b.pull, c, sender_uid=self.a_uid, field='cursor')
        self.case(INVALID, self.b.pull, c, field='cursor')

    def test_pull_cursor_beyond_the_highest_seq(self):
        # A correctly signed cursor of B's, from the future.
        secret = self.dep.secret()
        for seq in (4, 1000000, 2 ** 64 - 1):
            with self.subTest(seq=seq):
                c = h.make_cursor(secret, self.b_uid, seq)
                self.case(INVALID, self.b.pull, c, field='cursor')
                self.case(INVALID, self.b.ack, c, field='cursor')

    def test_pull_cursor_wrong_version(self):
        c = h.make_cursor(self.dep.secret(), self.b_uid, 3, version=2)
        self.case(INVALID, self.b.pull, c, field='cursor')

    def test_pull_cursor_300_characters(self):
        self.case(INVALID, self.b.pull, self.b_cursor * 9, field='cursor')

    def test_pull_cursor_invalid_utf8(self):
        raw = field_len(1, b'\xff\xfe' + self.b_cursor.encode())
        self.case(INVALID, self.b.raw, 'Pull', raw)

    def test_pull_sender_uid_65_bytes(self):
        self.case(INVALID, self.b.pull, '', sender_uid='s' * 65, field='sender_uid',
                  limits=('64',))

    def test_pull_sender_uid_200_bytes(self):
        self.case(INVALID, self.b.pull, '', sender_uid='s' * 200, field='sender_uid')

    def test_pull_sender_uid_with_control_char(self):
        for u in (self.a_uid + '\x01', self.a_uid + '\x00', '\x7f' + self.a_uid):
            with self.subTest(uid=repr(u)):
                self.case(INVALID, self.b.pull, '', sender_uid=u, field='sender_uid')

    def test_pull_conversation_cursor_with_a_nul_aliased_sender(self):
        conv = self.b.pull('', sender_uid=self.a_uid).cursor
        self.case(INVALID, self.b.pull, conv, sender_uid=self.a_uid + '\x00x')

    # ---------------------------------------------------------------- Ack

    def test_ack_empty_cursor(self):
        self.case(INVALID, self.b.ack, '', field='cursor')

    def test_ack_garbage_cursor(self):
        self.case(INVALID, self.b.ack, '!!!', field='cursor')

    def test_ack_cursor_one_flipped_character(self):
        for i in (0, 5, 12, 20, len(self.b_cursor) - 1):
            with self.subTest(position=i):
                self.case(INVALID, self.b.ack, flip_char(self.b_cursor, i), field='cursor')

    def test_ack_cursor_wrong_length(self):
        c = h.b64url_nopad(h.b64url_nopad_decode(self.b_cursor)[:25])
        self.case(INVALID, self.b.ack, c, field='cursor')

    # --------------------------------------------------------- raw protobuf

    def test_garbage_protobuf(self):
        for method in ('Send', 'Pull', 'Ack', 'Counts'):
            for raw in (b'\xff\xff\xff', b'\xff' * 11, b'\x0f', b'\x00\x00'):
                with self.subTest(method=method, raw=raw):
                    self.case(INVALID, self.b.raw, method, raw)

    def test_empty_protobuf_to_send_and_ack(self):
        # Empty bytes are a valid empty message: empty msg_id / cursor.
        self.case(INVALID, self.a.raw, 'Send', b'', field='msg_id')
        self.case(INVALID, self.b.raw, 'Ack', b'', field='cursor')

    def test_truncated_protobuf(self):
        send = pb.SendRequest(msg_id=h.new_msg_id(), receiver_uids=[self.b_uid],
                              content=b'y' * 50).SerializeToString()
        pull = pb.PullRequest(cursor=self.b_cursor, page_size=10).SerializeToString()
        ack = pb.AckRequest(cursor=self.b_cursor).SerializeToString()
        for method, raw in (('Send', send[:-10]), ('Send', send[:3]),
                            ('Pull', pull[:-3]), ('Pull', pull[:-1] + b'\x80'),
                            ('Ack', ack[:-5]), ('Ack', ack[:1])):
            with self.subTest(method=method, raw=raw[:8]):
                self.case(INVALID, self.b.raw if method != 'Send' else self.a.raw,
                          method, raw)

    def test_field_with_wrong_wire_type(self):
        # msg_id (1, a string) as a varint: a decode error, or an empty msg_id.
        send = field_varint(1, 5) + field_len(2, self.b_uid) + field_len(4, b'x')
        self.case(INVALID, self.a.raw, 'Send', send)
        # cursor (1, a string) as a fixed64.
        ack = varint((1 << 3) | 1) + b'\x00' * 8
        self.case(INVALID, self.b.raw, 'Ack', ack)

    def test_huge_declared_length(self):
        for method, num in (('Send', 1), ('Send', 2), ('Send', 4), ('Pull', 1),
                            ('Pull', 3), ('Ack', 1)):
            for n in (2 ** 31 - 1, 2 ** 32 - 1, 2 ** 63 - 1):
                raw = varint((num << 3) | 2) + varint(n) + b'abc'
                with self.subTest(method=method, field=num, length=n):
                    self.case(INVALID, self.b.raw if method != 'Send' else self.a.raw,
                              method, raw)

    # ------------------------------------------------------ auth, methods

    def test_missing_metadata(self):
        for method, raw in (('Send', pb.SendRequest(msg_id='m', receiver_uids=[self.b_uid])),
                            ('Pull', pb.PullRequest(cursor=self.b_cursor)),
                            ('Ack', pb.AckRequest(cursor=self.b_cursor)),
                            ('Counts', pb.CountsRequest())):
            with self.subTest(method=method):
                self.case(UNAUTH, self.b.raw, method, raw.SerializeToString(), metadata=())

    def test_authorization_without_bearer(self):
        md = (('authorization', self.b.token),)
        for method, raw in (('Send', pb.SendRequest(msg_id='m', receiver_uids=[self.b_uid])),
                            ('Pull', pb.PullRequest(cursor=self.b_cursor)),
                            ('Ack', pb.AckRequest(cursor=self.b_cursor)),
                            ('Counts', pb.CountsRequest())):
            with self.subTest(method=method):
                self.case(UNAUTH, self.b.raw, method, raw.SerializeToString(), metadata=md)

    def test_auth_is_checked_before_the_body(self):
        # A bad token with a bad body: UNAUTHENTICATED, not INVALID_ARGUMENT.
        self.case(UNAUTH, self.b.raw, 'Send', b'\xff\xff\xff', metadata=())
        self.case(UNAUTH, self.b.raw, 'Ack', b'', metadata=())

    def test_two_authorization_headers_are_refused(self):
        # Which of two is meant is anyone's guess: neither is taken (it used
        # to be the last, so a bad one then B's acted as B).
        bad = 'Bearer ' + flip_char(self.b.token, 10)
        good = 'Bearer ' + self.b.token
        for md in ((('authorization', bad), ('authorization', good)),
                   (('authorization', good), ('authorization', bad)),
                   (('authorization', good), ('authorization', good))):
            with self.subTest(md=[v[:12] for _, v in md]):
                details = self.case(UNAUTH, self.b.raw, 'Pull',
                                    pb.PullRequest(cursor=self.b_cursor).SerializeToString(),
                                    metadata=md)
                self.assertIn('authorization', details)
                raw = pb.SendRequest(msg_id='two-auth', receiver_uids=[self.b_uid],
                                     content=b'x').SerializeToString()
                self.case(UNAUTH, self.a.raw, 'Send', raw, metadata=md)

    # An unknown field may come as a group (wire types 3 start, 4 end): a
    # well-formed one is skipped, as protobuf does; a broken one is refused.
    GROUP = (varint((9 << 3) | 3) + field_varint(1, 5) + field_len(2, b'in') +
             varint((10 << 3) | 3) + varint((10 << 3) | 4) +   # nested, empty
             varint((9 << 3) | 4))

    def test_unknown_group_fields_are_skipped(self):
        x = h.uid('X')
        g = self.GROUP
        raw = (g + field_len(1, 'grp-' + os.urandom(4).hex()) + g + field_len(2, x) +
               field_len(4, b'grouped') + g)
        r = pb.SendResponse.FromString(self.a.raw('Send', raw))
        self.assertEqual([(t.receiver_uid, t.code) for t in r.receipts], [(x, 0)])
        msgs = self.dep.fast_client(x).pull('').messages
        self.assertEqual([m.content for m in msgs], [b'grouped'])
        page = pb.PullResponse.FromString(self.b.raw(
            'Pull', g + field_varint(2, 1000) + g))
        self.assertEqual([m.msg_id for m in page.messages], self.ids)
        self.assertEqual(pb.CountsResponse.FromString(self.b.raw('Counts', g)).total, 3)
        self.assertUnchanged()

    def test_broken_groups_are_refused(self):
        x = h.uid('X')
        body = field_len(1, 'grp-bad') + field_len(2, x) + field_len(4, b'x')
        cases = {
            'not ended': varint((9 << 3) | 3) + field_varint(1, 5),
            'ended by another number': varint((9 << 3) | 3) + varint((8 << 3) | 4),
            'end without a start': varint((9 << 3) | 4),
            'nested too deep': varint((9 << 3) | 3) * 100 + varint((9 << 3) | 4) * 100,
            'a known field as a group': varint((1 << 3) | 3) + varint((1 << 3) | 4),
            # found by fuzz_send: a group of field number 0 was skipped
            'field number 0': varint((0 << 3) | 3) + varint((0 << 3) | 4),
        }
        for name, g in cases.items():
            with self.subTest(name):
                self.case(INVALID, self.a.raw, 'Send', body + g, others=(x,))
                self.case(INVALID, self.a.raw, 'Send', g + body, others=(x,))

    def test_health_check_of_a_long_service_name_is_not_found(self):
        call = self.b.channel.unary_unary('/grpc.health.v1.Health/Check',
                                          request_serializer=lambda b: b,
                                          response_deserializer=lambda b: b)
        for n in (63, 64, 65, 127, 128, 300, 5000):
            with self.subTest(n=n):
                self.assertRpcError(grpc.StatusCode.NOT_FOUND, call,
                                    field_len(1, 's' * n), timeout=10)
        # Served names still answer SERVING, also next to unknown fields.
        for req in (b'', field_len(1, 'imbox.v1.Inbox'),
                    self.GROUP + field_len(1, 'imbox.v1.Inbox') + field_varint(7, 1)):
            self.assertEqual(call(req, timeout=10), h.HEALTH_SERVING)
        self.assertRpcError(INVALID, call, b'\x0a\x05ab', timeout=10)  # truncated
        # found by fuzz_health: field number 0 was taken as an unknown field
        self.assertRpcError(INVALID, call, b'\x01' + bytes(8), timeout=10)

    def test_unknown_method(self):
        for name in ('Frobnicate', 'send', 'Send2', 'Counts/x'):
            with self.subTest(method=name):
                self.case(UNIMPL, self.b.raw, name, b'', timeout=10)

    def test_unknown_service(self):
        call = self.b.channel.unary_unary('/imbox.v1.Outbox/Send',
                                          request_serializer=lambda b: b,
                                          response_deserializer=lambda b: b)
        self.case(UNIMPL, call, b'', metadata=self.b.metadata, timeout=10)
        call = self.b.channel.unary_unary('/imbox.v2.Inbox/Pull',
                                          request_serializer=lambda b: b,
                                          response_deserializer=lambda b: b)
        self.case(UNIMPL, call, b'', metadata=self.b.metadata, timeout=10)

    def subscribe(self, cursor):
        """A Subscribe stream read to its end (a refused one ends at once)."""
        return list(self.b.stub.Subscribe(pb.SubscribeRequest(cursor=cursor),
                                          metadata=self.b.metadata, timeout=10))

    def test_subscribe_bad_cursors(self):
        # Forged, foreign, future, and a conversation's: refused, nothing acked.
        forged = h.b64url_nopad(b'\x01' + struct.pack('>Q', 2) + b'\x00' + b'\x00' * 16)
        self.case(INVALID, self.subscribe, forged, field='cursor')
        self.case(INVALID, self.subscribe, self.a.pull('').cursor, field='cursor')
        future = h.make_cursor(self.dep.secret(), self.b_uid, 10**6)
        self.case(INVALID, self.subscribe, future, field='cursor')
        self.case(INVALID, self.subscribe, 'x' * 300, field='cursor')
        conv = self.b.pull('', sender_uid=self.a_uid).cursor
        self.case(INVALID, self.subscribe, conv, field='cursor')

    def test_presence_bad_uids(self):
        def presence(uids):
            return self.b.stub.Presence(pb.PresenceRequest(uids=uids),
                                        metadata=self.b.metadata, timeout=10)
        self.case(INVALID, presence, ['u%d' % i for i in range(1001)], field='uids',
                  limits=('1000',))
        self.case(INVALID, presence, [self.a_uid, ''], field='uids[1]')
        self.case(INVALID, presence, ['ok', 'tab\there'], field='uids[1]')
        self.case(INVALID, presence, ['x' * 65], field='uids[0]', limits=('64',))
        self.assertEqual(list(presence([]).online), [])

    # ----------------------------------------- what is valid stays valid

    def test_limits_exactly_at_the_boundary_are_accepted(self):
        a = self.a
        # msg_id of 128 bytes, receiver uids of 64 bytes (also multibyte).
        r64 = h.uid('b64')
        r64 = r64 + 'x' * (64 - len(r64))
        r64mb = '\u00e9' * 32
        mid = 'm' * 120 + os.urandom(4).hex()
        self.assertEqual(len(mid), 128)
        rs = a.send(mid, [r64, r64mb], content=b'c' * 65536).receipts
        self.assertEqual([(r.receiver_uid, r.code) for r in rs], [(r64, 0), (r64mb, 0)])
        for u in (r64, r64mb):
            page = self.dep.fast_client(u).pull('', page_size=1000)
            self.assertEqual([m.msg_id for m in page.messages], [mid])
            self.assertEqual(page.messages[0].content, b'c' * 65536)
            self.assertEqual(page.messages[0].receiver_uid, u)
        # 1000 receivers in one Send.
        many = [h.uid('M%04d' % k) for k in range(1000)]
        rs = a.send(h.new_msg_id('many'), many).receipts
        self.assertEqual([r.receiver_uid for r in rs], many)
        self.assertEqual({r.code for r in rs}, {0})
        self.assertEqual(self.dep.fast_client(many[-1]).counts().total, 1)
        # page_size 1000, sender_uid of 64 bytes.
        self.assertEqual(len(self.b.pull('', page_size=1000, sender_uid='s' * 64).messages), 0)
        self.assertEqual(self.b.snapshot(), self.before)

    def test_cursor_format_matches_protocol(self):
        secret = self.dep.secret()
        self.assertEqual(h.parse_cursor(self.b_cursor)[:3], (1, 3, b''))
        self.assertEqual(self.b_cursor, h.make_cursor(secret, self.b_uid, 3))
        self.assertEqual(self.b_cursor1, h.make_cursor(secret, self.b_uid, 1))
        conv = self.b.pull('', sender_uid=self.a_uid, page_size=2).cursor
        self.assertEqual(h.parse_cursor(conv)[:3], (1, 2, self.a_uid.encode()))
        self.assertEqual(conv, h.make_cursor(secret, self.b_uid, 2, sender=self.a_uid))
        # The empty page of "" answers a cursor of seq 0.
        e_uid = h.uid('E')
        e = self.dep.fast_client(e_uid)
        empty = e.pull('')
        self.assertEqual(len(empty.messages), 0)
        self.assertEqual(empty.cursor, h.make_cursor(secret, e_uid, 0))
        self.assertEqual(e.ack(empty.cursor).deleted, 0)
        # A cursor made in Python from the secret acks exactly up to its seq.
        self.assertEqual(self.b.ack(h.make_cursor(secret, self.b_uid, 1)).deleted, 1)
        self.assertEqual([m.msg_id for m in self.b.pull('').messages], self.ids[1:])
        # A conversation cursor acks that conversation only, also with Ack.
        c_uid = h.uid('C')
        c_id = h.new_msg_id('fromC')
        self.dep.fast_client(c_uid).send1(c_id, self.b_uid)        # seq 4
        self.assertEqual(self.b.ack(h.make_cursor(secret, self.b_uid, 4,
                                                  sender=self.a_uid)).deleted, 2)
        self.assertEqual([m.msg_id for m in self.b.pull('').messages], [c_id])
        self.assertEqual(self.b.ack(h.make_cursor(secret, self.b_uid, 4)).deleted, 1)
        self.assertEqual(self.b.counts().total, 0)



class ConfiguredLimitsTest(h.ImboxTestCase):
    """The request limits are configurable (API.md "Limits"): a server
    started with lower ones enforces them, names them, and stores nothing."""

    def test_lowered_limits_are_enforced_and_named(self):
        dep = self.serve(shards=2, extra_args=['--max-receivers', '3', '--max-content', '10',
                                               '--max-page', '5'])
        a = dep.client(h.uid('A'))
        rcv = [h.uid('R') for _ in range(4)]
        details = self.assertRpcError(INVALID, a.send, h.new_msg_id('lim'), rcv)
        self.assertIn('receiver_uids', details)
        self.assertIn('3', details)
        details = self.assertRpcError(INVALID, a.send, h.new_msg_id('lim'), rcv[:1],
                                      content=b'x' * 11)
        self.assertIn('content', details)
        self.assertIn('10', details)
        b = dep.client(rcv[0])
        self.assertEqual(b.counts().total, 0, 'a refused Send stores nothing')

        # At the limits, everything is accepted.
        for k in range(6):
            r = a.send(h.new_msg_id('ok%d' % k), rcv[:3], content=b'y' * 10).receipts
            self.assertEqual([x.code for x in r], [0, 0, 0])
        details = self.assertRpcError(INVALID, b.pull, '', page_size=6)
        self.assertIn('page_size', details)
        self.assertIn('5', details)
        page = b.pull('', page_size=5)
        self.assertEqual(len(page.messages), 5)
        self.assertTrue(page.more)
        # page_size 0 means the default (100), capped by the lowered maximum.
        self.assertEqual(len(b.pull('').messages), 5)


if __name__ == '__main__':
    unittest.main()
