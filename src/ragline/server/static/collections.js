// The collections table (in the Documents panel); the names also fill the panels'
// collection pickers, through `onNames`.

import { AuthNeeded, errorMessage } from './api.js';
import { el, elements, setMessage } from './dom.js';
import { intText } from './util.js';

function collectionsElements(root) {
  const els = elements(root, 'collections', 'collections-status');
  return { ...els, rows: els.collections.tBodies[0] };
}

/** The table inside `root` (#documents); `onNames(names)` runs at every change. */
export function collectionsPanel(root, client, { onNames }) {
  const els = collectionsElements(root);

  function render(collections) {
    onNames(collections.map((c) => c.name));
    const rows = collections.map((c) => el('tr', {},
      el('th', { scope: 'row' }, c.name),
      el('td', { class: 'num' }, intText(c.documents)),
      el('td', { class: 'num' }, intText(c.chunks))));
    if (!rows.length) {
      const empty = client.locked ? '—' : 'No collections yet.';
      rows.push(el('tr', {}, el('td', { colspan: 3, class: 'empty' }, empty)));
    }
    els.rows.replaceChildren(...rows);
  }

  async function refresh() {
    const status = els.collectionsStatus;
    try {
      const res = await client.request('/api/v1/collections');
      if (!res.ok) { setMessage(status, `Could not list the collections: ${await errorMessage(res)}`); return; }
      const body = await res.json();
      setMessage(status, '');
      render(Array.isArray(body.collections) ? body.collections : []);
    } catch (err) {
      if (!(err instanceof AuthNeeded)) setMessage(status, 'Could not reach the server to list the collections.');
    }
  }

  /** Forgets the collections, for when the key is missing or wrong. */
  return { refresh, clear: () => render([]) };
}
