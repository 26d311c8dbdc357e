"""The supervisor: the application-owned task group for work that outlives a request.

Every test runs on asyncio and on trio and synchronises on events and on the log records
the supervisor writes, never on sleeps.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio
import pytest

from conftest import LogCapture
from ragline import CancelReason, Cause, Lifetime, LifetimeError, Supervisor

pytestmark = [pytest.mark.anyio, pytest.mark.both_backends]

BOUND = 5.0  # generous wall-clock bound: only hit when a test would otherwise hang


@pytest.fixture
def supervisor_logs(logs: LogCapture) -> LogCapture:
    return logs


class Sibling:
    """A background task that runs until the test lets it finish."""

    def __init__(self) -> None:
        self.started = anyio.Event()
        self.go = anyio.Event()
        self.finished = anyio.Event()
        self.reason_at_end: CancelReason | None = None

    async def __call__(self, lifetime: Lifetime) -> None:
        self.started.set()
        await self.go.wait()
        self.reason_at_end = lifetime.reason
        self.finished.set()


async def test_started_task_runs_in_the_background_inside_its_lifetime() -> None:
    """start() returns at once; func runs later, given the lifetime it runs in."""
    root = Lifetime.root("app")
    job = root.child("request", values={"request_id": "r-1"}).detach("bot_turn")
    ran = anyio.Event()
    seen: list[tuple[Lifetime, object]] = []

    async def func(lifetime: Lifetime) -> None:
        seen.append((lifetime, lifetime.get("request_id")))
        ran.set()

    with anyio.fail_after(BOUND):
        async with Supervisor.running(root) as sup:
            sup.start(job, func)
            assert seen == []  # not run inline
            await ran.wait()
    assert seen == [(job, "r-1")]


async def test_active_counts_tasks_in_flight() -> None:
    """active goes up on start and down when a task ends."""
    root = Lifetime.root("app")
    sibling = Sibling()
    with anyio.fail_after(BOUND):
        async with Supervisor.running(root) as sup:
            assert sup.active == 0
            sup.start(root.child("request").detach("job"), sibling)
            assert sup.active == 1
            await sibling.started.wait()
            sibling.go.set()
            await sibling.finished.wait()
        assert sup.active == 0


async def test_task_outlives_the_request_it_was_detached_from() -> None:
    """The request ends (client gone); the detached task keeps running to its end."""
    root = Lifetime.root("app")
    request = root.child("request")
    sibling = Sibling()
    with anyio.fail_after(BOUND):
        async with Supervisor.running(root) as sup:
            with request:
                sup.start(request.detach("bot_turn"), sibling)
                await sibling.started.wait()
                request.cancel(Cause.CLIENT_DISCONNECTED)
                await anyio.sleep_forever()  # the request's block ends here
            assert request.cancelled
            assert not sibling.finished.is_set()
            sibling.go.set()
            await sibling.finished.wait()
    assert sibling.reason_at_end is None


async def test_timeout_in_a_detached_task_is_a_warning_and_siblings_survive(
    supervisor_logs: LogCapture,
) -> None:
    """A task's own timeout is logged as a warning; it neither propagates nor stops others."""
    root = Lifetime.root("app")
    request = root.child("request")
    sibling = Sibling()

    async def too_slow(lifetime: Lifetime) -> None:
        await anyio.sleep_forever()

    with anyio.fail_after(BOUND):
        async with Supervisor.running(root) as sup:
            sup.start(request.detach("sibling"), sibling)
            sup.start(request.detach("bot_turn", timeout=0.01), too_slow)
            record = await supervisor_logs.wait_for(lambda r: "timed out" in r.getMessage())
            assert sup.active == 1
            await sibling.started.wait()
            assert not sibling.finished.is_set()
            sibling.go.set()
            await sibling.finished.wait()
    assert record.levelno == logging.WARNING
    assert record.name == "ragline.supervisor"
    assert "app/request/bot_turn" in record.getMessage()
    assert record.__dict__["cause"] == "timeout"
    assert supervisor_logs.at_least(logging.ERROR) == []
    assert sibling.reason_at_end is None


