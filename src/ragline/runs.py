"""Background runs: agent loops detached from the request that started them.

A run's lifetime is detached from its request (it keeps the request's values and trace
context, ignores its end) and obeys shutdown, an explicit cancel and its own timeout.
The process running a run saves its snapshot and events to the deployment's
:class:`~ragline.providers.coordination.RunLog` as they come (in memory for one process,
PostgreSQL for many), so that any process can read and follow it, and a cancel from any
process reaches it at once through a notice (:mod:`ragline.notices`). The last ``kept``
finished runs can be read back (a run in flight at shutdown ends ``cancelled`` with
cause ``shutdown``).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio

from .access import principal_of
from .agent import Agent, AgentResult, LoopLimits
from .errors import NotFound, Overloaded, RagLineError, StageTimeout, UpstreamError
from .lifetime import Cause, Lifetime
from .models import ChatRequest
from .notices import Notices
from .providers.coordination import Notice, RunLog, RunSave, WorkKey
from .supervisor import Supervisor
from .tools import ToolRegistry

__all__ = ["Job", "Run", "RunState", "Runs", "missing_run"]

log = logging.getLogger("ragline.runs")

RunState = Literal["running", "completed", "failed", "cancelled"]

# A run whose loop is stuck past its own deadline (a stage that ignores it) is still
# ended this long after.
_BACKSTOP = 5.0
# How long a run's last save may take once it has ended (cancelled, or shut down).
_LAST_SAVE = 2.0


@dataclass(eq=False)
class Run:
    """One background loop: its state, its result so far and its event log."""

    id: str
    request: ChatRequest
    lifetime: Lifetime
    owner: str  # the principal who started it
    created_at: float = field(default_factory=time.time)
    state: RunState = "running"
    finished_at: float | None = None
    error: dict[str, Any] | None = None
    result: AgentResult = field(default_factory=AgentResult)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    changed: anyio.Event = field(default_factory=anyio.Event)
    saved: int = 0  # events saved to the run log so far
    # Another kind of run (a background response) shows itself its own way: ``view``
    # makes its snapshot, ``ending`` adds its last events once its state is known (before
    # ``done``), and ``after`` runs in its last words, once saved (each None: a run's own).
    view: Callable[[Run], dict[str, Any]] | None = None
    ending: Callable[[Run], None] | None = None
    after: Callable[[Run, Lifetime], Awaitable[None]] | None = None

    @property
    def finished(self) -> bool:
        return self.state != "running"

    async def emit(self, event: str, data: dict[str, Any]) -> None:
        """Append to the event log and wake its readers."""
        self.events.append((event, data))
        self.changed.set()
        self.changed = anyio.Event()

    def close(self) -> None:
        """Log ``done`` with the outcome. The event stays set: readers see the end."""
        self.finished_at = time.time()
        if self.ending is not None:
            self.ending(self)
        snapshot = self.snapshot()
        keys = ("id", "state", "finish_reason", "cause", "usage", "error")
        self.events.append(("done", {k: snapshot.get(k) for k in keys}))
        self.changed.set()

    def snapshot(self) -> dict[str, Any]:
        """``GET /api/v1/runs/{id}`` (or what ``view`` makes of it)."""
        if self.view is not None:
            return self.view(self)
        result = self.result
        reason = self.lifetime.reason if self.state == "cancelled" else None
        return {
            "id": self.id,
            "owner": self.owner,
            "query": self.request.query,
            "state": self.state,
            "finish_reason": result.usage.finish_reason,
            "cause": str(reason.cause) if reason else None,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
            "text": result.text,
            "tool_calls": [c.model_dump() for c in result.tool_calls],
            "steps": [s.model_dump(mode="json") for s in result.steps],
            "usage": result.usage.model_dump(mode="json"),
            "sources": [s.model_dump(mode="json") for s in result.sources],
            "error": self.error,
        }


Job = Callable[[Run, Lifetime], Awaitable[None]]
"""What a run does under its own lifetime, filling ``run.result`` and emitting events."""


def missing_run(run_id: str) -> NotFound:
    """The 404 of a run that does not exist (or is not the caller's)."""
    return NotFound(f"no run {run_id!r}", code="run_not_found")


class Runs:
    """Starts, tracks and cancels background runs, as tasks of the application's
    ``supervisor``."""

    def __init__(
        self,
        agent: Agent,
        supervisor: Supervisor,
        log: RunLog,
        notices: Notices,
        *,
        timeout: float | None,
        max_active: int,
        kept: int,
    ) -> None:
        self.log = log
        self.notices = notices
        notices.on_cancel.append(self.on_notice)
        self.agent = agent
        self.supervisor = supervisor
        self.timeout = timeout
        self.max_active = max_active
        self.kept = kept
        self._runs: OrderedDict[str, Run] = OrderedDict()
        self._active = 0

    def start(
        self,
        request: ChatRequest,
        owner: Lifetime,
        *,
        tools: ToolRegistry,
        limits: LoopLimits,
    ) -> Run:
        """Start an agent run detached from ``owner`` (the request), for its principal."""
        timeout = self.timeout
        if timeout is not None:
            limits = limits.tightened(deadline=timeout)
        backstop = limits.deadline + _BACKSTOP if limits.deadline is not None else None

        async def loop(run: Run, lifetime: Lifetime) -> None:
            await self.agent.run(
                run.request,
                lifetime,
                tools=tools,
                limits=limits,
                on_event=run.emit,
                into=run.result,
            )

        return self.launch(Run(f"run_{uuid.uuid4().hex}", request, owner, ""), loop, backstop)

    def launch(self, run: Run, job: Job, timeout: float | None) -> Run:
        """Run ``job`` for ``run``, detached from ``run.lifetime`` (the request's, until
        now), under ``timeout`` (None: the server's run timeout) and for its principal."""
        principal = principal_of(run.lifetime)
        if self._active >= self.max_active:
            raise Overloaded(f"{self._active} runs are in flight already; try again later")
        if timeout is None:
            timeout = self.timeout
        run_id = run.id
        run.lifetime = run.lifetime.detach("run", timeout=timeout, values={"run_id": run_id})
        run.owner = principal.name

        async def work(life: Lifetime) -> None:
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._persist, run, life)
                    await self._work(run, life, job)
                    tg.cancel_scope.cancel()
            finally:
                # last_words is a shielded scope with a deadline (flake8-async cannot see it)
                with life.last_words(_LAST_SAVE) as words:
                    await self.save(run, words)  # noqa: ASYNC102
                    if run.after is not None:
                        await run.after(run, words)  # noqa: ASYNC102

        self.supervisor.start(run.lifetime, work)  # may refuse: then nothing is registered
        self._runs[run_id] = run
        self._active += 1
        log.info("run started", extra={"run_id": run_id, "principal": principal.name})
        return run

    async def _work(self, run: Run, lifetime: Lifetime, job: Job) -> None:
        try:
            await job(run, lifetime)
            run.state = "completed"
        except anyio.get_cancelled_exc_class():
            reason = lifetime.reason
            if reason is not None and reason.cause is Cause.DEADLINE:
                run.state = "failed"  # the run's own backstop limit
                run.error = {"code": "timeout", "message": "the run ran past its own limit"}
            else:
                run.state = "cancelled"
            raise
        except StageTimeout as exc:
            run.state = "failed"
            run.error = {"code": exc.code, "message": exc.message, "cause": str(Cause.DEADLINE)}
        except RagLineError as exc:
            run.state = "failed"
            run.error = {"code": exc.code, "message": exc.message}
        except Exception:
            run.state = "failed"
            run.error = {"code": "internal_error", "message": "the run failed"}
            log.exception("run failed", extra={"run_id": run.id})
        finally:
            self._active -= 1
            run.close()
            self._forget_old()

    async def _persist(self, run: Run, lifetime: Lifetime) -> None:
        while True:
            changed = run.changed
            await self.save(run, lifetime)
            await changed.wait()

    async def save(self, run: Run, lifetime: Lifetime) -> None:
        """Save the run's snapshot and new events to the run log. A database that is down
        loses the news, not the run."""
        first = run.saved
        events = [(first + i, name, data) for i, (name, data) in enumerate(run.events[first:])]
        try:
            save = RunSave(run.id, run.state, run.snapshot(), events)
            await self.log.save_run(save, lifetime, kept=self.kept if run.finished else None)
        except UpstreamError as exc:
            log.warning("run not saved: %s", exc.message, extra={"run_id": run.id})
            return
        run.saved = first + len(events)

    async def snapshot(self, run_id: str, lifetime: Lifetime) -> dict[str, Any]:
        """The run's snapshot, from this process or, failing that, the run log."""
        run = self._runs.get(run_id)
        if run is not None:
            return run.snapshot()
        found = await self.log.run(run_id, lifetime)
        if found is None:
            raise missing_run(run_id)
        return found

    async def cancel_anywhere(self, run_id: str, lifetime: Lifetime) -> dict[str, Any]:
        """Cancel a run here, or tell the process that runs it; its snapshot."""
        if run_id in self._runs:
            return self.cancel(run_id).snapshot()
        found = await self.snapshot(run_id, lifetime)
        if found["state"] == "running":
            await self.notices.bus.publish(Notice("cancel", WorkKey.run(run_id)), lifetime)
        return found

    def on_notice(self, key: WorkKey) -> None:
        """A cancel notice from another process: a run's key cancels that run here."""
        run = self._runs.get(key.id) if key.kind == "run" else None
        if run is not None and not run.finished:
            run.lifetime.cancel(Cause.EXPLICIT, "cancelled through the API on another replica")

    def get(self, run_id: str) -> Run:
        """The run called ``run_id``."""
        run = self._runs.get(run_id)
        if run is None:
            raise missing_run(run_id)
        return run

    def cancel(self, run_id: str) -> Run:
        """Cancel a run with cause ``explicit`` (nothing happens to a finished one)."""
        run = self.get(run_id)
        if not run.finished:
            run.lifetime.cancel(Cause.EXPLICIT, "cancelled through the API")
        return run

    def _forget_old(self) -> None:
        finished = [r for r in self._runs.values() if r.finished]
        for run in finished[: max(len(finished) - self.kept, 0)]:
            del self._runs[run.id]
