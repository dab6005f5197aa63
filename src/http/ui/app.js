// The FlowMason web UI: hash routes over the server's /api/v1 endpoints (the same on fm serve, fm operator
// and fm history serve). Every call carries the bearer token when there is one; a 401 shows the token
// form and clears the page. The token lives in sessionStorage only (gone with the browser session).

import { renderDag } from './dag.js';

const TOKEN_KEY = 'flowmason.token';
const RERUN_OF = 'flowmason.io/rerun-of';
const TERMINAL = new Set(['Succeeded', 'Failed', 'Cancelled', 'TimedOut']);
const main = document.getElementById('main');

// A login link (`fm serve` prints one) carries ?token=: keep it for the session, drop it from the URL.
{
  const params = new URLSearchParams(location.search);
  if (params.has('token')) {
    sessionStorage.setItem(TOKEN_KEY, params.get('token'));
    params.delete('token');
    const query = params.toString();
    history.replaceState(null, '', location.pathname + (query ? `?${query}` : '') + location.hash);
  }
}

class Unauthorized extends Error {}

// The page being shown; navigating away aborts its requests, streams and timers.
let page = new AbortController();

function esc(text) {
  return String(text ?? '').replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function showLogin(message) {
  page.abort();
  main.innerHTML = '';
  const login = document.getElementById('login');
  const error = document.getElementById('login-error');
  error.hidden = !message;
  error.textContent = message || '';
  login.hidden = false;
  document.getElementById('token').focus();
}

async function api(path, { method = 'GET', body, stream = false } = {}) {
  const headers = {};
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: page.signal,
  });
  if (response.status === 401) {
    showLogin(token ? 'The token was refused by the server.' : '');
    throw new Unauthorized();
  }
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      const answer = await response.json();
      message = answer.error || answer.message || message;
    } catch {
      // not JSON: the status line says it
    }
    const error = new Error(`${method} ${path}: ${message}`);
    error.status = response.status;
    throw error;
  }
  if (stream) return response;
  return response.json();
}

// ---- formatting -----------------------------------------------------------------------------------

const phase = (p) => `<span class="phase" data-phase="${esc(p || 'Pending')}">${esc(p || 'Pending')}</span>`;

function time(micros) {
  if (!micros) return '';
  return new Date(micros / 1000).toLocaleString(undefined, { hour12: false });
}

