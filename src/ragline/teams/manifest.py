"""The Teams app manifest: what makes ragline's bot installable in Teams and Microsoft
365 Copilot.

The manifest names the bot (its Microsoft app id), says where it may be used (personal
chats, group chats, channels), offers the prompt starters as its command list and
declares the bot a custom engine agent, so that it is also an agent in Microsoft 365
Copilot. It follows the Teams manifest schema :data:`SCHEMA_VERSION`, the newest
published version (``@microsoft/app-manifest`` bundles it) with
``copilotAgents.customEngineAgents``; from 1.27 on a command can be of type ``prompt``,
so that picking a starter sends its whole question rather than its short title.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .starters import Starter

__all__ = [
    "COLOR_ICON",
    "OUTLINE_ICON",
    "SCHEMA_URL",
    "SCHEMA_VERSION",
    "App",
    "check_guid",
    "check_host",
    "check_version",
    "derived_app_id",
]

SCHEMA_VERSION = "1.30"
SCHEMA_URL = f"https://developer.microsoft.com/json-schemas/teams/v{SCHEMA_VERSION}/MicrosoftTeams.schema.json"
COLOR_ICON = "color.png"
OUTLINE_ICON = "outline.png"
ACCENT = "#1D4ED8"  # the web page's accent colour

_SCOPES = ("personal", "team", "groupChat")
_MAX_NAME = 30  # name.short
_GUID = re.compile(r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_VERSION = re.compile(r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)")
# Teams app ids derived from bot ids live in a namespace of their own. Never change it:
# a package with another id installs a second app instead of updating the first.
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:ragline:teams-app-id")


def check_guid(value: str, what: str) -> str:
    """``value`` as a lower-case GUID; ``ValueError`` naming ``what`` if it is none."""
    if not _GUID.fullmatch(value):
        raise ValueError(
            f"{what} must be a GUID like 00000000-0000-0000-0000-000000000000, not {value[:80]!r}"
        )
    return value.lower()


def check_host(value: str) -> str:
    """``value`` as a lower-case DNS host name (``bot.example.com``); ``ValueError``
    for a scheme, a path, a port, an IP address or a name that is not a domain's."""
    host = value.strip().lower().rstrip(".")
    labels = host.split(".")
    if (
        "://" in value
        or len(host) > 253
        or len(labels) < 2
        or not all(_LABEL.fullmatch(label) for label in labels)
        or labels[-1].isdigit()
    ):
        raise ValueError(
            "the host must be the domain name ragline is served at, like bot.example.com "
            f"(no https://, port or path), not {value[:80]!r}"
        )
    return host


def check_version(value: str) -> str:
    """``value`` if it is a version ``X.Y.Z``; ``ValueError`` otherwise."""
    if not _VERSION.fullmatch(value):
        raise ValueError(f"the version must be X.Y.Z, like 1.0.0, not {value[:80]!r}")
    return value


def derived_app_id(bot_id: str) -> str:
    """The Teams app id of the bot ``bot_id`` when none is given: the same bot always
    gets the same one, so a new package updates the installed app."""
    return str(uuid.uuid5(_NAMESPACE, check_guid(bot_id, "the app id")))


@dataclass(frozen=True)
class App:
    """What a manifest says: the bot's app id, the host ragline is served at, the app's
    name and version, its prompt starters and its Teams app id (derived from the bot's
    app id by default)."""

    bot_id: str
    host: str
    starters: Sequence[Starter]
    name: str = "ragline"
    version: str = "1.0.0"
    app_id: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "bot_id", check_guid(self.bot_id, "the app id"))
        object.__setattr__(self, "host", check_host(self.host))
        object.__setattr__(self, "version", check_version(self.version))
        if self.app_id is not None:
            object.__setattr__(self, "app_id", check_guid(self.app_id, "the Teams app id"))
        name = " ".join(self.name.split())
        if not 0 < len(name) <= _MAX_NAME:
            raise ValueError(f"the name has 1 to {_MAX_NAME} characters, not {len(name)}")
        object.__setattr__(self, "name", name)
        if not self.starters:
            raise ValueError("an app needs at least one prompt starter")

    @property
    def teams_app_id(self) -> str:
        """The Teams app's id: the one given, else the one derived from the bot's."""
        return self.app_id or derived_app_id(self.bot_id)

    def manifest(self) -> dict[str, Any]:
        """The ``manifest.json`` of the app package."""
        base = f"https://{self.host}"
        starters = [
            {"title": s.title, "description": s.text, "type": "prompt", "prompt": s.text}
            for s in self.starters
        ]
        return {
            "$schema": SCHEMA_URL,
            "manifestVersion": SCHEMA_VERSION,
            "version": self.version,
            "id": self.teams_app_id,
            "developer": {
                "name": self.name,
                "websiteUrl": f"{base}/",
                "privacyUrl": f"{base}/privacy",
                "termsOfUseUrl": f"{base}/terms",
            },
            "name": {"short": self.name, "full": f"{self.name}: answers from your documents"},
            "description": {
                "short": "Answers questions from your documents, citing its sources.",
                "full": (
                    f"{self.name} answers questions from the documents indexed for you, "
                    "with numbered citations to the passages it used. In a personal chat "
                    "the answer streams in as it is written and the stop button stops it; "
                    "in a group chat or a channel, mention the app and it replies once. "
                    "It sees only the documents you may read."
                ),
            },
            "icons": {"color": COLOR_ICON, "outline": OUTLINE_ICON},
            "accentColor": ACCENT,
            "bots": [
                {
                    "botId": self.bot_id,
                    "scopes": list(_SCOPES),
                    "supportsFiles": False,
                    "isNotificationOnly": False,
                    "commandLists": [{"scopes": list(_SCOPES), "commands": starters}],
                }
            ],
            "copilotAgents": {"customEngineAgents": [{"type": "bot", "id": self.bot_id}]},
            "validDomains": [self.host],
        }
