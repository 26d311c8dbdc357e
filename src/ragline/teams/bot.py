"""The bot application: middleware, handlers by activity type, and the RAG answer.

A turn runs ``middleware[0] → middleware[1] → … → handler``; a middleware that does not
call ``next`` ends the turn there. Handlers are registered per activity type with
:meth:`BotApplication.on`; the defaults answer messages through the chat pipeline
(streamed in 1:1 chats, one message in group chats and channels) and greet new
conversations.

Each conversation (a 1:1 chat, a group chat, a channel thread) remembers its recent
turns in the backend (:mod:`ragline.history`), so that a follow-up is answered with the
turns before it whichever replica takes it; "new chat" (or ``/new``) starts over.

A message is answered as the turn's principal (its user, by :mod:`.members`), from the
first of its conversation's collections that the principal may read. A user without a
principal, or who may read none of them, gets one polite sentence (:data:`NO_ACCESS`)
and the turn completes: being refused is not an error.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from pydantic import ValidationError

from ..agent import Agent, AgentResult
from ..chat import ChatPipeline
from ..errors import Hidden, RagLineError
from ..grants import Grants
from ..history import History
from ..lifetime import Cause, Lifetime
from ..models import ChatRequest, ChatResult
from ..providers import OnDelta
from ..providers.feedback import FeedbackStore, SentAnswer
from ..settings import Settings
from .activity import Activity, InvokeResponse, reply_to
from .citations import FEEDBACK, ai_entity
from .connector import ConnectorClient, ConnectorError
from .members import (
    Everyone,
    Members,
    answering_collection,
    readable_collections,
    tenant_of,
)
from .replies import (
    BOUND_NOTES,
    EMPTY,
    FAILED,
    INFORMATIVE,
    NEW_CHAT,
    NO_ACCESS,
    WELCOME,
    interrupted,
    reply_text,
)
from .starters import prompt_starters
from .streaming import Pacer, StreamingReply, post_reply, with_note

__all__ = ["BotApplication", "Handler", "Middleware", "TurnContext"]

log = logging.getLogger("ragline.teams")

Next = Callable[[], Awaitable[None]]
Handler = Callable[["TurnContext"], Awaitable[InvokeResponse | None]]
Middleware = Callable[["TurnContext", Next], Awaitable[None]]


@dataclass(eq=False)
class TurnContext:
    """One activity being processed, under its turn's lifetime."""

    activity: Activity
    lifetime: Lifetime
    bot: BotApplication
    pacer: Pacer
    values: dict[str, Any] = field(default_factory=dict)  # for middleware and handlers
    invoke_response: InvokeResponse | None = None
    # deliveryMode "expectReplies": the replies go back in the webhook's response body,
    # not through the Connector.
    replies: list[dict[str, Any]] | None = None

    async def send(self, text: str, **fields: Any) -> str | None:
        """Reply with a message in the activity's conversation (never blindly repeated)."""
        body = {"type": "message", "text": text, "textFormat": "markdown", **fields}
        return await self.post(body, self.lifetime)

    async def typing(self) -> None:
        """Show the typing indicator (best effort)."""
        if self.replies is not None:
            return  # a reply in the response body shows no typing
        try:
            await self.post({"type": "typing"}, self.lifetime)
        except ConnectorError as exc:
            log.info("typing indicator failed", extra={"status": exc.status})

    async def post(self, body: dict[str, Any], lifetime: Lifetime) -> str | None:
        """Post an activity in reply, paced, under ``lifetime`` (the turn's, or its
        afterlife for last words)."""
        if self.replies is not None:
            reply = {**reply_to(self.activity, **body), "id": f"reply-{len(self.replies) + 1}"}
            self.replies.append(reply)
            return str(reply["id"])
        await self.pacer.wait()
        try:
            return await post_reply(self.bot.connector, self.activity, body, lifetime)
        finally:
            self.pacer.done()


