"""Notices from other replicas, through PostgreSQL's LISTEN/NOTIFY: one listening
connection per process, shared by everyone here who waits for news.

``DELETE /api/v1/runs/{id}`` on any replica sends ``run:<id>`` on ``ragline_cancel``; the
replica running that run cancels it at once. A run's replica sends the run's id on
``ragline_run`` whenever it saves news, so that readers on other replicas follow it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio

from .errors import UpstreamError
from .lifetime import Lifetime
from .providers.shared import PostgresShared

__all__ = ["Notices"]

log = logging.getLogger("ragline.notices")


class Notices:
    """Hands notices to callbacks (cancels) and to waiters (a run's news)."""

    def __init__(self, store: PostgresShared) -> None:
        self.store = store
        self.on_cancel: list[Callable[[str], None]] = []
        self._news: dict[str, anyio.Event] = {}
        self.listening = anyio.Event()

    def news(self, run_id: str) -> anyio.Event:
        """An event set when ``run_id`` next has news (or the listener reconnects)."""
        event = self._news.get(run_id)
        if event is None:
            event = self._news[run_id] = anyio.Event()
        return event

    def _wake(self, run_id: str) -> None:
        event = self._news.pop(run_id, None)
        if event is not None:
            event.set()

    async def _caught_up(self) -> None:
        # Whatever came while not listening is lost: every waiter reads again.
        for run_id in list(self._news):
            self._wake(run_id)
        self.listening.set()

    async def listen(self, lifetime: Lifetime) -> None:
        """Listen until ``lifetime`` ends; reconnect with backoff when the database goes."""
        delay = 0.5
        while True:
            try:
                async for channel, payload in self.store.notices(lifetime, ready=self._caught_up):
                    delay = 0.5
                    if channel == "ragline_cancel":
                        for callback in self.on_cancel:
                            callback(payload)
                    else:
                        self._wake(payload)
            except UpstreamError as exc:
                log.warning("not listening for other replicas: %s", exc.message)
            self.listening = anyio.Event()
            await anyio.sleep(delay)
            delay = min(delay * 2, 10.0)
