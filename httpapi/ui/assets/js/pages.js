// The pages. Each is async (view, params, ctx) and fills view.
import { h, add, clear, link, table, kv, badge, fmtNum, fmtBytes, fmtTime } from './dom.js';
import { api, get, q, enc, ApiError } from './api.js';
import { lineChart, barChart, timeline } from './chart.js';

// UserError is a mistake in what the user typed: shown, not a fault.
class UserError extends Error {}

// act wraps an event handler: a refusal is shown in the banner, a fault of
// the page is a console error as well.
function act(ctx, fn) {
  return async (ev) => {
    if (ev && ev.preventDefault) ev.preventDefault();
    const btn = ev && ev.submitter ? ev.submitter : ev && ev.currentTarget && ev.currentTarget.tagName === 'BUTTON' ? ev.currentTarget : null;
    if (btn) btn.disabled = true;
    try {
      ctx.showError(null);
      await fn(ev);
    } catch (err) {
      ctx.showError(err);
      if (!(err instanceof ApiError) && !(err instanceof UserError)) console.error(err);
    } finally {
      if (btn) btn.disabled = false;
    }
  };
}

// optional answers null for the given statuses instead of throwing.
async function optional(p, ...statuses) {
  try { return await p; } catch (err) {
    if (err instanceof ApiError && statuses.includes(err.status)) return null;
    throw err;
  }
}

const last = (pts) => { for (let i = pts.length - 1; i >= 0; i--) if (pts[i] !== null) return pts[i]; return null; };
const stepOf = (st) => parseInt(st.resolution, 10) || 10;
const userTopic = (t) => !t.startsWith('%');

function field(label, input) { return h('label', {}, label, input); }

// ---- overview ----

async function overview(view, _, ctx) {
  add(view, h('h1', {}, 'Overview'));
  const [st, cluster, groups, health] = await Promise.all([
    get('/v1/stats'), optional(get('/v1/cluster'), 404), get('/v1/groups?limit=1000'), optional(get('/healthz'), 503)]);
  const dead = groups.groups.reduce((n, g) => n + g.dead_letters, 0);
  const lag = groups.groups.reduce((n, g) => n + g.lag, 0);
  add(view, h('div', { class: 'cards' },
    card(cluster ? cluster.brokers.length : 1, cluster ? 'brokers (from the name server)' : 'broker (standalone)'),
    card(cluster ? 'yes' : 'none', 'name server answering /v1/cluster'),
    card(fmtNum(last(st.in_per_second)), 'messages in / s'),
    card(fmtNum(last(st.out_per_second)), 'messages out / s'),
    card(fmtNum(lag), 'lag, all groups'),
    card(fmtNum(dead), 'dead letters waiting'),
    card(health ? health.status : 'failing', 'health')));
  add(view, h('div', { class: 'panel' }, lineChart({
    title: 'Messages a second, last hour', start: st.start, stepSec: stepOf(st), width: 1200,
    series: [{ name: 'in', points: st.in_per_second }, { name: 'out', points: st.out_per_second }] })));
  const top = st.topics.map((t) => ({ t, rate: last(t.in_per_second) || 0 })).sort((a, b) => b.rate - a.rate).slice(0, 8);
  const lagged = [...groups.groups].sort((a, b) => b.lag - a.lag).slice(0, 8);
  add(view, h('div', { class: 'row' },
    h('div', { class: 'panel' }, h('h2', {}, 'Top topics by rate'), table(
      [{ label: 'topic' }, { label: 'in / s', num: true }, { label: 'out / s', num: true }],
      top.map(({ t, rate }) => [link(t.topic, 'topics', t.topic), fmtNum(rate), fmtNum(last(t.out_per_second))]), 'No topics yet.')),
    h('div', { class: 'panel' }, h('h2', {}, 'Groups with the most lag'), table(
      [{ label: 'group' }, { label: 'lag', num: true }, { label: 'dead letters', num: true }, { label: 'oldest unacked', num: true }],
      lagged.map((g) => [link(g.name, 'groups', g.name), fmtNum(g.lag), g.dead_letters ? link(fmtNum(g.dead_letters), 'dlq', g.name) : '0',
        g.oldest_unacked_seconds ? g.oldest_unacked_seconds.toFixed(1) + ' s' : '–']), 'No groups yet.'))));
}

function card(v, k) { return h('div', { class: 'card' }, h('div', { class: 'v' }, v), h('div', { class: 'k' }, k)); }

// ---- topics ----

