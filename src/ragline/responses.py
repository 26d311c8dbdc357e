"""The OpenAI Responses API's response object and its typed stream of events, each
numbered by ``sequence_number`` (the request is :mod:`ragline.response_input`).

Compatible enough that the official ``openai`` SDK and ``openai-agents`` read them
unchanged. ragline's own additions (the sources, a finish reason of its own, the cause of
a stop) go in an extra ``ragline`` field the SDKs pass over; the sources are also
``file_citation`` annotations of the answer's text. Serving them is
:mod:`ragline.server.responses_api`.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

from .agent import AgentResult
from .models import ChatResult, ToolCall
from .response_input import ResponseRequest, new_id

__all__ = ["TERMINAL", "Draft", "citations"]


_CITE = re.compile(r"\[(\d+)\]")
TERMINAL = frozenset({"completed", "incomplete", "failed", "cancelled"})


@dataclass
class Draft:
    """One response in the making: what its object says whatever its state, and the
    numbered events that stream it. ``sequence_number`` counts from 0."""

    request: ResponseRequest
    model: str
    id: str = field(default_factory=lambda: new_id("resp"))
    created_at: int = field(default_factory=lambda: int(time.time()))
    message_id: str = field(default_factory=lambda: new_id("msg"))
    seq: int = 0
    _open: bool = False  # the message item has been announced
    _text: list[str] = field(default_factory=list)

    # -- the object ------------------------------------------------------------------
    def object(
        self,
        status: str,
        result: ChatResult | None = None,
        *,
        error: dict[str, Any] | None = None,
        cause: str | None = None,
    ) -> dict[str, Any]:
        """The response object in ``status``, with what ``result`` holds so far."""
        r = self.request
        result = result if result is not None else ChatResult()
        incomplete = None
        if status == "completed" and result.usage.finish_reason == "length":
            status, incomplete = "incomplete", {"reason": "max_output_tokens"}
        output = self._output(result, status) if status != "in_progress" or self._open else []
        u = result.usage
        extra: dict[str, Any] = {"sources": [s.model_dump(mode="json") for s in result.sources]}
        if u.finish_reason is not None:
            extra["finish_reason"] = u.finish_reason
        if cause is not None:
            extra["cause"] = cause
        if isinstance(result, AgentResult):
            extra["steps"] = [s.model_dump(mode="json") for s in result.steps]
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "completed_at": int(time.time()) if status == "completed" else None,
            "status": status,
            "background": r.background,
            "error": error,
            "incomplete_details": incomplete,
            "instructions": r.instructions,
            "max_output_tokens": r.max_output_tokens,
            "model": self.model,
            "output": output,
            "parallel_tool_calls": r.parallel_tool_calls is not False,
            "previous_response_id": r.previous_response_id,
            "store": r.store,
            "temperature": r.temperature,
            "text": {"format": {"type": "text"}},
            "tool_choice": r.tool_choice if r.tool_choice is not None else "auto",
            "tools": r.tools or [],
            "top_p": r.top_p,
            "truncation": "disabled",
            "metadata": r.metadata or {},
            "usage": {
                "input_tokens": u.prompt_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": u.completion_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": u.total_tokens,
            },
            "ragline": extra,
        }

    def _message(self, text: str, status: str) -> dict[str, Any]:
        return {
            "type": "message",
            "id": self.message_id,
            "status": status,
            "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
            if status != "in_progress" or text
            else [],
        }

    def _output(self, result: ChatResult, status: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        text = result.text if status in TERMINAL else "".join(self._text)
        if text or not result.tool_calls or self._open:
            state = "completed" if status == "completed" else "incomplete"
            if status == "in_progress":
                state = "in_progress"
            item = self._message(text, state)
            if item["content"]:
                item["content"][0]["annotations"] = citations(text, result)
            items.append(item)
        items.extend(_function_call(call) for call in result.tool_calls)
        return items

    # -- the events ------------------------------------------------------------------
    def _event(self, kind: str, **data: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self.seq, **data}
        self.seq += 1
        return event

    def opening(self, status: str = "in_progress") -> list[dict[str, Any]]:
        """``response.created`` and ``response.in_progress``."""
        created = self.object(status)
        return [
            self._event("response.created", response=created),
            self._event("response.in_progress", response=self.object("in_progress")),
        ]

    def delta(self, text: str) -> list[dict[str, Any]]:
        """A piece of the answer (the message item opens with the first)."""
        out = []
        if not self._open:
            self._open = True
            out.append(
                self._event(
                    "response.output_item.added",
                    output_index=0,
                    item=self._message("", "in_progress"),
                )
            )
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            out.append(
                self._event(
                    "response.content_part.added",
                    item_id=self.message_id,
                    output_index=0,
                    content_index=0,
                    part=part,
                )
            )
        self._text.append(text)
        out.append(
            self._event(
                "response.output_text.delta",
                item_id=self.message_id,
                output_index=0,
                content_index=0,
                delta=text,
                logprobs=[],
            )
        )
        return out

    def closing(
        self,
        status: str,
        result: ChatResult,
        *,
        error: dict[str, Any] | None = None,
        cause: str | None = None,
    ) -> list[dict[str, Any]]:
        """The items' last events, then the final one: ``response.completed``,
        ``response.incomplete`` (also for a cancelled response, whose object says
        ``cancelled``: the API has no event of its own for it) or ``response.failed``."""
        final = self.object(status, result, error=error, cause=cause)
        out: list[dict[str, Any]] = []
        for index, item in enumerate(final["output"]):
            if item["type"] == "message":
                out.extend(self._close_message(item))
            else:
                out.extend(self._close_call(index, item))
        kind = {"completed": "completed", "failed": "failed"}.get(final["status"], "incomplete")
        out.append(self._event(f"response.{kind}", response=final))
        return out

    def _close_message(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        out = []
        if not self._open:  # an answer with no text: its item still opens and closes
            self._open = True
            announced = self._message("", "in_progress")
            out.append(self._event("response.output_item.added", output_index=0, item=announced))
        part = item["content"][0] if item["content"] else None
        if part is not None:
            common = {"item_id": self.message_id, "output_index": 0, "content_index": 0}
            out.append(
                self._event("response.output_text.done", text=part["text"], logprobs=[], **common)
            )
            out.append(self._event("response.content_part.done", part=part, **common))
        out.append(self._event("response.output_item.done", output_index=0, item=item))
        return out

    def _close_call(self, index: int, item: dict[str, Any]) -> list[dict[str, Any]]:
        common = {"item_id": item["id"], "output_index": index}
        started = {**item, "arguments": "", "status": "in_progress"}
        return [
            self._event("response.output_item.added", output_index=index, item=started),
            self._event(
                "response.function_call_arguments.delta", delta=item["arguments"], **common
            ),
            self._event(
                "response.function_call_arguments.done",
                arguments=item["arguments"],
                name=item["name"],
                **common,
            ),
            self._event("response.output_item.done", output_index=index, item=item),
        ]


def _function_call(call: ToolCall) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": f"fc_{call.id}",
        "call_id": call.id,
        "name": call.name,
        "arguments": call.arguments,
        "status": "completed",
    }


def citations(text: str, result: ChatResult) -> list[dict[str, Any]]:
    """Each source as a ``file_citation``: where the text first cites it (``[n]``), else
    at the end. ``file_id`` is the document's id, ``filename`` where it came from."""
    cited: dict[int, int] = {}
    for match in _CITE.finditer(text):
        cited.setdefault(int(match.group(1)), match.start())
    return [
        {
            "type": "file_citation",
            "file_id": source.document_id,
            "filename": source.source,
            "index": cited.get(source.rank, len(text)),
        }
        for source in result.sources
    ]
