"""The tools a user would pick instead of ragline, each installed in its own venv.

Every peer listens on 127.0.0.1 and forwards to the same OpenAI-compatible upstream
(``http://127.0.0.1:P/v1``, model ``fake-model``, any API key):

- ``naive``: FastAPI + the ``openai`` SDK, as typical user code (``bench/peers/naive_proxy.py``);
- ``litellm``: LiteLLM's proxy with its defaults (config ``bench/peers/litellm.yaml``);
- ``litellm-cancel``: the same with ``general_settings.cancel_on_disconnect: true``, LiteLLM's
  switch that cancels a non-streaming upstream call when the client hangs up
  (``bench/peers/litellm_cancel.yaml``); both share one venv;
- ``langserve``: LangServe + ``langchain-openai``'s ChatOpenAI at ``/chat``
  (``bench/peers/langserve_app.py``); its own protocol, not OpenAI's.

    python = install(PEERS["litellm"])
    argv, env = command(PEERS["litellm"], python, port=8101, upstream=url, workdir=tmp)

Stdlib only: the peers' own dependencies never enter ragline's venv.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

HERE = Path(__file__).resolve().parent / "peers"
API_KEY = "sk-fake"
MODEL = "fake-model"

# Variables that would make a child pick up ragline's venv instead of its own.
_SCRUBBED = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "__PYVENV_LAUNCHER__")


@dataclass(frozen=True)
class Peer:
    name: str
    requirements: tuple[str, ...]
    protocol: Literal["openai", "langserve"]
    ready_path: str
    # OpenAI peers: both are /v1/chat/completions ("stream": true or false in the body).
    # LangServe: POST {"input": [{"type": "human", "content": ...}]} to each (see `body`).
    invoke_path: str = "/v1/chat/completions"
    stream_path: str = "/v1/chat/completions"
    # How long a cold start may take before the launcher gives up (LiteLLM imports a lot).
    start_timeout: float = 60.0
    # Peers with the same venv name and requirements share one venv (litellm, litellm-cancel).
    venv: str = ""

    @property
    def key(self) -> str:
        """Hash of what is installed: a change of requirements means a new venv."""
        text = json.dumps([sys.version_info[:2], *self.requirements])
        return hashlib.sha256(text.encode()).hexdigest()[:12]


_LITELLM = (
    "litellm[proxy]==1.106.2",
    "openai==2.54.0",
    "fastapi==0.165.0",
    "starlette==1.10.0",
    "uvicorn==0.54.0",
    "uvloop==0.23.0",
    "httpx==0.28.1",
    "aiohttp==3.14.5",
)

PEERS: dict[str, Peer] = {
    "naive": Peer(
        name="naive",
        requirements=("fastapi==0.165.0", "openai==3.54.0", "uvicorn==0.54.0"),
        protocol="openai",
        ready_path="/health",
    ),
    "litellm": Peer(
        name="litellm",
        requirements=_LITELLM,
        protocol="openai",
        ready_path="/health/readiness",
        start_timeout=120.0,
    ),
    "langserve": Peer(
        name="langserve",
        requirements=(
            "langserve[server]==0.3.3",
            "langchain-core==1.7.2",
            "langchain-openai==1.7.3",
            "openai==3.54.0",
            "fastapi==0.165.0",
            "sse-starlette==1.8.2",
            "uvicorn==0.54.0",
        ),
        protocol="langserve",
        ready_path="/health",
        invoke_path="/chat/invoke",
        stream_path="/chat/stream",
    ),
}


# The same install, with LiteLLM's cancel_on_disconnect set in its config.
PEERS["litellm-cancel"] = replace(PEERS["litellm"], name="litellm-cancel", venv="litellm")


def body(peer: Peer, content: str, *, stream: bool) -> dict[str, object]:
    """The JSON request body that asks ``peer`` for a chat completion of one user message.

    LangServe wants LangChain messages (``"type": "human"``; an OpenAI-style ``"role"`` dict
    is a 500) or a bare string; whether it streams is chosen by the path, not the body.
    """
    if peer.protocol == "langserve":
        return {"input": [{"type": "human", "content": content}]}
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "stream": stream}


DEFAULT_CACHE = Path.home() / ".cache" / "ragline" / "bench"


def install(peer: Peer, cache: Path = DEFAULT_CACHE) -> Path:
    """The python of ``peer``'s own venv, created and filled once per set of requirements."""
    venv = cache / f"{peer.venv or peer.name}-{peer.key}"
    python = venv / "bin" / "python"
    marker = venv / ".installed"
    if marker.exists():
        return python
    if venv.exists():  # a half-done install: start over
        shutil.rmtree(venv)
    started = time.monotonic()
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [
            str(python),
            *("-m", "pip", "install", "-qq", "--disable-pip-version-check"),
            *peer.requirements,
        ],
        check=True,
        env={k: v for k, v in os.environ.items() if k not in _SCRUBBED},
    )
    marker.write_text("\n".join(peer.requirements) + "\n")
    print(f"peer {peer.name}: installed in {time.monotonic() - started:.0f}s into {venv}")
    return python


