"""The coordination stores (:mod:`ragline.providers.coordination`): one conformance suite,
run on the in-process implementations and on a real PostgreSQL, both built by the one
choice point (:func:`ragline.backend.build_backend`). "Another process" is a second
backend: on PostgreSQL, a pool of its own; in process, the same memory (there is no
other process)."""

from __future__ import annotations

import gc
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import anyio
import pytest

from ragline import Lifetime, Settings, ThreadBridge
from ragline.backend import Backend, build_backend
from ragline.factory import open_parts
from ragline.notices import Notices
from ragline.providers.coordination import (
    ActivityLog,
    Notice,
    NoticeBus,
    RunLog,
    RunSave,
    WorkKey,
)
from ragline.providers.inprocess import InProcessBus

pytestmark = pytest.mark.anyio

Deployment = Callable[[], Backend]


@pytest.fixture(params=["inprocess", "postgres"])
def deployment(request: pytest.FixtureRequest, tmp_path: Path) -> Deployment:
    """Makes the backends of one deployment, each as another process would: on
    PostgreSQL a backend of its own; in process the one backend there is."""
    values: dict[str, str] = {"data_dir": str(tmp_path)}
    if request.param == "postgres":
        values["database_url"] = request.getfixturevalue("database_url")
    settings = Settings(**values)
    made: list[Backend] = []

    def make() -> Backend:
        if made and request.param == "inprocess":
            return made[0]  # one process: one memory
        made.append(build_backend(settings, ThreadBridge()))
        return made[-1]

    return make


@asynccontextmanager
async def two_processes(
    deployment: Deployment,
) -> AsyncIterator[tuple[Backend, Backend, anyio.abc.TaskGroup]]:
    """Two opened backends of the deployment, and a task group that is cancelled after."""
    async with AsyncExitStack() as stack, anyio.create_task_group() as tg:
        yield await opened(deployment, stack), await opened(deployment, stack), tg
        tg.cancel_scope.cancel()


async def opened(deployment: Deployment, stack: AsyncExitStack) -> Backend:
    backend = deployment()
    await open_parts(stack, Lifetime.root("open"), backend.built, grace=2)
    return backend


async def listening(bus: NoticeBus, tg: anyio.abc.TaskGroup) -> list[Notice]:
    """Start listening on ``bus``; the notices it gets, as they come."""
    got: list[Notice] = []
    ready = anyio.Event()

    async def listen() -> None:
        async def on_ready() -> None:
            ready.set()

        async for notice in bus.listen(Lifetime.root("listen"), ready=on_ready):
            got.append(notice)

    tg.start_soon(listen)
    with anyio.fail_after(10):
        await ready.wait()
    return got


async def until(predicate: Callable[[], object]) -> None:
    with anyio.fail_after(10):
        while not predicate():
            await anyio.sleep(0.01)


def test_keys_and_notices_are_written_and_read_back() -> None:
    key = WorkKey.conversation("19:abc:def@thread.v2")
    assert WorkKey.parse(str(key)) == key
    notice = Notice("cancel", WorkKey.run("run_1"))
    assert Notice.decode(notice.encode()) == notice
    assert str(WorkKey.job("j")) == "job:j"
    for text in ("", "cancel", "cancel nothing", "stop run:1", "news thing:1"):
        assert Notice.decode(text) is None


async def test_a_notice_reaches_every_listener_in_every_process(deployment: Deployment) -> None:
    async with two_processes(deployment) as (here, there, tg):
        mine, theirs = await listening(here.bus, tg), await listening(there.bus, tg)
        life = Lifetime.root("t")
        await there.bus.publish(Notice("cancel", WorkKey.run("r1")), life)
        await here.bus.publish(Notice("news", WorkKey.job("j1")), life)
        expected = [Notice("cancel", WorkKey.run("r1")), Notice("news", WorkKey.job("j1"))]
        await until(lambda: len(mine) == 2 and len(theirs) == 2)
        assert mine == theirs == expected


