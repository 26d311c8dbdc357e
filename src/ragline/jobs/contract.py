"""What every kind of job queue promises (:class:`Jobs`), and the rules on inputs that
they share."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ..documents import load_all
from ..errors import InvalidRequest, NotFound
from ..lifetime import Lifetime
from ..providers import JobStore
from ..threads import CancelToken

__all__ = [
    "SYSTEM",
    "TERMINAL",
    "JobInput",
    "Jobs",
    "allowed_path",
    "load_inputs",
    "missing_job",
    "stored_job",
]

TERMINAL = ("succeeded", "failed", "cancelled")
SYSTEM = "ragline"  # the owner of the work ragline starts itself (the seed documents)


@dataclass(frozen=True)
class JobInput:
    """What a job ingests, and into which collection (the default one for None); with
    ``prune``, the collection keeps only what the job saw."""

    collection: str | None
    prune: bool = False
    paths: Sequence[Path] = ()
    documents: Sequence[dict[str, Any]] = ()
    uploads: Sequence[tuple[str, bytes]] = ()
    owner: str = ""  # the principal who submitted it (SYSTEM: ragline itself)
    acl: Sequence[str] = ()  # who may read the documents of its paths and uploads


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

    async def submit(self, lifetime: Lifetime, job: JobInput) -> str:
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


async def stored_job(
    records: JobStore, job_id: str, lifetime: Lifetime
) -> tuple[str, dict[str, Any]]:
    """A job's (state, body) from the job store; 404 when there is none."""
    found = await records.job(job_id, lifetime)
    if found is None:
        raise missing_job(job_id)
    return found


def missing_job(job_id: str) -> NotFound:
    """The 404 of a job that does not exist (or is not the caller's)."""
    return NotFound(f"no ingestion job {job_id!r}", code="job_not_found")


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


def load_inputs(
    token: CancelToken, inputs: list[Path], max_bytes: int, acl: Sequence[str] = ()
) -> Any:
    """A job's inputs as (documents, problems), on the thread bridge; a document that
    carries no ACL of its own gets the job's ``acl``."""
    documents, problems = load_all(inputs, max_bytes=max_bytes)
    if acl:
        documents = [d if d.acl else replace(d, acl=tuple(acl)) for d in documents]
    return documents, problems
