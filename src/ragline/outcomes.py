"""A short memory of how recent requests ended, readable by request id.

A client that hangs up cannot read the answer to its own request, yet it may want to know
what its hang-up did on the server: the web page's Stop button shows the cause, the tokens
the model produced and how soon its connection closed. The boundary records the requests
that were cut short or that generated, at most ``RAGLINE_OUTCOMES_KEPT`` of them, the
oldest forgotten first; with API keys on, only the key that made a request can read it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Outcome", "Outcomes"]


@dataclass(slots=True, eq=False)
class Outcome:
    """How one request ended. The pipeline adds what its generations produced."""

    request_id: str
    owner: str | None = None  # a digest of the API key that made the request
    route: str = ""
    status: int | None = None
    cause: str | None = None
    completion_tokens: int = 0
    tokens_after_cancel: int = 0
    upstream_closed_ms: float | None = None  # from the cancellation to the model's close
    duration_ms: float = 0.0
    generated: bool = False

    def public(self) -> dict[str, Any]:
        """The JSON of ``GET /api/v1/requests/{id}``."""
        found = asdict(self)
        del found["owner"], found["generated"]
        return found


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

    def get(self, request_id: str, owner: str | None) -> Outcome | None:
        """The outcome of ``request_id`` if ``owner`` made it."""
        found = self._found.get(request_id)
        if found is None or found.owner != owner:
            return None
        return found
