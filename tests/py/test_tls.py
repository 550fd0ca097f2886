"""TLS on the gateway (docs/PROTOCOL.md "Transport"): `--tls-cert`,
`--tls-key`, `--tls-client-ca`, and the plaintext rule (loopback only
unless `--insecure-plaintext`).

A throwaway CA, a server certificate (SAN 127.0.0.1 and localhost), a client
certificate and a second, unrelated CA are made with the `openssl` CLI in a
temporary directory per class.

Run: /usr/bin/python3 -m unittest -v test_tls   (from tests/py).
"""

import os
import shutil
import subprocess
import tempfile
import unittest

import grpc

import imbox_harness as h

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


def _openssl(*args, cwd):
    subprocess.run(['openssl'] + list(args), cwd=cwd, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def make_pki(d):
    """CA, server and client certificates (EC P-256) in directory d."""
    def ca(name):
        _openssl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256',
                 '-nodes', '-keyout', name + '.key', '-out', name + '.pem', '-days', '2',
                 '-subj', '/CN=imbox test ' + name, cwd=d)

    def leaf(name, issuer, ext):
        _openssl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
                 '-keyout', name + '.key', '-out', name + '.csr', '-subj', '/CN=' + name,
                 cwd=d)
        with open(os.path.join(d, name + '.ext'), 'w') as f:
            f.write(ext)
        _openssl('x509', '-req', '-in', name + '.csr', '-CA', issuer + '.pem', '-CAkey',
                 issuer + '.key', '-CAcreateserial', '-out', name + '.pem', '-days', '2',
                 '-extfile', name + '.ext', cwd=d)

    ca('ca')
    ca('otherca')
    leaf('server', 'ca', 'subjectAltName=IP:127.0.0.1,DNS:localhost\n'
                         'extendedKeyUsage=serverAuth\n')
    leaf('client', 'ca', 'extendedKeyUsage=clientAuth\n')
    leaf('rogue', 'otherca', 'extendedKeyUsage=clientAuth\n')


def read(d, name):
    with open(os.path.join(d, name), 'rb') as f:
        return f.read()


class TlsServer(h.ImboxServer):
    """`imbox serve` with TLS flags; readiness over TLS."""

    def __init__(self, pki, extra_args=()):
        super().__init__(shards=1, extra_args=extra_args)
        self.pki = pki
        self.creds = grpc.ssl_channel_credentials(
            root_certificates=read(pki, 'ca.pem'),
            private_key=read(pki, 'client.key'),
            certificate_chain=read(pki, 'client.pem'))

    def channel(self, port=None, options=(), creds=None):
        ch = grpc.secure_channel('127.0.0.1:%d' % (port or self.port), creds or self.creds,
                                 options=list(options))
        self.channels.append(ch)
        return ch

    def start(self):
        self.port = h.free_port()
        self.proc = h.Proc('serve', [h.IMBOX_BIN, 'serve',
                                     '--listen', '127.0.0.1:%d' % self.port,
                                     '--data-dir', self.data_dir,
                                     '--shards', '1'] + self.extra_args, self.root)
        self.procs = [self.proc]
        self.proc.start()
        h.wait_listening(self.port, self.procs)
        h.wait_serving(self.channel(), self.procs)
        return self


class WildcardServer(h.ImboxServer):
    """`imbox serve --listen 0.0.0.0:PORT --insecure-plaintext`."""

    def __init__(self):
        super().__init__(shards=1)

    def start(self):
        self.port = h.free_port()
        self.proc = h.Proc('serve', [h.IMBOX_BIN, 'serve', '--listen', '0.0.0.0:%d' % self.port,
                                     '--data-dir', self.data_dir, '--shards', '1',
                                     '--insecure-plaintext'], self.root)
        self.procs = [self.proc]
        self.proc.start()
        h.wait_listening(self.port, self.procs)
        h.wait_serving(self.channel(), self.procs)
        return self