async def test_the_process_listener_wakes_waiters_and_hands_cancels_out(
    deployment: Deployment,
) -> None:
    async with two_processes(deployment) as (here, there, tg):
        notices = Notices(here.bus)
        cancelled: list[WorkKey] = []
        notices.on_cancel.append(cancelled.append)
        waiter = notices.news(WorkKey.run("r1"))
        tg.start_soon(notices.listen, Lifetime.root("notices"))
        # Connecting wakes every waiter (what came before may be lost): it reads again.
        with anyio.fail_after(10):
            await waiter.wait()
        waiter = notices.news(WorkKey.run("r1"))
        other = notices.news(WorkKey.run("r2"))
        await there.bus.publish(Notice("cancel", WorkKey.run("r1")), Lifetime.root("t"))
        with anyio.fail_after(10):
            await waiter.wait()
        assert cancelled == [WorkKey.run("r1")]
        assert not other.is_set()


async def test_a_run_log_keeps_snapshots_and_events_for_every_process(
    deployment: Deployment,
) -> None:
    life = Lifetime.root("t")
    async with two_processes(deployment) as (here, there, tg):
        runs: RunLog = here.runs
        heard = await listening(there.bus, tg)
        await runs.save_run(
            RunSave("r", "running", {"state": "running"}, [(0, "step", {"n": 0})]), life
        )
        # A repeated save (a retry after a lost answer) adds no event twice.
        events = [(0, "step", {"n": 0}), (1, "step", {"n": 1})]
        await runs.save_run(RunSave("r", "running", {"state": "running", "steps": 2}, events), life)
        assert await there.runs.run("r", life) == {"state": "running", "steps": 2}
        assert await there.runs.run_events("r", 0, life) == events
        assert await there.runs.run_events("r", 1, life) == [(1, "step", {"n": 1})]
        assert await there.runs.run_events("r", 2, life) == []
        assert await there.runs.run("nobody", life) is None
        assert await there.runs.run_events("nobody", 0, life) == []
        # Each save is news for the run, wherever its readers are.
        await until(lambda: heard.count(Notice("news", WorkKey.run("r"))) == 2)


async def test_only_the_newest_finished_agent_runs_are_kept(deployment: Deployment) -> None:
    async with AsyncExitStack() as stack:
        runs = (await opened(deployment, stack)).runs
        life = Lifetime.root("t")
        await runs.save_run(
            RunSave("run_live", "running", {"state": "running"}, [(0, "step", {})]), life
        )
        # A background response shares the log; it goes by its own expiry, never by
        # the count of agent runs kept.
        await runs.save_run(RunSave("resp_old", "completed", {"r": 0}, [(0, "done", {})]), life)
        for n in range(3):
            events = [(0, "step", {}), (1, "done", {"n": n})]
            await runs.save_run(RunSave(f"run_{n}", "completed", {"n": n}, events), life, kept=2)
        assert await runs.run("run_0", life) is None  # the oldest finished one went
        assert await runs.run_events("run_0", 0, life) == []
        assert await runs.run("run_2", life) == {"n": 2}
        assert [e[1] for e in await runs.run_events("run_1", 1, life)] == ["done"]
        assert await runs.run("run_live", life) == {"state": "running"}  # never a running one
        assert await runs.run("resp_old", life) == {"r": 0}
        assert await runs.run_events("resp_old", 0, life) == [(0, "done", {})]
        # An id that only looks like one in LIKE ("_" is any character) is no agent run.
        await runs.save_run(RunSave("runX3", "completed", {"n": 3}), life, kept=0)
        assert await runs.run("runX3", life) == {"n": 3}
        assert await runs.run("run_2", life) is None


