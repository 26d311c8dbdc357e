"""The lifecycle contract of :class:`ragline.Lifetime` (docs/ARCHITECTURE.md, "The
lifecycle contract").

Every async test runs on asyncio and on trio. Tests synchronise on events, never on
sleeps; a deadline is forced with a tiny timeout while the body waits forever, and every
test that could hang on a regression is bounded by a generous ``fail_after``.
"""

from __future__ import annotations

import asyncio

import anyio
import anyio.lowlevel
import pytest
import trio
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from ragline import CancelReason, Cause, Lifetime, LifetimeError, RagLineError, StageTimeout

pytestmark = pytest.mark.both_backends

BOUND = 5.0  # generous wall-clock bound: only hit when a test would otherwise hang

CANCELLED_EXC = {"asyncio": asyncio.CancelledError, "trio": trio.Cancelled}


def _reason(lifetime: Lifetime) -> CancelReason:
    reason = lifetime.reason
    assert reason is not None, f"{lifetime!r} is not cancelled"
    return reason


# -- causes and the first cause wins -------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("cause", [Cause.CLIENT_DISCONNECTED, Cause.SHUTDOWN, Cause.EXPLICIT])
async def test_cancel_ends_the_block_and_records_cause_origin_and_detail(cause: Cause) -> None:
    """Each cause is recorded with the cancelled lifetime's path as origin.

    ``deadline`` comes from a timeout and is covered by the StageTimeout tests below.
    """
    request = Lifetime.root("app").child("request")
    reached_end = False
    with anyio.fail_after(BOUND), request:
        request.cancel(cause, "why it stopped")
        await anyio.sleep_forever()
        reached_end = True
    assert not reached_end
    reason = _reason(request)
    assert reason.cause is cause
    assert reason.origin == "app/request"
    assert reason.detail == "why it stopped"
    assert request.cancelled


def test_cause_values_are_the_documented_strings() -> None:
    """The causes carry the names used in logs, metrics and spans; ``repetition`` is the
    degeneration guard's stop of a generation that loops, ``ungrounded`` the grounding
    guard's of one that leaves its sources."""
    assert {str(c) for c in Cause} == {
        "client_disconnected",
        "shutdown",
        "deadline",
        "explicit",
        "repetition",
        "ungrounded",
    }


def test_a_fresh_lifetime_is_not_cancelled() -> None:
    """Nothing has happened yet: no reason, not cancelled."""
    request = Lifetime.root("app").child("request")
    assert request.reason is None
    assert not request.cancelled


def test_cancelling_twice_keeps_the_first_cause() -> None:
    """The first cause wins; a second cancel changes nothing."""
    request = Lifetime.root("app").child("request")
    request.cancel(Cause.CLIENT_DISCONNECTED, "first")
    first = request.reason
    request.cancel(Cause.SHUTDOWN, "second")
    assert request.reason == first
    assert _reason(request).cause is Cause.CLIENT_DISCONNECTED
    assert _reason(request).detail == "first"


@pytest.mark.anyio
async def test_child_keeps_its_own_earlier_cause_when_parent_is_cancelled_later() -> None:
    """A child cancelled first keeps its cause and origin after its parent is cancelled."""
    request = Lifetime.root("app").child("request")
    stage = request.child("generate")
    with anyio.fail_after(BOUND), request, stage:
        stage.cancel(Cause.EXPLICIT, "stage stopped")
        request.cancel(Cause.CLIENT_DISCONNECTED)
        await anyio.sleep_forever()
    assert _reason(stage).cause is Cause.EXPLICIT
    assert _reason(stage).origin == "app/request/generate"
    assert _reason(request).cause is Cause.CLIENT_DISCONNECTED


