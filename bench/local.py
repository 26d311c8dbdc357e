"""The embedded defaults on this machine: embedding throughput (fp32 vs bf16 autocast),
the local model's first token, decode rate, and how fast a cancellation stops it.

    .venv/bin/python bench/local.py [--out bench/results]   # also writes local.md there
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import anyio

from ragline import Cause, Generation, Lifetime, Message, Prompt
from ragline.providers.llamacpp import LlamaCppGenerator
from ragline.providers.minilm import MiniLMEmbedder
from ragline.threads import ThreadBridge

ROWS: list[tuple[str, str]] = []  # (what, result) for the report's table

SENTENCE = "The heron waits in the shallow water of the river for a fish to pass by. "


async def embeddings(bridge: ThreadBridge) -> None:
    embedder = MiniLMEmbedder(bridge, batch_size=64)
    with Lifetime.root() as root:
        started = time.perf_counter()
        await embedder.open(root)
        print(f"MiniLM load: {time.perf_counter() - started:.1f} s")
        ROWS.append(("all-MiniLM-L6-v2 load", f"{time.perf_counter() - started:.1f} s"))
        chunks = [f"{i} " + SENTENCE * 16 for i in range(128)]  # about 256 tokens each
        results = {}
        for bf16 in (False, True):
            embedder.bf16 = bf16
            await embedder.embed(chunks[:8], root)  # warm up
            started = time.perf_counter()
            results[bf16] = await embedder.embed(chunks, root)
            rate = len(chunks) / (time.perf_counter() - started)
            print(
                f"MiniLM {'bf16' if bf16 else 'fp32'}: {rate:.1f} chunks/s (256 tokens, batch 64)"
            )
            kind = "bf16 autocast" if bf16 else "fp32"
            ROWS.append((f"embeddings, 256-token chunks, batch 64, {kind}", f"{rate:.1f} chunks/s"))
        cosines = [
            sum(a * b for a, b in zip(x, y, strict=True))
            for x, y in zip(results[False], results[True], strict=True)
        ]
        print(f"bf16 vs fp32 cosine: min {min(cosines):.5f}, mean {statistics.mean(cosines):.5f}")
        ROWS.append(("bf16 vs fp32 cosine, minimum", f"{min(cosines):.5f}"))


async def generator(bridge: ThreadBridge) -> None:
    gen = LlamaCppGenerator(bridge, max_prompt_tokens=3000, max_tokens=128)
    question = (
        "Context:\n[1] (heron.md)\n" + SENTENCE * 20 + "\n\nQuestion: Where does the heron wait?"
    )
    prompt = Prompt(
        (Message(role="system", content="Answer briefly."), Message(role="user", content=question)),
        max_tokens=128,
    )
    with Lifetime.root() as root:
        await gen.open(root)
        firsts, rates = [], []
        for _ in range(5):
            gen._llm.reset()  # no prefix cache: measure a cold prompt
            started = time.perf_counter()
            first: list[float] = []

            async def on_delta(text: str, first: list[float] = first) -> None:
                if not first:
                    first.append(time.perf_counter())

            out = await gen.generate(prompt, root, Generation(), on_delta)
            ended = time.perf_counter()
            firsts.append(first[0] - started)
            rates.append((out.completion_tokens - 1) / max(ended - first[0], 1e-9))
        print(
            f"local model, {out.prompt_tokens}-token prompt: first token p50 "
            f"{statistics.median(firsts):.2f} s, decode {statistics.median(rates):.0f} tokens/s"
        )
        ROWS.append(
            (
                f"SmolLM2-135M on llama.cpp: first token, {out.prompt_tokens}-token prompt",
                f"median {statistics.median(firsts):.2f} s "
                f"({min(firsts):.2f} to {max(firsts):.2f}, n={len(firsts)})",
            )
        )
        ROWS.append(
            (
                "decode rate",
                f"median {statistics.median(rates):.0f} tokens/s "
                f"({min(rates):.0f} to {max(rates):.0f})",
            )
        )

    # How fast a cancellation stops decoding and prefill (to the thread's own stop).
    for phase, text, wait_for in (
        ("decode", "Write a very long story about a heron.", 5),
        ("prefill", "Summarise: " + "the heron waits by the river " * 330, 0),
    ):
        stops = []
        for _ in range(3):
            gen._llm.reset()
            root = Lifetime.root()
            generation = Generation()
            story = Prompt((Message(role="user", content=text),), max_tokens=2000)

            async def run(
                root: Lifetime = root, g: Generation = generation, p: Prompt = story
            ) -> None:
                with root:
                    await gen.generate(p, root, g)

            async with anyio.create_task_group() as tg:
                tg.start_soon(run)
                await anyio.to_thread.run_sync(gen.busy.wait)
                while len(generation.parts) < wait_for:
                    await anyio.sleep(0.005)
                if phase == "prefill":
                    await anyio.sleep(0.5)
                cancelled = time.perf_counter()
                root.cancel(Cause.EXPLICIT)
            await anyio.to_thread.run_sync(_wait_idle, gen)
            stops.append(time.perf_counter() - cancelled)
            counters = gen.history[-1]
        print(
            f"cancel during {phase}: model thread stopped in p50 "
            f"{statistics.median(stops) * 1000:.0f} ms (max {max(stops) * 1000:.0f} ms); "
            f"decoded after stop {counters.decoded_after_stop}, "
            f"prefill aborted {counters.prefill_aborted}"
        )
        ROWS.append(
            (
                f"stop during {phase}: cancel → the model thread stopped",
                f"median {statistics.median(stops) * 1000:.0f} ms "
                f"({min(stops) * 1000:.0f} to {max(stops) * 1000:.0f} ms); "
                f"tokens decoded after the stop: {counters.decoded_after_stop}",
            )
        )


def _wait_idle(gen: LlamaCppGenerator) -> None:
    while gen.busy.is_set():
        time.sleep(0.001)


async def main(out: Path) -> None:
    bridge = ThreadBridge()
    await embeddings(bridge)
    await generator(bridge)
    lines = ["| what | result |", "|---|---|", *(f"| {a} | {b} |" for a, b in ROWS)]
    out.mkdir(parents=True, exist_ok=True)
    (out / "local.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    anyio.run(main, parser.parse_args().out)
