"""The naive proxy (``naive_proxy.py``, unchanged) with ragline's middleware added: the
one line a FastAPI user adds (docs/ADOPT.md). Runs in ragline's own venv, which has
FastAPI and the ``openai`` SDK through its dev extra.

    NAIVE_UPSTREAM=http://127.0.0.1:P/v1 uvicorn naive_adopted:app --app-dir bench/peers
"""

from naive_proxy import app

from ragline import RaglineMiddleware

app.add_middleware(RaglineMiddleware)
