"""The degeneration guard: the detector on its own, then across modules — the pipeline
stopping a looping upstream (its connection closed, whole and streamed, native and
OpenAI-compatible routes) and a looping local model, with the stop recorded."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest
from openai import AsyncOpenAI
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from conftest import Running, serve, settings_for, upstream_running
from ragline import ChatPipeline, ChatRequest, ChatResult, Generation, Lifetime, Message, Prompt
from ragline.metrics import Metrics
from ragline.models import Sampling
from ragline.providers.identity import IdentityTransformer
from ragline.repetition import Loop, RepetitionGuard
from ragline.tracing import Tracing
from upstream import Behavior, Call, FakeUpstream

pytestmark = pytest.mark.anyio

INTRO = ["Ragline ", "stops ", "work ", "when ", "its ", "owner ", "leaves. "]
LOOP = ["The ", "answer ", "is: ", "[1]. "]
FIRST_COPY = "Ragline stops work when its owner leaves. The answer is: [1]"
FRUITS = (
    "apples bananas cherries dates elderberries figs grapes honeydew kiwis lemons mangoes "
    "nectarines oranges papayas quinces raspberries strawberries tangerines plums melons"
)
NUMBERED = "".join(f"{n}. {fruit}\n" for n, fruit in enumerate(FRUITS.split(), start=1))


def pieces(text: str, size: int = 3) -> Iterator[str]:
    for start in range(0, len(text), size):
        yield text[start : start + size]


def run_guard(text: str) -> Loop | None:
    guard = RepetitionGuard()
    for piece in pieces(text):
        if guard.feed(piece) is not None:
            break
    return guard.finish()


# -- the detector ---------------------------------------------------------------------


def test_a_repeated_span_keeps_the_first_copy() -> None:
    loop = run_guard("".join(INTRO + LOOP * 10))
    assert loop is not None
    assert loop.rule == "repeated_span"
    assert "".join(INTRO + LOOP * 10)[: loop.keep] == FIRST_COPY


def test_a_sentence_repeated_with_other_lines_between_is_a_loop() -> None:
    text = "".join(f"The answer is:\n\n[{n}] (README.md)\n\n" for n in range(1, 12))
    loop = run_guard(text)
    assert loop is not None
    assert loop.rule == "repeated_sentence"
    assert text[: loop.keep] == "The answer is:\n\n[1] (README.md)\n\n"


def test_a_long_passage_written_again_with_other_words_around_it_is_a_loop() -> None:
    # What SmolLM2 wrote about SIGTERM: the same long clause twice, its sentences not
    # quite the same and not back to back.
    clause = (
        "sends a message from the server of the application (the one running on the "
        "server) and it does not stop until you have finished your work"
    )
    text = f"- It {clause}.\nThis response contains an answer.\n- The code {clause}."
    loop = run_guard(text)
    assert loop is not None
    assert loop.rule == "repeated_passage"
    assert text[: loop.keep] == f"- It {clause}.\nThis response contains an answer.\n"


def test_a_page_of_one_punctuation_mark_is_a_loop() -> None:
    assert run_guard("Answer:\n" + "#\n\n" * 100) is not None


@pytest.mark.parametrize(
    "text",
    [
        NUMBERED,
        "".join(f"The square of {n} is {n * n}.\n" for n in range(1, 21)),
        "| day | open |\n|---|---|\n" + "".join(f"| day {n} | {n}:00 |\n" for n in range(30)),
        "|---|---|---|---|---|---|---|---|---|---|\n",
        "Yes, yes, yes. It works, and it stops when the client leaves.",
    ],
    ids=["numbered-list", "squares", "table", "table-rule", "emphasis"],
)
def test_legitimate_repetition_is_left_alone(text: str) -> None:
    assert run_guard(text) is None


# -- the pipeline with a generator that streams a given text ---------------------------


class Scripted:
    """Streams ``text`` in pieces of three characters."""

    provider, model = "test", "scripted"

    def __init__(self, text: str) -> None:
        self.text = text
        self.sent = 0

    async def generate(
        self, prompt: Prompt, lifetime: Lifetime, into: Generation, on_delta: Any = None
    ) -> Generation:
        for piece in pieces(self.text):
            await lifetime.checkpoint()
            self.sent += 1
            into.parts.append(piece)
            into.completion_tokens += 1
            if on_delta is not None:
                await on_delta(piece)
        into.finish_reason = "stop"
        return into


class Fixed:
    """A composer that asks the same thing whatever the request."""

    def __init__(self, prompt: Prompt) -> None:
        self.prompt = prompt

    async def compose(self, request: ChatRequest, hits: Any, lifetime: Lifetime) -> Prompt:
        return self.prompt


def pipeline(generator: Any, prompt: Prompt | None = None) -> tuple[ChatPipeline, Metrics]:
    metrics = Metrics()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    chat = ChatPipeline(
        transformer=IdentityTransformer(),
        composer=Fixed(prompt or Prompt((Message(role="user", content="q"),))),
        generator=generator,
        tracing=Tracing(provider),
        metrics=metrics,
    )
    return chat, metrics


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_a_numbered_list_of_20_distinct_items_goes_through_untouched() -> None:
    generator = Scripted(NUMBERED)
    chat, _metrics = pipeline(generator)
    streamed: list[str] = []

    async def on_delta(piece: str) -> None:
        streamed.append(piece)

    with Lifetime.root() as root:
        result = await chat.run(ChatRequest(query="list"), root, on_delta=on_delta)
    assert result.text == NUMBERED
    assert "".join(streamed) == NUMBERED
    assert result.usage.finish_reason == "stop"
    assert generator.sent == len(list(pieces(NUMBERED)))


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_the_pipeline_stops_a_loop_and_keeps_the_answer_before_it() -> None:
    text = "".join(INTRO + LOOP * 50)
    generator = Scripted(text)
    chat, metrics = pipeline(generator)
    with Lifetime.root() as root:
        result = await chat.run(ChatRequest(query="q"), root)
    assert result.text == FIRST_COPY
    assert result.usage.finish_reason == "repetition"
    assert result.usage.cause == "repetition"
    assert result.usage.completion_tokens == generator.sent
    assert generator.sent < len(list(pieces(text))) // 4
    assert metrics.generation_stops.labels("repetition")._value.get() == 1
    assert not root.cancelled, "the guard stops the generation, not its owner"


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_guard_can_be_turned_off() -> None:
    text = "".join(INTRO + LOOP * 50)
    chat, _ = pipeline(Scripted(text))
    chat.repetition_guard = False
    with Lifetime.root() as root:
        result = await chat.run(ChatRequest(query="q"), root)
    assert result.text == text
    assert result.usage.finish_reason == "stop"


# -- a looping upstream over real HTTP --------------------------------------------------


def looping(body: dict[str, Any]) -> Behavior:
    # One token every 10 ms, as a fast model server would: the guard must close the
    # connection within a few tokens of the loop.
    return Behavior(texts=INTRO, loop=LOOP, interval=0.01, loop_limit=400)


def tokens_to_detect() -> int:
    """How many upstream tokens the guard needs to see the loop."""
    guard = RepetitionGuard()
    for n, piece in enumerate(INTRO + LOOP * 100, start=1):
        if guard.feed(piece) is not None:
            return n
    raise AssertionError("the loop is never detected")


async def closed_soon(call: Call) -> None:
    with anyio.fail_after(5):
        await call.closed.wait()
    assert not call.finished
    # The upstream stopped producing within a few tokens of the one that showed the loop.
    assert len(call.token_times) <= tokens_to_detect() + 3


def check_recorded(running: Running, completion_tokens: int, call: Call) -> None:
    assert 0 < completion_tokens <= len(call.token_times)
    assert running.metric("ragline_generation_stops_total", reason="repetition") == 1
    span = running.span("chat fake-model")
    assert span.attributes is not None
    assert span.attributes["ragline.guard.rule"] == "repeated_span"
    assert span.attributes["ragline.cancel.reason"] == "repetition"
    assert span.attributes["gen_ai.response.finish_reasons"] == ("repetition",)
    assert span.status.status_code.name == "UNSET"


async def ask_looping(
    method: str, path: str, **kwargs: Any
) -> tuple[httpx.Response, Running, Call]:
    """Ask ragline in front of a looping upstream; the upstream closed soon after."""
    upstream = FakeUpstream(looping)
    async with upstream_running(upstream), serve(settings_for(upstream)) as running:
        async with httpx.AsyncClient(base_url=running.url, timeout=30) as http:
            response = await http.request(method, path, **kwargs)
        (call,) = upstream.calls
        await closed_soon(call)
    return response, running, call


async def test_a_looping_upstream_is_closed_whole() -> None:
    response, running, call = await ask_looping(
        "POST", "/api/v1/inference/chat", json={"query": "?"}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["text"] == FIRST_COPY
    assert body["usage"]["finish_reason"] == "repetition"
    assert body["usage"]["cause"] == "repetition"
    check_recorded(running, body["usage"]["completion_tokens"], call)


async def test_a_looping_upstream_is_closed_streamed() -> None:
    response, running, call = await ask_looping(
        "GET", "/api/v1/inference/stream", params={"query": "?"}
    )
    lines = response.text.split("\n")
    done = json.loads(lines[lines.index("event: done") + 1][6:])
    streamed = "".join(
        json.loads(line[6:]).get("delta", "") for line in lines if line.startswith("data: ")
    )
    assert streamed.startswith(FIRST_COPY)
    assert done["finish_reason"] == "repetition"
    assert done["text"] == FIRST_COPY
    check_recorded(running, done["usage"]["completion_tokens"], call)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_the_openai_route_stays_valid_for_the_sdk(stream: bool) -> None:
    upstream = FakeUpstream(looping)
    async with upstream_running(upstream), serve(settings_for(upstream)) as running:
        client = AsyncOpenAI(base_url=f"{running.url}/v1", api_key="unused", max_retries=0)
        messages: Any = [{"role": "user", "content": "why?"}]
        if stream:
            text, finish, extra = "", None, {}
            chunks = await client.chat.completions.create(
                model="fake-model", messages=messages, stream=True
            )
            async for chunk in chunks:
                if chunk.choices:
                    text += chunk.choices[0].delta.content or ""
                    finish = chunk.choices[0].finish_reason or finish
                extra = (chunk.model_extra or {}).get("ragline") or extra
            assert text.startswith(FIRST_COPY)
        else:
            reply = await client.chat.completions.create(model="fake-model", messages=messages)
            finish = reply.choices[0].finish_reason
            extra = (reply.model_extra or {})["ragline"]
            assert reply.choices[0].message.content == FIRST_COPY
            assert reply.usage is not None
            assert reply.usage.completion_tokens > 0
        await client.close()
        await closed_soon(upstream.calls[0])
        assert finish == "stop"  # a value the SDK knows
        assert extra["finish_reason"] == "repetition"


async def test_with_the_guard_off_the_loop_runs_to_the_limit() -> None:
    upstream = FakeUpstream(
        lambda body: Behavior(texts=INTRO, loop=LOOP, loop_limit=60, interval=0.001)
    )
    async with (
        upstream_running(upstream),
        serve(settings_for(upstream, repetition_guard=False)) as running,
    ):
        async with httpx.AsyncClient(base_url=running.url, timeout=30) as http:
            response = await http.post("/api/v1/inference/chat", json={"query": "why?"})
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["finish_reason"] == "length"
    assert upstream.calls[0].finished
    assert len(upstream.calls[0].token_times) == 60


# -- the local model ----------------------------------------------------------------------

# Greedy decoding with no penalty over raw Markdown: SmolLM2-135M loops on this; the
# eval-chosen defaults avoid it (docs/BENCHMARKS.md), so here it is forced.
MARKDOWN = """[1] (docs/GUIDE.md)
## Jobs

