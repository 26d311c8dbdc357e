"""schemathesis against a live ``ragline serve`` (the fake upstream, API keys on): every
operation in /openapi.json, a bounded number of generated requests each; no 5xx, and
every answer as the document says (status, content type, schema, headers)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-fuzz"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The benchmarks' fake upstream (its own process) and ragline serve before it."""
    work = tmp_path_factory.mktemp("fuzz")
    upstream = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "upstream.py"), "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert upstream.stdout is not None
    ready = upstream.stdout.readline().split()
    assert ready[:1] == ["ready"], ready
    port = _free_port()
    env = {
        **os.environ,
        "RAGLINE_LLM_PROVIDER": "openai",
        "RAGLINE_LLM_BASE_URL": f"http://127.0.0.1:{ready[1]}/v1",
        "RAGLINE_LLM_MODEL": "fake-model",
        "RAGLINE_RETRIEVAL": "false",
        "RAGLINE_API_KEYS": KEY,
        "RAGLINE_DATA_DIR": str(work / "data"),
        "RAGLINE_LLM_RETRIES": "0",
    }
    log = (work / "serve.log").open("wb")
    ragline = subprocess.Popen(
        [sys.executable, "-m", "ragline", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        yield url
    finally:
        for process in (ragline, upstream):
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        log.close()
        # A traceback in the server's log is a failure even when the answer was a 4xx.
        assert "Traceback" not in (work / "serve.log").read_text()


def test_every_operation_answers_as_documented_and_never_5xx(server: str) -> None:
    # schemathesis's own pytest integration does not run on pytest 9: its strategies are
    # driven with hypothesis directly, one operation after another.
    document = schemathesis.openapi.from_url(f"{server}/openapi.json")
    examples = int(os.environ.get("RAGLINE_FUZZ_EXAMPLES", "15"))
    failures: dict[str, str] = {}
    operations = 0
    for found in document.get_all_operations():
        operation = found.ok()
        operations += 1
        # Valid requests, then invalid ones (wrong types, missing fields, bad values).
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=examples,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                derandomize=True,
                database=None,
            )
            def fuzz(case: schemathesis.Case) -> None:
                case.call_and_validate(
                    headers={"authorization": f"Bearer {KEY}"}, checks=CHECKS, timeout=30
                )

            try:
                fuzz()
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE  # nothing invalid to send it
            except (Exception, BaseExceptionGroup) as exc:  # every operation's, not the first
                failures[f"{operation.label} ({mode.value})"] = _summary(exc)
    assert operations >= 20
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())


def _summary(exc: BaseException) -> str:
    """The lines of a schemathesis failure that say what and how to reproduce it."""
    keep = ("- ST", "Received", "Documented", "curl", "[", "Event", "is not")
    lines = [line.strip() for line in str(exc).splitlines()]
    found = "\n".join(line for line in lines if line.startswith(keep))[:3000]
    return found or f"{type(exc).__name__}: {exc}"[:500]
