"""Who a Teams user is, and which collections a conversation answers from.

A Teams user asks as a :class:`~ragline.access.Principal`, so that collection grants
and document ACLs apply to them as to anyone. :class:`Members` says which principal an
activity's tenant and user are, and which collections its team, channel or chat answers
from. Two kinds exist:

* :class:`Everyone` (no ``RAGLINE_TEAMS_MAPPING``): every user is a member
  ``teams-<Entra object id>`` with no groups, answered from the default collection;
* :class:`MappingFile` (``RAGLINE_TEAMS_MAPPING``, TOML, docs/TEAMS.md): ``[[user]]``
  entries name the principal and groups of one user, ``[[tenant]]`` entries give everyone
  else in a tenant groups, ``[[channel]]`` entries list the collections of a team or a
  conversation. A user matching no entry has no principal.

Both are :class:`Members`: a lookup in Microsoft Graph (group memberships) would be a
third, and its methods are async for that reason.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from typing import Protocol

from ..access import Principal
from ..grants import Grants
from ..lifetime import Lifetime
from ..settings import Settings
from .activity import Activity
from .mapping import parse_mapping

__all__ = [
    "Everyone",
    "MappingFile",
    "Members",
    "answering_collection",
    "member_name",
    "members_from",
    "tenant_of",
]

log = logging.getLogger("ragline.teams")


class Members(Protocol):
    """Who Teams users are, and what their conversations answer from."""

    def declared(self) -> Iterable[Principal]:
        """The principals (and through them the groups) grants may name."""
        ...

    async def principal(self, activity: Activity, lifetime: Lifetime) -> Principal | None:
        """The principal the activity's user asks as; ``None``: nobody we know (the bot
        then answers with a polite refusal)."""
        ...

    async def collections(self, activity: Activity, lifetime: Lifetime) -> Sequence[str]:
        """The collections the activity's conversation answers from, in order of
        preference; empty: the default collection."""
        ...


def tenant_of(activity: Activity) -> str | None:
    """The activity's tenant id (lower case), from its conversation or its channelData."""
    tenant = activity.conversation.tenant_id
    if not tenant:
        found = (activity.channel_data or {}).get("tenant")
        tenant = found.get("id") if isinstance(found, dict) else None
    return tenant.strip().lower() if isinstance(tenant, str) and tenant.strip() else None


def team_of(activity: Activity) -> str | None:
    """The team of a channel conversation (``channelData.team.id``)."""
    data = activity.channel_data or {}
    team = data.get("team")
    found = team.get("id") if isinstance(team, dict) else data.get("teamsTeamId")
    return found if isinstance(found, str) and found else None


def conversations_of(activity: Activity) -> tuple[str, ...]:
    """The ids a ``conversation`` entry may name: the chat, or the channel a channel
    thread belongs to (its id without ``;messageid=…``, or ``channelData.channel.id``)."""
    ids = [activity.conversation.id, activity.conversation.id.split(";", 1)[0]]
    channel = (activity.channel_data or {}).get("channel")
    if isinstance(channel, dict) and isinstance(channel.get("id"), str):
        ids.append(channel["id"])
    return tuple(dict.fromkeys(ids))


def holder_name(tenant: str) -> str:
    """The principal that declares a ``[[tenant]]`` entry's groups: nobody asks as it."""
    return ("teams-tenant-" + re.sub(r"[^A-Za-z0-9._@-]", "-", tenant))[:128]


def member_name(activity: Activity) -> str | None:
    """``teams-<Entra object id>`` (or the channel account id): the name of a Teams user
    no ``[[user]]`` entry names. Names starting ``teams-`` are kept for these."""
    account = activity.from_
    ident = (account.aad_object_id or account.id) if account is not None else None
    if not ident:
        return None
    return "teams-" + re.sub(r"[^A-Za-z0-9._@-]", "-", ident.strip())[:120]


class Everyone:
    """Without a mapping: every Teams user is a member with no groups, who reads what
    everyone may (the default collection)."""

    def declared(self) -> Iterable[Principal]:
        return ()

    async def principal(self, activity: Activity, lifetime: Lifetime) -> Principal | None:
        name = member_name(activity)
        return Principal(name) if name is not None else None

    async def collections(self, activity: Activity, lifetime: Lifetime) -> Sequence[str]:
        return ()


