"""npm packages pinned by a test: one helper for every test that runs a
Node.js tool or example (tests/examples, tests/py/test_jwt.py, tests/deploy).

npm_ci(src, dest) installs what src/package-lock.json pins into
dest/node_modules with `npm ci --ignore-scripts` (never into the source
tree), again only when the lock is newer than the install, and returns the
path of `node`. It fails the test (AssertionError) when node or npm is
missing (scripts/deps.sh --tests installs them) or npm ci fails.
"""
import os
import shutil
import subprocess


def npm_ci(src, dest):
    node, npm = shutil.which('node'), shutil.which('npm')
    if not (node and npm):
        raise AssertionError('node and npm are needed (scripts/deps.sh installs them)')
    lock = os.path.join(src, 'package-lock.json')
    stamp = os.path.join(dest, 'node_modules', '.package-lock.json')
    if os.path.exists(stamp) and os.path.getmtime(stamp) >= os.path.getmtime(lock):
        return node
    os.makedirs(dest, exist_ok=True)
    for f in ('package.json', 'package-lock.json'):
        shutil.copy(os.path.join(src, f), dest)
    p = subprocess.run([npm, 'ci', '--no-audit', '--no-fund', '--ignore-scripts'],
                       cwd=dest, capture_output=True, text=True, timeout=300)
    if p.returncode:
        raise AssertionError('npm ci failed in %s:\n%s%s' % (dest, p.stdout, p.stderr))
    return node
