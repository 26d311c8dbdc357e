// One piece of server work at a time — an ingestion job or an agent run: started with a
// POST, followed until it ends, cancelled with a DELETE. The panel says how to follow it
// and what to show; the buttons, the one-at-a-time rule, cancelling and the errors are
// here, once. `poll` and `followEvents` are the two ways to follow.

import { AuthNeeded, errorMessage } from './api.js';
import { handOver } from './dom.js';
import { readEvents } from './sse.js';
import { sleep } from './util.js';

/**
 * @param client the API client (api.js)
 * @param spec.buttons `{ start, cancel }`: one is enabled at a time
 * @param spec.showError `(text)` shows (or with '' clears) the panel's error
 * @param spec.url `(id)` the work's URL, which DELETE cancels
 * @param spec.follow `(work)` resolves when the work has ended
 * @param spec.startFailed the error's start when the request fails, e.g. 'The upload failed'
 * @param spec.onStarted `(work)`, spec.onCancelling `(work)`, spec.onCancelFailed `(work)`
 * Each `work` is `{ id, cancelling, done }`. The cancel button is wired here; the start
 * button is the panel's, which checks its inputs and then calls `start`.
 */
export function createTask(client, spec) {
  const { buttons } = spec;
  let current = null; // the work started and not yet over
  let latest = null; // the work started last, over or not

  /** Marks `work` over and gives the start button back (it may end before its follow). */
  function finish(work) {
    work.done = true;
    handOver(buttons.cancel, buttons.start);
  }

  /** POSTs `options` to `path`, reads the new work's id with `idOf`, follows it. */
  async function start(path, options, idOf) {
    const work = { id: null, cancelling: false, done: false };
    current = work;
    latest = work;
    try {
      const res = await client.request(path, { ...options, method: 'POST' });
      if (!res.ok) { spec.showError(await errorMessage(res)); return; }
      work.id = idOf(await res.json());
      spec.onStarted?.(work);
      handOver(buttons.start, buttons.cancel);
      await spec.follow(work);
    } catch (err) {
      if (!(err instanceof AuthNeeded)) spec.showError(`${spec.startFailed} (${err.message}).`);
    } finally {
      current = null;
      finish(work);
    }
  }

  /** Asks the server to stop the current work; its follow shows how it ended. */
  async function cancel() {
    const work = current;
    if (!work || work.id == null || work.done || work.cancelling) return;
    work.cancelling = true; // the button stays enabled (and focused); repeats are ignored
    spec.onCancelling?.(work);
    try {
      const res = await client.request(spec.url(work.id), { method: 'DELETE' });
      if (!res.ok) {
        spec.showError(await errorMessage(res));
        work.cancelling = false;
        spec.onCancelFailed?.(work);
      }
    } catch (err) {
      if (!(err instanceof AuthNeeded)) spec.showError(`Could not cancel (${err.message}).`);
      work.cancelling = false;
    }
  }

  buttons.cancel.addEventListener('click', cancel);
  return {
    get busy() { return current !== null; },
    isLatest: (work) => work === latest,
    /** Disowns the work started last (the key changed): what it still reports is not
     * shown. Its requests end with the old session. */
    forget() { latest = null; },
    start,
    cancel,
    finish,
  };
}

/** GETs `url` every `every` ms, passing each state to `onState`, until `isOver(state)`.
 * A network blip is retried (the fifth in a row throws); an error response is shown. */
export async function poll(client, url, { onState, isOver, showError, every = 250 }) {
  let failures = 0;
  for (;;) {
    let res;
    try {
      res = await client.request(url);
    } catch (err) {
      if (err instanceof AuthNeeded || ++failures >= 5) throw err;
      await sleep(1000); // a blip: try again
      continue;
    }
    if (!res.ok) { showError(await errorMessage(res)); return; }
    failures = 0;
    const state = await res.json();
    onState(state);
    if (isOver(state)) return;
    await sleep(every);
  }
}

/** Reads `url`'s events into `onEvent` until `isOver()`. The endpoint replays after
 * Last-Event-ID, so a stream that drops early is resumed where it stopped (a few tries);
 * after those, `lost` is shown. */
export async function followEvents(client, url, { onEvent, isOver, showError, lost }) {
  let lastEventId = null;
  for (let attempt = 0; attempt < 4 && !isOver(); attempt++) {
    if (attempt) await sleep(500 * attempt);
    const headers = { accept: 'text/event-stream' };
    if (lastEventId != null) headers['last-event-id'] = lastEventId;
    try {
      const res = await client.request(url, { headers });
      if (!res.ok) { showError(await errorMessage(res)); return; }
      for await (const event of readEvents(res.body)) {
        if (event.id != null) lastEventId = event.id;
        onEvent(event);
      }
    } catch (err) {
      if (err instanceof AuthNeeded || err.name === 'AbortError') return;
    }
  }
  if (!isOver()) showError(lost);
}
