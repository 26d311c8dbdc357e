"""The conversation store (:mod:`ragline.providers.conversations`): one conformance suite,
run in memory, on a SQLite file and on a real PostgreSQL. Stored responses (upserts keep
owner and creation time, expiry before and by ``expire``), conversations' turns (order,
limit, owner, clear), and turns added at once by two replicas."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import pytest

from ragline import Lifetime
from ragline.providers.conversations import ConversationStore, StoredResponse
from ragline.providers.inprocess import InProcessConversations
from ragline.providers.postgres import PostgresPool
from ragline.providers.postgres_conversations import PostgresConversations
from ragline.providers.sqlite_conversations import SqliteConversations
from ragline.threads import ThreadBridge

pytestmark = pytest.mark.anyio

HOUR = 3600.0


@pytest.fixture
def life() -> Lifetime:
    return Lifetime.root("test")


async def replica(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, stack: AsyncExitStack
) -> ConversationStore:
    """A store as one replica has it, opened; closed when ``stack`` is. Every replica of
    one test shares the file or the database (in memory there is one process, one
    store)."""
    if kind == "inprocess":
        return InProcessConversations()
    if kind == "sqlite":
        sqlite = SqliteConversations(tmp_path / "conversations.sqlite", ThreadBridge())
        await sqlite.open(Lifetime.root("open"))
        stack.callback(sqlite.close)
        return sqlite
    pool = PostgresPool(request.getfixturevalue("database_url"), pool_size=20)
    await pool.open(Lifetime.root("open"))
    stack.push_async_callback(pool.aclose)
    return PostgresConversations(pool)


@pytest.fixture(params=["inprocess", "sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ConversationStore]:
    async with AsyncExitStack() as stack:
        yield await replica(request.param, request, tmp_path, stack)


def stored(response_id: str, owner: str = "ann", **values: object) -> StoredResponse:
    fields: dict[str, object] = {
        "created_at": 1000.0,
        "expires_at": time.time() + HOUR,
        "body": {"id": response_id, "status": "completed", "output": [{"type": "message"}]},
        "input_items": [{"type": "message", "role": "user", "content": "hi"}],
        "context": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
    }
    fields.update(values)
    return StoredResponse(response_id, owner, **fields)  # type: ignore[arg-type]


def said(n: int) -> list[dict[str, object]]:
    return [{"role": "user", "content": f"q{n}"}, {"role": "assistant", "content": f"a{n}"}]


async def test_a_response_is_saved_read_back_and_replaced_keeping_owner_and_creation(
    store: ConversationStore, life: Lifetime
) -> None:
    assert isinstance(store, ConversationStore)
    first = stored("resp_1", body={"id": "resp_1", "status": "in_progress"}, expires_at=None)
    await store.save_response(first, life)
    assert await store.response("resp_1", life) == first
    assert await store.response("resp_other", life) is None
    # A background response is saved again when it ends: a new body, expiry and context;
    # its owner and creation time stay those of the first save.
    done = stored("resp_1", "bob", created_at=2000.0, context=[{"role": "user", "content": "x"}])
    await store.save_response(done, life)
    found = await store.response("resp_1", life)
    assert found is not None
    assert (found.owner, found.created_at) == ("ann", 1000.0)
    assert (found.body, found.input_items, found.context) == (
        done.body,
        done.input_items,
        done.context,
    )
    assert found.expires_at == pytest.approx(done.expires_at)


async def test_a_deleted_response_is_gone_and_a_second_delete_finds_none(
    store: ConversationStore, life: Lifetime
) -> None:
    await store.save_response(stored("resp_1"), life)
    await store.save_response(stored("resp_2"), life)
    assert await store.delete_response("resp_1", life) is True
    assert await store.delete_response("resp_1", life) is False
    assert await store.response("resp_1", life) is None
    assert await store.response("resp_2", life) is not None
    assert await store.delete_response("resp_never", life) is False


async def test_an_expired_response_is_none_at_once_and_expire_deletes_it(
    store: ConversationStore, life: Lifetime
) -> None:
    now = time.time()
    await store.save_response(stored("resp_old", expires_at=now - 1), life)
    await store.save_response(stored("resp_soon", expires_at=now + 60), life)
    await store.save_response(stored("resp_kept", expires_at=None), life)
    # Past its expiry it is none to a reader before expire() has run.
    assert await store.response("resp_old", life) is None
    assert await store.response("resp_soon", life) is not None
    assert sorted(await store.expire(now, life)) == ["resp_old"]
    assert await store.expire(now, life) == []
    assert await store.delete_response("resp_old", life) is False
    # Later, the other one expires; the one without an expiry never does.
    assert sorted(await store.expire(now + 120, life)) == ["resp_soon"]
    assert await store.response("resp_kept", life) is not None
    # An expired one that expire() has not reached yet is none to delete either.
    await store.save_response(stored("resp_late", expires_at=time.time() - 1), life)
    assert await store.delete_response("resp_late", life) is False


async def test_turns_come_oldest_first_the_newest_limit_and_the_first_owner(
    store: ConversationStore, life: Lifetime
) -> None:
    assert await store.conversation("c1", life) is None
    later = time.time() + HOUR
    for n in range(5):
        # Another principal's turn never takes the conversation over.
        await store.add_turn("c1", "ann" if n == 0 else "bob", said(n), later, life)
    await store.add_turn("c2", "cy", said(9), None, life)
    found = await store.conversation("c1", life)
    assert found is not None
    owner, turns = found
    assert owner == "ann"
    assert [t.messages for t in turns] == [said(n) for n in range(5)]
    seqs = [t.seq for t in turns]
    assert seqs == sorted(set(seqs))
    assert all(abs(t.at - time.time()) < 60 for t in turns)
    found = await store.conversation("c1", life, limit=2)
    assert found is not None
    assert [t.messages for t in found[1]] == [said(3), said(4)]
    assert [t.seq for t in found[1]] == seqs[-2:]
    other = await store.conversation("c2", life)
    assert other is not None
    assert (other[0], [t.messages for t in other[1]]) == ("cy", [said(9)])


async def test_a_cleared_conversation_starts_again_with_a_new_owner(
    store: ConversationStore, life: Lifetime
) -> None:
    await store.add_turn("c1", "ann", said(1), None, life)
    await store.add_turn("c1", "ann", said(2), None, life)
    await store.add_turn("c2", "ann", said(1), None, life)
    await store.clear_conversation("c1", life)
    assert await store.conversation("c1", life) is None
    await store.clear_conversation("c1", life)  # twice: nothing to clear, no error
    await store.add_turn("c1", "bob", said(3), None, life)
    found = await store.conversation("c1", life)
    assert found is not None
    assert found[0] == "bob"
    assert [(t.seq, t.messages) for t in found[1]] == [(1, said(3))]
    other = await store.conversation("c2", life)
    assert other is not None
    assert len(other[1]) == 1


async def test_a_conversation_expires_with_its_turns(
    store: ConversationStore, life: Lifetime
) -> None:
    now = time.time()
    await store.add_turn("old", "ann", said(1), now + HOUR, life)
    await store.add_turn("old", "ann", said(2), now - 1, life)  # each turn moves the expiry
    await store.add_turn("live", "ann", said(1), now + HOUR, life)
    await store.add_turn("kept", "ann", said(1), None, life)
    assert await store.conversation("old", life) is None  # before expire() has run
    # A turn after its expiry starts a new conversation: the old turns stay gone.
    await store.add_turn("old", "bob", said(3), now + HOUR, life)
    found = await store.conversation("old", life)
    assert found is not None
    assert (found[0], [t.messages for t in found[1]]) == ("bob", [said(3)])
    # expire() deletes the conversations only (it names the responses it deleted).
    await store.save_response(stored("resp_1", expires_at=now + HOUR), life)
    assert await store.expire(now + 2 * HOUR, life) == ["resp_1"]
    assert await store.conversation("live", life) is None
    assert await store.conversation("kept", life) is not None
    await store.add_turn("live", "cy", said(4), None, life)
    found = await store.conversation("live", life)
    assert found is not None
    assert (found[0], [t.seq for t in found[1]]) == ("cy", [1])


@pytest.mark.parametrize("kind", ["inprocess", "sqlite", "postgres"])
async def test_turns_added_at_once_by_two_replicas_are_all_kept_in_order(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, life: Lifetime
) -> None:
    async with AsyncExitStack() as stack:
        if kind == "inprocess":
            one = two = await replica(kind, request, tmp_path, stack)
        else:  # two pools on one database, two connections to one file
            one = await replica(kind, request, tmp_path, stack)
            two = await replica(kind, request, tmp_path, stack)

        async def add(target: ConversationStore, n: int) -> None:
            await target.add_turn("c", f"p{n}", said(n), None, life)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for n in range(20):
                    tg.start_soon(add, one if n % 2 else two, n)
        found = await one.conversation("c", life)
        assert found is not None
        owner, turns = found
        assert len(turns) == 20
        seqs = [t.seq for t in turns]
        assert seqs == sorted(seqs)
        assert len(set(seqs)) == 20  # no turn lost, no number given twice
        assert sorted(str(t.messages[0]["content"]) for t in turns) == sorted(
            f"q{n}" for n in range(20)
        )
        first = min(turns, key=lambda t: t.seq)
        assert owner == f"p{str(first.messages[0]['content'])[1:]}"  # the first turn's
        assert await two.conversation("c", life) == found


async def test_a_sqlite_file_keeps_its_conversations_across_a_restart(
    tmp_path: Path, life: Lifetime
) -> None:
    path = tmp_path / "data" / "conversations.sqlite"
    before = SqliteConversations(path, ThreadBridge())
    await before.open(life)
    saved = stored("resp_1")
    await before.save_response(saved, life)
    await before.add_turn("c", "ann", said(1), None, life)
    before.close()
    after = SqliteConversations(path, ThreadBridge())
    try:
        assert await after.response("resp_1", life) == saved
        found = await after.conversation("c", life)
        assert found is not None
        assert found[0] == "ann"
    finally:
        after.close()
