"""``POST /v1/embeddings``: the official ``openai`` SDK (and ragline's own OpenAI embedder)
get the configured embedder's vectors; bad input is a 400 JSON error; a client that hangs
up cancels the embedding."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import numpy as np
import openai
import pytest
from openai import AsyncOpenAI

from conftest import LogCapture, RawClient, asgi_client, serve, settings_for
from fake_embeddings import WordEmbedder
from ragline import CancelReason, Lifetime
from ragline.providers._http import unit
from ragline.providers.memory import MemoryStore
from ragline.providers.openai import OpenAIEmbedder
from ragline.server import create_app
from ragline.server.embeddings_api import MAX_INPUTS
from upstream import FakeUpstream

pytestmark = pytest.mark.anyio

TEXTS = ["ragline stops work", "when its owner goes away", "x"]


async def expected(texts: Sequence[str]) -> list[list[float]]:
    """What the embedder itself answers."""
    with Lifetime("test") as life:
        vectors = await WordEmbedder().embed(texts, life)
    return vectors


@asynccontextmanager
async def ragline(
    tmp_path: Path, **values: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, AsyncOpenAI]]:
    """ragline in-process (retrieval on, with the word embedder) behind a plain client and
    the SDK (whose transport is httpx2's: the SDK's own HTTP library)."""
    settings = settings_for(FakeUpstream(), retrieval=True, data_dir=str(tmp_path), **values)
    app = create_app(settings, embedder=WordEmbedder(), store=MemoryStore())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        sdk_http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app))
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://ragline") as http,
            AsyncOpenAI(
                base_url="http://ragline/v1", api_key="x", max_retries=0, http_client=sdk_http
            ) as sdk,
        ):
            yield http, sdk


async def test_the_sdk_gets_the_embedders_vectors_as_floats_and_as_base64(tmp_path: Path) -> None:
    want = await expected(TEXTS)
    async with ragline(tmp_path) as (http, sdk):
        floats = await sdk.embeddings.create(model="words", input=TEXTS, encoding_format="float")
        assert [row.embedding for row in floats.data] == want  # exactly: JSON keeps float64
        assert [row.index for row in floats.data] == [0, 1, 2]
        assert floats.model == "words"
        # About four characters a token (no embedder has a tokenizer to count with).
        tokens = sum((len(t) + 3) // 4 for t in TEXTS)
        assert (floats.usage.prompt_tokens, floats.usage.total_tokens) == (tokens, tokens)

        # Unless told otherwise the SDK asks for base64 and decodes it itself.
        default = await sdk.embeddings.create(model="words", input=TEXTS, dimensions=16)
        for row, vector in zip(default.data, want, strict=True):
            assert np.array_equal(np.array(row.embedding), np.array(vector, dtype=np.float32))

        one = await sdk.embeddings.create(model="words", input="x", encoding_format="float")
        assert [row.embedding for row in one.data] == want[2:]

        raw = await http.post(
            "/v1/embeddings", json={"model": "words", "input": TEXTS, "encoding_format": "base64"}
        )
        assert raw.status_code == 200
        for row, vector in zip(raw.json()["data"], want, strict=True):
            got = np.frombuffer(base64.b64decode(row["embedding"]), dtype="<f4")
            assert np.array_equal(got, np.array(vector, dtype=np.float32))


async def test_a_wrong_model_or_dimension_count_is_an_sdk_error(tmp_path: Path) -> None:
    async with ragline(tmp_path) as (_, sdk):
        with pytest.raises(openai.NotFoundError) as missing:
            await sdk.embeddings.create(model="fake-model", input="hi")
        assert missing.value.code == "model_not_found"
        assert "'words'" in missing.value.message
        with pytest.raises(openai.BadRequestError) as mismatch:
            await sdk.embeddings.create(model="words", input="hi", dimensions=8)
        assert mismatch.value.param == "dimensions"
        assert "16 dimensions" in mismatch.value.message
        with pytest.raises(openai.BadRequestError) as empty:
            await sdk.embeddings.create(model="words", input="")
        assert empty.value.param == "input"


async def test_models_lists_the_embedding_model_with_the_chat_model(tmp_path: Path) -> None:
    async with ragline(tmp_path) as (_, sdk):
        listed = await sdk.models.list()
        assert [m.id for m in listed.data] == ["fake-model", "words"]


@pytest.mark.parametrize(
    ("change", "param", "says"),
    [
        ({"input": ""}, "input", "text 0 is empty"),
        ({"input": []}, "input", "at least one text"),
        ({"input": ["a", ""]}, "input", "text 1 is empty"),
        ({"input": [1, 2, 3]}, "input", "token arrays are not supported"),
        ({"input": [[1, 2], [3]]}, "input", "token arrays are not supported"),
        ({"input": None}, "input", "a string or a list of strings"),
        ({"input": ["w"] * (MAX_INPUTS + 1)}, "input", f"at most {MAX_INPUTS}"),
        ({"input": None, "model": None}, "model", "(and 1 more)"),
        ({"encoding_format": "int8"}, "encoding_format", "'float' or 'base64'"),
        ({"dimensions": 0}, "dimensions", "greater than or equal to 1"),
        ({"dimensions": 17}, "dimensions", "16 dimensions only"),
    ],
)
async def test_bad_input_is_a_clear_400(
    tmp_path: Path, change: dict[str, Any], param: str, says: str
) -> None:
    body = {"model": "words", "input": "hello", **change}
    async with ragline(tmp_path) as (http, _):
        answer = await http.post("/v1/embeddings", json=body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert says in error["message"]


async def test_malformed_missing_and_oversized_bodies(tmp_path: Path) -> None:
    async with ragline(tmp_path, max_body_bytes=2048) as (http, _):
        malformed = await http.post("/v1/embeddings", content=b"{not json")
        assert (malformed.status_code, malformed.json()["error"]["code"]) == (400, "malformed_json")
        missing = await http.post("/v1/embeddings", json={"input": "hello"})
        assert (missing.status_code, missing.json()["error"]["param"]) == (400, "model")
        big = await http.post("/v1/embeddings", json={"model": "words", "input": "w " * 2000})
        assert (big.status_code, big.json()["error"]["code"]) == (413, "body_too_large")


async def test_with_retrieval_off_there_is_no_embedding_model() -> None:
    async with asgi_client(settings_for(FakeUpstream())) as http:
        answer = await http.post("/v1/embeddings", json={"model": "words", "input": "hi"})
        assert answer.status_code == 404
        assert answer.json()["error"]["code"] == "no_retrieval"
        assert [m["id"] for m in (await http.get("/v1/models")).json()["data"]] == ["fake-model"]


async def test_ragline_can_embed_through_another_raglines_endpoint(tmp_path: Path) -> None:
    # ragline's own OpenAI embedder (RAGLINE_EMBEDDINGS=openai) as a client, over a socket.
    settings = settings_for(FakeUpstream(), retrieval=True, data_dir=str(tmp_path))
    async with serve(settings, embedder=WordEmbedder(), store=MemoryStore()) as running:
        client = OpenAIEmbedder(base_url=f"{running.url}/v1", model="words", dimensions=16)
        try:
            with Lifetime("test") as life:
                got = await client.embed(TEXTS, life)
        finally:
            await client.aclose()
        assert got == [unit(v) for v in await expected(TEXTS)]
        span = running.span("embeddings words")
        assert (span.attributes or {})["gen_ai.operation.name"] == "embeddings"


class StuckEmbedder:
    """An embedder that never finishes on its own, and says when it was cancelled."""

    model, dimensions = "stuck", 4

    def __init__(self) -> None:
        self.started = anyio.Event()
        self.cancelled: list[tuple[float, CancelReason | None]] = []

    async def embed(
        self, texts: Sequence[str], lifetime: Lifetime, *, kind: str = "document"
    ) -> list[list[float]]:
        self.started.set()
        try:
            await anyio.sleep_forever()
        finally:
            self.cancelled.append((time.monotonic(), lifetime.reason))
        return []


async def test_a_client_that_hangs_up_cancels_the_embedding(
    tmp_path: Path, logs: LogCapture
) -> None:
    embedder = StuckEmbedder()
    settings = settings_for(FakeUpstream(), retrieval=True, data_dir=str(tmp_path))
    async with serve(settings, embedder=embedder, store=MemoryStore()) as running:
        client = await RawClient.connect(running.port)
        body = json.dumps({"model": "stuck", "input": ["a", "b"]}).encode()
        await client.send("POST", "/v1/embeddings", body, {"x-request-id": "e1"})
        with anyio.fail_after(10):
            await embedder.started.wait()
        hung_up_at = time.monotonic()
        await client.close()
        with anyio.fail_after(10):
            line = await logs.wait_for(logs.access("e1"))
        assert line.status == 499  # type: ignore[attr-defined]
        ((cancelled_at, reason),) = embedder.cancelled
        assert reason is not None
        assert reason.cause == "client_disconnected"
        assert cancelled_at - hung_up_at < 2.0  # at once; generous for a shared machine
        span = running.span("embeddings stuck")
        assert (span.attributes or {})["ragline.cancel.reason"] == "client_disconnected"