@pytest.mark.anyio
async def test_descendant_reports_the_ancestors_earlier_cause_with_its_origin() -> None:
    """An ancestor cancelled first wins over a later cancel of the descendant itself."""
    root = Lifetime.root("app")
    request = root.child("request")
    stage = request.child("retrieve")
    inner = stage.child("embed")
    with anyio.fail_after(BOUND), request, stage, inner:
        root.cancel(Cause.SHUTDOWN, "server stopping")
        stage.cancel(Cause.EXPLICIT, "too late to matter")
        await anyio.sleep_forever()
    for lifetime in (request, stage, inner):
        reason = _reason(lifetime)
        assert reason.cause is Cause.SHUTDOWN
        assert reason.origin == "app"
        assert reason.detail == "server stopping"


def test_descendant_reports_ancestor_cause_without_being_entered() -> None:
    """The chain is consulted even for lifetimes that were never entered."""
    root = Lifetime.root("app")
    inner = root.child("request").child("retrieve")
    root.cancel(Cause.SHUTDOWN)
    assert inner.cancelled
    assert _reason(inner).origin == "app"


@pytest.mark.anyio
async def test_cancel_reaches_an_entered_grandchild_whose_parent_was_not_entered(
    anyio_backend: str,
) -> None:
    """A lifetime that reports itself cancelled is cancelled: its block stops."""
    root = Lifetime.root("app")
    stage = root.child("request").child("generate")
    with stage:
        root.cancel(Cause.SHUTDOWN)
        assert stage.cancelled
        # checkpoint() inside the stage's own block must raise the cancellation
        with pytest.raises(CANCELLED_EXC[anyio_backend]):
            await stage.checkpoint()


# -- cancellation reaches children, timeouts become StageTimeout -------------------------------


@pytest.mark.anyio
async def test_parent_cancel_stops_work_inside_an_attached_child_in_another_task() -> None:
    """Cancelling a parent cancels a child entered in a different task."""
    request = Lifetime.root("app").child("request")
    entered = anyio.Event()
    seen: list[CancelReason | None] = []
    woke_normally: list[bool] = []

    async def stage() -> None:
        with request.child("retrieve") as retrieve:
            entered.set()
            try:
                await anyio.sleep_forever()
                woke_normally.append(True)
            finally:
                seen.append(retrieve.reason)

    with anyio.fail_after(BOUND):
        async with anyio.create_task_group() as tg:
            with request:
                tg.start_soon(stage)
                await entered.wait()
                request.cancel(Cause.CLIENT_DISCONNECTED, "hung up")
    assert woke_normally == []
    assert len(seen) == 1
    reason = seen[0]
    assert reason is not None
    assert reason.cause is Cause.CLIENT_DISCONNECTED
    assert reason.origin == "app/request"


@pytest.mark.anyio
@pytest.mark.parametrize("timeout", [0, 0.01])
async def test_child_timeout_raises_stage_timeout_and_descendants_see_deadline(
    timeout: float,
) -> None:
    """A stage's own deadline is a StageTimeout at its exit; below it, cause DEADLINE."""
    request = Lifetime.root("app").child("request")
    seen: list[CancelReason | None] = []
    after_stage: list[bool] = []
    with anyio.fail_after(BOUND), request:
        with pytest.raises(StageTimeout) as info:
            with request.child("retrieve", timeout=timeout) as stage, stage.child("embed") as inner:
                try:
                    await anyio.sleep_forever()
                finally:
                    seen.append(inner.reason)
        after_stage.append(True)  # the parent carries on: a timeout is not a cancellation
    assert after_stage == [True]
    error = info.value
    assert isinstance(error, TimeoutError)
    assert isinstance(error, RagLineError)
    assert error.stage == "retrieve"
    assert error.timeout == timeout
    assert error.code == "timeout"
    reason = seen[0]
    assert reason is not None
    assert reason.cause is Cause.DEADLINE
    assert reason.origin == "app/request/retrieve"
    assert not request.cancelled


