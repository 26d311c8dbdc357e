"""Who may ask the Teams bot what (``RAGLINE_TEAMS_MAPPING``, ``ragline.teams.members``
and ``ragline.teams.mapping``): a Teams user maps to a principal, a team or chat to its
collections, grants decide, and a user without a grant gets one polite sentence.

End to end: ragline on uvicorn with retrieval, the fake Teams (webhook sender and Bot
Connector) and the fake model upstream, all over real sockets; collections ingested and
their access set over the HTTP API as an admin."""

from __future__ import annotations

import json
import logging
import os
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from conftest import LogCapture, Running, bot_settings, eventually, serve, upstream_running
from deployment import ADMIN, ingest
from fake_embeddings import WordEmbedder
from ragline.config_file import ConfigFileError
from ragline.lifetime import Lifetime
from ragline.providers.memory import MemoryStore
from ragline.teams.activity import Activity
from ragline.teams.members import MappingFile
from ragline.teams.replies import NO_ACCESS
from teams_fakes import FakeTeams
from upstream import Behavior, FakeUpstream

pytestmark = pytest.mark.anyio

TEAM_A = "19:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa@thread.tacv2"
TEAM_B = "19:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb@thread.tacv2"
CHANNEL_A = "19:a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1@thread.tacv2"
CHANNEL_B = "19:b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1@thread.tacv2"
# The headings name the sources in the bot's answer ("**Sources** 1. …: Plan of team A").
PLAN_A = {"id": "plan-a", "text": "# Plan of team A\n\nThe launch code of team A is 4711."}
PLAN_B = {"id": "plan-b", "text": "# Plan of team B\n\nThe launch code of team B is 9999."}
PUBLIC = {"id": "fountain", "text": "# Fountain\n\nThe launch code of the fountain is 1234."}
A, B, FOUNTAIN = "Plan of team A", "Plan of team B", "Fountain"


@dataclass
class Users:
    """The Entra object ids of the people in the scenario."""

    alice: str  # team A (group team-a)
    bob: str  # team B (group team-b)
    carol: str  # in the tenant, in no entry

    @classmethod
    def new(cls) -> Users:
        return cls(str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4()))


def mapping_for(tenant: str, users: Users) -> str:
    return f"""
# Who may ask what: docs/TEAMS.md
[[user]]
tenant = "{tenant}"
aad_object_id = "{users.alice.upper()}"   # ids are compared without case
name = "alice"
groups = ["team-a"]

[[user]]
tenant = "{tenant}"
aad_object_id = "{users.bob}"
name = "bob"
groups = ["team-b"]

[[channel]]
tenant = "{tenant}"
team = "{TEAM_A}"
collections = ["team_a", "default"]

[[channel]]
tenant = "{tenant}"
team = "{TEAM_B}"
collections = ["team_b"]
"""


@dataclass
class Scene:
    running: Running
    teams: FakeTeams
    upstream: FakeUpstream
    users: Users
    http: httpx.AsyncClient

    @property
    def url(self) -> str:
        return f"{self.running.url}/api/messages"

    async def ask(
        self, aad: str, text: str, *, team: str | None = None, tenant: str | None = None
    ) -> dict[str, Any]:
        """``text`` from the user ``aad``: in a channel of ``team``, else a 1:1 chat. The
        message the bot answered with."""
        activity = self.teams.activity(text, **_where(self.teams, team))
        activity["from"] = {"id": f"29:1{aad}", "name": "someone", "aadObjectId": aad}
        if tenant is not None:
            activity["conversation"]["tenantId"] = tenant
            activity["channelData"]["tenant"] = {"id": tenant}
        conversation = activity["conversation"]["id"]
        delivery = await self.teams.deliver(self.url, activity)
        assert delivery.status == 202, delivery.body
        messages = await self.teams.wait_for(
            lambda: [
                m
                for m in self.teams.messages(conversation)
                if m.get("replyToId") == activity["id"] and m.get("text")
            ],
            timeout=30,
        )
        [message] = messages
        return message


def _where(teams: FakeTeams, team: str | None) -> dict[str, Any]:
    if team is None:
        return {"kind": "personal", "conversation_id": f"a:1{uuid.uuid4().hex}"}
    channel = CHANNEL_A if team == TEAM_A else CHANNEL_B
    data = {
        "tenant": {"id": teams.tenant_id},
        "teamsTeamId": team,
        "teamsChannelId": channel,
        "team": {"id": team},
        "channel": {"id": channel},
    }
    conversation = f"{channel};messageid={uuid.uuid4().int % 10**13}"
    return {"kind": "channel", "conversation_id": conversation, "channelData": data}


def answering(body: dict[str, Any]) -> Behavior:
    return Behavior(texts=["The code is ", "in ", "[1]."])


