"""What the boundary knows of one request (:class:`RequestContext`), for endpoints: its
lifetime, who asks, how it is going. Endpoints find it with :func:`request_context`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import anyio
import anyio.lowlevel
from starlette.types import Scope

from ..access import Principal
from ..errors import Unauthorized
from ..lifetime import Lifetime
from ..metrics import Metrics
from ..outcomes import Outcome, Outcomes
from ..principals import Principals
from ..runtime import Runtime
from ..settings import Settings
from ..tracing import Tracing

__all__ = ["Host", "RequestContext", "caller", "request_context"]


class Flag:
    """An event that is only a boolean until something waits on it: most requests check
    whether their client left and never wait for it, and an event costs 0.7 KiB per held
    stream (anyio's wraps asyncio's, whose waiters are a deque)."""

    __slots__ = ("_event", "_set")

    def __init__(self) -> None:
        self._set = False
        self._event: anyio.Event | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        if self._event is not None:
            self._event.set()

    async def wait(self) -> None:
        if self._set:
            await anyio.lowlevel.checkpoint()  # a wait is a checkpoint, set or not
            return
        if self._event is None:
            self._event = anyio.Event()
        await self._event.wait()


class Host(Protocol):
    """What the boundary needs of whoever runs it: ragline's own :class:`Runtime`, or
    :class:`ragline.middleware.Ragline` in someone else's application."""

    settings: Settings
    lifetime: Lifetime
    tracing: Tracing
    metrics: Metrics
    outcomes: Outcomes
    principals: Principals


@dataclass(eq=False)
class RequestContext:
    """What the boundary knows of one request; endpoints find it in ``scope["ragline"]``."""

    request_id: str
    lifetime: Lifetime
    host: Host
    started: bool = False
    completed: bool = False
    status: int | None = None
    error_status: int | None = None  # an error reported inside a started (streamed) response
    disconnected: Flag = field(default_factory=Flag)
    timed_out: bool = False
    outcome: Outcome | None = None  # what /api/v1/requests/{id} tells of it afterwards
    principal: Principal | None = None  # who asks (None: no credential, public route)
    event_stream: bool = False  # the response is server-sent events

    @property
    def runtime(self) -> Runtime:
        """ragline's runtime, for ragline's own routes."""
        if not isinstance(self.host, Runtime):
            raise TypeError("this route needs ragline's application (create_app)")
        return self.host


def caller(ctx: RequestContext) -> Principal:
    """Who asks. Every route behind a key has someone (it answered 401 otherwise)."""
    if ctx.principal is None:
        raise Unauthorized("missing or invalid API key")
    return ctx.principal


def request_context(scope: Scope) -> RequestContext:
    """The boundary's context of a request, from an endpoint's scope."""
    ctx = scope.get("ragline")
    if not isinstance(ctx, RequestContext):
        raise TypeError("endpoint is running outside ragline's boundary")
    return ctx
