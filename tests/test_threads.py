"""The thread bridge: blocking work in worker threads under a lifetime
(docs/ARCHITECTURE.md, contract rule 5).

Every test runs on asyncio and on trio. Worker threads block on ``threading.Event``s the
test releases; the event loop waits for threads through ``anyio.to_thread`` so it never
blocks; each wait has a generous bound.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from conftest import LogCapture
from ragline import CancelReason, CancelToken, Cause, Lifetime, LifetimeError, ThreadBridge
from ragline.threads import ThreadCancelled

pytestmark = [pytest.mark.anyio, pytest.mark.both_backends]

BOUND = 5.0  # generous wall-clock bound for any wait
GRACE = 0.05  # a short orphan grace, so no orphan watcher outlives its test for long


@pytest.fixture
def thread_logs(logs: LogCapture) -> LogCapture:
    return logs


class Orphans:
    """An ``on_orphan`` hook the test can wait on from the event loop."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.reported = threading.Event()

    def __call__(self, name: str) -> None:
        self.names.append(name)
        self.reported.set()


async def wait_in_thread(event: threading.Event) -> bool:
    """Wait for a ``threading.Event`` without blocking the event loop."""
    return await anyio.to_thread.run_sync(event.wait, BOUND)


def orphan_watchers() -> set[threading.Thread]:
    """The pending orphan checks (each a ``threading.Timer``)."""
    return {t for t in threading.enumerate() if isinstance(t, threading.Timer)}


def join_orphan_watchers(ignore: set[threading.Thread]) -> None:
    """Wait until every pending orphan check not in ``ignore`` has run."""
    for thread in orphan_watchers() - ignore:
        thread.join(BOUND)
        assert not thread.is_alive(), "an orphan check did not run in time"


async def run_until_cancelled(
    bridge: ThreadBridge,
    lifetime: Lifetime,
    func: Callable[[CancelToken], object],
    started: threading.Event,
    *,
    cancel: Callable[[], object] | None = None,
) -> None:
    """Run ``func`` through the bridge; once the thread has started, call ``cancel``
    (default: cancel ``lifetime`` as a client disconnect).

    Returns when the awaiting task has returned from the bridge.
    """

    async def cancel_when_started() -> None:
        assert await wait_in_thread(started), "the worker thread never started"
        if cancel is None:
            lifetime.cancel(Cause.CLIENT_DISCONNECTED, "owner went away")
        else:
            cancel()

    with anyio.fail_after(BOUND):
        async with anyio.create_task_group() as tg:
            tg.start_soon(cancel_when_started)
            with lifetime:
                await bridge.run(lifetime, func)
                pytest.fail("the bridge returned normally from a cancelled call")


# -- normal calls ----------------------------------------------------------------------


async def test_function_receives_a_token_and_its_result_is_returned() -> None:
    """func(token, *args, **kwargs) runs in a worker thread; its result comes back."""
    received: list[Any] = []
    loop_thread = threading.get_ident()

    def add(token: CancelToken, a: int, *, b: int) -> int:
        received.append((token, threading.get_ident()))
        return a + b

    request = Lifetime.root("app").child("request")
    with request:
        result = await ThreadBridge().run(request, add, 2, b=3)
    assert result == 5
    token, thread_id = received[0]
    assert isinstance(token, CancelToken)
    assert not token.cancelled
    assert token.reason is None
    assert thread_id != loop_thread


async def test_exception_raised_in_the_thread_propagates_to_the_caller() -> None:
    """A failure in the worker thread is raised from run() unchanged."""

    def fail(token: CancelToken) -> None:
        raise ValueError("model file is corrupt")

    request = Lifetime.root("app").child("request")
    with request, pytest.raises(ValueError, match="model file is corrupt"):
        await ThreadBridge().run(request, fail)


async def test_limited_bridge_runs_calls_normally() -> None:
    """A bridge with a thread limit still returns results."""
    bridge = ThreadBridge(max_threads=1)
    request = Lifetime.root("app").child("request")
    with request:
        results = [await bridge.run(request, lambda token, n=n: n * n) for n in range(3)]
    assert results == [0, 1, 4]


# -- cancellation ----------------------------------------------------------------------


async def test_cancellation_returns_at_once_while_the_thread_keeps_blocking() -> None:
    """The awaiting task is released on cancel even though the thread is still stuck."""
    started, release, finished = threading.Event(), threading.Event(), threading.Event()

    def stuck(token: CancelToken) -> None:
        started.set()
        release.wait(BOUND)
        finished.set()

    request = Lifetime.root("app").child("request")
    try:
        await run_until_cancelled(ThreadBridge(orphan_grace=GRACE), request, stuck, started)
        assert not finished.is_set(), "run() waited for the thread"
    finally:
        release.set()
    assert await wait_in_thread(finished)
    assert request.cancelled


