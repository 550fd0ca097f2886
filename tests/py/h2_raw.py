"""A raw HTTP/2 gRPC client on hyper-h2 (Debian's python3-h2), for what
grpcio will not do: a connection whose client never reads (its initial
window 0), many streams at once, headers that break the rules.

    c = H2Client(port, initial_window=0)
    sid = c.call('/imbox.v1.Inbox/Pull', body, [('authorization', 'Bearer ' + t)])
    c.pump_until(lambda: all(c.responded(s) for s in sids), bound_s=10)

Every gRPC message is the 5-byte prefix (0, length big-endian) and the
protobuf bytes. Only the response headers, trailers and resets are kept;
with a zero window no DATA can arrive anyway.
"""

import socket
import struct
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings


def grpc_frame(msg):
    return b'\x00' + struct.pack('>I', len(msg)) + msg


class H2Client:

    def __init__(self, port, initial_window=65535, host='127.0.0.1'):
        self.sock = socket.create_connection((host, port), timeout=5)
        self.port = port
        cfg = h2.config.H2Configuration(client_side=True, header_encoding='utf-8')
        self.conn = h2.connection.H2Connection(config=cfg)
        self.conn.local_settings = h2.settings.Settings(
            client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE:
                                         initial_window})
        self.conn.initiate_connection()
        self.flush()
        self.headers = {}    # stream id -> response headers
        self.trailers = {}   # stream id -> trailers (grpc-status, ...)
        self.resets = {}     # stream id -> error code
        self.late = set()    # streams that got frames after they closed
        self.closed = False  # GOAWAY or EOF
        self.goaway = None
        self.settings_acked = False
        self.settings_seen = False
        self.pump_until(lambda: self.settings_seen and self.settings_acked, bound_s=5)

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def call(self, path, body, metadata=()):
        """Opens a stream with a whole unary request; returns its id."""
        sid = self.conn.get_next_available_stream_id()
        hdrs = [(':method', 'POST'), (':scheme', 'http'), (':path', path),
                (':authority', '127.0.0.1:%d' % self.port),
                ('content-type', 'application/grpc'), ('te', 'trailers')] + list(metadata)
        self.conn.send_headers(sid, hdrs)
        self.conn.send_data(sid, grpc_frame(body), end_stream=True)
        self.flush()
        return sid

    def responded(self, sid):
        """The server answered sid: headers, trailers or a reset."""
        return sid in self.headers or sid in self.trailers or sid in self.resets

    def status(self, sid):
        """grpc-status of sid's trailers, or of a trailers-only answer (int),
        or None."""
        for t in (self.trailers.get(sid), self.headers.get(sid)):  # or trailers-only
            if t and 'grpc-status' in t:
                return int(t['grpc-status'])
        return None

    def pump(self, timeout=0.05):
        """Reads what has arrived (for up to timeout) and handles it."""
        if self.closed:
            return
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1 << 20)
        except socket.timeout:
            return
        except OSError:
            self.closed = True
            return
        if not data:
            self.closed = True
            return
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.StreamClosedError as e:
            # frames after a reset we sent or got: h2 drops the rest of
            # this read, the connection goes on
            self.late.add(e.stream_id)
            events = []
        for ev in events:
            if isinstance(ev, h2.events.ResponseReceived):
                self.headers[ev.stream_id] = dict(ev.headers)
            elif isinstance(ev, h2.events.TrailersReceived):
                self.trailers[ev.stream_id] = dict(ev.headers)
            elif isinstance(ev, h2.events.StreamReset):
                self.resets[ev.stream_id] = ev.error_code
            elif isinstance(ev, h2.events.SettingsAcknowledged):
                self.settings_acked = True
            elif isinstance(ev, h2.events.RemoteSettingsChanged):
                self.settings_seen = True
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.goaway = ev.error_code
                self.closed = True
        try:
            self.flush()
        except OSError:
            self.closed = True

    def pump_until(self, done, bound_s):
        deadline = time.monotonic() + bound_s
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError('h2: condition not met within %.0f s' % bound_s)
            if self.closed:
                raise AssertionError('h2: connection closed (GOAWAY %s)' % self.goaway)
            self.pump()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass
