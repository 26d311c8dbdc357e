"""``ragline ingest`` as a user runs it: progress, Ctrl-C at a batch boundary, resume,
and handing the job to the server that owns the data directory."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from conftest import owning_server
from test_serve import free_port

pytestmark = pytest.mark.anyio

WORDS = ["heron", "river", "reed", "fish", "water", "stone", "light", "wind", "marsh", "dawn"]


def write_corpus(folder: Path, count: int, words: int = 300) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(count):
        body = " ".join(WORDS[(n * 7 + i * 3) % len(WORDS)] + str(i % 10) for i in range(words))
        (folder / f"doc{n}.txt").write_text(body)


def environment(data: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "RAGLINE_DATA_DIR": str(data),
        "RAGLINE_INGEST_BATCH_SIZE": "2",
        "RAGLINE_CHUNK_TOKENS": "24",
        "RAGLINE_CHUNK_OVERLAP": "4",
        **extra,
    }


async def test_ctrl_c_stops_at_a_batch_boundary_and_a_rerun_resumes(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    write_corpus(corpus, 20)
    env = environment(tmp_path / "data")
    command = [sys.executable, "-m", "ragline", "ingest", str(corpus)]
    output = bytearray()
    process = await anyio.open_process(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        assert process.stderr is not None
        with anyio.fail_after(120):
            async for chunk in process.stderr:
                output.extend(chunk)
                if re.search(rb"docs ([2-9]|1\d)/20", output):  # a few documents in
                    break
        process.send_signal(signal.SIGINT)
        with anyio.fail_after(60):
            async for chunk in process.stderr:
                output.extend(chunk)
            await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
    text = output.decode()
    assert process.returncode == 130, text[-500:]
    assert "stopping after the current batch" in text
    assert "Run the same command again to resume" in text
    rerun = await anyio.run_process(command, env=env, check=False)
    assert rerun.returncode == 0, rerun.stderr.decode()[-500:]
    summary = rerun.stderr.decode()
    assert "done:" in summary
    assert "skipped 0" not in summary  # documents finished before the stop were skipped


async def test_the_job_goes_to_the_server_that_owns_the_data_directory(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    write_corpus(corpus, 3, words=60)
    data = tmp_path / "data"
    port = free_port()
    env = environment(
        data,
        RAGLINE_LLM_PROVIDER="openai",
        RAGLINE_LLM_BASE_URL="http://127.0.0.1:9/v1",
        RAGLINE_INGEST_ROOTS=str(tmp_path),
    )
    async with owning_server(env, port):
        handed = await anyio.run_process(
            [sys.executable, "-m", "ragline", "ingest", str(corpus)], env=env, check=False
        )
        outside = tmp_path.parent / f"{tmp_path.name}-outside"
        write_corpus(outside, 1)
        refused = await anyio.run_process(
            [sys.executable, "-m", "ragline", "ingest", str(outside)], env=env, check=False
        )
    assert handed.returncode == 0, handed.stderr.decode()[-800:]
    assert "handed to the server" in handed.stderr.decode()
    assert "docs 3/3" in handed.stderr.decode()
    assert refused.returncode == 1
    assert "outside the ingest roots" in refused.stderr.decode()


@pytest.mark.parametrize("pid", ["dead", "alive"])
async def test_a_stale_server_marker_is_ignored(tmp_path: Path, pid: str) -> None:
    """A marker left behind: its pid gone, or reused by a process that is not ragline
    (this test's own pid, with a URL nothing answers on)."""
    corpus = tmp_path / "corpus"
    write_corpus(corpus, 2, words=40)
    data = tmp_path / "data"
    data.mkdir()
    gone = 2**22 + 12345  # above any pid this machine hands out
    owner = os.getpid() if pid == "alive" else gone
    (data / "server.json").write_text(json.dumps({"url": "http://127.0.0.1:9", "pid": owner}))
    done = await anyio.run_process(
        [sys.executable, "-m", "ragline", "ingest", str(corpus)],
        env=environment(data),
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert b"cannot reach" not in done.stderr
