"""``ragline worker``: take ingestion parts from the shared queue, nothing else.

Needs ``RAGLINE_DATABASE_URL`` (and a shared vector store, ``RAGLINE_VECTOR_URI``). It
opens the embedder, the vector store and the database, then works until SIGTERM or
SIGINT, which cancel the part in flight with cause ``shutdown``: the part goes back to
the queue and another worker (or this one, restarted) resumes it.
"""

from __future__ import annotations

import logging
import signal
import sys
from contextlib import AsyncExitStack

import anyio

from ..backend import build_backend
from ..factory import build_ingestion, open_parts
from ..lifetime import Cause, Lifetime
from ..settings import Settings
from ..threads import ThreadBridge

__all__ = ["work"]

log = logging.getLogger("ragline.ingest_worker")


async def work(settings: Settings) -> int:
    """Run an ingestion worker until a signal; the exit status."""
    bridge = ThreadBridge(orphan_grace=settings.thread_orphan_grace)
    backend = build_backend(settings, bridge)
    ingestion = build_ingestion(settings, bridge, backend.records)
    notices = backend.notices()
    jobs = backend.jobs(ingestion.ingestor, notices, bridge)
    if not jobs.shared:
        print(
            "ragline worker: set RAGLINE_DATABASE_URL (workers share a PostgreSQL)", file=sys.stderr
        )
        return 2
    root = Lifetime.root("worker")
    parts = [*backend.built, *ingestion.built, jobs]
    async with AsyncExitStack() as stack, anyio.create_task_group() as tg:
        with root:
            await open_parts(stack, root, parts, grace=settings.shutdown_grace)
            tg.start_soon(_on_signal, root)
            # One listener for the process: cancels of the parts it runs come through it.
            tg.start_soon(notices.listen, root.child("notices"))
            log.info("worker ready")
            with root.child("ingest-worker") as lifetime:
                await jobs.work(lifetime)
        tg.cancel_scope.cancel()
    return 0


async def _on_signal(root: Lifetime) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for received in signals:
            log.info("stopping: %s", signal.Signals(received).name, extra={"cause": "shutdown"})
            root.cancel(Cause.SHUTDOWN, f"signal {signal.Signals(received).name}")
            return
