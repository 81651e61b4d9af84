// The glitchlab web control plane: a single page with hash routes (#/board, #/task/ID, #/tree,
// #/ledger, #/ops) over the JSON API and its Server-Sent Events streams. Plain JavaScript, no
// build step, no third-party code. Every element is built with the DOM (never innerHTML), so a
// task title or command output cannot inject markup.
'use strict';

const STATUSES = ['queued', 'blocked', 'running', 'awaiting_approval', 'failed', 'dead_letter', 'done', 'cancelled'];
const TERMINAL = ['done', 'failed', 'cancelled', 'dead_letter'];
const SERVICE_TASK = '00000000-0000-0000-0000-000000000000';

const state = { session: null, csrf: null, view: null, refresh: null, taskAbort: null };

// ---- small helpers ---------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const svg = ['svg', 'rect', 'text', 'line', 'g', 'title'].includes(tag);
  const el = svg ? document.createElementNS('http://www.w3.org/2000/svg', tag) : document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else if (key === 'class') el.setAttribute('class', value);
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const $ = (id) => document.getElementById(id);
// Replaces an element's children, leaving out the null / undefined / false of conditional parts.
function fill(el, ...children) {
  el.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false)
    .map((c) => (c instanceof Node ? c : document.createTextNode(String(c)))));
  labelTables(el);
}
// On a phone a table's rows become stacked cards (app.css): each cell carries its column's name
// (`data-label`) and the header row is marked so the narrow layout can hide it.
function labelTables(el) {
  for (const table of el.querySelectorAll('table')) {
    const head = table.querySelector('tr');
    if (!head || [...head.children].some((c) => c.tagName !== 'TH')) continue;
    head.classList.add('head');
    const names = [...head.children].map((c) => c.textContent.trim());
    for (const row of table.querySelectorAll('tr:not(.head)')) {
      [...row.children].forEach((cell, i) => { if (names[i]) cell.setAttribute('data-label', names[i]); });
    }
  }
}
const short = (id) => (id || '').slice(-8); // a UUID v7 starts with its time: the end tells tasks apart
// Money is shown in one unit everywhere on the page: tokens with decimals. The JSON carries
// integer micro-tokens (docs/api.md), so the conversion is exact: 1500000 → "1.50",
// 1 → "0.000001", 2500000000 → "2,500.00" (at least two decimals, at most six).
function tokens(micro) {
  if (micro === undefined || micro === null || !Number.isFinite(Number(micro))) return '–';
  const n = Math.round(Number(micro));
  const abs = Math.abs(n);
  const whole = Math.floor(abs / 1e6).toLocaleString('en-US');
  const frac = String(abs % 1e6).padStart(6, '0').replace(/0+$/, '').padEnd(2, '0');
  return `${n < 0 ? '-' : ''}${whole}.${frac}`;
}
// How long ago: "12 s", "5 min", "3 h", "2 d".
function age(ts) {
  const ms = Date.now() - new Date(ts).getTime();
  if (!ts || !Number.isFinite(ms)) return '–';
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h`;
  return `${Math.floor(s / 86400)} d`;
}
// Terminal escapes (colours, cursor moves, titles) and other control characters a command may
// print: stripped, so the live output shows the text alone.
const ANSI = /\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]|[\x00-\x08\x0b\x0c\x0e-\x1a\x1c-\x1f\x7f]|\x1b/g;
const plainText = (text) => String(text || '').replace(/\r\n/g, '\n').replace(/\r/g, '\n').replace(ANSI, '');
// Roles in order: what the session's token may do decides which controls the page offers.
const ROLES = ['viewer', 'submitter', 'approver', 'operator', 'admin'];
const may = (role) => ROLES.indexOf((state.session && state.session.role) || 'admin') >= ROLES.indexOf(role);
// How an engine run went, as the service's metrics label it (EngineRun::outcome).
function runOutcome(run) {
  if (run.status === 'interrupted') return 'interrupted';
  if (run.status === 'running') return 'running';
  if (run.timed_out) return 'timed_out';
  return run.exit_code === 0 ? 'ok' : 'failed';
}
const when = (ts) => ts ? new Date(ts).toLocaleString() : '–';
const time = (ts) => ts ? new Date(ts).toLocaleTimeString() : '';
const badge = (text) => h('span', { class: 'badge ' + String(text || '') }, String(text || '–').replace(/_/g, ' '));

// The banner: an error stays until the next navigation or success; a success note fades.
function flash(message, info) {
  const el = $('flash');
  el.textContent = message;
  el.className = info ? 'flash info' : 'flash';
  el.setAttribute('role', info ? 'status' : 'alert');
  el.hidden = false;
  clearTimeout(flash.timer);
  if (info) flash.timer = setTimeout(clearFlash, 4000);
}
function clearFlash() {
  clearTimeout(flash.timer);
  const el = $('flash');
  el.hidden = true;
  el.textContent = '';
}

class ApiError extends Error {
  constructor(status, code, message) { super(`${status} ${code || ''}: ${message || ''}`); this.status = status; this.code = code; }
}

// Every API call: same-origin cookie, the CSRF token on changes, JSON in and out.
async function api(method, path, body) {
  const headers = { accept: 'application/json' };
  if (method !== 'GET' && state.csrf) headers['x-csrf-token'] = state.csrf;
  const options = { method, headers, credentials: 'same-origin' };
  if (body !== undefined) {
    headers['content-type'] = 'application/json';
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
  if (!response.ok) {
    const error = (data && data.error) || {};
    if (response.status === 401 && path !== '/ui/login' && path !== '/ui/session') showLogin();
    throw new ApiError(response.status, error.code, error.message || text);
  }
  return data;
}

// A Server-Sent Events stream read with fetch (every event name arrives, and the session cookie
// goes along); calls onEvent(kind, data, id) for each message, resolves when the stream ends.
async function stream(path, onEvent, signal) {
  const response = await fetch(path, { headers: { accept: 'text/event-stream' }, credentials: 'same-origin', signal });
  if (!response.ok || !response.body) throw new ApiError(response.status, null, 'stream refused');
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let at;
    while ((at = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const block = buffer.slice(0, at);
      buffer = buffer.slice(at).replace(/^\r?\n\r?\n/, '');
      let kind = 'message', data = '', id = null;
      for (const line of block.split(/\r?\n/)) {
        if (line.startsWith(':')) continue;
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
        if (field === 'event') kind = text;
        else if (field === 'data') data += (data ? '\n' : '') + text;
        else if (field === 'id') id = text;
      }
      if (!data && kind === 'message') continue;
      let parsed = data;
      try { parsed = JSON.parse(data); } catch (_) { /* plain text */ }
      onEvent(kind, parsed, id);
    }
  }
}

// ---- session -----------------------------------------------------------------------------------

function showLogin() {
  state.session = null;
  state.csrf = null;
  $('login').hidden = false;
  $('view').hidden = true;
  $('nav').hidden = true;
  $('logout').hidden = true;
  $('who').textContent = '';
  setTimeout(() => $('token').focus(), 0);
}

function loggedIn(session) {
  state.session = session;
  state.csrf = session.csrf || null;
  $('login').hidden = true;
  $('view').hidden = false;
  $('nav').hidden = false;
  $('logout').hidden = !session.auth_required;
  $('who').textContent = session.auth_required ? `${session.name} (${session.role})` : 'no tokens (auth off)';
  startLive();
  route();
}

async function logIn(event) {
  event.preventDefault();
  const input = $('token');
  $('login-error').hidden = true;
  try {
    const session = await api('POST', '/ui/login', { token: input.value });
    input.value = '';
    if (!location.hash || location.hash === '#/login') location.hash = '#/board';
    loggedIn(session);
  } catch (error) {
    $('login-error').textContent = error.status === 401 ? 'Unknown, revoked or expired token.' : error.message;
    $('login-error').hidden = false;
  }
}

async function logOut() {
  try { await api('POST', '/ui/logout'); } catch (_) { /* the cookie is cleared either way */ }
  stopLive();
  showLogin();
}

// ---- the live service stream: refreshes whatever view is open ------------------------------------

let liveAbort = null;
function stopLive() {
  if (liveAbort) liveAbort.abort();
  liveAbort = null;
  setLive(false);
}
function setLive(on) {
  $('live').className = on ? 'live on' : 'live off';
  $('live').textContent = on ? 'live' : 'offline';
}
function startLive() {
  if (liveAbort) return;
  const controller = new AbortController();
  liveAbort = controller;
  const run = async () => {
    while (liveAbort === controller) {
      try {
        setLive(true);
        await stream('/v1/events/stream', (kind, event) => onServiceEvent(kind, event), controller.signal);
      } catch (_) { /* reconnect below */ }
      setLive(false);
      if (liveAbort !== controller) return;
      await new Promise((resolve) => setTimeout(resolve, 2000));
      refreshSoon();
    }
  };
  run();
}

function onServiceEvent(kind, event) {
  if (!state.refresh) return;
  if (state.view === 'task') return; // the task page has its own stream
  refreshSoon();
}

let refreshTimer = null;
function refreshSoon() {
  if (refreshTimer) return; // at most one refresh per 300 ms, however many events arrive
  refreshTimer = setTimeout(() => {
    refreshTimer = null;
    if (state.refresh) state.refresh().catch(showError);
  }, 300);
}

function showError(error) {
  if (error && error.status === 401) return;
  flash(String(error && error.message || error));
}

// ---- routing ---------------------------------------------------------------------------------------

function route() {
  if (!state.session) return;
  if (state.taskAbort) { state.taskAbort.abort(); state.taskAbort = null; }
  clearFlash();
  const hash = location.hash || '#/board';
  const [path, query] = hash.split('?');
  const [, view, arg] = path.match(/^#\/([a-z]+)\/?(.*)$/) || [null, 'board', ''];
  for (const link of document.querySelectorAll('#nav a')) {
    link.classList.toggle('active', link.dataset.view === view || (view === 'task' && link.dataset.view === 'board'));
  }
  const root = $('view');
  fill(root);
  state.view = view;
  state.refresh = null;
  const views = { board: boardView, task: taskView, tree: treeView, ledger: ledgerView, ops: opsView, fleet: fleetView };
  (views[view] || boardView)(root, decodeURIComponent(arg || ''), new URLSearchParams(query || '')).catch(showError);
}

// ---- the board ------------------------------------------------------------------------------------

// The board's filters live in the URL (#/board?q=…&status=…&repo=…&kind=…): a filtered board
// can be bookmarked, shared and reloaded.
const FILTERS = ['q', 'status', 'repo', 'kind'];
// Cards whose cost the board looks up (one runs request each): the newest ones shown.
const BOARD_COSTS_MAX = 60;
// Cost lookups in flight at once.
const BOARD_COST_CONCURRENCY = 4;
// How long an unfinished task's looked-up cost is reused before the board asks again.
const BOARD_COST_TTL_MS = 10000;
// Costs looked up: id → { cost (micro-tokens), at, ended }; an ended task's never changes again.
const costCache = new Map();
// The task's known cost, if it is fresh enough to show without asking again.
function knownCost(task) {
  const known = costCache.get(task.id);
  return known && (known.ended || Date.now() - known.at < BOARD_COST_TTL_MS) ? known.cost : undefined;
}

// A labelled control: the label is visible, so every input has an accessible name.
const labelled = (text, control) => h('label', { class: 'field' }, h('span', {}, text), control);

async function boardView(root, _arg, params) {
  const filters = Object.fromEntries(FILTERS.map((k) => [k, params.get(k) || '']));
  const q = h('input', { id: 'filter-q', type: 'search', placeholder: 'title, id or text', value: filters.q });
  const status = h('select', { id: 'filter-status' }, h('option', { value: '' }, 'any'),
    STATUSES.map((x) => h('option', { value: x, selected: x === filters.status }, x.replace(/_/g, ' '))));
  const repo = h('input', { id: 'filter-repo', placeholder: 'repository path', value: filters.repo });
  const kind = h('input', { id: 'filter-kind', placeholder: 'kind', value: filters.kind });
  let tasks = [];
  const board = h('div', { class: 'board', id: 'board' });
  const count = h('span', { class: 'muted', id: 'board-count', role: 'status' });
  // Writes the filters into the URL without a navigation (the inputs keep their focus).
  const apply = (refetch) => {
    filters.q = q.value.trim(); filters.status = status.value;
    filters.repo = repo.value.trim(); filters.kind = kind.value.trim();
    const query = new URLSearchParams(Object.entries(filters).filter(([, v]) => v));
    history.replaceState(null, '', '#/board' + (String(query) ? '?' + query : ''));
    if (refetch) refresh().catch(showError); else draw();
  };
  q.addEventListener('input', () => apply(false));
  status.addEventListener('change', () => apply(false));
  repo.addEventListener('change', () => apply(true));
  kind.addEventListener('change', () => apply(true));
  root.append(h('h1', { class: 'sr-only' }, 'Tasks'), submitForm(),
    h('form', { class: 'filters', role: 'search', onsubmit: (e) => { e.preventDefault(); apply(true); } },
      labelled('Search', q), labelled('Status', status), labelled('Repository', repo), labelled('Kind', kind),
      h('button', { type: 'submit' }, 'Filter'), count), board);
  const draw = () => {
    const needle = filters.q.toLowerCase();
    const shown = tasks.filter((t) => !needle || [t.title, t.id, t.repo, t.description, t.kind]
      .some((x) => String(x || '').toLowerCase().includes(needle)));
    count.textContent = `${shown.length} shown (newest 500)`;
    const columns = filters.status ? [filters.status] : STATUSES;
    fill(board, ...columns.map((st) => {
      const mine = shown.filter((task) => task.status === st);
      return h('section', { class: 'column', 'data-status': st, 'aria-label': st.replace(/_/g, ' ') },
        h('h2', {}, h('span', {}, st.replace(/_/g, ' ')), h('span', {}, mine.length)),
        mine.map(card));
    }));
    boardCosts(shown.slice(0, BOARD_COSTS_MAX)).catch(() => { /* costs are a nicety */ });
  };
  const refresh = async () => {
    const query = new URLSearchParams({ limit: '500' });
    if (filters.repo) query.set('repo', filters.repo);
    if (filters.kind) query.set('kind', filters.kind);
    const page = await api('GET', '/v1/tasks?' + query);
    tasks = page.tasks || [];
    draw();
  };
  state.refresh = refresh;
  await refresh();
}

// Fills the cost of each card shown (the sum of its runs' charges), a few lookups at a time.
async function boardCosts(tasks) {
  const queue = tasks.slice();
  const worker = async () => {
    for (let task = queue.shift(); task; task = queue.shift()) {
      if (knownCost(task) !== undefined) continue; // drawn with the card already
      const data = await api('GET', `/v1/tasks/${task.id}/runs`).catch(() => null);
      if (!data) continue;
      const cost = (data.runs || []).reduce((sum, run) => sum + (run.cost || 0), 0);
      costCache.set(task.id, { cost, at: Date.now(), ended: TERMINAL.includes(task.status) });
      for (const el of document.querySelectorAll(`a.card[data-id='${task.id}'] .cost`)) el.textContent = `${tokens(cost)} tokens`;
    }
  };
  await Promise.all(Array.from({ length: BOARD_COST_CONCURRENCY }, worker));
}

// Where a task waits, when it does: its place in the merge queue, a hold, a paused fleet.
function waitingNotes(task) {
  const merge = task.merge || {};
  return [
    merge.place ? `#${merge.place} in the merge queue` : null,
    merge.held ? `held: ${merge.held}` : null,
    task.waiting_for ? `waiting for ${task.waiting_for}` : null,
  ].filter(Boolean);
}

