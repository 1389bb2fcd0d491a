// The ferry console: plain JavaScript, no framework, no build step, nothing fetched from
// elsewhere. Views are picked by the URL's hash (#/overview, #/dlq?subscriber=…, #/letter?…,
// #/find?…, #/plugins, #/audit), so a reload or a shared link opens the same view.
//
// Every value that producers or plugins control (types, reasons, payloads, names) reaches the
// page through `textContent` or `createElement` only: no markup is ever parsed from data.
'use strict';

// Whether this browser logged in: the session cookie itself is HttpOnly, so the page keeps a
// marker beside it and asks /api/whoami only when it has one (no needless 401 on first visit).
const SESSION = 'ferry-console-session';
const REFRESH_MS = 5000;
const JOB_POLL_MS = 400;
// Finished jobs are still shown this long (a reload after the end still tells the result).
const JOB_RECENT_MS = 15 * 60 * 1000;

const state = { me: null, timers: [], generation: 0, jobs: new Map() };

// ---------------------------------------------------------------- DOM helpers

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// `el('td', {class: 'num', dataset: {col: 'lag'}}, 42)`: attributes come from this file's code,
// children are nodes or text.
function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else if (key === 'value' || key === 'checked') node[key] = value;
    else node.setAttribute(key, value === true ? '' : String(value));
  }
  return append(node, children);
}

const SVG = 'http://www.w3.org/2000/svg';
function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  return append(node, children);
}

function $(id) {
  return document.getElementById(id);
}

function time(ms) {
  if (ms === null || ms === undefined || ms === '' || Number.isNaN(Number(ms))) return '–';
  const n = Number(ms);
  if (n <= 0) return '–';
  return new Date(n).toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
}

// An RFC 3339 time as the console writes every time (UTC, to the second); other text as is.
function stamp(text) {
  const ms = Date.parse(text);
  return Number.isNaN(ms) ? text || '–' : time(ms);
}

function short(text, n) {
  const s = String(text ?? '');
  return s.length > n ? s.slice(0, n - 1) + '…' : s;
}

// A value of unknown shape (grants, limits, audit details) as nested text.
function value(v) {
  if (v === null || v === undefined) return el('span', { class: 'muted' }, '–');
  if (Array.isArray(v)) {
    if (v.length === 0) return el('span', { class: 'muted' }, 'none');
    if (v.every((x) => typeof x !== 'object' || x === null)) return v.map(String).join(', ');
    return el('ul', {}, v.map((x) => el('li', {}, value(x))));
  }
  if (typeof v === 'object') {
    const entries = Object.entries(v);
    if (entries.length === 0) return el('span', { class: 'muted' }, 'none');
    return el('dl', { class: 'pairs' }, entries.map(([k, x]) => [el('dt', {}, k), el('dd', {}, value(x))]));
  }
  return String(v);
}

function notify(text, isError) {
  const box = $('notice');
  box.textContent = text;
  box.className = isError ? 'error' : '';
  box.hidden = false;
  clearTimeout(state.noticeTimer);
  if (!isError) state.noticeTimer = setTimeout(() => (box.hidden = true), 8000);
}

function canAct() {
  return state.me !== null && state.me.role === 'operator';
}

// A button that only an operator may press; a viewer sees it disabled.
function action(label, onclick, cls, id) {
  const button = el('button', { type: 'button', class: cls, id, onclick, disabled: !canAct() }, label);
  if (!canAct()) button.title = 'needs the operator role';
  return button;
}

// ---------------------------------------------------------------- the API

class HttpError extends Error {
  constructor(status, text) {
    super(text || `HTTP ${status}`);
    this.status = status;
  }
}

async function api(path, options = {}) {
  const init = { method: options.method || 'GET', credentials: 'same-origin', headers: {} };
  if (options.body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(options.body);
  }
  const response = await fetch(path, init);
  const text = await response.text();
  if (response.status === 401 && !options.login) {
    signedOut('Your session ended: log in again.');
    throw new HttpError(401, text.trim());
  }
  if (!response.ok) throw new HttpError(response.status, text.trim());
  const type = response.headers.get('content-type') || '';
  return type.includes('json') ? JSON.parse(text) : text;
}

const enc = encodeURIComponent;

// ---------------------------------------------------------------- login and the frame

function signedOut(message) {
  localStorage.removeItem(SESSION);
  state.me = null;
  stopTimers();
  $('top').hidden = true;
  $('view').replaceChildren();
  $('jobs').replaceChildren();
  state.jobs.clear();
  $('login').hidden = false;
  $('login-error').textContent = message || '';
  $('login-token').focus();
}

async function login(event) {
  event.preventDefault();
  const token = $('login-token').value;
  $('login-error').textContent = '';
  try {
    await api('/api/login', { method: 'POST', body: { token }, login: true });
  } catch (e) {
    // An endpoint without tokens (loopback) is open: it has no login to do.
    if (!(e.status === 400 && /open/.test(e.message))) {
      $('login-error').textContent =
        e.status === 401 ? 'Unknown token.' : e.status === 429 ? 'Too many failed logins: wait a minute.' : e.message;
      return;
    }
  }
  $('login-token').value = '';
  localStorage.setItem(SESSION, '1');
  await enter();
}

