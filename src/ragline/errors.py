"""The one error root of ragline and its few subclasses.

Every error carries a stable machine-readable ``code``; the HTTP boundary maps the
classes to status codes in one place (:mod:`ragline.server.errors`).

Cancellation is *not* an error here: a cancelled piece of work unwinds with the async
library's own cancellation exception and reports its :class:`~ragline.CancelReason`
through its lifetime. Only a timeout that belongs to a stage becomes an error.
"""

from __future__ import annotations

__all__ = [
    "Conflict",
    "Forbidden",
    "Hidden",
    "InvalidRequest",
    "NotFound",
    "Overloaded",
    "RagLineError",
    "RateLimited",
    "StageTimeout",
    "Unauthorized",
    "Unavailable",
    "UpstreamError",
]


class RagLineError(Exception):
    """Root of every error ragline raises on purpose."""

    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:  # a more precise code than the class's own
            self.code = code


class InvalidRequest(RagLineError):
    """The caller sent something we cannot act on (bad JSON, bad field, too large)."""

    code = "invalid_request"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.param = param


class Unauthorized(RagLineError):
    """Missing or wrong credentials."""

    code = "unauthorized"


class NotFound(RagLineError):
    """A named thing (route, model, job) does not exist."""

    code = "not_found"


class Hidden(NotFound):
    """Something the caller may not see, answered exactly as if it did not exist (404):
    another member's run, job or collection. ``principal`` names who asked, for the
    audit log (never their key)."""

    def __init__(self, message: str, *, code: str, principal: str | None = None) -> None:
        super().__init__(message, code=code)
        self.principal = principal


class Forbidden(RagLineError):
    """Something the caller may see but not do (403): writing a collection they may
    only read."""

    code = "forbidden"

    def __init__(self, message: str, *, code: str | None = None, principal: str | None = None):
        super().__init__(message, code=code)
        self.principal = principal


class Conflict(RagLineError):
    """The request clashes with what exists (409): a principal's name is taken."""

    code = "conflict"


class StageTimeout(RagLineError, TimeoutError):
    """A stage's own deadline passed. A timeout, never a cancellation."""

    code = "timeout"

    def __init__(self, stage: str, timeout: float | None, message: str | None = None) -> None:
        limit = f" after {timeout:g}s" if timeout is not None else ""
        super().__init__(message or f"{stage} timed out{limit}")
        self.stage = stage
        self.timeout = timeout


class Overloaded(RagLineError):
    """Too much work queued already; try again later."""

    code = "overloaded"


class UpstreamError(RagLineError):
    """A provider (model server, vector store, connector) failed or answered an error."""

    code = "upstream_error"

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after  # seconds, when the upstream said (Retry-After)


class Unavailable(UpstreamError):
    """An engine ragline depends on (the database, a model server answering 503) cannot
    serve now; retry later."""

    code = "unavailable"


class RateLimited(UpstreamError):
    """The model server answered 429 and kept answering it through ragline's retries:
    passed on as 429 with its ``Retry-After``, so that the client's SDK backs off."""

    code = "rate_limited"
