#!/usr/bin/env node
// A postbus webhook receiver that checks Standard Webhooks signatures by hand
// (Node's own http and crypto modules, no npm packages).
//
//   WEBHOOK_SECRET=whsec_... node webhook_receiver.js --port 9000 [--count N]
//
// Each delivery is signed: webhook-signature holds one or more "v1,<base64>"
// entries, each an HMAC-SHA256 over "<webhook-id>.<webhook-timestamp>.<body>"
// keyed with the base64-decoded part of the subscription's "whsec_" secret
// (two or more entries while an older secret is in its rotation overlap). A
// request whose signature does not match, or whose timestamp is more than
// five minutes off, is answered 401 and not processed. Delivery is at least
// once: a webhook-id already seen is answered 200 and not processed again.
//
// Prints "listening on HOST:PORT", then one JSON line per message processed;
// with --count N it exits after N messages.
'use strict';

const crypto = require('node:crypto');
const http = require('node:http');

const TOLERANCE = 5 * 60; // seconds a webhook-timestamp may be off

// verify returns null if the delivery is authentic, else why not.
function verify(secret, headers, body, now = Date.now() / 1000) {
  const id = headers['webhook-id'];
  const ts = headers['webhook-timestamp'];
  const sig = headers['webhook-signature'];
  if (!id || !ts || !sig) return 'missing webhook-id, webhook-timestamp or webhook-signature';
  if (!/^\d+$/.test(ts)) return 'webhook-timestamp is not unix seconds';
  if (Math.abs(now - Number(ts)) > TOLERANCE) return 'webhook-timestamp too far from now (a replay?)';
  const key = Buffer.from(secret.replace(/^whsec_/, ''), 'base64');
  const want = crypto.createHmac('sha256', key)
    .update(Buffer.concat([Buffer.from(`${id}.${ts}.`), body]))
    .digest();
  for (const entry of sig.split(' ')) {
    const [version, value] = entry.split(',', 2);
    // v1a entries are Ed25519 with the bus key: not checked here.
    if (version !== 'v1' || !value) continue;
    const got = Buffer.from(value, 'base64');
    if (got.length === want.length && crypto.timingSafeEqual(got, want)) return null;
  }
  return 'no v1 signature matches';
}

function arg(name, fallback) {
  const i = process.argv.indexOf(name);
  return i >= 0 ? Number(process.argv[i + 1]) : fallback;
}

const secret = process.env.WEBHOOK_SECRET;
if (!secret) {
  console.error("set WEBHOOK_SECRET to the subscription's whsec_ secret");
  process.exit(2);
}
const count = arg('--count', 0);
const seen = new Set();

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const body = Buffer.concat(chunks);
    const why = verify(secret, req.headers, body);
    if (why) {
      console.error(`refused: ${why}`);
      res.writeHead(401).end();
      return;
    }
    const id = req.headers['webhook-id'];
    const first = !seen.has(id);
    seen.add(id);
    res.writeHead(200).end();
    if (!first) return;
    console.log(JSON.stringify({
      msg_id: req.headers['postbus-message-id'],
      topic: req.headers['postbus-topic'],
      tag: req.headers['postbus-tag'],
      attempt: Number(req.headers['postbus-attempt'] || 1),
      body: body.toString('utf8'),
    }));
    if (count && seen.size >= count) {
      server.close();
      server.closeAllConnections();
    }
  });
});

server.listen(arg('--port', 9000), '127.0.0.1', () => {
  console.log(`listening on 127.0.0.1:${server.address().port}`);
});