async function logout() {
  try {
    await api('/api/logout', { method: 'POST', login: true });
  } finally {
    signedOut('Logged out.');
  }
}

async function enter() {
  try {
    state.me = await api('/api/whoami', { login: true });
  } catch (e) {
    signedOut(e.status === 401 ? '' : `The endpoint did not answer: ${e.message}`);
    return;
  }
  $('login').hidden = true;
  $('top').hidden = false;
  $('who-name').textContent = state.me.name;
  $('who-role').textContent = state.me.role;
  document.body.classList.toggle('viewer', !canAct());
  loadJobs().catch(() => {});
  route();
}

function stopTimers() {
  for (const t of state.timers) clearInterval(t);
  state.timers = [];
}

const VIEWS = {};

function route() {
  if (state.me === null) return;
  stopTimers();
  const hash = location.hash.replace(/^#\/?/, '');
  const [name, query] = hash.split('?');
  const view = VIEWS[name] ? name : 'overview';
  for (const a of document.querySelectorAll('header nav a')) {
    a.classList.toggle('current', a.dataset.view === (view === 'letter' ? 'dlq' : view));
  }
  // A view renders into its own element: one that answers after the next view started
  // writes into a detached node, never over the new view.
  const root = el('div', { id: `view-${view}` });
  $('view').replaceChildren(root);
  const generation = ++state.generation;
  document.title = `ferry · ${view}`;
  // data-ready says the view has drawn what it fetched (tests wait on it, with data-hash).
  root.dataset.hash = location.hash;
  VIEWS[view](root, new URLSearchParams(query || ''), generation)
    .catch((e) => {
      if (e.status === 401) return;
      root.append(el('p', { class: 'error', role: 'alert' }, `Could not load: ${e.message}`));
    })
    .finally(() => (root.dataset.ready = 'true'));
}

function current(generation) {
  return generation === state.generation;
}

function every(ms, f) {
  state.timers.push(setInterval(f, ms));
}

// ---------------------------------------------------------------- overview

VIEWS.overview = async function (root, _params, generation) {
  const refreshed = el('span', { id: 'overview-refreshed' }, 'never');
  const charts = el('div', { class: 'charts', id: 'overview-charts' });
  const body = el('tbody');
  root.append(
    el('h1', {}, 'Overview'),
    el('p', { class: 'muted' }, 'Refreshed ', refreshed, ` (every ${REFRESH_MS / 1000} s) · charts: up to the last hour`),
    charts,
    el('h2', {}, 'Subscribers'),
    el(
      'table',
      { id: 'overview-subscribers' },
      el(
        'thead',
        {},
        el(
          'tr',
          {},
          ['subscriber', 'stream'].map((h) => el('th', {}, h)),
          ['lag', 'pending', 'retries waiting', 'dead letters', 'held keys', 'consumers'].map((h) =>
            el('th', { class: 'num' }, h),
          ),
        ),
      ),
      body,
    ),
  );
  const draw = async () => {
    const data = await api('/api/overview');
    if (!current(generation)) return;
    body.replaceChildren(...data.subscribers.map(subscriberRow));
    if (data.subscribers.length === 0) body.append(el('tr', {}, el('td', { colspan: 8, class: 'muted' }, 'No subscriber runs.')));
    charts.replaceChildren(...historyCharts(data.history || []));
    refreshed.textContent = new Date().toISOString().slice(11, 19) + 'Z';
    root.dataset.refreshes = String(Number(root.dataset.refreshes || 0) + 1);
  };
  await draw();
  every(REFRESH_MS, () => draw().catch((e) => e.status !== 401 && notify(`Overview: ${e.message}`, true)));
};

function subscriberRow(s) {
  const num = (col, n, warnAt) =>
    el('td', { class: 'num' + (warnAt !== undefined && n > warnAt ? ' warn' : ''), dataset: { col } }, n ?? '–');
  const dead = el(
    'td',
    { class: 'num' + (s.dead_letters > 0 ? ' bad' : ''), dataset: { col: 'dead_letters' } },
    el('a', { href: `#/dlq?subscriber=${enc(s.subscriber)}` }, s.dead_letters),
  );
  return el(
    'tr',
    { dataset: { subscriber: s.subscriber, stream: s.stream } },
    el('td', { dataset: { col: 'subscriber' } }, s.subscriber),
    el('td', { dataset: { col: 'stream' } }, s.stream),
    num('lag', s.lag, 1000),
    num('pending', s.pending),
    num('retries_waiting', s.retries_waiting),
    dead,
    num('held_keys', s.held_keys),
    consumers(s.consumers, s.consumer_list),
  );
}

// How many consumers (host instances) read, their names and idle times on hover.
function consumers(count, list) {
  const all = Array.isArray(list) ? list : [];
  const names = all.map((c) => `${c.name}: ${c.pending} pending, idle ${c.idle_ms} ms`);
  return el('td', { class: 'num', dataset: { col: 'consumers' }, title: names.join('\n') }, count ?? all.length);
}

function historyCharts(history) {
  const rate = (key) => (p, i) => {
    const before = history[i - 1];
    const seconds = before ? Math.max(1, p.t - before.t) : 10;
    return (p[key] || 0) / seconds;
  };
  return [
    chart('throughput', 'Throughput', 'events/s', history, [{ label: 'handled/s', at: rate('handled') }]),
    chart('failures', 'Failures', 'per 10 s', history, [
      { label: 'failed', at: (p) => p.failed || 0 },
      { label: 'dead-lettered', at: (p) => p.dead_lettered || 0 },
    ]),
    chart('latency', 'Latency', 'ms', history, [
      { label: 'p50', at: (p) => p.p50_ms || 0 },
      { label: 'p99', at: (p) => p.p99_ms || 0 },
    ]),
  ];
}

function fmt(n) {
  if (Number.isInteger(n)) return String(n);
  if (n >= 100) return String(Math.round(n));
  if (n >= 10) return n.toFixed(1);
  return n.toFixed(2).replace(/\.?0+$/, '') || '0';
}

// A line chart of the last hour: x is time, y from 0 to the largest value. A host that started
// less than an hour ago has a shorter history: the x axis then spans that (a minute at least),
// so a fresh host's first minutes are not a sliver at the right edge.
function chart(id, title, unit, history, series) {
  const [w, h, left, bottom] = [320, 110, 34, 14];
  const now = Date.now() / 1000;
  const first = history.length ? history[0].t : now;
  const span = Math.min(3600, Math.max(60, now - first + 10));
  const from = now - span;
  const values = series.map((s) => history.map((p, i) => s.at(p, i)));
  const max = Math.max(1e-9, ...values.flat());
  const x = (t) => left + ((Math.min(now, Math.max(from, t)) - from) / span) * (w - left - 4);
  const y = (v) => 4 + (1 - v / max) * (h - bottom - 8);
  const plot = svg(
    'svg',
    {
      viewBox: `0 0 ${w} ${h}`,
      role: 'img',
      'aria-label': `${title} over the last ${Math.round(span / 60)} minutes`,
      'data-points': history.length,
      'data-max': max === 1e-9 ? 0 : max,
    },
    svg('line', { class: 'axis', x1: left, y1: h - bottom - 4, x2: w - 4, y2: h - bottom - 4 }),
    svg('line', { class: 'axis', x1: left, y1: 4, x2: left, y2: h - bottom - 4 }),
    svg('text', { x: left - 3, y: 12, 'text-anchor': 'end' }, fmt(max === 1e-9 ? 0 : max)),
    svg('text', { x: left - 3, y: h - bottom - 4, 'text-anchor': 'end' }, '0'),
    svg('text', { x: left, y: h - 2 }, `−${Math.round(span / 60)} min`),
    svg('text', { x: w - 4, y: h - 2, 'text-anchor': 'end' }, 'now'),
    // Steps: each point is a count over the interval that ends at its `t`.
    values.map((vs, i) => {
      const steps = vs.flatMap((v, j) => {
        const start = j > 0 ? history[j - 1].t : history[j].t - 10;
        return [`${x(start).toFixed(1)},${y(v).toFixed(1)}`, `${x(history[j].t).toFixed(1)},${y(v).toFixed(1)}`];
      });
      return svg('polyline', { class: `s${i}`, points: steps.join(' ') });
    }),
  );
  const last = (vs) => (vs.length ? fmt(vs[vs.length - 1]) : '–');
  return el(
    'div',
    { class: 'chart', id: `chart-${id}` },
    el('h3', {}, title, ' ', el('span', { class: 'muted' }, `(${unit})`)),
    plot,
    el(
      'div',
      { class: 'legend' },
      series.map((s, i) => el('span', {}, el('span', { class: `swatch s${i}` }), `${s.label} ${last(values[i])}`)),
    ),
  );
}

// ---------------------------------------------------------------- dead letters

const FILTERS = [
  ['type', 'event type'],
  ['kind', 'failure kind'],
  ['reason', 'reason contains'],
  ['since', 'since (1h, RFC 3339, ms)'],
  ['until', 'until'],
  ['correlation', 'correlation id'],
  ['id', 'event or entry id'],
];

async function subscriberNames() {
  const plugins = await api('/api/plugins');
  return plugins.map((p) => p.name).sort();
}

function filterOf(params) {
  const filter = {};
  for (const [key] of FILTERS) {
    const v = params.get(key);
    if (v) filter[key] = v;
  }
  return filter;
}

function dlqHash(subscriber, filter) {
  const q = new URLSearchParams({ subscriber, ...filter });
  return `#/dlq?${q}`;
}

VIEWS.dlq = async function (root, params, generation) {
  const names = await subscriberNames();
  const subscriber = params.get('subscriber') || names[0];
  const filter = filterOf(params);
  root.append(el('h1', {}, 'Dead letters'));
  if (!subscriber) {
    root.append(el('p', { class: 'muted' }, 'No subscriber runs.'));
    return;
  }
  const picker = el(
    'select',
    { id: 'dlq-subscriber', onchange: (e) => (location.hash = dlqHash(e.target.value, {})) },
    names.map((n) => el('option', { value: n }, n)),
  );
  picker.value = subscriber;
  root.append(el('div', { class: 'toolbar' }, el('label', {}, 'Subscriber ', picker)), filterForm(subscriber, filter));
  const query = new URLSearchParams(filter).toString();
  const limit = params.get('limit') || '100';
  const [groups, listing] = await Promise.all([
    api(`/api/dlq/${enc(subscriber)}/groups?${query}`),
    api(`/api/dlq/${enc(subscriber)}?${query}${query ? '&' : ''}limit=${enc(limit)}`),
  ]);
  if (!current(generation)) return;
  const refresh = () => route();
  root.append(
    el('h2', {}, 'Groups by cause'),
    groupsTable(subscriber, groups, refresh),
    el('h2', { id: 'dlq-count' }, `${listing.total} dead letter${listing.total === 1 ? '' : 's'}`,
      listing.total > listing.dead_letters.length ? ` (showing ${listing.dead_letters.length})` : ''),
    lettersTable(subscriber, filter, listing, refresh),
  );
};

function filterForm(subscriber, filter) {
  const inputs = FILTERS.map(([key, label]) =>
    el('label', {}, label, el('input', { name: key, id: `filter-${key}`, value: filter[key] || '' })),
  );
  const apply = (e) => {
    e.preventDefault();
    const next = {};
    for (const [key] of FILTERS) {
      const v = e.target.elements[key].value.trim();
      if (v) next[key] = v;
    }
    location.hash = dlqHash(subscriber, next);
  };
  return el(
    'form',
    { class: 'filters', id: 'dlq-filters', onsubmit: apply },
    inputs,
    el('div', { class: 'toolbar' },
      el('button', { type: 'submit', class: 'primary', id: 'filter-apply' }, 'Filter'),
      el('button', { type: 'button', onclick: () => (location.hash = dlqHash(subscriber, {})) }, 'Clear')),
  );
}

function groupsTable(subscriber, groups, refresh) {
  if (groups.length === 0) return el('p', { class: 'muted', id: 'dlq-groups' }, 'No dead letters.');
  return el(
    'table',
    { id: 'dlq-groups' },
    el('thead', {}, el('tr', {}, ['kind', 'reason (normalised)'].map((h) => el('th', {}, h)),
      el('th', { class: 'num' }, 'count'), el('th', {}, 'oldest'), el('th', {}, 'newest'), el('th', {}, ''))),
    el('tbody', {}, groups.map((g) =>
      el('tr', { dataset: { group: g.group } },
        el('td', { class: 'mono' }, g.kind),
        el('td', { class: 'wrap' }, g.reason),
        el('td', { class: 'num', dataset: { col: 'count' } }, g.count),
        el('td', { class: 'nowrap' }, stamp(g.oldest)),
        el('td', { class: 'nowrap' }, stamp(g.newest)),
        el('td', {},
          action('Replay group', () => act(subscriber, 'replay', { group: g.group }, `the group of ${g.count}`, refresh), 'primary'),
          ' ',
          action('Purge group', () => act(subscriber, 'purge', { group: g.group }, `the group of ${g.count}`, refresh), 'danger')),
      ),
    )),
  );
}

function lettersTable(subscriber, filter, listing, refresh) {
  const boxes = [];
  const selected = () => boxes.filter((b) => b.checked).map((b) => b.value);
  const count = el('span', { id: 'dlq-selected' }, '0 selected');
  const onSelect = () => (count.textContent = `${selected().length} selected`);
  const all = el('input', { type: 'checkbox', id: 'dlq-select-all', 'aria-label': 'select all shown',
    onchange: (e) => { for (const b of boxes) b.checked = e.target.checked; onSelect(); } });
  const matching = Object.keys(filter).length ? filter : { all: true };
  const scope = Object.keys(filter).length ? `all ${listing.total} matching` : `all ${listing.total}`;
  const withSelection = (verb) => () => {
    const ids = selected();
    if (ids.length === 0) return notify('Select dead letters first.', true);
    act(subscriber, verb, { ids }, `${ids.length} selected`, refresh);
  };
  const toolbar = el('div', { class: 'toolbar', id: 'dlq-actions' },
    count,
    action('Replay selected', withSelection('replay'), 'primary', 'replay-selected'),
    action('Purge selected', withSelection('purge'), 'danger', 'purge-selected'),
    action(`Replay ${scope}`, () => act(subscriber, 'replay', matching, scope, refresh), '', 'replay-matching'),
    action(`Purge ${scope}`, () => act(subscriber, 'purge', matching, scope, refresh), 'danger', 'purge-matching'));
  const rows = listing.dead_letters.map((d) => {
    const box = el('input', { type: 'checkbox', value: d.id, 'aria-label': `select ${d.id}`, onchange: onSelect, disabled: !canAct() });
    boxes.push(box);
    const correlation = (d.fields.find(([k]) => k === 'correlationid') || [])[1] || '';
    const href = `#/letter?subscriber=${enc(subscriber)}&entry=${enc(d.id)}`;
    return el('tr', { dataset: { entry: d.id } },
      el('td', {}, box),
      el('td', { class: 'mono' }, el('a', { href }, d.id)),
      el('td', { class: 'wrap', dataset: { col: 'type' } }, d.event_type),
      el('td', { class: 'mono', dataset: { col: 'kind' } }, d.kind),
      el('td', { class: 'wrap', dataset: { col: 'reason' } }, short(d.reason, 200)),
      el('td', { class: 'num' }, d.attempts),
      el('td', { class: 'nowrap' }, stamp(d.last_failure)),
      // A UUID v7 begins with its time, alike for letters of one incident: its end tells them apart.
      el('td', { class: 'mono', title: d.event_id }, d.event_id.length > 14 ? '…' + d.event_id.slice(-12) : d.event_id),
      el('td', { class: 'mono' }, correlation));
  });
  if (!canAct()) all.disabled = true;
  return el('div', {},
    toolbar,
    el('div', { class: 'scroll' }, el('table', { id: 'dlq-list' },
      el('thead', {}, el('tr', {}, el('th', {}, all),
        ['entry', 'type', 'kind', 'reason', 'attempts', 'last failure', 'event id', 'correlation'].map((h) =>
          el('th', { class: h === 'attempts' ? 'num' : '' }, h)))),
      el('tbody', {}, rows))));
}

// Replay or purge `selection`; a large one answers with a job whose bar follows it.
async function act(subscriber, verb, selection, what, refresh) {
  if (verb === 'purge' && !confirm(`Purge ${what} dead letter(s) of ${subscriber}? This cannot be undone.`)) return;
  try {
    const reply = await api(`/api/dlq/${enc(subscriber)}/${verb}`, { method: 'POST', body: selection });
    if (reply.job) {
      notify(`${verb} of ${what} started as job ${reply.job}.`);
      watchJob(reply.job);
    } else {
      const n = verb === 'replay' ? reply.replayed : reply.purged;
      notify(`${verb === 'replay' ? 'Replayed' : 'Purged'} ${n} dead letter(s) of ${subscriber}.`);
      refresh();
    }
  } catch (e) {
    if (e.status !== 401) notify(`${verb} failed: ${e.message}`, true);
  }
}

// ---------------------------------------------------------------- jobs

async function loadJobs() {
  const jobs = await api('/api/jobs');
  const now = Date.now();
  for (const job of jobs) {
    if (job.state === 'running' || now - (job.finished_ms || now) < JOB_RECENT_MS) {
      showJob(job);
      if (job.state === 'running') watchJob(job.id);
    }
  }
}

function showJob(job) {
  let row = state.jobs.get(job.id);
  if (!row) {
    const bar = el('progress', { max: 1, value: 0 });
    const text = el('span', { class: 'job-text' });
    const counts = el('span', { class: 'job-count mono' });
    const close = el('button', { type: 'button', 'aria-label': 'dismiss', hidden: true,
      onclick: () => { row.node.remove(); state.jobs.delete(job.id); } }, '×');
    row = { node: el('div', { class: 'job', id: `job-${job.id}` }, text, bar, el('span', {}, counts, ' ', close)), bar, text, counts, close };
    state.jobs.set(job.id, row);
    $('jobs').append(row.node);
  }
  const total = Math.max(0, Number(job.total) || 0);
  const done = Math.min(total, Math.max(0, Number(job.done) || 0));
  row.bar.max = Math.max(1, total);
  row.bar.value = job.state === 'done' && total === 0 ? 1 : done;
  row.node.dataset.state = job.state;
  row.node.dataset.done = String(done);
  row.node.dataset.total = String(total);
  const selection = typeof job.selection === 'string' ? job.selection : JSON.stringify(job.selection);
  row.text.textContent = `${job.action} · ${job.subscriber} · ${short(selection, 80)} · by ${job.by}`;
  const acted = job.count === undefined ? '' : `, ${job.count} ${job.action === 'purge' ? 'purged' : 'replayed'}`;
  const tail = job.state === 'failed' ? ` failed: ${job.error || 'see the host log'}` : job.state === 'done' ? ` done${acted}` : '';
  row.counts.textContent = `${done} / ${total}${tail}`;
  row.counts.className = 'job-count mono ' + (job.state === 'failed' ? 'bad' : job.state === 'done' ? 'ok' : '');
  row.close.hidden = job.state === 'running';
}

// Follow a job until it ends, then redraw the dead letters if they are on screen.
function watchJob(id) {
  if (state.jobs.get(id)?.watching) return;
  const poll = async () => {
    if (state.me === null) return;
    let job;
    try {
      job = await api(`/api/jobs/${enc(id)}`);
    } catch (e) {
      if (e.status !== 401) setTimeout(poll, JOB_POLL_MS * 5);
      return;
    }
    if (state.me === null) return;
    showJob(job);
    state.jobs.get(id).watching = job.state === 'running';
    if (job.state === 'running') {
      setTimeout(poll, JOB_POLL_MS);
    } else {
      const n = job.count ?? job.done;
      notify(`Job ${id}: ${job.action} ${job.state}, ${n} of ${job.total} ${job.action === 'purge' ? 'purged' : 'replayed'}.`, job.state === 'failed');
      if (location.hash.startsWith('#/dlq')) route();
    }
  };
  showJob({ id, action: '…', subscriber: '…', selection: '', by: '…', state: 'running', done: 0, total: 0 });
  state.jobs.get(id).watching = true;
  poll();
}

// ---------------------------------------------------------------- one dead letter

VIEWS.letter = async function (root, params, generation) {
  const subscriber = params.get('subscriber') || '';
  const entry = params.get('entry') || '';
  const letter = await api(`/api/dlq/${enc(subscriber)}/letters/${enc(entry)}`);
  if (!current(generation)) return;
  const back = dlqHash(subscriber, {});
  const gone = () => (location.hash = back);
  const meta = letter.meta || {};
  root.append(
    el('p', {}, el('a', { href: back }, `← dead letters of ${subscriber}`)),
    el('h1', {}, 'Dead letter ', el('span', { class: 'mono' }, letter.entry_id)),
    el('div', { class: 'toolbar' },
      action('Replay', () => act(subscriber, 'replay', { ids: [letter.entry_id] }, 'this', gone), 'primary', 'letter-replay'),
      action('Purge', () => act(subscriber, 'purge', { ids: [letter.entry_id] }, 'this', gone), 'danger', 'letter-purge')),
    el('div', { class: 'columns' },
      el('div', {},
        el('h2', {}, 'Event'),
        el('dl', { class: 'pairs', id: 'letter-event' },
          Object.entries(letter.event || {}).map(([k, v]) => [el('dt', {}, k), el('dd', { class: 'mono', dataset: { attr: k } }, value(v))])),
        el('h2', {}, 'Payload ', el('span', { class: 'muted' }, payloadNote(letter.payload || {}))),
        payloadView(letter.payload || { kind: 'text', text: '' })),
      el('div', {},
        el('h2', {}, 'Failure'),
        el('dl', { class: 'pairs', id: 'letter-meta' },
          pair('reason', meta.reason), pair('kind', meta.kind), pair('attempts', meta.attempts),
          pair('first failure', time(meta.first_failure_ms)), pair('last failure', time(meta.last_failure_ms)),
          pair('host', meta.host), pair('plugin version', meta.plugin_version)),
        editsView(letter.edits || []),
        editForm(subscriber, letter, gone))),
  );
};

function payloadNote(payload) {
  const size = payload.bytes === undefined ? '' : `, ${payload.bytes} bytes`;
  return `(${payload.kind || 'text'}${size}${payload.truncated ? ', shown cut short' : ''})`;
}

function pair(k, v) {
  return [el('dt', {}, k), el('dd', {}, v === undefined || v === null || v === '' ? '–' : String(v))];
}

// JSON tokens: a string (a key when a colon follows), a number, a literal, punctuation.
const JSON_TOKEN = /("(?:\\.|[^"\\])*")(\s*:)?|(-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)|\b(true|false|null)\b|([{}[\],])/g;

