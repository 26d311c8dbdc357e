"""Bot Framework activities: the parts of the schema ragline reads and writes.

Unknown fields are kept (``extra="allow"``) so that an activity can be echoed or logged
whole; the fields we act on are validated, and a malformed activity is a 400.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "Account",
    "Activity",
    "ConversationKind",
    "ConversationRef",
    "InvokeResponse",
    "reply_to",
]

ConversationKind = Literal["personal", "groupChat", "channel"]

_MENTION = re.compile(r"<at>[^<]*</at>", re.IGNORECASE)


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class Account(_Model):
    """A user or bot: ``from``, ``recipient``, a member added."""

    id: str = Field(min_length=1, max_length=1024)
    name: str | None = None
    aad_object_id: str | None = Field(None, alias="aadObjectId")


class ConversationRef(_Model):
    """The conversation an activity belongs to."""

    id: str = Field(min_length=1, max_length=1024)
    conversation_type: str | None = Field(None, alias="conversationType")
    tenant_id: str | None = Field(None, alias="tenantId")
    is_group: bool | None = Field(None, alias="isGroup")


class Activity(_Model):
    """One inbound activity (message, conversationUpdate, installationUpdate, invoke, …)."""

    type: str = Field(min_length=1, max_length=64)
    id: str | None = Field(None, max_length=1024)
    service_url: str = Field(alias="serviceUrl", min_length=1, max_length=2048)
    channel_id: str = Field(alias="channelId", min_length=1, max_length=64)
    conversation: ConversationRef
    from_: Account | None = Field(None, alias="from")
    recipient: Account | None = None
    text: str | None = Field(None, max_length=100_000)
    name: str | None = None  # invoke name
    value: Any = None
    locale: str | None = None
    reply_to_id: str | None = Field(None, alias="replyToId")
    entities: list[dict[str, Any]] | None = None
    channel_data: dict[str, Any] | None = Field(None, alias="channelData")
    members_added: list[Account] | None = Field(None, alias="membersAdded")
    action: str | None = None  # installationUpdate: "add" / "remove"
    # "expectReplies": the sender reads the replies from the webhook's response body.
    delivery_mode: str | None = Field(None, alias="deliveryMode", max_length=64)

    @field_validator("service_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError("serviceUrl must be an http(s) URL")
        return value

    @property
    def kind(self) -> ConversationKind:
        """Whether this is a 1:1 chat, a group chat or a channel conversation."""
        given = self.conversation.conversation_type
        if given == "groupChat":
            return "groupChat"
        if given == "channel":
            return "channel"
        if given is None and self.conversation.is_group:
            return "groupChat"
        return "personal"

    @property
    def key(self) -> tuple[str, str]:
        """What a redelivery shares with the first delivery: (conversation, activity id)."""
        return (self.conversation.id, self.id or "")

    def question(self) -> str:
        """The message text without ``<at>bot</at>`` mentions (group chats, channels)."""
        return _MENTION.sub("", self.text or "").strip()

    def bot_added(self) -> bool:
        """A conversationUpdate that adds this bot to the conversation."""
        bot = self.recipient.id if self.recipient else None
        return any(member.id == bot for member in self.members_added or ())


class InvokeResponse(BaseModel):
    """What an invoke handler returns: the webhook's synchronous status and body."""

    status: int = 200
    body: Any = None


def reply_to(activity: Activity, **fields: Any) -> dict[str, Any]:
    """An outbound activity addressed back to ``activity``'s sender, in its conversation."""
    out: dict[str, Any] = {
        "type": "message",
        "channelId": activity.channel_id,
        "serviceUrl": activity.service_url,
        "conversation": activity.conversation.model_dump(by_alias=True, exclude_none=True),
    }
    if activity.recipient is not None:
        out["from"] = activity.recipient.model_dump(by_alias=True, exclude_none=True)
    if activity.from_ is not None:
        out["recipient"] = activity.from_.model_dump(by_alias=True, exclude_none=True)
    if activity.id is not None:
        out["replyToId"] = activity.id
    if activity.locale:
        out["locale"] = activity.locale
    out.update(fields)
    return out
