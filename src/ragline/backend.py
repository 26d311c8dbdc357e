"""The one place that decides where a deployment keeps its state: in this process and a
SQLite file (the embedded default), or in the PostgreSQL at ``RAGLINE_DATABASE_URL`` that
every replica and worker shares. Everything else receives the protocols of
:mod:`ragline.providers` and :mod:`ragline.providers.coordination`, and never asks
which."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .ingestion import Ingestor
from .jobs import Jobs
from .notices import Notices
from .providers import Records
from .providers.conversations import ConversationStore
from .providers.coordination import ActivityLog, NoticeBus, RunLog
from .providers.directory import GrantStore, PrincipalStore
from .providers.feedback import FeedbackStore
from .settings import Settings
from .threads import ThreadBridge

__all__ = ["Backend", "Directory", "build_backend", "keys_only"]

JobsBuilder = Callable[[Ingestor, Notices, ThreadBridge], Jobs]


@runtime_checkable
class Directory(PrincipalStore, GrantStore, Protocol):
    """Principals and grants, kept together (every backend keeps both in one place)."""


@dataclass
class Backend:
    """The stores of one deployment's state, not opened yet. ``built`` lists what the
    coordination stores need opened and closed (:func:`ragline.factory.open_parts`),
    before anything else opens and after everything else has closed; the record store
    opens with the ingestion that uses it (:func:`ragline.factory.build_ingestion`)."""

    records: Records
    runs: RunLog
    activities: ActivityLog
    bus: NoticeBus
    directory: Directory  # principals and collection grants
    conversations: ConversationStore  # stored responses and conversations' turns
    feedback: FeedbackStore  # the bot's answers and what users said about them
    jobs: JobsBuilder  # (ingestor, notices, bridge) -> the job queue that runs ingestor
    built: list[object] = field(default_factory=list)

    def notices(self) -> Notices:
        """A listener of the bus for this process (it listens once it runs)."""
        return Notices(self.bus)


def build_backend(settings: Settings, bridge: ThreadBridge) -> Backend:
    """The backend that ``settings`` ask for; vendor modules load only for it."""
    s = settings
    # What every job queue takes from the settings.
    inputs: dict[str, Any] = {
        "roots": [Path(r) for r in s.ingest_roots] or [Path.cwd()],
        "default_collection": s.collection,
        "max_document_bytes": s.max_document_bytes,
    }
    if s.database_url:
        from .jobs import DistributedJobs
        from .providers.postgres import PostgresPool
        from .providers.postgres_conversations import PostgresConversations
        from .providers.postgres_directory import PostgresDirectory
        from .providers.postgres_feedback import PostgresFeedback
        from .providers.postgres_records import PostgresRecords
        from .providers.postgres_shared import (
            PostgresActivities,
            PostgresBus,
            PostgresJobParts,
            PostgresRunLog,
        )

        pool = PostgresPool(
            s.database_url,
            pool_size=s.database_pool_size,
            connect_timeout=s.database_connect_timeout,
        )
        records = PostgresRecords(pool, abandoned_after=s.ingest_abandoned_after)
        parts = PostgresJobParts(pool)

        def distributed(ingestor: Ingestor, notices: Notices, bridge: ThreadBridge) -> Jobs:
            return DistributedJobs(
                ingestor=ingestor,
                records=records,
                parts=parts,
                notices=notices,
                database_url=pool.url,
                error_for=pool.error_for,
                bridge=bridge,
                part_documents=s.ingest_part_documents,
                heartbeat=s.worker_heartbeat,
                stalled_after=s.worker_stalled_after,
                concurrency=s.worker_concurrency,
                **inputs,
            )

        return Backend(
            records=records,
            runs=PostgresRunLog(pool),
            activities=PostgresActivities(pool),
            bus=PostgresBus(pool),
            directory=PostgresDirectory(pool),
            conversations=PostgresConversations(pool),
            feedback=PostgresFeedback(pool),
            jobs=distributed,
            built=[pool],
        )

    from .jobs import JobQueue
    from .providers.inprocess import InProcessActivities, InProcessBus, InProcessRunLog
    from .providers.sqlite import SqliteRecords
    from .providers.sqlite_conversations import SqliteConversations
    from .providers.sqlite_directory import SqliteDirectory
    from .providers.sqlite_feedback import SqliteFeedback

    bus = InProcessBus()
    sqlite = SqliteRecords(Path(s.data_dir) / "records.sqlite", bridge)
    directory = SqliteDirectory(Path(s.data_dir) / "access.sqlite", bridge)
    conversations = SqliteConversations(Path(s.data_dir) / "conversations.sqlite", bridge)
    feedback = SqliteFeedback(Path(s.data_dir) / "feedback.sqlite", bridge)

    def local(ingestor: Ingestor, notices: Notices, bridge: ThreadBridge) -> Jobs:
        folder = Path(s.data_dir) / "jobs"
        return JobQueue(ingestor=ingestor, records=sqlite, bridge=bridge, folder=folder, **inputs)

    return Backend(
        records=sqlite,
        runs=InProcessRunLog(bus),
        activities=InProcessActivities(bus),
        bus=bus,
        directory=directory,
        conversations=conversations,
        feedback=feedback,
        jobs=local,
        # The records' SQLite file opens with the ingestion that uses it (a server
        # without retrieval makes none); the directory's, the conversations' and the
        # feedback's always: every request needs the first, a follow-up the second, and
        # the feedback page reads the third even on a server without the bot.
        built=[directory, conversations, feedback],
    )


def keys_only() -> Directory:
    """The directory of an application that mounts ragline's middleware: no principal
    store of its own, only the keys of ``RAGLINE_API_KEYS``."""
    from .providers.inprocess import InProcessDirectory

    return InProcessDirectory()
