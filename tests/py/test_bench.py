"""imbox-bench (bench/imbox_bench.c on bench/bench_core.c) against a real
`imbox serve`: every workload for about a second, closed loop and open
loop, asserting on its JSON report that the harness drove the server and
checked what it claims to check: ok, no errors, the counts of calls and
messages the flags imply, a drain that saw every filled message exactly
once and left the inboxes empty. Also: errors are counted by status name
(a foreign secret gives UNAUTHENTICATED), an unreachable server and bad
flags give their exit codes. push_bench's churn mode (bench/push_core.c)
likewise: a short history of Subscribes, and of streams reset at start
without a token. No test asserts a speed.

Run: /usr/bin/python3 -m unittest -v test_bench   (from tests/py); ctest
sets IMBOX_BENCH_BIN (default: build/bin/imbox-bench beside IMBOX_BIN).
"""

import json
import os
import shutil
import subprocess
import tempfile
import time
import unittest

import imbox_harness as h

BENCH = os.environ.get('IMBOX_BENCH_BIN',
                       os.path.join(os.path.dirname(h.IMBOX_BIN), 'imbox-bench'))
PUSH_BENCH = os.path.join(os.path.dirname(BENCH), 'push_bench')
RUN_TIMEOUT_S = 180   # one imbox-bench run, a bound for a hung process
MB = 1 << 20


