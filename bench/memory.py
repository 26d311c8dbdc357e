"""Where a held stream's memory goes: tracemalloc inside a real ragline server.

Starts the fake upstream in a process of its own, ragline (uvicorn, the OpenAI-compatible
route, retrieval off) in this process with tracemalloc on, and a client process that opens
``--streams`` streamed requests, each held open by a slow upstream. The Python heap grown
while they are held, divided by their number, is grouped by the package that allocated it.
RSS is measured by ``bench/compare.py`` without tracemalloc, whose own bookkeeping would
inflate it; what RSS holds beyond the heap is the allocator's slack.

    python bench/memory.py --streams 500 [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import tracemalloc
from collections import Counter
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import uvicorn
from compare import free_port, upstream_process

from ragline import Settings
from ragline.server import create_app

HERE = Path(__file__).resolve().parent

CLIENT = """
import asyncio, json, sys
port, count = int(sys.argv[1]), int(sys.argv[2])
async def one(i):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    body = json.dumps({"model": "fake-model", "stream": True, "messages": [
        {"role": "user", "content": f"[bench tag=m{i} tokens=3600 interval=1.0]"}]}).encode()
    w.write((f"POST /v1/chat/completions HTTP/1.1\\r\\nhost: x\\r\\ncontent-type: "
             f"application/json\\r\\ncontent-length: {len(body)}\\r\\n\\r\\n").encode() + body)
    await r.readuntil(b"data:")
    return r, w
async def main():
    held = []
    for start in range(0, count, 50):
        held += await asyncio.gather(*(one(i) for i in range(start, min(start + 50, count))))
    print("held", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
asyncio.run(main())
"""


OURS = {"ragline", "starlette", "uvicorn", "aiohttp", "anyio", "h11", "opentelemetry"}


def package(filename: str) -> str:
    """The package a source file belongs to (``ragline``, ``aiohttp``, ``asyncio``, …)."""
    found = re.search(r"site-packages/([A-Za-z0-9_]+)", filename) or re.search(
        r"/(ragline)/", filename
    )
    if found:
        return found.group(1)
    found = re.search(r"python3\.\d+/([A-Za-z0-9_]+)", filename)
    return found.group(1) if found else Path(filename).name


async def measure(streams: int) -> dict[str, Any]:
    async with upstream_process() as upstream:
        with TemporaryDirectory() as data:
            settings = Settings(
                llm_provider="openai",
                llm_base_url=upstream.url,
                llm_model="fake-model",
                retrieval=False,
                llm_max_tokens=100_000,
                llm_max_connections=4096,
                data_dir=data,
                log_level="warning",
            )
            port = free_port()
            config = uvicorn.Config(
                create_app(settings), host="127.0.0.1", port=port, log_level="warning"
            )
            server = uvicorn.Server(config)
            serving = asyncio.ensure_future(server.serve())
            while not server.started:
                await asyncio.sleep(0.05)
            # One stream first, so that pools, caches and lazy imports are not counted.
            await hold(port, 1, lambda: asyncio.sleep(0))
            tracemalloc.start(8)
            before = tracemalloc.take_snapshot()
            held: dict[str, Any] = {}

            async def while_held() -> None:
                await asyncio.sleep(2.0)
                held["snapshot"] = tracemalloc.take_snapshot()

            await hold(port, streams, while_held)
            tracemalloc.stop()
            server.should_exit = True
            await serving
    diff = held["snapshot"].compare_to(before, "traceback")
    by_package: Counter[str] = Counter()
    by_line: Counter[str] = Counter()
    for stat in diff:
        if stat.size_diff <= 0:
            continue
        # The innermost frame outside the standard library says who asked for it.
        frames = list(reversed(stat.traceback))  # innermost first
        owner = next((f for f in frames if package(f.filename) in OURS), frames[0])
        by_package[package(owner.filename)] += stat.size_diff
        frame = owner
        by_line[f"{package(frame.filename)}:{Path(frame.filename).name}:{frame.lineno}"] += (
            stat.size_diff
        )
    total = sum(by_package.values())
    return {
        "streams": streams,
        "heap_per_stream_kib": total / streams / 1024,
        "by_package_kib": {k: v / streams / 1024 for k, v in by_package.most_common(12)},
        "by_line_kib": {k: v / streams / 1024 for k, v in by_line.most_common(25)},
    }


async def hold(port: int, count: int, while_held: Any) -> None:
    client = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CLIENT,
        str(port),
        str(count),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert client.stdout is not None
    assert client.stdin is not None
    line = await client.stdout.readline()
    if line.strip() != b"held":
        raise RuntimeError("the client could not hold its streams")
    await while_held()
    client.stdin.write(b"\n")
    await client.stdin.drain()
    await client.wait()
    await asyncio.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    result = asyncio.run(measure(args.streams))
    print(f"{args.streams} held streams")
    print(f"  Python heap per stream: {result['heap_per_stream_kib']:.1f} KiB")
    for name, kib in result["by_package_kib"].items():
        print(f"    {name:24s} {kib:6.2f} KiB")
    print("  by line:")
    for name, kib in result["by_line_kib"].items():
        print(f"    {name:50s} {kib:6.2f} KiB")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
