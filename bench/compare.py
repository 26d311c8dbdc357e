"""ragline next to the tools a user would pick instead, in one run, against one fake
upstream (``bench/upstream.py``, its own process): disconnects, shutdown, per-token
overhead and thousands of held streams.

    .venv/bin/python bench/compare.py [--quick] [--out bench/results]

Each peer runs in its own virtual environment (``bench/peers.py`` installs them once).
``--quick`` is the smoke mode CI runs: ragline and the bare upstream only, few trials.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import socket
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import load
from client import Connection
from procs import cpu_seconds, rss_bytes

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
Launch = Callable[[int, str, Path], tuple[list[str], dict[str, str]]]


@dataclass(frozen=True)
class Target:
    name: str
    protocol: str = "openai"  # or "langserve"
    launch: Launch | None = None  # None: the upstream itself ("direct")
    ready_path: str = "/v1/models"

    def request(self, directive: str, *, stream: bool) -> tuple[str, dict[str, Any]]:
        message = {"role": "user", "content": directive}
        if self.protocol == "langserve":  # LangChain messages; the path says whether to stream
            human = {"type": "human", "content": directive}
            return ("/chat/stream" if stream else "/chat/invoke", {"input": [human]})
        if self.protocol == "responses":  # ragline's /v1/responses, nothing stored
            body = {"model": "fake-model", "input": directive, "stream": stream, "store": False}
            return "/v1/responses", body
        body = {"model": "fake-model", "messages": [message], "stream": stream}
        return "/v1/chat/completions", body


@dataclass
class Server:
    port: int
    pid: int
    process: asyncio.subprocess.Process | None = None


@dataclass
class Upstream:
    port: int
    pid: int
    http: httpx.AsyncClient = field(default_factory=lambda: httpx.AsyncClient(timeout=30))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def calls(self, **query: str) -> list[dict[str, Any]]:
        answer = await self.http.get(f"http://127.0.0.1:{self.port}/_calls", params=query)
        calls: list[dict[str, Any]] = answer.json()["calls"]
        return calls

    async def call(
        self, tag: str, *, until: Callable[[dict[str, Any]], bool], wait: float
    ) -> dict[str, Any] | None:
        """The call tagged ``tag`` once ``until`` holds (or the latest view after ``wait``)."""
        deadline = time.monotonic() + wait
        found = None
        while time.monotonic() < deadline:
            calls = await self.calls(tag=tag)
            found = calls[0] if calls else None
            if found is not None and until(found):
                return found
            await asyncio.sleep(0.02)
        return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ragline_launch(extra: dict[str, str] | None = None, workers: int = 1) -> Launch:
    def launch(port: int, upstream: str, workdir: Path) -> tuple[list[str], dict[str, str]]:
        env = {
            **os.environ,
            "RAGLINE_LLM_PROVIDER": "openai",
            "RAGLINE_LLM_BASE_URL": upstream,
            "RAGLINE_LLM_MODEL": "fake-model",
            "RAGLINE_RETRIEVAL": "false",
            "RAGLINE_LLM_MAX_TOKENS": "100000",
            "RAGLINE_LLM_MAX_CONNECTIONS": "16384",  # the default 32 would queue held streams
            "RAGLINE_LLM_CONNECT_TIMEOUT": os.environ.get("CT", "5"),
            # Opening 10,000 streams takes a minute or two here: the default 120 s deadline
            # would end the first ones while the last are still being opened.
            "RAGLINE_REQUEST_DEADLINE": "3600",
            "RAGLINE_LLM_TOTAL_TIMEOUT": "3600",
            "RAGLINE_DATA_DIR": str(workdir / "data"),
            **(extra or {}),
        }
        argv = [sys.executable, "-m", "ragline", "serve", "--port", str(port)]
        argv += ["--workers", str(workers)] if workers > 1 else []
        return argv, env

    return launch


def granian_launch(port: int, upstream: str, workdir: Path) -> tuple[list[str], dict[str, str]]:
    """ragline's app on Granian (Rust HTTP, one worker, uvloop) instead of uvicorn."""
    _, env = ragline_launch()(port, upstream, workdir)
    argv = [sys.executable, "-m", "granian", "--interface", "asgi", "--factory"]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--loop", "uvloop", "--no-ws"]
    return [*argv, "--log-level", "warning", "ragline.server:create_app"], env


