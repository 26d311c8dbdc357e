"""The official ``openai`` SDK works unchanged against ragline's /v1 routes."""

from __future__ import annotations

import openai
import pytest
from openai import AsyncOpenAI

from conftest import serve, settings_for, upstream_running
from upstream import Behavior, FakeUpstream

pytestmark = pytest.mark.anyio


async def test_sdk_whole_streamed_and_models() -> None:
    upstream = FakeUpstream(lambda body: Behavior(tokens=4))
    async with upstream_running(upstream), serve(settings_for(upstream)) as running:
        async with AsyncOpenAI(base_url=f"{running.url}/v1", api_key="x", max_retries=0) as sdk:
            models = await sdk.models.list()
            assert [m.id for m in models.data] == ["fake-model"]

            whole = await sdk.chat.completions.create(
                model="fake-model",
                messages=[
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": "earlier"},
                    {"role": "assistant", "content": "reply"},
                    {"role": "user", "content": "now"},
                ],
            )
            assert whole.choices[0].message.content == "t0 t1 t2 t3 "
            assert whole.choices[0].finish_reason == "stop"
            assert whole.usage is not None
            assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (11, 4)

            stream = await sdk.chat.completions.create(
                model="fake-model",
                messages=[{"role": "user", "content": "hi"}],
                stream=True,
                stream_options={"include_usage": True},
            )
            text, usage, finish = "", None, None
            async for chunk in stream:
                if chunk.choices:
                    text += chunk.choices[0].delta.content or ""
                    finish = chunk.choices[0].finish_reason or finish
                if chunk.usage:
                    usage = chunk.usage
            assert text == "t0 t1 t2 t3 "
            assert finish == "stop"
            assert usage is not None
            assert usage.completion_tokens == 4

            with pytest.raises(openai.NotFoundError) as missing:
                await sdk.chat.completions.create(
                    model="gpt-nope", messages=[{"role": "user", "content": "hi"}]
                )
            assert "gpt-nope" in str(missing.value)

    sent = upstream.calls[0].body
    assert [m["role"] for m in sent["messages"]] == ["system", "user", "assistant", "user"]
    assert sent["messages"][-1]["content"] == "now"
    assert sent["stream"] is True


async def test_upstream_error_mid_stream_reaches_the_sdk_as_an_error() -> None:
    upstream = FakeUpstream(lambda body: Behavior(status=500))
    async with upstream_running(upstream), serve(settings_for(upstream)) as running:
        async with AsyncOpenAI(base_url=f"{running.url}/v1", api_key="x", max_retries=0) as sdk:
            with pytest.raises(openai.APIStatusError) as failed:
                await sdk.chat.completions.create(
                    model="fake-model", messages=[{"role": "user", "content": "hi"}]
                )
            assert failed.value.status_code == 502
            stream = await sdk.chat.completions.create(
                model="fake-model", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            with pytest.raises(openai.APIError, match="upstream answered 500"):
                async for _ in stream:
                    pass
