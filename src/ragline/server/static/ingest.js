// Uploading documents (in the Documents panel): the drop zone, the files, and the
// ingestion job's progress until it ends or is cancelled.

import { el, elements, setMessage } from './dom.js';
import { createTask, poll } from './task.js';
import { duration, errorText, num, plural } from './util.js';

const TERMINAL = new Set(['succeeded', 'failed', 'cancelled']);
const jobUrl = (id) => `/api/v1/ingest/${encodeURIComponent(id)}`;

function ingestElements(root) {
  return elements(root, 'drop-zone', 'file-input', 'upload-collection', 'file-list', 'upload',
    'job-cancel', 'job-error', 'job', 'job-progress', 'job-status', 'job-errors');
}

function jobText(j, work) {
  const p = j.progress || null;
  const docs = p?.documents || {};
  const chunks = p?.chunks || {};
  const cancelling = work?.cancelling ? ' (cancelling…)' : '';
  switch (j.state) {
    case 'succeeded': {
      const extra = [];
      if (docs.skipped > 0) extra.push(`${docs.skipped} unchanged, skipped`);
      if (docs.pruned > 0) extra.push(`${docs.pruned} removed`);
      return `Done — ${plural(num(docs.done), 'document')}, ${plural(num(chunks.done), 'chunk')}`
        + (extra.length ? ` (${extra.join('; ')})` : '');
    }
    case 'cancelled':
      return `Cancelled at a batch boundary — ${num(docs.done)} of ${num(docs.total)} documents indexed; nothing half-written.`;
    case 'failed':
      return `Failed — ${errorText(j.error) || 'the job failed'}${j.cause ? ` (cause: ${j.cause})` : ''}`;
    case 'queued':
      return `queued${cancelling} — waiting to start`;
    default: {
      if (!p) return `${j.state || 'running'}${cancelling} — starting…`;
      const parts = [`${j.state}${cancelling} — ${num(docs.done)} of ${num(docs.total)} documents`];
      if (chunks.total > 0) parts.push(`${num(chunks.done)} of ${chunks.total} chunks`);
      if (p.rate > 0) parts.push(`${p.rate.toFixed(1)} chunks/s`);
      if (Number.isFinite(p.eta_seconds)) parts.push(`about ${duration(p.eta_seconds)} left`);
      return parts.join(' · ');
    }
  }
}

/** The upload part of `root` (#documents); `onIndexed()` runs when a job has ended. */
export function ingestPanel(root, client, { onIndexed }) {
  const els = ingestElements(root);
  const showError = (text) => setMessage(els.jobError, text);

  function renderJob(j, work) {
    const chunks = j.progress?.chunks || {};
    const active = j.state === 'queued' || j.state === 'running';
    if (active) els.jobCancel.disabled = false; // the task disables it when the job ends

    // The bar counts chunks; with no total yet it has no value, i.e. it is indeterminate.
    const bar = els.jobProgress;
    if (chunks.total > 0) {
      bar.max = chunks.total;
      bar.value = Math.min(num(chunks.done), chunks.total);
    } else if (active) {
      bar.removeAttribute('value');
    } else {
      bar.max = 1;
      bar.value = j.state === 'succeeded' ? 1 : 0;
    }
    els.jobStatus.textContent = jobText(j, work);
    els.jobErrors.replaceChildren(...(j.progress?.errors || []).map((e) =>
      el('li', {}, `${e.source || e.document_id || 'document'}: ${e.reason || 'failed'}`)));
  }

  /** Polls the job every 250 ms until it has finished, then has the collections refreshed. */
  async function follow(work) {
    els.job.hidden = false;
    els.jobErrors.replaceChildren();
    renderJob({ state: 'queued', progress: null }, work);
    await poll(client, jobUrl(work.id), {
      onState: (state) => { if (task.isLatest(work)) renderJob(state, work); },
      isOver: (state) => TERMINAL.has(state.state),
      showError,
    });
    onIndexed();
  }

  const task = createTask(client, {
    buttons: { start: els.upload, cancel: els.jobCancel },
    showError,
    url: jobUrl,
    follow,
    startFailed: 'The upload failed',
    onCancelling: () => { els.jobStatus.textContent = 'Cancelling…'; },
  });

  function upload() {
    if (task.busy) { showError('Wait for the current upload to finish, or cancel it.'); return; }
    const files = [...els.fileInput.files];
    showError(files.length ? '' : 'Choose one or more files first.');
    if (!files.length) return;
    const form = new FormData();
    for (const file of files) form.append('files', file, file.name);
    const collection = els.uploadCollection.value.trim();
    if (collection) form.append('collection', collection);
    task.start('/api/v1/ingest', { body: form }, (body) => body.job_id); // one job at a time
  }

  function listFiles() {
    const files = [...els.fileInput.files];
    els.fileList.textContent = files.length ? `Selected: ${files.map((f) => f.name).join(', ')}` : '';
  }

  const { dropZone: zone, fileInput: input } = els;
  zone.addEventListener('click', () => input.click());
  zone.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); input.click(); }
  });
  for (const type of ['dragenter', 'dragover']) {
    zone.addEventListener(type, (e) => { e.preventDefault(); zone.classList.add('over'); });
  }
  zone.addEventListener('dragleave', () => zone.classList.remove('over'));
  zone.addEventListener('drop', (e) => {
    e.preventDefault();
    zone.classList.remove('over');
    if (!e.dataTransfer?.files.length) return;
    input.files = e.dataTransfer.files;
    listFiles();
    upload();
  });
  // A file dropped beside the zone must not replace the page.
  for (const type of ['dragover', 'drop']) window.addEventListener(type, (e) => e.preventDefault());
  input.addEventListener('change', listFiles);
  els.upload.addEventListener('click', upload);
  return {
    /** Forgets the files and the job on show, for a key change. */
    clear() {
      task.forget();
      showError('');
      els.job.hidden = true;
      els.jobStatus.textContent = '';
      els.jobErrors.replaceChildren();
      els.fileInput.value = '';
      els.uploadCollection.value = '';
      listFiles();
    },
  };
}