def adopted_launch(port: int, upstream: str, workdir: Path) -> tuple[list[str], dict[str, str]]:
    """``bench/peers/naive_adopted.py`` in ragline's venv."""
    env = {**os.environ, "NAIVE_UPSTREAM": upstream, "NAIVE_API_KEY": "sk-fake"}
    argv = [sys.executable, "-m", "uvicorn", "naive_adopted:app", "--app-dir", str(HERE / "peers")]
    return [*argv, "--host", "127.0.0.1", "--port", str(port)], env


@asynccontextmanager
async def upstream_process() -> AsyncIterator[Upstream]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(HERE / "upstream.py"), stdout=asyncio.subprocess.PIPE
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 30)
    upstream = Upstream(int(line.split()[1]), process.pid)
    try:
        yield upstream
    finally:
        await upstream.http.aclose()
        process.terminate()
        await process.wait()


@asynccontextmanager
async def running(target: Target, upstream: Upstream, workdir: Path) -> AsyncIterator[Server]:
    """``target`` serving on a free port in front of ``upstream``."""
    if target.launch is None:
        yield Server(upstream.port, upstream.pid)
        return
    port = free_port()
    argv, env = target.launch(port, upstream.url, workdir)
    log = (workdir / f"{target.name}.log").open("ab")
    process = await asyncio.create_subprocess_exec(
        *argv, env=env, cwd=workdir, stdout=log, stderr=log, start_new_session=True
    )
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            deadline = time.monotonic() + 180
            while True:
                if process.returncode is not None:
                    raise RuntimeError(f"{target.name} exited at start; see {log.name}")
                with contextlib.suppress(httpx.HTTPError):
                    answer = await http.get(f"http://127.0.0.1:{port}{target.ready_path}")
                    if answer.status_code < 500:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{target.name} not ready after 180 s")
                await asyncio.sleep(0.2)
        yield Server(port, process.pid, process)
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
        log.close()


async def warm_up(target: Target, server: Server) -> None:
    """A first request or two: some peers import lazily on their first call."""
    for stream in (True, False):
        path, body = target.request("[bench tag=warm tokens=5]", stream=stream)
        await asyncio.wait_for((await Connection.request(server.port, path, body)).wait_end(), 60)


# -- 1. disconnects ----------------------------------------------------------------------
WINDOW = 6.0  # how long to watch the upstream after a hang-up


async def one_disconnect(
    target: Target, server: Server, upstream: Upstream, kind: str
) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:12]
    if kind == "before_headers":
        directive = f"[bench tag={tag} tokens=100 interval=0.01 ttft=3]"
    else:
        directive = f"[bench tag={tag} tokens=300 interval=0.01]"
    path, body = target.request(directive, stream=kind != "non_streaming")
    conn = await Connection.request(server.port, path, body)
    if kind == "mid_stream":
        await asyncio.wait_for(conn.wait_tokens(5), 30)
    else:
        # Wait until the upstream is working on it: received (headers held) or producing.
        await upstream.call(
            tag,
            until=lambda c: kind == "before_headers" or len(c["token_times"]) >= 5,
            wait=30,
        )
        if kind == "before_headers":
            await asyncio.sleep(0.5)
    hung_up = conn.hang_up()
    call = await upstream.call(
        tag, until=lambda c: c["closed_at"] is not None or c["finished"], wait=WINDOW
    )
    assert call is not None, f"{target.name}: the upstream never saw {kind}"
    closed = call["closed_at"]
    return {
        "close_ms": (closed - hung_up) * 1000 if closed is not None else None,
        "tokens_after": sum(1 for t in call["token_times"] if t > hung_up),
    }


async def disconnects(
    target: Target, server: Server, upstream: Upstream, trials: int
) -> dict[str, list[dict[str, Any]]]:
    results: dict[str, list[dict[str, Any]]] = {}
    for kind in ("mid_stream", "before_headers", "non_streaming"):
        results[kind] = [
            await one_disconnect(target, server, upstream, kind) for _ in range(trials)
        ]
    return results


