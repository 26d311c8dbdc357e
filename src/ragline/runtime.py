"""Everything one running application owns: its lifetime, background work, providers,
metrics and tracer. Built from the settings by :func:`ragline.create_app`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
from opentelemetry.trace import TracerProvider

from .agent import Agent, LoopLimits
from .chat import ChatPipeline, StageTimeouts
from .factory import (
    Hooks,
    build_chunker,
    build_composer,
    build_embedder,
    build_generator,
    build_store,
    build_transformer,
)
from .ingestion import Ingestor, RecordKeywords, VisibleStore
from .jobs import JobQueue
from .lifetime import Cause, Lifetime
from .metrics import Metrics
from .providers import (
    Embedder,
    Generator,
    KeywordIndex,
    PromptComposer,
    QueryTransformer,
    VectorStore,
)
from .records import Records
from .runs import Runs
from .settings import Settings
from .supervisor import Supervisor
from .threads import ThreadBridge
from .tools import ToolRegistry, search_tool
from .tracing import Tracing, build_tracer_provider

if TYPE_CHECKING:
    from .teams import TeamsChannel

__all__ = ["Runtime"]

log = logging.getLogger("ragline.runtime")


class Runtime:
    """The application's owner of work. ``async with runtime.running():`` for its life."""

    def __init__(
        self,
        settings: Settings,
        *,
        generator: Generator | None = None,
        embedder: Embedder | None = None,
        store: VectorStore | None = None,
        transformer: QueryTransformer | None = None,
        composer: PromptComposer | None = None,
        tracer_provider: TracerProvider | None = None,
        tools: ToolRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.lifetime = Lifetime.root("app")
        self.metrics = Metrics()
        self.tracing = Tracing(tracer_provider or build_tracer_provider(settings.otel_exporter))
        self.threads = ThreadBridge(
            orphan_grace=settings.thread_orphan_grace,
            on_orphan=lambda _name: self.metrics.orphaned_threads.inc(),
        )
        self.hooks = Hooks()
        self.supervisor: Supervisor | None = None
        self.ready = False
        if generator is None:
            generator = build_generator(settings, self.threads, self.hooks)
        self.jobs: JobQueue | None = None
        keywords: KeywordIndex | None = None
        if settings.retrieval:
            if embedder is None:
                embedder = build_embedder(settings, self.threads, self.hooks)
            if store is None:
                store = build_store(
                    settings, self.threads, self.hooks, dimensions=embedder.dimensions
                )
            data = Path(settings.data_dir)
            self.records = Records(data / "records.sqlite")
            records = self.records

            async def close_records() -> None:
                records.close()

            self.hooks.closes.insert(0, close_records)  # closes run in reverse: last
            self.ingestor = Ingestor(
                embedder=embedder,
                store=store,
                records=self.records,
                bridge=self.threads,
                chunker=build_chunker(settings),
                batch_size=settings.ingest_batch_size,
            )
            self.jobs = JobQueue(
                ingestor=self.ingestor,
                records=self.records,
                bridge=self.threads,
                folder=data / "jobs",
                roots=[Path(r) for r in settings.ingest_roots] or [Path.cwd()],
                default_collection=settings.collection,
                max_document_bytes=settings.max_document_bytes,
            )
            if settings.retrieval_mode == "hybrid":
                keywords = RecordKeywords(
                    self.records, self.threads, default_collection=settings.collection
                )
            # Readers see only switched-in generations.
            store = VisibleStore(
                store, self.records, self.threads, default_collection=settings.collection
            )
        else:
            embedder = store = None
        if transformer is None:
            transformer = build_transformer(settings, generator)
        if composer is None:
            composer = build_composer(settings, generator)
        self.pipeline = pipeline = ChatPipeline(
            transformer=transformer,
            composer=composer,
            generator=generator,
            embedder=embedder,
            store=store,
            keywords=keywords,
            tracing=self.tracing,
            metrics=self.metrics,
            timeouts=StageTimeouts(
                transform=settings.transform_timeout,
                retrieve=settings.retrieve_timeout,
                compose=settings.compose_timeout,
            ),
            repetition_guard=settings.repetition_guard,
        )
        self.agent = Agent(
            pipeline,
            _tools(settings, pipeline, tools),
            threads=self.threads,
            tracing=self.tracing,
            metrics=self.metrics,
            limits=LoopLimits.from_settings(settings),
        )
        self.runs = Runs(
            self.agent,
            timeout=settings.run_timeout,
            max_active=settings.runs_max_active,
            kept=settings.runs_kept,
        )
        self.teams: TeamsChannel | None = None
        if settings.bot_enabled:
            from .teams import TeamsChannel

            self.teams = teams = TeamsChannel(
                settings, pipeline, self.metrics, self.tracing, agent=self.agent
            )

            async def close_teams() -> None:
                await teams.aclose()

            self.hooks.closes.append(close_teams)

    def shutdown(self, detail: str = "") -> None:
        """Cancel every piece of in-flight work with cause ``shutdown``. Loop thread only."""
        if self.lifetime.reason is None:
            log.info("shutting down: cancelling in-flight work", extra={"cause": "shutdown"})
        self.ready = False
        self.lifetime.cancel(Cause.SHUTDOWN, detail)

    async def _open(self) -> None:
        """Load models and connect stores, side by side, under the application lifetime."""
        with self.lifetime.child("startup") as startup:
            async with anyio.create_task_group() as tg:
                for open_ in self.hooks.opens:
                    tg.start_soon(open_, startup)
        log.info("ready", extra={"providers_opened": len(self.hooks.opens)})

    async def _seed(self) -> None:
        """First start: ingest ``RAGLINE_SEED_DOCS`` while the default collection is empty."""
        seed = self.settings.seed_docs
        if not seed or self.jobs is None:
            return
        folder = await anyio.Path(seed).resolve()
        if not await folder.exists():
            return
        with self.lifetime.child("seed") as lifetime:
            documents = await self.threads.call(
                lifetime, self.records.documents, self.settings.collection
            )
            pending = await self.threads.call(lifetime, self.records.jobs, "queued", "running")
            if not documents and not pending:
                job_id = await self.jobs.submit(
                    lifetime, collection=None, prune=False, paths=[Path(folder)]
                )
                log.info("ingesting the seed documents", extra={"job_id": job_id, "path": seed})

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Runtime]:
        """Own background work and providers for the life of the block."""
        try:
            async with Supervisor.running(self.lifetime) as supervisor:
                self.supervisor = supervisor
                self.agent.start(supervisor)
                await self._open()
                if self.teams is not None:
                    self.teams.start(supervisor)
                if self.jobs is not None:
                    supervisor.start(self.lifetime.child("ingest-worker"), self.jobs.work)
                    await self._seed()
                self.ready = True
                try:
                    yield self
                finally:
                    self.shutdown("application stopping")
        finally:
            self.supervisor = None
            # Closing pools is quick; bound it anyway so a stuck provider cannot hang exit.
            with anyio.move_on_after(self.settings.shutdown_grace, shield=True):
                for close in reversed(self.hooks.closes):
                    await close()
            shutdown = getattr(self.tracing.provider, "shutdown", None)
            if callable(shutdown):
                shutdown()


BUILTIN_TOOLS = ("search",)


def _tools(settings: Settings, pipeline: ChatPipeline, given: ToolRegistry | None) -> ToolRegistry:
    """The server-side tools: the application's own, plus the enabled built-ins."""
    registry = given if given is not None else ToolRegistry()
    for name in settings.tools:
        if name not in BUILTIN_TOOLS:
            raise ValueError(
                f"RAGLINE_TOOLS: no built-in tool {name!r} (built-ins: {', '.join(BUILTIN_TOOLS)})"
            )
        if name == "search" and pipeline.retrieval and "search" not in registry:
            registry.add(search_tool(pipeline))
    return registry
