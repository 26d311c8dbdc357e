"""The OpenAI-compatible and Cohere embedders (providers/openai.py, providers/cohere.py)
against fake servers speaking their formats."""

from __future__ import annotations

import math

import anyio
import pytest
from pydantic import SecretStr

from fake_embeddings import FakeEmbeddings, embeddings_server, vector_for
from ragline import Cause, Lifetime, UpstreamError
from ragline.providers.cohere import CohereEmbedder
from ragline.providers.openai import OpenAIEmbedder

pytestmark = pytest.mark.anyio

TEXTS = ["the cat sat", "a dog ran", "the cat ran", "birds fly south", "cats and dogs"]


def openai(fake: FakeEmbeddings, **kw: object) -> OpenAIEmbedder:
    options: dict[str, object] = {
        "api_key": SecretStr(fake.key),
        "batch_size": 2,
        "dimensions": fake.dimensions,
        **kw,
    }
    url = f"{fake.url}/v1"
    return OpenAIEmbedder(base_url=url, model="text-embedding-3-small", **options)  # type: ignore[arg-type]


def cohere(fake: FakeEmbeddings, **kw: object) -> CohereEmbedder:
    options: dict[str, object] = {"api_key": SecretStr(fake.key), "dimensions": fake.dimensions}
    options.update(kw)
    return CohereEmbedder(base_url=fake.url, **options)  # type: ignore[arg-type]


def unit(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector]


async def test_openai_batches_sorts_by_index_and_normalises() -> None:
    async with embeddings_server(FakeEmbeddings()) as fake:
        embedder = openai(fake)
        with Lifetime.root() as root:
            vectors = await embedder.embed(TEXTS, root)
        await embedder.aclose()
    assert len(fake.requests) == 3  # batches of 2
    path, headers, body = fake.requests[0]
    assert path == "/v1/embeddings"
    assert headers["authorization"] == "Bearer test-key"
    assert body == {
        "model": "text-embedding-3-small",
        "input": TEXTS[:2],
        "encoding_format": "float",
    }
    for text, vector in zip(TEXTS, vectors, strict=True):
        assert vector == pytest.approx(unit(vector_for(text, fake.dimensions)))


async def test_openai_errors_carry_the_servers_message() -> None:
    async with embeddings_server(FakeEmbeddings()) as fake:
        wrong_key = openai(fake, api_key=SecretStr("nope"))
        wrong_size = openai(fake, dimensions=7)
        with Lifetime.root() as root:
            with pytest.raises(UpstreamError, match="401: Incorrect API key") as info:
                await wrong_key.embed(["x"], root)
            assert info.value.status == 401
            with pytest.raises(UpstreamError, match="expected 7 dimensions"):
                await wrong_size.embed(["x"], root)
        await wrong_key.aclose()
        await wrong_size.aclose()


async def test_cohere_sends_input_type_by_purpose() -> None:
    async with embeddings_server(FakeEmbeddings()) as fake:
        embedder = cohere(fake)
        with Lifetime.root() as root:
            documents = await embedder.embed(TEXTS, root)
            (query,) = await embedder.embed(["cat"], root, kind="query")
        await embedder.aclose()
    (_, headers, doc_body), (_, _, query_body) = fake.requests
    assert headers["authorization"] == "Bearer test-key"
    assert doc_body["input_type"] == "search_document"
    assert query_body["input_type"] == "search_query"
    assert doc_body["embedding_types"] == ["float"]
    assert doc_body["texts"] == TEXTS
    assert documents[0] == pytest.approx(unit(vector_for(TEXTS[0], fake.dimensions)))
    assert math.isclose(sum(x * x for x in query), 1.0)


async def test_cohere_splits_at_96_texts_and_reports_errors() -> None:
    async with embeddings_server(FakeEmbeddings()) as fake:
        embedder = cohere(fake, batch_size=500)
        with Lifetime.root() as root:
            vectors = await embedder.embed([f"text {i}" for i in range(200)], root)
            assert len(vectors) == 200
            assert [len(body["texts"]) for _, _, body in fake.requests] == [96, 96, 8]
            fake.fail_with = 500
            with pytest.raises(UpstreamError, match="500: something broke"):
                await embedder.embed(["x"], root)
        await embedder.aclose()


async def test_a_cancelled_lifetime_sends_nothing() -> None:
    async with embeddings_server(FakeEmbeddings()) as fake:
        embedder = openai(fake)
        root = Lifetime.root()
        root.cancel(Cause.CLIENT_DISCONNECTED)
        with anyio.fail_after(5), root:
            await embedder.embed(TEXTS, root)
        await embedder.aclose()
    assert fake.requests == []
