"""deploy/k8s: the Kubernetes manifests, checked offline (no cluster here).

  * every YAML file under deploy/k8s passes yamllint --strict (Debian's
    yamllint, deploy/k8s/.yamllint);
  * the base and every overlay render with `kubectl kustomize` of Debian
    12's kubernetes-client (kubectl 1.20, kustomize v2.0.3 inside): fetched
    with `apt-get download` and unpacked under the build tree, not
    installed, since its /usr/bin/kubectl would collide with a kubectl
    package of another origin (as on this project's machines);
  * every rendered object validates against the Kubernetes OpenAPI schema
    of its kind (kubernetes-models' validators, pinned in
    deploy/k8s/validate/package-lock.json, `npm ci` into the build tree);
  * the rendered objects keep imbox's invariants: shard replicas equal
    IMBOX_COUNT, the gateways' --shards names every shard by its stable
    name, the shard index comes from the pod's ordinal, gRPC probes on the
    health ports, the Secret and ConfigMap wired into both roles, non-root
    and read-only, the NetworkPolicy on the shard port;
  * a broken copy (a wrong field type, replicas != IMBOX_COUNT) fails;
  * where a kubectl with a current kustomize is on PATH (v5 on this
    project's machines), it renders the same objects as the old one.
"""
import glob
import json
import os
import re
import shutil
import subprocess
import tempfile
import unittest

from test_deploy import npm_ci

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
K8S = os.path.join(ROOT, 'deploy', 'k8s')
TOOLS = os.environ.get('IMBOX_K8S_TOOLS', os.path.join(ROOT, 'build', 'k8s-tools'))
DEBIAN_KUBECTL_PKG = 'kubernetes-client'


def debian_kubectl():
    """Debian's kubectl, unpacked under TOOLS once (apt-get download)."""
    kubectl = os.path.join(TOOLS, 'kubernetes-client', 'usr', 'bin', 'kubectl')
    if os.access(kubectl, os.X_OK):
        return kubectl
    dl = os.path.join(TOOLS, 'deb')
    os.makedirs(dl, exist_ok=True)
    for attempt in range(2):
        p = subprocess.run(['apt-get', 'download', DEBIAN_KUBECTL_PKG], cwd=dl,
                           capture_output=True, text=True, timeout=300)
        if p.returncode == 0 or attempt:
            break
        # A fresh machine may have no package lists yet.
        subprocess.run(['apt-get', 'update', '-qq'], capture_output=True, timeout=300)
    debs = glob.glob(os.path.join(dl, DEBIAN_KUBECTL_PKG + '_*.deb'))
    if p.returncode or not debs:
        raise AssertionError('apt-get download %s failed:\n%s' % (DEBIAN_KUBECTL_PKG, p.stderr))
    subprocess.run(['dpkg-deb', '-x', debs[0], os.path.join(TOOLS, 'kubernetes-client')],
                   check=True)
    return kubectl


def render(kubectl, d):
    p = subprocess.run([kubectl, 'kustomize', d], capture_output=True, text=True, timeout=60)
    if p.returncode:
        raise AssertionError('kubectl kustomize %s failed:\n%s' % (d, p.stderr))
    return p.stdout


def validator():
    dest = os.path.join(TOOLS, 'validate')
    src = os.path.join(K8S, 'validate')
    npm_ci(src, dest)
    shutil.copy(os.path.join(src, 'validate.mjs'), dest)  # resolves node_modules beside it
    return os.path.join(dest, 'validate.mjs')


def validate(rendered):
    """(objects, errors): errors is the validator's complaint, or ''."""
    p = subprocess.run(['node', validator(), '--json'], input=rendered, capture_output=True,
                       text=True, timeout=120)
    if p.returncode:
        return [], p.stderr.strip() or 'validator exited %d' % p.returncode
    return json.loads(p.stdout), ''


def env_file():
    out = {}
    with open(os.path.join(K8S, 'base', 'imbox.env')) as f:
        lines = f.read().splitlines()
    for line in lines:
        line = line.strip()
        if line and not line.startswith('#'):
            k, v = line.split('=', 1)
            out[k] = v
    return out


def sh_command(container, env):
    """What the container's `sh -c` line would exec: `exec imbox` becomes echo."""
    cmd = container.get('command', [])
    assert cmd[:2] == ['/bin/sh', '-c'], cmd
    script = cmd[2].replace('exec imbox ', 'echo ')
    return subprocess.run(['/bin/sh', '-c', script], env=env, capture_output=True, text=True,
                          check=True).stdout.split()


def flag(argv, name):
    return argv[argv.index(name) + 1] if name in argv else None


