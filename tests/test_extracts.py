"""The extractive answer: the passages' own sentences that answer, cited; abstention when
no passage is relevant or the question names what no passage mentions; and the pipeline
answering that way without a model call."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider

from ragline import ChatPipeline, ChatRequest, Lifetime
from ragline.extracts import Extractor
from ragline.grounding import Grounding, Verdict
from ragline.metrics import Metrics
from ragline.models import Chunk, Source
from ragline.providers.identity import IdentityTransformer
from ragline.providers.memory import MemoryStore
from ragline.providers.prompt import ContextPromptComposer
from ragline.retrieval import ReadAll
from ragline.tracing import Tracing

pytestmark = pytest.mark.anyio

FERRY = (
    "The Saltmere ferry carries passengers between the ports of Saltmere and Gilly Point. "
    "The ferry is called the Grey Tern and it can carry two hundred passengers. "
    "The crossing takes forty minutes."
)
FOX = (
    "The moss fox is a small animal that lives in the wet forests of Eldra Island. It eats "
    "mostly snails and beetles. A moss fox sleeps during the day in hollow logs."
)
GUIDE = """# The ragline guide

## Who owns what

- The application owns everything. On SIGTERM or SIGINT it cancels in-flight work with the
  cause shutdown, answers 503 to requests that have not started their response, and exits.

```sh
ragline ask "What does ragline do on SIGTERM?"
```
"""


def source(text: str, rank: int = 1, similarity: float | None = 0.6, name: str = "a.txt") -> Source:
    return Source(
        rank=rank,
        document_id=name,
        chunk_index=0,
        source=name,
        score=1.0,
        similarity=similarity,
        text=text,
    )


def test_the_answer_quotes_the_sentences_that_answer_and_cites_them() -> None:
    answer = Extractor().answer("What does the moss fox eat?", [source(FOX)])
    assert not answer.abstained
    assert "It eats mostly snails and beetles" in answer.text
    assert answer.text.endswith("[1].")
    # Every sentence of it is one a reader finds in the cited source.
    judged = Grounding([FOX]).judge_all(answer.text)
    assert all(j.verdict is Verdict.SUPPORTED for _, j in judged)


def test_it_cites_the_passage_it_quotes() -> None:
    sources = [source(FOX, 1, name="fox.txt"), source(FERRY, 2, name="ferry.txt")]
    answer = Extractor().answer("How long does the Saltmere ferry crossing take?", sources)
    assert "forty minutes" in answer.text
    assert "[2]" in answer.text
    assert "[1]" not in answer.text


def test_code_and_sentences_that_only_quote_the_question_are_not_answers() -> None:
    answer = Extractor().answer("What does ragline do on SIGTERM?", [source(GUIDE, name="G.md")])
    assert "cancels in-flight work" in answer.text
    assert "ragline ask" not in answer.text


def test_a_passage_not_close_enough_is_no_answer_and_the_closest_is_named() -> None:
    far = source(FERRY, similarity=0.12, name="ferry.txt")
    answer = Extractor(abstain_below=0.3).answer("How do I make pancakes?", [far])
    assert answer.abstained
    assert answer.text == "The documents do not cover this; the closest source is ferry.txt [1]."


def test_a_question_naming_what_no_passage_mentions_is_not_answered() -> None:
    answer = Extractor().answer("Does the Saltmere ferry stop in Dover?", [source(FERRY)])
    assert answer.abstained
    assert "do not mention dover" in answer.text


def test_no_sources_no_answer() -> None:
    assert Extractor().answer("Anything?", []).abstained


# -- in the pipeline -------------------------------------------------------------------


class Embed:
    """Every text at the same point: the one chunk stored is every query's best."""

    model = "fake"
    dimensions = 2

    async def embed(
        self, texts: list[str], lifetime: Lifetime, kind: str = "document"
    ) -> list[list[float]]:
        return [[1.0, 0.0] for _ in texts]


class NoModel:
    provider = "none"
    model = "none"

    async def generate(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("an extractive answer calls no model")


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_the_pipeline_answers_without_the_model_and_streams_the_quote() -> None:
    metrics = Metrics()
    store = MemoryStore()
    with Lifetime.root() as root:
        chunk = Chunk("c", "fox", 0, FOX, "fox.txt", vector=(1.0, 0.0))
        await store.upsert([chunk], root)
    chat = ChatPipeline(
        transformer=IdentityTransformer(),
        composer=ContextPromptComposer(),
        generator=NoModel(),  # type: ignore[arg-type]
        embedder=Embed(),  # type: ignore[arg-type]
        store=store,
        access=ReadAll(),
        tracing=Tracing(TracerProvider()),
        metrics=metrics,
        extractor=Extractor(abstain_below=0.3),
    )
    streamed: list[str] = []

    async def on_delta(piece: str) -> None:
        streamed.append(piece)

    with Lifetime.root() as root:
        question = ChatRequest(query="What does the moss fox eat?")
        result = await chat.run(question, root, on_delta=on_delta)
    assert "".join(streamed) == result.text
    assert "snails and beetles" in result.text
    assert result.usage.finish_reason == "stop"
    assert result.usage.completion_tokens == 0  # no model ran
    assert [s.source for s in result.sources] == ["fox.txt"]
    assert result.sources[0].similarity == pytest.approx(1.0)
    assert metrics.answers.labels("extractive")._value.get() == 1
