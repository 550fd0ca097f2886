"""Shared parts of the chaos tests (tests/chaos): a cluster of separate
`imbox shard` and `imbox gateway` processes that can be SIGKILLed and
restarted one by one, optionally with each shard in a network namespace of
its own, and the bookkeeping that checks the delivery promise afterwards.

  * ChaosProc    - imbox_harness.Proc with an environment of its own and
                   PR_SET_PDEATHSIG(SIGKILL): a child dies with the Python
                   process that started it, even when that one is SIGKILLed
                   (processes are started from the main thread only, since
                   the death signal follows the thread that forked).
  * make_root()  - a temp dir on a real disk (not tmpfs: fsync must mean
                   something), removed by the caller.
  * Cluster      - S shards and G gateways. The cluster secret is made first
                   (`imbox token --data-dir GW0`), copied into every
                   gateway's data dir and handed to every shard as
                   IMBOX_SECRET_FILE (forward compatible with shards that
                   require it; today's shard ignores the variable).
                   kill9(kind, i) / restart(kind, i) / wait_ready(...): the
                   same port and data dir, readiness polled with a bound.
  * Ledger       - what the senders were told (every attempted (receiver,
                   msg_id), the acked ones with their receipt's
                   send_time_ms) and what the receivers got; check() gives
                   the figures: acked-but-never-delivered,
                   delivered-but-never-sent (content checked against the
                   sender and msg_id it encodes), extra stored copies of one
                   msg_id (what a client's dedup would have to hide: the
                   server's idempotence failed), and redeliveries before
                   dedup (informative).
"""

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.normpath(os.path.join(_HERE, '..', 'py')))

import grpc  # noqa: E402
import imbox_harness as h  # noqa: E402

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]   # 14, a receipt's code
READY_BOUND_S = 30.0        # a restarted process serves again within this

_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def _die_with_parent():
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class ChaosProc(h.Proc):
    """A Proc with extra environment variables and a parent-death signal."""

    def __init__(self, name, argv, log_dir, env=None):
        super().__init__(name, argv, log_dir)
        self.env = dict(os.environ)
        self.env.update(env or {})

    def start(self):
        log = open(self.log_path, 'ab')
        try:
            log.write(('\n=== start: %s\n' % ' '.join(self.argv)).encode())
            log.flush()
            self.popen = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                          stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True, env=self.env,
                                          preexec_fn=_die_with_parent)
        finally:
            log.close()
        self.expected_exit = False
        return self


def _fs_type(path):
    """The file system type of the mount holding path (from /proc/mounts)."""
    path = os.path.realpath(path)
    best, kind = '', ''
    with open('/proc/self/mounts') as f:
        for line in f:
            parts = line.split()
            mnt = parts[1].replace('\\040', ' ')
            if (path == mnt or path.startswith(mnt.rstrip('/') + '/')) and len(mnt) > len(best):
                best, kind = mnt, parts[2]
    return kind


def make_root(prefix):
    """A fresh temp dir on a real disk: $IMBOX_CHAOS_TMPDIR if set, else the
    system temp dir unless it is tmpfs, else <repo>/build/chaos-tmp."""
    base = os.environ.get('IMBOX_CHAOS_TMPDIR')
    if not base:
        base = tempfile.gettempdir()
        if _fs_type(base) in ('tmpfs', 'ramfs'):
            base = os.path.normpath(os.path.join(_HERE, '..', '..', 'build', 'chaos-tmp'))
    os.makedirs(base, exist_ok=True)
    return tempfile.mkdtemp(prefix=prefix, dir=base)