function card(task) {
  const meta = [];
  if (task.status === 'running') meta.push(`${task.stage || 'starting'} · attempt ${task.attempts || 0}`);
  else if (task.stage) meta.push(task.stage);
  if (task.kind) meta.push(task.kind);
  meta.push(short(task.id));
  const repoName = String(task.repo || '').replace(/\/+$/, '').split('/').pop();
  return h('a', { class: 'card s-' + task.status, href: '#/task/' + task.id, 'data-id': task.id, 'data-status': task.status },
    h('div', { class: 'title' }, task.title),
    h('div', { class: 'meta' }, meta.join(' · ')),
    h('div', { class: 'meta' }, h('span', { class: 'repo', title: task.repo }, repoName), ' · ',
      h('span', { class: 'age', title: when(task.created_at) }, age(task.created_at) + ' ago'), ' · ',
      h('span', { class: 'cost' }, knownCost(task) === undefined ? '… tokens' : `${tokens(knownCost(task))} tokens`)),
    waitingNotes(task).map((note) => h('div', { class: 'meta warning' }, note)),
    task.source ? h('div', { class: 'meta source', title: task.source.url },
      `from ${task.source.repo}#${task.source.number}`) : null,
    task.error ? h('div', { class: 'meta error' }, task.error.code) : null);
}

