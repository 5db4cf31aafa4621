// DOM helpers. Every string from the API goes into the page through h (text
// nodes and setAttribute), never as markup: see the package doc.

// h makes an element: h('a', {href: '#/x', onclick: fn}, 'text', child, [more]).
export function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  add(el, kids);
  return el;
}

// s makes an SVG element.
export function s(tag, attrs, ...kids) {
  const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
  setAttrs(el, attrs);
  add(el, kids);
  return el;
}

function setAttrs(el, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'value') el.value = v;
    else if (k === 'checked') el.checked = !!v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
}

// add appends children: nodes as they are, anything else as text.
export function add(el, ...kids) {
  for (const k of [kids].flat(Infinity)) {
    if (k === undefined || k === null || k === false) continue;
    el.appendChild(k instanceof Node ? k : document.createTextNode(String(k)));
  }
  return el;
}

// clear empties an element.
export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

// link is an in-app link to a route made of path parts, each encoded.
export function link(text, ...parts) {
  return h('a', { href: '#/' + parts.map(encodeURIComponent).join('/') }, text);
}

// table makes a table: cols is [{label, num?}], rows arrays of cells.
export function table(cols, rows, empty = 'None.') {
  if (!rows.length) return h('p', { class: 'note' }, empty);
  return h('table', {},
    h('thead', {}, h('tr', {}, cols.map((c) => h('th', { class: c.num ? 'num' : null }, c.label)))),
    h('tbody', {}, rows.map((r) => h('tr', {}, r.map((cell, i) => h('td', { class: cols[i] && cols[i].num ? 'num' : null }, cell))))));
}

// kv makes a two-column table of [key, value] pairs.
export function kv(pairs) {
  return h('table', { class: 'kv' }, h('tbody', {}, pairs.filter((p) => p).map(([k, v]) => h('tr', {}, h('th', {}, k), h('td', {}, v)))));
}

export function badge(text) {
  return h('span', { class: 'badge ' + String(text).replace(/[^a-z-]/g, '') }, text);
}

export function fmtNum(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return '–';
  if (Math.abs(n) >= 1e6) return (n / 1e6).toFixed(1) + 'M';
  if (Math.abs(n) >= 1e4) return (n / 1e3).toFixed(1) + 'k';
  return Number.isInteger(n) ? String(n) : n.toFixed(2);
}

export function fmtBytes(n) {
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + ' ' + u[i];
}

export function fmtTime(iso) {
  if (!iso) return '–';
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toISOString().replace('T', ' ').replace(/\.\d+Z$|Z$/, ' UTC');
}
