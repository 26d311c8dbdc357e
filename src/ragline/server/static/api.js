// The way to the API: every request carries this tab's key (sessionStorage). A 401
// forgets the key and locks the client until a new key is saved; while locked the page
// shows nothing the server sent.

import { errorText } from './util.js';

const KEY = 'ragline-key';

export class AuthNeeded extends Error {
  constructor() { super('API key needed'); this.name = 'AuthNeeded'; }
}

/** The readable message of an error response: `{"error":{"message"}}` plus the status. */
export async function errorMessage(res) {
  let message = '';
  try { message = errorText((await res.json())?.error); } catch { /* not JSON */ }
  return `${message || res.statusText || 'The request failed'} (HTTP ${res.status})`;
}

function storedKey() {
  try { return sessionStorage.getItem(KEY) || ''; } catch { return ''; }
}

/** A client whose `onLocked(rejected)` runs at each 401; `rejected` is true when a key
 * was sent and refused (rather than none sent). */
export function createClient({ onLocked }) {
  let locked = false;

  function lock() {
    const rejected = storedKey() !== '';
    try { sessionStorage.removeItem(KEY); } catch { /* storage off */ }
    locked = true;
    onLocked(rejected);
  }

  return {
    /** True while the server refuses us. */
    get locked() { return locked; },

    /** Keeps `key` for this tab and unlocks. */
    setKey(key) {
      try { sessionStorage.setItem(KEY, key); } catch { /* storage off: nothing to keep */ }
      locked = false;
    },

    /** fetch with the stored key; a 401 locks the client and throws AuthNeeded. */
    async request(path, options = {}) {
      const key = storedKey();
      const headers = key ? { ...options.headers, authorization: `Bearer ${key}` } : { ...options.headers };
      const res = await fetch(path, { ...options, headers });
      if (res.status === 401) { lock(); throw new AuthNeeded(); }
      return res;
    },
  };
}
