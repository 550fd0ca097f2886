"""Process and channel harness for the imbox Python end-to-end tests.

Everything here follows docs/PROTOCOL.md (this implementation) and
the public API in proto/imbox/v1/imbox.proto:

  * ImboxServer  - one `imbox serve` process (random port, temp data dir).
  * ImboxCluster - S `imbox shard` processes (3 by default) and G
                   `imbox gateway` processes (1 by default), each gateway on
                   its own port with a copy of the same auth.secret, which
                   the shards read (--secret-file: their CURVE keys); a shard
                   or a gateway can be SIGKILLed and restarted on the same
                   port and data dir.
  * Client       - the Inbox stub with the caller's bearer token attached;
                   counts its calls.
  * Subscription - a Subscribe server stream read by a background thread
                   into a list guarded by a condition: wait_for(n, timeout),
                   wait_done(timeout), cancel(), the final status.
  * TcpRelay     - a loopback TCP relay that can stop forwarding in both
                   directions without closing a socket (a client whose
                   network vanished: no FIN, no RST).
  * proc_status() / Proc.rss() - VmRSS / VmHWM of a process, in bytes.
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
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
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

# IMBOX_TEST_WRAPPER (e.g. valgrind and its flags) goes in front of every
# server command; the bounds then grow by IMBOX_TEST_SLOW (20 by default
# under a wrapper: a server under valgrind starts about 20 times slower).
WRAPPER = shlex.split(os.environ.get('IMBOX_TEST_WRAPPER', ''))
SLOW = float(os.environ.get('IMBOX_TEST_SLOW', '20' if WRAPPER else '1'))
READY_TIMEOUT_S = 15.0 * SLOW  # bound for a process to become ready
RPC_TIMEOUT_S = 30.0 * SLOW    # deadline of ordinary calls
HEALTH_SERVING = b'\x08\x01'  # HealthCheckResponse{status: SERVING}
CHANNEL_OPTIONS = [
    ('grpc.max_receive_message_length', 64 << 20),
    ('grpc.max_send_message_length', 64 << 20),
    ('grpc.enable_retries', 0),
    # A channel reaches a restarted process again within about a second
    # (with the defaults, the reconnect backoff makes it 5 s and more).
    # Not min_reconnect_backoff_ms: gRPC core also takes it as the minimum
    # connect timeout, and at 100 ms a handshake on a loaded machine is cut
    # short ("handshaker shutdown").
    ('grpc.initial_reconnect_backoff_ms', 100),
    ('grpc.max_reconnect_backoff_ms', 1000),
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


def write_secret(path):
    """Creates a fresh secret file at path in the auth.secret format (64
    lowercase hex digits and a newline, mode 0600); refuses to overwrite."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, 'w', encoding='ascii') as f:
        f.write(os.urandom(32).hex() + '\n')
    return path


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
            argv = WRAPPER + self.argv if self.argv[0] == IMBOX_BIN else self.argv
            self.popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
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
        if self.expected_exit:
            return      # killed on purpose (kill9/terminate)
        if self.popen is not None and self.popen.poll() is not None:
            raise AssertionError('%s exited with %s before it was ready:\n%s' % (
                self.name, self.popen.returncode, self.log_tail()))

    def status(self):
        """The process's /proc/PID/status memory fields, in bytes."""
        return proc_status(self.pid)

    def rss(self):
        """VmRSS (resident set size now), bytes."""
        return self.status()['VmRSS']

    def sanitized(self):
        """Whether the process runs under AddressSanitizer (libasan mapped):
        its RSS then holds ASan's quarantine and shadow memory, and says
        nothing about what the server itself keeps."""
        with open('/proc/%d/maps' % self.pid) as f:
            return 'libasan' in f.read()

    def hwm(self):
        """VmHWM (peak resident set size), bytes."""
        return self.status()['VmHWM']

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

    def terminate(self, grace_s=10.0 * SLOW):
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


def proc_status(pid):
    """{field: bytes} for the `kB` fields of /proc/PID/status (VmRSS,
    VmHWM, VmSize, ...)."""
    out = {}
    with open('/proc/%d/status' % pid, 'r', encoding='ascii', errors='replace') as f:
        for line in f:
            k, _, v = line.partition(':')
            parts = v.split()
            if len(parts) == 2 and parts[1] == 'kB':
                out[k] = int(parts[0]) * 1024
    if 'VmRSS' not in out:
        raise AssertionError('no VmRSS in /proc/%d/status' % pid)
    return out


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


