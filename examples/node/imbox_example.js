#!/usr/bin/env node
// imbox from Node.js (@grpc/grpc-js + @grpc/proto-loader, versions pinned in
// package-lock.json): the four things every client does, with the rules that
// make delivery exactly-once for the user (docs/CLIENTS.md).
//
//   1. send, retrying a failed call with the SAME msg_id (the server dedups);
//   2. counts, then pull one conversation, page by page;
//   3. drain the whole inbox: pulling page N+1 acks page N, the final empty
//      page acks the last one; dedup by msg_id in case a page comes again;
//   4. subscribe: backlog, then live pushes; ack with each delivery's cursor.
//
//   npm ci && node imbox_example.js --addr 127.0.0.1:50051 \
//       --sender-token "$ALICE" --receiver-token "$BOB" --to bob
//
// The .proto is loaded at run time (no generated code). Exits 0 when every
// step saw what the protocol promises, 1 otherwise.
'use strict';
const path = require('path');
const crypto = require('crypto');
const fs = require('fs');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO = path.join(__dirname, '..', '..', 'proto', 'imbox', 'v1', 'imbox.proto');
// keepCase: the .proto's field names; longs: String keeps 64-bit fields exact; bytes stay Buffers.
const def = protoLoader.loadSync(PROTO, { keepCase: true, longs: String, enums: Number, defaults: true });
const { Inbox } = grpc.loadPackageDefinition(def).imbox.v1;
const RETRYABLE = [grpc.status.UNAVAILABLE, grpc.status.DEADLINE_EXCEEDED];

function args() {
  const a = { addr: '127.0.0.1:50051' };
  const v = process.argv.slice(2);
  for (let i = 0; i < v.length; i += 2) {
    const k = v[i].replace(/^--/, '').replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    if (!['addr', 'senderToken', 'receiverToken', 'to', 'ca'].includes(k) || v[i + 1] === undefined) {
      console.error('usage: imbox_example.js [--addr H:P] --sender-token T --receiver-token T --to UID [--ca PEM]');
      process.exit(2);
    }
    a[k] = v[i + 1];
  }
  if (!a.senderToken || !a.receiverToken || !a.to) {
    console.error('--sender-token, --receiver-token and --to are required');
    process.exit(2);
  }
  return a;
}

function auth(token) {
  const md = new grpc.Metadata();
  md.set('authorization', 'Bearer ' + token);
  return md;
}

const deadline = (s) => Date.now() + s * 1000;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function unary(client, method, req, token) {
  return new Promise((resolve, reject) =>
    client[method](req, auth(token), { deadline: deadline(10) },
      (err, resp) => (err ? reject(err) : resolve(resp))));
}

// Sends one message and returns its receipts. A call that fails with
// UNAVAILABLE or DEADLINE_EXCEEDED may or may not have stored the message:
// it is retried with the same msg_id, and a receipt that says UNAVAILABLE is
// retried for that receiver alone. duplicate = true then means "stored by an
// earlier attempt", which is success.
async function send(client, token, to, content, msgId, attempts = 5) {
  msgId = msgId || crypto.randomUUID();
  let pending = to.slice();
  const done = new Map();
  for (let attempt = 0; attempt < attempts && pending.length; attempt++) {
    try {
      const resp = await unary(client, 'Send',
        { msg_id: msgId, receiver_uids: pending, content: Buffer.from(content) }, token);
      for (const r of resp.receipts) done.set(r.receiver_uid, r);
      pending = resp.receipts.filter((r) => r.code === grpc.status.UNAVAILABLE)
        .map((r) => r.receiver_uid);
      if (!pending.length) break;
    } catch (e) {
      if (!RETRYABLE.includes(e.code)) throw e;
    }
    await sleep(Math.min(50 * 2 ** attempt, 2000));
  }
  return { msgId, receipts: to.filter((u) => done.has(u)).map((u) => done.get(u)) };
}

// Client dedup: the (sender, msg_id) pairs already shown (a real app keeps
// them on disk for the dedup window, 24 h).
class Seen {
  constructor() { this.ids = new Set(); }
  firstTime(m) {
    const k = JSON.stringify([m.sender_uid, m.msg_id]);
    if (this.ids.has(k)) return false;
    this.ids.add(k);
    return true;
  }
}

