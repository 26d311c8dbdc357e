"""The OpenAI-compatible generator against the fake upstream, on asyncio and trio."""

from __future__ import annotations

import anyio
import pytest
from pydantic import SecretStr

from conftest import upstream_running
from ragline import (
    Cause,
    Generation,
    Lifetime,
    Message,
    Prompt,
    RateLimited,
    StageTimeout,
    Unavailable,
    UpstreamError,
)
from ragline.providers.openai import OpenAIGenerator
from upstream import Behavior, FakeUpstream

pytestmark = [pytest.mark.anyio, pytest.mark.both_backends]

PROMPT = Prompt((Message(role="user", content="hello"),), max_tokens=7)


def generator(upstream: FakeUpstream, **options: float | None) -> OpenAIGenerator:
    return OpenAIGenerator(base_url=upstream.base_url, model="m", **options)  # type: ignore[arg-type]


async def test_streams_pieces_and_takes_the_upstream_usage() -> None:
    # Tokens apart in time arrive as pieces of their own (those that arrive in one read
    # go on as one piece).
    upstream = FakeUpstream(lambda body: Behavior(tokens=3, interval=0.05))
    pieces: list[str] = []

    async def on_delta(text: str) -> None:
        pieces.append(text)

    async with upstream_running(upstream):
        gen = generator(upstream)
        with Lifetime.root() as root:
            out = await gen.generate(PROMPT, root, Generation(), on_delta)
        await gen.aclose()
    assert pieces == ["t0 ", "t1 ", "t2 "]
    assert (out.text, out.prompt_tokens, out.completion_tokens) == ("t0 t1 t2 ", 11, 3)
    assert out.finish_reason == "stop"
    assert upstream.calls[0].body["max_tokens"] == 7
    assert upstream.calls[0].body["stream_options"] == {"include_usage": True}


async def test_a_finished_stream_leaves_its_connection_to_the_next_request() -> None:
    # Reading the body's end after [DONE] returns the connection to the pool: closing it
    # instead made every request open a new one (2x the per-request cost).
    upstream = FakeUpstream(lambda body: Behavior(tokens=3))
    async with upstream_running(upstream):
        gen = generator(upstream)
        for _ in range(3):
            with Lifetime.root() as root:
                out = await gen.generate(PROMPT, root, Generation())
            assert out.text == "t0 t1 t2 "
        await gen.aclose()
    assert len(upstream.calls) == 3
    assert upstream.connections == 1


async def test_cancellation_closes_the_upstream_and_keeps_partial_usage() -> None:
    upstream = FakeUpstream(lambda body: Behavior(tokens=100, gate_after=2))
    into = Generation()
    async with upstream_running(upstream):
        gen = generator(upstream)
        with Lifetime.root() as root:

            async def on_delta(text: str) -> None:
                if len(into.parts) == 2:
                    root.cancel(Cause.EXPLICIT, "test")

            await gen.generate(PROMPT, root, into, on_delta)
        (call,) = upstream.calls
        with anyio.fail_after(5):
            await call.closed.wait()
        await gen.aclose()
    assert root.reason is not None
    assert root.reason.cause is Cause.EXPLICIT
    assert into.text == "t0 t1 "
    assert into.completion_tokens == 2
    assert not into.usage_reported
    assert into.upstream_closed_at is not None
    assert len(call.token_times) == 2


async def test_first_token_timeout_is_a_timeout_and_closes_the_upstream() -> None:
    answered: list[int] = []

    def behave(body: dict[str, object]) -> Behavior:
        answered.append(1)  # the first call warms the client, the second is held
        return Behavior(tokens=1) if len(answered) == 1 else Behavior(hold_headers=True)

    upstream = FakeUpstream(behave)
    async with upstream_running(upstream):
        gen = generator(upstream, first_token_timeout=30)
        # A first answer builds the client (httpx's takes tens of ms on a loaded
        # machine), so that the 50 ms below are the upstream's silence alone.
        with Lifetime.root() as root:
            await gen.generate(PROMPT, root, Generation())
        gen._first_token_timeout = 0.05
        with Lifetime.root() as root:
            with pytest.raises(StageTimeout, match="first token"):
                await gen.generate(PROMPT, root, Generation())
        assert root.reason is None  # a timeout is not a cancellation
        with anyio.fail_after(5):
            await upstream.calls[1].closed.wait()
        await gen.aclose()


async def test_total_timeout_after_the_first_token() -> None:
    release = anyio.Event()
    upstream = FakeUpstream(lambda body: Behavior(tokens=5, gate_after=1, release=release))
    into = Generation()
    async with upstream_running(upstream):
        gen = generator(upstream, first_token_timeout=30, total_timeout=0.1)
        with Lifetime.root() as root:
            with pytest.raises(StageTimeout, match="total"):
                await gen.generate(PROMPT, root, into)
        await gen.aclose()
    assert into.text == "t0 "