async function topics(view, params, ctx) {
  if (params[0]) return topic(view, params[0], ctx);
  add(view, h('h1', {}, 'Topics'));
  const list = await get('/v1/topics?limit=1000');
  const name = h('input', { name: 'name', placeholder: 'orders', required: true, pattern: '[A-Za-z0-9][A-Za-z0-9._\\-]*' });
  const queues = h('input', { name: 'queues', type: 'number', min: 1, value: 4 });
  const retention = h('input', { name: 'retention', placeholder: '72h' });
  add(view, h('form', { class: 'panel inline', id: 'create-topic', onsubmit: act(ctx, async () => {
    const body = { queues: parseInt(queues.value, 10) };
    if (retention.value) body.retention = retention.value;
    await api('PUT', '/v1/topics/' + enc(name.value), { body });
    location.hash = '#/topics/' + enc(name.value);
  }) }, field('Name', name), field('Queues', queues), field('Retention', retention), h('button', { type: 'submit' }, 'Create topic')));
  add(view, table([{ label: 'topic' }, { label: 'queues', num: true }, { label: 'brokers' }, { label: 'created' }],
    list.topics.map((t) => [link(t.name, 'topics', t.name), t.queue_count, (t.brokers || []).join(', '), fmtTime(t.created_at)]), 'No topics yet.'));
}

async function topic(view, name, ctx) {
  add(view, h('h1', {}, 'Topic ', h('span', { class: 'mono' }, name)));
  const [t, st, subs] = await Promise.all([get('/v1/topics/' + enc(name)), get('/v1/stats' + q({ topic: name })),
    get('/v1/subscriptions?limit=1000')]);
  const ts = st.topics[0] || { in_per_second: [], out_per_second: [] };
  add(view, h('div', { class: 'cards' }, card(t.queue_count, 'queues'), card(fmtNum(t.messages), 'messages retained'),
    card(fmtBytes(t.bytes), 'bytes'), card(fmtNum(last(ts.in_per_second)), 'in / s'), card(fmtNum(last(ts.out_per_second)), 'out / s'),
    card(t.retention || 'default', 'retention')));
  add(view, h('div', { class: 'panel' }, lineChart({ title: 'Messages a second, last hour', start: st.start, stepSec: stepOf(st), width: 1200,
    series: [{ name: 'in', points: ts.in_per_second }, { name: 'out', points: ts.out_per_second }] })));
  add(view, h('h2', {}, 'Queues'), table(
    [{ label: 'queue', num: true }, { label: 'min offset', num: true }, { label: 'max offset', num: true }, { label: 'messages', num: true }, { label: 'bytes', num: true }, { label: 'broker' }],
    t.queues.map((x) => [x.queue_id, x.min_offset, x.max_offset, x.messages, fmtBytes(x.bytes), x.broker || ''])));
  const mine = subs.subscriptions.filter((x) => x.topic === name);
  add(view, h('h2', {}, 'Subscriptions'), table([{ label: 'id' }, { label: 'group' }, { label: 'type' }, { label: 'state' }],
    mine.map((x) => [link(x.id, 'subscriptions', x.id), link(x.group, 'groups', x.group), x.type, badge(x.state)]), 'No subscriptions.'));

  const grow = h('input', { type: 'number', min: t.queue_count, value: t.queue_count, name: 'queues' });
  add(view, h('h2', {}, 'Grow'), h('form', { class: 'panel inline', id: 'grow-topic', onsubmit: act(ctx, async () => {
    await api('PUT', '/v1/topics/' + enc(name), { body: { queues: parseInt(grow.value, 10) } });
    ctx.refresh();
  }) }, field('Queues', grow), h('button', { type: 'submit' }, 'Grow'), h('span', { class: 'note' }, 'Queues can be added, not removed.')));

  const body = h('textarea', { name: 'body' }, '{"hello":"world"}');
  const ctype = h('input', { name: 'content_type', value: 'application/json' });
  const tag = h('input', { name: 'tag', placeholder: 'tag' });
  const keys = h('input', { name: 'keys', placeholder: 'key1,key2' });
  const sent = h('div', { id: 'sent' });
  add(view, h('h2', {}, 'Send a test message'), h('form', { class: 'panel inline', id: 'send-message', onsubmit: act(ctx, async () => {
    const headers = { 'Content-Type': ctype.value || 'application/octet-stream' };
    if (tag.value) headers['Postbus-Tag'] = tag.value;
    if (keys.value) headers['Postbus-Keys'] = keys.value;
    const r = await api('POST', '/v1/topics/' + enc(name) + '/messages', { body: body.value, headers });
    clear(sent);
    add(sent, ['Stored: ', link(r.msg_id, 'messages', r.msg_id), ` on queue ${r.queue_id} at offset ${r.queue_offset}`]);
  }) }, field('Body', body), field('Content-Type', ctype), field('Tag', tag), field('Keys', keys), h('button', { type: 'submit' }, 'Send')), sent);
}