function duration(seconds) {
  if (seconds === undefined || seconds === null) return '';
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 120) return `${seconds.toFixed(1)} s`;
  if (seconds < 7200) return `${(seconds / 60).toFixed(1)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

const runSeconds = (r) => (r.finishedAt && r.startedAt ? (r.finishedAt - r.startedAt) / 1e6 : undefined);
const json = (value) => `<pre>${esc(JSON.stringify(value, null, 2))}</pre>`;
const runLink = (id, text) => `<a href="#/runs/${esc(id)}">${esc(text || id)}</a>`;
const pipelineLink = (ns, name) => `<a href="#/pipelines/${encodeURIComponent(ns)}/${encodeURIComponent(name)}">${esc(name)}</a>`;

function fail(error) {
  if (error instanceof Unauthorized || error.name === 'AbortError') return;
  main.insertAdjacentHTML('afterbegin', `<p class="error card">${esc(error.message)}</p>`);
}

function runsTable(runs, { showPipeline = true } = {}) {
  if (!runs.length) return '<p class="muted">No runs.</p>';
  const rows = runs.map((r) => `<tr data-run="${esc(r.runId)}">
    <td>${runLink(r.runId, r.runName || r.runId.slice(0, 8))}</td>
    ${showPipeline ? `<td>${esc(r.namespace)}/${pipelineLink(r.namespace, r.pipeline)}</td>` : ''}
    <td>${phase(r.phase)}</td><td>${esc(r.trigger)}</td><td>${time(r.acceptedAt)}</td>
    <td>${duration(runSeconds(r))}</td>
    <td>${r.labels && r.labels[RERUN_OF] ? `rerun of ${runLink(r.labels[RERUN_OF], r.labels[RERUN_OF].slice(0, 8))}` : ''}</td></tr>`);
  return `<table class="runs"><thead><tr><th>Run</th>${showPipeline ? '<th>Pipeline</th>' : ''}<th>Phase</th>
    <th>Trigger</th><th>Accepted</th><th>Duration</th><th></th></tr></thead><tbody>${rows.join('')}</tbody></table>`;
}

// ---- pages ----------------------------------------------------------------------------------------

function triggersText(spec) {
  const t = spec.triggers || {};
  const out = [];
  if (t.webhook && t.webhook.enabled !== false) out.push(`webhook${t.webhook.path ? ` ${t.webhook.path}` : ''}`);
  if (t.pubsub) out.push(`NATS ${t.pubsub.topic}`);
  return out.join(', ');
}

async function pipelinesPage(params) {
  const namespace = params.get('namespace') || '';
  const list = await api(`/api/v1/pipelines${namespace ? `?namespace=${encodeURIComponent(namespace)}` : ''}`);
  const items = list.items || [];
  const stats = await Promise.all(items.map((p) =>
    api(`/api/v1/pipelines/${encodeURIComponent(p.metadata.namespace)}/${encodeURIComponent(p.metadata.name)}/stats?window=7d`)
      .catch((e) => { if (e instanceof Unauthorized) throw e; return null; })));
  const rows = items.map((p, i) => {
    const s = p.status || {};
    const st = stats[i];
    const spec = p.spec || {};
    return `<tr data-pipeline="${esc(p.metadata.name)}">
      <td>${pipelineLink(p.metadata.namespace, p.metadata.name)}</td><td>${esc(p.metadata.namespace)}</td>
      <td>${s.phase ? phase(s.phase) : ''}</td>
      <td class="mono">${esc(spec.schedule || '')}${spec.suspend ? ' (suspended)' : ''}</td>
      <td>${esc(s.nextScheduledRun ? new Date(s.nextScheduledRun).toLocaleString(undefined, { hour12: false }) : '')}</td>
      <td>${esc(triggersText(spec))}</td>
      <td>${s.lastRunStatus ? phase(s.lastRunStatus) : ''} ${esc(s.lastRunTime ? new Date(s.lastRunTime).toLocaleString(undefined, { hour12: false }) : '')}</td>
      <td>${st && st.total ? `${Math.round(st.successRate * 100)}% of ${st.total}` : ''}</td>
      <td>${st && st.total ? duration(st.p95Seconds) : ''}</td></tr>`;
  });
  main.innerHTML = `<h1>Pipelines</h1>
    <form class="filters" id="ns-filter"><label>Namespace <input name="namespace" value="${esc(namespace)}" placeholder="all"></label>
      <button type="submit">Filter</button></form>
    ${list.source === 'history' ? '<p class="notice">No cluster behind this server: pipelines are derived from the run history.</p>' : ''}
    ${items.length ? `<table class="pipelines"><thead><tr><th>Name</th><th>Namespace</th><th>Phase</th><th>Schedule</th>
      <th>Next fire</th><th>Triggers</th><th>Last run</th><th>Success (7d)</th><th>p95 (7d)</th></tr></thead>
      <tbody>${rows.join('')}</tbody></table>` : '<p class="muted">No pipelines.</p>'}`;
  document.getElementById('ns-filter').addEventListener('submit', (e) => {
    e.preventDefault();
    const ns = new FormData(e.target).get('namespace');
    location.hash = `#/pipelines${ns ? `?namespace=${encodeURIComponent(ns)}` : ''}`;
  });
}

