// The public API, with the token from this tab's session storage.

const tokenKey = 'postbus.token';

export function token() { return sessionStorage.getItem(tokenKey) || ''; }
export function setToken(t) {
  if (t) sessionStorage.setItem(tokenKey, t);
  else sessionStorage.removeItem(tokenKey);
}

// ApiError is a refusal: status and the RFC 9457 problem's fields.
export class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || ('HTTP ' + status));
    this.status = status;
    this.code = problem && problem.code;
    this.problem = problem;
  }
}

let onUnauthorized = () => {};
export function whenUnauthorized(fn) { onUnauthorized = fn; }

// api calls path; body, unless a string, is sent as JSON. It answers the
// decoded JSON (null for 204) and throws ApiError on a refusal.
export async function api(method, path, { body, headers } = {}) {
  const hs = Object.assign({}, headers || {});
  const t = token();
  if (t) hs['Authorization'] = 'Bearer ' + t;
  let b = body;
  if (body !== undefined && typeof body !== 'string') {
    b = JSON.stringify(body);
    hs['Content-Type'] = 'application/json';
  }
  const r = await fetch(path, { method, headers: hs, body: b, cache: 'no-store' });
  if (r.status === 204) return null;
  const ct = r.headers.get('Content-Type') || '';
  let data = null;
  if (ct.includes('json')) {
    try { data = await r.json(); } catch (e) { data = null; }
  } else {
    data = await r.text();
  }
  if (!r.ok) {
    const err = new ApiError(r.status, typeof data === 'object' ? data : { title: r.statusText, detail: String(data).slice(0, 300) });
    if (r.status === 401) onUnauthorized(err);
    throw err;
  }
  return data;
}

export const get = (p) => api('GET', p);

// q builds a query string from an object, leaving out empty values.
export function q(params) {
  const u = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') u.set(k, String(v));
  const s = u.toString();
  return s ? '?' + s : '';
}

export const enc = encodeURIComponent;
