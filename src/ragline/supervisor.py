"""The application-owned task group for work that outlives a request.

Every task started here runs inside its own lifetime (usually one made with
:meth:`Lifetime.detach`), so it obeys shutdown and its own timeout. A task's failure is
logged and never tears down its siblings; a task's timeout is a warning, not an error.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from types import TracebackType

import anyio
from anyio.abc import TaskGroup

from .errors import StageTimeout
from .lifetime import Cause, Lifetime, LifetimeError

__all__ = ["Supervisor"]

log = logging.getLogger("ragline.supervisor")


class Supervisor:
    """Owns background work. Built before it runs, so that the parts that start work on
    it can be given it when they are built; ``async with supervisor:`` runs it."""

    def __init__(self, root: Lifetime) -> None:
        self.root = root
        self._group: TaskGroup | None = None
        self._running: set[Lifetime] = set()

    @property
    def running_now(self) -> bool:
        """Whether it runs: between ``async with`` and its end."""
        return self._group is not None

    @property
    def active(self) -> int:
        """How many supervised tasks are in flight."""
        return len(self._running)

    def start(self, lifetime: Lifetime, func: Callable[[Lifetime], Awaitable[object]]) -> None:
        """Run ``func(lifetime)`` in the background inside ``lifetime``."""
        if self._group is None:
            raise LifetimeError("supervisor is not running")
        if lifetime.root_lifetime is not self.root:
            raise LifetimeError(f"{lifetime.path} does not belong to {self.root.path}")
        self._running.add(lifetime)
        self._group.start_soon(self._run, lifetime, func, name=lifetime.path)

    async def _run(self, lifetime: Lifetime, func: Callable[[Lifetime], Awaitable[object]]) -> None:
        try:
            with lifetime:
                await func(lifetime)
            reason = lifetime.reason
            if reason is not None:
                log.info(
                    "%s cancelled",
                    lifetime.path,
                    extra={"cause": str(reason.cause), "origin": reason.origin},
                )
        except StageTimeout as exc:
            log.warning(
                "%s timed out after %ss",
                lifetime.path,
                exc.timeout,
                extra={"cause": "timeout", "origin": lifetime.path},
            )
        except Exception:
            log.exception("background task %s failed", lifetime.path)
        finally:
            self._running.discard(lifetime)

    async def __aenter__(self) -> Supervisor:
        """Start supervising: from now on :meth:`start` runs tasks."""
        if self._group is not None:
            raise LifetimeError("supervisor is already running")
        group = anyio.create_task_group()
        await group.__aenter__()
        self._group = group
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        """Cancel what is still running with cause ``shutdown`` and wait for it."""
        group, self._group = self._group, None
        assert group is not None
        self.root.cancel(Cause.SHUTDOWN, "supervisor closing")
        # The task group's own exit, not a cleanup: it waits for the tasks just cancelled.
        return bool(await group.__aexit__(exc_type, exc, tb))  # noqa: ASYNC102

    @classmethod
    @asynccontextmanager
    async def running(cls, root: Lifetime) -> AsyncIterator[Supervisor]:
        """Supervise background work for the life of the block.

        Leaving the block cancels what is still running with cause ``shutdown`` and
        waits for it to unwind.
        """
        async with cls(root) as supervisor:
            yield supervisor
