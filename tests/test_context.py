"""The request context's parts: the flag that says the client left."""

from __future__ import annotations

import anyio
import pytest

from ragline.server.context import Flag

pytestmark = [pytest.mark.anyio, pytest.mark.both_backends]


async def test_a_waiter_wakes_when_the_flag_is_set() -> None:
    flag, woke = Flag(), anyio.Event()

    async def waiter() -> None:
        await flag.wait()
        woke.set()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            group.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            assert not woke.is_set()
            assert not flag.is_set()
            flag.set()
            await woke.wait()
    assert flag.is_set()


async def test_a_wait_on_a_set_flag_returns_yet_is_a_checkpoint() -> None:
    flag = Flag()
    flag.set()
    with anyio.CancelScope() as scope:
        scope.cancel()
        await flag.wait()  # cancelled here: a checkpoint, as an event's wait is
        pytest.fail("the wait did not check for cancellation")
    assert scope.cancelled_caught