async def test_failing_task_is_logged_and_siblings_keep_running(
    supervisor_logs: LogCapture,
) -> None:
    """An exception in one task is logged with its traceback; the others carry on."""
    root = Lifetime.root("app")
    request = root.child("request")
    sibling = Sibling()

    async def broken(lifetime: Lifetime) -> None:
        raise RuntimeError("index is corrupt")

    with anyio.fail_after(BOUND):
        async with Supervisor.running(root) as sup:
            sup.start(request.detach("sibling"), sibling)
            sup.start(request.detach("reindex"), broken)
            record = await supervisor_logs.wait_for(lambda r: r.levelno == logging.ERROR)
            assert sup.active == 1
            assert not root.cancelled  # the failure did not tear anything down
            await sibling.started.wait()
            assert not sibling.finished.is_set()
            sibling.go.set()
            await sibling.finished.wait()
    assert record.name == "ragline.supervisor"
    assert "app/request/reindex" in record.getMessage()
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], RuntimeError)
    assert sibling.reason_at_end is None


async def test_leaving_the_block_cancels_running_tasks_with_cause_shutdown() -> None:
    """Closing the supervisor cancels what still runs; each task sees cause shutdown."""
    root = Lifetime.root("app")
    request = root.child("request")
    started = [anyio.Event(), anyio.Event()]
    seen: list[CancelReason | None] = []
    woke_normally: list[bool] = []

    def forever(started: anyio.Event) -> Callable[[Lifetime], object]:
        async def func(lifetime: Lifetime) -> None:
            started.set()
            try:
                await anyio.sleep_forever()
                woke_normally.append(True)
            finally:
                seen.append(lifetime.reason)

        return func

    with anyio.fail_after(BOUND):
        async with Supervisor.running(root) as sup:
            sup.start(request.detach("bot_turn"), forever(started[0]))
            sup.start(request.detach("reindex", timeout=60), forever(started[1]))
            for event in started:
                await event.wait()
        assert sup.active == 0
    assert woke_normally == []
    assert len(seen) == 2
    for reason in seen:
        assert reason is not None
        assert reason.cause is Cause.SHUTDOWN
        assert reason.origin == "app"


async def test_task_started_just_before_closing_is_cancelled_with_shutdown() -> None:
    """A task that had not begun when the block ended starts already cancelled."""
    root = Lifetime.root("app")
    seen: list[CancelReason | None] = []
    woke_normally: list[bool] = []

    async def func(lifetime: Lifetime) -> None:
        try:
            await anyio.sleep_forever()
            woke_normally.append(True)
        finally:
            seen.append(lifetime.reason)

    with anyio.fail_after(BOUND):
        async with Supervisor.running(root) as sup:
            sup.start(root.child("request").detach("bot_turn"), func)
    assert woke_normally == []
    assert len(seen) == 1
    assert seen[0] is not None
    assert seen[0].cause is Cause.SHUTDOWN


async def test_start_outside_running_raises_lifetime_error() -> None:
    """A supervisor accepts work only between entering and leaving running()."""
    root = Lifetime.root("app")

    async def func(lifetime: Lifetime) -> None:
        raise AssertionError("must not run")

    with pytest.raises(LifetimeError):
        Supervisor(root).start(root.child("request").detach("early"), func)
    async with Supervisor.running(root) as sup:
        pass
    with pytest.raises(LifetimeError):
        sup.start(root.child("request").detach("late"), func)


async def test_start_rejects_a_lifetime_from_another_tree() -> None:
    """Work must belong to the supervisor's root, or shutdown would not reach it."""
    root = Lifetime.root("app")
    other = Lifetime.root("other")

    async def func(lifetime: Lifetime) -> None:
        raise AssertionError("must not run")

    with anyio.fail_after(BOUND):
        async with Supervisor.running(root) as sup:
            with pytest.raises(LifetimeError):
                sup.start(other.child("request").detach("job"), func)
            assert sup.active == 0
