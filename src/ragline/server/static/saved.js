// "What ragline saved": counters from the server's Prometheus metrics.

import { AuthNeeded } from './api.js';
import { elements } from './dom.js';

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
  return { ...elements(root, 'saved-status'), counters };
}

/** The panel at `root` (#saved). */
export function savedPanel(root, client) {
  const els = savedElements(root);
  let busy = false;
  let again = false; // a refresh asked for while one was running

  async function refresh() {
    if (client.locked) return;
    if (busy) { again = true; return; }
    busy = true;
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
    } finally {
      busy = false;
      if (again) { again = false; refresh(); }
    }
  }

  return {
    refresh,
    /** Forgets the counters, for when the key is missing or wrong. */
    clear() {
      for (const node of Object.values(els.counters)) node.textContent = '—';
      els.savedStatus.textContent = '';
    },
  };
}
