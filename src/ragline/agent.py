"""Agent loops: the model calls tools until it answers, or a bound stops it.

Generate → run the requested tool calls (side by side, each in a child lifetime with its
own timeout) → feed the results back → repeat. Every loop runs inside its owner's
lifetime (a request, a bot turn, a background run) under an overall deadline, and is
bounded by steps, tool calls, tokens and repetition. A bound ends the loop normally, with
a finish reason, the transcript so far and the usage summed over the steps; the owner's
going away ends it at once with the owner's cause.

Tools run as tasks of the application's :class:`~ragline.Supervisor`, not of the loop: a
tool that ignores its cancellation is left behind, reported as orphaned, and does not
hold up the answer.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import anyio
from pydantic import BaseModel, Field

from .chat import ChatPipeline, estimate_tokens
from .errors import StageTimeout
from .executor import ToolExecutor, ToolOutcome
from .lifetime import Cause, Lifetime
from .metrics import Metrics
from .models import ChatRequest, ChatResult, Message, Prompt, ToolCall, Usage
from .providers import OnDelta
from .settings import Settings
from .supervisor import Supervisor
from .threads import ThreadBridge
from .tools import ToolRegistry, check_tools
from .tracing import Tracing, set_attributes

__all__ = [
    "Agent",
    "AgentResult",
    "LoopLimits",
    "OnEvent",
    "Step",
    "ToolOutcome",
    "check_tools",
]

log = logging.getLogger("ragline.agent")

OnEvent = Callable[[str, dict[str, Any]], Awaitable[None]]
"""Receives the loop's progress: ``(event, data)``; see :meth:`Agent.run`."""


@dataclass(frozen=True, slots=True)
class LoopLimits:
    """The bounds of one loop. ``None`` means no bound of that kind."""

    max_steps: int = 8
    max_tool_calls: int = 32
    tool_timeout: float | None = 30.0
    token_budget: int | None = 50_000
    deadline: float | None = 120.0
    max_identical_calls: int = 2
    tool_cancel_grace: float = 0.5
    max_result_chars: int = 8_000

    def tightened(self, **values: float | None) -> LoopLimits:
        """These limits, with each given value taking over where it is tighter."""
        changes: dict[str, Any] = {}
        for name, value in values.items():
            if value is None:
                continue
            mine = getattr(self, name)
            changes[name] = value if mine is None else min(mine, value)
        return replace(self, **changes)

    @classmethod
    def from_settings(cls, settings: Settings) -> LoopLimits:
        return cls(
            max_steps=settings.agent_max_steps,
            max_tool_calls=settings.agent_max_tool_calls,
            tool_timeout=settings.agent_tool_timeout,
            token_budget=settings.agent_token_budget,
            deadline=settings.agent_deadline,
            max_identical_calls=settings.agent_max_identical_calls,
            tool_cancel_grace=settings.agent_tool_cancel_grace,
            max_result_chars=settings.agent_max_result_chars,
        )


class Step(BaseModel):
    """One model call and the tool calls it asked for."""

    index: int
    text: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    results: list[ToolOutcome] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)


class AgentResult(ChatResult):
    """A loop's answer: the last step's text, every step, the messages that followed the
    composed prompt, and the usage summed over the steps. ``usage.finish_reason`` says
    why the loop ended: ``stop``/``length`` (the model answered), ``tool_calls`` (the
    client's tools were called), ``budget_exhausted``, ``max_steps``, ``max_tool_calls``,
    ``repeated_tool_call``, ``deadline``, or ``cancelled``/``timeout`` (the owner's)."""

    steps: list[Step] = Field(default_factory=list)
    transcript: list[Message] = Field(default_factory=list)

    @property
    def finish_reason(self) -> str | None:
        return self.usage.finish_reason


class _Paragraphs:
    """Streamed text of successive steps, kept apart by a blank line (a step that says
    "Let me look that up." must not run into the answer of the next)."""

    def __init__(self) -> None:
        self.said = False

    def step(self, on_delta: OnDelta | None) -> OnDelta | None:
        if on_delta is None:
            return None
        first = True

        async def delta(piece: str) -> None:
            nonlocal first
            if first and self.said:
                piece = "\n\n" + piece
            first = False
            self.said = True
            await on_delta(piece)

        return delta