// The submit form, for a token that may submit: a task from its title, description,
// repository, verify command and review policy (POST /v1/tasks), then its page.
function submitForm() {
  if (!may('submitter')) return null;
  const field = (name, text, control) => labelled(text, Object.assign(control, { name, id: 'new-' + name }));
  const form = h('form', { id: 'submit-form', class: 'submit-form' },
    field('title', 'Title', h('input', { required: true, maxlength: 200 })),
    field('repo', 'Repository (absolute path or git URL)', h('input', { required: true })),
    field('base_branch', 'Base branch', h('input', { value: 'main', required: true })),
    field('verify', 'Verify command', h('input', { required: true, class: 'mono' })),
    field('review_policy', 'Review', h('select', {}, h('option', { value: 'auto' }, 'deliver when verify passes'),
      h('option', { value: 'manual' }, 'wait for approval'))),
    field('description', 'Description', h('textarea', { rows: 3 })),
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary', id: 'submit-task' }, 'Submit')));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const data = Object.fromEntries(new FormData(form).entries());
    try {
      const task = await api('POST', '/v1/tasks', data);
      clearFlash();
      location.hash = '#/task/' + task.id;
    } catch (error) { showError(error); }
  });
  return h('details', { class: 'panel', id: 'new-task' }, h('summary', {}, 'Submit a task'), form);
}

// ---- a task --------------------------------------------------------------------------------------

// Live-output chunks kept on the page (older ones are dropped first).
const OUTPUT_CHUNKS_MAX = 2000;
// A diff with more lines than this starts with its files folded.
const DIFF_OPEN_LINES_MAX = 400;

