"""The fake Bot Connector: Teams' REST API for replies, sends and updates, with its
streaming rules enforced and every request recorded. A mixin of
:class:`teams_fakes.FakeTeams`, whose ``__init__`` holds the state."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Self, TypeVar
from urllib.parse import unquote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from teams_identity import error_body

T = TypeVar("T")

ConversationKind = Literal["personal", "groupChat", "channel"]

CANCELLED_BY_USER = "Content stream was cancelled by user."
EXCEEDED_TIME = "Content stream finished due to exceeded streaming time."
ALREADY_COMPLETED = "Content stream is not allowed on a already completed streamed message."
NOT_IN_GROUP_CHATS = "Content stream is not allowed in group chats"
NOT_CUMULATIVE = "Request streamed content should contain the previously streamed content"

_ERROR_CODES = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    412: "PreconditionFailed",
    429: "Throttled",
    500: "InternalServerError",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "GatewayTimeout",
}


@dataclass
class ConnectorCall:
    """One request to the Bot Connector, as the fake saw and answered it."""

    method: str
    path: str  # raw (still escaped) request path
    conversation_id: str | None  # unescaped
    activity_id_in_path: str | None  # replyToId for POST, the updated activity for PUT
    body: dict[str, Any]
    arrived: float  # time.monotonic()
    status: int = 0
    applied: bool = False  # delivered (visible effect happened), whatever the status
    response: dict[str, Any] = field(default_factory=dict)

    @property
    def activity_type(self) -> str | None:
        value = self.body.get("type")
        return value if isinstance(value, str) else None

    @property
    def streaminfo(self) -> dict[str, Any] | None:
        return _streaminfo(self.body)


@dataclass
class Stream:
    """One streamed message: its chunks as accepted, and how it ended."""

    id: str
    conversation_id: str
    started: float  # arrival of the first chunk
    chunks: list[tuple[int, str, float]] = field(default_factory=list)  # (sequence, text, arrived)
    text: str = ""  # the latest accepted "streaming" text (cumulative)
    informative_text: str | None = None  # the latest accepted "informative" text
    final_text: str | None = None
    final_entities: list[dict[str, Any]] = field(default_factory=list)
    finished: bool = False
    finished_at: float | None = None
    stopped_by_user: bool = False
    stopped_at: float | None = None  # when the 403 "cancelled by user" was answered
    expired: bool = False  # a request was refused for the stream_limit
    updated_text: str | None = None  # text of the latest PUT of this activity

    @property
    def last_sequence(self) -> int:
        return self.chunks[-1][0] if self.chunks else 0


@dataclass
class Violation:
    """A connector request that came too soon after the previous one in its conversation."""

    conversation_id: str
    arrived: float
    previous: float

    @property
    def gap(self) -> float:
        return self.arrived - self.previous


@dataclass
class _Fault:
    status: int
    times: int
    applied: bool
    retry_after: float | None
    match: Callable[[ConnectorCall], bool] | None
    code: str | None
    message: str | None


@dataclass
class _Posted:
    """An activity the connector created: a plain message or a stream's message."""

    id: str
    conversation_id: str
    body: dict[str, Any] | None  # latest visible body (None for a stream not yet final)
    stream: Stream | None = None

    def view(self) -> dict[str, Any] | None:
        if self.body is not None:
            return {**self.body, "id": self.id}
        if self.stream is not None and self.stream.text:
            return {"type": "message", "id": self.id, "text": self.stream.text}
        return None


def _streaminfo(body: dict[str, Any]) -> dict[str, Any] | None:
    entities = body.get("entities")
    if not isinstance(entities, list):
        return None
    for entity in entities:
        if isinstance(entity, dict) and entity.get("type") == "streaminfo":
            return entity
    return None


Answer = tuple[int, dict[str, Any], dict[str, str]]


