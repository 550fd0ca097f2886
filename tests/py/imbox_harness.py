"""Process and channel harness for the imbox Python end-to-end tests.

Everything here follows docs/PROTOCOL.md (this implementation) and
the public API in proto/imbox/v1/imbox.proto:

  * ImboxServer  - one `imbox serve` process (random port, temp data dir).
  * ImboxCluster - three `imbox shard` processes and one `imbox gateway`;
                   a shard can be SIGKILLed and restarted on the same port
                   and data dir.
  * Client       - the Inbox stub with the caller's bearer token attached;
                   counts its calls.
  * drain()      - drains an inbox exactly like the reference client: pull
                   page after page passing the previous cursor, dedup by
                   msg_id, stop at the first empty page (P pages = P+1 calls).
  * tokens, cursors and the shard function computed in Python from the
    formats in docs/PROTOCOL.md (the secret is DATA_DIR/auth.secret, hex).

Environment: IMBOX_BIN (the imbox binary) and IMBOX_PY_GEN (the directory with
the generated imbox/v1/imbox_pb2*.py). Both are set by ctest
(tests/py/CMakeLists.txt); when run by hand they default to ../../build.

Every process is started in its own session and killed as a group at cleanup,
and every temp dir is removed, whether the test passed or not.
"""

import base64
import hashlib
import hmac
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import unittest

_HERE = os.path.dirname(os.path.abspath(__file__))
_DEFAULT_BUILD = os.path.normpath(os.path.join(_HERE, '..', '..', 'build'))

IMBOX_BIN = os.environ.get('IMBOX_BIN', os.path.join(_DEFAULT_BUILD, 'bin', 'imbox'))
IMBOX_PY_GEN = os.environ.get('IMBOX_PY_GEN', os.path.join(_DEFAULT_BUILD, 'gen', 'py'))
if IMBOX_PY_GEN not in sys.path:
    sys.path.insert(0, IMBOX_PY_GEN)

import grpc  # noqa: E402  (Debian python3-grpcio, /usr/bin/python3 only)
from imbox.v1 import imbox_pb2 as pb  # noqa: E402
from imbox.v1 import imbox_pb2_grpc as pb_grpc  # noqa: E402

READY_TIMEOUT_S = 15.0      # bound for a process to become ready
RPC_TIMEOUT_S = 30.0        # deadline of ordinary calls
HEALTH_SERVING = b'\x08\x01'  # HealthCheckResponse{status: SERVING}
CHANNEL_OPTIONS = [
    ('grpc.max_receive_message_length', 64 << 20),
    ('grpc.max_send_message_length', 64 << 20),
    ('grpc.enable_retries', 0),
]

INBOX_METHODS = ('Send', 'Pull', 'Ack', 'Counts', 'Subscribe', 'Presence')

_identity = lambda b: b  # noqa: E731


# --------------------------------------------------------------------- misc

def free_port():
    """A port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def uid(prefix):
    """A uid unique to this run: prefix-<8 hex digits>."""
    return '%s-%s' % (prefix, secrets.token_hex(4))


def new_msg_id(prefix='m'):
    return '%s-%s' % (prefix, secrets.token_hex(8))


def now_ms():
    return int(time.time() * 1000)


def wait_clock_past(t_ms, bound_s=2.0):
    """Bounded poll until the wall clock (ms) is strictly past t_ms."""
    deadline = time.monotonic() + bound_s
    while now_ms() <= t_ms:
        if time.monotonic() > deadline:
            raise AssertionError('clock did not pass %d ms' % t_ms)
        time.sleep(0.001)


# ------------------------------------------------------------ shard function

MASK64 = (1 << 64) - 1


def hash64(s):
    """64-bit FNV-1a of the uid's UTF-8 bytes, then the splitmix64 finaliser."""
    if isinstance(s, str):
        s = s.encode('utf-8')
    x = 0xcbf29ce484222325
    for c in s:
        x ^= c
        x = (x * 0x100000001b3) & MASK64
    x ^= x >> 30
    x = (x * 0xbf58476d1ce4e5b9) & MASK64
    x ^= x >> 27
    x = (x * 0x94d049bb133111eb) & MASK64
    x ^= x >> 31
    return x


