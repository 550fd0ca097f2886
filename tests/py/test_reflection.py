"""Server reflection (docs/PROTOCOL.md "Reflection"): the bidirectional
stream /grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo on the
port of `imbox serve`, without a token, described from the descriptor set
built into the binary.

Requests are built with the Python messages of reflection.proto generated at
build time (IMBOX_PY_GEN/reflect); a FileDescriptorProto that comes back is
parsed with google.protobuf.descriptor_pb2 and compared with what
proto/imbox/v1/imbox.proto declares. grpcurl is not packaged in Debian 12,
so no grpcurl run here: the test speaks the protocol that grpcurl speaks.

Run: /usr/bin/python3 -m unittest -v test_reflection   (from tests/py).
"""

import queue
import time
import unittest

import grpc
from google.protobuf import descriptor_pb2

import imbox_harness as h
from reflect import reflection_pb2 as rpb

METHOD = '/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo'
SERVICES = {'imbox.v1.Inbox', 'grpc.health.v1.Health',
            'grpc.reflection.v1alpha.ServerReflection'}
NOT_FOUND = grpc.StatusCode.NOT_FOUND.value[0]
STEP_S = 10.0 * h.SLOW  # bound on one answer


class Stream:
    """One ServerReflectionInfo call: requests go in one at a time through a
    queue (raw bytes, or a request message), answers come out one at a
    time; close() half-closes."""

    _END = object()

    def __init__(self, channel):
        self.q = queue.Queue()
        call = channel.stream_stream(METHOD, request_serializer=lambda b: b,
                                     response_deserializer=lambda b: b)
        self.call = call(iter(self.q.get, self._END), timeout=h.RPC_TIMEOUT_S)

    def ask_raw(self, body):
        self.q.put(body)
        return rpb.ServerReflectionResponse.FromString(next(self.call))

    def ask(self, **fields):
        req = rpb.ServerReflectionRequest(**fields)
        resp = self.ask_raw(req.SerializeToString())
        return req, resp

    def close(self):
        self.q.put(self._END)


def parse_file(raw):
    fd = descriptor_pb2.FileDescriptorProto()
    fd.ParseFromString(raw)
    return fd


