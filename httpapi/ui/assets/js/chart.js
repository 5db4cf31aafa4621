// Small SVG charts: lines over time (the /v1/stats series) and bars.
import { h, s, fmtNum } from './dom.js';

export const palette = ['#2563eb', '#16a34a', '#dc2626', '#d97706', '#7c3aed', '#0891b2', '#db2777', '#4b5563'];

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function hhmm(d) {
  return d.toISOString().slice(11, 16);
}

// lineChart draws series [{name, points}] of one value a step from start
// (ISO time) every stepSec seconds; null points are gaps.
export function lineChart({ series, start, stepSec, title, unit = '', width = 640, height = 190 }) {
  const n = Math.max(0, ...series.map((x) => x.points.length));
  const pad = { l: 48, r: 10, t: 10, b: 22 };
  const w = width - pad.l - pad.r;
  const hgt = height - pad.t - pad.b;
  let max = 0;
  for (const x of series) for (const v of x.points) if (v !== null && v > max) max = v;
  max = niceMax(max);
  const X = (i) => pad.l + (n <= 1 ? w : (i * w) / (n - 1));
  const Y = (v) => pad.t + hgt - (v / max) * hgt;
  const svg = s('svg', { class: 'chart', viewBox: `0 0 ${width} ${height}`, width, height, role: 'img', 'aria-label': title || 'chart' });
  for (let k = 0; k <= 4; k++) {
    const v = (max * k) / 4;
    svg.appendChild(s('line', { class: 'grid', x1: pad.l, x2: width - pad.r, y1: Y(v), y2: Y(v) }));
    svg.appendChild(s('text', { x: pad.l - 6, y: Y(v) + 4, 'text-anchor': 'end' }, fmtNum(v)));
  }
  svg.appendChild(s('line', { class: 'axis', x1: pad.l, x2: width - pad.r, y1: pad.t + hgt, y2: pad.t + hgt }));
  if (start && n > 0) {
    const t0 = new Date(start).getTime();
    const ticks = Math.min(6, n);
    for (let k = 0; k < ticks; k++) {
      const i = ticks === 1 ? n - 1 : Math.round((k * (n - 1)) / (ticks - 1));
      svg.appendChild(s('text', { x: X(i), y: height - 6, 'text-anchor': k === ticks - 1 ? 'end' : k === 0 ? 'start' : 'middle' },
        hhmm(new Date(t0 + i * stepSec * 1000))));
    }
  }
  series.forEach((x, si) => {
    const color = x.color || palette[si % palette.length];
    let d = '';
    let pen = false;
    x.points.forEach((v, i) => {
      if (v === null || v === undefined) { pen = false; return; }
      d += (pen ? 'L' : 'M') + X(i).toFixed(1) + ' ' + Y(v).toFixed(1) + ' ';
      pen = true;
    });
    if (d) svg.appendChild(s('path', { d, fill: 'none', stroke: color, 'stroke-width': 1.8, 'data-series': x.name }));
    // A lone point between gaps is a dot, or it would not show.
    x.points.forEach((v, i) => {
      const prev = i > 0 ? x.points[i - 1] : null;
      const next = i + 1 < x.points.length ? x.points[i + 1] : null;
      if (v !== null && v !== undefined && (prev === null || prev === undefined) && (next === null || next === undefined)) {
        svg.appendChild(s('circle', { cx: X(i), cy: Y(v), r: 2.5, fill: color }));
      }
    });
  });
  if (n === 0) svg.appendChild(s('text', { x: width / 2, y: height / 2, 'text-anchor': 'middle' }, 'no samples yet (one every ' + stepSec + ' s)'));
  const legend = h('div', { class: 'legend' }, series.map((x, si) => h('span', {},
    s('svg', { width: 10, height: 10 }, s('rect', { width: 10, height: 10, rx: 2, fill: x.color || palette[si % palette.length] })), ' ', x.name + (unit ? ' (' + unit + ')' : ''))));
  return h('div', { class: 'chart-box' }, title ? h('div', { class: 'note' }, title) : null, svg, legend);
}

