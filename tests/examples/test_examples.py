"""examples/python and examples/node run against a real `imbox serve`.

Each example checks its own steps (send with retry on the same msg_id,
counts then one conversation, drain with ack-by-next-page and dedup,
subscribe) and exits 0 only when all of them saw what docs/PROTOCOL.md
promises; this test starts the server, mints the tokens with `imbox token`,
runs the example and asserts its exit status and its report.

Node: `npm ci` installs the versions pinned in examples/node/package-lock.json
into IMBOX_NODE_DIR (under the build tree, not the source tree); node then
finds them through NODE_PATH.
"""
import os
import subprocess
import sys
import unittest

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(_HERE, '..', 'py'))
import imbox_harness as h  # noqa: E402
sys.path.insert(0, os.path.join(_HERE, '..', 'support'))
from imbox_npm import npm_ci  # noqa: E402

ROOT = os.path.normpath(os.path.join(_HERE, '..', '..'))
STEPS = 8  # lines "ok   ..." each example prints when all is well


class ExamplesTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = h.ImboxServer(shards=2).start()
        cls.addr = '127.0.0.1:%d' % cls.srv.port

    @classmethod
    def tearDownClass(cls):
        cls.srv.cleanup()

    def run_example(self, argv, env, receiver):
        args = argv + ['--addr', self.addr,
                       '--sender-token', self.srv.token('alice-' + receiver),
                       '--receiver-token', self.srv.token(receiver), '--to', receiver]
        p = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
        report = p.stdout + p.stderr
        self.assertEqual(p.returncode, 0, report)
        self.assertEqual(report.count('\nok   ') + report.startswith('ok   '), STEPS, report)
        self.assertNotIn('FAIL', report)

    def test_python(self):
        env = dict(os.environ, IMBOX_PY_GEN=h.IMBOX_PY_GEN)
        self.run_example(['/usr/bin/python3',
                          os.path.join(ROOT, 'examples', 'python', 'imbox_example.py')],
                         env, 'bob-py')

    def test_node(self):
        dest = os.environ.get('IMBOX_NODE_DIR', os.path.join(ROOT, 'build', 'examples-node'))
        src = os.path.join(ROOT, 'examples', 'node')
        node = npm_ci(src, dest)
        env = dict(os.environ, NODE_PATH=os.path.join(dest, 'node_modules'))
        self.run_example([node, os.path.join(src, 'imbox_example.js')], env, 'bob-js')


if __name__ == '__main__':
    unittest.main()
