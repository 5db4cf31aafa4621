#!/usr/bin/env node
// A postbus pull worker (Node 18+, no npm packages).
//
//   POSTBUS_URL=http://localhost:8080 node pull_worker.js workers orders [--count N]
//
// Long-polls GROUP's share of TOPIC, processes each message, and acks what it
// processed in one batch; a message whose processing fails is nacked, so that
// it comes back as the next attempt (and goes to the group's dead-letter queue
// after max_retries). An ack whose answer was lost is sent again: acking an
// acked receipt answers "acked". Prints one JSON line per message processed;
// with --count N it exits after N.
'use strict';

const BASE = (process.env.POSTBUS_URL || 'http://localhost:8080').replace(/\/$/, '');
const TOKEN = process.env.POSTBUS_TOKEN || '';

// post sends body as JSON (a pull takes none) and returns the JSON answer.
async function post(path, body) {
  const headers = {};
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (TOKEN) headers['Authorization'] = 'Bearer ' + TOKEN;
  const resp = await fetch(BASE + path, {
    method: 'POST', headers, body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(40000),
  });
  const answer = await resp.json();
  if (!resp.ok) throw new Error(`${path}: ${resp.status} ${answer.code}: ${answer.detail}`);
  return answer;
}

async function settle(group, verb, receipts) {
  for (let attempt = 0; attempt < 5; attempt++) {
    try {
      return await post(`/v1/groups/${group}/${verb}`, { receipts });
    } catch (err) {
      // The answer was lost: the same call again is safe.
      await new Promise((r) => setTimeout(r, 1000 * 2 ** attempt));
    }
  }
  throw new Error(`${verb} failed five times`);
}

function processMessage(msg) {
  return JSON.parse(msg.body); // your work here; throw to give the message back
}

async function main() {
  const [groupName, topicName] = process.argv.slice(2);
  if (!groupName || !topicName) {
    console.error('usage: pull_worker.js GROUP TOPIC [--count N]');
    process.exit(2);
  }
  const i = process.argv.indexOf('--count');
  const count = i >= 0 ? Number(process.argv[i + 1]) : 0;
  const group = encodeURIComponent(groupName);
  const topic = encodeURIComponent(topicName);
  let done = 0;
  while (!count || done < count) {
    const got = await post(`/v1/groups/${group}/topics/${topic}/pull?max=16&wait=20s`);
    const ok = [];
    const failed = [];
    for (const msg of got.messages) {
      try {
        processMessage(msg);
      } catch (err) {
        failed.push(msg.receipt);
        continue;
      }
      ok.push(msg.receipt);
      console.log(JSON.stringify({ msg_id: msg.msg_id, attempt: msg.attempt, body: msg.body }));
    }
    if (ok.length) {
      const answer = await settle(group, 'ack', ok);
      for (const r of answer.results) {
        // stale: the visibility ran out first and the message went out again.
        if (r.status !== 'acked') console.error(`ack ${r.receipt.slice(0, 12)}…: ${r.status}`);
      }
    }
    if (failed.length) await settle(group, 'nack', failed);
    done += ok.length;
  }
}

main().catch((err) => { console.error(err.message); process.exit(1); });
