"""End to end with the real Microsoft 365 Agents Playground from npm: it plays Teams and
the Bot Connector, ragline runs with ``RAGLINE_BOT_AUTH=off`` on loopback, and a message
typed into the playground comes back as a streamed answer.

The playground is installed by the test setup (once per machine, into a cache folder) and
bound to 127.0.0.1 by a preload script, since it listens on every interface by default.
It is driven the way its web UI drives it: a user message is posted to its conversation
API and the bot's messages are read from its conversation WebSocket.

Across the ``ragline.teams`` package and ``ragline.server.bot_api``."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from httpx_ws import AsyncWebSocketSession, aconnect_ws

from conftest import end_process, serve, settings_for, upstream_running
from test_serve import free_port
from upstream import Behavior, FakeUpstream

pytestmark = pytest.mark.anyio

VERSION = "0.2.28"
CACHE = Path(os.environ.get("RAGLINE_NPM_CACHE", Path.home() / ".cache" / "ragline" / "npm"))
PRELOAD = Path(__file__).parent / "playground" / "bind-loopback.cjs"
CONVERSATION = "ragline-e2e-personal"
USER = "user-id-0"  # the playground's built-in user


@pytest.fixture(scope="module")
def playground_cli() -> Path:
    """The playground's CLI, installed from npm on first use."""
    folder = CACHE / f"m365agentsplayground-{VERSION}"
    cli = folder / "node_modules" / "@microsoft" / "m365agentsplayground" / "cli.js"
    if not cli.exists():
        npm = shutil.which("npm")
        assert npm is not None, "npm is needed to install the Agents Playground"
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [npm, "install", "--prefix", str(folder), "--no-audit", "--no-fund",
             f"@microsoft/m365agentsplayground@{VERSION}"],
            check=True,
            capture_output=True,
            timeout=300,
        )  # fmt: skip
    assert cli.exists()
    return cli


@asynccontextmanager
async def playground(cli: Path, bot_url: str, workdir: Path) -> AsyncIterator[str]:
    """The playground on a free loopback port, pointed at ``bot_url``; yields its base URL."""
    port = free_port()
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in {"AUTH_CLIENT_ID", "AUTH_CLIENT_SECRET", "NODE_OPTIONS"}
    }
    environment |= {
        "NODE_OPTIONS": f"--require {PRELOAD}",
        "TEAMSAPPTESTER_BROWSER": "none",  # it would open a browser
        "APPLICATION_INSIGHTS_NO_STATSBEAT": "1",  # with --disable-telemetry: no calls out
        "M365_AGENTS_PLAYGROUND_LOGFILE": str(workdir / "playground.log"),
    }
    base = f"http://127.0.0.1:{port}"
    command = [
        "node", str(cli), "start",
        "--app-endpoint", bot_url,
        "--channel-id", "msteams",
        "--port", str(port),
        "--conversation-id", CONVERSATION,
        "--service-url", f"{base}/_connector",
        "--disable-telemetry",
    ]  # fmt: skip
    process = await anyio.open_process(
        command, cwd=workdir, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        assert process.stdout is not None
        output = b""
        with anyio.fail_after(60):
            async for chunk in process.stdout:
                output += chunk
                if b"Listening on" in output and output.endswith(b"\n"):
                    break
        # It falls back to a random port when the one asked for is taken: check.
        assert f"Listening on {port}".encode() in output, output
        async with httpx.AsyncClient() as http:
            with anyio.fail_after(30):
                while True:
                    try:
                        if (await http.get(f"{base}/_debug/ping")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await anyio.sleep(0.05)
        yield base
    finally:
        with anyio.move_on_after(15, shield=True):
            await end_process(process)


def listening_addresses(port: int) -> set[str]:
    """The local addresses with a TCP socket listening on ``port`` (IPv4 and IPv6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].rsplit(":", 1)
            if int(port_hex, 16) == port and fields[3] == "0A":  # LISTEN
                found.add(address)
    return found


async def next_bot_message(ws: AsyncWebSocketSession) -> dict[str, Any]:
    frame: dict[str, Any] = await ws.receive_json()
    return frame


async def test_a_message_through_the_agents_playground_gets_a_streamed_answer(
    playground_cli: Path, tmp_path: Path
) -> None:
    upstream = FakeUpstream(lambda body: Behavior(tokens=12, interval=0.1))
    async with upstream_running(upstream):
        settings = settings_for(upstream, bot_auth="off", bot_stream_interval=0.3)
        async with serve(settings) as running:
            bot_url = f"{running.url}/api/messages"
            async with playground(playground_cli, bot_url, tmp_path) as base:
                port = int(base.rsplit(":", 1)[1])
                assert listening_addresses(port) == {"0100007F"}  # 127.0.0.1 and nothing else
                async with (
                    httpx.AsyncClient(base_url=base, timeout=30) as http,
                    aconnect_ws(f"{base}/_ws_conversation/v1/conversations/stream", http) as ws,
                ):
                    installed = await http.post(
                        f"/_debug/conversation/{CONVERSATION}/installation", json={}
                    )
                    assert installed.status_code == 200
                    frames: list[dict[str, Any]] = []
                    with anyio.fail_after(30):  # the greeting for the new conversation
                        while not any("Ask me" in (f["message"].get("text") or "") for f in frames):
                            frames.append(await next_bot_message(ws))

                    sent = await http.post(
                        f"/_conversation/v1/conversations/{CONVERSATION}/messages",
                        json={
                            "from": {"id": USER},
                            "text": "what is ragline?",
                            "textFormat": "plain",
                        },
                    )
                    assert sent.status_code == 200
                    answer: list[dict[str, Any]] = []
                    with anyio.fail_after(60):
                        while True:
                            frame = await next_bot_message(ws)
                            answer.append(frame)
                            stream = frame["message"].get("streamEntity") or {}
                            if stream.get("streamType") == "final":
                                break

        assert upstream.calls[0].query == "what is ragline?"
        kinds = [
            (f["action"], (f["message"].get("streamEntity") or {}).get("streamType"))
            for f in answer
        ]
        assert kinds[0] == ("createMessage", "informative")
        assert ("updateMessage", "streaming") in kinds  # streamed, not one message at the end
        assert kinds[-1] == ("updateMessage", "final")
        final = answer[-1]["message"]["text"]
        assert final.startswith("".join(f"t{i} " for i in range(12)).strip())
        texts = [f["message"]["text"] for f in answer if f["action"] == "updateMessage"]
        assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(texts))
        print(json.dumps(kinds))
