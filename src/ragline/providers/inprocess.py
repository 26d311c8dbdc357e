"""The coordination stores in this process's memory (:mod:`ragline.providers.coordination`):
the embedded default, where one process is the whole deployment, and for tests. Nothing
here survives a restart, as nothing of a single process's runs and turns would."""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from copy import deepcopy
from dataclasses import dataclass, field, replace
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from ..access import Grant, Principal
from ..lifetime import Lifetime
from .conversations import StoredResponse, Turn
from .coordination import Notice, RunEvent, RunSave, WorkKey

__all__ = [
    "InProcessActivities",
    "InProcessBus",
    "InProcessConversations",
    "InProcessDirectory",
    "InProcessRunLog",
]


class InProcessBus:
    """:class:`~ragline.providers.coordination.NoticeBus` within one process: each
    listener has a queue of its own."""

    def __init__(self) -> None:
        self._listeners: list[MemoryObjectSendStream[Notice]] = []

    async def publish(self, notice: Notice, lifetime: Lifetime) -> None:
        await lifetime.checkpoint()
        for listener in self._listeners:
            listener.send_nowait(notice)  # unbounded: a notice is a few bytes

    async def listen(
        self, lifetime: Lifetime, *, ready: Callable[[], Awaitable[None]] | None = None
    ) -> AsyncIterator[Notice]:
        await lifetime.checkpoint()
        send, receive = anyio.create_memory_object_stream[Notice](math.inf)
        self._listeners.append(send)
        try:
            if ready is not None:
                await ready()
            async with receive:
                async for notice in receive:
                    yield notice
        finally:
            self._listeners.remove(send)
            send.close()


@dataclass
class _Run:
    state: str
    snapshot: dict[str, Any]
    events: list[RunEvent] = field(default_factory=list)


class InProcessRunLog:
    """:class:`~ragline.providers.coordination.RunLog` in memory; a save publishes the
    run's ``news`` on ``bus``."""

    def __init__(self, bus: InProcessBus) -> None:
        self.bus = bus
        self._runs: OrderedDict[str, _Run] = OrderedDict()  # least recently saved first

    async def save_run(self, save: RunSave, lifetime: Lifetime, *, kept: int | None = None) -> None:
        await lifetime.checkpoint()
        run_id, state, snapshot = save.run_id, save.state, save.snapshot
        run = self._runs.get(run_id)
        if run is None:
            run = self._runs[run_id] = _Run(state, snapshot)
        run.state, run.snapshot = state, snapshot
        have = run.events[-1][0] + 1 if run.events else 0
        run.events.extend(e for e in save.events if e[0] >= have)  # a repeated save adds nothing
        self._runs.move_to_end(run_id)
        if kept is not None:
            finished = [
                k for k, r in self._runs.items() if r.state != "running" and k.startswith("run_")
            ]
            for key in finished[: max(len(finished) - kept, 0)]:
                del self._runs[key]
        await self.bus.publish(Notice("news", WorkKey.run(run_id)), lifetime)

    async def run(self, run_id: str, lifetime: Lifetime) -> dict[str, Any] | None:
        await lifetime.checkpoint()
        found = self._runs.get(run_id)
        return dict(found.snapshot) if found is not None else None

    async def run_events(self, run_id: str, first: int, lifetime: Lifetime) -> list[RunEvent]:
        await lifetime.checkpoint()
        found = self._runs.get(run_id)
        return [e for e in found.events if e[0] >= first] if found is not None else []

    async def runs(
        self, lifetime: Lifetime, *, owner: str | None, limit: int
    ) -> list[dict[str, Any]]:
        await lifetime.checkpoint()
        mine = [
            dict(r.snapshot)
            for k, r in self._runs.items()
            if k.startswith("run_") and (owner is None or r.snapshot.get("owner") == owner)
        ]
        mine.sort(key=lambda snapshot: snapshot.get("created_at") or 0.0, reverse=True)
        return mine[:limit]

    async def forget(self, run_ids: Sequence[str], lifetime: Lifetime) -> None:
        await lifetime.checkpoint()
        for run_id in run_ids:
            self._runs.pop(run_id, None)


