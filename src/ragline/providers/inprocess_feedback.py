"""The feedback store in this process's memory (:class:`InProcessFeedback`): for an
application that mounts ragline's middleware, and tests. Nothing here survives a
restart."""

from __future__ import annotations

from collections import OrderedDict
from copy import deepcopy
from dataclasses import replace

from ..lifetime import Lifetime
from .feedback import FeedbackRecord, SentAnswer

__all__ = ["InProcessFeedback"]

_Key = tuple[str, str]  # (conversation id, activity id)


class InProcessFeedback:
    """:class:`~ragline.providers.feedback.FeedbackStore` in memory. What goes in and
    comes out is copied, as a database would: a caller's later change reaches nobody
    else. At most ``kept`` answers and ``kept`` feedback records are kept, the oldest
    forgotten first: every answer the bot sends is recorded, and a process that runs for
    months must not grow without bound."""

    def __init__(self, *, kept: int = 100_000) -> None:
        self.kept = kept
        self._answers: OrderedDict[_Key, SentAnswer] = OrderedDict()  # oldest first
        self._feedback: OrderedDict[tuple[str, str, str], FeedbackRecord] = OrderedDict()

    async def record_answer(self, answer: SentAnswer, lifetime: Lifetime) -> None:
        await lifetime.checkpoint()
        key = (answer.conversation_id, answer.activity_id)
        self._answers[key] = deepcopy(answer)
        self._answers.move_to_end(key)
        while len(self._answers) > self.kept:
            self._answers.popitem(last=False)

    async def answer(
        self, conversation_id: str, activity_id: str | None, lifetime: Lifetime
    ) -> SentAnswer | None:
        await lifetime.checkpoint()
        if activity_id is None:
            sent = [a for (c, _), a in self._answers.items() if c == conversation_id]
            found = max(sent, key=lambda a: a.at, default=None)
        else:
            found = self._answers.get((conversation_id, activity_id))
        return deepcopy(found) if found is not None else None

    async def add_feedback(self, feedback: FeedbackRecord, lifetime: Lifetime) -> None:
        await lifetime.checkpoint()
        rated = feedback.answer
        key = (rated.conversation_id, rated.activity_id)
        # The answer as stored is the one the feedback is about (the databases keep the
        # two in separate tables and join them): one recorded later wins over the copy
        # the feedback carries, and a feedback without a stored answer stores its own.
        if key not in self._answers:
            self._answers[key] = deepcopy(rated)
        mine = (*key, feedback.user_id)
        self._feedback[mine] = deepcopy(feedback)
        self._feedback.move_to_end(mine)
        while len(self._feedback) > self.kept:
            self._feedback.popitem(last=False)

    async def feedback(
        self, lifetime: Lifetime, *, limit: int, before: float | None = None
    ) -> list[FeedbackRecord]:
        await lifetime.checkpoint()
        found = [f for f in self._feedback.values() if before is None or f.at < before]
        found.sort(key=lambda f: f.at, reverse=True)
        out = []
        for record in found[: max(limit, 0)]:
            rated = record.answer
            stored = self._answers.get((rated.conversation_id, rated.activity_id), rated)
            out.append(deepcopy(replace(record, answer=stored)))
        return out

    async def expire(self, before: float, lifetime: Lifetime) -> int:
        await lifetime.checkpoint()
        old = [mine for mine, record in self._feedback.items() if record.at < before]
        for mine in old:
            del self._feedback[mine]
        rated = {(c, a) for c, a, _ in self._feedback}
        sent = [k for k, a in self._answers.items() if a.at < before and k not in rated]
        for key in sent:
            del self._answers[key]
        return len(old) + len(sent)
