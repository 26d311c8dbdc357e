"""The Responses API's request and its input items, read into ragline's messages: a
string is one user message; ``message``, ``function_call`` and ``function_call_output``
items become chat messages (consecutive function calls one assistant turn); reasoning
items are dropped, anything else is a clear 422."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from .errors import InvalidRequest
from .models import CollectionName, Message, ToolCall, ToolSpec

__all__ = ["Input", "ResponseRequest", "new_id", "read_input", "tool_specs"]

_Text = Annotated[str, StringConstraints(max_length=32_000)]


class ResponseRequest(BaseModel):
    """``POST /v1/responses``: the subset that ragline honours (the rest is ignored, as
    the SDKs send settings no server-side model here has, such as ``reasoning``)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None  # ragline answers with its one model, whatever is named
    input: str | Annotated[list[dict[str, Any]], Field(max_length=1_000)]
    instructions: _Text | None = None
    previous_response_id: Annotated[str, StringConstraints(max_length=128)] | None = None
    store: bool = True
    background: bool = False
    stream: bool = False
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    tools: list[dict[str, Any]] | None = Field(None, max_length=128)
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    metadata: dict[str, str] | None = None
    top_k: int = Field(4, ge=1, le=50)  # ragline's: the passages retrieved
    collection: CollectionName | None = None  # ragline's: where to retrieve from
    ragline: dict[str, Any] | None = None  # ragline's loop options (server.runs_api)


def _text_of(content: object, param: str) -> str:
    """The text of a message's ``content``: a string or text parts."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest("a message's content must be text or a list of parts", param=param)
    texts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in ("input_text", "output_text", "text") or not isinstance(
            part.get("text"), str
        ):
            raise InvalidRequest(f"only text parts are supported here, not {kind!r}", param=param)
        texts.append(part["text"])
    return "".join(texts)


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


@dataclass
class Input:
    """A request's input, read: its items as stored and as messages."""

    items: list[dict[str, Any]] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)


def read_input(raw: str | list[dict[str, Any]]) -> Input:
    """The input items (a string is one user message) as ``input_items`` lists them, and
    as chat messages; consecutive ``function_call`` items are one assistant turn."""
    items = [{"type": "message", "role": "user", "content": raw}] if isinstance(raw, str) else raw
    out = Input()
    for n, item in enumerate(items):
        param = f"input[{n}]"
        kind = item.get("type", "message")
        if kind == "message" or (kind is None and "role" in item):
            role = item.get("role")
            if role not in ("user", "system", "developer", "assistant"):
                raise InvalidRequest(f"unknown role {role!r}", param=param)
            text = _text_of(item.get("content"), param)
            part = "output_text" if role == "assistant" else "input_text"
            out.items.append(
                {
                    "type": "message",
                    "id": item.get("id") or new_id("msg"),
                    "role": role,
                    "status": "completed",
                    "content": [{"type": part, "text": text}],
                }
            )
            out.messages.append(
                Message(role="system" if role == "developer" else role, content=text)
            )
        elif kind == "function_call":
            call = _call(item, param)
            out.items.append(
                {
                    "type": "function_call",
                    "id": item.get("id") or f"fc_{call.id}",
                    "call_id": call.id,
                    "name": call.name,
                    "arguments": call.arguments,
                    "status": "completed",
                }
            )
            last = out.messages[-1] if out.messages else None
            if last is not None and last.role == "assistant" and last.tool_calls:
                out.messages[-1] = last.model_copy(update={"tool_calls": (*last.tool_calls, call)})
            else:
                out.messages.append(Message(role="assistant", content="", tool_calls=(call,)))
        elif kind == "function_call_output":
            call_id = item.get("call_id")
            if not isinstance(call_id, str) or not call_id:
                raise InvalidRequest("a function_call_output needs its call_id", param=param)
            output = item.get("output", "")
            text = output if isinstance(output, str) else _text_of(output, param)
            out.items.append(
                {
                    "type": "function_call_output",
                    "id": item.get("id") or new_id("fco"),
                    "call_id": call_id,
                    "output": text,
                    "status": "completed",
                }
            )
            out.messages.append(Message(role="tool", content=text, tool_call_id=call_id))
        elif kind == "reasoning":
            continue  # no model here reasons in items: nothing to carry
        else:
            raise InvalidRequest(f"input items of type {kind!r} are not supported", param=param)
    return out


def _call(item: dict[str, Any], param: str) -> ToolCall:
    call_id, name, arguments = item.get("call_id"), item.get("name"), item.get("arguments", "")
    if not all(isinstance(v, str) for v in (call_id, name, arguments)) or not call_id:
        raise InvalidRequest("a function_call needs call_id, name and arguments", param=param)
    return ToolCall(id=str(call_id), name=str(name), arguments=str(arguments))


def tool_specs(tools: list[dict[str, Any]] | None) -> tuple[ToolSpec, ...]:
    """The function tools offered (``{"type": "function", "name", "parameters", …}``)."""
    specs = []
    for n, tool in enumerate(tools or ()):
        if tool.get("type") != "function":
            raise InvalidRequest(
                f"only function tools are supported, not {tool.get('type')!r}",
                param=f"tools[{n}]",
            )
        try:
            specs.append(
                ToolSpec(
                    name=tool.get("name", ""),
                    description=tool.get("description") or "",
                    parameters=tool.get("parameters") or {"type": "object", "properties": {}},
                )
            )
        except ValueError:
            raise InvalidRequest(
                f"tool name {tool.get('name')!r} must be 1-64 letters, digits, '_' or '-'",
                param=f"tools[{n}]",
            ) from None
    return tuple(specs)
