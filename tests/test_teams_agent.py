"""The Teams channel answering with an agent loop (``RAGLINE_BOT_TOOLS``), end to end:
ragline on uvicorn with a server-side tool, the fake Teams and the fake model upstream,
all over real sockets.

Across ``ragline.teams.bot`` (``respond`` with tools) and ``ragline.agent``."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from conftest import bot_settings, eventually, serve, upstream_running
from ragline.lifetime import Lifetime
from ragline.teams.bot import BOUND_NOTES, INFORMATIVE, NO_ACCESS
from ragline.tools import ToolRegistry, make_tool
from teams_fakes import FakeTeams
from test_teams_bot import Bot, stream_where, tokens
from upstream import Behavior, FakeUpstream, tool_results

pytestmark = pytest.mark.anyio

# Fast pacing on both sides: the bot never sends faster than the fake Teams allows.
PACING = 0.1
TEAMS = {"min_interval": PACING}
TOKEN_INTERVAL = 0.1
QUESTION = "what is the value of ragline?"


class LookupArgs(BaseModel):
    key: str


class Lookups:
    """The server-side ``lookup`` tool, recording every call it runs."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    def registry(self) -> ToolRegistry:
        async def lookup(args: LookupArgs, lifetime: Lifetime) -> str:
            """Look a key up in the team's facts."""
            self.keys.append(args.key)
            return f"the value of {args.key} is 42"

        return ToolRegistry([make_tool(lookup)])


def lookup_once(body: dict[str, Any]) -> Behavior:
    """Step 1 (no tool result yet): two tokens, then a call of ``lookup``; then the answer.
    Tokens are paced so that a 1:1 answer really streams chunks before its final message."""
    if not tool_results(body):
        arguments = json.dumps({"key": "ragline"})
        return Behavior(tokens=2, interval=TOKEN_INTERVAL, tool_calls=[("lookup", arguments)])
    return Behavior(tokens=4, interval=TOKEN_INTERVAL)


def lookup_forever(body: dict[str, Any]) -> Behavior:
    """Always another ``lookup``, with a new key each time (so never a repeated call)."""
    key = f"k{len(tool_results(body))}"
    return Behavior(tokens=2, tool_calls=[("lookup", json.dumps({"key": key}))])


@asynccontextmanager
async def agent_bot(
    behave: Callable[[dict[str, Any]], Behavior], tools: ToolRegistry, **settings: Any
) -> AsyncIterator[Bot]:
    """Like test_teams_bot's ``bot``, with server-side ``tools`` and the bot using them."""
    upstream = FakeUpstream(behave)
    settings.setdefault("bot_tools", ["lookup"])
    settings.setdefault("tools", [])  # no built-in search (retrieval is off anyway)
    settings.setdefault("bot_stream_interval", PACING)
    async with upstream_running(upstream), FakeTeams.running(**TEAMS) as teams:
        async with serve(bot_settings(upstream, teams, **settings), tools=tools) as running:
            yield Bot(running, teams, upstream)


async def test_a_personal_message_runs_the_tool_and_streams_the_second_steps_answer() -> None:
    lookups = Lookups()
    async with agent_bot(lookup_once, lookups.registry()) as b:
        activity = b.teams.activity(QUESTION)
        conversation = activity["conversation"]["id"]
        delivery = await b.teams.deliver(b.url, activity)
        assert delivery.status == 202
        stream = await stream_where(b, lambda s: s.finished, timeout=30)

        # The model asked for the tool first, and the tool ran with its arguments.
        assert lookups.keys == ["ragline"]
        first, second = b.upstream.calls
        assert first.offered == ["lookup"]
        assert first.tool_results == []
        assert first.query == QUESTION
        # The second call carries the call and its result, and still offers the tool.
        assert second.offered == ["lookup"]
        [asked] = [m for m in second.body["messages"] if m.get("tool_calls")]
        assert asked["role"] == "assistant"
        [call] = asked["tool_calls"]
        assert call["function"]["name"] == "lookup"
        assert json.loads(call["function"]["arguments"]) == {"key": "ragline"}
        [result] = second.tool_results
        assert result["tool_call_id"] == call["id"]
        assert result["content"] == "the value of ragline is 42"

        # The user got one streamed message: opened by the informative update, chunks
        # that only grew, and the second step's text (not step 1's) as the final answer.
        assert stream.informative_text == INFORMATIVE
        assert stream.chunks[0][1] == INFORMATIVE
        streamed = [text for _, text, _ in stream.chunks[1:]]
        assert streamed  # the answer really streamed before its final message
        assert all(after.startswith(before) for before, after in itertools.pairwise(streamed))
        assert [seq for seq, _, _ in stream.chunks] == list(range(1, len(stream.chunks) + 1))
        assert stream.final_text is not None
        assert stream.final_text.strip() == tokens(4).strip()
        assert stream.updated_text is None  # finished by its final message, not an update
        [message] = b.teams.messages(conversation)
        assert message["id"] == stream.id
        assert message["replyToId"] == activity["id"]
        assert not b.teams.violations
        await eventually(lambda: b.running.metric("ragline_bot_turns_total") == 1)
        assert b.running.metric("ragline_bot_turns_total", outcome="completed") == 1
        assert b.running.metric("ragline_agent_loops_total", finish_reason="stop") == 1
        assert b.running.metric("ragline_tool_calls_total", tool="lookup", status="ok") == 1


