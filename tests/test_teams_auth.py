"""The webhook's JWT check against the fake key service, over real HTTP: every failure is
a 401 and nothing is processed."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest

from conftest import Running, bot_settings, eventually, serve, settings_for, upstream_running
from ragline import Settings
from ragline.lifetime import Lifetime
from ragline.teams.activity import Activity
from ragline.teams.auth import BotAuthenticator
from teams_fakes import FakeTeams
from upstream import Behavior, FakeUpstream

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def running_bot(**settings: Any) -> AsyncIterator[tuple[Running, FakeTeams, FakeUpstream]]:
    upstream = FakeUpstream(lambda body: Behavior(tokens=2))
    async with upstream_running(upstream), FakeTeams.running() as teams:
        async with serve(bot_settings(upstream, teams, **settings)) as running:
            yield running, teams, upstream


def bad_tokens(teams: FakeTeams) -> dict[str, str | None]:
    return {
        "bad signature": teams.token_for(key="rogue"),
        "wrong audience": teams.token_for(audience="someone-else"),
        "wrong issuer": teams.token_for(issuer="https://evil.example"),
        "expired": teams.token_for(expires_in=-600),  # beyond the 300 s of skew
        "not yet valid": teams.token_for(not_before_offset=900),
        "serviceurl mismatch": teams.token_for("https://evil.example/amer/"),
        "serviceurl missing": teams.token_for(extra_claims={"serviceurl": None}),
        "channel not endorsed": teams.token_for(key="unendorsed"),
        "unknown key": teams.token_for(kid="no-such-key"),
        "garbage": "not.a.jwt",
        "no header": None,
    }


async def test_every_jwt_failure_is_a_401_and_nothing_is_processed() -> None:
    async with running_bot() as (running, teams, upstream):
        url = f"{running.url}/api/messages"
        for case, token in bad_tokens(teams).items():
            activity = teams.activity(f"case {case}")
            delivery = await teams.deliver(url, activity, token=token)
            assert delivery.status == 401, case
            assert delivery.body["error"]["code"] == "unauthorized", case
        good = teams.activity("the real thing")
        assert (await teams.deliver(url, good)).status == 202
        await teams.wait_for(lambda: teams.messages(good["conversation"]["id"]), timeout=30)
        # Only the authenticated activity ran: one model call, one conversation touched.
        assert [call.query for call in upstream.calls] == ["the real thing"]
        assert {call.conversation_id for call in teams.calls} == {good["conversation"]["id"]}
        await eventually(lambda: running.metric("ragline_bot_turns_total") == 1)


async def test_clock_skew_is_tolerated() -> None:
    async with running_bot() as (running, teams, _):
        token = teams.token_for(expires_in=-60)  # expired a minute ago: within 5 minutes
        delivery = await teams.deliver(f"{running.url}/api/messages", teams.activity(), token=token)
        assert delivery.status == 202


async def test_a_trailing_slash_on_the_service_url_does_not_matter() -> None:
    async with running_bot() as (running, teams, _):
        token = teams.token_for(teams.service_url.rstrip("/"))
        delivery = await teams.deliver(f"{running.url}/api/messages", teams.activity(), token=token)
        assert delivery.status == 202


async def test_api_keys_do_not_apply_to_the_webhook() -> None:
    async with running_bot(api_keys="k1") as (running, teams, _):
        delivery = await teams.deliver(f"{running.url}/api/messages", teams.activity())
        assert delivery.status == 202  # the Bot Framework token is its credential
        async with httpx.AsyncClient() as http:
            denied = await http.post(f"{running.url}/api/v1/inference/chat", json={"query": "x"})
        assert denied.status_code == 401


async def test_a_rotated_key_is_fetched_when_first_seen() -> None:
    async with FakeTeams.running() as teams, httpx.AsyncClient() as http:
        auth = BotAuthenticator(
            http,
            app_id=teams.app_id,
            metadata_url=teams.openid_url,
            issuer=teams.issuer,
            refetch_unknown_after=0.0,
        )
        activity = Activity.model_validate(teams.activity())
        lifetime = Lifetime.root("test")
        await auth.verify(f"Bearer {teams.token_for()}", activity, lifetime)
        teams.rotate_keys(drop_old=True)
        claims = await auth.verify(f"Bearer {teams.token_for()}", activity, lifetime)
        assert claims["aud"] == teams.app_id
        assert teams.jwks_requests == 2


async def test_auth_off_accepts_unauthenticated_activities_and_sends_no_credentials() -> None:
    upstream = FakeUpstream(lambda body: Behavior(tokens=2))
    async with upstream_running(upstream), FakeTeams.running(require_token=False) as teams:
        async with serve(settings_for(upstream, bot_auth="off")) as running:
            activity = teams.activity("hello", kind="groupChat")
            delivery = await teams.deliver(f"{running.url}/api/messages", activity, token=None)
            assert delivery.status == 202
            conversation = activity["conversation"]["id"]
            await teams.wait_for(lambda: teams.messages(conversation), timeout=30)
        assert teams.token_requests == []


def test_auth_off_refuses_a_non_loopback_address() -> None:
    with pytest.raises(ValueError, match="loopback"):
        Settings(bot_auth="off").require_safe_bind("0.0.0.0")
    Settings(bot_auth="off").require_safe_bind("127.0.0.1")
    result = subprocess.run(
        [sys.executable, "-m", "ragline", "serve", "--host", "0.0.0.0", "--port", "0"],
        env={"RAGLINE_BOT_AUTH": "off", "RAGLINE_API_KEYS": "k", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "RAGLINE_BOT_AUTH=off" in result.stderr
    assert "Traceback" not in result.stderr


async def test_a_bot_without_its_password_does_not_start() -> None:
    with pytest.raises(ValueError, match="RAGLINE_BOT_APP_PASSWORD"):
        from ragline import create_app

        create_app(Settings(bot_app_id="x", llm_provider="openai", retrieval=False))
    await anyio.lowlevel.checkpoint()
