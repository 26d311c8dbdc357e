"""Feedback on the bot's answers: the 👍/👎 buttons under an answer (``channelData``'s
feedback loop) and what the user writes in the form after pressing one.

Teams sends it as an ``invoke`` named ``message/submitAction`` whose ``replyToId`` is the
rated message and whose ``value`` is ``{"actionName": "feedback", "actionValue":
{"reaction": "like" | "dislike", "feedback": "{\\"feedbackText\\": \\"...\\"}"}}`` (the
``feedback`` a JSON string; the Agents SDK also allows an object). Teams keeps none of
it: :class:`FeedbackHandler` stores it with the answer it rates
(:class:`~ragline.providers.feedback.FeedbackStore`) and counts it
(``ragline_bot_feedback_total{reaction}``).

The answer is 200 with an empty JSON object, as Teams wants for this invoke (a body with
anything in it is an error to Teams). A value that is not feedback is a 400. Feedback
on a message ragline never recorded, or from another tenant than the one the answer was
sent in, is a 404: nothing tells another tenant that the message exists.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

from ..metrics import Metrics
from ..providers.feedback import FeedbackRecord, FeedbackStore, Reaction
from .activity import InvokeResponse
from .members import tenant_of

if TYPE_CHECKING:  # bot.py may import this module: no import cycle at run time
    from .bot import TurnContext

__all__ = ["INVOKE", "MAX_TEXT", "FeedbackHandler"]

INVOKE = "message/submitAction"  # the invoke's name
MAX_TEXT = 2_000  # characters of what the user wrote that are kept
_REACTIONS: dict[str, Reaction] = {"like": "like", "dislike": "dislike"}

log = logging.getLogger("ragline.teams")


class _Refused(Exception):
    """The invoke cannot be stored: its status and why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class FeedbackHandler:
    """The handler of the ``message/submitAction`` invoke. See the module docstring."""

    def __init__(self, store: FeedbackStore, metrics: Metrics, *, max_text: int = MAX_TEXT) -> None:
        self.store = store
        self.metrics = metrics
        self.max_text = max_text

    async def __call__(self, ctx: TurnContext) -> InvokeResponse:
        """Store the feedback of ``ctx``'s invoke: 200 ``{}``, or a 4xx ``{"error"}``."""
        activity = ctx.activity
        ids = {"activity_id": activity.id, "conversation_id": activity.conversation.id}
        try:
            record = await self.record(ctx)
        except _Refused as refused:
            log.info("feedback refused: %s", refused.message, extra=ids)
            return InvokeResponse(status=refused.status, body={"error": refused.message})
        await self.store.add_feedback(record, ctx.lifetime)
        self.metrics.bot_feedback.labels(record.reaction).inc()
        log.info(
            "feedback stored: %s",
            record.reaction,
            extra={**ids, "reply_to_id": record.answer.activity_id},
        )
        return InvokeResponse(status=200, body={})

    async def record(self, ctx: TurnContext) -> FeedbackRecord:
        """The record that ``ctx``'s invoke asks to store, with the answer it rates;
        :class:`_Refused` if there is none to store."""
        activity = ctx.activity
        reaction, text = self.parse(activity.name, activity.value)
        # Teams names the rated message; the Agents Playground (0.2.28) names none: then
        # it is the conversation's newest answer, the one under its form.
        rated = activity.reply_to_id or None
        if rated is None:
            log.info("feedback names no message: rating the conversation's newest answer")
        user = activity.from_.id if activity.from_ is not None else ""
        if not user:
            raise _Refused(400, "feedback from nobody (no from.id)")
        answer = await self.store.answer(activity.conversation.id, rated, ctx.lifetime)
        if answer is None or _tenant(answer.tenant_id) != tenant_of(activity):
            raise _Refused(404, "no answer of ours has that id in this conversation")
        return FeedbackRecord(
            answer=answer, reaction=reaction, text=text, user_id=user, at=time.time()
        )

    def parse(self, name: str | None, value: Any) -> tuple[Reaction, str]:
        """The reaction and the user's text (bounded, "" if none) of an invoke's value;
        :class:`_Refused` (400) if it is not feedback."""
        if name != INVOKE:
            raise _Refused(400, f"not a feedback invoke: {name!r}")
        if not isinstance(value, dict) or value.get("actionName") != "feedback":
            raise _Refused(400, 'value.actionName must be "feedback"')
        action = value.get("actionValue")
        if not isinstance(action, dict):
            raise _Refused(400, "value.actionValue must be an object")
        given = action.get("reaction")
        reaction = _REACTIONS.get(given) if isinstance(given, str) else None
        if reaction is None:
            raise _Refused(400, 'value.actionValue.reaction must be "like" or "dislike"')
        text = _written(action.get("feedback"))
        # PostgreSQL text cannot hold NUL, and nobody types one.
        return reaction, text.replace("\x00", "")[: self.max_text].strip()


def _written(feedback: Any) -> str:
    """What the user wrote: ``feedbackText`` of the form's values (a JSON string, as Teams
    sends them, or an object). A string that is not a JSON object is taken as the text
    itself, so that nothing a user wrote is lost to another client's way of sending it;
    the values of a custom form without ``feedbackText`` are no text."""
    if feedback is None:
        return ""
    if isinstance(feedback, str):
        try:
            parsed = json.loads(feedback)
        except (ValueError, RecursionError):
            return feedback
        if not isinstance(parsed, dict):
            return feedback
        feedback = parsed
    if not isinstance(feedback, dict):
        raise _Refused(400, "value.actionValue.feedback must be a JSON string or an object")
    text = feedback.get("feedbackText", "")
    if not isinstance(text, str):
        raise _Refused(400, "value.actionValue.feedback's feedbackText must be a string")
    return text


def _tenant(tenant: str | None) -> str | None:
    """A tenant id as :func:`~.members.tenant_of` gives it (lower case, None if blank)."""
    return tenant.strip().lower() if tenant and tenant.strip() else None
