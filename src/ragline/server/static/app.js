// ragline's page: a streamed chat thread with a real Stop, document upload, agent runs, and the
// "What ragline saved" counters. Native ES modules, no framework, no build step; each
// panel's module finds its own elements and keeps its own state, and server data only
// ever goes in via text nodes, never innerHTML. This module wires the panels together.
//
// Everything the page shows belongs to one principal: the one this tab's key names
// (or `local`, on a server without credentials). So nothing is asked for until the
// server has said who we are, and every change of key first wipes every panel.

import { createClient } from './api.js';
import { chatPanel } from './chat.js';
import { collectionsPanel } from './collections.js';
import { historyPanel } from './history.js';
import { ingestPanel } from './ingest.js';
import { keyPanel } from './key.js';
import { runsPanel } from './runs.js';
import { savedPanel } from './saved.js';
import { sessionPanel } from './session.js';

const byId = (id) => document.getElementById(id);

function start() {
  // A 401 anywhere: forget everything the server sent, then ask for a key.
  const client = createClient({
    onLocked(rejected) {
      forget();
      session.signedOut();
      key.ask(rejected);
    },
  });
  const saved = savedPanel(byId('saved'), client);
  const history = historyPanel(byId('runs'), client);
  const chat = chatPanel(byId('chat'), client, { onSettled: saved.refresh });
  const runs = runsPanel(byId('runs'), client, {
    onStarted: history.refresh,
    onFinished() {
      saved.refresh();
      history.refresh();
    },
  });
  const collections = collectionsPanel(byId('documents'), client, {
    onNames(names) {
      chat.setCollections(names);
      runs.setCollections(names);
    },
  });
  const ingest = ingestPanel(byId('documents'), client, { onIndexed: collections.refresh });
  const panels = [collections, history, saved, chat, runs, ingest];
  const forget = () => { for (const panel of panels) panel.clear(); };

  const session = sessionPanel(byId('session'), client, {
    onSignedIn(me) {
      if (key.open && key.close()) session.focus();
      history.setViewer(me);
      chat.setViewer(me);
      saved.setViewer(me);
      collections.refresh();
      history.refresh();
      saved.refresh();
    },
    onSignIn: () => key.show(),
    onSignOut() {
      client.forgetKey();
      forget();
      session.check(); // keys on: its 401 asks for the next one
    },
  });
  const key = keyPanel(byId('key-form'), {
    onKey(entered) {
      client.setKey(entered);
      forget();
      session.check(); // a refusal comes back as a 401, which reopens the form
    },
  });

  session.check();
  setInterval(() => { if (!document.hidden && !client.locked) saved.refresh(); }, 5000);
}

start();