// The input form of a pipeline: one field per simple property of inputSchema, else a JSON editor
// prefilled with sampleInput.
function inputForm(spec) {
  const schema = spec.inputSchema || {};
  const props = schema.properties || {};
  const simple = Object.keys(props).length > 0 &&
    Object.values(props).every((p) => ['string', 'number', 'integer', 'boolean'].includes(p.type));
  const sample = spec.sampleInput && typeof spec.sampleInput === 'object' ? spec.sampleInput : {};
  if (!simple) {
    return { html: `<label>Inputs (JSON)<textarea name="inputs" class="mono">${esc(JSON.stringify(sample, null, 2))}</textarea></label>`,
      read: (form) => JSON.parse(form.elements.inputs.value || '{}') };
  }
  const required = new Set(schema.required || []);
  const fields = Object.entries(props).map(([name, p]) => {
    const value = sample[name] ?? p.default ?? '';
    const input = p.type === 'boolean'
      ? `<input type="checkbox" name="${esc(name)}" ${value ? 'checked' : ''}>`
      : `<input name="${esc(name)}" type="${p.type === 'string' ? 'text' : 'number'}" ${p.type === 'number' ? 'step="any"' : ''}
          value="${esc(value)}" ${required.has(name) ? 'required' : ''}>`;
    return `<label>${esc(name)}${p.description ? ` <span class="muted">${esc(p.description)}</span>` : ''} ${input}</label>`;
  });
  return {
    html: `<div class="filters">${fields.join('')}</div>`,
    read: (form) => Object.fromEntries(Object.entries(props).flatMap(([name, p]) => {
      const el = form.elements[name];
      if (p.type === 'boolean') return [[name, el.checked]];
      if (el.value === '') return [];
      return [[name, p.type === 'string' ? el.value : Number(el.value)]];
    })),
  };
}

function durationChart(runs) {
  const done = runs.filter((r) => runSeconds(r) !== undefined).reverse();
  if (!done.length) return '<p class="muted">No finished runs yet.</p>';
  const max = Math.max(...done.map(runSeconds), 0.001);
  const w = 600;
  const h = 130;
  const bw = Math.max(3, Math.min(28, (w - 40) / done.length - 3));
  const bars = done.map((r, i) => {
    const bh = Math.max(1, (runSeconds(r) / max) * (h - 24));
    return `<a href="#/runs/${esc(r.runId)}"><rect x="${40 + i * (bw + 3)}" y="${h - 14 - bh}" width="${bw}" height="${bh}"
      fill="var(--${r.phase.toLowerCase()})"><title>${esc(r.runName || r.runId)}: ${duration(runSeconds(r))}</title></rect></a>`;
  });
  return `<svg viewBox="0 0 ${w} ${h}" preserveAspectRatio="xMinYMid meet">
    <text x="0" y="12" font-size="11" fill="#667085">${duration(max)}</text>
    <line x1="38" y1="${h - 14}" x2="${w}" y2="${h - 14}" stroke="#d9dde5"/>${bars.join('')}</svg>`;
}

async function pipelinePage(namespace, name) {
  const base = `/api/v1/pipelines/${encodeURIComponent(namespace)}/${encodeURIComponent(name)}`;
  const [answer, runs, stats] = await Promise.all([
    api(base),
    api(`/api/v1/runs?namespace=${encodeURIComponent(namespace)}&pipeline=${encodeURIComponent(name)}&limit=30`),
    api(`${base}/stats?window=7d`),
  ]);
  const p = answer.pipeline;
  const spec = p.spec || {};
  const stages = (spec.stages || []).map((s) => ({ id: s.id, dependsOn: s.dependsOn || [], component: s.componentType || s.component }));
  const form = inputForm(spec);
  const canRun = answer.source === 'cluster';
  main.innerHTML = `<h1>${esc(name)} <span class="muted">${esc(namespace)}</span> ${p.status && p.status.phase ? phase(p.status.phase) : ''}</h1>
    <div class="grid"><div>
      <div class="card"><h2>Stages</h2>${stages.length ? '<div class="dag" id="dag"></div>' : '<p class="muted">The stages come from a ConfigMap source.</p>'}</div>
      <div class="card"><h2>Recent runs</h2><div id="runs">${runsTable(runs.runs, { showPipeline: false })}</div></div>
    </div><div>
      <div class="card"><h2>Run</h2>${canRun ? `<form id="run-form">${form.html}<div class="actions"><button class="primary" type="submit" id="run">Run</button></div></form>`
        : '<p class="muted">This server has no cluster to start runs on.</p>'}</div>
      <div class="card"><h2>Duration of recent runs</h2><div class="chart">${durationChart(runs.runs)}</div>
        <p class="muted">7 days: ${stats.total} runs, ${stats.total ? `${Math.round(stats.successRate * 100)}% succeeded, p50 ${duration(stats.p50Seconds)}, p95 ${duration(stats.p95Seconds)}` : ''}</p></div>
      <div class="card"><h2>Spec</h2><pre class="yaml">${esc(answer.yaml)}</pre></div>
    </div></div>`;
  if (stages.length) renderDag(document.getElementById('dag'), stages);
  const runForm = document.getElementById('run-form');
  if (runForm) {
    runForm.addEventListener('submit', async (e) => {
      e.preventDefault();
      const button = document.getElementById('run');
      button.disabled = true;
      try {
        const started = await api(`${base}/runs`, { method: 'POST', body: { inputs: form.read(runForm) } });
        location.hash = `#/runs/${started.runId}`;
      } catch (error) {
        button.disabled = false;
        fail(error);
      }
    });
  }
}

