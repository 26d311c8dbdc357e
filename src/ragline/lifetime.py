"""Lifetimes: who owns a piece of work, and why it stopped.

A :class:`Lifetime` is a node in a tree rooted at the application. Entering one
(``with lifetime:``) opens an anyio cancel scope; cancelling a lifetime cancels its scope
and the scopes of all attached descendants, and records a :class:`CancelReason`. The first
cause wins: a descendant reports the earliest reason on its chain, with the path of the
lifetime where it began.

A lifetime with its own ``timeout`` turns the expiry of that timeout into
:class:`~ragline.errors.StageTimeout` when its block exits; its descendants see a
cancellation with cause ``deadline``. A cancellation inherited from above passes through
untouched.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import Any

import anyio
import anyio.lowlevel
from opentelemetry import context as otel_context

from .errors import RagLineError, StageTimeout

__all__ = ["CancelReason", "Cause", "Lifetime", "LifetimeError"]


class Cause(StrEnum):
    """Why a piece of work was cancelled."""

    CLIENT_DISCONNECTED = "client_disconnected"
    SHUTDOWN = "shutdown"
    DEADLINE = "deadline"
    EXPLICIT = "explicit"
    REPETITION = "repetition"  # the degeneration guard: the generation began to loop
    UNGROUNDED = "ungrounded"  # the grounding guard: a sentence no passage supports


@dataclass(frozen=True, slots=True)
class CancelReason:
    """A cause, the lifetime where it began, and when (``time.monotonic()``)."""

    cause: Cause
    origin: str
    at: float
    detail: str = ""


class LifetimeError(RagLineError, RuntimeError):
    """A lifetime was used against its rules (entered twice, checked from outside)."""


_PRUNE_FROM = 16  # children listed before the dead among them are first dropped


class Lifetime:
    """The owner of a piece of work. See the module docstring."""

    __slots__ = (
        "__weakref__",
        "_cancel_parent",
        "_children",
        "_context",
        "_context_token",
        "_deadline_mono",
        "_entered",
        "_exited",
        "_hooks",
        "_parent_propagated",
        "_prune_at",
        "_reason",
        "_scope",
        "_values",
        "detached",
        "name",
        "path",
        "timeout",
    )

    def __init__(
        self,
        name: str,
        *,
        parent: Lifetime | None = None,
        timeout: float | None = None,
        values: Mapping[str, Any] | None = None,
        detached: bool = False,
    ) -> None:
        if timeout is not None and (math.isnan(timeout) or timeout < 0):
            raise ValueError("timeout must be a non-negative number or None")
        self.name = name
        self.path: str = f"{parent.path}/{name}" if parent is not None else name
        self.timeout = timeout
        self.detached = detached
        base: dict[str, Any] = dict(parent._values) if parent is not None else {}
        base.update(values or {})
        self._values: dict[str, Any] = base
        # A detached lifetime obeys the root (shutdown) and nothing in between.
        if parent is None:
            self._cancel_parent: Lifetime | None = None
        else:
            self._cancel_parent = parent.root_lifetime if detached else parent
        # Registered at creation, weakly: a cancellation must reach every descendant,
        # whether or not the lifetimes between them were ever entered. Made on the first
        # child (most lifetimes are leaves); a list of references, as a WeakSet costs
        # about 0.8 KiB more per held stream. Dead ones are dropped as the list doubles.
        self._children: list[weakref.ref[Lifetime]] | None = None
        self._prune_at = _PRUNE_FROM
        self._reason: CancelReason | None = None
        self._scope: anyio.CancelScope | None = None
        self._entered = False
        self._exited = False
        self._parent_propagated = False
        self._deadline_mono: float | None = None
        self._context = otel_context.get_current() if detached else None
        if self._cancel_parent is not None:
            self._cancel_parent._adopt(self)
        self._context_token: object | None = None
        self._hooks: list[Callable[[], object]] | None = None

    def _adopt(self, child: Lifetime) -> None:
        children = self._children
        if children is None:
            children = self._children = []
        elif len(children) >= self._prune_at:
            children[:] = [ref for ref in children if ref() is not None]
            self._prune_at = max(_PRUNE_FROM, 2 * len(children))
        children.append(weakref.ref(child))

    def _descendants(self) -> list[Lifetime]:
        """The children still alive (a copy: cancelling one may adopt more)."""
        return [child for ref in self._children or () if (child := ref()) is not None]

    # -- construction -------------------------------------------------------------
    @classmethod
    def root(cls, name: str = "app") -> Lifetime:
        """A new tree: the application's own lifetime."""
        return cls(name)

    def child(
        self, name: str, *, timeout: float | None = None, values: Mapping[str, Any] | None = None
    ) -> Lifetime:
        """A stage of this lifetime: ends when this one ends, optionally sooner."""
        return Lifetime(name, parent=self, timeout=timeout, values=values)

    def detach(
        self, name: str, *, timeout: float | None = None, values: Mapping[str, Any] | None = None
    ) -> Lifetime:
        """Work that outlives this lifetime: keeps its values and trace context,
        ignores its end, obeys the root's (shutdown), and has its own ``timeout``."""
        return Lifetime(name, parent=self, timeout=timeout, values=values, detached=True)

    def afterlife(self, name: str, timeout: float) -> Lifetime:
        """A short lifetime for the last words of work that has ended: it keeps this
        one's values, obeys no cancellation, and is bounded by its own ``timeout``. Use it
        through :meth:`last_words`, which also opens the shielded scope it needs."""
        if not 0 < timeout <= 10:
            raise ValueError("an afterlife needs a short timeout (at most 10 s)")
        last = Lifetime(name, timeout=timeout, values=self._values)
        last.path = f"{self.path}/{name}"
        return last

    @contextmanager
    def on_cancel(self, callback: Callable[[], object]) -> Iterator[None]:
        """Within the block, call ``callback`` the moment this lifetime or an ancestor is
        cancelled (at once if it already is), before any task unwinds: for what tells
        others to stop, such as closing an upstream connection. When 10,000 clients hang
        up together, the last upstream otherwise learns of it only after every stream
        before it has unwound. ``callback`` must be quick and must not raise. A deadline
        ends the block through the cancel scope, as usual."""
        if self.cancelled:
            callback()
            yield
            return
        hooks = self._hooks
        if hooks is None:
            hooks = self._hooks = []
        hooks.append(callback)
        try:
            yield
        finally:
            if callback in hooks:
                hooks.remove(callback)

    def _call_hooks(self) -> None:
        hooks, self._hooks = self._hooks, None
        for callback in hooks or ():
            callback()

    @contextmanager
    def last_words(self, timeout: float, name: str = "last-words") -> Iterator[Lifetime]:
        """A shielded block of at most ``timeout`` seconds for the last words of work
        that has ended (a final event, an "interrupted" message), even while the
        cancellation that ended it is under way. Yields the :meth:`afterlife` to pass to
        what the block calls; when the time is up the block is left quietly."""
        last = self.afterlife(name, timeout)
        with anyio.move_on_after(timeout, shield=True):
            yield last

    # -- queries ------------------------------------------------------------------
    @property
    def root_lifetime(self) -> Lifetime:
        """The application lifetime at the top of this tree."""
        node = self
        while node._cancel_parent is not None:
            node = node._cancel_parent
        return node

    @property
    def values(self) -> Mapping[str, Any]:
        """Values carried down the tree (request id, user, ...)."""
        return self._values

    def get(self, key: str, default: Any = None) -> Any:
        """One carried value."""
        return self._values.get(key, default)

    def bind(self, key: str, value: Any) -> None:
        """Carry ``value`` from now on: for an owner that learns it after making the
        lifetime (the boundary learns who the caller is), before any child exists."""
        self._values[key] = value

    @property
    def reason(self) -> CancelReason | None:
        """The earliest cancellation on this lifetime's chain, or ``None``."""
        best = self._own_reason()
        node = self._cancel_parent
        while node is not None:
            theirs = node._own_reason()
            if theirs is not None and (best is None or theirs.at < best.at):
                best = theirs
            node = node._cancel_parent
        return best

    @property
    def cancelled(self) -> bool:
        """Whether this lifetime, or one it obeys, has been cancelled."""
        # Asked per token while streaming: stop at the first cancelled node instead of
        # finding the earliest reason up the whole chain.
        node: Lifetime | None = self
        while node is not None:
            if node._reason is not None or (
                node._scope is not None
                and node._scope.cancel_called
                and node._own_reason() is not None
            ):
                return True
            node = node._cancel_parent
        return False

    def _own_reason(self) -> CancelReason | None:
        if self._reason is not None:
            return self._reason
        scope = self._scope
        if scope is not None and scope.cancel_called and not self._parent_propagated:
            # Only our own deadline cancels our scope without setting a reason.
            self._reason = self._deadline_reason()
        return self._reason

    def _deadline_reason(self) -> CancelReason:
        at = self._deadline_mono if self._deadline_mono is not None else time.monotonic()
        return CancelReason(Cause.DEADLINE, self.path, at, f"timeout {self.timeout:g}s")

    # -- cancellation ---------------------------------------------------------------
    def cancel(self, cause: Cause, detail: str = "") -> None:
        """Cancel this lifetime and every attached descendant. The first cause wins.

        Must be called from the event loop's thread.
        """
        if self._own_reason() is None:
            self._reason = CancelReason(Cause(cause), self.path, time.monotonic(), detail)
        if self._scope is not None and not self._exited:
            self._scope.cancel()
        if self._hooks:
            self._call_hooks()
        for child in self._descendants():
            child._cancel_from_parent()

    def _cancel_from_parent(self) -> None:
        self._own_reason()  # pin a deadline that fired before the parent's cancel
        self._parent_propagated = True
        if self._scope is not None and not self._exited:
            self._scope.cancel()
        if self._hooks:
            self._call_hooks()
        for child in self._descendants():
            child._cancel_from_parent()

    # -- scope ----------------------------------------------------------------------
    def __enter__(self) -> Lifetime:
        if self._entered:
            raise LifetimeError(f"lifetime {self.path} entered twice")
        self._entered = True
        deadline = math.inf
        if self.timeout is not None:
            deadline = anyio.current_time() + self.timeout
            self._deadline_mono = time.monotonic() + self.timeout
        self._scope = anyio.CancelScope(deadline=deadline)
        self._scope.__enter__()
        if self._context is not None:
            self._context_token = otel_context.attach(self._context)
        parent = self._cancel_parent
        if parent is not None and parent.reason is not None:
            self._cancel_from_parent()
        if self._reason is not None:
            self._scope.cancel()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        assert self._scope is not None
        reason = self._own_reason()
        if reason is not None and reason.cause is Cause.DEADLINE and reason.origin == self.path:
            # Our deadline cancelled our own scope only: descendants running in other
            # tasks (a tool on the supervisor) learn of it here.
            for child in self._descendants():
                child._cancel_from_parent()
        self._exited = True
        if self._context_token is not None:
            otel_context.detach(self._context_token)  # type: ignore[arg-type]
            self._context_token = None
        swallowed = bool(self._scope.__exit__(exc_type, exc, tb))
        if swallowed:
            reason = self.reason
            if reason is not None and reason.cause is Cause.DEADLINE and reason.origin == self.path:
                raise StageTimeout(self.name, self.timeout) from None
        return swallowed

    async def checkpoint(self) -> None:
        """A cancellation point for batch loops: raises if this lifetime has ended."""
        await anyio.lowlevel.checkpoint_if_cancelled()
        if self.reason is not None:
            # Cancelled, yet the cancellation did not reach this task: the caller runs
            # outside the lifetime's scope, which is a bug in the caller.
            raise LifetimeError(f"{self.path} was cancelled but is checked from outside it")

    def __repr__(self) -> str:
        reason = self.reason
        state = f" cancelled={reason.cause}@{reason.origin}" if reason else ""
        return f"<Lifetime {self.path}{state}>"