class ConnectorMixin:
    """Conversations, faults, and the Connector's REST API."""

    def conversation(self, conversation_id: str, kind: ConversationKind = "personal") -> Self:
        """Register the type of a conversation (unregistered ones are personal)."""
        self._kinds[conversation_id] = kind
        return self

    def kind_of(self, conversation_id: str) -> ConversationKind:
        return self._kinds.get(conversation_id, "personal")

    def stop_stream_after(self, chunks: int, stream_id: str | None = None) -> None:
        """The user presses stop once a stream (any, or ``stream_id``) has ``chunks`` chunks.

        ``chunks`` counts accepted chunk requests including the first (informative) one.
        The next request for that stream (a chunk or the final message) is answered 403
        "cancelled by user", and so is every later one.
        """
        self._stop_after = (chunks, stream_id)

    def fail_next(
        self,
        status: int,
        *,
        times: int = 1,
        applied: bool = False,
        retry_after: float | None = None,
        match: Callable[[ConnectorCall], bool] | None = None,
        code: str | None = None,
        message: str | None = None,
    ) -> None:
        """Answer the next ``times`` matching connector requests with ``status``.

        ``match`` sees the :class:`ConnectorCall` (status not yet set). With ``applied`` the
        request is first carried out as if it succeeded (a refusal the fake would answer
        anyway wins). A 429 always carries ``Retry-After`` (``retry_after`` or 1 s).
        """
        self._faults.append(_Fault(status, times, applied, retry_after, match, code, message))

    def messages(self, conversation_id: str) -> list[dict[str, Any]]:
        """The messages a user would see in the conversation, in order.

        Each is the latest body (the created one, the final one of a stream, or the latest PUT)
        with its ``id``; a stream without an end shows its latest streamed text.
        """
        views = (p.view() for p in self._posted.values() if p.conversation_id == conversation_id)
        return [v for v in views if v is not None]

    def calls_in(self, conversation_id: str) -> list[ConnectorCall]:
        return [c for c in self.calls if c.conversation_id == conversation_id]

    # -- inbound: Teams as the sender -------------------------------------------------------

    def _new_id(self) -> str:
        self._next_id += 1
        return str(self._next_id)

    async def _connector(self, request: Request) -> Response:
        arrived = time.monotonic()
        raw_path: bytes = request.scope.get("raw_path") or request.url.path.encode()
        raw_text = raw_path.decode("latin-1")
        raw_body = await request.body()
        body: Any = None
        try:
            body = json.loads(raw_body) if raw_body else {}
        except ValueError:
            body = None
        parts = raw_text.removeprefix("/amer/").split("/")
        conversation_raw: str | None = None
        activity_id: str | None = None
        shape_ok = len(parts) in (4, 5) and parts[2] and parts[3] == "activities"
        if shape_ok and parts[:2] == ["v3", "conversations"]:
            conversation_raw = parts[2]
            activity_id = unquote(parts[4]) if len(parts) == 5 and parts[4] else None
        call = ConnectorCall(
            method=request.method,
            path=raw_text,
            conversation_id=unquote(conversation_raw) if conversation_raw else None,
            activity_id_in_path=activity_id,
            body=body if isinstance(body, dict) else {},
            arrived=arrived,
        )
        self.calls.append(call)
        status, payload, headers = self._answer(
            call, conversation_raw, request.headers.get("authorization"), body
        )
        call.status = status
        call.response = payload
        self._notify()
        return JSONResponse(payload, status_code=status, headers=headers)

    def _answer(
        self,
        call: ConnectorCall,
        conversation_raw: str | None,
        authorization: str | None,
        body: Any,
    ) -> Answer:
        conversation_id = call.conversation_id
        if conversation_id is None or conversation_raw is None:
            return 404, error_body("NotFound", f"No connector resource at {call.path}"), {}
        if self.require_token and not self._token_valid(authorization):
            return 401, {"message": "Authorization has been denied for this request."}, {}
        if self.require_escaped_ids and any(c in conversation_raw for c in ":@;"):
            return 400, error_body("BadArgument", "The conversation id must be URL-escaped."), {}
        previous = self._last_arrival.get(conversation_id)
        self._last_arrival[conversation_id] = call.arrived
        if previous is not None and call.arrived - previous < self.min_interval:
            self.violations.append(Violation(conversation_id, call.arrived, previous))
            return 429, error_body("Throttled", "Too many requests."), {"Retry-After": "1"}
        fault = self._take_fault(call)
        if fault is not None and not fault.applied:
            return self._fault_answer(fault)
        if not isinstance(body, dict):
            status, payload = 400, error_body("BadArgument", "The body must be a JSON object.")
        elif call.method == "POST":
            status, payload = self._post_activity(call, conversation_id, body)
        elif call.method == "PUT" and call.activity_id_in_path is not None:
            status, payload = self._put_activity(call, conversation_id, body)
        else:
            status, payload = 405, error_body("MethodNotAllowed", f"{call.method} not supported.")
        if fault is not None and status < 300:
            return self._fault_answer(fault)
        return status, payload, {}

    def _take_fault(self, call: ConnectorCall) -> _Fault | None:
        for fault in self._faults:
            if fault.match is None or fault.match(call):
                fault.times -= 1
                if fault.times <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    @staticmethod
    def _fault_answer(fault: _Fault) -> Answer:
        code = fault.code or _ERROR_CODES.get(fault.status, "ServiceError")
        message = fault.message or f"Injected failure {fault.status}."
        headers: dict[str, str] = {}
        if fault.retry_after is not None or fault.status == 429:
            headers["Retry-After"] = (
                f"{fault.retry_after if fault.retry_after is not None else 1:g}"
            )
        return fault.status, error_body(code, message), headers

    def _post_activity(
        self, call: ConnectorCall, conversation_id: str, body: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        info = _streaminfo(body)
        activity_type = body.get("type")
        if info is None:
            call.applied = True
            if activity_type == "typing":
                return 200, {}
            message_id = self._new_id()
            self._posted[message_id] = _Posted(message_id, conversation_id, dict(body))
            return 201, {"id": message_id}
        if self.kind_of(conversation_id) != "personal":
            return 405, error_body("BadArgument", NOT_IN_GROUP_CHATS)
        stream_type = info.get("streamType")
        stream_id = info.get("streamId")
        sequence = info.get("streamSequence")
        text = body.get("text")
        if activity_type == "typing":
            if stream_type not in ("informative", "streaming"):
                return 400, error_body("BadRequest", f"Invalid streamType {stream_type!r}.")
            if not isinstance(text, str) or not text:
                return 400, error_body("BadRequest", "A stream chunk needs text.")
            if stream_id is None:
                if sequence != 1:
                    return 400, error_body("BadRequest", "The first chunk needs streamSequence 1.")
                stream_id = self._new_id()
                stream = Stream(stream_id, conversation_id, started=call.arrived)
                self.streams[stream_id] = stream
                self._posted[stream_id] = _Posted(stream_id, conversation_id, None, stream)
                self._accept_chunk(stream, stream_type, text, call)
                return 201, {"id": stream_id}
            refused = self._stream_refusal(conversation_id, stream_id, call)
            if refused is not None:
                return refused
            stream = self.streams[stream_id]
            if sequence != stream.last_sequence + 1:
                return 400, error_body(
                    "BadRequest",
                    f"Invalid streamSequence {sequence!r}: expected {stream.last_sequence + 1}.",
                )
            if stream_type == "streaming" and not text.startswith(stream.text):
                return 400, error_body("BadRequest", NOT_CUMULATIVE)
            self._accept_chunk(stream, stream_type, text, call)
            return 202, {"id": stream_id}
        if activity_type == "message":
            if stream_type != "final" or stream_id is None:
                return 400, error_body(
                    "BadRequest", "A streamed message ends with a final streamId."
                )
            refused = self._stream_refusal(conversation_id, stream_id, call)
            if refused is not None:
                return refused
            stream = self.streams[stream_id]
            stream.finished = True
            stream.finished_at = call.arrived
            stream.final_text = text if isinstance(text, str) else None
            entities = body.get("entities")
            stream.final_entities = list(entities) if isinstance(entities, list) else []
            self._posted[stream_id].body = dict(body)
            call.applied = True
            return 200, {"id": stream_id}
        return 400, error_body("BadRequest", f"Activity type {activity_type!r} cannot stream.")

    def _accept_chunk(
        self, stream: Stream, stream_type: str, text: str, call: ConnectorCall
    ) -> None:
        sequence = stream.last_sequence + 1
        stream.chunks.append((sequence, text, call.arrived))
        if stream_type == "informative":
            stream.informative_text = text
        else:
            stream.text = text
        call.applied = True

    def _stream_refusal(
        self, conversation_id: str, stream_id: Any, call: ConnectorCall
    ) -> tuple[int, dict[str, Any]] | None:
        """Why a follow-up request of a stream is refused (None if it is not)."""
        stream = self.streams.get(stream_id) if isinstance(stream_id, str) else None
        if stream is None or stream.conversation_id != conversation_id:
            return 400, error_body("BadRequest", f"Unknown streamId {stream_id!r}.")
        if stream.stopped_by_user:
            return 403, error_body("ContentStreamNotAllowed", CANCELLED_BY_USER)
        if stream.finished:
            return 403, error_body("ContentStreamNotAllowed", ALREADY_COMPLETED)
        if call.arrived - stream.started > self.stream_limit:
            stream.expired = True
            return 403, error_body("ContentStreamNotAllowed", EXCEEDED_TIME)
        if self._stop_after is not None:
            chunks, only = self._stop_after
            if len(stream.chunks) >= chunks and only in (None, stream.id):
                self._stop_after = None
                stream.stopped_by_user = True
                stream.stopped_at = time.monotonic()
                self.user_stopped.set()
                return 403, error_body("ContentStreamNotAllowed", CANCELLED_BY_USER)
        return None

    def _put_activity(
        self, call: ConnectorCall, conversation_id: str, body: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        activity_id = call.activity_id_in_path
        posted = self._posted.get(activity_id or "")
        if posted is None or posted.conversation_id != conversation_id:
            return 404, error_body("NotFound", f"Activity {activity_id!r} not found.")
        posted.body = dict(body)
        if posted.stream is not None:
            text = body.get("text")
            posted.stream.updated_text = text if isinstance(text, str) else ""
        call.applied = True
        return 200, {"id": posted.id}
