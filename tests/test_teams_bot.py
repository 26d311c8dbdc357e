"""The Teams channel end to end: ragline on uvicorn, the fake Teams (webhook sender, Bot
Connector, token and key services) and the fake model upstream, all over real sockets."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from opentelemetry.trace import StatusCode

from conftest import LogCapture, Running, bot_settings, eventually, serve, upstream_running
from ragline.errors import Hidden
from ragline.teams import InvokeResponse, TurnContext
from ragline.teams.replies import NO_ACCESS
from teams_fakes import ConversationKind, FakeTeams, Stream
from test_serve import GRACE, free_port, server_process, sigterm
from upstream import Behavior, FakeUpstream

pytestmark = pytest.mark.anyio


@dataclass
class Bot:
    running: Running
    teams: FakeTeams
    upstream: FakeUpstream

    @property
    def url(self) -> str:
        return f"{self.running.url}/api/messages"


@asynccontextmanager
async def bot(
    behave: Callable[[dict[str, Any]], Behavior] | None = None,
    teams_options: dict[str, Any] | None = None,
    **settings: Any,
) -> AsyncIterator[Bot]:
    upstream = FakeUpstream(behave)
    async with upstream_running(upstream), FakeTeams.running(**(teams_options or {})) as teams:
        async with serve(bot_settings(upstream, teams, **settings)) as running:
            yield Bot(running, teams, upstream)


async def stream_where(b: Bot, holds: Callable[[Stream], bool], timeout: float) -> Stream:
    """The first stream for which ``holds`` is true, once there is one."""
    return await b.teams.wait_for(
        lambda: next((s for s in b.teams.streams.values() if holds(s)), None), timeout=timeout
    )


def tokens(count: int) -> str:
    return "".join(f"t{i} " for i in range(count))


async def test_the_webhook_is_answered_at_once_while_a_20s_turn_streams_to_the_end(
    logs: LogCapture,
) -> None:
    # 20 tokens, one a second: the turn outlives its webhook request by 20 s. Teams
    # redelivers the activity 15 s in (as it does when it missed the answer): one reply.
    async with bot(lambda body: Behavior(tokens=20, interval=1.0)) as b:
        activity = b.teams.activity("what is ragline?")
        conversation = activity["conversation"]["id"]
        delivery = await b.teams.deliver(b.url, activity)
        acked_at = time.monotonic()
        assert delivery.status == 202
        assert delivery.elapsed_seconds < 1.0, delivery.elapsed_seconds
        print(f"webhook answered in {delivery.elapsed_seconds * 1000:.1f} ms")
        await anyio.sleep(15.0)  # the scenario's clock: Teams' redelivery comes at 15 s
        again = await b.teams.redeliver(b.url, activity)
        assert again.status == 202
        stream = await stream_where(b, lambda s: bool(s.finished), timeout=60)
        finished_after = time.monotonic() - acked_at
        print(f"turn finished {finished_after:.1f}s after the ack, {len(stream.chunks)} chunks")

        assert finished_after > 18.0  # the turn really ran for ~20 s after the ack
        assert len(b.upstream.calls) == 1  # the redelivery was not processed again
        assert b.upstream.calls[0].finished  # nothing cut the generation short
        assert stream.final_text is not None
        assert stream.final_text.startswith(tokens(20).strip())
        messages = b.teams.messages(conversation)
        assert len(messages) == 1  # exactly one reply
        assert not b.teams.violations  # never faster than one request per second
        # Tokens were coalesced, and the chunks grew in sequence.
        sequences = [seq for seq, _, _ in stream.chunks]
        assert sequences == list(range(1, len(sequences) + 1))
        assert 5 <= len(sequences) <= 22
        assert b.running.metric("ragline_bot_duplicate_activities_total") == 1
        await eventually(lambda: b.running.metric("ragline_bot_turns_total") == 1)
        assert b.running.metric("ragline_bot_turns_total", outcome="completed") == 1
        assert not logs.at_least(logging.ERROR)


async def test_a_redelivery_is_deduplicated_per_conversation() -> None:
    async with bot(lambda body: Behavior(tokens=3)) as b:
        first = b.teams.activity("one", kind="groupChat")
        await b.teams.deliver(b.url, first)
        await b.teams.redeliver(b.url, first)
        # Activity ids are unique per conversation only: the same id elsewhere is new.
        other = b.teams.activity(
            "two", kind="groupChat", conversation_id="19:other@thread.v2", id=first["id"]
        )
        await b.teams.deliver(b.url, other)
        for conversation in (first["conversation"]["id"], "19:other@thread.v2"):
            await b.teams.wait_for(lambda c=conversation: b.teams.messages(c), timeout=30)
        await anyio.sleep(0.5)  # a duplicate turn, had it run, would have replied by now
        assert len(b.teams.messages(first["conversation"]["id"])) == 1
        assert len(b.teams.messages("19:other@thread.v2")) == 1
        assert len(b.upstream.calls) == 2


async def test_a_turn_past_its_timeout_is_a_warning_and_no_exception(logs: LogCapture) -> None:
    async with bot(lambda body: Behavior(hold_headers=True), bot_process_activity_timeout=1.0) as b:
        activity = b.teams.activity("a slow one")
        delivery = await b.teams.deliver(b.url, activity)
        assert delivery.status == 202
        with anyio.fail_after(30):
            warning = await logs.wait_for(lambda r: "timed out" in r.getMessage())
        assert warning.levelno == logging.WARNING
        assert warning.activity_id == activity["id"]  # type: ignore[attr-defined]
        assert warning.timeout == 1.0  # type: ignore[attr-defined]
        assert not logs.at_least(logging.ERROR)  # not an error, no traceback
        call = b.upstream.calls[0]
        with anyio.fail_after(10):
            await call.closed.wait()  # the model call was stopped with the turn
        # The user hears why: the stream ends with a note.
        stream = await stream_where(b, lambda s: bool(s.finished), timeout=10)
        assert stream.final_text is not None
        assert "time limit" in stream.final_text
        await eventually(lambda: b.running.metric("ragline_bot_turns_total") == 1)
        assert b.running.metric("ragline_bot_turns_total", outcome="timeout") == 1
        span = b.running.span("bot.turn message")
        assert span.status.status_code is StatusCode.ERROR
        assert span.attributes is not None
        assert span.attributes["error.type"] == "timeout"
        webhook = b.running.span("POST /api/messages")
        assert span.parent is not None
        assert span.parent.span_id == webhook.context.span_id  # the turn keeps its trace
        async with httpx.AsyncClient() as http:  # and the app carries on
            assert (await http.get(f"{b.running.url}/healthz")).status_code == 200


async def test_debug_mode_has_no_turn_timeout() -> None:
    async with bot(
        lambda body: Behavior(tokens=4, interval=0.5),
        bot_process_activity_timeout=0.5,
        bot_debug=True,
    ) as b:
        activity = b.teams.activity("take your time")
        await b.teams.deliver(b.url, activity)
        stream = await stream_where(b, lambda s: bool(s.finished), timeout=30)
        assert stream.final_text is not None
        assert stream.final_text.startswith(tokens(4).strip())
        await eventually(lambda: b.running.metric("ragline_bot_turns_total") == 1)
        assert b.running.metric("ragline_bot_turns_total", outcome="completed") == 1


async def test_a_user_stop_halts_the_generator_at_once() -> None:
    async with bot(lambda body: Behavior(tokens=100_000, interval=0.02)) as b:
        b.teams.stop_stream_after(3)  # the informative update and two chunks, then stop
        activity = b.teams.activity("go on and on")
        await b.teams.deliver(b.url, activity)
        with anyio.fail_after(30):
            await b.teams.user_stopped.wait()
            call = b.upstream.calls[0]
            await call.closed.wait()
        stream = next(s for s in b.teams.streams.values() if s.stopped_by_user)
        assert stream.stopped_at is not None
        assert call.tokens_after(stream.stopped_at) <= 1
        await anyio.sleep(1.5)  # longer than the pacing: anything more would have been sent
        after = [c for c in b.teams.calls if c.arrived > stream.stopped_at]
        assert after == []  # no final message, no more chunks
        span = b.running.span("chat fake-model")
        assert span.attributes is not None
        assert span.attributes["ragline.cancel.reason"] == "explicit"


async def test_group_chats_get_one_message_and_no_stream() -> None:
    async with bot(lambda body: Behavior(tokens=5, interval=0.05)) as b:
        activity = b.teams.activity("summarise", kind="groupChat")
        await b.teams.deliver(b.url, activity)
        conversation = activity["conversation"]["id"]
        messages = await b.teams.wait_for(lambda: b.teams.messages(conversation), timeout=30)
        assert len(messages) == 1
        assert messages[0]["text"].startswith(tokens(5).strip())
        assert messages[0]["replyToId"] == activity["id"]
        assert not b.teams.streams
        assert "<at>" not in b.upstream.calls[0].query  # the mention is not the question
        assert not b.teams.violations


async def test_teams_streaming_time_limit_finishes_with_an_update() -> None:
    async with bot(
        lambda body: Behavior(tokens=8, interval=0.5), teams_options={"stream_limit": 1.5}
    ) as b:
        activity = b.teams.activity("long answer")
        await b.teams.deliver(b.url, activity)
        conversation = activity["conversation"]["id"]
        stream = await stream_where(b, lambda s: bool(s.updated_text), timeout=30)
        assert stream.expired
        assert stream.updated_text is not None
        assert stream.updated_text.startswith(tokens(8).strip())
        assert len(b.teams.messages(conversation)) == 1


async def test_a_long_stream_is_closed_before_the_limit_and_completed_by_update() -> None:
    async with bot(lambda body: Behavior(tokens=8, interval=0.5), bot_stream_limit=1.5) as b:
        activity = b.teams.activity("long answer")
        await b.teams.deliver(b.url, activity)
        stream = await stream_where(b, lambda s: bool(s.updated_text), timeout=30)
        assert stream.finished
        assert not stream.expired
        assert stream.final_text is not None
        assert stream.updated_text is not None
        assert stream.updated_text.startswith(tokens(8).strip())
        assert len(stream.final_text) < len(stream.updated_text)
        assert len(b.teams.messages(activity["conversation"]["id"])) == 1


async def test_a_final_message_that_may_have_been_applied_is_not_posted_again() -> None:
    async with bot(lambda body: Behavior(tokens=3)) as b:
        b.teams.fail_next(
            502,
            applied=True,
            match=lambda c: (c.streaminfo or {}).get("streamType") == "final",
        )
        activity = b.teams.activity("hello")
        await b.teams.deliver(b.url, activity)
        conversation = activity["conversation"]["id"]
        stream = await stream_where(b, lambda s: bool(s.updated_text), timeout=30)
        finals = [c for c in b.teams.calls if (c.streaminfo or {}).get("streamType") == "final"]
        assert len(finals) == 1  # never repeated blindly: the update finished it instead
        assert stream.updated_text is not None
        assert stream.updated_text.startswith("t0 t1 t2")
        assert len(b.teams.messages(conversation)) == 1


async def test_throttled_requests_are_retried_after_retry_after() -> None:
    async with bot(lambda body: Behavior(tokens=2)) as b:
        b.teams.fail_next(429, retry_after=1, match=lambda c: c.activity_type == "message")
        activity = b.teams.activity("hi", kind="groupChat")
        await b.teams.deliver(b.url, activity)
        conversation = activity["conversation"]["id"]
        messages = await b.teams.wait_for(lambda: b.teams.messages(conversation), timeout=30)
        assert len(messages) == 1
        posts = [c for c in b.teams.calls_in(conversation) if c.activity_type == "message"]
        assert [c.status for c in posts] == [429, 201]
        assert posts[1].arrived - posts[0].arrived >= 0.95


async def test_one_conversation_in_order_others_side_by_side() -> None:
    async with bot(lambda body: Behavior(tokens=3, interval=0.3)) as b:
        here = [b.teams.activity(f"q{i}", kind="groupChat") for i in range(3)]
        there = b.teams.activity("elsewhere", kind="groupChat", conversation_id="19:b@thread.v2")
        for activity in here:
            await b.teams.deliver(b.url, activity)
        await b.teams.deliver(b.url, there)
        conversation = here[0]["conversation"]["id"]
        await b.teams.wait_for(lambda: len(b.teams.messages(conversation)) == 3, timeout=60)
        await b.teams.wait_for(lambda: b.teams.messages("19:b@thread.v2"), timeout=60)
        calls = {call.query.split()[-1]: call for call in b.upstream.calls}
        order = [calls[f"q{i}"] for i in range(3)]
        for before, after in itertools.pairwise(order):
            assert before.token_times[-1] <= after.received_at  # one after another
        assert calls["elsewhere"].received_at < order[0].token_times[-1]  # side by side
        replies = [m["replyToId"] for m in b.teams.messages(conversation)]
        assert replies == [a["id"] for a in here]


async def test_middleware_and_handlers(logs: LogCapture) -> None:
    async with bot(lambda body: Behavior(tokens=2)) as b:
        runtime = b.running.server.runtime
        assert runtime.teams is not None
        app = runtime.teams.bot
        seen: list[str] = []

        @app.use
        async def record(ctx: TurnContext, next_: Callable[[], Any]) -> None:
            seen.append(ctx.activity.type)
            await next_()

        @app.use
        async def block_secrets(ctx: TurnContext, next_: Callable[[], Any]) -> None:
            if "secret" in (ctx.activity.text or ""):
                await ctx.send("I can't help with that.")
                return  # short-circuit: the handler never runs
            await next_()

        @app.on("invoke")
        async def on_invoke(ctx: TurnContext) -> InvokeResponse:
            return InvokeResponse(status=200, body={"echo": ctx.activity.value})

        blocked = b.teams.activity("tell me the secret", kind="groupChat")
        await b.teams.deliver(b.url, blocked)
        conversation = blocked["conversation"]["id"]
        messages = await b.teams.wait_for(lambda: b.teams.messages(conversation), timeout=30)
        assert messages[0]["text"] == "I can't help with that."
        assert b.upstream.calls == []

        invoke = b.teams.activity(
            "", activity_type="invoke", name="adaptiveCard/action", value={"n": 1}
        )
        answer = await b.teams.deliver(b.url, invoke)
        assert answer.status == 200
        assert answer.body == {"echo": {"n": 1}}
        assert seen == ["message", "invoke"]


async def test_unhandled_invokes_answer_501_and_new_conversations_are_greeted() -> None:
    async with bot(lambda body: Behavior(tokens=2)) as b:
        invoke = b.teams.activity("", activity_type="invoke", name="composeExtension/query")
        answer = await b.teams.deliver(b.url, invoke)
        assert answer.status == 501
        added = b.teams.activity(
            "",
            activity_type="conversationUpdate",
            membersAdded=[{"id": f"28:{b.teams.app_id}"}],
        )
        await b.teams.deliver(b.url, added)
        conversation = added["conversation"]["id"]
        messages = await b.teams.wait_for(lambda: b.teams.messages(conversation), timeout=30)
        assert "Ask me" in messages[0]["text"]


async def test_bad_activities_get_4xx_and_nothing_runs() -> None:
    async with bot(lambda body: Behavior(tokens=2)) as b:
        token = b.teams.token_for()
        headers = {"authorization": f"Bearer {token}"}
        async with httpx.AsyncClient() as http:
            malformed = await http.post(b.url, content=b"{nope", headers=headers)
            missing = await http.post(b.url, json={"type": "message"}, headers=headers)
        assert malformed.status_code == 400
        assert missing.status_code == 422
        assert missing.json()["error"]["param"] in {"serviceUrl", "channelId", "conversation"}
        assert b.teams.calls == []
        assert b.upstream.calls == []


async def test_a_bad_token_is_refused_before_the_body_is_looked_at() -> None:
    async with bot(lambda body: Behavior(tokens=2)) as b:
        async with httpx.AsyncClient() as http:
            for body in ({"type": "message"}, [1, 2], "x"):
                answer = await http.post(b.url, json=body, headers={"authorization": "Bearer nope"})
                # 401 with nothing about the schema: not 422 with field details.
                assert answer.status_code == 401
                assert answer.json()["error"]["param"] is None
                assert "serviceUrl" not in answer.text
            deep = await http.post(
                b.url, content=b"[" * 1000 + b"]" * 1000, headers={"authorization": "Bearer x"}
            )
            assert deep.status_code == 401
        assert b.teams.calls == []


async def test_without_a_bot_configured_the_webhook_is_404() -> None:
    upstream = FakeUpstream()
    async with upstream_running(upstream):
        from conftest import settings_for

        async with serve(settings_for(upstream)) as running, httpx.AsyncClient() as http:
            answer = await http.post(f"{running.url}/api/messages", json={})
        assert answer.status_code == 404
        assert answer.json()["error"]["code"] == "bot_not_configured"


async def test_sigterm_mid_turn_tells_the_user_and_exits_within_the_grace() -> None:
    upstream = FakeUpstream(lambda body: Behavior(tokens=100_000, interval=0.2))
    async with upstream_running(upstream), FakeTeams.running() as teams:
        port = free_port()
        env = {
            "RAGLINE_BOT_APP_ID": teams.app_id,
            "RAGLINE_BOT_APP_PASSWORD": teams.app_password,
            "RAGLINE_BOT_OPENID_METADATA_URL": teams.openid_url,
            "RAGLINE_BOT_ISSUER": teams.issuer,
            "RAGLINE_BOT_TOKEN_URL": teams.token_url,
        }
        async with server_process(port, upstream, **env) as process:
            url = f"http://127.0.0.1:{port}/api/messages"
            personal = teams.activity("stream until told")
            group = teams.activity("answer in one go", kind="groupChat")
            assert (await teams.deliver(url, personal)).status == 202
            assert (await teams.deliver(url, group)).status == 202
            await teams.wait_for(
                lambda: any(len(s.chunks) >= 3 for s in teams.streams.values()), timeout=60
            )
            signalled_at = time.monotonic()
            exited_after = await sigterm(process)
        assert exited_after < GRACE
        print(f"SIGTERM to exit with two bot turns in flight: {exited_after:.3f}s")
        [stream] = teams.streams.values()
        assert stream.final_text is not None
        assert stream.final_text.startswith("t0 t1")  # what was said stays
        assert "Interrupted" in stream.final_text
        [message] = teams.messages(group["conversation"]["id"])
        assert "Interrupted" in message["text"]
        assert len(upstream.calls) == 2
        for call in upstream.calls:
            assert call.closed.is_set()
            assert call.tokens_after(signalled_at) <= 1
        assert not teams.violations


async def test_too_many_pending_turns_get_503_and_a_later_redelivery_is_served() -> None:
    release = anyio.Event()
    async with bot(
        lambda body: Behavior(tokens=2, hold_headers=True, release=release),
        bot_max_pending_turns=1,
    ) as b:
        first = b.teams.activity("first", kind="groupChat")
        second = b.teams.activity("second", kind="groupChat")
        assert (await b.teams.deliver(b.url, first)).status == 202
        refused = await b.teams.deliver(b.url, second)
        assert refused.status == 503
        assert refused.body["error"]["code"] == "overloaded"
        release.set()
        conversation = first["conversation"]["id"]
        await b.teams.wait_for(lambda: b.teams.messages(conversation), timeout=30)
        await eventually(lambda: b.running.metric("ragline_bot_turns_total") == 1)
        assert (await b.teams.redeliver(b.url, second)).status == 202  # not a duplicate
        await b.teams.wait_for(lambda: len(b.teams.messages(conversation)) == 2, timeout=30)


def test_the_final_message_numbers_its_sources_as_the_answer_cites_them() -> None:
    from ragline import ChatResult, Hit, Source
    from ragline.teams.replies import with_sources

    hits = [
        Hit("guide", 0, "## Jobs\nDELETE stops a job.", "docs/GUIDE.md", 0.03, similarity=0.62),
        Hit("guide", 1, "More on jobs.", "docs/GUIDE.md", 0.02, bm25=7.14),
    ]
    result = ChatResult(
        text="Send DELETE [1].",
        sources=[Source.from_hit(hit, rank) for rank, hit in enumerate(hits, start=1)],
    )
    assert with_sources(result) == (
        "Send DELETE [1].\n\n**Sources**\n"
        "1. GUIDE.md: Jobs (similarity 0.62)\n"
        "2. GUIDE.md (BM25 7.1)"
    )


class _Revoked:
    """Access taken away between the bot's check and the retrieval."""

    async def readable(self, lifetime: Any, collection: str | None) -> Any:
        raise Hidden(f"no collection {collection!r}", code="collection_not_found")


