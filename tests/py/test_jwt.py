"""JWTs from the application's identity provider (docs/PROTOCOL.md
"Identity: JWTs"): `--jwt-hs256-secret-file`, `--jwt-jwks-file`,
`--jwt-uid-claim`, `--jwt-issuer`, `--jwt-audience`.

The tokens are minted by another implementation: `jsonwebtoken` from npm
(pinned in tests/py/jwt/package-lock.json, installed with `npm ci` into the
build tree) and node's crypto for the JWKs. The keys (RSA 2048, EC P-256)
are made at test time with the `openssl` CLI.

Run: /usr/bin/python3 -m unittest -v test_jwt   (from tests/py).
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

import grpc

import imbox_harness as h

UNAUTH = grpc.StatusCode.UNAUTHENTICATED
_HERE = os.path.dirname(os.path.abspath(__file__))
NODE_SRC = os.path.join(_HERE, 'jwt')
sys.path.insert(0, os.path.join(_HERE, '..', 'support'))
import imbox_npm  # noqa: E402
NODE_DIR = os.environ.get('IMBOX_JWT_NODE_DIR', os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(h.IMBOX_BIN))), 'jwt-node'))
LEEWAY_S = 30  # GW_JWT_LEEWAY_S


def npm_ci():
    """jsonwebtoken as pinned, into NODE_DIR: the path of node."""
    return imbox_npm.npm_ci(NODE_SRC, NODE_DIR)


def mint(node, jobs):
    """Runs tests/py/jwt/mint.js on jobs (see there): its results."""
    env = dict(os.environ, NODE_PATH=os.path.join(NODE_DIR, 'node_modules'))
    p = subprocess.run([node, os.path.join(NODE_SRC, 'mint.js')], input=json.dumps(jobs),
                       capture_output=True, text=True, env=env, timeout=60)
    if p.returncode:
        raise AssertionError('mint.js failed:\n' + p.stderr)
    return json.loads(p.stdout)


RSA = ('-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048')
EC = ('-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256')
_KEYS = {}


def keys():
    """{'rsa1', 'rsa2', 'ec1': (private PEM, public PEM)}, made once per run
    by `openssl genpkey` (at the same time: an RSA key takes seconds on a
    busy machine)."""
    if not _KEYS:
        d = tempfile.mkdtemp(prefix='imbox-jwt-keys-')
        try:
            specs = {'rsa1': RSA, 'rsa2': RSA, 'ec1': EC}
            procs = {n: subprocess.Popen(['openssl', 'genpkey', '-out', os.path.join(d, n)]
                                         + list(a), stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
                     for n, a in specs.items()}
            for n, p in procs.items():
                if p.wait(timeout=120):
                    raise AssertionError('openssl genpkey failed for ' + n)
                pub = subprocess.run(['openssl', 'pkey', '-in', os.path.join(d, n), '-pubout'],
                                     check=True, capture_output=True, text=True).stdout
                with open(os.path.join(d, n)) as f:
                    _KEYS[n] = (f.read(), pub)
        finally:
            shutil.rmtree(d, ignore_errors=True)
    return _KEYS


def write_atomic(path, text):
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        f.write(text)
    os.replace(tmp, path)


class JwtTest(unittest.TestCase):
    """One `imbox serve` with an HS256 secret and a JWKS (RS256 + ES256)."""

    @classmethod
    def setUpClass(cls):
        node = npm_ci()
        cls.dir = d = tempfile.mkdtemp(prefix='imbox-jwt-')
        k = keys()
        cls.rsa1, cls.rsa2, cls.ec1 = k['rsa1'], k['rsa2'], k['ec1']
        cls.secret = 'hs256-test-secret-' + 'x' * 40
        cls.secret_file = os.path.join(d, 'hs256.secret')
        with open(cls.secret_file, 'w') as f:
            f.write(cls.secret + '\n')  # one trailing newline is not part of it
        now = int(time.time())
        cls.alice, cls.bob = h.uid('alice'), h.uid('bob')
        ok = {'sub': cls.alice, 'exp': now + 3600}

        def sign(payload, key, alg, kid=None):
            return {'op': 'sign', 'payload': payload, 'key': key, 'alg': alg, 'kid': kid}

        jobs = {
            'jwk_rsa1': {'op': 'jwk', 'pem': cls.rsa1[1], 'kid': 'rsa1', 'alg': 'RS256'},
            'jwk_rsa2': {'op': 'jwk', 'pem': cls.rsa2[1], 'kid': 'rsa2', 'alg': 'RS256'},
            'jwk_ec1': {'op': 'jwk', 'pem': cls.ec1[1], 'kid': 'ec1', 'alg': 'ES256'},
            'hs': sign(ok, cls.secret, 'HS256'),
            'rs': sign(ok, cls.rsa1[0], 'RS256', 'rsa1'),
            'rs_cached': sign(dict(ok, n=1), cls.rsa1[0], 'RS256', 'rsa1'),
            'es': sign(ok, cls.ec1[0], 'ES256', 'ec1'),
            'rs2': sign(ok, cls.rsa2[0], 'RS256', 'rsa2'),
            'expired': sign({'sub': cls.alice, 'exp': now - LEEWAY_S - 60},
                            cls.secret, 'HS256'),
            'in_leeway': sign({'sub': cls.alice, 'exp': now - 5}, cls.secret, 'HS256'),
            'nbf_future': sign({'sub': cls.alice, 'exp': now + 3600,
                                'nbf': now + LEEWAY_S + 600}, cls.secret, 'HS256'),
            'no_exp': sign({'sub': cls.alice}, cls.secret, 'HS256'),
            'wrong_secret': sign(ok, 'another-secret-' + 'y' * 40, 'HS256'),
            # rsa2 is not in the JWKS yet: a token of kid rsa1 signed by it
            'wrong_rsa': sign(ok, cls.rsa2[0], 'RS256', 'rsa1'),
            'es_as_rs_kid': sign(ok, cls.ec1[0], 'ES256', 'rsa1'),
            'unknown_kid': sign(ok, cls.rsa1[0], 'RS256', 'nope'),
            'rs_no_kid': sign(ok, cls.rsa1[0], 'RS256'),
            'rs384': sign(ok, cls.rsa1[0], 'RS384', 'rsa1'),
            'mallory': sign({'sub': 'mallory', 'exp': now + 3600}, cls.secret, 'HS256'),
            'none': sign(ok, None, 'none'),
            'confusion': {'op': 'hmac', 'header': {'alg': 'HS256', 'typ': 'JWT', 'kid': 'rsa1'},
                          'payload': ok, 'secret': cls.rsa1[1]},
            'no_sub': sign({'exp': now + 3600, 'user': cls.alice}, cls.secret, 'HS256'),
            'sub_number': sign({'sub': 12345, 'exp': now + 3600}, cls.secret, 'HS256'),
            'sub_bad': sign({'sub': 'a\u0001b', 'exp': now + 3600}, cls.secret, 'HS256'),
            'sub_long': sign({'sub': 'u' * 65, 'exp': now + 3600}, cls.secret, 'HS256'),
        }
        names = list(jobs)
        cls.t = dict(zip(names, mint(node, [jobs[n] for n in names])))
        cls.jwks_file = os.path.join(d, 'jwks.json')
        write_atomic(cls.jwks_file, json.dumps({'keys': [cls.t['jwk_rsa1'], cls.t['jwk_ec1']]}))
        cls.srv = h.ImboxServer(shards=1, extra_args=[
            '--jwt-hs256-secret-file', cls.secret_file, '--jwt-jwks-file', cls.jwks_file])
        try:
            cls.srv.start()
        except Exception:
            cls.srv.cleanup()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.srv.cleanup()
        shutil.rmtree(cls.dir, ignore_errors=True)

    def jclient(self, name):
        return h.Client(self.srv._shared_channel(),
                        self.t[name], self.alice)

    def assert_sends_as_alice(self, name):
        """Send with token `name` works, and bob's inbox shows alice as the
        sender (the uid came from the token's sub)."""
        mid = h.new_msg_id(name)
        self.jclient(name).send1(mid, self.bob)
        msgs = self.srv.fast_client(self.bob).pull(page_size=1000).messages
        got = [m.sender_uid for m in msgs if m.msg_id == mid]
        self.assertEqual(got, [self.alice], name)

    def assert_refused(self, name, why=None):
        with self.assertRaises(grpc.RpcError) as cm:
            self.jclient(name).send('m-' + name, [self.bob])
        self.assertEqual(cm.exception.code(), UNAUTH, name)
        if why:
            self.assertIn(why, cm.exception.details(), name)

    def test_valid_tokens_send_as_sub(self):
        for name in ('hs', 'rs', 'es', 'in_leeway'):
            with self.subTest(name):
                self.assert_sends_as_alice(name)
                self.assert_sends_as_alice(name)  # the second from the cache

    def test_time_claims(self):
        self.assert_refused('expired', 'jwt: expired')
        self.assert_refused('nbf_future', 'jwt: not valid yet')
        self.assert_refused('no_exp', '"exp"')

    def test_wrong_keys_and_tampering(self):
        self.assert_refused('wrong_secret', 'jwt: bad signature')
        self.assert_refused('wrong_rsa', 'jwt: bad signature')
        self.assert_refused('es_as_rs_kid', 'jwt: no key')
        self.assert_refused('unknown_kid', 'jwt: no key')
        self.assert_refused('rs_no_kid', '"kid"')
        self.assert_refused('rs384', '"alg"')
        # Alice's payload with mallory's sub, under alice's valid signature
        # (the cache holds the original: a tampered token is another key).
        self.assert_sends_as_alice('hs')
        hdr, _, sig = self.t['hs'].split('.')
        self.t['tampered'] = '.'.join([hdr, self.t['mallory'].split('.')[1], sig])
        self.assert_refused('tampered', 'jwt: bad signature')
        self.t['two_dots_more'] = self.t['hs'] + '.x'
        self.assert_refused('two_dots_more', 'jwt: not three')
        self.t['padded'] = self.t['hs'] + '='
        self.assert_refused('padded', 'base64url')

    def test_alg_none_and_confusion(self):
        self.assertTrue(self.t['none'].endswith('.'), self.t['none'])
        self.assert_refused('none', 'jwt: not three non-empty parts')
        # none with something in the signature part still is none
        self.t['none_sig'] = self.t['none'] + 'AAAA'
        self.assert_refused('none_sig', '"alg"')
        # HS256 whose secret is the RSA public key PEM: checked against the
        # HS256 secret file only, never the JWKS key.
        self.assert_refused('confusion', 'jwt: bad signature')

    def test_uid_claim(self):
        self.assert_refused('no_sub', 'uid claim is missing')
        self.assert_refused('sub_number', 'uid claim is missing or not a string')
        self.assert_refused('sub_bad', 'not a valid uid')
        self.assert_refused('sub_long', 'not a valid uid')

    def test_imbox_tokens_beside_jwts(self):
        c = self.srv.client(self.alice)  # `imbox token`
        mid = h.new_msg_id('imbox')
        c.send1(mid, self.bob)
        msgs = self.srv.fast_client(self.bob).pull(page_size=1000).messages
        self.assertIn((mid, self.alice), [(m.msg_id, m.sender_uid) for m in msgs])
        self.assert_sends_as_alice('hs')
        # a forged imbox token is still refused by the imbox verifier
        bad = h.Client(self.srv._shared_channel(), c.token[:-2] + 'AA', self.alice)
        with self.assertRaises(grpc.RpcError) as cm:
            bad.send('m-forged', [self.bob])
        self.assertEqual(cm.exception.code(), UNAUTH)
        self.assertTrue(cm.exception.details().startswith('token: '), cm.exception.details())

    def test_zz_key_rotation(self):
        """Runs last (unittest sorts by name): it changes the JWKS."""
        self.assert_sends_as_alice('rs')        # rsa1 works, and is cached
        self.assert_refused('rs2', 'jwt: no key')
        write_atomic(self.jwks_file,
                     json.dumps({'keys': [self.t['jwk_rsa2'], self.t['jwk_ec1']]}))
        deadline = time.monotonic() + 10
        while True:
            try:
                self.assert_sends_as_alice('rs2')
                break
            except grpc.RpcError as e:
                if e.code() != UNAUTH or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.assert_refused('rs', 'jwt: no key')          # removed kid, was cached
        self.assert_refused('rs_cached', 'jwt: no key')
        self.assert_sends_as_alice('es')                 # kept kid
        # A JWKS that does not parse keeps the keys in use, logged once.
        write_atomic(self.jwks_file, '{"keys": [')

        def log():
            with open(self.srv.proc.log_path) as f:
                return f.read()
        deadline = time.monotonic() + 10
        while 'JWKS refused' not in log() and time.monotonic() < deadline:
            self.jclient('rs2').counts()  # the check runs on calls
            time.sleep(0.1)
        time.sleep(1.2)  # past the next check (one a second)
        self.assert_sends_as_alice('rs2')
        log = log()
        self.assertEqual(log.count('JWKS refused'), 1, log[-2000:])
        self.assertNotIn(self.t['rs2'], log)


class JwtIssuerAudienceTest(unittest.TestCase):
    """HS256 only (no JWKS), uid in the claim `user_id`, issuer and audience
    required."""

    @classmethod
    def setUpClass(cls):
        node = npm_ci()
        cls.dir = d = tempfile.mkdtemp(prefix='imbox-jwt-')
        cls.rsa1 = keys()['rsa1']
        secret = 's' * 32
        path = os.path.join(d, 'hs256.secret')
        with open(path, 'w') as f:
            f.write(secret)
        now = int(time.time())
        cls.alice = h.uid('alice')
        good = {'user_id': cls.alice, 'sub': 'someone-else', 'exp': now + 600,
                'iss': 'https://idp.example', 'aud': ['other', 'imbox']}

        def sign(payload, key=secret, alg='HS256', kid=None):
            return {'op': 'sign', 'payload': payload, 'key': key, 'alg': alg, 'kid': kid}

        jobs = {
            'good': sign(good),
            'aud_str': sign(dict(good, aud='imbox')),
            'wrong_iss': sign(dict(good, iss='https://evil.example')),
            'no_iss': sign({k: v for k, v in good.items() if k != 'iss'}),
            'wrong_aud': sign(dict(good, aud=['other'])),
            'no_user_id': sign({k: v for k, v in good.items() if k != 'user_id'}),
            'rs': sign(good, cls.rsa1[0], 'RS256', 'rsa1'),
        }
        names = list(jobs)
        cls.t = dict(zip(names, mint(node, [jobs[n] for n in names])))
        cls.srv = h.ImboxServer(shards=1, extra_args=[
            '--jwt-hs256-secret-file', path, '--jwt-uid-claim', 'user_id',
            '--jwt-issuer', 'https://idp.example', '--jwt-audience', 'imbox'])
        try:
            cls.srv.start()
        except Exception:
            cls.srv.cleanup()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.srv.cleanup()
        shutil.rmtree(cls.dir, ignore_errors=True)

    def test_claims(self):
        for n, name in enumerate(('good', 'aud_str')):
            c = h.Client(self.srv._shared_channel(), self.t[name], self.alice)
            self.assertEqual(c.counts().total, n, name)  # the inbox of user_id
            c.send1(h.new_msg_id(name), self.alice)
            self.assertEqual(c.counts().total, n + 1, name)
        for name, why in (('wrong_iss', '"iss"'), ('no_iss', '"iss"'),
                          ('wrong_aud', '"aud"'), ('no_user_id', 'uid claim'),
                          ('rs', 'jwt: no key')):
            c = h.Client(self.srv._shared_channel(), self.t[name], self.alice)
            with self.assertRaises(grpc.RpcError) as cm:
                c.counts()
            self.assertEqual(cm.exception.code(), UNAUTH, name)
            self.assertIn(why, cm.exception.details(), name)


class JwtStartTest(unittest.TestCase):
    """Bad JWT configuration stops `imbox serve` at start."""

    def test_bad_files(self):
        d = tempfile.mkdtemp(prefix='imbox-jwt-')
        try:
            short = os.path.join(d, 'short')
            with open(short, 'w') as f:
                f.write('too short')
            bad = os.path.join(d, 'bad.json')
            with open(bad, 'w') as f:
                f.write('{"keys": [{"kty": "RSA", "kid": "k", "n": "AQAB", "e": "AQAB"}]}')
            for args, why in ((['--jwt-hs256-secret-file', short], '32..4096 bytes'),
                              (['--jwt-jwks-file', os.path.join(d, 'missing')], 'missing'),
                              (['--jwt-jwks-file', bad], 'not a valid RSA')):
                p = subprocess.run([h.IMBOX_BIN, 'serve', '--listen', '127.0.0.1:%d'
                                    % h.free_port(), '--data-dir', os.path.join(d, 'data')]
                                   + args, capture_output=True, text=True, timeout=30)
                self.assertNotEqual(p.returncode, 0, args)
                self.assertIn(why, p.stderr, args)
        finally:
            shutil.rmtree(d, ignore_errors=True)


if __name__ == '__main__':
    unittest.main()