function payloadView(payload) {
  const pre = el('pre', { class: 'payload', id: 'letter-payload', dataset: { kind: payload.kind } });
  const text = String(payload.text ?? '');
  if (payload.kind !== 'json') {
    pre.textContent = text;
    return pre;
  }
  let at = 0;
  for (const m of text.matchAll(JSON_TOKEN)) {
    if (m.index > at) pre.append(text.slice(at, m.index));
    if (m[1] !== undefined) {
      pre.append(el('span', { class: m[2] ? 'k' : 's' }, m[1]));
      if (m[2]) pre.append(m[2]);
    } else if (m[3] !== undefined) pre.append(el('span', { class: 'n' }, m[3]));
    else if (m[4] !== undefined) pre.append(el('span', { class: 'b' }, m[4]));
    else pre.append(el('span', { class: 'p' }, m[5]));
    at = m.index + m[0].length;
  }
  if (at < text.length) pre.append(text.slice(at));
  return pre;
}

function editsView(edits) {
  if (edits.length === 0) return null;
  return [
    el('h2', {}, 'Edits'),
    el('ul', { id: 'letter-edits' }, edits.map((e) => el('li', {}, `${time(e.at_ms)} by ${e.by}: `, value(e.fields)))),
  ];
}

// Attributes an edit may not change: the replay keeps the event's identity.
const FIXED = new Set(['id', 'specversion', 'data']);