@pytest.mark.parametrize("kind", ["personal", "groupChat"])
async def test_a_retrieval_refused_midway_is_a_polite_sentence_and_a_completed_turn(
    tmp_path: Path, logs: LogCapture, kind: ConversationKind
) -> None:
    from test_teams_members import scene  # a bot with retrieval, grants and a mapping

    async with scene(tmp_path) as s:
        runtime = s.running.server.runtime
        assert runtime.teams is not None
        names: list[object] = []

        @runtime.teams.bot.on("invoke")
        async def whoami(ctx: TurnContext) -> InvokeResponse:
            principal = ctx.lifetime.get("principal")
            names.append(getattr(principal, "name", principal))
            return InvokeResponse(status=200, body={})

        runtime.pipeline.access = _Revoked()
        activity = s.teams.activity("what is the launch code?", kind=kind)
        activity["from"] = {"id": "29:1alice", "name": "Alice", "aadObjectId": s.users.alice}
        conversation = activity["conversation"]["id"]
        assert (await s.teams.deliver(s.url, activity)).status == 202
        await eventually(lambda: s.running.metric("ragline_bot_turns_total") == 1, 30)
        [message] = s.teams.messages(conversation)
        assert message["text"] == NO_ACCESS
        assert message["replyToId"] == activity["id"]
        assert s.running.metric("ragline_bot_turns_total", outcome="completed") == 1
        assert s.upstream.calls == []  # refused before the model was asked
        assert not logs.at_least(logging.WARNING)

        # An invoke runs as its user's principal too, never as the webhook's caller.
        invoke = s.teams.activity(activity_type="invoke", name="whoami", value={})
        invoke["from"] = activity["from"]
        assert (await s.teams.deliver(s.url, invoke)).status == 200
        assert names == ["alice"]
