"""A generator for any OpenAI-compatible server (OpenAI, vLLM, Ollama, llama.cpp).

Always streams from the upstream, also for whole answers: that is what lets a cut-short
generation keep its usage, a first-token timeout exist, and a cancellation close the
connection (the only signal an upstream gets that nobody is listening).
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import orjson
import stamina
from pydantic import SecretStr

from ..errors import RateLimited, StageTimeout, Unavailable, UpstreamError
from ..lifetime import Lifetime
from ..models import Generation, Prompt, Sampling
from . import EmbedKind, OnDelta, bounded
from ._chat_format import absorb_tool_calls, encode, wire_message
from ._http import check_vectors, error_message, post_json, unit
from ._transport import Answer, StreamingClient

__all__ = ["OpenAIEmbedder", "OpenAIGenerator"]

log = logging.getLogger("ragline.providers.openai")

_MAX_ERROR_BODY = 4096
_AFTER_DONE = 1.0  # seconds to read the end of a stream after its [DONE]
_MAX_WAIT = 30.0  # the longest Retry-After honoured; a longer one is passed on at once


class OpenAIGenerator:
    """Streams chat completions from ``{base_url}/chat/completions``.

    ``max_connections`` bounds the connection pool; a request waiting for a slot whose
    owner goes away leaves the queue without being sent.
    """

    provider = "openai"

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: SecretStr | None = None,
        max_connections: int = 32,
        connect_timeout: float = 5.0,
        retries: int = 2,
        max_event_bytes: int = 1_048_576,
        first_token_timeout: float | None = 60.0,
        total_timeout: float | None = 300.0,
        max_tokens: int | None = None,
        sampling: Sampling | None = None,
    ) -> None:
        self.model = model
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._api_key = api_key
        self._first_token_timeout = first_token_timeout
        self._total_timeout = total_timeout
        self._max_tokens = max_tokens
        self._sampling = sampling or Sampling()  # the settings'; unset parameters are the server's
        # Read and pool waits are bounded by our own first-token and total deadlines.
        self._client = StreamingClient(max_connections, connect_timeout, stage="generate")
        self._retries = retries
        self._max_event_bytes = max_event_bytes

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    def _body(self, prompt: Prompt) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [wire_message(m) for m in prompt.messages],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        max_tokens = bounded(prompt.max_tokens, self._max_tokens)
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        body.update(prompt.chosen(self._sampling).openai())
        if prompt.tools:
            body["tools"] = [tool.openai() for tool in prompt.tools]
            if prompt.tool_choice is not None:
                body["tool_choice"] = prompt.tool_choice
        return body

    def _headers(self, lifetime: Lifetime) -> dict[str, str]:
        headers = {"accept": "text/event-stream"}
        if self._api_key is not None:
            headers["authorization"] = f"Bearer {self._api_key.get_secret_value()}"
        request_id = lifetime.get("request_id")
        if request_id:
            headers["x-request-id"] = str(request_id)
        return headers

    async def generate(
        self,
        prompt: Prompt,
        lifetime: Lifetime,
        into: Generation,
        on_delta: OnDelta | None = None,
    ) -> Generation:
        """Generate into ``into``; stream pieces to ``on_delta`` when given."""
        await lifetime.checkpoint()
        start = anyio.current_time()
        total_deadline = start + self._total_timeout if self._total_timeout else math.inf
        first_deadline = (
            start + self._first_token_timeout if self._first_token_timeout else math.inf
        )
        scope = anyio.CancelScope(deadline=min(first_deadline, total_deadline))
        seen = _Seen(deadline=total_deadline)
        try:
            with scope:
                log.debug(
                    "upstream request queued",
                    extra={"model": self.model, "request_id": lifetime.get("request_id")},
                )
                body = encode(self._body(prompt))

                def retry(exc: BaseException) -> bool | float:
                    # Only a 429 or 503, which comes before any token (so the client has
                    # seen nothing), and only while the deadline leaves time to wait.
                    if not isinstance(exc, RateLimited | Unavailable):
                        return False
                    if exc.retry_after is None:
                        return True
                    left = scope.deadline - anyio.current_time()
                    return exc.retry_after if exc.retry_after < min(left, _MAX_WAIT) else False

                try:
                    # The first attempt on its own: a retry context per request cost a
                    # twentieth of a plain request's CPU, and most never retry.
                    await self._stream(body, lifetime, into, on_delta, scope, seen)
                except (RateLimited, Unavailable) as exc:
                    wait = retry(exc) if self._retries else False
                    if wait is False:
                        raise
                    await anyio.sleep(wait if wait is not True else 0.5 + random.random() / 2)
                    async for attempt in stamina.retry_context(
                        on=retry,
                        attempts=self._retries,
                        timeout=None,  # the scope's deadline bounds the whole
                        wait_initial=1.0,  # the backoff goes on from the first wait's 0.5
                        wait_max=_MAX_WAIT,
                        wait_jitter=0.5,
                    ):
                        with attempt:
                            await self._stream(body, lifetime, into, on_delta, scope, seen)
        except anyio.get_cancelled_exc_class():
            into.upstream_closed_at = time.monotonic()
            raise
        into.upstream_closed_at = time.monotonic()
        if scope.cancelled_caught and not seen.finished:
            if seen.first:
                raise StageTimeout("generate", self._total_timeout, "upstream total timeout")
            raise StageTimeout(
                "generate", self._first_token_timeout, "no first token from the upstream in time"
            )
        return into

    async def _stream(
        self,
        body: bytes,
        lifetime: Lifetime,
        into: Generation,
        on_delta: OnDelta | None,
        scope: anyio.CancelScope,
        seen: _Seen,
    ) -> None:
        """One attempt: POST, then read the stream into ``into``."""
        async with self._client.post(self._url, body, self._headers(lifetime)) as answer:
            with lifetime.on_cancel(answer.abort):  # closed the moment its owner goes
                into.upstream_statuses.append(answer.status)
                if answer.status >= 400:
                    await self._raise_for(answer)
                rest = ""
                async for text in answer.text():
                    if seen.finished:
                        # After [DONE] only the body's end is left: reading it returns the
                        # connection to the pool (a break would close it, and every request
                        # would open a new one).
                        continue
                    # Everything that arrived in one read goes on as one piece: a fast
                    # upstream's tokens cost one write downstream, not one each.
                    *lines, rest = (rest + text).split("\n")
                    if len(rest) > self._max_event_bytes:
                        # Leaving the block closes the connection: a hostile or broken
                        # upstream cannot make ragline hold an unbounded event.
                        raise UpstreamError(
                            f"upstream sent an event larger than {self._max_event_bytes} bytes "
                            "(RAGLINE_LLM_MAX_EVENT_BYTES)"
                        )
                    piece, moved, done = self._events(lines, into, lifetime)
                    if moved and not seen.first:
                        # A tool call's first fragment counts as a first token.
                        seen.first = True
                        scope.deadline = seen.deadline
                    if piece and on_delta is not None:
                        await on_delta(piece)
                    if done:
                        seen.finished = True
                        # An upstream that holds the stream open after [DONE] gets a moment,
                        # not the rest of the deadline.
                        scope.deadline = min(scope.deadline, anyio.current_time() + _AFTER_DONE)
        if not seen.finished and into.finish_reason is None:
            # Neither [DONE] nor a finish reason: cut off, or not a stream at all (a whole
            # JSON answer). Never a clean-looking answer.
            raise UpstreamError(
                "upstream's answer ended without a finish reason or [DONE]: cut off, or "
                "not an event stream"
            )

    def _events(
        self, lines: list[str], into: Generation, lifetime: Lifetime
    ) -> tuple[str, bool, bool]:
        """The text carried by these stream lines, whether they carried any output (text
        or a tool call fragment), and whether ``[DONE]`` was among them."""
        pieces: list[str] = []
        calls = len(into.tool_calls)
        fragments = into.completion_tokens
        # Lines read in one go: nothing can cancel the lifetime between two of them.
        cancelled = lifetime.cancelled
        for line in lines:
            # One event per data line: OpenAI-compatible servers never split a chunk
            # over several data lines.
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                return "".join(pieces), True, True
            piece = self._absorb(data, into, cancelled)
            if piece:
                pieces.append(piece)
        text = "".join(pieces)
        moved = bool(text) or len(into.tool_calls) != calls or into.completion_tokens != fragments
        return text, moved, False

    def _absorb(self, data: str, into: Generation, cancelled: bool) -> str:
        try:
            chunk = orjson.loads(data)  # per token: 0.6 µs, where json takes 2.2
        except ValueError:
            raise UpstreamError("upstream sent a malformed stream event") from None
        if not isinstance(chunk, dict):
            raise UpstreamError("upstream sent a malformed stream event")
        if "error" in chunk:
            raise UpstreamError(f"upstream error: {error_message(chunk)}")
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            counts = (usage.get("prompt_tokens"), usage.get("completion_tokens"))
            if not all(c is None or (type(c) is int and c >= 0) for c in counts):
                raise UpstreamError("upstream sent malformed usage")
            into.usage_reported = True
            into.prompt_tokens = counts[0] or 0
            into.completion_tokens = counts[1] or 0
        choices = chunk.get("choices") or ()
        if not isinstance(choices, list | tuple):
            raise UpstreamError("upstream sent a malformed stream event")
        piece = ""
        for choice in choices:
            if not isinstance(choice, dict) or not isinstance(choice.get("delta") or {}, dict):
                raise UpstreamError("upstream sent a malformed stream event")
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if isinstance(content, str):
                piece += content
            fragments = delta.get("tool_calls")
            if fragments:
                absorb_tool_calls(fragments, into)
                if cancelled:
                    into.tokens_after_cancel += 1
                if not into.usage_reported:
                    into.completion_tokens += 1
            if choice.get("finish_reason"):
                into.finish_reason = str(choice["finish_reason"])
        if piece:
            if cancelled:
                into.tokens_after_cancel += 1
            into.parts.append(piece)
            if not into.usage_reported:
                into.completion_tokens += 1
        return piece

    async def _raise_for(self, answer: Answer) -> None:
        status = answer.status
        if status in (401, 403):
            # The server's own key is wrong: say where to look, never what the upstream
            # echoed back (its message may quote part of the key).
            raise UpstreamError(
                f"the model server refused ragline's credentials (HTTP {status}): check "
                "RAGLINE_LLM_API_KEY",
                status=status,
            )
        body = await answer.head(_MAX_ERROR_BODY)
        try:
            message = error_message(json.loads(body))
        except ValueError:
            message = body[:200].decode("utf-8", "replace")
        text = f"upstream answered {status}: {message}"
        if status == 429:
            raise RateLimited(text, status=status, retry_after=answer.retry_after)
        if status == 503:
            raise Unavailable(text, status=status, retry_after=answer.retry_after)
        raise UpstreamError(text, status=status)


@dataclass
class _Seen:
    """What an attempt saw, kept when a deadline cuts it short."""

    deadline: float  # the total deadline, which replaces the first-token one
    first: bool = False
    finished: bool = False


class OpenAIEmbedder:
    """Embeddings from any OpenAI-compatible ``{base_url}/embeddings`` endpoint."""

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        dimensions: int,
        api_key: SecretStr | None = None,
        batch_size: int = 64,
        timeout: float = 60.0,
    ) -> None:
        self.model = model
        self.dimensions = dimensions
        self._url = base_url.rstrip("/") + "/embeddings"
        self._api_key = api_key
        self._batch_size = batch_size
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=5.0))

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    async def embed(
        self, texts: Sequence[str], lifetime: Lifetime, *, kind: EmbedKind = "document"
    ) -> list[list[float]]:
        """Embed ``texts`` in batches; every vector comes back at unit length."""
        headers = {}
        if self._api_key is not None:
            headers["authorization"] = f"Bearer {self._api_key.get_secret_value()}"
        vectors: list[list[float]] = []
        for start in range(0, len(texts), self._batch_size):
            batch = list(texts[start : start + self._batch_size])
            body = {"model": self.model, "input": batch, "encoding_format": "float"}
            answer = await post_json(
                self._client, self._url, body, lifetime, stage="embed", headers=headers
            )
            try:
                rows = sorted(answer["data"], key=lambda row: row["index"])
                got = [unit([float(x) for x in row["embedding"]]) for row in rows]
            except (KeyError, TypeError, ValueError):
                raise UpstreamError("embed: upstream answered an unexpected shape") from None
            check_vectors(got, len(batch), self.dimensions)
            vectors.extend(got)
        return vectors
