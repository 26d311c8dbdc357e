"""Who a request comes from (:mod:`ragline.principals`): principals an admin makes over
HTTP, keys shown once and stored hashed, one 401 for every bad key, admin routes that
are not there for members, and principals declared in a file (``RAGLINE_PRINCIPALS_FILE``)
whose mistakes refuse to start with the file and the line."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from conftest import asgi_client, free_port
from ragline import Settings
from ragline.access import Principal, key_digest
from ragline.config_file import ConfigFileError
from ragline.principal_file import read_principals_file
from ragline.server import principals_api

pytestmark = pytest.mark.anyio

ADMIN = {"authorization": "Bearer admin-key"}


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def settings(data: Path, **values: Any) -> Settings:
    values.setdefault("api_keys", ["admin-key"])
    return Settings(
        retrieval=False,
        llm_provider="openai",
        llm_base_url="http://127.0.0.1:9/v1",
        data_dir=str(data),
        **values,
    )


@asynccontextmanager
async def client(data: Path, **values: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(settings(data, **values)) as http:
        yield http


async def make(http: httpx.AsyncClient, name: str, *groups: str, admin: bool = False) -> str:
    made = await http.post(
        "/api/v1/principals",
        json={"name": name, "groups": list(groups), "admin": admin},
        headers=ADMIN,
    )
    assert made.status_code == 201, made.text
    return str(made.json()["key"])


async def test_an_admin_makes_principals_and_each_key_is_shown_once(tmp_path: Path) -> None:
    async with client(tmp_path) as http:
        made = await http.post(
            "/api/v1/principals",
            json={"name": "ann", "groups": ["ops", "eng", "ops"]},
            headers=ADMIN,
        )
        assert made.status_code == 201, made.text
        assert made.headers["cache-control"] == "no-store"
        body = made.json()
        key = body.pop("key")
        assert body == {"name": "ann", "groups": ["eng", "ops"], "admin": False}
        assert key.startswith("rl_")
        assert len(key) >= 40
        boss = await make(http, "boss", admin=True)
        listed = await http.get("/api/v1/principals", headers=bearer(boss))  # an admin too
        assert listed.status_code == 200
        assert listed.json() == {
            "principals": [
                {"name": "ann", "groups": ["eng", "ops"], "admin": False, "declared": False},
                {"name": "boss", "groups": [], "admin": True, "declared": False},
            ]
        }
        assert key not in listed.text
        assert boss not in listed.text
        me = await http.get("/api/v1/me", headers=bearer(key))
        assert me.json() == {"name": "ann", "groups": ["eng", "ops"], "admin": False}
        configured = (await http.get("/api/v1/me", headers=ADMIN)).json()
        assert configured["admin"] is True
        assert configured["name"] == f"admin-{key_digest('admin-key')[:8]}"  # not the key
    # Stored hashed: the store's files hold the digest, never the key.
    stored = b"".join([await p.read_bytes() async for p in anyio.Path(tmp_path).glob("access*")])
    assert key_digest(key).encode() in stored
    assert key.encode() not in stored
    assert boss.encode() not in stored


async def test_without_any_credential_everyone_is_the_local_admin_until_one_exists(
    tmp_path: Path,
) -> None:
    async with client(tmp_path, api_keys=[]) as http:
        me = await http.get("/api/v1/me")
        assert me.json() == {"name": "local", "groups": [], "admin": True}
        made = await http.post("/api/v1/principals", json={"name": "ann"})
        assert made.status_code == 201, made.text
        # From now on every request presents a credential (this replica knows at once).
        assert (await http.get("/api/v1/me")).status_code == 401
        ann = bearer(made.json()["key"])
        assert (await http.get("/api/v1/me", headers=ann)).json()["name"] == "ann"


async def test_a_member_finds_no_admin_route(tmp_path: Path) -> None:
    async with client(tmp_path) as http:
        member = bearer(await make(http, "ann"))
        unknown = await http.get("/api/v1/nowhere", headers=member)
        assert unknown.status_code == 404
        asked = [
            (method, route.path.replace("{name}", "ann"))
            for route in principals_api.routes
            if route.policy.admin
            for method in route.methods or ()
            if method != "HEAD"
        ]
        assert len(asked) == 4
        # Other methods on the same paths: a 405 would tell that they exist.
        asked += [("PUT", "/api/v1/principals"), ("GET", "/api/v1/principals/ann")]
        asked += [("GET", "/api/v1/principals/ann/keys")]
        for method, path in asked:
            answer = await http.request(method, path, headers=member, json={"name": "x"})
            assert answer.status_code == 404, (method, path)
            assert answer.text == unknown.text, (method, path)
        # Nothing happened: ann is still there, with the same key.
        assert (await http.get("/api/v1/me", headers=member)).status_code == 200
        wrong = await http.request("PUT", "/api/v1/principals", headers=ADMIN)
        assert wrong.status_code == 405  # for an admin, the route is there


async def test_every_bad_key_is_one_401_and_a_revoked_key_is_refused_here_at_once(
    tmp_path: Path,
) -> None:
    async with client(tmp_path) as http:
        ann, bob = await make(http, "ann"), await make(http, "bob")
        for key in (ann, bob):  # known, and so in this replica's cache
            assert (await http.get("/api/v1/me", headers=bearer(key))).status_code == 200
        assert (await http.delete("/api/v1/principals/bob", headers=ADMIN)).json() == {
            "name": "bob",
            "revoked": True,
        }
        rotated = await http.post("/api/v1/principals/ann/keys", headers=ADMIN)
        assert rotated.status_code == 201
        assert rotated.headers["cache-control"] == "no-store"
        new_ann = rotated.json()["key"]
        assert rotated.json() == {"name": "ann", "key": new_ann}
        assert (await http.get("/api/v1/me", headers=bearer(new_ann))).json()["name"] == "ann"
        refused = [
            bearer(bob),  # revoked
            bearer(ann),  # rotated away
            bearer("rl_" + "A" * 43),  # unknown
            bearer("x" * 600),  # too long
            {"authorization": "Basic YWRtaW46YWRtaW4="},
            {"authorization": "Bearer"},
            {"authorization": "Bearer "},
            {"authorization": f"bearer{ann}"},
            {},
        ]
        bodies = set()
        for headers in refused:
            answer = await http.get("/api/v1/me", headers=headers)
            assert answer.status_code == 401, headers
            assert answer.headers["www-authenticate"] == "Bearer"
            bodies.add(answer.text)
        assert len(bodies) == 1, bodies


async def test_a_taken_name_is_409_and_bad_input_422(tmp_path: Path) -> None:
    async with client(tmp_path) as http:
        await make(http, "ann")
        for name in ("ann", "local", "admin-1234"):
            taken = await http.post("/api/v1/principals", json={"name": name}, headers=ADMIN)
            assert taken.status_code == 409, name
            assert taken.json()["error"]["code"] == "principal_exists"
        bad: list[dict[str, Any]] = [
            {"name": "a b"},
            {"name": "ann\n"},
            {"name": "-ann"},
            {"name": "x" * 129},
            {"name": ""},
            {"name": "ok", "groups": ["two words"]},
            {"name": "ok", "groups": "eng"},
            {"name": "ok", "admin": "yes"},
            {"name": "ok", "key": "mine"},  # a key is never chosen
            {},
        ]
        for body in bad:
            answer = await http.post("/api/v1/principals", json=body, headers=ADMIN)
            assert answer.status_code == 422, (body, answer.text)
            assert "Traceback" not in answer.text
        garbled = await http.post("/api/v1/principals", content=b"{", headers=ADMIN)
        assert garbled.status_code == 400
        for method, path in [
            ("DELETE", "/api/v1/principals/nobody"),
            ("POST", "/api/v1/principals/nobody/keys"),
        ]:
            missing = await http.request(method, path, headers=ADMIN)
            assert missing.status_code == 404
            assert missing.json()["error"]["code"] == "principal_not_found"
        listed = await http.get("/api/v1/principals", headers=ADMIN)
        assert [p["name"] for p in listed.json()["principals"]] == ["ann"]


def declare(path: Path, *entries: str) -> Path:
    path.write_text("\n".join(entries))
    return path


def entry(name: str, key: str, *, groups: str = "[]", admin: str = "false") -> str:
    return (
        f'[[principal]]\nname = "{name}"\ngroups = {groups}\nadmin = {admin}\n'
        f'key_sha256 = "{key_digest(key)}"\n'
    )


async def test_declared_principals_authenticate_and_only_the_file_changes_them(
    tmp_path: Path,
) -> None:
    async with client(tmp_path, api_keys=[]) as http:  # the file's stored name, made before
        made = await http.post("/api/v1/principals", json={"name": "ci-bot"})
        old_ci_key = made.json()["key"]
    upper = entry("boss", "boss-key", admin="true").replace(
        key_digest("boss-key"), key_digest("boss-key").upper()
    )
    file = declare(tmp_path / "principals.toml", entry("ci-bot", "ci-key", groups='["eng"]'), upper)
    async with client(tmp_path, api_keys=[], principals_file=str(file)) as http:
        assert (await http.get("/api/v1/me")).status_code == 401  # credentials exist
        ci = await http.get("/api/v1/me", headers=bearer("ci-key"))
        assert ci.json() == {"name": "ci-bot", "groups": ["eng"], "admin": False}
        boss = bearer("boss-key")
        assert (await http.get("/api/v1/me", headers=boss)).json()["admin"] is True
        # The file wins over a stored principal of the same name: its old key is refused.
        assert (await http.get("/api/v1/me", headers=bearer(old_ci_key))).status_code == 401
        ann = await http.post("/api/v1/principals", json={"name": "ann"}, headers=boss)
        assert ann.status_code == 201
        listed = await http.get("/api/v1/principals", headers=boss)
        assert listed.json()["principals"] == [
            {"name": "ann", "groups": [], "admin": False, "declared": False},
            {"name": "boss", "groups": [], "admin": True, "declared": True},
            {"name": "ci-bot", "groups": ["eng"], "admin": False, "declared": True},
        ]
        for method, path in [
            ("DELETE", "/api/v1/principals/ci-bot"),
            ("POST", "/api/v1/principals/ci-bot/keys"),
            ("POST", "/api/v1/principals"),
        ]:
            answer = await http.request(method, path, headers=boss, json={"name": "ci-bot"})
            assert answer.status_code == 409, (method, path)
            assert answer.json()["error"]["code"] == "principal_declared"
            assert "RAGLINE_PRINCIPALS_FILE" in answer.json()["error"]["message"]
        assert (await http.get("/api/v1/me", headers=bearer("ci-key"))).status_code == 200


async def test_a_grant_names_only_known_users_and_groups(tmp_path: Path) -> None:
    file = declare(tmp_path / "p.toml", entry("ci-bot", "ci-key", groups='["builders"]'))
    async with client(tmp_path, principals_file=str(file)) as http:
        await make(http, "ann", "eng")
        for entries in (["user:nobody"], ["group:nogroup"], ["user:ann", "group:ghosts"]):
            answer = await http.put(
                "/api/v1/collections/docs/access", json={"read": entries}, headers=ADMIN
            )
            assert answer.status_code == 422, (entries, answer.text)
            assert "unknown users or groups" in answer.json()["error"]["message"]
        known = ["user:ann", "group:eng", "user:ci-bot", "group:builders", "*"]
        answer = await http.put(
            "/api/v1/collections/docs/access",
            json={"read": known, "write": ["user:ann"]},
            headers=ADMIN,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["read"] == sorted(known)


GOOD = key_digest("k")


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ('[[principal]\nname = "x"\n', 1, "not valid TOML"),
        (
            f'[[principal]]\nname = "x"\nkey_sha256 = "{GOOD}"\nrole = "admin"\n',
            4,
            "unknown key 'role'",
        ),
        (f'[[principal]]\nkey_sha256 = "{GOOD}"\n', 1, "needs 'name'"),
        ('\n[[principal]]\nname = "x"\n', 2, "needs 'key_sha256'"),
        (f'[[principal]]\nname = "a b"\nkey_sha256 = "{GOOD}"\n', 2, "is not a name"),
        (f'[[principal]]\nname = "admin-x"\nkey_sha256 = "{GOOD}"\n', 2, "reserved"),
        (f'[[principal]]\nname = "x"\nkey_sha256 = "{GOOD[:63]}"\n', 3, "64 hex digits"),
        (f'[[principal]]\nname = "x"\nkey_sha256 = "{GOOD}\\n"\n', 3, "64 hex digits"),
        (f'[[principal]]\nname = "x\\n"\nkey_sha256 = "{GOOD}"\n', 2, "is not a name"),
        ('[[principal]]\nname = "x"\nkey_sha256 = "rl_the-key-itself"\n', 3, "never the key"),
        (f'[[principal]]\nname = "x"\ngroups = ["a b"]\nkey_sha256 = "{GOOD}"\n', 3, "not a name"),
        (f'[[principal]]\nname = "x"\nadmin = "yes"\nkey_sha256 = "{GOOD}"\n', 3, "true or false"),
        (
            f'[[principal]]\nname = "x"\nkey_sha256 = "{GOOD}"\n\n'
            f'[[principal]]\nname = "x"\nkey_sha256 = "{key_digest("j")}"\n',
            6,
            "declared twice (first at line 1)",
        ),
        (
            f'[[principal]]\nname = "x"\nkey_sha256 = "{GOOD}"\n\n'
            f'[[principal]]\nname = "y"\nkey_sha256 = "{GOOD.upper()}"\n',
            7,
            "this key_sha256 is declared twice",
        ),
        (f'[[user]]\nname = "x"\nkey_sha256 = "{GOOD}"\n', 1, "unknown table 'user'"),
        ('principal = "x"\n', 1, "list of tables"),
    ],
)
def test_a_principals_file_with_an_error_names_the_file_and_the_line(
    tmp_path: Path, text: str, line: int, problem: str
) -> None:
    path = tmp_path / "principals.toml"
    path.write_text(text)
    with pytest.raises(ConfigFileError) as raised:
        read_principals_file(path)
    message = str(raised.value)
    assert message.startswith(f"{path}:{line}: "), message
    assert problem in message
    assert "rl_the-key-itself" not in message  # never echoed: it may be a key
    assert GOOD not in message


def test_a_principals_file_declares_principals_by_the_digest_of_their_keys(
    tmp_path: Path,
) -> None:
    file = declare(
        tmp_path / "p.toml",
        "# configured as code",
        entry("ci-bot", "ci-key", groups='["eng", "ops"]').replace(
            key_digest("ci-key"), key_digest("ci-key").upper()
        ),
        f'[[principal]]\nname = "boss"\nadmin = true\nkey_sha256 = "{key_digest("b")}"\n',
    )
    declared = read_principals_file(file)
    assert declared == {
        hashlib.sha256(b"ci-key").hexdigest(): Principal("ci-bot", frozenset({"eng", "ops"})),
        key_digest("b"): Principal("boss", admin=True),
    }
    assert read_principals_file(os.devnull) == {}  # an empty file declares nobody


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_ragline_serve_refuses_a_bad_principals_file_in_one_line(
    tmp_path: Path, workers: str
) -> None:
    file = declare(
        tmp_path / "principals.toml",
        entry("ci-bot", "k"),
        f"[[principal]]\nname = 'x y'\nkey_sha256 = '{key_digest('j')}'\n",
    )
    result = await anyio.run_process(
        [
            sys.executable,
            "-m",
            "ragline",
            "serve",
            "--port",
            str(free_port()),
            "--workers",
            workers,
        ],
        env={
            **os.environ,
            "RAGLINE_DATA_DIR": str(tmp_path / "data"),
            "RAGLINE_PRINCIPALS_FILE": str(file),
            "RAGLINE_RETRIEVAL": "false",
            "RAGLINE_LLM_PROVIDER": "openai",
            "RAGLINE_LLM_BASE_URL": "http://127.0.0.1:9/v1",
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        check=False,
    )
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert err.startswith(f"ragline: {file}:8: 'x y' is not a name (letters, digits"), err
    assert err.count("\n") == 1  # one line, no traceback
    assert result.stdout == b""
