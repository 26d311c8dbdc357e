"""The feedback store (:mod:`ragline.providers.feedback`): one conformance suite, run in
memory, on a SQLite file and on a real PostgreSQL. Answers recorded and replaced, a
user's feedback replacing their own, and pages of feedback newest first."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path

import pytest

from ragline import Lifetime
from ragline.providers.feedback import FeedbackRecord, FeedbackStore, Reaction, SentAnswer
from ragline.providers.inprocess_feedback import InProcessFeedback
from ragline.providers.postgres import PostgresPool
from ragline.providers.postgres_feedback import PostgresFeedback
from ragline.providers.sqlite_feedback import SqliteFeedback
from ragline.threads import ThreadBridge

pytestmark = pytest.mark.anyio

CONVERSATION = "a:1chat"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"


@pytest.fixture
def life() -> Lifetime:
    return Lifetime.root("test")


async def opened(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, stack: AsyncExitStack
) -> FeedbackStore:
    """A store, opened; closed when ``stack`` is."""
    if kind == "inprocess":
        return InProcessFeedback()
    if kind == "sqlite":
        sqlite = SqliteFeedback(tmp_path / "feedback.sqlite", ThreadBridge())
        await sqlite.open(Lifetime.root("open"))
        stack.callback(sqlite.close)
        return sqlite
    pool = PostgresPool(request.getfixturevalue("database_url"), pool_size=4)
    await pool.open(Lifetime.root("open"))
    stack.push_async_callback(pool.aclose)
    return PostgresFeedback(pool)


@pytest.fixture(params=["inprocess", "sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[FeedbackStore]:
    async with AsyncExitStack() as stack:
        yield await opened(request.param, request, tmp_path, stack)


def sent(activity_id: str, **values: object) -> SentAnswer:
    fields: dict[str, object] = {
        "tenant_id": TENANT,
        "question": f"question {activity_id}?",
        "text": f"answer {activity_id} [1]",
        "sources": [{"rank": 1, "document_id": "alpha", "text": "Alpha centauri"}],
        "model": "fake-model",
        "at": 1000.0,
    }
    fields.update(values)
    return SentAnswer(activity_id, CONVERSATION, **fields)  # type: ignore[arg-type]


def rating(
    answer: SentAnswer,
    at: float,
    *,
    user: str = "29:ann",
    reaction: Reaction = "like",
    text: str = "",
) -> FeedbackRecord:
    return FeedbackRecord(answer, reaction, text, user, at)


async def test_an_answer_is_recorded_read_back_and_replaced(
    store: FeedbackStore, life: Lifetime
) -> None:
    assert isinstance(store, FeedbackStore)
    first = sent("1", cause="client_disconnected")
    await store.record_answer(first, life)
    assert await store.answer(CONVERSATION, "1", life) == first
    # Finished by update: the same message, its whole text now.
    done = replace(first, text="the whole answer [1]", cause=None, at=1001.0, tenant_id=None)
    await store.record_answer(done, life)
    assert await store.answer(CONVERSATION, "1", life) == done
    assert await store.answer(CONVERSATION, "2", life) is None
    assert await store.answer("a:1other", "1", life) is None  # ids are per conversation
    # No id: the conversation's newest answer.
    later = sent("3", at=2000.0)
    await store.record_answer(later, life)
    assert await store.answer(CONVERSATION, None, life) == later
    assert await store.answer("a:1other", None, life) is None


async def test_what_is_read_back_is_a_copy(store: FeedbackStore, life: Lifetime) -> None:
    answer = sent("1")
    await store.record_answer(answer, life)
    answer.sources[0]["text"] = "changed by the caller"
    found = await store.answer(CONVERSATION, "1", life)
    assert found is not None
    assert found.sources[0]["text"] == "Alpha centauri"


async def test_feedback_is_stored_with_its_answer_and_a_user_replaces_their_own(
    store: FeedbackStore, life: Lifetime
) -> None:
    answer = sent("1")
    await store.record_answer(answer, life)
    await store.add_feedback(rating(answer, 2000.0, text="great"), life)
    await store.add_feedback(rating(answer, 2001.0, user="29:bob", reaction="dislike"), life)
    # Ann changes her mind: her second rating replaces her first.
    await store.add_feedback(rating(answer, 2002.0, reaction="dislike", text="wrong star"), life)
    found = await store.feedback(life, limit=10)
    assert [(f.user_id, f.reaction, f.text, f.at) for f in found] == [
        ("29:ann", "dislike", "wrong star", 2002.0),
        ("29:bob", "dislike", "", 2001.0),
    ]
    assert all(f.answer == answer for f in found)


async def test_feedback_carries_the_answer_as_last_recorded(
    store: FeedbackStore, life: Lifetime
) -> None:
    answer = sent("1", text="partial")
    await store.record_answer(answer, life)
    await store.add_feedback(rating(answer, 2000.0), life)
    whole = replace(answer, text="the whole answer")
    await store.record_answer(whole, life)
    (found,) = await store.feedback(life, limit=10)
    assert found.answer == whole


async def test_feedback_on_an_answer_never_recorded_stores_the_answer_it_carries(
    store: FeedbackStore, life: Lifetime
) -> None:
    answer = sent("9")
    await store.add_feedback(rating(answer, 2000.0), life)
    assert await store.answer(CONVERSATION, "9", life) == answer
    (found,) = await store.feedback(life, limit=10)
    assert found.answer == answer


async def test_feedback_pages_newest_first_before_a_time(
    store: FeedbackStore, life: Lifetime
) -> None:
    answers = [sent(str(n), at=1000.0 + n) for n in range(5)]
    for answer in answers:
        await store.record_answer(answer, life)
    # Given out of order: the page is by when it was given.
    for n in (3, 0, 4, 1, 2):
        await store.add_feedback(rating(answers[n], 2000.0 + n), life)
    assert await store.feedback(life, limit=0) == []
    pages: list[list[str]] = []
    before: float | None = None
    while True:
        page = await store.feedback(life, limit=2, before=before)
        if not page:
            break
        pages.append([f.answer.activity_id for f in page])
        before = page[-1].at
    assert pages == [["4", "3"], ["2", "1"], ["0"]]
    assert await store.feedback(life, limit=10, before=2000.0) == []
    (only,) = await store.feedback(life, limit=10, before=2000.5)
    assert only.answer == answers[0]
    assert (only.reaction, only.user_id, only.at) == ("like", "29:ann", 2000.0)


async def test_a_nul_in_what_is_stored_is_no_failure(store: FeedbackStore, life: Lifetime) -> None:
    answer = sent("1", text="a stray \x00 NUL", sources=[{"text": "x\x00y"}])
    await store.record_answer(answer, life)
    await store.add_feedback(rating(answer, 2000.0, text="odd\x00"), life)
    (found,) = await store.feedback(life, limit=1)
    # PostgreSQL drops it; the others may keep it.
    assert found.answer.text.replace("\x00", "") == "a stray  NUL"
    assert found.text.replace("\x00", "") == "odd"


async def test_expiry_forgets_old_feedback_and_the_old_answers_nothing_rates(
    store: FeedbackStore, life: Lifetime
) -> None:
    old, rated, new = sent("1", at=1000.0), sent("2", at=1100.0), sent("3", at=3000.0)
    for answer in (old, rated, new):
        await store.record_answer(answer, life)
    await store.add_feedback(rating(rated, 1500.0), life)  # old, so it goes
    await store.add_feedback(rating(new, 3500.0, user="29:bob"), life)
    kept_rating = sent("4", at=1200.0)
    await store.record_answer(kept_rating, life)
    await store.add_feedback(rating(kept_rating, 2500.0), life)  # recent: it and its answer stay
    assert await store.expire(2000.0, life) == 3  # rated's rating, old and rated
    assert await store.answer(CONVERSATION, "1", life) is None
    assert await store.answer(CONVERSATION, "2", life) is None
    assert await store.answer(CONVERSATION, "4", life) == kept_rating
    assert await store.answer(CONVERSATION, "3", life) == new
    assert [r.answer.activity_id for r in await store.feedback(life, limit=10)] == ["3", "4"]
    assert await store.expire(2000.0, life) == 0