# -- 2. shutdown -------------------------------------------------------------------------
FINAL = (b'"error"', b"[DONE]", b"event: end", b"event: error")
SHUTDOWN_TOKENS = 400  # 20 s at 20 tokens/s: a proxy that waits for its streams exits then


async def shutdown(
    target: Target, upstream: Upstream, workdir: Path, streams: int
) -> dict[str, Any]:
    async with running(target, upstream, workdir) as server:
        assert server.process is not None
        await warm_up(target, server)
        prefix = f"s{uuid.uuid4().hex[:8]}"
        conns = []
        for i in range(streams):
            path, body = target.request(
                f"[bench tag={prefix}-{i} tokens={SHUTDOWN_TOKENS} interval=0.05]", stream=True
            )
            conns.append(await Connection.request(server.port, path, body))
        await asyncio.wait_for(asyncio.gather(*(c.wait_tokens(3) for c in conns)), 60)
        seen = [len(c.exchange.body) for c in conns]
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(server.process.wait(), 60)
            exit_s: float | None = time.monotonic() - signalled
        except TimeoutError:
            exit_s = None  # still running a minute later: killed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(c.wait_end() for c in conns)), 2)
        outcome = {"ran to the end": 0, "final error event": 0, "cut off": 0, "left open": 0}
        for conn, before in zip(conns, seen, strict=True):
            tail = bytes(conn.exchange.body[before:])
            if not conn.exchange.ended:
                outcome["left open"] += 1
            elif conn.exchange.tokens >= SHUTDOWN_TOKENS:
                outcome["ran to the end"] += 1
            elif any(marker in tail for marker in FINAL):
                outcome["final error event"] += 1
            else:
                outcome["cut off"] += 1
            conn.hang_up()
        await asyncio.sleep(0.5)
        calls = await upstream.calls(prefix=prefix, brief="1", after=str(signalled))
        return {
            "exit_s": exit_s,
            "tokens_after": sum(c["tokens_after"] for c in calls),
            "clients": outcome,
        }


# -- 3. overhead -------------------------------------------------------------------------
async def overhead(target: Target, server: Server, tokens: int, runs: int) -> dict[str, Any]:
    results = []
    for _ in range(runs):
        tag = uuid.uuid4().hex[:12]
        path, body = target.request(f"[bench tag={tag} tokens={tokens} interval=0]", stream=True)
        cpu_before = cpu_seconds(server.pid)
        began = time.monotonic()
        conn = await Connection.request(server.port, path, body)
        await asyncio.wait_for(conn.wait_end(), 300)
        elapsed = time.monotonic() - began
        cpu = cpu_seconds(server.pid) - cpu_before
        got = conn.exchange.tokens
        results.append(
            {
                "tokens": got,
                "tokens_per_s": got / elapsed,
                "cpu_us_per_token": cpu * 1e6 / max(got, 1),
            }
        )
    return {"runs": results}


# -- 3b. per request -----------------------------------------------------------------------
def _ms(times: list[float], q: float) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000


async def per_request(target: Target, server: Server, quick: bool) -> dict[str, Any]:
    """20-token completions, whole and streamed: each request's time one after another on
    one keep-alive connection, then requests per second at 64 concurrent connections."""
    count, seconds = (50, 2.0) if quick else (1000, 10.0)
    result: dict[str, Any] = {}
    for kind, stream in (("whole", False), ("streamed", True)):
        path, body = target.request("[bench tag=req tokens=20]", stream=stream)
        await load.sequential(server.port, path, body, 20)  # warm
        times = await load.sequential(server.port, path, body, count)
        result[kind] = {"p50_ms": _ms(times, 0.5), "p99_ms": _ms(times, 0.99), "n": count}
        cpu, clients = cpu_seconds(server.pid), resource.getrusage(resource.RUSAGE_CHILDREN)
        rate = await asyncio.to_thread(
            load.throughput, server.port, path, body, connections=64, seconds=seconds
        )
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        used = after.ru_utime + after.ru_stime - clients.ru_utime - clients.ru_stime
        # Cores each side used: on 2 shared cores, whether the load generator starved it.
        rate["server_cores"] = (cpu_seconds(server.pid) - cpu) / rate["elapsed_s"]
        rate["client_cores"] = used / rate["elapsed_s"]
        result[f"{kind}_throughput"] = rate
    return result


