// The runs list (in the Runs panel): the caller's runs, newest first, from
// `GET /api/v1/runs`; an admin sees everyone's, with each run's owner.

import { AuthNeeded, errorMessage } from './api.js';
import { el, elements, setMessage } from './dom.js';
import { short } from './util.js';

function historyElements(root) {
  const els = elements(root, 'run-list-h', 'run-list', 'run-list-status');
  return { ...els, rows: els.runList.tBodies[0], ownerHead: els.runList.querySelector('.owner') };
}

function stateText(run) {
  // A run that completed normally stopped for "stop": only an unusual reason is news.
  const why = run.state === 'completed'
    ? (run.finish_reason !== 'stop' && run.finish_reason) || ''
    : run.cause || run.finish_reason;
  return why ? `${run.state} (${why})` : String(run.state || 'unknown');
}

function timeNode(seconds) {
  if (!Number.isFinite(seconds)) return '—';
  const at = new Date(seconds * 1000);
  return el('time', { datetime: at.toISOString() }, at.toLocaleString());
}

/** The list inside `root` (#runs). */
export function historyPanel(root, client) {
  const els = historyElements(root);
  let admin = false;
  let asked = 0; // the latest refresh: an older answer arriving late is dropped

  function render(runs, empty = 'No runs yet.') {
    els.ownerHead.hidden = !admin;
    const rows = runs.map((run) => el('tr', { 'data-run': run.id },
      el('td', {}, timeNode(run.created_at)),
      el('td', { class: 'run-state', 'data-state': run.state }, stateText(run)),
      el('td', { title: run.query }, short(run.query || '', 100)),
      admin ? el('td', { class: 'owner' }, run.owner || '—') : null));
    if (!rows.length) {
      rows.push(el('tr', {}, el('td', { colspan: admin ? 4 : 3, class: 'empty' }, empty)));
    }
    els.rows.replaceChildren(...rows);
  }

  async function refresh() {
    const mine = ++asked;
    const status = els.runListStatus;
    try {
      const res = await client.request('/api/v1/runs?limit=50');
      if (mine !== asked) return;
      if (!res.ok) { setMessage(status, `Could not list the runs: ${await errorMessage(res)}`); return; }
      const body = await res.json();
      if (mine !== asked) return;
      setMessage(status, '');
      render(Array.isArray(body.runs) ? body.runs : []);
    } catch (err) {
      if (mine === asked && !(err instanceof AuthNeeded)) setMessage(status, 'Could not reach the server to list the runs.');
    }
  }

  return {
    refresh,
    /** Whose runs the list shows: an admin's are everyone's, so each shows its owner. */
    setViewer(me) {
      admin = Boolean(me.admin);
      els.runListH.textContent = admin ? 'All runs' : 'Your runs';
    },
    /** Forgets the runs, for a key change; an answer still on its way is dropped. */
    clear() {
      asked += 1;
      admin = false;
      els.runListH.textContent = 'Your runs';
      setMessage(els.runListStatus, '');
      render([], '—');
    },
  };
}