class MappingFile:
    """The mapping of ``RAGLINE_TEAMS_MAPPING``; build it with :meth:`load`, which
    raises :class:`~ragline.config_file.ConfigFileError` (``file:line: what``) for a
    file with any error."""

    def __init__(
        self,
        users: dict[tuple[str, str], Principal],
        tenants: dict[str, frozenset[str]],
        channels: dict[tuple[str, str, str], tuple[str, ...]],
    ) -> None:
        self.users = users  # (tenant, Entra object id) -> its principal
        self.tenants = tenants  # tenant -> the groups of its other users
        self.channels = channels  # (tenant, "team"|"conversation"|"", id) -> collections
        # Each [[tenant]] entry is declared as a principal nobody acts as, so that grants
        # may name its groups (grants validate entries against known principals).
        holders = (Principal(holder_name(t), groups) for t, groups in tenants.items())
        self._holders = {holder.name: holder for holder in holders}

    @classmethod
    def load(cls, path: str) -> MappingFile:
        """Read and check the file (see docs/TEAMS.md for its format)."""
        users, tenants, channels = parse_mapping(path)
        mapping = cls(users, tenants, channels)
        log.info(
            "Teams mapping loaded",
            extra={
                "path": path,
                "users": len(users),
                "tenants": len(tenants),
                "channels": len(channels),
            },
        )
        return mapping

    def declared(self) -> Iterable[Principal]:
        return [*self.users.values(), *self._holders.values()]

    async def principal(self, activity: Activity, lifetime: Lifetime) -> Principal | None:
        tenant = tenant_of(activity)
        account = activity.from_
        if tenant is None or account is None:
            return None
        mapped = self.users.get((tenant, (account.aad_object_id or "").strip().lower()))
        if mapped is not None:
            return mapped
        groups = self.tenants.get(tenant)
        name = member_name(activity)
        if groups is None or name is None or name in self._holders:
            return None
        return Principal(name, groups)

    async def collections(self, activity: Activity, lifetime: Lifetime) -> Sequence[str]:
        tenant = tenant_of(activity)
        if tenant is None:
            return ()
        for conversation in conversations_of(activity):
            found = self.channels.get((tenant, "conversation", conversation))
            if found is not None:
                return found
        team = team_of(activity)
        if team is not None and (tenant, "team", team) in self.channels:
            return self.channels[(tenant, "team", team)]
        return self.channels.get((tenant, "", ""), ())


def members_from(settings: Settings) -> Members:
    """The members of ``settings``: its mapping file, or :class:`Everyone`."""
    if settings.teams_mapping:
        return MappingFile.load(settings.teams_mapping)
    return Everyone()


async def readable_collections(
    members: Members,
    grants: Grants | None,
    default: str,
    activity: Activity,
    lifetime: Lifetime,
) -> list[str]:
    """The conversation's collections (``default`` if it lists none) that the turn's
    principal may read, in their order; none without a principal. Without ``grants``,
    no check."""
    principal = lifetime.get("principal")
    if not isinstance(principal, Principal):
        return []
    listed = list(await members.collections(activity, lifetime)) or [default]
    if grants is None:
        return listed
    return [
        name for name in listed if (await grants.grant(name, lifetime)).allows(principal, "read")
    ]


async def answering_collection(
    members: Members,
    grants: Grants | None,
    default: str,
    activity: Activity,
    lifetime: Lifetime,
) -> str | None:
    """The collection a turn answers from: the first of its conversation's collections
    (``default`` if it lists none) that the turn's principal may read. ``None`` if there
    is no principal, or they may read none of them. Without ``grants``, no check."""
    readable = await readable_collections(members, grants, default, activity, lifetime)
    if readable:
        return readable[0]
    principal = lifetime.get("principal")
    if isinstance(principal, Principal):
        log.info(
            "no collection this Teams user may read",
            extra={
                "principal": principal.name,
                "collections": list(await members.collections(activity, lifetime) or (default,)),
            },
        )
    return None
