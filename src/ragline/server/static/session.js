// Who you are, in the header: the principal the server sees (`GET /api/v1/me`), its role
// and groups, and Sign in / Sign out. A 401 from /me is how the page learns that keys
// are on; the client's lock then opens the key form.

import { AuthNeeded, errorMessage } from './api.js';
import { el, elements } from './dom.js';

// The one principal of a server without credentials: no key is asked for or needed.
const OPEN = 'local';

function sessionElements(root) {
  return elements(root, 'who', 'sign-in', 'sign-out');
}

function whoNodes(me) {
  const name = el('strong', { class: 'who-name' }, me.name);
  if (me.name === OPEN && me.admin) return [name, ' (admin, no sign-in needed)'];
  const groups = Array.isArray(me.groups) && me.groups.length
    ? `groups: ${me.groups.join(', ')}` : 'no groups';
  return ['Signed in as ', name, ` (${me.admin ? 'admin' : 'member'}; ${groups})`];
}

/**
 * The header part at `root` (#session). `onSignedIn(me)` runs when the server has named
 * the caller; `onSignIn()` when Sign in is pressed; `onSignOut()` when Sign out is.
 */
export function sessionPanel(root, client, { onSignedIn, onSignIn, onSignOut }) {
  const els = sessionElements(root);

  function show(nodes, { signIn = false, signOut = false } = {}) {
    els.who.replaceChildren(...nodes);
    els.signIn.hidden = !signIn;
    els.signOut.hidden = !signOut;
  }

  /** Asks the server who this tab's key makes us. */
  async function check() {
    const session = client.session;
    show(['Checking who you are…']);
    try {
      const res = await client.request('/api/v1/me');
      if (!res.ok) {
        show([`Could not tell who you are: ${await errorMessage(res)}`], { signIn: true });
        return;
      }
      const me = await res.json();
      if (client.session !== session) return; // another key since
      // Without credentials on the server there is nothing to sign in to or out of.
      show(whoNodes(me), { signOut: client.hasKey || me.name !== OPEN });
      onSignedIn(me);
    } catch (err) {
      if (!(err instanceof AuthNeeded)) show(['Could not reach the server to tell who you are.'], { signIn: true });
    }
  }

  els.signIn.addEventListener('click', () => onSignIn());
  els.signOut.addEventListener('click', () => onSignOut());

  return {
    check,
    /** Nobody is signed in: the server refused us, or the key was forgotten. */
    signedOut() { show(['Not signed in'], { signIn: true }); },
    /** Puts keyboard focus on Sign out (after the key form it came from has gone). */
    focus() { if (!els.signOut.hidden) els.signOut.focus(); },
  };
}
