"""Running one tool call: in its own span and lifetime, as a task of the application's
supervisor, so that a tool that ignores its cancellation is left behind and reported as
orphaned instead of holding up its caller."""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
from pydantic import BaseModel

from .errors import StageTimeout
from .lifetime import Lifetime
from .metrics import Metrics
from .models import Source, ToolCall
from .supervisor import Supervisor
from .threads import CancelToken, ThreadBridge
from .tools import Tool, ToolArgumentsError, render
from .tracing import Tracing, mark_failed

__all__ = ["ToolExecutor", "ToolOutcome", "ToolStatus", "tool_error"]

log = logging.getLogger("ragline.agent")

ToolStatus = Literal[
    "ok", "error", "invalid_arguments", "unknown_tool", "timeout", "orphaned", "cancelled"
]


class ToolOutcome(BaseModel):
    """One tool call and what came of it; ``output`` is what the model read."""

    id: str
    name: str
    arguments: str
    status: ToolStatus
    output: str = ""
    duration_ms: float = 0.0


@dataclass(eq=False)
class _Box:
    """Where a supervised tool task leaves its outcome."""

    value: Any = None
    ok: bool = False  # the function returned a value
    error: Exception | None = None
    done: anyio.Event = field(default_factory=anyio.Event)  # the task has ended
    returned: threading.Event = field(default_factory=threading.Event)  # the function has


class ToolExecutor:
    """Runs tool calls as tasks of the application's supervisor."""

    def __init__(
        self,
        supervisor: Supervisor,
        *,
        threads: ThreadBridge,
        tracing: Tracing,
        metrics: Metrics,
    ) -> None:
        self._supervisor = supervisor
        self._threads = threads
        self._tracing = tracing
        self._metrics = metrics

    async def call(
        self,
        call: ToolCall,
        tool: Tool | None,
        life: Lifetime,
        outcome: ToolOutcome,
        sources: list[Source],
        *,
        limit: float | None,
        grace: float,
        max_chars: int,
    ) -> None:
        """Run ``call`` of ``tool`` (``None``: unknown) in its own span and a child of
        ``life`` bounded by ``limit`` seconds (the tool's own, if it has one), into
        ``outcome``; sources it returns join ``sources``. Raises only the cancellation
        of its owner."""
        timeout = limit
        if tool is not None and tool.timeout is not None:
            timeout = tool.timeout
        tool_life = life.child(f"tool-{call.name}-{call.id}", timeout=timeout)
        attributes = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": call.name,
            "gen_ai.tool.call.id": call.id,
            "gen_ai.tool.type": "function",
        }
        began = time.monotonic()
        with self._tracing.span(f"execute_tool {call.name}", tool_life, attributes) as span:
            try:
                if tool is None:
                    outcome.status = "unknown_tool"
                    outcome.output = tool_error("unknown_tool", f"there is no tool {call.name!r}")
                else:
                    span.set_attribute("gen_ai.tool.description", tool.description)
                    await self._execute(
                        tool, call, life, tool_life, outcome, sources, grace, max_chars
                    )
            except anyio.get_cancelled_exc_class():
                outcome.status = "cancelled"
                raise
            finally:
                outcome.duration_ms = round((time.monotonic() - began) * 1000, 3)
                span.set_attribute("ragline.tool.status", outcome.status)
                self._metrics.tool_calls.labels(call.name, outcome.status).inc()
            if outcome.status in ("timeout", "orphaned"):
                mark_failed(span, StageTimeout(f"tool {call.name}", timeout))
                span.set_attribute("ragline.tool.orphaned", outcome.status == "orphaned")
            elif outcome.status != "ok":
                span.set_attribute("error.type", outcome.status)

    async def _execute(
        self,
        tool: Tool,
        call: ToolCall,
        life: Lifetime,
        tool_life: Lifetime,
        outcome: ToolOutcome,
        sources: list[Source],
        grace: float,
        max_chars: int,
    ) -> None:
        try:
            args = tool.parse(call.arguments)
        except ToolArgumentsError as exc:
            outcome.status = "invalid_arguments"
            outcome.output = tool_error("invalid_arguments", exc.message)
            return
        supervisor = self._supervisor
        box = _Box()

        async def body(life: Lifetime) -> None:
            try:
                if tool.blocking:

                    def work(token: CancelToken) -> Any:
                        try:
                            return tool.func(args, token)
                        finally:
                            box.returned.set()

                    box.value = await self._threads.run(life, work)
                else:
                    try:
                        box.value = await tool.func(args, life)
                    finally:
                        box.returned.set()
                box.ok = True
            except Exception as exc:  # noqa: BLE001 - handed to the model as the result
                box.error = exc
            finally:
                box.done.set()

        supervisor.start(tool_life, body)
        limit_text = f"{tool_life.timeout:g}s" if tool_life.timeout is not None else "its time"
        try:
            limit = tool_life.timeout + grace if tool_life.timeout is not None else None
            with anyio.move_on_after(limit):
                await box.done.wait()
            if box.done.is_set() and not box.returned.is_set() and tool_life.cancelled:
                await self._threads.call(life, box.returned.wait, grace)  # a blocking tool's thread
        except anyio.get_cancelled_exc_class():
            # The owner went away: the tool's lifetime is cancelled with it. Do not wait
            # for it; look later whether it really stopped.
            _watch(call.name, box.returned, grace, self._metrics)
            raise
        if box.ok:
            outcome.output = render(box.value, max_chars)
            sources.extend(_sources(box.value, sources))
        elif box.error is not None:
            outcome.status = "error"
            outcome.output = tool_error("error", _describe(box.error))
        elif box.returned.is_set():
            outcome.status = "timeout"
            outcome.output = tool_error("timeout", f"the tool did not finish within {limit_text}")
        else:
            outcome.status = "orphaned"
            outcome.output = tool_error(
                "timeout", f"the tool did not finish within {limit_text} and was abandoned"
            )
            _orphaned(call.name, grace, self._metrics)


def tool_error(kind: str, message: str) -> str:
    """A tool result that tells the model what went wrong."""
    return json.dumps({"error": {"type": kind, "message": message}}, ensure_ascii=False)


def _describe(exc: Exception) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text[:500]


def _sources(value: Any, have: list[Source]) -> list[Source]:
    if not isinstance(value, list):
        return []
    known = {(s.document_id, s.chunk_index) for s in have}
    found = []
    for item in value:
        if isinstance(item, Source) and (item.document_id, item.chunk_index) not in known:
            known.add((item.document_id, item.chunk_index))
            found.append(item)
    return found


def _orphaned(name: str, grace: float, metrics: Metrics) -> None:
    log.warning(
        "orphaned tool: %s still running %gs after its cancellation",
        name,
        grace,
        extra={"tool": name},
    )
    metrics.orphaned_tools.labels(name).inc()


def _watch(name: str, returned: threading.Event, grace: float, metrics: Metrics) -> None:
    # A timer thread: the loop's task is unwinding and must not wait.
    def check() -> None:
        if not returned.is_set():
            _orphaned(name, grace, metrics)

    timer = threading.Timer(grace, check)
    timer.daemon = True
    timer.start()