@asynccontextmanager
async def scene(
    tmp_path: Path,
    *,
    mapping: bool = True,
    behave: Callable[[dict[str, Any]], Behavior] = answering,
    **settings: Any,
) -> AsyncIterator[Scene]:
    """Team A's and team B's collections (readable by their groups only) and a public
    default collection, ingested as the admin; ``tmp_path/teams.toml`` maps alice to
    team A and bob to team B (unless not ``mapping``)."""
    upstream = FakeUpstream(behave)
    users = Users.new()
    async with (
        upstream_running(upstream),
        FakeTeams.running(min_interval=0.05) as teams,
        httpx.AsyncClient(timeout=60) as http,
    ):
        if mapping:
            path = tmp_path / "teams.toml"
            path.write_text(mapping_for(teams.tenant_id, users))
            settings["teams_mapping"] = str(path)
        values = {
            "retrieval": True,
            "data_dir": str(tmp_path / "data"),
            "api_keys": ["admin-key"],
            "bot_stream_interval": 0.05,
            **settings,
        }
        overrides = {"embedder": WordEmbedder(), "store": MemoryStore()}
        async with serve(bot_settings(upstream, teams, **values), **overrides) as running:
            url = running.url
            await ingest(http, url, ADMIN, [PLAN_A], "team_a")
            await ingest(http, url, ADMIN, [PLAN_B], "team_b")
            await ingest(http, url, ADMIN, [PUBLIC])
            if mapping:
                for collection, group in (("team_a", "team-a"), ("team_b", "team-b")):
                    access = {"read": [f"group:{group}"], "write": []}
                    put = await http.put(
                        f"{url}/api/v1/collections/{collection}/access", json=access, headers=ADMIN
                    )
                    assert put.status_code == 200, put.text
            yield Scene(running, teams, upstream, users, http)


def shown(message: dict[str, Any]) -> str:
    """What a user sees of an answer: its text and the names of its citations."""
    names = [
        claim["appearance"]["name"]
        for entity in message.get("entities") or ()
        for claim in entity.get("citation") or ()
    ]
    return " ".join([message["text"], *names])


def prompts(upstream: FakeUpstream) -> str:
    return "\n".join(json.dumps(call.body) for call in upstream.calls)


async def test_a_mapped_user_answers_only_from_a_collection_their_team_may_read(
    tmp_path: Path, logs: LogCapture
) -> None:
    async with scene(tmp_path) as s:
        # alice, in team A's channel: team A's collection, and nothing of team B's.
        answer = await s.ask(s.users.alice, "what is the launch code?", team=TEAM_A)
        assert answer["text"].startswith("The code is in [1].")
        assert A in shown(answer)
        assert B not in shown(answer)
        assert "4711" in prompts(s.upstream)
        assert "9999" not in prompts(s.upstream)

        # bob, in team B's channel: team B's only.
        answer = await s.ask(s.users.bob, "what is the launch code?", team=TEAM_B)
        assert B in shown(answer)
        assert A not in shown(answer)
        assert "9999" in json.dumps(s.upstream.calls[-1].body)
        assert "4711" not in json.dumps(s.upstream.calls[-1].body)

        # alice in team B's channel: it answers from team_b only, which she may not read.
        calls = len(s.upstream.calls)
        refused = await s.ask(s.users.alice, "what is the launch code?", team=TEAM_B)
        assert refused["text"] == NO_ACCESS
        # In a 1:1 chat (no [[channel]] entry) she gets the default collection.
        personal = await s.ask(s.users.alice, "what is the launch code of the fountain?")
        assert FOUNTAIN in shown(personal)
        assert A not in shown(personal)
        assert B not in shown(personal)
        assert len(s.upstream.calls) == calls + 1  # the refusal never reached the model
        assert "9999" not in json.dumps(s.upstream.calls[-1].body)

        await eventually(lambda: s.running.metric("ragline_bot_turns_total") == 4)
        assert s.running.metric("ragline_bot_turns_total", outcome="completed") == 4
        assert not logs.at_least(logging.ERROR)


async def test_a_user_no_entry_maps_gets_a_polite_sentence_not_an_error(
    tmp_path: Path, logs: LogCapture
) -> None:
    async with scene(tmp_path) as s:
        # carol is in the tenant but in no entry; alice's id from another tenant is not
        # alice. Neither gets a principal, so neither reaches the model.
        for aad, tenant in ((s.users.carol, None), (s.users.alice, str(uuid.uuid4()))):
            for team in (TEAM_A, None):  # one message in a channel; a 1:1 chat streams
                answer = await s.ask(aad, "what is the launch code?", team=team, tenant=tenant)
                assert answer["text"] == NO_ACCESS
        assert s.upstream.calls == []
        assert not s.teams.streams  # a refusal is one message, not a stream
        await eventually(lambda: s.running.metric("ragline_bot_turns_total") == 4)
        assert s.running.metric("ragline_bot_turns_total", outcome="completed") == 4
        assert not logs.at_least(logging.WARNING)
        assert any(r.getMessage() == "Teams user without a principal" for r in logs.records)