class BotApplication:
    """Processes activities. See the module docstring."""

    def __init__(
        self,
        settings: Settings,
        pipeline: ChatPipeline,
        connector: ConnectorClient,
        *,
        agent: Agent | None = None,
        members: Members | None = None,
        grants: Grants | None = None,
        history: History | None = None,
        feedback: FeedbackStore | None = None,
    ) -> None:
        self.settings = settings
        self.history = history  # each conversation's recent turns (None: none kept)
        self.feedback = feedback  # the answers sent, which users may rate
        # Invokes by name (``message/submitAction``: feedback); others get a 501.
        self.invokes: dict[str, Handler] = {}
        self.pipeline = pipeline
        self.connector = connector
        # Who each user asks as and what each conversation answers from; the grants
        # say what they may read (None: no checks here, retrieval still checks).
        self.members: Members = members if members is not None else Everyone()
        self.grants = grants
        # With RAGLINE_BOT_TOOLS, messages are answered by an agent loop with those tools.
        self.agent = agent
        self.tools = (
            agent.tools.select(settings.bot_tools) if agent and settings.bot_tools else None
        )
        self.middleware: list[Middleware] = []
        self.handlers: dict[str, Handler] = {
            "message": self.answer,
            "conversationUpdate": self.greet,
            "installationUpdate": self.installed,
            "invoke": self.invoke,
        }

    def use(self, middleware: Middleware) -> Middleware:
        """Append a middleware (usable as a decorator)."""
        self.middleware.append(middleware)
        return middleware

    def on(self, activity_type: str) -> Callable[[Handler], Handler]:
        """Register the handler of an activity type (a decorator)."""

        def register(handler: Handler) -> Handler:
            self.handlers[activity_type] = handler
            return handler

        return register

    async def run_turn(self, ctx: TurnContext) -> InvokeResponse | None:
        """Run the middleware chain and then the handler of the activity's type."""

        async def step(index: int) -> None:
            if index < len(self.middleware):
                await self.middleware[index](ctx, lambda: step(index + 1))
                return
            handler = self.handlers.get(ctx.activity.type)
            if handler is None:
                log.debug("no handler", extra={"activity_type": ctx.activity.type})
                return
            response = await handler(ctx)
            if response is not None:
                ctx.invoke_response = response

        await step(0)
        return ctx.invoke_response

    # -- default handlers -------------------------------------------------------------
    async def greet(self, ctx: TurnContext) -> InvokeResponse | None:
        """conversationUpdate: welcome the user when the bot joins a conversation, with
        prompt starters from the collections the conversation may read, offered to the
        user who added it (suggested actions ``to`` them only)."""
        if not ctx.activity.bot_added():
            return None
        grants = self.grants if self.pipeline.retrieval else None
        default = self.settings.collection
        names = await readable_collections(
            self.members, grants, default, ctx.activity, ctx.lifetime
        )
        fields: dict[str, Any] = {}
        user = ctx.activity.from_
        if names and user is not None and user.id:
            actions = [
                {"type": "imBack", "title": s.title, "value": s.text}
                for s in prompt_starters(names, default_collection=default)
            ]
            fields["suggestedActions"] = {"to": [user.id], "actions": actions}
        await ctx.send(WELCOME, **fields)
        return None

    async def installed(self, ctx: TurnContext) -> InvokeResponse | None:
        """installationUpdate: noted in the log; the conversationUpdate greets."""
        log.info("installation %s", ctx.activity.action or "update")
        return None

    async def invoke(self, ctx: TurnContext) -> InvokeResponse | None:
        """invoke: by name in :attr:`invokes`; any other is the Bot Framework's 501."""
        name = ctx.activity.name or ""
        handler = self.invokes.get(name)
        if handler is not None:
            return await handler(ctx)
        return InvokeResponse(status=501, body={"error": f"invoke {name!r} is not handled"})

    async def answer(self, ctx: TurnContext) -> InvokeResponse | None:
        """message: answer the question through the chat pipeline, as the turn's
        principal, from a collection they may read (else a polite refusal)."""
        question = ctx.activity.question()
        if not question:
            await ctx.send(EMPTY)
            return None
        key = _conversation_key(ctx.activity)
        if question.strip().lower() in _NEW_CHAT:
            if self.history is not None:
                await self.history.forget(key, ctx.lifetime)
            await ctx.send(NEW_CHAT)
            return None
        # Without retrieval there is nothing to check, but a user needs a principal.
        grants = self.grants if self.pipeline.retrieval else None
        collection = await answering_collection(
            self.members, grants, self.settings.collection, ctx.activity, ctx.lifetime
        )
        if collection is None:
            await ctx.send(NO_ACCESS)
            return None
        # Everyone in a conversation sees its every message: its turns are the
        # conversation's, whoever asked them (no owner check, unlike the API's).
        history = (
            await self.history.recall(key, ctx.lifetime, principal=None) if self.history else ()
        )
        try:
            request = ChatRequest(
                query=question,
                top_k=self.settings.bot_top_k,
                collection=collection,
                history=history,
            )
        except ValidationError:
            await ctx.send("That message is too long for me to answer.")
            return None
        result = self.new_result()
        streamed = ctx.activity.kind == "personal" and ctx.replies is None
        try:
            if self.settings.bot_streaming and streamed:
                await self._streamed(ctx, request, result)
            else:
                await self._whole(ctx, request, result)
        finally:
            # last_words is a shielded, bounded scope (flake8-async cannot see it).
            with ctx.lifetime.last_words(self._last_words) as last:
                await self._remember(ctx, key, question, result, last)  # noqa: ASYNC102
        return None

    async def _remember(
        self, ctx: TurnContext, key: str, question: str, result: ChatResult, lifetime: Lifetime
    ) -> None:
        """The turn, for the conversation's next question; the answer sent, for the
        feedback on it (with the cause when it was cut short)."""
        if self.history is not None:
            await self.history.remember(key, "teams", question, result.text, lifetime)
        message_id = ctx.values.get("answer_id")
        if self.feedback is None or not isinstance(message_id, str):
            return
        cause = result.usage.cause
        answer = SentAnswer(
            activity_id=message_id,
            conversation_id=ctx.activity.conversation.id,
            tenant_id=tenant_of(ctx.activity),
            question=question,
            text=result.text,
            sources=[s.model_dump(mode="json") for s in result.sources],
            model=self.pipeline.generator.model,
            cause=str(cause) if cause is not None else None,
            at=time.time(),
        )
        try:
            await self.feedback.record_answer(answer, lifetime)
        except RagLineError as exc:  # the answer is out; only its rating is lost
            log.warning("answer not recorded for feedback: %s", exc.message)

    async def _streamed(self, ctx: TurnContext, request: ChatRequest, result: ChatResult) -> None:
        answer = ctx.lifetime.child("answer")
        stream = StreamingReply(
            self.connector,
            ctx.activity,
            ctx.lifetime,
            ctx.pacer,
            limit=self.settings.bot_stream_limit,
            on_user_stop=lambda: answer.cancel(Cause.EXPLICIT, "the user stopped the stream"),
            keepalive=self.settings.bot_keepalive,
        )
        failure: Exception | None = None
        try:
            await stream.begin(INFORMATIVE)
            async with anyio.create_task_group() as tg:
                tg.start_soon(stream.pump)
                try:
                    with answer:
                        await self.respond(request, answer, stream.push, result)
                    # The answer's scope took a cancellation from above (shutdown, the
                    # turn's timeout) for its own: raise it again here.
                    await ctx.lifetime.checkpoint()
                except Exception as exc:  # noqa: BLE001 - re-raised once the stream is ended
                    failure = exc
                    tg.cancel_scope.cancel()
                else:
                    if answer.reason is None:
                        stream.complete(reply_text(result), [ai_entity(result)], FEEDBACK)
        except anyio.get_cancelled_exc_class():
            # flake8-async cannot see that last_words is a shielded, bounded scope.
            with ctx.lifetime.last_words(self._last_words) as last:
                note = interrupted(ctx.lifetime.reason)
                await stream.interrupt(note, last, [ai_entity(result)], FEEDBACK)  # noqa: ASYNC102
                ctx.values["answer_id"] = stream.message_id
            raise
        finally:
            ctx.values["answer_id"] = stream.message_id
        if isinstance(failure, Hidden):  # access taken away since the check: no error
            log.info("bot answer refused: %s", failure.message)
            await stream.interrupt(NO_ACCESS, ctx.lifetime)
        elif failure is not None:
            await stream.interrupt(FAILED, ctx.lifetime)
            raise failure

    async def _whole(self, ctx: TurnContext, request: ChatRequest, result: ChatResult) -> None:
        await ctx.typing()
        try:
            with ctx.lifetime.child("answer") as answer:
                await self.respond(request, answer, None, result)
            await ctx.lifetime.checkpoint()
        except Hidden as exc:  # access taken away since the check: no error for them
            log.info("bot answer refused: %s", exc.message)
            await ctx.send(NO_ACCESS)
            return
        except anyio.get_cancelled_exc_class():
            text = with_note(result.text, interrupted(ctx.lifetime.reason))
            body: dict[str, Any] = {"type": "message", "text": text, "textFormat": "markdown"}
            body |= {"entities": [ai_entity(result)], "channelData": FEEDBACK}
            # flake8-async cannot see that last_words is a shielded, bounded scope.
            with ctx.lifetime.last_words(self._last_words) as last:
                ctx.values["answer_id"] = await ctx.post(body, last)  # noqa: ASYNC102
            raise
        ctx.values["answer_id"] = await ctx.send(
            reply_text(result), entities=[ai_entity(result)], channelData=FEEDBACK
        )

    async def respond(
        self,
        request: ChatRequest,
        lifetime: Lifetime,
        on_delta: OnDelta | None,
        into: ChatResult,
    ) -> None:
        """Answer a question into ``into`` (made by :meth:`new_result`): through the
        chat pipeline, or an agent loop with the bot's tools (``RAGLINE_BOT_TOOLS``). A
        loop stopped by one of its bounds says so."""
        if self.agent is None or self.tools is None or not isinstance(into, AgentResult):
            await self.pipeline.run(request, lifetime, on_delta=on_delta, into=into)
            return
        await self.agent.run(request, lifetime, tools=self.tools, on_delta=on_delta, into=into)
        note = BOUND_NOTES.get(into.finish_reason or "")
        if note is not None:
            into.text = with_note(into.text, note)

    def new_result(self) -> ChatResult:
        """An empty result of the kind :meth:`respond` fills."""
        return AgentResult() if self.tools is not None else ChatResult()

    @property
    def _last_words(self) -> float:
        # A short, bounded window to tell the user why the answer stopped.
        return min(1.5, self.settings.shutdown_grace * 0.75)


_NEW_CHAT = frozenset({"new chat", "/new", "new chat.", "start over"})


def _conversation_key(activity: Activity) -> str:
    """Where a conversation's turns are kept: a channel's thread has its own id (the
    conversation id names the thread), as do a chat and a 1:1 chat."""
    return f"teams:{activity.conversation.id}"