@pytest.mark.anyio
async def test_inherited_cancellation_passes_through_a_child_untouched() -> None:
    """A parent's cancel is neither a StageTimeout nor swallowed by the child's block."""
    request = Lifetime.root("app").child("request")
    after_child: list[bool] = []
    with anyio.fail_after(BOUND), request:
        with request.child("generate", timeout=60) as stage:
            request.cancel(Cause.CLIENT_DISCONNECTED)
            await anyio.sleep_forever()
        after_child.append(True)
    assert after_child == [], "the child block swallowed its parent's cancellation"
    assert _reason(stage).cause is Cause.CLIENT_DISCONNECTED
    assert _reason(stage).origin == "app/request"


@pytest.mark.anyio
async def test_parent_deadline_is_the_parents_timeout_not_the_childs() -> None:
    """A deadline inherited from above reaches the parent's exit as the parent's timeout."""
    root = Lifetime.root("app")
    after_child: list[bool] = []
    with anyio.fail_after(BOUND):
        with pytest.raises(StageTimeout) as info:
            with root.child("request", timeout=0.01) as request:
                with request.child("generate", timeout=60) as stage:
                    await anyio.sleep_forever()
                after_child.append(True)
    assert after_child == []
    assert info.value.stage == "request"
    assert _reason(stage).cause is Cause.DEADLINE
    assert _reason(stage).origin == "app/request"


@pytest.mark.anyio
async def test_lifetime_cancelled_before_entry_is_cancelled_at_once_on_entry() -> None:
    """Entering an already-cancelled lifetime cancels its block at the first await."""
    job = Lifetime.root("app").child("job")
    job.cancel(Cause.EXPLICIT, "cancelled while queued")
    reached_end = False
    with anyio.fail_after(BOUND), job:
        await anyio.sleep_forever()
        reached_end = True
    assert not reached_end
    assert _reason(job).cause is Cause.EXPLICIT


@pytest.mark.anyio
async def test_child_of_a_cancelled_parent_is_cancelled_at_once_on_entry() -> None:
    """A child entered after its parent was cancelled starts cancelled."""
    root = Lifetime.root("app")
    root.cancel(Cause.SHUTDOWN)
    reached_end = False
    with anyio.fail_after(BOUND), root.child("request") as request:
        await anyio.sleep_forever()
        reached_end = True
    assert not reached_end
    assert _reason(request).cause is Cause.SHUTDOWN
    assert _reason(request).origin == "app"


@pytest.mark.anyio
async def test_entering_a_lifetime_twice_raises_lifetime_error() -> None:
    """A lifetime is entered once, whether again later or nested inside itself."""
    job = Lifetime.root("app").child("job")
    with job, pytest.raises(LifetimeError), job:
        pass
    with pytest.raises(LifetimeError), job:
        pass


def test_lifetime_error_is_a_ragline_error() -> None:
    """Misuse of a lifetime is reported through the project's error root."""
    assert issubclass(LifetimeError, RagLineError)


def test_negative_or_nan_timeout_is_rejected() -> None:
    """A timeout must be a non-negative number."""
    root = Lifetime.root("app")
    with pytest.raises(ValueError, match="timeout"):
        root.child("stage", timeout=-1)
    with pytest.raises(ValueError, match="timeout"):
        root.child("stage", timeout=float("nan"))


# -- values ------------------------------------------------------------------------------


def test_children_inherit_values_and_may_add_or_override_them() -> None:
    """Values flow down the tree; a child's own values never leak upwards."""
    request = Lifetime.root("app").child("request", values={"request_id": "r-1", "user": "ann"})
    stage = request.child("retrieve", values={"user": "bob", "stage": "retrieve"})
    inner = stage.child("embed")
    assert inner.values == {"request_id": "r-1", "user": "bob", "stage": "retrieve"}
    assert inner.get("request_id") == "r-1"
    assert inner.get("missing", "default") == "default"
    assert request.values == {"request_id": "r-1", "user": "ann"}
    assert inner.path == "app/request/retrieve/embed"


# -- detach -----------------------------------------------------------------------------


def test_detached_lifetime_keeps_the_values_and_belongs_to_the_same_root() -> None:
    """A detached lifetime carries the request's values and obeys the same root."""
    root = Lifetime.root("app")
    request = root.child("request", values={"request_id": "r-1"})
    job = request.detach("bot_turn", values={"chat": "c-9"})
    assert job.values == {"request_id": "r-1", "chat": "c-9"}
    assert job.detached
    assert job.path == "app/request/bot_turn"
    assert job.root_lifetime is root