async def test_mapped_principals_and_their_groups_may_be_named_by_grants(
    tmp_path: Path,
) -> None:
    async with scene(tmp_path) as s:
        base = f"{s.running.url}/api/v1/collections/team_a/access"
        both = {"read": ["group:team-a", "user:bob"], "write": ["user:alice"]}
        assert (await s.http.put(base, json=both, headers=ADMIN)).status_code == 200
        # bob may now read team A's collection too, in team A's channel.
        answer = await s.ask(s.users.bob, "what is the launch code?", team=TEAM_A)
        assert A in shown(answer)
        nobody = {"read": ["group:team-c"], "write": []}
        answer422 = await s.http.put(base, json=nobody, headers=ADMIN)
        assert answer422.status_code == 422, answer422.text


async def test_without_a_mapping_every_user_reads_the_default_collection(
    tmp_path: Path, logs: LogCapture
) -> None:
    async with scene(tmp_path, mapping=False) as s:
        for team in (TEAM_A, None):
            answer = await s.ask(s.users.carol, "what is the launch code?", team=team)
            assert FOUNTAIN in shown(answer)
        assert "4711" not in prompts(s.upstream)
        assert "9999" not in prompts(s.upstream)
        assert len(s.upstream.calls) == 2
        assert not logs.at_least(logging.ERROR)


# -- the file -----------------------------------------------------------------------------

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
AAD = "00000000-0000-0000-0000-0000000000a1"
GOOD_USER = f'[[user]]\ntenant = "{TENANT}"\naad_object_id = "{AAD}"\nname = "alice"\n'

BROKEN = [
    ("[[user]\ntenant = 1\n", 1, "not valid TOML"),
    (GOOD_USER + 'nmae = "x"\n', 5, "unknown key 'nmae' in [[user]]"),
    (f'\n\n[[user]]\ntenant = "{TENANT}"\nname = "alice"\n', 3, "[[user]] needs 'aad_object_id'"),
    (GOOD_USER.replace('"alice"', '"al ice"'), 4, "'al ice' is not a name"),
    (GOOD_USER.replace('"alice"', '"teams-x"'), 4, "the name 'teams-x' is reserved"),
    (
        GOOD_USER + "\n" + GOOD_USER.replace("alice", "alicia"),
        6,
        "is mapped twice (first at line 1)",
    ),
    (
        GOOD_USER + "\n" + GOOD_USER.replace(AAD, AAD[:-1] + "2"),
        9,
        "the name 'alice' is given twice",
    ),
    (GOOD_USER + 'groups = ["eng", "a b"]\n', 5, "group 'a b' is not a name"),
    (GOOD_USER.replace(TENANT, "contoso.com"), 2, "'tenant' must be an id like"),
    (f'[[tenant]]\ntenant = "{TENANT}"\n[[tenant]]\ntenant = "{TENANT}"\n', 3, "two [[tenant]]"),
    (
        f'[[channel]]\ntenant = "{TENANT}"\nteam = "t"\nconversation = "c"\ncollections = ["a"]\n',
        4,
        "a team or a conversation, not both",
    ),
    (f'[[channel]]\ntenant = "{TENANT}"\ncollections = ["eng-docs"]\n', 3, "'eng-docs' is not a"),
    (f'[[channel]]\ntenant = "{TENANT}"\ncollections = []\n', 3, "non-empty list"),
    (f'[user]\ntenant = "{TENANT}"\n', 1, "'user' is a list of tables: [[user]]"),
    ('# a comment\n[[users]]\nname = "x"\n', 2, "unknown table 'users'"),
]


@pytest.mark.parametrize(("text", "line", "problem"), BROKEN)
def test_a_mapping_with_an_error_names_its_file_and_line(
    tmp_path: Path, text: str, line: int, problem: str
) -> None:
    path = tmp_path / "teams.toml"
    path.write_text(text)
    with pytest.raises(ConfigFileError) as caught:
        MappingFile.load(str(path))
    message = str(caught.value)
    assert message.startswith(f"{path}:{line}: "), message
    assert problem in message, message


