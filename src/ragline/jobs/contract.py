"""What every kind of job queue promises (:class:`Jobs`), and the rules on inputs that
they share."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ..documents import load_all
from ..errors import InvalidRequest
from ..lifetime import Lifetime
from ..threads import CancelToken

__all__ = ["TERMINAL", "Jobs", "allowed_path", "load_inputs"]

TERMINAL = ("succeeded", "failed", "cancelled")


@runtime_checkable
class Jobs(Protocol):
    """Ingestion jobs: submitted, reported and cancelled through the API, run by
    :meth:`work`. :class:`~ragline.jobs.JobQueue` runs them one at a time in this process;
    :class:`~ragline.jobs.DistributedJobs` fans them out to every worker process."""

    #: Whether worker processes of their own (``ragline worker``) can take this
    #: queue's jobs: only when the queue lives in a database they share.
    shared: bool

    def allowed_path(self, raw: str) -> Path:
        """A server-side path, only under a configured root."""
        ...

    async def submit(
        self,
        lifetime: Lifetime,
        *,
        collection: str | None,
        prune: bool,
        paths: list[Path],
        documents: list[dict[str, Any]] | None = None,
        uploads: list[tuple[str, bytes]] | None = None,
    ) -> str:
        """Persist a job; its id."""
        ...

    async def status(self, lifetime: Lifetime, job_id: str) -> dict[str, Any]:
        """The job's state, progress, error and cause."""
        ...

    async def cancel(self, lifetime: Lifetime, job_id: str) -> dict[str, Any]:
        """Stop a job at its next batch boundary (cause ``explicit``); its status."""
        ...

    async def work(self, lifetime: Lifetime) -> None:
        """Run jobs until ``lifetime`` ends."""
        ...


def allowed_path(raw: str, roots: list[Path]) -> Path:
    """``raw`` as a path, only under one of ``roots``, and existing."""
    if "\x00" in raw:
        raise InvalidRequest("a path cannot contain a NUL byte", param="paths")
    path = Path(raw).expanduser().resolve()
    if not any(path == root or root in path.parents for root in roots):
        shown = ", ".join(str(r) for r in roots) or "none configured"
        raise InvalidRequest(
            f"path {raw!r} is outside the ingest roots ({shown}); set RAGLINE_INGEST_ROOTS",
            param="paths",
            code="path_not_allowed",
        )
    if not path.exists():
        raise InvalidRequest(f"path {raw!r} does not exist", param="paths")
    return path


def load_inputs(token: CancelToken, inputs: list[Path], max_bytes: int) -> Any:
    """A job's inputs as (documents, problems), on the thread bridge."""
    return load_all(inputs, max_bytes=max_bytes)
