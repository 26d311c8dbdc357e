// Small pure helpers: wording, numbers and parsing. No DOM, no state.

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
export const plural = (n, word) => `${n} ${word}${n === 1 ? '' : 's'}`;
export const num = (v) => (Number.isFinite(v) ? v : 0);
export const intText = (v) => (Number.isFinite(v) ? String(Math.round(v)) : '—');
export const errorText = (e) => (typeof e === 'string' ? e : e?.message || '');

/** `text` on one line, cut to at most `max` characters with an ellipsis. */
export function short(text, max) {
  const flat = String(text).replace(/\s+/g, ' ').trim();
  return flat.length > max ? `${flat.slice(0, max - 1).trimEnd()}…` : flat;
}

export function asText(value) {
  if (typeof value === 'string') return value;
  try { return JSON.stringify(value); } catch { return String(value); }
}

export function parseJSON(text) {
  try { return JSON.parse(text); } catch { return null; }
}

export function duration(seconds) {
  return seconds < 90 ? `${Math.max(1, Math.round(seconds))} s` : `${Math.round(seconds / 60)} min`;
}