def health_check(channel, timeout=1.0, service=b''):
    """Raw grpc.health.v1.Health/Check without a token: the response bytes.
    service b'' asks about the gateway itself, b'imbox.v1.Inbox' whether it
    reaches every shard (docs/PROTOCOL.md "Health")."""
    call = channel.unary_unary('/grpc.health.v1.Health/Check',
                               request_serializer=_identity,
                               response_deserializer=_identity)
    req = field_len(1, service) if service else b''
    return call(req, timeout=timeout)


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


def wait_listening(port, procs, bound_s=READY_TIMEOUT_S):
    """Bounded poll until 127.0.0.1:port accepts a TCP connection; fails fast
    if a process exited. (A gRPC channel whose first connect was refused
    takes seconds to try again, so readiness polls the port first.)"""
    deadline = time.monotonic() + bound_s
    while True:
        for p in procs:
            p.check_alive()
        try:
            socket.create_connection(('127.0.0.1', port), timeout=1.0).close()
            return
        except OSError as e:
            last = e
        if time.monotonic() > deadline:
            raise AssertionError('127.0.0.1:%d not listening after %.0f s (%s):\n%s' % (
                port, bound_s, last, '\n'.join(p.log_tail() for p in procs)))
        time.sleep(0.02)


def open_channel(port, options=()):
    """A channel to 127.0.0.1:port; `options` are added to CHANNEL_OPTIONS
    (a later one of the same name wins)."""
    opts = dict(CHANNEL_OPTIONS)
    opts.update(dict(options))
    return grpc.insecure_channel('127.0.0.1:%d' % port, options=list(opts.items()))


class _Deployment:
    """Shared parts of a standalone server and a cluster."""

    def __init__(self):
        self.root = tempfile.mkdtemp(prefix='imbox-pytest-')
        self.procs = []
        self.channels = []
        self.port = None
        self._secret = None
        self.auth_dir = None

    def channel(self, port=None, options=()):
        """A new channel (to the deployment's port by default), closed at
        cleanup."""
        ch = open_channel(self.port if port is None else port, options)
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

    def fast_client(self, u, channel=None):
        return Client(channel or self._shared_channel(), self.fast_token(u), u)

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
        wait_listening(self.port, self.procs)
        wait_serving(self.channel(), self.procs)
        return self