function editForm(subscriber, letter, done) {
  const payload = letter.payload || { kind: 'text', text: '' };
  // A payload shown cut short cannot be edited whole: only its attributes can.
  const binary = payload.kind === 'binary' || payload.truncated === true;
  const data = el('textarea', { id: 'edit-data', name: 'data', spellcheck: 'false', disabled: binary || !canAct() });
  data.value = binary ? '' : String(payload.text ?? '');
  const attrs = Object.entries(letter.event || {}).filter(([k]) => !FIXED.has(k));
  const inputs = attrs.map(([k, v]) => {
    const input = el('input', { id: `edit-attr-${k}`, name: k, disabled: !canAct() });
    input.value = v === null || v === undefined ? '' : String(v);
    input.dataset.original = input.value;
    return el('label', {}, k, input);
  });
  // An optional attribute the event lacks (subject, partitionkey, ...) may be added.
  const extraName = el('input', { id: 'edit-extra-name', placeholder: 'attribute', disabled: !canAct() });
  const extraValue = el('input', { id: 'edit-extra-value', placeholder: 'value', disabled: !canAct() });
  const error = el('p', { class: 'error', id: 'edit-error', role: 'alert' });
  const submit = el('button', { type: 'submit', class: 'primary', id: 'edit-replay', disabled: !canAct() }, 'Replay with these changes');
  if (!canAct()) submit.title = 'needs the operator role';
  const send = async (e) => {
    e.preventDefault();
    error.textContent = '';
    const body = { attributes: {} };
    if (!binary && data.value !== String(payload.text ?? '')) body.data = data.value;
    for (const label of inputs) {
      const input = label.querySelector('input');
      if (input.value !== input.dataset.original) body.attributes[input.name] = input.value;
    }
    if (extraName.value.trim()) body.attributes[extraName.value.trim()] = extraValue.value;
    if (body.data === undefined && Object.keys(body.attributes).length === 0) {
      error.textContent = 'Nothing changed: use Replay to replay it as it is.';
      return;
    }
    if (body.data !== undefined && payload.kind === 'json') {
      try {
        JSON.parse(body.data);
      } catch (x) {
        error.textContent = `The payload is not JSON: ${x.message}`;
        return;
      }
    }
    submit.disabled = true;
    try {
      const reply = await api(`/api/dlq/${enc(subscriber)}/letters/${enc(letter.entry_id)}/edit`, { method: 'POST', body });
      notify(`Edited and replayed ${reply.replayed} dead letter (event ${letter.event?.id ?? ''}).`);
      done();
    } catch (x) {
      submit.disabled = false;
      if (x.status !== 401) error.textContent = `Edit failed: ${x.message}`;
    }
  };
  return el('form', { class: 'edit', id: 'edit-form', onsubmit: send },
    el('h2', {}, 'Edit and replay'),
    el('p', { class: 'muted' }, binary
      ? 'This payload (binary, or too large to show whole) is replayed as it is; its attributes may be changed.'
      : 'Replayed as the same event id; the edit is recorded on the event and in the audit trail.'),
    el('label', { for: 'edit-data' }, 'payload'), data,
    inputs,
    el('label', {}, 'add an attribute'), el('div', { class: 'pair' }, extraName, extraValue),
    error, submit);
}

