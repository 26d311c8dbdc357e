// The Runs panel: an agent run's steps, live from its event stream, its answer, and
// Cancel.

import { el, elements, fillCollections, onCtrlEnter, setMessage } from './dom.js';
import { createTask, followEvents } from './task.js';
import { asText, errorText, parseJSON, plural, short } from './util.js';

const runUrl = (id) => `/api/v1/runs/${encodeURIComponent(id)}`;

function runsElements(root) {
  return elements(root, 'run-query', 'run-collection', 'run-start', 'run-cancel', 'run-error',
    'run-state', 'run-steps', 'run-answer');
}

/** One line of the steps list for an event. */
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

/** The panel at `root` (#runs); `onStarted()` runs when a run has begun, `onFinished()`
 * when it has ended. */
export function runsPanel(root, client, { onStarted, onFinished }) {
  const els = runsElements(root);
  const showError = (text) => setMessage(els.runError, text);

  async function finishRun(work, d) {
    task.finish(work);
    const tokens = d.usage?.total_tokens;
    els.runState.textContent = [
      d.state || 'finished',
      d.cause ? `cause: ${d.cause}` : '',
      errorText(d.error),
      Number.isFinite(tokens) ? plural(tokens, 'token') : '',
    ].filter(Boolean).join(' — ');
    onFinished();
    try {
      const res = await client.request(runUrl(work.id));
      if (!res.ok || !task.isLatest(work)) return;
      const snapshot = await res.json();
      if (snapshot.text) {
        els.runAnswer.replaceChildren(el('h3', {}, 'Answer'), el('p', { class: 'answer-text' }, snapshot.text));
      }
    } catch { /* the steps above already tell the story */ }
  }

  function onEvent(work, { event, data }) {
    if (!task.isLatest(work)) return; // forgotten with the key it was started under
    const d = parseJSON(data) || {};
    els.runSteps.append(el('li', { class: 'run-event', 'data-event': event }, runLine(event, d)));
    if (event === 'done') finishRun(work, d);
  }

  const task = createTask(client, {
    buttons: { start: els.runStart, cancel: els.runCancel },
    showError,
    url: runUrl,
    follow: (work) => followEvents(client, `${runUrl(work.id)}/events`, {
      onEvent: (event) => onEvent(work, event),
      isOver: () => work.done,
      showError,
      lost: "Lost the run's event stream before it finished.",
    }),
    startFailed: 'The run could not start',
    onStarted: () => { els.runState.textContent = 'running'; onStarted(); },
    onCancelling: () => { els.runState.textContent = 'cancelling…'; },
    onCancelFailed: (work) => { if (!work.done) els.runState.textContent = 'running'; },
  });
  // the event stream ends with `done`, state "cancelled", after a cancel

  function startRun() {
    if (task.busy) return; // one run at a time
    const query = els.runQuery.value.trim();
    showError(query ? '' : 'Describe the task first.');
    if (!query) { els.runQuery.focus(); return; }
    els.runSteps.replaceChildren();
    els.runAnswer.replaceChildren();
    const body = { query };
    const collection = els.runCollection.value;
    if (collection) body.collection = collection;
    task.start('/api/v1/runs', {
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
    }, (started) => started.run_id);
  }

  els.runStart.addEventListener('click', startRun);
  onCtrlEnter(els.runQuery, startRun);
  return {
    setCollections: (names) => fillCollections(els.runCollection, names),
    /** Forgets the task and the run on show, for a key change. */
    clear() {
      task.forget();
      els.runQuery.value = '';
      showError('');
      els.runState.textContent = '';
      els.runSteps.replaceChildren();
      els.runAnswer.replaceChildren();
    },
  };
}
