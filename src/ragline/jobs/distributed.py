"""Ingestion jobs in cluster mode: procrastinate tasks on the shared PostgreSQL.

A job fans out into parts (each server path, each upload, each slice of posted
documents); each part is a procrastinate task that any worker process takes
(``ragline worker``, or ``ragline serve`` itself). The part's inputs travel in the
database, so no worker needs another's disk.

The ingestion rules hold across workers: a document is switched in whole or not at all
(the record store's generations), a part stops at its next batch boundary when its job
is cancelled from any replica (a notice that reaches every worker process), and a part
whose worker died (kill -9: its heartbeat stops) is retried by another worker, which
first collects what that part left half-written and skips what it had finished.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

from ..errors import RagLineError
from ..ingestion import Ingestor, IngestProgress, Stop
from ..lifetime import Cause, Lifetime
from ..notices import Notices
from ..providers import JobStore
from ..providers.coordination import JobParts, PartInputs, PartUpdate, WorkKey
from ..threads import CancelToken, ThreadBridge
from .contract import TERMINAL, JobInput, allowed_path, load_inputs, stored_job

__all__ = ["DistributedJobs"]

log = logging.getLogger("ragline.jobs")

QUEUE = "ragline-ingest"
_REPORT_EVERY = 0.5  # seconds between a running part's progress saves
TASK = "ragline.ingest_part"


class _Interrupted(Exception):
    """A part stopped by its worker's shutdown: procrastinate retries it."""


