// "What ragline saved": counters from the server's Prometheus metrics and, for admins,
// what Teams users said about the bot's answers (`GET /api/v1/feedback`, an admin route:
// a member is never sent there, and sees nothing of it).

import { AuthNeeded, errorMessage } from './api.js';
import { el, elements, setMessage } from './dom.js';
import { short } from './util.js';

// Each counter on the page: the metric and the labels whose series it sums.
const SAVED = {
  disconnect: ['ragline_cancellations_total', { cause: 'client_disconnected', owner: 'request' }],
  shutdown: ['ragline_cancellations_total', { cause: 'shutdown' }],
  deadline: ['ragline_cancellations_total', { cause: 'deadline' }],
  'tokens-after': ['ragline_upstream_tokens_after_cancel_total', {}],
  'loop-guard': ['ragline_generation_stops_total', { reason: 'repetition' }],
};

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

function savedElements(root) {
  const counters = {};
  for (const metric of Object.keys(SAVED)) {
    counters[metric] = root.querySelector(`[data-metric="${metric}"]`);
    if (!counters[metric]) throw new Error(`the page has no [data-metric="${metric}"]`);
  }
  const feedback = elements(root, 'feedback', 'feedback-tally', 'feedback-list', 'feedback-status');
  return { ...elements(root, 'saved-status'), counters, ...feedback };
}

// How many feedback records the tally reads, and how many of them are listed.
const FEEDBACK_PAGE = 50;
const FEEDBACK_SHOWN = 5;
const THUMB = { like: '👍', dislike: '👎' };

function feedbackItem(record) {
  const question = record.answer?.question || '';
  const liked = record.reaction === 'like';
  const at = Number.isFinite(record.at) ? new Date(record.at * 1000) : null;
  return el('li', { class: 'feedback-item', 'data-reaction': record.reaction },
    // In words too: a machine without an emoji font shows the thumbs as boxes.
    el('span', { class: 'thumb', 'data-reaction': record.reaction },
      el('span', { 'aria-hidden': 'true' }, `${THUMB[record.reaction] || ''} `), liked ? 'liked' : 'disliked'),
    ': ',
    record.text ? el('q', { class: 'said' }, short(record.text, 200)) : el('span', { class: 'meta' }, 'no comment'),
    el('span', { class: 'rated meta', title: question }, ` on “${short(question, 80)}”`),
    at ? el('time', { class: 'meta', datetime: at.toISOString() }, ` ${at.toLocaleString()}`) : null);
}

/** The panel at `root` (#saved). */
export function savedPanel(root, client) {
  const els = savedElements(root);
  let busy = false;
  let again = false; // a refresh asked for while one was running
  let admin = false; // only admins may read the feedback
  let asked = 0; // the latest feedback read: an older answer arriving late is dropped

  function hideFeedback() {
    els.feedback.hidden = true;
    els.feedbackTally.textContent = '';
    els.feedbackList.replaceChildren();
    setMessage(els.feedbackStatus, '');
  }

  async function refreshFeedback() {
    if (!admin) return;
    const mine = ++asked;
    try {
      const res = await client.request(`/api/v1/feedback?limit=${FEEDBACK_PAGE}`);
      if (mine !== asked) return;
      if (res.status === 404) { hideFeedback(); return; } // not an admin (any more)
      els.feedback.hidden = false;
      if (!res.ok) { setMessage(els.feedbackStatus, `Could not read the feedback: ${await errorMessage(res)}`); return; }
      const body = await res.json();
      if (mine !== asked) return;
      const records = Array.isArray(body.feedback) ? body.feedback : [];
      const likes = records.filter((r) => r.reaction === 'like').length;
      const of = body.next_before == null ? '' : ` (the latest ${records.length})`;
      els.feedbackTally.textContent = records.length
        ? `👍 ${likes} liked · 👎 ${records.length - likes} disliked${of}`
        : 'No feedback on the bot’s answers yet.';
      els.feedbackList.replaceChildren(...records.slice(0, FEEDBACK_SHOWN).map(feedbackItem));
      setMessage(els.feedbackStatus, '');
    } catch (err) {
      if (mine === asked && !(err instanceof AuthNeeded)) setMessage(els.feedbackStatus, 'Could not reach the server for the feedback.');
    }
  }

  async function refreshCounters() {
    const status = els.savedStatus;
    try {
      const res = await client.request('/metrics', { headers: { accept: 'text/plain' } });
      if (!res.ok) { status.textContent = `Could not read the counters (HTTP ${res.status}).`; return; }
      const samples = parseMetrics(await res.text());
      if (client.locked) return;
      for (const [metric, [name, where]] of Object.entries(SAVED)) {
        els.counters[metric].textContent = String(Math.round(sumMetric(samples, name, where)));
      }
      status.textContent = `Updated ${new Date().toLocaleTimeString()}`;
    } catch (err) {
      if (!(err instanceof AuthNeeded)) status.textContent = 'Could not reach the server for the counters.';
    }
  }

  async function refresh() {
    if (client.locked) return;
    if (busy) { again = true; return; }
    busy = true;
    try {
      await Promise.all([refreshCounters(), refreshFeedback()]);
    } finally {
      busy = false;
      if (again) { again = false; refresh(); }
    }
  }

  return {
    refresh,
    /** Who is looking: an admin also sees the feedback on the bot's answers. */
    setViewer(me) {
      admin = Boolean(me.admin);
      if (!admin) hideFeedback();
    },
    /** Forgets the counters and the feedback, for when the key is missing or wrong. */
    clear() {
      for (const node of Object.values(els.counters)) node.textContent = '—';
      els.savedStatus.textContent = '';
      asked += 1;
      admin = false;
      hideFeedback();
    },
  };
}
