"""Feedback on the bot's answers: the ``message/submitAction`` invoke's rules (stored and
counted; 400 for what is not feedback; 404 for a message ragline never sent and for
another tenant), through the real webhook once, and ``GET /api/v1/feedback`` (admins
only, paged)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from conftest import settings_for
from ragline import Lifetime
from ragline.metrics import Metrics
from ragline.providers.feedback import FeedbackRecord, FeedbackStore, SentAnswer
from ragline.providers.inprocess_feedback import InProcessFeedback
from ragline.server import create_app
from ragline.teams import Activity, BotApplication, TurnContext
from ragline.teams.feedback import INVOKE, MAX_TEXT, FeedbackHandler
from ragline.teams.streaming import Pacer
from test_teams_bot import bot
from upstream import Behavior, FakeUpstream

pytestmark = pytest.mark.anyio

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CONVERSATION = "a:1chat"
ADMIN = "admin-key"


def answer(activity_id: str = "m1", **values: Any) -> SentAnswer:
    fields: dict[str, Any] = {
        "tenant_id": TENANT,
        "question": "Which star is closest?",
        "text": "Alpha Centauri [1]",
        "sources": [{"rank": 1, "document_id": "alpha"}],
        "model": "fake-model",
        "at": 1000.0,
        "conversation_id": CONVERSATION,
    }
    fields.update(values)
    return SentAnswer(activity_id, **fields)


def value(reaction: Any = "like", feedback: Any = '{"feedbackText":"Nice!"}') -> dict[str, Any]:
    return {"actionName": "feedback", "actionValue": {"reaction": reaction, "feedback": feedback}}


def invoke(
    given: Any,
    *,
    reply_to: str | None = "m1",
    tenant: str = TENANT,
    name: str = INVOKE,
    user: str | None = "29:ann",
) -> Activity:
    """A feedback invoke as Teams sends it (the tenant in the conversation and the
    channelData)."""
    data: dict[str, Any] = {
        "type": "invoke",
        "id": "f1",
        "name": name,
        "serviceUrl": "https://smba.example/amer/",
        "channelId": "msteams",
        "conversation": {"id": CONVERSATION, "conversationType": "personal", "tenantId": tenant},
        "channelData": {"tenant": {"id": tenant}},
        "value": given,
    }
    if reply_to is not None:
        data["replyToId"] = reply_to
    if user is not None:
        data["from"] = {"id": user, "aadObjectId": "00000000-0000-0000-0000-00000000000a"}
    return Activity.model_validate(data)


def turn(activity: Activity) -> TurnContext:
    # The handler uses neither the bot nor the pacer: it answers in the webhook's response.
    return TurnContext(activity, Lifetime.root("test"), cast(BotApplication, None), Pacer(0))


def counted(metrics: Metrics, reaction: str) -> float:
    found = metrics.registry.get_sample_value("ragline_bot_feedback_total", {"reaction": reaction})
    return found or 0.0


@pytest.fixture
async def store() -> FeedbackStore:
    made = InProcessFeedback()
    await made.record_answer(answer(), Lifetime.root("seed"))
    return made


async def test_feedback_is_stored_with_its_answer_and_counted(store: FeedbackStore) -> None:
    metrics = Metrics()
    handle = FeedbackHandler(store, metrics)
    response = await handle(turn(invoke(value())))
    assert (response.status, response.body) == (200, {})  # Teams wants an empty object
    (stored,) = await store.feedback(Lifetime.root("read"), limit=10)
    assert (stored.reaction, stored.text, stored.user_id) == ("like", "Nice!", "29:ann")
    assert stored.answer == answer()
    assert counted(metrics, "like") == 1
    # The same user again: their rating is replaced, and each submission counted.
    response = await handle(turn(invoke(value("dislike", '{"feedbackText":""}'))))
    assert response.status == 200
    (stored,) = await store.feedback(Lifetime.root("read"), limit=10)
    assert (stored.reaction, stored.text) == ("dislike", "")
    assert (counted(metrics, "like"), counted(metrics, "dislike")) == (1, 1)


@pytest.mark.parametrize(
    ("feedback", "text"),
    [
        (None, ""),  # the thumb alone
        ('{"feedbackText": "  too long  "}', "too long"),
        (
            {"feedbackText": "an object, as the Agents SDK allows"},
            "an object, as the Agents SDK allows",
        ),
        ("plain words, not JSON", "plain words, not JSON"),
        ('{"rating": 3}', ""),  # a custom form without feedbackText
        (json.dumps({"feedbackText": "x" * 5000}), "x" * MAX_TEXT),
        ('{"feedbackText": "nul\\u0000"}', "nul"),
    ],
)
async def test_what_the_user_wrote_is_kept_bounded(
    store: FeedbackStore, feedback: Any, text: str
) -> None:
    response = await FeedbackHandler(store, Metrics())(turn(invoke(value(feedback=feedback))))
    assert response.status == 200
    (stored,) = await store.feedback(Lifetime.root("read"), limit=1)
    assert stored.text == text


@pytest.mark.parametrize(
    ("activity", "error"),
    [
        (invoke(value("love")), "reaction"),
        (invoke(value(None)), "reaction"),
        (invoke(value(["like"])), "reaction"),
        (invoke(None), "actionName"),
        (invoke("feedback"), "actionName"),
        (invoke({**value(), "actionName": "share"}), "actionName"),
        (invoke({"actionName": "feedback", "actionValue": "like"}), "actionValue"),
        (invoke(value(feedback=42)), "feedback"),
        (invoke(value(feedback='{"feedbackText": 42}')), "feedbackText"),
        (invoke(value(), name="message/fetchTask"), "not a feedback invoke"),
        (invoke(value(), user=None), "from.id"),
    ],
)
async def test_what_is_not_feedback_is_a_400_and_nothing_is_stored(
    store: FeedbackStore, activity: Activity, error: str
) -> None:
    metrics = Metrics()
    response = await FeedbackHandler(store, metrics)(turn(activity))
    assert response.status == 400
    assert error in response.body["error"]
    assert await store.feedback(Lifetime.root("read"), limit=10) == []
    assert counted(metrics, "like") == 0


async def test_feedback_that_names_no_message_rates_the_newest_answer(
    store: FeedbackStore,
) -> None:
    """The Agents Playground leaves replyToId out; the form it shows is under the newest
    answer of the conversation."""
    await store.record_answer(answer("m2", at=2000.0, text="newer"), Lifetime.root("seed"))
    response = await FeedbackHandler(store, Metrics())(turn(invoke(value(), reply_to=None)))
    assert response.status == 200
    (stored,) = await store.feedback(Lifetime.root("read"), limit=10)
    assert (stored.answer.activity_id, stored.answer.text) == ("m2", "newer")
    elsewhere = invoke(value(), reply_to=None).model_copy(
        update={"conversation": invoke(value()).conversation.model_copy(update={"id": "a:1never"})}
    )
    refused = await FeedbackHandler(store, Metrics())(turn(elsewhere))
    assert refused.status == 404


async def test_a_message_ragline_never_sent_is_a_404(store: FeedbackStore) -> None:
    response = await FeedbackHandler(store, Metrics())(turn(invoke(value(), reply_to="m2")))
    assert response.status == 404
    assert "error" in response.body
    assert await store.feedback(Lifetime.root("read"), limit=10) == []


async def test_another_tenant_is_refused_as_if_the_message_did_not_exist(
    store: FeedbackStore,
) -> None:
    other = "11111111-2222-3333-4444-555555555555"
    handle = FeedbackHandler(store, Metrics())
    refused = await handle(turn(invoke(value(), tenant=other)))
    never_sent = await handle(turn(invoke(value(), reply_to="m2")))
    assert (refused.status, refused.body) == (never_sent.status, never_sent.body)
    assert await store.feedback(Lifetime.root("read"), limit=10) == []
    # Tenant ids are compared as Teams means them: case does not matter.
    assert (await handle(turn(invoke(value(), tenant=TENANT.upper())))).status == 200


async def test_feedback_through_the_real_webhook() -> None:
    async with bot(lambda body: Behavior(tokens=2)) as b:
        runtime = b.running.server.runtime
        assert runtime.teams is not None
        # As the lead registers it: the invoke by name.
        runtime.teams.bot.on("invoke")(FeedbackHandler(runtime.feedback, runtime.metrics))
        rated = b.teams.activity(
            "", activity_type="invoke", name=INVOKE, value=value(), replyToId="msg-1"
        )
        conversation = rated["conversation"]["id"]
        sent = answer("msg-1", conversation_id=conversation, tenant_id=b.teams.tenant_id)
        await runtime.feedback.record_answer(sent, Lifetime.root("seed"))
        delivered = await b.teams.deliver(b.url, rated)
        assert (delivered.status, delivered.body) == (200, {})
        (stored,) = await runtime.feedback.feedback(Lifetime.root("read"), limit=1)
        assert (stored.text, stored.user_id, stored.answer) == ("Nice!", b.teams.user_id, sent)
        assert b.running.metric("ragline_bot_feedback_total", reaction="like") == 1
        unknown = b.teams.activity(
            "", activity_type="invoke", name=INVOKE, value=value(), replyToId="msg-2"
        )
        assert (await b.teams.deliver(b.url, unknown)).status == 404
        bad = b.teams.activity(
            "", activity_type="invoke", name=INVOKE, value=value("meh"), replyToId="msg-1"
        )
        assert (await b.teams.deliver(b.url, bad)).status == 400


# -- GET /api/v1/feedback -------------------------------------------------------------


@asynccontextmanager
async def app_with_feedback(
    tmp_path: Path, count: int
) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    """ragline in-process with ``count`` feedback records in its store (given at 2000,
    2001, …), an admin's client and a member's key."""
    app = create_app(settings_for(FakeUpstream(), api_keys=[ADMIN], data_dir=str(tmp_path)))
    async with app.router.lifespan_context(app):
        store: FeedbackStore = app.state.runtime.feedback
        life = Lifetime.root("seed")
        for n in range(count):
            sent = answer(f"m{n}", question=f"question {n}?", cause="deadline" if n else None)
            await store.record_answer(sent, life)
            reaction = "like" if n % 2 else "dislike"
            await store.add_feedback(
                FeedbackRecord(sent, reaction, f"said {n}", "29:ann", 2000.0 + n), life
            )
        transport = httpx.ASGITransport(app=app)
        headers = {"authorization": f"Bearer {ADMIN}"}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://ragline", headers=headers
        ) as http:
            made = await http.post(
                "/api/v1/principals", json={"name": "bob", "groups": [], "admin": False}
            )
            assert made.status_code == 201, made.text
            yield http, made.json()["key"]


async def test_admins_read_the_feedback_with_the_answers_it_rates(tmp_path: Path) -> None:
    async with app_with_feedback(tmp_path, 2) as (http, _):
        page = await http.get("/api/v1/feedback")
        assert page.status_code == 200, page.text
        body = page.json()
        assert body["next_before"] is None  # all of it on one page
        newest, oldest = body["feedback"]
        assert newest == {
            "reaction": "like",
            "text": "said 1",
            "user_id": "29:ann",
            "at": 2001.0,
            "conversation_id": CONVERSATION,
            "activity_id": "m1",
            "answer": {
                "question": "question 1?",
                "text": "Alpha Centauri [1]",
                "sources": [{"rank": 1, "document_id": "alpha"}],
                "model": "fake-model",
                "cause": "deadline",
                "at": 1000.0,
            },
        }
        assert (oldest["reaction"], oldest["answer"]["cause"]) == ("dislike", None)


async def test_members_and_strangers_do_not_see_the_route(tmp_path: Path) -> None:
    async with app_with_feedback(tmp_path, 1) as (http, member):
        as_member = await http.get(
            "/api/v1/feedback", headers={"authorization": f"Bearer {member}"}
        )
        assert as_member.status_code == 404
        assert as_member.json()["error"]["code"] == "not_found"
        nobody = await http.get("/api/v1/feedback", headers={"authorization": ""})
        assert nobody.status_code == 401


async def test_feedback_pages_with_limit_and_before(tmp_path: Path) -> None:
    async with app_with_feedback(tmp_path, 5) as (http, _):
        seen: list[str] = []
        pages = 0
        url = "/api/v1/feedback?limit=2"
        while True:
            body = (await http.get(url)).json()
            pages += 1
            seen += [f["activity_id"] for f in body["feedback"]]
            if body["next_before"] is None:
                break
            url = f"/api/v1/feedback?limit=2&before={body['next_before']}"
        assert seen == ["m4", "m3", "m2", "m1", "m0"]
        assert pages == 3
        found = (await http.get("/api/v1/feedback?before=2001.5")).json()
        assert [f["activity_id"] for f in found["feedback"]] == ["m1", "m0"]
        for bad in ("limit=0", "limit=201", "limit=ten", "before=soon", "before=nan", "before=inf"):
            refused = await http.get(f"/api/v1/feedback?{bad}")
            assert refused.status_code == 422, bad
            assert refused.json()["error"]["param"] in {"limit", "before"}