class ReflectionTest(h.ImboxTestCase):

    @classmethod
    def setUpClass(cls):
        cls.dep = cls.class_deployment(h.ImboxServer(shards=1))

    def stream(self):
        s = Stream(self.dep.channel())
        self.addCleanup(s.call.cancel)
        return s

    def files_of(self, resp):
        self.assertEqual(resp.WhichOneof('message_response'), 'file_descriptor_response',
                         resp)
        return [parse_file(b) for b in resp.file_descriptor_response.file_descriptor_proto]

    def test_list_services(self):
        s = self.stream()
        req, resp = s.ask(host='h1', list_services='')
        self.assertEqual(resp.original_request, req)
        self.assertEqual(resp.valid_host, 'h1')
        names = {x.name for x in resp.list_services_response.service}
        self.assertEqual(names, SERVICES)
        s.close()
        self.assertEqual(list(s.call), [])
        self.assertEqual(s.call.code(), grpc.StatusCode.OK)

    def test_describe_inbox(self):
        s = self.stream()
        req, resp = s.ask(file_containing_symbol='imbox.v1.Inbox')
        self.assertEqual(resp.original_request, req)
        files = self.files_of(resp)
        self.assertEqual([f.name for f in files], ['imbox/v1/imbox.proto'])
        fd = files[0]
        self.assertEqual(fd.package, 'imbox.v1')
        [svc] = [x for x in fd.service if x.name == 'Inbox']
        methods = {m.name: m for m in svc.method}
        self.assertEqual(sorted(methods), sorted(h.INBOX_METHODS))
        for name in h.INBOX_METHODS:
            m = methods[name]
            want_in = '.imbox.v1.%sRequest' % name
            want_out = '.imbox.v1.%s' % ('Delivery' if name == 'Subscribe'
                                         else name + 'Response')
            self.assertEqual((m.input_type, m.output_type), (want_in, want_out), name)
            self.assertEqual(m.server_streaming, name == 'Subscribe', name)
            self.assertFalse(m.client_streaming, name)
        # every type the methods name is declared in the same file
        types = {'.imbox.v1.' + t.name for t in fd.message_type}
        for m in svc.method:
            self.assertIn(m.input_type, types)
            self.assertIn(m.output_type, types)
        # the comments are there (source info): describe shows them
        self.assertTrue(fd.source_code_info.location)

    def test_symbols_and_files(self):
        """Methods, messages, fields and enum values resolve to their file;
        file_by_filename answers the same bytes; the three services' files
        describe themselves."""
        s = self.stream()
        for sym, fname in [('imbox.v1.Inbox.Subscribe', 'imbox/v1/imbox.proto'),
                           ('imbox.v1.SendRequest', 'imbox/v1/imbox.proto'),
                           ('imbox.v1.SendRequest.msg_id', 'imbox/v1/imbox.proto'),
                           ('grpc.health.v1.Health', 'grpc/health/v1/health.proto'),
                           ('grpc.health.v1.HealthCheckResponse.SERVING',
                            'grpc/health/v1/health.proto'),
                           ('grpc.reflection.v1alpha.ServerReflection',
                            'grpc/reflection/v1alpha/reflection.proto')]:
            _, resp = s.ask(file_containing_symbol=sym)
            self.assertEqual([f.name for f in self.files_of(resp)], [fname], sym)
            _, by_name = s.ask(file_by_filename=fname)
            self.assertEqual(by_name.file_descriptor_response,
                             resp.file_descriptor_response, fname)
        _, resp = s.ask(file_containing_symbol='grpc.reflection.v1alpha.ServerReflection')
        [fd] = self.files_of(resp)
        [m] = fd.service[0].method
        self.assertEqual(m.name, 'ServerReflectionInfo')
        self.assertTrue(m.client_streaming and m.server_streaming)

    def test_not_found_keeps_the_stream(self):
        s = self.stream()
        for kw in [dict(file_containing_symbol='imbox.v1.Nope'),
                   dict(file_containing_symbol='imbox.v1.Inbox\0'),
                   dict(file_containing_symbol='.imbox.v1.Inbox'),
                   dict(file_containing_symbol='x' * 60000),
                   dict(file_by_filename='imbox.proto'),
                   dict(file_containing_extension=rpb.ExtensionRequest(
                       containing_type='imbox.v1.SendRequest', extension_number=100)),
                   dict(all_extension_numbers_of_type='imbox.v1.Nope')]:
            req, resp = s.ask(**kw)
            self.assertEqual(resp.original_request, req)
            self.assertEqual(resp.WhichOneof('message_response'), 'error_response', kw)
            self.assertEqual(resp.error_response.error_code, NOT_FOUND, kw)
            self.assertTrue(resp.error_response.error_message)
        # a known message has no extensions: an empty list
        _, resp = s.ask(all_extension_numbers_of_type='imbox.v1.SendRequest')
        self.assertEqual(resp.all_extension_numbers_response.base_type_name,
                         'imbox.v1.SendRequest')
        self.assertEqual(list(resp.all_extension_numbers_response.extension_number), [])
        # and the stream still answers
        _, resp = s.ask(list_services='')
        self.assertEqual({x.name for x in resp.list_services_response.service}, SERVICES)
        # no request at all: UNIMPLEMENTED inside the stream
        _, resp = s.ask()
        self.assertEqual(resp.error_response.error_code,
                         grpc.StatusCode.UNIMPLEMENTED.value[0])
        s.close()
        self.assertEqual(list(s.call), [])
        self.assertEqual(s.call.code(), grpc.StatusCode.OK)

    def test_two_requests_on_one_stream(self):
        """Both sent before either answer is read: answered in order."""
        s = self.stream()
        a = rpb.ServerReflectionRequest(list_services='*')
        b = rpb.ServerReflectionRequest(file_by_filename='imbox/v1/imbox.proto')
        s.q.put(a.SerializeToString())
        s.q.put(b.SerializeToString())
        ra = rpb.ServerReflectionResponse.FromString(next(s.call))
        rb = rpb.ServerReflectionResponse.FromString(next(s.call))
        self.assertEqual((ra.original_request, rb.original_request), (a, b))
        self.assertEqual(len(ra.list_services_response.service), 3)
        self.assertEqual(self.files_of(rb)[0].name, 'imbox/v1/imbox.proto')

    def assertEndsInvalid(self, body, after_one=False):
        s = self.stream()
        if after_one:
            s.ask(list_services='')
        s.q.put(body)
        with self.assertRaises(grpc.RpcError) as e:
            next(s.call)
        self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT,
                         e.exception.details())

    def test_garbage_ends_the_stream(self):
        for body in [b'\xff\xff\xff',                       # a truncated varint tag
                     h.field_len(4, b'abc')[:-1],          # a string cut short
                     h.field_varint(4, 7),                 # symbol as a varint
                     h.field_len(4, b'\xc3\x28'),          # not UTF-8
                     h.field_len(5, h.field_len(2, b'x')),  # extension_number as bytes
                     b'\x00\x01',                          # field number 0
                     bytes([(9 << 3) | 4])]:               # an unmatched end-group
            self.assertEndsInvalid(body)
        # Garbage after a good request. Fixed bytes: random ones were a valid
        # request now and then (a field whose length covered the rest).
        # Here: unknown field 2035 (3 bytes), then field 8 whose length
        # (0xff x 8, 0x01) runs past the end.
        self.assertEndsInvalid(b'\x9a\x7f\x03\x5c\xe1\x10\x42' + b'\xff' * 8 + b'\x01',
                               after_one=True)

    def test_oversized_request_ends_the_stream(self):
        self.assertEndsInvalid(h.field_len(4, b'a' * (64 << 10)))

    def test_unknown_fields_and_groups_are_skipped(self):
        s = self.stream()
        body = (h.field_varint(99, 1) + h.varint((98 << 3) | 3) + h.field_varint(1, 5)
                + h.varint((98 << 3) | 4) + h.field_len(7, b''))
        resp = s.ask_raw(body)
        self.assertEqual(len(resp.list_services_response.service), 3)

    def test_open_stream_does_not_hold_the_stop(self):
        """SIGTERM with a reflection stream open (waiting for its next
        request): the server ends it and exits 0 at once, not after the
        grace period."""
        dep = self.serve(shards=1)
        s = Stream(dep.channel())
        s.ask(list_services='')
        t0 = time.monotonic()
        self.assertEqual(dep.proc.terminate(), 0)
        # under the stop's 3 s grace for calls in flight (IMBOX_GRACE_MS),
        # which a stream counted as one would have used up (measured 0.05 s)
        self.assertLess(time.monotonic() - t0, 2.5 * h.SLOW)
        with self.assertRaises(grpc.RpcError):
            next(s.call)

    def test_health_still_works(self):
        """The new method did not take Health's place (no token either)."""
        ch = self.dep.channel()
        self.assertEqual(h.health_check(ch), h.HEALTH_SERVING)


if __name__ == '__main__':
    unittest.main()
