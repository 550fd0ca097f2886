#!/usr/bin/python3
"""Ack-then-restart benchmark for `imbox serve`: do small acks pile up
RocksDB range deletions that make a restart slow and memory-hungry?

For each workload N,SENDERS,PAGE,STOP the script:

  1. starts `BUILD/bin/imbox serve --listen 127.0.0.1:PORT --data-dir D`
     (D a fresh directory on the real disk, under --base-dir) and waits for
     grpc.health.v1 Health/Check = SERVING (bounded poll);
  2. sends N messages to one receiver V from SENDERS senders (unique msg_ids,
     --inflight calls in flight with grpc futures; failed receipts are retried
     with the same msg_id, which dedup makes safe);
  3. drains V with Pull page after page (page_size PAGE), each call passing the
     previous response's cursor, so each Pull acks the previous page and the
     final empty page acks the last one; checks that every message arrived
     exactly once. Meanwhile a side thread sends, open loop at --side-rate/s,
     to a DIFFERENT receiver and records each Send's latency and every receipt
     code != 0 or failed call (this is where a memtable flush full of range
     deletions shows up);
  4. records the serving process's VmRSS/VmHWM (/proc/PID/status) after the
     drain, then stops it: STOP=kill is SIGKILL, STOP=term is SIGTERM and a
     wait for the exit (its duration is reported);
  5. restarts `imbox serve` on the same data dir and measures exec -> SERVING
     (TCP connect, then Health/Check, polled every --poll-ms, bound
     --restart-bound s) and the restarted process's peak RSS (VmHWM once
     SERVING; VmRSS is also sampled while it starts);
  6. checks that one Pull on V returns nothing (everything was acked), stops
     the server and removes D.

It prints the command line, the disk's fsync rate (BUILD/bin/fsync_rate, before
and after all workloads), one markdown table row per workload as it finishes,
and notes (errors, server log tails) after the table. Progress goes to stderr.

Safety: every process is started in its own session and its process group is
killed on every exit path. A watchdog SIGKILLs a server whose VmRSS exceeds
--rss-limit-mb or when the machine's MemAvailable falls under
--min-available-mb (the row then says so), so a runaway restart cannot push
the machine into the OOM killer.

Run (Debian's grpcio/protobuf work only with /usr/bin/python3):

  /usr/bin/python3 bench/ack_restart.py --build build
  /usr/bin/python3 bench/ack_restart.py --build build --rows quick
  /usr/bin/python3 bench/ack_restart.py --build build \\
      --workload 100000,1,1,kill --workload 5000,1,1000,kill

Protocol details (tokens from DATA_DIR/auth.secret, stubs from BUILD/gen/py,
Health check bytes, channel options) come from tests/py/imbox_harness.py.
"""

import argparse
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
HARNESS_DIR = os.path.normpath(os.path.join(HERE, '..', 'tests', 'py'))

# N,SENDERS,PAGE,STOP
ROWS = {
    'default': [
        (2500, 1, 1, 'kill'),
        (5000, 1, 1, 'kill'),
        (20000, 4, 1, 'term'),
        (5000, 1, 1000, 'kill'),
        (5000, 5000, 1, 'kill'),
        (100000, 1, 1, 'kill'),
    ],
    'quick': [
        (2000, 1, 1, 'kill'),
        (2000, 1, 1000, 'kill'),
    ],
}

H = None        # tests/py/imbox_harness, imported once --build is known
LIVE = set()    # servers started and not yet reaped (killed on a signal)
grpc = None
pb = None
pb_grpc = None

# Health polling must not be slowed down by gRPC's reconnect backoff (1 s
# initial, growing) while the server is not yet listening.
FAST_RECONNECT = [
    ('grpc.initial_reconnect_backoff_ms', 5),
    # (not min_reconnect_backoff_ms: gRPC core takes it as the minimum
    # connect timeout too, and 5 ms would cut handshakes short)
    ('grpc.max_reconnect_backoff_ms', 50),
]


