"""Readiness (docs/PROTOCOL.md "Health"): grpc.health.v1.Health Check and
Watch on the gateway (imbox.v1.Inbox: SERVING only when every shard is
reached and says it can write; "": the gateway itself; both NOT_SERVING
while stopping) and on a shard's --health-listen
port. Requests and responses are raw bytes: HealthCheckRequest is field 1
(string service), HealthCheckResponse field 1 (varint status: 1 SERVING,
2 NOT_SERVING, 3 SERVICE_UNKNOWN).

Run: /usr/bin/python3 -m unittest -v test_health   (from tests/py).
"""

import queue
import threading
import time
import unittest

import grpc

import imbox_harness as h
from imbox_harness import field_len

SERVING = b'\x08\x01'
NOT_SERVING = b'\x08\x02'
SERVICE_UNKNOWN = b'\x08\x03'
BOUND_S = 10.0 * h.SLOW  # a change must show within this
_identity = lambda b: b  # noqa: E731


def check(channel, service=b'', timeout=2.0):
    call = channel.unary_unary('/grpc.health.v1.Health/Check',
                               request_serializer=_identity,
                               response_deserializer=_identity)
    return call(field_len(1, service) if service else b'', timeout=timeout)


class Watch:
    """A Watch stream read by a thread into a queue: ('msg', bytes), then
    ('end', status code) once the stream ends."""

    def __init__(self, channel, service=b''):
        call = channel.unary_stream('/grpc.health.v1.Health/Watch',
                                    request_serializer=_identity,
                                    response_deserializer=_identity)
        self.q = queue.Queue()
        self.it = call(field_len(1, service) if service else b'')
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()

    def _read(self):
        try:
            for m in self.it:
                self.q.put(('msg', m))
            self.q.put(('end', grpc.StatusCode.OK))
        except grpc.RpcError as e:
            self.q.put(('end', e.code()))

    def next(self, bound_s=BOUND_S):
        try:
            return self.q.get(timeout=bound_s)
        except queue.Empty:
            raise AssertionError('Watch: nothing within %.0f s' % bound_s)

    def expect(self, msg, bound_s=BOUND_S):
        """Bounded: the next message is msg."""
        kind, v = self.next(bound_s)
        if (kind, v) != ('msg', msg):
            raise AssertionError('Watch: expected %r, got %s %r' % (msg, kind, v))

    def cancel(self):
        self.it.cancel()
        self.t.join(timeout=BOUND_S)


INBOX = b'imbox.v1.Inbox'  # SERVING when every shard is reached; "": the gateway


def poll_check(test, channel, want, bound_s=BOUND_S, service=INBOX):
    """Bounded poll of Check until it answers want; returns the seconds."""
    t0 = time.monotonic()
    last = None
    while True:
        try:
            last = check(channel, service)
            if last == want:
                return time.monotonic() - t0
        except grpc.RpcError as e:
            last = '%s %s' % (e.code(), e.details())
        if time.monotonic() - t0 > bound_s:
            test.fail('Check is %r, not %r, after %.0f s' % (last, want, bound_s))
        time.sleep(0.05)


class ClusterHealthTest(h.ImboxTestCase):

    def test_readiness_follows_the_shards_and_the_stop(self):
        health_port = h.free_port()
        c = self.cluster(nshards=2)
        # Shard 1 again, with a health port (the harness starts shards alike).
        c.shard_procs[1].terminate()
        c.shard_args = ['--health-listen', '127.0.0.1:%d' % health_port]
        c.restart_shard(1)
        c.shard_args = []
        h.wait_listening(health_port, c.procs)
        hch = c.channel(health_port)
        poll_check(self, c.channel(), SERVING)

        # The shard's own port: SERVING for "", NOT_FOUND for anything else,
        # a Watch of it SERVING; no token needed, nothing else served.
        self.assertEqual(check(hch), SERVING)
        with self.assertRaises(grpc.RpcError) as e:
            check(hch, b'imbox.v1.Inbox')
        self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND)
        sw = Watch(hch)
        sw.expect(SERVING)
        sw.cancel()
        unknown = Watch(hch, b'nope')
        unknown.expect(SERVICE_UNKNOWN)
        unknown.cancel()
        send = hch.unary_unary('/imbox.v1.Inbox/Send', request_serializer=_identity,
                               response_deserializer=_identity)
        with self.assertRaises(grpc.RpcError) as e:
            send(b'', timeout=2.0)
        self.assertEqual(e.exception.code(), grpc.StatusCode.UNIMPLEMENTED)

        # The gateway: both served names; a Watch of an unknown service
        # gets SERVICE_UNKNOWN in the stream, Check of it NOT_FOUND.
        ch = c.channel()
        self.assertEqual(check(ch, b'imbox.v1.Inbox'), SERVING)
        with self.assertRaises(grpc.RpcError) as e:
            check(ch, b'nope')
        self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND)
        unknown = Watch(ch, b'nope')
        unknown.expect(SERVICE_UNKNOWN)
        unknown.cancel()

        w = Watch(ch, INBOX)
        w.expect(SERVING)
        gw = Watch(ch)  # "": the gateway itself, whatever the shards
        gw.expect(SERVING)
        c.kill9_shard(0)
        t_down = poll_check(self, ch, NOT_SERVING)
        w.expect(NOT_SERVING)
        # The other shard's users still need this gateway: "" stays SERVING.
        self.assertEqual(check(ch), SERVING)
        c.restart_shard(0)
        t_up = poll_check(self, ch, SERVING)
        w.expect(SERVING)
        self.assertEqual(check(ch), SERVING)
        print('\nhealth: NOT_SERVING %.2f s after kill -9 of a shard, SERVING %.2f s '
              'after its restart' % (t_down, t_up))

        # SIGTERM while the Watch is open: NOT_SERVING and/or the end of the
        # stream, and exit 0.
        rc = c.gw_proc.terminate()
        self.assertEqual(rc, 0, c.logs())
        for stream in (w, gw):
            seen = []
            while True:
                kind, v = stream.next()
                seen.append((kind, v))
                if kind == 'end':
                    break
                self.assertEqual(v, NOT_SERVING, seen)
            self.assertIn(seen[-1][1], (grpc.StatusCode.UNAVAILABLE,
                                        grpc.StatusCode.CANCELLED), seen)


class ServeHealthTest(h.ImboxTestCase):

    def test_serve_is_serving(self):
        s = self.serve(shards=2)
        ch = s.channel()
        self.assertEqual(check(ch), SERVING)
        self.assertEqual(check(ch, b'imbox.v1.Inbox'), SERVING)
        w = Watch(ch, b'imbox.v1.Inbox')
        w.expect(SERVING)
        rc = s.proc.terminate()
        self.assertEqual(rc, 0, s.logs())
        kind, v = w.next()
        if kind == 'msg':
            self.assertEqual(v, NOT_SERVING)
            kind, v = w.next()
        self.assertEqual(kind, 'end')


if __name__ == '__main__':
    unittest.main()