class Cluster:
    """nshards `imbox shard` + ngateways `imbox gateway`.

    shard_hosts[i] is the address shard i listens on (127.0.0.1 unless
    given); shard_wrap[i] is a command prefix for shard i (for example
    ['ip', 'netns', 'exec', NS]). Gateways listen on 127.0.0.1."""

    def __init__(self, root, nshards=3, ngateways=2, shard_hosts=None, shard_wrap=None,
                 shard_ports=None):
        self.root = root
        self.nshards = nshards
        self.ngateways = ngateways
        self.shard_hosts = shard_hosts or ['127.0.0.1'] * nshards
        self.shard_wrap = shard_wrap or [[] for _ in range(nshards)]
        self.shard_ports = shard_ports or [h.free_port() for _ in range(nshards)]
        self.shard_dirs = [os.path.join(root, 'shard%d' % i) for i in range(nshards)]
        self.gw_ports = [h.free_port() for _ in range(ngateways)]
        self.gw_dirs = [os.path.join(root, 'gw%d' % i) for i in range(ngateways)]
        self.secret_file = os.path.join(self.gw_dirs[0], 'auth.secret')
        self.shards = [None] * nshards
        self.gateways = [None] * ngateways
        self.channels = []
        self.gw_channels = [None] * ngateways
        self._secret = None
        self._probe_uids = [h.uids_on_shard('probe%d' % i, i, nshards, 1)[0]
                            for i in range(nshards)]

    # ---------------------------------------------------------------- setup

    def _make_secret(self):
        """`imbox token` creates GW0/auth.secret; every other gateway gets a
        copy (mode 0600) before it starts."""
        h.cli_token(self.gw_dirs[0], 'chaos-setup')
        with open(self.secret_file, 'rb') as f:
            data = f.read()
        for d in self.gw_dirs[1:]:
            os.makedirs(d, mode=0o700, exist_ok=True)
            fd = os.open(os.path.join(d, 'auth.secret'), os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                         0o600)
            with os.fdopen(fd, 'wb') as out:
                out.write(data)
        self._secret = bytes.fromhex(data.decode('ascii').strip())

    def shard_endpoint(self, i):
        return 'tcp://%s:%d' % (self.shard_hosts[i], self.shard_ports[i])

    def _shard_proc(self, i):
        argv = self.shard_wrap[i] + [
            h.IMBOX_BIN, 'shard', '--index', str(i), '--count', str(self.nshards),
            '--listen', self.shard_endpoint(i), '--data-dir', self.shard_dirs[i]]
        return ChaosProc('shard%d' % i, argv, self.root,
                         env={'IMBOX_SECRET_FILE': self.secret_file})

    def _gateway_proc(self, g):
        argv = [h.IMBOX_BIN, 'gateway', '--listen', '127.0.0.1:%d' % self.gw_ports[g],
                '--shards', ','.join(self.shard_endpoint(i) for i in range(self.nshards)),
                '--data-dir', self.gw_dirs[g]]
        return ChaosProc('gateway%d' % g, argv, self.root)

    def procs(self):
        return [p for p in self.shards + self.gateways if p is not None]

    def start(self, bound_s=READY_BOUND_S):
        self._make_secret()
        for i in range(self.nshards):
            self.shards[i] = self._shard_proc(i).start()
        for g in range(self.ngateways):
            self.gateways[g] = self._gateway_proc(g).start()
        for g in range(self.ngateways):
            self.wait_gateway(g, bound_s)
        return self

    def secret(self):
        return self._secret

    def token(self, u):
        return h.make_token(self._secret, u, int(time.time()) + 86400)

    def channel(self, g):
        """The shared channel to gateway g (gRPC reconnects it by itself)."""
        if self.gw_channels[g] is None:
            self.gw_channels[g] = h.open_channel(self.gw_ports[g])
            self.channels.append(self.gw_channels[g])
        return self.gw_channels[g]

    def client(self, u, g):
        return h.Client(self.channel(g), self.token(u), u)

    # ------------------------------------------------------------ readiness

    def wait_shard(self, i, g, bound_s=READY_BOUND_S):
        """Bounded poll: a Send through gateway g to a uid of shard i until
        its receipt is code 0 (same msg_id on every attempt)."""
        h.send_until_stored(self.client('chaos-probe', g), h.new_msg_id('probe'),
                            self._probe_uids[i],
                            lambda: [p.check_alive() for p in self.procs()], bound_s,
                            'shard %d via gateway %d' % (i, g), self.logs, timeout=6,
                            pause=0.05)

    def wait_gateway(self, g, bound_s=READY_BOUND_S):
        """Gateway g listens, is SERVING and reaches every shard."""
        t_end = time.monotonic() + bound_s
        h.wait_listening(self.gw_ports[g], self.procs(), bound_s)
        h.wait_serving(self.channel(g), self.procs(), max(1.0, t_end - time.monotonic()))
        for i in range(self.nshards):
            self.wait_shard(i, g, max(1.0, t_end - time.monotonic()))

    # ---------------------------------------------------------- kill, start

    def kill9(self, kind, i):
        (self.shards if kind == 'shard' else self.gateways)[i].kill9()

    def restart(self, kind, i, bound_s=READY_BOUND_S):
        """Starts shard or gateway i again (same port, same data dir) and
        waits, with a bound, until every gateway serves it / it serves every
        shard. Returns the seconds from start to ready."""
        t0 = time.monotonic()
        if kind == 'shard':
            self.shards[i] = self._shard_proc(i).start()
            for g in range(self.ngateways):
                self.wait_shard(i, g, max(1.0, bound_s - (time.monotonic() - t0)))
        else:
            self.gateways[i] = self._gateway_proc(i).start()
            self.wait_gateway(i, bound_s)
        return time.monotonic() - t0

    def terminate_all(self, grace_s=20.0):
        """SIGTERM to every process (gateways first), each must exit 0 (a
        graceful stop; under ASan also no leak and no error). Returns the
        list of "name exited rc" for those that did not."""
        bad = []
        for p in self.gateways + self.shards:
            rc = p.terminate(grace_s)
            if rc != 0:
                bad.append('%s exited %s after SIGTERM' % (p.name, rc))
        return bad

    def logs(self, n=40):
        return '\n'.join('--- %s (%s)\n%s' % (p.name, p.log_path, p.log_tail(n))
                         for p in self.procs())

    def stop(self):
        for ch in self.channels:
            try:
                ch.close()
            except Exception:  # noqa: BLE001 - cleanup goes on
                pass
        self.channels = []
        for p in self.procs():
            p.kill9()


