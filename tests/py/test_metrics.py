"""The metrics endpoint and the structured log lines (docs/PROTOCOL.md
"Observability", README "Observability").

  * `imbox serve --metrics-listen 127.0.0.1:PORT`: scraped before and after
    Sends, Pulls and a Subscribe, the counters move by exactly what was done
    (requests per method and code, receipts, messages stored, group
    commits), the live stream gauge is 1 while the stream is open and 0
    after; other paths 404, other methods 405;
  * a non-loopback --metrics-listen without --metrics-token-file refuses to
    start; with one, a scrape without the token gets 401, with a wrong one
    401, with it 200 (on this machine's first non-loopback address; skipped
    with a message when it has none);
  * a cluster's gateway shows imbox_gateway_shard_up 1 for each shard, then
    0 for a shard killed with SIGKILL (bounded poll);
  * a server's log lines are key=value with ts, level, src and msg.

Run: /usr/bin/python3 -m unittest -v test_metrics   (from tests/py).
"""

import http.client
import os
import re
import socket
import subprocess
import time

import imbox_harness as h

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$')


def scrape(port, host='127.0.0.1', headers=None, path='/metrics', method='GET'):
    """(status, body) of one HTTP request."""
    c = http.client.HTTPConnection(host, port, timeout=10 * h.SLOW)
    try:
        c.request(method, path, headers=headers or {})
        r = c.getresponse()
        return r.status, r.read().decode('utf-8')
    finally:
        c.close()


def parse(text):
    """{(name, labels): value}; checks every family has HELP and TYPE."""
    out, typed, helped = {}, set(), set()
    for line in text.splitlines():
        if line.startswith('# TYPE '):
            typed.add(line.split()[2])
        elif line.startswith('# HELP '):
            helped.add(line.split()[2])
        elif line:
            m = _SAMPLE.match(line)
            assert m, 'not a sample line: %r' % line
            name = m.group(1)
            fam = re.sub(r'_(bucket|sum|count)$', '', name)
            assert fam in typed and fam in helped, 'no HELP/TYPE before %s' % name
            out[(name, m.group(2) or '')] = float(m.group(3))
    return out


def wait_metrics(port, procs, bound_s=h.READY_TIMEOUT_S):
    deadline = time.monotonic() + bound_s
    while True:
        for p in procs:
            p.check_alive()
        try:
            st, body = scrape(port)
            if st == 200:
                return parse(body)
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError('metrics endpoint on %d not up in %.0f s' % (port, bound_s))
        time.sleep(0.05)