@dataclass
class _Activity:
    conversation_id: str
    seq: int
    accepted_at: float
    done: bool = False


class InProcessActivities:
    """:class:`~ragline.providers.coordination.ActivityLog` in memory, bounded: an
    activity is forgotten once done and past every window, or past ``max_kept``."""

    def __init__(self, bus: InProcessBus, *, max_kept: int = 100_000) -> None:
        self.bus = bus
        self.max_kept = max_kept
        self._seq = 0
        self._accepted: OrderedDict[tuple[str, str], _Activity] = OrderedDict()
        self._by_seq: dict[int, _Activity] = {}
        self._open: dict[str, dict[int, float]] = {}  # per conversation: seq -> accepted at

    async def accept_activity(
        self, conversation_id: str, activity_id: str, window: float, lifetime: Lifetime
    ) -> int | None:
        await lifetime.checkpoint()
        now = time.time()
        self._forget(now - window)
        key = (conversation_id, activity_id)
        found = self._accepted.get(key)
        if found is not None and found.accepted_at >= now - window:
            return None
        if found is not None:  # past the window: a late redelivery is served
            self._drop(key)
        self._seq += 1
        activity = _Activity(conversation_id, self._seq, now)
        self._accepted[key] = self._by_seq[self._seq] = activity
        self._open.setdefault(conversation_id, {})[self._seq] = now
        return self._seq

    async def turn_clear(
        self, conversation_id: str, seq: int, stale_before: float, lifetime: Lifetime
    ) -> bool:
        await lifetime.checkpoint()
        waiting = self._open.get(conversation_id, {})
        return not any(s < seq and at >= stale_before for s, at in waiting.items())

    async def finish_activity(self, conversation_id: str, seq: int, lifetime: Lifetime) -> None:
        activity = self._by_seq.get(seq)
        if activity is not None:
            activity.done = True
            self._close(activity)
        await self.bus.publish(Notice("news", WorkKey.conversation(conversation_id)), lifetime)

    def _forget(self, before: float) -> None:
        while self._accepted:
            key, oldest = next(iter(self._accepted.items()))
            past = oldest.done and oldest.accepted_at < before
            if not past and len(self._accepted) <= self.max_kept:
                return
            self._drop(key)

    def _drop(self, key: tuple[str, str]) -> None:
        activity = self._accepted.pop(key)
        self._by_seq.pop(activity.seq, None)
        self._close(activity)

    def _close(self, activity: _Activity) -> None:
        waiting = self._open.get(activity.conversation_id)
        if waiting is not None:
            waiting.pop(activity.seq, None)
            if not waiting:
                del self._open[activity.conversation_id]


class InProcessDirectory:
    """:class:`~ragline.providers.directory.PrincipalStore` and
    :class:`~ragline.providers.directory.GrantStore` in memory: for an application that
    mounts ragline's middleware with the keys of ``RAGLINE_API_KEYS`` only, and tests."""

    def __init__(self) -> None:
        self._principals: dict[str, tuple[Principal, str]] = {}
        self._grants: dict[str, Grant] = {}

    async def add_principal(self, principal: Principal, digest: str, lifetime: Lifetime) -> bool:
        await lifetime.checkpoint()
        if principal.name in self._principals:
            return False
        self._principals[principal.name] = (principal, digest)
        return True

    async def principals(self, lifetime: Lifetime) -> list[Principal]:
        await lifetime.checkpoint()
        return [p for _, (p, _d) in sorted(self._principals.items())]

    async def find_key(self, digest: str, lifetime: Lifetime) -> Principal | None:
        await lifetime.checkpoint()
        return next((p for p, d in self._principals.values() if d == digest), None)

    async def replace_key(self, name: str, digest: str, lifetime: Lifetime) -> bool:
        await lifetime.checkpoint()
        if name not in self._principals:
            return False
        self._principals[name] = (self._principals[name][0], digest)
        return True

    async def remove_principal(self, name: str, lifetime: Lifetime) -> bool:
        await lifetime.checkpoint()
        return self._principals.pop(name, None) is not None

    async def grant(self, collection: str, lifetime: Lifetime) -> Grant | None:
        await lifetime.checkpoint()
        return self._grants.get(collection)

    async def grants(self, lifetime: Lifetime) -> dict[str, Grant]:
        await lifetime.checkpoint()
        return dict(self._grants)

    async def claim(self, collection: str, creator: str, lifetime: Lifetime) -> Grant:
        await lifetime.checkpoint()
        return self._grants.setdefault(collection, Grant(creator=creator))

    async def set_grant(
        self,
        collection: str,
        read: Sequence[str],
        write: Sequence[str],
        lifetime: Lifetime,
        *,
        creator: str,
    ) -> Grant:
        await lifetime.checkpoint()
        old = self._grants.get(collection)
        owner = old.creator if old is not None and old.creator is not None else creator
        grant = self._grants[collection] = Grant(tuple(read), tuple(write), owner)
        return grant


