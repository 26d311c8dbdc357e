// ragline's page: streamed chat with a real Stop, document upload, agent runs, and the
// "What ragline saved" counters. Native ES modules, no framework, no build step; each
// panel's module finds its own elements and keeps its own state, and server data only
// ever goes in via text nodes, never innerHTML. This module wires the panels together.

import { createClient } from './api.js';
import { chatPanel } from './chat.js';
import { collectionsPanel } from './collections.js';
import { ingestPanel } from './ingest.js';
import { keyPanel } from './key.js';
import { runsPanel } from './runs.js';
import { savedPanel } from './saved.js';

const byId = (id) => document.getElementById(id);

function start() {
  // A 401 anywhere: forget everything the server sent, then ask for a key.
  const client = createClient({
    onLocked(rejected) {
      collections.clear();
      saved.clear();
      key.ask(rejected);
    },
  });
  const saved = savedPanel(byId('saved'), client);
  const chat = chatPanel(byId('chat'), client, { onSettled: saved.refresh });
  const runs = runsPanel(byId('runs'), client, { onFinished: saved.refresh });
  const collections = collectionsPanel(byId('documents'), client, {
    onNames(names) {
      chat.setCollections(names);
      runs.setCollections(names);
    },
  });
  ingestPanel(byId('documents'), client, { onIndexed: collections.refresh });
  const loadAll = () => {
    collections.refresh();
    saved.refresh();
  };
  const key = keyPanel(byId('key-form'), client, { onSaved: loadAll });

  loadAll();
  setInterval(() => { if (!document.hidden) saved.refresh(); }, 5000);
}

start();
