"""HTTP mapping of outcomes, in one place: error classes and causes to status codes and
JSON bodies (OpenAI's error shape, so SDK clients understand them too)."""

from __future__ import annotations

import json
from typing import Any

from ..errors import (
    Conflict,
    Forbidden,
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
from ..lifetime import CancelReason, Cause

__all__ = [
    "CLIENT_CLOSED",
    "error_body",
    "error_bytes",
    "outcome_label",
    "status_for",
    "status_for_cause",
]

CLIENT_CLOSED = 499  # nginx's "client closed request"; only ever in logs and metrics

_STATUS: list[tuple[type[RagLineError], int]] = [
    (InvalidRequest, 422),
    (Unauthorized, 401),
    (NotFound, 404),
    (Forbidden, 403),
    (Conflict, 409),
    (StageTimeout, 504),
    (Overloaded, 503),
    (Unavailable, 503),  # before its parent
    (RateLimited, 429),
    (UpstreamError, 502),
]

_CAUSE_STATUS = {
    Cause.CLIENT_DISCONNECTED: CLIENT_CLOSED,
    Cause.SHUTDOWN: 503,
    Cause.DEADLINE: 504,
    Cause.EXPLICIT: 503,
    Cause.REPETITION: 502,  # a generation stage's own stop; never a request's
    Cause.UNGROUNDED: 502,  # likewise
}


def status_for(exc: RagLineError) -> int:
    """The status code for an error."""
    # 400: a body that is not JSON, or an action the object's state does not allow (as
    # OpenAI answers a cancel of a response that is not a background one).
    if isinstance(exc, InvalidRequest) and exc.code in {
        "malformed_json",
        "invalid_json",
        "invalid_state",
    }:
        return 400
    if isinstance(exc, InvalidRequest) and exc.code == "body_too_large":
        return 413
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def status_for_cause(reason: CancelReason) -> int:
    """The status code that a cancellation cause stands for."""
    return _CAUSE_STATUS[reason.cause]


def _error_type(status: int) -> str:
    if status in (401, 403):
        return "authentication_error"
    if status == 429:
        return "rate_limit_error"
    if status == 404:
        return "not_found_error"
    if status < 500:
        return "invalid_request_error"
    if status == 504:
        return "timeout"
    if status == 503:
        return "service_unavailable"
    return "server_error"


def error_body(
    status: int,
    code: str,
    message: str,
    *,
    param: str | None = None,
    cause: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``{"error": {"message", "type", "code", "param", "cause"}}``."""
    error: dict[str, Any] = {
        "message": message,
        "type": _error_type(status),
        "code": code,
        "param": param,
    }
    if cause is not None:
        error["cause"] = cause
    body: dict[str, Any] = {"error": error}
    if extra:
        body.update(extra)
    return body


def error_for_exception(exc: RagLineError) -> tuple[int, dict[str, Any]]:
    """Status and body for an error."""
    status = status_for(exc)
    param = exc.param if isinstance(exc, InvalidRequest) else None
    cause = str(Cause.DEADLINE) if isinstance(exc, StageTimeout) else None
    return status, error_body(status, exc.code, exc.message, param=param, cause=cause)


def error_for_cause(reason: CancelReason) -> tuple[int, dict[str, Any]]:
    """Status and body for work that a cancellation cut short."""
    status = status_for_cause(reason)
    messages = {
        Cause.SHUTDOWN: "the server is shutting down",
        Cause.DEADLINE: "the request ran past its deadline",
        Cause.EXPLICIT: "the request was cancelled",
        Cause.CLIENT_DISCONNECTED: "the client went away",
        Cause.REPETITION: "the model began to repeat itself",
        Cause.UNGROUNDED: "the model wrote what no source says",
    }
    code = "timeout" if reason.cause is Cause.DEADLINE else str(reason.cause)
    return status, error_body(status, code, messages[reason.cause], cause=str(reason.cause))


def error_bytes(body: dict[str, Any]) -> bytes:
    """JSON-encode an error body."""
    return json.dumps(body, separators=(",", ":")).encode()


def outcome_label(status: int) -> str:
    """The ``outcome`` label of the request metric."""
    if status < 400:
        return "ok"
    if status == CLIENT_CLOSED:
        return "499"
    if status < 500:
        return "4xx"
    if status in (503, 504):
        return str(status)
    return "5xx"
