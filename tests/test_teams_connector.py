"""The Connector client against the fake Bot Connector and token endpoint, over real HTTP:
tokens cached and refreshed once at a time, rejections retried, and nothing that may have
been applied repeated blindly."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest

from ragline.lifetime import Cause, Lifetime
from ragline.metrics import Metrics
from ragline.teams.connector import ConnectorClient, ConnectorError, TokenSource
from teams_fakes import FakeTeams

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def connector(**options: Any) -> AsyncIterator[tuple[ConnectorClient, FakeTeams]]:
    options.setdefault("min_interval", 0.0)
    async with FakeTeams.running(**options) as teams, httpx.AsyncClient() as http:
        tokens = TokenSource(
            http,
            token_url=teams.token_url,
            app_id=teams.app_id,
            password=teams.app_password,
            scope="https://api.botframework.com/.default",
        )
        client = ConnectorClient(http, tokens, Metrics(), wait_initial=0.05, wait_max=0.2)
        yield client, teams


def message(text: str) -> dict[str, Any]:
    return {"type": "message", "text": text}


async def reply(
    client: ConnectorClient, teams: FakeTeams, text: str, lifetime: Lifetime | None = None
) -> str | None:
    conversation = teams.default_conversation("groupChat")
    owner = lifetime if lifetime is not None else Lifetime.root("test")
    return await client.reply(teams.service_url, conversation, "1", message(text), owner)


async def test_the_token_is_cached_and_concurrent_callers_share_one_refresh() -> None:
    async with connector(token_delay=0.3) as (client, teams):
        async with anyio.create_task_group() as tg:
            for i in range(5):
                tg.start_soon(reply, client, teams, f"m{i}")
        await reply(client, teams, "later")
        assert len(teams.token_requests) == 1
        assert len(teams.messages(teams.default_conversation("groupChat"))) == 6


async def test_the_token_is_refreshed_before_it_expires() -> None:
    # A 4 s token is good for half its life here (the margin is min(300 s, half)).
    async with connector(token_lifetime=4) as (client, teams):
        await reply(client, teams, "one")
        await reply(client, teams, "two")
        assert len(teams.token_requests) == 1
        await anyio.sleep(2.1)
        await reply(client, teams, "three")
        assert len(teams.token_requests) == 2


async def test_a_refused_token_is_replaced_and_the_request_repeated() -> None:
    async with connector() as (client, teams):
        await reply(client, teams, "one")
        teams.expire_tokens()
        await reply(client, teams, "two")
        statuses = [call.status for call in teams.calls]
        assert statuses == [201, 401, 201]
        assert len(teams.token_requests) == 2


@pytest.mark.parametrize("status", [429, 412])
async def test_rejections_are_retried_with_backoff(status: int) -> None:
    async with connector() as (client, teams):
        teams.fail_next(status, times=2)
        assert await reply(client, teams, "hello") is not None
        assert [call.status for call in teams.calls] == [status, status, 201]
        assert len(teams.messages(teams.default_conversation("groupChat"))) == 1


async def test_retry_after_is_honoured() -> None:
    async with connector() as (client, teams):
        teams.fail_next(429, retry_after=1)
        await reply(client, teams, "hello")
        first, second = teams.calls
        assert second.arrived - first.arrived >= 0.95


@pytest.mark.parametrize("status", [502, 504])
async def test_a_post_that_may_have_been_applied_is_not_repeated(status: int) -> None:
    async with connector() as (client, teams):
        teams.fail_next(status, applied=True)
        with pytest.raises(ConnectorError) as raised:
            await reply(client, teams, "hello")
        assert raised.value.uncertain
        assert len(teams.calls) == 1  # not repeated
        assert len(teams.messages(teams.default_conversation("groupChat"))) == 1


@pytest.mark.parametrize("status", [502, 504])
async def test_a_repeatable_request_is_retried_after_a_gateway_error(status: int) -> None:
    async with connector() as (client, teams):
        conversation = teams.default_conversation("groupChat")
        lifetime = Lifetime.root("test")
        posted = await reply(client, teams, "draft")
        assert posted is not None
        teams.fail_next(status, applied=True)
        await client.update(teams.service_url, conversation, posted, message("final"), lifetime)
        assert [call.status for call in teams.calls] == [201, status, 200]
        [shown] = teams.messages(conversation)
        assert shown["text"] == "final"


async def test_an_unreachable_connector_is_retried_then_reported() -> None:
    async with httpx.AsyncClient() as http:
        client = ConnectorClient(http, None, Metrics(), attempts=3, wait_initial=0.01)
        began = time.monotonic()
        with pytest.raises(ConnectorError) as raised:
            await client.send("http://127.0.0.1:9/", "a:1", message("x"), Lifetime.root("test"))
        assert raised.value.not_sent
        assert time.monotonic() - began < 10


async def test_conversation_ids_are_escaped_in_the_path() -> None:
    async with connector() as (client, teams):
        channel = teams.default_conversation("channel")  # has ':', '@' and ';'
        await client.send(teams.service_url, channel, message("hi"), Lifetime.root("test"))
        assert teams.calls[0].status == 201
        assert teams.calls[0].conversation_id == channel


async def test_a_cancelled_lifetime_sends_nothing() -> None:
    async with connector() as (client, teams):
        lifetime = Lifetime.root("test")
        with lifetime:
            lifetime.cancel(Cause.EXPLICIT)
            with pytest.raises(anyio.get_cancelled_exc_class()):
                await reply(client, teams, "never", lifetime)
        assert teams.calls == []
