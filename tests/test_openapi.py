"""/openapi.json: valid OpenAPI 3.1, every route in it, the README's examples valid."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from openapi_spec_validator import validate
from starlette.applications import Starlette
from starlette.routing import Route

from conftest import settings_for
from ragline.server import create_app
from upstream import FakeUpstream

pytestmark = pytest.mark.anyio

README = (Path(__file__).parent.parent / "README.md").read_text()


@asynccontextmanager
async def app_and_document(**values: Any) -> AsyncIterator[tuple[Starlette, dict[str, Any]]]:
    app = create_app(settings_for(FakeUpstream(), **values))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ragline") as http:
            answer = await http.get("/openapi.json")  # public, also with keys on
            assert answer.status_code == 200
            yield app, answer.json()


async def test_the_document_is_valid_openapi_3_1() -> None:
    async with app_and_document(api_keys=["k1"]) as (_, document):
        validate(document)
        assert document["openapi"] == "3.1.0"


async def test_every_registered_route_and_method_is_in_it() -> None:
    async with app_and_document(bot_auth="off") as (app, document):
        routes = [r for r in app.routes if isinstance(r, Route)]
        assert routes
        for route in routes:
            for method in (route.methods or set()) - {"HEAD"}:
                assert method.lower() in document["paths"].get(route.path, {}), (
                    f"{method} {route.path} is not in /openapi.json"
                )


async def test_errors_streams_and_retry_after_are_described() -> None:
    async with app_and_document() as (_, document):
        chat = document["paths"]["/api/v1/inference/chat"]["post"]
        assert {"401", "422", "429", "503", "504"} <= set(chat["responses"])
        assert "Retry-After" in chat["responses"]["429"]["headers"]
        stream = document["paths"]["/api/v1/inference/stream"]["get"]
        assert "text/event-stream" in stream["responses"]["200"]["content"]
        assert "done" in stream["description"]
        assert "error" in stream["description"]
        events = document["paths"]["/api/v1/runs/{run_id}/events"]["get"]
        assert "tool_call" in events["description"]


async def test_the_readme_examples_are_valid_against_it() -> None:
    async with app_and_document() as (_, document):
        # The curl example: its path and query parameter are declared.
        found = re.search(r"curl -N '[^']*?(/api/v1/[a-z/]+)\?(\w+)=", README)
        assert found is not None
        path, parameter = found.groups()
        declared = [p["name"] for p in document["paths"][path]["get"]["parameters"]]
        assert parameter in declared
        # The SDK example's request, as the SDK sends it.
        sdk = {
            "model": "smollm2-135m-instruct",
            "messages": [{"role": "user", "content": "How do I stop an ingestion job?"}],
        }
        refs = {"$ref": "#/components/schemas/CompletionRequest", **document}
        jsonschema.validate(sdk, refs)
        # The routes table's chat body.
        jsonschema.validate(
            {"query": "What is ragline?", "top_k": 4},
            {"$ref": "#/components/schemas/ConversationChat", **document},
        )
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(
                {"top_k": 4}, {"$ref": "#/components/schemas/ConversationChat", **document}
            )
        # Every route the README's table names is in the document.
        for method, route in re.findall(r"^\| `(GET|POST|DELETE) (/[^` ?]*)", README, re.M):
            assert method.lower() in document["paths"].get(route, {}), f"{method} {route}"
