"""The application's lifespan: what it sets for the life of the server and undoes."""

from __future__ import annotations

import pytest
import sniffio

from conftest import asgi_client, settings_for
from ragline.server.app import _loop_named
from upstream import FakeUpstream

pytestmark = pytest.mark.anyio


async def test_the_loop_is_named_for_sniffio_while_the_application_runs() -> None:
    """anyio asks sniffio on every cancel scope: while ragline runs on asyncio the
    thread says so at once; afterwards the thread is as it was (another loop may run)."""
    assert sniffio.thread_local.name is None
    async with asgi_client(settings_for(FakeUpstream())) as http:
        assert sniffio.thread_local.name == "asyncio"
        assert (await http.get("/healthz")).status_code == 200
    assert sniffio.thread_local.name is None


@pytest.mark.both_backends
async def test_a_loop_that_names_itself_is_left_alone(anyio_backend: str) -> None:
    before = sniffio.thread_local.name  # trio names its thread itself; asyncio does not
    with _loop_named():
        assert sniffio.current_async_library() == anyio_backend
        assert sniffio.thread_local.name == (before or "asyncio")
    assert sniffio.thread_local.name == before
