"""The guards around a generation: the degeneration guard and the grounding guard.

Each reads the text as it streams; when one fires, the generate stage stops with its own
cause (``repetition``, ``ungrounded``), the upstream sees its connection close as on a
disconnect, and the answer keeps the text before the cut.
"""

from __future__ import annotations

from .grounding import GroundingGuard
from .lifetime import Cause, Lifetime
from .providers import OnDelta
from .repetition import RepetitionGuard

__all__ = ["GUARD_STOPS", "guard_free", "guarded", "stop_reason"]

GUARD_STOPS = frozenset({"repetition", "ungrounded"})
"""The finish reasons of a guard's stop: the streamed text went on past the answer,
whose kept text is ``ChatResult.text``."""


def stop_reason(cause: Cause) -> str:
    """The finish reason of a generation cut short."""
    if cause is Cause.DEADLINE:
        return "timeout"
    if cause in (Cause.REPETITION, Cause.UNGROUNDED):
        return str(cause)
    return "cancelled"


def guard_free(guard: RepetitionGuard | None) -> bool:
    """Whether the degeneration guard (if any) has not fired."""
    return guard is None or guard.loop is None


def guarded(
    guard: RepetitionGuard | None,
    grounding: GroundingGuard | None,
    stage: Lifetime,
    on_delta: OnDelta | None,
) -> OnDelta | None:
    """``on_delta`` behind the guards: once the text loops (cause ``repetition``), or
    once a finished sentence is one no passage supports (cause ``ungrounded``), the stage
    stops (an upstream sees its connection close, as on a disconnect) and nothing more is
    passed on."""
    if guard is None and grounding is None:
        return on_delta

    async def watch(piece: str) -> None:
        if not guard_free(guard) or (grounding is not None and grounding.drift is not None):
            return
        if guard is not None and (loop := guard.feed(piece)) is not None:
            stage.cancel(Cause.REPETITION, f"{loop.rule} after {loop.keep} characters")
            return
        if grounding is not None and (drift := grounding.feed(piece)) is not None:
            stage.cancel(Cause.UNGROUNDED, f"unsupported: {', '.join(drift.novel[:5])}")
            return
        if on_delta is not None:
            await on_delta(piece)

    return watch
