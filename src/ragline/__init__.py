"""ragline: retrieval-augmented chat in which every piece of work has an owner and stops
the moment that owner goes away."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .access import Grant, Principal, Readable
from .agent import Agent, AgentResult, LoopLimits
from .chat import ChatPipeline, StageTimeouts
from .errors import (
    Conflict,
    Forbidden,
    Hidden,
    InvalidRequest,
    NotFound,
    Overloaded,
    RagLineError,
    RateLimited,
    StageTimeout,
    Unauthorized,
    Unavailable,
    UpstreamError,
)
from .lifetime import CancelReason, Cause, Lifetime, LifetimeError
from .models import (
    ChatRequest,
    ChatResult,
    Chunk,
    Generation,
    Hit,
    Message,
    Prompt,
    RetrieveRequest,
    Sampling,
    Source,
    ToolCall,
    ToolSpec,
    Usage,
)
from .repetition import Loop, RepetitionGuard
from .settings import Settings
from .supervisor import Supervisor
from .threads import CancelToken, ThreadBridge, ThreadCancelled
from .tools import Tool, ToolRegistry

if TYPE_CHECKING:
    from .middleware import Ragline, RaglineMiddleware, request_lifetime
    from .server import create_app

__all__ = [
    "Agent",
    "AgentResult",
    "CancelReason",
    "CancelToken",
    "Cause",
    "ChatPipeline",
    "ChatRequest",
    "ChatResult",
    "Chunk",
    "Conflict",
    "Forbidden",
    "Generation",
    "Grant",
    "Hidden",
    "Hit",
    "InvalidRequest",
    "Lifetime",
    "LifetimeError",
    "Loop",
    "LoopLimits",
    "Message",
    "NotFound",
    "Overloaded",
    "Principal",
    "Prompt",
    "RagLineError",
    "Ragline",
    "RaglineMiddleware",
    "RateLimited",
    "Readable",
    "RepetitionGuard",
    "RetrieveRequest",
    "Sampling",
    "Settings",
    "Source",
    "StageTimeout",
    "StageTimeouts",
    "Supervisor",
    "ThreadBridge",
    "ThreadCancelled",
    "Tool",
    "ToolCall",
    "ToolRegistry",
    "ToolSpec",
    "Unauthorized",
    "Unavailable",
    "UpstreamError",
    "Usage",
    "create_app",
    "request_lifetime",
]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # The server (Starlette, uvicorn) loads only when asked for.
    if name == "create_app":
        from .server import create_app

        return create_app
    if name in {"Ragline", "RaglineMiddleware", "request_lifetime"}:
        from . import middleware

        return getattr(middleware, name)
    raise AttributeError(f"module 'ragline' has no attribute {name!r}")
