"""`imbox backup` and `imbox restore` against real servers on loopback.

  * a live `imbox serve` under continuous Sends is backed up (through its
    DATA_DIR/admin.sock), stopped, restored into a new data dir, and a new
    server on it holds every message acknowledged before the backup began,
    once each; the Sends went on being answered during the backup (the
    slowest one is printed, with the backup's size and time);
  * a stopped server is backed up (no socket: the command opens the
    databases itself); a backup into an existing directory, a restore into
    a non-empty one, of the other kind, or from a directory that is no
    complete backup are refused and change nothing; a stale admin.sock
    left by a SIGKILL is replaced at the next start;
  * one `imbox shard` of a cluster is backed up live, SIGKILLed, restored
    into a new data dir and restarted on it.

IMBOX_BACKUP_N (default 300) messages are acknowledged before the backup.
"""

import os
import re
import stat
import subprocess
import threading
import time
import unittest

import grpc

from imbox_harness import (IMBOX_BIN, READY_TIMEOUT_S, ImboxCluster, ImboxServer,
                           ImboxTestCase, drain, new_msg_id, uid, uids_on_shard)

N_PRE = int(os.environ.get("IMBOX_BACKUP_N", "300"))
RECEIVERS_PER_SEND = 4


def imbox(*args, timeout=120):
    """Runs `imbox ARGS` and returns the CompletedProcess (text output)."""
    return subprocess.run([IMBOX_BIN] + list(args), stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=timeout, text=True)


def mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def tree(path):
    """{relative path: (size, mode)} of everything under path."""
    out = {}
    for d, dirs, files in os.walk(path):
        for n in dirs + files:
            p = os.path.join(d, n)
            st = os.lstat(p)
            out[os.path.relpath(p, path)] = (st.st_size, stat.S_IMODE(st.st_mode))
    return out


class Sender(threading.Thread):
    """Sends one message after another, each to RECEIVERS_PER_SEND of the
    receivers in turn, and records every Send: (msg_id, receivers, start,
    end) in monotonic seconds, in `acked` when every receipt is code 0."""

    def __init__(self, client, receivers):
        super().__init__(daemon=True)
        self.client = client
        self.receivers = receivers
        self.halt = threading.Event()
        self.acked = []
        self.attempted = set()
        self.failures = []
        self.lock = threading.Lock()

    def run(self):
        i = 0
        while not self.halt.is_set():
            rs = [self.receivers[(i + k) % len(self.receivers)]
                  for k in range(RECEIVERS_PER_SEND)]
            i += 1
            mid = new_msg_id('bk')
            self.attempted.add(mid)
            t0 = time.monotonic()
            try:
                resp = self.client.send(mid, rs, content=b'x' * 100, timeout=10)
            except grpc.RpcError as e:
                self.failures.append('%s %s' % (e.code(), e.details()))
                continue
            t1 = time.monotonic()
            if all(r.code == 0 for r in resp.receipts):
                with self.lock:
                    self.acked.append((mid, rs, t0, t1))
            else:
                self.failures.append(str(resp.receipts))

    def count(self):
        with self.lock:
            return len(self.acked)

    def wait_count(self, n, bound_s=120.0):
        deadline = time.monotonic() + bound_s
        while self.count() < n:
            if time.monotonic() > deadline:
                raise AssertionError('only %d of %d Sends acked in %.0f s (%s)' % (
                    self.count(), n, bound_s, self.failures[-3:]))
            time.sleep(0.01)