async function runsPage(params) {
  const filters = ['namespace', 'pipeline', 'phase', 'trigger', 'since', 'until'];
  const query = new URLSearchParams();
  for (const f of filters) if (params.get(f)) query.set(f, params.get(f));
  query.set('limit', '50');
  const phases = ['Pending', 'Running', 'Succeeded', 'Failed', 'Cancelled', 'TimedOut'];
  const chosen = new Set((params.get('phase') || '').split(',').filter(Boolean));
  // Any set of phases at once (the history API takes them comma-separated): "Failed or TimedOut" is one
  // question, not two pages.
  const phaseBoxes = phases.map((p) => `<label class="check"><input type="checkbox" name="phase" value="${p}"
    ${chosen.has(p) ? 'checked' : ''}>${p}</label>`).join('');
  const triggers = ['', 'manual', 'cron', 'webhook', 'pubsub'];
  const select = (name, options) => `<select name="${name}">${options.map((o) =>
    `<option value="${o}" ${params.get(name) === o ? 'selected' : ''}>${o || 'any'}</option>`).join('')}</select>`;
  main.innerHTML = `<h1>Runs</h1>
    <form class="filters" id="run-filters">
      <label>Namespace <input name="namespace" value="${esc(params.get('namespace'))}" placeholder="all"></label>
      <label>Pipeline <input name="pipeline" value="${esc(params.get('pipeline'))}" placeholder="all"></label>
      <fieldset class="phases"><legend>Phase</legend>${phaseBoxes}</fieldset><label>Trigger ${select('trigger', triggers)}</label>
      <label>Since <input name="since" value="${esc(params.get('since'))}" placeholder="2h, 7d or RFC 3339"></label>
      <label>Until <input name="until" value="${esc(params.get('until'))}" placeholder="1h or RFC 3339"></label>
      <button type="submit">Filter</button></form>
    <div id="runs"></div><div class="actions"><button type="button" id="more" hidden>Older runs</button></div>`;
  document.getElementById('run-filters').addEventListener('submit', (e) => {
    e.preventDefault();
    const next = new URLSearchParams();
    const form = new FormData(e.target);
    for (const [k, v] of form) if (v && k !== 'phase') next.set(k, v);
    const picked = form.getAll('phase');
    if (picked.length) next.set('phase', picked.join(','));
    location.hash = `#/runs${next.toString() ? `?${next}` : ''}`;
  });
  const box = document.getElementById('runs');
  const more = document.getElementById('more');
  let pages = 1;
  let token = null;
  // The newest page is reloaded every two seconds, so new runs appear; older pages come with keyset
  // paging (continueToken) on demand.
  const load = async () => {
    let runs = [];
    let next = null;
    for (let i = 0; i < pages; i++) {
      const q = new URLSearchParams(query);
      if (next) q.set('continue', next);
      const answer = await api(`/api/v1/runs?${q}`);
      runs = runs.concat(answer.runs);
      next = answer.continueToken;
      if (!next) break;
    }
    token = next;
    box.innerHTML = runsTable(runs);
    more.hidden = !token;
  };
  more.addEventListener('click', () => { pages += 1; load().catch(fail); });
  await load();
  const signal = page.signal;
  const timer = setInterval(() => load().catch((e) => { clearInterval(timer); fail(e); }), 2000);
  signal.addEventListener('abort', () => clearInterval(timer));
}

// ---- a run ----------------------------------------------------------------------------------------

