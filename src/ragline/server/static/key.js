// The API key form: shown when the server refuses the page, hidden once a key is saved.

import { elements } from './dom.js';

const ASK = 'This server needs an API key. It is kept only in this tab (sessionStorage).';
const REFUSED = 'That API key was not accepted. Enter another one.';

function keyElements(root) {
  return elements(root, 'key-form', 'key-msg', 'key-input');
}

/** The form at `root` (#key-form); `onSaved()` runs once a key is kept. */
export function keyPanel(root, client, { onSaved }) {
  const els = keyElements(root);

  els.keyForm.addEventListener('submit', (event) => {
    event.preventDefault();
    const key = els.keyInput.value.trim();
    if (!key) { els.keyInput.focus(); return; }
    client.setKey(key);
    els.keyInput.value = '';
    els.keyForm.hidden = true;
    onSaved();
  });

  return {
    /** Shows the form (once), saying whether a key was refused or none was given. */
    ask(rejected) {
      if (!els.keyForm.hidden) return;
      els.keyMsg.textContent = rejected ? REFUSED : ASK;
      els.keyForm.hidden = false;
      els.keyInput.focus();
    },
  };
}
