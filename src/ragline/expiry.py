"""What the application keeps for a while and then forgets: stored responses and
conversations (``RAGLINE_RESPONSES_TTL``), the bot's answers and their feedback
(``RAGLINE_FEEDBACK_TTL``). One loop on the application's supervisor looks for what
has expired every ``RAGLINE_RESPONSES_SWEEP`` seconds; a store that is down skips a
round, never the application."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence

import anyio

from .errors import UpstreamError
from .lifetime import Lifetime

__all__ = ["Expiry", "Sweep"]

log = logging.getLogger("ragline.expiry")

Sweep = Callable[[float, Lifetime], Awaitable[int]]
"""Forget what has expired by ``now`` (seconds since the epoch): how many records went."""


class Expiry:
    """Runs each named sweep every ``period`` seconds, for the life of ``run``'s lifetime."""

    def __init__(self, period: float, sweeps: Sequence[tuple[str, Sweep]]) -> None:
        self.period = period
        self.sweeps = list(sweeps)

    async def run(self, lifetime: Lifetime) -> None:
        """The loop (the application's supervisor runs it)."""
        while True:
            await anyio.sleep(self.period)
            await self.once(lifetime)

    async def once(self, lifetime: Lifetime) -> None:
        """One round of every sweep."""
        for name, sweep in self.sweeps:
            try:
                gone = await sweep(time.time(), lifetime)
            except UpstreamError as exc:
                log.warning(
                    "%s expiry skipped: %s", name, exc.message, extra={"cause": "unavailable"}
                )
                continue
            if gone:
                log.info(f"{name} expired", extra={"count": gone})
