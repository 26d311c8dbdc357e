"""A short memory of how recent requests ended, readable by request id.

A client that hangs up cannot read the answer to its own request, yet it may want to know
what its hang-up did on the server: the web page's Stop button shows the cause, the tokens
the model produced and how soon its connection closed. The boundary records the requests
that were cut short or that generated, at most ``RAGLINE_OUTCOMES_KEPT`` of them, the
oldest forgotten first; with API keys on, only the key that made a request can read it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .models import Generation

__all__ = ["Outcome", "Outcomes"]


@dataclass(slots=True, eq=False)
class Outcome:
    """How one request ended. The pipeline adds what its generations produced."""

    request_id: str
    owner: str | None = None  # the name of the principal that made the request
    route: str = ""
    status: int | None = None
    cause: str | None = None
    completion_tokens: int = 0
    tokens_after_cancel: int = 0
    duration_ms: float = 0.0
    generated: bool = False
    # A generation cut short, and when: how soon its model stopped is read when asked,
    # since a local model's thread may still be finishing its token when the request ends.
    stopped: tuple[Generation, float] | None = None

    def public(self) -> dict[str, Any]:
        """The JSON of ``GET /api/v1/requests/{id}``."""
        closed_ms = None
        if self.stopped is not None:
            generation, at = self.stopped
            if generation.upstream_closed_at is not None:
                closed_ms = round(max(generation.upstream_closed_at - at, 0.0) * 1000, 2)
        return {
            "request_id": self.request_id,
            "route": self.route,
            "status": self.status,
            "cause": self.cause,
            "completion_tokens": self.completion_tokens,
            "tokens_after_cancel": self.tokens_after_cancel,
            "upstream_closed_ms": closed_ms,  # from the cancellation to the model's stop
            "duration_ms": self.duration_ms,
        }


class Outcomes:
    """The newest ``kept`` outcomes."""

    def __init__(self, kept: int) -> None:
        self._kept = kept
        self._found: OrderedDict[str, Outcome] = OrderedDict()

    def record(self, outcome: Outcome) -> None:
        """Remember ``outcome`` (a request id given twice keeps the newer)."""
        self._found.pop(outcome.request_id, None)
        self._found[outcome.request_id] = outcome
        while len(self._found) > self._kept:
            self._found.popitem(last=False)

    def get(self, request_id: str) -> Outcome | None:
        """The outcome of ``request_id``, whoever made it (see its ``owner``)."""
        return self._found.get(request_id)
