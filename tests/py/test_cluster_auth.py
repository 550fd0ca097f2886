"""Cluster-internal traffic is authenticated (docs/RELIABILITY.md, "Cluster-
internal traffic: authenticated and encrypted"): a shard's port admits only
peers that hold the cluster secret.

  * A raw ZMTP 3.0 peer (plain sockets, no ZeroMQ library) that greets with
    the NULL mechanism, says READY as a DEALER and sends a well-formed batch
    [8-byte id][ShardRequest] storing a message with a forged sender gets
    nothing but the shard's greeting (and at most an ERROR command) before
    the shard closes the connection; the message is not stored (a Pull of
    the receiver through a real gateway finds nothing), and the shard goes
    on serving the real gateway.
  * A gateway holding another secret: its Sends answer UNAVAILABLE within
    the shard timeout, the shard logs that it refused an unauthenticated
    peer (one line, however many handshakes it refused meanwhile), and
    nothing crashes.

Run: /usr/bin/python3 -m unittest -v test_cluster_auth   (from tests/py).
"""

import os
import socket
import struct
import time
import unittest

import grpc

import imbox_harness as h

UNAVAILABLE = 14
INBOX = b'imbox.v1.Inbox'  # its Health status: every shard reached
RAW_BOUND_S = 10.0      # the shard closes a refused peer well before this


def zmtp_greeting(mechanism):
    """The 64-byte ZMTP 3.0 greeting (RFC 23): signature, version 3.0, the
    mechanism padded to 20 bytes, as-server 0, filler."""
    return (b'\xff' + b'\x00' * 8 + b'\x7f' + b'\x03\x00' +
            mechanism.ljust(20, b'\x00') + b'\x00' + b'\x00' * 31)


def zmtp_frame(body, more=False, command=False):
    flags = (0x01 if more else 0) | (0x04 if command else 0)
    if len(body) < 256:
        return bytes([flags]) + bytes([len(body)]) + body
    return bytes([flags | 0x02]) + struct.pack('>Q', len(body)) + body


def zmtp_ready(socket_type):
    """The NULL mechanism's READY command with one property, Socket-Type."""
    prop = b'\x0bSocket-Type' + struct.pack('>I', len(socket_type)) + socket_type
    return zmtp_frame(b'\x05READY' + prop, command=True)


def store_request(sender, msg_id, receiver, content):
    """ShardRequest{store: StoreOp{sender, msg_id, content, receivers}}
    (proto/imbox/internal/v1/shard.proto), encoded by hand."""
    op = (h.field_len(1, sender) + h.field_len(2, msg_id) + h.field_len(4, content) +
          h.field_len(5, receiver))
    return h.field_len(1, op)


def read_frames(data):
    """Splits ZMTP frames after the greeting: [(flags, body)]; a partial
    frame at the end is left out."""
    out, i = [], 0
    while i + 2 <= len(data):
        flags = data[i]
        if flags & 0x02:
            if i + 9 > len(data):
                break
            n, i = struct.unpack('>Q', data[i + 1:i + 9])[0], i + 9
        else:
            n, i = data[i + 1], i + 2
        if i + n > len(data):
            break
        out.append((flags, data[i:i + n]))
        i += n
    return out


