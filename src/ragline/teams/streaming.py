"""Streaming an answer into a Teams 1:1 chat by the Teams protocol.

An informative update opens the stream (sequence 1; Teams answers with the stream id).
While the model generates, the whole text so far goes out as ``typing`` chunks with the
next sequence number, never faster than one request per second and only after the
previous one succeeded, so tokens that arrive in between are coalesced into the next
chunk. The answer ends with a ``message`` whose ``streaminfo`` entity says ``final``.

While the model has said nothing new for ``keepalive`` seconds (a slow first token, a
long tool call), the stream gets an update anyway: the informative one again before the
first text, the text so far after it. Microsoft 365 Copilot shows an error after about
45 s without one.

Teams ends a stream after two minutes. Before that, the stream is closed with the text
so far and the complete answer replaces it by an update of the message when it is done;
the same happens when Teams says the streaming time is exceeded. A 403 "cancelled by
user" means the user pressed stop: ``on_user_stop`` is called at once, and nothing more
is sent.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any, Literal

import anyio

from ..lifetime import Lifetime
from .activity import Activity, reply_to
from .connector import ConnectorClient, ConnectorError

__all__ = ["Pacer", "StreamingReply", "post_reply", "with_note"]

log = logging.getLogger("ragline.teams")

State = Literal["new", "streaming", "ended", "stopped", "failed", "done"]


class Pacer:
    """Spaces a conversation's Connector requests: each starts at least ``interval``
    after the previous one finished."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._last_done = -math.inf

    async def wait(self) -> None:
        """Sleep until the next request may start."""
        delay = self._last_done + self.interval - self._clock()
        if delay > 0:
            await anyio.sleep(delay)

    def done(self) -> None:
        """A request just finished (whatever its outcome)."""
        self._last_done = self._clock()