async def test_cancellation_sets_the_token_with_the_lifetimes_reason() -> None:
    """The worker sees its token set, with the lifetime's cause and origin."""
    started, finished = threading.Event(), threading.Event()
    seen: dict[str, Any] = {}

    def cooperative(token: CancelToken) -> None:
        started.set()
        seen["woken"] = token.wait(BOUND)
        seen["reason"] = token.reason
        try:
            token.raise_if_cancelled()
        except ThreadCancelled as exc:
            seen["raised"] = exc
        finished.set()

    request = Lifetime.root("app").child("request")
    await run_until_cancelled(ThreadBridge(orphan_grace=GRACE), request, cooperative, started)
    assert await wait_in_thread(finished)
    assert seen["woken"] is True
    reason = seen["reason"]
    assert isinstance(reason, CancelReason)
    assert reason == request.reason
    assert reason.cause is Cause.CLIENT_DISCONNECTED
    assert reason.origin == "app/request"
    assert seen["raised"].reason == reason


async def test_cancel_token_reports_an_ancestors_cause() -> None:
    """A cancel from above reaches the thread with the ancestor's cause and origin."""
    started, finished = threading.Event(), threading.Event()
    seen: list[CancelReason | None] = []

    def cooperative(token: CancelToken) -> None:
        started.set()
        token.wait(BOUND)
        seen.append(token.reason)
        finished.set()

    root = Lifetime.root("app")
    request = root.child("request")
    stage = request.child("generate")
    with request:
        await run_until_cancelled(
            ThreadBridge(orphan_grace=GRACE),
            stage,
            cooperative,
            started,
            cancel=lambda: root.cancel(Cause.SHUTDOWN),
        )
    assert await wait_in_thread(finished)
    reason = seen[0]
    assert reason is not None
    assert reason.cause is Cause.SHUTDOWN
    assert reason.origin == "app"


async def test_on_cancel_callbacks_run_on_cancel_and_at_once_when_registered_late() -> None:
    """A hook registered before cancel runs on cancel; one registered after runs at once."""
    started, finished = threading.Event(), threading.Event()
    early: list[CancelReason] = []
    late: list[CancelReason] = []
    late_ran_inside_on_cancel: list[bool] = []

    def with_hooks(token: CancelToken) -> None:
        token.on_cancel(early.append)
        started.set()
        token.wait(BOUND)
        token.on_cancel(late.append)
        late_ran_inside_on_cancel.append(len(late) == 1)
        finished.set()

    request = Lifetime.root("app").child("request")
    await run_until_cancelled(ThreadBridge(orphan_grace=GRACE), request, with_hooks, started)
    assert len(early) == 1, "the early hook did not run on cancellation"
    assert early[0] == request.reason
    assert await wait_in_thread(finished)
    assert late_ran_inside_on_cancel == [True]
    assert late == early


async def test_a_failing_on_cancel_hook_does_not_stop_the_others(
    thread_logs: LogCapture,
) -> None:
    """A broken hook is logged; the next hook still runs."""
    started, release = threading.Event(), threading.Event()
    ran: list[str] = []

    def broken(reason: CancelReason) -> None:
        raise RuntimeError("hook failed")

    def with_hooks(token: CancelToken) -> None:
        token.on_cancel(broken)
        token.on_cancel(lambda reason: ran.append(str(reason.cause)))
        started.set()
        release.wait(BOUND)

    request = Lifetime.root("app").child("request")
    try:
        await run_until_cancelled(ThreadBridge(orphan_grace=GRACE), request, with_hooks, started)
    finally:
        release.set()
    assert ran == ["client_disconnected"]
    assert any(r.levelno == logging.ERROR for r in thread_logs.records)


# -- orphans -----------------------------------------------------------------------------


async def test_thread_ignoring_its_token_past_the_grace_is_reported_as_orphaned(
    thread_logs: LogCapture,
) -> None:
    """on_orphan is told the function's name and an 'orphaned thread' warning is logged."""
    started, release, finished = threading.Event(), threading.Event(), threading.Event()
    orphans = Orphans()

    def ignores_token(token: CancelToken) -> None:
        started.set()
        release.wait(BOUND)
        finished.set()

    bridge = ThreadBridge(orphan_grace=GRACE, on_orphan=orphans)
    request = Lifetime.root("app").child("request")
    try:
        await run_until_cancelled(bridge, request, ignores_token, started)
        assert await wait_in_thread(orphans.reported), "on_orphan was never called"
    finally:
        release.set()
    assert await wait_in_thread(finished)
    assert orphans.names == [ignores_token.__qualname__]
    (record,) = thread_logs.orphan_warnings()
    assert record.name == "ragline.threads"
    assert record.__dict__["thread_func"] == ignores_token.__qualname__
    assert record.__dict__["cause"] == "client_disconnected"
    assert record.__dict__["origin"] == "app/request"