function gantt(run) {
  const attempts = [];
  for (const s of run.stages) {
    for (const a of s.attemptHistory || []) attempts.push({ stage: s.id, ...a, phase: a.finishedAt ? (a.error ? 'Failed' : 'Succeeded') : s.phase });
    if (s.reusedFrom) attempts.push({ stage: s.id, attempt: 0, startedAt: s.startedAt, finishedAt: s.finishedAt, phase: 'Skipped' });
  }
  const timed = attempts.filter((a) => a.startedAt);
  if (!timed.length) return '<p class="muted">No stage has started yet.</p>';
  const now = Date.now() * 1000;
  const start = Math.min(run.startedAt || Infinity, ...timed.map((a) => a.startedAt));
  const end = Math.max(...timed.map((a) => a.finishedAt || now), run.finishedAt || 0);
  const span = Math.max(1, end - start);
  const rowH = 18;
  const labelW = 150;
  const w = 900;
  const rows = [...new Set(timed.map((a) => a.stage))];
  const bars = timed.map((a) => {
    const y = rows.indexOf(a.stage) * rowH + 4;
    const x = labelW + ((a.startedAt - start) / span) * (w - labelW - 10);
    const bw = Math.max(2, (((a.finishedAt || now) - a.startedAt) / span) * (w - labelW - 10));
    return `<rect class="bar" x="${x}" y="${y}" width="${bw}" height="${rowH - 6}" fill="var(--${a.phase.toLowerCase()})">
      <title>${esc(a.stage)} attempt ${a.attempt}: ${duration(((a.finishedAt || now) - a.startedAt) / 1e6)}</title></rect>`;
  });
  const labels = rows.map((id, i) => `<text x="0" y="${i * rowH + 14}">${esc(id.length > 22 ? `${id.slice(0, 21)}…` : id)}</text>`);
  const h = rows.length * rowH + 18;
  return `<svg viewBox="0 0 ${w} ${h}" preserveAspectRatio="xMinYMin meet">${labels.join('')}${bars.join('')}
    <line class="axis" x1="${labelW}" y1="${h - 12}" x2="${w - 10}" y2="${h - 12}"/>
    <text x="${labelW}" y="${h - 1}">0</text><text x="${w - 60}" y="${h - 1}">${duration(span / 1e6)}</text></svg>`;
}

function stageDetail(run, events, id) {
  const stage = run.stages.find((s) => s.id === id);
  if (!stage) return '<p class="muted">Click a stage to see it.</p>';
  const planned = ((run.plan || {}).stages || []).find((s) => s.id === id) || {};
  const logs = events.filter((e) => e.type === 'StageLog' && e.stage === id);
  const failures = events.filter((e) => e.type === 'StageFailed' && e.stage === id);
  return `<h2>Stage ${esc(id)} ${phase(stage.phase)}</h2>
    <dl class="facts"><dt>Component</dt><dd>${esc(planned.component || '')}</dd>
      <dt>Attempts</dt><dd>${stage.attempts || 0}</dd>
      <dt>Started</dt><dd>${time(stage.startedAt)}</dd><dt>Duration</dt><dd>${duration(stage.durationSeconds)}</dd>
      ${stage.reusedFrom ? `<dt>Output from</dt><dd>${runLink(stage.reusedFrom)}</dd>` : ''}
      ${planned.dependsOn ? `<dt>Depends on</dt><dd>${esc(planned.dependsOn.join(', '))}</dd>` : ''}</dl>
    ${stage.input !== undefined
    ? `<h2>Input</h2><div class="stage-input">${json(stage.input)}</div>`
    : `<h2>Input (config as planned, not rendered)</h2>${json(planned.config || {})}`}
    ${stage.output !== undefined ? `<h2>Output</h2>${json(stage.output)}` : ''}
    ${failures.length ? `<h2>Errors</h2>${failures.map((f) => `<p class="error">attempt ${f.attempt}: ${esc(f.error && (f.error.message || JSON.stringify(f.error)))}</p>`).join('')}` : ''}
    ${stage.error && !failures.length ? `<h2>Error</h2>${json(stage.error)}` : ''}
    ${stage.skipReason ? `<h2>Skipped</h2>${json(stage.skipReason)}` : ''}
    <h2>Log</h2>${logs.length ? `<ul class="log">${logs.map((l) => `<li><span class="lvl">${esc(l.level)}</span> ${esc(l.message)}</li>`).join('')}</ul>` : '<p class="muted">No log lines.</p>'}`;
}