// barChart draws bars [{label, value}].
export function barChart({ bars, title, width = 640, height = 170 }) {
  const pad = { l: 48, r: 10, t: 10, b: 34 };
  const w = width - pad.l - pad.r;
  const hgt = height - pad.t - pad.b;
  const max = niceMax(Math.max(0, ...bars.map((b) => b.value)));
  const bw = bars.length ? w / bars.length : w;
  const svg = s('svg', { class: 'chart', viewBox: `0 0 ${width} ${height}`, width, height, role: 'img', 'aria-label': title || 'bars' });
  for (let k = 0; k <= 4; k++) {
    const v = (max * k) / 4;
    const y = pad.t + hgt - (v / max) * hgt;
    svg.appendChild(s('line', { class: 'grid', x1: pad.l, x2: width - pad.r, y1: y, y2: y }));
    svg.appendChild(s('text', { x: pad.l - 6, y: y + 4, 'text-anchor': 'end' }, fmtNum(v)));
  }
  bars.forEach((b, i) => {
    const bh = (b.value / max) * hgt;
    const x = pad.l + i * bw + bw * 0.15;
    svg.appendChild(s('rect', { x, y: pad.t + hgt - bh, width: bw * 0.7, height: Math.max(bh, 0), fill: b.color || palette[0] },
      s('title', {}, b.label + ': ' + b.value)));
    svg.appendChild(s('text', { x: x + bw * 0.35, y: height - 18, 'text-anchor': 'middle' }, b.label.length > 14 ? b.label.slice(0, 13) + '…' : b.label));
    svg.appendChild(s('text', { x: x + bw * 0.35, y: height - 5, 'text-anchor': 'middle' }, fmtNum(b.value)));
  });
  return h('div', { class: 'chart-box' }, title ? h('div', { class: 'note' }, title) : null, svg);
}

// timeline draws a message's trace: stored, then each attempt by group.
export function timeline({ stored, attempts, width = 720 }) {
  const groups = [...new Set(attempts.map((a) => a.group))];
  const rowH = 26;
  const height = 30 + (groups.length + 1) * rowH;
  const pad = { l: 120, r: 20 };
  const t0 = new Date(stored).getTime();
  const times = attempts.map((a) => new Date(a.at).getTime());
  const t1 = Math.max(t0 + 1, ...times);
  const X = (t) => pad.l + ((t - t0) / (t1 - t0)) * (width - pad.l - pad.r);
  const svg = s('svg', { class: 'chart', viewBox: `0 0 ${width} ${height}`, width, height, role: 'img', 'aria-label': 'trace timeline' });
  const colors = { delivered: '#16a34a', acked: '#16a34a', retry: '#d97706', nacked: '#d97706', expired: '#d97706', dead: '#dc2626', gone: '#dc2626' };
  svg.appendChild(s('text', { x: 6, y: 20 }, 'stored'));
  svg.appendChild(s('circle', { cx: X(t0), cy: 16, r: 5, fill: '#2563eb' }, s('title', {}, 'stored ' + stored)));
  groups.forEach((g, gi) => {
    const y = 16 + (gi + 1) * rowH;
    svg.appendChild(s('text', { x: 6, y: y + 4 }, g.length > 16 ? g.slice(0, 15) + '…' : g));
    svg.appendChild(s('line', { class: 'grid', x1: pad.l, x2: width - pad.r, y1: y, y2: y }));
    attempts.filter((a) => a.group === g).forEach((a) => {
      svg.appendChild(s('circle', { cx: X(new Date(a.at).getTime()), cy: y, r: 5, fill: colors[a.outcome] || '#4b5563' },
        s('title', {}, `attempt ${a.attempt} ${a.outcome} ${a.at}${a.error ? ' ' + a.error : ''}`)));
    });
  });
  svg.appendChild(s('text', { x: width - pad.r, y: height - 4, 'text-anchor': 'end' }, '+' + ((t1 - t0) / 1000).toFixed(3) + ' s'));
  return svg;
}
