"""The chat orchestrator: transform → retrieve → compose → generate.

The transformed query drives retrieval; the prompt keeps the user's own words.
Each stage runs in a child lifetime of the caller's (with an optional own deadline) and
its own span. Whatever cuts the work short, the result object handed in as ``into`` keeps
the sources, the text so far and the usage, with the cause.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

from opentelemetry.trace import Span, SpanKind

from .errors import InvalidRequest, StageTimeout
from .extracts import Extract, Extractor
from .grounding import Grounding, GroundingGuard
from .guards import guard_free, guarded, stop_reason
from .lifetime import Cause, Lifetime
from .metrics import Metrics
from .models import ChatRequest, ChatResult, Generation, Hit, Prompt, Source, Usage
from .outcomes import Outcome
from .providers import (
    Embedder,
    Generator,
    KeywordIndex,
    OnDelta,
    PromptComposer,
    QueryTransformer,
    VectorStore,
)
from .repetition import RepetitionGuard
from .retrieval import ReadAccess, find_passages
from .tracing import Tracing, mark_cancelled, set_attributes

__all__ = ["ChatPipeline", "StageTimeouts", "estimate_tokens"]


@dataclass(frozen=True, slots=True)
class StageTimeouts:
    """Own deadlines per stage, in seconds; ``None`` means the stage has none."""

    transform: float | None = None
    retrieve: float | None = None
    compose: float | None = None
    generate: float | None = None


class ChatPipeline:
    """Runs a :class:`ChatRequest` through the stages under the caller's lifetime."""

    def __init__(
        self,
        *,
        transformer: QueryTransformer,
        composer: PromptComposer,
        generator: Generator,
        tracing: Tracing,
        metrics: Metrics,
        embedder: Embedder | None = None,
        store: VectorStore | None = None,
        keywords: KeywordIndex | None = None,
        access: ReadAccess | None = None,
        timeouts: StageTimeouts = StageTimeouts(),
        repetition_guard: bool = True,
        grounding_guard: bool = False,
        extractor: Extractor | None = None,
    ) -> None:
        if (embedder is None) != (store is None):
            raise ValueError("retrieval needs both an embedder and a vector store")
        if store is not None and access is None:
            raise ValueError("retrieval needs to know what each principal may read (access)")
        self.access = access
        self.transformer = transformer
        self.composer = composer
        self.generator = generator
        self.embedder = embedder
        self.store = store
        self.keywords = keywords  # set: hybrid retrieval, dense and BM25 fused by rank
        self.timeouts = timeouts
        self.repetition_guard = repetition_guard  # stop generations that loop
        self.grounding_guard = grounding_guard  # stop generations that leave their sources
        self.extractor = extractor  # set: answers quote the passages instead of generating
        self._tracing = tracing
        self._metrics = metrics

    async def run(
        self,
        request: ChatRequest,
        lifetime: Lifetime,
        *,
        on_delta: OnDelta | None = None,
        into: ChatResult | None = None,
    ) -> ChatResult:
        """Answer ``request``; stream the text to ``on_delta`` when given."""
        result = into if into is not None else ChatResult()
        with self._tracing.span("ragline.chat", lifetime, {"ragline.top_k": request.top_k}):
            prompt = await self.prepare(request, lifetime, result)
            if self.extractor is not None and self.retrieval and not prompt.tools:
                await self.extract(prompt, lifetime, result, on_delta)
            else:
                await self.generate(prompt, lifetime, result, on_delta)
        return result

    async def extract(
        self, prompt: Prompt, lifetime: Lifetime, into: ChatResult, on_delta: OnDelta | None
    ) -> None:
        """The extract stage, in place of generation: the passages' own sentences that
        answer the query, cited, or a plain statement that the documents do not cover it
        (:class:`ragline.extracts.Extractor`). No model runs, so no tokens are used."""
        assert self.extractor is not None
        with self._stage(lifetime, "extract", None) as (stage, span):
            await stage.checkpoint()
            draft = self.extractor.prepare(prompt.query, into.sources)
            if isinstance(draft, Extract):
                answer = draft  # the documents do not cover it
            else:
                closeness = None
                if self.embedder is not None and prompt.query_vector:
                    # How close each sentence is to the question (its vector from the
                    # retrieve stage), in the embedder's terms.
                    vectors = await self.embedder.embed(draft.sentences, stage)
                    closeness = [_cosine(prompt.query_vector, v) for v in vectors]
                answer = self.extractor.choose(draft, closeness)
            into.text = answer.text
            into.usage = Usage(finish_reason="stop")
            set_attributes(span, {"ragline.answer.abstained": answer.abstained})
            self._metrics.answers.labels("abstained" if answer.abstained else "extractive").inc()
            if on_delta is not None:
                await on_delta(answer.text)

    async def prepare(self, request: ChatRequest, lifetime: Lifetime, into: ChatResult) -> Prompt:
        """The stages before generation: transform, retrieve (the sources go into
        ``into``) and compose. The request's tools and continuation join the prompt."""
        hits: Sequence[Hit] = ()
        query = request.query
        vector: Sequence[float] = ()
        if self.retrieval:  # the transformed query is for retrieval only
            with self._stage(lifetime, "transform", self.timeouts.transform) as (stage, span):
                query = await self.transformer.transform(request.query, request.history, stage)
                if query != request.query:
                    set_attributes(span, {"ragline.query.rewritten": True})
            hits, vector = await self._search(query, request.top_k, lifetime, request.collection)
        with self._stage(lifetime, "compose", self.timeouts.compose) as (stage, _):
            prompt = await self.composer.compose(request, hits, stage)
        # The sources are the passages the model saw, numbered as it saw them.
        # (An extractive answer reads every hit: it quotes, so more passages cost nothing.)
        everything = prompt.passages is None or (self.extractor is not None and not request.tools)
        shown = hits if everything else hits[: prompt.passages]
        into.sources = [Source.from_hit(hit, rank) for rank, hit in enumerate(shown, start=1)]
        prompt = replace(
            prompt,
            sampling=request.sampling().over(prompt.sampling),
            query=query,
            query_vector=tuple(vector),
            evidence=tuple(s.text for s in into.sources),
        )
        if request.continuation or request.tools:
            prompt = replace(
                prompt,
                messages=prompt.messages + request.continuation,
                tools=request.tools,
                tool_choice=request.tool_choice,
            )
        return prompt

    @property
    def retrieval(self) -> bool:
        """Whether this pipeline retrieves (it has an embedder and a store)."""
        return self.embedder is not None and self.store is not None

    async def retrieve(
        self, query: str, top_k: int, lifetime: Lifetime, collection: str | None = None
    ) -> list[Hit]:
        """The search half of the pipeline on its own, as its ``retrieve`` stage."""
        hits, _ = await self._search(query, top_k, lifetime, collection)
        return hits

    async def _search(
        self, query: str, top_k: int, lifetime: Lifetime, collection: str | None
    ) -> tuple[list[Hit], Sequence[float]]:
        """The hits, and the query's vector (an extractive answer measures its sentences
        against it)."""
        if self.embedder is None or self.store is None:
            raise InvalidRequest("retrieval is not configured on this server", code="no_retrieval")
        assert self.access is not None  # given with the store (__init__)
        with self._stage(lifetime, "retrieve", self.timeouts.retrieve) as (stage, span):
            # As the lifetime's principal: the stores filter by it inside their queries.
            readable = await self.access.readable(stage, collection)
            hits, vector = await find_passages(
                query,
                top_k,
                stage,
                embedder=self.embedder,
                store=self.store,
                keywords=self.keywords,
                readable=readable,
                collection=collection,
            )
            span.set_attribute("ragline.hits", len(hits))
        return hits, vector

    async def generate(
        self,
        prompt: Prompt,
        lifetime: Lifetime,
        into: ChatResult,
        on_delta: OnDelta | None = None,
    ) -> Generation:
        """The generate stage: text, tool calls and usage go into ``into`` however the
        generation ends."""
        result = into
        gen = self.generator
        generation = Generation()
        attributes: dict[str, str | int] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": gen.provider,
            "gen_ai.request.model": gen.model,
        }
        if prompt.max_tokens is not None:
            attributes["gen_ai.request.max_tokens"] = prompt.max_tokens
        guard = RepetitionGuard() if self.repetition_guard else None
        # Only an answer from passages alone is checked against them: tools bring their own.
        grounding = None
        if self.grounding_guard and prompt.evidence and not prompt.tools:
            grounding = GroundingGuard(Grounding(prompt.evidence, prompt.query))
        with self._stage(
            lifetime,
            "generate",
            self.timeouts.generate,
            attributes,
            span_name=f"chat {gen.model}",
            kind=SpanKind.CLIENT,
        ) as (stage, span):
            cause: Cause | None = None
            completed = False
            try:
                watch = guarded(guard, grounding, stage, on_delta)
                await gen.generate(prompt, stage, generation, watch)
                if guard is not None and guard.finish() is not None:
                    cause = Cause.REPETITION  # the loop's last word was the last one
                elif grounding is not None and guard_free(guard) and grounding.finish():
                    cause = Cause.UNGROUNDED  # the last sentence was the unsupported one
                completed = True
            except StageTimeout:
                cause = Cause.DEADLINE
                raise
            finally:
                reason = stage.reason
                if reason is not None and not completed:
                    cause = reason.cause
                loop = guard.loop if guard is not None else None
                drift = grounding.drift if grounding is not None else None
                text = generation.text
                if loop is not None:
                    text = text[: loop.keep].rstrip()
                elif drift is not None:
                    text = text[: drift.keep].rstrip()
                result.text = text
                result.usage = _usage(generation, prompt, cause)
                result.tool_calls = list(generation.tool_calls) if completed else []
                self._account(generation, result.usage, stage, span)
                if loop is not None:
                    mark_cancelled(span, stage.reason)
                    set_attributes(
                        span, {"ragline.guard.rule": loop.rule, "ragline.guard.kept": loop.keep}
                    )
                elif drift is not None:
                    mark_cancelled(span, stage.reason)
                    set_attributes(
                        span,
                        {
                            "ragline.guard.rule": "unsupported_sentence",
                            "ragline.guard.kept": drift.keep,
                            "ragline.guard.sentence": drift.sentence[:200],
                        },
                    )
        return generation

    def _account(self, generation: Generation, usage: Usage, stage: Lifetime, span: Span) -> None:
        model = self.generator.model
        m = self._metrics
        m.tokens.labels("prompt", model).inc(usage.prompt_tokens)
        m.tokens.labels("completion", model).inc(usage.completion_tokens)
        if usage.cause is not None:
            m.generation_stops.labels(stop_reason(usage.cause)).inc()
        if generation.tokens_after_cancel:
            m.tokens_after_cancel.inc(generation.tokens_after_cancel)
        for code in generation.upstream_statuses:
            m.upstream_responses.labels(str(code)).inc()
        reason = stage.reason
        if reason is not None and generation.upstream_closed_at is not None:
            m.cancel_to_close_seconds.observe(max(generation.upstream_closed_at - reason.at, 0.0))
        outcome = stage.get("outcome")
        if isinstance(outcome, Outcome):  # a request's: kept for the caller to look up
            outcome.generated = True
            outcome.completion_tokens += usage.completion_tokens
            outcome.tokens_after_cancel += generation.tokens_after_cancel
            if reason is not None:
                outcome.stopped = (generation, reason.at)
        set_attributes(
            span,
            {
                "gen_ai.usage.input_tokens": usage.prompt_tokens,
                "gen_ai.usage.output_tokens": usage.completion_tokens,
                "gen_ai.response.finish_reasons": [usage.finish_reason]
                if usage.finish_reason
                else None,
                "ragline.usage.estimated": usage.estimated,
            },
        )

    @contextmanager
    def _stage(
        self,
        lifetime: Lifetime,
        name: str,
        timeout: float | None,
        attributes: dict[str, str | int] | None = None,
        *,
        span_name: str | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
    ) -> Iterator[tuple[Lifetime, Span]]:
        with self._tracing.span(span_name or f"ragline.{name}", lifetime, attributes, kind) as span:
            try:
                with lifetime.child(name, timeout=timeout) as stage:
                    yield stage, span
            except StageTimeout:
                self._metrics.stage_timeouts.labels(name).inc()
                raise


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))
    return dot / norm if norm else 0.0


def estimate_tokens(prompt: Prompt) -> int:
    """A rough count of a prompt's tokens, for when the upstream reported none (the
    generation was cut before its last chunk) and for budgets: about four characters
    per token of English text."""
    chars = sum(
        len(m.content) + 4 + sum(len(c.name) + len(c.arguments) for c in m.tool_calls)
        for m in prompt.messages
    )
    chars += sum(len(t.name) + len(t.description) + len(str(t.parameters)) for t in prompt.tools)
    return max(1, chars // 4)


def _usage(generation: Generation, prompt: Prompt, cause: Cause | None) -> Usage:
    prompt_tokens = (
        generation.prompt_tokens if generation.usage_reported else estimate_tokens(prompt)
    )
    finish = generation.finish_reason
    if cause is not None:
        finish = stop_reason(cause)
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=generation.completion_tokens,
        total_tokens=prompt_tokens + generation.completion_tokens,
        finish_reason=finish,
        cause=cause,
        estimated=not generation.usage_reported,
    )
