"""Where a plain request's time goes in ragline: py-spy on a real ``ragline serve`` while
one keep-alive connection sends 20-token completions one after another (as the per-request
figures of ``bench/compare.py`` are measured), summarised as the share of the event loop
thread's samples spent in each layer (inclusive) and in each function (its own).

    .venv/bin/python bench/flame.py [--seconds 12] [--out bench/results]

Writes ``profile.json`` and ``profile.md``. py-spy samples 500 times a second and pauses
the process for each sample: absolute times are inflated, shares are what it reports.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import compare
import load

# The layers of the path, outermost first: what each one's inclusive share means.
LAYERS = [
    ("RequestResponseCycle.run_asgi", "uvicorn: the request's ASGI call"),
    ("Boundary.__call__", "ragline's boundary (lifetime, watch task, metrics, access log)"),
    ("Boundary._run_app", "the app under the boundary's task group"),
    ("Router.__call__", "Starlette's routing"),
    ("chat_completions", "the route: validation, the answer's JSON"),
    ("ChatPipeline.run", "the pipeline: compose, generate"),
    ("OpenAIGenerator.generate", "the upstream call, retries, deadlines"),
    ("OpenAIGenerator._stream", "the upstream stream: parse, guard"),
    ("Pool.post", "the upstream connection: request written, headers read"),
    ("RequestResponseCycle.send", "uvicorn writing the answer to the client"),
    ("OpenAIGenerator._events", "the upstream's stream events decoded"),
    ("RepetitionGuard.feed", "the degeneration guard"),
    ("Boundary._account", "metrics and the access log line"),
]
IDLE = ("Condition.wait", "WorkerThread.run", "Thread._bootstrap")


def frame_name(frame: str) -> str:
    match = re.match(r"(.*?) \((.*?)(?::\d+)?\)$", frame)
    if not match:
        return frame
    path = re.sub(r".*(site-packages|src|python3\.\d+)/", "", match.group(2))
    return f"{match.group(1)} ({path})"


def summarise(raw: Path) -> dict[str, Any]:
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        if not line.strip():
            continue
        stack, count = line.rsplit(" ", 1)
        if any(idle in stack for idle in IDLE):
            continue  # the thread bridge's idle workers: not the event loop
        samples = int(count)
        total += samples
        names = [frame_name(f) for f in stack.split(";")]
        for name in set(names):
            inclusive[name] += samples
        own[names[-1]] += samples
    share = {name: 100 * n / total for name, n in inclusive.items()} if total else {}
    layers = []
    for prefix, meaning in LAYERS:
        found = [v for k, v in share.items() if k.startswith(prefix + " ")]
        layers.append({"layer": prefix, "meaning": meaning, "percent": max(found, default=0)})
    top = [{"function": k, "percent": 100 * v / total} for k, v in own.most_common(15)]
    return {"samples": total, "layers": layers, "own": top}


async def run(seconds: float, out: Path) -> dict[str, Any]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    raw = out / "profile.raw"
    async with compare.upstream_process() as upstream:
        target = compare.Target("ragline", launch=compare.ragline_launch(), ready_path="/readyz")
        workdir = out / "work"
        workdir.mkdir(parents=True, exist_ok=True)
        async with compare.running(target, upstream, workdir) as server:
            path, body = target.request("[bench tag=req tokens=20]", stream=False)
            await load.sequential(server.port, path, body, 200)  # warm
            argv = [spy, "record", "-p", str(server.pid), "-r", "500", "-f", "raw"]
            argv += ["-o", str(raw), "-d", str(int(seconds))]
            sampler = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            await asyncio.sleep(1.0)  # py-spy attaches
            count = 0
            while sampler.poll() is None:
                await load.sequential(server.port, path, body, 200)
                count += 200
            if sampler.returncode != 0 or not raw.exists():
                raise SystemExit(f"py-spy failed (exit {sampler.returncode}): run as root?")
    result = summarise(raw)
    result["requests"] = count
    return result


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"py-spy on `ragline serve`, whole 20-token completions one after another "
        f"({result['requests']:,} requests, {result['samples']:,} samples of the event "
        "loop's thread; `bench/flame.py`). Inclusive share of each layer, outermost first:",
        "",
        "| layer | what it holds | share |",
        "|---|---|---|",
    ]
    for layer in result["layers"]:
        lines.append(f"| `{layer['layer']}` | {layer['meaning']} | {layer['percent']:.1f}% |")
    lines += [
        "",
        "The functions with the most samples of their own (`Runner.run`'s own share is "
        "uvloop's loop in C: waiting in epoll and its socket callbacks, which py-spy does "
        "not tell apart; the two `send`s are socket writes):",
        "",
    ]
    lines += ["| function | own share |", "|---|---|"]
    for entry in result["own"]:
        lines.append(f"| `{entry['function']}` | {entry['percent']:.1f}% |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    result = asyncio.run(run(args.seconds, args.out))
    (args.out / "profile.json").write_text(json.dumps(result, indent=1))
    (args.out / "profile.md").write_text(markdown(result) + "\n")
    print(markdown(result))


if __name__ == "__main__":
    main()