// ---- groups ----

async function groups(view, params, ctx) {
  if (params[0]) return group(view, params[0], ctx);
  add(view, h('h1', {}, 'Consumer groups'));
  const list = await get('/v1/groups?limit=1000');
  add(view, table([{ label: 'group' }, { label: 'topics' }, { label: 'lag', num: true }, { label: 'dead letters', num: true },
    { label: 'held polls', num: true }, { label: 'oldest unacked', num: true }],
  list.groups.map((g) => [link(g.name, 'groups', g.name), [...new Set(g.subscriptions.map((x) => x.topic))].join(', '),
    fmtNum(g.lag), g.dead_letters ? link(fmtNum(g.dead_letters), 'dlq', g.name) : '0', g.held_polls,
    g.oldest_unacked_seconds ? g.oldest_unacked_seconds.toFixed(1) + ' s' : '–']), 'No groups yet.'));
}

async function group(view, name, ctx) {
  add(view, h('h1', {}, 'Group ', h('span', { class: 'mono' }, name)));
  const [g, st] = await Promise.all([get('/v1/groups/' + enc(name)), get('/v1/stats' + q({ group: name }))]);
  const gs = st.groups[0] || { lag: [], in_flight: [], out_per_second: [], dead_letters: [] };
  add(view, h('div', { class: 'cards' }, card(fmtNum(g.lag), 'lag'), card(fmtNum(g.dead_letters), 'dead letters'),
    card(g.held_polls, 'held polls'), card(fmtNum(last(gs.out_per_second)), 'consumed / s')));
  add(view, h('div', { class: 'row' },
    h('div', { class: 'panel' }, lineChart({ title: 'Lag and in flight, last hour', start: st.start, stepSec: stepOf(st), width: 560,
      series: [{ name: 'lag', points: gs.lag }, { name: 'in flight', points: gs.in_flight }, { name: 'dead letters', points: gs.dead_letters }] })),
    h('div', { class: 'panel' }, barChart({ title: 'Lag per queue now (in flight in the retry queues)', width: 560,
      bars: g.queues.map((x) => ({ label: (userTopic(x.topic) ? x.topic : 'retry') + '#' + x.queue_id, value: userTopic(x.topic) ? x.lag : x.in_flight,
        color: userTopic(x.topic) ? '#2563eb' : '#d97706' })) }))));
  add(view, liveQueues(view, name, g, ctx));
  add(view, h('h2', {}, 'Queues'), table(
    [{ label: 'topic' }, { label: 'queue', num: true }, { label: 'offset', num: true }, { label: 'max offset', num: true }, { label: 'lag', num: true },
      { label: 'in flight', num: true }, { label: 'expired', num: true }, { label: 'broker' }],
    g.queues.map((x) => [userTopic(x.topic) ? link(x.topic, 'topics', x.topic) : x.topic, x.queue_id, x.offset, x.max_offset, x.lag, x.in_flight, x.expired, x.broker || ''])));
  add(view, h('h2', {}, 'Subscriptions'), table([{ label: 'id' }, { label: 'topic' }, { label: 'type' }, { label: 'state' }],
    g.subscriptions.map((x) => [link(x.id, 'subscriptions', x.id), x.topic, x.type, badge(x.state)])));

  const topicsOf = [...new Set([...g.subscriptions.map((x) => x.topic), ...g.queues.map((x) => x.topic).filter(userTopic)])];
  const tsel = h('select', { name: 'topic' }, topicsOf.map((t) => h('option', { value: t }, t)));
  const to = h('select', { name: 'to' }, h('option', { value: 'earliest' }, 'earliest'), h('option', { value: 'latest' }, 'latest'), h('option', { value: 'time' }, 'a time…'));
  const at = h('input', { type: 'datetime-local', name: 'at', step: 1 });
  const confirmBox = h('input', { type: 'checkbox', name: 'confirm' });
  add(view, h('h2', {}, 'Reset offsets'), h('form', { class: 'panel inline', id: 'reset-offsets', onsubmit: act(ctx, async () => {
    if (!confirmBox.checked) throw new UserError('Tick the box to confirm: a reset moves every consumer of the group.');
    let where = to.value;
    if (where === 'time') {
      if (!at.value) throw new UserError('Give the time to reset to.');
      where = new Date(at.value + 'Z').toISOString().replace('.000Z', 'Z');
    }
    await api('POST', '/v1/groups/' + enc(name) + '/offsets/reset', { body: { topic: tsel.value, to: where } });
    ctx.refresh();
  }) }, field('Topic', tsel), field('To', to), field('Time (UTC)', at), h('label', {}, 'Confirm', confirmBox), h('button', { type: 'submit', class: 'danger' }, 'Reset')));
}