class TestServeBackup(ImboxTestCase):

    def deployment(self, dep):
        self.addCleanup(dep.cleanup)
        return dep

    def test_live_backup_restore(self):
        srv = self.deployment(ImboxServer(shards=2)).start()
        receivers = [uid('bkr') for _ in range(16)]
        sender = Sender(srv.fast_client(uid('bks')), receivers)
        sender.start()
        try:
            sender.wait_count(N_PRE)
            backup = os.path.join(srv.root, 'backup')
            b0 = time.monotonic()
            r = imbox('backup', '--data-dir', srv.data_dir, '--to', backup)
            b1 = time.monotonic()
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn('made by the running server', r.stdout)
            after = sender.count()
            sender.wait_count(after + 100)    # Sends go on after the backup
        finally:
            sender.halt.set()
            sender.join(30)
        self.assertEqual(srv.proc.terminate(), 0)
        self.assertFalse(os.path.exists(os.path.join(srv.data_dir, 'admin.sock')))

        pre = [a for a in sender.acked if a[3] < b0]
        during = [a for a in sender.acked if a[3] >= b0 and a[2] <= b1]
        self.assertGreaterEqual(len(pre), N_PRE)
        m = re.search(r'bytes=(\d+) seconds=([0-9.]+)', r.stdout)
        self.assertTrue(m, r.stdout)
        lat = sorted(a[3] - a[2] for a in sender.acked)
        print('\nbackup of %d messages (%d Sends x %d receivers, 2 shards): %s bytes in '
              '%s s by the server, %.3f s for the command; %d Sends answered during it, '
              'slowest %.1f ms (median Send %.1f ms, slowest overall %.1f ms)' % (
                  len(pre) * RECEIVERS_PER_SEND, len(pre), RECEIVERS_PER_SEND,
                  m.group(1), m.group(2), b1 - b0, len(during),
                  max([a[3] - a[2] for a in during] or [0]) * 1000,
                  lat[len(lat) // 2] * 1000, lat[-1] * 1000))
        self.assertGreater(len(during), 0, 'no Send was answered during the backup')

        # What holds the secret is the owner's only.
        self.assertEqual(mode(backup), 0o700)
        self.assertEqual(mode(os.path.join(backup, 'auth.secret')), 0o600)
        self.assertEqual(mode(os.path.join(backup, 'imbox-backup')), 0o600)
        with open(os.path.join(backup, 'imbox-backup')) as f:
            man = f.read().splitlines()
        self.assertEqual(man[:3], ['imbox-backup 1', 'kind serve', 'shards 2'])

        srv2 = self.deployment(ImboxServer(shards=2))
        r = imbox('restore', '--from', backup, '--data-dir', srv2.data_dir)  # kind: the backup's
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(mode(os.path.join(srv2.data_dir, 'auth.secret')), 0o600)
        srv2.start()
        self.assertEqual(srv2.secret(), srv.secret())   # tokens stay valid
        want = {u: set() for u in receivers}
        for mid, rs, _, _ in pre:
            for u in rs:
                want[u].add(mid)
        for u in receivers:
            res = drain(srv2.fast_client(u), page_size=500)
            got = [x.msg_id for x in res.messages]
            self.assertEqual(res.duplicates, 0, u)
            self.assertEqual(len(got), len(set(got)), u)
            self.assertEqual(want[u] - set(got), set(), 'acked before the backup, lost')
            self.assertEqual(set(got) - sender.attempted, set(), 'never sent')


class TestStoppedAndRefusals(ImboxTestCase):

    def test_stopped_backup_and_refusals(self):
        srv = ImboxServer(shards=2)
        self.addCleanup(srv.cleanup)
        srv.start()
        rcv = uid('bkr')
        c = srv.fast_client(uid('bks'))
        ids = [new_msg_id('st') for _ in range(20)]
        for mid in ids:
            self.assertEqual(c.send(mid, [rcv]).receipts[0].code, 0)
        # A stale admin.sock (SIGKILL) is replaced at the next start, and
        # the server answers on it.
        sock = os.path.join(srv.data_dir, 'admin.sock')
        srv.proc.kill9()
        self.assertTrue(stat.S_ISSOCK(os.lstat(sock).st_mode))
        srv.channels = []
        srv.start()
        self.assertEqual(mode(sock), 0o600)
        live = os.path.join(srv.root, 'live')
        r = imbox('backup', '--data-dir', srv.data_dir, '--to', live)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(srv.proc.terminate(), 0)
        self.assertFalse(os.path.exists(sock))

        # Stopped: no socket, the command opens the databases itself.
        backup = os.path.join(srv.root, 'backup')
        r = imbox('backup', '--data-dir', srv.data_dir, '--to', backup)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn('the server was stopped', r.stdout)
        self.assertEqual(mode(backup), 0o700)
        self.assertEqual(mode(os.path.join(backup, 'auth.secret')), 0o600)

        # Into an existing directory: refused, nothing changes.
        before = tree(backup)
        r = imbox('backup', '--data-dir', srv.data_dir, '--to', backup)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn('exists', r.stderr)
        self.assertEqual(tree(backup), before)

        # Restore into a non-empty directory, of the other kind, or from a
        # directory without a manifest: refused, nothing written.
        busy = os.path.join(srv.root, 'busy')
        os.makedirs(busy)
        with open(os.path.join(busy, 'keep'), 'w') as f:
            f.write('mine')
        r = imbox('restore', '--from', backup, '--data-dir', busy, '--kind', 'serve')
        self.assertNotEqual(r.returncode, 0)
        self.assertIn('not empty', r.stderr)
        self.assertEqual(sorted(os.listdir(busy)), ['keep'])
        target = os.path.join(srv.root, 'restored')
        r = imbox('restore', '--from', backup, '--data-dir', target, '--kind', 'shard')
        self.assertNotEqual(r.returncode, 0)
        self.assertIn('not of an `imbox shard`', r.stderr)
        self.assertFalse(os.path.exists(target))
        r = imbox('restore', '--from', busy, '--data-dir', target, '--kind', 'serve')
        self.assertNotEqual(r.returncode, 0)
        self.assertIn('not a complete imbox backup', r.stderr)
        self.assertFalse(os.path.exists(target))

        # Both backups restore; the messages are there.
        for b in (live, backup):
            srv2 = ImboxServer(shards=2)
            self.addCleanup(srv2.cleanup)
            r = imbox('restore', '--from', b, '--data-dir', srv2.data_dir, '--kind', 'serve')
            self.assertEqual(r.returncode, 0, r.stderr)
            srv2.start()
            res = drain(srv2.fast_client(rcv))
            self.assertEqual([m.msg_id for m in res.messages], ids)
            srv2.stop()


class TestShardBackup(ImboxTestCase):

    def test_cluster_shard(self):
        cl = ImboxCluster(nshards=2)
        self.addCleanup(cl.cleanup)
        cl.start()
        rcvs = uids_on_shard('bkr', 1, 2, 3)
        c = cl.fast_client(uid('bks'))
        ids = [new_msg_id('sh') for _ in range(30)]
        for mid in ids:
            r = c.send(mid, rcvs)
            self.assertTrue(all(x.code == 0 for x in r.receipts), r)
        backup = os.path.join(cl.root, 'backup1')
        r = imbox('backup', '--data-dir', cl.shard_dirs[1], '--to', backup)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn('made by the running server', r.stdout)
        with open(os.path.join(backup, 'imbox-backup')) as f:
            man = f.read().splitlines()
        self.assertEqual(man[:4], ['imbox-backup 1', 'kind shard', 'index 1', 'count 2'])
        self.assertFalse(os.path.exists(os.path.join(backup, 'auth.secret')))

        # The shard's disk is lost: restore into a new data dir, restart.
        cl.kill9_shard(1)
        new_dir = os.path.join(cl.root, 'shard1-restored')
        r = imbox('restore', '--from', backup, '--data-dir', new_dir, '--kind', 'serve')
        self.assertNotEqual(r.returncode, 0)
        r = imbox('restore', '--from', backup, '--data-dir', new_dir, '--kind', 'shard')
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn('--index 1 --count 2', r.stdout)
        cl.shard_dirs[1] = new_dir
        cl.restart_shard(1)
        cl.wait_shard_ready(1, bound_s=READY_TIMEOUT_S)
        for u in rcvs:
            res = drain(cl.fast_client(u))
            self.assertEqual([m.msg_id for m in res.messages], ids)


if __name__ == '__main__':
    unittest.main()