def local_non_loopback_ip():
    """This machine's first IPv4 address that is not loopback, or None."""
    try:
        out = subprocess.run(['ip', '-4', '-o', 'addr', 'show'], capture_output=True,
                             text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for m in re.finditer(r'inet (\d+\.\d+\.\d+\.\d+)/', out):
        if not m.group(1).startswith('127.'):
            return m.group(1)
    return None


class ServeMetricsTest(h.ImboxTestCase):

    @classmethod
    def setUpClass(cls):
        cls.mport = h.free_port()
        cls.dep = cls.class_deployment(h.ImboxServer(
            shards=2, extra_args=['--metrics-listen', '127.0.0.1:%d' % cls.mport]))

    def metrics(self):
        return wait_metrics(self.mport, self.dep.procs)

    def test_counters_move(self):
        d = self.dep
        a, b, c = h.uid('ma'), h.uid('mb'), h.uid('mc')
        m0 = self.metrics()
        ca, cb = d.fast_client(a), d.fast_client(b)
        sub = self.subscribe(d.fast_client(c))
        # The stream is registered once its initial metadata came back.
        deadline = time.monotonic() + h.READY_TIMEOUT_S
        while self.metrics()[('imbox_gateway_subscribe_streams', '')] < 1:
            self.assertLess(time.monotonic(), deadline, 'stream gauge never 1')
            time.sleep(0.05)
        for i in range(3):
            r = ca.send(h.new_msg_id('m%d' % i), [b, c])
            self.assertEqual([x.code for x in r.receipts], [0, 0])
        dup_id = h.new_msg_id('dup')
        ca.send1(dup_id, b)
        ca.send1(dup_id, b)              # a duplicate: code 0, not stored again
        page = cb.pull('', page_size=100)
        self.assertEqual(len(page.messages), 4)
        cb.pull(page.cursor, page_size=100)  # acks the 4
        self.assertEqual(len(sub.wait_for(3, 10 * h.SLOW)), 3)
        m1 = self.metrics()
        self.assertEqual(m1[('imbox_gateway_subscribe_streams', '')], 1)

        def moved(name, labels=''):
            return m1.get((name, labels), 0) - m0.get((name, labels), 0)

        self.assertEqual(moved('imbox_gateway_requests_total',
                               '{method="Send",code="OK"}'), 5)
        self.assertEqual(moved('imbox_gateway_requests_total',
                               '{method="Pull",code="OK"}'), 2)
        self.assertEqual(moved('imbox_gateway_request_duration_seconds_count',
                               '{method="Send"}'), 5)
        self.assertEqual(moved('imbox_gateway_receipts_total', '{code="OK"}'), 8)
        self.assertEqual(moved('imbox_gateway_duplicates_total'), 1)
        shards = ('{shard="0"}', '{shard="1"}')
        self.assertEqual(sum(moved('imbox_shard_messages_stored_total', s) for s in shards), 7)
        self.assertEqual(sum(moved('imbox_shard_duplicates_total', s) for s in shards), 1)
        commits = sum(moved('imbox_shard_commit_batch_size_count', s) for s in shards)
        self.assertGreaterEqual(commits, 1)
        self.assertLessEqual(commits, 7)
        # The duplicate was answered alone in its turn: no write, no commit.
        self.assertEqual(sum(moved('imbox_shard_commit_batch_size_sum', s) for s in shards), 7)
        self.assertEqual(sum(moved('imbox_shard_commit_seconds_count', s) for s in shards),
                         commits)
        self.assertGreaterEqual(sum(moved('imbox_shard_messages_deleted_total', s)
                                    for s in shards), 4)
        # b's second Pull acked the page its first one read: from the memo.
        self.assertGreaterEqual(sum(moved('imbox_shard_ack_memos_total', s)
                                    for s in shards), 1)
        for s in shards:
            self.assertIn(('imbox_shard_rocksdb_memtable_bytes', s), m1)
            self.assertIn(('imbox_shard_rocksdb_sst_bytes', s), m1)
            self.assertEqual(m1[('imbox_gateway_shard_up', s)], 1)
        self.assertNotIn(a, str(m1))
        # The process's heap trimmer (im_trim.h): counters, there from the start.
        for name in ('imbox_heap_trims_total', 'imbox_heap_returned_bytes_total'):
            self.assertIn((name, ''), m0)
            self.assertGreaterEqual(moved(name), 0)
        sub.cancel()
        deadline = time.monotonic() + h.READY_TIMEOUT_S
        while self.metrics()[('imbox_gateway_subscribe_streams', '')] != 0:
            self.assertLess(time.monotonic(), deadline, 'stream gauge never back to 0')
            time.sleep(0.05)

    def test_paths_and_methods(self):
        self.metrics()
        self.assertEqual(scrape(self.mport, path='/')[0], 404)
        self.assertEqual(scrape(self.mport, path='/metricsx')[0], 404)
        self.assertEqual(scrape(self.mport, method='POST')[0], 405)
        st, body = scrape(self.mport)
        self.assertEqual(st, 200)

    def test_log_lines_are_key_value(self):
        lines = [l for l in self.dep.proc.log_tail(200).splitlines() if 'serving' in l]
        self.assertTrue(lines, self.dep.logs())
        pair = r'[a-z_]+=("([^"\\]|\\.)*"|[^ "]+)'
        for l in lines:
            self.assertRegex(l, r'^ts=\S+ level=(debug|info|warn|error) src=\S+ ')
            self.assertRegex(l, r'^%s( %s)*$' % (pair, pair))
        self.assertTrue(any(re.search(r' msg="serving imbox.v1.Inbox on ', l) for l in lines))


class TokenTest(h.ImboxTestCase):

    def test_non_loopback_needs_token_file(self):
        port = h.free_port()
        r = subprocess.run([h.IMBOX_BIN, 'serve', '--listen', '127.0.0.1:%d' % h.free_port(),
                            '--data-dir', os.path.join(self.tmp(), 'd'),
                            '--metrics-listen', '0.0.0.0:%d' % port],
                           capture_output=True, text=True, timeout=30 * h.SLOW)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn('--metrics-token-file', r.stderr)

    def test_bad_log_level_refused(self):
        r = subprocess.run([h.IMBOX_BIN, 'shard', '--index', '0', '--count', '1', '--listen',
                            'tcp://127.0.0.1:1', '--data-dir', self.tmp(), '--secret-file',
                            '/nonexistent', '--log-level', 'loud'],
                           capture_output=True, text=True, timeout=30 * h.SLOW)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn('--log-level', r.stderr)

    def tmp(self):
        import tempfile
        d = tempfile.mkdtemp(prefix='imbox-metrics-')
        self.addCleanup(__import__('shutil').rmtree, d, True)
        return d

    def test_token(self):
        ip = local_non_loopback_ip()
        if ip is None:
            self.skipTest('this machine has no non-loopback IPv4 address to bind')
        tok = 'metrics-token-' + os.urandom(12).hex()
        tf = os.path.join(self.tmp(), 'token')
        with open(tf, 'w') as f:
            f.write(tok + '\n')
        port = h.free_port()
        self.deployment(h.ImboxServer(shards=1, extra_args=[
            '--metrics-listen', '%s:%d' % (ip, port), '--metrics-token-file', tf]))
        deadline = time.monotonic() + h.READY_TIMEOUT_S
        while True:
            try:
                st, _ = scrape(port, host=ip)
                break
            except OSError:
                self.assertLess(time.monotonic(), deadline, 'no metrics endpoint')
                time.sleep(0.05)
        self.assertEqual(st, 401)
        self.assertEqual(scrape(port, host=ip, headers={
            'Authorization': 'Bearer ' + tok + 'x'})[0], 401)
        self.assertEqual(scrape(port, host=ip, headers={'Authorization': tok})[0], 401)
        st, body = scrape(port, host=ip, headers={'Authorization': 'Bearer ' + tok})
        self.assertEqual(st, 200)
        self.assertIn('imbox_gateway_requests_total', body)
        self.assertNotIn(tok, body)


class ClusterMetricsTest(h.ImboxTestCase):

    def test_shard_up_then_down(self):
        mport = h.free_port()
        dep = self.deployment(h.ImboxCluster(
            nshards=2, gateway_args=['--metrics-listen', '127.0.0.1:%d' % mport]))
        m = wait_metrics(mport, dep.procs)
        self.assertEqual(m[('imbox_gateway_shard_up', '{shard="0"}')], 1)
        self.assertEqual(m[('imbox_gateway_shard_up', '{shard="1"}')], 1)
        self.assertNotIn(('imbox_shard_messages_stored_total', '{shard="0"}'), m)
        self.assertIn(('imbox_heap_trims_total', ''), m)  # the gateway process's
        dep.kill9_shard(1)
        deadline = time.monotonic() + 10 * h.SLOW
        while wait_metrics(mport, [dep.gw_proc])[('imbox_gateway_shard_up',
                                                    '{shard="1"}')] != 0:
            self.assertLess(time.monotonic(), deadline, 'shard 1 still up after kill -9')
            time.sleep(0.05)
        m = wait_metrics(mport, [dep.gw_proc])
        self.assertEqual(m[('imbox_gateway_shard_up', '{shard="0"}')], 1)


if __name__ == '__main__':
    import unittest
    unittest.main()
