"""A naive OpenAI proxy, written the way a user typically would: FastAPI + the ``openai`` SDK.

No special handling of client disconnects or shutdown: this is the baseline a user writes
instead of using ragline. Run in its own venv (see ``bench/peers.py``):

    NAIVE_UPSTREAM=http://127.0.0.1:P/v1 uvicorn naive_proxy:app --host 127.0.0.1 --port N
"""

import os
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from openai import AsyncOpenAI

client = AsyncOpenAI(
    base_url=os.environ["NAIVE_UPSTREAM"],
    api_key=os.environ.get("NAIVE_API_KEY", "sk-fake"),
)
app = FastAPI()


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Any:
    body = await request.json()
    if body.get("stream"):
        stream = await client.chat.completions.create(**body)

        async def events() -> AsyncIterator[str]:
            async for chunk in stream:
                yield f"data: {chunk.model_dump_json()}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")
    completion = await client.chat.completions.create(**body)
    return JSONResponse(completion.model_dump())