async function runPage(runId) {
  const signal = page.signal;
  // A run just created (here or by kubectl) is in the history once the operator accepted it.
  let run = null;
  while (!run) {
    try {
      run = await api(`/api/v1/runs/${encodeURIComponent(runId)}`);
    } catch (error) {
      if (error.status !== 404) throw error;
      main.innerHTML = `<p class="notice">Waiting for run ${esc(runId)} to be accepted…</p>`;
      await new Promise((resolve) => setTimeout(resolve, 300));
      if (signal.aborted) return;
    }
  }
  let events = await api(`/api/v1/runs/${encodeURIComponent(runId)}/events`);
  // A failed or running stage is what one opens a run for: show it first.
  let selected = (run.stages.find((s) => s.phase === 'Failed') || run.stages.find((s) => s.phase === 'Running') || {}).id || null;
  main.innerHTML = `<h1 id="run-title"></h1><div class="actions" id="run-actions"></div><div id="run-notice"></div>
    <div class="grid"><div>
      <div class="card"><h2>Stages</h2><div class="dag" id="dag"></div></div>
      <div class="card gantt"><h2>Timeline</h2><div id="gantt"></div></div>
      <div class="card"><h2>Run</h2><div id="run-facts"></div></div>
    </div><div><div class="card" id="stage"></div></div></div>`;
  const planStages = ((run.plan || {}).stages || []).map((s) => ({ id: s.id, dependsOn: s.dependsOn || [], component: s.component }));
  const known = new Set(planStages.map((s) => s.id));
  for (const s of run.stages) if (!known.has(s.id)) planStages.push({ id: s.id, dependsOn: [] });
  const dag = renderDag(document.getElementById('dag'), planStages, (id) => {
    selected = id;
    dag.select(id);
    document.getElementById('stage').innerHTML = stageDetail(run, events, id);
  });
  if (selected) dag.select(selected);
  let reruns = [];

  const draw = () => {
    const terminal = TERMINAL.has(run.phase);
    const origin = run.labels && run.labels[RERUN_OF];
    document.getElementById('run-title').innerHTML = `${esc(run.runName || run.runId)} ${phase(run.phase)}
      <span class="muted">${esc(run.namespace)}/</span>${pipelineLink(run.namespace, run.pipeline)}`;
    document.getElementById('run-title').dataset.phase = run.phase;
    document.getElementById('run-actions').innerHTML = `
      <button type="button" class="danger" id="cancel" ${terminal ? 'disabled' : ''}>Cancel</button>
      <button type="button" id="rerun" ${terminal ? '' : 'disabled'}>Rerun</button>
      <button type="button" id="rerun-failed" ${terminal && run.phase !== 'Succeeded' ? '' : 'disabled'}>Rerun from failed</button>`;
    document.getElementById('run-facts').innerHTML = `<dl class="facts">
      <dt>Run ID</dt><dd class="mono">${esc(run.runId)}</dd><dt>Trigger</dt><dd>${esc(run.trigger)}</dd>
      <dt>Accepted</dt><dd>${time(run.acceptedAt)}</dd><dt>Finished</dt><dd>${time(run.finishedAt)}</dd>
      <dt>Duration</dt><dd>${duration(run.durationSeconds)}</dd>
      ${origin ? `<dt>Rerun of</dt><dd>${runLink(origin)}</dd>` : ''}
      ${reruns.length ? `<dt>Reruns</dt><dd>${reruns.map((r) => `<a data-rerun href="#/runs/${esc(r.runId)}">${esc(r.runName || r.runId)}</a> ${phase(r.phase)}`).join('<br>')}</dd>` : ''}
      </dl>${run.error ? `<h2>Error</h2><p class="error">${esc(run.error.message || JSON.stringify(run.error))}</p>` : ''}
      <h2>Inputs</h2>${json(run.inputs)}${run.output !== undefined ? `<h2>Output</h2>${json(run.output)}` : ''}`;
    dag.setPhases(run.stages.map((s) => [s.id, s.phase]));
    document.getElementById('gantt').innerHTML = gantt(run);
    document.getElementById('stage').innerHTML = stageDetail(run, events, selected);
  };
  const loadReruns = async () => {
    const q = new URLSearchParams({ labelSelector: `${RERUN_OF}=${run.runId}`, limit: '20' });
    reruns = (await api(`/api/v1/runs?${q}`)).runs;
  };
  await loadReruns();
  draw();

  const act = async (path, body, pending) => {
    const notice = document.getElementById('run-notice');
    notice.innerHTML = `<p class="notice">${esc(pending)}</p>`;
    try {
      const started = await api(path, { method: 'POST', body });
      if (started.rerunOf) {
        notice.innerHTML = `<p class="notice">Started rerun <a data-rerun href="#/runs/${esc(started.runId)}">${esc(started.runName || started.runId)}</a>.</p>`;
        await loadReruns();
        draw();
      } else {
        notice.innerHTML = '<p class="notice">Cancellation requested.</p>';
      }
    } catch (error) {
      notice.innerHTML = '';
      fail(error);
    }
  };
  document.getElementById('run-actions').addEventListener('click', (e) => {
    const id = e.target.id;
    const base = `/api/v1/runs/${encodeURIComponent(run.runId)}`;
    if (id === 'cancel') act(`${base}/cancel`, undefined, 'Cancelling…');
    else if (id === 'rerun') act(`${base}/rerun`, { fromFailed: false }, 'Starting a rerun…');
    else if (id === 'rerun-failed') act(`${base}/rerun`, { fromFailed: true }, 'Starting a rerun from the failed stage…');
  });

  // Live: follow the events (NDJSON over fetch, which carries the token, unlike EventSource); each batch
  // of new events reloads the fold, so the DAG, the timeline and the details change without a reload.
  let refreshing = null;
  const refresh = () => {
    refreshing ||= setTimeout(async () => {
      refreshing = null;
      try {
        run = await api(`/api/v1/runs/${encodeURIComponent(runId)}`);
        draw();
      } catch (error) {
        fail(error);
      }
    }, 100);
  };
  const follow = async () => {
    const from = events.length ? events[events.length - 1].seq + 1 : 0;
    const response = await api(`/api/v1/runs/${encodeURIComponent(runId)}/events?follow=true&from=${from}`, { stream: true });
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      const lines = buffer.split('\n');
      buffer = lines.pop();
      for (const line of lines) {
        if (!line.trim()) continue;
        const event = JSON.parse(line);
        if (!events.length || event.seq > events[events.length - 1].seq) events.push(event);
      }
      refresh();
    }
  };
  if (!TERMINAL.has(run.phase)) {
    follow().catch((error) => { if (!signal.aborted) fail(error); });
  }
  // Reruns started elsewhere show up too.
  const timer = setInterval(() => loadReruns().then(draw).catch(() => {}), 3000);
  signal.addEventListener('abort', () => clearInterval(timer));
}

