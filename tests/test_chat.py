"""The orchestrator: stage order, a span per stage, deadlines and usage when cut short."""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ragline import (
    Cause,
    ChatPipeline,
    ChatRequest,
    ChatResult,
    Generation,
    Hit,
    Lifetime,
    Prompt,
    StageTimeout,
    StageTimeouts,
)
from ragline.access import Readable
from ragline.metrics import Metrics
from ragline.models import Message
from ragline.providers.prompt import ContextPromptComposer
from ragline.providers.rewrite import LLMRewriter
from ragline.retrieval import ReadAll, fuse
from ragline.tracing import Tracing

pytestmark = [pytest.mark.anyio, pytest.mark.both_backends]


class Upper:
    async def transform(self, query: str, history: Sequence[Message], lifetime: Lifetime) -> str:
        return query.upper()


class Embedder:
    model, dimensions = "e", 2

    async def embed(
        self, texts: Sequence[str], lifetime: Lifetime, *, kind: str = "document"
    ) -> list[list[float]]:
        return [[float(len(t)), 0.0] for t in texts]


class Store:
    def __init__(self, hang: bool = False) -> None:
        self.hang = hang
        self.seen: list[tuple[Sequence[float], int]] = []

    async def search(
        self,
        vector: Sequence[float],
        top_k: int,
        lifetime: Lifetime,
        *,
        readable: Readable,
        collection: str | None = None,
    ) -> list[Hit]:
        self.seen.append((vector, top_k))
        if self.hang:
            await anyio.sleep_forever()
        return [Hit("doc", 0, "ragline stops work when its owner leaves", "doc.md", 0.9)]


class Tokens:
    """Produces tokens; after ``stop_after`` it waits for a cancellation."""

    provider, model = "test", "tokens"

    def __init__(self, stop_after: int | None = None) -> None:
        self.stop_after = stop_after
        self.prompts: list[Prompt] = []
        self.waiting = anyio.Event()

    async def generate(
        self, prompt: Prompt, lifetime: Lifetime, into: Generation, on_delta: object = None
    ) -> Generation:
        self.prompts.append(prompt)
        for i in range(3):
            into.parts.append(f"w{i} ")
            into.completion_tokens += 1
            if self.stop_after is not None and i + 1 == self.stop_after:
                self.waiting.set()
                await anyio.sleep_forever()
        into.finish_reason = "stop"
        return into