def jump_hash(key, buckets):
    """Lamping & Veach, "A Fast, Minimal Memory, Consistent Hash Algorithm"."""
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * 2862933555777941757 + 1) & MASK64
        j = int(float(b + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return b


def shard_of(u, nshards):
    return jump_hash(hash64(u), nshards)


def uids_on_shard(prefix, shard, nshards, n):
    """n fresh uids that live on `shard` of `nshards`."""
    out = []
    while len(out) < n:
        u = uid(prefix)
        if shard_of(u, nshards) == shard:
            out.append(u)
    return out


# ------------------------------------------------------- tokens and cursors

def b64url_nopad(b):
    return base64.urlsafe_b64encode(b).rstrip(b'=').decode('ascii')


def b64url_nopad_decode(s):
    if isinstance(s, str):
        s = s.encode('ascii')
    return base64.urlsafe_b64decode(s + b'=' * (-len(s) % 4))


def read_secret(data_dir):
    """The 32-byte secret of a data dir (DATA_DIR/auth.secret, hex)."""
    with open(os.path.join(data_dir, 'auth.secret'), 'r', encoding='ascii') as f:
        return bytes.fromhex(f.read().strip())


def make_token(secret, u, expiry, mac=None):
    """base64url_nopad(uid "." expiry "." HMAC-SHA256(secret, uid "." expiry)).

    u and expiry may be str/int or raw bytes (to build malformed tokens)."""
    ub = u.encode('utf-8') if isinstance(u, str) else u
    eb = str(expiry).encode('ascii') if not isinstance(expiry, bytes) else expiry
    signed = ub + b'.' + eb
    if mac is None:
        mac = hmac.new(secret, signed, hashlib.sha256).digest()
    return b64url_nopad(signed + b'.' + mac)


def parse_token(token):
    """(uid, expiry, mac) of a token, parsed from the right."""
    raw = b64url_nopad_decode(token)
    mac, rest = raw[-32:], raw[:-33]
    assert raw[-33:-32] == b'.', 'no "." before the MAC'
    u, _, e = rest.rpartition(b'.')
    return u.decode('utf-8'), int(e), mac


def cursor_tag(secret, owner, sender, seq):
    msg = (b'imbox-cursor-v1\x00' + owner.encode('utf-8') + b'\x00' +
           sender.encode('utf-8') + b'\x00' + struct.pack('>Q', seq))
    return hmac.new(secret, msg, hashlib.sha256).digest()[:16]


def make_cursor(secret, owner, seq, sender='', version=1):
    """base64url_nopad(0x01 | seq (u64 BE) | n (1 byte) | sender_uid (n bytes)
    | tag (16 bytes)); sender '' for a whole-inbox cursor."""
    sb = sender.encode('utf-8')
    return b64url_nopad(bytes([version]) + struct.pack('>Q', seq) + bytes([len(sb)]) + sb +
                        cursor_tag(secret, owner, sender, seq))


def parse_cursor(cursor):
    """(version, seq, sender_uid bytes, tag) of a cursor."""
    raw = b64url_nopad_decode(cursor)
    n = raw[9]
    assert len(raw) == 10 + n + 16, 'cursor of %d bytes with n=%d' % (len(raw), n)
    return raw[0], struct.unpack('>Q', raw[1:9])[0], raw[10:10 + n], raw[10 + n:]


def cursor_seq(cursor):
    return parse_cursor(cursor)[1]


# ------------------------------------------------------ raw protobuf writing

def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7f
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_len(num, data):
    """A length-delimited field (wire type 2)."""
    if isinstance(data, str):
        data = data.encode('utf-8')
    return varint((num << 3) | 2) + varint(len(data)) + data


def field_varint(num, value):
    return varint((num << 3) | 0) + varint(value)


# ----------------------------------------------------------------- processes

class Proc:
    """One child process in its own session, its output in a log file."""

    def __init__(self, name, argv, log_dir):
        self.name = name
        self.argv = list(argv)
        self.log_path = os.path.join(log_dir, '%s.log' % name)
        self.popen = None
        self.expected_exit = False

    def start(self):
        log = open(self.log_path, 'ab')
        try:
            log.write(('\n=== start: %s\n' % ' '.join(self.argv)).encode())
            log.flush()
            self.popen = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                          stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True)
        finally:
            log.close()
        self.expected_exit = False
        return self

    @property
    def pid(self):
        return self.popen.pid

    def alive(self):
        return self.popen is not None and self.popen.poll() is None

    def check_alive(self):
        if self.popen is not None and self.popen.poll() is not None:
            raise AssertionError('%s exited with %s before it was ready:\n%s' % (
                self.name, self.popen.returncode, self.log_tail()))

    def log_tail(self, n=60):
        try:
            with open(self.log_path, 'rb') as f:
                lines = f.read().decode('utf-8', 'replace').splitlines()
            return '\n'.join(lines[-n:])
        except OSError:
            return '(no log)'

    def kill9(self):
        """SIGKILL the process group and reap it."""
        if self.popen is None:
            return
        self.expected_exit = True
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def terminate(self, grace_s=10.0):
        """SIGTERM, wait up to grace_s, then SIGKILL. Returns the exit code
        (negative = killed by that signal)."""
        if self.popen is None:
            return None
        self.expected_exit = True
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
        rc = self.popen.poll()
        if rc is None:
            self.kill9()
            return -signal.SIGKILL
        # Kill whatever the group may have left behind.
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return rc


def run_cli(args, timeout=30):
    """Runs `imbox ARGS...` and returns its stdout (check=True)."""
    r = subprocess.run([IMBOX_BIN] + list(args), stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=timeout)
    if r.returncode != 0:
        raise AssertionError('imbox %s exited %d: %s' % (
            ' '.join(args), r.returncode, r.stderr.decode('utf-8', 'replace')))
    return r.stdout.decode('utf-8')


def cli_token(data_dir, u, ttl=86400):
    """`imbox token --uid U --ttl S --data-dir DIR`: the last line of stdout."""
    out = run_cli(['token', '--uid', u, '--ttl', str(ttl), '--data-dir', data_dir])
    lines = [l.strip() for l in out.splitlines() if l.strip()]
    if not lines:
        raise AssertionError('imbox token printed nothing')
    return lines[-1]


def health_check(channel, timeout=1.0):
    """Raw grpc.health.v1.Health/Check without a token: the response bytes."""
    call = channel.unary_unary('/grpc.health.v1.Health/Check',
                               request_serializer=_identity,
                               response_deserializer=_identity)
    return call(b'', timeout=timeout)


def wait_serving(channel, procs, bound_s=READY_TIMEOUT_S):
    """Bounded poll of the health check; fails fast if a process exited."""
    deadline = time.monotonic() + bound_s
    last = None
    while True:
        for p in procs:
            p.check_alive()
        try:
            if health_check(channel, timeout=1.0) == HEALTH_SERVING:
                return
            last = 'not SERVING'
        except grpc.RpcError as e:
            last = '%s %s' % (e.code(), e.details())
        if time.monotonic() > deadline:
            raise AssertionError('not SERVING after %.0f s (%s):\n%s' % (
                bound_s, last, '\n'.join(p.log_tail() for p in procs)))
        time.sleep(0.05)


def open_channel(port):
    return grpc.insecure_channel('127.0.0.1:%d' % port, options=CHANNEL_OPTIONS)


class _Deployment:
    """Shared parts of a standalone server and a cluster."""

    def __init__(self):
        self.root = tempfile.mkdtemp(prefix='imbox-pytest-')
        self.procs = []
        self.channels = []
        self.port = None
        self._secret = None
        self.auth_dir = None

    def channel(self):
        ch = open_channel(self.port)
        self.channels.append(ch)
        return ch

    def secret(self):
        if self._secret is None:
            self._secret = read_secret(self.auth_dir)
        return self._secret

    def token(self, u, ttl=86400):
        """A token from the CLI (`imbox token`)."""
        return cli_token(self.auth_dir, u, ttl)

    def fast_token(self, u, ttl=86400):
        """A token built in Python from auth.secret (same format)."""
        return make_token(self.secret(), u, int(time.time()) + ttl)

    def client(self, u=None, token=None, channel=None):
        if token is None and u is not None:
            token = self.token(u)
        return Client(channel or self._shared_channel(), token, u)

    def fast_client(self, u):
        return Client(self._shared_channel(), self.fast_token(u), u)

    def _shared_channel(self):
        if not self.channels:
            self.channel()
        return self.channels[0]

    def logs(self):
        return '\n'.join('--- %s (%s)\n%s' % (p.name, p.log_path, p.log_tail())
                         for p in self.procs)

    def stop(self):
        for ch in self.channels:
            try:
                ch.close()
            except Exception:  # noqa: BLE001 - cleanup must go on
                pass
        self.channels = []
        for p in reversed(self.procs):
            p.kill9()

    def cleanup(self):
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


class ImboxServer(_Deployment):
    """`imbox serve --listen 127.0.0.1:PORT --data-dir DIR --shards N ...`."""

    def __init__(self, shards=4, extra_args=()):
        super().__init__()
        self.data_dir = os.path.join(self.root, 'data')
        self.auth_dir = self.data_dir
        self.shards = shards
        self.extra_args = list(extra_args)
        self.proc = None

    def start(self):
        self.port = free_port()
        self.proc = Proc('serve', [IMBOX_BIN, 'serve',
                                   '--listen', '127.0.0.1:%d' % self.port,
                                   '--data-dir', self.data_dir,
                                   '--shards', str(self.shards)] + self.extra_args,
                         self.root)
        self.procs = [self.proc]
        self.proc.start()
        wait_serving(self.channel(), self.procs)
        return self


class ImboxCluster(_Deployment):
    """3 x `imbox shard` + `imbox gateway` (the gateway's auth.secret is in
    GWDIR)."""

    PROBE_SENDER = 'probe-sender'

    def __init__(self, nshards=3, shard_args=()):
        super().__init__()
        self.nshards = nshards
        self.shard_args = list(shard_args)
        self.shard_ports = []
        self.shard_dirs = []
        self.shard_procs = []
        self.gw_dir = os.path.join(self.root, 'gw')
        self.auth_dir = self.gw_dir
        self.gw_proc = None
        self._probe_client = None

    def _shard_proc(self, i):
        return Proc('shard%d' % i, [IMBOX_BIN, 'shard', '--index', str(i),
                                    '--count', str(self.nshards),
                                    '--listen', 'tcp://127.0.0.1:%d' % self.shard_ports[i],
                                    '--data-dir', self.shard_dirs[i]] + self.shard_args,
                    self.root)

    def start(self):
        for i in range(self.nshards):
            self.shard_ports.append(free_port())
            self.shard_dirs.append(os.path.join(self.root, 'shard%d' % i))
            self.shard_procs.append(self._shard_proc(i).start())
        self.port = free_port()
        self.gw_proc = Proc('gateway', [
            IMBOX_BIN, 'gateway', '--listen', '127.0.0.1:%d' % self.port,
            '--shards', ','.join('tcp://127.0.0.1:%d' % p for p in self.shard_ports),
            '--data-dir', self.gw_dir], self.root)
        self.procs = self.shard_procs + [self.gw_proc]
        self.gw_proc.start()
        wait_serving(self.channel(), self.procs)
        for i in range(self.nshards):
            self.wait_shard_ready(i)
        return self

    def kill9_shard(self, i):
        self.shard_procs[i].kill9()

    def restart_shard(self, i):
        p = self._shard_proc(i)
        # Keep one log per shard: Proc appends.
        self.shard_procs[i] = p.start()
        self.procs = self.shard_procs + [self.gw_proc]
        return p

    def probe_client(self):
        if self._probe_client is None:
            self._probe_client = self.fast_client(self.PROBE_SENDER)
        return self._probe_client

    def wait_shard_ready(self, i, bound_s=30.0):
        """Bounded poll: a Send to a uid of shard i until its receipt is code
        0 (14 UNAVAILABLE means not yet). Same msg_id on every attempt, so a
        retry never stores twice. Returns the number of attempts."""
        probe_uid = uids_on_shard('probe%d' % i, i, self.nshards, 1)[0]
        msg_id = new_msg_id('probe')
        c = self.probe_client()
        deadline = time.monotonic() + bound_s
        attempts = 0
        last = None
        while True:
            for p in self.procs:
                p.check_alive()
            attempts += 1
            try:
                r = c.send(msg_id, [probe_uid], timeout=10)
                rc = r.receipts[0]
                if rc.code == 0:
                    return attempts
                last = 'receipt code %d %r' % (rc.code, rc.error)
                if rc.code != grpc.StatusCode.UNAVAILABLE.value[0]:
                    raise AssertionError('shard %d probe: %s' % (i, last))
            except grpc.RpcError as e:
                last = '%s %s' % (e.code(), e.details())
                if e.code() not in (grpc.StatusCode.UNAVAILABLE,
                                    grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
            if time.monotonic() > deadline:
                raise AssertionError('shard %d not ready after %.0f s (%s):\n%s' % (
                    i, bound_s, last, self.logs()))
            time.sleep(0.1)


# -------------------------------------------------------------------- client

class Client:
    """The Inbox stub with `authorization: Bearer <token>` on every call."""

    def __init__(self, channel, token, u=None):
        self.channel = channel
        self.token = token
        self.uid = u
        self.stub = pb_grpc.InboxStub(channel)
        self.calls = {m: 0 for m in INBOX_METHODS}

    @property
    def metadata(self):
        if self.token is None:
            return ()
        return (('authorization', 'Bearer ' + self.token),)

    def send(self, msg_id, receivers, msg_type=0, content=b'', timeout=RPC_TIMEOUT_S):
        self.calls['Send'] += 1
        return self.stub.Send(pb.SendRequest(msg_id=msg_id, receiver_uids=list(receivers),
                                             msg_type=msg_type, content=content),
                              metadata=self.metadata, timeout=timeout)

    def send1(self, msg_id, receiver, **kw):
        """Send to one receiver; asserts the receipt is code 0 and returns it."""
        r = self.send(msg_id, [receiver], **kw)
        if len(r.receipts) != 1 or r.receipts[0].code != 0:
            raise AssertionError('send %s to %s: %s' % (msg_id, receiver, r))
        return r.receipts[0]

    def pull(self, cursor='', page_size=0, sender_uid='', timeout=RPC_TIMEOUT_S):
        self.calls['Pull'] += 1
        return self.stub.Pull(pb.PullRequest(cursor=cursor, page_size=page_size,
                                             sender_uid=sender_uid),
                              metadata=self.metadata, timeout=timeout)

    def ack(self, cursor, timeout=RPC_TIMEOUT_S):
        self.calls['Ack'] += 1
        return self.stub.Ack(pb.AckRequest(cursor=cursor), metadata=self.metadata,
                             timeout=timeout)

    def counts(self, timeout=RPC_TIMEOUT_S):
        self.calls['Counts'] += 1
        return self.stub.Counts(pb.CountsRequest(), metadata=self.metadata,
                                timeout=timeout)

    def raw(self, method, payload, metadata=None, timeout=RPC_TIMEOUT_S):
        """Calls /imbox.v1.Inbox/<method> with raw request bytes; returns the
        raw response bytes."""
        call = self.channel.unary_unary('/imbox.v1.Inbox/%s' % method,
                                        request_serializer=_identity,
                                        response_deserializer=_identity)
        return call(payload, metadata=self.metadata if metadata is None else metadata,
                    timeout=timeout)

    def snapshot(self):
        """(total, [(sender, count, last)], [msg_id...]) of the inbox, read
        without acking anything."""
        c = self.counts()
        p = self.pull('', page_size=1000)
        return (c.total, [(s.sender_uid, s.count, s.last_send_time_ms) for s in c.senders],
                [m.msg_id for m in p.messages])


class DrainResult:
    def __init__(self):
        self.messages = []      # first sighting of each msg_id, in order
        self.pages = []         # every PullResponse, including the empty last
        self.calls = 0          # Pull calls made
        self.duplicates = 0     # messages hidden by the msg_id dedup
        self.seen = set()
        self.cursor = ''


def drain(client, page_size=0, cursor='', sender_uid='', seen=None, max_calls=100000):
    """The reference client's drain: Pull(cursor) page after page, each call
    passing the previous response's cursor (which acks the previous page),
    until a page comes back empty; dedup by msg_id. `seen` may carry the
    msg_ids a previous session already showed to the user."""
    res = DrainResult()
    if seen is not None:
        res.seen = seen
    res.cursor = cursor
    while True:
        if res.calls >= max_calls:
            raise AssertionError('drain did not end after %d calls' % max_calls)
        page = client.pull(res.cursor, page_size=page_size, sender_uid=sender_uid)
        res.calls += 1
        res.pages.append(page)
        for m in page.messages:
            if m.msg_id in res.seen:
                res.duplicates += 1
                continue
            res.seen.add(m.msg_id)
            res.messages.append(m)
        res.cursor = page.cursor
        if not page.messages:
            return res


# ------------------------------------------------------------- test support

class ImboxTestCase(unittest.TestCase):
    """Registers deployments for cleanup (also when setUp fails) and prints
    their logs when a test fails or errors."""

    _class_deployments = []

    @classmethod
    def class_deployment(cls, dep):
        """Start dep for the whole class (call from setUpClass)."""
        if '_class_deployments' not in cls.__dict__:
            cls._class_deployments = []
        cls._class_deployments.append(dep)
        cls.addClassCleanup(dep.cleanup)
        return dep.start()

    def deployment(self, dep):
        """Start dep for this test only."""
        if not hasattr(self, '_deployments'):
            self._deployments = []
        self._deployments.append(dep)
        self.addCleanup(dep.cleanup)
        return dep.start()

    def serve(self, **kw):
        return self.deployment(ImboxServer(**kw))

    def cluster(self, **kw):
        return self.deployment(ImboxCluster(**kw))

    def run(self, result=None):
        if result is None:
            return super().run(result)
        before = len(result.failures) + len(result.errors)
        # The logs live in the temp dirs that the cleanups remove, so
        # doCleanups() copies them first; they are printed only on failure.
        self._log_snapshot = None
        out = super().run(result)
        after = len(result.failures) + len(result.errors)
        if after > before and self._log_snapshot:
            sys.stderr.write('\n===== imbox process logs for %s =====\n%s\n' % (
                self.id(), self._log_snapshot))
        return out

    def doCleanups(self):
        deps = list(getattr(self, '_deployments', [])) + list(
            type(self).__dict__.get('_class_deployments', []))
        try:
            self._log_snapshot = '\n'.join(d.logs() for d in deps)
        except Exception:  # noqa: BLE001
            self._log_snapshot = None
        return super().doCleanups()

    # --- assertions

    def assertRpcError(self, code, fn, *args, **kw):
        """fn(*args, **kw) must raise grpc.RpcError with this status code;
        returns the error's details (the status message)."""
        try:
            r = fn(*args, **kw)
        except grpc.RpcError as e:
            self.assertEqual(e.code(), code, 'expected %s, got %s: %r' % (
                code, e.code(), e.details()))
            return e.details() or ''
        self.fail('expected %s, the call succeeded with %r' % (code, r))
