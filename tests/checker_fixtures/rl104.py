"""RL104: a shield without a deadline."""

import asyncio

import anyio


async def forever() -> None:
    with anyio.CancelScope(shield=True):  # expect: RL104
        await anyio.sleep(1)
    with anyio.CancelScope(shield=True, deadline=anyio.current_time() + 1):
        await anyio.sleep(1)
    with anyio.move_on_after(1, shield=True):
        await anyio.sleep(1)


async def with_asyncio(work: asyncio.Future[None]) -> None:
    await asyncio.shield(work)  # expect: RL104
    await asyncio.wait_for(asyncio.shield(work), 1)