| route | what |
|---|---|
| `POST /api/v1/ingest` | 202 `{job_id}` |
| `DELETE /api/v1/ingest/{job_id}` | stops at the next batch boundary |

```sh
ragline ingest docs/ --collection docs
```
"""


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_guard_stops_a_looping_local_generation() -> None:
    from ragline.providers.llamacpp import LlamaCppGenerator
    from ragline.providers.prompt import DEFAULT_INSTRUCTIONS
    from ragline.threads import ThreadBridge

    greedy = Sampling(temperature=0.0, top_p=1.0, min_p=0.0, repeat_penalty=1.0)
    local = LlamaCppGenerator(ThreadBridge(), max_tokens=256, sampling=greedy)
    question = f"Context:\n{MARKDOWN}\n\nQuestion: How do I stop an ingestion job?"
    prompt = Prompt(
        (
            Message(role="system", content=DEFAULT_INSTRUCTIONS),
            Message(role="user", content=question),
        )
    )
    with Lifetime.root() as root:
        await local.open(root)
        unguarded = Generation()
        await local.generate(prompt, root, unguarded)
        chat, metrics = pipeline(local, prompt)
        result = ChatResult()
        await chat.run(ChatRequest(query="q"), root, into=result)
    # Left alone, the model runs to its token limit; guarded, it stops at the loop.
    assert unguarded.completion_tokens == 256
    assert run_guard(unguarded.text) is not None
    assert result.usage.finish_reason == "repetition"
    assert result.usage.completion_tokens < 200
    assert result.text
    assert run_guard(result.text) is None, "the answer kept is the text before the loop"
    # The bridge returns at once on cancellation; the model's thread records its counters
    # as it unwinds, a moment later.
    with anyio.fail_after(10):
        while len(local.history) < 2:
            await anyio.sleep(0.01)
    counters = local.history[-1]
    assert counters.decoded_at_stop is not None
    assert counters.decoded_after_stop <= 2
    assert metrics.generation_stops.labels("repetition")._value.get() == 1
