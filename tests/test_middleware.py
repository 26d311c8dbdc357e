"""ragline's middleware in someone else's FastAPI app (tests/adopt_app.py), on real uvicorn
in front of the fake upstream; the same app without it is the control."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest
import uvicorn

from adopt_app import make_app
from conftest import LogCapture, RawClient, free_port, listening, upstream_running
from upstream import Behavior, FakeUpstream

pytestmark = pytest.mark.anyio

BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True})
CLOSE_BOUND = 2.0  # generous: shared, noisy machines; a lone hang-up closes in a few ms
CONTROL_WAIT = 1.5  # how long the control's upstream is watched to stay open


async def hang_up_during(
    path: str, behavior: Behavior, *, middleware: bool, wait_for: str
) -> tuple[FakeUpstream, float, float | None]:
    """Send one request through the app, hang up once the upstream is at ``wait_for``
    (``received`` or ``producing``). Returns the upstream, the hang-up time, and when the
    upstream saw its connection close while it was watched (``None``: it did not)."""
    upstream = FakeUpstream(lambda body: behavior)
    async with upstream_running(upstream):
        app = make_app(upstream.base_url, middleware=middleware)
        config = uvicorn.Config(
            app, log_config=None, access_log=False, lifespan="on", timeout_graceful_shutdown=1
        )
        async with listening(uvicorn.Server(config)) as port:
            client = await RawClient.connect(port)
            await client.send("POST", path, BODY.encode())
            call = (await upstream.wait_for_calls(1))[0]
            if wait_for == "producing":
                with anyio.fail_after(10):
                    await call.producing.wait()
            hung_up = time.monotonic()
            await client.close()
            if middleware:
                with anyio.fail_after(CLOSE_BOUND):
                    await call.closed.wait()
            else:
                with anyio.move_on_after(CONTROL_WAIT):
                    await call.closed.wait()
            # Read before the server stops: its shutdown cancels whatever still runs.
            return upstream, hung_up, call.closed_at


@pytest.mark.parametrize("middleware", [True, False], ids=["middleware", "control"])
async def test_a_hang_up_before_the_upstreams_headers_closes_it(middleware: bool) -> None:
    held = Behavior(tokens=5, hold_headers=True)  # the model server is still thinking
    _, hung_up, closed_at = await hang_up_during(
        "/whole", held, middleware=middleware, wait_for="received"
    )
    if middleware:
        assert closed_at is not None
        assert closed_at - hung_up < CLOSE_BOUND
    else:
        assert closed_at is None, "without the middleware the handler runs on"


@pytest.mark.parametrize("middleware", [True, False], ids=["middleware", "control"])
async def test_a_hang_up_during_a_non_streaming_call_closes_the_upstream(middleware: bool) -> None:
    slow = Behavior(tokens=400, interval=0.01)
    upstream, hung_up, closed_at = await hang_up_during(
        "/whole", slow, middleware=middleware, wait_for="producing"
    )
    call = upstream.calls[0]
    if middleware:
        assert closed_at is not None
        assert closed_at - hung_up < CLOSE_BOUND
        assert not call.finished
    else:
        assert closed_at is None, "without the middleware the model generates for nobody"
        assert call.tokens_after(hung_up) > 10


async def test_a_hang_up_mid_stream_closes_the_upstream() -> None:
    # Starlette's StreamingResponse notices this one on its own; with the middleware it
    # must still hold (the control passes too, so it is not one).
    slow = Behavior(tokens=400, interval=0.01)
    _, hung_up, closed_at = await hang_up_during(
        "/stream", slow, middleware=True, wait_for="producing"
    )
    assert closed_at is not None
    assert closed_at - hung_up < CLOSE_BOUND


async def test_the_outcome_is_logged_as_499_with_its_cause(logs: LogCapture) -> None:
    await hang_up_during(
        "/whole", Behavior(tokens=5, hold_headers=True), middleware=True, wait_for="received"
    )
    line = await logs.wait_for(lambda r: r.name == "ragline.access")
    assert line.status == 499  # type: ignore[attr-defined]
    assert line.cause == "client_disconnected"  # type: ignore[attr-defined]


async def test_a_stage_deadline_is_a_timeout_not_a_cancellation() -> None:
    upstream = FakeUpstream(lambda body: Behavior(tokens=5, hold_headers=True))
    async with upstream_running(upstream):
        app = make_app(upstream.base_url, middleware=True)
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on")
        async with listening(uvicorn.Server(config)) as port:
            client = await RawClient.connect(port)
            body = json.dumps({"model": "m", "messages": [], "timeout": 0.2}).encode()
            await client.send("POST", "/staged", body)
            answer = await client.read_until(b"}")
    assert b"200 OK" in answer
    assert b'"cancelled":false' in answer
    assert b"timeout" in answer
    with anyio.fail_after(CLOSE_BOUND):
        await upstream.calls[0].closed.wait()  # the deadline closed the upstream too


@pytest.mark.parametrize("middleware", [True, False], ids=["middleware", "control"])
async def test_sigterm_ends_streams_with_a_final_event_and_exits_at_once(
    middleware: bool, tmp_path: Path
) -> None:
    upstream = FakeUpstream(lambda body: Behavior(tokens=2000, interval=0.02))
    async with upstream_running(upstream):
        port = free_port()
        env = {
            **os.environ,
            "ADOPT_UPSTREAM": upstream.base_url,
            "ADOPT_MIDDLEWARE": "1" if middleware else "0",
            "PYTHONPATH": str(Path(__file__).parent),
        }
        log = (tmp_path / "app.log").open("wb")
        process = await anyio.open_process(
            [sys.executable, "-m", "uvicorn", "adopt_app:app", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
            cwd=str(Path(__file__).parent),
        )
        try:
            with anyio.fail_after(30):
                while True:
                    try:
                        client = await RawClient.connect(port)
                        break
                    except OSError:
                        await anyio.sleep(0.05)
            await client.send("POST", "/stream", BODY.encode())
            await client.read_until(b"data:", 3)
            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)
            with anyio.move_on_after(5):
                await process.wait()
            exited = time.monotonic() - signalled
            if middleware:
                assert process.returncode is not None, "still running 5 s after SIGTERM"
                assert exited < CLOSE_BOUND
                body = await client.read_all()
                assert b"event: error" in body
                assert b'"cause":"shutdown"' in body
                assert upstream.calls[0].closed_at is not None
            else:
                assert process.returncode is None, "the control exited: it waits for streams"
        finally:
            if process.returncode is None:
                process.kill()
                with anyio.move_on_after(10, shield=True):
                    await process.wait()
            log.close()


def test_importing_ragline_does_not_load_the_middleware() -> None:
    code = "import ragline, sys; print('ragline.middleware' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
