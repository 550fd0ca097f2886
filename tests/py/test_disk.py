"""Disk trouble (docs/RELIABILITY.md "Disk trouble", docs/PROTOCOL.md Send).

  * A shard whose disk fills: `imbox serve` with its data dir on a 16 MiB
    tmpfs, a ballast file taking what is left. Sends get the receipt
    RESOURCE_EXHAUSTED "disk full: ..."; the process stays up and reads
    work; once the ballast is deleted, Sends succeed again without a restart
    (bounded poll), and a drain returns every message acknowledged before,
    each exactly once.
  * A shard that cannot open its data directory (a file in its place, a
    path too long, a corrupt database, a read-only file system) exits
    non-zero with one line saying why.

Mounting needs root (CAP_SYS_ADMIN): where it is not permitted, this file
exits 77 with a message, which ctest reports as skipped (SKIP_RETURN_CODE).

Run: /usr/bin/python3 test_disk.py   (from tests/py, as root).
"""

import os
import subprocess
import sys
import tempfile
import time
import unittest

import grpc

import imbox_harness as h

FS_BYTES = 16 << 20      # the shard's whole file system
CONTENT = b'x' * 4096    # per message
HEADROOM = 1 << 20       # left beside the ballast: about 250 Sends fill it
RECOVER_BOUND_S = 30.0   # the shard retries its reopen every second
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]


def mount_tmpfs(path, size):
    subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=%d' % size, 'tmpfs', path],
                   check=True, capture_output=True)


def umount(path):
    subprocess.run(['umount', '-l', path], capture_output=True)


def can_mount():
    d = tempfile.mkdtemp(prefix='imbox-mnt-probe-')
    try:
        mount_tmpfs(d, 1 << 20)
        umount(d)
        return True
    except (subprocess.CalledProcessError, OSError):
        return False
    finally:
        os.rmdir(d)


def fill(path):
    """Writes `path` until the file system is full; returns its size."""
    n = 0
    chunk = b'\0' * (64 << 10)
    with open(path, 'wb', buffering=0) as f:
        try:
            while True:
                n += f.write(chunk)
        except OSError:
            pass
    return n


def send(client, mid, receiver, content):
    """The one receipt of a Send to one receiver (any code)."""
    return client.send(mid, [receiver], content=content).receipts[0]


class SmallDiskServer(h.ImboxServer):
    """`imbox serve` with its data dir on a tmpfs of `size` bytes."""

    def __init__(self, size, **kw):
        super().__init__(**kw)
        os.mkdir(self.data_dir)
        mount_tmpfs(self.data_dir, size)
        self.mounted = True

    def cleanup(self):
        try:
            self.stop()
        finally:
            if self.mounted:
                umount(self.data_dir)
                self.mounted = False
            super().cleanup()


