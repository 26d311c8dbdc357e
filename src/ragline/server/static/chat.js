// The Chat panel: a question, its answer streamed in, its sources, and a Stop that
// really stops the model — then the server's record of what happened after the stop.

import { AuthNeeded, errorMessage } from './api.js';
import { answerNodes, failureText, outcomeNodes, sourceCard, usageText } from './answer.js';
import { elements, fillCollections, handOver, onCtrlEnter, setMessage } from './dom.js';
import { readEvents } from './sse.js';
import { parseJSON, sleep } from './util.js';

const LOOP_GUARD = 'Note: stopped by the loop guard — the model was repeating itself, so the server cut the answer here.';

function newRequestId() {
  if (crypto.randomUUID) return crypto.randomUUID();
  // randomUUID needs a secure context; a plain-http LAN address lacks one.
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function chatElements(root) {
  return elements(root, 'collection', 'temperature', 'max-tokens', 'question', 'ask', 'stop',
    'chat-error', 'answer', 'answer-note', 'usage', 'outcome', 'sources-h', 'sources');
}

/** The panel at `root` (#chat); `onSettled()` runs when an answer has ended or a stop's
 * outcome is in (the counters then have news). */
export function chatPanel(root, client, { onSettled }) {
  const els = chatElements(root);
  const showError = (text) => setMessage(els.chatError, text);
  let asking = null; // the question being answered: { id, controller, text, stopped, finished }
  let latestId = null; // the last question's request id: its outcome owns the outcome box

  function streamUrl(query) {
    const params = new URLSearchParams({ query });
    const temperature = els.temperature.value.trim();
    const maxTokens = els.maxTokens.value.trim();
    if (els.collection.value) params.set('collection', els.collection.value);
    if (temperature) params.set('temperature', temperature);
    if (maxTokens) params.set('max_tokens', maxTokens);
    return `/api/v1/inference/stream?${params}`;
  }

  /** The first problem with the inputs, focusing the field, or ''. */
  function inputProblem() {
    if (!els.question.value.trim()) { els.question.focus(); return 'Type a question first.'; }
    for (const [input, label] of [[els.temperature, 'Temperature'], [els.maxTokens, 'Max tokens']]) {
      if (!input.checkValidity()) { input.focus(); return `${label}: ${input.validationMessage}`; }
    }
    return '';
  }

  function resetAnswer() {
    els.answer.replaceChildren();
    els.sources.replaceChildren();
    els.sourcesH.hidden = true;
    for (const node of [els.answerNote, els.usage, els.outcome, els.chatError]) setMessage(node, '');
  }

  function finishAnswer(q, done) {
    q.finished = true;
    // With finish_reason "repetition" the server cut a loop: its text is the one to keep.
    if (typeof done.text === 'string') q.text = done.text;
    if (done.finish_reason === 'repetition' || typeof done.text === 'string') {
      setMessage(els.answerNote, LOOP_GUARD);
    }
    const sources = Array.isArray(done.sources) ? done.sources : [];
    els.sources.replaceChildren(...sources.map(sourceCard));
    els.sourcesH.hidden = sources.length === 0;
    els.answer.replaceChildren(...answerNodes(q.text, new Set(sources.map((s) => String(s.rank)))));
    setMessage(els.usage, usageText(done));
  }

  function onEvent(q, { event, data }) {
    if (latestId !== q.id) return; // forgotten with the key it was asked under
    const body = parseJSON(data) || {};
    if (event === 'message') {
      if (typeof body.delta === 'string') {
        q.text += body.delta;
        els.answer.append(body.delta);
      }
    } else if (event === 'done') {
      finishAnswer(q, body);
    } else if (event === 'error') {
      q.finished = true;
      showError(failureText(body));
    } // any other event name is progress we don't show
  }

  async function ask() {
    if (asking) return; // one answer at a time
    const problem = inputProblem();
    showError(problem);
    if (problem) return;
    resetAnswer();
    const q = { id: newRequestId(), controller: new AbortController(), text: '', stopped: false, finished: false };
    asking = q;
    latestId = q.id;
    // Busy while streaming, so screen readers announce the answer once, not per fragment.
    els.answer.setAttribute('aria-busy', 'true');
    handOver(els.ask, els.stop);
    try {
      const res = await client.request(streamUrl(els.question.value.trim()), {
        headers: { accept: 'text/event-stream', 'x-request-id': q.id },
        signal: q.controller.signal,
      });
      if (!res.ok) { showError(await errorMessage(res)); return; }
      for await (const event of readEvents(res.body)) onEvent(q, event);
      if (!q.finished && !q.stopped) showError('The answer ended without a final event; it may be incomplete.');
    } catch (err) {
      // An AbortError is the Stop button doing its job, not a failure.
      if (!(err instanceof AuthNeeded) && err.name !== 'AbortError' && !q.stopped) {
        showError(`The connection to the server was lost (${err.message}).`);
      }
    } finally {
      asking = null;
      els.answer.removeAttribute('aria-busy');
      handOver(els.stop, els.ask);
      if (!q.stopped) onSettled(); // a stop settles once its outcome is in
    }
  }

  /** Asks the server how the stopped request ended. It records the outcome a moment after
   * the disconnect, so a 404 means "not yet": ask every 100 ms for up to 5 s. */
  async function showOutcome(q) {
    const box = els.outcome;
    box.hidden = false;
    box.textContent = 'Stopped — asking the server what happened…';
    const until = q.stoppedAt + 5000;
    for (;;) {
      let res = null;
      try {
        res = await client.request(`/api/v1/requests/${encodeURIComponent(q.id)}`);
      } catch (err) {
        if (err instanceof AuthNeeded) return;
      }
      if (latestId !== q.id) return; // a newer question has taken the box
      if (res?.ok) { box.replaceChildren(...outcomeNodes(await res.json())); return; }
      if (res && res.status !== 404) {
        box.textContent = `Stopped — could not read the server's record: ${await errorMessage(res)}`;
        return;
      }
      if (performance.now() >= until) break;
      await sleep(100);
    }
    box.textContent = 'Stopped — the server kept no record of this request, so there is nothing to show about what it did after the stop.';
  }

  async function stop() {
    const q = asking;
    if (!q) return;
    q.stopped = true;
    q.stoppedAt = performance.now();
    q.controller.abort();
    await showOutcome(q);
    onSettled();
  }

  els.ask.addEventListener('click', ask);
  els.stop.addEventListener('click', stop);
  onCtrlEnter(els.question, ask);
  return {
    setCollections: (names) => fillCollections(els.collection, names),
    /** Forgets the question and its answer, for a key change (its stream ends with the
     * old session). */
    clear() {
      latestId = null;
      els.question.value = '';
      resetAnswer();
    },
  };
}
