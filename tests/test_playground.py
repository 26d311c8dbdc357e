"""End to end with the real Microsoft 365 Agents Playground from npm: it plays Teams and
the Bot Connector, ragline runs with ``RAGLINE_BOT_AUTH=off`` on loopback, and a message
typed into the playground comes back as a streamed answer; and, in the playground's own web
UI (headless Chromium), an answer shows its citations, the AI label and the feedback
buttons, and a thumbs down given there reaches ragline.

The playground is installed by the test setup (once per machine, into a cache folder) and
bound to 127.0.0.1 by a preload script, since it listens on every interface by default.
It is driven the way its web UI drives it: a user message is posted to its conversation
API and the bot's messages are read from its conversation WebSocket.

Across the ``ragline.teams`` package and ``ragline.server.bot_api``."""

from __future__ import annotations

import itertools
import json
import os
import re
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
from playwright.async_api import Page, Request, Route, expect

from conftest import end_process, serve, settings_for, upstream_running
from fake_embeddings import WordEmbedder
from ragline.providers.memory import MemoryStore
from test_serve import free_port
from test_teams_citations import DOCS
from test_web import browser, shot
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


QUESTION = "how do I stop a job or a run?"
COMPLAINT = "It does not say what a batch is."


def citing(body: dict[str, Any]) -> Behavior:
    """An answer that cites the passage on jobs and the one on runs, by the numbers the
    prompt's context gave them ("[2] documents.jsonl:1: Jobs")."""
    context = str(body["messages"][-1]["content"])
    number = {title: n for n, title in re.findall(r"^\[(\d+)\] .*: (\w+)$", context, re.M)}
    jobs, runs = number["Jobs"], number["Runs"]
    texts = [f"Send its DELETE [{jobs}]; ", f"a run stops the same way [{runs}]."]
    return Behavior(texts=texts, tokens=len(texts), interval=0.1)


def numbers(text: str) -> list[str]:
    return re.findall(r"\[(\d+)\]", text)


async def ingested(url: str, documents: list[dict[str, Any]]) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        job = (await http.post(f"{url}/api/v1/ingest", json={"documents": documents})).json()
        with anyio.fail_after(60):
            while (await http.get(f"{url}/api/v1/ingest/{job['job_id']}")).json()[
                "state"
            ] != "succeeded":
                await anyio.sleep(0.05)


async def loopback_only(page: Page, base: str) -> None:
    """The page may reach the playground and nothing else (it asks a CDN for fonts)."""

    async def route(route: Route, request: Request) -> None:
        if request.url.startswith(f"{base}/"):
            await route.continue_()
        else:
            await route.abort()

    await page.route("**/*", route)


def bot_calls(page: Page, name: str) -> list[dict[str, Any]]:
    """The playground's log of its calls to the bot named ``name`` (``invoke``, ...), as its
    log panel gets them over the page's WebSocket: the activity sent and the bot's answer."""
    calls: list[dict[str, Any]] = []

    def frame(payload: str | bytes) -> None:
        try:
            log = json.loads(payload).get("log") or {}
        except (ValueError, AttributeError):
            return
        if log.get("activityName") == name and "response" in log:
            calls.append(log)

    page.on("websocket", lambda ws: ws.on("framereceived", frame))
    return calls


async def still(page: Page) -> None:
    """Once the page's finite animations (a popover or dialog fading in) have ended."""
    await page.evaluate(
        "() => Promise.all(document.getAnimations()"
        ".filter(a => isFinite(a.effect?.getComputedTiming().endTime ?? Infinity))"
        ".map(a => a.finished))"
    )


