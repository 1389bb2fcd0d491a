// The console's real-browser walk (issue 27): playwright-core drives the system's Chromium
// (`executablePath`; nothing downloads a browser) through the console served by a running
// host that host/tests/all/console_browser.rs started and seeded.
//
// Inputs (environment): FERRY_CONSOLE_URL (http://127.0.0.1:PORT), FERRY_OPERATOR_TOKEN,
// FERRY_VIEWER_TOKEN, FERRY_SCREENSHOTS (a folder), CHROMIUM (default /usr/bin/chromium).
// The seed it expects: subscriber `rec`; a dead letter with correlation `corr-walk` and a
// subject; a group of 1,000 `PaymentCaptured` traps; 3 `Refund` letters; one letter whose
// type, reason and payload carry markup; a handled event with correlation `corr-walk`.
//
// Exits 0 when every step passed and the page logged no console error and threw nothing;
// otherwise prints what failed (and saves failure.png) and exits 1.
import { mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const need = (name) => {
  const v = process.env[name];
  if (!v) {
    console.error(`walk: ${name} is not set`);
    process.exit(2);
  }
  return v;
};
const base = need('FERRY_CONSOLE_URL').replace(/\/$/, '');
const operatorToken = need('FERRY_OPERATOR_TOKEN');
const viewerToken = need('FERRY_VIEWER_TOKEN');
const shots = need('FERRY_SCREENSHOTS');
mkdirSync(shots, { recursive: true });
rmSync(join(shots, 'failure.png'), { force: true });

// What the seeded markup would do if it ever became an element or ran.
const MARKUP = ['<img src=x onerror=', '<script>', '<b id="injected">'];

const problems = [];
const step = (text) => console.log(`walk: ${text}`);
const check = (ok, what) => {
  if (!ok) throw new Error(`check failed: ${what}`);
};

function watch(page, who) {
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push(`${who}: console error: ${m.text()} (${m.location().url || 'page'})`);
  });
  page.on('pageerror', (e) => problems.push(`${who}: page error: ${e.message}`));
  page.on('dialog', (d) => d.accept());
  page.setDefaultTimeout(30_000);
}

async function shot(page, name) {
  await page.screenshot({ path: join(shots, `console-${name}.png`), fullPage: false });
}

async function login(page, token) {
  await page.goto(`${base}/console`);
  await page.locator('#login').waitFor({ state: 'visible' });
  await page.fill('#login-token', token);
  await page.click('#login-form button[type=submit]');
  await page.locator('#top').waitFor({ state: 'visible' });
}

// No element was made of the seeded markup and none of its handlers ran.
async function noInjection(page, where) {
  const found = await page.evaluate(() => ({
    injected: document.querySelectorAll('#injected, img, script:not([src])').length,
    owned: window.__owned,
    title: document.title,
  }));
  check(found.injected === 0, `${where}: an element was made of markup (${JSON.stringify(found)})`);
  check(found.owned === undefined, `${where}: a handler of the markup ran (window.__owned = ${found.owned})`);
}

async function overview(page) {
  step('overview: rows and live charts');
  await page.locator('#overview-subscribers tr[data-subscriber="rec"]').waitFor();
  for (const id of ['throughput', 'failures', 'latency']) {
    await page.locator(`#chart-${id} svg polyline`).first().waitFor({ state: 'attached' });
  }
  // Live: the overview redraws by itself.
  await page.waitForFunction(() => Number(document.querySelector('#view-overview')?.dataset.refreshes || 0) >= 2);
  const dead = await page.textContent('#overview-subscribers tr[data-subscriber="rec"] [data-col="dead_letters"]');
  check(Number(dead) >= 1005, `the overview counts the seeded dead letters (${dead})`);
}

// Back to the overview once the walk has made traffic: the charts show the replays.
async function overviewAfter(page) {
  step('overview again: the replays in the charts');
  // The finished job's bar can be dismissed.
  await page.click('#jobs .job button[aria-label="dismiss"]');
  check((await page.locator('#jobs .job').count()) === 0, 'the finished job dismissed');
  await page.click('header nav a[data-view="overview"]');
  // The history gains a point every 10 s: three of them make a chart worth a screenshot.
  await page.waitForFunction(
    () => {
      const chart = document.querySelector('#chart-throughput svg')?.dataset;
      return Number(chart?.max || 0) > 0 && Number(chart?.points || 0) >= 3;
    },
    null,
    { timeout: 60_000 },
  );
  const dead = await page.textContent('#overview-subscribers tr[data-subscriber="rec"] [data-col="dead_letters"]');
  check(Number(dead) < 1005, `the overview counts fewer dead letters now (${dead})`);
  await shot(page, 'overview');
}

// The view on screen has drawn what it fetched for the current URL.
async function settled(page) {
  await page.waitForFunction(() => {
    const view = document.querySelector('#view > div');
    return view?.dataset.ready === 'true' && view.dataset.hash === location.hash;
  });
}