def log(msg):
    sys.stderr.write('[%s] %s\n' % (time.strftime('%H:%M:%S'), msg))
    sys.stderr.flush()


# --------------------------------------------------------------- arguments

def parse_workload(s):
    try:
        n, senders, page, stop = s.split(',')
        w = (int(n), int(senders), int(page), stop.strip().lower())
    except ValueError:
        raise argparse.ArgumentTypeError('expected N,SENDERS,PAGE,STOP, got %r' % s)
    if w[0] < 1 or w[1] < 1 or w[1] > w[0] or not 1 <= w[2] <= 1000 or w[3] not in ('kill', 'term'):
        raise argparse.ArgumentTypeError(
            'need N >= SENDERS >= 1, 1 <= PAGE <= 1000, STOP kill|term: %r' % s)
    return w


def parse_args(argv):
    ap = argparse.ArgumentParser(
        description='Ack-then-restart benchmark of `imbox serve` (see the top of this file).',
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog='Workloads: N messages to one receiver from SENDERS senders, drained '
               'with page size PAGE, then STOP = kill (SIGKILL) or term (SIGTERM). '
               'Rows "default": %s; "quick": %s.' % (
                   ' '.join('%d,%d,%d,%s' % w for w in ROWS['default']),
                   ' '.join('%d,%d,%d,%s' % w for w in ROWS['quick'])))
    ap.add_argument('--build', default=os.path.normpath(os.path.join(HERE, '..', 'build')),
                    help='build dir with bin/imbox, bin/fsync_rate and gen/py')
    ap.add_argument('--rows', choices=sorted(ROWS), default=None,
                    help='predefined workloads (default: "default" unless --workload is given)')
    ap.add_argument('--workload', action='append', type=parse_workload, default=[],
                    metavar='N,SENDERS,PAGE,STOP',
                    help='a workload, repeatable (after the --rows ones if both are given)')
    ap.add_argument('--base-dir', default='/var/tmp',
                    help='where the data dirs go; must be a real disk, not tmpfs (default /var/tmp)')
    ap.add_argument('--shards', type=int, default=None,
                    help='pass --shards to imbox serve (default: the server default)')
    ap.add_argument('--inflight', type=int, default=128,
                    help='Sends in flight while loading V (default 128)')
    ap.add_argument('--content-bytes', type=int, default=32,
                    help='content size of each message (default 32)')
    ap.add_argument('--side-rate', type=float, default=200.0,
                    help='Sends/s to another receiver during the drain (default 200; 0 = off)')
    ap.add_argument('--drain-bound', type=float, default=1800.0,
                    help='give up a drain after this many seconds (default 1800)')
    ap.add_argument('--restart-bound', type=float, default=600.0,
                    help='bound for SERVING after the restart and for a SIGTERM exit (default 600)')
    ap.add_argument('--poll-ms', type=float, default=5.0,
                    help='poll interval while waiting for SERVING after the restart (default 5)')
    ap.add_argument('--rss-limit-mb', type=int, default=10240,
                    help='SIGKILL a server whose VmRSS goes over this (MiB, default 10240)')
    ap.add_argument('--min-available-mb', type=int, default=2048,
                    help='SIGKILL the server when MemAvailable falls under this (MiB, default 2048)')
    ap.add_argument('--keep', action='store_true',
                    help='keep data dirs and logs (printed in the notes)')
    a = ap.parse_args(argv)
    workloads = []
    if a.rows or not a.workload:
        workloads += ROWS[a.rows or 'default']
    workloads += a.workload
    a.workloads = workloads
    a.build = os.path.abspath(a.build)
    a.base_dir = os.path.abspath(a.base_dir)
    return a


