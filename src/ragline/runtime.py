"""Everything one running application owns: its lifetime, background work, providers,
metrics and tracer. Built from the settings by :func:`ragline.create_app`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
from opentelemetry.trace import TracerProvider

from .chat import ChatPipeline, StageTimeouts
from .lifetime import Cause, Lifetime
from .metrics import Metrics
from .providers import Embedder, Generator, PromptComposer, QueryTransformer, VectorStore
from .settings import Settings
from .supervisor import Supervisor
from .threads import ThreadBridge
from .tracing import Tracing, build_tracer_provider

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
    ) -> None:
        self.settings = settings
        self.lifetime = Lifetime.root("app")
        self.metrics = Metrics()
        self.tracing = Tracing(tracer_provider or build_tracer_provider(settings.otel_exporter))
        self.threads = ThreadBridge(
            orphan_grace=settings.thread_orphan_grace,
            on_orphan=lambda _name: self.metrics.orphaned_threads.inc(),
        )
        self._closers: list[Callable[[], Awaitable[None]]] = []
        self.supervisor: Supervisor | None = None
        self.ready = False
        if generator is None:
            generator = self._default_generator()
        if transformer is None:
            from .providers.identity import IdentityTransformer

            transformer = IdentityTransformer()
        if composer is None:
            from .providers.prompt import ContextPromptComposer

            composer = ContextPromptComposer()
        if settings.retrieval and (embedder is None or store is None):
            raise ValueError(
                "RAGLINE_RETRIEVAL is on but no embedder and vector store are configured"
            )
        self.pipeline = ChatPipeline(
            transformer=transformer,
            composer=composer,
            generator=generator,
            embedder=embedder,
            store=store,
            tracing=self.tracing,
            metrics=self.metrics,
            timeouts=StageTimeouts(
                transform=settings.transform_timeout,
                retrieve=settings.retrieve_timeout,
                compose=settings.compose_timeout,
            ),
        )

    def _default_generator(self) -> Generator:
        s = self.settings
        from .providers.openai import OpenAIGenerator

        generator = OpenAIGenerator(
            base_url=s.llm_base_url,
            model=s.llm_model,
            api_key=s.llm_api_key,
            max_connections=s.llm_max_connections,
            connect_timeout=s.llm_connect_timeout,
            first_token_timeout=s.llm_first_token_timeout,
            total_timeout=s.llm_total_timeout,
            max_tokens=s.llm_max_tokens,
            temperature=s.llm_temperature,
        )
        self._closers.append(generator.aclose)
        return generator

    def shutdown(self, detail: str = "") -> None:
        """Cancel every piece of in-flight work with cause ``shutdown``. Loop thread only."""
        if self.lifetime.reason is None:
            log.info("shutting down: cancelling in-flight work", extra={"cause": "shutdown"})
        self.ready = False
        self.lifetime.cancel(Cause.SHUTDOWN, detail)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Runtime]:
        """Own background work and providers for the life of the block."""
        try:
            async with Supervisor.running(self.lifetime) as supervisor:
                self.supervisor = supervisor
                self.ready = True
                try:
                    yield self
                finally:
                    self.shutdown("application stopping")
        finally:
            self.supervisor = None
            # Closing pools is quick; bound it anyway so a stuck provider cannot hang exit.
            with anyio.move_on_after(self.settings.shutdown_grace, shield=True):
                for close in reversed(self._closers):
                    await close()
            shutdown = getattr(self.tracing.provider, "shutdown", None)
            if callable(shutdown):
                shutdown()