def invariants(objs):
    """The list of what is wrong with one rendering (empty: all is well)."""
    bad = []
    by = {}
    for o in objs:
        by.setdefault(o['kind'], []).append(o)
    for kind, n in (('ConfigMap', 1), ('StatefulSet', 1), ('Deployment', 1), ('Service', 2),
                    ('PodDisruptionBudget', 2), ('NetworkPolicy', 2)):
        if len(by.get(kind, [])) != n:
            return ['%d %s, want %d' % (len(by.get(kind, [])), kind, n)]
    cm, sts, dep = by['ConfigMap'][0], by['StatefulSet'][0], by['Deployment'][0]
    svcs = {s['metadata']['name']: s for s in by['Service']}
    if set(cm.get('data', {})) != set(env_file()):
        bad.append('ConfigMap keys %s != imbox.env %s' % (sorted(cm['data']), sorted(env_file())))
    count = int(cm['data'].get('IMBOX_COUNT', '0'))
    if sts['spec'].get('replicas') != count:
        bad.append('StatefulSet replicas %s != IMBOX_COUNT %d' % (sts['spec'].get('replicas'), count))
    headless = svcs.get(sts['spec']['serviceName'])
    if not headless or headless['spec'].get('clusterIP') != 'None':
        bad.append('the StatefulSet\'s serviceName is not a headless Service')
    if not sts['spec'].get('volumeClaimTemplates'):
        bad.append('no volumeClaimTemplates')
    name, svc = sts['metadata']['name'], sts['spec']['serviceName']
    want = ','.join('tcp://%s-%d.%s:7000' % (name, i, svc) for i in range(count))
    for w, (role, tmpl, port) in enumerate((('shard', sts['spec']['template'], 7001),
                                            ('gateway', dep['spec']['template'], 50051))):
        spec = tmpl['spec']
        c = spec['containers'][0]
        env = dict(cm['data'], PATH=os.environ['PATH'], HOSTNAME='%s-%d' % (name, count - 1))
        argv = sh_command(c, env)
        if argv[0] != role:
            bad.append('%s runs imbox %s' % (role, argv[0]))
        if role == 'shard':
            if flag(argv, '--index') != str(count - 1):
                bad.append('shard --index %s on pod %s' % (flag(argv, '--index'), env['HOSTNAME']))
            for f, v in (('--listen', 'tcp://0.0.0.0:7000'), ('--health-listen', '0.0.0.0:7001')):
                if flag(argv, f) != v:
                    bad.append('shard %s %s, want %s' % (f, flag(argv, f), v))
        else:
            if flag(argv, '--shards') != want:
                bad.append('gateway --shards %s, want %s' % (flag(argv, '--shards'), want))
            if flag(argv, '--listen') != '0.0.0.0:50051':
                bad.append('gateway --listen %s' % flag(argv, '--listen'))
        if flag(argv, '--metrics-listen') != '0.0.0.0:9090':
            bad.append('%s --metrics-listen %s' % (role, flag(argv, '--metrics-listen')))
        if not any(e.get('configMapRef', {}).get('name') == cm['metadata']['name']
                   for e in c.get('envFrom', [])):
            bad.append('%s does not load the ConfigMap' % role)
        sf = {e['name']: e.get('value') for e in c.get('env', [])}.get('IMBOX_SECRET_FILE')
        mounts = {m['name']: m['mountPath'] for m in c.get('volumeMounts', [])}
        secret_vols = {v['name'] for v in spec.get('volumes', [])
                       if v.get('secret', {}).get('secretName') == 'imbox-auth'}
        if not sf or not any(mounts.get(v) == os.path.dirname(sf) for v in secret_vols):
            bad.append('%s: IMBOX_SECRET_FILE %s is not in the Secret imbox-auth' % (role, sf))
        probes = [c.get(p, {}) for p in ('readinessProbe', 'startupProbe')]
        if role == 'shard':
            probes.append(c.get('livenessProbe', {}))
        elif 'livenessProbe' not in c:
            bad.append('gateway has no livenessProbe')
        for p in probes:
            if p.get('grpc', {}).get('port') != port:
                bad.append('%s probe %s, want grpc port %d' % (role, p, port))
        if spec.get('enableServiceLinks') is not False:
            bad.append('%s: service links on (IMBOX_* variables of Services)' % role)
        if not spec.get('terminationGracePeriodSeconds'):
            bad.append('%s has no terminationGracePeriodSeconds' % role)
        r = c.get('resources', {})
        for k in ('requests', 'limits'):
            if set(r.get(k, {})) != {'cpu', 'memory'}:
                bad.append('%s resources.%s %s' % (role, k, r.get(k)))
        psc, csc = spec.get('securityContext', {}), c.get('securityContext', {})
        if not (psc.get('runAsNonRoot') and psc.get('runAsUser') == 10001):
            bad.append('%s pod securityContext %s' % (role, psc))
        if not (csc.get('readOnlyRootFilesystem') and csc.get('allowPrivilegeEscalation') is False
                and csc.get('capabilities', {}).get('drop') == ['ALL']):
            bad.append('%s container securityContext %s' % (role, csc))
    labels = {
        'shard': sts['spec']['template']['metadata']['labels'],
        'gateway': dep['spec']['template']['metadata']['labels'],
    }

    def selects(sel, role):
        return all(labels[role].get(k) == v for k, v in sel.get('matchLabels', {}).items())

    for pdb in by['PodDisruptionBudget']:
        if not (selects(pdb['spec']['selector'], 'shard') or
                selects(pdb['spec']['selector'], 'gateway')):
            bad.append('PDB %s selects no imbox pod' % pdb['metadata']['name'])
    shard_np = [n for n in by['NetworkPolicy'] if selects(n['spec']['podSelector'], 'shard')]
    if len(shard_np) != 1:
        bad.append('%d NetworkPolicies on the shards, want 1' % len(shard_np))
    else:
        for rule in shard_np[0]['spec'].get('ingress', []):
            if any(p.get('port') == 7000 for p in rule.get('ports', [])):
                peers = rule.get('from', [])
                if not peers or not all('podSelector' in f and selects(f['podSelector'], 'gateway')
                                        and not selects(f['podSelector'], 'shard') for f in peers):
                    bad.append('shard port 7000 open to more than the gateways: %s' % rule)
            elif not rule.get('ports'):
                bad.append('a shard ingress rule without ports: %s' % rule)
    return bad