class DiskFullTest(h.ImboxTestCase):

    def test_full_disk_refuses_keeps_and_recovers(self):
        dep = self.deployment(SmallDiskServer(FS_BYTES, shards=1))
        a, b = h.uid('A'), h.uid('B')
        sender = dep.fast_client(a)
        receiver = dep.fast_client(b)
        acked = []
        for i in range(20):
            mid = 'before-%d' % i
            r = sender.send1(mid, b, content=CONTENT)
            self.assertEqual(r.code, 0, r.error)
            acked.append(mid)

        ballast = os.path.join(dep.data_dir, 'ballast')
        size = fill(ballast)
        self.assertGreater(size, HEADROOM)
        os.truncate(ballast, size - HEADROOM)  # the Sends fill the rest
        full = None
        for i in range(FS_BYTES // len(CONTENT)):
            mid = 'fill-%d' % i
            r = send(sender, mid, b, CONTENT)
            if r.code == 0:
                acked.append(mid)
                continue
            full = r
            break
        self.assertIsNotNone(full, 'no receipt said the disk is full')
        self.assertGreater(len(acked), 20 + 100, 'the headroom took few Sends')
        self.assertEqual(full.code, EXHAUSTED, full.error)
        self.assertIn('disk full', full.error)
        # Still refused, still up, and the inbox still reads.
        r = send(sender, 'while-full', b, b'small')
        self.assertEqual(r.code, EXHAUSTED, r.error)
        self.assertIn('disk full', r.error)
        dep.proc.check_alive()
        page = receiver.pull('', page_size=5)
        self.assertEqual([m.msg_id for m in page.messages], acked[:5])

        os.unlink(ballast)
        deadline = time.monotonic() + RECOVER_BOUND_S
        k = 0
        while True:
            r = send(sender, 'after-%d' % k, b, b'back')
            if r.code == 0:
                acked.append('after-%d' % k)
                break
            self.assertEqual(r.code, EXHAUSTED, r.error)
            self.assertLess(time.monotonic(), deadline, 'Sends still refused: ' + r.error)
            k += 1
            time.sleep(0.1)
        for i in range(5):
            r = sender.send1('later-%d' % i, b, content=CONTENT)
            self.assertEqual(r.code, 0, r.error)
            acked.append('later-%d' % i)

        got = h.drain(receiver, page_size=100)
        ids = [m.msg_id for m in got.messages]
        self.assertEqual(got.duplicates, 0)
        self.assertEqual(len(ids), len(set(ids)))
        missing = [m for m in acked if m not in set(ids)]
        self.assertEqual(missing, [], 'acknowledged messages lost')
        # Anything else is a refused Send that reached the log anyway (its
        # receipt said retry with the same msg_id); never a foreign one.
        for m in ids:
            self.assertTrue(m in set(acked) or m.startswith(('fill-', 'while-full', 'after-')), m)
        self.assertIn('writes resume', dep.proc.log_tail(200))


class CannotOpenTest(unittest.TestCase):
    """`imbox shard` on a data dir it cannot use: exit != 0, one line."""

    def setUp(self):
        self.root = tempfile.mkdtemp(prefix='imbox-pytest-open-')
        self.mounts = []

    def tearDown(self):
        for m in reversed(self.mounts):
            umount(m)
        subprocess.run(['rm', '-rf', self.root])

    def shard(self, data_dir):
        secret = os.path.join(self.root, 'auth.secret')
        if not os.path.exists(secret):
            with open(secret, 'w') as f:
                f.write(os.urandom(32).hex() + '\n')
        p = subprocess.run([h.IMBOX_BIN, 'shard', '--index', '0', '--count', '1',
                            '--listen', 'tcp://127.0.0.1:%d' % h.free_port(),
                            '--data-dir', data_dir, '--secret-file', secret],
                           capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
        err = p.stderr.decode(errors='replace').strip()
        self.assertNotEqual(p.returncode, 0, 'shard started on ' + data_dir[:100])
        lines = err.splitlines()
        self.assertEqual(len(lines), 1, err)
        self.assertLess(len(lines[0]), 400, lines[0])
        return lines[0]

    def test_file_in_place_of_directory(self):
        path = os.path.join(self.root, 'data')
        with open(path, 'w') as f:
            f.write('not a directory')
        self.assertIn('not a directory', self.shard(path))

    def test_path_too_long(self):
        path = os.path.join(self.root, 'd' * 200, *(['e' * 200] * 20))
        self.assertIn('path of', self.shard(path))

    def test_corrupt_database(self):
        path = os.path.join(self.root, 'data')
        os.mkdir(path)
        with open(os.path.join(path, 'CURRENT'), 'w') as f:
            f.write('garbage\n')
        self.assertIn('Corruption', self.shard(path))

    def test_read_only_file_system(self):
        path = os.path.join(self.root, 'data')
        os.mkdir(path)
        mount_tmpfs(path, 1 << 20)
        self.mounts.append(path)
        subprocess.run(['mount', '-o', 'remount,ro', path], check=True, capture_output=True)
        self.assertIn('Read-only file system', self.shard(path))


if __name__ == '__main__':
    if not can_mount():
        print('test_disk: SKIPPED: mounting a tmpfs is not permitted here (needs root)')
        sys.exit(77)
    unittest.main(verbosity=2)
