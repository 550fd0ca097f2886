// mint.js - JWTs and JWKs for tests/py/test_jwt.py, made by an
// implementation other than imbox's (jsonwebtoken, node's crypto).
//
// stdin: a JSON array of jobs; stdout: a JSON array of their results, in
// order. Jobs:
//   {"op": "sign", "payload": {...}, "key": PEM or secret, "alg": "RS256",
//    "kid": "k1"}                           -> the token (jsonwebtoken.sign)
//   {"op": "hmac", "header": {...}, "payload": {...}, "secret": "..."}
//                                           -> a token HMAC-SHA256'ed by hand
//                                              (what jsonwebtoken refuses to
//                                              make: algorithm confusion)
//   {"op": "jwk", "pem": public key PEM, "kid": "k1", "alg": "RS256"}
//                                           -> the JWK object
'use strict';
const crypto = require('crypto');
const jwt = require('jsonwebtoken');

const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');

function run(job) {
  switch (job.op) {
    case 'sign': {
      const opts = {algorithm: job.alg, noTimestamp: true};
      if (job.kid) opts.keyid = job.kid;
      return jwt.sign(job.payload, job.alg === 'none' ? undefined : job.key, opts);
    }
    case 'hmac': {
      const input = b64(job.header) + '.' + b64(job.payload);
      const mac = crypto.createHmac('sha256', job.secret).update(input).digest('base64url');
      return input + '.' + mac;
    }
    case 'jwk': {
      const k = crypto.createPublicKey(job.pem).export({format: 'jwk'});
      return Object.assign(k, {kid: job.kid, alg: job.alg, use: 'sig'});
    }
    default:
      throw new Error('unknown op ' + job.op);
  }
}

const input = require('fs').readFileSync(0, 'utf8');
process.stdout.write(JSON.stringify(JSON.parse(input).map(run)));