class TlsTest(h.ImboxTestCase):

    @classmethod
    def setUpClass(cls):
        cls.pki = tempfile.mkdtemp(prefix='imbox-pki-')
        try:
            make_pki(cls.pki)
        except Exception:
            shutil.rmtree(cls.pki, ignore_errors=True)
            raise

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.pki, ignore_errors=True)

    def pem(self, name):
        return os.path.join(self.pki, name)

    def tls_args(self, client_ca=False):
        args = ['--tls-cert', self.pem('server.pem'), '--tls-key', self.pem('server.key')]
        if client_ca:
            args += ['--tls-client-ca', self.pem('ca.pem')]
        return args

    def creds(self, ca='ca.pem', client=None):
        kw = {}
        if client:
            kw = dict(private_key=read(self.pki, client + '.key'),
                      certificate_chain=read(self.pki, client + '.pem'))
        return grpc.ssl_channel_credentials(root_certificates=read(self.pki, ca), **kw)

    def send_and_pull(self, dep, channel):
        a, b = h.uid('A'), h.uid('B')
        mid = h.new_msg_id('tls')
        dep.fast_client(a, channel=channel).send1(mid, b, content=b'over tls')
        page = dep.fast_client(b, channel=channel).pull('')
        self.assertEqual([(m.msg_id, m.content) for m in page.messages], [(mid, b'over tls')])

    def assertRefused(self, channel):
        """A call on channel fails with UNAVAILABLE (the handshake fails)."""
        call = channel.unary_unary('/grpc.health.v1.Health/Check',
                                   request_serializer=lambda x: x,
                                   response_deserializer=lambda x: x)
        self.assertRpcError(UNAVAILABLE, call, b'', timeout=5)

    def test_tls_send_pull_and_refusals(self):
        dep = self.deployment(TlsServer(self.pki, self.tls_args()))
        # With the CA (no client certificate needed): Send and Pull work.
        self.send_and_pull(dep, dep.channel(creds=self.creds()))
        # The name in the certificate counts too: localhost is in its SAN.
        ch = grpc.secure_channel('localhost:%d' % dep.port, self.creds())
        dep.channels.append(ch)
        self.assertEqual(h.health_check(ch, timeout=5), h.HEALTH_SERVING)
        # A plaintext client and a client trusting another CA are refused.
        self.assertRefused(h.open_channel(dep.port))
        self.assertRefused(dep.channel(creds=self.creds(ca='otherca.pem')))
        dep.proc.check_alive()

    def test_mutual_tls(self):
        dep = self.deployment(TlsServer(self.pki, self.tls_args(client_ca=True)))
        self.send_and_pull(dep, dep.channel(creds=self.creds(client='client')))
        # No client certificate, or one from another CA: refused.
        self.assertRefused(dep.channel(creds=self.creds()))
        self.assertRefused(dep.channel(creds=self.creds(client='rogue')))
        self.assertRefused(h.open_channel(dep.port))
        dep.proc.check_alive()

    def ctl(self, dep, uid, *args):
        """Runs imboxctl as uid against dep: (exit status, stdout, stderr)."""
        ctl = os.path.join(os.path.dirname(h.IMBOX_BIN), 'imboxctl')
        home = tempfile.mkdtemp(prefix='imbox-ctl-')
        self.addCleanup(shutil.rmtree, home, True)
        env = dict(os.environ, HOME=home, IMBOX_ADDR='127.0.0.1:%d' % dep.port,
                   IMBOX_TOKEN=dep.fast_token(uid))
        r = subprocess.run([ctl, '--timeout', '10'] + list(args), env=env,
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=60)
        return r.returncode, r.stdout.decode('utf-8', 'replace'), \
            r.stderr.decode('utf-8', 'replace')

    def ctl_send(self, dep, tls, want_rc=0):
        """imboxctl send with the flags tls; checks the exit status, and
        on success that the receiver's Pull (Python, over TLS) has it."""
        a, b = h.uid('A'), h.uid('B')
        mid = h.new_msg_id('ctl')
        rc, out, err = self.ctl(dep, a, *tls, 'send', '--to', b, '--id', mid, 'over', 'tls')
        self.assertEqual(rc, want_rc, out + err)
        if want_rc:
            self.assertIn('UNAVAILABLE', err)
            return
        self.assertEqual(out.strip(), '%s stored' % b)
        return b, mid

    def test_imboxctl_over_tls(self):
        dep = self.deployment(TlsServer(self.pki, self.tls_args()))
        ca = ['--tls-ca', self.pem('ca.pem')]
        b, mid = self.ctl_send(dep, ca)
        rc, out, err = self.ctl(dep, b, *ca, 'pull')
        self.assertEqual(rc, 0, err)
        self.assertIn('%s: over tls' % mid, out)
        # The name checked is --tls-server-name's when given.
        self.ctl_send(dep, ca + ['--tls-server-name', 'localhost'])
        self.ctl_send(dep, ca + ['--tls-server-name', 'elsewhere.example'], want_rc=1)
        # Plaintext, or trusting another CA (or gRPC's default roots): refused.
        self.ctl_send(dep, [], want_rc=1)
        self.ctl_send(dep, ['--tls-ca', self.pem('otherca.pem')], want_rc=1)
        self.ctl_send(dep, ['--tls'], want_rc=1)
        # Usage errors (exit 2), before any call.
        for args, want in (
                (['--tls-cert', self.pem('client.pem')], 'go together'),
                (['--tls-key', self.pem('client.key')], 'go together'),
                (['--tls-ca', self.pem('nope.pem')], 'No such file'),
                (['--tls-ca', self.pem('ca.srl')], 'not a PEM file'),
                (['--tls-server-name', ''], 'empty')):
            with self.subTest(args=args):
                rc, out, err = self.ctl(dep, 'u', *args, 'counts')
                self.assertEqual(rc, 2, out + err)
                self.assertIn(want, err)
        dep.proc.check_alive()

    def test_imboxctl_mutual_tls(self):
        dep = self.deployment(TlsServer(self.pki, self.tls_args(client_ca=True)))
        ca = ['--tls-ca', self.pem('ca.pem')]
        self.ctl_send(dep, ca + ['--tls-cert', self.pem('client.pem'),
                                 '--tls-key', self.pem('client.key')])
        self.ctl_send(dep, ca, want_rc=1)
        self.ctl_send(dep, ca + ['--tls-cert', self.pem('rogue.pem'),
                                 '--tls-key', self.pem('rogue.key')], want_rc=1)
        dep.proc.check_alive()

    def start_fails(self, args, *want):
        """`imbox serve ARGS` exits non-zero at once, its message naming
        each of want."""
        d = tempfile.mkdtemp(prefix='imbox-tls-')
        try:
            r = subprocess.run([h.IMBOX_BIN, 'serve', '--data-dir', os.path.join(d, 'data'),
                                '--listen', '127.0.0.1:%d' % h.free_port()] + args,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
        finally:
            shutil.rmtree(d, ignore_errors=True)
        err = r.stderr.decode('utf-8', 'replace')
        self.assertNotEqual(r.returncode, 0, err)
        for w in want:
            self.assertIn(w, err)
        return err

    def test_bad_certificate_or_key_stops_the_start(self):
        missing = os.path.join(self.pki, 'nope.pem')
        self.start_fails(['--tls-cert', missing, '--tls-key', self.pem('server.key')],
                         missing, 'No such file')
        # the key of another certificate
        self.start_fails(['--tls-cert', self.pem('server.pem'),
                          '--tls-key', self.pem('client.key')], 'does not match')
        # a key where the certificate should be, and the reverse
        self.start_fails(['--tls-cert', self.pem('server.key'),
                          '--tls-key', self.pem('server.key')], 'no PEM certificate')
        self.start_fails(['--tls-cert', self.pem('server.pem'),
                          '--tls-key', self.pem('server.pem')], 'no PEM private key')
        self.start_fails(['--tls-cert', self.pem('server.pem')], '--tls-key')
        self.start_fails(['--tls-key', self.pem('server.key')], '--tls-cert')
        self.start_fails(self.tls_args() + ['--tls-client-ca', self.pem('server.key')],
                         '--tls-client-ca')

    def test_plaintext_is_loopback_only(self):
        # A wildcard address without TLS is refused unless the operator says
        # the network is trusted.
        d = tempfile.mkdtemp(prefix='imbox-tls-')
        self.addCleanup(shutil.rmtree, d, True)
        for listen in ('0.0.0.0:%d' % h.free_port(), '[::]:%d' % h.free_port(),
                       ':%d' % h.free_port()):
            with self.subTest(listen=listen):
                r = subprocess.run([h.IMBOX_BIN, 'serve', '--data-dir', d, '--listen', listen],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
                self.assertNotEqual(r.returncode, 0)
                self.assertIn(b'--insecure-plaintext', r.stderr)
        dep = self.deployment(WildcardServer())
        self.assertEqual(h.health_check(dep.channel(), timeout=5), h.HEALTH_SERVING)


if __name__ == '__main__':
    unittest.main()