async def test_thread_finishing_within_the_grace_is_not_orphaned(
    thread_logs: LogCapture,
) -> None:
    """A thread that honours its token in time is not reported."""
    started, finished = threading.Event(), threading.Event()
    orphans = Orphans()

    def honours_token(token: CancelToken) -> None:
        started.set()
        token.wait(BOUND)
        finished.set()

    bridge = ThreadBridge(orphan_grace=0.5, on_orphan=orphans)
    request = Lifetime.root("app").child("request")
    earlier = orphan_watchers()
    await run_until_cancelled(bridge, request, honours_token, started)
    assert await wait_in_thread(finished)
    # a watcher may or may not have been started (the thread can beat the check); if one
    # was, let it run its check before looking
    await anyio.to_thread.run_sync(join_orphan_watchers, earlier)
    assert orphans.names == []
    assert thread_logs.orphan_warnings() == []


async def test_call_cancelled_while_waiting_for_a_thread_slot_is_not_orphaned(
    thread_logs: LogCapture,
) -> None:
    """With max_threads reached, a cancelled queued call never runs and is no orphan."""
    started, release, finished = threading.Event(), threading.Event(), threading.Event()
    queued_ran: list[bool] = []
    orphans = Orphans()

    def holds_the_slot(token: CancelToken) -> None:
        started.set()
        release.wait(BOUND)
        finished.set()

    def queued(token: CancelToken) -> None:
        queued_ran.append(True)

    bridge = ThreadBridge(max_threads=1, orphan_grace=GRACE, on_orphan=orphans)
    earlier = orphan_watchers()
    first = Lifetime.root("app").child("first")
    second = Lifetime.root("app").child("second")
    second_done = anyio.Event()

    async def run_first() -> None:
        with first:
            await bridge.run(first, holds_the_slot)

    async def run_second() -> None:
        with second:
            await bridge.run(second, queued)
        second_done.set()

    try:
        with anyio.fail_after(BOUND):
            async with anyio.create_task_group() as tg:
                tg.start_soon(run_first)
                assert await wait_in_thread(started)
                tg.start_soon(run_second)
                await anyio.wait_all_tasks_blocked()  # second is queued on the limiter
                second.cancel(Cause.CLIENT_DISCONNECTED)
                await second_done.wait()
                # give a wrongly started orphan watcher its full grace, then check
                await anyio.to_thread.run_sync(join_orphan_watchers, earlier)
                release.set()
    finally:
        release.set()
    assert await wait_in_thread(finished)
    assert queued_ran == []
    assert orphans.names == []
    assert thread_logs.orphan_warnings() == []


# -- context and checkpoint ---------------------------------------------------------------


async def test_opentelemetry_context_crosses_into_the_thread() -> None:
    """The span current in the caller is the current span inside the worker thread."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    seen: list[trace.SpanContext] = []

    def look(token: CancelToken) -> None:
        seen.append(trace.get_current_span().get_span_context())

    request = Lifetime.root("app").child("request")
    with request, tracer.start_as_current_span("generate") as span:
        await ThreadBridge().run(request, look)
        expected = span.get_span_context()
    assert seen[0].is_valid
    assert seen[0].trace_id == expected.trace_id
    assert seen[0].span_id == expected.span_id
    assert [s.name for s in exporter.get_finished_spans()] == ["generate"]


async def test_cancelled_lifetime_never_starts_the_thread() -> None:
    """The bridge checks the lifetime before it hands any work to a thread."""
    calls: list[bool] = []

    def work(token: CancelToken) -> None:
        calls.append(True)

    request = Lifetime.root("app").child("request")
    request.cancel(Cause.CLIENT_DISCONNECTED)
    reached_end = False
    with anyio.fail_after(BOUND), request:
        await ThreadBridge().run(request, work)
        reached_end = True
    assert not reached_end
    with pytest.raises(LifetimeError):  # checked from outside its scope: a caller bug
        await ThreadBridge().run(request, work)
    assert calls == []


@pytest.mark.anyio
async def test_call_runs_a_tokenless_function_in_a_worker_thread() -> None:
    """``call`` is ``run`` for a plain blocking function that takes no token."""
    bridge = ThreadBridge()
    with Lifetime.root() as root:
        result = await bridge.call(root, lambda a, b=0: (a + b, threading.get_ident()), 1, b=2)
    assert result[0] == 3
    assert result[1] != threading.get_ident()
