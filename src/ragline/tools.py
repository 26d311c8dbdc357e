"""Tools a model can call: Python functions whose parameters are a pydantic model.

A tool is an ``async def f(args: Params, lifetime: Lifetime)`` or, for blocking code, a
plain ``def f(args: Params, token: CancelToken)`` that runs in a worker thread through
the thread bridge and polls its token. The parameters' JSON Schema comes from the model,
so what the model is offered and what is checked are the same thing::

    tools = ToolRegistry()

    class Weather(BaseModel):
        city: str

    @tools.tool
    async def weather(args: Weather, lifetime: Lifetime) -> str:
        "The weather in a city."
        ...

Invalid arguments and a tool's failures are not crashes: the agent loop hands them back
to the model as the tool's result.
"""

from __future__ import annotations

import contextlib
import inspect
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import InvalidRequest, RagLineError
from .lifetime import Lifetime
from .models import ChatRequest, CollectionName, Source, ToolSpec

if TYPE_CHECKING:
    from .chat import ChatPipeline

__all__ = [
    "SearchArgs",
    "Tool",
    "ToolArgumentsError",
    "ToolRegistry",
    "check_tools",
    "render",
    "search_tool",
]


class ToolArgumentsError(RagLineError):
    """The model's arguments for a tool are not valid JSON or do not fit its parameters."""

    code = "invalid_tool_arguments"


@dataclass(frozen=True, slots=True)
class Tool:
    """One callable tool. ``timeout`` overrides the loop's per-tool timeout."""

    name: str
    description: str
    params: type[BaseModel]
    func: Callable[..., Any]
    timeout: float | None = None
    blocking: bool = False  # a plain function: runs in a worker thread with a CancelToken

    @property
    def spec(self) -> ToolSpec:
        """What the model is offered."""
        return ToolSpec(
            name=self.name, description=self.description, parameters=_schema(self.params)
        )

    def parse(self, arguments: str) -> BaseModel:
        """The model's raw JSON arguments as the parameters model."""
        text = arguments.strip() or "{}"
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ToolArgumentsError(f"arguments are not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ToolArgumentsError("arguments must be a JSON object")
        try:
            return self.params.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}"
                for e in exc.errors(include_url=False)
            )
            raise ToolArgumentsError(f"invalid arguments: {problems}") from None


class ToolRegistry:
    """The tools a loop may call, by name."""

    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        for tool in tools:
            self.add(tool)

    def add(self, tool: Tool) -> Tool:
        """Register ``tool``; a name may be registered once."""
        ToolSpec(name=tool.name)  # the name must be one the OpenAI API accepts
        if tool.name in self._tools:
            raise ValueError(f"a tool named {tool.name!r} is already registered")
        self._tools[tool.name] = tool
        return tool

    def tool(
        self,
        func: Callable[..., Any] | None = None,
        *,
        name: str | None = None,
        description: str | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Register a function as a tool (a decorator, with or without arguments). The
        parameters model is the first parameter's annotation; the description defaults
        to the docstring."""

        def register(f: Callable[..., Any]) -> Callable[..., Any]:
            self.add(make_tool(f, name=name, description=description, timeout=timeout))
            return f

        return register(func) if func is not None else register

    def get(self, name: str) -> Tool | None:
        """The tool called ``name``, if registered."""
        return self._tools.get(name)

    def select(self, names: Iterable[str]) -> ToolRegistry:
        """A registry with only ``names``; an unknown name is a 422."""
        chosen = []
        for name in names:
            tool = self._tools.get(name)
            if tool is None:
                known = ", ".join(sorted(self._tools)) or "none"
                raise InvalidRequest(
                    f"no server-side tool {name!r} (this server has: {known})",
                    param="tools",
                    code="unknown_tool",
                )
            chosen.append(tool)
        return ToolRegistry(chosen)

    def specs(self) -> tuple[ToolSpec, ...]:
        """What the model is offered, in registration order."""
        return tuple(tool.spec for tool in self._tools.values())

    @property
    def names(self) -> list[str]:
        return list(self._tools)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[Tool]:
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)


def make_tool(
    func: Callable[..., Any],
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = None,
) -> Tool:
    """A :class:`Tool` from a function whose first parameter is a pydantic model."""
    parameters = list(inspect.signature(func).parameters.values())
    if len(parameters) != 2:
        raise TypeError(f"{func.__qualname__}: a tool takes (args, lifetime) or (args, token)")
    params: Any = parameters[0].annotation
    if isinstance(params, str):
        # A model defined in a function body cannot be resolved: reported just below.
        with contextlib.suppress(NameError):
            params = get_type_hints(func).get(parameters[0].name)
    if not (isinstance(params, type) and issubclass(params, BaseModel)):
        raise TypeError(
            f"{func.__qualname__}: annotate its first parameter with a pydantic model "
            "defined at module level"
        )
    doc = inspect.getdoc(func) or ""
    return Tool(
        name=name or func.__name__,
        description=description if description is not None else doc.split("\n\n")[0],
        params=params,
        func=func,
        timeout=timeout,
        blocking=not inspect.iscoroutinefunction(func),
    )


def render(value: Any, limit: int) -> str:
    """A tool's return value as the text the model reads, at most ``limit`` characters."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, BaseModel):
        text = value.model_dump_json()
    else:
        text = json.dumps(_plain(value), ensure_ascii=False, default=str)
    if len(text) > limit:
        text = text[:limit] + " …[truncated]"
    return text


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _schema(params: type[BaseModel]) -> dict[str, Any]:
    schema = params.model_json_schema()
    schema.pop("title", None)
    return schema


# -- the built-in search tool -----------------------------------------------------------
class SearchArgs(BaseModel):
    """Parameters of the ``search`` tool."""

    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=2_000, description="What to look for.")
    top_k: int = Field(4, ge=1, le=20, description="How many passages to return.")


def search_tool(pipeline: ChatPipeline) -> Tool:
    """``search``: the retrieval API as a tool. It searches the collection of the run
    (the lifetime's ``collection`` value); the model cannot pick another one."""

    async def search(args: SearchArgs, lifetime: Lifetime) -> list[Source]:
        collection: CollectionName | None = lifetime.get("collection")
        hits = await pipeline.retrieve(args.query, args.top_k, lifetime, collection)
        return [Source.from_hit(hit) for hit in hits]

    return make_tool(
        search,
        description="Search the indexed documents and return the most relevant passages, "
        "each with its source.",
    )


def check_tools(request: ChatRequest, server: ToolRegistry) -> None:
    """A client's tools may not take the names of server-side ones (a 422)."""
    clash = {spec.name for spec in request.tools} & set(server.names)
    if clash:
        raise InvalidRequest(
            f"client tools clash with server-side tools: {', '.join(sorted(clash))}",
            param="tools",
            code="tool_name_clash",
        )
