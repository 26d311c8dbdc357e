// The collections table (in the Documents panel): what the caller may read (the server
// lists nothing else) and, briefly, who else may. The names also fill the panels'
// collection pickers, through `onNames`.

import { AuthNeeded, errorMessage } from './api.js';
import { el, elements, setMessage } from './dom.js';
import { intText } from './util.js';

function collectionsElements(root) {
  const els = elements(root, 'collections', 'collections-status');
  return { ...els, rows: els.collections.tBodies[0] };
}

/** One ACL entry in words: `*`, `user:ann`, `group:eng`. */
function entryText(entry) {
  if (entry === '*') return 'everyone';
  if (entry.startsWith('user:')) return entry.slice(5);
  if (entry.startsWith('group:')) return `group ${entry.slice(6)}`;
  return entry;
}

/** Who may read a collection, short: its owner (who always may) and its readers.
 * Admins may read everything, so they go unsaid. */
export function readersText(access) {
  const read = Array.isArray(access?.read) ? access.read : [];
  if (read.includes('*')) return 'everyone';
  const creator = access?.creator;
  const names = read.map(entryText).filter((name) => name !== creator);
  if (creator) names.unshift(`${creator} (owner)`);
  return names.length ? names.join(', ') : 'admins only';
}

function writersText(access) {
  const write = Array.isArray(access?.write) ? access.write : [];
  const names = write.map(entryText);
  if (access?.creator && !write.includes(`user:${access.creator}`)) names.unshift(access.creator);
  return `Writers: ${names.length ? names.join(', ') : 'admins only'}`;
}

/** The table inside `root` (#documents); `onNames(names)` runs at every change. */
export function collectionsPanel(root, client, { onNames }) {
  const els = collectionsElements(root);
  let asked = 0; // the latest refresh: an older answer arriving late is dropped

  function render(collections, empty = 'No collections yet.') {
    onNames(collections.map((c) => c.name));
    const rows = collections.map((c) => el('tr', {},
      el('th', { scope: 'row' }, c.name),
      el('td', { class: 'num' }, intText(c.documents)),
      el('td', { class: 'num' }, intText(c.chunks)),
      el('td', { class: 'readers', title: writersText(c.access) }, readersText(c.access))));
    if (!rows.length) rows.push(el('tr', {}, el('td', { colspan: 4, class: 'empty' }, empty)));
    els.rows.replaceChildren(...rows);
  }

  async function refresh() {
    const mine = ++asked;
    const status = els.collectionsStatus;
    try {
      const res = await client.request('/api/v1/collections');
      if (mine !== asked) return;
      if (!res.ok) { setMessage(status, `Could not list the collections: ${await errorMessage(res)}`); return; }
      const body = await res.json();
      if (mine !== asked) return;
      setMessage(status, '');
      render(Array.isArray(body.collections) ? body.collections : []);
    } catch (err) {
      if (mine === asked && !(err instanceof AuthNeeded)) setMessage(status, 'Could not reach the server to list the collections.');
    }
  }

  return {
    refresh,
    /** Forgets the collections, for a key change; an answer still on its way is dropped. */
    clear() {
      asked += 1;
      setMessage(els.collectionsStatus, '');
      render([], '—');
    },
  };
}
