// The way to the API: every request carries this tab's key (sessionStorage only: never
// the URL, never a cookie). A 401 forgets the key and locks the client until a new key
// is saved; while locked the page shows nothing the server sent.
//
// Each key is a session. Changing it (sign in, sign out, a refusal) aborts every
// request of the old session, with SignedOut as the reason, so a late answer can never
// put the previous principal's data on the page: fetch rejects with it, and so does any
// read of a body already arriving. Panels already ignore AuthNeeded, and SignedOut is one.

import { errorText } from './util.js';

const KEY = 'ragline-key';

export class AuthNeeded extends Error {
  constructor(message = 'API key needed') { super(message); this.name = 'AuthNeeded'; }
}

/** The request belonged to a session that has ended (the key changed meanwhile). */
export class SignedOut extends AuthNeeded {
  constructor() { super('the key changed'); this.name = 'SignedOut'; }
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

function keep(key) {
  try {
    if (key) sessionStorage.setItem(KEY, key);
    else sessionStorage.removeItem(KEY);
  } catch { /* storage off: nothing to keep */ }
}

/** A signal that aborts when either does, with that one's reason. */
function either(a, b) {
  if (!a) return b;
  if (AbortSignal.any) return AbortSignal.any([a, b]);
  const both = new AbortController();
  for (const signal of [a, b]) {
    if (signal.aborted) both.abort(signal.reason);
    else signal.addEventListener('abort', () => both.abort(signal.reason), { once: true });
  }
  return both.signal;
}

/** A client whose `onLocked(rejected)` runs at each 401; `rejected` is true when a key
 * was sent and refused (rather than none sent). */
export function createClient({ onLocked }) {
  let locked = false;
  let session = 0;
  let ending = new AbortController(); // aborts the current session's requests

  function newSession() {
    ending.abort(new SignedOut());
    ending = new AbortController();
    session += 1;
  }

  function lock() {
    const rejected = storedKey() !== '';
    keep('');
    locked = true;
    newSession();
    onLocked(rejected);
  }

  return {
    /** True while the server refuses us. */
    get locked() { return locked; },

    /** Whether this tab holds a key. */
    get hasKey() { return storedKey() !== ''; },

    /** Changes with every key change: work begun under another value is stale. */
    get session() { return session; },

    /** Keeps `key` for this tab and unlocks: a new session. */
    setKey(key) {
      keep(key);
      locked = false;
      newSession();
    },

    /** Forgets the key (sign out): a new session, without one. */
    forgetKey() {
      keep('');
      locked = false;
      newSession();
    },

    /** fetch with the stored key; a 401 locks the client and throws AuthNeeded. A request
     * outlived by its session throws SignedOut. */
    async request(path, options = {}) {
      const mine = session;
      const key = storedKey();
      const headers = key ? { ...options.headers, authorization: `Bearer ${key}` } : { ...options.headers };
      let res;
      try {
        res = await fetch(path, { ...options, headers, signal: either(options.signal, ending.signal) });
      } catch (err) {
        if (mine !== session) throw new SignedOut();
        throw err;
      }
      if (mine !== session) throw new SignedOut(); // a 401 of an old key says nothing now
      if (res.status === 401) { lock(); throw new AuthNeeded(); }
      return res;
    },
  };
}
