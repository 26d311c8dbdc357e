"""The values that flow through the chat pipeline."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from .lifetime import Cause
from .prose import plain, title

__all__ = [
    "ChatRequest",
    "ChatResult",
    "Chunk",
    "Document",
    "DocumentProblem",
    "DocumentRecord",
    "Generation",
    "Hit",
    "Message",
    "Prompt",
    "RetrieveRequest",
    "Sampling",
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

    def identity(self) -> str:
        """The call's name and arguments, the arguments canonical where they are JSON:
        two calls with one identity ask for the same thing."""
        try:
            arguments = json.dumps(json.loads(self.arguments or "{}"), sort_keys=True)
        except ValueError:
            arguments = self.arguments.strip()
        return f"{self.name}\x00{arguments}"


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
    # Sampling, as in the OpenAI API; unset means the server's defaults (for the local
    # model, the ones chosen by the answer eval: docs/BENCHMARKS.md).
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    stop: tuple[Annotated[str, StringConstraints(min_length=1, max_length=256)], ...] = Field(
        (), max_length=4
    )
    seed: int | None = Field(None, ge=0, lt=2**63)
    # Tool calling: the functions offered, and the exchange that followed the query
    # (assistant tool calls and tool results), appended after the composed prompt.
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: str | dict[str, Any] | None = None
    continuation: tuple[Message, ...] = ()

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop(cls, value: object) -> object:
        return (value,) if isinstance(value, str) else value

    def sampling(self) -> Sampling:
        """The sampling parameters this request sets."""
        return Sampling.read(self)


class Source(BaseModel):
    """A retrieved chunk that the answer was grounded on. ``rank`` is its number in the
    prompt, as the answer cites it (``[rank]``); ``similarity`` (cosine, dense search) and
    ``bm25`` (keyword search) say how relevant it is; ``score`` is the ranking's own
    (in hybrid retrieval, the fused rank score, which means little to a reader)."""

    rank: int = 0
    document_id: str
    chunk_index: int
    source: str
    title: str = ""
    score: float
    similarity: float | None = None
    bm25: float | None = None
    text: str

    @classmethod
    def from_hit(cls, hit: Hit, rank: int = 0) -> Source:
        """The source a search hit stands for."""
        return cls(
            rank=rank,
            document_id=hit.document_id,
            chunk_index=hit.chunk_index,
            source=hit.source,
            title=title(hit.text, hit.source),
            score=hit.score,
            similarity=hit.similarity,
            bm25=hit.bm25,
            text=hit.text,
        )

    def relevance(self) -> str:
        """The relevance as a reader reads it: "similarity 0.62, BM25 7.1"."""
        parts = []
        if self.similarity is not None:
            parts.append(f"similarity {self.similarity:.2f}")
        if self.bm25 is not None:
            parts.append(f"BM25 {self.bm25:.1f}")
        return ", ".join(parts) or f"score {self.score:.2f}"

    def snippet(self, length: int = 160) -> str:
        """The start of the passage, as prose, cut at a word."""
        # The headings are in the title already.
        body = "\n".join(line for line in self.text.split("\n") if not line.startswith("#"))
        text = " ".join(plain(body).split())
        if len(text) <= length:
            return text
        return text[:length].rsplit(" ", 1)[0] + " …"


class Usage(BaseModel):
    """Token accounting, kept even when a generation is cut short."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    finish_reason: str | None = None
    cause: Cause | None = None
    estimated: bool = False

    def add(self, step: Usage) -> None:
        """Add a step's tokens to these (a loop's usage, summed over its steps)."""
        self.prompt_tokens += step.prompt_tokens
        self.completion_tokens += step.completion_tokens
        self.total_tokens += step.total_tokens
        self.estimated = self.estimated or step.estimated


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
    score: float  # the ranking's own: cosine, BM25, or the fused rank score
    generation: int = 0
    similarity: float | None = None  # cosine similarity to the query, when searched dense
    bm25: float | None = None  # BM25 score, when searched by keywords


@dataclass(frozen=True, slots=True)
class DocumentRecord:
    """What the record store knows of one visible document."""

    document_id: str
    content_hash: str
    generation: int
    chunks: int
    source: str
    updated_at: float


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
    acl: int = 0  # its document's ACL class (ragline.access.acl_class); 0: no ACL


@dataclass(frozen=True, slots=True)
class Sampling:
    """How to pick tokens. ``None`` leaves a parameter to the next level down: the
    request over the settings, the settings over the generator's own defaults."""

    temperature: float | None = None
    top_p: float | None = None
    min_p: float | None = None
    repeat_penalty: float | None = None  # llama.cpp's multiplicative penalty
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    stop: tuple[str, ...] | None = None
    seed: int | None = None

    @classmethod
    def read(cls, source: object, prefix: str = "") -> Sampling:
        """The parameters ``source`` sets, as attributes named ``prefix`` + the field's
        name (an empty ``stop`` is no stop)."""
        found: dict[str, Any] = {}
        for f in fields(cls):
            value = getattr(source, prefix + f.name, None)
            if f.name == "stop":
                value = tuple(value) if value else None
            found[f.name] = value
        return cls(**found)

    def over(self, defaults: Sampling) -> Sampling:
        """These parameters, with ``defaults`` where they are unset."""
        chosen = {}
        for f in fields(self):
            mine = getattr(self, f.name)
            chosen[f.name] = mine if mine is not None else getattr(defaults, f.name)
        return Sampling(**chosen)

    def openai(self) -> dict[str, Any]:
        """The parameters that are set, by their OpenAI (and vLLM) names."""
        names = {"repeat_penalty": "repetition_penalty"}
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[names.get(f.name, f.name)] = list(value) if f.name == "stop" else value
        return out


@dataclass(frozen=True, slots=True)
class Prompt:
    """What a generator is asked: messages and sampling limits."""

    messages: tuple[Message, ...]
    max_tokens: int | None = None
    temperature: float | None = None
    sampling: Sampling = Sampling()
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: str | dict[str, Any] | None = None
    passages: int | None = None  # how many of the hits the prompt holds; None: all
    # What the answer may draw on: the retrieval query and the passages' texts (the
    # grounding guard checks each sentence against them).
    query: str = ""
    query_vector: tuple[float, ...] = ()  # the query's embedding, when it was retrieved for
    evidence: tuple[str, ...] = ()

    def chosen(self, defaults: Sampling) -> Sampling:
        """The sampling to use: this prompt's ``temperature``, then its ``sampling``,
        then ``defaults``."""
        own = self.sampling
        if self.temperature is not None:
            own = replace(own, temperature=self.temperature)
        return own.over(defaults)


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
    upstream_statuses: list[int] = field(default_factory=list)  # one per attempt

    @property
    def text(self) -> str:
        """Everything generated so far."""
        return "".join(self.parts)


@dataclass(frozen=True)
class Document:
    """A document's text and where it came from; ``metadata`` is read-only. ``acl``:
    who may read it (``user:NAME``, ``group:NAME``), narrowing its collection's grant;
    empty: whoever may read the collection."""

    id: str
    text: str
    source: str
    metadata: Mapping[str, Any] = field(default_factory=dict, hash=False)
    acl: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # A frozen dataclass still hands out its dict: copy it behind a read-only view.
        object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))


@dataclass(frozen=True)
class DocumentProblem:
    """Why a file, or one line of a JSONL file, gave no document."""

    source: str
    document_id: str | None
    reason: str
