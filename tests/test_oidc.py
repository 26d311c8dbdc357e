"""Bearer JWTs of an OpenID Connect issuer as principals, against a local key set served
over a real socket, as Entra ID would serve its own."""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from conftest import asgi_client, serve_app
from ragline import Settings

pytestmark = pytest.mark.anyio

ISSUER = "https://login.example.test/tenant/v2.0"
AUDIENCE = "api://ragline"


@functools.cache
def key(slot: int) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class Issuer:
    """The issuer's key set (``kid`` k0 published; k1 signs forgeries), and its tokens."""

    def __init__(self) -> None:
        self.fetches = 0
        self.url = ""

    async def jwks(self, request: Request) -> JSONResponse:
        self.fetches += 1
        public = RSAAlgorithm.to_jwk(key(0).public_key(), as_dict=True)
        return JSONResponse({"keys": [{**public, "kid": "k0", "use": "sig", "alg": "RS256"}]})

    def token(self, *, kid: str = "k0", signer: int = 0, **claims: Any) -> str:
        now = time.time()
        body = {"iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 600}
        body |= {"preferred_username": "ann@contoso.com", "groups": ["g-eng"], **claims}
        return jwt.encode(body, key(signer), algorithm="RS256", headers={"kid": kid})


@asynccontextmanager
async def issued() -> AsyncIterator[tuple[Issuer, httpx.AsyncClient]]:
    issuer = Issuer()
    app = Starlette(routes=[Route("/keys", issuer.jwks)])
    async with serve_app(app) as url:
        settings = Settings(
            retrieval=False,
            llm_provider="openai",
            llm_base_url="http://127.0.0.1:9/v1",
            oidc_jwks_url=f"{url}/keys",
            oidc_issuer=ISSUER,
            oidc_audience=AUDIENCE,
            oidc_admin_group="g-admins",
        )
        async with asgi_client(settings) as http:
            yield issuer, http


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def test_a_valid_token_is_its_principal_and_the_admin_group_makes_admins() -> None:
    async with issued() as (issuer, http):
        me = await http.get("/api/v1/me", headers=bearer(issuer.token()))
        assert me.status_code == 200, me.text
        assert me.json() == {"name": "ann@contoso.com", "groups": ["g-eng"], "admin": False}
        boss = issuer.token(preferred_username="boss", groups=["g-admins"])
        assert (await http.get("/api/v1/me", headers=bearer(boss))).json()["admin"] is True
        assert (await http.get("/api/v1/principals", headers=bearer(boss))).status_code == 200
        member = await http.get("/api/v1/principals", headers=bearer(issuer.token()))
        assert member.status_code == 404  # admin routes are not there for members
        assert issuer.fetches == 1  # the key set is cached


async def test_every_token_that_does_not_verify_is_one_401() -> None:
    async with issued() as (issuer, http):
        refused = [
            issuer.token(exp=time.time() - 3600),  # expired
            issuer.token(aud="api://another-app"),
            issuer.token(iss="https://evil.example.test"),
            issuer.token(signer=1),  # forged: signed by a key the issuer never published
            issuer.token(kid="k9", signer=1),  # an unknown key id: one refetch, then no
            issuer.token(preferred_username="not a name"),
            issuer.token()[:-4] + "AAAA",  # tampered signature
            "a.b.c",
        ]
        bodies = set()
        for token in refused:
            answer = await http.get("/api/v1/me", headers=bearer(token))
            assert answer.status_code == 401, token
            bodies.add(answer.text)
        assert len(bodies) == 1
        assert (await http.get("/api/v1/me")).text in bodies
        assert issuer.fetches <= 2


async def test_a_grant_may_name_the_issuers_users_and_groups() -> None:
    async with issued() as (issuer, http):
        boss = bearer(issuer.token(preferred_username="boss", groups=["g-admins"]))
        grant = {"read": ["group:g-eng", "user:someone@contoso.com"], "write": []}
        answer = await http.put("/api/v1/collections/eng/access", json=grant, headers=boss)
        assert answer.status_code == 200, answer.text
        assert answer.json()["read"] == ["group:g-eng", "user:someone@contoso.com"]
