"""Everything one running application owns: its lifetime, background work, providers,
metrics and tracer. Built from the settings by :func:`ragline.create_app`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
from opentelemetry.trace import TracerProvider

from .agent import Agent, LoopLimits
from .backend import build_backend
from .chat import ChatPipeline, StageTimeouts
from .dialogue import Dialogue
from .errors import RagLineError
from .expiry import Expiry
from .factory import (
    build_composer,
    build_extractor,
    build_generator,
    build_ingestion,
    build_transformer,
    grounding_guard,
    open_parts,
)
from .grants import Grants
from .history import History
from .jobs import SYSTEM, JobInput, Jobs
from .lifetime import Cause, Lifetime
from .metrics import Metrics
from .oidc import OidcVerifier
from .outcomes import Outcomes
from .principals import Principals
from .providers import (
    Embedder,
    Generator,
    KeywordIndex,
    PromptComposer,
    QueryTransformer,
    VectorStore,
)
from .retrieval import RecordKeywords, VisibleStore
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
        # Built first and run later, so that what starts work on it gets it when built.
        self.supervisor = Supervisor(self.lifetime)
        self.ready = False
        self._parts: list[object] = []  # what this runtime built, and so opens and closes
        self._opened: list[object] = []
        self.unavailable: str | None = None  # why it is not ready: a part that cannot open
        self.draining = False
        # Where the deployment keeps its state: decided once, in build_backend.
        self.backend = backend = build_backend(settings, self.threads)
        self._parts.extend(backend.built)  # first: it closes last
        self.records = backend.records
        self.feedback = backend.feedback  # the bot's answers and the feedback on them
        self.notices = backend.notices()
        # Who asks, and what they may read.
        self.principals = Principals(
            settings.api_keys,
            backend.directory,
            principals_file=settings.principals_file,
            oidc=OidcVerifier.from_settings(settings),
        )
        self.grants = Grants(
            backend.directory,
            backend.records,
            self.principals,
            default_collection=settings.collection,
        )
        self.jobs: Jobs | None = None
        keywords: KeywordIndex | None = None
        if settings.retrieval:
            ingestion = build_ingestion(
                settings, self.threads, backend.records, embedder=embedder, store=store
            )
            self._parts.extend(ingestion.built)
            embedder, store = ingestion.embedder, ingestion.store
            self.jobs = backend.jobs(ingestion.ingestor, self.notices, self.threads)
            self._parts.append(self.jobs)
            if settings.retrieval_mode == "hybrid":
                keywords = RecordKeywords(self.records, default_collection=settings.collection)
            # Readers see only switched-in generations.
            store = VisibleStore(store, self.records, default_collection=settings.collection)
        else:
            embedder = store = None
        if generator is None:
            generator = build_generator(settings, self.threads)
            self._parts.append(generator)
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
            access=self.grants if store is not None else None,
            tracing=self.tracing,
            metrics=self.metrics,
            timeouts=StageTimeouts(
                transform=settings.transform_timeout,
                retrieve=settings.retrieve_timeout,
                compose=settings.compose_timeout,
            ),
            repetition_guard=settings.repetition_guard,
            grounding_guard=grounding_guard(settings),
            extractor=build_extractor(settings),
        )
        self.agent = Agent(
            pipeline,
            _tools(settings, pipeline, tools),
            self.supervisor,
            threads=self.threads,
            tracing=self.tracing,
            metrics=self.metrics,
            limits=LoopLimits.from_settings(settings),
        )
        self.runs = Runs(
            self.agent,
            self.supervisor,
            backend.runs,
            self.notices,
            timeout=settings.run_timeout,
            max_active=settings.runs_max_active,
            kept=settings.runs_kept,
        )
        self.history = History(
            backend.conversations, tokens=settings.history_tokens, ttl=settings.responses_ttl
        )
        self.dialogue = Dialogue(self.history, self.runs, self.agent, self.notices)
        self.expiry = Expiry(
            settings.responses_sweep,
            [("responses", self.dialogue.expire), ("feedback", self._expire_feedback)],
        )
        self.outcomes = Outcomes(settings.outcomes_kept)
        self.teams: TeamsChannel | None = None
        if settings.bot_enabled:
            from .teams import TeamsChannel

            self.teams = TeamsChannel(
                settings,
                pipeline,
                self.supervisor,
                self.metrics,
                self.tracing,
                backend.activities,
                self.notices,
                agent=self.agent,
                grants=self.grants,
                history=self.history,
                feedback=backend.feedback,
            )
            self._parts.append(self.teams)

    def drain(self, detail: str = "") -> None:
        """Stop being ready (``/readyz`` answers 503) and let work in flight go on; the
        caller shuts down when its drain window ends."""
        if self.ready:
            log.info("draining: not ready, work in flight goes on", extra={"detail": detail})
        self.draining = True
        self.ready = False

    def shutdown(self, detail: str = "") -> None:
        """Cancel every piece of in-flight work with cause ``shutdown``. Loop thread only."""
        if self.lifetime.reason is None:
            log.info("shutting down: cancelling in-flight work", extra={"cause": "shutdown"})
        self.ready = False
        self.lifetime.cancel(Cause.SHUTDOWN, detail)

    async def _seed(self) -> None:
        """First start: ingest ``RAGLINE_SEED_DOCS`` (files and folders, comma-separated)
        while the default collection is empty."""
        seed = self.settings.seed_docs
        if not seed or self.jobs is None:
            return
        paths = []
        for item in (part.strip() for part in seed.split(",")):
            path = await anyio.Path(item).resolve() if item else None
            if path is not None and await path.exists():
                paths.append(Path(path))
        if not paths:
            return
        with self.lifetime.child("seed") as lifetime:
            documents = await self.records.documents(self.settings.collection, lifetime)
            pending = await self.records.jobs(lifetime, states=["queued", "running"])
            if not documents and not pending:
                job = JobInput(None, paths=paths, owner=SYSTEM)
                job_id = await self.jobs.submit(lifetime, job)
                log.info("ingesting the seed documents", extra={"job_id": job_id, "path": seed})

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Runtime]:
        """Own the parts and background work for the life of the block: the parts open
        side by side, then the supervisor runs; on the way out the supervisor stops its
        work first, then the parts close in reverse order.

        A part that cannot open (an engine that is down) does not stop the start: the
        application serves, not ready (``/readyz`` says why), and opens it again with
        backoff on its supervisor until it is up."""
        async with AsyncExitStack() as parts:  # closes after the supervisor has stopped
            parts.callback(self._shutdown_tracing)
            with self.lifetime.child("startup") as startup:
                up = await self._open(parts, startup)
            async with self.supervisor:
                try:
                    if up:
                        await self._begin()
                    else:
                        retry = self.lifetime.child("startup-retry")
                        self.supervisor.start(retry, lambda life: self._reopen(parts, life))
                    yield self
                finally:
                    self.shutdown("application stopping")

    async def _open(self, stack: AsyncExitStack, lifetime: Lifetime) -> bool:
        """Open what is not open yet; whether everything is."""
        closed = [part for part in self._parts if not any(part is o for o in self._opened)]
        failed: list[RagLineError] = []
        await open_parts(
            stack,
            lifetime,
            closed,
            grace=self.settings.shutdown_grace,
            opened=self._opened,
            failed=failed,
        )
        self.unavailable = "; ".join(f.message for f in failed) or None
        if failed:
            log.warning("not ready: %s", self.unavailable, extra={"cause": "unavailable"})
        return not failed

    async def _reopen(self, stack: AsyncExitStack, lifetime: Lifetime) -> None:
        delay = 0.5
        while True:
            await anyio.sleep(delay)
            if await self._open(stack, lifetime):
                await self._begin()
                return
            delay = min(delay * 2, 10.0)

    async def _begin(self) -> None:
        """Everything is open: start the background work and be ready."""
        log.info("ready", extra={"providers_opened": len(self._opened)})
        self.supervisor.start(self.lifetime.child("notices"), self.notices.listen)
        self.supervisor.start(self.lifetime.child("expiry"), self.expiry.run)
        # A queue that only this process can run runs here; a shared one where asked.
        if self.jobs is not None and (self.settings.serve_jobs or not self.jobs.shared):
            self.supervisor.start(self.lifetime.child("ingest-worker"), self.jobs.work)
            await self._seed()
        # An engine that came back during a drain window does not make it ready again.
        self.ready = not self.draining

    async def _expire_feedback(self, now: float, lifetime: Lifetime) -> int:
        ttl = self.settings.feedback_ttl
        return 0 if ttl is None else await self.feedback.expire(now - ttl, lifetime)

    def _shutdown_tracing(self) -> None:
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