# -- 4. concurrency ----------------------------------------------------------------------
async def concurrency(
    target: Target, upstream: Upstream, workdir: Path, count: int
) -> dict[str, Any]:
    # One token a second each, as a chat user reads; beyond 3,000 streams that is more
    # tokens a second than the Python fake upstream, the client and the proxy can move on
    # 2 shared cores, so the larger runs hold streams at one token every 5 s.
    interval = 1.0 if count <= 3000 else 5.0
    async with running(target, upstream, workdir) as server:
        prefix = f"c{uuid.uuid4().hex[:8]}"
        await warm_up(target, server)
        await asyncio.sleep(1.0)
        rss_before = rss_bytes(server.pid)
        conns: list[Connection] = []
        failures = 0
        for start in range(0, count, 100):
            batch = []
            for i in range(start, min(start + 100, count)):
                directive = f"[bench tag={prefix}-{i} tokens=3600 interval={interval}]"
                path, body = target.request(directive, stream=True)
                try:
                    batch.append(await Connection.request(server.port, path, body))
                except OSError:
                    failures += 1
            conns += batch
            await asyncio.sleep(0.05)
        established = await asyncio.gather(
            *(asyncio.wait_for(c.wait_tokens(1), 90) for c in conns), return_exceptions=True
        )
        failures += sum(1 for ok in established if ok is not True)
        await asyncio.sleep(3.0)
        rss_held = rss_bytes(server.pid)
        cpu_a, at_a = cpu_seconds(server.pid), time.monotonic()
        await asyncio.sleep(5.0)
        cpu_b, at_b = cpu_seconds(server.pid), time.monotonic()
        failures += sum(1 for c in conns if c.exchange.ended)
        hung_up = time.monotonic()
        for conn in conns:
            conn.hang_up()
        deadline = hung_up + 30
        calls: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            calls = [
                c for c in await upstream.calls(prefix=f"{prefix}-", brief="1", after=str(hung_up))
            ]
            if calls and all(c["closed_at"] is not None or c["finished"] for c in calls):
                break
            await asyncio.sleep(0.1)
        closes = sorted(c["closed_at"] - hung_up for c in calls if c["closed_at"] is not None)
        return {
            "streams": count,
            "token_interval_s": interval,
            "failures": failures,
            "rss_per_stream_kib": (rss_held - rss_before) / max(count - failures, 1) / 1024,
            "rss_held_mib": rss_held / 2**20,
            "cpu_percent": (cpu_b - cpu_a) / (at_b - at_a) * 100,
            "all_closed_s": closes[-1] if len(closes) == len(calls) and closes else None,
            "closed_p50_s": statistics.median(closes) if closes else None,
            "not_closed": len(calls) - len(closes),
            "tokens_after": sum(c["tokens_after"] for c in calls),
        }


# -- the run -------------------------------------------------------------------------------
SECTIONS = {"disconnect", "overhead", "requests", "shutdown", "concurrency"}


OURS = {
    "direct",
    "ragline",
    "ragline-2w",
    "ragline-base",
    "naive-ragline",
    "ragline-h11",
    "ragline-granian",
    "ragline-responses",
}