async def test_in_the_playground_ui_an_answer_shows_its_citations_and_a_thumbs_down_is_stored(
    playground_cli: Path, tmp_path: Path
) -> None:
    upstream = FakeUpstream(citing)
    async with upstream_running(upstream):
        settings = settings_for(
            upstream,
            bot_auth="off",
            bot_stream_interval=0.1,
            retrieval=True,
            data_dir=str(tmp_path / "data"),
            bot_top_k=3,
        )
        overrides = {"embedder": WordEmbedder(), "store": MemoryStore()}
        async with serve(settings, **overrides) as running:
            await ingested(running.url, DOCS)
            bot_url = f"{running.url}/api/messages"
            async with playground(playground_cli, bot_url, tmp_path) as base, browser() as b:
                page = await b.new_page(viewport={"width": 1280, "height": 560})
                await loopback_only(page, base)
                invokes = bot_calls(page, "invoke")
                await page.goto(base)  # it installs the bot in its personal chat itself
                welcome = page.get_by_text("Ask me anything").first
                await expect(welcome).to_be_visible(timeout=30_000)

                await page.get_by_role("textbox").first.click()  # the compose box
                await page.keyboard.type(QUESTION)
                await page.keyboard.press("Enter")
                # The 👍 and 👎 come with the final message (channelData.feedbackLoopEnabled).
                feedback = page.get_by_label("Feedback Button")
                await expect(feedback).to_be_visible(timeout=30_000)
                # The AI label (additionalType AIGeneratedContent), and each [n] of the text
                # a citation pill (one per citation of the entity).
                await expect(page.locator(".fai-AiGeneratedDisclaimer")).to_have_text(
                    "AI generated"
                )
                answer = "".join(citing(upstream.calls[0].body).texts)
                pills = page.locator(".fai-Citation")
                await expect(pills).to_have_text(numbers(answer))
                # A pill's preview is the cited passage: its name and its abstract.
                await pills.last.hover()
                preview = page.get_by_role("dialog")  # Fluent's popover surface
                await expect(preview).to_contain_text("Runs: A background run is cancelled")
                await expect(preview).to_contain_text("documents.jsonl:2: Runs")
                await still(page)
                await shot(page, "playground-answer-citations")
                await page.mouse.move(200, 500)  # off the pill: the preview closes
                await expect(preview).to_be_hidden()

                await feedback.get_by_role("button", name="Dislike").click()
                form = page.get_by_role("dialog")
                await expect(form).to_contain_text("What went wrong?")
                await form.locator("textarea").fill(COMPLAINT)
                await still(page)
                await shot(page, "playground-feedback-form")
                async with page.expect_response("**/_conversation/v1/invoke") as responded:
                    await form.get_by_role("button", name="Submit").click()
                invoked = await responded.value
                sent: dict[str, Any] = invoked.request.post_data_json
                with anyio.fail_after(10):
                    while not invokes:
                        await anyio.sleep(0.05)
                (call,) = invokes
                # ragline's answer to the invoke: 200 {} is what Teams wants (on a 4xx the
                # playground says "Unable to reach app").
                response = call["response"]
                assert response == {"statusCode": 200, "body": {}}, f"ragline said {response}"
                await expect(form).to_contain_text("Thank you!")
                await still(page)
                await shot(page, "playground-feedback")

            async with httpx.AsyncClient(timeout=30) as http:
                listed = (await http.get(f"{running.url}/api/v1/feedback")).json()["feedback"]

    # What the playground's form sent, and what the bot got: Teams' invoke, the text as typed.
    assert sent["name"] == "message/submitAction"
    value = {
        "actionName": "feedback",
        "actionValue": {"reaction": "dislike", "feedback": COMPLAINT},
    }
    assert sent["value"] == value
    assert invoked.status == 200
    activity = call["request"]["body"]
    assert (activity["type"], activity["name"], activity["value"]) == (
        "invoke",
        "message/submitAction",
        value,
    )
    # Playground 0.2.28 names no rated message: Teams sends replyToId, the playground's
    # UI knows the id but leaves it out of the invoke.
    assert "replyToId" not in activity
    (record,) = listed
    assert record["reaction"] == "dislike"
    assert record["text"] == COMPLAINT
    assert record["user_id"] == USER
    assert record["conversation_id"] == CONVERSATION
    assert record["answer"]["question"] == QUESTION
    assert record["answer"]["text"] == answer
