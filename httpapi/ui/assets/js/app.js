// The dashboard's shell: the hash router, the login box, the error banner.
import { h, clear, add } from './dom.js';
import { ApiError, token, setToken, whenUnauthorized } from './api.js';
import { pages } from './pages.js';

const main = document.getElementById('main');
const banner = document.getElementById('error');
const login = document.getElementById('login');

export function showError(err) {
  clear(banner);
  if (!err) { banner.hidden = true; return; }
  const msg = err instanceof ApiError
    ? `${err.status}${err.code ? ' ' + err.code : ''}: ${err.message}`
    : String(err && err.message ? err.message : err);
  add(banner, msg);
  banner.hidden = false;
}

whenUnauthorized(() => {
  if (!login.open) {
    document.getElementById('login-error').hidden = token() === '';
    clear(document.getElementById('login-error'));
    if (token()) add(document.getElementById('login-error'), 'The broker refused this token; give another.');
    login.showModal();
  }
});

document.getElementById('login-form').addEventListener('submit', () => {
  setToken(document.getElementById('login-token').value.trim());
  document.getElementById('login-token').value = '';
  renderWho();
  route();
});

function renderWho() {
  const who = clear(document.getElementById('who'));
  if (token()) {
    add(who, ['signed in with a token', h('button', { class: 'secondary', id: 'signout', onclick: () => { setToken(''); renderWho(); route(); } }, 'Sign out')]);
  }
}

let generation = 0;

// route renders the page the hash names; an older render still running
// is left to finish into a detached element.
async function route() {
  const parts = (location.hash.replace(/^#\/?/, '') || 'overview').split('/').map(decodeURIComponent);
  const name = parts[0];
  const page = pages[name] || pages.overview;
  for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.dataset.page === name);
  const gen = ++generation;
  const view = h('div', { id: 'page-' + name, 'data-loading': 'true' });
  clear(main).appendChild(view);
  showError(null);
  try {
    await page(view, parts.slice(1), { showError, refresh: route });
  } catch (err) {
    if (gen === generation) {
      showError(err);
      // A fault of the page itself is a console error, which the browser
      // tests fail on; a refusal of the API is shown and is not.
      if (!(err instanceof ApiError)) console.error(err);
    }
  } finally {
    view.setAttribute('data-loading', 'false');
    // Which render the page shows: the browser tests wait on it.
    if (gen === generation) document.body.dataset.rendered = String(gen);
  }
}

window.addEventListener('hashchange', route);
renderWho();
route();