async function filterDeadLetters(page, fields) {
  for (const name of ['type', 'kind', 'reason', 'since', 'until', 'correlation', 'id']) {
    await page.fill(`#filter-${name}`, fields[name] || '');
  }
  await page.click('#filter-apply');
  await page.waitForFunction(
    (f) => Object.entries(f).every(([k, v]) => new URLSearchParams(location.hash.split('?')[1]).get(k) === v),
    fields,
  );
  await settled(page);
}

async function count(page) {
  const text = await page.textContent('#dlq-count');
  return Number(text.trim().split(' ')[0]);
}

async function deadLetters(page) {
  step('dead letters: groups, then filtered by type');
  await page.click('header nav a[data-view="dlq"]');
  await page.locator('#dlq-groups tr[data-group]').first().waitFor();
  const total = await count(page);
  check(total >= 1005, `all seeded dead letters listed (${total})`);
  const reasons = await page.locator('#dlq-groups td.wrap').allTextContents();
  check(reasons.includes('wasm trap at <hex>: unreachable'), `the 1,000 traps grouped by cause: ${reasons}`);
  await shot(page, 'dead-letters');
  await filterDeadLetters(page, { type: 'Refund' });
  await page.waitForFunction(() => document.querySelector('#dlq-count')?.textContent.startsWith('3 dead letters'));
  const types = await page.locator('#dlq-list [data-col="type"]').allTextContents();
  check(types.length === 3 && types.every((t) => t === 'Refund'), `the filter shows the Refunds only: ${types}`);
}

async function editAndReplay(page) {
  step('letter: open, read, edit and replay');
  await filterDeadLetters(page, { correlation: 'corr-walk' });
  check((await count(page)) === 1, 'one dead letter with correlation corr-walk');
  await page.click('#dlq-list tbody a');
  await page.locator('#letter-payload').waitFor();
  check((await page.locator('#letter-payload span.k').count()) > 0, 'the JSON payload is highlighted');
  check((await page.textContent('#letter-event [data-attr="correlationid"]')) === 'corr-walk', 'attributes shown');
  const meta = await page.textContent('#letter-meta');
  check(meta.includes('sku bad unknown') && meta.includes('walk-host') && meta.includes('Z'), `the failure shown: ${meta}`);
  await shot(page, 'letter');
  await page.fill('#edit-data', '{"order": 17, "sku": "A-1"}');
  await page.fill('#edit-attr-subject', 'fixed by the walk');
  await page.click('#edit-replay');
  await page.waitForFunction(() => location.hash.startsWith('#/dlq'));
  await page.waitForFunction(() => /Edited and replayed 1/.test(document.querySelector('#notice')?.textContent || ''));
}

async function replayGroup(page) {
  step('group of 1,000: replay as a job, reload, the bar reaches the end');
  await filterDeadLetters(page, {});
  const group = page.locator('#dlq-groups tr', { hasText: 'wasm trap at <hex>: unreachable' });
  check((await group.locator('[data-col="count"]').textContent()) === '1000', 'the group holds 1,000');
  await group.getByRole('button', { name: 'Replay group' }).click();
  await page.locator('#jobs .job').first().waitFor();
  // The job lives in Redis: a reload shows its bar again, from /api/jobs.
  await page.reload();
  const job = page.locator('#jobs .job').first();
  await job.waitFor();
  await page.waitForFunction(() => document.querySelector('#jobs .job')?.dataset.state === 'done', null, {
    timeout: 90_000,
  });
  const bar = await job.evaluate((node) => {
    const p = node.querySelector('progress');
    return { value: p.value, max: p.max, done: node.dataset.done, total: node.dataset.total };
  });
  check(bar.total === '1000' && bar.done === '1000' && bar.value === bar.max, `the bar reached the end: ${JSON.stringify(bar)}`);
  await shot(page, 'job');
  await page.waitForFunction(() => !document.querySelector('#dlq-groups')?.textContent.includes('wasm trap at <hex>'));
}

async function purge(page) {
  step('select one Refund and replay it; purge the rest by filter');
  await filterDeadLetters(page, { type: 'Refund' });
  await page.locator('#dlq-list tbody input[type=checkbox]').first().check();
  check((await page.textContent('#dlq-selected')) === '1 selected', 'one row selected');
  await page.click('#replay-selected');
  await page.waitForFunction(() => /Replayed 1 dead letter/.test(document.querySelector('#notice')?.textContent || ''));
  await settled(page);
  await page.waitForFunction(() => document.querySelector('#dlq-count')?.textContent.startsWith('2 dead letters'));
  await page.click('#purge-matching');
  await page.waitForFunction(() => /Purged 2 dead letter/.test(document.querySelector('#notice')?.textContent || ''));
  await page.waitForFunction(() => document.querySelector('#dlq-count')?.textContent.startsWith('0 dead letters'));
}

