"""The fake Microsoft identity services: the Bot Framework's OpenID metadata and signing
keys (inbound JWTs, which it also signs as Teams would), and Entra ID's client-credentials
token endpoint (outbound tokens). A mixin of :class:`teams_fakes.FakeTeams`, whose
``__init__`` holds the state."""

from __future__ import annotations

import functools
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qs

import anyio
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

T = TypeVar("T")


ISSUER = "https://api.botframework.com"
SCOPE = "https://api.botframework.com/.default"
KeyName = Literal["endorsed", "unendorsed", "rogue"]


@dataclass
class _Key:
    kid: str
    private: rsa.RSAPrivateKey
    endorsements: list[str]


@functools.cache
def _rsa_key(slot: int) -> rsa.RSAPrivateKey:
    """RSA keys are slow to make, so every FakeTeams in a process shares them."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


class IdentityMixin:
    """Keys, inbound tokens and outbound tokens."""

    def expire_tokens(self) -> None:
        """Every outbound token issued so far is expired from now on."""
        for token in self._tokens:
            self._tokens[token] = 0.0

    def rotate_keys(self, *, drop_old: bool = False) -> str:
        """Publish a new endorsed signing key and sign with it; returns its kid."""
        old = self._signing["endorsed"]
        new = _Key(f"k{secrets.token_hex(6)}", _rsa_key(3 + len(self._published)), old.endorsements)
        if drop_old:
            self._published.remove(old)
        self._published.append(new)
        self._signing["endorsed"] = new
        return new.kid

    # -- waiting ----------------------------------------------------------------------------

    def token_for(
        self,
        service_url: str | None = None,
        *,
        audience: str | None = None,
        issuer: str | None = None,
        expires_in: float = 3600,
        not_before_offset: float = 0,
        key: KeyName = "endorsed",
        kid: str | None = None,
        extra_claims: dict[str, Any] | None = None,
    ) -> str:
        """A Bot Framework JWT as Teams sends it to the bot's webhook.

        ``key``: "endorsed" (published, endorses msteams), "unendorsed" (published, endorses
        only webchat) or "rogue" (unpublished key claiming the endorsed key's kid). An
        ``extra_claims`` value of None removes that claim.
        """
        now = time.time()
        claims: dict[str, Any] = {
            "iss": issuer or self.issuer,
            "aud": audience or self.app_id,
            "serviceurl": service_url or self.service_url,
            "nbf": int(now + not_before_offset),
            "exp": int(now + expires_in),
            "iat": int(now),
        }
        for name, value in (extra_claims or {}).items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        if key == "rogue":
            private, key_id = self._rogue_private, self._signing["endorsed"].kid
        else:
            private, key_id = self._signing[key].private, self._signing[key].kid
        return jwt.encode(claims, private, algorithm="RS256", headers={"kid": kid or key_id})

    async def _openid(self, request: Request) -> Response:
        self.metadata_requests += 1
        self._notify()
        return JSONResponse(
            {
                "issuer": self.issuer,
                "authorization_endpoint": "https://invalid.botframework.com",
                "jwks_uri": self.jwks_url,
                "id_token_signing_alg_values_supported": ["RS256"],
                "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            }
        )

    async def _jwks(self, request: Request) -> Response:
        self.jwks_requests += 1
        self._notify()
        keys = []
        for key in self._published:
            jwk = RSAAlgorithm.to_jwk(key.private.public_key(), as_dict=True)
            keys.append(
                {
                    "kty": "RSA",
                    "use": "sig",
                    "kid": key.kid,
                    "n": jwk["n"],
                    "e": jwk["e"],
                    "endorsements": list(key.endorsements),
                }
            )
        return JSONResponse({"keys": keys})

    # -- token endpoint ---------------------------------------------------------------------

    async def _token(self, request: Request) -> Response:
        self.token_requests.append(time.monotonic())
        self._notify()
        raw = await request.body()
        if self.token_delay:
            await anyio.sleep(self.token_delay)
        tenant = request.path_params["tenant"]
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("application/x-www-form-urlencoded"):
            return self._aaderror_body(400, "invalid_request", "AADSTS900144: form body expected.")
        if tenant not in ("botframework.com", self.tenant_id):
            return self._aaderror_body(400, "invalid_request", f"AADSTS90002: Tenant '{tenant}'.")
        form = {k: v[-1] for k, v in parse_qs(raw.decode(), keep_blank_values=True).items()}
        for name in ("grant_type", "client_id", "client_secret", "scope"):
            if not form.get(name):
                return self._aaderror_body(400, "invalid_request", f"AADSTS900144: no '{name}'.")
        if form["grant_type"] != "client_credentials":
            return self._aaderror_body(400, "unsupported_grant_type", "AADSTS70003: grant type.")
        if form["client_id"] != self.app_id:
            return self._aaderror_body(400, "unauthorized_client", "AADSTS700016: unknown app.")
        if form["client_secret"] != self.app_password:
            return self._aaderror_body(401, "invalid_client", "AADSTS7000215: Invalid secret.")
        if form["scope"] != SCOPE:
            return self._aaderror_body(400, "invalid_scope", "AADSTS1002012: invalid scope.")
        token = f"eyJ0{secrets.token_urlsafe(48)}"
        self._tokens[token] = time.monotonic() + self.token_lifetime
        self.tokens_issued.append(token)
        self._notify()
        return JSONResponse(
            {
                "token_type": "Bearer",
                "expires_in": self.token_lifetime,
                "ext_expires_in": self.token_lifetime,
                "access_token": token,
            }
        )

    @staticmethod
    def _aaderror_body(status: int, error: str, description: str) -> Response:
        return JSONResponse(
            {
                "error": error,
                "error_description": description,
                "error_codes": [int("".join(c for c in description.split(":")[0] if c.isdigit()))],
                "timestamp": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ"),
                "trace_id": str(uuid.uuid4()),
                "correlation_id": str(uuid.uuid4()),
            },
            status_code=status,
        )

    # -- connector --------------------------------------------------------------------------

    def _token_valid(self, authorization: str | None) -> bool:
        if not authorization:
            return False
        scheme, _, token = authorization.partition(" ")
        expiry = self._tokens.get(token.strip())
        return scheme.lower() == "bearer" and expiry is not None and expiry > time.monotonic()