// liveQueues plots each queue's lag (and each retry queue's in flight)
// over time, sampled from GET /v1/groups/{group} every few seconds while
// the page is open: /v1/stats keeps per-group series, not per queue.
function liveQueues(view, name, first, ctx) {
  const stepSec = 5;
  const maxPoints = 120; // ten minutes
  const box = h('div', { class: 'panel', id: 'live-queues' });
  const hist = new Map();
  let n = 0;
  let start = null;
  const sample = (g) => {
    if (!start) start = new Date().toISOString();
    for (const x of g.queues) {
      const key = (userTopic(x.topic) ? x.topic + '#' + x.queue_id + ' lag' : 'retry#' + x.queue_id + ' in flight');
      if (!hist.has(key)) hist.set(key, new Array(n).fill(null));
      hist.get(key).push(userTopic(x.topic) ? x.lag : x.in_flight);
    }
    n++;
    for (const pts of hist.values()) while (pts.length < n) pts.push(null);
    if (n > maxPoints) {
      for (const pts of hist.values()) pts.shift();
      n--;
      start = new Date(new Date(start).getTime() + stepSec * 1000).toISOString();
    }
    clear(box);
    add(box, lineChart({ title: `Per queue, sampled every ${stepSec} s while this page is open`, start, stepSec, width: 1200,
      series: [...hist].map(([k, points]) => ({ name: k, points })) }));
  };
  sample(first);
  const timer = setInterval(async () => {
    if (!box.isConnected) { clearInterval(timer); return; }
    try {
      sample(await get('/v1/groups/' + enc(name)));
    } catch (err) {
      clearInterval(timer);
      if (!box.isConnected) return;
      ctx.showError(err);
      if (!(err instanceof ApiError)) console.error(err);
    }
  }, stepSec * 1000);
  return box;
}

// ---- messages ----

async function messages(view, params, ctx) {
  if (params[0]) return message(view, params[0], ctx);
  add(view, h('h1', {}, 'Messages'));
  const results = h('div', { id: 'results' });
  const show = (list, note) => {
    clear(results);
    add(results, [h('p', { class: 'note' }, note), table([{ label: 'id' }, { label: 'topic' }, { label: 'queue', num: true }, { label: 'offset', num: true },
      { label: 'tag' }, { label: 'keys' }, { label: 'born' }, { label: 'size', num: true }],
    list.map((m) => [link(m.msg_id, 'messages', m.msg_id), m.topic, m.queue_id, m.queue_offset, m.tag || '', (m.keys || []).join(', '), fmtTime(m.born_at), m.size]), 'No message found.')]);
  };
  const id = h('input', { name: 'id', placeholder: 'message id', size: 28 });
  const ktopic = h('input', { name: 'topic', placeholder: 'topic' });
  const key = h('input', { name: 'key', placeholder: 'key' });
  const rtopic = h('input', { name: 'topic', placeholder: 'topic' });
  const now = new Date();
  const iso = (d) => d.toISOString().slice(0, 19);
  const from = h('input', { type: 'datetime-local', name: 'from', step: 1, value: iso(new Date(now - 3600e3)) });
  const to = h('input', { type: 'datetime-local', name: 'to', step: 1, value: iso(new Date(now.getTime() + 60e3)) });
  add(view,
    h('form', { class: 'panel inline', id: 'by-id', onsubmit: act(ctx, async () => { location.hash = '#/messages/' + enc(id.value.trim()); }) },
      field('By id', id), h('button', { type: 'submit' }, 'Open')),
    h('form', { class: 'panel inline', id: 'by-key', onsubmit: act(ctx, async () => {
      const r = await get('/v1/topics/' + enc(ktopic.value) + '/messages' + q({ key: key.value, limit: 100 }));
      show(r.messages, `Messages of ${ktopic.value} with key ${key.value}, newest first.`);
    }) }, field('Topic', ktopic), field('Key', key), h('button', { type: 'submit' }, 'Find by key')),
    h('form', { class: 'panel inline', id: 'by-time', onsubmit: act(ctx, async () => {
      const lo = new Date(from.value + 'Z').getTime();
      const hi = new Date(to.value + 'Z').getTime();
      const { list, capped } = await byTime(rtopic.value, lo, hi, 200);
      show(list, `Messages of ${rtopic.value} born from ${fmtTime(new Date(lo).toISOString())} to ${fmtTime(new Date(hi).toISOString())}` +
        (capped ? ', the first 200 only.' : '.'));
    }) }, field('Topic', rtopic), field('From (UTC)', from), field('To (UTC)', to), h('button', { type: 'submit' }, 'Find by time')),
    results);
}