def pipeline(
    generator: Tokens, store: Store, **timeouts: float
) -> tuple[ChatPipeline, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return ChatPipeline(
        transformer=Upper(),
        composer=ContextPromptComposer(),
        generator=generator,
        embedder=Embedder(),
        store=store,
        access=ReadAll(),
        tracing=Tracing(provider),
        metrics=Metrics(),
        timeouts=StageTimeouts(**timeouts),
    ), exporter


async def test_runs_the_stages_in_order_with_a_span_each() -> None:
    gen, store = Tokens(), Store()
    chat, spans = pipeline(gen, store)
    with Lifetime.root() as root:
        result = await chat.run(ChatRequest(query="why", top_k=3), root)
    assert result.text == "w0 w1 w2 "
    assert [s.document_id for s in result.sources] == ["doc"]
    assert store.seen == [([3.0, 0.0], 3)]
    user = gen.prompts[0].messages[-1].content
    # The rewrite drives retrieval; the model still sees the user's own words.
    assert "[1] doc.md\nragline stops work" in user
    assert user.endswith("Question: why")
    names = [s.name for s in spans.get_finished_spans()]
    assert names == [
        "ragline.transform",
        "ragline.retrieve",
        "ragline.compose",
        "chat tokens",
        "ragline.chat",
    ]
    generate = spans.get_finished_spans()[3]
    assert generate.attributes["gen_ai.operation.name"] == "chat"
    assert generate.attributes["gen_ai.usage.output_tokens"] == 3
    assert result.usage.finish_reason == "stop"
    assert result.usage.estimated


async def test_a_stage_deadline_is_a_timeout_with_an_error_span() -> None:
    chat, spans = pipeline(Tokens(), Store(hang=True), retrieve=0.01)
    with anyio.fail_after(10), Lifetime.root() as root:
        with pytest.raises(StageTimeout) as info:
            await chat.run(ChatRequest(query="q"), root)
    assert info.value.stage == "retrieve"
    assert root.reason is None
    retrieve = next(s for s in spans.get_finished_spans() if s.name == "ragline.retrieve")
    assert retrieve.status.status_code.name == "ERROR"
    assert retrieve.attributes["error.type"] == "timeout"


async def test_cancellation_keeps_text_and_usage_with_the_cause() -> None:
    gen = Tokens(stop_after=2)
    chat, spans = pipeline(gen, Store())
    result = ChatResult()
    root = Lifetime.root()
    async with anyio.create_task_group() as tg:

        async def run() -> None:
            with root.child("request") as request:
                await chat.run(ChatRequest(query="q"), request, into=result)

        tg.start_soon(run)
        with anyio.fail_after(10):
            await gen.waiting.wait()
        root.cancel(Cause.SHUTDOWN, "test")
    assert result.text == "w0 w1 "
    assert result.usage.completion_tokens == 2
    assert result.usage.cause is Cause.SHUTDOWN
    assert result.usage.finish_reason == "cancelled"
    assert result.usage.prompt_tokens > 0
    generate = next(s for s in spans.get_finished_spans() if s.name == "chat tokens")
    assert generate.attributes["ragline.cancel.reason"] == "shutdown"
    assert generate.attributes["ragline.cancel.origin"] == "app"
    assert generate.status.status_code.name == "UNSET"


async def test_an_llm_rewrite_drives_retrieval_but_not_the_answer() -> None:
    gen, store = Tokens(), Store()
    chat, _ = pipeline(gen, store)
    chat.transformer = LLMRewriter(gen)
    with Lifetime.root() as root:
        await chat.run(ChatRequest(query="why"), root)
    rewrite, answer = gen.prompts
    assert "search query" in rewrite.messages[0].content
    assert rewrite.messages[-1].content == "why"
    assert store.seen[0][0] == [float(len("w0 w1 w2")), 0.0]  # the rewrite was embedded
    assert answer.messages[-1].content.endswith("Question: why")


def test_reciprocal_rank_fusion_rewards_agreement() -> None:
    a, b, c = (Hit(d, 0, d, f"{d}.md", 0.0) for d in "abc")
    fused = fuse([[a, b, c], [c, a]], 2)
    assert [h.document_id for h in fused] == ["a", "c"]
    assert fused[0].score == pytest.approx(1 / 61 + 1 / 62)


def test_fusion_keeps_each_rankings_own_score() -> None:
    dense = [Hit("a", 0, "x", "a.md", 0.8, similarity=0.8), Hit("b", 0, "y", "b.md", 0.5)]
    lexical = [Hit("b", 0, "y", "b.md", 7.5, bm25=7.5), Hit("a", 0, "x", "a.md", 2.0, bm25=2.0)]
    fused = {hit.document_id: hit for hit in fuse([dense, lexical], 2)}
    assert (fused["a"].similarity, fused["a"].bm25) == (0.8, 2.0)
    assert (fused["b"].similarity, fused["b"].bm25) == (None, 7.5)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_sources_are_the_passages_the_model_saw_numbered_as_it_saw_them() -> None:
    class Three(Store):
        async def search(self, *args: object, **kwargs: object) -> list[Hit]:
            return [Hit(d, 0, f"about {d}", f"{d}.md", 0.5, similarity=0.5) for d in "abc"]

    gen = Tokens()
    chat, _ = pipeline(gen, Three())
    chat.composer = ContextPromptComposer(max_passages=2)
    with Lifetime.root() as root:
        result = await chat.run(ChatRequest(query="why", top_k=3), root)
    assert [(s.rank, s.document_id, s.title) for s in result.sources] == [
        (1, "a", "a.md"),
        (2, "b", "b.md"),
    ]
    assert result.sources[0].relevance() == "similarity 0.50"
    assert "[2] b.md\nabout b" in gen.prompts[0].messages[-1].content
