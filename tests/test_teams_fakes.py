"""The fake Teams itself, over real HTTP: tokens, connector rules, streaming and JWTs.

Across the test helpers ``teams_fakes`` and its three faces, ``teams_identity``,
``teams_connector`` and ``teams_sender``."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import anyio
import httpx
import jwt
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from teams_fakes import (
    CANCELLED_BY_USER,
    EXCEEDED_TIME,
    NOT_CUMULATIVE,
    SCOPE,
    FakeTeams,
    serve_app,
)

pytestmark = pytest.mark.anyio

GAP = 0.06  # just over the self-tests' min_interval


class Connector:
    """A bare Bot Connector client for one conversation, holding a token."""

    def __init__(self, http: httpx.AsyncClient, teams: FakeTeams, conversation_id: str) -> None:
        self.http = http
        self.teams = teams
        self.conversation_id = conversation_id

    def url(self, activity_id: str | None = None) -> str:
        url = f"{self.teams.service_url}v3/conversations/{quote(self.conversation_id, safe='')}"
        url += "/activities"
        return f"{url}/{activity_id}" if activity_id else url

    async def post(self, body: dict[str, Any], activity_id: str | None = None) -> httpx.Response:
        return await self.http.post(self.url(activity_id), json=body)

    async def put(self, activity_id: str, body: dict[str, Any]) -> httpx.Response:
        return await self.http.put(self.url(activity_id), json=body)

    async def chunk(
        self, text: str, seq: int, stream_id: str | None = None, kind: str = "streaming"
    ) -> httpx.Response:
        info: dict[str, Any] = {"type": "streaminfo", "streamType": kind, "streamSequence": seq}
        if stream_id is not None:
            info["streamId"] = stream_id
        return await self.post({"type": "typing", "text": text, "entities": [info]})

    async def final(self, text: str, stream_id: str) -> httpx.Response:
        info = {"type": "streaminfo", "streamId": stream_id, "streamType": "final"}
        return await self.post({"type": "message", "text": text, "entities": [info]})


async def get_token(http: httpx.AsyncClient, teams: FakeTeams, **form: str) -> httpx.Response:
    fields = {
        "grant_type": "client_credentials",
        "client_id": teams.app_id,
        "client_secret": teams.app_password,
        "scope": SCOPE,
    }
    return await http.post(teams.token_url, data=fields | form)


@asynccontextmanager
async def connector(
    conversation_id: str = "a:1Xyz@x;y", kind: str = "personal", **options: Any
) -> AsyncIterator[Connector]:
    options.setdefault("min_interval", 0.05)
    async with FakeTeams.running(**options) as teams, httpx.AsyncClient() as http:
        teams.conversation(conversation_id, kind)  # type: ignore[arg-type]
        token = (await get_token(http, teams)).json()["access_token"]
        http.headers["Authorization"] = f"Bearer {token}"
        yield Connector(http, teams, conversation_id)


async def test_token_endpoint_issues_and_refuses() -> None:
    async with (
        FakeTeams.running(token_lifetime=600, min_interval=0.05) as teams,
        httpx.AsyncClient() as http,
    ):
        good = await get_token(http, teams)
        assert good.status_code == 200
        body = good.json()
        assert body["token_type"] == "Bearer"
        assert body["expires_in"] == 600
        assert (await get_token(http, teams, client_secret="nope")).json()["error"] == (
            "invalid_client"
        )
        assert (await get_token(http, teams, client_secret="nope")).status_code == 401
        assert (await get_token(http, teams, client_id="other")).status_code == 400
        assert (await get_token(http, teams, scope="https://graph")).status_code == 400
        assert (await get_token(http, teams, grant_type="password")).status_code == 400
        assert len(teams.token_requests) == 6
        assert teams.tokens_issued == [body["access_token"]]

        conversation = f"{teams.service_url}v3/conversations/a%3A1x/activities"
        refused = await http.post(conversation, json={"type": "message", "text": "x"})
        assert refused.status_code == 401
        headers = {"Authorization": f"Bearer {body['access_token']}"}
        sent = await http.post(conversation, json={"type": "message", "text": "x"}, headers=headers)
        assert sent.status_code == 201
        teams.expire_tokens()
        await anyio.sleep(GAP)
        late = await http.post(conversation, json={"type": "message", "text": "y"}, headers=headers)
        assert late.status_code == 401
        assert [m["text"] for m in teams.messages("a:1x")] == ["x"]


async def test_a_full_stream_and_plain_messages() -> None:
    async with connector() as c:
        first = await c.chunk("Searching…", 1, kind="informative")
        assert first.status_code == 201
        stream_id = first.json()["id"]
        await anyio.sleep(GAP)
        assert (await c.chunk("Rag", 2, stream_id)).status_code == 202
        await anyio.sleep(GAP)
        second = await c.chunk("Ragline is", 3, stream_id)
        assert (second.status_code, second.json()) == (202, {"id": stream_id})
        await anyio.sleep(GAP)
        final = await c.final("Ragline is a RAG service.", stream_id)
        assert (final.status_code, final.json()) == (200, {"id": stream_id})
        await anyio.sleep(GAP)
        typing = await c.post({"type": "typing"})
        assert (typing.status_code, typing.json()) == (200, {})
        await anyio.sleep(GAP)
        reply = await c.post({"type": "message", "text": "more"}, activity_id="1700000000000")
        assert reply.status_code == 201
        await anyio.sleep(GAP)
        assert (await c.put(reply.json()["id"], {"type": "message", "text": "edited"})).is_success
        await anyio.sleep(GAP)
        assert (await c.put("404", {"type": "message", "text": "x"})).status_code == 404

        stream = c.teams.streams[stream_id]
        assert [(seq, text) for seq, text, _ in stream.chunks] == [
            (1, "Searching…"),
            (2, "Rag"),
            (3, "Ragline is"),
        ]
        assert stream.informative_text == "Searching…"
        assert stream.finished
        assert stream.final_text == "Ragline is a RAG service."
        messages = c.teams.messages(c.conversation_id)
        assert [(m["id"], m["text"]) for m in messages] == [
            (stream_id, "Ragline is a RAG service."),
            (reply.json()["id"], "edited"),
        ]
        assert c.teams.calls[-2].activity_id_in_path == reply.json()["id"]
        assert c.teams.calls[0].conversation_id == c.conversation_id
        assert c.teams.violations == []

        await anyio.sleep(GAP)
        again = await c.chunk("Ragline is a", 4, stream_id)
        assert again.status_code == 403
        assert again.json()["error"]["code"] == "ContentStreamNotAllowed"


async def test_requests_too_close_together_are_throttled() -> None:
    async with connector(min_interval=0.5) as c:
        assert (await c.post({"type": "message", "text": "a"})).status_code == 201
        throttled = await c.post({"type": "message", "text": "b"})
        assert throttled.status_code == 429
        assert throttled.headers["Retry-After"] == "1"
        assert throttled.json()["error"]["code"] == "Throttled"
        assert len(c.teams.violations) == 1
        assert c.teams.violations[0].gap < 0.5
        assert [m["text"] for m in c.teams.messages(c.conversation_id)] == ["a"]


async def test_sequence_and_cumulative_rules() -> None:
    async with connector() as c:
        assert (await c.chunk("Hello", 2)).status_code == 400  # first chunk must be seq 1
        await anyio.sleep(GAP)
        stream_id = (await c.chunk("Hello", 1)).json()["id"]
        await anyio.sleep(GAP)
        skipped = await c.chunk("Hello there", 3, stream_id)
        assert skipped.status_code == 400
        await anyio.sleep(GAP)
        rewritten = await c.chunk("Goodbye", 2, stream_id)
        assert rewritten.status_code == 400
        assert rewritten.json()["error"] == {"code": "BadRequest", "message": NOT_CUMULATIVE}
        await anyio.sleep(GAP)
        assert (await c.chunk("Hello there", 2, stream_id)).status_code == 202
        await anyio.sleep(GAP)
        assert (await c.chunk("Hello there", 2, "nope")).status_code == 400


async def test_user_stop_and_stream_limit() -> None:
    async with connector(stream_limit=0.3) as c:
        c.teams.stop_stream_after(2)
        stream_id = (await c.chunk("A", 1)).json()["id"]
        await anyio.sleep(GAP)
        assert (await c.chunk("AB", 2, stream_id)).status_code == 202
        await anyio.sleep(GAP)
        stopped = await c.chunk("ABC", 3, stream_id)
        assert stopped.status_code == 403
        assert stopped.json()["error"]["message"] == CANCELLED_BY_USER
        assert c.teams.user_stopped.is_set()
        stream = c.teams.streams[stream_id]
        assert stream.stopped_by_user
        assert stream.stopped_at is not None
        await anyio.sleep(GAP)
        assert (await c.final("ABC", stream_id)).status_code == 403
        assert [m["text"] for m in c.teams.messages(c.conversation_id)] == ["AB"]

        await anyio.sleep(GAP)
        slow_id = (await c.chunk("X", 1)).json()["id"]
        await anyio.sleep(0.35)
        late = await c.chunk("XY", 2, slow_id)
        assert late.status_code == 403
        assert late.json()["error"]["message"] == EXCEEDED_TIME
        await anyio.sleep(GAP)
        assert (await c.put(slow_id, {"type": "message", "text": "XYZ"})).status_code == 200
        assert c.teams.streams[slow_id].updated_text == "XYZ"
        assert [m["text"] for m in c.teams.messages(c.conversation_id)] == ["AB", "XYZ"]


async def test_streaming_is_refused_in_group_chats() -> None:
    async with connector("19:abc@thread.v2", kind="groupChat") as c:
        refused = await c.chunk("Hi", 1)
        assert refused.status_code == 405
        await anyio.sleep(GAP)
        assert (await c.post({"type": "message", "text": "Hi"})).status_code == 201


async def test_fail_next_applied_still_delivers() -> None:
    async with connector() as c:
        c.teams.fail_next(504, applied=True)
        failed = await c.post({"type": "message", "text": "once"})
        assert failed.status_code == 504
        assert failed.json()["error"]["code"] == "GatewayTimeout"
        await anyio.sleep(GAP)
        c.teams.fail_next(429, retry_after=2, match=lambda call: call.body.get("text") == "x")
        assert (await c.post({"type": "message", "text": "once"})).status_code == 201
        await anyio.sleep(GAP)
        throttled = await c.post({"type": "message", "text": "x"})
        assert (throttled.status_code, throttled.headers["Retry-After"]) == (429, "2")
        assert [m["text"] for m in c.teams.messages(c.conversation_id)] == ["once", "once"]
        assert [(call.status, call.applied) for call in c.teams.calls] == [
            (504, True),
            (201, True),
            (429, False),
        ]


async def test_unescaped_conversation_id_is_refused() -> None:
    async with connector() as c:
        raw = f"{c.teams.service_url}v3/conversations/{c.conversation_id}/activities"
        assert (await c.http.post(raw, json={"type": "message", "text": "x"})).status_code == 400


async def test_token_for_verifies_against_the_served_keys() -> None:
    async with FakeTeams.running() as teams, httpx.AsyncClient() as http:
        metadata = (await http.get(teams.openid_url)).json()
        assert metadata["issuer"] == teams.issuer == "https://api.botframework.com"
        assert metadata["id_token_signing_alg_values_supported"] == ["RS256"]
        keys = (await http.get(metadata["jwks_uri"])).json()["keys"]
        by_kid = {key["kid"]: key for key in keys}

        def verify(token: str) -> dict[str, Any]:
            key = by_kid[jwt.get_unverified_header(token)["kid"]]
            claims: dict[str, Any] = jwt.decode(
                token,
                jwt.PyJWK(key).key,
                algorithms=["RS256"],
                audience=teams.app_id,
                issuer=teams.issuer,
            )
            claims["endorsements"] = key["endorsements"]
            return claims

        good = verify(teams.token_for())
        assert good["serviceurl"] == teams.service_url
        assert "msteams" in good["endorsements"]
        assert "msteams" not in verify(teams.token_for(key="unendorsed"))["endorsements"]
        with pytest.raises(jwt.InvalidSignatureError):
            verify(teams.token_for(key="rogue"))
        with pytest.raises(jwt.ExpiredSignatureError):
            verify(teams.token_for(expires_in=-600))
        with pytest.raises(jwt.InvalidAudienceError):
            verify(teams.token_for(audience="someone-else"))


async def test_deliver_redelivers_an_unanswered_activity() -> None:
    seen: list[tuple[str, str]] = []

    async def webhook(request: Request) -> Response:
        activity = json.loads(await request.body())
        seen.append((activity["id"], request.headers.get("authorization", "")))
        if len(seen) == 1:
            await anyio.sleep(0.4)
        return JSONResponse({}, status_code=200)

    app = Starlette(routes=[Route("/api/messages", webhook, methods=["POST"])])
    async with FakeTeams.running() as teams, serve_app(app) as bot:
        activity = teams.activity("hello", kind="groupChat")
        assert activity["text"] == "<at>ragline</at> hello"
        assert activity["conversation"]["isGroup"] is True
        assert teams.kind_of(activity["conversation"]["id"]) == "groupChat"
        started = time.monotonic()
        delivery = await teams.deliver(
            f"{bot}/api/messages", activity, redeliver_unanswered_after=0.1
        )
        assert delivery.status == 200
        assert delivery.elapsed_seconds >= 0.4
        assert delivery.redelivery is not None
        assert delivery.redelivery.status == 200
        assert [r.activity_id for r in teams.redeliveries] == [activity["id"]]
        assert [s[0] for s in seen] == [activity["id"], activity["id"]]
        assert time.monotonic() - started < 2

        quick = await teams.deliver(f"{bot}/api/messages", teams.activity("again"), token=None)
        assert quick.redelivery is None
        assert seen[-1][1] == ""