// byTime finds a topic's messages born in [lo, hi]: on each queue, a binary
// search by offset for the first born at lo or later, then reads on.
async function byTime(topicName, lo, hi, cap) {
  const t = await get('/v1/topics/' + enc(topicName));
  const read = (queue, offset, max) => get(`/v1/topics/${enc(topicName)}/queues/${queue}/messages` + q({ offset, max, wait: '0s' }));
  const out = [];
  let capped = false;
  for (const qu of t.queues) {
    let a = qu.min_offset;
    let b = qu.max_offset;
    while (a < b) {
      const mid = Math.floor((a + b) / 2);
      const r = await read(qu.queue_id, mid, 1);
      const m = r.messages[0];
      if (!m) { a = Math.max(mid + 1, r.next_offset || 0); continue; }
      if (new Date(m.born_at).getTime() < lo) a = m.queue_offset + 1;
      else b = mid;
    }
    let off = a;
    for (;;) {
      if (off >= qu.max_offset) break;
      const r = await read(qu.queue_id, off, 32);
      if (!r.messages.length) break;
      let done = false;
      for (const m of r.messages) {
        if (new Date(m.born_at).getTime() > hi) { done = true; break; }
        if (out.length >= cap) { capped = true; done = true; break; }
        out.push(m);
      }
      if (done || r.next_offset <= off) break;
      off = r.next_offset;
    }
  }
  out.sort((x, y) => new Date(x.born_at) - new Date(y.born_at));
  return { list: out, capped };
}

function bodyBytes(m) {
  if (m.encoding === 'base64') {
    const bin = atob(m.body);
    const b = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) b[i] = bin.charCodeAt(i);
    return b;
  }
  return new TextEncoder().encode(m.body);
}

function hexDump(bytes) {
  const lines = [];
  for (let i = 0; i < bytes.length; i += 16) {
    const row = bytes.slice(i, i + 16);
    const hex = [...row].map((x) => x.toString(16).padStart(2, '0')).join(' ');
    const asc = [...row].map((x) => (x >= 32 && x < 127 ? String.fromCharCode(x) : '.')).join('');
    lines.push(i.toString(16).padStart(8, '0') + '  ' + hex.padEnd(48) + ' ' + asc);
  }
  return lines.join('\n');
}

// bodyView shows a message body as JSON pretty-printed, text or hex.
export function bodyView(m) {
  const bytes = bodyBytes(m);
  let json = null;
  if (m.encoding !== 'base64') { try { json = JSON.stringify(JSON.parse(m.body), null, 2); } catch (e) { json = null; } }
  const modes = { json: () => json, text: () => (m.encoding === 'base64' ? '(binary: ' + bytes.length + ' bytes; see hex)' : m.body), hex: () => hexDump(bytes) };
  const pre = h('pre', { class: 'body' });
  const buttons = {};
  const pick = (k) => {
    clear(pre).appendChild(document.createTextNode(modes[k]()));
    for (const [n, b] of Object.entries(buttons)) b.classList.toggle('on', n === k);
  };
  for (const k of Object.keys(modes)) {
    if (k === 'json' && json === null) continue;
    buttons[k] = h('button', { type: 'button', 'data-mode': k, onclick: () => pick(k) }, k === 'json' ? 'JSON' : k);
  }
  pick(json !== null ? 'json' : m.encoding === 'base64' ? 'hex' : 'text');
  return h('div', {}, h('div', { class: 'tabs' }, Object.values(buttons)), pre);
}