@dataclass
class _Conversation:
    owner: str
    expires_at: float | None
    turns: list[Turn] = field(default_factory=list)


class InProcessConversations:
    """:class:`~ragline.providers.conversations.ConversationStore` in memory: for an
    application that mounts ragline's middleware, and tests. What goes in and comes out
    is copied, as a database would: a caller's later change reaches nobody else."""

    def __init__(self) -> None:
        self._responses: dict[str, StoredResponse] = {}
        self._conversations: dict[str, _Conversation] = {}

    async def save_response(self, response: StoredResponse, lifetime: Lifetime) -> None:
        await lifetime.checkpoint()
        old = self._responses.get(response.id)
        if old is not None:  # its owner and creation time never change
            response = replace(response, owner=old.owner, created_at=old.created_at)
        self._responses[response.id] = deepcopy(response)

    async def response(self, response_id: str, lifetime: Lifetime) -> StoredResponse | None:
        await lifetime.checkpoint()
        found = self._responses.get(response_id)
        live = found is not None and _live(found.expires_at, time.time())
        return deepcopy(found) if live else None

    async def delete_response(self, response_id: str, lifetime: Lifetime) -> bool:
        await lifetime.checkpoint()
        found = self._responses.pop(response_id, None)
        return found is not None and _live(found.expires_at, time.time())

    async def add_turn(
        self,
        conversation_id: str,
        owner: str,
        messages: list[dict[str, Any]],
        expires_at: float | None,
        lifetime: Lifetime,
    ) -> None:
        await lifetime.checkpoint()
        now = time.time()
        found = self._conversations.get(conversation_id)
        if found is None or not _live(found.expires_at, now):  # expired: starts anew
            found = self._conversations[conversation_id] = _Conversation(owner, expires_at)
        found.expires_at = expires_at
        seq = found.turns[-1].seq + 1 if found.turns else 1
        found.turns.append(Turn(seq, deepcopy(messages), now))

    async def conversation(
        self, conversation_id: str, lifetime: Lifetime, *, limit: int = 50
    ) -> tuple[str, list[Turn]] | None:
        await lifetime.checkpoint()
        found = self._conversations.get(conversation_id)
        if found is None or not _live(found.expires_at, time.time()):
            return None
        turns = found.turns[max(len(found.turns) - limit, 0) :]
        return (found.owner, deepcopy(turns)) if turns else None

    async def clear_conversation(self, conversation_id: str, lifetime: Lifetime) -> None:
        await lifetime.checkpoint()
        self._conversations.pop(conversation_id, None)

    async def expire(self, now: float, lifetime: Lifetime) -> list[str]:
        await lifetime.checkpoint()
        gone = [k for k, r in self._responses.items() if not _live(r.expires_at, now)]
        for key in gone:
            del self._responses[key]
        for key in [k for k, c in self._conversations.items() if not _live(c.expires_at, now)]:
            del self._conversations[key]
        return gone


def _live(expires_at: float | None, now: float) -> bool:
    return expires_at is None or expires_at > now