def command(
    peer: Peer, python: Path, *, port: int, upstream: str, workdir: Path
) -> tuple[list[str], dict[str, str]]:
    """Argv and environment that start ``peer`` on 127.0.0.1:``port`` against ``upstream``.

    ``upstream`` is the base URL with ``/v1``. Config files go into ``workdir``.
    """
    env = _environment()
    workdir.mkdir(parents=True, exist_ok=True)
    if peer.name == "naive":
        env |= {"NAIVE_UPSTREAM": upstream, "NAIVE_API_KEY": API_KEY}
        return _uvicorn(python, "naive_proxy:app", port), env
    if peer.name == "langserve":
        env |= {
            "LANGSERVE_UPSTREAM": upstream,
            "LANGSERVE_API_KEY": API_KEY,
            # No LangSmith tracing (it is off unless asked; make sure).
            "LANGSMITH_TRACING": "false",
            "LANGCHAIN_TRACING_V2": "false",
        }
        return _uvicorn(python, "langserve_app:app", port), env
    if peer.name in ("litellm", "litellm-cancel"):
        template = (HERE / f"{peer.name.replace('-', '_')}.yaml").read_text()
        config = workdir / f"{peer.name}.yaml"
        config.write_text(template.replace("{{UPSTREAM}}", upstream).replace("{{KEY}}", API_KEY))
        env |= LITELLM_OFFLINE
        litellm = str(python.parent / "litellm")
        argv = [litellm, "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
        return argv, env
    raise ValueError(f"unknown peer {peer.name!r}")


# LiteLLM fetches its model cost map from GitHub at import unless LITELLM_LOCAL_MODEL_COST_MAP
# makes it use the copy in the package (the `litellm` command is not among the entry points
# it treats as offline by itself). Hugging Face tokenizers are only fetched lazily, for models
# we never route to; HF_HUB_OFFLINE makes sure. Its telemetry flag is a no-op in this version.
# With these, strace shows no connection at start-up or per request other than the upstream's
# (it does GET /v1/models on the upstream at start-up).
LITELLM_OFFLINE: dict[str, str] = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "HF_HUB_OFFLINE": "1",
    "LITELLM_DONT_SHOW_FEEDBACK_BOX": "True",
}


def _uvicorn(python: Path, app: str, port: int) -> list[str]:
    return [
        *(str(python), "-m", "uvicorn", app, "--app-dir", str(HERE)),
        *("--host", "127.0.0.1", "--port", str(port)),
    ]


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
    # Never write __pycache__ into bench/peers; never send loopback traffic through a proxy
    # (LiteLLM's aiohttp transport honours HTTP(S)_PROXY).
    env |= {"PYTHONDONTWRITEBYTECODE": "1", "NO_PROXY": "127.0.0.1,localhost"}
    env["no_proxy"] = env["NO_PROXY"]
    return env