def targets(quick: bool, only: set[str], base: str = "") -> list[Target]:
    found = [
        Target("direct"),
        Target("ragline", launch=ragline_launch(), ready_path="/readyz"),
    ]
    if base:
        # The same ragline from another checkout (an issue's base commit), so that a
        # change is measured against what it changed in one run on one machine.
        source = str(Path(base).resolve() / "src")
        found.append(
            Target(
                "ragline-base",
                launch=ragline_launch({"PYTHONPATH": source}),
                ready_path="/readyz",
            )
        )
    if not quick:
        # Two server processes on one socket (`serve --workers 2`): a second core's worth.
        found.append(Target("ragline-2w", launch=ragline_launch(workers=2), ready_path="/readyz"))
        # The servers and loops measured against the default (httptools and uvloop).
        pure = {"RAGLINE_HTTP": "h11", "RAGLINE_LOOP": "asyncio"}
        found.append(Target("ragline-h11", launch=ragline_launch(pure), ready_path="/readyz"))
        found.append(Target("ragline-granian", launch=granian_launch, ready_path="/readyz"))
        # The same answers through /v1/responses.
        found.append(
            Target(
                "ragline-responses",
                protocol="responses",
                launch=ragline_launch(),
                ready_path="/readyz",
            )
        )
        # The naive proxy, unchanged, with ragline's middleware added (docs/ADOPT.md).
        found.append(Target("naive-ragline", launch=adopted_launch, ready_path="/health"))
    if quick or (only and only <= OURS):
        return found
    from peers import PEERS, command, install

    for name, peer in PEERS.items():
        if only and name not in only:
            continue
        python = install(peer)

        def launch(
            port: int, upstream: str, workdir: Path, peer: Any = peer, python: Path = python
        ) -> tuple[list[str], dict[str, str]]:
            return command(peer, python, port=port, upstream=upstream, workdir=workdir)

        found.append(
            Target(name, protocol=peer.protocol, launch=launch, ready_path=peer.ready_path)
        )
    return found


def raise_open_files() -> None:
    """10,000 held streams are 10,000 sockets here, in the upstream, and twice that in the
    proxy: lift this process's limit (and its children's) as far as it may go."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for wanted in (max(hard, 65_536), hard):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return


async def main(args: argparse.Namespace) -> None:
    raise_open_files()
    quick = args.quick
    trials, runs = (2, 1) if quick else (args.trials, 3)
    tokens = 2000 if quick else 20_000
    sizes = [100] if quick else [500, 2000, 10_000]
    if args.sizes:
        sizes = [int(n) for n in args.sizes.split(",")]
    streams = 5 if quick else 20
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    workdir = out / "work"
    workdir.mkdir(exist_ok=True)
    report: dict[str, Any] = {"quick": quick, "targets": {}}
    previous = out / "compare.json"
    if (args.only or args.sections) and previous.exists():  # a partial rerun keeps the rest
        report["targets"] = json.loads(previous.read_text())["targets"]
    only = set(filter(None, args.only.split(",")))
    chosen = [t for t in targets(quick, only, args.base) if not only or t.name in only]
    sections = set(filter(None, args.sections.split(","))) or SECTIONS
    async with upstream_process() as upstream:
        for target in chosen:
            print(f"== {target.name}", flush=True)
            result: dict[str, Any] = {}
            async with running(target, upstream, workdir) as server:
                await warm_up(target, server)
                # "direct" has no proxy to leave
                if target.launch is not None and "disconnect" in sections:
                    result["disconnect"] = await disconnects(target, server, upstream, trials)
                    print("   disconnects done", flush=True)
                if "overhead" in sections:
                    result["overhead"] = await overhead(target, server, tokens, runs)
                    print("   overhead done", flush=True)
                if "requests" in sections:
                    result["requests"] = await per_request(target, server, quick)
                    print("   per request done", flush=True)
            if target.launch is not None and "shutdown" in sections:
                result["shutdown"] = await shutdown(target, upstream, workdir, streams)
                print("   shutdown done", flush=True)
            if target.launch is not None and "concurrency" in sections:
                result["concurrency"] = [
                    await concurrency(target, upstream, workdir, n) for n in sizes
                ]
                print("   concurrency done", flush=True)
            report["targets"][target.name] = {**report["targets"].get(target.name, {}), **result}
            (out / "compare.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {out / 'compare.json'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--only", default="")
    parser.add_argument(
        "--sections", default="", help=f"a comma list of {', '.join(sorted(SECTIONS))} (all)"
    )
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--sizes", default="", help="held streams, a comma list (500,2000,10000)")
    parser.add_argument(
        "--base", default="", help="a checkout of another commit, measured as ragline-base"
    )
    asyncio.run(main(parser.parse_args()))