class ClusterAuthTest(h.ImboxTestCase):

    @classmethod
    def setUpClass(cls):
        cls.dep = cls.class_deployment(h.ImboxCluster(nshards=1, ngateways=1))

    def shard_log(self):
        with open(self.dep.shard_procs[0].log_path, 'rb') as f:
            return f.read().decode('utf-8', 'replace')

    def assert_gateway_still_served(self):
        """A Send and a Pull through the real gateway work."""
        self.dep.shard_procs[0].check_alive()
        self.dep.gw_proc.check_alive()
        a, b = h.uid('ok-a'), h.uid('ok-b')
        mid = h.new_msg_id('ok')
        r = self.dep.fast_client(a).send1(mid, b, content=b'still here')
        self.assertEqual(r.code, 0)
        page = self.dep.fast_client(b).pull('', page_size=10)
        self.assertEqual([m.msg_id for m in page.messages], [mid])

    def test_raw_null_peer_cannot_store(self):
        victim, forged = h.uid('victim'), h.uid('alice')
        msg_id = h.new_msg_id('forged')
        batch = (zmtp_frame(struct.pack('>Q', 1), more=True) +
                 zmtp_frame(store_request(forged, msg_id, victim, b'pay mallory')))
        got = b''
        closed = False
        with socket.create_connection(('127.0.0.1', self.dep.shard_ports[0]), timeout=5) as s:
            s.settimeout(1.0)
            try:
                s.sendall(zmtp_greeting(b'NULL') + zmtp_ready(b'DEALER') + batch)
            except (BrokenPipeError, ConnectionResetError):
                closed = True
            deadline = time.monotonic() + RAW_BOUND_S
            while not closed and time.monotonic() < deadline:
                try:
                    chunk = s.recv(65536)
                except socket.timeout:
                    continue
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                got += chunk
            else:
                if not closed:
                    self.fail('the shard kept the NULL peer connected for %.0f s' % RAW_BOUND_S)
        # What came back: at most the shard's greeting (mechanism CURVE),
        # then nothing but commands, and no READY nor any message frame.
        if got:
            self.assertGreaterEqual(len(got), 10, got)
            self.assertEqual(got[0], 0xff)
            if len(got) >= 32:
                self.assertEqual(got[12:32].rstrip(b'\x00'), b'CURVE')
            for flags, body in read_frames(got[64:]):
                self.assertTrue(flags & 0x04, 'a message frame came back: %r' % body)
                self.assertTrue(body.startswith(b'\x05ERROR'), 'command %r' % body[:16])
        # Not stored: the victim's inbox through the real gateway is empty.
        page = self.dep.fast_client(victim).pull('', page_size=100)
        self.assertEqual(list(page.messages), [])
        self.assertEqual(self.dep.fast_client(victim).counts().total, 0)
        self.assert_gateway_still_served()

    def test_gateway_with_another_secret(self):
        root = self.dep.root
        other_dir = os.path.join(root, 'alien')
        other = h.write_secret(os.path.join(other_dir, 'auth.secret'))
        port = h.free_port()
        timeout_ms = 2000
        proc = h.Proc('gateway-alien', [
            h.IMBOX_BIN, 'gateway', '--listen', '127.0.0.1:%d' % port,
            '--shards', 'tcp://127.0.0.1:%d' % self.dep.shard_ports[0],
            '--data-dir', other_dir, '--secret-file', other,
            '--shard-timeout-ms', str(timeout_ms)], root).start()
        self.addCleanup(proc.terminate)
        procs = self.dep.procs + [proc]
        h.wait_listening(port, procs)
        ch = self.dep.channel(port)
        # It answers: the gateway itself is SERVING, imbox.v1.Inbox is
        # NOT_SERVING: it reaches no shard (docs/PROTOCOL.md "Health").
        deadline = time.monotonic() + h.READY_TIMEOUT_S
        while True:
            proc.check_alive()
            try:
                health = h.health_check(ch, service=INBOX)
                break
            except grpc.RpcError as e:
                self.assertLess(time.monotonic(), deadline, 'no Health answer: %s' % e)
                time.sleep(0.05)
        self.assertEqual(health, b'\x08\x02')
        secret = h.read_secret(other_dir)
        u = h.uid('alien')
        c = h.Client(ch, h.make_token(secret, u, int(time.time()) + 3600), u)
        for i in range(5):
            t0 = time.monotonic()
            r = c.send(h.new_msg_id('alien'), [h.uid('someone')], content=b'x')
            took = time.monotonic() - t0
            self.assertEqual(r.receipts[0].code, UNAVAILABLE, r)
            self.assertLess(took, timeout_ms / 1000.0 + 1.0)
        # The shard says so, once per window however many it refused.
        deadline = time.monotonic() + h.READY_TIMEOUT_S
        while 'unauthenticated peer' not in self.shard_log():
            self.assertLess(time.monotonic(), deadline, 'no refusal logged:\n' + self.shard_log())
            time.sleep(0.05)
        # An observation window, not a wait for readiness: the alien
        # gateway reconnects at least once a second, and each attempt is
        # refused, but the shard writes no second line within 10 s.
        time.sleep(2.5)
        lines = [l for l in self.shard_log().splitlines() if 'unauthenticated peer' in l]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn('refused', lines[0])
        proc.check_alive()
        self.assertEqual(h.health_check(ch, service=INBOX), b'\x08\x02')
        self.assertEqual(h.health_check(ch), b'\x08\x01')
        self.assert_gateway_still_served()


if __name__ == '__main__':
    unittest.main()