// ---------------------------------------------------------------- find

VIEWS.find = async function (root, params, generation) {
  const by = params.has('id') ? 'id' : 'correlation';
  const wanted = params.get(by) || '';
  const select = el('select', { id: 'find-by', name: 'by' },
    el('option', { value: 'correlation' }, 'correlation id'), el('option', { value: 'id' }, 'event id'));
  select.value = by;
  const input = el('input', { id: 'find-value', name: 'value', value: wanted, size: 44, required: true });
  root.append(
    el('h1', {}, 'Find an event'),
    el('form', { class: 'toolbar', id: 'find-form', onsubmit: (e) => {
      e.preventDefault();
      location.hash = `#/find?${select.value}=${enc(input.value.trim())}`;
    } }, select, input, el('button', { type: 'submit', class: 'primary' }, 'Find')),
  );
  if (!wanted) return;
  const found = await api(`/api/find?${by}=${enc(wanted)}`);
  if (!current(generation)) return;
  const events = found.events || [];
  root.append(events.length === 0
    ? el('p', { class: 'muted', id: 'find-none' }, 'No event found.')
    : el('ul', { class: 'tree', id: 'find-tree' }, events.map(eventNode)));
  if (found.scanned !== undefined) {
    root.append(el('p', { class: found.truncated ? 'warn' : 'muted' }, `${found.scanned} stream entries read`,
      found.truncated ? ': a stream was longer than the search reads, older events may be missing' : ''));
  }
};

