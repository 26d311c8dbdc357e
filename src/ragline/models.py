"""The values that flow through the chat pipeline."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from .lifetime import Cause

__all__ = [
    "ChatRequest",
    "ChatResult",
    "Chunk",
    "Generation",
    "Hit",
    "Message",
    "Prompt",
    "RetrieveRequest",
    "Source",
    "ToolCall",
    "ToolSpec",
    "Usage",
]

Role = Literal["system", "user", "assistant", "tool"]
CollectionName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")]


class RetrieveRequest(BaseModel):
    """A search without generation."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    query: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=32_000)]
    top_k: int = Field(4, ge=1, le=50)
    collection: CollectionName | None = None


class ToolCall(BaseModel):
    """A function call the model asked for. ``arguments`` is the model's raw JSON text,
    which may be invalid: it is checked only when the tool runs."""

    id: str
    name: str
    arguments: str = ""


class ToolSpec(BaseModel):
    """A function offered to the model: name, description, JSON Schema of its parameters."""

    model_config = ConfigDict(frozen=True)

    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})

    def openai(self) -> dict[str, Any]:
        """The OpenAI ``tools`` entry."""
        function: dict[str, Any] = {"name": self.name, "parameters": self.parameters}
        if self.description:
            function["description"] = self.description
        return {"type": "function", "function": function}


class Message(BaseModel):
    """One chat message. An assistant message may carry ``tool_calls``; a ``tool``
    message answers the call named by ``tool_call_id``."""

    model_config = ConfigDict(frozen=True)

    role: Role
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None


class ChatRequest(BaseModel):
    """A question for the pipeline. ``history`` holds earlier turns (OpenAI route)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    query: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=32_000)]
    top_k: int = Field(4, ge=1, le=50)
    system_instructions: Annotated[str, StringConstraints(max_length=32_000)] | None = None
    collection: CollectionName | None = None
    history: tuple[Message, ...] = ()
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    # Tool calling: the functions offered, and the exchange that followed the query
    # (assistant tool calls and tool results), appended after the composed prompt.
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: str | dict[str, Any] | None = None
    continuation: tuple[Message, ...] = ()


class Source(BaseModel):
    """A retrieved chunk that the answer was grounded on."""

    document_id: str
    chunk_index: int
    source: str
    score: float
    text: str

    @classmethod
    def from_hit(cls, hit: Hit) -> Source:
        """The source a search hit stands for."""
        return cls(
            document_id=hit.document_id,
            chunk_index=hit.chunk_index,
            source=hit.source,
            score=hit.score,
            text=hit.text,
        )


class Usage(BaseModel):
    """Token accounting, kept even when a generation is cut short."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    finish_reason: str | None = None
    cause: Cause | None = None
    estimated: bool = False


class ChatResult(BaseModel):
    """The answer, its sources and its usage; ``tool_calls`` when the model asked for
    tools instead of answering (``finish_reason`` ``tool_calls``)."""

    text: str = ""
    sources: list[Source] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    tool_calls: list[ToolCall] = Field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Hit:
    """A search result from a vector store."""

    document_id: str
    chunk_index: int
    text: str
    source: str
    score: float
    generation: int = 0


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of a document with its vector, as a vector store keeps it."""

    id: str
    document_id: str
    chunk_index: int
    text: str
    source: str
    vector: Sequence[float]
    generation: int = 0


@dataclass(frozen=True, slots=True)
class Prompt:
    """What a generator is asked: messages and sampling limits."""

    messages: tuple[Message, ...]
    max_tokens: int | None = None
    temperature: float | None = None
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: str | dict[str, Any] | None = None


@dataclass(slots=True)
class Generation:
    """A generation as it happens. A generator fills it in place, so whoever holds it
    still knows the text and usage after the generation is cut short."""

    parts: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    usage_reported: bool = False
    finish_reason: str | None = None
    tokens_after_cancel: int = 0
    upstream_closed_at: float | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)  # complete once it ends

    @property
    def text(self) -> str:
        """Everything generated so far."""
        return "".join(self.parts)
