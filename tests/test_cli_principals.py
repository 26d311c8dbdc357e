"""``ragline principals`` as an operator runs it: real processes on the store of a
deployment whose ``ragline serve`` is running (the embedded SQLite file, or a real
PostgreSQL), which sees each change within 5 s; errors are one line, never a
traceback; ``hash`` makes the ``key_sha256`` of a principals file."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx
import pytest

from conftest import free_port
from deployment import launch, until_ready

pytestmark = pytest.mark.anyio

ADMIN = {"authorization": "Bearer admin-key"}


def environment(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "RAGLINE_DATA_DIR": str(tmp_path / "data"),
        "RAGLINE_RETRIEVAL": "false",
        "RAGLINE_LLM_PROVIDER": "openai",
        "RAGLINE_LLM_BASE_URL": "http://127.0.0.1:9/v1",
        "RAGLINE_API_KEYS": "admin-key",
        **extra,
    }


async def principals(
    env: dict[str, str], *args: str, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    """``ragline principals ARGS`` in a process of its own."""
    command = [sys.executable, "-m", "ragline", "principals", *args]
    return await anyio.run_process(command, env=env, input=stdin, check=False)


@asynccontextmanager
async def server(env: dict[str, str], log: Path) -> AsyncIterator[str]:
    """A real ``ragline serve`` process, once ready: its URL."""
    port = free_port()
    process = await launch(["serve", "--port", str(port)], env, log)
    url = f"http://127.0.0.1:{port}"
    try:
        await until_ready(url, process)
        yield url
    finally:
        process.terminate()
        with anyio.move_on_after(15, shield=True):
            await process.wait()
        if process.returncode is None:
            process.kill()


async def status_becomes(http: httpx.AsyncClient, url: str, key: str, status: int) -> float:
    """Seconds until ``GET /api/v1/me`` with ``key`` answers ``status`` (at most 5)."""
    began = anyio.current_time()
    with anyio.fail_after(5):
        while True:
            answer = await http.get(f"{url}/api/v1/me", headers={"authorization": f"Bearer {key}"})
            if answer.status_code == status:
                return anyio.current_time() - began
            await anyio.sleep(0.05)


def one_line_error(result: subprocess.CompletedProcess[bytes], *expected: str) -> None:
    err = result.stderr.decode()
    assert result.returncode == 1, err
    assert err.startswith("ragline: "), err
    assert err.count("\n") == 1, err  # one line: no traceback
    for text in expected:
        assert text in err, err
    assert result.stdout == b""


@pytest.mark.parametrize("kind", ["embedded", "postgres"])
async def test_a_key_made_in_the_terminal_works_on_the_running_server_until_removed(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    extra = {}
    if kind == "postgres":  # the PostgreSQL that every replica shares
        extra["RAGLINE_DATABASE_URL"] = request.getfixturevalue("database_url")
    env = environment(tmp_path, **extra)
    async with server(env, tmp_path / "serve.log") as url, httpx.AsyncClient(timeout=10) as http:
        made = await principals(env, "add", "ann", "--group", "eng", "--group", "ops", "--quiet")
        assert made.returncode == 0, made.stderr.decode()
        key = made.stdout.decode().strip()
        assert made.stdout.decode() == f"{key}\n"  # only the key, for scripts
        assert key.startswith("rl_")
        await status_becomes(http, url, key, 200)
        me = await http.get(f"{url}/api/v1/me", headers={"authorization": f"Bearer {key}"})
        assert me.json() == {"name": "ann", "groups": ["eng", "ops"], "admin": False}
        # What the server made, the terminal lists, and the other way round.
        over_http = await http.post(f"{url}/api/v1/principals", json={"name": "bob"}, headers=ADMIN)
        assert over_http.status_code == 201
        listed = await principals(env, "list", "--json")
        assert listed.returncode == 0, listed.stderr.decode()
        assert json.loads(listed.stdout) == {
            "principals": [
                {"name": "ann", "groups": ["eng", "ops"], "admin": False, "declared": False},
                {"name": "bob", "groups": [], "admin": False, "declared": False},
            ]
        }
        assert key not in listed.stdout.decode()
        table = (await principals(env, "list")).stdout.decode().splitlines()
        assert table[0].split() == ["NAME", "ROLE", "GROUPS", "FROM"]
        assert table[1].split() == ["ann", "member", "eng,ops", "store"]
        served = await http.get(f"{url}/api/v1/principals", headers=ADMIN)
        assert served.json() == json.loads(listed.stdout)
        # A new key: the old one is refused within 5 s, the new one accepted.
        rotated = await principals(env, "rotate", "ann")
        assert rotated.returncode == 0, rotated.stderr.decode()
        lines = rotated.stdout.decode().splitlines()
        new_key = next(line.removeprefix("key: ") for line in lines if line.startswith("key: "))
        assert "shown only now" in rotated.stdout.decode()
        await status_becomes(http, url, key, 401)
        await status_becomes(http, url, new_key, 200)
        removed = await principals(env, "remove", "ann")
        assert removed.returncode == 0, removed.stderr.decode()
        assert "removed principal ann" in removed.stdout.decode()
        await status_becomes(http, url, new_key, 401)
        # Mistakes: one line each, exit 1.
        one_line_error(await principals(env, "add", "bob"), "'bob' exists")
        one_line_error(await principals(env, "remove", "ann"), "no principal 'ann'")
        one_line_error(await principals(env, "rotate", "nobody"), "no principal 'nobody'")
        one_line_error(await principals(env, "add", "not a name"), "is not a name")
        one_line_error(await principals(env, "add", "ok", "--group", "a b"), "is not a name")
        one_line_error(await principals(env, "add", "local"), "reserved")
        assert "Traceback" not in (tmp_path / "serve.log").read_text()


async def test_hash_makes_the_key_sha256_of_a_principals_file_that_the_server_accepts(
    tmp_path: Path,
) -> None:
    made = await principals(os.environ.copy(), "hash", "--new")
    assert made.returncode == 0, made.stderr.decode()
    key, digest = made.stdout.decode().split()
    assert digest == hashlib.sha256(key.encode()).hexdigest()
    hashed = await principals(os.environ.copy(), "hash", stdin=f"{key}\n".encode())
    assert hashed.stdout.decode() == f"{digest}\n"
    for bad in (b"", b"two words\n", b"x" * 513):
        refused = await principals(os.environ.copy(), "hash", stdin=bad)
        assert refused.returncode == 2
        assert refused.stdout == b""
    file = tmp_path / "principals.toml"
    file.write_text(f'[[principal]]\nname = "ci-bot"\ngroups = ["eng"]\nkey_sha256 = "{digest}"\n')
    env = environment(tmp_path, RAGLINE_PRINCIPALS_FILE=str(file))
    async with server(env, tmp_path / "serve.log") as url, httpx.AsyncClient(timeout=10) as http:
        me = await http.get(f"{url}/api/v1/me", headers={"authorization": f"Bearer {key}"})
        assert me.json() == {"name": "ci-bot", "groups": ["eng"], "admin": False}
    # The terminal sees the file too: its principals are listed, and only the file changes them.
    listed = await principals(env, "list")
    assert listed.stdout.decode().splitlines()[1].split() == ["ci-bot", "member", "eng", "file"]
    one_line_error(await principals(env, "remove", "ci-bot"), "RAGLINE_PRINCIPALS_FILE")
    one_line_error(await principals(env, "rotate", "ci-bot"), "RAGLINE_PRINCIPALS_FILE")
    file.write_text('[[principal]]\nname = "ci-bot"\n')
    broken = await principals(env, "list")
    assert broken.returncode == 2
    assert broken.stderr.decode() == f"ragline: {file}:1: [[principal]] needs 'key_sha256'\n"
