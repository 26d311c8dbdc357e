// The sign-in form: an API key, kept only in this tab. It opens when the server wants a
// key (at once, when keys are on) or from the header's Sign in, says when a key was
// refused, and closes once the server has accepted one: the app checks the key, the
// form only collects it.

import { elements } from './dom.js';

const ASK = 'This server needs an API key. It is kept only in this tab (sessionStorage).';
const REFUSED = 'That API key was refused. Check it and try again, or enter another one.';
const CHECKING = 'Checking the key…';

function keyElements(root) {
  return elements(root, 'key-form', 'key-msg', 'key-input', 'key-save');
}

/** The form at `root` (#key-form); `onKey(key)` runs with each key entered. */
export function keyPanel(root, { onKey }) {
  const els = keyElements(root);

  function say(text, refused = false) {
    els.keyMsg.textContent = text;
    els.keyMsg.classList.toggle('refused', refused);
  }

  els.keyForm.addEventListener('submit', (event) => {
    event.preventDefault();
    const key = els.keyInput.value.trim();
    if (!key) { els.keyInput.focus(); return; }
    els.keyInput.value = '';
    els.keySave.disabled = true; // until the server has answered
    say(CHECKING);
    onKey(key);
  });

  return {
    get open() { return !els.keyForm.hidden; },

    /** Shows the form, saying whether a key was refused or none was given. */
    ask(rejected) {
      say(rejected ? REFUSED : ASK, rejected);
      els.keySave.disabled = false;
      els.keyForm.hidden = false;
      els.keyInput.focus();
    },

    /** Shows the form if it is closed, or moves to it (the header's Sign in). */
    show() {
      if (els.keyForm.hidden) this.ask(false);
      else els.keyInput.focus();
    },

    /** The key was accepted: the form goes. True if it had keyboard focus. */
    close() {
      const hadFocus = els.keyForm.contains(document.activeElement);
      els.keyForm.hidden = true;
      els.keySave.disabled = false;
      say(ASK);
      return hadFocus;
    },
  };
}
