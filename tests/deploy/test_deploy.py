"""deploy/: the container image's definition and the local cluster.

  * the Dockerfile passes a real linter (dockerfile-utils, pinned in
    deploy/lint/package-lock.json, installed by `npm ci` under the build
    tree) and takes its packages from scripts/deps.sh only;
  * IMBOX_RUNTIME_PACKAGES (the image's runtime stage) covers every library
    that build/bin/imbox and build/bin/imboxctl load (objdump's NEEDED,
    resolved by ldconfig, owned per dpkg): a new dependency that is not
    added there fails here, not in a container;
  * deploy/local-cluster starts 3 shards and 2 gateways on free ports: a
    message sent through one gateway is pulled through the other, `status`
    reports a killed shard, `down` leaves no process behind.
No Docker engine is needed (none runs here).
"""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
sys.path.insert(0, os.path.join(ROOT, 'tests', 'support'))
from imbox_npm import npm_ci  # noqa: E402
BIN = os.path.dirname(os.environ.get('IMBOX_BIN', os.path.join(ROOT, 'build', 'bin', 'imbox')))
LINT_DIR = os.environ.get('IMBOX_LINT_DIR', os.path.join(ROOT, 'build', 'deploy-lint'))
DOCKERFILE = os.path.join(ROOT, 'deploy', 'Dockerfile')
ESSENTIAL = {'libc6'}  # in every Debian image (Essential: yes)


