"""What the processes of one deployment share beyond the records: one protocol per kind
of shared state, each with an in-process implementation (the embedded default and tests,
:mod:`ragline.providers.inprocess`) and a PostgreSQL one (every replica and worker,
:mod:`ragline.providers.postgres_shared`). One conformance suite holds both to these.

- :class:`NoticeBus`: notices that reach every process (a cancel, a run's news).
- :class:`RunLog`: background runs' snapshots and events, readable from any process.
- :class:`ActivityLog`: Teams activities accepted, and each conversation's order.
- :class:`JobParts`: the parts of distributed ingestion jobs, with their inputs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, get_args, runtime_checkable

from ..lifetime import Lifetime

__all__ = [
    "ActivityLog",
    "JobParts",
    "Notice",
    "NoticeBus",
    "PartInputs",
    "PartUpdate",
    "RunLog",
    "RunSave",
    "WorkKey",
]

WorkKind = Literal["run", "job", "conversation"]
Action = Literal["cancel", "news"]
RunEvent = tuple[int, str, dict[str, Any]]
PartInputs = tuple[list[str], list[tuple[str, bytes]]]  # a part's server paths and files


@dataclass(frozen=True, slots=True)
class RunSave:
    """A run's state and snapshot as it is now, with its events not saved yet."""

    run_id: str
    state: str
    snapshot: dict[str, Any]
    events: Sequence[RunEvent] = ()


@dataclass(frozen=True, slots=True)
class PartUpdate:
    """A job part's new state, with what it has to say (each None: unchanged)."""

    job_id: str
    part: int
    state: str
    progress: dict[str, Any] | None = None
    error: str | None = None
    documents: list[str] | None = None  # the ids of the documents the part saw


@dataclass(frozen=True, slots=True)
class WorkKey:
    """What a notice is about: a background run, an ingestion job or a Teams
    conversation, by id. Written ``kind:id``."""

    kind: WorkKind
    id: str

    @classmethod
    def run(cls, run_id: str) -> WorkKey:
        return cls("run", run_id)

    @classmethod
    def job(cls, job_id: str) -> WorkKey:
        return cls("job", job_id)

    @classmethod
    def conversation(cls, conversation_id: str) -> WorkKey:
        return cls("conversation", conversation_id)

    def __str__(self) -> str:
        return f"{self.kind}:{self.id}"

    @classmethod
    def parse(cls, text: str) -> WorkKey | None:
        """The key written as ``text``, or None when it names no kind of work."""
        kind, sep, ident = text.partition(":")
        if not sep or kind not in get_args(WorkKind):
            return None
        return cls(kind, ident)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Notice:
    """``cancel``: stop the work called ``key`` wherever it runs. ``news``: ``key`` has
    changed (a run saved events, a conversation's turn ended): its readers read again."""

    action: Action
    key: WorkKey

    def encode(self) -> str:
        return f"{self.action} {self.key}"

    @classmethod
    def decode(cls, text: str) -> Notice | None:
        """The notice written as ``text``, or None for anything else."""
        action, _, rest = text.partition(" ")
        key = WorkKey.parse(rest)
        if key is None or action not in get_args(Action):
            return None
        return cls(action, key)  # type: ignore[arg-type]


@runtime_checkable
class NoticeBus(Protocol):
    """Notices that reach every process of the deployment, this one included. A process
    listens once (:class:`ragline.notices.Notices`) and hands them out."""

    async def publish(self, notice: Notice, lifetime: Lifetime) -> None:
        """Send ``notice`` to every listener."""
        ...

    def listen(
        self, lifetime: Lifetime, *, ready: Callable[[], Awaitable[None]] | None = None
    ) -> AsyncIterator[Notice]:
        """Every notice published from now on. ``ready`` runs once listening, so that the
        caller can catch up with what came before."""
        ...


@runtime_checkable
class RunLog(Protocol):
    """Background runs' snapshots and numbered events, readable from any process; a save
    publishes ``news`` for the run."""

    async def save_run(self, save: RunSave, lifetime: Lifetime, *, kept: int | None = None) -> None:
        """The run's snapshot and its new events, at once. With ``kept``, only that many
        finished agent runs (ids ``run_…``) are kept, the newest: a background response
        (``resp_…``) saved here too goes by its own expiry (:meth:`forget`)."""
        ...

    async def run(self, run_id: str, lifetime: Lifetime) -> dict[str, Any] | None:
        """A run's last saved snapshot, or None."""
        ...

    async def run_events(self, run_id: str, first: int, lifetime: Lifetime) -> list[RunEvent]:
        """A run's saved events from number ``first`` on."""
        ...

    async def runs(
        self, lifetime: Lifetime, *, owner: str | None, limit: int
    ) -> list[dict[str, Any]]:
        """The newest ``limit`` agent runs' snapshots (ids ``run_…``), newest first; only
        ``owner``'s unless None."""
        ...

    async def forget(self, run_ids: Sequence[str], lifetime: Lifetime) -> None:
        """Delete these runs and their events (a response deleted or expired)."""
        ...


@runtime_checkable
class ActivityLog(Protocol):
    """Teams activities accepted by any process, and their order per conversation."""

    async def accept_activity(
        self, conversation_id: str, activity_id: str, window: float, lifetime: Lifetime
    ) -> int | None:
        """Record an accepted activity: its place in its conversation, or None when it
        was accepted within ``window`` seconds already (a redelivery)."""
        ...

    async def turn_clear(
        self, conversation_id: str, seq: int, stale_before: float, lifetime: Lifetime
    ) -> bool:
        """Whether every earlier activity of the conversation is done (one accepted
        before ``stale_before`` counts as done: its process died mid-turn)."""
        ...

    async def finish_activity(self, conversation_id: str, seq: int, lifetime: Lifetime) -> None:
        """An activity's turn has ended: publishes ``news`` for its conversation, whose
        next turn may start."""
        ...


@runtime_checkable
class JobParts(Protocol):
    """The parts of ingestion jobs that any worker process may take, with their inputs
    (:class:`ragline.jobs.DistributedJobs`)."""

    async def create_job(
        self, job_id: str, body: dict[str, Any], parts: Sequence[PartInputs], lifetime: Lifetime
    ) -> None:
        """The job, queued, with its parts: each (server paths, files), at once."""
        ...

    async def set_task(self, job_id: str, part: int, task_id: int, lifetime: Lifetime) -> None:
        """Note the task of the queue that runs a part."""
        ...

    async def part(
        self, job_id: str, part: int, lifetime: Lifetime
    ) -> tuple[dict[str, Any], str, list[str], list[tuple[str, bytes]]]:
        """A part's job body, its state, its server paths and its files."""
        ...

    async def parts(self, job_id: str, lifetime: Lifetime) -> list[dict[str, Any]]:
        """Every part of a job: part, state, task_id, progress, error."""
        ...

    async def save_part(self, update: PartUpdate, lifetime: Lifetime) -> None:
        """A part's new state; the job's follows at once (see the implementation)."""
        ...

    async def request_cancel(self, job_id: str, lifetime: Lifetime) -> None:
        """Mark a job cancelled-on-request and publish ``cancel`` for it."""
        ...