function eventNode(e) {
  const where = (e.where || []).map((w) =>
    el('span', { class: `badge ${w.status}`, title: w.detail || '', dataset: { subscriber: w.subscriber, status: w.status } },
      `${w.subscriber}: ${w.status}`, w.detail ? ` · ${short(w.detail, 60)}` : ''));
  const children = e.children || [];
  return el('li', { dataset: { event: e.event_id } },
    el('div', { class: 'node' },
      el('strong', {}, e.type), ' ', el('span', { class: 'mono muted' }, e.event_id),
      el('div', { class: 'muted' }, `${e.stream} ${e.entry_id || ''}`,
        e.correlation ? ` · correlation ${e.correlation}` : '', e.causation ? ` · caused by ${e.causation}` : ''),
      el('div', { class: 'where' }, where.length ? where : el('span', { class: 'muted' }, 'no subscriber has it'))),
    children.length ? el('ul', {}, children.map(eventNode)) : null);
}

// ---------------------------------------------------------------- plugins

VIEWS.plugins = async function (root, _params, generation) {
  const plugins = await api('/api/plugins');
  if (!current(generation)) return;
  root.append(el('h1', {}, 'Plugins'),
    el('table', { id: 'plugins' },
      el('thead', {}, el('tr', {}, ['plugin', 'version', 'state', 'subscriptions', 'grants', 'limits', 'last reload'].map((h) => el('th', {}, h)))),
      el('tbody', {}, plugins.map(pluginRow))));
};