async function taskView(root, id) {
  const head = h('div', { class: 'panel', id: 'task-head' }, 'Loading…');
  const stepper = h('ol', { class: 'stepper', id: 'stepper', 'aria-label': 'stages' });
  const actions = h('div', { class: 'actions', id: 'task-actions' });
  const timeline = h('ul', { class: 'timeline', id: 'timeline', tabindex: 0, 'aria-label': 'timeline' });
  const output = h('pre', { id: 'live-output', class: 'mono', tabindex: 0, role: 'log', 'aria-label': 'live output', 'aria-live': 'off' });
  const runs = h('div', { id: 'runs' });
  const costs = h('div', { id: 'costs' });
  const diff = h('div', { id: 'diff' });
  let follow = true;
  const pause = h('button', { type: 'button', id: 'output-pause', 'aria-pressed': 'false' }, 'Pause scrolling');
  pause.addEventListener('click', () => {
    follow = !follow;
    pause.setAttribute('aria-pressed', String(!follow));
    pause.textContent = follow ? 'Pause scrolling' : 'Follow output';
    if (follow) output.scrollTop = output.scrollHeight;
  });
  root.append(
    h('p', {}, h('a', { href: '#/board' }, '← board')),
    head, stepper,
    h('div', { class: 'panel', id: 'diff-panel' }, h('h2', {}, 'Diff against the base'), diff),
    actions,
    h('div', { class: 'grid2' },
      h('div', { class: 'panel' }, h('h2', {}, 'Live output ', pause), output),
      h('div', { class: 'panel' }, h('h2', {}, 'Timeline'), timeline, h('h2', {}, 'Cost by persona'), costs)),
    h('div', { class: 'panel' }, h('h2', {}, 'Runs'), runs));

  const act = (name, body) => async (event) => {
    event.target.disabled = true;
    try {
      await api('POST', `/v1/tasks/${id}/${name}`, body);
      flash(`${name}: done`, true);
    } catch (error) { showError(error); }
    await refreshTask().catch(showError);
  };
  const refreshTask = async () => {
    const task = await api('GET', '/v1/tasks/' + id);
    fill(head, taskHead(task));
    fill(stepper, stages(task));
    fill(actions, taskActions(task, act));
  };
  const refreshRuns = async () => {
    const data = await api('GET', `/v1/tasks/${id}/runs`);
    const list = data.runs || [];
    fill(runs, list.length ? runsTable(list) : h('p', { class: 'muted' }, 'No runs yet.'));
    fill(costs, personaCosts(list));
  };
  const refreshDiff = async () => {
    const data = await api('GET', `/v1/tasks/${id}/diff`);
    if (data.source === 'none') { fill(diff, h('p', { class: 'muted' }, 'No branch yet.')); return; }
    const open = new Set([...diff.querySelectorAll('details[data-file]')].filter((d) => d.open).map((d) => d.dataset.file));
    const first = !diff.querySelector('details[data-file]');
    fill(diff,
      h('p', { class: 'muted' }, data.source === 'delivered' ? 'The delivered commit' : `${data.branch} against ${data.base}`,
        data.truncated ? ' (cut to 48 KiB)' : '', data.diff ? '' : ' — no changes'),
      diffFiles(data.diff || '', first ? null : open));
  };

  let pending = null;
  const refreshAll = () => {
    clearTimeout(pending);
    pending = setTimeout(() => {
      refreshTask().catch(showError);
      refreshRuns().catch(showError);
      refreshDiff().catch(showError);
    }, 200);
  };
  state.refresh = async () => refreshAll();
  await refreshTask();
  refreshRuns().catch(showError);
  refreshDiff().catch(showError);

  const controller = new AbortController();
  state.taskAbort = controller;
  const onEvent = (kind, event) => {
    if (kind === 'run.output') {
      // The chunk's fields are at the top level of the message (model::live::RunOutput).
      const chunk = (event && typeof event === 'object') ? event : {};
      output.append(h('span', { class: chunk.stream === 'stderr' ? 'stderr' : null }, plainText(chunk.text)));
      const excess = output.childNodes.length - OUTPUT_CHUNKS_MAX;
      for (let i = 0; i < excess; i++) output.firstChild.remove();
      if (follow) output.scrollTop = output.scrollHeight;
      return;
    }
    if (kind === 'run.output.lagged') {
      output.append(h('span', { class: 'stderr' }, `[${(event && event.skipped) || 'some'} chunks skipped]\n`));
      return;
    }
    if (kind === 'end' || kind === 'error' || kind === 'lagged') { refreshAll(); return; }
    if (!event || typeof event !== 'object') return;
    const detail = event.data && typeof event.data === 'object'
      ? Object.entries(event.data).filter(([, v]) => v !== null && typeof v !== 'object').map(([k, v]) => `${k}=${v}`).join(' ')
      : '';
    timeline.append(h('li', { 'data-kind': kind }, h('span', { class: 'ts' }, time(event.ts)),
      h('span', { class: 'kind' }, kind), ' ', h('span', { class: 'muted' }, event.actor || ''), ' ', detail.slice(0, 300)));
    timeline.scrollTop = timeline.scrollHeight;
    refreshAll();
  };
  (async () => {
    while (!controller.signal.aborted) {
      try {
        fill(timeline);
        await stream(`/v1/tasks/${id}/events/stream`, onEvent, controller.signal);
        return; // the stream ends once the task is over
      } catch (_) {
        if (controller.signal.aborted) return;
        await new Promise((resolve) => setTimeout(resolve, 2000));
      }
    }
  })();
}

function taskHead(task) {
  return [
    h('h1', {}, task.title),
    h('div', { class: 'row' },
      h('span', {}, 'status ', h('span', { id: 'task-status', class: 'badge ' + task.status }, task.status)),
      h('span', {}, 'stage ', h('strong', { id: 'task-stage' }, task.stage || '–')),
      h('span', {}, 'attempt ', task.attempts || 0, ' of ', task.max_attempts || '–'),
      h('span', { class: 'mono wrap' }, task.id),
      h('span', { class: 'muted wrap' }, task.repo, ' → ', task.base_branch),
      h('span', { class: 'muted', title: when(task.created_at) }, 'submitted ', age(task.created_at), ' ago')),
    task.error ? h('p', { class: 'error' }, `${task.error.code}: ${task.error.message}`) : null,
    task.merge && task.merge.place ? h('p', { id: 'task-place', class: 'warning' }, `#${task.merge.place} in the merge queue`) : null,
    task.merge && task.merge.held ? h('p', { id: 'task-held', class: 'warning' }, `Held: ${task.merge.held}`) : null,
    task.waiting_for ? h('p', { id: 'task-waiting', class: 'warning' }, `Waiting for ${task.waiting_for}`) : null,
    h('details', {}, h('summary', {}, 'Description'), h('pre', {}, task.description || '')),
  ];
}