class BenchTest(h.ImboxTestCase):

    @classmethod
    def setUpClass(cls):
        # No per-sender Send limit: 10 senders at the default 200/s (burst
        # 400) allow 6,000 Sends in the first second, which a 1 s closed-loop
        # run on a warm server can pass (RESOURCE_EXHAUSTED); test_rate.py
        # covers the limit.
        cls.dep = cls.class_deployment(h.ImboxServer(shards=2, extra_args=['--send-rate', '0']))

    def run_bench(self, *args, rc=0, addr=None, data_dir=None, pid=True):
        """Runs imbox-bench --json with args; checks the exit code and
        returns the report (a dict; None when nothing was printed)."""
        argv = [BENCH, '--addr', addr or '127.0.0.1:%d' % self.dep.port,
                '--data-dir', data_dir or self.dep.data_dir, '--json']
        if pid:
            argv += ['--server-pid', str(self.dep.proc.pid)]
        argv += [str(a) for a in args]
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=RUN_TIMEOUT_S)
        out = r.stdout.decode('utf-8', 'replace')
        err = r.stderr.decode('utf-8', 'replace')
        self.assertEqual(r.returncode, rc, 'imbox-bench %s exited %d:\n%s\n%s' % (
            ' '.join(argv[1:]), r.returncode, out, err))
        lines = [l for l in out.splitlines() if l.strip()]
        if not lines:
            return None
        self.assertEqual(len(lines), 1, 'one JSON object expected:\n%s' % out)
        return json.loads(lines[0])

    def assertClean(self, rep):
        """ok, no error, no failed check, every call a success."""
        self.assertEqual(rep['ok'], 1, rep)
        self.assertEqual(rep['errors'], 0, rep)
        self.assertEqual(rep['checks_failed'], 0, rep)
        self.assertGreater(rep['calls'], 0, rep)
        self.assertEqual(rep['calls_ok'], rep['calls'], rep)
        self.assertEqual(rep['latency_n'], rep['calls_ok'], rep)
        for p in ('p50', 'p90', 'p99', 'p999', 'max'):
            self.assertGreater(rep['latency_%s_us' % p], 0, rep)
        self.assertLessEqual(rep['latency_p50_us'], rep['latency_p99_us'], rep)
        self.assertLessEqual(rep['latency_p99_us'], rep['latency_max_us'], rep)
        self.assertIn('server_cpu_us_per_call', rep)
        # The server's threads sleep between calls: serving any wakes one.
        self.assertGreater(rep['server_ctx_switches_per_call'], 0, rep)
        self.assertEqual(rep['server_procs'], 1, rep)
        # ... and by kind of thread: the completion-queue thread takes every
        # call, so it woke.
        self.assertGreater(rep['thread_gw_cq_ctx_per_call'], 0, rep)
        self.assertIn('gen_cpu_us_per_call', rep)

    # ------------------------------------------------------------- send

    def test_send_closed_loop(self):
        rep = self.run_bench('--workload', 'send', '--seconds', 1, '--inflight', 8,
                             '--receivers', 50, '--pick', 'random')
        self.assertClean(rep)
        self.assertEqual(rep['loop'], 'closed')
        self.assertEqual(rep['msgs_stored'], rep['calls_ok'])
        self.assertLessEqual(rep['outstanding_max'], 8)

    def test_send_group_open_loop(self):
        rep = self.run_bench('--workload', 'send', '--group', 3, '--rate', 300,
                             '--seconds', 1, '--receivers', 30, '--content', 10)
        self.assertClean(rep)
        self.assertEqual(rep['loop'], 'open')
        self.assertEqual(rep['calls_scheduled'] + rep['not_started'], 300)
        self.assertEqual(rep['calls'], rep['calls_scheduled'])
        self.assertEqual(rep['msgs_stored'], 3 * rep['calls_ok'])
        self.assertIn(rep['saturated'], (0, 1))
        # Every receiver got its share of the group sends, exactly.
        run = rep['run_id']
        total = 0
        for i in range(30):
            c = self.dep.fast_client('%s-r%d' % (run, i)).counts()
            total += c.total
        self.assertEqual(total, rep['msgs_stored'])

    # ------------------------------------------------------------ drain

    def test_drain_sees_every_message_once_and_empties_the_inboxes(self):
        rep = self.run_bench('--workload', 'drain', '--receivers', 20, '--backlog', 250,
                             '--senders', 3, '--page', 50, '--run-id', 'drain_t1')
        self.assertClean(rep)
        self.assertEqual(rep['fill_msgs'], 5000)
        self.assertEqual(rep['drain_msgs_expected'], 5000)
        self.assertEqual(rep['drain_msgs_seen'], 5000)
        self.assertEqual(rep['drain_missing'], 0)
        self.assertEqual(rep['drain_duplicates'], 0)
        self.assertEqual(rep['drain_redelivered'], 0)
        self.assertEqual(rep['drain_pages'], 20 * 5)
        self.assertEqual(rep['drain_pulls'], 20 * 6)  # P pages take P+1 pulls
        self.assertGreater(rep['drain_msgs_per_s'], 0)
        self.assertGreater(rep['drain_pages_per_s'], 0)
        # The last (empty) pull acked the last page: nothing is left.
        for i in range(20):
            c = self.dep.fast_client('drain_t1-r%d' % i).counts()
            self.assertEqual(c.total, 0, 'drain_t1-r%d' % i)

    # ----------------------------------------------------------- counts

    def test_counts_closed_loop(self):
        rep = self.run_bench('--workload', 'counts', '--receivers', 10, '--backlog', 30,
                             '--senders', 4, '--page', 5, '--count', 40, '--inflight', 4)
        self.assertClean(rep)
        self.assertEqual(rep['fill_msgs'], 300)
        self.assertEqual(rep['counts_calls'], 40)
        self.assertEqual(rep['pull_calls'], 40)  # one conversation after each

    def test_counts_open_loop(self):
        rep = self.run_bench('--workload', 'counts', '--receivers', 5, '--backlog', 7,
                             '--senders', 3, '--rate', 100, '--count', 50)
        self.assertClean(rep)
        self.assertEqual(rep['counts_calls'], 50)
        self.assertEqual(rep['pull_calls'], 50)
        self.assertEqual(rep['calls_scheduled'], 50)

    # ------------------------------------------------------ noop, mixed

    def test_noop(self):
        rep = self.run_bench('--workload', 'noop', '--count', 300, '--inflight', 4)
        self.assertClean(rep)
        self.assertEqual(rep['calls'], 300)

    def test_mixed_open_loop(self):
        rep = self.run_bench('--workload', 'mixed', '--rate', 400, '--seconds', 1,
                             '--receivers', 10, '--mix', 'send=6,pull=2,counts=1,noop=1')
        self.assertClean(rep)
        self.assertEqual(rep['calls'], 400)
        for k in ('send', 'pull', 'counts', 'noop'):
            self.assertGreater(rep['%s_calls' % k], 0, k)
        self.assertEqual(rep['send_calls'], rep['msgs_stored'])
        self.assertLessEqual(rep['msgs_pulled'], rep['msgs_stored'])

    def test_mixed_closed_loop_group(self):
        rep = self.run_bench('--workload', 'mixed', '--count', 300, '--inflight', 8,
                             '--receivers', 6, '--group', 2)
        self.assertClean(rep)
        self.assertEqual(rep['calls'], 300)

    # ------------------------------------------------------------- push

    def test_push(self):
        rep = self.run_bench('--workload', 'push', '--rate', 200, '--seconds', 1,
                             '--subscribers', 10, '--content', 64)
        self.assertEqual(rep['ok'], 1, rep)
        self.assertEqual(rep['sent'], 200)
        self.assertEqual(rep['receipts_ok'], 200)
        self.assertEqual(rep['delivered'], 200)
        self.assertEqual(rep['missing'], 0)
        self.assertEqual(rep['deliveries_duplicate'], 0)
        self.assertEqual(rep['order_violations'], 0)
        self.assertGreater(rep['push_p99_us'], 0)

    def run_push_bench(self, *args, rc=0):
        """Runs push_bench --json against the server; returns the report."""
        argv = [PUSH_BENCH, '--sub-addr', '127.0.0.1:%d' % self.dep.port,
                '--data-dir', self.dep.data_dir, '--json'] + [str(a) for a in args]
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=RUN_TIMEOUT_S)
        out = r.stdout.decode('utf-8', 'replace')
        self.assertEqual(r.returncode, rc, 'push_bench %s exited %d:\n%s\n%s' % (
            ' '.join(argv[1:]), r.returncode, out, r.stderr.decode('utf-8', 'replace')))
        lines = [l for l in out.splitlines() if l.strip()]
        return json.loads(lines[0]) if lines else None

    def test_push_latency(self):
        pid = self.dep.proc.pid
        rep = self.run_push_bench('--mode', 'latency',
                                  '--send-addr', '127.0.0.1:%d' % self.dep.port,
                                  '--subscribers', 10, '--rate', 200, '--seconds', 1,
                                  '--server-pids', pid)
        self.assertEqual(rep['ok'], 1, rep)
        self.assertEqual(rep['sent'], 200, rep)
        self.assertEqual(rep['receipts_ok'], 200, rep)
        self.assertEqual(rep['delivered'], 200, rep)
        for k in ('missing', 'deliveries_duplicate', 'order_violations', 'streams_lost'):
            self.assertEqual(rep[k], 0, (k, rep))
        self.assertLessEqual(rep['push_p50_us'], rep['push_p99_us'], rep)
        self.assertGreater(rep['server_cpu_us_per_push'], 0, rep)
        # Every push wakes the server's threads; the completion-queue
        # thread (every Send and Ack) and the bus (every commit) among them.
        self.assertGreater(rep['server_ctx_switches_per_push'], 0, rep)
        self.assertGreater(rep['thread_gw_cq_ctx_per_push'], 0, rep)
        self.assertGreater(rep['thread_gw_bus_ctx_per_push'], 0, rep)

    def test_push_churn(self):
        pid = self.dep.proc.pid
        rep = self.run_push_bench('--mode', 'churn', '--cycles', 300, '--subscribers', 20,
                                  '--seconds', 0, '--probe-calls', 20, '--gateway-pid', pid,
                                  '--server-pids', pid)
        self.assertEqual(rep['ok'], 1, rep)
        self.assertEqual(rep['cancel_at'], 'open')
        self.assertEqual(rep['subscribes_answered'], 300)
        self.assertEqual(rep['subscribe_n'], 300)
        self.assertEqual(rep['subscribe_first10pct_n'], 30)
        self.assertLessEqual(rep['subscribe_p50_us'], rep['subscribe_max_us'])
        self.assertEqual(rep['streams_lost'], 0)
        self.assertGreaterEqual(rep['offline_after_last_cancel_ms'], 0)
        # Before, then one sample at each tenth of the cycles.
        self.assertEqual(len(rep['gateway_rss_trace_kib'].split(',')), 11, rep)
        self.assertGreater(rep['gateway_rss_peak_kib'], 0)
        self.assertEqual(rep['after_probe_failed'], 0)

    def test_gateway_gives_back_the_memory_of_closed_streams(self):
        """4,000 idle Subscribe streams hold about 56 MB of the gateway's
        heap (gRPC's calls); once they are closed, that memory goes back to
        the system (im_trim.h: the resident memory malloc has not handed
        out grew by 32 MiB) instead of staying resident at the peak, as
        glibc would keep it (the build before kept all of it). The same
        trim gives back what a burst of HTTP/2 rapid resets left
        (docs/BENCHMARKS.md), which a test cannot make happen reliably:
        whether the calls pile up depends on who is faster."""
        proc = self.dep.proc
        if proc.sanitized():
            self.skipTest('RSS holds ASan\'s quarantine and shadow memory')
        before = proc.rss()
        rep = self.run_push_bench('--mode', 'idle', '--subscribers', 4000, '--seconds', 0,
                                  '--probe-calls', 20, '--gateway-pid', proc.pid)
        self.assertEqual(rep['ok'], 1, rep)
        opened = rep['rss_open_kib'] * 1024
        self.assertGreater(opened, before + 40 * MB, 'the streams took memory: %r' % rep)
        # push_bench has closed them; trims come from the bus's tick
        # (every lease / 3, 1 s): bounded.
        deadline = time.monotonic() + 15
        while proc.rss() > before + 16 * MB and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertLessEqual(proc.rss(), before + 16 * MB,
                             'RSS %.1f MB before, %.1f MB with the streams, now %.1f MB' % (
                                 before / MB, opened / MB, proc.rss() / MB))

    def test_push_churn_reset_at_start_without_token(self):
        pid = self.dep.proc.pid
        rep = self.run_push_bench('--mode', 'churn', '--cancel-at', 'start', '--no-token',
                                  '--cycles', 200, '--subscribers', 20, '--seconds', 0,
                                  '--probe-calls', 20, '--gateway-pid', pid)
        self.assertEqual(rep['ok'], 1, rep)
        self.assertEqual(rep['cancel_at'], 'start')
        self.assertEqual(rep['token'], 0)
        self.assertNotIn('subscribe_n', rep)  # nothing is answered: no latency
        self.assertEqual(rep['after_probe_failed'], 0)
        # A token-less stream that is not reset at once fails: refused.
        self.run_push_bench('--mode', 'churn', '--no-token', rc=2)
        self.run_push_bench('--mode', 'churn', '--cancel-at', 'later', rc=2)
        self.run_push_bench('--mode', 'churn', '--subscribers', 1001, rc=2)

    # ------------------------------------------------- failures counted

    def test_errors_are_counted_by_status_name(self):
        other = tempfile.mkdtemp(prefix='imbox-bench-secret-')
        self.addCleanup(shutil.rmtree, other, True)
        h.run_cli(['token', '--uid', 'x', '--data-dir', other])  # another secret
        rep = self.run_bench('--workload', 'send', '--count', 20, '--inflight', 2,
                             rc=1, data_dir=other)
        self.assertEqual(rep['ok'], 0)
        self.assertEqual(rep['calls'], 20)
        self.assertEqual(rep['calls_ok'], 0)
        self.assertEqual(rep['errors'], 20)
        self.assertEqual(rep['error_UNAUTHENTICATED'], 20)

    def test_unreachable_server_exits_1(self):
        rep = self.run_bench('--workload', 'noop', '--count', 1, rc=1, pid=False,
                             addr='127.0.0.1:%d' % h.free_port())
        self.assertEqual(rep['ok'], 0)
        self.assertIn('error', rep)

    def test_usage_exits_2(self):
        self.run_bench('--workload', 'send', '--rate', 10, '--inflight', 2, rc=2)
        self.run_bench('--workload', 'drain', '--rate', 10, rc=2)
        self.run_bench('--workload', 'nosuch', rc=2)
        self.run_bench('--no-such-flag', 1, rc=2)


if __name__ == '__main__':
    unittest.main()