@pytest.mark.parametrize("workers", [1, 2])
async def test_ragline_serve_refuses_a_broken_mapping_in_one_line(
    tmp_path: Path, workers: int
) -> None:
    path = tmp_path / "teams.toml"
    path.write_text(GOOD_USER + 'nmae = "x"\n')
    env = {
        **os.environ,
        "RAGLINE_DATA_DIR": str(tmp_path / "data"),
        "RAGLINE_LLM_PROVIDER": "openai",
        "RAGLINE_RETRIEVAL": "false",
        "RAGLINE_BOT_AUTH": "off",
        "RAGLINE_TEAMS_MAPPING": str(path),
        # never reached: the mapping is refused first (--workers needs a shared database)
        "RAGLINE_DATABASE_URL": "postgresql://127.0.0.1:1/none",
    }
    command = [sys.executable, "-m", "ragline", "serve", "--port", "0"]
    with anyio.fail_after(60):
        result = await anyio.run_process(
            [*command, "--workers", str(workers)], env=env, check=False
        )
    assert result.returncode == 2
    lines = result.stderr.decode().strip().splitlines()
    assert lines == [f"ragline: {path}:5: unknown key 'nmae' in [[user]] ({_EXPECTED})"]


_EXPECTED = "expected tenant, aad_object_id, name, groups"


# -- lookups ------------------------------------------------------------------------------


def activity(
    tenant: str = TENANT,
    aad: str | None = AAD,
    *,
    conversation: str = "a:1chat",
    team: str | None = None,
    channel: str | None = None,
) -> Activity:
    data: dict[str, Any] = {"tenant": {"id": tenant}}
    if team is not None:
        data["team"] = {"id": team}
    if channel is not None:
        data["channel"] = {"id": channel}
    account: dict[str, Any] = {"id": "29:1user"}
    if aad is not None:
        account["aadObjectId"] = aad
    return Activity.model_validate(
        {
            "type": "message",
            "id": "1",
            "serviceUrl": "https://smba.example/amer/",
            "channelId": "msteams",
            "conversation": {"id": conversation},  # the tenant only in channelData
            "from": account,
            "channelData": data,
        }
    )


async def test_lookups_of_users_tenants_and_channels(tmp_path: Path) -> None:
    other = "11111111-2222-3333-4444-555555555555"
    path = tmp_path / "teams.toml"
    path.write_text(
        GOOD_USER
        + 'groups = ["eng"]\n'
        + f'[[tenant]]\ntenant = "{TENANT.upper()}"\ngroups = ["contoso"]\n'
        + f'[[channel]]\ntenant = "{TENANT}"\ncollections = ["everyone"]\n'
        + f'[[channel]]\ntenant = "{TENANT}"\nteam = "19:team"\ncollections = ["eng", "default"]\n'
        + f'[[channel]]\ntenant = "{TENANT}"\nconversation = "19:chan@thread.tacv2"\n'
        + 'collections = ["chan"]\n'
    )
    members = MappingFile.load(str(path))
    with Lifetime.root() as life:
        alice = await members.principal(activity(aad=AAD.upper()), life)
        assert alice is not None
        assert (alice.name, alice.groups, alice.admin) == ("alice", {"eng"}, False)
        someone = await members.principal(
            activity(aad="00000000-0000-0000-0000-0000000000b2"), life
        )
        assert someone is not None
        assert someone.name == "teams-00000000-0000-0000-0000-0000000000b2"
        assert someone.groups == {"contoso"}
        assert await members.principal(activity(other), life) is None  # no entry, no principal
        no_aad = await members.principal(activity(aad=None), life)  # the tenant's: by its id
        assert no_aad is not None
        assert no_aad.name == "teams-29-1user"
        # Grants may name alice, and the tenant's group through a principal nobody is.
        declared = {p.name: p.groups for p in members.declared()}
        assert declared["alice"] == {"eng"}
        assert {"contoso"} in declared.values()
        assert all(name == "alice" or name.startswith("teams-tenant-") for name in declared)

        # A conversation entry wins over its team's, which wins over the tenant's.
        thread = "19:chan@thread.tacv2;messageid=17"
        assert await members.collections(activity(conversation=thread, team="19:team"), life) == (
            "chan",
        )
        in_channel = activity(conversation="19:x;messageid=1", channel="19:chan@thread.tacv2")
        assert await members.collections(in_channel, life) == ("chan",)
        assert await members.collections(activity(team="19:team"), life) == ("eng", "default")
        assert await members.collections(activity(), life) == ("everyone",)
        assert await members.collections(activity(other), life) == ()  # the default


def test_the_example_in_the_docs_loads(tmp_path: Path) -> None:
    docs = (Path(__file__).parent.parent / "docs" / "TEAMS.md").read_text()
    section = docs.split("## Who may ask what", 1)[1]
    example = section.split("```toml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "teams.toml"
    path.write_text(example)
    members = MappingFile.load(str(path))
    assert [p.name for p in members.users.values()] == ["alice"]
    assert len(members.channels) == 3
