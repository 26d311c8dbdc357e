"""``ragline ask``: stream an answer in the terminal, from a running server (``--url``) or
in-process. Ctrl-C stops generation at once (the server or the local model sees the
request end) and prints a one-line note."""

from __future__ import annotations

import json
import signal
import sys
from dataclasses import dataclass, field
from typing import Any, TextIO

import anyio
import httpx

from ..access import LOCAL
from ..errors import RagLineError
from ..guards import GUARD_STOPS
from ..lifetime import CancelReason, Cause, Lifetime
from ..models import ChatRequest, ChatResult, Source
from ..settings import Settings
from .ingest import running_server

__all__ = ["AskOutcome", "ask"]


@dataclass
class AskOutcome:
    """What the terminal saw."""

    pieces: int = 0
    sources: list[dict[str, Any]] = field(default_factory=list)
    usage: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    kept: str | None = None  # the answer, when the degeneration guard cut a loop


async def ask(
    question: str,
    *,
    url: str | None,
    top_k: int,
    api_key: str | None = None,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    """Ask ``question``; returns the process exit code (130 after Ctrl-C)."""
    outcome = AskOutcome()
    target: list[Lifetime] = []  # what Ctrl-C cancels, once there is something to cancel
    if url is None:
        # A server that owns the data directory is asked, as `ragline ingest` hands it
        # its jobs: its store cannot be opened by a second process.
        url = await running_server(Settings())
    async with anyio.create_task_group() as tg:
        tg.start_soon(_stop_on_ctrl_c, target)
        try:
            if url is not None:
                reason = await _remote(url, question, top_k, api_key, target, outcome, out)
            else:
                reason = await _local(question, top_k, target, outcome, out)
        finally:
            tg.cancel_scope.cancel()
    if reason is not None:
        out.write("\n")
        err.write(
            f"[stopped by {reason.detail or reason.cause} after {outcome.pieces} pieces; "
            "generation ended]\n"
        )
        return 130
    if outcome.error is not None:
        err.write(f"\nragline: {outcome.error}\n")
        return 1
    out.write("\n")
    if outcome.kept is not None:
        # A guard cut the answer: what streamed after the cut is not part of it.
        why = (
            "the model wrote what no source says"
            if outcome.usage.get("finish_reason") == "ungrounded"
            else "the model began to repeat itself"
        )
        out.write(f"\n[{why}; the answer is:]\n{outcome.kept}\n")
    if outcome.sources:
        out.write("\nSources\n")
    for n, data in enumerate(outcome.sources, start=1):
        source = Source.model_validate(data)
        out.write(f"[{source.rank or n}] {source.title or source.source} ({source.relevance()})\n")
        out.write(f"    {source.snippet()}\n")
    out.flush()
    return 0


async def _stop_on_ctrl_c(target: list[Lifetime]) -> None:
    with anyio.open_signal_receiver(signal.SIGINT) as signals:
        async for _ in signals:
            for lifetime in target:
                lifetime.cancel(Cause.EXPLICIT, "Ctrl-C")
            if target:
                return


def _write(out: TextIO, outcome: AskOutcome, text: str) -> None:
    outcome.pieces += 1
    out.write(text)
    out.flush()


async def _remote(
    url: str,
    question: str,
    top_k: int,
    api_key: str | None,
    target: list[Lifetime],
    outcome: AskOutcome,
    out: TextIO,
) -> CancelReason | None:
    root = Lifetime.root("cli")
    target.append(root)
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    endpoint = url.rstrip("/") + "/api/v1/inference/stream"
    event = "message"
    with root:
        async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None)) as http:
            try:
                async with http.stream(
                    "GET", endpoint, params={"query": question, "top_k": top_k}, headers=headers
                ) as response:
                    if response.status_code != 200:
                        body = json.loads(await response.aread() or b"{}")
                        outcome.error = body.get("error", {}).get("message", response.reason_phrase)
                        return None
                    async for line in response.aiter_lines():
                        if line.startswith("event: "):
                            event = line[7:]
                        elif line.startswith("data: "):
                            _on_event(event, json.loads(line[6:]), outcome, out)
                            event = "message"
            except httpx.HTTPError as exc:
                outcome.error = f"cannot reach {url}: {exc}"
    return root.reason


def _on_event(event: str, data: dict[str, Any], outcome: AskOutcome, out: TextIO) -> None:
    if event == "message" and "delta" in data:
        _write(out, outcome, str(data["delta"]))
    elif event == "done":
        outcome.sources = list(data.get("sources") or [])
        outcome.usage = dict(data.get("usage") or {})
        if data.get("finish_reason") in GUARD_STOPS:
            outcome.kept = str(data.get("text", ""))
    elif event == "error":
        error = data.get("error") or {}
        outcome.error = f"{error.get('message')} (cause: {error.get('cause', 'error')})"


async def _local(
    question: str, top_k: int, target: list[Lifetime], outcome: AskOutcome, out: TextIO
) -> CancelReason | None:
    from ..runtime import Runtime

    runtime = Runtime(Settings())
    target.append(runtime.lifetime)

    async def on_delta(text: str) -> None:
        _write(out, outcome, text)

    result = ChatResult()
    try:
        async with runtime.running():
            if runtime.unavailable is not None:
                outcome.error = f"not ready: {runtime.unavailable}"
                return None
            # Whoever can open the data directory reads all of it: an administrator.
            with runtime.lifetime.child("ask", values={"principal": LOCAL}) as lifetime:
                request = ChatRequest(query=question, top_k=top_k)
                await runtime.pipeline.run(request, lifetime, on_delta=on_delta, into=result)
            # Read before leaving: leaving the runtime cancels it with cause shutdown.
            reason = lifetime.reason
    except RagLineError as exc:
        outcome.error = exc.message
        return None
    outcome.sources = [s.model_dump() for s in result.sources]
    outcome.usage = result.usage.model_dump(mode="json")
    if result.usage.finish_reason in GUARD_STOPS:
        outcome.kept = result.text
    return reason
