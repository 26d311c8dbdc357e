"""ragline's own routes in process: answers, bad input, auth, health and metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import asgi_client, settings_for, upstream_running
from ragline import Settings
from upstream import Behavior, FakeUpstream

pytestmark = pytest.mark.anyio


async def test_chat_and_stream_answer_with_usage() -> None:
    upstream = FakeUpstream(lambda body: Behavior(tokens=3))
    async with upstream_running(upstream), asgi_client(settings_for(upstream)) as http:
        response = await http.post(
            "/api/v1/inference/chat", json={"query": "hi", "system_instructions": "be brief"}
        )
        assert response.status_code == 200
        body = response.json()
        assert body["text"] == "t0 t1 t2 "
        assert body["sources"] == []
        assert body["conversation_id"].startswith("conv_")
        assert body["usage"] == {
            "prompt_tokens": 11,
            "completion_tokens": 3,
            "total_tokens": 14,
            "finish_reason": "stop",
            "cause": None,
            "estimated": False,
        }
        assert response.headers["x-request-id"]

        streamed = await http.get("/api/v1/inference/stream", params={"query": "hi", "top_k": 2})
        assert streamed.headers["content-type"].startswith("text/event-stream")
        events = [e for e in streamed.text.split("\n\n") if e]
        opening, *deltas, last = events
        assert opening.startswith("event: conversation\ndata: ")
        # Tokens that arrive together go out together: 1 to 3 delta events, in order.
        assert 1 <= len(deltas) <= 3
        text = "".join(json.loads(e.removeprefix("data: "))["delta"] for e in deltas)
        assert text == "t0 t1 t2 "
        assert last.startswith("event: done\ndata: ")
        done = json.loads(last.split("data: ", 1)[1])
        assert done["finish_reason"] == "stop"
        assert done["usage"]["completion_tokens"] == 3
    assert upstream.calls[0].body["messages"][0] == {"role": "system", "content": "be brief"}


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("POST", "/api/v1/inference/chat", b"{not json", 400, "malformed_json"),
        ("POST", "/api/v1/inference/chat", b"", 400, "malformed_json"),
        ("POST", "/api/v1/inference/chat", b"[1, 2]", 422, "invalid_request"),
        ("POST", "/api/v1/inference/chat", b'{"query": 3}', 422, "invalid_request"),
        ("POST", "/api/v1/inference/chat", b'{"query": "   "}', 422, "invalid_request"),
        ("POST", "/api/v1/inference/chat", b'{"query": "q", "top_k": 0}', 422, "invalid_request"),
        ("POST", "/api/v1/inference/chat", b'{"query": "q", "top_k": 51}', 422, "invalid_request"),
        ("POST", "/api/v1/inference/chat", b'{"query": "q", "top_k": "x"}', 422, "invalid_request"),
        ("POST", "/api/v1/inference/chat", b'{"query": "q", "extra": 1}', 422, "invalid_request"),
        (
            "POST",
            "/api/v1/inference/chat",
            b'{"query": "' + b"x" * 5000 + b'"}',
            413,
            "body_too_large",
        ),
        ("GET", "/api/v1/inference/stream", b"", 422, "invalid_request"),
        ("GET", "/api/v1/inference/stream?query=q&top_k=99", b"", 422, "invalid_request"),
        (
            "POST",
            "/v1/chat/completions",
            b'{"model": "other", "messages": [{"role": "user", "content": "q"}]}',
            404,
            "model_not_found",
        ),
        (
            "POST",
            "/v1/chat/completions",
            b'{"model": "fake-model", "messages": []}',
            422,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/chat/completions",
            b'{"model": "fake-model", "messages": [{"role": "assistant", "content": "q"}]}',
            422,
            "invalid_request",
        ),
        ("GET", "/nowhere", b"", 404, "not_found"),
        ("GET", "/api/v1/inference/chat", b"", 405, "method_not_allowed"),
    ],
)
async def test_bad_input_gets_a_clear_json_error_and_never_reaches_the_model(
    method: str, path: str, body: bytes, status: int, code: str
) -> None:
    upstream = FakeUpstream()
    async with (
        upstream_running(upstream),
        asgi_client(settings_for(upstream, max_body_bytes=4096)) as http,
    ):
        response = await http.request(
            method, path, content=body, headers={"content-type": "application/json"}
        )
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    assert "Traceback" not in response.text
    assert upstream.calls == []


async def test_api_keys_protect_everything_but_health() -> None:
    upstream = FakeUpstream(lambda body: Behavior(tokens=1))
    async with (
        upstream_running(upstream),
        asgi_client(settings_for(upstream, api_keys="k1, k2")) as http,
    ):
        assert (await http.get("/healthz")).status_code == 200
        assert (await http.get("/readyz")).status_code == 200
        denied = await http.post("/api/v1/inference/chat", json={"query": "q"})
        assert denied.status_code == 401
        assert denied.json()["error"]["code"] == "unauthorized"
        assert denied.headers["www-authenticate"] == "Bearer"
        assert (await http.get("/metrics")).status_code == 401
        wrong = await http.get("/v1/models", headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401
        ok = await http.post(
            "/api/v1/inference/chat", json={"query": "q"}, headers={"authorization": "Bearer k2"}
        )
        assert ok.status_code == 200, ok.text
        metrics = await http.get("/metrics", headers={"authorization": "Bearer k1"})
    assert 'ragline_requests_total{outcome="ok",route="/api/v1/inference/chat"} 1.0' in metrics.text
    assert 'ragline_requests_total{outcome="4xx",route="/api/v1/inference/chat"} 1.0' in (
        metrics.text
    )
    assert len(upstream.calls) == 1


async def test_upstream_unreachable_is_a_502() -> None:
    settings = Settings(
        llm_provider="openai", llm_base_url="http://127.0.0.1:9/v1", llm_model="m", retrieval=False
    )
    async with asgi_client(settings) as http:
        response = await http.post("/api/v1/inference/chat", json={"query": "q"})
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_error"


def test_secrets_never_appear_in_settings_repr() -> None:
    settings = Settings(api_keys="sekrit-key", llm_api_key="sekrit-upstream")
    assert "sekrit" not in repr(settings)
    assert "sekrit" not in str(settings.model_dump())


async def test_a_conversation_continues_whole_and_streamed_and_is_its_owners(
    tmp_path: Path,
) -> None:
    upstream = FakeUpstream(lambda body: Behavior(tokens=2))
    admin = {"authorization": "Bearer admin-key"}
    async with (
        upstream_running(upstream),
        asgi_client(settings_for(upstream, api_keys=["admin-key"], data_dir=str(tmp_path))) as http,
    ):
        made = await http.post("/api/v1/principals", json={"name": "mia"}, headers=admin)
        mia = {"authorization": f"Bearer {made.json()['key']}"}
        made = await http.post("/api/v1/principals", json={"name": "otto"}, headers=admin)
        otto = {"authorization": f"Bearer {made.json()['key']}"}

        first = await http.post(
            "/api/v1/inference/chat", json={"query": "How large is a batch?"}, headers=mia
        )
        assert first.status_code == 200, first.text
        conversation = first.json()["conversation_id"]
        second = await http.post(
            "/api/v1/inference/chat",
            json={"query": "and how do I stop one?", "conversation_id": conversation},
            headers=mia,
        )
        assert second.json()["conversation_id"] == conversation
        streamed = await http.get(
            "/api/v1/inference/stream",
            params={"query": "and then?", "conversation_id": conversation},
            headers=mia,
        )
        opening = streamed.text.split("\n\n")[0]
        assert json.loads(opening.split("data: ", 1)[1]) == {"conversation_id": conversation}
        hidden = await http.post(
            "/api/v1/inference/chat",
            json={"query": "what did she ask?", "conversation_id": conversation},
            headers=otto,
        )
        hidden_stream = await http.get(
            "/api/v1/inference/stream",
            params={"query": "and?", "conversation_id": conversation},
            headers=otto,
        )
        bad = await http.post(
            "/api/v1/inference/chat",
            json={"query": "hi", "conversation_id": "not valid!"},
            headers=mia,
        )
    assert hidden.status_code == hidden_stream.status_code == 404
    assert hidden.json()["error"]["code"] == "conversation_not_found"
    assert bad.status_code == 422
    turns = [
        [(m["role"], m["content"]) for m in call.body["messages"][1:]] for call in upstream.calls
    ]
    assert turns[0] == [("user", "How large is a batch?")]
    assert turns[1] == [
        ("user", "How large is a batch?"),
        ("assistant", "t0 t1 "),
        ("user", "and how do I stop one?"),
    ]
    assert turns[2][:4] == turns[1] + [("assistant", "t0 t1 ")]
    assert turns[2][-1] == ("user", "and then?")
    assert len(upstream.calls) == 3  # otto's questions never reached the model
