"""The chat completions wire format on the way out and in: the request body's encoding,
its messages, and streamed tool-call fragments put back together."""

from __future__ import annotations

import json
from typing import Any

import orjson

from ..errors import UpstreamError
from ..models import Generation, Message, ToolCall

__all__ = ["absorb_tool_calls", "encode", "wire_message"]


def encode(body: dict[str, Any]) -> bytes:
    try:
        # A tenth of json's time. The copy: orjson's bytes keep a 4 KiB buffer, and a
        # held stream keeps its request body (for a retry) as long as it lasts.
        return memoryview(orjson.dumps(body)).tobytes()
    except orjson.JSONEncodeError:  # an integer past 64 bits (a client's seed, a schema)
        return json.dumps(body).encode()


def wire_message(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        out["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in message.tool_calls
        ]
        if not message.content:
            out["content"] = None
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    return out


def absorb_tool_calls(fragments: object, into: Generation) -> None:
    """Streamed tool calls come in fragments keyed by ``index``: the first carries the id
    and name, the rest pieces of the arguments' JSON text."""
    if not isinstance(fragments, list):
        raise UpstreamError("upstream sent malformed tool calls")
    for fragment in fragments:
        if not isinstance(fragment, dict):
            raise UpstreamError("upstream sent malformed tool calls")
        index = fragment.get("index", len(into.tool_calls))
        function = fragment.get("function") or {}
        if not isinstance(index, int) or index < 0 or not isinstance(function, dict):
            raise UpstreamError("upstream sent malformed tool calls")
        while len(into.tool_calls) <= index:
            into.tool_calls.append(ToolCall(id="", name=""))
        call = into.tool_calls[index]
        if fragment.get("id"):
            call.id = str(fragment["id"])
        if function.get("name") and not call.name:
            call.name = str(function["name"])
        if isinstance(function.get("arguments"), str):
            call.arguments += function["arguments"]