def import_harness(build):
    """Points the harness at BUILD (it reads IMBOX_BIN/IMBOX_PY_GEN on import)."""
    global H, grpc, pb, pb_grpc
    os.environ['IMBOX_BIN'] = os.path.join(build, 'bin', 'imbox')
    os.environ['IMBOX_PY_GEN'] = os.path.join(build, 'gen', 'py')
    sys.path.insert(0, HARNESS_DIR)
    import imbox_harness  # noqa: E402
    H = imbox_harness
    grpc, pb, pb_grpc = H.grpc, H.pb, H.pb_grpc


# ------------------------------------------------------------- /proc helpers

def proc_status_kb(pid):
    """{'VmRSS': kB, 'VmHWM': kB} of a live process, {} when it is gone."""
    out = {}
    try:
        with open('/proc/%d/status' % pid, 'rb') as f:
            for line in f:
                if line.startswith(b'VmRSS:') or line.startswith(b'VmHWM:'):
                    k, v = line.split(b':', 1)
                    out[k.decode()] = int(v.split()[0])
    except (OSError, ValueError):
        pass
    return out


def mem_available_kb():
    try:
        with open('/proc/meminfo', 'rb') as f:
            for line in f:
                if line.startswith(b'MemAvailable:'):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def fstype(path):
    r = subprocess.run(['df', '--output=fstype', path], stdout=subprocess.PIPE,
                       stderr=subprocess.DEVNULL, text=True)
    lines = r.stdout.split()
    return lines[-1] if r.returncode == 0 and len(lines) >= 2 else '?'


def mib(kb):
    return '%.0f MiB' % (kb / 1024.0) if kb else '-'


def loadavg():
    try:
        with open('/proc/loadavg') as f:
            return ' '.join(f.read().split()[:3])
    except OSError:
        return '?'


class Guard(threading.Thread):
    """Samples a process's VmRSS every `interval` s, keeps the maximum, and
    SIGKILLs its process group when VmRSS > limit or the machine's
    MemAvailable < floor."""

    def __init__(self, proc, limit_kb, floor_kb, interval=0.01):
        super().__init__(daemon=True)
        self.proc = proc
        self.limit_kb = limit_kb
        self.floor_kb = floor_kb
        self.interval = interval
        self.max_rss_kb = 0
        self.killed = None          # reason, when the guard killed it
        self._halt = threading.Event()

    def run(self):
        pid = self.proc.pid
        while not self._halt.is_set() and self.proc.alive():
            rss = proc_status_kb(pid).get('VmRSS', 0)
            self.max_rss_kb = max(self.max_rss_kb, rss)
            avail = mem_available_kb()
            reason = None
            if rss > self.limit_kb:
                reason = 'VmRSS %s > --rss-limit-mb' % mib(rss)
            elif avail is not None and avail < self.floor_kb:
                reason = 'MemAvailable %s < --min-available-mb (VmRSS %s)' % (mib(avail), mib(rss))
            if reason:
                self.killed = reason
                log('GUARD: SIGKILL %s (pid %d): %s' % (self.proc.name, pid, reason))
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                return
            self._halt.wait(self.interval)

    def stop(self):
        self._halt.set()
        self.join(timeout=5)


# ----------------------------------------------------------------- readiness

