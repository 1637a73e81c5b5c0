// The dister console: one page over the node's public HTTP APIs only (dister's /status,
// /node, /kv, /service, /auth/login and Nacos' /nacos/v1/cs/configs). Nothing is fetched
// from anywhere but the node that served it.
'use strict';

const CONFIG_PREFIX = 'nacos/config/';
const state = { token: sessionStorage.getItem('dister-token') || '', timer: null };

const $ = (sel, root = document) => root.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c ?? '')));
  return e;
}

function showError(message) {
  const p = $('#error');
  p.textContent = message;
  p.hidden = !message;
}

function showLogin() {
  $('#login').hidden = false;
  document.querySelectorAll('[data-page]').forEach((s) => { s.hidden = true; });
}

// One call of the node's API, with the login token (if any) as a bearer token, never in the
// URL. dister's answers are {result, message, data}; Nacos' are text, returned as they came
// with `raw` (a config's content is not JSON to reformat), with the response's headers.
async function api(method, path, { query = {}, json, form, raw = false } = {}) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(query)) {
    if (v !== undefined && v !== null) url.searchParams.set(k, v);
  }
  const headers = {};
  if (state.token) headers.Authorization = 'Bearer ' + state.token;
  let body;
  if (json !== undefined) {
    headers['Content-Type'] = 'application/json';
    body = JSON.stringify(json);
  } else if (form) {
    headers['Content-Type'] = 'application/x-www-form-urlencoded';
    body = new URLSearchParams(form).toString();
  }
  const res = await fetch(url, { method, headers, body });
  const text = await res.text();
  let data = text;
  if (!raw) {
    try { data = JSON.parse(text); } catch (_) { /* Nacos answers text */ }
  }
  if (res.status === 401 || res.status === 403) {
    // A token that no longer works goes; the node says why (a cluster token is not a login).
    state.token = '';
    sessionStorage.removeItem('dister-token');
    showLogin();
    throw new Error((data && data.message) || 'log in first');
  }
  if (!res.ok) throw new Error((data && data.message) || text || res.statusText);
  return raw ? { text, headers: res.headers } : data;
}

async function guarded(work) {
  try {
    showError('');
    await work();
  } catch (e) {
    showError(e.message);
  }
}

// ---- cluster -------------------------------------------------------------------------

async function loadCluster() {
  const s = (await api('GET', '/status')).data;
  const nodes = (await api('GET', '/node')).data;
  const summary = $('#cluster-summary');
  summary.replaceChildren();
  const facts = [
    ['this node', `${s.id} (${s.role})`],
    ['leader', s.leader ?? 'none'],
    ['term', s.term],
    ['commit index', s.commit_index],
    ['applied index', s.applied_index],
    ['last log index', s.last_log_index],
    ['snapshot index', s.snapshot_index],
  ];
  for (const [k, v] of facts) summary.append(el('dt', {}, k), el('dd', { 'data-fact': k }, v));
  const newest = Math.max(0, ...nodes.map((n) => n.last_log_index ?? 0));
  const rows = nodes.map((n) => el('tr', { 'data-id': n.id, class: n.raft_role === 'leader' ? 'leader' : '' },
    el('td', {}, n.id),
    el('td', {}, n.address),
    el('td', {}, n.member_role + (n.promoting ? ' (promoting)' : '')),
    el('td', { class: 'raft-role' }, n.raft_role),
    el('td', { class: n.status }, n.status),
    el('td', {}, n.last_log_index ?? '-'),
    el('td', {}, n.last_log_index == null ? '-' : newest - n.last_log_index)));
  $('#members tbody').replaceChildren(...rows);
}

// ---- keys ----------------------------------------------------------------------------

async function loadKeys() {
  const prefix = $('#kv-search [name=prefix]').value;
  const pairs = (await api('GET', '/kv', { query: { prefix } })).data || {};
  const rows = Object.entries(pairs).map(([k, v]) => el('tr', { 'data-key': k },
    el('td', {}, k),
    el('td', { class: 'value' }, v),
    el('td', {}, el('button', { onclick: () => guarded(async () => {
      await api('DELETE', '/kv', { json: [k] });
      await loadKeys();
    }) }, 'Delete'))));
  $('#kv-table tbody').replaceChildren(...rows);
}

// ---- configs -------------------------------------------------------------------------

// Nacos' public namespace is the empty tenant.
const tenantParam = (t) => (t === 'public' ? '' : t);

async function loadConfigs() {
  const want = Object.fromEntries(new FormData($('#cfg-filter')));
  const pairs = (await api('GET', '/kv', { query: { prefix: CONFIG_PREFIX } })).data || {};
  const rows = [];
  for (const key of Object.keys(pairs)) {
    const [tenant, group, ...rest] = key.slice(CONFIG_PREFIX.length).split('/');
    const dataId = rest.join('/');
    if ((want.tenant && want.tenant !== tenant) || (want.group && want.group !== group)) continue;
    const id = { dataId, group, tenant: tenantParam(tenant) };
    rows.push(el('tr', { 'data-config': `${tenant}/${group}/${dataId}` },
      el('td', {}, tenant), el('td', {}, group), el('td', {}, dataId),
      el('td', {},
        el('button', { onclick: () => guarded(() => editConfig(id)) }, 'Edit'), ' ',
        el('button', { onclick: () => guarded(async () => {
          await api('DELETE', '/nacos/v1/cs/configs', { query: id });
          await loadConfigs();
        }) }, 'Delete'))));
  }
  $('#cfg-table tbody').replaceChildren(...rows);
}

