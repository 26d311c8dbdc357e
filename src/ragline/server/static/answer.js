// How the chat panel shows an answer: its text with citation links, the source cards,
// the usage line, a failure, and the server's record of a stopped request. Pure
// builders: each returns nodes or text; chat.js puts them in the turn they belong to.
// A thread holds many answers, so each turn's source cards get ids of their own: the
// `prefix` (`t2-` → `#t2-source-1`).

import { el } from './dom.js';
import { errorText, intText, plural, short } from './util.js';

/** `text` as nodes, each citation [n] of a known source rank (`ranks`) as a link to the
 * card of its turn (`prefix`). */
export function answerNodes(text, ranks, prefix = '') {
  const parts = [];
  let last = 0;
  for (const match of text.matchAll(/\[(\d+)\]/g)) {
    if (!ranks.has(match[1])) continue;
    parts.push(text.slice(last, match.index));
    parts.push(el('a', { class: 'cite', href: `#${prefix}source-${match[1]}` }, match[0]));
    last = match.index + match[0].length;
  }
  parts.push(text.slice(last));
  return parts;
}

export function sourceCard(s, prefix = '') {
  const title = s.title || s.source || s.document_id || 'Untitled';
  const meta = [];
  if (s.source && s.source !== title) meta.push(s.source);
  if (Number.isFinite(s.chunk_index)) meta.push(`chunk ${s.chunk_index}`);
  if (Number.isFinite(s.score)) meta.push(`score ${s.score.toFixed(3)}`);
  return el('article', { class: 'source-card', id: `${prefix}source-${s.rank}`, tabindex: '-1' },
    el('h4', {}, el('span', { class: 'rank' }, `[${s.rank}]`), ' ', title),
    meta.length ? el('p', { class: 'meta' }, meta.join(' · ')) : null,
    el('p', { class: 'snippet' }, short(s.text || '', 240)));
}

/** The usage line of a `done` event. */
export function usageText(done) {
  const usage = done.usage || {};
  const parts = [];
  if (Number.isFinite(usage.total_tokens)) {
    parts.push(`${plural(usage.total_tokens, 'token')}${usage.estimated ? ' (estimated)' : ''}`);
  }
  parts.push(`finish: ${done.finish_reason || usage.finish_reason || 'unknown'}`);
  return parts.join(' · ');
}

/** What to say about an `error` event. */
export function failureText(body) {
  const error = body.error || {};
  const cause = error.cause || body.cause || body.usage?.cause;
  const tokens = body.usage?.completion_tokens;
  const after = Number.isFinite(tokens) ? ` after ${plural(tokens, 'token')}` : '';
  if (cause === 'shutdown') return `The server is shutting down; the answer was stopped${after}.`;
  if (error.code === 'timeout' || cause === 'deadline') {
    return `The answer took longer than the server allows (deadline) — the model was stopped${after}.`;
  }
  return `${errorText(error) || 'The answer failed.'}${body.status ? ` (HTTP ${body.status})` : ''}`;
}

function msText(ms) {
  if (ms < 1) return ms.toFixed(2);
  return ms < 100 ? ms.toFixed(1) : String(Math.round(ms));
}

/** The server's record of a stopped request, each number in a `data-field` span. */
export function outcomeNodes(o) {
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
  return parts;
}