// The stage stepper: each of the task's stages, done, current (or where it failed), or to come.
function stages(task) {
  const list = task.stages || [];
  const at = list.indexOf(task.stage);
  return list.map((stage, i) => {
    let mark = 'todo';
    if (task.status === 'done' || (at >= 0 && i < at)) mark = 'done';
    else if (i === at) mark = ['failed', 'dead_letter', 'cancelled'].includes(task.status) ? 'failed'
      : task.status === 'awaiting_approval' ? 'waiting' : 'current';
    return h('li', { class: 'step ' + mark, 'data-stage': stage, 'aria-current': i === at && mark !== 'done' ? 'step' : null },
      h('span', { class: 'sr-only' }, `${mark}: `), stage);
  });
}

// The actions the task's status and the session's role allow (model::lifecycle): approve and
// reject at the gate, cancel while unfinished (not while landing), retry once failed or dead.
function taskActions(task, act) {
  const s = task.status;
  const landing = task.merge && task.merge.landing;
  return [
    s === 'awaiting_approval' && may('approver') ? h('button', { id: 'btn-approve', class: 'primary', onclick: act('approve', {}) }, 'Approve') : null,
    s === 'awaiting_approval' && may('approver') ? h('button', { id: 'btn-reject', class: 'danger', onclick: act('reject', {}) }, 'Reject') : null,
    !TERMINAL.includes(s) && !landing && may('submitter') ? h('button', { id: 'btn-cancel', class: 'danger', onclick: act('cancel') }, 'Cancel') : null,
    ['failed', 'dead_letter'].includes(s) && may('submitter') ? h('button', { id: 'btn-retry', onclick: act('retry', {}) }, 'Retry') : null,
  ];
}

function runsTable(list) {
  return h('table', {},
    h('tr', {}, ['persona', 'stage', 'attempt', 'engine', 'outcome', 'exit', 'duration', 'cost (tokens)', 'output'].map((c) => h('th', {}, c))),
    list.map((run) => {
      const outcome = runOutcome(run);
      return h('tr', { 'data-run': run.id, 'data-outcome': outcome },
        h('td', {}, run.persona), h('td', {}, run.stage), h('td', { class: 'num' }, run.attempt),
        h('td', {}, run.engine, run.sandbox ? ` (${run.sandbox})` : ''),
        h('td', {}, badge(outcome)),
        h('td', { class: 'num' }, run.exit_code ?? (run.signal ? 'sig ' + run.signal : '–')),
        h('td', { class: 'num' }, (run.duration_ms / 1000).toFixed(1) + ' s'),
        h('td', { class: 'num' }, tokens(run.cost)),
        h('td', {}, h('details', {}, h('summary', {}, run.command || 'output'),
          run.stdout && run.stdout.text ? h('pre', {}, plainText(run.stdout.text)) : null,
          run.stderr && run.stderr.text ? h('pre', { class: 'stderr' }, plainText(run.stderr.text)) : null)));
    }));
}

function personaCosts(list) {
  const byPersona = {};
  for (const run of list) byPersona[run.persona] = (byPersona[run.persona] || 0) + (run.cost || 0);
  const max = Math.max(1, ...Object.values(byPersona));
  return Object.keys(byPersona).length ? h('table', {},
    h('tr', {}, h('th', {}, 'persona'), h('th', { class: 'num' }, 'tokens'), h('th', {}, h('span', { class: 'sr-only' }, 'share'))),
    Object.entries(byPersona).map(([persona, cost]) => h('tr', {},
      h('td', {}, persona),
      h('td', { class: 'num' }, tokens(cost)),
      h('td', {}, h('svg', { width: 120, height: 10, 'aria-hidden': 'true' }, h('rect', { x: 0, y: 0, height: 10, width: Math.round(120 * cost / max), fill: '#3056d3' })))))) :
    h('p', { class: 'muted' }, 'Nothing charged yet.');
}

// A unified diff split per file, each foldable, its lines coloured by kind. `open`: the files
// to show unfolded (null: all, unless the diff is long).
function diffFiles(text, open) {
  const files = [];
  for (const line of text.split('\n')) {
    if (line.startsWith('diff ') || !files.length) files.push({ name: '', lines: [] });
    const file = files[files.length - 1];
    if (line.startsWith('diff --git ')) file.name = line.replace(/^diff --git a\/(.*) b\/.*$/, '$1');
    file.lines.push(line);
  }
  const long = text.split('\n').length > DIFF_OPEN_LINES_MAX;
  return h('div', { id: 'diff-text' }, files.filter((f) => f.lines.some((l) => l)).map((file) => {
    const adds = file.lines.filter((l) => l.startsWith('+') && !l.startsWith('+++')).length;
    const dels = file.lines.filter((l) => l.startsWith('-') && !l.startsWith('---')).length;
    const name = file.name || 'changes';
    return h('details', { class: 'diff-file', 'data-file': name, open: open ? open.has(name) : !long },
      h('summary', {}, h('span', { class: 'mono' }, name), ' ', h('span', { class: 'adds' }, `+${adds}`), ' ', h('span', { class: 'dels' }, `−${dels}`)),
      h('pre', { tabindex: 0 }, file.lines.map((line) => {
        const cls = line.startsWith('+++') || line.startsWith('---') || line.startsWith('diff ') || line.startsWith('index ') ? 'file'
          : line.startsWith('+') ? 'add' : line.startsWith('-') ? 'del' : line.startsWith('@@') ? 'hunk' : null;
        return h('span', { class: cls }, line + '\n');
      })));
  }));
}

// ---- the supervision tree ----------------------------------------------------------------------------