class Ledger:
    """Thread-safe record of sends and deliveries, and the final check."""

    def __init__(self):
        self.lock = threading.Lock()
        self.sent = {}        # (receiver, msg_id) -> sender, every attempt
        self.acked = {}       # (receiver, msg_id) -> receipt send_time_ms
        self.unknown = set()  # (receiver, msg_id) given up without a receipt
        self.errors = []      # unexpected codes and statuses
        self.deliveries = {}  # (receiver, msg_id) -> [(sender, send_time_ms, content, rcv)]
        self.send_calls = 0
        self.send_failures = 0  # calls or receipts that had to be retried

    @staticmethod
    def content(sender, msg_id):
        return ('chaos|%s|%s' % (sender, msg_id)).encode('utf-8')

    def attempt(self, sender, msg_id, receivers):
        with self.lock:
            for r in receivers:
                self.sent[(r, msg_id)] = sender

    def ack(self, receiver, msg_id, send_time_ms):
        with self.lock:
            self.acked[(receiver, msg_id)] = send_time_ms
            self.unknown.discard((receiver, msg_id))

    def give_up(self, receiver, msg_id):
        with self.lock:
            if (receiver, msg_id) not in self.acked:
                self.unknown.add((receiver, msg_id))

    def error(self, text):
        with self.lock:
            if len(self.errors) < 100:
                self.errors.append(text)

    def delivered(self, receiver, m):
        with self.lock:
            self.deliveries.setdefault((receiver, m.msg_id), []).append(
                (m.sender_uid, m.send_time_ms, bytes(m.content), m.receiver_uid))

    def check(self):
        """The figures; `ok` when the three that must be 0 are 0 and no
        unexpected error was seen."""
        with self.lock:
            lost = sorted(k for k in self.acked if k not in self.deliveries)
            phantom, copies, mismatched = [], 0, []
            redelivered = 0
            for (rcv, msg_id), ds in self.deliveries.items():
                sender = self.sent.get((rcv, msg_id))
                redelivered += len(ds) - 1
                bad = sender is None or any(
                    d[0] != sender or d[2] != self.content(sender, msg_id) or d[3] != rcv
                    for d in ds)
                if bad:
                    phantom.append((rcv, msg_id, ds[0]))
                    continue
                stored = {d[1] for d in ds}
                copies += len(stored) - 1
                t = self.acked.get((rcv, msg_id))
                if t is not None and stored != {t}:
                    mismatched.append((rcv, msg_id, t, sorted(stored)))
            out = {
                'sent': len(self.sent),
                'acked': len(self.acked),
                'unknown': len(self.unknown),
                'send_calls': self.send_calls,
                'send_retries': self.send_failures,
                'delivered_distinct': len(self.deliveries),
                'lost': len(lost),
                'phantom': len(phantom),
                'dup_after_dedup': copies,
                'dup_before_dedup': redelivered,
                'receipt_mismatch': len(mismatched),
                'errors': len(self.errors),
            }
            out['ok'] = (out['lost'] == 0 and out['phantom'] == 0 and copies == 0 and
                         not mismatched and not self.errors)
            out['examples'] = {'lost': lost[:5], 'phantom': phantom[:5],
                               'receipt_mismatch': mismatched[:5], 'errors': self.errors[:10]}
            return out


def remove_root(root):
    shutil.rmtree(root, ignore_errors=True)


class Terminated(Exception):
    pass


def raise_on_sigterm():
    """SIGTERM (ctest's timeout, a kill) unwinds like Ctrl-C, so that every
    `finally` cleans up."""
    def _h(signum, frame):
        raise Terminated('signal %d' % signum)
    signal.signal(signal.SIGTERM, _h)
    signal.signal(signal.SIGHUP, _h)
