"""Projected ServiceAccount tokens and their verification, for the cloud token fakes.

A cloud's token endpoint trusts a cluster by its OIDC issuer: it fetches the issuer's JWKS
and checks each presented token's signature, ``iss``, ``aud``, ``exp`` and ``nbf``,
and the ``sub`` its trust policy names. :class:`Verifier` does exactly that with a JWKS
given to it (the real API server's ``/openid/v1/jwks`` in cluster tests).
:class:`TestIssuer` plays the API server for tests without a cluster: it mints tokens
shaped like a projected ServiceAccount token and writes them to a file as kubelet does.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa


class TokenRejected(Exception):
    """Why a presented token is not accepted; ``reason`` is one of the documented causes."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason  # signature | issuer | audience | expired | malformed | subject
        self.detail = detail


class Verifier:
    """Checks tokens of one issuer against its JWKS."""

    def __init__(self, issuer: str, jwks: Mapping[str, Any]) -> None:
        self.issuer = issuer
        self.jwks = dict(jwks)
        self.keys = {k.key_id: k for k in jwt.PyJWKSet.from_dict(self.jwks).keys}
        self.verified = 0  # tokens accepted, for tests
        self.rejected: list[str] = []  # reasons, for tests

    def verify(self, token: str, audience: str, subjects: Iterable[str] | None = None) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as e:
            raise self._reject("malformed", str(e)) from None
        key = self.keys.get(header.get("kid", ""))
        # The key's own algorithm only (RS256 from most issuers, ES256 from an EC-keyed API server):
        # a token may not choose another, nor "none".
        if key is None or header.get("alg") != key.algorithm_name:
            raise self._reject("signature", "unknown signing key or algorithm")
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key.key, algorithms=[key.algorithm_name], audience=audience, issuer=self.issuer,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]}, leeway=0)
        except jwt.ExpiredSignatureError:
            raise self._reject("expired", "the token has expired") from None
        except jwt.InvalidAudienceError:
            raise self._reject("audience", f"the token's audience is not {audience}") from None
        except jwt.InvalidIssuerError:
            raise self._reject("issuer", f"the token's issuer is not {self.issuer}") from None
        except jwt.InvalidSignatureError:
            raise self._reject("signature", "signature verification failed") from None
        except jwt.InvalidTokenError as e:
            raise self._reject("malformed", str(e)) from None
        if subjects is not None and claims["sub"] not in set(subjects):
            raise self._reject("subject", f"subject {claims['sub']} is not trusted")
        self.verified += 1
        return claims

    def _reject(self, reason: str, detail: str) -> TokenRejected:
        self.rejected.append(reason)
        return TokenRejected(reason, detail)


class TestIssuer:
    """A stand-in for the API server's ServiceAccount token issuer (no cluster needed)."""

    __test__ = False  # not a pytest class

    def __init__(self, issuer: str = "https://oidc.test.example/cluster") -> None:
        self.issuer = issuer
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = uuid.uuid4().hex

    @property
    def jwks(self) -> dict[str, Any]:
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(self._key.public_key(), as_dict=True)
        return {"keys": [{**jwk, "kid": self.kid, "use": "sig", "alg": "RS256"}]}

    def verifier(self) -> Verifier:
        return Verifier(self.issuer, self.jwks)

    def token(self, audience: str, *, namespace: str = "apps", service_account: str = "app",
              lifetime: float = 3600, issuer: str | None = None, now: float | None = None) -> str:
        now = time.time() if now is None else now
        claims = {
            "iss": issuer or self.issuer, "aud": [audience],
            "sub": f"system:serviceaccount:{namespace}:{service_account}",
            "iat": int(now), "nbf": int(now), "exp": int(now + lifetime),
            "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": service_account,
                                                                          "uid": str(uuid.uuid4())}},
        }
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self.kid})

    def write(self, path: Path, audience: str, **kw: Any) -> str:
        """Write a fresh token to ``path`` atomically, as kubelet renews a projected token."""
        token = self.token(audience, **kw)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
        tmp.write_text(token)
        os.replace(tmp, path)
        return token


def sign_access_token(key: rsa.RSAPrivateKey, kid: str, claims: Mapping[str, Any]) -> str:
    return jwt.encode(dict(claims), key, algorithm="RS256", headers={"kid": kid, "typ": "JWT"})