async function find(page) {
  step('find: by correlation id, the causation tree');
  await page.click('header nav a[data-view="find"]');
  await page.selectOption('#find-by', 'correlation');
  await page.fill('#find-value', 'corr-walk');
  await page.click('#find-form button[type=submit]');
  await page.locator('#find-tree').waitFor();
  // The handled event and the edited one each caused a `Recorded` follow-up.
  await page.waitForFunction(() => document.querySelectorAll('#find-tree > li > ul > li').length >= 1);
  const handled = await page.locator('#find-tree .badge[data-status="handled"]').count();
  check(handled >= 1, 'a subscriber handled the correlated events');
  await shot(page, 'find');
}

async function audit(page) {
  step('audit: the replays, the purge and the edit, by alice');
  await page.click('header nav a[data-view="audit"]');
  await page.locator('#audit').waitFor();
  const rows = await page.locator('#audit tbody tr').evaluateAll((trs) =>
    trs.map((tr) => ({ action: tr.dataset.action, cells: [...tr.cells].map((c) => c.textContent) })),
  );
  const has = (action, n) => rows.some((r) => r.action === action && r.cells[1] === 'alice' && (n === undefined || r.cells[5] === n));
  check(has('replay', '1000'), `the group replay audited: ${JSON.stringify(rows)}`);
  check(has('purge', '2'), 'the purge audited');
  check(has('replay', '1'), 'the replay of the selected one audited');
  check(rows.some((r) => r.action !== 'replay' && r.action !== 'purge' && r.cells[1] === 'alice'), 'the edit audited');
  await shot(page, 'audit');
}

async function plugins(page) {
  step('plugins');
  await page.click('header nav a[data-view="plugins"]');
  await page.locator('#plugins tr[data-plugin="rec"]').waitFor();
  check((await page.textContent('#plugins tr[data-plugin="rec"] .badge')) === 'running', 'rec runs');
  await shot(page, 'plugins');
}

async function markup(page) {
  step('markup in a type, a reason and a payload renders as text');
  await page.click('header nav a[data-view="dlq"]');
  await filterDeadLetters(page, { kind: 'handler-reject', reason: 'window.__owned' });
  check((await count(page)) === 1, 'the marked letter found by its reason');
  const type = await page.textContent('#dlq-list [data-col="type"]');
  const reason = await page.textContent('#dlq-list [data-col="reason"]');
  check(type.includes(MARKUP[0]) && reason.includes(MARKUP[1]) && reason.includes(MARKUP[2]), `shown as text: ${type} ${reason}`);
  await noInjection(page, 'the list');
  await page.click('#dlq-list tbody a');
  await page.locator('#letter-payload').waitFor();
  const payload = await page.textContent('#letter-payload');
  check(payload.includes(MARKUP[0]), `the payload shown as text: ${payload}`);
  await noInjection(page, 'the letter');
}

async function viewer(browser) {
  step('viewer: sees everything, can do nothing');
  const context = await browser.newContext({ viewport: { width: 1360, height: 900 } });
  const page = await context.newPage();
  watch(page, 'viewer');
  await login(page, viewerToken);
  const role = await page.textContent('#who-role');
  check(role === 'viewer', `logged in as a viewer (${role})`);
  await page.click('header nav a[data-view="dlq"]');
  await page.locator('#dlq-list tbody tr').first().waitFor();
  const buttons = page.locator('#dlq-actions button, #dlq-groups button, #dlq-list input[type=checkbox]');
  const n = await buttons.count();
  check(n >= 4, `action buttons shown (${n})`);
  for (let i = 0; i < n; i++) check(await buttons.nth(i).isDisabled(), `action ${i} disabled for a viewer`);
  await shot(page, 'viewer');
  await page.click('#dlq-list tbody a');
  await page.locator('#letter-payload').waitFor();
  for (const id of ['#letter-replay', '#letter-purge', '#edit-replay', '#edit-data']) {
    check(await page.locator(id).isDisabled(), `${id} disabled for a viewer`);
  }
  await context.close();
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
});
let page;
let failed = null;
try {
  const context = await browser.newContext({ viewport: { width: 1360, height: 900 } });
  page = await context.newPage();
  watch(page, 'operator');
  step('login');
  await page.goto(`${base}/console`);
  await page.locator('#login').waitFor({ state: 'visible' });
  await shot(page, 'login');
  await login(page, operatorToken);
  check((await page.textContent('#who-role')) === 'operator', 'logged in as an operator');
  await overview(page);
  await deadLetters(page);
  await editAndReplay(page);
  await replayGroup(page);
  await purge(page);
  await find(page);
  await audit(page);
  await plugins(page);
  await markup(page);
  await overviewAfter(page);
  step('log out');
  await page.click('#logout');
  await page.locator('#login').waitFor({ state: 'visible' });
  await page.reload();
  await page.locator('#login').waitFor({ state: 'visible' });
  check((await page.locator('#view *').count()) === 0, 'nothing shown after logging out');
  await viewer(browser);
} catch (e) {
  failed = e;
  if (page) await page.screenshot({ path: join(shots, 'failure.png') }).catch(() => {});
} finally {
  await browser.close();
}
for (const p of problems) console.error(`walk: ${p}`);
if (failed) console.error(`walk: FAILED: ${failed.stack || failed}`);
if (failed || problems.length) process.exit(1);
step('every step passed, no console error');
