"""Fake Microsoft services for the Teams channel: one real HTTP server that plays Teams.

:class:`FakeTeams` serves, on a free loopback port,

* the Bot Framework OpenID metadata and JWKS the bot checks inbound tokens against,
* the Entra ID client-credentials token endpoint the bot gets outbound tokens from,
* the Bot Connector REST API (under ``service_url``, like ``https://smba.trafficmanager.net/amer/``)
  with Teams' streaming rules enforced,

and it plays Teams as the sender: it signs inbound JWTs (:meth:`FakeTeams.token_for`), builds
realistic activities (:meth:`FakeTeams.activity`) and posts them to the bot, redelivering an
activity whose webhook stays unanswered (:meth:`FakeTeams.deliver`).

Everything it sees is recorded (``calls``, ``streams``, ``violations``, ``token_requests``,
``redeliveries``) and :meth:`FakeTeams.wait_for` wakes on every recorded change.

Typical use::

    async with FakeTeams.running(min_interval=0.05) as teams:
        activity = teams.activity("What is ragline?")
        delivery = await teams.deliver(f"{bot.url}/api/messages", activity)
        await teams.wait_for(lambda: teams.messages(activity["conversation"]["id"]))
"""

from __future__ import annotations

import enum
import functools
import json
import secrets
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qs, unquote

import anyio
import httpx
import jwt
import uvicorn
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

T = TypeVar("T")

ISSUER = "https://api.botframework.com"
SCOPE = "https://api.botframework.com/.default"
ConversationKind = Literal["personal", "groupChat", "channel"]
KeyName = Literal["endorsed", "unendorsed", "rogue"]

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


class _Default(enum.Enum):
    TOKEN = "a valid token for the activity's serviceUrl"


VALID_TOKEN = _Default.TOKEN


@asynccontextmanager
async def serve_app(app: ASGIApp) -> AsyncIterator[str]:
    """Run ``app`` on uvicorn on a free loopback port; yields its base URL (no trailing /)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_config=None,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        while not server.started:
            await anyio.sleep(0.01)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True


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
class Delivery:
    """The bot's answer to one webhook POST (``status`` 0 and ``abandoned`` if given up on)."""

    status: int
    body: Any
    elapsed_seconds: float
    abandoned: bool = False
    redelivery: Delivery | None = None  # the answer to Teams' repeat, if it repeated


@dataclass
class Redelivery:
    activity_id: str | None
    at: float
    reason: Literal["unanswered", "forced"]


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
class _Key:
    kid: str
    private: rsa.RSAPrivateKey
    endorsements: list[str]


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