async def test_a_loop_stopped_by_max_steps_says_so_after_three_model_calls() -> None:
    lookups = Lookups()
    async with agent_bot(lookup_forever, lookups.registry(), agent_max_steps=3) as b:
        activity = b.teams.activity("keep looking")
        conversation = activity["conversation"]["id"]
        assert (await b.teams.deliver(b.url, activity)).status == 202
        stream = await stream_where(b, lambda s: s.finished, timeout=30)
        await eventually(lambda: b.running.metric("ragline_bot_turns_total") == 1)

        assert len(b.upstream.calls) == 3  # the step bound, not the model, ended the loop
        assert [len(c.tool_results) for c in b.upstream.calls] == [0, 1, 2]
        assert all(c.offered == ["lookup"] for c in b.upstream.calls)
        # Steps 1 and 2 had their calls run; step 3's call was never run (no step left).
        assert lookups.keys == ["k0", "k1"]
        note = BOUND_NOTES["max_steps"]
        assert stream.final_text is not None
        assert stream.final_text == f"{tokens(2)}\n\n_{note}_"  # the last step's text + note
        [message] = b.teams.messages(conversation)
        assert message["text"] == stream.final_text
        assert not b.teams.violations
        assert b.running.metric("ragline_bot_turns_total", outcome="completed") == 1
        assert b.running.metric("ragline_agent_loops_total", finish_reason="max_steps") == 1


async def test_a_group_chat_message_goes_through_the_loop_in_one_message() -> None:
    lookups = Lookups()
    async with agent_bot(lookup_once, lookups.registry()) as b:
        activity = b.teams.activity(QUESTION, kind="groupChat")
        conversation = activity["conversation"]["id"]
        assert (await b.teams.deliver(b.url, activity)).status == 202
        [message] = await b.teams.wait_for(lambda: b.teams.messages(conversation), timeout=30)

        assert lookups.keys == ["ragline"]
        first, second = b.upstream.calls
        assert first.query == QUESTION  # the at-mention is not part of the question
        assert first.tool_results == []
        [result] = second.tool_results
        assert result["content"] == "the value of ragline is 42"
        assert second.offered == ["lookup"]
        assert message["text"].strip() == tokens(4).strip()
        assert message["replyToId"] == activity["id"]
        # No streaming in group chats: a typing indicator, then the one message.
        assert not b.teams.streams
        sent = b.teams.calls_in(conversation)
        assert all(c.streaminfo is None for c in sent)
        assert [c.activity_type for c in sent] == ["typing", "message"]
        assert all(c.status < 300 for c in sent)
        assert not b.teams.violations
        await eventually(lambda: b.running.metric("ragline_bot_turns_total") == 1)
        assert b.running.metric("ragline_bot_turns_total", outcome="completed") == 1
        assert b.running.metric("ragline_agent_loops_total", finish_reason="stop") == 1


def search_once(body: dict[str, Any]) -> Behavior:
    """Step 1: a call of the server's ``search``; then the answer."""
    if not tool_results(body):
        return Behavior(tokens=0, tool_calls=[("search", '{"query": "launch code"}')])
    return Behavior(texts=["The code is ", "[1]."])


async def test_the_search_tool_retrieves_as_the_teams_user(tmp_path: Path) -> None:
    from test_teams_members import TEAM_A, TEAM_B, scene

    settings = {"bot_tools": ["search"], "tools": ["search"], "bot_stream_interval": PACING}
    async with scene(tmp_path, behave=search_once, **settings) as s:
        # alice in team A's channel: the tool searched team A's collection only.
        answer = await s.ask(s.users.alice, "what is the launch code?", team=TEAM_A)
        assert answer["text"].startswith("The code is [1].")
        [result] = s.upstream.calls[-1].tool_results
        assert "4711" in result["content"]
        assert "9999" not in result["content"]
        # bob in his 1:1 chat: the default collection, nothing of either team's.
        await s.ask(s.users.bob, "what is the launch code?")
        [result] = s.upstream.calls[-1].tool_results
        assert "1234" in result["content"]
        assert "4711" not in result["content"]
        assert "9999" not in result["content"]
        # alice in team B's channel may read none of its collections: no loop at all.
        calls = len(s.upstream.calls)
        refused = await s.ask(s.users.alice, "what is the launch code?", team=TEAM_B)
        assert refused["text"] == NO_ACCESS
        assert len(s.upstream.calls) == calls
        await eventually(lambda: s.running.metric("ragline_bot_turns_total") == 3)
        assert s.running.metric("ragline_bot_turns_total", outcome="completed") == 3
        assert s.running.metric("ragline_tool_calls_total", tool="search", status="ok") == 2