async function treeView(root) {
  const holder = h('div', { class: 'panel tree', id: 'tree' });
  root.append(h('h1', {}, 'Supervision tree'), holder);
  const refresh = async () => {
    const data = await api('GET', '/v1/actors');
    const actors = data.actors || [];
    const children = {};
    for (const actor of actors) (children[actor.parent || ''] = children[actor.parent || ''] || []).push(actor);
    const names = new Set(actors.map((a) => a.name));
    const roots = actors.filter((a) => !a.parent || !names.has(a.parent));
    const branch = (list) => h('ul', {}, list.map((actor) => h('li', { 'data-actor': actor.name },
      h('strong', {}, actor.name), ' ', badge(actor.status), ' ',
      h('span', { class: actor.restarts ? 'error' : 'muted' }, `${actor.restarts} restart${actor.restarts === 1 ? '' : 's'}`),
      children[actor.name] ? branch(children[actor.name]) : null)));
    fill(holder, actors.length ? branch(roots) : h('p', { class: 'muted' }, 'No actors.'));
  };
  state.refresh = refresh;
  await refresh();
}

// ---- the ledger --------------------------------------------------------------------------------------

async function ledgerView(root) {
  const balances = h('div', { class: 'panel', id: 'balances' });
  const chart = h('div', { class: 'panel', id: 'spend' });
  const taskCost = h('div', { class: 'panel' });
  root.append(h('h1', {}, 'Ledger'), balances, chart, taskCost);

  const costOut = h('div');
  const costInput = h('input', { id: 'cost-task', placeholder: 'task id' });
  taskCost.append(h('h2', {}, "A task's cost by persona"), h('div', { class: 'filters' }, labelled('Task id', costInput),
    h('button', { type: 'button', onclick: () => showTaskCost(costInput.value.trim(), costOut).catch(showError) }, 'Show')), costOut);

  const refresh = async () => {
    const personas = ((await api('GET', '/v1/personas')).personas || []).map((p) => p.name).sort();
    const ids = ['system:revenue', 'user:local', ...(state.session.accounts || []), ...personas.map((p) => 'agent:' + p)];
    const accounts = await Promise.all([...new Set(ids)].map((id) =>
      api('GET', '/v1/ledger/accounts/' + encodeURIComponent(id)).catch(() => null)));
    fill(balances, h('h2', {}, 'Balances (tokens)'), h('table', {},
      h('tr', {}, ['account', 'balance', 'available', 'pending in', 'pending out'].map((c, i) => h('th', { class: i ? 'num' : null }, c))),
      accounts.filter(Boolean).map((a) => h('tr', { 'data-account': a.id },
        h('td', { class: 'mono' }, a.id), h('td', { class: 'num' }, tokens(a.balance)), h('td', { class: 'num' }, tokens(a.available)),
        h('td', { class: 'num' }, tokens(a.credits_pending)), h('td', { class: 'num' }, tokens(a.debits_pending))))));

    // Spend per persona per day: what each agent account earned, from its transfer history.
    const days = [];
    for (let i = 13; i >= 0; i--) days.push(new Date(Date.now() - i * 86400000).toISOString().slice(0, 10));
    const spend = {};
    await Promise.all(personas.map(async (persona) => {
      const account = 'agent:' + persona;
      const page = await api('GET', `/v1/ledger/accounts/${encodeURIComponent(account)}/transfers?limit=500`).catch(() => null);
      for (const t of (page && page.transfers) || []) {
        if (t.credit_account !== account || t.status !== 'posted') continue;
        const day = String(t.created_at).slice(0, 10);
        spend[persona] = spend[persona] || {};
        spend[persona][day] = (spend[persona][day] || 0) + (t.posted_amount || t.amount || 0);
      }
    }));
    fill(chart, h('h2', {}, 'Spend per persona per day (last 14 days, tokens)'), spendChart(days, personas, spend));
  };
  state.refresh = refresh;
  await refresh();
}

const COLOURS = ['#3056d3', '#1f8a4c', '#c0392b', '#b7791f', '#8e44ad', '#16a085', '#d35400', '#7f8c8d'];

function spendChart(days, personas, spend) {
  const totals = days.map((day) => personas.reduce((sum, p) => sum + ((spend[p] || {})[day] || 0), 0));
  const max = Math.max(1, ...totals);
  const width = 760, height = 220, left = 60, bottom = 30, barWidth = (width - left) / days.length;
  const svg = h('svg', { viewBox: `0 0 ${width} ${height}`, id: 'spend-chart', class: 'chart', role: 'img',
    'aria-label': `spend per persona per day, up to ${tokens(max)} tokens a day` });
  svg.append(h('line', { x1: left, y1: height - bottom, x2: width, y2: height - bottom, stroke: '#999' }));
  svg.append(h('text', { x: 4, y: 12, 'font-size': 11, fill: '#4b5563' }, tokens(max)));
  svg.append(h('text', { x: 4, y: height - bottom, 'font-size': 11, fill: '#4b5563' }, '0'));
  days.forEach((day, i) => {
    let y = height - bottom;
    personas.forEach((persona, p) => {
      const amount = (spend[persona] || {})[day] || 0;
      if (!amount) return;
      const barHeight = (height - bottom - 16) * amount / max;
      y -= barHeight;
      svg.append(h('rect', { x: left + i * barWidth + 3, y, width: barWidth - 6, height: barHeight, fill: COLOURS[p % COLOURS.length] },
        h('title', {}, `${persona} ${day}: ${tokens(amount)}`)));
    });
    svg.append(h('text', { x: left + i * barWidth + barWidth / 2, y: height - 12, 'font-size': 10, 'text-anchor': 'middle', fill: '#4b5563' }, day.slice(5)));
  });
  const legend = h('div', { class: 'legend' }, personas.map((p, i) => h('span', {}, h('i', { class: 'sw' + (i % COLOURS.length) }), p)));
  return h('div', {}, svg, legend);
}

async function showTaskCost(id, out) {
  if (!id) return;
  const data = await api('GET', `/v1/tasks/${encodeURIComponent(id)}/runs`);
  const byPersona = {};
  for (const run of data.runs || []) byPersona[run.persona] = (byPersona[run.persona] || 0) + (run.cost || 0);
  const total = Object.values(byPersona).reduce((a, b) => a + b, 0);
  fill(out, h('table', {},
    h('tr', {}, h('th', {}, 'persona'), h('th', { class: 'num' }, 'cost (tokens)')),
    Object.entries(byPersona).map(([p, c]) => h('tr', {}, h('td', {}, p), h('td', { class: 'num' }, tokens(c)))),
    h('tr', {}, h('th', {}, 'total'), h('th', { class: 'num' }, tokens(total)))),
  h('p', {}, h('a', { href: '#/task/' + id }, 'open the task')));
}

