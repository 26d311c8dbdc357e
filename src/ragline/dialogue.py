"""Responses that continue a conversation: how one ``/v1/responses`` request is answered,
remembered and, in the background, run as a ragline run.

- A response's history is its ``previous_response_id``'s stored context (bounded by
  :mod:`ragline.history`'s policy) followed by its own input; the last user message is
  the question that retrieval augments, as on the chat route.
- A stored response (``store``, the default) is saved when it starts and when it ends,
  however it ends: a client that leaves a stream leaves it ``incomplete`` with what was
  generated. It belongs to its principal: anyone else gets the 404 of one that does not
  exist.
- A background response is a :class:`~ragline.runs.Run` whose events are the response's
  stream events, saved to the run log as they come (any replica resumes a reader with
  ``starting_after``) and cancelled from any replica by a notice.
- Stored responses and conversations expire (``RAGLINE_RESPONSES_TTL``): :meth:`Dialogue.
  expire` is a sweep of :mod:`ragline.expiry`, on the application's supervisor.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio

from .access import Principal, owned
from .agent import Agent, AgentResult, LoopLimits
from .errors import InvalidRequest, NotFound, UpstreamError
from .history import History, as_dicts, bound, from_dicts
from .lifetime import Lifetime
from .models import ChatRequest, ChatResult, Message
from .notices import Notices
from .providers import OnDelta
from .providers.conversations import StoredResponse
from .providers.coordination import WorkKey
from .response_input import ResponseRequest, read_input, tool_specs
from .responses import Draft
from .runs import Run, Runs
from .tools import ToolRegistry

__all__ = ["Dialogue", "Exchange", "missing_response"]

log = logging.getLogger("ragline.dialogue")

_STATES = {"running": "in_progress", "completed": "completed"}
_FINAL_WAIT = 10.0  # how long a cancel waits for the response's final object


def missing_response(response_id: str) -> NotFound:
    """The 404 of a response that does not exist (or is not the caller's)."""
    return NotFound(f"no response {response_id!r}", code="response_not_found")


Answer = Callable[[Lifetime, OnDelta | None, ChatResult], Awaitable[object]]


@dataclass
class Exchange:
    """One response being answered: its draft, its question and what it will save."""

    draft: Draft
    chat: ChatRequest
    items: list[dict[str, Any]]  # its input items, as stored
    owner: Principal
    answer: Answer  # the pipeline, or ragline's own loop with its server-side tools
    result: ChatResult

    def context(self, tokens: int) -> list[dict[str, Any]]:
        """The conversation up to and including this answer, for a follow-up."""
        said = [m for m in self.chat.history if m.role != "system"]
        said += [Message(role="user", content=self.chat.query)]
        said += [Message(role="assistant", content=self.result.text)]
        return as_dicts(bound(said, tokens))


class Dialogue:
    """Answers, stores, runs in the background and expires responses."""

    def __init__(self, history: History, runs: Runs, agent: Agent, notices: Notices) -> None:
        self.history = history
        self.store = history.store
        self.runs = runs
        self.agent = agent
        self.notices = notices

    async def exchange(
        self,
        body: ResponseRequest,
        lifetime: Lifetime,
        principal: Principal,
        *,
        tools: ToolRegistry | None,
        limits: LoopLimits | None,
    ) -> Exchange:
        """Read a request: its input after its previous response's context (which must be
        the caller's), as a question for the pipeline, or for the loop with ``tools``."""
        if body.background and not body.store:
            raise InvalidRequest("a background response must be stored", param="store")
        prior: list[Message] = []
        if body.previous_response_id is not None:
            previous = await self.stored(body.previous_response_id, principal, lifetime)
            prior = from_dicts(previous.context)
        given = read_input(body.input)
        chat = self._question(body, prior + given.messages)
        pipeline = self.agent.pipeline
        draft = Draft(body, pipeline.generator.model)
        result: ChatResult = AgentResult() if tools is not None else ChatResult()

        async def answer(life: Lifetime, on_delta: OnDelta | None, into: ChatResult) -> None:
            if tools is not None and limits is not None and isinstance(into, AgentResult):
                await self.agent.run(
                    chat, life, tools=tools, limits=limits, on_delta=on_delta, into=into
                )
            else:
                await pipeline.run(chat, life, on_delta=on_delta, into=into)

        return Exchange(draft, chat, given.items, principal, answer, result)

    def _question(self, body: ResponseRequest, messages: list[Message]) -> ChatRequest:
        users = [i for i, m in enumerate(messages) if m.role == "user"]
        if not users or any(m.role not in ("assistant", "tool") for m in messages[users[-1] + 1 :]):
            raise InvalidRequest(
                "the input must end with a user message, or one followed only by function "
                "calls and their outputs",
                param="input",
            )
        last = users[-1]
        earlier = messages[:last]
        specs = tool_specs(body.tools)
        data = {
            "query": messages[last].content,
            "top_k": body.top_k,
            "collection": body.collection,
            "system_instructions": body.instructions,
            "history": tuple(m for m in earlier if m.role == "system")
            + bound(earlier, self.history.tokens),
            "continuation": tuple(messages[last + 1 :]),
            "max_tokens": body.max_output_tokens,
            "temperature": body.temperature,
            "top_p": body.top_p,
            "tools": specs,
            "tool_choice": body.tool_choice if specs else None,
        }
        try:
            return ChatRequest.model_validate(data)
        except ValueError as exc:
            raise InvalidRequest(f"the input cannot be answered: {exc}", param="input") from None

    async def stored(
        self, response_id: str, principal: Principal, lifetime: Lifetime
    ) -> StoredResponse:
        """The stored response, if the caller may see it."""
        found = await self.store.response(response_id, lifetime)
        if found is None:
            raise missing_response(response_id)
        owned(principal, found.owner, missing_response(response_id))
        return found

    async def save(self, exchange: Exchange, body: dict[str, Any], lifetime: Lifetime) -> None:
        """Store the response as ``body`` says it is now (with the context it ends)."""
        if not exchange.draft.request.store:
            return
        saved = StoredResponse(
            id=exchange.draft.id,
            owner=exchange.owner.name,
            created_at=float(exchange.draft.created_at),
            expires_at=self.history.expiry(),
            body=body,
            input_items=exchange.items,
            context=exchange.context(self.history.tokens),
        )
        await self.store.save_response(saved, lifetime)

    # -- background ---------------------------------------------------------------------
    def background(self, exchange: Exchange, owner: Lifetime) -> Run:
        """Start the response as a run detached from ``owner`` (the request)."""
        draft = exchange.draft
        run = Run(draft.id, exchange.chat, owner, exchange.owner.name)
        if isinstance(exchange.result, AgentResult):
            run.result = exchange.result

        def status(run: Run) -> tuple[str, str | None]:
            reason = run.lifetime.reason
            cause = str(reason.cause) if reason is not None and run.state == "cancelled" else None
            return _STATES.get(run.state, run.state), cause

        def view(run: Run) -> dict[str, Any]:
            state, cause = status(run)
            response = draft.object(state, run.result, error=run.error, cause=cause)
            return {"id": run.id, "owner": run.owner, "state": run.state, "response": response}

        def ending(run: Run) -> None:
            state, cause = status(run)
            for event in draft.closing(state, run.result, error=run.error, cause=cause):
                run.events.append((event["type"], event))

        async def after(run: Run, lifetime: Lifetime) -> None:
            exchange.result = run.result
            try:
                await self.save(exchange, view(run)["response"], lifetime)
            except UpstreamError as exc:
                log.warning("response not stored: %s", exc.message, extra={"run_id": run.id})

        async def job(run: Run, lifetime: Lifetime) -> None:
            for event in draft.opening("queued"):
                await run.emit(event["type"], event)

            async def on_delta(text: str) -> None:
                for event in draft.delta(text):
                    await run.emit(event["type"], event)

            await exchange.answer(lifetime, on_delta, run.result)

        run.view, run.ending, run.after = view, ending, after
        return self.runs.launch(run, job, None)

    async def final(self, response_id: str, lifetime: Lifetime) -> dict[str, Any]:
        """The response object once its run has ended (or as it is, after a while)."""
        key = WorkKey.run(response_id)
        with anyio.move_on_after(_FINAL_WAIT):
            while True:
                news = self.notices.news(key)
                snapshot = await self.runs.snapshot(response_id, lifetime)
                if snapshot.get("state") != "running":
                    break
                with anyio.move_on_after(0.5):  # a notice wakes it; this covers a lost one
                    await news.wait()
        snapshot = await self.runs.snapshot(response_id, lifetime)
        response: dict[str, Any] = snapshot["response"]
        return response

    async def cancel(self, found: StoredResponse, lifetime: Lifetime) -> dict[str, Any]:
        """Cancel a background response wherever it runs: its final object (the same
        on every call)."""
        if not found.body.get("background"):
            raise InvalidRequest(
                "only background responses can be cancelled",
                param="response_id",
                code="invalid_state",
            )
        if found.body.get("status") not in ("queued", "in_progress"):
            return found.body
        try:
            await self.runs.cancel_anywhere(found.id, lifetime)
        except NotFound:
            # No process has it any more (the one running it died): it ends here.
            body = {**found.body, "status": "cancelled"}
            await self.store.save_response(_with_body(found, body), lifetime)
            return body
        return await self.final(found.id, lifetime)

    async def expire(self, now: float, lifetime: Lifetime) -> int:
        """Delete the responses and conversations expired by ``now``, with the events of
        the responses' runs (a sweep of :class:`~ragline.expiry.Expiry`)."""
        gone = await self.store.expire(now, lifetime)
        if gone:
            await self.runs.log.forget(gone, lifetime)
        return len(gone)


def _with_body(found: StoredResponse, body: dict[str, Any]) -> StoredResponse:
    return StoredResponse(
        found.id,
        found.owner,
        found.created_at,
        found.expires_at,
        body,
        found.input_items,
        found.context,
    )
