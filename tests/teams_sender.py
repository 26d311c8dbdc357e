"""Teams as the sender: realistic activities posted to the bot's webhook with a signed
token, and redelivery of an activity whose webhook stays unanswered. A mixin of
:class:`teams_fakes.FakeTeams`, whose ``__init__`` holds the state."""

from __future__ import annotations

import enum
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import anyio
import httpx

from teams_connector import ConversationKind

T = TypeVar("T")


class _Default(enum.Enum):
    TOKEN = "a valid token for the activity's serviceUrl"


VALID_TOKEN = _Default.TOKEN


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


class SenderMixin:
    """Activities, deliveries and redeliveries."""

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
