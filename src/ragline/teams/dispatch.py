"""Delivery guarantees for bot turns: at most once, in order per conversation, bounded.

Teams redelivers an activity whose webhook was not answered in time, with the same id:
an accepted activity is remembered by (conversation id, activity id) for a window and a
redelivery is dropped. The activities of one conversation run one after another in the
order they arrived, on a worker that the application's supervisor owns; different
conversations run side by side, at most ``max_concurrent`` at a time.

Every accepted activity is also recorded in the deployment's
:class:`~ragline.providers.coordination.ActivityLog` (in memory for one process,
PostgreSQL for many replicas): a redelivery to another replica is dropped too, and a turn
waits until every earlier activity of its conversation, on any replica, is done.

Each turn runs in a lifetime detached from its webhook request (created when the
activity is accepted, so it keeps the request's values and trace context): the request's
end never cancels it, shutdown does, and its own processing timeout bounds it. A timeout
is a warning in the log with the activity id and the limit, never an error. A turn runs
as the principal its user maps to (``identify``, when the turn starts), never as the
webhook request's caller.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from ..access import Principal
from ..errors import Overloaded, RagLineError, StageTimeout
from ..lifetime import Cause, Lifetime
from ..metrics import Metrics
from ..notices import Notices
from ..providers.coordination import ActivityLog, WorkKey
from ..supervisor import Supervisor
from ..tracing import Tracing, mark_cancelled, mark_failed
from .activity import Activity, InvokeResponse
from .bot import BotApplication, TurnContext
from .streaming import Pacer

__all__ = ["Dispatcher"]

_LAST_SAVE = 2.0  # seconds to record that a turn ended, after it ended
_RECHECK = 1.0  # seconds a waiting turn looks again without a notice

log = logging.getLogger("ragline.teams")


@dataclass(eq=False)
class _Turn:
    activity: Activity
    lifetime: Lifetime
    seq: int | None = None  # its place in the conversation, across replicas
    replies: list[dict[str, Any]] | None = None  # expectReplies: collected, not sent


@dataclass(eq=False)
class _Conversation:
    pacer: Pacer
    queue: deque[_Turn] = field(default_factory=deque)
    working: bool = False


class Dispatcher:
    """Accepts activities and runs their turns. See the module docstring."""

    def __init__(
        self,
        bot: BotApplication,
        supervisor: Supervisor,
        metrics: Metrics,
        tracing: Tracing,
        activities: ActivityLog,
        notices: Notices,
        *,
        dedup_window: float,
        max_concurrent: int,
        max_pending: int,
        turn_timeout: float | None,
        pace: float,
        identify: Callable[[Activity, Lifetime], Awaitable[Principal | None]],
        max_conversations: int = 10_000,
    ) -> None:
        # The principal a turn runs as (None: nobody we know), found when the turn starts:
        # the lookup may be slow (a directory), and the webhook is answered before.
        self.identify = identify
        self.activities = activities
        self.notices = notices
        self.bot = bot
        self._supervisor = supervisor
        self._metrics = metrics
        self._tracing = tracing
        self._window = dedup_window
        self._limiter = anyio.CapacityLimiter(max_concurrent)
        self._max_pending = max_pending
        self.turn_timeout = turn_timeout
        self._pace = pace
        self._max_conversations = max_conversations
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._conversations: OrderedDict[str, _Conversation] = OrderedDict()
        self.pending = 0

    async def accept(self, activity: Activity, request: Lifetime) -> bool:
        """Queue ``activity``'s turn; ``False`` if it is a redelivery of one accepted
        within the window (by any replica). Raises :class:`Overloaded` when too much is
        pending."""
        if self._duplicate(activity):
            self._drop(activity)
            return False
        if self.pending >= self._max_pending:
            self._seen.pop(activity.key, None)  # a later redelivery may be served
            raise Overloaded("too many bot turns pending; retry later")
        seq = None
        if activity.id:
            seq = await self.activities.accept_activity(
                activity.conversation.id, activity.id, self._window, request
            )
            if seq is None:  # another replica accepted it
                self._drop(activity)
                return False
        lifetime = request.detach(
            "bot-turn",
            timeout=self.turn_timeout,
            values={
                "activity_id": activity.id,
                "conversation_id": activity.conversation.id,
                "principal": None,  # never the webhook request's: bound when the turn runs
            },
        )
        conversation = self._conversation(activity.conversation.id)
        # In their conversation's order: two requests may have been recorded in one
        # order and arrived here in the other (the running turn, first, stays first).
        queue, position = conversation.queue, len(conversation.queue)
        first = 1 if conversation.working else 0
        while seq is not None and position > first and (queue[position - 1].seq or 0) > seq:
            position -= 1
        queue.insert(position, _Turn(activity, lifetime, seq))
        self.pending += 1
        if not conversation.working:
            conversation.working = True
            worker = self._supervisor.root.child("bot-conversation")
            key = activity.conversation.id
            self._supervisor.start(worker, lambda lt: self._work(key, conversation, lt))
        return True

    def _drop(self, activity: Activity) -> None:
        self._metrics.bot_duplicates.inc()
        log.info(
            "dropped a redelivered activity",
            extra={"activity_id": activity.id, "conversation_id": activity.conversation.id},
        )

    def pacer(self, conversation_id: str) -> Pacer:
        """The pacer of a conversation's Connector requests."""
        return self._conversation(conversation_id).pacer

    def _duplicate(self, activity: Activity) -> bool:
        if not activity.id:
            return False
        now = time.monotonic()
        while self._seen:
            at = next(iter(self._seen.values()))
            if now - at <= self._window and len(self._seen) < 100_000:
                break
            self._seen.popitem(last=False)
        if activity.key in self._seen:
            return True
        self._seen[activity.key] = now
        return False

    def _conversation(self, conversation_id: str) -> _Conversation:
        found = self._conversations.get(conversation_id)
        if found is None:
            found = _Conversation(Pacer(self._pace))
            self._conversations[conversation_id] = found
            while len(self._conversations) > self._max_conversations:
                oldest = next(iter(self._conversations))
                if self._conversations[oldest].working:
                    break
                del self._conversations[oldest]
        self._conversations.move_to_end(conversation_id)
        return found

    async def _work(self, key: str, conversation: _Conversation, worker: Lifetime) -> None:
        try:
            while conversation.queue:
                turn = conversation.queue[0]
                try:
                    async with self._limiter:
                        await self._turn(turn, conversation.pacer)
                finally:
                    conversation.queue.popleft()
                    self.pending -= 1
        finally:
            conversation.working = False
            reason = worker.reason
            for turn in conversation.queue:  # shutdown: what never started is dropped
                log.info(
                    "bot turn dropped before it started",
                    extra={
                        "activity_id": turn.activity.id,
                        "cause": str(reason.cause) if reason else "unknown",
                    },
                )
            self.pending -= len(conversation.queue)
            conversation.queue.clear()

    async def invoke(
        self,
        activity: Activity,
        request: Lifetime,
        *,
        replies: list[dict[str, Any]] | None = None,
    ) -> InvokeResponse | None:
        """An invoke's turn, now: its response is the webhook's, so the turn belongs to
        the webhook request, still bounded by the processing timeout. It has the span
        and the metric of every turn; its failure is the request's. With ``replies``
        (a message delivered with ``expectReplies``) its replies are collected there
        instead of sent."""
        lifetime = request.child(
            "bot-invoke",
            timeout=self.turn_timeout,
            values={"principal": None},  # never the webhook request's: bound in _turn
        )
        turn = _Turn(activity, lifetime, replies=replies)
        return await self._turn(turn, self.pacer(activity.conversation.id), reraise=True)

    async def _turn(
        self, turn: _Turn, pacer: Pacer, *, reraise: bool = False
    ) -> InvokeResponse | None:
        activity, lifetime = turn.activity, turn.lifetime
        extra = {"activity_id": activity.id, "conversation_id": activity.conversation.id}
        outcome = "completed"
        response = None
        try:
            with lifetime:  # attaches the webhook request's trace context
                await self._my_turn(turn)
                lifetime.bind("principal", await self.identify(activity, lifetime))
                ctx = TurnContext(activity, lifetime, self.bot, pacer, replies=turn.replies)
                response = await self._traced(ctx)
            reason = lifetime.reason
            if reason is not None:
                outcome = "cancelled"
                self._metrics.cancellations.labels(str(reason.cause), "bot_turn").inc()
                log.info("bot turn cancelled", extra={**extra, "cause": str(reason.cause)})
        except StageTimeout:
            outcome = "timeout"
            log.warning(
                "bot turn timed out after %gs",
                self.turn_timeout,
                extra={**extra, "timeout": self.turn_timeout, "cause": "timeout"},
            )
            if reraise:
                raise
        except RagLineError as exc:  # a known failure (the model, the Connector): no traceback
            outcome = "failed"
            log.error(  # noqa: TRY400 - an expected failure: its message says it all
                "bot turn failed: %s", exc, extra={**extra, "error": exc.code}
            )
            if reraise:
                raise
        except Exception:
            outcome = "failed"
            log.exception("bot turn failed", extra=extra)
            if reraise:
                raise
        finally:
            self._metrics.bot_turns.labels(activity.type, outcome).inc()
            if turn.seq is not None:
                # last_words is a shielded scope with a deadline (flake8-async cannot see it)
                with lifetime.last_words(_LAST_SAVE) as words:
                    await self._finish(turn.activity.conversation.id, turn.seq, words)  # noqa: ASYNC102
        return response

    async def _my_turn(self, turn: _Turn) -> None:
        """Wait until every earlier activity of the conversation, on any replica, is
        done. One accepted longer ago than a turn may last is not waited for: its
        replica died."""
        if turn.seq is None:  # an invoke: answered now, in no order
            return
        conversation = turn.activity.conversation.id
        longest = (self.turn_timeout or 3600.0) + _LAST_SAVE
        while True:
            news = self.notices.news(WorkKey.conversation(conversation))
            stale = time.time() - longest
            if await self.activities.turn_clear(conversation, turn.seq, stale, turn.lifetime):
                return
            with anyio.move_on_after(_RECHECK):  # a lost notice costs this much at most
                await news.wait()

    async def _finish(self, conversation: str, seq: int, lifetime: Lifetime) -> None:
        try:
            await self.activities.finish_activity(conversation, seq, lifetime)
        except RagLineError as exc:  # the next turn then waits out its staleness
            log.warning("bot turn not marked done: %s", exc.message)

    async def _traced(self, ctx: TurnContext) -> InvokeResponse | None:
        activity, lifetime = ctx.activity, ctx.lifetime
        attributes = {"ragline.bot.activity_type": activity.type, **_ids(activity)}
        with self._tracing.tracer.start_as_current_span(
            f"bot.turn {activity.type}",
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                return await self.bot.run_turn(ctx)
            except anyio.get_cancelled_exc_class():
                reason = lifetime.reason
                if reason and reason.cause is Cause.DEADLINE and reason.origin == lifetime.path:
                    mark_failed(span, StageTimeout("bot-turn", self.turn_timeout))
                else:
                    mark_cancelled(span, reason)
                raise
            except Exception as exc:
                mark_failed(span, exc)
                raise


def _ids(activity: Activity) -> dict[str, str]:
    ids: dict[str, str] = {"ragline.bot.conversation_type": activity.kind}
    if activity.id:
        ids["ragline.bot.activity_id"] = activity.id
    return ids
