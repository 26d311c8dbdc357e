"""LangServe serving ``langchain-openai``'s ChatOpenAI at ``/chat``, as its docs show.

Run in its own venv (see ``bench/peers.py``):

    LANGSERVE_UPSTREAM=http://127.0.0.1:P/v1 uvicorn langserve_app:app --host 127.0.0.1 --port N

Client protocol (not OpenAI's): ``POST /chat/invoke`` and ``POST /chat/stream`` with
``{"input": [{"role": "user", "content": "..."}]}`` (or ``{"input": "..."}``).
"""

import os

from fastapi import FastAPI
from langchain_openai import ChatOpenAI
from langserve import add_routes

chat_model = ChatOpenAI(
    base_url=os.environ["LANGSERVE_UPSTREAM"],
    api_key=os.environ.get("LANGSERVE_API_KEY", "sk-fake"),
    model="fake-model",
    streaming=True,
)
app = FastAPI(title="langserve peer")


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


add_routes(app, chat_model, path="/chat")