function bytes(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1 && n % 1024 === 0) {
    n /= 1024;
    i += 1;
  }
  return `${n} ${units[i]}`;
}

// Limits as the API gives them, with byte counts (memory, *_bytes) made readable.
function readableLimits(limits) {
  if (!limits || typeof limits !== 'object') return limits;
  return Object.fromEntries(Object.entries(limits).map(([k, v]) =>
    [k, typeof v === 'number' && (k === 'memory' || k.endsWith('_bytes')) ? bytes(v) : v]));
}

function pluginRow(p) {
  const subscriptions = (p.subscriptions || []).map((s) =>
    el('div', { class: 'mono' }, `${s.stream}: ${s.event_type}`, s.versions && s.versions.length ? ` v${s.versions.join(',')}` : ''));
  const why = p.reason || p.error;
  const reload = p.last_reload_ms ? time(p.last_reload_ms) : p.loaded_at || '–';
  return el('tr', { dataset: { plugin: p.name } },
    el('td', {}, el('strong', {}, p.name)),
    el('td', { class: 'mono', title: p.version || '' }, short(p.version || '–', 14)),
    el('td', {}, el('span', { class: `badge ${p.state}` }, p.state), why ? el('div', { class: 'error' }, why) : null),
    el('td', {}, subscriptions.length ? subscriptions : '–'),
    el('td', {}, value(p.grants)),
    el('td', {}, value(readableLimits(p.limits))),
    el('td', {}, reload));
}

