// The Chat panel: a thread of turns that continue one conversation. Each turn is a
// question, its answer streamed in, that answer's sources, and — if it was stopped — the
// server's record of what happened after the Stop, all kept with that turn. Stop really
// stops the model; New chat starts another conversation.
//
// The server keeps the turns (bounded by tokens) and uses them as the history of the next
// question: the page only names the conversation. The stream's first event says its id
// (a new one when the request named none); every later turn sends it back, and New chat
// forgets it. The thread (its id and turns) is kept in this tab's sessionStorage, so a
// reload continues it; it is shown again only once the server has named the same
// principal, and every change of key wipes it.

import { AuthNeeded, errorMessage } from './api.js';
import { answerNodes, failureText, outcomeNodes, sourceCard, usageText } from './answer.js';
import { el, elements, fillCollections, handOver, onEnterSend, setMessage } from './dom.js';
import { readEvents } from './sse.js';
import { parseJSON, sleep } from './util.js';

const STORE = 'ragline-chat';
const LOOP_GUARD = 'Note: stopped by the loop guard — the model was repeating itself, so the server cut the answer here.';
const GROUNDING_GUARD = 'Note: stopped by the grounding guard — the model wrote something no source says, so the server cut the answer here.';
const LEFT = 'Cut short: the page was left before this answer ended.';
const BUSY = 'Wait for this answer to end, or Stop it, before sending the next question.';

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
  return elements(root, 'collection', 'temperature', 'max-tokens', 'thread', 'thread-empty',
    'question', 'ask', 'stop', 'new-chat', 'chat-error');
}

/** A thread with no turns yet: `owner` is the principal it belongs to, once known. */
function emptyThread(owner = null) {
  return { owner, conversationId: null, turns: [] };
}

// A turn as kept: { question, text, state: 'asking' | 'answered' | 'stopped' | 'failed'
// | 'left', sources: [], usage: '', note: '', error: '', outcome: record or text or null }.
function newTurn(question) {
  return { question, text: '', state: 'asking', sources: [], usage: '', note: '', error: '', outcome: null };
}

const STATES = new Set(['asking', 'answered', 'stopped', 'failed', 'left']);
const str = (v) => (typeof v === 'string' ? v : '');

/** A kept turn as the page can show it (anything unreadable in it left out). */
function keptTurn(t) {
  const outcome = typeof t.outcome === 'string' || (t.outcome && typeof t.outcome === 'object') ? t.outcome : null;
  return {
    question: str(t.question),
    text: str(t.text),
    state: STATES.has(t.state) ? t.state : 'answered',
    sources: Array.isArray(t.sources) ? t.sources.filter((s) => s && typeof s === 'object') : [],
    usage: str(t.usage),
    note: str(t.note),
    error: str(t.error),
    outcome,
  };
}

/** The thread this tab kept, or null. */
function stored() {
  let kept = null;
  try { kept = parseJSON(sessionStorage.getItem(STORE) || ''); } catch { /* storage off */ }
  if (!kept || typeof kept.owner !== 'string' || !Array.isArray(kept.turns)) return null;
  return {
    owner: kept.owner,
    conversationId: typeof kept.conversationId === 'string' ? kept.conversationId : null,
    turns: kept.turns.filter((t) => t && typeof t === 'object').map(keptTurn),
  };
}

function keep(thread) {
  try {
    const empty = !thread || (!thread.turns.length && !thread.conversationId);
    if (empty) sessionStorage.removeItem(STORE);
    else sessionStorage.setItem(STORE, JSON.stringify(thread));
  } catch { /* storage off or full: the thread lives only on the page */ }
}

/** The nodes of turn number `n`, and how to fill them. */
function turnView(n, question) {
  const prefix = `t${n}-`;
  const answer = el('div', { class: 'answer', 'data-state': 'asking' });
  const reply = el('div', { class: 'reply' }, el('span', { class: 'sr-only' }, 'Answer: '), answer);
  const node = el('article', { class: 'turn', 'data-turn': n, 'aria-label': `Question ${n}` },
    el('p', { class: 'question' }, el('span', { class: 'sr-only' }, 'You asked: '), question),
    reply);
  let outcomeBox = null;
  // Each extra is added when there is something to say: added nodes are what the log
  // announces.
  const add = (tag, cls, text) => {
    const extra = el(tag, { class: cls }, text);
    reply.append(extra);
    return extra;
  };
  return {
    node,
    append(delta) { answer.append(delta); },
    state(state) { answer.dataset.state = state; },
    /** The whole answer, its `[n]` linked to the cards of `sources`. */
    answer(text, sources) {
      answer.replaceChildren(...answerNodes(text, new Set(sources.map((s) => String(s.rank))), prefix));
      if (sources.length) {
        reply.append(el('h3', { class: 'sources-h' }, 'Sources'),
          el('div', { class: 'sources' }, ...sources.map((s) => sourceCard(s, prefix))));
      }
    },
    note(text) { if (text) add('p', 'note', text); },
    usage(text) { if (text) add('p', 'usage meta', text); },
    error(text) { if (text) add('p', 'turn-error error', text); },
    /** The stop's outcome: the server's record (an object) or a sentence. */
    outcome(value) {
      if (value == null) return;
      if (!outcomeBox) outcomeBox = add('div', 'outcome', '');
      if (typeof value === 'string') outcomeBox.textContent = value;
      else outcomeBox.replaceChildren(...outcomeNodes(value));
    },
  };
}

