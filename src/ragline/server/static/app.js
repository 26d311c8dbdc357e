// ragline's page: streamed chat with a real Stop, document upload, agent runs, and the
// "What ragline saved" counters. No framework; server data only ever goes in via
// textContent or DOM nodes, never innerHTML.

const $ = (selector) => document.querySelector(selector);
const KEY = 'ragline-key';
const TERMINAL = new Set(['succeeded', 'failed', 'cancelled']);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ---- DOM helpers

/** Builds an element; string children become text nodes. */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value == null || value === false) continue;
    if (name === 'class') node.className = value;
    else node.setAttribute(name, String(value));
  }
  node.append(...children.filter((c) => c != null && c !== ''));
  return node;
}

/** Shows `text` in `node`, or hides and empties it when there is no text. */
function setMessage(node, text) {
  node.textContent = text || '';
  node.hidden = !text;
}

/** Disables `from` and enables `to`, moving keyboard focus along if `from` had it. */
function handOver(from, to) {
  const hadFocus = document.activeElement === from;
  to.disabled = false;
  from.disabled = true;
  if (hadFocus) to.focus();
}

const plural = (n, word) => `${n} ${word}${n === 1 ? '' : 's'}`;
const num = (v) => (Number.isFinite(v) ? v : 0);
const intText = (v) => (Number.isFinite(v) ? String(Math.round(v)) : '—');
const errorText = (e) => (typeof e === 'string' ? e : e?.message || '');

function short(text, max) {
  const flat = String(text).replace(/\s+/g, ' ').trim();
  return flat.length > max ? `${flat.slice(0, max - 1).trimEnd()}…` : flat;
}

function asText(value) {
  if (typeof value === 'string') return value;
  try { return JSON.stringify(value); } catch { return String(value); }
}

function parseJSON(text) {
  try { return JSON.parse(text); } catch { return null; }
}

// ---- auth

class AuthNeeded extends Error {
  constructor() { super('API key needed'); this.name = 'AuthNeeded'; }
}

let locked = false; // true while the server refuses us: show nothing it sent

function getKey() {
  try { return sessionStorage.getItem(KEY) || ''; } catch { return ''; }
}

function withAuth(headers = {}) {
  const key = getKey();
  return key ? { ...headers, authorization: `Bearer ${key}` } : { ...headers };
}

/** fetch with the stored key; a 401 shows the key form and throws AuthNeeded. */
async function api(path, options = {}) {
  const res = await fetch(path, { ...options, headers: withAuth(options.headers) });
  if (res.status === 401) { needKey(); throw new AuthNeeded(); }
  return res;
}

/** The readable message of an error response: `{"error":{"message"}}` plus the status. */
async function errorMessage(res) {
  let message = '';
  try { message = errorText((await res.json())?.error); } catch { /* not JSON */ }
  return `${message || res.statusText || 'The request failed'} (HTTP ${res.status})`;
}

function needKey() {
  const form = $('#key-form');
  const rejected = getKey() !== '';
  try { sessionStorage.removeItem(KEY); } catch { /* storage off */ }
  locked = true;
  clearServerData();
  if (!form.hidden) return;
  $('#key-msg').textContent = rejected
    ? 'That API key was not accepted. Enter another one.'
    : 'This server needs an API key. It is kept only in this tab (sessionStorage).';
  form.hidden = false;
  $('#key-input').focus();
}

function saveKey(event) {
  event.preventDefault();
  const input = $('#key-input');
  const key = input.value.trim();
  if (!key) { input.focus(); return; }
  try { sessionStorage.setItem(KEY, key); } catch { /* storage off: nothing to keep */ }
  input.value = '';
  $('#key-form').hidden = true;
  locked = false;
  loadAll();
}

/** Forgets everything the server sent, for when the key is missing or wrong. */
function clearServerData() {
  renderCollections([]);
  for (const node of document.querySelectorAll('[data-metric]')) node.textContent = '—';
  $('#saved-status').textContent = '';
}

function loadAll() {
  refreshCollections();
  refreshMetrics();
}

// ---- server-sent events

