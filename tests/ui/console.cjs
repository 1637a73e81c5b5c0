// Drives the console (/ui/) in headless Chromium through playwright-core, as a user would.
//   node console.cjs tour URL SCREENSHOT KEY VALUE   cluster page, a key set, a config
//       published, an instance disabled; prints what the page showed, as JSON
//   node console.cjs login URL USER PASSWORD         logs in on a node with auth on
// Any page error, or any request to somewhere other than the node, is reported.
'use strict';
const { chromium } = require('playwright-core');

const ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

async function open(url) {
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ARGS });
  const page = await browser.newPage();
  const errors = [];
  const origin = new URL(url).origin;
  page.on('pageerror', (e) => errors.push('page error: ' + e.message));
  page.on('console', (m) => { if (m.type() === 'error') errors.push('console: ' + m.text()); });
  page.on('request', (r) => {
    if (new URL(r.url()).origin !== origin) errors.push('request beyond the node: ' + r.url());
  });
  return { browser, page, errors };
}

// The members table once it shows all three as the leader sees them (reachable, with a lag).
async function members(page) {
  await page.waitForFunction(() => {
    const rows = [...document.querySelectorAll('#members tbody tr')];
    return rows.length === 3 && rows.every((r) => r.children[4].textContent === 'alive' && r.children[6].textContent !== '-');
  }, null, { timeout: 20000 });
  return page.$$eval('#members tbody tr', (rows) => rows.map((r) => ({
    id: r.dataset.id, role: r.querySelector('.raft-role').textContent, reachable: r.children[4].textContent,
    lag: r.children[6].textContent,
  })));
}

async function tour(url, shot, key, value) {
  const { browser, page, errors } = await open(url);
  await page.goto(url + '#cluster');
  const shown = await members(page);
  const leader = await page.textContent('[data-fact="leader"]');

  await page.click('nav a[data-tab=keys]');
  await page.fill('#kv-set [name=key]', key);
  await page.fill('#kv-set [name=value]', value);
  await page.click('#kv-set button');
  await page.waitForSelector(`#kv-table tr[data-key="${key}"]`);

  await page.click('nav a[data-tab=configs]');
  await page.fill('#cfg-edit [name=dataId]', 'ui.json');
  await page.selectOption('#cfg-edit [name=type]', 'json');
  await page.fill('#cfg-edit [name=content]', '{"n": 1.0}');
  await page.click('#cfg-edit button');
  await page.waitForSelector('#cfg-edit[data-published="1"]');
  // Edited: loaded as stored (not re-read as JSON), changed, published again with its type.
  await page.reload();
  await page.click('nav a[data-tab=configs]');
  const cfg = '#cfg-table tr[data-config="public/DEFAULT_GROUP/ui.json"]';
  await page.click(`${cfg} button`);
  await page.waitForFunction(() => document.querySelector('#cfg-edit [name=content]').value !== '');
  const loaded = await page.$eval('#cfg-edit', (f) => ({ content: f.content.value, type: f.type.value }));
  await page.fill('#cfg-edit [name=content]', '{"n": 2.0}');
  await page.click('#cfg-edit button');
  await page.waitForSelector('#cfg-edit[data-published="1"]');

  await page.click('nav a[data-tab=services]');
  const row = '[data-service="web"] tr[data-instance="127.0.0.1:9001"]';
  await page.waitForSelector(row);
  await page.uncheck(`${row} input[type=checkbox]`);
  await page.fill(`${row} input.weight`, '3');
  await page.click(`${row} button`);
  // The page marks the save done once the node answered and the list was read again.
  await page.waitForSelector('#svc-list[data-saved="web/127.0.0.1:9001"]');
  const saved = await page.$eval(row, (r) => ({
    enabled: r.querySelector('input[type=checkbox]').checked, weight: r.querySelector('input.weight').value,
  }));

  await page.click('nav a[data-tab=cluster]');
  await members(page);
  await page.screenshot({ path: shot, fullPage: true });
  const shownError = await page.$eval('#error', (e) => (e.hidden ? '' : e.textContent));
  await browser.close();
  return { members: shown, leader, saved, loaded, errors: shownError ? [...errors, 'page said: ' + shownError] : errors };
}

async function login(url, user, password) {
  const { browser, page, errors } = await open(url);
  await page.goto(url + '#cluster');
  await page.waitForSelector('#login:not([hidden])');
  await page.fill('#login-form [name=username]', user);
  await page.fill('#login-form [name=password]', password);
  await page.click('#login-form button');
  await page.waitForSelector('#members tbody tr');
  const who = await page.textContent('#who');
  await browser.close();
  // The 403 before logging in is expected: the page answers it with the login form.
  return { who, errors: errors.filter((e) => !e.includes('403')) };
}

(async () => {
  const [mode, ...args] = process.argv.slice(2);
  const result = mode === 'tour' ? await tour(...args) : await login(...args);
  console.log(JSON.stringify(result));
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