async function message(view, id, ctx) {
  add(view, h('h1', {}, 'Message ', h('span', { class: 'mono' }, id)));
  const [m, tr] = await Promise.all([get('/v1/messages/' + enc(id)), optional(get('/v1/messages/' + enc(id) + '/trace'), 404)]);
  add(view, h('div', { class: 'row' },
    h('div', { class: 'panel' }, kv([['topic', link(m.topic, 'topics', m.topic)], ['queue / offset', m.queue_id + ' / ' + m.queue_offset],
      ['tag', m.tag || '–'], ['keys', (m.keys || []).join(', ') || '–'], ['content type', m.content_type], ['size', m.size + ' bytes'],
      ['born', fmtTime(m.born_at)], ['stored', fmtTime(m.stored_at)], m.deliver_at ? ['deliver at', fmtTime(m.deliver_at)] : null,
      m.sharding_key ? ['sharding key', m.sharding_key] : null, m.dedup_id ? ['dedup id', m.dedup_id] : null,
      ...Object.entries(m.properties || {}).map(([k, v]) => ['prop ' + k, v])])),
    h('div', { class: 'panel' }, h('h2', {}, 'Body'), bodyView(m))));
  add(view, h('h2', {}, 'Trace'));
  if (!tr) { add(view, h('p', { class: 'note' }, 'No trace.')); return; }
  add(view, h('div', { class: 'panel', id: 'trace' }, timeline({ stored: tr.stored_at, attempts: tr.attempts }),
    table([{ label: 'at' }, { label: 'group' }, { label: 'subscription' }, { label: 'attempt', num: true }, { label: 'outcome' },
      { label: 'status' }, { label: 'error' }, { label: 'latency', num: true }],
    tr.attempts.map((a) => [fmtTime(a.at), link(a.group, 'groups', a.group), a.subscription ? link(a.subscription, 'subscriptions', a.subscription) : '–',
      a.attempt, badge(a.outcome), a.status || '', a.error || '', a.latency_ms !== undefined ? a.latency_ms + ' ms' : '']), 'No delivery attempt yet.')));
}

// ---- subscriptions ----

async function subscriptions(view, params, ctx) {
  if (params[0]) return subscription(view, params[0], ctx);
  add(view, h('h1', {}, 'Subscriptions'));
  const list = await get('/v1/subscriptions?limit=1000');
  add(view, table([{ label: 'id' }, { label: 'group' }, { label: 'topic' }, { label: 'type' }, { label: 'state' }, { label: 'endpoint' }],
    list.subscriptions.map((x) => [link(x.id, 'subscriptions', x.id), link(x.group, 'groups', x.group), link(x.topic, 'topics', x.topic),
      x.type, badge(x.state), x.url || '–']), 'No subscriptions yet.'));
}

// recentAttempts reads the topic's newest messages and keeps this
// subscription's attempts from their traces: the API has no list of
// attempts by subscription, so this is a sample, and says so.
async function recentAttempts(sub, n) {
  const t = await get('/v1/topics/' + enc(sub.topic));
  const per = Math.max(1, Math.ceil(n / t.queues.length));
  const msgs = [];
  for (const qu of t.queues) {
    const from = Math.max(qu.min_offset, qu.max_offset - per);
    if (from >= qu.max_offset) continue;
    const r = await get(`/v1/topics/${enc(sub.topic)}/queues/${qu.queue_id}/messages` + q({ offset: from, max: per, wait: '0s' }));
    msgs.push(...r.messages);
  }
  const traces = await Promise.all(msgs.map((m) => optional(get('/v1/messages/' + enc(m.msg_id) + '/trace'), 404)));
  const out = [];
  traces.forEach((tr, i) => { if (tr) for (const a of tr.attempts) if (a.subscription === sub.id) out.push({ ...a, msg_id: msgs[i].msg_id }); });
  out.sort((a, b) => new Date(b.at) - new Date(a.at));
  return { attempts: out, messages: msgs.length };
}

