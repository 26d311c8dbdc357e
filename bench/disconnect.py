"""How fast does work stop when its owner goes away?

Runs ragline on uvicorn and the fake OpenAI-compatible upstream from the test suite, both
on 127.0.0.1, and measures over many trials:

- client hang-up mid-stream (SSE route) → upstream connection closed;
- client hang-up while the upstream withholds its headers (non-streaming) → closed;
- tokens the upstream produced after the hang-up;
- SIGTERM with 20 live streams → process exit (separate ``ragline serve`` process).

    .venv/bin/python bench/disconnect.py [--trials 50]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from conftest import RawClient, serve, settings_for, upstream_running
from test_serve import behave, drain, free_port, open_streams, server_process, sigterm
from upstream import Behavior, FakeUpstream


def summary(values: list[float], unit: str = "ms", scale: float = 1000.0) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return (
        f"p50 {statistics.median(ordered) * scale:.2f}{unit}, p95 {p95 * scale:.2f}{unit}, "
        f"max {ordered[-1] * scale:.2f}{unit} (n={len(ordered)})"
    )


def choose(body: dict[str, object]) -> Behavior:
    if "hold" in str(body["messages"]):
        return Behavior(hold_headers=True)
    return Behavior(tokens=100_000, interval=0.01)


async def hang_ups(trials: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {"stream": [], "headers": [], "tokens_after": []}
    upstream = FakeUpstream(choose)
    async with upstream_running(upstream), serve(settings_for(upstream)) as running:
        for i in range(trials):
            client = await RawClient.connect(running.port)
            await client.send("GET", f"/api/v1/inference/stream?query=s{i}")
            await client.read_until(b'data: {"delta"', count=3)
            call = upstream.calls[-1]
            hung_up = time.monotonic()
            await client.close()
            await call.closed.wait()
            assert call.closed_at is not None
            results["stream"].append(call.closed_at - hung_up)
            results["tokens_after"].append(call.tokens_after(hung_up))

            client = await RawClient.connect(running.port)
            body = json.dumps({"query": "hold"}).encode()
            await client.send("POST", "/api/v1/inference/chat", body)
            (*_, call) = await upstream.wait_for_calls(len(upstream.calls) + 1)
            hung_up = time.monotonic()
            await client.close()
            await call.closed.wait()
            assert call.closed_at is not None
            results["headers"].append(call.closed_at - hung_up)
    return results


async def shutdowns(trials: int, streams: int = 20) -> list[float]:
    exits: list[float] = []
    for _ in range(trials):
        upstream = FakeUpstream(behave)
        port = free_port()
        stderr: list[bytes] = []
        async with (
            upstream_running(upstream),
            server_process(port, upstream) as process,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(drain, process, stderr)
            clients = await open_streams(port, streams)
            exits.append(await sigterm(process))
            for client in clients:
                await client.close()
            tg.cancel_scope.cancel()
    return exits


async def main(trials: int) -> None:
    results = await hang_ups(trials)
    print(f"hang-up mid-stream → upstream closed:        {summary(results['stream'])}")
    print(f"hang-up before headers → upstream closed:    {summary(results['headers'])}")
    after = results["tokens_after"]
    print(
        f"upstream tokens after hang-up (10 ms/token): max {max(after):.0f}, "
        f"mean {statistics.mean(after):.2f}"
    )
    exits = await shutdowns(max(3, trials // 10))
    print(f"SIGTERM with 20 live streams → exit:         {summary(exits, 's', 1.0)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=50)
    anyio.run(main, parser.parse_args().trials)