class ImboxCluster(_Deployment):
    """nshards x `imbox shard` + ngateways x `imbox gateway`, each gateway on
    its own port with its own data dir holding the same auth.secret (made in
    GWDIR before anything starts, the shards read it with --secret-file,
    the other gateways get a copy before they start).

    `port`, `gw_proc` and `gw_dir` are gateway 0's; `channel()`,
    `client()` and `fast_client()` use gateway 0 unless given a channel
    (`gateway_channel(i)`, `gw_client(i, u)`)."""

    PROBE_SENDER = 'probe-sender'

    def __init__(self, nshards=3, shard_args=(), ngateways=1, gateway_args=()):
        super().__init__()
        if ngateways < 1:
            raise ValueError('a cluster needs a gateway')
        self.nshards = nshards
        self.shard_args = list(shard_args)
        self.shard_ports = []
        self.shard_dirs = []
        self.shard_procs = []
        self.ngateways = ngateways
        self.gateway_args = list(gateway_args)
        self.gw_ports = []
        self.gw_dirs = [os.path.join(self.root, 'gw' if i == 0 else 'gw%d' % i)
                        for i in range(ngateways)]
        self.gw_procs = []
        self.gw_dir = self.gw_dirs[0]
        self.auth_dir = self.gw_dir
        self.secret_file = os.path.join(self.gw_dir, 'auth.secret')
        self._gw_channels = {}
        self._probe_client = None

    @property
    def gw_proc(self):
        return self.gw_procs[0] if self.gw_procs else None

    def _update_procs(self):
        self.procs = self.shard_procs + self.gw_procs

    def _gateway_proc(self, i):
        return Proc('gateway' if i == 0 else 'gateway%d' % i, [
            IMBOX_BIN, 'gateway', '--listen', '127.0.0.1:%d' % self.gw_ports[i],
            '--shards', ','.join('tcp://127.0.0.1:%d' % p for p in self.shard_ports),
            '--data-dir', self.gw_dirs[i]] + self.gateway_args, self.root)

    def _copy_secret(self, i):
        """Gateway i's data dir gets gateway 0's auth.secret (mode 0600)."""
        if i == 0:
            return
        os.makedirs(self.gw_dirs[i], mode=0o700, exist_ok=True)
        dst = os.path.join(self.gw_dirs[i], 'auth.secret')
        if os.path.exists(dst):
            return
        src = os.path.join(self.gw_dirs[0], 'auth.secret')
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, 'wb') as out, open(src, 'rb') as inp:
            out.write(inp.read())

    def gateway_channel(self, i):
        """The shared channel to gateway i (closed at cleanup)."""
        if i == 0:
            return self._shared_channel()
        if i not in self._gw_channels:
            self._gw_channels[i] = self.channel(self.gw_ports[i])
        return self._gw_channels[i]

    def gw_client(self, i, u):
        """A client of uid u (token built from auth.secret) on gateway i."""
        return Client(self.gateway_channel(i), self.fast_token(u), u)

    def stop(self):
        self._gw_channels = {}
        super().stop()

    def _shard_proc(self, i):
        return Proc('shard%d' % i, [IMBOX_BIN, 'shard', '--index', str(i),
                                    '--count', str(self.nshards),
                                    '--listen', 'tcp://127.0.0.1:%d' % self.shard_ports[i],
                                    '--data-dir', self.shard_dirs[i],
                                    '--secret-file', self.secret_file] + self.shard_args,
                    self.root)

    def start(self):
        write_secret(self.secret_file)
        for i in range(self.nshards):
            self.shard_ports.append(free_port())
            self.shard_dirs.append(os.path.join(self.root, 'shard%d' % i))
            self.shard_procs.append(self._shard_proc(i).start())
        self.gw_ports = [free_port() for _ in range(self.ngateways)]
        self.port = self.gw_ports[0]
        self.gw_procs = [self._gateway_proc(0)]
        self._update_procs()
        self.gw_procs[0].start()
        wait_listening(self.port, self.procs)
        wait_serving(self.channel(), self.procs)
        for i in range(1, self.ngateways):
            self._copy_secret(i)
            self.gw_procs.append(self._gateway_proc(i).start())
            self._update_procs()
        for i in range(1, self.ngateways):
            wait_listening(self.gw_ports[i], self.procs)
            wait_serving(self.gateway_channel(i), self.procs)
        for g in range(self.ngateways):
            for i in range(self.nshards):
                self.wait_shard_ready(i, gateway=g)
        return self

    def kill9_gateway(self, i):
        """SIGKILL gateway i (no shutdown of its streams, no FIN from user
        space: the kernel closes its sockets)."""
        self.gw_procs[i].kill9()

    def restart_gateway(self, i, wait=True):
        """Starts gateway i again on the same port and data dir; with wait,
        a bounded wait until it is SERVING and reaches every shard.

        gateway_channel(i) (and, for i = 0, the default channel) is a new
        channel afterwards: the old one may sit in reconnect backoff; it stays
        open (closed at cleanup) for the clients that still hold it."""
        p = self._gateway_proc(i)
        self.gw_procs[i] = p.start()
        self._update_procs()
        ch = self.channel(self.gw_ports[i])
        self.channels.remove(ch)
        if i == 0:
            self.channels.insert(0, ch)
            self._probe_client = None
        else:
            self.channels.append(ch)
            self._gw_channels[i] = ch
        if wait:
            wait_listening(self.gw_ports[i], self.procs)
            wait_serving(ch, self.procs)
            for s in range(self.nshards):
                self.wait_shard_ready(s, gateway=i)
        return p

    def kill9_shard(self, i):
        self.shard_procs[i].kill9()

    def restart_shard(self, i):
        p = self._shard_proc(i)
        # Keep one log per shard: Proc appends.
        self.shard_procs[i] = p.start()
        self._update_procs()
        return p

    def probe_client(self, gateway=0):
        if gateway != 0:
            return self.gw_client(gateway, self.PROBE_SENDER)
        if self._probe_client is None:
            self._probe_client = self.fast_client(self.PROBE_SENDER)
        return self._probe_client

    def wait_shard_ready(self, i, bound_s=30.0 * SLOW, gateway=0):
        """Bounded poll: a Send (through `gateway`) to a uid of shard i until
        its receipt is code 0 (14 UNAVAILABLE means not yet). Same msg_id on
        every attempt, so a retry never stores twice. Returns the number of
        attempts."""
        probe_uid = uids_on_shard('probe%d' % i, i, self.nshards, 1)[0]
        return send_until_stored(self.probe_client(gateway), new_msg_id('probe'), probe_uid,
                                 lambda: [p.check_alive() for p in self.procs], bound_s,
                                 'shard %d' % i, self.logs)