def deps_var(name):
    out = subprocess.run(['bash', '-c', '. scripts/deps.sh && echo "$%s"' % name],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return out.split()


class DockerfileTest(unittest.TestCase):
    def test_lint(self):
        npm_ci(os.path.join(ROOT, 'deploy', 'lint'), LINT_DIR)
        lint = os.path.join(LINT_DIR, 'node_modules', '.bin', 'dockerfile-utils')
        p = subprocess.run([lint, 'lint', DOCKERFILE], capture_output=True, text=True)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertEqual(p.stdout.strip(), '', p.stdout)

    def test_packages_come_from_deps_sh(self):
        text = open(DOCKERFILE).read()
        runs = re.findall(r'^RUN (.*?)(?<!\\)$', text, re.M | re.S)
        installs = [r for r in runs if 'apt-get install' in r or 'imbox_install_deps' in r]
        self.assertEqual(len(installs), 2, 'one install per stage: %r' % installs)
        self.assertIn('imbox_install_deps', installs[0])
        self.assertIn('$IMBOX_RUNTIME_PACKAGES', installs[1])
        for r in installs:
            self.assertIn('deps.sh', r)
            tail = r.split('apt-get install', 1)[-1] if 'apt-get install' in r else ''
            words = [w for w in re.split(r'[\s\\]+', tail.split('&&')[0]) if w]
            literal = [w for w in words if not w.startswith('-') and not w.startswith('$')]
            self.assertEqual(literal, [], 'packages named outside deps.sh: %r' % literal)
        self.assertRegex(text, r'(?m)^STOPSIGNAL SIGTERM$')
        self.assertRegex(text, r'(?m)^USER 10001')
        self.assertRegex(text, r'(?m)^ENTRYPOINT \["imbox"\]$')

    def test_runtime_packages_cover_the_binaries(self):
        runtime = set(deps_var('IMBOX_RUNTIME_PACKAGES'))
        self.assertTrue(runtime)
        libs = {}
        for line in subprocess.run(['ldconfig', '-p'], capture_output=True, text=True,
                                   check=True).stdout.splitlines()[1:]:
            m = re.match(r'\s*(\S+) \(([^)]*)\) => (\S+)', line)
            if m:  # the first entry of a soname is the native one
                libs.setdefault(m.group(1), m.group(3))
        missing = []
        for b in ('imbox', 'imboxctl'):
            dump = subprocess.run(['objdump', '-p', os.path.join(BIN, b)], capture_output=True,
                                  text=True, check=True).stdout
            needed = re.findall(r'^\s*NEEDED\s+(\S+)', dump, re.M)
            if any(n.startswith(('libasan', 'libubsan')) for n in needed):
                self.skipTest('a sanitized build: the image builds without sanitizers')
            for soname in needed:
                self.assertIn(soname, libs, '%s needs %s, which ldconfig does not know' % (b, soname))
                path = os.path.realpath(libs[soname])
                owners = set()
                # usrmerge: dpkg knows a file by the path its package ships
                for cand in (path, libs[soname], re.sub(r'^/usr(?=/lib)', '', path)):
                    p = subprocess.run(['dpkg', '-S', cand], capture_output=True, text=True)
                    if p.returncode == 0:
                        owners = set(p.stdout.split(':')[0].split(', '))
                        break
                owners = {o.split(':')[0] for o in owners}
                if not owners & (runtime | ESSENTIAL):
                    missing.append('%s: %s (%s)' % (b, soname, ', '.join(sorted(owners)) or '?'))
        self.assertEqual(missing, [], 'add to IMBOX_RUNTIME_PACKAGES in scripts/deps.sh')
        for pkg in runtime:
            p = subprocess.run(['dpkg-query', '-W', '-f=${Status}', pkg], capture_output=True,
                               text=True)
            self.assertIn('install ok installed', p.stdout, '%s is not a package here' % pkg)


def free_ports(n):
    """n loopback ports p, p+1, ..., all free now (the script numbers from a base)."""
    for _ in range(200):
        s = socket.socket()
        s.bind(('127.0.0.1', 0))
        base = s.getsockname()[1]
        s.close()
        if base + n > 65535:
            continue
        ok = True
        for p in range(base, base + n):
            t = socket.socket()
            try:
                t.bind(('127.0.0.1', p))
            except OSError:
                ok = False
            finally:
                t.close()
        if ok:
            return base
    raise AssertionError('no %d consecutive free ports' % n)


class LocalClusterTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix='imbox-local-cluster-', dir=os.path.dirname(BIN))
        self.script = os.path.join(ROOT, 'deploy', 'local-cluster')
        self.env = dict(os.environ, IMBOX_BIN_DIR=BIN)

    def tearDown(self):
        subprocess.run([self.script, 'down', '--dir', self.dir], env=self.env,
                       capture_output=True, timeout=60)
        for f in os.listdir(os.path.join(self.dir, 'pids')) if os.path.isdir(
                os.path.join(self.dir, 'pids')) else []:
            try:
                os.kill(int(open(os.path.join(self.dir, 'pids', f)).read()), signal.SIGKILL)
            except (OSError, ValueError):
                pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def lc(self, *args, check=True):
        p = subprocess.run([self.script] + list(args) + ['--dir', self.dir], env=self.env,
                           capture_output=True, text=True, timeout=120)
        if check:
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        return p

    def ctl(self, port, token, *args):
        return subprocess.run([os.path.join(BIN, 'imboxctl'), '--addr', '127.0.0.1:%d' % port,
                               '--token', token, '--timeout', '10'] + list(args),
                              capture_output=True, text=True, timeout=60,
                              env=dict(os.environ, HOME=self.dir))

    def test_up_send_pull_status_down(self):
        sp, gp = free_ports(3), free_ports(2)
        self.lc('up', '--shards', '3', '--gateways', '2', '--shard-port', str(sp),
                '--gateway-port', str(gp))
        self.assertEqual(self.lc('status').stdout.count(' up\n'), 5)
        alice = self.lc('token', 'alice').stdout.strip()
        bob = self.lc('token', 'bob').stdout.strip()
        p = self.ctl(gp, alice, 'send', '--to', 'bob', '--id', 'lc-1', 'hello')
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        p = self.ctl(gp + 1, bob, 'pull')
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn('lc-1: hello', p.stdout)
        self.assertIn('1 new', p.stdout)
        # A shard killed: status says so and fails.
        pid = int(open(os.path.join(self.dir, 'pids', 'shard-1.pid')).read())
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while True:
            st = self.lc('status', check=False)
            if st.returncode != 0 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.assertNotEqual(st.returncode, 0)
        self.assertIn('shard-1 tcp://127.0.0.1:%d down' % (sp + 1), st.stdout)
        # down stops everything else and keeps the data.
        pids = [int(open(os.path.join(self.dir, 'pids', f)).read())
                for f in os.listdir(os.path.join(self.dir, 'pids'))]
        self.lc('down')
        for p in pids:
            self.assertFalse(os.path.exists('/proc/%d/cmdline' % p) and
                             b'imbox' in open('/proc/%d/cmdline' % p, 'rb').read(),
                             'process %d still runs after down' % p)
        self.assertTrue(os.path.isdir(os.path.join(self.dir, 'shard-0')))


if __name__ == '__main__':
    unittest.main()