def tcp_accepts(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        try:
            s.connect(('127.0.0.1', port))
            return True
        except OSError:
            return False


def wait_serving(port, proc, bound_s, interval_s):
    """Bounded poll: the port accepts, then Health/Check answers SERVING.
    Returns (seconds since this call, None) or (seconds, reason it failed)."""
    t0 = time.monotonic()
    deadline = t0 + bound_s
    while not tcp_accepts(port):
        if not proc.alive():
            return time.monotonic() - t0, 'exited (%s) before listening' % proc.popen.returncode
        if time.monotonic() > deadline:
            return time.monotonic() - t0, 'not listening after %.0f s' % bound_s
        time.sleep(interval_s)
    ch = grpc.insecure_channel('127.0.0.1:%d' % port, options=H.CHANNEL_OPTIONS + FAST_RECONNECT)
    try:
        last = None
        while True:
            try:
                if H.health_check(ch, timeout=1.0) == H.HEALTH_SERVING:
                    return time.monotonic() - t0, None
                last = 'not SERVING'
            except grpc.RpcError as e:
                last = '%s %s' % (e.code(), e.details())
            if not proc.alive():
                return time.monotonic() - t0, 'exited (%s) before SERVING' % proc.popen.returncode
            if time.monotonic() > deadline:
                return time.monotonic() - t0, 'not SERVING after %.0f s (%s)' % (bound_s, last)
            time.sleep(interval_s)
    finally:
        ch.close()


# ------------------------------------------------------------------- loading

def send_all(stub, jobs, inflight, timeout=60.0):
    """jobs: [(msg_id, receiver, metadata, content)]. Sends them with up to
    `inflight` futures outstanding; returns (ok msg_ids, failed jobs,
    Counter of failure kinds)."""
    sem = threading.BoundedSemaphore(inflight)
    lock = threading.Lock()
    ok, failed, kinds = set(), [], Counter()

    def done(job, fut):
        try:
            err = fut.exception()
            if err is not None:
                kind = 'rpc %s' % err.code()
            else:
                rc = fut.result().receipts
                kind = None if len(rc) == 1 and rc[0].code == 0 else \
                    'receipt %s' % (rc[0].code if rc else 'missing')
            with lock:
                if kind is None:
                    ok.add(job[0])
                else:
                    failed.append(job)
                    kinds[kind] += 1
        finally:
            sem.release()

    for job in jobs:
        sem.acquire()
        msg_id, receiver, md, content = job
        fut = stub.Send.future(pb.SendRequest(msg_id=msg_id, receiver_uids=[receiver],
                                              content=content),
                               metadata=md, timeout=timeout)
        fut.add_done_callback(lambda f, job=job: done(job, f))
    for _ in range(inflight):   # wait for the stragglers
        sem.acquire()
    return ok, failed, kinds


class SideLoad(threading.Thread):
    """Open-loop Sends at `rate`/s from one sender to receivers other than V
    (a new receiver every 20,000 messages, far from the inbox quota).
    Latency is measured from issuing the call to its completion."""

    PER_RECEIVER = 20000
    MAX_INFLIGHT = 5000

    def __init__(self, stub, md, prefix, rate, content):
        super().__init__(daemon=True)
        self.stub, self.md, self.prefix = stub, md, prefix
        self.rate, self.content = rate, content
        self.lat = []
        self.fail = Counter()
        self.issued = 0
        self.skipped = 0            # ticks dropped: too many in flight
        self._inflight = 0
        self._lock = threading.Lock()
        self._halt = threading.Event()

    def _done(self, t0, fut):
        dt = time.perf_counter() - t0
        err = fut.exception()
        with self._lock:
            self._inflight -= 1
            self.lat.append(dt)
            if err is not None:
                self.fail['rpc %s' % err.code()] += 1
            else:
                for r in fut.result().receipts:
                    if r.code != 0:
                        self.fail['code %d: %s' % (r.code, r.error)] += 1

    def run(self):
        period = 1.0 / self.rate
        nxt = time.perf_counter()
        while not self._halt.is_set():
            now = time.perf_counter()
            if now < nxt:
                time.sleep(min(nxt - now, 0.05))
                continue
            nxt += period
            if now - nxt > 1.0:          # fell far behind (a stalled client):
                nxt = now + period       # do not burst to catch up
            with self._lock:
                if self._inflight >= self.MAX_INFLIGHT:
                    self.skipped += 1
                    continue
                self._inflight += 1
            i = self.issued
            self.issued += 1
            rcv = '%s-w%d' % (self.prefix, i // self.PER_RECEIVER)
            t0 = time.perf_counter()
            fut = self.stub.Send.future(pb.SendRequest(
                msg_id='%s-side-%d' % (self.prefix, i), receiver_uids=[rcv],
                content=self.content), metadata=self.md, timeout=30)
            fut.add_done_callback(lambda f, t0=t0: self._done(t0, f))

    def finish(self, bound_s=35.0):
        self._halt.set()
        self.join(timeout=5)
        deadline = time.monotonic() + bound_s
        while time.monotonic() < deadline:
            with self._lock:
                if self._inflight == 0:
                    break
            time.sleep(0.01)
        with self._lock:
            lat = sorted(self.lat)
            pending = self._inflight
        def pct(p):
            return lat[max(0, -(-len(lat) * p // 100) - 1)] if lat else None
        return {'n': len(lat), 'p50': pct(50), 'p99': pct(99), 'max': lat[-1] if lat else None,
                'fail': dict(self.fail), 'pending': pending, 'skipped': self.skipped}


def drain(stub, md, page, bound_s, proc):
    """Pull page after page with the previous cursor until an empty page.
    Returns a dict: occurrences per msg_id, pulls, retries, seconds, error."""
    seen = Counter()
    cursor, pulls, retries, err = '', 0, 0, None
    t0 = time.monotonic()
    last_log = t0
    while True:
        now = time.monotonic()
        if now - t0 > bound_s:
            err = 'drain bound %.0f s reached' % bound_s
            break
        if now - last_log >= 15:
            last_log = now
            log('  drain: %d pulls, %d messages, %.0f s, %.0f pulls/s' % (
                pulls, sum(seen.values()), now - t0, pulls / (now - t0)))
        try:
            r = stub.Pull(pb.PullRequest(cursor=cursor, page_size=page), metadata=md, timeout=60)
        except grpc.RpcError as e:
            if not proc.alive():
                err = 'server exited (%s) during the drain' % proc.popen.returncode
                break
            if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                retries += 1       # same cursor again: acks nothing more
                time.sleep(0.05)
                continue
            err = 'Pull: %s %s' % (e.code(), e.details())
            break
        pulls += 1
        for m in r.messages:
            seen[m.msg_id] += 1
        if not r.messages:
            break
        cursor = r.cursor
    return {'seen': seen, 'pulls': pulls, 'retries': retries,
            'secs': time.monotonic() - t0, 'error': err}


# ------------------------------------------------------------------ workload

def fmt_s(s):
    if s is None:
        return '-'
    return '%.0f ms' % (s * 1000) if s < 1 else '%.1f s' % s


def describe(w):
    n, senders, page, stop = w
    return '%s from %s sender%s, page %d, %s' % (
        format(n, ','), format(senders, ','), '' if senders == 1 else 's', page,
        'kill -9' if stop == 'kill' else 'SIGTERM')


def run_workload(w, a, idx):
    n, nsenders, page, stop = w
    imbox = os.path.join(a.build, 'bin', 'imbox')
    root = tempfile.mkdtemp(prefix='ack-restart-', dir=a.base_dir)
    data = os.path.join(root, 'data')
    res = {'w': w, 'notes': [], 'load': loadavg()}
    procs, channels, guards = [], [], []
    run = 'r%d%s' % (idx, os.urandom(3).hex())
    limit_kb, floor_kb = a.rss_limit_mb * 1024, a.min_available_mb * 1024

    def serve(name):
        port = H.free_port()
        argv = [imbox, 'serve', '--listen', '127.0.0.1:%d' % port, '--data-dir', data]
        if a.shards:
            argv += ['--shards', str(a.shards)]
        p = H.Proc(name, argv, root)
        t0 = time.monotonic()
        p.start()
        procs.append(p)
        LIVE.add(p)
        g = Guard(p, limit_kb, floor_kb)
        g.start()
        guards.append(g)
        return p, port, g, t0

    def note_failure(p, g, what):
        res['notes'].append('%s%s; %s log:\n%s' % (
            what, ' (guard: %s)' % g.killed if g.killed else '', p.name,
            indent(p.log_tail(25))))

    try:
        # 1. first server
        log('row %d: %s (load %s)' % (idx, describe(w), res['load']))
        p1, port1, g1, t1 = serve('serve')
        secs, why = wait_serving(port1, p1, 30.0, 0.02)
        if why:
            res['fatal'] = 'first start: ' + why
            note_failure(p1, g1, 'first start')
            return res
        ch = grpc.insecure_channel('127.0.0.1:%d' % port1, options=H.CHANNEL_OPTIONS)
        side_ch = grpc.insecure_channel('127.0.0.1:%d' % port1, options=H.CHANNEL_OPTIONS)
        channels += [ch, side_ch]
        stub, side_stub = pb_grpc.InboxStub(ch), pb_grpc.InboxStub(side_ch)
        secret = H.read_secret(data)
        exp = int(time.time()) + 86400

        def md(u):
            return (('authorization', 'Bearer ' + H.make_token(secret, u, exp)),)

        v = '%s-v' % run
        v_md = md(v)
        sender_md = [md('%s-s%d' % (run, i)) for i in range(nsenders)]
        content = b'x' * a.content_bytes

        # 2. load V
        jobs = [('%s-m%d' % (run, i), v, sender_md[i % nsenders], content) for i in range(n)]
        t = time.monotonic()
        ok, failed, kinds = send_all(stub, jobs, a.inflight)
        rounds = 0
        while failed and rounds < 5 and p1.alive():
            rounds += 1
            log('  %d Sends failed (%s), retrying them' % (len(failed), dict(kinds)))
            more_ok, failed, k2 = send_all(stub, failed, a.inflight)
            ok |= more_ok
        res['send_secs'] = time.monotonic() - t
        res['sent'] = len(ok)
        if kinds:
            res['notes'].append('loading V: failed Sends %s, %d left after %d retry rounds'
                                % (dict(kinds), len(failed), rounds))
        log('  sent %d/%d in %.1f s' % (len(ok), n, res['send_secs']))
        if len(ok) != n:
            res['notes'].append('only %d of %d messages stored' % (len(ok), n))

        # 3. drain V, with the side load on another receiver
        side = None
        if a.side_rate > 0:
            side = SideLoad(side_stub, md('%s-side' % run), run, a.side_rate, content)
            side.start()
        d = drain(stub, v_md, page, a.drain_bound, p1)
        if side:
            res['side'] = side.finish()
        res['drain'] = d
        res['drain_max_rss_kb'] = g1.max_rss_kb
        seen = d['seen']
        res['missing'] = len(ok - set(seen))
        res['dups'] = sum(c - 1 for c in seen.values() if c > 1)
        res['unexpected'] = len(set(seen) - ok)
        if d['error']:
            note_failure(p1, g1, 'drain: ' + d['error'])
        log('  drained %d messages in %d pulls, %.1f s%s' % (
            len(seen), d['pulls'], d['secs'], ' (%s)' % d['error'] if d['error'] else ''))
        res['after_drain'] = proc_status_kb(p1.pid) if p1.alive() else {}

        # 4. stop
        for c in channels:
            c.close()
        channels = []
        t = time.monotonic()
        if stop == 'kill':
            p1.kill9()
            res['stop'] = 'SIGKILL'
        else:
            rc = p1.terminate(grace_s=a.restart_bound)
            res['stop'] = 'SIGTERM: exit %s after %s' % (rc, fmt_s(time.monotonic() - t))
        g1.stop()
        if p1.popen.poll() is None:   # must be gone before the restart opens the data
            p1.popen.wait(timeout=60)

        # 5. restart on the same data dir
        p2, port2, g2, t2 = serve('restart')
        secs, why = wait_serving(port2, p2, a.restart_bound, a.poll_ms / 1000.0)
        res['restart_secs'] = time.monotonic() - t2
        st = proc_status_kb(p2.pid)
        res['restart_hwm_kb'] = st.get('VmHWM')
        res['restart_max_rss_kb'] = max(g2.max_rss_kb, st.get('VmRSS', 0))
        if why:
            res['restart_error'] = why + (' (guard: %s)' % g2.killed if g2.killed else '')
            note_failure(p2, g2, 'restart: ' + why)
            log('  restart FAILED after %.1f s: %s' % (res['restart_secs'], res['restart_error']))
            return res
        log('  restart SERVING after %.3f s, VmHWM %s' % (res['restart_secs'],
                                                         mib(res['restart_hwm_kb'])))

        # 6. V must be empty
        ch = grpc.insecure_channel('127.0.0.1:%d' % port2, options=H.CHANNEL_OPTIONS)
        channels.append(ch)
        stub = pb_grpc.InboxStub(ch)
        try:
            r = stub.Pull(pb.PullRequest(cursor='', page_size=1000), metadata=v_md, timeout=60)
            if r.messages:
                total = stub.Counts(pb.CountsRequest(), metadata=v_md, timeout=60).total
                res['verify'] = '%d left' % total
            else:
                res['verify'] = 'empty'
        except grpc.RpcError as e:
            res['verify'] = 'Pull failed: %s' % e.code()
        p2.terminate(grace_s=60)
        return res
    except Exception as e:  # noqa: BLE001 - report the row, go on with the next
        res['fatal'] = '%s: %s' % (type(e).__name__, e)
        for p in procs:
            res['notes'].append('%s log:\n%s' % (p.name, indent(p.log_tail(25))))
        return res
    finally:
        # Servers first: closing a channel can hang if a signal interrupted
        # grpc in the middle of a call.
        for p in procs:
            p.kill9()
            LIVE.discard(p)
        for g in guards:
            g.stop()
        for c in channels:
            try:
                c.close()
            except Exception:  # noqa: BLE001
                pass
        if a.keep:
            res['notes'].append('kept %s' % root)
        else:
            shutil.rmtree(root, ignore_errors=True)


def indent(s):
    return '\n'.join('    ' + l for l in s.splitlines())


HEADER = ('| workload | loading V | drain: pulls, time | exactly once | '
          'Sends to another receiver during the drain: n, p50 / p99 / max, failures | '
          'serving RSS after drain (VmRSS / VmHWM; max sampled) | stop | '
          'restart to SERVING | peak RSS of the restarted process (VmHWM; max VmRSS sampled) | '
          'Pull on V after restart |')


def format_row(r):
    cells = [describe(r['w'])]
    if 'fatal' in r and 'drain' not in r:
        cells.append('FAILED: %s' % r['fatal'])
        cells += [''] * 8
        return '| ' + ' | '.join(cells) + ' |'
    cells.append('%s in %s' % (format(r.get('sent', 0), ','), fmt_s(r.get('send_secs'))))
    d = r['drain']
    cells.append('%s pulls, %s%s%s' % (
        format(d['pulls'], ','), fmt_s(d['secs']),
        ', %d retried' % d['retries'] if d['retries'] else '',
        ', **%s**' % d['error'] if d['error'] else ''))
    if r['missing'] == 0 and r['dups'] == 0 and r['unexpected'] == 0:
        cells.append('yes')
    else:
        cells.append('**no**: %d missing, %d duplicates, %d unexpected' % (
            r['missing'], r['dups'], r['unexpected']))
    s = r.get('side')
    if s:
        fails = ', '.join('%d x %s' % (c, k) for k, c in sorted(s['fail'].items())) or 'none'
        extra = ''
        if s['pending']:
            extra += ', %d never answered' % s['pending']
        if s['skipped']:
            extra += ', %d not issued (too many in flight)' % s['skipped']
        cells.append('%d, %s / %s / %s, %s%s' % (
            s['n'], fmt_s(s['p50']), fmt_s(s['p99']), fmt_s(s['max']),
            fails if fails == 'none' else '**%s**' % fails, extra))
    else:
        cells.append('-')
    ad = r.get('after_drain') or {}
    cells.append('%s / %s; %s' % (mib(ad.get('VmRSS')), mib(ad.get('VmHWM')),
                                  mib(r.get('drain_max_rss_kb'))))
    cells.append(r.get('stop', '-'))
    if 'restart_secs' not in r:
        cells += ['-', '-', '-']
    elif r.get('restart_error'):
        cells.append('**%s: %s**' % (fmt_s(r['restart_secs']), r['restart_error']))
        cells.append('%s; %s' % (mib(r.get('restart_hwm_kb')), mib(r.get('restart_max_rss_kb'))))
        cells.append('-')
    else:
        cells.append(fmt_s(r['restart_secs']) if r['restart_secs'] >= 1
                     else '%.3f s' % r['restart_secs'])
        cells.append('%s; %s' % (mib(r.get('restart_hwm_kb')), mib(r.get('restart_max_rss_kb'))))
        cells.append(r.get('verify', '-'))
    if 'fatal' in r:
        cells[-1] += ' (FAILED: %s)' % r['fatal']
    return '| ' + ' | '.join(cells) + ' |'


def fsync_rate(a):
    d = tempfile.mkdtemp(prefix='ack-restart-fsync-', dir=a.base_dir)
    try:
        r = subprocess.run([os.path.join(a.build, 'bin', 'fsync_rate'), '--dir', d],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=120)
        lines = r.stdout.splitlines()
        return lines[0] if lines else '(fsync_rate printed nothing, exit %d)' % r.returncode
    except (OSError, subprocess.TimeoutExpired) as e:
        return '(fsync_rate failed: %s)' % e
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main(argv):
    a = parse_args(argv)
    imbox = os.path.join(a.build, 'bin', 'imbox')
    if not os.access(imbox, os.X_OK):
        sys.exit('no executable %s' % imbox)
    os.makedirs(a.base_dir, exist_ok=True)
    fs = fstype(a.base_dir)
    if fs == 'tmpfs':
        sys.exit('%s is tmpfs: pick a real disk with --base-dir' % a.base_dir)
    import_harness(a.build)

    # SIGTERM/SIGHUP/SIGINT: kill the servers' process groups right away,
    # then SystemExit so the finally blocks clean up the rest.
    def on_signal(signum, frame):
        for p in list(LIVE):
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    out = sys.stdout
    out.write('command: %s\n' % ' '.join(shlex.quote(x) for x in [sys.executable] + sys.argv))
    out.write('build: %s (bin/imbox modified %s)\n' % (
        a.build, time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(os.path.getmtime(imbox)))))
    out.write('data under: %s (%s); cores: %d; load avg: %s\n' % (
        a.base_dir, fs, os.cpu_count() or 0, loadavg()))
    out.write('fsync rate before: %s\n\n' % fsync_rate(a))
    out.write(HEADER + '\n' + '|---' * (HEADER.count('|') - 1) + '|\n')
    out.flush()
    results = []
    try:
        for i, w in enumerate(a.workloads, 1):
            r = run_workload(w, a, i)
            results.append(r)
            out.write(format_row(r) + '\n')
            out.flush()
    finally:
        out.write('\nfsync rate after: %s\nload avg after: %s\n' % (fsync_rate(a), loadavg()))
        notes = [(describe(r['w']), r) for r in results]
        if any(r['notes'] or 'fatal' in r for _, r in notes):
            out.write('\nnotes:\n')
            for name, r in notes:
                for n in r['notes']:
                    out.write('- %s (load at start %s): %s\n' % (name, r['load'], n))
        out.flush()
    bad = any('fatal' in r or r.get('restart_error') or r.get('drain', {}).get('error')
              for r in results)
    return 1 if bad else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