async function subscription(view, id, ctx) {
  add(view, h('h1', {}, 'Subscription ', h('span', { class: 'mono' }, id)));
  const sub = await get('/v1/subscriptions/' + enc(id));
  const secretBox = h('div', { id: 'secret' });
  const base = '/v1/subscriptions/' + enc(id);
  add(view, h('div', { class: 'panel' },
    h('button', { id: 'pause', class: 'secondary', disabled: sub.state === 'paused', onclick: act(ctx, async () => { await api('POST', base + '/pause'); ctx.refresh(); }) }, 'Pause'), ' ',
    h('button', { id: 'resume', class: 'secondary', disabled: sub.state === 'active', onclick: act(ctx, async () => { await api('POST', base + '/resume'); ctx.refresh(); }) }, 'Resume'), ' ',
    sub.type === 'push' ? h('button', { id: 'rotate', class: 'secondary', onclick: act(ctx, async () => {
      const r = await api('POST', base + '/rotate-secret');
      clear(secretBox);
      add(secretBox, h('div', { class: 'secret' }, h('strong', {}, 'New signing secret, shown this once: '), h('code', { id: 'secret-value' }, r.secret),
        h('div', { class: 'note' }, 'The old secret keeps signing beside it for the overlap; copy this one now.')));
    }) }, 'Rotate secret') : null, secretBox));
  add(view, h('div', { class: 'row' }, h('div', { class: 'panel' }, kv([['group', link(sub.group, 'groups', sub.group)], ['topic', link(sub.topic, 'topics', sub.topic)],
    ['type', sub.type], ['state', [badge(sub.state), sub.state_reason ? ' ' + sub.state_reason : '']], ['url', sub.url || '–'], ['filter', sub.filter],
    ['ordered', String(sub.ordered)], ['max retries', sub.max_retries], ['retry delays', (sub.retry_delays || []).join(' ') || (sub.backoff ? `backoff ${sub.backoff.min}–${sub.backoff.max}` : 'default')],
    ['timeout', sub.timeout], ['max in flight', sub.max_in_flight], ['rate / s', sub.rate_per_second || 'no limit'], ['visibility', sub.visibility],
    ['created', fmtTime(sub.created_at)], ['updated', fmtTime(sub.updated_at)]])), editForm(sub, base, ctx)));

  const recent = await recentAttempts(sub, 40);
  // Outcomes as openapi.yaml's TraceAttempt lists them.
  // A 'dead' entry is the decision after the last attempt, not one more.
  const tries = recent.attempts.filter((a) => a.outcome !== 'dead');
  const failed = tries.filter((a) => !['delivered', 'acked'].includes(a.outcome)).length;
  add(view, h('h2', {}, 'Recent attempts'), h('p', { class: 'note', id: 'failure-rate' },
    `From the traces of the topic's ${recent.messages} newest messages: ${tries.length} attempts, ` +
    (tries.length ? `failure rate ${((100 * failed) / tries.length).toFixed(0)}%.` : 'no failure rate yet.')),
  table([{ label: 'at' }, { label: 'message' }, { label: 'attempt', num: true }, { label: 'outcome' }, { label: 'status' }, { label: 'error' }, { label: 'latency', num: true }],
    recent.attempts.slice(0, 25).map((a) => [fmtTime(a.at), link(a.msg_id, 'messages', a.msg_id), a.attempt, badge(a.outcome), a.status || '', a.error || '',
      a.latency_ms !== undefined ? a.latency_ms + ' ms' : '']), 'No attempts among them.'));
}

function editForm(sub, base, ctx) {
  const inputs = {
    url: h('input', { name: 'url', value: sub.url || '', size: 36, disabled: sub.type !== 'push' }),
    filter: h('input', { name: 'filter', value: sub.filter }),
    max_retries: h('input', { name: 'max_retries', type: 'number', min: 0, value: sub.max_retries }),
    timeout: h('input', { name: 'timeout', value: sub.timeout }),
    max_in_flight: h('input', { name: 'max_in_flight', type: 'number', min: 1, value: sub.max_in_flight }),
    rate_per_second: h('input', { name: 'rate_per_second', type: 'number', min: 0, step: 'any', value: sub.rate_per_second }),
  };
  const nums = new Set(['max_retries', 'max_in_flight', 'rate_per_second']);
  return h('form', { class: 'panel', id: 'edit-subscription', onsubmit: act(ctx, async () => {
    const body = {};
    for (const [k, el] of Object.entries(inputs)) {
      if (el.disabled) continue;
      const v = nums.has(k) ? Number(el.value) : el.value;
      if (String(v) !== String(sub[k] ?? '')) body[k] = v;
    }
    if (!Object.keys(body).length) throw new UserError('Nothing was changed.');
    await api('PATCH', base, { body });
    ctx.refresh();
  }) }, h('h2', {}, 'Edit'), Object.entries(inputs).map(([k, el]) => field(k.replace(/_/g, ' '), el)), h('p', {}, h('button', { type: 'submit' }, 'Save')));
}

// ---- dead letters ----

async function dlq(view, params, ctx) {
  if (params[0]) return dlqGroup(view, params[0], ctx);
  add(view, h('h1', {}, 'Dead letters'));
  const list = await get('/v1/groups?limit=1000');
  add(view, table([{ label: 'group' }, { label: 'dead letters', num: true }, { label: 'lag', num: true }],
    list.groups.map((g) => [link(g.name, 'dlq', g.name), fmtNum(g.dead_letters), fmtNum(g.lag)]), 'No groups yet.'));
}