async function editConfig(id) {
  const { text, headers } = await api('GET', '/nacos/v1/cs/configs', { query: id, raw: true });
  const f = $('#cfg-edit');
  f.tenant.value = id.tenant;
  f.group.value = id.group;
  f.dataId.value = id.dataId;
  f.content.value = text;
  // Published again with the type it has, not the default.
  const type = headers.get('Config-Type') || 'text';
  if (![...f.type.options].some((o) => o.value === type)) f.type.append(el('option', {}, type));
  f.type.value = type;
}

// ---- services ------------------------------------------------------------------------

async function loadServices() {
  const services = (await api('GET', '/service')).data || [];
  const blocks = services.map((svc) => {
    const rows = (svc.node || []).map((n, i) => {
      const weight = el('input', { class: 'weight', type: 'number', min: 0, step: 'any', value: n.weight });
      const enabled = el('input', { type: 'checkbox', checked: n.enabled });
      const save = el('button', { onclick: () => guarded(async () => {
        const w = weight.value.trim() === '' ? NaN : Number(weight.value);
        if (!Number.isFinite(w) || w < 0 || w > 10000) throw new Error('weight must be a number from 0 to 10000');
        // This instance alone goes back, every field as it came but these two: the
        // service's other instances are not touched.
        const copy = { ...n, weight: w, enabled: enabled.checked };
        delete copy.health;
        delete copy.status;
        await api('PUT', '/service/instance', { query: { service: svc.name }, json: copy });
        await loadServices();
        $('#svc-list').dataset.saved = `${svc.name}/${n.host}:${n.port}`;
      }) }, 'Save');
      return el('tr', { 'data-instance': `${n.host}:${n.port}` },
        el('td', {}, `${n.host}:${n.port}`),
        el('td', { class: n.health }, `${n.health} (status ${n.status})`),
        el('td', {}, n.check || (n.ephemeral ? 'beats' : '-')),
        el('td', {}, weight), el('td', {}, enabled), el('td', {}, save));
    });
    return el('div', { 'data-service': svc.name },
      el('h3', {}, `${svc.name} `, el('small', {}, svc.type || '')),
      el('table', {},
        el('thead', {}, el('tr', {}, ...['instance', 'health', 'check', 'weight', 'enabled', ''].map((h) => el('th', {}, h)))),
        el('tbody', {}, ...rows)));
  });
  $('#svc-list').replaceChildren(...blocks);
}

// ---- navigation ----------------------------------------------------------------------

const pages = { cluster: loadCluster, keys: loadKeys, configs: loadConfigs, services: loadServices };

function show(tab) {
  if (!pages[tab]) tab = 'cluster';
  $('#login').hidden = true;
  document.querySelectorAll('[data-page]').forEach((s) => { s.hidden = s.id !== tab; });
  document.querySelectorAll('nav a').forEach((a) => a.classList.toggle('active', a.dataset.tab === tab));
  clearTimeout(state.timer);
  state.page = tab;
  if (tab === 'cluster') poll();
  else guarded(pages[tab]);
}

// The cluster page refreshes 2 s after each answer: polls never pile up behind a slow one.
async function poll() {
  await guarded(loadCluster);
  if (state.page === 'cluster') state.timer = setTimeout(poll, 2000);
}

$('#login-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  guarded(async () => {
    const creds = Object.fromEntries(new FormData(ev.target));
    const answer = await api('POST', '/auth/login', { json: creds });
    state.token = answer.data.accessToken;
    sessionStorage.setItem('dister-token', state.token);
    $('#who').textContent = creds.username;
    show(location.hash.slice(1));
  });
});

$('#kv-search').addEventListener('submit', (ev) => { ev.preventDefault(); guarded(loadKeys); });
$('#kv-set').addEventListener('submit', (ev) => {
  ev.preventDefault();
  guarded(async () => {
    const { key, value } = Object.fromEntries(new FormData(ev.target));
    await api('POST', '/kv', { json: { [key]: value } });
    ev.target.reset();
    await loadKeys();
    $('#kv-set').dataset.done = key;
  });
});
$('#cfg-filter').addEventListener('submit', (ev) => { ev.preventDefault(); guarded(loadConfigs); });
$('#cfg-edit').addEventListener('submit', (ev) => {
  ev.preventDefault();
  guarded(async () => {
    const form = Object.fromEntries(new FormData(ev.target));
    form.tenant = tenantParam(form.tenant || '');
    await api('POST', '/nacos/v1/cs/configs', { form });
    await loadConfigs();
    ev.target.dataset.published = String(Number(ev.target.dataset.published || 0) + 1);
  });
});

window.addEventListener('hashchange', () => show(location.hash.slice(1)));
show(location.hash.slice(1));