// ---------------------------------------------------------------- audit

const AUDIT_KNOWN = new Set(['id', 'time', 'token', 'action', 'subscriber', 'selection', 'count']);

VIEWS.audit = async function (root, _params, generation) {
  const entries = await api('/api/audit?limit=200');
  if (!current(generation)) return;
  root.append(el('h1', {}, 'Audit trail'),
    el('p', { class: 'muted' }, 'Every operator action, newest first (also `ferry audit`).'),
    entries.length === 0 ? el('p', { class: 'muted' }, 'Nothing recorded yet.') :
    el('table', { id: 'audit' },
      el('thead', {}, el('tr', {}, ['time', 'token', 'action', 'subscriber', 'selection', 'count', 'details'].map((h) =>
        el('th', { class: h === 'count' ? 'num' : '' }, h)))),
      el('tbody', {}, entries.map((a) => el('tr', { dataset: { entry: a.id, action: a.action } },
        el('td', { class: 'nowrap' }, stamp(a.time)), el('td', {}, a.token), el('td', {}, a.action), el('td', {}, a.subscriber),
        el('td', { class: 'mono wrap' }, a.selection), el('td', { class: 'num' }, a.count),
        el('td', {}, details(a)))))));
};

// What an entry carries beyond the common columns (an edit's changed fields, say).
function details(entry) {
  const extra = Object.entries(entry).filter(([k]) => !AUDIT_KNOWN.has(k));
  return extra.length ? value(Object.fromEntries(extra)) : '';
}

// ---------------------------------------------------------------- start

document.addEventListener('DOMContentLoaded', () => {
  $('login-form').addEventListener('submit', (e) => login(e).catch((x) => ($('login-error').textContent = x.message)));
  $('logout').addEventListener('click', () => logout().catch(() => {}));
  window.addEventListener('hashchange', route);
  if (localStorage.getItem(SESSION)) enter();
  else signedOut('');
});
