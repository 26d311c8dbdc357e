"""Ingestion jobs in one process: persisted, run one at a time by a task the application
owns.

A job's input is saved under ``<data_dir>/jobs/<job_id>/`` (JSON documents as a JSONL file,
uploads as files) or names server-side paths under the configured roots. Job state lives
in the record store, so it survives restarts: a job that was queued or running when the
server stopped runs again after it starts (unchanged documents are skipped, orphans of
the interrupted attempt collected).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

from ..ingestion import Ingestor, IngestProgress, Stop
from ..lifetime import Cause, Lifetime
from ..providers import JobStore
from ..threads import CancelToken, ThreadBridge
from .contract import TERMINAL, JobInput, allowed_path, load_inputs, stored_job

__all__ = ["JobQueue"]

log = logging.getLogger("ragline.jobs")


class JobQueue:
    """:class:`~ragline.jobs.Jobs` in this process: accepts jobs, runs them in order
    under the application's lifetime, reports them."""

    shared = False

    def __init__(
        self,
        *,
        ingestor: Ingestor,
        records: JobStore,
        bridge: ThreadBridge,
        folder: Path,
        roots: list[Path],
        default_collection: str,
        max_document_bytes: int = 10 * 1024 * 1024,
    ) -> None:
        self.max_document_bytes = max_document_bytes
        self.ingestor = ingestor
        self.records = records
        self.bridge = bridge
        self.folder = folder
        self.roots = [root.resolve() for root in roots]
        self.default_collection = default_collection
        self._wake = anyio.Event()
        self._live: dict[str, tuple[Stop, IngestProgress]] = {}

    # -- submitting --------------------------------------------------------------------
    def allowed_path(self, raw: str) -> Path:
        """A server-side path, only under a configured root."""
        return allowed_path(raw, self.roots)

    async def submit(self, lifetime: Lifetime, job: JobInput) -> str:
        """Persist a job and wake the worker; returns its id."""
        job_id = uuid.uuid4().hex
        folder = self.folder / job_id
        inputs = [str(p) for p in job.paths]
        if job.documents or job.uploads:
            # Each saved file is named, not the folder walked: an upload of an unsupported
            # type is then reported instead of silently skipped.
            inputs += await self.bridge.run(
                lifetime, _save_inputs, folder, job.documents, job.uploads
            )
        body = {
            "collection": job.collection or self.default_collection,
            "owner": job.owner,
            "acl": list(job.acl),
            "prune": job.prune,
            "inputs": inputs,
            "submitted": time.time(),
            "progress": None,
            "error": None,
            "cause": None,
        }
        await self.records.save_job(job_id, "queued", body, lifetime)
        self._wake.set()
        return job_id

    async def status(self, lifetime: Lifetime, job_id: str) -> dict[str, Any]:
        """The job's state, counts, rate, ETA and per-document errors."""
        state, body = await stored_job(self.records, job_id, lifetime)
        live = self._live.get(job_id)
        progress = live[1].as_dict() if live else body.get("progress")
        return {
            "job_id": job_id,
            "state": state,
            "collection": body["collection"],
            "owner": body.get("owner"),
            "progress": progress,
            "error": body.get("error"),
            "cause": body.get("cause"),
        }

    async def cancel(self, lifetime: Lifetime, job_id: str) -> dict[str, Any]:
        """Stop a job at its next batch boundary (cause ``explicit``)."""
        status = await self.status(lifetime, job_id)
        if status["state"] in TERMINAL:
            return status
        live = self._live.get(job_id)
        if live is not None:
            live[0].request(Cause.EXPLICIT, "cancelled through the API")
        else:  # still queued: it never starts
            await self._save(lifetime, job_id, "cancelled", cause=str(Cause.EXPLICIT))
        return await self.status(lifetime, job_id)

    # -- running -----------------------------------------------------------------------
    async def work(self, lifetime: Lifetime) -> None:
        """The worker loop: runs queued jobs one at a time, until the lifetime ends."""
        for job_id, state, _ in await self.records.jobs(lifetime, states=["running"]):
            log.info("resuming interrupted job", extra={"job_id": job_id, "state": state})
        while True:
            jobs = await self.records.jobs(lifetime, states=["queued", "running"])
            if not jobs:
                self._wake = anyio.Event()
                await self._wake.wait()
                continue
            job_id, _, body = jobs[0]
            await self._run(lifetime, job_id, body)

    async def _run(self, lifetime: Lifetime, job_id: str, body: dict[str, Any]) -> None:
        stop, progress = Stop(), IngestProgress()
        self._live[job_id] = (stop, progress)
        await self._save(lifetime, job_id, "running")
        try:
            inputs = [Path(p) for p in body["inputs"]]
            documents, problems = await self.bridge.run(
                lifetime, load_inputs, inputs, self.max_document_bytes, body.get("acl", ())
            )
            await self.ingestor.run(
                documents,
                lifetime,
                collection=body["collection"],
                owner=job_id,
                prune=body["prune"],
                problems=problems,
                stop=stop,
                progress=progress,
            )
        except anyio.get_cancelled_exc_class():
            # Shutdown: the job stays "running" and resumes after the restart.
            # (last_words is a shielded scope with a deadline; flake8-async cannot see it.)
            with lifetime.last_words(1) as words:
                await self._save(  # noqa: ASYNC102
                    words, job_id, "running", progress=progress, cause=str(Cause.SHUTDOWN)
                )
            raise
        except Exception as exc:  # a broken job must not stop the worker
            log.exception("ingestion job failed", extra={"job_id": job_id})
            await self._save(lifetime, job_id, "failed", progress=progress, error=str(exc))
            return
        finally:
            self._live.pop(job_id, None)
        if progress.stopped is not None:
            await self._save(
                lifetime, job_id, "cancelled", progress=progress, cause=str(progress.stopped.cause)
            )
        else:
            await self._save(lifetime, job_id, "succeeded", progress=progress)
            await self.bridge.run(lifetime, _cleanup, self.folder / job_id)

    async def _save(
        self,
        lifetime: Lifetime,
        job_id: str,
        state: str,
        *,
        progress: IngestProgress | None = None,
        error: str | None = None,
        cause: str | None = None,
    ) -> None:
        found = await self.records.job(job_id, lifetime)
        if found is None:
            return  # cannot happen: jobs are never deleted
        body = found[1]
        if progress is not None:
            body["progress"] = progress.as_dict()
        body["error"], body["cause"] = error, cause
        await self.records.save_job(job_id, state, body, lifetime)


def _save_inputs(
    token: CancelToken,
    folder: Path,
    documents: Sequence[dict[str, Any]],
    uploads: Sequence[tuple[str, bytes]],
) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    saved: list[str] = []
    if documents:
        with open(folder / "documents.jsonl", "w", encoding="utf-8") as out:
            for document in documents:
                out.write(json.dumps(document) + "\n")
        saved.append(str(folder / "documents.jsonl"))
    for index, (name, data) in enumerate(uploads):
        safe = Path(name).name.lstrip(".") or "upload"  # no paths, no hidden names
        # A folder each: two uploads with one name ("a/x.txt", "b/x.txt") must not
        # overwrite each other. The second is then reported as a duplicate id.
        own = folder / f"upload-{index}"
        own.mkdir()
        (own / safe).write_bytes(data)
        saved.append(str(own / safe))
    return saved


def _cleanup(token: CancelToken, folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
