"""What marks an answer in Teams: the AI label with a citation per cited ``[n]`` and the
feedback buttons, on the final message of a streamed 1:1 answer, a group-chat answer and
a channel answer (the fake Connector over real sockets); updates that keep a silent
answer alive; ``expectReplies``; and Teams' citation limits."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from conftest import Running, bot_settings, eventually, serve, upstream_running
from fake_embeddings import WordEmbedder
from ragline import ChatResult, Hit, Source
from ragline.providers.memory import MemoryStore
from ragline.teams.citations import MAX_CITATIONS, ai_entity
from teams_fakes import ConversationKind, FakeTeams
from upstream import Behavior, FakeUpstream

pytestmark = pytest.mark.anyio

DOCS = [
    {"id": "jobs", "text": "# Jobs\n\nA DELETE stops an ingestion job at its next batch."},
    {"id": "runs", "text": "# Runs\n\nA background run is cancelled by its DELETE."},
    {"id": "other", "text": "# Other\n\nNothing about jobs or runs is written here."},
]


def citing(body: dict[str, Any]) -> Behavior:
    """An answer that cites the first and the third passage it saw (not the second)."""
    return Behavior(texts=["Send ", "DELETE [1]", ", see [3] and [1]."])


@dataclass
class Scene:
    running: Running
    teams: FakeTeams
    upstream: FakeUpstream

    @property
    def url(self) -> str:
        return f"{self.running.url}/api/messages"

    async def ask(self, text: str, kind: ConversationKind) -> dict[str, Any]:
        """The final message of the answer to ``text``, once it is there."""
        extra: dict[str, Any] = {}
        if kind == "channel":
            extra["channelData"] = {"channel": {"id": "19:chan"}, "team": {"id": "19:team"}}
        activity = self.teams.activity(text, kind=kind, **extra)
        conversation = activity["conversation"]["id"]
        await self.teams.deliver(self.url, activity)

        def final() -> dict[str, Any] | None:
            for message in self.teams.messages(conversation):
                if message.get("type") == "message" and message.get("channelData"):
                    return message
            return None

        return await self.teams.wait_for(final, timeout=60)


@asynccontextmanager
async def scene(
    tmp_path: Path, behave: Callable[[dict[str, Any]], Behavior] = citing, **settings: Any
) -> AsyncIterator[Scene]:
    upstream = FakeUpstream(behave)
    async with (
        upstream_running(upstream),
        FakeTeams.running(min_interval=0.05) as teams,
        httpx.AsyncClient(timeout=60) as http,
    ):
        values = {
            "retrieval": True,
            "data_dir": str(tmp_path / "data"),
            "bot_stream_interval": 0.05,
            "bot_top_k": 3,
            **settings,
        }
        overrides = {"embedder": WordEmbedder(), "store": MemoryStore()}
        async with serve(bot_settings(upstream, teams, **values), **overrides) as running:
            job = await http.post(f"{running.url}/api/v1/ingest", json={"documents": DOCS})
            job_id = job.json()["job_id"]
            with anyio.fail_after(60):
                while (await http.get(f"{running.url}/api/v1/ingest/{job_id}")).json()[
                    "state"
                ] != "succeeded":
                    await anyio.sleep(0.05)
            yield Scene(running, teams, upstream)


def labels(message: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        e for e in message.get("entities") or () if e.get("type") == "https://schema.org/Message"
    ]


@pytest.mark.parametrize("kind", ["personal", "groupChat", "channel"])
async def test_every_final_answer_has_the_ai_label_its_citations_and_feedback(
    tmp_path: Path, kind: ConversationKind
) -> None:
    async with scene(tmp_path) as s:
        message = await s.ask("how do I stop a job or a run?", kind)
    (label,) = labels(message)
    assert label["additionalType"] == ["AIGeneratedContent"]
    assert label["@type"] == "Message"
    assert label["@context"] == "https://schema.org"
    # One citation per source cited, numbered as the model saw them; [2] is not cited.
    assert [c["position"] for c in label["citation"]] == [1, 3]
    prompt = json.dumps(s.upstream.calls[-1].body)
    for claim in label["citation"]:
        appearance = claim["appearance"]
        assert claim["@type"] == "Claim"
        assert appearance["@type"] == "DigitalDocument"
        assert appearance["abstract"]
        assert appearance["name"].split(":")[0].strip() in prompt
    assert message["channelData"]["feedbackLoopEnabled"] is True
    assert message["text"] == "Send DELETE [1], see [3] and [1]."  # no list: Teams shows them
    if kind == "personal":
        streaminfo = [e for e in message["entities"] if e.get("type") == "streaminfo"]
        assert streaminfo[0]["streamType"] == "final"
    assert not s.teams.violations


async def test_an_answer_that_cites_nothing_is_labelled_and_lists_its_sources_as_text(
    tmp_path: Path,
) -> None:
    async with scene(tmp_path, lambda body: Behavior(texts=["No idea."])) as s:
        message = await s.ask("what about jobs?", "groupChat")
    (label,) = labels(message)
    assert "citation" not in label
    assert message["text"].startswith("No idea.\n\n**Sources**\n1. ")


async def test_a_silent_model_gets_informative_updates_within_the_keepalive_and_paced(
    tmp_path: Path,
) -> None:
    """Scaled: a keep-alive of 1.5 s, a model silent for 5 s, requests at most one a
    second (the defaults: 15 s, and Copilot's 45 s)."""
    release = anyio.Event()
    behave = lambda body: Behavior(tokens=2, hold_headers=True, release=release)  # noqa: E731
    async with scene(tmp_path, behave, bot_keepalive=1.5, bot_stream_interval=1.0) as s:
        activity = s.teams.activity("how do I stop a job?", kind="personal")
        conversation = activity["conversation"]["id"]
        await s.teams.deliver(s.url, activity)
        await s.upstream.wait_for_calls(1)
        await anyio.sleep(5.0)
        release.set()
        await s.teams.wait_for(
            lambda: any(m.get("channelData") for m in s.teams.messages(conversation)), timeout=60
        )
    calls = [c for c in s.teams.calls_in(conversation) if c.method == "POST"]
    informative = [
        c
        for c in calls
        if any(e.get("streamType") == "informative" for e in c.body.get("entities") or ())
    ]
    assert len(informative) >= 3  # the opening one and at least two to keep it alive
    gaps = [b.arrived - a.arrived for a, b in itertools.pairwise(informative)]
    assert max(gaps) <= 1.5 + 0.75  # generous on a shared machine
    sequences = [
        e["streamSequence"]
        for c in informative
        for e in c.body["entities"]
        if "streamSequence" in e
    ]
    assert sequences == sorted(set(sequences))
    assert not s.teams.violations  # never more than one request a second


async def test_expect_replies_gets_the_answer_in_the_webhook_response(tmp_path: Path) -> None:
    async with scene(tmp_path) as s:
        activity = s.teams.activity("how do I stop a job?", kind="personal")
        activity["deliveryMode"] = "expectReplies"
        delivery = await s.teams.deliver(s.url, activity)
        conversation = activity["conversation"]["id"]
    assert delivery.status == 200
    (reply,) = delivery.body["activities"]
    assert reply["type"] == "message"
    assert reply["text"] == "Send DELETE [1], see [3] and [1]."
    assert reply["replyToId"] == activity["id"]
    assert labels(reply)
    assert reply["channelData"]["feedbackLoopEnabled"] is True
    assert s.teams.calls_in(conversation) == []  # nothing went through the Connector


def test_citations_keep_teams_limits_by_cutting_and_escape_markup() -> None:
    text = " ".join(f"[{n}]" for n in range(1, 31))
    hits = [
        Hit(
            f"d{n}",
            0,
            "<script>alert(1)</script> if a < b && c > d then " + "word " * 100,
            f"docs/{'x' * 60}{n}.md",
            0.5,
            similarity=0.5,
        )
        for n in range(1, 31)
    ]
    result = ChatResult(
        text=text, sources=[Source.from_hit(hit, rank) for rank, hit in enumerate(hits, 1)]
    )
    claims = ai_entity(result)["citation"]
    assert len(claims) == MAX_CITATIONS
    for claim in claims:
        appearance = claim["appearance"]
        assert len(appearance["name"]) <= 80
        assert len(appearance["abstract"]) <= 160
        assert "<" not in appearance["abstract"] + appearance["name"]
        assert "a &lt; b &amp;&amp; c &gt; d" in appearance["abstract"]
        assert len(appearance["keywords"]) <= 3
        assert all(len(k) <= 28 for k in appearance["keywords"])


async def test_the_welcome_offers_prompt_starters_from_the_readable_collections_to_its_user(
    tmp_path: Path,
) -> None:
    async with scene(tmp_path) as s:
        added = s.teams.activity(
            "", activity_type="conversationUpdate", membersAdded=[{"id": f"28:{s.teams.app_id}"}]
        )
        await s.teams.deliver(s.url, added)
        conversation = added["conversation"]["id"]
        (welcome,) = await s.teams.wait_for(lambda: s.teams.messages(conversation), timeout=30)
    suggested = welcome["suggestedActions"]
    assert suggested["to"] == [added["from"]["id"]]
    assert [(a["type"], a["title"]) for a in suggested["actions"]] == [
        ("imBack", "What is in the documents?"),
        ("imBack", "What can you do?"),
    ]
    assert "new chat" in welcome["text"]


def feedback_invoke(
    teams: FakeTeams, conversation: str, message_id: str, reaction: str = "dislike"
) -> dict[str, Any]:
    value = {
        "actionName": "feedback",
        "actionValue": {"reaction": reaction, "feedback": json.dumps({"feedbackText": "wrong"})},
    }
    invoke = teams.activity(
        "",
        activity_type="invoke",
        name="message/submitAction",
        kind="groupChat",
        conversation_id=conversation,
        value=value,
    )
    invoke["replyToId"] = message_id
    return invoke


async def test_feedback_on_a_sent_answer_is_stored_with_it_and_counted_else_refused(
    tmp_path: Path,
) -> None:
    async with scene(tmp_path) as s:
        message = await s.ask("how do I stop a job?", "groupChat")
        conversation = message["conversation"]["id"]
        # The turn ends once the answer is recorded (a user takes longer to click).
        await eventually(lambda: s.running.metric("ragline_bot_turns_total", outcome="completed"))
        rated = await s.teams.deliver(s.url, feedback_invoke(s.teams, conversation, message["id"]))
        never = await s.teams.deliver(s.url, feedback_invoke(s.teams, conversation, "nope"))
        odd = feedback_invoke(s.teams, conversation, message["id"], reaction="meh")
        bad = await s.teams.deliver(s.url, odd)
        async with httpx.AsyncClient() as http:
            page = (await http.get(f"{s.running.url}/api/v1/feedback")).json()
        counted = s.running.metric("ragline_bot_feedback_total", reaction="dislike")
    assert (rated.status, rated.body) == (200, {})
    assert never.status == 404
    assert bad.status == 400
    (saved,) = page["feedback"]
    assert (saved["reaction"], saved["text"]) == ("dislike", "wrong")
    assert saved["answer"]["question"] == "how do I stop a job?"
    assert saved["answer"]["text"] == "Send DELETE [1], see [3] and [1]."
    assert [src["rank"] for src in saved["answer"]["sources"]] == [1, 2, 3]
    assert saved["answer"]["model"] == "fake-model"
    assert counted == 1