def send_until_stored(client, msg_id, uid, check_alive, bound_s, what, logs,
                      timeout=10, pause=0.1):
    """Bounded poll: a Send of msg_id to uid until its receipt is code 0;
    UNAVAILABLE (a receipt's code, or the call's, or a deadline) means not
    yet, anything else fails. The same msg_id on every attempt, so a retry
    never stores twice. check_alive() runs before each attempt (it raises
    when a process died); logs() goes into the failure. Returns the number
    of attempts."""
    deadline = time.monotonic() + bound_s
    attempts = 0
    last = None
    while True:
        check_alive()
        attempts += 1
        try:
            r = client.send(msg_id, [uid], timeout=timeout)
            rc = r.receipts[0]
            if rc.code == 0:
                return attempts
            last = 'receipt code %d %r' % (rc.code, rc.error)
            if rc.code != grpc.StatusCode.UNAVAILABLE.value[0]:
                raise AssertionError('%s probe: %s' % (what, last))
        except grpc.RpcError as e:
            last = '%s %s' % (e.code(), e.details())
            if e.code() not in (grpc.StatusCode.UNAVAILABLE,
                                grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
        if time.monotonic() > deadline:
            raise AssertionError('%s not ready after %.0f s (%s):\n%s' % (
                what, bound_s, last, logs()))
        time.sleep(pause)


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

    def presence(self, uids, timeout=RPC_TIMEOUT_S):
        """Presence(uids): the list of online flags."""
        self.calls['Presence'] += 1
        r = self.stub.Presence(pb.PresenceRequest(uids=list(uids)),
                               metadata=self.metadata, timeout=timeout)
        return list(r.online)

    def subscribe(self, cursor='', timeout=None, read=True, metadata=None):
        """Opens a Subscribe stream (timeout = the call's deadline, None =
        none); with read, a background thread collects its Deliveries at
        once, else only after Subscription.start()."""
        self.calls['Subscribe'] += 1
        return Subscription(self, cursor, timeout=timeout, read=read, metadata=metadata)

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


class Subscription:
    """One Subscribe server stream. A daemon thread iterates it and appends
    each Delivery to `deliveries` under `cond` (notified on every Delivery
    and at the end); `code`/`details` are the final status once `done`
    (grpc.StatusCode.OK if the server ended it cleanly).

    Every wait is bounded: wait_for(n, timeout) returns the first n
    Deliveries or raises AssertionError (also at once when the stream ended
    with fewer); wait_done(timeout) returns the final code or raises."""

    def __init__(self, client, cursor='', timeout=None, read=True, metadata=None):
        self.client = client
        self.cursor = cursor
        self.cond = threading.Condition()
        self.deliveries = []
        self.done = False
        self.code = None
        self.details = None
        self.started_at = time.monotonic()
        self.ended_at = None
        self._thread = None
        md = client.metadata if metadata is None else metadata
        self.call = client.stub.Subscribe(pb.SubscribeRequest(cursor=cursor),
                                          metadata=md, timeout=timeout)
        if read:
            self.start()

    def start(self):
        """Starts reading the stream (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name='subscribe-%s' % self.client.uid)
            self._thread.start()
        return self

    def _run(self):
        code, details = grpc.StatusCode.OK, None
        try:
            for d in self.call:
                with self.cond:
                    self.deliveries.append(d)
                    self.cond.notify_all()
        except grpc.RpcError as e:
            code, details = e.code(), e.details()
        except Exception as e:  # noqa: BLE001 - reported as the final status
            code, details = grpc.StatusCode.UNKNOWN, 'reader thread: %r' % (e,)
        finally:
            with self.cond:
                self.code, self.details = code, details
                self.done = True
                self.ended_at = time.monotonic()
                self.cond.notify_all()

    def __len__(self):
        with self.cond:
            return len(self.deliveries)

    def snapshot(self):
        with self.cond:
            return list(self.deliveries)

    def msg_ids(self):
        return [d.message.msg_id for d in self.snapshot()]

    def status(self):
        with self.cond:
            return self.code, self.details

    def _describe(self):
        ids = [d.message.msg_id for d in self.deliveries]
        shown = ids if len(ids) <= 8 else ids[:4] + ['...'] + ids[-4:]
        return '%d deliveries %s, %s' % (
            len(ids), shown,
            'ended with %s %r' % (self.code, self.details) if self.done else 'still open')

    def wait_for(self, n, timeout):
        """Bounded wait until at least n Deliveries arrived; returns the first
        n. Raises AssertionError at the timeout or as soon as the stream ends
        with fewer."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.deliveries) < n:
                if self._thread is None:
                    raise AssertionError('wait_for on a stream nobody reads (start())')
                if self.done:
                    raise AssertionError('stream ended before %d deliveries: %s' % (
                        n, self._describe()))
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError('%d deliveries not there after %.1f s: %s' % (
                        n, timeout, self._describe()))
                self.cond.wait(left)
            return list(self.deliveries[:n])

    def wait_done(self, timeout):
        """Bounded wait for the end of the stream; returns its status code."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not self.done:
                if self._thread is None:
                    raise AssertionError('wait_done on a stream nobody reads (start())')
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError('stream still open after %.1f s: %s' % (
                        timeout, self._describe()))
                self.cond.wait(left)
            return self.code

    def cancel(self, wait_s=5.0):
        """Cancels the call (client side) and waits (bounded) for the reader
        thread to record the end. Safe to call twice and at cleanup."""
        try:
            self.call.cancel()
        except Exception:  # noqa: BLE001 - cleanup must go on
            pass
        if self._thread is not None:
            self._thread.join(wait_s)


def wait_presence(client, u, want, bound_s, interval_s=0.02):
    """Bounded poll of client.presence([u]) until it is `want`; returns the
    seconds it took. Only UNAVAILABLE is retried: any other error (e.g.
    UNIMPLEMENTED) is raised at once."""
    t0 = time.monotonic()
    deadline = t0 + bound_s
    last = None
    while True:
        try:
            online = client.presence([u], timeout=max(1.0, bound_s))
            if len(online) != 1:
                raise AssertionError('Presence of 1 uid answered %r' % (online,))
            if online[0] == want:
                return time.monotonic() - t0
            last = online[0]
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            last = '%s %s' % (e.code(), e.details())
        if time.monotonic() > deadline:
            raise AssertionError('Presence(%s) not %s after %.1f s (last: %s)' % (
                u, want, bound_s, last))
        time.sleep(interval_s)


# -------------------------------------------------------------- TCP relay

class TcpRelay:
    """127.0.0.1:<port> -> 127.0.0.1:<upstream_port>, two copy threads per
    connection. freeze() makes every pump stop reading and writing while
    all sockets stay open: to both ends the peer is silently gone (no FIN,
    no RST; the kernel still ACKs what fits in the buffers). close() closes
    everything; it is idempotent."""

    def __init__(self, upstream_port):
        self.upstream_port = upstream_port
        self.frozen = threading.Event()
        self.closed = threading.Event()
        self.lock = threading.Lock()
        self.sockets = []
        self.threads = []
        self.connections = 0
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(('127.0.0.1', 0))
        self.listener.listen(16)
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self._spawn(self._accept_loop)

    def _spawn(self, fn, *args):
        t = threading.Thread(target=fn, args=args, daemon=True, name='relay')
        with self.lock:
            self.threads.append(t)
        t.start()

    def _accept_loop(self):
        while not self.closed.is_set():
            try:
                down, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            if self.frozen.is_set():
                down.close()
                continue
            try:
                up = socket.create_connection(('127.0.0.1', self.upstream_port), timeout=5)
            except OSError:
                down.close()
                continue
            for s in (down, up):
                s.settimeout(0.1)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                self.sockets += [down, up]
                self.connections += 1
            self._spawn(self._pump, down, up)
            self._spawn(self._pump, up, down)

    def _pump(self, src, dst):
        while not self.closed.is_set():
            if self.frozen.is_set():
                self.closed.wait(0.1)      # hold the sockets, move nothing
                continue
            try:
                data = src.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                data = b''
            if not data:
                # The peer closed: pass it on (only while not frozen).
                if not self.frozen.is_set():
                    try:
                        dst.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                return
            view = memoryview(data)
            while view and not self.closed.is_set():
                if self.frozen.is_set():
                    break           # drop what was read: it never arrives
                try:
                    n = dst.send(view)
                    view = view[n:]
                except socket.timeout:
                    continue
                except OSError:
                    return

    def freeze(self):
        """Stop forwarding in both directions; keep every socket open."""
        self.frozen.set()

    def close(self):
        self.closed.set()
        try:
            self.listener.close()
        except OSError:
            pass
        with self.lock:
            socks, threads = list(self.sockets), list(self.threads)
            self.sockets = []
        for t in threads:
            t.join(2.0)
        for s in socks:
            try:
                s.close()
            except OSError:
                pass


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

    def subscribe(self, client, cursor='', timeout=None, read=True, metadata=None):
        """client.subscribe(...), cancelled at cleanup (before the
        deployment's cleanup, which was registered earlier)."""
        sub = client.subscribe(cursor, timeout=timeout, read=read, metadata=metadata)
        self.addCleanup(sub.cancel)
        return sub

    def relay(self, upstream_port):
        """A TcpRelay to upstream_port, closed at cleanup."""
        r = TcpRelay(upstream_port)
        self.addCleanup(r.close)
        return r

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