// Drains the inbox (or one conversation): each Pull carries the cursor of
// the page before, which acks it; the final empty page acks the last.
async function pullAll(client, token, seen, senderUid = '', pageSize = 100) {
  let cursor = '';
  const shown = [];
  let calls = 0;
  for (;;) {
    const resp = await unary(client, 'Pull',
      { cursor, page_size: pageSize, sender_uid: senderUid }, token);
    calls++;
    for (const m of resp.messages) if (seen.firstTime(m)) shown.push(m);
    cursor = resp.cursor;
    if (!resp.messages.length) return { shown, calls };
  }
}

async function main() {
  const a = args();
  const creds = a.ca ? grpc.credentials.createSsl(fs.readFileSync(a.ca))
    : grpc.credentials.createInsecure();
  const client = new Inbox(a.addr, creds);
  let ok = true;
  const check = (cond, what) => {
    console.log((cond ? 'ok   ' : 'FAIL ') + what);
    ok = ok && cond;
  };

  // 1. Send, then the same msg_id again (a retry after a lost response).
  let r = await send(client, a.senderToken, [a.to], 'hello');
  check(r.receipts.length === 1 && r.receipts[0].code === 0 && !r.receipts[0].duplicate,
    'send: stored');
  r = await send(client, a.senderToken, [a.to], 'hello', r.msgId);
  check(r.receipts.length === 1 && r.receipts[0].code === 0 && r.receipts[0].duplicate,
    'send again with the same msg_id: duplicate, stored once');
  for (let i = 0; i < 4; i++) await send(client, a.senderToken, [a.to], 'more ' + i);

  // 2. Counts, then the first sender's conversation in pages of 2.
  const counts = await unary(client, 'Counts', {}, a.receiverToken);
  check(counts.total === '5' && counts.senders.length === 1,
    `counts: ${counts.total} waiting from ` +
    JSON.stringify(counts.senders.map((s) => [s.sender_uid, s.count])));
  const seen = new Seen();
  const conv = await pullAll(client, a.receiverToken, seen, counts.senders[0].sender_uid, 2);
  check(JSON.stringify(conv.shown.map((m) => m.content.toString())) ===
        JSON.stringify(['hello', 'more 0', 'more 1', 'more 2', 'more 3']) && conv.calls === 4,
    `conversation pulled in ${conv.calls} calls (3 pages + the empty one)`);

  // 3. Drain: the conversation's pulls acked it, so the inbox is empty.
  let rest = await pullAll(client, a.receiverToken, seen);
  check(rest.shown.length === 0, 'drain: nothing left after the conversation was acked');

  // 4. Subscribe: a message sent while subscribed arrives live.
  const call = client.Subscribe({ cursor: '' }, auth(a.receiverToken));
  const got = new Promise((resolve) => {
    const timer = setTimeout(() => resolve(null), 10000);
    call.on('data', async (d) => {
      if (!seen.firstTime(d.message)) return;
      await unary(client, 'Ack', { cursor: d.cursor }, a.receiverToken);
      clearTimeout(timer);
      resolve(d);
    });
    call.on('error', () => {}); // the cancel below ends it with CANCELLED
  });
  // The initial metadata comes once the stream is registered: online.
  await new Promise((resolve) => call.once('metadata', resolve));
  r = await send(client, a.senderToken, [a.to], 'live');
  check(r.receipts.length === 1 && r.receipts[0].code === 0 && r.receipts[0].online,
    'send to a subscriber: online');
  const d = await got;
  call.cancel();
  check(d !== null && d.message.content.toString() === 'live', 'subscribe: pushed and acked');
  rest = await pullAll(client, a.receiverToken, seen);
  check(rest.shown.length === 0, 'after the ack nothing is left');
  client.close();
  return ok ? 0 : 1;
}

main().then((rc) => process.exit(rc), (e) => {
  console.error('imbox_example.js: ' + (e.stack || e));
  process.exit(1);
});
