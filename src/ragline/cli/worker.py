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

from ..factory import build_ingestion, build_jobs, open_parts
from ..lifetime import Cause, Lifetime
from ..settings import Settings
from ..threads import ThreadBridge
from ..workers import DistributedJobs

__all__ = ["work"]

log = logging.getLogger("ragline.worker")


async def work(settings: Settings) -> int:
    """Run a worker until a signal; the exit status."""
    bridge = ThreadBridge(orphan_grace=settings.thread_orphan_grace)
    ingestion = build_ingestion(settings, bridge)
    jobs = build_jobs(settings, ingestion, bridge)
    if not isinstance(jobs, DistributedJobs):
        print(
            "ragline worker: set RAGLINE_DATABASE_URL (workers share a PostgreSQL)", file=sys.stderr
        )
        return 2
    root = Lifetime.root("worker")
    async with AsyncExitStack() as stack, anyio.create_task_group() as tg:
        with root:
            await open_parts(stack, root, [*ingestion.built, jobs], grace=settings.shutdown_grace)
            tg.start_soon(_on_signal, root)
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
