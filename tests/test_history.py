"""What a follow-up remembers: the newest whole turns within the token budget, older
ones dropped; the conversation's owner is checked; the rewriters see the history."""

from __future__ import annotations

import collections
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import settings_for, upstream_running
from ragline import Lifetime
from ragline.access import Principal
from ragline.errors import NotFound
from ragline.history import History, bound
from ragline.models import Generation, Message, Prompt
from ragline.providers.inprocess import InProcessConversations
from ragline.providers.rewrite import JoinRewriter, LLMRewriter
from ragline.server import create_app
from upstream import Behavior, FakeUpstream

pytestmark = pytest.mark.anyio


def said(*pairs: tuple[str, str]) -> list[Message]:
    return [Message(role=role, content=text) for role, text in pairs]  # type: ignore[arg-type]


def test_the_newest_whole_turns_that_fit_are_kept_and_older_ones_dropped() -> None:
    turns = said(
        ("system", "be brief"),
        ("user", "a" * 40),  # 10 tokens + 4
        ("assistant", "b" * 40),
        ("user", "c" * 40),
        ("assistant", "d" * 40),
    )
    assert bound(turns, 1000) == tuple(turns[1:])  # system messages are the route's own
    assert bound(turns, 28) == tuple(turns[3:])  # one turn fits: the newest
    assert bound(turns, 27) == ()  # a turn is never cut in the middle
    # A turn too large for the budget leaves out everything before it too: no gaps.
    big = said(("user", "x"), ("assistant", "y"), ("user", "z" * 400), ("assistant", "w"))
    assert bound(big, 50) == ()


async def test_a_conversation_is_its_owners_and_remembers_across_calls() -> None:
    history = History(InProcessConversations(), tokens=1000, ttl=60)
    ann, bob = Principal("ann"), Principal("bob")
    with Lifetime.root() as root:
        assert await history.recall("c1", root, principal=ann) == ()
        await history.remember("c1", "ann", "How large is a batch?", "64 chunks [1].", root)
        await history.remember("c1", "ann", "and how do I stop one?", "", root)
        kept = await history.recall("c1", root, principal=ann)
        with pytest.raises(NotFound) as hidden:
            await history.recall("c1", root, principal=bob)
        admin = await history.recall("c1", root, principal=Principal("root", admin=True))
        await history.forget("c1", root)
        gone = await history.recall("c1", root, principal=bob)
    # An answer cut short before a word keeps only its question.
    assert [(m.role, m.content) for m in kept] == [
        ("user", "How large is a batch?"),
        ("assistant", "64 chunks [1]."),
        ("user", "and how do I stop one?"),
    ]
    assert hidden.value.code == "conversation_not_found"
    assert admin == kept
    assert gone == ()


async def test_a_join_searches_for_the_question_before_the_follow_up() -> None:
    join = JoinRewriter()
    with Lifetime.root() as root:
        alone = await join.transform("How large is a batch?", (), root)
        follow = await join.transform(
            "and how do I stop one?",
            said(("user", "How large is a batch?"), ("assistant", "64.")),
            root,
        )
    assert alone == "How large is a batch?"
    assert follow == "How large is a batch? and how do I stop one?"


class Echo:
    """A generator that answers every prompt with one search query, and keeps them."""

    provider, model = "fake", "fake"

    def __init__(self) -> None:
        self.prompts: list[Prompt] = []

    async def generate(
        self, prompt: Prompt, lifetime: Lifetime, into: Generation, on_delta: object = None
    ) -> Generation:
        self.prompts.append(prompt)
        into.parts.append('"stop an ingestion batch"\nbecause')
        return into


async def test_an_llm_rewrite_of_follow_ups_reads_the_turns_and_skips_lone_questions() -> None:
    gen = Echo()
    rewriter = LLMRewriter(gen, follow_ups_only=True)  # type: ignore[arg-type]
    with Lifetime.root() as root:
        alone = await rewriter.transform("How large is a batch?", (), root)
        follow = await rewriter.transform(
            "and how do I stop one?",
            said(("user", "How large is a batch?"), ("assistant", "64 chunks.")),
            root,
        )
    assert alone == "How large is a batch?"
    assert len(gen.prompts) == 1  # no model call for a question that stands alone
    assert follow == "stop an ingestion batch"
    asked = gen.prompts[0].messages[-1].content
    assert "User: How large is a batch?" in asked
    assert "Assistant: 64 chunks." in asked
    assert asked.endswith("Last question: and how do I stop one?\nSearch query:")


class Counted:
    """The application's own conversation store, each call to it counted by name."""

    def __init__(self, store: object) -> None:
        self.store = store
        self.calls: collections.Counter[str] = collections.Counter()

    def __getattr__(self, name: str) -> Any:
        found = getattr(self.store, name)
        if not callable(found):
            return found

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return found(*args, **kwargs)

        return counted


async def test_a_turn_costs_one_read_and_one_write_of_the_store(tmp_path: Path) -> None:
    """A follow-up reads its conversation once and writes its turn once, whole or streamed;
    a first turn only writes. On /v1/responses a follow-up costs one read (the previous
    response, whose record holds the context) and no write of its own: the context rides
    in the response's record, written as it is created (its id is retrievable from the
    first event on) and as it ends, as for any stored response. Nothing else goes to the
    store (the embedded default's SQLite)."""
    upstream = FakeUpstream(lambda body: Behavior(tokens=2))
    async with upstream_running(upstream):
        app = create_app(settings_for(upstream, data_dir=str(tmp_path)))
        async with app.router.lifespan_context(app):
            runtime = app.state.runtime
            counted = Counted(runtime.history.store)
            runtime.history.store = counted
            runtime.dialogue.store = counted
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://r") as http:

                async def turn(
                    send: Callable[[], Awaitable[httpx.Response]],
                ) -> tuple[httpx.Response, dict[str, int]]:
                    counted.calls.clear()
                    answer = await send()
                    assert answer.status_code == 200, answer.text
                    return answer, dict(counted.calls)

                chat = "/api/v1/inference/chat"
                first, new = await turn(lambda: http.post(chat, json={"query": "A batch?"}))
                again = {"query": "and then?", "conversation_id": first.json()["conversation_id"]}
                _, whole = await turn(lambda: http.post(chat, json=again))
                _, streamed = await turn(lambda: http.get("/api/v1/inference/stream", params=again))
                body = {"model": "fake-model", "input": "A batch?"}
                made, response = await turn(lambda: http.post("/v1/responses", json=body))
                follow = {**body, "input": "and?", "previous_response_id": made.json()["id"]}
                _, following = await turn(lambda: http.post("/v1/responses", json=follow))
    assert new == {"add_turn": 1}
    assert whole == streamed == {"conversation": 1, "add_turn": 1}
    assert response == {"save_response": 2}
    assert following == {"response": 1, "save_response": 2}