// EventSource can't send an Authorization header, so streams are read with fetch and
// parsed here: events end at a blank line; `event:`, `data:` (joined by "\n"), `id:`.
async function* readEvents(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  try {
    for (;;) {
      const { value, done } = await reader.read();
      buffer += done ? decoder.decode() : decoder.decode(value, { stream: true });
      // CRLF or CR line ends become LF; a CR at the very end may be half of a CRLF.
      buffer = buffer.replace(/\r\n|\r(?!$)/g, '\n');
      let end;
      while ((end = buffer.indexOf('\n\n')) !== -1) {
        const event = parseEvent(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
        if (event) yield event;
      }
      if (done) {
        const last = parseEvent(buffer);
        if (last) yield last;
        return;
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

function parseEvent(block) {
  let event = 'message';
  let id = null;
  const data = [];
  for (const line of block.split('\n')) {
    if (!line || line.startsWith(':')) continue; // blank or comment
    const colon = line.indexOf(':');
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') event = value || 'message';
    else if (field === 'data') data.push(value);
    else if (field === 'id') id = value;
  }
  if (!data.length && event === 'message') return null;
  return { event, data: data.join('\n'), id };
}

// ---- chat

const chat = { controller: null, id: null, text: '', stopped: false, finished: false };

function newRequestId() {
  if (crypto.randomUUID) return crypto.randomUUID();
  // randomUUID needs a secure context; a plain-http LAN address lacks one.
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function chatParams(query) {
  const params = new URLSearchParams({ query });
  const collection = $('#collection').value;
  const temperature = $('#temperature').value.trim();
  const maxTokens = $('#max-tokens').value.trim();
  if (collection) params.set('collection', collection);
  if (temperature) params.set('temperature', temperature);
  if (maxTokens) params.set('max_tokens', maxTokens);
  return params;
}

/** The first problem with the chat inputs, focusing the field, or ''. */
function chatInputProblem() {
  const question = $('#question');
  if (!question.value.trim()) { question.focus(); return 'Type a question first.'; }
  for (const [input, label] of [[$('#temperature'), 'Temperature'], [$('#max-tokens'), 'Max tokens']]) {
    if (!input.checkValidity()) { input.focus(); return `${label}: ${input.validationMessage}`; }
  }
  return '';
}

function resetAnswer() {
  $('#answer').replaceChildren();
  $('#sources').replaceChildren();
  $('#sources-h').hidden = true;
  for (const id of ['#answer-note', '#usage', '#outcome', '#chat-error']) setMessage($(id), '');
}

async function ask() {
  if (chat.controller) return; // one answer at a time
  const problem = chatInputProblem();
  setMessage($('#chat-error'), problem);
  if (problem) return;
  resetAnswer();
  const id = newRequestId();
  const controller = new AbortController();
  Object.assign(chat, { controller, id, text: '', stopped: false, finished: false });
  const answer = $('#answer');
  // Busy while streaming, so screen readers announce the answer once, not per fragment.
  answer.setAttribute('aria-busy', 'true');
  handOver($('#ask'), $('#stop'));
  try {
    const res = await fetch(`/api/v1/inference/stream?${chatParams($('#question').value.trim())}`, {
      headers: withAuth({ accept: 'text/event-stream', 'x-request-id': id }),
      signal: controller.signal,
    });
    if (res.status === 401) { needKey(); return; }
    if (!res.ok) { setMessage($('#chat-error'), await errorMessage(res)); return; }
    for await (const event of readEvents(res.body)) onChatEvent(event);
    if (!chat.finished && !chat.stopped) {
      setMessage($('#chat-error'), 'The answer ended without a final event; it may be incomplete.');
    }
  } catch (err) {
    // An AbortError is the Stop button doing its job, not a failure.
    if (err.name !== 'AbortError' && !chat.stopped) {
      setMessage($('#chat-error'), `The connection to the server was lost (${err.message}).`);
    }
  } finally {
    chat.controller = null;
    answer.removeAttribute('aria-busy');
    handOver($('#stop'), $('#ask'));
    if (!chat.stopped) refreshMetrics(); // a stop refreshes once its outcome is in
  }
}

function onChatEvent({ event, data }) {
  const body = parseJSON(data) || {};
  if (event === 'message') {
    if (typeof body.delta === 'string') {
      chat.text += body.delta;
      $('#answer').append(body.delta);
    }
  } else if (event === 'done') {
    finishAnswer(body);
  } else if (event === 'error') {
    failAnswer(body);
  } // any other event name is progress we don't show
}

function finishAnswer(done) {
  chat.finished = true;
  // With finish_reason "repetition" the server cut a loop: its text is the one to keep.
  if (typeof done.text === 'string') chat.text = done.text;
  if (done.finish_reason === 'repetition' || typeof done.text === 'string') {
    setMessage($('#answer-note'), 'Note: stopped by the loop guard — the model was repeating itself, so the server cut the answer here.');
  }
  const sources = Array.isArray(done.sources) ? done.sources : [];
  renderSources(sources);
  renderAnswer(chat.text, new Set(sources.map((s) => String(s.rank))));
  const usage = done.usage || {};
  const parts = [];
  if (Number.isFinite(usage.total_tokens)) {
    parts.push(`${plural(usage.total_tokens, 'token')}${usage.estimated ? ' (estimated)' : ''}`);
  }
  parts.push(`finish: ${done.finish_reason || usage.finish_reason || 'unknown'}`);
  setMessage($('#usage'), parts.join(' · '));
}

function failAnswer(body) {
  chat.finished = true;
  const error = body.error || {};
  const cause = error.cause || body.cause || body.usage?.cause;
  const tokens = body.usage?.completion_tokens;
  const after = Number.isFinite(tokens) ? ` after ${plural(tokens, 'token')}` : '';
  let message;
  if (cause === 'shutdown') {
    message = `The server is shutting down; the answer was stopped${after}.`;
  } else if (error.code === 'timeout' || cause === 'deadline') {
    message = `The answer took longer than the server allows (deadline) — the model was stopped${after}.`;
  } else {
    message = `${errorText(error) || 'The answer failed.'}${body.status ? ` (HTTP ${body.status})` : ''}`;
  }
  setMessage($('#chat-error'), message);
}

/** Puts `text` in the answer, each citation [n] of a known source rank as a link. */
function renderAnswer(text, ranks) {
  const parts = [];
  let last = 0;
  for (const match of text.matchAll(/\[(\d+)\]/g)) {
    if (!ranks.has(match[1])) continue;
    parts.push(text.slice(last, match.index));
    parts.push(el('a', { class: 'cite', href: `#source-${match[1]}` }, match[0]));
    last = match.index + match[0].length;
  }
  parts.push(text.slice(last));
  $('#answer').replaceChildren(...parts);
}

function renderSources(sources) {
  $('#sources').replaceChildren(...sources.map(sourceCard));
  $('#sources-h').hidden = sources.length === 0;
}

function sourceCard(s) {
  const title = s.title || s.source || s.document_id || 'Untitled';
  const meta = [];
  if (s.source && s.source !== title) meta.push(s.source);
  if (Number.isFinite(s.chunk_index)) meta.push(`chunk ${s.chunk_index}`);
  if (Number.isFinite(s.score)) meta.push(`score ${s.score.toFixed(3)}`);
  return el('article', { class: 'source-card', id: `source-${s.rank}`, tabindex: '-1' },
    el('h4', {}, el('span', { class: 'rank' }, `[${s.rank}]`), ' ', title),
    meta.length ? el('p', { class: 'meta' }, meta.join(' · ')) : null,
    el('p', { class: 'snippet' }, short(s.text || '', 240)));
}

async function stop() {
  if (!chat.controller) return;
  chat.stopped = true;
  chat.stoppedAt = performance.now();
  chat.controller.abort();
  await showOutcome(chat.id);
  refreshMetrics();
}

/** Asks the server how the stopped request ended. It records the outcome a moment after
 * the disconnect, so a 404 means "not yet": ask every 100 ms for up to 5 s. */
async function showOutcome(id) {
  const box = $('#outcome');
  box.hidden = false;
  box.textContent = 'Stopped — asking the server what happened…';
  const until = chat.stoppedAt + 5000;
  for (;;) {
    let res = null;
    try {
      res = await api(`/api/v1/requests/${encodeURIComponent(id)}`);
    } catch (err) {
      if (err instanceof AuthNeeded) return;
    }
    if (chat.id !== id) return; // a newer question has taken the box
    if (res?.ok) { renderOutcome(box, await res.json()); return; }
    if (res && res.status !== 404) {
      box.textContent = `Stopped — could not read the server's record: ${await errorMessage(res)}`;
      return;
    }
    if (performance.now() >= until) break;
    await sleep(100);
  }
  box.textContent = 'Stopped — the server kept no record of this request, so there is nothing to show about what it did after the stop.';
}

function msText(ms) {
  if (ms < 1) return ms.toFixed(2);
  return ms < 100 ? ms.toFixed(1) : String(Math.round(ms));
}

function renderOutcome(box, o) {
  const field = (name, value) => el('span', { 'data-field': name }, value);
  const parts = [
    'Stopped — cause: ', field('cause', o.cause || 'none'), ' · ',
    field('tokens', intText(o.completion_tokens)), ' tokens generated before the stop · ',
  ];
  if (Number.isFinite(o.upstream_closed_ms)) {
    parts.push('the model stopped ', field('closed-ms', msText(o.upstream_closed_ms)), ' ms after it · ');
  } else {
    parts.push('the model: ', field('closed-ms', 'none'), ' (it was not generating) · ');
  }
  parts.push(field('tokens-after', intText(o.tokens_after_cancel)), ' tokens after it');
  box.replaceChildren(...parts);
}

// ---- documents

let job = null; // the ingestion job being followed: { id, cancelling }

function listFiles() {
  const files = [...$('#file-input').files];
  $('#file-list').textContent = files.length
    ? `Selected: ${files.map((f) => f.name).join(', ')}`
    : '';
}

function wireDropZone() {
  const zone = $('#drop-zone');
  const input = $('#file-input');
  zone.addEventListener('click', () => input.click());
  zone.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); input.click(); }
  });
  for (const type of ['dragenter', 'dragover']) {
    zone.addEventListener(type, (e) => { e.preventDefault(); zone.classList.add('over'); });
  }
  zone.addEventListener('dragleave', () => zone.classList.remove('over'));
  zone.addEventListener('drop', (e) => {
    e.preventDefault();
    zone.classList.remove('over');
    if (!e.dataTransfer?.files.length) return;
    input.files = e.dataTransfer.files;
    listFiles();
    upload();
  });
  // A file dropped beside the zone must not replace the page.
  for (const type of ['dragover', 'drop']) window.addEventListener(type, (e) => e.preventDefault());
  input.addEventListener('change', listFiles);
}

async function upload() {
  const jobError = $('#job-error');
  if (job) { setMessage(jobError, 'Wait for the current upload to finish, or cancel it.'); return; }
  const files = [...$('#file-input').files];
  setMessage(jobError, files.length ? '' : 'Choose one or more files first.');
  if (!files.length) return;
  const form = new FormData();
  for (const file of files) form.append('files', file, file.name);
  const collection = $('#upload-collection').value.trim();
  if (collection) form.append('collection', collection);
  job = { id: null, cancelling: false }; // one job at a time
  try {
    const res = await api('/api/v1/ingest', { method: 'POST', body: form });
    if (!res.ok) { setMessage(jobError, await errorMessage(res)); return; }
    job.id = (await res.json()).job_id;
    handOver($('#upload'), $('#job-cancel'));
    await followJob(job.id);
  } catch (err) {
    if (!(err instanceof AuthNeeded)) setMessage(jobError, `The upload failed (${err.message}).`);
  } finally {
    job = null;
    handOver($('#job-cancel'), $('#upload'));
  }
}

/** Polls the job every 250 ms until it has finished, then refreshes the collections. */
async function followJob(id) {
  $('#job').hidden = false;
  $('#job-errors').replaceChildren();
  renderJob({ state: 'queued', progress: null });
  let failures = 0;
  for (;;) {
    let res;
    try {
      res = await api(`/api/v1/ingest/${encodeURIComponent(id)}`);
    } catch (err) {
      if (err instanceof AuthNeeded || ++failures >= 5) throw err;
      await sleep(1000); // a blip: try again
      continue;
    }
    if (!res.ok) { setMessage($('#job-error'), await errorMessage(res)); break; }
    failures = 0;
    const state = await res.json();
    renderJob(state);
    if (TERMINAL.has(state.state)) break;
    await sleep(250);
  }
  refreshCollections();
}

function renderJob(j) {
  const p = j.progress || null;
  const docs = p?.documents || {};
  const chunks = p?.chunks || {};
  const active = j.state === 'queued' || j.state === 'running';
  if (active) $('#job-cancel').disabled = false; // upload() disables it when the job ends

  // The bar counts chunks; with no total yet it has no value, i.e. it is indeterminate.
  const bar = $('#job-progress');
  if (chunks.total > 0) {
    bar.max = chunks.total;
    bar.value = Math.min(num(chunks.done), chunks.total);
  } else if (active) {
    bar.removeAttribute('value');
  } else {
    bar.max = 1;
    bar.value = j.state === 'succeeded' ? 1 : 0;
  }
  $('#job-status').textContent = jobText(j, p, docs, chunks);
  $('#job-errors').replaceChildren(...(p?.errors || []).map((e) =>
    el('li', {}, `${e.source || e.document_id || 'document'}: ${e.reason || 'failed'}`)));
}

function jobText(j, p, docs, chunks) {
  const cancelling = job?.cancelling ? ' (cancelling…)' : '';
  switch (j.state) {
    case 'succeeded': {
      const extra = [];
      if (docs.skipped > 0) extra.push(`${docs.skipped} unchanged, skipped`);
      if (docs.pruned > 0) extra.push(`${docs.pruned} removed`);
      return `Done — ${plural(num(docs.done), 'document')}, ${plural(num(chunks.done), 'chunk')}`
        + (extra.length ? ` (${extra.join('; ')})` : '');
    }
    case 'cancelled':
      return `Cancelled at a batch boundary — ${num(docs.done)} of ${num(docs.total)} documents indexed; nothing half-written.`;
    case 'failed':
      return `Failed — ${errorText(j.error) || 'the job failed'}${j.cause ? ` (cause: ${j.cause})` : ''}`;
    case 'queued':
      return `queued${cancelling} — waiting to start`;
    default: {
      if (!p) return `${j.state || 'running'}${cancelling} — starting…`;
      const parts = [`${j.state}${cancelling} — ${num(docs.done)} of ${num(docs.total)} documents`];
      if (chunks.total > 0) parts.push(`${num(chunks.done)} of ${chunks.total} chunks`);
      if (p.rate > 0) parts.push(`${p.rate.toFixed(1)} chunks/s`);
      if (Number.isFinite(p.eta_seconds)) parts.push(`about ${duration(p.eta_seconds)} left`);
      return parts.join(' · ');
    }
  }
}

function duration(seconds) {
  return seconds < 90 ? `${Math.max(1, Math.round(seconds))} s` : `${Math.round(seconds / 60)} min`;
}

async function cancelJob() {
  if (!job || job.cancelling) return;
  job.cancelling = true; // the button stays enabled (and focused); repeats are ignored
  $('#job-status').textContent = 'Cancelling…';
  try {
    const res = await api(`/api/v1/ingest/${encodeURIComponent(job.id)}`, { method: 'DELETE' });
    if (!res.ok) {
      setMessage($('#job-error'), await errorMessage(res));
      job.cancelling = false;
    }
  } catch (err) {
    if (!(err instanceof AuthNeeded)) setMessage($('#job-error'), `Could not cancel (${err.message}).`);
    if (job) job.cancelling = false;
  }
  // the poll loop keeps going and shows the terminal state
}

async function refreshCollections() {
  const status = $('#collections-status');
  try {
    const res = await api('/api/v1/collections');
    if (!res.ok) { setMessage(status, `Could not list the collections: ${await errorMessage(res)}`); return; }
    const body = await res.json();
    setMessage(status, '');
    renderCollections(Array.isArray(body.collections) ? body.collections : []);
  } catch (err) {
    if (!(err instanceof AuthNeeded)) setMessage(status, 'Could not reach the server to list the collections.');
  }
}

function fillSelect(select, names) {
  const current = select.value;
  select.replaceChildren(el('option', { value: '' }, 'default collection'),
    ...names.map((name) => el('option', { value: name }, name)));
  if (names.includes(current)) select.value = current;
}

function renderCollections(collections) {
  const names = collections.map((c) => c.name);
  fillSelect($('#collection'), names);
  fillSelect($('#run-collection'), names);
  const rows = collections.map((c) => el('tr', {},
    el('th', { scope: 'row' }, c.name),
    el('td', { class: 'num' }, intText(c.documents)),
    el('td', { class: 'num' }, intText(c.chunks))));
  if (!rows.length) rows.push(el('tr', {}, el('td', { colspan: 3, class: 'empty' }, locked ? '—' : 'No collections yet.')));
  $('#collections tbody').replaceChildren(...rows);
}

// ---- runs

const run = { id: null, controller: null, lastEventId: null, done: true, busy: false, cancelling: false };

async function startRun() {
  if (run.busy) return; // one run at a time
  const query = $('#run-query').value.trim();
  const runError = $('#run-error');
  setMessage(runError, query ? '' : 'Describe the task first.');
  if (!query) { $('#run-query').focus(); return; }
  $('#run-steps').replaceChildren();
  $('#run-answer').replaceChildren();
  const body = { query };
  const collection = $('#run-collection').value;
  if (collection) body.collection = collection;
  const start = $('#run-start');
  run.busy = true;
  try {
    const res = await api('/api/v1/runs', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
    if (!res.ok) { setMessage(runError, await errorMessage(res)); return; }
    const { run_id: id } = await res.json();
    Object.assign(run, { id, controller: new AbortController(), lastEventId: null, done: false, cancelling: false });
    $('#run-state').textContent = 'running';
    handOver(start, $('#run-cancel'));
    await followRun(id);
  } catch (err) {
    if (!(err instanceof AuthNeeded)) setMessage(runError, `The run could not start (${err.message}).`);
  } finally {
    Object.assign(run, { done: true, busy: false });
    handOver($('#run-cancel'), start);
  }
}

/** Reads the run's events. The endpoint replays after Last-Event-ID, so a stream that
 * drops before `done` is resumed where it stopped (a few tries). */
async function followRun(id) {
  for (let attempt = 0; attempt < 4 && !run.done; attempt++) {
    if (attempt) await sleep(500 * attempt);
    const headers = { accept: 'text/event-stream' };
    if (run.lastEventId != null) headers['last-event-id'] = run.lastEventId;
    try {
      const res = await api(`/api/v1/runs/${encodeURIComponent(id)}/events`, { headers, signal: run.controller.signal });
      if (!res.ok) { setMessage($('#run-error'), await errorMessage(res)); return; }
      for await (const event of readEvents(res.body)) {
        if (event.id != null) run.lastEventId = event.id;
        onRunEvent(event);
      }
    } catch (err) {
      if (err instanceof AuthNeeded || err.name === 'AbortError') return;
    }
  }
  if (!run.done) setMessage($('#run-error'), "Lost the run's event stream before it finished.");
}

function onRunEvent({ event, data }) {
  const d = parseJSON(data) || {};
  $('#run-steps').append(el('li', { class: 'run-event', 'data-event': event }, runLine(event, d)));
  if (event === 'done') finishRun(d);
}

function runLine(event, d) {
  switch (event) {
    case 'step':
      return `Step ${d.step ?? ''}`.trim();
    case 'tool_call':
      return `→ calls ${d.name || 'a tool'}(${short(asText(d.arguments ?? {}), 120)})`;
    case 'tool_result': {
      const out = d.result ?? d.output;
      const detail = errorText(d.error) || (out != null ? asText(out) : '');
      const took = Number.isFinite(d.duration_ms) ? ` in ${Math.round(d.duration_ms)} ms` : '';
      return `← ${d.name || 'tool'}: ${d.status || 'done'}${took}${detail ? ` (${short(detail, 160)})` : ''}`;
    }
    case 'step_done':
      return `Step ${d.step ?? ''} done: ${d.finish_reason || 'finished'}`;
    case 'done':
      if (d.state === 'succeeded') return 'Finished: succeeded';
      if (d.state === 'cancelled') return `Cancelled${d.cause ? ` (${d.cause})` : ''}`;
      if (d.state === 'failed') return `Failed: ${errorText(d.error) || d.cause || 'error'}`;
      return `Finished: ${d.state || 'unknown'}`;
    default:
      return event;
  }
}

async function finishRun(d) {
  run.done = true;
  const id = run.id;
  handOver($('#run-cancel'), $('#run-start'));
  const tokens = d.usage?.total_tokens;
  $('#run-state').textContent = [
    d.state || 'finished',
    d.cause ? `cause: ${d.cause}` : '',
    errorText(d.error),
    Number.isFinite(tokens) ? plural(tokens, 'token') : '',
  ].filter(Boolean).join(' — ');
  refreshMetrics();
  try {
    const res = await api(`/api/v1/runs/${encodeURIComponent(id)}`);
    if (!res.ok || run.id !== id) return;
    const snapshot = await res.json();
    if (snapshot.text) {
      $('#run-answer').replaceChildren(el('h3', {}, 'Answer'), el('p', { class: 'answer-text' }, snapshot.text));
    }
  } catch { /* the steps above already tell the story */ }
}

async function cancelRun() {
  if (!run.id || run.done || run.cancelling) return;
  run.cancelling = true; // the button stays enabled (and focused); repeats are ignored
  $('#run-state').textContent = 'cancelling…';
  try {
    const res = await api(`/api/v1/runs/${encodeURIComponent(run.id)}`, { method: 'DELETE' });
    if (!res.ok) {
      setMessage($('#run-error'), await errorMessage(res));
      run.cancelling = false;
      if (!run.done) $('#run-state').textContent = 'running';
    }
  } catch (err) {
    if (!(err instanceof AuthNeeded)) setMessage($('#run-error'), `Could not cancel (${err.message}).`);
    run.cancelling = false;
  }
  // the event stream ends with `done`, state "cancelled"
}

// ---- what ragline saved

// Prometheus sample lines: name{label="value",…} value [timestamp]
function parseMetrics(text) {
  const samples = [];
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = /^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels = {};
    for (const [, name, value] of (m[2] || '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) {
      labels[name] = value.replace(/\\(.)/g, (_, c) => (c === 'n' ? '\n' : c));
    }
    samples.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return samples;
}

/** Sum of `name` over every label set matching `where`; a missing series is 0. */
function sumMetric(samples, name, where) {
  return samples
    .filter((s) => s.name === name && Number.isFinite(s.value)
      && Object.entries(where).every(([k, v]) => s.labels[k] === v))
    .reduce((total, s) => total + s.value, 0);
}

const SAVED = {
  disconnect: ['ragline_cancellations_total', { cause: 'client_disconnected', owner: 'request' }],
  shutdown: ['ragline_cancellations_total', { cause: 'shutdown' }],
  deadline: ['ragline_cancellations_total', { cause: 'deadline' }],
  'tokens-after': ['ragline_upstream_tokens_after_cancel_total', {}],
  'loop-guard': ['ragline_generation_stops_total', { reason: 'repetition' }],
};

let metricsBusy = false;
let metricsAgain = false; // a refresh asked for while one was running

async function refreshMetrics() {
  if (locked) return;
  if (metricsBusy) { metricsAgain = true; return; }
  metricsBusy = true;
  const status = $('#saved-status');
  try {
    const res = await api('/metrics', { headers: { accept: 'text/plain' } });
    if (!res.ok) { status.textContent = `Could not read the counters (HTTP ${res.status}).`; return; }
    const samples = parseMetrics(await res.text());
    if (locked) return;
    for (const [metric, [name, where]] of Object.entries(SAVED)) {
      $(`[data-metric="${metric}"]`).textContent = String(Math.round(sumMetric(samples, name, where)));
    }
    status.textContent = `Updated ${new Date().toLocaleTimeString()}`;
  } catch (err) {
    if (!(err instanceof AuthNeeded)) status.textContent = 'Could not reach the server for the counters.';
  } finally {
    metricsBusy = false;
    if (metricsAgain) { metricsAgain = false; refreshMetrics(); }
  }
}

// ---- start

function init() {
  $('#key-form').addEventListener('submit', saveKey);
  $('#ask').addEventListener('click', ask);
  $('#stop').addEventListener('click', stop);
  $('#question').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) { e.preventDefault(); ask(); }
  });
  wireDropZone();
  $('#upload').addEventListener('click', upload);
  $('#job-cancel').addEventListener('click', cancelJob);
  $('#run-start').addEventListener('click', startRun);
  $('#run-cancel').addEventListener('click', cancelRun);
  $('#run-query').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) { e.preventDefault(); startRun(); }
  });
  loadAll();
  setInterval(() => { if (!document.hidden) refreshMetrics(); }, 5000);
}

init();