async def test_the_listing_names_agent_runs_only(deployment: Deployment) -> None:
    async with AsyncExitStack() as stack:
        runs = (await opened(deployment, stack)).runs
        life = Lifetime.root("t")
        for n, run_id in enumerate(["run_a", "resp_b", "run_c", "runXd"]):
            owner = "ann" if n % 2 == 0 else "bob"
            snapshot = {"id": run_id, "owner": owner, "created_at": float(n)}
            await runs.save_run(RunSave(run_id, "completed", snapshot), life)
        listed = await runs.runs(life, owner=None, limit=10)
        assert [r["id"] for r in listed] == ["run_c", "run_a"]  # newest first
        assert [r["id"] for r in await runs.runs(life, owner="ann", limit=1)] == ["run_c"]
        assert await runs.runs(life, owner="bob", limit=10) == []
        assert await runs.run("resp_b", life) is not None  # still readable by its id


async def test_forgotten_runs_lose_their_events_in_every_process(deployment: Deployment) -> None:
    async with two_processes(deployment) as (here, there, _):
        life = Lifetime.root("t")
        for run_id in ("resp_1", "resp_2", "run_3"):
            await here.runs.save_run(RunSave(run_id, "completed", {}, [(0, "e", {})]), life)
        await here.runs.forget(["resp_1", "run_3", "resp_never"], life)
        await here.runs.forget([], life)
        for gone in ("resp_1", "run_3"):
            assert await there.runs.run(gone, life) is None
            assert await there.runs.run_events(gone, 0, life) == []
        assert await there.runs.run("resp_2", life) == {}
        assert await there.runs.run_events("resp_2", 0, life) == [(0, "e", {})]
        # A forgotten id may be saved again: it starts with no events.
        await there.runs.save_run(RunSave("resp_1", "running", {"again": True}), life)
        assert await here.runs.run("resp_1", life) == {"again": True}
        assert await here.runs.run_events("resp_1", 0, life) == []


async def test_an_activity_is_accepted_once_within_its_window(deployment: Deployment) -> None:
    async with two_processes(deployment) as (here, there, _):
        life = Lifetime.root("t")
        first = await here.activities.accept_activity("c1", "a1", 60, life)
        assert first is not None
        # The redelivery, to any process, is dropped; the same activity id in another
        # conversation is another activity.
        assert await there.activities.accept_activity("c1", "a1", 60, life) is None
        other = await there.activities.accept_activity("c2", "a1", 60, life)
        second = await here.activities.accept_activity("c1", "a2", 60, life)
        assert other is not None
        assert second is not None
        assert first < second
        # Past the window, a late redelivery is served again.
        await here.activities.finish_activity("c1", first, life)
        late = await there.activities.accept_activity("c1", "a1", 0, life)
        assert late is not None
        assert late > second


async def test_a_turn_waits_for_every_earlier_turn_of_its_conversation(
    deployment: Deployment,
) -> None:
    async with two_processes(deployment) as (here, there, tg):
        heard = await listening(here.bus, tg)
        log: ActivityLog = here.activities
        life = Lifetime.root("t")
        now = time.time()
        one = await log.accept_activity("c", "1", 60, life)
        two = await there.activities.accept_activity("c", "2", 60, life)
        elsewhere = await log.accept_activity("d", "1", 60, life)
        assert one is not None
        assert two is not None
        assert elsewhere is not None
        assert await log.turn_clear("c", one, now - 60, life)
        assert not await there.activities.turn_clear("c", two, now - 60, life)
        assert await log.turn_clear("d", elsewhere, now - 60, life)  # its own order
        # An earlier turn accepted before the staleness bound counts as done: its
        # process died mid-turn.
        assert await log.turn_clear("c", two, time.time() + 1, life)
        await there.activities.finish_activity("c", one, life)
        assert await log.turn_clear("c", two, now - 60, life)
        # The end of a turn is news for its conversation, in every process.
        await until(lambda: Notice("news", WorkKey.conversation("c")) in heard)


async def test_a_waiter_that_gives_up_is_forgotten() -> None:
    notices = Notices(InProcessBus())
    for n in range(100):
        notices.news(WorkKey.run(f"r{n}"))  # taken, never waited on: its reader left
    kept = notices.news(WorkKey.run("kept"))
    gc.collect()
    assert list(notices._waiters) == [WorkKey.run("kept")]
    assert notices.news(WorkKey.run("kept")) is kept