// ---- ops -------------------------------------------------------------------------------------------------

async function opsView(root) {
  const deploys = h('div', { class: 'panel', id: 'deploys' });
  const incidents = h('div', { class: 'panel', id: 'incidents' });
  const checks = h('div', { class: 'panel', id: 'checks' });
  const silences = h('div', { class: 'panel', id: 'silences' });
  root.append(h('h1', {}, 'Ops'), deploys, incidents, silences, checks);
  const send = (method, path, body) => async (event) => {
    event.target.disabled = true;
    try { await api(method, path, body); flash('done', true); } catch (error) { showError(error); }
    refresh().catch(showError);
  };
  const decide = (path, body) => send('POST', path, body || {});
  // An incident's app and first signal, quiet for an hour (POST /v1/silences).
  const silenceOf = (x) => {
    const signal = ((x.signals || [])[0] || {}).signal;
    const matchers = signal ? { app: x.app, signal } : { app: x.app };
    return decide('/v1/silences', { matchers, minutes: 60, comment: `from incident ${x.id}` });
  };
  const refresh = async () => {
    const [d, i, c] = await Promise.all([
      api('GET', '/v1/deploys').catch((e) => ({ error: e })),
      api('GET', '/v1/incidents').catch((e) => ({ error: e })),
      api('GET', '/v1/checks').catch((e) => ({ error: e })),
    ]);
    const s = await api('GET', '/v1/silences').catch((e) => ({ error: e }));
    const matched = (m) => [m.app && `app=${m.app}`, m.signal && `signal=${m.signal}`,
      ...Object.entries(m.labels || {}).map(([k, v]) => `${k}=${v}`)].filter(Boolean).join(', ');
    fill(silences, h('h2', {}, 'Silences'), s.error ? h('p', { class: 'error' }, s.error.message) :
      (s.silences || []).length ? h('table', {},
        h('tr', {}, ['silence', 'matches', 'until', 'by', 'comment', ''].map((x) => h('th', {}, x))),
        s.silences.map((x) => h('tr', { 'data-silence': x.id },
          h('td', { class: 'mono' }, short(x.id)), h('td', { class: 'mono' }, matched(x.matchers || {})),
          h('td', {}, when(x.ends_at)), h('td', {}, x.created_by), h('td', {}, x.comment || ''),
          h('td', {}, h('button', { class: 'danger', onclick: send('DELETE', `/v1/silences/${x.id}`) }, 'Expire'))))) :
        h('p', { class: 'muted' }, 'No active silences.'));
    fill(deploys, h('h2', {}, 'Deploys'), d.error ? h('p', { class: 'error' }, d.error.message) :
      (d.deploys || []).length ? h('table', {},
        h('tr', {}, ['deploy', 'app', 'release', 'status', 'stages', 'created', ''].map((x) => h('th', {}, x))),
        d.deploys.map((r) => h('tr', { 'data-deploy': r.id },
          h('td', { class: 'mono' }, short(r.id)), h('td', {}, r.app), h('td', { class: 'mono' }, r.requested),
          h('td', {}, badge(r.status), r.error ? h('div', { class: 'error' }, r.error.code) : null),
          h('td', {}, h('div', { class: 'chips' }, (r.stages || []).map((s) => h('span', { class: 'badge ' + (s.outcome || 'running'), title: s.detail || '' }, `${s.stage}: ${s.outcome || '…'}`)))),
          h('td', {}, when(r.created_at)),
          h('td', {}, r.status === 'awaiting_approval' ? [
            h('button', { class: 'primary', onclick: decide(`/v1/deploys/${r.id}/approve`) }, 'Approve'), ' ',
            h('button', { class: 'danger', onclick: decide(`/v1/deploys/${r.id}/reject`) }, 'Reject')] : null)))) :
        h('p', { class: 'muted' }, 'No deploys.'));
    fill(incidents, h('h2', {}, 'Incidents'), i.error ? h('p', { class: 'error' }, i.error.message) :
      (i.incidents || []).length ? (i.incidents || []).map((x) => h('div', { class: 'panel', 'data-incident': x.id },
        h('div', { class: 'row' }, h('strong', {}, x.app), badge(x.status), h('span', { class: 'mono' }, short(x.id)),
          x.runbook ? h('span', {}, 'runbook ', h('code', {}, x.runbook)) : null,
          x.awaiting ? h('span', {}, `awaiting approval of step ${x.awaiting.step + 1}: `, h('code', {}, x.awaiting.action), ' ',
            h('span', { class: 'mono muted', title: 'digest of the step as shown' }, x.awaiting.digest.slice(0, 8))) : null,
          x.acknowledged ? h('span', { class: 'muted' }, `acknowledged by ${x.acknowledged.by}`) : null,
          x.snoozed_until ? h('span', { class: 'muted' }, `snoozed until ${when(x.snoozed_until)}`) : null,
          h('span', { class: 'muted' }, when(x.created_at))),
        incidentStory(x),
        x.status !== 'resolved' ? h('div', { class: 'actions' },
          x.awaiting ? [
            h('button', { class: 'primary', onclick: decide(`/v1/incidents/${x.id}/approve`, x.awaiting) }, `Approve ${x.awaiting.action}`),
            h('button', { class: 'danger', onclick: decide(`/v1/incidents/${x.id}/reject`) }, 'Reject step')] : null,
          x.status === 'needs_human' ? h('button', { 'data-act': 'ack', onclick: decide(`/v1/incidents/${x.id}/ack`) }, 'Acknowledge') : null,
          h('button', { 'data-act': 'snooze', onclick: decide(`/v1/incidents/${x.id}/snooze`, { minutes: 60 }) }, 'Snooze 1 h'),
          h('button', { onclick: silenceOf(x), title: 'no new incident of this app and signal for an hour' }, 'Silence 1 h'),
          h('button', { 'data-act': 'resolve', onclick: decide(`/v1/incidents/${x.id}/resolve`) }, 'Resolve')) : null,
        h('details', {}, h('summary', {}, `${(x.events || []).length} steps and events`),
          h('ul', { class: 'timeline' }, (x.events || []).map((e) => h('li', {}, h('span', { class: 'ts' }, when(e.at)), h('span', { class: 'kind' }, e.kind), ' ',
            h('span', { class: 'muted' }, JSON.stringify(e.detail).slice(0, 300)))))),
        x.postmortem ? h('details', {}, h('summary', {}, 'Postmortem'), h('pre', {}, x.postmortem)) : null)) :
        h('p', { class: 'muted' }, 'No incidents.'));
    fill(checks, h('h2', {}, 'Checks'), c.error ? h('p', { class: 'error' }, c.error.message) :
      (c.checks || []).length ? h('table', {},
        h('tr', {}, ['app', 'check', 'kind', 'schedule', 'last outcome', 'detail', 'at'].map((x) => h('th', {}, x))),
        c.checks.map((k) => h('tr', {}, h('td', {}, k.app), h('td', {}, k.name), h('td', {}, k.kind), h('td', { class: 'mono' }, k.schedule),
          h('td', {}, k.last ? badge(k.last.outcome) : '–'), h('td', {}, k.last ? String(k.last.detail || '').slice(0, 200) : ''),
          h('td', {}, k.last ? when(k.last.at) : '')))) :
        h('p', { class: 'muted' }, 'No checks.'));
  };
  state.refresh = refresh;
  await refresh();
}