def kustomizations():
    return [os.path.join(K8S, 'base')] + sorted(
        glob.glob(os.path.join(K8S, 'overlays', '*')))


class K8sTest(unittest.TestCase):
    def test_yamllint(self):
        p = subprocess.run(['yamllint', '--strict', '-c', os.path.join(K8S, '.yamllint'), K8S],
                           capture_output=True, text=True)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)

    def test_render_validate_invariants(self):
        kubectl = debian_kubectl()
        dirs = kustomizations()
        self.assertGreaterEqual(len(dirs), 2, 'the base and an example overlay')
        for d in dirs:
            with self.subTest(kustomization=os.path.relpath(d, ROOT)):
                objs, err = validate(render(kubectl, d))
                self.assertEqual(err, '')
                self.assertEqual(invariants(objs), [])

    def test_broken_copies_fail(self):
        kubectl = debian_kubectl()
        breaks = {
            'a string where the schema wants an integer':
                ('base/shard.yaml', 'containerPort: 7000', 'containerPort: "7000"'),
            'a field of a wrong shape':
                ('base/gateway.yaml', 'terminationGracePeriodSeconds: 15',
                 'terminationGracePeriodSeconds: {seconds: 15}'),
            'replicas != IMBOX_COUNT':
                ('base/shard.yaml', 'replicas: 3', 'replicas: 4'),
            'the shard port open to all':
                ('base/networkpolicy.yaml', '    - from:\n', '    - from: []\n      unused:\n'),
        }
        for what, (f, old, new) in breaks.items():
            with self.subTest(what), tempfile.TemporaryDirectory() as t:
                shutil.copytree(K8S, os.path.join(t, 'k8s'), ignore=shutil.ignore_patterns(
                    'node_modules'))
                path = os.path.join(t, 'k8s', f)
                with open(path) as fh:
                    text = fh.read()
                self.assertIn(old, text)
                with open(path, 'w') as fh:
                    fh.write(text.replace(old, new, 1))
                objs, err = validate(render(kubectl, os.path.join(t, 'k8s', 'base')))
                self.assertTrue(err or invariants(objs), 'a broken copy passed: %s' % what)

    def test_current_kustomize_renders_the_same(self):
        current = shutil.which('kubectl')
        if not current:
            self.skipTest('no kubectl on PATH besides Debian\'s')
        v = subprocess.run([current, 'version', '--client'], capture_output=True, text=True)
        m = re.search(r'Kustomize Version: v(\d+)', v.stdout)
        if not m or int(m.group(1)) < 4:
            self.skipTest('kubectl on PATH has no current kustomize: %s' % v.stdout.strip())
        old = debian_kubectl()

        def norm(text):  # the ConfigMap's hash suffix differs between versions
            return re.sub(r'imbox-config-[a-z0-9]{10}', 'imbox-config-HASH', text)

        for d in kustomizations():
            with self.subTest(kustomization=os.path.relpath(d, ROOT)):
                self.assertEqual(norm(render(current, d)), norm(render(old, d)))


if __name__ == '__main__':
    unittest.main()