@pytest.mark.anyio
async def test_detached_lifetime_carries_the_trace_context_into_another_task() -> None:
    """The span current at detach() is current inside the detached block, elsewhere."""
    tracer = TracerProvider().get_tracer("test")
    request = Lifetime.root("app").child("request")
    with tracer.start_as_current_span("webhook") as span:
        job = request.detach("bot_turn")
        expected = span.get_span_context()
    assert not trace.get_current_span().get_span_context().is_valid
    inside: list[trace.SpanContext] = []
    after: list[trace.SpanContext] = []

    async def run_job() -> None:
        with job:
            inside.append(trace.get_current_span().get_span_context())
        after.append(trace.get_current_span().get_span_context())

    with anyio.fail_after(BOUND):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_job)
    assert inside[0].trace_id == expected.trace_id
    assert inside[0].span_id == expected.span_id
    assert not after[0].is_valid, "the detached block leaked its trace context"


@pytest.mark.anyio
async def test_detached_lifetime_ignores_the_parents_cancellation() -> None:
    """The request ending (client gone) does not stop work detached from it."""
    request = Lifetime.root("app").child("request")
    job = request.detach("bot_turn")
    entered = anyio.Event()
    release = anyio.Event()
    finished: list[CancelReason | None] = []

    async def run_job() -> None:
        with job:
            entered.set()
            await release.wait()
            finished.append(job.reason)

    with anyio.fail_after(BOUND):
        async with anyio.create_task_group() as tg:
            with request:
                tg.start_soon(run_job)
                await entered.wait()
                request.cancel(Cause.CLIENT_DISCONNECTED)
            assert request.cancelled
            assert not job.cancelled
            release.set()
    assert finished == [None]


@pytest.mark.anyio
async def test_detached_lifetime_obeys_the_roots_shutdown() -> None:
    """Shutdown of the application cancels detached work, with the root as origin."""
    root = Lifetime.root("app")
    job = root.child("request").detach("bot_turn")
    entered = anyio.Event()
    seen: list[CancelReason | None] = []

    async def run_job() -> None:
        with job:
            entered.set()
            try:
                await anyio.sleep_forever()
            finally:
                seen.append(job.reason)

    with anyio.fail_after(BOUND):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_job)
            await entered.wait()
            root.cancel(Cause.SHUTDOWN, "stopping")
    reason = seen[0]
    assert reason is not None
    assert reason.cause is Cause.SHUTDOWN
    assert reason.origin == "app"


@pytest.mark.anyio
async def test_detached_lifetime_has_its_own_timeout() -> None:
    """A detached lifetime's timeout is a StageTimeout of its own; the request lives on."""
    request = Lifetime.root("app").child("request", timeout=60)
    job = request.detach("bot_turn", timeout=0.01)
    with anyio.fail_after(BOUND), request, pytest.raises(StageTimeout) as info, job:
        await anyio.sleep_forever()
    assert info.value.stage == "bot_turn"
    assert _reason(job).cause is Cause.DEADLINE
    assert _reason(job).origin == "app/request/bot_turn"
    assert not request.cancelled


# -- checkpoint -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_checkpoint_raises_the_backends_cancellation_when_cancelled(
    anyio_backend: str,
) -> None:
    """Inside a cancelled lifetime, checkpoint() raises the async library's own exception."""
    job = Lifetime.root("app").child("ingest")
    with job:
        job.cancel(Cause.EXPLICIT)
        with pytest.raises(CANCELLED_EXC[anyio_backend]):
            await job.checkpoint()


@pytest.mark.anyio
async def test_checkpoint_is_a_no_op_when_not_cancelled() -> None:
    """An uncancelled checkpoint returns, inside the block or outside it."""
    job = Lifetime.root("app").child("ingest")
    await job.checkpoint()
    with job:
        await job.checkpoint()
    assert not job.cancelled