@functools.cache
def _rsa_key(slot: int) -> rsa.RSAPrivateKey:
    """RSA keys are slow to make, so every FakeTeams in a process shares them."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def _streaminfo(body: dict[str, Any]) -> dict[str, Any] | None:
    entities = body.get("entities")
    if not isinstance(entities, list):
        return None
    for entity in entities:
        if isinstance(entity, dict) and entity.get("type") == "streaminfo":
            return entity
    return None


Answer = tuple[int, dict[str, Any], dict[str, str]]


class FakeTeams:
    """Teams, the Bot Connector, Entra ID and the Bot Framework key service in one server.

    Serve with ``async with FakeTeams.running(**options) as teams`` (or ``teams.run()``).
    """

    def __init__(
        self,
        *,
        app_id: str = "00000000-0000-0000-0000-00000000b07",
        app_password: str = "s3cret",
        min_interval: float = 1.0,
        stream_limit: float = 120.0,
        token_lifetime: int = 3599,
        token_delay: float = 0.0,
        require_token: bool = True,
        require_escaped_ids: bool = True,
    ) -> None:
        self.app_id = app_id
        self.app_password = app_password
        self.min_interval = min_interval
        self.stream_limit = stream_limit
        self.token_lifetime = token_lifetime
        self.token_delay = token_delay
        self.require_token = require_token
        self.require_escaped_ids = require_escaped_ids
        self.issuer = ISSUER
        self.tenant_id = str(uuid.uuid4())
        self.user_id = f"29:1{secrets.token_urlsafe(24)}"
        self.user_aad_id = str(uuid.uuid4())
        self.port = 0

        self.calls: list[ConnectorCall] = []
        self.streams: dict[str, Stream] = {}
        self.violations: list[Violation] = []
        self.token_requests: list[float] = []
        self.tokens_issued: list[str] = []
        self.redeliveries: list[Redelivery] = []
        self.metadata_requests = 0
        self.jwks_requests = 0
        self.user_stopped = anyio.Event()

        self._kinds: dict[str, ConversationKind] = {}
        self._default_conversations: dict[str, str] = {}
        self._tokens: dict[str, float] = {}  # token -> expiry (monotonic)
        self._posted: dict[str, _Posted] = {}
        self._last_arrival: dict[str, float] = {}
        self._faults: list[_Fault] = []
        self._stop_after: tuple[int, str | None] | None = None
        self._next_id = int(time.time() * 1000)
        self._changed = anyio.Event()

        endorsed = _Key(f"k{secrets.token_hex(6)}", _rsa_key(0), ["msteams", "skype"])
        unendorsed = _Key(f"k{secrets.token_hex(6)}", _rsa_key(1), ["webchat"])
        self._published: list[_Key] = [endorsed, unendorsed]
        self._signing: dict[str, _Key] = {"endorsed": endorsed, "unendorsed": unendorsed}
        self._rogue_private = _rsa_key(2)

        self.app = Starlette(
            routes=[
                Route("/v1/.well-known/openidconfiguration", self._openid, methods=["GET"]),
                Route("/v1/.well-known/keys", self._jwks, methods=["GET"]),
                Route("/{tenant}/oauth2/v2.0/token", self._token, methods=["POST"]),
                Route(
                    "/amer/{rest:path}",
                    self._connector,
                    methods=["GET", "POST", "PUT", "DELETE", "PATCH"],
                ),
            ]
        )

    # -- running ----------------------------------------------------------------------------

    @classmethod
    @asynccontextmanager
    async def running(cls, **options: Any) -> AsyncIterator[FakeTeams]:
        """Build a FakeTeams with ``options`` and serve it for the life of the block."""
        teams = cls(**options)
        async with teams.run():
            yield teams

    @asynccontextmanager
    async def run(self) -> AsyncIterator[FakeTeams]:
        """Serve this FakeTeams on a free loopback port for the life of the block."""
        async with serve_app(self.app) as base:
            self.port = int(base.rsplit(":", 1)[1])
            yield self

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openid_url(self) -> str:
        return f"{self.base_url}/v1/.well-known/openidconfiguration"

    @property
    def jwks_url(self) -> str:
        return f"{self.base_url}/v1/.well-known/keys"

    @property
    def login_url(self) -> str:
        """The authority base: ``{login_url}/{tenant}/oauth2/v2.0/token``."""
        return self.base_url

    @property
    def token_url(self) -> str:
        return f"{self.base_url}/botframework.com/oauth2/v2.0/token"

    @property
    def service_url(self) -> str:
        return f"{self.base_url}/amer/"

    # -- steering ---------------------------------------------------------------------------

    def conversation(self, conversation_id: str, kind: ConversationKind = "personal") -> FakeTeams:
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

    def expire_tokens(self) -> None:
        """Every outbound token issued so far is expired from now on."""
        for token in self._tokens:
            self._tokens[token] = 0.0

    def rotate_keys(self, *, drop_old: bool = False) -> str:
        """Publish a new endorsed signing key and sign with it; returns its kid."""
        old = self._signing["endorsed"]
        new = _Key(f"k{secrets.token_hex(6)}", _rsa_key(3 + len(self._published)), old.endorsements)
        if drop_old:
            self._published.remove(old)
        self._published.append(new)
        self._signing["endorsed"] = new
        return new.kid

    # -- waiting ----------------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for(self, predicate: Callable[[], T], *, timeout: float | None = None) -> T:
        """Wait until ``predicate()`` is truthy (checked on every recorded change); return it."""
        with anyio.fail_after(timeout):
            while True:
                changed = self._changed
                value = predicate()
                if value:
                    return value
                await changed.wait()

    # -- views ------------------------------------------------------------------------------

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

    def token_for(
        self,
        service_url: str | None = None,
        *,
        audience: str | None = None,
        issuer: str | None = None,
        expires_in: float = 3600,
        not_before_offset: float = 0,
        key: KeyName = "endorsed",
        kid: str | None = None,
        extra_claims: dict[str, Any] | None = None,
    ) -> str:
        """A Bot Framework JWT as Teams sends it to the bot's webhook.

        ``key``: "endorsed" (published, endorses msteams), "unendorsed" (published, endorses
        only webchat) or "rogue" (unpublished key claiming the endorsed key's kid). An
        ``extra_claims`` value of None removes that claim.
        """
        now = time.time()
        claims: dict[str, Any] = {
            "iss": issuer or self.issuer,
            "aud": audience or self.app_id,
            "serviceurl": service_url or self.service_url,
            "nbf": int(now + not_before_offset),
            "exp": int(now + expires_in),
            "iat": int(now),
        }
        for name, value in (extra_claims or {}).items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        if key == "rogue":
            private, key_id = self._rogue_private, self._signing["endorsed"].kid
        else:
            private, key_id = self._signing[key].private, self._signing[key].kid
        return jwt.encode(claims, private, algorithm="RS256", headers={"kid": kid or key_id})

    def default_conversation(self, kind: ConversationKind = "personal") -> str:
        """The conversation :meth:`activity` uses when given none: one per kind."""
        if kind not in self._default_conversations:
            self._default_conversations[kind] = self._new_conversation_id(kind)
        conversation_id = self._default_conversations[kind]
        self.conversation(conversation_id, kind)
        return conversation_id

    def _new_conversation_id(self, kind: ConversationKind) -> str:
        if kind == "personal":
            return f"a:1{secrets.token_urlsafe(40)}"
        if kind == "groupChat":
            return f"19:{secrets.token_hex(16)}@thread.v2"
        return f"19:{secrets.token_hex(16)}@thread.tacv2;messageid={self._new_id()}"

    def activity(
        self,
        text: str = "hi",
        *,
        conversation_id: str | None = None,
        kind: ConversationKind = "personal",
        activity_type: str = "message",
        mention: bool | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """A realistic msteams activity from the user to the bot; ``fields`` override keys.

        Without ``conversation_id`` it is in this fake's default conversation of ``kind``.
        In group chats and channels (unless ``mention=False``) the text starts with the bot's
        at-mention, as Teams only sends the bot messages that mention it there.
        """
        if conversation_id is None:
            conversation_id = self.default_conversation(kind)
        else:
            self.conversation(conversation_id, kind)
        activity_id = self._new_id()
        bot = {"id": f"28:{self.app_id}", "name": "ragline"}
        conversation: dict[str, Any] = {
            "id": conversation_id,
            "conversationType": kind,
            "tenantId": self.tenant_id,
        }
        channel_data: dict[str, Any] = {"tenant": {"id": self.tenant_id}}
        entities: list[dict[str, Any]] = [
            {"type": "clientInfo", "locale": "en-US", "country": "US", "platform": "Web"}
        ]
        if kind != "personal":
            conversation["isGroup"] = True
            if mention is None or mention:
                tag = "<at>ragline</at>"
                text = f"{tag} {text}"
                entities.insert(0, {"type": "mention", "text": tag, "mentioned": bot})
        if kind == "channel":
            channel_id = conversation_id.split(";", 1)[0]
            team_id = f"19:{secrets.token_hex(16)}@thread.tacv2"
            channel_data |= {
                "teamsChannelId": channel_id,
                "teamsTeamId": team_id,
                "channel": {"id": channel_id},
                "team": {"id": team_id},
            }
        now = datetime.now(UTC)
        activity: dict[str, Any] = {
            "type": activity_type,
            "id": activity_id,
            "timestamp": now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond:06d}0Z",
            "localTimestamp": now.isoformat(),
            "localTimezone": "Etc/UTC",
            "serviceUrl": self.service_url,
            "channelId": "msteams",
            "from": {"id": self.user_id, "name": "Ada", "aadObjectId": self.user_aad_id},
            "recipient": bot,
            "conversation": conversation,
            "channelData": channel_data,
            "locale": "en-US",
            "textFormat": "plain",
            "text": text,
            "entities": entities,
        }
        activity.update(fields)
        return activity

    async def deliver(
        self,
        bot_url: str,
        activity: dict[str, Any],
        *,
        token: str | _Default | None = VALID_TOKEN,
        redeliver_unanswered_after: float | None = 15.0,
        abandon_first: bool = False,
    ) -> Delivery:
        """POST ``activity`` to the bot's webhook as Teams does.

        If the bot has not answered within ``redeliver_unanswered_after`` seconds, Teams posts
        the same activity again (recorded in ``redeliveries``); the first POST stays open
        unless ``abandon_first`` (then its connection is dropped, like a client timeout).
        The answer to the repeat is in ``Delivery.redelivery``. ``token=None`` sends no
        Authorization header.
        """
        headers = self._webhook_headers(activity, token)
        answers: list[Delivery] = []
        answered = anyio.Event()
        first_scope = anyio.CancelScope()
        started = time.monotonic()
        async with httpx.AsyncClient(timeout=httpx.Timeout(120.0)) as client:

            async def first() -> None:
                with first_scope:
                    answers.append(await self._post(client, bot_url, activity, headers))
                answered.set()

            repeat: Delivery | None = None
            async with anyio.create_task_group() as tg:
                tg.start_soon(first)
                if redeliver_unanswered_after is not None:
                    with anyio.move_on_after(redeliver_unanswered_after):
                        await answered.wait()
                    if not answered.is_set():
                        if abandon_first:
                            first_scope.cancel()
                        self.redeliveries.append(
                            Redelivery(activity.get("id"), time.monotonic(), "unanswered")
                        )
                        self._notify()
                        repeat = await self._post(client, bot_url, activity, headers)
        if answers:
            delivery = answers[0]
        else:
            delivery = Delivery(0, None, time.monotonic() - started, abandoned=True)
        delivery.redelivery = repeat
        return delivery

    async def redeliver(
        self,
        bot_url: str,
        activity: dict[str, Any],
        *,
        token: str | _Default | None = VALID_TOKEN,
    ) -> Delivery:
        """POST ``activity`` again, as Teams' retry would (recorded in ``redeliveries``)."""
        self.redeliveries.append(Redelivery(activity.get("id"), time.monotonic(), "forced"))
        self._notify()
        async with httpx.AsyncClient(timeout=httpx.Timeout(120.0)) as client:
            return await self._post(
                client, bot_url, activity, self._webhook_headers(activity, token)
            )

    def _webhook_headers(
        self, activity: dict[str, Any], token: str | _Default | None
    ) -> dict[str, str]:
        if token is VALID_TOKEN:
            service_url = activity.get("serviceUrl")
            token = self.token_for(service_url if isinstance(service_url, str) else None)
        headers = {"User-Agent": "Microsoft-SkypeBotApi (Microsoft-BotFramework 3.0)"}
        if isinstance(token, str):
            headers["Authorization"] = f"Bearer {token}"
        return headers

    @staticmethod
    async def _post(
        client: httpx.AsyncClient, url: str, activity: dict[str, Any], headers: dict[str, str]
    ) -> Delivery:
        started = time.monotonic()
        response = await client.post(url, json=activity, headers=headers)
        body: Any
        try:
            body = response.json()
        except ValueError:
            body = response.text or None
        return Delivery(response.status_code, body, time.monotonic() - started)

    # -- key service ------------------------------------------------------------------------

    async def _openid(self, request: Request) -> Response:
        self.metadata_requests += 1
        self._notify()
        return JSONResponse(
            {
                "issuer": self.issuer,
                "authorization_endpoint": "https://invalid.botframework.com",
                "jwks_uri": self.jwks_url,
                "id_token_signing_alg_values_supported": ["RS256"],
                "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            }
        )

    async def _jwks(self, request: Request) -> Response:
        self.jwks_requests += 1
        self._notify()
        keys = []
        for key in self._published:
            jwk = RSAAlgorithm.to_jwk(key.private.public_key(), as_dict=True)
            keys.append(
                {
                    "kty": "RSA",
                    "use": "sig",
                    "kid": key.kid,
                    "n": jwk["n"],
                    "e": jwk["e"],
                    "endorsements": list(key.endorsements),
                }
            )
        return JSONResponse({"keys": keys})

    # -- token endpoint ---------------------------------------------------------------------

    async def _token(self, request: Request) -> Response:
        self.token_requests.append(time.monotonic())
        self._notify()
        raw = await request.body()
        if self.token_delay:
            await anyio.sleep(self.token_delay)
        tenant = request.path_params["tenant"]
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("application/x-www-form-urlencoded"):
            return self._aad_error(400, "invalid_request", "AADSTS900144: form body expected.")
        if tenant not in ("botframework.com", self.tenant_id):
            return self._aad_error(400, "invalid_request", f"AADSTS90002: Tenant '{tenant}'.")
        form = {k: v[-1] for k, v in parse_qs(raw.decode(), keep_blank_values=True).items()}
        for name in ("grant_type", "client_id", "client_secret", "scope"):
            if not form.get(name):
                return self._aad_error(400, "invalid_request", f"AADSTS900144: no '{name}'.")
        if form["grant_type"] != "client_credentials":
            return self._aad_error(400, "unsupported_grant_type", "AADSTS70003: grant type.")
        if form["client_id"] != self.app_id:
            return self._aad_error(400, "unauthorized_client", "AADSTS700016: unknown app.")
        if form["client_secret"] != self.app_password:
            return self._aad_error(401, "invalid_client", "AADSTS7000215: Invalid secret.")
        if form["scope"] != SCOPE:
            return self._aad_error(400, "invalid_scope", "AADSTS1002012: invalid scope.")
        token = f"eyJ0{secrets.token_urlsafe(48)}"
        self._tokens[token] = time.monotonic() + self.token_lifetime
        self.tokens_issued.append(token)
        self._notify()
        return JSONResponse(
            {
                "token_type": "Bearer",
                "expires_in": self.token_lifetime,
                "ext_expires_in": self.token_lifetime,
                "access_token": token,
            }
        )

    @staticmethod
    def _aad_error(status: int, error: str, description: str) -> Response:
        return JSONResponse(
            {
                "error": error,
                "error_description": description,
                "error_codes": [int("".join(c for c in description.split(":")[0] if c.isdigit()))],
                "timestamp": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ"),
                "trace_id": str(uuid.uuid4()),
                "correlation_id": str(uuid.uuid4()),
            },
            status_code=status,
        )

    # -- connector --------------------------------------------------------------------------

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

    def _token_valid(self, authorization: str | None) -> bool:
        if not authorization:
            return False
        scheme, _, token = authorization.partition(" ")
        expiry = self._tokens.get(token.strip())
        return scheme.lower() == "bearer" and expiry is not None and expiry > time.monotonic()

    def _answer(
        self,
        call: ConnectorCall,
        conversation_raw: str | None,
        authorization: str | None,
        body: Any,
    ) -> Answer:
        conversation_id = call.conversation_id
        if conversation_id is None or conversation_raw is None:
            return 404, _error("NotFound", f"No connector resource at {call.path}"), {}
        if self.require_token and not self._token_valid(authorization):
            return 401, {"message": "Authorization has been denied for this request."}, {}
        if self.require_escaped_ids and any(c in conversation_raw for c in ":@;"):
            return 400, _error("BadArgument", "The conversation id must be URL-escaped."), {}
        previous = self._last_arrival.get(conversation_id)
        self._last_arrival[conversation_id] = call.arrived
        if previous is not None and call.arrived - previous < self.min_interval:
            self.violations.append(Violation(conversation_id, call.arrived, previous))
            return 429, _error("Throttled", "Too many requests."), {"Retry-After": "1"}
        fault = self._take_fault(call)
        if fault is not None and not fault.applied:
            return self._fault_answer(fault)
        if not isinstance(body, dict):
            status, payload = 400, _error("BadArgument", "The body must be a JSON object.")
        elif call.method == "POST":
            status, payload = self._post_activity(call, conversation_id, body)
        elif call.method == "PUT" and call.activity_id_in_path is not None:
            status, payload = self._put_activity(call, conversation_id, body)
        else:
            status, payload = 405, _error("MethodNotAllowed", f"{call.method} not supported.")
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
        return fault.status, _error(code, message), headers

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
            return 405, _error("BadArgument", NOT_IN_GROUP_CHATS)
        stream_type = info.get("streamType")
        stream_id = info.get("streamId")
        sequence = info.get("streamSequence")
        text = body.get("text")
        if activity_type == "typing":
            if stream_type not in ("informative", "streaming"):
                return 400, _error("BadRequest", f"Invalid streamType {stream_type!r}.")
            if not isinstance(text, str) or not text:
                return 400, _error("BadRequest", "A stream chunk needs text.")
            if stream_id is None:
                if sequence != 1:
                    return 400, _error("BadRequest", "The first chunk needs streamSequence 1.")
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
                return 400, _error(
                    "BadRequest",
                    f"Invalid streamSequence {sequence!r}: expected {stream.last_sequence + 1}.",
                )
            if stream_type == "streaming" and not text.startswith(stream.text):
                return 400, _error("BadRequest", NOT_CUMULATIVE)
            self._accept_chunk(stream, stream_type, text, call)
            return 202, {"id": stream_id}
        if activity_type == "message":
            if stream_type != "final" or stream_id is None:
                return 400, _error("BadRequest", "A streamed message ends with a final streamId.")
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
        return 400, _error("BadRequest", f"Activity type {activity_type!r} cannot stream.")

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
            return 400, _error("BadRequest", f"Unknown streamId {stream_id!r}.")
        if stream.stopped_by_user:
            return 403, _error("ContentStreamNotAllowed", CANCELLED_BY_USER)
        if stream.finished:
            return 403, _error("ContentStreamNotAllowed", ALREADY_COMPLETED)
        if call.arrived - stream.started > self.stream_limit:
            stream.expired = True
            return 403, _error("ContentStreamNotAllowed", EXCEEDED_TIME)
        if self._stop_after is not None:
            chunks, only = self._stop_after
            if len(stream.chunks) >= chunks and only in (None, stream.id):
                self._stop_after = None
                stream.stopped_by_user = True
                stream.stopped_at = time.monotonic()
                self.user_stopped.set()
                return 403, _error("ContentStreamNotAllowed", CANCELLED_BY_USER)
        return None

    def _put_activity(
        self, call: ConnectorCall, conversation_id: str, body: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        activity_id = call.activity_id_in_path
        posted = self._posted.get(activity_id or "")
        if posted is None or posted.conversation_id != conversation_id:
            return 404, _error("NotFound", f"Activity {activity_id!r} not found.")
        posted.body = dict(body)
        if posted.stream is not None:
            text = body.get("text")
            posted.stream.updated_text = text if isinstance(text, str) else ""
        call.applied = True
        return 200, {"id": posted.id}
