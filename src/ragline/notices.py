"""Notices from every process of the deployment, through its
:class:`~ragline.providers.coordination.NoticeBus`: one listener per process, shared by
everyone here who waits for news.

``DELETE /api/v1/runs/{id}`` on any replica publishes ``cancel run:<id>``; the process
running that run cancels it at once. A run's process publishes ``news run:<id>`` whenever
it saves the run, so that readers anywhere follow it; a Teams turn's end publishes
``news conversation:<id>`` so that the conversation's next turn, anywhere, may start.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable

import anyio

from .errors import UpstreamError
from .lifetime import Lifetime
from .providers.coordination import Notice, NoticeBus, WorkKey

__all__ = ["Notices"]

log = logging.getLogger("ragline.notices")


class Notices:
    """Hands ``cancel`` notices to callbacks and wakes the waiters of any notice's key."""

    def __init__(self, bus: NoticeBus) -> None:
        self.bus = bus
        self.on_cancel: list[Callable[[WorkKey], None]] = []
        # Weak: a waiter that gave up (its reader left) is forgotten with its event.
        self._waiters: weakref.WeakValueDictionary[WorkKey, anyio.Event] = (
            weakref.WeakValueDictionary()
        )

    def news(self, key: WorkKey) -> anyio.Event:
        """An event set by the next notice about ``key`` (or when the listener
        reconnects, since notices may have been lost): take it before reading the
        state it announces, so that nothing is missed."""
        event = self._waiters.get(key)
        if event is None:
            event = self._waiters[key] = anyio.Event()
        return event

    def _wake(self, key: WorkKey) -> None:
        event = self._waiters.pop(key, None)
        if event is not None:
            event.set()

    async def _caught_up(self) -> None:
        # Whatever came while not listening is lost: every waiter reads again.
        for key in list(self._waiters):
            self._wake(key)

    def _hand_out(self, notice: Notice) -> None:
        if notice.action == "cancel":
            for callback in self.on_cancel:
                callback(notice.key)
        self._wake(notice.key)

    async def listen(self, lifetime: Lifetime) -> None:
        """Listen until ``lifetime`` ends; listen again with backoff when the bus goes."""
        delay = 0.5
        while True:
            try:
                async for notice in self.bus.listen(lifetime, ready=self._caught_up):
                    delay = 0.5
                    self._hand_out(notice)
            except UpstreamError as exc:
                log.warning("not listening for other processes: %s", exc.message)
            await anyio.sleep(delay)
            delay = min(delay * 2, 10.0)