@pytest.mark.anyio
async def test_checkpoint_outside_a_cancelled_lifetime_raises_lifetime_error() -> None:
    """Checking a cancelled lifetime from outside its scope is a caller bug, reported."""
    job = Lifetime.root("app").child("ingest")
    job.cancel(Cause.EXPLICIT)
    with pytest.raises(LifetimeError):
        await job.checkpoint()


@pytest.mark.anyio
async def test_batch_loop_stops_at_the_next_boundary_after_cancel() -> None:
    """A cancel requested mid-batch lets that batch finish and stops before the next."""
    job = Lifetime.root("app").child("ingest")
    third_batch_running = anyio.Event()
    cancel_sent = anyio.Event()
    processed: list[int] = []

    async def cancel_during_third_batch() -> None:
        await third_batch_running.wait()
        job.cancel(Cause.EXPLICIT, "user cancelled the job")
        cancel_sent.set()

    with anyio.fail_after(BOUND):
        async with anyio.create_task_group() as tg:
            tg.start_soon(cancel_during_third_batch)
            with job:
                for batch in range(10):
                    await job.checkpoint()
                    if batch == 2:
                        third_batch_running.set()
                        # the batch's expensive call cannot be interrupted half-way
                        with anyio.CancelScope(shield=True):
                            await cancel_sent.wait()
                    processed.append(batch)
    assert processed == [0, 1, 2]
    assert _reason(job).cause is Cause.EXPLICIT


@pytest.mark.anyio
async def test_last_words_run_after_a_cancellation_and_end_at_their_timeout() -> None:
    """A cancelled owner can still say its last words: the block ignores the
    cancellation, keeps the owner's values, and ends quietly when its timeout passes."""
    request = Lifetime.root("app").child("request", values={"request_id": "r1"})
    said: list[str] = []
    with anyio.fail_after(BOUND):
        with request:
            request.cancel(Cause.SHUTDOWN, "test")
            with request.last_words(0.05) as last:
                await anyio.lowlevel.checkpoint()  # would raise, were the block not shielded
                said.append(f"{last.path} {last.get('request_id')}")
                await anyio.sleep(BOUND)  # cut short by the block's own timeout
                said.append("too late")
    assert said == ["app/request/last-words r1"]


def test_last_words_need_a_short_timeout() -> None:
    """An unbounded shield would let a stuck write hang its owner's exit."""
    with pytest.raises(ValueError, match="short timeout"):
        with Lifetime.root("app").last_words(60):
            pass


def test_a_long_lived_lifetime_forgets_children_that_are_gone() -> None:
    """The application's lifetime adopts every request's: those that ended are dropped as
    more come, so it holds references to the living ones (and a bounded number more)."""
    root = Lifetime.root("app")
    kept = [root.child(f"kept-{i}") for i in range(10)]
    for i in range(10_000):
        root.child(f"request-{i}")  # gone at once: nothing holds it
    assert len(root._children or ()) <= 64
    root.cancel(Cause.SHUTDOWN)
    assert all(child.cancelled for child in kept)


@pytest.mark.anyio
async def test_a_cancel_hook_runs_at_once_for_the_block_only() -> None:
    """on_cancel's callback runs inside cancel() itself (an ancestor's too), before any
    task has unwound; outside its block it is not called; on a lifetime already
    cancelled it runs at once."""
    called: list[str] = []
    with Lifetime.root("app") as root:
        stage = root.child("generate")
        with stage:
            with stage.on_cancel(lambda: called.append("before")):
                pass  # the block ended: no longer called
            with stage.on_cancel(lambda: called.append("hook")):
                root.cancel(Cause.CLIENT_DISCONNECTED, "gone")
                assert called == ["hook"]  # before the cancellation reached any await
                await anyio.lowlevel.checkpoint()
            pytest.fail("not cancelled")
    with stage.on_cancel(lambda: called.append("late")):
        pass
    assert called == ["hook", "late"]