// ---- routing --------------------------------------------------------------------------------------

async function route() {
  page.abort();
  page = new AbortController();
  document.getElementById('login').hidden = true;
  document.getElementById('logout').hidden = !sessionStorage.getItem(TOKEN_KEY);
  const hash = location.hash.replace(/^#/, '') || '/pipelines';
  const [path, query] = hash.split('?');
  const params = new URLSearchParams(query || '');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  for (const a of document.querySelectorAll('[data-nav]')) a.classList.toggle('active', a.dataset.nav === parts[0]);
  main.innerHTML = '<p class="muted">Loading…</p>';
  try {
    if (parts[0] === 'runs' && parts[1]) await runPage(parts[1]);
    else if (parts[0] === 'runs') await runsPage(params);
    else if (parts[0] === 'pipelines' && parts[2]) await pipelinePage(parts[1], parts[2]);
    else await pipelinesPage(params);
  } catch (error) {
    if (main.textContent.trim() === 'Loading…') main.innerHTML = '';
    fail(error);
  }
}

document.getElementById('login-form').addEventListener('submit', (e) => {
  e.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, document.getElementById('token').value.trim());
  document.getElementById('token').value = '';
  route();
});
document.getElementById('logout').addEventListener('click', () => {
  sessionStorage.removeItem(TOKEN_KEY);
  route();
});
window.addEventListener('hashchange', route);
route();