class StreamingReply:
    """One streamed answer to ``activity``. See the module docstring.

    ``begin`` opens the stream; run ``pump`` in a task group beside the generation, feed it
    with ``push`` (an :data:`~ragline.providers.OnDelta`) and end it with ``complete``.
    After a cancellation, ``interrupt`` ends it with a note, inside a shielded window.
    """

    def __init__(
        self,
        connector: ConnectorClient,
        activity: Activity,
        lifetime: Lifetime,
        pacer: Pacer,
        *,
        limit: float,
        on_user_stop: Callable[[], None],
        keepalive: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._connector = connector
        self._activity = activity
        self._lifetime = lifetime
        self._pacer = pacer
        self._limit = limit
        self._keepalive = keepalive
        self._on_user_stop = on_user_stop
        self._clock = clock
        self.state: State = "new"
        self.stream_id: str | None = None
        self.sequence = 0
        self.chunks = 0
        self._text = ""
        self._sent = ""
        self._started = 0.0
        self._informative = ""
        self._last_update = 0.0  # when the user last saw something new (clock)
        self._final: tuple[str, list[dict[str, Any]], dict[str, Any]] | None = None
        self._changed = anyio.Event()
        self.message_id: str | None = None  # the answer's message, once delivered

    @property
    def text(self) -> str:
        """Everything generated so far."""
        return self._text

    async def begin(self, informative: str) -> None:
        """Open the stream with an informative update. If Teams refuses, the answer is
        delivered as one message at the end instead."""
        self._informative = informative
        entity = {"type": "streaminfo", "streamType": "informative", "streamSequence": 1}
        try:
            self.stream_id = await self._post(
                {"type": "typing", "text": informative, "entities": [entity]}, repeatable=False
            )
        except ConnectorError as exc:
            log.warning("streaming refused; answering in one message", extra=_why(exc))
        if self.stream_id is None:
            self.state = "failed"
            return
        self.state, self.sequence, self._started = "streaming", 1, self._clock()
        self._last_update = self._started

    async def push(self, delta: str) -> None:
        """More generated text (never blocks on the Connector)."""
        self._text += delta
        self._changed.set()

    def complete(
        self,
        text: str,
        entities: list[dict[str, Any]] | None = None,
        channel_data: dict[str, Any] | None = None,
    ) -> None:
        """The whole answer: ``pump`` sends it as the final message and returns."""
        self._final = (text, entities or [], channel_data or {})
        self._changed.set()

    async def pump(self) -> None:
        """Send chunks until the final message is out or the user stopped the stream."""
        while self.state not in ("stopped", "done"):
            if self._final is None and not self._chunk_due() and not self._quiet():
                self._changed = anyio.Event()
                if self._final is None and not self._chunk_due():
                    # Streaming, the next keep-alive is due then; otherwise only the
                    # final message is still to come.
                    wait = self._last_update + self._keepalive - self._clock()
                    with anyio.move_on_after(
                        max(wait, 0.0) if self.state == "streaming" else math.inf
                    ):
                        await self._changed.wait()
                continue
            await self._pacer.wait()
            if self._final is not None:
                await self._finish(*self._final)
            elif self._clock() - self._started >= self._limit:
                await self._close_early()
            elif self._chunk_due():
                await self._chunk(self._text)
            else:
                await self._keep_alive()

    async def interrupt(
        self,
        note: str,
        lifetime: Lifetime,
        entities: list[dict[str, Any]] | None = None,
        channel_data: dict[str, Any] | None = None,
    ) -> None:
        """End the answer with what was generated and ``note`` (shutdown, timeout, a
        failure). After a cancellation, ``lifetime`` is the turn's afterlife."""
        if self.state in ("stopped", "done"):
            return
        self._lifetime = lifetime
        text = with_note(self._text, note)
        await self._pacer.wait()
        await self._finish(text, entities or [], channel_data or {})

    # -- the requests ---------------------------------------------------------------
    def _chunk_due(self) -> bool:
        return self.state == "streaming" and self._text != self._sent

    def _quiet(self) -> bool:
        """Whether the user has seen nothing new for ``keepalive`` seconds."""
        return self.state == "streaming" and self._clock() - self._last_update >= self._keepalive

    async def _keep_alive(self) -> None:
        """An update with nothing new: the informative one again before the first text
        (Teams allows informative updates only before it), the text so far after it."""
        if self._sent:
            await self._chunk(self._sent)
            return
        entity = {
            "type": "streaminfo",
            "streamId": self.stream_id,
            "streamType": "informative",
            "streamSequence": self.sequence + 1,
        }
        body = {"type": "typing", "text": self._informative, "entities": [entity]}
        try:
            await self._post(body, True)
        except ConnectorError as exc:
            self._chunk_failed(exc)
            return
        self.sequence += 1
        self._last_update = self._clock()

    async def _chunk(self, text: str) -> None:
        entity = {
            "type": "streaminfo",
            "streamId": self.stream_id,
            "streamType": "streaming",
            "streamSequence": self.sequence + 1,
        }
        try:
            # Repeating a chunk cannot duplicate it: it carries its stream and sequence.
            await self._post({"type": "typing", "text": text, "entities": [entity]}, True)
        except ConnectorError as exc:
            self._chunk_failed(exc)
            return
        self.sequence += 1
        self.chunks += 1
        self._sent = text
        self._last_update = self._clock()

    def _chunk_failed(self, exc: ConnectorError) -> None:
        message = str(exc).lower()
        if exc.status == 403 and "cancel" in message:
            log.info("the user stopped the stream", extra={"stream_id": self.stream_id})
            self.state = "stopped"
            self._on_user_stop()
        elif exc.status == 403 and "exceeded" in message:
            log.info("stream reached Teams' time limit", extra={"stream_id": self.stream_id})
            self.state = "ended"
        else:
            log.warning("stream chunk failed; finishing by update", extra=_why(exc))
            self.state = "ended"

    async def _close_early(self) -> None:
        """Close the stream before Teams' two-minute cut; the answer follows by update."""
        log.info("closing a long stream early", extra={"stream_id": self.stream_id})
        entity = {"type": "streaminfo", "streamId": self.stream_id, "streamType": "final"}
        try:
            await self._post({"type": "message", "text": self._text, "entities": [entity]}, False)
        except ConnectorError as exc:
            log.info("early close failed", extra=_why(exc))
        self.state = "ended"

    async def _finish(
        self, text: str, entities: list[dict[str, Any]], channel_data: dict[str, Any]
    ) -> None:
        try:
            await self._deliver(text, entities, channel_data)
        except ConnectorError as exc:
            log.warning("the answer could not be delivered", extra=_why(exc))
        finally:
            self.state = "done"

    async def _deliver(
        self, text: str, entities: list[dict[str, Any]], channel_data: dict[str, Any]
    ) -> None:
        message: dict[str, Any] = {"type": "message", "text": text, "textFormat": "markdown"}
        if channel_data:
            message["channelData"] = channel_data
        if self.state == "streaming":
            final = {"type": "streaminfo", "streamId": self.stream_id, "streamType": "final"}
            try:
                await self._post({**message, "entities": [final, *entities]}, False)
            except ConnectorError as exc:
                # It may have been applied (502/504) or the stream was cut: an update of
                # the streamed message is safe either way and never duplicates it.
                log.info("final stream message failed; updating instead", extra=_why(exc))
                await self._update({**message, "entities": entities})
            self.message_id = self.stream_id  # a stream's final message keeps its id
        elif self.state == "ended":
            await self._update({**message, "entities": entities})
            self.message_id = self.stream_id
        elif self.state in ("new", "failed"):
            self.message_id = await self._post({**message, "entities": entities}, False)

    async def _update(self, message: dict[str, Any]) -> None:
        assert self.stream_id is not None
        a = self._activity
        try:
            await self._connector.update(
                a.service_url, a.conversation.id, self.stream_id, message, self._lifetime
            )
        finally:
            self._pacer.done()

    async def _post(self, body: dict[str, Any], repeatable: bool) -> str | None:
        try:
            return await post_reply(
                self._connector, self._activity, body, self._lifetime, repeatable=repeatable
            )
        finally:
            self._pacer.done()


async def post_reply(
    connector: ConnectorClient,
    activity: Activity,
    body: dict[str, Any],
    lifetime: Lifetime,
    *,
    repeatable: bool = False,
) -> str | None:
    """Post ``body`` as a reply to ``activity`` (or into its conversation if it has no id)."""
    out = reply_to(activity, **body)
    service, conversation = activity.service_url, activity.conversation.id
    if activity.id:
        return await connector.reply(
            service, conversation, activity.id, out, lifetime, repeatable=repeatable
        )
    return await connector.send(service, conversation, out, lifetime, repeatable=repeatable)


def with_note(text: str, note: str) -> str:
    """What was said so far, then why it stopped (in italics)."""
    return f"{text}\n\n_{note}_" if text else note


def _why(exc: ConnectorError) -> dict[str, Any]:
    return {"status": exc.status, "code": exc.error_code, "error": str(exc)}
