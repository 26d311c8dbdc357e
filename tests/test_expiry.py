"""The expiry loop: every sweep each round; a store that is down skips a round."""

from __future__ import annotations

import logging

import pytest

from conftest import LogCapture
from ragline import Lifetime
from ragline.errors import UpstreamError
from ragline.expiry import Expiry

pytestmark = pytest.mark.anyio


async def test_each_sweep_runs_and_one_that_fails_is_skipped_not_fatal(logs: LogCapture) -> None:
    seen: list[tuple[str, float]] = []

    async def responses(now: float, lifetime: Lifetime) -> int:
        seen.append(("responses", now))
        return 2

    async def down(now: float, lifetime: Lifetime) -> int:
        raise UpstreamError("PostgreSQL at db is unavailable")

    async def feedback(now: float, lifetime: Lifetime) -> int:
        seen.append(("feedback", now))
        return 0

    expiry = Expiry(60.0, [("responses", responses), ("down", down), ("feedback", feedback)])
    with Lifetime.root() as root:
        await expiry.once(root)
    assert [name for name, _ in seen] == ["responses", "feedback"]
    said = [(r.levelno, r.getMessage()) for r in logs.records if r.name == "ragline.expiry"]
    assert said == [
        (logging.INFO, "responses expired"),
        (logging.WARNING, "down expiry skipped: PostgreSQL at db is unavailable"),
    ]