class _Stop(Exception):  # control flow inside the loop; never escapes it
    def __init__(self, reason: str) -> None:
        self.reason = reason


class Agent:
    """Runs agent loops over a chat pipeline and a registry of server-side tools.

    Tools run as tasks of ``supervisor``, the application's.
    """

    def __init__(
        self,
        pipeline: ChatPipeline,
        tools: ToolRegistry,
        supervisor: Supervisor,
        *,
        threads: ThreadBridge,
        tracing: Tracing,
        metrics: Metrics,
        limits: LoopLimits = LoopLimits(),
    ) -> None:
        self.pipeline = pipeline
        self.tools = tools
        self.limits = limits
        self._tracing = tracing
        self._metrics = metrics
        self._executor = ToolExecutor(supervisor, threads=threads, tracing=tracing, metrics=metrics)

    async def run(
        self,
        request: ChatRequest,
        lifetime: Lifetime,
        *,
        tools: ToolRegistry | None = None,
        limits: LoopLimits | None = None,
        on_delta: OnDelta | None = None,
        on_event: OnEvent | None = None,
        into: AgentResult | None = None,
    ) -> AgentResult:
        """Answer ``request`` with the server-side ``tools`` (default: all registered)
        and any client tools in ``request.tools``.

        Text streams to ``on_delta``; progress goes to ``on_event`` as ``step``
        ``{step}``, ``tool_call`` ``{step, id, name, arguments}``, ``tool_result``
        ``{step, id, name, status, output, duration_ms}`` and ``step_done`` ``{step,
        finish_reason, usage}``. A call of a client tool ends the loop with
        ``tool_calls`` in the result, for the client to run.
        """
        result = into if into is not None else AgentResult()
        server = tools if tools is not None else self.tools
        limits = limits or self.limits
        check_tools(request, server)
        request = request.model_copy(update={"tools": request.tools + server.specs()})
        agent = lifetime.child(
            "agent", timeout=limits.deadline, values={"collection": request.collection}
        )
        attributes = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "ragline"}
        with self._tracing.span("invoke_agent ragline", lifetime, attributes) as span:
            finish: str | None = None
            try:
                with agent:
                    base = await self.pipeline.prepare(request, agent, result)
                    finish = await self._loop(
                        base, agent, server, limits, result, on_delta, on_event
                    )
            except StageTimeout:
                reason = agent.reason
                if (
                    reason is None
                    or reason.cause is not Cause.DEADLINE
                    or reason.origin != agent.path
                ):
                    finish = "timeout"
                    raise
                finish = "deadline"  # the loop's own bound: a normal end
            except anyio.get_cancelled_exc_class():
                reason = lifetime.reason
                if reason is not None:
                    result.usage.cause = reason.cause
                    finish = "timeout" if reason.cause is Cause.DEADLINE else "cancelled"
                raise
            finally:
                result.usage.finish_reason = finish or "failed"
                self._metrics.agent_loops.labels(result.usage.finish_reason).inc()
                set_attributes(
                    span,
                    {
                        "ragline.agent.finish_reason": result.usage.finish_reason,
                        "ragline.agent.steps": len(result.steps),
                        "gen_ai.usage.input_tokens": result.usage.prompt_tokens,
                        "gen_ai.usage.output_tokens": result.usage.completion_tokens,
                    },
                )
        return result

    async def _loop(
        self,
        base: Prompt,
        agent: Lifetime,
        server: ToolRegistry,
        limits: LoopLimits,
        result: AgentResult,
        on_delta: OnDelta | None,
        on_event: OnEvent | None,
    ) -> str:
        seen: Counter[str] = Counter()
        calls_made = 0
        stream = _Paragraphs()
        client_names = {t.name for t in base.tools} - set(server.names)
        for index in range(1, limits.max_steps + 1):
            prompt = replace(base, messages=base.messages + tuple(result.transcript))
            try:
                prompt = self._within_budget(prompt, result.usage, limits)
            except _Stop as stop:
                return stop.reason
            step = Step(index=index)
            result.steps.append(step)
            if on_event is not None:
                await on_event("step", {"step": index})
            with (
                self._tracing.span("ragline.agent.step", agent, {"ragline.agent.step": index}),
                agent.child(f"step-{index}") as life,
            ):
                answer = ChatResult()
                try:
                    await self.pipeline.generate(prompt, life, answer, stream.step(on_delta))
                finally:
                    step.text = result.text = answer.text
                    step.usage = answer.usage
                    result.usage.add(answer.usage)
                calls = [
                    c if c.id else c.model_copy(update={"id": _call_id()})
                    for c in answer.tool_calls
                ]
                step.tool_calls = calls
                result.transcript.append(
                    Message(role="assistant", content=answer.text, tool_calls=tuple(calls))
                )
                if on_event is not None:
                    await on_event(
                        "step_done",
                        {
                            "step": index,
                            "finish_reason": answer.usage.finish_reason,
                            "usage": answer.usage.model_dump(mode="json"),
                        },
                    )
                if not calls:
                    return answer.usage.finish_reason or "stop"
                client = [c for c in calls if c.name in client_names]
                if client:
                    # The client runs its own tools: hand the calls over and stop.
                    result.tool_calls = client
                    return "tool_calls"
                try:
                    self._check_calls(calls, seen, calls_made, result.usage, index, limits)
                except _Stop as stop:
                    return stop.reason
                calls_made += len(calls)
                await self._run_calls(calls, server, life, limits, step, result, on_event)
        return "max_steps"

    def _within_budget(self, prompt: Prompt, used: Usage, limits: LoopLimits) -> Prompt:
        if limits.token_budget is None:
            return prompt
        remaining = limits.token_budget - used.total_tokens - estimate_tokens(prompt)
        if remaining <= 0:
            raise _Stop("budget_exhausted")
        # The step may not spend more than what is left.
        return replace(prompt, max_tokens=min(prompt.max_tokens or remaining, remaining))

    def _check_calls(
        self,
        calls: list[ToolCall],
        seen: Counter[str],
        calls_made: int,
        used: Usage,
        index: int,
        limits: LoopLimits,
    ) -> None:
        if limits.token_budget is not None and used.total_tokens >= limits.token_budget:
            raise _Stop("budget_exhausted")  # nothing left to read the results with
        if index >= limits.max_steps:
            raise _Stop("max_steps")  # no step left to read the results in
        if calls_made + len(calls) > limits.max_tool_calls:
            raise _Stop("max_tool_calls")
        for call in calls:
            seen[call.identity()] += 1
        if any(seen[call.identity()] > limits.max_identical_calls for call in calls):
            raise _Stop("repeated_tool_call")

    async def _run_calls(
        self,
        calls: list[ToolCall],
        server: ToolRegistry,
        life: Lifetime,
        limits: LoopLimits,
        step: Step,
        result: AgentResult,
        on_event: OnEvent | None,
    ) -> None:
        outcomes: list[ToolOutcome | None] = [None] * len(calls)

        async def one(i: int, call: ToolCall) -> None:
            if on_event is not None:
                await on_event(
                    "tool_call",
                    {
                        "step": step.index,
                        "id": call.id,
                        "name": call.name,
                        "arguments": call.arguments,
                    },
                )
            outcome = ToolOutcome(id=call.id, name=call.name, arguments=call.arguments, status="ok")
            outcomes[i] = outcome  # kept in the step even if the call is cut short
            await self._executor.call(
                call,
                server.get(call.name),
                life,
                outcome,
                result.sources,
                limit=limits.tool_timeout,
                grace=limits.tool_cancel_grace,
                max_chars=limits.max_result_chars,
            )
            if on_event is not None:
                await on_event("tool_result", {"step": step.index, **outcome.model_dump()})

        try:
            async with anyio.create_task_group() as tg:
                for i, call in enumerate(calls):
                    tg.start_soon(one, i, call)
        finally:
            step.results = [o for o in outcomes if o is not None]
        for call, outcome in zip(calls, outcomes, strict=True):
            assert outcome is not None
            result.transcript.append(
                Message(role="tool", content=outcome.output, tool_call_id=call.id)
            )


def _call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"