class DistributedJobs:
    """:class:`~ragline.jobs.Jobs` on procrastinate: the job API (submit, status,
    cancel) and a worker of the shared queue (``work``). ``database_url`` is the
    PostgreSQL that holds the queue, ``records`` and ``parts``; ``error_for`` turns a
    driver's error into ours."""

    shared = True

    def __init__(
        self,
        *,
        ingestor: Ingestor,
        records: JobStore,
        parts: JobParts,
        notices: Notices,
        database_url: str,
        error_for: Callable[[Exception], RagLineError],
        bridge: ThreadBridge,
        roots: list[Path],
        default_collection: str,
        max_document_bytes: int,
        part_documents: int = 64,
        heartbeat: float = 10.0,
        stalled_after: float = 30.0,
        concurrency: int = 1,
    ) -> None:
        from procrastinate import App, PsycopgConnector, RetryStrategy

        self.ingestor = ingestor
        self.records = records
        self.job_parts = parts
        self.notices = notices
        self.database_url = database_url
        self.error_for = error_for
        self.bridge = bridge
        self.roots = [root.resolve() for root in roots]
        self.default_collection = default_collection
        self.max_document_bytes = max_document_bytes
        self.part_documents = part_documents
        self.heartbeat = heartbeat
        self.stalled_after = stalled_after
        self.concurrency = concurrency
        self.app = App(connector=PsycopgConnector(conninfo=database_url))
        self.task = self.app.task(
            name=TASK,
            queue=QUEUE,
            retry=RetryStrategy(max_attempts=20, wait=0, retry_exceptions={_Interrupted}),
        )(self._part)
        self._worker: Lifetime | None = None
        self._live: dict[tuple[str, int], IngestProgress] = {}

    # -- life --------------------------------------------------------------------------
    async def open(self, lifetime: Lifetime) -> None:
        """Connect procrastinate and create its schema once (advisory-locked)."""
        from psycopg import AsyncConnection

        await lifetime.checkpoint()
        try:
            await self.app.open_async()
            # A connection of its own: the record store's pool opens side by side.
            async with (
                await AsyncConnection.connect(self.database_url, autocommit=True) as conn,
                conn.transaction(),
            ):
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (0x7261676C696E66,))
                cursor = await conn.execute("SELECT to_regclass('procrastinate_jobs')")
                row = await cursor.fetchone()
                if row is None or row[0] is None:
                    await conn.execute(self.app.schema_manager.get_schema().encode())
        except Exception as exc:  # noqa: BLE001 - procrastinate's connect errors, as ours
            with anyio.move_on_after(2, shield=True):
                await self.app.close_async()
            raise self.error_for(exc) from None

    async def aclose(self) -> None:
        await self.app.close_async()

    def allowed_path(self, raw: str) -> Path:
        """A server-side path, only under a configured root (every worker must see it)."""
        return allowed_path(raw, self.roots)

    # -- the API -----------------------------------------------------------------------
    async def submit(self, lifetime: Lifetime, job: JobInput) -> str:
        """Persist a job and its parts, and defer one task per part; returns its id."""
        parts: list[PartInputs] = [([str(p)], []) for p in job.paths]
        documents = job.documents
        for start in range(0, len(documents), self.part_documents):
            lines = "".join(
                json.dumps(d) + "\n" for d in documents[start : start + self.part_documents]
            )
            parts.append(([], [("documents.jsonl", lines.encode())]))
        for name, data in job.uploads:
            parts.append(([], [(Path(name).name.lstrip(".") or "upload", data)]))
        job_id = uuid.uuid4().hex
        body = {
            "collection": job.collection or self.default_collection,
            "owner": job.owner,
            "acl": list(job.acl),
            "prune": job.prune,  # once every part has succeeded (see JobParts.save_part)
            "inputs": [p for paths_, _ in parts for p in paths_],
            "parts": len(parts),
            "submitted": time.time(),
            "progress": None,
            "error": None,
            "cause": None,
        }
        await self.job_parts.create_job(job_id, body, parts, lifetime)
        for index in range(len(parts)):
            task_id = await self.task.configure(lock=f"{job_id}:{index}").defer_async(
                job_id=job_id, part=index
            )
            await self.job_parts.set_task(job_id, index, task_id, lifetime)
        if not parts:
            await self.records.save_job(job_id, "succeeded", body, lifetime)
        return job_id

    async def status(self, lifetime: Lifetime, job_id: str) -> dict[str, Any]:
        """The job's state, with its parts' progress summed."""
        state, body = await stored_job(self.records, job_id, lifetime)
        parts = await self.job_parts.parts(job_id, lifetime)
        progress = [
            self._live[(job_id, p["part"])].as_dict()
            if (job_id, p["part"]) in self._live
            else p["progress"]
            for p in parts
        ]
        errors = [p["error"] for p in parts if p["error"]]
        cancelled = state == "cancelled" or (state not in TERMINAL and body.get("cancel_requested"))
        summed = _summed([p for p in progress if p])
        if summed is not None and body.get("pruned"):
            summed["documents"]["pruned"] = body["pruned"]
        return {
            "job_id": job_id,
            "state": state,
            "collection": body["collection"],
            "owner": body.get("owner"),
            "progress": summed,
            "parts": [{"part": p["part"], "state": p["state"]} for p in parts],
            "error": "; ".join(errors) or None,
            "cause": str(Cause.EXPLICIT) if cancelled else body.get("cause"),
        }

    async def cancel(self, lifetime: Lifetime, job_id: str) -> dict[str, Any]:
        """Stop a job wherever its parts run, each at its next batch boundary; parts
        not started never start."""
        status = await self.status(lifetime, job_id)
        if status["state"] in TERMINAL:
            return status
        await self.job_parts.request_cancel(job_id, lifetime)
        for part in await self.job_parts.parts(job_id, lifetime):
            queued = part["state"] == "queued" and part["task_id"] is not None
            if queued and await self.app.job_manager.cancel_job_by_id_async(part["task_id"]):
                await self.job_parts.save_part(
                    PartUpdate(job_id, part["part"], "cancelled"), lifetime
                )
        return await self.status(lifetime, job_id)

    # -- the worker --------------------------------------------------------------------
    async def work(self, lifetime: Lifetime) -> None:
        """Take parts from the queue until ``lifetime`` ends; retry the parts of workers
        whose heartbeat stopped."""
        self._worker = lifetime
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._retry_stalled, lifetime)
            await self.app.run_worker_async(
                queues=[QUEUE],
                concurrency=self.concurrency,
                install_signal_handlers=False,
                update_heartbeat_interval=self.heartbeat,
                shutdown_graceful_timeout=1.0,
                name=f"ragline-{uuid.uuid4().hex[:8]}",
            )

    async def _retry_stalled(self, lifetime: Lifetime) -> None:
        while True:
            await anyio.sleep(self.heartbeat)
            manager = self.app.job_manager
            for job in await manager.get_stalled_jobs(
                queue=QUEUE, seconds_since_heartbeat=self.stalled_after
            ):
                log.warning("retrying a part whose worker stopped", extra={"task_id": job.id})
                await manager.retry_job(job)

    async def _part(self, job_id: str, part: int) -> None:
        """One part, run by whichever worker took it."""
        if self._worker is None:
            raise RuntimeError("a part ran outside DistributedJobs.work")
        owner = f"{job_id}:{part}"
        with self._worker.child(f"ingest-{owner}") as lifetime:
            body, state, paths, files = await self.job_parts.part(job_id, part, lifetime)
            if body.get("cancel_requested") or state in TERMINAL:
                await self.job_parts.save_part(PartUpdate(job_id, part, "cancelled"), lifetime)
                return
            await self.job_parts.save_part(PartUpdate(job_id, part, "running"), lifetime)
            progress = self._live[(job_id, part)] = IngestProgress()
            seen: list[str] = []
            try:
                error = await self._ingest(
                    lifetime, job_id, part, body, paths, files, progress, seen
                )
            finally:
                self._live.pop((job_id, part), None)
            final = "cancelled" if progress.stopped else "failed" if error else "succeeded"
            ended = PartUpdate(job_id, part, final, progress.as_dict(), error, documents=seen)
            await self.job_parts.save_part(ended, lifetime)
        if lifetime.reason is not None:  # our own shutdown: another start retries it
            with lifetime.last_words(1) as words:
                again = PartUpdate(job_id, part, "queued", progress.as_dict())
                await self.job_parts.save_part(again, words)
            raise _Interrupted(owner)

    async def _ingest(
        self,
        lifetime: Lifetime,
        job_id: str,
        part: int,
        body: dict[str, Any],
        paths: list[str],
        files: list[tuple[str, bytes]],
        progress: IngestProgress,
        seen: list[str],
    ) -> str | None:
        """Ingest one part, stopping at a batch boundary on a cancel notice; its progress
        is saved as it goes, for every replica to read. Returns the part's error, if it
        failed."""
        stop = Stop()

        async def report() -> None:
            while True:
                await anyio.sleep(_REPORT_EVERY)
                running = PartUpdate(job_id, part, "running", progress.as_dict())
                await self.job_parts.save_part(running, lifetime)

        async def watch() -> None:
            # Through this process's one listener: the waiter is taken before the job
            # is read, so a cancel between the two still wakes it.
            key = WorkKey.job(job_id)
            while True:
                news = self.notices.news(key)
                found = await self.records.job(job_id, lifetime)
                if found and found[1].get("cancel_requested"):
                    stop.request(Cause.EXPLICIT, "cancelled through the API")
                    return
                await news.wait()

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(watch)
                tg.start_soon(report)
                with tempfile.TemporaryDirectory(prefix="ragline-part-") as scratch:
                    inputs = [Path(p) for p in paths]
                    inputs += await self.bridge.run(lifetime, _write, Path(scratch), files)
                    documents, problems = await self.bridge.run(
                        lifetime, load_inputs, inputs, self.max_document_bytes, body.get("acl", ())
                    )
                    seen += [d.id for d in documents] + [p.document_id for p in problems]
                    await self.ingestor.run(
                        documents,
                        lifetime,
                        collection=body["collection"],
                        owner=f"{job_id}:{part}",
                        problems=problems,
                        stop=stop,
                        progress=progress,
                    )
                tg.cancel_scope.cancel()
        except RagLineError as exc:
            log.warning("ingestion part failed: %s", exc.message, extra={"job_id": job_id})
            return exc.message
        except Exception:  # a broken part must not stop the worker
            log.exception("ingestion part failed", extra={"job_id": job_id})
            return "the part failed"
        return None


def _write(token: CancelToken, folder: Path, files: list[tuple[str, bytes]]) -> list[Path]:
    written = []
    for name, data in files:
        (folder / name).write_bytes(data)
        written.append(folder / name)
    return written


def _summed(parts: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Parts' progress as one job's."""
    if not parts:
        return None
    documents = {k: sum(p["documents"][k] for p in parts) for k in parts[0]["documents"]}
    chunks = {k: sum(p["chunks"][k] for p in parts) for k in parts[0]["chunks"]}
    etas = [p["eta_seconds"] for p in parts if p["eta_seconds"] is not None]
    return {
        "documents": documents,
        "chunks": chunks,
        "rate": round(sum(p["rate"] for p in parts), 2),
        "eta_seconds": max(etas) if etas else None,
        "errors": [e for p in parts for e in p["errors"]],
    }