async def test_upstream_errors_are_upstream_errors() -> None:
    upstream = FakeUpstream(lambda body: Behavior(status=500))
    async with upstream_running(upstream):
        gen = generator(upstream)
        with Lifetime.root() as root:
            with pytest.raises(UpstreamError, match="500: upstream says no") as info:
                await gen.generate(PROMPT, root, Generation())
        await gen.aclose()
    assert info.value.status == 500
    assert len(upstream.calls) == 1, "a 500 is not retried"
    refused = OpenAIGenerator(base_url="http://127.0.0.1:9/v1", model="m")
    with Lifetime.root() as root:
        with pytest.raises(UpstreamError, match="unreachable"):
            await refused.generate(PROMPT, root, Generation())
    await refused.aclose()


async def test_a_cancelled_lifetime_never_sends() -> None:
    upstream = FakeUpstream()
    async with upstream_running(upstream):
        gen = generator(upstream)
        root = Lifetime.root()
        root.cancel(Cause.CLIENT_DISCONNECTED)
        with root:
            await gen.generate(PROMPT, root, Generation())
        await gen.aclose()
    assert upstream.calls == []


def answers(*behaviors: Behavior) -> FakeUpstream:
    """An upstream that answers each call with the next behavior (the last one repeats)."""
    given = list(behaviors)
    return FakeUpstream(lambda body: given.pop(0) if len(given) > 1 else given[0])


async def test_a_429_then_a_200_is_answered_after_the_retry_after_wait() -> None:
    upstream = answers(Behavior(status=429, retry_after="1"), Behavior(tokens=3))
    into = Generation()
    async with upstream_running(upstream):
        gen = generator(upstream)
        with Lifetime.root() as root:
            began = anyio.current_time()
            await gen.generate(PROMPT, root, into)
            waited = anyio.current_time() - began
        await gen.aclose()
    assert into.text == "t0 t1 t2 "
    assert into.upstream_statuses == [429, 200]
    assert waited >= 1.0  # the upstream's Retry-After, honoured


async def test_a_persistent_429_is_passed_on_with_its_retry_after() -> None:
    upstream = answers(Behavior(status=429, retry_after="1"))
    into = Generation()
    async with upstream_running(upstream):
        gen = generator(upstream, retries=2)
        with Lifetime.root() as root:
            with pytest.raises(RateLimited) as info:
                await gen.generate(PROMPT, root, into)
        await gen.aclose()
    assert info.value.retry_after == 1.0
    assert into.upstream_statuses == [429, 429, 429]


async def test_a_wait_longer_than_the_deadline_is_not_waited_for() -> None:
    upstream = answers(Behavior(status=503, retry_after="120"))
    async with upstream_running(upstream):
        gen = generator(upstream, first_token_timeout=5)
        with Lifetime.root() as root:
            began = anyio.current_time()
            with pytest.raises(Unavailable) as info:
                await gen.generate(PROMPT, root, Generation())
            assert anyio.current_time() - began < 5
        await gen.aclose()
    assert info.value.retry_after == 120.0
    assert len(upstream.calls) == 1


async def test_a_rejected_server_key_names_the_setting_never_the_key() -> None:
    upstream = answers(Behavior(status=401))
    async with upstream_running(upstream):
        gen = OpenAIGenerator(
            base_url=upstream.base_url, model="m", api_key=SecretStr("sk-very-secret")
        )
        with Lifetime.root() as root:
            with pytest.raises(UpstreamError) as info:
                await gen.generate(PROMPT, root, Generation())
        await gen.aclose()
    assert "RAGLINE_LLM_API_KEY" in str(info.value)
    assert "secret" not in str(info.value)
    assert "upstream says no" not in str(info.value)
    assert len(upstream.calls) == 1


async def test_an_oversized_event_closes_the_upstream_with_a_clear_error() -> None:
    # One 3 MB event, then more for as long as the connection stays open.
    upstream = answers(Behavior(texts=["x" * 3_000_000], loop=["more "], interval=0.01))
    async with upstream_running(upstream):
        gen = generator(upstream, max_event_bytes=1_048_576)
        with Lifetime.root() as root:
            with pytest.raises(UpstreamError, match="larger than 1048576 bytes"):
                await gen.generate(PROMPT, root, Generation())
        await gen.aclose()
        with anyio.fail_after(5):
            await upstream.calls[0].closed.wait()


async def test_a_503_follows_the_same_rule_as_a_429() -> None:
    upstream = answers(Behavior(status=503), Behavior(tokens=2))
    into = Generation()
    async with upstream_running(upstream):
        gen = generator(upstream)
        with Lifetime.root() as root:
            await gen.generate(PROMPT, root, into)
        await gen.aclose()
    assert into.upstream_statuses == [503, 200]
    assert into.text == "t0 t1 "