/** The panel at `root` (#chat); `onSettled()` runs when an answer has ended or a stop's
 * outcome is in (the counters then have news). */
export function chatPanel(root, client, { onSettled }) {
  const els = chatElements(root);
  const showError = (text) => setMessage(els.chatError, text);
  let thread = emptyThread();
  // The question being answered: { id, controller, thread, turn, view, stopped, finished }.
  // Anything it hears after its thread was replaced (New chat, a key change) is dropped.
  let asking = null;

  const save = () => keep(thread);

  function streamUrl(query) {
    const params = new URLSearchParams({ query });
    const temperature = els.temperature.value.trim();
    const maxTokens = els.maxTokens.value.trim();
    if (els.collection.value) params.set('collection', els.collection.value);
    if (temperature) params.set('temperature', temperature);
    if (maxTokens) params.set('max_tokens', maxTokens);
    if (thread.conversationId) params.set('conversation_id', thread.conversationId);
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

  /** Puts `turn` (number `n`) at the end of the thread; its view. */
  function show(turn, n) {
    const view = turnView(n, turn.question);
    els.threadEmpty.hidden = true;
    els.thread.append(view.node);
    return view;
  }

  // Whether the thread shows its end: new text keeps it there, unless the reader has
  // scrolled up to older turns.
  let pinned = true;
  els.thread.addEventListener('scroll', () => {
    const box = els.thread;
    pinned = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  }, { passive: true });

  /** Keeps the newest text in sight while the thread is pinned to its end (`force`: pins it). */
  function follow(force = false) {
    if (!force && !pinned) return;
    pinned = true;
    els.thread.scrollTop = els.thread.scrollHeight;
  }

  /** Shows a kept turn again, as it last was. */
  function replay(turn, n) {
    if (turn.state === 'asking') { turn.state = 'left'; turn.note = turn.note || LEFT; }
    const view = show(turn, n);
    view.state(turn.state);
    view.answer(turn.text, turn.sources);
    view.note(turn.note);
    view.usage(turn.usage);
    view.error(turn.error);
    view.outcome(turn.outcome ?? (turn.state === 'stopped' ? 'Stopped.' : null));
  }

  /** Empties the thread: `owner` keeps whose it is (New chat), or forgets it (a key change). */
  function reset(owner) {
    const q = asking;
    if (q) {
      asking = null; // its stream is dropped: the server still keeps the turn in the old conversation
      q.controller.abort();
      handOver(els.stop, els.ask);
    }
    thread = emptyThread(owner);
    els.thread.removeAttribute('aria-busy');
    els.thread.replaceChildren(els.threadEmpty);
    els.threadEmpty.hidden = false;
    showError('');
    save();
  }

  function finishAnswer(q, done) {
    const { turn, view } = q;
    q.finished = true;
    // With finish_reason "repetition" (a loop) or "ungrounded" (a sentence no source
    // supports) the server cut the answer: its text is the one to keep.
    if (typeof done.text === 'string') turn.text = done.text;
    if (done.finish_reason === 'ungrounded') turn.note = GROUNDING_GUARD;
    else if (done.finish_reason === 'repetition' || typeof done.text === 'string') turn.note = LOOP_GUARD;
    turn.sources = Array.isArray(done.sources) ? done.sources : [];
    turn.usage = usageText(done);
    turn.state = 'answered';
    view.state(turn.state);
    view.answer(turn.text, turn.sources);
    view.note(turn.note);
    view.usage(turn.usage);
  }

  function fail(q, text) {
    q.turn.state = 'failed';
    q.turn.error = text;
    q.view.state('failed');
    q.view.error(text);
  }

  function onEvent(q, { event, data }) {
    if (q.thread !== thread) return; // a New chat or a key change since
    const body = parseJSON(data) || {};
    // The first event names the conversation (`done` repeats it): later turns continue it.
    if ((event === 'conversation' || event === 'done') && typeof body.conversation_id === 'string') {
      thread.conversationId = body.conversation_id;
    }
    if (event === 'message') {
      if (typeof body.delta === 'string') {
        q.turn.text += body.delta;
        q.view.append(body.delta);
        follow();
      }
    } else if (event === 'done') {
      finishAnswer(q, body);
    } else if (event === 'error') {
      q.finished = true;
      fail(q, failureText(body));
    } else if (event === 'conversation') {
      save();
    } // any other event name is progress we don't show
  }

  async function ask() {
    if (asking) { showError(BUSY); return; } // one answer at a time: the next one follows it
    const problem = inputProblem();
    showError(problem);
    if (problem) return;
    const question = els.question.value.trim();
    const turn = newTurn(question);
    thread.turns.push(turn);
    const view = show(turn, thread.turns.length);
    const q = { id: newRequestId(), controller: new AbortController(), thread, turn, view, stopped: false, finished: false };
    asking = q;
    save();
    els.question.value = '';
    // Busy while streaming, so screen readers announce the answer once, not per fragment.
    els.thread.setAttribute('aria-busy', 'true');
    handOver(els.ask, els.stop);
    els.question.focus(); // the next question can be typed while this one is answered
    follow(true);
    try {
      const res = await client.request(streamUrl(question), {
        headers: { accept: 'text/event-stream', 'x-request-id': q.id },
        signal: q.controller.signal,
      });
      if (!res.ok) {
        const gone = res.status === 404 && thread.conversationId ? ' Press New chat to start another conversation.' : '';
        fail(q, `${await errorMessage(res)}${gone}`);
        return;
      }
      for await (const event of readEvents(res.body)) onEvent(q, event);
      if (!q.finished && !q.stopped) fail(q, 'The answer ended without a final event; it may be incomplete.');
    } catch (err) {
      // An AbortError is the Stop button (or New chat) doing its job, not a failure.
      if (!(err instanceof AuthNeeded) && err.name !== 'AbortError' && !q.stopped) {
        fail(q, `The connection to the server was lost (${err.message}).`);
      }
    } finally {
      if (q.thread === thread) save();
      if (asking === q) {
        asking = null;
        els.thread.removeAttribute('aria-busy');
        const hadFocus = document.activeElement === els.stop;
        handOver(els.stop, els.ask);
        if (hadFocus) els.question.focus();
        follow();
      }
      if (!q.stopped) onSettled(); // a stop settles once its outcome is in
    }
  }

  /** Asks the server how the stopped request ended, into the stopped turn. It records
   * the outcome a moment after the disconnect, so a 404 means "not yet": ask every
   * 100 ms for up to 5 s. */
  async function showOutcome(q) {
    const { turn, view } = q;
    const say = (value) => {
      if (q.thread !== thread) return false; // the thread has gone
      turn.outcome = value;
      view.outcome(value);
      save();
      follow();
      return true;
    };
    say('Stopped — asking the server what happened…');
    const until = q.stoppedAt + 5000;
    for (;;) {
      let res = null;
      try {
        res = await client.request(`/api/v1/requests/${encodeURIComponent(q.id)}`);
      } catch (err) {
        if (err instanceof AuthNeeded) return;
      }
      if (q.thread !== thread) return;
      if (res?.ok) { say(await res.json()); return; }
      if (res && res.status !== 404) {
        say(`Stopped — could not read the server's record: ${await errorMessage(res)}`);
        return;
      }
      if (performance.now() >= until) break;
      await sleep(100);
    }
    say('Stopped — the server kept no record of this request, so there is nothing to show about what it did after the stop.');
  }

  async function stop() {
    const q = asking;
    if (!q) return;
    q.stopped = true;
    q.stoppedAt = performance.now();
    q.controller.abort();
    // What it showed stays in the thread; the server keeps it as the turn's answer too.
    q.turn.state = 'stopped';
    q.view.state('stopped');
    await showOutcome(q);
    onSettled();
  }

  function newChat() {
    reset(thread.owner); // an answer still streaming is dropped: its ask() settles it
    els.question.focus();
  }

  els.ask.addEventListener('click', ask);
  els.stop.addEventListener('click', stop);
  els.newChat.addEventListener('click', newChat);
  onEnterSend(els.question, ask);
  // The text streamed so far, kept for a reload in the middle of an answer.
  window.addEventListener('pagehide', save);

  return {
    setCollections: (names) => fillCollections(els.collection, names),
    /** The server has named the caller: the thread is theirs, and one this tab kept for
     * them (before a reload) comes back. */
    setViewer(me) {
      if (thread.owner === null && !thread.turns.length && !asking) {
        const kept = stored();
        if (kept && kept.owner === me.name) {
          thread = kept;
          thread.turns.forEach((turn, i) => replay(turn, i + 1));
          follow(true);
        }
      }
      if (thread.owner === null) thread.owner = me.name;
      save();
    },
    /** Forgets the thread and its conversation, for a key change (a stream still going
     * is dropped; it ends with the old session anyway). */
    clear() {
      els.question.value = '';
      reset(null);
    },
  };
}