// What happened, on the card itself: the signals that opened it, its latest step, its task.
function incidentStory(x) {
  const last = (x.events || []).slice(-1)[0];
  return h('div', { class: 'story' },
    h('ul', { class: 'signals' }, (x.signals || []).slice(0, 3).map((sg) => h('li', {},
      badge(sg.severity), ' ', h('strong', {}, sg.signal), ' ', sg.summary || '', ' ', h('span', { class: 'muted' }, `(${sg.source || 'alert'}, ${when(sg.at)})`))),
      x.signal_count > 3 ? h('li', { class: 'muted' }, `and ${x.signal_count - 3} more signals`) : null),
    last ? h('p', {}, 'Latest: ', h('strong', {}, last.kind), ' ', h('span', { class: 'muted' }, when(last.at), ' ',
      JSON.stringify(last.detail || {}).slice(0, 160))) : null,
    x.task_id ? h('p', {}, 'Task: ', h('a', { href: '#/task/' + x.task_id }, short(x.task_id))) : null);
}

// ---- the fleet -------------------------------------------------------------------------------------------

// Factories (slots, health, paused or draining, with their controls) and the jobs waiting.
async function fleetView(root) {
  const factories = h('div', { class: 'panel', id: 'factories' });
  const waiting = h('div', { class: 'panel', id: 'fleet-waiting' });
  root.append(h('h1', {}, 'Fleet'), factories, waiting);
  const send = (path) => async (event) => {
    event.target.disabled = true;
    try { await api('POST', path, {}); flash('done', true); } catch (error) { showError(error); }
    refresh().catch(showError);
  };
  const refresh = async () => {
    const f = await api('GET', '/v1/fleet').catch((e) => ({ error: e }));
    if (f.error || !f.configured) {
      fill(factories, h('h2', {}, 'Factories'), h('p', { class: f.error ? 'error' : 'muted' },
        f.error ? f.error.message : 'No fleet: everything runs in-process.'));
      fill(waiting);
      return;
    }
    const name = (x) => encodeURIComponent(x.name);
    fill(factories, h('h2', {}, 'Factories ', badge(f.paused ? 'paused' : 'running'), ' ',
      h('button', { class: f.paused ? 'primary' : 'danger', onclick: send(f.paused ? '/v1/fleet/resume' : '/v1/fleet/pause') },
        f.paused ? 'Resume the fleet' : 'Pause the fleet')),
      (f.factories || []).length ? h('table', {},
        h('tr', {}, ['factory', 'slots used', 'told', 'health', 'last pull', 'heartbeat', ''].map((x) => h('th', {}, x))),
        f.factories.map((x) => h('tr', { 'data-factory': x.name },
          h('td', {}, h('strong', {}, x.name), h('div', { class: 'muted' }, (x.capabilities || []).join(' '))),
          h('td', {}, `${(x.running || []).length} / ${x.slots}`),
          h('td', {}, badge(x.told || 'active'), x.draining && x.told !== 'draining' ? h('span', { class: 'muted' }, ' stopping') : null),
          h('td', {}, x.healthy === false ? h('span', { class: 'error', title: x.unhealthy || '' }, 'stalled: ' + (x.unhealthy || '')) : badge('healthy')),
          h('td', {}, x.last_pull_at ? when(x.last_pull_at) : '–'),
          h('td', {}, when(x.heartbeat_at)),
          h('td', {}, (x.told || 'active') === 'active' ? [
            h('button', { onclick: send(`/v1/fleet/factories/${name(x)}/pause`) }, 'Pause'), ' ',
            h('button', { class: 'danger', onclick: send(`/v1/fleet/factories/${name(x)}/drain`) }, 'Drain')] :
            h('button', { class: 'primary', onclick: send(`/v1/fleet/factories/${name(x)}/resume`) }, 'Resume'))))) :
        h('p', { class: 'muted' }, 'No factory is registered.'));
    fill(waiting, h('h2', {}, 'Waiting for a factory'), (f.waiting || []).length ? h('table', {},
      h('tr', {}, ['task', 'needs', 'since', 'why'].map((x) => h('th', {}, x))),
      f.waiting.map((j) => h('tr', {}, h('td', { class: 'mono' }, h('a', { href: '#/task/' + j.task_id }, short(j.task_id))),
        h('td', { class: 'mono' }, (j.capabilities || []).join(', ') || 'any'), h('td', {}, when(j.since)),
        h('td', {}, j.reason || '')))) : h('p', { class: 'muted' }, 'No job is waiting.'));
  };
  state.refresh = refresh;
  await refresh();
}

// ---- start -------------------------------------------------------------------------------------------------

window.addEventListener('hashchange', route);
document.addEventListener('DOMContentLoaded', async () => {
  $('login-form').addEventListener('submit', logIn);
  $('logout').addEventListener('click', logOut);
  try {
    loggedIn(await api('GET', '/ui/session'));
  } catch (_) {
    showLogin();
  }
});
