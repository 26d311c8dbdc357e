"""The thread bridge: blocking and CPU-bound work under a lifetime.

The worker thread receives a :class:`CancelToken` it can poll and on which it can hang a
callback (llama.cpp's abort callback, a socket close). On cancellation the awaiting task
returns at once, the token is set with the cause, and a thread that is still running after
``orphan_grace`` seconds is logged as orphaned. The OpenTelemetry context crosses into the
thread (anyio copies the context variables).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Concatenate, ParamSpec, TypeVar

import anyio
import anyio.to_thread

from .lifetime import CancelReason, Cause, Lifetime

__all__ = ["CancelToken", "ThreadBridge", "ThreadCancelled"]

P = ParamSpec("P")
T = TypeVar("T")

log = logging.getLogger("ragline.threads")


class ThreadCancelled(BaseException):
    """Raised inside a worker thread by :meth:`CancelToken.raise_if_cancelled`.

    A cancellation, not an error: like anyio's cancellation exception it derives from
    ``BaseException``, so that an ``except Exception`` in blocking code does not swallow
    it (docs/ARCHITECTURE.md, "Errors and cancellations")."""

    def __init__(self, reason: CancelReason) -> None:
        super().__init__(f"cancelled: {reason.cause} (from {reason.origin})")
        self.reason = reason


class CancelToken:
    """What a worker thread sees of its lifetime. Thread-safe."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._reason: CancelReason | None = None
        self._callbacks: list[Callable[[CancelReason], object]] = []

    @property
    def cancelled(self) -> bool:
        """Poll this between units of work."""
        return self._event.is_set()

    @property
    def reason(self) -> CancelReason | None:
        """Why the owner went away, once it has."""
        return self._reason

    def raise_if_cancelled(self) -> None:
        """Unwind the thread with :class:`ThreadCancelled` if the owner has gone."""
        if self._reason is not None:
            raise ThreadCancelled(self._reason)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until cancelled or ``timeout`` passes; an interruptible sleep."""
        return self._event.wait(timeout)

    def on_cancel(self, callback: Callable[[CancelReason], object]) -> None:
        """Run ``callback(reason)`` on cancellation (at once if already cancelled).

        The callback runs in the thread that cancels (the event loop's), or at once in
        the caller's thread if the token is already cancelled; it must be quick and
        thread-safe.
        """
        with self._lock:
            reason = self._reason
            if reason is None:
                self._callbacks.append(callback)
                return
        callback(reason)

    def _cancel(self, reason: CancelReason) -> None:
        with self._lock:
            if self._reason is not None:
                return
            self._reason = reason
            callbacks, self._callbacks = self._callbacks, []
            self._event.set()
        for callback in callbacks:
            try:
                callback(reason)
            except Exception:  # a broken hook must not stop the cancellation
                log.exception("cancel callback failed")


class ThreadBridge:
    """Runs blocking calls in worker threads under a lifetime.

    ``on_orphan`` is told (with the function's name) when a thread outlives its
    cancellation by more than ``orphan_grace`` seconds. ``max_threads`` bounds the calls
    being awaited; a thread abandoned on cancellation no longer counts against it (it is
    watched as a possible orphan instead).
    """

    def __init__(
        self,
        *,
        orphan_grace: float = 5.0,
        max_threads: int | None = None,
        on_orphan: Callable[[str], object] | None = None,
    ) -> None:
        self.orphan_grace = orphan_grace
        self._limiter = anyio.CapacityLimiter(max_threads) if max_threads else None
        self._on_orphan = on_orphan

    async def run(
        self,
        lifetime: Lifetime,
        func: Callable[Concatenate[CancelToken, P], T],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Call ``func(token, *args, **kwargs)`` in a worker thread."""
        await lifetime.checkpoint()
        token = CancelToken()
        started = threading.Event()
        done = threading.Event()
        name = getattr(func, "__qualname__", repr(func))

        def work() -> T:
            started.set()
            try:
                token.raise_if_cancelled()
                return func(token, *args, **kwargs)
            finally:
                done.set()

        try:
            return await anyio.to_thread.run_sync(
                work, abandon_on_cancel=True, limiter=self._limiter
            )
        except anyio.get_cancelled_exc_class():
            reason = lifetime.reason or CancelReason(
                Cause.EXPLICIT, "<outside any lifetime>", 0.0, "cancelled by an enclosing scope"
            )
            token._cancel(reason)
            # A call cancelled before a thread picked it up never runs: nothing to orphan.
            if started.is_set() and not done.is_set():
                self._watch(name, done, reason)
            raise

    async def call(
        self, lifetime: Lifetime, func: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """:meth:`run` for a short blocking call that has no use for a token (SQLite, a
        client SDK): the caller still returns at once on cancellation."""

        def work(token: CancelToken) -> T:
            return func(*args, **kwargs)

        work.__qualname__ = getattr(func, "__qualname__", repr(func))
        return await self.run(lifetime, work)

    def _watch(self, name: str, done: threading.Event, reason: CancelReason) -> None:
        # A timer thread, not a task: it must fire even if the loop is shutting down.
        def check() -> None:
            if done.is_set():
                return
            log.warning(
                "orphaned thread: %s still running %gs after cancellation",
                name,
                self.orphan_grace,
                extra={"cause": str(reason.cause), "origin": reason.origin, "thread_func": name},
            )
            if self._on_orphan is not None:
                self._on_orphan(name)

        timer = threading.Timer(self.orphan_grace, check)
        timer.daemon = True
        timer.start()