async function dlqGroup(view, name, ctx) {
  add(view, h('h1', {}, 'Dead letters of ', h('span', { class: 'mono' }, name)));
  const base = '/v1/groups/' + enc(name) + '/dlq';
  const pages = [];
  let cursor = '';
  for (let i = 0; i < 8; i++) {
    const r = await get(base + q({ limit: 256, cursor }));
    pages.push(...r.messages);
    if (!r.next_cursor) break;
    cursor = r.next_cursor;
  }
  const boxes = new Map();
  const inspect = h('div', { id: 'inspect' });
  const redrive = async (body) => {
    const r = await api('POST', base + '/redrive', { body });
    ctx.refresh();
    return r;
  };
  const confirmName = h('input', { name: 'confirm', placeholder: 'type the group name' });
  add(view, h('div', { class: 'panel inline' },
    h('button', { id: 'redrive-selected', onclick: act(ctx, async () => {
      const ids = [...boxes].filter(([, b]) => b.checked).map(([id]) => id);
      if (!ids.length) throw new UserError('Select the dead letters to redrive.');
      await redrive({ msg_ids: ids });
    }) }, 'Redrive selected'), ' ',
    h('button', { id: 'redrive-all', class: 'secondary', onclick: act(ctx, async () => redrive({ all: true })) }, 'Redrive all'), ' ',
    h('form', { class: 'inline', id: 'purge', onsubmit: act(ctx, async () => {
      if (confirmName.value !== name) throw new UserError('To purge, type the group name exactly: ' + name);
      await api('DELETE', base);
      ctx.refresh();
    }) }, confirmName, h('button', { type: 'submit', class: 'danger' }, 'Purge all'))),
  h('p', { class: 'note' }, `${pages.length} dead letters${cursor ? ' (the first ' + pages.length + ')' : ''}.`));
  add(view, table([{ label: '' }, { label: 'message' }, { label: 'origin topic' }, { label: 'attempts', num: true }, { label: 'last error' }, { label: 'dead at' }, { label: '' }],
    pages.map((m) => {
      const box = h('input', { type: 'checkbox', 'data-id': m.msg_id });
      boxes.set(m.msg_id, box);
      return [box, h('a', { href: '#', class: 'mono', onclick: act(ctx, async () => { clear(inspect); add(inspect, dlqDetail(m)); }) }, m.msg_id),
        link(m.origin_topic, 'topics', m.origin_topic), m.attempts, m.last_error, fmtTime(m.dead_at),
        h('button', { class: 'secondary', 'data-redrive': m.msg_id, onclick: act(ctx, async () => redrive({ msg_ids: [m.msg_id] })) }, 'Redrive')];
    }), 'No dead letters.'), inspect);
}

function dlqDetail(m) {
  return h('div', { class: 'panel' }, h('h2', {}, 'Dead letter ', h('span', { class: 'mono' }, m.msg_id)),
    kv([['origin topic', m.origin_topic], ['attempts', m.attempts], ['last error', m.last_error], ['dead at', fmtTime(m.dead_at)],
      ['tag', m.tag || '–'], ['keys', (m.keys || []).join(', ') || '–'], ['trace', link('timeline', 'messages', m.msg_id)]]), bodyView(m));
}

// ---- cluster ----

async function cluster(view, _, ctx) {
  add(view, h('h1', {}, 'Cluster'));
  const [c, health, ready, replicas] = await Promise.all([optional(get('/v1/cluster'), 404), optional(get('/healthz'), 503),
    api('GET', '/readyz').then(() => 'ready', (e) => (e instanceof ApiError ? 'not ready: ' + e.message : Promise.reject(e))),
    optional(get('/v1/replicas'), 403, 404)]);
  add(view, h('div', { class: 'cards' }, card(health ? health.status : 'failing', 'this process: health'), card(ready, 'this process: readiness'),
    health && health.version ? card(health.version, 'version') : null));
  add(view, h('h2', {}, 'Brokers'));
  if (!c) add(view, h('p', { class: 'note' }, 'No name server answers here (a standalone broker): this broker is the whole bus.'));
  else {
    add(view, table([{ label: 'broker' }, { label: 'cluster' }, { label: 'address' }, { label: 'version' }, { label: 'topics', num: true }, { label: 'last heartbeat' }],
      c.brokers.map((b) => [b.name, b.cluster, b.addr, b.version, b.topics, fmtTime(b.last_heartbeat)]), 'No live broker.'));
    if (c.gone && c.gone.length) add(view, h('p', { class: 'note' }, 'Gone lately: ' + c.gone.join(', ')));
  }
  add(view, h('h2', {}, 'Replica group'));
  if (!replicas) add(view, h('p', { class: 'note' }, 'Not a member of a replica group (or the token is not admin).'));
  else {
    add(view, kv([['broker', replicas.broker], ['leader', replicas.leader || '–']]),
      table([{ label: 'member' }, { label: 'address' }, { label: 'role' }, { label: 'last index', num: true }, { label: 'applied index', num: true }],
        replicas.members.map((m) => [m.id, m.addr, badge(m.role), m.last_index, m.applied_index])));
  }
}

export const pages = { overview, topics, groups, messages, subscriptions, dlq, cluster };
