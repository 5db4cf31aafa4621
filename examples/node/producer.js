#!/usr/bin/env node
// Publish messages to a postbus topic (Node 18+, no npm packages).
//
//   POSTBUS_URL=http://localhost:8080 node producer.js orders 3
//
// Publishes COUNT JSON messages to TOPIC, each with a tag and a key, and
// prints one JSON line per acknowledgement. POSTBUS_TOKEN, if set, is sent as
// a bearer token.
'use strict';

const BASE = (process.env.POSTBUS_URL || 'http://localhost:8080').replace(/\/$/, '');
const TOKEN = process.env.POSTBUS_TOKEN || '';

async function publish(topic, body, tag, keys) {
  const headers = { 'Content-Type': 'application/json' };
  if (tag) headers['Postbus-Tag'] = tag;
  if (keys && keys.length) headers['Postbus-Keys'] = keys.join(',');
  if (TOKEN) headers['Authorization'] = 'Bearer ' + TOKEN;
  const resp = await fetch(`${BASE}/v1/topics/${encodeURIComponent(topic)}/messages`, {
    method: 'POST', headers, body: JSON.stringify(body),
  });
  const answer = await resp.json();
  if (!resp.ok) {
    // Errors are RFC 9457 problems: the stable "code" is what to branch on.
    throw new Error(`publish refused: ${resp.status} ${answer.code}: ${answer.detail}`);
  }
  return answer;
}

async function main() {
  const [topic, count] = process.argv.slice(2);
  if (!topic || !count) {
    console.error('usage: producer.js TOPIC COUNT');
    process.exit(2);
  }
  for (let i = 0; i < Number(count); i++) {
    const ack = await publish(topic, { order: i }, 'created', [`order-${i}`]);
    console.log(JSON.stringify(ack));
  }
}

main().catch((err) => { console.error(err.message); process.exit(1); });
